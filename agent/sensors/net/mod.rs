//! The outbound-connection sensor: one `net.connect` event for each new outbound TCP connection or
//! connected UDP flow, with the process that owns it.
//!
//! On Linux it reads `/proc/net/{tcp,tcp6,udp,udp6}` every `interval` and finds each socket's owner
//! by the socket inode in `/proc/<pid>/fd`, scanning only when a socket it does not know appears.
//! Connections that open and close between two reads are caught from the kernel's socket
//! destruction notices ([`destroy`], root only), with their byte counts but without their process,
//! which is gone from the socket by then. Only sockets in the agent's own network namespace are
//! seen; connections already open when the sensor starts are reported at its first read.
//! Elsewhere the sensor reports that it cannot run.

#[cfg(target_os = "linux")]
mod destroy;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bannin::event::{NetEvent, SensorEvent, SensorStatus};
use serde::{Deserialize, Serialize};

use super::process::ProcessTable;
use crate::pipeline::EventTx;

const SENSOR: &str = "network";

/// `[network]`: outbound connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Whether to emit `net.connect` events. Default: true.
    pub enabled: bool,
    /// How often the socket tables are read. A connection that lives longer is reported with its
    /// process; a shorter one is still reported when it closes (as root, from the kernel's
    /// socket-destruction notices), with its bytes but without its process. Every read makes the
    /// kernel walk its whole connection table, the agent's largest idle cost (about 1.1% of a
    /// core at "1s" on a 24 GiB machine). Default: "5s".
    #[serde(with = "bannin::time::duration_str")]
    pub interval: Duration,
    /// Whether connected UDP sockets (DNS lookups, QUIC) are reported too. Default: true.
    pub include_udp: bool,
    /// Whether connections to 127.0.0.0/8 and ::1 are reported. Default: true.
    pub include_loopback: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enabled: true,
            interval: Duration::from_secs(5),
            include_udp: true,
            include_loopback: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("[network] interval must be at least 100ms")]
    IntervalTooShort,
    #[error("the spool writer has stopped")]
    Closed,
}

impl NetConfig {
    pub fn validate(&self) -> Result<(), NetError> {
        if self.interval < Duration::from_millis(100) {
            return Err(NetError::IntervalTooShort);
        }
        Ok(())
    }
}

/// The running sensor; dropping it stops the sensor (it holds nothing that needs flushing).
pub struct NetHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for NetHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the sensor and reports in a `sensor.status` event what it watches.
pub async fn spawn(
    config: NetConfig,
    tx: EventTx,
    table: ProcessTable,
) -> Result<NetHandle, NetError> {
    config.validate()?;
    let tx = tx.for_sensor(SENSOR);
    let mut handle = NetHandle {
        task: None,
        stop: Arc::new(AtomicBool::new(false)),
    };
    if config.enabled {
        handle.task = start(config, tx, table, handle.stop.clone()).await?;
    }
    Ok(handle)
}

#[cfg(target_os = "linux")]
async fn start(
    config: NetConfig,
    tx: EventTx,
    table: ProcessTable,
    stop: Arc<AtomicBool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, NetError> {
    let (closed_tx, closed_rx) = tokio::sync::mpsc::channel(CLOSED_QUEUE);
    let drops = tx.clone();
    let notices = destroy::spawn(config.include_udp, closed_tx, stop, move |n| {
        drops.count_drop(n)
    });
    let every = config.interval.as_millis();
    let (message, closed_rx) = match notices {
        Ok(_thread) => (
            format!(
                "reading the kernel's socket tables every {every}ms; connections closed before a \
                 read are reported from the kernel's socket destruction notices, without their process"
            ),
            Some(closed_rx),
        ),
        Err(error) => (
            format!(
                "reading the kernel's socket tables every {every}ms; connections shorter than that \
                 may be missed (socket destruction notices unavailable: {error})"
            ),
            None,
        ),
    };
    tracing::info!(backend = "procfs", %message, "network sensor started");
    tx.send(SensorEvent::new(SensorStatus::Status, SENSOR, message))
        .await
        .map_err(|_| NetError::Closed)?;
    Ok(Some(tokio::spawn(linux::run(config, tx, table, closed_rx))))
}

/// Destruction notices waiting for the sensor's task; more are counted as dropped.
#[cfg(target_os = "linux")]
const CLOSED_QUEUE: usize = 4096;

#[cfg(not(target_os = "linux"))]
async fn start(
    _config: NetConfig,
    tx: EventTx,
    _table: ProcessTable,
    _stop: Arc<AtomicBool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, NetError> {
    let message = "outbound connections are only watched on Linux";
    tracing::warn!(message);
    tx.send(SensorEvent::new(SensorStatus::Status, SENSOR, message))
        .await
        .map_err(|_| NetError::Closed)?;
    Ok(None)
}

/// Where an address leads: "public", "private", "loopback", "link_local", "multicast" or
/// "unspecified". Shared (CGNAT, 100.64.0.0/10) and unique-local (fc00::/7) space count as private.
pub fn remote_scope(ip: IpAddr) -> &'static str {
    match ip.to_canonical() {
        IpAddr::V4(v4) => scope_v4(v4),
        IpAddr::V6(v6) => scope_v6(v6),
    }
}

fn scope_v4(ip: Ipv4Addr) -> &'static str {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_link_local() || ip.is_broadcast() {
        // The limited broadcast address never leaves the link either.
        "link_local"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        "private"
    } else {
        "public"
    }
}

