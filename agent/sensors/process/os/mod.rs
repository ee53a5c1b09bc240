//! The one place the agent asks the operating system about processes: `/proc` on Linux
//! ([`procfs`]), `sysinfo` elsewhere ([`portable`]). Both answer the same questions with the same
//! types, so the process table and both process-sensor backends above them are one code path on
//! every platform.
//!
//! Nothing else reads processes: the table answers "who is pid N" from here and remembers the
//! answer, and every sensor asks the table.
//!
//! A snapshot's `uid` is the process's **real** uid, the account that started it (for a setuid
//! program, the caller), as `bannin::event::ProcessInfo` documents.

// Linux tests compile the portable reader too, to hold its answers against `/proc`'s.
#[cfg(any(not(target_os = "linux"), test))]
mod portable;
#[cfg(target_os = "linux")]
mod procfs;

#[cfg(not(target_os = "linux"))]
pub use portable::{identity, running, snapshot};
#[cfg(target_os = "linux")]
pub use procfs::{identity, running, snapshot};
// What only Linux's sources use: the connector samples and sweeps pids, and the network sensor
// finds socket owners among them.
#[cfg(target_os = "linux")]
pub use procfs::{io, is_alive, pids};
// The eBPF backend turns what the kernel hands it into the same fields `/proc` gives.
#[cfg(target_os = "linux")]
pub use procfs::{USER_HZ, join_cmdline, start_time};

/// What tells one process from a later one under the same pid, and an exec from the program
/// before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// When it started, in the platform's unit (see `Snapshot::started`).
    pub started: u64,
    /// The short command name, which an exec changes.
    pub comm: String,
}

/// A process found by [`running`]: enough to tell new and gone processes apart between two looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    pub started: u64,
    /// Bytes read and written so far, where the platform tells.
    pub io: Option<(u64, u64)>,
}

/// The account name of `uid`, or the number when the account database does not know it.
#[cfg(unix)]
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        // An account missing from the user database is still worth naming.
        _ => uid.to_string(),
    }
}

/// Windows has no numeric uids: [`snapshot`] names the account itself and leaves `uid` empty, so
/// only a file owner's number could come here.
#[cfg(not(unix))]
pub fn user_name(uid: u32) -> String {
    uid.to_string()
}
