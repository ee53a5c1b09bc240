//! An insider on a watched host tries to hide a file export from the file sensor.
//!
//! Every attack runs against the real agent and collector: with fanotify (the tests run as root)
//! and, where the attack applies to it, with the portable `notify` backend.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(120);
const RULE: &str = "large-export-created-then-deleted";

/// A collector and an enrolled agent watching `exports/` with one file backend. The agent is
/// declared first so it is killed before the temp dir (with whatever the attack left) goes.
struct Rig {
    agent: Agent,
    collector: Collector,
    watched: PathBuf,
    tmp: tempfile::TempDir,
    /// The file sensor's `sensor.status`: its backend, queues and watched trees.
    status: Value,
}

fn rig(name: &str, backend: &str) -> Rig {
    rig_with(name, backend, |_| {})
}

/// As [`rig`], with `prepare` run on the watched tree before the agent starts.
fn rig_with(name: &str, backend: &str, prepare: impl FnOnce(&Path)) -> Rig {
    rig_in(name, backend, "", None, prepare)
}

/// As [`rig_with`], watching a tree under `parent` (the temp dir by default), with `extra` lines
/// in the agent's `[files]` section.
fn rig_in(
    name: &str,
    backend: &str,
    extra: &str,
    parent: Option<&Path>,
    prepare: impl FnOnce(&Path),
) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let watched = parent.unwrap_or(tmp.path()).join("exports");
    std::fs::create_dir(&watched).unwrap();
    let watched = watched.canonicalize().unwrap();
    prepare(&watched);
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, name);
    let config = tmp.path().join("agent.toml");
    private_file(
        &config,
        &format!(
            "[files]\nwatch = [{:?}]\nbackend = {backend:?}\n{extra}",
            watched.display().to_string()
        ),
    );
    let agent = Agent::start(&state, &["--config", config.to_str().unwrap()]);
    let mut rig = Rig {
        agent,
        collector,
        watched,
        tmp,
        status: Value::Null,
    };
    rig.status = rig.wait_event("the file sensor's status", |e| {
        e["kind"] == "sensor.status" && e["sensor"] == "files"
    });
    assert!(
        rig.status["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{backend}:")),
        "{}",
        rig.status
    );
    rig
}

impl Rig {
    fn events(&self) -> Vec<Value> {
        self.collector.events(&[])
    }

    fn wait_event(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, LONG, || {
            self.events().into_iter().find(|e| matches(e))
        })
    }

    fn wait_alert(&self, path: &str) -> Value {
        wait_for(&format!("the {RULE} alert on {path}"), LONG, || {
            alerts_json(&self.collector.dir, &["--rule", RULE])
                .into_iter()
                .find(|a| a["path"] == path)
        })
    }

    fn agent_pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.agent.proc.child.id() as i32)
    }
}

/// Writes a CSV of about `mib` MiB with personal-data-like columns, from a child process.
fn write_csv(path: &Path, mib: usize) {
    let rows = mib * 1024 * 1024 / 48;
    let status = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sys\nf = open(sys.argv[1].encode('utf-8', 'surrogateescape'), 'w')\n\
             f.write('id,name,email,phone\\n')\nfor i in range({rows}):\n    \
             f.write(f'{{i}},name{{i:07d}},user{{i:07d}}@example.jp,090-{{i%10000:04d}}-5678\\n')\nf.close()"
        ))
        .arg(path.as_os_str())
        .status()
        .unwrap();
    assert!(status.success());
}

fn python(script: &str, dir: &Path) {
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "python failed: {script}");
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Waits until the collector holds a create or write of `path` with its full size.
fn wait_written(rig: &Rig, path: &str, size: u64) -> Value {
    rig.wait_event(&format!("the write of {path} ({size} bytes)"), |e| {
        (e["kind"] == "file.write" || e["kind"] == "file.create")
            && e["path"] == path
            && e["size"] == size
    })
}

// ---------------------------------------------------------------------------------------------
// Overflow hides a delete.

