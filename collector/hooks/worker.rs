//! One delivery task per sink: takes due outbox rows, delivers them within the sink's rate limit, and
//! records each outcome before moving on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bannin::time::Timestamp;
use rusqlite::Connection;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep};
use tracing::Instrument;

use super::config::Retry;
use super::outbox::{self, Due};
use super::{Deliverer, Delivery, DeliveryError, HooksError, SinkId};
use crate::alert::Alert;

/// How often a worker looks for due rows without being notified: retries and held rows come due
/// with time alone.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rows taken per query; the rate limit may take fewer.
const BATCH: usize = 50;

pub(crate) struct SinkWorker {
    pub id: SinkId,
    pub deliverer: Deliverer,
    pub rate_per_minute: u32,
    pub rate_window: Duration,
    pub retry: Retry,
    pub db: OutboxDb,
    pub wake: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
}

/// Where the outbox is: the SQLite store (one connection, used off the async threads) or a
/// PostgreSQL store (a pool; rows claimed with a lease).
#[derive(Clone)]
pub(crate) enum OutboxDb {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(deadpool_postgres::Pool),
}

struct Sink {
    id: SinkId,
    deliverer: Deliverer,
    retry: Retry,
    rate: RateWindow,
    db: OutboxDb,
    /// Consecutive transient failures of the sink as a whole (a receiver that is down), so its pause
    /// grows even when each attempt picks a different row.
    failures: u32,
    paused_until: Option<Instant>,
}

impl SinkWorker {
    pub(crate) async fn run(self) {
        let span = tracing::info_span!("sink", sink = %self.id);
        let SinkWorker {
            id,
            deliverer,
            rate_per_minute,
            rate_window,
            retry,
            db,
            wake,
            mut shutdown,
        } = self;
        let mut sink = Sink {
            id,
            deliverer,
            retry,
            rate: RateWindow::new(rate_per_minute, rate_window),
            db,
            failures: 0,
            paused_until: None,
        };
        async move {
            sink.seed_rate().await;
            tracing::debug!("alert delivery worker started");
            loop {
                if *shutdown.borrow() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    () = sink.drain() => {}
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    () = wake.notified() => {}
                    () = sleep(POLL_INTERVAL) => {}
                }
            }
            tracing::debug!("alert delivery worker stopped");
        }
        .instrument(span)
        .await;
    }
}

