//! A compromised agent or a hostile network tries to crash, starve or mislead the collector.
//!
//! The compromised agent is real: a `bannin-agent enroll` against a real collector, whose certificate
//! and signing key the test then uses to send hand-made batches over real mutual TLS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bannin::chain::{GENESIS, Hash};
use bannin::event::{AgentAction, AgentEvent, Event};
use bannin::pb;
use bannin::time::Timestamp;
use ed25519_dalek::SigningKey;
use prost::encoding::{WireType, encode_key, encode_varint};
use tonic::Code;

use crate::harness::*;

/// An enrolled agent's stolen identity and the chain position it has reached.
struct Stolen {
    id: String,
    name: String,
    key: SigningKey,
    cert: String,
    tls_key: String,
    head: Hash,
    next_seq: u64,
}

impl Stolen {
    fn enroll(collector: &Collector, state: &Path, name: &str) -> Stolen {
        collector.enroll(state, name);
        let seed = hex::decode(
            std::fs::read_to_string(state.join("signing.key"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        Stolen {
            id: agent_id(state),
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed.try_into().unwrap()),
            cert: std::fs::read_to_string(state.join("tls.pem")).unwrap(),
            tls_key: std::fs::read_to_string(state.join("tls.key")).unwrap(),
            head: GENESIS,
            next_seq: 1,
        }
    }

    async fn client(
        &self,
        collector: &Collector,
    ) -> pb::ingest_client::IngestClient<tonic::transport::Channel> {
        pb::ingest_client::IngestClient::new(
            channel(collector, Some((&self.cert, &self.tls_key))).await,
        )
        .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// A correctly signed batch of raw event bytes numbered from `first_seq`, chained on `prev`.
    fn sign_raw(&self, first_seq: u64, prev: Hash, events: Vec<Vec<u8>>) -> (pb::EventBatch, Hash) {
        crate::sim::forge_batch(&self.id, &self.key, first_seq, prev, events)
    }

    /// A batch of `events`, numbered and chained where this agent is, without moving on.
    fn at(&self, events: Vec<Event>) -> (pb::EventBatch, Hash) {
        let first = self.next_seq;
        self.sign_raw(first, self.head, crate::sim::numbered(first, events))
    }

    /// The next batch of `events`; the agent's position moves on.
    fn next(&mut self, events: Vec<Event>) -> pb::EventBatch {
        let count = events.len() as u64;
        let (batch, head) = self.at(events);
        self.next_seq += count;
        self.head = head;
        batch
    }

    fn heartbeat(&self) -> Event {
        Event::now(self.name.clone(), AgentEvent::new(AgentAction::Heartbeat))
    }
}

/// A process-start event whose process has `ancestors` empty ancestry entries, encoded by hand so
/// the test itself never holds millions of decoded entries.
fn deep_ancestry_event(seq: u64, host: &str, ancestors: usize) -> Vec<u8> {
    let mut info = Vec::with_capacity(ancestors * 2);
    for _ in 0..ancestors {
        info.extend_from_slice(&[0x3a, 0x00]); // field 7 (ancestry), length 0
    }
    let mut process_event = Vec::new();
    encode_key(1, WireType::Varint, &mut process_event);
    encode_varint(1, &mut process_event); // PROCESS_ACTION_START
    encode_key(2, WireType::LengthDelimited, &mut process_event);
    encode_varint(info.len() as u64, &mut process_event);
    process_event.extend_from_slice(&info);
    drop(info);
    let mut event = Vec::new();
    encode_key(1, WireType::Varint, &mut event);
    encode_varint(seq, &mut event);
    encode_key(2, WireType::Varint, &mut event);
    encode_varint(Timestamp::now().as_nanos() as u64, &mut event);
    encode_key(3, WireType::LengthDelimited, &mut event);
    encode_varint(host.len() as u64, &mut event);
    event.extend_from_slice(host.as_bytes());
    encode_key(11, WireType::LengthDelimited, &mut event);
    encode_varint(process_event.len() as u64, &mut event);
    event.extend_from_slice(&process_event);
    event
}

/// A field of /proc/PID/status in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn alive(collector: &mut Collector) -> bool {
    matches!(collector.proc.child.try_wait(), Ok(None))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    private_file(&path, text);
    path.to_str().unwrap().to_string()
}

/// The numbers: a 7.6 MiB batch with 4,000,000 empty ancestry entries took the collector
/// from 15 MB to 671 MB, and twelve at once killed it. Now each is refused before it is decoded,
/// batches that stay within each event's bounds are refused by the batch's decoded budget, and
/// the collector's peak memory stays far below what one such batch used to cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_are_refused_before_they_cost_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(&tmp.path().join("c"));
    let mut agent = Stolen::enroll(&collector, &tmp.path().join("a"), "pc-1");
    let pid = collector.proc.child.id();
    let mut client = agent.client(&collector).await;

    // One event of 4,000,000 empty ancestors: 7.6 MiB on the wire.
    let hostile = deep_ancestry_event(1, &agent.name, 4_000_000);
    assert!(hostile.len() > 7 * 1024 * 1024);
    let (batch, _) = agent.sign_raw(1, GENESIS, vec![hostile]);
    let status = client.submit(batch.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");

    // Many events each just under the size limit, each far over the ancestry bound.
    let events = (0..30)
        .map(|i| deep_ancestry_event(1 + i, &agent.name, 120_000))
        .collect();
    let (deep, _) = agent.sign_raw(1, GENESIS, events);
    let status = client.submit(deep).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ancestry"), "{status:?}");

    // Events within every bound whose sum decodes far larger than the message: the batch budget.
    let events = (0..10_000)
        .map(|i| deep_ancestry_event(1 + i, &agent.name, 64))
        .collect();
    let (wide, _) = agent.sign_raw(1, GENESIS, events);
    let status = client.submit(wide).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Twelve at once over separate connections, and twelve 15 MiB messages.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut client = agent.client(&collector).await;
        let mut batch = batch.clone();
        if i % 2 == 1 {
            batch.events.push(vec![0u8; 8 * 1024 * 1024]);
        }
        tasks.push(tokio::spawn(async move { client.submit(batch).await }));
    }
    for task in tasks {
        let status = task.await.unwrap().unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::ResourceExhausted | Code::OutOfRange | Code::Unavailable
            ),
            "{status:?}"
        );
    }
    assert!(
        alive(&mut collector),
        "collector died:\n{}",
        collector.proc.log()
    );
    let peak = status_kib(pid, "VmHWM:") / 1024;
    assert!(peak < 256, "collector peak RSS {peak} MiB");

    // Nothing of it was stored, and the same agent's honest batch still goes through.
    assert!(collector.events(&[]).is_empty());
    let good = agent.next(vec![agent.heartbeat(), agent.heartbeat()]);
    let ack = client.submit(good).await.unwrap().into_inner();
    assert_eq!(ack.committed_through, 2);
}

