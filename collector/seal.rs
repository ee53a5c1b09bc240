//! The collector's own Ed25519 key, and the statements it signs with it.
//!
//! Agents sign their events; what the collector concludes on its own (a chain finding, a retention
//! mark, an agent's committed head, each alert in the alert chain, a checkpoint) is signed here. The
//! key lives in the data directory as its own 0600 file, apart from the database, so someone who can
//! only write to `bannin.db` cannot sign an explanation for the rows they removed. `verify` checks
//! with the public half (`collector.pub`).

use std::path::{Path, PathBuf};

use bannin::chain::Hash;
use bannin::securefs::{self, Access};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

pub const KEY_FILE: &str = "collector.key";
pub const PUBLIC_FILE: &str = "collector.pub";

const HEAD_DOMAIN: &[u8] = b"bannin-head-v1\0";
const FINDING_DOMAIN: &[u8] = b"bannin-finding-v1\0";
const PRUNED_DOMAIN: &[u8] = b"bannin-pruned-v1\0";
const ALERT_DOMAIN: &[u8] = b"bannin-alert-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the collector signing key {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "the collector signing key {path} is malformed (expected 64 hex digits); restore it from a backup"
    )]
    Malformed { path: PathBuf },
    #[error("cannot write the collector signing key {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("no randomness for the collector signing key")]
    Random,
}

/// The collector's signing key.
#[derive(Clone)]
pub struct Seal {
    key: SigningKey,
}

/// The public half, all `verify` needs.
#[derive(Clone, Copy, Debug)]
pub struct SealKey {
    key: VerifyingKey,
}

impl Seal {
    /// Loads the key from `dir`, creating it (and `collector.pub`) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Seal, SealError> {
        let path = dir.join(KEY_FILE);
        let seal = if std::fs::symlink_metadata(&path).is_ok() {
            let text = securefs::read_owned_string(&path, Access::Private).map_err(|error| {
                SealError::Read {
                    path: path.clone(),
                    reason: error.to_string(),
                }
            })?;
            let seed =
                parse_hex32(&text).ok_or_else(|| SealError::Malformed { path: path.clone() })?;
            Seal {
                key: SigningKey::from_bytes(&seed),
            }
        } else {
            let key = bannin::chain::generate_signing_key().map_err(|_| SealError::Random)?;
            let text = format!("{}\n", hex::encode(key.to_bytes()));
            securefs::replace_file(dir, KEY_FILE, text.as_bytes(), Access::Private).map_err(
                |error| SealError::Write {
                    path: path.clone(),
                    reason: error.to_string(),
                },
            )?;
            tracing::info!(path = %path.display(), "created the collector signing key");
            Seal { key }
        };
        // The public half is rewritten from the private key each start, so it cannot drift.
        let public = dir.join(PUBLIC_FILE);
        let text = format!("{}\n", hex::encode(seal.public().key.to_bytes()));
        if std::fs::read_to_string(&public).ok().as_deref() != Some(text.as_str()) {
            securefs::replace_file(dir, PUBLIC_FILE, text.as_bytes(), Access::Public).map_err(
                |error| SealError::Write {
                    path: public.clone(),
                    reason: error.to_string(),
                },
            )?;
        }
        Ok(seal)
    }

    pub fn public(&self) -> SealKey {
        SealKey {
            key: self.key.verifying_key(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }
}

impl SealKey {
    /// Reads `collector.pub` from a data directory.
    pub fn load(dir: &Path) -> Result<SealKey, SealError> {
        let path = dir.join(PUBLIC_FILE);
        let bytes = parse_hex32(&read(&path)?)
            .ok_or_else(|| SealError::Malformed { path: path.clone() })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SealError::Malformed { path })?;
        Ok(SealKey { key })
    }

    pub fn hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    pub fn check(&self, message: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature).is_ok_and(|sig| self.key.verify(message, &sig).is_ok())
    }
}

fn read(path: &Path) -> Result<String, SealError> {
    std::fs::read_to_string(path).map_err(|error| SealError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

fn message(domain: &[u8], agent_id: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + agent_id.len() + 96);
    message.extend_from_slice(domain);
    message.extend_from_slice(agent_id.as_bytes());
    message.push(0);
    message
}

/// The collector committed an agent's chain through `seq`, whose hash is `hash`.
pub fn head_message(agent_id: &str, seq: u64, hash: &[u8]) -> Vec<u8> {
    let mut m = message(HEAD_DOMAIN, agent_id);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// A chain finding the collector recorded.
pub fn finding_message(
    agent_id: &str,
    kind: &str,
    first_seq: u64,
    last_seq: u64,
    ts: i64,
    detail: &str,
) -> Vec<u8> {
    let mut m = message(FINDING_DOMAIN, agent_id);
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(&first_seq.to_be_bytes());
    m.extend_from_slice(&last_seq.to_be_bytes());
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(detail.as_bytes());
    m
}

/// Retention deleted an agent's events through `through_seq`.
pub fn pruned_message(agent_id: &str, through_seq: u64, ts: i64) -> Vec<u8> {
    let mut m = message(PRUNED_DOMAIN, agent_id);
    m.extend_from_slice(&through_seq.to_be_bytes());
    m.extend_from_slice(&ts.to_be_bytes());
    m
}

/// Entry `n` of the alert chain: alert `alert_id` stored (or updated) with a body hashing to
/// `body_hash`, after the entry whose hash is `prev`.
pub fn alert_link(prev: &Hash, n: u64, alert_id: &str, body_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(ALERT_DOMAIN);
    hasher.update(prev);
    hasher.update(n.to_be_bytes());
    hasher.update(alert_id.as_bytes());
    hasher.update([0]);
    hasher.update(body_hash);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_survives_a_restart_and_signs_what_verify_checks() {
        let dir = tempfile::tempdir().unwrap();
        let seal = Seal::load_or_create(dir.path()).unwrap();
        let again = Seal::load_or_create(dir.path()).unwrap();
        let public = SealKey::load(dir.path()).unwrap();
        let m = finding_message("a-1", "chain.gap", 3, 4, 7, "never arrived");
        let signature = again.sign(&m);
        assert!(public.check(&m, &signature));
        assert_eq!(seal.sign(&m), signature);
        let other = finding_message("a-1", "chain.gap", 3, 5, 7, "never arrived");
        assert!(!public.check(&other, &signature));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
