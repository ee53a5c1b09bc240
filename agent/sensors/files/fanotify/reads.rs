//! Reads of large exports: a notification group of its own holding one inode mark per watched
//! export, so the cost of watching reads grows with the number of exports, never with the rest
//! of the filesystem.
//!
//! The group reports file handles (`FAN_REPORT_FID`), which identify the inode whatever its name:
//! a watched export renamed, or read through a hard link under another name, is still the same
//! file. `FAN_ACCESS` is a read(2) (or sendfile, splice, copy_file_range) and
//! `FAN_CLOSE_NOWRITE` the close of a descriptor opened without write access, which also covers a
//! reader that maps the file instead of reading it; `FAN_OPEN` is left out because a writer's
//! open raises it too. `FAN_DELETE_SELF` says the last name is gone: the file stops counting
//! against the bound, and the kernel drops the mark with the inode.
//!
//! Each process is reported once per file (`file.read`); the set of readers already reported is
//! bounded, so a reader that opens a file thousands of times costs one entry.
//!
//! With the eBPF byte counter ([`super::read_bytes`]) the report says how many bytes the reader
//! read. A reader is then reported at its first close of the file (`FAN_CLOSE_NOWRITE`), with
//! everything it read, or [`SETTLE`] after its first read if it still reads then, with what it
//! read so far (`still_open`), and once more at its close with its total (`closed`), which the
//! collector folds into the first report. Most readers (cat, zip, a script's `read()`) read the
//! whole file and close it well within [`SETTLE`], so they are reported once, exactly, and none
//! later than [`SETTLE`]: the collector's rules that follow a read with a send or an archive
//! need it soon. Without the counter a reader is reported at its first read, without bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};

use bannin::event::ExportInfo;
use nix::errno::Errno;
use nix::libc;
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use tokio::time::{Duration, Instant};

use super::read_bytes::{self, Key, ReadBytes};
use super::record::{Handle, parse_names};
use super::resolve::{Resolver, handle_of_file};
use super::setup::filesystem_id;
use crate::sensors::ebpf::EbpfError;
use crate::sensors::files::observe::{Observer, ReadCount, Seen};
use crate::sensors::files::sizes::Facts;
use crate::sensors::process::os;

/// Readers (process and file) remembered as reported; the oldest are forgotten first, after
/// which a forgotten reader reading again is reported again.
const REPORTED_READERS: usize = 65_536;
/// Reads of the group per turn, so a flood of reads cannot starve the other groups.
const READS_PER_TURN: usize = 16;
/// Exports refused for the bound remembered, so each is counted once however often it is
/// written; past this, refusals are counted again.
const REMEMBERED_REFUSALS: usize = 65_536;
/// Descriptors of a reader looked through for the name it opened the export by.
const READER_FDS: usize = 4096;
/// After the first, exports refused for the bound are reported together at most this often.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(10);
/// How long after its first read a reader that has not closed the file yet is reported anyway,
/// with the bytes it read so far (when bytes are counted).
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// What the watch reports as: the read and close events, and the removal of the last name.
fn watched_mask() -> MaskFlags {
    MaskFlags::FAN_ACCESS | MaskFlags::FAN_CLOSE_NOWRITE | MaskFlags::FAN_DELETE_SELF
}

/// The group, opened at start so the sensor's status can say whether reads are seen, with the
/// byte counter when it could be loaded.
pub struct ReadGroup(Fanotify, Option<ReadBytes>);

/// Opens the reads group, or says why it cannot be opened.
pub fn open() -> Result<ReadGroup, String> {
    let flags = InitFlags::FAN_CLASS_NOTIF
        | InitFlags::FAN_CLOEXEC
        | InitFlags::FAN_NONBLOCK
        | InitFlags::from_bits_retain(libc::FAN_REPORT_FID);
    Fanotify::init(flags, EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC)
        .map(|group| ReadGroup(group, None))
        .map_err(|errno| {
            format!(
                "fanotify_init for the reads group refused: {}",
                errno.desc()
            )
        })
}

impl ReadGroup {
    pub(super) fn fanotify(&self) -> &Fanotify {
        &self.0
    }

