//! Processes from Linux's `/proc`.
//!
//! Every reader tolerates the process vanishing half-way: a short-lived process is often gone (or a
//! zombie without memory) by the time anyone looks, and whatever could be read is still worth keeping.

use std::path::PathBuf;
use std::sync::OnceLock;

use bannin::time::Timestamp;

use super::{Identity, Running};
use crate::sensors::process::Snapshot;

/// `/proc` reports times in USER_HZ, which the kernel fixes at 100 for this ABI on every architecture
/// Linux runs on, whatever its internal HZ.
pub const USER_HZ: u64 = 100;

/// `PF_KTHREAD` in the `flags` field of `stat`: a kernel thread, which no one started.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What `/proc/<pid>/stat` says, which stays readable even for a zombie.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    kernel_thread: bool,
    /// Clock ticks after boot: with the pid, it names one process for the machine's uptime.
    start_ticks: u64,
}

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// Reads `/proc/PID/stat`: a few hundred bytes, read into the stack (the file sensor asks once
/// per process and round of kernel events), and a longer one whole.
fn read_stat(pid: u32) -> Option<Stat> {
    use std::io::Read;
    let mut file = std::fs::File::open(proc_path(pid, "stat")).ok()?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => return parse_stat(&buf[..len]),
            Ok(n) => len += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let mut whole = buf.to_vec();
    file.read_to_end(&mut whole).ok()?;
    parse_stat(&whole)
}

/// The command name sits in parentheses and may itself hold spaces, parentheses and any bytes
/// but NUL (a process sets its own through `/proc/self/comm` or `prctl`, and a name that is not
/// UTF-8 must not make the process unreadable: it is kept with the invalid bytes replaced), so
/// the fields are counted from the last `)`.
fn parse_stat(bytes: &[u8]) -> Option<Stat> {
    let open = bytes.iter().position(|&b| b == b'(')?;
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(bytes.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
    // The first field after the name is field 3 (state).
    let mut fields = rest.split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?; // field 4
    let flags: u64 = fields.nth(4)?.parse().ok()?; // field 9
    let start_ticks = fields.nth(12)?.parse().ok()?; // field 22
    Some(Stat {
        comm,
        ppid,
        kernel_thread: flags & PF_KTHREAD != 0,
        start_ticks,
    })
}

/// The start time and command name of a running (or zombie) process: one small read.
pub fn identity(pid: u32) -> Option<Identity> {
    read_stat(pid).map(|stat| Identity {
        started: stat.start_ticks,
        comm: stat.comm,
    })
}

/// Everything the process sensor records about a process, or `None` when even its `stat` is gone.
pub fn snapshot(pid: u32) -> Option<Snapshot> {
    // The program and its arguments first: a short-lived process may be gone a moment later,
    // and they are what an audit needs most.
    let exe = std::fs::read_link(proc_path(pid, "exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cmdline = std::fs::read(proc_path(pid, "cmdline"))
        .map(|raw| join_cmdline(&raw))
        .unwrap_or_default();
    let stat = read_stat(pid)?;
    let cwd = std::fs::read_link(proc_path(pid, "cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Read as bytes: `status` repeats the command name, which need not be UTF-8.
    let uid = std::fs::read(proc_path(pid, "status"))
        .ok()
        .and_then(|status| parse_uid(&String::from_utf8_lossy(&status)));
    Some(Snapshot {
        pid,
        // Only init and kernel threads truly have none; a process being reaped also reads 0.
        ppid: (stat.ppid != 0).then_some(stat.ppid),
        exe,
        cmdline,
        uid,
        user: String::new(),
        cwd,
        comm: stat.comm,
        start_ts: start_time(stat.start_ticks),
        started: Some(stat.start_ticks),
    })
}

/// Command lines can run to megabytes; events keep the first few kilobytes.
const MAX_CMDLINE: usize = 4096;

pub fn join_cmdline(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(&[0]).unwrap_or(raw);
    let kept = &trimmed[..trimmed.len().min(MAX_CMDLINE)];
    let mut joined = String::from_utf8_lossy(kept).replace('\0', " ");
    if kept.len() < trimmed.len() {
        joined.push_str("...");
    }
    joined
}

/// The real uid, the first of the four on the `Uid:` line (real, effective, saved, filesystem).
fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

/// Bytes passed through read and write system calls (`rchar`, `wchar`): unlike `read_bytes`, these
/// count data served from the page cache, pipes and sockets, which is what "how much did it read"
/// means for an audit.
pub fn io(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(proc_path(pid, "io")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
    };
    Some((field("rchar:")?, field("wchar:")?))
}

pub fn is_alive(pid: u32) -> bool {
    proc_path(pid, "stat").exists()
}

/// Every process id in `/proc`, kernel threads included (threads are not listed there, only
/// under `task/`).
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every process running now, without kernel threads: programs someone started.
pub fn running() -> Vec<Running> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let stat = read_stat(pid).filter(|stat| !stat.kernel_thread)?;
            Some(Running {
                pid,
                started: stat.start_ticks,
                io: io(pid),
            })
        })
        .collect()
}

fn boot_time() -> Option<u64> {
    static BOOT: OnceLock<Option<u64>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|secs| secs.trim().parse().ok())
    })
}

