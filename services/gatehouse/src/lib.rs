//! The `gatehouse` binary's library: what composes the services into commands.
//!
//! Module map:
//! - [`up_cmd`]: `gatehouse up` runs `gatehouse-up`, the development and demo stack, which is
//!   a binary of its own so that this one links no test bed.
//! - [`ledger`]: `gatehouse ledger verify`.
//! - [`report`]: `gatehouse report`, the access review for a period (JSON, CSV, printable HTML).
//! - [`approvals_cmd`]: `gatehouse approvals list|vote` and `gatehouse grants list|revoke`.
//! - [`bundle_cmd`]: `gatehouse export` (an evidence bundle) and `gatehouse verify` (check one).
//! - [`checkpoint_cmd`]: `gatehouse checkpoint keygen|sign|show`.
//! - [`retention_cmd`]: `gatehouse ledger hold place|list|release` and `gatehouse ledger prune`.
//! - [`restore_cmd`]: `gatehouse ledger restore --from-archive`, a ledger rebuilt from its
//!   write-once archive.
//! - [`policy_cmd`]: `gatehouse policy check` and `gatehouse policy explain`.
//! - [`nats_server`]: a local `nats-server` with JetStream (for `gatehouse-up` and for tests).
//! - [`kubeconfig`]: kubeconfig files, and files only their owner reads.
//! - [`logging`]: JSON log lines with span fields (the request id) at the top level.
//!
//! `main.rs` holds only the command line; everything it runs lives here so tests can drive it.
#![forbid(unsafe_code)]

pub mod approvals_cmd;
pub mod bundle_cmd;
pub mod checkpoint_cmd;
pub mod kubeconfig;
pub mod ledger;
pub mod logging;
pub mod nats_cmd;
pub mod nats_server;
pub mod policy_cmd;
pub mod report;
pub mod restore_cmd;
pub mod retention_cmd;
pub mod up_cmd;

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::util::SubscriberInitExt;

/// Reads a YAML configuration file. Errors name the file and the line.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration {}", path.display()))?;
    yaml_serde::from_str(&text)
        .map_err(|e| anyhow::anyhow!("configuration {}: {e}", path.display()))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber; the level comes from `GATEHOUSE_LOG` (default `info`).
/// The format is chosen by `--log-format` or `GATEHOUSE_LOG_FORMAT` (see `main.rs`). JSON lines
/// carry span fields at the top level, so `request_id` is a key on every line logged while a
/// request is handled.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    // Already installed (tests call this more than once): keep the first.
    match format {
        LogFormat::Json => {
            let _ = logging::json_subscriber(filter, std::io::stderr).try_init();
        }
        LogFormat::Text => {
            // Colour only for a person at a terminal: a log file or pipe gets plain text.
            use std::io::IsTerminal as _;
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(colour)
                .compact()
                .try_init();
        }
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}
