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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{
    AgentAction, AgentEvent, Body, DbAction, DbEvent, Event, ExportInfo, FileAction, FileEvent,
    NetEvent, ProcessAction, ProcessEvent, ProcessInfo,
};
use bannin::time::{Timestamp, parse_duration};
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, params};

const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");
const BATCH: u64 = 1000;
/// Agents 0..DB_SERVERS are database servers: they report db.query events.
const DB_SERVERS: usize = 5;

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

/// A small deterministic generator, so every run builds the same store.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pc_addr(agent: usize) -> String {
    format!("10.1.{}.{}", agent / 250, agent % 250 + 1)
}

fn process(rng: &mut Rng, exe: &str) -> ProcessInfo {
    ProcessInfo {
        pid: 1000 + rng.below(30_000) as u32,
        ppid: Some(1000 + rng.below(30_000) as u32),
        exe: exe.to_string(),
        cmdline: format!("{exe} --job {}", rng.below(100)),
        user: "svc".into(),
        uid: Some(1000),
        ancestry: Vec::new(),
    }
}

fn body(rng: &mut Rng, agent: usize, agents: usize, seq: u64) -> Body {
    let roll = rng.below(100);
    if agent < DB_SERVERS && roll < 40 {
        let mut db = DbEvent::new(DbAction::Query, "postgresql");
        let client = DB_SERVERS + rng.below((agents - DB_SERVERS).max(1) as u64) as usize;
        db.db_user = "crm_app".into();
        db.database = "crm".into();
        db.client_addr = pc_addr(client);
        db.session = format!("s-{client}-{}", seq / 500);
        db.statement_kind = "read".into();
        if roll < 4 {
            db.statement = "SELECT * FROM public.customers WHERE region = $1".into();
            db.tables = vec!["public.customers".into()];
            db.sensitive_tables = vec!["public.customers".into()];
            db.rows = Some(rng.below(5_000));
            db.session_sensitive_rows = db.rows;
        } else {
            db.statement = "SELECT id, status FROM public.orders WHERE id = $1".into();
            db.tables = vec!["public.orders".into()];
            db.rows = Some(1);
        }
        return db.into();
    }
    match roll {
        0..=29 => {
            let mut f = FileEvent::new(
                FileAction::Write,
                format!("/home/u{agent}/work/doc{}.txt", rng.below(500)),
                "fanotify",
            );
            f.size = Some(rng.below(1 << 20));
            f.process = Some(process(rng, "/usr/bin/libreoffice"));
            f.process_known = true;
            f.into()
        }
        30..=41 => {
            let delete = roll >= 38;
            let csv = roll == 41 || roll == 37;
            let action = if delete {
                FileAction::Delete
            } else {
                FileAction::Create
            };
            let path = if csv {
                format!("/srv/exports/customers-{}.csv", rng.below(50))
            } else {
                format!("/home/u{agent}/tmp/t{}.tmp", rng.below(1000))
            };
            let mut f = FileEvent::new(action, path, "fanotify");
            f.size = Some(if csv {
                8_000_000 + rng.below(1 << 20)
            } else {
                rng.below(1 << 16)
            });
            f.process = Some(process(rng, "/usr/bin/python3"));
            f.process_known = true;
            if csv {
                f.export = Some(ExportInfo {
                    class: "data".into(),
                    format: "csv".into(),
                    est_rows: Some(80_000),
                    sampled_bytes: 65_536,
                    emails: 700,
                    phones: 650,
                    passports: 3,
                    cards: 0,
                });
            }
            f.into()
        }
        42..=66 => ProcessEvent {
            action: if roll < 55 {
                ProcessAction::Start
            } else {
                ProcessAction::Exit
            },
            process: process(rng, "/usr/bin/bash"),
            cwd: "/".into(),
            start_ts: None,
            exit_code: None,
            read_bytes: None,
            write_bytes: None,
            source: "proc_connector".into(),
        }
        .into(),
        67..=89 => {
            let public = roll == 89;
            NetEvent {
                process: Some(process(rng, "/usr/bin/curl")),
                protocol: "tcp".into(),
                local_addr: pc_addr(agent),
                local_port: 40_000 + rng.below(20_000) as u16,
                remote_addr: if public {
                    format!("203.0.113.{}", rng.below(250))
                } else {
                    format!("10.2.0.{}", rng.below(250))
                },
                remote_port: 443,
                remote_scope: if public { "public" } else { "private" }.into(),
                bytes_sent: Some(rng.below(1 << 20)),
                bytes_received: None,
            }
            .into()
        }
        _ => {
            let mut a = AgentEvent::new(AgentAction::Heartbeat);
            a.spool_events = rng.below(10);
            a.into()
        }
    }
}

