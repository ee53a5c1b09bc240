//! Fixtures shared by the detection tests, which sit beside what they test: events as agents
//! send them, a fleet of agents feeding one engine, and the types the tests name.

pub(crate) use std::collections::HashMap;
pub(crate) use std::time::Duration;

pub(crate) use bannin::event::{
    AgentAction, AgentEvent, Ancestor, Body, DbAction, DbEvent, Event, ExportInfo, FileAction,
    FileEvent, NetAction, NetEvent, ProcessAction, ProcessEvent, ProcessInfo, Record, SensorEvent,
    SensorStatus,
};
pub(crate) use bannin::time::Timestamp;
pub(crate) use serde_json::{Map, Value as Json};

pub(crate) use super::config::Limits;
pub(crate) use super::{AlertUpdate, DetectConfig, Engine};
pub(crate) use crate::alert::{Alert, EvidenceRef, Severity};
pub(crate) use crate::finding::{Finding, FindingKind};

pub(crate) const MIB: u64 = 1024 * 1024;
/// 2026-11-21T00:00:00Z.
pub(crate) const DAY0: i64 = 1_795_219_200;

pub(crate) fn at(secs: i64) -> Timestamp {
    Timestamp::from_secs(DAY0 + secs)
}

pub(crate) fn process(pid: u32, exe: &str, user: &str, parents: &[&str]) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid: Some(pid - 1),
        exe: exe.into(),
        cmdline: exe.rsplit('/').next().unwrap_or(exe).into(),
        user: user.into(),
        uid: Some(1000),
        ancestry: parents
            .iter()
            .enumerate()
            .map(|(i, exe)| Ancestor {
                pid: pid - 1 - i as u32,
                exe: (*exe).into(),
                cmdline: (*exe).into(),
                user: user.into(),
            })
            .collect(),
    }
}

pub(crate) fn csv(rows: u64) -> ExportInfo {
    ExportInfo {
        class: "data".into(),
        format: "csv".into(),
        est_rows: Some(rows),
        sampled_bytes: 65_536,
        emails: rows,
        phones: rows / 2,
        passports: rows / 10,
        cards: 0,
    }
}

pub(crate) fn file(
    action: FileAction,
    path: &str,
    size: Option<u64>,
    export: Option<ExportInfo>,
    who: &ProcessInfo,
) -> Body {
    let mut event = FileEvent::new(action, path, "fanotify");
    event.size = size;
    event.export = export;
    event.process = Some(std::sync::Arc::new(who.clone()));
    event.process_known = true;
    event.into()
}

pub(crate) fn rename(from: &str, to: &str, size: u64, who: &ProcessInfo) -> Body {
    let mut event = FileEvent::new(FileAction::Rename, to, "fanotify");
    event.from_path = Some(from.into());
    event.size = Some(size);
    event.process = Some(std::sync::Arc::new(who.clone()));
    event.process_known = true;
    event.into()
}

pub(crate) fn query(
    user: &str,
    session: &str,
    rows: u64,
    session_total: Option<u64>,
    user_total: Option<u64>,
) -> Body {
    let mut db = DbEvent::new(DbAction::Query, "postgresql");
    db.db_user = user.into();
    db.database = "sales".into();
    db.client_addr = "10.0.0.23".into();
    db.session = session.into();
    db.statement = "SELECT * FROM public.customers LIMIT 4000".into();
    db.statement_kind = "read".into();
    db.tables = vec!["public.customers".into()];
    db.sensitive_tables = vec!["public.customers".into()];
    db.rows = Some(rows);
    db.session_sensitive_rows = session_total;
    db.user_sensitive_rows = user_total;
    db.into()
}

pub(crate) fn export_query(user: &str, method: &str) -> Body {
    let mut db = DbEvent::new(DbAction::Query, "postgresql");
    db.db_user = user.into();
    db.database = "sales".into();
    db.session = "s-9".into();
    db.statement = "COPY public.customers TO '/tmp/c.csv' CSV".into();
    db.statement_kind = "export".into();
    db.tables = vec!["public.customers".into()];
    db.export_method = method.into();
    db.into()
}

/// The connection of [`connect`] reported open, before its bytes were known (a long upload).
pub(crate) fn opened(remote: &str, scope: &str, who: &ProcessInfo) -> Body {
    let Body::Net(mut net) = connect(remote, scope, who) else {
        unreachable!("connect is a net event")
    };
    net.bytes_sent = None;
    net.into()
}

