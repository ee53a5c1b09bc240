//! Retention on a PostgreSQL store: dropping the oldest day partitions of `events` and `batches`.
//!
//! A day partition holds what collectors received that day, so dropping the days that ended
//! before the cutoff deletes whole signed batches, as the SQLite store's `prune` does. The
//! invariant is the same: what is dropped is a prefix of every agent's chain, recorded in
//! `pruned` under the collector's signature, so `verify` still passes. Collectors' clocks may
//! disagree, so a day may hold an agent's later batch while a younger day holds an earlier one:
//! such a day is dropped only together with the days it needs, or not yet.
//!
//! A day is dropped only once detection has read every batch and finding it takes away (the
//! leader's cursor is past them) and no transaction is still writing into it: the drop locks
//! `events` and `batches` exclusively, which waits for every open ingest transaction, and checks
//! again under that lock. Retention runs on one collector at a time (an advisory lock taken for
//! the round's transaction); the others skip that round.

use std::collections::HashMap;

use bannin::time::Timestamp;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use super::day_end;
use crate::seal::{self, Seal};
use crate::store::StoreError;

/// Serialises retention between collectors (`pg_try_advisory_xact_lock`).
const RETENTION_LOCK: i64 = 0x6261_6e6e_696e_0003;
/// How long the drop waits for ingest to leave the tables; ingest waits behind it meanwhile, so
/// this bounds the stall, and a round that times out is tried again at the next check.
const LOCK_WAIT: &str = "5s";

/// A day partition pair by its day number, with the batches table's oid.
#[derive(Debug, Clone, Copy)]
struct Day {
    day: i64,
    batches_oid: u32,
}

/// What a round did, or why it dropped nothing.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The days dropped, oldest first.
    pub days: Vec<i64>,
    pub batches: u64,
    pub events: u64,
    /// Why old days were kept this round, if some were.
    pub kept: Option<Kept>,
}

/// Why retention kept a day that is past the cutoff, for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Another collector runs retention this round.
    Busy,
    /// Ingest transactions did not leave the tables within the lock wait.
    Locked,
    /// Detection has not read all the day holds yet.
    Undetected { day: i64 },
    /// Dropping the day would leave a hole in an agent's chain: an earlier batch of it sits in a
    /// day not yet past the cutoff (or in the default partition).
    NotPrefix { day: i64, agent_id: String },
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Busy => f.write_str("another collector runs retention"),
            Kept::Locked => f.write_str("ingest kept the tables busy; trying again later"),
            Kept::Undetected { day } => write!(
                f,
                "day {day} waits for detection to read everything it holds"
            ),
            Kept::NotPrefix { day, agent_id } => write!(
                f,
                "day {day} holds batches of agent {agent_id} later than some it does not hold; it waits for the days holding them"
            ),
        }
    }
}

/// One agent's share of the days to drop.
struct Share {
    agent_no: i64,
    agent_id: String,
    through: i64,
    batches: i64,
}

/// Day partitions of `batches` whose whole day ended at or before `cutoff`, oldest first.
async fn old_days(client: &impl GenericClient, cutoff: Timestamp) -> Result<Vec<Day>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text, c.oid FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'batches'::regclass",
            &[],
        )
        .await?;
    let mut days: Vec<Day> = rows
        .iter()
        .filter_map(|row| {
            let day = row
                .get::<_, &str>(0)
                .strip_prefix("batches_d")?
                .parse::<i64>()
                .ok()?;
            Some(Day {
                day,
                batches_oid: row.get(1),
            })
        })
        .filter(|day| day_end(day.day) <= cutoff)
        .collect();
    days.sort_by_key(|day| day.day);
    Ok(days)
}

/// Whether `days` may be dropped together: every agent's batches in them are a prefix of its
/// chain, and detection has read them and the findings they take away. The agents' shares, or
/// why not.
async fn check(
    client: &impl GenericClient,
    days: &[Day],
) -> Result<Result<Vec<Share>, Kept>, StoreError> {
    let oids: Vec<u32> = days.iter().map(|d| d.batches_oid).collect();
    let newest = days.last().map(|d| d.day).unwrap_or_default();
    let rows = client
        .query(
            "WITH s AS (
                 SELECT agent_no, max(last_seq) AS through, count(*) AS batches
                 FROM batches WHERE tableoid = ANY($1::oid[]) GROUP BY agent_no)
             SELECT s.agent_no, a.id, s.through, s.batches,
                 EXISTS (SELECT 1 FROM batches b
                         WHERE b.agent_no = s.agent_no AND b.last_seq <= s.through
                           AND NOT b.tableoid = ANY($1::oid[]))
             FROM s JOIN agents a ON a.no = s.agent_no ORDER BY s.agent_no",
            &[&oids],
        )
        .await?;
    let mut shares = Vec::new();
    for row in &rows {
        let agent_id: String = row.get(1);
        if row.get::<_, bool>(4) {
            return Ok(Err(Kept::NotPrefix {
                day: newest,
                agent_id,
            }));
        }
        shares.push(Share {
            agent_no: row.get(0),
            agent_id,
            through: row.get(2),
            batches: row.get(3),
        });
    }
    if shares.is_empty() {
        return Ok(Ok(shares));
    }
    // No cursor yet means detection has read nothing.
    let has_cursor: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM detection_cursor)", &[])
        .await?
        .get(0);
    let unread: i64 = if has_cursor {
        client
            .query_one(
                "SELECT (SELECT count(*) FROM batches b, detection_cursor c
                         WHERE b.tableoid = ANY($1::oid[])
                           AND (b.xid, 0, b.agent_no, b.last_seq) > (c.xid, c.kind, c.agent_no, c.n))
                      + (SELECT count(*) FROM findings f, detection_cursor c,
                                unnest($2::int8[], $3::int8[]) AS s(agent_no, through)
                         WHERE f.agent_no = s.agent_no AND f.last_seq <= s.through
                           AND (f.xid, 1, f.agent_no, f.id) > (c.xid, c.kind, c.agent_no, c.n))",
                &[
                    &oids,
                    &shares.iter().map(|s| s.agent_no).collect::<Vec<_>>(),
                    &shares.iter().map(|s| s.through).collect::<Vec<_>>(),
                ],
            )
            .await?
            .get(0)
    } else {
        1
    };
    if unread > 0 {
        return Ok(Err(Kept::Undetected { day: newest }));
    }
    Ok(Ok(shares))
}