struct AgentState {
    key: SigningKey,
    id: String,
    head: Hash,
    batch_prev: Hash,
    batch_first: u64,
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the store; returns the generated time span.
fn generate(dir: &Path, o: &Options, start: Timestamp, span: Duration) -> Duration {
    // The real binary creates the data directory and the schema, indexes included.
    run_ok(
        Command::new(COLLECTOR)
            .args(["token", "create", "--data-dir"])
            .arg(dir),
    );
    let mut conn = Connection::open(dir.join("bannin.db")).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")
        .unwrap();
    let began = Instant::now();
    let mut states = Vec::new();
    {
        let tx = conn.transaction().unwrap();
        for i in 0..o.agents {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let key = SigningKey::from_bytes(&seed);
            let id = format!("a-{:016x}", i as u64 + 1);
            tx.execute(
                "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5)",
                params![
                    id,
                    format!("host-{i:03}"),
                    key.verifying_key().to_bytes().to_vec(),
                    start.as_nanos(),
                    GENESIS.to_vec()
                ],
            )
            .unwrap();
            states.push(AgentState {
                key,
                id,
                head: GENESIS,
                batch_prev: GENESIS,
                batch_first: 1,
            });
        }
        tx.commit().unwrap();
    }
    let step = span.as_nanos() as u64 / o.events.max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut g = 0u64;
    while g < o.events {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (agent_no, seq, ts, kind, path, payload, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .unwrap();
            let mut batch = tx
                .prepare_cached(
                    "INSERT INTO batches
                     (agent_no, last_seq, first_seq, prev_hash, head_hash, signature, received_ts)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .unwrap();
            let end = (g + 100_000).min(o.events);
            while g < end {
                let agent = (g % o.agents as u64) as usize;
                let seq = g / o.agents as u64 + 1;
                let ts = Timestamp::from_nanos(start.as_nanos() + (g * step) as i64);
                let event = Event {
                    seq,
                    ts,
                    host: format!("host-{agent:03}"),
                    body: body(&mut rng, agent, o.agents, seq),
                };
                let bytes = bannin::proto::encode_event(&event);
                let state = &mut states[agent];
                state.head = chain::link(&state.head, seq, &bytes);
                insert
                    .execute(params![
                        agent as i64 + 1,
                        seq as i64,
                        ts.as_nanos(),
                        event.kind(),
                        event.path(),
                        bytes,
                        state.head.to_vec()
                    ])
                    .unwrap();
                let last_of_agent = g + o.agents as u64 >= o.events;
                if seq - state.batch_first + 1 == BATCH || last_of_agent {
                    let signature = chain::sign_batch(
                        &state.key,
                        &state.id,
                        state.batch_first,
                        seq,
                        &state.batch_prev,
                        &state.head,
                    );
                    batch
                        .execute(params![
                            agent as i64 + 1,
                            seq as i64,
                            state.batch_first as i64,
                            state.batch_prev.to_vec(),
                            state.head.to_vec(),
                            signature.to_vec(),
                            ts.as_nanos()
                        ])
                        .unwrap();
                    state.batch_prev = state.head;
                    state.batch_first = seq + 1;
                }
                g += 1;
            }
        }
        tx.commit().unwrap();
        if g % 1_000_000 == 0 {
            eprintln!("  {g} events in {:.0?}", began.elapsed());
        }
    }
    let tx = conn.transaction().unwrap();
    for (i, state) in states.iter().enumerate() {
        tx.execute(
            "UPDATE agents SET last_seq = (SELECT MAX(seq) FROM events WHERE agent_no = ?1),
                 head_hash = ?2, last_seen_ts = ?3 WHERE no = ?1",
            params![
                i as i64 + 1,
                state.head.to_vec(),
                Timestamp::now().as_nanos()
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    began.elapsed()
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
    let meta = dir.join("bench-start");
    let start = if dir.join("bannin.db").exists() && meta.exists() {
        let start = Timestamp::from_nanos(
            std::fs::read_to_string(&meta)
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        );
        println!("reusing the store in {}", dir.display());
        start
    } else {
        let start = Timestamp::now().saturating_sub(span);
        println!(
            "generating {} events from {} agents over {} days in {}",
            o.events,
            o.agents,
            o.days,
            dir.display()
        );
        let took = generate(&dir, &o, start, span);
        std::fs::write(&meta, start.as_nanos().to_string()).unwrap();
        let size = std::fs::metadata(dir.join("bannin.db")).unwrap().len();
        println!(
            "generated in {:.1?} ({:.0} events/s), store {:.2} GiB",
            took,
            o.events as f64 / took.as_secs_f64(),
            size as f64 / f64::from(1u32 << 30)
        );
        start
    };

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
