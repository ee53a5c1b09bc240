//! The collector's SQLite store: every rusqlite call of the collector goes through this module.
//!
//! One writer connection lives on the ingest thread (`ingest.rs`); query commands and `verify` open
//! their own read-only connections, which WAL lets run while `serve` writes.

pub mod alert_chain;
pub mod alerts;
pub mod console;
pub mod ingest;
pub mod investigate;
pub mod operators;
pub mod pg;
pub mod prune;
pub mod query;
pub mod verify;

use std::path::{Path, PathBuf};

use bannin::chain::GENESIS;
use bannin::time::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub const DB_FILE: &str = "bannin.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {reason} (is --data-dir right? serve creates it)")]
    Open { path: PathBuf, reason: String },
    #[error(
        "no store in {dir} yet; `bannin-collector serve --data-dir {dir}` creates it on first start (is --data-dir right?)"
    )]
    Missing { dir: PathBuf },
    #[error("store: {source}")]
    Sql {
        #[from]
        source: rusqlite::Error,
    },
    #[error("store: {}", pg::pg_message(source))]
    Pg {
        #[from]
        source: tokio_postgres::Error,
    },
    #[error("store: no session: {source}")]
    Pool {
        #[from]
        source: deadpool_postgres::PoolError,
    },
    #[error("invalid store URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "no bannin store in {url} yet; `bannin-collector serve --store {url}` or `token create --store {url}` creates it"
    )]
    NoPgStore { url: String },
    #[error("cannot reach the store {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("enrollment token is unknown")]
    UnknownToken,
    #[error("enrollment token was already used")]
    UsedToken,
    #[error("enrollment token has expired")]
    ExpiredToken,
    #[error(
        "an active agent is already enrolled as {name:?} ({agent_id}); revoke it with `bannin-collector revoke --agent {agent_id}` or choose another --name"
    )]
    NameTaken { name: String, agent_id: String },
    #[error("store has no agent {agent_id}")]
    UnknownAgent { agent_id: String },
    #[error("operator {name} already exists; choose another name")]
    OperatorExists { name: String },
    #[error("store has no operator {name}")]
    UnknownOperator { name: String },
    #[error("cannot encode alert {id}: {source}")]
    EncodeAlert {
        id: String,
        source: serde_json::Error,
    },
    #[error("stored alert {id} does not parse: {source}")]
    BadAlert {
        id: String,
        source: serde_json::Error,
    },
    #[error("bad pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("the ingest thread has stopped")]
    WriterGone,
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    no INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    signing_key BLOB NOT NULL,
    enrolled_ts INTEGER NOT NULL,
    last_seen_ts INTEGER,
    last_seq INTEGER NOT NULL DEFAULT 0,
    head_hash BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    spool_events INTEGER NOT NULL DEFAULT 0,
    spool_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    created_ts INTEGER NOT NULL,
    expires_ts INTEGER NOT NULL,
    used_ts INTEGER,
    used_by TEXT
);
-- payload is the event exactly as the agent encoded, hashed and signed it; ts, kind, host and path
-- are derived from it for queries, and verify checks they still agree.
CREATE TABLE IF NOT EXISTS events (
    agent_no INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    path TEXT,
    payload BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (agent_no, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
-- One row per accepted batch: the signature that authenticates events first_seq..=last_seq.
CREATE TABLE IF NOT EXISTS batches (
    agent_no INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    head_hash BLOB NOT NULL,
    signature BLOB NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (agent_no, last_seq, first_seq)
) WITHOUT ROWID;
-- What the collector itself concluded about an agent's chain (chain.gap, chain.fork).
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY,
    agent_no INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    detail TEXT NOT NULL
);
-- Host and time-range questions (timeline, scope) read one agent's events in time order.
CREATE INDEX IF NOT EXISTS events_agent_ts ON events (agent_no, ts);
-- People who query the collector remotely; their certificates name them, this says if they still may.
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    created_ts INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    revoked_ts INTEGER
);
-- Retention: every event up to through_seq was deleted on purpose, whole batches at a time, so verify
-- starts the agent's chain at the prev_hash of the oldest batch still stored.
CREATE TABLE IF NOT EXISTS pruned (
    agent_no INTEGER PRIMARY KEY,
    through_seq INTEGER NOT NULL,
    pruned_ts INTEGER NOT NULL
);
";

