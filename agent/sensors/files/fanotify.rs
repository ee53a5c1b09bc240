//! The Linux backend for root: fanotify, which names the process behind every event.
//!
//! Two notification groups mark the filesystems of the watched trees:
//! - `names` reports creates, deletes and renames with directory file handles and entry names
//!   (`FAN_REPORT_DFID_NAME | FAN_REPORT_FID`); the handles are turned back into paths with
//!   `open_by_handle_at` against a descriptor on the same filesystem.
//! - `writes` reports close-after-write the classic way, with an open descriptor to the file, so
//!   the file can be examined even when it was deleted a microsecond later.
//!
//! Events of both are filtered to the watched trees and to other processes than the agent.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bannin::event::FileAction;
use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

use super::observe::{Observer, Scope, Seen};

/// Bytes per read of the `names` group; many events per system call under load.
const READ_BUFFER: usize = 64 * 1024;
/// Reads per round, so a flood cannot starve the stop flag or the `writes` group.
const READS_PER_ROUND: usize = 16;
/// How long a poll waits before the stop flag is looked at again.
const POLL_MS: u16 = 200;
/// How long a poll waits while events wait for their process to be known.
const WAITING_POLL_MS: u16 = 10;
/// Directory handles remembered with their paths, for events naming a directory that is gone
/// by the time the event is read (`rm -r`).
const DIR_CACHE: usize = 65_536;
/// Directory handles resolved and kept until a directory rename (anywhere on the filesystem).
const RESOLVED_CACHE: usize = 65_536;

const FSID_LEN: usize = 8;
const METADATA_LEN: usize = 24;

pub struct FanotifyBackend {
    names: Fanotify,
    writes: Fanotify,
    /// `FAN_MODIFY` with file handles only, in a group of its own: a truncate(2) by path is
    /// followed by no close-after-write, and a system busy writing cannot overflow the queue
    /// of creates and deletes with it.
    modifies: Fanotify,
    /// A descriptor on each marked filesystem, by filesystem id, to resolve handles against.
    mounts: HashMap<[u8; FSID_LEN], File>,
    /// The watched roots and the filesystem each is on.
    roots: Vec<(PathBuf, [u8; FSID_LEN])>,
    /// Whether the kernel reports renames as one event with both names (`FAN_RENAME`, 5.17+).
    paired_renames: bool,
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
        ignore_own_state(&writes, private)?;
    }
    Ok(FanotifyBackend {
        names,
        writes,
        modifies,
        mounts,
        roots,
        paired_renames,
    })
}

/// Keeps close-after-writes of the agent's own state files out of the `writes` group. Each such
/// event would hand the agent a descriptor on its own SQLite file, and closing any descriptor on
/// a file drops every POSIX lock the process holds on it: another reader of the spool would then
/// think itself alone, truncate the shared-memory file the agent has mapped, and the agent would
/// die of SIGBUS. An ignore mark stops the kernel from creating the event at all.
fn ignore_own_state(writes: &Fanotify, dir: &Path) -> Result<(), String> {
    let mask = MaskFlags::FAN_CLOSE_WRITE | MaskFlags::FAN_EVENT_ON_CHILD | MaskFlags::FAN_ONDIR;
    let ignore = MarkFlags::FAN_MARK_ADD | MarkFlags::from_bits_retain(libc::FAN_MARK_IGNORE_SURV);
    let legacy = MarkFlags::FAN_MARK_ADD
        | MarkFlags::FAN_MARK_IGNORED_MASK
        | MarkFlags::FAN_MARK_IGNORED_SURV_MODIFY;
    let marked = match writes.mark(ignore, mask, nix::fcntl::AT_FDCWD, Some(dir)) {
        // Kernels before 6.0 know only the older ignored mask.
        Err(Errno::EINVAL) => writes.mark(legacy, mask, nix::fcntl::AT_FDCWD, Some(dir)),
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

fn filesystem_id(file: &File) -> nix::Result<[u8; FSID_LEN]> {
    let fsid = nix::sys::statfs::fstatfs(file)?.filesystem_id();
    // SAFETY: fsid_t is two c_ints with no padding, the same 8 bytes the kernel puts in the
    // fsid of an event's file handle record; reading them as bytes is a plain copy.
    Ok(unsafe { std::mem::transmute::<nix::sys::statfs::fsid_t, [u8; FSID_LEN]>(fsid) })
}

/// The handle of a directory, as events will name it.
fn handle_of(path: &Path, fsid: [u8; FSID_LEN]) -> Option<Handle> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let capacity = libc::MAX_HANDLE_SZ as usize;
    let mut raw = vec![0u32; 2 + capacity.div_ceil(4)];
    raw[0] = u32::try_from(capacity).ok()?;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `c_path` is NUL-terminated; `raw` is an aligned struct file_handle whose
    // handle_bytes says how much room follows; `mount_id` is a valid out pointer. All outlive
    // the call.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            raw.as_mut_ptr().cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    let len = (raw[0] as usize).min(capacity);
    let bytes: Vec<u8> = raw[2..]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(len)
        .collect();
    Some(Handle {
        fsid,
        handle_type: i32::from_ne_bytes(raw[1].to_ne_bytes()),
        bytes,
    })
}

/// A file handle as an event reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Handle {
    fsid: [u8; FSID_LEN],
    handle_type: i32,
    bytes: Vec<u8>,
}

