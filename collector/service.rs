//! The gRPC services. Protobuf types stop here: batches are verified and turned into domain events
//! before they reach the store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bannin::chain::{self, ChainError, Hash};
use bannin::pb;
use bannin::pki::{Authority, Principal, principal_of};
use bannin::proto::{ProtoError, decode_event, footprint, limits, peek_seq};
use tonic::{Code, Request, Response, Status};

use crate::enrollment::{Admission, EnrollGuard};
use crate::present::{escape_control, is_unsafe_char};
use crate::store::ingest::{IngestError, OwnedNewAgent, VerifiedBatch, VerifiedEvent, Writer};
use crate::store::{AgentKey, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no client certificate: enroll this agent first")]
    NoCertificate,
    #[error("the client certificate names no bannin principal")]
    UnknownPrincipal,
    #[error("{principal} may not submit events")]
    NotAnAgent { principal: String },
    #[error("agent {agent_id} is not enrolled")]
    NotEnrolled { agent_id: String },
    #[error("agent {agent_id} is revoked")]
    Revoked { agent_id: String },
    #[error("batch is empty")]
    EmptyBatch,
    #[error("batch has {count} events; the limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("event {index} of the batch: {source}")]
    BadEvent { index: usize, source: ProtoError },
    #[error("event {index} of the batch has seq {got}, expected {expected}")]
    OutOfOrder {
        index: usize,
        got: u64,
        expected: u64,
    },
    #[error("batch covers seq {first}..={last}; seq must be 1 to {limit}")]
    SeqOutOfRange { first: u64, last: u64, limit: u64 },
    #[error(
        "event {index} of the batch claims host {claimed:?}; this agent enrolled as {enrolled:?}"
    )]
    WrongHost {
        index: usize,
        claimed: String,
        enrolled: String,
    },
    #[error("batch decodes to more than {limit} bytes; send smaller batches")]
    TooBigDecoded { limit: usize },
    #[error("batch run {index}: {source}")]
    BadRun {
        index: usize,
        source: bannin::runs::RunError,
    },
    #[error("a batch carries events or runs of events, not both")]
    EventsAndRuns,
    #[error("batch: {source}")]
    Chain {
        #[from]
        source: ChainError,
    },
    #[error("enrollment request: {reason}")]
    BadEnrollment { reason: String },
    #[error("too many failed enrollments from this address; try again in {retry_after_secs}s")]
    EnrollmentRateLimited { retry_after_secs: u64 },
    #[error("agent {agent_id} already has a batch in flight; retry after it is acknowledged")]
    AgentBusy { agent_id: String },
    #[error("the collector is stopping")]
    Stopping,
    #[error("internal error: {what}")]
    Internal { what: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// How a refusal is told and counted: the gRPC code the caller gets and the `reason` label of
/// `bannin_ingest_batches_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: &'static str,
}

impl Refusal {
    /// Whether the collector failed rather than the caller asking for something it may not have.
    pub fn is_collectors_fault(self) -> bool {
        matches!(self.code, Code::Unavailable | Code::Internal)
    }

    /// Whether the batch failed the chain or signature checks (counted apart, too).
    pub fn is_verification_failure(self) -> bool {
        matches!(self.reason, "bad_signature" | "bad_chain" | "fork")
    }
}

