//! The metrics endpoint of collectors on a PostgreSQL store: detection's lead and lag, seen from
//! every collector, and a listener that hostile clients cannot turn against the collector.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bannin::event::{Body, SensorEvent, SensorStatus};
use bannin::time::Timestamp;

use crate::harness::*;
use crate::pgstore::{PgDb, SHARED};
use crate::sim::SimAgent;

const LONG: Duration = Duration::from_secs(60);

/// `n` data directories under `tmp` holding the same keys, made by a first collector's start.
fn shared_dirs(tmp: &Path, url: &str, n: usize) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let first = tmp.join("c0");
    Collector::start_with(&first, "127.0.0.1:0", &["--store", url])
        .proc
        .terminate();
    let mut dirs = vec![first.clone()];
    for i in 1..n {
        let dir = tmp.join(format!("c{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for name in SHARED {
            std::fs::copy(first.join(name), dir.join(name)).unwrap();
        }
        dirs.push(dir);
    }
    dirs
}

/// A collector on the store at `url` serving metrics, and the metrics listener's address.
fn start(dir: &Path, url: &str, env: &[(&str, &str)]) -> (Collector, String) {
    let mut command = Command::new(COLLECTOR);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--store", url])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .envs(env.iter().copied());
    let mut proc = Proc::spawn("collector", &mut command);
    let metrics = address_after(
        &proc.wait_line("serving metrics on ", LONG),
        "serving metrics on ",
    );
    let addr = address_after(&proc.wait_line("listening on ", LONG), "listening on ");
    let collector = Collector {
        dir: dir.to_path_buf(),
        addr,
        proc,
        extra_args: vec!["--store".into(), url.into()],
    };
    (collector, metrics)
}

fn address_after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string()
}

/// `GET path` on its own connection: the status line's code and the body.
fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of an unlabelled series.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

fn status(n: u64) -> Body {
    SensorEvent::new(SensorStatus::Status, "sim", format!("event {n}")).into()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Transactions holding a transaction id on `pg`'s server (writers still open).
fn open_writers(pg: &Postgres) -> u64 {
    run_ok(Command::new("psql").args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
        "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
    ]))
    .trim()
    .parse()
    .unwrap()
}