fn an_overflow_does_not_hide_the_delete_of_an_export(backend: &str) {
    // The flood happens on a filesystem of its own: the fanotify groups of other tests' agents
    // mark their whole filesystem, and its 160,000 events could overflow their queues too.
    let fs = Tmpfs::mount("256m");
    // The kernel's own queue length: what overflows is the subject here, not how long the queue
    // is, and the agent's longer one would take a debug build minutes to read before it.
    let rig = rig_in(
        &format!("overflow-{backend}"),
        backend,
        "kernel_queue = 16384\n",
        Some(fs.path()),
        |_| {},
    );
    let export = rig.watched.join("customers.csv");
    write_csv(&export, 17);
    let size = size_of(&export);
    let path = export.display().to_string();
    let written = wait_written(&rig, &path, size);
    assert!(
        written["export"]["emails"].as_u64().unwrap() > 0,
        "{written}"
    );

    // The flood's directory is watched before the agent is frozen (inotify watches directories
    // one by one); then 160,000 mknods fill the kernel queue far past its 16,384 events and the
    // export is deleted: that delete is lost in the kernel.
    let flood = rig.watched.join("flood");
    std::fs::create_dir(&flood).unwrap();
    let ready = flood.join("ready");
    std::fs::write(&ready, "1").unwrap();
    let ready_path = ready.display().to_string();
    rig.wait_event("the flood directory watched", |e| {
        e["path"] == ready_path.as_str()
    });
    let pid = rig.agent_pid();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    python(
        "import os\nfor i in range(160000):\n    os.mknod(f'flood/n{i}')\n",
        &rig.watched,
    );
    std::fs::remove_file(&export).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();

    let overflow = rig.wait_event("the overflow", |e| {
        e["kind"] == "sensor.overflow" && e["sensor"] == "files"
    });
    assert_eq!(overflow["count"], "unknown", "{overflow}");
    let deleted = rig.wait_event("the delete found by the rescan", |e| {
        e["kind"] == "file.delete" && e["path"] == path.as_str()
    });
    assert_eq!(deleted["rescan"], true, "{deleted}");
    assert_eq!(deleted["size"], size, "{deleted}");
    assert_eq!(deleted["export"], written["export"], "{deleted}");
    let alert = rig.wait_alert(&path);
    assert_eq!(alert["size"], size, "{alert}");
    assert_eq!(alert["emails"], written["export"]["emails"], "{alert}");
}

/// Creates stored at the collector under `dir`, counted in its database.
fn stored_creates(rig: &Rig, dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        rig.collector.dir.join("bannin.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM events WHERE kind = 'file.create' AND path LIKE ?1",
        [format!("{}/%", dir.display())],
        |row| row.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// A burst the agent cannot keep up with waits, in its kernel queues and for its spool: 40,000
/// files made while the agent is stopped, more than the kernel's default queue of 16,384 events,
/// read by a sensor whose queue to the spool holds 64, all arrive and nothing overflows.
#[test]
fn a_burst_past_the_kernels_default_queue_waits_for_the_agent_fanotify() {
    const FILES: u64 = 40_000;
    // Its own filesystem, as for the flood above: other tests' agents mark theirs.
    let fs = Tmpfs::mount("64m");
    let rig = rig_in(
        "burst-queue",
        "fanotify",
        "queue_capacity = 64\n",
        Some(fs.path()),
        |_| {},
    );
    assert!(
        rig.status["message"]
            .as_str()
            .unwrap()
            .contains("kernel queues of 131072 events"),
        "{}",
        rig.status
    );
    let burst = rig.watched.join("burst");
    std::fs::create_dir(&burst).unwrap();
    let pid = rig.agent_pid();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    python(
        &format!("import os\nfor i in range({FILES}):\n    os.mknod(f'burst/n{{i}}')\n"),
        &rig.watched,
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut stored = 0;
    let all = poll(Duration::from_secs(180), || {
        stored = stored_creates(&rig, &burst);
        (stored >= FILES).then_some(())
    });
    let overflows: Vec<Value> = rig
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "sensor.overflow" && e["sensor"] == "files")
        .collect();
    assert!(
        all.is_some(),
        "{stored} of {FILES} creates stored; overflows: {overflows:?}\n{}",
        rig.agent.proc.log()
    );
    assert!(overflows.is_empty(), "{overflows:?}");
}

#[test]
fn an_overflow_does_not_hide_the_delete_of_an_export_fanotify() {
    an_overflow_does_not_hide_the_delete_of_an_export("fanotify");
}

#[test]
fn an_overflow_does_not_hide_the_delete_of_an_export_notify() {
    an_overflow_does_not_hide_the_delete_of_an_export("notify");
}

// ---------------------------------------------------------------------------------------------
// SIGBUS from its own spool.

/// Whether process `pid` holds a POSIX lock on `path`, from /proc/locks. The kernel prints that
/// file a page at a time and a busy machine's list changes between pages, so one reading may
/// miss a line: only three readings without it count as not held (a lost lock stays lost).
fn holds_lock(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).unwrap().ino().to_string();
    let pid = pid.to_string();
    (0..3).any(|attempt| {
        if attempt > 0 {
            #[expect(
                clippy::disallowed_methods,
                reason = "readings spaced apart so a busy list settles; not a barrier"
            )]
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|line| {
                // "1: POSIX  ADVISORY  READ 4242 fd:00:1234 128 128"
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() >= 6
                    && fields[1] == "POSIX"
                    && fields[4] == pid
                    && fields[5].rsplit(':').next() == Some(inode.as_str())
            })
    })
}

