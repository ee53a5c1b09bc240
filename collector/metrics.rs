//! Prometheus text metrics and `/healthz` on a small HTTP listener (`[metrics] listen`).
//!
//! Counters live in one process-wide set, as Prometheus client libraries keep theirs: the services
//! bump them where things happen without carrying a handle. Gauges about agents and alert deliveries
//! come from the store, so they are true even for changes made by other processes: the SQLite store
//! is read at scrape time; a PostgreSQL store is measured every [`PG_REFRESH`] on a session of its
//! own, with detection's lag, and scrapes are served from memory, so no rate of scrapes reaches
//! the shared database or waits on it. Rates are left to the scraper
//! (`rate(bannin_ingest_events_total[1m])`): a rate computed per scrape would be wrong as soon as
//! two scrapers share the endpoint.
//!
//! The listener is not a way into the collector: connections are capped in all and per address
//! (the gRPC listener's accept loop), each lives at most [`CONNECTION_LIFETIME`], and hyper's own
//! limits bound a request's head.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::listen::Conn;
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
    batches_packed: Counter,
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
        let counters: [(&str, &str, &Counter); 11] = [
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
                "bannin_ingest_batches_packed",
                "Of the batches accepted, those that came as packed runs of events",
                &self.batches_packed,
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
        let (ingest, rest) = counters.split_at(3);
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

/// An accepted batch; `packed` when it came as packed runs of events.
pub fn batch_accepted(inserted: u32, packed: bool) {
    COUNTERS.events_ingested.inc_by(u64::from(inserted));
    COUNTERS.batches_accepted.inc();
    if packed {
        COUNTERS.batches_packed.inc();
    }
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

/// Detection's lead over a PostgreSQL store, as this collector's leader loop reports it (a SQLite
/// collector always detects, and shows none of these).
#[derive(Default)]
struct Leadership {
    leading: Gauge,
    acquired: Counter,
    lag_alerts: Counter,
}

impl Leadership {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "bannin_detection_leader",
            "1 while this collector holds the detection leader's lock, else 0",
            self.leading.clone(),
        );
        registry.register(
            "bannin_detection_leader_acquired",
            "Times this collector took the detection leader's lock (summed over collectors: leader changes)",
            self.acquired.clone(),
        );
        registry.register(
            "bannin_detection_lag_alerts",
            "detection-lag alerts this collector raised as leader",
            self.lag_alerts.clone(),
        );
    }
}

static LEADERSHIP: LazyLock<Leadership> = LazyLock::new(Leadership::default);

/// This collector took (`true`) or lost the detection leader's lock.
pub fn leading(now: bool) {
    LEADERSHIP.leading.set(i64::from(now));
    if now {
        LEADERSHIP.acquired.inc();
    }
}

pub fn lag_alert_raised() {
    LEADERSHIP.lag_alerts.inc();
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

impl StoreGauges {
    fn new(
        rows: &[store::query::AgentRow],
        deliveries: Vec<store::investigate::DeliveryCount>,
    ) -> StoreGauges {
        let mut by_status = BTreeMap::new();
        for status in ["active", "silent", "never_seen", "revoked"] {
            by_status.insert(status.to_string(), 0);
        }
        for row in rows {
            *by_status.entry(row.status.clone()).or_insert(0) += 1;
        }
        StoreGauges {
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
            deliveries,
        }
    }
}

fn store_gauges(data_dir: &std::path::Path, silent_after: Duration) -> Option<StoreGauges> {
    let conn = store::open_reader(data_dir).ok()?;
    let rows = store::query::agents(&conn, Timestamp::now(), silent_after).ok()?;
    // The agents' gauges stay true when the outbox cannot be read; the failure is logged.
    let deliveries = store::investigate::delivery_counts(&conn).unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read alert delivery counts for the metrics");
        Vec::new()
    });
    Some(StoreGauges::new(&rows, deliveries))
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

/// Detection's lag on a PostgreSQL store ([`crate::leader::Lag`]), as this collector measured it.
#[derive(Debug)]
struct LagGauges(crate::leader::Lag);

impl Collector for LagGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType::Gauge;
        let lag = &self.0;
        ConstGauge::new(lag.waiting_batches).encode(encoder.encode_descriptor(
            "bannin_detection_lag_batches",
            "Committed batches above the detection horizon, waiting for the oldest open writing transaction on the store's server.",
            None,
            Gauge,
        )?)?;
        ConstGauge::new(lag.waiting_events).encode(encoder.encode_descriptor(
            "bannin_detection_lag_events",
            "Events in the batches waiting above the detection horizon.",
            None,
            Gauge,
        )?)?;
        ConstGauge::new(lag.oldest_writer.as_secs_f64()).encode(encoder.encode_descriptor(
            "bannin_detection_oldest_writer_seconds",
            "Age of the oldest open writing transaction on the store's server (any database), 0 when there is none.",
            None,
            Gauge,
        )?)
    }
}

/// Prometheus text format 0.0.4 (no `# EOF` line, so encoded parts can be joined).
fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; an encoder error would leave the text cut short, which a
    // scraper reports.
    if let Err(error) = prometheus_text::encode(&mut text, registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    text
}

