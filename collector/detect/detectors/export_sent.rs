//! `export_read_then_sent`: a process, or one of its descendants, read a large export and then
//! connected to a public address.
//!
//! A connection still open when the agent reported it (a long upload) has its bytes only in its
//! `net.close`: that close is folded into the alert its connect raised, naming the bytes and
//! adding the close as evidence, or, when that alert is no longer recent (the dedup window),
//! raises one of its own.
//!
//! A read names the bytes the reader read where the agent counted them (`bytes_read`). A reader
//! reported while it still held the export open (`still_open`) has its total in a later
//! `file.read` at its close (`closed`): folded into the read it continues, and into the alert
//! that read raised, the same way.

use std::time::Duration;

use bannin::event::{Body, FileAction, FileEvent, NetAction, ProcessInfo, Record};
use bannin::time::Timestamp;
use serde_json::{Map, json};

use super::{Candidate, Seen, StatefulDetector, evidence, process_fields};
use crate::alert::EvidenceRef;
use crate::detect::config::Limits;
use crate::detect::networks::Networks;
use crate::detect::rules::DetectorSpec;
use crate::detect::state::HostWindows;

/// How many ancestors of a connecting process are looked up as possible readers.
const MAX_LINEAGE: usize = 16;

/// A large export one process read.
struct Read {
    ts: Timestamp,
    file: FileEvent,
    reader: ProcessInfo,
    proof: EvidenceRef,
    /// The latest connection that raised an alert with this read, to raise it again (folded
    /// into that alert) when the reader's close gives its total.
    sent: Option<Box<Record>>,
}

/// Reads of large exports by process (agent and pid), so a connection by the reader or by a
/// descendant (whose ancestry names the reader) finds what was read.
pub(crate) struct ExportReadThenSent {
    min_size: u64,
    window: Duration,
    networks: Networks,
    reads: HostWindows<(String, u32), Read>,
}

impl ExportReadThenSent {
    pub(crate) fn new(spec: &DetectorSpec, limits: &Limits) -> Result<Self, String> {
        Ok(ExportReadThenSent {
            min_size: spec.u64("min_size", 10 * 1024 * 1024)?,
            window: spec.duration("window", Duration::from_secs(3600))?,
            networks: Networks::new(
                &spec.strings("public_networks")?,
                &spec.strings("private_networks")?,
            )?,
            reads: HostWindows::new(
                limits.per_host.min(limits.tracked_files),
                limits.tracked_files,
                Duration::from_secs(1),
            ),
        })
    }

    fn read(&mut self, record: &Record, file: &FileEvent) -> Option<Candidate> {
        let reader = file.process.as_ref()?;
        if file.size.unwrap_or(0) < self.min_size || file.export.is_none() {
            return None;
        }
        let key = (record.agent_id.clone(), reader.pid);
        if file.closed
            && let Some(read) = self.reads.get_mut(&record.event.host, &key)
            && read.file.path == file.path
            && read.reader.exe == reader.exe
        {
            // The close of a reader reported still open: its total, for the read it continues
            // and for the alert that read raised.
            read.file.bytes_read = file.bytes_read;
            read.file.still_open = false;
            let sent = read.sent.clone()?;
            let mut candidate = self.connect(&sent)?;
            candidate.ts = record.event.ts;
            candidate.evidence.push(evidence(record));
            candidate.continues = true;
            return Some(candidate);
        }
        let read = Read {
            ts: record.event.ts,
            file: file.clone(),
            reader: ProcessInfo::clone(reader),
            proof: evidence(record),
            sent: None,
        };
        // The latest large read of a process is what it would send.
        self.reads.insert(
            &record.event.host,
            (record.agent_id.clone(), reader.pid),
            read,
            record.event.ts,
        );
        None
    }

