//! Rate-limiting failed enrollments by remote address, and summarizing them in the log.
//!
//! Enrollment is the one call anyone who can reach the port may make. A flood of guessed tokens must
//! neither fill the log (a line per guess) nor slow the agents enrolling honestly from elsewhere:
//! each address (an IPv6 address by its /64) may fail [`FAILURES_PER_WINDOW`] times a window; after
//! that its requests are refused unread until the window ends. The first failures of a window are
//! logged one by one; the rest are counted and logged as one summary line per address every
//! [`SUMMARY_EVERY`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How many failed enrollments an address may make in one window before it is refused.
pub const FAILURES_PER_WINDOW: u32 = 5;
/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often counted refusals are summarized in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Addresses tracked at once. Beyond it, further addresses share one entry: a flood from more
/// addresses than this is limited as a whole rather than growing the map.
const MAX_ADDRESSES: usize = 10_000;
/// How many addresses one summary names; the rest are only counted.
const SUMMARY_NAMES: usize = 10;

/// What to do with an enrollment request from one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Over the limit: refuse without looking at the request, until `retry_after` has passed.
    Limited {
        retry_after: Duration,
    },
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    /// Failures and limited requests since the last summary that were not logged one by one.
    unlogged: u64,
}

/// The shared limiter; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EnrollGuard {
    entries: Arc<Mutex<HashMap<Option<IpAddr>, Entry>>>,
}

/// The key an address is limited under: IPv6 hosts get a /64 each, so one host cannot dodge the
/// limit by cycling through its own addresses.
fn key(addr: Option<IpAddr>) -> Option<IpAddr> {
    match addr? {
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Some(IpAddr::V4(v4)),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Some(IpAddr::V6(prefix.into()))
            }
        },
    }
}

impl EnrollGuard {
    /// A guard that logs its summaries from a task on the current tokio runtime.
    pub fn spawn() -> EnrollGuard {
        let guard = EnrollGuard::default();
        let summarizer = guard.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUMMARY_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                summarizer.summarize();
            }
        });
        guard
    }

    /// Whether a request from `addr` may be looked at. A limited request counts as unlogged.
    pub fn admit(&self, addr: Option<IpAddr>) -> Admission {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return Admission::Allowed;
        };
        let Some(entry) = entries.get_mut(&key(addr)) else {
            return Admission::Allowed;
        };
        let elapsed = now.saturating_duration_since(entry.window_start);
        if elapsed >= WINDOW || entry.failures < FAILURES_PER_WINDOW {
            return Admission::Allowed;
        }
        entry.unlogged = entry.unlogged.saturating_add(1);
        Admission::Limited {
            retry_after: WINDOW - elapsed,
        }
    }

    /// Records a refused enrollment from `addr`; true when it should be logged on its own line
    /// (the first few of a window), false when it was counted for the next summary.
    pub fn failed(&self, addr: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return true;
        };
        let mut slot = key(addr);
        if !entries.contains_key(&slot) && entries.len() >= MAX_ADDRESSES {
            entries.retain(|_, e| {
                now.saturating_duration_since(e.window_start) < WINDOW || e.unlogged > 0
            });
            if entries.len() >= MAX_ADDRESSES {
                slot = None;
            }
        }
        let entry = entries.entry(slot).or_insert(Entry {
            window_start: now,
            failures: 0,
            unlogged: 0,
        });
        if now.saturating_duration_since(entry.window_start) >= WINDOW {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures <= FAILURES_PER_WINDOW {
            true
        } else {
            entry.unlogged = entry.unlogged.saturating_add(1);
            false
        }
    }

    /// Takes the counts of refusals not logged one by one: (address, count), largest first.
    pub fn take_unlogged(&self) -> Vec<(Option<IpAddr>, u64)> {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        let mut counts: Vec<(Option<IpAddr>, u64)> = entries
            .iter_mut()
            .filter(|(_, e)| e.unlogged > 0)
            .map(|(addr, e)| (*addr, std::mem::take(&mut e.unlogged)))
            .collect();
        entries.retain(|_, e| now.saturating_duration_since(e.window_start) < WINDOW);
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        counts
    }

    /// Logs one line per address (the largest few) for the refusals counted since the last summary.
    fn summarize(&self) {
        let counts = self.take_unlogged();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        for (addr, count) in counts.iter().take(SUMMARY_NAMES) {
            let remote = addr.map_or_else(|| "other addresses".to_string(), |a| a.to_string());
            tracing::warn!(
                %remote,
                count,
                "{count} enrollment attempts refused from {remote} in the last {}s (failed tokens or requests; the address is rate-limited)",
                SUMMARY_EVERY.as_secs()
            );
        }
        if counts.len() > SUMMARY_NAMES {
            tracing::warn!(
                addresses = counts.len(),
                total,
                "{total} enrollment attempts refused from {} addresses in the last {}s",
                counts.len(),
                SUMMARY_EVERY.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_is_limited_after_its_failures_and_free_after_the_window() {
        let guard = EnrollGuard::default();
        let attacker = Some("192.0.2.7".parse().unwrap());
        let honest = Some("192.0.2.8".parse().unwrap());
        for _ in 0..FAILURES_PER_WINDOW {
            assert_eq!(guard.admit(attacker), Admission::Allowed);
            assert!(guard.failed(attacker), "the first failures are logged");
        }
        assert!(matches!(guard.admit(attacker), Admission::Limited { .. }));
        assert_eq!(guard.admit(honest), Admission::Allowed);
        assert_eq!(guard.take_unlogged(), vec![(attacker, 1)]);
        assert!(guard.take_unlogged().is_empty(), "counts are taken once");
        tokio::time::advance(WINDOW).await;
        assert_eq!(guard.admit(attacker), Admission::Allowed);
    }

    #[test]
    fn ipv6_hosts_are_limited_by_their_64() {
        let a = key(Some("2001:db8:1:2::1".parse().unwrap()));
        let b = key(Some("2001:db8:1:2:ffff::9".parse().unwrap()));
        let c = key(Some("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            key(Some("::ffff:192.0.2.7".parse().unwrap())),
            key(Some("192.0.2.7".parse().unwrap()))
        );
    }
}
