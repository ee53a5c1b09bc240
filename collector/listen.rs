//! What stands between the network and the gRPC services: the accept loop and the ingest gate.
//!
//! The accept loop caps live connections per remote address and backs off when the process runs
//! out of file descriptors, instead of retrying a failing `accept` in a tight loop. The TLS
//! handshake that follows has a deadline (`server.handshake_timeout`, set on tonic's TLS config), so
//! idle half-open sockets cannot pin descriptors forever.
//!
//! The ingest gate runs before tonic reads a batch off the wire: tonic buffers and decodes a whole
//! message before the service sees it, so bounding memory means bounding how many batches are read
//! at once. It refuses callers that are not agents without reading their message, lets each agent
//! have one batch in flight, and admits at most `server.max_concurrent_batches` batches in all.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bannin::pki::{Principal, principal_of};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::service::ServiceError;

/// The first pause after the process runs out of descriptors; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Live connections per remote address.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Counts {
    fn admit(&self, ip: IpAddr, cap: usize) -> Option<Slot> {
        let mut map = self.0.lock().ok()?;
        let count = map.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One admitted connection's place in its address's count, given back when the connection drops.
struct Slot {
    counts: Counts,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.0.lock()
            && let Some(count) = map.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An accepted TCP connection holding its address's slot.
pub struct Conn {
    stream: TcpStream,
    _slot: Slot,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Whether an `accept` error means the process or system has no descriptor to spare.
fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE
            || code == nix::libc::ENOBUFS || code == nix::libc::ENOMEM
    )
}

/// Accepts connections on `listener` for the gRPC server, at most `per_address` live at once from
/// one address. The accept task ends when the server drops the stream, closing the listener.
pub fn incoming(
    listener: TcpListener,
    per_address: usize,
) -> ReceiverStream<Result<Conn, Infallible>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, per_address, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    per_address: usize,
    tx: mpsc::Sender<Result<Conn, Infallible>>,
) {
    let counts = Counts::default();
    let mut backoff = FIRST_BACKOFF;
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                backoff = FIRST_BACKOFF;
                let Some(slot) = counts.admit(remote.ip(), per_address) else {
                    refused += 1;
                    // One line per power of two keeps a flood from flooding the log as well.
                    if refused.is_power_of_two() {
                        tracing::warn!(remote = %remote, per_address, refused, "connection refused: too many from one address");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                if tx
                    .send(Ok(Conn {
                        stream,
                        _slot: slot,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) if out_of_descriptors(&error) => {
                // The pending connection stays in the kernel's backlog; retrying at once would spin.
                tracing::warn!(%error, retry_in = ?backoff, "cannot accept connections: out of file descriptors");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // A connection reset before it was accepted, and the like: only that one is lost.
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(FIRST_BACKOFF).await;
            }
        }
    }
}

/// The caller's principal from the TLS connection the request came on, before anything is read.
fn caller(request: &http::Request<tonic::body::Body>) -> Result<Principal, ServiceError> {
    let leaf = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().cloned())
        .ok_or(ServiceError::NoCertificate)?;
    principal_of(leaf.as_ref()).ok_or(ServiceError::UnknownPrincipal)
}

fn remote(request: &http::Request<tonic::body::Body>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .get_ref()
        .remote_addr()
}

/// Admits batches to the ingest service (see the module comment).
#[derive(Clone)]
pub struct IngestGate<S> {
    inner: S,
    permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

impl<S> IngestGate<S> {
    pub fn new(inner: S, max_concurrent: usize) -> Self {
        IngestGate {
            inner,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            in_flight: Arc::default(),
        }
    }
}

/// An agent's one batch in flight, released when the request ends however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    agent_id: String,
}

impl InFlight {
    fn take(set: &Arc<Mutex<HashSet<String>>>, agent_id: String) -> Option<InFlight> {
        let mut guard = set.lock().ok()?;
        if !guard.insert(agent_id.clone()) {
            return None;
        }
        Some(InFlight {
            set: set.clone(),
            agent_id,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.agent_id);
        }
    }
}

impl<S: NamedService> NamedService for IngestGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for IngestGate<S>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is ready only after poll_ready; swap so the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (permits, in_flight) = (self.permits.clone(), self.in_flight.clone());
        Box::pin(async move {
            let remote = remote(&request);
            let refuse = |error: ServiceError| {
                tracing::warn!(?remote, %error, "batch refused");
                crate::metrics::batch_refused(&error);
                Ok(tonic::Status::from(error).into_http())
            };
            let agent_id = match caller(&request) {
                Ok(Principal::Agent(id)) => id,
                Ok(Principal::Operator(name)) => {
                    return refuse(ServiceError::NotAnAgent {
                        principal: format!("operator {name}"),
                    });
                }
                Err(error) => return refuse(error),
            };
            let Some(_in_flight) = InFlight::take(&in_flight, agent_id.clone()) else {
                return refuse(ServiceError::AgentBusy { agent_id });
            };
            // Waiting here reads nothing: the batch stays in the agent's HTTP/2 flow-control
            // window until a permit frees.
            let Ok(_permit) = permits.acquire_owned().await else {
                return refuse(ServiceError::Stopping);
            };
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The ingest service behind the gate: answers every call, counting them.
    #[derive(Clone, Default)]
    struct Behind(Arc<AtomicUsize>);

    impl Service<http::Request<tonic::body::Body>> for Behind {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(http::Response::new(tonic::body::Body::empty())) })
        }
    }

    #[tokio::test]
    async fn the_gate_refuses_a_caller_without_a_certificate_as_the_service_would() {
        let behind = Behind::default();
        let mut gate = IngestGate::new(behind.clone(), 1);
        let response = gate
            .call(http::Request::new(tonic::body::Body::empty()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        let expected = tonic::Status::from(ServiceError::NoCertificate);
        assert_eq!(
            (status.code(), status.message()),
            (expected.code(), expected.message())
        );
        assert_eq!(behind.0.load(Ordering::SeqCst), 0, "nothing was read");
    }
}
