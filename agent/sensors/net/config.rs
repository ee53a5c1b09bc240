//! The `[network]` section of the agent's configuration, and the settings it is checked into
//! when the configuration is loaded.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the sensor learns about TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The eBPF program when it can be loaded (Linux, root, a kernel with BTF), else the socket
    /// tables.
    #[default]
    Auto,
    /// Only the eBPF program; the sensor fails to start without it.
    Ebpf,
    /// Only the socket tables and the kernel's socket-destruction notices.
    SockDiag,
}

/// `[network]`: outbound connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Whether to emit `net.connect` events. Default: true.
    pub enabled: bool,
    /// "auto" (default), "ebpf" or "sock_diag".
    pub backend: Backend,
    /// How often the socket tables are read. A connection that lives longer is reported with its
    /// process, and (TCP, as root) again at its close as `net.close` with its bytes; a shorter one
    /// is still reported when it closes (as root, from the kernel's socket-destruction notices),
    /// with its bytes but without its process. Every read makes the kernel walk its whole
    /// connection table, the agent's largest idle cost (about 1.1% of a core at "1s" on a 24 GiB
    /// machine). With the eBPF backend, TCP connections are not read from the tables: a
    /// connection that closes within this time of its handshake is reported at its close with its
    /// process and bytes, a longer one when this time is up, with its process, and at its close
    /// as `net.close` with its bytes. Default: "5s".
    #[serde(with = "bannin::time::duration_str")]
    pub interval: Duration,
    /// Whether connected UDP sockets (DNS lookups, QUIC) are reported too. Default: true.
    pub include_udp: bool,
    /// Whether connections to 127.0.0.0/8 and ::1 are reported. Default: true.
    pub include_loopback: bool,
    /// The eBPF backend's kernel-to-agent ring buffer, in bytes: a power of two, at least 4096.
    /// Records that find it full are counted by the kernel and reported. Default: 262144 (256 KiB).
    pub ebpf_ring_buffer_bytes: u32,
}

/// 256 KiB: the open and close records of 1,170 connections (112 bytes each in the ring). The
/// agent maps it once (`ebpf/ring.rs`), so it is this much of the agent's resident memory.
/// BENCHMARKS.md has the measurements.
const EBPF_RING_BUFFER_BYTES: u32 = 256 << 10;

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enabled: true,
            backend: Backend::Auto,
            interval: Duration::from_secs(5),
            include_udp: true,
            include_loopback: true,
            ebpf_ring_buffer_bytes: EBPF_RING_BUFFER_BYTES,
        }
    }
}

impl NetConfig {
    /// Checks the section: what the sensor runs with.
    pub fn settings(self) -> Result<NetSettings, ConfigError> {
        if self.interval < Duration::from_millis(100) {
            return Err(ConfigError::IntervalTooShort);
        }
        if self.ebpf_ring_buffer_bytes < 4096 || !self.ebpf_ring_buffer_bytes.is_power_of_two() {
            return Err(ConfigError::RingBuffer(self.ebpf_ring_buffer_bytes));
        }
        Ok(NetSettings {
            enabled: self.enabled,
            backend: self.backend,
            interval: self.interval,
            include_udp: self.include_udp,
            include_loopback: self.include_loopback,
            ebpf_ring_buffer_bytes: self.ebpf_ring_buffer_bytes,
        })
    }
}

/// A `[network]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[network] interval must be at least 100ms")]
    IntervalTooShort,
    #[error("[network] ebpf_ring_buffer_bytes must be a power of two of at least 4096, not {0}")]
    RingBuffer(u32),
}

/// A checked [`NetConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct NetSettings {
    pub enabled: bool,
    pub backend: Backend,
    pub interval: Duration,
    pub include_udp: bool,
    pub include_loopback: bool,
    pub ebpf_ring_buffer_bytes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_named() {
        let empty: NetConfig = toml::from_str("").unwrap();
        assert_eq!(empty, NetConfig::default());
        let set: NetConfig = toml::from_str("interval = \"250ms\"\ninclude_udp = false").unwrap();
        assert_eq!(set.interval, Duration::from_millis(250));
        assert!(!set.include_udp);
        assert_eq!(set.backend, Backend::Auto);
        let set: NetConfig = toml::from_str("backend = \"sock_diag\"").unwrap();
        assert_eq!(set.backend, Backend::SockDiag);
        let error = toml::from_str::<NetConfig>("intervall = \"1s\"").unwrap_err();
        assert!(error.to_string().contains("intervall"), "{error}");
        let fast = NetConfig {
            interval: Duration::from_millis(10),
            ..NetConfig::default()
        };
        let error = fast.settings().unwrap_err();
        assert_eq!(
            error.to_string(),
            "[network] interval must be at least 100ms"
        );
    }

    #[test]
    fn a_ring_buffer_that_is_no_power_of_two_of_a_page_or_more_is_refused() {
        let set: NetConfig = toml::from_str("ebpf_ring_buffer_bytes = 65536").unwrap();
        assert_eq!(set.settings().unwrap().ebpf_ring_buffer_bytes, 65536);
        for bytes in [0, 2048, 5000] {
            let config = NetConfig {
                ebpf_ring_buffer_bytes: bytes,
                ..NetConfig::default()
            };
            let error = config.settings().unwrap_err();
            assert!(matches!(error, ConfigError::RingBuffer(b) if b == bytes));
            assert_eq!(
                error.to_string(),
                format!(
                    "[network] ebpf_ring_buffer_bytes must be a power of two of at least 4096, not {bytes}"
                )
            );
        }
    }
}
