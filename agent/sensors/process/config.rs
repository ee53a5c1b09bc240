//! The `[process]` section of the agent's configuration, and the settings it is checked into
//! when the configuration is loaded.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which way the process sensor learns about processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// eBPF programs when they can be loaded (Linux, root, a kernel with BTF), else the kernel's
    /// process-events connector when it can be opened (Linux, root), else polling.
    #[default]
    Auto,
    /// Only the eBPF programs; the sensor fails to start without them.
    Ebpf,
    /// Only the process-events connector; the sensor fails to start without it.
    Connector,
    /// Only polling the process list; short-lived processes may be missed.
    Poll,
}

/// `[process]`: process starts and exits, and the process table other sensors ask "who is pid N".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Whether to emit `process.start` and `process.exit` events. Default: true.
    pub enabled: bool,
    /// "auto" (default), "ebpf", "connector" or "poll".
    pub backend: Backend,
    /// How often the poll backend lists processes. Default: "2s".
    #[serde(with = "bannin::time::duration_str")]
    pub poll_interval: Duration,
    /// How many exited processes the table remembers for late questions. Default: 10000.
    pub remember_exited: usize,
    /// How long the table remembers an exited process. Default: "5m".
    #[serde(with = "bannin::time::duration_str")]
    pub remember_for: Duration,
    /// How many process events may wait between the kernel socket and the spool. Default: 16384.
    pub queue_capacity: usize,
    /// How often the connector backend samples live processes' I/O counters, so that an exit can
    /// report them even when the process is already gone; "0s" turns sampling off. Default: "10s".
    #[serde(with = "bannin::time::duration_str")]
    pub io_sample_interval: Duration,
    /// The eBPF backend's kernel-to-agent ring buffer, in bytes: a power of two, at least 4096.
    /// Events that find it full are counted by the kernel and reported. Default: 524288 (512 KiB).
    pub ebpf_ring_buffer_bytes: u32,
}

/// 512 KiB: the fork, exec and exit records of 2,260 short commands like `/bin/true` (232 bytes
/// in the ring), or of 119 with 4 KiB of arguments. The agent maps it once (`ebpf/ring.rs`), so it
/// is this much of the agent's resident memory. BENCHMARKS.md has the measurements.
const EBPF_RING_BUFFER_BYTES: u32 = 512 << 10;

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            enabled: true,
            backend: Backend::Auto,
            poll_interval: Duration::from_secs(2),
            remember_exited: 10_000,
            remember_for: Duration::from_secs(300),
            queue_capacity: 16_384,
            io_sample_interval: Duration::from_secs(10),
            ebpf_ring_buffer_bytes: EBPF_RING_BUFFER_BYTES,
        }
    }
}

/// A `[process]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[process] poll_interval must be at least 100ms")]
    PollIntervalTooShort,
    #[error("[process] queue_capacity must be at least 1")]
    EmptyQueue,
    #[error("[process] ebpf_ring_buffer_bytes must be a power of two of at least 4096, not {0}")]
    RingBuffer(u32),
}

impl ProcessConfig {
    /// Checks the section: what the sensor and the process table run with.
    pub fn settings(self) -> Result<ProcessSettings, ConfigError> {
        if self.poll_interval < Duration::from_millis(100) {
            return Err(ConfigError::PollIntervalTooShort);
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::EmptyQueue);
        }
        if self.ebpf_ring_buffer_bytes < 4096 || !self.ebpf_ring_buffer_bytes.is_power_of_two() {
            return Err(ConfigError::RingBuffer(self.ebpf_ring_buffer_bytes));
        }
        Ok(ProcessSettings {
            enabled: self.enabled,
            backend: self.backend,
            poll_interval: self.poll_interval,
            remember_exited: self.remember_exited,
            remember_for: self.remember_for,
            queue_capacity: self.queue_capacity,
            io_sample_interval: self.io_sample_interval,
            ebpf_ring_buffer_bytes: self.ebpf_ring_buffer_bytes,
        })
    }
}

/// A checked [`ProcessConfig`]: the poll interval is at least 100 ms and the queue holds at least
/// one event.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    pub enabled: bool,
    pub backend: Backend,
    pub poll_interval: Duration,
    pub remember_exited: usize,
    pub remember_for: Duration,
    pub queue_capacity: usize,
    /// Zero: the connector backend does not sample I/O counters.
    pub io_sample_interval: Duration,
    pub ebpf_ring_buffer_bytes: u32,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        ProcessSettings {
            enabled: true,
            backend: Backend::Auto,
            poll_interval: Duration::from_secs(2),
            remember_exited: 10_000,
            remember_for: Duration::from_secs(300),
            queue_capacity: 16_384,
            io_sample_interval: Duration::from_secs(10),
            ebpf_ring_buffer_bytes: EBPF_RING_BUFFER_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_named() {
        let empty: ProcessConfig = toml::from_str("").unwrap();
        assert_eq!(empty, ProcessConfig::default());

        let set: ProcessConfig = toml::from_str(
            "enabled = false\nbackend = \"poll\"\npoll_interval = \"500ms\"\nremember_for = \"1m\"",
        )
        .unwrap();
        assert!(!set.enabled);
        assert_eq!(set.backend, Backend::Poll);
        assert_eq!(set.poll_interval, Duration::from_millis(500));
        assert_eq!(set.remember_for, Duration::from_secs(60));

        let error = toml::from_str::<ProcessConfig>("pol_interval = \"1s\"").unwrap_err();
        assert!(error.to_string().contains("pol_interval"), "{error}");
        let set: ProcessConfig = toml::from_str("backend = \"ebpf\"").unwrap();
        assert_eq!(set.backend, Backend::Ebpf);
        let error = toml::from_str::<ProcessConfig>("backend = \"bpf\"").unwrap_err();
        assert!(error.to_string().contains("bpf"), "{error}");
    }

    #[test]
    fn too_short_a_poll_interval_and_an_empty_queue_are_refused() {
        let config = ProcessConfig {
            poll_interval: Duration::from_millis(10),
            ..ProcessConfig::default()
        };
        assert!(matches!(
            config.settings(),
            Err(ConfigError::PollIntervalTooShort)
        ));
        let config = ProcessConfig {
            queue_capacity: 0,
            ..ProcessConfig::default()
        };
        assert!(matches!(config.settings(), Err(ConfigError::EmptyQueue)));
        for bytes in [0, 2048, 5000] {
            let config = ProcessConfig {
                ebpf_ring_buffer_bytes: bytes,
                ..ProcessConfig::default()
            };
            assert!(matches!(config.settings(), Err(ConfigError::RingBuffer(b)) if b == bytes));
        }
        assert_eq!(
            ProcessConfig::default().settings().unwrap(),
            ProcessSettings::default()
        );
    }
}
