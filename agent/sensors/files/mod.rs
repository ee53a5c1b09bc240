//! The file sensor: creates, writes, renames and deletes below the watched trees, with the size
//! the file had, who did it where the kernel says so, and whether it looks like a data export.
//!
//! Two backends. As root on Linux, fanotify marks the filesystems of the watched trees and names
//! the process behind each event; elsewhere the portable `notify` watcher reports the same events
//! without a process (`process_known = false`). The sensor says which one runs, and why, in a
//! `sensor.status` event when it starts, and whether reads of large exports are watched
//! (`file.read`, fanotify only: one inode mark per export, see `fanotify/reads.rs`). Every file is examined the moment it is reported (size,
//! owner, mode, inode, a bounded head sample for export recognition) and its size remembered, so a
//! delete still carries the size of the file that is gone.

mod classify;
mod config;
#[cfg(target_os = "linux")]
mod fanotify;
mod notify_backend;
mod observe;
mod sizes;

use std::thread::JoinHandle;

use bannin::event::Event;

pub use config::{BackendChoice, FilesConfig, FilesSettings};

use super::process::ProcessTable;
use crate::pipeline::{self, BatchReceiver, BatchSender, EventTx};
use crate::sensors::{SensorContext, SensorHandle, Stop};
use observe::{Observer, Scope};

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("backend = \"fanotify\" was requested but fanotify is unavailable: {reason}")]
    FanotifyUnavailable { reason: String },
    #[error("cannot start the notify watcher: {source}")]
    Notify { source: notify::Error },
    #[error("cannot start the file sensor's thread: {source}")]
    Thread { source: std::io::Error },
    #[error("the file sensor's start-up task failed: {message}")]
    Startup { message: String },
}

/// The sensor's name in `sensor.*` events and drop counts.
const SENSOR: &str = "files";

/// Starts the file sensor on the configured trees, naming processes from the shared process
/// table and never looking into the agent's state directory.
///
/// Fails only when the configuration cannot work at all (fanotify forced but unavailable, no
/// watcher); a watch root that does not exist is reported as `sensor.error` and skipped, so one
/// stale path does not blind the agent. The shared process table in `ctx` names the process
/// behind each event (and file owners), as late as the event is handled.
pub async fn spawn(
    mut config: FilesSettings,
    ctx: &SensorContext,
) -> Result<SensorHandle, FilesError> {
    config.private_dir = Some(ctx.state_dir.clone());
    spawn_with_table(config, ctx.tx.clone(), ctx.processes.clone()).await
}

/// [`spawn`] without a state directory to keep out of the watch.
async fn spawn_with_table(
    config: FilesSettings,
    tx: EventTx,
    processes: ProcessTable,
) -> Result<SensorHandle, FilesError> {
    let tx = tx.for_sensor(SENSOR);
    let (out, rx) = pipeline::waiting_batches(config.queue_capacity);
    let stop = Stop::default();
    let thread_stop = stop.clone();
    let thread_tx = tx.clone();
    // Running before the start-up, which may already hand over events (its status, roots it
    // cannot watch) and waits while the queue is full. Ends once the sensor's side is gone
    // (the thread, or a start-up that failed) and its queue is empty.
    let forwarder = tokio::spawn(forward(rx, tx));
    // Start-up walks the trees and talks to the kernel: blocking work kept off the runtime.
    let (backend, thread) =
        tokio::task::spawn_blocking(move || start(config, thread_tx, processes, out, thread_stop))
            .await
            .map_err(|error| FilesError::Startup {
                message: error.to_string(),
            })??;
    let mut handle = SensorHandle::new(SENSOR, backend, stop);
    handle.add_thread(thread);
    handle.add_task(forwarder);
    Ok(handle)
}

/// Moves the sensor's batches of events to the spool, waiting while the spool is behind.
async fn forward(mut rx: BatchReceiver<Event>, tx: EventTx) {
    while let Some(mut events) = rx.recv_batch().await {
        if tx.send_events(&mut events).await.is_err() {
            return;
        }
        rx.give_back(events);
    }
}

enum Chosen {
    #[cfg(target_os = "linux")]
    Fanotify(Box<fanotify::FanotifyBackend>),
    Notify(
        notify_backend::NotifyBackend,
        Vec<(std::path::PathBuf, String)>,
    ),
}

