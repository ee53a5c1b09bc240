//! Offline re-verification of every stored event.
//!
//! Each event must decode, agree with its indexed columns, and link to the event before it; every
//! stored batch signature must verify over the stored hashes; every event must be covered by a signed
//! batch; and a missing sequence number must be explained by a signed `agent.dropped` event or by a
//! gap recorded when the batch arrived. Anything else is a problem, named by agent and sequence.

use std::collections::{BTreeMap, HashMap};

use bannin::chain::{self, Hash};
use bannin::event::Body;
use bannin::proto::decode_event;
use rusqlite::Connection;

use super::StoreError;

#[derive(Debug, Default)]
pub struct Report {
    pub agents: usize,
    pub events: u64,
    pub batches: u64,
    pub problems: Vec<String>,
    /// Gaps that are explained (events the agent reported dropping, or that never arrived).
    pub notes: Vec<String>,
}

struct Batch {
    first: u64,
    last: u64,
    prev: Vec<u8>,
    head: Vec<u8>,
    signature: Vec<u8>,
}

pub fn verify(conn: &Connection) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let agents: Vec<(i64, String, Vec<u8>)> = {
        let mut stmt = conn.prepare("SELECT no, id, signing_key FROM agents ORDER BY no")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    report.agents = agents.len();
    for (no, id, key) in agents {
        verify_agent(conn, no, &id, &key, &mut report)?;
    }
    Ok(report)
}

