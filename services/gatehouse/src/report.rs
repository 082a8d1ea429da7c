//! `gatehouse report --data-dir DIR [--from T] [--to T] [--policy FILE] [--format F]`: the
//! access review for a period ([`gatehouse_evidence::report`]), read from the evidence ledger.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use gatehouse_events::envelope::{format_rfc3339, now_rfc3339};
use gatehouse_evidence::Ledger;
use gatehouse_evidence::report::{ReviewBuilder, parse_time, period, to_csv, to_html};
use gatehouse_proxy::policy::Policy;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

/// Output format of `gatehouse report`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Json,
    Csv,
    Html,
}

/// `gatehouse report`: the access review for a period, from the ledger.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
A request is in the period when it was received in [--from, --to); what followed it (approval,
grant, denial, response) is included whenever it came.

Exit status: 0 the report was written; 1 it was written, but some ledger entries could not be
read (it may be incomplete: run `gatehouse ledger verify`); 2 bad arguments, no ledger, or an
unreadable policy.")]
pub struct ReportArgs {
    /// The evidence service's data directory (the ledger is DIR/ledger); opened read-only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Start of the period, inclusive: RFC 3339 (2024-06-01T00:00:00Z) or a date (UTC).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub from: Option<OffsetDateTime>,
    /// End of the period, exclusive: RFC 3339 or a date (UTC).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub to: Option<OffsetDateTime>,
    /// The policy file: lists the allow and approve rules each identity never used.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Json)]
    pub format: ReportFormat,
    /// Write here instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// The CloudEvents `type`, read without building the rest of the event.
#[derive(Deserialize)]
struct EventType {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Runs `gatehouse report`. `Err` is bad input (exit 2); exit 1 when ledger entries could not
/// be read.
pub fn run(args: ReportArgs) -> Result<ExitCode> {
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from >= to
    {
        bail!(
            "--from {} is not before --to {}: the period is empty",
            format_rfc3339(from),
            format_rfc3339(to)
        );
    }
    let policy = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--policy: cannot read {}", path.display()))?;
            Some(Policy::from_yaml(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--policy {}: not a policy the proxy would load: {e} (see `gatehouse policy \
                     check`)",
                    path.display()
                )
            })?)
        }
        None => None,
    };
    let ledger = Ledger::open_read_only(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let mut builder = ReviewBuilder::new(args.from, args.to);
    for stored in ledger
        .entries(0)
        .with_context(|| format!("reading the ledger at {}", ledger.path().display()))?
    {
        let stored =
            stored.with_context(|| format!("reading the ledger at {}", ledger.path().display()))?;
        if stored.tombstone().is_some() {
            // Pruned past retention: nothing left to report on.
            continue;
        }
        let Ok(entry) = gatehouse_evidence::entry::Entry::decode(&stored.encoding) else {
            builder.unreadable();
            continue;
        };
        match serde_json::from_slice::<EventType>(&entry.event) {
            Ok(EventType { kind: Some(kind) }) if ReviewBuilder::wants(&kind) => {
                match serde_json::from_slice::<Value>(&entry.event) {
                    Ok(event) => builder.add(&event),
                    Err(_) => builder.unreadable(),
                }
            }
            Ok(_) => builder.pass(),
            Err(_) => builder.unreadable(),
        }
    }
    let mut review = builder.finish(policy.as_ref());
    review.generated_at = Some(now_rfc3339());
    review.policy_source = args.policy.as_ref().map(|p| p.display().to_string());

    let rendered = match args.format {
        ReportFormat::Json => {
            let mut text = serde_json::to_string_pretty(&review)?;
            text.push('\n');
            text
        }
        ReportFormat::Csv => to_csv(&review),
        ReportFormat::Html => to_html(&review),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, rendered.as_bytes())
                .with_context(|| format!("--output: cannot write {}", path.display()))?;
            eprintln!(
                "wrote {}: {} identities, {} requests, {}",
                path.display(),
                review.identities.len(),
                review.requests,
                period(&review)
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(rendered.as_bytes())
                .and_then(|()| out.flush())
                .context("writing the report to standard output")?;
        }
    }
    for note in &review.notes {
        eprintln!("warning: {note}");
    }
    Ok(if review.events_unreadable > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