/// The exposition text of a SQLite collector: the counters, then, when the store could be read,
/// its gauges.
fn render(counters: &Counters, store: Option<StoreGauges>) -> String {
    let mut registry = Registry::default();
    counters.register(&mut registry);
    if let Some(gauges) = store {
        registry.register_collector(Box::new(gauges));
    }
    encode(&registry)
}

/// The exposition text of a collector on a PostgreSQL store: the counters and detection's lead,
/// then, when a recent measurement is at hand, the store's gauges and detection's lag
/// ([`measured_text`]).
fn render_postgres(counters: &Counters, leadership: &Leadership, measured: Option<&str>) -> String {
    let mut registry = Registry::default();
    counters.register(&mut registry);
    leadership.register(&mut registry);
    let mut text = encode(&registry);
    if let Some(measured) = measured {
        text.push_str(measured);
    }
    text
}

/// One measurement of a PostgreSQL store, encoded once when it is taken.
fn measured_text(store: StoreGauges, lag: crate::leader::Lag) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(store));
    registry.register_collector(Box::new(LagGauges(lag)));
    encode(&registry)
}

/// How often a collector on a PostgreSQL store measures it for the metrics.
pub const PG_REFRESH: Duration = Duration::from_secs(5);
/// A measurement older than this is not served: the gauges go missing (and `/healthz` fails)
/// rather than stay frozen at old values.
const PG_STALE: Duration = Duration::from_secs(20);
/// The metrics session's statement timeout, and the most one measurement may take in all.
const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);
const PG_MEASURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The last measurement of a PostgreSQL store, shared by the measuring task and the scrapes.
#[derive(Clone, Default)]
pub struct PgGauges(Arc<Mutex<Option<Measurement>>>);

/// When a measurement was taken, and its exposition text.
type Measurement = (Instant, Arc<str>);

impl PgGauges {
    fn set(&self, text: String) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((Instant::now(), text.into()));
        }
    }

    /// The last measurement, unless it is older than [`PG_STALE`].
    fn fresh(&self) -> Option<Arc<str>> {
        let last = self.0.lock().ok()?;
        let (at, text) = last.as_ref()?;
        (at.elapsed() < PG_STALE).then(|| text.clone())
    }
}

/// Measures a PostgreSQL store every [`PG_REFRESH`] for as long as the collector runs: agents,
/// alert deliveries, and detection's lag, on a session of its own with a short statement timeout
/// (never one of the ingest pool's). Every collector measures, leader or not, so each one's
/// metrics show the lag whichever of them is scraped, and while none leads.
pub async fn measure_postgres(target: store::pg::Target, silent_after: Duration, gauges: PgGauges) {
    let mut session = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(PG_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let measured = tokio::time::timeout(
            PG_MEASURE_TIMEOUT,
            measure(&target, &mut session, silent_after),
        )
        .await;
        let error = match measured {
            Ok(Ok(text)) => {
                gauges.set(text);
                if failing {
                    tracing::info!("the store answers the metrics' reads again");
                }
                failing = false;
                continue;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {PG_MEASURE_TIMEOUT:?}"),
        };
        // A new session next time: this one may be stuck or gone.
        session = None;
        if !failing {
            tracing::warn!(%error, "cannot measure the store for the metrics; its gauges go missing until it answers");
        }
        failing = true;
    }
}

async fn measure(
    target: &store::pg::Target,
    session: &mut Option<tokio_postgres::Client>,
    silent_after: Duration,
) -> Result<String, store::StoreError> {
    if session
        .as_ref()
        .is_none_or(tokio_postgres::Client::is_closed)
    {
        let client = target.connect().await?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                PG_STATEMENT_TIMEOUT.as_millis()
            ))
            .await?;
        *session = Some(client);
    }
    let Some(client) = session.as_ref() else {
        return Err(store::StoreError::Connect {
            url: target.shown().to_string(),
            reason: "no session".into(),
        });
    };
    let rows = store::pg::read::agents(client, Timestamp::now(), silent_after).await?;
    let deliveries = store::pg::read::delivery_counts(client).await?;
    let lag = crate::leader::lag(client).await?;
    Ok(measured_text(StoreGauges::new(&rows, deliveries), lag))
}

/// What the endpoint reports on.
#[derive(Clone)]
pub enum Source {
    /// A SQLite store, read at each scrape.
    Sqlite {
        data_dir: PathBuf,
        silent_after: Duration,
    },
    /// A PostgreSQL store, measured by [`measure_postgres`].
    Postgres(PgGauges),
}

async fn metrics(State(source): State<Source>) -> impl IntoResponse {
    let text = match source {
        Source::Sqlite {
            data_dir,
            silent_after,
        } => {
            let gauges = tokio::task::spawn_blocking(move || store_gauges(&data_dir, silent_after))
                .await
                .ok()
                .flatten();
            render(&COUNTERS, gauges)
        }
        Source::Postgres(gauges) => {
            render_postgres(&COUNTERS, &LEADERSHIP, gauges.fresh().as_deref())
        }
    };
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
}

