//! `gatehouse ledger hold place|list|release` and `gatehouse ledger prune`: legal holds and
//! retention on a ledger the evidence service is not running on (it prunes on its own schedule,
//! `prune_every`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use gatehouse_evidence::Ledger;
use gatehouse_evidence::retention::{HoldQuery, LegalHold};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Keep every entry matching the query past its retention, until released.
    Place {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Why (a matter or case reference); recorded with the hold.
        #[arg(long)]
        reason: String,
        /// Who places it.
        #[arg(long = "by")]
        placed_by: String,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
        /// Entries received at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Entries received before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
    },
    /// The holds in force.
    List {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// End a hold; what it kept is pruned at the next prune if past retention.
    Release {
        id: String,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

fn nanos(flag: &str, text: &Option<String>) -> anyhow::Result<Option<i64>> {
    text.as_deref()
        .map(|t| {
            let at = OffsetDateTime::parse(t, &Rfc3339)
                .with_context(|| format!("--{flag} {t:?} is not an RFC 3339 time"))?;
            Ok(i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX))
        })
        .transpose()
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<Ledger> {
    Ledger::open(data_dir).with_context(|| {
        format!(
            "opening the ledger in {} for writing (is gatehouse evidence running on it?)",
            data_dir.display()
        )
    })
}

pub fn hold(command: HoldCommand) -> anyhow::Result<ExitCode> {
    match command {
        HoldCommand::Place {
            data_dir,
            reason,
            placed_by,
            principal,
            namespace,
            request_id,
            from,
            to,
        } => {
            let query = HoldQuery {
                principal,
                namespace,
                request_id,
                from: nanos("from", &from)?,
                to: nanos("to", &to)?,
            };
            if query.is_empty() {
                bail!(
                    "a hold needs at least one of --principal, --namespace, --request-id, --from, --to"
                );
            }
            if reason.trim().is_empty() || placed_by.trim().is_empty() {
                bail!("--reason and --by must not be empty");
            }
            let hold = LegalHold {
                id: ulid::Ulid::new().to_string(),
                reason,
                placed_by,
                placed_at: gatehouse_events::envelope::now_rfc3339(),
                query,
            };
            open(&data_dir)?.place_legal_hold(&hold)?;
            println!("{}", hold.id);
            Ok(ExitCode::SUCCESS)
        }
        HoldCommand::List { data_dir } => {
            let holds = Ledger::open_read_only(&data_dir)?.legal_holds()?;
            println!("{}", serde_json::to_string_pretty(&holds)?);
            Ok(ExitCode::SUCCESS)
        }
        HoldCommand::Release { id, data_dir } => {
            if open(&data_dir)?.release_legal_hold(&id)? {
                eprintln!("released {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no legal hold {id}");
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// Prunes with the evidence configuration's retention and records `ledger.pruned` on its NATS.
pub async fn prune(config: PathBuf, now: Option<String>) -> anyhow::Result<ExitCode> {
    let config: gatehouse_evidence::EvidenceConfig = crate::load_yaml(&config)?;
    config.validate().map_err(anyhow::Error::msg)?;
    let now = match nanos("now", &now)? {
        Some(n) => n,
        None => i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX),
    };
    let pruned = open(&config.data_dir)?.prune(now, config.retention_days)?;
    eprintln!(
        "pruned {} entries ({}), kept {} under legal holds",
        pruned.pruned,
        match (pruned.first, pruned.last) {
            (Some(f), Some(l)) => format!("indexes {f} to {l}"),
            _ => "none".to_owned(),
        },
        pruned.kept_by_holds
    );
    if pruned.pruned > 0 {
        let bus = gatehouse_bus::Bus::connect(&config.nats, "gatehouse-prune").await?;
        bus.ensure_stream(&config.nats.stream).await?;
        gatehouse_evidence::publish_pruned(&bus, &pruned, config.retention_days)
            .await
            .context("the prune is done but ledger.pruned could not be recorded")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `gatehouse ledger backup`: a consistent copy of a ledger the service is not running on (the
/// service takes its own, `backups:`).
pub fn backup(data_dir: PathBuf, out: PathBuf) -> anyhow::Result<ExitCode> {
    open(&data_dir)?.backup_to(&out)?;
    let verified = gatehouse_evidence::verify::verify(&Ledger::open_read_only_at(&out)?)?;
    match verified {
        Ok(v) => {
            eprintln!(
                "backed up {} entries to {}; it verifies",
                v.entries,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            eprintln!("the backup in {} does not verify: {broken}", out.display());
            Ok(ExitCode::from(1))
        }
    }
}
