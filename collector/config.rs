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
    /// How many batches are read, verified and committed at once, across all agents; each agent
    /// has at most one in flight. Bounds the memory that batches can take.
    pub max_concurrent_batches: usize,
    /// Live connections allowed from one remote address; more are closed at once.
    pub max_connections_per_address: usize,
    /// How long a client has to finish the TLS handshake before its connection is closed.
    #[serde(with = "bannin::time::duration_str")]
    pub handshake_timeout: std::time::Duration,
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
            max_message_bytes: 8 * 1024 * 1024,
            max_concurrent_batches: 4,
            max_connections_per_address: 128,
            handshake_timeout: std::time::Duration::from_secs(10),
            silent_after: std::time::Duration::from_secs(60),
        }
    }
}

/// `[store]`: where the collector keeps what it stores.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A PostgreSQL store several collectors share (`postgres://USER@HOST/DB`); unset: the SQLite
    /// store in the data directory. `serve --store` overrides it.
    pub url: Option<String>,
    /// On a PostgreSQL store, detection waits behind the oldest transaction open anywhere on the
    /// server; a wait longer than this raises a `detection-lag` alert. Default "60s".
    #[serde(with = "bannin::time::duration_str")]
    pub lag_alert_after: std::time::Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            lag_alert_after: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// `[alerts]`: where alerts are delivered (webhooks, e-mail) and how.
    pub alerts: HooksConfig,
    /// `[detection]`: rules, thresholds, allow-lists and de-duplication.
    pub detection: DetectConfig,
    pub metrics: crate::metrics::MetricsConfig,
    pub retention: crate::retention::RetentionConfig,
    /// `[checkpoints]`: signed statements of what the store holds, sent off the box.
    pub checkpoints: crate::checkpoint::CheckpointConfig,
    /// `[console]`: the web console.
    pub console: crate::console::ConsoleConfig,
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
        if let Some(url) = &self.store.url
            && let Err(error) = crate::store::pg::Target::parse(url)
        {
            return Err(invalid(&format!("store.url: {error}")));
        }
        if self.server.max_batch_events == 0 {
            return Err(invalid("server.max_batch_events must be at least 1"));
        }
        if self.server.max_message_bytes < 64 * 1024 {
            return Err(invalid("server.max_message_bytes must be at least 65536"));
        }
        if self.server.max_message_bytes > 64 * 1024 * 1024 {
            return Err(invalid("server.max_message_bytes must be at most 67108864"));
        }
        if self.server.max_concurrent_batches == 0 || self.server.max_concurrent_batches > 64 {
            return Err(invalid("server.max_concurrent_batches must be 1 to 64"));
        }
        if self.server.max_connections_per_address == 0 {
            return Err(invalid(
                "server.max_connections_per_address must be at least 1",
            ));
        }
        if self.server.handshake_timeout.is_zero() {
            return Err(invalid("server.handshake_timeout must be more than 0s"));
        }
        self.console
            .validate()
            .map_err(|message| invalid(&message))?;
        self.checkpoints
            .validate()
            .map_err(|message| invalid(&message))?;
        self.alerts
            .validate()
            .map_err(|error| invalid(&error.to_string()))?;
        Engine::new(&self.detection).map_err(|error| invalid(&error.to_string()))?;
        Ok(())
    }
}
