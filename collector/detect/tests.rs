//! Feature tests: each built-in rule on the incident it exists for, and the benign work of
//! `docs/scenarios.md` that must stay quiet.

use std::collections::HashMap;
use std::time::Duration;

use bannin::event::{
    AgentAction, AgentEvent, Ancestor, Body, DbAction, DbEvent, Event, ExportInfo, FileAction,
    FileEvent, NetEvent, ProcessAction, ProcessEvent, ProcessInfo, Record, SensorEvent,
    SensorStatus,
};
use bannin::time::Timestamp;

use super::config::Limits;
use super::*;
use crate::alert::Severity;

const MIB: u64 = 1024 * 1024;
/// 2026-11-21T00:00:00Z.
const DAY0: i64 = 1_795_219_200;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_secs(DAY0 + secs)
}

fn process(pid: u32, exe: &str, user: &str, parents: &[&str]) -> ProcessInfo {
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

fn csv(rows: u64) -> ExportInfo {
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

fn file(
    action: FileAction,
    path: &str,
    size: Option<u64>,
    export: Option<ExportInfo>,
    who: &ProcessInfo,
) -> Body {
    let mut event = FileEvent::new(action, path, "fanotify");
    event.size = size;
    event.export = export;
    event.process = Some(who.clone());
    event.process_known = true;
    event.into()
}

fn rename(from: &str, to: &str, size: u64, who: &ProcessInfo) -> Body {
    let mut event = FileEvent::new(FileAction::Rename, to, "fanotify");
    event.from_path = Some(from.into());
    event.size = Some(size);
    event.process = Some(who.clone());
    event.process_known = true;
    event.into()
}

fn query(
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

fn export_query(user: &str, method: &str) -> Body {
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

fn connect(remote: &str, scope: &str, who: &ProcessInfo) -> Body {
    NetEvent {
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

fn start(who: ProcessInfo) -> Body {
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
struct Fleet {
    engine: Engine,
    seq: HashMap<String, u64>,
}

impl Fleet {
    fn new(config: DetectConfig) -> Self {
        Fleet {
            engine: Engine::new(&config).unwrap(),
            seq: HashMap::new(),
        }
    }

    fn default() -> Self {
        Fleet::new(DetectConfig::default())
    }

    fn record(&mut self, host: &str, secs: i64, body: Body) -> Record {
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

    fn send(&mut self, host: &str, secs: i64, body: Body) -> Vec<AlertUpdate> {
        let record = self.record(host, secs, body);
        self.engine.observe(&record)
    }
}

fn new_alerts(updates: &[AlertUpdate]) -> Vec<&Alert> {
    updates
        .iter()
        .filter_map(|u| match u {
            AlertUpdate::New(alert) => Some(alert),
            AlertUpdate::Repeat { .. } => None,
        })
        .collect()
}

fn rules_of(updates: &[AlertUpdate]) -> Vec<String> {
    new_alerts(updates).iter().map(|a| a.rule.clone()).collect()
}

/// Sends a batch and collects every update.
fn run(fleet: &mut Fleet, events: Vec<(&str, i64, Body)>) -> Vec<AlertUpdate> {
    let mut out = Vec::new();
    for (host, secs, body) in events {
        out.extend(fleet.send(host, secs, body));
    }
    out
}

fn attacker() -> ProcessInfo {
    process(
        4242,
        "/usr/bin/python3",
        "www-data",
        &["/bin/sh", "/usr/sbin/apache2"],
    )
}

// ---------------------------------------------------------------------------------------------
// large-export-created-then-deleted

#[test]
fn large_csv_created_then_deleted_the_same_day_alerts_once_with_its_facts() {
    let mut fleet = Fleet::default();
    let who = attacker();
    let rm = process(5000, "/usr/bin/rm", "www-data", &["/bin/sh"]);
    let path = "/srv/share/tmp/customers_all.csv";
    let updates = run(
        &mut fleet,
        vec![
            (
                "fs2",
                0,
                file(FileAction::Create, path, Some(0), None, &who),
            ),
            (
                "fs2",
                60,
                file(
                    FileAction::Write,
                    path,
                    Some(400 * MIB),
                    Some(csv(6_790_000)),
                    &who,
                ),
            ),
            (
                "fs2",
                61,
                file(
                    FileAction::Write,
                    path,
                    Some(800 * MIB),
                    Some(csv(6_790_000)),
                    &who,
                ),
            ),
            (
                "fs2",
                3 * 3600,
                file(FileAction::Delete, path, Some(800 * MIB), None, &rm),
            ),
        ],
    );
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );
    assert_eq!(updates.len(), 1);
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.host, "fs2");
    assert_eq!(alert.severity, Severity::High);
    assert_eq!(alert.fields["path"], path);
    assert_eq!(alert.fields["size"], 800 * MIB);
    assert_eq!(alert.fields["created_ts"], at(0).to_rfc3339());
    assert_eq!(alert.fields["deleted_ts"], at(3 * 3600).to_rfc3339());
    assert_eq!(alert.fields["pid"], 4242);
    assert_eq!(alert.fields["exe"], "/usr/bin/python3");
    assert_eq!(alert.fields["user"], "www-data");
    assert_eq!(alert.fields["deleted_by_exe"], "/usr/bin/rm");
    assert_eq!(alert.fields["est_rows"], 6_790_000);
    assert_eq!(alert.fields["emails"], 6_790_000);
    assert_eq!(alert.fields["passports"], 679_000);
    let seqs: Vec<u64> = alert.evidence.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(alert.summary.contains(path), "{}", alert.summary);
    // The alert object keeps docs/interface.md's shape: rule fields flat beside the common ones.
    let json = serde_json::to_value(alert).unwrap();
    assert_eq!(json["rule"], "large-export-created-then-deleted");
    assert_eq!(json["size"], 800 * MIB);
}

#[test]
fn export_followed_through_renames_until_deleted() {
    let mut fleet = Fleet::default();
    let who = attacker();
    let updates = run(
        &mut fleet,
        vec![
            (
                "fs2",
                0,
                file(FileAction::Create, "/srv/out/a.csv", Some(0), None, &who),
            ),
            (
                "fs2",
                5,
                file(
                    FileAction::Write,
                    "/srv/out/a.csv",
                    Some(20 * MIB),
                    Some(csv(200_000)),
                    &who,
                ),
            ),
            (
                "fs2",
                10,
                rename("/srv/out/a.csv", "/var/tmp/.cache1", 20 * MIB, &who),
            ),
            (
                "fs2",
                20,
                rename("/var/tmp/.cache1", "/var/tmp/.cache2", 20 * MIB, &who),
            ),
            (
                "fs2",
                30,
                file(
                    FileAction::Delete,
                    "/var/tmp/.cache2",
                    Some(20 * MIB),
                    None,
                    &who,
                ),
            ),
        ],
    );
    let alerts = new_alerts(&updates);
    assert_eq!(alerts.len(), 1, "{updates:?}");
    assert_eq!(alerts[0].fields["path"], "/srv/out/a.csv");
    assert_eq!(alerts[0].fields["final_path"], "/var/tmp/.cache2");
    assert_eq!(
        alerts[0].fields["renamed_to"],
        serde_json::json!(["/var/tmp/.cache1", "/var/tmp/.cache2"])
    );
}

#[test]
fn an_export_replaced_exchanged_or_renamed_out_of_sight_alerts_with_how() {
    let mut fleet = Fleet::default();
    let who = attacker();
    let big = |path: &str| {
        file(
            FileAction::Write,
            path,
            Some(64 * MIB),
            Some(csv(1_000_000)),
            &attacker(),
        )
    };
    // Rename over a tracked export: replaced, with the export's own facts.
    fleet.send("pc1", 0, big("/srv/a.csv"));
    let updates = fleet.send("pc1", 10, rename("/srv/notes.csv", "/srv/a.csv", 16, &who));
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.fields["how"], "replaced");
    assert_eq!(alert.fields["replaced_by"], "/srv/notes.csv");
    assert_eq!(alert.fields["size"], 64 * MIB);
    assert_eq!(alert.fields["est_rows"], 1_000_000);
    // An exchange destroys nothing: the export is followed to the other name until deleted.
    fleet.send("pc1", 20, big("/srv/b.csv"));
    let Body::File(mut swap) = rename("/srv/decoy.csv", "/srv/b.csv", 16, &who) else {
        unreachable!()
    };
    swap.exchange = true;
    assert!(fleet.send("pc1", 21, swap.into()).is_empty());
    assert!(
        fleet
            .send(
                "pc1",
                22,
                file(FileAction::Delete, "/srv/b.csv", Some(16), None, &who)
            )
            .is_empty(),
        "only the decoy sat at b.csv"
    );
    let updates = fleet.send(
        "pc1",
        23,
        file(
            FileAction::Delete,
            "/srv/decoy.csv",
            Some(64 * MIB),
            None,
            &who,
        ),
    );
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.fields["how"], "deleted");
    assert_eq!(alert.fields["path"], "/srv/b.csv");
    assert_eq!(alert.fields["final_path"], "/srv/decoy.csv");
    // What the agent says a rename replaced counts too, tracked here or not.
    let Body::File(mut over) = rename("/srv/x.txt", "/srv/old.csv", 16, &who) else {
        unreachable!()
    };
    over.replaced_size = Some(50 * MIB);
    over.replaced_export = Some(csv(700_000));
    let updates = fleet.send("pc1", 30, over.into());
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.fields["how"], "replaced");
    assert_eq!(alert.fields["size"], 50 * MIB);
    // Renamed out of the trees the file sensor watches: its delete will never be seen.
    let mut status = SensorEvent::new(
        SensorStatus::Status,
        "files",
        "fanotify: root; watching [/srv, /home/a]",
    );
    status.count = 0;
    fleet.send("pc1", 39, status.into());
    fleet.send("pc1", 40, big("/srv/c.csv"));
    assert!(
        fleet
            .send(
                "pc1",
                41,
                rename("/srv/c.csv", "/home/a/c.csv", 64 * MIB, &who)
            )
            .is_empty()
    );
    let updates = fleet.send(
        "pc1",
        42,
        rename("/home/a/c.csv", "/tmp/c.csv", 64 * MIB, &who),
    );
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.fields["how"], "renamed");
    assert_eq!(alert.fields["final_path"], "/tmp/c.csv");
}

#[test]
fn large_export_truncated_counts_as_destroyed() {
    let mut fleet = Fleet::default();
    let who = attacker();
    let updates = run(
        &mut fleet,
        vec![
            (
                "fs2",
                0,
                file(FileAction::Create, "/srv/out/b.json", Some(0), None, &who),
            ),
            (
                "fs2",
                5,
                file(
                    FileAction::Write,
                    "/srv/out/b.json",
                    Some(30 * MIB),
                    Some(csv(100_000)),
                    &who,
                ),
            ),
            (
                "fs2",
                50,
                file(FileAction::Write, "/srv/out/b.json", Some(0), None, &who),
            ),
            (
                "fs2",
                60,
                file(FileAction::Delete, "/srv/out/b.json", Some(0), None, &who),
            ),
        ],
    );
    let alerts = new_alerts(&updates);
    assert_eq!(alerts.len(), 1, "{updates:?}");
    assert_eq!(alerts[0].fields["how"], "truncated");
}

#[test]
fn small_exports_builds_logs_and_old_files_stay_quiet() {
    let mut fleet = Fleet::default();
    let who = process(900, "/usr/bin/cc", "dev", &["/usr/bin/make", "/bin/bash"]);
    let mut events = Vec::new();
    // A build: thousands of objects, some large, no export content.
    for i in 0..2000 {
        let path = format!("/home/dev/proj/target/obj{i}.o");
        let size = if i % 100 == 0 { 50 * MIB } else { 4096 };
        events.push((
            "pc1",
            i,
            file(FileAction::Create, &path, Some(0), None, &who),
        ));
        events.push((
            "pc1",
            i,
            file(FileAction::Write, &path, Some(size), None, &who),
        ));
        events.push((
            "pc1",
            i + 1,
            file(FileAction::Delete, &path, Some(size), None, &who),
        ));
    }
    // Small exports come and go all day.
    for i in 0..50 {
        let path = format!("/home/dev/report{i}.csv");
        events.push((
            "pc1",
            3000 + i,
            file(FileAction::Create, &path, Some(0), None, &who),
        ));
        events.push((
            "pc1",
            3000 + i,
            file(FileAction::Write, &path, Some(MIB), Some(csv(5000)), &who),
        ));
        events.push((
            "pc1",
            3100 + i,
            file(FileAction::Delete, &path, Some(MIB), None, &who),
        ));
    }
    // Log rotation: big compressed logs, recognised as archives, deleted on schedule.
    let gz = ExportInfo {
        class: "archive".into(),
        format: "gzip".into(),
        ..ExportInfo::default()
    };
    let logrotate = process(
        700,
        "/usr/sbin/logrotate",
        "root",
        &["/usr/lib/systemd/systemd"],
    );
    for path in [
        "/var/log/nginx/access.log.2.gz",
        "/srv/app/logs/app.log.1.gz",
        "/srv/app/logs/app.log",
    ] {
        events.push((
            "web1",
            4000,
            file(FileAction::Create, path, Some(0), None, &logrotate),
        ));
        events.push((
            "web1",
            4001,
            file(
                FileAction::Write,
                path,
                Some(300 * MIB),
                Some(gz.clone()),
                &logrotate,
            ),
        ));
        events.push((
            "web1",
            5000,
            file(FileAction::Delete, path, Some(300 * MIB), None, &logrotate),
        ));
    }
    // A large export deleted after more than a day is retention, not a cover-up.
    events.push((
        "fs1",
        0,
        file(
            FileAction::Create,
            "/srv/reports/q3.csv",
            Some(0),
            None,
            &who,
        ),
    ));
    events.push((
        "fs1",
        10,
        file(
            FileAction::Write,
            "/srv/reports/q3.csv",
            Some(90 * MIB),
            Some(csv(900_000)),
            &who,
        ),
    ));
    events.push((
        "fs1",
        25 * 3600,
        file(
            FileAction::Delete,
            "/srv/reports/q3.csv",
            Some(90 * MIB),
            None,
            &who,
        ),
    ));
    let updates = run(&mut fleet, events);
    assert!(updates.is_empty(), "{:?}", rules_of(&updates));
    // Only the small exports' names were tracked, and their deletes ended that.
    assert_eq!(fleet.engine.stats().tracked_files, 0);
}

#[test]
fn tracked_files_expire_on_the_collector_clock() {
    let mut fleet = Fleet::default();
    let who = attacker();
    fleet.send(
        "fs2",
        0,
        file(FileAction::Create, "/srv/a.csv", Some(0), None, &who),
    );
    fleet.send(
        "fs2",
        5,
        file(
            FileAction::Write,
            "/srv/a.csv",
            Some(64 * MIB),
            Some(csv(1)),
            &who,
        ),
    );
    // An agent with a clock two days ahead does not flush other hosts' files.
    fleet.send(
        "skewed",
        2 * 86_400,
        file(
            FileAction::Write,
            "/srv/b.csv",
            Some(64 * MIB),
            Some(csv(1)),
            &who,
        ),
    );
    fleet.engine.tick(at(3600));
    assert_eq!(fleet.engine.stats().tracked_files, 2);
    fleet.engine.tick(at(86_400 + 10));
    assert_eq!(
        fleet.engine.stats().tracked_files,
        1,
        "a.csv is past the 24 h window"
    );
    let updates = fleet.send(
        "fs2",
        86_400 + 20,
        file(FileAction::Delete, "/srv/a.csv", Some(64 * MIB), None, &who),
    );
    assert!(updates.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Allow-lists for the ETL and backup workloads

fn etl_hour(fleet: &mut Fleet, hour: i64) -> Vec<AlertUpdate> {
    let job = process(3000, "/opt/etl/bin/extract", "etl", &["/usr/sbin/cron"]);
    let loader = process(3100, "/opt/etl/bin/load", "etl", &["/usr/sbin/cron"]);
    let t = hour * 3600;
    run(
        fleet,
        vec![
            (
                "etl1",
                t,
                file(
                    FileAction::Create,
                    "/srv/etl/out/export.csv.tmp",
                    Some(0),
                    None,
                    &job,
                ),
            ),
            (
                "etl1",
                t + 60,
                file(
                    FileAction::Write,
                    "/srv/etl/out/export.csv.tmp",
                    Some(50 * MIB),
                    Some(csv(400_000)),
                    &job,
                ),
            ),
            (
                "etl1",
                t + 61,
                rename(
                    "/srv/etl/out/export.csv.tmp",
                    "/srv/etl/out/export.csv",
                    50 * MIB,
                    &job,
                ),
            ),
            (
                "etl1",
                t + 600,
                file(
                    FileAction::Delete,
                    "/srv/etl/out/export.csv",
                    Some(50 * MIB),
                    None,
                    &loader,
                ),
            ),
        ],
    )
}

#[test]
fn etl_staging_alerts_until_allowed_by_user_and_path() {
    let mut fleet = Fleet::default();
    let updates = etl_hour(&mut fleet, 0);
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );

    let config: DetectConfig = toml::from_str(
        r#"
        [[allow]]
        comment = "hourly ETL: stages export.csv.tmp, renames it, the loader deletes it"
        rules = ["large-export-created-then-deleted"]
        host = "etl*"
        user = "etl"
        exe = "/opt/etl/bin/*"
        path = "/srv/etl/**"
        "#,
    )
    .unwrap();
    let mut fleet = Fleet::new(config);
    for hour in 0..24 {
        let updates = etl_hour(&mut fleet, hour);
        assert!(updates.is_empty(), "hour {hour}: {:?}", rules_of(&updates));
    }
    assert_eq!(fleet.engine.stats().suppressed, 24);
    // The same file shape from another account is still reported.
    let who = attacker();
    let updates = run(
        &mut fleet,
        vec![
            (
                "etl1",
                90_000,
                file(
                    FileAction::Create,
                    "/srv/etl/out/x.csv",
                    Some(0),
                    None,
                    &who,
                ),
            ),
            (
                "etl1",
                90_001,
                file(
                    FileAction::Write,
                    "/srv/etl/out/x.csv",
                    Some(50 * MIB),
                    Some(csv(1)),
                    &who,
                ),
            ),
            (
                "etl1",
                90_002,
                file(
                    FileAction::Delete,
                    "/srv/etl/out/x.csv",
                    Some(50 * MIB),
                    None,
                    &who,
                ),
            ),
        ],
    );
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );
}

fn nightly_backup(fleet: &mut Fleet, day: i64) -> Vec<AlertUpdate> {
    let t = day * 86_400 + 2 * 3600;
    let pg_dump = process(
        6000,
        "/usr/lib/postgresql/15/bin/pg_dump",
        "backup",
        &["/bin/sh", "/usr/sbin/cron"],
    );
    let upload = process(
        6100,
        "/usr/bin/rclone",
        "backup",
        &["/bin/sh", "/usr/sbin/cron"],
    );
    let dump = ExportInfo {
        class: "data".into(),
        format: "dump".into(),
        ..ExportInfo::default()
    };
    let path = format!("/var/backups/pg/sales-{day}.dump");
    run(
        fleet,
        vec![
            ("db1", t, export_query("backup", "dump_tool")),
            (
                "db1",
                t,
                file(FileAction::Create, &path, Some(0), None, &pg_dump),
            ),
            (
                "db1",
                t + 900,
                file(
                    FileAction::Write,
                    &path,
                    Some(2048 * MIB),
                    Some(dump),
                    &pg_dump,
                ),
            ),
            (
                "db1",
                t + 1800,
                file(FileAction::Delete, &path, Some(2048 * MIB), None, &upload),
            ),
        ],
    )
}

#[test]
fn nightly_pg_dump_by_the_backup_user_is_quiet_once_allowed() {
    let mut fleet = Fleet::default();
    let mut rules = rules_of(&nightly_backup(&mut fleet, 0));
    rules.sort();
    assert_eq!(
        rules,
        vec![
            "db-export-unlisted-account",
            "large-export-created-then-deleted"
        ]
    );

    let config: DetectConfig = toml::from_str(
        r#"
        export_accounts = ["backup"]

        [[allow]]
        comment = "nightly pg_dump, uploaded then deleted"
        user = "backup"
        path = "/var/backups/pg/*.dump"
        hours = "01:00-05:00"
        "#,
    )
    .unwrap();
    let mut fleet = Fleet::new(config);
    for day in 0..7 {
        let updates = nightly_backup(&mut fleet, day);
        assert!(updates.is_empty(), "day {day}: {:?}", rules_of(&updates));
    }
    // Outside its hours the same work is reported.
    let pg_dump = process(6000, "/usr/lib/postgresql/15/bin/pg_dump", "backup", &[]);
    let updates = run(
        &mut fleet,
        vec![
            (
                "db1",
                14 * 3600,
                file(
                    FileAction::Create,
                    "/var/backups/pg/x.dump",
                    Some(0),
                    None,
                    &pg_dump,
                ),
            ),
            (
                "db1",
                14 * 3600 + 5,
                file(
                    FileAction::Write,
                    "/var/backups/pg/x.dump",
                    Some(20 * MIB),
                    Some(csv(1)),
                    &pg_dump,
                ),
            ),
            (
                "db1",
                14 * 3600 + 9,
                file(
                    FileAction::Delete,
                    "/var/backups/pg/x.dump",
                    Some(20 * MIB),
                    None,
                    &pg_dump,
                ),
            ),
        ],
    );
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );
}

// ---------------------------------------------------------------------------------------------
// Database rules

#[test]
fn chunked_bulk_read_alerts_once_and_counts_the_repeats() {
    let mut fleet = Fleet::default();
    let mut updates = Vec::new();
    for i in 1..=6u64 {
        updates.extend(fleet.send(
            "db1",
            i as i64 * 10,
            query("sales_app", "s-1", 4000, Some(4000 * i), Some(4000 * i)),
        ));
    }
    let alerts = new_alerts(&updates);
    assert_eq!(alerts.len(), 1, "{updates:?}");
    let alert = alerts[0];
    assert_eq!(alert.rule, "bulk-db-read");
    assert_eq!(alert.fields["db_user"], "sales_app");
    assert_eq!(alert.fields["rows_in_window"], 12_000);
    assert_eq!(alert.fields["user_sensitive_rows"], 12_000);
    assert_eq!(alert.fields["client_addr"], "10.0.0.23");
    assert_eq!(alert.fields["first_ts"], at(10).to_rfc3339());
    let seqs: Vec<u64> = alert.evidence.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "the third chunk crossed 10000 rows");
    assert!(
        alert.summary.starts_with("sales_app read 12000 rows"),
        "{}",
        alert.summary
    );
    // Three more chunks are another 12000 rows: a repeat of the same alert, not a new one.
    let repeats: Vec<u64> = updates
        .iter()
        .filter_map(|u| match u {
            AlertUpdate::Repeat { id, count, .. } if *id == alert.id => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(repeats, vec![2]);
    assert_eq!(fleet.engine.stats().repeats, 1);
}

#[test]
fn ordinary_accounts_never_cross_the_threshold_by_living_long() {
    let mut fleet = Fleet::default();
    let mut updates = Vec::new();
    // 100 rows every 10 minutes for two days: 28800 rows in all, 600 in any hour.
    let mut total = 5_000_000;
    for i in 0..288 {
        total += 100;
        updates.extend(fleet.send(
            "db1",
            i * 600,
            query("web", "pool-1", 100, Some(total), Some(total)),
        ));
    }
    // An agent restart starts its totals again from zero: not a negative read, not a burst.
    updates.extend(fleet.send(
        "db1",
        288 * 600,
        query("web", "pool-1", 100, Some(100), Some(100)),
    ));
    assert!(updates.is_empty(), "{:?}", rules_of(&updates));
}

#[test]
fn whole_sensitive_table_read_is_a_bulk_read() {
    let mut fleet = Fleet::default();
    let Body::Db(mut db) = query("analyst", "s-2", 50, None, None) else {
        unreachable!()
    };
    db.export_method = "full_table_read".into();
    let updates = fleet.send("db1", 0, db.into());
    assert_eq!(rules_of(&updates), vec!["bulk-db-read"]);
}

#[test]
fn reads_without_running_totals_add_up_across_sessions() {
    let mut fleet = Fleet::default();
    let mut updates = Vec::new();
    for i in 0..5 {
        let session = format!("s-{i}");
        updates.extend(fleet.send("db1", i * 600, query("crm", &session, 3000, None, None)));
    }
    // A different user's reads are their own group.
    updates.extend(fleet.send("db1", 100, query("other", "s-x", 3000, None, None)));
    let alerts = new_alerts(&updates);
    assert_eq!(alerts.len(), 1, "{updates:?}");
    assert_eq!(alerts[0].rule, "bulk-db-read-chunked");
    assert_eq!(alerts[0].fields["value"], 12_000);
    assert_eq!(alerts[0].fields["db_user"], "crm");
    assert_eq!(alerts[0].evidence.len(), 4);

    // Spread over more than the window, the same reads stay quiet.
    let mut fleet = Fleet::default();
    let mut updates = Vec::new();
    for i in 0..8 {
        updates.extend(fleet.send("db1", i * 1800, query("crm", "s", 3000, None, None)));
    }
    assert!(updates.is_empty(), "{:?}", rules_of(&updates));
}

#[test]
fn export_by_an_account_outside_the_list_alerts() {
    let config = DetectConfig {
        export_accounts: vec!["backup".into()],
        ..DetectConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let updates = fleet.send("db1", 0, export_query("sales_app", "copy_to_file"));
    assert_eq!(rules_of(&updates), vec!["db-export-unlisted-account"]);
    assert_eq!(
        new_alerts(&updates)[0].fields["export_method"],
        "copy_to_file"
    );
    assert!(
        fleet
            .send("db1", 5, export_query("backup", "dump_tool"))
            .is_empty()
    );
    assert!(
        fleet
            .send("db1", 6, export_query("sales_app", ""))
            .is_empty()
    );
}

#[test]
fn bulk_read_then_large_export_on_another_host_alerts() {
    let mut fleet = Fleet::default();
    let who = attacker();
    let mut updates = Vec::new();
    updates.extend(fleet.send(
        "db1",
        0,
        query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
    ));
    updates.extend(fleet.send(
        "fs2",
        3600,
        file(FileAction::Create, "/srv/share/c1.csv", Some(0), None, &who),
    ));
    updates.extend(fleet.send(
        "fs2",
        3700,
        file(
            FileAction::Write,
            "/srv/share/c1.csv",
            Some(300 * MIB),
            Some(csv(3_000_000)),
            &who,
        ),
    ));
    let rules = rules_of(&updates);
    assert_eq!(rules, vec!["bulk-db-read", "bulk-read-then-export"]);
    let chain = new_alerts(&updates)[1];
    assert_eq!(chain.severity, Severity::Critical);
    assert_eq!(chain.host, "fs2");
    assert_eq!(chain.fields["path"], "/srv/share/c1.csv");
    let agents: Vec<&str> = chain.evidence.iter().map(|e| e.agent_id.as_str()).collect();
    assert_eq!(agents, vec!["agent-db1", "agent-fs2"]);

    // The export long after the read is not linked to it.
    let mut fleet = Fleet::default();
    let mut updates = Vec::new();
    updates.extend(fleet.send(
        "db1",
        0,
        query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
    ));
    updates.extend(fleet.send(
        "fs2",
        7 * 3600,
        file(
            FileAction::Write,
            "/srv/share/c1.csv",
            Some(300 * MIB),
            Some(csv(1)),
            &who,
        ),
    ));
    assert_eq!(rules_of(&updates), vec!["bulk-db-read"]);
    // Nor is an export that came first.
    let mut fleet = Fleet::default();
    let mut updates = Vec::new();
    updates.extend(fleet.send(
        "fs2",
        0,
        file(
            FileAction::Write,
            "/srv/share/c1.csv",
            Some(300 * MIB),
            Some(csv(1)),
            &who,
        ),
    ));
    updates.extend(fleet.send(
        "db1",
        60,
        query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
    ));
    assert_eq!(rules_of(&updates), vec!["bulk-db-read"]);
}

// ---------------------------------------------------------------------------------------------
// Processes and network

#[test]
fn document_viewer_starting_a_shell_alerts_with_its_ancestry() {
    let mut fleet = Fleet::default();
    let shell = process(
        8001,
        "/usr/bin/bash",
        "sato",
        &[
            "/usr/lib/libreoffice/program/soffice.bin",
            "/usr/bin/gnome-shell",
        ],
    );
    let updates = fleet.send("pc7", 0, start(shell));
    assert_eq!(rules_of(&updates), vec!["document-spawns-shell"]);
    let alert = new_alerts(&updates)[0];
    assert_eq!(
        alert.fields["parent_exe"],
        "/usr/lib/libreoffice/program/soffice.bin"
    );
    assert_eq!(alert.fields["ancestry"][1]["exe"], "/usr/bin/gnome-shell");

    // A python payload two levels below a mail client, on Windows paths.
    let payload = process(
        9001,
        "C:\\Users\\sato\\AppData\\python.exe",
        "sato",
        &[
            "C:\\Windows\\System32\\cmd.exe",
            "C:\\Program Files\\Microsoft Office\\OUTLOOK.EXE",
        ],
    );
    let updates = fleet.send("pc8", 0, start(payload));
    assert_eq!(rules_of(&updates), vec!["document-spawns-shell"]);

    // Shells under terminals and builds, and viewers under shells, are ordinary.
    let quiet = [
        process(
            10,
            "/usr/bin/bash",
            "sato",
            &["/usr/bin/gnome-terminal-server"],
        ),
        process(
            11,
            "/usr/bin/python3.12",
            "dev",
            &["/usr/bin/make", "/usr/bin/bash"],
        ),
        process(12, "/usr/bin/evince", "sato", &["/usr/bin/bash"]),
        process(13, "/usr/bin/ssh", "sato", &["/usr/bin/thunderbird"]),
    ];
    for who in quiet {
        let exe = who.exe.clone();
        assert!(fleet.send("pc7", 5, start(who)).is_empty(), "{exe}");
    }
}

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

// ---------------------------------------------------------------------------------------------
// Health: silence, chain findings, overflow

fn heartbeat() -> Body {
    AgentEvent::new(AgentAction::Heartbeat).into()
}

#[test]
fn silent_agent_alerts_once_per_silence_and_rearms_when_it_talks() {
    let mut fleet = Fleet::default();
    let mut silent = Vec::new();
    fleet.engine.tick(at(0));
    fleet.send("pc1", 0, heartbeat());
    fleet.send("pc2", 0, heartbeat());
    for second in 1..=1200 {
        fleet
            .engine
            .tick(at(second))
            .into_iter()
            .for_each(|u| silent.push((second, u)));
        // pc2 keeps talking every 30 s; pc1 talks again at 100 s and at 1000 s.
        if second % 30 == 0 {
            fleet.send("pc2", second, heartbeat());
        }
        if second == 100 || second == 1000 {
            fleet.send("pc1", second, heartbeat());
        }
    }
    let fired: Vec<(i64, &str, u64)> = silent
        .iter()
        .map(|(s, u)| match u {
            AlertUpdate::New(a) => (*s, a.host.as_str(), a.count),
            AlertUpdate::Repeat { rule, count, .. } => (*s, rule.as_str(), *count),
        })
        .collect();
    // One alert per silence; a second silence within the dedup window (10 minutes) counts as a
    // repeat of the first (a flapping agent is one alert), a later one is a new alert.
    assert_eq!(
        fired,
        vec![(60, "pc1", 1), (160, "agent-silent", 2), (1060, "pc1", 1)]
    );
    let AlertUpdate::New(alert) = &silent[0].1 else {
        unreachable!()
    };
    assert_eq!(alert.rule, "agent-silent");
    assert_eq!(alert.fields["agent_id"], "agent-pc1");
    assert_eq!(alert.fields["stopped"], false);
    assert_eq!(alert.evidence[0].seq, 1);
    let AlertUpdate::New(third) = &silent[2].1 else {
        unreachable!()
    };
    assert_ne!(alert.id, third.id);

    // A clean stop is still reported, at low severity.
    fleet.send("pc2", 1201, AgentEvent::new(AgentAction::Stop).into());
    let updates: Vec<AlertUpdate> = (1202..=1300)
        .flat_map(|s| fleet.engine.tick(at(s)))
        .collect();
    let alerts = new_alerts(&updates);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].host, "pc2");
    assert_eq!(alerts[0].severity, Severity::Low);
}

#[test]
fn chain_findings_and_sensor_overflow_alert() {
    let mut fleet = Fleet::default();
    let gap = Finding {
        agent_id: "agent-pc1".into(),
        host: "pc1".into(),
        kind: FindingKind::ChainGap,
        ts: at(0),
        detail: "seq 41..57 missing".into(),
        evidence: vec![EvidenceRef {
            agent_id: "agent-pc1".into(),
            seq: 40,
        }],
    };
    let updates = fleet.engine.observe_finding(&gap);
    assert_eq!(rules_of(&updates), vec!["chain-gap"]);
    assert!(
        new_alerts(&updates)[0]
            .summary
            .contains("seq 41..57 missing")
    );
    let tamper = Finding {
        kind: FindingKind::ChainTamper,
        detail: "signature of seq 58 invalid".into(),
        ..gap
    };
    let updates = fleet.engine.observe_finding(&tamper);
    assert_eq!(rules_of(&updates), vec!["chain-tamper"]);
    assert_eq!(new_alerts(&updates)[0].severity, Severity::Critical);

    let mut overflow = SensorEvent::new(SensorStatus::Overflow, "files", "fanotify queue overflow");
    overflow.count = 1200;
    let updates = fleet.send("pc1", 5, overflow.into());
    assert_eq!(rules_of(&updates), vec!["sensor-overflow"]);
    assert_eq!(new_alerts(&updates)[0].fields["lost"], 1200);
    assert!(new_alerts(&updates)[0].summary.contains("lost 1200 events"));
    // The alert object parses back: no rule field repeats one of its own keys.
    let json = serde_json::to_string(new_alerts(&updates)[0]).unwrap();
    assert_eq!(serde_json::from_str::<Alert>(&json).unwrap().count, 1);
    // An overflow the kernel did not count says so, never "0".
    let unknown = SensorEvent::new(SensorStatus::Overflow, "network", "socket queue overflow");
    let updates = fleet.send("pc1", 6, unknown.into());
    assert_eq!(new_alerts(&updates)[0].fields["lost"], "unknown");
    assert!(
        new_alerts(&updates)[0]
            .summary
            .contains("lost unknown events")
    );
    let status = SensorEvent::new(SensorStatus::Status, "files", "fanotify");
    assert!(fleet.send("pc1", 6, status.into()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Restart: replay rebuilds state without alerting

#[test]
fn replay_rebuilds_state_so_a_delete_after_restart_still_alerts() {
    let mut before = Fleet::default();
    let who = attacker();
    let payload = process(8002, "/usr/bin/curl", "sato", &["/usr/bin/bash"]);
    let history = vec![
        before.record(
            "fs2",
            0,
            file(FileAction::Create, "/srv/share/c.csv", Some(0), None, &who),
        ),
        before.record(
            "fs2",
            10,
            file(
                FileAction::Write,
                "/srv/share/c.csv",
                Some(64 * MIB),
                Some(csv(1)),
                &who,
            ),
        ),
        before.record("pc7", 20, connect("203.0.113.50", "public", &payload)),
        // A pair entirely before the restart was alerted then; replay must not raise it again.
        before.record(
            "fs2",
            30,
            file(FileAction::Create, "/srv/share/d.csv", Some(0), None, &who),
        ),
        before.record(
            "fs2",
            31,
            file(
                FileAction::Write,
                "/srv/share/d.csv",
                Some(64 * MIB),
                Some(csv(1)),
                &who,
            ),
        ),
        before.record(
            "fs2",
            32,
            file(
                FileAction::Delete,
                "/srv/share/d.csv",
                Some(64 * MIB),
                None,
                &who,
            ),
        ),
        before.record(
            "db1",
            40,
            query("sales_app", "s", 20_000, Some(20_000), Some(20_000)),
        ),
    ];

    let mut after = Fleet::default();
    after.seq = before.seq.clone();
    after.engine.replay(&history);
    let mut updates = Vec::new();
    updates.extend(after.send("pc7", 3600, connect("203.0.113.50", "public", &payload)));
    updates.extend(after.send(
        "fs2",
        3600,
        file(
            FileAction::Delete,
            "/srv/share/c.csv",
            Some(64 * MIB),
            None,
            &who,
        ),
    ));
    let rules = rules_of(&updates);
    assert_eq!(rules, vec!["large-export-created-then-deleted"]);
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.fields["created_ts"], at(0).to_rfc3339());
    assert_eq!(alert.evidence.first().map(|e| e.seq), Some(1));

    // Without the replay the delete is of a file never seen, and nothing links it.
    let mut cold = Fleet::default();
    assert!(
        cold.send(
            "fs2",
            3600,
            file(
                FileAction::Delete,
                "/srv/share/c.csv",
                Some(64 * MIB),
                None,
                &who
            )
        )
        .is_empty()
    );
}

#[test]
fn replayed_bulk_read_links_to_an_export_after_restart() {
    let mut before = Fleet::default();
    let history = vec![before.record(
        "db1",
        0,
        query("sales_app", "s", 20_000, Some(20_000), Some(20_000)),
    )];
    let mut after = Fleet::default();
    after.engine.replay(&history);
    let who = attacker();
    let updates = after.send(
        "fs2",
        600,
        file(
            FileAction::Write,
            "/srv/x.csv",
            Some(100 * MIB),
            Some(csv(1)),
            &who,
        ),
    );
    assert_eq!(rules_of(&updates), vec!["bulk-read-then-export"]);
}

#[test]
fn agents_already_silent_before_a_restart_are_not_reported_again() {
    let mut before = Fleet::default();
    let history = vec![
        before.record("gone", 0, heartbeat()),
        before.record("alive", 500, heartbeat()),
    ];
    let mut after = Fleet::default();
    after.engine.replay(&history);
    // The collector comes back 10 minutes after its last event: "alive" could not talk meanwhile,
    // so its silence counts from the restart, and it is reported only if it stays away.
    let mut fired = Vec::new();
    for second in 1100..=1200 {
        fired.extend(
            new_alerts(&after.engine.tick(at(second)))
                .into_iter()
                .map(|a| (second, a.host.clone())),
        );
    }
    assert_eq!(fired, vec![(1160, "alive".to_string())]);

    // An agent that reconnects within the grace is not reported at all.
    let mut after = Fleet::default();
    after.engine.replay(&history);
    let mut quiet = Vec::new();
    for second in 1100..=1180 {
        quiet.extend(after.engine.tick(at(second)));
        if second == 1130 {
            after.send("alive", second, heartbeat());
        }
    }
    assert!(quiet.is_empty(), "{quiet:?}");
}

// ---------------------------------------------------------------------------------------------
// Bounded memory

#[test]
fn state_caps_hold_under_floods_and_evictions_are_counted() {
    let config = DetectConfig {
        limits: Limits {
            tracked_files: 100,
            per_host: 40,
            correlation_groups: 10,
            matches_per_group: 5,
            seen_destinations: 50,
            agents: 2000,
            dedup_entries: 10,
        },
        ..DetectConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let who = attacker();
    // A real export on fs1, then floods from other hosts.
    fleet.send(
        "fs1",
        0,
        file(
            FileAction::Write,
            "/srv/real.csv",
            Some(64 * MIB),
            Some(csv(1_000_000)),
            &who,
        ),
    );
    for i in 0..1000 {
        // Small files take no state at all.
        fleet.send(
            "fs2",
            i,
            file(
                FileAction::Create,
                &format!("/srv/empty{i}.csv"),
                Some(0),
                None,
                &who,
            ),
        );
        // Large ones do, bounded per host.
        fleet.send(
            "fs3",
            i,
            file(
                FileAction::Write,
                &format!("/srv/big{i}.csv"),
                Some(64 * MIB),
                Some(csv(1_000_000)),
                &who,
            ),
        );
        fleet.send(
            &format!("h{i}"),
            i,
            connect(&format!("198.51.{}.{}", i / 256, i % 256), "public", &who),
        );
        fleet.send("db1", i, query(&format!("u{i}"), "s", 10, None, None));
        fleet.send("db1", i, query("one", "s", 0, None, None));
    }
    let stats = fleet.engine.stats();
    assert_eq!(stats.tracked_files, 41, "{stats:?}");
    // 960 large files of fs3 + 950 destinations + correlation groups of db1 + dedup entries +
    // matches beyond 5 in the "one" group.
    assert!(stats.evicted >= 960 + 950 + 990, "{stats:?}");

    // The next tick says so, one alert per host that lost state, naming how much.
    let updates = fleet.engine.tick(at(1001));
    let evicted: Vec<&Alert> = new_alerts(&updates)
        .into_iter()
        .filter(|a| a.rule == "detection-state-evicted")
        .collect();
    let fs3 = evicted.iter().find(|a| a.host == "fs3").expect("fs3 named");
    assert!(fs3.fields["evicted"].as_u64().unwrap() >= 960, "{fs3:?}");
    assert!(fs3.summary.contains("tracked exports"), "{}", fs3.summary);
    assert!(
        evicted.iter().all(|a| a.host != "fs1" && a.host != "fs2"),
        "{evicted:#?}"
    );
    assert!(fleet.engine.tick(at(1002)).is_empty(), "reported once");

    // The flood pushed out only its own host's state: fs1's export still alerts.
    let updates = fleet.send(
        "fs1",
        2000,
        file(
            FileAction::Delete,
            "/srv/real.csv",
            Some(64 * MIB),
            None,
            &who,
        ),
    );
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration and rule files

#[test]
fn config_section_parses_with_defaults_and_rejects_unknown_keys() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CollectorToml {
        detection: DetectConfig,
    }
    let parsed: CollectorToml = toml::from_str(
        r#"
        [detection]
        disabled = ["first-seen-public-destination"]
        dedup_window = "30m"
        [detection.thresholds]
        large_export_min_size = 1048576
        agent_silent_after = "5m"
        [[detection.allow]]
        rules = ["agent-silent"]
        host = "laptop-*"
        "#,
    )
    .unwrap();
    let config = parsed.detection;
    assert_eq!(config.dedup_window, Duration::from_secs(1800));
    assert_eq!(config.thresholds.large_export_min_size, MIB);
    assert_eq!(config.thresholds.export_window, Duration::from_secs(86_400));
    assert_eq!(
        config.thresholds.agent_silent_after,
        Duration::from_secs(300)
    );
    assert!(config.builtin_rules);
    let error = toml::from_str::<CollectorToml>("[detection]\nbulk_rows = 5\n")
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("bulk_rows"), "{error}");

    // Thresholds reach the rules: a 2 MiB export is large at a 1 MiB threshold.
    let mut fleet = Fleet::new(config);
    let who = attacker();
    let updates = run(
        &mut fleet,
        vec![
            (
                "fs2",
                0,
                file(FileAction::Create, "/srv/a.csv", Some(0), None, &who),
            ),
            (
                "fs2",
                1,
                file(
                    FileAction::Write,
                    "/srv/a.csv",
                    Some(2 * MIB),
                    Some(csv(1)),
                    &who,
                ),
            ),
            (
                "fs2",
                2,
                file(FileAction::Delete, "/srv/a.csv", Some(2 * MIB), None, &who),
            ),
            ("pc1", 3, connect("203.0.113.1", "public", &who)),
        ],
    );
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );
}

#[test]
fn operator_rule_files_add_replace_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("local.yml"),
        r#"
title: Interpreter from a download directory
id: exec-from-downloads
level: low
detection:
  selection:
    kind: process.start
    exe|contains: '/downloads/'
  python:
    exe|re: 'python[0-9.]*$'
  scripts:
    cmdline|endswith: ['.py', '.pl']
  condition: selection and 1 of python or scripts
fields: [exe, cmdline]
summary: '{exe} ran from downloads on {host}'
---
title: Sensor overflow (replaced)
id: sensor-overflow
level: critical
detection:
  selection:
    kind: sensor.overflow
    count|gte: 1000
  condition: selection
"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not a rule").unwrap();
    let mut config = DetectConfig {
        rules: vec![dir.path().to_path_buf()],
        ..DetectConfig::default()
    };
    let mut fleet = Fleet::new(config.clone());
    let who = process(
        20,
        "/home/sato/Downloads/python3",
        "sato",
        &["/usr/bin/bash"],
    );
    let updates = fleet.send("pc1", 0, start(who));
    assert_eq!(rules_of(&updates), vec!["exec-from-downloads"]);
    assert_eq!(
        new_alerts(&updates)[0].summary,
        "/home/sato/Downloads/python3 ran from downloads on pc1"
    );
    let mut small = SensorEvent::new(SensorStatus::Overflow, "files", "overflow");
    small.count = 10;
    assert!(
        fleet.send("pc1", 1, small.into()).is_empty(),
        "the replacement needs 1000 lost"
    );
    let mut big = SensorEvent::new(SensorStatus::Overflow, "files", "overflow");
    big.count = 5000;
    let updates = fleet.send("pc1", 2, big.into());
    assert_eq!(new_alerts(&updates)[0].severity, Severity::Critical);

    // Disabled rules do not run.
    config.disabled = vec!["exec-from-downloads".into()];
    let mut fleet = Fleet::new(config);
    let who = process(20, "/home/sato/Downloads/python3", "sato", &[]);
    assert!(fleet.send("pc1", 0, start(who)).is_empty());

    // Mistakes are load errors that name the rule and the problem.
    for (text, expected) in [
        (
            "title: t\nid: bad-field\ndetection:\n  s:\n    exe_path: x\n  condition: s\n",
            "exe_path",
        ),
        (
            "title: t\nid: bad-cond\ndetection:\n  s:\n    exe: x\n  condition: s and t\n",
            "\"t\"",
        ),
        (
            "title: t\nid: bad-mod\ndetection:\n  s:\n    exe|base64: x\n  condition: s\n",
            "base64",
        ),
        (
            "title: t\nid: bad-ref\ncorrelation:\n  type: event_count\n  rules: [nope]\n  timespan: 1h\n",
            "nope",
        ),
        ("title: t\nid: bad-det\ndetector: telepathy\n", "telepathy"),
        (
            "title: t\nid: bad-reserved\ndetection:\n  s:\n    kind: sensor.overflow\n  condition: s\nfields: [sensor, count]\n",
            "\"count\" is a key of the alert itself",
        ),
        (
            "title: t\nid: bad-reserved-id\ndetection:\n  s:\n    kind: sensor.overflow\n  condition: s\nfields: [alert_id]\n",
            "\"alert_id\" is a key of the alert itself",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yml"), text).unwrap();
        let config = DetectConfig {
            rules: vec![dir.path().join("r.yml")],
            ..DetectConfig::default()
        };
        let error = Engine::new(&config).err().unwrap().to_string();
        assert!(error.contains(expected), "{error}");
        let id = text.lines().nth(1).unwrap().trim_start_matches("id: ");
        assert!(error.contains(id), "{error}");
    }
}

#[test]
fn sigma_conditions_modifiers_and_correlations_behave_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yml"),
        r#"
title: wildcard and all
id: t-wild
detection:
  sel_a:
    kind: process.start
    cmdline|contains|all: ['curl', '|', 'sh']
  sel_b:
    exe: '*/nc*'
  filter:
    user: root
  empty:
    cwd: null
  condition: (1 of sel_* and not filter) or (all of sel_* and empty)
dedup-by: [exe]
---
title: case
id: t-cased
detection:
  sel:
    kind: process.start
    exe|endswith|cased: /CURL
  condition: sel
---
title: tries
id: t-tries
generate: false
detection:
  sel:
    kind: db.connect
    failed: true
  condition: sel
---
title: many failed logins
id: t-count
correlation:
  type: event_count
  rules: [t-tries]
  group-by: [client_addr]
  timespan: 5m
  condition:
    gte: 3
---
title: many users
id: t-users
correlation:
  type: value_count
  rules: [t-tries]
  timespan: 1h
  condition:
    field: db_user
    gt: 2
---
title: both
id: t-both
correlation:
  type: temporal
  rules: [t-tries, t-cased]
  timespan: 1h
"#,
    )
    .unwrap();
    let config = DetectConfig {
        builtin_rules: false,
        rules: vec![dir.path().to_path_buf()],
        ..DetectConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let with = |exe: &str, cmdline: &str, user: &str| {
        let mut p = process(50, exe, user, &[]);
        p.cmdline = cmdline.into();
        p
    };
    let mut cases = vec![
        (
            with("/usr/bin/curl", "curl http://x | sh", "sato"),
            vec!["t-wild"],
        ),
        (with("/usr/bin/curl", "curl http://x | sh", "root"), vec![]),
        (with("/usr/bin/curl", "curl http://x", "sato"), vec![]),
        (with("/usr/bin/ncat", "ncat -e", "sato"), vec!["t-wild"]),
        (with("/usr/bin/CURL", "CURL", "root"), vec!["t-cased"]),
        (with("/usr/bin/curl", "curl", "root"), vec![]),
    ];
    for (i, (who, expected)) in cases.drain(..).enumerate() {
        let exe = who.exe.clone();
        let updates = fleet.send("pc1", i as i64, start(who));
        assert_eq!(rules_of(&updates), expected, "{exe}");
    }
    // `all of sel_*` with an empty cwd: curl|sh from root matches once cwd is empty.
    let Body::Process(mut event) = start(with("/usr/bin/nc", "curl x | sh", "root")) else {
        unreachable!()
    };
    event.cwd = String::new();
    assert_eq!(
        rules_of(&fleet.send("pc1", 10, event.into())),
        vec!["t-wild"]
    );

    let failed = |user: &str, client: &str| {
        let mut db = DbEvent::new(DbAction::Connect, "mariadb");
        db.db_user = user.into();
        db.client_addr = client.into();
        db.failed = true;
        Body::from(db)
    };
    let mut rules = Vec::new();
    for (i, (user, client)) in [
        ("a", "10.0.0.1"),
        ("b", "10.0.0.2"),
        ("a", "10.0.0.1"),
        ("c", "10.0.0.3"),
        ("a", "10.0.0.1"),
    ]
    .into_iter()
    .enumerate()
    {
        rules.push(rules_of(&fleet.send(
            "db1",
            100 + i as i64,
            failed(user, client),
        )));
    }
    // The fourth try is the third distinct user, the fifth the third try from one client.
    // The first completes t-both with the earlier CURL start.
    assert_eq!(
        rules,
        vec![
            vec!["t-both"],
            vec![],
            vec![],
            vec!["t-users"],
            vec!["t-count"]
        ]
    );
}

