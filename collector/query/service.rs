//! The Query gRPC service: operators only, checked on every call.
//!
//! The caller's principal comes from its verified client certificate; an agent certificate is refused,
//! and an operator must be recorded as active in the store at the moment of the call, so a revocation
//! by `bannin-collector revoke` applies to the very next call without a restart.

use std::time::Duration;

use bannin::event::Record;
use bannin::pb;
use bannin::pki::Principal;
use bannin::proto::encode_event;
use bannin::time::Timestamp;
use tonic::{Code, Request, Response, Status};

use super::local::{self, ReadConn, ReadError};
use crate::report::{scope, timeline};
use crate::service::{Refusal, ServiceError, caller};
use crate::store::operators::Standing;
use crate::store::query::EventFilter;
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Caller(#[from] ServiceError),
    #[error("{principal} may not query; only operators may")]
    NotAnOperator { principal: String },
    #[error("operator {name} is revoked")]
    Revoked { name: String },
    #[error("operator {name} is not known to this collector")]
    UnknownOperator { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("query task failed")]
    TaskFailed,
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl QueryError {
    /// The one place a query's error becomes a gRPC code and the metric's refusal reason; a
    /// caller the ingest service would refuse gets that service's code and reason.
    pub fn refusal(&self) -> Refusal {
        let (code, reason) = match self {
            QueryError::Caller(inner) => return inner.refusal(),
            QueryError::NotAnOperator { .. } => (Code::PermissionDenied, "not_an_operator"),
            QueryError::Revoked { .. } => (Code::PermissionDenied, "revoked"),
            QueryError::UnknownOperator { .. } => (Code::PermissionDenied, "unknown_operator"),
            QueryError::Read(error) if error.is_unknown() => (Code::InvalidArgument, "bad_request"),
            QueryError::Store(_) | QueryError::Read(_) => (Code::Unavailable, "store"),
            QueryError::TaskFailed => (Code::Unavailable, "internal"),
            QueryError::Encode { .. } => (Code::Internal, "internal"),
        };
        Refusal { code, reason }
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Status {
        Status::new(error.refusal().code, error.to_string())
    }
}

pub struct QueryService {
    pub store: store::StoreAt,
    pub silent_after: Duration,
}

fn stored(record: &Record) -> pb::StoredEvent {
    pb::StoredEvent {
        agent_id: record.agent_id.clone(),
        event: encode_event(&record.event),
    }
}

fn operator_name<T>(request: &Request<T>) -> Result<String, QueryError> {
    match caller(request)? {
        Principal::Operator(name) => Ok(name),
        Principal::Agent(id) => Err(QueryError::NotAnOperator {
            principal: format!("agent {id}"),
        }),
    }
}

impl QueryService {
    /// Checks the caller, then runs `work` on a fresh read connection off the async threads.
    async fn run<T, R: Send + 'static>(
        &self,
        request: &Request<T>,
        call: &'static str,
        work: impl FnOnce(&ReadConn) -> Result<R, QueryError> + Send + 'static,
    ) -> Result<R, Status> {
        let remote = request.remote_addr();
        let result = match operator_name(request) {
            Ok(name) => {
                let at = self.store.clone();
                let checked = name.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = ReadConn::open(&at)?;
                    match conn.operator_standing(&checked)? {
                        Standing::Active => work(&conn),
                        Standing::Revoked => Err(QueryError::Revoked { name: checked }),
                        Standing::Unknown => Err(QueryError::UnknownOperator { name: checked }),
                    }
                })
                .await
                .map_err(|_| QueryError::TaskFailed)
                .and_then(|r| r)
                .inspect(|_| tracing::debug!(operator = %name, call, "query answered"))
            }
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            tracing::warn!(?remote, call, %error, "query refused");
        }
        crate::metrics::query_call(result.as_ref().err().map(QueryError::refusal));
        result.map_err(Status::from)
    }
}

fn nanos(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp::from_nanos)
}

