//! Golden files for the wire contracts the collector hands to receivers (alert JSON, chat messages,
//! e-mail, OCSF, the metrics exposition): the expected bytes live under `tests/golden/collector/`
//! and tests compare what the code produces now against them, whole.
//!
//! When a change to a contract is intended, `BLESS=1 cargo test --bin bannin-collector` rewrites the
//! files from the current output; the diff under `tests/golden/` is then the change to review.

use std::path::{Path, PathBuf};

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/collector")
        .join(name)
}

/// Asserts that `actual` is the content of `tests/golden/collector/NAME` (or writes it there under
/// `BLESS=1`).
pub fn assert_golden(name: &str, actual: &str) {
    let path = path(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "{}: {error} (BLESS=1 cargo test --bin bannin-collector writes it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the output (if the change is intended, rerun with BLESS=1 and review \
         the diff)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// A JSON value as a golden file: pretty-printed with a final newline, so diffs are per field.
pub fn assert_golden_json(name: &str, actual: &serde_json::Value) {
    let mut text = serde_json::to_string_pretty(actual).unwrap();
    text.push('\n');
    assert_golden(name, &text);
}

mod tests {
    use bannin::event::{
        AgentAction, AgentEvent, Ancestor, Body, DbAction, DbEvent, Event, ExportInfo, FileAction,
        FileEvent, NetAction, NetEvent, ProcessAction, ProcessEvent, ProcessInfo, Record,
    };
    use bannin::time::Timestamp;
    use serde_json::{Value, json};

    use super::*;
    use crate::alert::{Alert, EvidenceRef, Severity};

    /// An alert whose every part is fixed, with receiver markup and a line break in the names an
    /// agent controls, so the goldens also pin the escaping.
    fn alert() -> Alert {
        let mut fields = serde_json::Map::new();
        fields.insert(
            "path".into(),
            "/srv/exports/<!here> @channel [x](evil.example).csv".into(),
        );
        fields.insert("size".into(), 104_857_600.into());
        fields.insert("how".into(), "deleted".into());
        // What a Sigma rule's alert carries about the rule: its title and tags (ATT&CK, a CVE).
        fields.insert(
            "title".into(),
            "Large export created then deleted <b>{{DATE(x)}}".into(),
        );
        fields.insert(
            "tags".into(),
            serde_json::json!([
                "attack.exfiltration",
                "attack.t1048",
                "attack.defense-evasion",
                "attack.t1070.004",
                "cve.2026-0001"
            ]),
        );
        Alert {
            id: "al-0001".into(),
            rule: "large_export_created_then_deleted".into(),
            severity: Severity::High,
            ts: Timestamp::from_nanos(1_790_000_000_123_456_789),
            host: "db1".into(),
            summary: "/srv/exports/<!here> @channel [x](evil.example).csv (100 MiB) was created \
                      and deleted within 40s\r\nBcc: x@evil.example"
                .into(),
            evidence: vec![
                EvidenceRef {
                    agent_id: "agent-1".into(),
                    seq: 7,
                },
                EvidenceRef {
                    agent_id: "agent-1".into(),
                    seq: 9,
                },
            ],
            count: 3,
            fields,
        }
    }

    /// Alert JSON, Slack text, Teams card and the e-mail's subject and body: what each receiver is
    /// sent for one alert. (The whole mail message carries its sending date and is left out.)
    #[test]
    fn alert_deliveries_match_their_golden_files() {
        let rendered = crate::hooks::rendered(&alert());
        let part = |name: &str| -> &str {
            &rendered
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no {name} rendering"))
                .1
        };
        let json = |name: &str| -> Value { serde_json::from_str(part(name)).unwrap() };
        assert_golden_json("alert.json", &json("json"));
        assert_golden_json("slack.json", &json("slack"));
        assert_golden_json("teams.json", &json("teams"));
        assert_golden("email-subject.txt", &format!("{}\n", part("email subject")));
        assert_golden("email-body.txt", part("email text"));
    }

    fn process() -> ProcessInfo {
        ProcessInfo {
            pid: 4242,
            ppid: Some(4000),
            exe: "/usr/bin/psql".into(),
            cmdline: "psql -c \\copy customers to /srv/exports/customers.csv csv".into(),
            user: "alice".into(),
            uid: Some(1000),
            ancestry: vec![Ancestor {
                pid: 4000,
                exe: "/usr/bin/bash".into(),
                cmdline: "-bash".into(),
                user: "alice".into(),
            }]
            .into(),
        }
    }

    fn record(seq: u64, body: impl Into<Body>) -> Record {
        Record {
            agent_id: "agent-1".into(),
            event: Event {
                seq,
                ts: Timestamp::from_nanos(1_790_000_000_000_000_000 + seq as i64 * 1_000_000),
                host: "db1".into(),
                body: body.into(),
            },
        }
    }

    /// One event of each OCSF class the collector writes, an alert as a Detection Finding and an
    /// agent as Device Inventory Info.
    #[test]
    fn ocsf_objects_match_their_golden_files() {
        let mut file = FileEvent::new(FileAction::Rename, "/srv/exports/customers.csv", "fanotify");
        file.from_path = Some("/srv/exports/customers.csv.tmp".into());
        file.size = Some(104_857_600);
        file.inode = Some(131_077);
        file.mode = Some(0o100_640);
        file.owner_uid = Some(1000);
        file.owner = Some("alice".into());
        file.process = Some(std::sync::Arc::new(process()));
        file.process_known = true;
        file.export = Some(ExportInfo {
            class: "personal_data".into(),
            format: "csv".into(),
            est_rows: Some(1_000_000),
            sampled_bytes: 65_536,
            emails: 512,
            phones: 498,
            passports: 0,
            cards: 0,
        });
        let start = ProcessEvent {
            action: ProcessAction::Start,
            process: process(),
            cwd: "/home/alice".into(),
            start_ts: Some(Timestamp::from_nanos(1_789_999_999_000_000_000)),
            exit_code: None,
            read_bytes: None,
            write_bytes: None,
            source: "connector".into(),
        };
        let mut exit = start.clone();
        exit.action = ProcessAction::Exit;
        exit.exit_code = Some(0);
        exit.read_bytes = Some(4096);
        exit.write_bytes = Some(104_857_600);
        let net = NetEvent {
            action: NetAction::Connect,
            process: Some(process()),
            protocol: "tcp".into(),
            local_addr: "10.0.0.5".into(),
            local_port: 51_234,
            remote_addr: "203.0.113.9".into(),
            remote_port: 443,
            remote_scope: "public".into(),
            bytes_sent: Some(104_857_600),
            bytes_received: Some(2048),
        };
        // A long upload: reported open without bytes, then at its close with them.
        let close = NetEvent {
            action: NetAction::Close,
            local_port: 51_235,
            bytes_sent: Some(3_000_000_000),
            bytes_received: Some(4096),
            ..net.clone()
        };
        let mut query = DbEvent::new(DbAction::Query, "postgresql");
        query.db_user = "app".into();
        query.database = "crm".into();
        query.client_addr = "10.0.0.7".into();
        query.client_port = Some(40_000);
        query.application = "psql".into();
        query.session = "6566f2a1.1a2b".into();
        query.statement = "COPY public.customers TO STDOUT CSV".into();
        query.statement_kind = "export".into();
        query.tables = vec!["public.customers".into()];
        query.rows = Some(1_000_000);
        query.export_method = "copy".into();
        query.sensitive_tables = vec!["public.customers".into()];
        let mut connect = DbEvent::new(DbAction::Connect, "mariadb");
        connect.db_user = "root".into();
        connect.client_addr = "localhost".into();
        connect.session = "12".into();
        connect.failed = true;
        connect.error = "access denied".into();
        let mut heartbeat = AgentEvent::new(AgentAction::Heartbeat);
        heartbeat.version = "0.0.0-golden".into();
        heartbeat.spool_events = 12;
        heartbeat.spool_bytes = 4096;
        heartbeat.sensors = vec!["files".into(), "process".into()];
        let events: Vec<Value> = [
            record(1, file),
            record(2, start),
            record(3, exit),
            record(4, net),
            record(5, query),
            record(6, connect),
            record(7, heartbeat),
            record(8, close),
        ]
        .iter()
        .map(crate::present::ocsf::event)
        .collect();
        assert_golden_json("ocsf-events.json", &Value::Array(events));

        let alert = serde_json::to_value(alert()).unwrap();
        let alert = crate::present::ocsf::alert(alert.as_object().unwrap()).unwrap();
        let agent = crate::present::ocsf::agent(&crate::store::query::AgentRow {
            agent_id: "agent-1".into(),
            name: "db1".into(),
            host: "db1".into(),
            status: "active".into(),
            enrolled: Timestamp::from_nanos(1_780_000_000_000_000_000),
            last_seen: Some(Timestamp::from_nanos(1_790_000_000_000_000_000)),
            last_seq: 7,
            spool_events: 12,
            spool_bytes: 4096,
        });
        assert_golden_json("ocsf-alert-and-agent.json", &json!([alert, agent]));
    }
}
