//! The evidence service against a real nats-server and RocksDB: exactly once, in stream order,
//! across crashes and redeliveries; gaps are alarms, not silent skips.

use std::sync::Arc;
use std::time::Duration;

use gatehouse::nats_server::NatsServer;
use gatehouse_bus::{Bus, BusConfig};
use gatehouse_evidence::store::NewEntry;
use gatehouse_evidence::verify::verify;
use gatehouse_evidence::{Evidence, EvidenceConfig, Ledger};
use gatehouse_tests::{DEADLINE, eventually, init_logging, sample_event};
use tokio_util::sync::CancellationToken;

type Result = anyhow::Result<()>;

async fn publish(bus: &Bus, count: usize) -> anyhow::Result<()> {
    // Send them all, then await the acks: a burst, as a busy proxy makes.
    let mut pending = Vec::with_capacity(count);
    for n in 0..count {
        pending.push(bus.enqueue(&sample_event(n)).await?);
    }
    for p in pending {
        p.wait().await?;
    }
    Ok(())
}

/// Starts the evidence service on `data_dir`; returns it with its stop token and task.
async fn start_evidence(
    config: EvidenceConfig,
) -> anyhow::Result<(
    Arc<Evidence>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let evidence = Arc::new(Evidence::open(config).await?);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let evidence = evidence.clone();
        let stop = stop.clone();
        async move {
            evidence.run(stop).await.expect("evidence ran");
        }
    });
    Ok((evidence, stop, task))
}

/// Every stream event is in the ledger once, in order, byte for byte; the chain verifies.
async fn assert_ledger_equals_stream(bus: &Bus, data_dir: &std::path::Path) -> anyhow::Result<u64> {
    let stream = bus.read_all().await?;
    let ledger = Ledger::open_read_only(data_dir)?;
    let verified = verify(&ledger)?.map_err(|b| anyhow::anyhow!("{b}"))?;
    let mut index = 0u64;
    for (sequence, bytes) in &stream {
        let entry = ledger
            .entry(index)?
            .ok_or_else(|| anyhow::anyhow!("entry {index} missing"))?;
        anyhow::ensure!(
            entry.stream_sequence == *sequence,
            "entry {index} has sequence {}",
            entry.stream_sequence
        );
        anyhow::ensure!(
            entry.event == bytes.as_ref(),
            "entry {index} differs from the stream"
        );
        index += 1;
    }
    anyhow::ensure!(
        verified.entries == index,
        "ledger has {} entries, stream {index}",
        verified.entries
    );
    Ok(index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_group_committed_exactly_once() -> Result {
    init_logging();
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats")).await?;
    let config = EvidenceConfig::new(dir.path().join("evidence"), BusConfig::new(nats.url()));
    let (evidence, stop, task) = start_evidence(config.clone()).await?;
    let bus = Bus::connect(&config.nats, "test-publisher").await?;

    publish(&bus, 2_000).await?;
    assert!(
        evidence.catch_up(DEADLINE).await?,
        "the ledger did not catch up"
    );
    assert_eq!(evidence.head().next_index, 2_000);
    stop.cancel();
    task.await?;
    assert_eq!(
        assert_ledger_equals_stream(&bus, &config.data_dir).await?,
        2_000
    );
    Ok(())
}

/// The crash that matters: entries written and synced, the acks never sent. The durable
/// consumer redelivers from where it was acked; the ledger's stored last sequence says those
/// are already in, and they are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_after_a_crash_between_write_and_ack_are_skipped() -> Result {
    init_logging();
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats")).await?;
    let config = EvidenceConfig::new(dir.path().join("evidence"), BusConfig::new(nats.url()));
    let bus = Bus::connect(&config.nats, "test-publisher").await?;
    bus.ensure_stream(&config.nats.stream).await?;
    publish(&bus, 300).await?;

    // The crashed instance's work: the first 120 events appended, nothing acked.
    let stream = bus.read_all().await?;
    {
        let mut ledger = Ledger::open(&config.data_dir)?;
        // Stored now (a 1970 time would be past retention and pruned at start).
        let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())?;
        let written: Vec<NewEntry> = stream[..120]
            .iter()
            .map(|(sequence, bytes)| NewEntry {
                stream_sequence: *sequence,
                received_at: now,
                event: bytes.to_vec(),
            })
            .collect();
        ledger.append(&written, &[])?;
    }

    let (evidence, stop, task) = start_evidence(config.clone()).await?;
    assert!(evidence.catch_up(DEADLINE).await?);
    // Give redelivered duplicates every chance to be (wrongly) appended.
    publish(&bus, 5).await?;
    assert!(evidence.catch_up(DEADLINE).await?);
    stop.cancel();
    task.await?;
    assert_eq!(
        assert_ledger_equals_stream(&bus, &config.data_dir).await?,
        305
    );

    // And a restart on top changes nothing.
    drop(evidence);
    let (evidence, stop, task) = start_evidence(config.clone()).await?;
    assert!(evidence.catch_up(DEADLINE).await?);
    assert_eq!(evidence.head().next_index, 305);
    stop.cancel();
    task.await?;
    Ok(())
}

