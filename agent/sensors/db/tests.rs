//! The sensor against real PostgreSQL 15 and MariaDB servers, and against golden log files
//! captured from such servers.

use std::path::Path;
use std::time::Duration;

use bannin::event::{Body as EventBody, DbAction, DbEvent, Event, SensorStatus};
use tokio::sync::mpsc::Receiver;

use super::state::SourceState;
use super::testsupport::{MariaServer, PgLog, PgServer};
use super::*;
use crate::pipeline;

/// The sensor started as `agent run` starts it, keeping its positions in `state_dir`.
async fn spawn(
    settings: Vec<DbSettings>,
    state_dir: &Path,
    tx: crate::pipeline::EventTx,
) -> Result<SensorHandle, DbError> {
    let ctx = crate::sensors::SensorContext {
        tx,
        state_dir: state_dir.to_path_buf(),
        processes: crate::sensors::process::ProcessTable::new(100, Duration::from_secs(60)),
    };
    super::spawn(settings, &ctx).await
}

fn config(text: &str) -> DatabaseConfig {
    toml::from_str(text).unwrap()
}

/// `log` may be the data directory or the log_directory inside it; both must work.
fn pg_config(log: &Path) -> DatabaseConfig {
    config(&format!(
        "kind = \"postgresql\"\nlog = \"{}\"\nsensitive_tables = [\"public.customers\"]\n\
         poll_interval = \"100ms\"\nstart_at = \"beginning\"\nname = \"pg\"\n",
        log.display()
    ))
}

fn maria_config(server: &MariaServer) -> DatabaseConfig {
    config(&format!(
        "kind = \"mariadb\"\nlog = \"{}\"\nslow_log = \"{}\"\nsensitive_tables = [\"shop.customers\"]\n\
         poll_interval = \"100ms\"\nstart_at = \"beginning\"\nname = \"maria\"\n",
        server.audit_log().display(),
        server.slow_log().display()
    ))
}

fn db(event: &Event) -> Option<&DbEvent> {
    match &event.body {
        EventBody::Db(db) => Some(db),
        _ => None,
    }
}

fn dbs(seen: &[Event]) -> Vec<&DbEvent> {
    seen.iter().filter_map(db).collect()
}

fn summary(seen: &[Event]) -> Vec<String> {
    seen.iter()
        .map(|e| format!("{} {}", e.kind(), serde_json::to_string(&e.body).unwrap()))
        .collect()
}

/// Receives events until `done` holds for all seen so far; fails after 60 s.
async fn wait_for(
    rx: &mut Receiver<Event>,
    seen: &mut Vec<Event>,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => seen.push(event),
            _ => panic!(
                "timed out waiting for {what}; saw:\n{}",
                summary(seen).join("\n")
            ),
        }
    }
}

fn disconnected(seen: &[Event], app: &str) -> bool {
    seen.iter()
        .any(|e| e.kind() == "db.disconnect" && db(e).is_some_and(|d| d.application == app))
}

