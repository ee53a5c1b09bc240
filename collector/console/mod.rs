//! The read-only web console (`[console] listen`): HTTPS with the collector's server certificate,
//! operators signed in by one-time links (`console link`), server-rendered pages over the same reads
//! as the query commands.
//!
//! Nothing here changes the store except signing in and out. Every value shown comes from
//! endpoints and may be hostile; maud escapes everything it renders, no page carries a script, and
//! the Content-Security-Policy forbids any (`headers`).

mod auth;
mod backend;
mod export;
mod i18n;
mod pages;
mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bannin::time::{Timestamp, duration_str, parse_duration};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::CollectorConfig;
use crate::store;

/// `[console]`: the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address for the console's HTTPS listener, e.g. "127.0.0.1:8443"; unset: no console.
    /// `serve --console-listen` overrides it.
    pub listen: Option<String>,
    /// The address people open (`https://collector.example:8443`), for the links `console link`
    /// prints. Default: https:// and the listening address.
    pub url: Option<String>,
    /// How long a session lasts after signing in. Default "8h".
    #[serde(with = "duration_str")]
    pub session_lifetime: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            listen: None,
            url: None,
            session_lifetime: Duration::from_secs(8 * 3600),
        }
    }
}

impl ConsoleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.session_lifetime.is_zero()
            || self.session_lifetime > Duration::from_secs(7 * 86_400)
        {
            return Err("console.session_lifetime must be more than 0s and at most 7d".into());
        }
        if let Some(url) = &self.url
            && !url.starts_with("https://")
        {
            return Err(format!("console.url {url:?} must start with https://"));
        }
        Ok(())
    }
}

/// The file in the data directory where a running `serve` writes its console's address, for
/// `console link`.
const URL_FILE: &str = "console.url";

/// The longest a sign-in link may stay valid.
const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 3600);

/// The console's bound listener and the address people use to reach it.
pub struct Bound {
    pub listener: TcpListener,
    pub url: String,
}

pub async fn bind(config: &ConsoleConfig, listen: &str) -> Result<Bound> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for the console on {listen}"))?;
    let addr = listener.local_addr()?;
    let url = config
        .url
        .clone()
        .unwrap_or_else(|| format!("https://{addr}"));
    Ok(Bound {
        listener,
        url: url.trim_end_matches('/').to_string(),
    })
}

/// What every request handler shares.
pub struct Console {
    /// The store pages read and sessions are kept in: SQLite in the data directory, or the
    /// PostgreSQL store the collector shares with others.
    pub store: backend::Backend,
    pub config: CollectorConfig,
    /// The collector's CA, against which evidence's agent keys are checked.
    pub ca_pem: Option<String>,
}

type Shared = Arc<Console>;

/// Serves the console over TLS with the collector's server certificate until `shutdown`.
pub async fn serve(
    bound: Bound,
    data_dir: PathBuf,
    config: CollectorConfig,
    server: &bannin::pki::CertifiedKey,
    ca_pem: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let acceptor = tls_acceptor(server)?;
    securefs_write_url(&data_dir, &bound.url);
    let at = store::StoreAt::new(config.store.url.as_deref(), &data_dir)?;
    let console = Arc::new(Console {
        store: backend::Backend::new(&at)?,
        config,
        ca_pem: Some(ca_pem),
    });
    let listener = TlsListener::spawn(bound.listener, acceptor)?;
    tracing::info!("serving the console on {}", listener.url());
    axum::serve(listener, router(console))
        .with_graceful_shutdown(shutdown)
        .await
        .context("the console server failed")
}

/// Writes the console's address for `console link` (best effort: the address is also logged).
fn securefs_write_url(data_dir: &Path, url: &str) {
    if let Err(error) = bannin::securefs::replace_file(
        data_dir,
        URL_FILE,
        format!("{url}\n").as_bytes(),
        bannin::securefs::Access::Public,
    ) {
        tracing::warn!(%error, "cannot record the console's address for `console link`");
    }
}

fn tls_acceptor(server: &bannin::pki::CertifiedKey) -> Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())
        .context("cannot read the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("no TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("invalid server certificate or key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

/// A listener handing axum connections that have finished their TLS handshake. Handshakes run in
/// their own tasks, so a client that stalls one holds up nobody else.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor) -> Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "console accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "console TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "console TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, addr })
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The longest query string accepted; a longer one is refused before any handler parses it.
pub const MAX_QUERY: usize = 4096;

pub fn router(console: Shared) -> Router {
    let signed_in = Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/alerts") }),
        )
        .route("/alerts", get(pages::alerts))
        .route("/alerts/{id}", get(pages::alert))
        .route("/agents", get(pages::agents))
        .route("/timeline", get(pages::timeline))
        .route("/search", get(pages::search))
        .route("/search/export", get(pages::export))
        .route("/scope", get(pages::scope))
        .route("/rules", get(pages::rules))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            auth::require_session,
        ));
    Router::new()
        .merge(signed_in)
        .route("/signin", get(auth::sign_in))
        .route("/signout", post(auth::sign_out))
        .route("/lang/{code}", get(i18n::switch))
        .route("/static/{name}", get(static_file))
        .fallback(pages::not_found)
        .layer(middleware::from_fn(headers))
        .with_state(console)
}

