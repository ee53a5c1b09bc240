//! Names chosen by an attacker try to forge what an operator sees in a terminal, a chat channel or
//! an alert receiver; a hostile webhook receiver tries to exhaust the collector; someone without a
//! valid token tries to enroll, flood enrollment, or take over an enrolled agent's name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(120);
const RULE: &str = "large-export-created-then-deleted";

/// A whole table row, as `events` prints it, that the file name tries to smuggle in.
const FORGED_ROW: &str = "2026-11-29T00:00:00.000000000+00:00  file.delete  db-prod-1  1  payroll";

/// A file name that carries a forged row, terminal control sequences (OSC retitle, clear screen,
/// an 8-bit CSI, a right-to-left override), Slack and Mattermost mentions and links, and a line
/// break for mail headers.
fn hostile_name() -> String {
    format!(
        "q3\n{FORGED_ROW}\x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{202e}vsc.\r\n<!here> <mailto:x@evil.example|Reset your password> @channel [Reset](evil.example).csv"
    )
}

/// Control characters that must never reach an operator's terminal raw.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            (c.is_control() && *c != '\n')
                || matches!(*c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// A CSV with personal-data-like columns, well over the test collector's export threshold.
fn write_export(path: &Path) {
    let mut text = String::from("id,name,email,phone\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "{i},name{i:07},user{i:07}@example.jp,090-{:04}-5678\n",
            i % 10000
        ));
    }
    std::fs::write(path, text).unwrap();
}

struct Host {
    _tmp: tempfile::TempDir,
    collector: Collector,
    watched: PathBuf,
    _agent: Agent,
}

const NAME: &str = "files1";

/// A collector with `alerts` configuration (and a 1 KiB export threshold) and an enrolled agent
/// watching a directory.
fn host(alerts_toml: &str) -> Host {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("exports");
    std::fs::create_dir(&watched).unwrap();
    let config = tmp.path().join("collector.toml");
    private_file(
        &config,
        &format!("{alerts_toml}\n[detection.thresholds]\nlarge_export_min_size = 1024\n"),
    );
    let collector = Collector::start_with(
        &tmp.path().join("collector"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let state = tmp.path().join("agent");
    collector.enroll(&state, NAME);
    let agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    Host {
        _tmp: tmp,
        collector,
        watched,
        _agent: agent,
    }
}

/// Creates and deletes the export with the hostile name; waits until the alert about it is stored.
fn export_and_delete(host: &Host) -> String {
    let path = host.watched.join(hostile_name());
    write_export(&path);
    let path_text = path.to_str().unwrap().to_string();
    wait_for("the hostile file's create event", LONG, || {
        host.collector
            .events(&["--kind", "file.create"])
            .into_iter()
            .find(|e| e["path"] == path_text.as_str())
    });
    std::fs::remove_file(&path).unwrap();
    wait_for("the alert about the hostile file", LONG, || {
        alerts_json(&host.collector.dir, &[])
            .into_iter()
            .find(|a| a["rule"] == RULE)
    });
    path_text
}

fn collector_stdout(args: &[&str], data_dir: &Path) -> String {
    let (command, rest) = args.split_first().unwrap();
    run_ok(
        Command::new(COLLECTOR)
            .arg(command)
            .arg("--data-dir")
            .arg(data_dir)
            .args(rest),
    )
}

// ---------------------------------------------------------------------------------------------
// Terminal tables

#[test]
fn a_file_name_cannot_forge_rows_or_send_control_sequences_to_the_operators_terminal() {
    let host = host("");
    export_and_delete(&host);
    let dir = &host.collector.dir;

    for args in [
        &["events", "--format", "table"][..],
        &["timeline", "--host", NAME, "--since", "1h"][..],
        &["scope", "--since", "1h"][..],
        &["alerts", "--format", "table"][..],
        &["agents", "--format", "table"][..],
    ] {
        let out = collector_stdout(args, dir);
        assert!(
            raw_controls(&out).is_empty(),
            "{args:?} printed raw control characters {:?}:\n{out}",
            raw_controls(&out)
        );
        // The name's line break would start a row of its own that looks like a real event.
        assert!(
            !out.lines()
                .any(|line| line.trim_start().starts_with("2026-11-29T00:00:00")),
            "{args:?} printed a forged row:\n{out}"
        );
    }

    // The operator still sees every character of the name, escaped.
    let events = collector_stdout(&["events", "--format", "table"], dir);
    assert!(
        events.contains(r"q3\n2026-11-29T00:00:00") && events.contains(r"\x1b]0;pwned\x07"),
        "{events}"
    );
    assert!(events.contains(r"\u{202e}vsc."), "{events}");
    for line in events.lines().skip(1) {
        assert_eq!(
            line.split_whitespace().nth(2),
            Some(NAME),
            "a row names another host: {line}"
        );
    }
}
