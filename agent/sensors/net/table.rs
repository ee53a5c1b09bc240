//! The kernel's socket tables (`/proc/net/{tcp,tcp6,udp,udp6}`): parsing their lines, and which
//! of the sockets listed are connections this host opened.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Socket {
    pub(super) udp: bool,
    pub(super) local: (IpAddr, u16),
    pub(super) remote: (IpAddr, u16),
    pub(super) state: u8,
    pub(super) inode: u64,
}

/// A socket is the same connection as long as its inode and both ends are.
pub(super) type Key = (u64, (IpAddr, u16), (IpAddr, u16));

impl Socket {
    pub(super) fn key(&self) -> Key {
        (self.inode, self.local, self.remote)
    }
}

/// TCP states (include/net/tcp_states.h) in which a connection this host opened still has an owner.
const TCP_ESTABLISHED: u8 = 0x01;
const TCP_SYN_SENT: u8 = 0x02;
const TCP_FIN_WAIT1: u8 = 0x04;
const TCP_FIN_WAIT2: u8 = 0x05;
pub(super) const TCP_CLOSE: u8 = 0x07;
const TCP_CLOSE_WAIT: u8 = 0x08;
const TCP_LAST_ACK: u8 = 0x09;
pub(super) const TCP_LISTEN: u8 = 0x0a;
const TCP_CLOSING: u8 = 0x0b;

/// Parses one line of `/proc/net/{tcp,udp}{,6}`.
pub(super) fn parse_line(line: &str, udp: bool) -> Option<Socket> {
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
pub(super) struct Services {
    tcp: HashSet<u16>,
    udp: HashSet<u16>,
}

impl Services {
    pub(super) fn of(sockets: &[Socket]) -> Services {
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

    /// Adds the TCP listeners among these sockets.
    pub(super) fn add_tcp_listeners(&mut self, sockets: &[Socket]) {
        let more = sockets
            .iter()
            .filter(|s| !s.udp && s.state == TCP_LISTEN)
            .map(|s| s.local.1);
        self.tcp.extend(more);
    }

    /// Whether a connection between these ends is one this host opened rather than accepted or
    /// answered.
    pub(super) fn opened_here(
        &self,
        udp: bool,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> bool {
        let served = if udp { &self.udp } else { &self.tcp };
        remote.1 != 0 && !remote.0.is_unspecified() && !served.contains(&local.1)
    }
}

/// The sockets that are connections this host opened: not accepted from one of its listeners
/// (TCP), not answering on one of its bound ports (UDP), and with a known owner inode.
pub(super) fn outbound(
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

/// Reads a socket table in as few `read` calls as possible: the kernel walks its whole
/// connection hash table again at the start of every call, which made small reads the agent's
/// largest idle cost.
#[cfg(target_os = "linux")]
pub(super) fn read_table<'a>(path: &str, buffer: &'a mut Vec<u8>) -> Option<&'a str> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
