//! The ingest writer: one thread that owns the store's write connection.
//!
//! The gRPC service verifies a batch (decoding, chain, signature) before it gets here; the writer
//! places it in the agent's chain, records gaps, and commits. Several waiting batches share one
//! transaction (group commit), each under its own savepoint so one bad batch cannot spoil another.
//! A batch is acknowledged only after the commit that holds it.

use std::collections::HashMap;
use std::thread;

use bannin::chain::{GENESIS, Hash};
use bannin::event::{Body, Event, Record};
use bannin::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{AgentKey, NewAgent, StoreError};
use crate::finding::{Finding, FindingKind};
use crate::seal::{self, Seal};

/// Batches waiting for the writer; beyond this the service waits (back-pressure on agents).
const QUEUE: usize = 64;
/// How many waiting batches one transaction may take.
const GROUP: usize = 32;

/// One event that passed verification, with its hash in the agent's chain.
pub struct VerifiedEvent {
    pub seq: u64,
    pub hash: Hash,
    pub bytes: Vec<u8>,
    pub event: Event,
}

/// A batch whose signature and internal chain verified.
pub struct VerifiedBatch {
    pub agent_no: i64,
    pub agent_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub prev_hash: Hash,
    pub head_hash: Hash,
    pub signature: Vec<u8>,
    pub events: Vec<VerifiedEvent>,
    /// The head the agent says the collector acknowledged to it (seq, hash), its signature checked.
    pub witness: Option<(u64, Hash)>,
}

/// The outcome of one committed batch.
#[derive(Debug)]
pub struct Committed {
    pub committed_through: u64,
    /// The chain hash of event `committed_through`.
    pub head_hash: Hash,
    pub inserted: u32,
    pub duplicates: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store commit failed: {reason}")]
    CommitFailed { reason: String },
    #[error(
        "event {seq} differs from the event {seq} already stored for agent {agent_id}: the agent's chain forked"
    )]
    Fork { agent_id: String, seq: u64 },
}

impl From<rusqlite::Error> for IngestError {
    fn from(source: rusqlite::Error) -> Self {
        IngestError::Store(StoreError::Sql { source })
    }
}

/// What committed, passed on to detection in commit order.
pub struct CommitNotice {
    pub records: Vec<Record>,
    pub findings: Vec<Finding>,
}

pub struct OwnedNewAgent {
    pub id: String,
    pub name: String,
    pub host: String,
    pub signing_key: Vec<u8>,
    pub certificate: String,
}

/// A request to the SQLite writer thread.
pub enum Command {
    Ingest {
        batch: VerifiedBatch,
        reply: oneshot::Sender<Result<Committed, IngestError>>,
    },
    Enroll {
        token: String,
        agent: OwnedNewAgent,
        reply: oneshot::Sender<Result<AgentKey, StoreError>>,
    },
    CheckEnrollment {
        token: String,
        name: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The service refused an enrolled agent's batch as forged (its signature does not verify).
    Refused {
        agent_no: i64,
        agent_id: String,
        detail: String,
    },
}

/// Refused batches from one agent within this time share one finding (the next one counts them),
/// so a hostile agent cannot grow the findings table without bound.
pub(super) const REFUSAL_QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// Per agent: when its last refusal finding was stored, and how many refusals came since.
#[derive(Default)]
pub(super) struct Refusals(HashMap<i64, Refused>);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused {
    /// When the last finding was stored.
    pub(super) recorded: Option<std::time::Instant>,
    pub(super) since: u64,
}

impl Refusals {
    /// Whether a refusal at `now` gets a finding of its own; if so, the finding is taken as
    /// recorded and the state before it is returned, for [`Refusals::rolled_back`]. Otherwise the
    /// refusal is counted, and the next finding names it.
    pub(super) fn due(&mut self, agent_no: i64, now: std::time::Instant) -> Option<Refused> {
        let entry = self.0.entry(agent_no).or_default();
        if let Some(last) = entry.recorded
            && now.duration_since(last) < REFUSAL_QUIET
        {
            entry.since += 1;
            return None;
        }
        Some(std::mem::replace(
            entry,
            Refused {
                recorded: Some(now),
                since: 0,
            },
        ))
    }