/// Reads the spool with the sqlite3 shell `rounds` times while the agent runs. Every reader
/// opens and closes the spool's files for writing, which hands a fanotify agent a descriptor on
/// each; closing it would drop the agent's own SQLite locks (visible in /proc/locks), after which
/// a reader truncates the shared-memory file the agent has mapped and the agent dies of SIGBUS.
fn read_the_spool(agent: &mut Agent, rounds: usize) {
    let spool = agent.state_dir.join("spool.db");
    let shm = agent.state_dir.join("spool.db-shm");
    let pid = agent.proc.child.id();
    wait_for("the agent's lock on its spool", LONG, || {
        (shm.exists() && holds_lock(pid, &shm)).then_some(())
    });
    for round in 0..rounds {
        let output = run_output(
            Command::new("sqlite3")
                .arg(&spool)
                .arg("select count(*) from sqlite_master;"),
        );
        if let Ok(Some(status)) = agent.proc.child.try_wait() {
            panic!(
                "the agent died ({status:?}) after {round} spool reads ({}):\n{}",
                String::from_utf8_lossy(&output.stderr),
                agent.proc.log()
            );
        }
        assert!(
            holds_lock(pid, &shm),
            "the agent lost its lock on its own spool after {round} reads ({}):\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string("/proc/locks").unwrap(),
            run_ok(Command::new("ls").arg("-li").arg(&agent.state_dir))
        );
    }
}

#[test]
fn reading_the_spool_with_sqlite3_while_the_agent_streams_does_not_kill_it() {
    let mut rig = rig("spool-reader", "fanotify");
    // The state directory is outside the watched tree but on the marked filesystem.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (rig.watched.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::write(dir.join(format!("f{}.txt", i % 50)), i.to_string()).unwrap();
                i += 1;
                #[expect(
                    clippy::disallowed_methods,
                    reason = "paces the writer: a steady stream of events, not a barrier"
                )]
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let reads = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_the_spool(&mut rig.agent, 300)
    }));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Err(panic) = reads {
        std::panic::resume_unwind(panic);
    }
    writer.join().unwrap();
    let marker = rig.watched.join("after-the-reads.csv");
    std::fs::write(&marker, "id\n1\n").unwrap();
    let path = marker.display().to_string();
    rig.wait_event("an event after the spool reads", |e| {
        e["path"] == path.as_str()
    });
    assert!(rig.agent.proc.child.try_wait().unwrap().is_none());
    let own = rig.agent.state_dir.display().to_string();
    let leaked: Vec<Value> = rig
        .events()
        .into_iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(&own)))
        .collect();
    assert!(
        leaked.is_empty(),
        "events about the agent's own state: {leaked:?}"
    );
}