fn scope_v6(ip: Ipv6Addr) -> &'static str {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if first & 0xffc0 == 0xfe80 {
        "link_local"
    } else if ip.is_multicast() {
        "multicast"
    } else if first & 0xfe00 == 0xfc00 {
        "private"
    } else {
        "public"
    }
}

/// One socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Socket {
    udp: bool,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: u8,
    inode: u64,
}

/// A socket is the same connection as long as its inode and both ends are.
type Key = (u64, (IpAddr, u16), (IpAddr, u16));

impl Socket {
    fn key(&self) -> Key {
        (self.inode, self.local, self.remote)
    }
}

/// TCP states (include/net/tcp_states.h) in which a connection this host opened still has an owner.
const TCP_ESTABLISHED: u8 = 0x01;
const TCP_SYN_SENT: u8 = 0x02;
const TCP_FIN_WAIT1: u8 = 0x04;
const TCP_FIN_WAIT2: u8 = 0x05;
const TCP_CLOSE: u8 = 0x07;
const TCP_CLOSE_WAIT: u8 = 0x08;
const TCP_LAST_ACK: u8 = 0x09;
const TCP_LISTEN: u8 = 0x0a;
const TCP_CLOSING: u8 = 0x0b;

/// Parses one line of `/proc/net/{tcp,udp}{,6}`.
fn parse_line(line: &str, udp: bool) -> Option<Socket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_endpoint(fields.get(1)?)?;
    let remote = parse_endpoint(fields.get(2)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some(Socket {
        udp,
        local,
        remote,
        state,
        inode,
    })
}

/// `0100007F:1F90`: the address as the kernel's 32-bit words printed in host byte order, then the
/// port in hex.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in addr.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((ip.to_canonical(), port))
}

/// The ports this host serves on: TCP listeners and unconnected bound UDP sockets.
#[derive(Debug, Default)]
struct Services {
    tcp: HashSet<u16>,
    udp: HashSet<u16>,
}

impl Services {
    fn of(sockets: &[Socket]) -> Services {
        let mut services = Services::default();
        for socket in sockets {
            if socket.udp && socket.state == TCP_CLOSE {
                services.udp.insert(socket.local.1);
            } else if !socket.udp && socket.state == TCP_LISTEN {
                services.tcp.insert(socket.local.1);
            }
        }
        services
    }

    /// Whether a connection between these ends is one this host opened rather than accepted or
    /// answered.
    fn opened_here(&self, udp: bool, local: (IpAddr, u16), remote: (IpAddr, u16)) -> bool {
        let served = if udp { &self.udp } else { &self.tcp };
        remote.1 != 0 && !remote.0.is_unspecified() && !served.contains(&local.1)
    }
}

