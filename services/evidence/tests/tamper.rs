//! Every way of damaging the chain is caught at the first index it affects.
//!
//! The ledger is built through the real store, then edited behind its back through RocksDB, as
//! someone with access to the files would.

use std::path::Path;

use gatehouse_evidence::entry::{Entry, entry_hash};
use gatehouse_evidence::store::{CF_ENTRIES, CF_META, Gap, NewEntry, ledger_dir};
use gatehouse_evidence::verify::{Problem, verify};
use gatehouse_evidence::{Ledger, LedgerError};

const ENTRIES: u64 = 12;

fn build(dir: &Path) -> Ledger {
    let mut ledger = Ledger::open(dir).unwrap();
    // Two batches, as group commit would write them.
    for batch in [1..=5u64, 6..=ENTRIES] {
        let entries: Vec<NewEntry> = batch
            .map(|seq| NewEntry {
                stream_sequence: seq * 3,
                received_at: 1_795_000_000_000_000_000 + seq as i64,
                event: format!(r#"{{"id":"event-{seq}","data":{{"n":{seq}}}}}"#).into_bytes(),
            })
            .collect();
        ledger.append(&entries, &[]).unwrap();
    }
    ledger
}

/// Builds a fresh ledger, closes it, lets `tamper` edit the raw database, and verifies.
fn tampered(tamper: impl FnOnce(&rocksdb::DB)) -> Result<(), gatehouse_evidence::verify::Broken> {
    let dir = tempfile::tempdir().unwrap();
    drop(build(dir.path()));
    {
        let path = ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        tamper(&db);
    }
    let ledger = Ledger::open_read_only(dir.path()).unwrap();
    verify(&ledger).unwrap().map(|_| ())
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn get(db: &rocksdb::DB, index: u64) -> Vec<u8> {
    let cf = db.cf_handle(CF_ENTRIES).unwrap();
    db.get_cf(&cf, key(index)).unwrap().unwrap()
}

fn put(db: &rocksdb::DB, index: u64, value: &[u8]) {
    let cf = db.cf_handle(CF_ENTRIES).unwrap();
    db.put_cf(&cf, key(index), value).unwrap();
}

fn delete(db: &rocksdb::DB, index: u64) {
    let cf = db.cf_handle(CF_ENTRIES).unwrap();
    db.delete_cf(&cf, key(index)).unwrap();
}

/// Re-encodes a stored value with a new event and a hash that matches it.
fn rehashed(value: &[u8], event: &[u8]) -> Vec<u8> {
    let mut entry = Entry::decode(&value[32..]).unwrap();
    entry.event = event.to_vec();
    let encoding = entry.encode().unwrap();
    let mut out = entry_hash(&encoding).to_vec();
    out.extend_from_slice(&encoding);
    out
}

#[test]
fn an_untouched_ledger_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = build(dir.path());
    let head = ledger.head();
    let verified = verify(&ledger).unwrap().unwrap();
    assert_eq!(verified.entries, ENTRIES);
    assert_eq!(verified.head_hash, head.hash);
    assert_eq!(verified.last_sequence, ENTRIES * 3);
    assert!(verified.gaps.is_empty());
}

#[test]
fn a_changed_event_byte_is_named() {
    let broken = tampered(|db| {
        let mut value = get(db, 7);
        let last = value.len() - 3;
        value[last] ^= 0x01;
        put(db, 7, &value);
    })
    .unwrap_err();
    assert_eq!(broken.index, 7);
    assert!(
        matches!(broken.problem, Problem::HashMismatch { .. }),
        "{broken}"
    );
}

#[test]
fn a_changed_stream_sequence_is_named() {
    let broken = tampered(|db| {
        let mut value = get(db, 2);
        // stream_sequence sits after the 32-byte stored hash, the 26-byte tag and the index.
        value[32 + 26 + 8 + 7] ^= 0x01;
        put(db, 2, &value);
    })
    .unwrap_err();
    assert_eq!(broken.index, 2);
    assert!(matches!(broken.problem, Problem::HashMismatch { .. }));
}

/// Forgets the Merkle tree, as a ledger written before it: only the chain is left to check.
fn without_tree(db: &rocksdb::DB) {
    let meta = db.cf_handle(CF_META).unwrap();
    db.delete_cf(&meta, b"tree_size").unwrap();
}

#[test]
fn a_changed_and_rehashed_entry_no_longer_matches_its_leaf() {
    let broken = tampered(|db| {
        let forged = rehashed(&get(db, 4), br#"{"id":"forged"}"#);
        put(db, 4, &forged);
    })
    .unwrap_err();
    assert_eq!(broken.index, 4);
    assert_eq!(broken.problem, Problem::TreeNode { level: 0, node: 4 });
}

#[test]
fn without_the_tree_a_changed_and_rehashed_entry_breaks_the_next_link() {
    let broken = tampered(|db| {
        without_tree(db);
        let forged = rehashed(&get(db, 4), br#"{"id":"forged"}"#);
        put(db, 4, &forged);
    })
    .unwrap_err();
    assert_eq!(broken.index, 5);
    assert!(
        matches!(broken.problem, Problem::BrokenLink { .. }),
        "{broken}"
    );
    assert!(
        broken.to_string().contains("does not link to entry 4"),
        "{broken}"
    );
}

#[test]
fn a_rehashed_last_entry_no_longer_matches_its_leaf() {
    let broken = tampered(|db| {
        let forged = rehashed(&get(db, ENTRIES - 1), br#"{"id":"forged"}"#);
        put(db, ENTRIES - 1, &forged);
    })
    .unwrap_err();
    assert_eq!(broken.index, ENTRIES - 1);
    assert!(
        matches!(broken.problem, Problem::TreeNode { level: 0, .. }),
        "{broken}"
    );
}

#[test]
fn without_the_tree_a_rehashed_last_entry_no_longer_matches_the_head() {
    let broken = tampered(|db| {
        without_tree(db);
        let forged = rehashed(&get(db, ENTRIES - 1), br#"{"id":"forged"}"#);
        put(db, ENTRIES - 1, &forged);
    })
    .unwrap_err();
    assert_eq!(broken.index, ENTRIES);
    assert!(
        matches!(broken.problem, Problem::HeadMismatch { .. }),
        "{broken}"
    );
}

#[test]
fn a_removed_entry_is_named() {
    let broken = tampered(|db| delete(db, 3)).unwrap_err();
    assert_eq!(broken.index, 3);
    assert_eq!(broken.problem, Problem::Missing);
}

#[test]
fn a_removed_last_entry_is_named() {
    let broken = tampered(|db| delete(db, ENTRIES - 1)).unwrap_err();
    assert_eq!(broken.index, ENTRIES - 1);
    assert_eq!(broken.problem, Problem::Missing);
}

#[test]
fn reordered_entries_are_named() {
    let broken = tampered(|db| {
        let (a, b) = (get(db, 2), get(db, 9));
        put(db, 2, &b);
        put(db, 9, &a);
    })
    .unwrap_err();
    assert_eq!(broken.index, 2);
    assert_eq!(broken.problem, Problem::WrongIndex { claimed: 9 });
}

#[test]
fn an_entry_inserted_at_the_end_is_named() {
    let broken = tampered(|db| {
        let last = get(db, ENTRIES - 1);
        put(db, ENTRIES, &last);
    })
    .unwrap_err();
    assert_eq!(broken.index, ENTRIES);
    assert!(
        matches!(broken.problem, Problem::BeyondHead { .. }),
        "{broken}"
    );
}

#[test]
fn an_entry_inserted_in_the_middle_is_named() {
    // Shift entries 6.. up by one and put a copy of entry 5 at 6.
    let broken = tampered(|db| {
        for index in (6..ENTRIES).rev() {
            let value = get(db, index);
            put(db, index + 1, &value);
        }
        let copy = get(db, 5);
        put(db, 6, &copy);
    })
    .unwrap_err();
    assert_eq!(broken.index, 6);
    assert_eq!(broken.problem, Problem::WrongIndex { claimed: 5 });
}

#[test]
fn a_truncated_value_is_named() {
    let broken = tampered(|db| put(db, 1, b"short")).unwrap_err();
    assert_eq!(broken.index, 1);
    assert!(
        matches!(broken.problem, Problem::Undecodable(_)),
        "{broken}"
    );
}

#[test]
fn a_foreign_key_is_named() {
    let broken = tampered(|db| {
        let cf = db.cf_handle(CF_ENTRIES).unwrap();
        db.put_cf(&cf, b"\x00\x00\x00\x00\x00\x00\x00\x05x", b"junk")
            .unwrap();
    })
    .unwrap_err();
    assert!(matches!(broken.problem, Problem::ForeignKey), "{broken}");
}

#[test]
fn appends_are_refused_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = build(dir.path());
    let stale = NewEntry {
        stream_sequence: 5,
        received_at: 0,
        event: b"{}".to_vec(),
    };
    assert!(matches!(
        ledger.append(&[stale], &[]),
        Err(LedgerError::OutOfOrder { sequence: 5, .. })
    ));
    assert_eq!(ledger.head().next_index, ENTRIES);
}

#[test]
fn gaps_are_recorded_with_the_entries_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = build(dir.path());
    let gap = Gap {
        first: ENTRIES * 3 + 1,
        last: ENTRIES * 3 + 4,
        detected_at: 42,
    };
    let after = NewEntry {
        stream_sequence: ENTRIES * 3 + 5,
        received_at: 0,
        event: b"{}".to_vec(),
    };
    let head = ledger.append(&[after], &[gap]).unwrap();
    assert_eq!(head.last_sequence, ENTRIES * 3 + 5);
    drop(ledger);
    let ledger = Ledger::open_read_only(dir.path()).unwrap();
    let verified = verify(&ledger).unwrap().unwrap();
    assert_eq!(verified.gaps, vec![gap]);
    assert_eq!(verified.entries, ENTRIES + 1);
}

#[test]
fn the_head_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let head = build(dir.path()).head();
    let reopened = Ledger::open(dir.path()).unwrap();
    assert_eq!(reopened.head(), head);
    let cf_names =
        rocksdb::DB::list_cf(&rocksdb::Options::default(), ledger_dir(dir.path())).unwrap();
    assert!(cf_names.iter().any(|n| n == CF_ENTRIES) && cf_names.iter().any(|n| n == CF_META));
}

#[test]
fn a_directory_that_is_not_a_ledger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Ledger::open_read_only(dir.path()),
        Err(LedgerError::Missing(_))
    ));
}

/// Every column family is written in a table format old RocksDB tools read (Debian's `ldb` is
/// 7.8), so auditors are not bound to this build to open the ledger.
#[test]
fn every_column_family_uses_the_portable_table_format() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = build(dir.path());
    ledger.flush().unwrap();
    drop(ledger);
    let options = std::fs::read_dir(ledger_dir(dir.path()))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
        .max_by_key(|e| e.file_name())
        .expect("an OPTIONS file");
    let text = std::fs::read_to_string(options.path()).unwrap();
    let versions: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("format_version="))
        .collect();
    assert_eq!(
        versions,
        ["5", "5", "5", "5", "5"],
        "default, entries, meta, tree, index"
    );
}
