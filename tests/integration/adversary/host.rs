//! The agent's own host is hostile or full: its state directory, keys and disk.

// ---- Keys and directories: an insider with an ordinary account plants links where root writes keys.
// Each test makes the account `nobody` do the planting, as an insider would, then runs the real
// binaries as root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{AGENT, COLLECTOR, Collector, Proc, poll, run_output, wait_for};

const NOBODY: u32 = 65534;

/// How many events the agent's spool holds: its rows are runs of consecutive events.
const SPOOLED_EVENTS: &str = "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM runs";

/// [`wait_for`] for up to two minutes, with both ends of the agent's log in the failure message:
/// how an episode began, and where it stands.
fn wait_or_log<T>(
    agent: &crate::harness::Agent,
    what: &str,
    check: impl FnMut() -> Option<T>,
) -> T {
    crate::harness::wait_for_explained(what, Duration::from_secs(120), check, || {
        let log = agent.proc.log();
        let lines: Vec<&str> = log.lines().collect();
        let head = &lines[..lines.len().min(40)];
        let tail = &lines[lines.len().saturating_sub(40).max(head.len())..];
        format!(
            "agent log, oldest 40 lines:\n{}\n[...]\nnewest 40 lines:\n{}",
            head.join("\n"),
            tail.join("\n")
        )
    })
}

