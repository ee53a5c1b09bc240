//! Alert delivery: webhooks (JSON, Slack/Mattermost text, Teams cards) and e-mail, from a durable
//! outbox in the store. Every delivery carries an idempotency key ([`Delivery`]).
//!
//! The collector stores an alert and its outbox rows ([`outbox::enqueue`]) in one transaction, then
//! calls [`HooksHandle::notify`]. One worker task per sink takes its due rows, delivers them, and
//! records the outcome; failures are retried with exponential backoff and jitter for as long as it
//! takes (except permanent rejections, see [`config::RetryConfig`]), across collector restarts.
//!
//! Rate limit: a sink sends at most `rate_per_minute` messages in any minute. Alerts over the limit
//! are held in the outbox (state pending) and sent, in order, as the window frees up; nothing is
//! dropped or folded. A repeat of an alert already delivered is sent again at most once a minute,
//! carrying its latest count.

pub mod config;
mod email;
pub mod outbox;
mod pg_outbox;
mod webhook;
mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use config::HooksConfig;
pub use outbox::{DeliveryState, DeliveryStatus, delivery_status};

use crate::alert::Alert;
use config::{Filter, Settings, SinkKind};

#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("invalid configuration at {key}: {reason}")]
    Config { key: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {action}: {source}")]
    Sql {
        action: &'static str,
        source: rusqlite::Error,
    },
    #[error("cannot {action}: {reason}")]
    Pg {
        action: &'static str,
        reason: String,
    },
    #[error("cannot encode an alert: {source}")]
    Encode { source: serde_json::Error },
    #[error("cannot set up the webhook HTTP client: {source}")]
    HttpClient { source: reqwest::Error },
    #[error("cannot set up SMTP to {host}: {source}")]
    Smtp {
        host: String,
        source: lettre::transport::smtp::Error,
    },
    #[error("the hooks store connection is poisoned by an earlier panic")]
    Poisoned,
    #[error("the hooks worker stopped: {source}")]
    Join { source: tokio::task::JoinError },
}

/// The stable name of a delivery target; outbox rows are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SinkId(pub String);

impl fmt::Display for SinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryError {
    pub message: String,
    /// The receiver rejected this message itself (HTTP 4xx but 408/429, SMTP 5xx): retrying the same
    /// message is unlikely to help, and the sink is not paused for the other alerts.
    pub permanent: bool,
    /// The receiver asked to wait this long (HTTP `Retry-After` in seconds).
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn transient(message: String) -> Self {
        DeliveryError {
            message,
            permanent: false,
            retry_after: None,
        }
    }

    pub fn permanent(message: String) -> Self {
        DeliveryError {
            message,
            permanent: true,
            retry_after: None,
        }
    }
}

/// Which delivery an attempt belongs to: the idempotency key every sink sends along, in a header and
/// in the body. Delivery is at least once (a collector killed while a receiver is slow to answer sends
/// again after its restart); the key lets a receiver drop the repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub alert_id: String,
    /// The same for every attempt of one payload version to one sink, and different for another sink
    /// or for a repeat of the alert with a new count (which the receiver should show).
    pub delivery_id: String,
}

impl Delivery {
    pub(crate) fn new(alert_id: &str, sink: &SinkId, version: i64) -> Delivery {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for part in [
            alert_id.as_bytes(),
            sink.0.as_bytes(),
            &version.to_be_bytes(),
        ] {
            hasher.update(part);
            hasher.update([0]);
        }
        Delivery {
            alert_id: alert_id.to_string(),
            delivery_id: format!("d-{}", hex::encode(&hasher.finalize()[..16])),
        }
    }
}

/// A configured delivery target.
pub(crate) enum Deliverer {
    Webhook(webhook::WebhookSink),
    Email(Box<email::EmailSink>),
}

impl Deliverer {
    async fn deliver(&self, alert: &Alert, delivery: &Delivery) -> Result<(), DeliveryError> {
        match self {
            Deliverer::Webhook(sink) => sink.deliver(alert, delivery).await,
            Deliverer::Email(sink) => sink.deliver(alert, delivery).await,
        }
    }
}

/// Picks the sinks an alert goes to. Cheap to clone; hand one to the store's writer.
#[derive(Debug, Clone)]
pub struct Router {
    sinks: Arc<[(SinkId, Filter)]>,
}