    /// The transaction holding the finding `due` allowed did not commit: the clock goes back, and
    /// the next finding names this refusal and those counted after it.
    pub(super) fn rolled_back(&mut self, agent_no: i64, before: Refused) {
        let entry = self.0.entry(agent_no).or_default();
        *entry = Refused {
            recorded: before.recorded,
            since: before.since + 1 + entry.since,
        };
    }
}

/// The handle the service uses to reach the writer: the SQLite writer thread, or the PostgreSQL
/// writer's pool.
#[derive(Clone)]
pub enum Writer {
    Sqlite(mpsc::Sender<Command>),
    Postgres(std::sync::Arc<super::pg::ingest::PgWriter>),
}

impl Writer {
    /// Starts the writer thread on `conn`. Committed records go to `notices` when given.
    pub fn spawn(
        conn: Connection,
        seal: Seal,
        notices: Option<std::sync::mpsc::SyncSender<CommitNotice>>,
    ) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE);
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, seal, rx, notices))?;
        Ok(Writer::Sqlite(tx))
    }

    async fn call<T>(
        tx: &mpsc::Sender<Command>,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        tx.send(command(reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)
    }

    pub async fn ingest(&self, batch: VerifiedBatch) -> Result<Committed, IngestError> {
        match self {
            Writer::Sqlite(tx) => {
                let agent_id =
                    tracing::enabled!(tracing::Level::DEBUG).then(|| batch.agent_id.clone());
                let (reply, answer) = oneshot::channel();
                tx.send(Command::Ingest { batch, reply })
                    .await
                    .map_err(|_| StoreError::WriterGone)?;
                if let Some(agent_id) = agent_id {
                    tracing::debug!(%agent_id, "batch queued for the store writer");
                }
                answer.await.map_err(|_| StoreError::WriterGone)?
            }
            Writer::Postgres(pg) => pg.ingest(batch).await,
        }
    }

    /// Whether `token` may enroll an agent called `name` (see [`super::check_enrollment`]), so the
    /// service signs nothing for a request that will be refused.
    pub async fn check_enrollment(&self, token: String, name: String) -> Result<(), StoreError> {
        match self {
            Writer::Sqlite(tx) => {
                Self::call(tx, |reply| Command::CheckEnrollment { token, name, reply }).await?
            }
            Writer::Postgres(pg) => pg.check_enrollment(&token, &name).await,
        }
    }

    pub async fn enroll(
        &self,
        token: String,
        agent: OwnedNewAgent,
    ) -> Result<AgentKey, StoreError> {
        match self {
            Writer::Sqlite(tx) => {
                Self::call(tx, |reply| Command::Enroll {
                    token,
                    agent,
                    reply,
                })
                .await?
            }
            Writer::Postgres(pg) => pg.enroll(&token, agent).await,
        }
    }

    /// An agent another collector sharing the store enrolled since this one last read the
    /// agents (always none for the SQLite store, which only this collector enrolls into).
    pub async fn enrolled_elsewhere(&self, agent_id: &str) -> Result<Option<AgentKey>, StoreError> {
        match self {
            Writer::Sqlite(_) => Ok(None),
            Writer::Postgres(pg) => pg.agent(agent_id).await,
        }
    }

    /// Records (as a `chain.tamper` finding) that a batch from an enrolled agent was refused.
    pub async fn refused(&self, agent_no: i64, agent_id: String, detail: String) {
        match self {
            Writer::Sqlite(tx) => {
                let command = Command::Refused {
                    agent_no,
                    agent_id,
                    detail,
                };
                if tx.send(command).await.is_err() {
                    tracing::error!(
                        "the ingest thread has stopped; a refused batch is not recorded"
                    );
                }
            }
            Writer::Postgres(pg) => pg.refused(agent_no, agent_id, detail).await,
        }
    }
}

/// Where an agent's chain stands after a transaction, applied to its [`ChainState`] only once the
/// transaction commits: a finding rolled back with it must be found again by the next batch.
#[derive(Clone, Copy)]
struct Staged {
    last_seq: u64,
    head: Hash,
    witnessed: u64,
}

struct ChainState {
    last_seq: u64,
    head: Hash,
    host: String,
    /// The highest witnessed head already compared with the store (once per collector run).
    witnessed: u64,
}