impl ServiceError {
    /// The one place a domain error becomes a gRPC code and a metric label (the message is the
    /// error's own text), so the gate, the services and the metrics cannot disagree.
    pub fn refusal(&self) -> Refusal {
        let (code, reason) = match self {
            ServiceError::NoCertificate | ServiceError::UnknownPrincipal => {
                (Code::Unauthenticated, "unauthenticated")
            }
            ServiceError::NotAnAgent { .. } => (Code::PermissionDenied, "not_an_agent"),
            ServiceError::NotEnrolled { .. } => (Code::Unauthenticated, "not_enrolled"),
            ServiceError::Revoked { .. } => (Code::PermissionDenied, "revoked"),
            ServiceError::EmptyBatch => (Code::InvalidArgument, "empty"),
            ServiceError::TooManyEvents { .. }
            | ServiceError::TooBigDecoded { .. }
            | ServiceError::BadEvent {
                source: ProtoError::TooLarge { .. },
                ..
            } => (Code::ResourceExhausted, "too_large"),
            ServiceError::BadEvent { .. }
            | ServiceError::BadRun { .. }
            | ServiceError::EventsAndRuns => (Code::InvalidArgument, "malformed"),
            ServiceError::SeqOutOfRange { .. } | ServiceError::OutOfOrder { .. } => {
                (Code::InvalidArgument, "out_of_order")
            }
            ServiceError::WrongHost { .. } => (Code::PermissionDenied, "wrong_host"),
            ServiceError::Chain {
                source: ChainError::BadSignature { .. },
            } => (Code::Unauthenticated, "bad_signature"),
            ServiceError::Chain { .. } => (Code::InvalidArgument, "bad_chain"),
            ServiceError::BadEnrollment { .. } => (Code::InvalidArgument, "bad_enrollment"),
            ServiceError::EnrollmentRateLimited { .. } => (Code::ResourceExhausted, "rate_limited"),
            ServiceError::AgentBusy { .. } => (Code::Unavailable, "busy"),
            ServiceError::Stopping => (Code::Unavailable, "stopping"),
            ServiceError::Internal { .. } => (Code::Internal, "internal"),
            ServiceError::Store(StoreError::NameTaken { .. }) => {
                (Code::AlreadyExists, "name_taken")
            }
            ServiceError::Store(
                StoreError::UnknownToken | StoreError::UsedToken | StoreError::ExpiredToken,
            ) => (Code::PermissionDenied, "bad_token"),
            ServiceError::Ingest(IngestError::Fork { .. }) => (Code::FailedPrecondition, "fork"),
            ServiceError::Store(_) | ServiceError::Ingest(_) => (Code::Unavailable, "store"),
        };
        Refusal { code, reason }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        Status::new(error.refusal().code, error.to_string())
    }
}

/// Enrolled agents' keys, shared by the services; the store is the source of truth.
#[derive(Clone, Default)]
pub struct Agents {
    by_id: Arc<RwLock<HashMap<String, AgentKey>>>,
}

impl Agents {
    pub fn load(keys: Vec<AgentKey>) -> Self {
        let agents = Agents::default();
        for key in keys {
            agents.insert(key);
        }
        agents
    }

    pub fn insert(&self, key: AgentKey) {
        if let Ok(mut map) = self.by_id.write() {
            map.insert(key.id.clone(), key);
        }
    }

    /// Takes in the store's current view: a revocation made by `bannin-collector revoke` while
    /// `serve` runs applies from the next batch. Agents are only added or updated, never removed,
    /// so an enrollment committed after the snapshot was read is not undone.
    pub fn refresh(&self, keys: Vec<AgentKey>) {
        if let Ok(mut map) = self.by_id.write() {
            for key in keys {
                map.insert(key.id.clone(), key);
            }
        }
    }

    fn get(&self, id: &str) -> Option<AgentKey> {
        self.by_id.read().ok()?.get(id).cloned()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_events: usize,
    /// The most bytes one batch may occupy once decoded (raw bytes plus decoded events); beyond
    /// it the batch is refused with RESOURCE_EXHAUSTED and the agent halves its batches.
    pub max_decoded_bytes: usize,
}

/// The default decoded-size budget of one batch: with `max_concurrent_batches` of them and the raw
/// messages, this keeps the collector's memory bounded whatever agents send.
pub const MAX_DECODED_BATCH_BYTES: usize = 24 * 1024 * 1024;

pub struct EnrollmentService {
    pub writer: Writer,
    pub authority: Arc<Authority>,
    pub agents: Agents,
    /// Failed enrollments by remote address: the rate limit and the log's summaries.
    pub guard: EnrollGuard,
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let remote = request.remote_addr();
        let ip = remote.map(|addr| addr.ip());
        // An address over the limit is refused before its request is looked at, and unlogged.
        if let Admission::Limited { retry_after } = self.guard.admit(ip) {
            return Err(ServiceError::EnrollmentRateLimited {
                retry_after_secs: retry_after.as_secs().max(1),
            }
            .into());
        }
        let req = request.into_inner();
        let result = self.enroll_agent(req).await;
        match &result {
            Ok(response) => {
                tracing::info!(agent_id = %response.agent_id, ?remote, "agent enrolled")
            }
            // The collector failing is not the caller's doing; refusals of the request are, and
            // count.
            Err(error) if error.refusal().is_collectors_fault() => {
                tracing::error!(?remote, %error, "enrollment failed")
            }
            Err(error) => {
                if self.guard.failed(ip) {
                    tracing::warn!(?remote, %error, "enrollment refused");
                }
            }
        }
        Ok(Response::new(result?))
    }
}

