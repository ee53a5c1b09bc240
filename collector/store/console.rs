//! The web console's reads and its only writes: one-time sign-in links and sessions (kept as
//! hashes only), agents' health, one event with the proof that it verifies, and paged searches.
//!
//! What the console concludes from the rows (health, proofs, pages) is computed here once, over
//! [`ConsoleRows`]: the few row reads each store answers in its own SQL (this file for SQLite,
//! `pg/console.rs` for PostgreSQL).

use std::collections::HashMap;

use bannin::chain;
use bannin::event::{Body, Record};
use bannin::proto::decode_event;
use bannin::time::Timestamp;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, token_hash};

pub const SCHEMA: &str = "
-- One-time sign-in links `console link` issued; the link's token is kept only as its hash.
CREATE TABLE IF NOT EXISTS console_links (
    hash BLOB PRIMARY KEY,
    operator TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    expires_ts INTEGER NOT NULL,
    used_ts INTEGER
);
-- Console sessions, by the hash of the cookie's value; an operator's revocation ends them because
-- every request joins the operators row.
CREATE TABLE IF NOT EXISTS console_sessions (
    hash BLOB PRIMARY KEY,
    operator TEXT NOT NULL,
    created_ts INTEGER NOT NULL,
    expires_ts INTEGER NOT NULL,
    ended_ts INTEGER
);
-- The agents page reads each agent's rare health events (starts, drops, sensor reports) without
-- walking its every event; partial, so ingest pays only for those rows.
CREATE INDEX IF NOT EXISTS events_health ON events (agent_no, kind, ts) WHERE kind IN
    ('agent.start', 'agent.dropped', 'sensor.status', 'sensor.overflow', 'sensor.error');
";

/// The health kinds, exactly as the partial index's WHERE clause says them: a query repeats the
/// clause verbatim so that SQLite may use the index.
pub const HEALTH_KINDS: &str =
    "kind IN ('agent.start', 'agent.dropped', 'sensor.status', 'sensor.overflow', 'sensor.error')";

/// Why a sign-in link or a session is refused. The console shows one message for all of them
/// (nothing to learn for someone guessing); the log says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Used,
    Expired,
    OperatorRevoked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Used => "already used",
            Refusal::Expired => "expired",
            Refusal::OperatorRevoked => "operator revoked or unknown",
        }
    }
}

/// Why the link whose row (operator, expires, used, operator's status) was read is refused at
/// `now`, if it is: the same rule for both stores.
pub fn link_refusal(
    row: Option<&(String, i64, Option<i64>, Option<String>)>,
    now: Timestamp,
) -> Option<Refusal> {
    match row {
        None => Some(Refusal::Unknown),
        Some((_, _, Some(_), _)) => Some(Refusal::Used),
        Some((_, expires, None, _)) if *expires <= now.as_nanos() => Some(Refusal::Expired),
        Some((_, _, None, status)) if status.as_deref() != Some("active") => {
            Some(Refusal::OperatorRevoked)
        }
        Some(_) => None,
    }
}

/// Records a one-time sign-in link for `operator`, valid until `expires`.
pub fn add_link(
    conn: &Connection,
    token: &str,
    operator: &str,
    expires: Timestamp,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO console_links (hash, operator, created_ts, expires_ts) VALUES (?1, ?2, ?3, ?4)",
        params![
            token_hash(token),
            operator,
            Timestamp::now().as_nanos(),
            expires.as_nanos()
        ],
    )?;
    Ok(())
}

/// Spends the link `token` and opens a session `session` for its operator, in one transaction:
/// a link opens one session, and only while its operator is active. Returns the operator's name.
pub fn sign_in(
    conn: &mut Connection,
    token: &str,
    session: &str,
    lifetime: std::time::Duration,
) -> Result<Result<String, Refusal>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let hash = token_hash(token);
    let now = Timestamp::now();
    let row: Option<(String, i64, Option<i64>, Option<String>)> = tx
        .query_row(
            "SELECT l.operator, l.expires_ts, l.used_ts, o.status FROM console_links l
             LEFT JOIN operators o ON o.name = l.operator WHERE l.hash = ?1",
            [&hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let refusal = link_refusal(row.as_ref(), now);
    if let (Some(refusal), Some(_)) = (refusal, &row) {
        // A link that was tried is spent whatever the outcome, so it cannot be retried later (after
        // the operator is reinstated, say).
        tx.execute(
            "UPDATE console_links SET used_ts = COALESCE(used_ts, ?1) WHERE hash = ?2",
            params![now.as_nanos(), hash],
        )?;
        tx.commit()?;
        return Ok(Err(refusal));
    }
    let Some((operator, ..)) = row else {
        return Ok(Err(Refusal::Unknown));
    };
    tx.execute(
        "UPDATE console_links SET used_ts = ?1 WHERE hash = ?2",
        params![now.as_nanos(), hash],
    )?;
    tx.execute(
        "INSERT INTO console_sessions (hash, operator, created_ts, expires_ts)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            token_hash(session),
            operator,
            now.as_nanos(),
            now.saturating_add(lifetime).as_nanos()
        ],
    )?;
    tx.commit()?;
    Ok(Ok(operator))
}