pub fn start_time(start_ticks: u64) -> Option<Timestamp> {
    let boot = boot_time()?;
    let nanos = u128::from(boot) * 1_000_000_000
        + u128::from(start_ticks) * 1_000_000_000 / u128::from(USER_HZ);
    i64::try_from(nanos).ok().map(Timestamp::from_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (we (ird) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        let stat = parse_stat(line.as_bytes()).unwrap();
        assert_eq!(stat.comm, "we (ird) name");
        assert_eq!(stat.ppid, 17);
        assert!(!stat.kernel_thread);
        assert_eq!(stat.start_ticks, 987_654);
        let kernel = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0";
        assert!(parse_stat(kernel).unwrap().kernel_thread);
    }

    /// A process names itself with bytes that are not UTF-8 (`/proc/self/comm`): it is still
    /// read, so nothing it does goes unattributed, and a second read agrees with the first.
    #[test]
    fn a_process_whose_name_is_not_utf8_is_still_read() {
        let mut child = std::process::Command::new("perl")
            .args([
                "-e",
                r#"$| = 1; open(my $f, ">", "/proc/self/comm") or die; print $f "\xff\xfe(x) y"; close $f; print "named\n"; <STDIN>"#,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut named = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut named,
        )
        .unwrap();
        assert_eq!(named, "named\n");
        let pid = child.id();
        let snapshot = snapshot(pid).expect("a process with a non-UTF-8 name is read");
        assert_eq!(snapshot.comm, "\u{fffd}\u{fffd}(x) y");
        assert_eq!(snapshot.ppid, Some(std::process::id()));
        assert!(snapshot.exe.ends_with("/perl"), "{snapshot:?}");
        assert_eq!(snapshot.uid, Some(nix::unistd::getuid().as_raw()));
        let identity = identity(pid).unwrap();
        assert_eq!(identity.comm, snapshot.comm);
        assert_eq!(Some(identity.started), snapshot.started);
        drop(child.stdin.take());
        child.wait().unwrap();
    }

    #[test]
    fn kernel_threads_are_not_running_programs() {
        let kernel_threads: std::collections::HashSet<u32> = pids()
            .into_iter()
            .filter(|&pid| read_stat(pid).is_some_and(|stat| stat.kernel_thread))
            .collect();
        // Outside a pid namespace the kernel's threads are visible, kthreadd as pid 2.
        if read_stat(2).is_some_and(|stat| stat.comm == "kthreadd") {
            assert!(kernel_threads.contains(&2));
        }
        let running = running();
        assert!(running.iter().all(|p| !kernel_threads.contains(&p.pid)));
        let me = running
            .iter()
            .find(|process| process.pid == std::process::id())
            .unwrap();
        assert_eq!(me.started, identity(me.pid).unwrap().started);
        assert!(me.io.is_some());
    }

    #[test]
    fn reads_this_very_process() {
        let me = std::process::id();
        let snapshot = snapshot(me).unwrap();
        assert_eq!(snapshot.pid, me);
        assert_eq!(snapshot.ppid, Some(std::os::unix::process::parent_id()));
        assert_eq!(
            snapshot.exe,
            std::env::current_exe().unwrap().to_string_lossy()
        );
        assert!(snapshot.cmdline.contains(&snapshot.exe) || !snapshot.cmdline.is_empty());
        assert_eq!(snapshot.uid, Some(nix::unistd::getuid().as_raw()));
        assert!(snapshot.start_ts.unwrap() <= Timestamp::now());
        let (read, _written) = io(me).unwrap();
        assert!(read > 0, "this test binary has read its own files");
        assert!(pids().contains(&me));
    }
}