impl EnrollmentService {
    /// Checks the request, then the token and name against the store, and only then signs the
    /// agent's certificate: nobody without a valid token gets the CA to sign anything. The store
    /// checks token and name again as it spends the token, so of two racing requests only one
    /// enrolls.
    async fn enroll_agent(
        &self,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, ServiceError> {
        let bad = |reason: &str| ServiceError::BadEnrollment {
            reason: reason.to_string(),
        };
        chain::verifying_key(&req.signing_public_key)?;
        check_name("name", &req.name, false)?;
        check_name("hostname", &req.hostname, true)?;
        self.writer
            .check_enrollment(req.token.clone(), req.name.clone())
            .await?;
        let agent_id = new_agent_id().map_err(|_| ServiceError::Internal {
            what: "no randomness for an agent id",
        })?;
        let cert_pem = self
            .authority
            .sign_agent_csr(&req.csr_der, &agent_id, &req.signing_public_key)
            .map_err(|error| bad(&error.to_string()))?;
        let key = self
            .writer
            .enroll(
                req.token,
                OwnedNewAgent {
                    id: agent_id.clone(),
                    name: req.name,
                    host: req.hostname,
                    signing_key: req.signing_public_key,
                    certificate: cert_pem.clone(),
                },
            )
            .await?;
        self.agents.insert(key);
        Ok(pb::EnrollResponse {
            agent_id,
            certificate_pem: cert_pem,
            ca_pem: self.authority.cert_pem.clone(),
        })
    }
}

/// An agent's name (and host name) becomes every event's and alert's host, shown in terminals, chat
/// and mail: at most 253 characters (the name at least one), none of them control, bidi or
/// invisible characters.
fn check_name(what: &str, name: &str, may_be_empty: bool) -> Result<(), ServiceError> {
    let bad = |reason: String| ServiceError::BadEnrollment { reason };
    if (!may_be_empty && name.trim().is_empty()) || name.len() > 253 {
        return Err(bad(format!("{what} must be 1 to 253 characters")));
    }
    if let Some(c) = name.chars().find(|c| is_unsafe_char(*c)) {
        return Err(bad(format!(
            "{what} \"{}\" holds the control or invisible character U+{:04X}; choose a printable name",
            escape_control(name),
            u32::from(c)
        )));
    }
    Ok(())
}

fn new_agent_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(format!("a-{}", hex::encode(bytes)))
}

pub struct IngestService {
    pub writer: Writer,
    pub agents: Agents,
    pub limits: Limits,
}

/// The caller's identity, from its verified client certificate only.
pub fn caller<T>(request: &Request<T>) -> Result<Principal, ServiceError> {
    let certs = request.peer_certs().ok_or(ServiceError::NoCertificate)?;
    let leaf = certs.first().ok_or(ServiceError::NoCertificate)?;
    principal_of(leaf.as_ref()).ok_or(ServiceError::UnknownPrincipal)
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn submit(&self, request: Request<pb::EventBatch>) -> Result<Response<pb::Ack>, Status> {
        let principal = caller(&request).inspect_err(
            |error| tracing::warn!(remote = ?request.remote_addr(), %error, "batch refused"),
        )?;
        let agent_id = match principal {
            Principal::Agent(id) => id,
            Principal::Operator(name) => {
                return Err(ServiceError::NotAnAgent {
                    principal: format!("operator {name}"),
                }
                .into());
            }
        };
        let span = tracing::info_span!("agent", agent_id = %agent_id);
        let _guard = span.enter();
        let batch = request.into_inner();
        let packed = !batch.runs.is_empty();
        let result = self.accept(&agent_id, batch).await;
        match result {
            Ok(ack) => {
                crate::metrics::batch_accepted(ack.inserted, packed);
                Ok(Response::new(ack))
            }
            Err(error) => {
                crate::metrics::batch_refused(&error);
                tracing::warn!(%error, "batch refused");
                Err(error.into())
            }
        }
    }
}