fn run(
    mut conn: Connection,
    seal: Seal,
    mut rx: mpsc::Receiver<Command>,
    notices: Option<std::sync::mpsc::SyncSender<CommitNotice>>,
) {
    let mut chains: HashMap<i64, ChainState> = HashMap::new();
    let mut refusals = Refusals::default();
    while let Some(first) = rx.blocking_recv() {
        let mut batches = Vec::new();
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Enroll {
                    token,
                    agent,
                    reply,
                } => {
                    let head_signature =
                        seal.sign(&seal::head_message(&agent.id, 0, GENESIS.as_slice()));
                    let new = NewAgent {
                        id: &agent.id,
                        name: &agent.name,
                        host: &agent.host,
                        signing_key: &agent.signing_key,
                        certificate: &agent.certificate,
                        head_signature: &head_signature,
                    };
                    let _ = reply.send(super::enroll(&mut conn, &token, &new));
                }
                Command::CheckEnrollment { token, name, reply } => {
                    let _ = reply.send(super::check_enrollment(&conn, &token, &name));
                }
                Command::Ingest { batch, reply } => batches.push((batch, reply)),
                Command::Refused {
                    agent_no,
                    agent_id,
                    detail,
                } => {
                    let refusal = Refusal {
                        agent_no,
                        agent_id,
                        seq: 0,
                        detail,
                    };
                    let mut recorded = None;
                    let stored = (|| {
                        let tx = conn.transaction()?;
                        recorded = record_refusal(&tx, &seal, &mut chains, &mut refusals, refusal)?;
                        tx.commit()
                    })();
                    match (stored, recorded) {
                        (Ok(()), Some((_, finding))) => {
                            notify(notices.as_ref(), Vec::new(), vec![finding])
                        }
                        (Ok(()), None) => {}
                        (Err(error), recorded) => {
                            if let Some((before, _)) = recorded {
                                refusals.rolled_back(agent_no, before);
                            }
                            tracing::error!(%error, "cannot record a refused batch as a finding")
                        }
                    }
                }
            }
            if batches.len() < GROUP {
                next = rx.try_recv().ok();
            }
        }
        if batches.is_empty() {
            continue;
        }
        commit_group(
            &mut conn,
            &seal,
            &mut chains,
            &mut refusals,
            batches,
            notices.as_ref(),
        );
    }
}

type Pending = (
    VerifiedBatch,
    oneshot::Sender<Result<Committed, IngestError>>,
);

