//! Tables for people: fixed-width columns, one header line, every line through [`row!`].

use std::fmt;
use std::io::{self, Write};

use bannin::event::{Body, Record};
use serde_json::{Map, Value};

use super::{escape_control, row};
use crate::detection::Observed;
use crate::hooks::{DeliveryState, DeliveryStatus};
use crate::query::local::AlertRow;
use crate::report::scope::Scope;
use crate::report::short_exe;
use crate::report::timeline::Entry;
use crate::store::operators::OperatorRow;
use crate::store::query::AgentRow;
use crate::store::verify::Report;

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
            // A read's bytes where the agent counted them; a reader still open, or the close
            // that gives its total, says so.
            let read = match (f.bytes_read, f.still_open, f.closed) {
                (Some(bytes), true, _) => format!(" read={bytes} (still open)"),
                (Some(bytes), _, true) => format!(" read={bytes} (at close)"),
                (Some(bytes), ..) => format!(" read={bytes}"),
                (None, ..) => String::new(),
            };
            format!(
                "{}{from}{size}{read}{export}{}",
                f.path,
                process(f.process.as_deref())
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
        Body::Net(n) => {
            let bytes = n
                .bytes_sent
                .zip(n.bytes_received)
                .map(|(sent, received)| format!(" sent={sent} received={received}"))
                .unwrap_or_default();
            format!(
                "{}:{} -> {}:{} ({}){bytes}{}",
                n.local_addr,
                n.local_port,
                n.remote_addr,
                n.remote_port,
                n.remote_scope,
                process(n.process.as_ref())
            )
        }
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

pub fn events(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    row!(
        out,
        "{:<30}  {:<16}  {:<16}  {:>8}  DETAIL",
        "TS",
        "KIND",
        "HOST",
        "SEQ"
    )?;
    event_rows(out, records)
}

/// Table rows without the header, for streaming output.
pub fn event_rows(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
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

pub fn agents(out: &mut impl Write, agents: &[AgentRow]) -> io::Result<()> {
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

/// Local alerts: each with its id and the state of its delivery to every sink on lines of their own.
pub fn alerts(out: &mut impl Write, rows: &[AlertRow]) -> io::Result<()> {
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
            row!(out, "{:>32}delivery {}", "", Delivery(delivery))?;
        }
    }
    Ok(())
}

/// One delivery on the `alerts` table: `SINK STATE`, then the attempts and last error when it failed.
pub struct Delivery<'a>(pub &'a DeliveryStatus);

impl fmt::Display for Delivery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delivery = self.0;
        write!(f, "{} {}", delivery.sink, delivery.state.as_str())?;
        match (&delivery.state, &delivery.last_error) {
            (DeliveryState::FailedRetrying | DeliveryState::Failed, Some(error)) => {
                write!(f, " after {} attempts: {error}", delivery.attempts)
            }
            _ => Ok(()),
        }
    }
}

/// The alerts table from alert objects, as a remote collector sends them: the id on the alert's
/// own line, no deliveries.
pub fn remote_alerts(out: &mut impl Write, alerts: &[Map<String, Value>]) -> io::Result<()> {
    row!(
        out,
        "{:<30}  {:<8}  {:<34}  {:<16}  {:>5}  SUMMARY",
        "TS",
        "SEVERITY",
        "RULE",
        "HOST",
        "COUNT"
    )?;
    // A key the object lacks shows as an empty cell.
    let text = |a: &Map<String, Value>, key: &str| match a.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    for a in alerts {
        row!(
            out,
            "{:<30}  {:<8}  {:<34}  {:<16}  {:>5}  {} (id {})",
            text(a, "ts"),
            text(a, "severity"),
            text(a, "rule"),
            text(a, "host"),
            text(a, "count"),
            text(a, "summary"),
            text(a, "id")
        )?;
    }
    Ok(())
}

