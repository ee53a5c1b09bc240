//! The sensor's state file (`db-positions.json` in the state directory): each database's read
//! positions, parser state and totals, saved atomically once the events they cover are committed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::source::Source;
use super::tail::Position;
use super::totals::Totals;
use super::{DbError, mariadb, postgres};

/// The file under the state directory that holds read positions and parser state.
pub(super) const STATE_FILE: &str = "db-positions.json";

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub(super) sources: BTreeMap<String, SourceState>,
}

/// What one database's follower and parser must remember across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct SourceState {
    #[serde(default)]
    pub(super) log: Option<Position>,
    #[serde(default)]
    pub(super) slow_log: Option<Position>,
    #[serde(default)]
    pub(super) postgres: postgres::Tracker,
    #[serde(default)]
    pub(super) mariadb: mariadb::Tracker,
    #[serde(default)]
    pub(super) totals: Totals,
}

/// The saved state, or an empty one and why (a corrupt file is set aside, not fatal).
pub(super) async fn load_state(path: &Path) -> Result<(StateFile, Option<String>), DbError> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((StateFile::default(), None));
        }
        Err(source) => {
            return Err(DbError::ReadState {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_str(&text) {
        Ok(state) => Ok((state, None)),
        Err(error) => {
            let aside = path.with_extension("json.corrupt");
            let _ = tokio::fs::rename(path, &aside).await;
            Ok((
                StateFile::default(),
                Some(format!(
                    "saved database log positions were unreadable ({error}); moved to {} and starting afresh",
                    aside.display()
                )),
            ))
        }
    }
}

pub(super) async fn save_state(path: &Path, sources: &[Source], last_saved: &mut String) {
    let state = StateFile {
        sources: sources
            .iter()
            .map(|s| (s.settings.name.clone(), s.state()))
            .collect(),
    };
    let text = match serde_json::to_string(&state) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "cannot encode database log positions");
            return;
        }
    };
    if text == *last_saved {
        return;
    }
    let target = path.to_path_buf();
    let body = text.clone();
    let written =
        tokio::task::spawn_blocking(move || write_atomically(&target, body.as_bytes())).await;
    match written {
        Ok(Ok(())) => *last_saved = text,
        Ok(Err(error)) => {
            tracing::warn!(path = %path.display(), %error, "cannot save database log positions")
        }
        Err(error) => tracing::warn!(%error, "saving database log positions panicked"),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
