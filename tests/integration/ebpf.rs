//! Issue 14, the eBPF sensor: execs carry the executable and arguments the kernel held at exec
//! time, TCP connections the process that opened them and their bytes, however short-lived both
//! are; when BPF cannot run (forced off, or no privilege) the proc connector, socket tables or
//! polling take over and `sensor.status` says which and why; and a flood that fills the kernel's
//! ring buffer is reported with the kernel's count of what it lost.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

/// A collector and an agent started with `agent_toml` (as root unless `as_uid` is given).
pub(crate) struct Setup {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) collector: Collector,
    _agent: Proc,
}

pub(crate) fn setup(name: &str, agent_toml: &str, as_uid: Option<u32>) -> Setup {
    setup_wrapped(name, agent_toml, as_uid, &[])
}

/// [`setup`], the agent started through `wrapper` (a command and its arguments, the agent's
/// command line after them).
fn setup_wrapped(name: &str, agent_toml: &str, as_uid: Option<u32>, wrapper: &[&str]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, name);
    let config = tmp.path().join("agent.toml");
    private_file(&config, agent_toml);
    let mut command = match wrapper {
        [] => Command::new(AGENT),
        [program, args @ ..] => {
            let mut command = Command::new(program);
            command.args(args).arg(AGENT);
            command
        }
    };
    command
        .arg("run")
        .arg("--state-dir")
        .arg(&state)
        .arg("--config")
        .arg(&config);
    if let Some(uid) = as_uid {
        use std::os::unix::process::CommandExt;
        give_to(tmp.path(), uid);
        command.uid(uid).gid(uid);
    }
    let mut agent = Proc::spawn("agent", &mut command);
    agent.wait_line("agent running", Duration::from_secs(30));
    Setup {
        tmp,
        collector,
        _agent: agent,
    }
}

