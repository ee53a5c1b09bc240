//! Alert delivery against real receivers: an HTTP server on 127.0.0.1 that records requests, and an
//! aiosmtpd SMTP server (tests/support/smtp_sink.py) for plain, STARTTLS and implicit TLS mail.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bannin::time::Timestamp;
use rusqlite::Connection;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::config::Settings;
use super::outbox::{self, DeliveryState, DeliveryStatus};
use super::*;
use crate::alert::{Alert, EvidenceRef, Severity};

const DEADLINE: Duration = Duration::from_secs(30);

fn alert(id: &str, count: u64) -> Alert {
    let mut fields = serde_json::Map::new();
    fields.insert("path".into(), "/srv/exports/customers.csv".into());
    fields.insert("size".into(), 104_857_600.into());
    Alert {
        id: id.to_string(),
        rule: "large_export_created_then_deleted".into(),
        severity: Severity::High,
        ts: Timestamp::from_secs(1_790_000_000),
        host: "db1".into(),
        summary: "/srv/exports/customers.csv (100 MiB) was created and deleted within 40s".into(),
        evidence: vec![EvidenceRef {
            agent_id: "agent-1".into(),
            seq: 7,
        }],
        count,
        fields,
    }
}

/// The collector's side of the store: its own connection, alerts enqueued in a transaction.
struct Store {
    path: PathBuf,
    conn: Connection,
    _dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bannin.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        outbox::init_schema(&conn).unwrap();
        Store {
            path,
            conn,
            _dir: dir,
        }
    }

    /// What the collector's writer does: the alert's deliveries in its transaction, then a wake-up.
    fn enqueue(&mut self, hooks: &HooksHandle, alert: &Alert) {
        let (router, notifier) = (hooks.router(), hooks.notifier());
        let tx = self.conn.transaction().unwrap();
        outbox::enqueue(&tx, alert, &router.route(alert)).unwrap();
        tx.commit().unwrap();
        notifier.notify();
    }

    fn status(&self, alert_id: &str) -> Vec<DeliveryStatus> {
        outbox::delivery_status(&self.conn, alert_id).unwrap()
    }

    /// Polls the store until `check` holds for the alert's delivery status.
    async fn wait_status(
        &self,
        alert_id: &str,
        check: impl Fn(&[DeliveryStatus]) -> bool,
    ) -> Vec<DeliveryStatus> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let status = self.status(alert_id);
            if check(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery status never matched: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn settings(toml_text: &str) -> Settings {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        alerts: HooksConfig,
    }
    let file: File = toml::from_str(toml_text).unwrap();
    let mut settings = file.alerts.validate().unwrap();
    // Fast retries keep the tests short; the backoff shape is the same.
    settings.retry.backoff.initial = Duration::from_millis(50);
    settings.retry.backoff.max = Duration::from_millis(300);
    settings
}

#[derive(Debug, Clone)]
struct Request {
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Request {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A minimal HTTP/1.1 server that records every request and answers with scripted status codes
/// (then `fallback`). Stops when dropped.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[u16], fallback: u16) -> Self {
        Self::on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            script,
            fallback,
        )
    }

    fn on(listener: TcpListener, script: &[u16], fallback: u16) -> Self {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    if let Some(request) = read_request(stream, &script, fallback).await {
                        recorded.lock().unwrap().push(request);
                    }
                });
            }
        });
        Receiver {
            addr,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} requests arrived",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(
    mut stream: TcpStream,
    script: &Mutex<VecDeque<u16>>,
    fallback: u16,
) -> Option<Request> {
    let mut buffer = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let mut content_type = None;
    let mut length = 0;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = Some(value.trim().to_string()),
                "content-length" => length = value.trim().parse().ok()?,
                _ => {}
            }
        }
    }
    let mut body = buffer[header_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let status = script.lock().unwrap().pop_front().unwrap_or(fallback);
    let response = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Length: 8\r\nConnection: close\r\n\r\nscripted"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    let _ = stream.shutdown().await;
    Some(Request {
        path,
        content_type,
        body,
    })
}

