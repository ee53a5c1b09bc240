//! Issue 5: detection on the committed stream, alerts delivered to real webhooks and a real SMTP
//! server, benign work kept quiet, and delivery surviving a hook that is down.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(90);
const RULE: &str = "large-export-created-then-deleted";

/// Writes a CSV of about `mib` MiB with personal-data-like columns, from a child process.
fn write_csv(path: &Path, mib: usize) {
    let rows = mib * 1024 * 1024 / 48;
    let status = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "f = open({:?}, 'w')\nf.write('id,name,email,phone\\n')\nfor i in range({rows}):\n    f.write(f'{{i}},name{{i:07d}},user{{i:07d}}@example.jp,090-{{i%10000:04d}}-5678\\n')\nf.close()",
            path.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

fn remove(path: &Path) {
    assert!(Command::new("rm").arg(path).status().unwrap().success());
}

#[test]
fn a_large_csv_created_then_deleted_alerts_once_by_webhook_and_mail() {
    let receiver = HttpReceiver::start(0);
    let smtp = SmtpSink::start();
    let config = format!(
        r#"
[[alerts.webhook]]
url = "{json}"
format = "json"
rules = ["{RULE}"]

[[alerts.webhook]]
url = "{slack}"
format = "slack"
rules = ["{RULE}"]

[alerts.email]
smtp = "smtp+plain://127.0.0.1:{port}"
from = "bannin@example.jp"
to = ["soc@example.jp", "oncall@example.jp"]
rules = ["{RULE}"]
"#,
        json = receiver.url("/json"),
        slack = receiver.url("/slack"),
        port = smtp.port
    );
    let fleet = fleet(&config, "files1");
    let csv = fleet.watched.join("customers_20261121.csv");
    write_csv(&csv, 20);
    remove(&csv);

    let alert = wait_for("the webhook to receive the alert", LONG, || {
        receiver.bodies("/json").into_iter().next()
    });
    assert_eq!(alert["rule"], RULE);
    assert_eq!(alert["host"], "files1");
    assert_eq!(alert["path"], csv.display().to_string());
    assert!(alert["size"].as_u64().unwrap() >= 20 * 1024 * 1024 - 100_000);
    assert!(alert["created_ts"].is_string() && alert["deleted_ts"].is_string());
    assert!(alert["pid"].as_u64().is_some(), "{alert}");
    assert!(alert["exe"].as_str().unwrap().contains("python"), "{alert}");
    assert!(alert["est_rows"].as_u64().unwrap() > 100_000, "{alert}");
    assert!(alert["emails"].as_u64().unwrap() > 0, "{alert}");
    // One e-mail address per row: the sample's count scaled to the file says about how many.
    let (rows, emails) = (
        alert["est_rows"].as_u64().unwrap(),
        alert["est_emails"].as_u64().unwrap(),
    );
    assert!(emails > rows / 2 && emails < rows * 2, "{alert}");
    assert!(!alert["evidence"].as_array().unwrap().is_empty());
    assert!(
        receiver.heads("/json")[0]
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );

    let slack = wait_for("the slack hook", LONG, || {
        receiver.bodies("/slack").into_iter().next()
    });
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains(RULE) && text.contains("files1"), "{text}");

    let mail = wait_for("the mail", LONG, || smtp.messages().into_iter().next());
    let subject = mail["subject"].as_str().unwrap();
    assert!(subject.starts_with("[bannin] HIGH"), "{subject}");
    assert!(
        subject.contains(RULE) && subject.ends_with("on files1"),
        "{subject}"
    );
    assert_eq!(mail["rcpt_tos"].as_array().unwrap().len(), 2);

    // Exactly one alert, stored with its delivery state. A second export is the barrier: detection
    // sees events in commit order, so once the second alert has reached every sink, any repeat of
    // the first would have been stored and delivered before it.
    let delivered = |path: &Path| {
        let path = path.display().to_string();
        alerts_json(&fleet.collector.dir, &["--rule", RULE])
            .iter()
            .filter(|alert| alert["path"] == path.as_str())
            .flat_map(|alert| alert["deliveries"].as_array().unwrap().clone())
            .filter(|d| d["state"] == "delivered")
            .count()
    };
    wait_for("deliveries recorded", LONG, || {
        (delivered(&csv) == 3).then_some(())
    });
    let barrier = fleet.watched.join("barrier.csv");
    write_csv(&barrier, 12);
    remove(&barrier);
    wait_for("the second alert's deliveries", LONG, || {
        (delivered(&barrier) == 3).then_some(())
    });
    let alerts = alerts_json(&fleet.collector.dir, &["--rule", RULE]);
    let mut paths: Vec<&str> = alerts.iter().filter_map(|a| a["path"].as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [barrier.display().to_string(), csv.display().to_string()],
        "{alerts:?}"
    );
    assert_eq!(receiver.bodies("/json").len(), 2);
    assert_eq!(smtp.messages().len(), 2);
}

