//! What every backend shares: deciding whether a path is watched, examining a file the moment it
//! is seen, remembering its size, recognising exports, and turning it all into events.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bannin::event::{Body, Event, ExportInfo, FileAction, FileEvent, ProcessInfo};
use globset::GlobSet;
use tokio::time::{Duration, Instant};

use super::classify::{self, MAGIC_BYTES};
use super::sizes::{Facts, Remembered, SizeCache};
use super::{FilesError, FilesSettings, SENSOR};
use crate::pipeline::{BatchSender, EventTx};
use crate::sensors::Notice;
use crate::sensors::process::ProcessTable;

/// A rescan walks whole trees; under a sustained overflow storm one per this long is enough.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// How long an event whose process is not known yet waits for the process sensor to record it:
/// a short-lived `rm` may be gone from `/proc` before the process table has heard of its exec.
const LATE_LOOKUP: Duration = Duration::from_millis(250);
/// Events held back at most; beyond this the oldest goes out with what is known.
const MAX_WAITING: usize = 10_000;
/// The walk at start examines at most this many times `read_watch_max` large files for exports
/// to watch for reads, so a tree of many large files cannot make the start slow.
const SCAN_READ_CANDIDATES_PER_WATCH: usize = 4;

/// The watched trees minus the excluded globs.
#[derive(Clone)]
pub struct Scope {
    roots: Vec<PathBuf>,
    excludes: GlobSet,
    /// The agent's own state directory: never examined, even inside a watched tree, because
    /// opening and closing its SQLite files would drop the agent's own POSIX locks on them.
    private: Option<PathBuf>,
}

impl Scope {
    /// Canonical roots (the kernel reports resolved paths) and the roots that could not be
    /// resolved, with why.
    pub fn new(config: &FilesSettings) -> Result<(Scope, Vec<(PathBuf, String)>), FilesError> {
        let excludes = config.excludes.clone();
        let mut roots: Vec<PathBuf> = Vec::new();
        let mut missing = Vec::new();
        for root in &config.watch {
            match std::fs::canonicalize(root) {
                Ok(path) if path.is_dir() => roots.push(path),
                Ok(_) => missing.push((root.clone(), "not a directory".to_string())),
                Err(error) => missing.push((root.clone(), error.to_string())),
            }
        }
        roots.sort();
        roots.dedup();
        // A root inside another root adds nothing but duplicate watches.
        let nested: Vec<PathBuf> = roots
            .iter()
            .filter(|r| roots.iter().any(|o| o != *r && r.starts_with(o)))
            .cloned()
            .collect();
        roots.retain(|r| !nested.contains(r));
        let private = config
            .private_dir
            .as_ref()
            .map(|dir| std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()));
        Ok((
            Scope {
                roots,
                excludes,
                private,
            },
            missing,
        ))
    }

    pub fn private_dir(&self) -> Option<&Path> {
        self.private.as_deref()
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| is_under(path, root))
            && !self
                .private
                .as_ref()
                .is_some_and(|private| is_under(path, private))
            && !self.excludes.is_match(path)
    }
}

/// Whether `path` is `dir` or below it. Both are canonical (the kernel reports resolved paths,
/// and the roots are resolved at start), so on Unix their bytes are compared: comparing them
/// component by component was a twentieth of the file sensor's time in a burst.
#[cfg(unix)]
fn is_under(path: &Path, dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (path, dir) = (path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/") || dir.ends_with(b"/"))
}

#[cfg(not(unix))]
fn is_under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// Reads a borrowed descriptor.
#[cfg(target_os = "linux")]
struct FdReader<'a>(std::os::fd::BorrowedFd<'a>);

#[cfg(target_os = "linux")]
impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        nix::unistd::read(self.0, buf).map_err(std::io::Error::from)
    }
}

/// What a `file.read` says about the bytes read (see [`bannin::event::FileEvent::bytes_read`]).
#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReadCount {
    pub bytes: Option<u64>,
    pub still_open: bool,
    pub closed: bool,
}

/// A file as the sensor saw it when it examined it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub facts: Facts,
    pub export: Option<ExportInfo>,
    /// The file's names when it was examined (`st_nlink`); `None` when not examined now.
    pub links: Option<u64>,
}

