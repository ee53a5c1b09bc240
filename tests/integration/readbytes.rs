//! Issue 14, who read the export and how much: `file.read` carries the bytes each reader read
//! (eBPF), through the real agent and collector, whichever way the insider reads.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::reads::{customers_csv, reads_of, wait_until_watched, watching_exports};

const LONG: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("BANNIN_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Runs `sh -c script` with the export as `$0`, to completion; returns its pid (the reader's
/// when the script execs it).
fn run(script: &str, export: &str) -> u32 {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(export)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{script}");
    pid
}

/// Runs a Python program with the export as `sys.argv[1]`, to completion; returns its pid.
fn run_python(program: &str, export: &str) -> u32 {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(program)
        .arg(export)
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "{program}");
    pid
}

/// The stored `file.read`s of `pid`.
fn reads_by(collector: &Collector, path: &str, pid: u32) -> Vec<Value> {
    reads_of(collector, path)
        .into_iter()
        .filter(|read| read["pid"] == u64::from(pid))
        .collect()
}

fn first_read_by(collector: &Collector, path: &str, pid: u32, what: &str) -> Value {
    wait_for(&format!("{what}'s file.read stored"), LONG, || {
        reads_by(collector, path, pid).into_iter().next()
    })
}

/// The `file.read` of `pid` that gives its total: its only one, or, for a reader still reading
/// a second after it began (a loaded host), the one at its close.
fn total_read_by(collector: &Collector, path: &str, pid: u32, what: &str) -> Value {
    wait_for(&format!("{what}'s total stored"), LONG, || {
        reads_by(collector, path, pid)
            .into_iter()
            .find(|r| r.get("still_open").is_none())
    })
}

#[test]
fn file_read_names_the_bytes_each_reader_read_whichever_way_it_read() {
    let (
        Site {
            tmp,
            watched,
            collector,
            ..
        },
        _agent,
        status,
    ) = watching_exports("readbytes1");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("bytes read are counted (eBPF)"),
        "{status}"
    );
    let export = watched.join("export.csv");
    std::fs::write(&export, customers_csv(17 * 1024 * 1024)).unwrap();
    let size = std::fs::metadata(&export).unwrap().len();
    let path = export.display().to_string();
    wait_until_watched(&collector, &watched, &path);
    let out = tmp.path().join("copies");
    std::fs::create_dir(&out).unwrap();
    let out = out.display().to_string();

    // The whole file with read(2), then closed: one report, at the close, with every byte.
    let cat = run("exec cat \"$0\" > /dev/null", &path);
    let read = first_read_by(&collector, &path, cat, "cat");
    assert!(read["exe"].as_str().unwrap().ends_with("/cat"), "{read}");
    assert_eq!(read["bytes_read"], size, "{read}");
    assert!(read.get("still_open").is_none(), "{read}");

    // The first megabyte only (head may read a block past it).
    let head = run("exec head -c 1000000 \"$0\" > /dev/null", &path);
    let read = total_read_by(&collector, &path, head, "head");
    let bytes = read["bytes_read"].as_u64().expect("head's bytes");
    assert!((1_000_000..size).contains(&bytes), "{read}");

    // The ways around read(2) an insider may try. The kernel paths the counter follows count
    // every byte; a mapped file's page faults cannot be counted, so its bytes are unknown
    // (absent), never 0.
    let ways = [
        (
            "cp",
            run(&format!("exec cp \"$0\" {out}/cp.csv"), &path),
            Some(size),
        ),
        (
            "copy_file_range",
            run_python(
                &format!(
                    "import os, sys\n\
                     src = os.open(sys.argv[1], os.O_RDONLY)\n\
                     dst = os.open('{out}/range.csv', os.O_WRONLY | os.O_CREAT, 0o600)\n\
                     while os.copy_file_range(src, dst, 1 << 20): pass\n"
                ),
                &path,
            ),
            Some(size),
        ),
        (
            "sendfile to a file",
            run_python(
                &format!(
                    "import os, sys\n\
                     src = os.open(sys.argv[1], os.O_RDONLY)\n\
                     dst = os.open('{out}/sent.csv', os.O_WRONLY | os.O_CREAT, 0o600)\n\
                     offset = 0\n\
                     while True:\n\
                     \x20   n = os.sendfile(dst, src, offset, 1 << 20)\n\
                     \x20   if n == 0: break\n\
                     \x20   offset += n\n"
                ),
                &path,
            ),
            Some(size),
        ),
        (
            "sendfile to a pipe",
            run(
                &format!(
                    "{} -c 'import os, sys\n\
                     src = os.open(sys.argv[1], os.O_RDONLY)\n\
                     offset = 0\n\
                     while True:\n\
                     \x20   n = os.sendfile(1, src, offset, 1 << 20)\n\
                     \x20   if n == 0: break\n\
                     \x20   offset += n\n' \"$0\" | cat > /dev/null",
                    python()
                ),
                &path,
            ),
            Some(size),
        ),
        (
            "preadv",
            run_python(
                "import os, sys\n\
                 src = os.open(sys.argv[1], os.O_RDONLY)\n\
                 bufs = [bytearray(65536), bytearray(65536)]\n\
                 offset = 0\n\
                 while True:\n\
                 \x20   n = os.preadv(src, bufs, offset)\n\
                 \x20   if n == 0: break\n\
                 \x20   offset += n\n",
                &path,
            ),
            Some(size),
        ),
        (
            "mmap",
            run_python(
                "import mmap, sys\n\
                 with open(sys.argv[1], 'rb') as f:\n\
                 \x20   m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n\
                 \x20   total = sum(m[i] for i in range(0, len(m), 4096))\n\
                 \x20   m.close()\n",
                &path,
            ),
            None,
        ),
    ];
    for (way, pid, expected) in &ways {
        // The pipe's writer is the shell's child, not the shell: found by its parent.
        let read = if *way == "sendfile to a pipe" {
            wait_for("the sendfile-to-a-pipe read stored", LONG, || {
                reads_of(&collector, &path).into_iter().find(|r| {
                    r["ppid"] == u64::from(*pid)
                        && r.get("still_open").is_none()
                        && r["exe"].as_str().is_some_and(|e| e.contains("python"))
                })
            })
        } else {
            total_read_by(&collector, &path, *pid, way)
        };
        match *expected {
            Some(bytes) => assert_eq!(read["bytes_read"], bytes, "{way}: {read}"),
            None => assert!(read.get("bytes_read").is_none(), "{way}: {read}"),
        }
    }

    // A reader still holding the export open after the agent's wait: reported then with what
    // it read so far, and again at its close with its total, under the same path.
    // One read(2) of 3,000,000 bytes: done long before the agent's wait is over.
    let mut holder = Command::new(python())
        .arg("-c")
        .arg(
            "import os, sys\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             assert len(os.read(fd, 3000000)) == 3000000\n\
             sys.stdin.read()\n\
             while os.read(fd, 1 << 20): pass\n\
             os.close(fd)\n",
        )
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let holder_pid = holder.id();
    let open = first_read_by(&collector, &path, holder_pid, "the holder");
    assert_eq!(open["still_open"], true, "{open}");
    assert_eq!(open["bytes_read"], 3_000_000, "{open}");
    holder.stdin.take().unwrap().write_all(b"go on").unwrap();
    assert!(holder.wait().unwrap().success());
    let closed = wait_for("the holder's close stored", LONG, || {
        reads_by(&collector, &path, holder_pid)
            .into_iter()
            .find(|r| r["closed"] == true)
    });
    assert_eq!(closed["bytes_read"], size, "{closed}");
    assert_eq!(closed["path"], open["path"], "{closed}");
    assert!(closed["seq"].as_u64() > open["seq"].as_u64(), "{closed}");

    // Each reader that read and closed is one file.read (two for one still reading a second
    // after it began): the holder's close came after them all, so all theirs are stored by now.
    assert_eq!(reads_by(&collector, &path, cat).len(), 1);
    for pid in std::iter::once(head).chain(
        ways.iter()
            .filter(|w| w.0 != "sendfile to a pipe")
            .map(|w| w.1),
    ) {
        let reads = reads_by(&collector, &path, pid);
        let expected = if reads[0]["still_open"] == true { 2 } else { 1 };
        assert_eq!(reads.len(), expected, "pid {pid}: {reads:?}");
    }
    assert_eq!(reads_by(&collector, &path, holder_pid).len(), 2);

    // The events command shows the bytes in its table too.
    let table = run_ok(Command::new(env!("CARGO_BIN_EXE_bannin-collector")).args([
        "events",
        "--data-dir",
        collector.dir.to_str().unwrap(),
        "--kind",
        "file.read",
        "--format",
        "table",
    ]));
    assert!(table.contains(&format!("read={size}")), "{table}");
    assert!(table.contains("read=3000000 (still open)"), "{table}");
    assert!(
        table.contains(&format!("read={size} (at close)")),
        "{table}"
    );
}

