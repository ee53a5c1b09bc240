//! Helpers both binaries use to read their TOML configuration.

use std::path::{Path, PathBuf};

/// What can be wrong with a configuration file, named with the file.
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
    #[error("config {path}: {source}")]
    Untrusted {
        path: PathBuf,
        // Boxed: it is the largest variant by far (several paths, larger still on Windows).
        source: Box<crate::securefs::SecureFsError>,
    },
}

impl ConfigError {
    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads and parses a configuration file, refusing one that others could have rewritten.
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    check_permissions(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses configuration text that came from `path`.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    parse_toml(text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Refuses a file that group or others may write, or that belongs to (or is reached through a
/// directory or link of) a user other than root and the running one: whoever can rewrite the
/// configuration steers what a root agent reads and where a collector sends alerts.
#[cfg(unix)]
pub fn check_permissions(path: &Path) -> Result<(), ConfigError> {
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
    crate::securefs::check_trusted_file(path).map_err(|source| ConfigError::Untrusted {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

#[cfg(not(unix))]
pub fn check_permissions(_path: &Path) -> Result<(), ConfigError> {
    Ok(())
}

/// Parses TOML into `T`, turning an error into one line that names the offending line and key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().trim().to_string();
        match error.span() {
            Some(span) => {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                format!("line {line_no} `{line}`: {message}")
            }
            None => message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        size: u64,
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let error = parse_toml::<Sample>("\nsize = \"big\"\n").unwrap_err();
        assert!(error.starts_with("line 2 `size = \"big\"`"), "{error}");
        let error = parse_toml::<Sample>("size = 1\ncolour = 2\n").unwrap_err();
        assert!(error.contains("colour"), "{error}");
        assert!(!error.contains('\n'));
    }
}
