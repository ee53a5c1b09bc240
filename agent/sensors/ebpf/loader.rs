//! Loading in a child process, so that the agent never holds the loader's memory.
//!
//! Parsing the kernel's BTF and relocating the programs against it allocates some 30 MiB in many
//! small pieces (the agent's peak was 38–42 MiB). They are all freed once the programs are
//! loaded, but the C allocator keeps freed memory for reuse: `malloc_trim` gave most of it back,
//! not always all (one idle run in three kept 12 MiB). So the agent forks, the child loads and
//! attaches the programs and hands back, over a socket, descriptors of the maps the reader needs
//! and of the links that keep the programs attached, then exits. The kernel keeps a program
//! attached while any descriptor of its link is open, and a map while a descriptor or a program
//! holds it, whichever process that is.
//!
//! The child is a copy of one thread of a process with others; it only reads files, allocates and
//! calls `bpf(2)`. A child that does not answer within its patience (a lock another thread held
//! at the fork, say) is killed, and the load fails with a reason like any other: the sensor falls
//! back to its older source and says why.

#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Most descriptors one load hands back (the kernel's own limit for one message is 253).
const MAX_FDS: usize = 64;
/// Longest reason a child sends for a failed load.
const MAX_REASON: usize = 4000;
/// How long a child may be silent before the wait for it is logged, with where it waits.
const SLOW_LOADER: Duration = Duration::from_secs(5);
/// The exit status of a child whose work panicked.
const PANICKED: i32 = 101;

/// What the child handed back: the maps and programs asked for, in the order asked, and the
/// links it made.
#[derive(Debug)]
pub struct Handed {
    pub maps: Vec<OwnedFd>,
    pub programs: Vec<OwnedFd>,
    pub links: Vec<OwnedFd>,
}

/// What the child's work returns: descriptors of maps and of programs to hand back.
pub type Wanted = (Vec<RawFd>, Vec<RawFd>);

/// Runs `work` in a child process and takes back the map and program descriptors it returns and
/// every BPF link it made. The descriptors stay open because the child exits without closing
/// anything it made (the exit closes them, once the agent holds its own copies).
/// An error says why, in the words `work` used; a child that has not answered after `patience`
/// is killed.
pub fn in_child<F>(work: F, patience: Duration) -> Result<Handed, String>
where
    F: FnOnce() -> Result<Wanted, String>,
{
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| format!("cannot make the loader's socket: {}", errno.desc()))?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only `child`, which allocates (glibc's allocator is usable after a
    // fork), reads files and calls the kernel, then leaves with `_exit` without running any
    // destructor or exit handler of the parent's. A lock it would need that another thread held
    // at the fork would stall it, and the parent kills it after `patience`.
    match unsafe { fork() } {
        Err(errno) => Err(format!("cannot start the loader: {}", errno.desc())),
        Ok(ForkResult::Child) => {
            drop(ours);
            // A panic must end the child here: unwinding would carry it back into the
            // agent's own code, a second agent.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(parent, &theirs, work)
            }))
            .unwrap_or(PANICKED);
            // SAFETY: _exit ends this process at once; nothing of the parent's runs in it.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(theirs);
            let answer = receive(&ours, child, patience);
            if answer.is_err() {
                let _ = signal::kill(child, Signal::SIGKILL);
            }
            let ended = reap(child);
            match (answer, ended) {
                (Ok(Some(answer)), _) => answer,
                (Ok(None), ended) => Err(format!("the loader ended without answering ({ended})")),
                (Err(reason), _) => Err(reason),
            }
        }
    }
}

/// The child's side: load, find the links the load made, send everything, say how it went.
fn child<F>(parent: Pid, socket: &OwnedFd, work: F) -> i32
where
    F: FnOnce() -> Result<Wanted, String>,
{
    // Signals wait (the verifier gives up with EAGAIN when one arrives), and the child dies with
    // the agent rather than outlive it.
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        return 1;
    }
    // Descriptors inherited from the agent include links of programs it loaded before: only
    // those this load makes are handed back.
    let before = links_open();
    let sent = match work() {
        Ok((maps, programs)) => {
            let links: Vec<RawFd> = links_open().difference(&before).copied().collect();
            let header = format!("ok {} {}", maps.len(), programs.len());
            let fds: Vec<RawFd> = maps.into_iter().chain(programs).chain(links).collect();
            if fds.len() > MAX_FDS {
                send(
                    socket,
                    b"err the load made more descriptors than one answer carries",
                    &[],
                )
            } else {
                send(socket, header.as_bytes(), &fds)
            }
        }
        Err(reason) => {
            let mut message = format!("err {reason}");
            if message.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
            }
            send(socket, message.as_bytes(), &[])
        }
    };
    if sent { 0 } else { 1 }
}

