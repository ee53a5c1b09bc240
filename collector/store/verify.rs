//! Offline re-verification of every stored event.
//!
//! SQLite's own integrity check must pass. Each event must decode, agree with its indexed columns,
//! and link to the event before it; every stored batch signature must verify over the stored hashes;
//! every event must be covered by a signed batch; each agent's chain must end exactly at the head the
//! collector recorded and signed; and a missing sequence number must be explained by a signed
//! `agent.dropped` event, by a gap finding, or by a retention mark, the last two signed by the
//! collector's own key. Anything else is a problem, named by agent and sequence.

use std::collections::{BTreeMap, HashMap};

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::Body;
use bannin::proto::decode_event;
use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::finding::FindingKind;
use crate::seal::{self, SealKey};

/// What `verify` trusts besides the database: the collector's public key, read from the data
/// directory (`collector.pub`), never from the store.
pub struct Trust {
    pub seal: Result<SealKey, String>,
    /// The collector's CA certificate (`ca.pem`), which issued every agent's certificate.
    pub ca_pem: Result<String, String>,
}

impl Trust {
    fn check(&self, message: &[u8], signature: Option<&[u8]>) -> bool {
        match (&self.seal, signature) {
            (Ok(key), Some(signature)) => key.check(message, signature),
            _ => false,
        }
    }
}

/// Integrity-check lines reported at most; a badly damaged file would print thousands.
const INTEGRITY_LINES: usize = 20;

#[derive(Debug, Default)]
pub struct Report {
    pub agents: usize,
    pub events: u64,
    pub batches: u64,
    pub problems: Vec<String>,
    /// Gaps that are explained (events the agent reported dropping, or that never arrived).
    pub notes: Vec<String>,
}

pub struct Batch {
    pub first: u64,
    pub last: u64,
    pub prev: Vec<u8>,
    pub head: Vec<u8>,
    pub signature: Vec<u8>,
}

/// An agent row as verify reads it.
pub struct AgentRow {
    pub no: i64,
    pub id: String,
    pub key: Vec<u8>,
    pub last_seq: u64,
    pub head: Vec<u8>,
    pub head_signature: Option<Vec<u8>>,
    pub certificate: Option<String>,
}

/// One stored event as verify reads it.
pub struct EventRow {
    pub seq: u64,
    pub ts: i64,
    pub kind: String,
    pub path: Option<String>,
    pub payload: Vec<u8>,
    pub hash: Vec<u8>,
}

/// One stored finding as verify reads it.
pub struct FindingRow {
    pub id: i64,
    pub ts: i64,
    pub kind: String,
    pub first: u64,
    pub last: u64,
    pub detail: String,
    pub signature: Option<Vec<u8>>,
}

/// The rows verify reads, from either store, all from one snapshot of it.
pub trait Source {
    /// The store's own consistency check: the lines that are not "ok".
    fn integrity(&self) -> Result<Vec<String>, StoreError>;
    fn agents(&self) -> Result<Vec<AgentRow>, StoreError>;
    /// Agents a spent token names that the store does not have.
    fn missing_token_agents(&self) -> Result<Vec<String>, StoreError>;
    fn findings(&self, agent_no: i64) -> Result<Vec<FindingRow>, StoreError>;
    fn batches(&self, agent_no: i64) -> Result<Vec<Batch>, StoreError>;
    /// The agent's events in sequence order, one at a time.
    fn events(&self, agent_no: i64, each: &mut dyn FnMut(EventRow)) -> Result<(), StoreError>;
    fn pruned(&self, agent_no: i64) -> Result<Option<super::prune::Mark>, StoreError>;
    /// The alert chain's problems (see `alert_chain::verify_rows`).
    fn alert_chain(&self, key: Option<&SealKey>) -> Result<Vec<String>, StoreError>;
    /// A text column as this store holds a derived value (PostgreSQL's `text` holds no NUL).
    fn column(&self, text: &str) -> String {
        text.to_string()
    }
    /// For `verify --checkpoints`: the agent's row number and recorded head, by its id.
    fn agent_by_id(&self, agent_id: &str) -> Result<Option<(i64, u64)>, StoreError>;
    /// For `verify --checkpoints`: the stored chain hash of one event.
    fn event_hash(&self, agent_no: i64, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// For `verify --checkpoints`: the stored hash of alert chain entry `n`.
    fn alert_chain_hash(&self, n: u64) -> Result<Option<Vec<u8>>, StoreError>;
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

struct Sqlite<'a>(&'a Connection);

impl Source for Sqlite<'_> {
    fn integrity(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(lines.into_iter().filter(|l| l != "ok").collect())
    }

    fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self.0.prepare(
            "SELECT no, id, signing_key, last_seq, head_hash, head_signature, certificate
             FROM agents ORDER BY no",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AgentRow {
                no: r.get(0)?,
                id: r.get(1)?,
                key: r.get(2)?,
                last_seq: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                head: r.get(4)?,
                head_signature: r.get(5)?,
                certificate: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn missing_token_agents(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.0.prepare(
            "SELECT used_by FROM tokens WHERE used_by IS NOT NULL
               AND used_by NOT IN (SELECT id FROM agents) ORDER BY used_ts",
        )?;
        Ok(stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn findings(&self, agent_no: i64) -> Result<Vec<FindingRow>, StoreError> {
        let mut stmt = self.0.prepare(
            "SELECT id, ts, kind, first_seq, last_seq, detail, signature FROM findings
             WHERE agent_no = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([agent_no], |r| {
            Ok(FindingRow {
                id: r.get(0)?,
                ts: r.get(1)?,
                kind: r.get(2)?,
                first: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                last: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                detail: r.get(5)?,
                signature: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn batches(&self, agent_no: i64) -> Result<Vec<Batch>, StoreError> {
        let mut stmt = self.0.prepare(
            "SELECT first_seq, last_seq, prev_hash, head_hash, signature FROM batches
             WHERE agent_no = ?1 ORDER BY first_seq, last_seq",
        )?;
        let rows = stmt.query_map([agent_no], |r| {
            Ok(Batch {
                first: r.get::<_, i64>(0)? as u64,
                last: r.get::<_, i64>(1)? as u64,
                prev: r.get(2)?,
                head: r.get(3)?,
                signature: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn events(&self, agent_no: i64, each: &mut dyn FnMut(EventRow)) -> Result<(), StoreError> {
        let mut stmt = self.0.prepare(
            "SELECT seq, ts, kind, path, payload, hash FROM events WHERE agent_no = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([agent_no])?;
        while let Some(row) = rows.next()? {
            each(EventRow {
                seq: row.get::<_, i64>(0)? as u64,
                ts: row.get(1)?,
                kind: row.get(2)?,
                path: row.get(3)?,
                payload: row.get(4)?,
                hash: row.get(5)?,
            });
        }
        Ok(())
    }

    fn pruned(&self, agent_no: i64) -> Result<Option<super::prune::Mark>, StoreError> {
        super::prune::mark(self.0, agent_no)
    }

    fn alert_chain(&self, key: Option<&SealKey>) -> Result<Vec<String>, StoreError> {
        super::alert_chain::verify(self.0, key)
    }

    fn agent_by_id(&self, agent_id: &str) -> Result<Option<(i64, u64)>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT no, last_seq FROM agents WHERE id = ?1",
                [agent_id],
                |r| Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0))),
            )
            .optional()?)
    }

    fn event_hash(&self, agent_no: i64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT hash FROM events WHERE agent_no = ?1 AND seq = ?2",
                rusqlite::params![agent_no, seq_param(seq)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn alert_chain_hash(&self, n: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .0
            .query_row(
                "SELECT hash FROM alert_chain WHERE n = ?1",
                [seq_param(n)],
                |r| r.get(0),
            )
            .optional()?)
    }
}

pub fn verify(conn: &Connection, trust: &Trust) -> Result<Report, StoreError> {
    // One read transaction: every query sees the same snapshot, so batches, events and heads that
    // `serve` commits meanwhile cannot look half-stored.
    let snapshot = conn.unchecked_transaction()?;
    let conn: &Connection = &snapshot;
    verify_source(&Sqlite(conn), trust)
}

/// Verifies the store `source` reads (see the module's description).
pub fn verify_source(source: &dyn Source, trust: &Trust) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for line in source.integrity()?.iter().take(INTEGRITY_LINES) {
        report
            .problems
            .push(format!("sqlite integrity check: {line}"));
    }
    if let Err(error) = &trust.seal {
        report.problems.push(format!(
            "cannot check the collector's signatures on heads, findings and retention marks: {error}"
        ));
    }
    let agents = source.agents()?;
    report.agents = agents.len();
    if let Err(error) = &trust.ca_pem {
        report.problems.push(format!(
            "cannot check agents' signing keys against the CA: {error}"
        ));
    }
    for agent in &agents {
        verify_binding(trust, agent, &mut report);
        verify_agent(source, trust, agent, &mut report)?;
    }
    for id in source.missing_token_agents()? {
        report.problems.push(format!(
            "agent {id}: enrolled with a token the store recorded, but the store has no such agent (removed with its history)"
        ));
    }
    report
        .problems
        .extend(source.alert_chain(trust.seal.as_ref().ok())?);
    Ok(report)
}

/// The signing key in the agents table must be the one the CA bound into the agent's certificate:
/// whoever swaps in their own key to re-sign rewritten batches would need the CA's key as well.
fn verify_binding(trust: &Trust, agent: &AgentRow, report: &mut Report) {
    let id = &agent.id;
    let Ok(ca_pem) = &trust.ca_pem else { return };
    let Some(der) = agent
        .certificate
        .as_deref()
        .and_then(bannin::pki::first_cert_der)
    else {
        report.problems.push(format!(
            "agent {id}: no certificate binds its signing key, so its signatures prove nothing (enrolled before keys were bound, or the certificate was removed)"
        ));
        return;
    };
    if !bannin::pki::issued_by(&der, ca_pem) {
        report.problems.push(format!(
            "agent {id}: its stored certificate was not issued by the collector's CA"
        ));
    } else if bannin::pki::principal_of(&der) != Some(bannin::pki::Principal::Agent(id.clone())) {
        report.problems.push(format!(
            "agent {id}: its stored certificate names another principal"
        ));
    } else if bannin::pki::signing_key_of(&der).as_deref() != Some(agent.key.as_slice()) {
        report.problems.push(format!(
            "agent {id}: its signing key in the store is not the one its certificate binds (replaced)"
        ));
    }
}

/// A finding as stored, with whether the collector's signature over it holds.
struct StoredFinding {
    id: i64,
    kind: String,
    first: u64,
    last: u64,
    detail: String,
    signed: bool,
}

fn findings(
    source: &dyn Source,
    trust: &Trust,
    agent: &AgentRow,
) -> Result<Vec<StoredFinding>, StoreError> {
    Ok(source
        .findings(agent.no)?
        .into_iter()
        .map(|f| {
            let message =
                seal::finding_message(&agent.id, &f.kind, f.first, f.last, f.ts, &f.detail);
            StoredFinding {
                id: f.id,
                signed: trust.check(&message, f.signature.as_deref()),
                kind: f.kind,
                first: f.first,
                last: f.last,
                detail: f.detail,
            }
        })
        .collect())
}

fn verify_agent(
    source: &dyn Source,
    trust: &Trust,
    agent: &AgentRow,
    report: &mut Report,
) -> Result<(), StoreError> {
    let (no, id, key) = (agent.no, agent.id.as_str(), agent.key.as_slice());
    let batches = source.batches(no)?;
    report.batches += batches.len() as u64;
    // Where a batch starts, the previous hash comes from its signed prev_hash, not the row before.
    let starts: HashMap<u64, Vec<u8>> = batches.iter().map(|b| (b.first, b.prev.clone())).collect();
    let mut hashes: BTreeMap<u64, Hash> = BTreeMap::new();
    // Only the collector's own signed findings explain a gap: anyone with the database can insert
    // a row that says "never arrived".
    let mut explained: Vec<(u64, u64)> = Vec::new();
    for finding in findings(source, trust, agent)? {
        if !finding.signed {
            report.problems.push(format!(
                "agent {id} finding {} ({} {}..={}): not signed by the collector, so it explains nothing",
                finding.id, finding.kind, finding.first, finding.last
            ));
        } else if finding.kind == FindingKind::ChainGap.as_str() {
            explained.push((finding.first, finding.last));
        } else {
            report.notes.push(format!(
                "agent {id} events {}..={}: {} ({})",
                finding.first, finding.last, finding.kind, finding.detail
            ));
        }
    }

    let mut prev: Option<(u64, Hash)> = None;
    let mut present: Vec<u64> = Vec::new();
    source.events(no, &mut |row| {
        let EventRow {
            seq,
            ts,
            kind,
            path,
            payload,
            hash: stored,
        } = row;
        report.events += 1;
        present.push(seq);
        let Ok(stored) = chain::to_hash(&stored, "hash") else {
            report
                .problems
                .push(format!("agent {id} event {seq}: stored hash is malformed"));
            return;
        };
        hashes.insert(seq, stored);
        match decode_event(&payload) {
            Ok(event) => {
                if event.seq != seq
                    || event.ts.as_nanos() != ts
                    || event.kind() != kind
                    || event.path().map(|p| source.column(p)) != path
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
    })?;

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
    let pruned = match source.pruned(no)? {
        None => 0,
        Some(mark) => {
            let message = seal::pruned_message(id, mark.through_seq, mark.ts);
            if trust.check(&message, mark.signature.as_deref()) {
                report.notes.push(format!(
                    "agent {id} events 1..={}: deleted by retention",
                    mark.through_seq
                ));
                mark.through_seq
            } else {
                report.problems.push(format!(
                    "agent {id}: retention mark (deleted through {}) is not signed by the collector, so it explains nothing",
                    mark.through_seq
                ));
                0
            }
        }
    };
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
    verify_head(trust, agent, &hashes, pruned, report);
    Ok(())
}

/// The stored chain must end exactly at the head the collector recorded, and that head must carry
/// the collector's signature: cutting off the last batches, or all of them, leaves the head behind,
/// and rewinding the head needs the collector's key.
fn verify_head(
    trust: &Trust,
    agent: &AgentRow,
    hashes: &BTreeMap<u64, Hash>,
    pruned: u64,
    report: &mut Report,
) {
    let id = &agent.id;
    let last = agent.last_seq;
    let message = seal::head_message(id, last, &agent.head);
    if !trust.check(&message, agent.head_signature.as_deref()) {
        report.problems.push(format!(
            "agent {id}: its recorded head (committed through {last}) does not carry the collector's signature (rewound or forged)"
        ));
    }
    let stored_last = hashes.keys().next_back().copied();
    if let Some(stored_last) = stored_last
        && stored_last > last
    {
        report.problems.push(format!(
            "agent {id} events {}..={stored_last}: stored beyond the head the collector committed ({last})",
            last + 1
        ));
    }
    if last == 0 {
        if agent.head.as_slice() != GENESIS.as_slice() {
            report.problems.push(format!(
                "agent {id}: its recorded head names no event but is not the empty chain's"
            ));
        }
        return;
    }
    match hashes.get(&last) {
        Some(hash) if hash.as_slice() == agent.head.as_slice() => {}
        Some(_) => report.problems.push(format!(
            "agent {id} event {last}: differs from the head the collector committed"
        )),
        None if pruned >= last => {}
        None => {
            let from = stored_last.unwrap_or(0).max(pruned) + 1;
            report.problems.push(format!(
                "agent {id} events {from}..={last}: missing, but the collector committed through {last} (the chain's tail was cut)"
            ));
        }
    }
}

/// What the newest checkpoint in a file vouches for, per agent and for the alert chain, and when.
#[derive(Default)]
struct Vouched {
    agents: BTreeMap<String, (crate::checkpoint::AgentHead, String)>,
    alerts: Option<(crate::checkpoint::ChainHead, String)>,
    checkpoints: usize,
}

/// `verify --checkpoints FILE`: every checkpoint must carry this collector's signature, and the
/// store must still hold each agent's head and the alert chain's entry as the newest checkpoint
/// naming them vouches for (chains link, so holding the newest holds the older). An agent the
/// store no longer has, a head rolled back before a checkpoint, a cut tail or alert chain are named.
pub fn verify_checkpoints(
    conn: &Connection,
    trust: &Trust,
    lines: &[crate::checkpoint::Line],
    report: &mut Report,
) -> Result<(), StoreError> {
    let snapshot = conn.unchecked_transaction()?;
    let conn: &Connection = &snapshot;
    verify_checkpoints_source(&Sqlite(conn), trust, lines, report)
}

/// [`verify_checkpoints`] against either store, read through `source`.
pub fn verify_checkpoints_source(
    source: &dyn Source,
    trust: &Trust,
    lines: &[crate::checkpoint::Line],
    report: &mut Report,
) -> Result<(), StoreError> {
    let mut vouched = Vouched::default();
    for (line, parsed) in lines {
        let checkpoint = match parsed {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                report.problems.push(format!(
                    "checkpoint file line {line}: not a checkpoint: {error}"
                ));
                continue;
            }
        };
        let signed = trust
            .seal
            .as_ref()
            .is_ok_and(|key| checkpoint.signed_by(key));
        if !signed {
            report.problems.push(format!(
                "checkpoint file line {line} ({}): not signed by this collector's key, so it vouches for nothing",
                checkpoint.ts
            ));
            continue;
        }
        vouched.checkpoints += 1;
        for head in &checkpoint.agents {
            let newer = vouched
                .agents
                .get(&head.agent_id)
                .is_none_or(|(known, _)| head.seq >= known.seq);
            if newer {
                vouched
                    .agents
                    .insert(head.agent_id.clone(), (head.clone(), checkpoint.ts.clone()));
            }
        }
        if vouched
            .alerts
            .as_ref()
            .is_none_or(|(known, _)| checkpoint.alert_chain.n >= known.n)
        {
            vouched.alerts = Some((checkpoint.alert_chain.clone(), checkpoint.ts.clone()));
        }
    }
    if lines.is_empty() {
        report
            .problems
            .push("the checkpoint file holds no checkpoint".to_string());
    }
    for (head, ts) in vouched.agents.values() {
        check_vouched_head(source, trust, head, ts, report)?;
    }
    if let Some((chain, ts)) = &vouched.alerts
        && chain.n > 0
    {
        match source.alert_chain_hash(chain.n)? {
            Some(hash) if hex::encode(&hash) == chain.hash => {}
            Some(_) => report.problems.push(format!(
                "alert chain entry {}: differs from the entry the checkpoint of {ts} vouches for",
                chain.n
            )),
            None => report.problems.push(format!(
                "alert chain entries through {}: the checkpoint of {ts} vouches for them, the store lacks them (alerts removed)",
                chain.n
            )),
        }
    }
    if vouched.checkpoints > 0 {
        report.notes.push(format!(
            "checkpoints: {} signed checkpoints vouch for {} agents",
            vouched.checkpoints,
            vouched.agents.len()
        ));
    }
    Ok(())
}

fn check_vouched_head(
    source: &dyn Source,
    trust: &Trust,
    head: &crate::checkpoint::AgentHead,
    ts: &str,
    report: &mut Report,
) -> Result<(), StoreError> {
    let id = &head.agent_id;
    let Some((no, last_seq)) = source.agent_by_id(id)? else {
        report.problems.push(format!(
            "agent {id} ({}): the checkpoint of {ts} vouches for its events through {}, the store has no such agent (removed with its history)",
            head.name, head.seq
        ));
        return Ok(());
    };
    if head.seq == 0 {
        return Ok(());
    }
    if last_seq < head.seq {
        report.problems.push(format!(
            "agent {id}: its recorded head ({last_seq}) is behind the checkpoint of {ts}, which vouches for events through {} (rolled back)",
            head.seq
        ));
    }
    match source.event_hash(no, head.seq)? {
        Some(hash) if hex::encode(&hash) == head.hash => {}
        Some(_) => report.problems.push(format!(
            "agent {id} event {}: differs from the event the checkpoint of {ts} vouches for",
            head.seq
        )),
        None => {
            let pruned = source.pruned(no)?.is_some_and(|mark| {
                mark.through_seq >= head.seq
                    && trust.check(
                        &seal::pruned_message(id, mark.through_seq, mark.ts),
                        mark.signature.as_deref(),
                    )
            });
            if !pruned {
                report.problems.push(format!(
                    "agent {id} event {}: the checkpoint of {ts} vouches for it, the store lacks it (the chain was cut)",
                    head.seq
                ));
            }
        }
    }
    Ok(())
}