/// A scratch directory others may traverse (so `nobody` can reach what the test shares with it).
fn shared_scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory with `mode`; owned by `nobody` when `nobodys`.
fn make_dir(path: &Path, mode: u32, nobodys: bool) -> PathBuf {
    std::fs::create_dir(path).unwrap();
    if nobodys {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    chmod(path, mode);
    path.to_path_buf()
}

/// Runs a shell script as the unprivileged user `nobody`, in `dir`.
fn as_nobody(dir: &Path, script: &str) {
    let output = run_output(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .current_dir(dir),
    );
    assert!(
        output.status.success(),
        "nobody could not run {script:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A root-owned file an insider would like root to overwrite.
fn victim(dir: &Path) -> PathBuf {
    let path = dir.join("victim");
    std::fs::write(&path, "precious").unwrap();
    path
}

fn enroll(collector: &Collector, state_dir: &Path) -> std::process::Output {
    run_output(
        Command::new(AGENT)
            .arg("enroll")
            .arg("--collector")
            .arg(collector.url())
            .arg("--ca-cert")
            .arg(collector.ca())
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--name")
            .arg("insider-host")
            .env("BANNIN_TOKEN", collector.token()),
    )
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `bannin-agent run` must exit with a usage error instead of running; returns its log.
fn run_refused(state_dir: &Path) -> String {
    let mut proc = Proc::spawn(
        "agent",
        Command::new(AGENT)
            .arg("run")
            .arg("--state-dir")
            .arg(state_dir),
    );
    let status = wait_for("the agent to exit", Duration::from_secs(60), || {
        assert!(
            !proc.has_line("agent running"),
            "the agent ran on {}:\n{}",
            state_dir.display(),
            proc.log()
        );
        proc.child.try_wait().unwrap()
    });
    // Let the reader threads take the last lines.
    wait_for("the agent's error line", Duration::from_secs(10), || {
        proc.has_line("bannin-agent:").then_some(())
    });
    assert_eq!(status.code(), Some(2), "{}", proc.log());
    proc.log()
}

#[test]
fn enroll_refuses_a_state_dir_others_can_write_and_hands_no_key_to_planted_links() {
    let scratch = shared_scratch();
    let collector = Collector::start(&scratch.path().join("collector"));
    let victim = victim(scratch.path());
    let loot = make_dir(&scratch.path().join("loot"), 0o755, true);
    let state = make_dir(&scratch.path().join("state"), 0o777, false);
    as_nobody(
        scratch.path(),
        "touch loot/key && chmod 600 loot/key && ln loot/key state/signing.key \
         && ln -s ../victim state/tls.pem && ln -s ../victim state/tls.key",
    );

    let output = enroll(&collector, &state);
    assert!(
        !output.status.success(),
        "enrolled into a state directory anyone can write"
    );
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("state directory") && message.contains("writable by group or others"),
        "{message}"
    );
    assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
    assert_eq!(std::fs::read_to_string(loot.join("key")).unwrap(), "");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn links_planted_before_a_state_dir_was_locked_down_are_replaced_not_followed() {
    let scratch = shared_scratch();
    let collector = Collector::start(&scratch.path().join("collector"));
    let victim = victim(scratch.path());
    let loot = make_dir(&scratch.path().join("loot"), 0o755, true);
    let state = make_dir(&scratch.path().join("state"), 0o777, false);
    as_nobody(
        scratch.path(),
        "touch loot/key && chmod 600 loot/key && ln loot/key state/signing.key \
         && ln -s ../victim state/tls.pem && ln -s ../victim state/identity.toml.tmp",
    );
    // The administrator notices and locks the directory down, but the links are still inside.
    chmod(&state, 0o700);

    let output = enroll(&collector, &state);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read_to_string(loot.join("key")).unwrap(),
        "",
        "the signing key went into a file the insider owns"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    for name in [
        "signing.key",
        "tls.key",
        "tls.pem",
        "ca.pem",
        "identity.toml",
    ] {
        let meta = std::fs::symlink_metadata(state.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a regular file");
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&meta),
            1,
            "{name} has one link"
        );
    }
    let mode = std::fs::metadata(state.join("signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The agent runs on what enrollment wrote.
    let mut agent = Proc::spawn(
        "agent",
        Command::new(AGENT)
            .arg("run")
            .arg("--state-dir")
            .arg(&state),
    );
    agent.wait_line("agent running", Duration::from_secs(60));
}

#[test]
fn run_refuses_a_state_dir_or_key_others_could_have_swapped() {
    let scratch = shared_scratch();
    let collector = Collector::start(&scratch.path().join("collector"));
    let state = scratch.path().join("state");
    let output = enroll(&collector, &state);
    assert!(output.status.success(), "{}", stderr(&output));

    chmod(&state, 0o777);
    let log = run_refused(&state);
    assert!(
        log.contains("state directory") && log.contains("writable by group or others"),
        "{log}"
    );
    chmod(&state, 0o700);

    let key = state.join("signing.key");
    std::os::unix::fs::chown(&key, Some(NOBODY), None).unwrap();
    let log = run_refused(&state);
    assert!(
        log.contains("signing.key") && log.contains("owned by uid 65534"),
        "{log}"
    );
    std::os::unix::fs::chown(&key, Some(0), None).unwrap();

    let second = scratch.path().join("second-name");
    std::fs::hard_link(&key, &second).unwrap();
    let log = run_refused(&state);
    assert!(
        log.contains("signing.key") && log.contains("hard links"),
        "{log}"
    );
    std::fs::remove_file(&second).unwrap();

    let tls_key = state.join("tls.key");
    let moved = scratch.path().join("tls.key.elsewhere");
    std::fs::rename(&tls_key, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &tls_key).unwrap();
    let log = run_refused(&state);
    assert!(
        log.contains("tls.key") && log.contains("symbolic link"),
        "{log}"
    );
    std::fs::remove_file(&tls_key).unwrap();
    std::fs::rename(&moved, &tls_key).unwrap();

    let mut agent = Proc::spawn(
        "agent",
        Command::new(AGENT)
            .arg("run")
            .arg("--state-dir")
            .arg(&state),
    );
    agent.wait_line("agent running", Duration::from_secs(60));
}

#[test]
fn directories_reached_through_another_users_link_or_owned_by_another_user_are_refused() {
    let scratch = shared_scratch();
    let sticky = make_dir(&scratch.path().join("sticky"), 0o1777, false);
    make_dir(&scratch.path().join("data"), 0o700, false);
    make_dir(&scratch.path().join("nobodys-data"), 0o700, true);
    // A link in a shared sticky directory, like /tmp: its owner may point it anywhere at any time.
    as_nobody(
        scratch.path(),
        "ln -s ../data sticky/data && ln -s ../state sticky/state",
    );

    let token = |dir: &Path| {
        run_output(
            Command::new(COLLECTOR)
                .args(["token", "create", "--data-dir"])
                .arg(dir),
        )
    };
    let output = token(&sticky.join("data"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("data directory") && message.contains("owned by uid 65534"),
        "{message}"
    );
    assert!(!scratch.path().join("data/bannin.db").exists());

    let output = token(&scratch.path().join("nobodys-data"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("owned by uid 65534"),
        "{}",
        stderr(&output)
    );

    let collector = Collector::start(&scratch.path().join("data"));
    make_dir(&scratch.path().join("state"), 0o700, false);
    let output = enroll(&collector, &sticky.join("state"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("state directory") && message.contains("owned by uid 65534"),
        "{message}"
    );
    assert!(!scratch.path().join("state/signing.key").exists());
}

#[test]
fn operator_create_neither_follows_nor_reuses_a_planted_out_file() {
    let scratch = shared_scratch();
    let victim = victim(scratch.path());
    let sticky = make_dir(&scratch.path().join("sticky"), 0o1777, false);
    as_nobody(
        scratch.path(),
        "ln -s ../victim sticky/ana.pem && touch sticky/bob.pem && chmod 666 sticky/bob.pem",
    );
    let data = scratch.path().join("data");
    let create = |name: &str, out: &Path| {
        run_output(
            Command::new(COLLECTOR)
                .args(["operator", "create", "--data-dir"])
                .arg(&data)
                .args(["--name", name, "--out"])
                .arg(out),
        )
    };
    for name in ["ana", "bob"] {
        let out = sticky.join(format!("{name}.pem"));
        let output = create(name, &out);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("already exists"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::read_to_string(sticky.join("bob.pem")).unwrap(), "");
    // Refusing the planted file did not use up the name.
    let out = scratch.path().join("ana.pem");
    let output = create("ana", &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn collector_keys_planted_before_the_data_dir_was_locked_down_are_replaced() {
    let scratch = shared_scratch();
    let victim = victim(scratch.path());
    let loot = make_dir(&scratch.path().join("loot"), 0o755, true);
    let data = make_dir(&scratch.path().join("data"), 0o777, false);
    as_nobody(
        scratch.path(),
        "ln -s ../victim data/ca.key && touch loot/key && chmod 600 loot/key \
         && ln loot/key data/server.key",
    );
    chmod(&data, 0o700);

    let _collector = Collector::start(&data);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(
        std::fs::read_to_string(loot.join("key")).unwrap(),
        "",
        "the server key went into a file the insider owns"
    );
    for name in ["ca.key", "server.key"] {
        let meta = std::fs::symlink_metadata(data.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is a regular file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name} mode");
    }
}

// ---- A newcomer's first commands: `serve` and the commands typed while it starts never fail with
// "database is locked" or a half-made store.

#[test]
fn commands_run_while_serve_creates_the_store_never_fail_on_a_busy_or_half_made_store() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let mut serve = Proc::spawn(
        "collector",
        Command::new(COLLECTOR)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"]),
    );
    let mut outputs = Vec::new();
    let mut rounds_after_ready = 0;
    for _ in 0..60 {
        if serve.has_line("listening on ") {
            rounds_after_ready += 1;
            if rounds_after_ready > 3 {
                break;
            }
        }
        assert!(
            serve.child.try_wait().unwrap().is_none(),
            "serve exited while starting:\n{}",
            serve.log()
        );
        let children: Vec<_> = (0..6)
            .map(|i| {
                let mut command = Command::new(COLLECTOR);
                if i % 2 == 0 {
                    command.args(["token", "create", "--data-dir"]).arg(&data);
                } else {
                    command
                        .args(["events", "--format", "json", "--data-dir"])
                        .arg(&data);
                }
                command
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        outputs.extend(children.into_iter().map(|c| c.wait_with_output().unwrap()));
    }
    serve.wait_line("listening on ", Duration::from_secs(60));
    assert!(
        outputs.len() >= 24,
        "too few commands ran: {}",
        outputs.len()
    );
    for output in &outputs {
        let message = stderr(output);
        // Before anything created the store a query may say so; nothing else may go wrong.
        assert!(
            output.status.success() || message.contains("no store in"),
            "a command failed while serve started: {message}"
        );
    }
    assert!(
        outputs.iter().filter(|o| o.status.success()).count() >= outputs.len() / 2,
        "most commands should have succeeded"
    );
}

// ---- Enrollment tokens stay out of `ps` and cannot be guessed.

#[test]
fn quickstart_hands_the_agent_a_random_token_outside_its_command_line() {
    let scratch = tempfile::tempdir().unwrap();
    let watched = scratch.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    // The agent quickstart starts is this wrapper: it records what `ps` would show and the token it
    // was given through the environment, then runs the real agent.
    let record = scratch.path().join("seen");
    let wrapper = scratch.path().join("agent-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"args: $*\" \"env: ${{BANNIN_TOKEN:-}}\" \"pid: $$\" >> '{}'\nexec '{}' \"$@\"\n",
            record.display(),
            AGENT
        ),
    )
    .unwrap();
    chmod(&wrapper, 0o755);
    let mut quickstart = Proc::spawn(
        "quickstart",
        Command::new(COLLECTOR)
            .arg("quickstart")
            .arg("--data-dir")
            .arg(scratch.path().join("data"))
            .arg("--watch")
            .arg(&watched)
            .env("BANNIN_AGENT_BIN", &wrapper),
    );
    quickstart.wait_line("agent.start", Duration::from_secs(90));
    let seen = std::fs::read_to_string(&record).unwrap();
    let enroll = seen
        .lines()
        .position(|l| l.starts_with("args: enroll"))
        .unwrap_or_else(|| panic!("no enroll call: {seen}"));
    let lines: Vec<&str> = seen.lines().collect();
    assert!(
        !lines[enroll].contains("--token") && !lines[enroll].contains("bnt_"),
        "the token is on the agent's command line, visible in ps: {}",
        lines[enroll]
    );
    let token = lines[enroll + 1].strip_prefix("env: ").unwrap();
    let secret = token
        .strip_prefix("bnt_")
        .unwrap_or_else(|| panic!("{token}"));
    assert!(
        secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "the token is not 128+ random bits in hex: {token}"
    );
    // Stopped, quickstart stops its agent too (the wrapper execs the agent, so the wrapper's pid
    // is the running agent's): none is left running on its own, retrying a collector that is
    // gone (as the test's own clean-up, a kill -9, would leave it).
    let run = seen
        .lines()
        .position(|l| l.starts_with("args: run"))
        .unwrap_or_else(|| panic!("no run call: {seen}"));
    let pid: i32 = lines[run + 2]
        .strip_prefix("pid: ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{seen}"));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the agent runs"
    );
    quickstart.terminate();
    let gone = poll(Duration::from_secs(30), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for whoever adopted it.
        (stat.is_empty()
            || stat
                .rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('Z')))
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "the agent outlived its quickstart (pid {pid})"
    );
}

#[test]
fn enroll_takes_the_token_from_bannin_token() {
    let scratch = tempfile::tempdir().unwrap();
    let collector = Collector::start(&scratch.path().join("collector"));
    let state = scratch.path().join("state");
    // `enroll` above passes the token only through BANNIN_TOKEN.
    let output = enroll(&collector, &state);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run_output(
        Command::new(AGENT)
            .arg("enroll")
            .arg("--collector")
            .arg(collector.url())
            .arg("--ca-cert")
            .arg(collector.ca())
            .arg("--state-dir")
            .arg(scratch.path().join("other"))
            .env("BANNIN_TOKEN", "bnt_not-a-token"),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("token is unknown"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains("bnt_not-a-token"),
        "{}",
        stderr(&output)
    );
}

// ---- Disk full: the agent's state directory sits on a small filesystem that something else fills.
mod disk_full {
    use super::{SPOOLED_EVENTS, wait_or_log};
    use std::path::Path;
    use std::time::Duration;

    use crate::harness::{Agent, Collector, Tmpfs, private_file, wait_for};

    /// Events in the agent's spool, read as another process would (SQLite allows readers beside
    /// the agent's writer).
    fn spooled(state: &Path) -> u64 {
        let conn = rusqlite::Connection::open_with_flags(
            state.join("spool.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.query_row(SPOOLED_EVENTS, [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    /// Whether the disk fills while the spool still holds unsent events, or after it has sent
    /// everything: with nothing to drop, the agent used to spend its reserve on the first new
    /// events and then lose every later one.
    #[derive(Clone, Copy, PartialEq)]
    enum WhenFull {
        EventsSpooled,
        SpoolEmpty,
    }

    /// The agent's state directory fills up (a ballast file takes every free byte) while the
    /// collector is away. The agent used to retry the same write forever, stop spooling, resend
    /// one batch every 50 ms and hang on SIGTERM. Now: it drops its oldest events and says so
    /// (`agent.dropped` with the range), sends what it spooled once the collector is back, recovers
    /// by itself when space returns, and stops promptly on SIGTERM.
    fn full_state_disk(when: WhenFull, host: &str) {
        let tmp = tempfile::tempdir().unwrap();
        // Room for the spool and its 8 MiB disk reserve, which the agent holds only where four
        // times as much is free.
        let small = Tmpfs::mount("64m");
        let state = small.path().join("agent");
        let mut collector = Collector::start(&tmp.path().join("collector"));
        collector.enroll(&state, host);
        let watched = tmp.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        let config = tmp.path().join("agent.toml");
        private_file(
            &config,
            "[process]\nenabled = false\n\n[network]\nenabled = false\n",
        );
        let mut agent = Agent::start(
            &state,
            &[
                "--config",
                config.to_str().unwrap(),
                "--watch",
                watched.to_str().unwrap(),
            ],
        );
        let mut made = 0;
        let mut make = |count: usize| {
            for _ in 0..count {
                made += 1;
                let name = format!("export-{made:06}-{}.csv", "x".repeat(120));
                std::fs::write(watched.join(name), b"id,name\n").unwrap();
            }
        };
        match when {
            WhenFull::SpoolEmpty => {
                make(20);
                wait_or_log(&agent, "the first events at the collector", || {
                    collector
                        .events(&["--host", host, "--path", "*export-000020-*"])
                        .into_iter()
                        .next()
                });
                wait_or_log(&agent, "an empty spool", || {
                    (spooled(&state) == 0).then_some(())
                });
                collector.proc.kill9();
            }
            WhenFull::EventsSpooled => {
                // The collector goes away; events wait in the spool.
                collector.proc.kill9();
                make(100);
                // All of them: the disk fills after the agent has written them, not while (a
                // reserve given up during the fill would go to the ballast).
                // Unchanged over six polls (300 ms or more).
                let (mut last, mut same) = (0, 0);
                wait_or_log(
                    &agent,
                    "100 files' events in the spool, no more coming",
                    || {
                        let now = spooled(&state);
                        same = if now == last { same + 1 } else { 0 };
                        last = now;
                        (now >= 100 && same >= 6).then_some(())
                    },
                );
            }
        }
        let ballast = small.fill();

        // Events keep coming until the spool, out of room, drops its oldest.
        wait_or_log(&agent, "the agent to drop its oldest events", || {
            make(50);
            agent
                .proc
                .has_line("dropped the oldest events")
                .then_some(())
        });
        // And goes on doing so while the disk stays full: new events are paid for with old ones.
        // The reserve used to shrink by what each episode's checkpoint took, until it could not
        // hold a drop and every new event was lost.
        wait_or_log(&agent, "five drops of the oldest events", || {
            make(50);
            let log = agent.proc.log();
            (log.matches("dropped the oldest events").count() >= 5).then_some(())
        });
        let log = agent.proc.log();
        assert!(
            !log.contains("events are lost until space returns"),
            "new events were lost while old ones could have been dropped:\n{log}"
        );

        // The collector comes back and receives what was spooled, including the drop notice.
        let addr = collector.addr.clone();
        collector = Collector::start_with(&collector.dir.clone(), &addr, &[]);
        let dropped = wait_or_log(&agent, "agent.dropped at the collector", || {
            collector
                .events(&["--kind", "agent.dropped", "--host", host])
                .into_iter()
                .find(|e| e["first_dropped_seq"].as_u64().is_some_and(|s| s > 0))
        });
        let first = dropped["first_dropped_seq"].as_u64().unwrap_or(0);
        let last = dropped["last_dropped_seq"].as_u64().unwrap_or(0);
        assert!(first >= 1 && last >= first, "{dropped}");
        assert!(
            dropped["dropped"].as_u64().unwrap() > last - first,
            "{dropped}"
        );

        // Space returns: new events arrive without a restart.
        std::fs::remove_file(&ballast).unwrap();
        let marker = watched.join("after-the-disk-was-freed.csv");
        std::fs::write(&marker, b"id\n").unwrap();
        wait_or_log(&agent, "an event from after the recovery", || {
            collector
                .events(&["--host", host, "--path", "*after-the-disk-was-freed*"])
                .into_iter()
                .next()
        });

        // And it stops promptly, cleanly.
        let pid = nix::unistd::Pid::from_raw(agent.proc.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = wait_for(
            "the agent to stop after SIGTERM",
            Duration::from_secs(15),
            || agent.proc.child.try_wait().unwrap(),
        );
        assert!(
            status.success(),
            "agent exit: {status}\n{}",
            agent.proc.log()
        );
    }

    #[test]
    fn a_full_state_disk_drops_the_oldest_says_so_recovers_and_stops_promptly() {
        full_state_disk(WhenFull::EventsSpooled, "full1");
    }

    #[test]
    fn a_disk_that_fills_after_everything_was_sent_still_drops_the_oldest_not_everything_new() {
        full_state_disk(WhenFull::SpoolEmpty, "full2");
    }

    /// The running total in the agent's `spool.lost`: a 512-byte record, `BNNLOST1` then the
    /// total, big-endian.
    fn recorded_lost(state: &Path) -> u64 {
        let bytes = std::fs::read(state.join("spool.lost")).unwrap();
        assert_eq!(&bytes[..8], b"BNNLOST1");
        u64::from_be_bytes(bytes[8..16].try_into().unwrap())
    }

    /// The largest `lost_total=N` the agent logged: how many events it counted as lost.
    fn lost_total(log: &str) -> u64 {
        log.lines()
            .filter_map(|line| line.split("lost_total=").nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// The disk stays full until even an empty spool has no room, so events are lost outright,
    /// and the agent crashes before space returns. The count used to live only in memory and died
    /// with the process: the loss went unreported. Now it is kept in `spool.lost` and every lost
    /// event is reported by an `agent.dropped` after the restart, exactly once.
    #[test]
    fn events_lost_on_a_full_disk_are_reported_after_a_crash() {
        let host = "full3";
        let tmp = tempfile::tempdir().unwrap();
        let small = Tmpfs::mount("2m");
        let state = small.path().join("agent");
        let collector = Collector::start(&tmp.path().join("collector"));
        collector.enroll(&state, host);
        let watched = tmp.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        let config = tmp.path().join("agent.toml");
        private_file(
            &config,
            "[process]\nenabled = false\n\n[network]\nenabled = false\n",
        );
        let args = [
            "--config",
            config.to_str().unwrap(),
            "--watch",
            watched.to_str().unwrap(),
        ];
        let mut agent = Agent::start(&state, &args);
        let mut made = 0;
        let mut make = |count: usize| {
            for _ in 0..count {
                made += 1;
                std::fs::write(watched.join(format!("export-{made:06}.csv")), b"id\n").unwrap();
            }
        };
        // Every time the agent gives up space (its reserve, dropped events), ballast takes it.
        let mut ballast = Vec::new();
        wait_or_log(&agent, "events lost outright", || {
            ballast.push(small.fill_as(&format!("ballast-{}", ballast.len())));
            make(20);
            (lost_total(&agent.proc.log()) > 0).then_some(())
        });
        // A few more losses, then the crash.
        wait_or_log(&agent, "the later events counted", || {
            ballast.push(small.fill_as(&format!("ballast-{}", ballast.len())));
            make(20);
            let log = agent.proc.log();
            (log.matches("events are lost until space returns").count() >= 2).then_some(())
        });
        agent.proc.kill9();
        // What the agent counted, durably: the kill may fall between recording a loss in
        // `spool.lost` and logging it, so the log may say less, never more.
        let logged = lost_total(&agent.proc.log());
        let lost = recorded_lost(&state);
        assert!(
            logged > 0 && lost >= logged,
            "{lost} recorded, {logged} logged"
        );

        for path in &ballast {
            std::fs::remove_file(path).unwrap();
        }
        let agent = Agent::start(&state, &args);
        let reported = wait_or_log(&agent, "every lost event reported", || {
            let notices: Vec<u64> = collector
                .events(&["--kind", "agent.dropped", "--host", host])
                .into_iter()
                .filter(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("lost before they could be spooled"))
                })
                .map(|e| e["dropped"].as_u64().unwrap())
                .collect();
            (notices.iter().sum::<u64>() >= lost).then_some(notices)
        });
        assert_eq!(reported.iter().sum::<u64>(), lost, "{reported:?}");
        assert!(
            agent
                .proc
                .log()
                .contains("events were lost before the agent restarted")
                || reported.len() > 1,
            "{}",
            agent.proc.log()
        );
    }
}

// ---- The spool fails for another reason than a full disk: every such error used to be retried
// forever, holding every sensor back and hanging SIGTERM.
mod spool_failures {
    use super::{SPOOLED_EVENTS, wait_or_log};
    use std::path::Path;
    use std::time::Duration;

    use crate::harness::{Agent, Collector, private_file, wait_for};

    struct Setup {
        _tmp: tempfile::TempDir,
        collector: Collector,
        state: std::path::PathBuf,
        watched: std::path::PathBuf,
        args: Vec<String>,
    }

    fn setup(host: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let collector = Collector::start(&tmp.path().join("collector"));
        let state = tmp.path().join("state");
        collector.enroll(&state, host);
        let watched = tmp.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        let config = tmp.path().join("agent.toml");
        private_file(
            &config,
            "[process]\nenabled = false\n\n[network]\nenabled = false\n",
        );
        let args = vec![
            "--config".to_string(),
            config.to_str().unwrap().to_string(),
            "--watch".to_string(),
            watched.to_str().unwrap().to_string(),
        ];
        Setup {
            _tmp: tmp,
            collector,
            state,
            watched,
            args,
        }
    }

    impl Setup {
        fn agent(&self) -> Agent {
            let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
            Agent::start(&self.state, &args)
        }

        fn stored(&self, host: &str, glob: &str) -> usize {
            self.collector
                .events(&["--host", host, "--path", glob])
                .len()
        }
    }

    fn sigterm(agent: &mut Agent) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(agent.proc.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_for(
            "the agent to stop after SIGTERM",
            Duration::from_secs(60),
            || agent.proc.child.try_wait().unwrap(),
        )
    }

    fn spool_conn(state: &Path) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(state.join("spool.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn
    }

    /// Another process takes the spool's write lock and keeps it. The agent used to retry the
    /// same write forever: sensors stalled behind it and SIGTERM never returned. Now it retries
    /// for a bounded time, then counts what it could not spool (durably, outside SQLite), says so
    /// in one line, stops promptly, and reports the loss as `agent.dropped` once it can write.
    #[test]
    fn a_spool_locked_by_another_process_loses_nothing_silently_and_stops_promptly() {
        let host = "locked1";
        let setup = setup(host);
        let mut agent = setup.agent();
        std::fs::write(setup.watched.join("before-0001.csv"), b"id\n").unwrap();
        wait_or_log(&agent, "the first event at the collector", || {
            (setup.stored(host, "*before-0001*") > 0).then_some(())
        });

        let holder = spool_conn(&setup.state);
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        for n in 0..10 {
            std::fs::write(setup.watched.join(format!("locked-{n:04}.csv")), b"id\n").unwrap();
        }
        let line = wait_or_log(&agent, "the agent to count the burst as lost", || {
            agent
                .proc
                .log()
                .lines()
                .find(|l| l.contains("cannot write to the spool: events lost"))
                .map(str::to_string)
        });
        assert!(line.contains("write lock"), "{line}");
        let status = sigterm(&mut agent);
        assert!(
            status.success(),
            "agent exit: {status}\n{}",
            agent.proc.log()
        );
        assert!(
            setup.state.join("spool.lost").exists(),
            "no durable count of the lost events"
        );

        // The lock goes; the next run reports what the last one could not spool.
        holder.execute_batch("ROLLBACK").unwrap();
        drop(holder);
        let mut agent = setup.agent();
        let notice = wait_or_log(&agent, "agent.dropped at the collector", || {
            setup
                .collector
                .events(&["--kind", "agent.dropped", "--host", host])
                .into_iter()
                .find(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("write lock"))
                })
        });
        // At least the ten files' events, and the first run's agent.stop.
        assert!(notice["dropped"].as_u64().unwrap() >= 11, "{notice}");
        std::fs::write(setup.watched.join("after-0001.csv"), b"id\n").unwrap();
        wait_or_log(&agent, "an event after the lock went", || {
            (setup.stored(host, "*after-0001*") > 0).then_some(())
        });
        assert!(sigterm(&mut agent).success(), "{}", agent.proc.log());
    }

    /// A spool made before incremental vacuum was set up could not give a full disk back the
    /// space of the events it dropped. The agent converts it at start, keeping its events.
    #[test]
    fn an_old_spool_is_converted_to_incremental_vacuum_at_start() {
        let host = "oldspool1";
        let mut setup = setup(host);
        setup.collector.proc.kill9();
        let mut agent = setup.agent();
        for n in 0..20 {
            std::fs::write(setup.watched.join(format!("waiting-{n:04}.csv")), b"id\n").unwrap();
        }
        wait_or_log(&agent, "the events in the spool", || {
            let conn = spool_conn(&setup.state);
            let events: i64 = conn.query_row(SPOOLED_EVENTS, [], |r| r.get(0)).unwrap();
            (events >= 20).then_some(())
        });
        assert!(sigterm(&mut agent).success(), "{}", agent.proc.log());
        // What an older agent's spool looks like.
        let conn = spool_conn(&setup.state);
        conn.execute_batch("PRAGMA auto_vacuum=NONE; VACUUM;")
            .unwrap();
        let mode = |conn: &rusqlite::Connection| -> i64 {
            conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(mode(&conn), 0);
        drop(conn);

        let addr = setup.collector.addr.clone();
        setup.collector = Collector::start_with(&setup.collector.dir.clone(), &addr, &[]);
        let mut agent = setup.agent();
        assert!(
            agent
                .proc
                .has_line("converted the spool to incremental vacuum"),
            "{}",
            agent.proc.log()
        );
        assert_eq!(mode(&spool_conn(&setup.state)), 2);
        wait_or_log(&agent, "the spooled events at the collector", || {
            (setup.stored(host, "*waiting-*") >= 20).then_some(())
        });
        let events = setup.collector.events(&["--host", host]);
        let agent_id = crate::harness::agent_id(&setup.state);
        crate::harness::assert_contiguous(&events, &agent_id);
        assert!(sigterm(&mut agent).success(), "{}", agent.proc.log());
    }
}

#[test]
fn a_configuration_another_user_can_rewrite_is_refused() {
    let scratch = shared_scratch();
    let collector = Collector::start(&scratch.path().join("collector"));
    let state = scratch.path().join("state");
    let output = enroll(&collector, &state);
    assert!(output.status.success(), "{}", stderr(&output));
    // Owned by the insider (mode 0644 passes the old group/other-write check), or sitting in a
    // directory the insider owns and can swap it in.
    let theirs = scratch.path().join("agent.toml");
    std::fs::write(&theirs, "[files]\nwatch = []\n").unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let their_dir = make_dir(&scratch.path().join("theirs"), 0o755, true);
    let swappable = their_dir.join("agent.toml");
    std::fs::write(&swappable, "[files]\nwatch = []\n").unwrap();
    for config in [&theirs, &swappable] {
        let mut proc = Proc::spawn(
            "agent",
            Command::new(AGENT)
                .arg("run")
                .arg("--state-dir")
                .arg(&state)
                .arg("--config")
                .arg(config),
        );
        let status = wait_for("the agent to exit", Duration::from_secs(60), || {
            assert!(
                !proc.has_line("agent running"),
                "the agent ran with {}",
                config.display()
            );
            proc.child.try_wait().unwrap()
        });
        wait_for("the agent's error line", Duration::from_secs(10), || {
            proc.has_line("bannin-agent:").then_some(())
        });
        assert_eq!(status.code(), Some(2), "{}", proc.log());
        assert!(proc.log().contains("uid 65534"), "{}", proc.log());

        let output = run_output(
            Command::new(COLLECTOR)
                .arg("serve")
                .arg("--data-dir")
                .arg(scratch.path().join("other-collector"))
                .args(["--listen", "127.0.0.1:0", "--config"])
                .arg(config),
        );
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains("uid 65534"), "{}", stderr(&output));
    }
}
