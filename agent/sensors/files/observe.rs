//! What every backend shares: deciding whether a path is watched, examining a file the moment it
//! is seen, remembering its size, recognising exports, and turning it all into events.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bannin::event::{
    Body, Event, ExportInfo, FileAction, FileEvent, ProcessInfo, SensorEvent, SensorStatus,
};
use globset::{Glob, GlobSet, GlobSetBuilder};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::classify::{self, MAGIC_BYTES};
use super::procfs::UserNames;
use super::sizes::{Facts, SizeCache};
use super::{FilesConfig, FilesError, ProcessLookup};
use crate::pipeline::EventTx;

/// A rescan walks whole trees; under a sustained overflow storm one per this long is enough.
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// How long an event whose process is not known yet waits for the process sensor to record it:
/// a short-lived `rm` may be gone from `/proc` before the process table has heard of its exec.
const LATE_LOOKUP: Duration = Duration::from_millis(250);
/// Events held back at most; beyond this the oldest goes out with what is known.
const MAX_WAITING: usize = 10_000;

/// The watched trees minus the excluded globs.
#[derive(Clone)]
pub struct Scope {
    roots: Vec<PathBuf>,
    excludes: GlobSet,
}

impl Scope {
    /// Canonical roots (the kernel reports resolved paths) and the roots that could not be
    /// resolved, with why.
    pub fn new(config: &FilesConfig) -> Result<(Scope, Vec<(PathBuf, String)>), FilesError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &config.exclude {
            let glob = Glob::new(pattern).map_err(|source| FilesError::BadGlob {
                glob: pattern.clone(),
                source,
            })?;
            builder.add(glob);
        }
        let excludes = builder.build().map_err(|source| FilesError::BadGlob {
            glob: config.exclude.join(", "),
            source,
        })?;
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
        Ok((Scope { roots, excludes }, missing))
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root)) && !self.excludes.is_match(path)
    }
}

/// A file as the sensor saw it when it examined it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub facts: Facts,
    pub export: Option<ExportInfo>,
}

pub struct Observer {
    backend: &'static str,
    scope: Scope,
    sizes: SizeCache,
    sample_bytes: usize,
    scan_min_size: u64,
    lookup: ProcessLookup,
    users: Arc<UserNames>,
    out: mpsc::Sender<Event>,
    tx: EventTx,
    last_rescan: Option<Instant>,
    closed: bool,
    /// Processes looked up in the current batch of kernel events: a burst from one process
    /// reads `/proc` once, not once per file.
    processes: HashMap<u32, Option<ProcessInfo>>,
    /// File events in order, each with the pid still to be looked up (if any) and until when.
    waiting: VecDeque<(Instant, Option<u32>, Event)>,
}