fn commit_group(
    conn: &mut Connection,
    seal: &Seal,
    chains: &mut HashMap<i64, ChainState>,
    refusals: &mut Refusals,
    batches: Vec<Pending>,
    notices: Option<&std::sync::mpsc::SyncSender<CommitNotice>>,
) {
    let mut outcomes = Vec::with_capacity(batches.len());
    let mut notice = CommitNotice {
        records: Vec::new(),
        findings: Vec::new(),
    };
    // Chain positions as they would be after this transaction; dropped if it rolls back.
    let mut staged: HashMap<i64, Staged> = HashMap::new();
    // Refusal findings this transaction holds, with each agent's refusal clock before them.
    let mut refused: Vec<(i64, Refused)> = Vec::new();
    if tracing::enabled!(tracing::Level::DEBUG) {
        let agents: Vec<&str> = batches.iter().map(|(b, _)| b.agent_id.as_str()).collect();
        tracing::debug!(agents = %agents.join(","), "group commit begins");
    }
    let mut pending = batches.into_iter();
    let result = (|| -> Result<(), String> {
        let mut tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|error| error.to_string())?;
        for (batch, reply) in pending.by_ref() {
            let outcome = match tx.savepoint() {
                Ok(sp) => match store_batch(&sp, seal, chains, &mut staged, &batch, &mut notice) {
                    Ok(committed) => sp.commit().map(|()| Ok(committed)),
                    Err(error) => {
                        drop(sp);
                        Ok(Err(error))
                    }
                },
                Err(error) => Err(error),
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    outcomes.push((reply, Err(IngestError::from(error))));
                    return Err("a savepoint could not be taken or released".into());
                }
            };
            // SQLite rolls the whole transaction back on some errors (a full disk, an I/O error):
            // what earlier batches of this group stored is gone, and a savepoint taken now would
            // open a transaction of its own that commits alone, behind the other agents' backs.
            if tx.is_autocommit() {
                let reason = match &outcome {
                    Err(error) => error.to_string(),
                    Ok(_) => "the transaction was rolled back".to_string(),
                };
                outcomes.push((reply, outcome));
                return Err(reason);
            }
            // The batch's own work is rolled back; the record that a fork was refused is not,
            // so the `chain-tamper` rule sees it.
            if let Err(error @ IngestError::Fork { seq, .. }) = &outcome {
                let refusal = Refusal {
                    agent_no: batch.agent_no,
                    agent_id: batch.agent_id.clone(),
                    seq: *seq,
                    detail: format!(
                        "batch {}..={} refused: {error}",
                        batch.first_seq, batch.last_seq
                    ),
                };
                match record_refusal(&tx, seal, chains, refusals, refusal) {
                    Ok(Some((before, finding))) => {
                        refused.push((batch.agent_no, before));
                        notice.findings.push(finding);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        outcomes.push((reply, outcome));
                        return Err(error.to_string());
                    }
                }
            }
            outcomes.push((reply, outcome));
        }
        tx.commit().map_err(|error| error.to_string())
    })();
    match result {
        Ok(()) => {
            for (agent_no, staged) in staged {
                if let Some(state) = chains.get_mut(&agent_no) {
                    state.last_seq = staged.last_seq;
                    state.head = staged.head;
                    state.witnessed = staged.witnessed;
                }
            }
            for (reply, outcome) in outcomes {
                let _ = reply.send(outcome);
            }
            notify(notices, notice.records, notice.findings);
        }
        Err(reason) => {
            // Nothing of this group committed: every batch in it, tried or not, is told so, and
            // no finding it held counts as recorded.
            for (agent_no, before) in refused.into_iter().rev() {
                refusals.rolled_back(agent_no, before);
            }
            tracing::error!(error = %reason, "store commit failed; batches are not acknowledged");
            let replies = outcomes
                .into_iter()
                .map(|(reply, _)| reply)
                .chain(pending.map(|(_, reply)| reply));
            for reply in replies {
                let _ = reply.send(Err(IngestError::CommitFailed {
                    reason: reason.clone(),
                }));
            }
        }
    }
}

/// Passes what committed to detection.
fn notify(
    notices: Option<&std::sync::mpsc::SyncSender<CommitNotice>>,
    records: Vec<Record>,
    findings: Vec<Finding>,
) {
    if let Some(notices) = notices
        && (!records.is_empty() || !findings.is_empty())
        && notices.send(CommitNotice { records, findings }).is_err()
    {
        tracing::warn!("detection has stopped; committed events are not being evaluated");
    }
}

/// A batch from an enrolled agent that the collector refused as forged.
struct Refusal {
    agent_no: i64,
    agent_id: String,
    /// The sequence number the refusal concerns, when known (0: not known).
    seq: u64,
    detail: String,
}

/// Stores a `chain.tamper` finding for a refused batch, unless one for this agent was stored
/// within `REFUSAL_QUIET`: then the refusal is counted and named in the next finding. Returns
/// the finding with the refusal clock before it: if the transaction does not commit, the caller
/// puts the clock back ([`Refusals::rolled_back`]).
fn record_refusal(
    conn: &Connection,
    seal: &Seal,
    chains: &mut HashMap<i64, ChainState>,
    refusals: &mut Refusals,
    refusal: Refusal,
) -> Result<Option<(Refused, Finding)>, rusqlite::Error> {
    #[expect(
        clippy::disallowed_methods,
        reason = "the store writer is a dedicated thread, outside the runtime's clock"
    )]
    let now = std::time::Instant::now();
    let Some(before) = refusals.due(refusal.agent_no, now) else {
        tracing::warn!(agent_id = %refusal.agent_id, detail = %refusal.detail, "batch refused again");
        return Ok(None);
    };
    let agent_no = refusal.agent_no;
    let stored = refusal_finding(conn, seal, chains, refusal, before.since);
    if stored.is_err() {
        refusals.rolled_back(agent_no, before);
    }
    stored.map(|finding| Some((before, finding)))
}

