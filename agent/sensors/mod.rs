//! The agent's sensors. Each one is a module with a config struct (serde defaults) checked into
//! settings when the configuration is loaded, a `spawn(settings, &SensorContext)` that returns a
//! [`SensorHandle`], and the events it emits.

pub mod db;
#[cfg(target_os = "linux")]
pub mod ebpf;
pub mod files;
mod handle;
pub mod net;
#[cfg(target_os = "linux")]
mod netlink;
mod notice;
pub mod process;

pub use handle::{SensorContext, SensorHandle, Stop};
pub use notice::Notice;

/// Every sensor's checked configuration, made when the configuration is loaded
/// ([`crate::config::AgentConfig::settings`]), so a section that cannot work stops the agent
/// before the spool opens.
#[derive(Debug, Clone)]
pub struct SensorSettings {
    pub files: files::FilesSettings,
    pub process: process::ProcessSettings,
    pub network: net::NetSettings,
    pub databases: Vec<db::DbSettings>,
}
