//! Prometheus text metrics and `/healthz` on a small HTTP listener (`[metrics] listen`).
//!
//! Counters live in one process-wide registry, as Prometheus client libraries keep theirs: the
//! services bump them where things happen without carrying a handle. Gauges about agents are read from
//! the store at scrape time, so they are true even for changes made by other processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bannin::time::Timestamp;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::service::ServiceError;
use crate::store;

/// `[metrics]`: where the HTTP endpoint listens.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// e.g. "127.0.0.1:9464"; unset: no metrics endpoint. `serve --metrics-listen` overrides it.
    pub listen: Option<String>,
}

#[derive(Default)]
struct Registry {
    events_ingested: AtomicU64,
    batches_accepted: AtomicU64,
    batches_refused: Mutex<BTreeMap<&'static str, u64>>,
    verification_failures: AtomicU64,
    query_calls: AtomicU64,
    queries_refused: AtomicU64,
    retention_events: AtomicU64,
    retention_batches: AtomicU64,
    detection_state_evicted: AtomicU64,
    alert_store_failures: AtomicU64,
    /// The last scrape's (time, events) for the ingest rate.
    last_scrape: Mutex<Option<(tokio::time::Instant, u64)>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

pub fn batch_accepted(inserted: u32) {
    REGISTRY
        .events_ingested
        .fetch_add(u64::from(inserted), Ordering::Relaxed);
    REGISTRY.batches_accepted.fetch_add(1, Ordering::Relaxed);
}

/// A refused batch, counted under its reason ([`ServiceError::refusal`]).
pub fn batch_refused(error: &ServiceError) {
    let refusal = error.refusal();
    if refusal.is_verification_failure() {
        REGISTRY
            .verification_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut map) = REGISTRY.batches_refused.lock() {
        *map.entry(refusal.reason).or_insert(0) += 1;
    }
}

pub fn query_call(refused: bool) {
    REGISTRY.query_calls.fetch_add(1, Ordering::Relaxed);
    if refused {
        REGISTRY.queries_refused.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn pruned(batches: u64, events: u64) {
    REGISTRY
        .retention_batches
        .fetch_add(batches, Ordering::Relaxed);
    REGISTRY
        .retention_events
        .fetch_add(events, Ordering::Relaxed);
}

/// Detection state the limits pushed out (each entry may be a missed alert).
pub fn detection_state_evicted(entries: u64) {
    REGISTRY
        .detection_state_evicted
        .fetch_add(entries, Ordering::Relaxed);
}

/// A failed attempt to store alerts (retried until it succeeds).
pub fn alert_store_failed() {
    REGISTRY
        .alert_store_failures
        .fetch_add(1, Ordering::Relaxed);
}

/// Gauges read from the store at scrape time: agents, and alert deliveries from the hooks' outbox
/// (durable, so the numbers survive restarts and count deliveries made by any process).
struct AgentGauges {
    by_status: BTreeMap<String, u64>,
    enrolled: u64,
    spool: Vec<(String, String, u64, u64)>,
    deliveries: Vec<store::investigate::DeliveryCount>,
}

fn agent_gauges(
    data_dir: &std::path::Path,
    silent_after: std::time::Duration,
) -> Option<AgentGauges> {
    let conn = store::open_reader(data_dir).ok()?;
    let rows = store::query::agents(&conn, Timestamp::now(), silent_after).ok()?;
    let mut by_status = BTreeMap::new();
    for status in ["active", "silent", "never_seen", "revoked"] {
        by_status.insert(status.to_string(), 0);
    }
    for row in &rows {
        *by_status.entry(row.status.clone()).or_insert(0) += 1;
    }
    Some(AgentGauges {
        enrolled: rows.len() as u64,
        by_status,
        spool: rows
            .iter()
            .map(|r| {
                (
                    r.agent_id.clone(),
                    r.name.clone(),
                    r.spool_events,
                    r.spool_bytes,
                )
            })
            .collect(),
        // The agents' gauges stay true when the outbox cannot be read; the failure is logged.
        deliveries: store::investigate::delivery_counts(&conn).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read alert delivery counts for the metrics");
            Vec::new()
        }),
    })
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text (Prometheus text format 0.0.4).
fn render(gauges: Option<&AgentGauges>) -> String {
    let r = &*REGISTRY;
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    let events = r.events_ingested.load(Ordering::Relaxed);
    counter(
        &mut out,
        "bannin_ingest_events_total",
        "Events committed to the store.",
        events,
    );
    let rate = match r.last_scrape.lock() {
        Ok(mut last) => {
            let now = tokio::time::Instant::now();
            let rate = match *last {
                Some((then, before)) if now > then => {
                    events.saturating_sub(before) as f64 / (now - then).as_secs_f64()
                }
                _ => 0.0,
            };
            *last = Some((now, events));
            rate
        }
        Err(_) => 0.0,
    };
    let _ = writeln!(
        out,
        "# HELP bannin_ingest_events_per_second Events committed per second since the previous scrape.\n# TYPE bannin_ingest_events_per_second gauge\nbannin_ingest_events_per_second {rate:.3}"
    );
    counter(
        &mut out,
        "bannin_ingest_batches_total",
        "Batches accepted and committed.",
        r.batches_accepted.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP bannin_ingest_batches_refused_total Batches refused, by reason.\n# TYPE bannin_ingest_batches_refused_total counter"
    );
    if let Ok(map) = r.batches_refused.lock() {
        for (reason, count) in map.iter() {
            let _ = writeln!(
                out,
                "bannin_ingest_batches_refused_total{{reason=\"{reason}\"}} {count}"
            );
        }
    }
    counter(
        &mut out,
        "bannin_verification_failures_total",
        "Batches whose signature or chain did not verify, or that forked a stored chain.",
        r.verification_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "bannin_query_calls_total",
        "Calls to the operator query service.",
        r.query_calls.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "bannin_query_calls_refused_total",
        "Query calls refused (not an operator, revoked or unknown).",
        r.queries_refused.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "bannin_retention_events_deleted_total",
        "Events deleted by retention.",
        r.retention_events.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "bannin_retention_batches_deleted_total",
        "Signed batches deleted by retention.",
        r.retention_batches.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "bannin_detection_state_evicted_total",
        "Detection state entries pushed out by [detection.limits]; each raised detection-state-evicted.",
        r.detection_state_evicted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "bannin_alert_store_failures_total",
        "Failed attempts to store alerts with their deliveries (each is retried).",
        r.alert_store_failures.load(Ordering::Relaxed),
    );
    if let Some(g) = gauges {
        let _ = writeln!(
            out,
            "# HELP bannin_agents_enrolled Agents enrolled.\n# TYPE bannin_agents_enrolled gauge\nbannin_agents_enrolled {}",
            g.enrolled
        );
        let _ = writeln!(
            out,
            "# HELP bannin_agents Agents by status: active (heard from recently), silent, never_seen, revoked.\n# TYPE bannin_agents gauge"
        );
        for (status, count) in &g.by_status {
            let _ = writeln!(
                out,
                "bannin_agents{{status=\"{}\"}} {count}",
                escape(status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bannin_agent_spool_events Events waiting in an agent's spool, as it last reported.\n# TYPE bannin_agent_spool_events gauge"
        );
        for (id, name, events, _) in &g.spool {
            let _ = writeln!(
                out,
                "bannin_agent_spool_events{{agent_id=\"{}\",name=\"{}\"}} {events}",
                escape(id),
                escape(name)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bannin_agent_spool_bytes Bytes waiting in an agent's spool, as it last reported.\n# TYPE bannin_agent_spool_bytes gauge"
        );
        for (id, name, _, bytes) in &g.spool {
            let _ = writeln!(
                out,
                "bannin_agent_spool_bytes{{agent_id=\"{}\",name=\"{}\"}} {bytes}",
                escape(id),
                escape(name)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bannin_alert_deliveries Alerts per sink by delivery state (pending, delivered, failed).\n# TYPE bannin_alert_deliveries gauge"
        );
        for d in &g.deliveries {
            let _ = writeln!(
                out,
                "bannin_alert_deliveries{{sink=\"{}\",state=\"{}\"}} {}",
                escape(&d.sink),
                escape(&d.state),
                d.alerts
            );
        }
        let mut per_sink: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for d in &g.deliveries {
            let entry = per_sink.entry(d.sink.as_str()).or_default();
            entry.0 += d.attempts;
            entry.1 += d.failures;
        }
        let _ = writeln!(
            out,
            "# HELP bannin_alert_delivery_attempts_total Alert delivery attempts per sink.\n# TYPE bannin_alert_delivery_attempts_total counter"
        );
        for (sink, (attempts, _)) in &per_sink {
            let _ = writeln!(
                out,
                "bannin_alert_delivery_attempts_total{{sink=\"{}\"}} {attempts}",
                escape(sink)
            );
        }
        let _ = writeln!(
            out,
            "# HELP bannin_alert_delivery_failures_total Failed alert delivery attempts per sink.\n# TYPE bannin_alert_delivery_failures_total counter"
        );
        for (sink, (_, failures)) in &per_sink {
            let _ = writeln!(
                out,
                "bannin_alert_delivery_failures_total{{sink=\"{}\"}} {failures}",
                escape(sink)
            );
        }
        let total: u64 = g.spool.iter().map(|s| s.2).sum();
        let _ = writeln!(
            out,
            "# HELP bannin_spool_backlog_events Events waiting in all agents' spools.\n# TYPE bannin_spool_backlog_events gauge\nbannin_spool_backlog_events {total}"
        );
    }
    out
}

#[derive(Clone)]
struct Scrape {
    data_dir: PathBuf,
    silent_after: std::time::Duration,
}

async fn metrics(State(scrape): State<Scrape>) -> impl IntoResponse {
    let gauges =
        tokio::task::spawn_blocking(move || agent_gauges(&scrape.data_dir, scrape.silent_after))
            .await
            .ok()
            .flatten();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(gauges.as_ref()),
    )
}

async fn healthz(State(scrape): State<Scrape>) -> impl IntoResponse {
    let ok = tokio::task::spawn_blocking(move || {
        store::open_reader(&scrape.data_dir)
            .and_then(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
    }
}

/// Binds the metrics listener; the caller logs and spawns `serve`.
pub async fn bind(listen: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(
    listener: TcpListener,
    data_dir: PathBuf,
    silent_after: std::time::Duration,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(Scrape {
            data_dir,
            silent_after,
        });
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_refusals_by_reason_and_agent_gauges() {
        batch_accepted(5);
        batch_refused(&ServiceError::EmptyBatch);
        batch_refused(&ServiceError::Chain {
            source: bannin::chain::ChainError::BadSignature {
                agent_id: "a".into(),
            },
        });
        let gauges = AgentGauges {
            by_status: BTreeMap::from([("active".to_string(), 1)]),
            enrolled: 1,
            spool: vec![("a-1".into(), "pc\"1".into(), 7, 70)],
            deliveries: vec![store::investigate::DeliveryCount {
                sink: "webhook:soc".into(),
                state: "delivered".into(),
                alerts: 3,
                attempts: 5,
                failures: 2,
            }],
        };
        let text = render(Some(&gauges));
        assert!(text.contains("bannin_ingest_events_total 5"), "{text}");
        assert!(text.contains("bannin_ingest_batches_refused_total{reason=\"empty\"} 1"));
        assert!(text.contains("bannin_verification_failures_total 1"));
        assert!(
            text.contains("bannin_alert_deliveries{sink=\"webhook:soc\",state=\"delivered\"} 3")
        );
        assert!(text.contains("bannin_alert_delivery_failures_total{sink=\"webhook:soc\"} 2"));
        assert!(text.contains("bannin_agent_spool_events{agent_id=\"a-1\",name=\"pc\\\"1\"} 7"));
        assert!(text.contains("bannin_spool_backlog_events 7"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }
}
