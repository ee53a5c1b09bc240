//! A rule file as `rules = [...]` loads it: YAML, Sigma and correlation compilation, engine set-up.
#![no_main]

use bannin_collector_tree::detect::{DetectConfig, Engine};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bannin-fuzz-rules-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("fuzzed.yml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let config: DetectConfig = toml::from_str(&format!(
        "builtin_rules = false\nrules = [{:?}]\n",
        path.display().to_string()
    ))
    .expect("the harness's own detection config parses");
    let _ = Engine::new(&config);
});
