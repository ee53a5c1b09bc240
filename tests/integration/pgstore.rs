//! Several collectors on one PostgreSQL store (the machine's PostgreSQL 15 on loopback, a database
//! of its own per test): ingest on any of them, exactly once; one fenced detection leader; alerts
//! delivered by whichever collector claims them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bannin::event::{
    Body, ExportInfo, FileAction, FileEvent, ProcessInfo, SensorEvent, SensorStatus,
};
use bannin::pb;
use bannin::time::Timestamp;
use serde_json::Value;

use crate::harness::*;
use crate::sim::SimAgent;

pub(crate) const RULE: &str = "large-export-created-then-deleted";
pub(crate) const LONG: Duration = Duration::from_secs(60);
/// The detection leader's advisory lock (`LEADER_LOCK` in collector/store/pg/leader.rs), as
/// `pg_locks` shows a 64-bit key: its high and low halves.
const LOCK_CLASSID: i64 = 0x6261_6e6e;
const LOCK_OBJID: i64 = 0x696e_0010;

pub use crate::pg_db::{PgDb, SHARED_KEYS as SHARED, share_keys};

/// `n` data directories under `tmp` holding the same keys, made by a first collector's start.
pub(crate) fn shared_dirs(tmp: &Path, db: &PgDb, n: usize) -> Vec<PathBuf> {
    let first = tmp.join("c0");
    let mut c0 = Collector::start_with(&first, "127.0.0.1:0", &["--store", &db.url]);
    c0.proc.terminate();
    let mut dirs = vec![first.clone()];
    for i in 1..n {
        let dir = tmp.join(format!("c{i}"));
        share_keys(&first, &dir);
        dirs.push(dir);
    }
    dirs
}

pub(crate) fn start(
    dir: &Path,
    db: &PgDb,
    config: Option<&Path>,
    env: &[(&str, &str)],
) -> Collector {
    let mut args = vec!["--store".to_string(), db.url.clone()];
    if let Some(config) = config {
        args.push("--config".into());
        args.push(config.display().to_string());
    }
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    if env.is_empty() {
        return Collector::start_with(dir, "127.0.0.1:0", &extra);
    }
    let mut command = Command::new(COLLECTOR);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(&extra)
        .envs(env.iter().copied());
    let mut proc = Proc::spawn("collector", &mut command);
    let addr = proc.wait_address("listening on ", LONG);
    Collector {
        dir: dir.to_path_buf(),
        addr,
        proc,
        extra_args: args,
    }
}

pub(crate) fn webhook_config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("collector.toml");
    private_file(
        &path,
        &format!("[[alerts.webhook]]\nurl = \"{url}\"\nformat = \"json\"\nrules = [\"{RULE}\"]\n"),
    );
    path
}