/// The operator a session belongs to, if it is open, unexpired and its operator still active, as
/// the store says now: nothing about a session is cached.
pub fn session_operator(conn: &Connection, session: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT s.operator FROM console_sessions s JOIN operators o ON o.name = s.operator
             WHERE s.hash = ?1 AND s.ended_ts IS NULL AND s.expires_ts > ?2 AND o.status = 'active'",
            params![token_hash(session), Timestamp::now().as_nanos()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Ends a session (sign-out). Ending one that is already over changes nothing.
pub fn end_session(conn: &Connection, session: &str) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE console_sessions SET ended_ts = ?1 WHERE hash = ?2 AND ended_ts IS NULL",
        params![Timestamp::now().as_nanos(), token_hash(session)],
    )?;
    Ok(())
}

/// The row reads the console's health, proofs and searches rest on, from either store. Each
/// answers in its store's SQL; what the rows mean is decided once, in this module.
pub trait ConsoleRows {
    /// Every agent: its number, id, and whether the collector signed its current head.
    fn health_agents(&self) -> Result<Vec<(i64, String, bool)>, StoreError>;
    /// How many events of the health kind `kind` each agent sent, by agent number.
    fn health_counts(&self, kind: &str) -> Result<HashMap<i64, u64>, StoreError>;
    /// The payloads of each agent's newest `limit` events of the health kind `kind`, newest first,
    /// by agent number.
    fn health_newest(
        &self,
        kind: &str,
        limit: u32,
    ) -> Result<HashMap<i64, Vec<Vec<u8>>>, StoreError>;
    /// The collector's findings about each agent's chain, counted by kind in kind order, by agent
    /// number.
    fn findings(&self) -> Result<HashMap<i64, Vec<(String, u64)>>, StoreError>;
    /// The agent `agent_id`: its number, signing key and certificate.
    fn agent_key(&self, agent_id: &str) -> Result<Option<AgentKeyRow>, StoreError>;
    /// The payload of agent `no`'s event `seq`, if stored.
    fn payload(&self, no: i64, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The signed batch that holds agent `no`'s event `seq`.
    fn batch_of(&self, no: i64, seq: u64) -> Result<Option<BatchRow>, StoreError>;
    /// Agent `no`'s stored events `first..=last` in seq order, each as (seq, payload, hash), to
    /// `visit` until it returns false.
    fn batch_events(
        &self,
        no: i64,
        first: u64,
        last: u64,
        visit: &mut ChainVisit<'_>,
    ) -> Result<(), StoreError>;
    /// The events the search's stored columns admit (kind, host, path, time), newest first after
    /// `after`, at most `max_scan` of them, to `visit` until it returns false.
    fn scan(
        &self,
        search: &Search,
        after: Option<Cursor>,
        max_scan: usize,
        visit: &mut ScanVisit<'_>,
    ) -> Result<(), StoreError>;
}

/// Takes one stored event of a batch (seq, payload, hash); false stops the walk.
pub type ChainVisit<'v> = dyn FnMut(u64, &[u8], &[u8]) -> bool + 'v;
/// Takes one event a search's scan found (its cursor, agent id, payload); false stops the scan.
pub type ScanVisit<'v> = dyn FnMut(Cursor, String, &[u8]) -> bool + 'v;

/// An agent's key as stored: its number, signing key and certificate (PEM).
pub type AgentKeyRow = (i64, Vec<u8>, Option<String>);

/// What the agents page shows beside `agents`' row: what the agent's own signed chain said about
/// its sensors and losses, and what the collector concluded about the chain.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The sensors the latest `agent.start` listed.
    pub sensors: Vec<String>,
    /// The newest `sensor.status` message of each sensor (which backend runs, and why).
    pub backends: Vec<(String, String)>,
    /// Events the agent reported dropping (`agent.dropped`), and overflow reports.
    pub dropped: u64,
    pub overflows: u64,
    pub sensor_errors: u64,
    /// `chain.gap`, `chain.tamper`, `chain.fork`... findings, by kind.
    pub findings: Vec<(String, u64)>,
    /// Whether the collector has signed the agent's current head.
    pub head_signed: bool,
}

