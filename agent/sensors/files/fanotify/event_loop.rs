//! The backend's thread: polls the three groups, reads and orders their events, and hands them
//! to the observer until the sensor stops.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bannin::event::FileAction;
use nix::errno::Errno;
use nix::libc;
use nix::sys::fanotify::Fanotify;

use super::reads::{ReadGroup, ReadWatch};
use super::record::{self, Handle, NameEvent, parse_names_into};
use super::resolve::{Resolver, handle_of_file, own_event_fd, path_of_file, stat_with_mount};
use super::setup::FanotifyBackend;
use crate::sensors::Stop;
use crate::sensors::files::observe::{Observer, Seen};

/// Bytes per read of the `names` group; many events per system call under load.
const READ_BUFFER: usize = 64 * 1024;
/// What one read of the `writes` group takes: a descriptor an event, so it bounds how many are open
/// at once (170 events of 24 bytes).
const WRITES_BUFFER: usize = 4096;
/// Reads per round, so a flood cannot starve the stop flag or the `writes` group.
const READS_PER_ROUND: usize = 16;
/// With work due that new events do not bring (a lone move to settle, a rescan owed), how long a
/// quiet poll lasts before that work is done.
const POLL: Duration = Duration::from_millis(200);
/// How long a poll waits while events wait for their process to be known.
const WAITING_POLL: Duration = Duration::from_millis(10);
/// How long a poll waits while writes are held for their names ([`PendingWrites`]).
const HELD_WRITES_POLL: Duration = Duration::from_millis(10);
/// After a round that had events, how long the kernel gathers more before the next: in a burst
/// the sensor then reads a few dozen events per wake-up rather than one, and every wake-up costs
/// a poll and a read of each group. Far below what fills a group's queue (16,384 events).
const GATHER: Duration = Duration::from_millis(2);
/// Rounds of fewer name events than this are followed by a [`GATHER`].
const GATHER_BELOW: usize = 64;

/// A close-after-write examined at once, waiting to be emitted in order with the names events.
struct Written {
    path: PathBuf,
    pid: Option<u32>,
    seen: Option<Seen>,
    /// The file's handle, when it had no name left as it was examined.
    unlinked: Option<Handle>,
}

/// One round's examined writes in arrival order, indexed by path so a create or delete finds its
/// own in constant time even when a flood leaves thousands pending. Kept from round to round, so a
/// burst reuses its room rather than growing it again each round.
#[derive(Default)]
struct WriteQueue {
    queue: Vec<Option<Written>>,
    /// For each write in `queue`, the position of the write of the same path before it.
    before: Vec<Option<usize>>,
    /// The position of each path's latest write.
    latest: HashMap<PathBuf, usize>,
}

impl WriteQueue {
    fn push(&mut self, written: Written) {
        let at = self.queue.len();
        self.before
            .push(self.latest.insert(written.path.clone(), at));
        self.queue.push(Some(written));
    }

    fn latest(&self, path: &Path) -> Option<&Written> {
        let &last = self.latest.get(path)?;
        self.queue.get(last)?.as_ref()
    }

    /// Takes the writes of one path, in order.
    fn take_path(&mut self, path: &Path, taken: &mut Vec<Written>) {
        let from = taken.len();
        let mut at = self.latest.remove(path);
        while let Some(i) = at {
            taken.extend(self.queue.get_mut(i).and_then(Option::take));
            at = self.before.get(i).copied().flatten();
        }
        taken[from..].reverse();
    }

    /// Takes every write, in order.
    fn take_all(&mut self) -> impl Iterator<Item = Written> + '_ {
        self.latest.clear();
        self.before.clear();
        self.queue.drain(..).flatten()
    }

    fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// The examined writes not emitted yet: this round's, and those held over from the round before.
///
/// A write is held one round more when its names did not come with it: the sensor drains the
/// writes after reading the names, so in a fast burst a file's close-after-write is often in hand
/// a round before its create and delete are read. Held, the write is still there when they come:
/// the create takes what the write saw (no look at a name already gone) and a merged
/// create-and-delete knows from it that its file is gone (no handle opened). Emitted a round
/// later, the write then also comes between its create and its delete, in the order they
/// happened. Writes held are emitted at the end of the next round, or when a short poll finds no
/// new events ([`HELD_WRITES_POLL`]), so none waits longer than that.
#[derive(Default)]
struct PendingWrites {
    fresh: WriteQueue,
    held: WriteQueue,
}

