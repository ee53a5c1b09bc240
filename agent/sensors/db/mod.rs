//! The database audit sensor: follows PostgreSQL and MariaDB audit logs and emits `db.connect`,
//! `db.disconnect` and `db.query` events.
//!
//! One task polls every configured database in turn. For each it reads the new records in a
//! blocking section ([`tail`]), parses them ([`postgres`], [`mariadb`]), classifies statements
//! ([`statement`]) and keeps running sensitive-row totals ([`totals`]); then it hands the events to
//! the spool, waits for the commit ticket of its last event (no timeout), and only then saves the
//! read positions and parser state (`state_dir/db-positions.json`, replaced atomically). A restart
//! therefore resumes at the first record whose events were not committed: nothing is skipped, and
//! nothing is read twice unless the agent died between the commit and the save.
//!
//! Bad input is never fatal: unparseable records are counted and reported as `sensor.error` at
//! most once a minute per database; a log that cannot be read is reported once as `sensor.error`,
//! retried every poll, and reported as `sensor.recovered` when it works again.

mod config;
mod mariadb;
mod postgres;
mod statement;
mod tail;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testsupport;
mod totals;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bannin::event::{DbAction, DbEvent, Event, SensorEvent, SensorStatus};
use bannin::time::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::pipeline::EventTx;

pub use config::DatabaseConfig;
use config::{DbKind, PgFormat, Settings, StartAt};
use statement::{Dialect, Kind};
use tail::{Body, Follower, Framing, Locator, Note, Position, TailError};
use totals::Totals;

/// The sensor's name in `sensor.*` events and drop counts.
const SENSOR: &str = "db";
/// The file under the state directory that holds read positions and parser state.
const STATE_FILE: &str = "db-positions.json";
/// Unparseable records are reported at most this often per database.
const GARBLED_REPORT_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {name}: {reason}")]
    Config { name: String, reason: String },
    #[error("cannot read the database sensor state {path}: {source}")]
    ReadState {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running sensor. Dropping it stops the task at its next await; [`DbHandle::stop`] also
/// saves the positions one last time and waits for that.
pub struct DbHandle {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl DbHandle {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for DbHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Starts following every configured database log.
pub async fn spawn(
    configs: Vec<DatabaseConfig>,
    state_dir: &Path,
    tx: EventTx,
) -> Result<DbHandle, DbError> {
    let settings = config::validate(configs)?;
    let tx = tx.for_sensor(SENSOR);
    let path = state_dir.join(STATE_FILE);
    let (saved, load_problem) = load_state(&path).await?;
    let mut sources: Vec<Source> = settings
        .into_iter()
        .map(|settings| {
            let state = saved
                .sources
                .get(&settings.name)
                .cloned()
                .unwrap_or_default();
            Source::new(settings, state)
        })
        .collect();
    if let Some(problem) = load_problem {
        let mut event = SensorEvent::new(SensorStatus::Error, SENSOR, problem);
        event.path = path.display().to_string();
        let _ = tx.send(event).await;
    }
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let interval = sources
        .iter()
        .map(|s| s.settings.poll_interval)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let task = tokio::spawn(async move {
        let mut last_saved = String::new();
        // The ticket of the newest event this sensor sent: positions wait for it.
        let mut last_ticket = None;
        loop {
            let mut more = false;
            let mut polled = Vec::with_capacity(sources.len());
            for source in std::mem::take(&mut sources) {
                let blocking = tokio::task::spawn_blocking(move || {
                    let mut source = source;
                    let outcome = source.poll();
                    (source, outcome)
                });
                let (mut source, outcome) = match blocking.await {
                    Ok(done) => done,
                    Err(error) => {
                        tracing::error!(%error, "database log poll panicked");
                        return;
                    }
                };
                more |= outcome.more;
                let events = outcome.events.into_iter().map(|(ts, event)| Event {
                    seq: 0,
                    ts,
                    host: tx.host().to_string(),
                    body: event.into(),
                });
                for body in outcome.sensor {
                    match tx.send(body).await {
                        Ok(ticket) => last_ticket = Some(ticket),
                        Err(_) => return,
                    }
                }
                for event in events {
                    match tx.send_event(event).await {
                        Ok(ticket) => last_ticket = Some(ticket),
                        Err(_) => return,
                    }
                }
                if let Some(report) = source.garbled_report() {
                    match tx.send(report).await {
                        Ok(ticket) => last_ticket = Some(ticket),
                        Err(_) => return,
                    }
                }
                polled.push(source);
            }
            sources = polled;
            // Only once this sensor's events are committed may the positions move on.
            if let Some(ticket) = last_ticket {
                tx.committed(ticket).await;
            }
            save_state(&path, &sources, &mut last_saved).await;
            let pause = if more { Duration::ZERO } else { interval };
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Every ticket was waited for before the last save in the loop; nothing was sent since.
        save_state(&path, &sources, &mut last_saved).await;
    });
    Ok(DbHandle {
        stop: Some(stop_tx),
        task,
    })
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    sources: BTreeMap<String, SourceState>,
}

/// What one database's follower and parser must remember across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SourceState {
    #[serde(default)]
    log: Option<Position>,
    #[serde(default)]
    slow_log: Option<Position>,
    #[serde(default)]
    postgres: postgres::Tracker,
    #[serde(default)]
    mariadb: mariadb::Tracker,
    #[serde(default)]
    totals: Totals,
}

/// The saved state, or an empty one and why (a corrupt file is set aside, not fatal).
async fn load_state(path: &Path) -> Result<(StateFile, Option<String>), DbError> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((StateFile::default(), None));
        }
        Err(source) => {
            return Err(DbError::ReadState {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    match serde_json::from_str(&text) {
        Ok(state) => Ok((state, None)),
        Err(error) => {
            let aside = path.with_extension("json.corrupt");
            let _ = tokio::fs::rename(path, &aside).await;
            Ok((
                StateFile::default(),
                Some(format!(
                    "saved database log positions were unreadable ({error}); moved to {} and starting afresh",
                    aside.display()
                )),
            ))
        }
    }
}

async fn save_state(path: &Path, sources: &[Source], last_saved: &mut String) {
    let state = StateFile {
        sources: sources
            .iter()
            .map(|s| (s.settings.name.clone(), s.state()))
            .collect(),
    };
    let text = match serde_json::to_string(&state) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(%error, "cannot encode database log positions");
            return;
        }
    };
    if text == *last_saved {
        return;
    }
    let target = path.to_path_buf();
    let body = text.clone();
    let written =
        tokio::task::spawn_blocking(move || write_atomically(&target, body.as_bytes())).await;
    match written {
        Ok(Ok(())) => *last_saved = text,
        Ok(Err(error)) => {
            tracing::warn!(path = %path.display(), %error, "cannot save database log positions")
        }
        Err(error) => tracing::warn!(%error, "saving database log positions panicked"),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Event actions as saved with held drafts (the event type does not serialise its action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Connect,
    Disconnect,
    Query,
}

impl From<Action> for DbAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Connect => DbAction::Connect,
            Action::Disconnect => DbAction::Disconnect,
            Action::Query => DbAction::Query,
        }
    }
}

/// An event as a parser builds it, before totals and export decisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Draft {
    pub ts: Timestamp,
    pub action: Action,
    pub event: DbEvent,
    pub kind: Kind,
    pub unfiltered: bool,
    pub dump_shape: bool,
}

