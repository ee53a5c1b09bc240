//! Feature tests of the process sensor with real child processes.

use std::process::Command;
use std::time::Duration;

use bannin::event::{Body, Event, ProcessAction, ProcessEvent, SensorStatus};
use tokio::sync::mpsc;

use super::*;
use crate::pipeline;

const PATIENCE: Duration = Duration::from_secs(15);

/// The sensor started as `agent run` starts it, with the table it feeds.
async fn spawn(
    config: ProcessConfig,
    tx: crate::pipeline::EventTx,
) -> Result<(SensorHandle, ProcessTable), ProcessError> {
    let config = config.settings().expect("a valid [process] section");
    let table = ProcessTable::from_settings(&config);
    let ctx = SensorContext {
        tx,
        state_dir: std::env::temp_dir(),
        processes: table.clone(),
    };
    super::spawn(config, &ctx)
        .await
        .map(|handle| (handle, table))
}

/// Process events as they arrive, kept so that a test can ask for them in any order.
struct Seen {
    rx: mpsc::Receiver<Event>,
    events: Vec<ProcessEvent>,
}

impl Seen {
    fn new(rx: mpsc::Receiver<Event>) -> Self {
        Seen {
            rx,
            events: Vec::new(),
        }
    }

    /// The event about `pid` with `action`, waiting for it if it has not arrived yet.
    async fn find(&mut self, pid: u32, action: ProcessAction) -> ProcessEvent {
        let wanted = |event: &ProcessEvent| event.process.pid == pid && event.action == action;
        let wait = async {
            loop {
                if let Some(found) = self.events.iter().find(|event| wanted(event)) {
                    return found.clone();
                }
                let event = self.rx.recv().await.expect("the sensor stopped");
                if let Body::Process(process) = event.body {
                    self.events.push(process);
                }
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("no {action:?} event for pid {pid}"))
    }
}

async fn status_message(rx: &mut mpsc::Receiver<Event>) -> String {
    let event = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    match event.body {
        Body::Sensor(sensor) if sensor.status == SensorStatus::Status => {
            assert_eq!(sensor.sensor, "process");
            sensor.message
        }
        other => panic!("expected the sensor's status first, got {other:?}"),
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_the_connector_sees_short_lived_children_and_their_exit_codes() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let (tx, mut rx) = pipeline::channel("test-host");
    let config = ProcessConfig {
        backend: Backend::Connector,
        ..ProcessConfig::default()
    };
    let (handle, _table) = spawn(config, tx).await.unwrap();
    assert_eq!(handle.source(), "proc_connector");
    assert!(status_message(&mut rx).await.contains("proc connector"));
    let mut seen = Seen::new(rx);

    let marker = format!("bannin-test-{}", std::process::id());
    let mut truthy = Command::new("/bin/true").arg(&marker).spawn().unwrap();
    // It waits for its input to close, so it still runs when the connector reads /proc for its
    // exec however far behind a loaded host puts that read (a process gone by then is reported
    // without its command line, as /bin/true may be).
    let mut seven = Command::new("sh")
        .args(["-c", "read -r line; exit 7", &marker])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (truthy_pid, seven_pid) = (truthy.id(), seven.id());
    truthy.wait().unwrap();

    let start = seen.find(truthy_pid, ProcessAction::Start).await;
    assert_eq!(start.source, "proc_connector");
    assert_eq!(start.process.ppid, Some(std::process::id()));
    // The exec is reported even when /bin/true was gone before /proc could be read.
    if !start.process.exe.is_empty() {
        assert!(start.process.cmdline.contains(&marker), "{start:?}");
    }
    let exit = seen.find(truthy_pid, ProcessAction::Exit).await;
    assert_eq!(exit.exit_code, Some(0));

    let start = seen.find(seven_pid, ProcessAction::Start).await;
    assert!(start.process.cmdline.contains(&marker), "{start:?}");
    assert!(start.process.exe.ends_with("sh") || start.process.exe.contains("dash"));
    assert_eq!(start.process.ancestry[0].pid, std::process::id());
    assert!(start.start_ts.is_some());
    assert!(!start.cwd.is_empty());
    drop(seven.stdin.take());
    // Not reaped yet: the zombie still holds its I/O counters when the exit is reported.
    let exit = seen.find(seven_pid, ProcessAction::Exit).await;
    seven.wait().unwrap();
    assert_eq!(exit.exit_code, Some(7));
    assert!(exit.process.cmdline.contains(&marker), "{exit:?}");
    assert!(exit.read_bytes.is_some_and(|read| read > 0), "{exit:?}");
    handle.stop().await;
}

/// As root on a kernel with BTF, "auto" runs the eBPF programs: every exec of a program gone
/// within a millisecond still carries its executable and arguments, which `/proc` no longer has.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_auto_runs_ebpf_and_every_short_lived_exec_has_its_exe() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let (tx, mut rx) = pipeline::channel("test-host");
    let (handle, _table) = spawn(ProcessConfig::default(), tx).await.unwrap();
    assert_eq!(handle.source(), "ebpf");
    assert!(status_message(&mut rx).await.contains("eBPF programs"));
    let mut seen = Seen::new(rx);

    let marker = format!("bannin-test-{}", std::process::id());
    let mut pids = Vec::new();
    for _ in 0..20 {
        let mut truthy = Command::new("/bin/true").arg(&marker).spawn().unwrap();
        pids.push(truthy.id());
        truthy.wait().unwrap();
    }
    let real = std::fs::canonicalize("/bin/true").unwrap();
    for pid in pids {
        let start = seen.find(pid, ProcessAction::Start).await;
        assert_eq!(start.source, "ebpf");
        assert_eq!(start.process.exe, real.to_string_lossy(), "{start:?}");
        assert_eq!(start.process.cmdline, format!("/bin/true {marker}"));
        assert_eq!(start.process.ancestry[0].pid, std::process::id());
        let exit = seen.find(pid, ProcessAction::Exit).await;
        assert_eq!(exit.exit_code, Some(0));
        assert_eq!(exit.process.exe, start.process.exe);
    }
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poll_backend_sees_a_process_that_lives_long_enough() {
    let (tx, mut rx) = pipeline::channel("test-host");
    let config = ProcessConfig {
        backend: Backend::Poll,
        poll_interval: Duration::from_millis(200),
        ..ProcessConfig::default()
    };
    let (handle, table) = spawn(config, tx).await.unwrap();
    assert_eq!(handle.source(), "poll");
    let status = status_message(&mut rx).await;
    assert!(status.contains("polling every 200ms"), "{status}");
    let mut seen = Seen::new(rx);

    let mut child = Command::new("sleep").arg("3").spawn().unwrap();
    let pid = child.id();
    let start = seen.find(pid, ProcessAction::Start).await;
    assert_eq!(start.source, "poll");
    assert_eq!(start.process.ppid, Some(std::process::id()));
    assert!(start.process.cmdline.contains("sleep 3"), "{start:?}");
    assert_eq!(start.process.ancestry[0].pid, std::process::id());

    child.kill().unwrap();
    child.wait().unwrap();
    let exit = seen.find(pid, ProcessAction::Exit).await;
    assert_eq!(exit.exit_code, None);
    assert!(exit.process.cmdline.contains("sleep 3"), "{exit:?}");
    // The table still answers for the process after it is gone.
    assert!(table.info(pid).unwrap().cmdline.contains("sleep 3"));
    handle.stop().await;
}

#[tokio::test]
async fn a_disabled_sensor_still_answers_from_the_table() {
    let (tx, _rx) = pipeline::channel("test-host");
    let config = ProcessConfig {
        enabled: false,
        ..ProcessConfig::default()
    };
    let (handle, table) = spawn(config, tx).await.unwrap();
    assert_eq!(handle.source(), "off");
    if cfg!(target_os = "linux") {
        assert_eq!(
            table.info(std::process::id()).unwrap().pid,
            std::process::id()
        );
    }
}

/// Benchmark: a shell runs `/bin/true` N times (default 10,000, `BANNIN_BENCH_EXECS`) as fast as it
/// can, with `BANNIN_BENCH_LOAD` busy loops (default 2) keeping the cores loaded, while observers
/// watch the same burst side by side: the eBPF backend once per ring buffer size in
/// `BANNIN_BENCH_RINGS` (bytes, comma-separated; default the configured default), the connector
/// backend (each its own sensor, table and channel) and Debian's `forkstat` (proc connector plus
/// `/proc`, as a peer tool). At least 99.9% of the execs must be reported with their executable by
/// the eBPF backend at every ring size measured. Run as root with
/// `cargo test --release --bin bannin-agent exec_burst -- --ignored --nocapture`.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run on purpose"]
async fn exec_burst() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let count = env("BANNIN_BENCH_EXECS", 10_000);
    let load = env("BANNIN_BENCH_LOAD", 2);

    let rings = crate::testing::ring_sizes(
        "BANNIN_BENCH_RINGS",
        ProcessConfig::default().ebpf_ring_buffer_bytes,
    );

    let mut observers = Vec::new();
    let backends = rings
        .iter()
        .map(|&ring| (Backend::Ebpf, ring))
        .chain([(Backend::Connector, 0)]);
    for (backend, ring) in backends {
        let (tx, mut rx) = pipeline::channel("bench-host");
        let drops = pipeline::spawn_drop_reporter(tx.clone(), Duration::from_millis(500));
        let mut config = ProcessConfig {
            backend,
            ..ProcessConfig::default()
        };
        if backend == Backend::Ebpf {
            config.ebpf_ring_buffer_bytes = ring;
        }
        let (handle, _table) = spawn(config, tx).await.unwrap();
        status_message(&mut rx).await;
        observers.push((backend, ring, handle, rx, drops));
    }
    let forkstat_out = tempfile::NamedTempFile::new().unwrap();
    let mut forkstat = Command::new("forkstat")
        .args(["-l", "-e", "exec"])
        .stdout(forkstat_out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("forkstat is installed (apt-get install forkstat)");
    // forkstat prints its header once it listens.
    crate::testing::wait_until("forkstat to listen", PATIENCE, || {
        std::fs::metadata(forkstat_out.path()).is_ok_and(|m| m.len() > 0)
    });
    let mut hogs: Vec<std::process::Child> = (0..load)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();

    let (ticks_before, _) = own_cost();
    let started = tokio::time::Instant::now();
    let mut shell = tokio::process::Command::new("sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {count} ]; do /bin/true; i=$((i+1)); done"),
        ])
        .spawn()
        .unwrap();
    let shell_pid = shell.id().unwrap();
    assert!(shell.wait().await.unwrap().success());
    let done = tokio::time::Instant::now();
    for hog in &mut hogs {
        let _ = hog.kill();
        let _ = hog.wait();
    }
    let true_exe = std::fs::canonicalize("/bin/true").unwrap();
    let true_exe = true_exe.to_string_lossy().into_owned();