/// One `names` event, parsed.
#[derive(Debug, Default, PartialEq)]
struct NameEvent {
    mask: u64,
    pid: i32,
    /// The object itself (`FAN_REPORT_FID`).
    object: Option<Handle>,
    /// The directory and entry name (`FAN_EVENT_INFO_TYPE_DFID_NAME`).
    entry: Option<(Handle, Vec<u8>)>,
    /// For `FAN_RENAME`: where it was and where it is now.
    old_entry: Option<(Handle, Vec<u8>)>,
    new_entry: Option<(Handle, Vec<u8>)>,
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// Parses what one read of a `FAN_REPORT_DFID_NAME | FAN_REPORT_FID` group returned: event
/// metadata, each followed by its information records. Parsed from bytes, so a short or odd
/// buffer ends the parse instead of reading past it.
fn parse_names(buf: &[u8]) -> Vec<NameEvent> {
    let mut events = Vec::new();
    let mut offset = 0;
    while let (Some(event_len), Some(metadata_len)) =
        (read_u32(buf, offset), read_u16(buf, offset + 6))
    {
        let event_len = event_len as usize;
        let metadata_len = metadata_len as usize;
        if event_len < METADATA_LEN || metadata_len < METADATA_LEN || offset + event_len > buf.len()
        {
            break;
        }
        let event = &buf[offset..offset + event_len];
        let mut parsed = NameEvent {
            mask: read_u64(event, 8).unwrap_or(0),
            pid: read_i32(event, 20).unwrap_or(0),
            ..NameEvent::default()
        };
        let mut info = metadata_len;
        while let (Some(&info_type), Some(len)) = (event.get(info), read_u16(event, info + 2)) {
            let len = len as usize;
            if len < 4 || info + len > event.len() {
                break;
            }
            if let Some((handle, name)) = parse_handle_record(&event[info + 4..info + len]) {
                match info_type {
                    libc::FAN_EVENT_INFO_TYPE_FID => parsed.object = Some(handle),
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME => parsed.entry = Some((handle, name)),
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => {
                        parsed.old_entry = Some((handle, name))
                    }
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => {
                        parsed.new_entry = Some((handle, name))
                    }
                    libc::FAN_EVENT_INFO_TYPE_DFID => parsed.entry = Some((handle, Vec::new())),
                    _ => {}
                }
            }
            info += len;
        }
        events.push(parsed);
        offset += event_len;
    }
    events
}

/// A record body after its header: fsid, `struct file_handle`, then for the name-carrying types
/// a NUL-terminated entry name.
fn parse_handle_record(body: &[u8]) -> Option<(Handle, Vec<u8>)> {
    let fsid: [u8; FSID_LEN] = body.get(..FSID_LEN)?.try_into().ok()?;
    let handle_bytes = read_u32(body, FSID_LEN)? as usize;
    let handle_type = read_i32(body, FSID_LEN + 4)?;
    let start = FSID_LEN + 8;
    let bytes = body.get(start..start + handle_bytes)?.to_vec();
    let rest = &body[start + handle_bytes..];
    let name = rest.split(|&b| b == 0).next().unwrap_or_default().to_vec();
    Some((
        Handle {
            fsid,
            handle_type,
            bytes,
        },
        name,
    ))
}

/// Turns directory handles back into paths.
struct Resolver {
    mounts: HashMap<[u8; FSID_LEN], File>,
    /// Directories in the watched trees, remembered for when they are gone by the time an event
    /// naming them is read. Oldest forgotten first.
    known: HashMap<Handle, PathBuf>,
    order: std::collections::VecDeque<Handle>,
    roots: Vec<PathBuf>,
    /// Every directory resolved since the last directory rename anywhere on the marked
    /// filesystems. A directory's path only changes when it or a parent is renamed, and the
    /// filesystem mark reports every such rename, so until then the answer stands and most
    /// events cost a hash lookup instead of two system calls.
    resolved: HashMap<Handle, PathBuf>,
}

impl Resolver {
    fn new(mounts: HashMap<[u8; FSID_LEN], File>, roots: Vec<PathBuf>) -> Self {
        Resolver {
            mounts,
            known: HashMap::new(),
            order: std::collections::VecDeque::new(),
            roots,
            resolved: HashMap::new(),
        }
    }