fn start(
    config: FilesSettings,
    tx: EventTx,
    processes: ProcessTable,
    out: BatchSender<Event>,
    stop: Stop,
) -> Result<(&'static str, JoinHandle<()>), FilesError> {
    let (scope, missing) = Scope::new(&config)?;
    let (chosen, why) = choose(&config, &scope)?;
    let backend = match chosen {
        #[cfg(target_os = "linux")]
        Chosen::Fanotify(_) => "fanotify",
        Chosen::Notify(..) => "notify",
    };
    let watching: Vec<String> = scope
        .roots()
        .iter()
        .map(|root| root.display().to_string())
        .collect();
    let mut observer = Observer::new(backend, scope, &config, processes, out, tx);
    let (reads, reads_why) = reads(&config, &chosen);
    if reads.is_some() {
        observer.watch_reads(config.read_watch_min_size);
    }
    // The watched roots end the message: the collector reads them from there.
    observer.status(format!(
        "{backend}: {why}; {reads_why}; watching [{}]",
        watching.join(", ")
    ));
    for (root, reason) in missing {
        observer.error(format!("cannot watch {}: {reason}", root.display()), &root);
    }
    if config.scan_on_start {
        observer.scan();
    }
    let thread = std::thread::Builder::new().name("files-sensor".into());
    let span = tracing::info_span!("sensor", sensor = "files", backend);
    let spawned = match chosen {
        #[cfg(target_os = "linux")]
        Chosen::Fanotify(kernel) => {
            thread.spawn(move || span.in_scope(|| fanotify::run(*kernel, reads, observer, stop)))
        }
        Chosen::Notify(watcher, failed) => {
            for (root, reason) in failed {
                observer.error(format!("cannot watch {}: {reason}", root.display()), &root);
            }
            thread.spawn(move || span.in_scope(|| notify_backend::run(watcher, observer, stop)))
        }
    };
    spawned
        .map(|handle| (backend, handle))
        .map_err(|source| FilesError::Thread { source })
}

/// The reads group, when reads of exports can be watched, with how many exports it may hold;
/// and what the `sensor.status` event says about reads either way.
#[cfg(target_os = "linux")]
type Reads = Option<(fanotify::ReadGroup, usize)>;
#[cfg(not(target_os = "linux"))]
type Reads = Option<std::convert::Infallible>;

#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn reads(config: &FilesSettings, chosen: &Chosen) -> (Reads, String) {
    let unseen = |why: &str| (None, format!("reads of exports cannot be seen: {why}"));
    match chosen {
        Chosen::Notify(..) => unseen("watching reads needs the fanotify backend (root on Linux)"),
        #[cfg(target_os = "linux")]
        Chosen::Fanotify(_) if config.read_watch_max == 0 => unseen("read_watch_max = 0"),
        #[cfg(target_os = "linux")]
        Chosen::Fanotify(_) => match fanotify::open_reads() {
            Ok(mut group) => {
                let bytes = if !config.read_bytes {
                    "bytes read are unknown: read_bytes = false".to_string()
                } else {
                    match group.count_bytes(config.read_watch_max) {
                        Ok(()) => "bytes read are counted (eBPF), the counter attached only while an export is watched".to_string(),
                        Err(error) => format!("bytes read are unknown: eBPF: {error}"),
                    }
                };
                (
                    Some((group, config.read_watch_max)),
                    format!(
                        "reads of exports of at least {} bytes are watched (up to {} files), {bytes}",
                        config.read_watch_min_size, config.read_watch_max
                    ),
                )
            }
            Err(reason) => unseen(&reason),
        },
    }
}

/// Picks the backend and says why, the way the `sensor.status` event will.
fn choose(config: &FilesSettings, scope: &Scope) -> Result<(Chosen, String), FilesError> {
    let open_notify = |why: String| {
        notify_backend::open(scope, config.queue_capacity)
            .map(|(watcher, failed)| (Chosen::Notify(watcher, failed), why))
            .map_err(|source| FilesError::Notify { source })
    };
    match config.backend {
        BackendChoice::Notify => {
            open_notify("requested by configuration; process facts are not known".into())
        }
        #[cfg(target_os = "linux")]
        BackendChoice::Fanotify => fanotify::open(scope, config.kernel_queue)
            .map(|kernel| {
                let why = format!("requested by configuration; {}", kernel.queue);
                (Chosen::Fanotify(Box::new(kernel)), why)
            })
            .map_err(|reason| FilesError::FanotifyUnavailable { reason }),
        #[cfg(not(target_os = "linux"))]
        BackendChoice::Fanotify => Err(FilesError::FanotifyUnavailable {
            reason: "fanotify exists only on Linux".into(),
        }),
        #[cfg(target_os = "linux")]
        BackendChoice::Auto => match fanotify::open(scope, config.kernel_queue) {
            Ok(kernel) => {
                let why = format!(
                    "running as root and the kernel accepted the filesystem marks; {}",
                    kernel.queue
                );
                Ok((Chosen::Fanotify(Box::new(kernel)), why))
            }
            Err(reason) => open_notify(format!(
                "fanotify unavailable: {reason}; using notify, process facts are not known"
            )),
        },
        #[cfg(not(target_os = "linux"))]
        BackendChoice::Auto => {
            open_notify("fanotify exists only on Linux; process facts are not known".into())
        }
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod bench;
#[cfg(test)]
mod tests;
