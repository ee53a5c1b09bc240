//! The outbound-connection sensor: one `net.connect` event for each new outbound TCP connection or
//! connected UDP flow, with the process that owns it, and a `net.close` with the bytes that went
//! each way when a TCP connection reported open before its bytes were known closes.
//!
//! On Linux as root, TCP connections come from an eBPF program ([`ebpf`]) that names the process
//! at connect time and counts the bytes at close, however short the connection. Where BPF cannot
//! be loaded, and for UDP always, it lists the host's sockets every `interval` (inet_diag dumps over netlink, filtered by
//! state in the kernel; the text tables of `/proc/net/{tcp,tcp6,udp,udp6}` where the kernel
//! refuses those) and finds each socket's owner by the socket inode in `/proc/<pid>/fd`, scanning
//! only when a socket it does not know appears.
//! Connections that open and close between two reads are caught from the kernel's socket
//! destruction notices ([`destroy`], root only), with their byte counts but without their process,
//! which is gone from the socket by then; the same notices give the `net.close` of a TCP connection
//! a read saw, named after the process its `net.connect` was. Only sockets in the agent's own network namespace are
//! seen; connections already open when the sensor starts are reported at its first read.
//! Elsewhere the sensor reports that it cannot run.

mod config;
#[cfg(target_os = "linux")]
mod destroy;
#[cfg(target_os = "linux")]
mod diag;
#[cfg(target_os = "linux")]
mod ebpf;
#[cfg(target_os = "linux")]
mod scanner;
// Only Linux's socket tables are read; elsewhere the sensor says so and watches nothing.
#[cfg(target_os = "linux")]
mod scope;
#[cfg(target_os = "linux")]
mod table;

pub use config::{Backend, NetConfig, NetSettings};

use super::process::ProcessTable;
use crate::pipeline::EventTx;
use crate::sensors::{Notice, SensorContext, SensorHandle, Stop};

const SENSOR: &str = "network";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the spool writer has stopped")]
    Closed,
    #[cfg(target_os = "linux")]
    #[error("[network] backend = \"ebpf\" but the eBPF program cannot run: {source}")]
    Ebpf {
        #[source]
        source: crate::sensors::ebpf::EbpfError,
    },
    #[cfg(target_os = "linux")]
    #[error("cannot start the network sensor's thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[cfg(not(target_os = "linux"))]
    #[error("[network] backend = \"ebpf\" needs Linux; use \"auto\"")]
    Unsupported,
}

/// Starts the sensor, which names owners from the shared process table in `ctx`, and reports in a
/// `sensor.status` event what it watches.
pub async fn spawn(config: NetSettings, ctx: &SensorContext) -> Result<SensorHandle, NetError> {
    let tx = ctx.tx.for_sensor(SENSOR);
    if !config.enabled {
        return Ok(SensorHandle::new(SENSOR, "off", Stop::default()));
    }
    start(config, tx, ctx.processes.clone()).await
}

#[cfg(target_os = "linux")]
async fn start(
    config: NetSettings,
    tx: EventTx,
    table: ProcessTable,
) -> Result<SensorHandle, NetError> {
    let stop = Stop::default();
    let mut why_not_ebpf = None;
    if matches!(config.backend, Backend::Auto | Backend::Ebpf) {
        let ring = config.ebpf_ring_buffer_bytes;
        let opened = tokio::task::spawn_blocking(move || ebpf::open(ring))
            .await
            .map_err(|error| NetError::Thread {
                source: std::io::Error::other(error),
            })?;
        match opened {
            Ok(loaded) => {
                let mut handle = SensorHandle::new(SENSOR, "ebpf", stop);
                let thread = ebpf::spawn(
                    loaded,
                    &config,
                    table.clone(),
                    tx.clone(),
                    handle.stop_signal(),
                )
                .map_err(|source| NetError::Thread { source })?;
                handle.add_thread(thread);
                let hold = config.interval.as_millis();
                let mut message = format!(
                    "TCP connections from an eBPF program on the kernel's inet_sock_set_state \
                     tracepoint: every connection this host opens, with the process that opened \
                     it and its bytes, at its close if that comes within {hold}ms, else when it \
                     opens and again when it closes"
                );
                if config.include_udp {
                    let udp = start_tables(&config, false, &tx, table, &mut handle);
                    message = format!("{message}; connected UDP {udp}");
                }
                send_status(&tx, message).await?;
                return Ok(handle);
            }
            Err(source) if config.backend == Backend::Ebpf => {
                return Err(NetError::Ebpf { source });
            }
            Err(error) => why_not_ebpf = Some(format!("eBPF unavailable: {error}")),
        }
    }
    let mut handle = SensorHandle::new(SENSOR, "sock_diag", stop);
    let mut message = start_tables(&config, true, &tx, table, &mut handle);
    if let Some(why) = why_not_ebpf {
        message = format!("{why}; {message}");
    }
    send_status(&tx, message).await?;
    Ok(handle)
}

