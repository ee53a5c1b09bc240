//! MariaDB 10.11 server_audit lines and slow-log entries, and the state that joins them.
//!
//! server_audit writes a connection's table records (READ, WRITE, ...) before the QUERY record of
//! the same query id, so they are buffered per connection and folded into that query. It logs no
//! rows; when a slow log (`long_query_time = 0`) is configured, each query waits (at most one
//! quiet poll) for the slow-log entry of the same thread and text, which says Rows_sent.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bannin::event::DbEvent;
use bannin::time::Timestamp;
use serde::{Deserialize, Serialize};

use super::draft::{Action, Draft, ParseCtx, draft_query};
use super::statement::{Dialect, Kind};

/// One server_audit line.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditLine {
    pub server: String,
    pub user: String,
    pub host: String,
    pub connection: u64,
    pub query_id: u64,
    pub operation: String,
    pub database: String,
    /// The table for table records, the unescaped query text for QUERY.
    pub object: String,
    pub retcode: i64,
    /// The line was cut; `object` holds only the head of the query.
    pub truncated: bool,
}

/// Parses `20261121 08:18:20,vm,root,localhost,3,4,QUERY,shop,'select ...',0`. `tail` is the end
/// of a line that was cut (empty otherwise): the return code is read from it.
pub fn parse_audit_line(head: &[u8], tail: &[u8]) -> Option<AuditLine> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.splitn(9, ',');
    let stamp = parts.next()?;
    if stamp.len() != 17 || !stamp.as_bytes()[..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let server = parts.next()?.to_string();
    let user = parts.next()?.to_string();
    let host = parts.next()?.to_string();
    let connection = parts.next()?.parse().ok()?;
    let query_id = parts.next()?.parse().ok()?;
    let operation = parts.next()?.to_string();
    if operation.is_empty()
        || !operation
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_')
    {
        return None;
    }
    let database = parts.next()?.to_string();
    let rest = parts.next()?;
    let truncated = !tail.is_empty();
    let (object, retcode) = if let Some(quoted) = rest.strip_prefix('\'') {
        let (body, after) = split_quoted(quoted);
        let retcode = if truncated {
            let tail = String::from_utf8_lossy(tail);
            tail.rsplit_once(',')
                .and_then(|(_, code)| code.trim().parse().ok())
                .unwrap_or(0)
        } else {
            after?.strip_prefix(',')?.trim().parse().unwrap_or(0)
        };
        (unescape(body), retcode)
    } else {
        let (object, code) = rest.rsplit_once(',')?;
        (object.to_string(), code.trim().parse().unwrap_or(0))
    };
    Some(AuditLine {
        server,
        user,
        host,
        connection,
        query_id,
        operation,
        database,
        object,
        retcode,
        truncated,
    })
}

/// Splits `body',rest` at the closing quote (backslash escapes inside); `None` rest when the
/// quote never closes.
fn split_quoted(text: &str) -> (&str, Option<&str>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\'' => return (&text[..i], Some(&text[i + 1..])),
            _ => i += 1,
        }
    }
    (text, None)
}