    let mut ebpf_with_exe = Vec::new();
    for (backend, ring, handle, mut rx, _drops) in observers {
        // Counted, not collected by pid: ten thousand forks can wrap the pid space.
        let (mut starts, mut exits, mut with_exe, mut overflow) = (0usize, 0usize, 0usize, 0u64);
        // Whatever has not arrived five seconds after the shell finished counts as missed.
        let deadline = done + Duration::from_secs(5);
        while starts < count || exits < count {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = tokio::time::sleep_until(deadline) => None,
            };
            let Some(event) = event else { break };
            match event.body {
                Body::Process(p) if p.process.ppid == Some(shell_pid) => match p.action {
                    ProcessAction::Start => {
                        with_exe += usize::from(p.process.exe == true_exe);
                        starts += 1;
                    }
                    ProcessAction::Exit => exits += 1,
                },
                Body::Sensor(s) if s.status == SensorStatus::Overflow => overflow += s.count,
                _ => {}
            }
        }
        let ring = match backend {
            Backend::Ebpf => format!(" (ring {} KiB)", ring >> 10),
            _ => String::new(),
        };
        println!(
            "exec_burst {backend:?}{ring}: starts {starts} ({:.2}%), with exe {with_exe} \
             ({:.2}%), exits {exits}, lost (reported) {overflow}",
            starts as f64 * 100.0 / count as f64,
            with_exe as f64 * 100.0 / count as f64,
        );
        if backend == Backend::Ebpf {
            ebpf_with_exe.push((ring, with_exe));
        }
        handle.stop().await;
    }
    let _ = forkstat.kill();
    let _ = forkstat.wait();
    let lines = std::fs::read_to_string(forkstat_out.path()).unwrap();
    let forkstat_execs = lines.lines().filter(|l| l.contains(" exec ")).count();
    let forkstat_named = lines
        .lines()
        .filter(|l| l.contains(" exec ") && l.trim_end().ends_with("/bin/true"))
        .count();
    let elapsed = done - started;
    let (ticks_after, rss) = own_cost();
    println!(
        "exec_burst: {count} execs in {:.2}s ({:.0}/s) beside {load} busy loops; forkstat: \
         exec lines {forkstat_execs} (all programs), naming /bin/true {forkstat_named} ({:.2}%); \
         both sensors' CPU {:.2}s, rss {rss} kB",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        forkstat_named as f64 * 100.0 / count as f64,
        (ticks_after - ticks_before) as f64 / 100.0,
    );
    for (ring, with_exe) in ebpf_with_exe {
        assert!(
            with_exe * 1000 >= count * 999,
            "eBPF{ring}: {with_exe} of {count} execs with their executable"
        );
    }
}

