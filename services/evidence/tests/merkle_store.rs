//! The Merkle tree as the ledger stores it: built with every group commit, built once for a
//! ledger written before it, and its proofs checked against a tree computed from the entries.

use gatehouse_evidence::Ledger;
use gatehouse_evidence::entry::LedgerFormat;
use gatehouse_evidence::merkle::{self, verify_consistency, verify_inclusion};
use gatehouse_evidence::store::{CF_META, CF_TREE, NewEntry, ledger_dir};

fn batch(range: std::ops::Range<u64>) -> Vec<NewEntry> {
    range
        .map(|seq| NewEntry {
            stream_sequence: seq,
            received_at: 1_795_000_000_000_000_000 + seq as i64,
            event: format!(r#"{{"id":"event-{seq}"}}"#).into_bytes(),
        })
        .collect()
}

/// Leaf hashes recomputed from the stored entries, as the ledger's format defines them.
fn leaves(ledger: &Ledger) -> Vec<merkle::Hash> {
    let format = ledger.format();
    ledger
        .entries(0)
        .unwrap()
        .map(|e| format.hashes(&e.unwrap().encoding).1)
        .collect()
}

/// RFC 9162 MTH, straight over the leaves.
fn mth(leaves: &[merkle::Hash]) -> merkle::Hash {
    match leaves.len() {
        0 => merkle::empty_root(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            merkle::node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

#[test]
fn group_commits_keep_the_tree_and_proofs_hold_at_every_size() {
    for format in [LedgerFormat::V1, LedgerFormat::V2] {
        tree_of(format);
    }
}

/// A ledger of `format` keeps its format, and its tree is of that format's leaves.
fn tree_of(format: LedgerFormat) {
    let dir = tempfile::tempdir().unwrap();
    drop(Ledger::open_as(dir.path(), format).unwrap());
    // Reopened as the current format, it stays what it was created as.
    let mut ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.format(), format);
    // Batches of uneven sizes, as group commit writes them.
    let mut next = 1;
    for size in [1u64, 2, 5, 1, 8, 13, 3] {
        ledger.append(&batch(next..next + size), &[]).unwrap();
        next += size;
    }
    let n = ledger.head().next_index;
    assert_eq!(ledger.tree_size(), n);
    let leaves = leaves(&ledger);
    for size in 1..=n {
        let root = ledger.root(size).unwrap();
        assert_eq!(root, mth(&leaves[..size as usize]), "root of {size}");
        for index in 0..size {
            let proof = ledger.inclusion_proof(index, size).unwrap();
            assert!(verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &proof,
                &root
            ));
        }
        for old in 1..=size {
            let proof = ledger.consistency_proof(old, size).unwrap();
            let old_root = ledger.root(old).unwrap();
            assert!(
                verify_consistency(old, size, &old_root, &root, &proof),
                "{old} → {size}"
            );
        }
    }
    assert!(ledger.root(n + 1).is_err(), "no root beyond the tree");
    assert!(ledger.inclusion_proof(n, n).is_err());
    // `ledger verify` walks a ledger of either format under that format's leaves.
    let walked = gatehouse_evidence::verify::verify(&ledger)
        .unwrap()
        .unwrap();
    assert_eq!(walked.merkle_root, Some(ledger.root(n).unwrap()));
}

#[test]
fn a_ledger_written_before_the_tree_gets_one_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.append(&batch(1..40), &[]).unwrap();
        ledger.root(39).unwrap()
    };
    // Take the tree away, as a ledger from before it would be.
    {
        let path = ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let meta = db.cf_handle(CF_META).unwrap();
        db.delete_cf(&meta, b"tree_size").unwrap();
        db.drop_cf(CF_TREE).unwrap();
    }
    let read_only = Ledger::open_read_only(dir.path()).unwrap();
    assert_eq!(read_only.tree_size(), 0);
    assert!(read_only.root(39).is_err());
    drop(read_only);
    let mut ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.tree_size(), 39);
    assert_eq!(ledger.root(39).unwrap(), expected);
    ledger.append(&batch(40..45), &[]).unwrap();
    let leaves = leaves(&ledger);
    assert_eq!(ledger.root(44).unwrap(), mth(&leaves));
}

#[test]
fn verify_recomputes_the_tree_and_names_a_changed_node() {
    use gatehouse_evidence::verify::{Problem, verify};
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.append(&batch(1..12), &[]).unwrap();
        let verified = verify(&ledger).unwrap().unwrap();
        assert_eq!(verified.merkle_root, Some(ledger.root(11).unwrap()));
    }
    // Change the node over entries 4..8 (level 2, index 1), as someone with the files could.
    {
        let path = ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let tree = db.cf_handle(CF_TREE).unwrap();
        let mut key = vec![2u8];
        key.extend_from_slice(&1u64.to_be_bytes());
        db.put_cf(&tree, key, [7u8; 32]).unwrap();
    }
    let ledger = Ledger::open_read_only(dir.path()).unwrap();
    let broken = verify(&ledger).unwrap().unwrap_err();
    assert_eq!(broken.index, 7, "the entry that completes the node");
    assert_eq!(broken.problem, Problem::TreeNode { level: 2, node: 1 });
    assert!(
        broken.to_string().contains("Merkle tree node 2/1"),
        "{broken}"
    );
}
