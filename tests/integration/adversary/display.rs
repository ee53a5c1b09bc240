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

    // Only the file events: the agent also reports every process on the host, and with tests
    // running alongside those can fill the listing's page and push the export's rows off it.
    for args in [
        &["events", "--format", "table", "--kind", "file.*"][..],
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
    let events = collector_stdout(&["events", "--format", "table", "--kind", "file.*"], dir);
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

// ---------------------------------------------------------------------------------------------
// Hostile webhook receivers

/// The collector's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The one alert's delivery to the only sink, once it has been attempted at least `attempts` times
/// or delivered.
fn delivery_after(host: &Host, attempts: u64) -> serde_json::Value {
    wait_for("the delivery attempts to be recorded", LONG, || {
        alerts_json(&host.collector.dir, &[])
            .into_iter()
            .find(|a| a["rule"] == RULE)
            .and_then(|a| a["deliveries"].as_array().and_then(|d| d.first().cloned()))
            .filter(|d| {
                d["attempts"].as_u64().unwrap_or(0) >= attempts || d["state"] == "delivered"
            })
    })
}

fn export_and_delete_plain(host: &Host) {
    let path = host.watched.join("customers.csv");
    write_export(&path);
    let path_text = path.to_str().unwrap().to_string();
    wait_for("the export's create event", LONG, || {
        host.collector
            .events(&["--kind", "file.create"])
            .into_iter()
            .find(|e| e["path"] == path_text.as_str())
    });
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_receiver_answering_500_with_an_endless_body_cannot_grow_the_collector() {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    // Streams zeros behind a 2 GiB Content-Length until the collector hangs up, never holding them;
    // stops at 512 MiB a connection so a collector that reads it all does not starve the machine.
    let most_sent = std::sync::Arc::new(AtomicU64::new(0));
    let sent = most_sent.clone();
    let receiver = HttpReceiver::scripted(0, move |_, stream| {
        let _ = stream.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: 2147483648\r\n\r\n",
        );
        let chunk = vec![b'x'; 64 * 1024];
        let mut total = 0u64;
        while total < 512 * 1024 * 1024 && stream.write_all(&chunk).is_ok() {
            total += chunk.len() as u64;
        }
        sent.fetch_max(total, Ordering::SeqCst);
    });
    let host = host(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\ntimeout = \"60s\"\n[alerts.retry]\ninitial = \"1s\"\nmax = \"2s\"\n",
        receiver.url("/hook")
    ));
    export_and_delete_plain(&host);

    let delivery = delivery_after(&host, 3);
    assert_eq!(delivery["state"], "failed-retrying", "{delivery}");
    let error = delivery["last_error"].as_str().unwrap();
    assert!(error.contains("500"), "{error}");
    assert!(receiver.count() >= 3);
    let peak = peak_rss(host.collector.proc.child.id());
    assert!(
        peak < 128 * 1024 * 1024,
        "the collector peaked at {} MiB",
        peak >> 20
    );
    // It hung up after a few KiB (the rest is what the kernel's socket buffers took).
    let most = most_sent.load(Ordering::SeqCst);
    assert!(most < 32 * 1024 * 1024, "the receiver wrote {most} bytes");
}

#[test]
fn a_receiver_redirecting_elsewhere_is_not_followed() {
    use std::io::Write;
    let elsewhere = HttpReceiver::start(0);
    let target = elsewhere.url("/stolen");
    let receiver = HttpReceiver::scripted(0, move |_, stream| {
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
    });
    let host = host(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\n[alerts.retry]\ninitial = \"1s\"\nmax = \"2s\"\n",
        receiver.url("/hook")
    ));
    export_and_delete_plain(&host);

    let delivery = delivery_after(&host, 2);
    assert_ne!(delivery["state"], "delivered", "{delivery}");
    let error = delivery["last_error"].as_str().unwrap();
    assert!(
        error.contains("307") && error.contains("redirect"),
        "{error}"
    );
    assert!(
        elsewhere.count() == 0,
        "the alert went to the redirect target"
    );
}