/// A server of its own: the lag series measure the oldest writer on the whole server, which other
/// tests' databases on the shared one would move.
#[test]
fn every_collector_reports_detection_lag_while_a_batch_is_held_and_one_reports_leading() {
    let pg = Postgres::start();
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let tmp = tempfile::tempdir().unwrap();
    let dirs = shared_dirs(tmp.path(), &url, 2);
    let hold = tmp.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let spec = format!("ingest.before_commit:hold:{}", hold.display());
    // H holds every batch it ingests before its commit while the file exists; F does not.
    let (held, held_metrics) = start(&dirs[0], &url, &[("BANNIN_FAILPOINT", &spec)]);
    let (free, free_metrics) = start(&dirs[1], &url, &[]);
    let both = [held_metrics.as_str(), free_metrics.as_str()];

    // Exactly one of them leads; each says so, and each has measured the store.
    let leading = wait_for("one collector to report leading", LONG, || {
        let texts: Vec<String> = both.iter().map(|a| scrape(a)).collect();
        let leading: Vec<f64> = texts
            .iter()
            .map(|t| value(t, "bannin_detection_leader").unwrap())
            .collect();
        let measured = texts
            .iter()
            .all(|t| value(t, "bannin_detection_lag_batches").is_some());
        (measured && leading.iter().sum::<f64>() == 1.0).then_some(leading)
    });
    assert!(
        leading.iter().all(|l| *l == 0.0 || *l == 1.0),
        "{leading:?}"
    );
    for addr in both {
        let text = scrape(addr);
        assert_eq!(
            value(&text, "bannin_detection_lag_batches"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "bannin_detection_oldest_writer_seconds"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(http_get(addr, "/healthz").0, 200);
    }

    // X's batch waits uncommitted in H; Y's commits through F behind it.
    let rt = runtime();
    let mut x = rt.block_on(SimAgent::enroll(&free, "pcx"));
    let mut y = rt.block_on(SimAgent::enroll(&free, "pcy"));
    rt.block_on(x.connect_to(&held));
    let batch = x.next_batch(x.stamped(vec![(Timestamp::now(), status(1))]));
    let mut ingest = x.ingest.clone();
    let x_send = rt.spawn(async move { ingest.submit(batch).await });
    wait_for("the held transaction", LONG, || {
        (open_writers(&pg) > 0).then_some(())
    });
    rt.block_on(y.submit_bodies(vec![
        (Timestamp::now(), status(1)),
        (Timestamp::now(), status(2)),
    ]))
    .unwrap();

    // Both collectors see the lag rise: Y's batch and its two events above the horizon, and the
    // held transaction aging.
    let mut oldest = [0.0; 2];
    for (i, addr) in both.iter().enumerate() {
        let text = wait_for_explained(
            "the lag series to rise",
            LONG,
            || {
                let text = scrape(addr);
                let up = value(&text, "bannin_detection_lag_batches")? >= 1.0
                    && value(&text, "bannin_detection_lag_events")? >= 2.0
                    && value(&text, "bannin_detection_oldest_writer_seconds")? >= 1.0;
                up.then_some(text)
            },
            || scrape(addr),
        );
        assert_eq!(
            value(&text, "bannin_detection_lag_batches"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "bannin_detection_lag_events"),
            Some(2.0),
            "{text}"
        );
        oldest[i] = value(&text, "bannin_detection_oldest_writer_seconds").unwrap();
        assert_eq!(value(&text, "bannin_agents_enrolled"), Some(2.0), "{text}");
    }
    // Ingest is counted where it happened, and only once committed.
    assert_eq!(
        value(&scrape(&free_metrics), "bannin_ingest_batches_total"),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape(&free_metrics), "bannin_ingest_events_total"),
        Some(2.0)
    );
    assert_eq!(
        value(&scrape(&held_metrics), "bannin_ingest_batches_total"),
        Some(0.0)
    );
    let aging = wait_for("the oldest writer to age", LONG, || {
        let now = value(
            &scrape(&held_metrics),
            "bannin_detection_oldest_writer_seconds",
        )?;
        (now > oldest[0]).then_some(now)
    });

    // Released, the batch commits and the lag falls to nothing on both.
    std::fs::remove_file(&hold).unwrap();
    rt.block_on(x_send).unwrap().unwrap();
    for addr in both {
        wait_for_explained(
            "the lag series to fall",
            LONG,
            || {
                let text = scrape(addr);
                let down = value(&text, "bannin_detection_lag_batches")? == 0.0
                    && value(&text, "bannin_detection_lag_events")? == 0.0
                    && value(&text, "bannin_detection_oldest_writer_seconds")? < aging;
                down.then_some(())
            },
            || scrape(addr),
        );
    }
    assert_eq!(
        value(&scrape(&held_metrics), "bannin_ingest_batches_total"),
        Some(1.0)
    );
    let texts: Vec<String> = both.iter().map(|a| scrape(a)).collect();
    let leaders: f64 = texts
        .iter()
        .map(|t| value(t, "bannin_detection_leader").unwrap())
        .sum();
    assert_eq!(leaders, 1.0, "{texts:?}");
    let taken: f64 = texts
        .iter()
        .map(|t| value(t, "bannin_detection_leader_acquired_total").unwrap())
        .sum();
    assert_eq!(taken, 1.0, "one lead taken, never lost: {texts:?}");

    // The leader dies: the other takes the lead, and its series say so.
    let leader = texts
        .iter()
        .position(|t| value(t, "bannin_detection_leader") == Some(1.0))
        .unwrap();
    let mut collectors = [held, free];
    collectors[leader].proc.kill9();
    let other = both[1 - leader];
    wait_for_explained(
        "the other collector to report leading",
        LONG,
        || {
            let text = scrape(other);
            (value(&text, "bannin_detection_leader") == Some(1.0)
                && value(&text, "bannin_detection_leader_acquired_total") == Some(1.0))
            .then_some(())
        },
        || scrape(other),
    );
}

/// Whether the server has closed `stream` (end of file or reset), waiting up to `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The attacker on the host: connections that never finish their request, then a request head
/// of a megabyte. The endpoint sheds them; the collector keeps taking batches meanwhile, and the
/// endpoint serves again once the hostile connections are gone.
#[test]
fn hostile_metrics_clients_do_not_hold_the_endpoint_or_the_collector() {
    let tmp = tempfile::tempdir().unwrap();
    let db = PgDb::create();
    let dir = tmp.path().join("c");
    let (collector, metrics) = start(&dir, &db.url, &[]);
    wait_for("a first measurement", LONG, || {
        value(&scrape(&metrics), "bannin_agents_enrolled")
    });

    // Forty connections that send half a request head and stop.
    let mut hostile: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(&metrics).unwrap();
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n");
            stream
        })
        .collect();
    // Past the per-address cap they are closed as soon as the collector accepts them, which on a
    // loaded host may take a while; those kept stay open until their lifetime ends (10 s).
    let mut closed = vec![false; hostile.len()];
    wait_for("the connections past the cap closed", LONG, || {
        for (stream, closed) in hostile.iter_mut().zip(closed.iter_mut()) {
            *closed = *closed || closed_within(stream, Duration::from_millis(1));
        }
        (closed.iter().filter(|c| **c).count() >= hostile.len() - 8).then_some(())
    });
    let kept = closed.iter().filter(|c| !**c).count();
    assert!(
        (1..=8).contains(&kept),
        "{kept} of 40 half-open connections kept"
    );

    // The collector takes batches while they hang there.
    let rt = runtime();
    let mut agent = rt.block_on(SimAgent::enroll(&collector, "pc1"));
    rt.block_on(agent.submit_bodies(vec![(Timestamp::now(), status(1))]))
        .unwrap();

    // Each one kept is cut off at the end of its lifetime, not held for ever.
    for stream in &mut hostile {
        assert!(
            closed_within(stream, LONG),
            "a half-open metrics connection was never closed"
        );
    }
    let text = scrape(&metrics);
    assert_eq!(
        value(&text, "bannin_ingest_batches_total"),
        Some(1.0),
        "{text}"
    );

    // A request head of a megabyte is refused without harm.
    let mut big = TcpStream::connect(&metrics).unwrap();
    big.set_read_timeout(Some(LONG)).unwrap();
    let mut head = b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 1 << 20));
    head.extend(b"\r\n\r\n");
    // The server may close before it has read it all.
    let _ = big.write_all(&head);
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // The collector is still up and still counts right.
    rt.block_on(agent.submit_bodies(vec![(Timestamp::now(), status(2))]))
        .unwrap();
    wait_for("both batches counted and the agent measured", LONG, || {
        let text = scrape(&metrics);
        (value(&text, "bannin_ingest_batches_total") == Some(2.0)
            && value(&text, "bannin_agents_enrolled") == Some(1.0))
        .then_some(())
    });
    assert_eq!(http_get(&metrics, "/healthz").0, 200);
}
