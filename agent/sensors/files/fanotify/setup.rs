//! Setting fanotify up: the three notification groups, their filesystem marks, and the ignore
//! mark that keeps the agent's own state directory out of them.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

use super::record::FSID_LEN;
use super::resolve::Resolver;
use crate::sensors::files::observe::Scope;

pub struct FanotifyBackend {
    pub(super) names: Fanotify,
    pub(super) writes: Fanotify,
    /// `FAN_MODIFY` with file handles only, in a group of its own: a truncate(2) by path is
    /// followed by no close-after-write, and a system busy writing cannot overflow the queue
    /// of creates and deletes with it.
    pub(super) modifies: Fanotify,
    /// Turns handles into paths; it has learnt the directories already in the watched trees
    /// before the sensor reports itself started, so a tree removed straight after still resolves.
    pub(super) resolver: Resolver,
    /// Whether the kernel reports renames as one event with both names (`FAN_RENAME`, 5.17+).
    pub(super) paired_renames: bool,
    /// How many events each group's kernel queue holds, in words for the `sensor.status` event.
    pub queue: String,
}

/// Sets up the groups and marks the filesystem of every root, or says why it cannot. Each group
/// holds up to `queue` events in the kernel while the agent is behind (0: the kernel's setting).
pub fn open(scope: &Scope, queue: u32) -> Result<FanotifyBackend, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".to_string());
    }
    // The groups take their queue's length from the setting as they are made.
    let raised = Raised::to(queue);
    let base = InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK;
    let fid = InitFlags::from_bits_retain(libc::FAN_REPORT_DFID_NAME | libc::FAN_REPORT_FID);
    // Since 5.17 the kernel also names the file a create, delete or rename is about, which tells
    // an exchange from two renames and a deleted name from a deleted file.
    let target = InitFlags::from_bits_retain(libc::FAN_REPORT_TARGET_FID);
    let event_flags = EventFFlags::O_RDONLY
        | EventFFlags::O_LARGEFILE
        | EventFFlags::O_CLOEXEC
        | EventFFlags::O_NOATIME;
    let names = match Fanotify::init(base | fid | target, event_flags) {
        Err(Errno::EINVAL) => Fanotify::init(base | fid, event_flags),
        other => other,
    }
    .map_err(|errno| format!("fanotify_init with file handles refused: {}", errno.desc()))?;
    let writes = Fanotify::init(base, event_flags)
        .map_err(|errno| format!("fanotify_init refused: {}", errno.desc()))?;
    let modifies = Fanotify::init(base | fid, event_flags)
        .map_err(|errno| format!("fanotify_init with file handles refused: {}", errno.desc()))?;

    let add = MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM;
    let entries = MaskFlags::FAN_CREATE | MaskFlags::FAN_DELETE | MaskFlags::FAN_ONDIR;
    let mut paired_renames = true;
    let mut mounts = HashMap::new();
    let mut roots = Vec::new();
    let mut root_mounts = Vec::new();
    for root in scope.roots() {
        let mark = |mask| names.mark(add, mask, nix::fcntl::AT_FDCWD, Some(root.as_path()));
        let marked = if paired_renames {
            match mark(entries | MaskFlags::FAN_RENAME) {
                Err(Errno::EINVAL) => {
                    paired_renames = false;
                    mark(entries | MaskFlags::FAN_MOVE)
                }
                other => other,
            }
        } else {
            mark(entries | MaskFlags::FAN_MOVE)
        };
        marked.map_err(|errno| mark_refused(root, errno))?;
        writes
            .mark(
                add,
                MaskFlags::FAN_CLOSE_WRITE,
                nix::fcntl::AT_FDCWD,
                Some(root.as_path()),
            )
            .map_err(|errno| mark_refused(root, errno))?;
        modifies
            .mark(
                add,
                MaskFlags::FAN_MODIFY,
                nix::fcntl::AT_FDCWD,
                Some(root.as_path()),
            )
            .map_err(|errno| mark_refused(root, errno))?;
        let dir =
            File::open(root).map_err(|error| format!("cannot open {}: {error}", root.display()))?;
        let fsid = filesystem_id(&dir).map_err(|errno| {
            format!(
                "cannot read the filesystem id of {}: {}",
                root.display(),
                errno.desc()
            )
        })?;
        root_mounts.extend(super::resolve::mount_of(&dir));
        mounts.entry(fsid).or_insert(dir);
        roots.push((root.clone(), fsid));
    }
    if let Some(private) = scope.private_dir() {
        ignore_own_state(&writes, MaskFlags::FAN_CLOSE_WRITE, private)?;
        // Every spool commit writes the write-ahead log: without this the agent would wake for
        // its own writes and resolve each only to find it out of scope.
        ignore_own_state(&modifies, MaskFlags::FAN_MODIFY, private)?;
    }
    let queue = raised.describe();
    drop(raised);
    let mut resolver = Resolver::new(mounts, roots.iter().map(|(r, _)| r.clone()).collect());
    resolver.learn_existing(&roots);
    // Known for every root, or for none: a root whose mount is unknown would otherwise make
    // every file opened through it look opened through another mount.
    if root_mounts.len() == roots.len() {
        resolver.set_root_mounts(root_mounts);
    }
    Ok(FanotifyBackend {
        names,
        writes,
        modifies,
        resolver,
        paired_renames,
        queue,
    })
}

