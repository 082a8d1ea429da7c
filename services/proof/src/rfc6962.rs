//! The ledger's leaves in an RFC 6962 Merkle tree with SHA-256, the tree that C2SP witnesses
//! check (`tlog-witness` verifies consistency proofs "according to RFC 6962", i.e. with
//! SHA-256; the ledger's own tree uses BLAKE3, which no witness can check).
//!
//! - leaf `i` = `SHA-256(0x00 ‖ BLAKE3 leaf hash of entry i)` (the 32-byte leaf hash of
//!   `ledger.md`, kept when retention prunes a payload, so the tree never needs a payload);
//! - node = `SHA-256(0x01 ‖ left ‖ right)`; the empty tree's root is `SHA-256("")`.
//!
//! The evidence service keeps only the tree's *peaks* (the perfect subtrees the binary digits
//! of the size split it into, largest first) at each size a witness has seen: those and the
//! leaves added since are all a consistency proof from that size needs, so the tree itself is
//! never stored.

use sha2::{Digest, Sha256};

use crate::entry::Hash;
use crate::merkle::split;

pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The RFC 6962 leaf hash of a ledger leaf, from its BLAKE3 leaf hash.
pub fn leaf_hash(blake3_leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(blake3_leaf);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The tree of `size` leaves, as its peaks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peaks {
    pub size: u64,
    /// One hash per set bit of `size`, the largest subtree first.
    pub hashes: Vec<Hash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("the peaks do not fit a tree of {0} leaves")]
    BadPeaks(u64),
}

impl Peaks {
    /// Whether the peaks are as many as the size's set bits.
    pub fn check(&self) -> Result<(), TreeError> {
        if self.hashes.len() != self.size.count_ones() as usize {
            return Err(TreeError::BadPeaks(self.size));
        }
        Ok(())
    }

    /// Appends one leaf (already an RFC 6962 leaf hash).
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one bit is a peak of the same size as the one being carried.
        while size & 1 == 1 {
            let Some(left) = self.hashes.pop() else { break };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut peaks = self.hashes.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The RFC 6962 §2.1.2 consistency proof from this tree to the tree with `leaves` (RFC 6962
    /// leaf hashes of indexes `self.size ..`) appended, and that tree's peaks.
    pub fn extend(&self, leaves: &[Hash]) -> Result<(Vec<Hash>, Peaks), TreeError> {
        self.check()?;
        let old = self.size;
        let new = old + leaves.len() as u64;
        let mut after = self.clone();
        for leaf in leaves {
            after.push(*leaf);
        }
        let mut proof = Vec::new();
        if old != 0 && old != new {
            // The perfect subtrees left of `old` a proof names are exactly the peaks of `old`.
            let mut starts = Vec::new();
            let mut start = 0;
            for bit in (0..64).rev() {
                if old & (1 << bit) != 0 {
                    starts.push((start, 1u64 << bit));
                    start += 1 << bit;
                }
            }
            let known = |s: u64, n: u64| {
                starts
                    .iter()
                    .position(|&p| p == (s, n))
                    .map(|i| self.hashes[i])
            };
            subproof(
                old,
                0,
                new,
                true,
                &mut |s, n| {
                    if s >= old {
                        let from = usize::try_from(s - old).unwrap_or(usize::MAX);
                        let to = usize::try_from(s + n - old).unwrap_or(usize::MAX);
                        leaves
                            .get(from..to)
                            .map(mth)
                            .ok_or(TreeError::BadPeaks(old))
                    } else {
                        known(s, n).ok_or(TreeError::BadPeaks(old))
                    }
                },
                &mut proof,
            )?;
        }
        Ok((proof, after))
    }
}

/// The tree hash of a run of leaf hashes (non-empty).
fn mth(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len() as u64) as usize;
    node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
}

/// RFC 6962 §2.1.2 `SUBPROOF(m, D[start:start+n], b)`; `hash(start, n)` gives `MTH` of a
/// subtree.
fn subproof(
    m: u64,
    start: u64,
    n: u64,
    whole: bool,
    hash: &mut impl FnMut(u64, u64) -> Result<Hash, TreeError>,
    out: &mut Vec<Hash>,
) -> Result<(), TreeError> {
    if m == n {
        if !whole {
            out.push(hash(start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, k, whole, hash, out)?;
        out.push(hash(start + k, n - k)?);
    } else {
        subproof(m - k, start + k, n - k, false, hash, out)?;
        out.push(hash(start, k)?);
    }
    Ok(())
}

/// Checks an RFC 6962 consistency proof (RFC 9162 §2.1.4.2's algorithm, shared with the
/// ledger's own tree, which accepts the proofs RFC 6962 §2.1.2 makes).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    crate::merkle::verify_consistency_with(
        node_hash,
        empty_root(),
        old,
        new,
        old_root,
        new_root,
        proof,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&blake3::hash(&i.to_be_bytes()).into()))
            .collect()
    }

    fn peaks_of(leaves: &[Hash]) -> Peaks {
        let mut p = Peaks::default();
        for l in leaves {
            p.push(*l);
        }
        p
    }

    #[test]
    fn roots_match_the_recursive_definition_and_every_proof_verifies() {
        let all = leaves(40);
        assert_eq!(peaks_of(&[]).root(), empty_root());
        for new in 0..=40u64 {
            let p = peaks_of(&all[..new as usize]);
            p.check().unwrap();
            if new > 0 {
                assert_eq!(p.root(), mth(&all[..new as usize]), "size {new}");
            }
            for old in 0..=new {
                let before = peaks_of(&all[..old as usize]);
                let (proof, after) = before.extend(&all[old as usize..new as usize]).unwrap();
                assert_eq!(after, p);
                assert!(
                    verify_consistency(old, new, &before.root(), &p.root(), &proof),
                    "{old} -> {new}"
                );
                if old > 0 && old < new {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_consistency(
                        old,
                        new,
                        &before.root(),
                        &p.root(),
                        &bad
                    ));
                }
            }
        }
    }

    #[test]
    fn the_rfc_example_proof_has_the_rfc_shape() {
        // RFC 6962 §2.1.3: the proof from 3 to 7 is [c, d, g, l] = [d2, d3, MTH(d0,d1), MTH(d4..d6)].
        let all = leaves(7);
        let (proof, _) = peaks_of(&all[..3]).extend(&all[3..]).unwrap();
        assert_eq!(
            proof,
            vec![all[2], all[3], mth(&all[0..2]), mth(&all[4..7])]
        );
        // From 4 to 7 the old root is implied: [l] only.
        let (proof, _) = peaks_of(&all[..4]).extend(&all[4..]).unwrap();
        assert_eq!(proof, vec![mth(&all[4..7])]);
    }

    #[test]
    fn peaks_that_do_not_fit_their_size_are_refused() {
        let p = Peaks {
            size: 3,
            hashes: vec![[0; 32]],
        };
        assert_eq!(p.extend(&[[1; 32]]).unwrap_err(), TreeError::BadPeaks(3));
    }
}
