//! Stored events and alerts as OCSF 1.x JSON, for SIEMs and data lakes that speak it.
//!
//! File events map to File System Activity (1001), processes to Process Activity (1007), connections
//! to Network Activity (4001), database events to Datastore Activity (6005) and alerts to Detection
//! Finding (2004); the agent's own events have no OCSF class and become Base Events (0). Every object
//! carries the base attributes the schema requires (category_uid, class_uid, activity_id, type_uid =
//! class_uid * 100 + activity_id, time in milliseconds, severity_id, metadata with product and
//! version) plus its class's required objects. Fields OCSF has no place for go under `unmapped`.

use bannin::event::{
    Body, DbAction, DbEvent, FileAction, FileEvent, NetAction, NetEvent, ProcessAction,
    ProcessEvent, ProcessInfo, Record,
};
use bannin::time::Timestamp;
use serde_json::{Map, Value, json};

use crate::store::query::AgentRow;

/// The OCSF schema version the output follows.
pub const SCHEMA_VERSION: &str = "1.3.0";

const SEVERITY_INFORMATIONAL: u32 = 1;

fn metadata(uid: String, log_name: &str) -> Value {
    json!({
        "version": SCHEMA_VERSION,
        "uid": uid,
        "log_name": log_name,
        "product": {
            "name": "bannin",
            "vendor_name": "bannin",
            "version": env!("CARGO_PKG_VERSION"),
        },
    })
}

fn time_ms(ts: Timestamp) -> i64 {
    ts.as_nanos() / 1_000_000
}

fn base(
    class: (u32, &str),
    category: (u32, &str),
    activity: (u32, &str),
    ts: Timestamp,
    severity_id: u32,
    metadata: Value,
) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("class_uid".into(), class.0.into());
    object.insert("class_name".into(), class.1.into());
    object.insert("category_uid".into(), category.0.into());
    object.insert("category_name".into(), category.1.into());
    object.insert("activity_id".into(), activity.0.into());
    object.insert("activity_name".into(), activity.1.into());
    object.insert(
        "type_uid".into(),
        (u64::from(class.0) * 100 + u64::from(activity.0)).into(),
    );
    object.insert("time".into(), time_ms(ts).into());
    object.insert("severity_id".into(), severity_id.into());
    object.insert("severity".into(), severity_name(severity_id).into());
    object.insert("metadata".into(), metadata);
    object
}

fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        _ => "Unknown",
    }
}

