//! Retention and checkpoints on a PostgreSQL store: old day partitions are dropped as a prefix of
//! every chain and `verify` still passes; a day is never dropped before detection has read it; and
//! signed checkpoints catch what someone who can write the database does to it afterwards.
//!
//! Batches "received" days ago come from collectors whose receipt clock is moved back with the
//! test hook `BANNIN_TEST_CLOCK_SHIFT` (collector/store/pg/mod.rs): they stamp `received_ts` and
//! create the partitions of those days as they would have then.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bannin::event::FileAction;
use bannin::time::Timestamp;
use serde_json::Value;

use crate::harness::*;
use crate::pgstore::{
    LONG, PgDb, alerts, events, export, open_writers, runtime, shared_dirs, start, status, verify,
};
use crate::sim::SimAgent;

const SHIFT: &str = "BANNIN_TEST_CLOCK_SHIFT";

/// The partitions of `batches` holding an agent's batches, by name, oldest day first.
fn batch_partitions(db: &PgDb, agent_id: &str) -> Vec<String> {
    let mut names: Vec<String> = db
        .query(&format!(
            "SELECT DISTINCT b.tableoid::regclass::text FROM batches b JOIN agents a ON a.no = b.agent_no
             WHERE a.id = '{agent_id}'"
        ))
        .lines()
        .map(str::to_string)
        .collect();
    names.sort_by_key(|n| n.trim_start_matches("batches_d").parse::<i64>().unwrap());
    names
}

fn exists(db: &PgDb, table: &str) -> bool {
    db.query(&format!("SELECT to_regclass('{table}') IS NOT NULL")) == "t"
}

