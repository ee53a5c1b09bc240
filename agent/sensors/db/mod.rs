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
mod draft;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod locator;
mod mariadb;
mod postgres;
mod source;
mod state;
mod statement;
mod tail;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testsupport;
mod totals;

use std::path::PathBuf;
use std::time::Duration;

use bannin::event::Event;

use crate::sensors::{Notice, SensorContext, SensorHandle, Stop};

pub use config::{DatabaseConfig, Settings as DbSettings, settings};
use source::Source;
use state::{STATE_FILE, load_state, save_state};

/// The sensor's name in `sensor.*` events and drop counts.
const SENSOR: &str = "db";

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

/// Starts following every configured database log, keeping read positions in the state
/// directory. The handle's `stop` saves the positions one last time and waits for that.
pub async fn spawn(
    settings: Vec<DbSettings>,
    ctx: &SensorContext,
) -> Result<SensorHandle, DbError> {
    let databases = settings.len();
    let tx = ctx.tx.for_sensor(SENSOR);
    let path = ctx.state_dir.join(STATE_FILE);
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
        let notice = Notice::error(SENSOR, problem).path(path.display());
        let _ = tx.send(notice.logged()).await;
    }
    let stop = Stop::default();
    let task_stop = stop.clone();
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
                    host: tx.shared_host(),
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
                () = task_stop.wait() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // Every ticket was waited for before the last save in the loop; nothing was sent since.
        save_state(&path, &sources, &mut last_saved).await;
    });
    // Listed in `agent.start` as `databases:N`.
    let mut handle = SensorHandle::new("databases", databases.to_string(), stop);
    handle.add_task(task);
    Ok(handle)
}