fn device(record: &Record) -> Value {
    json!({
        "hostname": record.event.host,
        "uid": record.agent_id,
        "type_id": 0,
        "type": "Unknown",
    })
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn file_object(path: &str, size: Option<u64>) -> Value {
    let mut file = json!({
        "name": basename(path),
        "path": path,
        "type_id": 1,
        "type": "Regular File",
    });
    if let Some(size) = size {
        file["size"] = size.into();
    }
    file
}

fn process_object(info: &ProcessInfo) -> Value {
    let mut process = json!({
        "pid": info.pid,
        "name": basename(&info.exe),
        "cmd_line": info.cmdline,
        "file": file_object(&info.exe, None),
        "user": user_object(&info.user, info.uid),
    });
    // The lineage nests as parent_process objects, as OCSF models it.
    let mut parent: Option<Value> = None;
    for ancestor in info.ancestry.iter().rev() {
        let mut object = json!({
            "pid": ancestor.pid,
            "name": basename(&ancestor.exe),
            "cmd_line": ancestor.cmdline,
            "file": file_object(&ancestor.exe, None),
        });
        if let Some(p) = parent.take() {
            object["parent_process"] = p;
        }
        parent = Some(object);
    }
    match parent {
        Some(p) => process["parent_process"] = p,
        None => {
            if let Some(ppid) = info.ppid {
                process["parent_process"] = json!({ "pid": ppid });
            }
        }
    }
    process
}

fn user_object(name: &str, uid: Option<u32>) -> Value {
    let mut user = json!({ "name": name });
    if let Some(uid) = uid {
        user["uid"] = uid.to_string().into();
    }
    user
}

/// The actor behind an event: its process where the agent knew it, else the agent's sensor.
fn actor(process: Option<&ProcessInfo>, sensor: &str) -> Value {
    match process {
        Some(info) => json!({
            "process": process_object(info),
            "user": user_object(&info.user, info.uid),
        }),
        None => json!({ "app_name": format!("bannin-agent {sensor}") }),
    }
}

fn file_activity(record: &Record, file: &FileEvent) -> Map<String, Value> {
    let activity = match file.action {
        FileAction::Create => (1, "Create"),
        FileAction::Read => (2, "Read"),
        FileAction::Write => (3, "Update"),
        FileAction::Delete => (4, "Delete"),
        FileAction::Rename => (5, "Rename"),
    };
    let mut object = base(
        (1001, "File System Activity"),
        (1, "System Activity"),
        activity,
        record.event.ts,
        SEVERITY_INFORMATIONAL,
        metadata(uid(record), record.event.kind()),
    );
    match (&file.action, &file.from_path) {
        (FileAction::Rename, Some(from)) => {
            object.insert("file".into(), file_object(from, file.size));
            object.insert("file_result".into(), file_object(&file.path, file.size));
        }
        _ => {
            object.insert("file".into(), file_object(&file.path, file.size));
        }
    }
    object.insert(
        "actor".into(),
        actor(file.process.as_deref(), &format!("file/{}", file.backend)),
    );
    object.insert("device".into(), device(record));
    // OCSF's File System Activity has no attribute for the bytes a read moved: they go with
    // bannin's own facts under `unmapped`.
    let mut unmapped = Map::new();
    if let Some(export) = &file.export {
        unmapped.insert("bannin_export".into(), json!(export));
    }
    if let Some(bytes) = file.bytes_read {
        unmapped.insert("bannin_bytes_read".into(), json!(bytes));
    }
    if file.still_open {
        unmapped.insert("bannin_still_open".into(), json!(true));
    }
    if file.closed {
        unmapped.insert("bannin_closed".into(), json!(true));
    }
    if !unmapped.is_empty() {
        object.insert("unmapped".into(), Value::Object(unmapped));
    }
    object
}

fn process_activity(record: &Record, process: &ProcessEvent) -> Map<String, Value> {
    let activity = match process.action {
        ProcessAction::Start => (1, "Launch"),
        ProcessAction::Exit => (2, "Terminate"),
    };
    let mut object = base(
        (1007, "Process Activity"),
        (1, "System Activity"),
        activity,
        record.event.ts,
        SEVERITY_INFORMATIONAL,
        metadata(uid(record), record.event.kind()),
    );
    let target = process_object(&process.process);
    // The actor of a launch is the parent; of an exit, the process itself.
    let actor_process = match process.action {
        ProcessAction::Start => target
            .get("parent_process")
            .cloned()
            .unwrap_or_else(|| target.clone()),
        ProcessAction::Exit => target.clone(),
    };
    object.insert("process".into(), target);
    object.insert("actor".into(), json!({ "process": actor_process }));
    object.insert("device".into(), device(record));
    if let Some(code) = process.exit_code {
        object.insert("exit_code".into(), code.into());
    }
    object
}

fn network_activity(record: &Record, net: &NetEvent) -> Map<String, Value> {
    let activity = match net.action {
        NetAction::Connect => (1, "Open"),
        NetAction::Close => (2, "Close"),
    };
    let mut object = base(
        (4001, "Network Activity"),
        (4, "Network Activity"),
        activity,
        record.event.ts,
        SEVERITY_INFORMATIONAL,
        metadata(uid(record), record.event.kind()),
    );
    object.insert(
        "src_endpoint".into(),
        json!({ "ip": net.local_addr, "port": net.local_port, "hostname": record.event.host }),
    );
    object.insert(
        "dst_endpoint".into(),
        json!({ "ip": net.remote_addr, "port": net.remote_port }),
    );
    object.insert(
        "connection_info".into(),
        json!({ "protocol_name": net.protocol, "direction_id": 2, "direction": "Outbound" }),
    );
    let mut traffic = Map::new();
    if let Some(out) = net.bytes_sent {
        traffic.insert("bytes_out".into(), out.into());
    }
    if let Some(inbound) = net.bytes_received {
        traffic.insert("bytes_in".into(), inbound.into());
    }
    if !traffic.is_empty() {
        object.insert("traffic".into(), Value::Object(traffic));
    }
    object.insert("actor".into(), actor(net.process.as_ref(), "net"));
    object.insert("device".into(), device(record));
    object.insert(
        "unmapped".into(),
        json!({ "bannin_remote_scope": net.remote_scope }),
    );
    object
}

fn datastore_activity(record: &Record, db: &DbEvent) -> Map<String, Value> {
    let activity = match (db.action, db.statement_kind.as_str()) {
        (DbAction::Connect, _) => (3, "Connect"),
        (DbAction::Query, "read" | "export") => (1, "Read"),
        (DbAction::Query, "write") => (2, "Update"),
        (DbAction::Query, _) => (4, "Query"),
        (DbAction::Disconnect, _) => (99, "Other"),
    };
    let mut object = base(
        (6005, "Datastore Activity"),
        (6, "Application Activity"),
        activity,
        record.event.ts,
        SEVERITY_INFORMATIONAL,
        metadata(uid(record), record.event.kind()),
    );
    object.insert(
        "actor".into(),
        json!({
            "user": { "name": db.db_user },
            "app_name": db.application,
            "session": { "uid": db.session },
        }),
    );
    let mut src = json!({ "ip": db.client_addr });
    if let Some(port) = db.client_port {
        src["port"] = port.into();
    }
    object.insert("src_endpoint".into(), src);
    object.insert(
        "dst_endpoint".into(),
        json!({ "hostname": record.event.host }),
    );
    object.insert(
        "database".into(),
        json!({ "name": db.database, "type_id": 99, "type": db.db_system }),
    );
    if let Some(table) = db.sensitive_tables.first().or(db.tables.first()) {
        object.insert("table".into(), json!({ "name": table }));
    }
    if !db.statement.is_empty() {
        object.insert("query_info".into(), json!({ "query_string": db.statement }));
    }
    object.insert("device".into(), device(record));
    let mut unmapped = json!({
        "bannin_tables": db.tables,
        "bannin_sensitive_tables": db.sensitive_tables,
        "bannin_statement_kind": db.statement_kind,
    });
    if let Some(rows) = db.rows {
        unmapped["bannin_rows"] = rows.into();
    }
    if let Some(total) = db.session_sensitive_rows {
        unmapped["bannin_session_sensitive_rows"] = total.into();
    }
    object.insert("unmapped".into(), unmapped);
    object
}

fn base_event(record: &Record) -> Map<String, Value> {
    let mut object = base(
        (0, "Base Event"),
        (0, "Uncategorized"),
        (99, "Other"),
        record.event.ts,
        SEVERITY_INFORMATIONAL,
        metadata(uid(record), record.event.kind()),
    );
    object.insert("message".into(), record.event.kind().into());
    object.insert("device".into(), device(record));
    if let Ok(Value::Object(fields)) = serde_json::to_value(record) {
        object.insert("unmapped".into(), Value::Object(fields));
    }
    object
}

fn uid(record: &Record) -> String {
    format!("{}:{}", record.agent_id, record.event.seq)
}

/// One stored event as an OCSF object.
pub fn event(record: &Record) -> Value {
    Value::Object(match &record.event.body {
        Body::File(file) => file_activity(record, file),
        Body::Process(process) => process_activity(record, process),
        Body::Net(net) => network_activity(record, net),
        Body::Db(db) => datastore_activity(record, db),
        Body::Agent(_) | Body::Sensor(_) => base_event(record),
    })
}

/// One alert (docs/interface.md's alert object) as a Detection Finding. An object without a
/// readable `ts` is refused: OCSF's `time` is required, and a made-up one would misplace the
/// finding.
pub fn alert(alert: &Map<String, Value>) -> std::io::Result<Value> {
    // A key the object lacks is an empty text, as in the alerts table.
    let text = |key: &str| match alert.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let ts = alert
        .get("ts")
        .and_then(|t| t.as_str())
        .and_then(Timestamp::parse_rfc3339)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "alert {} has no RFC 3339 ts; OCSF needs its time",
                text("id")
            ))
        })?;
    let severity_id = match text("severity").as_str() {
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => 0,
    };
    let id = text("id");
    let mut object = base(
        (2004, "Detection Finding"),
        (2, "Findings"),
        (1, "Create"),
        ts,
        severity_id,
        metadata(id.clone(), "alert"),
    );
    let evidence = match alert.get("evidence") {
        Some(Value::Array(evidence)) => evidence.as_slice(),
        _ => &[],
    };
    let tags: Vec<&str> = match alert.get("tags") {
        Some(Value::Array(tags)) => tags.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // The analytic is the rule: its id, and its title where the alert carries one.
    let mut analytic =
        json!({ "uid": text("rule"), "name": text("rule"), "type_id": 1, "type": "Rule" });
    if let Some(Value::String(title)) = alert.get("title") {
        analytic["name"] = title.clone().into();
    }
    let mut finding_info = json!({
        "uid": id,
        "title": text("summary"),
        "analytic": analytic,
        "related_events": evidence.iter().map(|e| json!({
            "uid": format!("{}:{}", e.get("agent_id").and_then(|a| a.as_str()).unwrap_or(""),
                e.get("seq").map_or(String::new(), |s| s.to_string())),
        })).collect::<Vec<_>>(),
    });
    let attacks = attacks(&tags);
    if !attacks.is_empty() {
        finding_info["attacks"] = Value::Array(attacks);
    }
    object.insert("finding_info".into(), finding_info);
    object.insert("message".into(), text("summary").into());
    object.insert("status_id".into(), 1.into());
    object.insert("is_alert".into(), true.into());
    object.insert(
        "device".into(),
        json!({ "hostname": text("host"), "type_id": 0, "type": "Unknown" }),
    );
    object.insert("unmapped".into(), Value::Object(alert.clone()));
    Ok(Value::Object(object))
}

