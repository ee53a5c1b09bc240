//! `scope`: whose records left, in one command.
//!
//! Over a window (or an alert's window), it answers which hosts read sensitive tables and how many rows,
//! which of them then connected to public addresses and how much they sent, which export files were
//! created or deleted with their estimated rows and personal-data counts, and which processes (with
//! their lineage) did it. A database read is attributed to the host that issued it: the database
//! server's own host for a local client, otherwise the host whose connections come from the read's
//! client address.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bannin::event::{
    Body, DbEvent, FileAction, FileEvent, NetAction, NetEvent, ProcessInfo, Record,
};
use bannin::time::Timestamp;
use serde::{Deserialize, Serialize};

use super::{ProcessTable, process_of};
use crate::alert::Alert;
use crate::store::investigate::HostAgent;

/// The kinds a scope reads; everything else (heartbeats, writes) is left in the store.
pub const KINDS: &[&str] = &[
    "db.query",
    "file.create",
    "file.delete",
    "file.rename",
    "net.close",
    "net.connect",
    "process.start",
];

/// How far before the window a scope looks for the ancestors of the processes in it.
pub const LOOKBACK: std::time::Duration = std::time::Duration::from_secs(3600);

/// A file this large is in scope even when the agent did not recognise it as an export.
const LARGE_FILE: u64 = 1024 * 1024;

