//! The eBPF backend: programs on the `sched_process_exec`, `sched_process_fork` and
//! `sched_process_exit` tracepoints (`agent/sensors/ebpf/bpf/process.bpf.c`) hand the agent each
//! exec with its executable, working directory and arguments as the kernel held them at that
//! moment, so a process that is gone a microsecond later is still named, and each exit with its
//! code. The records arrive through one bounded ring buffer; what found no room is counted by the
//! programs and reported as `sensor.overflow` with that count.
//!
//! One thread reads the ring buffer (the loop both eBPF sensors share) and keeps the process table
//! current; the connector backend's sender thread turns its jobs into events, and its exit
//! handling names the exited process, so both kernel-fed backends make the same events.

use std::io;

use tokio::time::Instant;

use super::connector::{Job, Sampler, exit_job, learn_running, spawn_sender};
use super::os;
use super::table::{ProcessTable, Snapshot};
use crate::pipeline::{EventTx, LossySender};
use crate::sensors::ebpf::records::{ProcessRecord, Task};
use crate::sensors::ebpf::{self, EbpfError, Gone, Loaded};
use crate::sensors::{Notice, Stop};

pub const SOURCE: &str = "ebpf";

const PROGRAMS: &[(&str, &str)] = &[
    ("process_exec", "sched_process_exec"),
    ("process_fork", "sched_process_fork"),
    ("process_exit", "sched_process_exit"),
];

/// Loads and attaches the programs: from here on the kernel records every exec and exit.
/// `ring_bytes` sizes the ring buffer (a power of two, at least a page).
pub fn open(ring_bytes: u32) -> Result<Loaded, EbpfError> {
    ebpf::load(ebpf::PROCESS_OBJECT, PROGRAMS, ring_bytes)
}

/// Starts the reader and sender threads; they stop when `stop` is set or the spool goes away.
pub fn spawn(
    mut loaded: Loaded,
    settings: super::connector::Settings,
    table: ProcessTable,
    tx: EventTx,
    stop: Stop,
) -> io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (queue, sender) = spawn_sender(&tx, table.clone(), settings.queue_capacity, SOURCE)?;
    let reader = std::thread::Builder::new()
        .name("bannin-ebpf-proc".into())
        .spawn(move || {
            // The programs are attached already: a process that starts while the table is being
            // filled is both read here and recorded by them, and the later record wins.
            learn_running(&table);
            let mut reader = Reader {
                table,
                queue,
                sampler: Sampler::new(settings.io_sample_interval),
            };
            loaded.read_until_stopped(&mut reader, &stop);
        })?;
    Ok(vec![reader, sender])
}

struct Reader {
    table: ProcessTable,
    queue: LossySender<Job>,
    sampler: Sampler,
}

impl ebpf::Reader for Reader {
    fn record(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        match ProcessRecord::decode(bytes) {
            Some(record) => self.handle(record),
            // The programs and this decoder are built together; a record neither knows is
            // counted, not guessed at.
            None => {
                self.queue.count_drop(1);
                Ok(())
            }
        }
    }

    fn due(&mut self, now: Instant) -> Result<Option<Instant>, Gone> {
        self.sampler.tick(&self.table, now);
        Ok(Some(self.sampler.due()))
    }

    fn lost(&mut self, grown: &[u64]) -> Result<(), Gone> {
        let lost: u64 = grown.iter().sum();
        let event = Notice::overflow(
            super::SENSOR,
            format!(
                "the kernel dropped {lost} process events because the eBPF ring buffer was full"
            ),
        )
        .count(lost)
        .logged();
        self.push(Job::Report(event))
    }

    fn failed(&mut self, error: io::Error) {
        let notice = Notice::error(
            super::SENSOR,
            format!("reading the eBPF ring buffer failed: {error}"),
        );
        let _ = self.push(Job::Report(notice.logged()));
    }
}

impl Reader {
    /// Hands a job to the sender thread without waiting (a full queue counts it as dropped).
    fn push(&self, job: Job) -> Result<(), Gone> {
        self.queue.push(job).map_err(|_| Gone)
    }

    fn handle(&mut self, record: ProcessRecord) -> Result<(), Gone> {
        match record {
            ProcessRecord::Exec {
                task,
                exe,
                cwd,
                args,
                args_truncated,
            } => {
                let mut cmdline = os::join_cmdline(&args);
                if args_truncated && !cmdline.ends_with("...") {
                    cmdline.push_str("...");
                }
                let snapshot = Snapshot {
                    ppid: (task.ppid != 0).then_some(task.ppid),
                    exe,
                    cmdline,
                    uid: Some(task.uid),
                    user: self.table.user_name(task.uid),
                    cwd,
                    ..task_snapshot(&task)
                };
                self.table.insert_live(snapshot.clone());
                self.push(Job::Start(snapshot))
            }
            ProcessRecord::Fork { task } => {
                self.table.record_fork(task.pid, task.ppid);
                Ok(())
            }
            ProcessRecord::Exit { task, status } => {
                // A process that was running before the programs attached and never exec'd since
                // is known from /proc or not at all; exit_job handles both.
                self.push(exit_job(&self.table, task.pid, status))
            }
        }
    }
}

