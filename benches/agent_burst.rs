//! The whole agent through a file burst, against `inotifywait -m -r` in the same run: one perl
//! process creates, closes and deletes N files in a watched directory while `bannin-agent run`
//! (every sensor on, connected to a real collector) and `inotifywait` watch it. The agent's CPU is
//! counted until every event it captured is stored at the collector: seeing, examining, spooling,
//! chaining, signing and sending. The collector's CPU is not counted (it runs elsewhere in use).
//!
//! Run as root for the fanotify backend: `cargo bench --bench agent_burst` (options:
//! `-- --files 100000 --rounds 3`; `BANNIN_BURST_CONFIG=FILE` runs the agent with that
//! configuration, e.g. `[files] backend = "notify"`; `BANNIN_BURST_COLLECTOR_DIR=DIR` keeps the
//! collector's database in DIR, best on another filesystem than the watched one).

// A benchmark, like a test, stops at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock and sleep are right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Killed, Threads, cpu_seconds, inotifywait, option};

const AGENT: &str = env!("CARGO_BIN_EXE_bannin-agent");
const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");

/// File events under `dir` stored at the collector: (creates, writes, deletes, overflow notices).
fn stored(data: &Path, dir: &Path) -> [u64; 4] {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("bannin.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let under = format!("{}/%", dir.display());
    let count = |kind: &str| -> u64 {
        conn.query_row(
            "SELECT COUNT(*) FROM events WHERE kind = ?1 AND path LIKE ?2",
            [kind, &under],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    };
    let overflows = conn
        .query_row(
            "SELECT COUNT(*) FROM events WHERE kind = 'sensor.overflow'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64;
    [
        count("file.create"),
        count("file.write"),
        count("file.delete"),
        overflows,
    ]
}

/// Waits until `count` reaches `goal` or stops changing for five seconds.
fn settle(mut count: impl FnMut() -> u64, goal: u64) {
    let mut last = count();
    let mut still_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = count();
        if now >= goal {
            return;
        }
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(5) {
            return;
        }
    }
}

fn round(files: u64) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let dir = root.join("watched");
    std::fs::create_dir(&dir).unwrap();
    // The collector's database goes on another filesystem when one is given (a tmpfs, say): on
    // the watched one, the agent's whole-filesystem marks would also see the collector store the
    // burst, which a collector on its own machine never makes an agent do.
    let elsewhere = std::env::var_os("BANNIN_BURST_COLLECTOR_DIR")
        .map(|dir| tempfile::tempdir_in(dir).unwrap());
    let data = match &elsewhere {
        Some(dir) => dir.path().join("collector"),
        None => root.join("collector"),
    };
    let collector = support::start_collector(COLLECTOR, &data, None, None);
    let state = root.join("agent");
    support::enroll(COLLECTOR, AGENT, &data, None, &collector.addr, &state);
    let (agent, pid) = support::start_agent(AGENT, &state, &dir, "BANNIN_BURST_CONFIG");
    // The agent watches once a file made now reaches the collector.
    let ready = dir.join("ready");
    std::fs::write(&ready, b"").unwrap();
    settle(|| stored(&data, &dir)[0], 1);
    std::fs::remove_file(&ready).unwrap();
    settle(|| stored(&data, &dir)[2], 1);
    assert_eq!(stored(&data, &dir)[0], 1, "the agent is not watching");

    let log = root.join("inotifywait.log");
    let inotifywait = inotifywait::watch(&dir, &log);
    let inotifywait = Killed(inotifywait);
    let waiter = inotifywait.0.id();

    let before = stored(&data, &dir);
    let threads0 = Threads::of(pid);
    let (agent0, waiter0) = (cpu_seconds(pid), cpu_seconds(waiter));
    let started = Instant::now();
    inotifywait::burst(&dir, files);
    let workload = started.elapsed();
    let goal: u64 = before[..3].iter().sum::<u64>() + 3 * files;
    settle(|| stored(&data, &dir)[..3].iter().sum(), goal);
    let at_collector = started.elapsed();
    settle(
        || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
        u64::MAX,
    );
    let (agent_cpu, waiter_cpu) = (cpu_seconds(pid) - agent0, cpu_seconds(waiter) - waiter0);
    let after = stored(&data, &dir);
    // Where the agent's time went, by thread name (schedstat run time and times scheduled in).
    let by_name = Threads::of(pid).since(&threads0);
    let threads: Vec<String> = by_name
        .iter()
        .filter(|(_, (s, _))| *s >= 0.005)
        .map(|(name, (s, runs))| format!("{name} {s:.2}s/{runs}"))
        .collect();
    drop(inotifywait);
    drop(agent);
    println!(
        "files={files} workload={:.2}s all stored after {:.2}s\n  bannin-agent: creates={} writes={} deletes={} overflow_events={} cpu={agent_cpu:.2}s\n    by thread (CPU/times scheduled in): {}\n  inotifywait -m -r: creates={} writes={} deletes={} cpu={waiter_cpu:.2}s\n  ratio {:.2}x",
        workload.as_secs_f64(),
        at_collector.as_secs_f64(),
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
        after[3] - before[3],
        threads.join(", "),
        inotifywait::count_lines(&log, "CREATE"),
        inotifywait::count_lines(&log, "CLOSE_WRITE"),
        inotifywait::count_lines(&log, "DELETE"),
        agent_cpu / waiter_cpu,
    );
    (agent_cpu, waiter_cpu)
}

/// Starts each round from the same state. Without it, rounds of one build grew slower through a
/// series (27 s of workload in the first, 52 s in the sixth, on the eighth session's machine), as
/// the page cache and the directory entries of earlier rounds piled up.
fn drop_caches() -> &'static str {
    let _ = std::process::Command::new("sync").status();
    match std::fs::write("/proc/sys/vm/drop_caches", b"3") {
        Ok(()) => "caches dropped",
        Err(_) => "caches kept: dropping them needs root",
    }
}

fn main() {
    let files: u64 = option("--files").unwrap_or(100_000);
    let rounds: usize = option("--rounds").unwrap_or(3);
    let mut ratios = Vec::new();
    for n in 1..=rounds {
        let caches = drop_caches();
        println!(
            "round {n} (load average {}, {caches})",
            support::options::load()
        );
        let (agent, waiter) = round(files);
        ratios.push(agent / waiter);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio of CPU, agent / inotifywait: {:.2}x",
        ratios[ratios.len() / 2]
    );
}
