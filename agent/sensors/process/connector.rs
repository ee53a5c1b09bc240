//! The Linux process-events connector: the kernel multicasts every fork, exec and exit on a netlink
//! socket (`NETLINK_CONNECTOR`, group `CN_IDX_PROC`) once a privileged listener asks for them.
//!
//! The socket is opened with `socket2` and bound with `nix`, and messages are decoded from plain
//! bytes, so this module needs no `unsafe`. One dedicated thread reads the socket and reads `/proc`
//! for each exec at once, because a short-lived process is gone within a millisecond; it hands the
//! finished events through a bounded queue to a second thread that waits on the spool. The kernel
//! numbers its messages per CPU, so every message the socket could not hold is counted from the gaps
//! and reported as `sensor.overflow`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use bannin::event::{Body, ProcessAction, ProcessEvent, SensorEvent};
use nix::sys::socket::{MsgFlags, NetlinkAddr, bind, recv, setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::time::Instant;

use super::os;
use super::table::{ProcessTable, Snapshot};
use crate::pipeline::{self, EventTx, LossySender};
use crate::sensors::netlink::{self, NLMSG_HEADER, u16_at, u32_at};
use crate::sensors::{Notice, Stop};

const AF_NETLINK: i32 = 16;
const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const NLMSG_DONE: u16 = 3;
const PROC_CN_MCAST_LISTEN: u32 = 1;

const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

const CN_MSG_HEADER: usize = 20;
const PROC_EVENT_HEADER: usize = 16;

/// Large enough for a burst of thousands of execs while the reader is busy with `/proc`; the kernel
/// only honours more than its `rmem_max` for a privileged socket (`SO_RCVBUFFORCE`).
const RECEIVE_BUFFER: usize = 16 * 1024 * 1024;
/// How long a read of the subscription's acknowledgement waits before its deadline is looked at.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// How often losses are summed into one `sensor.overflow` event.
const REPORT_EVERY: Duration = Duration::from_secs(1);

pub const SOURCE: &str = "proc_connector";

/// Why the connector could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot open the netlink connector socket: {source}")]
    Socket { source: io::Error },
    #[error("cannot subscribe to process events: {source}")]
    Subscribe { source: io::Error },
    #[error("the kernel refused process events (error {errno})")]
    Refused { errno: u32 },
    #[error("the kernel did not acknowledge the subscription")]
    NoAck,
}

/// One decoded message from the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Ack {
        ack: u32,
        errno: u32,
    },
    Fork {
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    Exec {
        tgid: u32,
    },
    Exit {
        pid: u32,
        tgid: u32,
        code: u32,
    },
    Other,
}

/// A message with the kernel's per-CPU sequence number, from which losses are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Numbered {
    cpu: u32,
    seq: u32,
    message: Message,
}

/// Decodes every netlink message in one datagram; anything malformed ends the datagram.
fn decode(datagram: &[u8]) -> Vec<Numbered> {
    netlink::payloads(datagram)
        .into_iter()
        .filter_map(decode_cn_msg)
        .collect()
}

fn decode_cn_msg(cn: &[u8]) -> Option<Numbered> {
    if u32_at(cn, 0)? != CN_IDX_PROC || u32_at(cn, 4)? != CN_VAL_PROC {
        return None;
    }
    let seq = u32_at(cn, 8)?;
    let ack = u32_at(cn, 12)?;
    let data_len = usize::from(u16_at(cn, 16)?);
    let event = cn.get(CN_MSG_HEADER..CN_MSG_HEADER + data_len)?;
    let what = u32_at(event, 0)?;
    let cpu = u32_at(event, 4)?;
    let data = event.get(PROC_EVENT_HEADER..)?;
    let message = match what {
        PROC_EVENT_NONE => Message::Ack {
            ack,
            errno: u32_at(data, 0)?,
        },
        PROC_EVENT_FORK => Message::Fork {
            parent_tgid: u32_at(data, 4)?,
            child_pid: u32_at(data, 8)?,
            child_tgid: u32_at(data, 12)?,
        },
        PROC_EVENT_EXEC => Message::Exec {
            tgid: u32_at(data, 4)?,
        },
        PROC_EVENT_EXIT => Message::Exit {
            pid: u32_at(data, 0)?,
            tgid: u32_at(data, 4)?,
            code: u32_at(data, 8)?,
        },
        _ => Message::Other,
    };
    Some(Numbered { cpu, seq, message })
}

