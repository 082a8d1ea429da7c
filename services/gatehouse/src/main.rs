//! The `gatehouse` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse::ledger::VerifyOutcome;
use gatehouse::{LogFormat, init_logging, load_yaml, shutdown_on_signal};

/// Gatehouse governs how machines reach Kubernetes: authenticated, least-privileged, recorded.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version)]
struct Cli {
    /// Log format (default: json for services, text for everything else).
    #[arg(long, global = true, value_enum, env = "GATEHOUSE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The gateway in front of the Kubernetes API server.
    Proxy {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Posts held requests to Slack, Teams and Discord, counts votes, publishes decisions.
    Approval {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Holds waiting for approval: list them, vote on them (through the approval service).
    Approvals {
        #[command(subcommand)]
        command: gatehouse::approvals_cmd::ApprovalsCommand,
    },
    /// Grants approvals opened: list them, revoke one.
    Grants {
        #[command(subcommand)]
        command: gatehouse::approvals_cmd::GrantsCommand,
    },
    /// Appends every event to the hash-linked ledger.
    Evidence {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Everything in one process, in front of a local Kubernetes control plane, the sandbox or
    /// your cluster, with demo identities: the development and demo stack, `gatehouse-up`,
    /// run from beside this binary or from PATH (`gatehouse up --help` for its options).
    #[command(disable_help_flag = true)]
    Up {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Print a recorded exec / attach / port-forward session from the ledger, or export it as
    /// asciicast v2. Exits 1 if chunks of the session are missing.
    Replay {
        /// The session id (the `subject` of its session.* events).
        session_id: String,
        /// The evidence service's data directory (the ledger is DIR/ledger).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Write an asciicast v2 file (play it with `asciinema play FILE`) instead of printing.
        #[arg(long, value_name = "FILE")]
        asciicast: Option<PathBuf>,
        /// Include what was typed (stdin).
        #[arg(long)]
        input: bool,
    },
    /// Inspect the evidence ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Write an evidence bundle (.tar.gz) of the ledger: events, inclusion proofs, the signed
    /// checkpoint and its key, session recordings.
    Export(gatehouse::bundle_cmd::ExportArgs),
    /// Access review for a period: per identity, what it did, what needed approval and who
    /// approved, denials, and (with --policy) the grants it never used.
    Report(gatehouse::report::ReportArgs),
    /// Verify an evidence bundle offline; exit 1 naming every failure.
    Verify(gatehouse::bundle_cmd::VerifyArgs),
    /// Checkpoint keys, and signed checkpoints of the ledger's Merkle tree.
    Checkpoint {
        #[command(subcommand)]
        command: gatehouse::checkpoint_cmd::CheckpointCommand,
    },
    /// NATS: create the stream and buckets with the admin credential (deploy/nats/README.md).
    Nats {
        #[command(subcommand)]
        command: gatehouse::nats_cmd::NatsCommand,
    },
    /// Check a policy file, or explain which rule decides a request.
    Policy {
        #[command(subcommand)]
        command: gatehouse::policy_cmd::PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Re-walk the hash chain; exit 0 if it holds, 1 naming the first bad entry if not.
    Verify {
        /// The evidence service's data directory (the ledger is DIR/ledger).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Legal holds: entries they match are kept past retention.
    Hold {
        #[command(subcommand)]
        command: gatehouse::retention_cmd::HoldCommand,
    },
    /// Back up a ledger (a consistent RocksDB checkpoint into a new directory) and verify the
    /// copy; for a ledger the evidence service is not running on (it backs up on its own,
    /// `backups:`). Restore: runbooks/ledger-restore.md.
    Backup {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// A directory that does not exist yet.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Rebuild a ledger from its write-once archive (S3 Object Lock): every segment in order,
    /// digests checked, then verified like `ledger verify` and every archived checkpoint's
    /// signature and root checked. Exit 1 naming a missing or altered segment.
    Restore(gatehouse::restore_cmd::RestoreArgs),
    /// Prune payloads past `retention_days` (not under a legal hold) into tombstones that keep
    /// every hash, and record `ledger.pruned`. The evidence service does this on its own
    /// schedule; this is for a ledger it is not running on.
    Prune {
        /// The evidence service's configuration (data directory, NATS, retention_days).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Prune as of this time instead of now (RFC 3339).
        #[arg(long)]
        now: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = matches!(
        cli.command,
        Command::Proxy { .. } | Command::Evidence { .. } | Command::Approval { .. }
    );
    init_logging(cli.log_format.unwrap_or(if service {
        LogFormat::Json
    } else {
        LogFormat::Text
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Proxy { config } => {
            let config: gatehouse_proxy::ProxyConfig = load_yaml(&config)?;
            let proxy = gatehouse_proxy::Proxy::build(config).await?;
            proxy.serve(shutdown_on_signal()).await;
        }
        Command::Approval { config } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let config = gatehouse_approval::ApprovalConfig::from_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let shutdown = shutdown_on_signal();
            let server = gatehouse_approval::ApprovalServer::start(&config, shutdown)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            server.run().await;
        }
        Command::Approvals { command } => {
            return gatehouse::approvals_cmd::approvals(command).await;
        }
        Command::Grants { command } => return gatehouse::approvals_cmd::grants(command).await,
        Command::Evidence { config } => {
            gatehouse_evidence::api::run_evidence(&config, shutdown_on_signal()).await?;
        }
        Command::Up { args } => return gatehouse::up_cmd::exec_up(&args),
        Command::Replay {
            session_id,
            data_dir,
            asciicast,
            input,
        } => {
            let recording = gatehouse_evidence::replay::load(&data_dir, &session_id)?;
            let options = gatehouse_evidence::replay::ReplayOptions { input };
            let complete = recording.missing.is_empty();
            match asciicast {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    gatehouse_evidence::replay::asciicast(&recording, options, &mut out)?;
                    eprintln!(
                        "wrote {} ({} chunks){}",
                        path.display(),
                        recording.chunks.len(),
                        if complete { "" } else { "; chunks are MISSING" }
                    );
                }
                None => {
                    gatehouse_evidence::replay::print(
                        &recording,
                        options,
                        &mut std::io::stdout().lock(),
                    )?;
                }
            }
            if !complete {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Policy { command } => return gatehouse::policy_cmd::run(command),
        Command::Nats { command } => return gatehouse::nats_cmd::run(command).await,
        Command::Checkpoint { command } => return gatehouse::checkpoint_cmd::run(command).await,
        Command::Export(args) => return gatehouse::bundle_cmd::export(args),
        Command::Verify(args) => return gatehouse::bundle_cmd::verify(args),
        Command::Report(args) => return gatehouse::report::run(args),
        Command::Ledger {
            command: LedgerCommand::Hold { command },
        } => return gatehouse::retention_cmd::hold(command),
        Command::Ledger {
            command: LedgerCommand::Backup { data_dir, out },
        } => return gatehouse::retention_cmd::backup(data_dir, out),
        Command::Ledger {
            command: LedgerCommand::Restore(args),
        } => return gatehouse::restore_cmd::restore(args).await,
        Command::Ledger {
            command: LedgerCommand::Prune { config, now },
        } => return gatehouse::retention_cmd::prune(config, now).await,
        Command::Ledger {
            command: LedgerCommand::Verify { data_dir, json },
        } => {
            return Ok(match gatehouse::ledger::verify(&data_dir, json)? {
                VerifyOutcome::Holds => ExitCode::SUCCESS,
                VerifyOutcome::Broken => ExitCode::from(1),
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
