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
use super::statement::{ExportMethod, Kind};
use super::{Action, Draft};

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
