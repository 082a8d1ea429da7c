//! Re-walking the chain: `gatehouse ledger verify`.
//!
//! Every entry is decoded and re-hashed from its stored bytes, and each must sit at the key of
//! its own index and link to the hash of the entry before it. The walk stops at the first entry
//! that fails and names it; a changed, removed, reordered or inserted entry always fails at the
//! first index it affects.
//!
//! The Merkle tree is recomputed from the entries along the way: every perfect subtree the
//! store keeps must equal the one computed, so a proof served from the store is a proof of
//! these entries.

use std::fmt;

use crate::entry::{EntryRef, GENESIS_HASH, Hash, LedgerFormat, entry_hash};
use crate::merkle;
use rayon::prelude::*;

use crate::store::{Gap, Ledger, LedgerError, StoredEntry};

/// A chain that holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub head_hash: Hash,
    pub last_sequence: u64,
    /// Stream sequences the evidence service found missing from the stream when it ingested
    /// (alarms raised at the time, not chain damage).
    pub gaps: Vec<Gap>,
    /// The Merkle root of all entries, when the ledger has its tree (a ledger written before
    /// the tree gets it the next time `gatehouse evidence` opens it).
    pub merkle_root: Option<Hash>,
    /// Entries whose payload retention pruned (their hashes verified, their events gone).
    pub pruned: u64,
    /// The ledger's format, under whose leaf definition the tree was recomputed.
    pub format: LedgerFormat,
}

/// The first thing wrong with the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The first index that does not verify.
    pub index: u64,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No entry is stored at this index, though later ones are (or the head says there are).
    Missing,
    /// The entry stored here says it belongs at another index (moved or reordered).
    WrongIndex { claimed: u64 },
    /// The stored bytes are not an entry encoding.
    Undecodable(String),
    /// The entry's contents do not hash to the hash stored with it (changed in place).
    HashMismatch { stored: Hash, computed: Hash },
    /// The entry does not link to the one before it (one before it changed, was inserted or
    /// reordered).
    BrokenLink { expected: Hash, found: Hash },
    /// Stream sequences must increase along the chain.
    SequenceNotIncreasing { previous: u64, found: u64 },
    /// There are entries past the head the ledger recorded (inserted at the end).
    BeyondHead { head_entries: u64 },
    /// The chain ends at a different hash than the recorded head (truncated or rewritten).
    HeadMismatch { recorded: Hash, computed: Hash },
    /// A key that is not an 8-byte index was found among the entries.
    ForeignKey,
    /// RocksDB could not read the entry (checksum mismatch or other corruption).
    Storage(String),
    /// A stored Merkle tree node (completed by this entry) differs from the one the entries
    /// give, or is missing: proofs served from it would be wrong.
    TreeNode { level: u8, node: u64 },
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.index;
        match &self.problem {
            Problem::Missing => write!(f, "entry {i} is missing"),
            Problem::WrongIndex { claimed } => write!(
                f,
                "entry {i} holds the entry for index {claimed} (entries were moved or reordered)"
            ),
            Problem::Undecodable(e) => write!(f, "entry {i} is not a valid entry: {e}"),
            Problem::HashMismatch { stored, computed } => write!(
                f,
                "entry {i} was changed: its contents hash to {} but {} is stored",
                hex::encode(computed),
                hex::encode(stored)
            ),
            Problem::BrokenLink { expected, found } => write!(
                f,
                "entry {i} does not link to entry {}: it names previous hash {}, the chain has {} \
                 (an entry was changed, inserted or reordered)",
                i.wrapping_sub(1),
                hex::encode(found),
                hex::encode(expected)
            ),
            Problem::SequenceNotIncreasing { previous, found } => write!(
                f,
                "entry {i} has stream sequence {found}, not above the previous entry's {previous}"
            ),
            Problem::BeyondHead { head_entries } => write!(
                f,
                "entry {i} lies beyond the recorded head ({head_entries} entries): it was inserted"
            ),
            Problem::HeadMismatch { recorded, computed } => write!(
                f,
                "the chain ends before index {i} at {} but the recorded head is {} (entries were \
                 removed or rewritten)",
                hex::encode(computed),
                hex::encode(recorded)
            ),
            Problem::ForeignKey => write!(f, "a foreign key was written after entry {i}"),
            Problem::Storage(e) => write!(f, "entry {i} cannot be read: {e}"),
            Problem::TreeNode { level, node } => write!(
                f,
                "the Merkle tree node {level}/{node}, completed by entry {i}, does not match the \
                 entries (the tree was changed)"
            ),
        }
    }
}

