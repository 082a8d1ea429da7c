//! Evidence throughput: ledger ingest (group commits, fsync each), bundle export, and bundle
//! verification and the ledger walk (`gatehouse ledger verify`) on one core and on every core
//! (the best of three runs each), over events of about 1 KB shaped like `request.received`.

use std::time::{Duration, Instant};

use anyhow::Result;
use gatehouse_evidence::Ledger;
use gatehouse_evidence::export::{BundleSpec, write_bundle};
use gatehouse_evidence::store::NewEntry;
use gatehouse_proof::checkpoint::NoteSigner;
use serde::Serialize;

/// What [`measure`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub events: u64,
    pub batch: usize,
    pub event_bytes: u64,
    pub ingest_events_per_s: f64,
    pub export_mb_per_s: f64,
    pub bundle_bytes: u64,
    /// Bundle verification on one thread (the issue's figure), and on every core.
    pub verify_events_per_s: f64,
    pub verify_events_per_s_all_cores: f64,
    /// `gatehouse ledger verify`'s walk on one thread, and on every core.
    pub ledger_verify_events_per_s_one_core: f64,
    pub ledger_verify_events_per_s_all_cores: f64,
    pub cores: usize,
}

fn event(n: u64) -> Vec<u8> {
    format!(
        r#"{{"specversion":"1.0","id":"01JBENCH{n:018}","source":"gatehouse/proxy/bench","type":"dev.gatehouse.request.received.v1","time":"2026-11-22T10:00:00.000000Z","subject":"01JBREQ{n:019}","datacontenttype":"application/json","data":{{"request_id":"01JBREQ{n:019}","identity":{{"issuer":"https://issuer.example","subject":"ci","principal":"ci-deployer","registered":true,"owner":"alice@example.com","team":"platform","purpose":null,"groups":["deployers"],"attributes":{{}}}},"source":{{"ip":"10.0.0.1","port":40000,"forwarded_for":[]}},"user_agent":"kubectl/v1.32.0","method":"GET","path":"/api/v1/namespaces/apps/pods","query":null,"request":{{"is_resource_request":true,"path":"/api/v1/namespaces/apps/pods","verb":"list","api_prefix":"api","api_group":"","api_version":"v1","namespace":"apps","resource":"pods","subresource":"","name":""}},"decision":{{"action":"allow","rule":"deployer-apps","reason":"allowed by rule deployer-apps"}},"body":null,"record":"metadata","content":null}}}}"#
    )
    .into_bytes()
}

/// Each verification is timed this many times and the fastest kept: on a shared VM the
/// slower runs measure the neighbours, not the code.
const VERIFY_RUNS: usize = 3;

/// Events per second of the fastest of [`VERIFY_RUNS`] runs of `verify` in a pool of
/// `threads`; each run must have checked `events` events.
fn best_rate(threads: usize, events: u64, verify: impl Fn() -> Result<u64> + Sync) -> Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let mut best = Duration::MAX;
    for _ in 0..VERIFY_RUNS {
        let started = Instant::now();
        let seen = pool.install(&verify)?;
        best = best.min(started.elapsed());
        anyhow::ensure!(
            seen == events,
            "verification saw {seen} events, not {events}"
        );
    }
    Ok(rate(events as f64, best))
}

fn rate(n: f64, d: Duration) -> f64 {
    n / d.as_secs_f64().max(1e-9)
}

/// Appends `events` events in group commits of `batch` to a new ledger in a temporary
/// directory, signs a checkpoint, exports the whole ledger as a bundle and verifies it.
pub fn measure(events: u64, batch: usize) -> Result<Throughput> {
    measure_in(events, batch, None)
}

/// [`measure`], keeping what it wrote in `keep` (a new directory) if given.
pub fn measure_in(events: u64, batch: usize, keep: Option<&std::path::Path>) -> Result<Throughput> {
    let batch = batch.max(1);
    let temporary = tempfile::tempdir()?;
    let dir = match keep {
        Some(path) => {
            std::fs::create_dir(path)?;
            path
        }
        None => temporary.path(),
    };
    let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())?;
    let mut ledger = Ledger::open(dir)?;
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
    let event_bytes: u64 = batches.iter().flatten().map(|e| e.event.len() as u64).sum();
    let started = Instant::now();
    for batch in &batches {
        ledger.append(batch, &[])?;
    }
    let ingest = started.elapsed();
    drop(batches);
    let signer = NoteSigner::from_seed("gatehouse.bench/ledger", [1; 32])?;
    std::fs::write(
        dir.join("checkpoint.vkey"),
        format!("{}\n", signer.verifier().to_vkey()),
    )?;
    ledger.issue_checkpoint(&signer, "gatehouse.bench/ledger")?;
    ledger.flush()?;
    drop(ledger);

    let bundle = dir.join("bundle.tar.gz");
    let started = Instant::now();
    let file = std::io::BufWriter::new(std::fs::File::create(&bundle)?);
    let signing = gatehouse_evidence::export::Signing {
        signer: &signer,
        since: None,
    };
    write_bundle(dir, &BundleSpec::default(), &signing, file, &mut |_, _| {})?;
    let export = started.elapsed();
    let bundle_bytes = std::fs::metadata(&bundle)?.len();

    let key = signer.verifier();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bundle_verify = [0.0; 2];
    for (slot, threads) in [1, cores].into_iter().enumerate() {
        bundle_verify[slot] = best_rate(threads, events, || {
            let verified = gatehouse_proof::bundle::verify(&bundle, Some(&key), |_| {})
                .map_err(|f| anyhow::anyhow!("the bundle does not verify: {f:?}"))?;
            Ok(verified.manifest.counts.events)
        })?;
    }
    // The ledger walk, in a pool of one thread and in one of every core.
    let ledger = Ledger::open_read_only(dir)?;
    let mut ledger_verify = [0.0; 2];
    for (slot, threads) in [1, cores].into_iter().enumerate() {
        ledger_verify[slot] = best_rate(threads, events, || {
            let walked = gatehouse_evidence::verify::verify(&ledger)?
                .map_err(|b| anyhow::anyhow!("the ledger does not verify: {b}"))?;
            Ok(walked.entries)
        })?;
    }
    Ok(Throughput {
        ledger_verify_events_per_s_one_core: ledger_verify[0],
        ledger_verify_events_per_s_all_cores: ledger_verify[1],
        cores,
        events,
        batch,
        event_bytes,
        ingest_events_per_s: rate(events as f64, ingest),
        export_mb_per_s: rate(event_bytes as f64 / 1e6, export),
        bundle_bytes,
        verify_events_per_s: bundle_verify[0],
        verify_events_per_s_all_cores: bundle_verify[1],
    })
}