/// The kernel reports a wait status: an exit code in the second byte, or the killing signal in the
/// low seven bits. A death by signal N is reported as -N.
pub(super) fn exit_code(status: u32) -> i32 {
    let signal = status & 0x7f;
    if signal == 0 {
        ((status >> 8) & 0xff) as i32
    } else {
        -(signal as i32)
    }
}

/// The subscription request: a netlink header, a connector header and the listen operation.
fn listen_request(ack: u32) -> Vec<u8> {
    let total = NLMSG_HEADER + CN_MSG_HEADER + 4;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&std::process::id().to_ne_bytes());
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // connector sequence
    msg.extend_from_slice(&ack.to_ne_bytes());
    msg.extend_from_slice(&4u16.to_ne_bytes()); // payload length
    msg.extend_from_slice(&0u16.to_ne_bytes()); // connector flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    msg
}

/// A subscribed connector socket.
pub struct Connector {
    socket: Socket,
}

impl Connector {
    /// Opens the socket, subscribes, and waits for the kernel to confirm: without that, a socket in
    /// a container's namespace would open fine and then stay silent forever.
    pub fn open() -> Result<Connector, ConnectorError> {
        Connector::open_with_buffer(RECEIVE_BUFFER)
    }

    /// [`Connector::open`] with another receive buffer size: tests make it tiny to overflow it.
    fn open_with_buffer(receive_buffer: usize) -> Result<Connector, ConnectorError> {
        let socket = Socket::new(
            Domain::from(AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(NETLINK_CONNECTOR)),
        )
        .map_err(|source| ConnectorError::Socket { source })?;
        if setsockopt(&socket, sockopt::RcvBufForce, &receive_buffer).is_err() {
            // Without privilege the kernel caps the request at rmem_max, which is still the most
            // it allows.
            let _ = socket.set_recv_buffer_size(receive_buffer);
        }
        bind(socket.as_raw_fd(), &NetlinkAddr::new(0, CN_IDX_PROC)).map_err(|errno| {
            ConnectorError::Socket {
                source: io::Error::from(errno),
            }
        })?;
        socket
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|source| ConnectorError::Socket { source })?;

        let ack = (std::process::id() << 8) | 0x5a;
        (&socket)
            .write_all(&listen_request(ack))
            .map_err(|source| ConnectorError::Subscribe { source })?;
        let mut connector = Connector { socket };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < deadline {
            let datagram = match connector.read(&mut buf) {
                Ok(datagram) => datagram,
                Err(error) if is_timeout(&error) => continue,
                Err(source) => return Err(ConnectorError::Subscribe { source }),
            };
            for numbered in decode(datagram) {
                if let Message::Ack { ack: got, errno } = numbered.message
                    && got == ack.wrapping_add(1)
                {
                    return match errno {
                        0 => Ok(connector),
                        errno => Err(ConnectorError::Refused { errno }),
                    };
                }
            }
        }
        Err(ConnectorError::NoAck)
    }

    fn read<'a>(&mut self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        let n = self.socket.read(buf)?;
        Ok(&buf[..n])
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn is_overflow(error: &io::Error) -> bool {
    error.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32)
}

/// Settings the reader thread needs.
pub struct Settings {
    pub queue_capacity: usize,
    pub io_sample_interval: Duration,
}

