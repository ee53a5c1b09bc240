//! Alert delivery through the sink workers against real receivers: an HTTP server on 127.0.0.1 that
//! records requests (`delivery.rs`), and the Python sinks of tests/support/ for HTTPS and plain,
//! STARTTLS and implicit TLS mail (`tls_and_email.rs`). What one alert renders to is pinned by the
//! golden files (`collector/golden.rs`); configuration, escaping and subject tests sit beside their
//! code.

mod delivery;
mod tls_and_email;

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

pub(super) fn alert(id: &str, count: u64) -> Alert {
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

#[test]
fn a_delivery_key_is_stable_per_payload_version_and_sink() {
    let sink = SinkId("hook".into());
    let key = Delivery::new("alert-1", &sink, 1);
    assert_eq!(key, Delivery::new("alert-1", &sink, 1));
    assert_ne!(key, Delivery::new("alert-1", &sink, 2));
    assert_ne!(key, Delivery::new("alert-1", &SinkId("other".into()), 1));
}
