//! Investigation queries on a large store: a generator writes N events from M agents straight into a
//! collector store (the real schema, created by the real binary; real encoded events, a valid hash
//! chain and real batch signatures, so `verify` passes on it), then the real `bannin-collector`
//! binary answers host + time-range queries (`events --host`, `timeline`) and `scope` over random
//! windows, and the median and p90 wall times are printed with the exact commands.
//!
//! Run: `cargo bench --bench store_query -- --events 10000000 --agents 100`
//! Options: `--dir DIR` (keep and reuse the store there), `--rounds N`, `--days D` (span of the data),
//! `--window 1h` (query window), `--index-cost N` (also time N inserts with and without the
//! `(agent_no, ts)` index; 0 skips it).

#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/options.rs"]
mod options;
#[path = "support/store_gen.rs"]
mod store_gen;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bannin::time::parse_duration;
use rusqlite::{Connection, params};

use store_gen::{COLLECTOR, Rng, run_ok};

struct Options {
    events: u64,
    agents: usize,
    rounds: usize,
    days: u64,
    window: Duration,
    dir: Option<PathBuf>,
    index_cost: u64,
}

fn options() -> Options {
    Options {
        events: options::option("--events").unwrap_or(1_000_000),
        agents: options::option("--agents").unwrap_or(100),
        rounds: options::option("--rounds").unwrap_or(21),
        days: options::option("--days").unwrap_or(30),
        window: options::option::<String>("--window")
            .map(|w| parse_duration(&w).unwrap())
            .unwrap_or(Duration::from_secs(3600)),
        dir: options::option("--dir"),
        index_cost: options::option("--index-cost").unwrap_or(500_000),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Runs `args` `rounds` times with windows from `window_at`; returns (p50, p90, mean output lines).
fn measure(
    rounds: usize,
    mut args_for: impl FnMut(usize) -> Vec<String>,
) -> (Duration, Duration, usize, String) {
    let mut times = Vec::new();
    let mut lines = 0;
    let mut example = String::new();
    for round in 0..rounds {
        let args = args_for(round);
        if round == 0 {
            example = format!("bannin-collector {}", args.join(" "));
        }
        let began = Instant::now();
        let out = run_ok(Command::new(COLLECTOR).args(&args));
        times.push(began.elapsed());
        lines += out.lines().count();
    }
    times.sort_unstable();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        lines / rounds.max(1),
        example,
    )
}

/// Times `rows` inserts of small events into a fresh store with and without the (agent_no, ts) index.
fn index_cost(rows: u64) {
    let schema = |with_index: bool| {
        let mut sql = String::from(
            "CREATE TABLE events (agent_no INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
                kind TEXT NOT NULL, path TEXT, payload BLOB NOT NULL, hash BLOB NOT NULL,
                PRIMARY KEY (agent_no, seq)) WITHOUT ROWID;
             CREATE INDEX events_ts ON events (ts);",
        );
        if with_index {
            sql.push_str("CREATE INDEX events_agent_ts ON events (agent_no, ts);");
        }
        sql
    };
    let mut results = Vec::new();
    for with_index in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .unwrap();
        conn.execute_batch(&schema(with_index)).unwrap();
        let mut rng = Rng(7);
        let payload = vec![7u8; 220];
        let began = Instant::now();
        let mut g = 0;
        while g < rows {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            {
                let mut insert = conn
                    .prepare_cached(
                        "INSERT INTO events VALUES (?1, ?2, ?3, 'file.write', NULL, ?4, ?5)",
                    )
                    .unwrap();
                // Batches of 1000 events from one agent, as ingest commits them.
                let agent = rng.below(100) as i64;
                for _ in 0..1000 {
                    insert
                        .execute(params![
                            agent,
                            g as i64,
                            1_700_000_000_000_000_000i64 + g as i64 * 1_000_000,
                            payload,
                            [0u8; 32].to_vec()
                        ])
                        .unwrap();
                    g += 1;
                }
            }
            conn.execute_batch("COMMIT").unwrap();
        }
        results.push(rows as f64 / began.elapsed().as_secs_f64());
    }
    println!(
        "index cost: {rows} inserts in 1000-event transactions (synchronous=FULL): \
         {:.0} events/s without (agent_no, ts), {:.0} events/s with it ({:+.1}%)",
        results[0],
        results[1],
        (results[1] / results[0] - 1.0) * 100.0
    );
}

/// The arguments of one query case for round `i`.
type ArgsFor<'a> = Box<dyn Fn(usize) -> Vec<String> + 'a>;

fn main() {
    let o = options();
    let keep = o.dir.is_some();
    let tmp = tempfile::Builder::new()
        .prefix("bannin-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = o.dir.clone().unwrap_or_else(|| tmp.path().join("store"));
    let span = Duration::from_secs(o.days * 86_400);
    let start = store_gen::build_or_reuse(&dir, o.events, o.agents, span);

    let mut rng = Rng(0x5eed);
    let mut windows = Vec::new();
    for _ in 0..o.rounds {
        let room = span.saturating_sub(o.window).as_secs().max(1);
        let since = start.saturating_add(Duration::from_secs(rng.below(room)));
        windows.push((
            since,
            since.saturating_add(o.window),
            rng.below(o.agents as u64),
        ));
    }
    let data_dir = dir.display().to_string();
    let window = |i: usize| windows[i];
    let cases: Vec<(&str, ArgsFor)> = vec![
        (
            "events --host H --since --until",
            Box::new(|i| {
                let (since, until, host) = window(i);
                vec![
                    "events".into(),
                    "--data-dir".into(),
                    data_dir.clone(),
                    "--host".into(),
                    format!("host-{host:03}"),
                    "--since".into(),
                    since.to_rfc3339(),
                    "--until".into(),
                    until.to_rfc3339(),
                    "--limit".into(),
                    "100000".into(),
                    "--format".into(),
                    "json".into(),
                ]
            }),
        ),
        (
            "timeline --host H --since --until",
            Box::new(|i| {
                let (since, until, host) = window(i);
                vec![
                    "timeline".into(),
                    "--data-dir".into(),
                    data_dir.clone(),
                    "--host".into(),
                    format!("host-{host:03}"),
                    "--since".into(),
                    since.to_rfc3339(),
                    "--until".into(),
                    until.to_rfc3339(),
                    "--format".into(),
                    "json".into(),
                ]
            }),
        ),
        (
            "scope --since --until (all hosts)",
            Box::new(|i| {
                let (since, until, _) = window(i);
                vec![
                    "scope".into(),
                    "--data-dir".into(),
                    data_dir.clone(),
                    "--since".into(),
                    since.to_rfc3339(),
                    "--until".into(),
                    until.to_rfc3339(),
                    "--format".into(),
                    "json".into(),
                ]
            }),
        ),
    ];
    println!(
        "\n{} rounds, window {:?}, each a separate run of the release binary (process start included)",
        o.rounds, o.window
    );
    println!("| query | p50 | p90 | output lines (mean) |\n| --- | --- | --- | --- |");
    let mut examples = Vec::new();
    for (name, args) in &cases {
        let (p50, p90, lines, example) = measure(o.rounds, args);
        println!("| `{name}` | {p50:.1?} | {p90:.1?} | {lines} |");
        examples.push(example);
    }
    println!("\nexample commands:");
    for example in examples {
        println!("  {example}");
    }
    if o.index_cost > 0 {
        println!();
        index_cost(o.index_cost);
    }
    if keep {
        println!("\nstore kept in {}", dir.display());
    }
}