/// Health of every agent, by agent id. The counts use the stores' health index; the messages are
/// the newest few.
pub fn health(conn: &(impl ConsoleRows + ?Sized)) -> Result<HashMap<String, Health>, StoreError> {
    // A few questions for every agent at once: on a store across the network, a question per
    // agent would be a round trip each.
    let overflows = conn.health_counts("sensor.overflow")?;
    let errors = conn.health_counts("sensor.error")?;
    let mut findings = conn.findings()?;
    let mut starts = conn.health_newest("agent.start", 1)?;
    let mut statuses = conn.health_newest("sensor.status", 32)?;
    let mut drops = conn.health_newest("agent.dropped", 10_000)?;
    let mut out = HashMap::new();
    for (no, id, head_signed) in conn.health_agents()? {
        let mut health = Health {
            head_signed,
            overflows: overflows.get(&no).copied().unwrap_or(0),
            sensor_errors: errors.get(&no).copied().unwrap_or(0),
            findings: findings.remove(&no).unwrap_or_default(),
            ..Health::default()
        };
        if let Some(payload) = starts.remove(&no).unwrap_or_default().first()
            && let Ok(event) = decode_event(payload)
            && let Body::Agent(agent) = event.body
        {
            health.sensors = agent.sensors;
        }
        // The newest report of each sensor (they come just before `agent.start`, and again when
        // a backend changes).
        for payload in statuses.remove(&no).unwrap_or_default() {
            if let Ok(event) = decode_event(&payload)
                && let Body::Sensor(sensor) = event.body
                && !health
                    .backends
                    .iter()
                    .any(|(name, _)| *name == sensor.sensor)
            {
                health.backends.push((sensor.sensor, sensor.message));
            }
        }
        health.backends.sort();
        for payload in drops.remove(&no).unwrap_or_default() {
            if let Ok(event) = decode_event(&payload)
                && let Body::Agent(agent) = event.body
            {
                health.dropped = health.dropped.saturating_add(agent.dropped);
            }
        }
        out.insert(id, health);
    }
    Ok(out)
}

/// Whether a stored event is proven by its chain and its agent's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// Its hash follows from its signed batch's start through every event of the batch to the
    /// signed head, and the signature is the agent's, whose key its CA-issued certificate binds.
    Verified,
    /// Not proven, and why.
    Unverified(String),
}

/// One evidence event as the alert page shows it.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub agent_id: String,
    pub seq: u64,
    /// None: the store no longer holds it (retention) or it does not decode.
    pub record: Option<Record>,
    pub proof: Proof,
}

