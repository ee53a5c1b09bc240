//! The SQL lexer, classifier and masking, for both dialects.
#![no_main]

use bannin_agent_tree::sensors::db::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        fuzzing::sql(text);
    }
});
