//! Detection over a shared PostgreSQL store: one fenced leader among the collectors.
//!
//! Every collector runs [`run`]. It opens a session of its own and tries
//! `pg_try_advisory_lock`; the one that holds it leads. The leader rebuilds the engine's state from
//! the store (every event at or before the stored cursor in the engine's window), then reads what
//! committed after the cursor, in `(transaction id, agent, seq)` order, strictly below the oldest
//! transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`): a transaction that
//! commits late has an id below that horizon until it ends, so it is waited for, never skipped.
//!
//! The alerts a page raises, their chain entries, their deliveries and the moved cursor are written
//! in one transaction on the session that holds the lock. A leader whose session ends (killed,
//! terminated, partitioned) loses the lock with it, and its next write fails: its half-done work
//! rolls back, and the next leader starts again at the cursor.

use std::time::Duration;

use bannin::event::Record;
use bannin::proto::decode_event;
use bannin::time::Timestamp;
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::alert::{Alert, EvidenceRef};
use crate::detect::{AlertUpdate, DetectConfig, Engine};
use crate::finding::{Finding, FindingKind};
use crate::hooks::{Notifier, Router, SinkId};
use crate::seal::{self, Seal};
use crate::store::StoreError;
use crate::store::pg::{Target, pg_message};

/// The advisory lock the detection leader holds (any 64-bit key no other tool uses).
pub const LEADER_LOCK: i64 = 0x6261_6e6e_696e_0010;
/// Rows one page reads from each of batches and findings.
const PAGE: i64 = 500;
/// How often a follower tries for the lock.
const POLL: Duration = Duration::from_millis(200);
/// How often an idle leader looks for rows committed through other collectors (a batch committed
/// through its own collector wakes it at once): the most such a batch waits before detection. At
/// 200 ms, the wait made most of the unlink-to-webhook time (BENCHMARKS.md).
const IDLE_POLL: Duration = Duration::from_millis(50);
/// A failure point for tests: `BANNIN_FAILPOINT=leader.before_commit:abort` fails the leader's
/// write; `…:hold:FILE` holds it while FILE exists.
const FAILPOINT: &str = "BANNIN_FAILPOINT";

/// Where detection has read to: the last row handled, as (transaction id, 0 for a batch or 1 for
/// a finding, agent, last seq of the batch or id of the finding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    xid: u64,
    kind: i32,
    agent_no: i64,
    n: i64,
}

/// What the leader needs; cloned into its thread.
pub struct Leader {
    pub target: Target,
    pub detection: DetectConfig,
    pub seal: Seal,
    pub router: Router,
    pub notifier: Notifier,
    /// Detection held back longer than this raises a `detection-lag` alert.
    pub lag_alert_after: Duration,
    /// Signalled by this collector's ingest after each commit, so an idle leader reads the batch
    /// at once instead of at its next poll. (Not a NOTIFY in the ingest transaction: that would
    /// serialise every collector's commits.)
    pub committed: std::sync::Arc<tokio::sync::Notify>,
}

/// The rule id of the alert a stalled detection raises.
pub const LAG_RULE: &str = "detection-lag";
/// How often the leader measures its lag.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// How far detection is held back: the oldest transaction open anywhere on the server (every one
/// of them holds the horizon), and the batches committed above the horizon, waiting behind it,
/// with their events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    pub oldest_writer: Duration,
    pub waiting_batches: i64,
    pub waiting_events: i64,
}

/// Measures [`Lag`] in one statement: the leader for its alert, and every collector for its
/// metrics. Cheap: the count reads the end of the `batches_xid` index above the horizon.
pub async fn lag(client: &Client) -> Result<Lag, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT COALESCE((SELECT extract(epoch FROM clock_timestamp() - min(xact_start))::float8
                              FROM pg_stat_activity WHERE backend_xid IS NOT NULL), 0),
                    w.batches, w.events
             FROM (SELECT count(*) AS batches,
                          COALESCE(sum(last_seq - first_seq + 1), 0)::bigint AS events
                   FROM batches WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())) w",
            &[],
        )
        .await?;
    Ok(Lag {
        oldest_writer: Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0)),
        waiting_batches: row.get(1),
        waiting_events: row.get(2),
    })
}

#[derive(Debug, thiserror::Error)]
enum LeadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store: {}", pg_message(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("cannot queue alert deliveries: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("failure point {0}")]
    Failpoint(String),
}

