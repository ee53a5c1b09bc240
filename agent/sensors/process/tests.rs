//! Feature tests of the process sensor with real child processes.

use std::process::Command;
use std::time::Duration;

use bannin::event::{Body, Event, ProcessAction, ProcessEvent, SensorStatus};
use tokio::sync::mpsc;

use super::*;
use crate::pipeline;

const PATIENCE: Duration = Duration::from_secs(15);

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
    let (handle, _table) = spawn(ProcessConfig::default(), tx).await.unwrap();
    assert_eq!(handle.source(), "proc_connector");
    assert!(status_message(&mut rx).await.contains("proc connector"));
    let mut seen = Seen::new(rx);

    let marker = format!("bannin-test-{}", std::process::id());
    let mut truthy = Command::new("/bin/true").arg(&marker).spawn().unwrap();
    let mut seven = Command::new("sh")
        .args(["-c", "sleep 0.2; exit 7", &marker])
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
    // Not reaped yet: the zombie still holds its I/O counters when the exit is reported.
    let exit = seen.find(seven_pid, ProcessAction::Exit).await;
    seven.wait().unwrap();
    assert_eq!(exit.exit_code, Some(7));
    assert!(exit.process.cmdline.contains(&marker), "{exit:?}");
    assert!(exit.read_bytes.is_some_and(|read| read > 0), "{exit:?}");
    handle.shutdown().await;
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
    handle.shutdown().await;
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
