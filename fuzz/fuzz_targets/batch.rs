//! A submitted batch as the collector's ingest service receives it: protobuf decoding, then
//! `verify_batch` (event decoding, chain, signature). Each batch is also re-chained and signed with
//! the agent's key, so the checks that come after the signature (sequence bounds, the enrolled host,
//! sizes) see fuzzed events too.
#![no_main]

use bannin::chain::{self, GENESIS};
use bannin::pb;
use bannin_collector_tree::service::{Limits, verify_batch};
use bannin_collector_tree::store::AgentKey;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const AGENT_ID: &str = "a-fuzz";

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = pb::EventBatch::decode(data) else {
        return;
    };
    let key = SigningKey::from_bytes(&[7; 32]);
    let agent = AgentKey {
        no: 1,
        id: AGENT_ID.to_string(),
        name: "fuzz-host".to_string(),
        signing_key: key.verifying_key().to_bytes().to_vec(),
        active: true,
    };
    let limits = Limits {
        max_batch_events: 1000,
        max_decoded_bytes: bannin_collector_tree::service::MAX_DECODED_BATCH_BYTES,
    };
    let _ = verify_batch(&agent, batch.clone(), limits);
    if let Some(signed) = resign(batch, &key) {
        let _ = verify_batch(&agent, signed, limits);
    }
});

/// The batch with its chain recomputed and signed, if its events decode with contiguous numbers.
fn resign(mut batch: pb::EventBatch, key: &SigningKey) -> Option<pb::EventBatch> {
    if batch.events.is_empty() || batch.events.len() > 1000 {
        return None;
    }
    let prev = chain::to_hash(&batch.prev_hash, "prev hash").unwrap_or(GENESIS);
    batch.prev_hash = prev.to_vec();
    let mut head = prev;
    let mut first = 0;
    for (index, bytes) in batch.events.iter().enumerate() {
        let event = bannin::proto::decode_event(bytes).ok()?;
        if index == 0 {
            first = event.seq;
        }
        if event.seq == 0 || event.seq != first.checked_add(index as u64)? {
            return None;
        }
        head = chain::link(&head, event.seq, bytes);
    }
    let last = first + batch.events.len() as u64 - 1;
    batch.signature = chain::sign_batch(key, AGENT_ID, first, last, &prev, &head).to_vec();
    Some(batch)
}
