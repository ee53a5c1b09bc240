//! Issue 3, files: a deleted export still says who made it and who deleted it (process, user,
//! parent), how big it was and how much personal data it held, and the agent says which file
//! backend it runs.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_deleted_export_names_who_wrote_it_who_deleted_it_and_what_it_held() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("exports");
    std::fs::create_dir(&watched).unwrap();
    let watched = watched.canonicalize().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, "files1");
    let _agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);

    // A shell has perl write a customer export, then deletes it with rm. perl stays until the
    // test has seen the write (on its stdin), so the writer is a live process when it is named;
    // rm is gone a millisecond after the delete and is named from the process sensor's table.
    let export = watched.join("customers.csv");
    let writer = tmp.path().join("writer.pl");
    std::fs::write(
        &writer,
        "open(my $f, '>', 'customers.csv') or die;\n\
         print $f \"id,email,phone\\n\";\n\
         printf $f \"%d,user%d\\@example.co.jp,090-1234-%04d\\n\", $_, $_, $_ for 1..300;\n\
         close($f) or die;\n\
         my $wait = <STDIN>;\n",
    )
    .unwrap();
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(format!("perl {} && rm customers.csv", writer.display()))
        .current_dir(&watched)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = u64::from(shell.id());

    let path = export.display().to_string();
    let written = wait_for(&format!("the write of {path} stored"), LONG, || {
        collector
            .events(&["--path", &path, "--kind", "file.write"])
            .into_iter()
            .next()
    });
    drop(shell.stdin.take());
    assert!(shell.wait().unwrap().success());
    let deleted = wait_for(&format!("the delete of {path} stored"), LONG, || {
        collector
            .events(&["--path", &path, "--kind", "file.delete"])
            .into_iter()
            .next()
    });

    for event in [&written, &deleted] {
        assert_eq!(event["backend"], "fanotify", "{event}");
        assert_eq!(event["process_known"], true, "{event}");
    }
    // The deleter's parent and ancestry come from the same process-table entry as its exe, so they
    // are asserted whenever that entry was there in time (see the exe check below); the writer is
    // alive when named and must always carry them.
    let deleter_known = !deleted["exe"].as_str().unwrap_or_default().is_empty();
    for event in [&written, &deleted] {
        if std::ptr::eq(event, &deleted) && !deleter_known {
            continue;
        }
        assert_eq!(event["ppid"], shell_pid, "{event}");
        assert_eq!(event["ancestry"][0]["pid"], shell_pid, "{event}");
    }
    assert!(
        written["exe"].as_str().unwrap().ends_with("/perl"),
        "{written}"
    );
    assert_eq!(written["user"], "root");
    assert!(
        written["cmdline"].as_str().unwrap().contains("writer.pl"),
        "{written}"
    );
    assert_ne!(written["pid"], deleted["pid"]);
    // The deleter lived for a millisecond; the process table remembers it when its exec was
    // recorded in time, and the event then names it.
    let deleter = deleted["exe"].as_str().unwrap();
    assert!(deleter.is_empty() || deleter.ends_with("/rm"), "{deleted}");

    let size = written["size"].as_u64().unwrap();
    assert!(size > 300 * 30, "{written}");
    let export_info = &written["export"];
    assert_eq!(export_info["class"], "data", "{written}");
    assert_eq!(export_info["format"], "csv");
    assert_eq!(export_info["est_rows"], 301);
    assert_eq!(export_info["emails"], 300);
    assert_eq!(export_info["phones"], 300);
    assert_eq!(export_info["cards"], 0);
    assert_eq!(deleted["size"], size, "a delete carries the last size seen");

    let status = wait_for("the file sensor's status stored", LONG, || {
        collector
            .events(&["--kind", "sensor.status"])
            .into_iter()
            .find(|e| e["sensor"] == "files")
    });
    assert!(
        status["message"].as_str().unwrap().starts_with("fanotify:"),
        "{status}"
    );
}
