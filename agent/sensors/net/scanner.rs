//! The sensor's task on Linux: reads the socket tables every interval, finds the owner of each new
//! outbound socket, and turns the kernel's destruction notices into events: a `net.connect` with
//! bytes for a connection no read saw open, a `net.close` with bytes and the process its
//! `net.connect` named for a TCP connection one did.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use bannin::event::{NetAction, NetEvent, ProcessInfo};

use super::destroy;
use super::diag::Diag;
use super::scope::remote_scope;
use super::table::{Key, Services, Socket, TCP_CLOSE, outbound, parse_line, read_table};
use super::{NetSettings, ProcessTable};
use crate::pipeline::EventTx;
use crate::sensors::process::os;

/// How long the ends of a connection seen open are remembered, so that its destruction
/// notice is reported as its close rather than as a connection of its own.
const REMEMBER_ENDS: Duration = Duration::from_secs(60);
/// The most reported TCP connections whose process is remembered for their close; the close of
/// one more is still reported, without its process (its `net.connect` named it).
const MAX_OWNERS: usize = 65_536;

/// Both ends of a connection, with its protocol (`true` for UDP).
type Ends = (bool, (IpAddr, u16), (IpAddr, u16));

/// Reads the socket tables and remembers what it has reported and who owns which socket.
pub(super) struct Scanner {
    /// False when the eBPF program reports TCP connections: the tables are read for UDP only.
    include_tcp: bool,
    include_udp: bool,
    include_loopback: bool,
    reported: HashSet<Key>,
    owners: HashMap<u64, u32>,
    /// Processes that owned outbound connections before: daemons that connect again and
    /// again are looked at first, so a new connection rarely needs a walk of every process.
    connectors: BTreeSet<u32>,
    /// Socket dumps over netlink; `None` where the kernel refuses them, and then the text tables
    /// of `/proc/net` are read instead.
    diag: Option<Diag>,
    /// Reused for reading the text tables.
    buffer: Vec<u8>,
    services: Services,
    seen_open: HashMap<Ends, tokio::time::Instant>,
    /// The process each reported TCP connection was reported with, until its close.
    reported_owners: HashMap<Ends, ProcessInfo>,
}

impl Scanner {
    pub(super) fn new(config: &NetSettings, include_tcp: bool) -> Self {
        Scanner {
            include_tcp,
            include_udp: config.include_udp,
            include_loopback: config.include_loopback,
            reported: HashSet::new(),
            owners: HashMap::new(),
            connectors: BTreeSet::new(),
            diag: match Diag::open() {
                Ok(diag) => Some(diag),
                Err(error) => {
                    tracing::warn!(%error, "socket dumps unavailable; reading /proc/net instead");
                    None
                }
            },
            buffer: Vec::new(),
            services: Services::default(),
            seen_open: HashMap::new(),
            reported_owners: HashMap::new(),
        }
    }

    /// New outbound connections since the last scan, each with its owner's pid if found.
    pub(super) fn scan(&mut self) -> Vec<(Socket, Option<u32>)> {
        let dumped = self
            .diag
            .as_mut()
            .map(|diag| diag.sockets(self.include_tcp, self.include_udp));
        let sockets = match dumped {
            Some(Ok(sockets)) => sockets,
            Some(Err(error)) => {
                tracing::warn!(%error, "socket dump failed; reading /proc/net from now on");
                self.diag = None;
                self.read_tables(self.include_tcp, self.include_udp)
            }
            None => self.read_tables(self.include_tcp, self.include_udp),
        };
        self.scan_sockets(&sockets)
    }

