//! Bundles written and verified with nothing but this crate: a good one verifies, and every
//! single byte of it, flipped, makes verification fail.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use gatehouse_proof::bundle::{BundleWriter, Scope, verify};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};
use gatehouse_proof::entry::{Entry, GENESIS_HASH, Hash, entry_hash};
use gatehouse_proof::merkle::{self, NodeSource};

/// A ledger in memory: entries, and the tree's perfect subtrees as the store keeps them.
struct Ledger {
    entries: Vec<Entry>,
    nodes: HashMap<(u8, u64), Hash>,
}

impl NodeSource for Ledger {
    type Error = String;
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, String> {
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or_else(|| format!("{level}/{index}"))
    }
}

fn ledger(n: u64) -> Ledger {
    let mut ledger = Ledger {
        entries: vec![],
        nodes: HashMap::new(),
    };
    let mut previous = GENESIS_HASH;
    for i in 0..n {
        let entry = Entry {
            index: i,
            stream_sequence: i + 1,
            received_at: 1_795_000_000_000_000_000 + i as i64,
            previous_hash: previous,
            event: format!(r#"{{"id":"{i}","type":"dev.gatehouse.request.received.v1"}}"#)
                .into_bytes(),
        };
        let encoding = entry.encode().unwrap();
        previous = entry_hash(&encoding);
        let nodes = &ledger.nodes;
        let done = merkle::completed_by(i, merkle::leaf_hash(&encoding), |l, j| {
            nodes.get(&(l, j)).copied().ok_or(())
        })
        .unwrap();
        for (l, j, h) in done {
            ledger.nodes.insert((l, j), h);
        }
        ledger.entries.push(entry);
    }
    ledger
}

fn signer() -> NoteSigner {
    NoteSigner::from_seed("gatehouse.example.com/ledger", [3u8; 32]).unwrap()
}

/// Writes a bundle of entries `range` (every one, or every other with `sparse`).
fn write_bundle(path: &Path, n: u64, range: std::ops::Range<u64>, sparse: bool) {
    let mut ledger = ledger(n);
    let root = merkle::root(&mut ledger, n).unwrap();
    let checkpoint = Checkpoint {
        origin: "gatehouse.example.com/ledger".into(),
        size: n,
        root,
    };
    let signer = signer();
    let mut writer = BundleWriter::new().unwrap();
    writer
        .add_file("checkpoint", |w| {
            w.write_all(signer.sign(&checkpoint).as_bytes())
        })
        .unwrap();
    writer
        .add_file("keys/checkpoint.vkey", |w| {
            w.write_all(format!("{}\n", signer.verifier().to_vkey()).as_bytes())
        })
        .unwrap();
    for i in range.filter(|i| !sparse || i % 2 == 0) {
        let proof = merkle::inclusion_proof(&mut ledger, i, n).unwrap();
        writer
            .add_entry(&ledger.entries[i as usize], &proof)
            .unwrap();
    }
    writer
        .add_file("recordings/01SESSION.cast", |w| {
            w.write_all(b"{\"version\":2}\n")
        })
        .unwrap();
    let mut filters = BTreeMap::new();
    if sparse {
        filters.insert("principal".to_owned(), "ci-deployer".to_owned());
    }
    let out = std::fs::File::create(path).unwrap();
    let scope = Scope {
        filters,
        contiguous: !sparse,
        created_at: "2026-11-22T16:00:00Z".into(),
        ..Scope::default()
    };
    writer.finish(&checkpoint, scope, out).unwrap();
}

#[test]
fn a_bundle_verifies_with_its_key_and_says_when_the_key_came_from_inside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(&path, 37, 5..30, false);
    let key = signer().verifier();
    let verified = verify(&path, Some(&key), |_| {}).unwrap();
    assert_eq!(verified.manifest.counts.events, 25);
    assert_eq!(verified.manifest.range.first_index, Some(5));
    assert_eq!(verified.manifest.range.last_index, Some(29));
    assert_eq!(verified.checkpoint.size, 37);
    assert!(!verified.key_from_bundle);
    let inside = verify(&path, None, |_| {}).unwrap();
    assert!(inside.key_from_bundle);
    // Another key: the checkpoint is not its.
    let other = NoteSigner::from_seed("gatehouse.example.com/ledger", [4u8; 32]).unwrap();
    let failures = verify(&path, Some(&other.verifier()), |_| {}).unwrap_err();
    assert!(failures[0].contains("no signature by key"), "{failures:?}");
}

#[test]
fn a_filtered_bundle_is_not_held_to_contiguity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(&path, 20, 0..20, true);
    let verified = verify(&path, Some(&signer().verifier()), |_| {}).unwrap();
    assert_eq!(verified.manifest.counts.events, 10);
    assert!(!verified.manifest.contiguous);
}

#[test]
fn every_single_flipped_byte_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(&path, 9, 0..9, false);
    let good = std::fs::read(&path).unwrap();
    let key = signer().verifier();
    assert!(verify(&path, Some(&key), |_| {}).is_ok());
    let flipped = dir.path().join("flipped.tar.gz");
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = good.clone();
            bytes[i] ^= bit;
            std::fs::write(&flipped, &bytes).unwrap();
            assert!(
                verify(&flipped, Some(&key), |_| {}).is_err(),
                "flipping bit {bit:#x} of byte {i} of {} went unnoticed",
                good.len()
            );
        }
    }
}