/// Entries hashed in parallel at a time: large enough to keep every core busy, small enough
/// that a batch of ~1 KB entries stays in cache-friendly memory.
const VERIFY_BATCH: usize = 4096;

/// What an entry's own bytes say, computed off the ordered walk: its index, previous hash and
/// stream sequence, its entry hash and its leaf hash, and whether retention pruned it.
struct Hashed {
    fields: (u64, Hash, u64),
    computed: Hash,
    leaf: Hash,
    pruned: bool,
}

/// Decodes and hashes one stored entry; a problem found in the entry alone is returned for the
/// ordered walk to report at its index.
fn hash_stored(format: LedgerFormat, stored: &StoredEntry) -> Result<Hashed, Problem> {
    // A pruned entry keeps every field but the event: its stored hash is what the next entry
    // links to and its leaf hash is what the tree holds; only the event's own bytes can no
    // longer be checked.
    match EntryRef::decode(&stored.encoding) {
        Ok(entry) => {
            let computed = entry_hash(&stored.encoding);
            if Some(entry.index) == stored.key && computed != stored.stored_hash {
                return Err(Problem::HashMismatch {
                    stored: stored.stored_hash,
                    computed,
                });
            }
            Ok(Hashed {
                fields: (entry.index, entry.previous_hash, entry.stream_sequence),
                computed,
                // Format v2 hashes the entry's bytes once: the leaf is over the entry hash.
                leaf: format.leaf(&stored.encoding, &computed),
                pruned: false,
            })
        }
        Err(e) => match stored.tombstone() {
            Some(t) => Ok(Hashed {
                fields: (t.index, t.previous_hash, t.stream_sequence),
                computed: stored.stored_hash,
                leaf: t.leaf_hash,
                pruned: true,
            }),
            None => Err(Problem::Undecodable(e.to_string())),
        },
    }
}

/// Walks the whole chain.
pub fn verify(ledger: &Ledger) -> Result<Result<Verified, Broken>, LedgerError> {
    verify_with_progress(ledger, |_| {})
}

