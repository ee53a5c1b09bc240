//! Listing the host's sockets through `NETLINK_SOCK_DIAG` (inet_diag dumps), the source `ss` uses.
//!
//! Reading `/proc/net/tcp` and `tcp6` makes the kernel format every socket as text and walk its
//! connection hash table once per file (about 10 ms of CPU for both on a 24 GiB host, whatever the
//! number of connections); a dump filtered by state hands back binary records of only the sockets
//! the scanner can use (never the `TIME_WAIT` crowd), at a fraction of the cost. No `unsafe`:
//! `socket2` opens the socket, `nix` connects it to the kernel, requests and replies are bytes.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{NetlinkAddr, connect};
use socket2::{Domain, Protocol, Type};

use super::table::Socket;
use crate::sensors::netlink::{NLMSG_HEADER, u16_at, u32_at};

const AF_NETLINK: i32 = 16;
const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `struct inet_diag_req_v2`: family, protocol, extensions, pad, states, and a zero socket id.
const REQUEST: usize = 56;
/// `idiag_inode` in `struct inet_diag_msg`.
const INODE_AT: usize = 68;

/// TCP states the scanner uses: listeners (which ports this host serves) and every state in which
/// a connection still has an owner (include/net/tcp_states.h). Not SYN_RECV (accepted, not yet
/// owned), TIME_WAIT or CLOSE (no owner any more).
const TCP_STATES: u32 = (1 << 1) // ESTABLISHED
    | (1 << 2) // SYN_SENT
    | (1 << 4) // FIN_WAIT1
    | (1 << 5) // FIN_WAIT2
    | (1 << 8) // CLOSE_WAIT
    | (1 << 9) // LAST_ACK
    | (1 << 10) // LISTEN
    | (1 << 11); // CLOSING
const TCP_LISTEN: u32 = 1 << 10;
/// UDP sockets are ESTABLISHED when connected and CLOSE when only bound (a service).
const UDP_STATES: u32 = (1 << 1) | (1 << 7);

/// A socket on which dumps are requested, kept open between scans.
pub(super) struct Diag {
    socket: socket2::Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl Diag {
    pub(super) fn open() -> io::Result<Diag> {
        let socket = socket2::Socket::new(
            Domain::from(AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(NETLINK_SOCK_DIAG)),
        )?;
        connect(socket.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(io::Error::from)?;
        // A kernel that stops answering mid-dump must not hang the scan.
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Diag {
            socket,
            seq: 0,
            buffer: vec![0u8; 64 * 1024],
        })
    }

    /// Every TCP and UDP socket (as asked) of both families in a state the scanner uses.
    pub(super) fn sockets(&mut self, tcp: bool, udp: bool) -> io::Result<Vec<Socket>> {
        let mut sockets = Vec::new();
        for family in [AF_INET, AF_INET6] {
            if tcp {
                self.dump(family, IPPROTO_TCP, TCP_STATES, &mut sockets)?;
            }
            if udp {
                self.dump(family, IPPROTO_UDP, UDP_STATES, &mut sockets)?;
            }
        }
        Ok(sockets)
    }

    /// Only the TCP listeners of both families: a second look, since a dump is not atomic and
    /// one that raced other sockets' changes can miss a listener.
    pub(super) fn tcp_listeners(&mut self) -> io::Result<Vec<Socket>> {
        let mut sockets = Vec::new();
        for family in [AF_INET, AF_INET6] {
            self.dump(family, IPPROTO_TCP, TCP_LISTEN, &mut sockets)?;
        }
        Ok(sockets)
    }

    fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        states: u32,
        out: &mut Vec<Socket>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut request = Vec::with_capacity(NLMSG_HEADER + REQUEST);
        request.extend_from_slice(&((NLMSG_HEADER + REQUEST) as u32).to_ne_bytes());
        request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&[family, protocol, 0, 0]);
        request.extend_from_slice(&states.to_ne_bytes());
        request.resize(NLMSG_HEADER + REQUEST, 0);
        self.socket.write_all(&request)?;
        let udp = protocol == IPPROTO_UDP;
        loop {
            let n = self.socket.read(&mut self.buffer)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            match parse(&self.buffer[..n], seq, udp, out) {
                Parsed::More => {}
                Parsed::Done => return Ok(()),
                Parsed::Error(errno) => return Err(io::Error::from_raw_os_error(errno)),
            }
        }
    }
}

enum Parsed {
    More,
    Done,
    Error(i32),
}

/// Adds the sockets in one reply datagram of dump `seq` to `out`; messages of another dump (one a
/// failed scan left unread) are skipped.
fn parse(datagram: &[u8], seq: u32, udp: bool, out: &mut Vec<Socket>) -> Parsed {
    let mut offset = 0;
    while let Some(len) = u32_at(datagram, offset) {
        let len = len as usize;
        if len < NLMSG_HEADER || offset + len > datagram.len() {
            break;
        }
        let kind = u16_at(datagram, offset + 4).unwrap_or(0);
        let message_seq = u32_at(datagram, offset + 8).unwrap_or(0);
        let payload = &datagram[offset + NLMSG_HEADER..offset + len];
        offset += (len + 3) & !3;
        if message_seq != seq {
            continue;
        }
        match kind {
            NLMSG_DONE => return Parsed::Done,
            NLMSG_ERROR => {
                let errno = u32_at(payload, 0).map_or(0, |e| e as i32);
                return match errno {
                    0 => Parsed::Done,
                    e => Parsed::Error(-e),
                };
            }
            SOCK_DIAG_BY_FAMILY => out.extend(decode(payload, udp)),
            _ => {}
        }
    }
    Parsed::More
}