/// The close of [`opened`]'s connection, with the bytes that went each way.
pub(crate) fn closed(remote: &str, scope: &str, who: &ProcessInfo, sent: u64) -> Body {
    let Body::Net(mut net) = connect(remote, scope, who) else {
        unreachable!("connect is a net event")
    };
    net.action = NetAction::Close;
    net.bytes_sent = Some(sent);
    net.bytes_received = Some(2);
    net.into()
}

pub(crate) fn connect(remote: &str, scope: &str, who: &ProcessInfo) -> Body {
    NetEvent {
        action: NetAction::Connect,
        process: Some(who.clone()),
        protocol: "tcp".into(),
        local_addr: "10.0.0.5".into(),
        local_port: 40_000,
        remote_addr: remote.into(),
        remote_port: 443,
        remote_scope: scope.into(),
        bytes_sent: Some(1_000_000),
        bytes_received: None,
    }
    .into()
}

pub(crate) fn start(who: ProcessInfo) -> Body {
    ProcessEvent {
        action: ProcessAction::Start,
        process: who,
        cwd: "/home/sato".into(),
        start_ts: None,
        exit_code: None,
        read_bytes: None,
        write_bytes: None,
        source: "proc_connector".into(),
    }
    .into()
}

/// A fleet of agents sending events to one engine, numbering each agent's events.
pub(crate) struct Fleet {
    pub(crate) engine: Engine,
    pub(crate) seq: HashMap<String, u64>,
}

impl Fleet {
    pub(crate) fn new(config: DetectConfig) -> Self {
        Fleet {
            engine: Engine::new(&config).unwrap(),
            seq: HashMap::new(),
        }
    }

    pub(crate) fn default() -> Self {
        Fleet::new(DetectConfig::default())
    }

    pub(crate) fn record(&mut self, host: &str, secs: i64, body: Body) -> Record {
        let agent_id = format!("agent-{host}");
        let seq = self.seq.entry(agent_id.clone()).or_default();
        *seq += 1;
        Record {
            agent_id,
            event: Event {
                seq: *seq,
                ts: at(secs),
                host: host.into(),
                body,
            },
        }
    }

    pub(crate) fn send(&mut self, host: &str, secs: i64, body: Body) -> Vec<AlertUpdate> {
        let record = self.record(host, secs, body);
        self.engine.observe(&record)
    }
}

pub(crate) fn new_alerts(updates: &[AlertUpdate]) -> Vec<&Alert> {
    updates
        .iter()
        .filter_map(|u| match u {
            AlertUpdate::New(alert) => Some(alert),
            AlertUpdate::Repeat { .. } => None,
        })
        .collect()
}

/// A later occurrence of an alert, as the engine reports it.
pub(crate) struct Repeated<'a> {
    pub count: u64,
    pub evidence: &'a [EvidenceRef],
    pub fields: &'a Map<String, Json>,
    pub summary: Option<&'a str>,
}

impl Repeated<'_> {
    /// `alert` as the store holds it once this occurrence is applied.
    pub(crate) fn applied_to(&self, alert: &Alert) -> Alert {
        let mut stored = alert.clone();
        stored.repeat(self.count, self.evidence, self.fields, self.summary);
        stored
    }
}

/// The one update in `updates`, which must be a repeat of `alert`.
pub(crate) fn only_repeat_of<'a>(alert: &Alert, updates: &'a [AlertUpdate]) -> Repeated<'a> {
    let [
        AlertUpdate::Repeat {
            id,
            count,
            evidence,
            fields,
            summary,
            ..
        },
    ] = updates
    else {
        panic!("one update of the alert: {updates:?}");
    };
    assert_eq!(id, &alert.id, "a repeat of another alert");
    Repeated {
        count: *count,
        evidence,
        fields,
        summary: summary.as_deref(),
    }
}

pub(crate) fn rules_of(updates: &[AlertUpdate]) -> Vec<String> {
    new_alerts(updates).iter().map(|a| a.rule.clone()).collect()
}

/// Sends a batch and collects every update.
pub(crate) fn run(fleet: &mut Fleet, events: Vec<(&str, i64, Body)>) -> Vec<AlertUpdate> {
    let mut out = Vec::new();
    for (host, secs, body) in events {
        out.extend(fleet.send(host, secs, body));
    }
    out
}

pub(crate) fn attacker() -> ProcessInfo {
    process(
        4242,
        "/usr/bin/python3",
        "www-data",
        &["/bin/sh", "/usr/sbin/apache2"],
    )
}

pub(crate) fn heartbeat() -> Body {
    AgentEvent::new(AgentAction::Heartbeat).into()
}
