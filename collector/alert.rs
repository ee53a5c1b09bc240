//! An alert: what a detection rule concluded, with links to the events that show it.

use bannin::time::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One stored event an alert rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRef {
    pub agent_id: String,
    pub seq: u64,
}

/// Keys of the alert object itself, and the ones outputs and deliveries add beside a rule's fields:
/// a rule field of one of these names would repeat a key in the JSON, and the whole alert would no
/// longer parse ("duplicate field"), so rules may not use them.
pub const RESERVED_FIELDS: &[&str] = &[
    "id",
    "rule",
    "severity",
    "ts",
    "host",
    "summary",
    "evidence",
    "count",
    "deliveries",
    "alert_id",
    "delivery_id",
    "idempotency_key",
];

/// The alert object of docs/interface.md: common fields plus the rule's own (`fields`, flattened).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule: String,
    pub severity: Severity,
    pub ts: Timestamp,
    pub host: String,
    pub summary: String,
    pub evidence: Vec<EvidenceRef>,
    /// How many occurrences this alert stands for after de-duplication.
    pub count: u64,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Evidence kept per alert; repeats beyond this add to `count` only.
const MAX_EVIDENCE: usize = 200;

impl Alert {
    /// Folds a repeat of a de-duplicated alert in, for either store: the new count, the repeat's
    /// summary (when it says more) and fields over the old, and its evidence added up to
    /// [`MAX_EVIDENCE`] items.
    pub fn repeat(
        &mut self,
        count: u64,
        evidence: &[EvidenceRef],
        fields: &serde_json::Map<String, serde_json::Value>,
        summary: Option<&str>,
    ) {
        self.count = count;
        if let Some(summary) = summary {
            self.summary = summary.to_string();
        }
        for (name, value) in fields {
            self.fields.insert(name.clone(), value.clone());
        }
        for item in evidence {
            if self.evidence.len() >= MAX_EVIDENCE {
                break;
            }
            if !self.evidence.contains(item) {
                self.evidence.push(item.clone());
            }
        }
    }
}
