//! The retention task: deletes events the collector received more than `[retention] days` ago,
//! whole signed batches at a time. Age is the collector's receipt time, never an agent's timestamp.
//!
//! It runs on its own connection in short transactions of a few batches each (`store::prune`), with a
//! pause between them, so the ingest writer never waits more than one small step. On a PostgreSQL
//! store it drops whole day partitions instead (`store::pg::prune`), on one collector at a time.

use std::path::PathBuf;
use std::time::Duration;

use bannin::time::Timestamp;
use serde::Deserialize;

use crate::store::{self, StoreError};

/// Batches deleted per transaction: small, so ingest's wait for the lock stays in milliseconds.
const STEP_BATCHES: usize = 64;
/// The pause between steps, leaving the lock to ingest.
const STEP_PAUSE: Duration = Duration::from_millis(20);

/// `[retention]`: how long events are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Events received more than this many days ago are deleted; 0 keeps everything. Default 90.
    pub days: u64,
    /// How often to look for old events. Default "10m".
    #[serde(with = "bannin::time::duration_str")]
    pub check_every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            days: 90,
            check_every: Duration::from_secs(600),
        }
    }
}

impl RetentionConfig {
    pub fn keep(&self) -> Option<Duration> {
        (self.days > 0).then(|| Duration::from_secs(self.days.saturating_mul(86_400)))
    }
}

/// Deletes everything older than `keep` in small steps; returns (batches, events) deleted.
pub async fn prune_once(data_dir: PathBuf, keep: Duration) -> Result<(u64, u64), StoreError> {
    let cutoff = Timestamp::now().saturating_sub(keep);
    let (mut conn, seal) = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let seal = crate::seal::Seal::load_or_create(&dir)?;
            Ok::<_, StoreError>((store::prune::open(&dir)?, seal))
        })
        .await
        .map_err(|_| StoreError::WriterGone)??
    };
    let (mut batches, mut events) = (0, 0);
    loop {
        let seal = seal.clone();
        let (back, step) = tokio::task::spawn_blocking(move || {
            let step = store::prune::prune_step(&mut conn, &seal, cutoff, STEP_BATCHES);
            (conn, step)
        })
        .await
        .map_err(|_| StoreError::WriterGone)?;
        conn = back;
        let step = step?;
        crate::metrics::pruned(step.batches, step.events);
        batches += step.batches;
        events += step.events;
        if step.batches < STEP_BATCHES as u64 {
            break;
        }
        tokio::time::sleep(STEP_PAUSE).await;
    }
    Ok((batches, events))
}

/// Runs for the life of `serve`.
pub async fn run(data_dir: PathBuf, config: RetentionConfig) {
    let Some(keep) = config.keep() else {
        tracing::info!("retention disabled; events are kept forever");
        return;
    };
    let mut tick = tokio::time::interval(config.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match prune_once(data_dir.clone(), keep).await {
            Ok((0, _)) => {}
            Ok((batches, events)) => {
                tracing::info!(
                    batches,
                    events,
                    days = config.days,
                    "retention deleted old events"
                )
            }
            Err(error) => tracing::warn!(%error, "retention failed; will retry"),
        }
    }
}

/// Runs for the life of `serve` on a PostgreSQL store. Every collector runs it; each round one of
/// them (an advisory lock) drops the day partitions that ended more than `days` ago, once
/// detection has read them. A lost session is opened again at the next round.
pub async fn run_postgres(
    target: store::pg::Target,
    config: RetentionConfig,
    seal: crate::seal::Seal,
) {
    let Some(keep) = config.keep() else {
        tracing::info!("retention disabled; events are kept forever");
        return;
    };
    let mut tick = tokio::time::interval(config.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        tick.tick().await;
        let session = match client.take() {
            Some(session) if !session.is_closed() => session,
            _ => match target.connect().await {
                Ok(session) => session,
                Err(error) => {
                    tracing::warn!(%error, "retention failed; will retry");
                    continue;
                }
            },
        };
        let session = client.insert(session);
        let cutoff = store::pg::receipt_now().saturating_sub(keep);
        match store::pg::prune::prune(session, &seal, cutoff).await {
            Ok(outcome) => {
                if !outcome.days.is_empty() {
                    crate::metrics::pruned(outcome.batches, outcome.events);
                    tracing::info!(
                        batches = outcome.batches,
                        events = outcome.events,
                        partitions = ?outcome.days,
                        days = config.days,
                        "retention deleted old events"
                    );
                }
                match outcome.kept {
                    None | Some(store::pg::prune::Kept::Busy) => {}
                    Some(kept) => {
                        tracing::info!(reason = %kept, "retention keeps old days for now")
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "retention failed; will retry"),
        }
    }
}
