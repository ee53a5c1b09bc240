//! Someone with write access to the collector's store tries to change history without `verify`
//! saying so.
//!
//! A pristine store is made once through the real collector (a simulated agent enrolls with a real
//! token and submits signed, chained batches over mutual TLS; one of its events raises an alert).
//! Each attack edits its own copy with the `sqlite3` shell, as an attacker holding the database
//! file would, and then runs `bannin-collector verify` on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bannin::chain::{self, GENESIS};
use bannin::event::{AgentAction, AgentEvent, Event};
use ed25519_dalek::SigningKey;

use crate::harness::*;
use crate::sim::SimAgent;

const LONG: Duration = Duration::from_secs(60);
/// The pristine agent's batches: five of five events each.
const BATCHES: u64 = 5;
const PER_BATCH: u64 = 5;

/// The pristine agent's events.
fn heartbeats(count: u64) -> Vec<Event> {
    beats("victim", count)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Pristine {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    agent_id: String,
}

/// Made once for all the tests in this file: a stopped collector's data directory holding one
/// agent's five signed batches and one alert.
fn pristine() -> &'static Pristine {
    static PRISTINE: OnceLock<Pristine> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("collector");
        let mut collector = Collector::start(&data);
        let agent_id = runtime().block_on(async {
            let mut agent = SimAgent::enroll(&collector, "victim").await;
            for batch in 0..BATCHES {
                let mut events = heartbeats(PER_BATCH);
                if batch == 3 {
                    // An agent.dropped report raises the `agent-dropped-events` alert.
                    let mut dropped = AgentEvent::new(AgentAction::Dropped);
                    dropped.dropped = 2;
                    dropped.first_dropped_seq = 9_000;
                    dropped.last_dropped_seq = 9_001;
                    events[2] = Event::now("victim", dropped);
                }
                agent.submit(events).await.unwrap();
            }
            agent.id
        });
        wait_for("the alert stored", LONG, || {
            (!alerts_json(&data, &[]).is_empty()).then_some(())
        });
        collector.proc.terminate();
        let (ok, report) = verify(&data, &[]);
        assert!(ok, "the untouched store verifies: {report}");
        Pristine {
            _tmp: tmp,
            data,
            agent_id,
        }
    })
}

/// A private copy of the pristine data directory for one attack.
fn store_copy() -> (tempfile::TempDir, PathBuf) {
    copy_dir(&pristine().data)
}

/// Runs SQL on a store with the `sqlite3` shell, as an attacker with the file would.
fn sqlite(dir: &Path, sql: &str) -> String {
    let out = run_output(Command::new("sqlite3").arg(dir.join("bannin.db")).arg(sql));
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `verify`: whether it passed (exit 0) and what it printed. Exit 1 is the only other answer.
fn verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = run_output(
        Command::new(COLLECTOR)
            .args(["verify", "--data-dir"])
            .arg(dir)
            .args(extra),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        other => panic!("verify exited {other:?}: {text}"),
    }
}

fn assert_fails(dir: &Path, needles: &[&str]) -> String {
    let (ok, report) = verify(dir, &[]);
    assert!(!ok, "verify passed a tampered store:\n{report}");
    for needle in needles {
        assert!(report.contains(needle), "{needle:?} not named:\n{report}");
    }
    report
}

#[test]
fn deleting_an_agents_last_batches_with_their_signatures_fails_verify() {
    let agent = &pristine().agent_id;
    let cut = 3 * PER_BATCH;
    let truncate = format!(
        "DELETE FROM events WHERE seq > {cut}; DELETE FROM batches WHERE first_seq > {cut};"
    );

    let (_tmp, dir) = store_copy();
    sqlite(&dir, &truncate);
    assert_fails(&dir, &[&format!("agent {agent}"), "committed through 25"]);

    // Also rewinding the agent's recorded head to the last kept batch does not help: the head is
    // signed by the collector, and the signature does not cover the rewound one.
    let (_tmp, dir) = store_copy();
    sqlite(
        &dir,
        &format!(
            "{truncate} UPDATE agents SET last_seq = {cut},
                 head_hash = (SELECT head_hash FROM batches WHERE last_seq = {cut});"
        ),
    );
    assert_fails(&dir, &[&format!("agent {agent}"), "head"]);

    let (_tmp, dir) = store_copy();
    sqlite(
        &dir,
        &format!(
            "{truncate} UPDATE agents SET last_seq = {cut}, head_signature = NULL,
                 head_hash = (SELECT head_hash FROM batches WHERE last_seq = {cut});"
        ),
    );
    assert_fails(&dir, &[&format!("agent {agent}"), "head"]);
}

