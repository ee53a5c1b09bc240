//! Collector memory under hostile agents: 8 enrolled agents (each with its own certificate and
//! signing key, as a compromised agent has) send maximum-size batches in a loop over real mutual
//! TLS to a real `bannin-collector serve` with its default limits, and the collector's peak
//! resident set (`VmHWM`) is read from /proc. Each agent cycles through three kinds of batch:
//!
//! - valid: as many events as fit in `server.max_message_bytes`, each near the 256 KiB event bound
//!   (64 ancestors with long command lines), correctly chained and signed, so they are decoded,
//!   verified, committed and run through detection;
//! - hostile: events with 4,000,000 empty `ancestry` entries (the attack issue 10 names), correctly
//!   signed, so they must be refused while decoding;
//! - forged: a maximum-size batch with a bad signature, refused before anything is decoded.
//!
//! Target (issue 10): peak RSS under 256 MiB. Run: `cargo bench --bench hostile_rss`
//! (options: `-- --agents 8 --seconds 30`).

#![allow(clippy::unwrap_used, clippy::expect_used)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
// Each benchmark uses its part of the shared support; this one starts the collector itself, for its pid.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{Ancestor, Event, ProcessAction, ProcessEvent, ProcessInfo};
use bannin::pb;
use bannin::pki::{self, SERVER_NAME};
use ed25519_dalek::SigningKey;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");
/// The collector's default `server.max_message_bytes`, less room for the batch's own fields.
const BATCH_BYTES: usize = 8 * 1024 * 1024 - 64 * 1024;

struct Agent {
    id: String,
    name: String,
    key: SigningKey,
    channel: Channel,
    head: Hash,
    next_seq: u64,
}

async fn enroll(addr: &str, data: &Path, n: usize) -> Agent {
    let token = std::process::Command::new(COLLECTOR)
        .args(["token", "create", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let name = format!("hostile{n}");
    let key = chain::generate_signing_key().unwrap();
    let (tls_key, csr) = pki::client_key_and_csr(&name).unwrap();
    let ca = std::fs::read_to_string(data.join("ca.pem")).unwrap();
    let url = format!("https://{addr}");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name(SERVER_NAME);
    let channel = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(tls.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = pb::enrollment_client::EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token,
            name: name.clone(),
            hostname: name.clone(),
            csr_der: csr,
            signing_public_key: key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let channel = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls.identity(Identity::from_pem(&reply.certificate_pem, &tls_key)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Agent {
        id: reply.agent_id,
        name,
        key,
        channel,
        head: GENESIS,
        next_seq: 1,
    }
}

/// A process start near the event bound: 64 ancestors, each with a long command line.
fn big_event(host: &str) -> Event {
    let ancestor = Ancestor {
        pid: 1,
        exe: "/usr/bin/python3".into(),
        cmdline: "x".repeat(3_500),
        user: "etl".into(),
    };
    let process = ProcessInfo {
        pid: 4242,
        ppid: Some(1),
        exe: "/usr/bin/python3".into(),
        cmdline: "y".repeat(4_000),
        user: "etl".into(),
        uid: Some(1000),
        ancestry: vec![ancestor; 64].into(),
    };
    Event::now(host, exec(process))
}

fn exec(process: ProcessInfo) -> ProcessEvent {
    ProcessEvent {
        action: ProcessAction::Start,
        process,
        cwd: "/".into(),
        start_ts: None,
        exit_code: None,
        read_bytes: None,
        write_bytes: None,
        source: "bench".into(),
    }
}

/// The attack: millions of empty ancestors in one event.
fn hostile_event(host: &str) -> Event {
    let process = ProcessInfo {
        pid: 4242,
        exe: "/bin/sh".into(),
        ancestry: vec![Ancestor::default(); 4_000_000].into(),
        ..ProcessInfo::default()
    };
    Event::now(host, exec(process))
}

/// Chains and signs `events` as the agent's next batch. A refused batch does not advance the
/// chain, so only `commit` batches move the head.
fn batch(agent: &mut Agent, events: Vec<Event>, commit: bool, forge: bool) -> pb::EventBatch {
    let (mut head, mut seq) = (agent.head, agent.next_seq);
    let prev = head;
    let first = seq;
    let mut encoded = Vec::with_capacity(events.len());
    for mut event in events {
        event.seq = seq;
        let bytes = bannin::proto::encode_event(&event);
        head = chain::link(&head, seq, &bytes);
        encoded.push(bytes);
        seq += 1;
    }
    let mut signature = chain::sign_batch(&agent.key, &agent.id, first, seq - 1, &prev, &head);
    if forge {
        signature[0] ^= 0xff;
    }
    if commit {
        agent.head = head;
        agent.next_seq = seq;
    }
    pb::EventBatch {
        events: encoded,
        prev_hash: prev.to_vec(),
        signature: signature.to_vec(),
        first_seq: first,
        witness: None,
        runs: Vec::new(),
    }
}

fn fill(make: impl Fn() -> Event) -> Vec<Event> {
    let mut events = Vec::new();
    let mut bytes = 0;
    loop {
        let event = make();
        let size = bannin::proto::encode_event(&event).len() + 8;
        if bytes + size > BATCH_BYTES {
            return events;
        }
        bytes += size;
        events.push(event);
    }
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn main() {
    let agents: usize = support::option("--agents").unwrap_or(8);
    let seconds: u64 = support::option("--seconds").unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");
    let (process, line) = support::start(
        std::process::Command::new(COLLECTOR)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("BANNIN_LOG", "warn,bannin_collector::serve=info"),
        "listening on ",
    );
    let pid = process.0.id();
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let (idle_hwm, _) = memory(pid);
    let counts = runtime.block_on(async {
        let mut tasks = Vec::new();
        for n in 0..agents {
            let mut agent = enroll(&addr, &data, n).await;
            tasks.push(tokio::spawn(async move {
                let mut client = pb::ingest_client::IngestClient::new(agent.channel.clone())
                    .max_encoding_message_size(usize::MAX);
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let (mut stored, mut refused) = (0u64, 0u64);
                let mut round = 0u64;
                while Instant::now() < deadline {
                    let host = agent.name.clone();
                    let request = match round % 3 {
                        0 => batch(&mut agent, fill(|| big_event(&host)), true, false),
                        1 => batch(&mut agent, vec![hostile_event(&host)], false, false),
                        _ => batch(&mut agent, fill(|| big_event(&host)), false, true),
                    };
                    match client.submit(request).await {
                        Ok(_) => stored += 1,
                        Err(_) => refused += 1,
                    }
                    round += 1;
                }
                (stored, refused)
            }));
        }
        let mut totals = (0, 0);
        for task in tasks {
            let (stored, refused) = task.await.unwrap();
            totals.0 += stored;
            totals.1 += refused;
        }
        totals
    });
    let (peak, now) = memory(pid);
    println!(
        "hostile_rss: {agents} agents for {seconds} s: {} batches stored, {} refused; collector peak RSS {:.1} MiB (idle {:.1} MiB, at the end {:.1} MiB); target < 256 MiB: {}",
        counts.0,
        counts.1,
        peak as f64 / 1024.0,
        idle_hwm as f64 / 1024.0,
        now as f64 / 1024.0,
        if peak < 256 * 1024 { "met" } else { "NOT met" }
    );
}
