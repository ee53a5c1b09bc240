//! Running totals of rows read from sensitive tables, per session and per user.
//!
//! Database activity monitors carry these forward so that exfiltration in chunks (a thousand rows
//! at a time) adds up to what it is. This is also where a finished draft gets its export method:
//! dump tools are known by their application name or statement shape, and a read of a whole
//! sensitive table is a `full_table_read`. When a full read does not say its rows (pgaudit counts
//! none for COPY) the table's size is estimated from the largest full read of it seen so far.

use std::collections::HashMap;

use bannin::event::DbEvent;
use serde::{Deserialize, Serialize};

use super::config::Settings;
use super::draft::{Action, Draft};
use super::statement::{ExportMethod, Kind};

/// Application names dump tools connect with.
const DUMP_APPLICATIONS: &[&str] = &["pg_dump", "pg_dumpall", "mysqldump", "mariadb-dump"];
/// Most sessions whose totals are remembered; the least recently active go first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SessionTotal {
    rows: u64,
    last_active: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    sessions: HashMap<String, SessionTotal>,
    users: HashMap<String, u64>,
    /// The most rows a full read of each sensitive table returned.
    table_rows: HashMap<String, u64>,
    clock: u64,
}

impl Totals {
    /// Completes a draft into the event to send.
    pub fn finish(&mut self, settings: &Settings, draft: Draft) -> DbEvent {
        let mut event = draft.event;
        event.action = draft.action.into();
        match draft.action {
            Action::Connect => {}
            Action::Disconnect => {
                if let Some(session) = self.sessions.remove(&event.session) {
                    event.session_sensitive_rows = Some(session.rows);
                    event.user_sensitive_rows = self.users.get(&event.db_user).copied();
                }
            }
            Action::Query => self.count_query(
                settings,
                &mut event,
                draft.kind,
                draft.unfiltered,
                draft.dump_shape,
            ),
        }
        event
    }

