//! Printing query results as a table for people or JSON lines for tools.
//!
//! Every table line goes through [`line`] (the [`row!`] macro), which escapes control characters:
//! file names, host names, command lines and receivers' error texts come from agents and networks
//! an attacker may control, and a raw line break would forge a whole row, an ESC or OSC sequence
//! would recolour, retitle or clear the operator's terminal, and a bidi override would reorder
//! what is shown.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use bannin::event::{Body, Record};
use serde::Serialize;

use crate::alert::Alert;
use crate::hooks::DeliveryStatus;
use crate::store::query::AgentRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// OCSF 1.x JSON, one object per line (see `ocsf.rs`).
    Ocsf,
}

/// Writes one table line: `args` formatted, with every control character escaped
/// ([`escape_control`]), then a line break.
pub fn line(out: &mut impl Write, args: fmt::Arguments<'_>) -> std::io::Result<()> {
    let text = args.to_string();
    out.write_all(escape_control(&text).as_bytes())?;
    out.write_all(b"\n")
}

/// `writeln!` for table lines: `row!(out, "{:<16}  {}", a, b)` escapes what the cells hold.
macro_rules! row {
    ($out:expr, $($arg:tt)*) => {
        $crate::output::line($out, format_args!($($arg)*))
    };
}
pub(crate) use row;

/// True for characters that change how a terminal shows the text around them rather than showing
/// themselves: C0 and C1 controls and DEL, bidirectional overrides and isolates, line and paragraph
/// separators, and the invisible joiners that make two different names look the same.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// `text` with each unsafe character ([`is_unsafe_char`]) written as a visible escape: `\n`, `\r`,
/// `\t`, `\x1b` for other ASCII controls, `\u{202e}` beyond ASCII. Escaping again changes nothing,
/// so a renderer may escape a cell and the line holding it.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && is_unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if is_unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One JSON object per line.
pub fn json_lines<T: Serialize>(out: &mut impl Write, items: &[T]) -> std::io::Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, item)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The part of an event a person wants on one line.
pub fn event_detail(record: &Record) -> String {
    let process = |p: Option<&bannin::event::ProcessInfo>| match p {
        Some(p) => format!(" pid={} exe={} user={}", p.pid, p.exe, p.user),
        None => String::new(),
    };
    match &record.event.body {
        Body::File(f) => {
            let size = f.size.map(|s| format!(" size={s}")).unwrap_or_default();
            let from = f
                .from_path
                .as_ref()
                .map(|p| format!(" from={p}"))
                .unwrap_or_default();
            let export = f
                .export
                .as_ref()
                .map(|e| {
                    format!(
                        " export={} rows~{}",
                        e.format,
                        e.est_rows.map(|r| r.to_string()).unwrap_or("?".into())
                    )
                })
                .unwrap_or_default();
            format!(
                "{}{from}{size}{export}{}",
                f.path,
                process(f.process.as_ref())
            )
        }
        Body::Process(p) => {
            let exit = p
                .exit_code
                .map(|c| format!(" exit={c}"))
                .unwrap_or_default();
            format!(
                "pid={} ppid={} exe={} user={}{exit} cmd={}",
                p.process.pid,
                p.process.ppid.map(|p| p.to_string()).unwrap_or("?".into()),
                p.process.exe,
                p.process.user,
                p.process.cmdline
            )
        }
        Body::Net(n) => format!(
            "{}:{} -> {}:{} ({}){}",
            n.local_addr,
            n.local_port,
            n.remote_addr,
            n.remote_port,
            n.remote_scope,
            process(n.process.as_ref())
        ),
        Body::Db(d) => {
            let rows = d.rows.map(|r| format!(" rows={r}")).unwrap_or_default();
            format!(
                "{} {}@{} from {} [{}] tables={}{rows} {}",
                d.db_system,
                d.db_user,
                d.database,
                d.client_addr,
                d.statement_kind,
                d.tables.join(","),
                d.statement
            )
        }
        Body::Agent(a) => {
            let mut text = format!("spool={} events", a.spool_events);
            if a.dropped > 0 {
                text.push_str(&format!(
                    " dropped={} ({}..={})",
                    a.dropped, a.first_dropped_seq, a.last_dropped_seq
                ));
            }
            if !a.message.is_empty() {
                text.push_str(&format!(" {}", a.message));
            }
            text
        }
        Body::Sensor(s) => format!("{}: {} (count {})", s.sensor, s.message, s.count_text()),
    }
}