/// What the kernel's task says, in the table's terms: `/proc`'s start time is `start_boottime` in
/// USER_HZ ticks, so a process recorded here is recognised when later read from `/proc`.
fn task_snapshot(task: &Task) -> Snapshot {
    let started = task.started_ns / (1_000_000_000 / os::USER_HZ);
    Snapshot {
        pid: task.pid,
        ppid: (task.ppid != 0).then_some(task.ppid),
        comm: task.comm.clone(),
        uid: Some(task.uid),
        start_ts: os::start_time(started),
        started: Some(started),
        ..Snapshot::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use bannin::event::{Body, ProcessAction};

    /// Loads the programs with the default ring buffer, or says why this machine cannot (the
    /// fallback tests cover the rest).
    fn loaded() -> Loaded {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let ring = super::super::ProcessConfig::default().ebpf_ring_buffer_bytes;
        open(ring).expect("the eBPF programs load on the test machine")
    }

    fn started() -> (
        Vec<std::thread::JoinHandle<()>>,
        tokio::sync::mpsc::Receiver<bannin::event::Event>,
        Stop,
    ) {
        let (tx, rx) = crate::pipeline::channel("test-host");
        let stop = Stop::default();
        let settings = super::super::connector::Settings {
            queue_capacity: 65_536,
            io_sample_interval: Duration::ZERO,
        };
        let table = ProcessTable::new(100_000, Duration::from_secs(60));
        let threads = spawn(loaded(), settings, table, tx, stop.clone()).unwrap();
        (threads, rx, stop)
    }

    /// A program that execs and exits within microseconds is named by its executable, arguments
    /// and exit code: they were read in the kernel, not from `/proc` after it had gone.
    #[test]
    fn a_process_gone_within_microseconds_still_has_its_exe_and_arguments() {
        let (threads, mut rx, stop) = started();
        let marker = format!("bannin-ebpf-{}", std::process::id());
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 5", &marker])
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(5));
        let mut start = None;
        let mut exit = None;
        crate::testing::wait_until("the start and exit", Duration::from_secs(20), || {
            while let Ok(event) = rx.try_recv() {
                if let Body::Process(process) = event.body
                    && process.process.cmdline.contains(&marker)
                {
                    match process.action {
                        ProcessAction::Start => start = Some(process),
                        ProcessAction::Exit => exit = Some(process),
                    }
                }
            }
            start.is_some() && exit.is_some()
        });
        let (start, exit) = (start.unwrap(), exit.unwrap());
        // /bin/sh is a link to dash; the kernel names the file actually run.
        let real = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(start.process.exe, real.to_string_lossy());
        assert_eq!(start.process.cmdline, format!("/bin/sh -c exit 5 {marker}"));
        assert_eq!(start.process.ppid, Some(std::process::id()));
        assert_eq!(
            start.cwd,
            std::env::current_dir().unwrap().to_string_lossy()
        );
        assert_eq!(start.source, SOURCE);
        assert_eq!(exit.exit_code, Some(5));
        assert_eq!(exit.process.exe, start.process.exe);
        assert!(start.start_ts.is_some());
        stop.set();
        drop(rx);
        for thread in threads {
            thread.join().unwrap();
        }
    }

    /// Nobody drains the ring buffer while a burst of execs fills it: the programs count what
    /// found no room, and the sensor reports that count.
    #[test]
    fn a_full_ring_buffer_is_reported_with_the_kernels_count() {
        let mut loaded = loaded();
        let marker = std::ffi::OsString::from("x".repeat(4000));
        // Each record carries 4 KB of arguments: the default 512 KiB holds about 120 of them.
        let mut execs = 0;
        while execs < 1000 {
            std::process::Command::new("/bin/true")
                .arg(&marker)
                .status()
                .unwrap();
            execs += 1;
        }
        let lost: u64 = loaded.new_losses().iter().sum();
        assert!(lost > 0, "nothing lost after {execs} execs");
        let mut ours = 0u64;
        while loaded.drain(|bytes| {
            if let Some(ProcessRecord::Exec { args, .. }) = ProcessRecord::decode(bytes)
                && args.len() > 4000
            {
                ours += 1;
            }
        }) > 0
        {}
        assert!(
            ours < execs,
            "all {execs} execs fit: the test did not fill the buffer"
        );
        // Every exec is a record or counted lost (the count also holds forks and exits).
        assert!(ours + lost >= execs, "{ours} records, {lost} lost");
        // The counts are what grew since the last look, not the running total; the host's other
        // processes (tests running alongside) may still lose a few records meanwhile.
        let again: u64 = loaded.new_losses().iter().sum();
        assert!(
            again < lost,
            "{again} lost again after {lost}: a total, not a growth"
        );
    }
}
