//! What the fuzz targets in `fuzz/` drive, compiled only under `--cfg fuzzing` (cargo fuzz sets it)
//! and in tests, which check that the golden logs produce events through it:
//! a log's bytes go through the same follower, parsers, trackers and totals as in [`super::spawn`],
//! and the state a restart would read back must survive its round trip.

use std::path::Path;

use super::config::{self, DatabaseConfig};
use super::source::Source;
use super::state::SourceState;
use super::statement::{self, Dialect};

/// Which log the bytes are.
#[derive(Debug, Clone, Copy)]
pub enum Log {
    PostgresCsv,
    PostgresJson,
    MariadbAudit,
    MariadbSlow,
}

/// Writes `bytes` as the whole log into `dir`, reads it to the end as the sensor would, and
/// returns how many events came out.
pub fn run(log: Log, dir: &Path, bytes: &[u8]) -> usize {
    if std::fs::create_dir_all(dir).is_err() {
        return 0;
    }
    let (kind, format, file, slow) = match log {
        Log::PostgresCsv => ("postgresql", "csvlog", "postgresql.csv", false),
        Log::PostgresJson => ("postgresql", "jsonlog", "postgresql.json", false),
        Log::MariadbAudit => ("mariadb", "auto", "server_audit.log", false),
        Log::MariadbSlow => ("mariadb", "auto", "server_audit.log", true),
    };
    let (log_bytes, slow_bytes): (&[u8], &[u8]) = if slow { (b"", bytes) } else { (bytes, b"") };
    let log_path = dir.join(file);
    let slow_path = dir.join("slow.log");
    if std::fs::write(&log_path, log_bytes).is_err()
        || std::fs::write(&slow_path, slow_bytes).is_err()
    {
        return 0;
    }
    let log_dir = if kind == "postgresql" { dir } else { &log_path };
    let text = format!(
        "kind = {kind:?}\nformat = {format:?}\nlog = {:?}\nstart_at = \"beginning\"\n\
         sensitive_tables = [\"public.customers\", \"shop.customers\"]\n{}",
        log_dir.display().to_string(),
        if slow {
            format!("slow_log = {:?}\n", slow_path.display().to_string())
        } else {
            String::new()
        }
    );
    let config: DatabaseConfig = match toml::from_str(&text) {
        Ok(config) => config,
        Err(error) => panic!("the fuzz harness's own config is refused: {error}"),
    };
    let settings = match config::settings(vec![config]) {
        Ok(mut settings) => settings.remove(0),
        Err(error) => panic!("the fuzz harness's own config is refused: {error}"),
    };
    let mut source = Source::new(settings, SourceState::default());
    let mut events = 0;
    for _ in 0..64 {
        let outcome = source.poll();
        events += outcome.events.len();
        if !outcome.more {
            break;
        }
    }
    let _ = source.garbled_report();
    let saved = serde_json::to_string(&source.state())
        .unwrap_or_else(|error| panic!("the sensor state does not serialize: {error}"));
    if let Err(error) = serde_json::from_str::<SourceState>(&saved) {
        panic!("a restart could not read the saved sensor state back: {error}\n{saved}");
    }
    events
}

/// The SQL lexer and masking, for both dialects.
pub fn sql(text: &str) {
    for dialect in [Dialect::Postgres, Dialect::MariaDb] {
        let _ = statement::analyze(text, dialect, "db");
        let masked = statement::mask(text, dialect);
        let _ = statement::mask_error(text, text, dialect);
        let _ = statement::truncate(&masked, 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_golden_logs_produce_events_through_the_fuzzing_entry_point() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/db");
        let scratch = tempfile::tempdir().unwrap();
        for (log, file) in [
            (Log::PostgresCsv, "pg-csv-sessions.log"),
            (Log::PostgresJson, "pg-json-sessions.log"),
            (Log::MariadbAudit, "mariadb-sessions.log"),
        ] {
            let bytes = std::fs::read(golden.join(file)).unwrap();
            let dir = scratch.path().join(file);
            assert!(run(log, &dir, &bytes) > 10, "{file} made no events");
        }
        let slow = std::fs::read(golden.join("mariadb-sessions.slow")).unwrap();
        run(Log::MariadbSlow, &scratch.path().join("slow"), &slow);
        sql("SELECT name FROM public.customers WHERE id = 42");
    }
}
