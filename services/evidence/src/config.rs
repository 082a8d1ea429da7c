//! `gatehouse evidence --config FILE`.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_bus::BusConfig;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Holds the RocksDB ledger in `ledger/`. One evidence service writes one ledger.
    pub data_dir: PathBuf,
    pub nats: BusConfig,
    /// Durable consumer name. It tracks this ledger's position in the stream, so two ledgers
    /// must not share it.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Most events appended (and fsynced) in one group commit.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Signed checkpoints of the Merkle tree; none are issued without this.
    #[serde(default)]
    pub checkpoints: Option<CheckpointConfig>,
}

/// How checkpoints are signed and how often.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The Ed25519 signing key in signed-note form, as `gatehouse checkpoint keygen` writes
    /// it. Only this service should be able to read it; it is never logged.
    pub key_file: PathBuf,
    /// The checkpoint's origin line; defaults to the key's name.
    #[serde(default)]
    pub origin: Option<String>,
    /// How often a checkpoint is issued (when the tree has grown); one is also issued at
    /// shutdown.
    #[serde(default = "default_every", with = "humantime_serde")]
    pub every: Duration,
}

fn default_every() -> Duration {
    Duration::from_secs(60)
}

impl EvidenceConfig {
    pub fn new(data_dir: PathBuf, nats: BusConfig) -> Self {
        Self {
            data_dir,
            nats,
            consumer: default_consumer(),
            batch_max: default_batch_max(),
            checkpoints: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.nats.validate()?;
        if self.batch_max == 0 || self.batch_max > 100_000 {
            return Err("batch_max must be between 1 and 100000".into());
        }
        if let Some(c) = &self.checkpoints
            && c.every < Duration::from_secs(1)
        {
            return Err("checkpoints.every must be at least 1s".into());
        }
        if self.consumer.is_empty()
            || !self
                .consumer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "consumer {:?} must be letters, digits, '-' or '_'",
                self.consumer
            ));
        }
        Ok(())
    }
}

fn default_consumer() -> String {
    "evidence".into()
}
fn default_batch_max() -> usize {
    1000
}
