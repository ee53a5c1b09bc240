//! Reads of a PostgreSQL store for the query commands: the same rows, in the same order, as the
//! SQLite store's `query.rs`, `investigate.rs` and `alerts.rs` return.
//!
//! The commands are synchronous, so [`Reader`] holds a runtime of its own and one session.

use bannin::event::Record;
use bannin::proto::decode_event;
use bannin::time::Timestamp;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::Target;
use crate::alert::Alert;
use crate::hooks::{DeliveryState, DeliveryStatus, SinkId};
use crate::store::StoreError;
use crate::store::investigate::{DeliveryCount, HostAgent, Range};
use crate::store::query::{AgentRow, EventFilter};

/// One session to a PostgreSQL store, for synchronous callers: the query commands (a runtime and
/// a connection of their own), and the console's pages (a session from the console's pool, run on
/// the serving runtime from a blocking thread).
pub struct Reader {
    runtime: Runner,
    client: Session,
}

enum Runner {
    Own(tokio::runtime::Runtime),
    Shared(tokio::runtime::Handle),
}

enum Session {
    Own(Client),
    Pooled(deadpool_postgres::Object),
}

impl Reader {
    /// Connects to a store that exists, for reading.
    pub fn open(target: &Target) -> Result<Reader, StoreError> {
        Self::connect(target, false)
    }

    /// Connects, creating the schema if the store is new, for a command that writes.
    pub fn open_writer(target: &Target) -> Result<Reader, StoreError> {
        Self::connect(target, true)
    }

    fn connect(target: &Target, create: bool) -> Result<Reader, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| StoreError::Connect {
                url: target.shown().to_string(),
                reason: format!("no runtime: {error}"),
            })?;
        let client = if create {
            runtime.block_on(super::open(target))?
        } else {
            runtime.block_on(super::open_existing(target))?
        };
        Ok(Reader {
            runtime: Runner::Own(runtime),
            client: Session::Own(client),
        })
    }

    /// A session taken from `pool`, for a blocking thread of the runtime the pool's connections
    /// run on (`tokio::task::spawn_blocking`); it goes back to the pool when the reader is dropped.
    pub fn pooled(pool: &deadpool_postgres::Pool) -> Result<Reader, StoreError> {
        let handle = tokio::runtime::Handle::current();
        let client = handle.block_on(pool.get())?;
        Ok(Reader {
            runtime: Runner::Shared(handle),
            client: Session::Pooled(client),
        })
    }

    /// Runs `work` to completion on this reader's runtime.
    pub fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        match &self.runtime {
            Runner::Own(runtime) => runtime.block_on(work),
            Runner::Shared(handle) => handle.block_on(work),
        }
    }

    pub fn client(&self) -> &Client {
        match &self.client {
            Session::Own(client) => client,
            Session::Pooled(client) => client,
        }
    }

    /// Runs `work`, which needs the session to itself (a transaction), to completion.
    pub fn block_on_mut<'a, F: std::future::Future>(
        &'a mut self,
        work: impl FnOnce(&'a mut Client) -> F,
    ) -> F::Output {
        let client: &mut Client = match &mut self.client {
            Session::Own(client) => client,
            Session::Pooled(client) => client,
        };
        let future = work(client);
        match &self.runtime {
            Runner::Own(runtime) => runtime.block_on(future),
            Runner::Shared(handle) => handle.block_on(future),
        }
    }

    pub fn events(&self, filter: &EventFilter) -> Result<Vec<Record>, StoreError> {
        self.block_on(events(self.client(), filter))
    }

    pub fn agents(
        &self,
        now: Timestamp,
        silent_after: std::time::Duration,
    ) -> Result<Vec<AgentRow>, StoreError> {
        self.block_on(agents(self.client(), now, silent_after))
    }
}

/// A SQLite `GLOB` pattern as a PostgreSQL regular expression: `*` any run of characters (`/`
/// too), `?` one character, `[…]` a class (`[^…]` or `[!…]` negated), everything else literal and
/// case-sensitive.
pub fn glob_regex(glob: &str) -> String {
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            '[' => {
                // A class runs to the next `]` (a `]` first in it is literal); unclosed, `[` is
                // literal, as in SQLite.
                let rest: String = chars.clone().collect();
                let mut body = String::new();
                let mut closed = None;
                for (i, d) in rest.char_indices() {
                    if d == ']' && !(body.is_empty() || body == "^" || body == "!") {
                        closed = Some(i);
                        break;
                    }
                    body.push(d);
                }
                match closed {
                    Some(end) => {
                        out.push('[');
                        let mut inner = body.as_str();
                        if let Some(stripped) = inner.strip_prefix(['^', '!']) {
                            out.push('^');
                            inner = stripped;
                        }
                        for d in inner.chars() {
                            if d == '\\' || d == '[' {
                                out.push('\\');
                            }
                            out.push(d);
                        }
                        out.push(']');
                        for _ in 0..rest[..=end].chars().count() {
                            chars.next();
                        }
                    }
                    None => out.push_str("\\["),
                }
            }
            c if c.is_ascii_alphanumeric() || !c.is_ascii() => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out.push('$');
    out
}

