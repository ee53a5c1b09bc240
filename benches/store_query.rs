//! Investigation queries on a large store: a generator writes N events from M agents straight into a
//! collector store (the real schema, created by the real binary; real encoded events, a valid hash
//! chain and real batch signatures, so `verify` passes on it), then the real `bannin-collector`
//! binary answers host + time-range queries (`events --host`, `timeline`) and `scope` over random
//! windows, and the median and p90 wall times are printed with the exact commands.
//!
//! Run: `cargo bench --bench store_query -- --events 10000000 --agents 100`
//! Options: `--dir DIR` (keep and reuse the store there), `--rounds N`, `--days D` (span of the data),
//! `--window 1h` (query window), `--index-cost N` (also time N inserts with and without the
//! `(agent_no, ts)` index; 0 skips it). `--store postgres` also loads the same events into a
//! PostgreSQL store (binary COPY; a private database on the machine's PostgreSQL, 127.0.0.1:5432,
//! dropped afterwards unless `--pg-db NAME` names it, when it is kept and reused) and runs every
//! query on both stores, alternating, with the same windows and hosts.

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
    postgres: bool,
    pg_db: Option<String>,
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
        postgres: match options::option::<String>("--store").as_deref() {
            None | Some("sqlite") => false,
            Some("postgres") => true,
            Some(other) => panic!("--store {other}: give sqlite or postgres"),
        },
        pg_db: options::option("--pg-db"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// One store's figures for one query: p50, p90, mean output lines, the first command.
struct Measured {
    p50: Duration,
    p90: Duration,
    lines: usize,
    example: String,
}

/// Runs the query `rounds` times on each store (the arguments naming it in `stores`), the stores
/// alternating within each round so they see the same machine load; the arguments of round `i` on
/// a store come from `args_for(i, store)`.
fn measure(
    rounds: usize,
    stores: &[Vec<String>],
    args_for: &dyn Fn(usize, &[String]) -> Vec<String>,
) -> Vec<Measured> {
    let mut times = vec![Vec::new(); stores.len()];
    let mut lines = vec![0; stores.len()];
    let mut examples = vec![String::new(); stores.len()];
    for round in 0..rounds {
        for (n, store) in stores.iter().enumerate() {
            let args = args_for(round, store);
            if round == 0 {
                examples[n] = format!("bannin-collector {}", args.join(" "));
            }
            let began = Instant::now();
            let out = run_ok(Command::new(COLLECTOR).args(&args));
            times[n].push(began.elapsed());
            lines[n] += out.lines().count();
        }
    }
    times
        .iter_mut()
        .zip(lines)
        .zip(examples)
        .map(|((times, lines), example)| {
            times.sort_unstable();
            Measured {
                p50: percentile(times, 0.5),
                p90: percentile(times, 0.9),
                lines: lines / rounds.max(1),
                example,
            }
        })
        .collect()
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

/// The arguments of one query case for round `i` on a store (the arguments naming it).
type ArgsFor<'a> = Box<dyn Fn(usize, &[String]) -> Vec<String> + 'a>;

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
    let pg = o
        .postgres
        .then(|| store_gen::build_or_reuse_pg(o.pg_db.as_deref(), o.events, o.agents, start, span));

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
    let mut stores = vec![vec!["--data-dir".to_string(), dir.display().to_string()]];
    let mut names = vec!["SQLite"];
    if let Some(pg) = &pg {
        stores.push(vec!["--store".to_string(), pg.url.clone()]);
        names.push("PostgreSQL");
    }
    let window = |i: usize| windows[i];
    let cases: Vec<(&str, ArgsFor)> = vec![
        (
            "events --host H --since --until",
            Box::new(|i, store| {
                let (since, until, host) = window(i);
                let mut args = vec!["events".to_string()];
                args.extend_from_slice(store);
                args.extend([
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
                ]);
                args
            }),
        ),
        (
            "timeline --host H --since --until",
            Box::new(|i, store| {
                let (since, until, host) = window(i);
                let mut args = vec!["timeline".to_string()];
                args.extend_from_slice(store);
                args.extend([
                    "--host".into(),
                    format!("host-{host:03}"),
                    "--since".into(),
                    since.to_rfc3339(),
                    "--until".into(),
                    until.to_rfc3339(),
                    "--format".into(),
                    "json".into(),
                ]);
                args
            }),
        ),
        (
            "scope --since --until (all hosts)",
            Box::new(|i, store| {
                let (since, until, _) = window(i);
                let mut args = vec!["scope".to_string()];
                args.extend_from_slice(store);
                args.extend([
                    "--since".into(),
                    since.to_rfc3339(),
                    "--until".into(),
                    until.to_rfc3339(),
                    "--format".into(),
                    "json".into(),
                ]);
                args
            }),
        ),
    ];
    println!(
        "\n{} rounds, window {:?}, each a separate run of the release binary (process start included)",
        o.rounds, o.window
    );
    println!(
        "| query | store | p50 | p90 | output lines (mean) | load average after |\n| --- | --- | --- | --- | --- | --- |"
    );
    let mut examples = Vec::new();
    for (name, args) in &cases {
        let measured = measure(o.rounds, &stores, args.as_ref());
        let load = options::load();
        for (m, store) in measured.iter().zip(&names) {
            println!(
                "| `{name}` | {store} | {:.1?} | {:.1?} | {} | {load} |",
                m.p50, m.p90, m.lines
            );
        }
        if let [sqlite, pg] = &measured[..] {
            println!(
                "| | PostgreSQL / SQLite | {:.2} | {:.2} | | |",
                pg.p50.as_secs_f64() / sqlite.p50.as_secs_f64(),
                pg.p90.as_secs_f64() / sqlite.p90.as_secs_f64()
            );
        }
        examples.extend(measured.into_iter().map(|m| m.example));
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