pub(crate) fn events(db: &PgDb) -> Vec<Value> {
    let out = run_ok(Command::new(COLLECTOR).args([
        "events", "--store", &db.url, "--format", "json", "--limit", "10000000",
    ]));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn alerts(db: &PgDb) -> Vec<Value> {
    let out = run_ok(Command::new(COLLECTOR).args([
        "alerts", "--store", &db.url, "--format", "json", "--rule", RULE,
    ]));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `verify --store` against the keys in `data_dir`: its exit code and output.
pub(crate) fn verify(db: &PgDb, data_dir: &Path) -> (i32, String) {
    let output = run_output(
        Command::new(COLLECTOR)
            .args(["verify", "--store", &db.url, "--data-dir"])
            .arg(data_dir),
    );
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

pub(crate) fn status(n: u64) -> Body {
    SensorEvent::new(SensorStatus::Status, "sim", format!("event {n}")).into()
}

fn writer() -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        ppid: Some(1),
        exe: "/usr/bin/python3".into(),
        cmdline: "python3 dump.py".into(),
        user: "user".into(),
        uid: Some(1000),
        ancestry: Default::default(),
    }
}

pub(crate) fn export(action: FileAction, path: &str) -> Body {
    let mut file = FileEvent::new(action, path, "fanotify");
    file.size = Some(40 * 1024 * 1024);
    file.process = Some(std::sync::Arc::new(writer()));
    file.process_known = true;
    file.export = Some(ExportInfo {
        class: "data".into(),
        format: "csv".into(),
        est_rows: Some(400_000),
        sampled_bytes: 65_536,
        emails: 900,
        phones: 800,
        passports: 0,
        cards: 0,
    });
    file.into()
}

/// The running collector whose log says it leads detection now.
pub(crate) fn leader_of(collectors: &[Collector], dead: &BTreeSet<usize>) -> Option<usize> {
    (0..collectors.len()).find(|i| {
        let c = &collectors[*i];
        !dead.contains(i)
            && c.proc
                .log()
                .lines()
                .filter(|l| l.contains("this collector leads detection"))
                .count()
                > c.proc
                    .log()
                    .lines()
                    .filter(|l| l.contains("detection leadership lost"))
                    .count()
    })
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn three_collectors_take_eight_agents_with_failover_and_store_every_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 3);
    let mut collectors: Vec<Collector> = dirs.iter().map(|d| start(d, &db, None, &[])).collect();
    let rt = runtime();
    const ROUNDS: u64 = 6;
    const PER_BATCH: u64 = 25;
    // One enrollment works against any collector: agent i enrolls through collector i % 3.
    let mut agents = Vec::new();
    for i in 0..8 {
        agents.push(rt.block_on(SimAgent::enroll(&collectors[i % 3], &format!("pc{i}"))));
    }
    let mut last: Vec<Option<pb::EventBatch>> = vec![None; 8];
    // Each round every agent sends one batch, all agents at once. From round 3 on every agent
    // sends to the next collector, and first resends its batch of the round before (as an agent
    // does whose acknowledgement was lost). During round 4 collector 1 is killed: its agents fail
    // over to collector 2 with the same batch, which it may or may not have committed.
    for round in 0..ROUNDS {
        let shift = usize::from(round >= 3);
        let mut tasks = Vec::new();
        for (i, mut agent) in agents.drain(..).enumerate() {
            let target = (i + shift) % 3;
            let target = if round > 4 && target == 1 { 2 } else { target };
            rt.block_on(agent.connect_to(&collectors[target]));
            let fallback = rt.block_on(async {
                pb::ingest_client::IngestClient::new(
                    channel(&collectors[2], Some((&agent.cert, &agent.tls_key))).await,
                )
            });
            let resend = if round == 3 { last[i].take() } else { None };
            let first = round * PER_BATCH;
            tasks.push(rt.spawn(async move {
                if let Some(batch) = resend {
                    let ack = agent.ingest.submit(batch).await.unwrap().into_inner();
                    assert_eq!(ack.committed_through, agent.next_seq - 1);
                }
                let events = agent.stamped(
                    (first..first + PER_BATCH)
                        .map(|n| (Timestamp::now(), status(n)))
                        .collect(),
                );
                let key = agent.key.clone();
                let (batch, head) = agent.batch_at(agent.next_seq, agent.head, events, &key);
                let last_seq = agent.next_seq + PER_BATCH - 1;
                let ack = match agent.ingest.submit(batch.clone()).await {
                    Ok(ack) => ack.into_inner(),
                    Err(_) => {
                        agent.ingest = fallback;
                        agent
                            .ingest
                            .submit(batch.clone())
                            .await
                            .unwrap()
                            .into_inner()
                    }
                };
                assert_eq!(ack.committed_through, last_seq);
                agent.head = head;
                agent.next_seq = last_seq + 1;
                (agent, batch)
            }));
        }
        if round == 4 {
            collectors[1].proc.kill9();
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let (agent, batch) = rt.block_on(task).unwrap();
            agents.push(agent);
            last[i] = Some(batch);
        }
    }
    let stored = events(&db);
    assert_eq!(stored.len() as u64, 8 * ROUNDS * PER_BATCH);
    for agent in &agents {
        assert_eq!(assert_contiguous(&stored, &agent.id), ROUNDS * PER_BATCH);
    }
    // Nothing was found wrong with any chain: resends were duplicates, not forks or gaps.
    assert_eq!(db.query("SELECT count(*) FROM findings"), "0");
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 0, "{out}");
    // Whoever can write to the database still cannot change an event unseen, nor drop a chain's tail.
    db.query(
        "UPDATE events SET payload = payload || '\\x00'::bytea WHERE seq = 7 AND agent_no = 1",
    );
    db.query("DELETE FROM events WHERE agent_no = 2 AND seq > 140");
    let (code, out) = verify(&db, &dirs[0]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("agent {} event 7: altered", agents[0].id)),
        "{out}"
    );
    assert!(
        out.contains(&format!("agent {} events 141..=150: missing", agents[1].id)),
        "{out}"
    );
    let listed = run_ok(Command::new(COLLECTOR).args(["agents", "--store", &db.url]));
    for i in 0..8 {
        assert!(listed.contains(&format!("pc{i}")), "{listed}");
    }
}

