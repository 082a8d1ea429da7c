//! The ledger's side of write-once archives, without a server: pruning waits for the archive,
//! a sealed segment ends at a checkpoint and carries its note as stored, and the stored values
//! of a ledger (tombstones included) rebuild one with the same roots, refusing what does not
//! link.

use gatehouse_evidence::Ledger;
use gatehouse_evidence::archive::{seal, seal_next, seal_next_through};
use gatehouse_evidence::store::NewEntry;
use gatehouse_evidence::verify::verify;
use gatehouse_proof::checkpoint::NoteSigner;

const DAY: i64 = 86_400 * 1_000_000_000;
/// "Now" for these tests: 2030-01-01.
const NOW: i64 = 1_893_456_000 * 1_000_000_000;

fn entry(n: u64, at: i64) -> NewEntry {
    NewEntry {
        stream_sequence: n,
        received_at: at,
        event: format!(r#"{{"type":"dev.gatehouse.test.v1","subject":"req-{n}"}}"#).into_bytes(),
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(NOW)).unwrap()
}

/// Ten entries past retention, checkpoints at 4 and 10.
fn ledger(dir: &std::path::Path) -> (Ledger, NoteSigner) {
    let mut ledger = Ledger::open(dir).unwrap();
    let signer = NoteSigner::from_seed("gatehouse.test/ledger", [7; 32]).unwrap();
    let old = NOW - 2_300 * DAY;
    let first: Vec<_> = (1..=4).map(|n| entry(n, old + n as i64)).collect();
    ledger.append(&first, &[]).unwrap();
    ledger
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap();
    let rest: Vec<_> = (5..=10).map(|n| entry(n, old + n as i64)).collect();
    ledger.append(&rest, &[]).unwrap();
    ledger
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap();
    (ledger, signer)
}

#[test]
fn pruning_never_passes_the_archived_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ledger, _) = ledger(dir.path());
    ledger.set_archived_through(0).unwrap();
    assert_eq!(ledger.prune(NOW, 2_192).unwrap().pruned, 0);
    ledger.set_archived_through(4).unwrap();
    // The mark never moves back.
    ledger.set_archived_through(2).unwrap();
    assert_eq!(ledger.archived_through().unwrap(), Some(4));
    let pruned = ledger.prune(NOW, 2_192).unwrap();
    assert_eq!(
        (pruned.pruned, pruned.first, pruned.last),
        (4, Some(0), Some(3))
    );
    assert!(
        ledger
            .entries(4)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .tombstone()
            .is_none()
    );
    ledger.set_archived_through(10).unwrap();
    assert_eq!(ledger.prune(NOW, 2_192).unwrap().pruned, 6);
}

#[test]
fn segments_end_at_checkpoints_and_restore_to_the_same_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ledger, signer) = ledger(dir.path());
    // At most 6 entries a segment: 0..4 (the checkpoint at 10 is beyond 6), then 4..10.
    let first = seal_next(&ledger, 0, 6, 2_192, now()).unwrap().unwrap();
    assert_eq!((first.start, first.end), (0, 4));
    let second = seal_next(&ledger, 4, 6, 2_192, now()).unwrap().unwrap();
    assert_eq!((second.start, second.end), (4, 10));
    assert!(seal_next(&ledger, 10, 6, 2_192, now()).unwrap().is_none());
    // One checkpoint over more than the maximum makes one larger segment.
    assert_eq!(
        seal_next(&ledger, 4, 2, 2_192, now()).unwrap().unwrap().end,
        10
    );
    // Sealing waits for the witnesses: no segment ends past the last checkpoint shown to them.
    let through = |from, through| {
        seal_next_through(&ledger, from, 6, through, 2_192, now())
            .unwrap()
            .map(|s| s.end)
    };
    assert_eq!(through(0, 3), None);
    assert_eq!(through(0, 4), Some(4));
    assert_eq!(through(4, 9), None);
    assert_eq!(through(4, 10), Some(10));
    let (_, note) = ledger.checkpoints().unwrap().pop().unwrap();
    let archived_note = &second
        .objects
        .iter()
        .find(|(n, _)| n.starts_with("checkpoint."))
        .unwrap()
        .1;
    assert_eq!(archived_note, note.as_bytes());
    assert_eq!(second.manifest.root, hex::encode(ledger.root(10).unwrap()));
    // Retained six years from the newest entry, but a lock lies in the future at least.
    assert_eq!(second.retain_until, now() + time::Duration::days(1));

    // Pruned entries are archived as their tombstones and restore all the same.
    ledger.set_archived_through(4).unwrap();
    assert_eq!(ledger.prune(NOW, 2_192).unwrap().pruned, 4);
    let first = seal(&ledger, 0, 4, 2_192, now()).unwrap();
    let stored: Vec<(u64, Vec<u8>)> = ledger
        .entries(0)
        .unwrap()
        .map(|s| {
            let s = s.unwrap();
            let mut v = s.stored_hash.to_vec();
            v.extend_from_slice(&s.encoding);
            (s.key.unwrap(), v)
        })
        .collect();
    let checkpoints: Vec<(u64, String, String)> = ledger
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|(size, note)| (size, note, signer.verifier().to_vkey()))
        .collect();
    assert_eq!(first.manifest.checkpoints.len(), 1);

    let other = tempfile::tempdir().unwrap();
    let mut restored = Ledger::open(other.path()).unwrap();
    // Out of order, or not linking, is refused before anything is written.
    let refused = restored
        .append_restored(&stored[1..2], &[], &[])
        .unwrap_err();
    assert!(
        refused.to_string().contains("expected index 0"),
        "{refused}"
    );
    let mut broken = stored[..5].to_vec();
    broken[4].1[40] ^= 1;
    assert!(restored.append_restored(&broken, &[], &[]).is_err());
    assert_eq!(restored.head().next_index, 0);

    restored
        .append_restored(&stored[..4], &[], &checkpoints[..1])
        .unwrap();
    restored
        .append_restored(&stored[4..], &[], &checkpoints[1..])
        .unwrap();
    let verified = verify(&restored).unwrap().unwrap();
    assert_eq!(verified.entries, 10);
    assert_eq!(verified.pruned, 4);
    assert_eq!(verified.merkle_root, Some(ledger.root(10).unwrap()));
    assert_eq!(restored.root(4).unwrap(), ledger.root(4).unwrap());
    assert_eq!(
        restored.checkpoints().unwrap(),
        ledger.checkpoints().unwrap()
    );
    assert_eq!(restored.archived_through().unwrap(), Some(10));
}

