//! `serve`: the data directory, the collector's PKI, and the gRPC server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bannin::pb;
use bannin::pki::{Authority, CertifiedKey};
use bannin::securefs::{self, Access};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::CollectorConfig;
use crate::detection::{Detection, Observed};
use crate::query::service::QueryService;
use crate::service::{Agents, EnrollmentService, IngestService, Limits, MAX_DECODED_BATCH_BYTES};
use crate::store;
use crate::store::ingest::{CommitNotice, Writer};
use crate::{detect, hooks};

pub const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// Creates the data directory (0700) if needed, and refuses one that someone other than the running
/// user could have prepared or could still change: it holds the CA key.
pub fn prepare_data_dir(dir: &Path) -> Result<()> {
    Ok(securefs::prepare_private_dir(dir, "data directory")?)
}

/// A one-time enrollment token: 192 random bits, so it cannot be guessed while it is valid.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(format!("bnt_{}", hex::encode(bytes)))
}

fn read(dir: &Path, name: &str, access: Access) -> Result<String> {
    Ok(securefs::read_owned_string(&dir.join(name), access)?)
}

/// Whether `dir/name` exists at all (a dangling symbolic link counts: it is replaced, not followed).
fn present(dir: &Path, name: &str) -> bool {
    std::fs::symlink_metadata(dir.join(name)).is_ok()
}

/// Loads the CA and server certificate, creating them on first start. New files go in under fresh
/// names and are renamed into place, so nothing left at these names is ever written through.
pub fn load_or_create_pki(
    dir: &Path,
    server_names: &[String],
) -> Result<(Authority, CertifiedKey)> {
    let authority = if present(dir, CA_CERT) && present(dir, CA_KEY) {
        Authority::load(
            &read(dir, CA_CERT, Access::Public)?,
            &read(dir, CA_KEY, Access::Private)?,
        )
        .with_context(|| format!("cannot load the CA from {}", dir.display()))?
    } else {
        let (authority, material) = Authority::create().context("cannot create the CA")?;
        securefs::replace_file(dir, CA_KEY, material.key_pem.as_bytes(), Access::Private)?;
        securefs::replace_file(dir, CA_CERT, material.cert_pem.as_bytes(), Access::Public)?;
        tracing::info!(path = %dir.join(CA_CERT).display(), "created the collector CA");
        authority
    };
    let server = if present(dir, SERVER_CERT) && present(dir, SERVER_KEY) {
        CertifiedKey {
            cert_pem: read(dir, SERVER_CERT, Access::Public)?,
            key_pem: read(dir, SERVER_KEY, Access::Private)?,
        }
    } else {
        let material = authority
            .issue_server(server_names)
            .context("cannot issue the server certificate")?;
        securefs::replace_file(
            dir,
            SERVER_KEY,
            material.key_pem.as_bytes(),
            Access::Private,
        )?;
        securefs::replace_file(
            dir,
            SERVER_CERT,
            material.cert_pem.as_bytes(),
            Access::Public,
        )?;
        material
    };
    Ok((authority, server))
}

/// HTTP/2 flow-control windows: what a client may send before the collector reads it.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 512 * 1024;
/// Concurrent requests on one connection (an agent sends one batch at a time).
const MAX_STREAMS: u32 = 8;
/// The longest one request may take, so a batch trickling in cannot hold a permit for ever.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Everything `serve` needs, prepared before the listener opens.
pub struct Collector {
    pub data_dir: PathBuf,
    /// The configuration; `store.url` chooses the store.
    pub config: CollectorConfig,
    pub listener: TcpListener,
    /// The web console's listener, when `[console] listen` is set.
    pub console: Option<crate::console::Bound>,
}

