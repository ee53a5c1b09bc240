//! Sustained ingest: simulated agents stream signed batches over real mutual TLS to a real
//! `bannin-collector serve`, which verifies every chain and signature and commits to SQLite
//! (synchronous=FULL) before acknowledging. The same rows are then inserted into a fresh SQLite
//! database by a plain batched insert, in the same run, for the ratio.
//!
//! With `--store postgres`, each round runs three measurements in turn: `--collectors` (3) real
//! collectors sharing one PostgreSQL store (a private database on the machine's PostgreSQL,
//! 127.0.0.1:5432, dropped afterwards), the agents spread across them; the same rows by plain binary
//! COPY into the same tables of a fresh database, one session per agent, one transaction per batch;
//! and one collector on SQLite, as above.
//!
//! Run: `cargo bench --bench ingest` (options: `-- --agents 8 --events 400000 --rounds 5`,
//! `--store postgres --collectors 3`).

// A benchmark, like a test, stops at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

// Each benchmark uses its part of the shared support; this one enrolls its simulated agents itself.
#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{Event, FileAction, FileEvent, ProcessInfo};
use bannin::pb;
use bannin::pki::{self, SERVER_NAME};
use bannin::time::Timestamp;
use ed25519_dalek::SigningKey;
use support::pg_db::{PgDb, share_keys};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");
const BATCH: usize = 2000;

struct Options {
    agents: usize,
    events: usize,
    rounds: usize,
    postgres: bool,
    collectors: usize,
}

fn options() -> Options {
    let postgres = match support::option::<String>("--store").as_deref() {
        None | Some("sqlite") => false,
        Some("postgres") => true,
        Some(other) => panic!("--store {other}: give sqlite or postgres"),
    };
    Options {
        agents: support::option("--agents").unwrap_or(8),
        events: support::option("--events").unwrap_or(400_000),
        rounds: support::option("--rounds").unwrap_or(5),
        postgres,
        collectors: support::option("--collectors").unwrap_or(3),
    }
}

/// One event as the store keeps it, for the plain inserts.
#[derive(Clone)]
struct Row {
    seq: u64,
    ts: i64,
    path: String,
    bytes: Vec<u8>,
    hash: Hash,
}

struct SimAgent {
    id: String,
    name: String,
    key: SigningKey,
    channel: Channel,
}

async fn enroll(addr: &str, dir: &Path, store: Option<&str>, ca_pem: &str, n: usize) -> SimAgent {
    let token = support::token(COLLECTOR, dir, store);
    let key = chain::generate_signing_key().expect("key");
    let (tls_key, csr) = pki::client_key_and_csr(&format!("sim{n}")).expect("csr");
    let url = format!("https://{addr}");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(SERVER_NAME);
    let channel = Endpoint::from_shared(url.clone())
        .expect("url")
        .tls_config(tls.clone())
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let response = pb::enrollment_client::EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token,
            name: format!("sim{n}"),
            hostname: format!("sim{n}"),
            csr_der: csr,
            signing_public_key: key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .expect("enroll")
        .into_inner();
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .tls_config(tls.identity(Identity::from_pem(&response.certificate_pem, &tls_key)))
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    SimAgent {
        id: response.agent_id,
        name: format!("sim{n}"),
        key,
        channel,
    }
}

/// A realistic event: a file write by a known process.
fn event(host: &str, seq: u64) -> Event {
    let mut file = FileEvent::new(
        FileAction::Write,
        format!("/srv/exports/batch-{}/part-{seq:08}.csv", seq % 97),
        "fanotify",
    );
    file.size = Some(1_000 + seq * 13);
    file.inode = Some(1_000_000 + seq);
    file.mode = Some(0o100644);
    file.owner_uid = Some(1000);
    file.process_known = true;
    file.process = Some(std::sync::Arc::new(ProcessInfo {
        pid: 4242,
        ppid: Some(1),
        exe: "/usr/bin/python3".into(),
        cmdline: "python3 /opt/etl/export.py --out /srv/exports".into(),
        user: "etl".into(),
        uid: Some(1000),
        ancestry: Default::default(),
    }));
    let mut event = Event::now(host, file);
    event.seq = seq;
    event
}

