//! The web console's pages on the 10-million-event store: the store is `store_query`'s (the same
//! generator, `support/store_gen.rs`, plus 1,000 alerts whose evidence are stored events), the
//! server is the real `bannin-collector serve --console-listen`, signed in with a real one-time
//! link, and each page is fetched over HTTPS on one kept-alive connection, so a round's time is the
//! server's work plus a loopback round trip. Random hosts and 1-hour windows per round.
//!
//! With `--store postgres://USER@HOST/DB` (an existing, empty or earlier-loaded database) the same
//! rows are also copied into a PostgreSQL store (binary COPY, every event received now, detection's
//! cursor set past them so the leader only replays its window, as the SQLite store's collector
//! does) and the same rounds run against `serve --store`, in the same run: a PostgreSQL column.
//!
//! Run: `cargo bench --bench console -- --events 10000000 --agents 100 --dir target/tmp/store10m`
//! Options: `--dir DIR` (keep and reuse the store), `--rounds N` (default 100), `--days D`,
//! `--window 1h`, `--store URL`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) is right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/options.rs"]
mod options;
// The PostgreSQL store here is a copy of the SQLite one (`load_postgres`), so both hold the same
// rows byte for byte; the generator's own PostgreSQL sink is store_query's.
#[allow(dead_code)]
#[path = "support/store_gen.rs"]
mod store_gen;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bannin::time::{Timestamp, parse_duration};
use rusqlite::{Connection, params};
use store_gen::{COLLECTOR, Rng, run_ok};

const ALERTS: usize = 1000;

/// Adds `ALERTS` create-then-delete alerts spread over the span, each resting on two stored events
/// of its host. Skipped when the store already has them.
fn add_alerts(dir: &Path, agents: usize, start: Timestamp, span: Duration) {
    let conn = Connection::open(dir.join("bannin.db")).unwrap();
    let have: i64 = conn
        .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    if have >= ALERTS as i64 {
        return;
    }
    let mut rng = Rng(0xa1e7);
    for i in 0..ALERTS {
        let agent = rng.below(agents as u64) as usize;
        let ts = start.saturating_add(Duration::from_secs(rng.below(span.as_secs())));
        let seq = 1 + rng.below(1000);
        let body = serde_json::json!({
            "id": format!("bench-{i:05}"),
            "rule": "large-export-created-then-deleted",
            "severity": "high",
            "ts": ts.to_rfc3339(),
            "host": format!("host-{agent:03}"),
            "summary": format!("csv export /srv/exports/customers-{i}.csv deleted 2m after it was written"),
            "evidence": [
                {"agent_id": format!("a-{:016x}", agent as u64 + 1), "seq": seq},
                {"agent_id": format!("a-{:016x}", agent as u64 + 1), "seq": seq + 1},
            ],
            "count": 1,
            "path": format!("/srv/exports/customers-{i}.csv"),
            "created_ts": ts.saturating_sub(Duration::from_secs(120)).to_rfc3339(),
            "deleted_ts": ts.to_rfc3339(),
            "user": "svc",
            "exe": "/usr/bin/python3",
        });
        conn.execute(
            "INSERT OR REPLACE INTO alerts (id, rule, severity, ts, updated_ts, host, count, body)
             VALUES (?1, 'large-export-created-then-deleted', 'high', ?2, ?2, ?3, 1, ?4)",
            params![
                format!("bench-{i:05}"),
                ts.as_nanos(),
                format!("host-{agent:03}"),
                body.to_string()
            ],
        )
        .unwrap();
    }
}