impl Leader {
    /// Starts the leader's thread: it contends for the lock for as long as the collector runs.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("detection-leader".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "cannot start detection: no runtime");
                        return;
                    }
                };
                runtime.block_on(self.run());
            })
    }

    async fn run(self) {
        loop {
            let led = self.lead().await;
            // Whatever ended the lead dropped its session, and the lock with it.
            crate::metrics::leading(false);
            match led {
                Ok(()) => {}
                Err(error) => {
                    tracing::error!(%error, "detection leadership lost; contending again")
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the lock on a session of its own, then leads until that session fails.
    async fn lead(&self) -> Result<(), LeadError> {
        let mut client = self.target.connect().await?;
        loop {
            let held: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .await?
                .get(0);
            if held {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        tracing::info!(session = pid, "this collector leads detection");
        crate::metrics::leading(true);
        let mut engine =
            crate::detect::Engine::new(&self.detection).map_err(|error| StoreError::Connect {
                url: self.target.shown().to_string(),
                reason: format!("detection rules: {error}"),
            })?;
        let mut cursor = read_cursor(&client).await?;
        let replayed = replay(&client, &mut engine, cursor).await?;
        tracing::info!(
            events = replayed,
            ?cursor,
            "detection state rebuilt from the store"
        );
        #[expect(
            clippy::disallowed_methods,
            reason = "the leader's own thread: ticks are spaced by wall time"
        )]
        let mut last_tick = std::time::Instant::now();
        let mut last_lag = last_tick;
        // Whether the current stall has been alerted on (once per stall).
        let mut lagging = false;
        let mut lag_alerts = 0u64;
        loop {
            let (rows, next) = page(&client, cursor).await?;
            let mut updates = Vec::new();
            for row in &rows {
                match row {
                    Row::Records(records) => {
                        for record in records {
                            updates.extend(engine.observe(record));
                        }
                    }
                    Row::Finding(finding) => updates.extend(engine.observe_finding(finding)),
                }
            }
            if last_tick.elapsed() >= Duration::from_secs(1) {
                #[expect(clippy::disallowed_methods, reason = "as above")]
                let now = std::time::Instant::now();
                last_tick = now;
                updates.extend(engine.tick(Timestamp::now()));
                crate::metrics::detection_state_evicted(engine.take_evictions());
            }
            if last_lag.elapsed() >= LAG_EVERY {
                #[expect(clippy::disallowed_methods, reason = "as above")]
                let now = std::time::Instant::now();
                last_lag = now;
                let lag = lag(&client).await?;
                if lag.oldest_writer >= self.lag_alert_after && lag.waiting_batches > 0 {
                    if !lagging {
                        lagging = true;
                        lag_alerts += 1;
                        crate::metrics::lag_alert_raised();
                        updates.push(AlertUpdate::New(lag_alert(&lag, pid, lag_alerts)));
                    }
                } else if lagging && lag.oldest_writer < self.lag_alert_after {
                    lagging = false;
                    tracing::info!("detection caught up");
                }
            }
            if updates.is_empty() && next == cursor {
                // Nothing new: check the session still holds the lock, and wait for a commit here
                // or the next poll.
                client.query_one("SELECT 1", &[]).await?;
                tokio::select! {
                    () = tokio::time::sleep(IDLE_POLL) => {}
                    () = self.committed.notified() => {}
                }
                continue;
            }
            let raised = self
                .persist(&mut client, &updates, next)
                .await
                .inspect_err(|_| {
                    if !updates.is_empty() {
                        crate::metrics::alert_store_failed();
                    }
                })?;
            cursor = next;
            if !updates.is_empty() {
                self.notifier.notify();
            }
            for alert in raised {
                tracing::warn!(alert_id = %alert.id, rule = %alert.rule, severity = alert.severity.as_str(), host = %crate::present::escape_control(&alert.host), "{}", crate::present::escape_control(&alert.summary));
            }
        }
    }

    /// Writes alerts, their chain entries and deliveries, and the cursor, in one transaction on
    /// the session holding the lock.
    async fn persist(
        &self,
        client: &mut Client,
        updates: &[AlertUpdate],
        cursor: Cursor,
    ) -> Result<Vec<Alert>, LeadError> {
        let tx = client.transaction().await?;
        let mut raised = Vec::new();
        for update in updates {
            let alert = match update {
                AlertUpdate::New(alert) => {
                    insert_alert(&tx, alert).await?;
                    raised.push(alert.clone());
                    alert.clone()
                }
                AlertUpdate::Repeat {
                    id,
                    count,
                    evidence,
                    fields,
                    summary,
                    ..
                } => match repeat_alert(&tx, id, *count, evidence, fields, summary.as_deref())
                    .await?
                {
                    Some(alert) => alert,
                    None => {
                        tracing::warn!(alert_id = %id, "a repeated alert is missing from the store");
                        continue;
                    }
                },
            };
            append_chain(&tx, &self.seal, &alert.id).await?;
            enqueue(&tx, &alert, &self.router.route(&alert)).await?;
        }
        tx.execute(
            "UPDATE detection_cursor SET xid = $1::text::xid8, kind = $2, agent_no = $3, n = $4",
            &[
                &cursor.xid.to_string(),
                &cursor.kind,
                &cursor.agent_no,
                &cursor.n,
            ],
        )
        .await?;
        failpoint("leader.before_commit").await?;
        tx.commit().await?;
        Ok(raised)
    }
}

/// The alert a stalled detection raises: what holds it back, in the alert's fields.
fn lag_alert(lag: &Lag, session: i32, n: u64) -> Alert {
    let now = Timestamp::now();
    let mut fields = serde_json::Map::new();
    fields.insert(
        "oldest_writer_secs".into(),
        serde_json::Value::from(lag.oldest_writer.as_secs()),
    );
    fields.insert(
        "waiting_batches".into(),
        serde_json::Value::from(lag.waiting_batches),
    );
    let summary = format!(
        "detection is held back: a transaction has been open on the store's server for {}s, and {} committed batches wait behind it",
        lag.oldest_writer.as_secs(),
        lag.waiting_batches
    );
    tracing::error!(
        oldest_writer_secs = lag.oldest_writer.as_secs(),
        waiting_batches = lag.waiting_batches,
        "detection lag"
    );
    Alert {
        id: format!("lag-{session}-{}-{n}", now.as_nanos()),
        rule: LAG_RULE.into(),
        severity: crate::alert::Severity::High,
        ts: now,
        host: "collector".into(),
        summary,
        evidence: Vec::new(),
        count: 1,
        fields,
    }
}

async fn failpoint(name: &str) -> Result<(), LeadError> {
    let Ok(spec) = std::env::var(FAILPOINT) else {
        return Ok(());
    };
    let mut parts = spec.splitn(3, ':');
    if parts.next() != Some(name) {
        return Ok(());
    }
    match (parts.next(), parts.next()) {
        (Some("abort"), _) => Err(LeadError::Failpoint(name.to_string())),
        (Some("hold"), Some(file)) => {
            while tokio::fs::symlink_metadata(file).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn read_cursor(client: &Client) -> Result<Cursor, LeadError> {
    client
        .execute(
            "INSERT INTO detection_cursor (xid, kind, agent_no, n) VALUES ('0', 0, -1, -1)
             ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT xid::text, kind, agent_no, n FROM detection_cursor",
            &[],
        )
        .await?;
    Ok(Cursor {
        xid: row.get::<_, &str>(0).parse().unwrap_or(0),
        kind: row.get(1),
        agent_no: row.get(2),
        n: row.get(3),
    })
}

/// Feeds the engine every stored event at or before `cursor` in its window (and the kinds whose
/// whole history matters), raising nothing.
async fn replay(client: &Client, engine: &mut Engine, cursor: Cursor) -> Result<u64, LeadError> {
    let since = Timestamp::now().saturating_sub(engine.replay_window());
    // Events of the cursor's own transaction are all handled once its findings are.
    let (agent_no, seq) = if cursor.kind == 1 {
        (i64::MAX, i64::MAX)
    } else {
        (cursor.agent_no, cursor.n)
    };
    let bound = cursor.xid.to_string();
    engine.begin_replay();
    let mut events = 0u64;
    let history = engine.replay_history();
    let mut passes: Vec<(Option<&str>, i64, i64)> = history
        .iter()
        .map(|kind| (Some(*kind), i64::MIN, since.as_nanos()))
        .collect();
    passes.push((None, since.as_nanos(), i64::MAX));
    for (kind, from, to) in passes {
        // Streamed a row at a time: memory stays that of one event whatever the window holds.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&kind, &from, &to, &bound, &agent_no, &seq];
        let rows = client
            .query_raw(
                "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no
                 WHERE ($1::text IS NULL OR e.kind = $1) AND e.ts >= $2 AND e.ts < $3
                   AND (e.xid, e.agent_no, e.seq) <= ($4::text::xid8, $5, $6)
                 ORDER BY e.ts, e.agent_no, e.seq",
                params,
            )
            .await?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = tokio_stream::StreamExt::next(&mut rows).await {
            if let Some(record) = record(&row?) {
                events += 1;
                engine.replay_event(&record);
            }
        }
    }
    engine.end_replay();
    Ok(events)
}

fn record(row: &tokio_postgres::Row) -> Option<Record> {
    let agent_id: String = row.get(0);
    match decode_event(row.get::<_, &[u8]>(1)) {
        Ok(event) => Some(Record { agent_id, event }),
        Err(error) => {
            tracing::warn!(%agent_id, %error, "stored event does not decode");
            None
        }
    }
}

enum Row {
    Records(Vec<Record>),
    Finding(Finding),
}

/// The next rows after `cursor` below the horizon, in order, and the cursor after them.
async fn page(client: &Client, cursor: Cursor) -> Result<(Vec<Row>, Cursor), LeadError> {
    let horizon: String = client
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await?
        .get(0);
    let bound = cursor.xid.to_string();
    // Batches of the cursor's transaction after it; none of them once its findings began.
    let (agent_no, seq) = if cursor.kind == 1 {
        (i64::MAX, i64::MAX)
    } else {
        (cursor.agent_no, cursor.n)
    };
    let finding_after = if cursor.kind == 1 { cursor.n } else { -1 };
    let batches = client
        .query(
            "SELECT xid::text, agent_no, last_seq, first_seq FROM batches
             WHERE (xid, agent_no, last_seq) > ($1::text::xid8, $2, $3) AND xid < $4::text::xid8
             ORDER BY xid, agent_no, last_seq LIMIT $5",
            &[&bound, &agent_no, &seq, &horizon, &PAGE],
        )
        .await?;
    let findings = client
        .query(
            "SELECT f.xid::text, f.agent_no, f.id, f.ts, f.kind, f.first_seq, f.last_seq,
                    f.detail, a.id, a.host
             FROM findings f JOIN agents a ON a.no = f.agent_no
             WHERE (f.xid, f.id) > ($1::text::xid8, $2) AND f.xid < $3::text::xid8
             ORDER BY f.xid, f.id LIMIT $4",
            &[&bound, &finding_after, &horizon, &PAGE],
        )
        .await?;
    let xid = |row: &tokio_postgres::Row| row.get::<_, &str>(0).parse::<u64>().unwrap_or(0);
    let mut keys: Vec<(Cursor, usize, bool)> = Vec::new();
    for (i, row) in batches.iter().enumerate() {
        keys.push((
            Cursor {
                xid: xid(row),
                kind: 0,
                agent_no: row.get(1),
                n: row.get(2),
            },
            i,
            true,
        ));
    }
    for (i, row) in findings.iter().enumerate() {
        keys.push((
            Cursor {
                xid: xid(row),
                kind: 1,
                agent_no: row.get(1),
                n: row.get(2),
            },
            i,
            false,
        ));
    }
    keys.sort();
    // A full page of one kind may have left out rows of that kind ordered before rows of the
    // other: stop at the last row of a full page.
    let mut limit: Option<Cursor> = None;
    if batches.len() as i64 == PAGE {
        limit = keys.iter().filter(|k| k.2).map(|k| k.0).max();
    }
    if findings.len() as i64 == PAGE {
        let last = keys.iter().filter(|k| !k.2).map(|k| k.0).max();
        limit = match (limit, last) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let mut rows = Vec::new();
    let mut next = cursor;
    for (key, i, is_batch) in keys {
        if limit.is_some_and(|limit| key > limit) {
            break;
        }
        if is_batch {
            let row = &batches[i];
            let first: i64 = row.get(3);
            let events = client
                .query(
                    "SELECT a.id, e.payload FROM events e JOIN agents a ON a.no = e.agent_no
                     WHERE e.agent_no = $1 AND e.seq BETWEEN $2 AND $3 AND e.xid = $4::text::xid8
                     ORDER BY e.seq",
                    &[&key.agent_no, &first, &key.n, &key.xid.to_string()],
                )
                .await?;
            rows.push(Row::Records(events.iter().filter_map(record).collect()));
        } else {
            let row = &findings[i];
            let kind = match row.get::<_, &str>(4) {
                "chain.tamper" => FindingKind::ChainTamper,
                _ => FindingKind::ChainGap,
            };
            rows.push(Row::Finding(Finding {
                agent_id: row.get(8),
                host: row.get(9),
                kind,
                ts: Timestamp::from_nanos(row.get(3)),
                first_seq: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
                last_seq: u64::try_from(row.get::<_, i64>(6)).unwrap_or(0),
                detail: row.get(7),
            }));
        }
        next = key;
    }
    Ok((rows, next))
}

async fn insert_alert(tx: &Transaction<'_>, alert: &Alert) -> Result<(), LeadError> {
    let body = serde_json::to_string(alert)?;
    tx.execute(
        "INSERT INTO alerts (id, rule, severity, ts, updated_ts, host, count, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET rule = excluded.rule, severity = excluded.severity,
             ts = excluded.ts, updated_ts = excluded.updated_ts, host = excluded.host,
             count = excluded.count, body = excluded.body",
        &[
            &alert.id,
            &alert.rule,
            &alert.severity.as_str(),
            &alert.ts.as_nanos(),
            &Timestamp::now().as_nanos(),
            &alert.host,
            &i64::try_from(alert.count).unwrap_or(i64::MAX),
            &body,
        ],
    )
    .await?;
    Ok(())
}

/// As the SQLite store's `alerts::repeat`: the new count, fields and evidence on the stored alert.
async fn repeat_alert(
    tx: &Transaction<'_>,
    id: &str,
    count: u64,
    evidence: &[EvidenceRef],
    fields: &serde_json::Map<String, serde_json::Value>,
    summary: Option<&str>,
) -> Result<Option<Alert>, LeadError> {
    let Some(row) = tx
        .query_opt("SELECT body FROM alerts WHERE id = $1", &[&id])
        .await?
    else {
        return Ok(None);
    };
    let mut alert = match serde_json::from_str::<Alert>(row.get(0)) {
        Ok(alert) => alert,
        Err(error) => {
            tracing::warn!(alert_id = %id, %error, "stored alert does not parse; its repeat is not recorded");
            return Ok(None);
        }
    };
    alert.repeat(count, evidence, fields, summary);
    insert_alert(tx, &alert).await?;
    Ok(Some(alert))
}

/// As the SQLite store's `alert_chain::append`.
async fn append_chain(tx: &Transaction<'_>, seal: &Seal, alert_id: &str) -> Result<(), LeadError> {
    let body: String = tx
        .query_one("SELECT body FROM alerts WHERE id = $1", &[&alert_id])
        .await?
        .get(0);
    let head = tx
        .query_opt(
            "SELECT n, hash FROM alert_chain ORDER BY n DESC LIMIT 1",
            &[],
        )
        .await?;
    let (n, prev) = match head {
        Some(row) => (
            u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            bannin::chain::to_hash(row.get::<_, &[u8]>(1), "alert chain hash")
                .unwrap_or(bannin::chain::GENESIS),
        ),
        None => (0, bannin::chain::GENESIS),
    };
    let n = n + 1;
    let body_hash: bannin::chain::Hash = Sha256::digest(body.as_bytes()).into();
    let hash = seal::alert_link(&prev, n, alert_id, &body_hash);
    tx.execute(
        "INSERT INTO alert_chain (n, alert_id, body_hash, hash, signature)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &i64::try_from(n).unwrap_or(i64::MAX),
            &alert_id,
            &body_hash.as_slice(),
            &hash.as_slice(),
            &seal.sign(&hash),
        ],
    )
    .await?;
    Ok(())
}

/// As the SQLite outbox's `enqueue`.
async fn enqueue(
    client: &impl GenericClient,
    alert: &Alert,
    sinks: &[SinkId],
) -> Result<(), LeadError> {
    if sinks.is_empty() {
        return Ok(());
    }
    let payload = serde_json::to_string(alert)?;
    let now = Timestamp::now().as_nanos();
    for sink in sinks {
        client
            .execute(
                "INSERT INTO hook_outbox (alert_id, sink, payload, next_attempt_ns, enqueued_ns)
                 VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (alert_id, sink) DO UPDATE SET
                     payload = excluded.payload,
                     version = hook_outbox.version + 1,
                     next_attempt_ns = CASE WHEN hook_outbox.state = 'delivered' THEN $4
                                            ELSE hook_outbox.next_attempt_ns END,
                     state = CASE WHEN hook_outbox.state = 'delivered' THEN 'pending'
                                  ELSE hook_outbox.state END",
                &[&alert.id, &sink.0, &payload, &now],
            )
            .await?;
    }
    Ok(())
}
