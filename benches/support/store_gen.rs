//! The 10-million-event store the investigation and console benchmarks query: a generator that
//! writes N events from M agents straight into a collector store (the real schema, created by the
//! real binary; real encoded events, a valid hash chain and real batch signatures, so `verify`
//! passes on it). The same events go into a SQLite store (prepared inserts) or a PostgreSQL one
//! (binary COPY, each event in the partition of its day). Included with `#[path]` by
//! `store_query.rs` and `console.rs`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{
    AgentAction, AgentEvent, Body, DbAction, DbEvent, Event, ExportInfo, FileAction, FileEvent,
    NetAction, NetEvent, ProcessAction, ProcessEvent, ProcessInfo,
};
use bannin::time::Timestamp;
use ed25519_dalek::SigningKey;
use pg_db::PgDb;

// A private database on the machine's PostgreSQL, as the PostgreSQL store's tests take one.
#[path = "pg_copy.rs"]
mod pg_copy;
#[allow(dead_code)] // The generator uses a part of it.
#[path = "../../tests/support/pg_db.rs"]
pub mod pg_db;
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
            f.process = Some(Arc::new(process(rng, "/usr/bin/libreoffice")));
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
            f.process = Some(Arc::new(process(rng, "/usr/bin/python3")));
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
                action: NetAction::Connect,
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
    last_seq: u64,
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

/// One batch row as the store keeps it.
pub struct BatchRow {
    agent_no: i64,
    last_seq: i64,
    first_seq: i64,
    prev_hash: Hash,
    head_hash: Hash,
    signature: Vec<u8>,
    received_ts: i64,
}

/// One event row as the store keeps it.
pub struct EventRow {
    agent_no: i64,
    seq: i64,
    ts: i64,
    kind: &'static str,
    path: Option<String>,
    payload: Vec<u8>,
    hash: Hash,
}

/// Where generated rows go, in the collector's own schema (made by the real binary first).
pub trait Sink {
    /// The next agent; agents are numbered 1, 2, … in the order given.
    fn agent(&mut self, id: &str, name: &str, signing_key: &[u8], enrolled: i64);
    fn event(&mut self, row: EventRow);
    fn batch(&mut self, row: BatchRow);
    /// Commits what was written since the last commit.
    fn commit(&mut self);
    /// Once every event is in: each agent's (last seq, head), agent 1 first.
    fn finish(&mut self, heads: &[(i64, Hash)]);
}

/// A SQLite store in a collector data directory.
pub struct SqliteSink(Connection);

impl SqliteSink {
    pub fn create(dir: &Path) -> SqliteSink {
        // The real binary creates the data directory and the schema, indexes included.
        run_ok(
            Command::new(COLLECTOR)
                .args(["token", "create", "--data-dir"])
                .arg(dir),
        );
        let conn = Connection::open(dir.join("bannin.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; BEGIN")
            .unwrap();
        SqliteSink(conn)
    }
}

impl Sink for SqliteSink {
    fn agent(&mut self, id: &str, name: &str, signing_key: &[u8], enrolled: i64) {
        self.0
            .execute(
                "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5)",
                params![id, name, signing_key, enrolled, GENESIS.to_vec()],
            )
            .unwrap();
    }

