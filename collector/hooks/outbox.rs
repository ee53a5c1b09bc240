//! The durable outbox: one row per (alert, sink) in the collector's SQLite store, written in the same
//! transaction that stores the alert and worked off by the delivery worker.
//!
//! A row is `pending` until delivered, `delivered` after, or `failed` once it has failed
//! `permanent_after` times with the last rejection permanent. `failures` counts consecutive failed
//! attempts and drives the backoff; `attempts` counts every attempt. Delivery is at least once: a
//! worker stopped between sending and recording sends again after a restart.

use std::path::Path;
use std::time::Duration;

use bannin::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{HooksError, SinkId};
use crate::alert::Alert;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hook_outbox (
    alert_id        TEXT    NOT NULL,
    sink            TEXT    NOT NULL,
    -- The alert object as last enqueued: a repeat (higher count) replaces it.
    payload         TEXT    NOT NULL,
    -- Bumped by every enqueue, so a delivery of an older payload does not hide a newer one.
    version         INTEGER NOT NULL DEFAULT 1,
    state           TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER NOT NULL,
    last_error      TEXT,
    enqueued_ns     INTEGER NOT NULL,
    delivered_ns    INTEGER,
    PRIMARY KEY (alert_id, sink)
);
CREATE INDEX IF NOT EXISTS hook_outbox_due ON hook_outbox (sink, state, next_attempt_ns);
";

/// Creates the outbox tables if they are missing. Safe to call on every start.
pub fn init_schema(conn: &Connection) -> Result<(), HooksError> {
    conn.execute_batch(SCHEMA)
        .map_err(|source| HooksError::Sql {
            action: "create the outbox tables",
            source,
        })
}

/// Records that `alert` is to be delivered to each of `sinks` (usually `HooksHandle::route(alert)`).
///
/// Call it in the transaction that stores the alert, then `HooksHandle::notify()` after the commit.
/// Enqueuing an alert id again (a de-duplication repeat with a higher count) replaces the payload of a
/// pending row; a row already delivered becomes pending again, and the worker holds it until one rate
/// window after its last delivery, so a noisy alert is re-sent at most once a window with its latest
/// count. A row that failed permanently keeps that state (with the new payload).
pub fn enqueue(tx: &Transaction<'_>, alert: &Alert, sinks: &[SinkId]) -> Result<(), HooksError> {
    if sinks.is_empty() {
        return Ok(());
    }
    let payload = serde_json::to_string(alert).map_err(|source| HooksError::Encode { source })?;
    let now = Timestamp::now().as_nanos();
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO hook_outbox (alert_id, sink, payload, next_attempt_ns, enqueued_ns)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (alert_id, sink) DO UPDATE SET
                 payload = excluded.payload,
                 version = version + 1,
                 next_attempt_ns = CASE WHEN state = 'delivered' THEN ?4 ELSE next_attempt_ns END,
                 state = CASE WHEN state = 'delivered' THEN 'pending' ELSE state END",
        )
        .map_err(|source| HooksError::Sql {
            action: "prepare the outbox insert",
            source,
        })?;
    for sink in sinks {
        insert
            .execute(params![alert.id, sink.0, payload, now])
            .map_err(|source| HooksError::Sql {
                action: "enqueue an alert delivery",
                source,
            })?;
    }
    Ok(())
}

/// Where one alert's delivery to one sink stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    pub sink: SinkId,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub delivered_ts: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not attempted yet, or waiting on the rate limit or a repeat window.
    Pending,
    Delivered,
    /// The last attempt failed; another is scheduled.
    FailedRetrying,
    /// Rejected as permanent too often; no longer retried.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::FailedRetrying => "failed-retrying",
            DeliveryState::Failed => "failed",
        }
    }
}

/// The delivery state of `alert_id` for every sink it was enqueued for, by sink name. Works on a
/// read-only connection, also to a store whose outbox was never created (no deliveries then).
pub fn delivery_status(
    conn: &Connection,
    alert_id: &str,
) -> Result<Vec<DeliveryStatus>, HooksError> {
    let sql_error = |source| HooksError::Sql {
        action: "read delivery status",
        source,
    };
    let exists = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'hook_outbox'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(sql_error)?
        .is_some();
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT sink, state, attempts, failures, last_error, delivered_ns
             FROM hook_outbox WHERE alert_id = ?1 ORDER BY sink",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map(params![alert_id], |row| {
            let state: String = row.get(1)?;
            let failures: i64 = row.get(3)?;
            let delivered_ns: Option<i64> = row.get(5)?;
            Ok(DeliveryStatus {
                sink: SinkId(row.get(0)?),
                state: match state.as_str() {
                    "delivered" => DeliveryState::Delivered,
                    "failed" => DeliveryState::Failed,
                    _ if failures > 0 => DeliveryState::FailedRetrying,
                    _ => DeliveryState::Pending,
                },
                attempts: u32::try_from(row.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                last_error: row.get(4)?,
                delivered_ts: delivered_ns.map(Timestamp::from_nanos),
            })
        })
        .map_err(sql_error)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
}