impl PendingWrites {
    fn push(&mut self, written: Written) {
        self.fresh.push(written);
    }

    fn latest_written(&self, path: &Path) -> Option<&Written> {
        self.fresh.latest(path).or_else(|| self.held.latest(path))
    }

    /// What the latest write of `path` saw.
    fn latest(&self, path: &Path) -> Option<Seen> {
        self.latest_written(path)?.seen.clone()
    }

    /// Whether the latest write of `path` was to `object` and found it with no name left. A file
    /// with no name left never has one again, so this holds whenever that write was examined.
    fn latest_unlinked(&self, path: &Path, object: &Handle) -> bool {
        self.latest_written(path)
            .and_then(|written| written.unlinked.as_ref())
            .is_some_and(|unlinked| {
                unlinked.handle_type == object.handle_type && unlinked.bytes == object.bytes
            })
    }

    /// Takes the writes of one path, in order.
    fn take_path(&mut self, path: &Path) -> Vec<Written> {
        let mut taken = Vec::new();
        self.held.take_path(path, &mut taken);
        self.fresh.take_path(path, &mut taken);
        taken
    }

    /// Takes every write, in order.
    fn take_all(&mut self) -> impl Iterator<Item = Written> + '_ {
        self.held.take_all().chain(self.fresh.take_all())
    }

    /// Ends a round: takes the writes held from the round before, in order, and holds this
    /// round's.
    fn take_held(&mut self) -> impl Iterator<Item = Written> + '_ {
        std::mem::swap(&mut self.fresh, &mut self.held);
        self.fresh.take_all()
    }

    fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.held.is_empty()
    }

    /// The writes held for the next round, in order.
    fn held(&self) -> impl Iterator<Item = &Written> {
        self.held.queue.iter().flatten()
    }
}

/// What [`Loop::drain_writes`] reads into, kept from read to read.
#[derive(Default)]
struct WriteRecords {
    parsed: Vec<record::FdEvent>,
    /// Each event's mask, descriptor and pid.
    owned: Vec<(u64, Option<OwnedFd>, i32)>,
}

/// The files one round's names events created or moved, by their handle, so that a write to
/// one of them is named from its event: a hash lookup and a name joined to a remembered
/// directory, where reading the descriptor's link in `/proc` was a fifth of the sensor's kernel
/// time in a burst of short-lived files.
#[derive(Default)]
struct NamedFiles {
    /// The position in the round's events of the latest to give each file a name, by a hash of
    /// its handle; `None` for a file created under two names (a hard link), whose writes are then
    /// named by their link. Of two handles with one hash the later is kept: a lookup compares the
    /// handle, so a collision costs only the link read.
    latest: HashMap<u64, Option<usize>>,
    /// How many of the round's events are indexed: they are read in several reads, and indexed
    /// as writes ask.
    indexed: usize,
}