pub struct Observer {
    backend: &'static str,
    scope: Scope,
    sizes: SizeCache,
    sample_bytes: usize,
    scan_min_size: u64,
    processes: ProcessTable,
    out: BatchSender<Event>,
    tx: EventTx,
    /// When the last rescan after an overflow ran, and whether one is owed: an overflow within
    /// [`RESCAN_INTERVAL`] of the last rescan is rescanned when the interval is over, never
    /// skipped, or a delete lost in the second overflow would stay hidden.
    last_rescan: Option<Instant>,
    rescan_owed: bool,
    /// Set while the rescan reports what it found, so those events say so.
    rescanning: bool,
    /// Files changed after this were not there when the sensor started: a large one the
    /// rescan finds unreported was created while the kernel was losing events.
    started: SystemTime,
    closed: bool,
    /// Processes looked up in the current batch of kernel events: a burst from one process
    /// asks the table once, not once per file.
    /// Each shared by the batch's events: one copy of a process for a burst of its files.
    looked_up: HashMap<u32, Option<Arc<ProcessInfo>>>,
    /// The last owner named, by uid: a burst's files mostly share one, and the process table's
    /// lookup takes its lock.
    last_owner: std::cell::RefCell<Option<(u32, Arc<str>)>>,
    /// File events in order, each with the pid still to be looked up (if any) and until when.
    waiting: VecDeque<(Instant, Option<u32>, Event)>,
    /// Events ready for the forwarder, handed over together ([`Observer::end_round`]) once the
    /// oldest has waited [`LINGER`] or [`OUTBOX`] have gathered: in a burst the forwarder is
    /// woken once per few hundred events, not once per event or per small round of kernel
    /// events (each wake-up costs a thread switch on both sides, more than the event). Outside
    /// a round (start-up, tests) events go at once.
    outbox: Vec<Event>,
    /// When the oldest event in the outbox was put there.
    outbox_since: Option<Instant>,
    in_round: bool,
    /// Exports at least this big are handed to the backend to watch for reads; `None` while
    /// the backend cannot watch reads.
    read_watch_min_size: Option<u64>,
    read_watch_max: usize,
    /// Large exports seen since the backend last took them ([`Observer::take_exports`]).
    exports: Vec<(PathBuf, Seen)>,
}

/// Events held in the outbox at most before they are handed over anyway.
const OUTBOX: usize = 256;
/// How long an event waits in the outbox at most for others to join it.
const LINGER: Duration = Duration::from_millis(5);

impl Observer {
    pub fn new(
        backend: &'static str,
        scope: Scope,
        config: &FilesSettings,
        processes: ProcessTable,
        out: BatchSender<Event>,
        tx: EventTx,
    ) -> Self {
        Observer {
            backend,
            scope,
            sizes: SizeCache::new(config.remembered_paths),
            sample_bytes: config.sample_bytes,
            scan_min_size: config.scan_min_size,
            processes,
            out,
            tx,
            last_rescan: None,
            rescan_owed: false,
            rescanning: false,
            started: SystemTime::now(),
            closed: false,
            looked_up: HashMap::new(),
            last_owner: Default::default(),
            waiting: VecDeque::new(),
            outbox: Vec::with_capacity(OUTBOX),
            outbox_since: None,
            in_round: false,
            read_watch_min_size: None,
            read_watch_max: config.read_watch_max,
            exports: Vec::new(),
        }
    }

    /// The backend watches reads: from now on large exports are kept for it to take.
    pub fn watch_reads(&mut self, min_size: u64) {
        self.read_watch_min_size = Some(min_size);
    }

    /// Large exports seen since the last call, to be watched for reads.
    #[cfg(target_os = "linux")]
    pub fn take_exports(&mut self) -> Vec<(PathBuf, Seen)> {
        std::mem::take(&mut self.exports)
    }

    /// Keeps a file seen as a large export for the backend to watch for reads.
    fn consider_for_reads(&mut self, path: &Path, seen: &Seen) {
        if self.watches_reads_of(seen) {
            self.exports.push((path.to_path_buf(), seen.clone()));
        }
    }

    /// Whether a file examined as `seen` is an export whose reads are to be watched.
    pub fn watches_reads_of(&self, seen: &Seen) -> bool {
        self.read_watch_min_size.is_some_and(|min_size| {
            seen.export.is_some() && seen.facts.size >= min_size && self.read_watch_max > 0
        })
    }

    /// Emits a `file.read`: `pid` read the watched export `path`, examined as `seen`.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self, path: &Path, pid: u32, seen: Option<Seen>, count: ReadCount) {
        let mut event = self.file_event(FileAction::Read, path);
        event.bytes_read = count.bytes;
        event.still_open = count.still_open;
        event.closed = count.closed;
        match seen {
            Some(seen) => {
                self.fill(&mut event, seen.facts);
                event.export = seen.export;
            }
            None => event.incomplete = true,
        }
        self.emit_file(event, Some(pid));
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Whether the spool side has gone away, so the backend can stop.
    pub fn closed(&self) -> bool {
        self.closed
    }