/// A port with nothing listening on it (bound and released), for a receiver that is down.
async fn closed_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

#[tokio::test]
async fn webhooks_receive_json_and_slack_bodies() {
    let receiver = Receiver::start(&[], 200).await;
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [[alerts.webhook]]
        url = "{}"
        [[alerts.webhook]]
        url = "{}"
        format = "slack"
        "#,
        receiver.url("/json"),
        receiver.url("/slack"),
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    let sent = alert("alert-1", 1);
    store.enqueue(&hooks, &sent);

    let requests = receiver.wait_for(2).await;
    let json = requests.iter().find(|r| r.path == "/json").unwrap();
    let slack = requests.iter().find(|r| r.path == "/slack").unwrap();
    assert_eq!(json.content_type.as_deref(), Some("application/json"));
    assert_eq!(slack.content_type.as_deref(), Some("application/json"));
    // The alert object, plus the delivery's idempotency key.
    let mut body = json.json();
    let object = body.as_object_mut().unwrap();
    assert_eq!(object.remove("alert_id").unwrap(), "alert-1");
    let key = object.remove("delivery_id").unwrap();
    assert!(key.as_str().unwrap().starts_with("d-"));
    let received: Alert = serde_json::from_value(body).unwrap();
    assert_eq!(received, sent);
    assert_eq!(json.json()["evidence"][0]["seq"], 7);
    assert_eq!(json.json()["path"], "/srv/exports/customers.csv");
    assert_eq!(
        slack.json()["text"],
        "[bannin] HIGH large_export_created_then_deleted on db1: \
         /srv/exports/customers.csv (100 MiB) was created and deleted within 40s"
    );

    let status = store
        .wait_status("alert-1", |s| {
            s.len() == 2 && s.iter().all(|d| d.state == DeliveryState::Delivered)
        })
        .await;
    assert!(
        status
            .iter()
            .all(|d| d.attempts == 1 && d.delivered_ts.is_some())
    );
    assert!(
        status
            .iter()
            .all(|d| d.sink.0.starts_with("webhook:127.0.0.1#"))
    );
    hooks.shutdown().await.unwrap();
    assert_eq!(receiver.requests().len(), 2, "each sink got the alert once");
}

#[tokio::test]
async fn alerts_go_only_to_sinks_whose_filters_accept_them() {
    let store = Store::new();
    let config: HooksConfig = toml::from_str(
        r#"
        [[webhook]]
        name = "everything"
        url = "http://127.0.0.1:9/all"
        [[webhook]]
        name = "critical-only"
        url = "http://127.0.0.1:9/critical"
        min_severity = "critical"
        [[webhook]]
        name = "exports"
        url = "http://127.0.0.1:9/exports"
        rules = ["large_export_created_then_deleted"]
        "#,
    )
    .unwrap();
    let hooks = spawn(config, store.path.clone()).unwrap();
    let router = hooks.router();
    let names =
        |alert: &Alert| -> Vec<String> { router.route(alert).into_iter().map(|s| s.0).collect() };
    assert_eq!(names(&alert("a", 1)), ["everything", "exports"]);
    let mut other = alert("b", 1);
    other.rule = "sensitive_table_bulk_read".into();
    other.severity = Severity::Critical;
    assert_eq!(names(&other), ["everything", "critical-only"]);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn delivery_waits_for_a_receiver_that_comes_back() {
    let port = closed_port().await;
    let addr = port.local_addr().unwrap();
    drop(port);
    let mut store = Store::new();
    let settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"http://{addr}/hook\"\n"
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));

    let status = store
        .wait_status("alert-1", |s| {
            s.first()
                .is_some_and(|d| d.state == DeliveryState::FailedRetrying && d.attempts >= 2)
        })
        .await;
    let error = status[0].last_error.clone().unwrap();
    assert!(error.contains("connect"), "{error}");

    let receiver = Receiver::on(TcpListener::bind(addr).await.unwrap(), &[], 200);
    let requests = receiver.wait_for(1).await;
    assert_eq!(requests[0].json()["id"], "alert-1");
    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    assert!(status[0].attempts >= 3);
    assert_eq!(status[0].last_error, None);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_503_is_retried_until_accepted() {
    let receiver = Receiver::start(&[503, 503], 200).await;
    let mut store = Store::new();
    let settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\n",
        receiver.url("/")
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));

    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    assert_eq!(status[0].attempts, 3);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.json()["id"] == "alert-1"));
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    // Accepts connections and holds them open without answering.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut store = Store::new();
    let settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"http://{addr}/\"\ntimeout = \"300ms\"\n"
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    let status = store
        .wait_status("alert-1", |s| {
            s[0].state == DeliveryState::FailedRetrying && s[0].attempts >= 2
        })
        .await;
    let error = status[0].last_error.clone().unwrap();
    assert!(error.contains("timed out"), "{error}");
    hooks.shutdown().await.unwrap();
    silent.abort();
}

