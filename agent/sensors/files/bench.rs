//! A benchmark run by hand: N create-then-delete pairs in a fresh directory, watched at the same
//! time by the file sensor and by `inotifywait -m -r` (inotify-tools). It prints how many of the
//! creates and deletes each one captured and the CPU time each used.
//!
//! ```text
//! cargo test --release --bin bannin-agent bench_files -- --ignored --nocapture
//! BANNIN_BENCH_FILES=100000 BANNIN_BENCH_BACKEND=both|fanotify|notify   (defaults shown first)
//! ```
//!
//! The sensor runs inside the test process, so its CPU time is that process's: the sensor
//! thread, the forwarder and the task counting events (what the spool writer would do). The
//! workload runs in a separate perl process and is not counted for either side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant, sleep};

use super::*;
use crate::pipeline;

// The workload and the yardstick, shared with the whole agent's benchmark.
#[path = "../../../benches/support/inotifywait.rs"]
mod inotifywait;

/// The kernel reports CPU time in /proc in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

#[derive(Default)]
struct Counts {
    creates: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    overflows: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.creates.load(Ordering::Relaxed)
            + self.writes.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
    }
}

/// Waits until `count` stops changing for two seconds or reaches `goal`.
async fn settle(count: impl Fn() -> u64, goal: u64) {
    let mut last = count();
    let mut still_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        sleep(Duration::from_millis(200)).await;
        let now = count();
        if now >= goal {
            return;
        }
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(2) {
            return;
        }
    }
}

async fn run(backend: BackendChoice, files: u64) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().canonicalize().unwrap().join("watched");
    std::fs::create_dir(&dir).unwrap();
    let log = root.path().join("inotifywait.log");

    let mut inotifywait = inotifywait::watch(&dir, &log);

    let (tx, mut rx) = pipeline::channel("bench");
    let _reporter = pipeline::spawn_drop_reporter(tx.clone(), Duration::from_millis(500));
    let config = FilesConfig {
        watch: vec![dir.clone()],
        backend,
        scan_on_start: false,
        ..FilesConfig::default()
    }
    .settings()
    .unwrap();
    let processes =
        ProcessTable::from_settings(&crate::sensors::process::ProcessSettings::default());
    let handle = spawn_with_table(config, tx, processes).await.unwrap();
    let counts = Arc::new(Counts::default());
    let counter = {
        let counts = counts.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let counter = match event.kind() {
                    "file.create" => &counts.creates,
                    "file.write" => &counts.writes,
                    "file.delete" => &counts.deletes,
                    "sensor.overflow" => {
                        if let bannin::event::Body::Sensor(s) = &event.body {
                            counts.dropped.fetch_add(s.count, Ordering::Relaxed);
                        }
                        &counts.overflows
                    }
                    _ => continue,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let waiter = inotifywait.id().to_string();
    let (agent_cpu, waiter_cpu) = (cpu_seconds("self"), cpu_seconds(&waiter));
    let started = Instant::now();
    inotifywait::burst(&dir, files);
    let workload = started.elapsed();
    settle(|| counts.total(), 3 * files).await;
    settle(
        || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
        u64::MAX,
    )
    .await;
    let (agent_cpu, waiter_cpu) = (
        cpu_seconds("self") - agent_cpu,
        cpu_seconds(&waiter) - waiter_cpu,
    );
    let _ = inotifywait.kill();
    let _ = inotifywait.wait();
    let backend_name = handle.source().to_string();
    handle.stop().await;
    counter.abort();

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "files={files} workload={:.2}s\n  bannin/{backend_name}: creates={} writes={} deletes={} overflow_events={} dropped={} cpu={agent_cpu:.2}s\n  inotifywait -m -r:  creates={} writes={} deletes={} cpu={waiter_cpu:.2}s",
        workload.as_secs_f64(),
        get(&counts.creates),
        get(&counts.writes),
        get(&counts.deletes),
        get(&counts.overflows),
        get(&counts.dropped),
        inotifywait::count_lines(&log, "CREATE"),
        inotifywait::count_lines(&log, "CLOSE_WRITE"),
        inotifywait::count_lines(&log, "DELETE"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
async fn bench_files_creates_and_deletes_against_inotifywait() {
    let files = std::env::var("BANNIN_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let backends = match std::env::var("BANNIN_BENCH_BACKEND").as_deref() {
        Ok("fanotify") => vec![BackendChoice::Fanotify],
        Ok("notify") => vec![BackendChoice::Notify],
        _ => vec![BackendChoice::Fanotify, BackendChoice::Notify],
    };
    for backend in backends {
        run(backend, files).await;
    }
}
