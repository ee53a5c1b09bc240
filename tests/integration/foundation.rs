//! Issue 2: enrolled agents stream signed, hash-chained events over mutual TLS into SQLite, losing
//! nothing, storing nothing twice, and refusing what is not theirs.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const LONG: Duration = Duration::from_secs(60);

fn write_files(dir: &Path, prefix: &str, count: usize) {
    // A separate process writes the files, as a user's program would.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while [ $i -lt {count} ]; do echo row-$i > {}/{prefix}$i.txt; i=$((i+1)); done",
            dir.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

fn created_paths(events: &[serde_json::Value]) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "file.create")
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

fn wait_for_paths(collector: &Collector, dir: &Path, prefix: &str, count: usize) {
    let expected: HashSet<String> = (0..count)
        .map(|i| dir.join(format!("{prefix}{i}.txt")).display().to_string())
        .collect();
    wait_for(&format!("{count} {prefix} files stored"), LONG, || {
        let seen = created_paths(&collector.events(&["--kind", "file.create"]));
        expected.is_subset(&seen).then_some(())
    });
}

#[test]
fn enrolled_agent_streams_file_events_queryable_as_json() {
    let Site {
        tmp,
        watched,
        collector,
        state,
    } = Site::new("web1", "exports");
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "[files]\nexclude = [\"**/*.swp\"]\n").unwrap();
    set_mode(&config, 0o600);
    let _agent = Agent::start(
        &state,
        &[
            "--watch",
            watched.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let file = watched.join("customers.csv");
    std::fs::write(&file, "id,email\n1,a@example.jp\n").unwrap();
    std::fs::remove_file(&file).unwrap();

    let path = file.display().to_string();
    let events = wait_for(&format!("create and delete of {path} stored"), LONG, || {
        let events = collector.events(&["--path", &path]);
        let kinds: Vec<_> = events
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        (kinds.contains(&"file.create".to_string()) && kinds.contains(&"file.delete".to_string()))
            .then_some(events)
    });
    let id = agent_id(&state);
    for event in &events {
        assert_eq!(event["agent_id"], id.as_str());
        assert_eq!(event["host"], "web1");
        assert_eq!(event["path"], path.as_str());
        assert!(event["seq"].as_u64().unwrap() >= 1);
        let ts = event["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == 30,
            "ts with nanoseconds: {ts}"
        );
    }
    let delete = events.iter().find(|e| e["kind"] == "file.delete").unwrap();
    assert_eq!(delete["size"], 24, "a delete carries the last size seen");
    // Filters narrow: no file events under another host's name.
    assert!(
        collector
            .events(&["--host", "db9", "--kind", "file.*"])
            .is_empty()
    );
    assert!(verify(&collector.dir).0);
}

/// A section only its sensor can judge (a `[network] interval` too short, an exclude glob that
/// does not compile, a PostgreSQL database with a MariaDB slow log, a process poll too fast) is
/// refused when the configuration is loaded: one line naming the file and the key, exit 2, and
/// nothing started, so the enrolled state directory has no spool yet.
#[test]
fn a_sensor_section_that_cannot_work_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, "cfg2");
    let cases = [
        (
            "[network]\ninterval = \"10ms\"\n",
            "[network] interval must be at least 100ms",
        ),
        (
            "[files]\nexclude = [\"**/*.swp\", \"[unclosed\"]\n",
            "[files] invalid exclude glob \"[unclosed\"",
        ),
        (
            "[[database]]\nkind = \"postgresql\"\nlog = \"/srv/pg\"\nslow_log = \"/srv/slow.log\"\n",
            "database postgresql:/srv/pg: slow_log is for mariadb only",
        ),
        (
            "[process]\npoll_interval = \"10ms\"\n",
            "[process] poll_interval must be at least 100ms",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("sensor{i}.toml"));
        std::fs::write(&path, text).unwrap();
        set_mode(&path, 0o600);
        let out = run_output(
            Command::new(AGENT)
                .args(["run", "--state-dir"])
                .arg(&state)
                .arg("--config")
                .arg(&path),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "case {i}, one line: {stderr}"
        );
        assert!(stderr.contains(needle), "case {i}: {stderr}");
        assert!(
            stderr.contains(path.to_str().unwrap()),
            "case {i}: {stderr}"
        );
        assert!(
            !state.join("spool.db").exists(),
            "case {i}: the spool was opened before the configuration was refused"
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn bad_configuration_is_refused_in_one_line_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let state = tmp.path().join("agent");
    collector.enroll(&state, "cfg1");
    let cases = [
        ("[files]\nwatch = [\"/tmp\"]\nbogus = 1\n", 0o600, "bogus"),
        ("[spool]\nmax_bytes = \"lots\"\n", 0o600, "max_bytes"),
        (
            "[agent]\nheartbeat = \"15s\"\n",
            0o666,
            "writable by group or others",
        ),
    ];
    for (i, (text, mode, needle)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        set_mode(&path, *mode);
        let out = run_output(
            Command::new(AGENT)
                .args(["run", "--state-dir"])
                .arg(&state)
                .arg("--config")
                .arg(&path),
        );
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "case {i}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = 5\n").unwrap();
    set_mode(&path, 0o600);
    let out = run_output(
        Command::new(COLLECTOR)
            .args(["serve", "--data-dir"])
            .arg(tmp.path().join("c2"))
            .arg("--config")
            .arg(&path),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[test]
fn collector_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let Site {
        tmp: _tmp,
        watched,
        mut collector,
        state,
    } = Site::new("app1", "w");
    let _agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);

    let writer = {
        let watched = watched.clone();
        std::thread::spawn(move || write_files(&watched, "a", 3000))
    };
    // Kill the collector once part of the stream has been committed.
    wait_for("the stream to be under way", LONG, || {
        (collector.events(&["--kind", "file.create"]).len() > 200).then_some(())
    });
    collector.proc.kill9();
    writer.join().unwrap();
    collector.restart();
    wait_for_paths(&collector, &watched, "a", 3000);

    let events = collector.events(&[]);
    assert_contiguous(&events, &agent_id(&state));
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
}

#[test]
fn agent_killed_and_restarted_continues_its_chain_without_gaps() {
    let Site {
        tmp: _tmp,
        watched,
        collector,
        state,
    } = Site::new("app2", "w");
    let mut agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    write_files(&watched, "b", 1500);
    wait_for("some events stored", LONG, || {
        (collector.events(&["--kind", "file.create"]).len() > 100).then_some(())
    });
    agent.proc.kill9();
    agent.restart();
    write_files(&watched, "c", 1500);
    wait_for_paths(&collector, &watched, "c", 1500);
    let events = collector.events(&[]);
    let n = assert_contiguous(&events, &agent_id(&state));
    let starts = events.iter().filter(|e| e["kind"] == "agent.start").count();
    assert_eq!(starts, 2, "one agent.start per run");
    assert!(n > 1500);
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
}

/// An enrolled agent named `name` watching a site's directory, past its `agent.start`; then the
/// collector is killed and `count` files named after `prefix` are written, which the agent keeps
/// in its spool while nobody listens (it has said a batch was not delivered).
fn spooled_while_the_collector_is_down(name: &str, prefix: &str, count: usize) -> (Site, Agent) {
    let mut site = Site::new(name, "w");
    let agent = Agent::start(&site.state, &["--watch", site.watched.to_str().unwrap()]);
    wait_for("agent.start stored", LONG, || {
        (!site.collector.events(&["--kind", "agent.start"]).is_empty()).then_some(())
    });
    site.collector.proc.kill9();
    write_files(&site.watched, prefix, count);
    wait_for("events spooled", LONG, || {
        agent.proc.has_line("batch not delivered").then_some(())
    });
    (site, agent)
}

#[test]
fn events_made_while_the_collector_is_down_wait_in_the_spool() {
    let (site, _agent) = spooled_while_the_collector_is_down("app3", "d", 1000);
    let Site {
        tmp: _tmp,
        watched,
        mut collector,
        state,
    } = site;
    collector.restart();
    wait_for_paths(&collector, &watched, "d", 1000);
    assert_contiguous(&collector.events(&[]), &agent_id(&state));
}

/// Someone who can write the agent's state directory damages the oldest run of spooled events
/// while the collector is away. The agent drops that run, names it in an `agent.dropped`, and
/// sends everything after it: the stream does not stop at the damage, and `verify` explains the
/// gap.
#[test]
fn a_damaged_run_in_the_spool_is_named_and_the_rest_still_arrives() {
    damaged_run_is_named("app9", "the spool held damaged events", |conn, first| {
        conn.execute(
            "UPDATE runs SET events = X'ff00000001' WHERE first_seq = ?1",
            [first],
        )
        .unwrap();
    });
}

/// The same with the run's framing left whole and one byte of its events changed: the agent
/// reads and sends it, the collector refuses it (its hashes no longer match), and the agent then
/// finds the run that does not hold together and drops and names it, instead of sending the same
/// refused batch without end.
#[test]
fn a_run_changed_in_place_is_named_once_the_collector_refuses_it() {
    damaged_run_is_named(
        "app10",
        "the collector refused a batch the spool had damaged",
        |conn, first| {
            let mut blob: Vec<u8> = conn
                .query_row(
                    "SELECT events FROM runs WHERE first_seq = ?1",
                    [first],
                    |r| r.get(0),
                )
                .unwrap();
            *blob.last_mut().unwrap() ^= 0x01;
            conn.execute(
                "UPDATE runs SET events = ?1 WHERE first_seq = ?2",
                rusqlite::params![blob, first],
            )
            .unwrap();
        },
    );
}

/// Damages the oldest spooled run (`damage` gets its first seq) while the collector is away, then
/// checks that the run is named in an `agent.dropped`, that `line` is in the agent's log, that
/// events after it arrive and that the store verifies.
fn damaged_run_is_named(name: &str, line: &str, damage: impl Fn(&rusqlite::Connection, i64)) {
    let (site, agent) = spooled_while_the_collector_is_down(name, "g", 200);
    let Site {
        tmp: _tmp,
        watched,
        mut collector,
        state,
    } = site;
    let conn = rusqlite::Connection::open(state.join("spool.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let (first, last): (i64, i64) = conn
        .query_row(
            "SELECT first_seq, last_seq FROM runs ORDER BY first_seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    damage(&conn, first);
    drop(conn);
    collector.restart();
    let named = damage_named_after_a_marker(&collector, &agent, &watched, first, last);
    assert_eq!(named["dropped"].as_u64(), Some((last - first + 1) as u64));
    assert!(agent.proc.has_line(line), "{}", agent.proc.log());
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
}

/// Writes a file after a run was damaged and waits until the collector stores it (so the agent
/// got past the damage), then returns the `agent.dropped` that names seqs `first..=last`, which
/// must say they were damaged.
fn damage_named_after_a_marker(
    collector: &Collector,
    agent: &Agent,
    watched: &Path,
    first: i64,
    last: i64,
) -> serde_json::Value {
    let marker = watched.join("after-the-damage.txt");
    std::fs::write(&marker, b"x").unwrap();
    wait_for_explained(
        "the marker stored",
        LONG,
        || {
            (!collector
                .events(&["--path", marker.to_str().unwrap()])
                .is_empty())
            .then_some(())
        },
        || format!("agent log:\n{}", agent.proc.log()),
    );
    let named = collector
        .events(&["--kind", "agent.dropped"])
        .into_iter()
        .find(|notice| {
            notice["first_dropped_seq"].as_u64() == Some(first as u64)
                && notice["last_dropped_seq"].as_u64() == Some(last as u64)
        })
        .unwrap_or_else(|| panic!("no agent.dropped names {first}..={last}"));
    assert!(
        named["message"].as_str().unwrap().contains("damaged"),
        "{named}"
    );
    named
}

#[test]
fn verify_names_rows_edited_deleted_or_swapped_in_the_database() {
    let Site {
        tmp,
        watched,
        collector,
        state,
    } = Site::new("app4", "w");
    let agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    write_files(&watched, "e", 30);
    wait_for_paths(&collector, &watched, "e", 30);
    drop(agent);
    let mut collector = collector;
    collector.proc.terminate();
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "untouched store verifies: {report}");

    let db = collector.dir.join("bannin.db");
    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&db, dir.join("bannin.db")).unwrap();
        // The write-ahead log holds what was not checkpointed yet.
        for suffix in ["-wal", "-shm"] {
            let side = collector.dir.join(format!("bannin.db{suffix}"));
            if side.exists() {
                std::fs::copy(&side, dir.join(format!("bannin.db{suffix}"))).unwrap();
            }
        }
        let conn = rusqlite::Connection::open(dir.join("bannin.db")).unwrap();
        (dir, conn)
    };

    // Edited: a path rewritten in the payload.
    let (dir, conn) = copy("edited");
    let payload: Vec<u8> = conn
        .query_row("SELECT payload FROM events WHERE seq = 5", [], |r| r.get(0))
        .unwrap();
    let mut event = bannin::proto::decode_event(&payload).unwrap();
    event.host = "elsewhere".into();
    conn.execute(
        "UPDATE events SET payload = ?1 WHERE seq = 5",
        [bannin::proto::encode_event(&event)],
    )
    .unwrap();
    drop(conn);
    let (ok, report) = verify(&dir);
    assert!(!ok);
    assert!(report.contains("event 5:"), "{report}");

    // Deleted: a row removed.
    let (dir, conn) = copy("deleted");
    conn.execute("DELETE FROM events WHERE seq = 7", [])
        .unwrap();
    drop(conn);
    let (ok, report) = verify(&dir);
    assert!(!ok);
    assert!(report.contains("event 7:"), "{report}");

    // Swapped: two rows exchange places.
    let (dir, conn) = copy("swapped");
    conn.execute_batch(
        "UPDATE events SET seq = -1 WHERE seq = 10;
         UPDATE events SET seq = 10 WHERE seq = 11;
         UPDATE events SET seq = 11 WHERE seq = -1;",
    )
    .unwrap();
    drop(conn);
    let (ok, report) = verify(&dir);
    assert!(!ok);
    assert!(
        report.contains("event 10:") && report.contains("event 11:"),
        "{report}"
    );
}

#[test]
fn quickstart_runs_a_collector_and_an_enrolled_local_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("w");
    std::fs::create_dir(&watched).unwrap();
    let data = tmp.path().join("demo");
    let mut command = Command::new(COLLECTOR);
    command
        .arg("quickstart")
        .arg("--data-dir")
        .arg(&data)
        .arg("--watch")
        .arg(&watched);
    let mut quickstart = Proc::spawn("quickstart", &mut command);
    quickstart.wait_line("bannin quickstart: collector on", LONG);
    quickstart.wait_line("agent.start", LONG);
    let file = watched.join("hello.csv");
    std::fs::write(&file, "id,email\n1,a@example.jp\n").unwrap();
    quickstart.wait_line(&file.display().to_string(), LONG);
    // What it printed is what the store holds, and the store verifies.
    let stored = events_json(&data, &["--kind", "file.*"]);
    assert!(
        stored
            .iter()
            .any(|e| e["path"] == file.display().to_string())
    );
    quickstart.terminate();
    let (ok, report) = verify(&data);
    assert!(ok, "{report}");
}