/// Columns added after a table was first released; a store made by an older collector gains them
/// (empty) when a writer opens it.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // The agent's certificate as the CA issued it; it binds the agent's signing key.
    ("agents", "certificate", "TEXT"),
    // The collector's signature over (agent, last_seq, head_hash).
    ("agents", "head_signature", "BLOB"),
    // The newest head the agent says the collector acknowledged to it, signed by the agent.
    ("agents", "witness_seq", "INTEGER"),
    ("agents", "witness_hash", "BLOB"),
    ("agents", "witness_signature", "BLOB"),
    // The collector's signature over the finding or retention mark; verify trusts no other row.
    ("findings", "signature", "BLOB"),
    ("pruned", "signature", "BLOB"),
];

fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    for (table, column, decl) in ADDED_COLUMNS {
        let present: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !present
            && let Err(error) =
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
        {
            // Another connection opening the same old store may have added it first.
            if !error.to_string().contains("duplicate column") {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Where a store is: the SQLite file in a data directory (the default), or a PostgreSQL database
/// several collectors share.
#[derive(Debug, Clone)]
pub enum StoreAt {
    Sqlite(PathBuf),
    Postgres(Box<pg::Target>),
}

impl StoreAt {
    /// `--store URL` when given (a PostgreSQL URL), else the data directory's SQLite store.
    pub fn new(url: Option<&str>, data_dir: &Path) -> Result<StoreAt, StoreError> {
        match url {
            Some(url) => Ok(StoreAt::Postgres(Box::new(pg::Target::parse(url)?))),
            None => Ok(StoreAt::Sqlite(data_dir.to_path_buf())),
        }
    }
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Opens (creating if needed) the store for writing.
pub fn open_writer(data_dir: &Path) -> Result<Connection, StoreError> {
    let path = db_path(data_dir);
    let open = |error: rusqlite::Error| StoreError::Open {
        path: path.clone(),
        reason: error.to_string(),
    };
    if !path.exists() {
        create(data_dir)?;
    }
    let conn = Connection::open(&path).map_err(open)?;
    prepare(&conn).map_err(open)?;
    Ok(conn)
}

/// Settings and schema for a writing connection. The busy timeout comes first, so every statement
/// after it, the switch to WAL included, waits for a concurrent opener instead of failing with
/// "database is locked"; the schema goes in as one IMMEDIATE transaction, so concurrent openers take
/// turns and a reader sees all of it or none.
fn prepare(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // synchronous=FULL: an acknowledgement to an agent means the events survive a power loss.
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    )?;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA}; {}; {}; {};",
        alerts::SCHEMA,
        alert_chain::SCHEMA,
        console::SCHEMA
    ))?;
    match migrate(conn) {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(error) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

/// Makes a new store appear whole: it is built under a fresh name and linked into place (which fails
/// if another process got there first, whose store is then used), so a query started while `serve`
/// starts finds either no store or a complete one, never an empty file.
fn create(data_dir: &Path) -> Result<(), StoreError> {
    let path = db_path(data_dir);
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|error| StoreError::Open {
        path: path.clone(),
        reason: format!("no randomness for a temporary name: {error}"),
    })?;
    let temp = data_dir.join(format!(".{DB_FILE}.{}.new", hex::encode(random)));
    let failed = |reason: String| StoreError::Open {
        path: path.clone(),
        reason,
    };
    let built = Connection::open(&temp).and_then(|conn| {
        prepare(&conn)?;
        conn.close().map_err(|(_, error)| error)
    });
    let linked = built
        .map_err(|error| failed(error.to_string()))
        .and_then(|()| match std::fs::hard_link(&temp, &path) {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(failed(error.to_string()))
            }
            _ => Ok(()),
        });
    for leftover in ["", "-wal", "-shm", "-journal"] {
        let mut name = temp.clone().into_os_string();
        name.push(leftover);
        let _ = std::fs::remove_file(name);
    }
    linked
}

/// Opens the store read-only, for queries and verification while `serve` runs.
pub fn open_reader(data_dir: &Path) -> Result<Connection, StoreError> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Err(StoreError::Missing {
            dir: data_dir.to_path_buf(),
        });
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| StoreError::Open {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|error| StoreError::Open {
            path,
            reason: error.to_string(),
        })?;
    Ok(conn)
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Records a new enrollment token; only its hash is kept.
pub fn add_token(conn: &Connection, token: &str, expires: Timestamp) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO tokens (hash, created_ts, expires_ts) VALUES (?1, ?2, ?3)",
        params![
            token_hash(token),
            Timestamp::now().as_nanos(),
            expires.as_nanos()
        ],
    )?;
    Ok(())
}

/// An agent as the ingest path needs it.
#[derive(Debug, Clone)]
pub struct AgentKey {
    pub no: i64,
    pub id: String,
    /// The name the agent enrolled with: the `host` of every event it sends.
    pub name: String,
    pub signing_key: Vec<u8>,
    pub active: bool,
}