/// `host` is the enrolled name, a seq near 2^63 is refused instead of poisoning `verify`, and
/// retention goes by when the collector received a batch, not by the time the agent wrote on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_seq_and_age_are_the_collectors_not_the_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(
        tmp.path(),
        "collector.toml",
        "[retention]\ndays = 1\ncheck_every = \"1s\"\n",
    );
    let collector =
        Collector::start_with(&tmp.path().join("c"), "127.0.0.1:0", &["--config", &config]);
    let mut pc = Stolen::enroll(&collector, &tmp.path().join("pc"), "pc-1");
    let mut other = Stolen::enroll(&collector, &tmp.path().join("o"), "pc-2");
    let mut client = pc.client(&collector).await;

    // An event that claims to come from another host is refused, whole batch and all.
    let mut lie = pc.heartbeat();
    lie.host = "db-prod-1".into();
    let status = client
        .submit(pc.at(vec![pc.heartbeat(), lie]).0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("db-prod-1"), "{status:?}");

    // A seq of 2^63 is refused; the store keeps verifying.
    let (huge, _) = pc.sign_raw(
        1 << 63,
        GENESIS,
        vec![bannin::proto::encode_event(&Event {
            seq: 1 << 63,
            ..pc.heartbeat()
        })],
    );
    let status = client.submit(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // An event stamped three days ago, received now.
    let mut old = pc.heartbeat();
    old.ts = Timestamp::now().saturating_sub(Duration::from_secs(3 * 86_400));
    let ack = client
        .submit(pc.next(vec![old]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.inserted, 1);

    // Another agent's event stamped in 2100, in a batch received (as the store records it) two
    // days ago: retention must remove it, proving retention ran while the old-stamped one stayed.
    let mut future = other.heartbeat();
    future.ts = Timestamp::from_secs(4_102_444_800);
    let mut other_client = other.client(&collector).await;
    other_client.submit(other.next(vec![future])).await.unwrap();
    let db = collector.dir.join("bannin.db");
    assert!(db.exists(), "store file name changed");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        let two_days_ago = Timestamp::now().saturating_sub(Duration::from_secs(2 * 86_400));
        let changed = conn
            .execute(
                "UPDATE batches SET received_ts = ?1
                 WHERE agent_no = (SELECT no FROM agents WHERE id = ?2)",
                rusqlite::params![two_days_ago.as_nanos(), other.id],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    wait_for(
        "retention to remove the batch received two days ago",
        Duration::from_secs(60),
        || {
            collector
                .events(&["--agent", &other.id])
                .is_empty()
                .then_some(())
        },
    );
    let kept = collector.events(&["--agent", &pc.id]);
    assert_eq!(
        kept.len(),
        1,
        "the event received now was deleted: {kept:?}"
    );
    assert!(kept.iter().all(|e| e["host"] == "pc-1"));

    let (ok, report) = verify(&collector.dir);
    assert!(ok, "verify: {report}");
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Idle TCP connections that never start TLS, from two addresses, while the collector may hold only
/// 160 descriptors: it must neither spin on `accept` (EMFILE) nor keep the sockets for ever, and a
/// real agent must still enroll and deliver within a bounded time.
#[test]
fn idle_sockets_and_descriptor_exhaustion_neither_pin_the_collector_nor_block_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("c"));
    let pid = collector.proc.child.id();
    run_ok(
        Command::new("prlimit")
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--nofile=160:160"),
    );
    let addr: std::net::SocketAddr = collector.addr.parse().unwrap();
    let mut idle = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..150 {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(
                    &format!("{source}:0")
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                )
                .unwrap();
            if socket
                .connect_timeout(&addr.into(), Duration::from_secs(1))
                .is_ok()
            {
                idle.push(socket);
            }
        }
    }
    assert!(idle.len() > 160, "only {} connections opened", idle.len());

    // Out of descriptors with connections waiting: the collector must wait, not spin.
    let before = cpu_seconds(pid);
    #[expect(
        clippy::disallowed_methods,
        reason = "a measurement window: the collector's CPU time over 3 s of real time"
    )]
    let elapsed = {
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        started.elapsed()
    };
    let used = cpu_seconds(pid) - before;
    let share = used / elapsed.as_secs_f64();
    assert!(
        share < 0.5,
        "collector used {:.0}% of a CPU while idle sockets waited",
        share * 100.0
    );

    // A real agent enrolls (retrying as an operator would) and delivers, under the same attack.
    let state = tmp.path().join("agent");
    let token = collector.token();
    wait_for("the agent to enroll", Duration::from_secs(90), || {
        let out = run_output(
            Command::new(AGENT)
                .arg("enroll")
                .arg("--collector")
                .arg(collector.url())
                .arg("--token")
                .arg(&token)
                .arg("--ca-cert")
                .arg(collector.ca())
                .arg("--state-dir")
                .arg(&state)
                .arg("--name")
                .arg("pc-1"),
        );
        out.status.success().then_some(())
    });
    let _agent = Agent::start(&state, &[]);
    let id = agent_id(&state);
    wait_for(
        "the agent's events to arrive",
        Duration::from_secs(90),
        || (!collector.events(&["--agent", &id]).is_empty()).then_some(()),
    );
    assert!(matches!(collector.proc.child.id(), p if p == pid));
    drop(idle);
}
/// Events of about `bytes` in all, each a query with a long statement.
fn bulky(agent: &Stolen, bytes: usize) -> Vec<Event> {
    let each = 60 * 1024;
    (0..bytes.div_ceil(each))
        .map(|i| {
            let mut db = bannin::event::DbEvent::new(bannin::event::DbAction::Query, "postgresql");
            db.statement = format!("SELECT {i} /* {} */", "x".repeat(each));
            Event::now(agent.name.clone(), db)
        })
        .collect()
}

