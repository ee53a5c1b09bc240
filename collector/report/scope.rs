//! `scope`: whose records left, in one command.
//!
//! Over a window (or an alert's window), it answers which hosts read sensitive tables and how many rows,
//! which of them then connected to public addresses and how much they sent, which export files were
//! created or deleted with their estimated rows and personal-data counts, and which processes (with
//! their lineage) did it. A database read is attributed to the host that issued it: the database
//! server's own host for a local client, otherwise the host whose connections come from the read's
//! client address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use bannin::event::{Body, FileAction, Record};
use bannin::time::Timestamp;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::{ProcessTable, ReportError, process_of, short_exe};
use crate::output::row;
use crate::store::investigate::{self, HostAgent, Range};

/// The kinds a scope reads; everything else (heartbeats, writes) is left in the store.
const KINDS: &[&str] = &[
    "db.query",
    "file.create",
    "file.delete",
    "file.rename",
    "net.connect",
    "process.start",
];

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
    pub bytes_sent: Option<u64>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub after_read: bool,
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

/// The window and hosts an alert stands for, read from the stored alert.
fn alert_window(
    conn: &Connection,
    id: &str,
    margin: std::time::Duration,
    agents: &[HostAgent],
) -> Result<(Timestamp, Timestamp, Vec<String>), ReportError> {
    let alerts = investigate::alerts(
        conn,
        &crate::store::alerts::AlertFilter {
            limit: usize::MAX,
            ..Default::default()
        },
    )?;
    let alert = alerts
        .iter()
        .find(|a| match a.get("id") {
            Some(serde_json::Value::String(s)) => s == id,
            Some(serde_json::Value::Number(n)) => n.to_string() == id,
            _ => false,
        })
        .ok_or_else(|| ReportError::UnknownAlert { id: id.to_string() })?;
    let times: Vec<Timestamp> = ["ts", "created_ts", "deleted_ts", "first_ts", "last_ts"]
        .iter()
        .filter_map(|key| alert.get(*key)?.as_str())
        .filter_map(Timestamp::parse_rfc3339)
        .collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return Err(ReportError::AlertWithoutTime { id: id.to_string() });
    };
    let mut hosts: BTreeSet<String> = BTreeSet::new();
    if let Some(host) = alert.get("host").and_then(|h| h.as_str()) {
        hosts.insert(host.to_string());
    }
    if let Some(evidence) = alert.get("evidence").and_then(|e| e.as_array()) {
        for item in evidence {
            if let Some(agent) = item.get("agent_id").and_then(|a| a.as_str())
                && let Some(found) = agents.iter().find(|a| a.id == agent)
            {
                hosts.insert(found.name.clone());
            }
        }
    }
    Ok((
        first.saturating_sub(margin),
        last.saturating_add(margin),
        hosts.into_iter().collect(),
    ))
}