/// Starts the reader and sender threads; they stop when `stop` is set or the spool goes away.
pub fn spawn(
    connector: Connector,
    settings: Settings,
    table: ProcessTable,
    tx: EventTx,
    stop: Stop,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (queue, sender) = spawn_sender(&tx, table.clone(), settings.queue_capacity, SOURCE)?;
    let reader = std::thread::Builder::new()
        .name("bannin-proc-read".into())
        .spawn(move || {
            let mut reader = Reader {
                connector,
                table,
                queue,
                gaps: Gaps::default(),
                lost: 0,
                overflowed: false,
                next_report: Instant::now() + REPORT_EVERY,
                sampler: Sampler::new(settings.io_sample_interval),
            };
            learn_running(&reader.table);
            reader.run(&stop);
        })?;
    Ok(vec![reader, sender])
}

/// Starts the thread that turns a kernel-fed backend's jobs into events for the spool, and
/// returns the queue that feeds it: the reader must never wait on the spool, so a full queue
/// counts the event as dropped instead.
pub(super) fn spawn_sender(
    tx: &EventTx,
    table: ProcessTable,
    capacity: usize,
    source: &'static str,
) -> io::Result<(LossySender<Job>, std::thread::JoinHandle<()>)> {
    let (queue, mut queued) = pipeline::lossy::<Job>(tx, capacity);
    let sender_tx = tx.clone();
    let sender = std::thread::Builder::new()
        .name("bannin-proc-send".into())
        .spawn(move || {
            while let Some(job) = queued.blocking_recv() {
                if sender_tx.blocking_send(job.event(&table, source)).is_err() {
                    return;
                }
            }
        })?;
    Ok((queue, sender))
}

/// Each CPU numbers its messages 0, 1, 2...: a jump means messages the socket had no room for.
#[derive(Default)]
struct Gaps {
    last_seq: HashMap<u32, u32>,
}

impl Gaps {
    /// How many messages from `cpu` were lost just before this one.
    fn count(&mut self, cpu: u32, seq: u32) -> u64 {
        let Some(last) = self.last_seq.insert(cpu, seq) else {
            return 0;
        };
        let gap = seq.wrapping_sub(last).wrapping_sub(1);
        // A huge "gap" is a counter that went backwards, not a loss.
        if gap < u32::MAX / 2 {
            u64::from(gap)
        } else {
            0
        }
    }
}

/// How many messages the reader takes from the socket at once.
const MAX_BATCH: usize = 512;

/// Reads `/proc` for the execs in a batch before anything else in it: when the reader is behind,
/// a short-lived program is gone within a millisecond, and forks and exits can wait. A pid that
/// execs twice in one batch is read in turn instead, so each exec gets its own program.
fn read_execs_early(table: &ProcessTable, batch: &[Numbered]) -> HashMap<u32, Option<Snapshot>> {
    let mut execs: HashMap<u32, usize> = HashMap::new();
    for numbered in batch {
        if let Message::Exec { tgid } = numbered.message {
            *execs.entry(tgid).or_default() += 1;
        }
    }
    execs
        .into_iter()
        .filter(|(_, count)| *count == 1)
        .map(|(pid, _)| (pid, table.load(pid)))
        .collect()
}

/// What the reader hands the sender: the facts, read in time; the sender turns them into events
/// with ancestry, which costs the reader nothing.
pub(super) enum Job {
    Start(Snapshot),
    Exit {
        snapshot: Snapshot,
        io: Option<(u64, u64)>,
        status: u32,
    },
    Report(SensorEvent),
}

impl Job {
    fn event(self, table: &ProcessTable, source: &str) -> Body {
        match self {
            Job::Start(snapshot) => {
                process_event(table, &snapshot, ProcessAction::Start, source).into()
            }
            Job::Exit {
                snapshot,
                io,
                status,
            } => {
                let mut event = process_event(table, &snapshot, ProcessAction::Exit, source);
                event.exit_code = Some(exit_code(status));
                event.read_bytes = io.map(|(read, _)| read);
                event.write_bytes = io.map(|(_, written)| written);
                event.into()
            }
            Job::Report(event) => event.into(),
        }
    }
}