/// Each agent's stored sequence numbers, read straight from the store.
fn stored_seqs(db: &Path, agent_id: &str) -> Vec<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT e.seq FROM events e JOIN agents a ON a.no = e.agent_no WHERE a.id = ?1
             ORDER BY e.seq",
        )
        .unwrap();
    stmt.query_map([agent_id], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|s| s.unwrap() as u64)
        .collect()
}

/// Fills the disk of `tmpfs` until about `left` bytes are free.
fn fill(disk: &Tmpfs, filler: &Path, left: u64) {
    use std::io::Write;
    let free = disk.free_bytes();
    if free <= left {
        return;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    let mut writer = std::io::BufWriter::new(file);
    let chunk = vec![0u8; 1024 * 1024];
    let mut grow = free - left;
    while grow > 0 {
        let n = grow.min(chunk.len() as u64) as usize;
        if writer.write_all(&chunk[..n]).is_err() {
            break;
        }
        grow -= n as u64;
    }
    let _ = writer.flush();
}

/// The issue: on a full disk, later batches of a group commit were stored while their agents were
/// told the commit failed. Here one group commit holds a large batch that cannot fit on the disk
/// followed by a small one that can; what each agent is told is committed must be exactly what
/// the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_each_acknowledgement_says_exactly_what_was_committed() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount_on(&tmp.path().join("c"), "24m");
    let config = write(tmp.path(), "collector.toml", "[retention]\ndays = 0\n");
    let mut collector = Collector::start_with(disk.path(), "127.0.0.1:0", &["--config", &config]);
    let db = disk.path().join("bannin.db");
    let mut agents: Vec<Stolen> = ["pilot", "large", "small"]
        .iter()
        .map(|name| Stolen::enroll(&collector, &tmp.path().join(name), name))
        .collect();
    let mut clients = Vec::new();
    for agent in &agents {
        clients.push(agent.client(&collector).await);
    }
    let filler = disk.path().join("filler");
    fill(&disk, &filler, 1024 * 1024);

    // Hold the store's write lock so the batches queue up behind the writer: the pilot's group
    // waits for the lock, and the large and small batches, sent in that order, form the next group.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.busy_timeout(Duration::from_secs(30)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let send = |i: usize, agents: &[Stolen], clients: &[pb::ingest_client::IngestClient<_>]| {
        let agent = &agents[i];
        let events = if i == 1 {
            bulky(agent, 3 * 1024 * 1024)
        } else {
            vec![agent.heartbeat(), agent.heartbeat()]
        };
        let (batch, _) = agent.at(events);
        let mut client: pb::ingest_client::IngestClient<tonic::transport::Channel> =
            clients[i].clone();
        tokio::spawn(async move { client.submit(batch).await })
    };
    // Each step waits for the writer's word before the next batch is sent: the pilot's group
    // has begun (and waits for the lock), then the large batch and the small one are queued
    // behind it, in that order, so the two form the next group.
    let wait = |collector: &mut Collector, needle: String| {
        tokio::task::block_in_place(|| collector.proc.wait_line(&needle, Duration::from_secs(60)))
    };
    let pilot = send(0, &agents, &clients);
    wait(
        &mut collector,
        format!("group commit begins agents={}", agents[0].id),
    );
    let large = send(1, &agents, &clients);
    wait(
        &mut collector,
        format!(
            "batch queued for the store writer agent_id={}",
            agents[1].id
        ),
    );
    let small = send(2, &agents, &clients);
    wait(
        &mut collector,
        format!(
            "batch queued for the store writer agent_id={}",
            agents[2].id
        ),
    );
    lock.execute_batch("ROLLBACK").unwrap();

    let results = [
        pilot.await.unwrap(),
        large.await.unwrap(),
        small.await.unwrap(),
    ];
    assert!(
        results[1].is_err(),
        "the large batch fit on the nearly full disk: the test proves nothing"
    );
    for (i, result) in results.iter().enumerate() {
        let told: Vec<u64> = match result {
            Ok(ack) => (1..=ack.get_ref().committed_through).collect(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                Vec::new()
            }
        };
        let stored = stored_seqs(&db, &agents[i].id);
        assert_eq!(
            stored, told,
            "agent {} was told {told:?} is committed; the store holds {stored:?}",
            agents[i].name
        );
    }

    // With room again, every agent's resend goes through and the store verifies.
    std::fs::remove_file(&filler).unwrap();
    for (i, agent) in agents.iter_mut().enumerate() {
        if results[i].is_ok() {
            continue;
        }
        let events = if i == 1 {
            bulky(agent, 3 * 1024 * 1024)
        } else {
            vec![agent.heartbeat(), agent.heartbeat()]
        };
        let batch = agent.next(events);
        clients[i].submit(batch).await.unwrap();
    }
    let verify = run_output(
        Command::new(COLLECTOR)
            .arg("verify")
            .arg("--data-dir")
            .arg(disk.path()),
    );
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    drop(collector);
}

