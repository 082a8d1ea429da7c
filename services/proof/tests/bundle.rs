//! Bundles written and verified with nothing but this crate: a good one verifies, every single
//! byte of it, flipped, makes verification fail, and a v1 bundle verifies with a warning.

mod common;

use common::*;
use gatehouse_proof::bundle::{FORMAT_V1, V1_WARNING, verify};

#[test]
fn a_bundle_verifies_with_its_key_and_says_when_the_key_came_from_inside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(&path, &Spec::new(37, 0..30));
    let key = signer().verifier();
    let verified = verify(&path, Some(&key), |_| {}).unwrap();
    assert_eq!(verified.manifest.counts.events, 30);
    assert_eq!(verified.manifest.counts.sessions, 1);
    assert_eq!(verified.manifest.range.first_index, Some(0));
    assert_eq!(verified.manifest.range.last_index, Some(29));
    assert_eq!(verified.checkpoint.size, 37);
    assert!(verified.warnings.is_empty());
    assert!(!verified.key_from_bundle);
    let inside = verify(&path, None, |_| {}).unwrap();
    assert!(inside.key_from_bundle);
    // Another key: the bundle's key is not it.
    let failures = verify(&path, Some(&other_signer().verifier()), |_| {}).unwrap_err();
    assert!(
        failures[0].starts_with("rule 7 (checkpoint)"),
        "{failures:?}"
    );

    // The recording is made from the session's events, byte for byte.
    let members = read_members(&std::fs::read(&path).unwrap());
    let cast = members
        .iter()
        .find(|m| m.name == format!("recordings/{SESSION}.cast"))
        .unwrap();
    assert_eq!(
        String::from_utf8(cast.data.clone()).unwrap(),
        "{\"height\":24,\"title\":\"ci-deployer apps/web sh\",\"version\":2,\"width\":80}\n\
         [0.012500,\"o\",\"hello\\n\"]\n[0.040000,\"i\",\"exit\\n\"]\n"
    );
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "checkpoint",
            "keys/checkpoint.vkey",
            "manifest.json",
            "manifest.sig",
            "tombstones.jsonl",
            "tree.jsonl",
            "entries.jsonl",
            "events.jsonl",
            "recordings/01SESSION.cast",
            "INDEX.md"
        ]
    );
}

#[test]
fn a_filtered_bundle_is_not_held_to_contiguity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(
        &path,
        &Spec {
            sparse: true,
            ..Spec::new(20, 0..20)
        },
    );
    let verified = verify(&path, Some(&signer().verifier()), |_| {}).unwrap();
    assert_eq!(verified.manifest.counts.events, 10);
    assert!(!verified.manifest.contiguous);
}

/// Retention pruned some entries of the range: a contiguous bundle skips them in
/// `events.jsonl` and accounts for each with a tombstone; without the tombstone it fails.
#[test]
fn a_contiguous_bundle_accounts_for_pruned_entries_with_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(
        &path,
        &Spec {
            pruned: vec![1, 7, 8, 9],
            ..Spec::new(16, 0..12)
        },
    );
    let key = signer().verifier();
    let verified = verify(&path, Some(&key), |_| {}).unwrap();
    assert_eq!(verified.manifest.counts.events, 8);
    assert_eq!(verified.manifest.counts.tombstones, 4);
    assert!(verified.manifest.contiguous);

    let mut members = read_members(&std::fs::read(&path).unwrap());
    let tombstones =
        String::from_utf8(member(&mut members, "tombstones.jsonl").data.clone()).unwrap();
    let kept: String = tombstones
        .lines()
        .filter(|l| !l.starts_with("{\"index\":8,"))
        .map(|l| format!("{l}\n"))
        .collect();
    member(&mut members, "tombstones.jsonl").data = kept.into_bytes();
    resign(&mut members, &signer(), |m| m.counts.tombstones = 3);
    let short = dir.path().join("short.tar.gz");
    std::fs::write(&short, pack(&members)).unwrap();
    let failures = verify(&short, Some(&key), |_| {}).unwrap_err();
    // The tree no longer rebuilds (leaf 8 is gone), and the promise of every entry is broken.
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().all(|f| f.starts_with("rule 8 (events)")));
    assert!(failures[0].contains("tree.jsonl"), "{failures:?}");
    assert!(failures[1].contains("entries 7 to 9"), "{failures:?}");
}

#[test]
fn every_single_flipped_byte_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    write_bundle(&path, &Spec::new(9, 0..9));
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

/// Bundles the v1 exporter wrote from a real ledger (the fuzz fixtures) still verify, warning.
#[test]
fn real_v1_bundles_still_verify_with_the_warning() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fuzz/fixtures");
    let vkey = std::fs::read_to_string(format!("{fixtures}/checkpoint.vkey")).unwrap();
    let key = gatehouse_proof::checkpoint::NoteVerifier::from_vkey(&vkey).unwrap();
    for name in ["all", "range", "readonly-bot"] {
        let path = std::path::PathBuf::from(format!("{fixtures}/{name}.tar.gz"));
        let verified =
            verify(&path, Some(&key), |_| {}).unwrap_or_else(|f| panic!("{name}: {f:?}"));
        assert_eq!(verified.manifest.format, FORMAT_V1);
        assert_eq!(verified.warnings, [V1_WARNING]);
    }
}