/// One `struct inet_diag_msg`: ports in network byte order, addresses as raw network bytes, the
/// inode in host order.
fn decode(msg: &[u8], udp: bool) -> Option<Socket> {
    let family = *msg.first()?;
    let state = *msg.get(1)?;
    let local_port = u16::from_be_bytes(msg.get(4..6)?.try_into().ok()?);
    let remote_port = u16::from_be_bytes(msg.get(6..8)?.try_into().ok()?);
    let address = |raw: &[u8]| -> Option<IpAddr> {
        let ip = match family {
            AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.get(..4)?).ok()?)),
            AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(..16)?).ok()?)),
            _ => return None,
        };
        Some(ip.to_canonical())
    };
    Some(Socket {
        udp,
        local: (address(msg.get(8..24)?)?, local_port),
        remote: (address(msg.get(24..40)?)?, remote_port),
        state,
        inode: u64::from(u32_at(msg, INODE_AT)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::net::table::{parse_line, read_table};

    /// The dump sees what `/proc/net/tcp` lists for a real connection: both ends, state and inode.
    #[test]
    fn a_dump_lists_a_live_connection_as_the_proc_table_does() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let remote = client.peer_addr().unwrap();
        let ends = |s: &Socket| {
            s.local == (local.ip(), local.port()) && s.remote == (remote.ip(), remote.port())
        };

        let mut diag = Diag::open().unwrap();
        let dumped = diag.sockets(true, false).unwrap();
        let mut buffer = Vec::new();
        let text = read_table("/proc/net/tcp", &mut buffer)
            .unwrap()
            .to_string();
        let listed: Vec<Socket> = text
            .lines()
            .skip(1)
            .filter_map(|l| parse_line(l, false))
            .collect();
        let from_dump = dumped.iter().find(|s| ends(s)).copied();
        let from_proc = listed.iter().find(|s| ends(s)).copied();
        assert!(from_dump.is_some(), "{dumped:?}");
        assert_eq!(from_dump, from_proc);
        assert_ne!(from_dump.unwrap().inode, 0);
        // The listener is there too (it tells inbound from outbound).
        let port = listener.local_addr().unwrap().port();
        assert!(
            dumped
                .iter()
                .any(|s| s.local.1 == port && s.state == 0x0a && !s.udp)
        );
        // Repeated dumps on the same socket stay in step.
        for _ in 0..3 {
            assert!(diag.sockets(true, true).unwrap().iter().any(ends));
        }
    }

    #[test]
    fn replies_of_another_dump_and_errors_are_told_apart() {
        let message = |kind: u16, seq: u32, payload: &[u8]| {
            let mut m = ((NLMSG_HEADER + payload.len()) as u32)
                .to_ne_bytes()
                .to_vec();
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(payload);
            m
        };
        let mut socket = vec![0u8; 72];
        socket[0] = AF_INET;
        socket[1] = 1;
        socket[4..6].copy_from_slice(&40000u16.to_be_bytes());
        socket[6..8].copy_from_slice(&443u16.to_be_bytes());
        socket[8..12].copy_from_slice(&[10, 0, 0, 5]);
        socket[24..28].copy_from_slice(&[203, 0, 113, 7]);
        socket[INODE_AT..INODE_AT + 4].copy_from_slice(&4242u32.to_ne_bytes());
        let mut datagram = message(SOCK_DIAG_BY_FAMILY, 6, &socket);
        datagram.extend(message(SOCK_DIAG_BY_FAMILY, 7, &socket));
        datagram.extend(message(NLMSG_DONE, 7, &[0; 4]));
        let mut out = Vec::new();
        assert!(matches!(parse(&datagram, 7, false, &mut out), Parsed::Done));
        assert_eq!(
            out,
            [Socket {
                udp: false,
                local: ("10.0.0.5".parse().unwrap(), 40000),
                remote: ("203.0.113.7".parse().unwrap(), 443),
                state: 1,
                inode: 4242,
            }]
        );
        let error = message(NLMSG_ERROR, 8, &(-2i32).to_ne_bytes());
        assert!(matches!(
            parse(&error, 8, false, &mut out),
            Parsed::Error(2)
        ));
    }

    /// This thread's run time so far, in nanoseconds (kernel time on its behalf included).
    fn thread_cpu_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU per scan: one dump of TCP sockets of both families against one read of
    /// `/proc/net/tcp` and `tcp6`, alternated in the same run.
    ///
    /// `cargo test --release --bin bannin-agent bench_socket_listing -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: run by hand with --ignored --nocapture"]
    fn bench_socket_listing_dump_against_proc_net() {
        let rounds = 200;
        let mut diag = Diag::open().unwrap();
        let mut buffer = Vec::new();
        let (mut dump_ns, mut proc_ns) = (0u64, 0u64);
        let (mut dumped, mut listed) = (0, 0);
        for _ in 0..rounds {
            let t = thread_cpu_ns();
            dumped = diag.sockets(true, false).unwrap().len();
            dump_ns += thread_cpu_ns() - t;
            let t = thread_cpu_ns();
            listed = 0;
            for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
                if let Some(text) = read_table(path, &mut buffer) {
                    listed += text
                        .lines()
                        .skip(1)
                        .filter_map(|l| parse_line(l, false))
                        .count();
                }
            }
            proc_ns += thread_cpu_ns() - t;
        }
        let per = |ns: u64| ns as f64 / rounds as f64 / 1e6;
        println!(
            "per scan: inet_diag dump {:.3} ms ({dumped} sockets), /proc/net/tcp{{,6}} {:.3} ms ({listed} sockets), ratio {:.2}",
            per(dump_ns),
            per(proc_ns),
            proc_ns as f64 / dump_ns.max(1) as f64
        );
    }
}