/// A compromised agent sends its events as packed runs (what the real agent sends a collector that
/// takes them). A correctly signed batch of runs is stored like the same events sent one by one;
/// runs that claim more than a batch may decode to are refused before any is unpacked, however
/// small they pack (zeros pack about 250 to 1); a run that claims more than any run holds, one that
/// does not unpack to what it claims, and a batch of both events and runs are refused as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_packed_runs_are_bounded_before_they_are_unpacked() {
    use bannin::runs;
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("c"));
    let mut agent = Stolen::enroll(&collector, &tmp.path().join("a"), "pc-runs");
    let mut client = agent.client(&collector).await;
    let pack_events = |events: &[Vec<u8>]| {
        let mut plain = Vec::new();
        for event in events {
            runs::push(&mut plain, event);
        }
        runs::pack(&plain)
    };

    // Three heartbeats in two runs, signed as events.
    let mut good = agent.next(vec![
        agent.heartbeat(),
        agent.heartbeat(),
        agent.heartbeat(),
    ]);
    let events = std::mem::take(&mut good.events);
    good.runs = vec![pack_events(&events[..2]), pack_events(&events[2..])];
    let ack = client.submit(good).await.unwrap().into_inner();
    assert_eq!((ack.committed_through, ack.inserted), (3, 3));
    assert!(ack.accepts_runs);
    assert_eq!(collector.events(&["--agent", &agent.id]).len(), 3);

    let refused = |batch: pb::EventBatch| {
        let mut client = client.clone();
        async move { client.submit(batch).await.unwrap_err() }
    };
    // 100 runs of zeros, each claiming nearly the most a run may: 32 MB claimed in 120 KB sent.
    let zeros = runs::pack(&vec![0u8; runs::MAX_UNPACKED]);
    assert!(zeros.len() < 2000, "{}", zeros.len());
    let (mut bomb, _) = agent.at(vec![agent.heartbeat()]);
    bomb.events.clear();
    bomb.runs = vec![zeros; 100];
    let status = refused(bomb).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("decodes to more than"),
        "{status:?}"
    );

    // One run claiming more than any run holds.
    let (mut large, _) = agent.at(vec![agent.heartbeat()]);
    large.events.clear();
    large.runs = vec![u32::MAX.to_le_bytes().to_vec()];
    let status = refused(large).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("claims"), "{status:?}");

    // A run that does not unpack to the length it claims.
    let (mut lying, _) = agent.at(vec![agent.heartbeat()]);
    let mut run = pack_events(&std::mem::take(&mut lying.events));
    run[..runs::LENGTH_PREFIX].copy_from_slice(&5000u32.to_le_bytes());
    lying.runs = vec![run];
    let status = refused(lying).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("does not unpack"), "{status:?}");

    // Events and runs in one batch.
    let (mut both, _) = agent.at(vec![agent.heartbeat()]);
    both.runs = vec![pack_events(&both.events)];
    let status = refused(both).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // None of it was stored, and the agent's chain goes on where it was.
    let ack = client
        .submit(agent.next(vec![agent.heartbeat()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.committed_through, ack.inserted), (4, 1));
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "verify: {report}");
}
