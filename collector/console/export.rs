//! A search's result as a file: CSV here; JSON lines and OCSF through `present`'s printers, the
//! same objects `events --format json|ocsf` prints.

use std::io::{self, Write};

use bannin::event::Record;

use crate::present;
use crate::report::process_of;
use crate::store::console::user_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Ocsf,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "ocsf" => Some(Format::Ocsf),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json | Format::Ocsf => "application/x-ndjson",
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            Format::Csv => "bannin-events.csv",
            Format::Json => "bannin-events.jsonl",
            Format::Ocsf => "bannin-events.ocsf.jsonl",
        }
    }
}

pub fn write(out: &mut impl Write, records: &[Record], format: Format) -> io::Result<()> {
    match format {
        Format::Csv => csv(out, records),
        Format::Json => present::json::lines(out, records),
        Format::Ocsf => present::json::lines(out, records.iter().map(present::ocsf::event)),
    }
}

/// One CSV cell: quoted when it holds a quote, comma or line break, and a leading `=`, `+`, `-`,
/// `@`, tab or carriage return is preceded by `'`, so a spreadsheet opening the file shows a
/// hostile file name as text instead of running it as a formula.
fn cell(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if guarded.contains(['"', ',', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn csv(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    out.write_all(b"ts,host,agent_id,seq,kind,path,user,pid,exe,detail\r\n")?;
    for record in records {
        let event = &record.event;
        let process = process_of(record);
        let cells = [
            event.ts.to_rfc3339(),
            event.host.to_string(),
            record.agent_id.clone(),
            event.seq.to_string(),
            event.kind().to_string(),
            event.path().unwrap_or("").to_string(),
            user_of(record).unwrap_or("").to_string(),
            process.map(|p| p.pid.to_string()).unwrap_or_default(),
            process.map(|p| p.exe.clone()).unwrap_or_default(),
            present::table::event_detail(record),
        ];
        let line: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        out.write_all(line.join(",").as_bytes())?;
        out.write_all(b"\r\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(
            cell("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(
            cell("<img src=x onerror=alert(1)>.csv"),
            "<img src=x onerror=alert(1)>.csv"
        );
    }
}