    /// [`Self::scan`] of the sockets one look at the tables found.
    fn scan_sockets(&mut self, sockets: &[Socket]) -> Vec<(Socket, Option<u32>)> {
        self.services = Services::of(sockets);
        let mut current = outbound(
            sockets,
            &self.services,
            self.include_udp,
            self.include_loopback,
        );
        // A dump races the sockets it lists: one that missed a listener would report the
        // connections it accepted as opened here. A new TCP connection asks for the listeners
        // once more, so both looks would have to miss the same listener.
        if current
            .iter()
            .any(|s| !s.udp && !self.reported.contains(&s.key()))
        {
            let listeners = self.tcp_listeners();
            self.services.add_tcp_listeners(&listeners);
            let services = &self.services;
            current.retain(|s| services.opened_here(s.udp, s.local, s.remote));
        }
        let now = tokio::time::Instant::now();
        self.seen_open
            .retain(|_, seen| now.saturating_duration_since(*seen) < REMEMBER_ENDS);
        let seen_open = &self.seen_open;
        self.reported_owners
            .retain(|ends, _| seen_open.contains_key(ends));
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

    /// The TCP listeners, looked up again (see [`Self::scan`]); none where neither source can be
    /// read, and then the first look stands.
    fn tcp_listeners(&mut self) -> Vec<Socket> {
        if let Some(diag) = self.diag.as_mut()
            && let Ok(listeners) = diag.tcp_listeners()
        {
            return listeners;
        }
        self.read_tables(true, false)
    }

    /// The sockets listed in `/proc/net/{tcp,tcp6,udp,udp6}`.
    fn read_tables(&mut self, tcp: bool, udp: bool) -> Vec<Socket> {
        let mut sockets = Vec::new();
        let mut tables = Vec::new();
        if tcp {
            tables.extend([("/proc/net/tcp", false), ("/proc/net/tcp6", false)]);
        }
        if udp {
            tables.extend([("/proc/net/udp", true), ("/proc/net/udp6", true)]);
        }
        for (path, udp) in tables {
            // A host without IPv6 has no tcp6 table; that is not an error.
            if let Some(text) = read_table(path, &mut self.buffer) {
                sockets.extend(text.lines().skip(1).filter_map(|l| parse_line(l, udp)));
            }
        }
        sockets
    }

    /// Remembers the process a new TCP connection was reported with, for its close.
    pub(super) fn remember(&mut self, event: &NetEvent, socket: &Socket) {
        if socket.udp || self.reported_owners.len() >= MAX_OWNERS {
            return;
        }
        if let Some(process) = &event.process {
            self.reported_owners
                .insert((false, socket.local, socket.remote), process.clone());
        }
    }

    /// A destroyed socket, as an event: a connection no scan saw open as a `net.connect` with its
    /// bytes, the close of a TCP connection one did as a `net.close` with its bytes and process.
    /// A UDP flow seen open has nothing more to say at its close (the kernel counts no bytes).
    pub(super) fn closed(&mut self, closed: destroy::Closed) -> Option<NetEvent> {
        if closed.udp && !self.include_udp
            || !closed.udp && !self.include_tcp
            || !self.include_loopback && closed.remote.0.is_loopback()
            || !self
                .services
                .opened_here(closed.udp, closed.local, closed.remote)
        {
            return None;
        }
        let ends = (closed.udp, closed.local, closed.remote);
        let seen = self.seen_open.remove(&ends).is_some();
        let process = self.reported_owners.remove(&ends);
        if seen && closed.udp {
            return None;
        }
        let socket = Socket {
            udp: closed.udp,
            local: closed.local,
            remote: closed.remote,
            state: TCP_CLOSE,
            inode: 0,
        };
        let mut event = event(socket, process);
        if seen {
            event.action = NetAction::Close;
        }
        event.bytes_sent = closed.bytes_sent;
        event.bytes_received = closed.bytes_received;
        Some(event)
    }
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

pub(super) async fn run(
    config: NetSettings,
    include_tcp: bool,
    tx: EventTx,
    table: ProcessTable,
    mut closed: Option<tokio::sync::mpsc::Receiver<destroy::Closed>>,
) {
    let mut scanner = Scanner::new(&config, include_tcp);
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
            let mut events = Vec::with_capacity(found.len() + notices.len());
            for (socket, pid) in found {
                let event = event(socket, pid.and_then(|pid| table.info(pid)));
                scanner.remember(&event, &socket);
                events.push(event);
            }
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

fn event(socket: Socket, process: Option<ProcessInfo>) -> NetEvent {
    NetEvent {
        action: NetAction::Connect,
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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::sensors::net::NetConfig;
    use crate::sensors::net::table::TCP_LISTEN;

    /// A dump that raced other sockets' changes and missed a listener: the connection that
    /// listener accepted is still not reported as opened here, because a new connection makes the
    /// scanner look at the listeners once more.
    #[test]
    fn a_listener_missing_from_one_dump_is_found_by_the_second_look() {
        let settings = NetConfig::default().settings().unwrap();
        assert!(settings.include_loopback);
        let mut scanner = Scanner::new(&settings, true);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let client_port = client.local_addr().unwrap().port();

        let mut sockets = scanner.read_tables(true, false);
        sockets.retain(|s| !(s.state == TCP_LISTEN && s.local.1 == port));
        let found = scanner.scan_sockets(&sockets);
        let ports: Vec<u16> = found.iter().map(|(s, _)| s.local.1).collect();
        assert!(ports.contains(&client_port), "the client's end: {ports:?}");
        assert!(
            !ports.contains(&port),
            "the accepted end is inbound: {ports:?}"
        );
    }
}
