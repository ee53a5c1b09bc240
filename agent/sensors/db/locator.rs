//! Finding a PostgreSQL server's current log file and whether it writes csvlog or jsonlog.

use std::path::Path;

use super::config::PgFormat;
use super::tail::{Locator, Position, TailError};

/// Where a PostgreSQL server's log is: `log` is the data directory (holding `current_logfiles`)
/// or the log_directory (inside the data directory, or anywhere). Also says whether it is jsonlog.
pub(super) fn postgres_locator(
    log: &Path,
    format: PgFormat,
    saved: Option<&Position>,
) -> Result<(Locator, bool), TailError> {
    let (list, dir) = if log.join("current_logfiles").is_file() {
        let list = log.join("current_logfiles");
        let dir = std::fs::read_to_string(&list)
            .ok()
            .and_then(|text| {
                let first = text.lines().find(|l| !l.starts_with("stderr "))?;
                let relative = first.split_once(' ')?.1;
                Some(log.join(relative).parent()?.to_path_buf())
            })
            .unwrap_or_else(|| log.join("log"));
        (Some(list), dir)
    } else {
        let parent_list = log.parent().map(|p| p.join("current_logfiles"));
        (parent_list.filter(|p| p.is_file()), log.to_path_buf())
    };
    let json = match format {
        PgFormat::Csvlog => false,
        PgFormat::Jsonlog => true,
        PgFormat::Auto => {
            let listed = list.as_ref().and_then(|l| std::fs::read_to_string(l).ok());
            if let Some(saved) = saved {
                saved.path.extension().is_some_and(|x| x == "json")
            } else if let Some(text) =
                listed.filter(|t| t.contains("csvlog ") || t.contains("jsonlog "))
            {
                !text.contains("csvlog ")
            } else {
                let newest = Locator::Postgres {
                    dir: dir.clone(),
                    current_logfiles: None,
                    formats: vec!["csvlog", "jsonlog"],
                };
                newest_is_json(&newest)?
            }
        }
    };
    let formats = vec![if json { "jsonlog" } else { "csvlog" }];
    Ok((
        Locator::Postgres {
            dir,
            current_logfiles: list,
            formats,
        },
        json,
    ))
}

fn newest_is_json(locator: &Locator) -> Result<bool, TailError> {
    let Locator::Postgres { dir, formats, .. } = locator else {
        return Ok(false);
    };
    let mut newest: Option<(std::time::SystemTime, bool)> = None;
    let entries = std::fs::read_dir(dir).map_err(|source| TailError::Open {
        path: dir.clone(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let json = match path.extension().and_then(|x| x.to_str()) {
            Some("json") if formats.contains(&"jsonlog") => true,
            Some("csv") if formats.contains(&"csvlog") => false,
            _ => continue,
        };
        if let Some(modified) = entry.metadata().ok().and_then(|m| m.modified().ok()) {
            if newest.is_none_or(|(t, _)| modified > t) {
                newest = Some((modified, json));
            }
        }
    }
    newest
        .map(|(_, json)| json)
        .ok_or_else(|| TailError::NoLog { dir: dir.clone() })
}
