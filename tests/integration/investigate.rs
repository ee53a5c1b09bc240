//! Issue 6: investigation. Operators query a collector remotely with their own credentials; roles and
//! revocation are enforced on every call; a replay of the 2014 airline breach gives a `scope` naming
//! exactly the hosts that read customer records and then sent data out; OCSF output carries each
//! class's required fields; retention deletes old batches and the rest still verifies.
//!
//! The database and network sensors are built elsewhere, so simulated agents enroll with real tokens
//! and submit properly chained, signed batches through the real collector's gRPC ingest.

// Helpers here panic on purpose: a failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bannin::event::{
    Ancestor, Body, DbAction, DbEvent, ExportInfo, FileAction, FileEvent, NetAction, NetEvent,
    ProcessAction, ProcessEvent, ProcessInfo,
};
use bannin::pb;
use bannin::time::Timestamp;
use serde_json::Value;
use tonic::Code;

use crate::harness::*;
use crate::sim::SimAgent;

fn process(pid: u32, ppid: u32, exe: &str, user: &str) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid: Some(ppid),
        exe: exe.to_string(),
        cmdline: exe.to_string(),
        user: user.to_string(),
        uid: Some(1000),
        ancestry: Default::default(),
    }
}

fn start(info: ProcessInfo) -> Body {
    ProcessEvent {
        action: ProcessAction::Start,
        process: info,
        cwd: "/home/user".into(),
        start_ts: None,
        exit_code: None,
        read_bytes: None,
        write_bytes: None,
        source: "proc_connector".into(),
    }
    .into()
}

fn connect(
    local: &str,
    remote: &str,
    port: u16,
    scope: &str,
    sent: Option<u64>,
    by: ProcessInfo,
) -> Body {
    NetEvent {
        action: NetAction::Connect,
        process: Some(by),
        protocol: "tcp".into(),
        local_addr: local.into(),
        local_port: 40_000,
        remote_addr: remote.into(),
        remote_port: port,
        remote_scope: scope.into(),
        bytes_sent: sent,
        bytes_received: None,
    }
    .into()
}

fn customer_read(client: &str, session: &str, rows: u64, total: u64) -> Body {
    let mut db = DbEvent::new(DbAction::Query, "postgresql");
    db.db_user = "crm_app".into();
    db.database = "crm".into();
    db.client_addr = client.into();
    db.session = session.into();
    db.statement = "SELECT * FROM public.customers".into();
    db.statement_kind = "read".into();
    db.tables = vec!["public.customers".into()];
    db.sensitive_tables = vec!["public.customers".into()];
    db.rows = Some(rows);
    db.session_sensitive_rows = Some(total);
    db.into()
}

fn file(action: FileAction, path: &str, size: u64, rows: u64, by: ProcessInfo) -> Body {
    let mut file = FileEvent::new(action, path, "fanotify");
    file.size = Some(size);
    file.process = Some(std::sync::Arc::new(by));
    file.process_known = true;
    file.export = Some(ExportInfo {
        class: "data".into(),
        format: "csv".into(),
        est_rows: Some(rows),
        sampled_bytes: 65_536,
        emails: 900,
        phones: 800,
        passports: 0,
        cards: 0,
    });
    file.into()
}

fn collector_cmd(args: &[&str]) -> Command {
    let mut command = Command::new(COLLECTOR);
    command.args(args);
    command
}

fn operator_identity(data_dir: &Path, name: &str, out: &Path) -> PathBuf {
    let path = out.join(format!("{name}.pem"));
    run_ok(
        collector_cmd(&["operator", "create", "--name", name, "--data-dir"])
            .arg(data_dir)
            .arg("--out")
            .arg(&path),
    );
    path
}

fn remote(collector: &Collector, identity: &Path, args: &[&str]) -> std::process::Output {
    run_output(
        collector_cmd(args)
            .arg("--server")
            .arg(collector.url())
            .arg("--identity")
            .arg(identity),
    )
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad json {line}: {e}")))
        .collect()
}

fn remote_json(collector: &Collector, identity: &Path, args: &[&str]) -> Vec<Value> {
    let output = remote(collector, identity, args);
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    json_lines(&String::from_utf8_lossy(&output.stdout))
}

