//! The eBPF backend for TCP: a program on the `inet_sock_set_state` tracepoint
//! (`agent/sensors/ebpf/bpf/network.bpf.c`) remembers the process that called connect() when the
//! socket enters SYN_SENT, in that process's own context, and reports the connection when its
//! handshake completes and again when it closes, with the bytes that went each way. So a
//! connection of a few milliseconds from a process that is gone a moment later still names it.
//!
//! One event per connection, as with the socket tables: a connection that closes within the
//! sensor's `interval` of its handshake is reported at its close, with its bytes; one still open
//! then is reported then, without them. A connection attempt that never completed its handshake is
//! reported at its close too. Losses in the kernel (ring buffer or connection table full) are
//! counted there and reported as `sensor.overflow`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

use bannin::event::{NetEvent, ProcessInfo};
use tokio::time::Instant;

use super::scope::remote_scope;
use super::{NetSettings, ProcessTable, SENSOR};
use crate::pipeline::EventTx;
use crate::sensors::ebpf::records::ConnRecord;
use crate::sensors::ebpf::{self, EbpfError, Gone, Loaded};
use crate::sensors::process::os;
use crate::sensors::{Notice, Stop};

/// A closed connection waits this long before it is reported, so that the exec of a process that
/// connected at once has reached the process table (the process sensor's thread records it).
const SETTLE: Duration = Duration::from_millis(100);
/// How long a connection due for reporting waits, at most, for the process table to learn of its
/// process: on a loaded host the process sensor can be that far behind.
const MAX_WAIT_FOR_PROCESS: Duration = Duration::from_secs(3);
/// How often a connection due for reporting looks again whether the process table has learnt of
/// its process: the table tells nobody when it does.
const RECHECK: Duration = Duration::from_millis(100);
/// Connections open or settling; past this, a new one is reported at once without bytes.
const MAX_PENDING: usize = 65_536;

/// Loads and attaches the program. `ring_bytes` sizes the ring buffer (a power of two, at least
/// a page).
pub fn open(ring_bytes: u32) -> Result<Loaded, EbpfError> {
    ebpf::load(
        ebpf::NETWORK_OBJECT,
        &[("inet_sock_set_state", "inet_sock_set_state")],
        ring_bytes,
    )
}

/// Starts the reader thread, which stops when `stop` is set or the spool goes away.
pub fn spawn(
    mut loaded: Loaded,
    config: &NetSettings,
    table: ProcessTable,
    tx: EventTx,
    stop: Stop,
) -> io::Result<std::thread::JoinHandle<()>> {
    let mut reader = Reader {
        table,
        tx,
        hold: config.interval,
        include_loopback: config.include_loopback,
        pending: HashMap::new(),
        settling: VecDeque::new(),
    };
    std::thread::Builder::new()
        .name("bannin-ebpf-net".into())
        .spawn(move || loaded.read_until_stopped(&mut reader, &stop))
}

/// A connection seen open, waiting for its close or for its hold to run out.
struct Pending {
    record: ConnRecord,
    /// When the record arrived.
    seen: Instant,
    due: Instant,
    /// Bytes sent and received, once it closed.
    closed: Option<(u64, u64)>,
}

struct Reader {
    table: ProcessTable,
    tx: EventTx,
    hold: Duration,
    include_loopback: bool,
    /// Open connections by socket address, until they close or their hold runs out.
    pending: HashMap<u64, Pending>,
    /// Connections due for reporting, waiting for the process table to learn their process.
    settling: VecDeque<Pending>,
}

impl ebpf::Reader for Reader {
    fn record(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        match ConnRecord::decode(bytes) {
            Some(record) => self.handle(record).then_some(()).ok_or(Gone),
            None => {
                self.tx.count_drop(1);
                Ok(())
            }
        }
    }

    fn due(&mut self, now: Instant) -> Result<Option<Instant>, Gone> {
        if !self.report_due() {
            return Err(Gone);
        }
        Ok(self.next_due(now))
    }

    fn lost(&mut self, grown: &[u64]) -> Result<(), Gone> {
        self.report_losses(grown).then_some(()).ok_or(Gone)
    }

    fn failed(&mut self, error: io::Error) {
        let notice = Notice::error(
            SENSOR,
            format!("reading the eBPF ring buffer failed: {error}"),
        );
        let _ = self.tx.blocking_send(notice.logged());
    }
}