    fn dir(&mut self, handle: &Handle) -> Option<PathBuf> {
        if let Some(path) = self.resolved.get(handle) {
            return Some(path.clone());
        }
        match self.open(handle) {
            Some(path) => {
                if self.resolved.len() >= RESOLVED_CACHE {
                    self.resolved.clear();
                }
                self.resolved.insert(handle.clone(), path.clone());
                self.remember(handle.clone(), path.clone());
                Some(path)
            }
            None => self.known.get(handle).cloned(),
        }
    }

    /// A directory was renamed somewhere on the filesystem: any resolved path may be stale.
    fn forget_resolved(&mut self) {
        self.resolved.clear();
    }

    /// A directory was renamed: what is remembered below the old name in the watched trees now
    /// lives below the new one.
    fn dir_renamed(&mut self, old: Option<&Path>, new: &Path) {
        self.resolved.clear();
        let Some(old) = old else {
            return;
        };
        for path in self.known.values_mut() {
            if let Ok(rest) = path.strip_prefix(old) {
                *path = new.join(rest);
            }
        }
    }

    fn entry(&mut self, entry: &(Handle, Vec<u8>)) -> Option<PathBuf> {
        let dir = self.dir(&entry.0)?;
        if entry.1.is_empty() || entry.1 == b"." {
            return Some(dir);
        }
        Some(dir.join(OsStr::from_bytes(&entry.1)))
    }