/// Walks the whole chain, calling `progress` with the number of entries checked so far every
/// few thousand entries.
pub fn verify_with_progress(
    ledger: &Ledger,
    mut progress: impl FnMut(u64),
) -> Result<Result<Verified, Broken>, LedgerError> {
    let head = ledger.head();
    let mut expected_index = 0u64;
    let mut chain: Hash = GENESIS_HASH;
    let mut last_sequence = 0u64;
    let broken = |index, problem| Ok(Err(Broken { index, problem }));
    let with_tree = ledger.tree_size() == head.next_index;
    // Perfect subtrees not yet folded into a bigger one, left to right.
    let mut frontier: Vec<(u8, Hash)> = Vec::new();
    let mut pruned = 0u64;

    // Entries are read in order and hashed in parallel a batch at a time (BLAKE3 over each
    // entry is most of the cost), the next batch read while this one is hashed; the chain,
    // sequence and tree checks then run in order over the batch, so the first index that
    // fails is still the one named. Tree nodes are read by one forward scan per level.
    let format = ledger.format();
    let mut scan = ledger.scan_entries(0)?;
    let mut nodes = ledger.scan_nodes();
    let mut batch = Vec::with_capacity(VERIFY_BATCH);
    let mut read_error = scan.next_batch(VERIFY_BATCH, &mut batch).err();
    loop {
        if batch.is_empty() && read_error.is_none() {
            break;
        }
        let mut next = Vec::with_capacity(VERIFY_BATCH);
        let mut hashed: Vec<Result<Hashed, Problem>> = Vec::new();
        let mut next_error = None;
        rayon::in_place_scope(|scope| {
            let (current, out) = (&batch, &mut hashed);
            scope.spawn(move |_| {
                *out = current
                    .par_iter()
                    .map(|stored| hash_stored(format, stored))
                    .collect();
            });
            if read_error.is_none() {
                next_error = scan.next_batch(VERIFY_BATCH, &mut next).err();
            }
        });
        for (stored, hashed) in batch.iter().zip(hashed) {
            let Some(key) = stored.key else {
                return broken(expected_index, Problem::ForeignKey);
            };
            if key != expected_index {
                return broken(expected_index, Problem::Missing);
            }
            if key >= head.next_index {
                return broken(
                    key,
                    Problem::BeyondHead {
                        head_entries: head.next_index,
                    },
                );
            }
            let Hashed {
                fields,
                computed,
                leaf,
                pruned: was_pruned,
            } = match hashed {
                Ok(h) => h,
                Err(problem) => return broken(key, problem),
            };
            if was_pruned {
                pruned += 1;
            }
            let (claimed, previous_hash, stream_sequence) = fields;
            if claimed != key {
                return broken(key, Problem::WrongIndex { claimed });
            }
            if previous_hash != chain {
                return broken(
                    key,
                    Problem::BrokenLink {
                        expected: chain,
                        found: previous_hash,
                    },
                );
            }
            if stream_sequence <= last_sequence {
                return broken(
                    key,
                    Problem::SequenceNotIncreasing {
                        previous: last_sequence,
                        found: stream_sequence,
                    },
                );
            }
            if with_tree {
                let mut lefts = frontier.iter().rev().map(|(_, h)| *h);
                let completed = merkle::completed_by(key, leaf, |_, _| lefts.next().ok_or(()));
                let Ok(completed) = completed else {
                    return broken(
                        key,
                        Problem::TreeNode {
                            level: 0,
                            node: key,
                        },
                    );
                };
                for (level, node, hash) in &completed {
                    if nodes.node(*level, *node).ok() != Some(*hash) {
                        return broken(
                            key,
                            Problem::TreeNode {
                                level: *level,
                                node: *node,
                            },
                        );
                    }
                }
                // The merged subtrees leave the frontier; the largest completed one joins it.
                frontier.truncate(frontier.len() + 1 - completed.len());
                if let Some((level, _, hash)) = completed.last() {
                    frontier.push((*level, *hash));
                }
            }
            chain = computed;
            last_sequence = stream_sequence;
            expected_index += 1;
            if expected_index.is_multiple_of(4096) {
                progress(expected_index);
            }
        }
        if let Some(e) = read_error {
            return match e {
                LedgerError::Db { source, .. } => {
                    broken(expected_index, Problem::Storage(source.to_string()))
                }
                e => Err(e),
            };
        }
        batch = next;
        read_error = next_error;
    }
    if expected_index < head.next_index {
        return broken(expected_index, Problem::Missing);
    }
    if chain != head.hash {
        return broken(
            expected_index,
            Problem::HeadMismatch {
                recorded: head.hash,
                computed: chain,
            },
        );
    }
    progress(expected_index);
    let merkle_root = with_tree.then(|| {
        let mut hashes = frontier.iter().rev().map(|(_, h)| *h);
        match hashes.next() {
            None => merkle::empty_root(),
            Some(last) => hashes.fold(last, |right, left| merkle::node_hash(&left, &right)),
        }
    });
    Ok(Ok(Verified {
        format,
        entries: expected_index,
        head_hash: chain,
        last_sequence: head.last_sequence,
        gaps: ledger.gaps()?,
        merkle_root,
        pruned,
    }))
}
