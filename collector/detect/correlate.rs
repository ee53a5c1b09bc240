//! Sigma correlation rules over other rules' matches: `event_count`, `value_count`, `value_sum`,
//! `temporal` and `temporal_ordered`, each with `group-by` and `timespan`.
//!
//! State is one group per (correlation, group-by values) in a capped [`Window`]; each group keeps
//! its matches within the timespan, at most `matches_per_group`. A group that fires is cleared, so a
//! burst raises one alert, not one per further match.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use bannin::time::Timestamp;

use super::fields::{Field, Subject, Val};
use super::rules::{CorrelationKind, CorrelationSpec};
use super::state::HostWindows;
use crate::alert::EvidenceRef;

/// At most this many evidence references are attached to one correlation alert.
const MAX_EVIDENCE: usize = 32;

#[derive(Debug)]
enum Value {
    None,
    Num(i64),
    Str(String),
}

#[derive(Debug)]
struct Point {
    ts: Timestamp,
    /// Which of the correlation's rules matched.
    slot: usize,
    value: Value,
    evidence: Vec<EvidenceRef>,
}

/// One correlation rule, compiled against the rule list.
pub(crate) struct Correlation {
    /// Index of the correlation rule in the engine's rule list.
    pub(crate) rule: usize,
    /// Indices of the rules it counts, in the order the spec lists them.
    pub(crate) inputs: Vec<usize>,
    kind: CorrelationKind,
    group_by: Vec<Field>,
    timespan: Duration,
    cmp: super::sigma::Cmp,
    threshold: i64,
    field: Option<Field>,
}

/// A correlation that fired.
pub(crate) struct Hit {
    /// Index into the correlator's correlations.
    pub(crate) correlation: usize,
    /// The count, distinct count or sum that crossed the threshold (the number of rules for
    /// temporal correlations).
    pub(crate) value: i64,
    pub(crate) first_ts: Timestamp,
    pub(crate) evidence: Vec<EvidenceRef>,
    pub(crate) group: Vec<(Field, serde_json::Value)>,
}

pub(crate) struct Correlator {
    pub(crate) correlations: Vec<Correlation>,
    /// Per host, so one host's flood of distinct groups pushes out only its own; matches dropped
    /// because a group held `per_group` already are losses of that group's host too.
    groups: HostWindows<(usize, String), VecDeque<Point>>,
    /// The host each group is counted against: the one whose match opened it. A group's later
    /// matches may come from other hosts (a correlation across the fleet).
    owners: HashMap<(usize, String), String>,
    per_group: usize,
}

impl Correlation {
    pub(crate) fn new(rule: usize, inputs: Vec<usize>, spec: &CorrelationSpec) -> Self {
        Correlation {
            rule,
            inputs,
            kind: spec.kind,
            group_by: spec.group_by.clone(),
            timespan: spec.timespan,
            cmp: spec.cmp,
            threshold: spec.threshold,
            field: spec.field,
        }
    }
}

impl Correlator {
    pub(crate) fn new(
        correlations: Vec<Correlation>,
        groups: usize,
        per_host: usize,
        per_group: usize,
    ) -> Self {
        Correlator {
            correlations,
            groups: HostWindows::new(per_host.min(groups), groups, Duration::ZERO),
            owners: HashMap::new(),
            per_group: per_group.max(1),
        }
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.groups.losses.total()
    }

    pub(crate) fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.groups.losses.take()
    }

    /// Feeds one match of rule `rule`; returns the correlations it completes.
    pub(crate) fn feed(
        &mut self,
        rule: usize,
        subject: Subject<'_>,
        ts: Timestamp,
        evidence: &[EvidenceRef],
    ) -> Vec<Hit> {
        let mut hits = Vec::new();
        for index in 0..self.correlations.len() {
            let correlation = &self.correlations[index];
            let Some(slot) = correlation.inputs.iter().position(|r| *r == rule) else {
                continue;
            };
            let group: Vec<(Field, serde_json::Value)> = correlation
                .group_by
                .iter()
                .map(|f| (*f, f.json(subject).unwrap_or(serde_json::Value::Null)))
                .collect();
            let key = (
                index,
                group
                    .iter()
                    .map(|(_, v)| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\u{1f}"),
            );
            let value = match correlation.field {
                Some(field) => {
                    let mut value = Value::None;
                    field.any(subject, &mut |v| {
                        value = match v {
                            Val::Num(n) => Value::Num(n),
                            Val::Str(s) => Value::Str(s.to_string()),
                            Val::Bool(b) => Value::Str(b.to_string()),
                        };
                        true
                    });
                    value
                }
                None => Value::None,
            };
            let point = Point {
                ts,
                slot,
                value,
                evidence: evidence.to_vec(),
            };
            let host = match self.owners.get(&key) {
                Some(owner) => owner.clone(),
                None => subject.host().to_string(),
            };
            let host = host.as_str();
            if self.groups.touch(host, &key, ts).is_none() {
                for gone in self.groups.insert(host, key.clone(), VecDeque::new(), ts) {
                    self.owners.remove(&gone);
                }
                self.owners.insert(key.clone(), host.to_string());
            }
            let Some(points) = self.groups.get_mut(host, &key) else {
                continue;
            };
            let since = ts.saturating_sub(correlation.timespan);
            points.retain(|p| p.ts >= since);
            let mut dropped = false;
            if points.len() >= self.per_group {
                points.pop_front();
                dropped = true;
            }
            points.push_back(point);
            let fired = correlation.fires(points);
            if dropped {
                // Counted against the host whose match pushed the oldest out.
                self.groups.losses.add(subject.host(), 1);
            }
            let Some(points) = self.groups.get_mut(host, &key) else {
                continue;
            };
            if let Some(value) = fired {
                let first_ts = points.iter().map(|p| p.ts).min().unwrap_or(ts);
                let mut evidence: Vec<EvidenceRef> = points
                    .iter()
                    .flat_map(|p| p.evidence.iter().cloned())
                    .collect();
                if evidence.len() > MAX_EVIDENCE {
                    // Keep the first matches (how it started) and the last (what completed it).
                    let tail = evidence.split_off(evidence.len() - MAX_EVIDENCE / 2);
                    evidence.truncate(MAX_EVIDENCE / 2);
                    evidence.extend(tail);
                }
                self.groups.remove(host, &key);
                self.owners.remove(&key);
                hits.push(Hit {
                    correlation: index,
                    value,
                    first_ts,
                    evidence,
                    group,
                });
            }
        }
        hits
    }

    /// Forgets groups idle for longer than `idle` before `now`.
    pub(crate) fn expire(&mut self, now: Timestamp, idle: Duration) {
        for (key, _) in self.groups.expire(now.saturating_sub(idle)) {
            self.owners.remove(&key);
        }
    }
}

