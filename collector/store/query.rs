//! Read-side queries: events and agents.

use bannin::event::Record;
use bannin::proto::decode_event;
use bannin::time::Timestamp;
use rusqlite::Connection;
use rusqlite::types::Value;
use serde::Serialize;

use super::StoreError;

/// Which events to return. Every field narrows the result; `None` means no constraint.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    /// An event kind or a glob over kinds (`file.*`).
    pub kind: Option<String>,
    /// The agent's name or its machine's host name.
    pub host: Option<String>,
    pub agent: Option<String>,
    /// A glob over file paths (`*` crosses `/`).
    pub path: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// The newest `limit` matching events, returned oldest first.
    pub limit: usize,
}

pub fn events(conn: &Connection, filter: &EventFilter) -> Result<Vec<Record>, StoreError> {
    let mut sql = String::from(
        "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no WHERE 1=1",
    );
    let mut args: Vec<Value> = Vec::new();
    if let Some(kind) = &filter.kind {
        sql.push_str(" AND e.kind GLOB ?");
        args.push(Value::Text(kind.clone()));
    }
    if let Some(host) = &filter.host {
        sql.push_str(" AND (a.name = ? OR a.host = ?)");
        args.push(Value::Text(host.clone()));
        args.push(Value::Text(host.clone()));
    }
    if let Some(agent) = &filter.agent {
        sql.push_str(" AND a.id = ?");
        args.push(Value::Text(agent.clone()));
    }
    if let Some(path) = &filter.path {
        sql.push_str(" AND e.path GLOB ?");
        args.push(Value::Text(path.clone()));
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND e.ts >= ?");
        args.push(Value::Integer(since.as_nanos()));
    }
    if let Some(until) = filter.until {
        sql.push_str(" AND e.ts <= ?");
        args.push(Value::Integer(until.as_nanos()));
    }
    sql.push_str(" ORDER BY e.ts DESC, e.agent_no DESC, e.seq DESC LIMIT ?");
    args.push(Value::Integer(
        i64::try_from(filter.limit).unwrap_or(i64::MAX),
    ));

    let mut records = decode_rows(conn, &sql, args)?;
    records.reverse();
    Ok(records)
}

/// Calls `each` with every stored event of `kind` (any when `None`) with `since <= ts < until`,
/// oldest first, decoding one row at a time: memory stays that of one event whatever the store
/// holds. Returns how many events were passed on. Rows that do not decode are skipped (logged).
pub fn for_each_event(
    conn: &Connection,
    kind: Option<&str>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    mut each: impl FnMut(Record),
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no
         WHERE (?1 IS NULL OR e.kind = ?1) AND e.ts >= ?2 AND e.ts < ?3
         ORDER BY e.ts, e.agent_no, e.seq",
    )?;
    let mut rows = stmt.query(rusqlite::params![
        kind,
        since.map_or(i64::MIN, Timestamp::as_nanos),
        until.map_or(i64::MAX, Timestamp::as_nanos),
    ])?;
    let mut passed = 0;
    while let Some(row) = rows.next()? {
        let agent_id: String = row.get(0)?;
        let payload = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        match decode_event(payload) {
            Ok(event) => {
                passed += 1;
                each(Record { agent_id, event });
            }
            Err(error) => tracing::warn!(%agent_id, %error, "stored event does not decode"),
        }
    }
    Ok(passed)
}

/// Runs a query selecting `(agent id, payload)` rows and decodes each event.
pub(super) fn decode_rows(
    conn: &Connection,
    sql: &str,
    args: Vec<Value>,
) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut records = Vec::new();
    for row in rows {
        let (agent_id, payload) = row?;
        match decode_event(&payload) {
            Ok(event) => records.push(Record { agent_id, event }),
            // A stored payload that no longer decodes is verify's business; a query skips it.
            Err(error) => tracing::warn!(%agent_id, %error, "stored event does not decode"),
        }
    }
    Ok(records)
}

/// An agent as `bannin-collector agents` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub agent_id: String,
    pub name: String,
    pub host: String,
    /// "active", "silent" (nothing for `silent_after`), "never_seen" or "revoked".
    pub status: String,
    pub enrolled: Timestamp,
    pub last_seen: Option<Timestamp>,
    pub last_seq: u64,
    pub spool_events: u64,
    pub spool_bytes: u64,
}

pub fn agents(
    conn: &Connection,
    now: Timestamp,
    silent_after: std::time::Duration,
) -> Result<Vec<AgentRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, name, host, status, enrolled_ts, last_seen_ts, last_seq, spool_events,
                spool_bytes
         FROM agents ORDER BY name, id",
    )?;
    let rows = stmt.query_map([], |r| {
        let status: String = r.get(3)?;
        let last_seen: Option<i64> = r.get(5)?;
        let last_seen = last_seen.map(Timestamp::from_nanos);
        let status = match (status.as_str(), last_seen) {
            ("active", None) => "never_seen".to_string(),
            ("active", Some(seen)) if seen < now.saturating_sub(silent_after) => {
                "silent".to_string()
            }
            _ => status,
        };
        Ok(AgentRow {
            agent_id: r.get(0)?,
            name: r.get(1)?,
            host: r.get(2)?,
            status,
            enrolled: Timestamp::from_nanos(r.get(4)?),
            last_seen,
            last_seq: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
            spool_events: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
            spool_bytes: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An agent's committed head: what a checkpoint vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub agent_id: String,
    pub name: String,
    pub seq: u64,
    pub hash: Vec<u8>,
}

/// Every enrolled agent's committed head (revoked agents too: their history is still evidence).
pub fn heads(conn: &Connection) -> Result<Vec<Head>, StoreError> {
    let mut stmt = conn.prepare("SELECT id, name, last_seq, head_hash FROM agents ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(Head {
            agent_id: r.get(0)?,
            name: r.get(1)?,
            seq: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            hash: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