fn seqs(db: &PgDb, agent_id: &str) -> Vec<u64> {
    events(db)
        .iter()
        .filter(|e| e["agent_id"] == agent_id)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// `verify --store … --checkpoints FILE`: its exit code and output.
fn verify_against(db: &PgDb, data_dir: &Path, checkpoints: &Path) -> (i32, String) {
    let output = run_output(
        Command::new(COLLECTOR)
            .args(["verify", "--store", &db.url, "--data-dir"])
            .arg(data_dir)
            .arg("--checkpoints")
            .arg(checkpoints),
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

/// The first checkpoint in `file` for which `wanted` holds.
fn checkpoint_where(file: &Path, wanted: impl Fn(&Value) -> bool) -> Value {
    wait_for("a checkpoint", LONG, || {
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|c| wanted(c))
    })
}

fn vouched_seq(checkpoint: &Value, agent_id: &str) -> Option<u64> {
    checkpoint["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent_id"] == agent_id)?["seq"]
        .as_u64()
}

fn log_count(collector: &Collector, needle: &str) -> usize {
    collector
        .proc
        .log()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn retention_drops_old_days_the_rest_verifies_and_checkpoints_catch_later_cuts() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 3);
    let rt = runtime();
    // Three days ago: two batches of p1 and one of p2.
    let mut three_ago = start(&dirs[0], &db, None, &[(SHIFT, "-3d")]);
    let mut p1 = rt.block_on(SimAgent::enroll(&three_ago, "p1"));
    let mut p2 = rt.block_on(SimAgent::enroll(&three_ago, "p2"));
    let beats = |from: u64| {
        (from..from + 5)
            .map(|n| (Timestamp::now(), status(n)))
            .collect()
    };
    rt.block_on(p1.submit_bodies(beats(0))).unwrap();
    rt.block_on(p1.submit_bodies(beats(5))).unwrap();
    rt.block_on(p2.submit_bodies(beats(0))).unwrap();
    three_ago.proc.terminate();
    // Two days ago: one batch each.
    let mut two_ago = start(&dirs[1], &db, None, &[(SHIFT, "-2d")]);
    rt.block_on(p1.connect_to(&two_ago));
    rt.block_on(p2.connect_to(&two_ago));
    rt.block_on(p1.submit_bodies(beats(10))).unwrap();
    rt.block_on(p2.submit_bodies(beats(5))).unwrap();
    two_ago.proc.terminate();
    // The head p1 had then, which the collector signed: an insider may keep a copy of it.
    let old_head = db.query(&format!(
        "SELECT last_seq || ',' || encode(head_hash, 'hex') || ',' || encode(head_signature, 'hex')
         FROM agents WHERE id = '{}'",
        p1.id
    ));
    let days = batch_partitions(&db, &p1.id);
    assert_eq!(days.len(), 2, "{days:?}");
    let (oldest, middle) = (days[0].clone(), days[1].clone());
    assert_eq!(batch_partitions(&db, &p2.id), days);

    // Today, a collector keeping two days, writing checkpoints every second.
    let file = tmp.path().join("checkpoints.jsonl");
    let config = tmp.path().join("today.toml");
    private_file(
        &config,
        &format!(
            "[retention]\ndays = 2\ncheck_every = \"1s\"\n[checkpoints]\ninterval = \"1s\"\nfile = {:?}\n",
            file.display().to_string()
        ),
    );
    let mut today = start(&dirs[2], &db, Some(&config), &[]);
    rt.block_on(p1.connect_to(&today));
    rt.block_on(p2.connect_to(&today));
    rt.block_on(p1.submit_bodies(beats(15))).unwrap();
    rt.block_on(p2.submit_bodies(beats(10))).unwrap();
    today.proc.wait_line("retention deleted old events", LONG);

    // The oldest day went whole, the rest stayed: a prefix of each chain.
    let dropped_events = oldest.replace("batches_", "events_");
    assert!(!exists(&db, &oldest) && !exists(&db, &dropped_events));
    assert!(exists(&db, &middle));
    assert_eq!(seqs(&db, &p1.id), (11..=20).collect::<Vec<_>>());
    assert_eq!(seqs(&db, &p2.id), (6..=15).collect::<Vec<_>>());
    assert_eq!(
        db.query("SELECT a.name || ':' || p.through_seq FROM pruned p JOIN agents a ON a.no = p.agent_no ORDER BY a.name"),
        "p1:10\np2:5"
    );
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "agent {} events 1..=10: deleted by retention",
            p1.id
        )),
        "{out}"
    );
    // The chain goes on where it was.
    rt.block_on(p1.submit_bodies(beats(20))).unwrap();

    // A checkpoint vouching for p1 through 25 and p2 through 15, which the store still holds.
    checkpoint_where(&file, |c| {
        vouched_seq(c, &p1.id) == Some(25) && vouched_seq(c, &p2.id) == Some(15)
    });
    today.proc.terminate();
    let (code, out) = verify_against(&db, &dirs[2], &file);
    assert_eq!(
        code, 0,
        "the untouched store fails against its checkpoints:\n{out}"
    );

    // The insider cuts p1's tail after the checkpoint and puts back the head it signed before:
    // the store is consistent in itself, so verify alone passes it; the checkpoints do not.
    let mut parts = old_head.split(',');
    let (last, hash, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    assert_eq!(last, "15");
    db.query(&format!(
        "BEGIN;
         DELETE FROM events WHERE agent_no = (SELECT no FROM agents WHERE id = '{id}') AND seq > {last};
         DELETE FROM batches WHERE agent_no = (SELECT no FROM agents WHERE id = '{id}') AND last_seq > {last};
         UPDATE agents SET last_seq = {last}, head_hash = '\\x{hash}', head_signature = '\\x{signature}'
         WHERE id = '{id}';
         COMMIT;",
        id = p1.id
    ));
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 0, "the store alone should look whole here:\n{out}");
    let (code, out) = verify_against(&db, &dirs[2], &file);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "agent {}: its recorded head (15) is behind",
            p1.id
        )) && out.contains(&format!("agent {} event 25: the checkpoint of", p1.id))
            && out.contains("the chain was cut"),
        "{out}"
    );

    // The insider drops the middle day: p2 loses events no retention mark explains.
    db.query(&format!(
        "DROP TABLE {}; DROP TABLE {middle}",
        middle.replace("batches_", "events_")
    ));
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("agent {} event 6: removed from the store", p2.id)),
        "{out}"
    );
    let (code, out) = verify_against(&db, &dirs[2], &file);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("agent {} event 6: removed from the store", p2.id)),
        "{out}"
    );
}

