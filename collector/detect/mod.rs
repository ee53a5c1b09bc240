//! Detection: rules over committed events and the collector's own findings, producing alerts.
//!
//! The rule pack is data (`rules/*.yml`, built into the binary and extended from the configuration):
//! Sigma rules matched one event at a time ([`sigma`]), Sigma correlations over their matches
//! ([`correlate`]), and a few named stateful detectors for what Sigma cannot say ([`detectors`]).
//! Every piece of state is capped ([`state::Window`]), and what the caps push out is counted.
//!
//! The engine is synchronous and owns all its state; the collector drives it from one task:
//! [`Engine::observe`] per committed event, [`Engine::observe_finding`] per chain problem,
//! [`Engine::tick`] every second, and [`Engine::replay`] once at start to rebuild state.

mod config;
mod correlate;
mod detectors;
mod fields;
mod networks;
mod rules;
mod sigma;
mod state;
mod suppress;
mod taxonomy;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bannin::event::Record;
use bannin::time::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value as Json};

pub use config::DetectConfig;
pub(crate) use rules::RuleReport;

use self::correlate::{Correlation, Correlator, Hit};
use self::detectors::{Candidate, Seen, StatefulDetector};
use self::fields::{Field, Subject};
use self::rules::{Body, Rule};
use self::suppress::{AllowList, Dedup, Verdict};
use crate::alert::{Alert, EvidenceRef};
use crate::finding::Finding;

/// A loaded rule as the console lists it.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub severity: crate::alert::Severity,
    /// "sigma", "correlation" or "detector".
    pub shape: &'static str,
    /// Whether its matches become alerts (false: it only feeds correlations).
    pub generate: bool,
}

