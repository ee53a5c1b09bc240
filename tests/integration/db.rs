//! Issue 4, database audit: an agent reading a real MariaDB server's audit and slow logs stores who
//! read which sensitive table, how many rows, and dumps, at the collector; after a kill -9 and
//! restart it goes on without repeating or skipping a statement.

use std::time::Duration;

use crate::db_servers::MariaServer;
use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

fn statements(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["statement"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn bulk_reads_and_dumps_of_a_sensitive_table_reach_the_collector_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MariaServer::start();
    server.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.customers (id int primary key, email varchar(80)); \
         INSERT INTO shop.customers WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s \
         WHERE n < 500) SELECT n, concat('u', n, '@example.jp') FROM s",
    );
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, "db1");
    let config = tmp.path().join("agent.toml");
    private_file(
        &config,
        &format!(
            "[[database]]\nkind = \"mariadb\"\nlog = \"{}\"\nslow_log = \"{}\"\n\
             sensitive_tables = [\"shop.customers\"]\npoll_interval = \"200ms\"\nstart_at = \"end\"\n",
            server.audit_log().display(),
            server.slow_log().display()
        ),
    );
    let mut agent = Agent::start(&state, &["--config", config.to_str().unwrap()]);

    // The sensor starts at the end of the log: wait until it reads, then exfiltrate in chunks.
    wait_for("the database sensor to read", LONG, || {
        server.sql("SELECT 'ready' AS probe");
        let seen = collector.events(&["--kind", "db.query"]);
        statements(&seen)
            .iter()
            .any(|s| s.contains("'ready'"))
            .then_some(())
    });
    server.sql(
        "SELECT * FROM shop.customers WHERE id <= 250; SELECT * FROM shop.customers WHERE id > 250",
    );
    server.mysqldump("shop");

    let dump = wait_for("the mysqldump read stored", LONG, || {
        collector
            .events(&["--kind", "db.query"])
            .into_iter()
            .find(|e| e["export_method"] == "dump_tool")
    });
    assert_eq!(dump["db_system"], "mariadb");
    assert_eq!(dump["tables"][0], "shop.customers");
    assert_eq!(dump["rows"], 500);
    let reads = collector.events(&["--kind", "db.query"]);
    let second = reads
        .iter()
        .find(|e| e["statement"] == "SELECT * FROM shop.customers WHERE id > 250")
        .unwrap();
    assert_eq!(second["rows"], 250);
    assert_eq!(second["sensitive_tables"][0], "shop.customers");
    // Two chunks of one session add up; the user's total carries on into the dump session.
    assert_eq!(second["session_sensitive_rows"], 500, "{second}");
    assert_eq!(second["user_sensitive_rows"], 500, "{second}");
    assert_eq!(dump["user_sensitive_rows"], 1000, "{dump}");

    agent.restart();
    server.sql("SELECT 'after restart' AS probe");
    wait_for("the statement after the restart stored", LONG, || {
        let seen = collector.events(&["--kind", "db.query"]);
        statements(&seen)
            .iter()
            .any(|s| s.contains("'after restart'"))
            .then_some(())
    });
    let all = statements(&collector.events(&["--kind", "db.query"]));
    let count = |text: &str| all.iter().filter(|s| s.as_str() == text).count();
    assert_eq!(count("SELECT * FROM shop.customers WHERE id <= 250"), 1);
    assert_eq!(count("SELECT * FROM shop.customers WHERE id > 250"), 1);
    assert_eq!(count("SELECT 'after restart' AS probe"), 1);
}
