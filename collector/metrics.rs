//! Prometheus text metrics and `/healthz` on a small HTTP listener (`[metrics] listen`).
//!
//! Counters live in one process-wide set, as Prometheus client libraries keep theirs: the services
//! bump them where things happen without carrying a handle. Gauges about agents and alert deliveries
//! are read from the store at scrape time, so they are true even for changes made by other processes.
//! Rates are left to the scraper (`rate(bannin_ingest_events_total[1m])`): a rate computed per scrape
//! would be wrong as soon as two scrapers share the endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bannin::time::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Refusal {
    reason: &'static str,
}

/// The collector's own counters. Each `Counter` is a shared handle, so registering them into a
/// scrape's registry reads the live values.
#[derive(Default)]
struct Counters {
    events_ingested: Counter,
    batches_accepted: Counter,
    batches_refused: Family<Refusal, Counter>,
    verification_failures: Counter,
    query_calls: Counter,
    queries_refused: Family<Refusal, Counter>,
    retention_events: Counter,
    retention_batches: Counter,
    detection_state_evicted: Counter,
    alert_store_failures: Counter,
    checkpoints_written: Counter,
    checkpoint_failures: Counter,
}

impl Counters {
    /// Adds every counter to `registry`, in exposition order. Names are given without `_total` and
    /// help without its final period: the encoder adds both.
    fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 10] = [
            (
                "bannin_ingest_events",
                "Events committed to the store",
                &self.events_ingested,
            ),
            (
                "bannin_ingest_batches",
                "Batches accepted and committed",
                &self.batches_accepted,
            ),
            (
                "bannin_verification_failures",
                "Batches whose signature or chain did not verify, or that forked a stored chain",
                &self.verification_failures,
            ),
            (
                "bannin_query_calls",
                "Calls to the operator query service",
                &self.query_calls,
            ),
            (
                "bannin_retention_events_deleted",
                "Events deleted by retention",
                &self.retention_events,
            ),
            (
                "bannin_retention_batches_deleted",
                "Signed batches deleted by retention",
                &self.retention_batches,
            ),
            (
                "bannin_detection_state_evicted",
                "Detection state entries pushed out by [detection.limits]; each raised detection-state-evicted",
                &self.detection_state_evicted,
            ),
            (
                "bannin_alert_store_failures",
                "Failed attempts to store alerts with their deliveries (each is retried)",
                &self.alert_store_failures,
            ),
            (
                "bannin_checkpoints_written",
                "Signed checkpoints written to every configured destination",
                &self.checkpoints_written,
            ),
            (
                "bannin_checkpoint_failures",
                "Checkpoints that could not be taken, written or delivered",
                &self.checkpoint_failures,
            ),
        ];
        let (ingest, rest) = counters.split_at(2);
        let (verification_and_queries, rest) = rest.split_at(2);
        for (name, help, counter) in ingest {
            registry.register(*name, *help, (*counter).clone());
        }
        registry.register(
            "bannin_ingest_batches_refused",
            "Batches refused, by reason",
            self.batches_refused.clone(),
        );
        for (name, help, counter) in verification_and_queries {
            registry.register(*name, *help, (*counter).clone());
        }
        registry.register(
            "bannin_query_calls_refused",
            "Query calls refused or failed, by reason",
            self.queries_refused.clone(),
        );
        for (name, help, counter) in rest {
            registry.register(*name, *help, (*counter).clone());
        }
    }
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

pub fn batch_accepted(inserted: u32) {
    COUNTERS.events_ingested.inc_by(u64::from(inserted));
    COUNTERS.batches_accepted.inc();
}

/// A refused batch, counted under its reason ([`ServiceError::refusal`]).
pub fn batch_refused(error: &ServiceError) {
    let refusal = error.refusal();
    if refusal.is_verification_failure() {
        COUNTERS.verification_failures.inc();
    }
    COUNTERS
        .batches_refused
        .get_or_create(&Refusal {
            reason: refusal.reason,
        })
        .inc();
}

/// A query call, and when it was refused or failed, why ([`QueryError::refusal`]).
///
/// [`QueryError::refusal`]: crate::query::service::QueryError::refusal
pub fn query_call(refused: Option<crate::service::Refusal>) {
    COUNTERS.query_calls.inc();
    if let Some(refusal) = refused {
        COUNTERS
            .queries_refused
            .get_or_create(&Refusal {
                reason: refusal.reason,
            })
            .inc();
    }
}

pub fn pruned(batches: u64, events: u64) {
    COUNTERS.retention_batches.inc_by(batches);
    COUNTERS.retention_events.inc_by(events);
}

/// Detection state the limits pushed out (each entry may be a missed alert).
pub fn detection_state_evicted(entries: u64) {
    COUNTERS.detection_state_evicted.inc_by(entries);
}

