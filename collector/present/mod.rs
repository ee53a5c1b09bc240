//! Everything the collector prints for people and tools: tables (`table.rs`), JSON lines (`json.rs`)
//! and OCSF objects (`ocsf.rs`), chosen by [`Format`]. The store, the reports and the query layer
//! hand typed rows here and never format a line themselves.
//!
//! Every table line goes through [`line`] (the [`row!`] macro), which escapes control characters:
//! file names, host names, command lines and receivers' error texts come from agents and networks
//! an attacker may control, and a raw line break would forge a whole row, an ESC or OSC sequence
//! would recolour, retitle or clear the operator's terminal, and a bidi override would reorder
//! what is shown.

pub mod json;
pub mod ocsf;
pub mod table;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};

use bannin::event::Record;

use crate::query::local::AlertRow;
use crate::report::scope::Scope;
use crate::report::timeline::Entry;
use crate::store::operators::OperatorRow;
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
pub fn line(out: &mut impl Write, args: fmt::Arguments<'_>) -> io::Result<()> {
    let text = args.to_string();
    out.write_all(escape_control(&text).as_bytes())?;
    out.write_all(b"\n")
}

/// `writeln!` for table lines: `row!(out, "{:<16}  {}", a, b)` escapes what the cells hold.
macro_rules! row {
    ($out:expr, $($arg:tt)*) => {
        $crate::present::line($out, format_args!($($arg)*))
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

/// Stored events, as `events` prints them.
pub fn events(out: &mut impl Write, records: &[Record], format: Format) -> io::Result<()> {
    match format {
        Format::Table => table::events(out, records),
        Format::Json => json::lines(out, records),
        Format::Ocsf => json::lines(out, records.iter().map(ocsf::event)),
    }
}

/// Enrolled agents, as `agents` prints them.
pub fn agents(out: &mut impl Write, rows: &[AgentRow], format: Format) -> io::Result<()> {
    match format {
        Format::Table => table::agents(out, rows),
        Format::Json => json::lines(out, rows),
        Format::Ocsf => json::lines(out, rows.iter().map(ocsf::agent)),
    }
}

/// Alerts as `alerts` prints them: read from the local store with their deliveries, or the alert
/// objects a remote collector sent.
pub enum Alerts {
    Stored(Vec<AlertRow>),
    Remote(Vec<serde_json::Map<String, serde_json::Value>>),
}

pub fn alerts(out: &mut impl Write, alerts: &Alerts, format: Format) -> io::Result<()> {
    match (alerts, format) {
        (Alerts::Stored(rows), Format::Table) => table::alerts(out, rows),
        (Alerts::Remote(objects), Format::Table) => table::remote_alerts(out, objects),
        (Alerts::Stored(rows), _) => {
            let objects = rows
                .iter()
                .map(json::alert_object)
                .collect::<Result<Vec<_>, _>>()?;
            alert_objects(out, &objects, format)
        }
        (Alerts::Remote(objects), _) => alert_objects(out, objects, format),
    }
}

fn alert_objects(
    out: &mut impl Write,
    objects: &[serde_json::Map<String, serde_json::Value>],
    format: Format,
) -> io::Result<()> {
    match format {
        Format::Ocsf => {
            let findings = objects
                .iter()
                .map(ocsf::alert)
                .collect::<io::Result<Vec<_>>>()?;
            json::lines(out, findings)
        }
        _ => json::lines(out, objects),
    }
}

/// A host's timeline, as `timeline` prints it.
pub fn timeline(out: &mut impl Write, entries: &[Entry], format: Format) -> io::Result<()> {
    match format {
        Format::Table => table::timeline(out, entries),
        Format::Json => json::lines(out, entries),
        Format::Ocsf => json::lines(out, entries.iter().map(|e| ocsf::event(&e.record))),
    }
}

/// A scope report, as `scope` prints it; OCSF output is the events the report rests on.
pub fn scope(
    out: &mut impl Write,
    report: &Scope,
    evidence: &[Record],
    format: Format,
) -> io::Result<()> {
    match format {
        Format::Table => table::scope(out, report),
        Format::Json => json::lines(out, [json::scope_object(report)?]),
        Format::Ocsf => json::lines(out, evidence.iter().map(ocsf::event)),
    }
}

/// Operators, as `operator list` prints them (OCSF has no class for them: JSON).
pub fn operators(out: &mut impl Write, rows: &[OperatorRow], format: Format) -> io::Result<()> {
    match format {
        Format::Table => table::operators(out, rows),
        Format::Json | Format::Ocsf => json::lines(out, rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
