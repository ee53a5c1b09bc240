//! The agent's durable spool: every rusqlite call of the agent goes through this module.
//!
//! An event is numbered, encoded, chained and committed here before anything tries to send it, and
//! leaves only when the collector has acknowledged its commit. The sequence counter and chain head
//! live in the same database and change in the same transaction as the events, so numbering survives
//! restarts and crashes without gaps or reuse. When the spool outgrows its bound the oldest events are
//! dropped and an `agent.dropped` event records how many and which: a loss is never silent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{AgentAction, AgentEvent, Event};
use rusqlite::{Connection, OptionalExtension, params};

mod lost;
use lost::{LostFile, Recorded};

pub const SPOOL_FILE: &str = "spool.db";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("spool: {source}")]
    Sql {
        #[from]
        source: rusqlite::Error,
    },
    #[error("spool: corrupt {key}")]
    Corrupt { key: &'static str },
    #[error("spool task failed")]
    TaskFailed,
    /// One run's columns do not read as the spool wrote them.
    #[error("spool: the run of events {first}..={last} is damaged: {detail}")]
    DamagedRun {
        first: u64,
        last: u64,
        detail: String,
    },
}

/// A run of spooled events ready to send, with the chain hashes around it: its events, or the
/// packed runs that hold them (see [`Spool::read_runs_to_send`]).
#[derive(Debug, Clone)]
pub struct Batch {
    pub first_seq: u64,
    pub last_seq: u64,
    pub prev_hash: Hash,
    pub head_hash: Hash,
    pub events: Vec<Vec<u8>>,
    /// Whole packed runs ([`bannin::runs`]), as kept; `events` is then empty.
    pub runs: Vec<Vec<u8>>,
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub bytes: u64,
    pub next_seq: u64,
    pub dropped_total: u64,
}

struct Inner {
    conn: Connection,
    next_seq: u64,
    head: Hash,
    bytes: u64,
    events: u64,
    dropped_total: u64,
    max_bytes: u64,
    host: String,
    /// Everything through here is committed at the collector, even where deleting it failed.
    acked: u64,
    /// The last event of the batch the sender is delivering, until the collector acknowledges
    /// it or the delivery fails (0: none). Shedding leaves that batch alone: dropping events on
    /// their way to the collector would report as lost events the collector then stores.
    sending_through: u64,
    /// Events lost before they could be numbered (a full disk with nothing left to drop, a spool
    /// that kept failing), not yet reported; recorded as `agent.dropped` by the next append that
    /// succeeds. The running total is kept durably in [`LostFile`].
    lost: Lost,
    reserve: Reserve,
    /// Bytes committed to the write-ahead log (packed runs, about) since it was last seen wholly
    /// moved into the database file (see [`Inner::settle_wal`]).
    unsettled: u64,
    /// The encoding of the last file event's process, for the next event that shares it.
    process_bytes: bannin::proto::ProcessBytes,
}

/// The count of events lost before they reached the spool.
struct Lost {
    /// Not yet reported.
    pending: u64,
    /// A damaged `spool.lost` left how many unknown: reported once as such.
    unknown: bool,
    /// Why the latest were lost.
    reason: String,
    /// Lost since the spool began; what `spool.lost` holds.
    total: u64,
    file: LostFile,
}

impl Lost {
    /// Reads `spool.lost` against what the spool's notices have already reported.
    fn restore(state_dir: &Path, reported: u64) -> Lost {
        let (file, recorded) = LostFile::open(state_dir);
        let mut lost = Lost {
            pending: 0,
            unknown: false,
            reason: String::new(),
            total: reported,
            file,
        };
        match recorded {
            Recorded::Total { total, reason } if total > reported => {
                lost.pending = total - reported;
                lost.total = total;
                lost.reason = reason;
                tracing::warn!(
                    lost = lost.pending,
                    reason = %lost.reason,
                    "events were lost before the agent restarted; reporting them"
                );
            }
            Recorded::Total { .. } => {}
            Recorded::Nothing => lost.file.ensure(reported, ""),
            Recorded::Damaged => {
                tracing::error!(
                    path = %lost.file.path().display(),
                    "the count of lost events is damaged; reporting an unknown number"
                );
                lost.unknown = true;
            }
        }
        lost
    }

    fn count(&mut self, count: u64, reason: &str) {
        self.pending += count;
        self.total += count;
        reason.clone_into(&mut self.reason);
        if let Err(error) = self.file.write(self.total, reason) {
            tracing::error!(
                %error,
                path = %self.file.path().display(),
                pending = self.pending,
                "cannot record the count of lost events durably; it is reported only if the agent runs until the spool can be written"
            );
        }
    }
}

/// Space held in a file beside the spool and given up when the disk fills, so the agent can still
/// checkpoint, drop its oldest events and record that it did. Even a delete needs room in the
/// write-ahead log, so a full disk with no reserve left could drop nothing: after each full-disk
/// episode the spool takes a reserve back before it keeps new events.
struct Reserve {
    path: PathBuf,
    /// Bytes held now; 0 when none.
    held: u64,
    /// When holding it again was last tried, so a still-full disk is not probed on every append.
    last_try: Option<std::time::Instant>,
}

impl Reserve {
    /// Takes the full reserve if the filesystem has plenty to spare (also to grow back one that a
    /// full disk left smaller).
    fn hold(&mut self) {
        if self.held >= RESERVE_BYTES || self.last_try.is_some_and(|t| t.elapsed() < RESERVE_RETRY)
        {
            return;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the spool works on its own blocking thread, outside the runtime's clock"
        )]
        let now = std::time::Instant::now();
        self.last_try = Some(now);
        if free_bytes(&self.path) >= RESERVE_BYTES * 4 {
            self.write(RESERVE_BYTES);
        }
    }

    /// After a full-disk episode: takes as much of the reserve as the free space allows while
    /// leaving [`RESERVE_HEADROOM`] for new events, if that is at least [`RESERVE_MIN`]. Whether a
    /// reserve is held afterwards.
    fn regain(&mut self) -> bool {
        if self.held == 0 {
            let free = free_bytes(&self.path);
            let size = free.saturating_sub(RESERVE_HEADROOM).min(RESERVE_BYTES);
            if size >= RESERVE_MIN {
                self.write(size);
            }
        }
        self.held > 0
    }

    /// Writes `size` real bytes (a sparse file would reserve nothing), in place of what is held.
    fn write(&mut self, size: u64) {
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&self.path)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            file.sync_all()
        })();
        match written {
            Ok(()) => self.held = size,
            Err(error) => {
                let _ = std::fs::remove_file(&self.path);
                self.held = 0;
                tracing::debug!(%error, "cannot hold the spool's disk reserve yet");
            }
        }
    }

    /// Gives the space back to the filesystem; whether there was any to give.
    fn release(&mut self) -> bool {
        let released = std::fs::remove_file(&self.path).is_ok();
        self.held = 0;
        self.last_try = None;
        released
    }
}

/// Free bytes on the filesystem holding `path` (0 when that cannot be read).
#[cfg(unix)]
// The field types differ between platforms (u32 on some), so the conversions are not useless.
#[allow(clippy::useless_conversion)]
fn free_bytes(path: &Path) -> u64 {
    let dir = path.parent().unwrap_or(path);
    nix::sys::statvfs::statvfs(dir)
        .map(|s| u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
        .unwrap_or(0)
}

#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> u64 {
    u64::MAX
}

/// The file beside `spool.db` that holds the disk reserve.
pub const RESERVE_FILE: &str = "spool.reserve";
/// Enough for a checkpoint of what the write-ahead log may hold when the disk fills (at most
/// [`SETTLE_BYTES`] and one transaction of about [`TXN_BYTES`], plus one event), the transaction
/// that drops the oldest events, and its notice.
const RESERVE_BYTES: u64 = 8 * 1024 * 1024;
/// The smallest reserve worth holding after a full disk: still room for a checkpoint of what the
/// write-ahead log may hold, a drop and its notice. Below it the oldest events are dropped for
/// room, so that on a disk that stays full new events are paid for with old ones, never with the
/// reserve (which would shrink episode by episode until no drop could be written).
const RESERVE_MIN: u64 = 6 * 1024 * 1024;
/// Left free for new events when a full disk allows only part of the reserve back.
const RESERVE_HEADROOM: u64 = 32 * 1024;
const RESERVE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the spool could not be written, as far as SQLite tells: what the agent does about it and
/// what it says depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No room: handled inside the spool by dropping the oldest events.
    DiskFull,
    /// Another process holds the database's write lock (past the busy timeout).
    Locked,
    /// The file or its filesystem refuses writes.
    ReadOnly,
    /// The disk reports input/output errors.
    Io,
    /// The database is damaged; it will not heal by itself.
    Corrupt,
    /// The files cannot be opened (permissions, a missing directory).
    CannotOpen,
    Other,
}

impl Failure {
    pub fn of(error: &SpoolError) -> Failure {
        use rusqlite::ErrorCode as C;
        let source = match error {
            SpoolError::Sql { source } | SpoolError::Open { source, .. } => source,
            SpoolError::Corrupt { .. } | SpoolError::DamagedRun { .. } => return Failure::Corrupt,
            SpoolError::TaskFailed => return Failure::Other,
        };
        let rusqlite::Error::SqliteFailure(e, _) = source else {
            return Failure::Other;
        };
        if e.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE {
            return Failure::DiskFull;
        }
        match e.code {
            C::DiskFull => Failure::DiskFull,
            C::DatabaseBusy | C::DatabaseLocked => Failure::Locked,
            C::ReadOnly => Failure::ReadOnly,
            C::SystemIoFailure => Failure::Io,
            C::DatabaseCorrupt | C::NotADatabase => Failure::Corrupt,
            C::CannotOpen | C::PermissionDenied => Failure::CannotOpen,
            _ => Failure::Other,
        }
    }

    /// What happened, as the log line and the `agent.dropped` notice say it.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::DiskFull => "the disk holding the state directory is full",
            Failure::Locked => "another process holds the spool's write lock",
            Failure::ReadOnly => "the spool or its filesystem is read-only",
            Failure::Io => "the disk holding the spool reports I/O errors",
            Failure::Corrupt => {
                "the spool database is corrupt (stop the agent, move spool.db aside, start it again)"
            }
            Failure::CannotOpen => "the spool's files cannot be opened",
            Failure::Other => "the spool cannot be written",
        }
    }
}

/// Whether SQLite failed because the filesystem is full.
fn is_disk_full(error: &SpoolError) -> bool {
    Failure::of(error) == Failure::DiskFull
}

/// Why an append drops the oldest events.
#[derive(Clone, Copy)]
enum Shed {
    /// The spool outgrew `max_bytes`.
    Bound,
    /// The disk is full: keep at most this many bytes of older events.
    DiskFull(u64),
}

/// Whether an event reports a loss: the spool sheds these last (see [`Inner::append`]).
fn is_notice(event: &Event) -> bool {
    matches!(event.kind(), "agent.dropped" | "sensor.overflow")
}

/// The most bytes of events one row of the spool holds. Events are kept in runs
/// ([`bannin::runs`]), one row for the consecutive events of one commit (a notice of loss always
/// alone): a row per event cost the agent more in SQLite's B-tree than encoding, chaining and
/// sending the event did. Small enough that cutting a run (a partial acknowledgement, a drop to
/// just under the bound) stays cheap.
const RUN_MAX_BYTES: usize = bannin::runs::RUN_BYTES;

/// About the most bytes of events one transaction commits: a larger append is committed in parts.
/// What a transaction adds sits in the write-ahead log until a checkpoint copies it into the
/// database file, which then grows; on a full disk that growth must come out of the disk reserve,
/// so it is kept well under [`RESERVE_BYTES`].
const TXN_BYTES: u64 = 4 * 1024 * 1024;

/// After this many bytes written to the write-ahead log (packed runs and a page each, see
/// [`ROW_OVERHEAD`]), the spool checkpoints itself rather than trusting
/// SQLite's automatic checkpoint, whose failure (a disk that filled meanwhile) goes unseen.
const SETTLE_BYTES: u64 = 512 * 1024;

/// Prefix of each event in a run's events, and of a packed run: a length, little-endian.
const LENGTH_PREFIX: usize = bannin::runs::LENGTH_PREFIX;

