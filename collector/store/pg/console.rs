//! The web console on a PostgreSQL store: its sign-in links and sessions (kept as SHA-256 hashes
//! only, as in the SQLite store), and the row reads of [`ConsoleRows`] in PostgreSQL's SQL.
//!
//! Every collector sharing the store reads the same sessions table on every request, so a session
//! opened through one collector works on all of them, and signing out or revoking the operator
//! through any of them ends it everywhere at once.

use std::collections::HashMap;
use std::time::Duration;

use bannin::time::Timestamp;
use tokio_postgres::{Client, GenericClient};

use super::read::{Params, Reader, glob_regex};
use crate::store::console::{
    AgentKeyRow, BatchRow, ChainVisit, ConsoleRows, Cursor, HEALTH_KINDS, Refusal, ScanVisit,
    Search, link_refusal,
};
use crate::store::{StoreError, token_hash};

/// The console's tables and the health index, as `store/console.rs` makes them for SQLite.
fn schema() -> String {
    format!(
        "
CREATE TABLE IF NOT EXISTS console_links (
    hash bytea PRIMARY KEY,
    operator text NOT NULL,
    created_ts bigint NOT NULL,
    expires_ts bigint NOT NULL,
    used_ts bigint
);
CREATE TABLE IF NOT EXISTS console_sessions (
    hash bytea PRIMARY KEY,
    operator text NOT NULL,
    created_ts bigint NOT NULL,
    expires_ts bigint NOT NULL,
    ended_ts bigint
);
CREATE INDEX IF NOT EXISTS events_health ON events (agent_no, kind, ts) WHERE {HEALTH_KINDS};
"
    )
}

async fn console_tables_present(client: &impl GenericClient) -> Result<bool, StoreError> {
    Ok(client
        .query_one("SELECT to_regclass('console_sessions') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Adds the console's tables to a store that lacks them (collectors starting together take
/// turns); a store that has them takes no DDL.
pub async fn prepare(client: &mut Client) -> Result<(), StoreError> {
    if console_tables_present(client).await? {
        return Ok(());
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::SCHEMA_LOCK])
        .await?;
    if !console_tables_present(&tx).await? {
        tx.batch_execute(&schema()).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records a one-time sign-in link for `operator`, valid until `expires`.
pub async fn add_link(
    client: &impl GenericClient,
    token: &str,
    operator: &str,
    expires: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO console_links (hash, operator, created_ts, expires_ts)
             VALUES ($1, $2, $3, $4)",
            &[
                &token_hash(token),
                &operator,
                &Timestamp::now().as_nanos(),
                &expires.as_nanos(),
            ],
        )
        .await?;
    Ok(())
}

/// Spends the link `token` and opens the session `session` for its operator in one transaction,
/// ending the browser's `previous` session when it worked. The link's row is locked first, so two
/// collectors handed the same link at once open one session between them.
pub async fn sign_in(
    client: &mut Client,
    token: &str,
    session: &str,
    lifetime: Duration,
    previous: Option<&str>,
) -> Result<Result<String, Refusal>, StoreError> {
    let tx = client.transaction().await?;
    let hash = token_hash(token);
    let now = Timestamp::now();
    let row = tx
        .query_opt(
            "SELECT l.operator, l.expires_ts, l.used_ts, o.status FROM console_links l
             LEFT JOIN operators o ON o.name = l.operator WHERE l.hash = $1 FOR UPDATE OF l",
            &[&hash],
        )
        .await?
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, Option<i64>>(2),
                r.get::<_, Option<String>>(3),
            )
        });
    if let Some(refusal) = link_refusal(row.as_ref(), now) {
        if row.is_some() {
            // A link that was tried is spent whatever the outcome, as in the SQLite store.
            tx.execute(
                "UPDATE console_links SET used_ts = COALESCE(used_ts, $1) WHERE hash = $2",
                &[&now.as_nanos(), &hash],
            )
            .await?;
            tx.commit().await?;
        }
        return Ok(Err(refusal));
    }
    let Some((operator, ..)) = row else {
        return Ok(Err(Refusal::Unknown));
    };
    tx.execute(
        "UPDATE console_links SET used_ts = $1 WHERE hash = $2",
        &[&now.as_nanos(), &hash],
    )
    .await?;
    tx.execute(
        "INSERT INTO console_sessions (hash, operator, created_ts, expires_ts)
         VALUES ($1, $2, $3, $4)",
        &[
            &token_hash(session),
            &operator,
            &now.as_nanos(),
            &now.saturating_add(lifetime).as_nanos(),
        ],
    )
    .await?;
    if let Some(previous) = previous {
        end_session(&tx, previous).await?;
    }
    tx.commit().await?;
    Ok(Ok(operator))
}