/// The `chain.tamper` finding for a refusal, naming the `since` refusals counted before it, stored.
fn refusal_finding(
    conn: &Connection,
    seal: &Seal,
    chains: &mut HashMap<i64, ChainState>,
    refusal: Refusal,
    since: u64,
) -> Result<Finding, rusqlite::Error> {
    let host = chain_state(conn, chains, refusal.agent_no)?.host.clone();
    let mut detail = refusal.detail;
    if since > 0 {
        detail.push_str(&format!(
            " ({since} more refused batches since the last finding)"
        ));
    }
    let finding = Finding {
        agent_id: refusal.agent_id,
        host,
        kind: FindingKind::ChainTamper,
        ts: Timestamp::now(),
        first_seq: refusal.seq,
        last_seq: refusal.seq,
        detail,
    };
    insert_finding(conn, seal, refusal.agent_no, &finding)?;
    Ok(finding)
}

fn chain_state<'a>(
    conn: &Connection,
    chains: &'a mut HashMap<i64, ChainState>,
    agent_no: i64,
) -> Result<&'a mut ChainState, rusqlite::Error> {
    if let std::collections::hash_map::Entry::Vacant(slot) = chains.entry(agent_no) {
        let (last_seq, head, host): (i64, Vec<u8>, String) = conn.query_row(
            "SELECT last_seq, head_hash, host FROM agents WHERE no = ?1",
            [agent_no],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let head = bannin::chain::to_hash(&head, "head hash").unwrap_or(GENESIS);
        slot.insert(ChainState {
            last_seq: u64::try_from(last_seq).unwrap_or(0),
            head,
            host,
            witnessed: 0,
        });
    }
    chains
        .get_mut(&agent_no)
        .ok_or(rusqlite::Error::QueryReturnedNoRows)
}

