//! `gatehouse nats setup`: creates, or brings to Gatehouse's settings, the `GATEHOUSE` stream
//! and the buckets, with the admin credential of `deploy/nats/gatehouse.conf`.
//!
//! Services only check the stream and buckets at start: their credentials may not create or
//! change streams, because one that could update the stream could shorten its `max_age` and so
//! erase evidence. This step runs once per install or upgrade (`gatehouse up` runs it itself).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use gatehouse_approval::ApprovalConfig;
use gatehouse_approval::store::Store;
use gatehouse_bus::{Bus, GRANTS_MAX_AGE, grants_bucket};

#[derive(Debug, clap::Subcommand)]
pub enum NatsCommand {
    /// Create (or fix) the GATEHOUSE stream and the approval, grant and evidence buckets. Run it with
    /// the admin credential before the services start, and after an upgrade.
    Setup {
        /// The approval service's configuration: NATS URL, stream settings, bucket replicas
        /// and hold retention are taken from it.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The admin user's NKey seed file (mode 0600), instead of the configuration's
        /// `nats.nkey_file`.
        #[arg(long, value_name = "FILE")]
        nkey_file: Option<PathBuf>,
    },
}

pub async fn run(command: NatsCommand) -> Result<ExitCode> {
    match command {
        NatsCommand::Setup { config, nkey_file } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let mut approval = ApprovalConfig::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            if let Some(file) = nkey_file {
                approval.nats.nkey_file = Some(file);
                approval.nats.credentials_file = None;
            }
            let bus = Bus::connect(&approval.nats, "gatehouse-nats-setup").await?;
            setup(&bus, &approval).await?;
            println!(
                "stream {} and buckets are in place",
                approval.nats.stream.name
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Creates or fixes the stream and every bucket the services open, with the shapes they use.
pub async fn setup(bus: &Bus, approval: &ApprovalConfig) -> Result<()> {
    bus.ensure_stream(&approval.nats.stream).await?;
    Store::open(bus, approval.bucket_replicas, approval.hold_retention)
        .await
        .map_err(|e| anyhow::anyhow!("approval buckets: {}", e.0))?;
    bus.key_value(&grants_bucket(GRANTS_MAX_AGE, approval.bucket_replicas))
        .await?;
    for bucket in gatehouse_evidence::lease::buckets(
        gatehouse_evidence::config::DEFAULT_LEASE_TTL,
        approval.bucket_replicas,
    ) {
        bus.key_value(&bucket).await?;
    }
    Ok(())
}
