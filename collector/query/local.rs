//! The answers to the queries that combine several reads: alerts with their deliveries, a host's
//! timeline and a scope. The CLI's `--data-dir` path and the Query service both call these, so a
//! remote answer is the local one; the store supplies typed rows, `report/` the computations.

use std::collections::BTreeSet;

use bannin::event::Record;
use bannin::time::Timestamp;
use rusqlite::Connection;
use serde::Serialize;

use crate::alert::Alert;
use crate::hooks::{self, DeliveryStatus, HooksError};
use crate::report::ANCESTRY_LOOKBACK;
use crate::report::scope::{self, Scope, ScopeBuilder};
use crate::report::timeline::{self, Entry, Timeline};
use crate::store::alerts::{self, AlertFilter};
use crate::store::investigate::{self, HostAgent, Range};
use crate::store::pg::read as pg;
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Deliveries(#[from] HooksError),
    #[error("no agent is named or runs on host {host}")]
    UnknownHost { host: String },
    #[error("no alert {id} is stored")]
    UnknownAlert { id: String },
}

impl ReadError {
    /// Whether the request named something this store does not hold (the caller's to fix), rather
    /// than the store failing.
    pub fn is_unknown(&self) -> bool {
        matches!(
            self,
            ReadError::UnknownHost { .. } | ReadError::UnknownAlert { .. }
        )
    }
}

/// The reads the combined answers rest on, from either store: the SQLite connection or a
/// PostgreSQL reader.
pub trait Reads {
    fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError>;
    fn alert(&self, id: &str) -> Result<Option<Alert>, StoreError>;
    fn delivery_status(&self, alert_id: &str) -> Result<Vec<DeliveryStatus>, ReadError>;
    fn agents_for_host(&self, host: &str) -> Result<Vec<HostAgent>, StoreError>;
    fn all_agents(&self) -> Result<Vec<HostAgent>, StoreError>;
    fn records(&self, range: &Range<'_>) -> Result<Vec<Record>, StoreError>;
}

impl Reads for Connection {
    fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        alerts::query(self, filter)
    }
    fn alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        store::alerts::get(self, id)
    }
    fn delivery_status(&self, alert_id: &str) -> Result<Vec<DeliveryStatus>, ReadError> {
        Ok(hooks::delivery_status(self, alert_id)?)
    }
    fn agents_for_host(&self, host: &str) -> Result<Vec<HostAgent>, StoreError> {
        investigate::agents_for_host(self, host)
    }
    fn all_agents(&self) -> Result<Vec<HostAgent>, StoreError> {
        investigate::all_agents(self)
    }
    fn records(&self, range: &Range<'_>) -> Result<Vec<Record>, StoreError> {
        investigate::records(self, range)
    }
}

impl Reads for pg::Reader {
    fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        self.block_on(pg::alerts(self.client(), filter))
    }
    fn alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        self.block_on(pg::alert(self.client(), id))
    }
    fn delivery_status(&self, alert_id: &str) -> Result<Vec<DeliveryStatus>, ReadError> {
        Ok(self.block_on(pg::delivery_status(self.client(), alert_id))?)
    }
    fn agents_for_host(&self, host: &str) -> Result<Vec<HostAgent>, StoreError> {
        self.block_on(pg::agents_for_host(self.client(), host))
    }
    fn all_agents(&self) -> Result<Vec<HostAgent>, StoreError> {
        self.block_on(pg::all_agents(self.client()))
    }
    fn records(&self, range: &Range<'_>) -> Result<Vec<Record>, StoreError> {
        self.block_on(pg::records(self.client(), range))
    }
}

/// A read session on either store.
pub enum ReadConn {
    Sqlite(Connection),
    Postgres(Box<pg::Reader>),
}

impl ReadConn {
    /// Opens a read session where the store is.
    pub fn open(at: &store::StoreAt) -> Result<ReadConn, StoreError> {
        Ok(match at {
            store::StoreAt::Sqlite(dir) => ReadConn::Sqlite(store::open_reader(dir)?),
            store::StoreAt::Postgres(target) => {
                ReadConn::Postgres(Box::new(pg::Reader::open(target)?))
            }
        })
    }

    pub fn events(&self, filter: &store::query::EventFilter) -> Result<Vec<Record>, StoreError> {
        match self {
            ReadConn::Sqlite(conn) => store::query::events(conn, filter),
            ReadConn::Postgres(reader) => reader.events(filter),
        }
    }

