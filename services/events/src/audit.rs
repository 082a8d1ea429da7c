//! `audit.accessed`: the auditors are audited too. Every call to the evidence service's
//! auditor API is recorded, by whom and what it asked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Payload;

/// What an auditor did.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Search,
    Event,
    Checkpoint,
    Consistency,
    Replay,
    Bundle,
    Report,
    /// A page of the auditor console.
    Console,
}

/// `audit.accessed`; its `subject` is the access's own id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditAccessed {
    /// ULID of this access.
    pub access_id: String,
    /// The auditor's principal, from their verified token.
    pub auditor: String,
    pub action: AuditAction,
    /// The request's parameters (filters, ids, sizes), as given.
    pub parameters: BTreeMap<String, String>,
    /// The HTTP status answered.
    pub status: u16,
    /// Events returned or bundled, where that applies.
    pub events: Option<u64>,
}

impl Payload for AuditAccessed {
    const NAME: &'static str = "audit.accessed";
}

/// `ledger.pruned`: retention removed payloads; their hashes stay (the tombstone record of what
/// went). Its `subject` is the prune's own id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LedgerPruned {
    /// ULID of this prune.
    pub prune_id: String,
    pub first_index: u64,
    pub last_index: u64,
    /// Entries turned into tombstones.
    pub entries: u64,
    /// Entries past retention that legal holds kept.
    pub kept_by_legal_holds: u64,
    pub retention_days: u32,
    /// RFC 3339 UTC: entries received before this were past retention.
    pub cutoff: String,
}

impl Payload for LedgerPruned {
    const NAME: &'static str = "ledger.pruned";
}

/// `ledger.gap`: the evidence service expected stream sequences the stream no longer had
/// (expired, deleted or lost). An alarm, never a silent skip; the gap is also kept in the
/// ledger's own records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LedgerGap {
    pub first_missing_sequence: u64,
    pub last_missing_sequence: u64,
    /// RFC 3339 UTC.
    pub detected_at: String,
}

impl Payload for LedgerGap {
    const NAME: &'static str = "ledger.gap";
}

/// `witness.refused`: a witness did not cosign a checkpoint (it refused it, answered without a
/// valid cosignature, or could not be reached). An alarm; `inconsistent` may mean a fork.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WitnessRefused {
    /// The witness's name in the evidence configuration.
    pub witness: String,
    /// Why: `inconsistent`, `ahead`, `conflict`, `unknown_log`, `forbidden`, `bad_request`,
    /// `bad_cosignature`, `unreachable` or `error` (runbooks/witnesses.md).
    pub reason: String,
    /// The tree size of the checkpoint it was asked to cosign.
    pub size: u64,
    /// What the witness answered, or what went wrong (clipped).
    pub detail: String,
}

impl Payload for WitnessRefused {
    const NAME: &'static str = "witness.refused";
}
