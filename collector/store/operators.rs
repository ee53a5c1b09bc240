//! Operators (people who query the collector remotely) and revocation of operators and agents.

use bannin::time::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::StoreError;

/// Whether a principal may still act, as the store says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Active,
    Revoked,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct OperatorRow {
    pub name: String,
    pub created: Timestamp,
    pub status: String,
}

/// Records a new operator; a name is issued once (revoked names stay taken, so an old certificate
/// can never come back to life under a new grant).
pub fn add_operator(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO operators (name, created_ts) VALUES (?1, ?2)",
        params![name, Timestamp::now().as_nanos()],
    )?;
    if inserted == 0 {
        return Err(StoreError::OperatorExists {
            name: name.to_string(),
        });
    }
    Ok(())
}

pub fn operator_standing(conn: &Connection, name: &str) -> Result<Standing, StoreError> {
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM operators WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match status.as_deref() {
        Some("active") => Standing::Active,
        Some(_) => Standing::Revoked,
        None => Standing::Unknown,
    })
}

pub fn revoke_operator(conn: &Connection, name: &str) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE operators SET status = 'revoked', revoked_ts = ?1 WHERE name = ?2",
        params![Timestamp::now().as_nanos(), name],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownOperator {
            name: name.to_string(),
        });
    }
    Ok(())
}

pub fn operators(conn: &Connection) -> Result<Vec<OperatorRow>, StoreError> {
    let mut stmt = conn.prepare("SELECT name, created_ts, status FROM operators ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(OperatorRow {
            name: r.get(0)?,
            created: Timestamp::from_nanos(r.get(1)?),
            status: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks an agent revoked: its batches are refused from then on (a running collector re-reads
/// agents' standing every second).
pub fn revoke_agent(conn: &Connection, agent_id: &str) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE agents SET status = 'revoked' WHERE id = ?1",
        [agent_id],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownAgent {
            agent_id: agent_id.to_string(),
        });
    }
    Ok(())
}
