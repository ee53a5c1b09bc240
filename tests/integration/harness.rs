//! Starting the real binaries in temp dirs, waiting on their readiness lines, and killing them on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const AGENT: &str = env!("CARGO_BIN_EXE_bannin-agent");
pub const COLLECTOR: &str = env!("CARGO_BIN_EXE_bannin-collector");

/// Polls `check` until it returns `Some`, or returns `None` once `timeout` has passed. The one
/// place the tests wait on a clock: every wait has a deadline, and none is a fixed sleep.
#[expect(
    clippy::disallowed_methods,
    reason = "the tests drive the binaries from plain threads, where std's clock and sleep are right"
)]
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
/// Whether an ordinary user (`nobody`) may make a user and mount namespace of their own
/// (`unshare -Urm`), as an insider bind-mounting a watched tree would; says so when not, for the
/// test that needs it to skip.
pub fn an_ordinary_user_may_unshare() -> bool {
    let may = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "unshare", "-Urm", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !may {
        eprintln!("skipped: an ordinary user cannot make a user namespace on this machine");
    }
    may
}

pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, check, String::new)
}

/// [`wait_for`], with what `explain` says (logs, tables) in the failure message.
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    match poll(timeout, check) {
        Some(value) => value,
        None => panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            explain()
        ),
    }
}

