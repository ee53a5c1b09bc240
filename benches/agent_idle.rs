//! The whole agent at idle: `bannin-agent run` watching a tree of 100,000 files with the process and
//! network sensors on, connected to a real collector. After a settling period, CPU time (utime +
//! stime from /proc) is measured over a window, and resident memory (VmRSS, VmHWM) is read.
//!
//! Run: `cargo bench --bench agent_idle` (options: `-- --files 100000 --settle 20 --window 60`;
//! `BANNIN_IDLE_CONFIG=FILE` runs the agent with that configuration).

// A benchmark, like a test, stops at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Threads, cpu_seconds, option};

const AGENT: &str = env!("CARGO_BIN_EXE_bannin-agent");
const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let files: u64 = option("--files").unwrap_or(100_000);
    let settle: u64 = option("--settle").unwrap_or(20);
    let window: u64 = option("--window").unwrap_or(60);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let started = Instant::now();
    for i in 0..files {
        let dir = tree.join(format!("d{:03}", i % 500));
        if i < 500 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}.txt")), b"x").unwrap();
    }
    println!("created {files} files in {:?}", started.elapsed());

    let data = tmp.path().join("collector");
    let collector = support::start_collector(COLLECTOR, &data, None, None);
    let state = tmp.path().join("agent");
    support::enroll(COLLECTOR, AGENT, &data, None, &collector.addr, &state);
    // BANNIN_IDLE_CONFIG=FILE runs the agent with that configuration (to compare settings).
    let (_agent, pid) = support::start_agent(AGENT, &state, &tree, "BANNIN_IDLE_CONFIG");
    std::thread::sleep(Duration::from_secs(settle));
    let cpu0 = cpu_seconds(pid);
    let threads0 = Threads::of(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(window));
    let cpu = cpu_seconds(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "idle over {wall:.0} s after {settle} s settling: CPU {:.3}% of one core ({cpu:.2} s)",
        100.0 * cpu / wall
    );
    // Where the time went, by thread name (run time in nanoseconds and times the thread was
    // scheduled in, from schedstat): wake-ups do not depend on the machine's load as CPU does.
    let threads = Threads::of(pid);
    let by_name = threads.since(&threads0);
    let parts: Vec<String> = by_name
        .iter()
        .filter(|(_, (s, _))| *s > 0.0)
        .map(|(name, (s, _))| format!("{name} {:.3}%", 100.0 * s / wall))
        .collect();
    println!("  by thread: {}", parts.join(", "));
    let wakeups: u64 = by_name.values().map(|(_, runs)| runs).sum();
    let parts: Vec<String> = by_name
        .iter()
        .filter(|(_, (_, runs))| *runs > 0)
        .map(|(name, (_, runs))| format!("{name} {:.2}", *runs as f64 / wall))
        .collect();
    println!(
        "  wake-ups per second: {:.2} ({})",
        wakeups as f64 / wall,
        parts.join(", ")
    );
    println!(
        "resident memory: VmRSS {:.1} MiB (anonymous {:.1}, file {:.1}), peak VmHWM {:.1} MiB, {} threads",
        status_kib(pid, "VmRSS:") as f64 / 1024.0,
        status_kib(pid, "RssAnon:") as f64 / 1024.0,
        status_kib(pid, "RssFile:") as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0,
        threads.count()
    );
    let (maps, kib) = bpf_maps_kib(pid);
    println!("  of it BPF maps (anon_inode:bpf-map in smaps): {maps} mappings, {kib} KiB resident");
}

/// How many `anon_inode:bpf-map` mappings (the eBPF ring buffers) `/proc/PID/smaps` lists, and
/// their resident kibibytes.
fn bpf_maps_kib(pid: u32) -> (usize, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut maps, mut kib, mut in_map) = (0, 0, false);
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if in_map {
                kib += rss
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if line.contains(" kB") {
            // Another field of the same mapping.
        } else if line
            .split_whitespace()
            .nth(1)
            .is_some_and(|perms| perms.len() == 4)
        {
            // A mapping's header: address range, permissions, offset, device, inode, name.
            in_map = line.ends_with("anon_inode:bpf-map");
            maps += usize::from(in_map);
        }
    }
    (maps, kib)
}
