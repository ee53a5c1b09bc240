//! Feature tests of the file sensor on real files in temp dirs, with real child processes.

use std::path::{Path, PathBuf};

use bannin::event::{Body, Event, FileEvent, SensorEvent};
use tokio::sync::mpsc;
use tokio::time::{Duration, timeout};

use super::*;
use crate::pipeline;

const WAIT: Duration = Duration::from_secs(15);

fn config(dir: &Path, backend: BackendChoice) -> FilesConfig {
    FilesConfig {
        watch: vec![dir.to_path_buf()],
        backend,
        ..FilesConfig::default()
    }
}

/// The table `agent run` builds when the process sensor is off: it reads processes as events ask.
fn processes() -> ProcessTable {
    ProcessTable::from_settings(&crate::sensors::process::ProcessSettings::default())
}

async fn start(config: FilesConfig) -> (SensorHandle, mpsc::Receiver<Event>) {
    let (tx, rx) = pipeline::channel("test-host");
    let settings = config.settings().expect("a valid [files] section");
    let handle = spawn_with_table(settings, tx, processes()).await.unwrap();
    (handle, rx)
}

/// Where the tests read events: the spool's channel, or the sensor's own queue.
trait Events {
    async fn next_event(&mut self) -> Option<Event>;
}

impl Events for mpsc::Receiver<Event> {
    async fn next_event(&mut self) -> Option<Event> {
        self.recv().await
    }
}

impl Events for BatchReceiver<Event> {
    async fn next_event(&mut self) -> Option<Event> {
        self.recv().await
    }
}

/// The next event satisfying `wanted`, skipping others; fails the test after a generous deadline.
async fn next(rx: &mut impl Events, wanted: impl Fn(&Event) -> bool) -> Event {
    let found = timeout(WAIT, async {
        loop {
            let event = rx.next_event().await.expect("sensor channel closed");
            if wanted(&event) {
                return event;
            }
        }
    })
    .await;
    found.expect("the expected event never came")
}

/// Every event before the create of `marker`, which a script makes once it has done what a test
/// watches.
async fn events_until_created(rx: &mut impl Events, marker: &Path) -> Vec<Event> {
    let marker = marker.to_string_lossy().into_owned();
    let mut events = Vec::new();
    let created = timeout(WAIT, async {
        loop {
            let event = rx.next_event().await.expect("sensor channel closed");
            if event.kind() == "file.create" && event.path() == Some(marker.as_str()) {
                return;
            }
            events.push(event);
        }
    })
    .await;
    created.expect("the marker's create never came");
    events
}

fn file(event: &Event) -> &FileEvent {
    match &event.body {
        Body::File(file) => file,
        other => panic!("not a file event: {other:?}"),
    }
}

fn sensor(event: &Event) -> &SensorEvent {
    match &event.body {
        Body::Sensor(sensor) => sensor,
        other => panic!("not a sensor event: {other:?}"),
    }
}

fn is(kind: &'static str, path: &Path) -> impl Fn(&Event) -> bool {
    let path = path.to_string_lossy().into_owned();
    move |event| event.kind() == kind && event.path() == Some(path.as_str())
}

fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    (dir, canonical)
}

#[tokio::test]
async fn notify_backend_reports_create_write_rename_delete_with_sizes() {
    let (_guard, dir) = tempdir();
    let (handle, mut rx) = start(config(&dir, BackendChoice::Notify)).await;
    assert_eq!(handle.source(), "notify");
    let status = next(&mut rx, |e| e.kind() == "sensor.status").await;
    assert!(sensor(&status).message.starts_with("notify:"), "{status:?}");

    let a = dir.join("a.bin");
    std::fs::write(&a, vec![7u8; 1234]).unwrap();
    let created = next(&mut rx, is("file.create", &a)).await;
    assert!(!file(&created).process_known && file(&created).process.is_none());
    assert_eq!(file(&created).backend, "notify");
    let written = next(&mut rx, is("file.write", &a)).await;
    assert_eq!(file(&written).size, Some(1234));
    assert_eq!(file(&written).owner.as_deref(), Some("root"));
    assert!(file(&written).inode.is_some() && file(&written).mode.is_some());

    let b = dir.join("b.bin");
    std::fs::rename(&a, &b).unwrap();
    let renamed = next(&mut rx, is("file.rename", &b)).await;
    assert_eq!(
        file(&renamed).from_path.as_deref(),
        Some(a.to_str().unwrap())
    );
    assert_eq!(file(&renamed).size, Some(1234));

    std::fs::remove_file(&b).unwrap();
    let deleted = next(&mut rx, is("file.delete", &b)).await;
    assert_eq!(file(&deleted).size, Some(1234));
    assert!(!file(&deleted).incomplete);
    handle.stop().await;
}

#[tokio::test]
async fn a_file_created_and_deleted_at_once_is_still_reported() {
    let (_guard, dir) = tempdir();
    let (handle, mut rx) = start(config(&dir, BackendChoice::Notify)).await;
    let flash = dir.join("flash.csv");
    std::fs::write(&flash, b"id,email\n1,a@example.com\n").unwrap();
    std::fs::remove_file(&flash).unwrap();
    // The sensor may or may not catch the file before it goes; either way every event comes,
    // says whether it saw the file, and the delete carries the last size that was seen.
    let created = next(&mut rx, is("file.create", &flash)).await;
    let written = next(&mut rx, is("file.write", &flash)).await;
    let deleted = next(&mut rx, is("file.delete", &flash)).await;
    let (created, written, deleted) = (file(&created), file(&written), file(&deleted));
    for event in [created, written, deleted] {
        assert_eq!(event.incomplete, event.size.is_none(), "{event:?}");
    }
    assert!(
        written.incomplete || written.size == Some(25),
        "{written:?}"
    );
    assert_eq!(deleted.size, written.size.or(created.size), "{deleted:?}");
    handle.stop().await;
}