/// The running collector; killed on drop.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies the SQLite store's agents, events, batches and alerts into the PostgreSQL store at `url`
/// (its schema made by a real `token create --store`), unless it already holds as many events.
fn load_postgres(dir: &Path, url: &str) {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    run_ok(Command::new(COLLECTOR).args(["token", "create", "--store", url]));
    let sqlite = Connection::open(dir.join("bannin.db")).unwrap();
    let want: i64 = sqlite
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let have: i64 = client
            .query_one("SELECT COUNT(*) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        if have == want {
            println!("reusing the {have} events in {url}");
            return;
        }
        println!("copying {want} events into {url}");
        let began = Instant::now();
        let now = Timestamp::now().as_nanos();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(
            "TRUNCATE events, batches, agents, alerts, findings, detection_cursor, hook_outbox,
                      alert_chain, console_links, console_sessions, pruned",
        )
        .await
        .unwrap();
        let mut stmt = sqlite
            .prepare(
                "SELECT no, id, name, host, signing_key, enrolled_ts, last_seen_ts, last_seq,
                        head_hash, status, certificate, head_signature FROM agents",
            )
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let (no, id, name, host): (i64, String, String, String) =
                (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap(), r.get(3).unwrap());
            let (key, enrolled, seen, last): (Vec<u8>, i64, Option<i64>, i64) =
                (r.get(4).unwrap(), r.get(5).unwrap(), r.get(6).unwrap(), r.get(7).unwrap());
            let (head, status, certificate, signature): (
                Vec<u8>,
                String,
                Option<String>,
                Option<Vec<u8>>,
            ) = (r.get(8).unwrap(), r.get(9).unwrap(), r.get(10).unwrap(), r.get(11).unwrap());
            tx.execute(
                "INSERT INTO agents (no, id, name, host, signing_key, enrolled_ts, last_seen_ts,
                     last_seq, head_hash, status, certificate, head_signature)
                 OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &no, &id, &name, &host, &key, &enrolled, &seen, &last, &head, &status,
                    &certificate, &signature,
                ],
            )
            .await
            .unwrap();
        }
        let sink = tx
            .copy_in(
                "COPY events (agent_no, seq, ts, kind, path, payload, hash, received_ts)
                 FROM STDIN BINARY",
            )
            .await
            .unwrap();
        let types = [
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT8,
        ];
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
        let mut stmt = sqlite
            .prepare("SELECT agent_no, seq, ts, kind, path, payload, hash FROM events")
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let (no, seq, ts): (i64, i64, i64) =
                (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap());
            let (kind, path): (String, Option<String>) = (r.get(3).unwrap(), r.get(4).unwrap());
            let (payload, hash): (Vec<u8>, Vec<u8>) = (r.get(5).unwrap(), r.get(6).unwrap());
            let row: [&(dyn ToSql + Sync); 8] =
                [&no, &seq, &ts, &kind, &path, &payload, &hash, &now];
            writer.as_mut().write(&row).await.unwrap();
        }
        writer.finish().await.unwrap();
        let mut stmt = sqlite
            .prepare(
                "SELECT agent_no, last_seq, first_seq, prev_hash, head_hash, signature
                 FROM batches",
            )
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let (no, last, first): (i64, i64, i64) =
                (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap());
            let (prev, head, signature): (Vec<u8>, Vec<u8>, Vec<u8>) =
                (r.get(3).unwrap(), r.get(4).unwrap(), r.get(5).unwrap());
            tx.execute(
                "INSERT INTO batches (agent_no, last_seq, first_seq, prev_hash, head_hash,
                     signature, received_ts) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&no, &last, &first, &prev, &head, &signature, &now],
            )
            .await
            .unwrap();
        }
        let mut stmt = sqlite
            .prepare("SELECT id, rule, severity, ts, updated_ts, host, count, body FROM alerts")
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let (id, rule, severity): (String, String, String) =
                (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap());
            let (ts, updated, host): (i64, i64, String) =
                (r.get(3).unwrap(), r.get(4).unwrap(), r.get(5).unwrap());
            let (count, body): (i64, String) = (r.get(6).unwrap(), r.get(7).unwrap());
            tx.execute(
                "INSERT INTO alerts (id, rule, severity, ts, updated_ts, host, count, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&id, &rule, &severity, &ts, &updated, &host, &count, &body],
            )
            .await
            .unwrap();
        }
        // Everything copied counts as read by detection: the leader replays its window and
        // goes on from here, as a collector on the SQLite store does.
        tx.execute(
            "INSERT INTO detection_cursor (xid, kind, agent_no, n)
             VALUES (pg_current_xact_id(), 1, 0, $1)",
            &[&i64::MAX],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        client.batch_execute("ANALYZE").await.unwrap();
        println!("copied in {:.1?}", began.elapsed());
    });
}