#[test]
fn a_segment_carries_the_witnessed_checkpoints_of_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ledger, signer) = ledger(dir.path());
    // The witnessed checkpoint of size 10 (the same leaves in an RFC 6962 tree), as the
    // evidence service stores it once witnesses were shown it.
    let (_, note) = ledger.checkpoints().unwrap().pop().unwrap();
    let checkpoint = signer.verifier().open(&note).unwrap();
    let mut peaks = gatehouse_proof::rfc6962::Peaks::default();
    for stored in ledger.entries(0).unwrap() {
        let stored = stored.unwrap();
        let leaf = gatehouse_proof::merkle::leaf_hash(&stored.encoding);
        peaks.push(gatehouse_proof::rfc6962::leaf_hash(&leaf));
    }
    let body = gatehouse_proof::cosignature::witnessed_body(&checkpoint, &peaks.root());
    let origin = gatehouse_proof::cosignature::witnessed_origin(&checkpoint.origin);
    let witnessed = signer.with_name(&origin).unwrap().sign_note(&body);
    ledger
        .put_witness_records(&[(
            format!("checkpoint/{:020}", 10),
            witnessed.clone().into_bytes(),
        )])
        .unwrap();

    // The segment ending at 4 was never witnessed: its manifest has no `witnessed`.
    let first = seal(&ledger, 0, 4, 2_192, now()).unwrap();
    assert!(first.manifest.witnessed.is_empty());
    assert!(
        !first
            .objects
            .iter()
            .any(|(n, _)| n.starts_with("witnessed."))
    );
    let manifest = String::from_utf8(first.objects.last().unwrap().1.clone()).unwrap();
    assert!(!manifest.contains("witnessed"), "{manifest}");

    // The one ending at 10 carries it byte for byte, with its digest in the manifest.
    let second = seal(&ledger, 4, 10, 2_192, now()).unwrap();
    let name = format!("witnessed.{:020}", 10);
    let object = &second.objects.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(object, witnessed.as_bytes());
    assert_eq!(second.manifest.witnessed.len(), 1);
    let listed = &second.manifest.witnessed[0];
    assert_eq!(
        (listed.size, listed.note.name.as_str()),
        (10, name.as_str())
    );
    assert_eq!(listed.note.blake3, blake3::hash(object).to_hex().as_str());
    // The manifest is still written last.
    assert_eq!(second.objects.last().unwrap().0, "manifest.json");
    // And what restore checks of it holds: the checkpoint key signed it for this tree.
    gatehouse_proof::cosignature::check_witnessed(
        &checkpoint,
        &signer.verifier(),
        std::str::from_utf8(object).unwrap(),
        &[],
        0,
    )
    .unwrap();
}
