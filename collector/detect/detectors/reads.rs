//! `sensitive_read_volume`: bulk reads of sensitive tables by one session or database user.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use bannin::event::{Body, Record};
use bannin::time::Timestamp;
use serde_json::{Map, json};

use super::{Candidate, Seen, StatefulDetector, evidence};
use crate::alert::EvidenceRef;
use crate::detect::config::Limits;
use crate::detect::rules::DetectorSpec;
use crate::detect::state::HostWindows;

/// At most this many evidence references are attached to one bulk-read alert.
const MAX_READ_EVIDENCE: usize = 32;

struct ReadTrack {
    last_total: u64,
    /// Rows added by each event within the window, with the event.
    points: VecDeque<(Timestamp, u64, EvidenceRef)>,
    sum: u64,
}

/// Rows read from sensitive tables by one session or one database user within a window.
///
/// The agent's running totals (`session_sensitive_rows`, `user_sensitive_rows`) only grow, over
/// the agent's whole life, so a threshold on them would end up firing for every ordinary account.
/// This detector turns them back into rows added per event (the difference from the previous
/// total of the same session or user) and adds those up over the window. It also reports a read of
/// a whole sensitive table (`export_method: full_table_read`) at once.
pub(crate) struct SensitiveReadVolume {
    rows: u64,
    window: Duration,
    full_table_reads: bool,
    per_key: usize,
    /// Per host; reads dropped because a track held `per_key` already are losses too.
    tracks: HostWindows<u64, ReadTrack>,
}

