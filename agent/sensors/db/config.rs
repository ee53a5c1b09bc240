//! The `[[database]]` sections of the agent's configuration, and their validated form.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::DbError;

/// One database whose audit log the agent follows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Which server writes the log: "postgresql" or "mariadb". Required.
    pub kind: DbKind,
    /// PostgreSQL: its log_directory, or its data directory (the one holding `current_logfiles`).
    /// MariaDB: the server_audit log file, or the directory holding `server_audit.log`. Required.
    pub log: PathBuf,
    /// MariaDB only: the slow query log (`long_query_time = 0`), read for the rows each statement
    /// sent. Default: none, so MariaDB events carry no row counts.
    #[serde(default)]
    pub slow_log: Option<PathBuf>,
    /// PostgreSQL only: "auto" (follow whichever of csvlog and jsonlog the server writes, csvlog
    /// first), "csvlog" or "jsonlog". Default "auto".
    #[serde(default)]
    pub format: PgFormat,
    /// Tables whose rows are counted into running totals, as "schema.table" ("public.customers",
    /// "shop.customers"); a bare "customers" matches that table in any schema. Default: none.
    #[serde(default)]
    pub sensitive_tables: Vec<String>,
    /// Database users whose dump sessions are expected (a nightly backup): their dumps are still
    /// reported but not added to the sensitive-row totals. Default: none.
    #[serde(default)]
    pub dump_users_allowed: Vec<String>,
    /// Statements longer than this many bytes are cut, with a marker saying how long they were.
    /// Default 4096.
    #[serde(default = "default_max_statement_len")]
    pub max_statement_len: usize,
    /// How often the log is checked for new lines, e.g. "500ms" or "2s". Default "1s".
    #[serde(default = "default_poll_interval", with = "bannin::time::duration_str")]
    pub poll_interval: Duration,
    /// Where to begin in a log the agent has never read: "end" (only what is written from now on)
    /// or "beginning". Logs that appear later (rotation) are always read from their beginning.
    /// Default "end".
    #[serde(default)]
    pub start_at: StartAt,
    /// A name for this database, unique among the `[[database]]` sections; it keys the saved read
    /// position. Default: the kind and the log path, e.g. "postgresql:/var/lib/postgresql/15/main".
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    Postgresql,
    Mariadb,
}

impl DbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Postgresql => "postgresql",
            DbKind::Mariadb => "mariadb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgFormat {
    #[default]
    Auto,
    Csvlog,
    Jsonlog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    End,
    Beginning,
}

fn default_max_statement_len() -> usize {
    4096
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

/// A checked [`DatabaseConfig`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub kind: DbKind,
    pub log: PathBuf,
    pub slow_log: Option<PathBuf>,
    pub format: PgFormat,
    /// Lowercased; entries without a schema match any schema.
    pub sensitive_tables: Vec<String>,
    pub dump_users_allowed: BTreeSet<String>,
    pub max_statement_len: usize,
    pub poll_interval: Duration,
    pub start_at: StartAt,
}

impl Settings {
    /// The sensitive tables among `tables` (which are schema-qualified where known).
    pub fn sensitive<'a>(&self, tables: &'a [String]) -> Vec<&'a String> {
        tables
            .iter()
            .filter(|table| {
                let table = table.to_ascii_lowercase();
                let bare = table.rsplit('.').next().unwrap_or(&table);
                self.sensitive_tables
                    .iter()
                    .any(|s| *s == table || (!s.contains('.') && s == bare))
            })
            .collect()
    }
}

/// Checks every section and gives each its name; names must be unique.
pub fn settings(configs: Vec<DatabaseConfig>) -> Result<Vec<Settings>, DbError> {
    let mut names = BTreeSet::new();
    let mut settings = Vec::with_capacity(configs.len());
    for config in configs {
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", config.kind.as_str(), config.log.display()));
        let invalid = |reason: String| DbError::Config {
            name: name.clone(),
            reason,
        };
        if config.max_statement_len < 64 {
            return Err(invalid(format!(
                "max_statement_len {} is below the minimum of 64",
                config.max_statement_len
            )));
        }
        if config.max_statement_len > super::tail::MAX_RECORD / 2 {
            return Err(invalid(format!(
                "max_statement_len {} is above the maximum of {}",
                config.max_statement_len,
                super::tail::MAX_RECORD / 2
            )));
        }
        if config.poll_interval.is_zero() {
            return Err(invalid("poll_interval must be above zero".to_string()));
        }
        if config.kind == DbKind::Postgresql && config.slow_log.is_some() {
            return Err(invalid("slow_log is for mariadb only".to_string()));
        }
        if config.kind == DbKind::Mariadb && config.format != PgFormat::Auto {
            return Err(invalid("format is for postgresql only".to_string()));
        }
        if !names.insert(name.clone()) {
            return Err(invalid(
                "two [[database]] sections have this name".to_string(),
            ));
        }
        settings.push(Settings {
            name,
            kind: config.kind,
            log: config.log,
            slow_log: config.slow_log,
            format: config.format,
            sensitive_tables: config
                .sensitive_tables
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
            dump_users_allowed: config.dump_users_allowed.into_iter().collect(),
            max_statement_len: config.max_statement_len,
            poll_interval: config.poll_interval,
            start_at: config.start_at,
        });
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_section_gets_documented_defaults_and_unknown_keys_are_named() {
        let config: DatabaseConfig =
            toml::from_str("kind = \"mariadb\"\nlog = \"/var/lib/mysql\"\n").unwrap();
        assert_eq!(config.max_statement_len, 4096);
        assert_eq!(config.poll_interval, Duration::from_secs(1));
        assert_eq!(config.start_at, StartAt::End);
        let checked = settings(vec![config]).unwrap();
        assert_eq!(checked[0].name, "mariadb:/var/lib/mysql");

        let error = toml::from_str::<DatabaseConfig>(
            "kind = \"postgresql\"\nlog = \"/x\"\nsensitive_table = []\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("sensitive_table"), "{error}");
    }

    #[test]
    fn sensitive_tables_match_qualified_or_bare_and_names_must_be_unique() {
        let config: DatabaseConfig = toml::from_str(
            "kind = \"postgresql\"\nlog = \"/x\"\nsensitive_tables = [\"public.Customers\", \"cards\"]\npoll_interval = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        let checked = settings(vec![config.clone()]).unwrap();
        let tables = vec![
            "public.customers".to_string(),
            "billing.cards".to_string(),
            "other.customers".to_string(),
        ];
        assert_eq!(checked[0].sensitive(&tables), vec![&tables[0], &tables[1]]);
        assert!(settings(vec![config.clone(), config]).is_err());
    }
}
