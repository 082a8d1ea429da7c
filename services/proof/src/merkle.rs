//! The Merkle tree over the ledger's entries, in RFC 9162's shape with BLAKE3 as the hash.
//!
//! - leaf hash = `BLAKE3(0x00 ‖ entry encoding)` (ledger format v1) or `BLAKE3(0x00 ‖ entry
//!   hash)` (v2), node hash = `BLAKE3(0x01 ‖ left ‖ right)`;
//! - the tree of `n` leaves splits at the largest power of two below `n` (no duplicated odd
//!   leaves); the empty tree's root is `BLAKE3("")`;
//! - inclusion and consistency proofs are RFC 9162 §2.1.3 and §2.1.4, bottom-up.
//!
//! The store keeps every *perfect* subtree's hash (level `L`, index `i`: leaves
//! `i·2^L .. (i+1)·2^L`), written as leaves arrive. Every subtree a proof needs is either one
//! of those or splits into them along the right edge, so a proof reads O(log n) stored nodes
//! ([`NodeSource`] is asked once per distinct node).

use std::collections::HashMap;

pub use crate::entry::Hash;

/// The hash of the empty tree.
pub fn empty_root() -> Hash {
    *blake3::hash(b"").as_bytes()
}

pub fn leaf_hash(entry_encoding: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x00]);
    hasher.update(entry_encoding);
    *hasher.finalize().as_bytes()
}