pub fn events_table(out: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
    row!(
        out,
        "{:<30}  {:<16}  {:<16}  {:>8}  DETAIL",
        "TS",
        "KIND",
        "HOST",
        "SEQ"
    )?;
    events_table_rows(out, records)
}

/// Table rows without the header, for streaming output.
pub fn events_table_rows(out: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
    for record in records {
        let event = &record.event;
        row!(
            out,
            "{:<30}  {:<16}  {:<16}  {:>8}  {}",
            event.ts.to_rfc3339(),
            event.kind(),
            // Escaped before padding, so a hostile name keeps its own column.
            escape_control(&event.host),
            event.seq,
            event_detail(record)
        )?;
    }
    Ok(())
}

pub fn agents_table(out: &mut impl Write, agents: &[AgentRow]) -> std::io::Result<()> {
    row!(
        out,
        "{:<20}  {:<20}  {:<20}  {:<10}  {:<30}  {:>10}  {:>8}",
        "AGENT",
        "NAME",
        "HOST",
        "STATUS",
        "LAST SEEN",
        "LAST SEQ",
        "SPOOL"
    )?;
    for a in agents {
        row!(
            out,
            "{:<20}  {:<20}  {:<20}  {:<10}  {:<30}  {:>10}  {:>8}",
            a.agent_id,
            escape_control(&a.name),
            escape_control(&a.host),
            a.status,
            a.last_seen.map(|t| t.to_rfc3339()).unwrap_or("-".into()),
            a.last_seq,
            a.spool_events
        )?;
    }
    Ok(())
}

/// An alert with the state of its deliveries, as `alerts` prints it.
#[derive(Serialize)]
pub struct AlertRow {
    #[serde(flatten)]
    pub alert: Alert,
    pub deliveries: Vec<DeliveryStatus>,
}

pub fn alerts_table(out: &mut impl Write, rows: &[AlertRow]) -> std::io::Result<()> {
    row!(
        out,
        "{:<30}  {:<8}  {:<34}  {:<16}  {:>5}  SUMMARY",
        "TS",
        "SEVERITY",
        "RULE",
        "HOST",
        "COUNT"
    )?;
    for row in rows {
        let a = &row.alert;
        row!(
            out,
            "{:<30}  {:<8}  {:<34}  {:<16}  {:>5}  {}",
            a.ts.to_rfc3339(),
            a.severity.as_str(),
            a.rule,
            a.host,
            a.count,
            a.summary
        )?;
        row!(out, "{:>32}id {}", "", a.id)?;
        for delivery in &row.deliveries {
            row!(out, "{:>32}delivery {delivery}", "")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::time::Timestamp;

    #[test]
    fn escapes_c0_c1_del_bidi_and_invisible_characters_once() {
        let hostile = "a\nb\r\tc\x1b]0;t\x07\x7f\u{9b}\u{202e}\u{2066}\u{200b}\u{feff}ä/日本";
        let shown = escape_control(hostile);
        assert_eq!(
            shown,
            r"a\nb\r\tc\x1b]0;t\x07\x7f\u{9b}\u{202e}\u{2066}\u{200b}\u{feff}ä/日本"
        );
        assert!(!shown.chars().any(is_unsafe_char));
        assert_eq!(
            escape_control(&shown),
            shown,
            "escaping twice changes nothing"
        );
        assert!(matches!(escape_control("plain ä"), Cow::Borrowed(_)));
    }

    #[test]
    fn an_agent_name_with_a_line_break_stays_in_its_row() {
        let agent = AgentRow {
            agent_id: "a-1".into(),
            name: "web1\na-2  db-prod-1".into(),
            host: "h\x1b[2J".into(),
            status: "active".into(),
            enrolled: Timestamp::from_nanos(0),
            last_seen: None,
            last_seq: 0,
            spool_events: 0,
            spool_bytes: 0,
        };
        let mut out = Vec::new();
        agents_table(&mut out, &[agent]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r"web1\na-2  db-prod-1") && text.contains(r"h\x1b[2J"));
    }
}
