//! An agent simulated in a test, speaking the real protocol to the real collector: enrolled with a
//! real token, submitting signed, chained batches over mutual TLS. Tests that need a compromised or
//! hand-steered agent (forks, foreign keys, hand-made events) use it instead of `bannin-agent`.

#![allow(dead_code)]

use bannin::chain::{self, GENESIS, Hash};
use bannin::event::{Body, Event};
use bannin::pb;
use bannin::pki;
use bannin::time::Timestamp;
use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

use crate::harness::{Collector, channel};

pub struct SimAgent {
    pub name: String,
    pub id: String,
    pub key: SigningKey,
    pub cert: String,
    pub tls_key: String,
    pub ingest: pb::ingest_client::IngestClient<Channel>,
    pub head: Hash,
    pub next_seq: u64,
}

impl SimAgent {
    pub async fn enroll(collector: &Collector, name: &str) -> SimAgent {
        let token = collector.token();
        let (tls_key, csr_der) = pki::client_key_and_csr(name).unwrap();
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        let key = SigningKey::from_bytes(&seed);
        let mut enrollment =
            pb::enrollment_client::EnrollmentClient::new(channel(collector, None).await);
        let reply = enrollment
            .enroll(pb::EnrollRequest {
                token,
                name: name.to_string(),
                hostname: name.to_string(),
                csr_der,
                signing_public_key: key.verifying_key().to_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        let ingest = pb::ingest_client::IngestClient::new(
            channel(collector, Some((&reply.certificate_pem, &tls_key))).await,
        );
        SimAgent {
            name: name.to_string(),
            id: reply.agent_id,
            key,
            cert: reply.certificate_pem,
            tls_key,
            ingest,
            head: GENESIS,
            next_seq: 1,
        }
    }

    /// Sends from now on to `collector` (one that shares the store and CA it enrolled with).
    pub async fn connect_to(&mut self, collector: &Collector) {
        self.ingest = pb::ingest_client::IngestClient::new(
            channel(collector, Some((&self.cert, &self.tls_key))).await,
        );
    }

    /// Events with these times and bodies, stamped with the agent's enrolled name.
    pub fn stamped(&self, bodies: Vec<(Timestamp, Body)>) -> Vec<Event> {
        bodies
            .into_iter()
            .map(|(ts, body)| Event {
                seq: 0,
                ts,
                host: self.name.as_str().into(),
                body,
            })
            .collect()
    }

    /// A batch of `events` numbered from `first`, chained after `prev`, signed by `key`, with the
    /// hash after its last event.
    pub fn batch_at(
        &self,
        first: u64,
        prev: Hash,
        events: Vec<Event>,
        key: &SigningKey,
    ) -> (pb::EventBatch, Hash) {
        forge_batch(&self.id, key, first, prev, numbered(first, events))
    }

    /// The next batch of this agent's own chain.
    pub fn next_batch(&self, events: Vec<Event>) -> pb::EventBatch {
        self.batch_at(self.next_seq, self.head, events, &self.key).0
    }

    /// Submits the next batch and checks the acknowledgement covers all of it.
    pub async fn submit(&mut self, events: Vec<Event>) -> Result<(), tonic::Status> {
        let (batch, head) = self.batch_at(self.next_seq, self.head, events, &self.key);
        let last = self.next_seq + batch.events.len() as u64 - 1;
        let ack = self.ingest.submit(batch).await?.into_inner();
        assert_eq!(ack.committed_through, last);
        self.head = head;
        self.next_seq = last + 1;
        Ok(())
    }

    /// Submits the next batch of events with these times and bodies.
    pub async fn submit_bodies(
        &mut self,
        bodies: Vec<(Timestamp, Body)>,
    ) -> Result<(), tonic::Status> {
        let events = self.stamped(bodies);
        self.submit(events).await
    }
}

/// The tests' one batch forger: encoded `events` numbered from `first`, chained after `prev` and
/// signed by `key` for agent `agent_id`, as the agent's sender makes a batch (or as a thief holding
/// the key would); with the chain's hash after its last event.
pub fn forge_batch(
    agent_id: &str,
    key: &SigningKey,
    first: u64,
    prev: Hash,
    events: Vec<Vec<u8>>,
) -> (pb::EventBatch, Hash) {
    let mut head = prev;
    for (i, bytes) in events.iter().enumerate() {
        head = chain::link(&head, first + i as u64, bytes);
    }
    let last = first + events.len() as u64 - 1;
    let signature = chain::sign_batch(key, agent_id, first, last, &prev, &head);
    let batch = pb::EventBatch {
        events,
        prev_hash: prev.to_vec(),
        signature: signature.to_vec(),
        first_seq: first,
        witness: None,
        runs: Vec::new(),
    };
    (batch, head)
}

/// `events` numbered from `first` and encoded as an agent sends them.
pub fn numbered(first: u64, events: Vec<Event>) -> Vec<Vec<u8>> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, mut event)| {
            event.seq = first + i as u64;
            bannin::proto::encode_event(&event)
        })
        .collect()
}