#[test]
fn deleting_an_agents_whole_history_fails_verify() {
    let agent = &pristine().agent_id;
    let (_tmp, dir) = store_copy();
    sqlite(&dir, "DELETE FROM events; DELETE FROM batches;");
    assert_fails(&dir, &[&format!("agent {agent}")]);

    // The agent row too: the token it spent still names it.
    let (_tmp, dir) = store_copy();
    sqlite(
        &dir,
        "DELETE FROM events; DELETE FROM batches; DELETE FROM agents;",
    );
    assert_fails(&dir, &[agent.as_str()]);
}

#[test]
fn an_inserted_gap_finding_does_not_explain_deleted_batches() {
    let agent = &pristine().agent_id;
    let (_tmp, dir) = store_copy();
    sqlite(
        &dir,
        "DELETE FROM events WHERE seq BETWEEN 6 AND 10;
         DELETE FROM batches WHERE first_seq = 6;
         INSERT INTO findings (agent_no, ts, kind, first_seq, last_seq, detail)
             VALUES (1, 0, 'chain.gap', 6, 10, 'events 6..=10 never arrived');",
    );
    assert_fails(&dir, &[&format!("agent {agent}"), "event 6"]);

    // A finding's signature does not carry over to another range.
    let (_tmp, dir) = store_copy();
    sqlite(
        &dir,
        "DELETE FROM events WHERE seq BETWEEN 6 AND 10;
         DELETE FROM batches WHERE first_seq = 6;
         INSERT INTO findings (agent_no, ts, kind, first_seq, last_seq, detail, signature)
             VALUES (1, 0, 'chain.gap', 6, 10, 'events 6..=10 never arrived', zeroblob(64));",
    );
    assert_fails(&dir, &[&format!("agent {agent}"), "event 6"]);
}

#[test]
fn an_inserted_retention_mark_does_not_explain_deleted_batches() {
    let agent = &pristine().agent_id;
    let (_tmp, dir) = store_copy();
    sqlite(
        &dir,
        "DELETE FROM events WHERE seq <= 10;
         DELETE FROM batches WHERE last_seq <= 10;
         INSERT INTO pruned (agent_no, through_seq, pruned_ts) VALUES (1, 10, 0);",
    );
    assert_fails(&dir, &[&format!("agent {agent}"), "retention"]);
}

#[test]
fn corrupting_the_sqlite_index_fails_verify() {
    let (_tmp, dir) = store_copy();
    // The index on event times now claims to order events by kind: its entries no longer match
    // the table, which only SQLite's own integrity check sees.
    sqlite(
        &dir,
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX events_ts ON events (kind)'
             WHERE name = 'events_ts';",
    );
    assert_fails(&dir, &["integrity"]);
}

/// A collector with one simulated agent that has committed two batches.
async fn live_agent(tmp: &Path) -> (Collector, SimAgent) {
    let collector = Collector::start(&tmp.join("collector"));
    let mut agent = SimAgent::enroll(&collector, "victim").await;
    agent.submit(heartbeats(3)).await.unwrap();
    agent.submit(heartbeats(3)).await.unwrap();
    (collector, agent)
}

