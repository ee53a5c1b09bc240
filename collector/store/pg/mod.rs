//! The collector's PostgreSQL store: what several collectors share (`--store postgres://…`).
//!
//! The tables mirror the SQLite store's, in PostgreSQL's types; `events` and `batches` are
//! partitioned by the day the collector received a batch, so retention can drop whole days. Every
//! session gets a statement timeout and an idle-in-transaction timeout, so one stuck collector
//! cannot hold locks (or the detection horizon) for long.
//!
//! Ingest (`ingest.rs`) runs one transaction per batch on any collector: the agent's row in `agents`
//! is the chain's head, locked with `SELECT … FOR UPDATE`, so two collectors given the same agent's
//! batches take turns and each sees the other's commit. The read commands use `read.rs`.

pub mod console;
pub mod ingest;
pub mod prune;
pub mod read;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bannin::chain::GENESIS;
use bannin::time::Timestamp;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, GenericClient};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{AgentKey, NewAgent, StoreError, token_hash};

/// How long one statement may run before PostgreSQL cancels it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a session may sit idle inside a transaction before PostgreSQL ends it: a collector that
/// stops mid-transaction must not hold an agent's head row or the detection horizon.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections one collector keeps to the store for ingest and enrollment.
const POOL_SIZE: usize = 16;

/// Serialises schema creation between collectors starting together (`pg_advisory_xact_lock`).
const SCHEMA_LOCK: i64 = 0x6261_6e6e_696e_0001;
/// Serialises enrollments: a name belongs to one active agent.
const ENROLL_LOCK: i64 = 0x6261_6e6e_696e_0002;

/// Where a PostgreSQL store is and how to reach it.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `url` names a PostgreSQL store (rather than a SQLite one).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn bad_url(shown: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::BadUrl {
        url: shown.to_string(),
        reason: reason.to_string(),
    }
}

/// The URL as it may be shown: the password, if any, replaced.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl Target {
    /// Parses `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]`. TLS is used when the URL asks for
    /// it (`sslmode=require`), verified against the web PKI roots and the PEM file named by
    /// `sslrootcert=PATH`; without `sslmode` the connection is plain (no opportunistic TLS that a
    /// man in the middle could decline).
    pub fn parse(url: &str) -> Result<Target, StoreError> {
        let shown = redact(url);
        if !is_postgres_url(url) {
            return Err(bad_url(&shown, "it must start with postgres://"));
        }
        // sslrootcert is libpq's; tokio-postgres does not know it, so it is taken out here.
        let mut root_file = None;
        let kept = match url.split_once('?') {
            Some((base, query)) => {
                let mut rest = Vec::new();
                for pair in query.split('&') {
                    match pair.strip_prefix("sslrootcert=") {
                        Some(path) => root_file = Some(PathBuf::from(path)),
                        None => rest.push(pair),
                    }
                }
                if rest.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", rest.join("&"))
                }
            }
            None => url.to_string(),
        };
        let mut config: tokio_postgres::Config =
            kept.parse().map_err(|error| bad_url(&shown, error))?;
        if config.get_dbname().is_none() {
            return Err(bad_url(
                &shown,
                "it names no database (postgres://USER@HOST/DB)",
            ));
        }
        if config.get_ssl_mode() == SslMode::Prefer {
            config.ssl_mode(SslMode::Disable);
        }
        let mut options = config.get_options().unwrap_or("").to_string();
        options.push_str(&format!(
            " -c statement_timeout={} -c idle_in_transaction_session_timeout={} -c client_min_messages=warning",
            STATEMENT_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        ));
        config.options(options.trim());
        if config.get_application_name().is_none() {
            config.application_name("bannin-collector");
        }
        config.connect_timeout(Duration::from_secs(10));
        let tls = tls_connector(root_file.as_deref()).map_err(|error| bad_url(&shown, error))?;
        Ok(Target { config, tls, shown })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// One session of its own (detection's leader lock lives on one), its connection driven by a
    /// task on the current runtime.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) =
            self.config
                .connect(self.tls.clone())
                .await
                .map_err(|source| StoreError::Connect {
                    url: self.shown.clone(),
                    reason: pg_message(&source),
                })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %pg_message(&error), "store session ended");
            }
        });
        Ok(client)
    }

    /// A pool of sessions for ingest and enrollment.
    pub fn pool(&self) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|error| StoreError::Connect {
                url: self.shown.clone(),
                reason: error.to_string(),
            })
    }
}