    #[cfg(target_os = "linux")]
    pub fn remembered(&self, path: &Path) -> Option<Seen> {
        self.sizes.get(path).map(|known| Seen {
            facts: known.facts,
            export: known.export.as_deref().cloned(),
            links: None,
        })
    }

    /// A file event about `path`, its path escaped where it is not plain UTF-8.
    fn file_event(&self, action: FileAction, path: &Path) -> FileEvent {
        let (text, escaped) = escape_path(path);
        let mut event = FileEvent::new(action, text, self.backend);
        event.path_escaped = escaped;
        event.rescan = self.rescanning;
        event
    }

    /// Examines a file by path, now. `None` when it is already gone.
    pub fn examine_path(&self, path: &Path) -> Option<Seen> {
        // A path longer than the kernel takes is examined through its directory, opened one
        // component at a time; the alias lives as long as that descriptor.
        #[cfg(target_os = "linux")]
        if path.as_os_str().len() >= long::PATH_MAX {
            let (_dir, alias) = long::alias(path)?;
            return self.examine_at(path, &alias);
        }
        self.examine_at(path, path)
    }

    /// Examines the file at `open`, reported as `path`.
    fn examine_at(&self, path: &Path, open: &Path) -> Option<Seen> {
        let metadata = std::fs::symlink_metadata(open).ok()?;
        let facts = Facts::from_metadata(&metadata);
        let links = links_of(&metadata);
        if !metadata.is_file() {
            return Some(Seen {
                facts,
                export: None,
                links,
            });
        }
        if facts.size == 0 {
            return Some(Seen {
                facts,
                export: Self::recognise_empty(path),
                links,
            });
        }
        // Opened without blocking so a FIFO swapped in after the stat cannot hang the sensor.
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(nix::libc::O_NONBLOCK);
        }
        let export = match options.open(open) {
            Ok(file) => self.recognise(path, file, facts.size),
            Err(_) => None,
        };
        Some(Seen {
            facts,
            export,
            links,
        })
    }

    /// Examines a file through a descriptor the backend holds, which works even after the file
    /// was unlinked. Borrowed, so the kernel's event descriptor is read as it is, not duplicated.
    #[cfg(target_os = "linux")]
    pub fn examine_file(&self, path: &Path, fd: std::os::fd::BorrowedFd<'_>) -> Option<Seen> {
        let stat = nix::sys::stat::fstat(fd).ok()?;
        Some(self.examine_stat(path, fd, &stat))
    }

    /// [`Self::examine_file`], with the descriptor's `fstat` already in hand.
    #[cfg(target_os = "linux")]
    pub fn examine_stat(
        &self,
        path: &Path,
        fd: std::os::fd::BorrowedFd<'_>,
        stat: &nix::sys::stat::FileStat,
    ) -> Seen {
        let facts = Facts {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            inode: Some(stat.st_ino),
            mode: Some(stat.st_mode),
            uid: Some(stat.st_uid),
        };
        let regular = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG;
        let export = if regular {
            self.recognise(path, FdReader(fd), facts.size)
        } else {
            None
        };
        #[allow(
            clippy::useless_conversion,
            reason = "st_nlink is a u32 on some targets"
        )]
        let links = u64::from(stat.st_nlink);
        Seen {
            facts,
            export,
            links: Some(links),
        }
    }

    /// An empty file is recognised by its name alone: nothing to open or read.
    fn recognise_empty(path: &Path) -> Option<ExportInfo> {
        let (class, format) = classify::recognise(path, &[])?;
        Some(classify::export_info(class, format, &[], 0))
    }

    fn recognise(&self, path: &Path, file: impl Read, size: u64) -> Option<ExportInfo> {
        if size == 0 {
            return Self::recognise_empty(path);
        }
        let mut head = Vec::with_capacity(MAGIC_BYTES);
        let mut reader = file.take(MAGIC_BYTES as u64);
        reader.read_to_end(&mut head).ok()?;
        let (class, format) = classify::recognise(path, &head)?;
        let mut file = reader.into_inner();
        let more = self.sample_bytes.saturating_sub(head.len()) as u64;
        // A short read leaves a smaller sample; the estimate scales by what was read.
        let _ = (&mut file).take(more).read_to_end(&mut head);
        Some(classify::export_info(class, format, &head, size))
    }

    /// Starts a new batch of kernel events: processes are looked up afresh, since one may have
    /// exec'd another program since the last batch.
    #[cfg(target_os = "linux")]
    pub fn new_batch(&mut self) {
        self.looked_up.clear();
    }

    fn process(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        let table = &self.processes;
        self.looked_up
            .entry(pid)
            .or_insert_with(|| table.info_after_exec(pid).map(Arc::new))
            .clone()
    }

    /// Records and emits a create or close-after-write; `seen` is `None` when the file was gone
    /// before it could be examined.
    pub fn changed(
        &mut self,
        action: FileAction,
        path: &Path,
        pid: Option<u32>,
        seen: Option<Seen>,
    ) {
        let mut event = self.file_event(action, path);
        match seen {
            Some(seen) => {
                self.consider_for_reads(path, &seen);
                self.sizes
                    .insert(path, Remembered::new(seen.facts, seen.export.clone()));
                self.fill(&mut event, seen.facts);
                event.export = seen.export;
            }
            None => event.incomplete = true,
        }
        self.emit_file(event, pid);
    }

    /// A remembered file was modified without being closed yet: reported as a write only when it
    /// is smaller than remembered (truncated in place, which no close-after-write may follow).
    pub fn modified(&mut self, path: &Path, pid: Option<u32>) {
        if self.shrank(path, None) {
            self.truncated(path, pid);
        }
    }

    /// Whether the file at `path` is the same file as `known` (by default what is remembered of
    /// the file at `path`) and smaller now.
    pub fn shrank(&self, path: &Path, known: Option<Facts>) -> bool {
        let Some(known) = known.or_else(|| self.sizes.get(path).map(|known| known.facts)) else {
            return false;
        };
        let Ok(metadata) = std::fs::symlink_metadata(path) else {
            return false;
        };
        let now = Facts::from_metadata(&metadata);
        now.inode == known.inode && now.size < known.size
    }

    /// Reports the file at `path` as written now, after it shrank ([`Self::shrank`]).
    pub fn truncated(&mut self, path: &Path, pid: Option<u32>) {
        let seen = self.examine_path(path);
        self.changed(FileAction::Write, path, pid, seen);
    }

    /// Emits a delete carrying the last size seen.
    pub fn deleted(&mut self, path: &Path, pid: Option<u32>) {
        self.deleted_with(path, pid, None);
    }

    /// Emits a delete; `links_left` says how many other names the file still has, when the
    /// backend can tell it survived.
    pub fn deleted_with(&mut self, path: &Path, pid: Option<u32>, links_left: Option<u64>) {
        let mut event = self.file_event(FileAction::Delete, path);
        match self.sizes.remove(path) {
            Some(known) => {
                self.fill(&mut event, known.facts);
                event.export = known.export.map(|export| *export);
            }
            None => event.incomplete = true,
        }
        event.links_left = links_left.filter(|&links| links > 0);
        self.emit_file(event, pid);
    }

    /// Emits a rename; `from` is `None` when the file came from outside the watched trees.
    pub fn renamed(&mut self, from: Option<&Path>, to: &Path, pid: Option<u32>) {
        let mut event = self.file_event(FileAction::Rename, to);
        if let Some(from) = from {
            let (text, escaped) = escape_path(from);
            event.from_path = Some(text);
            event.path_escaped |= escaped;
        }
        let remembered = from
            .filter(|&from| from != to)
            .and_then(|from| self.sizes.remove(from));
        // What was at `to` before is gone now, replaced by the file that moved there: say what
        // it was, and never let the newcomer inherit its place in memory.
        let before = self.sizes.remove(to);
        let seen = self.examine_path(to);
        let moved_inode = seen
            .as_ref()
            .map(|seen| seen.facts.inode)
            .or(remembered.as_ref().map(|known| known.facts.inode));
        if let Some(before) = before.filter(|before| Some(before.facts.inode) != moved_inode) {
            event.replaced_size = Some(before.facts.size);
            event.replaced_export = before.export.map(|export| *export);
        }
        match (seen, remembered) {
            (Some(seen), _) => {
                self.consider_for_reads(to, &seen);
                self.sizes
                    .insert(to, Remembered::new(seen.facts, seen.export.clone()));
                self.fill(&mut event, seen.facts);
                event.export = seen.export;
            }
            (None, Some(known)) => {
                self.fill(&mut event, known.facts);
                event.export = known.export.as_deref().cloned();
                self.sizes.insert(to, known);
                event.incomplete = true;
            }
            (None, None) => event.incomplete = true,
        }
        self.emit_file(event, pid);
    }

    /// Two names swapped places (`RENAME_EXCHANGE`): one event, from `a` to `b`, saying so, with
    /// what now sits at `a` as the `replaced_*` facts, since nothing was destroyed.
    #[cfg(target_os = "linux")]
    pub fn exchanged(&mut self, a: &Path, b: &Path, pid: Option<u32>) {
        let mut event = self.file_event(FileAction::Rename, b);
        let (text, escaped) = escape_path(a);
        event.from_path = Some(text);
        event.path_escaped |= escaped;
        event.exchange = true;
        let (was_a, was_b) = (self.sizes.remove(a), self.sizes.remove(b));
        let now_at = |observer: &Self, path: &Path, was: Option<Remembered>| {
            observer
                .examine_path(path)
                .map(|seen| Remembered::new(seen.facts, seen.export))
                .or(was)
        };
        let (at_b, at_a) = (now_at(self, b, was_a), now_at(self, a, was_b));
        if let Some(at_a) = at_a {
            event.replaced_size = Some(at_a.facts.size);
            event.replaced_export = at_a.export.as_deref().cloned();
            self.sizes.insert(a, at_a);
        }
        match at_b {
            Some(at_b) => {
                self.fill(&mut event, at_b.facts);
                event.export = at_b.export.as_deref().cloned();
                self.sizes.insert(b, at_b);
            }
            None => event.incomplete = true,
        }
        self.emit_file(event, pid);
    }

    /// A directory was renamed: what is remembered below it moves along.
    pub fn dir_renamed(&mut self, from: &Path, to: &Path) {
        self.sizes.rename(from, to);
    }

    pub fn dir_deleted(&mut self, dir: &Path) {
        self.sizes.remove_tree(dir);
    }

    /// A new directory may already hold files created before its watch was in place: report
    /// those not seen yet as creates.
    pub fn dir_created(&mut self, dir: &Path, pid: Option<u32>) {
        let mut found = Vec::new();
        walk(&self.scope, dir, 10_000, &mut |path, _| {
            found.push(path.to_path_buf())
        });
        for path in found {
            if self.sizes.get(&path).is_none() {
                let seen = self.examine_path(&path);
                self.changed(FileAction::Create, &path, pid, seen);
            }
        }
    }

    fn owner_name(&self, uid: u32) -> Arc<str> {
        let mut last = self.last_owner.borrow_mut();
        match &*last {
            Some((known, name)) if *known == uid => Arc::clone(name),
            _ => {
                let name = self.processes.shared_user_name(uid);
                *last = Some((uid, Arc::clone(&name)));
                name
            }
        }
    }

    fn fill(&self, event: &mut FileEvent, facts: Facts) {
        event.size = Some(facts.size);
        event.inode = facts.inode;
        event.mode = facts.mode;
        event.owner_uid = facts.uid;
        event.owner = facts.uid.map(|uid| self.owner_name(uid));
    }

    /// Emits a file event with its process. When the pid is not known yet the event waits (and
    /// every later one behind it, to keep the order) until the process turns up or
    /// [`LATE_LOOKUP`] passes; then it goes out with the pid alone.
    fn emit_file(&mut self, mut event: FileEvent, pid: Option<u32>) {
        let found = pid.and_then(|pid| self.process(pid));
        let is_found = found.is_some();
        // A pid whose process is never found is still worth reporting on its own.
        event.process = found.or_else(|| {
            pid.map(|pid| {
                Arc::new(ProcessInfo {
                    pid,
                    ..ProcessInfo::default()
                })
            })
        });
        event.process_known = event.process.is_some();
        let event = Event::now(self.tx.shared_host(), event);
        let now = Instant::now();
        match (pid, is_found) {
            (Some(pid), false) => self
                .waiting
                .push_back((now + LATE_LOOKUP, Some(pid), event)),
            _ if self.waiting.is_empty() => self.send(event),
            _ => self.waiting.push_back((now, None, event)),
        }
        if self.waiting.len() > MAX_WAITING {
            if let Some((_, _, oldest)) = self.waiting.pop_front() {
                self.send(oldest);
            }
        }
        self.pump();
    }

    /// Whether events are waiting for their process; the backend then calls [`Observer::pump`]
    /// often.
    #[cfg(any(target_os = "linux", test))]
    pub fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Sends the waiting events whose process has turned up or whose wait is over, in order.
    pub fn pump(&mut self) {
        let now = Instant::now();
        while let Some((until, pid, event)) = self.waiting.front_mut() {
            if let Some(pid) = *pid {
                // Once the wait is over, a process known only from its fork is named as that.
                let info = if *until > now {
                    self.processes.info_after_exec(pid)
                } else {
                    self.processes.info(pid)
                };
                match info {
                    Some(info) => {
                        let info = Arc::new(info);
                        if let Body::File(file) = &mut event.body {
                            file.process = Some(Arc::clone(&info));
                        }
                        self.looked_up.insert(pid, Some(info));
                    }
                    None if *until > now => return,
                    None => {}
                }
            }
            if let Some((_, _, event)) = self.waiting.pop_front() {
                self.send(event);
            }
        }
    }

    /// Hands an event to the forwarder. While the queue to the spool is full the reader waits:
    /// the kernel's queue holds what comes meanwhile, and its overflow, if it comes, is reported
    /// and followed by a rescan. A drop here would be followed by nothing.
    pub fn emit(&mut self, body: impl Into<Body>) {
        self.send(Event::now(self.tx.shared_host(), body));
    }

    fn send(&mut self, event: Event) {
        if self.outbox.is_empty() {
            self.outbox_since = Some(Instant::now());
        }
        self.outbox.push(event);
        if !self.in_round || self.outbox.len() >= OUTBOX {
            self.flush();
        }
    }

    /// A backend starts handling a round of kernel events: what they produce is handed over
    /// together by [`Self::end_round`].
    pub fn begin_round(&mut self) {
        self.in_round = true;
    }

    /// Hands the gathered events to the forwarder once the oldest has lingered long enough;
    /// backends call it before they wait again, and wait no longer than [`Self::linger_left`].
    pub fn end_round(&mut self) {
        self.in_round = false;
        if self
            .outbox_since
            .is_some_and(|since| since.elapsed() >= LINGER)
        {
            self.flush();
        }
    }

    /// While events linger in the outbox, how long until they are due to be handed over: a
    /// backend waits for the kernel no longer than that before it calls [`Self::end_round`].
    pub fn linger_left(&self) -> Option<Duration> {
        self.outbox_since
            .map(|since| LINGER.saturating_sub(since.elapsed()))
    }

    /// Whether an overflow left a rescan to do ([`Self::rescan_if_due`]).
    pub fn rescan_owed(&self) -> bool {
        self.rescan_owed
    }

    fn flush(&mut self) {
        self.outbox_since = None;
        let batch = std::mem::replace(&mut self.outbox, self.out.spare());
        if self.out.push(batch).is_err() {
            self.closed = true;
        }
    }

    pub fn status(&mut self, message: String) {
        self.emit(Notice::status(SENSOR, message).logged());
    }

    pub fn error(&mut self, message: String, path: &Path) {
        self.emit(
            Notice::error(SENSOR, message)
                .path(escape_path(path).0)
                .logged(),
        );
    }

    /// An error that stands for `count` lost events.
    #[cfg(target_os = "linux")]
    pub fn error_count(&mut self, message: String, count: u64) {
        self.emit(Notice::error(SENSOR, message).count(count).logged());
    }

    /// The remembered path of a file by its inode (a scan, for the rare file whose path the
    /// kernel cannot print).
    #[cfg(target_os = "linux")]
    pub fn path_of_inode(&self, inode: u64) -> Option<PathBuf> {
        self.sizes
            .paths()
            .find(|path| {
                self.sizes
                    .get(path)
                    .is_some_and(|known| known.facts.inode == Some(inode))
            })
            .map(Path::to_path_buf)
    }

    /// The kernel lost events that no rescan can recover (reads): say so, count unknown.
    #[cfg(target_os = "linux")]
    pub fn lost(&mut self, message: &str) {
        self.emit(Notice::overflow(SENSOR, message).count_unknown().logged());
    }

    /// The kernel lost events: say so (with how many, where the kernel counts them, else that
    /// the number is unknown), then rescan so what the lost events would have said is reported.
    pub fn overflow(&mut self, message: &str, count: Option<u64>) {
        let notice = Notice::overflow(SENSOR, message);
        let notice = match count {
            Some(count) => notice.count(count),
            None => notice.count_unknown(),
        };
        self.emit(notice.logged());
        self.rescan_owed = true;
        self.rescan_if_due();
    }

    /// Runs an owed rescan once the last one is [`RESCAN_INTERVAL`] old; backends call this on
    /// every turn of their loop.
    pub fn rescan_if_due(&mut self) {
        let due = self
            .last_rescan
            .is_none_or(|last| last.elapsed() >= RESCAN_INTERVAL);
        if !self.rescan_owed || !due {
            return;
        }
        self.rescan_owed = false;
        self.last_rescan = Some(Instant::now());
        let files = self.reconcile();
        self.emit(
            Notice::recovered(
                SENSOR,
                format!("rescanned the watched trees after an overflow: {files} files"),
            )
            .count(files as u64)
            .logged(),
        );
    }

    /// Walks the watched trees at start and remembers the facts of every file of at least
    /// `scan_min_size` bytes; returns how many files it saw. When reads are watched, files big
    /// enough to be watched are examined, so exports that were there before the agent started
    /// are watched too (at most [`SCAN_READ_CANDIDATES_PER_WATCH`] times `read_watch_max`).
    pub fn scan(&mut self) -> usize {
        let limit = self.sizes.capacity();
        let min_size = self.scan_min_size;
        let read_min = self.read_watch_min_size;
        let read_limit = self
            .read_watch_max
            .saturating_mul(SCAN_READ_CANDIDATES_PER_WATCH);
        let mut candidates = Vec::new();
        let mut seen = 0;
        let scope = self.scope.clone();
        for root in scope.roots() {
            let sizes = &mut self.sizes;
            walk(
                &scope,
                root,
                limit.saturating_sub(seen),
                &mut |path, metadata| {
                    // Small files are the bulk of any tree and never a bulk export: remembering
                    // them all would cost the memory of the agent several times over.
                    if metadata.len() >= min_size {
                        sizes.insert(path, Remembered::new(Facts::from_metadata(metadata), None));
                    }
                    if read_min.is_some_and(|read_min| metadata.len() >= read_min)
                        && candidates.len() < read_limit
                    {
                        candidates.push(path.to_path_buf());
                    }
                    seen += 1;
                },
            );
        }
        for path in candidates {
            if let Some(found) = self.examine_path(&path) {
                if found.export.is_some() {
                    self.consider_for_reads(&path, &found);
                    self.sizes
                        .insert(&path, Remembered::new(found.facts, found.export));
                }
            }
        }
        seen
    }

    /// After an overflow: compares the trees with what the sensor remembered and reports, as
    /// events marked `rescan`, what the lost events would have said. A remembered file that is
    /// gone is deleted (with its remembered size and export facts), or renamed when its inode
    /// turns up under another name; one whose inode changed was replaced; one whose size
    /// changed was written; a large file created since the sensor started and never reported
    /// is created. Returns how many files the walk saw.
    fn reconcile(&mut self) -> usize {
        let limit = self.sizes.capacity();
        let min_size = self.scan_min_size;
        let started = self.started;
        let scope = self.scope.clone();
        let mut seen = 0;
        // Files that differ from memory: (path, facts, new since start).
        let mut differing: Vec<(PathBuf, Facts, bool)> = Vec::new();
        for root in scope.roots() {
            let sizes = &self.sizes;
            walk(
                &scope,
                root,
                limit.saturating_sub(seen),
                &mut |path, metadata| {
                    seen += 1;
                    let facts = Facts::from_metadata(metadata);
                    let fresh = changed_since(metadata, started);
                    match sizes.get(path) {
                        Some(known)
                            if known.facts.inode == facts.inode
                                && known.facts.size == facts.size => {}
                        Some(_) => differing.push((path.to_path_buf(), facts, fresh)),
                        None if facts.size >= min_size => {
                            differing.push((path.to_path_buf(), facts, fresh))
                        }
                        None => {}
                    }
                },
            );
        }
        // Remembered files no longer at their path, taken out of memory first so each is
        // reported once with what was remembered, even when another moved onto its name.
        let mut gone: Vec<PathBuf> = self
            .sizes
            .paths()
            .filter(|path| scope.contains(path))
            .filter(|path| {
                matches!(std::fs::symlink_metadata(path),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound)
            })
            .map(Path::to_path_buf)
            .collect();
        gone.extend(
            differing
                .iter()
                .filter(|(path, facts, _)| {
                    self.sizes
                        .get(path)
                        .is_some_and(|known| known.facts.inode != facts.inode)
                })
                .map(|(path, _, _)| path.clone()),
        );
        let gone: Vec<(PathBuf, Remembered)> = gone
            .into_iter()
            .filter_map(|path| self.sizes.remove(&path).map(|known| (path, known)))
            .collect();
        // Files at a name the sensor did not know them under, by inode, so a move is told from
        // a delete.
        let arrived: HashMap<u64, PathBuf> = differing
            .iter()
            .filter(|(path, _, _)| self.sizes.get(path).is_none())
            .filter_map(|(path, facts, _)| facts.inode.map(|inode| (inode, path.clone())))
            .collect();
        self.rescanning = true;
        let mut moved_to = Vec::new();
        for (path, known) in gone {
            let to = known.facts.inode.and_then(|inode| arrived.get(&inode));
            self.sizes.insert(&path, known);
            match to {
                Some(to) => {
                    self.renamed(Some(&path), to, None);
                    moved_to.push(to.clone());
                }
                None => self.deleted(&path, None),
            }
        }
        for (path, facts, fresh) in differing {
            if moved_to.contains(&path) {
                continue;
            }
            match self.sizes.get(&path) {
                Some(_) => {
                    let seen = self.examine_path(&path);
                    self.changed(FileAction::Write, &path, None, seen);
                }
                None if fresh => {
                    let seen = self.examine_path(&path);
                    self.changed(FileAction::Create, &path, None, seen);
                }
                None => {
                    self.sizes.insert(&path, Remembered::new(facts, None));
                }
            }
        }
        self.rescanning = false;
        seen
    }
}

