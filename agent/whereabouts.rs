//! Where a process or thread waits, as the kernel tells it in `/proc`: for the log lines of
//! something that is taking too long (a start-up, a loader), so that a stall says where it stands.

use std::time::Duration;

/// One line: the task's state, the kernel function it sleeps in and its kernel stack, innermost
/// first (the stack is readable by root only; elsewhere it is left out). `task` is a directory of
/// `/proc`: `"1234"` or `"self/task/1235"`.
pub fn of(task: &str) -> String {
    let read = |what: &str| std::fs::read_to_string(format!("/proc/{task}/{what}")).ok();
    let state = read("stat")
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(") ")?;
            after.split(' ').next().map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let wchan = read("wchan").unwrap_or_default();
    let stack: Vec<String> = read("stack")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .take(12)
        .collect();
    format!(
        "in state {state}, waiting in {wchan:?}, kernel stack [{}]",
        stack.join(" < ")
    )
}

/// Every thread of this process, by name, with [`of`] each.
pub fn of_threads() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().into_string().ok()?;
            let path = format!("self/task/{tid}");
            let name = std::fs::read_to_string(format!("/proc/{path}/comm")).unwrap_or_default();
            Some(format!("{} ({tid}) {}", name.trim_end(), of(&path)))
        })
        .collect()
}

/// Until the returned guard is dropped, a thread waits `after`; if it is still held then, it
/// logs `what` has not ended, with where each of the process's threads waits.
pub fn watch(what: &'static str, after: Duration) -> Watch {
    let (done, wait) = std::sync::mpsc::sync_channel::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            if wait.recv_timeout(after) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                tracing::warn!(
                    "{what} has not ended after {after:?}; the agent's threads: {}",
                    of_threads().join("; ")
                );
            }
        });
    Watch {
        _done: spawned.ok().map(|_| done),
    }
}

/// Held while what [`watch`] watches goes on.
pub struct Watch {
    _done: Option<std::sync::mpsc::SyncSender<()>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sleeping thread is seen asleep, under its own name; as root, with the kernel's stack.
    #[test]
    fn a_sleeping_thread_says_where_it_sleeps() {
        let (stop, wait) = std::sync::mpsc::sync_channel::<()>(1);
        let sleeper = std::thread::Builder::new()
            .name("sleeper-x".into())
            .spawn(move || {
                let _ = wait.recv();
            })
            .unwrap();
        let mut seen = String::new();
        crate::testing::wait_until(
            "the sleeping thread listed",
            Duration::from_secs(10),
            || {
                seen = of_threads()
                    .into_iter()
                    .find(|line| line.starts_with("sleeper-x") && line.contains("in state S"))
                    .unwrap_or_default();
                !seen.is_empty()
            },
        );
        if nix::unistd::geteuid().is_root() {
            assert!(seen.contains("futex"), "{seen}");
        }
        drop(stop);
        sleeper.join().unwrap();
    }
}