// ---------------------------------------------------------------------------------------------
// Chat markup, Teams cards, mail and idempotency keys

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Every string anywhere in a JSON value.
fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn a_file_name_cannot_ping_a_channel_link_a_phish_or_forge_mail_and_each_delivery_has_a_key() {
    let receiver = HttpReceiver::start(0);
    let smtp = SmtpSink::start();
    let host = host(&format!(
        r#"
[[alerts.webhook]]
url = "{json}"

[[alerts.webhook]]
url = "{slack}"
format = "slack"

[[alerts.webhook]]
url = "{teams}"
format = "teams"

[alerts.email]
smtp = "smtp+plain://127.0.0.1:{port}"
from = "bannin@example.jp"
to = ["soc@example.jp"]
"#,
        json = receiver.url("/json"),
        slack = receiver.url("/slack"),
        teams = receiver.url("/teams"),
        port = smtp.port
    ));
    let path = export_and_delete(&host);
    let alert = alerts_json(&host.collector.dir, &[])
        .into_iter()
        .find(|a| a["rule"] == RULE)
        .unwrap();
    let alert_id = alert["id"].as_str().unwrap().to_string();

    // The delivery of this alert (the export also raises others).
    let first = |hook: &str| {
        wait_for(&format!("the {hook} delivery"), LONG, || {
            let heads = receiver.heads(hook);
            let bodies = receiver.bodies(hook);
            heads.into_iter().zip(bodies).find(|(head, body)| {
                header(head, "x-bannin-alert-id") == Some(alert_id.as_str())
                    || body["id"] == alert_id.as_str()
            })
        })
    };
    let mut keys = Vec::new();
    for hook in ["/json", "/slack", "/teams"] {
        let (head, body) = first(hook);
        let key = header(&head, "idempotency-key").unwrap_or_else(|| panic!("{hook}: {head}"));
        assert_eq!(header(&head, "x-bannin-alert-id"), Some(alert_id.as_str()));
        assert_eq!(header(&head, "x-bannin-delivery-id"), Some(key));
        assert_eq!(body["alert_id"], alert_id.as_str(), "{hook}: {body}");
        assert_eq!(body["delivery_id"], key, "{hook}: {body}");
        keys.push(key.to_string());
    }
    keys.dedup();
    assert_eq!(keys.len(), 3, "each sink's delivery has its own key");

    // JSON carries the name unchanged: the receiver is a program, and JSON escapes it.
    let (_, json) = first("/json");
    assert_eq!(json["path"], path.as_str());

    // Slack and Mattermost: no control sequence, mention, link or line break survives.
    let (_, slack) = first("/slack");
    let text = slack["text"].as_str().unwrap();
    for forbidden in ["<!here>", "<mailto:", "@channel", "](", "\n", "\x1b"] {
        assert!(!text.contains(forbidden), "{forbidden:?} in {text:?}");
    }
    assert!(
        text.contains("&lt;!here&gt; &lt;mailto:x@\u{2060}evil.example|Reset your password&gt;"),
        "{text}"
    );
    assert!(text.contains(RULE) && text.contains(NAME), "{text}");

    // Teams: an Adaptive Card message, with the same names inert.
    let (_, teams) = first("/teams");
    assert_eq!(teams["type"], "message", "{teams}");
    let attachment = &teams["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &attachment["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert!(card["version"].as_str().unwrap().starts_with("1."));
    assert_eq!(card["body"][0]["type"], "TextBlock");
    let mut texts = Vec::new();
    strings(card, &mut texts);
    assert!(texts.iter().any(|t| t.contains("[Reset]")), "{texts:?}");
    for text in &texts {
        assert!(
            !text.contains("](") && raw_controls(text).is_empty(),
            "{text:?}"
        );
    }

    // Mail: the subject is one line, the body shows no forged line, and the keys are there.
    let mail = wait_for("the mail", LONG, || {
        smtp.messages()
            .into_iter()
            .find(|m| m["subject"].as_str().is_some_and(|s| s.contains(RULE)))
    });
    let subject = mail["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[bannin] HIGH") && subject.ends_with(NAME),
        "{subject}"
    );
    let body = mail["body"].as_str().unwrap();
    assert!(
        !body.lines().any(|l| l.starts_with("2026-11-29T00:00:00")),
        "{body}"
    );
    assert!(body.contains(&alert_id), "{body}");
    let headers = mail["headers"].as_array().unwrap();
    let mail_header = |name: &str| {
        headers
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .and_then(|h| h[1].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        mail_header("x-bannin-alert-id").as_deref(),
        Some(alert_id.as_str())
    );
    let mail_key = mail_header("x-bannin-delivery-id").unwrap();
    assert!(body.contains(&mail_key), "{body}");
}

#[test]
fn a_delivery_resent_after_a_crash_carries_the_same_idempotency_key() {
    use std::io::Write;
    // The first request hangs until the collector is gone; later ones are answered at once.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, Vec<u8>)>(16);
    let tx = std::sync::Mutex::new(tx);
    let first = std::sync::atomic::AtomicBool::new(true);
    let receiver = HttpReceiver::scripted(0, move |request, stream| {
        let _ = tx
            .lock()
            .unwrap()
            .send((request.head.clone(), request.body.clone()));
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(stream, &mut buf); // returns when the peer dies
            return;
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    });
    let mut host = host(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\ntimeout = \"5m\"\n",
        receiver.url("/hook")
    ));
    export_and_delete_plain(&host);
    let (head1, body1) = rx.recv_timeout(LONG).expect("the first attempt");
    host.collector.restart();
    let (head2, body2) = rx
        .recv_timeout(LONG)
        .expect("the attempt after the restart");

    let key1 = header(&head1, "idempotency-key").expect("a key on the first attempt");
    assert_eq!(header(&head2, "idempotency-key"), Some(key1));
    let (body1, body2): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&body1).unwrap(),
        serde_json::from_slice(&body2).unwrap(),
    );
    assert_eq!(body1["id"], body2["id"]);
    assert_eq!(body1["delivery_id"], key1);
    assert_eq!(body2["delivery_id"], key1);
}

