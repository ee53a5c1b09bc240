//! What every sensor is started with ([`SensorContext`]) and what it hands back ([`SensorHandle`]),
//! so `agent run` starts, lists and stops them all the same way.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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

/// The one way a sensor is told to stop: its tasks await it; its threads wait on their own
/// descriptors and on it together ([`Stop::wait_readable`]), so an idle thread sleeps with no
/// timeout instead of waking now and then to look at a flag.
#[derive(Clone)]
#[cfg_attr(not(target_os = "linux"), derive(Default))]
pub struct Stop {
    set: Arc<AtomicBool>,
    notify: Arc<Notify>,
    /// Readable from the moment the stop is set (never read, so it stays readable). `None` when
    /// the kernel refused an eventfd (out of descriptors): waits then end every [`FALLBACK_WAIT`]
    /// to look at the flag, as they all did before.
    #[cfg(target_os = "linux")]
    wake: Arc<Option<nix::sys::eventfd::EventFd>>,
    /// Called once when the stop is set: wakes a thread asleep on something else (a channel).
    hooks: Arc<Mutex<Vec<Hook>>>,
}

type Hook = Box<dyn FnOnce() + Send>;

/// Without an eventfd to wait on, how long a thread's wait lasts before it looks at the flag.
#[cfg(target_os = "linux")]
const FALLBACK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

#[cfg(target_os = "linux")]
impl Default for Stop {
    fn default() -> Stop {
        Stop {
            set: Arc::default(),
            notify: Arc::default(),
            hooks: Arc::default(),
            wake: Arc::new(
                nix::sys::eventfd::EventFd::from_flags(
                    nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                        | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
                )
                .ok(),
            ),
        }
    }
}

impl Stop {
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Tells the sensor to stop; [`SensorHandle`] does this, tests driving a backend's thread too.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
        #[cfg(target_os = "linux")]
        if let Some(wake) = self.wake.as_ref() {
            // Only fails once the counter is near overflow, which a stop never brings it to.
            let _ = wake.write(1);
        }
        let hooks = std::mem::take(&mut *self.hooks.lock().unwrap_or_else(|p| p.into_inner()));
        for hook in hooks {
            hook();
        }
    }

    /// Runs `hook` when the stop is set (at once if it is set already): how a thread asleep on a
    /// channel is woken to see it.
    pub fn on_set(&self, hook: impl FnOnce() + Send + 'static) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        // Looked at under the lock `set` drains under: a stop in between runs the hook there.
        if self.is_set() {
            drop(hooks);
            hook();
        } else {
            hooks.push(Box::new(hook));
        }
    }

    /// Waits until one of `fds` has something to read (or an error to report, which a read then
    /// says), the stop is set, or `timeout` passes (`None`: no timeout). True when one of `fds`
    /// is ready; false when the wait ended otherwise, which the caller tells apart with
    /// [`Stop::is_set`] and its own clock.
    #[cfg(target_os = "linux")]
    pub fn wait_readable(
        &self,
        fds: &[std::os::fd::BorrowedFd<'_>],
        timeout: Option<std::time::Duration>,
    ) -> std::io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;

        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        let timeout = match self.wake.as_ref() {
            Some(wake) => {
                polled.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
                timeout
            }
            None => Some(timeout.map_or(FALLBACK_WAIT, |t| t.min(FALLBACK_WAIT))),
        };
        // Rounded up to whole milliseconds, so a wait for a deadline never ends just short of it.
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => {
                let millis = t.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut polled, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(false),
            Err(errno) => return Err(std::io::Error::from(errno)),
        }
        Ok(polled
            .iter()
            .take(fds.len())
            .any(|fd| fd.revents().is_some_and(|r| !r.is_empty())))
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
