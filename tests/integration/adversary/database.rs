//! A database user tries to hide a bulk read from the database audit sensor or leak secrets through it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db_servers::{MariaServer, PgLog, PgServer};
use crate::harness::*;

const LONG: Duration = Duration::from_secs(90);

/// An enrolled agent that only follows `database` (a TOML `[[database]]` body).
fn db_agent(tmp: &Path, collector: &Collector, name: &str, database: &str) -> Agent {
    let state = tmp.join(name);
    collector.enroll(&state, name);
    let config = tmp.join(format!("{name}.toml"));
    private_file(
        &config,
        &format!(
            "[process]\nenabled = false\n\n[network]\nenabled = false\n\n[[database]]\n{database}\
             poll_interval = \"200ms\"\nstart_at = \"beginning\"\n"
        ),
    );
    Agent::start(&state, &["--config", config.to_str().unwrap()])
}

fn pg_database(server: &PgServer) -> String {
    format!(
        "kind = \"postgresql\"\nlog = \"{}\"\nsensitive_tables = [\"public.customers\"]\n",
        server.data.display()
    )
}

/// A collector whose bulk-read threshold is low enough for a test table.
fn collector_with_threshold(tmp: &Path, rows: u64) -> Collector {
    let config = tmp.join("collector.toml");
    private_file(
        &config,
        &format!("[detection.thresholds]\nbulk_read_rows = {rows}\n"),
    );
    Collector::start_with(
        &tmp.join("collector"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    )
}

/// Waits until the session with application name `app` has disconnected at the collector, and
/// returns every stored db event of that session.
fn session_events(collector: &Collector, app: &str) -> Vec<serde_json::Value> {
    wait_for(&format!("the {app} session to end"), LONG, || {
        let events = collector.events(&[]);
        let ours: Vec<_> = events
            .into_iter()
            .filter(|e| e["application"] == app)
            .collect();
        ours.iter()
            .any(|e| e["kind"] == "db.disconnect")
            .then_some(ours)
    })
}

/// `SELECT * FROM customers;` then `SELEC 1;` in the same session: log_statement never logs the
/// syntax error, so its ERROR record followed the read and used to mark the read failed, which
/// hid it from bulk-db-read and the running totals. The ERROR's own query text says which
/// statement it belongs to, in csvlog and jsonlog alike.
#[test]
fn a_syntax_error_after_a_bulk_read_does_not_mark_the_read_failed() {
    for format in [PgLog::Csv, PgLog::Json] {
        let tmp = tempfile::tempdir().unwrap();
        let server = PgServer::start(format);
        server.psql(
            "setup",
            "postgres",
            &[
                "CREATE TABLE customers AS SELECT g AS id, 'user' || g AS email \
               FROM generate_series(1, 300) g",
            ],
        );
        let collector = collector_with_threshold(tmp.path(), 200);
        let _agent = db_agent(tmp.path(), &collector, "db1", &pg_database(&server));

        let out = server.psql_output(
            "steer",
            "postgres",
            &["SELECT * FROM customers;", "SELEC 1;"],
        );
        assert!(!out.status.success(), "the second statement must fail");

        let events = session_events(&collector, "steer");
        let queries: Vec<_> = events.iter().filter(|e| e["kind"] == "db.query").collect();
        let read = queries
            .iter()
            .find(|e| e["statement"] == "SELECT * FROM customers;")
            .unwrap_or_else(|| panic!("{format:?}: no read among {queries:#?}"));
        assert_eq!(read["failed"], false, "{format:?}: {read}");
        assert!(read.get("error").is_none(), "{format:?}: {read}");
        assert_eq!(read["sensitive_tables"][0], "public.customers", "{read}");
        if server.pgaudit {
            assert_eq!(read["rows"], 300, "{format:?}: {read}");
            assert_eq!(read["session_sensitive_rows"], 300, "{format:?}: {read}");
        }
        let typo = queries
            .iter()
            .find(|e| e["statement"] == "SELEC 1;")
            .unwrap_or_else(|| panic!("{format:?}: the failed statement is missing: {queries:#?}"));
        assert_eq!(typo["failed"], true, "{typo}");
        assert!(
            typo["error"].as_str().unwrap().contains("syntax error"),
            "{typo}"
        );
        wait_for("the bulk read alert", LONG, || {
            alerts_json(&collector.dir, &["--rule", "bulk-db-read"])
                .into_iter()
                .next()
        });
    }
}

/// Every stored event of `host`, as text, once the statement `probe` has arrived.
fn events_through(collector: &Collector, host: &str, probe: &str) -> Vec<String> {
    wait_for(&format!("{probe} at the collector"), LONG, || {
        let events = collector.events(&["--host", host]);
        events
            .iter()
            .any(|e| e["statement"].as_str().is_some_and(|s| s.contains(probe)))
            .then(|| events.iter().map(|e| e.to_string()).collect())
    })
}

/// Credentials spelled so the old masking missed them, through real servers: Unicode-escaped and
/// E'' literals, connection URIs (dblink-style casts, CREATE SUBSCRIPTION, FEDERATED), conninfo
/// with spaces around `=`, a bare password that fails to parse, and server error texts that
/// repeat them. No stored event may hold the secret in any field.
#[test]
fn credentials_never_reach_the_collector_in_statements_or_errors() {
    const SECRET: &str = "Sekrit77";
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));

    let pg = PgServer::start(PgLog::Csv);
    let _pg_agent = db_agent(tmp.path(), &collector, "pg1", &pg_database(&pg));
    let pg_statements = [
        r"CREATE ROLE leak1 LOGIN PASSWORD U&'Sekrit\0037\0037'",
        "ALTER ROLE leak1 PASSWORD Sekrit77",
        "SELECT 'postgresql://app:Sekrit77@db.example/shop'::int",
        "SELECT 'host=db.example password  =  Sekrit77' AS conninfo",
        r"SELECT E'host=db.example \x70assword=Sekrit77' AS conninfo",
        "CREATE SUBSCRIPTION leak CONNECTION 'postgresql://rep:Sekrit77@127.0.0.1:1/x' \
         PUBLICATION p WITH (connect = false)",
        "SELECT 'mask-done' AS probe",
    ];
    for sql in pg_statements {
        pg.psql_output("mask", "postgres", &[sql]);
    }

    let maria = MariaServer::start();
    maria.sql("CREATE DATABASE shop");
    let maria_log: PathBuf = maria.audit_log();
    let _maria_agent = db_agent(
        tmp.path(),
        &collector,
        "maria1",
        &format!("kind = \"mariadb\"\nlog = \"{}\"\n", maria_log.display()),
    );
    let maria_statements = [
        "CREATE TABLE shop.f (id int) ENGINE=FEDERATED \
         CONNECTION='mysql://app:Sekrit77@127.0.0.1:1/shop/t'",
        "SELECT 'host=db.example password  =  Sekrit77' AS conninfo",
        "SELECT 'mask-done' AS probe",
    ];
    for sql in maria_statements {
        // Some fail on purpose (no FEDERATED engine): the audit log records them all the same.
        let _ = std::process::Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", maria.socket().display()))
            .args(["-uroot", "-e", sql])
            .output()
            .unwrap();
    }

    for (host, server) in [("pg1", "postgresql"), ("maria1", "mariadb")] {
        let events = events_through(&collector, host, "mask-done");
        let leaks: Vec<&String> = events.iter().filter(|e| e.contains(SECRET)).collect();
        assert!(leaks.is_empty(), "{server} leaked the secret: {leaks:#?}");
        let masked = events.iter().filter(|e| e.contains("***")).count();
        assert!(
            masked >= 2,
            "{server}: too few masked events in {events:#?}"
        );
    }
}