/// Hosts pc1..pc3 read customer records through db1; pc2 and pc3 then send data to a public address;
/// pc4 sends data out without having read any. pc2 also writes and deletes a customer CSV.
async fn replay_2014(collector: &Collector) -> Vec<SimAgent> {
    let mut db1 = SimAgent::enroll(collector, "db1").await;
    let mut pcs = Vec::new();
    for name in ["pc1", "pc2", "pc3", "pc4"] {
        pcs.push(SimAgent::enroll(collector, name).await);
    }
    let t0 = Timestamp::now().saturating_sub(Duration::from_secs(600));
    let at = |s: u64| t0.saturating_add(Duration::from_secs(s));
    let addr = |i: usize| format!("10.0.0.1{}", i + 1);
    let psql = |pid| process(pid, 100, "/usr/bin/psql", "user");

    // Each PC connects to the database server first: that is how its address becomes known.
    for (i, pc) in pcs.iter_mut().enumerate() {
        let bash = process(100, 1, "/bin/bash", "user");
        pc.submit_bodies(vec![
            (at(1), start(bash)),
            (at(2), start(psql(110))),
            (
                at(3),
                connect(&addr(i), "10.0.0.5", 5432, "private", None, psql(110)),
            ),
        ])
        .await
        .unwrap();
    }
    db1.submit_bodies(vec![
        (at(10), customer_read(&addr(0), "s-pc1", 3_000, 3_000)),
        (at(11), customer_read(&addr(0), "s-pc1", 1_000, 4_000)),
        (at(12), customer_read(&addr(1), "s-pc2", 2_500, 2_500)),
        (at(13), customer_read(&addr(2), "s-pc3", 131, 131)),
    ])
    .await
    .unwrap();
    let curl = |pid| process(pid, 100, "/usr/bin/curl", "user");
    let dump = process(120, 100, "/usr/bin/python3", "user");
    pcs[1]
        .submit_bodies(vec![
            (
                at(20),
                file(
                    FileAction::Create,
                    "/home/user/customers.csv",
                    4_000_000,
                    2_500,
                    dump.clone(),
                ),
            ),
            (at(30), start(curl(130))),
            (
                at(31),
                connect(
                    &addr(1),
                    "203.0.113.50",
                    443,
                    "public",
                    Some(1_200_000),
                    curl(130),
                ),
            ),
            (
                at(40),
                file(
                    FileAction::Delete,
                    "/home/user/customers.csv",
                    4_000_000,
                    2_500,
                    dump,
                ),
            ),
        ])
        .await
        .unwrap();
    let mut uploader = curl(140);
    uploader.ancestry = vec![
        Ancestor {
            pid: 100,
            exe: "/bin/bash".into(),
            cmdline: "bash".into(),
            user: "user".into(),
        },
        Ancestor {
            pid: 1,
            exe: "/sbin/init".into(),
            cmdline: "init".into(),
            user: "root".into(),
        },
    ]
    .into();
    pcs[2]
        .submit_bodies(vec![(
            at(50),
            connect(
                &addr(2),
                "198.51.100.7",
                8443,
                "public",
                Some(64_000),
                uploader,
            ),
        )])
        .await
        .unwrap();
    pcs[3]
        .submit_bodies(vec![(
            at(60),
            connect(
                &addr(3),
                "203.0.113.80",
                443,
                "public",
                Some(5_000),
                curl(150),
            ),
        )])
        .await
        .unwrap();
    let mut all = vec![db1];
    all.extend(pcs);
    all
}

/// Attributes OCSF 1.x marks required: the base event's, then each class's own objects.
fn ocsf_required(class_uid: u64) -> Vec<&'static str> {
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
        1001 => vec![
            "actor",
            "device",
            "device.type_id",
            "file",
            "file.name",
            "file.type_id",
        ],
        1007 => vec!["actor", "device", "device.type_id", "process"],
        4001 => vec!["src_endpoint", "dst_endpoint"],
        6005 => vec!["actor", "src_endpoint", "database"],
        2004 => vec!["finding_info", "finding_info.uid", "finding_info.title"],
        5001 => vec!["device"],
        0 => vec![],
        other => panic!("unexpected OCSF class {other}"),
    });
    fields
}