impl IngestService {
    async fn accept(&self, agent_id: &str, batch: pb::EventBatch) -> Result<pb::Ack, ServiceError> {
        let agent = match self.agents.get(agent_id) {
            Some(agent) => agent,
            // Enrolled through another collector sharing the store since the last refresh.
            None => match self.writer.enrolled_elsewhere(agent_id).await? {
                Some(agent) => {
                    self.agents.insert(agent.clone());
                    agent
                }
                None => {
                    return Err(ServiceError::NotEnrolled {
                        agent_id: agent_id.to_string(),
                    });
                }
            },
        };
        if !agent.active {
            return Err(ServiceError::Revoked {
                agent_id: agent_id.to_string(),
            });
        }
        let limits = self.limits;
        let agent_for_check = agent.clone();
        // Decoding and hashing thousands of events is CPU work: keep it off the reactor threads.
        let verified =
            tokio::task::spawn_blocking(move || verify_batch(&agent_for_check, batch, limits))
                .await
                .map_err(|_| ServiceError::Internal {
                    what: "the verification task failed",
                })?;
        // A batch with the agent's certificate but not its signature is forged or the agent's
        // key is in other hands: refused, and recorded as a `chain.tamper` finding.
        if let Err(
            error @ ServiceError::Chain {
                source: ChainError::BadSignature { .. },
            },
        ) = &verified
        {
            self.writer
                .refused(
                    agent.no,
                    agent.id.clone(),
                    format!("batch refused: {error}"),
                )
                .await;
        }
        let verified = verified?;
        let committed = self.writer.ingest(verified).await?;
        Ok(pb::Ack {
            committed_through: committed.committed_through,
            inserted: committed.inserted,
            duplicates: committed.duplicates,
            head_hash: committed.head_hash.to_vec(),
            accepts_runs: true,
        })
    }
}

/// The events of a batch's runs, in order. What every run claims to unpack to is added up and held
/// to the batch's decoded budget before any is unpacked, so a run that packs small and unpacks
/// large (LZ4 reaches 255 to 1) costs no more than a batch of events would.
fn unpack_runs(packed: &[Vec<u8>], limits: Limits) -> Result<Vec<Vec<u8>>, ServiceError> {
    use bannin::runs;
    let bad = |index| move |source| ServiceError::BadRun { index, source };
    let mut claimed = 0usize;
    for (index, run) in packed.iter().enumerate() {
        claimed = claimed.saturating_add(runs::unpacked_len(run).map_err(bad(index))?);
        if claimed > limits.max_decoded_bytes {
            return Err(ServiceError::TooBigDecoded {
                limit: limits.max_decoded_bytes,
            });
        }
    }
    let mut events = Vec::new();
    let mut count = 0usize;
    for (index, run) in packed.iter().enumerate() {
        let plain = runs::unpack(run).map_err(bad(index))?;
        let framed = runs::events(&plain).map_err(bad(index))?;
        count = count.saturating_add(framed.len());
        // Past the limit the rest are only counted (what they unpack to is within the budget
        // held above), so the refusal says how many events the batch held.
        if count <= limits.max_batch_events {
            events.extend(framed.into_iter().map(<[u8]>::to_vec));
        }
    }
    if count > limits.max_batch_events {
        return Err(ServiceError::TooManyEvents {
            count,
            limit: limits.max_batch_events,
        });
    }
    Ok(events)
}