fn process_event(
    table: &ProcessTable,
    snapshot: &Snapshot,
    action: ProcessAction,
    source: &str,
) -> ProcessEvent {
    let mut process = table.describe(snapshot);
    // Like ps, show the kernel's short name in brackets when the command line is gone.
    if process.cmdline.is_empty() && !snapshot.comm.is_empty() {
        process.cmdline = format!("[{}]", snapshot.comm);
    }
    ProcessEvent {
        action,
        process,
        cwd: snapshot.cwd.clone(),
        start_ts: snapshot.start_ts,
        exit_code: None,
        read_bytes: None,
        write_bytes: None,
        source: source.to_string(),
    }
}

struct Reader {
    connector: Connector,
    table: ProcessTable,
    queue: LossySender<Job>,
    gaps: Gaps,
    lost: u64,
    overflowed: bool,
    next_report: Instant,
    sampler: Sampler,
}

/// With sampling off, the table is still checked this often for processes whose exit was lost.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Reader {
    fn run(&mut self, stop: &Stop) {
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.is_set() {
            // Asleep until the kernel sends, the sensor stops, or a duty is due: no polling.
            let wait = self.next_duty().saturating_duration_since(Instant::now());
            let ready = stop.wait_readable(&[self.connector.socket.as_fd()], Some(wait));
            let read = match ready {
                Ok(true) => self.connector.read(&mut buf),
                Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                Err(error) => Err(error),
            };
            match read {
                Ok(datagram) => {
                    let mut batch = decode(datagram);
                    self.read_queued(&mut buf, &mut batch);
                    let mut early = read_execs_early(&self.table, &batch);
                    for numbered in batch {
                        self.lost += self.gaps.count(numbered.cpu, numbered.seq);
                        if !self.handle(numbered.message, &mut early) {
                            return;
                        }
                    }
                }
                Err(error) if is_timeout(&error) => {}
                Err(error) if is_overflow(&error) => self.overflowed = true,
                Err(error) => {
                    let notice =
                        Notice::error("process", format!("reading process events failed: {error}"));
                    self.queue(Job::Report(notice.logged()));
                    return;
                }
            }
            if !self.housekeeping() {
                return;
            }
        }
    }

    /// Adds whatever else the socket already holds to `batch` (up to [`MAX_BATCH`] messages),
    /// without waiting.
    fn read_queued(&mut self, buf: &mut [u8], batch: &mut Vec<Numbered>) {
        while batch.len() < MAX_BATCH {
            match recv(
                self.connector.socket.as_raw_fd(),
                buf,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => batch.extend(decode(&buf[..n])),
                Err(nix::errno::Errno::ENOBUFS) => self.overflowed = true,
                Err(_) => return,
            }
        }
    }

    /// Returns false once nobody is listening any more.
    fn handle(&mut self, message: Message, early: &mut HashMap<u32, Option<Snapshot>>) -> bool {
        match message {
            Message::Fork {
                parent_tgid,
                child_pid,
                child_tgid,
            } if child_pid == child_tgid => {
                self.table.record_fork(child_tgid, parent_tgid);
                true
            }
            Message::Exec { tgid } => {
                let job = self.exec(tgid, early.remove(&tgid));
                self.queue(job)
            }
            // Threads exit too; only the whole process's exit is an event.
            Message::Exit { pid, tgid, code } if pid == tgid => {
                let job = exit_job(&self.table, pid, code);
                self.queue(job)
            }
            _ => true,
        }
    }

    /// Reads the new program from `/proc` at once and records it; the event is built later.
    /// Records the new program, read from `/proc` now unless `early` already holds the reading.
    fn exec(&self, pid: u32, early: Option<Option<Snapshot>>) -> Job {
        let loaded = early.unwrap_or_else(|| self.table.load(pid));
        // Gone before it could be read: the event still counts, with what the fork told us.
        let mut snapshot = loaded.unwrap_or(Snapshot {
            pid,
            ..Snapshot::default()
        });
        if snapshot.ppid.is_none() {
            snapshot.ppid = self.table.ppid_of(pid);
        }
        self.table.insert_live(snapshot.clone());
        Job::Start(snapshot)
    }

    /// Hands an event to the sender thread without waiting: the socket must keep being read. A
    /// full queue counts the event as dropped. Returns false once the sender has gone.
    fn queue(&self, job: Job) -> bool {
        self.queue.push(job).is_ok()
    }

    /// When [`Self::housekeeping`] next has something to do: a loss to report (at most once a
    /// second), or the sampler's round.
    fn next_duty(&self) -> Instant {
        let sample = self.sampler.due();
        if self.lost > 0 || self.overflowed {
            sample.min(self.next_report)
        } else {
            sample
        }
    }

    fn housekeeping(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.next_report {
            self.next_report = now + REPORT_EVERY;
            if self.lost > 0 || self.overflowed {
                let event = Notice::overflow(
                    "process",
                    format!(
                        "the kernel dropped {} process events because the agent's socket was full",
                        self.lost
                    ),
                )
                .count(self.lost)
                .logged();
                self.lost = 0;
                self.overflowed = false;
                if !self.queue(Job::Report(event)) {
                    return false;
                }
            }
        }
        self.sampler.tick(&self.table, now);
        true
    }
}

