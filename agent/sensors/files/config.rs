//! The `[files]` section of the agent's configuration, and the settings it is checked into when
//! the configuration is loaded.

use std::path::PathBuf;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Which kernel interface the file sensor uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// fanotify when the agent is root on Linux and the kernel accepts the marks, notify otherwise.
    #[default]
    Auto,
    /// fanotify or nothing: the sensor fails to start when fanotify cannot be used.
    Fanotify,
    /// The portable `notify` watcher (inotify on Linux): sees what changed but not who changed it.
    Notify,
}

/// `[files]`: which trees to watch and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Directory trees to watch recursively, e.g. `["/srv/exports", "/home"]`. Default: none (the
    /// sensor idles). Paths that do not exist are reported as `sensor.error` and skipped.
    pub watch: Vec<PathBuf>,
    /// Glob patterns for paths to ignore, matched against the full path, e.g. `["**/.git/**",
    /// "**/*.swp"]`. Default: none.
    pub exclude: Vec<String>,
    /// `"auto"` (default), `"fanotify"` or `"notify"`. Auto chooses fanotify when the agent runs as
    /// root on Linux and the kernel accepts it, so events name the process, user and parent; it
    /// falls back to notify otherwise and says why in a `sensor.status` event.
    pub backend: BackendChoice,
    /// How many bytes from the start of a bulk-data file are read to count rows and personal data
    /// (e-mail addresses, phone numbers, passport numbers, card numbers). Default: 65536.
    pub sample_bytes: usize,
    /// How many paths the sensor remembers the last size, owner and inode of, so a delete or rename
    /// still carries the size the file had. The oldest entries are forgotten first. Default: 200000.
    pub remembered_paths: usize,
    /// Whether the watched trees are walked at start so files that existed before the agent still
    /// have a size when they are deleted. Default: true.
    pub scan_on_start: bool,
    /// The walk at start (and after a queue overflow) remembers only files of at least this many
    /// bytes, so a tree of many small files costs little memory; a later delete of a smaller
    /// file that existed before the agent started says `incomplete` instead of its size. Files
    /// the agent sees created or written are always remembered. 0 remembers every file.
    /// Default: 65536.
    pub scan_min_size: u64,
    /// Events buffered between the kernel reader and the spool. When the spool falls this far
    /// behind, the reader waits and the kernel's queue (`kernel_queue`) holds what comes; if that
    /// overflows too, the kernel's loss is reported in `sensor.overflow` and followed by a
    /// rescan. Default: 32768.
    pub queue_capacity: usize,
    /// Events each of the fanotify backend's three kernel queues holds while the agent is behind
    /// (a burst faster than it examines files); past it the kernel drops events, the agent reports
    /// `sensor.overflow` and rescans. The kernel's own default is 16384; the agent raises
    /// `fs.fanotify.max_queued_events` while it makes its queues and puts it back, so only its
    /// own queues are longer, and never lowers it (nor waits more than 2 s for the setting's lock). A queued event is kernel memory (some 100-300
    /// bytes, and a close-after-write pins its file until read), spent only while the agent is
    /// behind. 0 keeps the kernel's setting. Default: 131072.
    pub kernel_queue: u32,
    /// Exports (files recognised as bulk data or archives) of at least this many bytes are
    /// watched for reads: each process that reads one is reported once as `file.read`. Needs the
    /// fanotify backend; under notify reads cannot be seen, and the `sensor.status` event says so.
    /// Default: 10485760 (10 MiB, the collector's `large_export_min_size`).
    pub read_watch_min_size: u64,
    /// At most this many exports are watched for reads at once (one kernel inode mark each); an
    /// export past the bound is not watched, counted and reported in a `sensor.error` event.
    /// 0 watches none. Default: 1024.
    pub read_watch_max: usize,
    /// Whether `file.read` counts the bytes each reader read (`bytes_read`), with an eBPF
    /// program at the exit of the host's system calls (root, a kernel with BTF). While an export
    /// is watched, every system call on the host pays for it (a compare, or for a read a
    /// descriptor and a hash lookup); with none watched it is detached and costs nothing.
    /// Without it `file.read` has no `bytes_read`, and the `sensor.status` event says why.
    /// Default: true.
    pub read_bytes: bool,
    /// The agent's state directory, set by `agent run` and never read from the file: the sensor
    /// never examines or reports its own spool, wherever the watched trees are.
    #[serde(skip)]
    pub private_dir: Option<PathBuf>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            watch: Vec::new(),
            exclude: Vec::new(),
            backend: BackendChoice::Auto,
            sample_bytes: 65_536,
            remembered_paths: 200_000,
            scan_on_start: true,
            scan_min_size: 65_536,
            queue_capacity: 32_768,
            kernel_queue: 131_072,
            read_watch_min_size: 10 * 1024 * 1024,
            read_watch_max: 1024,
            read_bytes: true,
            private_dir: None,
        }
    }
}

