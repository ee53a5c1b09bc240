//! Stored alerts: what detection concluded, with links to the evidence events.

use bannin::time::Timestamp;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use crate::alert::{Alert, EvidenceRef};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    ts INTEGER NOT NULL,
    updated_ts INTEGER NOT NULL,
    host TEXT NOT NULL,
    count INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
";

pub fn insert(conn: &Connection, alert: &Alert) -> Result<(), StoreError> {
    let body = serde_json::to_string(alert).map_err(|source| StoreError::EncodeAlert {
        id: alert.id.clone(),
        source,
    })?;
    conn.execute(
        "INSERT OR REPLACE INTO alerts (id, rule, severity, ts, updated_ts, host, count, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            alert.id,
            alert.rule,
            alert.severity.as_str(),
            alert.ts.as_nanos(),
            Timestamp::now().as_nanos(),
            alert.host,
            i64::try_from(alert.count).unwrap_or(i64::MAX),
            body
        ],
    )?;
    Ok(())
}

/// Records that a de-duplicated alert happened again, with the new evidence.
pub fn repeat(
    conn: &Connection,
    id: &str,
    count: u64,
    evidence: &[EvidenceRef],
    fields: &serde_json::Map<String, serde_json::Value>,
    summary: Option<&str>,
) -> Result<Option<Alert>, StoreError> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM alerts WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    let Some(body) = body else {
        return Ok(None);
    };
    // A body that no longer parses cannot be counted again; refusing the whole transaction would
    // hold detection back for good, so the repeat is logged and left out.
    let mut alert = match serde_json::from_str::<Alert>(&body) {
        Ok(alert) => alert,
        Err(error) => {
            tracing::warn!(alert_id = %id, %error, "stored alert does not parse; its repeat is not recorded");
            return Ok(None);
        }
    };
    alert.repeat(count, evidence, fields, summary);
    insert(conn, &alert)?;
    Ok(Some(alert))
}

#[derive(Debug, Default, Clone)]
pub struct AlertFilter {
    pub rule: Option<String>,
    pub since: Option<Timestamp>,
    pub host: Option<String>,
    pub limit: usize,
}

pub fn query(conn: &Connection, filter: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
    let mut sql = String::from("SELECT body FROM alerts WHERE 1=1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(rule) = &filter.rule {
        sql.push_str(" AND rule GLOB ?");
        args.push(Value::Text(rule.clone()));
    }
    if let Some(host) = &filter.host {
        sql.push_str(" AND host = ?");
        args.push(Value::Text(host.clone()));
    }
    if let Some(since) = filter.since {
        sql.push_str(" AND ts >= ?");
        args.push(Value::Integer(since.as_nanos()));
    }
    sql.push_str(" ORDER BY ts DESC LIMIT ?");
    args.push(Value::Integer(
        i64::try_from(filter.limit).unwrap_or(i64::MAX),
    ));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
    let mut alerts = Vec::new();
    for body in rows {
        let body = body?;
        match serde_json::from_str::<Alert>(&body) {
            Ok(alert) => alerts.push(alert),
            Err(error) => tracing::warn!(%error, "stored alert does not parse"),
        }
    }
    alerts.reverse();
    Ok(alerts)
}

/// The stored alert `id`, if there is one.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Alert>, StoreError> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM alerts WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    body.map(|body| {
        serde_json::from_str(&body).map_err(|source| StoreError::BadAlert {
            id: id.to_string(),
            source,
        })
    })
    .transpose()
}
