//! The incidents of docs/scenarios.md replayed on one machine, several agents standing in
//! for several hosts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(120);

fn agent_config(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    private_file(&path, body);
    path
}

fn rules_by_host(alerts: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap().to_string(),
                a["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

/// Travel company, 2016: a document viewer starts a shell on a PC; the sales database is read in
/// bulk on one server; CSVs are written on another server and deleted the same day.
#[test]
fn travel_company_2016_is_visible_within_seconds() {
    travel_company_2016(None);
}

/// The same, with the collector's store in PostgreSQL (its detection leader, its outbox).
#[test]
fn travel_company_2016_is_visible_within_seconds_on_postgresql() {
    let db = crate::pgstore::PgDb::create();
    travel_company_2016(Some(&db.url));
}

fn travel_company_2016(store: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(0);
    let collector_config = tmp.path().join("collector.toml");
    private_file(
        &collector_config,
        &format!(
            "[[alerts.webhook]]\nurl = \"{}\"\n\n[detection.thresholds]\nbulk_read_rows = 5000\n",
            receiver.url("/soc")
        ),
    );
    let mut args = vec!["--config", collector_config.to_str().unwrap()];
    if let Some(url) = store {
        args.extend(["--store", url]);
    }
    let collector = Collector::start_with(&tmp.path().join("collector"), "127.0.0.1:0", &args);

    // The sales database on db1, with customer records.
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE public.customers (id int, name text, email text, phone text, passport text);
         INSERT INTO public.customers
           SELECT i, 'name' || i, 'user' || i || '@example.jp', '090-1234-' || lpad((i % 10000)::text, 4, '0'),
                  'TK' || lpad(i::text, 7, '0')
           FROM generate_series(1, 20000) AS i;
         CREATE ROLE intruder LOGIN; GRANT SELECT ON public.customers TO intruder;",
    );

    let quiet = "[process]\nenabled = false\n\n[network]\nenabled = false\n";
    let db1 = tmp.path().join("db1");
    collector.enroll(&db1, "db1");
    let db1_config = agent_config(
        tmp.path(),
        "db1",
        &format!(
            "{quiet}\n[[database]]\nkind = \"postgresql\"\nlog = \"{}\"\nsensitive_tables = [\"public.customers\"]\npoll_interval = \"200ms\"\n",
            pg.data.display()
        ),
    );
    let _db1 = Agent::start(&db1, &["--config", db1_config.to_str().unwrap()]);

    let exports = tmp.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    let files1 = tmp.path().join("files1");
    collector.enroll(&files1, "files1");
    let files1_config = agent_config(tmp.path(), "files1", quiet);
    let _files1 = Agent::start(
        &files1,
        &[
            "--config",
            files1_config.to_str().unwrap(),
            "--watch",
            exports.to_str().unwrap(),
        ],
    );

    let pc1 = tmp.path().join("pc1");
    collector.enroll(&pc1, "pc1");
    let pc1_config = agent_config(tmp.path(), "pc1", "[network]\nenabled = false\n");
    let _pc1 = Agent::start(&pc1, &["--config", pc1_config.to_str().unwrap()]);

    // 1. The attachment: a document viewer starts a shell.
    let viewer = tmp.path().join("soffice.bin");
    std::fs::copy("/bin/sh", &viewer).unwrap();
    let status = status_of_fresh_copy(
        Command::new(&viewer)
            .arg("-c")
            .arg("/bin/sh -c 'echo payload > /dev/null; sleep 0.3'"),
    );
    assert!(status.success());

    // 3. The sales database read in bulk by a client.
    let rows = pg.psql_as(
        "intruder",
        "COPY (SELECT * FROM public.customers) TO STDOUT WITH CSV",
    );
    assert_eq!(rows.lines().count(), 20000);
    pg.psql_as("intruder", "SELECT * FROM public.customers;");

    // 4. CSVs written on another server, deleted the same day.
    let csv = exports.join("customers_20160314.csv");
    let status = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "f = open({:?}, 'w')\nf.write('id,name,email,phone,passport\\n')\nfor i in range(300000):\n    f.write(f'{{i}},name{{i}},user{{i}}@example.jp,090-1234-{{i%10000:04d}},TK{{i:07d}}\\n')\nf.close()",
            csv.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(Command::new("rm").arg(&csv).status().unwrap().success());

    let expected = [
        ("bulk-db-read", "db1"),
        ("document-spawns-shell", "pc1"),
        ("large-export-created-then-deleted", "files1"),
        ("bulk-read-then-export", "files1"),
    ];
    let alerts = wait_for("the four alerts of the 2016 chain", LONG, || {
        let alerts = collector.alerts(&[]);
        let pairs = rules_by_host(&alerts);
        expected
            .iter()
            .all(|(rule, host)| pairs.iter().any(|(r, h)| r == rule && h == host))
            .then_some(alerts)
    });

    let export = alerts
        .iter()
        .find(|a| a["rule"] == "large-export-created-then-deleted")
        .unwrap();
    assert_eq!(export["path"], csv.display().to_string());
    assert!(export["est_rows"].as_u64().unwrap() > 200_000, "{export}");
    assert!(export["passports"].as_u64().unwrap() > 0, "{export}");
    let read = alerts.iter().find(|a| a["rule"] == "bulk-db-read").unwrap();
    assert!(
        read["summary"].as_str().unwrap().contains("intruder"),
        "{read}"
    );
    // The database events say who read what, how many rows, from which client.
    let reads = collector.events(&["--host", "db1", "--kind", "db.query"]);
    let bulk = reads
        .iter()
        .find(|e| {
            e["db_user"] == "intruder" && e["statement"].as_str().unwrap_or("").contains("COPY")
        })
        .unwrap_or_else(|| panic!("no COPY by intruder in {reads:?}"));
    assert_eq!(bulk["client_addr"], "127.0.0.1");
    assert!(bulk["tables"].to_string().contains("customers"), "{bulk}");
    // The SOC heard about it without asking.
    assert!(!receiver.bodies("/soc").is_empty());
    // No more than one create-then-delete alert for the one CSV.
    let count = collector
        .alerts(&["--rule", "large-export-created-then-deleted"])
        .len();
    assert_eq!(count, 1);
}

/// Runs a program that was just copied into place. Another test thread forking at the moment of the
/// copy can hold the copy's write descriptor for an instant, so exec may fail with ETXTBSY ("text
/// file busy") until that child has exec'd or exited; that, and only that, is tried again.
fn status_of_fresh_copy(command: &mut Command) -> std::process::ExitStatus {
    wait_for(
        "the copied program to start",
        Duration::from_secs(30),
        || match command.status() {
            Ok(status) => Some(status),
            Err(error) if error.raw_os_error() == Some(nix::libc::ETXTBSY) => None,
            Err(error) => panic!("cannot run {command:?}: {error}"),
        },
    )
}