/// A signed batch as stored.
pub struct BatchRow {
    pub first: u64,
    pub last: u64,
    pub prev: Vec<u8>,
    pub head: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Whether the agent's stored certificate was issued by `ca_pem` and binds `key`.
fn key_bound(certificate: Option<&str>, ca_pem: Option<&str>, key: &[u8]) -> bool {
    match (certificate, ca_pem) {
        (Some(pem), Some(ca)) => bannin::pki::first_cert_der(pem).is_some_and(|der| {
            bannin::pki::issued_by(&der, ca)
                && bannin::pki::signing_key_of(&der).as_deref() == Some(key)
        }),
        _ => false,
    }
}

/// The events `refs` (agent id, seq), each with its proof. `ca_pem` is the collector's CA, read
/// from the data directory: an agent key the CA did not certify proves nothing.
pub fn evidence(
    conn: &(impl ConsoleRows + ?Sized),
    refs: &[(String, u64)],
    ca_pem: Option<&str>,
) -> Result<Vec<Evidence>, StoreError> {
    let mut keys: HashMap<String, Option<(i64, Vec<u8>, bool)>> = HashMap::new();
    let mut batches: HashMap<(i64, u64), Proof> = HashMap::new();
    let mut out = Vec::new();
    for (agent_id, seq) in refs {
        let agent = match keys.get(agent_id) {
            Some(found) => found.clone(),
            None => {
                let found = conn.agent_key(agent_id)?.map(|(no, key, certificate)| {
                    let bound = key_bound(certificate.as_deref(), ca_pem, &key);
                    (no, key, bound)
                });
                keys.insert(agent_id.clone(), found.clone());
                found
            }
        };
        let Some((no, key, bound)) = agent else {
            out.push(Evidence {
                agent_id: agent_id.clone(),
                seq: *seq,
                record: None,
                proof: Proof::Unverified("no such agent".into()),
            });
            continue;
        };
        let payload = conn.payload(no, *seq)?;
        let record = payload
            .as_deref()
            .and_then(|p| decode_event(p).ok())
            .map(|event| Record {
                agent_id: agent_id.clone(),
                event,
            });
        let proof = if payload.is_none() {
            Proof::Unverified("not stored (pruned by retention?)".into())
        } else {
            match conn.batch_of(no, *seq)? {
                None => Proof::Unverified("no signed batch holds it".into()),
                Some(batch) => match batches.get(&(no, batch.first)) {
                    Some(proof) => proof.clone(),
                    None => {
                        let proof = prove_batch(conn, no, agent_id, &key, &batch)?;
                        batches.insert((no, batch.first), proof.clone());
                        proof
                    }
                },
            }
        };
        // A chain that holds proves nothing when the key that signed it is not the one this CA
        // certified for the agent.
        let proof = match proof {
            Proof::Verified if !bound => Proof::Unverified(
                "the agent's key is not bound by a certificate from this CA".into(),
            ),
            proof => proof,
        };
        out.push(Evidence {
            agent_id: agent_id.clone(),
            seq: *seq,
            record,
            proof,
        });
    }
    Ok(out)
}

/// Re-hashes every event of a batch from its signed start and checks the agent's signature over
/// the result: an event is proven only with the whole batch it was signed in.
fn prove_batch(
    conn: &(impl ConsoleRows + ?Sized),
    no: i64,
    agent_id: &str,
    key: &[u8],
    batch: &BatchRow,
) -> Result<Proof, StoreError> {
    let (Ok(prev), Ok(head)) = (
        chain::to_hash(&batch.prev, "prev hash"),
        chain::to_hash(&batch.head, "head hash"),
    ) else {
        return Ok(Proof::Unverified("the batch's hashes are malformed".into()));
    };
    if chain::verify_batch(
        key,
        &batch.signature,
        agent_id,
        batch.first,
        batch.last,
        &prev,
        &head,
    )
    .is_err()
    {
        return Ok(Proof::Unverified(
            "the batch signature does not verify".into(),
        ));
    }
    let mut running = prev;
    let mut expected = batch.first;
    let mut broken = None;
    conn.batch_events(no, batch.first, batch.last, &mut |seq, payload, stored| {
        if seq != expected {
            broken = Some(format!("event {expected} of its batch is missing"));
            return false;
        }
        running = chain::link(&running, seq, payload);
        if stored != running {
            broken = Some(format!(
                "event {seq}'s hash does not follow from the one before it"
            ));
            return false;
        }
        expected += 1;
        true
    })?;
    if let Some(why) = broken {
        return Ok(Proof::Unverified(why));
    }
    if expected != batch.last + 1 || running != head {
        return Ok(Proof::Unverified(
            "the batch does not end at its signed head".into(),
        ));
    }
    Ok(Proof::Verified)
}

/// A search over stored events: the indexed columns narrow in SQL, the user in the decoded event.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub kind: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub user: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// Where a page of a search starts: the (ts, agent_no, seq) of the last row of the page before,
/// newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: i64,
    pub agent_no: i64,
    pub seq: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.ts, self.agent_no, self.seq)
    }

    pub fn parse(text: &str) -> Option<Cursor> {
        let mut parts = text.split('.');
        let cursor = Cursor {
            ts: parts.next()?.parse().ok()?,
            agent_no: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(cursor)
    }
}