/// The scope report and the events it rests on (for OCSF output and for checking by hand).
pub fn scope(conn: &Connection, query: &Query) -> Result<(Scope, Vec<Record>), ReportError> {
    let agents = investigate::all_agents(conn)?;
    let (since, until, hosts) = match &query.alert {
        Some(id) => alert_window(conn, id, query.margin, &agents)?,
        None => (query.since, query.until, query.hosts.clone()),
    };
    let name_of: HashMap<&str, &str> = agents
        .iter()
        .map(|a| (a.id.as_str(), a.name.as_str()))
        .collect();
    let host_of = |agent_id: &str| -> String {
        name_of
            .get(agent_id)
            .map(|n| n.to_string())
            .unwrap_or_else(|| agent_id.to_string())
    };
    let mut wanted: Option<BTreeSet<String>> = None;
    for host in &hosts {
        let found = investigate::agents_for_host(conn, host)?;
        if found.is_empty() {
            return Err(ReportError::UnknownHost { host: host.clone() });
        }
        wanted
            .get_or_insert_with(BTreeSet::new)
            .extend(found.into_iter().map(|a| a.name));
    }

    let records = investigate::records(
        conn,
        &Range {
            agents: None,
            since,
            until,
            kinds: KINDS,
            limit: None,
        },
    )?;

    // Which agent a database client address belongs to, from the addresses its connections use.
    let mut by_addr: HashMap<String, String> = HashMap::new();
    for agent in &agents {
        by_addr.insert(agent.name.clone(), agent.id.clone());
        by_addr.insert(agent.host.clone(), agent.id.clone());
    }
    for record in &records {
        if let Body::Net(net) = &record.event.body
            && !is_unspecified(&net.local_addr)
        {
            by_addr.insert(net.local_addr.clone(), record.agent_id.clone());
        }
    }

    // Ancestors started shortly before the window, on hosts whose processes will be in scope.
    let mut table = ProcessTable::default();
    let acting: BTreeSet<&str> = records
        .iter()
        .filter(|r| matches!(r.event.body, Body::File(_) | Body::Net(_)))
        .map(|r| r.agent_id.as_str())
        .collect();
    let acting_nos: Vec<i64> = agents
        .iter()
        .filter(|a| acting.contains(a.id.as_str()))
        .map(|a| a.no)
        .collect();
    let earlier = investigate::records(
        conn,
        &Range {
            agents: Some(&acting_nos),
            since: since.saturating_sub(SCOPE_LOOKBACK),
            until: Timestamp::from_nanos(since.as_nanos().saturating_sub(1)),
            kinds: &["process.start"],
            limit: None,
        },
    )?;
    for record in &earlier {
        table.observe(record);
    }

    let mut reads: BTreeMap<(String, String, String, String, String), DbRead> = BTreeMap::new();
    let mut files = Vec::new();
    let mut outbound = Vec::new();
    let mut processes: BTreeMap<(String, u32, String), ProcessFinding> = BTreeMap::new();
    let mut evidence: BTreeSet<usize> = BTreeSet::new();
    for (index, record) in records.iter().enumerate() {
        table.observe(record);
        let event = &record.event;
        let mut involved = None;
        match &event.body {
            Body::Db(db) if !db.sensitive_tables.is_empty() && !db.failed => {
                let (reader, reader_agent) = if is_local_client(&db.client_addr) {
                    (host_of(&record.agent_id), Some(record.agent_id.clone()))
                } else {
                    match by_addr.get(&db.client_addr) {
                        Some(agent) => (host_of(agent), Some(agent.clone())),
                        None => (db.client_addr.clone(), None),
                    }
                };
                let key = (
                    reader.clone(),
                    record.agent_id.clone(),
                    db.session.clone(),
                    db.db_user.clone(),
                    db.database.clone(),
                );
                let read = reads.entry(key).or_insert_with(|| DbRead {
                    reader,
                    reader_agent,
                    db_host: host_of(&record.agent_id),
                    db_system: db.db_system.clone(),
                    database: db.database.clone(),
                    db_user: db.db_user.clone(),
                    client_addr: db.client_addr.clone(),
                    session: db.session.clone(),
                    tables: Vec::new(),
                    queries: 0,
                    rows: 0,
                    session_total: None,
                    first: event.ts,
                    last: event.ts,
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
                read.last = event.ts;
                read.evidence.push(EventRef {
                    agent_id: record.agent_id.clone(),
                    seq: event.seq,
                });
                evidence.insert(index);
            }
            Body::File(file)
                if file.action != FileAction::Write
                    && (file.export.is_some() || file.size.unwrap_or(0) >= LARGE_FILE) =>
            {
                let export = file.export.as_ref();
                files.push(FileFinding {
                    host: host_of(&record.agent_id),
                    agent_id: record.agent_id.clone(),
                    seq: event.seq,
                    ts: event.ts,
                    kind: event.kind().to_string(),
                    path: file.path.clone(),
                    size: file.size,
                    format: export.map(|e| e.format.clone()),
                    est_rows: export.and_then(|e| e.est_rows),
                    personal: export
                        .map(|e| e.emails + e.phones + e.passports + e.cards)
                        .unwrap_or(0),
                    pid: file.process.as_ref().map(|p| p.pid),
                    exe: file.process.as_ref().map(|p| p.exe.clone()),
                    user: file.process.as_ref().map(|p| p.user.clone()),
                });
                involved = Some(event.kind());
                evidence.insert(index);
            }
            Body::Net(net) if net.remote_scope == "public" => {
                outbound.push(Outbound {
                    host: host_of(&record.agent_id),
                    agent_id: record.agent_id.clone(),
                    seq: event.seq,
                    ts: event.ts,
                    remote_addr: net.remote_addr.clone(),
                    remote_port: net.remote_port,
                    bytes_sent: net.bytes_sent,
                    pid: net.process.as_ref().map(|p| p.pid),
                    exe: net.process.as_ref().map(|p| p.exe.clone()),
                    after_read: false,
                });
                involved = Some(event.kind());
                evidence.insert(index);
            }
            _ => {}
        }
        if let (Some(kind), Some(info)) = (involved, process_of(record)) {
            let key = (record.agent_id.clone(), info.pid, info.exe.clone());
            let finding = processes.entry(key).or_insert_with(|| ProcessFinding {
                host: host_of(&record.agent_id),
                agent_id: record.agent_id.clone(),
                pid: info.pid,
                exe: info.exe.clone(),
                user: info.user.clone(),
                cmdline: info.cmdline.clone(),
                lineage: table.lineage(&record.agent_id, info),
                involved: Vec::new(),
            });
            if !finding.involved.iter().any(|k| k == kind) {
                finding.involved.push(kind.to_string());
            }
        }
    }

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
    for file in &files {
        let s = summary(&mut summaries, &file.host, Some(&file.agent_id));
        match file.kind.as_str() {
            "file.create" => s.files_created += 1,
            "file.delete" => s.files_deleted += 1,
            _ => {}
        }
    }
    for out in &mut outbound {
        let s = summary(&mut summaries, &out.host, Some(&out.agent_id));
        s.public_connections += 1;
        if s.first_read.is_some_and(|first| out.ts >= first) {
            out.after_read = true;
            s.public_connections_after_read += 1;
            s.bytes_sent_after_read += out.bytes_sent.unwrap_or(0);
        }
    }

    let keep = |host: &str| wanted.as_ref().is_none_or(|w| w.contains(host));
    let mut report = Scope {
        since,
        until,
        alert: query.alert.clone(),
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
        files: files.into_iter().filter(|f| keep(&f.host)).collect(),
        outbound: outbound.into_iter().filter(|o| keep(&o.host)).collect(),
        processes: processes.into_values().filter(|p| keep(&p.host)).collect(),
    };
    report
        .processes
        .sort_by(|a, b| (&a.host, a.pid).cmp(&(&b.host, b.pid)));
    let in_report: BTreeSet<String> = report
        .hosts
        .iter()
        .map(|h| h.host.clone())
        .chain(report.db_reads.iter().map(|r| r.db_host.clone()))
        .collect();
    let evidence = evidence
        .into_iter()
        .filter_map(|i| records.get(i))
        .filter(|r| in_report.contains(&host_of(&r.agent_id)))
        .cloned()
        .collect();
    Ok((report, evidence))
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

/// How far before the window a scope looks for the ancestors of the processes in it.
const SCOPE_LOOKBACK: std::time::Duration = std::time::Duration::from_secs(3600);

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

pub fn print_table(out: &mut impl Write, scope: &Scope) -> std::io::Result<()> {
    row!(
        out,
        "scope {} .. {}{}",
        scope.since,
        scope.until,
        scope
            .alert
            .as_ref()
            .map(|a| format!(" (alert {a})"))
            .unwrap_or_default()
    )?;
    writeln!(out)?;
    if scope.read_and_sent.is_empty() {
        row!(
            out,
            "read sensitive records, then connected out: none in this window"
        )?;
    } else {
        row!(
            out,
            "read sensitive records, then connected out: {}",
            scope.read_and_sent.join(", ")
        )?;
    }
    writeln!(out)?;
    row!(
        out,
        "{:<20}  {:>12}  {:<30}  {:>8}  {:>12}  {:>7}  {:>7}",
        "HOST",
        "ROWS READ",
        "TABLES",
        "OUT",
        "BYTES SENT",
        "CREATED",
        "DELETED"
    )?;
    for h in &scope.hosts {
        row!(
            out,
            "{:<20}  {:>12}  {:<30}  {:>8}  {:>12}  {:>7}  {:>7}",
            h.host,
            h.sensitive_rows_read,
            h.sensitive_tables.join(","),
            format!(
                "{}/{}",
                h.public_connections_after_read, h.public_connections
            ),
            h.bytes_sent_after_read,
            h.files_created,
            h.files_deleted
        )?;
    }
    if !scope.db_reads.is_empty() {
        writeln!(out)?;
        row!(out, "database reads of sensitive tables:")?;
        for r in &scope.db_reads {
            row!(
                out,
                "  {} read {} rows of {} ({} queries, session total {}) as {}@{} on {} [{}], session {}, {} .. {}",
                r.reader,
                r.rows,
                r.tables.join(","),
                r.queries,
                opt(r.session_total),
                r.db_user,
                r.database,
                r.db_host,
                r.db_system,
                r.session,
                r.first,
                r.last
            )?;
        }
    }
    if !scope.files.is_empty() {
        writeln!(out)?;
        row!(out, "export files created or deleted:")?;
        for f in &scope.files {
            row!(
                out,
                "  {} {} {} {} size={} format={} rows~{} personal={} by {} (pid {}, user {})",
                f.ts,
                f.host,
                f.kind,
                f.path,
                opt(f.size),
                opt(f.format.clone()),
                opt(f.est_rows),
                f.personal,
                opt(f.exe.as_deref().map(short_exe)),
                opt(f.pid),
                opt(f.user.clone())
            )?;
        }
    }
    if !scope.outbound.is_empty() {
        writeln!(out)?;
        row!(out, "connections to public addresses:")?;
        for o in &scope.outbound {
            row!(
                out,
                "  {} {} -> {}:{} sent={} by {} (pid {}){}",
                o.ts,
                o.host,
                o.remote_addr,
                o.remote_port,
                opt(o.bytes_sent),
                opt(o.exe.as_deref().map(short_exe)),
                opt(o.pid),
                if o.after_read { " after reading" } else { "" }
            )?;
        }
    }
    if !scope.processes.is_empty() {
        writeln!(out)?;
        row!(out, "processes involved:")?;
        for p in &scope.processes {
            let mut chain = vec![short_exe(&p.exe)];
            chain.extend(p.lineage.iter().map(|e| short_exe(e)));
            row!(
                out,
                "  {} pid {} {} user {} ({})",
                p.host,
                p.pid,
                chain.join(" ← "),
                p.user,
                p.involved.join(", ")
            )?;
        }
    }
    Ok(())
}