/// Starts `serve` with the console and returns it with the console's address, once it is ready.
fn serve(dir: &Path, store: Option<&str>) -> (Serve, String) {
    let mut command = Command::new(COLLECTOR);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir);
    if let Some(url) = store {
        command.args(["--store", url]);
    }
    let mut child = command
        .env(
            "BANNIN_LOG",
            "warn,bannin_collector::console=info,bannin_collector::serve=info",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut console = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("serving the console on ").nth(1) {
            console = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("listening on ") {
            break;
        }
    }
    // Keep reading, so the collector's log never meets a closed pipe; warnings are shown.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("collector: {line}");
        }
    });
    (Serve(child), console.expect("the console's address"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

type Plan = (Timestamp, Timestamp, String, usize);
type Case = (&'static str, Box<dyn Fn(&Plan) -> String>);

fn enc(t: Timestamp) -> String {
    t.to_rfc3339().replace('+', "%2B")
}

/// The pages measured, each with its path for a round's plan (window, host, alert).
fn cases() -> Vec<Case> {
    vec![
        (
            "alerts (newest 200 of 1,000)",
            Box::new(|_| "/alerts".to_string()),
        ),
        (
            "alert (evidence proofs, lineage)",
            Box::new(|p| format!("/alerts/bench-{:05}", p.3)),
        ),
        ("agents (100)", Box::new(|_| "/agents".to_string())),
        (
            "timeline, one host, 1 hour",
            Box::new(|p| {
                format!(
                    "/timeline?host={}&since={}&until={}",
                    p.2,
                    enc(p.0),
                    enc(p.1)
                )
            }),
        ),
        (
            "scope, all hosts, 1 hour",
            Box::new(|p| format!("/scope?since={}&until={}", enc(p.0), enc(p.1))),
        ),
        (
            "search, one host, 1 hour",
            Box::new(|p| format!("/search?host={}&since={}&until={}", p.2, enc(p.0), enc(p.1))),
        ),
        (
            "search, newest 100 events",
            Box::new(|_| "/search".to_string()),
        ),
        (
            "export CSV, one host, 1 hour",
            Box::new(|p| {
                format!(
                    "/search/export?format=csv&host={}&since={}&until={}",
                    p.2,
                    enc(p.0),
                    enc(p.1)
                )
            }),
        ),
        ("rules", Box::new(|_| "/rules".to_string())),
    ]
}

/// Starts `serve` on the store (SQLite in `dir`, or `store`), signs in with a real link and
/// fetches every page once per plan: each page's p50, p99 and mean size.
fn measure(dir: &Path, store: Option<&str>, plans: &[Plan]) -> Vec<(Duration, Duration, usize)> {
    let began = Instant::now();
    let (_serve, base) = serve(dir, store);
    println!(
        "{} collector ready in {:.1?} (replay; the console's index on first start)",
        store.map_or("SQLite", |_| "PostgreSQL"),
        began.elapsed()
    );
    let mut link = Command::new(COLLECTOR);
    link.args(["console", "link", "--operator", "bench", "--data-dir"])
        .arg(dir);
    if let Some(url) = store {
        link.args(["--store", url]);
    }
    let link = run_ok(&mut link).trim().to_string();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cookie = runtime.block_on(async {
        let reply = client.get(&link).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        let value = reply
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        value.split(';').next().unwrap().to_string()
    });
    let mut out = Vec::new();
    runtime.block_on(async {
        for (_, path_for) in &cases() {
            // One request first, so the connection and the binary's code are warm.
            let _ = client
                .get(format!("{base}{}", path_for(&plans[0])))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .bytes()
                .await;
            let mut times = Vec::new();
            let mut bytes = 0;
            for plan in plans {
                let url = format!("{base}{}", path_for(plan));
                let began = Instant::now();
                let reply = client
                    .get(&url)
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap();
                let status = reply.status();
                let body = reply.bytes().await.unwrap();
                times.push(began.elapsed());
                assert_eq!(status, 200, "{url}");
                bytes += body.len();
            }
            times.sort_unstable();
            out.push((
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                bytes / plans.len().max(1),
            ));
        }
    });
    out
}

fn main() {
    let events: u64 = options::option("--events").unwrap_or(1_000_000);
    let agents: usize = options::option("--agents").unwrap_or(100);
    let rounds: usize = options::option("--rounds").unwrap_or(100);
    let days: u64 = options::option("--days").unwrap_or(30);
    let store: Option<String> = options::option("--store");
    let window = options::option::<String>("--window")
        .map(|w| parse_duration(&w).unwrap())
        .unwrap_or(Duration::from_secs(3600));
    let tmp = tempfile::Builder::new()
        .prefix("bannin-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir: PathBuf = options::option("--dir").unwrap_or_else(|| tmp.path().join("store"));
    let span = Duration::from_secs(days * 86_400);
    let start = store_gen::build_or_reuse(&dir, events, agents, span);
    add_alerts(&dir, agents, start, span);
    if let Some(url) = &store {
        load_postgres(&dir, url);
    }

    let mut rng = Rng(0x5eed);
    let plans: Vec<Plan> = (0..rounds)
        .map(|_| {
            let room = span.saturating_sub(window).as_secs().max(1);
            let since = start.saturating_add(Duration::from_secs(rng.below(room)));
            (
                since,
                since.saturating_add(window),
                format!("host-{:03}", rng.below(agents as u64)),
                rng.below(ALERTS as u64) as usize,
            )
        })
        .collect();
    let sqlite = measure(&dir, None, &plans);
    let postgres = store.as_deref().map(|url| measure(&dir, Some(url), &plans));
    println!(
        "\n{rounds} rounds per page, window {window:?}, {events} events from {agents} agents; \
         one HTTPS connection kept alive"
    );
    match &postgres {
        None => println!("| page | p50 | p99 | bytes (mean) |\n| --- | --- | --- | --- |"),
        Some(_) => println!(
            "| page | SQLite p50 | SQLite p99 | PostgreSQL p50 | PostgreSQL p99 | PG/SQLite p50 | \
             bytes (mean) SQLite / PG |\n| --- | --- | --- | --- | --- | --- | --- |"
        ),
    }
    for (i, (name, _)) in cases().iter().enumerate() {
        let (p50, p99, bytes) = sqlite[i];
        match &postgres {
            None => println!("| {name} | {p50:.1?} | {p99:.1?} | {bytes} |"),
            Some(pg) => {
                let (pg50, pg99, pg_bytes) = pg[i];
                println!(
                    "| {name} | {p50:.1?} | {p99:.1?} | {pg50:.1?} | {pg99:.1?} | {:.2} | {bytes} / {pg_bytes} |",
                    pg50.as_secs_f64() / p50.as_secs_f64()
                );
            }
        }
    }
}
