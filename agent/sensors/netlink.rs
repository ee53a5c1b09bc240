//! Reading netlink datagrams: the process-events connector and the socket-destruction notices
//! both receive several messages per datagram, each with a 16-byte header.

/// Length of `struct nlmsghdr`.
pub const NLMSG_HEADER: usize = 16;

pub fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The payload of every netlink message in one datagram, in order; a malformed length ends the
/// datagram rather than reading past it.
pub fn payloads(datagram: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(len) = u32_at(datagram, offset) {
        let len = len as usize;
        if len < NLMSG_HEADER || offset + len > datagram.len() {
            break;
        }
        out.push(&datagram[offset + NLMSG_HEADER..offset + len]);
        // Netlink messages are aligned to four bytes.
        offset += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_follow_lengths_alignment_and_stop_at_garbage() {
        let mut datagram = Vec::new();
        for payload in [&b"abc"[..], &b"defgh"[..]] {
            let len = (NLMSG_HEADER + payload.len()) as u32;
            datagram.extend_from_slice(&len.to_ne_bytes());
            datagram.extend_from_slice(&[0u8; NLMSG_HEADER - 4]);
            datagram.extend_from_slice(payload);
            while datagram.len() % 4 != 0 {
                datagram.push(0);
            }
        }
        datagram.extend_from_slice(&999u32.to_ne_bytes());
        assert_eq!(payloads(&datagram), vec![&b"abc"[..], &b"defgh"[..]]);
        assert!(payloads(&[1, 2]).is_empty());
    }
}