/// Keeps events of the agent's own state files out of a group (`event`: close-after-writes of the
/// `writes` group, modifications of the `modifies` group). Each close-after-write
/// event would hand the agent a descriptor on its own SQLite file, and closing any descriptor on
/// a file drops every POSIX lock the process holds on it: another reader of the spool would then
/// think itself alone, truncate the shared-memory file the agent has mapped, and the agent would
/// die of SIGBUS. An ignore mark stops the kernel from creating the event at all.
fn ignore_own_state(group: &Fanotify, event: MaskFlags, dir: &Path) -> Result<(), String> {
    let mask = event | MaskFlags::FAN_EVENT_ON_CHILD | MaskFlags::FAN_ONDIR;
    let ignore = MarkFlags::FAN_MARK_ADD | MarkFlags::from_bits_retain(libc::FAN_MARK_IGNORE_SURV);
    let legacy = MarkFlags::FAN_MARK_ADD
        | MarkFlags::FAN_MARK_IGNORED_MASK
        | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY;
    let marked = match group.mark(ignore, mask, nix::fcntl::AT_FDCWD, Some(dir)) {
        // Kernels before 6.0 know only the older ignored mask.
        Err(Errno::EINVAL) => group.mark(legacy, mask, nix::fcntl::AT_FDCWD, Some(dir)),
        other => other,
    };
    marked.map_err(|errno| {
        format!(
            "the kernel refused to keep the agent's own state directory {} out of the marks: {}",
            dir.display(),
            errno.desc()
        )
    })
}

/// The setting that gives a new fanotify group the length of its queue (Linux 5.13 and later;
/// before, every group holds 16,384 events).
const MAX_QUEUED_EVENTS: &str = "/proc/sys/fs/fanotify/max_queued_events";

/// The kernel's queue length raised for the groups made while this lives, and put back when it
/// is dropped. The setting is the whole system's: it is held under an exclusive lock on it, so
/// agents starting at once each put back what they found, and it is only ever raised. An agent
/// killed between the two leaves it raised; the next one finds it long enough and leaves it.
struct Raised {
    /// The setting, locked, with the value to put back; `None` when it was left alone.
    held: Option<(Flock<File>, u32)>,
    /// The length the groups get.
    length: Option<u32>,
    /// Why it could not be raised.
    why_not: Option<String>,
}

