//! The process sensor: `process.start` and `process.exit` events, and the process table that the
//! file and network sensors ask "who is pid N, and who started it".
//!
//! On Linux as root it loads eBPF programs on the kernel's exec, fork and exit tracepoints
//! ([`ebpf`]), which hand over each exec with its executable and arguments read at exec time.
//! Where BPF cannot be loaded (no privilege, no BTF, a refusing verifier) it listens to the
//! kernel's process-events connector ([`connector`]), which sees every exec and exit however brief
//! but reads the program from `/proc` afterwards. Elsewhere, or without privilege, it polls the
//! process list ([`poll`]). Its `sensor.status` event says which, and why not the better one. All,
//! and the table, read processes through [`os`]: `/proc` on Linux, `sysinfo` elsewhere.

mod config;
#[cfg(target_os = "linux")]
mod connector;
#[cfg(target_os = "linux")]
mod ebpf;
pub mod os;
mod poll;
mod table;

use std::time::Duration;

pub use config::{Backend, ProcessConfig, ProcessSettings};
pub use table::{ProcessTable, Snapshot};

use crate::pipeline::EventTx;
use crate::sensors::{Notice, SensorContext, SensorHandle, Stop};

/// The sensor's name in `sensor.*` events and drop counts.
const SENSOR: &str = "process";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[cfg(target_os = "linux")]
    #[error("[process] backend = \"connector\" but {source}")]
    Connector {
        #[source]
        source: connector::ConnectorError,
    },
    #[cfg(target_os = "linux")]
    #[error("[process] backend = \"ebpf\" but the eBPF programs cannot run: {source}")]
    Ebpf {
        #[source]
        source: crate::sensors::ebpf::EbpfError,
    },
    #[cfg(not(target_os = "linux"))]
    #[error("[process] backend = \"{backend}\" needs Linux; use \"auto\" or \"poll\"")]
    Unsupported { backend: &'static str },
    #[cfg(target_os = "linux")]
    #[error("cannot start the process sensor's threads: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list processes")]
    Poll,
    #[error("the spool writer has stopped")]
    Closed,
}

/// Starts the process sensor with the best backend the host allows, feeding the shared process
/// table in `ctx`, and reports which backend in a `sensor.status` event. The table works (from
/// `/proc`, lazily) even when the sensor is disabled.
pub async fn spawn(
    config: ProcessSettings,
    ctx: &SensorContext,
) -> Result<SensorHandle, ProcessError> {
    let tx = ctx.tx.for_sensor(SENSOR);
    let table = &ctx.processes;
    let stop = Stop::default();
    if !config.enabled {
        return Ok(SensorHandle::new(SENSOR, "off", stop));
    }

    let fallback = match start_kernel(&config, table, &tx, &stop).await? {
        Ok((source, threads, message)) => {
            let mut handle = SensorHandle::new(SENSOR, source, stop);
            for thread in threads {
                handle.add_thread(thread);
            }
            send_status(&tx, message).await?;
            return Ok(handle);
        }
        Err(reason) => reason,
    };

    let interval = config.poll_interval;
    let message = match fallback {
        Some(reason) => format!(
            "{reason}; polling every {}, short-lived processes may be missed",
            human(interval)
        ),
        None => format!(
            "polling every {} as configured, short-lived processes may be missed",
            human(interval)
        ),
    };
    let mut handle = SensorHandle::new(SENSOR, poll::SOURCE, stop);
    let poller = poll::Poller::start(table.clone())
        .await
        .ok_or(ProcessError::Poll)?;
    handle.spawn_until_stopped(poller.run(tx.clone(), interval));
    send_status(&tx, message).await?;
    Ok(handle)
}

/// A kernel-fed backend that started: its source name, its threads and its status message.
type Started = (&'static str, Vec<std::thread::JoinHandle<()>>, String);

/// Tries eBPF, then the connector, as configured: the outer error is fatal, the inner one says why
/// the sensor polls instead (`None`: polling was asked for).
#[cfg(target_os = "linux")]
async fn start_kernel(
    config: &ProcessSettings,
    table: &ProcessTable,
    tx: &EventTx,
    stop: &Stop,
) -> Result<Result<Started, Option<String>>, ProcessError> {
    let settings = || connector::Settings {
        queue_capacity: config.queue_capacity,
        io_sample_interval: config.io_sample_interval,
    };
    let thread_error = |error: tokio::task::JoinError| ProcessError::Thread {
        source: std::io::Error::other(error),
    };
    let mut why_not_ebpf = None;
    if matches!(config.backend, Backend::Auto | Backend::Ebpf) {
        let ring = config.ebpf_ring_buffer_bytes;
        match tokio::task::spawn_blocking(move || ebpf::open(ring))
            .await
            .map_err(thread_error)?
        {
            Ok(loaded) => {
                let threads =
                    ebpf::spawn(loaded, settings(), table.clone(), tx.clone(), stop.clone())
                        .map_err(|source| ProcessError::Thread { source })?;
                let message = "process events from eBPF programs on the kernel's exec, fork and \
                               exit tracepoints: every exec with its executable and arguments \
                               read at exec time";
                return Ok(Ok((ebpf::SOURCE, threads, message.to_string())));
            }
            Err(source) if config.backend == Backend::Ebpf => {
                return Err(ProcessError::Ebpf { source });
            }
            Err(error) => why_not_ebpf = Some(format!("eBPF unavailable: {error}")),
        }
    }
    if config.backend == Backend::Poll {
        return Ok(Err(None));
    }
    let opened = tokio::task::spawn_blocking(connector::Connector::open)
        .await
        .map_err(thread_error)?;
    let connector = match opened {
        Ok(connector) => connector,
        Err(source) if config.backend == Backend::Connector => {
            return Err(ProcessError::Connector { source });
        }
        Err(error) => {
            let reason = if nix::unistd::geteuid().is_root() {
                format!("proc connector unavailable: {error}")
            } else {
                "proc connector unavailable: not root".to_string()
            };
            let reason = match why_not_ebpf {
                Some(why) => format!("{why}; {reason}"),
                None => reason,
            };
            return Ok(Err(Some(reason)));
        }
    };
    let threads = connector::spawn(
        connector,
        settings(),
        table.clone(),
        tx.clone(),
        stop.clone(),
    )
    .map_err(|source| ProcessError::Thread { source })?;
    let mut message = "process events from the kernel's proc connector: every exec and exit, \
                       with the program read from /proc after the exec"
        .to_string();
    if let Some(why) = why_not_ebpf {
        message = format!("{why}; {message}");
    }
    Ok(Ok((connector::SOURCE, threads, message)))
}

#[cfg(not(target_os = "linux"))]
async fn start_kernel(
    config: &ProcessSettings,
    _table: &ProcessTable,
    _tx: &EventTx,
    _stop: &Stop,
) -> Result<Result<Started, Option<String>>, ProcessError> {
    match config.backend {
        Backend::Connector => Err(ProcessError::Unsupported {
            backend: "connector",
        }),
        Backend::Ebpf => Err(ProcessError::Unsupported { backend: "ebpf" }),
        Backend::Poll => Ok(Err(None)),
        Backend::Auto => Ok(Err(Some(
            "eBPF and the proc connector are Linux-only".to_string(),
        ))),
    }
}

async fn send_status(tx: &EventTx, message: String) -> Result<(), ProcessError> {
    tx.send(Notice::status(SENSOR, message).logged())
        .await
        .map(drop)
        .map_err(|_| ProcessError::Closed)
}

/// "2s" or "500ms", as a configuration file would say it.
fn human(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests;
