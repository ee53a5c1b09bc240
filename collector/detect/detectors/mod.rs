//! Named stateful detectors: rules whose state is richer than Sigma correlations can express.
//! Each is parameterised from its rule document (`detector:` + `parameters:`), so thresholds stay
//! data; only the state machine is code, one file per detector behind [`StatefulDetector`].

mod archived;
mod export_sent;
mod first_seen;
mod lifecycle;
mod reads;
mod silent;

use std::time::Duration;

use bannin::event::{ProcessInfo, Record};
use bannin::time::Timestamp;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Map, Value as Json, json};

use super::config::Limits;
use super::rules::DetectorSpec;
use crate::alert::{EvidenceRef, Severity};

/// The detector behind `detection-state-evicted`: it keeps no state of its own, the engine raises
/// it from what the other detectors' caps pushed out.
pub(crate) const STATE_EVICTED: &str = "state_evicted";

/// Builds the detector a rule names.
pub(crate) fn build(
    spec: &DetectorSpec,
    limits: &Limits,
) -> Result<Box<dyn StatefulDetector>, String> {
    Ok(match spec.name.as_str() {
        "export_lifecycle" => Box::new(lifecycle::ExportLifecycle::new(spec, limits)?),
        "sensitive_read_volume" => Box::new(reads::SensitiveReadVolume::new(spec, limits)?),
        "first_seen_destination" => Box::new(first_seen::FirstSeen::new(spec, limits)?),
        "agent_silent" => Box::new(silent::AgentSilent::new(spec, limits)?),
        "export_read_then_sent" => Box::new(export_sent::ExportReadThenSent::new(spec, limits)?),
        "export_archived" => Box::new(archived::ExportArchived::new(spec, limits)?),
        other => return Err(format!("unknown detector {other:?}")),
    })
}

/// A state machine over committed events. The engine feeds every detector every event, ticks
/// them with the collector's clock, rebuilds them by replay after a restart, and turns what their
/// caps push out into `detection-state-evicted`.
pub(crate) trait StatefulDetector: Send {
    /// What its state holds, as `detection-state-evicted` names it ("tracked exports").
    fn state(&self) -> &'static str;

    /// How far back stored events must be replayed to rebuild its state after a restart.
    fn window(&self) -> Duration;

    /// Event kinds whose whole stored history, not only the window, rebuilds its state.
    fn history(&self) -> &'static [&'static str] {
        &[]
    }

    /// One committed event (or a stored one, during a replay).
    fn observe(&mut self, record: &Record, seen: Seen) -> Vec<Candidate>;

    /// Time passing on the collector's clock: what silence concludes, and idle state expiring.
    fn tick(&mut self, now: Timestamp) -> Vec<Candidate>;

    /// A replay ended; `last` is the newest event time it saw.
    fn end_replay(&mut self, _last: Timestamp) {}

    /// Files it follows, for the operators' counters.
    fn tracked_files(&self) -> usize {
        0
    }

    /// State entries its caps pushed out so far.
    fn evicted(&self) -> u64;

    /// State pushed out since the last call, by host.
    fn take_losses(&mut self) -> Vec<(String, u64)>;
}

/// How the engine came by an event.
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    /// When the agent was heard from: the collector's clock live, the event's own time in a replay.
    pub(crate) at: Timestamp,
    pub(crate) replaying: bool,
}

/// What a detector concluded, before allow-lists and de-duplication.
pub(crate) struct Candidate {
    pub(crate) ts: Timestamp,
    pub(crate) host: String,
    pub(crate) summary: String,
    pub(crate) evidence: Vec<EvidenceRef>,
    pub(crate) fields: Map<String, Json>,
    /// What makes two findings "the same alert" for de-duplication (with the rule and host).
    pub(crate) key: String,
    /// Overrides the rule's level, e.g. a silence after a clean stop is less alarming.
    pub(crate) severity: Option<Severity>,
    /// More of an occurrence already raised, not another one (a connection's close with its
    /// bytes): folded into the recent alert of the same key without counting, its fields
    /// replacing the alert's; an alert of its own only when that alert is no longer recent.
    pub(crate) continues: bool,
}

pub(crate) fn evidence(record: &Record) -> EvidenceRef {
    EvidenceRef {
        agent_id: record.agent_id.clone(),
        seq: record.event.seq,
    }
}

fn process_fields(fields: &mut Map<String, Json>, prefix: &str, process: &ProcessInfo) {
    fields.insert(format!("{prefix}pid"), json!(process.pid));
    fields.insert(format!("{prefix}exe"), json!(process.exe));
    fields.insert(format!("{prefix}user"), json!(process.user));
    if !process.cmdline.is_empty() {
        fields.insert(format!("{prefix}cmdline"), json!(process.cmdline));
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        set.add(Glob::new(pattern).map_err(|e| format!("bad glob {pattern:?}: {e}"))?);
    }
    set.build().map_err(|e| e.to_string())
}