#[test]
fn retention_keeps_a_day_until_its_held_batch_commits_and_detection_has_read_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 3);
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let spec = format!("ingest.before_commit:hold:{}", hold.display());
    // Two collectors whose clocks say three days ago: H holds every batch before its commit
    // while the file exists, F does not.
    let held = start(
        &dirs[0],
        &db,
        None,
        &[("BANNIN_FAILPOINT", &spec), (SHIFT, "-3d")],
    );
    let free = start(&dirs[1], &db, None, &[(SHIFT, "-3d")]);
    let rt = runtime();
    let mut x = rt.block_on(SimAgent::enroll(&free, "pcx"));
    let mut y = rt.block_on(SimAgent::enroll(&free, "pcy"));
    let t = Timestamp::now();
    let lifecycle = |path: &str| {
        vec![
            (t, export(FileAction::Create, path)),
            (
                t.saturating_add(Duration::from_secs(5)),
                export(FileAction::Delete, path),
            ),
        ]
    };
    // X's export is created and deleted in one batch through H, and waits there uncommitted.
    rt.block_on(x.connect_to(&held));
    let (x_batch, _) = x.batch_at(
        x.next_seq,
        x.head,
        x.stamped(lifecycle("/home/x/x.csv")),
        &x.key.clone(),
    );
    let mut x_ingest = x.ingest.clone();
    let x_send = rt.spawn(async move { x_ingest.submit(x_batch).await });
    wait_for("the held transaction", LONG, || {
        open_writers(&db).into_iter().next()
    });
    // Y's goes through F and commits, after X's transaction began: detection waits behind X.
    rt.block_on(y.submit_bodies(lifecycle("/home/y/y.csv")))
        .unwrap();
    let day = batch_partitions(&db, &y.id).pop().unwrap();

    // A collector of today keeping one day: that day is past its cutoff.
    let config = tmp.path().join("today.toml");
    private_file(&config, "[retention]\ndays = 1\ncheck_every = \"1s\"\n");
    let mut today = start(&dirs[2], &db, Some(&config), &[]);
    today
        .proc
        .wait_line("waits for detection to read everything it holds", LONG);
    let rounds = log_count(&today, "waits for detection");
    wait_for("another round of retention", LONG, || {
        (log_count(&today, "waits for detection") > rounds).then_some(())
    });
    assert!(exists(&db, &day), "{day} dropped before detection read it");
    assert_eq!(seqs(&db, &y.id), [1, 2]);
    assert!(alerts(&db).is_empty());
    assert_eq!(log_count(&today, "retention deleted old events"), 0);

    // X's transaction commits: detection reads both batches, then retention drops the day.
    std::fs::remove_file(&hold).unwrap();
    let ack = rt.block_on(x_send).unwrap().unwrap().into_inner();
    assert_eq!(ack.committed_through, 2);
    today.proc.wait_line("retention deleted old events", LONG);
    assert!(!exists(&db, &day));
    assert!(events(&db).is_empty());
    // Each export raised its alert once: nothing was dropped unread.
    let mut paths: Vec<String> = alerts(&db)
        .iter()
        .map(|a| a["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/home/x/x.csv", "/home/y/y.csv"]);
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 0, "{out}");
    for agent in [&x.id, &y.id] {
        assert!(
            out.contains(&format!("agent {agent} events 1..=2: deleted by retention")),
            "{out}"
        );
    }
}