#[test]
fn a_leader_killed_mid_stream_is_replaced_and_no_alert_is_lost_or_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let receiver = HttpReceiver::start(0);
    let config = webhook_config(tmp.path(), &receiver.url("/hook"));
    let dirs = shared_dirs(tmp.path(), &db, 3);
    let mut collectors: Vec<Collector> = dirs
        .iter()
        .map(|d| start(d, &db, Some(&config), &[]))
        .collect();
    let rt = runtime();
    let mut agents = Vec::new();
    for i in 0..4 {
        agents.push(rt.block_on(SimAgent::enroll(&collectors[i % 3], &format!("pc{i}"))));
    }
    let mut expected = BTreeSet::new();
    let mut dead = BTreeSet::new();
    for round in 0..6 {
        if round % 2 == 1 && dead.len() < 2 {
            let leader = wait_for("a detection leader", LONG, || leader_of(&collectors, &dead));
            collectors[leader].proc.kill9();
            dead.insert(leader);
        }
        // Agents send to the collectors still running.
        let live: Vec<usize> = (0..3).filter(|i| !dead.contains(i)).collect();
        for (i, agent) in agents.iter_mut().enumerate() {
            let target = &collectors[live[i % live.len()]];
            rt.block_on(agent.connect_to(target));
            let path = format!("/home/user/export-{round}-{i}.csv");
            let t = Timestamp::now();
            rt.block_on(agent.submit_bodies(vec![
                (t, export(FileAction::Create, &path)),
                (
                    t.saturating_add(Duration::from_secs(5)),
                    export(FileAction::Delete, &path),
                ),
            ]))
            .unwrap();
            expected.insert(path);
        }
    }
    let got = wait_for("every export's alert", LONG, || {
        let alerts = alerts(&db);
        (alerts.len() >= expected.len()).then_some(alerts)
    });
    let paths: Vec<String> = got
        .iter()
        .map(|a| a["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), expected.len(), "{paths:?}");
    assert_eq!(paths.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // Every alert reaches the receiver, once per id.
    let ids: BTreeSet<String> = got
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    // A delivery the killed collector had claimed waits out its lease (45 s).
    let delivered = wait_for("every alert delivered", LONG * 2, || {
        let bodies = receiver.bodies("/hook");
        let seen: BTreeSet<String> = bodies
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect();
        (seen == ids).then_some(bodies)
    });
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for body in &delivered {
        *per_id
            .entry(body["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // At least once: a collector killed between sending and recording sends again after its
    // claim's lease, one row per claim, so at most one extra delivery per kill (same id, which
    // the receiver dedupes on).
    let extra: usize = per_id.values().map(|n| n - 1).sum();
    assert!(extra <= 2, "{per_id:?}");
    // The alerts and their chain verify, whoever of the leaders wrote them.
    let (code, out) = verify(&db, &dirs[0]);
    assert_eq!(code, 0, "{out}");
    // Two leaders were killed; the one collector left took over.
    assert_eq!(dead.len(), 2);
    let survivor = (0..3).find(|i| !dead.contains(i)).unwrap();
    assert_eq!(leader_of(&collectors, &dead), Some(survivor));
}

#[test]
fn an_export_created_through_one_collector_and_deleted_through_another_alerts_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let receiver = HttpReceiver::start(0);
    let config = webhook_config(tmp.path(), &receiver.url("/hook"));
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let mut a = start(&dirs[0], &db, Some(&config), &[]);
    let b = start(&dirs[1], &db, Some(&config), &[]);
    let rt = runtime();
    let mut agent = rt.block_on(SimAgent::enroll(&a, "files1"));
    let path = "/srv/exports/customers.csv";
    let t = Timestamp::now();
    // The create is acknowledged by A, then A dies.
    rt.block_on(agent.submit_bodies(vec![(t, export(FileAction::Create, path))]))
        .unwrap();
    a.proc.kill9();
    // The delete lands on B.
    rt.block_on(agent.connect_to(&b));
    rt.block_on(agent.submit_bodies(vec![(
        t.saturating_add(Duration::from_secs(30)),
        export(FileAction::Delete, path),
    )]))
    .unwrap();
    let delivered = wait_for("the alert at the receiver", LONG, || {
        receiver.bodies("/hook").into_iter().next()
    });
    assert_eq!(delivered["rule"], RULE);
    assert_eq!(delivered["path"], path);
    let stored = alerts(&db);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["id"], delivered["id"]);
    // Delivered once: the outbox row is done, and nothing else arrives.
    wait_for("the delivery recorded", LONG, || {
        (db.query("SELECT state FROM hook_outbox") == "delivered").then_some(())
    });
    assert_eq!(receiver.bodies("/hook").len(), 1);
}

/// The transaction ids of sessions sitting inside a transaction with an id (writers).
pub(crate) fn open_writers(db: &PgDb) -> Vec<u64> {
    db.query(&format!(
        "SELECT backend_xid FROM pg_stat_activity WHERE datname = '{}' AND backend_xid IS NOT NULL
           AND state = 'idle in transaction'",
        db.name
    ))
    .lines()
    .map(|l| l.trim().parse().unwrap())
    .collect()
}

fn cursor_xid(db: &PgDb) -> u64 {
    db.query("SELECT xid::text FROM detection_cursor")
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_batch_held_uncommitted_is_not_passed_and_is_detected_once_it_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let spec = format!("ingest.before_commit:hold:{}", hold.display());
    // H holds every batch it ingests before its commit while the file exists; L does not.
    let held = start(&dirs[0], &db, None, &[("BANNIN_FAILPOINT", &spec)]);
    let free = start(&dirs[1], &db, None, &[]);
    let rt = runtime();
    let mut x = rt.block_on(SimAgent::enroll(&free, "pcx"));
    let mut y = rt.block_on(SimAgent::enroll(&free, "pcy"));
    let t = Timestamp::now();
    // Y sends a first batch, committed before anything is held: the leader reads it.
    rt.block_on(y.submit_bodies(vec![(t, status(1))])).unwrap();
    wait_for("the leader to read Y's first batch", LONG, || {
        (cursor_xid(&db) > 0).then_some(())
    });
    // X's create goes through H, and waits there uncommitted.
    rt.block_on(x.connect_to(&held));
    let x_path = "/home/x/x.csv";
    let (x_batch, x_head) = x.batch_at(
        x.next_seq,
        x.head,
        x.stamped(vec![(t, export(FileAction::Create, x_path))]),
        &x.key.clone(),
    );
    let mut x_ingest = x.ingest.clone();
    let x_send = rt.spawn(async move { x_ingest.submit(x_batch).await });
    let held_xid = wait_for("the held transaction", LONG, || {
        open_writers(&db).into_iter().next()
    });
    // Y's export is created and deleted through L, committed after X's transaction began.
    let y_path = "/home/y/y.csv";
    rt.block_on(y.submit_bodies(vec![
        (t, export(FileAction::Create, y_path)),
        (
            t.saturating_add(Duration::from_secs(5)),
            export(FileAction::Delete, y_path),
        ),
    ]))
    .unwrap();
    let y_xid: u64 = db
        .query("SELECT max(xid)::text FROM batches")
        .parse()
        .unwrap();
    assert!(y_xid > held_xid);
    // The leader, running, does not pass the open transaction: Y's committed batch waits behind
    // it, unread, for as long as it is open (here, some twenty-five of the leader's polls).
    let passed = poll(Duration::from_secs(5), || {
        (cursor_xid(&db) >= held_xid || !alerts(&db).is_empty()).then_some(())
    });
    assert!(
        passed.is_none(),
        "the leader passed the open transaction {held_xid}: cursor {}, batches {}",
        db.query("SELECT xid, kind, agent_no, n FROM detection_cursor"),
        db.query("SELECT xid, agent_no, first_seq, last_seq FROM batches"),
    );
    assert_eq!(
        open_writers(&db),
        [held_xid],
        "the held transaction is still open"
    );
    // X's transaction commits; then X deletes its export through L.
    std::fs::remove_file(&hold).unwrap();
    let ack = rt.block_on(x_send).unwrap().unwrap().into_inner();
    assert_eq!(ack.committed_through, x.next_seq);
    x.head = x_head;
    x.next_seq += 1;
    rt.block_on(x.connect_to(&free));
    rt.block_on(x.submit_bodies(vec![(
        t.saturating_add(Duration::from_secs(9)),
        export(FileAction::Delete, x_path),
    )]))
    .unwrap();
    let got = wait_for("both alerts", LONG, || {
        let alerts = alerts(&db);
        (alerts.len() >= 2).then_some(alerts)
    });
    let mut paths: Vec<&str> = got.iter().map(|a| a["path"].as_str().unwrap()).collect();
    paths.sort();
    assert_eq!(paths, [x_path, y_path]);
    // Once detected, each event is detected once: a later batch raises nothing more.
    wait_for("the leader past everything", LONG, || {
        let behind = db.query(
            "SELECT count(*) FROM batches b, detection_cursor c
             WHERE (b.xid, 0, b.agent_no, b.last_seq) > (c.xid, c.kind, c.agent_no, c.n)",
        );
        (behind == "0").then_some(())
    });
    assert_eq!(alerts(&db).len(), 2);
}

/// The session holding the detection leader's lock.
fn leader_session(db: &PgDb) -> Option<i64> {
    db.query(&format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = {LOCK_CLASSID} AND objid = {LOCK_OBJID} AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = '{}')",
        db.name
    ))
    .parse()
    .ok()
}

#[test]
fn a_leader_whose_session_is_terminated_cannot_write_and_another_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let spec = format!("leader.before_commit:hold:{}", hold.display());
    // A leads (it starts alone), and holds its writes before their commit while the file exists.
    let mut a = start(&dirs[0], &db, None, &[("BANNIN_FAILPOINT", &spec)]);
    a.proc.wait_line("this collector leads detection", LONG);
    let b = start(&dirs[1], &db, None, &[]);
    let rt = runtime();
    let mut agent = rt.block_on(SimAgent::enroll(&b, "pc1"));
    let path = "/home/u/fenced.csv";
    let t = Timestamp::now();
    rt.block_on(agent.submit_bodies(vec![
        (t, export(FileAction::Create, path)),
        (
            t.saturating_add(Duration::from_secs(5)),
            export(FileAction::Delete, path),
        ),
    ]))
    .unwrap();
    // A has raised the alert and holds its write; its session is terminated under it.
    wait_for("A's write held", LONG, || {
        let writers = db.query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'
               AND state = 'idle in transaction' AND backend_xid IS NOT NULL",
            db.name
        ));
        (writers == "1").then_some(())
    });
    let pid = leader_session(&db).expect("A holds the lock");
    db.query(&format!("SELECT pg_terminate_backend({pid})"));
    // B takes the lock, replays and stores the alert; A's held write then fails.
    let mut b = b;
    b.proc.wait_line("this collector leads detection", LONG);
    let got = wait_for("the alert", LONG, || {
        let alerts = alerts(&db);
        (!alerts.is_empty()).then_some(alerts)
    });
    std::fs::remove_file(&hold).unwrap();
    a.proc.wait_line("detection leadership lost", LONG);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["path"], path);
    // Nothing A held reached the store: one alert, one chain entry.
    assert_eq!(alerts(&db).len(), 1);
    assert_eq!(db.query("SELECT count(*) FROM alert_chain"), "1");
    assert_ne!(leader_session(&db), Some(pid));
}

