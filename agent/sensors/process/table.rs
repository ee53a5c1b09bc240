//! The process table: who is pid N, who started it, and who started that.
//!
//! The process sensor's backend keeps it current (every exec, fork and exit from the connector, or
//! every poll); other sensors only ask. A question about a pid the table has never seen is answered
//! from the operating system ([`super::os`]) and the answer kept. Exited processes are remembered for a while, so an event that
//! arrives after its process has gone (a file deleted by a one-second `rm`) still names it, and so do
//! the ancestry lines of its children.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bannin::event::{Ancestor, ProcessInfo};
use bannin::time::Timestamp;
use tokio::time::Instant;

use super::config::ProcessSettings;
use super::os;

/// Ancestry lines longer than this are cut: real trees are shallow, and a loop in remembered data
/// must not hang a caller.
const MAX_ANCESTRY: usize = 64;

/// How much of each ancestor's command line an answer carries.
const MAX_ANCESTOR_CMDLINE: usize = 512;

/// What the table knows about one process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub pid: u32,
    pub ppid: Option<u32>,
    /// Empty when unknown (the process was gone before it could be read).
    pub exe: String,
    pub cmdline: String,
    pub uid: Option<u32>,
    pub user: String,
    pub cwd: String,
    /// The kernel's short command name, readable even from a zombie.
    pub comm: String,
    pub start_ts: Option<Timestamp>,
    /// When it started, in the platform's own unit (clock ticks after boot on Linux, seconds after
    /// the epoch elsewhere): tells a reused pid from the process the table remembers, and a later
    /// parent from a real one. Only ever compared with marks read on the same host.
    pub started: Option<u64>,
}

impl Snapshot {
    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            pid: self.pid,
            ppid: self.ppid,
            exe: self.exe.clone(),
            cmdline: self.cmdline.clone(),
            user: self.user.clone(),
            uid: self.uid,
            ancestry: Default::default(),
        }
    }

    /// Ancestors' command lines are cut shorter than the process's own: every event repeats
    /// the whole line, and a long-lived parent's full arguments are one question away.
    fn ancestor(&self) -> Ancestor {
        let mut cmdline = self.cmdline.clone();
        if cmdline.len() > MAX_ANCESTOR_CMDLINE {
            let mut cut = MAX_ANCESTOR_CMDLINE;
            while !cmdline.is_char_boundary(cut) {
                cut -= 1;
            }
            cmdline.truncate(cut);
            cmdline.push_str("...");
        }
        Ancestor {
            pid: self.pid,
            exe: self.exe.clone(),
            cmdline,
            user: self.user.clone(),
        }
    }

    /// Whether `other` can be this very process: a snapshot without a start time cannot tell.
    fn same_process(&self, started: Option<u64>) -> bool {
        match (self.started, started) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub snapshot: Snapshot,
    pub exited: bool,
    /// Known only from its fork: until its exec is heard of, it runs its parent's program as far
    /// as the table knows, which an exec may already have changed.
    pub forked: bool,
    /// The last I/O counters seen (bytes read, bytes written).
    pub io: Option<(u64, u64)>,
}

struct Inner {
    entries: HashMap<u32, Entry>,
    /// Exited processes, oldest first: when each exited and which process it was.
    exited: VecDeque<(Instant, u32, Option<u64>)>,
    /// Account names by uid: the account database is far slower than the events asking.
    users: HashMap<u32, Arc<str>>,
}

/// More distinct uids than this and the name cache starts again.
const MAX_USERS: usize = 4096;

/// A shared, cheap-to-clone view of the host's processes, present and recently exited.
#[derive(Clone)]
pub struct ProcessTable {
    inner: Arc<Mutex<Inner>>,
    remember_exited: usize,
    remember_for: Duration,
}

impl std::fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessTable")
            .field("remember_exited", &self.remember_exited)
            .field("remember_for", &self.remember_for)
            .finish_non_exhaustive()
    }
}

impl ProcessTable {
    /// An empty table that remembers up to `remember_exited` exited processes for `remember_for`.
    pub fn new(remember_exited: usize, remember_for: Duration) -> Self {
        ProcessTable {
            inner: Arc::new(Mutex::new(Inner {
                entries: HashMap::new(),
                exited: VecDeque::new(),
                users: HashMap::new(),
            })),
            remember_exited,
            remember_for,
        }
    }