/// The sockets that are connections this host opened: not accepted from one of its listeners
/// (TCP), not answering on one of its bound ports (UDP), and with a known owner inode.
fn outbound(
    sockets: &[Socket],
    services: &Services,
    include_udp: bool,
    include_loopback: bool,
) -> Vec<Socket> {
    sockets
        .iter()
        .filter(|s| s.inode != 0 && services.opened_here(s.udp, s.local, s.remote))
        .filter(|s| include_loopback || !s.remote.0.is_loopback())
        .filter(|s| {
            if s.udp {
                include_udp && s.state == TCP_ESTABLISHED
            } else {
                matches!(
                    s.state,
                    TCP_ESTABLISHED
                        | TCP_SYN_SENT
                        | TCP_FIN_WAIT1
                        | TCP_FIN_WAIT2
                        | TCP_CLOSE_WAIT
                        | TCP_LAST_ACK
                        | TCP_CLOSING
                )
            }
        })
        .copied()
        .collect()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeSet;

    use super::*;
    use crate::sensors::process::os;

    /// How long the ends of a connection seen open are remembered, so that its destruction
    /// notice is not reported a second time.
    const REMEMBER_ENDS: Duration = Duration::from_secs(60);

    /// Both ends of a connection, with its protocol (`true` for UDP).
    type Ends = (bool, (IpAddr, u16), (IpAddr, u16));

    /// Reads the socket tables and remembers what it has reported and who owns which socket.
    pub struct Scanner {
        include_udp: bool,
        include_loopback: bool,
        reported: HashSet<Key>,
        owners: HashMap<u64, u32>,
        /// Processes that owned outbound connections before: daemons that connect again and
        /// again are looked at first, so a new connection rarely needs a walk of every process.
        connectors: BTreeSet<u32>,
        /// Reused for reading the socket tables.
        buffer: Vec<u8>,
        services: Services,
        seen_open: HashMap<Ends, tokio::time::Instant>,
    }

    impl Scanner {
        pub fn new(config: &NetConfig) -> Self {
            Scanner {
                include_udp: config.include_udp,
                include_loopback: config.include_loopback,
                reported: HashSet::new(),
                owners: HashMap::new(),
                connectors: BTreeSet::new(),
                buffer: Vec::new(),
                services: Services::default(),
                seen_open: HashMap::new(),
            }
        }

        /// New outbound connections since the last scan, each with its owner's pid if found.
        pub fn scan(&mut self) -> Vec<(Socket, Option<u32>)> {
            let mut sockets = Vec::new();
            let mut tables = vec![("/proc/net/tcp", false), ("/proc/net/tcp6", false)];
            if self.include_udp {
                tables.extend([("/proc/net/udp", true), ("/proc/net/udp6", true)]);
            }
            for (path, udp) in tables {
                // A host without IPv6 has no tcp6 table; that is not an error.
                if let Some(text) = read_table(path, &mut self.buffer) {
                    sockets.extend(text.lines().skip(1).filter_map(|l| parse_line(l, udp)));
                }
            }
            self.services = Services::of(&sockets);
            let current = outbound(
                &sockets,
                &self.services,
                self.include_udp,
                self.include_loopback,
            );
            let now = tokio::time::Instant::now();
            self.seen_open
                .retain(|_, seen| now.saturating_duration_since(*seen) < REMEMBER_ENDS);
            for socket in &current {
                self.seen_open
                    .insert((socket.udp, socket.local, socket.remote), now);
            }
            let fresh: Vec<Socket> = current
                .iter()
                .filter(|s| !self.reported.contains(&s.key()))
                .copied()
                .collect();
            // Forgetting closed connections keeps memory bounded by what is open now.
            self.reported = current.iter().map(Socket::key).collect();
            let missing: HashSet<u64> = fresh
                .iter()
                .map(|s| s.inode)
                .filter(|inode| !self.owners.contains_key(inode))
                .collect();
            if !missing.is_empty() {
                self.connectors.retain(|&pid| os::is_alive(pid));
                let likely = socket_owners(Some(&self.connectors));
                if missing.iter().all(|inode| likely.contains_key(inode)) {
                    self.owners.extend(likely);
                } else {
                    self.owners = socket_owners(None);
                }
            }
            let found: Vec<(Socket, Option<u32>)> = fresh
                .into_iter()
                .map(|s| (s, self.owners.get(&s.inode).copied()))
                .collect();
            self.connectors
                .extend(found.iter().filter_map(|(_, pid)| *pid));
            found
        }

        /// A destroyed socket that was an outbound connection no scan saw open, as an event.
        pub fn closed(&mut self, closed: destroy::Closed) -> Option<NetEvent> {
            if closed.udp && !self.include_udp
                || !self.include_loopback && closed.remote.0.is_loopback()
                || !self
                    .services
                    .opened_here(closed.udp, closed.local, closed.remote)
                || self
                    .seen_open
                    .remove(&(closed.udp, closed.local, closed.remote))
                    .is_some()
            {
                return None;
            }
            let socket = Socket {
                udp: closed.udp,
                local: closed.local,
                remote: closed.remote,
                state: TCP_CLOSE,
                inode: 0,
            };
            let mut event = event(socket, None);
            event.bytes_sent = closed.bytes_sent;
            event.bytes_received = closed.bytes_received;
            Some(event)
        }
    }

    /// Reads a socket table in as few `read` calls as possible: the kernel walks its whole
    /// connection hash table again at the start of every call, which made small reads the agent's
    /// largest idle cost.
    fn read_table<'a>(path: &str, buffer: &'a mut Vec<u8>) -> Option<&'a str> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).ok()?;
        if buffer.len() < 256 * 1024 {
            buffer.resize(256 * 1024, 0);
        }
        let mut filled = 0;
        loop {
            if filled == buffer.len() {
                buffer.resize(buffer.len() * 2, 0);
            }
            match file.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        std::str::from_utf8(&buffer[..filled]).ok()
    }

    /// Every socket inode open in the given processes (all of them for `None`), with the process.
    /// Sockets shared after a fork go to the lowest pid, usually the parent that opened them.
    fn socket_owners(only: Option<&BTreeSet<u32>>) -> HashMap<u64, u32> {
        let mut owners = HashMap::new();
        let mut pids: Vec<u32> = match only {
            Some(pids) => pids.iter().copied().collect(),
            None => os::pids(),
        };
        pids.sort_unstable();
        for pid in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let inode = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok());
                if let Some(inode) = inode {
                    owners.entry(inode).or_insert(pid);
                }
            }
        }
        owners
    }

    pub async fn run(
        config: NetConfig,
        tx: EventTx,
        table: ProcessTable,
        mut closed: Option<tokio::sync::mpsc::Receiver<destroy::Closed>>,
    ) {
        let mut scanner = Scanner::new(&config);
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Notices wait for the next scan, which first learns the host's current listeners: a
        // connection accepted by a listener opened since the last scan is not outbound.
        let mut pending = Vec::new();
        loop {
            let notice = async {
                match closed.as_mut() {
                    Some(closed) => closed.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                notice = notice => {
                    match notice {
                        Some(notice) if pending.len() < MAX_PENDING => pending.push(notice),
                        Some(_) => tx.count_drop(1),
                        None => closed = None,
                    }
                    continue;
                }
            }
            let table = table.clone();
            let notices = std::mem::take(&mut pending);
            let scanned = tokio::task::spawn_blocking(move || {
                let found = scanner.scan();
                // Asking the table may read /proc, so it happens off the runtime too.
                let mut events: Vec<NetEvent> = found
                    .into_iter()
                    .map(|(socket, pid)| event(socket, pid.and_then(|pid| table.info(pid))))
                    .collect();
                events.extend(notices.into_iter().filter_map(|n| scanner.closed(n)));
                (scanner, events)
            })
            .await;
            let events = match scanned {
                Ok((back, events)) => {
                    scanner = back;
                    events
                }
                Err(error) => {
                    tracing::error!(%error, "reading the socket tables failed; the sensor stops");
                    return;
                }
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Destruction notices held until the next scan; more are counted as dropped.
    const MAX_PENDING: usize = 65_536;

    fn event(socket: Socket, process: Option<bannin::event::ProcessInfo>) -> NetEvent {
        NetEvent {
            process,
            protocol: if socket.udp { "udp" } else { "tcp" }.to_string(),
            local_addr: socket.local.0.to_string(),
            local_port: socket.local.1,
            remote_addr: socket.remote.0.to_string(),
            remote_port: socket.remote.1,
            remote_scope: remote_scope(socket.remote.0).to_string(),
            bytes_sent: None,
            bytes_received: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> &'static str {
        remote_scope(text.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified_by_where_they_lead() {
        assert_eq!(scope("10.1.2.3"), "private");
        assert_eq!(scope("192.168.0.10"), "private");
        assert_eq!(scope("172.16.0.1"), "private");
        assert_eq!(scope("172.31.255.255"), "private");
        assert_eq!(scope("172.32.0.1"), "public");
        assert_eq!(scope("100.64.0.1"), "private");
        assert_eq!(scope("100.127.255.254"), "private");
        assert_eq!(scope("100.128.0.1"), "public");
        assert_eq!(scope("8.8.8.8"), "public");
        assert_eq!(scope("127.0.0.1"), "loopback");
        assert_eq!(scope("169.254.169.254"), "link_local");
        assert_eq!(scope("224.0.0.251"), "multicast");
        assert_eq!(scope("0.0.0.0"), "unspecified");
        assert_eq!(scope("::1"), "loopback");
        assert_eq!(scope("fe80::1"), "link_local");
        assert_eq!(scope("fc00::1"), "private");
        assert_eq!(scope("fd12:3456::1"), "private");
        assert_eq!(scope("ff02::fb"), "multicast");
        assert_eq!(scope("::"), "unspecified");
        assert_eq!(scope("2001:4860:4860::8888"), "public");
        assert_eq!(scope("::ffff:10.0.0.1"), "private");
        assert_eq!(scope("::ffff:8.8.8.8"), "public");
    }

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_named() {
        let empty: NetConfig = toml::from_str("").unwrap();
        assert_eq!(empty, NetConfig::default());
        let set: NetConfig = toml::from_str("interval = \"250ms\"\ninclude_udp = false").unwrap();
        assert_eq!(set.interval, Duration::from_millis(250));
        assert!(!set.include_udp);
        let error = toml::from_str::<NetConfig>("intervall = \"1s\"").unwrap_err();
        assert!(error.to_string().contains("intervall"), "{error}");
        let fast = NetConfig {
            interval: Duration::from_millis(10),
            ..NetConfig::default()
        };
        assert!(fast.validate().is_err());
    }

    #[test]
    fn kernel_socket_lines_are_parsed() {
        let v4 = "   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        let socket = parse_line(v4, false).unwrap();
        assert_eq!(socket.local, ("127.0.0.1".parse().unwrap(), 0xa1b2));
        assert_eq!(socket.remote, ("127.0.0.1".parse().unwrap(), 8080));
        assert_eq!(socket.state, TCP_ESTABLISHED);
        assert_eq!(socket.inode, 123_456);

        let v6 = "   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:0050 02 00000000:00000000 00:00000000 00000000     0        0 654321 1 0000000000000000 20 4 30 10 -1";
        let socket = parse_line(v6, false).unwrap();
        assert_eq!(socket.remote, ("::1".parse().unwrap(), 80));
        assert_eq!(socket.state, TCP_SYN_SENT);

        let mapped = "   0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 7 1";
        let socket = parse_line(mapped, false).unwrap();
        assert_eq!(socket.remote.0, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[cfg(target_os = "linux")]
    mod live {
        use std::net::{TcpListener, TcpStream, UdpSocket};

        use bannin::event::{Body, Event};
        use tokio::sync::mpsc;

        use super::*;
        use crate::pipeline;

        const PATIENCE: Duration = Duration::from_secs(15);

        async fn started() -> (NetHandle, mpsc::Receiver<Event>) {
            started_with(Duration::from_millis(100)).await.0
        }

        /// The sensor reading every `interval`, and its status message.
        async fn started_with(interval: Duration) -> ((NetHandle, mpsc::Receiver<Event>), String) {
            let (tx, mut rx) = pipeline::channel("test-host");
            let config = NetConfig {
                interval,
                ..NetConfig::default()
            };
            let table = ProcessTable::new(100, Duration::from_secs(60));
            let handle = spawn(config, tx, table).await.unwrap();
            let status = rx.recv().await.unwrap();
            let Body::Sensor(status) = status.body else {
                panic!("expected the sensor's status first, got {status:?}");
            };
            ((handle, rx), status.message)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_connection_closed_between_reads_is_reported_with_its_bytes() {
            use std::io::{Read, Write};

            // The listener exists before the sensor's first read, as a server's would.
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let ((handle, mut rx), status) = started_with(Duration::from_secs(2)).await;
            assert!(status.contains("destruction notices, without"), "{status}");

            let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let local_port = client.local_addr().unwrap().port();
            let (mut accepted, _) = listener.accept().unwrap();
            client.write_all(&[7; 1000]).unwrap();
            let mut got = [0; 1000];
            accepted.read_exact(&mut got).unwrap();
            accepted.write_all(b"ok").unwrap();
            client.read_exact(&mut got[..2]).unwrap();
            drop(client);
            drop(accepted);

            let seen = until(&mut rx, |n| n.local_port == local_port).await;
            let event = seen.last().unwrap();
            assert_eq!(event.remote_port, port);
            assert_eq!(event.remote_scope, "loopback");
            // Unless a read happened to fall into the millisecond the connection was open, the
            // kernel's notice reported it, with its byte counts and without its process.
            // The kernel's counters also count the SYN and FIN, one each.
            if event.process.is_none() {
                let sent = event.bytes_sent.unwrap();
                let received = event.bytes_received.unwrap();
                assert!((1000..=1002).contains(&sent), "{event:?}");
                assert!((2..=4).contains(&received), "{event:?}");
            }
            assert!(
                seen.iter().all(|n| n.local_port != port),
                "the accepted end is inbound: {seen:?}"
            );
            drop(handle);
        }

        /// Net events until one matches, returning all of them.
        async fn until(
            rx: &mut mpsc::Receiver<Event>,
            wanted: impl Fn(&NetEvent) -> bool,
        ) -> Vec<NetEvent> {
            let wait = async {
                let mut seen = Vec::new();
                loop {
                    if let Body::Net(net) = rx.recv().await.unwrap().body {
                        let done = wanted(&net);
                        seen.push(net);
                        if done {
                            return seen;
                        }
                    }
                }
            };
            tokio::time::timeout(PATIENCE, wait)
                .await
                .expect("no matching net.connect event")
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reports_a_loopback_tcp_connection_once_with_its_process() {
            let (handle, mut rx) = started().await;
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (_accepted, _) = listener.accept().unwrap();
            let local_port = client.local_addr().unwrap().port();

            let seen = until(&mut rx, |n| n.local_port == local_port).await;
            let event = seen.last().unwrap();
            assert_eq!(event.protocol, "tcp");
            assert_eq!(event.remote_addr, "127.0.0.1");
            assert_eq!(event.remote_port, port);
            assert_eq!(event.remote_scope, "loopback");
            let process = event.process.as_ref().unwrap();
            assert_eq!(process.pid, std::process::id());
            assert_eq!(
                process.exe,
                std::env::current_exe().unwrap().to_string_lossy()
            );

            // A second connection proves that scans went on: by then the accepted end (inbound)
            // and a repeat of the first connection would have been reported if they were going
            // to be.
            let second = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _accepted_too = listener.accept().unwrap();
            let second_port = second.local_addr().unwrap().port();
            let later = until(&mut rx, |n| n.local_port == second_port).await;
            let everything: Vec<&NetEvent> = seen.iter().chain(&later).collect();
            assert!(
                everything.iter().all(|n| n.local_port != port),
                "the accepted end is inbound: {everything:?}"
            );
            let first_reports = everything
                .iter()
                .filter(|n| n.local_port == local_port && n.remote_port == port)
                .count();
            assert_eq!(first_reports, 1);
            drop(handle);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reports_connected_udp_and_ipv6_loopback() {
            let (handle, mut rx) = started().await;
            let server = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = server.local_addr().unwrap().port();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.connect(("127.0.0.1", port)).unwrap();
            let udp_port = client.local_addr().unwrap().port();
            let seen = until(&mut rx, |n| n.local_port == udp_port).await;
            let event = seen.last().unwrap();
            assert_eq!(event.protocol, "udp");
            assert_eq!(event.remote_port, port);
            assert_eq!(event.process.as_ref().unwrap().pid, std::process::id());

            // Hosts without IPv6 cannot run the second half.
            if let Ok(listener) = TcpListener::bind("[::1]:0") {
                let port = listener.local_addr().unwrap().port();
                let client = TcpStream::connect(("::1", port)).unwrap();
                let local_port = client.local_addr().unwrap().port();
                let seen = until(&mut rx, |n| n.local_port == local_port).await;
                let event = seen.last().unwrap();
                assert_eq!(event.remote_addr, "::1");
                assert_eq!(event.remote_scope, "loopback");
            }
            drop(handle);
        }
    }
}
