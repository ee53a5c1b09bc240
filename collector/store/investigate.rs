//! Read-side queries behind `timeline`, `scope` and the metrics: one host's events in time order,
//! every host's events of some kinds in a window, the enrolled agents, and delivery counts.

use bannin::event::Record;
use bannin::time::Timestamp;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

/// An agent a host name resolved to.
#[derive(Debug, Clone)]
pub struct HostAgent {
    pub no: i64,
    pub id: String,
    pub name: String,
    pub host: String,
}

/// The agents whose name or machine host name is `host`.
pub fn agents_for_host(conn: &Connection, host: &str) -> Result<Vec<HostAgent>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT no, id, name, host FROM agents WHERE name = ?1 OR host = ?1")?;
    let rows = stmt.query_map([host], |r| {
        Ok(HostAgent {
            no: r.get(0)?,
            id: r.get(1)?,
            name: r.get(2)?,
            host: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Which events to read: a time range, optionally some agents and some kinds.
#[derive(Debug, Default, Clone)]
pub struct Range<'a> {
    /// None: every agent.
    pub agents: Option<&'a [i64]>,
    pub since: Timestamp,
    pub until: Timestamp,
    /// Empty: every kind.
    pub kinds: &'a [&'a str],
    /// At most this many events (the oldest first); None: all.
    pub limit: Option<usize>,
}

/// Events in `range`, oldest first. The `(agent_no, ts)` index answers the per-host case and the
/// `(ts)` index the fleet-wide one.
pub fn records(conn: &Connection, range: &Range<'_>) -> Result<Vec<Record>, StoreError> {
    let mut sql = String::from(
        "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no
         WHERE e.ts >= ? AND e.ts <= ?",
    );
    let mut args: Vec<Value> = vec![
        Value::Integer(range.since.as_nanos()),
        Value::Integer(range.until.as_nanos()),
    ];
    if let Some(agents) = range.agents {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(" AND e.agent_no IN (");
        sql.push_str(&vec!["?"; agents.len()].join(","));
        sql.push(')');
        args.extend(agents.iter().map(|no| Value::Integer(*no)));
    }
    if !range.kinds.is_empty() {
        sql.push_str(" AND e.kind IN (");
        sql.push_str(&vec!["?"; range.kinds.len()].join(","));
        sql.push(')');
        args.extend(range.kinds.iter().map(|k| Value::Text((*k).to_string())));
    }
    sql.push_str(" ORDER BY e.ts, e.agent_no, e.seq");
    if let Some(limit) = range.limit {
        sql.push_str(" LIMIT ?");
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
    }
    super::query::decode_rows(conn, &sql, args)
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Every enrolled agent, for resolving ids to the names people use.
pub fn all_agents(conn: &Connection) -> Result<Vec<HostAgent>, StoreError> {
    let mut stmt = conn.prepare("SELECT no, id, name, host FROM agents ORDER BY no")?;
    let rows = stmt.query_map([], |r| {
        Ok(HostAgent {
            no: r.get(0)?,
            id: r.get(1)?,
            name: r.get(2)?,
            host: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Alert deliveries per sink and state, from the hooks' outbox (none while it does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryCount {
    pub sink: String,
    /// "pending", "delivered" or "failed".
    pub state: String,
    pub alerts: u64,
    pub attempts: u64,
    pub failures: u64,
}

pub fn delivery_counts(conn: &Connection) -> Result<Vec<DeliveryCount>, StoreError> {
    if !table_exists(conn, "hook_outbox")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT sink, state, COUNT(*), SUM(attempts), SUM(failures) FROM hook_outbox
         GROUP BY sink, state ORDER BY sink, state",
    )?;
    let rows = stmt.query_map([], |r| {
        let count = |i: usize| -> rusqlite::Result<u64> {
            Ok(u64::try_from(r.get::<_, Option<i64>>(i)?.unwrap_or(0)).unwrap_or(0))
        };
        Ok(DeliveryCount {
            sink: r.get(0)?,
            state: r.get(1)?,
            alerts: count(2)?,
            attempts: count(3)?,
            failures: count(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
