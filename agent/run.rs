//! `run`: the spool, the sender, the sensors and the heartbeat, until a signal stops them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bannin::event::{AgentAction, AgentEvent};
use tokio::sync::{Notify, watch};

use crate::config::Settings;
use crate::pipeline::{self, EventTx};
use crate::sensors::process::ProcessTable;
use crate::sensors::{SensorContext, SensorHandle};
use crate::spool::{self, Spool};
use crate::{identity, sender, sensors, whereabouts};

pub struct RunArgs {
    pub state_dir: PathBuf,
    pub config: Settings,
    pub watch: Vec<PathBuf>,
    /// `--collector`, repeatable: the collectors to send to, in order of preference.
    pub collector: Vec<String>,
}

/// How long the sensors may take to start before the agent logs where its threads wait.
const STALLED_START: Duration = Duration::from_secs(10);

/// How long a stopping agent keeps trying to deliver what is spooled.
const FLUSH_ON_STOP: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> Result<()> {
    let identity = Arc::new(identity::load(&args.state_dir)?);
    let collectors = if !args.collector.is_empty() {
        args.collector.clone()
    } else if !args.config.agent.collectors.is_empty() {
        args.config.agent.collectors.clone()
    } else {
        vec![
            args.config
                .agent
                .collector
                .clone()
                .unwrap_or_else(|| identity.collector.clone()),
        ]
    };
    let collector = collectors.join(", ");
    let host = identity.name.clone();
    let span = tracing::info_span!("agent", agent_id = %identity.agent_id, name = %host);
    let _guard = span.enter();

    let spool = Spool::open(&args.state_dir, args.config.spool.max_bytes, &host)
        .context("cannot open the spool")?;
    let (tx, rx) = pipeline::channel(&host);
    let wake = Arc::new(Notify::new());
    let mut writer = tokio::spawn(spool::run_writer(
        spool.clone(),
        rx,
        wake.clone(),
        tx.tickets(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = tokio::spawn(sender::run(
        identity.clone(),
        collectors,
        spool.clone(),
        wake,
        args.config.sender.clone(),
        stop_rx,
    ));
    let drops = pipeline::spawn_drop_reporter(tx.for_sensor("agent"), Duration::from_secs(1));

    let configured = &args.config.sensors;
    let mut files = configured.files.clone();
    files.watch.extend(args.watch.iter().cloned());
    let ctx = SensorContext {
        tx: tx.clone(),
        state_dir: args.state_dir.clone(),
        processes: ProcessTable::from_settings(&configured.process),
    };
    // A start-up that stalls (a sensor's kernel call, a loader) says where, rather than nothing.
    let starting = whereabouts::watch("the agent's start", STALLED_START);
    // The process sensor first, so the table knows the running processes before the others ask.
    let handles = vec![
        sensors::process::spawn(configured.process.clone(), &ctx)
            .await
            .context("cannot start the process sensor")?,
        sensors::files::spawn(files, &ctx)
            .await
            .context("cannot start the file sensor")?,
        sensors::net::spawn(configured.network.clone(), &ctx)
            .await
            .context("cannot start the network sensor")?,
        sensors::db::spawn(configured.databases.clone(), &ctx)
            .await
            .context("cannot start the database sensor")?,
    ];
    drop(ctx);
    let sensors: Vec<String> = handles.iter().map(SensorHandle::describe).collect();
    let mut start = AgentEvent::new(AgentAction::Start);
    start.sensors = sensors.clone();
    start.message = format!("agent {} started", identity.agent_id);
    tx.send(start).await?;
    let heartbeat = spawn_heartbeat(tx.clone(), spool.clone(), args.config.agent.heartbeat);
    tracing::info!(%collector, state_dir = %args.state_dir.display(), sensors = ?sensors, "agent running");
    drop(starting);

    bannin::signals::shutdown().await;
    tracing::info!("stopping");
    heartbeat.abort();
    for handle in handles {
        handle.stop().await;
    }
    drops.stop().await;
    let mut stop = AgentEvent::new(AgentAction::Stop);
    let stats = spool.stats();
    stop.spool_events = stats.events;
    stop.spool_bytes = stats.bytes;
    let last = tx.send(stop).await?;
    // Nothing is sent after `agent.stop`, and tickets commit in order: once it is in the spool, so
    // is every event before it. The writer retries a spool it cannot write for as long as it takes;
    // giving up here would lose events silently.
    tokio::select! {
        () = tx.committed(last) => {}
        ended = &mut writer => {
            tracing::error!(?ended, "the spool writer ended before the last event was committed");
        }
    }
    drop(tx);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(FLUSH_ON_STOP, sender).await.is_err() {
        tracing::warn!(
            spooled = spool.stats().events,
            "collector unreachable; events stay in the spool for the next start"
        );
    }
    writer.abort();
    Ok(())
}

fn spawn_heartbeat(tx: EventTx, spool: Spool, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let stats = spool.stats();
            let mut beat = AgentEvent::new(AgentAction::Heartbeat);
            beat.spool_events = stats.events;
            beat.spool_bytes = stats.bytes;
            if tx.send(beat).await.is_err() {
                return;
            }
        }
    })
}
