//! Streams spooled events to the collector in signed batches.
//!
//! One batch is in flight at a time, so the collector sees each agent's chain in order. A batch
//! leaves the spool only when the collector acknowledges its commit; on any failure the same events
//! are sent again after a backoff, and the collector's idempotent insert turns resends into no-ops.
//! To a collector that has said it takes them, batches go as the spool's packed runs, unpacked
//! nowhere on the way (a tenth of the bytes to read, encrypt and send in a burst).

use std::sync::Arc;
use std::time::Duration;

use bannin::backoff::Backoff;
use bannin::chain;
use bannin::pb;
use ed25519_dalek::Signer;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tonic::Code;

use crate::identity::{self, Identity};
use crate::spool::{self, Spool};

/// `[sender]`: batching and retry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Most events in one batch.
    pub batch_events: usize,
    /// About the most bytes of encoded events in one batch (stay under the collector's limit).
    pub batch_bytes: usize,
    /// How long to wait for more events after the first one, so bursts share a batch.
    #[serde(with = "bannin::time::duration_str")]
    pub linger: Duration,
    /// First retry delay after a failure; doubles up to `backoff_max`, with jitter.
    #[serde(with = "bannin::time::duration_str")]
    pub backoff_initial: Duration,
    #[serde(with = "bannin::time::duration_str")]
    pub backoff_max: Duration,
    /// How long one submission may take before it is retried.
    #[serde(with = "bannin::time::duration_str")]
    pub request_timeout: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            batch_events: 2000,
            batch_bytes: 4 * 1024 * 1024,
            linger: Duration::from_millis(20),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Sends to the first of `collectors` until it fails, then to the next (collectors sharing one
/// store take any agent's batches): a failed batch goes at once to the next collector, and the
/// backoff applies once every collector has failed in turn.
pub async fn run(
    identity: Arc<Identity>,
    collectors: Vec<String>,
    spool: Spool,
    wake: Arc<Notify>,
    config: SenderConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut clients = Vec::with_capacity(collectors.len());
    for collector in &collectors {
        let channel = identity::channel(
            collector,
            &identity.ca_pem,
            Some((&identity.tls_cert_pem, &identity.tls_key_pem)),
        )?;
        clients.push(
            pb::ingest_client::IngestClient::new(channel)
                .max_encoding_message_size(64 * 1024 * 1024),
        );
    }
    anyhow::ensure!(!clients.is_empty(), "no collector to send to");
    let mut current = 0usize;
    let backoff = Backoff {
        initial: config.backoff_initial,
        max: config.backoff_max,
    };
    // Consecutive failures, reset by a committed batch.
    let mut failures = 0u32;
    let mut batch_events = config.batch_events.max(1);
    let mut connected = false;
    // The collector's last acknowledgement on this connection said it takes packed runs. Learnt
    // anew after every failure: a collector that does not (an older one, another behind the same
    // address) would read a batch of runs as empty.
    let mut runs_taken = false;
    // What the collector has committed. Reading goes on after it even when removing those events
    // from the spool failed (a full disk), so the sender never resends one batch in a loop.
    let mut acked = 0u64;
    let mut unremoved = false;
    loop {
        let limit = batch_events;
        let bytes = config.batch_bytes;
        let batch = if runs_taken {
            spool::blocking(&spool, move |s| s.read_runs_to_send(acked, limit, bytes)).await
        } else {
            spool::blocking(&spool, move |s| s.read_batch_to_send(acked, limit, bytes)).await
        };
        let batch = match batch {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                if *shutdown.borrow() {
                    return Ok(());
                }
                // The spool writer wakes us after each commit (a wake before this wait is kept):
                // no polling.
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
                // Let a burst gather into one batch.
                tokio::time::sleep(config.linger).await;
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the spool");
                failures = failures.saturating_add(1);
                tokio::time::sleep(backoff.delay(failures)).await;
                continue;
            }
        };
        let signature = chain::sign_batch(
            &identity.signing_key,
            &identity.agent_id,
            batch.first_seq,
            batch.last_seq,
            &batch.prev_hash,
            &batch.head_hash,
        );
        let count = usize::try_from(batch.last_seq - batch.first_seq + 1).unwrap_or(usize::MAX);
        let sent_runs = !batch.runs.is_empty();
        // Every batch presents, signed, the newest head the collector acknowledged to us.
        let witness = match spool::blocking(&spool, |s| s.witness()).await {
            Ok(witness) => witness.map(|(seq, hash)| pb::Witness {
                seq,
                hash: hash.to_vec(),
                signature: identity
                    .signing_key
                    .sign(&chain::witness_message(&identity.agent_id, seq, &hash))
                    .to_bytes()
                    .to_vec(),
            }),
            Err(error) => {
                tracing::error!(%error, "cannot read the acknowledged head; sending without it");
                None
            }
        };
        let mut request = tonic::Request::new(pb::EventBatch {
            events: batch.events,
            prev_hash: batch.prev_hash.to_vec(),
            signature: signature.to_vec(),
            first_seq: batch.first_seq,
            witness,
            runs: batch.runs,
        });
        request.set_timeout(config.request_timeout);
        let collector = &collectors[current];
        match clients[current].submit(request).await {
            Ok(ack) => {
                let ack = ack.into_inner();
                runs_taken = ack.accepts_runs;
                if !connected {
                    tracing::info!(%collector, "connected to the collector");
                    connected = true;
                }
                let through = ack.committed_through.min(batch.last_seq);
                if through == batch.last_seq
                    && !ack.head_hash.is_empty()
                    && ack.head_hash != batch.head_hash
                {
                    tracing::warn!(
                        seq = through,
                        "the collector acknowledged a different chain head than this agent's"
                    );
                }
                acked = acked.max(through);
                match spool::blocking(&spool, move |s| s.ack(through)).await {
                    Ok(()) => unremoved = false,
                    Err(error) if !unremoved => {
                        unremoved = true;
                        tracing::error!(%error, "cannot remove acknowledged events from the spool; they are not sent again");
                    }
                    Err(_) => {}
                }
                tracing::debug!(
                    first = batch.first_seq,
                    last = batch.last_seq,
                    inserted = ack.inserted,
                    duplicates = ack.duplicates,
                    "batch committed"
                );
                failures = 0;
                batch_events = config.batch_events.max(1);
            }
            Err(status) if status.code() == Code::ResourceExhausted && count > 1 => {
                release(&spool).await;
                batch_events = (count / 2).max(1);
                tracing::warn!(error = %status.message(), batch_events, "collector refused the batch size; sending smaller batches");
            }
            Err(status)
                if sent_runs
                    && !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
            {
                // Perhaps not a refusal of the events (a collector that does not take runs reads
                // the batch as empty): they go again as events, at once, and its next
                // acknowledgement says whether it takes runs. A refusal of the events themselves
                // then takes the path below.
                release(&spool).await;
                runs_taken = false;
                tracing::info!(code = ?status.code(), error = %status.message(), "the collector did not take a batch of packed runs; sending its events");
            }
            Err(status) => {
                release(&spool).await;
                runs_taken = false;
                // The collector answered and refused the batch itself (not its size, not for
                // want of a store): if the spool's copy does not hold together by its own hashes,
                // sending it again would be refused again without end. Such runs go, each named
                // by an `agent.dropped`, and what is left is sent at once.
                if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
                    let (first, last) = (batch.first_seq, batch.last_seq);
                    match spool::blocking(&spool, move |s| s.drop_refused_damage(first, last)).await
                    {
                        Ok(0) => {}
                        Ok(runs) => {
                            tracing::warn!(error = %status.message(), runs, "the collector refused a batch the spool had damaged; the damaged events were dropped and named");
                            continue;
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot check the refused batch in the spool")
                        }
                    }
                }
                failures = failures.saturating_add(1);
                // The next collector at once; after a whole round of failures, the backoff.
                let round = u32::try_from(clients.len()).unwrap_or(u32::MAX);
                let delay = if failures % round == 0 {
                    backoff.delay(failures / round)
                } else {
                    Duration::ZERO
                };
                if connected || status.code() != Code::Unavailable {
                    tracing::warn!(%collector, code = ?status.code(), error = %status.message(), retry_in = ?delay, "batch not delivered; events stay in the spool");
                }
                if clients.len() > 1 {
                    current = (current + 1) % clients.len();
                    tracing::info!(collector = %collectors[current], "failing over to the next collector");
                }
                connected = false;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {
                        if *shutdown.borrow() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Lets the spool shed the batch whose delivery failed, off the runtime (an append may hold the
/// spool's lock while it writes).
async fn release(spool: &Spool) {
    // The closure cannot fail; a task that did not run leaves the hold until the next batch.
    let _ = spool::blocking(spool, |s| {
        s.release();
        Ok(())
    })
    .await;
}