fn verify_agent(
    conn: &Connection,
    no: i64,
    id: &str,
    key: &[u8],
    report: &mut Report,
) -> Result<(), StoreError> {
    let batches: Vec<Batch> = {
        let mut stmt = conn.prepare(
            "SELECT first_seq, last_seq, prev_hash, head_hash, signature FROM batches
             WHERE agent_no = ?1 ORDER BY first_seq, last_seq",
        )?;
        let rows = stmt.query_map([no], |r| {
            Ok(Batch {
                first: r.get::<_, i64>(0)? as u64,
                last: r.get::<_, i64>(1)? as u64,
                prev: r.get(2)?,
                head: r.get(3)?,
                signature: r.get(4)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    report.batches += batches.len() as u64;
    // Where a batch starts, the previous hash comes from its signed prev_hash, not the row before.
    let starts: HashMap<u64, Vec<u8>> = batches.iter().map(|b| (b.first, b.prev.clone())).collect();
    let mut hashes: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut explained: Vec<(u64, u64)> = {
        let mut stmt = conn.prepare(
            "SELECT first_seq, last_seq FROM findings WHERE agent_no = ?1 AND kind = 'chain.gap'",
        )?;
        let rows = stmt.query_map([no], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?;
        rows.collect::<Result<_, _>>()?
    };

    let mut stmt = conn.prepare(
        "SELECT seq, ts, kind, path, payload, hash FROM events WHERE agent_no = ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([no])?;
    let mut prev: Option<(u64, Hash)> = None;
    let mut present: Vec<u64> = Vec::new();
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)? as u64;
        let ts: i64 = row.get(1)?;
        let kind: String = row.get(2)?;
        let path: Option<String> = row.get(3)?;
        let payload: Vec<u8> = row.get(4)?;
        let stored: Vec<u8> = row.get(5)?;
        report.events += 1;
        present.push(seq);
        let Ok(stored) = chain::to_hash(&stored, "hash") else {
            report
                .problems
                .push(format!("agent {id} event {seq}: stored hash is malformed"));
            continue;
        };
        hashes.insert(seq, stored);
        match decode_event(&payload) {
            Ok(event) => {
                if event.seq != seq
                    || event.ts.as_nanos() != ts
                    || event.kind() != kind
                    || event.path() != path.as_deref()
                {
                    report.problems.push(format!(
                        "agent {id} event {seq}: indexed columns (seq, ts, kind, path) do not match the signed event"
                    ));
                }
                if let Body::Agent(agent) = &event.body
                    && agent.dropped > 0
                {
                    explained.push((agent.first_dropped_seq, agent.last_dropped_seq));
                }
            }
            Err(error) => report.problems.push(format!(
                "agent {id} event {seq}: payload does not decode: {error}"
            )),
        }
        let previous = match starts.get(&seq) {
            Some(batch_prev) => chain::to_hash(batch_prev, "prev hash").ok(),
            None => match prev {
                Some((p, hash)) if p + 1 == seq => Some(hash),
                _ => None,
            },
        };
        match previous {
            Some(previous) if chain::link(&previous, seq, &payload) == stored => {}
            Some(_) => report.problems.push(format!(
                "agent {id} event {seq}: altered or reordered (its hash does not follow from the event before it)"
            )),
            None => report.problems.push(format!(
                "agent {id} event {seq}: no signed batch starts here and event {} is missing",
                seq.saturating_sub(1)
            )),
        }
        prev = Some((seq, stored));
    }

    for batch in &batches {
        let (Ok(prev), Ok(head)) = (
            chain::to_hash(&batch.prev, "prev hash"),
            chain::to_hash(&batch.head, "head hash"),
        ) else {
            report.problems.push(format!(
                "agent {id} batch {}..={}: malformed hashes",
                batch.first, batch.last
            ));
            continue;
        };
        if chain::verify_batch(
            key,
            &batch.signature,
            id,
            batch.first,
            batch.last,
            &prev,
            &head,
        )
        .is_err()
        {
            report.problems.push(format!(
                "agent {id} batch {}..={}: signature does not verify",
                batch.first, batch.last
            ));
        }
        match hashes.get(&batch.last) {
            Some(stored) if *stored == head => {}
            Some(_) => report.problems.push(format!(
                "agent {id} event {}: differs from the event the agent signed",
                batch.last
            )),
            None => report.problems.push(format!(
                "agent {id} event {}: removed (the agent signed it, the store lacks it)",
                batch.last
            )),
        }
        if batch.first > 1
            && let Some(before) = hashes.get(&(batch.first - 1))
            && *before != prev
            && !explained
                .iter()
                .any(|(a, b)| *a <= batch.first && batch.first <= *b)
        {
            report.problems.push(format!(
                "agent {id} event {}: the stored event does not match the chain the next batch continues",
                batch.first - 1
            ));
        }
    }

    // Every sequence number from 1 to the highest stored must be present, explained, or flagged.
    let mut covered = batches
        .iter()
        .map(|b| (b.first, b.last))
        .collect::<Vec<_>>();
    covered.sort_unstable();
    let is_covered = |seq: u64| covered.iter().any(|(a, b)| *a <= seq && seq <= *b);
    // Retention deletes whole batches from the oldest: the chain then starts at the oldest stored
    // batch, whose signed prev_hash links it to what was deleted. A store from before retention
    // existed has no `pruned` table, which means nothing was pruned.
    let pruned = super::prune::pruned_through(conn, no).unwrap_or(0);
    if pruned > 0 {
        report.notes.push(format!(
            "agent {id} events 1..={pruned}: deleted by retention"
        ));
    }
    let mut expected = pruned + 1;
    for &seq in &present {
        if !is_covered(seq) {
            report.problems.push(format!(
                "agent {id} event {seq}: not covered by any signed batch (inserted into the store)"
            ));
        }
        if seq > expected {
            let (gap_from, gap_to) = (expected, seq - 1);
            let reason = explained
                .iter()
                .find(|(a, b)| *a <= gap_from && gap_to <= *b);
            match reason {
                Some(_) => report.notes.push(format!(
                    "agent {id} events {gap_from}..={gap_to}: never stored (gap recorded at ingest or dropped by the agent)"
                )),
                None => {
                    for missing in gap_from..=gap_to.min(gap_from + 99) {
                        report.problems.push(format!(
                            "agent {id} event {missing}: removed from the store"
                        ));
                    }
                }
            }
        }
        expected = seq + 1;
    }
    Ok(())
}