fn assert_ocsf(object: &Value) -> u64 {
    let class = object["class_uid"].as_u64().expect("class_uid");
    for field in ocsf_required(class) {
        let value = field.split('.').try_fold(object, |v, key| v.get(key));
        assert!(
            value.is_some_and(|v| !v.is_null()),
            "OCSF class {class} lacks required {field}: {object}"
        );
    }
    let category = object["category_uid"].as_u64().unwrap();
    assert_eq!(class / 1000, category, "category of class {class}");
    assert_eq!(
        object["type_uid"].as_u64().unwrap(),
        class * 100 + object["activity_id"].as_u64().unwrap()
    );
    let time = object["time"].as_i64().unwrap();
    assert!(
        (1_600_000_000_000..4_000_000_000_000).contains(&time),
        "time is not in milliseconds: {time}"
    );
    class
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_scopes_the_2014_breach_remotely_naming_exactly_who_read_and_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("c");
    let collector = Collector::start(&data);
    let agents = replay_2014(&collector).await;
    let identity = operator_identity(&data, "ana", tmp.path());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "identity file mode");
    }

    let scope_args = ["scope", "--since", "1h", "--format", "json"];
    let report = remote_json(&collector, &identity, &scope_args);
    assert_eq!(report.len(), 1);
    let report = &report[0];
    assert_eq!(report["read_and_sent"], serde_json::json!(["pc2", "pc3"]));
    let host = |name: &str| {
        report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == name)
            .unwrap_or_else(|| panic!("{name} not in {report}"))
            .clone()
    };
    assert_eq!(host("pc1")["sensitive_rows_read"], 4_000);
    assert_eq!(host("pc1")["public_connections"], 0);
    assert_eq!(host("pc2")["sensitive_rows_read"], 2_500);
    assert_eq!(host("pc2")["bytes_sent_after_read"], 1_200_000);
    assert_eq!(host("pc2")["files_created"], 1);
    assert_eq!(host("pc2")["files_deleted"], 1);
    assert_eq!(host("pc3")["sensitive_rows_read"], 131);
    assert_eq!(host("pc3")["bytes_sent_after_read"], 64_000);
    assert_eq!(host("pc4")["sensitive_rows_read"], 0);
    assert_eq!(host("pc4")["public_connections"], 1);
    let reads = report["db_reads"].as_array().unwrap();
    assert!(
        reads.iter().all(
            |r| r["db_host"] == "db1" && r["tables"] == serde_json::json!(["public.customers"])
        )
    );
    let pc1_read = reads.iter().find(|r| r["reader"] == "pc1").unwrap();
    assert_eq!(
        (pc1_read["rows"].as_u64(), pc1_read["queries"].as_u64()),
        (Some(4_000), Some(2))
    );
    let csv = report["files"].as_array().unwrap();
    assert!(csv.iter().any(|f| f["path"] == "/home/user/customers.csv"
        && f["kind"] == "file.delete"
        && f["est_rows"] == 2_500
        && f["personal"] == 1_700
        && f["size"] == 4_000_000));
    let procs = report["processes"].as_array().unwrap();
    let curl = procs
        .iter()
        .find(|p| p["host"] == "pc2" && p["pid"] == 130)
        .unwrap();
    assert_eq!(curl["lineage"], serde_json::json!(["/bin/bash"]));
    let uploader = procs
        .iter()
        .find(|p| p["host"] == "pc3" && p["pid"] == 140)
        .unwrap();
    assert_eq!(
        uploader["lineage"],
        serde_json::json!(["/bin/bash", "/sbin/init"])
    );

    // The same answer reading the data directory directly, and in words for a person.
    let local = json_lines(&run_ok(
        collector_cmd(&scope_args).arg("--data-dir").arg(&data),
    ));
    assert_eq!(local[0]["read_and_sent"], report["read_and_sent"]);
    assert_eq!(local[0]["hosts"], report["hosts"]);
    let table = run_ok(collector_cmd(&["scope", "--since", "1h", "--data-dir"]).arg(&data));
    assert!(
        table.contains("read sensitive records, then connected out: pc2, pc3"),
        "{table}"
    );
    // Narrowed to hosts, the answer narrows with it.
    let narrowed = remote_json(
        &collector,
        &identity,
        &[
            "scope", "--since", "1h", "--host", "pc3", "--host", "pc1", "--format", "json",
        ],
    );
    assert_eq!(narrowed[0]["read_and_sent"], serde_json::json!(["pc3"]));

    // events and agents remotely give what the store holds.
    let remote_events = remote_json(
        &collector,
        &identity,
        &["events", "--format", "json", "--limit", "100000"],
    );
    assert_eq!(remote_events.len(), collector.events(&[]).len());
    assert_eq!(remote_events.len(), 3 * 4 + 4 + 4 + 1 + 1);
    let remote_agents = remote_json(&collector, &identity, &["agents", "--format", "json"]);
    let mut names: Vec<&str> = remote_agents
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["db1", "pc1", "pc2", "pc3", "pc4"]);
    let pc2_events = remote_json(
        &collector,
        &identity,
        &[
            "events", "--host", "pc2", "--kind", "net.*", "--format", "json",
        ],
    );
    assert_eq!(pc2_events.len(), 2);
    assert!(
        pc2_events
            .iter()
            .all(|e| e["agent_id"] == agents[2].id.as_str())
    );

    // The timeline of pc2, in order, with each process's lineage folded in.
    let timeline = remote_json(
        &collector,
        &identity,
        &[
            "timeline", "--host", "pc2", "--since", "1h", "--format", "json",
        ],
    );
    let kinds: Vec<&str> = timeline
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "process.start",
            "process.start",
            "net.connect",
            "file.create",
            "process.start",
            "net.connect",
            "file.delete"
        ]
    );
    let upload = &timeline[5];
    assert_eq!(upload["remote_addr"], "203.0.113.50");
    assert_eq!(upload["lineage"], serde_json::json!(["/bin/bash"]));
    let table = String::from_utf8_lossy(
        &remote(
            &collector,
            &identity,
            &["timeline", "--host", "pc2", "--since", "1h"],
        )
        .stdout,
    )
    .into_owned();
    assert!(table.contains("curl ← bash"), "{table}");

    // OCSF: every stored event, the scope's evidence and the agents validate against their class.
    let ocsf = remote_json(
        &collector,
        &identity,
        &["events", "--format", "ocsf", "--limit", "100000"],
    );
    let mut classes: Vec<u64> = ocsf.iter().map(assert_ocsf).collect();
    classes.sort_unstable();
    classes.dedup();
    assert_eq!(classes, [1001, 1007, 4001, 6005]);
    let evidence = remote_json(
        &collector,
        &identity,
        &["scope", "--since", "1h", "--format", "ocsf"],
    );
    assert!(!evidence.is_empty());
    evidence.iter().for_each(|e| {
        assert_ocsf(e);
    });
    let deleted = ocsf
        .iter()
        .find(|e| e["class_uid"] == 1001 && e["activity_id"] == 4)
        .unwrap();
    assert_eq!(deleted["file"]["path"], "/home/user/customers.csv");
    assert_eq!(deleted["actor"]["process"]["pid"], 120);
    for agent in remote_json(&collector, &identity, &["agents", "--format", "ocsf"]) {
        assert_eq!(assert_ocsf(&agent), 5001);
    }
    // An alert, stored as detection stores it (detection may have raised its own on this replay
    // too), scopes to its own hosts and time and maps to a Detection Finding.
    store_alert(&data, &agents[2].id);
    let alerts = remote_json(&collector, &identity, &["alerts", "--format", "json"]);
    let ours = alerts.iter().find(|a| a["id"] == "al-1").expect("al-1");
    assert_eq!(ours["rule"], "test.stored");
    assert_eq!(ours["path"], "/home/user/customers.csv");
    assert!(ours["deliveries"].is_array(), "{ours}");
    let findings = remote_json(&collector, &identity, &["alerts", "--format", "ocsf"]);
    assert_eq!(findings.len(), alerts.len());
    for finding in &findings {
        assert_eq!(assert_ocsf(finding), 2004);
    }
    let finding = findings
        .iter()
        .find(|f| f["finding_info"]["uid"] == "al-1")
        .unwrap();
    assert_eq!(finding["severity_id"], 4);
    let table = String::from_utf8_lossy(
        &remote(&collector, &identity, &["alerts", "--rule", "test.*"]).stdout,
    )
    .into_owned();
    assert!(
        table.contains("test.stored") && table.contains("al-1"),
        "{table}"
    );
    let by_alert = remote_json(
        &collector,
        &identity,
        &[
            "scope", "--alert", "al-1", "--margin", "30m", "--format", "json",
        ],
    );
    assert_eq!(by_alert[0]["alert"], "al-1");
    assert_eq!(by_alert[0]["read_and_sent"], serde_json::json!(["pc2"]));
    let unknown = remote(&collector, &identity, &["scope", "--alert", "al-404"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no alert al-404"));
}

/// Writes an alert the way the detection engine's store does (its `alerts` table, the alert object
/// as JSON in `body`).
fn store_alert(data: &Path, pc2: &str) {
    let conn = rusqlite::Connection::open(data.join("bannin.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, rule TEXT NOT NULL,
            severity TEXT NOT NULL, ts INTEGER NOT NULL, updated_ts INTEGER NOT NULL,
            host TEXT NOT NULL, count INTEGER NOT NULL, body TEXT NOT NULL)",
    )
    .unwrap();
    let ts = Timestamp::now().saturating_sub(Duration::from_secs(560));
    let body = serde_json::json!({
        "id": "al-1", "rule": "test.stored", "severity": "high",
        "ts": ts.to_rfc3339(), "host": "pc2", "count": 1,
        "summary": "customers.csv (4 MB, ~2500 rows) created and deleted on pc2",
        "evidence": [{"agent_id": pc2, "seq": 4}, {"agent_id": pc2, "seq": 7}],
        "path": "/home/user/customers.csv", "size": 4_000_000,
    });
    conn.execute(
        "INSERT INTO alerts VALUES ('al-1', 'test.stored', 'high', ?1, ?1, 'pc2', 1, ?2)",
        rusqlite::params![ts.as_nanos(), body.to_string()],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_and_revocation_applies_to_a_running_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("c");
    let collector = Collector::start(&data);
    let mut agent = SimAgent::enroll(&collector, "pc1").await;
    let heartbeat = || {
        vec![(
            Timestamp::now(),
            bannin::event::AgentEvent::new(bannin::event::AgentAction::Heartbeat).into(),
        )]
    };
    agent.submit_bodies(heartbeat()).await.unwrap();
    let identity = operator_identity(&data, "ana", tmp.path());
    let bob = operator_identity(&data, "bob", tmp.path());

    // An agent certificate cannot query.
    let mut as_agent = pb::query_client::QueryClient::new(
        channel(&collector, Some((&agent.cert, &agent.tls_key))).await,
    );
    let status = as_agent
        .events(pb::EventsRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = as_agent.agents(pb::AgentsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Without a certificate, nothing.
    let mut anonymous = pb::query_client::QueryClient::new(channel(&collector, None).await);
    let status = anonymous.agents(pb::AgentsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // An operator cannot submit events.
    let text = std::fs::read_to_string(&identity).unwrap();
    let cert = pem_block(&text, "CERTIFICATE", 0);
    let key = pem_block(&text, "PRIVATE KEY", 0);
    let mut as_operator =
        pb::ingest_client::IngestClient::new(channel(&collector, Some((&cert, &key))).await);
    let batch = agent.next_batch(agent.stamped(heartbeat()));
    let status = as_operator.submit(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let before = collector.events(&[]).len();

    // Revoking an operator: the next call is refused, another operator still works.
    assert!(remote(&collector, &identity, &["agents"]).status.success());
    run_ok(collector_cmd(&["revoke", "--operator", "ana", "--data-dir"]).arg(&data));
    let refused = remote(&collector, &identity, &["events"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("revoked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(remote(&collector, &bob, &["agents"]).status.success());

    // Revoking an agent: within about a second its batches are refused, without a restart.
    run_ok(collector_cmd(&["revoke", "--agent", &agent.id, "--data-dir"]).arg(&data));
    let mut code = None;
    for _ in 0..100 {
        match agent.submit_bodies(heartbeat()).await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(status) => {
                code = Some(status.code());
                break;
            }
        }
    }
    assert_eq!(code, Some(Code::PermissionDenied));
    let after = collector.events(&[]).len();
    let batch = agent.next_batch(agent.stamped(heartbeat()));
    let status = agent.ingest.submit(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(collector.events(&[]).len(), after);
    assert!(after >= before);
    let agents = remote_json(&collector, &bob, &["agents", "--format", "json"]);
    assert_eq!(agents[0]["status"], "revoked");
}

fn pem_block(text: &str, label: &str, index: usize) -> String {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.match_indices(&begin).nth(index).unwrap().0;
    let stop = text[start..].find(&end).unwrap() + start + end.len();
    format!("{}\n", &text[start..stop])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_batches_and_the_rest_still_verifies_and_metrics_show_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("c");
    let config = tmp.path().join("collector.toml");
    std::fs::write(&config, "[retention]\ndays = 1\ncheck_every = \"300ms\"\n").unwrap();
    let mut collector = Collector::start_with(
        &data,
        "127.0.0.1:0",
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics_addr = collector.proc.wait_address("serving metrics on ", LONG);

    let mut agent = SimAgent::enroll(&collector, "pc1").await;
    let old = Timestamp::now().saturating_sub(Duration::from_secs(3 * 86_400));
    let heartbeat = |ts: Timestamp| -> (Timestamp, Body) {
        let mut event = bannin::event::AgentEvent::new(bannin::event::AgentAction::Heartbeat);
        event.spool_events = 42;
        (ts, event.into())
    };
    for _ in 0..3 {
        agent.submit_bodies(vec![heartbeat(old); 5]).await.unwrap();
    }
    agent
        .submit_bodies(vec![heartbeat(Timestamp::now()); 4])
        .await
        .unwrap();
    // Retention goes by when the collector received a batch, not by the events' own timestamps:
    // make the first three batches as old in the store as their events claim to be.
    {
        let conn = rusqlite::Connection::open(data.join("bannin.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        let changed = conn
            .execute(
                "UPDATE batches SET received_ts = ?1 WHERE last_seq <= 15",
                [old.as_nanos()],
            )
            .unwrap();
        assert_eq!(changed, 3);
    }

    let remaining = wait_for("retention to delete the old batches", LONG, || {
        let events = collector.events(&[]);
        (events.len() == 4).then_some(events)
    });
    let seqs: Vec<u64> = remaining
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [16, 17, 18, 19]);
    let verify = run_output(collector_cmd(&["verify", "--data-dir"]).arg(&data));
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{stdout}");
    assert!(stdout.contains("1..=15: deleted by retention"), "{stdout}");

    // The chain goes on from where it was.
    agent
        .submit_bodies(vec![heartbeat(Timestamp::now()); 2])
        .await
        .unwrap();
    let verify = run_output(collector_cmd(&["verify", "--data-dir"]).arg(&data));
    assert!(verify.status.success());

    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{metrics_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let text = client
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(sample("bannin_ingest_events_total"), 21.0);
    assert_eq!(sample("bannin_retention_events_deleted_total"), 15.0);
    assert_eq!(sample("bannin_agents_enrolled"), 1.0);
    assert_eq!(sample("bannin_spool_backlog_events"), 42.0);
    assert!(
        text.contains("bannin_agents{status=\"active\"} 1"),
        "{text}"
    );
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn example_systemd_units_pass_systemd_analyze() {
    let analyze = which("systemd-analyze")
        .expect("systemd-analyze is not installed (.ci/run installs the systemd package)");
    let tmp = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut units = Vec::new();
    for name in ["bannin-collector.service", "bannin-agent.service"] {
        let text = std::fs::read_to_string(examples.join(name)).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/"), "{name}");
        // systemd-analyze checks that ExecStart exists: point it at the binaries just built.
        let text = text
            .replace("/usr/local/bin/bannin-collector", COLLECTOR)
            .replace("/usr/local/bin/bannin-agent", AGENT);
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("bannin-") && !l.contains("Failed to resolve user"))
        .collect();
    assert!(out.status.success() || complaints.is_empty(), "{stderr}");
    assert!(complaints.is_empty(), "{stderr}");
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}