    /// Loads the byte counter, with room for `max` exports; the error says why bytes read are
    /// not known.
    pub fn count_bytes(&mut self, max: usize) -> Result<(), EbpfError> {
        self.1 = Some(read_bytes::open(max)?);
        Ok(())
    }
}

/// A watched export: where it was last seen and what it holds.
struct Watched {
    path: PathBuf,
    export: Option<ExportInfo>,
    /// The file's key in the byte counter, when its reads are counted.
    key: Option<Key>,
}

/// A process reading one file: its pid and the file, with the process's start time beside it
/// (so a reused pid is another reader).
type Reader = (u32, Handle);

/// Where a reader is in being reported.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Read, not closed, not reported yet: reported at its close or at `due`.
    Pending { due: Instant, key: Key },
    /// Reported still open, under `path`; its total is reported at its close, under the same
    /// path so the collector can join the two.
    Open { key: Key, path: PathBuf },
    /// Reported for good.
    Done,
}

/// A reader known to the watch: the process's start time and how far it is reported.
struct Known {
    started: Option<u64>,
    stage: Stage,
}

pub(super) struct ReadWatch {
    group: ReadGroup,
    max: usize,
    own_pid: i32,
    watched: HashMap<Handle, Watched>,
    reported: HashMap<Reader, Known>,
    reported_order: VecDeque<Reader>,
    /// Readers waiting in [`Stage::Pending`], in the order they fall due.
    pending: VecDeque<(Instant, Reader)>,
    /// Readers in [`Stage::Open`]: their totals are counted until their close.
    open_readers: usize,
    bytes: Option<ReadBytes>,
    /// Exports not watched because `max` were: distinct ones, and how many since the last report.
    refused_files: HashSet<Handle>,
    refused: u64,
    refused_total: u64,
    last_refusal_report: Option<Instant>,
}

impl ReadWatch {
    pub(super) fn new(mut group: ReadGroup, max: usize) -> Self {
        let bytes = group.1.take();
        ReadWatch {
            group,
            max,
            own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
            watched: HashMap::new(),
            reported: HashMap::new(),
            reported_order: VecDeque::new(),
            pending: VecDeque::new(),
            open_readers: 0,
            bytes,
            refused_files: HashSet::new(),
            refused: 0,
            refused_total: 0,
            last_refusal_report: None,
        }
    }

    pub(super) fn fanotify(&self) -> &Fanotify {
        self.group.fanotify()
    }

    /// One turn of the backend's loop: reads what the group reported (so the places of exports
    /// deleted meanwhile are free), marks the exports the observer found since the last turn,
    /// and reports refusals that are due.
    pub(super) fn turn(&mut self, observer: &mut Observer, resolver: &Resolver, buf: &mut [u8]) {
        self.drain(observer, resolver, buf);
        self.report_due(observer, resolver, Instant::now());
        for (path, seen) in observer.take_exports() {
            self.watch(observer, &path, seen);
        }
        self.report_refusals(observer);
        if let Some(bytes) = &mut self.bytes {
            if let Some(failure) = bytes.take_failure() {
                observer.error(failure, Path::new(""));
            }
            // Nothing left to count: the program rests until the next export is watched.
            if bytes.is_attached()
                && self.watched.is_empty()
                && self.pending.is_empty()
                && self.open_readers == 0
            {
                bytes.rest();
            }
        }
        if let Some(lost) = self.bytes.as_mut().map(ReadBytes::new_losses)
            && lost > 0
        {
            observer.error_count(
                format!(
                    "{lost} readers of exports had no room in the eBPF byte counter: their file.read has no bytes_read"
                ),
                lost,
            );
        }
    }