impl Draft {
    fn new(ts: Timestamp, action: Action, event: DbEvent) -> Self {
        Draft {
            ts,
            action,
            event,
            kind: Kind::Other,
            unfiltered: false,
            dump_shape: false,
        }
    }
}

/// What the parsers need to know about the database they parse for.
#[derive(Debug, Clone)]
pub struct ParseCtx {
    pub server: String,
    pub max_statement_len: usize,
}

/// A query draft: the statement classified, then masked and cut for the event.
fn draft_query(
    ts: Timestamp,
    mut event: DbEvent,
    raw: &str,
    dialect: Dialect,
    ctx: &ParseCtx,
) -> Draft {
    let analysis = statement::analyze(raw, dialect, &event.database);
    let masked = statement::mask(raw, dialect);
    event.statement = statement::truncate(&masked, ctx.max_statement_len).into_owned();
    event.statement_kind = analysis.kind.as_str().to_string();
    event.tables = analysis.tables;
    if let Some(export) = analysis.export {
        event.export_method = export.as_str().to_string();
    }
    Draft {
        ts,
        action: Action::Query,
        event,
        kind: analysis.kind,
        unfiltered: analysis.unfiltered,
        dump_shape: analysis.dump_shape,
    }
}

/// A server's error text for an event: masked like the statement it belongs to (secrets the
/// statement held are masked wherever the error repeats them) and cut to the same length.
fn error_text(message: &str, statement: &str, dialect: Dialect, ctx: &ParseCtx) -> String {
    let masked = statement::mask_error(message, statement, dialect);
    statement::truncate(&masked, ctx.max_statement_len).into_owned()
}

/// One database: its followers, parser state, totals and reporting state.
struct Source {
    settings: Settings,
    ctx: ParseCtx,
    log: Option<(Follower, bool)>,
    slow: Option<Follower>,
    state: SourceState,
    log_failing: Option<String>,
    slow_failing: Option<String>,
    garbled: u64,
    garbled_reported: Option<Instant>,
}

