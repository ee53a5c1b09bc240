//! The web console's pages on the 10-million-event store: the store is `store_query`'s (the same
//! generator, `support/store_gen.rs`, plus 1,000 alerts whose evidence are stored events), the
//! server is the real `bannin-collector serve --console-listen`, signed in with a real one-time
//! link, and each page is fetched over HTTPS on one kept-alive connection, so a round's time is the
//! server's work plus a loopback round trip. Random hosts and 1-hour windows per round.
//!
//! Run: `cargo bench --bench console -- --events 10000000 --agents 100 --dir target/tmp/store10m`
//! Options: `--dir DIR` (keep and reuse the store), `--rounds N` (default 100), `--days D`,
//! `--window 1h`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) is right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/options.rs"]
mod options;
// The console is measured on SQLite: the PostgreSQL parts of the generator are store_query's.
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

/// Starts `serve` with the console and returns it with the console's address, once it is ready.
fn serve(dir: &Path) -> (Serve, String) {
    let mut child = Command::new(COLLECTOR)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
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

fn main() {
    let events: u64 = options::option("--events").unwrap_or(1_000_000);
    let agents: usize = options::option("--agents").unwrap_or(100);
    let rounds: usize = options::option("--rounds").unwrap_or(100);
    let days: u64 = options::option("--days").unwrap_or(30);
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

    let began = Instant::now();
    let (_serve, base) = serve(&dir);
    println!(
        "collector ready in {:.1?} (replay; the console's index on first start)",
        began.elapsed()
    );
    let link = run_ok(
        Command::new(COLLECTOR)
            .args(["console", "link", "--operator", "bench", "--data-dir"])
            .arg(&dir),
    )
    .trim()
    .to_string();
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

    let mut rng = Rng(0x5eed);
    let plans: Vec<(Timestamp, Timestamp, String, usize)> = (0..rounds)
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
    let enc = |t: Timestamp| t.to_rfc3339().replace('+', "%2B");
    type Case<'a> = (
        &'a str,
        Box<dyn Fn(&(Timestamp, Timestamp, String, usize)) -> String + 'a>,
    );
    let cases: Vec<Case> = vec![
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
    ];
    println!(
        "\n{rounds} rounds per page, window {window:?}, {events} events from {agents} agents; \
         one HTTPS connection kept alive"
    );
    println!("| page | p50 | p99 | bytes (mean) |\n| --- | --- | --- | --- |");
    runtime.block_on(async {
        for (name, path_for) in &cases {
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
            for plan in &plans {
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
            println!(
                "| {name} | {:.1?} | {:.1?} | {} |",
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                bytes / rounds.max(1)
            );
        }
    });
}