/// An enrolled agent named `name` watching a site's directory with a 1 MiB spool (file events
/// only), past its `agent.start`, and the site's collector then killed: what the agent sees from
/// here on waits in, and overflows, its spool.
fn tight_spool_without_collector(name: &str) -> (Site, Agent) {
    let mut site = Site::new(name, "w");
    let config = site.tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        "[spool]\nmax_bytes = 1048576\n\n[process]\nenabled = false\n\n[network]\nenabled = false\n",
    )
    .unwrap();
    set_mode(&config, 0o600);
    let agent = Agent::start(
        &site.state,
        &[
            "--watch",
            site.watched.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    wait_for("agent.start stored", LONG, || {
        (!site.collector.events(&["--kind", "agent.start"]).is_empty()).then_some(())
    });
    site.collector.proc.kill9();
    (site, agent)
}

/// The spool stays at its bound through dozens of drops while the collector is away, so later
/// drops reach the notices of earlier ones. Those notices used to go with the events around them:
/// the collector then saw the gaps but never the agent's count of what it dropped. Now each such
/// notice is written again at the end of the spool, and every dropped event is accounted for.
#[test]
fn drops_upon_drops_keep_every_notice_and_the_store_verifies() {
    let (
        Site {
            // Held to the end: the site's files go with it.
            tmp: _tmp,
            watched,
            mut collector,
            ..
        },
        agent,
    ) = tight_spool_without_collector("tight2");
    // Each drop frees a tenth of the bound; the first notice is reached some ten drops later.
    let mut batch = 0;
    wait_for("twenty drops", LONG, || {
        write_files(&watched, &format!("b{batch}-"), 1000);
        batch += 1;
        (agent.proc.log().matches("spool full").count() >= 20).then_some(())
    });
    collector.restart();
    // Written after every drop: once it is stored, so is everything spooled before it.
    let marker = watched.join("after-the-collector-returned.txt");
    std::fs::write(&marker, b"x").unwrap();
    crate::harness::wait_for_explained(
        "the marker stored",
        LONG,
        || {
            (!collector
                .events(&["--path", marker.to_str().unwrap()])
                .is_empty())
            .then_some(())
        },
        || {
            format!(
                "agent log:\n{}\ncollector log:\n{}",
                agent.proc.log(),
                collector.proc.log()
            )
        },
    );
    // What the agent logged it dropped, run by run, against what the collector was told. Waited
    // on: the marker's own events (its create, then its write) may come in appends after the one
    // the wait above saw stored, and a drop there is told by a notice after them.
    let logged_drops = || -> u64 {
        agent
            .proc
            .log()
            .lines()
            .filter(|l| l.contains("spool full"))
            .filter_map(|l| {
                l.split("dropped=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let reported_drops = || -> u64 {
        let mut reported = 0;
        for notice in collector.events(&["--kind", "agent.dropped"]) {
            let (first, last) = (
                notice["first_dropped_seq"].as_u64().unwrap(),
                notice["last_dropped_seq"].as_u64().unwrap(),
            );
            let dropped = notice["dropped"].as_u64().unwrap();
            assert_eq!(dropped, last - first + 1, "{notice}");
            reported += dropped;
        }
        reported
    };
    let settled = crate::harness::poll(LONG, || {
        let logged = logged_drops();
        (logged > 0 && reported_drops() == logged).then_some(())
    });
    assert!(
        settled.is_some(),
        "dropped events the collector was told of: {}, logged: {}\nagent log:\n{}\ncollector's notices:\n{:#?}",
        reported_drops(),
        logged_drops(),
        agent.proc.log(),
        collector.events(&["--kind", "agent.dropped"])
    );
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
}

#[test]
fn a_full_spool_drops_the_oldest_reports_it_and_the_store_still_verifies() {
    let (
        Site {
            tmp: _tmp,
            watched,
            mut collector,
            state,
        },
        agent,
    ) = tight_spool_without_collector("tight1");
    // With the collector away, far more than a megabyte of events piles up in the spool.
    write_files(&watched, "f", 4000);
    wait_for("the spool to overflow", LONG, || {
        agent.proc.has_line("spool full").then_some(())
    });
    collector.restart();
    let dropped = wait_for("agent.dropped stored", LONG, || {
        collector
            .events(&["--kind", "agent.dropped"])
            .into_iter()
            .next()
    });
    let (first, last) = (
        dropped["first_dropped_seq"].as_u64().unwrap(),
        dropped["last_dropped_seq"].as_u64().unwrap(),
    );
    assert!(
        dropped["dropped"].as_u64().unwrap() == last - first + 1,
        "{dropped}"
    );
    // What was dropped is missing, named, and explained; everything else is stored once.
    let events = collector.events(&[]);
    let id = agent_id(&state);
    let seqs: HashSet<u64> = events
        .iter()
        .filter(|e| e["agent_id"] == id.as_str())
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!((first..=last).all(|s| !seqs.contains(&s)));
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
    assert!(report.contains("never stored"), "{report}");
    let alerts = wait_for("the loss raised as an alert", LONG, || {
        let alerts = alerts_json(&collector.dir, &[]);
        alerts
            .iter()
            .any(|a| a["rule"] == "agent-dropped-events")
            .then_some(alerts)
    });
    assert!(alerts.iter().any(|a| a["host"] == "tight1"));
}

/// A real agent sends its spool's packed runs once the collector has said it takes them: its first
/// batch goes as events, later ones as runs, counted by the collector's metrics. Everything
/// arrives, once, in an unbroken chain that `verify` accepts.
#[test]
fn a_real_agent_sends_packed_runs_once_the_collector_takes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut collector = Collector::start_with(
        &tmp.path().join("c"),
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = collector
        .proc
        .wait_address("serving metrics on ", Duration::from_secs(30));
    let state = tmp.path().join("agent");
    collector.enroll(&state, "packed1");
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let _agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    write_files(&watched, "p", 300);
    wait_for_paths(&collector, &watched, "p", 300);
    // After the first acknowledgement the rest go as runs: a second burst, once the first is in.
    write_files(&watched, "q", 300);
    wait_for_paths(&collector, &watched, "q", 300);
    let packed = wait_for("a packed batch counted", LONG, || {
        let (_, text) = http_get(&metrics, "/metrics");
        let value = text.lines().find_map(|line| {
            line.strip_prefix("bannin_ingest_batches_packed_total ")?
                .trim()
                .parse::<f64>()
                .ok()
        });
        value.filter(|&n| n >= 1.0)
    });
    assert!(packed >= 1.0);
    assert_contiguous(&collector.events(&[]), &agent_id(&state));
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
}

/// Bytes the kernel holds unread for the IPv4 TCP sockets on local `port` (their receive queues).
fn unread_by(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let rx = fields.get(4)?.split(':').nth(1)?;
            (local_port == port).then(|| u64::from_str_radix(rx, 16).ok())?
        })
        .sum()
}

/// The same damage to a run that the agent sends packed: a collector that takes runs refuses the
/// batch of runs, the agent sends those events again as events, and once they are refused too it
/// finds the run that does not hold together, drops it and names it. The collector is stopped
/// (not killed) while the run is damaged, so the agent's connection, and with it its knowledge
/// that the collector takes runs, survives.
#[test]
fn a_damaged_run_sent_packed_is_named_once_the_collector_refuses_it() {
    use nix::sys::signal::{Signal, kill};
    let Site {
        tmp: _tmp,
        watched,
        collector,
        state,
    } = Site::new("app11", "w");
    let agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    let conn = rusqlite::Connection::open(state.join("spool.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let spooled = || -> i64 {
        conn.query_row(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM runs",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    write_files(&watched, "h", 20);
    wait_for_paths(&collector, &watched, "h", 20);
    // Every acknowledgement in: none is left for the stopped collector to owe.
    wait_for("an empty spool", LONG, || (spooled() == 0).then_some(()));
    let pid = nix::unistd::Pid::from_raw(collector.proc.child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // A batch goes out and waits, unread, on the stopped collector; the next events stay in the
    // spool behind it.
    write_files(&watched, "i", 1);
    let port: u16 = collector.addr.rsplit(':').next().unwrap().parse().unwrap();
    wait_for(
        "a batch waiting unread at the stopped collector",
        LONG,
        || (unread_by(port) > 0).then_some(()),
    );
    write_files(&watched, "j", 200);
    let (mut last_count, mut same) = (0, 0);
    wait_for(
        "the j files' events in the spool, no more coming",
        LONG,
        || {
            let now = spooled();
            same = if now == last_count { same + 1 } else { 0 };
            last_count = now;
            (now >= 200 && same >= 6).then_some(())
        },
    );
    // The newest run: one byte of its last event changed, its packing still whole.
    let (first, last, mut blob): (i64, i64, Vec<u8>) = conn
        .query_row(
            "SELECT first_seq, last_seq, events FROM runs WHERE packed ORDER BY first_seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    *blob.last_mut().unwrap() ^= 0x01;
    conn.execute(
        "UPDATE runs SET events = ?1 WHERE first_seq = ?2",
        rusqlite::params![blob, first],
    )
    .unwrap();
    drop(conn);
    kill(pid, Signal::SIGCONT).unwrap();

    damage_named_after_a_marker(&collector, &agent, &watched, first, last);
    let log = agent.proc.log();
    assert!(
        log.contains("did not take a batch of packed runs"),
        "the damaged run was never sent packed:\n{log}"
    );
    assert!(
        log.contains("the collector refused a batch the spool had damaged"),
        "{log}"
    );
    let (ok, report) = verify(&collector.dir);
    assert!(ok, "{report}");
}
