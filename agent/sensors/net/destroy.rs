//! The kernel's socket-destruction notices (`NETLINK_SOCK_DIAG`, groups `SKNLGRP_INET*_DESTROY`,
//! Linux 4.10 and later, root only): every TCP or UDP socket, as it is freed, with its two ends and,
//! for TCP, how many bytes went each way.
//!
//! They catch connections that opened and closed between two reads of the socket tables. By then
//! the socket belongs to no file any more, so its process cannot be found; its uid still can. Like
//! the process connector, this needs no `unsafe`: `socket2` opens the socket, `nix` binds it, and
//! messages are decoded from bytes.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{NetlinkAddr, bind};
use socket2::{Domain, Protocol, Socket, Type};

use crate::pipeline::LossySender;
use crate::sensors::Stop;
use crate::sensors::netlink::{self, u16_at, u32_at, u64_at};

const AF_NETLINK: i32 = 16;
const NETLINK_SOCK_DIAG: i32 = 4;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Multicast groups, as bits: SKNLGRP_INET_TCP_DESTROY = 1, INET_UDP = 2, INET6_TCP = 3, INET6_UDP = 4.
const TCP_GROUPS: u32 = (1 << 0) | (1 << 2);
const UDP_GROUPS: u32 = (1 << 1) | (1 << 3);

const INET_DIAG_MSG: usize = 72;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_PROTOCOL: u16 = 10;
const IPPROTO_UDP: u8 = 17;
/// `tcpi_bytes_acked` and `tcpi_bytes_received` in `struct tcp_info`: payload bytes as the kernel
/// counts them, which includes one each for the SYN and the FIN.
const BYTES_ACKED_AT: usize = 120;
const BYTES_RECEIVED_AT: usize = 128;

/// A socket the kernel has just freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub udp: bool,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub uid: u32,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
}

fn address(family: u8, raw: &[u8]) -> Option<IpAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.get(..4)?).ok()?)),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(..16)?).ok()?)),
        _ => return None,
    };
    Some(ip.to_canonical())
}

/// Decodes every `inet_diag_msg` in one datagram.
pub fn decode(datagram: &[u8]) -> Vec<Closed> {
    netlink::payloads(datagram)
        .into_iter()
        .filter_map(decode_msg)
        .collect()
}

fn decode_msg(msg: &[u8]) -> Option<Closed> {
    let family = *msg.first()?;
    // Ports are in network byte order; addresses are raw network bytes.
    let local_port = u16::from_be_bytes(msg.get(4..6)?.try_into().ok()?);
    let remote_port = u16::from_be_bytes(msg.get(6..8)?.try_into().ok()?);
    let local = address(family, msg.get(8..24)?)?;
    let remote = address(family, msg.get(24..40)?)?;
    let uid = u32_at(msg, 64)?;
    let mut closed = Closed {
        udp: false,
        local: (local, local_port),
        remote: (remote, remote_port),
        uid,
        bytes_sent: None,
        bytes_received: None,
    };
    let mut at = INET_DIAG_MSG;
    while let (Some(len), Some(kind)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let len = usize::from(len);
        if len < 4 {
            break;
        }
        let Some(data) = msg.get(at + 4..at + len) else {
            break;
        };
        match kind {
            INET_DIAG_PROTOCOL => closed.udp = data.first() == Some(&IPPROTO_UDP),
            INET_DIAG_INFO => {
                closed.bytes_sent = u64_at(data, BYTES_ACKED_AT);
                closed.bytes_received = u64_at(data, BYTES_RECEIVED_AT);
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(closed)
}

/// Subscribes to destruction notices of TCP or UDP sockets or both and forwards them from a dedicated thread until `stop` is
/// set. Notices lost in the kernel or with no room in `out` are counted as dropped.
pub fn spawn(
    tcp: bool,
    udp: bool,
    out: LossySender<Closed>,
    stop: Stop,
) -> io::Result<std::thread::JoinHandle<()>> {
    let mut socket = Socket::new(
        Domain::from(AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(NETLINK_SOCK_DIAG)),
    )?;
    let groups = if tcp { TCP_GROUPS } else { 0 } | if udp { UDP_GROUPS } else { 0 };
    bind(socket.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(io::Error::from)?;
    std::thread::Builder::new()
        .name("bannin-sock-destroy".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.is_set() {
                // Asleep until a notice arrives or the sensor stops: no polling.
                let n = match stop
                    .wait_readable(&[socket.as_fd()], None)
                    .and_then(|ready| {
                        if ready {
                            socket.read(&mut buf)
                        } else {
                            Err(io::ErrorKind::WouldBlock.into())
                        }
                    }) {
                    Ok(n) => n,
                    Err(error)
                        if matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    // The kernel dropped notices for a full socket; how many is not known.
                    Err(error)
                        if error.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) =>
                    {
                        out.count_drop(1);
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(%error, "reading socket destruction notices failed");
                        return;
                    }
                };
                for closed in decode(&buf[..n]) {
                    if out.push(closed).is_err() {
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::netlink::NLMSG_HEADER;

    #[test]
    fn decodes_a_destroyed_tcp_socket_with_its_byte_counts() {
        let mut msg = vec![0u8; INET_DIAG_MSG];
        msg[0] = AF_INET;
        msg[4..6].copy_from_slice(&40000u16.to_be_bytes());
        msg[6..8].copy_from_slice(&443u16.to_be_bytes());
        msg[8..12].copy_from_slice(&[10, 0, 0, 5]);
        msg[24..28].copy_from_slice(&[203, 0, 113, 7]);
        msg[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        let mut info = vec![0u8; 232];
        info[BYTES_ACKED_AT..BYTES_ACKED_AT + 8].copy_from_slice(&5_000_000u64.to_ne_bytes());
        info[BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8].copy_from_slice(&1234u64.to_ne_bytes());
        msg.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        msg.extend_from_slice(&info);
        msg.extend_from_slice(&5u16.to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_PROTOCOL.to_ne_bytes());
        msg.extend_from_slice(&[6, 0, 0, 0]);
        let mut datagram = ((NLMSG_HEADER + msg.len()) as u32).to_ne_bytes().to_vec();
        datagram.extend_from_slice(&[0; 12]);
        datagram.extend_from_slice(&msg);

        let closed = decode(&datagram);
        assert_eq!(
            closed,
            [Closed {
                udp: false,
                local: ("10.0.0.5".parse().unwrap(), 40000),
                remote: ("203.0.113.7".parse().unwrap(), 443),
                uid: 1000,
                bytes_sent: Some(5_000_000),
                bytes_received: Some(1234),
            }]
        );
    }
}
