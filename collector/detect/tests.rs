//! The engine's own behaviour across detectors: a replay after a restart rebuilds state without
//! alerting, and the caps hold under floods with every loss reported. Each rule and detector is
//! tested beside its own code.

use crate::detect::testkit::*;

// ---------------------------------------------------------------------------------------------
// Restart: replay rebuilds state without alerting

#[test]
fn the_replay_window_is_the_longest_detector_window_or_correlation_timespan() {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let engine = Engine::new(&DetectConfig::default()).unwrap();
    // export_window, longer than bulk_then_export_window (6h), bulk_read_window and silence.
    assert_eq!(engine.replay_window(), hours(24));
    // Only first-seen needs what came before the window.
    assert_eq!(engine.replay_history(), vec!["net.connect"]);
    let mut config = DetectConfig::default();
    config.thresholds.bulk_then_export_window = hours(48);
    assert_eq!(Engine::new(&config).unwrap().replay_window(), hours(48));
    config.thresholds.agent_silent_after = hours(72);
    assert_eq!(Engine::new(&config).unwrap().replay_window(), hours(72));
    config.disabled = vec!["first-seen-public-destination".into()];
    assert!(Engine::new(&config).unwrap().replay_history().is_empty());
}

#[test]
fn replay_rebuilds_state_so_a_delete_after_restart_still_alerts() {
    let mut before = Fleet::default();
    let who = attacker();
    let payload = process(8002, "/usr/bin/curl", "sato", &["/usr/bin/bash"]);
    let history = vec![
        before.record(
            "fs2",
            0,
            file(FileAction::Create, "/srv/share/c.csv", Some(0), None, &who),
        ),
        before.record(
            "fs2",
            10,
            file(
                FileAction::Write,
                "/srv/share/c.csv",
                Some(64 * MIB),
                Some(csv(1)),
                &who,
            ),
        ),
        before.record("pc7", 20, connect("203.0.113.50", "public", &payload)),
        // A pair entirely before the restart was alerted then; replay must not raise it again.
        before.record(
            "fs2",
            30,
            file(FileAction::Create, "/srv/share/d.csv", Some(0), None, &who),
        ),
        before.record(
            "fs2",
            31,
            file(
                FileAction::Write,
                "/srv/share/d.csv",
                Some(64 * MIB),
                Some(csv(1)),
                &who,
            ),
        ),
        before.record(
            "fs2",
            32,
            file(
                FileAction::Delete,
                "/srv/share/d.csv",
                Some(64 * MIB),
                None,
                &who,
            ),
        ),
        before.record(
            "db1",
            40,
            query("sales_app", "s", 20_000, Some(20_000), Some(20_000)),
        ),
    ];

    let mut after = Fleet::default();
    after.seq = before.seq.clone();
    after.engine.replay(&history);
    let mut updates = Vec::new();
    updates.extend(after.send("pc7", 3600, connect("203.0.113.50", "public", &payload)));
    updates.extend(after.send(
        "fs2",
        3600,
        file(
            FileAction::Delete,
            "/srv/share/c.csv",
            Some(64 * MIB),
            None,
            &who,
        ),
    ));
    let rules = rules_of(&updates);
    assert_eq!(rules, vec!["large-export-created-then-deleted"]);
    let alert = new_alerts(&updates)[0];
    assert_eq!(alert.fields["created_ts"], at(0).to_rfc3339());
    assert_eq!(alert.evidence.first().map(|e| e.seq), Some(1));

    // Without the replay the delete is of a file never seen, and nothing links it.
    let mut cold = Fleet::default();
    assert!(
        cold.send(
            "fs2",
            3600,
            file(
                FileAction::Delete,
                "/srv/share/c.csv",
                Some(64 * MIB),
                None,
                &who
            )
        )
        .is_empty()
    );
}

#[test]
fn replayed_bulk_read_links_to_an_export_after_restart() {
    let mut before = Fleet::default();
    let history = vec![before.record(
        "db1",
        0,
        query("sales_app", "s", 20_000, Some(20_000), Some(20_000)),
    )];
    let mut after = Fleet::default();
    after.engine.replay(&history);
    let who = attacker();
    let updates = after.send(
        "fs2",
        600,
        file(
            FileAction::Write,
            "/srv/x.csv",
            Some(100 * MIB),
            Some(csv(1)),
            &who,
        ),
    );
    assert_eq!(rules_of(&updates), vec!["bulk-read-then-export"]);
}

