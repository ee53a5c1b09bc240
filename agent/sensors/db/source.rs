//! One configured database: its log followers, the parser for its format, its running totals,
//! and the `sensor.*` reports about its log.

use std::path::Path;
use std::time::Duration;

use bannin::event::{DbEvent, SensorEvent};
use bannin::time::Timestamp;
use tokio::time::Instant;

use super::SENSOR;
use super::config::{DbKind, Settings, StartAt};
use super::draft::{Draft, ParseCtx};
use super::locator::postgres_locator;
use super::state::SourceState;
use super::tail::{Body, Follower, Framing, Locator, Note, TailError};
use super::{mariadb, postgres};
use crate::sensors::Notice;

/// Unparseable records are reported at most this often per database.
const GARBLED_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// One database: its followers, parser state, totals and reporting state.
pub(super) struct Source {
    pub(super) settings: Settings,
    ctx: ParseCtx,
    log: Option<(Follower, bool)>,
    slow: Option<Follower>,
    state: SourceState,
    log_failing: Option<String>,
    slow_failing: Option<String>,
    pub(super) garbled: u64,
    garbled_reported: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Outcome {
    pub(super) events: Vec<(Timestamp, DbEvent)>,
    pub(super) sensor: Vec<SensorEvent>,
    pub(super) more: bool,
}

impl Source {
    pub(super) fn new(settings: Settings, state: SourceState) -> Self {
        let slow = settings.slow_log.as_ref().map(|path| {
            Follower::new(
                Locator::File(path.clone()),
                Framing::Lines,
                state.slow_log.clone(),
                settings.start_at == StartAt::End,
            )
        });
        Source {
            ctx: ParseCtx {
                server: settings.name.clone(),
                max_statement_len: settings.max_statement_len,
            },
            settings,
            log: None,
            slow,
            state,
            log_failing: None,
            slow_failing: None,
            garbled: 0,
            garbled_reported: None,
        }
    }

    pub(super) fn state(&self) -> SourceState {
        let mut state = self.state.clone();
        if let Some((follower, _)) = &self.log {
            state.log = follower.position();
        }
        if let Some(slow) = &self.slow {
            state.slow_log = slow.position();
        }
        state
    }

    /// The follower for the main log, set up once the log's format can be told.
    fn log_follower(&mut self) -> Result<&mut (Follower, bool), TailError> {
        if self.log.is_none() {
            let start_at_end = self.settings.start_at == StartAt::End;
            let saved = self.state.log.clone();
            let made = match self.settings.kind {
                DbKind::Mariadb => {
                    let log = &self.settings.log;
                    let path = if log.is_dir() {
                        log.join("server_audit.log")
                    } else if log.exists() || log.extension().is_some() {
                        log.clone()
                    } else {
                        // Neither a file nor a directory yet: wait until it is one.
                        return Err(TailError::NoLog { dir: log.clone() });
                    };
                    (
                        Follower::new(Locator::File(path), Framing::Lines, saved, start_at_end),
                        false,
                    )
                }
                DbKind::Postgresql => {
                    let (locator, json) =
                        postgres_locator(&self.settings.log, self.settings.format, saved.as_ref())?;
                    let framing = if json { Framing::Lines } else { Framing::Csv };
                    (Follower::new(locator, framing, saved, start_at_end), json)
                }
            };
            self.log = Some(made);
        }
        match self.log.as_mut() {
            Some(log) => Ok(log),
            None => Err(TailError::NoLog {
                dir: self.settings.log.clone(),
            }),
        }
    }

