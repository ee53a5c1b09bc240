//! Retention: deleting old events a whole signed batch at a time, so what stays still verifies.
//!
//! Each step is one short transaction on the retention task's own connection; the ingest writer waits
//! at most one step for the lock. Freed pages go to SQLite's freelist and later inserts reuse them, so
//! a store whose intake and retention balance stops growing without a VACUUM.

use bannin::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::seal::{self, Seal};

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

/// Deletes at most `max_batches` of the oldest batches the collector received before `cutoff`,
/// with their events and the chain findings they explain, in one transaction.
///
/// Age is when the collector received a batch, never the time an agent wrote on its events: an
/// agent's clock (or a compromised agent) must not be able to have fresh evidence deleted by
/// stamping it old, nor keep everything forever by stamping one event in the future.
pub fn prune_step(
    conn: &mut Connection,
    seal: &Seal,
    cutoff: Timestamp,
    max_batches: usize,
) -> Result<Pruned, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut pruned = Pruned::default();
    let agents: Vec<(i64, String)> = {
        let mut stmt = tx.prepare("SELECT no, id FROM agents ORDER BY no")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (agent_no, agent_id) in agents {
        while pruned.batches < max_batches as u64 {
            let oldest: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT last_seq, received_ts FROM batches WHERE agent_no = ?1
                     ORDER BY first_seq, last_seq LIMIT 1",
                    [agent_no],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((last, received)) = oldest else {
                break;
            };
            if received >= cutoff.as_nanos() {
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
            // Oldest first, so `last` only grows: the new mark replaces the old one whole, and the
            // collector's signature over it is what lets verify accept the missing events.
            let now = Timestamp::now().as_nanos();
            let signature = seal.sign(&seal::pruned_message(
                &agent_id,
                u64::try_from(last).unwrap_or(0),
                now,
            ));
            tx.execute(
                "INSERT INTO pruned (agent_no, through_seq, pruned_ts, signature)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (agent_no) DO UPDATE SET
                     through_seq = excluded.through_seq,
                     pruned_ts = excluded.pruned_ts,
                     signature = excluded.signature",
                params![agent_no, last, now, signature],
            )?;
            pruned.batches += 1;
            pruned.events += events as u64;
        }
    }
    tx.commit()?;
    Ok(pruned)
}

/// A retention mark as stored: events through `through_seq` were deleted on purpose.
pub struct Mark {
    pub through_seq: u64,
    pub ts: i64,
    pub signature: Option<Vec<u8>>,
}

/// An agent's retention mark, if retention ever deleted its events.
pub fn mark(conn: &Connection, agent_no: i64) -> Result<Option<Mark>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT through_seq, pruned_ts, signature FROM pruned WHERE agent_no = ?1",
            [agent_no],
            |r| {
                Ok(Mark {
                    through_seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    ts: r.get(1)?,
                    signature: r.get(2)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_batches(conn: &Connection, first_batch: u64, batches: u64, ts: Timestamp) {
        add_received(conn, first_batch, batches, ts, ts);
    }

    /// Batches whose events say `ts` and which the collector received at `received`.
    fn add_received(
        conn: &Connection,
        first_batch: u64,
        batches: u64,
        ts: Timestamp,
        received: Timestamp,
    ) {
        let payload = vec![0x5a_u8; 400];
        for b in first_batch..first_batch + batches {
            let (first, last) = (b * 100 + 1, b * 100 + 100);
            for seq in first..=last {
                conn.execute(
                    "INSERT INTO events (agent_no, seq, ts, kind, path, payload, hash)
                     VALUES (1, ?1, ?2, 'file.write', '/x', ?3, ?4)",
                    params![seq as i64, ts.as_nanos(), payload, vec![1u8; 32]],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO batches (agent_no, last_seq, first_seq, prev_hash, head_hash, signature,
                     received_ts) VALUES (1, ?1, ?2, ?3, ?3, ?3, ?4)",
                params![last as i64, first as i64, vec![0u8; 32], received.as_nanos()],
            )
            .unwrap();
        }
    }

    #[test]
    fn pruning_removes_whole_old_batches_and_the_file_stops_growing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path()).unwrap();
        let seal = Seal::load_or_create(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash)
             VALUES ('a-1', 'pc1', 'pc1', x'00', 0, x'00')",
            [],
        )
        .unwrap();
        let old = Timestamp::from_secs(1_000);
        let now = Timestamp::now();
        add_batches(&conn, 0, 30, old);
        add_batches(&conn, 30, 1, now);
        let size = |conn: &Connection| -> i64 {
            conn.query_row("SELECT page_count FROM pragma_page_count()", [], |r| {
                r.get(0)
            })
            .unwrap()
        };

        let first = prune_step(&mut conn, &seal, Timestamp::from_secs(2_000), 10).unwrap();
        assert_eq!(
            first,
            Pruned {
                batches: 10,
                events: 1_000
            }
        );
        let mut total = first;
        loop {
            let step = prune_step(&mut conn, &seal, Timestamp::from_secs(2_000), 10).unwrap();
            if step.batches == 0 {
                break;
            }
            total.batches += step.batches;
            total.events += step.events;
        }
        assert_eq!(
            total,
            Pruned {
                batches: 30,
                events: 3_000
            }
        );
        let mark = mark(&conn, 1).unwrap().unwrap();
        assert_eq!(mark.through_seq, 3_000);
        let signed = seal::pruned_message("a-1", 3_000, mark.ts);
        assert!(seal.public().check(&signed, &mark.signature.unwrap()));
        let left: i64 = conn
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 3_001, "the recent batch stays");

        // New events fill the pages the old ones left on the freelist: the file does not grow.
        let pages = size(&conn);
        let free: i64 = conn
            .query_row(
                "SELECT freelist_count FROM pragma_freelist_count()",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(free > 0, "pruning freed no pages");
        add_batches(&conn, 31, 20, now);
        assert_eq!(
            size(&conn),
            pages,
            "the store grew although free pages were available"
        );
    }

    #[test]
    fn age_is_when_the_collector_received_a_batch_not_what_the_agent_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path()).unwrap();
        let seal = Seal::load_or_create(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash)
             VALUES ('a-1', 'pc1', 'pc1', x'00', 0, x'00')",
            [],
        )
        .unwrap();
        let (old, cutoff) = (Timestamp::from_secs(1_000), Timestamp::from_secs(2_000));
        let future = Timestamp::from_secs(4_102_444_800);
        // Received long ago, stamped in 2100: old all the same.
        add_received(&conn, 0, 1, future, old);
        // Stamped long ago, received after the cutoff: fresh.
        add_received(&conn, 1, 1, old, Timestamp::from_secs(3_000));
        let step = prune_step(&mut conn, &seal, cutoff, 10).unwrap();
        assert_eq!(
            step,
            Pruned {
                batches: 1,
                events: 100
            }
        );
        assert_eq!(mark(&conn, 1).unwrap().unwrap().through_seq, 100);
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 100);
    }
}