async fn healthz(State(source): State<Source>) -> impl IntoResponse {
    let ok = match source {
        Source::Sqlite { data_dir, .. } => tokio::task::spawn_blocking(move || {
            store::open_reader(&data_dir)
                .and_then(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
                .is_ok()
        })
        .await
        .unwrap_or(false),
        Source::Postgres(gauges) => gauges.fresh().is_some(),
    };
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
    }
}

/// Connections the metrics listener holds open at once, in all and from one address; more wait in
/// the kernel's backlog, or, past the per-address cap, are closed at once.
const MAX_CONNECTIONS: usize = 32;
const MAX_PER_ADDRESS: usize = 8;
/// The longest a metrics connection stays open. A scrape takes milliseconds; a client that sends
/// its request slowly, or reads the answer slowly, or holds the connection idle, is cut off then
/// and gives its place back.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);

/// Binds the metrics listener; the caller logs and spawns `serve`.
pub async fn bind(listen: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: TcpListener, source: Source) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let guarded = Guarded {
        incoming: crate::listen::incoming(listener, MAX_PER_ADDRESS),
        permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        addr,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(source);
    axum::serve(guarded, app).await
}

/// The metrics listener: the gRPC listener's accept loop (per-address cap, no spinning when out
/// of descriptors) under a cap on all connections, each with a lifetime.
struct Guarded {
    incoming: ReceiverStream<Result<Conn, Infallible>>,
    permits: Arc<Semaphore>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Guarded {
    type Io = Expiring;
    type Addr = Option<SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, and the accept loop ends only with the runtime.
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        match self.incoming.next().await {
            Some(Ok(conn)) => {
                let peer = conn.connect_info().remote_addr();
                let io = Expiring {
                    conn,
                    deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                    _permit: permit,
                };
                (io, peer)
            }
            Some(Err(never)) => match never {},
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Some(self.addr))
    }
}

/// A metrics connection that fails every read and write once its lifetime is over, so hyper drops
/// it, and its places in the caps with it.
struct Expiring {
    conn: Conn,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Expiring {
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "metrics connection open for too long",
            )
        })
    }
}

impl AsyncRead for Expiring {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Expiring {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
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
        counters.batches_packed.inc_by(2);
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

    fn lag() -> crate::leader::Lag {
        crate::leader::Lag {
            oldest_writer: Duration::from_millis(12_500),
            waiting_batches: 2,
            waiting_events: 9,
        }
    }

    /// The whole exposition of a collector on a PostgreSQL store that leads detection: the same
    /// counters, detection's lead, then the measured store gauges and detection's lag.
    #[test]
    fn exposition_on_postgres_matches_its_golden_file() {
        let counters = Counters::default();
        counters.events_ingested.inc_by(21);
        counters.batches_accepted.inc_by(3);
        counters
            .batches_refused
            .get_or_create(&Refusal { reason: "gap" })
            .inc();
        let leadership = Leadership::default();
        leadership.leading.set(1);
        leadership.acquired.inc_by(2);
        leadership.lag_alerts.inc();
        let measured = measured_text(gauges(), lag());
        crate::golden::assert_golden(
            "metrics-postgres.txt",
            &render_postgres(&counters, &leadership, Some(&measured)),
        );
    }

    /// A measurement too old to be true is left out, and `/healthz` fails with it.
    #[tokio::test(start_paused = true)]
    async fn a_stale_postgres_measurement_is_not_served() {
        let measured = PgGauges::default();
        assert!(measured.fresh().is_none());
        measured.set(measured_text(gauges(), lag()));
        let served = measured.fresh().expect("a fresh measurement");
        assert!(
            served.contains("bannin_detection_lag_events 9\n"),
            "{served}"
        );
        assert!(
            served.contains("bannin_detection_oldest_writer_seconds 12.5\n"),
            "{served}"
        );
        tokio::time::advance(PG_STALE).await;
        assert!(measured.fresh().is_none());
        let text = render_postgres(&COUNTERS, &LEADERSHIP, measured.fresh().as_deref());
        assert!(text.contains("bannin_detection_leader "), "{text}");
        assert!(!text.contains("bannin_agents_enrolled"), "{text}");
        assert!(!text.contains("bannin_detection_lag_batches"), "{text}");
    }

    #[test]
    fn leading_sets_the_gauge_and_counts_each_lead_taken() {
        let before = LEADERSHIP.acquired.get();
        leading(true);
        assert_eq!(LEADERSHIP.leading.get(), 1);
        leading(false);
        assert_eq!(LEADERSHIP.leading.get(), 0);
        assert_eq!(LEADERSHIP.acquired.get(), before + 1);
    }

    #[test]
    fn the_process_counters_count_what_the_services_report() {
        let before = COUNTERS.verification_failures.get();
        let packed_before = COUNTERS.batches_packed.get();
        batch_refused(&ServiceError::Chain {
            source: bannin::chain::ChainError::BadSignature {
                agent_id: "a".into(),
            },
        });
        batch_accepted(5, true);
        batch_accepted(5, false);
        assert_eq!(COUNTERS.batches_packed.get(), packed_before + 1);
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