/// Whether the inode changed (created, renamed, linked) after `since`.
fn changed_since(metadata: &std::fs::Metadata, since: SystemTime) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(since) = since.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let ctime =
            i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec());
        ctime >= since.as_nanos() as i128
    }
    #[cfg(not(unix))]
    {
        let _ = (metadata, since);
        false
    }
}

/// Paths longer than `PATH_MAX`, which no system call takes whole.
#[cfg(target_os = "linux")]
pub mod long {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::{Component, Path, PathBuf};

    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;

    /// The kernel's limit on a path passed to a system call, terminating NUL included.
    pub const PATH_MAX: usize = 4096;

    /// A short name for the long absolute `path`: its directory is opened one component at a
    /// time (never following a symlink) and the file named through `/proc/self/fd`. The alias
    /// works while the returned descriptor is open.
    pub fn alias(path: &Path) -> Option<(OwnedFd, PathBuf)> {
        let name = path.file_name()?;
        let parent = path.parent()?;
        let mut dir: Option<OwnedFd> = None;
        for component in parent.components() {
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
            let next = match (component, &dir) {
                (Component::RootDir, _) => {
                    openat(nix::fcntl::AT_FDCWD, "/", flags, Mode::empty()).ok()?
                }
                (Component::Normal(part), Some(current)) => {
                    openat(current, part, flags, Mode::empty()).ok()?
                }
                _ => return None,
            };
            dir = Some(next);
        }
        let dir = dir?;
        let alias = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Some((dir, alias))
    }
}