#[tonic::async_trait]
impl pb::query_server::Query for QueryService {
    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsReply>, Status> {
        let req = request.get_ref().clone();
        let filter = EventFilter {
            kind: req.kind,
            host: req.host,
            agent: req.agent,
            path: req.path,
            since: nanos(req.since_nanos),
            until: nanos(req.until_nanos),
            limit: usize::try_from(req.limit).unwrap_or(usize::MAX),
        };
        let records = self
            .run(&request, "events", move |conn| Ok(conn.events(&filter)?))
            .await?;
        Ok(Response::new(pb::EventsReply {
            events: records.iter().map(stored).collect(),
        }))
    }

    async fn agents(
        &self,
        request: Request<pb::AgentsRequest>,
    ) -> Result<Response<pb::AgentsReply>, Status> {
        let silent_after = self.silent_after;
        let rows = self
            .run(&request, "agents", move |conn| {
                Ok(conn.agents(Timestamp::now(), silent_after)?)
            })
            .await?;
        Ok(Response::new(pb::AgentsReply {
            agents: rows
                .into_iter()
                .map(|a| pb::AgentRow {
                    agent_id: a.agent_id,
                    name: a.name,
                    host: a.host,
                    status: a.status,
                    enrolled_nanos: a.enrolled.as_nanos(),
                    last_seen_nanos: a.last_seen.map(Timestamp::as_nanos),
                    last_seq: a.last_seq,
                    spool_events: a.spool_events,
                    spool_bytes: a.spool_bytes,
                })
                .collect(),
        }))
    }

    async fn alerts(
        &self,
        request: Request<pb::AlertsRequest>,
    ) -> Result<Response<pb::AlertsReply>, Status> {
        let req = request.get_ref().clone();
        let alerts = self
            .run(&request, "alerts", move |conn| {
                let filter = store::alerts::AlertFilter {
                    rule: req.rule,
                    since: nanos(req.since_nanos),
                    host: req.host,
                    limit: usize::try_from(req.limit).unwrap_or(usize::MAX),
                };
                Ok(local::alerts(conn, &filter)?)
            })
            .await?;
        let alerts_json = alerts
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()
            .map_err(|source| QueryError::Encode {
                what: "an alert",
                source,
            })?;
        Ok(Response::new(pb::AlertsReply { alerts_json }))
    }

    async fn timeline(
        &self,
        request: Request<pb::TimelineRequest>,
    ) -> Result<Response<pb::TimelineReply>, Status> {
        let req = request.get_ref().clone();
        let entries = self
            .run(&request, "timeline", move |conn| {
                let query = timeline::Query {
                    host: &req.host,
                    since: Timestamp::from_nanos(req.since_nanos),
                    until: Timestamp::from_nanos(req.until_nanos),
                    limit: usize::try_from(req.limit).unwrap_or(usize::MAX),
                };
                Ok(local::timeline(conn, &query)?)
            })
            .await?;
        Ok(Response::new(pb::TimelineReply {
            entries: entries
                .into_iter()
                .map(|entry| pb::TimelineEntry {
                    event: Some(stored(&entry.record)),
                    lineage: entry.lineage,
                })
                .collect(),
        }))
    }

    async fn scope(
        &self,
        request: Request<pb::ScopeRequest>,
    ) -> Result<Response<pb::ScopeReply>, Status> {
        let req = request.get_ref().clone();
        let (report, evidence) = self
            .run(&request, "scope", move |conn| {
                let query = scope::Query {
                    since: Timestamp::from_nanos(req.since_nanos),
                    until: Timestamp::from_nanos(req.until_nanos),
                    hosts: req.hosts,
                    alert: req.alert,
                    margin: Duration::from_secs(req.margin_secs),
                };
                Ok(local::scope(conn, &query)?)
            })
            .await?;
        let report_json = serde_json::to_string(&report).map_err(|source| QueryError::Encode {
            what: "the scope report",
            source,
        })?;
        Ok(Response::new(pb::ScopeReply {
            report_json,
            evidence: evidence.iter().map(stored).collect(),
        }))
    }
}
