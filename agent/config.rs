//! The agent's TOML configuration: a raw serde struct with defaults (every key optional, unknown keys
//! refused by name), validated before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sender::SenderConfig;
use crate::sensors::db::DatabaseConfig;
use crate::sensors::files::FilesConfig;
use crate::sensors::net::NetConfig;
use crate::sensors::process::ProcessConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} is writable by group or others (mode {mode:o}); run chmod go-w on it")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// `[agent]`: identity-independent behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// How often the agent reports that it is alive (`agent.heartbeat`), with its spool backlog.
    #[serde(with = "bannin::time::duration_str")]
    pub heartbeat: Duration,
    /// The collector URL; defaults to the one the agent enrolled with.
    pub collector: Option<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            heartbeat: Duration::from_secs(15),
            collector: None,
        }
    }
}

/// `[spool]`: the durable queue in the state directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Bound on the spool's event bytes; beyond it the oldest events are dropped and reported
    /// with `agent.dropped`. Default 1 GiB.
    pub max_bytes: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection { max_bytes: 1 << 30 }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub spool: SpoolSection,
    pub sender: SenderConfig,
    pub files: FilesConfig,
    pub process: ProcessConfig,
    pub network: NetConfig,
    /// `[[database]]`: database servers whose audit logs this agent reads.
    pub database: Vec<DatabaseConfig>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        check_permissions(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig =
            bannin::config::parse_toml(text).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        if config.spool.max_bytes < 1024 * 1024 {
            return Err(invalid("spool.max_bytes must be at least 1048576"));
        }
        if config.sender.batch_events == 0 {
            return Err(invalid("sender.batch_events must be at least 1"));
        }
        config
            .process
            .validate()
            .map_err(|error| invalid(&format!("process: {error}")))?;
        if config.agent.heartbeat < Duration::from_secs(1) {
            return Err(invalid("agent.heartbeat must be at least 1s"));
        }
        Ok(config)
    }
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(ConfigError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), ConfigError> {
    Ok(())
}