/// The `chain.tamper` findings stored, and the `chain-tamper` alerts raised, once both exist.
fn tamper_recorded(collector: &Collector, agent: &SimAgent) -> (String, Vec<serde_json::Value>) {
    let alerts = wait_for("the chain-tamper alert", LONG, || {
        let alerts: Vec<_> = alerts_json(&collector.dir, &["--rule", "chain-tamper"]);
        (!alerts.is_empty()).then_some(alerts)
    });
    assert!(
        alerts.iter().all(|a| a["severity"] == "critical"),
        "{alerts:?}"
    );
    let findings = sqlite(
        &collector.dir,
        "SELECT kind || ' ' || detail FROM findings WHERE kind = 'chain.tamper'",
    );
    assert!(!findings.is_empty(), "no chain.tamper finding stored");
    // Nothing of the refused batch was stored, and the record of the refusal verifies.
    assert_eq!(collector.events(&["--agent", &agent.id]).len(), 6);
    let (ok, report) = verify(&collector.dir, &[]);
    assert!(ok, "{report}");
    assert!(report.contains("chain.tamper"), "{report}");
    (findings, alerts)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_fork_from_an_enrolled_agent_is_recorded_as_chain_tamper() {
    let tmp = tempfile::tempdir().unwrap();
    let (collector, mut agent) = live_agent(tmp.path()).await;
    // The agent's own key signs a different history for events it already sent.
    let (fork, _) = agent.batch_at(1, GENESIS, heartbeats(2), &agent.key.clone());
    let status = agent.ingest.submit(fork).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let collector = tokio::task::spawn_blocking(move || {
        let (findings, _) = tamper_recorded(&collector, &agent);
        assert!(findings.contains("fork"), "{findings}");
        collector
    })
    .await
    .unwrap();
    drop(collector);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_bad_signature_from_an_enrolled_agent_is_recorded_as_chain_tamper() {
    let tmp = tempfile::tempdir().unwrap();
    let (collector, mut agent) = live_agent(tmp.path()).await;
    // The agent's certificate, but a batch signed by another key.
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let stranger = SigningKey::from_bytes(&seed);
    let (batch, _) = agent.batch_at(agent.next_seq, agent.head, heartbeats(2), &stranger);
    let status = agent.ingest.submit(batch).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    tokio::task::spawn_blocking(move || {
        let (findings, _) = tamper_recorded(&collector, &agent);
        assert!(findings.contains("signature"), "{findings}");
    })
    .await
    .unwrap();
}

#[test]
fn replacing_an_agents_key_and_re_signing_its_batches_fails_verify() {
    let agent = &pristine().agent_id;
    let (_tmp, dir) = store_copy();
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    let forger = SigningKey::from_bytes(&seed);
    // Every batch signature is remade with the forger's key, which replaces the agent's in the
    // table: the store is self-consistent again, except for the certificate the CA issued.
    let conn = rusqlite::Connection::open(dir.join("bannin.db")).unwrap();
    conn.execute(
        "UPDATE agents SET signing_key = ?1 WHERE id = ?2",
        rusqlite::params![forger.verifying_key().to_bytes().to_vec(), agent],
    )
    .unwrap();
    let batches: Vec<(i64, i64, Vec<u8>, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT first_seq, last_seq, prev_hash, head_hash FROM batches")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for (first, last, prev, head) in batches {
        let signature = chain::sign_batch(
            &forger,
            agent,
            first as u64,
            last as u64,
            &prev.try_into().unwrap(),
            &head.try_into().unwrap(),
        );
        conn.execute(
            "UPDATE batches SET signature = ?1 WHERE first_seq = ?2 AND last_seq = ?3",
            rusqlite::params![signature.to_vec(), first, last],
        )
        .unwrap();
    }
    drop(conn);
    assert_fails(&dir, &[&format!("agent {agent}"), "certificate"]);

    // Removing the certificate that gives the forger away is no way out either.
    sqlite(&dir, "UPDATE agents SET certificate = NULL;");
    assert_fails(&dir, &[&format!("agent {agent}"), "certificate"]);
}

#[test]
fn editing_an_alert_fails_verify() {
    let (_tmp, dir) = store_copy();
    let id = sqlite(&dir, "SELECT id FROM alerts LIMIT 1");
    // Whoever edits an alert edits its JSON and its indexed columns alike.
    sqlite(
        &dir,
        "UPDATE alerts SET host = 'elsewhere', body = replace(body, '\"victim\"', '\"elsewhere\"');",
    );
    assert_eq!(sqlite(&dir, "SELECT host FROM alerts"), "elsewhere");
    assert_fails(&dir, &[&format!("alert {id}"), "edited"]);
}

#[test]
fn what_verify_quotes_from_a_tampered_store_cannot_drive_the_terminal() {
    let (_tmp, dir) = store_copy();
    // An agent id that would retitle the terminal and clear the screen, and a forged finding whose
    // detail carries a new line with a fake all-clear.
    sqlite(
        &dir,
        "UPDATE agents SET id = id || char(27) || ']0;pwned' || char(7) || char(27) || '[2J';
         INSERT INTO findings (agent_no, ts, kind, first_seq, last_seq, detail)
             VALUES (1, 0, 'chain.gap', 1, 1, 'x' || char(10) || 'verified 0 events: 0 problems');",
    );
    let out = run_output(
        Command::new(COLLECTOR)
            .args(["verify", "--data-dir"])
            .arg(&dir),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !out.stdout.iter().any(|b| *b == 0x1b || *b == 0x07),
        "raw control bytes reached the terminal: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().all(|line| line.starts_with("note: ")
            || line.starts_with("FAIL: ")
            || line.starts_with("verified ")),
        "a quoted value made a line of its own:\n{text}"
    );
}

#[test]
fn deleting_an_alert_fails_verify() {
    let (_tmp, dir) = store_copy();
    let id = sqlite(&dir, "SELECT id FROM alerts LIMIT 1");
    sqlite(&dir, "DELETE FROM alerts;");
    assert_fails(&dir, &[&format!("alert {id}"), "removed"]);
}

fn write_files(dir: &Path, prefix: &str, count: usize) {
    for i in 0..count {
        std::fs::write(dir.join(format!("{prefix}{i}.txt")), "row\n").unwrap();
    }
}

fn stored_paths(collector: &Collector, dir: &Path, prefix: &str, count: usize) -> bool {
    let paths: std::collections::HashSet<String> = collector
        .events(&["--kind", "file.create"])
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_string))
        .collect();
    (0..count).all(|i| paths.contains(&dir.join(format!("{prefix}{i}.txt")).display().to_string()))
}