    pub fn agents(
        &self,
        now: Timestamp,
        silent_after: std::time::Duration,
    ) -> Result<Vec<store::query::AgentRow>, StoreError> {
        match self {
            ReadConn::Sqlite(conn) => store::query::agents(conn, now, silent_after),
            ReadConn::Postgres(reader) => reader.agents(now, silent_after),
        }
    }

    pub fn operator_standing(&self, name: &str) -> Result<store::operators::Standing, StoreError> {
        match self {
            ReadConn::Sqlite(conn) => store::operators::operator_standing(conn, name),
            ReadConn::Postgres(reader) => {
                reader.block_on(store::pg::operator_standing(reader.client(), name))
            }
        }
    }

    /// The rows the console's health, proofs and searches rest on (`store::console`).
    pub fn console_rows(&self) -> &dyn store::console::ConsoleRows {
        match self {
            ReadConn::Sqlite(conn) => conn,
            ReadConn::Postgres(reader) => &**reader,
        }
    }

    fn reads(&self) -> &dyn Reads {
        match self {
            ReadConn::Sqlite(conn) => conn,
            ReadConn::Postgres(reader) => &**reader,
        }
    }
}

impl Reads for ReadConn {
    fn alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        self.reads().alerts(filter)
    }
    fn alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        self.reads().alert(id)
    }
    fn delivery_status(&self, alert_id: &str) -> Result<Vec<DeliveryStatus>, ReadError> {
        self.reads().delivery_status(alert_id)
    }
    fn agents_for_host(&self, host: &str) -> Result<Vec<HostAgent>, StoreError> {
        self.reads().agents_for_host(host)
    }
    fn all_agents(&self) -> Result<Vec<HostAgent>, StoreError> {
        self.reads().all_agents()
    }
    fn records(&self, range: &Range<'_>) -> Result<Vec<Record>, StoreError> {
        self.reads().records(range)
    }
}

/// An alert with the state of its deliveries, as `alerts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    #[serde(flatten)]
    pub alert: Alert,
    pub deliveries: Vec<DeliveryStatus>,
}

/// Stored alerts, oldest first, each with the state of its delivery to every sink (none where
/// the store has no outbox yet).
pub fn alerts(conn: &impl Reads, filter: &AlertFilter) -> Result<Vec<AlertRow>, ReadError> {
    conn.alerts(filter)?
        .into_iter()
        .map(|alert| {
            let deliveries = conn.delivery_status(&alert.id)?;
            Ok(AlertRow { alert, deliveries })
        })
        .collect()
}

/// The agents whose name or machine host name is `host`; none is an error.
fn agents_for_host(conn: &impl Reads, host: &str) -> Result<Vec<HostAgent>, ReadError> {
    let agents = conn.agents_for_host(host)?;
    if agents.is_empty() {
        return Err(ReadError::UnknownHost {
            host: host.to_string(),
        });
    }
    Ok(agents)
}

/// Everything the host did in the window, each process event with its lineage.
pub fn timeline(conn: &impl Reads, query: &timeline::Query<'_>) -> Result<Vec<Entry>, ReadError> {
    let agents = agents_for_host(conn, query.host)?;
    let nos: Vec<i64> = agents.iter().map(|a| a.no).collect();
    let mut timeline = Timeline::default();
    let ancestors = conn.records(&Range {
        agents: Some(&nos),
        since: query.since.saturating_sub(ANCESTRY_LOOKBACK),
        until: just_before(query.since),
        kinds: &["process.start"],
        limit: None,
    })?;
    for record in &ancestors {
        timeline.ancestor(record);
    }
    let records = conn.records(&Range {
        agents: Some(&nos),
        since: query.since,
        until: query.until,
        kinds: &[],
        limit: Some(query.limit),
    })?;
    Ok(records
        .into_iter()
        .map(|record| timeline.entry(record))
        .collect())
}