#[tokio::test]
async fn pending_deliveries_survive_a_worker_restart() {
    let port = closed_port().await;
    let addr = port.local_addr().unwrap();
    drop(port);
    let mut store = Store::new();
    let config = format!("[[alerts.webhook]]\nurl = \"http://{addr}/hook\"\n");
    let first = spawn_with(settings(&config), store.path.clone()).unwrap();
    store.enqueue(&first, &alert("alert-1", 1));
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::FailedRetrying)
        .await;
    first.shutdown().await.unwrap();

    // A new worker with its own connection finds the row on disk.
    let receiver = Receiver::on(TcpListener::bind(addr).await.unwrap(), &[], 200);
    let second = spawn_with(settings(&config), store.path.clone()).unwrap();
    let requests = receiver.wait_for(1).await;
    assert_eq!(requests[0].json()["id"], "alert-1");
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limit_holds_extra_alerts_until_the_window_frees() {
    let receiver = Receiver::start(&[], 200).await;
    let mut store = Store::new();
    let mut settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\nrate_per_minute = 2\n",
        receiver.url("/")
    ));
    // Long enough that a loaded machine cannot stretch the check below past it.
    settings.rate_window = Duration::from_secs(5);
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    for n in 1..=4 {
        store.enqueue(&hooks, &alert(&format!("alert-{n}"), 1));
    }

    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.requests().len(),
        2,
        "the limit lets 2 through per window"
    );
    let held = store.status("alert-4");
    assert_eq!(held[0].state, DeliveryState::Pending);
    assert_eq!(held[0].attempts, 0);

    // Held, not dropped: the rest go out once the window frees, in order.
    let requests = receiver.wait_for(4).await;
    let ids: Vec<_> = requests.iter().map(|r| r.json()["id"].clone()).collect();
    assert_eq!(ids, ["alert-1", "alert-2", "alert-3", "alert-4"]);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_repeat_is_sent_again_at_most_once_a_window() {
    let receiver = Receiver::start(&[], 200).await;
    let mut store = Store::new();
    let mut settings = settings(&format!(
        "[[alerts.webhook]]\nurl = \"{}\"\nrate_per_minute = 0\n",
        receiver.url("/")
    ));
    settings.rate_window = Duration::from_secs(2);
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    receiver.wait_for(1).await;
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;

    store.enqueue(&hooks, &alert("alert-1", 2));
    store.enqueue(&hooks, &alert("alert-1", 3));
    assert_eq!(store.status("alert-1")[0].state, DeliveryState::Pending);
    let requests = receiver.wait_for(2).await;
    assert_eq!(
        requests[1].json()["count"],
        3,
        "the repeat carries the latest count"
    );
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        receiver.requests().len(),
        2,
        "two repeats folded into one message"
    );
    assert_eq!(store.status("alert-1")[0].attempts, 2);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn permanent_rejections_stop_but_429_is_retried() {
    let rejecting = Receiver::start(&[], 400).await;
    let throttling = Receiver::start(&[429, 429, 429], 200).await;
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [alerts.retry]
        permanent_after = 2
        [[alerts.webhook]]
        name = "rejecting"
        url = "{}"
        [[alerts.webhook]]
        name = "throttling"
        url = "{}"
        "#,
        rejecting.url("/"),
        throttling.url("/"),
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));

    let status = store
        .wait_status("alert-1", |s| {
            s.iter()
                .all(|d| matches!(d.state, DeliveryState::Failed | DeliveryState::Delivered))
        })
        .await;
    let rejected = status.iter().find(|d| d.sink.0 == "rejecting").unwrap();
    assert_eq!(rejected.state.as_str(), "failed");
    assert_eq!(rejected.attempts, 2);
    assert!(rejected.last_error.as_deref().unwrap().contains("400"));
    assert_eq!(
        rejected.to_string(),
        "rejecting failed after 2 attempts: HTTP 400 Bad Request: scripted"
    );
    let throttled = status.iter().find(|d| d.sink.0 == "throttling").unwrap();
    assert_eq!(throttled.state, DeliveryState::Delivered);
    assert_eq!(throttled.attempts, 4);
    assert_eq!(rejecting.requests().len(), 2);
    hooks.shutdown().await.unwrap();
}