impl NamedFiles {
    fn key(handle: &Handle) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        handle.handle_type.hash(&mut hasher);
        handle.bytes.hash(&mut hasher);
        hasher.finish()
    }

    /// Starts a round: its events are indexed when a write asks.
    fn clear(&mut self) {
        self.latest.clear();
        self.indexed = 0;
    }

    fn index(&mut self, events: &[NameEvent]) {
        let from = self.indexed.min(events.len());
        self.indexed = events.len();
        for (at, event) in events.iter().enumerate().skip(from) {
            if event.mask & (libc::FAN_ONDIR | libc::FAN_Q_OVERFLOW) != 0 {
                continue;
            }
            let Some(object) = &event.object else {
                continue;
            };
            let key = Self::key(object);
            if event.mask & libc::FAN_CREATE != 0 {
                self.latest
                    .entry(key)
                    .and_modify(|latest| *latest = None)
                    .or_insert(Some(at));
            } else if event.mask & (libc::FAN_RENAME | libc::FAN_MOVED_TO) != 0 {
                let latest = self.latest.entry(key).or_insert(Some(at));
                if latest.is_some() {
                    *latest = Some(at);
                }
            }
        }
    }

    /// The directory and name the round's `events` last gave the file `handle` (on the
    /// filesystem `fsid`), when they gave it exactly one.
    fn entry<'e>(
        &mut self,
        events: &'e [NameEvent],
        handle: &Handle,
        fsid: [u8; record::FSID_LEN],
    ) -> Option<&'e (Handle, Vec<u8>)> {
        if self.indexed < events.len() {
            self.index(events);
        }
        let at = (*self.latest.get(&Self::key(handle))?)?;
        let event = events.get(at)?;
        let object = event.object.as_ref()?;
        if object.fsid != fsid
            || object.handle_type != handle.handle_type
            || object.bytes != handle.bytes
        {
            return None;
        }
        if event.mask & libc::FAN_RENAME != 0 {
            event.new_entry.as_ref()
        } else {
            event.entry.as_ref()
        }
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
    write_records: WriteRecords,
    /// Writes to files that could be neither named nor examined, reported as one error.
    unnamed_writes: u64,
    /// The exports watched for reads, when the reads group could be opened.
    reads: Option<ReadWatch>,
    /// The parsed events of one read of the `modifies` group, kept from read to read.
    modified: Vec<NameEvent>,
    named: NamedFiles,
}

/// Runs the backend until the sensor stops; `reads` is the reads group and how many exports it
/// may watch, when reads are watched.
pub fn run(
    backend: FanotifyBackend,
    reads: Option<(ReadGroup, usize)>,
    observer: Observer,
    stop: Stop,
) {
    let FanotifyBackend {
        names,
        writes,
        modifies,
        resolver,
        paired_renames,
        queue: _,
    } = backend;
    tracing::debug!(paired_renames, "fanotify backend running");
    let mut state = Loop {
        observer,
        resolver,
        own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
        pending_writes: PendingWrites::default(),
        moved_from: None,
        unresolved_writes: Vec::new(),
        write_records: Default::default(),
        unnamed_writes: 0,
        reads: reads.map(|(group, max)| ReadWatch::new(group, max)),
        modified: Vec::new(),
        named: NamedFiles::default(),
    };
    let mut buf = vec![0u8; READ_BUFFER];
    // Reused round after round: a burst's rounds are large, and a fresh list each time costs
    // the allocator more than the events.
    let mut events = Vec::new();
    while !stop.is_set() && !state.observer.closed() {
        state.reads_turn(&mut buf);
        let mut fds = vec![names.as_fd(), writes.as_fd(), modifies.as_fd()];
        if let Some(reads) = &state.reads {
            fds.push(reads.fanotify().as_fd());
        }
        state.observer.end_round();
        // Work due without new events: events waiting for their process are looked at again
        // soon; a lone move, an owed rescan or refusals to report, after a quiet poll. Nothing
        // due: the thread sleeps until the kernel or the stop wakes it.
        // A reader of an export not yet reported is reported at its due time at the latest.
        let reader_due = state
            .reads
            .as_ref()
            .and_then(ReadWatch::next_due)
            .map(|due| due.saturating_duration_since(tokio::time::Instant::now()));
        let duty = if state.observer.waiting() {
            Some(WAITING_POLL)
        } else if !state.pending_writes.is_empty() {
            Some(HELD_WRITES_POLL)
        } else if state.moved_from.is_some()
            || state.observer.rescan_owed()
            || state
                .reads
                .as_ref()
                .is_some_and(ReadWatch::refusals_pending)
        {
            Some(POLL)
        } else {
            None
        };
        let duty = match (duty, reader_due) {
            (Some(duty), Some(due)) => Some(duty.min(due)),
            (duty, due) => duty.or(due),
        };
        // Events lingering in the outbox are handed over when their linger is up.
        let linger = state.observer.linger_left();
        let (wait, linger_only) = match (duty, linger) {
            (Some(duty), Some(linger)) if linger < duty => (Some(linger), true),
            (None, Some(linger)) => (Some(linger), true),
            (duty, _) => (duty, false),
        };
        let polled = stop.wait_readable(&fds, wait);
        drop(fds);
        state.observer.begin_round();
        match polled {
            Ok(true) => {}
            // Only the outbox's linger was over: hand it over, then wait again.
            Ok(_) if linger_only => continue,
            Ok(_) => {
                state.flush_writes(None);
                state.settle_moved_from();
                state.observer.pump();
                state.observer.rescan_if_due();
                continue;
            }
            Err(error) => {
                state.observer.error(
                    format!("fanotify poll failed, the file sensor stops: {error}"),
                    Path::new(""),
                );
                return;
            }
        }
        // The groups are separate queues and fanotify stamps no event with a time or sequence,
        // so the order between them is the order they are read in. Reads of exports are read
        // (and reported) first, then the writes and the names in turn (see `drain_writes`): a
        // reader's first read(2) comes before anything it writes from what it read, so when
        // both wait in the queues at once (a round that gathered, or a thread that was held up)
        // the read is still reported first. `export-archived` depends on it when the writer is
        // another process of a pipe (`tar c export.csv | gzip > out.tgz`): an archive reported
        // before the archiver's read is not matched to it (a process's own read and archive
        // match in either order). The cost is the other way round: a read that followed a write
        // within one round is reported before it, so that pipe match may pair an archive with a
        // read made a round after it, which is the lesser error than missing an archived export.
        state.reads_turn(&mut buf);
        state.observer.new_batch();
        if let Err(errno) = state.drain_writes(&writes, &names, &mut buf, &mut events) {
            // Not a transient condition: the group is unusable, so say so and stop rather than
            // repeat the error on every poll.
            state.observer.error(
                format!(
                    "reading fanotify events failed, the file sensor stops: {}",
                    errno.desc()
                ),
                Path::new(""),
            );
            return;
        }
        // Kept up with, but not idle: gather (see GATHER). Behind: go straight on.
        let gather = (1..GATHER_BELOW).contains(&events.len());
        let mut round = events.drain(..).peekable();
        while let Some(event) = round.next() {
            if is_exchange(&event, round.peek()) {
                round.next();
                state.exchanged(&event);
                continue;
            }
            state.handle_name_event(&event, paired_renames);
        }
        state.resolve_writes();
        state.emit_held_writes();
        state.drain_modifies(&modifies, &mut buf);
        state.reads_turn(&mut buf);
        if state.observer.rescan_owed() {
            // A rescan compares the trees with what the sensor remembers, writes included.
            state.flush_writes(None);
        }
        state.observer.rescan_if_due();
        if gather {
            #[expect(
                clippy::disallowed_methods,
                reason = "the fanotify backend runs on its own thread, never a runtime worker"
            )]
            std::thread::sleep(GATHER);
        }
    }
}

