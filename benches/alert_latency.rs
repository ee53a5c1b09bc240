//! Time from the `unlink` of a large export file to the webhook's receipt of the alert.
//!
//! Real binaries: a `bannin-collector serve` with a JSON webhook pointing at a receiver in this
//! process, and a `bannin-agent run` watching a temp dir. Each run writes a CSV above the (lowered)
//! size threshold, waits until the agent has reported it, then times `unlink` → HTTP POST received.
//!
//! Run: `cargo bench --bench alert_latency` (options: `-- --runs 100`; `--store postgres` keeps the
//! collector's store in a private database on the machine's PostgreSQL, 127.0.0.1:5432, dropped
//! afterwards).

// A benchmark, like a test, stops at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;
// The test suites' HTTP receiver.
#[allow(dead_code)] // The benchmark uses a part of it.
#[path = "../tests/support/http_receiver.rs"]
mod http_receiver;

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use http_receiver::{HttpReceiver, reply};
use support::start;

const AGENT: &str = env!("CARGO_BIN_EXE_bannin-agent");
const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");

/// Accepts POSTs and sends the instant each body (an alert) arrived, with its path.
fn receiver() -> (HttpReceiver, mpsc::Receiver<(Instant, String)>) {
    let (tx, rx) = mpsc::sync_channel(1024);
    let tx = Mutex::new(tx);
    let receiver = HttpReceiver::scripted(0, move |request, stream| {
        let now = Instant::now();
        let path = request.json()["path"].as_str().unwrap_or("").to_string();
        let _ = tx.lock().unwrap().send((now, path));
        reply(stream, 200);
    });
    (receiver, rx)
}

fn private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn count_events(data: &Path, store: Option<&str>, path: &Path) -> usize {
    let out = Command::new(COLLECTOR)
        .args(["events", "--format", "json"])
        .args(support::store_args(data, store))
        .args(["--kind", "file.*", "--path"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn main() {
    let runs: usize = support::option("--runs").unwrap_or(100);
    let db = match support::option::<String>("--store").as_deref() {
        None | Some("sqlite") => None,
        Some("postgres") => Some(support::pg_db::PgDb::create()),
        Some(other) => panic!("--store {other}: give sqlite or postgres"),
    };
    let store = db.as_ref().map(|db| db.url.as_str());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");
    let watched = tmp.path().join("exports");
    std::fs::create_dir(&watched).unwrap();
    let (receiver, arrivals) = receiver();
    let port = receiver.port;
    let config = tmp.path().join("collector.toml");
    private(
        &config,
        &format!(
            "[[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/alert\"\nrate_per_minute = 0\n\n\
             [detection.thresholds]\nlarge_export_min_size = 65536\n"
        ),
    );
    let collector = support::start_collector(COLLECTOR, &data, Some(&config), store);
    let state = tmp.path().join("agent");
    support::enroll(COLLECTOR, AGENT, &data, store, &collector.addr, &state);
    let (_agent, _) = start(
        Command::new(AGENT)
            .args(["run", "--state-dir"])
            .arg(&state)
            .arg("--watch")
            .arg(&watched)
            .env("BANNIN_LOG", "info"),
        "agent running",
    );

    let row = "4242,name4242,user4242@example.jp,090-1234-5678,TK0004242\n";
    let content = format!("id,name,email,phone,passport\n{}", row.repeat(2000));
    let mut latencies = Vec::with_capacity(runs);
    for run in 0..runs {
        let path = watched.join(format!("export-{run:04}.csv"));
        std::fs::write(&path, &content).unwrap();
        // The create must be stored (detection has seen it) before the clock starts.
        let deadline = Instant::now() + Duration::from_secs(30);
        while count_events(&data, store, &path) == 0 {
            assert!(
                Instant::now() < deadline,
                "create of {} never stored",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = Instant::now();
        std::fs::remove_file(&path).unwrap();
        let expected = path.display().to_string();
        loop {
            let (at, got) = arrivals
                .recv_timeout(Duration::from_secs(30))
                .expect("alert arrives");
            if got == expected {
                latencies.push(at.duration_since(start));
                break;
            }
        }
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let kind = if store.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("alert latency, unlink -> webhook receipt, {runs} runs, {kind} store");
    println!("p50 {:?}", pick(0.50));
    println!("p90 {:?}", pick(0.90));
    println!("p99 {:?}", pick(0.99));
    println!("max {:?}", latencies[latencies.len() - 1]);
}