/// A receiver script from tests/support/ that writes what it receives to DIR/N.json and prints
/// `listening on 127.0.0.1:PORT` when ready; killed when dropped.
struct PyServer {
    port: u16,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl PyServer {
    async fn start(script: &str, args: &[&OsStr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Debian's python3 carries python3-aiosmtpd; a python3 earlier on PATH may not.
        let python = std::env::var("BANNIN_TEST_PYTHON").unwrap_or_else(|_| {
            if Path::new("/usr/bin/python3").exists() {
                "/usr/bin/python3".into()
            } else {
                "python3".into()
            }
        });
        let mut child = tokio::process::Command::new(python)
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/support")
                    .join(script),
            )
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|| panic!("{script} exited before listening"));
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
        PyServer {
            port,
            dir,
            _child: child,
        }
    }

    fn received(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension() == Some(OsStr::new("json")))
            .count()
    }

    async fn wait_for<T: serde::de::DeserializeOwned>(&self, count: usize) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut records = Vec::new();
            for n in 1..=count {
                let path = self.dir.path().join(format!("{n}.json"));
                if let Ok(text) = std::fs::read_to_string(path) {
                    records.push(serde_json::from_str(&text).unwrap());
                }
            }
            if records.len() == count {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} arrived",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The aiosmtpd server of tests/support/smtp_sink.py (mode plain, starttls or implicit).
async fn start_smtp(mode: &str, tls: Option<&Tls>, auth: Option<&str>) -> PyServer {
    let mut args: Vec<&OsStr> = vec![OsStr::new("--mode"), OsStr::new(mode)];
    if let Some(tls) = tls {
        args.extend([OsStr::new("--cert"), tls.cert.as_os_str()]);
        args.extend([OsStr::new("--key"), tls.key.as_os_str()]);
    }
    if let Some(auth) = auth {
        args.extend([OsStr::new("--auth"), OsStr::new(auth)]);
    }
    PyServer::start("smtp_sink.py", &args).await
}

#[derive(Debug, serde::Deserialize)]
struct Mail {
    mail_from: String,
    rcpt_tos: Vec<String>,
    subject: String,
    to: String,
    body: String,
    tls: bool,
    authenticated: bool,
}

#[derive(Debug, serde::Deserialize)]
struct HttpsPost {
    path: String,
    content_type: Option<String>,
    body: String,
}

struct Tls {
    cert: PathBuf,
    key: PathBuf,
}

fn self_signed(dir: &Path) -> Tls {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Tls { cert, key }
}

