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

const RULE: &str = "large-export-created-then-deleted";
const LONG: Duration = Duration::from_secs(60);
/// The detection leader's advisory lock (`LEADER_LOCK` in collector/store/pg/leader.rs), as
/// `pg_locks` shows a 64-bit key: its high and low halves.
const LOCK_CLASSID: i64 = 0x6261_6e6e;
const LOCK_OBJID: i64 = 0x696e_0010;

/// A database of its own on the machine's PostgreSQL, dropped afterwards.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

pub fn psql(database: &str, sql: &str) -> String {
    run_ok(Command::new("psql").args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        database,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]))
    .trim()
    .to_string()
}

impl PgDb {
    pub fn create() -> PgDb {
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).unwrap();
        let name = format!("bannin_test_{}", hex::encode(random));
        psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    pub fn query(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// The files collectors sharing a store share (README: "Several collectors"): the CA, the server
/// certificate and the collector's signing key.
const SHARED: &[&str] = &[
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "collector.key",
];

/// `n` data directories under `tmp` holding the same keys, made by a first collector's start.
fn shared_dirs(tmp: &Path, db: &PgDb, n: usize) -> Vec<PathBuf> {
    let first = tmp.join("c0");
    let mut c0 = Collector::start_with(&first, "127.0.0.1:0", &["--store", &db.url]);
    c0.proc.terminate();
    let mut dirs = vec![first.clone()];
    for i in 1..n {
        let dir = tmp.join(format!("c{i}"));
        std::fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for name in SHARED {
            std::fs::copy(first.join(name), dir.join(name)).unwrap();
        }
        dirs.push(dir);
    }
    dirs
}

fn start(dir: &Path, db: &PgDb, config: Option<&Path>, env: &[(&str, &str)]) -> Collector {
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
    let line = proc.wait_line("listening on ", LONG);
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    Collector {
        dir: dir.to_path_buf(),
        addr,
        proc,
        extra_args: args,
    }
}

fn webhook_config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("collector.toml");
    private_file(
        &path,
        &format!("[[alerts.webhook]]\nurl = \"{url}\"\nformat = \"json\"\nrules = [\"{RULE}\"]\n"),
    );
    path
}

fn events(db: &PgDb) -> Vec<Value> {
    let out = run_ok(Command::new(COLLECTOR).args([
        "events", "--store", &db.url, "--format", "json", "--limit", "10000000",
    ]));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn alerts(db: &PgDb) -> Vec<Value> {
    let out = run_ok(Command::new(COLLECTOR).args([
        "alerts", "--store", &db.url, "--format", "json", "--rule", RULE,
    ]));
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status(n: u64) -> Body {
    SensorEvent::new(SensorStatus::Status, "sim", &format!("event {n}")).into()
}

fn writer() -> ProcessInfo {
    ProcessInfo {
        pid: 4242,
        ppid: Some(1),
        exe: "/usr/bin/python3".into(),
        cmdline: "python3 dump.py".into(),
        user: "user".into(),
        uid: Some(1000),
        ancestry: Vec::new(),
    }
}

fn export(action: FileAction, path: &str) -> Body {
    let mut file = FileEvent::new(action, path, "fanotify");
    file.size = Some(40 * 1024 * 1024);
    file.process = Some(writer());
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
fn leader_of(collectors: &[Collector], dead: &BTreeSet<usize>) -> Option<usize> {
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

fn runtime() -> tokio::runtime::Runtime {
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
    let delivered = wait_for("every alert delivered", LONG, || {
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
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    // Two leaders were killed; the one collector left took over.
    assert_eq!(dead.len(), 2);
    let survivor = (0..3).find(|i| !dead.contains(i)).unwrap();
    assert_eq!(leader_of(&collectors, &dead), Some(survivor));
}