/// The operator a session belongs to, if it is open, unexpired and its operator still active, as
/// the store says now: nothing about a session is cached by any collector.
pub async fn session_operator(
    client: &impl GenericClient,
    session: &str,
) -> Result<Option<String>, StoreError> {
    Ok(client
        .query_opt(
            "SELECT s.operator FROM console_sessions s JOIN operators o ON o.name = s.operator
             WHERE s.hash = $1 AND s.ended_ts IS NULL AND s.expires_ts > $2
               AND o.status = 'active'",
            &[&token_hash(session), &Timestamp::now().as_nanos()],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Ends a session (sign-out) for every collector. Ending one that is already over changes nothing.
pub async fn end_session(client: &impl GenericClient, session: &str) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE console_sessions SET ended_ts = $1 WHERE hash = $2 AND ended_ts IS NULL",
            &[&Timestamp::now().as_nanos(), &token_hash(session)],
        )
        .await?;
    Ok(())
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The largest number of rows one round trip of a search reads; the first asks for less, so a
/// page that fills at once reads little more than itself.
const SCAN_CHUNK: usize = 10_000;

impl ConsoleRows for Reader {
    fn health_agents(&self) -> Result<Vec<(i64, String, bool)>, StoreError> {
        let rows = self.block_on(self.client().query(
            "SELECT no, id, head_signature IS NOT NULL FROM agents ORDER BY no",
            &[],
        ))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    fn health_counts(&self, kind: &str) -> Result<HashMap<i64, u64>, StoreError> {
        let rows = self.block_on(self.client().query(
            &format!(
                "SELECT agent_no, COUNT(*) FROM events WHERE {HEALTH_KINDS} AND kind = $1
                 GROUP BY agent_no"
            ),
            &[&kind],
        ))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), unsigned(r.get(1))))
            .collect())
    }

    fn health_newest(
        &self,
        kind: &str,
        limit: u32,
    ) -> Result<HashMap<i64, Vec<Vec<u8>>>, StoreError> {
        let rows = self.block_on(self.client().query(
            &format!(
                "SELECT agent_no, payload FROM (
                     SELECT agent_no, payload, row_number() OVER (
                         PARTITION BY agent_no ORDER BY ts DESC) AS n
                     FROM events WHERE {HEALTH_KINDS} AND kind = $1) newest
                 WHERE n <= $2 ORDER BY agent_no, n"
            ),
            &[&kind, &i64::from(limit)],
        ))?;
        let mut out: HashMap<i64, Vec<Vec<u8>>> = HashMap::new();
        for row in &rows {
            out.entry(row.get(0)).or_default().push(row.get(1));
        }
        Ok(out)
    }

    fn findings(&self) -> Result<HashMap<i64, Vec<(String, u64)>>, StoreError> {
        let rows = self.block_on(self.client().query(
            "SELECT agent_no, kind, COUNT(*) FROM findings GROUP BY agent_no, kind
             ORDER BY agent_no, kind COLLATE \"C\"",
            &[],
        ))?;
        let mut out: HashMap<i64, Vec<(String, u64)>> = HashMap::new();
        for row in &rows {
            out.entry(row.get(0))
                .or_default()
                .push((row.get(1), unsigned(row.get(2))));
        }
        Ok(out)
    }

    fn agent_key(&self, agent_id: &str) -> Result<Option<AgentKeyRow>, StoreError> {
        let row = self.block_on(self.client().query_opt(
            "SELECT no, signing_key, certificate FROM agents WHERE id = $1",
            &[&agent_id],
        ))?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    fn payload(&self, no: i64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        // The head row, not a unique index, keeps an event from being stored twice; LIMIT 1 keeps
        // a hand-made duplicate from failing the page.
        let row = self.block_on(self.client().query_opt(
            "SELECT payload FROM events WHERE agent_no = $1 AND seq = $2 LIMIT 1",
            &[&no, &signed(seq)],
        ))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn batch_of(&self, no: i64, seq: u64) -> Result<Option<BatchRow>, StoreError> {
        let row = self.block_on(self.client().query_opt(
            "SELECT first_seq, last_seq, prev_hash, head_hash, signature FROM batches
             WHERE agent_no = $1 AND last_seq >= $2 AND first_seq <= $2
             ORDER BY last_seq LIMIT 1",
            &[&no, &signed(seq)],
        ))?;
        Ok(row.map(|r| BatchRow {
            first: unsigned(r.get(0)),
            last: unsigned(r.get(1)),
            prev: r.get(2),
            head: r.get(3),
            signature: r.get(4),
        }))
    }

    fn batch_events(
        &self,
        no: i64,
        first: u64,
        last: u64,
        visit: &mut ChainVisit<'_>,
    ) -> Result<(), StoreError> {
        let rows = self.block_on(self.client().query(
            "SELECT seq, payload, hash FROM events WHERE agent_no = $1 AND seq >= $2 AND seq <= $3
             ORDER BY seq",
            &[&no, &signed(first), &signed(last)],
        ))?;
        for row in &rows {
            if !visit(unsigned(row.get(0)), row.get(1), row.get(2)) {
                break;
            }
        }
        Ok(())
    }

    /// Reads in round trips that grow from a page's worth, each continuing after the last row of
    /// the one before (the order is the cursor's), so a search that fills its page early never has
    /// the server send the rest of `max_scan`.
    fn scan(
        &self,
        search: &Search,
        after: Option<Cursor>,
        max_scan: usize,
        visit: &mut ScanVisit<'_>,
    ) -> Result<(), StoreError> {
        let mut after = after;
        let mut scanned = 0usize;
        let mut chunk = 128usize;
        while scanned < max_scan {
            let want = chunk.min(max_scan - scanned);
            let mut p = Params::default();
            let mut sql = String::from(
                "SELECT a.id, e.payload, e.ts, e.agent_no, e.seq FROM events e
                 JOIN agents a ON a.no = e.agent_no WHERE true",
            );
            if let Some(kind) = &search.kind {
                sql.push_str(&format!(" AND e.kind ~ {}", p.add(glob_regex(kind))));
            }
            if let Some(host) = &search.host {
                let h = p.add(host.clone());
                sql.push_str(&format!(" AND (a.name = {h} OR a.host = {h})"));
            }
            if let Some(path) = &search.path {
                sql.push_str(&format!(" AND e.path ~ {}", p.add(glob_regex(path))));
            }
            if let Some(since) = search.since {
                sql.push_str(&format!(" AND e.ts >= {}", p.add(since.as_nanos())));
            }
            if let Some(until) = search.until {
                sql.push_str(&format!(" AND e.ts <= {}", p.add(until.as_nanos())));
            }
            if let Some(after) = after {
                sql.push_str(&format!(
                    " AND (e.ts, e.agent_no, e.seq) < ({}, {}, {})",
                    p.add(after.ts),
                    p.add(after.agent_no),
                    p.add(after.seq)
                ));
            }
            sql.push_str(&format!(
                " ORDER BY e.ts DESC, e.agent_no DESC, e.seq DESC LIMIT {}",
                p.add(i64::try_from(want).unwrap_or(i64::MAX))
            ));
            let rows = self.block_on(self.client().query(&sql, &p.refs()))?;
            for row in &rows {
                let cursor = Cursor {
                    ts: row.get(2),
                    agent_no: row.get(3),
                    seq: row.get(4),
                };
                after = Some(cursor);
                if !visit(cursor, row.get(0), row.get(1)) {
                    return Ok(());
                }
            }
            scanned += rows.len();
            if rows.len() < want {
                break;
            }
            chunk = (chunk * 4).min(SCAN_CHUNK);
        }
        Ok(())
    }
}