    fn event(&mut self, row: EventRow) {
        self.0
            .prepare_cached(
                "INSERT INTO events (agent_no, seq, ts, kind, path, payload, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap()
            .execute(params![
                row.agent_no,
                row.seq,
                row.ts,
                row.kind,
                row.path,
                row.payload,
                row.hash.to_vec()
            ])
            .unwrap();
    }

    fn batch(&mut self, row: BatchRow) {
        self.0
            .prepare_cached(
                "INSERT INTO batches
                 (agent_no, last_seq, first_seq, prev_hash, head_hash, signature, received_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .unwrap()
            .execute(params![
                row.agent_no,
                row.last_seq,
                row.first_seq,
                row.prev_hash.to_vec(),
                row.head_hash.to_vec(),
                row.signature,
                row.received_ts
            ])
            .unwrap();
    }

    fn commit(&mut self) {
        self.0.execute_batch("COMMIT; BEGIN").unwrap();
    }

    fn finish(&mut self, heads: &[(i64, Hash)]) {
        for (i, (last_seq, head)) in heads.iter().enumerate() {
            self.0
                .execute(
                    "UPDATE agents SET last_seq = ?1, head_hash = ?2, last_seen_ts = ?3
                     WHERE no = ?4",
                    params![
                        last_seq,
                        head.to_vec(),
                        Timestamp::now().as_nanos(),
                        i as i64 + 1
                    ],
                )
                .unwrap();
        }
        self.0
            .execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
}

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// A PostgreSQL store: rows are buffered and sent by binary COPY at each commit; every event and
/// batch is stored as received at its own time, in that day's partition (named as the collector
/// names them, made here for the generated days).
pub struct PgSink {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    events: Vec<EventRow>,
    batches: Vec<BatchRow>,
}

impl PgSink {
    pub fn create(url: &str, start: Timestamp, span: Duration) -> PgSink {
        // The real binary creates the schema, indexes included.
        run_ok(Command::new(COLLECTOR).args(["token", "create", "--store", url]));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        });
        let first = start.as_nanos().div_euclid(NANOS_PER_DAY);
        let last = (start.as_nanos() + span.as_nanos() as i64).div_euclid(NANOS_PER_DAY);
        for day in first..=last {
            let (from, to) = (day * NANOS_PER_DAY, (day + 1) * NANOS_PER_DAY);
            for table in ["events", "batches"] {
                runtime
                    .block_on(client.batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {table}_d{day} PARTITION OF {table}
                         FOR VALUES FROM ({from}) TO ({to})"
                    )))
                    .unwrap();
            }
        }
        PgSink {
            runtime,
            client,
            events: Vec::new(),
            batches: Vec::new(),
        }
    }
}

impl Sink for PgSink {
    fn agent(&mut self, id: &str, name: &str, signing_key: &[u8], enrolled: i64) {
        self.runtime
            .block_on(self.client.execute(
                "INSERT INTO agents (id, name, host, signing_key, enrolled_ts, head_hash)
                 VALUES ($1, $2, $2, $3, $4, $5)",
                &[&id, &name, &signing_key, &enrolled, &GENESIS.as_slice()],
            ))
            .unwrap();
    }

    fn event(&mut self, row: EventRow) {
        self.events.push(row);
    }

    fn batch(&mut self, row: BatchRow) {
        self.batches.push(row);
    }

    fn commit(&mut self) {
        let events = std::mem::take(&mut self.events);
        let batches = std::mem::take(&mut self.batches);
        let client = &mut self.client;
        self.runtime.block_on(async move {
            let tx = client.transaction().await.unwrap();
            let writer = pg_copy::events(&tx).await;
            let mut writer = std::pin::pin!(writer);
            for e in &events {
                writer
                    .as_mut()
                    .write(&[
                        &e.agent_no,
                        &e.seq,
                        &e.ts,
                        &e.kind,
                        &e.path,
                        &e.payload.as_slice(),
                        &e.hash.as_slice(),
                        &e.ts,
                    ])
                    .await
                    .unwrap();
            }
            writer.as_mut().finish().await.unwrap();
            let writer = pg_copy::batches(&tx).await;
            let mut writer = std::pin::pin!(writer);
            for b in &batches {
                writer
                    .as_mut()
                    .write(&[
                        &b.agent_no,
                        &b.last_seq,
                        &b.first_seq,
                        &b.prev_hash.as_slice(),
                        &b.head_hash.as_slice(),
                        &b.signature.as_slice(),
                        &b.received_ts,
                    ])
                    .await
                    .unwrap();
            }
            writer.as_mut().finish().await.unwrap();
            tx.commit().await.unwrap();
        });
    }

