//! What the agent's synchronous unit tests share.

use std::time::{Duration, Instant};

/// Polls `done` until it holds; panics after `timeout` naming `what`. Synchronous tests wait on
/// the system's state this way (a child's exec, a process reaped), never on a fixed sleep.
#[expect(
    clippy::disallowed_methods,
    reason = "a synchronous test polls the system from a plain thread, bounded by the deadline"
)]
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Ring buffer sizes a benchmark measures side by side: the bytes listed in the environment
/// variable `variable` (comma-separated), or `default`.
pub fn ring_sizes(variable: &str, default: u32) -> Vec<u32> {
    match std::env::var(variable) {
        Ok(list) => list
            .split(',')
            .map(|size| size.trim().parse().expect("ring sizes in bytes"))
            .collect(),
        Err(_) => vec![default],
    }
}