/// The scope of the window, or of an alert's window and hosts, and the events it rests on.
pub fn scope(conn: &impl Reads, query: &scope::Query) -> Result<(Scope, Vec<Record>), ReadError> {
    let agents = conn.all_agents()?;
    let (since, until, hosts) = match &query.alert {
        Some(id) => alert_window(conn, id, query.margin, &agents)?,
        None => (query.since, query.until, query.hosts.clone()),
    };
    let mut wanted: Option<BTreeSet<String>> = None;
    for host in &hosts {
        let found = agents_for_host(conn, host)?;
        wanted
            .get_or_insert_with(BTreeSet::new)
            .extend(found.into_iter().map(|a| a.name));
    }
    let records = conn.records(&Range {
        agents: None,
        since,
        until,
        kinds: scope::KINDS,
        limit: None,
    })?;
    // Ancestors started shortly before the window, on hosts whose processes can be in scope.
    let acting: BTreeSet<&str> = records
        .iter()
        .filter(|r| scope::involves_process(r))
        .map(|r| r.agent_id.as_str())
        .collect();
    let acting_nos: Vec<i64> = agents
        .iter()
        .filter(|a| acting.contains(a.id.as_str()))
        .map(|a| a.no)
        .collect();
    let ancestors = conn.records(&Range {
        agents: Some(&acting_nos),
        since: since.saturating_sub(scope::LOOKBACK),
        until: just_before(since),
        kinds: &["process.start"],
        limit: None,
    })?;
    let mut builder = ScopeBuilder::new(since, until, query.alert.clone(), &agents, wanted);
    for record in &ancestors {
        builder.ancestor(record);
    }
    for record in records {
        builder.observe(record);
    }
    Ok(builder.finish())
}

fn just_before(ts: Timestamp) -> Timestamp {
    Timestamp::from_nanos(ts.as_nanos().saturating_sub(1))
}

/// The window and hosts an alert stands for: its times ± `margin`, its host and the hosts of its
/// evidence.
fn alert_window(
    conn: &impl Reads,
    id: &str,
    margin: std::time::Duration,
    agents: &[HostAgent],
) -> Result<(Timestamp, Timestamp, Vec<String>), ReadError> {
    let alert = conn
        .alert(id)?
        .ok_or_else(|| ReadError::UnknownAlert { id: id.to_string() })?;
    let (first, last) = scope::alert_span(&alert);
    let mut hosts: BTreeSet<String> = BTreeSet::new();
    hosts.insert(alert.host.clone());
    for item in &alert.evidence {
        if let Some(found) = agents.iter().find(|a| a.id == item.agent_id) {
            hosts.insert(found.name.clone());
        }
    }
    Ok((
        first.saturating_sub(margin),
        last.saturating_add(margin),
        hosts.into_iter().collect(),
    ))
}

#[cfg(test)]
mod tests {
    use bannin::time::Timestamp;

    use super::*;
    use crate::alert::Severity;

    #[test]
    fn an_unreadable_outbox_fails_the_alerts_instead_of_showing_no_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(dir.path()).unwrap();
        let alert = Alert {
            id: "al-1".into(),
            rule: "r".into(),
            severity: Severity::High,
            ts: Timestamp::from_nanos(1),
            host: "h".into(),
            summary: "s".into(),
            evidence: Vec::new(),
            count: 1,
            fields: serde_json::Map::new(),
        };
        store::alerts::insert(&conn, &alert).unwrap();
        let filter = AlertFilter {
            limit: 10,
            ..AlertFilter::default()
        };
        // No outbox yet: the alert, with no deliveries.
        let rows = alerts(&conn, &filter).unwrap();
        assert_eq!((rows.len(), rows[0].deliveries.len()), (1, 0));
        // An outbox that cannot be read is an error, not an alert nobody is told about.
        conn.execute_batch("CREATE TABLE hook_outbox (alert_id TEXT)")
            .unwrap();
        let error = alerts(&conn, &filter).unwrap_err();
        assert!(matches!(error, ReadError::Deliveries(_)), "{error}");
    }

    #[test]
    fn scoping_an_alert_that_is_not_stored_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(dir.path()).unwrap();
        let query = scope::Query {
            since: Timestamp::from_nanos(0),
            until: Timestamp::from_nanos(0),
            hosts: Vec::new(),
            alert: Some("al-9".into()),
            margin: std::time::Duration::from_secs(60),
        };
        let error = scope(&conn, &query).unwrap_err();
        assert_eq!(error.to_string(), "no alert al-9 is stored");
        conn.execute(
            "INSERT INTO alerts (id, rule, severity, ts, updated_ts, host, count, body)
             VALUES ('al-9', 'r', 'high', 0, 0, 'h', 1, 'not json')",
            [],
        )
        .unwrap();
        let error = scope(&conn, &query).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("stored alert al-9 does not parse"),
            "{error}"
        );
    }
}
