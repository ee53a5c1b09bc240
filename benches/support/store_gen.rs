//! The 10-million-event store the investigation and console benchmarks query: a generator that
//! writes N events from M agents straight into a collector store (the real schema, created by the
//! real binary; real encoded events, a valid hash chain and real batch signatures, so `verify`
//! passes on it). Included with `#[path]` by `store_query.rs` and `console.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{
    AgentAction, AgentEvent, Body, DbAction, DbEvent, Event, ExportInfo, FileAction, FileEvent,
    NetEvent, ProcessAction, ProcessEvent, ProcessInfo,
};
use bannin::time::Timestamp;
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, params};

pub const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");
const BATCH: u64 = 1000;
/// Agents 0..DB_SERVERS are database servers: they report db.query events.
const DB_SERVERS: usize = 5;

/// A small deterministic generator, so every run builds the same store.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn pc_addr(agent: usize) -> String {
    format!("10.1.{}.{}", agent / 250, agent % 250 + 1)
}

pub fn process(rng: &mut Rng, exe: &str) -> ProcessInfo {
    ProcessInfo {
        pid: 1000 + rng.below(30_000) as u32,
        ppid: Some(1000 + rng.below(30_000) as u32),
        exe: exe.to_string(),
        cmdline: format!("{exe} --job {}", rng.below(100)),
        user: "svc".into(),
        uid: Some(1000),
        ancestry: Default::default(),
    }
}

pub fn body(rng: &mut Rng, agent: usize, agents: usize, seq: u64) -> Body {
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

pub struct AgentState {
    key: SigningKey,
    id: String,
    head: Hash,
    batch_prev: Hash,
    batch_first: u64,
}

pub fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the store; returns the generated time span.
pub fn generate(
    dir: &Path,
    events: u64,
    agents: usize,
    start: Timestamp,
    span: Duration,
) -> Duration {
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
        for i in 0..agents {
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
    let step = span.as_nanos() as u64 / events.max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut g = 0u64;
    while g < events {
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
            let end = (g + 100_000).min(events);
            while g < end {
                let agent = (g % agents as u64) as usize;
                let seq = g / agents as u64 + 1;
                let ts = Timestamp::from_nanos(start.as_nanos() + (g * step) as i64);
                let event = Event {
                    seq,
                    ts,
                    host: format!("host-{agent:03}"),
                    body: body(&mut rng, agent, agents, seq),
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
                let last_of_agent = g + agents as u64 >= events;
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

/// The store in `dir`: reused when a previous run left it there (with its `bench-start` time),
/// generated otherwise. Returns the time its events start at.
pub fn build_or_reuse(dir: &Path, events: u64, agents: usize, span: Duration) -> Timestamp {
    let meta = dir.join("bench-start");
    if dir.join("bannin.db").exists() && meta.exists() {
        let start = Timestamp::from_nanos(
            std::fs::read_to_string(&meta)
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        );
        println!("reusing the store in {}", dir.display());
        return start;
    }
    let start = Timestamp::now().saturating_sub(span);
    println!(
        "generating {events} events from {agents} agents over {} days in {}",
        span.as_secs() / 86_400,
        dir.display()
    );
    let took = generate(dir, events, agents, start, span);
    std::fs::write(&meta, start.as_nanos().to_string()).unwrap();
    let size = std::fs::metadata(dir.join("bannin.db")).unwrap().len();
    println!(
        "generated in {:.1?} ({:.0} events/s), store {:.2} GiB",
        took,
        events as f64 / took.as_secs_f64(),
        size as f64 / f64::from(1u32 << 30)
    );
    start
}