/// A child process whose stderr is collected line by line; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub name: String,
    /// The output streams still being read; a reader that reaches the end has taken every line.
    open_streams: Arc<AtomicUsize>,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The store writer's debug lines say when a batch is queued and when a group commit
        // begins, so a test can order batches into groups by waiting, not sleeping.
        command.env(
            "BANNIN_LOG",
            "info,bannin_agent=debug,bannin_collector::store::ingest=debug",
        );
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let open_streams = Arc::new(AtomicUsize::new(0));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let open = open_streams.clone();
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Proc {
            child,
            lines,
            name: name.to_string(),
            open_streams,
        }
    }

    /// Waits for a readiness line ("listening on ADDR", "serving metrics on ADDR") and returns
    /// the address after `marker`.
    pub fn wait_address(&mut self, marker: &str, timeout: Duration) -> String {
        let line = self.wait_line(marker, timeout);
        line.split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address after {marker:?} in {line:?}"))
            .to_string()
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let lines = self.lines.clone();
        let name = self.name.clone();
        let mut exited = None;
        let found = wait_for_explained(
            &format!("{name} to log {needle:?}"),
            timeout,
            || {
                if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                    return Some(Some(line.clone()));
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    // Let the readers take the last lines before the exit is reported.
                    Self::drained(&self.open_streams);
                    exited = Some(status);
                    return Some(None);
                }
                None
            },
            || {
                format!(
                    "{name} logged so far:\n{}",
                    lines.lock().unwrap().join("\n")
                )
            },
        );
        match found {
            Some(line) => line,
            None => panic!(
                "{name} exited ({exited:?}) before logging {needle:?}:\n{}",
                self.log()
            ),
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// SIGKILL: no chance to flush or say goodbye. Returns once what it wrote has been read, so
    /// that [`Self::log`] then holds its last lines.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Self::drained(&self.open_streams);
    }

    /// Waits until the readers of an exited process's output reached its end (a grandchild may
    /// hold the pipes open, hence the deadline).
    fn drained(open_streams: &AtomicUsize) {
        poll(Duration::from_secs(5), || {
            (open_streams.load(Ordering::SeqCst) == 0).then_some(())
        });
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let child = &mut self.child;
        if poll(Duration::from_secs(15), || child.try_wait().ok().flatten()).is_none() {
            self.kill9();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn run_output(command: &mut Command) -> Output {
    command.output().expect("command runs")
}

/// A running `bannin-collector serve`.
pub struct Collector {
    pub dir: PathBuf,
    pub addr: String,
    pub proc: Proc,
    pub extra_args: Vec<String>,
}

impl Collector {
    pub fn start(dir: &Path) -> Collector {
        Self::start_with(dir, "127.0.0.1:0", &[])
    }

    pub fn start_with(dir: &Path, listen: &str, extra: &[&str]) -> Collector {
        Self::start_ready_within(dir, listen, extra, Duration::from_secs(30))
    }

    /// Starts and waits up to `ready` for the readiness line: a store holding millions of events
    /// takes the replay at start a while.
    pub fn start_ready_within(
        dir: &Path,
        listen: &str,
        extra: &[&str],
        ready: Duration,
    ) -> Collector {
        let mut command = Command::new(COLLECTOR);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(listen)
            .args(extra);
        let mut proc = Proc::spawn("collector", &mut command);
        let addr = proc.wait_address("listening on ", ready);
        Collector {
            dir: dir.to_path_buf(),
            addr,
            proc,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts again on the same address and data directory (after a kill).
    pub fn restart(&mut self) {
        self.proc.kill9();
        let extra: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let fresh = Collector::start_with(&self.dir, &self.addr, &extra);
        *self = fresh;
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The `--store URL` this collector was started with (a shared PostgreSQL store), if any.
    pub fn store_url(&self) -> Option<&str> {
        self.extra_args
            .windows(2)
            .find(|pair| pair[0] == "--store")
            .map(|pair| pair[1].as_str())
    }

    /// A token in the store this collector uses.
    pub fn token(&self) -> String {
        let mut command = Command::new(COLLECTOR);
        command.args(["token", "create"]);
        match self.store_url() {
            Some(url) => command.args(["--store", url]),
            None => command.arg("--data-dir").arg(&self.dir),
        };
        run_ok(&mut command).trim().to_string()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `events --format json` with extra filter arguments, from the store this collector uses.
    pub fn events(&self, args: &[&str]) -> Vec<serde_json::Value> {
        match self.store_url() {
            Some(url) => store_json(url, "events", &[&["--limit", "10000000"], args].concat()),
            None => events_json(&self.dir, args),
        }
    }

    /// `alerts --format json` with extra filter arguments, from the store this collector uses.
    pub fn alerts(&self, args: &[&str]) -> Vec<serde_json::Value> {
        match self.store_url() {
            Some(url) => store_json(url, "alerts", args),
            None => alerts_json(&self.dir, args),
        }
    }

    pub fn enroll(&self, state_dir: &Path, name: &str) {
        let token = self.token();
        run_ok(
            Command::new(AGENT)
                .arg("enroll")
                .arg("--collector")
                .arg(self.url())
                .arg("--token")
                .arg(&token)
                .arg("--ca-cert")
                .arg(self.ca())
                .arg("--state-dir")
                .arg(state_dir)
                .arg("--name")
                .arg(name),
        );
    }
}

/// A query command's JSON lines from a PostgreSQL store.
pub fn store_json(url: &str, command: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new(COLLECTOR)
            .args([command, "--store", url, "--format", "json"])
            .args(args),
    );
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad json {line}: {e}")))
        .collect()
}

pub fn events_json(data_dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new(COLLECTOR)
            .arg("events")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--format", "json", "--limit", "10000000"])
            .args(args),
    );
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad json {line}: {e}")))
        .collect()
}

/// A running `bannin-agent run`.
pub struct Agent {
    pub state_dir: PathBuf,
    pub proc: Proc,
    pub args: Vec<String>,
}

impl Agent {
    pub fn start(state_dir: &Path, args: &[&str]) -> Agent {
        let mut command = Command::new(AGENT);
        command
            .arg("run")
            .arg("--state-dir")
            .arg(state_dir)
            .args(args);
        let mut proc = Proc::spawn("agent", &mut command);
        // Longer than the agent gives its eBPF loader (30 s) before it falls back and says why:
        // a stalled load is then in the log (with where the loader waited), not a timeout here.
        proc.wait_line("agent running", Duration::from_secs(60));
        Agent {
            state_dir: state_dir.to_path_buf(),
            proc,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn restart(&mut self) {
        self.proc.kill9();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self = Agent::start(&self.state_dir, &args);
    }
}

/// Where most end-to-end tests begin: in a temp dir, a running collector (`collector/`), an
/// agent state directory enrolled under `name` but not started (`agent/`), and an empty directory
/// for it to watch. Destructure it; `tmp` owns the files, so keep it bound.
pub struct Site {
    pub tmp: tempfile::TempDir,
    pub watched: PathBuf,
    pub collector: Collector,
    pub state: PathBuf,
}

impl Site {
    /// `watched` is the watched directory's name in the temp dir.
    pub fn new(name: &str, watched: &str) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(watched);
        std::fs::create_dir(&dir).unwrap();
        let collector = Collector::start(&tmp.path().join("collector"));
        let state = tmp.path().join("agent");
        collector.enroll(&state, name);
        Site {
            tmp,
            watched: dir,
            collector,
            state,
        }
    }
}

/// Every stored event's seq for one agent must be 1..=n exactly once.
pub fn assert_contiguous(events: &[serde_json::Value], agent_id: &str) -> u64 {
    let mut seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["agent_id"] == agent_id)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    let n = seqs.len() as u64;
    let mut dupes = seqs.clone();
    dupes.dedup();
    assert_eq!(dupes.len() as u64, n, "duplicate sequence numbers stored");
    assert_eq!(seqs.first().copied(), Some(1), "first event missing");
    assert_eq!(seqs.last().copied(), Some(n), "gap in sequence numbers");
    n
}

pub fn agent_id(state_dir: &Path) -> String {
    let text = std::fs::read_to_string(state_dir.join("identity.toml")).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value["agent_id"].as_str().unwrap().to_string()
}

// The suites' one HTTP receiver, shared with the collector's delivery tests.
#[allow(dead_code)] // Each suite uses a part of it.
#[path = "../support/http_receiver.rs"]
mod http_receiver;
pub use http_receiver::HttpReceiver;

/// A free loopback port, released for someone else to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real SMTP server (aiosmtpd, tests/support/smtp_sink.py) writing each message as JSON to a dir.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let python =
            std::env::var("BANNIN_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg("--dir")
            .arg(dir.path())
            .args(["--mode", "plain"]);
        let mut proc = Proc::spawn("smtp", &mut command);
        let line = proc.wait_line("listening on 127.0.0.1:", Duration::from_secs(30));
        let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
        SmtpSink { port, dir, proc }
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap());
            }
        }
        out
    }
}

