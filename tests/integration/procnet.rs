//! Issue 3, processes and connections: the agent reports a process's start and exit (with its exit
//! code, command line and ancestry) and its outbound connection (with the owning process), all the
//! way into the collector.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn agent_reports_a_process_and_its_connection_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, "web1");
    let _agent = Agent::start(&state, &[]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let marker = format!("bannin-e2e-{}", std::process::id());
    // The shell itself opens the connection, waits for a line on it, then exits 3.
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}; read -r line <&3; exit 3");
    let mut child = Command::new("bash")
        .args(["-c", &script, &marker])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    let (mut accepted, _) = listener.accept().unwrap();

    let connect = wait_for("the shell's connection stored", LONG, || {
        collector
            .events(&["--kind", "net.connect"])
            .into_iter()
            .find(|e| e["remote_port"] == port && e["pid"] == pid)
    });
    assert_eq!(connect["host"], "web1");
    assert_eq!(connect["remote_addr"], "127.0.0.1");
    assert_eq!(connect["remote_scope"], "loopback");
    assert_eq!(connect["protocol"], "tcp");
    assert!(
        connect["exe"].as_str().unwrap().ends_with("bash"),
        "{connect}"
    );
    assert!(connect["local_port"].as_u64().unwrap() > 0);

    accepted.write_all(b"go\n").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    let exit = wait_for("the shell's exit stored", LONG, || {
        collector
            .events(&["--kind", "process.exit"])
            .into_iter()
            .find(|e| e["pid"] == pid)
    });
    assert_eq!(exit["exit_code"], 3);
    assert!(
        exit["cmdline"].as_str().unwrap().contains(&marker),
        "{exit}"
    );
    assert_eq!(exit["ppid"], u64::from(std::process::id()));
    // As root on a kernel with BTF, the agent runs its eBPF programs (tests/integration/ebpf.rs
    // covers the fallbacks).
    assert_eq!(exit["source"], "ebpf");

    let start = collector
        .events(&["--kind", "process.start"])
        .into_iter()
        .find(|e| e["pid"] == pid)
        .expect("the start is stored before the exit");
    assert!(
        start["cmdline"].as_str().unwrap().contains(&marker),
        "{start}"
    );
    assert_eq!(start["ancestry"][0]["pid"], u64::from(std::process::id()));
    assert_eq!(start["user"], "root");

    let status = collector
        .events(&["--kind", "sensor.status"])
        .into_iter()
        .find(|e| e["sensor"] == "process")
        .expect("the process sensor says which backend it runs");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("eBPF programs"),
        "{status}"
    );
}