#[tokio::test]
async fn excluded_paths_are_not_reported() {
    let (_guard, dir) = tempdir();
    let mut config = config(&dir, BackendChoice::Notify);
    config.exclude = vec!["**/.git/**".into(), "**/*.swp".into()];
    let (handle, mut rx) = start(config).await;
    std::fs::create_dir(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/index"), b"x").unwrap();
    std::fs::write(dir.join("note.swp"), b"x").unwrap();
    let kept = dir.join("kept.txt");
    std::fs::write(&kept, b"x").unwrap();
    // Events arrive in order, so once the last file's create is in, the excluded ones would have
    // come before it.
    let mut seen = Vec::new();
    timeout(WAIT, async {
        loop {
            let event = rx.recv().await.unwrap();
            if let Some(path) = event.path() {
                seen.push(path.to_string());
                if event.kind() == "file.write" && path == kept.to_str().unwrap() {
                    return;
                }
            }
        }
    })
    .await
    .unwrap();
    assert!(
        seen.iter().all(|p| p.starts_with(kept.to_str().unwrap())),
        "{seen:?}"
    );
    handle.stop().await;
}

/// A CSV export of made-up customers: every row has an e-mail, a Japanese phone number, a
/// passport number and a test card number.
fn customers_csv(rows: usize) -> String {
    let mut csv = String::from("id,name,email,phone,passport,card,note\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "{i},顧客{i},user{i}@example.co.jp,090-{:04}-{:04},TK{:07},4111 1111 1111 1111,ok\n",
            i % 10_000,
            (i * 7) % 10_000,
            i
        ));
    }
    csv
}

#[tokio::test]
async fn a_csv_export_is_recognised_with_rows_and_personal_data_counted() {
    let (_guard, dir) = tempdir();
    let mut config = config(&dir, BackendChoice::Notify);
    config.sample_bytes = 8192;
    let (handle, mut rx) = start(config).await;
    let csv = customers_csv(2000);
    let export = dir.join("customers.csv");
    std::fs::write(&export, &csv).unwrap();
    let written = next(&mut rx, is("file.write", &export)).await;
    let info = file(&written).export.clone().expect("export facts");
    assert_eq!(info.class, "data");
    assert_eq!(info.format, "csv");
    assert_eq!(info.sampled_bytes, 8192);
    let sample = &csv.as_bytes()[..8192];
    let full_lines = sample.iter().filter(|&&b| b == b'\n').count() as u64;
    // Every complete row in the sample has one of each; the cut last row may add a partial one.
    for count in [info.emails, info.phones, info.passports, info.cards] {
        assert!(count == full_lines - 1 || count == full_lines, "{info:?}");
    }
    let rows = info.est_rows.unwrap();
    // Early rows are shorter (smaller ids), so the head sample overestimates a little.
    assert!(
        (1800..=2200).contains(&rows),
        "estimated {rows} rows of 2001"
    );

    // An archive is recognised by its content whatever its name.
    let disguised = dir.join("holiday.jpg");
    std::fs::write(&disguised, b"PK\x03\x04\x14\x00\x00\x00rest of a zip").unwrap();
    let written = next(&mut rx, is("file.write", &disguised)).await;
    let info = file(&written).export.clone().expect("archive facts");
    assert_eq!(
        (info.class.as_str(), info.format.as_str()),
        ("archive", "zip")
    );

    let plain = dir.join("main.rs");
    std::fs::write(&plain, b"fn main() {}").unwrap();
    let written = next(&mut rx, is("file.write", &plain)).await;
    assert!(file(&written).export.is_none());
    handle.stop().await;
}

#[tokio::test]
async fn without_fanotify_the_status_says_reads_of_exports_cannot_be_seen() {
    let (_guard, dir) = tempdir();
    let (handle, mut rx) = start(config(&dir, BackendChoice::Notify)).await;
    let status = next(&mut rx, |e| e.kind() == "sensor.status").await;
    assert!(
        sensor(&status)
            .message
            .contains("; reads of exports cannot be seen: watching reads needs the fanotify backend (root on Linux); watching ["),
        "{status:?}"
    );
    // A large export read by another process is not reported: the next event after the read
    // is the barrier's write.
    let export = dir.join("big.csv");
    std::fs::write(&export, vec![b'a'; 11 * 1024 * 1024]).unwrap();
    next(&mut rx, is("file.write", &export)).await;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("cat big.csv > /dev/null && echo done > barrier")
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let after = next(&mut rx, |e| e.path().is_some()).await;
    assert_eq!(after.path(), dir.join("barrier").to_str(), "{after:?}");
    handle.stop().await;
}

#[tokio::test]
async fn a_missing_root_is_reported_and_the_others_still_watched() {
    let (_guard, dir) = tempdir();
    let mut config = config(&dir, BackendChoice::Notify);
    config.watch.insert(0, dir.join("does-not-exist"));
    let (handle, mut rx) = start(config).await;
    let error = next(&mut rx, |e| e.kind() == "sensor.error").await;
    assert!(sensor(&error).path.ends_with("does-not-exist"), "{error:?}");
    let f = dir.join("f");
    std::fs::write(&f, b"x").unwrap();
    next(&mut rx, is("file.write", &f)).await;
    handle.stop().await;
}