fn unescape(text: &str) -> String {
    if !text.contains('\\') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The part of a statement the slow log and the audit log agree on.
fn statement_key(text: &str) -> u64 {
    let trimmed = text.trim().trim_end_matches(';').trim_end();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    trimmed.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SlowEntry {
    key: u64,
    rows_sent: u64,
    rows_affected: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SlowPartial {
    thread: Option<u64>,
    rows_sent: u64,
    rows_affected: u64,
    statement: String,
    started: bool,
}

/// A draft in the queue that keeps log order while queries wait for their rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    draft: Draft,
    connection: u64,
    /// The statement key to find in the slow log; `None` for drafts that only keep their place.
    key: Option<u64>,
    age: u32,
}

/// Tables touched by internal statistics reads on every write; they say nothing about the user.
const STATS_TABLES: &[&str] = &[
    "mysql.table_stats",
    "mysql.column_stats",
    "mysql.index_stats",
];
/// Per connection, table records remembered while waiting for their QUERY record.
const MAX_TABLE_RECORDS: usize = 256;
/// Slow-log entries kept per thread while waiting for their audit record.
const MAX_SLOW_PER_THREAD: usize = 256;
const MAX_THREADS: usize = 10_000;

/// What the sensor remembers between lines (and across restarts) for one MariaDB server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tracker {
    tables: HashMap<u64, Vec<(u64, String)>>,
    held: VecDeque<Held>,
    slow: HashMap<u64, VecDeque<SlowEntry>>,
    partial: SlowPartial,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Garbled;

impl Tracker {
    /// One server_audit line; finished drafts go to `out`, queries wait in the tracker when
    /// `rows_expected` (a slow log is configured).
    pub fn handle_audit(
        &mut self,
        line: AuditLine,
        ctx: &ParseCtx,
        rows_expected: bool,
        out: &mut Vec<Draft>,
    ) -> Result<(), Garbled> {
        let ts = Timestamp::now();
        match line.operation.as_str() {
            "CONNECT" | "CHANGEUSER" | "FAILED_CONNECT" => {
                let mut event = base_event(&line, ctx, Action::Connect);
                if line.operation == "FAILED_CONNECT" || line.retcode != 0 {
                    event.failed = true;
                    event.error = error_text(line.retcode);
                }
                self.queue(
                    Draft::new(ts, Action::Connect, event),
                    line.connection,
                    None,
                    out,
                );
            }
            "DISCONNECT" => {
                self.tables.remove(&line.connection);
                let event = base_event(&line, ctx, Action::Disconnect);
                // Behind the session's waiting queries, so its totals include them.
                self.queue(
                    Draft::new(ts, Action::Disconnect, event),
                    line.connection,
                    None,
                    out,
                );
            }
            "QUERY" => {
                let recorded = self.tables.remove(&line.connection).unwrap_or_default();
                let event = base_event(&line, ctx, Action::Query);
                let mut draft = draft_query(ts, event, &line.object, Dialect::MariaDb, ctx);
                for (query_id, table) in recorded {
                    if query_id == line.query_id
                        && !STATS_TABLES.contains(&table.as_str())
                        && !draft.event.tables.contains(&table)
                    {
                        draft.event.tables.push(table);
                    }
                }
                if line.retcode != 0 {
                    draft.event.failed = true;
                    draft.event.error = error_text(line.retcode);
                }
                let counted = matches!(draft.kind, Kind::Read | Kind::Write | Kind::Export);
                let key = (rows_expected && counted && line.retcode == 0)
                    .then(|| statement_key(&line.object));
                self.queue(draft, line.connection, key, out);
            }
            "READ" | "WRITE" | "CREATE" | "ALTER" | "RENAME" | "DROP" => {
                let records = self.tables.entry(line.connection).or_default();
                if records.len() < MAX_TABLE_RECORDS {
                    records.push((line.query_id, format!("{}.{}", line.database, line.object)));
                }
            }
            _ => return Err(Garbled),
        }
        Ok(())
    }

    /// One slow-log line. Entries are finished by the next entry's header or by [`Self::tick`].
    pub fn handle_slow(&mut self, line: &str) {
        if line.starts_with("# User@Host:") {
            self.finish_slow();
            self.partial.started = true;
        } else if let Some(rest) = line.strip_prefix("# Thread_id: ") {
            self.partial.thread = rest.split_whitespace().next().and_then(|t| t.parse().ok());
        } else if line.starts_with("# Query_time:") {
            self.partial.rows_sent = field_after(line, "Rows_sent:").unwrap_or(0);
        } else if line.starts_with("# Rows_affected:") {
            self.partial.rows_affected = field_after(line, "Rows_affected:").unwrap_or(0);
        } else if line.starts_with("# ") {
        } else if self.partial.started {
            let setup = self.partial.statement.is_empty()
                && (line.starts_with("SET timestamp=") || line.starts_with("use "));
            if !setup {
                if !self.partial.statement.is_empty() {
                    self.partial.statement.push('\n');
                }
                self.partial.statement.push_str(line);
            }
        }
    }

    fn finish_slow(&mut self) {
        let partial = std::mem::take(&mut self.partial);
        let Some(thread) = partial.thread else {
            return;
        };
        if partial.statement.is_empty() {
            return;
        }
        if self.slow.len() >= MAX_THREADS && !self.slow.contains_key(&thread) {
            self.slow.clear();
        }
        let queue = self.slow.entry(thread).or_default();
        if queue.len() >= MAX_SLOW_PER_THREAD {
            queue.pop_front();
        }
        queue.push_back(SlowEntry {
            key: statement_key(&partial.statement),
            rows_sent: partial.rows_sent,
            rows_affected: partial.rows_affected,
        });
    }

    /// After each poll: finishes the slow-log entry in progress (the server writes an entry in
    /// one go), joins waiting queries with their rows, and lets go of those that waited a poll.
    pub fn tick(&mut self, out: &mut Vec<Draft>) {
        self.finish_slow();
        for held in &mut self.held {
            held.age += 1;
        }
        self.release(out);
    }

    fn queue(&mut self, draft: Draft, connection: u64, key: Option<u64>, out: &mut Vec<Draft>) {
        if key.is_none() && self.held.is_empty() {
            out.push(draft);
            return;
        }
        self.held.push_back(Held {
            draft,
            connection,
            key,
            age: 0,
        });
        self.release(out);
    }

    fn take_slow(&mut self, connection: u64, key: u64) -> Option<SlowEntry> {
        let queue = self.slow.get_mut(&connection)?;
        let at = queue.iter().position(|e| e.key == key)?;
        let entry = queue.remove(at);
        // Entries before it belong to statements the audit log did not show.
        queue.drain(..at);
        entry
    }

    /// Hands on waiting queries in log order, up to the first one still within its wait.
    fn release(&mut self, out: &mut Vec<Draft>) {
        while let Some(front) = self.held.front() {
            let (connection, key, age) = (front.connection, front.key, front.age);
            let found = key.and_then(|key| self.take_slow(connection, key));
            if key.is_some() && found.is_none() && age < 2 {
                break;
            }
            if let Some(held) = self.held.pop_front() {
                out.push(with_rows(held.draft, found));
            }
        }
    }
}

fn with_rows(mut draft: Draft, found: Option<SlowEntry>) -> Draft {
    if let Some(entry) = found {
        draft.event.rows = Some(match draft.kind {
            Kind::Write => entry.rows_affected,
            _ => entry.rows_sent,
        });
    }
    draft
}

fn field_after(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)?;
    line[at + name.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn error_text(code: i64) -> String {
    match code {
        1045 => "access denied (error 1045)".to_string(),
        1044 => "access denied to database (error 1044)".to_string(),
        1049 => "unknown database (error 1049)".to_string(),
        code => format!("error {code}"),
    }
}

fn base_event(line: &AuditLine, ctx: &ParseCtx, action: Action) -> DbEvent {
    let mut event = DbEvent::new(action.into(), "mariadb");
    event.db_user = line.user.clone();
    event.database = line.database.clone();
    event.client_addr = line.host.clone();
    event.session = line.connection.to_string();
    event.server = if line.server.is_empty() {
        ctx.server.clone()
    } else {
        line.server.clone()
    };
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_parse_quoted_escaped_queries_and_table_records() {
        let line = parse_audit_line(
            br"20261121 08:27:13,vm,root,localhost,4,9,QUERY,shop,'SELECT \'it\'\'s\', \'multi\nline\'',0",
            b"",
        )
        .unwrap();
        assert_eq!(line.object, "SELECT 'it''s', 'multi\nline'");
        assert_eq!((line.connection, line.query_id, line.retcode), (4, 9, 0));
        let read = parse_audit_line(
            b"20261121 08:27:13,vm,root,localhost,4,7,READ,shop,customers,",
            b"",
        )
        .unwrap();
        assert_eq!(read.object, "customers");
        let failed = parse_audit_line(
            b"20261121 08:27:13,vm,bob,localhost,5,0,FAILED_CONNECT,,,1045",
            b"",
        )
        .unwrap();
        assert_eq!(failed.retcode, 1045);
        assert_eq!(parse_audit_line(b"garbage,,,", b""), None);
        let cut = parse_audit_line(
            b"20261121 08:27:13,vm,root,localhost,4,9,QUERY,shop,'SELECT aaaa",
            b"aaaa',1064",
        )
        .unwrap();
        assert!(cut.truncated);
        assert_eq!(cut.retcode, 1064);
    }
}
