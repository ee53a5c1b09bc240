//! A private database on the machine's PostgreSQL (127.0.0.1:5432, trust auth), dropped when done:
//! the PostgreSQL store's tests and benchmarks each take one. Included with `#[path]`.

use std::path::Path;
use std::process::Command;

/// The files collectors sharing a store share (README: "Several collectors"): the CA, the server
/// certificate and the collector's signing key.
pub const SHARED_KEYS: &[&str] = &[
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "collector.key",
];

/// Makes `to` (created, private) a data directory holding the keys of the collector in `from`, as
/// a second collector on the same store is given them.
pub fn share_keys(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for name in SHARED_KEYS {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// A database of its own on the machine's PostgreSQL, dropped afterwards.
pub struct PgDb {
    pub name: String,
    pub url: String,
    /// Whether it is dropped with this value (a benchmark may keep a loaded one).
    pub drop_on_exit: bool,
}

/// Runs `sql` in `database` with `psql`; returns its unaligned output, trimmed. A failure stops.
pub fn psql(database: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([
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
        ])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The store URL of database `name` on the machine's PostgreSQL.
pub fn url_of(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

impl PgDb {
    /// A new database with a random name.
    pub fn create() -> PgDb {
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).unwrap();
        PgDb::named(&format!("bannin_test_{}", hex::encode(random)))
    }

    /// A new database called `name` (which must not exist yet).
    pub fn named(name: &str) -> PgDb {
        psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDb {
            url: url_of(name),
            name: name.to_string(),
            drop_on_exit: true,
        }
    }

    /// The database `name` if it exists (kept afterwards), or `None`.
    pub fn existing(name: &str) -> Option<PgDb> {
        let found = psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        );
        (found == "1").then(|| PgDb {
            url: url_of(name),
            name: name.to_string(),
            drop_on_exit: false,
        })
    }

    pub fn query(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if !self.drop_on_exit {
            return;
        }
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