/// The leaf of ledger format v2: `BLAKE3(0x00 ‖ entry_hash)`, one compression.
pub fn leaf_of_entry_hash(entry_hash: &Hash) -> Hash {
    let mut input = [0u8; 33];
    input[1..].copy_from_slice(entry_hash);
    *blake3::hash(&input).as_bytes()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// Where perfect subtrees' hashes come from (the store, or memory in tests).
pub trait NodeSource {
    type Error;
    /// The hash of the perfect subtree at `level` and `index`; it must exist.
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Largest power of two strictly below `n` (`n ≥ 2`).
pub(crate) fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Hashes of subtrees, each read or computed once per proof.
struct Tree<'a, S: NodeSource> {
    source: &'a mut S,
    memo: HashMap<(u64, u64), Hash>,
}

impl<'a, S: NodeSource> Tree<'a, S> {
    fn new(source: &'a mut S) -> Self {
        Self {
            source,
            memo: HashMap::new(),
        }
    }

    /// MTH of leaves `start .. start + size` (`size ≥ 1`).
    fn hash(&mut self, start: u64, size: u64) -> Result<Hash, S::Error> {
        if let Some(h) = self.memo.get(&(start, size)) {
            return Ok(*h);
        }
        let h = if size.is_power_of_two() && start.is_multiple_of(size) {
            let level = size.trailing_zeros() as u8;
            self.source.node(level, start >> level)?
        } else {
            let k = split(size);
            let left = self.hash(start, k)?;
            let right = self.hash(start + k, size - k)?;
            node_hash(&left, &right)
        };
        self.memo.insert((start, size), h);
        Ok(h)
    }

    /// RFC 9162 PATH(m, D[start .. start + size]).
    fn path(&mut self, m: u64, start: u64, size: u64, out: &mut Vec<Hash>) -> Result<(), S::Error> {
        if size <= 1 {
            return Ok(());
        }
        let k = split(size);
        if m < k {
            self.path(m, start, k, out)?;
            out.push(self.hash(start + k, size - k)?);
        } else {
            self.path(m - k, start + k, size - k, out)?;
            out.push(self.hash(start, k)?);
        }
        Ok(())
    }

    /// RFC 9162 SUBPROOF(m, D[start .. start + size], whole).
    fn subproof(
        &mut self,
        m: u64,
        start: u64,
        size: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), S::Error> {
        if m == size {
            if !whole {
                out.push(self.hash(start, size)?);
            }
            return Ok(());
        }
        let k = split(size);
        if m <= k {
            self.subproof(m, start, k, whole, out)?;
            out.push(self.hash(start + k, size - k)?);
        } else {
            self.subproof(m - k, start + k, size - k, false, out)?;
            out.push(self.hash(start, k)?);
        }
        Ok(())
    }
}

/// The root of the first `size` leaves.
pub fn root<S: NodeSource>(source: &mut S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    Tree::new(source).hash(0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (`index < size`).
pub fn inclusion_proof<S: NodeSource>(
    source: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut out = Vec::new();
    if index < size {
        Tree::new(source).path(index, 0, size, &mut out)?;
    }
    Ok(out)
}

/// The consistency proof between the trees of `old` and `new` leaves (`0 < old ≤ new`);
/// empty when `old` is 0 or equals `new`.
pub fn consistency_proof<S: NodeSource>(
    source: &mut S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut out = Vec::new();
    if old > 0 && old < new {
        Tree::new(source).subproof(old, 0, new, true, &mut out)?;
    }
    Ok(out)
}

/// RFC 9162 §2.1.3.2: does `proof` put `leaf` at `index` in the tree of `size` with `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Checks many inclusion proofs against one tree, hashing each interior node once: the nodes
/// a verified proof establishes are remembered, and a later proof through them is checked by
/// comparing its hashes with them instead of hashing again. It accepts exactly what
/// [`verify_inclusion`] accepts (the same proof bytes are required).
#[derive(Debug)]
pub struct ProofChecker {
    size: u64,
    root: Hash,
    /// Subtree (start, size) → hash, for subtrees on verified paths and their siblings.
    proven: rustc_hash::FxHashMap<(u64, u64), Hash>,
    /// The path being checked, root first (reused between proofs).
    path: Vec<(u64, u64)>,
    /// Each step's sibling subtree, and whether the path's child is its left half.
    siblings: Vec<((u64, u64), bool)>,
    /// Subtrees a proof being checked establishes, kept if it verifies.
    learned: Vec<((u64, u64), Hash)>,
}

/// Proven subtrees remembered at most; beyond, the memory is cleared (only speed is lost).
const PROVEN_MAX: usize = 1 << 20;

impl ProofChecker {
    pub fn new(size: u64, root: Hash) -> Self {
        Self {
            size,
            root,
            proven: rustc_hash::FxHashMap::default(),
            path: Vec::with_capacity(64),
            siblings: Vec::with_capacity(64),
            learned: Vec::with_capacity(128),
        }
    }

    pub fn verify(&mut self, leaf: &Hash, index: u64, proof: &[Hash]) -> bool {
        if index >= self.size {
            return false;
        }
        // The subtrees on the path, root first, as RFC 9162 splits them.
        self.path.clear();
        let (mut start, mut size) = (0u64, self.size);
        while size > 1 {
            self.path.push((start, size));
            let k = split(size);
            if index < start + k {
                size = k;
            } else {
                start += k;
                size -= k;
            }
        }
        if proof.len() != self.path.len() {
            return false;
        }
        self.siblings.clear();
        let mut child = (index, 1u64);
        for &(ps, psize) in self.path.iter().rev() {
            let k = split(psize);
            let left = child.0 == ps;
            let sibling = if left { (ps + k, psize - k) } else { (ps, k) };
            self.siblings.push((sibling, left));
            child = (ps, psize);
        }
        // Walk up from the leaf until a subtree already proven (or the root) is reached,
        // noting each subtree the walk passes and its sibling.
        self.learned.clear();
        let mut h = *leaf;
        let mut child = (index, 1u64);
        let mut level = 0;
        let known = loop {
            if self.proven.get(&child) == Some(&h) {
                break true;
            }
            let Some(((sibling, left), p)) = self.siblings.get(level).zip(proof.get(level)) else {
                break false;
            };
            self.learned.push((child, h));
            self.learned.push((*sibling, *p));
            h = if *left {
                node_hash(&h, p)
            } else {
                node_hash(p, &h)
            };
            child = self.path[self.path.len() - 1 - level];
            level += 1;
        };
        let ok = if known {
            // Known from here up: the rest of this proof must be the known siblings.
            self.siblings[level..]
                .iter()
                .zip(&proof[level..])
                .all(|((s, _), p)| self.proven.get(s) == Some(p))
        } else {
            self.learned.push((child, h));
            h == self.root
        };
        if ok {
            // Everything below the known subtree (or the root) is proven now too, so the next
            // leaf's walk stops early: in order, a leaf costs about one node hash.
            if self.proven.len() + self.learned.len() > PROVEN_MAX {
                self.proven.clear();
            }
            self.proven.extend(self.learned.iter().copied());
        }
        ok
    }
}

/// RFC 9162 §2.1.4.2: is the tree of `new` leaves with `new_root` an append-only extension of
/// the tree of `old` leaves with `old_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    verify_consistency_with(node_hash, empty_root(), old, new, old_root, new_root, proof)
}

/// [`verify_consistency`] for a tree of the same shape with another node hash (and empty
/// root): the RFC 6962 SHA-256 tree of [`crate::rfc6962`].
pub(crate) fn verify_consistency_with(
    node_hash: fn(&Hash, &Hash) -> Hash,
    empty_root: Hash,
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == empty_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *old_root && sr == *new_root
}

/// The hash of the subtree over leaves `start .. start + size` (an RFC 9162 subtree of a tree
/// that holds them: perfect, or on its right edge).
pub fn subtree_hash<S: NodeSource>(
    source: &mut S,
    start: u64,
    size: u64,
) -> Result<Hash, S::Error> {
    Tree::new(source).hash(start, size)
}

/// A subtree by its first leaf and its number of leaves.
pub type Subtree = (u64, u64);

/// The subtrees `tree.jsonl` (`schemas/bundle.md`) gives between two leaves a bundle proves
/// (`from` is one past the earlier, 0 before the first; `before` is the later): the largest
/// aligned power-of-two blocks covering `from .. before`, left to right.
pub fn subtrees_between(from: u64, before: u64) -> Vec<Subtree> {
    let mut out = Vec::new();
    let mut at = from;
    while at < before {
        let mut size = if at == 0 {
            1u64 << 63
        } else {
            1u64 << at.trailing_zeros()
        };
        while size > before - at {
            size >>= 1;
        }
        out.push((at, size));
        at += size;
    }
    out
}

/// The subtrees a multiproof gives after the last leaf it proves: RFC 9162 subtrees of the tree
/// of `size` leaves covering `from .. size`, left to right (the last may be on the right edge,
/// not perfect).
pub fn subtrees_after(from: u64, size: u64) -> Vec<Subtree> {
    fn cover(start: u64, size: u64, from: u64, out: &mut Vec<Subtree>) {
        if start >= from {
            out.push((start, size));
        } else if size > 1 {
            let k = split(size);
            if from < start + k {
                cover(start, k, from, out);
                out.push((start + k, size - k));
            } else {
                cover(start + k, size - k, from, out);
            }
        }
    }
    let mut out = Vec::new();
    if from < size {
        cover(0, size, from, &mut out);
    }
    out
}

/// Rebuilds a tree's root from the leaves a bundle proves, in increasing index order, and the
/// subtrees that fill the rest ([`subtrees_between`], [`subtrees_after`]), so a contiguous run
/// of `k` leaves costs `k` node hashes and O(log n) given ones, not `k` inclusion proofs.
#[derive(Debug)]
pub struct RangeChecker {
    size: u64,
    /// The first leaf not yet covered.
    next: u64,
    /// Covered subtrees, left to right; siblings are merged as soon as both are present.
    stack: Vec<(u64, u64, Hash)>,
}

impl RangeChecker {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            next: 0,
            stack: Vec::with_capacity(64),
        }
    }

    /// The first leaf not covered yet.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Covers the subtree at `start` of `size` leaves with `hash`; it must start where the
    /// covered part ends and stay inside the tree.
    pub fn push(&mut self, start: u64, size: u64, hash: Hash) -> Result<(), String> {
        if start != self.next || size == 0 || size > self.size - start.min(self.size) {
            return Err(format!(
                "leaves {start}..{} do not continue the covered leaves 0..{} of a tree of {}",
                start.saturating_add(size),
                self.next,
                self.size
            ));
        }
        self.next = start + size;
        let (mut start, mut size, mut hash) = (start, size, hash);
        while let Some(&(ls, lsize, lh)) = self.stack.last() {
            let merges = lsize == size && size.is_power_of_two() && ls.is_multiple_of(2 * size);
            if !merges {
                break;
            }
            self.stack.pop();
            hash = node_hash(&lh, &hash);
            start = ls;
            size *= 2;
        }
        self.stack.push((start, size, hash));
        Ok(())
    }

    /// The root, once the whole tree is covered.
    pub fn root(&self) -> Option<Hash> {
        if self.next != self.size {
            return None;
        }
        let mut hashes = self.stack.iter().rev().map(|(_, _, h)| *h);
        Some(match hashes.next() {
            None => empty_root(),
            Some(last) => hashes.fold(last, |right, left| node_hash(&left, &right)),
        })
    }
}