fn records_from(rows: &[tokio_postgres::Row]) -> Vec<Record> {
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let agent_id: String = row.get(0);
        match decode_event(row.get::<_, &[u8]>(1)) {
            Ok(event) => records.push(Record { agent_id, event }),
            Err(error) => tracing::warn!(%agent_id, %error, "stored event does not decode"),
        }
    }
    records
}

/// SQL parameters built up with the text that refers to them.
#[derive(Default)]
pub(super) struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    /// Adds `value`, returning its placeholder.
    pub(super) fn add(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(value));
        format!("${}", self.0.len())
    }

    pub(super) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

pub async fn events(client: &Client, filter: &EventFilter) -> Result<Vec<Record>, StoreError> {
    let mut sql = String::from(
        "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no WHERE true",
    );
    let mut p = Params::default();
    if let Some(kind) = &filter.kind {
        sql.push_str(&format!(" AND e.kind ~ {}", p.add(glob_regex(kind))));
    }
    if let Some(host) = &filter.host {
        let h = p.add(host.clone());
        sql.push_str(&format!(" AND (a.name = {h} OR a.host = {h})"));
    }
    if let Some(agent) = &filter.agent {
        sql.push_str(&format!(" AND a.id = {}", p.add(agent.clone())));
    }
    if let Some(path) = &filter.path {
        sql.push_str(&format!(" AND e.path ~ {}", p.add(glob_regex(path))));
    }
    if let Some(since) = filter.since {
        sql.push_str(&format!(" AND e.ts >= {}", p.add(since.as_nanos())));
    }
    if let Some(until) = filter.until {
        sql.push_str(&format!(" AND e.ts <= {}", p.add(until.as_nanos())));
    }
    sql.push_str(&format!(
        " ORDER BY e.ts DESC, e.agent_no DESC, e.seq DESC LIMIT {}",
        p.add(i64::try_from(filter.limit).unwrap_or(i64::MAX))
    ));
    let rows = client.query(&sql, &p.refs()).await?;
    let mut records = records_from(&rows);
    records.reverse();
    Ok(records)
}

pub async fn agents(
    client: &Client,
    now: Timestamp,
    silent_after: std::time::Duration,
) -> Result<Vec<AgentRow>, StoreError> {
    let rows = client
        .query(
            "SELECT id, name, host, status, enrolled_ts, last_seen_ts, last_seq, spool_events,
                    spool_bytes
             FROM agents ORDER BY name COLLATE \"C\", id COLLATE \"C\"",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let status: String = r.get(3);
            let last_seen = r.get::<_, Option<i64>>(5).map(Timestamp::from_nanos);
            let status = match (status.as_str(), last_seen) {
                ("active", None) => "never_seen".to_string(),
                ("active", Some(seen)) if seen < now.saturating_sub(silent_after) => {
                    "silent".to_string()
                }
                _ => status,
            };
            AgentRow {
                agent_id: r.get(0),
                name: r.get(1),
                host: r.get(2),
                status,
                enrolled: Timestamp::from_nanos(r.get(4)),
                last_seen,
                last_seq: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
                spool_events: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
                spool_bytes: u64::try_from(r.get::<_, i64>(8)).unwrap_or(0),
            }
        })
        .collect())
}

pub async fn agents_for_host(client: &Client, host: &str) -> Result<Vec<HostAgent>, StoreError> {
    let rows = client
        .query(
            "SELECT no, id, name, host FROM agents WHERE name = $1 OR host = $1",
            &[&host],
        )
        .await?;
    Ok(rows.iter().map(host_agent).collect())
}

fn host_agent(r: &tokio_postgres::Row) -> HostAgent {
    HostAgent {
        no: r.get(0),
        id: r.get(1),
        name: r.get(2),
        host: r.get(3),
    }
}

pub async fn all_agents(client: &Client) -> Result<Vec<HostAgent>, StoreError> {
    let rows = client
        .query("SELECT no, id, name, host FROM agents ORDER BY no", &[])
        .await?;
    Ok(rows.iter().map(host_agent).collect())
}

