//! Evidence throughput: ledger ingest (group commit, fsync per batch), bundle export, and
//! bundle verification on one core.
//!
//! `cargo bench -p gatehouse --bench evidence [-- EVENTS [BATCH]]` (default 100,000 events of
//! about 1 KB shaped like `request.received`, group commits of 1,000). Goals: ingest ≥ 50k events/s, verify ≥ 500k
//! events/s on one core.

use std::time::Instant;

use gatehouse::bundle_cmd::{BundleSpec, write_bundle};
use gatehouse_evidence::Ledger;
use gatehouse_evidence::store::NewEntry;
use gatehouse_proof::checkpoint::NoteSigner;

fn event(n: u64) -> Vec<u8> {
    format!(
        r#"{{"specversion":"1.0","id":"01JBENCH{n:018}","source":"gatehouse/proxy/bench","type":"dev.gatehouse.request.received.v1","time":"2026-11-22T10:00:00.000000Z","subject":"01JBREQ{n:019}","datacontenttype":"application/json","data":{{"request_id":"01JBREQ{n:019}","identity":{{"issuer":"https://issuer.example","subject":"ci","principal":"ci-deployer","registered":true,"owner":"alice@example.com","team":"platform","purpose":null,"groups":["deployers"],"attributes":{{}}}},"source":{{"ip":"10.0.0.1","port":40000,"forwarded_for":[]}},"user_agent":"kubectl/v1.32.0","method":"GET","path":"/api/v1/namespaces/apps/pods","query":null,"request":{{"is_resource_request":true,"path":"/api/v1/namespaces/apps/pods","verb":"list","api_prefix":"api","api_group":"","api_version":"v1","namespace":"apps","resource":"pods","subresource":"","name":""}},"decision":{{"action":"allow","rule":"deployer-apps","reason":"allowed by rule deployer-apps"}},"body":null,"record":"metadata","content":null}}}}"#
    )
    .into_bytes()
}

fn main() -> anyhow::Result<()> {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let events = numbers.next().unwrap_or(100_000);
    let batch = numbers.next().unwrap_or(1_000).max(1) as usize;
    let dir = tempfile::tempdir()?;
    let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())?;

    let mut ledger = Ledger::open(dir.path())?;
    let batches: Vec<Vec<NewEntry>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|n| NewEntry {
                    stream_sequence: n + 1,
                    received_at: now,
                    event: event(*n),
                })
                .collect()
        })
        .collect();
    let bytes: usize = batches.iter().flatten().map(|e| e.event.len()).sum();
    let started = Instant::now();
    for batch in &batches {
        ledger.append(batch, &[])?;
    }
    let ingest = started.elapsed();
    let signer = NoteSigner::from_seed("gatehouse.bench/ledger", [1; 32])?;
    ledger.issue_checkpoint(&signer, "gatehouse.bench/ledger")?;
    ledger.flush()?;
    drop(ledger);

    let bundle = dir.path().join("bundle.tar.gz");
    let started = Instant::now();
    let file = std::io::BufWriter::new(std::fs::File::create(&bundle)?);
    write_bundle(dir.path(), &BundleSpec::default(), file, true)?;
    let export = started.elapsed();
    let bundle_bytes = std::fs::metadata(&bundle)?.len();

    let key = signer.verifier();
    let started = Instant::now();
    let verified = gatehouse_proof::bundle::verify(&bundle, Some(&key), |_| {})
        .map_err(|f| anyhow::anyhow!("{f:?}"))?;
    let verify = started.elapsed();
    anyhow::ensure!(verified.manifest.counts.events == events);

    let rate = |n: f64, d: std::time::Duration| n / d.as_secs_f64();
    println!(
        "events: {events} ({:.0} bytes each on average)",
        bytes as f64 / events as f64
    );
    println!(
        "ingest (batches of {batch}, fsync each): {:.0} events/s ({:.2} s)",
        rate(events as f64, ingest),
        ingest.as_secs_f64()
    );
    println!(
        "export: {:.1} MB/s of events ({:.1} MB of events, {:.1} MB bundle, {:.2} s)",
        rate(bytes as f64 / 1e6, export),
        bytes as f64 / 1e6,
        bundle_bytes as f64 / 1e6,
        export.as_secs_f64()
    );
    println!(
        "verify (one thread): {:.0} events/s ({:.2} s)",
        rate(events as f64, verify),
        verify.as_secs_f64()
    );
    Ok(())
}
