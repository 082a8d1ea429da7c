//! `gatehouse evidence`: every event, appended to a hash-linked RocksDB ledger, exactly once.
//!
//! Module map:
//! - [`entry`]: the byte-exact entry encoding and its BLAKE3 hash (`schemas/ledger.md`).
//! - [`store`]: the RocksDB ledger: column families, the atomic and durable append.
//! - [`ingest`]: the durable JetStream consumer that feeds the ledger in stream order.
//! - [`verify`]: re-walking the chain and naming the first bad entry.
//! - [`config`]: the service's YAML configuration.
#![forbid(unsafe_code)]

pub mod config;
pub mod entry;
pub mod ingest;
pub mod store;
pub mod verify;

use std::sync::{Arc, Mutex};

use gatehouse_bus::{Bus, DurableConsumer};
use tokio_util::sync::CancellationToken;

pub use config::EvidenceConfig;
pub use store::{Head, Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("invalid evidence configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Bus(#[from] gatehouse_bus::BusError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
}

/// Runs the evidence service until `shutdown` is cancelled, then flushes the ledger so that it
/// is entirely in checksummed table files.
pub async fn run(config: EvidenceConfig, shutdown: CancellationToken) -> Result<(), EvidenceError> {
    config.validate().map_err(EvidenceError::Config)?;
    let ledger = Ledger::open(&config.data_dir)?;
    let head = ledger.head();
    tracing::info!(
        ledger = %ledger.path().display(),
        entries = head.next_index,
        last_sequence = head.last_sequence,
        "ledger open"
    );
    let ledger = Arc::new(Mutex::new(ledger));
    let bus = Bus::connect(&config.nats, "gatehouse-evidence").await?;
    bus.ensure_stream(&config.nats.stream).await?;
    let consumer = DurableConsumer::new(config.consumer.clone(), "gatehouse.>");
    let ingestor = ingest::Ingestor::new(bus.clone(), ledger.clone(), consumer, config.batch_max);
    let result = ingestor.run(shutdown).await;
    bus.flush().await;
    let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    ledger.flush()?;
    let head = ledger.head();
    tracing::info!(entries = head.next_index, last_sequence = head.last_sequence, "ledger closed");
    result.map_err(EvidenceError::from)
}