/// The rules `config` loads, in load order.
pub fn rule_list(config: &DetectConfig) -> Result<Vec<RuleInfo>, DetectError> {
    Ok(rules::load(config)?
        .0
        .into_iter()
        .map(|rule| RuleInfo {
            shape: match rule.body {
                Body::Sigma(_) => "sigma",
                Body::Correlation(_) => "correlation",
                Body::Detector(_) => "detector",
            },
            id: rule.meta.id,
            title: rule.meta.title,
            severity: rule.meta.severity,
            generate: rule.meta.generate,
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read rules from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: not a valid rule document: {error}")]
    Yaml {
        source_name: String,
        error: yaml_serde::Error,
    },
    #[error("{source_name}: rule {rule}: {message}")]
    Rule {
        source_name: String,
        rule: String,
        message: String,
    },
    #[error("detection.allow entry {index}: {message}")]
    Allow { index: usize, message: String },
}

/// What the engine tells the collector to store.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertUpdate {
    /// A new alert: store and send it.
    New(Alert),
    /// Another occurrence of a recent alert: set its `count` (the total so far) and add the
    /// evidence; hooks need not be told again.
    Repeat {
        id: String,
        rule: String,
        count: u64,
        ts: Timestamp,
        evidence: Vec<EvidenceRef>,
        /// Fields whose latest value replaces the stored one (running totals); usually none.
        fields: Map<String, Json>,
        /// A summary that replaces the stored one, when the occurrence says more than the first
        /// did (a connection's close naming its bytes); usually none.
        summary: Option<String>,
    },
}

/// Counters for operators: how much state the engine holds and what it had to drop.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DetectStats {
    pub rules: usize,
    pub tracked_files: usize,
    /// Alerts not raised because an allow entry matched.
    pub suppressed: u64,
    /// Occurrences folded into an earlier alert by de-duplication.
    pub repeats: u64,
    /// State entries pushed out by the limits; each one may be a missed alert.
    pub evicted: u64,
}

/// The events a match rests on, built only when something matched.
#[derive(Clone, Copy)]
enum Proof<'a> {
    Record(&'a Record),
    Refs(&'a [EvidenceRef]),
}

impl Proof<'_> {
    fn refs(self) -> Vec<EvidenceRef> {
        match self {
            Proof::Record(record) => vec![detectors::evidence(record)],
            Proof::Refs(refs) => refs.to_vec(),
        }
    }
}

pub struct Engine {
    rules: Vec<Rule>,
    /// Sigma rules by the event kind they pin; `any_kind` for rules that pin none.
    by_kind: HashMap<String, Vec<usize>>,
    any_kind: Vec<usize>,
    /// Whether rule i feeds some correlation.
    feeds: Vec<bool>,
    correlator: Correlator,
    longest_timespan: Duration,
    /// The named stateful detectors, each with its rule.
    detectors: Vec<(usize, Box<dyn StatefulDetector>)>,
    allow: AllowList,
    dedup: Dedup,
    id_prefix: String,
    next_id: u64,
    /// The collector's clock as of the last tick; liveness is judged on it.
    clock: Timestamp,
    replaying: bool,
    /// The newest event time seen by the replay in progress.
    replay_last: Timestamp,
    suppressed: u64,
    repeats: u64,
    /// The `detection-state-evicted` rule, if loaded, and per host the entries its current alert
    /// stands for (its `evicted` field is this running total).
    evictions_rule: Option<usize>,
    evicted_since_alert: HashMap<String, u64>,
    /// Entries pushed out since the collector last read [`Engine::take_evictions`] for its metric.
    unmetered_evictions: u64,
    /// Evictions already logged, and when, so the log says each loss once a minute at most.
    reported_evicted: u64,
    reported_at: Timestamp,
    /// What became of each rule of `rule_dirs`.
    report: Vec<RuleReport>,
}

impl Engine {
    pub fn new(config: &DetectConfig) -> Result<Engine, DetectError> {
        let (rules, report) = rules::load(config)?;
        let rule_error = |rule: &Rule, message: String| DetectError::Rule {
            source_name: "rule pack".into(),
            rule: rule.meta.id.clone(),
            message,
        };
        let mut by_kind: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_kind = Vec::new();
        let mut correlations = Vec::new();
        let mut detectors = Vec::new();
        let mut evictions_rule = None;
        let mut feeds = vec![false; rules.len()];
        let mut longest_timespan = Duration::ZERO;
        for (index, rule) in rules.iter().enumerate() {
            match &rule.body {
                Body::Sigma(detection) => match detection.kinds() {
                    Some(kinds) => {
                        for kind in kinds {
                            by_kind.entry(kind).or_default().push(index);
                        }
                    }
                    None => any_kind.push(index),
                },
                Body::Correlation(spec) => {
                    let mut inputs = Vec::new();
                    for reference in &spec.rules {
                        let input = rules.iter().position(|r| {
                            (r.meta.id == *reference || r.name.as_deref() == Some(reference))
                                && !matches!(r.body, Body::Correlation(_))
                        });
                        let input = input.ok_or_else(|| {
                            rule_error(
                                rule,
                                format!("{reference:?} names no Sigma rule or detector"),
                            )
                        })?;
                        feeds[input] = true;
                        inputs.push(input);
                    }
                    longest_timespan = longest_timespan.max(spec.timespan);
                    correlations.push(Correlation::new(index, inputs, spec));
                }
                Body::Detector(spec) if spec.name == detectors::STATE_EVICTED => {
                    evictions_rule.get_or_insert(index);
                }
                Body::Detector(spec) => {
                    let detector =
                        detectors::build(spec, &config.limits).map_err(|m| rule_error(rule, m))?;
                    detectors.push((index, detector));
                }
            }
        }
        let limits = &config.limits;
        Ok(Engine {
            by_kind,
            any_kind,
            feeds,
            correlator: Correlator::new(
                correlations,
                limits.correlation_groups,
                limits.per_host,
                limits.matches_per_group,
            ),
            longest_timespan,
            allow: AllowList::new(&config.allow)?,
            dedup: Dedup::new(config.dedup_window, limits.dedup_entries, limits.per_host),
            id_prefix: format!("{:x}", Timestamp::now().as_nanos()),
            next_id: 0,
            clock: Timestamp::default(),
            replaying: false,
            replay_last: Timestamp::default(),
            suppressed: 0,
            repeats: 0,
            evictions_rule,
            evicted_since_alert: HashMap::new(),
            unmetered_evictions: 0,
            reported_evicted: 0,
            reported_at: Timestamp::default(),
            detectors,
            rules,
            report,
        })
    }

    /// Says in the log what became of each rule of `rule_dirs`: loaded, or why it cannot run.
    pub fn log_report(&self) {
        log_report(&self.report);
    }

    /// Runs every rule over one committed event.
    pub fn observe(&mut self, record: &Record) -> Vec<AlertUpdate> {
        let mut out = Vec::new();
        // Liveness is judged on the collector's clock (the last tick), so that an agent whose own
        // clock is wrong is judged by when its events arrive; a replay has only the events' times.
        let heard_at = if self.replaying {
            record.event.ts
        } else if self.clock == Timestamp::default() {
            Timestamp::now()
        } else {
            self.clock
        };
        let seen = Seen {
            at: heard_at,
            replaying: self.replaying,
        };
        let subject = Subject::Record(record);
        self.run_sigma(subject, record.event.ts, Proof::Record(record), &mut out);
        for index in 0..self.detectors.len() {
            let (rule, detector) = &mut self.detectors[index];
            let rule = *rule;
            for candidate in detector.observe(record, seen) {
                self.conclude(rule, subject, candidate, &mut out);
            }
        }
        out
    }

    /// Runs the rules over a problem the collector found in an agent's chain.
    pub fn observe_finding(&mut self, finding: &Finding) -> Vec<AlertUpdate> {
        let mut out = Vec::new();
        let subject = Subject::Finding(finding);
        let evidence = [finding.evidence()];
        self.run_sigma(subject, finding.ts, Proof::Refs(&evidence), &mut out);
        out
    }

    /// Time-based rules (agent silence) and expiry of idle state; call about once a second with
    /// the collector's clock.
    pub fn tick(&mut self, now: Timestamp) -> Vec<AlertUpdate> {
        let mut out = Vec::new();
        self.clock = self.clock.max(now);
        self.correlator.expire(now, self.longest_timespan);
        for index in 0..self.detectors.len() {
            let (rule, detector) = &mut self.detectors[index];
            let rule = *rule;
            for candidate in detector.tick(now) {
                self.emit(rule, candidate, &mut out);
            }
        }
        self.raise_losses(now, &mut out);
        self.report_losses(now);
        out
    }

    /// Turns state the caps pushed out since the last tick into one `detection-state-evicted`
    /// alert per host (and the metric): each lost entry may be a missed alert, so it is never
    /// only a log line. A replay keeps its losses for the first tick after it.
    fn raise_losses(&mut self, now: Timestamp, out: &mut Vec<AlertUpdate>) {
        let mut by_host: HashMap<String, (u64, Vec<&'static str>)> = HashMap::new();
        let mut add = |what: &'static str, losses: Vec<(String, u64)>| {
            for (host, count) in losses {
                let entry = by_host.entry(host).or_default();
                entry.0 += count;
                if !entry.1.contains(&what) {
                    entry.1.push(what);
                }
            }
        };
        add("correlation groups", self.correlator.take_losses());
        // De-duplication memory pushed out makes repeats into new alerts, so nothing is missed;
        // it is counted, not alerted, else these very alerts would push out more of it each tick.
        let dedup: u64 = self.dedup.take_losses().iter().map(|(_, n)| n).sum();
        self.unmetered_evictions += dedup;
        for (_, detector) in &mut self.detectors {
            add(detector.state(), detector.take_losses());
        }
        if by_host.is_empty() {
            return;
        }
        let rule = self.evictions_rule;
        let mut hosts: Vec<_> = by_host.into_iter().collect();
        hosts.sort();
        for (host, (count, what)) in hosts {
            self.unmetered_evictions += count;
            tracing::warn!(%host, evicted = count, state = %what.join(", "), "detection state limits pushed out entries; alerts about them may be missed (raise [detection.limits])");
            let Some(rule) = rule else { continue };
            let before = self.evicted_since_alert.get(&host).copied().unwrap_or(0);
            let mut fields = Map::new();
            fields.insert("evicted".into(), Json::from(before + count));
            fields.insert("state".into(), Json::from(what.clone()));
            let candidate = Candidate {
                ts: now,
                summary: format!(
                    "detection state limits pushed out {count} entries of {host} ({}); alerts about them may be missed",
                    what.join(", ")
                ),
                host: host.clone(),
                evidence: Vec::new(),
                fields,
                key: String::new(),
                severity: None,
                continues: false,
            };
            let emitted = out.len();
            self.emit(rule, candidate, out);
            let total = match out.get_mut(emitted) {
                // A new alert (the last one is past the de-duplication window) starts afresh.
                Some(AlertUpdate::New(alert)) => {
                    alert.fields.insert("evicted".into(), Json::from(count));
                    count
                }
                _ => before + count,
            };
            self.evicted_since_alert.insert(host, total);
        }
    }

    /// Logs state the limits pushed out since the last report: each lost entry may be a missed
    /// alert, and operators must be able to see that and raise `[detection.limits]`.
    fn report_losses(&mut self, now: Timestamp) {
        if now < self.reported_at.saturating_add(Duration::from_secs(60)) {
            return;
        }
        let stats = self.stats();
        if stats.evicted > self.reported_evicted {
            tracing::warn!(
                evicted = stats.evicted - self.reported_evicted,
                evicted_total = stats.evicted,
                tracked_files = stats.tracked_files,
                "detection state limits dropped entries; alerts may be missed (raise [detection.limits])"
            );
            self.reported_evicted = stats.evicted;
            self.reported_at = now;
        }
    }

    /// Rebuilds state from stored events after a restart, oldest first, raising no alerts: what
    /// they would have raised was raised before the restart.
    #[cfg(test)]
    pub fn replay<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        self.begin_replay();
        for record in records {
            self.replay_event(record);
        }
        self.end_replay();
    }

    /// How far back a replay must go to rebuild every window: the longest detector window or
    /// correlation timespan.
    pub fn replay_window(&self) -> Duration {
        self.detectors
            .iter()
            .map(|(_, d)| d.window())
            .fold(self.longest_timespan, Duration::max)
    }

    /// Event kinds whose stored history before the window rebuilds state too (the destinations
    /// first-seen already knows), each kind once.
    pub fn replay_history(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = Vec::new();
        for kind in self.detectors.iter().flat_map(|(_, d)| d.history()) {
            if !kinds.contains(kind) {
                kinds.push(kind);
            }
        }
        kinds
    }

    /// Starts a replay: [`Engine::replay_event`] for each stored event, oldest first, then
    /// [`Engine::end_replay`]. One event at a time, so the caller can stream them.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
        self.replay_last = Timestamp::default();
    }

    pub fn replay_event(&mut self, record: &Record) {
        self.replay_last = self.replay_last.max(record.event.ts);
        self.observe(record);
    }

    pub fn end_replay(&mut self) {
        self.replaying = false;
        let last = self.replay_last;
        for (_, detector) in &mut self.detectors {
            detector.end_replay(last);
        }
    }

    /// State entries pushed out since the last call (for `bannin_detection_state_evicted_total`).
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.unmetered_evictions)
    }

    pub fn stats(&self) -> DetectStats {
        let tracked_files = self.detectors.iter().map(|(_, d)| d.tracked_files()).sum();
        DetectStats {
            rules: self.rules.len(),
            tracked_files,
            suppressed: self.suppressed,
            repeats: self.repeats,
            evicted: self.correlator.evicted()
                + self.dedup.evicted()
                + self.detectors.iter().map(|(_, d)| d.evicted()).sum::<u64>(),
        }
    }

    fn run_sigma(
        &mut self,
        subject: Subject<'_>,
        ts: Timestamp,
        proof: Proof<'_>,
        out: &mut Vec<AlertUpdate>,
    ) {
        let kind = subject.kind();
        let pinned = self
            .by_kind
            .get(kind)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut matched = Vec::new();
        for &index in pinned.iter().chain(&self.any_kind) {
            if let Body::Sigma(detection) = &self.rules[index].body {
                if detection.matches(subject) {
                    matched.push(index);
                }
            }
        }
        if matched.is_empty() {
            return;
        }
        let evidence = proof.refs();
        let evidence = evidence.as_slice();
        for index in matched {
            let candidate = self.sigma_candidate(index, subject, ts, evidence);
            self.conclude(index, subject, candidate, out);
        }
    }

    /// What a rule concluded about an event: unless allowed, it feeds the correlations that count
    /// the rule, and becomes an alert if the rule generates alerts.
    fn conclude(
        &mut self,
        rule: usize,
        subject: Subject<'_>,
        candidate: Candidate,
        out: &mut Vec<AlertUpdate>,
    ) {
        if self.allowed(rule, &candidate) {
            return;
        }
        if self.feeds[rule] {
            let hits = self
                .correlator
                .feed(rule, subject, candidate.ts, &candidate.evidence);
            for hit in hits {
                let correlation = self.correlator.correlations[hit.correlation].rule;
                let found = self.correlation_candidate(correlation, hit, subject, candidate.ts);
                self.emit(correlation, found, out);
            }
        }
        if self.rules[rule].meta.generate {
            self.emit(rule, candidate, out);
        }
    }

    fn sigma_candidate(
        &self,
        rule: usize,
        subject: Subject<'_>,
        ts: Timestamp,
        evidence: &[EvidenceRef],
    ) -> Candidate {
        let meta = &self.rules[rule].meta;
        let mut fields = Map::new();
        for field in &meta.fields {
            if let Some(value) = field.json(subject) {
                fields.insert(field.name().to_string(), value);
            }
        }
        let key = meta
            .dedup_by
            .iter()
            .map(|f| f.json(subject).unwrap_or(Json::Null).to_string())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        Candidate {
            ts,
            host: subject.host().to_string(),
            summary: render(meta.summary.as_deref(), &meta.title, &fields, subject),
            evidence: evidence.to_vec(),
            fields,
            key,
            severity: None,
            continues: false,
        }
    }

    fn correlation_candidate(
        &self,
        rule: usize,
        hit: Hit,
        subject: Subject<'_>,
        ts: Timestamp,
    ) -> Candidate {
        let meta = &self.rules[rule].meta;
        let mut fields = Map::new();
        for field in &meta.fields {
            if let Some(value) = field.json(subject) {
                fields.insert(field.name().to_string(), value);
            }
        }
        for (field, value) in &hit.group {
            // A group-by on `host` is already the alert's own host.
            if !crate::alert::RESERVED_FIELDS.contains(&field.name()) {
                fields.insert(field.name().to_string(), value.clone());
            }
        }
        fields.insert("value".into(), Json::from(hit.value));
        fields.insert("first_ts".into(), serde_json::json!(hit.first_ts));
        let key = hit
            .group
            .iter()
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
            .join("\u{1f}");
        Candidate {
            ts,
            host: subject.host().to_string(),
            summary: render(meta.summary.as_deref(), &meta.title, &fields, subject),
            evidence: hit.evidence,
            fields,
            key,
            severity: None,
            continues: false,
        }
    }

    fn allowed(&mut self, rule: usize, candidate: &Candidate) -> bool {
        let allowed = self.allow.allows(
            &self.rules[rule].meta.id,
            &candidate.host,
            candidate.ts,
            &candidate.fields,
        );
        if allowed && !self.replaying {
            self.suppressed += 1;
        }
        allowed
    }

    fn emit(&mut self, rule: usize, mut candidate: Candidate, out: &mut Vec<AlertUpdate>) {
        if self.replaying || self.allowed(rule, &candidate) {
            return;
        }
        // Rules are refused at load for these; a detector's own field must not slip through
        // either, or the alert's JSON repeats a key and no longer parses anywhere.
        candidate
            .fields
            .retain(|name, _| !crate::alert::RESERVED_FIELDS.contains(&name.as_str()));
        let meta = &self.rules[rule].meta;
        // What the rule is, for whoever reads the alert without the rule file: its title, its
        // ATT&CK and other tags, and a level the severity cannot say.
        candidate
            .fields
            .insert("title".into(), Json::from(meta.title.clone()));
        if !meta.tags.is_empty() {
            candidate
                .fields
                .insert("tags".into(), Json::from(meta.tags.clone()));
        }
        if meta.informational {
            candidate
                .fields
                .insert("level".into(), Json::from("informational"));
        }
        if candidate.continues
            && let Some((id, count)) =
                self.dedup
                    .recent(rule, &candidate.host, candidate.key.clone(), candidate.ts)
        {
            out.push(AlertUpdate::Repeat {
                id,
                rule: meta.id.clone(),
                count,
                ts: candidate.ts,
                evidence: candidate.evidence,
                fields: candidate.fields,
                summary: Some(candidate.summary),
            });
            return;
        }
        let id = format!("{}-{}", self.id_prefix, self.next_id);
        match self.dedup.check(
            rule,
            &candidate.host,
            candidate.key.clone(),
            candidate.ts,
            &id,
        ) {
            Verdict::Repeat { id, count } => {
                self.repeats += 1;
                let fields = if Some(rule) == self.evictions_rule {
                    candidate.fields
                } else {
                    Map::new()
                };
                out.push(AlertUpdate::Repeat {
                    id,
                    rule: meta.id.clone(),
                    count,
                    ts: candidate.ts,
                    evidence: candidate.evidence,
                    fields,
                    summary: None,
                });
            }
            Verdict::New => {
                self.next_id += 1;
                out.push(AlertUpdate::New(Alert {
                    id,
                    rule: meta.id.clone(),
                    severity: candidate.severity.unwrap_or(meta.severity),
                    ts: candidate.ts,
                    host: candidate.host,
                    summary: candidate.summary,
                    evidence: candidate.evidence,
                    count: 1,
                    fields: candidate.fields,
                }));
            }
        }
    }
}

