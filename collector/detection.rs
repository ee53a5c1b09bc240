//! Detection owns the tail of the store: at start it rebuilds the engine's state from the stored
//! events of the engine's own window ([`Detection::replay`]), then its thread evaluates committed
//! events and findings in commit order, stores the alerts it raises together with their
//! deliveries (one transaction, all or nothing), and wakes the hooks.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use bannin::time::Timestamp;
use rusqlite::Connection;

use crate::alert::Alert;
use crate::detect::{AlertUpdate, Engine};
use crate::hooks::{Notifier, Router, outbox};
use crate::store::ingest::CommitNotice;
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

impl Detection {
    /// Rebuilds the engine's state from what the store already holds, raising nothing: every
    /// stored event of the engine's own window (its longest detector window or correlation
    /// timespan, bounded by time, whatever the number of rows), and before it only the kinds
    /// whose whole history matters (the destinations first-seen knows). Rows are streamed one at a
    /// time into the engine, whose state is capped, so its memory does not depend on what the
    /// store holds. Call it before the store writer starts: an event committed during the replay
    /// would be seen twice, or never.
    pub fn replay(&mut self) -> Result<u64, StoreError> {
        let window = self.engine.replay_window();
        let since = Timestamp::now().saturating_sub(window);
        let engine = &mut self.engine;
        engine.begin_replay();
        let mut events = 0;
        for kind in engine.replay_history() {
            events += store::query::for_each_event(
                &self.conn,
                Some(kind),
                None,
                Some(since),
                |record| engine.replay_event(&record),
            )?;
        }
        events += store::query::for_each_event(&self.conn, None, Some(since), None, |record| {
            engine.replay_event(&record)
        })?;
        engine.end_replay();
        tracing::info!(
            events,
            window_secs = window.as_secs(),
            "detection state rebuilt from the store"
        );
        Ok(events)
    }

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
                    for finding in &notice.findings {
                        updates.extend(self.engine.observe_finding(finding));
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
                tracing::warn!(alert_id = %alert.id, rule = %alert.rule, severity = alert.severity.as_str(), host = %crate::present::escape_control(&alert.host), "{}", crate::present::escape_control(&alert.summary));
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
                    summary,
                    ..
                } => match store::alerts::repeat(
                    &tx,
                    id,
                    *count,
                    evidence,
                    fields,
                    summary.as_deref(),
                )? {
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