#[tokio::test]
async fn an_https_webhook_behind_a_private_ca_is_trusted_only_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let https = PyServer::start(
        "https_sink.py",
        &[
            OsStr::new("--cert"),
            tls.cert.as_os_str(),
            OsStr::new("--key"),
            tls.key.as_os_str(),
        ],
    )
    .await;
    let mut store = Store::new();
    let config = |ca: &str| {
        format!(
            "[[alerts.webhook]]\nurl = \"https://127.0.0.1:{}/hooks/abc\"\nformat = \"slack\"\n{ca}\n",
            https.port
        )
    };

    let untrusting = spawn_with(settings(&config("")), store.path.clone()).unwrap();
    store.enqueue(&untrusting, &alert("alert-1", 1));
    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::FailedRetrying)
        .await;
    let error = status[0].last_error.clone().unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    untrusting.shutdown().await.unwrap();
    assert_eq!(https.received(), 0);

    let ca = format!("ca_file = \"{}\"", tls.cert.display());
    let trusting = spawn_with(settings(&config(&ca)), store.path.clone()).unwrap();
    let posts: Vec<HttpsPost> = https.wait_for(1).await;
    assert_eq!(posts[0].path, "/hooks/abc");
    assert_eq!(posts[0].content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&posts[0].body).unwrap();
    assert!(body["text"].as_str().unwrap().starts_with("[bannin] HIGH "));
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    trusting.shutdown().await.unwrap();
}

fn assert_alert_mail(mail: &Mail) {
    assert_eq!(
        mail.subject,
        "[bannin] HIGH large_export_created_then_deleted on db1"
    );
    assert_eq!(mail.mail_from, "bannin@example.jp");
    assert_eq!(mail.rcpt_tos, ["soc@example.jp", "dba@example.jp"]);
    assert!(mail.to.contains("soc@example.jp") && mail.to.contains("dba@example.jp"));
    assert!(
        mail.body
            .starts_with("/srv/exports/customers.csv (100 MiB) was created and deleted within 40s"),
        "{}",
        mail.body
    );
    let json_start = mail.body.find('{').unwrap();
    let json: Alert = serde_json::from_str(mail.body[json_start..].trim()).unwrap();
    assert_eq!(json, alert("alert-1", 1));
    assert!(mail.body.contains("\n  \"rule\": "), "pretty-printed JSON");
}

#[tokio::test]
async fn email_reaches_every_recipient_over_a_plain_relay() {
    let smtp = start_smtp("plain", None, None).await;
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [alerts.email]
        smtp = "smtp+plain://127.0.0.1:{}"
        from = "bannin@example.jp"
        to = ["soc@example.jp", "dba@example.jp"]
        "#,
        smtp.port
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(!mails[0].tls);
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn email_over_starttls_with_auth_trusts_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let smtp = start_smtp("starttls", Some(&tls), Some("bannin:s3cret")).await;
    let password_file = dir.path().join("smtp-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut store = Store::new();
    let settings = settings(&format!(
        r#"
        [alerts.email]
        smtp = "smtp://127.0.0.1:{}"
        ca_file = "{}"
        username = "bannin"
        password_file = "{}"
        from = "bannin@example.jp"
        to = ["soc@example.jp", "dba@example.jp"]
        "#,
        smtp.port,
        tls.cert.display(),
        password_file.display()
    ));
    let hooks = spawn_with(settings, store.path.clone()).unwrap();
    store.enqueue(&hooks, &alert("alert-1", 1));
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(mails[0].tls, "sent after STARTTLS");
    assert!(mails[0].authenticated);
    hooks.shutdown().await.unwrap();
}

#[tokio::test]
async fn email_with_a_wrong_password_keeps_retrying_until_the_password_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let smtp = start_smtp("starttls", Some(&tls), Some("bannin:s3cret")).await;
    let mut store = Store::new();
    let config = |password: &str| {
        format!(
            r#"
            [alerts.retry]
            permanent_after = 1
            [alerts.email]
            smtp = "smtp://127.0.0.1:{}"
            ca_file = "{}"
            username = "bannin"
            password = "{password}"
            from = "bannin@example.jp"
            to = ["soc@example.jp", "dba@example.jp"]
            "#,
            smtp.port,
            tls.cert.display()
        )
    };
    let wrong = spawn_with(settings(&config("wrong")), store.path.clone()).unwrap();
    store.enqueue(&wrong, &alert("alert-1", 1));
    // Rejected with 535 twice, yet not given up although permanent_after is 1.
    let status = store.wait_status("alert-1", |s| s[0].attempts >= 2).await;
    assert_eq!(status[0].state, DeliveryState::FailedRetrying);
    let error = status[0].last_error.clone().unwrap();
    assert!(error.contains("535"), "{error}");
    wrong.shutdown().await.unwrap();

    let fixed = spawn_with(settings(&config("s3cret")), store.path.clone()).unwrap();
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(mails[0].authenticated);
    fixed.shutdown().await.unwrap();
}

