//! `gatehouse up`, the development and demo stack (see the crate's documentation).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gatehouse::{LogFormat, init_logging, shutdown_on_signal};
use gatehouse_up::{StackOptions, UpOptions, Upstream};

/// Everything in one process: NATS, the evidence, approval and proxy services, demo identities
/// and kubeconfigs, in front of a local real Kubernetes control plane (built on first use), the
/// instant Kubernetes sandbox, or a cluster of yours.
#[derive(Debug, Parser)]
#[command(name = "gatehouse up", version)]
struct Cli {
    /// Holds NATS's store, the ledger, the control plane, certificates, configs and kubeconfigs.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// In front of the built-in Kubernetes sandbox (starts at once, serves only core/v1)
    /// instead of the local control plane.
    #[arg(long, conflicts_with = "kubeconfig")]
    sandbox: bool,
    /// In front of a cluster you already have (kind, minikube, a cloud cluster), reached with
    /// this kubeconfig's credential: one that may impersonate and nothing more.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context (default: its current context).
    #[arg(long, value_name = "NAME", requires = "kubeconfig")]
    context: Option<String>,
    /// Use this NATS server (JetStream enabled) instead of starting nats-server.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, env = "GATEHOUSE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let upstream = match (cli.sandbox, cli.kubeconfig) {
        (true, _) => Upstream::Sandbox,
        (false, Some(file)) => Upstream::Kubeconfig {
            file,
            context: cli.context,
        },
        (false, None) => Upstream::ControlPlane,
    };
    let options = UpOptions {
        data_dir: cli.data_dir,
        stack: StackOptions {
            upstream,
            nats_url: cli.nats_url,
            listen: cli.listen,
            ..StackOptions::default()
        },
        invocation: std::env::var("GATEHOUSE_INVOCATION").unwrap_or_else(|_| "gatehouse".into()),
    };
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
    match runtime.block_on(async { gatehouse_up::run(options, shutdown_on_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