/// What a row adds to the write-ahead log besides its packed events, counted towards
/// [`SETTLE_BYTES`]: a page of the table's B-tree.
const ROW_OVERHEAD: u64 = 4096;

/// A run's length-prefixed events as the spool keeps them: compressed (LZ4's block format) behind
/// their length before compression. A burst's events repeat the same process and ancestry, most
/// of their bytes, so a packed run is a tenth of its events' size or less: a tenth to write to the
/// log, checkpoint into the database file and read back.
fn pack(plain: &[u8]) -> Vec<u8> {
    bannin::runs::pack(plain)
}

/// A run's length-prefixed events from its `events` column: unpacked when `packed` (runs written
/// before packing are kept as they are). A packed run that does not unpack, or says it holds more
/// than any run can, is corruption, found before anything is allocated for it.
fn plain_events(blob: &[u8], packed: bool) -> Result<std::borrow::Cow<'_, [u8]>, SpoolError> {
    if !packed {
        return Ok(std::borrow::Cow::Borrowed(blob));
    }
    bannin::runs::unpack(blob)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| SpoolError::Corrupt { key: "packed run" })
}

/// The events of a run's blob, in order. A malformed blob is corruption: the spool's own format.
fn unpack(blob: &[u8]) -> Result<Vec<&[u8]>, SpoolError> {
    bannin::runs::events(blob).map_err(|_| SpoolError::Corrupt { key: "run events" })
}

/// The chain hash after `events`, numbered from `first`, linked onto `prev`.
fn link_all(prev: Hash, first: u64, events: &[&[u8]]) -> Hash {
    events
        .iter()
        .zip(first..)
        .fold(prev, |head, (bytes, seq)| chain::link(&head, seq, bytes))
}

fn hash_column(bytes: &[u8], key: &'static str) -> Result<Hash, SpoolError> {
    chain::to_hash(bytes, key).map_err(|_| SpoolError::Corrupt { key })
}

/// A row of `runs` read as the spool wrote it: the chain hashes before and after the run, and its
/// events, as many as `first..=last` numbers. What the columns hold is not checked against the
/// hashes here (see [`check_run`]): reading for delivery would hash every event twice.
fn parse_run<'a>(
    first: u64,
    last: u64,
    prev: &[u8],
    head: &[u8],
    blob: &'a [u8],
) -> Result<(Hash, Hash, Vec<&'a [u8]>), SpoolError> {
    let prev = hash_column(prev, "prev hash")?;
    let head = hash_column(head, "hash")?;
    let events = unpack(blob)?;
    if last < first || events.len() as u64 != last - first + 1 {
        return Err(SpoolError::Corrupt { key: "run" });
    }
    Ok((prev, head, events))
}

/// What is wrong with a run the collector would refuse, if anything: its events do not chain to
/// its own head hash, or one does not decode, carries another number or exceeds the shared bound.
fn check_run(first: u64, prev: Hash, head: Hash, events: &[&[u8]]) -> Option<String> {
    if link_all(prev, first, events) != head {
        return Some("its events do not match its chain hash".to_string());
    }
    for (bytes, seq) in events.iter().zip(first..) {
        if bytes.len() > bannin::proto::limits::MAX_EVENT_BYTES {
            return Some(format!("event {seq} is larger than any event may be"));
        }
        match bannin::proto::decode_event(bytes) {
            Ok(event) if event.seq == seq => {}
            Ok(event) => return Some(format!("event {seq} says it is event {}", event.seq)),
            Err(error) => return Some(format!("event {seq} does not decode: {error}")),
        }
    }
    None
}

/// Makes `at` the first event of its run: a run holding events on both sides of it is cut in
/// two, each with its chain hashes, so that whole rows can then be dropped, held or removed.
fn split_at(conn: &Connection, at: u64) -> Result<(), SpoolError> {
    let row = conn
        .prepare_cached(
            "SELECT first_seq, last_seq, prev_hash, head_hash, events, packed FROM runs
             WHERE first_seq < ?1 ORDER BY first_seq DESC LIMIT 1",
        )?
        .query_row([at as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })
        .optional()?;
    let Some((first, last, prev, head, blob, packed)) = row else {
        return Ok(());
    };
    if last < at {
        return Ok(());
    }
    let blob = plain_events(&blob, packed)?;
    let events = unpack(&blob)?;
    let before = usize::try_from(at - first).map_err(|_| SpoolError::Corrupt { key: "run" })?;
    if events.len() != (last - first + 1) as usize || before >= events.len() {
        return Err(SpoolError::Corrupt { key: "run" });
    }
    let mid = link_all(hash_column(&prev, "prev hash")?, first, &events[..before]);
    let size_before: usize = events[..before].iter().map(|e| e.len()).sum();
    let cut = size_before + before * LENGTH_PREFIX;
    let size_after: usize = events[before..].iter().map(|e| e.len()).sum();
    conn.prepare_cached(
        "UPDATE runs SET last_seq = ?2, head_hash = ?3, size = ?4, events = ?5, packed = 1
         WHERE first_seq = ?1",
    )?
    .execute(params![
        first as i64,
        (at - 1) as i64,
        mid.as_slice(),
        size_before as i64,
        pack(&blob[..cut])
    ])?;
    conn.prepare_cached(
        "INSERT INTO runs (first_seq, last_seq, prev_hash, head_hash, size, events, notice, packed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 1)",
    )?
    .execute(params![
        at as i64,
        last as i64,
        mid.as_slice(),
        head,
        size_after as i64,
        pack(&blob[cut..])
    ])?;
    Ok(())
}

/// Events of this transaction not yet written: one run.
struct Pending {
    first_seq: u64,
    prev: Hash,
    size: u64,
    blob: Vec<u8>,
}

/// How many damaged runs one read may remove before it reports the damage as its error.
const MAX_DAMAGED_PER_READ: usize = 16;

/// Between the reason and the count in the message of a notice of a drop.
const DROPPED_SUFFIX: &str = "; the oldest ";

/// The range a notice of a drop names, and the reason its message gives: `None` for any other
/// event, including notices of events lost before they were spooled, which name no range.
fn dropped_range(event: &Event) -> Option<(u64, u64, String)> {
    let bannin::event::Body::Agent(agent) = &event.body else {
        return None;
    };
    let (first, last) = (agent.first_dropped_seq, agent.last_dropped_seq);
    if agent.action != AgentAction::Dropped || first == 0 || last < first {
        return None;
    }
    if agent.dropped != last - first + 1 {
        return None;
    }
    let reason = agent.message.split(DROPPED_SUFFIX).next()?;
    Some((first, last, reason.to_string()))
}

/// Numbers and chains events as they are inserted within one transaction, gathering consecutive
/// events into runs (see [`RUN_MAX_BYTES`]).
struct Appender {
    next_seq: u64,
    head: Hash,
    added_bytes: u64,
    added: u64,
    /// What the rows written so far add to the write-ahead log, about (see [`ROW_OVERHEAD`]).
    written_bytes: u64,
    run: Option<Pending>,
    process_bytes: bannin::proto::ProcessBytes,
}

impl Appender {
    fn put(
        &mut self,
        insert: &mut rusqlite::CachedStatement<'_>,
        event: &mut Event,
    ) -> Result<(), rusqlite::Error> {
        let notice = is_notice(event);
        if notice {
            self.flush(insert, false)?;
        }
        event.seq = self.next_seq;
        let run = self.run.get_or_insert_with(|| Pending {
            first_seq: self.next_seq,
            prev: self.head,
            size: 0,
            blob: Vec::with_capacity(RUN_MAX_BYTES + RUN_MAX_BYTES / 8),
        });
        // Encoded straight into the run, behind its length once that is known. The collector
        // refuses events beyond the shared bounds; they are cut here so none is stuck.
        let at = run.blob.len();
        run.blob.extend_from_slice(&[0; LENGTH_PREFIX]);
        bannin::proto::fit_and_encode_into(event, &mut self.process_bytes, &mut run.blob);
        let bytes = &run.blob[at + LENGTH_PREFIX..];
        let length = bytes.len();
        self.head = chain::link(&self.head, self.next_seq, bytes);
        run.blob[at..at + LENGTH_PREFIX].copy_from_slice(&(length as u32).to_le_bytes());
        run.size += length as u64;
        let full = run.blob.len() >= RUN_MAX_BYTES;
        self.added_bytes += length as u64;
        self.added += 1;
        self.next_seq += 1;
        if notice || full {
            self.flush(insert, notice)?;
        }
        Ok(())
    }

    /// Writes the pending run, if any, as one row.
    fn flush(
        &mut self,
        insert: &mut rusqlite::CachedStatement<'_>,
        notice: bool,
    ) -> Result<(), rusqlite::Error> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        let packed = pack(&run.blob);
        self.written_bytes += packed.len() as u64 + ROW_OVERHEAD;
        insert.execute(params![
            run.first_seq as i64,
            (self.next_seq - 1) as i64,
            run.prev.as_slice(),
            self.head.as_slice(),
            run.size as i64,
            packed,
            notice
        ])?;
        Ok(())
    }
}

impl Inner {
    /// Numbers, chains and commits `events`, one transaction per [`TXN_BYTES`] or so, each
    /// shedding as `shed` says. Returns how many of them were committed, and the last sequence
    /// number or the error that stopped the rest.
    fn append(&mut self, events: &mut [Event], shed: Shed) -> (usize, Result<u64, SpoolError>) {
        let mut done = 0;
        loop {
            match self.append_removing(&mut events[done..], shed, None) {
                Ok((last, taken)) => {
                    done += taken;
                    if done == events.len() {
                        return (done, Ok(last));
                    }
                }
                Err(error) => return (done, Err(error)),
            }
        }
    }