/// Starts reading the socket tables (with TCP or for UDP only) and the destruction notices, and
/// says how in words for the status message.
#[cfg(target_os = "linux")]
fn start_tables(
    config: &NetSettings,
    tcp: bool,
    tx: &EventTx,
    table: ProcessTable,
    handle: &mut SensorHandle,
) -> String {
    let (closed_tx, closed_rx) = crate::pipeline::lossy(tx, CLOSED_QUEUE);
    let notices = destroy::spawn(tcp, config.include_udp, closed_tx, handle.stop_signal());
    let every = config.interval.as_millis();
    let (message, closed_rx) = match notices {
        Ok(thread) => {
            handle.add_thread(thread);
            (
                format!(
                    "reading the kernel's socket tables every {every}ms; connections closed before a \
                     read are reported from the kernel's socket destruction notices, without their process, \
                     and TCP connections a read saw again at their close, with their bytes"
                ),
                Some(closed_rx),
            )
        }
        Err(error) => (
            format!(
                "reading the kernel's socket tables every {every}ms; connections shorter than that \
                 may be missed (socket destruction notices unavailable: {error})"
            ),
            None,
        ),
    };
    // The scanner holds nothing that needs handing on: the stop signal drops it where it waits.
    handle.spawn_until_stopped(scanner::run(
        config.clone(),
        tcp,
        tx.clone(),
        table,
        closed_rx,
    ));
    message
}

async fn send_status(tx: &EventTx, message: String) -> Result<(), NetError> {
    tx.send(Notice::status(SENSOR, message).logged())
        .await
        .map(drop)
        .map_err(|_| NetError::Closed)
}

/// Destruction notices waiting for the sensor's task; more are counted as dropped.
#[cfg(target_os = "linux")]
const CLOSED_QUEUE: usize = 4096;

