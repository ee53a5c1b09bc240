//! The collector's TOML configuration: a raw serde struct with defaults, then validated settings.

use std::path::Path;

use bannin::config::ConfigError;
use serde::Deserialize;

use crate::detect::{DetectConfig, Engine};
use crate::hooks::HooksConfig;

/// `[server]`: how the collector listens and what it accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; `--listen` overrides it. Default `127.0.0.1:50051`.
    pub listen: String,
    /// Extra DNS names for the collector's certificate (agents always accept `bannin-collector`).
    pub server_names: Vec<String>,
    /// The most events one batch may carry; larger batches are refused with RESOURCE_EXHAUSTED.
    pub max_batch_events: usize,
    /// The largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// An agent with no event for this long is shown as `silent` by `agents`.
    #[serde(with = "bannin::time::duration_str")]
    pub silent_after: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50051".into(),
            server_names: Vec::new(),
            max_batch_events: 10_000,
            max_message_bytes: 16 * 1024 * 1024,
            silent_after: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    pub server: ServerConfig,
    /// `[alerts]`: where alerts are delivered (webhooks, e-mail) and how.
    pub alerts: HooksConfig,
    /// `[detection]`: rules, thresholds, allow-lists and de-duplication.
    pub detection: DetectConfig,
    pub metrics: crate::metrics::MetricsConfig,
    pub retention: crate::retention::RetentionConfig,
}

impl CollectorConfig {
    /// Reads, parses and validates a config file, refusing one that others could have rewritten.
    pub fn load(path: &Path) -> Result<CollectorConfig, ConfigError> {
        let config: CollectorConfig = bannin::config::load(path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: &str| ConfigError::invalid(path, message);
        if self.server.max_batch_events == 0 {
            return Err(invalid("server.max_batch_events must be at least 1"));
        }
        if self.server.max_message_bytes < 64 * 1024 {
            return Err(invalid("server.max_message_bytes must be at least 65536"));
        }
        self.alerts
            .validate()
            .map_err(|error| invalid(&error.to_string()))?;
        Engine::new(&self.detection).map_err(|error| invalid(&error.to_string()))?;
        Ok(())
    }
}