fn query<'a>(seen: &'a [Event], app: &str, starts: &str) -> &'a DbEvent {
    dbs(seen)
        .into_iter()
        .find(|d| {
            d.action == DbAction::Query && d.application == app && d.statement.starts_with(starts)
        })
        .unwrap_or_else(|| {
            panic!(
                "no query {starts:?} from {app}; saw:\n{}",
                summary(seen).join("\n")
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_csvlog_sessions_exports_and_failed_logins_become_events() {
    let server = PgServer::start(PgLog::Csv);
    server.psql(
        "setup",
        "postgres",
        &[
            "CREATE TABLE customers (id int primary key, name text, email text)",
            "INSERT INTO customers SELECT g, 'n'||g, 'u'||g||'@x.jp' FROM generate_series(1,50) g",
        ],
    );
    let state = tempfile::tempdir().unwrap();
    let (tx, rx) = pipeline::channel("h");
    let mut rx = pipeline::settle_on_take(&tx, rx);
    let handle = spawn(
        settings(vec![pg_config(&server.data)]).unwrap(),
        state.path(),
        tx,
    )
    .await
    .unwrap();

    let out_file = server.dir.path().join("out.csv");
    let copy_to_file = format!("COPY customers TO '{}' CSV", out_file.display());
    let big = format!("SELECT '{}' AS big", "x".repeat(20_000));
    server.psql(
        "reporter",
        "postgres",
        &[
            "SELECT * FROM customers",
            "SELECT name FROM customers\n WHERE id <= 10",
            "CREATE ROLE alice LOGIN PASSWORD 'secret1'",
            &copy_to_file,
            "COPY (SELECT * FROM customers) TO PROGRAM 'cat > /dev/null'",
            &big,
        ],
    );
    let failed = server.psql_output("intruder", "nobody", &["SELECT 1"]);
    assert!(!failed.status.success());
    server.pg_dump("customers");

    let mut seen = Vec::new();
    wait_for(
        &mut rx,
        &mut seen,
        "reporter, intruder and pg_dump sessions",
        |seen| {
            disconnected(seen, "reporter")
                && disconnected(seen, "pg_dump")
                && dbs(seen).iter().any(|d| d.failed && d.db_user == "nobody")
        },
    )
    .await;

    let connect = dbs(&seen)
        .into_iter()
        .find(|d| d.action == DbAction::Connect && d.application == "reporter")
        .unwrap();
    assert_eq!(connect.db_user, "postgres");
    assert_eq!(connect.database, "postgres");
    assert_eq!(connect.client_addr, "127.0.0.1");
    assert!(connect.client_port.is_some());
    assert!(!connect.failed);

    let full = query(&seen, "reporter", "SELECT * FROM customers");
    assert_eq!(full.statement_kind, "read");
    assert_eq!(full.tables, vec!["public.customers"]);
    assert_eq!(full.sensitive_tables, vec!["public.customers"]);
    assert_eq!(full.export_method, "full_table_read");
    let some = query(
        &seen,
        "reporter",
        "SELECT name FROM customers\n WHERE id <= 10",
    );
    assert_eq!(some.export_method, "");
    if server.pgaudit {
        assert_eq!(full.rows, Some(50));
        assert_eq!(full.session_sensitive_rows, Some(50));
        assert_eq!(some.rows, Some(10));
        assert_eq!(some.session_sensitive_rows, Some(60));
    }

    let role = query(&seen, "reporter", "CREATE ROLE");
    assert_eq!(role.statement, "CREATE ROLE alice LOGIN PASSWORD '***'");
    assert_eq!(role.statement_kind, "dcl");
    let to_file = query(&seen, "reporter", "COPY customers TO");
    assert_eq!(
        (
            to_file.statement_kind.as_str(),
            to_file.export_method.as_str()
        ),
        ("export", "copy_to_file")
    );
    let to_program = query(&seen, "reporter", "COPY (SELECT");
    assert_eq!(to_program.export_method, "copy_to_program");
    assert_eq!(to_program.tables, vec!["public.customers"]);

    let cut = query(&seen, "reporter", "SELECT 'xxx");
    assert!(cut.statement.len() < 4200, "{}", cut.statement.len());
    let marker = format!("... [truncated, {} bytes in all]", big.len());
    assert!(
        cut.statement.ends_with(&marker),
        "{}",
        &cut.statement[4000..]
    );

    let intruder = dbs(&seen)
        .into_iter()
        .find(|d| d.db_user == "nobody")
        .unwrap();
    assert_eq!(intruder.action, DbAction::Connect);
    assert!(intruder.failed);
    assert!(
        intruder.error.contains("does not exist"),
        "{}",
        intruder.error
    );

    let dump = query(&seen, "pg_dump", "COPY public.customers");
    assert_eq!(dump.export_method, "dump_tool");
    assert_eq!(dump.statement_kind, "export");
    assert_eq!(dump.sensitive_tables, vec!["public.customers"]);
    if server.pgaudit {
        // pgaudit counts no rows for COPY; the table's size is known from the earlier full read.
        assert_eq!(dump.session_sensitive_rows, Some(50));
    }

    let reporter_end = dbs(&seen)
        .into_iter()
        .find(|d| d.action == DbAction::Disconnect && d.application == "reporter")
        .unwrap();
    if server.pgaudit {
        assert!(reporter_end.session_sensitive_rows >= Some(60));
    }
    // Every statement is one event, even with log_statement and pgaudit both logging it.
    let fulls = dbs(&seen)
        .into_iter()
        .filter(|d| d.application == "reporter" && d.statement == "SELECT * FROM customers")
        .count();
    assert_eq!(fulls, 1);
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_jsonlog_survives_rotation_and_restart_without_gaps_or_repeats() {
    let server = PgServer::start(PgLog::Json);
    server.psql(
        "setup",
        "postgres",
        &["CREATE TABLE customers (id int, name text)"],
    );
    let state = tempfile::tempdir().unwrap();
    let (tx, rx) = pipeline::channel("h");
    let mut rx = pipeline::settle_on_take(&tx, rx);
    let handle = spawn(
        settings(vec![pg_config(&server.data.join("log"))]).unwrap(),
        state.path(),
        tx,
    )
    .await
    .unwrap();
    let list = server.data.join("current_logfiles");
    let before = std::fs::read_to_string(&list).unwrap();

    server.psql(
        "rotating",
        "postgres",
        &[
            "SELECT 1 AS step1",
            "SELECT 2 AS step2",
            // Log file names have one-second resolution.
            "SELECT pg_sleep(1.1)",
            "SELECT pg_rotate_logfile()",
            "SELECT 3 AS step3",
            "SELECT 4 AS step4",
        ],
    );
    let mut seen = Vec::new();
    wait_for(&mut rx, &mut seen, "the rotating session", |seen| {
        disconnected(seen, "rotating")
    })
    .await;
    assert_ne!(
        std::fs::read_to_string(&list).unwrap(),
        before,
        "the log rotated"
    );
    for step in 1..=4 {
        let text = format!("SELECT {step} AS step{step}");
        let count = dbs(&seen).iter().filter(|d| d.statement == text).count();
        assert_eq!(count, 1, "{text} seen {count} times");
    }
    handle.stop().await;

    // Written while the agent is down: read once after the restart, and nothing before it again.
    server.psql("while-down", "postgres", &["SELECT 5 AS step5"]);
    let (tx, rx) = pipeline::channel("h");
    let mut rx = pipeline::settle_on_take(&tx, rx);
    let handle = spawn(
        settings(vec![pg_config(&server.data.join("log"))]).unwrap(),
        state.path(),
        tx,
    )
    .await
    .unwrap();
    server.psql("after", "postgres", &["SELECT 6 AS step6"]);
    let mut again = Vec::new();
    wait_for(&mut rx, &mut again, "sessions after the restart", |seen| {
        disconnected(seen, "after")
    })
    .await;
    let statements: Vec<&str> = dbs(&again).iter().map(|d| d.statement.as_str()).collect();
    assert_eq!(
        statements
            .iter()
            .filter(|s| **s == "SELECT 5 AS step5")
            .count(),
        1
    );
    assert_eq!(
        statements
            .iter()
            .filter(|s| **s == "SELECT 6 AS step6")
            .count(),
        1
    );
    assert!(
        !dbs(&again)
            .iter()
            .any(|d| d.application == "rotating" || d.application == "setup"),
        "events repeated after restart: {statements:?}"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_audit_and_slow_log_give_tables_rows_exports_and_survive_rotation_and_restart() {
    let server = MariaServer::start();
    server.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.customers (id int primary key, name varchar(50)); \
         INSERT INTO shop.customers VALUES (1,'a'),(2,'b'),(3,'c'); \
         CREATE USER 'bob'@'127.0.0.1' IDENTIFIED BY 'hunter2'; GRANT SELECT ON shop.* TO 'bob'@'127.0.0.1'",
    );
    let state = tempfile::tempdir().unwrap();
    let (tx, rx) = pipeline::channel("h");
    let mut rx = pipeline::settle_on_take(&tx, rx);
    let handle = spawn(
        settings(vec![maria_config(&server)]).unwrap(),
        state.path(),
        tx,
    )
    .await
    .unwrap();
    // The follower opens the log at its first poll, and the statements below rotate it: they
    // wait until it follows the file (a statement of its own seen), or on a loaded machine what
    // they write before the rotation lands in a file it never opened.
    let mut seen = Vec::new();
    server.sql("SELECT 'follower ready' AS marker");
    wait_for(
        &mut rx,
        &mut seen,
        "the follower's first statement",
        |seen| {
            dbs(seen)
                .iter()
                .any(|d| d.statement.contains("follower ready"))
        },
    )
    .await;

    let outfile = server.dir.path().join("out.csv");
    server.sql(&format!(
        "USE shop; SELECT * FROM customers; SELECT name FROM customers WHERE id = 2; \
         SET GLOBAL server_audit_file_rotate_now = ON; SELECT id FROM customers LIMIT 1; \
         SELECT * FROM customers INTO OUTFILE '{}'",
        outfile.display()
    ));
    let denied = server.sql_as("bob", "wrong", "SELECT 1");
    assert!(!denied.status.success());
    let bob = server.sql_as("bob", "hunter2", "SELECT * FROM shop.customers");
    assert!(
        bob.status.success(),
        "{}",
        String::from_utf8_lossy(&bob.stderr)
    );
    server.mysqldump("shop");

    wait_for(
        &mut rx,
        &mut seen,
        "root, bob and mysqldump sessions",
        |seen| {
            dbs(seen).iter().any(|d| d.export_method == "dump_tool")
                && dbs(seen).iter().any(|d| d.export_method == "into_outfile")
                && dbs(seen)
                    .iter()
                    .any(|d| d.db_user == "bob" && d.action == DbAction::Disconnect && !d.failed)
        },
    )
    .await;
    assert!(
        server.dir.path().join("server_audit.log.1").exists(),
        "the audit log rotated"
    );

    let find = |starts: &str| {
        dbs(&seen)
            .into_iter()
            .find(|d| d.action == DbAction::Query && d.statement.starts_with(starts))
            .unwrap_or_else(|| panic!("no {starts:?}; saw:\n{}", summary(&seen).join("\n")))
    };
    // The plain read, not the INTO OUTFILE export that starts with the same words.
    let full = dbs(&seen)
        .into_iter()
        .find(|d| {
            d.action == DbAction::Query
                && d.statement.starts_with("SELECT * FROM customers")
                && !d.statement.contains("OUTFILE")
        })
        .unwrap_or_else(|| panic!("no full read; saw:\n{}", summary(&seen).join("\n")));
    assert_eq!(full.tables, vec!["shop.customers"]);
    assert_eq!(full.database, "shop");
    assert_eq!(full.rows, Some(3));
    assert_eq!(full.export_method, "full_table_read");
    assert_eq!(full.session_sensitive_rows, Some(3));
    let one = find("SELECT name FROM customers WHERE id = 2");
    assert_eq!(one.rows, Some(1));
    assert_eq!(one.session_sensitive_rows, Some(4));
    // Read after the rotation, from the new file.
    let limited = find("SELECT id FROM customers LIMIT 1");
    assert_eq!(limited.rows, Some(1));
    let outfile_event = find("SELECT * FROM customers INTO OUTFILE");
    assert_eq!(outfile_event.statement_kind, "export");
    assert_eq!(outfile_event.rows, Some(3));
    let created = dbs(&seen)
        .into_iter()
        .find(|d| d.statement.starts_with("CREATE USER"))
        .unwrap();
    assert!(
        !created.statement.contains("hunter2"),
        "{}",
        created.statement
    );
    assert_eq!(created.statement_kind, "dcl");

    let refused = dbs(&seen)
        .into_iter()
        .find(|d| d.db_user == "bob" && d.failed)
        .unwrap();
    assert_eq!(refused.action, DbAction::Connect);
    assert!(refused.error.contains("1045"), "{}", refused.error);
    let bob_read = dbs(&seen)
        .into_iter()
        .find(|d| {
            d.db_user == "bob"
                && d.action == DbAction::Query
                && d.statement.contains("shop.customers")
        })
        .unwrap();
    assert_eq!(bob_read.client_addr, "127.0.0.1");
    assert_eq!(bob_read.user_sensitive_rows, Some(3));

    let dump = dbs(&seen)
        .into_iter()
        .find(|d| d.export_method == "dump_tool")
        .unwrap();
    assert_eq!(dump.tables, vec!["shop.customers"]);
    assert_eq!(dump.rows, Some(3));
    handle.stop().await;

    // While the agent is down.
    server.sql("SELECT 'while down' AS marker");
    let (tx, rx) = pipeline::channel("h");
    let mut rx = pipeline::settle_on_take(&tx, rx);
    let handle = spawn(
        settings(vec![maria_config(&server)]).unwrap(),
        state.path(),
        tx,
    )
    .await
    .unwrap();
    server.sql("SELECT 'after restart' AS marker");
    let mut again = Vec::new();
    wait_for(
        &mut rx,
        &mut again,
        "the session after the restart",
        |seen| {
            dbs(seen)
                .iter()
                .any(|d| d.statement.contains("'after restart'"))
        },
    )
    .await;
    let statements: Vec<&str> = dbs(&again).iter().map(|d| d.statement.as_str()).collect();
    assert_eq!(
        statements
            .iter()
            .filter(|s| s.contains("'while down'"))
            .count(),
        1
    );
    assert!(
        !statements
            .iter()
            .any(|s| s.contains("INTO OUTFILE") || s.contains("SQL_NO_CACHE")),
        "events repeated after restart: {statements:?}"
    );
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_log_is_reported_retried_and_recovered_and_garbage_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server_audit.log");
    let (tx, rx) = pipeline::channel("h");
    let mut rx = pipeline::settle_on_take(&tx, rx);
    let database = config(&format!(
        "kind = \"mariadb\"\nlog = \"{}\"\npoll_interval = \"50ms\"\nstart_at = \"beginning\"\n",
        log.display()
    ));
    let handle = spawn(settings(vec![database]).unwrap(), dir.path(), tx)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let sensor = |e: &Event, status: SensorStatus| match &e.body {
        EventBody::Sensor(s) => s.status == status,
        _ => false,
    };
    wait_for(
        &mut rx,
        &mut seen,
        "sensor.error for the missing log",
        |seen| seen.iter().any(|e| sensor(e, SensorStatus::Error)),
    )
    .await;
    std::fs::write(
        &log,
        "not an audit line\n20261121 08:27:13,vm,root,localhost,3,0,CONNECT,shop,,0\n\u{1}\u{2}garbage\n",
    )
    .unwrap();
    wait_for(
        &mut rx,
        &mut seen,
        "recovery, the connect and the garbage count",
        |seen| {
            seen.iter().any(|e| sensor(e, SensorStatus::Recovered))
                && seen.iter().any(|e| e.kind() == "db.connect")
                && seen.iter().any(|e| match &e.body {
                    EventBody::Sensor(s) => s.status == SensorStatus::Error && s.count == 2,
                    _ => false,
                })
        },
    )
    .await;
    let errors = seen
        .iter()
        .filter(|e| sensor(e, SensorStatus::Error))
        .count();
    assert_eq!(
        errors, 2,
        "one report for the missing log, one for the garbage"
    );
    handle.stop().await;
    assert!(dir.path().join(STATE_FILE).exists(), "positions saved");
}

/// Parses every `tests/golden/db/*.log` as the sensor would (kind from the name: `pg-csv-`,
/// `pg-json-`, `mariadb-`, with an optional `.slow` beside a MariaDB log) and compares the events
/// with the `.json` beside it. `BLESS=1` rewrites the expected files.
#[test]
fn golden_logs_parse_to_the_expected_events() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/db");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() >= 3, "golden logs missing in {}", dir.display());
    for log in logs {
        let name = log.file_stem().unwrap().to_string_lossy().into_owned();
        let events = parse_golden(&log, &name);
        let actual = serde_json::to_string_pretty(&events).unwrap() + "\n";
        let expected_path = log.with_extension("json");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1)", expected_path.display()));
        assert_eq!(actual, expected, "golden mismatch for {name}");
    }
}

fn parse_golden(log: &Path, name: &str) -> Vec<serde_json::Value> {
    // Drop the poll-time stamp MariaDB events get; the rest is the event's JSON with its kind.
    let staging = tempfile::tempdir().unwrap();
    let (kind, format, file) = if name.starts_with("pg-csv") {
        ("postgresql", "csvlog", "x.csv")
    } else if name.starts_with("pg-json") {
        ("postgresql", "jsonlog", "x.json")
    } else {
        ("mariadb", "auto", "server_audit.log")
    };
    let copied = staging.path().join(file);
    std::fs::copy(log, &copied).unwrap();
    let slow = log.with_extension("slow");
    let mut text = format!(
        "kind = \"{kind}\"\nlog = \"{}\"\nstart_at = \"beginning\"\nname = \"golden\"\n\
         sensitive_tables = [\"public.customers\", \"shop.customers\"]\n",
        if kind == "postgresql" {
            staging.path()
        } else {
            copied.as_path()
        }
        .display()
    );
    if kind == "postgresql" {
        text.push_str(&format!("format = \"{format}\"\n"));
    }
    if slow.exists() {
        text.push_str(&format!("slow_log = \"{}\"\n", slow.display()));
    }
    let settings = config::settings(vec![config(&text)]).unwrap().remove(0);
    let mut source = Source::new(settings, SourceState::default());
    let mut events = Vec::new();
    for _ in 0..3 {
        let outcome = source.poll();
        assert!(outcome.sensor.is_empty(), "{name}: {:?}", outcome.sensor);
        for (ts, event) in outcome.events {
            let mut value = serde_json::to_value(&event).unwrap();
            value["kind"] = EventBody::from(event).kind().into();
            if kind == "postgresql" {
                value["ts"] = ts.to_rfc3339().into();
            }
            events.push(value);
        }
    }
    assert_eq!(source.garbled, 0, "{name}: unparseable records");
    events
}

/// Lines parsed per second for each format, on one core: `cargo test --release --bin
/// bannin-agent db::tests::parse_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn parse_throughput() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/db");
    for (name, file) in [
        ("csvlog", "pg-csv-sessions.log"),
        ("jsonlog", "pg-json-sessions.log"),
        ("server_audit", "mariadb-sessions.log"),
    ] {
        let sample = std::fs::read(dir.join(file)).unwrap();
        let lines_per_copy = sample.iter().filter(|&&b| b == b'\n').count();
        let staging = tempfile::tempdir().unwrap();
        let (kind, target) = match name {
            "csvlog" => ("postgresql", staging.path().join("x.csv")),
            "jsonlog" => ("postgresql", staging.path().join("x.json")),
            _ => ("mariadb", staging.path().join("server_audit.log")),
        };
        let copies = (2_000_000 / lines_per_copy.max(1)).max(1);
        let mut big = Vec::with_capacity(sample.len() * copies);
        for _ in 0..copies {
            big.extend_from_slice(&sample);
        }
        std::fs::write(&target, &big).unwrap();
        let log = if kind == "postgresql" {
            staging.path()
        } else {
            target.as_path()
        };
        let text = format!(
            "kind = \"{kind}\"\nlog = \"{}\"\nstart_at = \"beginning\"\nsensitive_tables = [\"public.customers\", \"shop.customers\"]\n",
            log.display()
        );
        let settings = config::settings(vec![config(&text)]).unwrap().remove(0);
        let mut source = Source::new(settings, SourceState::default());
        #[expect(
            clippy::disallowed_methods,
            reason = "a benchmark measures real elapsed time, which tokio's clock may pause"
        )]
        let started = std::time::Instant::now();
        let cpu_started = thread_cpu_seconds();
        let mut events = 0;
        loop {
            let outcome = source.poll();
            events += outcome.events.len();
            if !outcome.more {
                break;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        // CPU time of this thread: the machine is shared, wall time says more about the others.
        let cpu = thread_cpu_seconds() - cpu_started;
        let lines = lines_per_copy * copies;
        println!(
            "{name}: {lines} lines ({} MB), {cpu:.2} s CPU ({elapsed:.2} s wall) = {:.0} lines/s per core, {events} events",
            big.len() / 1_000_000,
            lines as f64 / cpu
        );
    }
}

/// User plus system CPU seconds of the calling thread, from /proc (clock ticks of 10 ms).
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after pid and comm.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    ticks / per_second
}
