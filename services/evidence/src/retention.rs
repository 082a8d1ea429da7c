//! Retention: legal holds, and pruning payloads past their retention while keeping every hash.
//!
//! Pruning replaces an entry's stored encoding with a **tombstone**: every field of the entry
//! but the event bytes, plus the entry's leaf hash and the event's length and BLAKE3. The
//! stored entry hash stays, so the next entry still links to it; the tree's nodes are not
//! touched, so every inclusion proof, consistency proof and checkpoint still verifies. An entry
//! matched by a legal hold is never pruned.
//!
//! Tombstone encoding (after the 32-byte stored entry hash, like an entry):
//! `gatehouse.ledger.tombstone.v1 0x00` (30 bytes) ‖ index (8) ‖ stream_sequence (8) ‖
//! received_at (signed 8) ‖ previous_hash (32) ‖ leaf_hash (32) ‖ event_length (4) ‖
//! event BLAKE3 (32) ‖ pruned_at (signed 8, ns since the epoch).

use serde::{Deserialize, Serialize};

use crate::entry::Hash;

pub const TOMBSTONE_TAG: &[u8] = b"gatehouse.ledger.tombstone.v1\0";
pub const TOMBSTONE_LEN: usize = 30 + 8 + 8 + 8 + 32 + 32 + 4 + 32 + 8;

/// What is left of a pruned entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub index: u64,
    pub stream_sequence: u64,
    pub received_at: i64,
    pub previous_hash: Hash,
    pub leaf_hash: Hash,
    pub event_length: u32,
    pub event_blake3: Hash,
    pub pruned_at: i64,
}

impl Tombstone {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOMBSTONE_LEN);
        out.extend_from_slice(TOMBSTONE_TAG);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.stream_sequence.to_be_bytes());
        out.extend_from_slice(&self.received_at.to_be_bytes());
        out.extend_from_slice(&self.previous_hash);
        out.extend_from_slice(&self.leaf_hash);
        out.extend_from_slice(&self.event_length.to_be_bytes());
        out.extend_from_slice(&self.event_blake3);
        out.extend_from_slice(&self.pruned_at.to_be_bytes());
        out
    }

    /// `None` unless `bytes` is exactly a tombstone.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != TOMBSTONE_LEN || !bytes.starts_with(TOMBSTONE_TAG) {
            return None;
        }
        let b = &bytes[TOMBSTONE_TAG.len()..];
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let hash_at = |i: usize| -> Hash { b[i..i + 32].try_into().unwrap_or_default() };
        Some(Self {
            index: u64_at(0),
            stream_sequence: u64_at(8),
            received_at: u64_at(16) as i64,
            previous_hash: hash_at(24),
            leaf_hash: hash_at(56),
            event_length: u32::from_be_bytes(b[88..92].try_into().unwrap_or_default()),
            event_blake3: hash_at(92),
            pruned_at: u64_at(124) as i64,
        })
    }
}

/// Which entries a legal hold keeps: every condition given must hold. A hold on a principal or
/// namespace keeps all events of that principal's (namespace's) requests and sessions.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HoldQuery {
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
    /// `received_at` bounds in nanoseconds: inclusive from, exclusive to.
    #[serde(default)]
    pub from: Option<i64>,
    #[serde(default)]
    pub to: Option<i64>,
}

impl HoldQuery {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A legal hold: entries it matches are kept past their retention until it is released.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    /// ULID.
    pub id: String,
    /// Why (a matter or case reference).
    pub reason: String,
    /// Who placed it.
    pub placed_by: String,
    /// RFC 3339 UTC.
    pub placed_at: String,
    pub query: HoldQuery,
}

/// What a prune did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries turned into tombstones now.
    pub pruned: u64,
    /// The first and last index pruned now.
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Entries past retention kept because a legal hold matches them.
    pub kept_by_holds: u64,
    /// Entries received before this (nanoseconds) were past retention.
    pub cutoff: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_round_trip_and_nothing_else_decodes_as_one() {
        let t = Tombstone {
            index: 7,
            stream_sequence: 9,
            received_at: -3,
            previous_hash: [1; 32],
            leaf_hash: [2; 32],
            event_length: 300,
            event_blake3: [3; 32],
            pruned_at: 1_900_000_000_000_000_000,
        };
        let bytes = t.encode();
        assert_eq!(bytes.len(), TOMBSTONE_LEN);
        assert_eq!(Tombstone::decode(&bytes), Some(t));
        assert_eq!(Tombstone::decode(&bytes[1..]), None);
        assert_eq!(Tombstone::decode(b"gatehouse.ledger.entry.v1\0"), None);
    }
}
