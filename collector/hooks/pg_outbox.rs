//! The alert outbox on a PostgreSQL store: any collector delivers. A worker claims due rows with
//! `FOR UPDATE SKIP LOCKED` in a short transaction that pushes their next attempt a lease ahead, so
//! two collectors never take the same row at once and no transaction stays open during a delivery
//! (which would hold back the detection horizon). A collector that dies holding a lease leaves the
//! row due again when the lease ends: delivery is at least once, with the alert id as the
//! receiver's idempotency key.

use std::time::Duration;

use bannin::time::Timestamp;
use deadpool_postgres::Pool;

use super::outbox::Due;
use super::{HooksError, SinkId};
use crate::store::pg::pg_message;

/// How long a claimed row is left to the collector that claimed it: longer than one delivery
/// (the webhook timeout is 10 s by default, SMTP's 30 s). A collector that dies holding a claim
/// delays that one delivery by at most this.
pub const LEASE: Duration = Duration::from_secs(45);

fn failed(action: &'static str) -> impl Fn(tokio_postgres::Error) -> HooksError {
    move |error| HooksError::Pg {
        action,
        reason: pg_message(&error),
    }
}

async fn session(pool: &Pool) -> Result<deadpool_postgres::Object, HooksError> {
    pool.get().await.map_err(|error| HooksError::Pg {
        action: "reach the store",
        reason: error.to_string(),
    })
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// Claims the next due row of `sink` (as the SQLite outbox's `due`), leasing it. One row at a
/// time, so a lease covers one delivery, not a queue of them.
pub async fn claim(
    pool: &Pool,
    sink: &SinkId,
    now: Timestamp,
    window: Duration,
    limit: usize,
) -> Result<Vec<Due>, HooksError> {
    let client = session(pool).await?;
    let limit = i64::try_from(limit.min(1)).unwrap_or(1);
    let rows = client
        .query(
            "UPDATE hook_outbox o SET next_attempt_ns = $5
             FROM (SELECT alert_id, sink FROM hook_outbox
                   WHERE sink = $1 AND state = 'pending' AND next_attempt_ns <= $2
                     AND (delivered_ns IS NULL OR delivered_ns <= $2 - $4)
                   ORDER BY next_attempt_ns, enqueued_ns LIMIT $3
                   FOR UPDATE SKIP LOCKED) due
             WHERE o.alert_id = due.alert_id AND o.sink = due.sink
             RETURNING o.alert_id, o.payload, o.version, o.failures, o.enqueued_ns",
            &[
                &sink.0,
                &now.as_nanos(),
                &limit,
                &nanos(window),
                &now.saturating_add(LEASE).as_nanos(),
            ],
        )
        .await
        .map_err(failed("claim due deliveries"))?;
    let mut due: Vec<(i64, Due)> = rows
        .iter()
        .map(|row| {
            (
                row.get(4),
                Due {
                    alert_id: row.get(0),
                    payload: row.get(1),
                    version: row.get(2),
                    failures: u32::try_from(row.get::<_, i64>(3)).unwrap_or(u32::MAX),
                },
            )
        })
        .collect();
    due.sort_by_key(|(enqueued, _)| *enqueued);
    Ok(due.into_iter().map(|(_, due)| due).collect())
}

pub async fn mark_delivered(
    pool: &Pool,
    sink: &SinkId,
    row: &Due,
    now: Timestamp,
) -> Result<(), HooksError> {
    session(pool)
        .await?
        .execute(
            "UPDATE hook_outbox SET attempts = attempts + 1, failures = 0, last_error = NULL,
                 delivered_ns = $3, next_attempt_ns = $3,
                 state = CASE WHEN version = $4 THEN 'delivered' ELSE 'pending' END
             WHERE alert_id = $1 AND sink = $2",
            &[&row.alert_id, &sink.0, &now.as_nanos(), &row.version],
        )
        .await
        .map(drop)
        .map_err(failed("mark a delivery done"))
}

pub async fn mark_failed(
    pool: &Pool,
    sink: &SinkId,
    alert_id: &str,
    error: &str,
    next: Option<Timestamp>,
) -> Result<(), HooksError> {
    let (state, next_ns) = match next {
        Some(next) => ("pending", next.as_nanos()),
        None => ("failed", Timestamp::now().as_nanos()),
    };
    session(pool)
        .await?
        .execute(
            "UPDATE hook_outbox SET attempts = attempts + 1, failures = failures + 1,
                 last_error = $3, state = $4, next_attempt_ns = $5
             WHERE alert_id = $1 AND sink = $2",
            &[&alert_id, &sink.0, &error, &state, &next_ns],
        )
        .await
        .map(drop)
        .map_err(failed("record a failed delivery"))
}

pub async fn deliveries_since(
    pool: &Pool,
    sink: &SinkId,
    since: Timestamp,
) -> Result<Vec<Timestamp>, HooksError> {
    let rows = session(pool)
        .await?
        .query(
            "SELECT delivered_ns FROM hook_outbox WHERE sink = $1 AND delivered_ns > $2
             ORDER BY delivered_ns",
            &[&sink.0, &since.as_nanos()],
        )
        .await
        .map_err(failed("read recent deliveries"))?;
    Ok(rows
        .iter()
        .map(|row| Timestamp::from_nanos(row.get(0)))
        .collect())
}