/// Puts every process already running into the table, so their exits can name them.
pub(super) fn learn_running(table: &ProcessTable) {
    for pid in os::pids() {
        if let Some(snapshot) = table.load(pid) {
            table.insert_live(snapshot);
        }
    }
}

/// Records `pid`'s exit (wait status `status`) and returns the job naming it, with its I/O counters:
/// a zombie still has them until its parent reaps it; otherwise the last sample.
pub(super) fn exit_job(table: &ProcessTable, pid: u32, status: u32) -> Job {
    let io = os::io(pid);
    let mut entry = table.record_exit(pid, io);
    if entry.is_none()
        && let Some(snapshot) = table.load(pid)
    {
        table.insert_live(snapshot);
        entry = table.record_exit(pid, io);
    }
    let (snapshot, io) = match entry {
        Some(entry) => (entry.snapshot, entry.io),
        None => (
            Snapshot {
                pid,
                ..Snapshot::default()
            },
            io,
        ),
    };
    Job::Exit {
        snapshot,
        io,
        status,
    }
}

/// Keeps the I/O counters of running processes fresh and retires processes whose exit was lost.
pub(super) struct Sampler {
    every: Duration,
    next: Instant,
}

impl Sampler {
    pub(super) fn new(every: Duration) -> Sampler {
        Sampler {
            every,
            next: Instant::now(),
        }
    }

    /// When [`Self::tick`] next has work.
    pub(super) fn due(&self) -> Instant {
        self.next
    }