#[test]
fn agents_already_silent_before_a_restart_are_not_reported_again() {
    let mut before = Fleet::default();
    let history = vec![
        before.record("gone", 0, heartbeat()),
        before.record("alive", 500, heartbeat()),
    ];
    let mut after = Fleet::default();
    after.engine.replay(&history);
    // The collector comes back 10 minutes after its last event: "alive" could not talk meanwhile,
    // so its silence counts from the restart, and it is reported only if it stays away.
    let mut fired = Vec::new();
    for second in 1100..=1200 {
        fired.extend(
            new_alerts(&after.engine.tick(at(second)))
                .into_iter()
                .map(|a| (second, a.host.clone())),
        );
    }
    assert_eq!(fired, vec![(1160, "alive".to_string())]);

    // An agent that reconnects within the grace is not reported at all.
    let mut after = Fleet::default();
    after.engine.replay(&history);
    let mut quiet = Vec::new();
    for second in 1100..=1180 {
        quiet.extend(after.engine.tick(at(second)));
        if second == 1130 {
            after.send("alive", second, heartbeat());
        }
    }
    assert!(quiet.is_empty(), "{quiet:?}");
}

// ---------------------------------------------------------------------------------------------
// Bounded memory

#[test]
fn state_caps_hold_under_floods_and_evictions_are_counted() {
    let config = DetectConfig {
        limits: Limits {
            tracked_files: 100,
            per_host: 40,
            correlation_groups: 10,
            matches_per_group: 5,
            seen_destinations: 50,
            agents: 2000,
            dedup_entries: 10,
        },
        ..DetectConfig::default()
    };
    let mut fleet = Fleet::new(config);
    let who = attacker();
    // A real export on fs1, then floods from other hosts.
    fleet.send(
        "fs1",
        0,
        file(
            FileAction::Write,
            "/srv/real.csv",
            Some(64 * MIB),
            Some(csv(1_000_000)),
            &who,
        ),
    );
    for i in 0..1000 {
        // Small files take no state at all.
        fleet.send(
            "fs2",
            i,
            file(
                FileAction::Create,
                &format!("/srv/empty{i}.csv"),
                Some(0),
                None,
                &who,
            ),
        );
        // Large ones do, bounded per host.
        fleet.send(
            "fs3",
            i,
            file(
                FileAction::Write,
                &format!("/srv/big{i}.csv"),
                Some(64 * MIB),
                Some(csv(1_000_000)),
                &who,
            ),
        );
        fleet.send(
            &format!("h{i}"),
            i,
            connect(&format!("198.51.{}.{}", i / 256, i % 256), "public", &who),
        );
        fleet.send("db1", i, query(&format!("u{i}"), "s", 10, None, None));
        fleet.send("db1", i, query("one", "s", 0, None, None));
    }
    let stats = fleet.engine.stats();
    assert_eq!(stats.tracked_files, 41, "{stats:?}");
    // 960 large files of fs3 + 950 destinations + correlation groups of db1 + dedup entries +
    // matches beyond 5 in the "one" group.
    assert!(stats.evicted >= 960 + 950 + 990, "{stats:?}");

    // The next tick says so, one alert per host that lost state, naming how much.
    let updates = fleet.engine.tick(at(1001));
    let evicted: Vec<&Alert> = new_alerts(&updates)
        .into_iter()
        .filter(|a| a.rule == "detection-state-evicted")
        .collect();
    let fs3 = evicted.iter().find(|a| a.host == "fs3").expect("fs3 named");
    assert!(fs3.fields["evicted"].as_u64().unwrap() >= 960, "{fs3:?}");
    assert!(fs3.summary.contains("tracked exports"), "{}", fs3.summary);
    assert!(
        evicted.iter().all(|a| a.host != "fs1" && a.host != "fs2"),
        "{evicted:#?}"
    );
    assert!(fleet.engine.tick(at(1002)).is_empty(), "reported once");

    // The flood pushed out only its own host's state: fs1's export still alerts.
    let updates = fleet.send(
        "fs1",
        2000,
        file(
            FileAction::Delete,
            "/srv/real.csv",
            Some(64 * MIB),
            None,
            &who,
        ),
    );
    assert_eq!(
        rules_of(&updates),
        vec!["large-export-created-then-deleted"]
    );
}