#[tokio::test]
async fn an_overflow_is_reported_and_the_rescan_keeps_sizes_for_later_deletes() {
    let (_guard, dir) = tempdir();
    let old = dir.join("old.csv");
    std::fs::write(&old, vec![b'x'; 777]).unwrap();
    let config = FilesConfig {
        watch: vec![dir.clone()],
        scan_min_size: 0,
        ..FilesConfig::default()
    };
    let config = config.settings().unwrap();
    let (scope, _) = observe::Scope::new(&config).unwrap();
    let (tx, _spool) = pipeline::channel("h");
    let (out, mut rx) = pipeline::waiting_batches(16);
    let mut observer = Observer::new("notify", scope, &config, processes(), out, tx);
    // The kernel said it lost events, which the translation turns into an overflow action.
    let mut translator = notify_backend::Translator::default();
    let overflow =
        notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan);
    let actions = translator.translate(Ok(overflow));
    assert_eq!(actions, vec![notify_backend::Action::Overflow]);
    observer.overflow("queue overflowed", None);
    let reported = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(reported.kind(), "sensor.overflow");
    assert!(sensor(&reported).count_unknown);
    assert_eq!(serde_json::to_value(&reported).unwrap()["count"], "unknown");
    let recovered = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(recovered.kind(), "sensor.recovered");
    assert_eq!(sensor(&recovered).count, 1);
    std::fs::remove_file(&old).unwrap();
    observer.deleted(&old, None);
    let deleted = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(file(&deleted).size, Some(777));
}

/// A full queue to the spool makes the reader wait, dropping nothing: the kernel's queue holds
/// what comes meanwhile, and its own overflow is the one that is followed by a rescan.
#[tokio::test]
async fn a_full_sensor_queue_makes_the_reader_wait_and_drops_nothing() {
    let (_guard, dir) = tempdir();
    let config = FilesConfig {
        watch: vec![dir.clone()],
        ..FilesConfig::default()
    };
    let config = config.settings().unwrap();
    let (scope, _) = observe::Scope::new(&config).unwrap();
    let (tx, mut spool) = pipeline::channel("h");
    let reporter = pipeline::spawn_drop_reporter(tx.clone(), Duration::from_millis(10));
    let tx = tx.for_sensor("files");
    let (out, mut rx) = pipeline::waiting_batches(1);
    let mut observer = Observer::new("notify", scope, &config, processes(), out, tx);
    let names: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("x{i}"))).collect();
    let reader = {
        let names = names.clone();
        std::thread::spawn(move || {
            for name in &names {
                observer.deleted(name, None);
            }
        })
    };
    for name in &names {
        let event = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(file(&event).path, name.display().to_string());
    }
    // The reader ends once its last event is queued.
    timeout(WAIT, tokio::task::spawn_blocking(move || reader.join()))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A stopping reporter reports every drop counted: there was none.
    reporter.stop().await;
    assert!(spool.try_recv().is_err());
}

/// A start-up that hands over more events than the sensor's queue holds (its status, and an
/// error for each root it cannot watch) ends: the queue is read from the start, so its wait for
/// room ends too.
#[tokio::test]
async fn a_start_up_with_more_notices_than_the_queue_holds_ends() {
    let (_guard, dir) = tempdir();
    let config = FilesConfig {
        watch: vec![
            dir.clone(),
            dir.join("gone1"),
            dir.join("gone2"),
            dir.join("gone3"),
        ],
        queue_capacity: 1,
        backend: BackendChoice::Notify,
        ..FilesConfig::default()
    };
    let (handle, mut rx) = timeout(WAIT, start(config))
        .await
        .expect("the start-up ends");
    let (mut statuses, mut errors) = (0, 0);
    while statuses < 1 || errors < 3 {
        let event = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        match event.kind() {
            "sensor.status" => statuses += 1,
            "sensor.error" => errors += 1,
            _ => {}
        }
    }
    handle.stop().await;
}

/// A pid no Linux process can have (pids stay below `PID_MAX_LIMIT`, 2^22), so that only what a
/// test tells the table is known about it.
const UNBORN: u32 = (1 << 22) + 42;

/// An observer whose process table knows [`UNBORN`] only once [`learn_unborn`] tells it, as the
/// table knows a short-lived process only once the process sensor has recorded its exec.
fn late_observer(dir: &Path) -> (Observer, BatchReceiver<Event>, ProcessTable) {
    let config = FilesConfig {
        watch: vec![dir.to_path_buf()],
        ..FilesConfig::default()
    };
    let config = config.settings().unwrap();
    let (scope, _) = observe::Scope::new(&config).unwrap();
    let (tx, _spool) = pipeline::channel("h");
    let (out, rx) = pipeline::waiting_batches(16);
    let table = processes();
    let observer = Observer::new("fanotify", scope, &config, table.clone(), out, tx);
    (observer, rx, table)
}

fn learn_unborn(table: &ProcessTable) {
    table.insert_live(crate::sensors::process::Snapshot {
        pid: UNBORN,
        exe: "/usr/bin/rm".into(),
        cmdline: "rm first".into(),
        ..Default::default()
    });
}

