//! Allow-lists (known benign work never alerts) and de-duplication (repeats of one alert raise its
//! count instead of making new alerts).

use std::time::Duration;

use bannin::time::Timestamp;
use globset::{Glob, GlobMatcher};
use serde_json::{Map, Value as Json};

use super::DetectError;
use super::config::AllowEntry;
use super::state::HostWindows;

/// Alert fields an allow entry's `user` is checked against.
const USER_FIELDS: &[&str] = &["user", "db_user"];
/// Alert fields an allow entry's `path` is checked against.
const PATH_FIELDS: &[&str] = &["path", "final_path", "renamed_to"];

struct Allow {
    rules: Vec<String>,
    host: Option<GlobMatcher>,
    user: Option<GlobMatcher>,
    exe: Option<GlobMatcher>,
    path: Option<GlobMatcher>,
    /// Minutes after midnight UTC, start inclusive, end exclusive; may wrap.
    hours: Option<(u32, u32)>,
}

pub(crate) struct AllowList {
    entries: Vec<Allow>,
}

fn glob(index: usize, pattern: &Option<String>) -> Result<Option<GlobMatcher>, DetectError> {
    pattern
        .as_deref()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| DetectError::Allow {
                    index,
                    message: format!("bad glob {p:?}: {e}"),
                })
        })
        .transpose()
}

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