/// How many of the process's descriptors are links on the `sys_exit` tracepoint: the byte
/// counter's, which every system call on the host pays for while it is attached.
fn counter_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path()).is_ok_and(|info| {
                info.lines()
                    .any(|line| line.split_whitespace().eq(["tp_name:", "sys_exit"]))
            })
        })
        .count()
}

/// The counter costs the host's system calls nothing while there is nothing to count: the
/// agent holds no link on `sys_exit` until an export is watched, one while it is (and its
/// reader is counted), and none again once the export is deleted.
#[test]
fn the_byte_counter_is_attached_only_while_an_export_is_watched() {
    let (
        Site {
            tmp: _tmp,
            watched,
            collector,
            ..
        },
        agent,
        _status,
    ) = watching_exports("readbytes-rest");
    let pid = agent.proc.child.id();
    assert_eq!(counter_links(pid), 0, "attached with nothing watched");

    let export = watched.join("export.csv");
    std::fs::write(&export, customers_csv(17 * 1024 * 1024)).unwrap();
    let size = std::fs::metadata(&export).unwrap().len();
    let path = export.display().to_string();
    wait_until_watched(&collector, &watched, &path);
    assert_eq!(
        counter_links(pid),
        1,
        "not attached while an export is watched"
    );
    let cat = run("exec cat \"$0\" > /dev/null", &path);
    let read = first_read_by(&collector, &path, cat, "cat");
    assert_eq!(read["bytes_read"], size, "{read}");

    std::fs::remove_file(&export).unwrap();
    wait_for("the delete stored", LONG, || {
        collector
            .events(&["--path", &path, "--kind", "file.delete"])
            .into_iter()
            .next()
    });
    wait_for("the counter detached", LONG, || {
        (counter_links(pid) == 0).then_some(())
    });
}