/// `known`, the handle of the file open as `fd` where it was read already, else read now (on
/// the filesystem `fsid`).
fn handle_or_read<'h>(
    fd: &OwnedFd,
    fsid: [u8; record::FSID_LEN],
    known: Option<&'h Handle>,
) -> Option<std::borrow::Cow<'h, Handle>> {
    match known {
        Some(handle) => Some(std::borrow::Cow::Borrowed(handle)),
        None => handle_of_file(fd, fsid).map(std::borrow::Cow::Owned),
    }
}

/// Reads the queued names events into `events`, at most `reads_left` reads of [`READ_BUFFER`]
/// bytes (counted down), until none are left; `Err` when the group cannot be read.
fn read_names(
    names: &Fanotify,
    buf: &mut [u8],
    events: &mut Vec<NameEvent>,
    reads_left: &mut usize,
) -> Result<(), Errno> {
    while *reads_left > 0 {
        match nix::unistd::read(names, buf) {
            Ok(0) | Err(Errno::EAGAIN) => return Ok(()),
            Ok(n) => {
                *reads_left -= 1;
                parse_names_into(&buf[..n], events);
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
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

impl Drop for Loop {
    /// A stopping sensor emits the writes it holds before its observer sends what it has.
    fn drop(&mut self) {
        self.flush_writes(None);
    }
}

impl Loop {
    /// Watches the exports found since the last turn and reports reads of those watched.
    fn reads_turn(&mut self, buf: &mut [u8]) {
        if let Some(reads) = &mut self.reads {
            reads.turn(&mut self.observer, &self.resolver, buf);
        }
    }

    fn pid(&self, pid: i32) -> Option<Option<u32>> {
        if pid == self.own_pid {
            return None;
        }
        Some(u32::try_from(pid).ok().filter(|&p| p != 0))
    }

    /// Reads every queued close-after-write and the names events, and examines each written
    /// file through the descriptor its event carries, closing it straight after so a flood
    /// cannot exhaust descriptors. Each read of the writes takes at most [`WRITES_BUFFER`] bytes
    /// of events, and with them as many descriptors.
    ///
    /// Each read of the writes is followed by a read of the names, and its writes are examined
    /// only then: a file is created before it is written and closed, so the create of every
    /// write in hand has been read, and the write is named from it ([`Self::named_by_event`]).
    /// The writes are read until a read after the last read of the names finds none: every
    /// close-after-write that happened before a delete read here is then in hand when that
    /// delete is handled. `Err` when the names group cannot be read.
    fn drain_writes(
        &mut self,
        writes: &Fanotify,
        names: &Fanotify,
        names_buf: &mut [u8],
        name_events: &mut Vec<NameEvent>,
    ) -> Result<(), Errno> {
        self.named.clear();
        let mut names_reads = READS_PER_ROUND;
        let mut names_read = false;
        let mut buf = [0u8; WRITES_BUFFER];
        // Kept from round to round, like the names' (see `parse_names_into`).
        let WriteRecords {
            parsed: mut records,
            owned: mut events,
        } = std::mem::take(&mut self.write_records);
        let mut result = Ok(());
        for _ in 0..READS_PER_ROUND * 16 {
            let mut failed = false;
            match nix::unistd::read(writes, &mut buf) {
                Ok(0) | Err(Errno::EAGAIN) => {}
                Ok(n) => record::parse_fds_into(&buf[..n], &mut records),
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    self.observer.error(
                        format!("reading fanotify write events failed: {}", errno.desc()),
                        Path::new(""),
                    );
                    failed = true;
                }
            };
            // Every descriptor first, so each is closed whatever becomes of its event.
            events.extend(
                records
                    .drain(..)
                    .map(|event| (event.mask, own_event_fd(event.fd), event.pid)),
            );
            if events.is_empty() && names_read {
                break;
            }
            let names_result = read_names(names, names_buf, name_events, &mut names_reads);
            names_read = true;
            // Examined even when the names cannot be read: the writes in hand are not lost.
            self.examine_writes(&mut events, name_events);
            if let Err(errno) = names_result {
                result = Err(errno);
                break;
            }
            if failed {
                break;
            }
        }
        self.write_records = WriteRecords {
            parsed: records,
            owned: events,
        };
        result
    }

    /// Examines the writes of one read, naming each by this round's `names` where they name it.
    fn examine_writes(
        &mut self,
        events: &mut Vec<(u64, Option<OwnedFd>, i32)>,
        names: &[NameEvent],
    ) {
        for (mask, fd, pid) in events.drain(..) {
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                self.overflow();
                continue;
            }
            let Some(pid) = self.pid(pid) else {
                continue;
            };
            let Some(fd) = fd else {
                continue;
            };
            let Some((stat, mount)) = stat_with_mount(fd.as_fd()) else {
                self.unnamed_writes += 1;
                continue;
            };
            #[allow(
                clippy::useless_conversion,
                reason = "st_nlink and dev_t are not u64 on every target"
            )]
            let (links, device) = (u64::from(stat.st_nlink), u64::from(stat.st_dev));
            // The marked filesystem it is on, as its events name it.
            let fsid = self.resolver.fsid_of_device(device);
            // Its handle while the descriptor still holds it (an inode's number is not reused
            // while it is open), so a create-and-delete of it in this round's names needs no
            // look at the handle to know it is gone.
            let unlinked = (links == 0)
                .then(|| handle_of_file(&fd, fsid.unwrap_or_default()))
                .flatten();
            let path = fsid
                .and_then(|fsid| self.named_by_event(&fd, fsid, links, unlinked.as_ref(), names))
                .or_else(|| {
                    // Opened through a mount the sensor does not reach the watched trees by (a
                    // bind mount an ordinary user made in a namespace of their own, `unshare
                    // -Urm`), the descriptor's link names the file as that mount shows it, a
                    // path that means nothing here, or another file: it is named by its handle
                    // through the sensor's own mount instead.
                    if self.resolver.through_root_mount(mount) {
                        path_of_file(&fd.as_raw_fd(), Some(links)).map(|(path, _)| path)
                    } else {
                        let handle = handle_or_read(&fd, fsid?, unlinked.as_ref())?;
                        self.resolver.path_of_handle(&handle)
                    }
                });
            let Some(path) = path else {
                // Too deep for the kernel to print, or opened through another mount and gone:
                // named by its inode once this batch's creates and renames are in, or reported
                // as an error, never dropped.
                self.unresolved_writes.push((stat.st_ino, pid));
                continue;
            };
            if !self.observer.scope().contains(&path) {
                continue;
            }
            let seen = Some(self.observer.examine_stat(&path, fd.as_fd(), &stat));
            self.pending_writes.push(Written {
                path,
                pid,
                seen,
                unlinked,
            });
        }
    }

    /// The path of a written file (on the filesystem `fsid`, with `links` names) that this
    /// round's `names` created or moved, from their event; `None` for any other, and for a file
    /// with several names, whose link in `/proc` says which one it was written by. `handle` is
    /// the file's handle where it was read already.
    fn named_by_event(
        &mut self,
        fd: &OwnedFd,
        fsid: [u8; record::FSID_LEN],
        links: u64,
        handle: Option<&Handle>,
        names: &[NameEvent],
    ) -> Option<PathBuf> {
        if names.is_empty() || links > 1 {
            return None;
        }
        let handle = handle_or_read(fd, fsid, handle)?;
        let entry = self.named.entry(names, &handle, fsid)?;
        self.resolver.entry(entry)
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
            let mut modified = std::mem::take(&mut self.modified);
            parse_names_into(&buf[..n], &mut modified);
            for event in modified.drain(..) {
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
                if !self.observer.scope().contains(&path) {
                    continue;
                }
                // A write held for its names is what the file is known to hold: it is reported
                // before the truncate that followed it, and is held on otherwise (a file's own
                // writes before its close are modifications too).
                let held = self.pending_writes.latest(&path).map(|seen| seen.facts);
                if self.observer.shrank(&path, held) {
                    self.flush_writes(Some(&path));
                    self.observer.truncated(&path, pid);
                }
            }
            self.modified = modified;
        }
    }

    /// Names the writes whose path was too long to print by the inode the sensor remembers
    /// from the file's create or rename, and reports the rest as one counted error.
    fn resolve_writes(&mut self) {
        for (inode, pid) in std::mem::take(&mut self.unresolved_writes) {
            match self.observer.path_of_inode(inode) {
                Some(path) => {
                    let seen = self.observer.examine_path(&path);
                    self.pending_writes.push(Written {
                        path,
                        pid,
                        seen,
                        unlinked: None,
                    });
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

    /// Emits the writes held from the round before and holds this round's ([`PendingWrites`]),
    /// except those of exports whose reads are watched: their watch begins as they are emitted,
    /// and a reader that follows the writer at once (`sort > export.csv && gzip export.csv`)
    /// would otherwise have a round longer to go unseen.
    fn emit_held_writes(&mut self) {
        let observer = &mut self.observer;
        for written in self.pending_writes.take_held() {
            observer.changed(FileAction::Write, &written.path, written.pid, written.seen);
        }
        let exports: Vec<PathBuf> = self
            .pending_writes
            .held()
            .filter(|written| {
                written
                    .seen
                    .as_ref()
                    .is_some_and(|seen| self.observer.watches_reads_of(seen))
            })
            .map(|written| written.path.clone())
            .collect();
        for path in exports {
            self.flush_writes(Some(&path));
        }
    }

    /// Emits the examined writes, all of them or only those of one path (before that path is
    /// deleted, renamed or truncated, so what is reported of it next follows the written size).
    fn flush_writes(&mut self, only: Option<&Path>) {
        let observer = &mut self.observer;
        let mut emit = |written: Written| {
            observer.changed(FileAction::Write, &written.path, written.pid, written.seen);
        };
        match only {
            Some(path) => self
                .pending_writes
                .take_path(path)
                .into_iter()
                .for_each(emit),
            None => self.pending_writes.take_all().for_each(&mut emit),
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
        // back, into a single event, and only when both are about the same file (its handle).
        // A file gone for good (its handle stale) was created and then deleted: no look at the
        // name is needed, nor at the handle again. Otherwise whether the name exists now tells
        // which came first. In a burst of short-lived files the look at the name was a fifth
        // of the sensor's time. A file written and closed in this round or the one before (its
        // write still pending) was examined through its descriptor: when it had no name left
        // then and is this event's file (its handle), it is gone for good (an unlinked file
        // cannot be linked again), and the handle need not be opened, which makes the
        // filesystem read the dead inode back only to refuse it.
        let gone = created
            && deleted
            && event.object.as_ref().is_some_and(|object| {
                self.pending_writes.latest_unlinked(&path, object) || self.resolver.is_gone(object)
            });
        let object = event.object.as_ref().filter(|_| !gone);
        let recreated = created && deleted && !gone && std::fs::symlink_metadata(&path).is_ok();
        if deleted && recreated {
            self.entry_deleted(&path, pid, is_dir, None);
        }
        if created {
            self.entry_created(&path, pid, is_dir, object);
        }
        if deleted && !recreated {
            self.entry_deleted(&path, pid, is_dir, object);
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
                    self.observer.examine_file(path, file.as_fd())
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
            self.flush_writes(None);
            self.observer.dir_deleted(path);
        } else if self.observer.scope().contains(path) {
            // Written and closed with no name left when examined, its write still pending: no
            // other name is left now either (an unlinked file cannot be linked again), and its
            // handle need not be opened to say so.
            let unlinked =
                object.is_some_and(|object| self.pending_writes.latest_unlinked(path, object));
            self.flush_writes(Some(path));
            // A file still linked under another name opens by its handle: only a name went.
            let links_left = object
                .filter(|_| !unlinked)
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
            self.flush_writes(None);
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
            // Writes held under the old name are reported with it, before the move.
            self.flush_writes(None);
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
        // A write held for the name moved onto was to the file it replaces.
        self.flush_writes(Some(&new));
        // A file leaving the watched trees is still reported with where it went: the kernel
        // names both ends of the rename.
        let from = if old_in { old } else { None };
        self.observer.renamed(from.as_deref(), &new, pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(path: &str, pid: u32, unlinked: Option<&[u8]>) -> Written {
        Written {
            path: PathBuf::from(path),
            pid: Some(pid),
            seen: None,
            unlinked: unlinked.map(|bytes| Handle {
                fsid: [0; record::FSID_LEN],
                handle_type: 1,
                bytes: bytes.to_vec(),
            }),
        }
    }

    fn pids(writes: impl Iterator<Item = Written>) -> Vec<Option<u32>> {
        writes.map(|w| w.pid).collect()
    }

    #[test]
    fn a_write_is_held_one_round_and_taken_with_its_path_in_order() {
        let mut pending = PendingWrites::default();
        pending.push(written("/w/a.csv", 1, None));
        pending.push(written("/w/b.csv", 2, None));
        // The round that examined them holds them.
        assert!(pids(pending.take_held()).is_empty());
        assert!(!pending.is_empty());
        // The next round's names find them, the held before the fresh of the same path.
        pending.push(written("/w/a.csv", 3, None));
        assert!(pending.latest_written(Path::new("/w/b.csv")).is_some());
        assert_eq!(
            pending
                .latest_written(Path::new("/w/a.csv"))
                .and_then(|w| w.pid),
            Some(3)
        );
        assert_eq!(
            pids(pending.take_path(Path::new("/w/a.csv")).into_iter()),
            [Some(1), Some(3)]
        );
        // What no name took is emitted at the end of that next round, and nothing is left.
        assert_eq!(pids(pending.take_held()), [Some(2)]);
        assert!(pending.is_empty());
        assert!(pids(pending.take_held()).is_empty());
    }

    #[test]
    fn only_the_latest_write_of_a_path_says_whether_its_file_is_gone() {
        let object = Handle {
            fsid: [0; record::FSID_LEN],
            handle_type: 1,
            bytes: vec![7; 8],
        };
        let path = Path::new("/w/export.csv");
        let mut pending = PendingWrites::default();
        pending.push(written("/w/export.csv", 1, Some(&[7; 8])));
        let _ = pending.take_held().count();
        assert!(pending.latest_unlinked(path, &object), "held a round");
        // Another file written at the name since, still linked: not known gone.
        pending.push(written("/w/export.csv", 2, None));
        assert!(!pending.latest_unlinked(path, &object));
        // Another file's handle is never taken for this one.
        let mut other = PendingWrites::default();
        other.push(written("/w/export.csv", 1, Some(&[8; 8])));
        assert!(!other.latest_unlinked(path, &object));
        // Everything is taken in order when the sensor must emit all.
        assert_eq!(pids(pending.take_all()), [Some(1), Some(2)]);
        assert!(pending.is_empty());
    }

    fn handle(fsid: u8, byte: u8) -> Handle {
        Handle {
            fsid: [fsid; record::FSID_LEN],
            handle_type: 1,
            bytes: vec![byte; 8],
        }
    }

    fn entry(dir: u8, name: &str) -> Option<(Handle, Vec<u8>)> {
        Some((handle(1, dir), name.as_bytes().to_vec()))
    }

    /// A write is named by the latest event to name its file this round: its create, or a
    /// rename after it; not by an event of another file or filesystem, and not when the file
    /// was given two names.
    #[test]
    fn a_written_file_is_named_by_its_latest_event_only_when_unambiguous() {
        let create = |file: u8, name: &str| NameEvent {
            mask: libc::FAN_CREATE,
            object: Some(handle(1, file)),
            entry: entry(100, name),
            ..NameEvent::default()
        };
        let events = vec![
            create(1, "a.csv"),
            NameEvent {
                mask: libc::FAN_RENAME,
                object: Some(handle(1, 1)),
                old_entry: entry(100, "a.csv"),
                new_entry: entry(100, "b.csv"),
                ..NameEvent::default()
            },
            create(2, "c.csv"),
            create(3, "d.csv"),
            // A hard link: the file has two names.
            create(3, "e.csv"),
            NameEvent {
                mask: libc::FAN_CREATE | libc::FAN_ONDIR,
                object: Some(handle(1, 4)),
                entry: entry(100, "dir"),
                ..NameEvent::default()
            },
        ];
        let mut named = NamedFiles::default();
        let name = |named: &mut NamedFiles, file: Handle, fsid: u8| {
            named
                .entry(&events, &file, [fsid; record::FSID_LEN])
                .map(|(_, name)| String::from_utf8(name.clone()).unwrap())
        };
        named.clear();
        assert_eq!(name(&mut named, handle(0, 1), 1).as_deref(), Some("b.csv"));
        assert_eq!(name(&mut named, handle(0, 2), 1).as_deref(), Some("c.csv"));
        assert_eq!(
            name(&mut named, handle(0, 2), 2),
            None,
            "another filesystem"
        );
        assert_eq!(name(&mut named, handle(0, 3), 1), None, "two names");
        assert_eq!(name(&mut named, handle(0, 4), 1), None, "a directory");
        assert_eq!(name(&mut named, handle(0, 5), 1), None, "never named");
        // A round's events arrive in several reads, and are indexed as they come.
        named.clear();
        let named_in = |named: &mut NamedFiles, upto: usize, file: u8| {
            named
                .entry(&events[..upto], &handle(0, file), [1; record::FSID_LEN])
                .map(|(_, name)| String::from_utf8(name.clone()).unwrap())
        };
        assert_eq!(named_in(&mut named, 1, 1).as_deref(), Some("a.csv"));
        assert_eq!(named_in(&mut named, 4, 3).as_deref(), Some("d.csv"));
        assert_eq!(named_in(&mut named, 5, 1).as_deref(), Some("b.csv"));
        assert_eq!(named_in(&mut named, 5, 3), None, "linked in a later read");
        let none: Vec<NameEvent> = Vec::new();
        named.clear();
        assert_eq!(
            named.entry(&none, &handle(0, 1), [1; record::FSID_LEN]),
            None
        );
    }
}