/// The most of `days` (oldest first) that may be dropped together, or why not even the oldest.
async fn choose(
    client: &impl GenericClient,
    days: &[Day],
) -> Result<Result<(usize, Vec<Share>), Kept>, StoreError> {
    let mut why = None;
    for k in (1..=days.len()).rev() {
        match check(client, &days[..k]).await? {
            Ok(shares) => return Ok(Ok((k, shares))),
            Err(kept) => why = Some(kept),
        }
    }
    Ok(Err(why.unwrap_or(Kept::Busy)))
}

/// Rows a day's events partition holds (counted before the tables are locked: an old day takes
/// no new rows, and counting under the lock would stall ingest for the count's length).
async fn count_events(client: &impl GenericClient, day: i64) -> Result<i64, StoreError> {
    let name = format!("events_d{day}");
    let present: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0);
    if !present {
        return Ok(0);
    }
    Ok(client
        .query_one(&format!("SELECT count(*) FROM ONLY {name}"), &[])
        .await?
        .get(0))
}

/// One retention round: drops every day partition that ended before `cutoff` and may go (see the
/// module's description), records each agent's new retention mark, and removes the chain
/// findings about what went, in one transaction.
pub async fn prune(
    client: &mut Client,
    seal: &Seal,
    cutoff: Timestamp,
) -> Result<Outcome, StoreError> {
    let mut outcome = Outcome::default();
    let days = old_days(&*client, cutoff).await?;
    if days.is_empty() {
        return Ok(outcome);
    }
    let tx = client.transaction().await?;
    let ours: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
        .await?
        .get(0);
    if !ours {
        outcome.kept = Some(Kept::Busy);
        return Ok(outcome);
    }
    // First without the lock, so a round with nothing to drop never stalls ingest.
    let planned = match choose(&tx, &days).await? {
        Ok((k, _)) => k,
        Err(kept) => {
            outcome.kept = Some(kept);
            return Ok(outcome);
        }
    };
    // A day's count may take longer than the sessions' statement timeout; nothing waits on it.
    tx.batch_execute("SET LOCAL statement_timeout = '10min'")
        .await?;
    let mut counts: HashMap<i64, i64> = HashMap::new();
    for day in &days[..planned] {
        counts.insert(day.day, count_events(&tx, day.day).await?);
    }
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        super::STATEMENT_TIMEOUT.as_millis()
    ))
    .await?;
    // Ingest writes events, then batches: locked in that order, so neither waits on the other
    // in a cycle. Every ingest transaction that began before has ended once this returns.
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        .await?;
    if let Err(error) = tx
        .batch_execute("LOCK TABLE events, batches IN ACCESS EXCLUSIVE MODE")
        .await
    {
        if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            outcome.kept = Some(Kept::Locked);
            return Ok(outcome);
        }
        return Err(error.into());
    }
    // Again under the lock: a batch that committed meanwhile, or detection's progress, counts.
    let (k, shares) = match choose(&tx, &days).await? {
        Ok(chosen) => chosen,
        Err(kept) => {
            outcome.kept = Some(kept);
            return Ok(outcome);
        }
    };
    if k < days.len() {
        outcome.kept = check(&tx, &days[..k + 1]).await?.err();
    }
    let now = Timestamp::now().as_nanos();
    for share in &shares {
        tx.execute(
            "DELETE FROM findings WHERE agent_no = $1 AND last_seq <= $2",
            &[&share.agent_no, &share.through],
        )
        .await?;
        // Days go oldest first and only as a prefix, so `through` only grows: the new mark
        // replaces the old one whole, and the signature over it lets verify accept the gap.
        let signature = seal.sign(&seal::pruned_message(
            &share.agent_id,
            u64::try_from(share.through).unwrap_or(0),
            now,
        ));
        tx.execute(
            "INSERT INTO pruned (agent_no, through_seq, pruned_ts, signature)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (agent_no) DO UPDATE SET
                 through_seq = excluded.through_seq,
                 pruned_ts = excluded.pruned_ts,
                 signature = excluded.signature",
            &[&share.agent_no, &share.through, &now, &signature],
        )
        .await?;
        outcome.batches += u64::try_from(share.batches).unwrap_or(0);
    }
    for day in &days[..k] {
        let events = match counts.get(&day.day) {
            Some(n) => *n,
            None => count_events(&tx, day.day).await?,
        };
        outcome.events += u64::try_from(events).unwrap_or(0);
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS events_d{0}; DROP TABLE IF EXISTS batches_d{0}",
            day.day
        ))
        .await?;
        outcome.days.push(day.day);
    }
    tx.commit().await?;
    Ok(outcome)
}
