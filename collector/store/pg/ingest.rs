//! Ingest into PostgreSQL: one transaction per batch, on any collector.
//!
//! The agent's row in `agents` is its chain's head. The transaction locks it
//! (`SELECT … FOR UPDATE`), so batches of one agent arriving at two collectors take turns, and the
//! second sees what the first committed: a resend is found as duplicates, a gap or a chain that does
//! not connect as a finding, a different event under a stored number as a fork. The new events go in
//! by binary COPY, then the batch row, the findings and the moved head; the agent is acknowledged only
//! after the commit.

use std::collections::HashMap;
use std::sync::Mutex;

use bannin::chain::{GENESIS, Hash};
use bannin::event::Body;
use bannin::time::Timestamp;
use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::finding::{Finding, FindingKind};
use crate::seal::{self, Seal};
use crate::store::ingest::{
    Committed, IngestError, OwnedNewAgent, Refusals, VerifiedBatch, Witness, gap_finding,
};
use crate::store::{AgentKey, NewAgent, StoreError};

/// A failure point for tests: `BANNIN_FAILPOINT=ingest.before_commit:hold:FILE` makes the ingest
/// transaction of a batch wait before its commit while FILE exists (the transaction stays open, its
/// rows invisible to everyone else); `ingest.before_commit:abort` makes it fail there.
const FAILPOINT: &str = "BANNIN_FAILPOINT";

impl From<tokio_postgres::Error> for IngestError {
    fn from(source: tokio_postgres::Error) -> Self {
        IngestError::Store(StoreError::Pg { source })
    }
}

impl From<deadpool_postgres::PoolError> for IngestError {
    fn from(source: deadpool_postgres::PoolError) -> Self {
        IngestError::Store(StoreError::Pool { source })
    }
}

/// Writes to a PostgreSQL store. Cheap to share: the pool hands each batch a session.
pub struct PgWriter {
    pool: Pool,
    seal: Seal,
    /// Per agent, the highest witnessed head already compared with the store by this collector.
    witnessed: Mutex<HashMap<i64, u64>>,
    refusals: Mutex<Refusals>,
    /// Signalled after each commit: wakes this collector's detection leader, if it leads.
    committed: std::sync::Arc<tokio::sync::Notify>,
}