/// Collectors' clocks disagree: an agent's first batch lands in a younger day than its second.
/// Dropping the older day alone would cut the chain's middle out, so retention keeps it until
/// the younger day can go with it.
#[test]
fn a_day_holding_a_later_batch_than_a_younger_day_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 3);
    let rt = runtime();
    let mut two_ago = start(&dirs[0], &db, None, &[(SHIFT, "-2d")]);
    let mut p = rt.block_on(SimAgent::enroll(&two_ago, "skewed"));
    let beats = |from: u64| {
        (from..from + 3)
            .map(|n| (Timestamp::now(), status(n)))
            .collect()
    };
    rt.block_on(p.submit_bodies(beats(0))).unwrap();
    two_ago.proc.terminate();
    let mut three_ago = start(&dirs[1], &db, None, &[(SHIFT, "-3d")]);
    rt.block_on(p.connect_to(&three_ago));
    rt.block_on(p.submit_bodies(beats(3))).unwrap();
    three_ago.proc.terminate();
    let days = batch_partitions(&db, &p.id);
    assert_eq!(days.len(), 2, "{days:?}");
    let (older, younger) = (days[0].clone(), days[1].clone());
    // The older day holds seq 4..=6, the younger 1..=3.
    assert_eq!(
        db.query(&format!("SELECT first_seq FROM {older}")),
        "4",
        "{days:?}"
    );

    // Keeping two days: only the older day is past the cutoff, and it cannot go alone.
    let config = tmp.path().join("two.toml");
    private_file(&config, "[retention]\ndays = 2\ncheck_every = \"1s\"\n");
    let mut keeper = start(&dirs[2], &db, Some(&config), &[]);
    keeper.proc.wait_line(
        &format!(
            "holds batches of agent {} later than some it does not hold",
            p.id
        ),
        LONG,
    );
    keeper.proc.terminate();
    assert!(exists(&db, &older) && exists(&db, &younger));
    assert_eq!(seqs(&db, &p.id), (1..=6).collect::<Vec<_>>());
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 0, "{out}");

    // Keeping one day: both days are past the cutoff and go together.
    private_file(&config, "[retention]\ndays = 1\ncheck_every = \"1s\"\n");
    let mut keeper = start(&dirs[2], &db, Some(&config), &[]);
    keeper.proc.wait_line("retention deleted old events", LONG);
    assert!(!exists(&db, &older) && !exists(&db, &younger));
    assert!(seqs(&db, &p.id).is_empty());
    let (code, out) = verify(&db, &dirs[2]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "agent {} events 1..=6: deleted by retention",
            p.id
        )),
        "{out}"
    );
}

/// The only batch of an old day is still uncommitted, so nothing visible keeps the day: the drop's
/// exclusive lock waits for the writer instead, gives up, and the day goes only after the batch
/// committed and detection read it.
#[test]
fn retention_waits_out_an_uncommitted_batch_it_cannot_see() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dirs = shared_dirs(tmp.path(), &db, 2);
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let spec = format!("ingest.before_commit:hold:{}", hold.display());
    let held = start(
        &dirs[0],
        &db,
        None,
        &[("BANNIN_FAILPOINT", &spec), (SHIFT, "-3d")],
    );
    let rt = runtime();
    let x = rt.block_on(SimAgent::enroll(&held, "pcx"));
    let t = Timestamp::now();
    let (batch, _) = x.batch_at(
        x.next_seq,
        x.head,
        x.stamped(vec![
            (t, export(FileAction::Create, "/home/x/x.csv")),
            (
                t.saturating_add(Duration::from_secs(5)),
                export(FileAction::Delete, "/home/x/x.csv"),
            ),
        ]),
        &x.key.clone(),
    );
    let mut ingest = x.ingest.clone();
    let send = rt.spawn(async move { ingest.submit(batch).await });
    wait_for("the held transaction", LONG, || {
        open_writers(&db).into_iter().next()
    });
    // The oldest day partition: H made the three days before today's, the first collector today's.
    let day = db.query(
        "SELECT relname FROM pg_class WHERE relname ~ '^batches_d[0-9]+$'
         ORDER BY substr(relname, 10)::bigint LIMIT 1",
    );
    assert!(exists(&db, &day), "{day}");

    let config = tmp.path().join("today.toml");
    private_file(&config, "[retention]\ndays = 1\ncheck_every = \"1s\"\n");
    let mut today = start(&dirs[1], &db, Some(&config), &[]);
    today
        .proc
        .wait_line("ingest kept the tables busy; trying again later", LONG);
    assert!(exists(&db, &day), "{day} dropped under an open transaction");
    assert_eq!(log_count(&today, "retention deleted old events"), 0);

    std::fs::remove_file(&hold).unwrap();
    let ack = rt.block_on(send).unwrap().unwrap().into_inner();
    assert_eq!(ack.committed_through, 2);
    today.proc.wait_line("retention deleted old events", LONG);
    assert!(!exists(&db, &day));
    let got = alerts(&db);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["path"], "/home/x/x.csv");
    let (code, out) = verify(&db, &dirs[1]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "agent {} events 1..=2: deleted by retention",
            x.id
        )),
        "{out}"
    );
}