/// A host's timeline: each event, and under a process's event the executables of its ancestors.
pub fn timeline(out: &mut impl Write, entries: &[Entry]) -> io::Result<()> {
    row!(out, "{:<30}  {:<16}  {:>8}  DETAIL", "TS", "KIND", "SEQ")?;
    for entry in entries {
        let event = &entry.record.event;
        row!(
            out,
            "{:<30}  {:<16}  {:>8}  {}",
            event.ts.to_rfc3339(),
            event.kind(),
            event.seq,
            event_detail(&entry.record)
        )?;
        if !entry.lineage.is_empty() {
            let chain: Vec<&str> = entry.lineage.iter().map(|e| short_exe(e)).collect();
            let own = crate::report::process_of(&entry.record)
                .map(|p| short_exe(&p.exe))
                .unwrap_or("?");
            row!(
                out,
                "{:<30}  {:<16}  {:>8}    └ {own} ← {}",
                "",
                "",
                "",
                chain.join(" ← ")
            )?;
        }
    }
    Ok(())
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

/// The scope report: the answer first, then one table per host and a section per kind of finding.
pub fn scope(out: &mut impl Write, scope: &Scope) -> io::Result<()> {
    let alert = match &scope.alert {
        Some(a) => format!(" (alert {a})"),
        None => String::new(),
    };
    row!(out, "scope {} .. {}{alert}", scope.since, scope.until)?;
    writeln!(out)?;
    if scope.read_and_sent.is_empty() {
        row!(
            out,
            "read sensitive records, then connected out: none in this window"
        )?;
    } else {
        row!(
            out,
            "read sensitive records, then connected out: {}",
            scope.read_and_sent.join(", ")
        )?;
    }
    writeln!(out)?;
    row!(
        out,
        "{:<20}  {:>12}  {:<30}  {:>8}  {:>12}  {:>7}  {:>7}",
        "HOST",
        "ROWS READ",
        "TABLES",
        "OUT",
        "BYTES SENT",
        "CREATED",
        "DELETED"
    )?;
    for h in &scope.hosts {
        row!(
            out,
            "{:<20}  {:>12}  {:<30}  {:>8}  {:>12}  {:>7}  {:>7}",
            h.host,
            h.sensitive_rows_read,
            h.sensitive_tables.join(","),
            format!(
                "{}/{}",
                h.public_connections_after_read, h.public_connections
            ),
            h.bytes_sent_after_read,
            h.files_created,
            h.files_deleted
        )?;
    }
    if !scope.db_reads.is_empty() {
        writeln!(out)?;
        row!(out, "database reads of sensitive tables:")?;
        for r in &scope.db_reads {
            row!(
                out,
                "  {} read {} rows of {} ({} queries, session total {}) as {}@{} on {} [{}], session {}, {} .. {}",
                r.reader,
                r.rows,
                r.tables.join(","),
                r.queries,
                opt(r.session_total),
                r.db_user,
                r.database,
                r.db_host,
                r.db_system,
                r.session,
                r.first,
                r.last
            )?;
        }
    }
    if !scope.files.is_empty() {
        writeln!(out)?;
        row!(out, "export files created or deleted:")?;
        for f in &scope.files {
            row!(
                out,
                "  {} {} {} {} size={} format={} rows~{} personal={} by {} (pid {}, user {})",
                f.ts,
                f.host,
                f.kind,
                f.path,
                opt(f.size),
                opt(f.format.clone()),
                opt(f.est_rows),
                f.personal,
                opt(f.exe.as_deref().map(short_exe)),
                opt(f.pid),
                opt(f.user.clone())
            )?;
        }
    }
    if !scope.outbound.is_empty() {
        writeln!(out)?;
        row!(out, "connections to public addresses:")?;
        for o in &scope.outbound {
            row!(
                out,
                "  {} {} -> {}:{} sent={} by {} (pid {}){}",
                o.ts,
                o.host,
                o.remote_addr,
                o.remote_port,
                opt(o.bytes_sent),
                opt(o.exe.as_deref().map(short_exe)),
                opt(o.pid),
                if o.after_read { " after reading" } else { "" }
            )?;
        }
    }
    if !scope.processes.is_empty() {
        writeln!(out)?;
        row!(out, "processes involved:")?;
        for p in &scope.processes {
            let mut chain = vec![short_exe(&p.exe)];
            chain.extend(p.lineage.iter().map(|e| short_exe(e)));
            row!(
                out,
                "  {} pid {} {} user {} ({})",
                p.host,
                p.pid,
                chain.join(" ← "),
                p.user,
                p.involved.join(", ")
            )?;
        }
    }
    Ok(())
}

pub fn operators(out: &mut impl Write, rows: &[OperatorRow]) -> io::Result<()> {
    row!(out, "{:<24}  {:<10}  CREATED", "NAME", "STATUS")?;
    for row in rows {
        row!(out, "{:<24}  {:<10}  {}", row.name, row.status, row.created)?;
    }
    Ok(())
}

/// What `verify` found: explained gaps as notes, then every problem, then the totals.
pub fn verify(out: &mut impl Write, report: &Report) -> io::Result<()> {
    // Notes and problems quote what the store and the checkpoint file hold (agent ids, finding
    // details, parse errors), which whoever tampered with them chose.
    for note in &report.notes {
        writeln!(out, "note: {}", escape_control(note))?;
    }
    for problem in &report.problems {
        writeln!(out, "FAIL: {}", escape_control(problem))?;
    }
    writeln!(
        out,
        "verified {} events in {} batches from {} agents: {} problems",
        report.events,
        report.batches,
        report.agents,
        report.problems.len()
    )
}

/// What `quickstart` shows as it happens: committed events as table rows (no header), then the
/// findings and alerts they raised.
pub fn observed(out: &mut impl Write, observed: &Observed) -> io::Result<()> {
    match observed {
        Observed::Committed(notice) => {
            event_rows(out, &notice.records)?;
            for finding in &notice.findings {
                row!(
                    out,
                    "finding {} on {}: {}",
                    finding.kind,
                    finding.host,
                    finding.detail
                )?;
            }
        }
        Observed::Alert(alert) => {
            row!(
                out,
                "ALERT {} {} on {}: {}",
                alert.severity.as_str().to_uppercase(),
                alert.rule,
                alert.host,
                alert.summary
            )?;
        }
    }
    Ok(())
}

/// `rules check`: each rule loaded with its title, or the one reason it cannot run, then totals.
/// Names and reasons quote the rule files, which may be hostile.
pub fn rules_check(out: &mut impl Write, report: &[crate::detect::RuleReport]) -> io::Result<()> {
    let mut refused = 0;
    for entry in report {
        let file = entry.file.display();
        let id = entry.id.as_deref().unwrap_or("-");
        match &entry.outcome {
            Ok(()) => row!(
                out,
                "loaded   {file}  {id}  {}",
                entry.title.as_deref().unwrap_or("")
            )?,
            Err(reason) => {
                refused += 1;
                row!(out, "refused  {file}  {id}  {reason}")?;
            }
        }
    }
    row!(
        out,
        "{} rules loaded, {refused} cannot run",
        report.len() - refused
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bannin::time::Timestamp;

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
        agents(&mut out, &[agent]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r"web1\na-2  db-prod-1") && text.contains(r"h\x1b[2J"));
    }
}