/// Events that left the stream before the evidence service read them (deleted by hand here;
/// expired or lost in production) are a gap: an alarm recorded in the ledger, not a silent
/// skip, and the events after it are still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_from_the_stream_raise_a_gap_alarm() -> Result {
    init_logging();
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats")).await?;
    let config = EvidenceConfig::new(dir.path().join("evidence"), BusConfig::new(nats.url()));
    let bus = Bus::connect(&config.nats, "test-publisher").await?;
    // A stream someone made without Gatehouse's delete protection.
    let js = bus.jetstream().clone();
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "GATEHOUSE".into(),
            subjects: vec!["gatehouse.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    publish(&bus, 8).await?;
    for sequence in 2..=4 {
        assert!(stream.delete_message(sequence).await?);
    }

    // Opening the evidence service restores the protection, then finds the hole.
    let (evidence, stop, task) = start_evidence(config.clone()).await?;
    assert!(evidence.catch_up(DEADLINE).await?);
    // The alarm is an event too, and the ledger records it like any other.
    let gap_event = eventually("the ledger.gap event", DEADLINE, || async {
        bus.read_all().await.ok()?.into_iter().find(|(_, bytes)| {
            String::from_utf8_lossy(bytes).contains("dev.gatehouse.ledger.gap.v1")
        })
    })
    .await?;
    assert_eq!(gap_event.0, 9);
    let gap: serde_json::Value = serde_json::from_slice(&gap_event.1)?;
    assert_eq!(gap["data"]["first_missing_sequence"], 2);
    assert_eq!(gap["data"]["last_missing_sequence"], 4);
    assert!(evidence.catch_up(DEADLINE).await?);
    // And a metric.
    let metrics = evidence.metrics().encode();
    assert!(
        metrics.contains("gatehouse_evidence_gap_alarms_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_evidence_missing_sequences_total 3"),
        "{metrics}"
    );
    stop.cancel();
    task.await?;
    let mut info = js.get_stream("GATEHOUSE").await?;
    let info = info.info().await?;
    assert!(info.config.deny_delete && info.config.deny_purge);

    let ledger = Ledger::open_read_only(&config.data_dir)?;
    let verified = verify(&ledger)?.map_err(|b| anyhow::anyhow!("{b}"))?;
    assert_eq!(verified.entries, 6);
    assert_eq!(verified.gaps.len(), 1);
    assert_eq!((verified.gaps[0].first, verified.gaps[0].last), (2, 4));
    let sequences: Vec<u64> = (0..6)
        .map(|i| ledger.entry(i).map(|e| e.map(|e| e.stream_sequence)))
        .collect::<std::result::Result<Option<Vec<u64>>, _>>()?
        .unwrap_or_default();
    assert_eq!(sequences, [1, 5, 6, 7, 8, 9]);
    Ok(())
}
