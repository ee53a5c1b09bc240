//! The hash chain and batch signatures.
//!
//! Each event's hash covers the previous hash, its sequence number and its encoded bytes exactly as
//! sent, so removing, reordering or editing any event breaks every later hash. A batch is signed once,
//! over its first and last sequence numbers, the hash before it and the hash after it: one Ed25519
//! signature authenticates every event in the batch.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

pub const HASH_LEN: usize = 32;
pub type Hash = [u8; HASH_LEN];

/// The hash before an agent's first event.
pub const GENESIS: Hash = [0u8; HASH_LEN];

const CHAIN_DOMAIN: &[u8] = b"bannin-chain-v1\0";
const BATCH_DOMAIN: &[u8] = b"bannin-batch-v1\0";
const WITNESS_DOMAIN: &[u8] = b"bannin-witness-v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("batch signature does not verify for agent {agent_id}")]
    BadSignature { agent_id: String },
    #[error("malformed {what}: expected {expected} bytes, got {got}")]
    BadLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

/// The hash of event `seq` with encoded bytes `event`, following `prev`.
pub fn link(prev: &Hash, seq: u64, event: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(CHAIN_DOMAIN);
    hasher.update(prev);
    hasher.update(seq.to_be_bytes());
    hasher.update(event);
    hasher.finalize().into()
}

/// What an agent signs for a batch of events `first_seq..=last_seq`.
pub fn batch_message(
    agent_id: &str,
    first_seq: u64,
    last_seq: u64,
    prev: &Hash,
    head: &Hash,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(BATCH_DOMAIN.len() + agent_id.len() + 1 + 16 + 64);
    message.extend_from_slice(BATCH_DOMAIN);
    message.extend_from_slice(agent_id.as_bytes());
    message.push(0);
    message.extend_from_slice(&first_seq.to_be_bytes());
    message.extend_from_slice(&last_seq.to_be_bytes());
    message.extend_from_slice(prev);
    message.extend_from_slice(head);
    message
}

pub fn sign_batch(
    key: &SigningKey,
    agent_id: &str,
    first_seq: u64,
    last_seq: u64,
    prev: &Hash,
    head: &Hash,
) -> [u8; 64] {
    key.sign(&batch_message(agent_id, first_seq, last_seq, prev, head))
        .to_bytes()
}

pub fn verify_batch(
    public_key: &[u8],
    signature: &[u8],
    agent_id: &str,
    first_seq: u64,
    last_seq: u64,
    prev: &Hash,
    head: &Hash,
) -> Result<(), ChainError> {
    let key = verifying_key(public_key)?;
    let signature = Signature::from_slice(signature).map_err(|_| ChainError::BadLength {
        what: "signature",
        expected: 64,
        got: signature.len(),
    })?;
    key.verify(
        &batch_message(agent_id, first_seq, last_seq, prev, head),
        &signature,
    )
    .map_err(|_| ChainError::BadSignature {
        agent_id: agent_id.to_string(),
    })
}

/// What an agent signs to witness that the collector acknowledged its chain through `seq`.
pub fn witness_message(agent_id: &str, seq: u64, hash: &Hash) -> Vec<u8> {
    let mut message = Vec::with_capacity(WITNESS_DOMAIN.len() + agent_id.len() + 1 + 8 + 32);
    message.extend_from_slice(WITNESS_DOMAIN);
    message.extend_from_slice(agent_id.as_bytes());
    message.push(0);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

pub fn verify_witness(
    public_key: &[u8],
    signature: &[u8],
    agent_id: &str,
    seq: u64,
    hash: &Hash,
) -> Result<(), ChainError> {
    let key = verifying_key(public_key)?;
    let signature = Signature::from_slice(signature).map_err(|_| ChainError::BadLength {
        what: "signature",
        expected: 64,
        got: signature.len(),
    })?;
    key.verify(&witness_message(agent_id, seq, hash), &signature)
        .map_err(|_| ChainError::BadSignature {
            agent_id: agent_id.to_string(),
        })
}

pub fn verifying_key(public_key: &[u8]) -> Result<VerifyingKey, ChainError> {
    let bytes: [u8; 32] = public_key.try_into().map_err(|_| ChainError::BadLength {
        what: "public key",
        expected: 32,
        got: public_key.len(),
    })?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ChainError::BadLength {
        what: "public key",
        expected: 32,
        got: public_key.len(),
    })
}

pub fn to_hash(bytes: &[u8], what: &'static str) -> Result<Hash, ChainError> {
    bytes.try_into().map_err(|_| ChainError::BadLength {
        what,
        expected: HASH_LEN,
        got: bytes.len(),
    })
}

/// A fresh Ed25519 key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_batch_verifies_and_any_change_breaks_it() {
        let key = generate_signing_key().unwrap();
        let public = key.verifying_key().to_bytes();
        let h1 = link(&GENESIS, 1, b"one");
        let h2 = link(&h1, 2, b"two");
        let sig = sign_batch(&key, "a1", 1, 2, &GENESIS, &h2);
        assert!(verify_batch(&public, &sig, "a1", 1, 2, &GENESIS, &h2).is_ok());
        assert!(verify_batch(&public, &sig, "a2", 1, 2, &GENESIS, &h2).is_err());
        let forged = link(&h1, 2, b"TWO");
        assert!(verify_batch(&public, &sig, "a1", 1, 2, &GENESIS, &forged).is_err());
        assert_ne!(link(&GENESIS, 1, b"one"), link(&GENESIS, 2, b"one"));
    }
}
