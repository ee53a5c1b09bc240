//! One log's bytes through the database sensor's follower, parser, tracker and totals.
#![no_main]

use bannin_agent_tree::sensors::db::fuzzing::{self, Log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("bannin-fuzz-pg_csvlog-{}", std::process::id()));
    fuzzing::run(Log::PostgresCsv, &dir, data);
});