pub async fn records(client: &Client, range: &Range<'_>) -> Result<Vec<Record>, StoreError> {
    let mut p = Params::default();
    let mut sql = format!(
        "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no
         WHERE e.ts >= {} AND e.ts <= {}",
        p.add(range.since.as_nanos()),
        p.add(range.until.as_nanos())
    );
    if let Some(agents) = range.agents {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(&format!(
            " AND e.agent_no = ANY({})",
            p.add(agents.to_vec())
        ));
    }
    if !range.kinds.is_empty() {
        let kinds: Vec<String> = range.kinds.iter().map(|k| (*k).to_string()).collect();
        sql.push_str(&format!(" AND e.kind = ANY({})", p.add(kinds)));
    }
    sql.push_str(" ORDER BY e.ts, e.agent_no, e.seq");
    if let Some(limit) = range.limit {
        sql.push_str(&format!(
            " LIMIT {}",
            p.add(i64::try_from(limit).unwrap_or(i64::MAX))
        ));
    }
    let rows = client.query(&sql, &p.refs()).await?;
    Ok(records_from(&rows))
}

pub async fn alerts(
    client: &Client,
    filter: &crate::store::alerts::AlertFilter,
) -> Result<Vec<Alert>, StoreError> {
    let mut p = Params::default();
    let mut sql = String::from("SELECT body FROM alerts WHERE true");
    if let Some(rule) = &filter.rule {
        sql.push_str(&format!(" AND rule ~ {}", p.add(glob_regex(rule))));
    }
    if let Some(host) = &filter.host {
        sql.push_str(&format!(" AND host = {}", p.add(host.clone())));
    }
    if let Some(since) = filter.since {
        sql.push_str(&format!(" AND ts >= {}", p.add(since.as_nanos())));
    }
    sql.push_str(&format!(
        " ORDER BY ts DESC LIMIT {}",
        p.add(i64::try_from(filter.limit).unwrap_or(i64::MAX))
    ));
    let rows = client.query(&sql, &p.refs()).await?;
    let mut alerts = Vec::new();
    for row in rows {
        match serde_json::from_str::<Alert>(row.get(0)) {
            Ok(alert) => alerts.push(alert),
            Err(error) => tracing::warn!(%error, "stored alert does not parse"),
        }
    }
    alerts.reverse();
    Ok(alerts)
}

pub async fn alert(client: &Client, id: &str) -> Result<Option<Alert>, StoreError> {
    let row = client
        .query_opt("SELECT body FROM alerts WHERE id = $1", &[&id])
        .await?;
    row.map(|row| {
        serde_json::from_str(row.get(0)).map_err(|source| StoreError::BadAlert {
            id: id.to_string(),
            source,
        })
    })
    .transpose()
}

pub async fn delivery_status(
    client: &Client,
    alert_id: &str,
) -> Result<Vec<DeliveryStatus>, StoreError> {
    let rows = client
        .query(
            "SELECT sink, state, attempts, failures, last_error, delivered_ns
             FROM hook_outbox WHERE alert_id = $1 ORDER BY sink COLLATE \"C\"",
            &[&alert_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let failures: i64 = row.get(3);
            DeliveryStatus {
                sink: SinkId(row.get(0)),
                state: match row.get::<_, &str>(1) {
                    "delivered" => DeliveryState::Delivered,
                    "failed" => DeliveryState::Failed,
                    _ if failures > 0 => DeliveryState::FailedRetrying,
                    _ => DeliveryState::Pending,
                },
                attempts: u32::try_from(row.get::<_, i64>(2)).unwrap_or(u32::MAX),
                last_error: row.get(4),
                delivered_ts: row.get::<_, Option<i64>>(5).map(Timestamp::from_nanos),
            }
        })
        .collect())
}

/// As the SQLite store's `investigate::delivery_counts`: alerts per sink and delivery state, with
/// their attempts and failures.
pub async fn delivery_counts(client: &Client) -> Result<Vec<DeliveryCount>, StoreError> {
    let rows = client
        .query(
            "SELECT sink, state, count(*), COALESCE(sum(attempts), 0)::bigint,
                    COALESCE(sum(failures), 0)::bigint
             FROM hook_outbox GROUP BY sink, state ORDER BY sink COLLATE \"C\", state COLLATE \"C\"",
            &[],
        )
        .await?;
    let count =
        |row: &tokio_postgres::Row, i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(rows
        .iter()
        .map(|row| DeliveryCount {
            sink: row.get(0),
            state: row.get(1),
            alerts: count(row, 2),
            attempts: count(row, 3),
            failures: count(row, 4),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::glob_regex;

    #[test]
    fn globs_become_anchored_regular_expressions() {
        assert_eq!(glob_regex("file.*"), "^file\\..*$");
        assert_eq!(glob_regex("/srv/*.csv"), "^\\/srv\\/.*\\.csv$");
        assert_eq!(glob_regex("a?c"), "^a.c$");
        assert_eq!(glob_regex("[ab]x"), "^[ab]x$");
        assert_eq!(glob_regex("[!ab]x"), "^[^ab]x$");
        assert_eq!(glob_regex("[]]"), "^[]]$");
        assert_eq!(glob_regex("[abc"), "^\\[abc$");
        assert_eq!(glob_regex("a+b(c)"), "^a\\+b\\(c\\)$");
    }
}