pub fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn alerts_json(data_dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new(COLLECTOR)
            .arg("alerts")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--format", "json"])
            .args(args),
    );
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A private PostgreSQL 15 in a temp dir, run as the `postgres` user, writing csvlog with
/// connections, disconnections, every statement and (where installed) pgaudit with row counts.
pub struct Postgres {
    pub port: u16,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
    proc: Proc,
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn pgaudit_installed() -> bool {
    Path::new("/usr/lib/postgresql/15/lib/pgaudit.so").exists()
}

impl Postgres {
    pub fn start() -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        run_ok(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
        );
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        );
        let mut conf = String::from(
            "logging_collector = on\nlog_destination = 'csvlog'\nlog_directory = 'log'\n\
             log_connections = on\nlog_disconnections = on\nlog_statement = 'all'\n\
             listen_addresses = '127.0.0.1'\n",
        );
        if pgaudit_installed() {
            conf.push_str(
                "shared_preload_libraries = 'pgaudit'\npgaudit.log = 'read,write'\n\
                 pgaudit.log_relation = on\npgaudit.log_rows = on\n",
            );
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        let port = free_port();
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path());
        let proc = Proc::spawn("postgres", &mut command);
        let pg = Postgres {
            port,
            data,
            _dir: dir,
            proc,
        };
        wait_for(
            "postgres to accept connections",
            Duration::from_secs(60),
            || {
                Command::new("pg_isready")
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
            },
        );
        if pgaudit_installed() {
            pg.psql("CREATE EXTENSION IF NOT EXISTS pgaudit;");
        }
        pg
    }

    /// Runs SQL with psql over TCP as `user` (a real client session).
    pub fn psql_as(&self, user: &str, sql: &str) -> String {
        run_ok(
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    user,
                ])
                .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        )
    }

    pub fn psql(&self, sql: &str) -> String {
        self.psql_as("postgres", sql)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
        self.proc.kill9();
    }
}

/// A TLS channel to the collector that pins its CA, with a client identity (cert, key) or none.
pub async fn channel(
    collector: &Collector,
    identity: Option<(&str, &str)>,
) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let ca = std::fs::read_to_string(collector.ca()).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(bannin::pki::SERVER_NAME);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(collector.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A collector (with `collector_toml`) and one real agent watching `watched`.
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub collector: Collector,
    pub watched: PathBuf,
    _agent: Agent,
}

pub fn fleet(collector_toml: &str, agent_name: &str) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("exports");
    std::fs::create_dir(&watched).unwrap();
    let config = tmp.path().join("collector.toml");
    private_file(&config, collector_toml);
    let collector = Collector::start_with(
        &tmp.path().join("collector"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
    );
    let state = tmp.path().join("agent");
    collector.enroll(&state, agent_name);
    let agent = Agent::start(&state, &["--watch", watched.to_str().unwrap()]);
    Fleet {
        tmp,
        collector,
        watched,
        _agent: agent,
    }
}

/// A tmpfs of `size` mounted on a fresh directory (the tests run as root); unmounted when dropped,
/// even after a failure. A filesystem of the test's own: to fill it, or to keep a flood of events
/// from the fanotify groups of other tests' agents, which mark their whole filesystem.
pub struct Tmpfs {
    path: PathBuf,
    /// The directory [`Tmpfs::mount`] made for it, removed once unmounted.
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Tmpfs::mount_on(dir.path(), size);
        fs._dir = Some(dir);
        fs
    }

    /// A tmpfs of `size` on `path`, made if need be.
    pub fn mount_on(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test needs root)"
        );
        Tmpfs {
            path: path.to_path_buf(),
            _dir: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes an unprivileged writer could still write.
    pub fn free_bytes(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.path).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }

    /// Writes a ballast file until the filesystem refuses more.
    pub fn fill(&self) -> PathBuf {
        self.fill_as("ballast")
    }

    /// [`Self::fill`] into a file of that name.
    pub fn fill_as(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("ballast: {e}"),
            }
        }
        let _ = file.sync_all();
        path
    }
}

/// Lazily, so a straggling process cannot block it.
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A plain HTTP GET (the metrics endpoint's): the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (code, body)
}

/// `bannin-collector verify` on a data directory: whether it passed, and its report (with what
/// it printed on stderr after it, if anything).
pub fn verify(dir: &Path) -> (bool, String) {
    let out = run_output(
        Command::new(COLLECTOR)
            .args(["verify", "--data-dir"])
            .arg(dir),
    );
    let mut report = String::from_utf8_lossy(&out.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), report)
}