#[derive(Debug, Default)]
pub struct Page {
    /// Newest first.
    pub records: Vec<Record>,
    /// Where the next page starts, when there may be one.
    pub next: Option<Cursor>,
    /// The scan stopped at `max_scan` rows without filling the page (a user filter over a wide
    /// range): the page is what was found, `next` continues the scan.
    pub scan_limited: bool,
}

/// The user an event acted as: the process's, or the database account.
pub fn user_of(record: &Record) -> Option<&str> {
    match &record.event.body {
        Body::Db(db) => Some(db.db_user.as_str()),
        _ => crate::report::process_of(record).map(|p| p.user.as_str()),
    }
}

/// One page of `search`, newest first, starting after `after`, reading at most `max_scan` rows.
pub fn search(
    conn: &(impl ConsoleRows + ?Sized),
    search: &Search,
    after: Option<Cursor>,
    page: usize,
    max_scan: usize,
) -> Result<Page, StoreError> {
    let user = search.user.as_deref().map(glob_matcher).transpose()?;
    let mut out = Page::default();
    let mut scanned = 0usize;
    let mut last = None;
    let mut full = false;
    conn.scan(search, after, max_scan, &mut |cursor, agent_id, payload| {
        scanned += 1;
        last = Some(cursor);
        let Ok(event) = decode_event(payload) else {
            return true;
        };
        let record = Record { agent_id, event };
        if let Some(user) = &user
            && !user_of(&record).is_some_and(|u| user.is_match(u))
        {
            return true;
        }
        out.records.push(record);
        if out.records.len() == page {
            out.next = Some(cursor);
            full = true;
            return false;
        }
        true
    })?;
    if !full && scanned == max_scan {
        out.scan_limited = true;
        out.next = last;
    }
    Ok(out)
}

fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, StoreError> {
    globset::Glob::new(pattern)
        .map(|glob| glob.compile_matcher())
        .map_err(|error| StoreError::BadPattern {
            pattern: pattern.to_string(),
            reason: error.to_string(),
        })
}