    pub(super) fn tick(&mut self, table: &ProcessTable, now: Instant) {
        if now < self.next {
            return;
        }
        self.next = now
            + if self.every.is_zero() {
                SWEEP_EVERY
            } else {
                self.every
            };
        for pid in table.live_pids() {
            match os::io(pid) {
                Some(io) if !self.every.is_zero() => table.set_io(pid, io),
                Some(_) => {}
                None if !os::is_alive(pid) => {
                    table.record_exit(pid, None);
                }
                None => {}
            }
        }
        table.expire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::event::SensorStatus;

    fn cn_message(seq: u32, ack: u32, what: u32, cpu: u32, data: &[u32]) -> Vec<u8> {
        let mut event = Vec::new();
        event.extend_from_slice(&what.to_ne_bytes());
        event.extend_from_slice(&cpu.to_ne_bytes());
        event.extend_from_slice(&0u64.to_ne_bytes());
        for word in data {
            event.extend_from_slice(&word.to_ne_bytes());
        }
        let total = NLMSG_HEADER + CN_MSG_HEADER + event.len();
        let mut msg = Vec::new();
        msg.extend_from_slice(&(total as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&ack.to_ne_bytes());
        msg.extend_from_slice(&(event.len() as u16).to_ne_bytes());
        msg.extend_from_slice(&[0; 2]);
        msg.extend_from_slice(&event);
        msg
    }

    #[test]
    fn decodes_fork_exec_exit_and_ack() {
        let mut datagram = cn_message(7, 0, PROC_EVENT_FORK, 1, &[10, 10, 11, 11]);
        datagram.extend(cn_message(8, 0, PROC_EVENT_EXEC, 1, &[11, 11]));
        datagram.extend(cn_message(
            9,
            0,
            PROC_EVENT_EXIT,
            1,
            &[11, 11, 7 << 8, 17, 10, 10],
        ));
        datagram.extend(cn_message(0, 43, PROC_EVENT_NONE, 0, &[0]));
        let decoded: Vec<Message> = decode(&datagram).into_iter().map(|n| n.message).collect();
        assert_eq!(
            decoded,
            [
                Message::Fork {
                    parent_tgid: 10,
                    child_pid: 11,
                    child_tgid: 11
                },
                Message::Exec { tgid: 11 },
                Message::Exit {
                    pid: 11,
                    tgid: 11,
                    code: 7 << 8
                },
                Message::Ack { ack: 43, errno: 0 },
            ]
        );
        assert!(decode(&datagram[..datagram.len() - 3]).len() == 3);
    }

    #[test]
    fn sequence_gaps_per_cpu_count_lost_messages() {
        let mut gaps = Gaps::default();
        assert_eq!(gaps.count(0, 10), 0);
        assert_eq!(gaps.count(1, 500), 0);
        assert_eq!(gaps.count(0, 11), 0);
        assert_eq!(gaps.count(0, 15), 3);
        assert_eq!(gaps.count(1, 501), 0);
        assert_eq!(gaps.count(1, 3), 0, "a counter going backwards is no loss");
        assert_eq!(gaps.count(2, u32::MAX - 1), 0);
        assert_eq!(gaps.count(2, 1), 2, "the counter wraps past u32::MAX and 0");
    }

    /// A socket too small for a burst loses messages; the sensor reports how many.
    #[test]
    fn an_overflowing_socket_is_reported_with_a_count() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let connector = Connector::open_with_buffer(4096).unwrap();
        // Nobody reads yet: the burst overflows the socket.
        for _ in 0..200 {
            std::process::Command::new("/bin/true").status().unwrap();
        }
        let (tx, mut rx) = crate::pipeline::channel("test-host");
        let stop = Stop::default();
        let settings = Settings {
            queue_capacity: 1024,
            io_sample_interval: Duration::ZERO,
        };
        let table = ProcessTable::new(100, Duration::from_secs(60));
        let threads = spawn(connector, settings, table, tx, stop.clone()).unwrap();
        // More messages after the loss, from every CPU, reveal the gaps.
        let mut lost = 0;
        crate::testing::wait_until("an overflow report", Duration::from_secs(20), || {
            std::process::Command::new("/bin/true").status().unwrap();
            while let Ok(event) = rx.try_recv() {
                if let Body::Sensor(sensor) = event.body
                    && sensor.status == SensorStatus::Overflow
                {
                    assert_eq!(sensor.sensor, "process");
                    lost += sensor.count;
                }
            }
            lost > 0
        });
        stop.set();
        drop(rx);
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn wait_statuses_become_exit_codes_or_negative_signals() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(7 << 8), 7);
        assert_eq!(exit_code(9), -9);
        assert_eq!(exit_code(0x80 | 11), -11);
    }
}
