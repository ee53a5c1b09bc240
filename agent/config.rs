//! The agent's TOML configuration: a raw serde struct with defaults (every key optional, unknown keys
//! refused by name), checked into [`Settings`] when it is loaded, before anything starts: each
//! sensor's `config.rs` turns its own section into that sensor's settings.

use std::path::Path;
use std::time::Duration;

use bannin::config::ConfigError;
use serde::Deserialize;

use crate::sender::SenderConfig;
use crate::sensors::SensorSettings;
use crate::sensors::db::{self, DatabaseConfig};
use crate::sensors::files::FilesConfig;
use crate::sensors::net::NetConfig;
use crate::sensors::process::ProcessConfig;

/// `[agent]`: identity-independent behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// How often the agent reports that it is alive (`agent.heartbeat`), with its spool backlog.
    #[serde(with = "bannin::time::duration_str")]
    pub heartbeat: Duration,
    /// The collector URL; defaults to the one the agent enrolled with.
    pub collector: Option<String>,
    /// Several collectors sharing one store: the agent sends to the first that answers and moves
    /// on to the next when one fails. Instead of `collector`.
    pub collectors: Vec<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            heartbeat: Duration::from_secs(15),
            collector: None,
            collectors: Vec::new(),
        }
    }
}

/// `[spool]`: the durable queue in the state directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Bound on the spool's event bytes; beyond it the oldest events are dropped and reported
    /// with `agent.dropped`, except the one batch (at most 4 MiB) on its way to the collector,
    /// which may exceed it until its delivery settles. Default 1 GiB.
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

/// A checked configuration: what `agent run` starts with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent: AgentSection,
    pub spool: SpoolSection,
    pub sender: SenderConfig,
    pub sensors: SensorSettings,
}

impl AgentConfig {
    /// Reads, parses and checks a configuration file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let config: AgentConfig = bannin::config::load(path)?;
        config.settings(path)
    }

    /// Checks every section; an error names `path` and the section's key, in one line.
    pub fn settings(self, path: &Path) -> Result<Settings, ConfigError> {
        let invalid = |message: String| ConfigError::invalid(path, message);
        if self.spool.max_bytes < 1024 * 1024 {
            return Err(invalid("spool.max_bytes must be at least 1048576".into()));
        }
        if self.sender.batch_events == 0 {
            return Err(invalid("sender.batch_events must be at least 1".into()));
        }
        if self.agent.collector.is_some() && !self.agent.collectors.is_empty() {
            return Err(invalid(
                "agent.collector and agent.collectors are both set; list every collector in agent.collectors".into(),
            ));
        }
        if let Some(bad) = self
            .agent
            .collectors
            .iter()
            .chain(self.agent.collector.iter())
            .find(|url| !(url.starts_with("https://") || url.starts_with("http://")))
        {
            return Err(invalid(format!(
                "agent.collectors: {bad:?} is not a collector URL (https://HOST:PORT)"
            )));
        }
        if self.agent.heartbeat < Duration::from_secs(1) {
            return Err(invalid("agent.heartbeat must be at least 1s".into()));
        }
        let files = self
            .files
            .settings()
            .map_err(|error| invalid(error.to_string()))?;
        let process = self
            .process
            .settings()
            .map_err(|error| invalid(error.to_string()))?;
        let network = self
            .network
            .settings()
            .map_err(|error| invalid(error.to_string()))?;
        let databases = db::settings(self.database).map_err(|error| invalid(error.to_string()))?;
        Ok(Settings {
            agent: self.agent,
            spool: self.spool,
            sender: self.sender,
            sensors: SensorSettings {
                files,
                process,
                network,
                databases,
            },
        })
    }
}

#[cfg(test)]
mod collectors_tests {
    use super::*;

    fn settings(agent: &str) -> Result<Settings, ConfigError> {
        let config: AgentConfig = toml::from_str(&format!("[agent]\n{agent}")).unwrap();
        config.settings(Path::new("agent.toml"))
    }

    #[test]
    fn collectors_are_urls_and_exclude_collector() {
        let ok = settings("collectors = [\"https://c1:50051\", \"https://c2:50051\"]").unwrap();
        assert_eq!(ok.agent.collectors.len(), 2);
        let both =
            settings("collector = \"https://c1:50051\"\ncollectors = [\"https://c2:50051\"]")
                .unwrap_err()
                .to_string();
        assert!(both.contains("both set"), "{both}");
        let bad = settings("collectors = [\"c1:50051\"]")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("is not a collector URL"), "{bad}");
    }
}
