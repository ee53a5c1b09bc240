//! The detection thread: evaluates committed events in commit order, stores the alerts it raises
//! together with their deliveries (one transaction), and wakes the hooks.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use bannin::time::Timestamp;
use rusqlite::Connection;

use crate::alert::{Alert, EvidenceRef};
use crate::detect::{AlertUpdate, Engine, Finding, FindingKind};
use crate::hooks::{Notifier, Router, outbox};
use crate::store::ingest::{self, CommitNotice};
use crate::store::{self, StoreError};

/// What quickstart (or any observer) sees after detection has run.
pub enum Observed {
    Committed(CommitNotice),
    Alert(Alert),
}

pub struct Detection {
    pub engine: Engine,
    pub conn: Connection,
    /// Signs the alert chain.
    pub seal: crate::seal::Seal,
    pub router: Router,
    pub notifier: Notifier,
    pub tap: Option<SyncSender<Observed>>,
}

fn finding(f: &ingest::Finding) -> Finding {
    Finding {
        agent_id: f.agent_id.clone(),
        host: f.host.clone(),
        kind: if f.kind == "chain.gap" {
            FindingKind::ChainGap
        } else {
            FindingKind::ChainTamper
        },
        ts: f.ts,
        detail: f.detail.clone(),
        evidence: vec![EvidenceRef {
            agent_id: f.agent_id.clone(),
            seq: f.last_seq.saturating_add(1),
        }],
    }
}

impl Detection {
    pub fn spawn(
        self,
        notices: Receiver<CommitNotice>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("detection".into())
            .spawn(move || self.run(notices))
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "detection is a dedicated thread, outside the runtime's clock"
    )]
    fn run(mut self, notices: Receiver<CommitNotice>) {
        let mut last_tick = std::time::Instant::now();
        loop {
            let mut updates = Vec::new();
            match notices.recv_timeout(Duration::from_millis(500)) {
                Ok(notice) => {
                    for record in &notice.records {
                        updates.extend(self.engine.observe(record));
                    }
                    for f in &notice.findings {
                        updates.extend(self.engine.observe_finding(&finding(f)));
                    }
                    if let Some(tap) = &self.tap {
                        let _ = tap.try_send(Observed::Committed(notice));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                last_tick = std::time::Instant::now();
                updates.extend(self.engine.tick(Timestamp::now()));
                crate::metrics::detection_state_evicted(self.engine.take_evictions());
            }
            if updates.is_empty() {
                continue;
            }
            let raised = self.store(&updates);
            self.notifier.notify();
            for alert in raised {
                // The summary quotes file names: escaped, a line break in one cannot forge a log line.
                tracing::warn!(alert_id = %alert.id, rule = %alert.rule, severity = alert.severity.as_str(), host = %crate::output::escape_control(&alert.host), "{}", crate::output::escape_control(&alert.summary));
                if let Some(tap) = &self.tap {
                    let _ = tap.try_send(Observed::Alert(alert));
                }
            }
        }
    }

    /// Stores `updates` with their deliveries, retrying until the store takes them: an alert is
    /// never dropped between detection and delivery. The engine's de-duplication already counts
    /// these alerts as raised, which holds only once they are stored, so nothing else runs (new
    /// events wait, and the store writer waits on them) until they are.
    #[expect(
        clippy::disallowed_methods,
        reason = "detection is a dedicated thread: waiting here is meant to hold it back"
    )]
    fn store(&mut self, updates: &[AlertUpdate]) -> Vec<Alert> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.persist(updates) {
                Ok(raised) => return raised,
                Err(error) => {
                    crate::metrics::alert_store_failed();
                    tracing::error!(%error, alerts = updates.len(), retry_in = ?wait, "cannot store alerts; retrying, nothing is dropped");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Stores new alerts and repeats with their deliveries in one transaction, all or nothing;
    /// returns the new ones.
    fn persist(&mut self, updates: &[AlertUpdate]) -> Result<Vec<Alert>, PersistError> {
        let tx = self.conn.transaction().map_err(StoreError::from)?;
        let mut raised = Vec::new();
        for update in updates {
            let alert = match update {
                AlertUpdate::New(alert) => {
                    store::alerts::insert(&tx, alert)?;
                    raised.push(alert.clone());
                    alert.clone()
                }
                AlertUpdate::Repeat {
                    id,
                    count,
                    evidence,
                    fields,
                    ..
                } => match store::alerts::repeat(&tx, id, *count, evidence, fields)? {
                    Some(alert) => alert,
                    None => {
                        // Its first occurrence is stored before any repeat (same transaction
                        // or an earlier one), so this is a store edited underneath us.
                        tracing::warn!(alert_id = %id, "a repeated alert is missing from the store");
                        continue;
                    }
                },
            };
            // The same transaction chains it, so no alert is stored, changed or removed
            // without verify seeing it.
            store::alert_chain::append(&tx, &self.seal, &alert.id)?;
            let sinks = self.router.route(&alert);
            outbox::enqueue(&tx, &alert, &sinks)?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(raised)
    }
}

#[derive(Debug, thiserror::Error)]
enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot queue alert deliveries: {0}")]
    Outbox(#[from] crate::hooks::HooksError),
}
