//! Where a remote address leads, for `net.connect`'s `remote_scope`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
}
