//! `gatehouse evidence --config FILE`.

use std::path::PathBuf;

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
}

impl EvidenceConfig {
    pub fn new(data_dir: PathBuf, nats: BusConfig) -> Self {
        Self {
            data_dir,
            nats,
            consumer: default_consumer(),
            batch_max: default_batch_max(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.nats.validate()?;
        if self.batch_max == 0 || self.batch_max > 100_000 {
            return Err("batch_max must be between 1 and 100000".into());
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
