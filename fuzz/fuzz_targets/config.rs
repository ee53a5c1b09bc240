//! A configuration file as `run --config` and `serve --config` load it: TOML, then validation.
#![no_main]

use bannin_agent_tree::config::AgentConfig;
use bannin_collector_tree::config::CollectorConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bannin-fuzz-config-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("fuzzed.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = AgentConfig::load(&path);
    let _ = CollectorConfig::load(&path);
});
