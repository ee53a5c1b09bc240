//! The eBPF backend for TCP: a program on the `inet_sock_set_state` tracepoint
//! (`agent/sensors/ebpf/bpf/network.bpf.c`) remembers the process that called connect() when the
//! socket enters SYN_SENT, in that process's own context, and reports the connection when its
//! handshake completes and again when it closes, with the bytes that went each way. So a
//! connection of a few milliseconds from a process that is gone a moment later still names it.
//!
//! A connection that closes within the sensor's `interval` of its handshake is one `net.connect`,
//! at its close, with its bytes. One still open then is reported then as a `net.connect` without
//! them, and again at its close as a `net.close` with the bytes and the same process, so a long
//! upload says how much left. A connection attempt that never completed its handshake is reported
//! at its close, as a `net.connect`. Losses in the kernel (ring buffer or connection table full)
//! are counted there and reported as `sensor.overflow`; so are closes that will not be reported
//! because the agent already follows [`MAX_PENDING`] connections.
//!
//! Latency: a `net.connect` leaves [`SETTLE`] after a close within `interval` (so that the exec of
//! a process that connected at once has reached the process table), or when `interval` runs out;
//! a `net.close` leaves as soon as its record is read (the reader wakes for every record). A
//! process still running is read from `/proc` at once if the process table does not know it yet; only for one that is gone and unknown does the event wait, up to
//! [`MAX_WAIT_FOR_PROCESS`], for the process sensor's record of it, and then names what the kernel
//! said at connect time (its pid, uid and command name).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

use bannin::event::{NetAction, NetEvent, ProcessInfo};
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
/// How often an event due for reporting looks again whether its process can be named: the
/// process table tells nobody when it learns of one.
const RECHECK: Duration = Duration::from_millis(100);
/// Connections open (reported or not) or settling; past this, a new one is reported at once
/// without bytes, and its close is counted as dropped.
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
        connections: Connections::new(config.interval, config.include_loopback),
        out: Vec::new(),
    };
    std::thread::Builder::new()
        .name("bannin-ebpf-net".into())
        .spawn(move || loaded.read_until_stopped(&mut reader, &stop))
}

struct Reader {
    table: ProcessTable,
    tx: EventTx,
    connections: Connections,
    /// Events decided in this round, sent before the next wait.
    out: Vec<NetEvent>,
}

impl ebpf::Reader for Reader {
    fn record(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        match ConnRecord::decode(bytes) {
            Some(record) => {
                self.connections
                    .record(record, Instant::now(), &self.table, &mut self.out)
            }
            None => self.tx.count_drop(1),
        }
        Ok(())
    }

    fn due(&mut self, now: Instant) -> Result<Option<Instant>, Gone> {
        self.connections.report_due(now, &self.table, &mut self.out);
        let untracked = std::mem::take(&mut self.connections.untracked);
        if untracked > 0 {
            self.tx.count_drop(untracked);
        }
        for event in self.out.drain(..) {
            self.tx.blocking_send(event).map_err(|_| Gone)?;
        }
        Ok(self.connections.next_due(now))
    }

    /// Reports how much the kernel's loss counters grew: records that found the ring buffer
    /// full, and connections its table of connecting processes had no room for. The latter leave
    /// no record, so they are counted with the next record, which comes at the latest when one
    /// of the connections filling that table closes.
    fn lost(&mut self, losses: &[u64]) -> Result<(), Gone> {
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
        for notice in notices {
            self.tx.blocking_send(notice.logged()).map_err(|_| Gone)?;
        }
        Ok(())
    }

    fn failed(&mut self, error: io::Error) {
        let notice = Notice::error(
            SENSOR,
            format!("reading the eBPF ring buffer failed: {error}"),
        );
        let _ = self.tx.blocking_send(notice.logged());
    }
}

/// Where one open connection stands.
enum Stage {
    /// Within its hold: a close now makes it one `net.connect` with its bytes.
    Held,
    /// Its hold ran out and its `net.connect` waits in `settling` for its process.
    Announcing,
    /// Reported open, by this process; its close is reported as `net.close`.
    Reported(ProcessInfo),
}

/// A connection open in the kernel.
struct Open {
    record: ConnRecord,
    /// Tells this connection from a later one on the same socket address.
    serial: u64,
    /// When its open record arrived.
    seen: Instant,
    stage: Stage,
}

