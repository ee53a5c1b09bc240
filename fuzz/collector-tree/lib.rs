//! The collector's modules, declared as `collector/main.rs` declares them, so the fuzz targets can
//! call their entry points. Nothing here is a copy: every module is the collector's own file.
#![allow(dead_code, unused_imports, unused_macros)]

#[path = "../../collector/alert.rs"]
pub mod alert;
#[path = "../../collector/config.rs"]
pub mod config;
#[path = "../../collector/detect/mod.rs"]
pub mod detect;
#[path = "../../collector/detection.rs"]
pub mod detection;
#[path = "../../collector/enrollment.rs"]
pub mod enrollment;
#[path = "../../collector/hooks/mod.rs"]
pub mod hooks;
#[path = "../../collector/listen.rs"]
pub mod listen;
#[path = "../../collector/metrics.rs"]
pub mod metrics;
#[path = "../../collector/present/mod.rs"]
pub mod present;
#[path = "../../collector/query/mod.rs"]
pub mod query;
#[path = "../../collector/quickstart.rs"]
pub mod quickstart;
#[path = "../../collector/report/mod.rs"]
pub mod report;
#[path = "../../collector/retention.rs"]
pub mod retention;
#[path = "../../collector/seal.rs"]
pub mod seal;
#[path = "../../collector/serve.rs"]
pub mod serve;
#[path = "../../collector/service.rs"]
pub mod service;
#[path = "../../collector/store/mod.rs"]
pub mod store;