    fn count_query(
        &mut self,
        settings: &Settings,
        event: &mut DbEvent,
        kind: Kind,
        unfiltered: bool,
        dump_shape: bool,
    ) {
        let sensitive: Vec<String> = settings
            .sensitive(&event.tables)
            .into_iter()
            .cloned()
            .collect();
        let reads = matches!(kind, Kind::Read | Kind::Export) && !event.failed;
        let dump_application = DUMP_APPLICATIONS.contains(&event.application.as_str());
        let dump = reads
            && (dump_shape
                || (dump_application
                    && (event.export_method == ExportMethod::CopyToStdout.as_str()
                        || event.statement.contains("_pg_dump_cursor"))));
        if dump {
            event.export_method = ExportMethod::DumpTool.as_str().to_string();
            event.statement_kind = Kind::Export.as_str().to_string();
        } else if reads && unfiltered && !sensitive.is_empty() && event.export_method.is_empty() {
            event.export_method = ExportMethod::FullTableRead.as_str().to_string();
        }
        event.sensitive_tables = sensitive.clone();
        if sensitive.is_empty() || !reads {
            return;
        }

        let counted = match event.rows {
            Some(rows) => {
                if unfiltered && sensitive.len() == 1 && event.tables.len() == 1 {
                    let known = self.table_rows.entry(sensitive[0].clone()).or_default();
                    *known = (*known).max(rows);
                }
                rows
            }
            None if unfiltered => sensitive
                .iter()
                .filter_map(|t| self.table_rows.get(t))
                .sum(),
            None => 0,
        };
        let expected_dump = dump && settings.dump_users_allowed.contains(&event.db_user);
        let added = if expected_dump { 0 } else { counted };

        self.clock += 1;
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&event.session) {
            self.evict();
        }
        let session = self.sessions.entry(event.session.clone()).or_default();
        session.rows = session.rows.saturating_add(added);
        session.last_active = self.clock;
        let session_rows = session.rows;
        let user = self.users.entry(event.db_user.clone()).or_default();
        *user = user.saturating_add(added);
        event.session_sensitive_rows = Some(session_rows);
        event.user_sensitive_rows = Some(*user);
    }

    fn evict(&mut self) {
        let mut ages: Vec<u64> = self.sessions.values().map(|s| s.last_active).collect();
        ages.sort_unstable();
        let cutoff = ages.get(MAX_SESSIONS / 10).copied().unwrap_or(u64::MAX);
        self.sessions.retain(|_, s| s.last_active > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::db::config::{self, DatabaseConfig};
    use crate::sensors::db::draft::{ParseCtx, draft_query};
    use crate::sensors::db::statement::Dialect;
    use bannin::event::DbAction;
    use bannin::time::Timestamp;

    fn settings() -> Settings {
        let config: DatabaseConfig = toml::from_str(
            "kind = \"postgresql\"\nlog = \"/x\"\nsensitive_tables = [\"public.customers\"]\ndump_users_allowed = [\"backup\"]\n",
        )
        .unwrap();
        config::settings(vec![config]).unwrap().remove(0)
    }

    fn query(user: &str, session: &str, app: &str, sql: &str, rows: Option<u64>) -> Draft {
        let mut event = DbEvent::new(DbAction::Query, "postgresql");
        event.db_user = user.into();
        event.session = session.into();
        event.application = app.into();
        let ctx = ParseCtx {
            server: "pg".into(),
            max_statement_len: 4096,
        };
        let mut draft = draft_query(Timestamp::now(), event, sql, Dialect::Postgres, &ctx);
        draft.event.rows = rows;
        draft
    }

    #[test]
    fn chunked_reads_add_up_per_session_and_per_user() {
        let settings = settings();
        let mut totals = Totals::default();
        let mut last = None;
        for (i, session) in ["s1", "s1", "s2"].iter().enumerate() {
            let sql = format!("SELECT * FROM customers WHERE id > {} LIMIT 1000", i * 1000);
            last = Some(totals.finish(
                &settings,
                query("mallory", session, "psql", &sql, Some(1000)),
            ));
        }
        let last = last.unwrap();
        assert_eq!(
            last.session_sensitive_rows,
            Some(1000),
            "a new session starts at zero"
        );
        assert_eq!(
            last.user_sensitive_rows,
            Some(3000),
            "the user's reads add up"
        );
        let other = totals.finish(
            &settings,
            query(
                "alice",
                "s3",
                "psql",
                "SELECT 1 FROM customers WHERE id = 1",
                Some(1),
            ),
        );
        assert_eq!(other.user_sensitive_rows, Some(1));
        let unrelated = totals.finish(
            &settings,
            query("mallory", "s1", "psql", "SELECT * FROM orders", Some(50)),
        );
        assert_eq!(unrelated.session_sensitive_rows, None);
        assert!(unrelated.sensitive_tables.is_empty());

        let mut end = DbEvent::new(DbAction::Disconnect, "postgresql");
        end.db_user = "mallory".into();
        end.session = "s1".into();
        let end = totals.finish(
            &settings,
            Draft::new(Timestamp::now(), Action::Disconnect, end),
        );
        assert_eq!(end.session_sensitive_rows, Some(2000));
        assert_eq!(end.user_sensitive_rows, Some(3000));
    }

    #[test]
    fn full_reads_without_rows_count_the_known_table_size_and_allowed_dumps_do_not_add() {
        let settings = settings();
        let mut totals = Totals::default();
        let full = totals.finish(
            &settings,
            query("alice", "s1", "psql", "SELECT * FROM customers", Some(500)),
        );
        assert_eq!(full.export_method, "full_table_read");
        let copy = totals.finish(
            &settings,
            query(
                "alice",
                "s1",
                "psql",
                "COPY customers TO '/tmp/x.csv'",
                None,
            ),
        );
        assert_eq!(copy.export_method, "copy_to_file");
        assert_eq!(
            copy.session_sensitive_rows,
            Some(1000),
            "the COPY counts the 500 rows the table has"
        );

        let sql = "COPY public.customers (id, name) TO stdout;";
        let backup = totals.finish(&settings, query("backup", "s2", "pg_dump", sql, None));
        assert_eq!(backup.export_method, "dump_tool");
        assert_eq!(
            backup.user_sensitive_rows,
            Some(0),
            "expected backups do not add up"
        );
        let thief = totals.finish(&settings, query("mallory", "s3", "backup-tool", sql, None));
        assert_eq!(
            thief.export_method, "dump_tool",
            "known by its statement shape"
        );
        assert_eq!(thief.user_sensitive_rows, Some(500));
    }
}
