//! Issue 14, reads of exports: who read a large export, once per process and file, through the
//! real agent (fanotify, as root) and collector.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

/// A CSV export of made-up customers of about `bytes` bytes.
pub fn customers_csv(bytes: usize) -> String {
    let mut csv = String::from("id,name,email,phone\n");
    let mut i = 0;
    while csv.len() < bytes {
        csv.push_str(&format!(
            "{i},customer {i},user{i}@example.co.jp,090-{:04}-{:04}\n",
            i % 10_000,
            (i * 7) % 10_000
        ));
        i += 1;
    }
    csv
}

/// Waits until `path` was written and stored, then until a later small write is stored too: the
/// agent handles that one in a later turn, after the turn that put the export under watch.
pub fn wait_until_watched(collector: &Collector, dir: &std::path::Path, path: &str) {
    wait_for(&format!("the write of {path} stored"), LONG, || {
        collector
            .events(&["--path", path, "--kind", "file.write"])
            .into_iter()
            .next()
    });
    let barrier = dir.join(format!("barrier-{}", std::process::id()));
    std::fs::write(&barrier, b"after the export").unwrap();
    let barrier = barrier.display().to_string();
    wait_for("the barrier's write stored", LONG, || {
        collector
            .events(&["--path", &barrier, "--kind", "file.write"])
            .into_iter()
            .next()
    });
}

pub fn reads_of(collector: &Collector, path: &str) -> Vec<serde_json::Value> {
    collector.events(&["--path", path, "--kind", "file.read"])
}

#[test]
fn cat_of_a_large_export_is_one_file_read_naming_cat_however_often_a_reader_opens_it() {
    let Site {
        tmp: _tmp,
        watched,
        collector,
        state,
    } = Site::new("reads1", "exports");
    let watched = watched.canonicalize().unwrap();
    let _agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    let status = wait_for("the files sensor's status", LONG, || {
        collector
            .events(&["--kind", "sensor.status"])
            .into_iter()
            .find(|e| e["sensor"] == "files")
    });
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("reads of exports of at least 10485760 bytes are watched (up to 1024 files)"),
        "{status}"
    );
    let export = watched.join("export.csv");
    std::fs::write(&export, customers_csv(17 * 1024 * 1024)).unwrap();
    let path = export.display().to_string();
    wait_until_watched(&collector, &watched, &path);

    let status = Command::new("cat")
        .arg(&export)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let read = wait_for("cat's read stored", LONG, || {
        reads_of(&collector, &path).into_iter().next()
    });
    assert_eq!(read["kind"], "file.read");
    assert!(read["exe"].as_str().unwrap().ends_with("/cat"), "{read}");
    assert_eq!(read["user"], "root", "{read}");
    assert_eq!(read["size"], std::fs::metadata(&export).unwrap().len());
    assert_eq!(read["export"]["format"], "csv", "{read}");
    assert_eq!(read["backend"], "fanotify");

    // The attacker's loop: one process opening the export thousands of times is one reader.
    let hammer = Command::new("python3")
        .arg("-c")
        .arg("import sys\nfor _ in range(5000):\n    open(sys.argv[1], 'rb').read(4096)")
        .arg(&export)
        .status()
        .unwrap();
    assert!(hammer.success());
    // A last reader is the barrier: once its read is stored, every earlier one is.
    let head = Command::new("head")
        .args(["-c", "100"])
        .arg(&export)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(head.success());
    let reads = wait_for("head's read stored", LONG, || {
        let reads = reads_of(&collector, &path);
        reads
            .iter()
            .any(|r| r["exe"].as_str().unwrap_or_default().ends_with("/head"))
            .then_some(reads)
    });
    let exes: Vec<&str> = reads
        .iter()
        .map(|r| r["exe"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(exes.len(), 3, "{reads:?}");
    assert_eq!(exes[0], "cat", "{reads:?}");
    assert!(exes[1].starts_with("python3"), "{reads:?}");
    assert_eq!(exes[2], "head", "{reads:?}");
}