impl ConsoleRows for Connection {
    fn health_agents(&self) -> Result<Vec<(i64, String, bool)>, StoreError> {
        let mut stmt =
            self.prepare("SELECT no, id, head_signature IS NOT NULL FROM agents ORDER BY no")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn health_counts(&self, kind: &str) -> Result<HashMap<i64, u64>, StoreError> {
        let mut stmt = self.prepare_cached(&format!(
            "SELECT agent_no, COUNT(*) FROM events WHERE {HEALTH_KINDS} AND kind = ?1
             GROUP BY agent_no"
        ))?;
        let rows = stmt.query_map([kind], |r| {
            Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn health_newest(
        &self,
        kind: &str,
        limit: u32,
    ) -> Result<HashMap<i64, Vec<Vec<u8>>>, StoreError> {
        let mut stmt = self.prepare_cached(&format!(
            "SELECT agent_no, payload FROM (
                 SELECT agent_no, payload, row_number() OVER (
                     PARTITION BY agent_no ORDER BY ts DESC) AS n
                 FROM events WHERE {HEALTH_KINDS} AND kind = ?1)
             WHERE n <= ?2 ORDER BY agent_no, n"
        ))?;
        let rows = stmt.query_map(params![kind, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out: HashMap<i64, Vec<Vec<u8>>> = HashMap::new();
        for row in rows {
            let (no, payload) = row?;
            out.entry(no).or_default().push(payload);
        }
        Ok(out)
    }

    fn findings(&self) -> Result<HashMap<i64, Vec<(String, u64)>>, StoreError> {
        let mut stmt = self.prepare_cached(
            "SELECT agent_no, kind, COUNT(*) FROM findings GROUP BY agent_no, kind
             ORDER BY agent_no, kind",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            ))
        })?;
        let mut out: HashMap<i64, Vec<(String, u64)>> = HashMap::new();
        for row in rows {
            let (no, kind, n) = row?;
            out.entry(no).or_default().push((kind, n));
        }
        Ok(out)
    }

    fn agent_key(&self, agent_id: &str) -> Result<Option<AgentKeyRow>, StoreError> {
        Ok(self
            .query_row(
                "SELECT no, signing_key, certificate FROM agents WHERE id = ?1",
                [agent_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn payload(&self, no: i64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .query_row(
                "SELECT payload FROM events WHERE agent_no = ?1 AND seq = ?2",
                params![no, i64::try_from(seq).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn batch_of(&self, no: i64, seq: u64) -> Result<Option<BatchRow>, StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        Ok(self
            .query_row(
                "SELECT first_seq, last_seq, prev_hash, head_hash, signature FROM batches
                 WHERE agent_no = ?1 AND last_seq >= ?2 AND first_seq <= ?2
                 ORDER BY last_seq LIMIT 1",
                params![no, seq],
                |r| {
                    Ok(BatchRow {
                        first: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        last: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                        prev: r.get(2)?,
                        head: r.get(3)?,
                        signature: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn batch_events(
        &self,
        no: i64,
        first: u64,
        last: u64,
        visit: &mut ChainVisit<'_>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(
            "SELECT seq, payload, hash FROM events WHERE agent_no = ?1 AND seq >= ?2 AND seq <= ?3
             ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![
            no,
            i64::try_from(first).unwrap_or(i64::MAX),
            i64::try_from(last).unwrap_or(i64::MAX)
        ])?;
        while let Some(row) = rows.next()? {
            let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
            // Whatever an edit left in these columns is compared as bytes, never trusted to be a
            // blob.
            let payload = match row.get_ref(1)? {
                ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes,
                _ => &[],
            };
            let stored = match row.get_ref(2)? {
                ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes,
                _ => &[],
            };
            if !visit(seq, payload, stored) {
                break;
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        search: &Search,
        after: Option<Cursor>,
        max_scan: usize,
        visit: &mut ScanVisit<'_>,
    ) -> Result<(), StoreError> {
        let mut sql = String::from(
            "SELECT a.id, e.payload, e.ts, e.agent_no, e.seq FROM events e
             JOIN agents a ON a.no = e.agent_no WHERE 1=1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(kind) = &search.kind {
            sql.push_str(" AND e.kind GLOB ?");
            args.push(Value::Text(kind.clone()));
        }
        if let Some(host) = &search.host {
            sql.push_str(" AND (a.name = ? OR a.host = ?)");
            args.push(Value::Text(host.clone()));
            args.push(Value::Text(host.clone()));
        }
        if let Some(path) = &search.path {
            sql.push_str(" AND e.path GLOB ?");
            args.push(Value::Text(path.clone()));
        }
        if let Some(since) = search.since {
            sql.push_str(" AND e.ts >= ?");
            args.push(Value::Integer(since.as_nanos()));
        }
        if let Some(until) = search.until {
            sql.push_str(" AND e.ts <= ?");
            args.push(Value::Integer(until.as_nanos()));
        }
        if let Some(after) = after {
            sql.push_str(" AND (e.ts, e.agent_no, e.seq) < (?, ?, ?)");
            args.extend([
                Value::Integer(after.ts),
                Value::Integer(after.agent_no),
                Value::Integer(after.seq),
            ]);
        }
        sql.push_str(" ORDER BY e.ts DESC, e.agent_no DESC, e.seq DESC LIMIT ?");
        args.push(Value::Integer(i64::try_from(max_scan).unwrap_or(i64::MAX)));
        let mut stmt = self.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(row) = rows.next()? {
            let cursor = Cursor {
                ts: row.get(2)?,
                agent_no: row.get(3)?,
                seq: row.get(4)?,
            };
            let agent_id: String = row.get(0)?;
            let payload = match row.get_ref(1)? {
                ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes,
                _ => &[],
            };
            if !visit(cursor, agent_id, payload) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    fn store_with_operator(name: &str) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(dir.path()).unwrap();
        store::operators::add_operator(&conn, name).unwrap();
        (dir, conn)
    }

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn a_link_opens_one_session_and_only_its_hash_is_stored() {
        let (_dir, mut conn) = store_with_operator("alice");
        let later = Timestamp::now().saturating_add(HOUR);
        add_link(&conn, "link-secret", "alice", later).unwrap();
        let stored: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM console_links WHERE hash = ?1 OR CAST(hash AS TEXT) = ?2",
                params![token_hash("link-secret"), "link-secret"],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 1, "stored once, under its hash");
        assert_eq!(
            sign_in(&mut conn, "link-secret", "session-1", HOUR).unwrap(),
            Ok("alice".to_string())
        );
        assert_eq!(
            session_operator(&conn, "session-1").unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(
            sign_in(&mut conn, "link-secret", "session-2", HOUR).unwrap(),
            Err(Refusal::Used)
        );
        assert_eq!(session_operator(&conn, "session-2").unwrap(), None);
        assert_eq!(
            sign_in(&mut conn, "link-secreT", "session-3", HOUR).unwrap(),
            Err(Refusal::Unknown)
        );
        let texts: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM console_sessions WHERE instr(CAST(hash AS TEXT), 'session') > 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(texts, 0);
    }

    #[test]
    fn revoking_the_operator_ends_sessions_and_refuses_links_at_once() {
        let (_dir, mut conn) = store_with_operator("bob");
        let later = Timestamp::now().saturating_add(HOUR);
        add_link(&conn, "l1", "bob", later).unwrap();
        add_link(&conn, "l2", "bob", later).unwrap();
        sign_in(&mut conn, "l1", "s1", HOUR).unwrap().unwrap();
        store::operators::revoke_operator(&conn, "bob").unwrap();
        assert_eq!(session_operator(&conn, "s1").unwrap(), None);
        assert_eq!(
            sign_in(&mut conn, "l2", "s2", HOUR).unwrap(),
            Err(Refusal::OperatorRevoked)
        );
    }

    #[test]
    fn expired_links_and_sessions_and_ended_sessions_are_refused() {
        let (_dir, mut conn) = store_with_operator("carol");
        add_link(&conn, "old", "carol", Timestamp::from_nanos(1)).unwrap();
        assert_eq!(
            sign_in(&mut conn, "old", "s", HOUR).unwrap(),
            Err(Refusal::Expired)
        );
        let later = Timestamp::now().saturating_add(HOUR);
        add_link(&conn, "fresh", "carol", later).unwrap();
        sign_in(&mut conn, "fresh", "short", std::time::Duration::ZERO)
            .unwrap()
            .unwrap();
        assert_eq!(session_operator(&conn, "short").unwrap(), None, "expired");
        add_link(&conn, "third", "carol", later).unwrap();
        sign_in(&mut conn, "third", "s3", HOUR).unwrap().unwrap();
        end_session(&conn, "s3").unwrap();
        assert_eq!(session_operator(&conn, "s3").unwrap(), None, "signed out");
    }

    /// A store holding one agent (certified by a fresh CA) with one signed batch of three events;
    /// returns the CA's certificate.
    fn store_with_batch(conn: &Connection) -> String {
        use bannin::event::{AgentAction, AgentEvent, Event};
        let (authority, material) = bannin::pki::Authority::create().unwrap();
        let key = bannin::chain::generate_signing_key().unwrap();
        let public = key.verifying_key().to_bytes().to_vec();
        let (_, csr) = bannin::pki::client_key_and_csr("h1").unwrap();
        let certificate = authority.sign_agent_csr(&csr, "a-1", &public).unwrap();
        conn.execute(
            "INSERT INTO agents (no, id, name, host, signing_key, enrolled_ts, head_hash, certificate)
             VALUES (1, 'a-1', 'h1', 'h1', ?1, 0, ?2, ?3)",
            params![public, chain::GENESIS.to_vec(), certificate],
        )
        .unwrap();
        let mut head = chain::GENESIS;
        for seq in 1..=3u64 {
            let event = Event {
                seq,
                ts: Timestamp::from_nanos(i64::try_from(seq).unwrap()),
                host: "h1".into(),
                body: AgentEvent::new(AgentAction::Heartbeat).into(),
            };
            let bytes = bannin::proto::encode_event(&event);
            head = chain::link(&head, seq, &bytes);
            conn.execute(
                "INSERT INTO events (agent_no, seq, ts, kind, path, payload, hash)
                 VALUES (1, ?1, ?1, 'agent.heartbeat', NULL, ?2, ?3)",
                params![i64::try_from(seq).unwrap(), bytes, head.to_vec()],
            )
            .unwrap();
        }
        let signature = chain::sign_batch(&key, "a-1", 1, 3, &chain::GENESIS, &head);
        conn.execute(
            "INSERT INTO batches (agent_no, last_seq, first_seq, prev_hash, head_hash, signature,
                 received_ts) VALUES (1, 3, 1, ?1, ?2, ?3, 0)",
            params![chain::GENESIS.to_vec(), head.to_vec(), signature.to_vec()],
        )
        .unwrap();
        material.cert_pem
    }

    #[test]
    fn evidence_is_verified_only_with_its_whole_signed_batch_and_a_certified_key() {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(dir.path()).unwrap();
        let ca = store_with_batch(&conn);
        let refs = [("a-1".to_string(), 2u64), ("a-9".to_string(), 1u64)];
        let found = evidence(&conn, &refs, Some(&ca)).unwrap();
        assert_eq!(found[0].proof, Proof::Verified);
        assert!(found[0].record.is_some());
        assert_eq!(found[1].proof, Proof::Unverified("no such agent".into()));
        // Another CA certified nothing here.
        let (_, other) = bannin::pki::Authority::create().unwrap();
        let unbound = evidence(&conn, &refs[..1], Some(&other.cert_pem)).unwrap();
        assert!(matches!(&unbound[0].proof, Proof::Unverified(why) if why.contains("not bound")));
        // An edit to another event of the batch unproves this one too.
        conn.execute(
            "UPDATE events SET payload = payload || x'00' WHERE seq = 3",
            [],
        )
        .unwrap();
        let edited = evidence(&conn, &refs[..1], Some(&ca)).unwrap();
        assert!(
            matches!(&edited[0].proof, Proof::Unverified(why) if why.contains("event 3")),
            "{:?}",
            edited[0].proof
        );
        conn.execute("DELETE FROM batches", []).unwrap();
        let unsigned = evidence(&conn, &refs[..1], Some(&ca)).unwrap();
        assert_eq!(
            unsigned[0].proof,
            Proof::Unverified("no signed batch holds it".into())
        );
    }

    #[test]
    fn health_answers_every_agent_from_its_own_reports() {
        use bannin::event::{AgentAction, AgentEvent, Event, SensorEvent, SensorStatus};
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_writer(dir.path()).unwrap();
        store_with_batch(&conn);
        conn.execute(
            "INSERT INTO agents (no, id, name, host, signing_key, enrolled_ts, head_hash)
             VALUES (2, 'a-2', 'h2', 'h2', x'00', 0, x'00')",
            [],
        )
        .unwrap();
        let put = |seq: i64, body: Body| {
            let event = Event {
                seq: u64::try_from(seq).unwrap(),
                ts: Timestamp::from_nanos(seq),
                host: "h1".into(),
                body,
            };
            conn.execute(
                "INSERT INTO events (agent_no, seq, ts, kind, path, payload, hash)
                 VALUES (1, ?1, ?1, ?2, NULL, ?3, x'00')",
                params![seq, event.kind(), bannin::proto::encode_event(&event)],
            )
            .unwrap();
        };
        let sensor = |status, message: &str| {
            Body::from(SensorEvent {
                status,
                sensor: "files".into(),
                message: message.into(),
                count: 0,
                path: String::new(),
                count_unknown: false,
            })
        };
        let dropped = |n| {
            let mut agent = AgentEvent::new(AgentAction::Dropped);
            agent.dropped = n;
            Body::from(agent)
        };
        let mut start = AgentEvent::new(AgentAction::Start);
        start.sensors = vec!["files".into()];
        put(10, sensor(SensorStatus::Overflow, "queue full"));
        put(11, sensor(SensorStatus::Overflow, "queue full"));
        put(12, dropped(5));
        put(13, dropped(7));
        put(14, start.into());
        put(15, sensor(SensorStatus::Status, "fanotify"));
        put(16, sensor(SensorStatus::Status, "portable"));
        for _ in 0..2 {
            conn.execute(
                "INSERT INTO findings (agent_no, ts, kind, first_seq, last_seq, detail)
                 VALUES (1, 0, 'chain.gap', 1, 2, 'gap')",
                [],
            )
            .unwrap();
        }
        let health = health(&conn).unwrap();
        let one = &health["a-1"];
        assert_eq!((one.overflows, one.dropped, one.sensor_errors), (2, 12, 0));
        assert_eq!(one.sensors, ["files"]);
        assert_eq!(
            one.backends,
            [("files".to_string(), "portable".to_string())]
        );
        assert_eq!(one.findings, [("chain.gap".to_string(), 2)]);
        let two = &health["a-2"];
        assert_eq!((two.overflows, two.dropped), (0, 0));
        assert!(two.findings.is_empty() && two.backends.is_empty() && two.sensors.is_empty());
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let cursor = Cursor {
            ts: -5,
            agent_no: 3,
            seq: 99,
        };
        assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1.2.x"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
