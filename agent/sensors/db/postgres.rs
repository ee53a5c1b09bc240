//! PostgreSQL 15 csvlog and jsonlog records, and the per-session state that turns them into events.
//!
//! With `log_statement = 'all'` and pgaudit both on, one statement appears twice: the core
//! `statement:` record when it starts and pgaudit's `AUDIT: SESSION,...` record (with rows) when it
//! ends. A session's statement is therefore held until the session's next record (or one quiet
//! poll) so the two become one event; the same hold lets a `FATAL` right after
//! `connection authorized` turn the connect into a failed one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bannin::event::DbEvent;
use bannin::time::Timestamp;
use serde::{Deserialize, Serialize};

use super::draft::{Action, Draft, ParseCtx, draft_query};
use super::statement::Dialect;

/// One log record, whichever format it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub ts: Option<Timestamp>,
    pub user: String,
    pub database: String,
    pub remote_host: String,
    pub remote_port: Option<u16>,
    pub session: String,
    pub ps: String,
    pub severity: String,
    pub state_code: String,
    pub message: String,
    pub application: String,
    /// The statement an ERROR belongs to (csvlog `query`, jsonlog `statement`), where logged.
    pub query: String,
}

/// A csvlog record (26 columns in PostgreSQL 15; 23 since 13 are enough).
pub fn entry_from_csv(mut fields: Vec<String>) -> Option<Entry> {
    if fields.len() < 23 {
        return None;
    }
    let mut take = |i: usize| std::mem::take(&mut fields[i]);
    let connection_from = take(4);
    let (remote_host, remote_port) = match connection_from.rsplit_once(':') {
        Some((host, port)) if !connection_from.starts_with('[') => {
            (host.to_string(), port.parse().ok())
        }
        _ => (connection_from, None),
    };
    Some(Entry {
        ts: parse_time(&take(0)),
        user: take(1),
        database: take(2),
        remote_host,
        remote_port,
        session: take(5),
        ps: take(7),
        severity: take(11),
        state_code: take(12),
        message: take(13),
        query: take(19),
        application: take(22),
    })
}

#[derive(Deserialize)]
struct JsonLine {
    timestamp: Option<String>,
    user: Option<String>,
    dbname: Option<String>,
    remote_host: Option<String>,
    remote_port: Option<u16>,
    session_id: Option<String>,
    ps: Option<String>,
    error_severity: Option<String>,
    state_code: Option<String>,
    message: Option<String>,
    statement: Option<String>,
    application_name: Option<String>,
}

impl From<JsonLine> for Entry {
    fn from(j: JsonLine) -> Self {
        Entry {
            ts: j.timestamp.as_deref().and_then(parse_time),
            user: j.user.unwrap_or_default(),
            database: j.dbname.unwrap_or_default(),
            remote_host: j.remote_host.unwrap_or_default(),
            remote_port: j.remote_port,
            session: j.session_id.unwrap_or_default(),
            ps: j.ps.unwrap_or_default(),
            severity: j.error_severity.unwrap_or_default(),
            state_code: j.state_code.unwrap_or_default(),
            message: j.message.unwrap_or_default(),
            query: j.statement.unwrap_or_default(),
            application: j.application_name.unwrap_or_default(),
        }
    }
}

/// A jsonlog line. `tail` is non-empty when the line was cut: then the object is closed inside
/// its message (which the server writes before the application name) and the application name is
/// taken from the kept end of the line.
pub fn entry_from_json(head: &[u8], tail: &[u8]) -> Option<Entry> {
    if tail.is_empty() {
        return serde_json::from_slice::<JsonLine>(head)
            .ok()
            .map(Entry::from);
    }
    let text = String::from_utf8_lossy(head);
    let at = text.find("\"message\":\"")?;
    let mut cut = text.len();
    // Do not end inside an escape sequence.
    let backslashes = text[..cut]
        .bytes()
        .rev()
        .take_while(|&b| b == b'\\')
        .count();
    cut -= backslashes % 2;
    let body = &text[at + 11..cut];
    let unicode_cut = body.rfind("\\u").filter(|&p| body.len() - p < 6);
    let body = unicode_cut.map_or(body, |p| &body[..p]);
    let repaired = format!("{}\"message\":\"{body}\"}}", &text[..at]);
    let mut entry: Entry = serde_json::from_str::<JsonLine>(&repaired).ok()?.into();
    let tail = String::from_utf8_lossy(tail);
    if let Some(p) = tail.rfind("\"application_name\":\"") {
        let rest = &tail[p + 20..];
        entry.application = rest.split('"').next().unwrap_or("").to_string();
    }
    Some(entry)
}