/// MITRE ATT&CK Enterprise tactics by the name Sigma tags them with (`attack.defense-evasion`).
const TACTICS: &[(&str, &str, &str)] = &[
    ("reconnaissance", "TA0043", "Reconnaissance"),
    ("resource-development", "TA0042", "Resource Development"),
    ("initial-access", "TA0001", "Initial Access"),
    ("execution", "TA0002", "Execution"),
    ("persistence", "TA0003", "Persistence"),
    ("privilege-escalation", "TA0004", "Privilege Escalation"),
    ("defense-evasion", "TA0005", "Defense Evasion"),
    ("credential-access", "TA0006", "Credential Access"),
    ("discovery", "TA0007", "Discovery"),
    ("lateral-movement", "TA0008", "Lateral Movement"),
    ("collection", "TA0009", "Collection"),
    ("command-and-control", "TA0011", "Command and Control"),
    ("exfiltration", "TA0010", "Exfiltration"),
    ("impact", "TA0040", "Impact"),
];

/// OCSF `attacks` from a Sigma rule's tags: each technique (`attack.t1059.004`, a sub-technique
/// under its technique) and tactic (`attack.execution`). Other tags (CVEs, groups, software) stay
/// in `unmapped.tags` only.
fn attacks(tags: &[&str]) -> Vec<Value> {
    let mut tactics = Vec::new();
    let mut techniques = Vec::new();
    for tag in tags {
        let Some(name) = tag
            .to_ascii_lowercase()
            .strip_prefix("attack.")
            .map(str::to_string)
        else {
            continue;
        };
        if let Some((_, uid, title)) = TACTICS.iter().find(|(n, _, _)| *n == name) {
            tactics.push(json!({ "uid": uid, "name": title }));
            continue;
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let Some(number) = name.strip_prefix('t') else {
            continue;
        };
        match number.split_once('.') {
            Some((technique, sub)) if digits(technique) && digits(sub) => {
                techniques.push((format!("T{technique}"), Some(format!("T{technique}.{sub}"))))
            }
            None if digits(number) => techniques.push((format!("T{number}"), None)),
            _ => {}
        }
    }
    // Sigma's tags do not say which technique serves which tactic: a technique is paired with a
    // tactic only when the rule names one tactic, else each stands alone.
    let single = match tactics.as_slice() {
        [tactic] => Some(tactic.clone()),
        _ => None,
    };
    let mut out = Vec::new();
    for (technique, sub) in &techniques {
        let mut attack = json!({ "technique": { "uid": technique } });
        if let Some(sub) = sub {
            attack["sub_technique"] = json!({ "uid": sub });
        }
        if let Some(tactic) = &single {
            attack["tactic"] = tactic.clone();
        }
        out.push(attack);
    }
    if single.is_none() || techniques.is_empty() {
        out.extend(
            tactics
                .into_iter()
                .map(|tactic| json!({ "tactic": tactic })),
        );
    }
    out
}

/// An enrolled agent as Device Inventory Info (5001).
pub fn agent(row: &AgentRow) -> Value {
    let mut object = base(
        (5001, "Device Inventory Info"),
        (5, "Discovery"),
        (2, "Collect"),
        row.last_seen.unwrap_or(row.enrolled),
        SEVERITY_INFORMATIONAL,
        metadata(row.agent_id.clone(), "agents"),
    );
    object.insert(
        "device".into(),
        json!({
            "hostname": row.host,
            "name": row.name,
            "uid": row.agent_id,
            "type_id": 0,
            "type": "Unknown",
        }),
    );
    object.insert(
        "unmapped".into(),
        json!({ "bannin_status": row.status, "bannin_last_seq": row.last_seq,
                "bannin_spool_events": row.spool_events }),
    );
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::event::{AgentAction, AgentEvent, Event, ExportInfo};

    /// Attributes OCSF 1.x marks required, per class (base event attributes, then the class's own).
    fn required(class_uid: u64) -> Vec<&'static str> {
        let mut fields = vec![
            "activity_id",
            "category_uid",
            "class_uid",
            "type_uid",
            "time",
            "severity_id",
            "metadata.version",
            "metadata.product.name",
            "metadata.product.vendor_name",
        ];
        fields.extend(match class_uid {
            1001 => vec!["actor", "device.type_id", "file.name", "file.type_id"],
            1007 => vec!["actor", "device.type_id", "process"],
            4001 => vec!["src_endpoint", "dst_endpoint"],
            6005 => vec!["actor", "src_endpoint", "database.name"],
            2004 => vec!["finding_info.uid", "finding_info.title"],
            _ => vec![],
        });
        fields
    }

    fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(value, |v, key| v.get(key))
    }

    fn check(value: &Value) {
        let class = value["class_uid"].as_u64().unwrap();
        for field in required(class) {
            assert!(
                get(value, field).is_some_and(|v| !v.is_null()),
                "class {class} lacks {field}: {value}"
            );
        }
        assert_eq!(
            value["type_uid"].as_u64().unwrap(),
            class * 100 + value["activity_id"].as_u64().unwrap()
        );
    }

    fn record(body: impl Into<Body>) -> Record {
        Record {
            agent_id: "a-1".into(),
            event: Event {
                seq: 9,
                ts: Timestamp::from_nanos(1_700_000_000_123_456_789),
                host: "pc1".into(),
                body: body.into(),
            },
        }
    }

    #[test]
    fn each_kind_maps_to_its_class_with_the_required_fields() {
        let mut file = FileEvent::new(FileAction::Rename, "/srv/out.csv", "fanotify");
        file.from_path = Some("/srv/out.csv.tmp".into());
        file.size = Some(10);
        file.export = Some(ExportInfo::default());
        let value = event(&record(file));
        check(&value);
        assert_eq!(value["type_uid"], 100105);
        assert_eq!(value["time"], 1_700_000_000_123i64);
        assert_eq!(value["file_result"]["name"], "out.csv");

        let process = ProcessEvent {
            action: ProcessAction::Start,
            process: ProcessInfo {
                pid: 3,
                ppid: Some(2),
                exe: "/bin/sh".into(),
                ..ProcessInfo::default()
            },
            cwd: "/".into(),
            start_ts: None,
            exit_code: None,
            read_bytes: None,
            write_bytes: None,
            source: "poll".into(),
        };
        let value = event(&record(process));
        check(&value);
        assert_eq!(value["type_uid"], 100701);

        let net = NetEvent {
            action: NetAction::Connect,
            remote_addr: "203.0.113.9".into(),
            remote_port: 443,
            bytes_sent: Some(5),
            ..NetEvent::default()
        };
        let value = event(&record(net.clone()));
        check(&value);
        assert_eq!(value["traffic"]["bytes_out"], 5);
        assert_eq!(value["type_uid"], 400101);
        let close = NetEvent {
            action: NetAction::Close,
            bytes_sent: Some(3_000_000),
            ..net
        };
        let value = event(&record(close));
        check(&value);
        assert_eq!(value["type_uid"], 400102);
        assert_eq!(value["activity_name"], "Close");
        assert_eq!(value["metadata"]["log_name"], "net.close");
        assert_eq!(value["traffic"]["bytes_out"], 3_000_000);

        let mut db = DbEvent::new(DbAction::Query, "postgresql");
        db.statement_kind = "read".into();
        db.database = "crm".into();
        let value = event(&record(db));
        check(&value);
        assert_eq!(value["type_uid"], 600501);

        check(&event(&record(AgentEvent::new(AgentAction::Heartbeat))));

        let alert_json: Map<String, Value> = serde_json::from_value(json!({
            "id": "al-1", "rule": "export.create_delete", "severity": "high",
            "ts": "2026-11-21T08:00:00.000000000Z", "host": "db1", "summary": "big csv",
            "evidence": [{"agent_id": "a-1", "seq": 4}],
        }))
        .unwrap();
        let value = alert(&alert_json).unwrap();
        check(&value);
        assert_eq!(value["severity_id"], 4);
        assert_eq!(value["type_uid"], 200401);
    }

    #[test]
    fn an_alert_without_a_readable_time_is_refused_not_dated_1970() {
        for ts in [None, Some(json!("yesterday")), Some(json!(12))] {
            let mut object: Map<String, Value> =
                serde_json::from_value(json!({"id": "al-2", "rule": "r", "summary": "s"})).unwrap();
            if let Some(ts) = ts {
                object.insert("ts".into(), ts);
            }
            let error = alert(&object).unwrap_err();
            assert!(
                error.to_string().contains("alert al-2 has no RFC 3339 ts"),
                "{error}"
            );
        }
    }
}
