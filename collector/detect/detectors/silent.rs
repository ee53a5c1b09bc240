//! `agent_silent`: agents that have sent nothing for a while.

use std::time::Duration;

use bannin::event::{Body, Record};
use bannin::time::Timestamp;
use serde_json::{Map, json};

use super::{Candidate, Seen, StatefulDetector};
use crate::alert::{EvidenceRef, Severity};
use crate::detect::config::Limits;
use crate::detect::rules::DetectorSpec;
use crate::detect::state::{Losses, Window};

struct Liveness {
    host: String,
    last_heard: Timestamp,
    last_seq: u64,
    last_event_ts: Timestamp,
    stopped: bool,
    alerted: bool,
}

/// Agents that have sent nothing for a while, measured on the collector's clock so that an agent
/// with a wrong clock is judged by when its events arrive.
pub(crate) struct AgentSilent {
    after: Duration,
    /// Set by a replay: the next tick restarts every agent's silence from the collector's start.
    grace_pending: bool,
    agents: Window<String, Liveness>,
    losses: Losses,
}

impl AgentSilent {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        Ok(AgentSilent {
            after: spec.duration("after", Duration::from_secs(60))?,
            grace_pending: false,
            agents: Window::coarse(limits.agents, Duration::from_secs(1)),
            losses: Losses::default(),
        })
    }

    /// Notes that the agent talked at `at`. In a replay `at` is the event's own time and events of
    /// several agents interleave, so only a later time counts; live, `at` is the collector's clock.
    fn heard(&mut self, record: &Record, at: Timestamp, replaying: bool) {
        let stopped = matches!(&record.event.body, Body::Agent(a) if a.action == bannin::event::AgentAction::Stop);
        match self.agents.touch(&record.agent_id, at) {
            Some(entry) => {
                if !replaying || at >= entry.last_heard {
                    if *entry.host != *record.event.host {
                        entry.host = record.event.host.to_string();
                    }
                    entry.last_heard = at;
                    entry.last_seq = record.event.seq;
                    entry.last_event_ts = record.event.ts;
                    entry.stopped = stopped;
                    entry.alerted = false;
                }
            }
            None => {
                let liveness = Liveness {
                    host: record.event.host.to_string(),
                    last_heard: at,
                    last_seq: record.event.seq,
                    last_event_ts: record.event.ts,
                    stopped,
                    alerted: false,
                };
                for (_, lost) in self.agents.insert(record.agent_id.clone(), liveness, at) {
                    self.losses.add(&lost.host, 1);
                }
            }
        }
    }

    /// After a replay: agents already silent when the collector stopped were reported then, so
    /// they are not reported again until they talk and fall silent anew. The others could not
    /// talk while the collector was down: their silence is counted from the first tick.
    fn settle(&mut self, replay_end: Timestamp) {
        self.grace_pending = true;
        let after = self.after;
        let keys: Vec<String> = self.agents.iter().map(|(k, _)| k.clone()).collect();
        for key in keys {
            if let Some(entry) = self.agents.get_mut(&key) {
                if entry.last_heard.saturating_add(after) <= replay_end {
                    entry.alerted = true;
                }
            }
        }
    }

    fn silences(&mut self, now: Timestamp) -> Vec<Candidate> {
        if std::mem::take(&mut self.grace_pending) {
            let keys: Vec<String> = self.agents.iter().map(|(k, _)| k.clone()).collect();
            for key in keys {
                if let Some(entry) = self.agents.get_mut(&key) {
                    entry.last_heard = entry.last_heard.max(now);
                }
            }
        }
        let mut findings = Vec::new();
        let keys: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, l)| !l.alerted && l.last_heard.saturating_add(self.after) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for agent_id in keys {
            let Some(entry) = self.agents.get_mut(&agent_id) else {
                continue;
            };
            entry.alerted = true;
            let silent = (now.as_nanos() - entry.last_heard.as_nanos()) / 1_000_000_000;
            let mut fields = Map::new();
            fields.insert("agent_id".into(), json!(agent_id));
            fields.insert("last_seen".into(), json!(entry.last_heard));
            fields.insert("last_event_ts".into(), json!(entry.last_event_ts));
            fields.insert("last_seq".into(), json!(entry.last_seq));
            fields.insert("silent_secs".into(), json!(silent));
            fields.insert("stopped".into(), json!(entry.stopped));
            let why = if entry.stopped {
                " after a clean stop"
            } else {
                ""
            };
            findings.push(Candidate {
                ts: now,
                host: entry.host.clone(),
                summary: format!(
                    "agent {agent_id} on {} silent for {silent}s{why}",
                    entry.host
                ),
                evidence: vec![EvidenceRef {
                    agent_id: agent_id.clone(),
                    seq: entry.last_seq,
                }],
                key: agent_id,
                fields,
                severity: entry.stopped.then_some(Severity::Low),
                continues: false,
            });
        }
        findings
    }
}