impl SensitiveReadVolume {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        Ok(SensitiveReadVolume {
            rows: spec.u64("rows", 10_000)?,
            window: spec.duration("window", Duration::from_secs(3600))?,
            full_table_reads: spec
                .parameters
                .get("full_table_reads")
                .map(|v| {
                    v.as_bool()
                        .ok_or("parameter full_table_reads is not a boolean")
                })
                .transpose()?
                .unwrap_or(true),
            per_key: limits.matches_per_group.max(1),
            tracks: HostWindows::new(
                limits.per_host.min(limits.correlation_groups),
                limits.correlation_groups,
                Duration::from_secs(1),
            ),
        })
    }

    /// Adds one query's sensitive rows to its session's and user's windows.
    fn add(&mut self, record: &Record) -> Option<Candidate> {
        let Body::Db(db) = &record.event.body else {
            return None;
        };
        if db.action != bannin::event::DbAction::Query || db.failed {
            return None;
        }
        let ts = record.event.ts;
        let host = &*record.event.host;
        let since = ts.saturating_sub(self.window);
        let mut best: Option<(&str, u64, Vec<u64>)> = None;
        for (scope, name, total) in [
            ("session", &db.session, db.session_sensitive_rows),
            ("user", &db.db_user, db.user_sensitive_rows),
        ] {
            let Some(total) = total else { continue };
            let key = {
                let mut hasher = std::hash::DefaultHasher::new();
                (&record.agent_id, scope, name).hash(&mut hasher);
                hasher.finish()
            };
            if self.tracks.touch(host, &key, ts).is_none() {
                let track = ReadTrack {
                    // First sight: only this event's own rows are known to be new.
                    last_total: total.saturating_sub(db.rows.unwrap_or(0)),
                    points: VecDeque::new(),
                    sum: 0,
                };
                self.tracks.insert(host, key, track, ts);
            }
            let mut dropped = false;
            let track = self.tracks.get_mut(host, &key)?;
            // A total that went down is a restarted agent counting afresh.
            let added = total.checked_sub(track.last_total).unwrap_or(total);
            track.last_total = total;
            while track.points.front().is_some_and(|(t, _, _)| *t < since) {
                if let Some((_, rows, _)) = track.points.pop_front() {
                    track.sum -= rows;
                }
            }
            if added > 0 {
                if track.points.len() >= self.per_key {
                    if let Some((_, rows, _)) = track.points.pop_front() {
                        track.sum -= rows;
                    }
                    dropped = true;
                }
                track.points.push_back((ts, added, evidence(record)));
                track.sum += added;
            }
            if track.sum >= self.rows && best.as_ref().is_none_or(|(_, sum, _)| track.sum > *sum) {
                let mut keys = best.map(|(_, _, keys)| keys).unwrap_or_default();
                keys.push(key);
                best = Some((scope, track.sum, keys));
            } else if let Some((_, _, keys)) = &mut best {
                keys.push(key);
            }
            if dropped {
                self.tracks.losses.add(host, 1);
            }
        }
        let full = self.full_table_reads
            && db.export_method == "full_table_read"
            && !db.sensitive_tables.is_empty();
        let (scope, rows, keys) = match best {
            Some(found) => found,
            None if full => ("full_table", db.rows.unwrap_or(0), Vec::new()),
            None => return None,
        };
        // The window's reads are reported now; the next alert needs another `rows` on top.
        let mut proof = Vec::new();
        let mut first_ts = ts;
        for key in keys {
            if let Some(track) = self.tracks.get_mut(host, &key) {
                for (t, _, e) in track.points.drain(..) {
                    first_ts = first_ts.min(t);
                    if !proof.contains(&e) {
                        proof.push(e);
                    }
                }
                track.sum = 0;
            }
        }
        if proof.is_empty() {
            proof.push(evidence(record));
        }
        if proof.len() > MAX_READ_EVIDENCE {
            let tail = proof.split_off(proof.len() - MAX_READ_EVIDENCE / 2);
            proof.truncate(MAX_READ_EVIDENCE / 2);
            proof.extend(tail);
        }
        let mut fields = Map::new();
        for (name, value) in [
            ("db_system", json!(db.db_system)),
            ("db_user", json!(db.db_user)),
            ("database", json!(db.database)),
            ("client_addr", json!(db.client_addr)),
            ("application", json!(db.application)),
            ("session", json!(db.session)),
            ("tables", json!(db.tables)),
            ("sensitive_tables", json!(db.sensitive_tables)),
            ("scope", json!(scope)),
            ("rows_in_window", json!(rows)),
            ("window_secs", json!(self.window.as_secs())),
            ("first_ts", json!(first_ts)),
            ("statement", json!(db.statement)),
        ] {
            fields.insert(name.into(), value);
        }
        if let Some(total) = db.session_sensitive_rows {
            fields.insert("session_sensitive_rows".into(), json!(total));
        }
        if let Some(total) = db.user_sensitive_rows {
            fields.insert("user_sensitive_rows".into(), json!(total));
        }
        if !db.export_method.is_empty() {
            fields.insert("export_method".into(), json!(db.export_method));
        }
        let what = match scope {
            "full_table" => "read all of".to_string(),
            scope => format!(
                "read {rows} rows in {}s ({scope}) from",
                (ts.as_nanos() - first_ts.as_nanos()) / 1_000_000_000
            ),
        };
        Some(Candidate {
            ts,
            host: record.event.host.to_string(),
            summary: format!(
                "{} {what} sensitive {} on {} (client {})",
                db.db_user,
                db.sensitive_tables.join(","),
                record.event.host,
                db.client_addr
            ),
            evidence: proof,
            key: db.db_user.clone(),
            fields,
            severity: None,
            continues: false,
        })
    }
}

impl StatefulDetector for SensitiveReadVolume {
    fn state(&self) -> &'static str {
        "sensitive read totals"
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn observe(&mut self, record: &Record, _seen: Seen) -> Vec<Candidate> {
        self.add(record).into_iter().collect()
    }

    fn tick(&mut self, now: Timestamp) -> Vec<Candidate> {
        self.tracks.expire(now.saturating_sub(self.window));
        Vec::new()
    }

    fn evicted(&self) -> u64 {
        self.tracks.losses.total()
    }

    fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.tracks.losses.take()
    }
}

#[cfg(test)]
mod tests {
    //! The `bulk-sensitive-read` rule: chunked reads add up, long-lived accounts do not.

    use crate::detect::testkit::*;

    #[test]
    fn chunked_bulk_read_alerts_once_and_counts_the_repeats() {
        let mut fleet = Fleet::default();
        let mut updates = Vec::new();
        for i in 1..=6u64 {
            updates.extend(fleet.send(
                "db1",
                i as i64 * 10,
                query("sales_app", "s-1", 4000, Some(4000 * i), Some(4000 * i)),
            ));
        }
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{updates:?}");
        let alert = alerts[0];
        assert_eq!(alert.rule, "bulk-db-read");
        assert_eq!(alert.fields["db_user"], "sales_app");
        assert_eq!(alert.fields["rows_in_window"], 12_000);
        assert_eq!(alert.fields["user_sensitive_rows"], 12_000);
        assert_eq!(alert.fields["client_addr"], "10.0.0.23");
        assert_eq!(alert.fields["first_ts"], at(10).to_rfc3339());
        let seqs: Vec<u64> = alert.evidence.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "the third chunk crossed 10000 rows");
        assert!(
            alert.summary.starts_with("sales_app read 12000 rows"),
            "{}",
            alert.summary
        );
        // Three more chunks are another 12000 rows: a repeat of the same alert, not a new one.
        let repeats: Vec<u64> = updates
            .iter()
            .filter_map(|u| match u {
                AlertUpdate::Repeat { id, count, .. } if *id == alert.id => Some(*count),
                _ => None,
            })
            .collect();
        assert_eq!(repeats, vec![2]);
        assert_eq!(fleet.engine.stats().repeats, 1);
    }

    #[test]
    fn ordinary_accounts_never_cross_the_threshold_by_living_long() {
        let mut fleet = Fleet::default();
        let mut updates = Vec::new();
        // 100 rows every 10 minutes for two days: 28800 rows in all, 600 in any hour.
        let mut total = 5_000_000;
        for i in 0..288 {
            total += 100;
            updates.extend(fleet.send(
                "db1",
                i * 600,
                query("web", "pool-1", 100, Some(total), Some(total)),
            ));
        }
        // An agent restart starts its totals again from zero: not a negative read, not a burst.
        updates.extend(fleet.send(
            "db1",
            288 * 600,
            query("web", "pool-1", 100, Some(100), Some(100)),
        ));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
    }

    #[test]
    fn whole_sensitive_table_read_is_a_bulk_read() {
        let mut fleet = Fleet::default();
        let Body::Db(mut db) = query("analyst", "s-2", 50, None, None) else {
            unreachable!()
        };
        db.export_method = "full_table_read".into();
        let updates = fleet.send("db1", 0, db.into());
        assert_eq!(rules_of(&updates), vec!["bulk-db-read"]);
    }

    #[test]
    fn reads_without_running_totals_add_up_across_sessions() {
        let mut fleet = Fleet::default();
        let mut updates = Vec::new();
        for i in 0..5 {
            let session = format!("s-{i}");
            updates.extend(fleet.send("db1", i * 600, query("crm", &session, 3000, None, None)));
        }
        // A different user's reads are their own group.
        updates.extend(fleet.send("db1", 100, query("other", "s-x", 3000, None, None)));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{updates:?}");
        assert_eq!(alerts[0].rule, "bulk-db-read-chunked");
        assert_eq!(alerts[0].fields["value"], 12_000);
        assert_eq!(alerts[0].fields["db_user"], "crm");
        assert_eq!(alerts[0].evidence.len(), 4);

        // Spread over more than the window, the same reads stay quiet.
        let mut fleet = Fleet::default();
        let mut updates = Vec::new();
        for i in 0..8 {
            updates.extend(fleet.send("db1", i * 1800, query("crm", "s", 3000, None, None)));
        }
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
    }
}