// ---------------------------------------------------------------------------------------------
// Enrollment

/// A TLS channel to the collector that pins its CA, opened from `local` (any 127.0.0.0/8 address
/// is this host), so a test can play several remote addresses.
async fn channel_from(collector: &Collector, local: std::net::IpAddr) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let ca = std::fs::read_to_string(collector.ca()).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(bannin::pki::SERVER_NAME);
    Endpoint::from_shared(collector.url())
        .unwrap()
        .local_address(Some(local))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An enrollment request with a real key and CSR, or a garbage CSR when `csr` is false.
fn enroll_request(token: &str, name: &str, csr: bool) -> bannin::pb::EnrollRequest {
    let (_, csr_der) = bannin::pki::client_key_and_csr(name).unwrap();
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    bannin::pb::EnrollRequest {
        token: token.to_string(),
        name: name.to_string(),
        hostname: "h1".to_string(),
        csr_der: if csr { csr_der } else { b"not a CSR".to_vec() },
        signing_public_key: key.verifying_key().to_bytes().to_vec(),
    }
}

fn enroll_agent(
    collector: &Collector,
    state: &Path,
    token: &str,
    name: &str,
) -> std::process::Output {
    run_output(
        Command::new(AGENT)
            .arg("enroll")
            .arg("--collector")
            .arg(collector.url())
            .arg("--ca-cert")
            .arg(collector.ca())
            .arg("--state-dir")
            .arg(state)
            .arg("--name")
            .arg(name)
            .env("BANNIN_TOKEN", token),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_checks_the_token_before_it_signs_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let mut client = bannin::pb::enrollment_client::EnrollmentClient::new(
        channel_from(&collector, "127.0.0.1".parse().unwrap()).await,
    );
    // A CSR the collector cannot sign: refused for the token, never for the CSR.
    let status = client
        .enroll(enroll_request("guessed-token", "web1", false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("token"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guessed_token_flood_is_rate_limited_summarized_and_does_not_slow_honest_enrollment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("collector"));
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut client = bannin::pb::enrollment_client::EnrollmentClient::new(
        channel_from(&collector, attacker).await,
    );
    let token = collector.token();
    let flood = tokio::spawn(async move {
        let mut codes = Vec::new();
        for i in 0..300 {
            let request = enroll_request(&format!("guess-{i}"), "web1", true);
            codes.push(client.enroll(request).await.unwrap_err().code());
        }
        codes
    });
    // Honest enrollment from another address while the flood runs.
    #[expect(
        clippy::disallowed_methods,
        reason = "a bound on how long the flood may delay an honest enrollment, in real time"
    )]
    let started = std::time::Instant::now();
    let state = tmp.path().join("agent");
    let output = tokio::task::block_in_place(|| enroll_agent(&collector, &state, &token, "web1"));
    assert!(output.status.success(), "{output:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "honest enrollment took {:?}",
        started.elapsed()
    );
    let codes = flood.await.unwrap();
    let limited = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert!(
        limited >= 250,
        "only {limited} of 300 guesses were rate-limited: {codes:?}"
    );
    assert!(
        codes[..3]
            .iter()
            .all(|c| *c == tonic::Code::PermissionDenied),
        "{codes:?}"
    );

    // The log names the flood in a summary instead of a line per guess.
    let summary = tokio::task::block_in_place(|| {
        collector
            .proc
            .wait_line("enrollment attempts refused", Duration::from_secs(90))
    });
    assert!(summary.contains("127.0.0.2"), "{summary}");
    let per_guess = collector
        .proc
        .log()
        .lines()
        .filter(|l| l.contains("enrollment refused"))
        .count();
    assert!(per_guess <= 10, "{per_guess} log lines for 300 guesses");
    collector.proc.terminate();
}

#[test]
fn an_enrolled_name_is_not_given_twice_until_its_agent_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let first = tmp.path().join("first");
    collector.enroll(&first, "web1");
    let first_id = agent_id(&first);

    // Same name, any case, from another state directory: refused, and the token is not spent.
    let token = collector.token();
    let second = tmp.path().join("second");
    for name in ["web1", "WEB1"] {
        let output = enroll_agent(&collector, &second, &token, name);
        assert!(!output.status.success(), "{name} enrolled twice");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("already enrolled") && stderr.contains(&first_id),
            "{stderr}"
        );
    }
    let agents = run_ok(
        Command::new(COLLECTOR)
            .args(["agents", "--format", "json", "--data-dir"])
            .arg(&collector.dir),
    );
    assert_eq!(agents.lines().count(), 1, "{agents}");

    // Revoked, the name is free again, with the same token.
    run_ok(
        Command::new(COLLECTOR)
            .args(["revoke", "--agent", &first_id, "--data-dir"])
            .arg(&collector.dir),
    );
    let output = enroll_agent(&collector, &second, &token, "web1");
    assert!(output.status.success(), "{output:?}");
    assert_ne!(agent_id(&second), first_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enrollment_name_with_control_characters_is_refused_without_spending_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let token = collector.token();
    let mut client = bannin::pb::enrollment_client::EnrollmentClient::new(
        channel_from(&collector, "127.0.0.1".parse().unwrap()).await,
    );
    for name in [
        "web1\n2026-11-29  db-prod-1",
        "web1\x1b]0;pwned\x07",
        "web\u{202e}1",
    ] {
        let status = client
            .enroll(enroll_request(&token, name, true))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("name"), "{status:?}");
    }
    client
        .enroll(enroll_request(&token, "web1", true))
        .await
        .expect("the token still enrolls");
}
