//! The Linux backend for root: fanotify, which names the process behind every event.
//!
//! Two notification groups mark the filesystems of the watched trees:
//! - `names` reports creates, deletes and renames with directory file handles and entry names
//!   (`FAN_REPORT_DFID_NAME | FAN_REPORT_FID`); the handles are turned back into paths with
//!   `open_by_handle_at` against a descriptor on the same filesystem.
//! - `writes` reports close-after-write the classic way, with an open descriptor to the file, so
//!   the file can be examined even when it was deleted a microsecond later.
//!
//! - `modifies` reports `FAN_MODIFY` with file handles, for truncates no close follows.
//! - `reads` ([`reads`]) holds one inode mark per large export, for `file.read`, whose bytes
//!   eBPF programs count ([`read_bytes`]).
//!
//! Events of all are filtered to the watched trees and to other processes than the agent.
//!
//! [`setup`] initialises the groups and marks the filesystems, [`record`] parses what a read of
//! the `names` group returns, [`resolve`] turns file handles back into paths, and [`event_loop`]
//! reads the groups and hands what they report to the observer.

mod event_loop;
mod read_bytes;
mod reads;
mod record;
mod resolve;
mod setup;

pub use event_loop::run;
pub use reads::{ReadGroup, open as open_reads};
pub use setup::{FanotifyBackend, open};
