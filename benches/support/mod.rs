//! What the benchmarks that start the real binaries share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

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