    /// One transaction of [`Self::append`]: the first of `events`, and as many more as fit in
    /// [`TXN_BYTES`], removing in the same transaction the run that begins at `remove`. Returns
    /// the last sequence number and how many events it took.
    fn append_removing(
        &mut self,
        events: &mut [Event],
        shed: Shed,
        remove: Option<u64>,
    ) -> Result<(u64, usize), SpoolError> {
        let inner = self;
        let tx = inner.conn.transaction()?;
        let mut chain = Appender {
            next_seq: inner.next_seq,
            head: inner.head,
            added_bytes: 0,
            added: 0,
            written_bytes: 0,
            run: None,
            process_bytes: std::mem::take(&mut inner.process_bytes),
        };
        let first_new = inner.next_seq;
        let mut taken = 0;
        let (mut freed_bytes, mut freed_events) = (0u64, 0u64);
        let mut dropped_total = inner.dropped_total;
        let lost = inner.lost.pending;
        let lost_unknown = inner.lost.unknown;
        // Logged only once the transaction holding the drop has committed.
        let mut shed_reports = Vec::new();
        if let Some(first) = remove {
            let (count, size): (i64, i64) = tx.query_row(
                "SELECT last_seq - first_seq + 1, size FROM runs WHERE first_seq = ?1",
                [first as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute("DELETE FROM runs WHERE first_seq = ?1", [first as i64])?;
            freed_events += count.max(0) as u64;
            freed_bytes += size.max(0) as u64;
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO runs (first_seq, last_seq, prev_hash, head_hash, size, events, notice, packed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1)",
            )?;
            for event in events.iter_mut() {
                if chain.added_bytes >= TXN_BYTES {
                    break;
                }
                chain.put(&mut insert, event)?;
                taken += 1;
            }
            if lost > 0 {
                let mut notice = AgentEvent::new(AgentAction::Dropped);
                notice.dropped = lost;
                notice.message = format!(
                    "{lost} events were lost before they could be spooled: {}",
                    inner.lost.reason
                );
                chain.put(&mut insert, &mut Event::now(inner.host.clone(), notice))?;
                dropped_total += lost;
            }
            if lost_unknown {
                let mut notice = AgentEvent::new(AgentAction::Dropped);
                notice.message = format!(
                    "an unknown number of events may have been lost before they could be spooled: the count in {} was damaged",
                    inner.lost.file.path().display()
                );
                chain.put(&mut insert, &mut Event::now(inner.host.clone(), notice))?;
            }
            // Events the collector already committed go first and are no loss.
            let keep = match shed {
                Shed::Bound => inner.max_bytes / 10 * 9,
                Shed::DiskFull(keep) => keep,
            };
            let total = inner.bytes + chain.added_bytes;
            let over = match shed {
                Shed::Bound => total > inner.max_bytes,
                Shed::DiskFull(_) => true,
            };
            if over {
                split_at(&tx, inner.acked + 1)?;
                let (acked_events, acked_bytes): (i64, i64) = tx.query_row(
                    "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(SUM(size), 0)
                     FROM runs WHERE first_seq <= ?1",
                    [inner.acked as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if acked_events > 0 {
                    tx.execute(
                        "DELETE FROM runs WHERE first_seq <= ?1",
                        [inner.acked as i64],
                    )?;
                    freed_events += acked_events as u64;
                    freed_bytes += acked_bytes as u64;
                }
                let mut excess = total.saturating_sub(freed_bytes).saturating_sub(keep);
                // Oldest first, in runs of consecutive events (holding back a batch being
                // delivered leaves a hole after it, and every notice names one run, so that its
                // count is its range); never the events this very call adds, nor the batch being
                // delivered: the bound may be exceeded by that one batch until its delivery
                // settles. Earlier notices of loss met on the way are not lost with the run: each
                // is written again at the end (a copy, with its count and range), so the count of
                // events lost before they could be spooled still arrives and no range goes
                // unexplained, and it frees nothing. Only a spool at its bound that holds nearly
                // nothing else gives up its oldest notices, so that the bound still holds.
                // Rows are dropped whole; the last one is cut first where only part of it need go.
                split_at(&tx, inner.sending_through + 1)?;
                let mut runs: Vec<(u64, u64)> = Vec::new();
                // (seq, length) of each notice in the runs, oldest first.
                let mut moving: Vec<(u64, u64)> = Vec::new();
                // The last row met, when dropping all of it would free more than needed.
                let mut partial: Option<(u64, u64)> = None;
                {
                    let mut rows = tx.prepare_cached(
                        "SELECT first_seq, last_seq, size, notice FROM runs
                         WHERE first_seq > ?1 AND first_seq < ?2 ORDER BY first_seq",
                    )?;
                    let mut iter = rows.query([inner.sending_through as i64, first_new as i64])?;
                    while excess > 0 {
                        let Some(row) = iter.next()? else { break };
                        let first = row.get::<_, i64>(0)? as u64;
                        let last = row.get::<_, i64>(1)? as u64;
                        let size = row.get::<_, i64>(2)? as u64;
                        if row.get::<_, bool>(3)? {
                            moving.push((first, size));
                        } else if size > excess && last > first {
                            partial = Some((first, excess));
                            break;
                        } else {
                            excess = excess.saturating_sub(size);
                        }
                        match runs.last_mut() {
                            Some((_, end)) if *end + 1 == first => *end = last,
                            _ => runs.push((first, last)),
                        }
                        freed_bytes += size;
                    }
                }
                if let Some((first, need)) = partial {
                    // Enough of the row's oldest events to free `need` bytes, then the cut.
                    let (blob, packed): (Vec<u8>, bool) = tx
                        .prepare_cached("SELECT events, packed FROM runs WHERE first_seq = ?1")?
                        .query_row([first as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    let blob = plain_events(&blob, packed)?;
                    let mut taken = 0u64;
                    let mut count = 0u64;
                    for event in unpack(&blob)? {
                        if taken >= need {
                            break;
                        }
                        taken += event.len() as u64;
                        count += 1;
                    }
                    split_at(&tx, first + count)?;
                    let last = first + count - 1;
                    match runs.last_mut() {
                        Some((_, end)) if *end + 1 == first => *end = last,
                        _ => runs.push((first, last)),
                    }
                    freed_bytes += taken;
                    excess = excess.saturating_sub(taken);
                }
                // Notices that touch are merged below, so they stay few; only where they alone
                // hold more than a tenth of the bound (a spool at its bound for a long outage, with
                // holes no merge can close) are the oldest given up, so that the bound still holds.
                // New events the spool cannot shed are no reason to: that frees next to nothing
                // and would lose the counts.
                if matches!(shed, Shed::Bound) {
                    let mut notice_bytes: u64 = moving.iter().map(|&(_, len)| len).sum();
                    let given_up = moving
                        .iter()
                        .take_while(|&&(_, len)| {
                            let more = excess > 0 && notice_bytes > inner.max_bytes / 10;
                            excess = excess.saturating_sub(len);
                            notice_bytes = notice_bytes.saturating_sub(len);
                            more
                        })
                        .count();
                    if given_up > 0 {
                        tracing::warn!(
                            notices = given_up,
                            "spool full: gave up its oldest notices of loss to stay within its bound"
                        );
                    }
                    moving.drain(..given_up);
                }
                let mut copies = Vec::with_capacity(moving.len());
                for (seq, _) in moving {
                    let (blob, packed): (Vec<u8>, bool) = tx
                        .prepare_cached("SELECT events, packed FROM runs WHERE first_seq = ?1")?
                        .query_row([seq as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    let decoded = plain_events(&blob, packed)
                        .ok()
                        .and_then(|blob| {
                            unpack(&blob)
                                .ok()
                                .and_then(|events| match events.as_slice() {
                                    [one] => Some(
                                        bannin::proto::decode_event(one).map_err(|e| e.to_string()),
                                    ),
                                    _ => None,
                                })
                        })
                        .unwrap_or_else(|| Err("not a single event".to_string()));
                    match decoded {
                        Ok(event) => copies.push(event),
                        Err(error) => {
                            tracing::warn!(seq, %error, "a spooled notice of loss does not decode; dropped with its run");
                        }
                    }
                }
                let why = match shed {
                    Shed::Bound => format!("spool reached its bound of {} bytes", inner.max_bytes),
                    Shed::DiskFull(_) => "the disk holding the state directory is full".to_string(),
                };
                // The dropped ranges, this drop's and the moved notices', merged where they touch
                // and share a reason: one notice then names the whole range, and the count stays.
                let mut ranges: Vec<(u64, u64, String)> = Vec::new();
                for &(first, last) in &runs {
                    let count = last - first + 1;
                    tx.execute(
                        "DELETE FROM runs WHERE first_seq BETWEEN ?1 AND ?2",
                        [first as i64, last as i64],
                    )?;
                    freed_events += count;
                    dropped_total += count;
                    shed_reports.push((count, first, last, why.clone()));
                    ranges.push((first, last, why.clone()));
                }
                let mut others = Vec::new();
                for copy in copies {
                    match dropped_range(&copy) {
                        Some(range) => ranges.push(range),
                        None => others.push(copy),
                    }
                }
                ranges.sort_by_key(|&(first, _, _)| first);
                let mut merged: Vec<(u64, u64, String)> = Vec::with_capacity(ranges.len());
                for (first, last, reason) in ranges {
                    match merged.last_mut() {
                        Some((_, end, same)) if *end + 1 == first && *same == reason => *end = last,
                        _ => merged.push((first, last, reason)),
                    }
                }
                for (first, last, reason) in merged {
                    let count = last - first + 1;
                    let mut notice = AgentEvent::new(AgentAction::Dropped);
                    notice.dropped = count;
                    notice.first_dropped_seq = first;
                    notice.last_dropped_seq = last;
                    notice.message = format!("{reason}{DROPPED_SUFFIX}{count} events were dropped");
                    chain.put(&mut insert, &mut Event::now(inner.host.clone(), notice))?;
                }
                for mut copy in others {
                    chain.put(&mut insert, &mut copy)?;
                }
            }
            chain.flush(&mut insert, false)?;
        }
        // Cached: every commit writes these, and parsing the statement cost as much as running it.
        let meta = |key: &str, value: &[u8]| {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])
        };
        meta("next_seq", &chain.next_seq.to_be_bytes())?;
        meta("head", &chain.head)?;
        meta("dropped_total", &dropped_total.to_be_bytes())?;
        if lost > 0 || lost_unknown {
            meta("lost_reported", &inner.lost.total.to_be_bytes())?;
        }
        tx.commit()?;
        inner.process_bytes = chain.process_bytes;
        inner.next_seq = chain.next_seq;
        inner.head = chain.head;
        inner.bytes = (inner.bytes + chain.added_bytes).saturating_sub(freed_bytes);
        inner.events = (inner.events + chain.added).saturating_sub(freed_events);
        inner.dropped_total = dropped_total;
        inner.lost.pending = 0;
        if lost_unknown {
            inner.lost.unknown = false;
            // Only now that the notice is committed may the damaged record go.
            let (total, reason) = (inner.lost.total, inner.lost.reason.clone());
            if let Err(error) = inner.lost.file.write(total, &reason) {
                tracing::error!(%error, "cannot rewrite the damaged count of lost events");
            }
        }
        for (count, first, last, why) in shed_reports {
            tracing::warn!(dropped = count, first, last, reason = %why, "spool full: dropped the oldest events");
        }
        inner.unsettled += chain.written_bytes;
        inner.settle_wal();
        Ok((chain.next_seq - 1, taken))
    }

    /// Checkpoints once [`SETTLE_BYTES`] were written to the write-ahead log since it was
    /// last moved wholly into the database file, so that what the log holds beyond that file
    /// stays within what the disk reserve can absorb. A checkpoint that fails for want of space
    /// (the disk filled since the commit) is a full-disk episode like a failed append: the
    /// reserve is given up, the checkpoint tried again, and a reserve taken back (dropping the
    /// oldest events if need be) before new events may use the space. Otherwise the log would go
    /// on growing past what a checkpoint on a full disk can ever move, or new events would spend
    /// the reserve, and no drop of the oldest events could then be written.
    fn settle_wal(&mut self) {
        if self.unsettled < SETTLE_BYTES {
            return;
        }
        let passive = |conn: &Connection| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        let full = |result: &Result<(i64, i64), rusqlite::Error>| matches!(result, Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull));
        let mut result = passive(&self.conn);
        let episode = full(&result);
        if episode {
            let released = self.reserve.release();
            tracing::warn!(
                released_reserve = released,
                "the disk holding the spool is full: its reserve was given up so that the write-ahead log could be checkpointed"
            );
            result = passive(&self.conn);
        }
        match result {
            Ok((log, moved)) if moved >= log => {
                self.unsettled = 0;
                if episode {
                    self.regain_reserve();
                }
            }
            // A reader holds part of the log: tried again after the next commit.
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "spool checkpoint failed"),
        }
    }

    /// Removes a damaged run and records its loss: an `agent.dropped` naming its range, spooled
    /// in the same transaction as the removal (a crash leaves the run or the notice, never a
    /// silent gap), or, where that notice cannot be written, a count reported by the next append
    /// that succeeds.
    fn drop_damaged(&mut self, first: u64, last: u64, detail: &str) -> Result<(), SpoolError> {
        let count = last.saturating_sub(first) + 1;
        let reason = format!("events in the spool were damaged ({detail})");
        tracing::error!(first, last, dropped = count, %detail, "the spool held damaged events: dropped, and reported as agent.dropped");
        let mut notice = AgentEvent::new(AgentAction::Dropped);
        notice.dropped = count;
        notice.first_dropped_seq = first;
        notice.last_dropped_seq = last;
        notice.message = format!("{reason}{DROPPED_SUFFIX}{count} events were dropped");
        let mut notice = [Event::now(self.host.clone(), notice)];
        // Committed with the notice, which is what reports them.
        self.dropped_total += count;
        let Err(error) = self.append_removing(&mut notice, Shed::Bound, Some(first)) else {
            return Ok(());
        };
        self.dropped_total -= count;
        tracing::error!(%error, "cannot spool the notice of the damaged events; counting them as lost");
        let size: u64 = self
            .conn
            .query_row(
                "SELECT size FROM runs WHERE first_seq = ?1",
                [first as i64],
                |r| r.get::<_, i64>(0),
            )
            .map_or(0, |size| size.max(0) as u64);
        self.conn
            .execute("DELETE FROM runs WHERE first_seq = ?1", [first as i64])?;
        self.events = self.events.saturating_sub(count);
        self.bytes = self.bytes.saturating_sub(size);
        self.lost.count(count, &reason);
        Ok(())
    }

    /// The runs holding any of `first..=last` that the collector would refuse, with why: read
    /// whole, hashed again and decoded, and each checked to continue the chain from the run or
    /// the acknowledged head just before it.
    fn damaged_runs(&self, first: u64, last: u64) -> Result<Vec<(u64, u64, String)>, SpoolError> {
        let witness: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'witness'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        // The head just before the next run: the acknowledged one, then each run's own.
        let mut before: Option<(u64, Hash)> = witness.and_then(|value| {
            let (seq, hash) = value.split_at_checked(8)?;
            Some((
                u64::from_be_bytes(seq.try_into().ok()?),
                chain::to_hash(hash, "witness").ok()?,
            ))
        });
        let mut damaged = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_seq, last_seq, prev_hash, head_hash, events, packed FROM runs
             WHERE last_seq >= ?1 AND first_seq <= ?2 ORDER BY first_seq",
        )?;
        let mut rows = stmt.query([first as i64, last as i64])?;
        while let Some(row) = rows.next()? {
            let (run_first, run_last) =
                (row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
            let blob = |at: usize| {
                row.get_ref(at)
                    .ok()
                    .and_then(|v| v.as_blob().ok())
                    .unwrap_or(&[])
            };
            let plain = plain_events(blob(4), row.get::<_, bool>(5)?);
            let parsed = plain.and_then(|plain| {
                let (prev, head, events) =
                    parse_run(run_first, run_last, blob(2), blob(3), &plain)?;
                Ok((prev, head, check_run(run_first, prev, head, &events)))
            });
            let verdict = match parsed {
                Err(error) => Err(error.to_string()),
                Ok((prev, _, _))
                    if before.is_some_and(|(seq, hash)| seq + 1 == run_first && hash != prev) =>
                {
                    Err("its chain does not continue from the events before it".to_string())
                }
                Ok((_, head, checked)) => checked.map_or(Ok(head), Err),
            };
            match verdict {
                Ok(head) => before = Some((run_last, head)),
                Err(detail) => damaged.push((run_first, run_last, detail)),
            }
        }
        Ok(damaged)
    }

    /// [`Self::append`] after it failed for want of disk space.
    /// Adds to `consumed` each of `events` it commits or counts as lost.
    fn append_on_full_disk(
        &mut self,
        events: &mut [Event],
        error: SpoolError,
        consumed: &mut usize,
    ) -> Result<u64, SpoolError> {
        let released = self.reserve.release();
        tracing::warn!(%error, released_reserve = released, "the disk holding the spool is full");
        self.checkpoint();
        let result = self.fit(events, consumed);
        self.regain_reserve();
        result
    }

    /// Takes a disk reserve back after [`Self::fit`] spent it, dropping the oldest events (half,
    /// then all) if that is what it takes: without a reserve the next full disk could drop nothing
    /// and every later event would be lost, which costs more than the oldest events do.
    fn regain_reserve(&mut self) {
        for keep in [self.bytes / 2, 0] {
            if self.reserve.regain() || self.events == 0 {
                return;
            }
            match self.append(&mut [], Shed::DiskFull(keep)).1 {
                Ok(_) => self.give_back(),
                Err(error) => {
                    tracing::debug!(%error, "cannot drop events to hold a disk reserve again");
                    return;
                }
            }
        }
        self.reserve.regain();
    }

    /// Returns the space of dropped events to the filesystem.
    fn give_back(&self) {
        self.checkpoint();
        if let Err(error) = self.conn.execute_batch("PRAGMA incremental_vacuum") {
            tracing::debug!(%error, "spool vacuum failed");
        }
        self.checkpoint();
    }

    /// Appends as many of `events` as the disk can hold, newest kept: first as they are, then
    /// dropping half and then all of the older events, then in halves (the second half may drop
    /// the first). An event that fits nowhere is counted as lost.
    /// Adds to `consumed` each of `events` it commits or counts as lost, so that a caller whose
    /// call fails knows which of them are settled.
    fn fit(&mut self, events: &mut [Event], consumed: &mut usize) -> Result<u64, SpoolError> {
        // Like a full spool: the oldest go, so the space they held comes back (vacuum below).
        let mut done = 0;
        for shed in [Shed::DiskFull(self.bytes / 2), Shed::DiskFull(0)] {
            let (taken, result) = self.append(&mut events[done..], shed);
            done += taken;
            *consumed += taken;
            match result {
                Ok(last) => {
                    // So the next appends have room again.
                    self.give_back();
                    return Ok(last);
                }
                Err(error) if is_disk_full(&error) => continue,
                Err(error) => return Err(error),
            }
        }
        let events = &mut events[done..];
        if events.len() > 1 {
            let (older, newer) = events.split_at_mut(events.len() / 2);
            self.fit(older, consumed)?;
            return self.fit(newer, consumed);
        }
        self.lost
            .count(events.len() as u64, Failure::DiskFull.reason());
        *consumed += events.len();
        tracing::error!(
            lost = self.lost.pending,
            lost_total = self.lost.total,
            "the disk holding the spool is full and nothing is left to drop; events are lost until space returns"
        );
        Ok(self.next_seq.saturating_sub(1))
    }

    /// Moves the write-ahead log into the database file and truncates it; best effort.
    fn checkpoint(&self) {
        if let Err(error) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!(%error, "spool checkpoint failed");
        }
    }
}

/// Moves the events of a spool written before runs (a table `spool`, one row per event, with or
/// without the `notice` column) into `runs`, one run each, in one transaction.
fn from_rows_to_runs(conn: &Connection) -> Result<(), rusqlite::Error> {
    let old: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'spool'",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let notice = if conn.prepare("SELECT notice FROM spool LIMIT 0").is_ok() {
        "notice"
    } else {
        // Notices were not known then: they shed like any event.
        "0"
    };
    let tx = conn.unchecked_transaction()?;
    let mut moved = 0u64;
    {
        let mut rows = tx.prepare(&format!(
            "SELECT seq, prev_hash, hash, bytes, {notice} FROM spool ORDER BY seq"
        ))?;
        let mut insert = tx.prepare(
            "INSERT INTO runs (first_seq, last_seq, prev_hash, head_hash, size, events, notice)
             VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut iter = rows.query([])?;
        while let Some(row) = iter.next()? {
            let bytes: Vec<u8> = row.get(3)?;
            let mut blob = Vec::with_capacity(LENGTH_PREFIX + bytes.len());
            bannin::runs::push(&mut blob, &bytes);
            insert.execute(params![
                row.get::<_, i64>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, Vec<u8>>(2)?,
                bytes.len() as i64,
                blob,
                row.get::<_, bool>(4)?
            ])?;
            moved += 1;
        }
    }
    tx.execute_batch("DROP TABLE spool")?;
    tx.commit()?;
    tracing::info!(events = moved, "moved the spool's events into runs");
    Ok(())
}

/// Gives a spool made before incremental vacuum was set (SQLite applies `auto_vacuum` only to new
/// files, or through `VACUUM`) the same ability to return dropped events' space to a full disk.
/// `VACUUM` writes a copy of the whole database through the write-ahead log, so it runs only when
/// the disk has room for twice the spool; otherwise the next start tries again.
fn convert_to_incremental_vacuum(conn: &Connection, path: &Path) {
    let mode: i64 = match conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)) {
        Ok(mode) => mode,
        Err(error) => {
            tracing::warn!(%error, "cannot read the spool's vacuum mode");
            return;
        }
    };
    // 2 is INCREMENTAL.
    if mode == 2 {
        return;
    }
    let size = std::fs::metadata(path).map_or(0, |m| m.len())
        + std::fs::metadata(path.with_extension("db-wal")).map_or(0, |m| m.len());
    let needed = size.saturating_mul(2).saturating_add(RESERVE_BYTES);
    let free = free_bytes(path);
    if free < needed {
        tracing::warn!(
            size,
            free,
            needed,
            "the spool lacks incremental vacuum and the disk has no room to convert it now; trying again at the next start"
        );
        return;
    }
    let converted = conn
        .execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
        .and_then(|()| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        .and_then(|()| conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0)));
    match converted {
        Ok(2) => tracing::info!(size, "converted the spool to incremental vacuum"),
        Ok(mode) => tracing::warn!(mode, "the spool's vacuum mode did not change"),
        Err(error) => tracing::warn!(%error, "cannot convert the spool to incremental vacuum"),
    }
}

