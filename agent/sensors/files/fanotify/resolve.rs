//! Turning file handles back into paths (`open_by_handle_at`), with the directories of the
//! watched trees remembered for events that name a directory already gone.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;

use super::record::{FSID_LEN, Handle};

/// The longest file handle the kernel makes.
const MAX_HANDLE_BYTES: usize = libc::MAX_HANDLE_SZ as usize;

/// Directory handles remembered with their paths, for events naming a directory that is gone
/// by the time the event is read (`rm -r`).
const DIR_CACHE: usize = 65_536;
/// Directory handles resolved and kept until a directory rename (anywhere on the filesystem).
const RESOLVED_CACHE: usize = 65_536;

/// The handle of a directory, as events will name it.
fn handle_of(path: &Path, fsid: [u8; FSID_LEN]) -> Option<Handle> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    name_to_handle(libc::AT_FDCWD, &c_path, 0, fsid)
}

/// The handle of an open file, as events name it, on the filesystem `fsid` (zero where it is not
/// known and only the handle's type and bytes are compared).
pub(super) fn handle_of_file(file: &impl AsRawFd, fsid: [u8; FSID_LEN]) -> Option<Handle> {
    name_to_handle(file.as_raw_fd(), c"", libc::AT_EMPTY_PATH, fsid)
}

/// `name_to_handle_at(dirfd, path, flags)`, as a [`Handle`] on the filesystem `fsid`.
fn name_to_handle(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    fsid: [u8; FSID_LEN],
) -> Option<Handle> {
    // A struct file_handle on the stack: its size, its type, then room for the handle's bytes.
    let mut raw = [0u32; 2 + MAX_HANDLE_BYTES.div_ceil(4)];
    raw[0] = MAX_HANDLE_BYTES as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `path` is NUL-terminated; `raw` is an aligned struct file_handle whose
    // handle_bytes says how much room follows; `mount_id` is a valid out pointer; `dirfd` is
    // AT_FDCWD or a descriptor the caller holds open. All outlive the call.
    let rc = unsafe {
        libc::name_to_handle_at(
            dirfd,
            path.as_ptr(),
            raw.as_mut_ptr().cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    };
    if rc != 0 {
        return None;
    }
    let len = (raw[0] as usize).min(MAX_HANDLE_BYTES);
    let mut bytes = Vec::with_capacity(len);
    for word in &raw[2..] {
        let room = len - bytes.len();
        if room == 0 {
            break;
        }
        bytes.extend_from_slice(&word.to_ne_bytes()[..room.min(4)]);
    }
    Some(Handle {
        fsid,
        handle_type: i32::from_ne_bytes(raw[1].to_ne_bytes()),
        bytes,
    })
}

/// `statx(dirfd, path, flags, mask)`, or `None` when it fails.
fn statx(
    dirfd: libc::c_int,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    mask: libc::c_uint,
) -> Option<libc::statx> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `path` is NUL-terminated; `stx` is writable for a whole struct statx; `dirfd` is
    // AT_FDCWD or a descriptor the caller holds open. All outlive the call.
    let rc = unsafe { libc::statx(dirfd, path.as_ptr(), flags, mask, stx.as_mut_ptr()) };
    // SAFETY: statx succeeded and filled the struct, which was zeroed before.
    (rc == 0).then(|| unsafe { stx.assume_init() })
}

