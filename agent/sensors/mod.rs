//! The agent's sensors. Each one is a module with a config struct (serde defaults), a `spawn`
//! function that takes an [`crate::pipeline::EventTx`], and the events it emits.

pub mod db;
pub mod files;
pub mod net;
#[cfg(target_os = "linux")]
mod netlink;
pub mod process;
