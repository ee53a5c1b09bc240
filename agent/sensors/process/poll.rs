//! The portable backend: list processes with `sysinfo` every `poll_interval` and report the
//! differences. A process that starts and exits between two looks is never seen, and an exit code
//! cannot be known; the sensor's status event says so.

use std::collections::HashMap;
use std::time::Duration;

use bannin::event::{ProcessAction, ProcessEvent};
use bannin::time::Timestamp;
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::table::{ProcessTable, Snapshot};
use crate::pipeline::EventTx;

pub const SOURCE: &str = "poll";

/// What `sysinfo` knows of one process, as a table snapshot (user name not yet filled in).
pub fn snapshot_of(process: &sysinfo::Process) -> Snapshot {
    let cmdline = process
        .cmd()
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let start_secs = i64::try_from(process.start_time()).unwrap_or(i64::MAX);
    Snapshot {
        pid: process.pid().as_u32(),
        ppid: process.parent().map(|pid| pid.as_u32()),
        exe: process
            .exe()
            .map(|exe| exe.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cmdline,
        uid: uid_of(process),
        user: String::new(),
        cwd: process
            .cwd()
            .map(|cwd| cwd.to_string_lossy().into_owned())
            .unwrap_or_default(),
        comm: process.name().to_string_lossy().into_owned(),
        start_ts: (start_secs > 0).then(|| Timestamp::from_secs(start_secs)),
        start_ticks: start_ticks(process.pid().as_u32()),
    }
}

#[cfg(unix)]
fn uid_of(process: &sysinfo::Process) -> Option<u32> {
    process.user_id().map(|uid| **uid)
}

#[cfg(not(unix))]
fn uid_of(_process: &sysinfo::Process) -> Option<u32> {
    None
}

#[cfg(target_os = "linux")]
fn start_ticks(pid: u32) -> Option<u64> {
    super::procfs::read_stat(pid).map(|stat| stat.start_ticks)
}

#[cfg(not(target_os = "linux"))]
fn start_ticks(_pid: u32) -> Option<u64> {
    None
}

/// Bytes read and written; on Linux the same counters the connector backend reports.
#[cfg(target_os = "linux")]
fn io_of(process: &sysinfo::Process) -> Option<(u64, u64)> {
    super::procfs::read_io(process.pid().as_u32())
}

#[cfg(not(target_os = "linux"))]
fn io_of(process: &sysinfo::Process) -> Option<(u64, u64)> {
    let usage = process.disk_usage();
    Some((usage.total_read_bytes, usage.total_written_bytes))
}

fn refresh_kind() -> ProcessRefreshKind {
    let kind = ProcessRefreshKind::nothing()
        .with_exe(UpdateKind::OnlyIfNotSet)
        .with_cmd(UpdateKind::OnlyIfNotSet)
        .with_cwd(UpdateKind::OnlyIfNotSet)
        .with_user(UpdateKind::OnlyIfNotSet)
        .without_tasks();
    if cfg!(target_os = "linux") {
        kind
    } else {
        kind.with_disk_usage()
    }
}

/// Each process by pid: its start time (to tell a reused pid), snapshot and I/O counters.
type Listing = HashMap<u32, (u64, Snapshot, Option<(u64, u64)>)>;

/// One look at the process list.
fn look(system: &mut System) -> Listing {
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
    system
        .processes()
        .values()
        // Threads and kernel threads are not programs anyone started.
        .filter(|process| process.thread_kind().is_none())
        .map(|process| {
            (
                process.pid().as_u32(),
                (process.start_time(), snapshot_of(process), io_of(process)),
            )
        })
        .collect()
}

/// The poll backend between two looks: what it saw last.
pub struct Poller {
    system: System,
    known: HashMap<u32, u64>,
    table: ProcessTable,
}

impl Poller {
    /// Takes the first look, so that processes running before the sensor started are known to
    /// the table but not reported as new.
    pub async fn start(table: ProcessTable) -> Option<Poller> {
        let mut poller = Poller {
            system: System::new(),
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
        let mut system = std::mem::take(&mut self.system);
        let looked = tokio::task::spawn_blocking(move || {
            let current = look(&mut system);
            (system, current)
        })
        .await;
        let current = match looked {
            Ok((system, current)) => {
                self.system = system;
                current
            }
            Err(error) => {
                tracing::error!(%error, "listing processes failed; the poll backend stops");
                return None;
            }
        };
        let table = &self.table;
        let first = self.known.is_empty();

        // Exits first: a reused pid's old process exited before its successor started.
        let exits: Vec<u32> = self
            .known
            .iter()
            .filter(|(pid, started)| current.get(pid).map(|(s, _, _)| s) != Some(started))
            .map(|(pid, _)| *pid)
            .collect();
        let mut events = Vec::new();
        for pid in exits {
            let entry = table.record_exit(pid, None);
            events.push(exit_event(table, pid, entry));
        }
        for (pid, (started, snapshot, io)) in &current {
            if self.known.get(pid) != Some(started) {
                let mut snapshot = snapshot.clone();
                table.name_user(&mut snapshot);
                table.insert_live(snapshot);
                if !first && let Some(event) = start_event(table, *pid) {
                    events.push(event);
                }
            }
            if let Some(io) = io {
                table.set_io(*pid, *io);
            }
        }
        self.known = current
            .iter()
            .map(|(pid, (started, _, _))| (*pid, *started))
            .collect();
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
