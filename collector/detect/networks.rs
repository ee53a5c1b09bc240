//! Which destinations are public: the agent's `remote_scope`, overridden by the operator's
//! `[detection] private_networks` and `public_networks` (partner networks, own ranges, tests).
//!
//! Classification lives in the collector because it is the fleet's policy: one list, changed in
//! one place, applied to every agent's events (also to events stored before the change, when
//! they are replayed), while the agent's scope stays the plain fact of the address.

use std::net::IpAddr;

use ipnet::IpNet;

/// The operator's ranges, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Networks {
    public: Vec<IpNet>,
    private: Vec<IpNet>,
}

impl Networks {
    /// Parses both lists; an entry that is not a CIDR range (or a single address) is refused,
    /// naming the list it is in.
    pub(crate) fn new(public: &[String], private: &[String]) -> Result<Networks, String> {
        Ok(Networks {
            public: parse("public_networks", public)?,
            private: parse("private_networks", private)?,
        })
    }

    /// Whether a connection to `addr` leaves for a public destination: the longest configured
    /// range holding it decides (private on a tie); in no range, the agent's `scope` does.
    pub(crate) fn is_public(&self, addr: &str, scope: &str) -> bool {
        let Some(ip) = parse_addr(addr) else {
            return scope == "public";
        };
        let longest = |ranges: &[IpNet]| {
            ranges
                .iter()
                .filter(|range| range.contains(&ip))
                .map(IpNet::prefix_len)
                .max()
        };
        match (longest(&self.public), longest(&self.private)) {
            (Some(public), Some(private)) => public > private,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => scope == "public",
        }
    }
}

fn parse(key: &str, entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    format!("[detection] {key}: {entry:?} is not an address range such as \"203.0.113.0/24\"")
                })
        })
        .collect()
}

/// An address as agents write it; an IPv4 address mapped into IPv6 is the IPv4 address.
fn parse_addr(addr: &str) -> Option<IpAddr> {
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    addr.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(public: &[&str], private: &[&str]) -> Networks {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Networks::new(&owned(public), &owned(private)).unwrap()
    }

    #[test]
    fn the_longest_configured_range_decides_else_the_agents_scope() {
        let none = networks(&[], &[]);
        assert!(none.is_public("93.184.216.34", "public"));
        assert!(!none.is_public("10.1.2.3", "private"));
        assert!(!none.is_public("not an address", "private"));

        // A partner's public range is private; one host in it is public again.
        let partner = networks(&["198.51.100.7/32"], &["198.51.100.0/24"]);
        assert!(!partner.is_public("198.51.100.9", "public"));
        assert!(partner.is_public("198.51.100.7", "public"));
        assert!(partner.is_public("::ffff:198.51.100.7", "public"));
        // A test points public at loopback.
        let test = networks(&["127.0.0.0/8", "::1"], &[]);
        assert!(test.is_public("127.0.0.1", "loopback"));
        assert!(test.is_public("::1", "loopback"));
        // A tie is private.
        let tie = networks(&["10.0.0.0/8"], &["10.0.0.0/8"]);
        assert!(!tie.is_public("10.9.9.9", "private"));
    }

    #[test]
    fn a_bad_range_is_refused_naming_its_list() {
        let error = Networks::new(&[], &["10.0.0/8".into()]).unwrap_err();
        assert!(
            error.starts_with("[detection] private_networks: \"10.0.0/8\""),
            "{error}"
        );
        assert!(Networks::new(&["2001:db8::/32".into(), "192.0.2.1".into()], &[]).is_ok());
    }
}
