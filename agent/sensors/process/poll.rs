//! The portable backend: list processes every `poll_interval` ([`os::running`]) and report the
//! differences. A process that starts and exits between two looks is never seen, and an exit code
//! cannot be known; the sensor's status event says so.

use std::collections::HashMap;
use std::time::Duration;

use bannin::event::{ProcessAction, ProcessEvent};

use super::os;
use super::table::{ProcessTable, Snapshot};
use crate::pipeline::EventTx;

pub const SOURCE: &str = "poll";

/// What one look found: every running process's start mark and I/O counters, and a snapshot of
/// each process the look before did not know.
struct Look {
    running: Vec<os::Running>,
    fresh: Vec<Snapshot>,
}

/// Lists the running processes and reads those not in `known` (pid to start mark).
fn look(table: &ProcessTable, known: &HashMap<u32, u64>) -> Look {
    let running = os::running();
    let fresh = running
        .iter()
        .filter(|process| known.get(&process.pid) != Some(&process.started))
        .filter_map(|process| table.load(process.pid))
        .collect();
    Look { running, fresh }
}

/// The poll backend between two looks: what it saw last.
pub struct Poller {
    /// Each process seen by the last look, by pid: its start mark.
    known: HashMap<u32, u64>,
    table: ProcessTable,
}

impl Poller {
    /// Takes the first look, so that processes running before the sensor started are known to
    /// the table but not reported as new.
    pub async fn start(table: ProcessTable) -> Option<Poller> {
        let mut poller = Poller {
            known: HashMap::new(),
            table,
        };
        poller.step().await?;
        Some(poller)
    }

    /// Lists processes every `interval`, reporting starts and exits, until the spool goes away.
    pub async fn run(mut self, tx: EventTx, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(events) = self.step().await else {
                return;
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            self.table.expire();
        }
    }

    /// One look: updates the table and returns the events for what changed since the last one.
    async fn step(&mut self) -> Option<Vec<ProcessEvent>> {
        let table = self.table.clone();
        let known = std::mem::take(&mut self.known);
        let looked = tokio::task::spawn_blocking(move || {
            let look = look(&table, &known);
            (known, look)
        })
        .await;
        let (known, look) = match looked {
            Ok(looked) => looked,
            Err(error) => {
                tracing::error!(%error, "listing processes failed; the poll backend stops");
                return None;
            }
        };
        let table = &self.table;
        let first = known.is_empty();
        let current: HashMap<u32, u64> = look
            .running
            .iter()
            .map(|process| (process.pid, process.started))
            .collect();

        // Exits first: a reused pid's old process exited before its successor started.
        let mut events = Vec::new();
        for (&pid, started) in &known {
            if current.get(&pid) != Some(started) {
                let entry = table.record_exit(pid, None);
                events.push(exit_event(table, pid, entry));
            }
        }
        let mut seen: HashMap<u32, u64> = known
            .into_iter()
            .filter(|(pid, started)| current.get(pid) == Some(started))
            .collect();
        // A new process gone before it could be read was never seen: no start, and no exit.
        for snapshot in look.fresh {
            let pid = snapshot.pid;
            if let Some(&started) = current.get(&pid) {
                seen.insert(pid, started);
            }
            table.insert_live(snapshot);
            if !first && let Some(event) = start_event(table, pid) {
                events.push(event);
            }
        }
        for process in &look.running {
            if let Some(io) = process.io {
                table.set_io(process.pid, io);
            }
        }
        self.known = seen;
        Some(events)
    }
}

fn start_event(table: &ProcessTable, pid: u32) -> Option<ProcessEvent> {
    let process = table.compose(pid)?;
    let (cwd, start_ts) = table
        .entry(pid)
        .map(|entry| (entry.snapshot.cwd, entry.snapshot.start_ts))
        .unwrap_or_default();
    Some(ProcessEvent {
        action: ProcessAction::Start,
        process,
        cwd,
        start_ts,
        exit_code: None,
        read_bytes: None,
        write_bytes: None,
        source: SOURCE.to_string(),
    })
}

fn exit_event(table: &ProcessTable, pid: u32, entry: Option<super::table::Entry>) -> ProcessEvent {
    let process = match &entry {
        Some(_) => table.compose(pid).unwrap_or_default(),
        None => bannin::event::ProcessInfo {
            pid,
            ..Default::default()
        },
    };
    let (cwd, start_ts, io) = entry
        .map(|entry| (entry.snapshot.cwd, entry.snapshot.start_ts, entry.io))
        .unwrap_or_default();
    ProcessEvent {
        action: ProcessAction::Exit,
        process,
        cwd,
        start_ts,
        exit_code: None,
        read_bytes: io.map(|(read, _)| read),
        write_bytes: io.map(|(_, written)| written),
        source: SOURCE.to_string(),
    }
}
