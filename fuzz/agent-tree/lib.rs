//! The agent's modules, declared as `agent/main.rs` declares them, so the fuzz targets can call
//! their entry points. Nothing here is a copy: every module is the agent's own file.
#![allow(dead_code, unused_imports, unused_macros)]
#![allow(unexpected_cfgs)]

#[path = "../../agent/config.rs"]
pub mod config;
#[path = "../../agent/identity.rs"]
pub mod identity;
#[path = "../../agent/pipeline.rs"]
pub mod pipeline;
#[path = "../../agent/run.rs"]
pub mod run;
#[path = "../../agent/sender.rs"]
pub mod sender;
#[path = "../../agent/sensors/mod.rs"]
pub mod sensors;
#[path = "../../agent/spool.rs"]
pub mod spool;
#[cfg(test)]
#[path = "../../agent/testing.rs"]
pub mod testing;
