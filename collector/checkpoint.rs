//! Signed checkpoints that leave the box.
//!
//! Every `[checkpoints] interval` the collector signs what its store holds at that moment (each
//! agent's committed head and the alert chain's newest entry) with `collector.key` and sends the
//! statement away: appended as one JSON line to a file (a mount or a log shipper takes it off the
//! host) and/or POSTed to a webhook. `verify --checkpoints FILE` then proves the store still holds
//! everything a checkpoint vouches for. That catches what the store alone cannot: an agent deleted
//! with its whole history, or a chain (agent or alerts) rolled back to an earlier signed state, by
//! someone who can write the database; it matters most for agents that never come back to
//! present their own witness.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bannin::time::Timestamp;
use reqwest::{Client, Url, redirect};
use serde::{Deserialize, Serialize};

use crate::seal::{Seal, SealKey};
use crate::store::{self, StoreError};

const CHECKPOINT_DOMAIN: &[u8] = b"bannin-checkpoint-v1\0";
/// The format version written in each checkpoint's `checkpoint` field.
pub const VERSION: u32 = 1;

/// `[checkpoints]`: where signed checkpoints go, and how often. Off unless `file` or `webhook` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// How often a checkpoint is written. Default "15m".
    #[serde(with = "bannin::time::duration_str")]
    pub interval: Duration,
    /// Append each checkpoint as one JSON line to this file.
    pub file: Option<PathBuf>,
    /// POST each checkpoint as JSON to this URL (http or https; redirects are not followed).
    pub webhook: Option<String>,
    /// How long one POST may take.
    #[serde(with = "bannin::time::duration_str")]
    pub timeout: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(15 * 60),
            file: None,
            webhook: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl CheckpointConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_secs(1) {
            return Err("checkpoints.interval must be at least 1s".into());
        }
        if self.timeout.is_zero() {
            return Err("checkpoints.timeout must be more than 0s".into());
        }
        if let Some(url) = &self.webhook {
            let parsed = Url::parse(url)
                .map_err(|error| format!("checkpoints.webhook is not a URL: {error}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err("checkpoints.webhook must be an http or https URL".into());
            }
        }
        if let Some(file) = &self.file
            && file.as_os_str().is_empty()
        {
            return Err("checkpoints.file must not be empty".into());
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some() || self.webhook.is_some()
    }
}

/// One agent's committed head as the checkpoint vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHead {
    pub agent_id: String,
    pub name: String,
    pub seq: u64,
    /// The chain hash of event `seq`, hex.
    pub hash: String,
}

/// The alert chain's newest entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub n: u64,
    pub hash: String,
}

/// A checkpoint as written: one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The format version ([`VERSION`]).
    pub checkpoint: u32,
    /// When it was taken, RFC 3339 (for people) and in nanoseconds (signed).
    pub ts: String,
    pub ts_ns: i64,
    /// The public half of the key that signed it, hex.
    pub collector_key: String,
    /// Every enrolled agent, ordered by id.
    pub agents: Vec<AgentHead>,
    pub alert_chain: ChainHead,
    /// Ed25519 over [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// What the collector reads from its store now, signed.
    pub fn take(conn: &rusqlite::Connection, seal: &Seal) -> Result<Checkpoint, StoreError> {
        let snapshot = conn.unchecked_transaction()?;
        let agents: Vec<AgentHead> = store::query::heads(&snapshot)?
            .into_iter()
            .map(|head| AgentHead {
                agent_id: head.agent_id,
                name: head.name,
                seq: head.seq,
                hash: hex::encode(head.hash),
            })
            .collect();
        let chain = store::alert_chain::head(&snapshot)?;
        drop(snapshot);
        Ok(Checkpoint::sign(agents, chain, seal))
    }

    /// As [`Checkpoint::take`], from a PostgreSQL store: the heads and the alert chain's head in
    /// one snapshot (a head moves in the same transaction as the events it vouches for).
    pub async fn take_pg(
        client: &mut tokio_postgres::Client,
        seal: &Seal,
    ) -> Result<Checkpoint, StoreError> {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let agents: Vec<AgentHead> = tx
            .query("SELECT id, name, last_seq, head_hash FROM agents", &[])
            .await?
            .iter()
            .map(|r| AgentHead {
                agent_id: r.get(0),
                name: r.get(1),
                seq: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                hash: hex::encode(r.get::<_, &[u8]>(3)),
            })
            .collect();
        let chain = match tx
            .query_opt(
                "SELECT n, hash FROM alert_chain ORDER BY n DESC LIMIT 1",
                &[],
            )
            .await?
        {
            Some(row) => (
                u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                bannin::chain::to_hash(row.get::<_, &[u8]>(1), "alert chain hash")
                    .unwrap_or(bannin::chain::GENESIS),
            ),
            None => (0, bannin::chain::GENESIS),
        };
        tx.commit().await?;
        Ok(Checkpoint::sign(agents, chain, seal))
    }

    /// The checkpoint of these heads, taken now and signed.
    fn sign(
        mut agents: Vec<AgentHead>,
        (n, hash): (u64, bannin::chain::Hash),
        seal: &Seal,
    ) -> Checkpoint {
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let ts = Timestamp::now();
        let mut checkpoint = Checkpoint {
            checkpoint: VERSION,
            ts: ts.to_rfc3339(),
            ts_ns: ts.as_nanos(),
            collector_key: seal.public().hex(),
            agents,
            alert_chain: ChainHead {
                n,
                hash: hex::encode(hash),
            },
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(seal.sign(&checkpoint.message()));
        checkpoint
    }

    /// The signed bytes: every field but the signature and the RFC 3339 copy of the time.
    pub fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 64 + self.agents.len() * 96);
        m.extend_from_slice(CHECKPOINT_DOMAIN);
        m.extend_from_slice(&self.checkpoint.to_be_bytes());
        m.extend_from_slice(&self.ts_ns.to_be_bytes());
        m.extend_from_slice(self.collector_key.as_bytes());
        m.push(0);
        m.extend_from_slice(&(self.agents.len() as u64).to_be_bytes());
        for agent in &self.agents {
            for text in [&agent.agent_id, &agent.name] {
                m.extend_from_slice(&(text.len() as u64).to_be_bytes());
                m.extend_from_slice(text.as_bytes());
            }
            m.extend_from_slice(&agent.seq.to_be_bytes());
            m.extend_from_slice(agent.hash.as_bytes());
            m.push(0);
        }
        m.extend_from_slice(&self.alert_chain.n.to_be_bytes());
        m.extend_from_slice(self.alert_chain.hash.as_bytes());
        m
    }

    /// Whether `key` signed it.
    pub fn signed_by(&self, key: &SealKey) -> bool {
        self.collector_key == key.hex()
            && hex::decode(&self.signature)
                .is_ok_and(|signature| key.check(&self.message(), &signature))
    }
}

