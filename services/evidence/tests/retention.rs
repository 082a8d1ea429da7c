//! Retention: payloads past six years are pruned into tombstones, legal holds keep what they
//! match, and every hash, proof and checkpoint still verifies afterwards.

use gatehouse_evidence::Ledger;
use gatehouse_evidence::index::Field;
use gatehouse_evidence::merkle::verify_inclusion;
use gatehouse_evidence::retention::{HoldQuery, LegalHold};
use gatehouse_evidence::store::{NewEntry, Query};
use gatehouse_evidence::verify::verify;
use gatehouse_proof::checkpoint::NoteSigner;

const DAY: i64 = 86_400 * 1_000_000_000;
/// "Now" for these tests: 2030-01-01.
const NOW: i64 = 1_893_456_000 * 1_000_000_000;

fn received(n: u64, at: i64, principal: &str) -> NewEntry {
    NewEntry {
        stream_sequence: n,
        received_at: at,
        event: format!(
            r#"{{"type":"dev.gatehouse.request.received.v1","subject":"req-{n}","data":{{"identity":{{"principal":"{principal}"}},"request":{{"verb":"get","api_group":"","resource":"pods","subresource":"","namespace":"apps"}},"decision":{{"action":"allow"}}}}}}"#
        )
        .into_bytes(),
    }
}

fn q(principal: &str) -> Query {
    Query {
        fields: vec![(Field::Principal, principal.to_owned())],
        limit: 100,
        ..Query::default()
    }
}

#[test]
fn prune_keeps_hashes_and_holds_and_everything_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path()).unwrap();
    let old = NOW - 2_200 * DAY;
    let recent = NOW - 10 * DAY;
    ledger
        .append(
            &[
                received(1, old, "ci-deployer"),
                received(2, old + 1, "readonly-bot"),
                received(3, old + 2, "ci-deployer"),
                received(4, recent, "readonly-bot"),
            ],
            &[],
        )
        .unwrap();
    let signer = NoteSigner::from_seed("gatehouse.test/ledger", [9; 32]).unwrap();
    ledger
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap();
    let root = ledger.root(4).unwrap();
    let leaf_1 = ledger
        .format()
        .hashes(&ledger.entries(1).unwrap().next().unwrap().unwrap().encoding)
        .1;

    ledger
        .place_legal_hold(&LegalHold {
            id: "01HOLD".into(),
            reason: "matter 2029-17".into(),
            placed_by: "counsel@example.com".into(),
            placed_at: "2029-12-01T00:00:00Z".into(),
            query: HoldQuery {
                principal: Some("ci-deployer".into()),
                ..HoldQuery::default()
            },
        })
        .unwrap();
    let pruned = ledger.prune(NOW, 2_192).unwrap();
    assert_eq!((pruned.pruned, pruned.kept_by_holds), (1, 2), "{pruned:?}");
    assert_eq!((pruned.first, pruned.last), (Some(1), Some(1)));

    // The pruned entry is a tombstone; held and recent entries are whole.
    assert!(
        ledger
            .entries(1)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .tombstone()
            .is_some()
    );
    assert!(ledger.entry(0).unwrap().is_some());
    assert!(ledger.entry(3).unwrap().is_some());
    assert_eq!(
        ledger
            .search(&q("readonly-bot"))
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        [3],
        "a pruned entry is no longer found"
    );
    // Every hash still holds.
    assert_eq!(ledger.root(4).unwrap(), root);
    let proof = ledger.inclusion_proof(1, 4).unwrap();
    assert!(verify_inclusion(&leaf_1, 1, 4, &proof, &root));
    let verified = verify(&ledger).unwrap().unwrap();
    assert_eq!(verified.pruned, 1);
    assert_eq!(verified.merkle_root, Some(root));
    // The checkpoint signed before still agrees: the next one is consistent with it.
    ledger
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap();

    // Released, the hold keeps nothing; pruning again takes what it kept.
    assert!(ledger.release_legal_hold("01HOLD").unwrap());
    assert!(!ledger.release_legal_hold("01HOLD").unwrap());
    let pruned = ledger.prune(NOW, 2_192).unwrap();
    assert_eq!((pruned.pruned, pruned.kept_by_holds), (2, 0), "{pruned:?}");
    let verified = verify(&ledger).unwrap().unwrap();
    assert_eq!(verified.pruned, 3);
    assert_eq!(verified.merkle_root, Some(root));
    assert!(ledger.entry(3).unwrap().is_some(), "within retention: kept");
}

#[test]
fn a_hold_by_time_range_keeps_only_its_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path()).unwrap();
    let old = NOW - 3_000 * DAY;
    ledger
        .append(
            &[
                received(1, old, "a"),
                received(2, old + 5 * DAY, "a"),
                received(3, old + 10 * DAY, "a"),
            ],
            &[],
        )
        .unwrap();
    ledger
        .place_legal_hold(&LegalHold {
            id: "01TIME".into(),
            reason: "audit period".into(),
            placed_by: "auditor".into(),
            placed_at: "2029-12-01T00:00:00Z".into(),
            query: HoldQuery {
                from: Some(old + DAY),
                to: Some(old + 6 * DAY),
                ..HoldQuery::default()
            },
        })
        .unwrap();
    let pruned = ledger.prune(NOW, 2_192).unwrap();
    assert_eq!((pruned.pruned, pruned.kept_by_holds), (2, 1));
    assert!(ledger.entry(1).unwrap().is_some());
    assert!(verify(&ledger).unwrap().is_ok());
}

/// An event changed in place (its stored hash left as it was) and then pruned must not vanish
/// into a tombstone that verifies: the tombstone's leaf comes from the bytes, not the hash
/// stored beside them.
#[test]
fn an_entry_changed_before_pruning_still_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let old = NOW - 2_200 * DAY;
    {
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .append(&[received(1, old, "a"), received(2, old + 1, "a")], &[])
            .unwrap();
    }
    {
        let path = gatehouse_evidence::store::ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let entries = db.cf_handle(gatehouse_evidence::store::CF_ENTRIES).unwrap();
        let mut value = db.get_cf(&entries, 0u64.to_be_bytes()).unwrap().unwrap();
        let at = value.len() - 10;
        value[at] ^= 0x01;
        db.put_cf(&entries, 0u64.to_be_bytes(), value).unwrap();
    }
    let mut ledger = Ledger::open(dir.path()).unwrap();
    assert!(verify(&ledger).unwrap().is_err(), "changed in place");
    let pruned = ledger.prune(NOW, 2_192).unwrap();
    assert_eq!(pruned.pruned, 2, "{pruned:?}");
    let broken = verify(&ledger).unwrap().unwrap_err();
    assert_eq!(broken.index, 0, "{broken}");
}