#[cfg(not(target_os = "linux"))]
async fn start(
    config: NetSettings,
    tx: EventTx,
    _table: ProcessTable,
) -> Result<SensorHandle, NetError> {
    if config.backend == Backend::Ebpf {
        return Err(NetError::Unsupported);
    }
    send_status(
        &tx,
        "outbound connections are only watched on Linux".to_string(),
    )
    .await?;
    Ok(SensorHandle::new(SENSOR, "off", Stop::default()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bannin::event::NetEvent;

    use super::*;

    #[cfg(target_os = "linux")]
    mod live {
        use std::net::{TcpListener, TcpStream, UdpSocket};

        use bannin::event::{Body, Event};
        use tokio::sync::mpsc;

        use super::*;
        use crate::pipeline;

        const PATIENCE: Duration = Duration::from_secs(15);

        async fn started() -> (SensorHandle, mpsc::Receiver<Event>) {
            started_with(Duration::from_millis(100), Backend::SockDiag)
                .await
                .0
        }

        /// The sensor reading every `interval`, and its status message.
        async fn started_with(
            interval: Duration,
            backend: Backend,
        ) -> ((SensorHandle, mpsc::Receiver<Event>), String) {
            let (tx, mut rx) = pipeline::channel("test-host");
            let config = NetConfig {
                interval,
                backend,
                ..NetConfig::default()
            }
            .settings()
            .unwrap();
            let ctx = SensorContext {
                tx,
                state_dir: std::env::temp_dir(),
                processes: ProcessTable::new(100, Duration::from_secs(60)),
            };
            let handle = spawn(config, &ctx).await.unwrap();
            // The readers start before the status is sent (it says how they started), so on a
            // loaded host a connection of another test running alongside may come first.
            let status = tokio::time::timeout(PATIENCE, async {
                loop {
                    match rx.recv().await.unwrap().body {
                        Body::Sensor(status) => return status.message,
                        Body::Net(_) => {}
                        other => panic!("expected the sensor's status, got {other:?}"),
                    }
                }
            })
            .await
            .expect("no sensor status");
            ((handle, rx), status)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_connection_closed_between_reads_is_reported_with_its_bytes() {
            use std::io::{Read, Write};

            // The listener exists before the sensor's first read, as a server's would.
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let ((handle, mut rx), status) =
                started_with(Duration::from_secs(2), Backend::SockDiag).await;
            assert!(status.contains("destruction notices, without"), "{status}");

            let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let local_port = client.local_addr().unwrap().port();
            let (mut accepted, _) = listener.accept().unwrap();
            client.write_all(&[7; 1000]).unwrap();
            let mut got = [0; 1000];
            accepted.read_exact(&mut got).unwrap();
            accepted.write_all(b"ok").unwrap();
            client.read_exact(&mut got[..2]).unwrap();
            drop(client);
            drop(accepted);

            // The kernel's notice carries the bytes: as the net.connect of a connection no read
            // saw open (without its process), or as the net.close of one a read saw (on a loaded
            // host a read may fall into the milliseconds it was open, and find its owner or not).
            let seen = until(&mut rx, |n| {
                n.local_port == local_port && n.bytes_sent.is_some()
            })
            .await;
            let event = seen.last().unwrap();
            assert_eq!(event.remote_port, port);
            assert_eq!(event.remote_scope, "loopback");
            // The kernel's counters also count the SYN and FIN, one each.
            let sent = event.bytes_sent.unwrap();
            let received = event.bytes_received.unwrap();
            assert!((1000..=1002).contains(&sent), "{event:?}");
            assert!((2..=4).contains(&received), "{event:?}");
            assert!(
                seen.iter().all(|n| n.local_port != port),
                "the accepted end is inbound: {seen:?}"
            );
            drop(handle);
        }

        /// A connection of a few milliseconds, from a process that exits right after it, is
        /// reported with that process (its executable, read at exec time by the process sensor or
        /// from /proc while it ran) and its bytes.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ebpf_names_the_process_of_a_connection_of_a_few_milliseconds() {
            use std::io::{Read, Write};

            assert!(nix::unistd::geteuid().is_root(), "this test needs root");
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let ((handle, mut rx), status) =
                started_with(Duration::from_secs(5), Backend::Ebpf).await;
            assert!(status.contains("eBPF program"), "{status}");
            assert!(status.contains("connected UDP reading"), "{status}");

            let server = std::thread::spawn(move || {
                let (mut accepted, _) = listener.accept().unwrap();
                let mut got = [0; 1000];
                accepted.read_exact(&mut got).unwrap();
                accepted.write_all(b"ok").unwrap();
            });
            // bash sends 1000 bytes, reads the answer and exits: the connection lives a few ms.
            let script = format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port}; head -c 1000 /dev/zero >&3; head -c 2 <&3 >/dev/null"
            );
            let mut child = std::process::Command::new("bash")
                .args(["-c", &script])
                .spawn()
                .unwrap();
            let pid = child.id();
            assert!(child.wait().unwrap().success());
            server.join().unwrap();

            // Closed within the hold (5 s), the connection is one net.connect with its bytes;
            // on a host loaded enough to stretch it past that, the bytes come in its net.close,
            // which names the same process.
            let seen = until(&mut rx, |n| n.remote_port == port && n.bytes_sent.is_some()).await;
            let event = seen.last().unwrap();
            let process = event.process.as_ref().unwrap();
            assert_eq!(process.pid, pid);
            assert_eq!(process.uid, Some(0));
            // The kernel counts the SYN and FIN in its byte counters, one each.
            assert!(
                (1000..=1002).contains(&event.bytes_sent.unwrap()),
                "{event:?}"
            );
            assert!(
                (2..=4).contains(&event.bytes_received.unwrap()),
                "{event:?}"
            );
            assert_eq!(event.remote_addr, "127.0.0.1");
            drop(handle);
        }

        /// Benchmark: N outbound connections (default 1,000, `BANNIN_BENCH_CONNECTIONS`), each
        /// opened by its own short-lived bash process that sends a byte, reads two and exits,
        /// watched side by side by the eBPF backend, once per ring buffer size in
        /// `BANNIN_BENCH_NET_RINGS` (bytes, comma-separated; default the configured default), all
        /// named from one table that the eBPF process sensor feeds (its ring from
        /// `BANNIN_BENCH_RINGS`, first size, or its default), as in the agent, and by the
        /// socket-table backend. At least 99.9% must be reported with their process (its
        /// executable) and bytes by the eBPF backend at every ring size measured. Run as root with
        /// `cargo test --release --bin bannin-agent connect_burst -- --ignored --nocapture`.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "benchmark; run on purpose"]
        async fn connect_burst() {
            use std::io::{Read, Write};

            let count: usize = std::env::var("BANNIN_BENCH_CONNECTIONS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1000);
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                let mut lifetimes = Vec::new();
                for _ in 0..count {
                    let (mut accepted, _) = listener.accept().unwrap();
                    let opened = tokio::time::Instant::now();
                    let mut byte = [0; 1];
                    accepted.read_exact(&mut byte).unwrap();
                    accepted.write_all(b"ok").unwrap();
                    // The client closes after reading the answer.
                    let _ = accepted.read(&mut byte);
                    lifetimes.push(opened.elapsed());
                }
                lifetimes
            });

            let net_rings = crate::testing::ring_sizes(
                "BANNIN_BENCH_NET_RINGS",
                NetConfig::default().ebpf_ring_buffer_bytes,
            );
            let process_ring = crate::testing::ring_sizes(
                "BANNIN_BENCH_RINGS",
                crate::sensors::process::ProcessConfig::default().ebpf_ring_buffer_bytes,
            )[0];
            let ebpf_table = ProcessTable::new(100_000, Duration::from_secs(300));
            let process = {
                let config = crate::sensors::process::ProcessConfig {
                    backend: crate::sensors::process::Backend::Ebpf,
                    ebpf_ring_buffer_bytes: process_ring,
                    ..Default::default()
                }
                .settings()
                .unwrap();
                let (ptx, mut prx) = pipeline::channel("bench-host");
                let pctx = SensorContext {
                    tx: ptx,
                    state_dir: std::env::temp_dir(),
                    processes: ebpf_table.clone(),
                };
                let handle = crate::sensors::process::spawn(config, &pctx).await.unwrap();
                // The process events are not counted here; they only need draining.
                tokio::spawn(async move { while prx.recv().await.is_some() {} });
                handle
            };
            let mut observers = Vec::new();
            let backends = net_rings
                .iter()
                .map(|&ring| (Backend::Ebpf, ring))
                .chain([(Backend::SockDiag, 0)]);
            for (backend, ring) in backends {
                let (tx, mut rx) = pipeline::channel("bench-host");
                let table = match backend {
                    Backend::Ebpf => ebpf_table.clone(),
                    _ => ProcessTable::new(100_000, Duration::from_secs(300)),
                };
                let ctx = SensorContext {
                    tx: tx.clone(),
                    state_dir: std::env::temp_dir(),
                    processes: table,
                };
                let mut config = NetConfig {
                    backend,
                    interval: Duration::from_secs(5),
                    ..NetConfig::default()
                };
                if backend == Backend::Ebpf {
                    config.ebpf_ring_buffer_bytes = ring;
                }
                let handle = spawn(config.settings().unwrap(), &ctx).await.unwrap();
                rx.recv().await.unwrap();
                observers.push((backend, ring, handle, rx));
            }

            let started = tokio::time::Instant::now();
            let script = format!(
                "for i in $(seq {count}); do bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; \
                 printf x >&3; head -c 2 <&3 >/dev/null'; done"
            );
            let mut shell = tokio::process::Command::new("bash")
                .args(["-c", &script])
                .spawn()
                .unwrap();
            let shell_pid = shell.id().unwrap();
            assert!(shell.wait().await.unwrap().success());
            let done = tokio::time::Instant::now();
            let mut lifetimes = server.join().unwrap();
            lifetimes.sort();
            let median = lifetimes[lifetimes.len() / 2];
            let longest = lifetimes[lifetimes.len() - 1];
            let short = lifetimes
                .iter()
                .filter(|l| **l < Duration::from_millis(100))
                .count();

            let mut ebpf_attributed = Vec::new();
            // Both observers are read at once; whatever has not arrived 30 s after the last
            // connection closed counts as missed.
            let deadline = done + Duration::from_secs(30);
            let mut counting = Vec::new();
            for (backend, ring, handle, mut rx) in observers {
                counting.push(tokio::spawn(async move {
                    let (mut seen, mut attributed, mut with_pid, mut with_bytes) = (0, 0, 0, 0);
                    let mut overflow = 0;
                    let mut last = done;
                    while seen < count {
                        let event = tokio::select! {
                            event = rx.recv() => event,
                            () = tokio::time::sleep_until(deadline) => None,
                        };
                        let Some(event) = event else { break };
                        match event.body {
                            Body::Net(net) if net.remote_port == port => {
                                seen += 1;
                                last = tokio::time::Instant::now();
                                let bytes =
                                    net.bytes_sent.is_some() && net.bytes_received.is_some();
                                with_bytes += usize::from(bytes);
                                if let Some(p) = &net.process {
                                    with_pid += usize::from(p.pid != shell_pid);
                                    let own = p.ppid == Some(shell_pid) && p.exe.ends_with("/bash");
                                    attributed += usize::from(own && bytes);
                                }
                            }
                            Body::Sensor(s)
                                if s.status == bannin::event::SensorStatus::Overflow =>
                            {
                                overflow += s.count;
                            }
                            _ => {}
                        }
                    }
                    let ring = match backend {
                        Backend::Ebpf => format!(" (ring {} KiB)", ring >> 10),
                        _ => String::new(),
                    };
                    println!(
                        "connect_burst {backend:?}{ring}: reported {seen}, with a process {with_pid}, \
                         with bytes {with_bytes}, with their own bash process and bytes \
                         {attributed} ({:.2}%), lost (reported) {overflow}; last event {:.2}s \
                         after the last connection",
                        attributed as f64 * 100.0 / count as f64,
                        last.saturating_duration_since(done).as_secs_f64(),
                    );
                    drop(handle);
                    (backend, ring, attributed)
                }));
            }
            for task in counting {
                let (backend, ring, attributed) = task.await.unwrap();
                if backend == Backend::Ebpf {
                    ebpf_attributed.push((ring, attributed));
                }
            }
            drop(process);
            println!(
                "connect_burst: {count} connections in {:.2}s, each from its own process; \
                 lifetime at the server: median {median:?}, longest {longest:?}, \
                 {short} under 100 ms",
                (done - started).as_secs_f64()
            );
            for (ring, attributed) in ebpf_attributed {
                assert!(
                    attributed * 1000 >= count * 999,
                    "eBPF{ring}: {attributed} of {count} attributed with bytes"
                );
            }
        }

        /// Net events until one matches, returning all of them.
        async fn until(
            rx: &mut mpsc::Receiver<Event>,
            wanted: impl Fn(&NetEvent) -> bool,
        ) -> Vec<NetEvent> {
            let wait = async {
                let mut seen = Vec::new();
                loop {
                    if let Body::Net(net) = rx.recv().await.unwrap().body {
                        let done = wanted(&net);
                        seen.push(net);
                        if done {
                            return seen;
                        }
                    }
                }
            };
            tokio::time::timeout(PATIENCE, wait)
                .await
                .expect("no matching net.connect event")
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reports_a_loopback_tcp_connection_once_with_its_process() {
            let (handle, mut rx) = started().await;
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (_accepted, _) = listener.accept().unwrap();
            let local_port = client.local_addr().unwrap().port();

            let seen = until(&mut rx, |n| n.local_port == local_port).await;
            let event = seen.last().unwrap();
            assert_eq!(event.protocol, "tcp");
            assert_eq!(event.remote_addr, "127.0.0.1");
            assert_eq!(event.remote_port, port);
            assert_eq!(event.remote_scope, "loopback");
            let process = event.process.as_ref().unwrap();
            assert_eq!(process.pid, std::process::id());
            assert_eq!(
                process.exe,
                std::env::current_exe().unwrap().to_string_lossy()
            );

            // A second connection proves that scans went on: by then the accepted end (inbound)
            // and a repeat of the first connection would have been reported if they were going
            // to be.
            let second = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _accepted_too = listener.accept().unwrap();
            let second_port = second.local_addr().unwrap().port();
            let later = until(&mut rx, |n| n.local_port == second_port).await;
            let everything: Vec<&NetEvent> = seen.iter().chain(&later).collect();
            assert!(
                everything.iter().all(|n| n.local_port != port),
                "the accepted end is inbound: {everything:?}"
            );
            let first_reports = everything
                .iter()
                .filter(|n| n.local_port == local_port && n.remote_port == port)
                .count();
            assert_eq!(first_reports, 1);
            drop(handle);
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn reports_connected_udp_and_ipv6_loopback() {
            let (handle, mut rx) = started().await;
            let server = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = server.local_addr().unwrap().port();
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.connect(("127.0.0.1", port)).unwrap();
            let udp_port = client.local_addr().unwrap().port();
            let seen = until(&mut rx, |n| n.local_port == udp_port).await;
            let event = seen.last().unwrap();
            assert_eq!(event.protocol, "udp");
            assert_eq!(event.remote_port, port);
            assert_eq!(event.process.as_ref().unwrap().pid, std::process::id());

            // Hosts without IPv6 cannot run the second half.
            if let Ok(listener) = TcpListener::bind("[::1]:0") {
                let port = listener.local_addr().unwrap().port();
                let client = TcpStream::connect(("::1", port)).unwrap();
                let local_port = client.local_addr().unwrap().port();
                let seen = until(&mut rx, |n| n.local_port == local_port).await;
                let event = seen.last().unwrap();
                assert_eq!(event.remote_addr, "::1");
                assert_eq!(event.remote_scope, "loopback");
            }
            drop(handle);
        }
    }
}