#[test]
fn a_state_directory_inside_the_watched_tree_is_never_examined() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("exports");
    std::fs::create_dir(&watched).unwrap();
    let watched = watched.canonicalize().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = watched.join("agent-state");
    collector.enroll(&state, "state-inside");
    let config = tmp.path().join("agent.toml");
    private_file(
        &config,
        &format!(
            "[files]\nwatch = [{:?}]\nbackend = \"fanotify\"\n",
            watched.display().to_string()
        ),
    );
    let mut agent = Agent::start(&state, &["--config", config.to_str().unwrap()]);
    read_the_spool(&mut agent, 100);
    let marker = watched.join("marker.csv");
    std::fs::write(&marker, "id\n1\n").unwrap();
    let path = marker.display().to_string();
    wait_for("the marker's event", LONG, || {
        collector
            .events(&[])
            .into_iter()
            .find(|e| e["path"] == path.as_str())
    });
    let own = state.display().to_string();
    let leaked: Vec<Value> = collector
        .events(&[])
        .into_iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(&own)))
        .collect();
    assert!(
        leaked.is_empty(),
        "events about the agent's own state: {leaked:?}"
    );
    assert!(agent.proc.child.try_wait().unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// Non-UTF-8 names.

fn distinct_byte_names_keep_distinct_paths(backend: &str) {
    let rig = rig(&format!("bytes-{backend}"), backend);
    let big = rig.watched.join(OsStr::from_bytes(b"exp_\xff.csv"));
    let decoy = rig.watched.join(OsStr::from_bytes(b"exp_\xfe.csv"));
    // Spelled in ASCII the way the agent escapes the byte 0xff: it must not collide either.
    let literal = rig.watched.join("exp_\\xff.csv");
    write_csv(&big, 17);
    std::fs::write(&decoy, "a,b\n").unwrap();
    std::fs::write(&literal, "a,b\n").unwrap();
    let base = rig.watched.display().to_string();
    let big_path = format!("{base}/exp_\\xff.csv");
    let decoy_path = format!("{base}/exp_\\xfe.csv");
    let literal_path = format!("{base}/exp_\\\\xff.csv");
    let written = wait_written(&rig, &big_path, size_of(&big));
    assert_eq!(written["path_escaped"], true, "{written}");
    let decoy_written = wait_written(&rig, &decoy_path, 4);
    assert_eq!(decoy_written["path_escaped"], true, "{decoy_written}");
    let literal_written = wait_written(&rig, &literal_path, 4);
    assert_eq!(literal_written["path_escaped"], true, "{literal_written}");

    // Renamed once more so `from_path` is escaped too, then both are deleted.
    let moved = rig.watched.join(OsStr::from_bytes(b"exp_\xff\xfe.csv"));
    std::fs::rename(&big, &moved).unwrap();
    let moved_path = format!("{base}/exp_\\xff\\xfe.csv");
    let renamed = rig.wait_event("the rename", |e| {
        e["kind"] == "file.rename" && e["path"] == moved_path.as_str()
    });
    assert_eq!(renamed["from_path"], big_path.as_str(), "{renamed}");
    std::fs::remove_file(&decoy).unwrap();
    std::fs::remove_file(&moved).unwrap();
    let alert = rig.wait_alert(&big_path);
    assert_eq!(alert["final_path"], moved_path.as_str(), "{alert}");
    assert_eq!(alert["size"], size_of_written(&written), "{alert}");
    assert_eq!(alert["emails"], written["export"]["emails"], "{alert}");
    let decoy_deleted = rig.wait_event("the decoy's delete", |e| {
        e["kind"] == "file.delete" && e["path"] == decoy_path.as_str()
    });
    assert_eq!(decoy_deleted["size"], 4, "{decoy_deleted}");
}

fn size_of_written(event: &Value) -> u64 {
    event["size"].as_u64().unwrap()
}

#[test]
fn distinct_byte_names_keep_distinct_paths_fanotify() {
    distinct_byte_names_keep_distinct_paths("fanotify");
}

#[test]
fn distinct_byte_names_keep_distinct_paths_notify() {
    distinct_byte_names_keep_distinct_paths("notify");
}

/// An insider's long-running process (started before the agent) renames itself with bytes
/// that are not UTF-8, through `/proc/self/comm`, then writes an export. The write still names
/// it, with its account: the agent read `/proc/PID/stat` and `status` as text, which such a name
/// made unreadable, so the process went unnamed.
#[test]
fn a_process_renamed_to_bytes_that_are_not_utf8_is_still_named() {
    use std::io::{BufRead, Write};
    let mut insider = None;
    let rig = rig_with("comm-bytes", "fanotify", |watched| {
        let mut child = Command::new("perl")
            .arg("-e")
            .arg(
                r#"$| = 1; open(my $c, ">", "/proc/self/comm") or die; print $c "\xff\xfe"; close $c;
                   print "renamed\n"; <STDIN>;
                   open(my $f, ">", "dump.csv") or die; print $f "id,email\n1,a\@example.jp\n"; close $f;
                   print "written\n"; <STDIN>"#,
            )
            .current_dir(watched)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut said).unwrap();
        assert_eq!(said, "renamed\n");
        insider = Some((child, out));
    });
    let (mut child, mut out) = insider.unwrap();
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"\n").unwrap();
    let mut said = String::new();
    out.read_line(&mut said).unwrap();
    assert_eq!(said, "written\n");
    let path = rig.watched.join("dump.csv").display().to_string();
    let written = rig.wait_event("the insider's write", |e| {
        e["kind"] == "file.write" && e["path"] == path.as_str()
    });
    assert_eq!(written["pid"], child.id(), "{written}");
    let perl = std::fs::canonicalize("/usr/bin/perl").unwrap();
    assert_eq!(written["exe"], perl.to_str().unwrap(), "{written}");
    assert_eq!(written["user"], "root", "{written}");
    assert_eq!(written["uid"], 0, "{written}");
    let _ = child.stdin.take().map(|mut stdin| stdin.write_all(b"\n"));
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// The portable backend leaves its scope.