/// A file's number of names, where the system tells it.
fn links_of(metadata: &std::fs::Metadata) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(metadata.nlink())
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        None
    }
}

/// A path as events carry it: unchanged when it is UTF-8 without a backslash; otherwise every
/// byte that is not UTF-8 is written `\xNN` and every backslash `\\`, so the text can be turned
/// back into the exact bytes and two distinct names never share one path. The flag says whether
/// anything was escaped.
pub fn escape_path(path: &Path) -> (String, bool) {
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        if !text.contains('\\') {
            return (text.to_string(), false);
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    (out, true)
}

impl Drop for Observer {
    /// A stopping sensor sends what it holds rather than losing it.
    fn drop(&mut self) {
        while let Some((_, _, event)) = self.waiting.pop_front() {
            self.send(event);
        }
        self.flush();
    }
}

/// Visits up to `limit` files below `dir` that are in scope, without following symlinks: not
/// even `dir` itself, so a symlink planted in a tree never leads a walk out of it.
fn walk(scope: &Scope, dir: &Path, limit: usize, visit: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // DirEntry::metadata does not follow a symlink.
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                if scope.private_dir() != Some(path.as_path()) {
                    stack.push(path);
                }
            } else if metadata.is_file() && scope.contains(&path) {
                if visited >= limit {
                    return;
                }
                visited += 1;
                visit(&path, &metadata);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// A path is under a directory when the directory's bytes end at a separator of the path:
    /// a sibling that shares the directory's name as a prefix is not under it.
    #[test]
    fn a_path_is_under_a_directory_only_at_a_separator() {
        let under = |path: &str, dir: &str| is_under(Path::new(path), Path::new(dir));
        assert!(under("/w/a.csv", "/w"));
        assert!(under("/w", "/w"));
        assert!(under("/w/sub/a.csv", "/w/sub"));
        assert!(under("/w/a.csv", "/"));
        assert!(!under("/wx/a.csv", "/w"));
        assert!(!under("/w2", "/w"));
        assert!(!under("/v/a.csv", "/w"));
        assert!(!under("/", "/w"));
        let odd = Path::new(OsStr::from_bytes(b"/w\xff/a"));
        assert!(is_under(odd, Path::new(OsStr::from_bytes(b"/w\xff"))));
        assert!(!is_under(odd, Path::new("/w")));
    }

    #[test]
    fn escaped_paths_keep_distinct_names_distinct() {
        let escape = |bytes: &[u8]| escape_path(Path::new(OsStr::from_bytes(bytes)));
        assert_eq!(escape(b"/w/plain.csv"), ("/w/plain.csv".to_string(), false));
        assert_eq!(
            escape("/w/名簿.csv".as_bytes()),
            ("/w/名簿.csv".to_string(), false)
        );
        assert_eq!(
            escape(b"/w/exp_\xff.csv"),
            (r"/w/exp_\xff.csv".to_string(), true)
        );
        assert_eq!(
            escape(b"/w/exp_\xfe.csv"),
            (r"/w/exp_\xfe.csv".to_string(), true)
        );
        // The ASCII spelling of the escape is escaped itself, so it cannot collide.
        assert_eq!(
            escape(br"/w/exp_\xff.csv"),
            (r"/w/exp_\\xff.csv".to_string(), true)
        );
    }
}