impl Sink {
    async fn db<T, F>(&self, db: &Arc<Mutex<Connection>>, work: F) -> Result<T, HooksError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, HooksError> + Send + 'static,
    {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().map_err(|_| HooksError::Poisoned)?;
            work(&conn)
        })
        .await
        .map_err(|source| HooksError::Join { source })?
    }

    /// Counts deliveries of the last window from before a restart against the limit.
    async fn seed_rate(&mut self) {
        let id = self.id.clone();
        let since = Timestamp::now().saturating_sub(self.rate.window);
        let times = match &self.db {
            OutboxDb::Sqlite(db) => {
                self.db(db, move |conn| outbox::deliveries_since(conn, &id, since))
                    .await
            }
            OutboxDb::Postgres(pool) => super::pg_outbox::deliveries_since(pool, &id, since).await,
        };
        match times {
            Ok(times) => {
                let now_wall = Timestamp::now().as_nanos();
                let now = Instant::now();
                for ts in times {
                    let age = u64::try_from(now_wall.saturating_sub(ts.as_nanos())).unwrap_or(0);
                    let at = now.checked_sub(Duration::from_nanos(age)).unwrap_or(now);
                    self.rate.record(at);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read recent deliveries for the rate limit")
            }
        }
    }

    /// Delivers due rows until none is due, the rate limit is reached, or the receiver fails.
    async fn drain(&mut self) {
        loop {
            let now = Instant::now();
            if let Some(until) = self.paused_until {
                if now < until {
                    return;
                }
                self.paused_until = None;
            }
            let budget = self.rate.available(now).min(BATCH);
            if budget == 0 {
                return;
            }
            let id = self.id.clone();
            let window = self.rate.window;
            let rows = match &self.db {
                OutboxDb::Sqlite(db) => {
                    self.db(db, move |conn| {
                        outbox::due(conn, &id, Timestamp::now(), window, budget)
                    })
                    .await
                }
                OutboxDb::Postgres(pool) => {
                    super::pg_outbox::claim(pool, &id, Timestamp::now(), window, budget).await
                }
            };
            let rows = match rows {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the alert outbox; trying again shortly");
                    self.paused_until = Some(Instant::now() + POLL_INTERVAL);
                    return;
                }
            };
            if rows.is_empty() {
                return;
            }
            for row in rows {
                self.rate.record(Instant::now());
                let delivery = Delivery::new(&row.alert_id, &self.id, row.version);
                let result = match serde_json::from_str::<Alert>(&row.payload) {
                    Ok(alert) => self.deliverer.deliver(&alert, &delivery).await,
                    Err(error) => Err(DeliveryError::permanent(format!(
                        "the stored alert does not parse: {error}"
                    ))),
                };
                let stop = match result {
                    Ok(()) => {
                        self.record_delivered(row).await;
                        false
                    }
                    Err(error) => self.record_failure(row, error).await,
                };
                if stop {
                    return;
                }
            }
        }
    }

    async fn record_delivered(&mut self, row: Due) {
        self.failures = 0;
        let id = self.id.clone();
        let alert_id = row.alert_id.clone();
        let recorded = match &self.db {
            OutboxDb::Sqlite(db) => {
                self.db(db, move |conn| {
                    outbox::mark_delivered(conn, &id, &row, Timestamp::now())
                })
                .await
            }
            OutboxDb::Postgres(pool) => {
                super::pg_outbox::mark_delivered(pool, &id, &row, Timestamp::now()).await
            }
        };
        match recorded {
            Ok(()) => tracing::info!(alert_id, "alert delivered"),
            // The row stays pending and is sent again: at least once, never lost.
            Err(error) => tracing::error!(alert_id, %error, "alert delivered but not recorded"),
        }
    }

    /// Records a failed attempt; true when the sink should pause (the receiver itself is failing).
    async fn record_failure(&mut self, row: Due, error: DeliveryError) -> bool {
        let failures = row.failures.saturating_add(1);
        let give_up = error.permanent && failures >= self.retry.permanent_after;
        let mut delay = self.retry.backoff.delay(failures);
        if !error.permanent {
            self.failures = self.failures.saturating_add(1);
            delay = delay.max(self.retry.backoff.delay(self.failures));
        }
        if let Some(asked) = error.retry_after {
            delay = delay.max(asked.min(self.retry.backoff.max));
        }
        let next = (!give_up).then(|| Timestamp::now().saturating_add(delay));
        let id = self.id.clone();
        let alert_id = row.alert_id.clone();
        let message = error.message.clone();
        let recorded = match &self.db {
            OutboxDb::Sqlite(db) => {
                self.db(db, move |conn| {
                    outbox::mark_failed(conn, &id, &row.alert_id, &message, next)
                })
                .await
            }
            OutboxDb::Postgres(pool) => {
                super::pg_outbox::mark_failed(pool, &id, &row.alert_id, &message, next).await
            }
        };
        if let Err(db_error) = recorded {
            tracing::error!(alert_id, error = %db_error, "cannot record a failed delivery");
        }
        if give_up {
            tracing::error!(
                alert_id,
                attempts = failures,
                error = %error.message,
                "alert delivery rejected permanently; giving up"
            );
        } else {
            tracing::warn!(
                alert_id,
                attempts = failures,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error.message,
                "alert delivery failed; will retry"
            );
        }
        if error.permanent {
            false
        } else {
            self.paused_until = Some(Instant::now() + delay);
            true
        }
    }
}

/// A sliding one-window count of attempts.
struct RateWindow {
    limit: u32,
    window: Duration,
    sent: VecDeque<Instant>,
}

impl RateWindow {
    fn new(limit: u32, window: Duration) -> Self {
        RateWindow {
            limit,
            window,
            sent: VecDeque::new(),
        }
    }

    fn available(&mut self, now: Instant) -> usize {
        if self.limit == 0 {
            return usize::MAX;
        }
        while let Some(first) = self.sent.front() {
            if now.saturating_duration_since(*first) >= self.window {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        usize::try_from(self.limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.sent.len())
    }

    fn record(&mut self, at: Instant) {
        if self.limit > 0 {
            self.sent.push_back(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_window_frees_slots_as_they_age() {
        let mut rate = RateWindow::new(2, Duration::from_secs(60));
        let start = Instant::now();
        rate.record(start);
        tokio::time::advance(Duration::from_secs(30)).await;
        rate.record(Instant::now());
        assert_eq!(rate.available(Instant::now()), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(rate.available(Instant::now()), 1);
        assert_eq!(
            RateWindow::new(0, Duration::from_secs(60)).available(start),
            usize::MAX
        );
    }
}