/// The inotify watches a process holds, from its descriptors' fdinfo.
fn inotify_watches(pid: u32) -> usize {
    let mut watches = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            watches += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    watches
}

#[test]
fn symlinks_never_lead_the_notify_backend_out_of_its_tree() {
    let rig = rig_with("symlinks", "notify", |watched| {
        std::fs::create_dir(watched.join("sub")).unwrap();
        std::os::unix::fs::symlink("/usr", watched.join("link")).unwrap();
        std::os::unix::fs::symlink("..", watched.join("sub/up")).unwrap();
    });
    // Planted while the agent runs: a loop back to the parent holding the collector's data.
    std::os::unix::fs::symlink("..", rig.watched.join("loop")).unwrap();
    std::os::unix::fs::symlink("/usr/share", rig.watched.join("sub/share")).unwrap();
    let marker = rig.watched.join("marker.csv");
    std::fs::write(&marker, "id\n1\n").unwrap();
    let marker_path = marker.display().to_string();
    rig.wait_event("the marker's event", |e| e["path"] == marker_path.as_str());

    let watches = inotify_watches(rig.agent.proc.child.id());
    assert!(watches <= 4, "the agent holds {watches} inotify watches");
    let base = rig.watched.display().to_string();
    let collector_dir = rig.tmp.path().join("collector").display().to_string();
    let outside: Vec<Value> = rig
        .events()
        .into_iter()
        .filter(|e| {
            e["path"].as_str().is_some_and(|p| {
                ["link/", "loop/", "sub/up/", "sub/share/"]
                    .iter()
                    .any(|below| p.starts_with(&format!("{base}/{below}")))
                    || p.starts_with(&collector_dir)
                    || !p.starts_with(&base)
            })
        })
        .collect();
    assert!(outside.is_empty(), "events outside the tree: {outside:?}");
}

// ---------------------------------------------------------------------------------------------
// Deep paths.

/// A Python prelude that walks down `levels` directories of 200-byte names (making them).
fn descend(levels: usize) -> String {
    format!(
        "import os\nname = 'd' * 200\nfor _ in range({levels}):\n    os.makedirs(name, exist_ok=True)\n    os.chdir(name)\n"
    )
}

