//! The bus against a real nats-server: the stream Gatehouse relies on, and publish semantics.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use gatehouse::nats_server::NatsServer;
use gatehouse_bus::{Bus, BusConfig, DurableConsumer};
use gatehouse_tests::{init_logging, sample_event};

type Result = anyhow::Result<()>;

async fn server() -> anyhow::Result<(tempfile::TempDir, NatsServer, BusConfig)> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats")).await?;
    let config = BusConfig::new(nats.url());
    Ok((dir, nats, config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_created_once_with_the_settings_the_invariants_need() -> Result {
    let (_dir, _nats, config) = server().await?;
    let bus = Bus::connect(&config, "test").await?;
    let created = bus.ensure_stream(&config.stream).await?;
    let again = bus.ensure_stream(&config.stream).await?;
    assert_eq!(
        created.created, again.created,
        "a second call must not recreate it"
    );
    let c = &again.config;
    assert_eq!(c.subjects, vec!["gatehouse.>".to_owned()]);
    assert_eq!(c.storage, StorageType::File);
    assert_eq!(c.discard, DiscardPolicy::New);
    assert!(c.duplicate_window >= Duration::from_secs(120));
    assert!(c.deny_delete && c.deny_purge);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_stream_is_brought_back_and_a_memory_stream_refused() -> Result {
    let (_dir, _nats, config) = server().await?;
    let bus = Bus::connect(&config, "test").await?;
    bus.jetstream()
        .create_stream(Config {
            name: "GATEHOUSE".into(),
            subjects: vec!["gatehouse.>".into()],
            duplicate_window: Duration::from_secs(30),
            discard: DiscardPolicy::Old,
            ..Default::default()
        })
        .await?;
    let fixed = bus.ensure_stream(&config.stream).await?;
    assert_eq!(fixed.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(fixed.config.discard, DiscardPolicy::New);
    assert!(fixed.config.deny_delete && fixed.config.deny_purge);

    bus.jetstream()
        .create_stream(Config {
            name: "MEMORY".into(),
            subjects: vec!["elsewhere.>".into()],
            storage: StorageType::Memory,
            ..Default::default()
        })
        .await?;
    let mut settings = config.stream.clone();
    settings.name = "MEMORY".into();
    let err = bus.ensure_stream(&settings).await.unwrap_err().to_string();
    assert!(
        err.contains("memory storage") && err.contains("runbooks/nats-stream.md"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_event_is_stored_once() -> Result {
    let (_dir, _nats, config) = server().await?;
    let bus = Bus::connect(&config, "test").await?;
    bus.ensure_stream(&config.stream).await?;
    let e = sample_event(0);
    let first = bus.publish(&e).await?;
    let retry = bus.publish(&e).await?;
    assert!(!first.duplicate);
    assert!(retry.duplicate, "the event id is the Nats-Msg-Id");
    assert_eq!(first.sequence, retry.sequence);
    let other = bus.publish(&sample_event(0)).await?;
    assert_eq!(other.sequence, first.sequence + 1);
    let stored = bus.read_all().await?;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].1.as_ref(), e.to_bytes()?.as_slice());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_stopped_server_fails_fast() -> Result {
    let (_dir, mut nats, config) = server().await?;
    let bus = Bus::connect(&config, "test").await?;
    bus.ensure_stream(&config.stream).await?;
    nats.stop().await;
    gatehouse_tests::eventually(
        "the client to notice",
        gatehouse_tests::DEADLINE,
        || async { (!bus.is_connected()).then_some(()) },
    )
    .await?;
    let started = std::time::Instant::now();
    let err = bus.publish(&sample_event(0)).await.unwrap_err();
    assert!(
        matches!(err, gatehouse_bus::PublishError::Disconnected),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_keeps_its_position() -> Result {
    use futures::StreamExt;

    let (_dir, _nats, config) = server().await?;
    let bus = Bus::connect(&config, "test").await?;
    bus.ensure_stream(&config.stream).await?;
    for _ in 0..3 {
        bus.publish(&sample_event(0)).await?;
    }
    let spec = DurableConsumer::new("reader", "gatehouse.>");
    let consumer = bus.durable_consumer(&spec).await?;
    let mut batch = consumer.fetch().max_messages(2).messages().await?;
    let mut last = None;
    while let Some(m) = batch.next().await {
        last = Some(m.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    last.expect("two messages")
        .ack()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Asking again by name resumes after what was acked (ack-all acked both).
    let again = bus.durable_consumer(&spec).await?;
    let mut next = again
        .fetch()
        .max_messages(5)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let message = next
        .next()
        .await
        .expect("one left")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence,
        3
    );
    Ok(())
}