impl Router {
    /// The sinks whose severity and rule filters accept `alert`: the `sinks` for [`outbox::enqueue`].
    pub fn route(&self, alert: &Alert) -> Vec<SinkId> {
        self.sinks
            .iter()
            .filter(|(_, filter)| filter.accepts(alert))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Wakes the delivery workers. Cheap to clone; hand one to the thread that commits alerts.
#[derive(Debug, Clone)]
pub struct Notifier {
    wakers: Arc<[Arc<Notify>]>,
}

impl Notifier {
    /// Wakes every sink's worker to look for new rows; call after committing alerts. Never blocks.
    pub fn notify(&self) {
        for waker in self.wakers.iter() {
            waker.notify_one();
        }
    }
}

/// The running delivery workers.
pub struct HooksHandle {
    router: Router,
    notifier: Notifier,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl HooksHandle {
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Stops the workers. A delivery in flight is abandoned unrecorded and sent again on the next
    /// start (delivery is at least once).
    pub async fn shutdown(mut self) -> Result<(), HooksError> {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            task.await.map_err(|source| HooksError::Join { source })?;
        }
        Ok(())
    }
}

impl Drop for HooksHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Validates `config`, opens the worker's connection to the store at `db_path` (creating the outbox
/// tables), and starts one delivery task per sink on the current tokio runtime. Store access runs on
/// the blocking pool. Call from within the runtime, at start-up.
pub fn spawn(config: HooksConfig, db_path: PathBuf) -> Result<HooksHandle, HooksError> {
    spawn_with(config.validate()?, db_path)
}

/// What every sink would send for `alert`, by name: the webhook bodies (json, slack, teams), the
/// mail's subject, text and whole message. For tests that every rule's alert can be delivered.
#[cfg(test)]
pub(crate) fn rendered(alert: &Alert) -> Vec<(&'static str, String)> {
    use config::{EmailSettings, SmtpTls, WebhookFormat};
    let delivery = Delivery::new(&alert.id, &SinkId("roundtrip".into()), 1);
    let mut out = Vec::new();
    for (name, format) in [
        ("json", WebhookFormat::Json),
        ("slack", WebhookFormat::Slack),
        ("teams", WebhookFormat::Teams),
    ] {
        let body = webhook::body(format, alert, &delivery).expect("an alert encodes as JSON");
        out.push((name, body.to_string()));
    }
    let mailbox = |text: &str| text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
    let sink = email::EmailSink::new(EmailSettings {
        host: "localhost".into(),
        port: 25,
        tls: SmtpTls::None,
        extra_roots_pem: None,
        credentials: None,
        from: mailbox("bannin@example.jp"),
        to: vec![mailbox("soc@example.jp")],
        timeout: Duration::from_secs(5),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    out.push(("email subject", email::subject(alert)));
    let text = email::text(alert, &delivery).unwrap_or_else(|e| panic!("{}", e.message));
    out.push(("email text", text));
    let message = sink
        .message(alert, &delivery)
        .unwrap_or_else(|e| panic!("{}", e.message));
    out.push((
        "email message",
        String::from_utf8_lossy(&message.formatted()).into_owned(),
    ));
    out
}

pub(crate) fn spawn_with(settings: Settings, db_path: PathBuf) -> Result<HooksHandle, HooksError> {
    let conn = outbox::open(&db_path)?;
    let configured: Vec<SinkId> = settings.sinks.iter().map(|s| s.id.clone()).collect();
    let orphaned = outbox::orphaned(&conn, &configured)?;
    if orphaned > 0 {
        tracing::warn!(
            orphaned,
            "pending alert deliveries name sinks that are no longer configured; they wait until a sink of that name returns"
        );
    }
    start(
        settings,
        worker::OutboxDb::Sqlite(Arc::new(Mutex::new(conn))),
    )
}

/// As [`spawn`], the outbox in a PostgreSQL store shared with other collectors: every collector's
/// workers take due rows, each row claimed by one of them at a time.
pub fn spawn_postgres(
    config: HooksConfig,
    pool: deadpool_postgres::Pool,
) -> Result<HooksHandle, HooksError> {
    start(config.validate()?, worker::OutboxDb::Postgres(pool))
}

fn start(settings: Settings, db: worker::OutboxDb) -> Result<HooksHandle, HooksError> {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut wakers = Vec::new();
    let mut tasks = Vec::new();
    let mut routes = Vec::new();
    for sink in settings.sinks {
        let deliverer = match sink.kind {
            SinkKind::Webhook {
                url,
                format,
                timeout,
                extra_roots_pem,
            } => Deliverer::Webhook(webhook::WebhookSink::new(
                url,
                format,
                timeout,
                extra_roots_pem.as_deref(),
            )?),
            SinkKind::Email(email) => Deliverer::Email(Box::new(email::EmailSink::new(email)?)),
        };
        let waker = Arc::new(Notify::new());
        let worker = worker::SinkWorker {
            id: sink.id.clone(),
            deliverer,
            rate_per_minute: sink.rate_per_minute,
            rate_window: settings.rate_window,
            retry: settings.retry,
            db: db.clone(),
            wake: waker.clone(),
            shutdown: shutdown_rx.clone(),
        };
        tasks.push(tokio::spawn(worker.run()));
        wakers.push(waker);
        routes.push((sink.id, sink.filter));
    }
    Ok(HooksHandle {
        router: Router {
            sinks: routes.into(),
        },
        notifier: Notifier {
            wakers: wakers.into(),
        },
        shutdown,
        tasks,
    })
}
