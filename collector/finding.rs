//! A finding: what the collector itself concluded about an agent's chain while storing it, as
//! opposed to an event the agent sent. Ingest produces findings, signs and stores them; detection
//! runs the rules over them (`chain-gap`, `chain-tamper`).

use bannin::time::Timestamp;

use crate::alert::EvidenceRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub agent_id: String,
    pub host: String,
    pub kind: FindingKind,
    pub ts: Timestamp,
    /// The sequence numbers it concerns; 0 for a refused batch whose number is not known.
    pub first_seq: u64,
    pub last_seq: u64,
    /// What was wrong, for people: e.g. "events 41..=57 never arrived".
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// Sequence numbers missing, or a batch that does not connect to the stored chain.
    ChainGap,
    /// A refused batch (a fork, a bad signature) or acknowledged events the store lost or changed.
    ChainTamper,
}

impl FindingKind {
    /// The name rules match as the finding's `kind`, and the one stored and signed.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::ChainGap => "chain.gap",
            FindingKind::ChainTamper => "chain.tamper",
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Finding {
    /// The stored event an alert about it points to: the first one after the problem.
    pub fn evidence(&self) -> EvidenceRef {
        EvidenceRef {
            agent_id: self.agent_id.clone(),
            seq: self.last_seq.saturating_add(1),
        }
    }
}
