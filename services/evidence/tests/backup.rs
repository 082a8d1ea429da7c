//! Online backups: a RocksDB checkpoint of the ledger, taken by the writer while it runs, is a
//! complete ledger that verifies and has the same head, tree and checkpoints.

use gatehouse_evidence::Ledger;
use gatehouse_evidence::store::{NewEntry, ledger_dir};
use gatehouse_evidence::verify::verify;
use gatehouse_proof::checkpoint::NoteSigner;

fn batch(range: std::ops::Range<u64>) -> Vec<NewEntry> {
    range
        .map(|n| NewEntry {
            stream_sequence: n,
            received_at: 1_900_000_000_000_000_000 + n as i64,
            event: format!(r#"{{"id":"{n}"}}"#).into_bytes(),
        })
        .collect()
}

#[test]
fn a_backup_taken_while_the_writer_runs_restores_to_a_ledger_that_verifies() {
    let live = tempfile::tempdir().unwrap();
    let mut writer = Ledger::open(live.path()).unwrap();
    writer.append(&batch(1..50), &[]).unwrap();
    let signer = NoteSigner::from_seed("gatehouse.test/ledger", [2; 32]).unwrap();
    writer
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap();

    // Online: by the writer, which keeps appending afterwards.
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("2026-11-22");
    writer.backup_to(&backup).unwrap();
    assert!(
        writer.backup_to(&backup).is_err(),
        "never over an existing directory"
    );
    assert!(
        Ledger::open_read_only(live.path())
            .unwrap()
            .backup_to(&backups.path().join("x"))
            .is_err(),
        "a read-only handle would miss the write-ahead log"
    );
    writer.append(&batch(50..60), &[]).unwrap();

    // Restore: the backup becomes <data_dir>/ledger.
    let restored = tempfile::tempdir().unwrap();
    std::fs::rename(&backup, ledger_dir(restored.path())).unwrap();
    let ledger = Ledger::open_read_only(restored.path()).unwrap();
    let verified = verify(&ledger).unwrap().unwrap();
    assert_eq!(verified.entries, 49);
    assert_eq!(
        ledger.latest_checkpoint().unwrap().map(|(size, _)| size),
        Some(49)
    );
    assert_eq!(ledger.root(49).unwrap(), writer.root(49).unwrap());
}
