//! What every sensor is started with ([`SensorContext`]) and what it hands back ([`SensorHandle`]),
//! so `agent run` starts, lists and stops them all the same way.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::process::ProcessTable;
use crate::pipeline::EventTx;

/// What a sensor's `spawn` gets besides its own settings.
#[derive(Clone)]
pub struct SensorContext {
    /// The channel into the spool; each sensor names itself with [`EventTx::for_sensor`].
    pub tx: EventTx,
    /// The agent's state directory: where a sensor keeps what must survive a restart, and what
    /// the file sensor never watches.
    pub state_dir: PathBuf,
    /// "Who is pid N, and who started it", shared by every sensor and fed by the process sensor.
    pub processes: ProcessTable,
}

/// The one way a sensor is told to stop: its threads look at it between reads, its tasks await it.
#[derive(Clone, Default)]
pub struct Stop {
    set: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Stop {
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Tells the sensor to stop; [`SensorHandle`] does this, tests driving a backend's thread too.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Returns once the sensor is told to stop.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a `set` in between is not missed.
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// A running sensor. [`SensorHandle::stop`] tells it to stop and waits until what it had read is
/// handed to the spool; dropping the handle tells it to stop without waiting, and cancels its tasks.
pub struct SensorHandle {
    name: &'static str,
    source: String,
    stop: Stop,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SensorHandle {
    /// A sensor listed as `name` running from `source` (which backend, or "off"), whose threads
    /// and tasks watch `stop`; they are added as they are started.
    pub fn new(name: &'static str, source: impl Into<String>, stop: Stop) -> SensorHandle {
        SensorHandle {
            name,
            source: source.into(),
            stop,
            threads: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// What `agent.start` lists: `name:source`, e.g. `files:fanotify`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.name, self.source)
    }

    #[cfg(test)]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The signal the sensor's threads and tasks watch (today only the network sensor's
    /// Linux-only notice thread needs it).
    #[cfg(target_os = "linux")]
    pub fn stop_signal(&self) -> Stop {
        self.stop.clone()
    }

    /// A thread that ends by itself once the stop signal is set.
    pub fn add_thread(&mut self, thread: std::thread::JoinHandle<()>) {
        self.threads.push(thread);
    }

    /// A task that ends by itself once the stop signal is set or its threads are gone; `stop`
    /// waits for it after the threads.
    pub fn add_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Runs `work` until the stop signal, which drops it at its next await: for tasks that hold
    /// nothing that must be handed on.
    pub fn spawn_until_stopped(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            tokio::select! {
                () = work => {}
                () = stop.wait() => {}
            }
        }));
    }

    /// Stops the sensor and waits for its threads, then its tasks.
    pub async fn stop(mut self) {
        self.stop.set();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for SensorHandle {
    fn drop(&mut self) {
        self.stop.set();
        for task in &self.tasks {
            task.abort();
        }
    }
}