    fn connect(&mut self, record: &Record) -> Option<Candidate> {
        let Body::Net(net) = &record.event.body else {
            return None;
        };
        let process = net.process.as_ref()?;
        if !self.networks.is_public(&net.remote_addr, &net.remote_scope) {
            return None;
        }
        let ts = record.event.ts;
        let host = &*record.event.host;
        // The connecting process itself, then its ancestors: a reader that handed the data to
        // a child (curl, scp) to send is found through the child's ancestry. An ancestor whose
        // program differs from the reader's is a later process that reused the pid.
        let lineage = std::iter::once((process.pid, process.exe.as_str())).chain(
            process
                .ancestry
                .iter()
                .map(|ancestor| (ancestor.pid, ancestor.exe.as_str())),
        );
        let reader = lineage.take(MAX_LINEAGE).find_map(|(pid, exe)| {
            let key = (record.agent_id.clone(), pid);
            let read = self.reads.get(host, &key)?;
            let same_program =
                exe.is_empty() || read.reader.exe.is_empty() || read.reader.exe == exe;
            let in_window = ts >= read.ts
                && ts.as_nanos() - read.ts.as_nanos()
                    <= i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX);
            (same_program && in_window).then_some(key)
        })?;
        let read = self.reads.get_mut(host, &reader)?;
        read.sent = Some(Box::new(record.clone()));
        let read = &*read;
        let mut fields = Map::new();
        fields.insert("path".into(), json!(read.file.path));
        if let Some(size) = read.file.size {
            fields.insert("size".into(), json!(size));
        }
        if let Some(export) = &read.file.export {
            fields.insert("export".into(), json!(export));
        }
        if let Some(bytes) = read.file.bytes_read {
            fields.insert("bytes_read".into(), json!(bytes));
        }
        fields.insert("read_ts".into(), json!(read.ts));
        process_fields(&mut fields, "reader_", &read.reader);
        process_fields(&mut fields, "", process);
        let chain: Vec<String> = std::iter::once(process)
            .map(|p| format!("{}[{}]", p.exe, p.pid))
            .chain(
                process
                    .ancestry
                    .iter()
                    .map(|a| format!("{}[{}]", a.exe, a.pid)),
            )
            .collect();
        fields.insert("lineage".into(), json!(chain));
        if !process.ancestry.is_empty() {
            fields.insert("ancestry".into(), json!(process.ancestry));
        }
        fields.insert("remote_addr".into(), json!(net.remote_addr));
        fields.insert("remote_port".into(), json!(net.remote_port));
        fields.insert("remote_scope".into(), json!(net.remote_scope));
        fields.insert("protocol".into(), json!(net.protocol));
        if let Some(sent) = net.bytes_sent {
            fields.insert("bytes_sent".into(), json!(sent));
        }
        if let Some(received) = net.bytes_received {
            fields.insert("bytes_received".into(), json!(received));
        }
        let by = if read.reader.pid == process.pid {
            format!("{}[{}]", process.exe, process.pid)
        } else {
            format!(
                "{}[{}], a descendant of reader {}[{}],",
                process.exe, process.pid, read.reader.exe, read.reader.pid
            )
        };
        let bytes = net
            .bytes_sent
            .map(|sent| format!(" ({sent} bytes sent)"))
            .unwrap_or_default();
        Some(Candidate {
            ts,
            host: host.to_string(),
            summary: format!(
                "{by} read {} ({} bytes{}) then connected to {}:{}{bytes} on {host}",
                read.file.path,
                read.file.size.unwrap_or(0),
                bytes_read(&read.file),
                net.remote_addr,
                net.remote_port
            ),
            evidence: vec![read.proof.clone(), evidence(record)],
            key: format!("{}\u{0}{}", read.file.path, net.remote_addr),
            fields,
            severity: None,
            continues: net.action == NetAction::Close,
        })
    }
}

/// How much of the file a read's summary says was read: `, N read` where the agent counted it
/// (`so far` while the reader still held it open), nothing where it could not.
pub(crate) fn bytes_read(file: &FileEvent) -> String {
    match (file.bytes_read, file.still_open) {
        (Some(bytes), true) => format!(", {bytes} read so far"),
        (Some(bytes), false) => format!(", {bytes} read"),
        (None, _) => String::new(),
    }
}