fn store_batch(
    conn: &Connection,
    seal: &Seal,
    chains: &mut HashMap<i64, ChainState>,
    staged: &mut HashMap<i64, Staged>,
    batch: &VerifiedBatch,
    notice: &mut CommitNotice,
) -> Result<Committed, IngestError> {
    let state = chain_state(conn, chains, batch.agent_no)?;
    let Staged {
        last_seq,
        head,
        mut witnessed,
    } = staged.get(&batch.agent_no).copied().unwrap_or(Staged {
        last_seq: state.last_seq,
        head: state.head,
        witnessed: state.witnessed,
    });
    let host = state.host.clone();
    let now = Timestamp::now();
    let mut findings = Vec::new();
    // Events the agent saw acknowledged cannot be a gap that "never arrived".
    let mut acknowledged = 0;
    if let Some((seq, hash)) = batch.witness
        && seq > witnessed
    {
        witnessed = seq;
        acknowledged = seq;
        if let Some(finding) = witness_finding(conn, batch, &host, last_seq, seq, &hash, now)? {
            findings.push(finding);
        }
    }
    findings.extend(gap_finding(
        batch,
        &host,
        last_seq,
        acknowledged,
        &head,
        now,
    ));

    let mut inserted = 0u32;
    let mut duplicates = 0u32;
    let mut records = Vec::new();
    {
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO events (agent_no, seq, ts, kind, path, payload, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut existing =
            conn.prepare_cached("SELECT hash FROM events WHERE agent_no = ?1 AND seq = ?2")?;
        for ev in &batch.events {
            let seq = i64::try_from(ev.seq).unwrap_or(i64::MAX);
            let changed = insert.execute(params![
                batch.agent_no,
                seq,
                ev.event.ts.as_nanos(),
                ev.event.kind(),
                ev.event.path(),
                ev.bytes,
                ev.hash.as_slice(),
            ])?;
            if changed == 1 {
                inserted += 1;
                records.push(Record {
                    agent_id: batch.agent_id.clone(),
                    event: ev.event.clone(),
                });
            } else {
                let stored: Option<Vec<u8>> = existing
                    .query_row(params![batch.agent_no, seq], |r| r.get(0))
                    .optional()?;
                if stored.as_deref() != Some(ev.hash.as_slice()) {
                    return Err(IngestError::Fork {
                        agent_id: batch.agent_id.clone(),
                        seq: ev.seq,
                    });
                }
                duplicates += 1;
            }
        }
    }
    if inserted > 0 {
        conn.execute(
            "INSERT OR IGNORE INTO batches
             (agent_no, last_seq, first_seq, prev_hash, head_hash, signature, received_ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                batch.agent_no,
                i64::try_from(batch.last_seq).unwrap_or(i64::MAX),
                i64::try_from(batch.first_seq).unwrap_or(i64::MAX),
                batch.prev_hash.as_slice(),
                batch.head_hash.as_slice(),
                batch.signature,
                now.as_nanos()
            ],
        )?;
    }
    for finding in &findings {
        insert_finding(conn, seal, batch.agent_no, finding)?;
    }
    let (new_last, new_head) = if batch.last_seq > last_seq {
        (batch.last_seq, batch.head_hash)
    } else {
        (last_seq, head)
    };
    let spool = batch
        .events
        .iter()
        .rev()
        .find_map(|ev| match &ev.event.body {
            Body::Agent(a) => Some((a.spool_events, a.spool_bytes)),
            _ => None,
        });
    // The collector signs the head it records, so rewinding it after cutting off the tail of the
    // chain needs its key, not just the database.
    let head_signature = seal.sign(&seal::head_message(&batch.agent_id, new_last, &new_head));
    conn.execute(
        "UPDATE agents SET last_seq = ?1, head_hash = ?2, last_seen_ts = ?3,
             spool_events = COALESCE(?4, spool_events), spool_bytes = COALESCE(?5, spool_bytes),
             head_signature = ?6
         WHERE no = ?7",
        params![
            i64::try_from(new_last).unwrap_or(i64::MAX),
            new_head.as_slice(),
            now.as_nanos(),
            spool.map(|s| i64::try_from(s.0).unwrap_or(i64::MAX)),
            spool.map(|s| i64::try_from(s.1).unwrap_or(i64::MAX)),
            head_signature,
            batch.agent_no
        ],
    )?;
    staged.insert(
        batch.agent_no,
        Staged {
            last_seq: new_last,
            head: new_head,
            witnessed,
        },
    );
    notice.records.extend(records);
    notice.findings.extend(findings);
    Ok(Committed {
        committed_through: new_last,
        head_hash: new_head,
        inserted,
        duplicates,
    })
}

/// Compares the agent's witness (the collector acknowledged its chain through `seq`, ending in
/// `hash`) with the store: a store that lacks or changed what was acknowledged lost it after the
/// acknowledgement (a truncated write-ahead log, a restored backup, someone deleting rows).
fn witness_finding(
    conn: &Connection,
    batch: &VerifiedBatch,
    host: &str,
    stored_last: u64,
    seq: u64,
    hash: &Hash,
    now: Timestamp,
) -> Result<Option<Finding>, rusqlite::Error> {
    let witness = Witness {
        batch,
        host,
        seq,
        hash,
        now,
    };
    if let Some(finding) = witness.beyond(stored_last) {
        return Ok(Some(finding));
    }
    let pruned: Option<i64> = conn
        .query_row(
            "SELECT through_seq FROM pruned WHERE agent_no = ?1",
            [batch.agent_no],
            |r| r.get(0),
        )
        .optional()?;
    if pruned.is_some_and(|through| through >= i64::try_from(seq).unwrap_or(i64::MAX)) {
        return Ok(None);
    }
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM events WHERE agent_no = ?1 AND seq = ?2",
            params![batch.agent_no, i64::try_from(seq).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )
        .optional()?;
    Ok(witness.against(stored.as_slice()))
}

/// A `chain.gap` when a batch's start does not meet the stored chain, for either store: events
/// between the stored head (or what the agent saw acknowledged, `acknowledged`) and the batch
/// never arrived, or the batch follows the stored head by number but not by hash.
pub(crate) fn gap_finding(
    batch: &VerifiedBatch,
    host: &str,
    last_seq: u64,
    acknowledged: u64,
    head: &Hash,
    now: Timestamp,
) -> Option<Finding> {
    let finding = |first_seq: u64, last: u64, detail: String| Finding {
        agent_id: batch.agent_id.clone(),
        host: host.to_string(),
        kind: FindingKind::ChainGap,
        ts: now,
        first_seq,
        last_seq: last,
        detail,
    };
    let gap_from = last_seq.max(acknowledged) + 1;
    if batch.first_seq > gap_from {
        Some(finding(
            gap_from,
            batch.first_seq - 1,
            format!("events {gap_from}..={} never arrived", batch.first_seq - 1),
        ))
    } else if batch.first_seq == last_seq + 1 && batch.prev_hash != *head {
        Some(finding(
            batch.first_seq,
            batch.first_seq,
            format!(
                "event {} does not follow the stored event {last_seq}: the chain does not connect",
                batch.first_seq
            ),
        ))
    } else {
        None
    }
}

/// The agent's witness (the last event it saw acknowledged, and its hash) held against the
/// store, for either store: a `chain.tamper` when the store lost or changed what it acknowledged.
pub(crate) struct Witness<'a> {
    pub batch: &'a VerifiedBatch,
    pub host: &'a str,
    pub seq: u64,
    pub hash: &'a Hash,
    pub now: Timestamp,
}