pub struct Query {
    pub since: Timestamp,
    pub until: Timestamp,
    /// Agent or host names; empty: every host.
    pub hosts: Vec<String>,
    /// Center the window on this alert instead (its time and evidence hosts, ± `margin`).
    pub alert: Option<String>,
    pub margin: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventRef {
    pub agent_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scope {
    pub since: Timestamp,
    pub until: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alert: Option<String>,
    /// The answer: hosts that read sensitive records and afterwards connected to public addresses.
    pub read_and_sent: Vec<String>,
    pub hosts: Vec<HostSummary>,
    pub db_reads: Vec<DbRead>,
    pub files: Vec<FileFinding>,
    pub outbound: Vec<Outbound>,
    pub processes: Vec<ProcessFinding>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostSummary {
    pub host: String,
    /// None for a database client no agent runs on (known only by its address).
    pub agent_id: Option<String>,
    pub sensitive_rows_read: u64,
    pub sensitive_tables: Vec<String>,
    pub first_read: Option<Timestamp>,
    pub public_connections: u64,
    /// Public connections at or after this host's first sensitive read.
    pub public_connections_after_read: u64,
    /// Bytes sent on those connections, where the agent measured them.
    pub bytes_sent_after_read: u64,
    pub files_created: u64,
    pub files_deleted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbRead {
    /// The host that issued the reads.
    pub reader: String,
    pub reader_agent: Option<String>,
    /// The host whose agent saw them in the database's audit log.
    pub db_host: String,
    pub db_system: String,
    pub database: String,
    pub db_user: String,
    pub client_addr: String,
    pub session: String,
    pub tables: Vec<String>,
    pub queries: u64,
    /// Rows the reads returned, summed.
    pub rows: u64,
    /// The largest running total of sensitive rows the agent reported for the session.
    pub session_total: Option<u64>,
    pub first: Timestamp,
    pub last: Timestamp,
    pub evidence: Vec<EventRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileFinding {
    pub host: String,
    pub agent_id: String,
    pub seq: u64,
    pub ts: Timestamp,
    pub kind: String,
    pub path: String,
    pub size: Option<u64>,
    pub format: Option<String>,
    pub est_rows: Option<u64>,
    /// Personal data the agent counted in the file's sample: e-mails, phones, passports, cards.
    pub personal: u64,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbound {
    pub host: String,
    pub agent_id: String,
    pub seq: u64,
    pub ts: Timestamp,
    pub remote_addr: String,
    pub remote_port: u16,
    /// Where the agent measured them: at the close (the `net.close` of a connection reported
    /// open, or a `net.connect` that came at its close).
    pub bytes_sent: Option<u64>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub after_read: bool,
    pub local_addr: String,
    pub local_port: u16,
    /// The `net.close` that carried its bytes, when the connection was reported open first.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub close_seq: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessFinding {
    pub host: String,
    pub agent_id: String,
    pub pid: u32,
    pub exe: String,
    pub user: String,
    pub cmdline: String,
    pub lineage: Vec<String>,
    /// What it did that put it in scope: "file.create", "net.connect"...
    pub involved: Vec<String>,
}

fn is_local_client(addr: &str) -> bool {
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    addr.is_empty()
        || addr == "localhost"
        || addr == "local"
        || addr == "::1"
        || addr.starts_with("127.")
        || addr.starts_with("::ffff:127.")
}

fn is_unspecified(addr: &str) -> bool {
    addr.is_empty() || addr == "0.0.0.0" || addr == "::" || is_local_client(addr)
}

/// The earliest and latest time an alert names: its own and its rule's `created_ts`, `deleted_ts`,
/// `first_ts` and `last_ts`.
pub fn alert_span(alert: &Alert) -> (Timestamp, Timestamp) {
    let mut span = (alert.ts, alert.ts);
    for key in ["created_ts", "deleted_ts", "first_ts", "last_ts"] {
        if let Some(ts) = alert
            .fields
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(Timestamp::parse_rfc3339)
        {
            span = (span.0.min(ts), span.1.max(ts));
        }
    }
    span
}

/// Whether an event can put its process in scope: only file and network events do, so only their
/// agents need the ancestry from before the window.
pub fn involves_process(record: &Record) -> bool {
    matches!(record.event.body, Body::File(_) | Body::Net(_))
}

/// Key of one group of database reads: (reader, database host's agent, session, user, database).
type ReadKey = (String, String, String, String, String);

/// A scope built from the window's events in time order (of the kinds in [`KINDS`]), after the
/// `process.start` events from before the window ([`LOOKBACK`]) on the agents whose events
/// [`involve a process`](involves_process).
///
/// A database read is attributed to its reader only in [`finish`](ScopeBuilder::finish): the
/// connection that shows which host a client address belongs to may come after the read.
#[derive(Debug)]
pub struct ScopeBuilder {
    since: Timestamp,
    until: Timestamp,
    alert: Option<String>,
    /// Agent id → agent name, the name people use for a host.
    names: HashMap<String, String>,
    /// Which agent a database client address belongs to: agents' names and host names, then the
    /// local addresses of their connections (the latest wins).
    by_addr: HashMap<String, String>,
    /// Agent names the report is narrowed to; None: every host.
    wanted: Option<BTreeSet<String>>,
    table: ProcessTable,
    /// The events the report rests on, in time order.
    evidence: Vec<Record>,
    /// Positions in `evidence` of reads of sensitive tables.
    reads: Vec<usize>,
    files: Vec<FileFinding>,
    outbound: Vec<Outbound>,
    processes: BTreeMap<(String, u32, String), ProcessFinding>,
}

impl ScopeBuilder {
    /// A scope of `since..=until` (around `alert`, when it is an alert's) over the enrolled
    /// `agents`, narrowed to the hosts named in `wanted`.
    pub fn new(
        since: Timestamp,
        until: Timestamp,
        alert: Option<String>,
        agents: &[HostAgent],
        wanted: Option<BTreeSet<String>>,
    ) -> ScopeBuilder {
        let mut by_addr = HashMap::new();
        for agent in agents {
            by_addr.insert(agent.name.clone(), agent.id.clone());
            by_addr.insert(agent.host.clone(), agent.id.clone());
        }
        ScopeBuilder {
            since,
            until,
            alert,
            names: agents
                .iter()
                .map(|a| (a.id.clone(), a.name.clone()))
                .collect(),
            by_addr,
            wanted,
            table: ProcessTable::default(),
            evidence: Vec::new(),
            reads: Vec::new(),
            files: Vec::new(),
            outbound: Vec::new(),
            processes: BTreeMap::new(),
        }
    }

    /// Learns a process that started before the window.
    pub fn ancestor(&mut self, record: &Record) {
        self.table.observe(record);
    }

    /// Takes in the window's next event.
    pub fn observe(&mut self, record: Record) {
        self.table.observe(&record);
        let involved = match &record.event.body {
            Body::Db(db) if !db.sensitive_tables.is_empty() && !db.failed => {
                self.reads.push(self.evidence.len());
                None
            }
            Body::File(file) if in_scope(file) => {
                let finding = self.file_finding(&record, file);
                self.files.push(finding);
                Some(record.event.kind())
            }
            Body::Net(net) => {
                if !is_unspecified(&net.local_addr) {
                    self.by_addr
                        .insert(net.local_addr.clone(), record.agent_id.clone());
                }
                if net.remote_scope != "public" {
                    return;
                }
                if net.action == NetAction::Close && self.closed(&record, net) {
                    self.evidence.push(record);
                    return;
                }
                let outbound = self.outbound_of(&record, net);
                self.outbound.push(outbound);
                Some(record.event.kind())
            }
            _ => return,
        };
        if let (Some(kind), Some(info)) = (involved, process_of(&record)) {
            self.involve(&record.agent_id, info, kind);
        }
        self.evidence.push(record);
    }

    /// The report, and the events it rests on that concern the hosts in it.
    pub fn finish(self) -> (Scope, Vec<Record>) {
        let reads = self.attribute_reads();
        let mut summaries: BTreeMap<String, HostSummary> = BTreeMap::new();
        for read in reads.values() {
            let s = summary(&mut summaries, &read.reader, read.reader_agent.as_ref());
            s.sensitive_rows_read += read.session_total.unwrap_or(0).max(read.rows);
            for table in &read.tables {
                if !s.sensitive_tables.contains(table) {
                    s.sensitive_tables.push(table.clone());
                }
            }
            s.first_read = Some(s.first_read.map_or(read.first, |t| t.min(read.first)));
        }
        for file in &self.files {
            let s = summary(&mut summaries, &file.host, Some(&file.agent_id));
            match file.kind.as_str() {
                "file.create" => s.files_created += 1,
                "file.delete" => s.files_deleted += 1,
                _ => {}
            }
        }
        let mut outbound = self.outbound;
        for out in &mut outbound {
            let s = summary(&mut summaries, &out.host, Some(&out.agent_id));
            s.public_connections += 1;
            if s.first_read.is_some_and(|first| out.ts >= first) {
                out.after_read = true;
                s.public_connections_after_read += 1;
                s.bytes_sent_after_read += out.bytes_sent.unwrap_or(0);
            }
        }

        let wanted = self.wanted;
        let keep = |host: &str| wanted.as_ref().is_none_or(|w| w.contains(host));
        let mut report = Scope {
            since: self.since,
            until: self.until,
            alert: self.alert,
            read_and_sent: summaries
                .values()
                .filter(|s| keep(&s.host) && s.public_connections_after_read > 0)
                .map(|s| s.host.clone())
                .collect(),
            hosts: summaries.into_values().filter(|s| keep(&s.host)).collect(),
            db_reads: reads
                .into_values()
                .filter(|r| keep(&r.reader) || keep(&r.db_host))
                .collect(),
            files: self.files.into_iter().filter(|f| keep(&f.host)).collect(),
            outbound: outbound.into_iter().filter(|o| keep(&o.host)).collect(),
            processes: self
                .processes
                .into_values()
                .filter(|p| keep(&p.host))
                .collect(),
        };
        report
            .processes
            .sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
        let in_report: BTreeSet<&str> = report
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .chain(report.db_reads.iter().map(|r| r.db_host.as_str()))
            .collect();
        let names = &self.names;
        let evidence = self
            .evidence
            .into_iter()
            .filter(|r| in_report.contains(host_of(names, &r.agent_id)))
            .collect();
        (report, evidence)
    }

    fn host_of(&self, agent_id: &str) -> String {
        host_of(&self.names, agent_id).to_string()
    }

    /// The sensitive reads grouped by reader, database host, session, user and database, each
    /// reader found from the client address now that every connection has been seen.
    fn attribute_reads(&self) -> BTreeMap<ReadKey, DbRead> {
        let mut reads: BTreeMap<ReadKey, DbRead> = BTreeMap::new();
        for &index in &self.reads {
            let record = &self.evidence[index];
            let Body::Db(db) = &record.event.body else {
                continue;
            };
            let (reader, reader_agent) = self.reader(&record.agent_id, db);
            let key = (
                reader.clone(),
                record.agent_id.clone(),
                db.session.clone(),
                db.db_user.clone(),
                db.database.clone(),
            );
            let ts = record.event.ts;
            let read = reads.entry(key).or_insert_with(|| DbRead {
                reader,
                reader_agent,
                db_host: self.host_of(&record.agent_id),
                db_system: db.db_system.clone(),
                database: db.database.clone(),
                db_user: db.db_user.clone(),
                client_addr: db.client_addr.clone(),
                session: db.session.clone(),
                tables: Vec::new(),
                queries: 0,
                rows: 0,
                session_total: None,
                first: ts,
                last: ts,
                evidence: Vec::new(),
            });
            for table in &db.sensitive_tables {
                if !read.tables.contains(table) {
                    read.tables.push(table.clone());
                }
            }
            read.queries += 1;
            read.rows += db.rows.unwrap_or(0);
            read.session_total = read.session_total.max(db.session_sensitive_rows);
            read.last = ts;
            read.evidence.push(EventRef {
                agent_id: record.agent_id.clone(),
                seq: record.event.seq,
            });
        }
        reads
    }

    /// The host that issued a read the agent `db_agent` saw: the database's own host for a local
    /// client, else the agent whose connections use the client address, else the address itself.
    fn reader(&self, db_agent: &str, db: &DbEvent) -> (String, Option<String>) {
        if is_local_client(&db.client_addr) {
            return (self.host_of(db_agent), Some(db_agent.to_string()));
        }
        match self.by_addr.get(&db.client_addr) {
            Some(agent) => (self.host_of(agent), Some(agent.clone())),
            None => (db.client_addr.clone(), None),
        }
    }

    fn file_finding(&self, record: &Record, file: &FileEvent) -> FileFinding {
        let export = file.export.as_ref();
        FileFinding {
            host: self.host_of(&record.agent_id),
            agent_id: record.agent_id.clone(),
            seq: record.event.seq,
            ts: record.event.ts,
            kind: record.event.kind().to_string(),
            path: file.path.clone(),
            size: file.size,
            format: export.map(|e| e.format.clone()),
            est_rows: export.and_then(|e| e.est_rows),
            personal: export.map_or(0, |e| e.emails + e.phones + e.passports + e.cards),
            pid: file.process.as_ref().map(|p| p.pid),
            exe: file.process.as_ref().map(|p| p.exe.clone()),
            user: file.process.as_ref().map(|p| p.user.clone()),
        }
    }

    /// Gives the bytes of a `net.close` to the connection its `net.connect` put in scope;
    /// false when that came before the window, and the close stands for the connection.
    fn closed(&mut self, record: &Record, net: &NetEvent) -> bool {
        let open = self.outbound.iter_mut().rev().find(|out| {
            out.agent_id == record.agent_id
                && out.close_seq.is_none()
                && out.local_port == net.local_port
                && out.remote_port == net.remote_port
                && out.local_addr == net.local_addr
                && out.remote_addr == net.remote_addr
        });
        let Some(open) = open else {
            return false;
        };
        open.bytes_sent = net.bytes_sent.or(open.bytes_sent);
        open.close_seq = Some(record.event.seq);
        true
    }

    fn outbound_of(&self, record: &Record, net: &NetEvent) -> Outbound {
        Outbound {
            host: self.host_of(&record.agent_id),
            agent_id: record.agent_id.clone(),
            seq: record.event.seq,
            ts: record.event.ts,
            remote_addr: net.remote_addr.clone(),
            remote_port: net.remote_port,
            bytes_sent: net.bytes_sent,
            pid: net.process.as_ref().map(|p| p.pid),
            exe: net.process.as_ref().map(|p| p.exe.clone()),
            after_read: false,
            local_addr: net.local_addr.clone(),
            local_port: net.local_port,
            close_seq: (net.action == NetAction::Close).then_some(record.event.seq),
        }
    }

    /// Records that a process did `kind`; its lineage is the one known when it first appears.
    fn involve(&mut self, agent_id: &str, info: &ProcessInfo, kind: &str) {
        let key = (agent_id.to_string(), info.pid, info.exe.clone());
        if !self.processes.contains_key(&key) {
            let finding = ProcessFinding {
                host: self.host_of(agent_id),
                agent_id: agent_id.to_string(),
                pid: info.pid,
                exe: info.exe.clone(),
                user: info.user.clone(),
                cmdline: info.cmdline.clone(),
                lineage: self.table.lineage(agent_id, info),
                involved: Vec::new(),
            };
            self.processes.insert(key.clone(), finding);
        }
        if let Some(finding) = self.processes.get_mut(&key)
            && !finding.involved.iter().any(|k| k == kind)
        {
            finding.involved.push(kind.to_string());
        }
    }
}

/// A file event that puts its file in scope: a created, deleted or renamed export, or any such
/// large file.
fn in_scope(file: &FileEvent) -> bool {
    file.action != FileAction::Write
        && (file.export.is_some() || file.size.unwrap_or(0) >= LARGE_FILE)
}

/// The name people use for the host an agent runs on; its id when it is not enrolled here.
fn host_of<'a>(names: &'a HashMap<String, String>, agent_id: &'a str) -> &'a str {
    names.get(agent_id).map_or(agent_id, String::as_str)
}

fn summary<'a>(
    summaries: &'a mut BTreeMap<String, HostSummary>,
    host: &str,
    agent: Option<&String>,
) -> &'a mut HostSummary {
    summaries
        .entry(host.to_string())
        .or_insert_with(|| HostSummary {
            host: host.to_string(),
            agent_id: agent.cloned(),
            ..HostSummary::default()
        })
}

#[cfg(test)]
mod tests {
    use bannin::event::{DbAction, Event};

    use super::*;

    fn record(agent_id: &str, seq: u64, body: impl Into<Body>) -> Record {
        Record {
            agent_id: agent_id.into(),
            event: Event {
                seq,
                ts: Timestamp::from_nanos(i64::try_from(seq).unwrap() * 1_000_000_000),
                host: agent_id.into(),
                body: body.into(),
            },
        }
    }

    fn agent(no: i64, id: &str, name: &str) -> HostAgent {
        HostAgent {
            no,
            id: id.into(),
            name: name.into(),
            host: format!("{name}.lan"),
        }
    }

    /// A scope over all time and every agent.
    fn unbounded(agents: &[HostAgent]) -> ScopeBuilder {
        ScopeBuilder::new(
            Timestamp::from_nanos(0),
            Timestamp::from_nanos(i64::MAX),
            None,
            agents,
            None,
        )
    }

    #[test]
    fn a_read_is_attributed_to_the_host_whose_later_connection_shows_the_client_address() {
        let agents = [agent(1, "a-db", "db1"), agent(2, "a-app", "app1")];
        let mut builder = unbounded(&agents);
        let mut read = DbEvent::new(DbAction::Query, "postgresql");
        read.client_addr = "10.0.0.7".into();
        read.session = "s1".into();
        read.sensitive_tables = vec!["public.customers".into()];
        read.rows = Some(500);
        builder.observe(record("a-db", 1, read));
        // Only afterwards does app1 show that 10.0.0.7 is its address, then it sends data out.
        builder.observe(record(
            "a-app",
            2,
            NetEvent {
                action: NetAction::Connect,
                local_addr: "10.0.0.7".into(),
                remote_addr: "203.0.113.9".into(),
                remote_scope: "public".into(),
                bytes_sent: Some(4096),
                ..NetEvent::default()
            },
        ));
        let (scope, evidence) = builder.finish();
        assert_eq!(scope.read_and_sent, ["app1"]);
        let read = &scope.db_reads[0];
        assert_eq!(
            (
                read.reader.as_str(),
                read.reader_agent.as_deref(),
                read.db_host.as_str()
            ),
            ("app1", Some("a-app"), "db1")
        );
        let app = scope.hosts.iter().find(|h| h.host == "app1").unwrap();
        assert_eq!(
            (app.sensitive_rows_read, app.bytes_sent_after_read),
            (500, 4096)
        );
        let seqs: Vec<u64> = evidence.iter().map(|r| r.event.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    /// A long upload: its `net.connect` carries no bytes, its `net.close` does. The bytes count
    /// once, for the one connection, and the close is evidence.
    #[test]
    fn the_bytes_of_a_close_belong_to_the_connection_it_closes() {
        let agents = [agent(1, "a-app", "app1")];
        let mut builder = unbounded(&agents);
        let mut read = DbEvent::new(DbAction::Query, "postgresql");
        read.session = "s1".into();
        read.sensitive_tables = vec!["public.customers".into()];
        read.rows = Some(500);
        builder.observe(record("a-app", 1, read));
        let open = NetEvent {
            action: NetAction::Connect,
            local_addr: "10.0.0.7".into(),
            local_port: 40000,
            remote_addr: "203.0.113.9".into(),
            remote_port: 443,
            remote_scope: "public".into(),
            ..NetEvent::default()
        };
        builder.observe(record("a-app", 2, open.clone()));
        // Another connection to the same place, still open at the end of the window.
        builder.observe(record(
            "a-app",
            3,
            NetEvent {
                local_port: 40001,
                ..open.clone()
            },
        ));
        builder.observe(record(
            "a-app",
            4,
            NetEvent {
                action: NetAction::Close,
                bytes_sent: Some(3_000_000),
                bytes_received: Some(2),
                ..open
            },
        ));
        let (scope, evidence) = builder.finish();
        let app = &scope.hosts[0];
        assert_eq!(
            (
                app.public_connections,
                app.public_connections_after_read,
                app.bytes_sent_after_read
            ),
            (2, 2, 3_000_000)
        );
        let closed: Vec<(u64, Option<u64>, Option<u64>)> = scope
            .outbound
            .iter()
            .map(|o| (o.seq, o.bytes_sent, o.close_seq))
            .collect();
        assert_eq!(closed, [(2, Some(3_000_000), Some(4)), (3, None, None)]);
        let seqs: Vec<u64> = evidence.iter().map(|r| r.event.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
}
