//! Rule evaluation throughput of the built-in pack on a realistic mix of events.
//!
//! `cargo bench --bench detect` prints events per second for each of five runs and their median.
//! With `BANNIN_BENCH_RULE_DIRS=DIR[:DIR...]` (Sigma rule directories, e.g. a checkout of
//! SigmaHQ's `rules/linux`, loaded as `[detection] rule_dirs`), it measures the built-in pack
//! alone and then with those rules, and prints the ratio of the medians from the same run.
//! The engine lives in the collector binary, so this bench compiles its modules directly.
#![forbid(unsafe_code)]
// Cargo builds benches with cfg(test): the engine's test module is compiled here, its tests are not
// run, and their imports look unused.
#![allow(unused_imports)]
// It measures real elapsed time: std's clock (tokio's can be paused) and sleep are right here.
#![allow(clippy::disallowed_methods)]

// The bench drives only part of the engine's interface.
#[allow(dead_code)]
#[path = "../collector/alert.rs"]
mod alert;
#[allow(dead_code)]
#[path = "../collector/detect/mod.rs"]
mod detect;
#[allow(dead_code)]
#[path = "../collector/finding.rs"]
mod finding;

use std::time::Instant;

use bannin::event::{
    AgentAction, AgentEvent, Ancestor, Body, DbAction, DbEvent, Event, ExportInfo, FileAction,
    FileEvent, NetAction, NetEvent, ProcessAction, ProcessEvent, ProcessInfo, Record,
};
use bannin::time::Timestamp;

const EVENTS: usize = 500_000;
const AGENTS: usize = 50;
const RUNS: usize = 5;

fn process(pid: u32, exe: &str, parent: &str) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid: Some(pid - 1),
        exe: exe.into(),
        cmdline: format!("{exe} --some --arguments"),
        user: "sato".into(),
        uid: Some(1000),
        ancestry: vec![
            Ancestor {
                pid: pid - 1,
                exe: parent.into(),
                cmdline: parent.into(),
                user: "sato".into(),
            },
            Ancestor {
                pid: 1,
                exe: "/usr/lib/systemd/systemd".into(),
                cmdline: "/sbin/init".into(),
                user: "root".into(),
            },
        ]
        .into(),
    }
}

fn file(action: FileAction, path: String, size: u64, who: &ProcessInfo) -> Body {
    let mut event = FileEvent::new(action, path, "fanotify");
    event.size = Some(size);
    event.process = Some(std::sync::Arc::new(who.clone()));
    event.process_known = true;
    event.into()
}