/// Security headers on every response, and the query-length limit.
async fn headers(request: Request, next: Next) -> Response {
    let too_long = request
        .uri()
        .query()
        .is_some_and(|query| query.len() > MAX_QUERY);
    let mut response = if too_long {
        (
            StatusCode::URI_TOO_LONG,
            format!("the query is longer than {MAX_QUERY} bytes"),
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
    set(
        headers,
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000",
    );
    headers.insert(
        axum::http::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        axum::http::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The console's only static file, compiled in: a name is looked up, never joined to a path.
const CSS: &str = include_str!("console.css");

async fn static_file(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match name.as_str() {
        "console.css" => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response(),
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// A fresh random secret (256 bits) with a prefix saying what it is.
pub fn secret(prefix: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// `console link`: issues a one-time sign-in link for an operator and prints its URL.
#[derive(clap::Args)]
pub struct LinkArgs {
    /// The collector's data directory: its SQLite store, and where a running `serve` recorded the
    /// console's address.
    #[arg(long, required_unless_present_any = ["store", "config"])]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store (postgres://USER@HOST/DB) shared by collectors: the link works on every
    /// console serving from it (default: `[store] url` in --config).
    #[arg(long)]
    pub store: Option<String>,
    /// The operator signing in (created for the console if new; a revoked operator is refused).
    #[arg(long)]
    pub operator: String,
    /// How long the link stays valid (at most 24h).
    #[arg(long, default_value = "10m")]
    pub ttl: String,
    /// The console's address (default: `[console] url`, else what a running `serve` recorded).
    #[arg(long)]
    pub base_url: Option<String>,
    /// The collector's configuration file, for `[console] url`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum ConsoleCommand {
    /// Print a one-time sign-in URL for an operator.
    Link(LinkArgs),
}

pub fn command(command: ConsoleCommand) -> Result<std::process::ExitCode> {
    match command {
        ConsoleCommand::Link(args) => {
            let ttl = parse_duration(&args.ttl)?;
            if ttl.is_zero() || ttl > MAX_LINK_TTL {
                bail!("--ttl {} must be more than 0s and at most 24h", args.ttl);
            }
            let config = match &args.config {
                Some(path) => Some(CollectorConfig::load(path)?),
                None => None,
            };
            let (configured, store_url) = match config {
                Some(config) => (config.console.url, config.store.url),
                None => (None, None),
            };
            let recorded = || {
                args.data_dir
                    .as_ref()
                    .and_then(|dir| std::fs::read_to_string(dir.join(URL_FILE)).ok())
                    .map(|text| text.trim().to_string())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "no console address known: start `serve --console-listen ADDR`, or give --base-url https://HOST:PORT"
                        )
                    })
            };
            let base = match (args.base_url, configured) {
                (Some(url), _) | (None, Some(url)) => url,
                (None, None) => recorded()?,
            };
            if !base.starts_with("https://") {
                bail!("the console address {base:?} must start with https://");
            }
            let at = match (args.store.or(store_url), &args.data_dir) {
                (Some(url), _) => store::StoreAt::new(Some(&url), Path::new(""))?,
                (None, Some(dir)) => store::StoreAt::Sqlite(dir.clone()),
                (None, None) => bail!("give --data-dir DIR or --store postgres://USER@HOST/DB"),
            };
            let url = issue_link(&at, &args.operator, ttl, &base)?;
            println!("{url}");
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Stores a one-time link for `operator` (adding the operator if new) and returns its URL.
pub fn issue_link(
    at: &store::StoreAt,
    operator: &str,
    ttl: Duration,
    base: &str,
) -> Result<String> {
    if !crate::query::valid_operator_name(operator) {
        bail!("operator name {operator:?} must be 1 to 64 letters, digits, '.', '_', '@' or '-'");
    }
    let token = secret("bcl_")?;
    let expires = Timestamp::now().saturating_add(ttl);
    let standing = match at {
        store::StoreAt::Sqlite(dir) => {
            let conn = store::open_writer(dir)?;
            let standing = store::operators::operator_standing(&conn, operator)?;
            if standing == store::operators::Standing::Unknown {
                store::operators::add_operator(&conn, operator)?;
            }
            if standing != store::operators::Standing::Revoked {
                store::console::add_link(&conn, &token, operator, expires)?;
            }
            standing
        }
        store::StoreAt::Postgres(target) => {
            let reader = store::pg::read::Reader::open_writer(target)?;
            let client = reader.client();
            reader.block_on(async {
                let standing = store::pg::operator_standing(client, operator).await?;
                if standing == store::operators::Standing::Unknown {
                    store::pg::add_operator(client, operator).await?;
                }
                if standing != store::operators::Standing::Revoked {
                    store::pg::console::add_link(client, &token, operator, expires).await?;
                }
                Ok::<_, store::StoreError>(standing)
            })?
        }
    };
    if standing == store::operators::Standing::Revoked {
        bail!("operator {operator} is revoked; a revoked name cannot sign in again");
    }
    Ok(format!(
        "{}/signin?token={token}",
        base.trim_end_matches('/')
    ))
}
