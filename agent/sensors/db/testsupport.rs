//! Private PostgreSQL 15 and MariaDB servers for tests: temp directories, free ports, sockets in
//! the temp directory, audit logging on, killed on drop. Written so it can move into the
//! integration test harness unchanged.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PGAUDIT: &str = "/usr/lib/postgresql/15/lib/pgaudit.so";

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn check(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgLog {
    Csv,
    Json,
}

/// A PostgreSQL 15 cluster run by the `postgres` user in its own temp directory.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    pub pgaudit: bool,
}

impl PgServer {
    /// Starts a cluster with the logging collector writing `format`, connections,
    /// disconnections and every statement logged, and pgaudit (read, write, rows) when installed.
    pub fn start(format: PgLog) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("bannin-pg")
            .tempdir()
            .expect("temp dir");
        let user = nix::unistd::User::from_name("postgres")
            .expect("look up postgres")
            .expect("a postgres user");
        std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .expect("chown temp dir");
        let data = dir.path().join("data");
        check(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        );
        let port = free_port();
        let pgaudit = Path::new(PGAUDIT).exists();
        let destination = match format {
            PgLog::Csv => "csvlog",
            PgLog::Json => "jsonlog",
        };
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             logging_collector = on\nlog_destination = '{destination}'\nlog_directory = 'log'\n\
             log_connections = on\nlog_disconnections = on\nlog_statement = 'all'\n\
             log_rotation_size = 0\nlog_rotation_age = 0\n",
            dir.path().display()
        );
        if pgaudit {
            conf.push_str(
                "shared_preload_libraries = 'pgaudit'\npgaudit.log = 'read,write'\npgaudit.log_rows = on\n",
            );
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        let server = PgServer {
            dir,
            data,
            port,
            pgaudit,
        };
        // -w waits until the server accepts connections.
        check(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/pg_ctl"))
                .args(["-w", "-t", "60", "-D"])
                .arg(&server.data)
                .arg("-l")
                .arg(server.dir.path().join("server.log"))
                .arg("start"),
        );
        if pgaudit {
            server.psql(
                "setup",
                "postgres",
                &["CREATE EXTENSION IF NOT EXISTS pgaudit"],
            );
        }
        server
    }

    /// Runs each of `sqls` in one psql session over TCP as `user` with application name `app`;
    /// panics on failure.
    pub fn psql(&self, app: &str, user: &str, sqls: &[&str]) -> String {
        check(&mut self.psql_command(app, user, sqls))
    }

    /// Runs `sqls` and returns the output whatever the outcome (for failures on purpose).
    pub fn psql_output(&self, app: &str, user: &str, sqls: &[&str]) -> Output {
        run(&mut self.psql_command(app, user, sqls))
    }

    fn psql_command(&self, app: &str, user: &str, sqls: &[&str]) -> Command {
        let mut command = Command::new(format!("{PG_BIN}/psql"));
        command
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", user, "-d", "postgres"])
            .env("PGAPPNAME", app)
            .stdin(Stdio::null());
        for sql in sqls {
            command.arg("-c").arg(sql);
        }
        command
    }

    pub fn pg_dump(&self, table: &str) -> String {
        check(
            Command::new(format!("{PG_BIN}/pg_dump"))
                .args(["-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .args(["-U", "postgres", "-t", table, "postgres"]),
        )
    }

    /// Asks the logging collector to start a new log file.
    pub fn rotate(&self) {
        self.psql("rotate", "postgres", &["SELECT pg_rotate_logfile()"]);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A MariaDB server run as root in its own temp directory, with server_audit logging
/// connections, queries and tables, and a slow log with every statement.
pub struct MariaServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl MariaServer {
    pub fn start() -> MariaServer {
        let dir = tempfile::Builder::new()
            .prefix("bannin-maria")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        check(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--user=root", "--auth-root-authentication-method=normal"]),
        );
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", path("sock")))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-name-resolve")
            .arg("--plugin-load-add=server_audit")
            .arg("--server-audit-logging=ON")
            .arg("--server-audit-events=CONNECT,QUERY,TABLE")
            .arg(format!(
                "--server-audit-file-path={}",
                path("server_audit.log")
            ))
            .arg("--slow-query-log=ON")
            .arg(format!("--slow-query-log-file={}", path("slow.log")))
            .arg("--long-query-time=0")
            .arg(format!("--secure-file-priv={}", dir.path().display()))
            .arg(format!("--log-error={}", path("error.log")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut server = MariaServer { dir, port, child };
        server.wait_ready();
        server
    }

    /// Pings every 100 ms, 300 times at most. This file is shared with the integration tests
    /// (`#[path]`), so it keeps its own bounded loop instead of either binary's wait helper.
    #[expect(
        clippy::disallowed_methods,
        reason = "a synchronous test polls a server from a plain thread, a bounded number of times"
    )]
    fn wait_ready(&mut self) {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mariadbd exited with {status}");
            }
            let ping = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", "ping"])
                .output();
            if ping.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mariadbd did not become ready");
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("server_audit.log")
    }

    pub fn slow_log(&self) -> PathBuf {
        self.dir.path().join("slow.log")
    }

    /// Runs `sql` as root over the socket; panics on failure.
    pub fn sql(&self, sql: &str) -> String {
        check(&mut self.client("root", None, sql))
    }

    /// Runs `sql` over TCP as `user` with `password`, whatever the outcome.
    pub fn sql_as(&self, user: &str, password: &str, sql: &str) -> Output {
        run(&mut self.client(user, Some(password), sql))
    }

    fn client(&self, user: &str, password: Option<&str>, sql: &str) -> Command {
        let mut command = Command::new("mariadb");
        command.arg("--no-defaults");
        match password {
            Some(password) => {
                command
                    .args(["-h", "127.0.0.1", "-P"])
                    .arg(self.port.to_string())
                    .arg(format!("-u{user}"))
                    .arg(format!("-p{password}"));
            }
            None => {
                command
                    .arg(format!("--socket={}", self.socket().display()))
                    .arg(format!("-u{user}"));
            }
        }
        command.arg("-e").arg(sql);
        command
    }

    pub fn mysqldump(&self, database: &str) -> String {
        check(
            Command::new("mysqldump")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-uroot", database]),
        )
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