fn tls_connector(root_file: Option<&std::path::Path>) -> Result<MakeRustlsConnect, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|error| format!("cannot read sslrootcert {}: {error}", path.display()))?;
        for cert in certs {
            let cert =
                cert.map_err(|error| format!("bad sslrootcert {}: {error}", path.display()))?;
            roots
                .add(cert)
                .map_err(|error| format!("bad sslrootcert {}: {error}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| error.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// PostgreSQL's own message for an error (tokio-postgres's display says only "db error").
pub fn pg_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    name text NOT NULL,
    host text NOT NULL,
    signing_key bytea NOT NULL,
    enrolled_ts bigint NOT NULL,
    last_seen_ts bigint,
    last_seq bigint NOT NULL DEFAULT 0,
    head_hash bytea NOT NULL,
    status text NOT NULL DEFAULT 'active',
    spool_events bigint NOT NULL DEFAULT 0,
    spool_bytes bigint NOT NULL DEFAULT 0,
    certificate text,
    head_signature bytea,
    witness_seq bigint,
    witness_hash bytea,
    witness_signature bytea
);
CREATE TABLE IF NOT EXISTS tokens (
    hash bytea PRIMARY KEY,
    created_ts bigint NOT NULL,
    expires_ts bigint NOT NULL,
    used_ts bigint,
    used_by text
);
-- Partitioned by the day a collector received the batch (received_ts), so retention drops the
-- oldest days, always a prefix of every agent's chain. The agent's head row, not a unique index,
-- keeps an event from being stored twice.
CREATE TABLE IF NOT EXISTS events (
    agent_no bigint NOT NULL,
    seq bigint NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL,
    path text,
    payload bytea NOT NULL,
    hash bytea NOT NULL,
    received_ts bigint NOT NULL,
    -- The transaction that stored it (COPY leaves it to the default): detection reads a batch's
    -- events by it.
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
) PARTITION BY RANGE (received_ts);
CREATE TABLE IF NOT EXISTS events_default PARTITION OF events DEFAULT;
CREATE INDEX IF NOT EXISTS events_agent_seq ON events (agent_no, seq);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_agent_ts ON events (agent_no, ts);
-- One row per accepted batch, with the transaction that wrote it: detection reads batches in
-- (xid, agent, seq) order below the oldest transaction still running.
CREATE TABLE IF NOT EXISTS batches (
    agent_no bigint NOT NULL,
    last_seq bigint NOT NULL,
    first_seq bigint NOT NULL,
    prev_hash bytea NOT NULL,
    head_hash bytea NOT NULL,
    signature bytea NOT NULL,
    received_ts bigint NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
) PARTITION BY RANGE (received_ts);
CREATE TABLE IF NOT EXISTS batches_default PARTITION OF batches DEFAULT;
CREATE INDEX IF NOT EXISTS batches_agent ON batches (agent_no, last_seq);
CREATE INDEX IF NOT EXISTS batches_xid ON batches (xid, agent_no, last_seq);
CREATE TABLE IF NOT EXISTS findings (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_no bigint NOT NULL,
    ts bigint NOT NULL,
    kind text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    detail text NOT NULL,
    signature bytea,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE TABLE IF NOT EXISTS operators (
    name text PRIMARY KEY,
    created_ts bigint NOT NULL,
    status text NOT NULL DEFAULT 'active',
    revoked_ts bigint
);
CREATE TABLE IF NOT EXISTS pruned (
    agent_no bigint PRIMARY KEY,
    through_seq bigint NOT NULL,
    pruned_ts bigint NOT NULL,
    signature bytea
);
CREATE TABLE IF NOT EXISTS alerts (
    id text PRIMARY KEY,
    rule text NOT NULL,
    severity text NOT NULL,
    ts bigint NOT NULL,
    updated_ts bigint NOT NULL,
    host text NOT NULL,
    count bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE TABLE IF NOT EXISTS alert_chain (
    n bigint PRIMARY KEY,
    alert_id text NOT NULL,
    body_hash bytea NOT NULL,
    hash bytea NOT NULL,
    signature bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS hook_outbox (
    alert_id text NOT NULL,
    sink text NOT NULL,
    payload text NOT NULL,
    version bigint NOT NULL DEFAULT 1,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0,
    next_attempt_ns bigint NOT NULL,
    last_error text,
    enqueued_ns bigint NOT NULL,
    delivered_ns bigint,
    PRIMARY KEY (alert_id, sink)
);
CREATE INDEX IF NOT EXISTS hook_outbox_due ON hook_outbox (sink, state, next_attempt_ns);
-- Where the detection leader has read to (leader.rs): one row.
CREATE TABLE IF NOT EXISTS detection_cursor (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    xid xid8 NOT NULL,
    kind integer NOT NULL,
    agent_no bigint NOT NULL,
    n bigint NOT NULL
);
";

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// A test hook: `BANNIN_TEST_CLOCK_SHIFT=-3d` (any `parse_duration` text, optionally negative)
/// moves this collector's receipt clock, the one that stamps `received_ts`, names the partitions
/// it creates and ages batches for retention, so a test can store batches "received" on earlier
/// days through the real binaries without waiting days. Nothing else reads it; unset, the clock
/// is the system's.
pub const CLOCK_SHIFT: &str = "BANNIN_TEST_CLOCK_SHIFT";

/// The shift [`CLOCK_SHIFT`] asks for, in nanoseconds (read once).
fn clock_shift() -> i64 {
    static SHIFT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SHIFT.get_or_init(|| {
        let Ok(text) = std::env::var(CLOCK_SHIFT) else {
            return 0;
        };
        let (sign, magnitude) = match text.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.as_str()),
        };
        match bannin::time::parse_duration(magnitude) {
            Ok(shift) => {
                tracing::warn!(shift = %text, "test clock shift in effect: receipt times are moved");
                sign * i64::try_from(shift.as_nanos()).unwrap_or(i64::MAX)
            }
            Err(error) => {
                tracing::warn!(%error, "{CLOCK_SHIFT} ignored");
                0
            }
        }
    })
}

/// The collector's receipt clock on a PostgreSQL store: now, moved only by [`CLOCK_SHIFT`].
pub fn receipt_now() -> Timestamp {
    Timestamp::from_nanos(Timestamp::now().as_nanos().saturating_add(clock_shift()))
}

/// The day partition holding what was received at `ts`: `events_d{day}` and `batches_d{day}`.
pub fn day_of(ts: Timestamp) -> i64 {
    ts.as_nanos().div_euclid(NANOS_PER_DAY)
}

/// When day `day` ends (its partitions take receipt times below this).
pub fn day_end(day: i64) -> Timestamp {
    Timestamp::from_nanos(day.saturating_add(1).saturating_mul(NANOS_PER_DAY))
}

/// Whether the store's tables are there (the last table the schema creates).
async fn schema_present(client: &impl GenericClient) -> Result<bool, StoreError> {
    Ok(client
        .query_one("SELECT to_regclass('detection_cursor') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Creates the tables if they are missing (collectors starting together take turns), and the
/// partitions for the coming days. A store already made takes no DDL, and so no lock: `CREATE …
/// IF NOT EXISTS` still locks the table it names, and would queue behind (and then block) ingest.
pub async fn prepare(client: &mut Client) -> Result<(), StoreError> {
    if !schema_present(client).await? {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        if !schema_present(&tx).await? {
            tx.batch_execute(SCHEMA).await?;
        }
        tx.commit().await?;
    }
    console::prepare(client).await?;
    ensure_partitions(client, receipt_now()).await
}

/// Makes sure `events` and `batches` have a partition for the day of `now` and the two after it, so
/// ingest never writes into the default partition (which a later day's partition could not be
/// carved out of). Only a missing partition is created, waiting at most a few seconds for the lock
/// on its table (a long ingest transaction makes it try again on the next round, a day early).
pub async fn ensure_partitions(client: &mut Client, now: Timestamp) -> Result<(), StoreError> {
    let today = day_of(now);
    for day in today..today + 3 {
        let (from, to) = (day * NANOS_PER_DAY, (day + 1) * NANOS_PER_DAY);
        for table in ["events", "batches"] {
            let name = format!("{table}_d{day}");
            let present: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await?
                .get(0);
            if present {
                continue;
            }
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = '5s';
                 CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table}
                 FOR VALUES FROM ({from}) TO ({to})"
            ))
            .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Opens the store for a command that writes: connects and makes sure the schema is there.
pub async fn open(target: &Target) -> Result<Client, StoreError> {
    let mut client = target.connect().await?;
    prepare(&mut client).await?;
    Ok(client)
}

/// Opens the store for a command that only reads: no DDL, and a store not made yet is an error.
pub async fn open_existing(target: &Target) -> Result<Client, StoreError> {
    let client = target.connect().await?;
    if !schema_present(&client).await? {
        return Err(StoreError::NoPgStore {
            url: target.shown().to_string(),
        });
    }
    Ok(client)
}

/// Records a new enrollment token; only its hash is kept.
pub async fn add_token(
    client: &impl GenericClient,
    token: &str,
    expires: Timestamp,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO tokens (hash, created_ts, expires_ts) VALUES ($1, $2, $3)",
            &[
                &token_hash(token),
                &Timestamp::now().as_nanos(),
                &expires.as_nanos(),
            ],
        )
        .await?;
    Ok(())
}

/// As [`super::check_enrollment`]: the token is known, unused and unexpired, and no active agent
/// has the name (ASCII case ignored).
pub async fn check_enrollment(
    client: &impl GenericClient,
    token: &str,
    name: &str,
) -> Result<(), StoreError> {
    let row = client
        .query_opt(
            "SELECT expires_ts, used_ts FROM tokens WHERE hash = $1",
            &[&token_hash(token)],
        )
        .await?;
    match row.map(|r| (r.get::<_, i64>(0), r.get::<_, Option<i64>>(1))) {
        None => return Err(StoreError::UnknownToken),
        Some((_, Some(_))) => return Err(StoreError::UsedToken),
        Some((expires, None)) if expires < Timestamp::now().as_nanos() => {
            return Err(StoreError::ExpiredToken);
        }
        Some(_) => {}
    }
    let holder = client
        .query_opt(
            "SELECT id FROM agents
             WHERE translate(name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
                 = translate($1, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
               AND status = 'active' LIMIT 1",
            &[&name],
        )
        .await?;
    match holder {
        Some(row) => Err(StoreError::NameTaken {
            name: name.to_string(),
            agent_id: row.get(0),
        }),
        None => Ok(()),
    }
}

/// Spends `token` and records the agent in one transaction, enrollments serialised across
/// collectors so a name belongs to one active agent. A refusal spends nothing.
pub async fn enroll(
    client: &mut Client,
    token: &str,
    agent: &NewAgent<'_>,
) -> Result<AgentKey, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ENROLL_LOCK])
        .await?;
    check_enrollment(&tx, token, agent.name).await?;
    let now = Timestamp::now().as_nanos();
    tx.execute(
        "UPDATE tokens SET used_ts = $1, used_by = $2 WHERE hash = $3",
        &[&now, &agent.id, &token_hash(token)],
    )
    .await?;
    let row = tx
        .query_one(
            "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash,
                 head_signature, certificate)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING no",
            &[
                &agent.id,
                &agent.name,
                &agent.host,
                &agent.signing_key,
                &now,
                &GENESIS.as_slice(),
                &agent.head_signature,
                &agent.certificate,
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(AgentKey {
        no: row.get(0),
        id: agent.id.to_string(),
        name: agent.name.to_string(),
        signing_key: agent.signing_key.to_vec(),
        active: true,
    })
}

pub async fn agent_keys(client: &impl GenericClient) -> Result<Vec<AgentKey>, StoreError> {
    let rows = client
        .query("SELECT no, id, signing_key, status, name FROM agents", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| AgentKey {
            no: r.get(0),
            id: r.get(1),
            signing_key: r.get(2),
            active: r.get::<_, &str>(3) == "active",
            name: r.get(4),
        })
        .collect())
}

/// As [`super::operators::add_operator`]: a name is issued once.
pub async fn add_operator(client: &impl GenericClient, name: &str) -> Result<(), StoreError> {
    let inserted = client
        .execute(
            "INSERT INTO operators (name, created_ts) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &Timestamp::now().as_nanos()],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::OperatorExists {
            name: name.to_string(),
        });
    }
    Ok(())
}

pub async fn revoke_operator(client: &impl GenericClient, name: &str) -> Result<(), StoreError> {
    let changed = client
        .execute(
            "UPDATE operators SET status = 'revoked', revoked_ts = $1 WHERE name = $2",
            &[&Timestamp::now().as_nanos(), &name],
        )
        .await?;
    if changed == 0 {
        return Err(StoreError::UnknownOperator {
            name: name.to_string(),
        });
    }
    Ok(())
}

pub async fn revoke_agent(client: &impl GenericClient, agent_id: &str) -> Result<(), StoreError> {
    let changed = client
        .execute(
            "UPDATE agents SET status = 'revoked' WHERE id = $1",
            &[&agent_id],
        )
        .await?;
    if changed == 0 {
        return Err(StoreError::UnknownAgent {
            agent_id: agent_id.to_string(),
        });
    }
    Ok(())
}

pub async fn operator_standing(
    client: &impl GenericClient,
    name: &str,
) -> Result<super::operators::Standing, StoreError> {
    use super::operators::Standing;
    let row = client
        .query_opt("SELECT status FROM operators WHERE name = $1", &[&name])
        .await?;
    Ok(match row.as_ref().map(|r| r.get::<_, &str>(0)) {
        Some("active") => Standing::Active,
        Some(_) => Standing::Revoked,
        None => Standing::Unknown,
    })
}

pub async fn operators(
    client: &impl GenericClient,
) -> Result<Vec<super::operators::OperatorRow>, StoreError> {
    let rows = client
        .query(
            "SELECT name, created_ts, status FROM operators ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| super::operators::OperatorRow {
            name: r.get(0),
            created: Timestamp::from_nanos(r.get(1)),
            status: r.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_hides_the_password() {
        assert_eq!(
            redact("postgres://bob:secret@db.example:5432/bannin?sslmode=require"),
            "postgres://bob:***@db.example:5432/bannin?sslmode=require"
        );
        assert_eq!(
            redact("postgres://bob@db/bannin"),
            "postgres://bob@db/bannin"
        );
        assert_eq!(redact("postgres://db/bannin"), "postgres://db/bannin");
    }

    #[test]
    fn a_url_without_a_database_is_refused_in_one_line() {
        let error = Target::parse("postgres://bob:secret@db.example").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("names no database"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(Target::parse("mysql://db/x").is_err());
        assert!(Target::parse("postgres://bob@db/bannin?sslrootcert=/nonexistent.pem").is_err());
        let target = Target::parse("postgres://bob@db/bannin").unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Disable);
        assert!(
            target
                .config
                .get_options()
                .unwrap()
                .contains("idle_in_transaction_session_timeout=30000")
        );
    }
}
