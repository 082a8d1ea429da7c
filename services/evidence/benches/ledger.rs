//! The evidence ledger's hot paths: chaining one ~1 KB `request.received` event (the canonical
//! entry encoding plus its `entry_hash`, and the Merkle leaf hash of that encoding), and
//! `Ledger::append` of batches of 1,000 such events into a RocksDB ledger in a temporary
//! directory, one synced write (fsync) per batch as the evidence service does. Run with
//! `cargo bench -p gatehouse-evidence --bench ledger`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use gatehouse_evidence::Ledger;
use gatehouse_evidence::entry::{Entry, GENESIS_HASH, entry_hash};
use gatehouse_evidence::merkle::leaf_hash;
use gatehouse_evidence::store::NewEntry;

/// Events per `append`, as the service's group commit.
const BATCH: u64 = 1_000;

/// A `request.received` event of about 1 KB, shaped as the proxy publishes it.
fn event(n: u64) -> Vec<u8> {
    format!(
        r#"{{"specversion":"1.0","id":"01JBENCH{n:018}","source":"gatehouse/proxy/bench","type":"dev.gatehouse.request.received.v1","time":"2026-11-22T10:00:00.000000Z","subject":"01JBREQ{n:019}","datacontenttype":"application/json","data":{{"request_id":"01JBREQ{n:019}","identity":{{"issuer":"https://issuer.example","subject":"ci","principal":"ci-deployer","registered":true,"owner":"alice@example.com","team":"platform","purpose":null,"groups":["deployers"],"attributes":{{}}}},"source":{{"ip":"10.0.0.1","port":40000,"forwarded_for":[]}},"user_agent":"kubectl/v1.32.0","method":"GET","path":"/api/v1/namespaces/apps/pods","query":null,"request":{{"is_resource_request":true,"path":"/api/v1/namespaces/apps/pods","verb":"list","api_prefix":"api","api_group":"","api_version":"v1","namespace":"apps","resource":"pods","subresource":"","name":""}},"decision":{{"action":"allow","rule":"deployer-apps","reason":"allowed by rule deployer-apps"}},"body":null,"record":"metadata","content":null}}}}"#
    )
    .into_bytes()
}

fn now_nanos() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_nanos()).expect("nanoseconds fit an i64 until 2262")
}

fn chain(c: &mut Criterion) {
    let mut entry = Entry {
        index: 0,
        stream_sequence: 1,
        received_at: now_nanos(),
        previous_hash: GENESIS_HASH,
        event: event(1),
    };
    let mut group = c.benchmark_group("ledger/chain");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        format!("encode+entry_hash/{}B-event", entry.event.len()),
        |b| {
            b.iter(|| {
                let encoding = black_box(&entry).encode().expect("the event fits an entry");
                let hash = entry_hash(&encoding);
                // The next entry links to this one, as in the ledger.
                entry.index += 1;
                entry.stream_sequence += 1;
                entry.previous_hash = hash;
                hash
            })
        },
    );
    let encoding = entry.encode().expect("the event fits an entry");
    group.bench_function(format!("merkle_leaf_hash/{}B-entry", encoding.len()), |b| {
        b.iter(|| leaf_hash(black_box(&encoding)))
    });
    group.finish();
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = Ledger::open(dir.path()).expect("the ledger opens");
    let received_at = now_nanos();
    let mut next_sequence = 1u64;
    let mut group = c.benchmark_group("ledger/append");
    group
        .throughput(Throughput::Elements(BATCH))
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    group.bench_function(format!("batch-of-{BATCH}/fsync"), |b| {
        b.iter_batched_ref(
            || {
                let batch: Vec<NewEntry> = (next_sequence..next_sequence + BATCH)
                    .map(|sequence| NewEntry {
                        stream_sequence: sequence,
                        received_at,
                        event: event(sequence),
                    })
                    .collect();
                next_sequence += BATCH;
                batch
            },
            |batch| ledger.append(batch, &[]).expect("the batch is appended"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let head = ledger.head();
    println!(
        "ledger: {} entries appended in all (last stream sequence {})",
        head.next_index, head.last_sequence
    );
}

criterion_group!(benches, chain, append);
criterion_main!(benches);