impl Observer {
    pub fn new(
        backend: &'static str,
        scope: Scope,
        config: &FilesConfig,
        lookup: ProcessLookup,
        out: mpsc::Sender<Event>,
        tx: EventTx,
    ) -> Self {
        Observer {
            backend,
            scope,
            sizes: SizeCache::new(config.remembered_paths),
            sample_bytes: config.sample_bytes,
            scan_min_size: config.scan_min_size,
            lookup,
            users: Arc::new(UserNames::default()),
            out,
            tx,
            last_rescan: None,
            closed: false,
            processes: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Whether the spool side has gone away, so the backend can stop.
    pub fn closed(&self) -> bool {
        self.closed
    }

    pub fn remembered(&self, path: &Path) -> Option<Facts> {
        self.sizes.get(path)
    }

    /// Examines a file by path, now. `None` when it is already gone.
    pub fn examine_path(&self, path: &Path) -> Option<Seen> {
        let metadata = std::fs::symlink_metadata(path).ok()?;
        let facts = Facts::from_metadata(&metadata);
        if !metadata.is_file() {
            return Some(Seen {
                facts,
                export: None,
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
        let export = match options.open(path) {
            Ok(file) => self.recognise(path, file, facts.size),
            Err(_) => None,
        };
        Some(Seen { facts, export })
    }

    /// Examines a file through a descriptor the backend holds, which works even after the file
    /// was unlinked.
    pub fn examine_file(&self, path: &Path, file: File) -> Option<Seen> {
        let metadata = file.metadata().ok()?;
        let facts = Facts::from_metadata(&metadata);
        let export = if metadata.is_file() {
            self.recognise(path, file, facts.size)
        } else {
            None
        };
        Some(Seen { facts, export })
    }

    fn recognise(&self, path: &Path, file: File, size: u64) -> Option<ExportInfo> {
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
    pub fn new_batch(&mut self) {
        self.processes.clear();
    }

    fn process(&mut self, pid: u32) -> Option<ProcessInfo> {
        let lookup = &self.lookup;
        self.processes
            .entry(pid)
            .or_insert_with(|| lookup(pid))
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
        let mut event = FileEvent::new(action, path.to_string_lossy(), self.backend);
        match seen {
            Some(seen) => {
                self.sizes.insert(path, seen.facts);
                self.fill(&mut event, seen.facts);
                event.export = seen.export;
            }
            None => event.incomplete = true,
        }
        self.emit_file(event, pid);
    }

    /// Emits a delete carrying the last size seen.
    pub fn deleted(&mut self, path: &Path, pid: Option<u32>) {
        let mut event = FileEvent::new(FileAction::Delete, path.to_string_lossy(), self.backend);
        match self.sizes.remove(path) {
            Some(facts) => self.fill(&mut event, facts),
            None => event.incomplete = true,
        }
        self.emit_file(event, pid);
    }

    /// Emits a rename; `from` is `None` when the file came from outside the watched trees.
    pub fn renamed(&mut self, from: Option<&Path>, to: &Path, pid: Option<u32>) {
        let mut event = FileEvent::new(FileAction::Rename, to.to_string_lossy(), self.backend);
        event.from_path = from.map(|p| p.to_string_lossy().into_owned());
        let remembered = from.and_then(|from| self.sizes.remove(from));
        match (self.examine_path(to), remembered) {
            (Some(seen), _) => {
                self.sizes.insert(to, seen.facts);
                self.fill(&mut event, seen.facts);
                event.export = seen.export;
            }
            (None, Some(facts)) => {
                self.sizes.insert(to, facts);
                self.fill(&mut event, facts);
                event.incomplete = true;
            }
            (None, None) => event.incomplete = true,
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

    fn fill(&self, event: &mut FileEvent, facts: Facts) {
        event.size = Some(facts.size);
        event.inode = facts.inode;
        event.mode = facts.mode;
        event.owner_uid = facts.uid;
        event.owner = facts.uid.map(|uid| self.users.name(uid));
    }

    /// Emits a file event with its process. When the pid is not known yet the event waits (and
    /// every later one behind it, to keep the order) until the process turns up or
    /// [`LATE_LOOKUP`] passes; then it goes out with the pid alone.
    fn emit_file(&mut self, mut event: FileEvent, pid: Option<u32>) {
        let found = pid.and_then(|pid| self.process(pid));
        // A pid whose process is never found is still worth reporting on its own.
        event.process = found.clone().or(pid.map(|pid| ProcessInfo {
            pid,
            ..ProcessInfo::default()
        }));
        event.process_known = event.process.is_some();
        let event = Event::now(self.tx.host().to_string(), event);
        let now = Instant::now();
        match (pid, found) {
            (Some(pid), None) => self
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
    pub fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Sends the waiting events whose process has turned up or whose wait is over, in order.
    pub fn pump(&mut self) {
        let now = Instant::now();
        while let Some((until, pid, event)) = self.waiting.front_mut() {
            if let Some(pid) = *pid {
                match (self.lookup)(pid) {
                    Some(info) => {
                        if let Body::File(file) = &mut event.body {
                            file.process = Some(info.clone());
                        }
                        self.processes.insert(pid, Some(info));
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

    /// Hands an event to the forwarder without blocking the kernel reader; a full queue is a
    /// counted drop.
    pub fn emit(&mut self, body: impl Into<Body>) {
        self.send(Event::now(self.tx.host().to_string(), body));
    }

    fn send(&mut self, event: Event) {
        match self.out.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.tx.count_drop(1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
        }
    }

    pub fn status(&mut self, message: String) {
        self.emit(SensorEvent::new(SensorStatus::Status, "files", message));
    }

    pub fn error(&mut self, message: String, path: &Path) {
        tracing::warn!(path = %path.display(), "{message}");
        let mut event = SensorEvent::new(SensorStatus::Error, "files", message);
        event.path = path.to_string_lossy().into_owned();
        self.emit(event);
    }

    /// The kernel lost events: say so, then rescan so later deletes still carry sizes.
    pub fn overflow(&mut self, message: &str, count: u64) {
        tracing::warn!(count, "{message}");
        let mut event = SensorEvent::new(SensorStatus::Overflow, "files", message);
        event.count = count;
        self.emit(event);
        let due = self
            .last_rescan
            .is_none_or(|last| last.elapsed() >= RESCAN_INTERVAL);
        if due {
            let files = self.rescan();
            let mut done = SensorEvent::new(
                SensorStatus::Recovered,
                "files",
                format!("rescanned the watched trees after an overflow: {files} files"),
            );
            done.count = files as u64;
            self.emit(done);
        }
    }

    /// Walks the watched trees and remembers the facts of every file of at least `scan_min_size`
    /// bytes; returns how many files it saw.
    pub fn rescan(&mut self) -> usize {
        self.last_rescan = Some(Instant::now());
        let limit = self.sizes.capacity();
        let min_size = self.scan_min_size;
        let mut seen = 0;
        let scope = self.scope.clone();
        for root in scope.roots() {
            let sizes = &mut self.sizes;
            walk(
                &scope,
                root,
                limit.saturating_sub(seen),
                &mut |path, facts| {
                    // Small files are the bulk of any tree and never a bulk export: remembering
                    // them all would cost the memory of the agent several times over.
                    if facts.size >= min_size {
                        sizes.insert(path, facts);
                    }
                    seen += 1;
                },
            );
        }
        seen
    }
}

impl Drop for Observer {
    /// A stopping sensor sends what it holds rather than losing it.
    fn drop(&mut self) {
        while let Some((_, _, event)) = self.waiting.pop_front() {
            self.send(event);
        }
    }
}

/// Visits up to `limit` files below `dir` that are in scope, without following symlinks.
fn walk(scope: &Scope, dir: &Path, limit: usize, visit: &mut dyn FnMut(&Path, Facts)) {
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                stack.push(path);
            } else if metadata.is_file() && scope.contains(&path) {
                if visited >= limit {
                    return;
                }
                visited += 1;
                visit(&path, Facts::from_metadata(&metadata));
            }
        }
    }
}
