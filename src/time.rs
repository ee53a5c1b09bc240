//! Timestamps as Unix nanoseconds, printed as RFC 3339 with nanoseconds, and the `T` arguments of the
//! query commands (an RFC 3339 time or a duration back from now).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    #[error("{input:?} is neither an RFC 3339 time nor a duration such as 90s, 10m, 2h or 7d")]
    Unparseable { input: String },
    #[error("{input:?} is not a duration such as 500ms, 90s, 10m, 2h or 7d")]
    BadDuration { input: String },
}

/// How timestamps are printed: UTC, always nine fractional digits, so printed times sort as text.
/// (`Rfc3339` itself trims trailing zeros from the fraction.)
const RFC3339_NANOS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// A point in time, Unix nanoseconds UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Timestamp(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    pub const fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    pub fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000_000))
    }

    pub fn saturating_sub(self, duration: Duration) -> Self {
        let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(nanos))
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(nanos))
    }

    /// RFC 3339 in UTC with all nine fractional digits, e.g. `2026-11-21T08:18:20.123456789Z`.
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .ok()
            .and_then(|dt| dt.format(RFC3339_NANOS).ok())
            // Every i64 of nanoseconds is a representable date; the fallback is never expected.
            .unwrap_or_else(|| self.0.to_string())
    }

    pub fn parse_rfc3339(input: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(input, &Rfc3339).ok()?;
        i64::try_from(dt.unix_timestamp_nanos()).ok().map(Timestamp)
    }

    /// A query bound: an RFC 3339 time, or a duration back from `now`.
    pub fn parse_bound(input: &str, now: Timestamp) -> Result<Self, TimeError> {
        if let Some(ts) = Self::parse_rfc3339(input) {
            return Ok(ts);
        }
        match parse_duration(input) {
            Ok(back) => Ok(now.saturating_sub(back)),
            Err(_) => Err(TimeError::Unparseable {
                input: input.to_string(),
            }),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
    }
}

/// Parses `500ms`, `90s`, `10m`, `2h`, `7d` (and a bare number of seconds).
pub fn parse_duration(input: &str) -> Result<Duration, TimeError> {
    let bad = || TimeError::BadDuration {
        input: input.to_string(),
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let secs = |n: u64| Duration::from_secs(n);
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "" | "s" => Ok(secs(value)),
        "m" => Ok(secs(value.checked_mul(60).ok_or_else(bad)?)),
        "h" => Ok(secs(value.checked_mul(3600).ok_or_else(bad)?)),
        "d" => Ok(secs(value.checked_mul(86_400).ok_or_else(bad)?)),
        _ => Err(bad()),
    }
}

/// Serde helper for durations written as strings in configuration files (`"30s"`).
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds_and_round_trips() {
        let ts = Timestamp::from_nanos(1_700_000_000_000_000_001);
        let text = ts.to_rfc3339();
        assert_eq!(text, "2023-11-14T22:13:20.000000001Z");
        assert_eq!(Timestamp::parse_rfc3339(&text), Some(ts));
    }

    #[test]
    fn formats_the_whole_nanosecond_range_with_padded_fields() {
        assert_eq!(
            Timestamp::from_nanos(0).to_rfc3339(),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            Timestamp::from_nanos(-1).to_rfc3339(),
            "1969-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            Timestamp::from_nanos(i64::MIN).to_rfc3339(),
            "1677-09-21T00:12:43.145224192Z"
        );
        assert_eq!(
            Timestamp::from_nanos(i64::MAX).to_rfc3339(),
            "2262-04-11T23:47:16.854775807Z"
        );
        assert_eq!(
            Timestamp::from_nanos(1_780_000_000_120_000_000).to_rfc3339(),
            "2026-05-28T20:26:40.120000000Z"
        );
    }

    #[test]
    fn bounds_accept_durations_back_from_now() {
        let now = Timestamp::from_secs(10_000);
        assert_eq!(
            Timestamp::parse_bound("90s", now).unwrap(),
            Timestamp::from_secs(9_910)
        );
        assert_eq!(
            Timestamp::parse_bound("2h", now).unwrap(),
            Timestamp::from_secs(10_000 - 7_200)
        );
        assert!(Timestamp::parse_bound("yesterday", now).is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }
}