/// `text` as PostgreSQL can hold it: a `text` column refuses NUL, so NULs in a derived column
/// become U+FFFD (the payload keeps the exact bytes; verify derives the same).
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl PgWriter {
    pub fn new(pool: Pool, seal: Seal, committed: std::sync::Arc<tokio::sync::Notify>) -> PgWriter {
        PgWriter {
            pool,
            seal,
            witnessed: Mutex::new(HashMap::new()),
            refusals: Mutex::new(Refusals::default()),
            committed,
        }
    }

    pub async fn check_enrollment(&self, token: &str, name: &str) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let client: &tokio_postgres::Client = &client;
        super::check_enrollment(client, token, name).await
    }

    pub async fn enroll(&self, token: &str, agent: OwnedNewAgent) -> Result<AgentKey, StoreError> {
        let head_signature = self
            .seal
            .sign(&seal::head_message(&agent.id, 0, GENESIS.as_slice()));
        let new = NewAgent {
            id: &agent.id,
            name: &agent.name,
            host: &agent.host,
            signing_key: &agent.signing_key,
            certificate: &agent.certificate,
            head_signature: &head_signature,
        };
        let mut client = self.pool.get().await?;
        super::enroll(&mut client, token, &new).await
    }

    /// The agent `agent_id` as the store has it now.
    pub async fn agent(&self, agent_id: &str) -> Result<Option<AgentKey>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT no, id, signing_key, status, name FROM agents WHERE id = $1",
                &[&agent_id],
            )
            .await?;
        Ok(row.map(|r| AgentKey {
            no: r.get(0),
            id: r.get(1),
            signing_key: r.get(2),
            active: r.get::<_, &str>(3) == "active",
            name: r.get(4),
        }))
    }

    /// Stores one verified batch in its own transaction; returns once it committed.
    pub async fn ingest(&self, batch: VerifiedBatch) -> Result<Committed, IngestError> {
        let mut client = self.pool.get().await?;
        let outcome = self.store_batch(&mut client, &batch).await;
        if let Err(error @ IngestError::Fork { seq, .. }) = &outcome {
            let detail = format!(
                "batch {}..={} refused: {error}",
                batch.first_seq, batch.last_seq
            );
            self.record_refusal(&mut client, batch.agent_no, &batch.agent_id, *seq, detail)
                .await;
        }
        outcome
    }

    /// Records (as a `chain.tamper` finding) that a batch from an enrolled agent was refused.
    pub async fn refused(&self, agent_no: i64, agent_id: String, detail: String) {
        match self.pool.get().await {
            Ok(mut client) => {
                self.record_refusal(&mut client, agent_no, &agent_id, 0, detail)
                    .await
            }
            Err(error) => {
                tracing::error!(%error, "cannot record a refused batch as a finding: no session")
            }
        }
    }

    async fn record_refusal(
        &self,
        client: &mut tokio_postgres::Client,
        agent_no: i64,
        agent_id: &str,
        seq: u64,
        mut detail: String,
    ) {
        #[expect(
            clippy::disallowed_methods,
            reason = "a rate limit between findings, not a timeout anything waits on"
        )]
        let now = std::time::Instant::now();
        let due = lock(&self.refusals).due(agent_no, now);
        let Some(before) = due else {
            tracing::warn!(%agent_id, %detail, "batch refused again");
            return;
        };
        if before.since > 0 {
            detail.push_str(&format!(
                " ({} more refused batches since the last finding)",
                before.since
            ));
        }
        let stored = async {
            let host: String = client
                .query_one("SELECT host FROM agents WHERE no = $1", &[&agent_no])
                .await?
                .get(0);
            let finding = Finding {
                agent_id: agent_id.to_string(),
                host,
                kind: FindingKind::ChainTamper,
                ts: Timestamp::now(),
                first_seq: seq,
                last_seq: seq,
                detail,
            };
            insert_finding(&*client, &self.seal, agent_no, &finding).await
        }
        .await;
        if let Err(error) = stored {
            lock(&self.refusals).rolled_back(agent_no, before);
            tracing::error!(error = %pg_error(&error), "cannot record a refused batch as a finding");
        }
    }

    async fn store_batch(
        &self,
        client: &mut tokio_postgres::Client,
        batch: &VerifiedBatch,
    ) -> Result<Committed, IngestError> {
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "SELECT last_seq, head_hash, host FROM agents WHERE no = $1 FOR UPDATE",
                &[&batch.agent_no],
            )
            .await?;
        let last_seq = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        let head = bannin::chain::to_hash(row.get::<_, &[u8]>(1), "head hash").unwrap_or(GENESIS);
        let host: String = row.get(2);
        let known_witness = lock(&self.witnessed)
            .get(&batch.agent_no)
            .copied()
            .unwrap_or(0);
        let now = super::receipt_now();
        let mut findings = Vec::new();
        let mut witnessed = None;
        let mut acknowledged = 0;
        if let Some((seq, hash)) = batch.witness
            && seq > known_witness
        {
            witnessed = Some(seq);
            acknowledged = seq;
            if let Some(finding) =
                witness_finding(&tx, batch, &host, last_seq, seq, &hash, now).await?
            {
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

        // Events at or below the head may be stored already: a resend (duplicates) or a fork.
        let mut stored: HashMap<u64, Vec<u8>> = HashMap::new();
        if batch.first_seq <= last_seq {
            let rows = tx
                .query(
                    "SELECT seq, hash FROM events WHERE agent_no = $1 AND seq BETWEEN $2 AND $3",
                    &[
                        &batch.agent_no,
                        &seq_i64(batch.first_seq),
                        &seq_i64(batch.last_seq.min(last_seq)),
                    ],
                )
                .await?;
            for row in rows {
                stored.insert(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0), row.get(1));
            }
        }
        let mut fresh = Vec::new();
        let mut duplicates = 0u32;
        for ev in &batch.events {
            match stored.get(&ev.seq) {
                None => fresh.push(ev),
                Some(hash) if hash.as_slice() == ev.hash.as_slice() => duplicates += 1,
                Some(_) => {
                    return Err(IngestError::Fork {
                        agent_id: batch.agent_id.clone(),
                        seq: ev.seq,
                    });
                }
            }
        }
        let inserted = u32::try_from(fresh.len()).unwrap_or(u32::MAX);
        if !fresh.is_empty() {
            let sink = tx
                .copy_in(
                    "COPY events (agent_no, seq, ts, kind, path, payload, hash, received_ts)
                     FROM STDIN (FORMAT binary)",
                )
                .await?;
            let writer = BinaryCopyInWriter::new(
                sink,
                &[
                    Type::INT8,
                    Type::INT8,
                    Type::INT8,
                    Type::TEXT,
                    Type::TEXT,
                    Type::BYTEA,
                    Type::BYTEA,
                    Type::INT8,
                ],
            );
            let mut writer = std::pin::pin!(writer);
            for ev in fresh {
                let kind = ev.event.kind();
                let path = ev.event.path().map(storable);
                writer
                    .as_mut()
                    .write(&[
                        &batch.agent_no,
                        &seq_i64(ev.seq),
                        &ev.event.ts.as_nanos(),
                        &kind,
                        &path.as_deref(),
                        &ev.bytes.as_slice(),
                        &ev.hash.as_slice(),
                        &now.as_nanos(),
                    ])
                    .await?;
            }
            writer.as_mut().finish().await?;
            tx.execute(
                "INSERT INTO batches
                 (agent_no, last_seq, first_seq, prev_hash, head_hash, signature, received_ts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &batch.agent_no,
                    &seq_i64(batch.last_seq),
                    &seq_i64(batch.first_seq),
                    &batch.prev_hash.as_slice(),
                    &batch.head_hash.as_slice(),
                    &batch.signature,
                    &now.as_nanos(),
                ],
            )
            .await?;
        }
        for finding in &findings {
            insert_finding(&tx, &self.seal, batch.agent_no, finding).await?;
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
                Body::Agent(a) => Some((seq_i64(a.spool_events), seq_i64(a.spool_bytes))),
                _ => None,
            });
        let head_signature =
            self.seal
                .sign(&seal::head_message(&batch.agent_id, new_last, &new_head));
        tx.execute(
            "UPDATE agents SET last_seq = $1, head_hash = $2, last_seen_ts = $3,
                 spool_events = COALESCE($4, spool_events), spool_bytes = COALESCE($5, spool_bytes),
                 head_signature = $6
             WHERE no = $7",
            &[
                &seq_i64(new_last),
                &new_head.as_slice(),
                &now.as_nanos(),
                &spool.map(|s| s.0),
                &spool.map(|s| s.1),
                &head_signature,
                &batch.agent_no,
            ],
        )
        .await?;
        failpoint("ingest.before_commit").await?;
        tx.commit()
            .await
            .map_err(|error| IngestError::CommitFailed {
                reason: super::pg_message(&error),
            })?;
        self.committed.notify_one();
        if let Some(seq) = witnessed {
            let mut map = lock(&self.witnessed);
            let entry = map.entry(batch.agent_no).or_default();
            *entry = (*entry).max(seq);
        }
        for finding in &findings {
            tracing::warn!(agent_id = %finding.agent_id, kind = finding.kind.as_str(), detail = %finding.detail, "chain finding");
        }
        Ok(Committed {
            committed_through: new_last,
            head_hash: new_head,
            inserted,
            duplicates,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pg_error(error: &StoreError) -> String {
    error.to_string()
}

/// Runs the failure point `name` if `BANNIN_FAILPOINT` names it (tests only set it).
async fn failpoint(name: &str) -> Result<(), IngestError> {
    let Ok(spec) = std::env::var(FAILPOINT) else {
        return Ok(());
    };
    let mut parts = spec.splitn(3, ':');
    if parts.next() != Some(name) {
        return Ok(());
    }
    match (parts.next(), parts.next()) {
        (Some("abort"), _) => Err(IngestError::CommitFailed {
            reason: format!("failure point {name}"),
        }),
        (Some("hold"), Some(file)) => {
            let file = std::path::PathBuf::from(file);
            tracing::warn!(point = name, file = %file.display(), "failure point: holding");
            while tokio::fs::symlink_metadata(&file).await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// As the SQLite writer's: compares the agent's witness with the store.
async fn witness_finding(
    client: &impl GenericClient,
    batch: &VerifiedBatch,
    host: &str,
    stored_last: u64,
    seq: u64,
    hash: &Hash,
    now: Timestamp,
) -> Result<Option<Finding>, tokio_postgres::Error> {
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
    let pruned = client
        .query_opt(
            "SELECT through_seq FROM pruned WHERE agent_no = $1",
            &[&batch.agent_no],
        )
        .await?
        .map(|r| r.get::<_, i64>(0));
    if pruned.is_some_and(|through| through >= seq_i64(seq)) {
        return Ok(None);
    }
    let stored = client
        .query(
            "SELECT hash FROM events WHERE agent_no = $1 AND seq = $2",
            &[&batch.agent_no, &seq_i64(seq)],
        )
        .await?;
    let stored: Vec<Vec<u8>> = stored.iter().map(|r| r.get(0)).collect();
    Ok(witness.against(&stored))
}

/// Stores a finding with the collector's signature over it.
async fn insert_finding(
    client: &impl GenericClient,
    seal: &Seal,
    agent_no: i64,
    finding: &Finding,
) -> Result<(), StoreError> {
    let signature = seal.sign(&seal::finding_message(
        &finding.agent_id,
        finding.kind.as_str(),
        finding.first_seq,
        finding.last_seq,
        finding.ts.as_nanos(),
        &finding.detail,
    ));
    client
        .execute(
            "INSERT INTO findings (agent_no, ts, kind, first_seq, last_seq, detail, signature)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &agent_no,
                &finding.ts.as_nanos(),
                &finding.kind.as_str(),
                &seq_i64(finding.first_seq),
                &seq_i64(finding.last_seq),
                &finding.detail,
                &signature,
            ],
        )
        .await?;
    Ok(())
}