#[derive(Default)]
struct Outcome {
    events: Vec<(Timestamp, DbEvent)>,
    sensor: Vec<SensorEvent>,
    more: bool,
}

impl Source {
    fn new(settings: Settings, state: SourceState) -> Self {
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

    fn state(&self) -> SourceState {
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
    fn poll(&mut self) -> Outcome {
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
    fn garbled_report(&mut self) -> Option<SensorEvent> {
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
        let mut event = SensorEvent::new(
            SensorStatus::Error,
            SENSOR,
            format!(
                "{count} unparseable records in the log of database {}",
                self.settings.name
            ),
        );
        event.count = count;
        event.path = self.settings.log.display().to_string();
        Some(event)
    }
}

/// Where a PostgreSQL server's log is: `log` is the data directory (holding `current_logfiles`)
/// or the log_directory (inside the data directory, or anywhere). Also says whether it is jsonlog.
fn postgres_locator(
    log: &Path,
    format: PgFormat,
    saved: Option<&Position>,
) -> Result<(Locator, bool), TailError> {
    let (list, dir) = if log.join("current_logfiles").is_file() {
        let list = log.join("current_logfiles");
        let dir = std::fs::read_to_string(&list)
            .ok()
            .and_then(|text| {
                let first = text.lines().find(|l| !l.starts_with("stderr "))?;
                let relative = first.split_once(' ')?.1;
                Some(log.join(relative).parent()?.to_path_buf())
            })
            .unwrap_or_else(|| log.join("log"));
        (Some(list), dir)
    } else {
        let parent_list = log.parent().map(|p| p.join("current_logfiles"));
        (parent_list.filter(|p| p.is_file()), log.to_path_buf())
    };
    let json = match format {
        PgFormat::Csvlog => false,
        PgFormat::Jsonlog => true,
        PgFormat::Auto => {
            let listed = list.as_ref().and_then(|l| std::fs::read_to_string(l).ok());
            if let Some(saved) = saved {
                saved.path.extension().is_some_and(|x| x == "json")
            } else if let Some(text) =
                listed.filter(|t| t.contains("csvlog ") || t.contains("jsonlog "))
            {
                !text.contains("csvlog ")
            } else {
                let newest = Locator::Postgres {
                    dir: dir.clone(),
                    current_logfiles: None,
                    formats: vec!["csvlog", "jsonlog"],
                };
                newest_is_json(&newest)?
            }
        }
    };
    let formats = vec![if json { "jsonlog" } else { "csvlog" }];
    Ok((
        Locator::Postgres {
            dir,
            current_logfiles: list,
            formats,
        },
        json,
    ))
}

fn newest_is_json(locator: &Locator) -> Result<bool, TailError> {
    let Locator::Postgres { dir, formats, .. } = locator else {
        return Ok(false);
    };
    let mut newest: Option<(std::time::SystemTime, bool)> = None;
    let entries = std::fs::read_dir(dir).map_err(|source| TailError::Open {
        path: dir.clone(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let json = match path.extension().and_then(|x| x.to_str()) {
            Some("json") if formats.contains(&"jsonlog") => true,
            Some("csv") if formats.contains(&"csvlog") => false,
            _ => continue,
        };
        if let Some(modified) = entry.metadata().ok().and_then(|m| m.modified().ok()) {
            if newest.is_none_or(|(t, _)| modified > t) {
                newest = Some((modified, json));
            }
        }
    }
    newest
        .map(|(_, json)| json)
        .ok_or_else(|| TailError::NoLog { dir: dir.clone() })
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
    tracing::warn!(database = name, %error, "cannot read database log; retrying");
    let mut event = SensorEvent::new(
        SensorStatus::Error,
        SENSOR,
        format!("database {name}: {message}; retrying"),
    );
    event.count = 1;
    event.path = path.display().to_string();
    outcome.sensor.push(event);
    *failing = Some(message);
}

fn report_recovered(failing: &mut Option<String>, name: &str, path: &Path, outcome: &mut Outcome) {
    if failing.take().is_some() {
        tracing::info!(database = name, "database log readable again");
        let mut event = SensorEvent::new(
            SensorStatus::Recovered,
            SENSOR,
            format!("database {name}: log readable again"),
        );
        event.path = path.display().to_string();
        outcome.sensor.push(event);
    }
}

fn note_event(name: &str, note: Note) -> Option<SensorEvent> {
    match note {
        Note::Rotated { from, to } => {
            tracing::debug!(database = name, from = %from.display(), to = %to.display(), "database log rotated");
            None
        }
        Note::Truncated { path } => {
            let mut event = SensorEvent::new(
                SensorStatus::Status,
                SENSOR,
                format!("database {name}: log was truncated; reading it from the beginning"),
            );
            event.path = path.display().to_string();
            Some(event)
        }
        Note::PositionLost { path } => {
            let mut event = SensorEvent::new(
                SensorStatus::Error,
                SENSOR,
                format!(
                    "database {name}: the saved log file is gone; lines written to it after the last save may be lost"
                ),
            );
            event.path = path.display().to_string();
            Some(event)
        }
    }
}

/// What the fuzz targets in `fuzz/` drive, compiled only under `--cfg fuzzing` (cargo fuzz sets it)
/// and in tests, which check that the golden logs produce events through it:
/// a log's bytes go through the same follower, parsers, trackers and totals as in [`spawn`], and the
/// state a restart would read back must survive its round trip.
#[cfg(any(fuzzing, test))]
pub mod fuzzing {
    use super::*;

    /// Which log the bytes are.
    #[derive(Debug, Clone, Copy)]
    pub enum Log {
        PostgresCsv,
        PostgresJson,
        MariadbAudit,
        MariadbSlow,
    }

    /// Writes `bytes` as the whole log into `dir`, reads it to the end as the sensor would, and
    /// returns how many events came out.
    pub fn run(log: Log, dir: &Path, bytes: &[u8]) -> usize {
        if std::fs::create_dir_all(dir).is_err() {
            return 0;
        }
        let (kind, format, file, slow) = match log {
            Log::PostgresCsv => ("postgresql", "csvlog", "postgresql.csv", false),
            Log::PostgresJson => ("postgresql", "jsonlog", "postgresql.json", false),
            Log::MariadbAudit => ("mariadb", "auto", "server_audit.log", false),
            Log::MariadbSlow => ("mariadb", "auto", "server_audit.log", true),
        };
        let (log_bytes, slow_bytes): (&[u8], &[u8]) =
            if slow { (b"", bytes) } else { (bytes, b"") };
        let log_path = dir.join(file);
        let slow_path = dir.join("slow.log");
        if std::fs::write(&log_path, log_bytes).is_err()
            || std::fs::write(&slow_path, slow_bytes).is_err()
        {
            return 0;
        }
        let log_dir = if kind == "postgresql" { dir } else { &log_path };
        let text = format!(
            "kind = {kind:?}\nformat = {format:?}\nlog = {:?}\nstart_at = \"beginning\"\n\
             sensitive_tables = [\"public.customers\", \"shop.customers\"]\n{}",
            log_dir.display().to_string(),
            if slow {
                format!("slow_log = {:?}\n", slow_path.display().to_string())
            } else {
                String::new()
            }
        );
        let config: DatabaseConfig = match toml::from_str(&text) {
            Ok(config) => config,
            Err(error) => panic!("the fuzz harness's own config is refused: {error}"),
        };
        let settings = match config::validate(vec![config]) {
            Ok(mut settings) => settings.remove(0),
            Err(error) => panic!("the fuzz harness's own config is refused: {error}"),
        };
        let mut source = Source::new(settings, SourceState::default());
        let mut events = 0;
        for _ in 0..64 {
            let outcome = source.poll();
            events += outcome.events.len();
            if !outcome.more {
                break;
            }
        }
        let _ = source.garbled_report();
        let saved = serde_json::to_string(&source.state())
            .unwrap_or_else(|error| panic!("the sensor state does not serialize: {error}"));
        if let Err(error) = serde_json::from_str::<SourceState>(&saved) {
            panic!("a restart could not read the saved sensor state back: {error}\n{saved}");
        }
        events
    }

    /// The SQL lexer and masking, for both dialects.
    pub fn sql(text: &str) {
        for dialect in [Dialect::Postgres, Dialect::MariaDb] {
            let _ = statement::analyze(text, dialect, "db");
            let masked = statement::mask(text, dialect);
            let _ = statement::mask_error(text, text, dialect);
            let _ = statement::truncate(&masked, 64);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_golden_logs_produce_events_through_the_fuzzing_entry_point() {
            let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/db");
            let scratch = tempfile::tempdir().unwrap();
            for (log, file) in [
                (Log::PostgresCsv, "pg-csv-sessions.log"),
                (Log::PostgresJson, "pg-json-sessions.log"),
                (Log::MariadbAudit, "mariadb-sessions.log"),
            ] {
                let bytes = std::fs::read(golden.join(file)).unwrap();
                let dir = scratch.path().join(file);
                assert!(run(log, &dir, &bytes) > 10, "{file} made no events");
            }
            let slow = std::fs::read(golden.join("mariadb-sessions.slow")).unwrap();
            run(Log::MariadbSlow, &scratch.path().join("slow"), &slow);
            sql("SELECT name FROM public.customers WHERE id = 42");
        }
    }
}