impl Correlation {
    fn fires(&self, points: &VecDeque<Point>) -> Option<i64> {
        let rules = i64::try_from(self.inputs.len()).unwrap_or(i64::MAX);
        match self.kind {
            CorrelationKind::EventCount => {
                let count = i64::try_from(points.len()).unwrap_or(i64::MAX);
                self.cmp.holds(count, self.threshold).then_some(count)
            }
            CorrelationKind::ValueCount => {
                let distinct: HashSet<String> = points
                    .iter()
                    .filter_map(|p| match &p.value {
                        Value::Str(s) => Some(s.clone()),
                        Value::Num(n) => Some(n.to_string()),
                        Value::None => None,
                    })
                    .collect();
                let count = i64::try_from(distinct.len()).unwrap_or(i64::MAX);
                self.cmp.holds(count, self.threshold).then_some(count)
            }
            CorrelationKind::ValueSum => {
                let sum = points
                    .iter()
                    .map(|p| match p.value {
                        Value::Num(n) => n,
                        _ => 0,
                    })
                    .fold(0i64, i64::saturating_add);
                self.cmp.holds(sum, self.threshold).then_some(sum)
            }
            CorrelationKind::Temporal => {
                let seen: HashSet<usize> = points.iter().map(|p| p.slot).collect();
                (seen.len() == self.inputs.len()).then_some(rules)
            }
            CorrelationKind::TemporalOrdered => {
                // Walk back from the newest match of the last rule, taking for each earlier rule
                // its latest match no later than the one after it.
                let last = self.inputs.len() - 1;
                let mut bound = points.iter().rev().find(|p| p.slot == last)?.ts;
                for slot in (0..last).rev() {
                    bound = points
                        .iter()
                        .rev()
                        .find(|p| p.slot == slot && p.ts <= bound)?
                        .ts;
                }
                Some(rules)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Correlations of the built-in pack across hosts.

    use crate::detect::testkit::*;

    #[test]
    fn bulk_read_then_large_export_on_another_host_alerts() {
        let mut fleet = Fleet::default();
        let who = attacker();
        let mut updates = Vec::new();
        updates.extend(fleet.send(
            "db1",
            0,
            query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
        ));
        updates.extend(fleet.send(
            "fs2",
            3600,
            file(FileAction::Create, "/srv/share/c1.csv", Some(0), None, &who),
        ));
        updates.extend(fleet.send(
            "fs2",
            3700,
            file(
                FileAction::Write,
                "/srv/share/c1.csv",
                Some(300 * MIB),
                Some(csv(3_000_000)),
                &who,
            ),
        ));
        let rules = rules_of(&updates);
        assert_eq!(rules, vec!["bulk-db-read", "bulk-read-then-export"]);
        let chain = new_alerts(&updates)[1];
        assert_eq!(chain.severity, Severity::Critical);
        assert_eq!(chain.host, "fs2");
        assert_eq!(chain.fields["path"], "/srv/share/c1.csv");
        let agents: Vec<&str> = chain.evidence.iter().map(|e| e.agent_id.as_str()).collect();
        assert_eq!(agents, vec!["agent-db1", "agent-fs2"]);

        // The export long after the read is not linked to it.
        let mut fleet = Fleet::default();
        let mut updates = Vec::new();
        updates.extend(fleet.send(
            "db1",
            0,
            query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
        ));
        updates.extend(fleet.send(
            "fs2",
            7 * 3600,
            file(
                FileAction::Write,
                "/srv/share/c1.csv",
                Some(300 * MIB),
                Some(csv(1)),
                &who,
            ),
        ));
        assert_eq!(rules_of(&updates), vec!["bulk-db-read"]);
        // Nor is an export that came first.
        let mut fleet = Fleet::default();
        let mut updates = Vec::new();
        updates.extend(fleet.send(
            "fs2",
            0,
            file(
                FileAction::Write,
                "/srv/share/c1.csv",
                Some(300 * MIB),
                Some(csv(1)),
                &who,
            ),
        ));
        updates.extend(fleet.send(
            "db1",
            60,
            query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
        ));
        assert_eq!(rules_of(&updates), vec!["bulk-db-read"]);
    }
}