/// A failed attempt to store alerts (retried until it succeeds).
pub fn alert_store_failed() {
    COUNTERS.alert_store_failures.inc();
}

pub fn checkpoint_written() {
    COUNTERS.checkpoints_written.inc();
}

pub fn checkpoint_failed() {
    COUNTERS.checkpoint_failures.inc();
}

/// Gauges read from the store at scrape time: agents, and alert deliveries from the hooks' outbox
/// (durable, so the numbers survive restarts and count deliveries made by any process). Encoded in
/// the order of its maps and rows, so a scrape lists series in a stable order.
#[derive(Debug)]
struct StoreGauges {
    by_status: BTreeMap<String, u64>,
    enrolled: u64,
    spool: Vec<SpoolGauge>,
    deliveries: Vec<store::investigate::DeliveryCount>,
}

#[derive(Debug)]
struct SpoolGauge {
    agent_id: String,
    name: String,
    events: u64,
    bytes: u64,
}

fn store_gauges(
    data_dir: &std::path::Path,
    silent_after: std::time::Duration,
) -> Option<StoreGauges> {
    let conn = store::open_reader(data_dir).ok()?;
    let rows = store::query::agents(&conn, Timestamp::now(), silent_after).ok()?;
    let mut by_status = BTreeMap::new();
    for status in ["active", "silent", "never_seen", "revoked"] {
        by_status.insert(status.to_string(), 0);
    }
    for row in &rows {
        *by_status.entry(row.status.clone()).or_insert(0) += 1;
    }
    Some(StoreGauges {
        enrolled: rows.len() as u64,
        by_status,
        spool: rows
            .iter()
            .map(|r| SpoolGauge {
                agent_id: r.agent_id.clone(),
                name: r.name.clone(),
                events: r.spool_events,
                bytes: r.spool_bytes,
            })
            .collect(),
        // The agents' gauges stay true when the outbox cannot be read; the failure is logged.
        deliveries: store::investigate::delivery_counts(&conn).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read alert delivery counts for the metrics");
            Vec::new()
        }),
    })
}

/// One metric and its samples, each a label set and a value.
fn encode_samples<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
    metric_type: prometheus_client::metrics::MetricType,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StoreGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let none: [(&str, &str); 0] = [];
        ConstGauge::new(self.enrolled).encode(encoder.encode_descriptor(
            "bannin_agents_enrolled",
            "Agents enrolled.",
            None,
            Gauge,
        )?)?;
        encode_samples(
            &mut encoder,
            "bannin_agents",
            "Agents by status: active (heard from recently), silent, never_seen, revoked.",
            self.by_status
                .iter()
                .map(|(status, n)| ([("status", status.as_str())], ConstGauge::new(*n))),
            Gauge,
        )?;
        encode_samples(
            &mut encoder,
            "bannin_agent_spool_events",
            "Events waiting in an agent's spool, as it last reported.",
            self.spool.iter().map(|s| {
                (
                    [("agent_id", s.agent_id.as_str()), ("name", s.name.as_str())],
                    ConstGauge::new(s.events),
                )
            }),
            Gauge,
        )?;
        encode_samples(
            &mut encoder,
            "bannin_agent_spool_bytes",
            "Bytes waiting in an agent's spool, as it last reported.",
            self.spool.iter().map(|s| {
                (
                    [("agent_id", s.agent_id.as_str()), ("name", s.name.as_str())],
                    ConstGauge::new(s.bytes),
                )
            }),
            Gauge,
        )?;
        encode_samples(
            &mut encoder,
            "bannin_alert_deliveries",
            "Alerts per sink by delivery state (pending, delivered, failed).",
            self.deliveries.iter().map(|d| {
                (
                    [("sink", d.sink.as_str()), ("state", d.state.as_str())],
                    ConstGauge::new(d.alerts),
                )
            }),
            Gauge,
        )?;
        let mut per_sink: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for d in &self.deliveries {
            let entry = per_sink.entry(d.sink.as_str()).or_default();
            entry.0 += d.attempts;
            entry.1 += d.failures;
        }
        encode_samples(
            &mut encoder,
            "bannin_alert_delivery_attempts",
            "Alert delivery attempts per sink.",
            per_sink
                .iter()
                .map(|(sink, (attempts, _))| ([("sink", *sink)], ConstCounter::new(*attempts))),
            Counter,
        )?;
        encode_samples(
            &mut encoder,
            "bannin_alert_delivery_failures",
            "Failed alert delivery attempts per sink.",
            per_sink
                .iter()
                .map(|(sink, (_, failures))| ([("sink", *sink)], ConstCounter::new(*failures))),
            Counter,
        )?;
        let backlog: u64 = self.spool.iter().map(|s| s.events).sum();
        encode_samples(
            &mut encoder,
            "bannin_spool_backlog_events",
            "Events waiting in all agents' spools.",
            [(none, ConstGauge::new(backlog))],
            Gauge,
        )
    }
}

