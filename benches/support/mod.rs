//! What the benchmarks that start the real binaries share.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

#[path = "options.rs"]
mod options;
pub use options::option;

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

/// Starts `serve` on `data` (with `config` when given) and waits for its `listening on` line.
pub fn start_collector(collector: &str, data: &Path, config: Option<&Path>) -> Collector {
    let mut command = Command::new(collector);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("BANNIN_LOG", "info");
    if let Some(config) = config {
        command.arg("--config").arg(config);
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

/// Issues a token with the real CLI and enrolls an agent state directory with it.
pub fn enroll(collector: &str, agent: &str, data: &Path, addr: &str, state: &Path) {
    let token = Command::new(collector)
        .args(["token", "create", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
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
