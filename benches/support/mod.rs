//! What the benchmarks that start the real binaries share.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[allow(dead_code)] // Each benchmark uses its part.
#[path = "inotifywait.rs"]
pub mod inotifywait;
#[path = "options.rs"]
pub mod options;
pub use options::option;
#[allow(dead_code)] // Each benchmark uses its part.
#[path = "pg_copy.rs"]
pub mod pg_copy;
// A private database on the machine's PostgreSQL, as the PostgreSQL store's tests take one.
#[allow(dead_code)] // Each benchmark uses its part.
#[path = "../../tests/support/pg_db.rs"]
pub mod pg_db;

/// A child process killed when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a child and waits for a stderr line containing `ready`; returns that line. The rest of
/// its stderr is drained so the child never blocks on a full pipe.
pub fn start(command: &mut Command, ready: &str) -> (Killed, String) {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = loop {
        let line = lines.next().expect("exited before ready").unwrap();
        if line.contains(ready) {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), line)
}

/// A running `bannin-collector serve` on a free loopback port.
pub struct Collector {
    /// Held so the collector is killed when the benchmark ends.
    _process: Killed,
    pub addr: String,
}

/// The arguments that name a command's store: the PostgreSQL store `store` when given, the SQLite
/// store in `data` otherwise.
pub fn store_args(data: &Path, store: Option<&str>) -> Vec<OsString> {
    match store {
        Some(url) => vec!["--store".into(), url.into()],
        None => vec!["--data-dir".into(), data.into()],
    }
}

/// Starts `serve` on `data` (with `config` when given, and on the PostgreSQL store `store` when
/// given) and waits for its `listening on` line.
pub fn start_collector(
    collector: &str,
    data: &Path,
    config: Option<&Path>,
    store: Option<&str>,
) -> Collector {
    let mut command = Command::new(collector);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("BANNIN_LOG", "info");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    if let Some(url) = store {
        command.args(["--store", url]);
    }
    let (process, line) = start(&mut command, "listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    Collector {
        _process: process,
        addr,
    }
}

/// Issues an enrollment token with the real CLI (on `store` when given, else in `data`).
pub fn token(collector: &str, data: &Path, store: Option<&str>) -> String {
    let out = Command::new(collector)
        .args(["token", "create"])
        .args(store_args(data, store))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Issues a token with the real CLI and enrolls an agent state directory with it.
pub fn enroll(
    collector: &str,
    agent: &str,
    data: &Path,
    store: Option<&str>,
    addr: &str,
    state: &Path,
) {
    let token = token(collector, data, store);
    let out = Command::new(agent)
        .args([
            "enroll",
            "--collector",
            &format!("https://{addr}"),
            "--token",
            &token,
        ])
        .arg("--ca-cert")
        .arg(data.join("ca.pem"))
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
#[allow(dead_code)] // Each benchmark uses its part.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as f64;
    ticks / hz
}

/// Each thread's name, run time in nanoseconds and number of times it was scheduled in
/// (`/proc/PID/task/TID/schedstat`), by thread id.
#[allow(dead_code)] // Each benchmark uses its part.
pub struct Threads(std::collections::HashMap<u32, (String, u64, u64)>);

#[allow(dead_code)] // Each benchmark uses its part.
impl Threads {
    pub fn of(pid: u32) -> Threads {
        let mut out = std::collections::HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Threads(out);
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let schedstat =
                std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let mut fields = schedstat.split_whitespace();
            let ns = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
            let runs = fields.nth(1).and_then(|f| f.parse().ok()).unwrap_or(0);
            out.insert(tid, (name.trim().to_string(), ns, runs));
        }
        Threads(out)
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Seconds run and times scheduled in since `earlier`, summed by thread name.
    pub fn since(&self, earlier: &Threads) -> std::collections::BTreeMap<String, (f64, u64)> {
        let mut by_name: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
        for (tid, (name, ns, runs)) in &self.0 {
            let (ns0, runs0) = earlier
                .0
                .get(tid)
                .map_or((0, 0), |(_, ns, runs)| (*ns, *runs));
            let entry = by_name.entry(name.clone()).or_default();
            entry.0 += ns.saturating_sub(ns0) as f64 / 1e9;
            entry.1 += runs.saturating_sub(runs0);
        }
        by_name
    }
}

/// Starts `bannin-agent run` on an enrolled `state` directory, watching `watch`, with the
/// configuration file named by the environment variable `config_var` when it is set (to compare
/// settings), and prints its start line. Returns the process and its pid.
#[allow(dead_code)] // Each benchmark uses its part.
pub fn start_agent(agent: &str, state: &Path, watch: &Path, config_var: &str) -> (Killed, u32) {
    let mut command = Command::new(agent);
    command
        .args(["run", "--state-dir"])
        .arg(state)
        .arg("--watch")
        .arg(watch)
        .env("BANNIN_LOG", "info");
    if let Some(config) = std::env::var_os(config_var) {
        command.arg("--config").arg(config);
    }
    let (process, line) = start(&mut command, "agent running");
    println!(
        "{}",
        line.split("bannin_agent::run: ").last().unwrap_or(&line)
    );
    let pid = process.0.id();
    (process, pid)
}