impl Collector {
    pub async fn bind(data_dir: &Path, config: CollectorConfig, listen: &str) -> Result<Collector> {
        prepare_data_dir(data_dir)?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let console = match &config.console.listen {
            Some(address) => Some(crate::console::bind(&config.console, address).await?),
            None => None,
        };
        Ok(Collector {
            data_dir: data_dir.to_path_buf(),
            config,
            listener,
            console,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The address people open for the console, when it is served.
    pub fn console_url(&self) -> Option<&str> {
        self.console.as_ref().map(|bound| bound.url.as_str())
    }

    /// Serves until `shutdown` resolves. Committed events are passed to `notices` when given.
    pub async fn run(
        mut self,
        tap: Option<std::sync::mpsc::SyncSender<Observed>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let (authority, server) =
            load_or_create_pki(&self.data_dir, &self.config.server.server_names)?;
        let seal = crate::seal::Seal::load_or_create(&self.data_dir)?;
        let at = store::StoreAt::new(self.config.store.url.as_deref(), &self.data_dir)?;

        let (console_stop, console_stopped) = tokio::sync::oneshot::channel::<()>();
        let console_task = match self.console.take() {
            Some(bound) => {
                let (dir, config, ca) = (
                    self.data_dir.clone(),
                    self.config.clone(),
                    authority.cert_pem.clone(),
                );
                let server = server.clone();
                Some(tokio::spawn(async move {
                    let stopped = async {
                        let _ = console_stopped.await;
                    };
                    if let Err(error) =
                        crate::console::serve(bound, dir, config, &server, ca, stopped).await
                    {
                        tracing::error!(error = %bannin::error_line(&error), "console failed");
                    }
                }))
            }
            None => None,
        };

        let (writer, agents, hooks) = match &at {
            store::StoreAt::Sqlite(_) => self.start_sqlite(tap, &seal).await?,
            store::StoreAt::Postgres(target) => self.start_postgres(target, &seal).await?,
        };

        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
            .client_ca_root(Certificate::from_pem(&authority.cert_pem))
            // Enrollment happens before the agent has a certificate; the ingest service refuses
            // any call without one.
            .client_auth_optional(true)
            .timeout(self.config.server.handshake_timeout);
        let max = self.config.server.max_message_bytes;
        let enrollment = pb::enrollment_server::EnrollmentServer::new(EnrollmentService {
            writer: writer.clone(),
            authority: Arc::new(authority),
            agents: agents.clone(),
            guard: crate::enrollment::EnrollGuard::spawn(),
        })
        .max_decoding_message_size(64 * 1024);
        let ingest = crate::listen::IngestGate::new(
            pb::ingest_server::IngestServer::new(IngestService {
                writer,
                agents,
                limits: Limits {
                    max_batch_events: self.config.server.max_batch_events,
                    max_decoded_bytes: MAX_DECODED_BATCH_BYTES,
                },
            })
            .max_decoding_message_size(max),
            self.config.server.max_concurrent_batches,
        );
        let query = pb::query_server::QueryServer::new(QueryService {
            store: at,
            silent_after: self.config.server.silent_after,
        })
        .max_decoding_message_size(64 * 1024)
        .max_encoding_message_size(crate::query::client::MAX_MESSAGE);

        let addr = self.local_addr()?;
        tracing::info!(data_dir = %self.data_dir.display(), "listening on {addr}");
        Server::builder()
            .tls_config(tls)
            .context("invalid TLS configuration")?
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            // What HTTP/2 buffers for a stream before the service reads it is its window: keep it
            // small, as a batch waiting at the ingest gate sits there.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_STREAMS)
            .concurrency_limit_per_connection(MAX_STREAMS as usize)
            .timeout(REQUEST_TIMEOUT)
            .add_service(enrollment)
            .add_service(ingest)
            .add_service(query)
            .serve_with_incoming_shutdown(
                crate::listen::incoming(
                    self.listener,
                    self.config.server.max_connections_per_address,
                ),
                shutdown,
            )
            .await
            .context("gRPC server failed")?;
        let _ = console_stop.send(());
        if let Some(task) = console_task {
            // Open keep-alive connections get a moment to finish, not a veto over stopping.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        if let Err(error) = hooks.shutdown().await {
            tracing::warn!(%error, "alert delivery did not stop cleanly");
        }
        tracing::info!("collector stopped");
        Ok(())
    }
}

impl Collector {
    /// The SQLite store: one writer thread, detection fed by its commit notices, the retention,
    /// checkpoint and metrics tasks reading the data directory.
    async fn start_sqlite(
        &self,
        tap: Option<std::sync::mpsc::SyncSender<Observed>>,
        seal: &crate::seal::Seal,
    ) -> Result<(Writer, Agents, hooks::HooksHandle)> {
        let conn = store::open_writer(&self.data_dir)?;
        let agents = Agents::load(store::agent_keys(&conn)?);
        tokio::spawn(refresh_agents(self.data_dir.clone(), agents.clone()));
        tokio::spawn(crate::retention::run(
            self.data_dir.clone(),
            self.config.retention.clone(),
        ));
        tokio::spawn(crate::checkpoint::run(
            crate::checkpoint::Origin::Sqlite(self.data_dir.clone()),
            self.config.checkpoints.clone(),
            seal.clone(),
        ));
        if let Some(listen) = &self.config.metrics.listen {
            let source = crate::metrics::Source::Sqlite {
                data_dir: self.data_dir.clone(),
                silent_after: self.config.server.silent_after,
            };
            spawn_metrics(listen, source).await?;
        }

        let engine = detect::Engine::new(&self.config.detection)?;
        engine.log_report();
        let hooks = hooks::spawn(self.config.alerts.clone(), store::db_path(&self.data_dir))
            .context("cannot start alert delivery")?;
        let (notices, notices_rx) = std::sync::mpsc::sync_channel::<CommitNotice>(256);
        let mut detection = Detection {
            engine,
            conn: store::open_writer(&self.data_dir)?,
            seal: seal.clone(),
            router: hooks.router(),
            notifier: hooks.notifier(),
            tap,
        };
        // Before the writer starts, so every event is either replayed or in a notice, once.
        detection
            .replay()
            .context("cannot rebuild detection state from the store")?;
        detection
            .spawn(notices_rx)
            .context("cannot start detection")?;
        let writer = Writer::spawn(conn, seal.clone(), Some(notices))
            .context("cannot start the store writer")?;
        Ok((writer, agents, hooks))
    }

    /// A PostgreSQL store shared with other collectors: ingest and enrollment through a pool, one
    /// transaction per batch; every collector delivers alerts and contends for detection's lead.
    async fn start_postgres(
        &self,
        target: &store::pg::Target,
        seal: &crate::seal::Seal,
    ) -> Result<(Writer, Agents, hooks::HooksHandle)> {
        if let Some(listen) = &self.config.metrics.listen {
            let gauges = crate::metrics::PgGauges::default();
            tokio::spawn(crate::metrics::measure_postgres(
                target.clone(),
                self.config.server.silent_after,
                gauges.clone(),
            ));
            spawn_metrics(listen, crate::metrics::Source::Postgres(gauges)).await?;
        }
        // Checked before anything starts, as the SQLite path does.
        detect::Engine::new(&self.config.detection)?.log_report();
        let client = store::pg::open(target).await?;
        let agents = Agents::load(store::pg::agent_keys(&client).await?);
        tokio::spawn(maintain_postgres(target.clone(), client, agents.clone()));
        // Every collector runs both: retention one at a time (it locks), checkpoints each to its
        // own `[checkpoints]` destination.
        tokio::spawn(crate::retention::run_postgres(
            target.clone(),
            self.config.retention.clone(),
            seal.clone(),
        ));
        tokio::spawn(crate::checkpoint::run(
            crate::checkpoint::Origin::Postgres(Box::new(target.clone())),
            self.config.checkpoints.clone(),
            seal.clone(),
        ));
        let pool = target.pool()?;
        let hooks = hooks::spawn_postgres(self.config.alerts.clone(), pool.clone())
            .context("cannot start alert delivery")?;
        let committed = std::sync::Arc::new(tokio::sync::Notify::new());
        crate::leader::Leader {
            target: target.clone(),
            detection: self.config.detection.clone(),
            seal: seal.clone(),
            router: hooks.router(),
            notifier: hooks.notifier(),
            lag_alert_after: self.config.store.lag_alert_after,
            committed: committed.clone(),
        }
        .spawn()
        .context("cannot start detection")?;
        let writer = Writer::Postgres(std::sync::Arc::new(store::pg::ingest::PgWriter::new(
            pool,
            seal.clone(),
            committed,
        )));
        Ok((writer, agents, hooks))
    }
}

/// Opens the metrics listener (`[metrics] listen`) and serves it for as long as the collector runs.
async fn spawn_metrics(listen: &str, source: crate::metrics::Source) -> Result<()> {
    let (listener, addr) = crate::metrics::bind(listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {listen}"))?;
    tracing::info!("serving metrics on {addr}");
    tokio::spawn(async move {
        if let Err(error) = crate::metrics::serve(listener, source).await {
            tracing::error!(%error, "metrics endpoint failed");
        }
    });
    Ok(())
}

/// For a PostgreSQL store: re-reads agents' standing every second (a revocation made through any
/// collector applies to all), and keeps the coming days' partitions in place. A lost session is
/// opened again.
async fn maintain_postgres(
    target: store::pg::Target,
    mut client: tokio_postgres::Client,
    agents: Agents,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if client.is_closed() {
            match target.connect().await {
                Ok(fresh) => client = fresh,
                Err(error) => {
                    tracing::warn!(%error, "cannot re-read agents' standing");
                    continue;
                }
            }
        }
        match store::pg::agent_keys(&client).await {
            Ok(keys) => agents.refresh(keys),
            Err(error) => tracing::warn!(%error, "cannot re-read agents' standing"),
        }
        if ticks % 3600 == 0
            && let Err(error) =
                store::pg::ensure_partitions(&mut client, store::pg::receipt_now()).await
        {
            tracing::error!(%error, "cannot create the coming days' partitions");
        }
    }
}

/// Re-reads agents' standing every second, so `bannin-collector revoke --agent` applies to a running
/// collector without a restart.
async fn refresh_agents(data_dir: PathBuf, agents: Agents) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dir = data_dir.clone();
        let keys = tokio::task::spawn_blocking(move || {
            store::open_reader(&dir).and_then(|conn| store::agent_keys(&conn))
        })
        .await;
        match keys {
            Ok(Ok(keys)) => agents.refresh(keys),
            Ok(Err(error)) => tracing::warn!(%error, "cannot re-read agents' standing"),
            Err(_) => tracing::warn!("agent refresh task failed"),
        }
    }
}