/// A day of ordinary work: builds and editors churning small files, a few small exports,
/// processes, connections to a stable set of destinations, database reads, heartbeats.
fn workload() -> Vec<Record> {
    let cc = process(900, "/usr/bin/cc", "/usr/bin/make");
    let editor = process(901, "/usr/bin/code", "/usr/bin/gnome-shell");
    let browser = process(902, "/usr/lib/firefox/firefox", "/usr/bin/gnome-shell");
    let mut records = Vec::with_capacity(EVENTS);
    let mut seqs = vec![0u64; AGENTS];
    for i in 0..EVENTS {
        let agent = i % AGENTS;
        seqs[agent] += 1;
        let host = format!("host{agent}");
        let n = i / AGENTS;
        let body: Body = match i % 20 {
            // 40 % files: build objects created, written, deleted; editor saves.
            0 => file(
                FileAction::Create,
                format!("/home/dev/proj/target/o{n}.o"),
                0,
                &cc,
            ),
            1 => file(
                FileAction::Write,
                format!("/home/dev/proj/target/o{n}.o"),
                40_960,
                &cc,
            ),
            2 => file(
                FileAction::Delete,
                format!("/home/dev/proj/target/o{}.o", n.saturating_sub(1)),
                40_960,
                &cc,
            ),
            3 => file(
                FileAction::Write,
                format!("/home/dev/notes/n{}.md", n % 100),
                2048,
                &editor,
            ),
            4 => file(
                FileAction::Rename,
                format!("/home/dev/notes/n{}.md", n % 100),
                2048,
                &editor,
            ),
            5 => {
                let mut event = FileEvent::new(
                    FileAction::Write,
                    format!("/home/dev/report{}.csv", n % 10),
                    "fanotify",
                );
                event.size = Some(200_000);
                event.export = Some(ExportInfo {
                    class: "data".into(),
                    format: "csv".into(),
                    est_rows: Some(2000),
                    sampled_bytes: 65_536,
                    emails: 10,
                    ..ExportInfo::default()
                });
                event.process = Some(std::sync::Arc::new(editor.clone()));
                event.into()
            }
            6 => file(FileAction::Create, format!("/tmp/tmp{n}"), 0, &cc),
            7 => file(FileAction::Delete, format!("/tmp/tmp{n}"), 0, &cc),
            // 20 % processes.
            8..=11 => ProcessEvent {
                action: if i % 2 == 0 {
                    ProcessAction::Start
                } else {
                    ProcessAction::Exit
                },
                process: process(
                    1000 + (n % 30_000) as u32,
                    "/usr/bin/bash",
                    "/usr/bin/gnome-terminal-server",
                ),
                cwd: "/home/dev".into(),
                start_ts: None,
                exit_code: None,
                read_bytes: None,
                write_bytes: None,
                source: "proc_connector".into(),
            }
            .into(),
            // 15 % connections: mostly to a stable set of public services, some private.
            12..=14 => NetEvent {
                action: NetAction::Connect,
                process: Some(browser.clone()),
                protocol: "tcp".into(),
                local_addr: "10.0.0.5".into(),
                local_port: 40_000,
                remote_addr: if i % 3 == 0 {
                    format!("10.0.{}.{}", n % 4, n % 250)
                } else {
                    format!("203.0.113.{}", n % 200)
                },
                remote_port: 443,
                remote_scope: if i % 3 == 0 {
                    "private".into()
                } else {
                    "public".into()
                },
                bytes_sent: Some(1200),
                bytes_received: Some(80_000),
            }
            .into(),
            // 15 % database queries, small reads of ordinary and sensitive tables.
            15..=17 => {
                let mut db = DbEvent::new(DbAction::Query, "postgresql");
                db.db_user = format!("app{}", n % 5);
                db.database = "sales".into();
                db.client_addr = "10.0.0.23".into();
                db.session = format!("s{}", n % 100);
                db.statement = "SELECT id, name FROM public.orders WHERE id = $1".into();
                db.statement_kind = "read".into();
                db.tables = vec!["public.orders".into()];
                db.rows = Some(1);
                if i % 20 == 17 {
                    db.sensitive_tables = vec!["public.customers".into()];
                    // Running totals grow by the row each query reads.
                    db.session_sensitive_rows = Some(n as u64 / 100);
                    db.user_sensitive_rows = Some(n as u64 / 5);
                }
                db.into()
            }
            // 10 % heartbeats and agent status.
            _ => AgentEvent::new(AgentAction::Heartbeat).into(),
        };
        records.push(Record {
            agent_id: format!("agent-{agent}"),
            event: Event {
                seq: seqs[agent],
                ts: Timestamp::from_nanos(1_795_219_200_000_000_000 + i as i64 * 200_000),
                host: host.into(),
                body,
            },
        });
    }
    records
}

/// Five runs over the records with this configuration: the median rate and the alert updates.
fn measure(records: &[Record], config: &detect::DetectConfig, label: &str) -> f64 {
    let mut rates = Vec::new();
    let mut alerts = 0;
    for run in 0..RUNS {
        let mut engine = match detect::Engine::new(config) {
            Ok(engine) => engine,
            Err(error) => {
                eprintln!("cannot load the rule pack: {error}");
                std::process::exit(1);
            }
        };
        let start = Instant::now();
        alerts = 0;
        for (i, record) in records.iter().enumerate() {
            alerts += engine.observe(record).len();
            if i % 5000 == 0 {
                alerts += engine.tick(record.event.ts).len();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if run == 0 {
            println!("{label}: state after one run: {:?}", engine.stats());
        }
        let rate = records.len() as f64 / secs;
        println!(
            "{label} run {run}: {} events in {secs:.3}s = {rate:.0} events/s",
            records.len()
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{label}: median {:.0} events/s over {RUNS} runs ({} events, {AGENTS} agents, {alerts} alert updates per run)",
        rates[RUNS / 2],
        records.len()
    );
    rates[RUNS / 2]
}

fn main() {
    let records = workload();
    let builtin = measure(&records, &detect::DetectConfig::default(), "built-in pack");
    let Some(dirs) = std::env::var_os("BANNIN_BENCH_RULE_DIRS") else {
        return;
    };
    let config = detect::DetectConfig {
        rule_dirs: std::env::split_paths(&dirs).collect(),
        ..detect::DetectConfig::default()
    };
    let loaded = config
        .rule_dirs
        .iter()
        .flat_map(|dir| detect::check_rules(dir, &config))
        .filter(|entry| entry.outcome.is_ok())
        .count();
    println!("rule_dirs: {loaded} Sigma rules loaded beside the pack");
    let with_dirs = measure(&records, &config, "built-in pack + rule_dirs");
    println!(
        "ratio: {:.2} of the built-in pack's rate with {loaded} more rules",
        with_dirs / builtin
    );
}