#[tokio::test]
async fn email_over_implicit_tls_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = self_signed(dir.path());
    let smtp = start_smtp("implicit", Some(&tls), None).await;
    let mut store = Store::new();
    let config = |ca: &str| {
        format!(
            r#"
            [alerts.email]
            smtp = "smtps://127.0.0.1:{}"
            {ca}
            from = "bannin@example.jp"
            to = ["soc@example.jp", "dba@example.jp"]
            "#,
            smtp.port
        )
    };

    // Without the CA the certificate does not verify: nothing is sent, the delivery waits.
    let untrusting = spawn_with(settings(&config("")), store.path.clone()).unwrap();
    store.enqueue(&untrusting, &alert("alert-1", 1));
    let status = store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::FailedRetrying)
        .await;
    assert!(status[0].last_error.is_some());
    untrusting.shutdown().await.unwrap();
    assert_eq!(smtp.received(), 0);

    let ca = format!("ca_file = \"{}\"", tls.cert.display());
    let trusting = spawn_with(settings(&config(&ca)), store.path.clone()).unwrap();
    let mails: Vec<Mail> = smtp.wait_for(1).await;
    assert_alert_mail(&mails[0]);
    assert!(mails[0].tls);
    store
        .wait_status("alert-1", |s| s[0].state == DeliveryState::Delivered)
        .await;
    trusting.shutdown().await.unwrap();
}

#[test]
fn the_alerts_section_parses_with_defaults_and_rejects_unknown_keys() {
    let config: HooksConfig = toml::from_str(
        r#"
        [[webhook]]
        url = "https://hooks.example/T000/B000/XXXX"
        format = "slack"
        min_severity = "high"
        rules = ["large_export_created_then_deleted"]
        rate_per_minute = 20
        timeout = "5s"

        [email]
        smtp = "smtp://mail.example:587"
        username = "bannin"
        password = "pw"
        from = "bannin@example.jp"
        to = ["soc@example.jp"]

        [retry]
        initial = "1s"
        max = "10m"
        "#,
    )
    .unwrap();
    let settings = config.validate().unwrap();
    assert_eq!(settings.sinks.len(), 2);
    assert!(
        !settings.sinks[0].id.0.contains("T000"),
        "sink names hide webhook paths"
    );
    assert_eq!(settings.retry.backoff.max, Duration::from_secs(600));
    assert_eq!(settings.retry.permanent_after, 5);
    match &settings.sinks[1].kind {
        config::SinkKind::Email(email) => {
            assert_eq!(email.port, 587);
            assert_eq!(email.tls, config::SmtpTls::Starttls);
            assert_eq!(email.credentials.as_ref().unwrap().0, "bannin");
        }
        other => panic!("expected e-mail, got {other:?}"),
    }

    let error =
        toml::from_str::<HooksConfig>("[[webhook]]\nurl = \"http://x/\"\nformta = \"json\"\n")
            .unwrap_err()
            .to_string();
    assert!(error.contains("formta"), "{error}");

    let defaults = HooksConfig::default().validate().unwrap();
    assert!(defaults.sinks.is_empty());
}