    fn remember(&mut self, handle: Handle, path: PathBuf) {
        // The filesystem mark reports the whole filesystem; only the watched trees are kept.
        if !self.roots.iter().any(|root| path.starts_with(root)) {
            return;
        }
        if self.known.insert(handle.clone(), path).is_none() {
            self.order.push_back(handle);
        }
        while self.known.len() > DIR_CACHE {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.known.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Remembers the directories that already exist below the roots, so an `rm -r` of a tree
    /// the sensor never saw an event in still resolves.
    fn learn_existing(&mut self, roots: &[(PathBuf, [u8; FSID_LEN])]) {
        for (root, fsid) in roots {
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                if self.known.len() >= DIR_CACHE {
                    return;
                }
                if let Some(handle) = handle_of(&dir, *fsid) {
                    self.remember(handle, dir.clone());
                }
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
    }

    fn open(&self, handle: &Handle) -> Option<PathBuf> {
        let mount = self.mounts.get(&handle.fsid)?;
        // struct file_handle is a u32 length, an i32 type and the opaque bytes; built in u32
        // words so it has the alignment the kernel's struct expects.
        let words = 2 + handle.bytes.len().div_ceil(4);
        let mut raw = vec![0u32; words];
        raw[0] = u32::try_from(handle.bytes.len()).ok()?;
        raw[1] = u32::from_ne_bytes(handle.handle_type.to_ne_bytes());
        for (i, chunk) in handle.bytes.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            raw[2 + i] = u32::from_ne_bytes(word);
        }
        // SAFETY: `raw` is a properly aligned, fully initialised struct file_handle whose
        // handle_bytes matches the bytes that follow; the kernel only reads it. The mount
        // descriptor stays open for the call.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                raw.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: open_by_handle_at returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        path_of(&fd).or_else(|| long_path_of(fd))
    }

    /// Opens the file a handle names, for reading, wherever it is (its path may be too long to
    /// open by). `None` when the file is gone.
    fn open_file(&self, handle: &Handle) -> Option<File> {
        let mount = self.mounts.get(&handle.fsid)?;
        let words = 2 + handle.bytes.len().div_ceil(4);
        let mut raw = vec![0u32; words];
        raw[0] = u32::try_from(handle.bytes.len()).ok()?;
        raw[1] = u32::from_ne_bytes(handle.handle_type.to_ne_bytes());
        for (i, chunk) in handle.bytes.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            raw[2 + i] = u32::from_ne_bytes(word);
        }
        // SAFETY: as in `open`: an aligned, initialised struct file_handle the kernel only
        // reads, and a mount descriptor open for the call. O_NONBLOCK keeps a FIFO from hanging.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                raw.as_mut_ptr().cast::<libc::file_handle>(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOATIME,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: open_by_handle_at returned a new descriptor that nothing else owns.
        Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

/// Directories deeper than this are not climbed.
const MAX_DEPTH: usize = 4096;

/// The path of a directory too deep for the kernel to print (`PATH_MAX`): climbs to its parents
/// with `openat("..")`, finding each one's name in its parent by inode, until a parent's path
/// can be printed, then adds the names back.
fn long_path_of(dir: OwnedFd) -> Option<PathBuf> {
    use std::os::unix::fs::DirEntryExt;
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    let mut current = dir;
    for _ in 0..MAX_DEPTH {
        if let Some(mut path) = path_of(&current) {
            names.iter().rev().for_each(|name| path.push(name));
            return Some(path);
        }
        let inode = nix::sys::stat::fstat(&current).ok()?.st_ino;
        let parent = nix::fcntl::openat(
            &current,
            "..",
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        if nix::sys::stat::fstat(&parent).ok()?.st_ino == inode {
            return None;
        }
        // An O_PATH descriptor cannot be listed, but its /proc link opens the directory.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", parent.as_raw_fd())).ok()?;
        let name = listing
            .flatten()
            .find(|entry| entry.ino() == inode)?
            .file_name();
        names.push(name);
        current = parent;
    }
    None
}

/// The path a descriptor refers to, without the " (deleted)" the kernel appends to unlinked
/// files; the second value says whether it was there.
fn path_of_file(fd: &impl AsRawFd) -> Option<(PathBuf, bool)> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let bytes = link.as_os_str().as_bytes();
    match bytes.strip_suffix(b" (deleted)") {
        Some(stripped) => Some((PathBuf::from(OsStr::from_bytes(stripped)), true)),
        None => Some((link, false)),
    }
}

fn path_of(fd: &impl AsRawFd) -> Option<PathBuf> {
    path_of_file(fd).map(|(path, _)| path)
}

/// A close-after-write examined at once, waiting to be emitted in order with the names events.
struct Written {
    path: PathBuf,
    pid: Option<u32>,
    seen: Option<Seen>,
}

/// Examined writes in arrival order, indexed by path so a create or delete finds its own in
/// constant time even when a flood leaves thousands pending.
#[derive(Default)]
struct PendingWrites {
    queue: Vec<Option<Written>>,
    by_path: HashMap<PathBuf, Vec<usize>>,
}

impl PendingWrites {
    fn push(&mut self, written: Written) {
        self.by_path
            .entry(written.path.clone())
            .or_default()
            .push(self.queue.len());
        self.queue.push(Some(written));
    }

    /// What the latest write of `path` saw.
    fn latest(&self, path: &Path) -> Option<Seen> {
        let &last = self.by_path.get(path)?.last()?;
        self.queue.get(last)?.as_ref()?.seen.clone()
    }

    /// Takes the writes of one path, in order.
    fn take_path(&mut self, path: &Path) -> Vec<Written> {
        let positions = self.by_path.remove(path).unwrap_or_default();
        positions
            .into_iter()
            .filter_map(|i| self.queue.get_mut(i).and_then(Option::take))
            .collect()
    }

    /// Takes every write, in order.
    fn take_all(&mut self) -> Vec<Written> {
        self.by_path.clear();
        std::mem::take(&mut self.queue)
            .into_iter()
            .flatten()
            .collect()
    }
}

struct Loop {
    observer: Observer,
    resolver: Resolver,
    own_pid: i32,
    pending_writes: PendingWrites,
    /// The first half of an unpaired rename (kernels before `FAN_RENAME`).
    moved_from: Option<(PathBuf, Option<u32>)>,
    /// Writes to files whose path the kernel could not print, by inode, until this batch's
    /// names events say where they are.
    unresolved_writes: Vec<(u64, Option<u32>)>,
    /// Writes to files that could be neither named nor examined, reported as one error.
    unnamed_writes: u64,
}

pub fn run(backend: FanotifyBackend, observer: Observer, stop: Arc<AtomicBool>) {
    let FanotifyBackend {
        names,
        writes,
        modifies,
        mounts,
        roots,
        paired_renames,
    } = backend;
    tracing::debug!(paired_renames, "fanotify backend running");
    let mut resolver = Resolver::new(mounts, roots.iter().map(|(r, _)| r.clone()).collect());
    resolver.learn_existing(&roots);
    let mut state = Loop {
        observer,
        resolver,
        own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
        pending_writes: PendingWrites::default(),
        moved_from: None,
        unresolved_writes: Vec::new(),
        unnamed_writes: 0,
    };
    let mut buf = vec![0u8; READ_BUFFER];
    while !stop.load(Ordering::Relaxed) && !state.observer.closed() {
        let mut fds = [
            PollFd::new(names.as_fd(), PollFlags::POLLIN),
            PollFd::new(writes.as_fd(), PollFlags::POLLIN),
            PollFd::new(modifies.as_fd(), PollFlags::POLLIN),
        ];
        // Events waiting for their process are looked at again soon, not at the next event.
        let timeout = if state.observer.waiting() {
            WAITING_POLL_MS
        } else {
            POLL_MS
        };
        match poll(&mut fds, PollTimeout::from(timeout)) {
            Ok(0) => {
                state.settle_moved_from();
                state.observer.pump();
                state.observer.rescan_if_due();
                continue;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => {
                state.observer.error(
                    format!(
                        "fanotify poll failed, the file sensor stops: {}",
                        errno.desc()
                    ),
                    Path::new(""),
                );
                return;
            }
        }
        // The names are read before the writes are drained: every close-after-write that
        // happened before a delete read here is then in hand when that delete is handled.
        let mut events = Vec::new();
        for _ in 0..READS_PER_ROUND {
            match nix::unistd::read(&names, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => break,
                Ok(n) => events.extend(parse_names(&buf[..n])),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    // Not a transient condition: the group is unusable, so say so and stop
                    // rather than repeat the error on every poll.
                    state.observer.error(
                        format!(
                            "reading fanotify events failed, the file sensor stops: {}",
                            errno.desc()
                        ),
                        Path::new(""),
                    );
                    return;
                }
            }
        }
        state.observer.new_batch();
        state.drain_writes(&writes);
        let mut events = events.into_iter().peekable();
        while let Some(event) = events.next() {
            if is_exchange(&event, events.peek()) {
                events.next();
                state.exchanged(&event);
                continue;
            }
            state.handle_name_event(&event, paired_renames);
        }
        state.resolve_writes();
        state.flush_writes(None);
        state.drain_modifies(&modifies, &mut buf);
        state.observer.rescan_if_due();
    }
}

/// Whether `event` and the one after it are the two halves the kernel reports for a
/// `RENAME_EXCHANGE`: renames in opposite directions between the same two names, each moving a
/// different file. (A file moved away and straight back is one file moving twice.)
fn is_exchange(event: &NameEvent, next: Option<&NameEvent>) -> bool {
    let Some(next) = next else {
        return false;
    };
    event.mask & libc::FAN_RENAME != 0
        && next.mask & libc::FAN_RENAME != 0
        && event.pid == next.pid
        && event.old_entry.is_some()
        && event.new_entry.is_some()
        && event.old_entry == next.new_entry
        && event.new_entry == next.old_entry
        && event.object.is_some()
        && event.object != next.object
}

impl Loop {
    fn pid(&self, pid: i32) -> Option<Option<u32>> {
        if pid == self.own_pid {
            return None;
        }
        Some(u32::try_from(pid).ok().filter(|&p| p != 0))
    }

    /// Reads every queued close-after-write and examines each file through the descriptor the
    /// event carries, closing it straight after so a flood cannot exhaust descriptors.
    fn drain_writes(&mut self, writes: &Fanotify) {
        for _ in 0..READS_PER_ROUND * 16 {
            let events = match writes.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    self.observer.error(
                        format!("reading fanotify write events failed: {}", errno.desc()),
                        Path::new(""),
                    );
                    break;
                }
            };
            for event in events {
                if event.mask().contains(MaskFlags::FAN_Q_OVERFLOW) {
                    self.overflow();
                    continue;
                }
                let Some(pid) = self.pid(event.pid()) else {
                    continue;
                };
                let Some(fd) = event.fd() else {
                    continue;
                };
                let Some((path, _deleted)) = path_of_file(&fd.as_raw_fd()) else {
                    // Too deep for the kernel to print: named by its inode once this batch's
                    // creates and renames are in, or reported as an error, never dropped.
                    match nix::sys::stat::fstat(fd) {
                        Ok(stat) => self.unresolved_writes.push((stat.st_ino, pid)),
                        Err(_) => self.unnamed_writes += 1,
                    }
                    continue;
                };
                if !self.observer.scope().contains(&path) {
                    continue;
                }
                let seen = fd
                    .try_clone_to_owned()
                    .ok()
                    .and_then(|owned| self.observer.examine_file(&path, File::from(owned)));
                self.pending_writes.push(Written { path, pid, seen });
            }
        }
    }

    /// Reads the queued modifications and reports each remembered file that shrank (a
    /// truncate(2) by path is followed by no close-after-write); growth waits for the close.
    fn drain_modifies(&mut self, modifies: &Fanotify, buf: &mut [u8]) {
        for _ in 0..READS_PER_ROUND {
            let n = match nix::unistd::read(modifies, buf) {
                Ok(0) | Err(Errno::EAGAIN) => return,
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    self.observer.error(
                        format!("reading fanotify modify events failed: {}", errno.desc()),
                        Path::new(""),
                    );
                    return;
                }
            };
            for event in parse_names(&buf[..n]) {
                if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                    self.overflow();
                    continue;
                }
                let Some(pid) = self.pid(event.pid) else {
                    continue;
                };
                if event.mask & libc::FAN_ONDIR != 0 {
                    continue;
                }
                let Some(path) = event.entry.as_ref().and_then(|e| self.resolver.entry(e)) else {
                    continue;
                };
                if self.observer.scope().contains(&path) {
                    self.observer.modified(&path, pid);
                }
            }
        }
    }