/// Hands the agent's files to `uid`, and lets it through the temp directory.
fn give_to(dir: &Path, uid: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(dir.join("agent"))
        .arg(dir.join("agent.toml"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// `event` names the process `pid` running `exe` (a path that may be a link) with `marker` on its
/// command line.
pub(crate) fn assert_names(event: &serde_json::Value, pid: u64, exe: &str, marker: &str) {
    assert_eq!(event["pid"], pid, "{event}");
    let real = std::fs::canonicalize(exe).unwrap();
    assert_eq!(event["exe"], real.to_str().unwrap(), "{event}");
    assert!(
        event["cmdline"].as_str().unwrap().contains(marker),
        "{event}"
    );
}

pub(crate) fn status_of(collector: &Collector, sensor: &str) -> String {
    let status = wait_for(&format!("the {sensor} sensor's status"), LONG, || {
        collector
            .events(&["--kind", "sensor.status"])
            .into_iter()
            .find(|e| e["sensor"] == sensor)
    });
    status["message"].as_str().unwrap().to_string()
}

/// The test: a python process connects to a local listener, sends 5000 bytes, reads the
/// answer and exits, all within a few milliseconds. The stored event names python (its
/// executable and command line) and the bytes each way.
#[test]
fn a_connection_of_a_few_milliseconds_from_a_short_lived_process_names_it_and_its_bytes() {
    let site = setup("ebpf1", "", None);
    assert!(status_of(&site.collector, "network").contains("eBPF program"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut accepted, _) = listener.accept().unwrap();
        let mut got = vec![0; 5000];
        accepted.read_exact(&mut got).unwrap();
        accepted.write_all(b"ok").unwrap();
    });
    let marker = format!("bannin-ebpf-net-{}", std::process::id());
    let python = "/usr/bin/python3";
    let mut child = Command::new(python)
        .arg("-c")
        .arg(
            "import socket, sys\n\
             s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
             s.sendall(b'x' * 5000)\n\
             s.recv(2)\n\
             s.close()\n",
        )
        .arg(port.to_string())
        .arg(&marker)
        .spawn()
        .unwrap();
    let pid = u64::from(child.id());
    assert!(child.wait().unwrap().success());
    server.join().unwrap();

    let connect = wait_for("python's connection stored", LONG, || {
        site.collector
            .events(&["--kind", "net.connect"])
            .into_iter()
            .find(|e| e["remote_port"] == port)
    });
    assert_names(&connect, pid, python, &marker);
    assert_eq!(connect["user"], "root");
    // The kernel counts the SYN and the FIN in its byte counters, one each.
    let sent = connect["bytes_sent"].as_u64().unwrap();
    let received = connect["bytes_received"].as_u64().unwrap();
    assert!((5000..=5002).contains(&sent), "{connect}");
    assert!((2..=4).contains(&received), "{connect}");
    assert_eq!(connect["ancestry"][0]["pid"], u64::from(std::process::id()));
}

/// `/bin/true` is gone within a millisecond of its exec; every one of its starts still carries
/// the executable and arguments, read by the kernel at exec time.
#[test]
fn every_short_lived_exec_carries_its_executable() {
    let site = setup("ebpf2", "[network]\nenabled = false\n", None);
    assert!(status_of(&site.collector, "process").contains("eBPF programs"));
    let marker = format!("bannin-ebpf-true-{}", std::process::id());
    let mut pids = Vec::new();
    for _ in 0..50 {
        let mut child = Command::new("/bin/true").arg(&marker).spawn().unwrap();
        pids.push(u64::from(child.id()));
        child.wait().unwrap();
    }
    let starts = wait_for("50 starts stored", LONG, || {
        let starts: Vec<serde_json::Value> = site
            .collector
            .events(&["--kind", "process.start"])
            .into_iter()
            .filter(|e| pids.contains(&e["pid"].as_u64().unwrap_or(0)))
            .collect();
        (starts.len() == pids.len()).then_some(starts)
    });
    let real = std::fs::canonicalize("/bin/true").unwrap();
    for start in starts {
        assert_eq!(start["exe"], real.to_str().unwrap(), "{start}");
        assert_eq!(start["cmdline"], format!("/bin/true {marker}"), "{start}");
        assert_eq!(start["source"], "ebpf");
    }
}

/// With eBPF turned off in the configuration, the proc connector and the socket tables do the
/// work, and both sensors say so.
#[test]
fn with_ebpf_off_the_connector_and_socket_tables_still_work() {
    let site = setup(
        "ebpf3",
        "[process]\nbackend = \"connector\"\n\n[network]\nbackend = \"sock_diag\"\ninterval = \"200ms\"\n",
        None,
    );
    assert!(status_of(&site.collector, "process").contains("proc connector"));
    let network = status_of(&site.collector, "network");
    assert!(network.contains("socket tables"), "{network}");
    assert!(!network.contains("eBPF"), "{network}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port}; read -r line <&3; exit 4");
    let mut child = Command::new("bash").args(["-c", &script]).spawn().unwrap();
    let pid = u64::from(child.id());
    let (mut accepted, _) = listener.accept().unwrap();
    let connect = wait_for("the shell's connection stored", LONG, || {
        site.collector
            .events(&["--kind", "net.connect"])
            .into_iter()
            .find(|e| e["remote_port"] == port && e["pid"] == pid)
    });
    assert!(connect["exe"].as_str().unwrap().ends_with("bash"));
    accepted.write_all(b"go\n").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(4));
    let exit = wait_for("the shell's exit stored", LONG, || {
        site.collector
            .events(&["--kind", "process.exit"])
            .into_iter()
            .find(|e| e["pid"] == pid)
    });
    assert_eq!(exit["exit_code"], 4);
    assert_eq!(exit["source"], "proc_connector");
}

/// An agent without root cannot load BPF (nor hear the destruction notices): it falls back to the
/// proc connector where the kernel lets an unprivileged listener have it (as Linux 6.18 does),
/// else to polling, and to the socket tables, and says why in each sensor's status.
#[test]
fn without_root_the_agent_falls_back_and_says_why() {
    let nobody = 65_534;
    let site = setup(
        "ebpf4",
        "[process]\npoll_interval = \"200ms\"\n",
        Some(nobody),
    );
    let process = status_of(&site.collector, "process");
    assert!(process.contains("eBPF unavailable: not root"), "{process}");
    let source = if process.contains("proc connector unavailable") {
        assert!(process.contains("polling"), "{process}");
        "poll"
    } else {
        assert!(
            process.contains("from the kernel's proc connector"),
            "{process}"
        );
        "proc_connector"
    };
    let network = status_of(&site.collector, "network");
    assert!(network.contains("eBPF unavailable: not root"), "{network}");
    assert!(network.contains("socket tables"), "{network}");

    // The fallback still sees a process (one that lives long enough for polling).
    let mut child = Command::new("sleep").arg("3").spawn().unwrap();
    let pid = u64::from(child.id());
    let start = wait_for("the sleep seen", LONG, || {
        site.collector
            .events(&["--kind", "process.start"])
            .into_iter()
            .find(|e| e["pid"] == pid)
    });
    assert_eq!(start["source"], source);
    child.wait().unwrap();
    drop(site.tmp);
}

/// Root, but without the capabilities BPF needs (`CAP_BPF`, `CAP_PERFMON`, `CAP_SYS_ADMIN` taken
/// from the bounding set, as a hardened unit or container might): the kernel itself refuses the
/// programs. The agent says why in each sensor's status, in the kernel's words rather than "not
/// root", and runs on the proc connector and the socket tables, which need only `CAP_NET_ADMIN`.
#[test]
fn when_the_kernel_refuses_bpf_to_root_the_agent_falls_back_and_says_why() {
    let site = setup_wrapped(
        "ebpf6",
        "",
        None,
        &[
            "setpriv",
            "--bounding-set",
            "-bpf,-perfmon,-sys_admin",
            "--",
        ],
    );
    let process = status_of(&site.collector, "process");
    assert!(process.contains("eBPF unavailable: "), "{process}");
    assert!(!process.contains("not root"), "{process}");
    assert!(
        process.contains("from the kernel's proc connector"),
        "{process}"
    );
    let network = status_of(&site.collector, "network");
    assert!(network.contains("eBPF unavailable: "), "{network}");
    assert!(!network.contains("not root"), "{network}");
    assert!(network.contains("socket tables"), "{network}");

    // The connector still sees a short-lived process, with its exit.
    let status = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
    assert_eq!(status.code(), Some(7));
    let exit = wait_for("the shell's exit stored", LONG, || {
        site.collector
            .events(&["--kind", "process.exit"])
            .into_iter()
            .find(|e| e["exit_code"] == 7)
    });
    assert_eq!(exit["source"], "proc_connector", "{exit}");
    drop(site.tmp);
}

/// The insider's flood: execs with long arguments, from several shells at once, against a ring
/// buffer of one page. What the kernel could not hand over is reported as `sensor.overflow` with
/// the kernel's own count, never dropped in silence; what it could still carries its exe.
#[test]
fn an_exec_flood_that_fills_the_ring_buffer_is_reported_with_the_kernels_count() {
    let site = setup(
        "ebpf5",
        "[process]\nbackend = \"ebpf\"\nebpf_ring_buffer_bytes = 4096\n\n[network]\nenabled = false\n",
        None,
    );
    assert!(status_of(&site.collector, "process").contains("eBPF programs"));
    let filler = "y".repeat(3000);
    let flood = format!(
        "for i in 1 2 3 4; do (for j in $(seq 300); do /bin/true {filler}; done) & done; wait"
    );
    assert!(
        Command::new("bash")
            .args(["-c", &flood])
            .status()
            .unwrap()
            .success()
    );
    let real = std::fs::canonicalize("/bin/true").unwrap();
    // Every exec of the flood is either stored or counted lost (the count also holds forks and
    // exits): waiting for that sum fails if any went missing in silence.
    let (starts, lost) = wait_for("every exec stored or counted", LONG, || {
        let lost: u64 = site
            .collector
            .events(&["--kind", "sensor.overflow"])
            .into_iter()
            .filter(|e| e["sensor"] == "process")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        let starts: Vec<serde_json::Value> = site
            .collector
            .events(&["--kind", "process.start"])
            .into_iter()
            .filter(|e| e["cmdline"] == format!("/bin/true {filler}"))
            .collect();
        (starts.len() as u64 + lost >= 1200).then_some((starts, lost))
    });
    assert!(lost > 0, "the flood did not fill the ring buffer");
    assert!(!starts.is_empty());
    for start in &starts {
        assert_eq!(start["exe"], real.to_str().unwrap(), "{start}");
    }
}