pub struct NewAgent<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub host: &'a str,
    pub signing_key: &'a [u8],
    /// The certificate the CA issued, which binds `signing_key` to the agent's identity.
    pub certificate: &'a str,
    /// The collector's signature over the empty chain's head (0, genesis), so even an agent that
    /// never sent anything has a signed head to compare with.
    pub head_signature: &'a [u8],
}

/// Whether `token` may enroll an agent called `name` now: the token is known, unused and unexpired,
/// and no active agent has the name (compared without regard to ASCII case: `web1` and `WEB1` would
/// be one host to the people reading alerts). Reads only; [`enroll`] checks again as it writes.
pub fn check_enrollment(conn: &Connection, token: &str, name: &str) -> Result<(), StoreError> {
    let row: Option<(i64, Option<i64>)> = conn
        .query_row(
            "SELECT expires_ts, used_ts FROM tokens WHERE hash = ?1",
            [token_hash(token)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match row {
        None => return Err(StoreError::UnknownToken),
        Some((_, Some(_))) => return Err(StoreError::UsedToken),
        Some((expires, None)) if expires < Timestamp::now().as_nanos() => {
            return Err(StoreError::ExpiredToken);
        }
        Some(_) => {}
    }
    let holder: Option<String> = conn
        .query_row(
            "SELECT id FROM agents WHERE name = ?1 COLLATE NOCASE AND status = 'active' LIMIT 1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    match holder {
        Some(agent_id) => Err(StoreError::NameTaken {
            name: name.to_string(),
            agent_id,
        }),
        None => Ok(()),
    }
}

/// Spends `token` and records the agent, in one transaction: a token enrolls exactly one agent, and
/// a name belongs to one active agent. A refusal spends nothing.
pub fn enroll(
    conn: &mut Connection,
    token: &str,
    agent: &NewAgent<'_>,
) -> Result<AgentKey, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    check_enrollment(&tx, token, agent.name)?;
    let hash = token_hash(token);
    let now = Timestamp::now();
    tx.execute(
        "UPDATE tokens SET used_ts = ?1, used_by = ?2 WHERE hash = ?3",
        params![now.as_nanos(), agent.id, hash],
    )?;
    tx.execute(
        "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash, head_signature,
             certificate)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            agent.id,
            agent.name,
            agent.host,
            agent.signing_key,
            now.as_nanos(),
            GENESIS.to_vec(),
            agent.head_signature,
            agent.certificate
        ],
    )?;
    let no = tx.last_insert_rowid();
    tx.commit()?;
    Ok(AgentKey {
        no,
        id: agent.id.to_string(),
        name: agent.name.to_string(),
        signing_key: agent.signing_key.to_vec(),
        active: true,
    })
}

pub fn agent_keys(conn: &Connection) -> Result<Vec<AgentKey>, StoreError> {
    let mut stmt = conn.prepare("SELECT no, id, signing_key, status, name FROM agents")?;
    let rows = stmt.query_map([], |r| {
        Ok(AgentKey {
            no: r.get(0)?,
            id: r.get(1)?,
            name: r.get(4)?,
            signing_key: r.get(2)?,
            active: r.get::<_, String>(3)? == "active",
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    /// The bundled SQLite (both binaries, the store and the agent's spool) is built without what
    /// neither uses (`.cargo/config.toml`): full-text search, R-Tree, `dbstat`, JSON functions and
    /// loadable extensions. A database written by someone else cannot then reach that code (crafted
    /// full-text shadow tables have corrupted memory in SQLite before), and the agent's executable,
    /// resident at idle, is about half a megabyte smaller.
    #[test]
    fn the_bundled_sqlite_has_no_full_text_search_json_or_extensions() -> Result<(), rusqlite::Error>
    {
        let conn = Connection::open_in_memory()?;
        for module in ["fts3", "fts4", "fts5", "rtree", "dbstat"] {
            let created = conn.execute_batch(&format!("CREATE VIRTUAL TABLE t USING {module}(x)"));
            let error = created.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                error.contains(&format!("no such module: {module}")),
                "{module}: {error:?}"
            );
        }
        for call in ["json('{}')", "load_extension('x')"] {
            let error = conn
                .query_row(&format!("SELECT {call}"), [], |_| Ok(()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("no such function"), "{call}: {error:?}");
        }
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        assert!(
            options.iter().any(|o| o == "OMIT_LOAD_EXTENSION"),
            "{options:?}"
        );
        Ok(())
    }
}