#[test]
fn a_file_deeper_than_path_max_is_reported_with_its_full_path() {
    let rig = rig("deep", "fanotify");
    // 24 levels of 200 bytes: some 4,850 bytes, more than PATH_MAX (4096) takes.
    let levels = 24;
    let rows = 17 * 1024 * 1024 / 48;
    python(
        &format!(
            "{}f = open('customers.csv', 'w')\nf.write('id,name,email,phone\\n')\n\
             for i in range({rows}):\n    \
             f.write(f'{{i}},name{{i:07d}},user{{i:07d}}@example.jp,090-{{i%10000:04d}}-5678\\n')\n\
             f.close()\n",
            descend(levels)
        ),
        &rig.watched,
    );
    let deep_dir = format!(
        "{}/{}",
        rig.watched.display(),
        vec!["d".repeat(200); levels].join("/")
    );
    assert!(deep_dir.len() > 4096);
    let path = format!("{deep_dir}/customers.csv");
    let written = rig.wait_event("the deep export's write", |e| {
        e["kind"] == "file.write" && e["path"] == path.as_str()
    });
    let size = written["size"].as_u64().unwrap();
    assert!(size > 17_000_000, "{written}");
    assert!(
        written["export"]["emails"].as_u64().unwrap() > 0,
        "{written}"
    );
    python(
        &format!("{}os.remove('customers.csv')\n", descend(levels)),
        &rig.watched,
    );
    let deleted = rig.wait_event("the deep export's delete", |e| {
        e["kind"] == "file.delete" && e["path"] == path.as_str()
    });
    assert_eq!(deleted["size"], size, "{deleted}");
    let alert = rig.wait_alert(&path);
    assert_eq!(alert["size"], size, "{alert}");
}

// ---------------------------------------------------------------------------------------------
// Rename-over, RENAME_EXCHANGE, hard-link-then-delete.

/// A 17 MiB export and a 4-byte decoy, both seen by the agent.
fn export_and_decoy(rig: &Rig) -> (PathBuf, PathBuf, Value) {
    let export = rig.watched.join("customers.csv");
    let decoy = rig.watched.join("notes.csv");
    write_csv(&export, 17);
    std::fs::write(&decoy, "a,b\n").unwrap();
    let written = wait_written(rig, &export.display().to_string(), size_of(&export));
    wait_written(rig, &decoy.display().to_string(), 4);
    (export, decoy, written)
}

fn a_rename_over_an_export_says_what_it_replaced(backend: &str) {
    let rig = rig(&format!("replace-{backend}"), backend);
    let (export, decoy, written) = export_and_decoy(&rig);
    std::fs::rename(&decoy, &export).unwrap();
    let path = export.display().to_string();
    let renamed = rig.wait_event("the rename over the export", |e| {
        e["kind"] == "file.rename" && e["path"] == path.as_str()
    });
    assert_eq!(
        renamed["from_path"],
        decoy.display().to_string(),
        "{renamed}"
    );
    assert_eq!(renamed["size"], 4, "{renamed}");
    assert_eq!(renamed["replaced_size"], written["size"], "{renamed}");
    assert_eq!(renamed["replaced_export"], written["export"], "{renamed}");
    assert!(
        renamed.get("export").is_none_or(|e| e["emails"] == 0),
        "{renamed}"
    );
    // The decoy now at the export's name must not inherit its size: deleting it says 4 bytes.
    std::fs::remove_file(&export).unwrap();
    let deleted = rig.wait_event("the delete of the decoy", |e| {
        e["kind"] == "file.delete" && e["path"] == path.as_str()
    });
    assert_eq!(deleted["size"], 4, "{deleted}");
}

#[test]
fn a_rename_over_an_export_says_what_it_replaced_fanotify() {
    a_rename_over_an_export_says_what_it_replaced("fanotify");
}

#[test]
fn a_rename_over_an_export_says_what_it_replaced_notify() {
    a_rename_over_an_export_says_what_it_replaced("notify");
}