/// An event decided on, waiting for its moment and its process.
struct Due {
    record: ConnRecord,
    /// The open connection it announces, for a `net.connect` whose hold ran out.
    serial: Option<u64>,
    seen: Instant,
    due: Instant,
    /// Bytes sent and received, once it closed.
    closed: Option<(u64, u64)>,
    action: NetAction,
    /// Known already for a `net.close`: the process its `net.connect` named.
    process: Option<ProcessInfo>,
}

/// The reporting logic, apart from the ring buffer: which connection is reported when, and as
/// what. A connection that closes within `hold` of its handshake is one `net.connect` with its
/// bytes; a longer one is a `net.connect` when `hold` runs out and a `net.close` with its bytes
/// when it closes.
struct Connections {
    hold: Duration,
    include_loopback: bool,
    /// Open connections by socket address. The kernel reuses a freed socket's memory at once, so
    /// a closed connection leaves this map before anything else is done with it.
    open: HashMap<u64, Open>,
    /// Held connections in the order their hold runs out: (socket, serial, when).
    held: VecDeque<(u64, u64, Instant)>,
    /// Events due or nearly due, waiting for the process table to learn their process.
    settling: VecDeque<Due>,
    next_serial: u64,
    /// Closes that will not be reported because the state was full: counted as dropped.
    untracked: u64,
}

impl Connections {
    fn new(hold: Duration, include_loopback: bool) -> Self {
        Connections {
            hold,
            include_loopback,
            open: HashMap::new(),
            held: VecDeque::new(),
            settling: VecDeque::new(),
            next_serial: 0,
            untracked: 0,
        }
    }

    /// Takes in one record; an event that cannot wait goes to `out`.
    fn record(
        &mut self,
        record: ConnRecord,
        now: Instant,
        table: &ProcessTable,
        out: &mut Vec<NetEvent>,
    ) {
        if !self.include_loopback && record.remote.0.is_loopback() {
            return;
        }
        if !record.closed {
            self.opened(record, now, table, out);
            return;
        }
        let bytes = Some((record.bytes_sent, record.bytes_received));
        let Some(open) = self.open.remove(&record.sock) else {
            // An attempt whose handshake never completed is reported at its close. An
            // established one nobody followed was counted when it was not followed, or its open
            // record was lost in the kernel (counted there).
            if !record.established {
                self.settling.push_back(Due {
                    record,
                    serial: None,
                    seen: now,
                    due: now + SETTLE,
                    closed: bytes,
                    action: NetAction::Connect,
                    process: None,
                });
            }
            return;
        };
        match open.stage {
            Stage::Held => self.settling.push_back(Due {
                record: open.record,
                serial: None,
                seen: open.seen,
                due: now + SETTLE,
                closed: bytes,
                action: NetAction::Connect,
                process: None,
            }),
            // Not reported yet: its one event carries the bytes.
            Stage::Announcing => {
                if let Some(due) = self
                    .settling
                    .iter_mut()
                    .find(|due| due.serial == Some(open.serial))
                {
                    due.closed = bytes;
                }
            }
            // The close names the process its open named, so it waits for nothing. Its ends are
            // the open record's: by the close the kernel may have handed the local port on (to
            // the TIME_WAIT socket) and zeroed it here.
            Stage::Reported(process) => self.settling.push_back(Due {
                record: open.record,
                serial: None,
                seen: now,
                due: now,
                closed: bytes,
                action: NetAction::Close,
                process: Some(process),
            }),
        }
    }

