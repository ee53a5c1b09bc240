//! `timeline`: everything one host did in a window, in order, each process event with its lineage.

use bannin::event::Record;
use bannin::time::Timestamp;
use serde::Serialize;

use super::{ProcessTable, process_of};

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

/// A timeline built from one host's events in time order: first the `process.start` events from
/// before the window, whose processes are the ancestors of those inside it, then the window's
/// events, each becoming an entry with its lineage as known at that moment.
#[derive(Debug, Default)]
pub struct Timeline {
    table: ProcessTable,
}

impl Timeline {
    /// Learns a process that started before the window.
    pub fn ancestor(&mut self, record: &Record) {
        self.table.observe(record);
    }

    /// The window's next event as an entry.
    pub fn entry(&mut self, record: Record) -> Entry {
        self.table.observe(&record);
        let lineage = process_of(&record)
            .map_or_else(Vec::new, |info| self.table.lineage(&record.agent_id, info));
        Entry { record, lineage }
    }
}