    /// Names the writes whose path was too long to print by the inode the sensor remembers
    /// from the file's create or rename, and reports the rest as one counted error.
    fn resolve_writes(&mut self) {
        for (inode, pid) in std::mem::take(&mut self.unresolved_writes) {
            match self.observer.path_of_inode(inode) {
                Some(path) => {
                    let seen = self.observer.examine_path(&path);
                    self.pending_writes.push(Written { path, pid, seen });
                }
                None => self.unnamed_writes += 1,
            }
        }
        let unnamed = std::mem::take(&mut self.unnamed_writes);
        if unnamed > 0 {
            self.observer.error_count(
                format!(
                    "{unnamed} writes to files whose path is longer than the kernel can print and was never seen created (PATH_MAX)"
                ),
                unnamed,
            );
        }
    }

    /// Emits the examined writes, all of them or only those of one path (before that path is
    /// deleted or renamed, so the delete carries the written size).
    fn flush_writes(&mut self, only: Option<&Path>) {
        let now = match only {
            Some(path) => self.pending_writes.take_path(path),
            None => self.pending_writes.take_all(),
        };
        for written in now {
            self.observer
                .changed(FileAction::Write, &written.path, written.pid, written.seen);
        }
    }

    fn overflow(&mut self) {
        // The kernel drops events past its queue limit without counting them.
        self.observer.overflow(
            "the fanotify queue overflowed; an unknown number of events were lost",
            None,
        );
    }

