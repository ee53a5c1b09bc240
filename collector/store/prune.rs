//! Retention: deleting old events a whole signed batch at a time, so what stays still verifies.
//!
//! Each step is one short transaction on the retention task's own connection; the ingest writer waits
//! at most one step for the lock. Freed pages go to SQLite's freelist and later inserts reuse them, so
//! a store whose intake and retention balance stops growing without a VACUUM.

use bannin::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// What one step removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub batches: u64,
    pub events: u64,
}

/// Opens a connection for the retention task: its own, so ingest never waits behind it for long.
pub fn open(data_dir: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = super::open_writer(data_dir)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// Deletes at most `max_batches` of the oldest batches whose every event is older than `cutoff`,
/// with their events and the chain findings they explain, in one transaction.
pub fn prune_step(
    conn: &mut Connection,
    cutoff: Timestamp,
    max_batches: usize,
) -> Result<Pruned, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut pruned = Pruned::default();
    let agents: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT no FROM agents ORDER BY no")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for agent_no in agents {
        while pruned.batches < max_batches as u64 {
            let oldest: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT first_seq, last_seq FROM batches WHERE agent_no = ?1
                     ORDER BY first_seq, last_seq LIMIT 1",
                    [agent_no],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((first, last)) = oldest else { break };
            let newest: Option<i64> = tx.query_row(
                "SELECT MAX(ts) FROM events WHERE agent_no = ?1 AND seq BETWEEN ?2 AND ?3",
                params![agent_no, first, last],
                |r| r.get(0),
            )?;
            if newest.is_some_and(|ts| ts >= cutoff.as_nanos()) {
                break;
            }
            let events = tx.execute(
                "DELETE FROM events WHERE agent_no = ?1 AND seq <= ?2",
                params![agent_no, last],
            )?;
            tx.execute(
                "DELETE FROM batches WHERE agent_no = ?1 AND last_seq <= ?2",
                params![agent_no, last],
            )?;
            tx.execute(
                "DELETE FROM findings WHERE agent_no = ?1 AND last_seq <= ?2",
                params![agent_no, last],
            )?;
            tx.execute(
                "INSERT INTO pruned (agent_no, through_seq, pruned_ts) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent_no) DO UPDATE SET
                     through_seq = MAX(through_seq, excluded.through_seq),
                     pruned_ts = excluded.pruned_ts",
                params![agent_no, last, Timestamp::now().as_nanos()],
            )?;
            pruned.batches += 1;
            pruned.events += events as u64;
        }
    }
    tx.commit()?;
    Ok(pruned)
}

/// The sequence number through which an agent's events were deleted on purpose (0: none).
pub fn pruned_through(conn: &Connection, agent_no: i64) -> Result<u64, StoreError> {
    let through: Option<i64> = conn
        .query_row(
            "SELECT through_seq FROM pruned WHERE agent_no = ?1",
            [agent_no],
            |r| r.get(0),
        )
        .optional()?;
    Ok(through.and_then(|t| u64::try_from(t).ok()).unwrap_or(0))
}