impl StatefulDetector for AgentSilent {
    fn state(&self) -> &'static str {
        "agent liveness"
    }

    fn window(&self) -> Duration {
        self.after
    }

    fn observe(&mut self, record: &Record, seen: Seen) -> Vec<Candidate> {
        self.heard(record, seen.at, seen.replaying);
        Vec::new()
    }

    fn tick(&mut self, now: Timestamp) -> Vec<Candidate> {
        self.silences(now)
    }

    fn end_replay(&mut self, last: Timestamp) {
        self.settle(last);
    }

    fn evicted(&self) -> u64 {
        self.losses.total()
    }

    fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.losses.take()
    }
}

#[cfg(test)]
mod tests {
    //! Silent agents: once per silence, re-armed when they talk.

    use crate::detect::testkit::*;

    #[test]
    fn silent_agent_alerts_once_per_silence_and_rearms_when_it_talks() {
        let mut fleet = Fleet::default();
        let mut silent = Vec::new();
        fleet.engine.tick(at(0));
        fleet.send("pc1", 0, heartbeat());
        fleet.send("pc2", 0, heartbeat());
        for second in 1..=1200 {
            fleet
                .engine
                .tick(at(second))
                .into_iter()
                .for_each(|u| silent.push((second, u)));
            // pc2 keeps talking every 30 s; pc1 talks again at 100 s and at 1000 s.
            if second % 30 == 0 {
                fleet.send("pc2", second, heartbeat());
            }
            if second == 100 || second == 1000 {
                fleet.send("pc1", second, heartbeat());
            }
        }
        let fired: Vec<(i64, &str, u64)> = silent
            .iter()
            .map(|(s, u)| match u {
                AlertUpdate::New(a) => (*s, a.host.as_str(), a.count),
                AlertUpdate::Repeat { rule, count, .. } => (*s, rule.as_str(), *count),
            })
            .collect();
        // One alert per silence; a second silence within the dedup window (10 minutes) counts as a
        // repeat of the first (a flapping agent is one alert), a later one is a new alert.
        assert_eq!(
            fired,
            vec![(60, "pc1", 1), (160, "agent-silent", 2), (1060, "pc1", 1)]
        );
        let AlertUpdate::New(alert) = &silent[0].1 else {
            unreachable!()
        };
        assert_eq!(alert.rule, "agent-silent");
        assert_eq!(alert.fields["agent_id"], "agent-pc1");
        assert_eq!(alert.fields["stopped"], false);
        assert_eq!(alert.evidence[0].seq, 1);
        let AlertUpdate::New(third) = &silent[2].1 else {
            unreachable!()
        };
        assert_ne!(alert.id, third.id);

        // A clean stop is still reported, at low severity.
        fleet.send("pc2", 1201, AgentEvent::new(AgentAction::Stop).into());
        let updates: Vec<AlertUpdate> = (1202..=1300)
            .flat_map(|s| fleet.engine.tick(at(s)))
            .collect();
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].host, "pc2");
        assert_eq!(alerts[0].severity, Severity::Low);
    }
}