/// A cheap handle; the connection sits behind a mutex and is only touched from blocking threads.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Mutex<Inner>>,
}

impl Spool {
    pub fn open(state_dir: &Path, max_bytes: u64, host: &str) -> Result<Spool, SpoolError> {
        let path = state_dir.join(SPOOL_FILE);
        let open = |source| SpoolError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open)?;
        // NORMAL in WAL mode survives a crash of the agent process; a power cut may lose the last
        // transactions, which the collector then sees as a gap rather than as silent loss. A small
        // write-ahead log (checkpointed every 64 pages, cut back to 1 MiB) and incremental vacuum
        // (new spools) keep the spool's disk use close to its contents, so that on a full disk
        // dropping the oldest events gives space back to the filesystem. The spool is written at
        // one end and read and emptied at the other, so a 512 KiB page cache (SQLite's default
        // is 2 MiB) holds what is touched and keeps the idle agent small.
        conn.execute_batch(
            "PRAGMA busy_timeout=10000; PRAGMA auto_vacuum=INCREMENTAL; PRAGMA cache_size=-512;
             PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             PRAGMA wal_autocheckpoint=64; PRAGMA journal_size_limit=1048576;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS runs (
                 first_seq INTEGER PRIMARY KEY,
                 last_seq INTEGER NOT NULL,
                 prev_hash BLOB NOT NULL,
                 head_hash BLOB NOT NULL,
                 size INTEGER NOT NULL,
                 events BLOB NOT NULL,
                 notice INTEGER NOT NULL DEFAULT 0,
                 packed INTEGER NOT NULL DEFAULT 0
             );",
        )
        .map_err(open)?;
        // Runs written before packing keep their plain events.
        if conn.prepare("SELECT packed FROM runs LIMIT 0").is_err() {
            conn.execute_batch("ALTER TABLE runs ADD COLUMN packed INTEGER NOT NULL DEFAULT 0")
                .map_err(open)?;
        }
        from_rows_to_runs(&conn).map_err(open)?;
        convert_to_incremental_vacuum(&conn, &path);
        let meta = |key: &'static str| -> Result<Option<Vec<u8>>, SpoolError> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        let next_seq = match meta("next_seq")? {
            Some(v) => u64::from_be_bytes(
                v.try_into()
                    .map_err(|_| SpoolError::Corrupt { key: "next_seq" })?,
            ),
            None => 1,
        };
        let head = match meta("head")? {
            Some(v) => {
                chain::to_hash(&v, "head").map_err(|_| SpoolError::Corrupt { key: "head" })?
            }
            None => GENESIS,
        };
        let dropped_total = match meta("dropped_total")? {
            Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| SpoolError::Corrupt {
                key: "dropped_total",
            })?),
            None => 0,
        };
        let lost_reported = match meta("lost_reported")? {
            Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| SpoolError::Corrupt {
                key: "lost_reported",
            })?),
            None => 0,
        };
        let (events, bytes): (i64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(SUM(size), 0) FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let lost = Lost::restore(state_dir, lost_reported);
        Ok(Spool {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                next_seq,
                head,
                bytes: bytes as u64,
                events: events as u64,
                dropped_total,
                max_bytes,
                host: host.to_string(),
                acked: 0,
                sending_through: 0,
                lost,
                unsettled: 0,
                process_bytes: Default::default(),
                reserve: {
                    let mut reserve = Reserve {
                        path: state_dir.join(RESERVE_FILE),
                        held: 0,
                        last_try: None,
                    };
                    reserve.held = std::fs::metadata(&reserve.path).map_or(0, |m| m.len());
                    reserve.hold();
                    reserve
                },
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers, chains and commits `events`, in one transaction per [`TXN_BYTES`] or so. Returns
    /// the last sequence number.
    ///
    /// When the disk is full the spool behaves as if it had reached its bound: it gives up its
    /// disk reserve, checkpoints, and drops its oldest events (recording `agent.dropped` with the
    /// range) until the new ones fit. If nothing is left to drop, the new events are counted as
    /// lost and recorded by the next append that succeeds. Either way the call returns, so the
    /// agent keeps going and recovers by itself when space returns.
    ///
    /// Also tells how many of `events`, from the first, are settled (committed, or counted as
    /// lost) when it fails: a large append commits in parts, and an error after some of them
    /// leaves those in the spool, not to be written again.
    pub fn append_settling(&self, events: &mut [Event]) -> (usize, Result<u64, SpoolError>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (mut done, result) = inner.append(events, Shed::Bound);
        let result = match result {
            Err(error) if is_disk_full(&error) => {
                inner.append_on_full_disk(&mut events[done..], error, &mut done)
            }
            other => other,
        };
        if result.is_ok() {
            inner.reserve.hold();
            let (total, reason) = (inner.lost.total, &inner.lost.reason);
            inner.lost.file.ensure(total, reason);
        }
        (done, result)
    }

    /// [`Self::append_settling`] where nothing fails part-way.
    #[cfg(test)]
    pub fn append(&self, events: &mut [Event]) -> Result<u64, SpoolError> {
        self.append_settling(events).1
    }

    /// Counts `count` events that could not be spooled (durably, in `spool.lost`), to be recorded
    /// as `agent.dropped` by the next append that succeeds. Returns how many are not reported
    /// yet and how many were lost in all.
    pub fn record_lost(&self, count: u64, reason: &str) -> (u64, u64) {
        let mut inner = self.lock();
        inner.lost.count(count, reason);
        (inner.lost.pending, inner.lost.total)
    }

    /// [`Self::read_batch`] for delivery: the batch is kept from shedding until [`Self::ack`] or
    /// [`Self::release`]. Reading and holding happen under one lock, so no append can drop the
    /// batch's events in between.
    pub fn read_batch_to_send(
        &self,
        after_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, SpoolError> {
        let mut inner = self.lock();
        // A damaged run would otherwise stop the stream for good at that point: it goes, named
        // by a notice, and reading goes on (a bounded number of times per call).
        let mut damaged = 0;
        let batch = loop {
            match Self::read(&inner, after_seq, max_events, max_bytes) {
                Err(SpoolError::DamagedRun {
                    first,
                    last,
                    detail,
                }) if damaged < MAX_DAMAGED_PER_READ => {
                    damaged += 1;
                    inner.drop_damaged(first, last, &detail)?;
                }
                other => break other?,
            }
        };
        inner.sending_through = batch.as_ref().map_or(0, |b| b.last_seq);
        Ok(batch)
    }

    /// [`Self::read_batch_to_send`] for a collector that takes packed runs: where the events after
    /// `after_seq` begin a packed run, the batch is that run and the whole packed runs after it
    /// that fit `max_events` and `max_bytes` (of events, unpacked), sent as kept, with neither
    /// unpacking nor hashing here. Otherwise (a run to cut, one kept before packing) the events.
    pub fn read_runs_to_send(
        &self,
        after_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, SpoolError> {
        let mut inner = self.lock();
        let Some(batch) = Self::read_runs(&inner, after_seq, max_events, max_bytes)? else {
            drop(inner);
            return self.read_batch_to_send(after_seq, max_events, max_bytes);
        };
        inner.sending_through = batch.last_seq;
        Ok(Some(batch))
    }

    fn read_runs(
        inner: &Inner,
        after_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, SpoolError> {
        let mut stmt = inner.conn.prepare_cached(
            "SELECT first_seq, last_seq, prev_hash, head_hash, size, events FROM runs
             WHERE first_seq > ?1 AND packed ORDER BY first_seq",
        )?;
        let mut rows = stmt.query([after_seq as i64])?;
        let mut batch: Option<Batch> = None;
        while let Some(row) = rows.next()? {
            let first = row.get::<_, i64>(0)? as u64;
            let last = row.get::<_, i64>(1)? as u64;
            let size = row.get::<_, i64>(4)?.max(0) as usize;
            let expected = batch.as_ref().map_or(after_seq + 1, |b| b.last_seq + 1);
            let count = usize::try_from(last.saturating_sub(first) + 1).unwrap_or(usize::MAX);
            let (events, bytes) = batch.as_ref().map_or((0, 0), |b| {
                (
                    usize::try_from(b.last_seq - b.first_seq + 1).unwrap_or(usize::MAX),
                    b.bytes,
                )
            });
            // A gap (dropped events, or a run kept plain), or no room: the batch ends here.
            if first != expected
                || last < first
                || events.saturating_add(count) > max_events
                || (events > 0 && bytes.saturating_add(size) > max_bytes)
            {
                break;
            }
            let hash = |at: usize, key: &'static str| -> Result<Hash, SpoolError> {
                let bytes = row
                    .get_ref(at)?
                    .as_blob()
                    .map_err(|_| SpoolError::Corrupt { key })?;
                hash_column(bytes, key)
            };
            let head = hash(3, "hash")?;
            let packed = row.get::<_, Vec<u8>>(5)?;
            let b = match &mut batch {
                Some(b) => b,
                None => batch.insert(Batch {
                    first_seq: first,
                    last_seq: first - 1,
                    prev_hash: hash(2, "prev hash")?,
                    head_hash: GENESIS,
                    events: Vec::new(),
                    runs: Vec::new(),
                    bytes: 0,
                }),
            };
            b.runs.push(packed);
            b.last_seq = last;
            b.head_hash = head;
            b.bytes += size;
        }
        Ok(batch)
    }

    /// After the collector refused the batch `first..=last` (malformed, or failing its chain or
    /// signature checks): removes every run of it that does not hold together by the spool's own
    /// hashes, naming each in an `agent.dropped`, so that a damaged spool is reported rather than
    /// refused again without end. Returns how many runs were removed; none when the spool's
    /// copy is sound and the refusal has another cause.
    pub fn drop_refused_damage(&self, first: u64, last: u64) -> Result<usize, SpoolError> {
        let mut inner = self.lock();
        let damaged = inner.damaged_runs(first, last)?;
        for (first, last, detail) in &damaged {
            inner.drop_damaged(*first, *last, detail)?;
        }
        Ok(damaged.len())
    }

    /// The delivery of the batch from [`Self::read_batch_to_send`] failed: its events may be shed
    /// again.
    pub fn release(&self) {
        self.lock().sending_through = 0;
    }

    /// The oldest events after `after_seq`, at most `max_events` and about `max_bytes`.
    #[cfg(test)]
    pub fn read_batch(
        &self,
        after_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, SpoolError> {
        Self::read(&self.lock(), after_seq, max_events, max_bytes)
    }

    fn read(
        inner: &Inner,
        after_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, SpoolError> {
        // From the run holding `after_seq + 1` (normally the first left after the last
        // acknowledgement), in order.
        let mut stmt = inner.conn.prepare_cached(
            "SELECT first_seq, last_seq, prev_hash, head_hash, events, packed FROM runs
             WHERE first_seq >= COALESCE((SELECT MAX(first_seq) FROM runs WHERE first_seq <= ?1), 0)
               AND last_seq > ?1
             ORDER BY first_seq",
        )?;
        let mut rows = stmt.query([after_seq as i64])?;
        let mut batch: Option<Batch> = None;
        while let Some(row) = rows.next()? {
            let first = row.get::<_, i64>(0)? as u64;
            let last = row.get::<_, i64>(1)? as u64;
            let blob = |at: usize, key: &'static str| -> Result<&[u8], SpoolError> {
                row.get_ref(at)?
                    .as_blob()
                    .map_err(|_| SpoolError::Corrupt { key })
            };
            let damaged = |error: SpoolError| SpoolError::DamagedRun {
                first,
                last,
                detail: error.to_string(),
            };
            let plain =
                plain_events(blob(4, "run events")?, row.get::<_, bool>(5)?).map_err(damaged)?;
            let parsed =
                (|| parse_run(first, last, blob(2, "prev hash")?, blob(3, "hash")?, &plain))();
            let (prev, head, events) = parsed.map_err(damaged)?;
            // Events already acknowledged at the front of the run are skipped.
            let skip = after_seq.saturating_add(1).saturating_sub(first) as usize;
            let start = first + skip as u64;
            let before = match &batch {
                None => link_all(prev, first, &events[..skip]),
                // Stop at a hole (dropped events): a batch is one run of the chain.
                Some(b) if start != b.last_seq + 1 => break,
                // A later run goes whole or waits for the next batch: a batch that ends where a
                // run ends needs no hashes computed again, here or when its acknowledgement
                // would cut the run.
                Some(b)
                    if b.events.len() + events.len() > max_events
                        || b.bytes + events.iter().map(|e| e.len()).sum::<usize>() > max_bytes =>
                {
                    break;
                }
                Some(b) => b.head_hash,
            };
            let b = batch.get_or_insert_with(|| Batch {
                first_seq: start,
                last_seq: start - 1,
                prev_hash: before,
                head_hash: before,
                events: Vec::new(),
                runs: Vec::new(),
                bytes: 0,
            });
            let mut taken = 0;
            for bytes in &events[skip..] {
                if !b.events.is_empty()
                    && (b.events.len() >= max_events || b.bytes + bytes.len() > max_bytes)
                {
                    break;
                }
                b.bytes += bytes.len();
                b.events.push(bytes.to_vec());
                taken += 1;
            }
            let end = skip + taken;
            b.last_seq = first + end as u64 - 1;
            b.head_hash = if end == events.len() {
                head
            } else {
                link_all(before, start, &events[skip..end])
            };
            if end < events.len() {
                break;
            }
        }
        Ok(batch)
    }

    /// Forgets events the collector has committed, and ends the hold on the batch being
    /// delivered (whatever of it the collector did not commit is sent again or shed).
    pub fn ack(&self, through_seq: u64) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        // Remembered even if the delete below fails (a full disk): such events are no loss.
        inner.acked = inner.acked.max(through_seq);
        inner.sending_through = 0;
        // Cached statements: every batch runs these, and parsing one costs about as much as
        // running it.
        let first: Option<i64> = inner
            .conn
            .prepare_cached("SELECT MIN(first_seq) FROM runs")?
            .query_row([], |r| r.get(0))?;
        if first.is_none_or(|first| first as u64 > through_seq) {
            return Ok(());
        }
        let tx = inner.conn.transaction()?;
        split_at(&tx, through_seq + 1)?;
        let (count, bytes): (i64, i64) = tx
            .prepare_cached(
                "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(SUM(size), 0)
                 FROM runs WHERE first_seq <= ?1",
            )?
            .query_row([through_seq as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        // The witness: the newest head the collector acknowledged, kept after its events leave,
        // so a collector store that later lacks them is caught when this agent next sends.
        let acked: Option<Vec<u8>> = tx
            .prepare_cached(
                "SELECT head_hash FROM runs WHERE first_seq <= ?1 AND last_seq = ?1
                 ORDER BY first_seq DESC LIMIT 1",
            )?
            .query_row([through_seq as i64], |r| r.get(0))
            .optional()?;
        if let Some(hash) = acked {
            let mut value = through_seq.to_be_bytes().to_vec();
            value.extend_from_slice(&hash);
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('witness', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute([value])?;
        }
        tx.prepare_cached("DELETE FROM runs WHERE first_seq <= ?1")?
            .execute([through_seq as i64])?;
        tx.commit()?;
        inner.events = inner.events.saturating_sub(count as u64);
        inner.bytes = inner.bytes.saturating_sub(bytes as u64);
        Ok(())
    }

    /// The newest head the collector acknowledged: its sequence number and chain hash.
    pub fn witness(&self) -> Result<Option<(u64, Hash)>, SpoolError> {
        let inner = self.lock();
        let value: Option<Vec<u8>> = inner
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'witness'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let Some(value) = value else { return Ok(None) };
        let corrupt = SpoolError::Corrupt { key: "witness" };
        let (seq, hash) = value
            .split_at_checked(8)
            .ok_or(SpoolError::Corrupt { key: "witness" })?;
        let seq = u64::from_be_bytes(
            seq.try_into()
                .map_err(|_| SpoolError::Corrupt { key: "witness" })?,
        );
        let hash = chain::to_hash(hash, "witness").map_err(|_| corrupt)?;
        Ok(Some((seq, hash)))
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            events: inner.events,
            bytes: inner.bytes,
            next_seq: inner.next_seq,
            dropped_total: inner.dropped_total,
        }
    }
}

/// Runs a spool call on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    spool: &Spool,
    f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || f(&spool))
        .await
        .map_err(|_| SpoolError::TaskFailed)?
}

/// How long the writer keeps retrying one burst the spool refuses (other than for a full disk,
/// which the spool handles itself) before it counts the burst as lost. At least two attempts are
/// made whatever the time, as a locked spool spends the busy timeout on each.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// While the spool keeps failing, how often the writer repeats its error line.
const FAILING_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// The least time between two of the writer's commits while events keep coming. Each commit
/// writes the spool's hot pages again, wakes the sender and, every few, checkpoints with two
/// `fsync`s: a burst trickling in a few events at a time cost more in commits than in events.
/// Events after a quiet spell are written at once.
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(20);

/// Drains the sensor channel into the spool, one transaction per burst, then settles the burst's
/// commit tickets and wakes the sender. Events that arrive within [`GATHER_FOR`] of the last
/// commit wait for the rest of it, with whatever else arrives meanwhile.
///
/// A burst the spool refuses is retried with a growing delay for [`RETRY_FOR`] (sensors feel
/// back-pressure through the bounded channel meanwhile); then it is counted as lost, durably in
/// `spool.lost`, its tickets settled so that nothing waits on it forever (a stopping agent
/// included), and while the spool still fails each later burst gets one attempt. The first append
/// that succeeds records the loss as `agent.dropped` with its reason: never silent, never stuck.
pub async fn run_writer(
    spool: Spool,
    mut rx: tokio::sync::mpsc::Receiver<Event>,
    wake: Arc<tokio::sync::Notify>,
    tickets: Arc<crate::pipeline::Tickets>,
) -> Result<(), SpoolError> {
    const BURST: usize = 4096;
    let mut buffer = Vec::with_capacity(BURST);
    let mut numbers = Vec::with_capacity(BURST);
    // Since when the spool has been failing, and when that was last said.
    let mut failing: Option<(Failure, tokio::time::Instant)> = None;
    let mut last_said: Option<tokio::time::Instant> = None;
    let mut last_commit: Option<tokio::time::Instant> = None;
    loop {
        let received = rx.recv_many(&mut buffer, BURST).await;
        if received == 0 {
            return Ok(());
        }
        if let Some(last) = last_commit {
            let until = last + GATHER_FOR;
            while buffer.len() < BURST {
                let room = BURST - buffer.len();
                let more = rx.recv_many(&mut buffer, room);
                match tokio::time::timeout_at(until, more).await {
                    Ok(received) if received > 0 => {}
                    // Closed (what came is still written) or the time is up.
                    _ => break,
                }
            }
        }
        // Before the spool renumbers them, the events' `seq` are their commit tickets.
        numbers.clear();
        numbers.extend(buffer.iter().map(|e| e.seq));
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let events = std::mem::take(&mut buffer);
            let (events, (settled, result)) = blocking_append(&spool, events).await?;
            last_commit = Some(tokio::time::Instant::now());
            buffer = events;
            if result.is_err() {
                // Committed before the error: not written again, nor counted as lost.
                buffer.drain(..settled);
            }
            let error = match result {
                Ok(_) => {
                    if let Some((failure, since)) = failing.take() {
                        tracing::info!(reason = failure.reason(), failing_for = ?since.elapsed(), "the spool can be written again");
                    }
                    tickets.settle(numbers.iter().copied());
                    wake.notify_one();
                    break;
                }
                Err(error) => error,
            };
            attempt += 1;
            let failure = Failure::of(&error);
            let give_up = failing.is_some() || (attempt >= 2 && started.elapsed() >= RETRY_FOR);
            if !give_up {
                tracing::error!(%error, reason = failure.reason(), attempt, "cannot write to the spool; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(
                    (100u64 << attempt.min(6)).min(2000),
                ))
                .await;
                continue;
            }
            let count = buffer.len() as u64;
            let reason = format!("{}: {error}", failure.reason());
            let s = spool.clone();
            let (pending, total) =
                tokio::task::spawn_blocking(move || s.record_lost(count, &reason))
                    .await
                    .map_err(|_| SpoolError::TaskFailed)?;
            tickets.settle(numbers.iter().copied());
            if failing.is_none() {
                failing = Some((failure, started));
            }
            let now = tokio::time::Instant::now();
            if last_said.is_none_or(|t| now - t >= FAILING_LOG_EVERY) || attempt > 1 {
                last_said = Some(now);
                tracing::error!(
                    %error,
                    reason = failure.reason(),
                    lost = count,
                    unreported = pending,
                    lost_total = total,
                    "cannot write to the spool: events lost, counted in spool.lost and reported as agent.dropped once the spool can be written"
                );
            }
            break;
        }
        buffer.clear();
    }
}

/// [`Spool::append_settling`] on a blocking thread, handing the events back for a retry.
async fn blocking_append(
    spool: &Spool,
    mut events: Vec<Event>,
) -> Result<(Vec<Event>, (usize, Result<u64, SpoolError>)), SpoolError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let result = spool.append_settling(&mut events);
        (events, result)
    })
    .await
    .map_err(|_| SpoolError::TaskFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::event::{SensorEvent, SensorStatus};

    /// A spool of at most `max_bytes` in a new directory, after `commits` appends of `each`
    /// events.
    fn spool_with(max_bytes: u64, commits: usize, each: usize) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), max_bytes, "h").unwrap();
        append_commits(&spool, commits, each);
        (dir, spool)
    }

    /// `commits` appends of `each` events.
    fn append_commits(spool: &Spool, commits: usize, each: usize) {
        for _ in 0..commits {
            spool
                .append(&mut (0..each).map(event).collect::<Vec<_>>())
                .unwrap();
        }
    }

    fn event(n: usize) -> Event {
        Event::now(
            "h",
            SensorEvent::new(
                SensorStatus::Status,
                "test",
                format!("event {n} {}", "x".repeat(100)),
            ),
        )
    }

    #[test]
    fn numbering_and_chain_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        assert_eq!(
            spool
                .append(&mut (0..3).map(event).collect::<Vec<_>>())
                .unwrap(),
            3
        );
        let batch = spool.read_batch(0, 100, 1 << 20).unwrap().unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        assert_eq!(spool.append(&mut [event(4)]).unwrap(), 4);
        let next = spool.read_batch(3, 100, 1 << 20).unwrap().unwrap();
        assert_eq!((next.first_seq, next.last_seq), (4, 4));
        assert_eq!(next.prev_hash, batch.head_hash);
        assert_eq!(
            chain::link(&next.prev_hash, 4, &next.events[0]),
            next.head_hash
        );
        spool.ack(3).unwrap();
        assert_eq!(spool.stats().events, 1);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_says_so() {
        let (_dir, spool) = spool_with(20_000, 10, 20);
        let stats = spool.stats();
        assert!(stats.bytes <= 20_000, "spool holds {} bytes", stats.bytes);
        assert!(stats.dropped_total > 0);
        // The remaining events start after a hole and include agent.dropped notices.
        let mut after = 0;
        let mut dropped_seen = 0;
        while let Some(batch) = spool.read_batch(after, 1000, 1 << 20).unwrap() {
            for bytes in &batch.events {
                let event = bannin::proto::decode_event(bytes).unwrap();
                if event.kind() == "agent.dropped" {
                    dropped_seen += 1;
                }
            }
            after = batch.last_seq;
        }
        assert!(dropped_seen > 0);
        assert_eq!(stats.next_seq, 201 + dropped_seen);
    }

    /// A batch on its way to the collector is not shed: were it dropped and then committed, the
    /// collector would hold events that `agent.dropped` says were lost. Once its delivery fails,
    /// it is shed like any other.
    #[test]
    fn the_batch_being_delivered_is_not_dropped_until_its_delivery_fails() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 20_000, "h").unwrap();
        spool
            .append(&mut (0..20).map(event).collect::<Vec<_>>())
            .unwrap();
        let sending = spool.read_batch_to_send(0, 10, 1 << 20).unwrap().unwrap();
        assert_eq!((sending.first_seq, sending.last_seq), (1, 10));
        append_commits(&spool, 10, 20);
        assert!(spool.stats().dropped_total > 0);
        let ranges = dropped_ranges(&spool);
        assert!(!ranges.is_empty());
        assert!(ranges.iter().all(|(first, _)| *first > 10), "{ranges:?}");
        let kept = spool.read_batch(0, 10, 1 << 20).unwrap().unwrap();
        assert_eq!((kept.first_seq, kept.last_seq), (1, 10));

        spool.release();
        append_commits(&spool, 3, 20);
        let first = spool.read_batch(0, 10, 1 << 20).unwrap().unwrap().first_seq;
        assert!(first > 10, "the failed batch is still spooled from {first}");
        assert!(dropped_ranges(&spool).iter().any(|(first, _)| *first == 1));
    }

    /// Every `agent.*` event in the spool, oldest first.
    fn agent_events(spool: &Spool) -> Vec<bannin::event::AgentEvent> {
        let mut found = Vec::new();
        let mut after = 0;
        while let Some(batch) = spool.read_batch(after, 1000, 1 << 20).unwrap() {
            for bytes in &batch.events {
                let event = bannin::proto::decode_event(bytes).unwrap();
                if let bannin::event::Body::Agent(agent) = event.body {
                    found.push(agent);
                }
            }
            after = batch.last_seq;
        }
        found
    }

    /// The ranges every `agent.dropped` in the spool names.
    fn dropped_ranges(spool: &Spool) -> Vec<(u64, u64)> {
        let mut found = Vec::new();
        for agent in agent_events(spool) {
            if agent.dropped > 0 && agent.first_dropped_seq > 0 {
                // Each notice names one run: its count is its range.
                let (first, last) = (agent.first_dropped_seq, agent.last_dropped_seq);
                assert_eq!(agent.dropped, last - first + 1, "{agent:?}");
                found.push((first, last));
            }
        }
        found
    }

    /// Every `agent.dropped` in the spool: (dropped, message).
    fn notices(spool: &Spool) -> Vec<(u64, String)> {
        agent_events(spool)
            .into_iter()
            .filter(|agent| agent.action == AgentAction::Dropped)
            .map(|agent| (agent.dropped, agent.message))
            .collect()
    }

    /// The spool sheds its oldest events again and again while the collector is away: the
    /// notices of earlier losses stay, so every missing event is still explained and the count of
    /// events lost before they could be spooled still reaches the collector.
    #[test]
    fn later_sheds_keep_the_notices_of_earlier_losses() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 20_000, "h").unwrap();
        spool.record_lost(5, "the disk holding the state directory is full");
        spool.append(&mut [event(0)]).unwrap();
        append_commits(&spool, 30, 20);
        let found = notices(&spool);
        let lost: Vec<_> = found
            .iter()
            .filter(|(_, message)| message.contains("lost before they could be spooled"))
            .collect();
        assert_eq!(lost.len(), 1, "{found:?}");
        assert_eq!(lost[0].0, 5);
        assert!(
            dropped_ranges(&spool).len() > 1,
            "more than one shed: {found:?}"
        );

        let mut present = std::collections::BTreeSet::new();
        let mut after = 0;
        while let Some(batch) = spool.read_batch(after, 1000, 1 << 20).unwrap() {
            present.extend(batch.first_seq..=batch.last_seq);
            after = batch.last_seq;
        }
        let ranges = dropped_ranges(&spool);
        let next_seq = spool.stats().next_seq;
        for seq in 1..next_seq {
            assert!(
                present.contains(&seq)
                    || ranges
                        .iter()
                        .any(|&(first, last)| (first..=last).contains(&seq)),
                "event {seq} is neither spooled nor named by a notice: {ranges:?}"
            );
        }
        assert!(spool.stats().bytes <= 20_000);
    }

    /// New events that alone overrun the spool, beside a batch being delivered, leave nothing old
    /// to drop but notices: those stay (merged where they touch) rather than go for the little room
    /// they hold, so the count of every dropped event still arrives.
    #[test]
    fn a_burst_larger_than_the_spool_keeps_the_counts_of_earlier_drops() {
        let (_dir, spool) = spool_with(20_000, 10, 20);
        let oldest = spool.read_batch_to_send(0, 20, 1 << 20).unwrap().unwrap();
        assert!(oldest.last_seq > oldest.first_seq);
        spool
            .append(&mut (0..200).map(event).collect::<Vec<_>>())
            .unwrap();
        let stats = spool.stats();
        let named: u64 = dropped_ranges(&spool)
            .iter()
            .map(|(first, last)| last - first + 1)
            .sum();
        assert!(stats.dropped_total > 0);
        assert_eq!(
            named, stats.dropped_total,
            "dropped events the notices name"
        );
    }

    /// A run whose events were cut short or overwritten in the file (a damaged disk, someone
    /// writing the state directory) is refused as corrupt, with no read past its end and no
    /// garbage sent as events.
    #[test]
    fn a_damaged_run_reads_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool
            .append(&mut (0..3).map(event).collect::<Vec<_>>())
            .unwrap();
        // Packed runs whose events, once unpacked, are framed wrongly.
        let framed =
            |plain: &[u8]| format!("UPDATE runs SET events = X'{}'", hex::encode(pack(plain)));
        for damage in [
            // Packing that says it holds more than any run can.
            "UPDATE runs SET events = X'ff00000001'".to_string(),
            // A packing's length prefix cut short.
            "UPDATE runs SET events = X'0100'".to_string(),
            // Packed bytes that do not unpack to the length they claim.
            "UPDATE runs SET events = X'0100000041'".to_string(),
            // An event's length beyond the run's end.
            framed(b"\xff\x00\x00\x01"),
            // An event's length prefix cut short.
            framed(b"\x01\x00"),
            // One event fewer than the run's sequence numbers say.
            framed(b"\x01\x00\x00\x00\x41"),
            "UPDATE runs SET head_hash = X'00'".to_string(),
        ] {
            let saved: Vec<u8> = spool
                .lock()
                .conn
                .query_row("SELECT events FROM runs", [], |r| r.get(0))
                .unwrap();
            spool.lock().conn.execute_batch(&damage).unwrap();
            let error = spool.read_batch(0, 100, 1 << 20).unwrap_err();
            assert_eq!(Failure::of(&error), Failure::Corrupt, "{damage}: {error}");
            spool
                .lock()
                .conn
                .execute("UPDATE runs SET events = ?1", [saved])
                .unwrap();
        }
    }

    /// The sender does not stop at a damaged run for good: the run goes, an `agent.dropped`
    /// names its range, and the events on both sides of it are still sent.
    #[test]
    fn a_damaged_run_is_dropped_and_named_and_the_stream_goes_on() {
        let (_dir, spool) = spool_with(1 << 30, 3, 10);
        spool
            .lock()
            .conn
            .execute_batch("UPDATE runs SET events = X'ff00000001' WHERE first_seq = 11")
            .unwrap();
        let first = spool.read_batch_to_send(0, 100, 1 << 20).unwrap().unwrap();
        assert_eq!((first.first_seq, first.last_seq), (1, 10));
        spool.ack(10).unwrap();
        let rest = spool.read_batch_to_send(10, 100, 1 << 20).unwrap().unwrap();
        assert_eq!(rest.first_seq, 21, "the damaged run 11..=20 is gone");
        assert_eq!(dropped_ranges(&spool), vec![(11, 20)]);
        let stats = spool.stats();
        assert_eq!(stats.dropped_total, 10);
        assert_eq!(
            stats.events, 11,
            "ten events after the damaged run, and the notice"
        );
        assert!(
            notices(&spool)[0].1.contains("damaged"),
            "{:?}",
            notices(&spool)
        );
    }

    /// Runs whose framing holds but whose contents were changed read and are sent; once the
    /// collector refuses the batch, the spool finds which runs do not hold together by its own
    /// hashes and drops and names just those. A sound batch's refusal removes nothing.
    #[test]
    fn runs_changed_in_place_are_found_and_named_after_a_refusal() {
        let (_dir, spool) = spool_with(1 << 30, 5, 10);
        spool.read_batch_to_send(0, 10, 1 << 20).unwrap().unwrap();
        spool.ack(10).unwrap();
        assert_eq!(
            spool.drop_refused_damage(11, 50).unwrap(),
            0,
            "nothing is damaged yet"
        );
        let guard = spool.lock();
        let conn = &guard.conn;
        // 11..=20: one byte of an event's contents, same length (the hash no longer matches).
        let blob: Vec<u8> = conn
            .query_row("SELECT events FROM runs WHERE first_seq = 11", [], |r| {
                r.get(0)
            })
            .unwrap();
        let mut changed = blob.clone();
        *changed.last_mut().unwrap() ^= 0x01;
        conn.execute(
            "UPDATE runs SET events = ?1 WHERE first_seq = 11",
            [changed],
        )
        .unwrap();
        // 31..=40: a chain cut at its start (its prev hash no longer the head before it).
        conn.execute(
            "UPDATE runs SET prev_hash = zeroblob(32) WHERE first_seq = 31",
            [],
        )
        .unwrap();
        // 41..=50: an event that no longer decodes, rehashed so the hash alone cannot tell.
        let (prev, blob): (Vec<u8>, Vec<u8>) = conn
            .query_row(
                "SELECT prev_hash, events FROM runs WHERE first_seq = 41",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let mut events: Vec<Vec<u8>> = unpack(&plain_events(&blob, true).unwrap())
            .unwrap()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        events[0] = vec![0xff; events[0].len()];
        let mut plain = Vec::new();
        for e in &events {
            bannin::runs::push(&mut plain, e);
        }
        let packed = pack(&plain);
        let slices: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
        let head = link_all(chain::to_hash(&prev, "prev").unwrap(), 41, &slices);
        conn.execute(
            "UPDATE runs SET events = ?1, head_hash = ?2 WHERE first_seq = 41",
            params![packed, head.as_slice()],
        )
        .unwrap();
        drop(guard);
        // Still framed: the batch reads as before, as the collector would then refuse it.
        let batch = spool.read_batch_to_send(10, 100, 1 << 20).unwrap().unwrap();
        assert_eq!((batch.first_seq, batch.last_seq), (11, 50));
        spool.release();
        assert_eq!(spool.drop_refused_damage(11, 50).unwrap(), 3);
        assert_eq!(dropped_ranges(&spool), vec![(11, 20), (31, 40), (41, 50)]);
        let notices = notices(&spool);
        let details: Vec<&str> = notices
            .iter()
            .map(|(_, message)| message.as_str())
            .collect();
        assert!(
            details[0].contains("do not match its chain hash"),
            "{details:?}"
        );
        assert!(details[1].contains("does not continue"), "{details:?}");
        assert!(
            details[2].contains("event 41 does not decode"),
            "{details:?}"
        );
        let rest = spool.read_batch_to_send(10, 10, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (rest.first_seq, rest.last_seq),
            (21, 30),
            "the sound run stays"
        );
        assert_eq!(spool.stats().dropped_total, 30);
        assert_eq!(spool.drop_refused_damage(11, 50).unwrap(), 0, "once only");
    }

    /// A spool at its bound long enough for its own notices to fill it gives the oldest of them up
    /// rather than grow past the bound.
    #[test]
    fn notices_alone_cannot_push_a_spool_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 4_000, "h").unwrap();
        for n in 0..300 {
            spool.append(&mut [event(n)]).unwrap();
            let bytes = spool.stats().bytes;
            assert!(
                bytes <= 4_000,
                "after {n} appends the spool holds {bytes} bytes"
            );
        }
        // Notices were given up too, and the spool still takes new events.
        assert!(notices(&spool).len() < 300, "{:?}", notices(&spool));
        let newest = spool.stats().next_seq - 1;
        assert!(spool.read_batch(newest - 1, 10, 1 << 20).unwrap().is_some());
    }

    /// Reads every batch of at most `size` events from `after`, checking that each one's hashes
    /// link its events and that each batch starts where the one before it ended; the sequence
    /// numbers read.
    fn read_all_checked(spool: &Spool, after: u64, size: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut after = after;
        let mut head: Option<Hash> = None;
        while let Some(batch) = spool.read_batch(after, size, 1 << 20).unwrap() {
            let events: Vec<&[u8]> = batch.events.iter().map(Vec::as_slice).collect();
            assert_eq!(
                link_all(batch.prev_hash, batch.first_seq, &events),
                batch.head_hash,
                "batch {}..={}",
                batch.first_seq,
                batch.last_seq
            );
            if head.is_some() && batch.first_seq == after + 1 {
                assert_eq!(
                    Some(batch.prev_hash),
                    head,
                    "batch from {}",
                    batch.first_seq
                );
            }
            assert_eq!(
                batch.events.len() as u64,
                batch.last_seq - batch.first_seq + 1
            );
            for (bytes, seq) in batch.events.iter().zip(batch.first_seq..) {
                assert_eq!(bannin::proto::decode_event(bytes).unwrap().seq, seq);
            }
            seqs.extend(batch.first_seq..=batch.last_seq);
            head = Some(batch.head_hash);
            after = batch.last_seq;
        }
        seqs
    }

    /// Events are kept in runs; batches, acknowledgements and drops that end inside a run cut it,
    /// and the chain reads the same whatever the cuts.
    #[test]
    fn runs_cut_anywhere_keep_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool
            .append(&mut (0..1000).map(event).collect::<Vec<_>>())
            .unwrap();
        let rows = |spool: &Spool| -> i64 {
            spool
                .lock()
                .conn
                .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
                .unwrap()
        };
        let whole = rows(&spool);
        assert!((2..100).contains(&whole), "{whole} rows for 1,000 events");
        for size in [1, 7, 333, 2000] {
            assert_eq!(
                read_all_checked(&spool, 0, size),
                (1..=1000).collect::<Vec<_>>()
            );
        }
        // A batch of 7 acknowledged through its fifth event.
        let sending = spool.read_batch_to_send(0, 7, 1 << 20).unwrap().unwrap();
        assert_eq!((sending.first_seq, sending.last_seq), (1, 7));
        spool.ack(5).unwrap();
        assert_eq!(spool.stats().events, 995);
        assert_eq!(
            read_all_checked(&spool, 5, 64),
            (6..=1000).collect::<Vec<_>>()
        );
        let witness = spool.witness().unwrap().unwrap();
        let first = spool.read_batch(5, 1, 1 << 20).unwrap().unwrap();
        assert_eq!(witness, (5, first.prev_hash));
        // Acknowledged in the middle of a run, again, after a restart.
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.ack(512).unwrap();
        assert_eq!(spool.stats().events, 488);
        assert_eq!(
            read_all_checked(&spool, 512, 100),
            (513..=1000).collect::<Vec<_>>()
        );
        assert!(rows(&spool) <= whole + 2);
        spool.append(&mut [event(1001)]).unwrap();
        assert_eq!(
            read_all_checked(&spool, 512, 50),
            (513..=1001).collect::<Vec<_>>()
        );
    }

    /// A spool at its bound cuts a run to drop just what it must: every event is still either
    /// spooled or named by a notice, and what remains reads as a chain.
    #[test]
    fn a_drop_inside_a_run_drops_only_what_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 40_000, "h").unwrap();
        for _ in 0..6 {
            spool
                .append(&mut (0..100).map(event).collect::<Vec<_>>())
                .unwrap();
            assert!(spool.stats().bytes <= 40_000, "{:?}", spool.stats());
        }
        let ranges = dropped_ranges(&spool);
        assert!(!ranges.is_empty());
        let dropped: u64 = ranges.iter().map(|(first, last)| last - first + 1).sum();
        // The bound sheds down to 90% of itself: each drop takes about a tenth of the spool
        // beyond what the new events need, not whole runs of 100.
        let kept = spool.stats();
        assert!(
            kept.bytes >= 40_000 / 10 * 8,
            "kept only {} bytes after dropping {dropped}",
            kept.bytes
        );
        let present = read_all_checked(&spool, 0, 37);
        for seq in 1..kept.next_seq {
            assert!(
                present.contains(&seq)
                    || ranges
                        .iter()
                        .any(|&(first, last)| (first..=last).contains(&seq)),
                "event {seq} is neither spooled nor named by a notice: {ranges:?}"
            );
        }
        assert_eq!(present.len() as u64 + dropped, kept.next_seq - 1);
    }

    /// A spool written before runs, one row per event (and before notices were marked), opens
    /// with its events in runs, its chain intact, and goes on from where it was.
    #[test]
    fn a_spool_of_one_row_per_event_opens_with_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE spool (seq INTEGER PRIMARY KEY, prev_hash BLOB NOT NULL,
                                 hash BLOB NOT NULL, bytes BLOB NOT NULL);",
        )
        .unwrap();
        let mut head = GENESIS;
        for seq in 1..=3u64 {
            let mut old = event(seq as usize);
            old.seq = seq;
            let bytes = bannin::proto::encode_event(&old);
            let hash = chain::link(&head, seq, &bytes);
            conn.execute(
                "INSERT INTO spool VALUES (?1, ?2, ?3, ?4)",
                params![seq as i64, head.as_slice(), hash.as_slice(), bytes],
            )
            .unwrap();
            head = hash;
        }
        let spool = open_as_written(dir.path(), conn, 4u64, head);
        assert_eq!(spool.stats().events, 3);
        assert_eq!(spool.append(&mut [event(4)]).unwrap(), 4);
        assert_eq!(read_all_checked(&spool, 0, 2), vec![1, 2, 3, 4]);
        let first = spool.read_batch(0, 10, 1 << 20).unwrap().unwrap();
        assert_eq!(first.prev_hash, GENESIS);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        assert_eq!(spool.stats().events, 4);
    }

    /// Opens a spool an older agent wrote through `conn`, once the position it reached (the next
    /// sequence number and the chain head) is written too.
    fn open_as_written(dir: &Path, conn: Connection, next_seq: u64, head: Hash) -> Spool {
        conn.execute(
            "INSERT INTO meta VALUES ('next_seq', ?1), ('head', ?2)",
            params![next_seq.to_be_bytes().as_slice(), head.as_slice()],
        )
        .unwrap();
        drop(conn);
        Spool::open(dir, 1 << 30, "h").unwrap()
    }

    /// For a collector that takes runs, whole packed runs are read as kept, with the same range
    /// and hashes as the events: from where a run begins, as many whole runs as fit the limits;
    /// where a run must be cut, or was kept plain, the events instead.
    #[test]
    fn whole_runs_are_read_as_kept_and_a_cut_run_as_events() {
        let (_dir, spool) = spool_with(1 << 30, 4, 10);
        let runs = spool.read_runs_to_send(0, 25, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (runs.first_seq, runs.last_seq),
            (1, 20),
            "two whole runs fit 25"
        );
        assert!(runs.events.is_empty());
        assert_eq!(runs.runs.len(), 2);
        let events = spool.read_batch(0, 20, 1 << 20).unwrap().unwrap();
        let unpacked: Vec<Vec<u8>> = runs
            .runs
            .iter()
            .flat_map(|run| {
                let plain = bannin::runs::unpack(run).unwrap();
                bannin::runs::events(&plain)
                    .unwrap()
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(unpacked, events.events);
        assert_eq!(
            (runs.prev_hash, runs.head_hash),
            (events.prev_hash, events.head_hash)
        );
        // Held like any batch being delivered.
        assert_eq!(spool.lock().sending_through, 20);
        spool.release();
        // A run to cut (5 of its 10), or one begun elsewhere: events.
        let cut = spool.read_runs_to_send(20, 5, 1 << 20).unwrap().unwrap();
        assert_eq!((cut.first_seq, cut.last_seq, cut.events.len()), (21, 25, 5));
        assert!(cut.runs.is_empty());
        spool.release();
        spool.ack(25).unwrap();
        let rest = spool.read_runs_to_send(25, 100, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (rest.first_seq, rest.last_seq, rest.runs.len()),
            (26, 40, 2)
        );
    }

    /// A spool written before runs were packed (no `packed` column, plain events) opens with its
    /// events, which read, cut and chain as before, beside the packed runs added after.
    #[test]
    fn a_spool_of_plain_runs_opens_with_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE runs (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,
                                prev_hash BLOB NOT NULL, head_hash BLOB NOT NULL,
                                size INTEGER NOT NULL, events BLOB NOT NULL,
                                notice INTEGER NOT NULL DEFAULT 0);",
        )
        .unwrap();
        let mut head = GENESIS;
        for (first, last) in [(1u64, 3u64), (4, 5)] {
            let prev = head;
            let (mut plain, mut size) = (Vec::new(), 0);
            for seq in first..=last {
                let mut old = event(seq as usize);
                old.seq = seq;
                let bytes = bannin::proto::encode_event(&old);
                head = chain::link(&head, seq, &bytes);
                bannin::runs::push(&mut plain, &bytes);
                size += bytes.len();
            }
            conn.execute(
                "INSERT INTO runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![
                    first as i64,
                    last as i64,
                    prev.as_slice(),
                    head.as_slice(),
                    size as i64,
                    plain
                ],
            )
            .unwrap();
        }
        let spool = open_as_written(dir.path(), conn, 6u64, head);
        assert_eq!(spool.stats().events, 5);
        assert_eq!(spool.append(&mut [event(6)]).unwrap(), 6);
        // Batches of two cut the plain runs; what they leave is packed.
        assert_eq!(read_all_checked(&spool, 0, 2), (1..=6).collect::<Vec<_>>());
        spool.ack(2).unwrap();
        assert_eq!(read_all_checked(&spool, 2, 10), (3..=6).collect::<Vec<_>>());
        let packed: Vec<bool> = spool
            .lock()
            .conn
            .prepare("SELECT packed FROM runs ORDER BY first_seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(packed, vec![true, false, true], "3 (cut), 4..=5, 6");
    }

    /// Events that repeat the same bytes, as a burst's do (its process and ancestry), take a
    /// small part of their size in the spool's file.
    #[test]
    fn a_run_of_like_events_is_packed_small() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        let mut events: Vec<Event> = (0..200).map(large_event).collect();
        spool.append(&mut events).unwrap();
        let (size, stored): (i64, i64) = spool
            .lock()
            .conn
            .query_row("SELECT SUM(size), SUM(length(events)) FROM runs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert!(size > 100_000, "{size}");
        assert!(stored * 5 < size, "{stored} bytes stored for {size}");
        assert_eq!(
            read_all_checked(&spool, 0, 1000),
            (1..=200).collect::<Vec<_>>()
        );
    }

    #[test]
    fn events_lost_before_a_restart_are_reported_after_it_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.append(&mut [event(1)]).unwrap();
        spool.record_lost(5, "another process holds the spool's write lock");
        spool.record_lost(2, "another process holds the spool's write lock");
        // The agent stops (or dies) before anything else reaches the spool.
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.append(&mut [event(2)]).unwrap();
        let found = notices(&spool);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 7);
        assert!(found[0].1.contains("write lock"), "{found:?}");
        assert_eq!(spool.stats().dropped_total, 7);
        drop(spool);
        // Reported once: a later restart has nothing to add.
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.append(&mut [event(3)]).unwrap();
        assert_eq!(notices(&spool).len(), 1);
        spool.record_lost(1, "the disk holding the state directory is full");
        spool.append(&mut [event(4)]).unwrap();
        let found = notices(&spool);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1].0, 1);
    }

    #[test]
    fn a_damaged_count_is_reported_as_unknown_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.record_lost(3, "x");
        drop(spool);
        let path = dir.path().join(lost::LOST_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.append(&mut [event(1)]).unwrap();
        let found = notices(&spool);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.contains("unknown number"), "{found:?}");
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool.append(&mut [event(2)]).unwrap();
        assert_eq!(notices(&spool).len(), 1);
    }

    #[test]
    fn an_old_spool_is_converted_to_incremental_vacuum_keeping_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool
            .append(&mut (0..50).map(event).collect::<Vec<_>>())
            .unwrap();
        let before = spool.read_batch(0, 1000, 1 << 20).unwrap().unwrap();
        drop(spool);
        // What a spool made before auto_vacuum was set looks like.
        let conn = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
        conn.execute_batch("PRAGMA auto_vacuum=NONE; VACUUM;")
            .unwrap();
        let mode = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(mode(&conn), 0);
        drop(conn);
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        assert_eq!(mode(&spool.lock().conn), 2);
        let after = spool.read_batch(0, 1000, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (after.first_seq, after.last_seq, after.head_hash),
            (before.first_seq, before.last_seq, before.head_hash)
        );
        assert_eq!(after.events, before.events);
        assert_eq!(spool.append(&mut [event(51)]).unwrap(), 51);
    }

    #[test]
    fn failures_are_told_apart() {
        let failure = |code: i32| {
            Failure::of(&SpoolError::Sql {
                source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
            })
        };
        use rusqlite::ffi;
        assert_eq!(failure(ffi::SQLITE_FULL), Failure::DiskFull);
        assert_eq!(failure(ffi::SQLITE_IOERR_SHMSIZE), Failure::DiskFull);
        assert_eq!(failure(ffi::SQLITE_BUSY), Failure::Locked);
        assert_eq!(failure(ffi::SQLITE_READONLY), Failure::ReadOnly);
        assert_eq!(failure(ffi::SQLITE_IOERR_WRITE), Failure::Io);
        assert_eq!(failure(ffi::SQLITE_CORRUPT), Failure::Corrupt);
        assert_eq!(failure(ffi::SQLITE_NOTADB), Failure::Corrupt);
        assert_eq!(failure(ffi::SQLITE_CANTOPEN), Failure::CannotOpen);
    }

    /// A database damaged under the running agent (here through a schema pointing at a page
    /// that is no table) fails as corrupt, and the spool says so rather than hang.
    #[test]
    fn a_spool_damaged_under_the_agent_fails_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        spool
            .append(&mut (0..50).map(event).collect::<Vec<_>>())
            .unwrap();
        let other = Connection::open(dir.path().join(SPOOL_FILE)).unwrap();
        let version: i64 = other
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        other
            .execute_batch(&format!(
                "PRAGMA writable_schema=ON;
                 UPDATE sqlite_schema SET rootpage = 1 WHERE name = 'runs';
                 PRAGMA schema_version = {};",
                version + 1
            ))
            .unwrap();
        drop(other);
        let error = spool.append(&mut [event(51)]).unwrap_err();
        assert_eq!(Failure::of(&error), Failure::Corrupt, "{error}");
    }

    /// Another connection's trigger refuses every run once the spool holds [`TXN_BYTES`]: the
    /// first transaction of a larger append commits, the next fails.
    fn refuse_past_one_transaction(dir: &Path) -> Connection {
        let other = Connection::open(dir.join(SPOOL_FILE)).unwrap();
        other
            .execute_batch(&format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON runs
                 WHEN (SELECT COALESCE(SUM(size), 0) FROM runs) >= {TXN_BYTES}
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
            ))
            .unwrap();
        other
    }

    /// An append larger than one transaction that fails after its first part: the part is in the
    /// spool, and the call says how much of it, so that nothing is written twice.
    #[test]
    fn an_append_that_fails_part_way_says_how_much_it_committed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        let other = refuse_past_one_transaction(dir.path());
        let mut events: Vec<Event> = (0..6000).map(large_event).collect();
        let (settled, result) = spool.append_settling(&mut events);
        assert!(result.is_err());
        assert!(settled > 0 && settled < events.len(), "{settled}");
        assert_eq!(spool.stats().events, settled as u64);
        other.execute_batch("DROP TRIGGER refuse").unwrap();
        let last = spool.append(&mut events[settled..]).unwrap();
        assert_eq!(last, 6000);
        assert_eq!(spool.stats().events, 6000);
    }

    /// About 2 KB encoded: a few thousand make more than one transaction.
    fn large_event(n: usize) -> Event {
        Event::now(
            "h",
            SensorEvent::new(
                SensorStatus::Status,
                "test",
                format!("{n} {}", "x".repeat(2000)),
            ),
        )
    }

    /// The writer, handed a burst the spool refuses after its first part and then for good,
    /// counts as lost only the rest: the first part is in the spool. It used to count the whole
    /// burst, as when appends were all or nothing, so the collector would have been told of
    /// events lost that it then received (and a retry that succeeded would have spooled the
    /// first part twice).
    #[tokio::test(start_paused = true)]
    async fn a_burst_refused_part_way_is_counted_lost_only_for_what_was_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, "h").unwrap();
        let _other = refuse_past_one_transaction(dir.path());
        let (tx, rx) = tokio::sync::mpsc::channel(8192);
        // One burst (the writer takes up to 4,096 events at once) of about 8 MiB.
        for n in 0..4096 {
            tx.send(large_event(n)).await.unwrap();
        }
        drop(tx);
        // Retries for its 10 s (paused time), then counts what is left as lost, and ends with
        // the channel.
        run_writer(
            spool.clone(),
            rx,
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(crate::pipeline::Tickets::default()),
        )
        .await
        .unwrap();
        let spooled = spool.stats().events;
        assert!(spooled > 0 && spooled < 4096, "{spooled}");
        let lost = spool.lock().lost.pending;
        assert_eq!(lost, 4096 - spooled);
    }
}