#[test]
fn invalid_entries_are_refused_with_their_key() {
    let refuse = |text: &str| -> String {
        toml::from_str::<HooksConfig>(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert!(refuse("[[webhook]]\nurl = \"ftp://x/\"\n").contains("alerts.webhook[0].url"));
    assert!(
        refuse("[email]\nsmtp = \"smtps://m:465\"\ntls = \"none\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n")
            .contains("alerts.email.tls")
    );
    assert!(
        refuse("[email]\nsmtp = \"smtp://m\"\nfrom = \"a@b.c\"\nto = []\n")
            .contains("alerts.email.to")
    );
    assert!(
        refuse(
            "[email]\nsmtp = \"smtp://m\"\nusername = \"u\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n"
        )
        .contains("alerts.email.username")
    );
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("password");
    std::fs::write(&loose, "pw\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = refuse(&format!(
            "[email]\nsmtp = \"smtp://m\"\nusername = \"u\"\npassword_file = \"{}\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n",
            loose.display()
        ));
        assert!(error.contains("chmod 600"), "{error}");
    }
    let same_url = "[[webhook]]\nurl = \"http://x/\"\n[[webhook]]\nurl = \"http://x/\"\n";
    assert!(refuse(same_url).contains("two sinks"));
}

#[test]
fn a_store_without_an_outbox_has_no_deliveries_to_show() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bannin.db");
    Connection::open(&path).unwrap();
    let reader =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    assert_eq!(outbox::delivery_status(&reader, "alert-1").unwrap(), []);
}

#[test]
fn cli_webhooks_are_added_once() {
    let mut config: HooksConfig = toml::from_str("[[webhook]]\nurl = \"http://a/\"\n").unwrap();
    config.add_cli_webhooks(["http://a/".to_string(), "http://b/".to_string()]);
    let urls: Vec<_> = config.webhook.iter().map(|w| w.url.as_str()).collect();
    assert_eq!(urls, ["http://a/", "http://b/"]);
    assert_eq!(config.webhook[1].format, config::WebhookFormat::Json);
    assert_eq!(config.validate().unwrap().sinks.len(), 2);
}

#[test]
fn chat_text_escapes_slack_and_mattermost_markup() {
    let text = webhook::slack_escape(
        "<!here> <mailto:x@evil.example|Reset> @channel [Reset](evil.example) a&b\n2026 \x1b[2J",
    );
    assert_eq!(
        text,
        "&lt;!here&gt; &lt;mailto:x@\u{2060}evil.example|Reset&gt; @\u{2060}channel \
         [Reset]\u{2060}(evil.example) a&amp;b\\n2026 \\x1b[2J"
    );
}

#[test]
fn teams_text_parts_links_and_template_functions() {
    assert_eq!(
        webhook::teams_escape("[Reset](evil.example) {{DATE(2017-02-14T06:08:39Z)}}\r\n"),
        "[Reset]\u{2060}(evil.example) {\u{2060}{DATE(2017-02-14T06:08:39Z)}}\\r\\n"
    );
}

#[test]
fn the_mail_subject_stays_one_line() {
    let mut hostile = alert("alert-1", 1);
    hostile.host = "db1\r\nBcc: x@evil.example".into();
    assert_eq!(
        email::subject(&hostile),
        "[bannin] HIGH large_export_created_then_deleted on db1\\r\\nBcc: x@evil.example"
    );
}

#[test]
fn a_delivery_key_is_stable_per_payload_version_and_sink() {
    let sink = SinkId("hook".into());
    let key = Delivery::new("alert-1", &sink, 1);
    assert_eq!(key, Delivery::new("alert-1", &sink, 1));
    assert_ne!(key, Delivery::new("alert-1", &sink, 2));
    assert_ne!(key, Delivery::new("alert-1", &SinkId("other".into()), 1));
}