    /// When the next reader waiting for its close is reported anyway.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|(due, _)| *due)
    }

    /// Reports the readers still reading [`SETTLE`] after their first read, with what they
    /// read so far; their totals follow at their close.
    fn report_due(&mut self, observer: &mut Observer, resolver: &Resolver, now: Instant) {
        while let Some((due, _)) = self.pending.front()
            && *due <= now
        {
            let Some((due, reader)) = self.pending.pop_front() else {
                break;
            };
            let Some(known) = self.reported.get_mut(&reader) else {
                continue;
            };
            // Reported at its close meanwhile, or a later wait of a reused pid.
            let Stage::Pending { due: own, key } = known.stage else {
                continue;
            };
            if own != due {
                continue;
            }
            let bytes = self
                .bytes
                .as_ref()
                .and_then(|b| b.read_by(key, reader.0).known());
            let count = ReadCount {
                bytes,
                still_open: true,
                closed: false,
            };
            let path = self.report(observer, resolver, &reader, None, count);
            self.set_stage(&reader, Stage::Open { key, path });
        }
    }

    /// Marks the export at `path`, if it is still the file the observer examined.
    fn watch(&mut self, observer: &mut Observer, path: &Path, seen: Seen) {
        // Opened without following a link planted at the name, without blocking on a FIFO
        // swapped in, and checked to be the very file examined: the mark goes on what the
        // descriptor holds, so nothing can move it to another file between check and mark.
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOATIME);
        }
        let Ok(file) = options.open(path).or_else(|_| {
            // O_NOATIME is refused for files the agent does not own unless it has CAP_FOWNER.
            let mut options = std::fs::OpenOptions::new();
            options.read(true);
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
            options.open(path)
        }) else {
            return;
        };
        let Ok(metadata) = file.metadata() else {
            return;
        };
        if !metadata.is_file() || Facts::from_metadata(&metadata).inode != seen.facts.inode {
            return;
        }
        let Ok(fsid) = filesystem_id(&file) else {
            return;
        };
        let Some(handle) = handle_of_file(&file, fsid) else {
            observer.error(
                format!(
                    "cannot watch reads of {}: its filesystem does not give file handles",
                    path.display()
                ),
                path,
            );
            return;
        };
        if let Some(watched) = self.watched.get_mut(&handle) {
            watched.path = path.to_path_buf();
            watched.export = seen.export;
            if watched.key.is_none() {
                watched.key = self.bytes.as_mut().and_then(|bytes| bytes.watch(&file));
            }
            return;
        }
        if self.watched.len() >= self.max {
            if self.refused_files.len() >= REMEMBERED_REFUSALS {
                self.refused_files.clear();
            }
            if self.refused_files.insert(handle) {
                self.refused += 1;
                self.refused_total += 1;
            }
            return;
        }
        self.refused_files.remove(&handle);
        match self.group.0.mark(
            MarkFlags::FAN_MARK_ADD,
            watched_mask(),
            &file,
            None::<&Path>,
        ) {
            Ok(()) => {
                let key = self.bytes.as_mut().and_then(|bytes| bytes.watch(&file));
                self.watched.insert(
                    handle,
                    Watched {
                        path: path.to_path_buf(),
                        export: seen.export,
                        key,
                    },
                );
            }
            Err(errno) => observer.error(
                format!(
                    "the kernel refused to watch reads of {}: {}",
                    path.display(),
                    errno.desc()
                ),
                path,
            ),
        }
    }

    fn drain(&mut self, observer: &mut Observer, resolver: &Resolver, buf: &mut [u8]) {
        for _ in 0..READS_PER_TURN {
            let n = match nix::unistd::read(&self.group.0, buf) {
                Ok(0) | Err(Errno::EAGAIN) => return,
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    observer.error(
                        format!("reading fanotify read events failed: {}", errno.desc()),
                        Path::new(""),
                    );
                    return;
                }
            };
            for event in parse_names(&buf[..n]) {
                if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                    observer.lost(
                        "the fanotify queue of reads of exports overflowed; an unknown number of readers were not reported",
                    );
                    continue;
                }
                let Some(object) = event.object else {
                    continue;
                };
                if event.mask & (libc::FAN_ACCESS | libc::FAN_CLOSE_NOWRITE) != 0
                    && event.pid != self.own_pid
                {
                    if let Ok(pid) = u32::try_from(event.pid) {
                        let closed = event.mask & libc::FAN_CLOSE_NOWRITE != 0;
                        self.read(observer, resolver, pid, &object, closed);
                    }
                }
                if event.mask & libc::FAN_DELETE_SELF != 0 {
                    // The last name is gone; the kernel drops the mark with the inode, once
                    // the last reader holding it open closes it. Readers still open are told
                    // at their close, which the counter still counts until then.
                    if let Some(Watched { key: Some(key), .. }) = self.watched.remove(&object)
                        && let Some(bytes) = &mut self.bytes
                    {
                        bytes.unwatch(key);
                    }
                }
            }
        }
    }

    /// Handles `pid` reading the file `object` (`closed`: closing it): reports it unless it
    /// was reported already, now or at its close when its bytes are counted.
    fn read(
        &mut self,
        observer: &mut Observer,
        resolver: &Resolver,
        pid: u32,
        object: &Handle,
        closed: bool,
    ) {
        let started = os::identity(pid).map(|identity| identity.started);
        let reader = (pid, object.clone());
        let key = self
            .watched
            .get(object)
            .and_then(|watched| watched.key)
            .filter(|_| self.bytes.is_some());
        let stage = match self.reported.get_mut(&reader) {
            // The same process, or one already gone (whose later events are still queued).
            Some(known) if started.is_none() || known.started == started => known.stage.clone(),
            // A later process under the same pid.
            Some(known) => {
                known.started = started;
                if matches!(known.stage, Stage::Open { .. }) {
                    self.open_readers -= 1;
                }
                known.stage = Stage::Done;
                self.first_read(observer, resolver, reader, key, closed);
                return;
            }
            None => {
                if self.reported_order.len() >= REPORTED_READERS
                    && let Some(oldest) = self.reported_order.pop_front()
                    && let Some(forgotten) = self.reported.remove(&oldest)
                {
                    match forgotten.stage {
                        Stage::Pending { key, .. } => {
                            // Not reported yet: now, with what it read so far, as it cannot wait.
                            let count = ReadCount {
                                still_open: true,
                                ..ReadCount::default()
                            };
                            self.report_total(observer, resolver, &oldest, key, None, count);
                        }
                        Stage::Open { .. } => self.open_readers -= 1,
                        Stage::Done => {}
                    }
                }
                self.reported.insert(
                    reader.clone(),
                    Known {
                        started,
                        stage: Stage::Done,
                    },
                );
                self.reported_order.push_back(reader.clone());
                self.first_read(observer, resolver, reader, key, closed);
                return;
            }
        };
        if !closed {
            return;
        }
        // Its close: the total of a reader not reported yet, or of one reported still open.
        let (key, path, count) = match stage {
            Stage::Pending { key, .. } => (key, None, ReadCount::default()),
            Stage::Open { key, path } => (
                key,
                Some(path),
                ReadCount {
                    closed: true,
                    ..ReadCount::default()
                },
            ),
            Stage::Done => {
                // A reader reported already that opened the file again: what it read since
                // is not reported, and is forgotten so that a later process under its pid does
                // not inherit it.
                if let (Some(key), Some(bytes)) = (key, &mut self.bytes) {
                    bytes.forget(key, pid);
                }
                return;
            }
        };
        self.set_stage(&reader, Stage::Done);
        self.report_total(observer, resolver, &reader, key, path.as_deref(), count);
    }

    /// A reader's first read or close: reported now with its total at a close or when bytes
    /// are not counted, else when it closes or [`SETTLE`] has passed.
    fn first_read(
        &mut self,
        observer: &mut Observer,
        resolver: &Resolver,
        reader: Reader,
        key: Option<Key>,
        closed: bool,
    ) {
        match key {
            Some(key) if closed => {
                self.report_total(observer, resolver, &reader, key, None, ReadCount::default());
            }
            Some(key) => {
                let due = Instant::now() + SETTLE;
                self.set_stage(&reader, Stage::Pending { due, key });
                self.pending.push_back((due, reader));
            }
            None => {
                self.report(observer, resolver, &reader, None, ReadCount::default());
            }
        }
    }

    fn set_stage(&mut self, reader: &Reader, stage: Stage) {
        if let Some(known) = self.reported.get_mut(reader) {
            if matches!(known.stage, Stage::Open { .. }) {
                self.open_readers -= 1;
            }
            if matches!(stage, Stage::Open { .. }) {
                self.open_readers += 1;
            }
            known.stage = stage;
        }
    }

    /// Reports a reader at its close with everything it read, and forgets its count.
    fn report_total(
        &mut self,
        observer: &mut Observer,
        resolver: &Resolver,
        reader: &Reader,
        key: Key,
        path: Option<&Path>,
        mut count: ReadCount,
    ) {
        if let Some(bytes) = &mut self.bytes {
            count.bytes = bytes.read_by(key, reader.0).known();
            bytes.forget(key, reader.0);
        }
        self.report(observer, resolver, reader, path, count);
    }

    /// Emits the `file.read` of a reader, under `path` if given, and says under which path.
    fn report(
        &self,
        observer: &mut Observer,
        resolver: &Resolver,
        reader: &Reader,
        path: Option<&Path>,
        count: ReadCount,
    ) -> PathBuf {
        let (pid, object) = (reader.0, &reader.1);
        let watched = self.watched.get(object);
        let export = watched.and_then(|watched| watched.export.clone());
        // The name the reader opened it by (a hard link under another name), else the name it
        // has now (after a rename), else the name it was watched under.
        let examined = resolver.examine_handle(object);
        let by_reader = examined
            .as_ref()
            .filter(|_| path.is_none())
            .and_then(|(_, metadata)| reader_path(pid, metadata, resolver));
        let given = path.map(Path::to_path_buf);
        match examined {
            Some((now, metadata)) => {
                let path = given.or(by_reader).unwrap_or(now);
                let seen = Seen {
                    facts: Facts::from_metadata(&metadata),
                    export,
                    links: None,
                };
                observer.read(&path, pid, Some(seen), count);
                path
            }
            None => {
                let path = given
                    .or_else(|| watched.map(|watched| watched.path.clone()))
                    .unwrap_or_default();
                observer.read(&path, pid, None, count);
                path
            }
        }
    }

    /// Whether exports refused for the bound wait to be reported.
    pub(super) fn refusals_pending(&self) -> bool {
        self.refused > 0
    }

    /// Says how many exports were not watched because the bound was reached: the first at once,
    /// later ones together at most every [`REFUSAL_INTERVAL`].
    fn report_refusals(&mut self, observer: &mut Observer) {
        if self.refused == 0 {
            return;
        }
        if self
            .last_refusal_report
            .is_some_and(|last| last.elapsed() < REFUSAL_INTERVAL)
        {
            return;
        }
        self.last_refusal_report = Some(Instant::now());
        let refused = std::mem::take(&mut self.refused);
        observer.error_count(
            format!(
                "{refused} large exports are not watched for reads: read_watch_max = {} exports are watched already ({} refused since start)",
                self.max, self.refused_total
            ),
            refused,
        );
    }
}

