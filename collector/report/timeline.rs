//! `timeline`: everything one host did in a window, in order, each process event with its lineage.

use std::io::Write;

use bannin::event::Record;
use bannin::time::Timestamp;
use rusqlite::Connection;
use serde::Serialize;

use super::{ProcessTable, ReportError, process_of, short_exe};
use crate::output::{self, row};
use crate::store::investigate::{self, Range};

/// One event of the timeline: the event's JSON plus `lineage`, the executables of its process's
/// parent, grandparent and so on.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    #[serde(flatten)]
    pub record: Record,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<String>,
}

pub struct Query<'a> {
    pub host: &'a str,
    pub since: Timestamp,
    pub until: Timestamp,
    pub limit: usize,
}

pub fn timeline(conn: &Connection, query: &Query<'_>) -> Result<Vec<Entry>, ReportError> {
    let agents = investigate::agents_for_host(conn, query.host)?;
    if agents.is_empty() {
        return Err(ReportError::UnknownHost {
            host: query.host.to_string(),
        });
    }
    let nos: Vec<i64> = agents.iter().map(|a| a.no).collect();
    let mut table = ProcessTable::default();
    // Processes started before the window are the ancestors of those inside it.
    let earlier = investigate::records(
        conn,
        &Range {
            agents: Some(&nos),
            since: query.since.saturating_sub(super::ANCESTRY_LOOKBACK),
            until: Timestamp::from_nanos(query.since.as_nanos().saturating_sub(1)),
            kinds: &["process.start"],
            limit: None,
        },
    )?;
    for record in &earlier {
        table.observe(record);
    }
    let records = investigate::records(
        conn,
        &Range {
            agents: Some(&nos),
            since: query.since,
            until: query.until,
            kinds: &[],
            limit: Some(query.limit),
        },
    )?;
    Ok(records
        .into_iter()
        .map(|record| {
            table.observe(&record);
            let lineage = process_of(&record)
                .map(|info| table.lineage(&record.agent_id, info))
                .unwrap_or_default();
            Entry { record, lineage }
        })
        .collect())
}

pub fn print_table(out: &mut impl Write, entries: &[Entry]) -> std::io::Result<()> {
    row!(out, "{:<30}  {:<16}  {:>8}  DETAIL", "TS", "KIND", "SEQ")?;
    for entry in entries {
        let event = &entry.record.event;
        row!(
            out,
            "{:<30}  {:<16}  {:>8}  {}",
            event.ts.to_rfc3339(),
            event.kind(),
            event.seq,
            output::event_detail(&entry.record)
        )?;
        if !entry.lineage.is_empty() {
            let chain: Vec<&str> = entry.lineage.iter().map(|e| short_exe(e)).collect();
            let own = process_of(&entry.record)
                .map(|p| short_exe(&p.exe))
                .unwrap_or("?");
            row!(
                out,
                "{:<30}  {:<16}  {:>8}    └ {own} ← {}",
                "",
                "",
                "",
                chain.join(" ← ")
            )?;
        }
    }
    Ok(())
}