    pub fn from_settings(config: &ProcessSettings) -> Self {
        ProcessTable::new(config.remember_exited, config.remember_for)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still worth answering from.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Who pid `pid` is (or was, if it exited recently), with its ancestry, parent first.
    ///
    /// A running process is checked against the system (one small read) so that a reused pid, or
    /// a program replaced by exec, is not mistaken for what the table remembers; an exited one is
    /// answered from memory.
    pub fn info(&self, pid: u32) -> Option<ProcessInfo> {
        let live = os::identity(pid);
        let known = {
            let inner = self.lock();
            match inner.entries.get(&pid) {
                // A changed command name means an exec the table has not heard of; an empty
                // command line, a snapshot taken in the middle of one.
                Some(entry) => match &live {
                    Some(live) => {
                        entry.snapshot.same_process(Some(live.started))
                            && entry.snapshot.comm == live.comm
                            && !entry.snapshot.cmdline.is_empty()
                    }
                    None => true,
                },
                None => false,
            }
        };
        if !known {
            let snapshot = self.load(pid)?;
            self.insert_live(snapshot);
        }
        self.load_missing_ancestors(pid);
        self.compose(pid)
    }

    /// [`Self::info`], except for a process known only from its fork that is gone (so `/proc`
    /// cannot say what it became): `None` then, as its exec may still be on its way. The file
    /// sensor waits for it a moment, rather than name the parent's program for what the child did
    /// after its exec (a shell's `rm` reported as the shell).
    pub fn info_after_exec(&self, pid: u32) -> Option<ProcessInfo> {
        let forked_and_gone = self
            .lock()
            .entries
            .get(&pid)
            .is_some_and(|entry| entry.forked)
            && os::identity(pid).is_none();
        if forked_and_gone {
            return None;
        }
        self.info(pid)
    }

    /// What the table holds for `pid`, with ancestry from memory only: for the sensor's own
    /// events, built right after it recorded the process.
    pub(crate) fn compose(&self, pid: u32) -> Option<ProcessInfo> {
        let inner = self.lock();
        let entry = inner.entries.get(&pid)?;
        Some(describe(&inner, &entry.snapshot))
    }

    /// `snapshot` as event fields, with the ancestry the table remembers.
    #[cfg(target_os = "linux")]
    pub(crate) fn describe(&self, snapshot: &Snapshot) -> ProcessInfo {
        describe(&self.lock(), snapshot)
    }

    /// Reads each ancestor the table does not know yet from the system, outside the lock.
    fn load_missing_ancestors(&self, pid: u32) {
        let mut current = pid;
        for _ in 0..MAX_ANCESTRY {
            let missing = {
                let inner = self.lock();
                let Some(ppid) = inner.entries.get(&current).and_then(|e| e.snapshot.ppid) else {
                    return;
                };
                if ppid == 0 {
                    return;
                }
                if inner.entries.contains_key(&ppid) {
                    current = ppid;
                    continue;
                }
                ppid
            };
            match self.load(missing) {
                Some(snapshot) => {
                    self.insert_live(snapshot);
                    current = missing;
                }
                None => return,
            }
        }
    }

    /// A fresh snapshot of a running process, with its user's name.
    pub(crate) fn load(&self, pid: u32) -> Option<Snapshot> {
        let mut snapshot = os::snapshot(pid)?;
        if let Some(uid) = snapshot.uid {
            snapshot.user = self.user_name(uid);
        }
        Some(snapshot)
    }

    /// The account name of `uid` (a process's or a file owner's), asking the system's account
    /// database once per uid; the number when the database does not know it.
    pub fn user_name(&self, uid: u32) -> String {
        self.shared_user_name(uid).to_string()
    }

    /// [`Self::user_name`], shared rather than copied: a file event names its owner, and a burst
    /// names the same one thousands of times.
    pub fn shared_user_name(&self, uid: u32) -> Arc<str> {
        if let Some(name) = self.lock().users.get(&uid) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(os::user_name(uid));
        let mut inner = self.lock();
        if inner.users.len() >= MAX_USERS {
            inner.users.clear();
        }
        inner.users.insert(uid, Arc::clone(&name));
        name
    }

    /// Records a process that exec'd or was found running, replacing whatever had its pid.
    pub(crate) fn insert_live(&self, snapshot: Snapshot) {
        let mut inner = self.lock();
        let io = inner
            .entries
            .get(&snapshot.pid)
            .filter(|old| !old.exited && old.snapshot.same_process(snapshot.started))
            .and_then(|old| old.io);
        inner.entries.insert(
            snapshot.pid,
            Entry {
                snapshot,
                exited: false,
                forked: false,
                io,
            },
        );
    }

    /// Records a fork: until it execs, the child runs its parent's program.
    #[cfg(target_os = "linux")]
    pub(crate) fn record_fork(&self, child: u32, parent: u32) {
        if !self.lock().entries.contains_key(&parent)
            && let Some(snapshot) = self.load(parent)
        {
            self.insert_live(snapshot);
        }
        let mut inner = self.lock();
        let mut snapshot = match inner.entries.get(&parent) {
            Some(entry) => entry.snapshot.clone(),
            None => Snapshot::default(),
        };
        snapshot.pid = child;
        snapshot.ppid = Some(parent);
        snapshot.start_ts = Some(Timestamp::now());
        snapshot.started = None;
        inner.entries.insert(
            child,
            Entry {
                snapshot,
                exited: false,
                forked: true,
                io: None,
            },
        );
    }

    /// A copy of what the table holds for `pid`.
    pub(crate) fn entry(&self, pid: u32) -> Option<Entry> {
        self.lock().entries.get(&pid).cloned()
    }

    /// The parent a fork recorded for `pid`, for an exec whose `/proc` entry is already gone.
    #[cfg(target_os = "linux")]
    pub(crate) fn ppid_of(&self, pid: u32) -> Option<u32> {
        self.lock()
            .entries
            .get(&pid)
            .and_then(|entry| entry.snapshot.ppid)
    }

    /// Marks `pid` exited, keeps the last I/O counters, and returns what the table knew.
    pub(crate) fn record_exit(&self, pid: u32, io: Option<(u64, u64)>) -> Option<Entry> {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(&pid)?;
        if entry.exited {
            // Already retired by a sweep that noticed the process gone before its exit arrived.
            return Some(entry.clone());
        }
        entry.exited = true;
        if io.is_some() {
            entry.io = io;
        }
        let copy = entry.clone();
        inner.exited.push_back((now, pid, copy.snapshot.started));
        self.prune(&mut inner, now);
        Some(copy)
    }

    /// Keeps the latest I/O counters of a running process.
    pub(crate) fn set_io(&self, pid: u32, io: (u64, u64)) {
        if let Some(entry) = self.lock().entries.get_mut(&pid)
            && !entry.exited
        {
            entry.io = Some(io);
        }
    }

    /// Pids the table believes are running.
    #[cfg(target_os = "linux")]
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        self.lock()
            .entries
            .iter()
            .filter(|(_, entry)| !entry.exited)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// Forgets exited processes beyond the configured count or age.
    pub(crate) fn expire(&self) {
        let mut inner = self.lock();
        self.prune(&mut inner, Instant::now());
    }

    fn prune(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(when, pid, started)) = inner.exited.front() {
            let too_many = inner.exited.len() > self.remember_exited;
            let too_old = now.saturating_duration_since(when) > self.remember_for;
            if !too_many && !too_old {
                break;
            }
            inner.exited.pop_front();
            // The pid may since belong to a new process, which stays.
            if inner
                .entries
                .get(&pid)
                .is_some_and(|e| e.exited && e.snapshot.started == started)
            {
                inner.entries.remove(&pid);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// What tells one running process from another under the same pid: its start time and name.
fn describe(inner: &Inner, snapshot: &Snapshot) -> ProcessInfo {
    let mut info = snapshot.info();
    let mut child = snapshot;
    let mut seen = HashSet::from([snapshot.pid]);
    while let Some(ppid) = child.ppid {
        if ppid == 0 || !seen.insert(ppid) || info.ancestry.len() >= MAX_ANCESTRY {
            break;
        }
        let Some(parent) = inner.entries.get(&ppid) else {
            break;
        };
        // A parent that started after its child is a later process that reused the pid.
        if let (Some(parent_started), Some(child_started)) =
            (parent.snapshot.started, child.started)
            && parent_started > child_started
        {
            break;
        }
        info.ancestry.push(parent.snapshot.ancestor());
        child = &parent.snapshot;
    }
    info
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use super::*;
    use crate::testing::wait_until;

    /// Long enough for a fork and exec on a loaded machine.
    const WAIT: Duration = Duration::from_secs(20);

    struct KillOnDrop(std::process::Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts `sh`, which starts a `sleep` (the test's grandchild) and reports its pid.
    fn grandchild() -> (KillOnDrop, u32) {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (KillOnDrop(child), line.trim().parse().unwrap())
    }

    #[test]
    fn answers_the_ancestry_of_a_grandchild_while_it_runs_and_after_it_exits() {
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let (shell, sleeper) = grandchild();
        let shell_pid = shell.0.id();
        // The shell prints the pid as soon as it forks; the child becomes `sleep` a moment later.
        wait_until("the child to exec sleep", WAIT, || {
            std::fs::read(format!("/proc/{sleeper}/cmdline"))
                .unwrap()
                .starts_with(b"sleep")
        });

        let info = table.info(sleeper).unwrap();
        assert_eq!(info.pid, sleeper);
        assert_eq!(info.ppid, Some(shell_pid));
        assert!(info.cmdline.contains("sleep 30"), "{info:?}");
        assert!(info.exe.ends_with("sleep"), "{info:?}");
        assert_eq!(info.uid, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(info.user, os::user_name(nix::unistd::getuid().as_raw()));
        let ancestry: Vec<u32> = info.ancestry.iter().map(|a| a.pid).collect();
        assert_eq!(ancestry[..2], [shell_pid, std::process::id()], "{info:?}");
        assert!(info.ancestry[0].cmdline.contains("sleep 30 & echo"));
        assert_eq!(ancestry.last(), Some(&1), "the line ends at init");

        // Once both are gone, the table still answers from memory.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleeper as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        drop(shell);
        // A zombie still counts as alive; only a reaped process is gone.
        wait_until("the sleeper to be reaped", WAIT, || !os::is_alive(sleeper));
        table.record_exit(sleeper, None);
        let remembered = table.info(sleeper).unwrap();
        assert_eq!(remembered.ppid, Some(shell_pid));
        assert_eq!(remembered.ancestry[0].pid, shell_pid);
    }

    #[test]
    fn a_program_replaced_by_exec_is_read_afresh() {
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let mut child = KillOnDrop(
            Command::new("sh")
                .args(["-c", "read line; exec sleep 30"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        wait_until("the child to exec sh", WAIT, || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .starts_with(b"sh\0-c\0read")
        });
        let before = table.info(pid).unwrap();
        assert!(before.cmdline.contains("read line"), "{before:?}");
        {
            use std::io::Write;
            child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        wait_until("the shell to exec sleep", WAIT, || {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap()
                .starts_with(b"sleep")
        });
        let after = table.info(pid).unwrap();
        assert_eq!(after.cmdline, "sleep 30");
    }

    /// A child known only from its fork, gone before anyone asked (a shell's `rm`): until its
    /// exec is recorded the file sensor's lookup says "not yet" rather than name the shell; once
    /// the exec is in, the child's own program; and a plain lookup still answers the fork.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_gone_child_known_only_from_its_fork_waits_for_its_exec() {
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let me = std::process::id();
        // No process has this pid (above the kernel's pid_max limit of 4,194,304).
        let child = 4_194_400;
        table.record_fork(child, me);
        assert!(table.info_after_exec(child).is_none());
        let forked = table.info(child).unwrap();
        assert_eq!(
            forked.exe,
            std::env::current_exe().unwrap().to_string_lossy()
        );
        table.insert_live(Snapshot {
            pid: child,
            ppid: Some(me),
            exe: "/usr/bin/rm".into(),
            cmdline: "rm customers.csv".into(),
            ..Snapshot::default()
        });
        let execed = table.info_after_exec(child).unwrap();
        assert_eq!(execed.exe, "/usr/bin/rm");
        assert_eq!(execed.ancestry[0].pid, me);
        // A running child known only from its fork is checked against /proc as before.
        table.record_fork(me, std::process::id());
        assert!(table.info_after_exec(me).is_some());
    }

    #[test]
    fn a_snapshot_taken_mid_exec_is_read_again() {
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let me = std::process::id();
        let mut partial = os::snapshot(me).unwrap();
        partial.cmdline.clear();
        table.insert_live(partial);
        assert!(!table.info(me).unwrap().cmdline.is_empty());
    }

    #[test]
    fn a_reused_pid_is_read_afresh() {
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let me = std::process::id();
        table.insert_live(Snapshot {
            pid: me,
            exe: "/old/program".into(),
            started: Some(1),
            ..Snapshot::default()
        });
        let info = table.info(me).unwrap();
        assert_ne!(info.exe, "/old/program");
        assert_eq!(info.exe, std::env::current_exe().unwrap().to_string_lossy());
    }

    #[test]
    fn ancestors_carry_a_shortened_command_line() {
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let long = "x".repeat(5000);
        table.insert_live(Snapshot {
            pid: 4_100_000,
            cmdline: long.clone(),
            ..Snapshot::default()
        });
        let child = Snapshot {
            pid: 4_100_001,
            ppid: Some(4_100_000),
            cmdline: long.clone(),
            ..Snapshot::default()
        };
        let info = table.describe(&child);
        assert_eq!(info.cmdline, long);
        assert_eq!(info.ancestry[0].pid, 4_100_000);
        assert_eq!(info.ancestry[0].cmdline.len(), MAX_ANCESTOR_CMDLINE + 3);
    }

    #[test]
    fn exited_processes_are_forgotten_beyond_the_bound() {
        let table = ProcessTable::new(3, Duration::from_secs(60));
        for pid in 4_000_000..4_000_010 {
            table.insert_live(Snapshot {
                pid,
                started: Some(u64::from(pid)),
                ..Snapshot::default()
            });
            table.record_exit(pid, Some((1, 2)));
        }
        assert_eq!(table.len(), 3);
        assert!(table.info(4_000_009).is_some());
        assert!(table.info(4_000_000).is_none());
    }
}