#[test]
fn benign_workloads_stay_quiet_and_the_allow_list_silences_etl() {
    let receiver = HttpReceiver::start(0);
    let config = format!(
        r#"
[[alerts.webhook]]
url = "{url}"
rules = ["{RULE}"]

[[detection.allow]]
comment = "hourly ETL staging, loaded and removed by the loader"
rules = ["{RULE}"]
path = "**/etl/**"
"#,
        url = receiver.url("/hook"),
    );
    let fleet = fleet(&config, "etl1");
    let dir = &fleet.watched;
    // Log rotation: big logs and compressed logs created and removed.
    let log = dir.join("app.log.1");
    write_csv(&log, 12);
    let status = Command::new("gzip").arg("-1").arg(&log).status().unwrap();
    assert!(status.success());
    remove(&dir.join("app.log.1.gz"));
    // A build: thousands of small files created and deleted.
    let build = dir.join("build");
    std::fs::create_dir(&build).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && i=0; while [ $i -lt 2000 ]; do echo x > o$i.o; i=$((i+1)); done; rm -f *.o",
            build.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    // ETL: tmp file renamed into place, loaded and deleted, as allowed in the config.
    let etl = dir.join("etl");
    std::fs::create_dir(&etl).unwrap();
    write_csv(&etl.join("export.csv.tmp"), 12);
    assert!(
        Command::new("mv")
            .arg(etl.join("export.csv.tmp"))
            .arg(etl.join("export.csv"))
            .status()
            .unwrap()
            .success()
    );
    remove(&etl.join("export.csv"));

    // A control: the same shape outside the allowed path must alert, proving detection was live.
    let csv = dir.join("leak.csv");
    write_csv(&csv, 12);
    remove(&csv);
    let alert = wait_for("the control alert", LONG, || {
        receiver.bodies("/hook").into_iter().next()
    });
    assert_eq!(alert["path"], csv.display().to_string());
    // The control came last and detection sees events in commit order: any alert the benign work
    // raised is stored before the control's.
    let alerts = alerts_json(&fleet.collector.dir, &["--rule", RULE]);
    assert_eq!(alerts.len(), 1, "only the control alerted: {alerts:?}");
}

#[test]
fn a_hook_that_is_down_receives_the_alert_after_it_comes_back() {
    let port = free_port();
    let config = format!(
        "[[alerts.webhook]]\nurl = \"http://127.0.0.1:{port}/late\"\nrules = [\"{RULE}\"]\n\n[alerts.retry]\ninitial = \"200ms\"\nmax = \"1s\"\n"
    );
    let fleet = fleet(&config, "files2");
    let csv = fleet.watched.join("dump.sql");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ echo 'INSERT INTO customers VALUES'; i=0; while [ $i -lt 300000 ]; do echo \"($i,'user$i@example.jp','090-1234-5678'),\"; i=$((i+1)); done; }} > {}",
            csv.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    remove(&csv);
    wait_for("a failed delivery attempt", LONG, || {
        let alerts = alerts_json(&fleet.collector.dir, &["--rule", RULE]);
        alerts
            .first()
            .and_then(|a| a["deliveries"].as_array().cloned())
            .and_then(|d| d.first().cloned())
            .filter(|d| d["attempts"].as_u64().unwrap_or(0) >= 1 && d["state"] != "delivered")
    });
    let receiver = HttpReceiver::start(port);
    let alert = wait_for("the late delivery", LONG, || {
        receiver.bodies("/late").into_iter().next()
    });
    assert_eq!(alert["path"], csv.display().to_string());
}
