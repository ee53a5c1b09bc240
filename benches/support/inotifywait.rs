//! The file-burst benchmarks' workload and their yardstick, `inotifywait -m -r` (inotify-tools),
//! shared by `benches/agent_burst.rs` and the file sensor's own benchmark
//! (`agent/sensors/files/bench.rs`), so both measure the same burst against the same watcher.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `inotifywait -m -r` on `dir` for creates, deletes and close-after-writes, one line per
/// event into `log`, and returns once its watches are established.
pub fn watch(dir: &Path, log: &Path) -> Child {
    let mut inotifywait = Command::new("inotifywait")
        .args([
            "-m",
            "-r",
            "-e",
            "create",
            "-e",
            "delete",
            "-e",
            "close_write",
        ])
        .args(["--format", "%e %w%f"])
        .arg(dir)
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .expect("inotifywait (inotify-tools) must be installed");
    let stderr = inotifywait.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains("Watches established") {
            break;
        }
    }
    inotifywait
}

/// Lines of `inotifywait`'s log whose event list names `event` (`CREATE`, `CLOSE_WRITE`,
/// `DELETE`).
pub fn count_lines(log: &Path, event: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|line| {
            line.split(' ')
                .next()
                .is_some_and(|e| e.split(',').any(|p| p == event))
        })
        .count() as u64
}

/// The burst: one perl process creates, closes and deletes `files` files in `dir`, one after the
/// other (a separate process, so its CPU is counted for neither side).
pub fn burst(dir: &Path, files: u64) {
    let status = Command::new("perl")
        .arg("-e")
        .arg(format!(
            "for my $i (1..{files}) {{ open(my $f, '>', \"f$i\") or die; close($f); unlink(\"f$i\") or die }}"
        ))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the burst's perl process failed: {status}"
    );
}