/// The store checkpoints are taken from.
pub enum Origin {
    /// The SQLite store in this data directory.
    Sqlite(PathBuf),
    /// A PostgreSQL store, possibly shared with other collectors.
    Postgres(Box<store::pg::Target>),
}

impl Origin {
    /// Takes a checkpoint; `session` keeps a PostgreSQL session between calls (opened again when
    /// lost).
    async fn take(
        &self,
        seal: &Seal,
        session: &mut Option<tokio_postgres::Client>,
    ) -> Result<Checkpoint, String> {
        match self {
            Origin::Sqlite(dir) => {
                let (dir, seal) = (dir.clone(), seal.clone());
                tokio::task::spawn_blocking(move || {
                    let conn = store::open_reader(&dir)?;
                    Checkpoint::take(&conn, &seal)
                })
                .await
                .map_err(|_| "the checkpoint task failed".to_string())?
                .map_err(|error| error.to_string())
            }
            Origin::Postgres(target) => {
                let client = match session.take() {
                    Some(client) if !client.is_closed() => client,
                    _ => target.connect().await.map_err(|error| error.to_string())?,
                };
                let client = session.insert(client);
                Checkpoint::take_pg(client, seal)
                    .await
                    .map_err(|error| error.to_string())
            }
        }
    }
}

/// Writes a checkpoint every interval until the process ends. Each failure is logged and counted;
/// the next checkpoint vouches for everything the missed one would have.
pub async fn run(origin: Origin, config: CheckpointConfig, seal: Seal) {
    if !config.enabled() {
        return;
    }
    let client = match Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(redirect::Policy::none())
        .user_agent(concat!("bannin-collector/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the checkpoint webhook client; no checkpoints are sent");
            crate::metrics::checkpoint_failed();
            return;
        }
    };
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut session = None;
    loop {
        ticker.tick().await;
        let checkpoint = match origin.take(&seal, &mut session).await {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::error!(%error, "cannot take a checkpoint");
                crate::metrics::checkpoint_failed();
                continue;
            }
        };
        let line = match serde_json::to_string(&checkpoint) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "cannot encode a checkpoint");
                crate::metrics::checkpoint_failed();
                continue;
            }
        };
        let mut sent = true;
        if let Some(file) = &config.file {
            let (file, text) = (file.clone(), format!("{line}\n"));
            let written = tokio::task::spawn_blocking(move || append(&file, &text)).await;
            if let Some(error) = match written {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("the write task failed".into()),
            } {
                tracing::error!(file = %config.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default(), %error, "cannot write a checkpoint");
                sent = false;
            }
        }
        if let Some(url) = &config.webhook
            && let Err(error) = post(&client, url, &checkpoint, line).await
        {
            tracing::error!(%error, "cannot deliver a checkpoint to its webhook");
            sent = false;
        }
        if sent {
            tracing::debug!(ts = %checkpoint.ts, agents = checkpoint.agents.len(), "checkpoint written");
            crate::metrics::checkpoint_written();
        } else {
            crate::metrics::checkpoint_failed();
        }
    }
}