#[test]
fn an_agent_given_two_collectors_fails_over_when_one_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let mut a = start(&dirs[0], &db, None, &[]);
    let b = start(&dirs[1], &db, None, &[]);
    let state = tmp.path().join("agent");
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    // Enrolled through A; told about both.
    a.enroll(&state, "files1");
    let watch = watched.display().to_string();
    let mut agent = Agent::start(
        &state,
        &[
            "--watch",
            &watch,
            "--collector",
            &a.url(),
            "--collector",
            &b.url(),
        ],
    );
    let file_events = |name: &str| {
        events(&db)
            .into_iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .count()
    };
    std::fs::write(watched.join("before.txt"), "one").unwrap();
    wait_for("the first file's events through A", LONG, || {
        (file_events("before.txt") > 0).then_some(())
    });
    a.proc.kill9();
    std::fs::write(watched.join("after.txt"), "two").unwrap();
    wait_for("the second file's events through B", LONG, || {
        (file_events("after.txt") > 0).then_some(())
    });
    assert!(agent.proc.has_line("failing over to the next collector"));
    agent.proc.terminate();
    let stored = events(&db);
    let id = agent_id(&state);
    assert_contiguous(&stored, &id);
    let (code, out) = verify(&db, &dirs[1]);
    assert_eq!(code, 0, "{out}");
    drop(b);
}