#[test]
fn a_rename_exchange_is_reported_as_one_exchange() {
    let rig = rig("exchange", "fanotify");
    let (export, decoy, written) = export_and_decoy(&rig);
    python(
        &format!(
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n\
             if libc.renameat2(-100, b{:?}, -100, b{:?}, 2) != 0:\n    \
             raise OSError(ctypes.get_errno(), 'renameat2')\n",
            export.display().to_string(),
            decoy.display().to_string()
        ),
        &rig.watched,
    );
    let (export_path, decoy_path) = (export.display().to_string(), decoy.display().to_string());
    let exchanged = rig.wait_event("the exchange", |e| {
        e["kind"] == "file.rename" && e["exchange"] == true
    });
    assert_eq!(exchanged["from_path"], export_path.as_str(), "{exchanged}");
    assert_eq!(exchanged["path"], decoy_path.as_str(), "{exchanged}");
    assert_eq!(exchanged["size"], written["size"], "{exchanged}");
    assert_eq!(exchanged["export"], written["export"], "{exchanged}");
    assert_eq!(exchanged["replaced_size"], 4, "{exchanged}");
    // The remembered sizes swapped too: deleting the export's old name says 4 bytes, the
    // decoy's old name the export's size.
    std::fs::remove_file(&export).unwrap();
    std::fs::remove_file(&decoy).unwrap();
    let small = rig.wait_event("the delete at the export's old name", |e| {
        e["kind"] == "file.delete" && e["path"] == export_path.as_str()
    });
    assert_eq!(small["size"], 4, "{small}");
    let big = rig.wait_event("the delete at the decoy's old name", |e| {
        e["kind"] == "file.delete" && e["path"] == decoy_path.as_str()
    });
    assert_eq!(big["size"], written["size"], "{big}");
    let renames = rig
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "file.rename")
        .count();
    assert_eq!(renames, 1, "an exchange is one event, not two renames");
}

#[test]
fn deleting_a_hard_linked_export_says_the_file_lives_on() {
    let rig = rig("hardlink", "fanotify");
    let (export, _decoy, written) = export_and_decoy(&rig);
    let kept = rig.tmp.path().join("kept.csv");
    std::fs::hard_link(&export, &kept).unwrap();
    std::fs::remove_file(&export).unwrap();
    let path = export.display().to_string();
    let deleted = rig.wait_event("the delete of the linked export", |e| {
        e["kind"] == "file.delete" && e["path"] == path.as_str()
    });
    assert_eq!(deleted["size"], written["size"], "{deleted}");
    assert_eq!(deleted["links_left"], 1, "{deleted}");
}

/// The kernel names an open file whose last name is gone with " (deleted)" after it. A live file
/// named `customers.csv (deleted)` must not pass for the export `customers.csv`: its 4-byte write
/// would then stand as the export's size and the export's delete would go unalerted.
fn a_name_ending_in_deleted_is_not_another_file(backend: &str) {
    let rig = rig(&format!("deleted-suffix-{backend}"), backend);
    let export = rig.watched.join("customers.csv");
    write_csv(&export, 17);
    let path = export.display().to_string();
    let written = wait_written(&rig, &path, size_of(&export));
    // Made first and written later, so the write is named from its descriptor, not its create.
    let decoy = rig.watched.join("customers.csv (deleted)");
    std::fs::write(&decoy, "").unwrap();
    wait_written(&rig, &decoy.display().to_string(), 0);
    std::fs::write(&decoy, "a,b\n").unwrap();
    wait_written(&rig, &decoy.display().to_string(), 4);
    std::fs::remove_file(&export).unwrap();
    let deleted = rig.wait_event("the delete of the export", |e| {
        e["kind"] == "file.delete" && e["path"] == path.as_str()
    });
    assert_eq!(deleted["size"], written["size"], "{deleted}");
    let alert = rig.wait_alert(&path);
    assert_eq!(alert["size"], written["size"], "{alert}");
    let steered: Vec<Value> = rig
        .events()
        .into_iter()
        .filter(|e| {
            e["path"] == path.as_str() && e["kind"] == "file.write" && e["size"] != written["size"]
        })
        .collect();
    assert!(
        steered.is_empty(),
        "the decoy passed for the export: {steered:?}"
    );
}

#[test]
fn a_name_ending_in_deleted_is_not_another_file_fanotify() {
    a_name_ending_in_deleted_is_not_another_file("fanotify");
}

#[test]
fn a_name_ending_in_deleted_is_not_another_file_notify() {
    a_name_ending_in_deleted_is_not_another_file("notify");
}