/// The exposition text (Prometheus text format 0.0.4): the counters, then, when the store could be
/// read, its gauges.
fn render(counters: &Counters, store: Option<StoreGauges>) -> String {
    let mut registry = Registry::default();
    counters.register(&mut registry);
    if let Some(gauges) = store {
        registry.register_collector(Box::new(gauges));
    }
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would leave the text cut short, which a
    // scraper reports.
    if let Err(error) = prometheus_text::encode(&mut text, &registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    text
}

#[derive(Clone)]
struct Scrape {
    data_dir: PathBuf,
    silent_after: std::time::Duration,
}

async fn metrics(State(scrape): State<Scrape>) -> impl IntoResponse {
    let gauges =
        tokio::task::spawn_blocking(move || store_gauges(&scrape.data_dir, scrape.silent_after))
            .await
            .ok()
            .flatten();
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        render(&COUNTERS, gauges),
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

    fn gauges() -> StoreGauges {
        StoreGauges {
            by_status: BTreeMap::from([("active".to_string(), 1), ("silent".to_string(), 0)]),
            enrolled: 1,
            spool: vec![SpoolGauge {
                agent_id: "a-1".into(),
                name: "pc\"1".into(),
                events: 7,
                bytes: 70,
            }],
            deliveries: vec![store::investigate::DeliveryCount {
                sink: "webhook:soc".into(),
                state: "delivered".into(),
                alerts: 3,
                attempts: 5,
                failures: 2,
            }],
        }
    }

    #[test]
    fn exposition_names_refusals_by_reason_and_agent_gauges() {
        let counters = Counters::default();
        counters.events_ingested.inc_by(5);
        for reason in ["empty", "bad_signature", "empty"] {
            counters
                .batches_refused
                .get_or_create(&Refusal { reason })
                .inc();
        }
        let text = render(&counters, Some(gauges()));
        assert!(text.contains("bannin_ingest_events_total 5\n"), "{text}");
        assert!(text.contains("bannin_ingest_batches_refused_total{reason=\"empty\"} 2\n"));
        assert!(text.contains("bannin_ingest_batches_refused_total{reason=\"bad_signature\"} 1\n"));
        assert!(
            text.contains("bannin_alert_deliveries{sink=\"webhook:soc\",state=\"delivered\"} 3")
        );
        assert!(text.contains("bannin_alert_delivery_failures_total{sink=\"webhook:soc\"} 2"));
        assert!(text.contains("bannin_agent_spool_events{agent_id=\"a-1\",name=\"pc\\\"1\"} 7"));
        assert!(text.contains("bannin_spool_backlog_events 7"));
        assert!(!text.contains("per_second"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }

    /// The whole exposition of a collector that has ingested and refused batches, with one agent
    /// and one alert sink.
    #[test]
    fn exposition_matches_its_golden_file() {
        let counters = Counters::default();
        counters.events_ingested.inc_by(21);
        counters.batches_accepted.inc_by(3);
        counters
            .batches_refused
            .get_or_create(&Refusal {
                reason: "bad_signature",
            })
            .inc();
        counters.verification_failures.inc();
        counters.query_calls.inc_by(4);
        counters
            .queries_refused
            .get_or_create(&Refusal { reason: "revoked" })
            .inc();
        counters.retention_events.inc_by(15);
        counters.retention_batches.inc_by(2);
        counters.detection_state_evicted.inc_by(6);
        counters.alert_store_failures.inc();
        crate::golden::assert_golden("metrics.txt", &render(&counters, Some(gauges())));
    }

    #[test]
    fn the_process_counters_count_what_the_services_report() {
        let before = COUNTERS.verification_failures.get();
        batch_refused(&ServiceError::Chain {
            source: bannin::chain::ChainError::BadSignature {
                agent_id: "a".into(),
            },
        });
        batch_accepted(5);
        query_call(Some(
            crate::query::service::QueryError::Revoked { name: "o".into() }.refusal(),
        ));
        assert!(COUNTERS.verification_failures.get() > before);
        let text = render(&COUNTERS, None);
        assert!(
            text.contains("bannin_query_calls_refused_total{reason=\"revoked\"} "),
            "{text}"
        );
        assert!(
            text.contains("bannin_ingest_batches_refused_total{reason=\"bad_signature\"} "),
            "{text}"
        );
        assert!(!text.contains("bannin_agents_enrolled"), "{text}");
    }
}
