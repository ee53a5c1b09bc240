//! The default process lookup: facts about a live process from `/proc`. Processes that already
//! exited are not found here; the process sensor's table, which remembers them, replaces this
//! lookup when the agent runs both sensors.
// `agent run` passes the process table, so outside tests only the user-name cache is reached;
// the procfs lookup stays for agents built without the process sensor and for the tests.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bannin::event::{Ancestor, ProcessInfo};
use tokio::time::{Duration, Instant};

use super::ProcessLookup;

/// How many parents are followed up the tree; deeper chains are cut, not looped on.
const MAX_ANCESTRY: usize = 16;

/// How long a looked-up process is reused while its program is unchanged: a process writing
/// thousands of files is read from `/proc` (with its whole parent chain) once, not per file.
const REUSE_FOR: Duration = Duration::from_secs(1);
const MAX_REMEMBERED: usize = 4096;

/// A [`ProcessLookup`] reading `/proc/<pid>/{exe,cmdline,status}` and following parents.
pub fn proc_lookup_from_procfs() -> ProcessLookup {
    let users = Arc::new(UserNames::default());
    let recent: Mutex<HashMap<u32, (Instant, ProcessInfo)>> = Mutex::new(HashMap::new());
    Arc::new(move |pid| {
        if let Some(info) = reuse(&recent, pid) {
            return Some(info);
        }
        let info = lookup(pid, &users)?;
        if let Ok(mut recent) = recent.lock() {
            if recent.len() >= MAX_REMEMBERED {
                recent.clear();
            }
            recent.insert(pid, (Instant::now(), info.clone()));
        }
        Some(info)
    })
}

/// A recent lookup of `pid`, if the process still runs the same program (an exec changes the
/// exe link, so one readlink tells).
fn reuse(recent: &Mutex<HashMap<u32, (Instant, ProcessInfo)>>, pid: u32) -> Option<ProcessInfo> {
    let (at, info) = recent.lock().ok()?.get(&pid).cloned()?;
    if at.elapsed() > REUSE_FOR {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    (exe.to_string_lossy() == info.exe).then_some(info)
}

fn lookup(pid: u32, users: &UserNames) -> Option<ProcessInfo> {
    let own = read_process(pid, users)?;
    let mut ancestry = Vec::new();
    let mut next = own.ppid;
    while let Some(parent) = next.filter(|&p| p != 0) {
        if ancestry.len() >= MAX_ANCESTRY {
            break;
        }
        let Some(found) = read_process(parent, users) else {
            break;
        };
        next = found.ppid.filter(|&p| p != parent);
        ancestry.push(Ancestor {
            pid: found.pid,
            exe: found.exe,
            cmdline: found.cmdline,
            user: found.user,
        });
    }
    Some(ProcessInfo {
        pid,
        ppid: own.ppid,
        exe: own.exe,
        cmdline: own.cmdline,
        user: own.user,
        uid: own.uid,
        ancestry,
    })
}

struct Read {
    pid: u32,
    ppid: Option<u32>,
    exe: String,
    cmdline: String,
    user: String,
    uid: Option<u32>,
}

fn read_process(pid: u32, users: &UserNames) -> Option<Read> {
    let dir = format!("/proc/{pid}");
    // status is read first: a pid without it is gone, and its name stands in for the exe of
    // kernel threads, whose exe link is empty.
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let ppid = field("PPid:").and_then(|v| v.parse().ok());
    // The effective uid is the one the kernel checks file access against.
    let uid = field("Uid:")
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    let exe = std::fs::read_link(format!("{dir}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cmdline = std::fs::read(format!("{dir}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|part| !part.is_empty())
                .map(String::from_utf8_lossy)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let cmdline = if cmdline.is_empty() {
        field("Name:").map(|n| format!("[{n}]")).unwrap_or_default()
    } else {
        cmdline
    };
    Some(Read {
        pid,
        ppid,
        exe,
        cmdline,
        user: uid.map(|uid| users.name(uid)).unwrap_or_default(),
        uid,
    })
}

/// uid to user name, remembered: the passwd lookup is far slower than the events asking for it.
#[derive(Default)]
pub struct UserNames {
    names: Mutex<HashMap<u32, String>>,
}

impl UserNames {
    /// The account name, or the number when the account database does not know the uid.
    pub fn name(&self, uid: u32) -> String {
        if let Some(name) = self.names.lock().ok().and_then(|m| m.get(&uid).cloned()) {
            return name;
        }
        let name = account_name(uid).unwrap_or_else(|| uid.to_string());
        if let Ok(mut names) = self.names.lock() {
            if names.len() > 4096 {
                names.clear();
            }
            names.insert(uid, name.clone());
        }
        name
    }
}

#[cfg(unix)]
fn account_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

#[cfg(not(unix))]
fn account_name(_uid: u32) -> Option<String> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn finds_a_live_child_with_its_parent_chain() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let lookup = proc_lookup_from_procfs();
        // Between fork and exec the child still looks like its parent; wait for the exec.
        let mut info = lookup(child.id()).unwrap();
        crate::testing::wait_until("the child to exec sleep", Duration::from_secs(10), || {
            info = lookup(child.id()).unwrap();
            info.cmdline == "sleep 30"
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(info.pid, child.id());
        assert_eq!(info.ppid, Some(std::process::id()));
        assert!(info.exe.ends_with("/sleep"), "{}", info.exe);
        assert_eq!(info.cmdline, "sleep 30");
        assert_eq!(info.user, "root");
        assert_eq!(info.uid, Some(0));
        assert_eq!(info.ancestry[0].pid, std::process::id());
        assert!(!info.ancestry.is_empty());
        assert!(lookup(u32::MAX).is_none());
    }

    #[test]
    fn a_remembered_process_is_looked_up_again_once_it_execs() {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read _; exec sleep 30")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let exe = || std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        while !exe().to_string_lossy().ends_with("sh") {
            std::thread::yield_now();
        }
        let lookup = proc_lookup_from_procfs();
        assert!(lookup(pid).unwrap().exe.ends_with("sh"));
        child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        while !exe().to_string_lossy().ends_with("/sleep") {
            std::thread::yield_now();
        }
        let after = lookup(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(after.exe.ends_with("/sleep"), "{}", after.exe);
    }
}