/// A `[files]` section that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[files] invalid exclude glob {glob:?}: {source}")]
    BadGlob {
        glob: String,
        source: globset::Error,
    },
}

impl FilesConfig {
    /// Checks the section and compiles its exclude patterns: what the sensor runs with. Watch
    /// roots that do not exist are not an error (they are reported as `sensor.error` when the
    /// sensor starts, so one stale path does not stop the agent).
    pub fn settings(self) -> Result<FilesSettings, ConfigError> {
        Ok(FilesSettings {
            excludes: excludes(&self.exclude)?,
            watch: self.watch,
            backend: self.backend,
            sample_bytes: self.sample_bytes,
            remembered_paths: self.remembered_paths,
            scan_on_start: self.scan_on_start,
            scan_min_size: self.scan_min_size,
            queue_capacity: self.queue_capacity,
            kernel_queue: self.kernel_queue,
            read_watch_min_size: self.read_watch_min_size,
            read_watch_max: self.read_watch_max,
            read_bytes: self.read_bytes,
            private_dir: self.private_dir,
        })
    }
}

/// A checked [`FilesConfig`], its exclude patterns compiled; each field means what the section's
/// key of the same name says.
#[derive(Debug, Clone)]
pub struct FilesSettings {
    pub watch: Vec<PathBuf>,
    pub excludes: GlobSet,
    pub backend: BackendChoice,
    pub sample_bytes: usize,
    pub remembered_paths: usize,
    pub scan_on_start: bool,
    pub scan_min_size: u64,
    pub queue_capacity: usize,
    /// Read by the fanotify backend only, which exists on Linux alone.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub kernel_queue: u32,
    pub read_watch_min_size: u64,
    pub read_watch_max: usize,
    /// Read only where reads can be watched (fanotify, Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub read_bytes: bool,
    /// The agent's state directory, set by `agent run`.
    pub private_dir: Option<PathBuf>,
}

/// The exclude patterns, compiled.
fn excludes(patterns: &[String]) -> Result<GlobSet, ConfigError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|source| ConfigError::BadGlob {
            glob: pattern.clone(),
            source,
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|source| ConfigError::BadGlob {
        glob: patterns.join(", "),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_keys_and_rejects_unknown_ones() {
        let config: FilesConfig = toml::from_str(
            r#"
            watch = ["/srv/exports", "/home"]
            exclude = ["**/.git/**"]
            backend = "notify"
            sample_bytes = 4096
            "#,
        )
        .unwrap();
        assert_eq!(
            config.watch,
            vec![PathBuf::from("/srv/exports"), PathBuf::from("/home")]
        );
        assert_eq!(config.backend, BackendChoice::Notify);
        assert_eq!(config.sample_bytes, 4096);
        assert_eq!(config.remembered_paths, 200_000);

        let empty: FilesConfig = toml::from_str("").unwrap();
        assert_eq!(empty, FilesConfig::default());

        let error = toml::from_str::<FilesConfig>("watchh = []").unwrap_err();
        assert!(error.to_string().contains("watchh"), "{error}");
        assert!(toml::from_str::<FilesConfig>(r#"backend = "ebpf""#).is_err());

        let bad = FilesConfig {
            exclude: vec!["**/*.swp".into(), "[unclosed".into()],
            ..FilesConfig::default()
        };
        let error = bad.settings().unwrap_err().to_string();
        assert!(
            error.starts_with("[files] invalid exclude glob \"[unclosed\""),
            "{error}"
        );
        let settings = FilesConfig {
            exclude: vec!["**/*.swp".into()],
            ..FilesConfig::default()
        }
        .settings()
        .unwrap();
        assert!(settings.excludes.is_match("/srv/exports/.a.csv.swp"));
        assert!(!settings.excludes.is_match("/srv/exports/a.csv"));
    }
}