#[test]
fn builtin_pack_loads_and_every_rule_is_reachable() {
    let engine = Engine::new(&DetectConfig::default()).unwrap();
    let ids: Vec<&str> = engine.rules.iter().map(|r| r.meta.id.as_str()).collect();
    for id in [
        "large-export-created-then-deleted",
        "large-export-file",
        "bulk-db-read",
        "db-sensitive-read",
        "bulk-db-read-chunked",
        "db-export-unlisted-account",
        "bulk-read-then-export",
        "document-spawns-shell",
        "first-seen-public-destination",
        "agent-silent",
        "chain-gap",
        "chain-tamper",
        "sensor-overflow",
        "agent-dropped-events",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    // Every Sigma rule of the pack pins its kinds, so an event only meets the rules for its kind.
    assert!(engine.any_kind.is_empty(), "{:?}", engine.any_kind);
}

// ---------------------------------------------------------------------------------------------
// Every rule's alert reaches every output (issue 9: health alerts that never arrived)

/// The real engine fed the incident each built-in rule exists for: every alert it raised, and the
/// ids of the pack's rules that raise alerts (a new rule is in the second list the day it is added).
fn alerts_of_the_builtin_pack() -> (Vec<Alert>, Vec<String>) {
    let mut updates = Vec::new();
    let config = DetectConfig {
        export_accounts: vec!["backup".into()],
        ..DetectConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let generating = fleet
        .engine
        .rules
        .iter()
        .filter(|r| r.meta.generate)
        .map(|r| r.meta.id.clone())
        .collect();
    let who = attacker();
    let path = "/srv/share/c1.csv";
    let mut dropped = AgentEvent::new(AgentAction::Dropped);
    dropped.dropped = 7;
    dropped.message = "spool full".into();
    let mut overflow = SensorEvent::new(SensorStatus::Overflow, "files", "fanotify queue overflow");
    overflow.count = 1200;
    let uncounted = SensorEvent::new(SensorStatus::Overflow, "network", "socket queue overflow");
    let shell = process(
        8001,
        "/usr/bin/bash",
        "sato",
        &["/usr/lib/libreoffice/program/soffice.bin"],
    );
    let mut events = vec![
        (
            "db1",
            0,
            query("sales_app", "s-1", 20_000, Some(20_000), Some(20_000)),
        ),
        (
            "fs2",
            3600,
            file(FileAction::Create, path, Some(0), None, &who),
        ),
        (
            "fs2",
            3700,
            file(
                FileAction::Write,
                path,
                Some(300 * MIB),
                Some(csv(3_000_000)),
                &who,
            ),
        ),
        (
            "fs2",
            3800,
            file(FileAction::Delete, path, None, None, &who),
        ),
        ("db1", 3900, export_query("sales_app", "copy_to_file")),
        ("pc7", 4000, start(shell)),
        ("pc7", 4001, connect("203.0.113.50", "public", &who)),
        ("pc1", 4002, overflow.into()),
        ("pc1", 4003, uncounted.into()),
        ("pc1", 4004, dropped.into()),
    ];
    for i in 0..5 {
        events.push(("db1", 5000 + i * 600, query("crm", "s", 3000, None, None)));
    }
    updates.extend(run(&mut fleet, events));
    let gap = Finding {
        agent_id: "agent-pc1".into(),
        host: "pc1".into(),
        kind: FindingKind::ChainGap,
        ts: at(9000),
        detail: "seq 41..57 missing".into(),
        evidence: vec![EvidenceRef {
            agent_id: "agent-pc1".into(),
            seq: 40,
        }],
    };
    updates.extend(fleet.engine.observe_finding(&gap));
    let tamper = Finding {
        kind: FindingKind::ChainTamper,
        detail: "signature of seq 58 invalid".into(),
        ..gap
    };
    updates.extend(fleet.engine.observe_finding(&tamper));

    // Silence: an agent heard once, then not for longer than agent_silent_after.
    let mut quiet = Fleet::default();
    quiet.engine.tick(at(0));
    quiet.send("pc2", 0, heartbeat());
    for second in 1..=120 {
        updates.extend(quiet.engine.tick(at(second)));
    }

    // Evictions: more public destinations than the cap remembers.
    let mut flooded = Fleet::new(DetectConfig {
        limits: Limits {
            seen_destinations: 2,
            ..Limits::default()
        },
        ..DetectConfig::default()
    });
    for i in 0..5 {
        flooded.send("h1", i, connect(&format!("198.51.100.{i}"), "public", &who));
    }
    updates.extend(flooded.engine.tick(at(10)));

    let alerts = new_alerts(&updates).into_iter().cloned().collect();
    (alerts, generating)
}

/// A JSON value that refuses objects repeating a key: `serde_json::Value` keeps the last one
/// silently, while the receivers (and `Alert` itself) fail on the whole document.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<UniqueKeys, A::Error> {
                while seq.next_element::<UniqueKeys>()?.is_some() {}
                Ok(UniqueKeys)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    map.next_value::<UniqueKeys>()?;
                }
                Ok(UniqueKeys)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Valid JSON with no key repeated, carrying `rule` somewhere.
fn assert_deliverable(what: &str, rule: &str, text: &str) {
    if let Err(error) = serde_json::from_str::<UniqueKeys>(text) {
        panic!("{rule}: {what} is not valid JSON without repeated keys: {error}\n{text}");
    }
    assert!(
        text.contains(rule),
        "{rule}: {what} lacks the rule id: {text}"
    );
}

#[test]
fn every_builtin_rule_alert_round_trips_through_the_store_alerts_and_every_sink() {
    // The check below catches the bug class itself: a rule field named like the alert's own key.
    assert!(serde_json::from_str::<UniqueKeys>(r#"{"a":[{"rule":1,"rule":2}]}"#).is_err());
    let (alerts, generating) = alerts_of_the_builtin_pack();
    let fired: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
    let expected: std::collections::BTreeSet<&str> =
        generating.iter().map(String::as_str).collect();
    assert_eq!(
        fired, expected,
        "every alerting rule of the pack must fire here; add the incident for a new rule"
    );

    let dir = tempfile::tempdir().unwrap();
    let conn = crate::store::open_writer(dir.path()).unwrap();
    for alert in &alerts {
        crate::store::alerts::insert(&conn, alert).unwrap();
    }
    for alert in &alerts {
        let rule = alert.rule.as_str();
        let filter = crate::store::alerts::AlertFilter {
            rule: Some(rule.to_string()),
            limit: 1000,
            ..Default::default()
        };
        // `alerts --format table` (local): the stored alert, whole, with its deliveries.
        let stored: Vec<Alert> = crate::store::alerts::query(&conn, &filter)
            .unwrap()
            .into_iter()
            .filter(|a| a.id == alert.id)
            .collect();
        assert_eq!(
            stored,
            vec![alert.clone()],
            "{rule}: the store lost or changed it"
        );
        let rows: Vec<crate::output::AlertRow> = stored
            .into_iter()
            .map(|alert| crate::output::AlertRow {
                deliveries: crate::hooks::delivery_status(&conn, &alert.id).unwrap(),
                alert,
            })
            .collect();
        let mut table = Vec::new();
        crate::output::alerts_table(&mut table, &rows).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains(rule) && table.contains(&alert.id),
            "{rule}: table lacks the row: {table}"
        );
        // `alerts --format json` and `--format ocsf`: what the local store and the query service send.
        let objects: Vec<_> = crate::store::investigate::alerts(&conn, &filter)
            .unwrap()
            .into_iter()
            .filter(|a| a.get("id") == Some(&Json::from(alert.id.clone())))
            .collect();
        assert_eq!(objects.len(), 1, "{rule}: `alerts --format json` hides it");
        // The row as serde writes it, before a map could fold a repeated key away.
        let row = serde_json::to_string(&rows[0]).unwrap();
        assert_deliverable("alerts --format json", rule, &row);
        let mut object = objects[0].clone();
        assert!(object.remove("deliveries").is_some(), "{rule}: {object:?}");
        assert_eq!(
            serde_json::from_value::<Alert>(Json::Object(object)).unwrap(),
            *alert,
            "{rule}: json"
        );
        let ocsf = crate::ocsf::alert(&objects[0]).to_string();
        assert_deliverable("alerts --format ocsf", rule, &ocsf);
        // Every sink's payload.
        for (sink, text) in crate::hooks::rendered(alert) {
            match sink {
                "email subject" => assert!(text.contains(rule), "{rule}: {text}"),
                "email message" => assert!(text.contains(&alert.id), "{rule}: {text}"),
                "email text" => {
                    let start = text.find("\n{").expect("the alert's JSON") + 1;
                    assert_deliverable(sink, rule, &text[start..]);
                    let mailed: Alert = serde_json::from_str(&text[start..]).unwrap();
                    assert_eq!(mailed, *alert, "{rule}: e-mail");
                }
                _ => {
                    assert_deliverable(sink, rule, &text);
                    let mut sent: Map<String, Json> = serde_json::from_str(&text).unwrap();
                    assert_eq!(sent.remove("alert_id"), Some(Json::from(alert.id.clone())));
                    assert!(sent.remove("delivery_id").is_some(), "{rule}: {sink}");
                    if sink == "json" {
                        let sent: Alert = serde_json::from_value(Json::Object(sent)).unwrap();
                        assert_eq!(sent, *alert, "{rule}: json webhook");
                    }
                }
            }
        }
    }
}
