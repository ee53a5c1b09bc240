//! Processes through `sysinfo`, where there is no `/proc` (macOS, Windows).
//!
//! One `System` serves the whole agent, so what sysinfo learned about a process (its program,
//! arguments, owner) is read once and refreshed only when asked for again.

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use bannin::time::Timestamp;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::{Identity, Running};
use crate::sensors::process::Snapshot;

fn system() -> MutexGuard<'static, System> {
    static SYSTEM: OnceLock<Mutex<System>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| Mutex::new(System::new()))
        .lock()
        // A panic while refreshing leaves a list that is at worst stale; the next refresh mends it.
        .unwrap_or_else(PoisonError::into_inner)
}

/// Refreshes one process with `kind` and reads it, or `None` when it is gone.
fn with_process<T>(
    pid: u32,
    kind: ProcessRefreshKind,
    read: impl FnOnce(&sysinfo::Process) -> T,
) -> Option<T> {
    let mut system = system();
    let target = Pid::from_u32(pid);
    system.refresh_processes_specifics(ProcessesToUpdate::Some(&[target]), true, kind);
    system.process(target).map(read)
}

/// The start time (seconds after the epoch) and program name of a running process.
pub fn identity(pid: u32) -> Option<Identity> {
    with_process(pid, ProcessRefreshKind::nothing(), |process| Identity {
        started: process.start_time(),
        comm: process.name().to_string_lossy().into_owned(),
    })
}

/// Everything the process sensor records about a running process.
pub fn snapshot(pid: u32) -> Option<Snapshot> {
    let kind = ProcessRefreshKind::nothing()
        .with_exe(UpdateKind::Always)
        .with_cmd(UpdateKind::Always)
        .with_cwd(UpdateKind::Always)
        .with_user(UpdateKind::Always);
    with_process(pid, kind, snapshot_of)
}

/// Every process running now, without threads: programs someone started.
pub fn running() -> Vec<Running> {
    let mut system = system();
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing()
            .with_disk_usage()
            .without_tasks(),
    );
    system
        .processes()
        .values()
        .filter(|process| process.thread_kind().is_none())
        .map(|process| Running {
            pid: process.pid().as_u32(),
            started: process.start_time(),
            io: io_of(process),
        })
        .collect()
}

fn io_of(process: &sysinfo::Process) -> Option<(u64, u64)> {
    let usage = process.disk_usage();
    Some((usage.total_read_bytes, usage.total_written_bytes))
}

fn snapshot_of(process: &sysinfo::Process) -> Snapshot {
    let cmdline = process
        .cmd()
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let started = process.start_time();
    let (uid, user) = owner(process);
    Snapshot {
        pid: process.pid().as_u32(),
        ppid: process.parent().map(|pid| pid.as_u32()),
        exe: process
            .exe()
            .map(|exe| exe.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cmdline,
        uid,
        user,
        cwd: process
            .cwd()
            .map(|cwd| cwd.to_string_lossy().into_owned())
            .unwrap_or_default(),
        comm: process.name().to_string_lossy().into_owned(),
        start_ts: i64::try_from(started)
            .ok()
            .filter(|&secs| secs > 0)
            .map(Timestamp::from_secs),
        started: Some(started),
    }
}

/// The real uid; the process table names it.
#[cfg(unix)]
fn owner(process: &sysinfo::Process) -> (Option<u32>, String) {
    (process.user_id().map(|uid| **uid), String::new())
}

/// Windows names an account by a SID, not a number: the account's name is looked up here, and
/// the uid stays unknown.
#[cfg(not(unix))]
fn owner(process: &sysinfo::Process) -> (Option<u32>, String) {
    static USERS: OnceLock<Mutex<sysinfo::Users>> = OnceLock::new();
    let Some(sid) = process.user_id() else {
        return (None, String::new());
    };
    let mut users = USERS
        .get_or_init(|| Mutex::new(sysinfo::Users::new_with_refreshed_list()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if users.get_user_by_id(sid).is_none() {
        // An account created since the list was read.
        users.refresh();
    }
    let name = users
        .get_user_by_id(sid)
        .map(|user| user.name().to_string())
        .unwrap_or_default();
    (None, name)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The portable reader runs only where there is no `/proc`; here it must agree with it.
    #[test]
    fn agrees_with_procfs_about_this_process() {
        let me = std::process::id();
        let portable = snapshot(me).unwrap();
        let procfs = super::super::procfs::snapshot(me).unwrap();
        assert_eq!(portable.pid, procfs.pid);
        assert_eq!(portable.ppid, procfs.ppid);
        assert_eq!(portable.exe, procfs.exe);
        assert_eq!(portable.cmdline, procfs.cmdline);
        assert_eq!(portable.uid, procfs.uid);
        assert_eq!(portable.cwd, procfs.cwd);
        assert_eq!(portable.comm, procfs.comm);
        let started = portable.start_ts.unwrap().as_nanos() / 1_000_000_000;
        let procfs_started = procfs.start_ts.unwrap().as_nanos() / 1_000_000_000;
        assert!(
            started.abs_diff(procfs_started) <= 1,
            "{started} {procfs_started}"
        );

        assert_eq!(identity(me).unwrap().comm, procfs.comm);
        assert_eq!(identity(me).unwrap().started, portable.started.unwrap());
        let listed = running();
        let mine = listed.iter().find(|p| p.pid == me).unwrap();
        assert_eq!(Some(mine.started), portable.started);
        assert!(identity(u32::MAX).is_none());
    }
}