/// The path by which `pid` holds the file described by `metadata` open, from its descriptors
/// in `/proc` (at most [`READER_FDS`] of them); `None` when it holds none (it closed the file,
/// or exited), or holds it through a mount the watched trees are not reached by (a bind mount
/// in a namespace of its own), whose paths mean nothing here.
fn reader_path(pid: u32, metadata: &std::fs::Metadata, resolver: &Resolver) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for entry in fds.take(READER_FDS).flatten() {
        // stat follows the link to the open file itself, whatever its name.
        let Ok(target) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if target.dev() == metadata.dev() && target.ino() == metadata.ino() {
            if !resolver.through_root_mount(super::resolve::mount_of_path(&entry.path())) {
                return None;
            }
            let link = std::fs::read_link(entry.path()).ok()?;
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str());
            if bytes.ends_with(b" (deleted)") {
                return None;
            }
            return Some(link);
        }
    }
    None
}

impl Resolver {
    /// The path and metadata of the file a handle names, wherever it is now. `None` when it is
    /// gone (or on a filesystem the sensor holds no descriptor for).
    pub(super) fn examine_handle(&self, handle: &Handle) -> Option<(PathBuf, std::fs::Metadata)> {
        let fd = self.open_path(handle)?;
        let file = File::from(fd);
        let metadata = file.metadata().ok()?;
        let links = std::os::unix::fs::MetadataExt::nlink(&metadata);
        let (path, _deleted) = super::resolve::path_of_file(&file, Some(links))?;
        Some((path, metadata))
    }
}
