//! The outbound-connection sensor: one `net.connect` event for each new outbound TCP connection or
//! connected UDP flow, with the process that owns it.
//!
//! On Linux it lists the host's sockets every `interval` (inet_diag dumps over netlink, filtered by
//! state in the kernel; the text tables of `/proc/net/{tcp,tcp6,udp,udp6}` where the kernel
//! refuses those) and finds each socket's owner by the socket inode in `/proc/<pid>/fd`, scanning
//! only when a socket it does not know appears.
//! Connections that open and close between two reads are caught from the kernel's socket
//! destruction notices ([`destroy`], root only), with their byte counts but without their process,
//! which is gone from the socket by then. Only sockets in the agent's own network namespace are
//! seen; connections already open when the sensor starts are reported at its first read.
//! Elsewhere the sensor reports that it cannot run.

mod config;
#[cfg(target_os = "linux")]
mod destroy;
#[cfg(target_os = "linux")]
mod diag;
#[cfg(target_os = "linux")]
mod scanner;
// Only Linux's socket tables are read; elsewhere the sensor says so and watches nothing.
#[cfg(target_os = "linux")]
mod scope;
#[cfg(target_os = "linux")]
mod table;

pub use config::{NetConfig, NetSettings};

use super::process::ProcessTable;
use crate::pipeline::EventTx;
use crate::sensors::{Notice, SensorContext, SensorHandle, Stop};

const SENSOR: &str = "network";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the spool writer has stopped")]
    Closed,
}

/// Starts the sensor, which names owners from the shared process table in `ctx`, and reports in a
/// `sensor.status` event what it watches.
pub async fn spawn(config: NetSettings, ctx: &SensorContext) -> Result<SensorHandle, NetError> {
    let tx = ctx.tx.for_sensor(SENSOR);
    let source = if config.enabled { "sock_diag" } else { "off" };
    let mut handle = SensorHandle::new(SENSOR, source, Stop::default());
    if config.enabled {
        start(config, tx, ctx.processes.clone(), &mut handle).await?;
    }
    Ok(handle)
}

#[cfg(target_os = "linux")]
async fn start(
    config: NetSettings,
    tx: EventTx,
    table: ProcessTable,
    handle: &mut SensorHandle,
) -> Result<(), NetError> {
    let (closed_tx, closed_rx) = crate::pipeline::lossy(&tx, CLOSED_QUEUE);
    let notices = destroy::spawn(config.include_udp, closed_tx, handle.stop_signal());
    let every = config.interval.as_millis();
    let (message, closed_rx) = match notices {
        Ok(thread) => {
            handle.add_thread(thread);
            (
                format!(
                    "reading the kernel's socket tables every {every}ms; connections closed before a \
                     read are reported from the kernel's socket destruction notices, without their process"
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
    tx.send(Notice::status(SENSOR, message).logged())
        .await
        .map_err(|_| NetError::Closed)?;
    // The scanner holds nothing that needs handing on: the stop signal drops it where it waits.
    handle.spawn_until_stopped(scanner::run(config, tx, table, closed_rx));
    Ok(())
}

/// Destruction notices waiting for the sensor's task; more are counted as dropped.
#[cfg(target_os = "linux")]
const CLOSED_QUEUE: usize = 4096;

#[cfg(not(target_os = "linux"))]
async fn start(
    _config: NetSettings,
    tx: EventTx,
    _table: ProcessTable,
    _handle: &mut SensorHandle,
) -> Result<(), NetError> {
    let message = "outbound connections are only watched on Linux";
    tx.send(Notice::status(SENSOR, message).logged())
        .await
        .map_err(|_| NetError::Closed)?;
    Ok(())
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
            started_with(Duration::from_millis(100)).await.0
        }

        /// The sensor reading every `interval`, and its status message.
        async fn started_with(
            interval: Duration,
        ) -> ((SensorHandle, mpsc::Receiver<Event>), String) {
            let (tx, mut rx) = pipeline::channel("test-host");
            let config = NetConfig {
                interval,
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
            let status = rx.recv().await.unwrap();
            let Body::Sensor(status) = status.body else {
                panic!("expected the sensor's status first, got {status:?}");
            };
            ((handle, rx), status.message)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_connection_closed_between_reads_is_reported_with_its_bytes() {
            use std::io::{Read, Write};

            // The listener exists before the sensor's first read, as a server's would.
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let ((handle, mut rx), status) = started_with(Duration::from_secs(2)).await;
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

            let seen = until(&mut rx, |n| n.local_port == local_port).await;
            let event = seen.last().unwrap();
            assert_eq!(event.remote_port, port);
            assert_eq!(event.remote_scope, "loopback");
            // Unless a read happened to fall into the millisecond the connection was open, the
            // kernel's notice reported it, with its byte counts and without its process.
            // The kernel's counters also count the SYN and FIN, one each.
            if event.process.is_none() {
                let sent = event.bytes_sent.unwrap();
                let received = event.bytes_received.unwrap();
                assert!((1000..=1002).contains(&sent), "{event:?}");
                assert!((2..=4).contains(&received), "{event:?}");
            }
            assert!(
                seen.iter().all(|n| n.local_port != port),
                "the accepted end is inbound: {seen:?}"
            );
            drop(handle);
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