/// CPU time (user + system, in clock ticks of 10ms) and resident memory (kB) of this process.
#[cfg(target_os = "linux")]
fn own_cost() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15; fields[0] is field 3.
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    (ticks, rss)
}

/// Benchmark: the process (connector) and network sensors on an idle host for
/// `BANNIN_BENCH_IDLE_SECS` (default 30), with the events drained as the spool would. Prints the
/// CPU they used (percent of one core) and the test process's resident memory. Run with
/// `cargo test --release --bin bannin-agent sensors_idle -- --ignored --nocapture`.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run on purpose"]
async fn sensors_idle() {
    let secs: u64 = std::env::var("BANNIN_BENCH_IDLE_SECS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let (tx, mut rx) = pipeline::channel("bench-host");
    let drain = tokio::spawn(async move {
        let mut events = 0u64;
        while rx.recv().await.is_some() {
            events += 1;
        }
        events
    });
    let (_before_ticks, before_rss) = own_cost();
    let (process, table) = spawn(ProcessConfig::default(), tx.clone()).await.unwrap();
    let ctx = SensorContext {
        tx,
        state_dir: std::env::temp_dir(),
        processes: table,
    };
    let net = crate::sensors::net::spawn(
        crate::sensors::net::NetConfig::default()
            .settings()
            .unwrap(),
        &ctx,
    )
    .await
    .unwrap();
    // Start-up (learning the running processes) is not idle cost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (start_ticks, _) = own_cost();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (end_ticks, end_rss) = own_cost();
    let elapsed = started.elapsed().as_secs_f64();
    process.stop().await;
    drop(net);
    drop(ctx);
    let events = drain.await.unwrap();
    println!(
        "sensors_idle: {secs}s, cpu {:.2}% of one core ({} ticks), rss {} kB (test binary alone \
         {before_rss} kB), {events} events",
        (end_ticks - start_ticks) as f64 / elapsed,
        end_ticks - start_ticks,
        end_rss,
    );
}