    /// Reads and parses everything new; blocking.
    pub(super) fn poll(&mut self) -> Outcome {
        let mut outcome = Outcome::default();
        let mut drafts = Vec::new();
        let name = self.settings.name.clone();

        if let Some(slow) = self.slow.as_mut() {
            let path = self.settings.slow_log.clone().unwrap_or_default();
            match slow.poll() {
                Ok(batch) => {
                    report_recovered(&mut self.slow_failing, &name, &path, &mut outcome);
                    outcome.more |= batch.more;
                    for record in batch.records {
                        if let Body::Line { head, .. } = record.body {
                            self.state
                                .mariadb
                                .handle_slow(&String::from_utf8_lossy(&head));
                        }
                    }
                }
                Err(error) => {
                    report_failing(&mut self.slow_failing, &name, &path, &error, &mut outcome)
                }
            }
        }

        let log_path = self.settings.log.clone();
        let batch = self.log_follower().and_then(|(follower, json)| {
            let json = *json;
            follower.poll().map(|batch| (batch, json))
        });
        match batch {
            Ok((batch, json)) => {
                report_recovered(&mut self.log_failing, &name, &log_path, &mut outcome);
                outcome.more |= batch.more;
                for note in batch.notes {
                    outcome.sensor.extend(note_event(&name, note));
                }
                for record in batch.records {
                    if self.parse(record.body, json, &mut drafts).is_err() {
                        self.garbled += 1;
                    }
                }
            }
            Err(error) => report_failing(
                &mut self.log_failing,
                &name,
                &log_path,
                &error,
                &mut outcome,
            ),
        }

        match self.settings.kind {
            DbKind::Postgresql => self.state.postgres.tick(&mut drafts),
            DbKind::Mariadb => self.state.mariadb.tick(&mut drafts),
        }
        for draft in drafts {
            let ts = draft.ts;
            outcome
                .events
                .push((ts, self.state.totals.finish(&self.settings, draft)));
        }
        outcome
    }

    fn parse(&mut self, body: Body, json: bool, drafts: &mut Vec<Draft>) -> Result<(), ()> {
        match (self.settings.kind, body) {
            (DbKind::Postgresql, Body::Fields(fields)) => {
                let entry = postgres::entry_from_csv(fields).ok_or(())?;
                self.state
                    .postgres
                    .handle(entry, &self.ctx, drafts)
                    .map_err(|_| ())
            }
            (DbKind::Postgresql, Body::Line { head, tail }) if json => {
                if head.iter().all(u8::is_ascii_whitespace) {
                    return Ok(());
                }
                let entry = postgres::entry_from_json(&head, &tail).ok_or(())?;
                self.state
                    .postgres
                    .handle(entry, &self.ctx, drafts)
                    .map_err(|_| ())
            }
            (DbKind::Mariadb, Body::Line { head, tail }) => {
                if head.iter().all(u8::is_ascii_whitespace) {
                    return Ok(());
                }
                let line = mariadb::parse_audit_line(&head, &tail).ok_or(())?;
                let rows_expected = self.slow.is_some();
                self.state
                    .mariadb
                    .handle_audit(line, &self.ctx, rows_expected, drafts)
                    .map_err(|_| ())
            }
            _ => Err(()),
        }
    }

    /// A `sensor.error` with the count of unparseable records, at most once per interval.
    pub(super) fn garbled_report(&mut self) -> Option<SensorEvent> {
        if self.garbled == 0 {
            return None;
        }
        let now = Instant::now();
        if self
            .garbled_reported
            .is_some_and(|last| now.duration_since(last) < GARBLED_REPORT_INTERVAL)
        {
            return None;
        }
        self.garbled_reported = Some(now);
        let count = std::mem::take(&mut self.garbled);
        let notice = Notice::error(
            SENSOR,
            format!(
                "{count} unparseable records in the log of database {}",
                self.settings.name
            ),
        );
        Some(
            notice
                .count(count)
                .path(self.settings.log.display())
                .logged(),
        )
    }
}

fn report_failing(
    failing: &mut Option<String>,
    name: &str,
    path: &Path,
    error: &TailError,
    outcome: &mut Outcome,
) {
    let message = error.to_string();
    if failing.as_deref() == Some(message.as_str()) {
        return;
    }
    let notice = Notice::error(SENSOR, format!("database {name}: {message}; retrying"));
    outcome
        .sensor
        .push(notice.count(1).path(path.display()).logged());
    *failing = Some(message);
}

fn report_recovered(failing: &mut Option<String>, name: &str, path: &Path, outcome: &mut Outcome) {
    if failing.take().is_some() {
        let notice = Notice::recovered(SENSOR, format!("database {name}: log readable again"));
        outcome.sensor.push(notice.path(path.display()).logged());
    }
}

fn note_event(name: &str, note: Note) -> Option<SensorEvent> {
    match note {
        Note::Rotated { from, to } => {
            tracing::debug!(database = name, from = %from.display(), to = %to.display(), "database log rotated");
            None
        }
        Note::Truncated { path } => {
            let notice = Notice::status(
                SENSOR,
                format!("database {name}: log was truncated; reading it from the beginning"),
            );
            Some(notice.path(path.display()).logged())
        }
        Note::PositionLost { path } => {
            let notice = Notice::error(
                SENSOR,
                format!(
                    "database {name}: the saved log file is gone; lines written to it after the last save may be lost"
                ),
            );
            Some(notice.path(path.display()).logged())
        }
    }
}