#[tokio::test(start_paused = true)]
async fn an_event_waits_briefly_for_its_process_to_become_known_keeping_order() {
    let (_guard, dir) = tempdir();
    let (mut observer, mut rx, table) = late_observer(&dir);
    observer.deleted(&dir.join("first"), Some(UNBORN));
    observer.deleted(&dir.join("second"), None);
    assert!(
        rx.try_recv().is_err(),
        "nothing goes out before the first is known"
    );
    assert!(observer.waiting());
    learn_unborn(&table);
    observer.pump();
    let first = rx.try_recv().unwrap();
    assert_eq!(first.path(), dir.join("first").to_str());
    assert_eq!(file(&first).process.as_ref().unwrap().exe, "/usr/bin/rm");
    assert_eq!(rx.try_recv().unwrap().path(), dir.join("second").to_str());
    assert!(!observer.waiting());
}

#[tokio::test(start_paused = true)]
async fn an_event_whose_process_never_turns_up_goes_out_with_the_pid_alone() {
    let (_guard, dir) = tempdir();
    let (mut observer, mut rx, _table) = late_observer(&dir);
    observer.deleted(&dir.join("gone"), Some(UNBORN));
    tokio::time::advance(Duration::from_millis(100)).await;
    observer.pump();
    assert!(rx.try_recv().is_err());
    tokio::time::advance(Duration::from_millis(200)).await;
    observer.pump();
    let event = rx.try_recv().unwrap();
    let event = file(&event);
    assert!(event.process_known);
    assert_eq!(event.process.as_ref().unwrap().pid, UNBORN);
    assert_eq!(event.process.as_ref().unwrap().exe, "");
}

#[cfg(target_os = "linux")]
mod as_root {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    /// Runs a shell script in `dir` that waits on its stdin before exiting, so it is still alive
    /// when the sensor looks it up.
    struct Script {
        child: std::process::Child,
    }

    impl Script {
        fn run(dir: &Path, script: &str) -> Script {
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!("{script}; read _"))
                .current_dir(dir)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            Script { child }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            if let Some(stdin) = self.child.stdin.as_mut() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn exe_of(path: &str) -> String {
        std::fs::canonicalize(path)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// An insider's process renames itself with bytes that are not UTF-8 (through
    /// `/proc/self/comm`) before it writes: it is still named behind the write. (Its `stat` was
    /// read as text, which such a name made unreadable, so the event had no process.)
    #[tokio::test]
    async fn a_writer_whose_name_is_not_utf8_is_still_named() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        let script = Script::run(
            &dir,
            r#"exec perl -e 'open(my $c, ">", "/proc/self/comm") or die; print $c "\xff\xfe"; close $c; open(my $f, ">", "named.csv") or die; print $f "a,b\n"; close $f; <STDIN>'"#,
        );
        let written = next(&mut rx, is("file.write", &dir.join("named.csv"))).await;
        let writer = file(&written)
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("the writer is not named: {written:?}"));
        assert_eq!(writer.pid, script.pid());
        assert_eq!(writer.exe, exe_of("/usr/bin/perl"));
        assert_eq!(writer.uid, Some(0));
        assert_eq!(writer.user, "root");
        assert_eq!(writer.ancestry[0].pid, std::process::id());
        handle.stop().await;
    }