impl Raised {
    fn to(wanted: u32) -> Raised {
        let mut raised = Raised {
            held: None,
            length: None,
            why_not: None,
        };
        if wanted == 0 {
            raised.why_not = Some("kernel_queue = 0".into());
            return raised;
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(MAX_QUEUED_EVENTS)
        {
            Ok(file) => file,
            Err(error) => {
                raised.why_not = Some(format!("cannot open {MAX_QUEUED_EVENTS}: {error}"));
                return raised;
            }
        };
        let file = match lock_briefly(file) {
            Ok(locked) => locked,
            Err(why) => {
                raised.why_not = Some(format!("cannot lock {MAX_QUEUED_EVENTS}: {why}"));
                return raised;
            }
        };
        let found = match read_setting(&file) {
            Ok(found) => found,
            Err(error) => {
                raised.why_not = Some(format!("cannot read {MAX_QUEUED_EVENTS}: {error}"));
                return raised;
            }
        };
        raised.length = Some(found);
        if wanted <= found {
            return raised;
        }
        match write_setting(&file, wanted) {
            Ok(()) => {
                raised.length = Some(wanted);
                raised.held = Some((file, found));
            }
            Err(error) => {
                raised.why_not = Some(format!("cannot raise {MAX_QUEUED_EVENTS}: {error}"));
            }
        }
        raised
    }

    fn describe(&self) -> String {
        let length = match self.length {
            Some(length) => format!("kernel queues of {length} events"),
            None => "kernel queues of the kernel's length".to_string(),
        };
        match &self.why_not {
            Some(why) => format!("{length} ({why})"),
            None => length,
        }
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some((file, found)) = self.held.take()
            && let Err(error) = write_setting(&file, found)
        {
            tracing::warn!("cannot put {MAX_QUEUED_EVENTS} back to {found}: {error}");
        }
    }
}

/// How long the agent tries for the lock on the setting before it makes its queues without
/// raising it.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The setting, locked, or why not. Any local user may open the setting (it is world-readable)
/// and hold a lock on it: waiting without end would let one stop the agent from starting, so
/// the agent tries for [`LOCK_PATIENCE`] and then goes on with the kernel's length, saying why.
#[expect(
    clippy::disallowed_methods,
    reason = "the sensor's start-up runs on a blocking thread, outside the runtime's clock"
)]
fn lock_briefly(file: File) -> Result<Flock<File>, String> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((back, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = back;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(format!("another process held it for {LOCK_PATIENCE:?}"));
            }
            Err((_, errno)) => return Err(errno.desc().to_string()),
        }
    }
}

fn read_setting(mut file: &File) -> std::io::Result<u32> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.seek(std::io::SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("not a number: {:?}", text.trim())))
}

fn write_setting(mut file: &File, value: u32) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(format!("{value}\n").as_bytes())
}

fn mark_refused(root: &Path, errno: Errno) -> String {
    let why = match errno {
        Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENODEV => {
            "its filesystem does not support file handles".to_string()
        }
        other => other.desc().to_string(),
    };
    format!(
        "the kernel refused a filesystem mark on {}: {why}",
        root.display()
    )
}

pub(super) fn filesystem_id(file: &File) -> nix::Result<[u8; FSID_LEN]> {
    let fsid = nix::sys::statfs::fstatfs(file)?.filesystem_id();
    // SAFETY: fsid_t is two c_ints with no padding, the same 8 bytes the kernel puts in the
    // fsid of an event's file handle record; reading them as bytes is a plain copy.
    Ok(unsafe { std::mem::transmute::<nix::sys::statfs::fsid_t, [u8; FSID_LEN]>(fsid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The setting as it stands, read under the lock the agents take.
    fn setting_now() -> u32 {
        let file = File::open(MAX_QUEUED_EVENTS).unwrap();
        let file = Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, e)| e)
            .unwrap();
        read_setting(&file).unwrap()
    }

    /// The kernel's queue length is raised while groups are made and put back after; a length
    /// already long enough is left alone; a lock another process holds on the setting delays
    /// the start by two seconds at most.
    #[test]
    fn the_queue_length_is_raised_while_held_and_put_back_and_a_users_lock_cannot_stall_it() {
        if !nix::unistd::geteuid().is_root() || File::open(MAX_QUEUED_EVENTS).is_err() {
            eprintln!("skipped: needs root and {MAX_QUEUED_EVENTS}");
            return;
        }
        let before = setting_now();
        let raised = Raised::to(before + 1000);
        assert_eq!(
            read_setting(&raised.held.as_ref().unwrap().0).unwrap(),
            before + 1000
        );
        assert_eq!(
            raised.describe(),
            format!("kernel queues of {} events", before + 1000)
        );
        drop(raised);
        assert_eq!(setting_now(), before);
        let kept = Raised::to(before);
        assert!(kept.held.is_none());
        assert_eq!(kept.describe(), format!("kernel queues of {before} events"));
        drop(kept);

        // Anyone may open the setting read-only and hold a lock on it: the agent then goes on
        // with the kernel's length, saying why, instead of waiting for it without end.
        let holder = Flock::lock(File::open(MAX_QUEUED_EVENTS).unwrap(), FlockArg::LockShared)
            .map_err(|(_, e)| e)
            .unwrap();
        let blocked = Raised::to(before + 1000);
        assert!(blocked.held.is_none());
        assert!(
            blocked.describe().contains("another process held it"),
            "{}",
            blocked.describe()
        );
        drop(holder);
        assert_eq!(setting_now(), before);
    }
}