/// The perfect subtrees completed by appending the leaf `index` (whose hash is `leaf`): the
/// leaf itself at level 0, then each parent it completes. `sibling(level, i)` gives stored
/// nodes to the left.
pub fn completed_by<E>(
    index: u64,
    leaf: Hash,
    mut sibling: impl FnMut(u8, u64) -> Result<Hash, E>,
) -> Result<Vec<(u8, u64, Hash)>, E> {
    let mut out = vec![(0u8, index, leaf)];
    let (mut level, mut i, mut h) = (0u8, index, leaf);
    while i & 1 == 1 {
        let left = sibling(level, i - 1)?;
        h = node_hash(&left, &h);
        level += 1;
        i >>= 1;
        out.push((level, i, h));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162's definitions, straight over the leaves: the reference the stored-node
    /// implementation is checked against.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// The multiproof of a set of leaves, straight from its recursive definition
    /// (`schemas/bundle.md`): a subtree with no proven leaf is given whole.
    fn naive_multiproof(
        start: usize,
        leaves: &[Hash],
        proven: &[usize],
        out: &mut Vec<(u64, u64, Hash)>,
    ) {
        let n = leaves.len();
        if !proven.iter().any(|&i| i >= start && i < start + n) {
            out.push((start as u64, n as u64, mth(leaves)));
        } else if n > 1 {
            let k = split(n as u64) as usize;
            naive_multiproof(start, &leaves[..k], proven, out);
            naive_multiproof(start + k, &leaves[k..], proven, out);
        }
    }

    #[test]
    fn range_checker_matches_the_recursive_multiproof() {
        let leaves: Vec<Hash> = (0..40u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 0..=40usize {
            let sets: Vec<Vec<usize>> = vec![
                vec![],
                (0..n).collect(),
                (0..n).filter(|i| i % 3 == 1).collect(),
                (0..n).filter(|i| i % 7 == 0 || i % 5 == 4).collect(),
                (n / 2..n).collect(),
                (0..n / 3).collect(),
            ];
            for proven in sets {
                let mut expected = Vec::new();
                if n > 0 {
                    naive_multiproof(0, &leaves[..n], &proven, &mut expected);
                }
                // What the checker asks for, in order, is what the definition gives.
                let mut asked = Vec::new();
                let mut checker = RangeChecker::new(n as u64);
                for &i in &proven {
                    for (s, z) in subtrees_between(checker.next(), i as u64) {
                        let h = expected.iter().find(|e| (e.0, e.1) == (s, z)).map(|e| e.2);
                        asked.push((s, z, h.expect("a subtree the definition gives")));
                        checker.push(s, z, h.unwrap()).unwrap();
                    }
                    checker.push(i as u64, 1, leaves[i]).unwrap();
                }
                for (s, z) in subtrees_after(checker.next(), n as u64) {
                    let h = expected.iter().find(|e| (e.0, e.1) == (s, z)).map(|e| e.2);
                    asked.push((s, z, h.expect("a subtree the definition gives")));
                    checker.push(s, z, h.unwrap()).unwrap();
                }
                assert_eq!(asked, expected, "n {n} proven {proven:?}");
                assert_eq!(
                    checker.root(),
                    Some(mth(&leaves[..n])),
                    "n {n} proven {proven:?}"
                );
                // A changed leaf changes the root.
                if let Some(&i) = proven.first() {
                    let mut bad = RangeChecker::new(n as u64);
                    for (s, z, h) in expected.iter().filter(|e| e.0 < i as u64) {
                        bad.push(*s, *z, *h).unwrap();
                    }
                    bad.push(i as u64, 1, leaf_hash(b"other")).unwrap();
                    for &j in proven.iter().skip(1) {
                        for (s, z) in subtrees_between(bad.next(), j as u64) {
                            let h = expected.iter().find(|e| (e.0, e.1) == (s, z)).unwrap().2;
                            bad.push(s, z, h).unwrap();
                        }
                        bad.push(j as u64, 1, leaves[j]).unwrap();
                    }
                    for (s, z) in subtrees_after(bad.next(), n as u64) {
                        let h = expected.iter().find(|e| (e.0, e.1) == (s, z)).unwrap().2;
                        bad.push(s, z, h).unwrap();
                    }
                    assert_ne!(bad.root(), Some(mth(&leaves[..n])));
                }
            }
        }
    }

    #[test]
    fn range_checker_refuses_what_does_not_continue() {
        let mut c = RangeChecker::new(4);
        assert!(c.push(1, 1, [0; 32]).is_err());
        c.push(0, 2, [0; 32]).unwrap();
        assert!(c.push(2, 4, [0; 32]).is_err());
        assert_eq!(c.root(), None);
    }

    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    fn naive_subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole { vec![] } else { vec![mth(leaves)] };
        }
        let k = split(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], whole);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    /// Perfect nodes built the way the store builds them, counting reads.
    struct Memory {
        nodes: HashMap<(u8, u64), Hash>,
        reads: usize,
    }

    impl NodeSource for Memory {
        type Error = String;
        fn node(&mut self, level: u8, index: u64) -> Result<Hash, String> {
            self.reads += 1;
            self.nodes
                .get(&(level, index))
                .copied()
                .ok_or_else(|| format!("no node {level}/{index}"))
        }
    }

    fn build(n: usize) -> (Vec<Hash>, Memory) {
        let mut memory = Memory {
            nodes: HashMap::new(),
            reads: 0,
        };
        let mut leaves = Vec::new();
        for i in 0..n {
            let leaf = leaf_hash(format!("entry {i}").as_bytes());
            leaves.push(leaf);
            let nodes = &memory.nodes;
            let done =
                completed_by(i as u64, leaf, |l, j| nodes.get(&(l, j)).copied().ok_or(())).unwrap();
            for (l, j, h) in done {
                memory.nodes.insert((l, j), h);
            }
        }
        (leaves, memory)
    }

    #[test]
    fn roots_and_proofs_match_the_rfc_definitions_for_every_size_and_leaf() {
        let (leaves, mut memory) = build(70);
        for n in 0..=70usize {
            let root_n = root(&mut memory, n as u64).unwrap();
            assert_eq!(root_n, mth(&leaves[..n]), "root of {n}");
            for m in 0..n {
                let proof = inclusion_proof(&mut memory, m as u64, n as u64).unwrap();
                assert_eq!(proof, naive_path(m, &leaves[..n]), "path {m} of {n}");
                assert!(verify_inclusion(
                    &leaves[m], m as u64, n as u64, &proof, &root_n
                ));
                // Another leaf, or the leaf at another index, fails.
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(
                    &other, m as u64, n as u64, &proof, &root_n
                ));
                if n > 1 {
                    let elsewhere = (m as u64 + 1) % n as u64;
                    assert!(!verify_inclusion(
                        &leaves[m], elsewhere, n as u64, &proof, &root_n
                    ));
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(&mut memory, m as u64, n as u64).unwrap();
                let expected = if m == n {
                    vec![]
                } else {
                    naive_subproof(m, &leaves[..n], true)
                };
                assert_eq!(proof, expected, "consistency {m} → {n}");
                let root_m = mth(&leaves[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &root_m, &root_n, &proof),
                    "{m} → {n}"
                );
                if m < n {
                    let mut bad = proof.clone();
                    if let Some(first) = bad.first_mut() {
                        first[0] ^= 1;
                    }
                    assert!(
                        !verify_consistency(m as u64, n as u64, &root_m, &root_n, &bad),
                        "tampered {m} → {n}"
                    );
                    let other = leaf_hash(b"not a root");
                    assert!(!verify_consistency(
                        m as u64, n as u64, &other, &root_n, &proof
                    ));
                }
            }
        }
    }

    #[test]
    fn the_proof_checker_accepts_exactly_what_verify_inclusion_accepts() {
        let (leaves, mut memory) = build(70);
        for n in [1u64, 2, 3, 7, 8, 33, 70] {
            let root = root(&mut memory, n).unwrap();
            let mut checker = ProofChecker::new(n, root);
            // Twice over, so the second pass runs on remembered subtrees.
            for _ in 0..2 {
                for m in 0..n {
                    let proof = inclusion_proof(&mut memory, m, n).unwrap();
                    let leaf = leaves[m as usize];
                    assert!(checker.verify(&leaf, m, &proof), "{m} of {n}");
                    let other = leaf_hash(b"not in the tree");
                    assert!(!checker.verify(&other, m, &proof));
                    for i in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[i][0] ^= 1;
                        assert!(!checker.verify(&leaf, m, &bad), "sibling {i} of {m}/{n}");
                    }
                    if !proof.is_empty() {
                        assert!(!checker.verify(&leaf, m, &proof[1..]));
                    }
                    if n > 1 {
                        assert!(!checker.verify(&leaf, (m + 1) % n, &proof));
                    }
                }
            }
        }
    }

    #[test]
    fn a_proof_reads_logarithmically_many_nodes() {
        let (_, mut memory) = build(1 << 12);
        let n = (1 << 12) - 3;
        for m in [0u64, 1, 777, 2048, n - 1] {
            memory.reads = 0;
            let proof = inclusion_proof(&mut memory, m, n).unwrap();
            assert!(
                memory.reads <= 2 * 12 + 2,
                "{} reads for {} hashes",
                memory.reads,
                proof.len()
            );
        }
        memory.reads = 0;
        consistency_proof(&mut memory, 1000, n).unwrap();
        assert!(memory.reads <= 2 * 12 + 2, "{} reads", memory.reads);
    }

    /// The vectors in `schemas/ledger.md`, computed with Python's `blake3` from that text.
    #[test]
    fn known_answers() {
        use crate::entry::{Entry, GENESIS_HASH, entry_hash};
        let hex = |h: &Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let a = Entry {
            index: 0,
            stream_sequence: 1,
            received_at: 0,
            previous_hash: GENESIS_HASH,
            event: b"{}".to_vec(),
        }
        .encode()
        .unwrap();
        let b = Entry {
            index: 1,
            stream_sequence: 2,
            received_at: 1_795_000_000_000_000_000,
            previous_hash: entry_hash(&a),
            event: br#"{"a":1}"#.to_vec(),
        }
        .encode()
        .unwrap();
        let c = Entry {
            index: 2,
            stream_sequence: 3,
            received_at: 1_795_000_000_000_000_001,
            previous_hash: entry_hash(&b),
            event: br#"{"b":2}"#.to_vec(),
        }
        .encode()
        .unwrap();
        let (la, lb, lc) = (leaf_hash(&a), leaf_hash(&b), leaf_hash(&c));
        assert_eq!(
            hex(&la),
            "84dc7204356bf7675553977ae7aa7b4e5e72510f445448d9ee0d69dd7737a2ec"
        );
        assert_eq!(
            hex(&lb),
            "17f56450f63775b38fc6f5e7de1a376eae7f56ebde7ee98929890fa710cf42b0"
        );
        assert_eq!(
            hex(&lc),
            "fe773482d0d2eb506222f5dd056e5d611534fe98a333fbaa323fd85eeb14ebe9"
        );
        assert_eq!(
            hex(&node_hash(&la, &lb)),
            "7b580cc9670bb4a1737a9b443c4ca62458438035e46f85a6c3819ec1c8ddc0fc"
        );
        assert_eq!(
            hex(&mth(&[la, lb, lc])),
            "f0563e06dafc2401225a9f94c77ff10ef60b16082542ac8bbebdb5c73e23fb88"
        );
        assert_eq!(
            hex(&empty_root()),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        // Format v2: leaves over the entry hashes (ledger.md, computed with Python's blake3).
        use crate::entry::LedgerFormat;
        let v2: Vec<Hash> = [&a, &b, &c]
            .iter()
            .map(|e| LedgerFormat::V2.hashes(e).1)
            .collect();
        assert_eq!(
            v2.iter().map(hex).collect::<Vec<_>>(),
            [
                "3a3b1269503fc688be1142349be8fa7ac22f06335044b3357dfefaae1ca921e6",
                "6b2e059d9eb5e046f1db93a3f27f7bc8c5f59f7e4f62aca59b77e879d382f249",
                "e2b13ef71737d163f8b31dabbe51303f0d748405067b188f095155997b1ca1b9",
            ]
        );
        assert_eq!(
            hex(&node_hash(&v2[0], &v2[1])),
            "bbc3e66eff19dfcd5faadf66d5970e23d97f5b8be5d0a9c45619b74741bd7aa4"
        );
        assert_eq!(
            hex(&mth(&v2)),
            "f04a4ebb491852bf52ae7f8d1fa2ded9b516827e591445ac2df0af914d604baf"
        );
    }

    #[test]
    fn leaves_and_nodes_are_domain_separated() {
        let a = leaf_hash(b"x");
        assert_ne!(a, *blake3::hash(b"x").as_bytes());
        assert_ne!(node_hash(&a, &a), leaf_hash(&[a, a].concat()));
    }
}
