//! `first_seen_destination`: the fleet's first connection to an address.

use std::time::Duration;

use bannin::event::{Body, NetAction, Record};
use bannin::time::Timestamp;
use serde_json::{Map, json};

use super::{Candidate, Seen, StatefulDetector, evidence, process_fields};
use crate::detect::config::Limits;
use crate::detect::rules::DetectorSpec;
use crate::detect::state::{Losses, Window};

/// Outbound connections to an address no host of the fleet has connected to before.
pub(crate) struct FirstSeen {
    scopes: Vec<String>,
    /// Fleet-wide; a destination pushed out would alert again as new, which is counted against
    /// the host whose connection pushed it out.
    seen: Window<String, ()>,
    losses: Losses,
}

impl FirstSeen {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        let mut scopes = spec.strings("scopes")?;
        if scopes.is_empty() {
            scopes.push("public".into());
        }
        Ok(FirstSeen {
            scopes,
            seen: Window::new(limits.seen_destinations),
            losses: Losses::default(),
        })
    }

    fn first(&mut self, record: &Record) -> Option<Candidate> {
        // A close is of a connection its `net.connect` already showed.
        let Body::Net(net) = &record.event.body else {
            return None;
        };
        if net.action == NetAction::Close {
            return None;
        }
        if !self.scopes.contains(&net.remote_scope) {
            return None;
        }
        let ts = record.event.ts;
        // Looked up without touching: the cap forgets the destinations first seen longest ago,
        // and a lookup that allocates nothing keeps the common case (a known address) cheap.
        if self.seen.get(&net.remote_addr).is_some() {
            return None;
        }
        let pushed_out = self.seen.insert(net.remote_addr.clone(), (), ts);
        self.losses.add(
            &record.event.host,
            u64::try_from(pushed_out.len()).unwrap_or(u64::MAX),
        );
        let mut fields = Map::new();
        fields.insert("remote_addr".into(), json!(net.remote_addr));
        fields.insert("remote_port".into(), json!(net.remote_port));
        fields.insert("remote_scope".into(), json!(net.remote_scope));
        fields.insert("protocol".into(), json!(net.protocol));
        if let Some(sent) = net.bytes_sent {
            fields.insert("bytes_sent".into(), json!(sent));
        }
        let mut who = String::new();
        if let Some(process) = &net.process {
            process_fields(&mut fields, "", process);
            if !process.ancestry.is_empty() {
                fields.insert("ancestry".into(), json!(process.ancestry));
            }
            let chain: Vec<&str> = std::iter::once(process.exe.as_str())
                .chain(process.ancestry.iter().map(|a| a.exe.as_str()))
                .collect();
            who = format!(" by {}", chain.join(" < "));
        }
        Some(Candidate {
            ts,
            host: record.event.host.to_string(),
            summary: format!(
                "first connection of the fleet to {}:{} from {}{who}",
                net.remote_addr, net.remote_port, record.event.host
            ),
            evidence: vec![evidence(record)],
            key: net.remote_addr.clone(),
            fields,
            severity: None,
            continues: false,
        })
    }
}

impl StatefulDetector for FirstSeen {
    fn state(&self) -> &'static str {
        "seen destinations"
    }

    /// Nothing it knows expires with time: its state is every destination ever seen.
    fn window(&self) -> Duration {
        Duration::ZERO
    }

    fn history(&self) -> &'static [&'static str] {
        &["net.connect"]
    }

    fn observe(&mut self, record: &Record, _seen: Seen) -> Vec<Candidate> {
        self.first(record).into_iter().collect()
    }

    fn tick(&mut self, _now: Timestamp) -> Vec<Candidate> {
        Vec::new()
    }

    fn evicted(&self) -> u64 {
        self.losses.total()
    }

    fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.losses.take()
    }
}

#[cfg(test)]
mod tests {
    //! The fleet's first connection to a public address.

    use crate::detect::testkit::*;

    #[test]
    fn first_connection_of_the_fleet_to_a_public_address_alerts_once() {
        let mut fleet = Fleet::default();
        let payload = process(
            8002,
            "/usr/bin/curl",
            "sato",
            &["/usr/bin/bash", "/usr/lib/libreoffice/program/soffice.bin"],
        );
        let updates = fleet.send("pc7", 0, connect("203.0.113.50", "public", &payload));
        assert_eq!(rules_of(&updates), vec!["first-seen-public-destination"]);
        let alert = new_alerts(&updates)[0];
        assert_eq!(alert.fields["remote_addr"], "203.0.113.50");
        assert_eq!(alert.fields["exe"], "/usr/bin/curl");
        assert_eq!(
            alert.fields["ancestry"][1]["exe"],
            "/usr/lib/libreoffice/program/soffice.bin"
        );
        assert!(
            alert
                .summary
                .contains("curl < /usr/bin/bash < /usr/lib/libreoffice"),
            "{}",
            alert.summary
        );
        // The same address from another host is no longer new; private addresses never are.
        assert!(
            fleet
                .send("srv2", 10, connect("203.0.113.50", "public", &payload))
                .is_empty()
        );
        assert!(
            fleet
                .send("pc7", 20, connect("10.1.2.3", "private", &payload))
                .is_empty()
        );
        assert_eq!(
            rules_of(&fleet.send("pc7", 30, connect("198.51.100.9", "public", &payload))),
            vec!["first-seen-public-destination"]
        );
    }
}
