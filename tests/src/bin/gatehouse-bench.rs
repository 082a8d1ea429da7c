//! `gatehouse-bench run|soak|evidence`: the benchmark harness (`tests/bench/run`, `tests/bench/soak`
//! build it in release mode and call it). See `gatehouse_tests::bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse_tests::bench::{self, Options, report, soak};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-bench",
    about = "Gatehouse measured side by side with direct access and nginx"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Latency, saturation, masked lists, holds and the ledger, against direct access and
    /// nginx, in alternating rounds; then the zero-loss accounting.
    Run {
        /// Working directory (cleared first): processes' logs, stores, the ledger.
        #[arg(long, default_value = "target/bench-run")]
        dir: PathBuf,
        /// Where results.md and results.json go.
        #[arg(long, default_value = "tests/bench/results")]
        out: PathBuf,
        /// The API servers to measure behind Gatehouse, each in its own run (default: the
        /// local control plane, then the sandbox).
        #[arg(long = "upstream", value_enum, num_args = 1..)]
        upstreams: Vec<bench::Upstream>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measured run (plus a warm-up of a fifth of it, at least a second).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Requests per second of the latency comparison, against the sandbox.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// The same against the local control plane, whose API server (authentication, RBAC,
        /// impersonation checks, etcd) saturates far sooner on the same cores: measured at
        /// 2,000 requests/s it only shows a queue.
        #[arg(long, default_value_t = 500.0)]
        control_plane_rate: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        saturation_connections: usize,
        #[arg(long, default_value_t = 5000)]
        pods: usize,
        /// Requests per second of the pod list.
        #[arg(long, default_value_t = 2.0)]
        list_rate: f64,
        #[arg(long, default_value_t = 50)]
        holds: usize,
        #[arg(long, default_value_t = 100_000)]
        ledger_events: u64,
        /// Refuse to start while the one-minute load average stays above this.
        #[arg(long, default_value_t = 1.0)]
        max_load: f64,
    },
    /// One open-loop run against a running `gatehouse up` (its data directory), to look at one
    /// path alone: prints the latency percentiles.
    Load {
        /// The data directory `gatehouse up` was started with.
        #[arg(long)]
        up_dir: PathBuf,
        /// `gatehouse` (as readonly-bot) or `direct` (the API server, as its admin).
        #[arg(long, default_value = "gatehouse")]
        target: String,
        #[arg(
            long,
            default_value = "/api/v1/namespaces/default/configmaps/web-config"
        )]
        path: String,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// The ledger alone (ingest, export, bundle verify, `ledger verify` on one core and on
    /// every core), printed as JSON: the evidence figures of `run` without the rest.
    Evidence {
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Keep the ledger (and `bundle.tar.gz`, `checkpoint.vkey`) in this new directory, to
        /// profile `gatehouse ledger verify` and `gatehouse verify` on them.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Sustained load while the evidence service is killed and restarted and nats-server is
    /// restarted; then checks that nothing was lost or doubled.
    Soak {
        #[arg(long, default_value = "target/bench-soak")]
        dir: PathBuf,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Evidence {
            events,
            batch,
            keep,
        } => {
            let figures = tokio::task::spawn_blocking(move || {
                bench::evidence::measure_in(events, batch, keep.as_deref())
            })
            .await??;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            dir,
            out,
            upstreams,
            rounds,
            seconds,
            rate,
            control_plane_rate,
            connections,
            saturation_connections,
            pods,
            list_rate,
            holds,
            ledger_events,
            max_load,
        } => {
            let upstreams = if upstreams.is_empty() {
                vec![bench::Upstream::ControlPlane, bench::Upstream::Sandbox]
            } else {
                upstreams
            };
            let mut runs = Vec::new();
            for upstream in upstreams {
                let options = Options {
                    dir: dir.clone(),
                    upstream,
                    rounds: rounds.max(1),
                    seconds,
                    rate: match upstream {
                        bench::Upstream::ControlPlane => control_plane_rate,
                        bench::Upstream::Sandbox => rate,
                    },
                    connections: connections.max(1),
                    saturation_connections: saturation_connections.max(1),
                    pods,
                    list_rate,
                    holds,
                    ledger_events,
                    max_load,
                };
                let (figures, before, after) = bench::run(&options).await?;
                runs.push(report::Run {
                    options,
                    figures,
                    before,
                    after,
                });
            }
            let md = report::write(&out, &runs)?;
            println!("{md}");
            eprintln!(
                "written: {} and {}",
                out.join("results.md").display(),
                out.join("results.json").display()
            );
            Ok(if runs.iter().all(|r| r.figures.zero_loss.holds()) {
                ExitCode::SUCCESS
            } else {
                eprintln!("zero-loss accounting FAILED: see the table");
                ExitCode::from(1)
            })
        }
        Command::Load {
            up_dir,
            target,
            path,
            rate,
            connections,
            seconds,
        } => {
            let target = bench::stack::target_in(&up_dir, &target)?;
            let plan = bench::load::Plan {
                method: http::Method::GET,
                path,
                connections: connections.max(1),
                rate: Some(rate),
                warmup: std::time::Duration::from_secs(1),
                duration: std::time::Duration::from_secs_f64(seconds),
                record: false,
            };
            let outcome = bench::load::run(&target, &plan).await?;
            println!(
                "{}: {} answered ({:?}), {} without answer; p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
                target.name,
                outcome.answered,
                outcome.statuses,
                outcome.failed,
                outcome.percentile_us(50.0),
                outcome.percentile_us(99.0),
                outcome.percentile_us(99.9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak {
            dir,
            seconds,
            rate,
            connections,
        } => {
            let report = soak::run(&soak::SoakOptions {
                dir: dir.clone(),
                seconds,
                rate,
                connections: connections.max(1),
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.passed {
                eprintln!("soak passed");
                Ok(ExitCode::SUCCESS)
            } else {
                for failure in &report.failures {
                    eprintln!("soak FAILED: {failure}");
                }
                Ok(ExitCode::from(1))
            }
        }
    }
}