/// Pre-built, pre-signed batches for one agent, so the timed part is transport, verify and commit.
fn batches(agent: &SimAgent, count: usize) -> (Vec<pb::EventBatch>, Vec<Row>) {
    let mut head: Hash = GENESIS;
    let mut out = Vec::new();
    let mut rows = Vec::new();
    let mut seq = 1u64;
    while (seq as usize) <= count {
        let prev = head;
        let first = seq;
        let mut events = Vec::with_capacity(BATCH);
        while events.len() < BATCH && (seq as usize) <= count {
            let event = event(&agent.name, seq);
            let bytes = bannin::proto::encode_event(&event);
            head = chain::link(&head, seq, &bytes);
            rows.push(Row {
                seq,
                ts: event.ts.as_nanos(),
                path: event.path().unwrap_or_default().to_string(),
                bytes: bytes.clone(),
                hash: head,
            });
            events.push(bytes);
            seq += 1;
        }
        let signature = chain::sign_batch(&agent.key, &agent.id, first, seq - 1, &prev, &head);
        out.push(pb::EventBatch {
            events,
            prev_hash: prev.to_vec(),
            signature: signature.to_vec(),
            first_seq: first,
            witness: None,
            runs: Vec::new(),
        });
    }
    (out, rows)
}

/// One round of real ingest: `collectors` collectors on `db`'s store (one on SQLite without it),
/// the agents enrolled and sending round-robin across them. Returns events/s and the rows sent.
async fn bannin_round(options: &Options, db: Option<&PgDb>) -> (f64, Vec<Vec<Row>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("collector");
    let store = db.map(|db| db.url.as_str());
    let mut servers = vec![support::start_collector(COLLECTOR, &data, None, store)];
    for n in 1..options.collectors.max(1) {
        if store.is_none() {
            break;
        }
        let other = dir.path().join(format!("collector{n}"));
        share_keys(&data, &other);
        servers.push(support::start_collector(COLLECTOR, &other, None, store));
    }
    let ca = std::fs::read_to_string(data.join("ca.pem")).expect("ca");
    let mut agents = Vec::new();
    for n in 0..options.agents {
        let addr = &servers[n % servers.len()].addr;
        agents.push(enroll(addr, &data, store, &ca, n).await);
    }
    let per_agent = options.events / options.agents;
    let mut work = Vec::new();
    let mut all_rows = Vec::new();
    for agent in &agents {
        let (batches, rows) = batches(agent, per_agent);
        work.push((
            pb::ingest_client::IngestClient::new(agent.channel.clone()),
            batches,
        ));
        all_rows.push(rows);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, batches) in work {
        tasks.push(tokio::spawn(async move {
            for batch in batches {
                client.submit(batch).await.expect("batch accepted");
            }
        }));
    }
    for task in tasks {
        task.await.expect("agent task");
    }
    let elapsed = start.elapsed();
    let total = per_agent * options.agents;
    let mut verify = Command::new(COLLECTOR);
    verify.args(["verify", "--data-dir"]).arg(&data);
    if let Some(url) = store {
        verify.args(["--store", url]);
    }
    let out = verify.output().expect("verify");
    assert!(
        out.status.success(),
        "stored events verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (total as f64 / elapsed.as_secs_f64(), all_rows)
}

/// The same rows, batched into the collector's table shape (same key and indexes), with the same
/// durability, and nothing else.
fn plain_round(rows: &[Vec<Row>]) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite::Connection::open(dir.path().join("plain.db")).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE events (agent_no INTEGER NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
             kind TEXT NOT NULL, path TEXT, payload BLOB NOT NULL, hash BLOB NOT NULL,
             PRIMARY KEY (agent_no, seq)) WITHOUT ROWID;
         CREATE INDEX events_ts ON events (ts);
         CREATE INDEX events_agent_ts ON events (agent_no, ts);",
    )
    .expect("schema");
    let now = Timestamp::now().as_nanos();
    let hash = [7u8; 32];
    let start = Instant::now();
    let mut total = 0usize;
    let mut conn = conn;
    for (agent_no, agent_rows) in rows.iter().enumerate() {
        for chunk in agent_rows.chunks(BATCH) {
            let tx = conn.transaction().expect("tx");
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO events (agent_no, seq, ts, kind, path, payload, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .expect("prepare");
                for row in chunk {
                    stmt.execute(rusqlite::params![
                        agent_no as i64,
                        row.seq as i64,
                        now + row.seq as i64,
                        "file.write",
                        "/srv/exports/x.csv",
                        row.bytes,
                        hash.as_slice()
                    ])
                    .expect("insert");
                    total += 1;
                }
            }
            tx.commit().expect("commit");
        }
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The same rows by plain binary COPY into the same tables (a fresh database, its schema made by
/// the real binary), one session per agent as the agents send, one transaction per batch,
/// PostgreSQL's default durable commit; nothing else.
async fn copy_round(rows: &[Vec<Row>]) -> f64 {
    let db = PgDb::create();
    let dir = tempfile::tempdir().expect("tempdir");
    support::token(COLLECTOR, dir.path(), Some(&db.url));
    let received = Timestamp::now().as_nanos();
    // Sessions and rows ready before the clock starts.
    let mut work = Vec::new();
    for (agent_no, agent_rows) in rows.iter().enumerate() {
        let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        work.push((client, agent_no as i64 + 1, agent_rows.to_vec()));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut client, agent_no, agent_rows) in work {
        tasks.push(tokio::spawn(async move {
            for chunk in agent_rows.chunks(BATCH) {
                let tx = client.transaction().await.expect("begin");
                let writer = support::pg_copy::events(&tx).await;
                let mut writer = std::pin::pin!(writer);
                for row in chunk {
                    writer
                        .as_mut()
                        .write(&[
                            &agent_no,
                            &(row.seq as i64),
                            &row.ts,
                            &"file.write",
                            &row.path.as_str(),
                            &row.bytes.as_slice(),
                            &row.hash.as_slice(),
                            &received,
                        ])
                        .await
                        .expect("row");
                }
                writer.as_mut().finish().await.expect("copy done");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("copy task");
    }
    let total: usize = rows.iter().map(Vec::len).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; anything else is ours.
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if options.postgres {
        return postgres(&options, &runtime);
    }
    let mut bannin_rates = Vec::new();
    let mut plain_rates = Vec::new();
    for round in 0..options.rounds {
        let (rate, rows) = runtime.block_on(bannin_round(&options, None));
        let plain = plain_round(&rows);
        println!(
            "round {}: bannin {:.0} events/s, plain insert {:.0} rows/s, ratio {:.2}",
            round + 1,
            rate,
            plain,
            rate / plain
        );
        bannin_rates.push(rate);
        plain_rates.push(plain);
    }
    let (b, p) = (median(&mut bannin_rates), median(&mut plain_rates));
    println!(
        "ingest: {} agents, {} events per round, {} rounds, batches of {BATCH}",
        options.agents, options.events, options.rounds
    );
    println!("median bannin ingest (mTLS + verify + durable commit): {b:.0} events/s");
    println!("median plain batched SQLite insert of the same rows:   {p:.0} rows/s");
    println!("ratio bannin / plain: {:.2}", b / p);
}

/// The PostgreSQL rounds: N collectors on one store, plain COPY of the same rows, and one
/// collector on SQLite, in turn.
fn postgres(options: &Options, runtime: &tokio::runtime::Runtime) {
    let mut pg_rates = Vec::new();
    let mut copy_rates = Vec::new();
    let mut sqlite_rates = Vec::new();
    for round in 0..options.rounds {
        let db = PgDb::create();
        let before = support::options::load();
        let (pg, rows) = runtime.block_on(bannin_round(options, Some(&db)));
        drop(db);
        let copy = runtime.block_on(copy_round(&rows));
        drop(rows);
        let (sqlite, _) = runtime.block_on(bannin_round(options, None));
        println!(
            "round {}: {} collectors on PostgreSQL {pg:.0} events/s, plain COPY {copy:.0} rows/s \
             (ratio {:.2}), 1 collector on SQLite {sqlite:.0} events/s (PostgreSQL / SQLite {:.2}); \
             load average {before} before, {} after",
            round + 1,
            options.collectors,
            pg / copy,
            pg / sqlite,
            support::options::load()
        );
        pg_rates.push(pg);
        copy_rates.push(copy);
        sqlite_rates.push(sqlite);
    }
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    let (mut to_copy, mut to_sqlite) = (
        ratios(&pg_rates, &copy_rates),
        ratios(&pg_rates, &sqlite_rates),
    );
    println!(
        "ingest: {} agents over {} collectors, {} events per round, {} rounds, batches of {BATCH}",
        options.agents, options.collectors, options.events, options.rounds
    );
    println!(
        "median bannin on PostgreSQL (mTLS + verify + durable commit): {:.0} events/s",
        median(&mut pg_rates)
    );
    println!(
        "median plain binary COPY of the same rows:                    {:.0} rows/s",
        median(&mut copy_rates)
    );
    println!(
        "median bannin on SQLite, one collector:                       {:.0} events/s",
        median(&mut sqlite_rates)
    );
    println!(
        "median of the rounds' ratios: PostgreSQL / COPY {:.2}, PostgreSQL / SQLite {:.2}",
        median(&mut to_copy),
        median(&mut to_sqlite)
    );
}
