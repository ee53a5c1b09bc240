//! Sustained ingest: simulated agents stream signed batches over real mutual TLS to a real
//! `bannin-collector serve`, which verifies every chain and signature and commits to SQLite
//! (synchronous=FULL) before acknowledging. The same rows are then inserted into a fresh SQLite
//! database by a plain batched insert, in the same run, for the ratio.
//!
//! Run: `cargo bench --bench ingest` (options: `-- --agents 8 --events 400000 --rounds 5`).

// A benchmark, like a test, stops at the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/options.rs"]
mod options;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{Event, FileAction, FileEvent, ProcessInfo};
use bannin::pb;
use bannin::pki::{self, SERVER_NAME};
use bannin::time::Timestamp;
use ed25519_dalek::SigningKey;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");
const BATCH: usize = 2000;

struct Options {
    agents: usize,
    events: usize,
    rounds: usize,
}

fn options() -> Options {
    Options {
        agents: options::option("--agents").unwrap_or(8),
        events: options::option("--events").unwrap_or(400_000),
        rounds: options::option("--rounds").unwrap_or(5),
    }
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_collector(dir: &Path) -> Server {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(COLLECTOR)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("BANNIN_LOG", "warn,bannin_collector::serve=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the collector");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("collector exited").expect("read");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().expect("addr").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

struct SimAgent {
    id: String,
    name: String,
    key: SigningKey,
    channel: Channel,
}

async fn enroll(server: &Server, dir: &Path, ca_pem: &str, n: usize) -> SimAgent {
    let token = Command::new(COLLECTOR)
        .args(["token", "create", "--data-dir"])
        .arg(dir)
        .output()
        .expect("token");
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let key = chain::generate_signing_key().expect("key");
    let (tls_key, csr) = pki::client_key_and_csr(&format!("sim{n}")).expect("csr");
    let url = format!("https://{}", server.addr);
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
    file.process = Some(ProcessInfo {
        pid: 4242,
        ppid: Some(1),
        exe: "/usr/bin/python3".into(),
        cmdline: "python3 /opt/etl/export.py --out /srv/exports".into(),
        user: "etl".into(),
        uid: Some(1000),
        ancestry: Default::default(),
    });
    let mut event = Event::now(host, file);
    event.seq = seq;
    event
}

/// Pre-built, pre-signed batches for one agent, so the timed part is transport, verify and commit.
fn batches(agent: &SimAgent, count: usize) -> (Vec<pb::EventBatch>, Vec<(u64, Vec<u8>)>) {
    let mut head: Hash = GENESIS;
    let mut out = Vec::new();
    let mut rows = Vec::new();
    let mut seq = 1u64;
    while (seq as usize) <= count {
        let prev = head;
        let first = seq;
        let mut events = Vec::with_capacity(BATCH);
        while events.len() < BATCH && (seq as usize) <= count {
            let bytes = bannin::proto::encode_event(&event(&agent.name, seq));
            head = chain::link(&head, seq, &bytes);
            rows.push((seq, bytes.clone()));
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
        });
    }
    (out, rows)
}

async fn bannin_round(options: &Options) -> (f64, Vec<Vec<(u64, Vec<u8>)>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("collector");
    let server = start_collector(&data);
    let ca = std::fs::read_to_string(data.join("ca.pem")).expect("ca");
    let mut agents = Vec::new();
    for n in 0..options.agents {
        agents.push(enroll(&server, &data, &ca, n).await);
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
    let out = Command::new(COLLECTOR)
        .args(["verify", "--data-dir"])
        .arg(&data)
        .output()
        .expect("verify");
    assert!(out.status.success(), "stored events verify");
    (total as f64 / elapsed.as_secs_f64(), all_rows)
}

/// The same rows, batched into the collector's table shape (same key and indexes), with the same
/// durability, and nothing else.
fn plain_round(rows: &[Vec<(u64, Vec<u8>)>]) -> f64 {
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
                for (seq, bytes) in chunk {
                    stmt.execute(rusqlite::params![
                        agent_no as i64,
                        *seq as i64,
                        now + *seq as i64,
                        "file.write",
                        "/srv/exports/x.csv",
                        bytes,
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
    let mut bannin_rates = Vec::new();
    let mut plain_rates = Vec::new();
    for round in 0..options.rounds {
        let (rate, rows) = runtime.block_on(bannin_round(&options));
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
    let _ = Duration::from_secs(0);
}
