//! Evidence throughput: ledger ingest (group commits, fsync each), bundle export, and bundle
//! verification on one thread.
//!
//! `cargo bench -p gatehouse-tests --bench evidence [-- EVENTS [BATCH]]` (default 100,000 events
//! of about 1 KB shaped like `request.received`, group commits of 1,000). Goals: ingest ≥ 50k
//! events/s, verify ≥ 500k events/s on one core. The full harness (`tests/bench/run`) reports
//! the same figures beside the proxy's.

fn main() -> anyhow::Result<()> {
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let events = numbers.next().unwrap_or(100_000);
    let batch = numbers.next().unwrap_or(1_000) as usize;
    let t = gatehouse_tests::bench::evidence::measure(events, batch)?;
    println!(
        "events: {} ({:.0} bytes each on average)",
        t.events,
        t.event_bytes as f64 / t.events.max(1) as f64
    );
    println!(
        "ingest (batches of {}, fsync each): {:.0} events/s",
        t.batch, t.ingest_events_per_s
    );
    println!(
        "export: {:.1} MB/s of events ({:.1} MB bundle)",
        t.export_mb_per_s,
        t.bundle_bytes as f64 / 1e6
    );
    println!("verify (one thread): {:.0} events/s", t.verify_events_per_s);
    Ok(())
}