    /// Files truncated by path at once or a few milliseconds after they were written and closed.
    /// A write may still be held for its names when the truncate's modification is read: judged
    /// against what was remembered before that write, the truncate went unseen and the held write
    /// then left the file's size as it was before the truncate. Whatever rounds they land in, the
    /// last write reported of each file has the size the truncate left.
    #[tokio::test]
    async fn the_last_write_reported_after_a_quick_truncate_has_its_size() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        let _script = Script::run(
            &dir,
            r#"perl -e 'for my $d (0..191) { open(my $f, ">", "t$d.csv") or die; print $f "a,b\n" x 1000; close $f; select(undef, undef, undef, ($d % 64) / 8000); truncate("t$d.csv", 10) or die } select(undef, undef, undef, 0.2); open(my $f, ">", "done") or die'"#,
        );
        let last: std::collections::HashMap<String, Option<u64>> =
            events_until_created(&mut rx, &dir.join("done"))
                .await
                .iter()
                .filter(|event| event.kind() == "file.write")
                .map(|event| (event.path().unwrap_or("").to_string(), file(event).size))
                .collect();
        for d in 0..192 {
            let path = dir.join(format!("t{d}.csv"));
            let size = last.get(path.to_str().unwrap());
            assert_eq!(size, Some(&Some(10)), "t{d}.csv: {last:?}");
        }
        handle.stop().await;
    }

    #[tokio::test]
    async fn auto_chooses_fanotify_as_root_and_names_the_child_behind_each_event() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Auto)).await;
        assert_eq!(handle.source(), "fanotify");
        let status = next(&mut rx, |e| e.kind() == "sensor.status").await;
        assert!(
            sensor(&status).message.starts_with("fanotify:"),
            "{status:?}"
        );

        // The shell writes the file itself; a perl child of the shell deletes it and stays alive
        // (on stdin) so the procfs lookup still finds it.
        let script = Script::run(
            &dir,
            "echo hello > f.csv; perl -e 'unlink \"f.csv\"; <STDIN>'",
        );
        let f = dir.join("f.csv");
        let created = next(&mut rx, is("file.create", &f)).await;
        let deleted = next(&mut rx, is("file.delete", &f)).await;
        for event in [&created, &deleted] {
            let event = file(event);
            assert_eq!(event.backend, "fanotify");
            assert!(event.process_known);
            assert_eq!(event.process.as_ref().unwrap().user, "root");
        }
        let creator = file(&created).process.as_ref().unwrap();
        assert_eq!(creator.pid, script.pid());
        assert_eq!(creator.exe, exe_of("/bin/sh"));
        assert_eq!(creator.ppid, Some(std::process::id()));
        assert_eq!(creator.ancestry[0].pid, std::process::id());
        let deleter = file(&deleted).process.as_ref().unwrap();
        assert_ne!(deleter.pid, script.pid());
        assert_eq!(deleter.exe, exe_of("/usr/bin/perl"));
        assert_eq!(deleter.ppid, Some(script.pid()));
        assert_eq!(deleter.ancestry[0].pid, script.pid());
        assert_eq!(deleter.ancestry[0].exe, exe_of("/bin/sh"));
        // Deleted a microsecond after it was written, and the delete still says how big it was:
        // the write was examined through the descriptor fanotify handed over.
        assert_eq!(file(&deleted).size, Some(6), "{deleted:?}");
        assert!(!file(&deleted).incomplete);
        handle.stop().await;
    }

    #[tokio::test]
    async fn fanotify_reports_renames_with_both_names_and_the_size() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        let script = Script::run(
            &dir,
            "printf 'a,b\\n1,2\\n' > dump.csv; perl -e 'rename \"dump.csv\", \"out.csv\"; <STDIN>'",
        );
        let to = dir.join("out.csv");
        let renamed = next(&mut rx, is("file.rename", &to)).await;
        let renamed = file(&renamed);
        assert_eq!(
            renamed.from_path.as_deref(),
            Some(dir.join("dump.csv").to_str().unwrap())
        );
        assert_eq!(renamed.size, Some(8));
        let mover = renamed.process.as_ref().unwrap();
        assert_eq!(mover.exe, exe_of("/usr/bin/perl"));
        assert_eq!(mover.ppid, Some(script.pid()));
        assert_eq!(renamed.export.as_ref().unwrap().est_rows, Some(2));
        handle.stop().await;
    }

    #[tokio::test]
    async fn the_agents_own_file_activity_is_not_reported_by_fanotify() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        std::fs::write(dir.join("mine"), b"agent").unwrap();
        let _script = Script::run(&dir, "echo x > theirs");
        let first = next(&mut rx, |e| e.path().is_some()).await;
        assert_eq!(first.path(), dir.join("theirs").to_str());
        handle.stop().await;
    }

    /// A tmpfs mounted on a fresh directory, unmounted (lazily) when dropped.
    struct OwnFs {
        dir: tempfile::TempDir,
    }

    impl OwnFs {
        fn mount() -> Option<OwnFs> {
            let dir = tempfile::tempdir().ok()?;
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|status| status.success());
            mounted.then_some(OwnFs { dir })
        }
    }

    impl Drop for OwnFs {
        fn drop(&mut self) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }

    #[tokio::test]
    async fn a_fanotify_queue_overflow_is_reported_and_followed_by_a_rescan() {
        let (_guard, dir) = tempdir();
        // Every sensor marks its whole filesystem, so a flood in the shared temp directory
        // reaches the groups of every other fanotify test running beside this one, and can
        // overflow theirs too (losing the events those tests wait for). The flood goes to a
        // filesystem of its own where the kernel can mark one.
        let own = OwnFs::mount();
        let own_backend = own.as_ref().and_then(|own| {
            let dir = own.dir.path().canonicalize().ok()?;
            let config = FilesConfig {
                watch: vec![dir.clone()],
                scan_on_start: false,
                ..FilesConfig::default()
            }
            .settings()
            .ok()?;
            let (scope, _) = observe::Scope::new(&config).ok()?;
            let backend = fanotify::open(&scope, 0).ok()?;
            Some((dir, config, scope, backend))
        });
        let (dir, config, scope, backend) = match own_backend {
            Some(own) => own,
            None => {
                eprintln!("no tmpfs with fanotify marks here: the flood goes to the shared /tmp");
                let config = FilesConfig {
                    watch: vec![dir.clone()],
                    scan_on_start: false,
                    ..FilesConfig::default()
                };
                let config = config.settings().unwrap();
                let (scope, _) = observe::Scope::new(&config).unwrap();
                let backend = fanotify::open(&scope, 0).unwrap();
                (dir, config, scope, backend)
            }
        };
        // Nobody reads the groups yet, so more creates than a group may queue overflow it;
        // the limit is per group and these were made with the kernel's setting (0), so no global
        // setting needs to change.
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(16_384);
        let files = limit + 100;
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "i=0; while [ $i -lt {files} ]; do : > f$i; i=$((i+1)); done"
            ))
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(status.success());

        let (tx, _spool) = pipeline::channel("h");
        let (out, mut rx) = pipeline::waiting_batches(4 * files);
        let observer = Observer::new("fanotify", scope, &config, processes(), out, tx);
        let stop = Stop::default();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || fanotify::run(backend, None, observer, stop))
        };
        let overflow = next(&mut rx, |e| e.kind() == "sensor.overflow").await;
        assert!(
            sensor(&overflow).message.contains("fanotify"),
            "{overflow:?}"
        );
        let recovered = next(&mut rx, |e| e.kind() == "sensor.recovered").await;
        assert_eq!(sensor(&recovered).count, files as u64);
        stop.set();
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn auto_falls_back_to_notify_when_the_kernel_refuses_fanotify_and_says_why() {
        // procfs cannot hand out file handles, so the kernel refuses a filesystem mark there.
        let config = FilesConfig {
            watch: vec![PathBuf::from("/proc/sys/fs")],
            scan_on_start: false,
            ..FilesConfig::default()
        };
        let (handle, mut rx) = start(config).await;
        assert_eq!(handle.source(), "notify");
        let status = next(&mut rx, |e| e.kind() == "sensor.status").await;
        let message = &sensor(&status).message;
        assert!(
            message.starts_with("notify: fanotify unavailable: the kernel refused"),
            "{message}"
        );
        handle.stop().await;

        let forced = FilesConfig {
            watch: vec![PathBuf::from("/proc/sys/fs")],
            backend: BackendChoice::Fanotify,
            ..FilesConfig::default()
        };
        let (tx, _rx) = pipeline::channel("h");
        match spawn_with_table(forced.settings().unwrap(), tx, processes()).await {
            Err(FilesError::FanotifyUnavailable { reason }) => {
                assert!(reason.contains("/proc/sys/fs"), "{reason}")
            }
            other => panic!("expected a refusal, got {:?}", other.map(|h| h.describe())),
        }
    }

    #[tokio::test]
    async fn removing_a_tree_that_existed_before_the_sensor_reports_each_file_with_its_size() {
        let (_guard, dir) = tempdir();
        let tree = dir.join("exports");
        std::fs::create_dir_all(tree.join("2024/q1")).unwrap();
        std::fs::write(tree.join("a.csv"), vec![b'a'; 100]).unwrap();
        std::fs::write(tree.join("2024/q1/b.csv"), vec![b'b'; 70_000]).unwrap();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        // rm deletes the files, then the directories, and is gone before the events are read:
        // the paths come from the directory handles learnt at start, the sizes from the scan,
        // which remembers only files of at least scan_min_size (64 KiB by default).
        let status = Command::new("rm").arg("-r").arg(&tree).status().unwrap();
        assert!(status.success());
        for (path, size) in [
            (tree.join("a.csv"), None),
            (tree.join("2024/q1/b.csv"), Some(70_000)),
        ] {
            let deleted = next(&mut rx, is("file.delete", &path)).await;
            assert_eq!(file(&deleted).size, size, "{deleted:?}");
            assert_eq!(file(&deleted).incomplete, size.is_none(), "{deleted:?}");
            assert!(file(&deleted).process_known);
        }
        handle.stop().await;
    }

    /// A name deleted and linked back to the same file straight away, twenty times: the
    /// kernel merges deletes and creates queued for one file into one event, and that file is
    /// still there, so the name is looked at to tell the order. Once the loop is over the last
    /// word on the name is that it exists. (Mid-loop the order of a merged event is a guess: it
    /// may hold several of each.)
    #[tokio::test]
    async fn a_name_unlinked_and_linked_again_to_its_file_ends_created() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        let x = dir.join("x.csv");
        let _script = Script::run(
            &dir,
            "echo a,b > keep.csv; ln keep.csv x.csv; perl -e 'for (1..20) { unlink(\"x.csv\") or die; link(\"keep.csv\", \"x.csv\") or die } open(my $f, \">\", \"barrier\"); close $f; <STDIN>'",
        );
        let mut kinds = Vec::new();
        let mut all = Vec::new();
        loop {
            let event = next(&mut rx, |_| true).await;
            all.push(format!("{} {:?}", event.kind(), event.path()));
            // The barrier's create, from the same kernel queue as the name's events and so after
            // them (its close-after-write comes from another queue, and may come first).
            if event.kind() == "file.create" && event.path() == dir.join("barrier").to_str() {
                break;
            }
            if event.path() == x.to_str() {
                kinds.push(event.kind());
            }
        }
        assert!(x.exists());
        assert_eq!(kinds.first(), Some(&"file.create"), "{all:#?}");
        assert_eq!(kinds.last(), Some(&"file.create"), "{all:#?}");
        assert!(kinds.contains(&"file.delete"), "{all:#?}");
        handle.stop().await;
    }

    #[tokio::test]
    async fn a_process_creating_and_deleting_files_back_to_back_is_seen_for_every_file() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        // One process, one name at a time, no pause: the kernel merges each create with its
        // delete into one event, and the file is gone before the event is read.
        let _script = Script::run(
            &dir,
            "perl -e 'for my $i (1..200) { open(my $f, \">\", \"f$i.csv\"); print $f \"a,b\\n\" x 5; close($f); unlink(\"f$i.csv\") } <STDIN>'",
        );
        let mut events: std::collections::HashMap<(String, &'static str), FileEvent> =
            std::collections::HashMap::new();
        let mut deletes = 0;
        while deletes < 200 {
            let event = next(&mut rx, |e| e.path().is_some()).await;
            deletes += usize::from(event.kind() == "file.delete");
            let key = (event.path().unwrap().to_string(), event.kind());
            events.insert(key, file(&event).clone());
        }
        for i in 1..=200 {
            let path = dir.join(format!("f{i}.csv")).to_string_lossy().into_owned();
            let get = |kind| {
                events
                    .get(&(path.clone(), kind))
                    .unwrap_or_else(|| panic!("no {kind} of {path}"))
            };
            let (created, written, deleted) =
                (get("file.create"), get("file.write"), get("file.delete"));
            // The create is examined when it is read: empty still, already written, or gone
            // (then marked incomplete); the write, examined through the descriptor fanotify
            // hands over, always has the size, and so has the delete.
            assert!(matches!(created.size, Some(0) | Some(20) | None));
            assert_eq!(created.incomplete, created.size.is_none());
            assert_eq!(written.size, Some(20), "{written:?}");
            assert_eq!(written.export.as_ref().unwrap().est_rows, Some(5));
            assert_eq!(deleted.size, Some(20), "{deleted:?}");
            for event in [created, written, deleted] {
                assert_eq!(event.process.as_ref().unwrap().exe, exe_of("/usr/bin/perl"));
            }
        }
        handle.stop().await;
    }

    #[tokio::test]
    async fn after_a_directory_is_renamed_events_below_it_carry_the_new_path_and_old_sizes() {
        let (_guard, dir) = tempdir();
        let (handle, mut rx) = start(config(&dir, BackendChoice::Fanotify)).await;
        let _first = Script::run(&dir, "mkdir a; echo 1 > a/x");
        next(&mut rx, is("file.write", &dir.join("a/x"))).await;
        let _second = Script::run(&dir, "mv a b; echo 2 > b/y");
        next(&mut rx, is("file.create", &dir.join("b/y"))).await;
        let _third = Script::run(&dir, "rm b/x");
        let deleted = next(&mut rx, is("file.delete", &dir.join("b/x"))).await;
        assert_eq!(file(&deleted).size, Some(2));
        handle.stop().await;
    }

    /// Reads of large exports: `file.read` once per process and file, with the rename, hard
    /// link and bound an attacker would try.
    mod reads {
        use super::*;

        const MIB: u64 = 1024 * 1024;

        fn reads_config(dir: &Path, max: usize) -> FilesConfig {
            FilesConfig {
                read_watch_min_size: MIB,
                read_watch_max: max,
                ..config(dir, BackendChoice::Fanotify)
            }
        }

        /// A shell line writing a 2 MiB CSV (a large export at a 1 MiB threshold) to `name`.
        fn export(name: &str) -> String {
            format!("head -c 2097152 /dev/zero | tr '\\0' 'a' > {name}")
        }

        /// Waits until the exports written so far are watched: a write seen after theirs was
        /// handled in a later turn of the backend, after the turn that marked them.
        async fn settle(dir: &Path, rx: &mut mpsc::Receiver<Event>, n: usize) {
            let barrier = dir.join(format!("barrier{n}"));
            let _script = Script::run(dir, &format!("echo {n} > barrier{n}"));
            next(rx, is("file.write", &barrier)).await;
        }

        fn is_read_of(path: &Path) -> impl Fn(&Event) -> bool {
            is("file.read", path)
        }

        /// Exports read 1 to 20 ms after their writer closed them, as a script that archives what
        /// it just exported does. A reader must come after the watch on the export begins, which
        /// is when its write is emitted: so an export's write is never held for its names, which
        /// would make the watch begin a round (or a 10 ms poll) later. Reads in the first few
        /// milliseconds go unseen either way (on a quiet machine, up to 4-7 ms in a debug
        /// build); held, exports read up to 16 ms after their close were missed too. Most of
        /// those read 10 ms or more after are seen. (It tells the two apart on a quiet filesystem:
        /// other tests' files end the sensor's rounds sooner, and a held write with them.)
        #[tokio::test]
        async fn an_export_read_just_after_it_was_written_is_seen() {
            let (_guard, dir) = tempdir();
            let (handle, mut rx) = start(reads_config(&dir, 64)).await;
            let _script = Script::run(
                &dir,
                r#"exec perl -e 'for my $d (1..20) { open(my $f, ">", "e$d.csv") or die; print $f "a" x 2097152; close $f; select(undef, undef, undef, $d / 1000); open($f, "<", "e$d.csv") or die; read($f, my $b, 100); close $f } open(my $f, ">", "done") or die; <STDIN>'"#,
            );
            let mut events = events_until_created(&mut rx, &dir.join("done")).await;
            // A read reported a moment after `done`'s create still counts.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            while let Ok(event) = rx.try_recv() {
                events.push(event);
            }
            let read: std::collections::BTreeSet<&str> = events
                .iter()
                .filter(|event| event.kind() == "file.read")
                .filter_map(Event::path)
                .collect();
            let missed: Vec<u32> = (1..=20)
                .filter(|d| !read.contains(dir.join(format!("e{d}.csv")).to_str().unwrap()))
                .collect();
            let late_missed = missed.iter().filter(|&&d| d >= 10).count();
            assert!(
                late_missed <= 2,
                "reads not seen, by milliseconds after the close: {missed:?}"
            );
            handle.stop().await;
        }

        #[tokio::test]
        async fn each_process_reading_an_export_is_reported_once_however_often_it_reads() {
            let (_guard, dir) = tempdir();
            let (handle, mut rx) = start(reads_config(&dir, 16)).await;
            let status = next(&mut rx, |e| e.kind() == "sensor.status").await;
            assert!(
                sensor(&status)
                    .message
                    .contains("reads of exports of at least 1048576 bytes are watched"),
                "{status:?}"
            );
            assert!(
                sensor(&status)
                    .message
                    .contains("bytes read are counted (eBPF)"),
                "{status:?}"
            );
            let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
            let _write = Script::run(&dir, &format!("{}; {}", export("a.csv"), export("b.csv")));
            next(&mut rx, is("file.write", &b)).await;
            settle(&dir, &mut rx, 1).await;
            // Two cats, then one process opening and reading the file three thousand times,
            // each staying alive (on stdin) so it is named; then a read of the other export as
            // the barrier that ends the count.
            let cat = "exec cat a.csv - > /dev/null";
            let first = Script::run(&dir, cat);
            let second = Script::run(&dir, cat);
            let perl = Script::run(
                &dir,
                "exec perl -e 'for (1..3000) { open(my $f, \"<\", \"a.csv\") or die; read($f, my $b, 100); close $f } <STDIN>'",
            );
            let mut readers = vec![first.pid(), second.pid(), perl.pid()];
            let mut reads_of_a = Vec::new();
            while reads_of_a.len() < 3 {
                let event = next(&mut rx, is_read_of(&a)).await;
                reads_of_a.push(file(&event).clone());
            }
            let _barrier = Script::run(&dir, "exec cat b.csv - > /dev/null");
            loop {
                let event = next(&mut rx, |e| e.kind() == "file.read").await;
                if event.path() == b.to_str() {
                    break;
                }
                reads_of_a.push(file(&event).clone());
            }
            let mut pids: Vec<u32> = reads_of_a
                .iter()
                .map(|read| read.process.as_ref().unwrap().pid)
                .collect();
            pids.sort();
            readers.sort();
            assert_eq!(pids, readers, "{reads_of_a:?}");
            for read in &reads_of_a {
                assert_eq!(read.path, a.to_str().unwrap());
                assert_eq!(read.size, Some(2 * MIB));
                assert_eq!(read.export.as_ref().unwrap().format, "csv");
                let reader = read.process.as_ref().unwrap();
                let expected = if reader.pid == perl.pid() {
                    // Reported at the first close the agent handled, with what it read by
                    // then: at least its first 100 bytes, at most perl's buffer's worth for
                    // each of its 3000 opens (the kernel merges a reader's queued events).
                    let bytes = read.bytes_read.unwrap();
                    assert!((100..=3000 * 8192).contains(&bytes), "{read:?}");
                    "/usr/bin/perl"
                } else {
                    // cat closed it after reading all of it: reported then, with everything.
                    assert_eq!(read.bytes_read, Some(2 * MIB), "{read:?}");
                    "/bin/cat"
                };
                assert!(!read.still_open && !read.closed, "{read:?}");
                assert_eq!(reader.exe, exe_of(expected));
                assert_eq!(reader.user, "root");
                assert_eq!(reader.ancestry[0].pid, std::process::id());
            }
            handle.stop().await;
        }

        #[tokio::test]
        async fn the_watch_follows_the_file_through_a_rename_and_a_hard_link() {
            let (_guard, dir) = tempdir();
            let (outside_guard, outside) = tempdir();
            let (handle, mut rx) = start(reads_config(&dir, 16)).await;
            let _write = Script::run(&dir, &export("a.csv"));
            next(&mut rx, is("file.write", &dir.join("a.csv"))).await;
            settle(&dir, &mut rx, 1).await;
            let moved = dir.join("moved.csv");
            let _mv = Script::run(
                &dir,
                "mv a.csv moved.csv && exec cat moved.csv - > /dev/null",
            );
            let read = next(&mut rx, |e| e.kind() == "file.read").await;
            assert_eq!(read.path(), moved.to_str());
            // A second name outside the watched trees: a read under it is still a read of the
            // export, named as the reader opened it.
            let link = outside.join("innocent.txt");
            let _ln = Script::run(
                &dir,
                &format!(
                    "ln moved.csv {link} && exec cat {link} - > /dev/null",
                    link = link.display()
                ),
            );
            // Not the first reader's total at its close: on a loaded machine its close can come
            // after SETTLE, when it was already reported as still reading.
            let read = next(&mut rx, |e| e.kind() == "file.read" && !file(e).closed).await;
            assert_eq!(read.path(), link.to_str());
            assert_eq!(file(&read).export.as_ref().unwrap().format, "csv");
            assert_eq!(
                file(&read).process.as_ref().unwrap().exe,
                exe_of("/bin/cat")
            );
            drop(outside_guard);
            handle.stop().await;
        }

        #[tokio::test]
        async fn exports_past_the_bound_are_counted_and_a_deleted_export_frees_its_place() {
            let (_guard, dir) = tempdir();
            let (handle, mut rx) = start(reads_config(&dir, 1)).await;
            // a first, so it is the one watched; then two more past the bound.
            let _first = Script::run(&dir, &export("a.csv"));
            next(&mut rx, is("file.write", &dir.join("a.csv"))).await;
            settle(&dir, &mut rx, 0).await;
            let _more = Script::run(&dir, &format!("{}; {}", export("b.csv"), export("c.csv")));
            let mut refused = 0;
            while refused < 2 {
                let error = next(&mut rx, |e| e.kind() == "sensor.error").await;
                let error = sensor(&error);
                assert!(error.message.contains("read_watch_max = 1"), "{error:?}");
                refused += error.count;
            }
            assert_eq!(refused, 2);
            // b and c are not watched; a is, so its read is the first to be reported.
            let _read = Script::run(&dir, "cat c.csv b.csv a.csv > /dev/null; echo > cat-done");
            // The read and the marker's write come from two kernel groups and may be handed over
            // in the same round, in either order.
            let marker = dir.join("cat-done");
            let done = is("file.write", &marker);
            let first = next(&mut rx, |e| e.kind() == "file.read" || done(e)).await;
            let read = if done(&first) {
                next(&mut rx, |e| e.kind() == "file.read").await
            } else {
                // cat has closed a: a reader still holding it would keep the file, and its
                // place, until it closed it.
                next(&mut rx, &done).await;
                first
            };
            assert_eq!(read.path(), dir.join("a.csv").to_str());
            // Deleting a frees its place: b, written again, is watched now.
            let _rm = Script::run(&dir, "rm a.csv");
            next(&mut rx, is("file.delete", &dir.join("a.csv"))).await;
            let _again = Script::run(&dir, "echo more >> b.csv");
            next(&mut rx, is("file.write", &dir.join("b.csv"))).await;
            settle(&dir, &mut rx, 1).await;
            let _read = Script::run(&dir, "cat b.csv > /dev/null");
            next(&mut rx, is_read_of(&dir.join("b.csv"))).await;
            handle.stop().await;
        }
    }
}