/// Checks a batch in the order that keeps a hostile one cheap: its shape and sizes, then the chain
/// and signature over the raw event bytes, and only then decodes each event, within the shared
/// bounds and a budget for the whole batch. Nothing is stored unless all of it holds.
pub fn verify_batch(
    agent: &AgentKey,
    mut batch: pb::EventBatch,
    limits: Limits,
) -> Result<VerifiedBatch, ServiceError> {
    if !batch.runs.is_empty() {
        if !batch.events.is_empty() {
            return Err(ServiceError::EventsAndRuns);
        }
        batch.events = unpack_runs(&std::mem::take(&mut batch.runs), limits)?;
    }
    if batch.events.is_empty() {
        return Err(ServiceError::EmptyBatch);
    }
    if batch.events.len() > limits.max_batch_events {
        return Err(ServiceError::TooManyEvents {
            count: batch.events.len(),
            limit: limits.max_batch_events,
        });
    }
    if let Some((index, bytes)) = batch
        .events
        .iter()
        .enumerate()
        .find(|(_, bytes)| bytes.len() > limits::MAX_EVENT_BYTES)
    {
        return Err(ServiceError::BadEvent {
            index,
            source: ProtoError::TooLarge {
                bytes: bytes.len(),
                limit: limits::MAX_EVENT_BYTES,
            },
        });
    }
    let prev_hash = chain::to_hash(&batch.prev_hash, "prev hash")?;
    // The agent's witness of what the collector acknowledged to it; a forged one is refused
    // like a forged batch.
    let witness = match &batch.witness {
        Some(w) => {
            let hash = chain::to_hash(&w.hash, "witness hash")?;
            chain::verify_witness(&agent.signing_key, &w.signature, &agent.id, w.seq, &hash)?;
            Some((w.seq, hash))
        }
        None => None,
    };
    // An agent from before `first_seq` existed leaves it 0: read the first event's seq alone,
    // which allocates nothing whatever the event holds.
    let first_seq = match batch.first_seq {
        0 => peek_seq(&batch.events[0])
            .map_err(|source| ServiceError::BadEvent { index: 0, source })?,
        seq => seq,
    };
    let count = batch.events.len() as u64;
    let last_seq = first_seq.saturating_add(count - 1);
    if first_seq == 0 || last_seq > limits::MAX_SEQ {
        return Err(ServiceError::SeqOutOfRange {
            first: first_seq,
            last: last_seq,
            limit: limits::MAX_SEQ,
        });
    }
    let mut head: Hash = prev_hash;
    let mut hashes = Vec::with_capacity(batch.events.len());
    for (seq, bytes) in (first_seq..).zip(&batch.events) {
        head = chain::link(&head, seq, bytes);
        hashes.push(head);
    }
    chain::verify_batch(
        &agent.signing_key,
        &batch.signature,
        &agent.id,
        first_seq,
        last_seq,
        &prev_hash,
        &head,
    )?;

    let mut events = Vec::with_capacity(batch.events.len());
    let mut decoded = 0usize;
    for (index, ((seq, bytes), hash)) in (first_seq..).zip(batch.events).zip(hashes).enumerate() {
        let mut event =
            decode_event(&bytes).map_err(|source| ServiceError::BadEvent { index, source })?;
        if event.seq != seq {
            return Err(ServiceError::OutOfOrder {
                index,
                got: event.seq,
                expected: seq,
            });
        }
        // The host is who enrolled, never what the agent writes into an event.
        if *event.host != *agent.name {
            return Err(ServiceError::WrongHost {
                index,
                claimed: event.host.to_string(),
                enrolled: agent.name.clone(),
            });
        }
        decoded += footprint(&mut event) + bytes.len();
        if decoded > limits.max_decoded_bytes {
            return Err(ServiceError::TooBigDecoded {
                limit: limits.max_decoded_bytes,
            });
        }
        events.push(VerifiedEvent {
            seq,
            hash,
            bytes,
            event,
        });
    }
    Ok(VerifiedBatch {
        agent_no: agent.no,
        agent_id: agent.id.clone(),
        first_seq,
        last_seq,
        prev_hash,
        head_hash: head,
        signature: batch.signature,
        events,
        witness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_runs_over_the_event_limit_is_refused_with_how_many_it_held() {
        use bannin::runs;
        let pack = |events: usize| {
            let mut plain = Vec::new();
            for n in 0..events {
                runs::push(&mut plain, &[n as u8; 3]);
            }
            runs::pack(&plain)
        };
        let limits = Limits {
            max_batch_events: 5,
            max_decoded_bytes: MAX_DECODED_BATCH_BYTES,
        };
        let error = unpack_runs(&[pack(3), pack(3), pack(3)], limits).unwrap_err();
        assert!(
            matches!(error, ServiceError::TooManyEvents { count: 9, limit: 5 }),
            "{error}"
        );
        assert_eq!(error.to_string(), "batch has 9 events; the limit is 5");
        // At the limit, every event in order.
        let events = unpack_runs(&[pack(3), pack(2)], limits).unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(events[3], [0u8; 3]);
        assert_eq!(events[4], [1u8; 3]);
    }

    #[test]
    fn a_refusal_is_told_to_the_caller_and_counted_under_one_reason() {
        // An oversized event is too large on the wire (the agent halves its batches) and in the
        // metric alike.
        let error = ServiceError::BadEvent {
            index: 0,
            source: ProtoError::TooLarge { bytes: 2, limit: 1 },
        };
        let refusal = error.refusal();
        assert_eq!(
            refusal,
            Refusal {
                code: Code::ResourceExhausted,
                reason: "too_large"
            }
        );
        assert_eq!(Status::from(error).code(), refusal.code);

        // The collector's own failures are not blamed on the caller.
        let internal = ServiceError::Internal {
            what: "the verification task failed",
        };
        assert_eq!(Status::from(internal).code(), Code::Internal);
        for (error, collectors_fault) in [
            (
                ServiceError::Internal {
                    what: "no randomness for an agent id",
                },
                true,
            ),
            (ServiceError::Store(StoreError::WriterGone), true),
            (
                ServiceError::BadEnrollment {
                    reason: "bad csr".into(),
                },
                false,
            ),
            (ServiceError::Store(StoreError::UsedToken), false),
        ] {
            assert_eq!(
                error.refusal().is_collectors_fault(),
                collectors_fault,
                "{error}"
            );
        }
        assert!(
            ServiceError::Ingest(IngestError::Fork {
                agent_id: "a".into(),
                seq: 1
            })
            .refusal()
            .is_verification_failure()
        );
    }
}