impl Witness<'_> {
    fn finding(&self, first_seq: u64, detail: String) -> Finding {
        Finding {
            agent_id: self.batch.agent_id.clone(),
            host: self.host.to_string(),
            kind: FindingKind::ChainTamper,
            ts: self.now,
            first_seq,
            last_seq: self.seq,
            detail,
        }
    }

    /// The witness lies past the stored chain's end: acknowledged events are gone from the store.
    pub fn beyond(&self, stored_last: u64) -> Option<Finding> {
        let seq = self.seq;
        (seq > stored_last).then(|| {
            self.finding(
                stored_last + 1,
                format!(
                    "store lost acknowledged events: the agent holds the collector's acknowledgement through {seq}, the store ends at {stored_last}"
                ),
            )
        })
    }

    /// The witnessed event against the hashes the store holds for it (none: lost).
    pub fn against(&self, stored: &[Vec<u8>]) -> Option<Finding> {
        let seq = self.seq;
        if stored.is_empty() {
            Some(self.finding(
                seq,
                format!(
                    "store lost acknowledged events: event {seq}, acknowledged to the agent, is missing"
                ),
            ))
        } else if stored.iter().all(|s| s.as_slice() == self.hash.as_slice()) {
            None
        } else {
            Some(self.finding(
                seq,
                format!(
                    "store changed an acknowledged event: event {seq} differs from the one the agent saw acknowledged"
                ),
            ))
        }
    }
}

/// Stores a finding with the collector's signature over it: `verify` accepts no other as an
/// explanation.
fn insert_finding(
    conn: &Connection,
    seal: &Seal,
    agent_no: i64,
    finding: &Finding,
) -> Result<(), rusqlite::Error> {
    let signature = seal.sign(&seal::finding_message(
        &finding.agent_id,
        finding.kind.as_str(),
        finding.first_seq,
        finding.last_seq,
        finding.ts.as_nanos(),
        &finding.detail,
    ));
    conn.execute(
        "INSERT INTO findings (agent_no, ts, kind, first_seq, last_seq, detail, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            agent_no,
            finding.ts.as_nanos(),
            finding.kind.as_str(),
            i64::try_from(finding.first_seq).unwrap_or(i64::MAX),
            i64::try_from(finding.last_seq).unwrap_or(i64::MAX),
            finding.detail,
            signature
        ],
    )?;
    tracing::warn!(agent_id = %finding.agent_id, kind = finding.kind.as_str(), detail = %finding.detail, "chain finding");
    Ok(())
}

#[cfg(test)]
mod tests {
    use bannin::chain::link;
    use bannin::event::{SensorEvent, SensorStatus};

    use super::*;