fn hours(index: usize, text: &str) -> Result<(u32, u32), DetectError> {
    let bad = || DetectError::Allow {
        index,
        message: format!("hours {text:?} is not \"HH:MM-HH:MM\""),
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    Ok((
        minutes(start).ok_or_else(bad)?,
        minutes(end).ok_or_else(bad)?,
    ))
}

fn strings(value: &Json) -> Vec<&str> {
    match value {
        Json::String(s) => vec![s.as_str()],
        Json::Array(items) => items.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

fn any_field(fields: &Map<String, Json>, names: &[&str], glob: &GlobMatcher) -> bool {
    names
        .iter()
        .filter_map(|n| fields.get(*n))
        .flat_map(strings)
        .any(|s| glob.is_match(s))
}

impl AllowList {
    pub(crate) fn new(entries: &[AllowEntry]) -> Result<Self, DetectError> {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                Ok(Allow {
                    rules: e.rules.clone(),
                    host: glob(index, &e.host)?,
                    user: glob(index, &e.user)?,
                    exe: glob(index, &e.exe)?,
                    path: glob(index, &e.path)?,
                    hours: e.hours.as_deref().map(|h| hours(index, h)).transpose()?,
                })
            })
            .collect::<Result<_, DetectError>>()?;
        Ok(AllowList { entries })
    }

    /// Whether some entry allows this alert. A key an entry sets must be present in the alert and
    /// match, so an entry for "user etl" never silences an alert that names no user.
    pub(crate) fn allows(
        &self,
        rule: &str,
        host: &str,
        ts: Timestamp,
        fields: &Map<String, Json>,
    ) -> bool {
        self.entries.iter().any(|e| {
            (e.rules.is_empty() || e.rules.iter().any(|r| r == rule))
                && e.host.as_ref().is_none_or(|g| g.is_match(host))
                && e.user
                    .as_ref()
                    .is_none_or(|g| any_field(fields, USER_FIELDS, g))
                && e.exe
                    .as_ref()
                    .is_none_or(|g| any_field(fields, &["exe"], g))
                && e.path
                    .as_ref()
                    .is_none_or(|g| any_field(fields, PATH_FIELDS, g))
                && e.hours.is_none_or(|range| in_range(range, ts))
        })
    }
}

fn in_range((start, end): (u32, u32), ts: Timestamp) -> bool {
    let minute = u32::try_from(ts.as_nanos().div_euclid(60_000_000_000).rem_euclid(1440))
        .unwrap_or_default();
    if start <= end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

struct Seen {
    id: String,
    first_ts: Timestamp,
    count: u64,
}

/// Remembers recent alerts by (rule, key) so repeats within the window are folded into one.
pub(crate) struct Dedup {
    window: Duration,
    seen: HostWindows<(usize, String), Seen>,
}

pub(crate) enum Verdict {
    New,
    Repeat { id: String, count: u64 },
}

impl Dedup {
    pub(crate) fn new(window: Duration, cap: usize, per_host: usize) -> Self {
        Dedup {
            window,
            seen: HostWindows::new(per_host.min(cap), cap, Duration::ZERO),
        }
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.seen.losses.total()
    }

    pub(crate) fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.seen.losses.take()
    }

    /// The recent alert of `key` on `host` and its count so far, without counting anything.
    pub(crate) fn recent(
        &self,
        rule: usize,
        host: &str,
        key: String,
        ts: Timestamp,
    ) -> Option<(String, u64)> {
        let seen = self.seen.get(host, &(rule, key))?;
        (seen.first_ts.saturating_add(self.window) >= ts).then(|| (seen.id.clone(), seen.count))
    }

    /// Records an occurrence on `host`; `id` is used if it starts a new alert.
    pub(crate) fn check(
        &mut self,
        rule: usize,
        host: &str,
        key: String,
        ts: Timestamp,
        id: &str,
    ) -> Verdict {
        self.seen.expire(ts.saturating_sub(self.window));
        let key = (rule, key);
        if let Some(seen) = self.seen.get_mut(host, &key) {
            if seen.first_ts.saturating_add(self.window) >= ts {
                seen.count += 1;
                return Verdict::Repeat {
                    id: seen.id.clone(),
                    count: seen.count,
                };
            }
        }
        self.seen.insert(
            host,
            key,
            Seen {
                id: id.to_string(),
                first_ts: ts,
                count: 1,
            },
            ts,
        );
        Verdict::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testkit::*;

    #[test]
    fn hours_ranges_wrap_past_midnight() {
        let at = |h: i64, m: i64| Timestamp::from_secs(1_700_006_400 + h * 3600 + m * 60);
        // 1_700_006_400 is 00:00 UTC.
        assert!(in_range((23 * 60, 2 * 60), at(1, 30)));
        assert!(in_range((23 * 60, 2 * 60), at(23, 0)));
        assert!(!in_range((23 * 60, 2 * 60), at(2, 0)));
        assert!(in_range((60, 180), at(2, 59)));
        assert!(!in_range((60, 180), at(3, 0)));
        assert!(hours(0, "25:00-01:00").is_err());
    }

    fn etl_hour(fleet: &mut Fleet, hour: i64) -> Vec<AlertUpdate> {
        let job = process(3000, "/opt/etl/bin/extract", "etl", &["/usr/sbin/cron"]);
        let loader = process(3100, "/opt/etl/bin/load", "etl", &["/usr/sbin/cron"]);
        let t = hour * 3600;
        run(
            fleet,
            vec![
                (
                    "etl1",
                    t,
                    file(
                        FileAction::Create,
                        "/srv/etl/out/export.csv.tmp",
                        Some(0),
                        None,
                        &job,
                    ),
                ),
                (
                    "etl1",
                    t + 60,
                    file(
                        FileAction::Write,
                        "/srv/etl/out/export.csv.tmp",
                        Some(50 * MIB),
                        Some(csv(400_000)),
                        &job,
                    ),
                ),
                (
                    "etl1",
                    t + 61,
                    rename(
                        "/srv/etl/out/export.csv.tmp",
                        "/srv/etl/out/export.csv",
                        50 * MIB,
                        &job,
                    ),
                ),
                (
                    "etl1",
                    t + 600,
                    file(
                        FileAction::Delete,
                        "/srv/etl/out/export.csv",
                        Some(50 * MIB),
                        None,
                        &loader,
                    ),
                ),
            ],
        )
    }

    #[test]
    fn etl_staging_alerts_until_allowed_by_user_and_path() {
        let mut fleet = Fleet::default();
        let updates = etl_hour(&mut fleet, 0);
        assert_eq!(
            rules_of(&updates),
            vec!["large-export-created-then-deleted"]
        );

        let config: DetectConfig = toml::from_str(
            r#"
        [[allow]]
        comment = "hourly ETL: stages export.csv.tmp, renames it, the loader deletes it"
        rules = ["large-export-created-then-deleted"]
        host = "etl*"
        user = "etl"
        exe = "/opt/etl/bin/*"
        path = "/srv/etl/**"
        "#,
        )
        .unwrap();
        let mut fleet = Fleet::new(config);
        for hour in 0..24 {
            let updates = etl_hour(&mut fleet, hour);
            assert!(updates.is_empty(), "hour {hour}: {:?}", rules_of(&updates));
        }
        assert_eq!(fleet.engine.stats().suppressed, 24);
        // The same file shape from another account is still reported.
        let who = attacker();
        let updates = run(
            &mut fleet,
            vec![
                (
                    "etl1",
                    90_000,
                    file(
                        FileAction::Create,
                        "/srv/etl/out/x.csv",
                        Some(0),
                        None,
                        &who,
                    ),
                ),
                (
                    "etl1",
                    90_001,
                    file(
                        FileAction::Write,
                        "/srv/etl/out/x.csv",
                        Some(50 * MIB),
                        Some(csv(1)),
                        &who,
                    ),
                ),
                (
                    "etl1",
                    90_002,
                    file(
                        FileAction::Delete,
                        "/srv/etl/out/x.csv",
                        Some(50 * MIB),
                        None,
                        &who,
                    ),
                ),
            ],
        );
        assert_eq!(
            rules_of(&updates),
            vec!["large-export-created-then-deleted"]
        );
    }

    fn nightly_backup(fleet: &mut Fleet, day: i64) -> Vec<AlertUpdate> {
        let t = day * 86_400 + 2 * 3600;
        let pg_dump = process(
            6000,
            "/usr/lib/postgresql/15/bin/pg_dump",
            "backup",
            &["/bin/sh", "/usr/sbin/cron"],
        );
        let upload = process(
            6100,
            "/usr/bin/rclone",
            "backup",
            &["/bin/sh", "/usr/sbin/cron"],
        );
        let dump = ExportInfo {
            class: "data".into(),
            format: "dump".into(),
            ..ExportInfo::default()
        };
        let path = format!("/var/backups/pg/sales-{day}.dump");
        run(
            fleet,
            vec![
                ("db1", t, export_query("backup", "dump_tool")),
                (
                    "db1",
                    t,
                    file(FileAction::Create, &path, Some(0), None, &pg_dump),
                ),
                (
                    "db1",
                    t + 900,
                    file(
                        FileAction::Write,
                        &path,
                        Some(2048 * MIB),
                        Some(dump),
                        &pg_dump,
                    ),
                ),
                (
                    "db1",
                    t + 1800,
                    file(FileAction::Delete, &path, Some(2048 * MIB), None, &upload),
                ),
            ],
        )
    }

    #[test]
    fn nightly_pg_dump_by_the_backup_user_is_quiet_once_allowed() {
        let mut fleet = Fleet::default();
        let mut rules = rules_of(&nightly_backup(&mut fleet, 0));
        rules.sort();
        assert_eq!(
            rules,
            vec![
                "db-export-unlisted-account",
                "large-export-created-then-deleted"
            ]
        );

        let config: DetectConfig = toml::from_str(
            r#"
        export_accounts = ["backup"]

        [[allow]]
        comment = "nightly pg_dump, uploaded then deleted"
        user = "backup"
        path = "/var/backups/pg/*.dump"
        hours = "01:00-05:00"
        "#,
        )
        .unwrap();
        let mut fleet = Fleet::new(config);
        for day in 0..7 {
            let updates = nightly_backup(&mut fleet, day);
            assert!(updates.is_empty(), "day {day}: {:?}", rules_of(&updates));
        }
        // Outside its hours the same work is reported.
        let pg_dump = process(6000, "/usr/lib/postgresql/15/bin/pg_dump", "backup", &[]);
        let updates = run(
            &mut fleet,
            vec![
                (
                    "db1",
                    14 * 3600,
                    file(
                        FileAction::Create,
                        "/var/backups/pg/x.dump",
                        Some(0),
                        None,
                        &pg_dump,
                    ),
                ),
                (
                    "db1",
                    14 * 3600 + 5,
                    file(
                        FileAction::Write,
                        "/var/backups/pg/x.dump",
                        Some(20 * MIB),
                        Some(csv(1)),
                        &pg_dump,
                    ),
                ),
                (
                    "db1",
                    14 * 3600 + 9,
                    file(
                        FileAction::Delete,
                        "/var/backups/pg/x.dump",
                        Some(20 * MIB),
                        None,
                        &pg_dump,
                    ),
                ),
            ],
        );
        assert_eq!(
            rules_of(&updates),
            vec!["large-export-created-then-deleted"]
        );
    }
}
