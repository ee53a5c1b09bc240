//! Alert delivery through the sink workers against real receivers from tests/support/: the HTTP
//! receiver (`delivery.rs`), and the Python sinks for HTTPS and for plain, STARTTLS and implicit TLS
//! mail (`tls_and_email.rs`). What one alert renders to is pinned by the
//! golden files (`collector/golden.rs`); configuration, escaping and subject tests sit beside their
//! code.

mod delivery;
mod tls_and_email;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bannin::time::Timestamp;
use rusqlite::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

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

// The suites' one HTTP receiver, shared with the integration tests.
#[allow(dead_code)] // Each suite uses a part of it.
#[path = "../../../tests/support/http_receiver.rs"]
mod http_receiver;
use http_receiver::{HttpReceiver, Request};

/// Waits until `receiver` has had `count` requests, yielding to the sink workers in between.
async fn wait_requests(receiver: &HttpReceiver, count: usize) -> Vec<Request> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let requests = receiver.requests();
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