    #[test]
    fn a_refusal_finding_that_does_not_commit_leaves_the_clock_as_it_was() {
        let mut refusals = Refusals::default();
        #[expect(
            clippy::disallowed_methods,
            reason = "only an origin: the test moves the clock by hand, nothing waits on it"
        )]
        let t0 = std::time::Instant::now();
        let before = refusals
            .due(7, t0)
            .expect("the first refusal gets a finding");
        assert_eq!(before, Refused::default());
        // Refused again within the quiet time: counted, no finding.
        assert!(refusals.due(7, t0 + REFUSAL_QUIET / 2).is_none());
        // The first finding's transaction rolls back: the next refusal gets a finding, naming both.
        refusals.rolled_back(7, before);
        let next = refusals
            .due(7, t0 + REFUSAL_QUIET / 2)
            .expect("nothing was recorded");
        assert_eq!(next.since, 2);
        // Once that one is stored, the quiet time counts from it.
        assert!(refusals.due(7, t0 + REFUSAL_QUIET).is_none());
        assert!(refusals.due(7, t0 + REFUSAL_QUIET * 2).is_some());
    }

    /// One event numbered `seq`, its bytes telling it apart from another with the same number.
    fn event(seq: u64, message: &str) -> VerifiedEvent {
        let mut event = Event::now(
            "pc1",
            SensorEvent::new(SensorStatus::Status, "files", message),
        );
        event.seq = seq;
        let bytes = bannin::proto::encode_event(&event);
        VerifiedEvent {
            seq,
            hash: GENESIS,
            bytes,
            event,
        }
    }

    /// A batch of `events` following `prev`, their chain hashes filled in.
    fn batch(
        agent_no: i64,
        prev: Hash,
        mut events: Vec<VerifiedEvent>,
        witness: Option<(u64, Hash)>,
    ) -> VerifiedBatch {
        let mut head = prev;
        for ev in &mut events {
            head = link(&head, ev.seq, &ev.bytes);
            ev.hash = head;
        }
        VerifiedBatch {
            agent_no,
            agent_id: "a-1".into(),
            first_seq: events[0].seq,
            last_seq: events[events.len() - 1].seq,
            prev_hash: prev,
            head_hash: head,
            signature: Vec::new(),
            events,
            witness,
        }
    }

    #[test]
    fn a_witness_finding_rolled_back_with_its_batch_is_found_by_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        let seal = Seal::load_or_create(dir.path()).unwrap();
        let tomorrow = Timestamp::now().saturating_add(std::time::Duration::from_secs(86_400));
        crate::store::add_token(&conn, "t", tomorrow).unwrap();
        let agent = NewAgent {
            id: "a-1",
            name: "pc1",
            host: "pc1",
            signing_key: &[0; 32],
            certificate: "",
            head_signature: &[],
        };
        let agent_no = crate::store::enroll(&mut conn, "t", &agent).unwrap().no;
        let mut chains = HashMap::new();
        let mut refusals = Refusals::default();
        let mut send = |conn: &mut Connection, batch: VerifiedBatch| {
            let (reply, mut answer) = oneshot::channel();
            commit_group(
                conn,
                &seal,
                &mut chains,
                &mut refusals,
                vec![(batch, reply)],
                None,
            );
            answer.try_recv().unwrap()
        };
        let first = batch(
            agent_no,
            GENESIS,
            vec![event(1, "one"), event(2, "two")],
            None,
        );
        let (acknowledged, head) = (first.events[0].hash, first.head_hash);
        send(&mut conn, first).unwrap();
        // After the acknowledgement, someone changes event 1 in the store.
        conn.execute("UPDATE events SET hash = zeroblob(32) WHERE seq = 1", [])
            .unwrap();
        let changed = |conn: &Connection| -> i64 {
            conn.query_row(
                "SELECT COUNT(*) FROM findings WHERE detail LIKE 'store changed an acknowledged event%'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        // The agent's next batch carries its witness but forks at event 2: refused, its work
        // (the witness finding with it) rolled back.
        let fork = batch(
            agent_no,
            acknowledged,
            vec![event(2, "other"), event(3, "three")],
            Some((1, acknowledged)),
        );
        assert!(matches!(
            send(&mut conn, fork),
            Err(IngestError::Fork { seq: 2, .. })
        ));
        assert_eq!(changed(&conn), 0);
        // So the next batch with the same witness must still find it.
        let next = batch(
            agent_no,
            head,
            vec![event(3, "three")],
            Some((1, acknowledged)),
        );
        send(&mut conn, next).unwrap();
        assert_eq!(changed(&conn), 1);
    }
}
