//! The commented example configurations in examples/ parse and are accepted by the real binaries.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn example(name: &str, tmp: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let copy = tmp.join(name);
    private_file(&copy, &std::fs::read_to_string(source).unwrap());
    copy
}

#[test]
fn the_example_configurations_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let config = example("collector.toml", tmp.path());
    // The collector starts with its example (its listen address replaced by a free port).
    let collector = Collector::start_with(
        &tmp.path().join("collector"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let state = tmp.path().join("agent");
    collector.enroll(&state, "example");
    // The agent starts with its example: missing watch paths and logs are reported, not fatal.
    let agent_config = example("agent.toml", tmp.path());
    let agent = Agent::start(&state, &["--config", agent_config.to_str().unwrap()]);
    wait_for(
        "the agent to report its unreadable database logs",
        Duration::from_secs(60),
        || {
            collector
                .events(&["--kind", "sensor.*"])
                .iter()
                .any(|e| {
                    e["sensor"] == "db"
                        || e["path"].as_str().is_some_and(|p| p.contains("postgresql"))
                })
                .then_some(())
        },
    );
    drop(agent);
    let out = run_output(
        Command::new(COLLECTOR)
            .args(["serve", "--data-dir"])
            .arg(tmp.path().join("c2"))
            .args(["--config", "/nonexistent/collector.toml"]),
    );
    assert_eq!(out.status.code(), Some(2));
}