#[test]
fn detection_held_back_by_an_open_transaction_raises_a_lag_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let config = tmp.path().join("lag.toml");
    private_file(&config, "[store]\nlag_alert_after = \"2s\"\n");
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let spec = format!("ingest.before_commit:hold:{}", hold.display());
    let held = start(&dirs[0], &db, Some(&config), &[("BANNIN_FAILPOINT", &spec)]);
    let free = start(&dirs[1], &db, Some(&config), &[]);
    let rt = runtime();
    let mut x = rt.block_on(SimAgent::enroll(&free, "pcx"));
    let mut y = rt.block_on(SimAgent::enroll(&free, "pcy"));
    rt.block_on(x.connect_to(&held));
    let batch = x.next_batch(x.stamped(vec![(Timestamp::now(), status(1))]));
    let mut ingest = x.ingest.clone();
    let x_send = rt.spawn(async move { ingest.submit(batch).await });
    wait_for("the held transaction", LONG, || {
        open_writers(&db).into_iter().next()
    });
    // A batch committed behind it waits; past the threshold, the leader says so.
    rt.block_on(y.submit_bodies(vec![(Timestamp::now(), status(1))]))
        .unwrap();
    let lag = |db: &PgDb| -> Vec<Value> {
        let out = run_ok(Command::new(COLLECTOR).args([
            "alerts",
            "--store",
            &db.url,
            "--format",
            "json",
            "--rule",
            "detection-lag",
        ]));
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let raised = wait_for("the lag alert", Duration::from_secs(20), || {
        let alerts = lag(&db);
        (!alerts.is_empty()).then_some(alerts)
    });
    assert_eq!(raised.len(), 1, "one alert per stall: {raised:?}");
    assert!(
        raised[0]["waiting_batches"].as_u64().unwrap() >= 1,
        "{raised:?}"
    );
    assert!(
        raised[0]["oldest_writer_secs"].as_u64().unwrap() >= 2,
        "{raised:?}"
    );
    std::fs::remove_file(&hold).unwrap();
    rt.block_on(x_send).unwrap().unwrap();
    // Caught up, the alert chain and every event still verify.
    let (code, out) = verify(&db, &dirs[0]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_revocation_in_the_shared_store_is_refused_by_every_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let a = start(&dirs[0], &db, None, &[]);
    let b = start(&dirs[1], &db, None, &[]);
    let rt = runtime();
    let mut agent = rt.block_on(SimAgent::enroll(&a, "pc1"));
    rt.block_on(agent.submit_bodies(vec![(Timestamp::now(), status(1))]))
        .unwrap();
    // An operator recorded in the shared store, listed from it.
    let identity = tmp.path().join("alice.pem");
    run_ok(
        Command::new(COLLECTOR)
            .args([
                "operator",
                "create",
                "--name",
                "alice",
                "--store",
                &db.url,
                "--data-dir",
            ])
            .arg(&dirs[0])
            .arg("--out")
            .arg(&identity),
    );
    let listed = run_ok(Command::new(COLLECTOR).args(["operator", "list", "--store", &db.url]));
    assert!(
        listed.contains("alice") && listed.contains("active"),
        "{listed}"
    );
    // The agent revoked once, through the store: neither collector takes its batches any more.
    run_ok(Command::new(COLLECTOR).args(["revoke", "--store", &db.url, "--agent", &agent.id]));
    for collector in [&a, &b] {
        rt.block_on(agent.connect_to(collector));
        // Until the collector re-reads the agents (within a second) batches may still go in.
        let refused = wait_for("the revocation to apply", LONG, || {
            let events = agent.stamped(vec![(Timestamp::now(), status(2))]);
            let key = agent.key.clone();
            let (batch, head) = agent.batch_at(agent.next_seq, agent.head, events, &key);
            match rt.block_on(agent.ingest.submit(batch)) {
                Err(status) => Some(status),
                Ok(_) => {
                    agent.head = head;
                    agent.next_seq += 1;
                    None
                }
            }
        });
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    run_ok(Command::new(COLLECTOR).args(["revoke", "--store", &db.url, "--operator", "alice"]));
    let listed = run_ok(Command::new(COLLECTOR).args(["operator", "list", "--store", &db.url]));
    assert!(listed.contains("revoked"), "{listed}");
    // A store that does not exist yet is named, in one line, not created by a read.
    let empty = PgDb::create();
    let out = run_output(Command::new(COLLECTOR).args(["agents", "--store", &empty.url]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no bannin store in"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        empty.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
}
