//! Printing query results as a table for people or JSON lines for tools.

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
    writeln!(
        out,
        "{:<30}  {:<16}  {:<16}  {:>8}  DETAIL",
        "TS", "KIND", "HOST", "SEQ"
    )?;
    events_table_rows(out, records)
}

/// Table rows without the header, for streaming output.
pub fn events_table_rows(out: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
    for record in records {
        let event = &record.event;
        writeln!(
            out,
            "{:<30}  {:<16}  {:<16}  {:>8}  {}",
            event.ts.to_rfc3339(),
            event.kind(),
            event.host,
            event.seq,
            event_detail(record)
        )?;
    }
    Ok(())
}

pub fn agents_table(out: &mut impl Write, agents: &[AgentRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20}  {:<20}  {:<20}  {:<10}  {:<30}  {:>10}  {:>8}",
        "AGENT", "NAME", "HOST", "STATUS", "LAST SEEN", "LAST SEQ", "SPOOL"
    )?;
    for a in agents {
        writeln!(
            out,
            "{:<20}  {:<20}  {:<20}  {:<10}  {:<30}  {:>10}  {:>8}",
            a.agent_id,
            a.name,
            a.host,
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
    writeln!(
        out,
        "{:<30}  {:<8}  {:<34}  {:<16}  {:>5}  SUMMARY",
        "TS", "SEVERITY", "RULE", "HOST", "COUNT"
    )?;
    for row in rows {
        let a = &row.alert;
        writeln!(
            out,
            "{:<30}  {:<8}  {:<34}  {:<16}  {:>5}  {}",
            a.ts.to_rfc3339(),
            a.severity.as_str(),
            a.rule,
            a.host,
            a.count,
            a.summary
        )?;
        writeln!(out, "{:>32}id {}", "", a.id)?;
        for delivery in &row.deliveries {
            writeln!(out, "{:>32}delivery {delivery}", "")?;
        }
    }
    Ok(())
}