/// Holds a write lock on the agent's spool (as any process that can open it may) until dropped.
struct SpoolLock {
    child: std::process::Child,
}

impl SpoolLock {
    fn take(state_dir: &Path) -> SpoolLock {
        use std::io::{BufRead, BufReader};
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                      c.execute('BEGIN EXCLUSIVE')\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(state_dir.join("spool.db"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        SpoolLock { child }
    }
}

impl Drop for SpoolLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sensor used to save its read position after a 5 s wait even when its events were not yet
/// committed to the spool. With the spool held busy, a statement is read, its position must not be
/// saved; a crash (kill -9) and restart must then read it again, so it reaches the collector.
#[test]
fn a_read_position_is_never_saved_ahead_of_uncommitted_events() {
    let tmp = tempfile::tempdir().unwrap();
    let server = PgServer::start(PgLog::Csv);
    let collector = Collector::start(&tmp.path().join("collector"));
    let mut agent = db_agent(tmp.path(), &collector, "db1", &pg_database(&server));
    server.psql("ready", "postgres", &["SELECT 'before-lock' AS probe"]);
    events_through(&collector, "db1", "before-lock");

    let lock = SpoolLock::take(&agent.state_dir);
    server.psql("inflight", "postgres", &["SELECT 'in-flight' AS probe"]);
    // The spool writer gives up its first attempt only after SQLite's 10 s busy timeout, well
    // after the old sensor's 5 s wait had saved the position.
    agent
        .proc
        .wait_line("cannot write to the spool", Duration::from_secs(60));
    agent.proc.kill9();
    drop(lock);
    agent.restart();
    server.psql("after", "postgres", &["SELECT 'after-restart' AS probe"]);

    let events = events_through(&collector, "db1", "after-restart");
    let count = events
        .iter()
        .filter(|e| e.contains("SELECT 'in-flight' AS probe"))
        .count();
    assert_eq!(count, 1, "{events:#?}");
}