/// Appends one line and makes it durable. A link planted at the path is not followed (the
/// collector often runs as root), and only a regular file is written.
fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(nix::libc::O_NOFOLLOW);
    }
    let mut file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

async fn post(
    client: &Client,
    url: &str,
    checkpoint: &Checkpoint,
    body: String,
) -> Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            "idempotency-key",
            format!("checkpoint-{}", checkpoint.ts_ns),
        )
        .body(body)
        .send()
        .await
        // reqwest's error text includes the URL, which may be a secret.
        .map_err(|error| {
            if error.is_timeout() {
                "timed out".to_string()
            } else if error.is_connect() {
                "cannot connect".to_string()
            } else {
                "request failed".to_string()
            }
        })?;
    // The reply's body is never read: a receiver cannot make the collector hold its answer.
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// One line of a checkpoint file: its number, and the checkpoint or why it is not one.
pub type Line = (usize, Result<Checkpoint, String>);

/// Reads a checkpoint file: each line a checkpoint, or why not.
pub fn read(path: &Path) -> Result<Vec<Line>, String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|error| {
        format!(
            "cannot read the checkpoint file {}: {error}",
            path.display()
        )
    })?;
    let mut lines = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|error| {
            format!(
                "cannot read the checkpoint file {} at line {}: {error}",
                path.display(),
                index + 1
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Checkpoint>(&line)
            .map_err(|error| error.to_string())
            .and_then(|checkpoint| {
                if checkpoint.checkpoint == VERSION {
                    Ok(checkpoint)
                } else {
                    Err(format!(
                        "unknown checkpoint version {}",
                        checkpoint.checkpoint
                    ))
                }
            });
        lines.push((index + 1, parsed));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seal: &Seal) -> Checkpoint {
        let mut checkpoint = Checkpoint {
            checkpoint: VERSION,
            ts: "2026-11-29T00:00:00Z".into(),
            ts_ns: 1,
            collector_key: seal.public().hex(),
            agents: vec![AgentHead {
                agent_id: "a-1".into(),
                name: "pc-1".into(),
                seq: 7,
                hash: "ab".repeat(32),
            }],
            alert_chain: ChainHead {
                n: 2,
                hash: "cd".repeat(32),
            },
            signature: String::new(),
        };
        checkpoint.signature = hex::encode(seal.sign(&checkpoint.message()));
        checkpoint
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed() {
        let dir = tempfile::tempdir().unwrap();
        let seal = Seal::load_or_create(dir.path()).unwrap();
        let key = SealKey::load(dir.path()).unwrap();
        let checkpoint = sample(&seal);
        assert!(checkpoint.signed_by(&key));
        let line = serde_json::to_string(&checkpoint).unwrap();
        let parsed: Checkpoint = serde_json::from_str(&line).unwrap();
        assert!(parsed.signed_by(&key));
        for edit in [
            |c: &mut Checkpoint| c.agents[0].seq = 6,
            |c: &mut Checkpoint| c.agents[0].name = "pc-2".into(),
            |c: &mut Checkpoint| c.agents.clear(),
            |c: &mut Checkpoint| c.alert_chain.n = 1,
            |c: &mut Checkpoint| c.ts_ns = 2,
        ] {
            let mut edited = checkpoint.clone();
            edit(&mut edited);
            assert!(!edited.signed_by(&key), "{edited:?}");
        }
        let other = tempfile::tempdir().unwrap();
        let other_key = SealKey::load(
            Seal::load_or_create(other.path())
                .map(|_| other.path())
                .unwrap(),
        )
        .unwrap();
        assert!(!checkpoint.signed_by(&other_key));
    }

    #[test]
    fn a_link_planted_at_the_checkpoint_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("passwd");
        std::fs::write(&target, "root:x:0:0\n").unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(append(&path, "{}\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");
        std::fs::remove_file(&path).unwrap();
        append(&path, "{}\n").unwrap();
        append(&path, "{}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n{}\n");
    }

    #[test]
    fn the_config_refuses_what_cannot_work() {
        let mut config = CheckpointConfig {
            webhook: Some("ftp://example.jp/x".into()),
            ..CheckpointConfig::default()
        };
        assert!(config.validate().is_err());
        config.webhook = Some("https://example.jp/x".into());
        assert!(config.validate().is_ok());
        config.interval = Duration::from_millis(10);
        assert!(config.validate().is_err());
    }
}