#[test]
fn a_store_that_lost_acknowledged_events_in_a_truncated_wal_raises_chain_tamper() {
    let Site {
        tmp,
        watched,
        mut collector,
        state,
    } = Site::new("witness1", "w");
    let config = tmp.path().join("agent.toml");
    private_file(
        &config,
        "[process]\nenabled = false\n\n[network]\nenabled = false\n",
    );
    let _agent = Agent::start(
        &state,
        &[
            "--watch",
            watched.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    write_files(&watched, "a", 5);
    wait_for("the first files stored", LONG, || {
        stored_paths(&collector, &watched, "a", 5).then_some(())
    });
    // What is stored so far goes into the database file proper; later commits stay in the log.
    collector.proc.terminate();
    sqlite(&collector.dir, "PRAGMA wal_checkpoint(TRUNCATE);");
    collector.restart();
    // Two bursts: one batch is in flight at a time, so once the second is stored the agent has
    // the first one's acknowledgement.
    write_files(&watched, "b", 5);
    wait_for("the second files stored", LONG, || {
        stored_paths(&collector, &watched, "b", 5).then_some(())
    });
    write_files(&watched, "c", 5);
    wait_for("the third files stored", LONG, || {
        stored_paths(&collector, &watched, "c", 5).then_some(())
    });
    // A crash, and the write-ahead log holding the acknowledged commits is lost with it.
    collector.proc.kill9();
    let wal = collector.dir.join("bannin.db-wal");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(0)
        .unwrap();
    let _ = std::fs::remove_file(collector.dir.join("bannin.db-shm"));
    collector.restart();
    assert!(
        !stored_paths(&collector, &watched, "b", 5),
        "the truncated log took the acknowledged events with it"
    );
    write_files(&watched, "d", 1);

    let finding = wait_for_explained(
        "a chain.tamper finding",
        LONG,
        || {
            let found = sqlite(
                &collector.dir,
                "SELECT detail FROM findings WHERE kind = 'chain.tamper'",
            );
            (!found.is_empty()).then_some(found)
        },
        || {
            format!(
                "findings: {}\ncollector:\n{}\nagent:\n{}",
                sqlite(&collector.dir, "SELECT kind, detail FROM findings"),
                collector.proc.log(),
                _agent.proc.log()
            )
        },
    );
    assert!(finding.contains("lost acknowledged events"), "{finding}");
    wait_for("the chain-tamper alert", LONG, || {
        (!alerts_json(&collector.dir, &["--rule", "chain-tamper"]).is_empty()).then_some(())
    });
    let (ok, report) = verify(&collector.dir, &[]);
    assert!(!ok, "{report}");
    assert!(report.contains("lost acknowledged events"), "{report}");
}

// ---- Signed checkpoints: what leaves the box vouches for what the store must still hold.

/// `count` heartbeats from `host`.
fn beats(host: &str, count: u64) -> Vec<Event> {
    (0..count)
        .map(|_| Event::now(host, AgentEvent::new(AgentAction::Heartbeat)))
        .collect()
}

/// The newest checkpoint in `file` (one JSON object per line), once it satisfies `ready`.
fn checkpoint_where(file: &Path, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for("a checkpoint that vouches for it all", LONG, || {
        let text = std::fs::read_to_string(file).ok()?;
        let last = text.lines().last()?;
        let checkpoint: serde_json::Value = serde_json::from_str(last).unwrap();
        ready(&checkpoint).then_some(checkpoint)
    })
}

fn vouched_seq(checkpoint: &serde_json::Value, agent_id: &str) -> u64 {
    checkpoint["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == agent_id)
        .and_then(|a| a["seq"].as_u64())
        .unwrap_or(0)
}

/// A private copy of a stopped collector's data directory.
pub(crate) fn copy_dir(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("collector");
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    (tmp, dir)
}

/// Three attacks that leave a store consistent in itself, so `verify` alone passes it: an agent
/// deleted with its whole history (and the token that names it), a backup from before the newest
/// batches restored over the store, and the newest alert cut off the alert chain. The collector's
/// signed checkpoints, written to a file and POSTed to a webhook, catch each one.
#[test]
fn signed_checkpoints_catch_what_a_self_consistent_store_hides() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("collector");
    let file = tmp.path().join("checkpoints.jsonl");
    let receiver = HttpReceiver::start(0);
    let config = tmp.path().join("collector.toml");
    private_file(
        &config,
        &format!(
            "[checkpoints]\ninterval = \"1s\"\nfile = {:?}\nwebhook = {:?}\n",
            file.display().to_string(),
            receiver.url("/checkpoints")
        ),
    );
    let mut collector = Collector::start_with(
        &data,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let backup = tmp.path().join("backup.db");
    let (kept, gone) = runtime().block_on(async {
        let mut kept = SimAgent::enroll(&collector, "kept").await;
        let mut gone = SimAgent::enroll(&collector, "gone").await;
        for _ in 0..2 {
            kept.submit(beats("kept", PER_BATCH)).await.unwrap();
        }
        gone.submit(beats("gone", PER_BATCH)).await.unwrap();
        // The insider's copy, taken while the collector runs, as a backup job would.
        let out = run_output(
            Command::new("sqlite3")
                .args(["-cmd", ".timeout 10000"])
                .arg(data.join("bannin.db"))
                .arg(format!(".backup {}", backup.display())),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut events = beats("kept", PER_BATCH);
        let mut dropped = AgentEvent::new(AgentAction::Dropped);
        dropped.dropped = 2;
        dropped.first_dropped_seq = 9_000;
        dropped.last_dropped_seq = 9_001;
        events[0] = Event::now("kept", dropped);
        kept.submit(events).await.unwrap();
        (kept.id.clone(), gone.id.clone())
    });
    wait_for("the alert stored", LONG, || {
        (!alerts_json(&data, &[]).is_empty()).then_some(())
    });
    let checkpoint = checkpoint_where(&file, |c| {
        vouched_seq(c, &kept) == 3 * PER_BATCH
            && vouched_seq(c, &gone) == PER_BATCH
            && c["alert_chain"]["n"].as_u64() >= Some(1)
    });
    let posted = wait_for("a checkpoint at the webhook", LONG, || {
        receiver
            .bodies("/checkpoints")
            .into_iter()
            .find(|b| b["ts_ns"] == checkpoint["ts_ns"])
    });
    assert_eq!(posted, checkpoint);
    collector.proc.terminate();
    let checkpoints = ["--checkpoints", file.to_str().unwrap()];
    let (ok, report) = verify(&data, &checkpoints);
    assert!(
        ok,
        "the untouched store fails against its checkpoints:\n{report}"
    );

    // 1. The agent that will not come back, removed with everything that names it.
    let (_t, dir) = copy_dir(&data);
    sqlite(
        &dir,
        &format!(
            "DELETE FROM events WHERE agent_no = (SELECT no FROM agents WHERE id = '{gone}');
             DELETE FROM batches WHERE agent_no = (SELECT no FROM agents WHERE id = '{gone}');
             DELETE FROM findings WHERE agent_no = (SELECT no FROM agents WHERE id = '{gone}');
             DELETE FROM tokens WHERE used_by = '{gone}';
             DELETE FROM agents WHERE id = '{gone}';"
        ),
    );
    let (ok, report) = verify(&dir, &[]);
    assert!(ok, "the store alone should look whole here:\n{report}");
    let (ok, report) = verify(&dir, &checkpoints);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("agent {gone} (gone)")) && report.contains("no such agent"),
        "{report}"
    );

    // 2. A backup from before the last batch restored over the store.
    let (_t, dir) = copy_dir(&data);
    for stale in ["bannin.db-wal", "bannin.db-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    std::fs::copy(&backup, dir.join("bannin.db")).unwrap();
    let (ok, report) = verify(&dir, &[]);
    assert!(ok, "the restored backup alone should look whole:\n{report}");
    let (ok, report) = verify(&dir, &checkpoints);
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("agent {kept}: its recorded head (10) is behind"))
            && report.contains("alert chain"),
        "{report}"
    );

    // 3. The newest alert cut off the alert chain.
    let (_t, dir) = copy_dir(&data);
    sqlite(
        &dir,
        "DELETE FROM alerts WHERE id = (SELECT alert_id FROM alert_chain ORDER BY n DESC LIMIT 1);
         DELETE FROM alert_chain WHERE n = (SELECT MAX(n) FROM alert_chain);",
    );
    let (ok, report) = verify(&dir, &checkpoints);
    assert!(!ok, "{report}");
    assert!(report.contains("alert chain entries through"), "{report}");

    // A checkpoint edited to vouch for less (or more) vouches for nothing, and says so.
    let forged = tmp.path().join("forged.jsonl");
    let mut edited = checkpoint.clone();
    edited["agents"] = serde_json::json!([]);
    std::fs::write(&forged, format!("{edited}\nnot json\n")).unwrap();
    let (ok, report) = verify(&data, &["--checkpoints", forged.to_str().unwrap()]);
    assert!(!ok, "{report}");
    assert!(
        report.contains("line 1") && report.contains("not signed by this collector's key"),
        "{report}"
    );
    assert!(report.contains("line 2: not a checkpoint"), "{report}");

    // A checkpoint file that cannot be read is a usage error, with one line.
    let out = run_output(
        Command::new(COLLECTOR)
            .args(["verify", "--data-dir"])
            .arg(&data)
            .args(["--checkpoints", "/nonexistent/checkpoints.jsonl"]),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot read the checkpoint file"),
        "{stderr}"
    );
}
