//! Setting fanotify up: the three notification groups, their filesystem marks, and the ignore
//! mark that keeps the agent's own state directory out of them.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
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
}

/// Sets up both groups and marks the filesystem of every root, or says why it cannot.
pub fn open(scope: &Scope) -> Result<FanotifyBackend, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".to_string());
    }
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
        mounts.entry(fsid).or_insert(dir);
        roots.push((root.clone(), fsid));
    }
    if let Some(private) = scope.private_dir() {
        ignore_own_state(&writes, MaskFlags::FAN_CLOSE_WRITE, private)?;
        // Every spool commit writes the write-ahead log: without this the agent would wake for
        // its own writes and resolve each only to find it out of scope.
        ignore_own_state(&modifies, MaskFlags::FAN_MODIFY, private)?;
    }
    let mut resolver = Resolver::new(mounts, roots.iter().map(|(r, _)| r.clone()).collect());
    resolver.learn_existing(&roots);
    Ok(FanotifyBackend {
        names,
        writes,
        modifies,
        resolver,
        paired_renames,
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
