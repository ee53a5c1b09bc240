//! The remote side of the query subcommands: a gRPC client presenting an operator identity. Protobuf
//! types stop here; callers get the same domain types a local query returns.

use std::path::Path;

use anyhow::{Context, Result};
use bannin::event::Record;
use bannin::pb;
use bannin::pb::query_client::QueryClient;
use bannin::pki::SERVER_NAME;
use bannin::proto::decode_event;
use bannin::time::Timestamp;
use serde_json::{Map, Value};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::identity;
use crate::report::{scope, timeline};
use crate::store::alerts::AlertFilter;
use crate::store::query::{AgentRow, EventFilter};

/// Replies can carry many events; the server's limit matches.
pub const MAX_MESSAGE: usize = 512 * 1024 * 1024;

pub struct Remote {
    runtime: tokio::runtime::Runtime,
    client: QueryClient<Channel>,
}

fn record(stored: pb::StoredEvent) -> Result<Record> {
    let event = decode_event(&stored.event).with_context(|| {
        format!(
            "the collector sent an undecodable event of {}",
            stored.agent_id
        )
    })?;
    Ok(Record {
        agent_id: stored.agent_id,
        event,
    })
}

/// One line naming what the collector refused, without gRPC internals.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the collector refused the query ({:?}): {}",
        status.code(),
        status.message()
    )
}

impl Remote {
    pub fn connect(server: &str, identity_file: &Path) -> Result<Remote> {
        let identity = identity::load(identity_file)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&identity.ca_pem))
            .domain_name(SERVER_NAME)
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        let endpoint = Endpoint::from_shared(server.to_string())
            .with_context(|| format!("{server} is not a valid collector URL"))?
            .tls_config(tls)
            .context("invalid TLS configuration")?
            .connect_timeout(std::time::Duration::from_secs(10));
        let channel = runtime
            .block_on(endpoint.connect())
            .with_context(|| format!("cannot connect to the collector at {server}"))?;
        let client = QueryClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Remote { runtime, client })
    }

    pub fn events(&mut self, filter: &EventFilter) -> Result<Vec<Record>> {
        let request = pb::EventsRequest {
            kind: filter.kind.clone(),
            host: filter.host.clone(),
            agent: filter.agent.clone(),
            path: filter.path.clone(),
            since_nanos: filter.since.map(Timestamp::as_nanos),
            until_nanos: filter.until.map(Timestamp::as_nanos),
            limit: filter.limit as u64,
        };
        let reply = self
            .runtime
            .block_on(self.client.events(request))
            .map_err(refused)?
            .into_inner();
        reply.events.into_iter().map(record).collect()
    }

    pub fn agents(&mut self) -> Result<Vec<AgentRow>> {
        let reply = self
            .runtime
            .block_on(self.client.agents(pb::AgentsRequest {}))
            .map_err(refused)?
            .into_inner();
        Ok(reply
            .agents
            .into_iter()
            .map(|a| AgentRow {
                agent_id: a.agent_id,
                name: a.name,
                host: a.host,
                status: a.status,
                enrolled: Timestamp::from_nanos(a.enrolled_nanos),
                last_seen: a.last_seen_nanos.map(Timestamp::from_nanos),
                last_seq: a.last_seq,
                spool_events: a.spool_events,
                spool_bytes: a.spool_bytes,
            })
            .collect())
    }

    pub fn alerts(&mut self, filter: &AlertFilter) -> Result<Vec<Map<String, Value>>> {
        let request = pb::AlertsRequest {
            rule: filter.rule.clone(),
            since_nanos: filter.since.map(Timestamp::as_nanos),
            host: filter.host.clone(),
            limit: filter.limit as u64,
        };
        let reply = self
            .runtime
            .block_on(self.client.alerts(request))
            .map_err(refused)?
            .into_inner();
        reply
            .alerts_json
            .iter()
            .map(|text| serde_json::from_str(text).context("the collector sent a malformed alert"))
            .collect()
    }

    pub fn timeline(&mut self, query: &timeline::Query<'_>) -> Result<Vec<timeline::Entry>> {
        let request = pb::TimelineRequest {
            host: query.host.to_string(),
            since_nanos: query.since.as_nanos(),
            until_nanos: query.until.as_nanos(),
            limit: query.limit as u64,
        };
        let reply = self
            .runtime
            .block_on(self.client.timeline(request))
            .map_err(refused)?
            .into_inner();
        reply
            .entries
            .into_iter()
            .map(|entry| {
                let stored = entry
                    .event
                    .context("the collector sent a timeline entry without its event")?;
                Ok(timeline::Entry {
                    record: record(stored)?,
                    lineage: entry.lineage,
                })
            })
            .collect()
    }

    pub fn scope(&mut self, query: &scope::Query) -> Result<(scope::Scope, Vec<Record>)> {
        let request = pb::ScopeRequest {
            since_nanos: query.since.as_nanos(),
            until_nanos: query.until.as_nanos(),
            hosts: query.hosts.clone(),
            alert: query.alert.clone(),
            margin_secs: query.margin.as_secs(),
        };
        let reply = self
            .runtime
            .block_on(self.client.scope(request))
            .map_err(refused)?
            .into_inner();
        let report: scope::Scope = serde_json::from_str(&reply.report_json)
            .context("the collector sent a malformed scope report")?;
        let evidence = reply
            .evidence
            .into_iter()
            .map(record)
            .collect::<Result<_>>()?;
        Ok((report, evidence))
    }
}