/// The mount id a `statx` answer carries, where the kernel gave it (5.8 and later).
fn mount_id(stx: &libc::statx) -> Option<u64> {
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// `fstat` of an open file, with the id of the mount it was opened through (`statx` with
/// `STATX_MNT_ID`, one system call as `fstat` is); the id is `None` where the kernel does not
/// give it, and where it has no `statx` the `fstat` is the plain one.
pub(super) fn stat_with_mount(
    fd: std::os::fd::BorrowedFd<'_>,
) -> Option<(nix::sys::stat::FileStat, Option<u64>)> {
    let Some(stx) = statx(
        fd.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH | libc::AT_STATX_SYNC_AS_STAT,
        libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
    ) else {
        return nix::sys::stat::fstat(fd).ok().map(|stat| (stat, None));
    };
    // SAFETY: a struct stat is plain integers, for which all zeroes is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    stat.st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    stat.st_ino = stx.stx_ino;
    stat.st_nlink = stx.stx_nlink.into();
    stat.st_mode = stx.stx_mode.into();
    stat.st_uid = stx.stx_uid;
    stat.st_gid = stx.stx_gid;
    stat.st_size = i64::try_from(stx.stx_size).unwrap_or(i64::MAX);
    stat.st_blocks = i64::try_from(stx.stx_blocks).unwrap_or(i64::MAX);
    stat.st_blksize = stx.stx_blksize.into();
    stat.st_mtime = stx.stx_mtime.tv_sec;
    stat.st_mtime_nsec = stx.stx_mtime.tv_nsec.into();
    stat.st_ctime = stx.stx_ctime.tv_sec;
    stat.st_ctime_nsec = stx.stx_ctime.tv_nsec.into();
    stat.st_atime = stx.stx_atime.tv_sec;
    stat.st_atime_nsec = stx.stx_atime.tv_nsec.into();
    Some((stat, mount_id(&stx)))
}

/// The id of the mount `fd` was opened through, where the kernel gives it.
pub(super) fn mount_of(fd: &impl AsRawFd) -> Option<u64> {
    let stx = statx(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH, libc::STATX_MNT_ID)?;
    mount_id(&stx)
}

/// The id of the mount the file at `path` (followed, as a link in `/proc` is) is reached
/// through, where the kernel gives it.
pub(super) fn mount_of_path(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let stx = statx(libc::AT_FDCWD, &c_path, 0, libc::STATX_MNT_ID)?;
    mount_id(&stx)
}

/// Turns directory handles back into paths.
pub(super) struct Resolver {
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
    /// Each marked filesystem's id by the device number its files report in `fstat`.
    devices: HashMap<u64, [u8; FSID_LEN]>,
    /// The mounts the watched trees are reached through: a file opened through another (a bind
    /// mount, perhaps in another mount namespace) has a path the sensor's own may not name.
    /// Empty where the kernel does not give mount ids.
    root_mounts: Vec<u64>,
}

impl Resolver {
    pub(super) fn new(mounts: HashMap<[u8; FSID_LEN], File>, roots: Vec<PathBuf>) -> Self {
        let devices = mounts
            .iter()
            .filter_map(|(fsid, dir)| {
                let stat = nix::sys::stat::fstat(dir).ok()?;
                #[allow(clippy::useless_conversion, reason = "dev_t is not a u64 everywhere")]
                Some((u64::from(stat.st_dev), *fsid))
            })
            .collect();
        Resolver {
            devices,
            root_mounts: Vec::new(),
            mounts,
            known: HashMap::new(),
            order: std::collections::VecDeque::new(),
            roots,
            resolved: HashMap::new(),
        }
    }

    pub(super) fn dir(&mut self, handle: &Handle) -> Option<PathBuf> {
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

    /// The mounts the watched trees are reached through, as [`mount_of`] gives them.
    pub(super) fn set_root_mounts(&mut self, mounts: Vec<u64>) {
        self.root_mounts = mounts;
    }

    /// Whether a file opened through `mount` is named by its descriptor's link as the sensor
    /// sees paths: opened through a mount of the watched trees, or where mounts are not known.
    pub(super) fn through_root_mount(&self, mount: Option<u64>) -> bool {
        mount.is_none_or(|mount| self.root_mounts.is_empty() || self.root_mounts.contains(&mount))
    }

    /// The path of a file by its handle, through the mount the sensor holds for its filesystem;
    /// `None` when it has no name left (or no mount is held).
    pub(super) fn path_of_handle(&self, handle: &Handle) -> Option<PathBuf> {
        let fd = self.open_path(handle)?;
        match path_of_file(&fd, None)? {
            (_, true) => None,
            (path, false) => Some(path),
        }
    }

    /// The id, as events give it, of the marked filesystem whose files report `device`.
    pub(super) fn fsid_of_device(&self, device: u64) -> Option<[u8; FSID_LEN]> {
        self.devices.get(&device).copied()
    }

    /// A directory was renamed somewhere on the filesystem: any resolved path may be stale.
    pub(super) fn forget_resolved(&mut self) {
        self.resolved.clear();
    }

    /// A directory was renamed: what is remembered below the old name in the watched trees now
    /// lives below the new one.
    pub(super) fn dir_renamed(&mut self, old: Option<&Path>, new: &Path) {
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

    pub(super) fn entry(&mut self, entry: &(Handle, Vec<u8>)) -> Option<PathBuf> {
        let name = entry.1.as_slice();
        if name.is_empty() || name == b"." {
            return self.dir(&entry.0);
        }
        // Built once at its final size from the cached directory, not copied out of the cache
        // and then grown.
        if let Some(dir) = self.resolved.get(&entry.0) {
            return Some(join_name(dir, name));
        }
        let dir = self.dir(&entry.0)?;
        Some(join_name(&dir, name))
    }

    pub(super) fn remember(&mut self, handle: Handle, path: PathBuf) {
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
    pub(super) fn learn_existing(&mut self, roots: &[(PathBuf, [u8; FSID_LEN])]) {
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
        let fd = self
            .open_handle(handle, libc::O_PATH | libc::O_CLOEXEC)
            .ok()?;
        path_of(&fd).or_else(|| long_path_of(fd))
    }

    /// `open_by_handle_at` on the mount the handle's filesystem is known by: `Err(None)` when no
    /// mount is known for it (or the handle is malformed), `Err(Some(errno))` when the kernel
    /// refuses.
    fn open_handle(&self, handle: &Handle, flags: libc::c_int) -> Result<OwnedFd, Option<Errno>> {
        let mount = self.mounts.get(&handle.fsid).ok_or(None)?;
        // struct file_handle is a u32 length, an i32 type and the opaque bytes; built in u32
        // words so it has the alignment the kernel's struct expects, on the stack (a burst
        // opens one for each create and delete). A handle longer than the kernel makes is
        // malformed.
        let words = 2 + handle.bytes.len().div_ceil(4);
        let mut raw = [0u32; 2 + MAX_HANDLE_BYTES / 4];
        let raw = raw.get_mut(..words).ok_or(None)?;
        raw[0] = u32::try_from(handle.bytes.len()).map_err(|_| None)?;
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
                flags,
            )
        };
        if fd < 0 {
            return Err(Some(Errno::last()));
        }
        // SAFETY: open_by_handle_at returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens the file a handle names, for reading, wherever it is (its path may be too long to
    /// open by). `None` when the file is gone.
    pub(super) fn open_file(&self, handle: &Handle) -> Option<File> {
        // O_NONBLOCK keeps a FIFO from hanging.
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOATIME;
        self.open_handle(handle, flags).ok().map(File::from)
    }

    /// Whether the file a handle names is gone for good: no name left and no longer open
    /// anywhere, so the kernel says the handle is stale. `false` when it is there, or when that
    /// cannot be told (a filesystem the sensor holds no descriptor for).
    pub(super) fn is_gone(&self, handle: &Handle) -> bool {
        matches!(
            self.open_handle(handle, libc::O_PATH | libc::O_CLOEXEC),
            Err(Some(Errno::ESTALE | Errno::ENOENT))
        )
    }
}

impl Resolver {
    /// An `O_PATH` descriptor on the file a handle names, wherever it is now; `None` when it is
    /// gone or on a filesystem the sensor holds no descriptor for.
    pub(super) fn open_path(&self, handle: &Handle) -> Option<OwnedFd> {
        self.open_handle(handle, libc::O_PATH | libc::O_CLOEXEC)
            .ok()
    }
}

/// `dir` joined with one name (which holds no `/`), in one allocation of the final size.
fn join_name(dir: &Path, name: &[u8]) -> PathBuf {
    let dir = dir.as_os_str().as_bytes();
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    PathBuf::from(std::ffi::OsString::from_vec(path))
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

/// Takes ownership of the descriptor one event of a `writes` read carries (none for
/// `FAN_NOFD`), so that it is closed whatever becomes of the event.
pub(super) fn own_event_fd(fd: i32) -> Option<OwnedFd> {
    // SAFETY: a non-negative descriptor in an event just read is one the kernel installed in
    // this process's table for that event, which nothing else owns; each is taken once.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path a descriptor refers to, without the " (deleted)" the kernel appends to unlinked
/// files; the second value says whether it was there. `links` is the file's link count when the
/// caller read it before this call.
///
/// A live file may be named `customers.csv (deleted)` itself, so the suffix is only taken off a
/// file with no name left: one that had none before the link was read (an unlinked file is never
/// linked again, so the kernel appended it), or one that has none now and whose name without the
/// suffix is not another file (it was unlinked between the two looks).
pub(super) fn path_of_file(fd: &impl AsRawFd, links: Option<u64>) -> Option<(PathBuf, bool)> {
    let raw = u32::try_from(fd.as_raw_fd()).ok()?;
    let mut buf = [0u8; libc::PATH_MAX as usize];
    let read;
    let link: &[u8] = match proc_fds() {
        Some(dir) => {
            let len = read_fd_link(dir, raw, &mut buf)?;
            &buf[..len]
        }
        None => {
            read = std::fs::read_link(format!("/proc/self/fd/{raw}")).ok()?;
            read.as_os_str().as_bytes()
        }
    };
    let Some(stripped) = link.strip_suffix(b" (deleted)") else {
        return Some((PathBuf::from(OsStr::from_bytes(link)), false));
    };
    // SAFETY: the caller holds the descriptor open for this call, and its link was just read.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let unlinked = links == Some(0)
        || nix::sys::stat::fstat(fd).is_ok_and(|now| {
            now.st_nlink == 0 && nix::sys::stat::lstat(OsStr::from_bytes(stripped)).is_err()
        });
    let path = if unlinked { stripped } else { link };
    Some((PathBuf::from(OsStr::from_bytes(path)), unlinked))
}

/// `/proc/self/fd`, held open: a descriptor's link is read relative to it, one name looked up
/// instead of four (a burst reads one for each close-after-write). `None` where it cannot be
/// opened, and the links are read by their whole path.
fn proc_fds() -> Option<&'static OwnedFd> {
    static FDS: std::sync::OnceLock<Option<OwnedFd>> = std::sync::OnceLock::new();
    FDS.get_or_init(|| {
        nix::fcntl::open(
            "/proc/self/fd",
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    })
    .as_ref()
}

/// `readlinkat(dir, "<fd>")` into `link`, without allocating: the link's length, or `None` when
/// it cannot be read or fills `link` (it may have been cut short).
fn read_fd_link(dir: &OwnedFd, fd: u32, link: &mut [u8]) -> Option<usize> {
    // The descriptor's number as a NUL-terminated decimal name.
    let mut name = [0u8; 12];
    let mut digits = [0u8; 10];
    let mut n = fd;
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, digit) in digits[..count].iter().rev().enumerate() {
        name[i] = *digit;
    }
    // SAFETY: `name` is NUL-terminated (at most ten digits in twelve bytes); `link` is writable
    // for its whole length, which is what the kernel is told; `dir` is open for the call.
    let len = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr().cast::<libc::c_char>(),
            link.as_mut_ptr().cast::<libc::c_char>(),
            link.len(),
        )
    };
    let len = usize::try_from(len).ok()?;
    (len < link.len()).then_some(len)
}

fn path_of(fd: &impl AsRawFd) -> Option<PathBuf> {
    path_of_file(fd, None).map(|(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor's path comes back whole, with bytes that are not UTF-8 and a name near the
    /// longest a name may be, and says when its file was deleted.
    #[test]
    fn a_descriptors_path_and_whether_it_was_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let mut name = b"exp_\xff_".to_vec();
        name.resize(250, b'x');
        let path = dir.join(OsStr::from_bytes(&name));
        let file = File::create(&path).unwrap();
        assert_eq!(path_of_file(&file, None), Some((path.clone(), false)));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(path_of_file(&file, None), Some((path.clone(), true)));
        assert_eq!(path_of_file(&file, Some(0)), Some((path, true)));
        assert_eq!(path_of_file(&-1, None), None);
    }

    /// A live file named as the kernel names an unlinked one keeps its whole name, and an
    /// unlinked file so named loses only the suffix the kernel added.
    #[test]
    fn a_name_ending_in_deleted_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().canonicalize().unwrap();
        let real = dir.join("customers.csv");
        std::fs::write(&real, "id\n1\n").unwrap();
        let decoy = dir.join("customers.csv (deleted)");
        let file = File::create(&decoy).unwrap();
        for links in [None, Some(1)] {
            assert_eq!(path_of_file(&file, links), Some((decoy.clone(), false)));
        }
        std::fs::remove_file(&decoy).unwrap();
        assert_eq!(path_of_file(&file, None), Some((decoy.clone(), true)));
        assert_eq!(path_of_file(&file, Some(0)), Some((decoy, true)));
    }

    /// `statx` gives what `fstat` gives, and the same mount for a file and its directory.
    #[test]
    fn a_stat_with_its_mount_is_the_fstat_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        std::fs::write(&path, "id,name\n1,a\n").unwrap();
        let file = File::open(&path).unwrap();
        let (stat, mount) = stat_with_mount(std::os::fd::AsFd::as_fd(&file)).unwrap();
        let plain = nix::sys::stat::fstat(&file).unwrap();
        assert_eq!(
            (stat.st_dev, stat.st_ino, stat.st_nlink, stat.st_mode),
            (plain.st_dev, plain.st_ino, plain.st_nlink, plain.st_mode)
        );
        assert_eq!((stat.st_uid, stat.st_size), (plain.st_uid, plain.st_size));
        assert!(mount.is_some(), "this kernel gives mount ids");
        assert_eq!(mount, mount_of(&File::open(dir.path()).unwrap()));
        assert_eq!(mount, mount_of_path(&path));
    }

    /// A descriptor numbered with several digits is named whole in `/proc/self/fd`.
    #[test]
    fn a_descriptor_with_a_long_number_reads_its_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap().join("high.csv");
        let file = File::create(&path).unwrap();
        for at_least in [10, 123, 900] {
            let high =
                nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(at_least)).unwrap();
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            let high = unsafe { OwnedFd::from_raw_fd(high) };
            assert!(high.as_raw_fd() >= at_least);
            assert_eq!(path_of_file(&high, None), Some((path.clone(), false)));
        }
    }

    /// A name joins a directory with one separator, below the root too.
    #[test]
    fn a_name_joins_its_directory() {
        assert_eq!(join_name(Path::new("/"), b"a.csv"), Path::new("/a.csv"));
        assert_eq!(
            join_name(Path::new("/data/x"), b"exp_\xff.csv"),
            Path::new("/data/x").join(OsStr::from_bytes(b"exp_\xff.csv"))
        );
    }
}
