//! Issue 14, every TCP connection with its process at connect time and its bytes at close: a
//! connection still open when the agent reports it (a long upload) is reported again at its close
//! as `net.close`, naming the same process and the bytes that went each way, with either
//! backend.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ebpf::{setup, status_of};
use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);
const UPLOAD: usize = 3_000_000;

/// A python process connects to a local receiver, sends 3 MB, and keeps the connection open
/// until told to close it: its `net.connect` (without bytes) must be stored while it is still
/// open, and its `net.close` after, with at least the 3 MB and the same process.
fn a_long_upload_is_reported_open_then_at_its_close_with_its_bytes(name: &str, backend: &str) {
    let site = setup(
        name,
        &format!("[network]\nbackend = \"{backend}\"\ninterval = \"300ms\"\n"),
        None,
    );
    let status = status_of(&site.collector, "network");
    let expected = if backend == "ebpf" {
        "eBPF program"
    } else {
        "socket tables"
    };
    assert!(status.contains(expected), "{status}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let (mut accepted, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        accepted.read_to_end(&mut got).unwrap();
        got.len()
    });
    let marker = format!("bannin-upload-{}", std::process::id());
    let python = "/usr/bin/python3";
    let mut child = Command::new(python)
        .arg("-c")
        .arg(
            "import socket, sys\n\
             s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
             s.sendall(b'x' * int(sys.argv[2]))\n\
             print(s.getsockname()[1], flush=True)\n\
             sys.stdin.readline()\n\
             s.close()\n",
        )
        .arg(port.to_string())
        .arg(UPLOAD.to_string())
        .arg(&marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let local_port: u64 = line.trim().parse().unwrap();
    let ours = |e: &serde_json::Value| e["remote_port"] == port && e["local_port"] == local_port;

    let connect = wait_for("the upload's net.connect while it is open", LONG, || {
        site.collector
            .events(&["--kind", "net.connect"])
            .into_iter()
            .find(|e| ours(e))
    });
    assert_eq!(connect["pid"], pid, "{connect}");
    assert!(connect.get("bytes_sent").is_none(), "{connect}");
    assert!(
        site.collector
            .events(&["--kind", "net.close"])
            .iter()
            .all(|e| !ours(e)),
        "no close before the connection closed"
    );

    child.stdin.take().unwrap().write_all(b"close\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(receiver.join().unwrap(), UPLOAD);
    let close = wait_for("the upload's net.close", LONG, || {
        site.collector
            .events(&["--kind", "net.close"])
            .into_iter()
            .find(|e| ours(e))
    });
    assert_eq!(close["kind"], "net.close");
    assert_eq!(close["pid"], pid, "{close}");
    let real = std::fs::canonicalize(python).unwrap();
    assert_eq!(close["exe"], real.to_str().unwrap(), "{close}");
    assert!(
        close["cmdline"].as_str().unwrap().contains(&marker),
        "{close}"
    );
    assert_eq!(close["protocol"], "tcp");
    assert_eq!(close["remote_addr"], "127.0.0.1");
    // The kernel also counts the SYN and the FIN, one each.
    let sent = close["bytes_sent"].as_u64().unwrap();
    assert!(
        (UPLOAD as u64..=UPLOAD as u64 + 2).contains(&sent),
        "{close}"
    );
    assert!(close["bytes_received"].as_u64().is_some(), "{close}");
    assert!(close["seq"].as_u64() > connect["seq"].as_u64());

    // One of each: the close is not taken for a connection of its own.
    let connects = site
        .collector
        .events(&["--kind", "net.*"])
        .into_iter()
        .filter(|e| ours(e))
        .count();
    assert_eq!(connects, 2);
}

#[test]
fn a_long_upload_is_reported_open_then_at_its_close_with_its_bytes_ebpf() {
    a_long_upload_is_reported_open_then_at_its_close_with_its_bytes("close1", "ebpf");
}

#[test]
fn a_long_upload_is_reported_open_then_at_its_close_with_its_bytes_sock_diag() {
    a_long_upload_is_reported_open_then_at_its_close_with_its_bytes("close2", "sock_diag");
}