/// The process's open descriptors that are BPF links.
fn links_open() -> BTreeSet<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

fn send(socket: &OwnedFd, message: &[u8], fds: &[RawFd]) -> bool {
    let rights = [ControlMessage::ScmRights(fds)];
    let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(message)],
        control,
        MsgFlags::empty(),
        None,
    )
    .is_ok()
}

/// The child's answer: `None` when it closed its end without one (it died), an error when it
/// gave none within `patience`. A child still silent after [`SLOW_LOADER`] is logged once, with
/// where it waits, and so is one that is stopped.
#[expect(
    clippy::disallowed_methods,
    reason = "loads run on blocking threads (the sensors' start-up), outside the runtime's clock"
)]
fn receive(
    socket: &OwnedFd,
    child: Pid,
    patience: Duration,
) -> Result<Option<Result<Handed, String>>, String> {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let started = Instant::now();
    let mut warned = false;
    loop {
        let waited = started.elapsed();
        if waited >= patience {
            return Err(format!(
                "the loader did not answer within {patience:?} and was stopped (it was {})",
                crate::whereabouts::of(&child.to_string())
            ));
        }
        let until = if warned {
            patience
        } else {
            SLOW_LOADER.min(patience)
        };
        let timeout =
            PollTimeout::try_from(until.saturating_sub(waited)).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) if !warned && started.elapsed() >= SLOW_LOADER => {
                warned = true;
                tracing::warn!(
                    "the eBPF loader (pid {child}) has not answered after {SLOW_LOADER:?}, waiting up to {patience:?}: it is {}",
                    crate::whereabouts::of(&child.to_string())
                );
            }
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(errno) => return Err(format!("cannot wait for the loader: {}", errno.desc())),
        }
    }
    let mut buffer = vec![0u8; MAX_REASON + 16];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (length, received) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = loop {
            match recvmsg::<()>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        }
        .map_err(|errno| format!("cannot read the loader's answer: {}", errno.desc()))?;
        let mut received = Vec::new();
        for control in message
            .cmsgs()
            .map_err(|errno| format!("cannot read the loader's answer: {}", errno.desc()))?
        {
            if let ControlMessageOwned::ScmRights(fds) = control {
                // SAFETY: the kernel installed these descriptors in this process for this
                // message; nothing else owns them.
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, received)
    };
    if length == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buffer[..length]);
    if let Some(reason) = text.strip_prefix("err ") {
        return Ok(Some(Err(reason.to_string())));
    }
    let (maps, programs) = text
        .strip_prefix("ok ")
        .and_then(|counts| counts.split_once(' '))
        .and_then(|(maps, programs)| Some((maps.parse::<usize>().ok()?, programs.parse().ok()?)))
        .filter(|&(maps, programs): &(usize, usize)| maps + programs <= received.len())
        .ok_or_else(|| format!("the loader's answer makes no sense: {text:?}"))?;
    let mut maps_handed = received;
    let mut programs_handed = maps_handed.split_off(maps);
    let links = programs_handed.split_off(programs);
    Ok(Some(Ok(Handed {
        maps: maps_handed,
        programs: programs_handed,
        links,
    })))
}