    fn finish(&mut self, heads: &[(i64, Hash)]) {
        self.commit();
        for (i, (last_seq, head)) in heads.iter().enumerate() {
            self.runtime
                .block_on(self.client.execute(
                    "UPDATE agents SET last_seq = $1, head_hash = $2, last_seen_ts = $3
                     WHERE no = $4",
                    &[
                        last_seq,
                        &head.as_slice(),
                        &Timestamp::now().as_nanos(),
                        &(i as i64 + 1),
                    ],
                ))
                .unwrap();
        }
        // What autovacuum would have done to a store filled over 30 days.
        self.runtime
            .block_on(self.client.batch_execute("VACUUM ANALYZE"))
            .unwrap();
    }
}

/// Writes `events` events from `agents` agents over `span` from `start` into `sink`; returns the
/// time it took.
pub fn generate(
    sink: &mut dyn Sink,
    events: u64,
    agents: usize,
    start: Timestamp,
    span: Duration,
) -> Duration {
    let began = Instant::now();
    let mut states = Vec::new();
    for i in 0..agents {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let key = SigningKey::from_bytes(&seed);
        let id = format!("a-{:016x}", i as u64 + 1);
        sink.agent(
            &id,
            &format!("host-{i:03}"),
            &key.verifying_key().to_bytes(),
            start.as_nanos(),
        );
        states.push(AgentState {
            key,
            id,
            head: GENESIS,
            batch_prev: GENESIS,
            batch_first: 1,
            last_seq: 0,
        });
    }
    sink.commit();
    let step = span.as_nanos() as u64 / events.max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut g = 0u64;
    while g < events {
        let end = (g + 100_000).min(events);
        while g < end {
            let agent = (g % agents as u64) as usize;
            let seq = g / agents as u64 + 1;
            let ts = Timestamp::from_nanos(start.as_nanos() + (g * step) as i64);
            let event = Event {
                seq,
                ts,
                host: format!("host-{agent:03}").into(),
                body: body(&mut rng, agent, agents, seq),
            };
            let bytes = bannin::proto::encode_event(&event);
            let state = &mut states[agent];
            state.head = chain::link(&state.head, seq, &bytes);
            state.last_seq = seq;
            sink.event(EventRow {
                agent_no: agent as i64 + 1,
                seq: seq as i64,
                ts: ts.as_nanos(),
                kind: event.kind(),
                path: event.path().map(str::to_string),
                payload: bytes,
                hash: state.head,
            });
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
                sink.batch(BatchRow {
                    agent_no: agent as i64 + 1,
                    last_seq: seq as i64,
                    first_seq: state.batch_first as i64,
                    prev_hash: state.batch_prev,
                    head_hash: state.head,
                    signature: signature.to_vec(),
                    received_ts: ts.as_nanos(),
                });
                state.batch_prev = state.head;
                state.batch_first = seq + 1;
            }
            g += 1;
        }
        sink.commit();
        if g % 1_000_000 == 0 {
            eprintln!("  {g} events in {:.0?}", began.elapsed());
        }
    }
    let heads: Vec<(i64, Hash)> = states.iter().map(|s| (s.last_seq as i64, s.head)).collect();
    sink.finish(&heads);
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
    let took = generate(&mut SqliteSink::create(dir), events, agents, start, span);
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

/// The PostgreSQL store of database `name` on the machine's PostgreSQL, holding the same events as
/// a store built by [`build_or_reuse`] from `start`: reused when a previous run left it (its
/// database comment records what it holds), generated otherwise. Kept when `keep`.
pub fn build_or_reuse_pg(
    name: Option<&str>,
    events: u64,
    agents: usize,
    start: Timestamp,
    span: Duration,
) -> PgDb {
    let made = format!(
        "bannin bench store: {events} events, {agents} agents, {} s from {}",
        span.as_secs(),
        start.as_nanos()
    );
    if let Some(db) = name.and_then(PgDb::existing) {
        let holds = pg_db::psql(
            "postgres",
            &format!(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{}'",
                db.name
            ),
        );
        assert_eq!(
            holds, made,
            "database {} holds another store; drop it or name another",
            db.name
        );
        println!("reusing the PostgreSQL store in database {}", db.name);
        return db;
    }
    let mut db = match name {
        Some(name) => PgDb::named(name),
        None => PgDb::create(),
    };
    db.drop_on_exit = name.is_none();
    println!(
        "generating the same {events} events into PostgreSQL database {}",
        db.name
    );
    let took = generate(
        &mut PgSink::create(&db.url, start, span),
        events,
        agents,
        start,
        span,
    );
    pg_db::psql(
        "postgres",
        &format!("COMMENT ON DATABASE {} IS '{made}'", db.name),
    );
    let size = db.query(&format!("SELECT pg_database_size('{}')", db.name));
    println!(
        "generated in {:.1?} ({:.0} events/s), database {:.2} GiB",
        took,
        events as f64 / took.as_secs_f64(),
        size.parse::<f64>().unwrap_or(0.0) / f64::from(1u32 << 30)
    );
    db
}