impl StatefulDetector for ExportReadThenSent {
    fn state(&self) -> &'static str {
        "export reads"
    }

    fn window(&self) -> Duration {
        self.window
    }

    fn observe(&mut self, record: &Record, _seen: Seen) -> Vec<Candidate> {
        match &record.event.body {
            Body::File(file) if file.action == FileAction::Read => {
                self.read(record, file).into_iter().collect()
            }
            Body::Net(_) => self.connect(record).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn tick(&mut self, now: Timestamp) -> Vec<Candidate> {
        self.reads.expire(now.saturating_sub(self.window));
        Vec::new()
    }

    fn evicted(&self) -> u64 {
        self.reads.losses.total()
    }

    fn take_losses(&mut self) -> Vec<(String, u64)> {
        self.reads.losses.take()
    }
}

#[cfg(test)]
mod tests {
    //! `export-read-then-sent`: the reader or its descendants, public destinations only.

    use crate::detect::testkit::*;

    fn read(path: &str, size: u64, who: &ProcessInfo) -> Body {
        file(FileAction::Read, path, Some(size), Some(csv(100_000)), who)
    }

    /// The engine without the rule that alerts on every new public address, to keep the
    /// alerts these tests count to this rule's.
    fn fleet(mut config: DetectConfig) -> Fleet {
        config.disabled = vec!["first-seen-public-destination".into()];
        Fleet::new(config)
    }

    #[test]
    fn a_descendant_of_the_reader_sending_to_a_public_address_alerts_with_the_lineage() {
        let mut fleet = fleet(DetectConfig::default());
        let python = process(7001, "/usr/bin/python3.11", "sato", &["/usr/bin/bash"]);
        let mut curl = process(7100, "/usr/bin/curl", "sato", &[]);
        curl.ancestry = std::iter::once(Ancestor {
            pid: 7001,
            exe: "/usr/bin/python3.11".into(),
            cmdline: "python3 up.py".into(),
            user: "sato".into(),
        })
        .chain(python.ancestry.clone())
        .collect();
        let mut updates = fleet.send("web1", 0, read("/srv/exports/c.csv", 17 * MIB, &python));
        // Private and loopback destinations are ordinary.
        updates.extend(fleet.send("web1", 5, connect("10.0.0.9", "private", &curl)));
        updates.extend(fleet.send("web1", 6, connect("127.0.0.1", "loopback", &curl)));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
        let updates = fleet.send("web1", 10, connect("203.0.113.50", "public", &curl));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        let alert = alerts[0];
        assert_eq!(alert.rule, "export-read-then-sent");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.fields["path"], "/srv/exports/c.csv");
        assert_eq!(alert.fields["size"], 17 * MIB);
        assert_eq!(alert.fields["reader_exe"], "/usr/bin/python3.11");
        assert_eq!(alert.fields["exe"], "/usr/bin/curl");
        assert_eq!(alert.fields["remote_addr"], "203.0.113.50");
        assert_eq!(alert.fields["bytes_sent"], 1_000_000);
        assert_eq!(
            alert.fields["lineage"],
            serde_json::json!([
                "/usr/bin/curl[7100]",
                "/usr/bin/python3.11[7001]",
                "/usr/bin/bash[7000]"
            ])
        );
        let seqs: Vec<u64> = alert.evidence.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 4]);
    }

    /// A long upload: the connect raises the alert without bytes, its close names them in the
    /// same alert (not another occurrence) with the close as evidence. A close long after the
    /// alert (past the dedup window) raises an alert of its own, naming the bytes.
    #[test]
    fn the_close_of_a_long_upload_names_its_bytes_in_the_alert_its_connect_raised() {
        let mut fleet = fleet(DetectConfig::default());
        let python = process(7001, "/usr/bin/python3.11", "sato", &["/usr/bin/bash"]);
        fleet.send("web1", 0, read("/srv/exports/c.csv", 17 * MIB, &python));
        let updates = fleet.send("web1", 5, opened("203.0.113.50", "public", &python));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        let alert = alerts[0].clone();
        assert!(!alert.fields.contains_key("bytes_sent"), "{alert:?}");

        let updates = fleet.send(
            "web1",
            65,
            closed("203.0.113.50", "public", &python, 3_000_000),
        );
        let repeat = only_repeat_of(&alert, &updates);
        assert_eq!(repeat.count, 1);
        assert_eq!(repeat.fields["bytes_sent"], 3_000_000);
        assert_eq!(repeat.fields["bytes_received"], 2);
        assert!(
            repeat.evidence.iter().any(|e| e.seq == 3),
            "{:?}",
            repeat.evidence
        );
        let stored = repeat.applied_to(&alert);
        assert_eq!(stored.fields["bytes_sent"], 3_000_000);
        assert_eq!(stored.count, 1);
        assert!(
            stored.summary.contains("(3000000 bytes sent)"),
            "{}",
            stored.summary
        );

        // Another upload to the same place, closing after the dedup window (10 minutes).
        fleet.send("web1", 100, opened("203.0.113.50", "public", &python));
        let updates = fleet.send(
            "web1",
            900,
            closed("203.0.113.50", "public", &python, 5_000_000),
        );
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{updates:?}");
        assert_eq!(alerts[0].fields["bytes_sent"], 5_000_000);
        assert!(
            alerts[0].summary.contains("5000000 bytes sent"),
            "{}",
            alerts[0].summary
        );
    }

    /// A read with the bytes the agent counted, `still_open` /  `closed` as the agent sends
    /// them for a reader that held the export open past its wait.
    fn counted(path: &str, who: &ProcessInfo, bytes: u64, still_open: bool) -> Body {
        let Body::File(mut event) = read(path, 17 * MIB, who) else {
            unreachable!()
        };
        event.bytes_read = Some(bytes);
        event.still_open = still_open;
        event.closed = !still_open;
        event.into()
    }

    /// The reader's bytes are named in the alert; a reader reported still open that sends
    /// before it closes gets its total into the same alert at its close, not another alert.
    #[test]
    fn the_bytes_read_are_named_and_a_readers_close_gives_the_alert_its_total() {
        let mut fleet = fleet(DetectConfig::default());
        let python = process(7001, "/usr/bin/python3.11", "sato", &["/usr/bin/bash"]);
        fleet.send(
            "web1",
            0,
            counted("/srv/exports/c.csv", &python, 3_000_000, true),
        );
        let updates = fleet.send("web1", 5, connect("203.0.113.50", "public", &python));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts.len(), 1, "{:?}", rules_of(&updates));
        let alert = alerts[0].clone();
        assert_eq!(alert.fields["bytes_read"], 3_000_000);
        assert!(
            alert.summary.contains("3000000 read so far"),
            "{}",
            alert.summary
        );

        let updates = fleet.send(
            "web1",
            8,
            counted("/srv/exports/c.csv", &python, 17 * MIB, false),
        );
        let repeat = only_repeat_of(&alert, &updates);
        assert_eq!(repeat.count, 1);
        assert_eq!(repeat.fields["bytes_read"], 17 * MIB);
        // The read, the connection and the close.
        let seqs: Vec<u64> = repeat.evidence.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let stored = repeat.applied_to(&alert);
        assert!(
            stored.summary.contains(&format!("{} read)", 17 * MIB)),
            "{}",
            stored.summary
        );

        // A later connection finds the total.
        let updates = fleet.send("web1", 9, connect("198.51.100.7", "public", &python));
        let alerts = new_alerts(&updates);
        assert_eq!(alerts[0].fields["bytes_read"], 17 * MIB);
    }

    #[test]
    fn small_files_old_reads_other_processes_and_reused_pids_do_not_alert() {
        let mut fleet = fleet(DetectConfig::default());
        let reader = process(7001, "/usr/bin/python3.11", "sato", &["/usr/bin/bash"]);
        let other = process(8001, "/usr/bin/curl", "sato", &["/usr/bin/bash"]);
        let reused = process(7001, "/usr/bin/wget", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web1", 0, read("/srv/small.csv", MIB, &reader));
        updates.extend(fleet.send("web1", 1, connect("203.0.113.1", "public", &reader)));
        updates.extend(fleet.send("web1", 2, read("/srv/big.csv", 64 * MIB, &reader)));
        updates.extend(fleet.send("web1", 3, connect("203.0.113.2", "public", &other)));
        updates.extend(fleet.send("web1", 4, connect("203.0.113.3", "public", &reused)));
        // Past the window (1h by default).
        updates.extend(fleet.send("web1", 4000, connect("203.0.113.4", "public", &reader)));
        // Another host's pid 7001 is another process.
        updates.extend(fleet.send("web2", 5, connect("203.0.113.5", "public", &reader)));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
    }

    #[test]
    fn configured_networks_decide_what_is_public() {
        let config: DetectConfig = toml::from_str(
            r#"
            public_networks = ["127.0.0.0/8"]
            private_networks = ["198.51.100.0/24"]
            "#,
        )
        .unwrap();
        let mut fleet = fleet(config);
        let reader = process(7001, "/usr/bin/python3.11", "sato", &["/usr/bin/bash"]);
        let mut updates = fleet.send("web1", 0, read("/srv/big.csv", 64 * MIB, &reader));
        // A partner's public range is private.
        updates.extend(fleet.send("web1", 1, connect("198.51.100.7", "public", &reader)));
        assert!(updates.is_empty(), "{:?}", rules_of(&updates));
        let updates = fleet.send("web1", 2, connect("127.0.0.1", "loopback", &reader));
        assert_eq!(rules_of(&updates), vec!["export-read-then-sent"]);

        let bad: DetectConfig = toml::from_str(r#"private_networks = ["10.0.0/8"]"#).unwrap();
        let error = Engine::new(&bad).err().unwrap().to_string();
        assert!(error.contains("private_networks: \"10.0.0/8\""), "{error}");
    }
}