/// Attaches the loaded program `program` to a tracepoint again (`BPF_RAW_TRACEPOINT_OPEN`): to the
/// raw tracepoint `name`, or, with no name, where the program was loaded for (a BTF tracepoint).
/// The program stays attached while the returned link lives.
pub fn raw_tracepoint_open(
    program: std::os::fd::BorrowedFd<'_>,
    name: Option<&std::ffi::CStr>,
) -> std::io::Result<OwnedFd> {
    /// `union bpf_attr`'s `raw_tracepoint` member.
    #[repr(C)]
    struct RawTracepointOpen {
        name: u64,
        prog_fd: u32,
        _pad: u32,
        cookie: u64,
    }
    const BPF_RAW_TRACEPOINT_OPEN: nix::libc::c_long = 17;
    let attr = RawTracepointOpen {
        name: name.map_or(0, |name| name.as_ptr() as u64),
        prog_fd: program.as_raw_fd() as u32,
        _pad: 0,
        cookie: 0,
    };
    // SAFETY: bpf(2) reads `size` bytes of `attr`, a live, fully initialised struct laid out as
    // the kernel's; the name, when given, is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            &attr as *const RawTracepointOpen,
            std::mem::size_of::<RawTracepointOpen>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits for the child to end and says how it did. A child that has not ended after
/// [`SLOW_LOADER`] is killed, and one that has not ended after as long again is left (the agent
/// goes on; the kernel keeps it as a zombie until the agent exits).
#[expect(
    clippy::disallowed_methods,
    reason = "loads run on blocking threads (the sensors' start-up), outside the runtime's clock"
)]
fn reap(child: Pid) -> String {
    let started = Instant::now();
    let mut killed = false;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, signal, _)) => return format!("killed by {signal}"),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return format!("cannot wait for it: {}", errno.desc()),
        }
        let waited = started.elapsed();
        if !killed && waited >= SLOW_LOADER {
            tracing::warn!(
                "the eBPF loader (pid {child}) has not exited after {SLOW_LOADER:?} and is killed: it was {}",
                crate::whereabouts::of(&child.to_string())
            );
            let _ = signal::kill(child, Signal::SIGKILL);
            killed = true;
        } else if waited >= 2 * SLOW_LOADER {
            return format!(
                "it did not exit, even killed (it is {})",
                crate::whereabouts::of(&child.to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that never answers is stopped after its patience and reaped: the load fails with a
    /// reason, and no process is left behind.
    #[test]
    fn a_loader_that_does_not_answer_is_killed_and_reaped() {
        let error = in_child(
            || {
                // Waits for a signal, with every signal held: only the kill ends it.
                nix::unistd::pause();
                Ok((Vec::new(), Vec::new()))
            },
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(error.contains("did not answer"), "{error}");
        // It says where the child waited: asleep, in pause(2).
        assert!(error.contains("in state S"), "{error}");
        if nix::unistd::geteuid().is_root() {
            assert!(error.contains("pause"), "{error}");
        }
        // Reaped: this process has no child left that is a zombie.
        let me = nix::unistd::getpid().as_raw();
        let zombies = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                let after = &stat[stat.rfind(')').unwrap_or(0) + 2..];
                let fields: Vec<&str> = after.split_whitespace().collect();
                fields.first() == Some(&"Z") && fields.get(1) == Some(&me.to_string().as_str())
            })
            .count();
        assert_eq!(zombies, 0);
    }

    /// A child's reason comes back in its own words, and one that dies without a word is said to.
    #[test]
    fn a_loaders_reason_or_death_comes_back() {
        let error =
            in_child(|| Err("the kernel said no".into()), Duration::from_secs(30)).unwrap_err();
        assert_eq!(error, "the kernel said no");
        let error = in_child(
            || {
                // SAFETY: ends the child at once, as a crash would, without answering.
                unsafe { nix::libc::_exit(3) }
            },
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(
            error.contains("ended without answering (exit status 3)"),
            "{error}"
        );
    }

    /// A child whose work panics ends there, as a failed load: the panic never unwinds into
    /// the code the child shares with the agent.
    #[test]
    fn a_loader_that_panics_ends_as_a_failed_load() {
        let error = in_child(
            || -> Result<Wanted, String> { panic!("the loader's own bug") },
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(
            error.contains("ended without answering (exit status 101)"),
            "{error}"
        );
    }

    /// Descriptors the child returns arrive as descriptors of the same open file.
    #[test]
    fn descriptors_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"handed").unwrap();
        let handed = in_child(
            || {
                let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                let fd = file.as_raw_fd();
                std::mem::forget(file);
                Ok((vec![fd], Vec::new()))
            },
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(handed.maps.len(), 1);
        assert!(handed.programs.is_empty() && handed.links.is_empty());
        let mut text = String::new();
        use std::io::Read;
        std::fs::File::from(handed.maps.into_iter().next().unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "handed");
    }
}