/// `2026-11-21 08:26:55.414 UTC`; zones other than UTC/GMT, a few common abbreviations and
/// numeric offsets are unknown and give `None` (the caller uses the time it read the line).
pub fn parse_time(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(8..10)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
    .ok()?;
    let mut rest = &text[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let value: i64 = frac[..digits].parse().ok()?;
        nanos = value * 10i64.pow(9u32.saturating_sub(digits as u32));
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest.trim() {
        "UTC" | "GMT" | "Z" | "" => 0,
        "JST" | "KST" => 9 * 3600,
        "CET" => 3600,
        "CEST" => 2 * 3600,
        "EST" => -5 * 3600,
        "EDT" => -4 * 3600,
        "PST" => -8 * 3600,
        "PDT" => -7 * 3600,
        zone => {
            let (sign, digits) = match zone.as_bytes().first()? {
                b'+' => (1, &zone[1..]),
                b'-' => (-1, &zone[1..]),
                _ => return None,
            };
            let hours: i64 = digits.get(..2)?.parse().ok()?;
            let minutes: i64 = digits.get(2..).map_or(Some(0), |m| {
                m.trim_start_matches(':').parse().ok().or(Some(0))
            })?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let utc = time::PrimitiveDateTime::new(date, clock).assume_utc();
    let secs = utc.unix_timestamp() - offset_secs;
    Some(Timestamp::from_nanos(secs * 1_000_000_000 + nanos))
}

/// pgaudit's `AUDIT: SESSION,1,1,READ,SELECT,,,statement,<not logged>,50` after `AUDIT: `.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub statement_id: u64,
    pub class: String,
    pub command: String,
    pub object_name: String,
    pub statement: String,
    pub rows: Option<u64>,
}

pub fn parse_audit(text: &str) -> Option<Audit> {
    let fields = split_csv(text);
    if fields.len() < 9 || !matches!(fields[0].as_str(), "SESSION" | "OBJECT") {
        return None;
    }
    Some(Audit {
        statement_id: fields[1].parse().ok()?,
        class: fields[3].clone(),
        command: fields[4].clone(),
        object_name: fields[6].clone(),
        statement: fields[7].clone(),
        rows: fields.get(9).and_then(|r| r.parse().ok()),
    })
}

/// pgaudit's fields, split by csv-core. The message is UTF-8 text, in which the byte 0xFF never
/// occurs: with it as the record terminator the whole message is one record, and a line break (a
/// statement's, quoted) stays data.
fn split_csv(text: &str) -> Vec<String> {
    use csv_core::ReadRecordResult;
    let mut reader = csv_core::ReaderBuilder::new()
        .terminator(csv_core::Terminator::Any(0xFF))
        .build();
    // Room for more than it can write (unquoting never lengthens a field, and there is at most one
    // field more than there are bytes), so neither buffer ever runs full.
    let mut output = vec![0u8; text.len() + 1];
    let mut ends = vec![0usize; text.len() + 2];
    let (mut input, mut written, mut ended) = (text.as_bytes(), 0, 0);
    loop {
        let (result, read, nout, nend) =
            reader.read_record(input, &mut output[written..], &mut ends[ended..]);
        input = &input[read..];
        written += nout;
        ended += nend;
        // With all of the text read, the next call (with no input) ends the record.
        if result != ReadRecordResult::InputEmpty {
            break;
        }
    }
    let mut start = 0;
    ends[..ended]
        .iter()
        .map(|&end| {
            let field = String::from_utf8_lossy(&output[start..end]).into_owned();
            start = end;
            field
        })
        .collect()
}

/// The statement text of `statement: X`, `execute NAME: X` and their `duration: N ms  ` forms,
/// and whether it came with a duration (a repeat when log_statement is also on).
fn statement_text(message: &str) -> Option<(&str, bool)> {
    let (rest, with_duration) = match message.strip_prefix("duration: ") {
        Some(rest) => (rest.split_once("  ")?.1, true),
        None => (message, false),
    };
    if let Some(text) = rest.strip_prefix("statement: ") {
        return Some((text, with_duration));
    }
    let named = rest.strip_prefix("execute ")?;
    Some((named.split_once(": ")?.1, with_duration))
}

fn hash_text(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    draft: Draft,
    /// The pgaudit statement id folded in, if any.
    audit_statement: Option<u64>,
    /// Polls this has waited for the session's next record.
    age: u32,
    /// Hash of the statement text as the server logged it, to tell whether an ERROR is its own.
    #[serde(default)]
    statement_hash: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Session {
    held: Option<Held>,
    last_audit_statement: Option<u64>,
    last_statement_hash: u64,
}

/// What the sensor remembers between records (and across restarts) for one PostgreSQL server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tracker {
    sessions: HashMap<String, Session>,
}

/// Most sessions remembered at once; disconnections free them, this bounds lost disconnections.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub struct Garbled;

impl Tracker {
    /// Turns one record into zero or more finished drafts (in `out`), holding the session's newest
    /// statement back.
    pub fn handle(
        &mut self,
        entry: Entry,
        ctx: &ParseCtx,
        out: &mut Vec<Draft>,
    ) -> Result<(), Garbled> {
        let key = entry.session.clone();
        let result = self.handle_entry(entry, ctx, out);
        // Background processes log under session ids too; remember only sessions with state.
        if self.sessions.get(&key).is_some_and(|s| {
            s.held.is_none() && s.last_audit_statement.is_none() && s.last_statement_hash == 0
        }) {
            self.sessions.remove(&key);
        }
        result
    }

    fn handle_entry(
        &mut self,
        entry: Entry,
        ctx: &ParseCtx,
        out: &mut Vec<Draft>,
    ) -> Result<(), Garbled> {
        let message = entry.message.as_str();
        if message.starts_with("connection received: ") || entry.session.is_empty() {
            return Ok(());
        }
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&entry.session) {
            self.evict(out);
        }
        let session = self.sessions.entry(entry.session.clone()).or_default();
        let ts = entry.ts.unwrap_or_else(Timestamp::now);

        if let Some(rest) = message.strip_prefix("connection authorized: ") {
            flush(session, out);
            let mut event = base_event(&entry, ctx, Action::Connect);
            if let Some(app) = rest.split_once("application_name=").map(|(_, a)| a) {
                let end = [" SSL enabled", " GSS ("]
                    .iter()
                    .filter_map(|m| app.find(m))
                    .min()
                    .unwrap_or(app.len());
                event.application = app[..end].to_string();
            }
            session.held = Some(Held {
                draft: Draft::new(ts, Action::Connect, event),
                audit_statement: None,
                age: 0,
                statement_hash: 0,
            });
            return Ok(());
        }
        if message.starts_with("disconnection: ") {
            flush(session, out);
            let event = base_event(&entry, ctx, Action::Disconnect);
            out.push(Draft::new(ts, Action::Disconnect, event));
            self.sessions.remove(&entry.session);
            return Ok(());
        }
        let login_failure = entry.severity == "FATAL"
            && (entry.state_code.starts_with("28")
                || entry.state_code == "3D000"
                || matches!(entry.ps.as_str(), "authentication" | "startup"));
        if login_failure {
            let mut held = session.held.take();
            let mut draft = match held.take() {
                Some(h) if h.draft.action == Action::Connect => h.draft,
                other => {
                    session.held = other;
                    flush(session, out);
                    Draft::new(
                        ts,
                        Action::Connect,
                        base_event(&entry, ctx, Action::Connect),
                    )
                }
            };
            draft.event.failed = true;
            draft.event.error =
                super::draft::error_text(&entry.message, "", Dialect::Postgres, ctx);
            out.push(draft);
            return Ok(());
        }
        if let Some((text, with_duration)) = statement_text(message) {
            let hash = hash_text(text);
            if with_duration && hash == session.last_statement_hash {
                return Ok(());
            }
            flush(session, out);
            session.last_statement_hash = hash;
            session.last_audit_statement = None;
            let event = base_event(&entry, ctx, Action::Query);
            session.held = Some(Held {
                draft: draft_query(ts, event, text, Dialect::Postgres, ctx),
                audit_statement: None,
                age: 0,
                statement_hash: hash,
            });
            return Ok(());
        }
        if let Some(text) = message.strip_prefix("AUDIT: ") {
            let audit = parse_audit(text).ok_or(Garbled)?;
            let rows = if audit.command == "COPY" {
                // pgaudit counts no rows for COPY.
                None
            } else {
                audit.rows
            };
            let merge_into_held = session.held.as_ref().is_some_and(|h| {
                h.draft.action == Action::Query
                    && h.audit_statement.is_none_or(|id| id == audit.statement_id)
            });
            if merge_into_held {
                if let Some(held) = session.held.as_mut() {
                    held.audit_statement = Some(audit.statement_id);
                    merge_audit(&mut held.draft, &audit, rows);
                }
            } else if session.last_audit_statement != Some(audit.statement_id) {
                // pgaudit without log_statement: the audit record is the statement.
                flush(session, out);
                let event = base_event(&entry, ctx, Action::Query);
                let mut draft = draft_query(ts, event, &audit.statement, Dialect::Postgres, ctx);
                merge_audit(&mut draft, &audit, rows);
                session.held = Some(Held {
                    draft,
                    audit_statement: Some(audit.statement_id),
                    age: 0,
                    statement_hash: hash_text(&audit.statement),
                });
            }
            session.last_audit_statement = Some(audit.statement_id);
            return Ok(());
        }
        if matches!(entry.severity.as_str(), "ERROR" | "FATAL" | "PANIC") {
            // An ERROR belongs to the statement its record names, never simply to the one before
            // it: a statement that fails to parse is not logged by log_statement, so the held
            // statement is often an earlier, successful one.
            let query_hash = (!entry.query.is_empty()).then(|| hash_text(&entry.query));
            let own = session.held.as_ref().is_some_and(|h| {
                h.draft.action == Action::Query && query_hash == Some(h.statement_hash)
            });
            if own {
                if let Some(held) = session.held.as_mut() {
                    held.draft.event.failed = true;
                    held.draft.event.error = super::draft::error_text(
                        &entry.message,
                        &entry.query,
                        Dialect::Postgres,
                        ctx,
                    );
                }
                flush(session, out);
            } else if query_hash.is_some() || entry.severity == "ERROR" {
                // Recorded as its own failed statement, so the failure is seen and steers nothing.
                flush(session, out);
                let event = base_event(&entry, ctx, Action::Query);
                let mut draft = draft_query(ts, event, &entry.query, Dialect::Postgres, ctx);
                draft.event.failed = true;
                draft.event.error =
                    super::draft::error_text(&entry.message, &entry.query, Dialect::Postgres, ctx);
                out.push(draft);
            }
        }
        Ok(())
    }

    /// Called after each poll: hands on statements whose session has been quiet for a poll, and
    /// statements that already have their pgaudit record.
    pub fn tick(&mut self, out: &mut Vec<Draft>) {
        for session in self.sessions.values_mut() {
            if let Some(held) = session.held.as_mut() {
                held.age += 1;
                if held.age >= 2 || held.audit_statement.is_some() {
                    flush(session, out);
                }
            }
        }
        out.sort_by_key(|d| d.ts);
    }

    fn evict(&mut self, out: &mut Vec<Draft>) {
        let mut sessions: Vec<String> = self.sessions.keys().cloned().collect();
        sessions.sort();
        for key in sessions.into_iter().take(MAX_SESSIONS / 10) {
            if let Some(mut session) = self.sessions.remove(&key) {
                flush(&mut session, out);
            }
        }
    }
}

fn flush(session: &mut Session, out: &mut Vec<Draft>) {
    if let Some(held) = session.held.take() {
        out.push(held.draft);
    }
}

fn merge_audit(draft: &mut Draft, audit: &Audit, rows: Option<u64>) {
    if let Some(rows) = rows {
        draft.event.rows = Some(draft.event.rows.map_or(rows, |r| r.max(rows)));
    }
    let object = audit.object_name.to_ascii_lowercase();
    if !object.is_empty() && !draft.event.tables.contains(&object) {
        draft.event.tables.push(object);
    }
}

fn base_event(entry: &Entry, ctx: &ParseCtx, action: Action) -> DbEvent {
    let mut event = DbEvent::new(action.into(), "postgresql");
    event.db_user = entry.user.clone();
    event.database = entry.database.clone();
    event.client_addr = entry.remote_host.clone();
    event.client_port = entry.remote_port;
    event.application = entry.application.clone();
    event.session = entry.session.clone();
    event.server = ctx.server.clone();
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_zones_and_fractions_parse() {
        let utc = parse_time("2026-11-21 08:26:55.414 UTC").unwrap();
        assert_eq!(utc.to_rfc3339(), "2026-11-21T08:26:55.414000000Z");
        let jst = parse_time("2026-11-21 17:26:55.414 JST").unwrap();
        assert_eq!(jst, utc);
        let offset = parse_time("2026-11-21 17:26:55.414 +09").unwrap();
        assert_eq!(offset, utc);
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn audit_fields_split_like_csv_with_line_breaks_as_data() {
        assert_eq!(
            split_csv("SESSION,1,\"a,\"\"b\"\"\nc\",,x\"y\",last\n"),
            ["SESSION", "1", "a,\"b\"\nc", "", "x\"y\"", "last\n"]
        );
        assert_eq!(split_csv("a,"), ["a", ""]);
        assert!(split_csv("").len() <= 1);
    }

    #[test]
    fn audit_messages_parse_with_quoted_statements_and_rows() {
        let audit = parse_audit(
            "SESSION,3,1,READ,SELECT,,,\"SELECT * FROM customers\n  WHERE id < 3;\",<not logged>,2",
        )
        .unwrap();
        assert_eq!(audit.statement_id, 3);
        assert_eq!(audit.statement, "SELECT * FROM customers\n  WHERE id < 3;");
        assert_eq!(audit.rows, Some(2));
        let no_rows =
            parse_audit("SESSION,1,1,WRITE,INSERT,,,insert into t values (1),<none>").unwrap();
        assert_eq!(no_rows.rows, None);
        assert_eq!(parse_audit("nonsense"), None);
    }

    #[test]
    fn a_cut_json_line_keeps_its_identity_fields_and_application() {
        let head = br#"{"timestamp":"2026-11-21 08:26:55.420 UTC","user":"postgres","dbname":"shop","pid":1,"session_id":"s1","error_severity":"LOG","message":"statement: SELECT \"a\u00e9"#;
        let tail =
            br#"xx","application_name":"psql","backend_type":"client backend","query_id":0}"#;
        let entry = entry_from_json(head, tail).unwrap();
        assert_eq!(entry.user, "postgres");
        assert_eq!(entry.session, "s1");
        assert_eq!(entry.application, "psql");
        assert!(entry.message.starts_with("statement: SELECT \"a"));
    }
}

#[cfg(test)]
mod tracker_tests {
    use super::*;

    fn entry(session: &str, severity: &str, message: &str) -> Entry {
        Entry {
            user: "app".into(),
            database: "shop".into(),
            remote_host: "10.0.0.5".into(),
            remote_port: Some(40000),
            session: session.into(),
            ps: "idle".into(),
            severity: severity.into(),
            message: message.into(),
            application: "psql".into(),
            ..Entry::default()
        }
    }

    fn run(entries: Vec<Entry>) -> Vec<Draft> {
        let ctx = ParseCtx {
            server: "pg".into(),
            max_statement_len: 4096,
        };
        let mut tracker = Tracker::default();
        let mut out = Vec::new();
        for e in entries {
            tracker.handle(e, &ctx, &mut out).unwrap();
        }
        tracker.tick(&mut out);
        tracker.tick(&mut out);
        assert!(tracker.sessions.is_empty() || tracker.sessions.values().all(|s| s.held.is_none()));
        out
    }

    #[test]
    fn duration_repeats_fold_errors_mark_failures_and_bare_audit_records_are_statements() {
        let out = run(vec![
            entry("s1", "LOG", "statement: SELECT * FROM t"),
            entry(
                "s1",
                "LOG",
                "duration: 0.210 ms  statement: SELECT * FROM t",
            ),
            entry("s1", "LOG", "duration: 0.110 ms  statement: SELECT 2"),
            entry("s1", "LOG", "statement: SELECT 1/0"),
            Entry {
                query: "SELECT 1/0".into(),
                ..entry("s1", "ERROR", "division by zero")
            },
            entry(
                "s2",
                "LOG",
                "AUDIT: SESSION,7,1,READ,SELECT,,,select * from t,<not logged>,12",
            ),
            entry(
                "s2",
                "LOG",
                "AUDIT: SESSION,7,2,READ,SELECT,TABLE,public.t,select * from t,<not logged>,12",
            ),
            entry("s3", "LOG", "checkpoint starting: time"),
        ]);
        let statements: Vec<(&str, bool, Option<u64>)> = out
            .iter()
            .map(|d| (d.event.statement.as_str(), d.event.failed, d.event.rows))
            .collect();
        assert_eq!(
            statements,
            vec![
                ("SELECT * FROM t", false, None),
                ("SELECT 2", false, None),
                ("SELECT 1/0", true, None),
                ("select * from t", false, Some(12)),
            ]
        );
        assert_eq!(out[2].event.error, "division by zero");
        assert_eq!(out[3].event.client_port, Some(40000));
    }

    #[test]
    fn a_fatal_after_authorization_makes_the_connect_a_failed_one() {
        let mut fatal = entry(
            "s1",
            "FATAL",
            "password authentication failed for user \"app\"",
        );
        fatal.state_code = "28P01".into();
        fatal.ps = "authentication".into();
        let out = run(vec![
            entry(
                "s1",
                "LOG",
                "connection authorized: user=app database=shop application_name=psql SSL enabled (protocol=TLSv1.3)",
            ),
            fatal,
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action, Action::Connect);
        assert!(out[0].event.failed);
        assert_eq!(out[0].event.application, "psql");
    }
}