/// An ordinary user may bind-mount the watched tree elsewhere in a user and mount namespace of
/// their own (`unshare -Urm`). The kernel then names the files they open through it by that
/// mount, a path that means nothing in the agent's namespace. An export made empty in the tree,
/// then written through the mount in a later round, must still be reported under its real path
/// with its size, and its delete must alert.
#[test]
fn an_export_written_through_a_private_bind_mount_is_seen() {
    if !an_ordinary_user_may_unshare() {
        return;
    }
    let rig = rig("bind-alias", "fanotify");
    use std::os::unix::fs::PermissionsExt;
    let open = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(rig.tmp.path(), 0o755);
    open(&rig.watched, 0o777);
    let alias = rig.tmp.path().join("alias");
    std::fs::create_dir(&alias).unwrap();
    let export = rig.watched.join("customers.csv");
    let path = export.display().to_string();
    let made = Command::new("runuser")
        .args(["-u", "nobody", "--", "touch"])
        .arg(&export)
        .status()
        .unwrap();
    assert!(made.success());
    wait_written(&rig, &path, 0);
    let rows = 17 * 1024 * 1024 / 48;
    let script = format!(
        "import sys\nf = open(sys.argv[1], 'w')\nf.write('id,name,email,phone\\n')\n\
         for i in range({rows}):\n    \
         f.write(f'{{i}},name{{i:07d}},user{{i:07d}}@example.jp,090-{{i%10000:04d}}-5678\\n')\n\
         f.close()"
    );
    let written = Command::new("runuser")
        .args(["-u", "nobody", "--", "unshare", "-Urm", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && exec python3 -c "$3" "$2/customers.csv""#)
        .arg("sh")
        .arg(&rig.watched)
        .arg(&alias)
        .arg(&script)
        .status()
        .unwrap();
    assert!(written.success(), "the write through the bind mount failed");
    let size = size_of(&export);
    assert!(size > 16 * 1024 * 1024);
    let write = wait_written(&rig, &path, size);
    assert_eq!(write["kind"], "file.write", "{write}");
    std::fs::remove_file(&export).unwrap();
    let alert = rig.wait_alert(&path);
    assert_eq!(alert["size"], size, "{alert}");
}

// ---------------------------------------------------------------------------------------------
// Truncation in place.

fn an_export_truncated_in_place_is_reported(backend: &str) {
    let rig = rig(&format!("truncate-{backend}"), backend);
    let (export, _decoy, written) = export_and_decoy(&rig);
    // truncate(2) by path: no descriptor is opened, so no close-after-write ever follows.
    python(
        &format!(
            "import os\nos.truncate({:?}, 0)\n",
            export.display().to_string()
        ),
        &rig.watched,
    );
    let path = export.display().to_string();
    let truncated = rig.wait_event("the truncation", |e| {
        e["kind"] == "file.write" && e["path"] == path.as_str() && e["size"] == 0
    });
    assert_eq!(truncated["inode"], written["inode"], "{truncated}");
    let alert = rig.wait_alert(&path);
    assert_eq!(alert["how"], "truncated", "{alert}");
    assert_eq!(alert["size"], written["size"], "{alert}");
}

#[test]
fn an_export_truncated_in_place_is_reported_fanotify() {
    an_export_truncated_in_place_is_reported("fanotify");
}

#[test]
fn an_export_truncated_in_place_is_reported_notify() {
    an_export_truncated_in_place_is_reported("notify");
}

// ---------------------------------------------------------------------------------------------
// A file made in a directory the moment it is made.

/// notify tells of a new directory before it adds the directory's watch: a file made in between
/// was neither in the sensor's first walk of the directory nor in any event. The sensor walks each
/// new directory again once the watch is surely in place.
#[test]
fn files_made_in_new_directories_at_once_are_all_seen_notify() {
    let rig = rig("newdirs-notify", "notify");
    python(
        "import os\nfor i in range(300):\n    os.mkdir(f'd{i}')\n    \
         open(f'd{i}/export.csv', 'w').write('id,email\\n1,a@example.jp\\n')\n",
        &rig.watched,
    );
    let expected: Vec<String> = (0..300)
        .map(|i| {
            rig.watched
                .join(format!("d{i}/export.csv"))
                .display()
                .to_string()
        })
        .collect();
    wait_for("a file event for each of the 300 files", LONG, || {
        let seen: std::collections::HashSet<String> = rig
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "file.create" || e["kind"] == "file.write")
            .filter_map(|e| e["path"].as_str().map(str::to_string))
            .collect();
        expected.iter().all(|p| seen.contains(p)).then_some(())
    });
}
