//! A checkpoint one replica signed, recorded by another: only over a tree with the same root
//! at its size. The standby that records it then signs only checkpoints that extend it.

use gatehouse_evidence::store::{Issued, NewEntry, Recorded};
use gatehouse_evidence::{Ledger, LedgerError};
use gatehouse_proof::checkpoint::NoteSigner;

fn batch(range: std::ops::Range<u64>, tag: &str) -> Vec<NewEntry> {
    range
        .map(|n| NewEntry {
            stream_sequence: n,
            received_at: 1_900_000_000_000_000_000 + n as i64,
            event: format!(r#"{{"id":"{n}{tag}"}}"#).into_bytes(),
        })
        .collect()
}

#[test]
fn a_standby_records_the_active_replicas_checkpoint_only_over_the_same_tree() {
    let signer = NoteSigner::from_seed("gatehouse.test/ledger", [3; 32]).unwrap();
    let key = signer.verifier().to_vkey();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut active = Ledger::open(dirs[0].path()).unwrap();
    let mut standby = Ledger::open(dirs[1].path()).unwrap();
    let mut diverged = Ledger::open(dirs[2].path()).unwrap();
    active.append(&batch(1..40, ""), &[]).unwrap();
    let Issued::Signed { size, note } = active
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap()
    else {
        panic!("nothing signed");
    };
    assert_eq!(size, 39);

    // Behind: nothing recorded until the standby's tree reaches the size.
    standby.append(&batch(1..20, ""), &[]).unwrap();
    assert_eq!(
        standby.record_checkpoint(&note, &key).unwrap(),
        Recorded::Ahead {
            size: 39,
            tree_size: 19
        }
    );
    assert!(standby.checkpoints().unwrap().is_empty());
    standby.append(&batch(20..60, ""), &[]).unwrap();
    assert_eq!(
        standby.record_checkpoint(&note, &key).unwrap(),
        Recorded::New { size: 39 }
    );
    assert_eq!(
        standby.record_checkpoint(&note, &key).unwrap(),
        Recorded::Known { size: 39 }
    );
    assert_eq!(standby.checkpoint_key(39).unwrap(), Some(key.clone()));
    // Taking over, it signs a checkpoint that extends the recorded one.
    assert!(matches!(
        standby
            .issue_checkpoint(&signer, "gatehouse.test/ledger")
            .unwrap(),
        Issued::Signed { size: 59, .. }
    ));

    // A ledger whose entries differ is refused, and records nothing.
    diverged.append(&batch(1..40, "x"), &[]).unwrap();
    let refused = diverged.record_checkpoint(&note, &key).unwrap_err();
    assert!(
        matches!(refused, LedgerError::Inconsistent { size: 39, .. }),
        "{refused}"
    );
    assert!(diverged.checkpoints().unwrap().is_empty());
}
