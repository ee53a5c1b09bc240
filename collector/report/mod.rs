//! Investigation reports computed from stored events: a host's `timeline` and an incident's `scope`.
//!
//! Pure computations, fed one event at a time in time order (`query::local` reads the store and
//! feeds them). Both fold in process ancestry: from the event's own ancestry when the agent knew
//! it, otherwise from the `process.start` events seen for that host.

pub mod scope;
pub mod timeline;

use std::collections::HashMap;

use bannin::event::{Body, ProcessInfo, Record};

/// How far before a report's window `process.start` events are read to rebuild ancestry.
pub const ANCESTRY_LOOKBACK: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The deepest ancestry chain followed; a loop in reused pids cannot run away.
const MAX_DEPTH: usize = 32;

/// The process an event is about, where it has one.
pub fn process_of(record: &Record) -> Option<&ProcessInfo> {
    match &record.event.body {
        Body::File(file) => file.process.as_deref(),
        Body::Process(process) => Some(&process.process),
        Body::Net(net) => net.process.as_ref(),
        _ => None,
    }
}

/// What each host's processes were, as seen so far in time order: pid → (parent pid, executable).
#[derive(Debug, Default)]
pub struct ProcessTable {
    by_pid: HashMap<(String, u32), (Option<u32>, String)>,
}

impl ProcessTable {
    /// Learns from one event, in time order, so a reused pid maps to its latest process.
    pub fn observe(&mut self, record: &Record) {
        let Some(info) = process_of(record) else {
            return;
        };
        let key = (record.agent_id.clone(), info.pid);
        let fresh = matches!(&record.event.body, Body::Process(p)
            if p.action == bannin::event::ProcessAction::Start);
        if fresh || !self.by_pid.contains_key(&key) {
            self.by_pid.insert(key, (info.ppid, info.exe.clone()));
        }
        for pair in info.ancestry.windows(2) {
            self.by_pid
                .entry((record.agent_id.clone(), pair[0].pid))
                .or_insert((Some(pair[1].pid), pair[0].exe.clone()));
        }
    }

    /// The executables of a process's parent, grandparent and so on.
    pub fn lineage(&self, agent_id: &str, info: &ProcessInfo) -> Vec<String> {
        if !info.ancestry.is_empty() {
            return info.ancestry.iter().map(|a| a.exe.clone()).collect();
        }
        let mut chain = Vec::new();
        let mut next = info.ppid;
        while let Some(pid) = next {
            if chain.len() >= MAX_DEPTH || pid == 0 {
                break;
            }
            match self.by_pid.get(&(agent_id.to_string(), pid)) {
                Some((parent, exe)) => {
                    chain.push(exe.clone());
                    next = *parent;
                }
                None => break,
            }
        }
        chain
    }
}

/// The last path component of an executable, for tables.
pub fn short_exe(exe: &str) -> &str {
    exe.rsplit('/').next().unwrap_or(exe)
}