/// Loads the Sigma rules of one directory (or file) as `[detection] rule_dirs` would, with the
/// rules of `config` they may refer to, and reports on each: `bannin-collector rules check`.
pub(crate) fn check_rules(path: &std::path::Path, config: &DetectConfig) -> Vec<RuleReport> {
    let params = rules::params(config);
    let mut known = match rules::load(&DetectConfig {
        rule_dirs: Vec::new(),
        ..config.clone()
    }) {
        Ok((rules, _)) => rules,
        Err(_) => Vec::new(),
    };
    let mut report = rules::load_dir(path, &params, &mut known);
    rules::drop_dangling_correlations(&mut known, &mut report);
    report
}

/// The load report of `rule_dirs` in the log: each rule loaded or why it cannot run, then totals.
/// Names from rule files are logged with `?`, which escapes control and invisible characters.
fn log_report(report: &[RuleReport]) {
    if report.is_empty() {
        return;
    }
    let mut refused = 0;
    for entry in report {
        let file = entry.file.display().to_string();
        let rule = entry.id.as_deref().unwrap_or("-");
        match &entry.outcome {
            Ok(()) => tracing::info!(file = ?file, rule = ?rule, "sigma rule loaded"),
            Err(reason) => {
                refused += 1;
                tracing::warn!(file = ?file, rule = ?rule, reason = ?reason, "sigma rule cannot run; left out");
            }
        }
    }
    tracing::info!(loaded = report.len() - refused, refused, "rule_dirs loaded");
}

/// Fills a `{field}` template from the alert's fields, then the event's; the title if none.
fn render(
    template: Option<&str>,
    title: &str,
    fields: &Map<String, Json>,
    subject: Subject<'_>,
) -> String {
    let Some(template) = template else {
        return format!("{title} on {}", subject.host());
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            rest = "";
            break;
        };
        let name = &after[..close];
        let value = fields.get(name).cloned().or_else(|| match name {
            "host" => Some(Json::from(subject.host())),
            _ => Field::parse(name).and_then(|f| f.json(subject)),
        });
        out.push_str(&match value {
            Some(Json::String(s)) => s,
            Some(Json::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            Some(Json::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        });
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}