impl Reader {
    /// Returns false once nobody is listening any more.
    fn handle(&mut self, record: ConnRecord) -> bool {
        if !self.include_loopback && record.remote.0.is_loopback() {
            return true;
        }
        let now = Instant::now();
        if !record.closed {
            if self.pending.len() + self.settling.len() >= MAX_PENDING {
                let event = self.event(&record, None);
                return self.tx.blocking_send(event).is_ok();
            }
            let pending = Pending {
                record,
                seen: now,
                due: now + self.hold,
                closed: None,
            };
            // The kernel reuses a freed socket's memory at once: an address still open here
            // means its close record was lost (and counted); report the old one as it is.
            if let Some(old) = self.pending.insert(pending.record.sock, pending) {
                self.settling.push_back(Pending { due: now, ..old });
            }
            return true;
        }
        let bytes = Some((record.bytes_sent, record.bytes_received));
        match self.pending.remove(&record.sock) {
            Some(open) => self.settling.push_back(Pending {
                due: now + SETTLE,
                closed: bytes,
                ..open
            }),
            // An attempt whose handshake never completed.
            None if !record.established => self.settling.push_back(Pending {
                record,
                seen: now,
                due: now + SETTLE,
                closed: bytes,
            }),
            // Reported when its hold ran out.
            None => {}
        }
        true
    }

    /// Reports the connections whose close has settled or whose hold ran out, once the process
    /// table knows their process (or it has been too long).
    fn report_due(&mut self) -> bool {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.due <= now)
            .map(|(sock, _)| *sock)
            .collect();
        for sock in expired {
            if let Some(open) = self.pending.remove(&sock) {
                self.settling.push_back(open);
            }
        }
        for _ in 0..self.settling.len() {
            let Some(pending) = self.settling.pop_front() else {
                break;
            };
            let waited = now.saturating_duration_since(pending.seen);
            if pending.due > now
                || !self.table_knows(&pending.record) && waited < MAX_WAIT_FOR_PROCESS
            {
                self.settling.push_back(pending);
                continue;
            }
            let event = self.event(&pending.record, pending.closed);
            if self.tx.blocking_send(event).is_err() {
                return false;
            }
        }
        true
    }

    /// When a connection next falls due, or one due waiting for its process is to be looked at
    /// again.
    fn next_due(&self, now: Instant) -> Option<Instant> {
        let open = self.pending.values().map(|pending| pending.due);
        let settling = self.settling.iter().map(|pending| {
            if pending.due > now {
                pending.due
            } else {
                (now + RECHECK).min(pending.seen + MAX_WAIT_FOR_PROCESS)
            }
        });
        open.chain(settling).min()
    }

    /// Reports how much the kernel's loss counters grew: records that found the ring buffer
    /// full, and connections its table of connecting processes had no room for. The latter leave
    /// no record, so they are counted with the next record, which comes at the latest when one
    /// of the connections filling that table closes.
    fn report_losses(&mut self, losses: &[u64]) -> bool {
        let ring = losses.first().copied().unwrap_or(0);
        let table = losses.get(1).copied().unwrap_or(0);
        let mut notices = Vec::new();
        if ring > 0 {
            notices.push(Notice::overflow(
                SENSOR,
                format!("the kernel dropped {ring} connection records because the eBPF ring buffer was full"),
            ).count(ring));
        }
        if table > 0 {
            notices.push(Notice::overflow(
                SENSOR,
                format!("{table} connections were not followed: the kernel's table of connecting processes was full"),
            ).count(table));
        }
        notices
            .into_iter()
            .all(|notice| self.tx.blocking_send(notice.logged()).is_ok())
    }

    fn event(&self, record: &ConnRecord, bytes: Option<(u64, u64)>) -> NetEvent {
        NetEvent {
            process: Some(self.process(record)),
            protocol: "tcp".to_string(),
            local_addr: record.local.0.to_string(),
            local_port: record.local.1,
            remote_addr: record.remote.0.to_string(),
            remote_port: record.remote.1,
            remote_scope: remote_scope(record.remote.0).to_string(),
            bytes_sent: bytes.map(|(sent, _)| sent),
            bytes_received: bytes.map(|(_, received)| received),
        }
    }

    /// Whether the process table has recorded the process that connected (the same pid and start).
    fn table_knows(&self, record: &ConnRecord) -> bool {
        let started = record.started_ns / (1_000_000_000 / os::USER_HZ);
        self.table
            .entry(record.pid)
            .is_some_and(|entry| entry.snapshot.started.is_none_or(|s| s == started))
    }

    /// The process that connected: from the process table when it holds that very process (its
    /// start time matches), else what the kernel said at connect time.
    fn process(&self, record: &ConnRecord) -> ProcessInfo {
        let started = record.started_ns / (1_000_000_000 / os::USER_HZ);
        if let Some(info) = self.table.info(record.pid) {
            let same = self
                .table
                .entry(record.pid)
                .is_none_or(|entry| entry.snapshot.started.is_none_or(|s| s == started));
            if same {
                return info;
            }
        }
        ProcessInfo {
            pid: record.pid,
            ppid: None,
            exe: String::new(),
            cmdline: format!("[{}]", record.comm),
            user: self.table.user_name(record.uid),
            uid: Some(record.uid),
            ancestry: Default::default(),
        }
    }
}