/// Opens the worker's own connection to the store: WAL, so the collector's writer and readers are not
/// blocked, and a busy timeout, so a concurrent commit makes it wait rather than fail.
pub(crate) fn open(path: &Path) -> Result<Connection, HooksError> {
    let sql_error = |source| HooksError::Sql {
        action: "open the store",
        source,
    };
    let conn = Connection::open(path).map_err(sql_error)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(sql_error)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql_error)?;
    init_schema(&conn)?;
    Ok(conn)
}

/// A delivery that is due.
#[derive(Debug, Clone)]
pub(crate) struct Due {
    pub alert_id: String,
    pub payload: String,
    pub version: i64,
    pub failures: u32,
}

/// Up to `limit` pending rows of `sink` whose time has come, oldest schedule first. A row delivered
/// before (a repeat) is due only once `window` has passed since that delivery.
pub(crate) fn due(
    conn: &Connection,
    sink: &SinkId,
    now: Timestamp,
    window: Duration,
    limit: usize,
) -> Result<Vec<Due>, HooksError> {
    let sql_error = |source| HooksError::Sql {
        action: "read due deliveries",
        source,
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT alert_id, payload, version, failures FROM hook_outbox
             WHERE sink = ?1 AND state = 'pending' AND next_attempt_ns <= ?2
                 AND (delivered_ns IS NULL OR delivered_ns <= ?2 - ?4)
             ORDER BY next_attempt_ns, enqueued_ns LIMIT ?3",
        )
        .map_err(sql_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(
            params![sink.0, now.as_nanos(), limit, duration_nanos(window)],
            |row| {
                Ok(Due {
                    alert_id: row.get(0)?,
                    payload: row.get(1)?,
                    version: row.get(2)?,
                    failures: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(u32::MAX),
                })
            },
        )
        .map_err(sql_error)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
}

/// Records a successful delivery. When the alert was enqueued again meanwhile (a newer payload), the
/// row stays pending, and [`due`] holds it until one rate window after this delivery.
pub(crate) fn mark_delivered(
    conn: &Connection,
    sink: &SinkId,
    row: &Due,
    now: Timestamp,
) -> Result<(), HooksError> {
    conn.execute(
        "UPDATE hook_outbox SET
             attempts = attempts + 1,
             failures = 0,
             last_error = NULL,
             delivered_ns = ?3,
             state = CASE WHEN version = ?4 THEN 'delivered' ELSE 'pending' END
         WHERE alert_id = ?1 AND sink = ?2",
        params![row.alert_id, sink.0, now.as_nanos(), row.version],
    )
    .map(drop)
    .map_err(|source| HooksError::Sql {
        action: "mark a delivery done",
        source,
    })
}

/// Records a failed attempt: either another try at `next` or, when `give_up`, the final state failed.
pub(crate) fn mark_failed(
    conn: &Connection,
    sink: &SinkId,
    alert_id: &str,
    error: &str,
    next: Option<Timestamp>,
) -> Result<(), HooksError> {
    let (state, next_ns) = match next {
        Some(next) => ("pending", next.as_nanos()),
        None => ("failed", Timestamp::now().as_nanos()),
    };
    conn.execute(
        "UPDATE hook_outbox SET
             attempts = attempts + 1,
             failures = failures + 1,
             last_error = ?3,
             state = ?4,
             next_attempt_ns = ?5
         WHERE alert_id = ?1 AND sink = ?2",
        params![alert_id, sink.0, error, state, next_ns],
    )
    .map(drop)
    .map_err(|source| HooksError::Sql {
        action: "record a failed delivery",
        source,
    })
}

/// When `sink` last delivered, for deliveries after `since`: seeds the rate limiter after a restart.
pub(crate) fn deliveries_since(
    conn: &Connection,
    sink: &SinkId,
    since: Timestamp,
) -> Result<Vec<Timestamp>, HooksError> {
    let sql_error = |source| HooksError::Sql {
        action: "read recent deliveries",
        source,
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT delivered_ns FROM hook_outbox WHERE sink = ?1 AND delivered_ns > ?2
             ORDER BY delivered_ns",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map(params![sink.0, since.as_nanos()], |row| {
            row.get::<_, i64>(0).map(Timestamp::from_nanos)
        })
        .map_err(sql_error)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
}

/// How many rows wait for sinks that are no longer configured (logged at start, left in place so a
/// sink that comes back under the same name picks them up).
pub(crate) fn orphaned(conn: &Connection, configured: &[SinkId]) -> Result<u64, HooksError> {
    let sql_error = |source| HooksError::Sql {
        action: "count orphaned deliveries",
        source,
    };
    let mut stmt = conn
        .prepare("SELECT sink, count(*) FROM hook_outbox WHERE state = 'pending' GROUP BY sink")
        .map_err(sql_error)?;
    let counts = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(sql_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_error)?;
    Ok(counts
        .into_iter()
        .filter(|(sink, _)| !configured.iter().any(|c| c.0 == *sink))
        .map(|(_, n)| u64::try_from(n).unwrap_or(0))
        .sum())
}

fn duration_nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_without_an_outbox_has_no_deliveries_to_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bannin.db");
        Connection::open(&path).unwrap();
        let reader =
            Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(delivery_status(&reader, "alert-1").unwrap(), []);
    }
}