    fn opened(
        &mut self,
        record: ConnRecord,
        now: Instant,
        table: &ProcessTable,
        out: &mut Vec<NetEvent>,
    ) {
        if self.open.len() + self.settling.len() >= MAX_PENDING {
            // Reported at once, without bytes, and its close cannot be.
            out.push(event(
                &record,
                process(table, &record),
                None,
                NetAction::Connect,
            ));
            self.untracked += 1;
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let sock = record.sock;
        let open = Open {
            record,
            serial,
            seen: now,
            stage: Stage::Held,
        };
        // An address still open here means its close record was lost (and counted in the
        // kernel): a connection not yet reported is reported as it is, one reported open has
        // nothing more to say.
        if let Some(old) = self.open.insert(sock, open)
            && matches!(old.stage, Stage::Held)
        {
            self.settling.push_back(Due {
                record: old.record,
                serial: None,
                seen: old.seen,
                due: now,
                closed: None,
                action: NetAction::Connect,
                process: None,
            });
        }
        self.held.push_back((sock, serial, now + self.hold));
    }

    /// Moves the connections whose hold ran out to `settling`, and reports what is due once the
    /// process table knows its process, the process can be read from `/proc`, or it has been too
    /// long.
    fn report_due(&mut self, now: Instant, table: &ProcessTable, out: &mut Vec<NetEvent>) {
        while let Some(&(sock, serial, due)) = self.held.front() {
            if due > now {
                break;
            }
            self.held.pop_front();
            let Some(open) = self.open.get_mut(&sock) else {
                continue;
            };
            if open.serial != serial || !matches!(open.stage, Stage::Held) {
                continue;
            }
            open.stage = Stage::Announcing;
            self.settling.push_back(Due {
                record: open.record.clone(),
                serial: Some(serial),
                seen: open.seen,
                due: now,
                closed: None,
                action: NetAction::Connect,
                process: None,
            });
        }
        for _ in 0..self.settling.len() {
            let Some(mut due) = self.settling.pop_front() else {
                break;
            };
            let waited = now.saturating_duration_since(due.seen);
            if due.due > now
                || due.process.is_none()
                    && !knowable(table, &due.record)
                    && waited < MAX_WAIT_FOR_PROCESS
            {
                self.settling.push_back(due);
                continue;
            }
            let process = due
                .process
                .take()
                .unwrap_or_else(|| process(table, &due.record));
            if let Some(serial) = due.serial
                && due.closed.is_none()
                && let Some(open) = self.open.get_mut(&due.record.sock)
                && open.serial == serial
            {
                open.stage = Stage::Reported(process.clone());
            }
            out.push(event(&due.record, process, due.closed, due.action));
        }
    }

    /// When [`Self::report_due`] next has something to do after a round at `now`: a hold runs
    /// out, a close has settled, or an event waiting for its process is to look again.
    fn next_due(&self, now: Instant) -> Option<Instant> {
        let hold = self.held.front().map(|&(_, _, due)| due);
        let settling = self.settling.iter().map(|due| {
            if due.due > now {
                due.due
            } else {
                (now + RECHECK).min(due.seen + MAX_WAIT_FOR_PROCESS)
            }
        });
        hold.into_iter().chain(settling).min()
    }
}

fn event(
    record: &ConnRecord,
    process: ProcessInfo,
    bytes: Option<(u64, u64)>,
    action: NetAction,
) -> NetEvent {
    NetEvent {
        action,
        process: Some(process),
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

/// The connecting process's start, in the unit of `/proc` and the process table.
fn started(record: &ConnRecord) -> u64 {
    record.started_ns / (1_000_000_000 / os::USER_HZ)
}

/// Whether the process that connected can be named now: the process table has recorded it (the
/// same pid and start), or it still runs and `/proc` can be read. Only a process that is gone
/// and unknown is worth waiting for, until the process sensor's record of its exec arrives.
fn knowable(table: &ProcessTable, record: &ConnRecord) -> bool {
    let started = started(record);
    table
        .entry(record.pid)
        .is_some_and(|entry| entry.snapshot.started.is_none_or(|s| s == started))
        || os::identity(record.pid).is_some_and(|live| live.started == started)
}

/// The process that connected: from the process table when it holds that very process (its
/// start time matches), else what the kernel said at connect time.
fn process(table: &ProcessTable, record: &ConnRecord) -> ProcessInfo {
    let started = started(record);
    if let Some(info) = table.info(record.pid) {
        let same = table
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
        user: table.user_name(record.uid),
        uid: Some(record.uid),
        ancestry: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::sensors::process::Snapshot;

    const HOLD: Duration = Duration::from_millis(300);

    /// Pids above the kernel's largest (2^22), so `/proc` never has them and the table answers.
    const FIRST_PID: u32 = 5_000_000;

    fn table() -> ProcessTable {
        ProcessTable::new(1000, Duration::from_secs(600))
    }

    /// A process the table knows, started at `pid` seconds after boot.
    fn known(table: &ProcessTable, pid: u32, exe: &str) {
        table.insert_live(Snapshot {
            pid,
            exe: exe.into(),
            cmdline: exe.into(),
            comm: exe.rsplit('/').next().unwrap_or(exe).into(),
            started: Some(u64::from(pid) * os::USER_HZ),
            ..Snapshot::default()
        });
    }

    fn open(sock: u64, pid: u32, local_port: u16) -> ConnRecord {
        let localhost: IpAddr = "10.0.0.5".parse().unwrap();
        ConnRecord {
            closed: false,
            pid,
            uid: 0,
            started_ns: u64::from(pid) * 1_000_000_000,
            comm: "client".into(),
            sock,
            local: (localhost, local_port),
            remote: ("203.0.113.9".parse().unwrap(), 443),
            bytes_sent: 0,
            bytes_received: 0,
            established: true,
        }
    }

    /// The close of `record`'s connection. Its local port reads 0, as the kernel's often does
    /// by then (the port went to the TIME_WAIT socket).
    fn close(record: &ConnRecord, sent: u64) -> ConnRecord {
        ConnRecord {
            closed: true,
            bytes_sent: sent,
            bytes_received: 2,
            local: (record.local.0, 0),
            ..record.clone()
        }
    }

    fn summary(events: &[NetEvent]) -> Vec<(&'static str, u32, String, u16, Option<u64>)> {
        events
            .iter()
            .map(|e| {
                let kind = match e.action {
                    NetAction::Connect => "net.connect",
                    NetAction::Close => "net.close",
                };
                let process = e.process.as_ref().unwrap();
                (
                    kind,
                    process.pid,
                    process.exe.clone(),
                    e.local_port,
                    e.bytes_sent,
                )
            })
            .collect()
    }

    /// The kernel hands a freed socket's memory to the next connection at once: many short
    /// connections in a row on one socket address, each from its own process, are each
    /// reported once, with their own process and bytes, never an earlier owner's.
    #[test]
    fn a_reused_socket_address_never_inherits_the_earlier_owner() {
        let table = table();
        let mut connections = Connections::new(HOLD, true);
        let start = Instant::now();
        let mut out = Vec::new();
        let mut expected = Vec::new();
        for i in 0..50u32 {
            let pid = FIRST_PID + i;
            let exe = format!("/usr/bin/client{i}");
            known(&table, pid, &exe);
            let now = start + Duration::from_millis(u64::from(i));
            let port = 40_000 + u16::try_from(i).unwrap();
            let record = open(0xffff_8880_0000_1000, pid, port);
            connections.record(record.clone(), now, &table, &mut out);
            connections.record(close(&record, 1000 + u64::from(i)), now, &table, &mut out);
            connections.report_due(now, &table, &mut out);
            expected.push(("net.connect", pid, exe, port, Some(1000 + u64::from(i))));
        }
        // Until SETTLE has passed, nothing is reported; then each connection once.
        assert!(out.is_empty(), "{out:?}");
        connections.report_due(start + Duration::from_secs(1), &table, &mut out);
        assert_eq!(summary(&out), expected);
        assert!(connections.open.is_empty() && connections.settling.is_empty());
    }

    /// A connection still open when its hold runs out is reported then without bytes, and at
    /// its close as `net.close` with its bytes and the same process, even when the process
    /// table has since forgotten it; the next connection on its socket address is its own.
    #[test]
    fn a_long_connection_is_reported_open_then_closed_with_its_bytes() {
        let table = table();
        let mut connections = Connections::new(HOLD, true);
        let start = Instant::now();
        let mut out = Vec::new();
        known(&table, FIRST_PID, "/usr/bin/uploader");
        let upload = open(7, FIRST_PID, 40_000);
        connections.record(upload.clone(), start, &table, &mut out);
        connections.report_due(start + HOLD / 2, &table, &mut out);
        assert!(out.is_empty(), "{out:?}");
        connections.report_due(start + HOLD, &table, &mut out);
        assert_eq!(
            summary(&out),
            [(
                "net.connect",
                FIRST_PID,
                "/usr/bin/uploader".into(),
                40_000,
                None
            )]
        );
        assert_eq!(out[0].bytes_received, None);
        out.clear();

        // The same pid, now another program: the close still names the uploader.
        known(&table, FIRST_PID, "/usr/bin/other");
        let later = start + Duration::from_secs(30);
        connections.record(close(&upload, 3_000_001), later, &table, &mut out);
        connections.report_due(later, &table, &mut out);
        assert_eq!(
            summary(&out),
            [(
                "net.close",
                FIRST_PID,
                "/usr/bin/uploader".into(),
                40_000,
                Some(3_000_001)
            )]
        );
        assert_eq!(out[0].bytes_received, Some(2));
        out.clear();

        known(&table, FIRST_PID + 1, "/usr/bin/next");
        let next = open(7, FIRST_PID + 1, 40_001);
        connections.record(next.clone(), later, &table, &mut out);
        connections.record(close(&next, 10), later, &table, &mut out);
        connections.report_due(later + SETTLE, &table, &mut out);
        assert_eq!(
            summary(&out),
            [(
                "net.connect",
                FIRST_PID + 1,
                "/usr/bin/next".into(),
                40_001,
                Some(10)
            )]
        );
    }

    /// A connection whose hold ran out while its process is unknown (gone, and the process
    /// sensor behind) waits for it; if it closes meanwhile it is one `net.connect` with bytes.
    #[test]
    fn a_connection_closing_while_its_announcement_waits_is_one_event_with_bytes() {
        let table = table();
        let mut connections = Connections::new(HOLD, true);
        let start = Instant::now();
        let mut out = Vec::new();
        let record = open(9, FIRST_PID + 7, 40_000);
        connections.record(record.clone(), start, &table, &mut out);
        connections.report_due(start + HOLD, &table, &mut out);
        assert!(out.is_empty(), "waits for its process: {out:?}");
        connections.record(close(&record, 500), start + HOLD, &table, &mut out);
        known(&table, FIRST_PID + 7, "/usr/bin/late");
        connections.report_due(start + HOLD + SETTLE, &table, &mut out);
        assert_eq!(
            summary(&out),
            [(
                "net.connect",
                FIRST_PID + 7,
                "/usr/bin/late".into(),
                40_000,
                Some(500)
            )]
        );
    }

    /// The reader sleeps with no timeout unless `next_due` names a moment: it must name the
    /// moment each waiting connection can be reported.
    #[test]
    fn the_reader_wakes_when_a_hold_runs_out_a_close_settles_or_a_process_is_sought_again() {
        let table = table();
        let mut connections = Connections::new(HOLD, true);
        let start = Instant::now();
        let mut out = Vec::new();
        assert_eq!(connections.next_due(start), None, "nothing waits");

        known(&table, FIRST_PID, "/usr/bin/short");
        let short = open(1, FIRST_PID, 40_000);
        connections.record(short.clone(), start, &table, &mut out);
        connections.report_due(start, &table, &mut out);
        assert_eq!(connections.next_due(start), Some(start + HOLD));
        let closed = start + HOLD / 2;
        connections.record(close(&short, 10), closed, &table, &mut out);
        connections.report_due(closed, &table, &mut out);
        assert_eq!(connections.next_due(closed), Some(closed + SETTLE));
        connections.report_due(closed + SETTLE, &table, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");

        // Gone and unknown: looked for again every RECHECK, until MAX_WAIT_FOR_PROCESS.
        let later = start + HOLD * 2;
        let unknown = open(2, FIRST_PID + 9, 40_001);
        connections.record(unknown.clone(), later, &table, &mut out);
        connections.record(close(&unknown, 5), later, &table, &mut out);
        let settled = later + SETTLE;
        connections.report_due(settled, &table, &mut out);
        assert_eq!(out.len(), 1, "waits for its process: {out:?}");
        assert_eq!(connections.next_due(settled), Some(settled + RECHECK));
        let last = later + MAX_WAIT_FOR_PROCESS - RECHECK / 2;
        connections.report_due(last, &table, &mut out);
        assert_eq!(out.len(), 1, "still waits for its process: {out:?}");
        assert_eq!(
            connections.next_due(last),
            Some(later + MAX_WAIT_FOR_PROCESS)
        );
        connections.report_due(later + MAX_WAIT_FOR_PROCESS, &table, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    /// Past MAX_PENDING followed connections, a new one is reported at once without bytes and
    /// its close, which will not be reported, is counted.
    #[test]
    fn connections_past_the_bound_are_reported_at_once_and_their_closes_counted() {
        let table = table();
        known(&table, FIRST_PID, "/usr/bin/many");
        let mut connections = Connections::new(HOLD, true);
        let start = Instant::now();
        let mut out = Vec::new();
        for sock in 0..MAX_PENDING as u64 {
            connections.record(open(sock, FIRST_PID, 1), start, &table, &mut out);
        }
        assert!(out.is_empty());
        let extra = open(u64::MAX, FIRST_PID, 2);
        connections.record(extra.clone(), start, &table, &mut out);
        assert_eq!(
            summary(&out),
            [("net.connect", FIRST_PID, "/usr/bin/many".into(), 2, None)]
        );
        assert_eq!(connections.untracked, 1);
        out.clear();
        connections.record(close(&extra, 5), start, &table, &mut out);
        connections.report_due(start + SETTLE, &table, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