    fn settle_moved_from(&mut self) {
        if let Some((path, pid)) = self.moved_from.take() {
            self.flush_writes(Some(&path));
            self.observer.deleted(&path, pid);
        }
    }

    fn handle_name_event(&mut self, event: &NameEvent, paired_renames: bool) {
        let mask = event.mask;
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            self.overflow();
            return;
        }
        let is_dir = mask & libc::FAN_ONDIR != 0;
        if is_dir && mask & (libc::FAN_RENAME | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO) != 0 {
            self.resolver.forget_resolved();
        }
        let Some(pid) = self.pid(event.pid) else {
            return;
        };
        if !paired_renames && mask & libc::FAN_MOVED_TO == 0 {
            self.settle_moved_from();
        }
        if mask & libc::FAN_RENAME != 0 {
            let (Some(old), Some(new)) = (&event.old_entry, &event.new_entry) else {
                return;
            };
            let old = self.resolver.entry(old);
            let new = self.resolver.entry(new);
            if let Some(new) = new {
                self.renamed(old, new, pid, is_dir, event.object.as_ref());
            }
            return;
        }
        let Some(entry) = &event.entry else {
            return;
        };
        let Some(path) = self.resolver.entry(entry) else {
            tracing::debug!(
                mask,
                "fanotify event for a directory that cannot be resolved"
            );
            return;
        };
        let created = mask & libc::FAN_CREATE != 0;
        let deleted = mask & libc::FAN_DELETE != 0;
        // The kernel merges a create and a delete of one name by one process, queued back to
        // back, into a single event; whether the name exists now tells which came first.
        let recreated = created && deleted && std::fs::symlink_metadata(&path).is_ok();
        if deleted && recreated {
            self.entry_deleted(&path, pid, is_dir, None);
        }
        if created {
            self.entry_created(&path, pid, is_dir, event.object.as_ref());
        }
        if deleted && !recreated {
            self.entry_deleted(&path, pid, is_dir, event.object.as_ref());
        }
        if mask & libc::FAN_MOVED_FROM != 0 {
            self.moved_from = Some((path.clone(), pid));
        }
        if mask & libc::FAN_MOVED_TO != 0 {
            let old = self.moved_from.take().map(|(old, _)| old);
            self.renamed(old, path, pid, is_dir, event.object.as_ref());
        }
    }

    fn entry_created(
        &mut self,
        path: &Path,
        pid: Option<u32>,
        is_dir: bool,
        object: Option<&Handle>,
    ) {
        if is_dir {
            if let Some(object) = object {
                self.resolver.remember(object.clone(), path.to_path_buf());
            }
        } else if self.observer.scope().contains(path) {
            // A file already gone is described by the write examined through its descriptor,
            // pending in this batch or already emitted in the previous one.
            let seen = self
                .pending_writes
                .latest(path)
                .or_else(|| self.observer.examine_path(path))
                .or_else(|| {
                    let file = self.resolver.open_file(object?)?;
                    self.observer.examine_file(path, file)
                })
                .or_else(|| self.observer.remembered(path));
            self.observer.changed(FileAction::Create, path, pid, seen);
        }
    }

    fn entry_deleted(
        &mut self,
        path: &Path,
        pid: Option<u32>,
        is_dir: bool,
        object: Option<&Handle>,
    ) {
        if is_dir {
            self.observer.dir_deleted(path);
        } else if self.observer.scope().contains(path) {
            self.flush_writes(Some(path));
            // A file still linked under another name opens by its handle: only a name went.
            let links_left = object
                .and_then(|object| self.resolver.open_file(object))
                .and_then(|file| file.metadata().ok())
                .map(|metadata| {
                    use std::os::unix::fs::MetadataExt;
                    metadata.nlink()
                });
            self.observer.deleted_with(path, pid, links_left);
        }
    }

    /// Both halves of a `RENAME_EXCHANGE`, reported as one exchange.
    fn exchanged(&mut self, event: &NameEvent) {
        let is_dir = event.mask & libc::FAN_ONDIR != 0;
        if is_dir {
            self.resolver.forget_resolved();
        }
        let Some(pid) = self.pid(event.pid) else {
            return;
        };
        let (Some(old), Some(new)) = (&event.old_entry, &event.new_entry) else {
            return;
        };
        let (Some(a), Some(b)) = (self.resolver.entry(old), self.resolver.entry(new)) else {
            return;
        };
        if is_dir {
            // Swapped through a name no real path can have (it holds a NUL byte).
            let mut parked = a.clone().into_os_string();
            parked.push("\0exchange");
            let parked = PathBuf::from(parked);
            self.resolver.dir_renamed(Some(&a), &parked);
            self.resolver.dir_renamed(Some(&b), &a);
            self.resolver.dir_renamed(Some(&parked), &b);
            self.observer.dir_renamed(&a, &parked);
            self.observer.dir_renamed(&b, &a);
            self.observer.dir_renamed(&parked, &b);
            return;
        }
        let scope = self.observer.scope();
        match (scope.contains(&a), scope.contains(&b)) {
            (false, false) => {}
            (true, true) => {
                self.flush_writes(Some(&a));
                self.flush_writes(Some(&b));
                self.observer.exchanged(&a, &b, pid);
            }
            // One side outside the watched trees: for the trees, one file left and another
            // arrived from outside.
            (inside_a, _) => {
                let (inside, outside) = if inside_a { (a, b) } else { (b, a) };
                self.flush_writes(Some(&inside));
                self.observer.renamed(Some(&inside), &outside, pid);
                self.observer.renamed(None, &inside, pid);
            }
        }
    }

    fn renamed(
        &mut self,
        old: Option<PathBuf>,
        new: PathBuf,
        pid: Option<u32>,
        is_dir: bool,
        object: Option<&Handle>,
    ) {
        if is_dir {
            self.resolver.dir_renamed(old.as_deref(), &new);
            if let Some(object) = object {
                self.resolver.remember(object.clone(), new.clone());
            }
            if let Some(old) = old {
                self.observer.dir_renamed(&old, &new);
            }
            return;
        }
        let scope = self.observer.scope();
        let old_in = old.as_ref().is_some_and(|old| scope.contains(old));
        let new_in = scope.contains(&new);
        if !old_in && !new_in {
            return;
        }
        if let Some(old) = &old {
            self.flush_writes(Some(old));
        }
        // A file leaving the watched trees is still reported with where it went: the kernel
        // names both ends of the rename.
        let from = if old_in { old } else { None };
        self.observer.renamed(from.as_deref(), &new, pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(info_type: u8, fsid: [u8; 8], handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid);
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&1i32.to_ne_bytes());
        body.extend_from_slice(handle);
        if !name.is_empty() {
            body.extend_from_slice(name);
            body.push(0);
        }
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut rec = vec![info_type, 0];
        rec.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        rec.extend_from_slice(&body);
        rec
    }

    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let info: Vec<u8> = records.concat();
        let mut buf = Vec::new();
        buf.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        buf.push(libc::FANOTIFY_METADATA_VERSION);
        buf.push(0);
        buf.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        buf.extend_from_slice(&mask.to_ne_bytes());
        buf.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        buf.extend_from_slice(&pid.to_ne_bytes());
        buf.extend_from_slice(&info);
        buf
    }

    #[test]
    fn parses_rename_records_and_the_overflow_event() {
        let fsid = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = event(
            libc::FAN_RENAME,
            42,
            &[
                record(
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    fsid,
                    b"dirA0000",
                    b"a.csv",
                ),
                record(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    fsid,
                    b"dirB0000",
                    b"b.csv",
                ),
                record(libc::FAN_EVENT_INFO_TYPE_FID, fsid, b"file0000", b""),
            ],
        );
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        // A truncated trailing event is ignored rather than read past.
        buf.extend_from_slice(&[0xff; 10]);
        let events = parse_names(&buf);
        assert_eq!(events.len(), 2);
        let rename = &events[0];
        assert_eq!(rename.pid, 42);
        let (old_dir, old_name) = rename.old_entry.as_ref().unwrap();
        assert_eq!(old_dir.bytes, b"dirA0000");
        assert_eq!(old_dir.fsid, fsid);
        assert_eq!(old_name, b"a.csv");
        assert_eq!(rename.new_entry.as_ref().unwrap().1, b"b.csv");
        assert_eq!(rename.object.as_ref().unwrap().bytes, b"file0000");
        assert_eq!(events[1].mask, libc::FAN_Q_OVERFLOW);
    }
}
