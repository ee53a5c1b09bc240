//! Issue 14, every TCP connection with its process at connect time and its bytes at close: a
//! connection still open when the agent reports it (a long upload) is reported again at its close
//! as `net.close`, naming the same process and the bytes that went each way, with either
//! backend; and a kernel socket address that many short connections from different processes
//! reuse in turn names each connection's own process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::ebpf::{assert_names, setup, status_of};
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
    assert_names(&close, pid, python, &marker);
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

/// The kernel hands a freed socket's memory to the next socket at once, so sequential short
/// connections share a few socket addresses: each of 100 connections, from its own short-lived
/// shell, must be stored once and name the shell that opened it (which tells the receiver its
/// pid over the connection), never the previous owner of its socket address.
#[test]
fn sequential_short_connections_from_different_processes_each_name_their_own() {
    const COUNT: usize = 100;
    let site = setup("close3", "[network]\nbackend = \"ebpf\"\n", None);
    assert!(status_of(&site.collector, "network").contains("eBPF program"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let mut owners = std::collections::HashMap::new();
        for _ in 0..COUNT {
            let (accepted, peer) = listener.accept().unwrap();
            let mut reader = BufReader::new(accepted);
            let mut pid = String::new();
            reader.read_line(&mut pid).unwrap();
            reader.get_mut().write_all(b"ok").unwrap();
            owners.insert(u64::from(peer.port()), pid.trim().parse::<u64>().unwrap());
        }
        owners
    });
    let script = format!(
        "for i in $(seq {COUNT}); do bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; \
         echo $$ >&3; head -c 2 <&3 >/dev/null'; done"
    );
    assert!(
        Command::new("bash")
            .args(["-c", &script])
            .status()
            .unwrap()
            .success()
    );
    let owners = receiver.join().unwrap();
    assert_eq!(owners.len(), COUNT);

    let connects = wait_for("every connection stored", LONG, || {
        let connects: Vec<serde_json::Value> = site
            .collector
            .events(&["--kind", "net.connect"])
            .into_iter()
            .filter(|e| e["remote_port"] == port)
            .collect();
        (connects.len() >= COUNT).then_some(connects)
    });
    assert_eq!(connects.len(), COUNT, "each connection once");
    for connect in &connects {
        let local_port = connect["local_port"].as_u64().unwrap();
        assert_eq!(connect["pid"], owners[&local_port], "{connect}");
        assert!(
            connect["exe"].as_str().unwrap().ends_with("bash"),
            "{connect}"
        );
        assert!(connect["bytes_sent"].as_u64().is_some(), "{connect}");
    }
}
