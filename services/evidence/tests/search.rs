//! Searching the ledger through its indexes, written with every group commit and built once for
//! a ledger written before them.

use gatehouse_evidence::Ledger;
use gatehouse_evidence::index::Field;
use gatehouse_evidence::store::{CF_INDEX, NewEntry, Query, ledger_dir};

fn received(n: u64, principal: &str, namespace: &str, verb: &str, action: &str) -> NewEntry {
    NewEntry {
        stream_sequence: n,
        received_at: 1_000 * n as i64,
        event: format!(
            r#"{{"type":"dev.gatehouse.request.received.v1","subject":"req-{n}","time":"2026-11-22T10:00:00Z","data":{{"identity":{{"principal":"{principal}","owner":"alice@example.com"}},"request":{{"verb":"{verb}","api_group":"apps","resource":"deployments","subresource":"","namespace":"{namespace}"}},"decision":{{"action":"{action}"}}}}}}"#
        )
        .into_bytes(),
    }
}

fn completed(n: u64, of: u64) -> NewEntry {
    NewEntry {
        stream_sequence: n,
        received_at: 1_000 * n as i64,
        event: format!(r#"{{"type":"dev.gatehouse.response.completed.v1","subject":"req-{of}","data":{{"status":200}}}}"#)
            .into_bytes(),
    }
}

fn ledger(dir: &std::path::Path) -> Ledger {
    let mut ledger = Ledger::open(dir).unwrap();
    ledger
        .append(
            &[
                received(1, "ci-deployer", "apps", "get", "allow"),
                completed(2, 1),
                received(3, "readonly-bot", "prod", "list", "allow"),
                received(4, "ci-deployer", "prod", "delete", "approve"),
                received(5, "ci-deployer", "apps", "patch", "allow"),
                completed(6, 5),
            ],
            &[],
        )
        .unwrap();
    ledger
}

fn indexes(entries: Vec<gatehouse_evidence::entry::Entry>) -> Vec<u64> {
    entries.into_iter().map(|e| e.index).collect()
}

fn q(fields: &[(Field, &str)]) -> Query {
    Query {
        fields: fields.iter().map(|(f, v)| (*f, v.to_string())).collect(),
        limit: 100,
        ..Query::default()
    }
}

#[test]
fn searches_combine_fields_time_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger(dir.path());
    assert_eq!(
        indexes(
            ledger
                .search(&q(&[(Field::Principal, "ci-deployer")]))
                .unwrap()
        ),
        [0, 3, 4]
    );
    assert_eq!(
        indexes(
            ledger
                .search(&q(&[
                    (Field::Principal, "ci-deployer"),
                    (Field::Namespace, "prod")
                ]))
                .unwrap()
        ),
        [3]
    );
    assert_eq!(
        indexes(ledger.search(&q(&[(Field::Decision, "approve")])).unwrap()),
        [3]
    );
    assert_eq!(
        indexes(ledger.search(&q(&[(Field::Request, "req-5")])).unwrap()),
        [4, 5]
    );
    assert_eq!(
        indexes(
            ledger
                .search(&q(&[(Field::Resource, "apps/deployments")]))
                .unwrap()
        ),
        [0, 2, 3, 4]
    );
    assert_eq!(
        indexes(
            ledger
                .search(&q(&[
                    (Field::Owner, "alice@example.com"),
                    (Field::Verb, "get")
                ]))
                .unwrap()
        ),
        [0]
    );
    assert!(
        ledger
            .search(&q(&[(Field::Principal, "nobody")]))
            .unwrap()
            .is_empty()
    );
    // Time: received_at in [2000, 5000).
    let timed = Query {
        from: Some(2_000),
        to: Some(5_000),
        limit: 100,
        ..Query::default()
    };
    assert_eq!(indexes(ledger.search(&timed).unwrap()), [1, 2, 3]);
    let timed = Query {
        from: Some(2_000),
        to: Some(5_000),
        ..q(&[(Field::Principal, "ci-deployer")])
    };
    assert_eq!(indexes(ledger.search(&timed).unwrap()), [3]);
    // Paging.
    let first = Query {
        limit: 2,
        ..q(&[(Field::Principal, "ci-deployer")])
    };
    assert_eq!(indexes(ledger.search(&first).unwrap()), [0, 3]);
    let next = Query {
        after: Some(3),
        ..first
    };
    assert_eq!(indexes(ledger.search(&next).unwrap()), [4]);
}

#[test]
fn a_ledger_written_before_the_indexes_gets_them_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    drop(ledger(dir.path()));
    {
        let path = ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.delete_cf(&meta, b"index_size").unwrap();
        db.drop_cf(CF_INDEX).unwrap();
    }
    let read_only = Ledger::open_read_only(dir.path()).unwrap();
    assert!(
        read_only
            .search(&q(&[(Field::Principal, "ci-deployer")]))
            .is_err()
    );
    drop(read_only);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(
        indexes(
            ledger
                .search(&q(&[(Field::Principal, "ci-deployer")]))
                .unwrap()
        ),
        [0, 3, 4]
    );
}
