//! `gatehouse ledger restore --from-archive FILE --data-dir DIR --key VKEY`: rebuilds a ledger
//! from its write-once archive (`runbooks/archive.md`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use gatehouse_evidence::archive::{self, Archive, ArchiveConfig, ArchiveError};
use gatehouse_proof::checkpoint::NoteVerifier;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The archive settings: the evidence service's configuration (its `archive:` section is
    /// used) or a file holding only that section.
    #[arg(long, value_name = "FILE")]
    pub from_archive: PathBuf,
    /// Where to put the ledger (as DIR/ledger); it must not hold one yet.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// A checkpoint verifier key (`NAME+ID+KEY`, or a file holding it); every archived
    /// checkpoint must be signed by one of them. Repeat for keys rotated over the years.
    #[arg(long = "key", value_name = "VKEY", required = true)]
    pub keys: Vec<String>,
}

/// The `archive:` section of an evidence configuration, other keys ignored.
#[derive(serde::Deserialize)]
struct WithArchive {
    archive: ArchiveConfig,
}

fn archive_config(path: &Path) -> anyhow::Result<ArchiveConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration {}", path.display()))?;
    match yaml_serde::from_str::<ArchiveConfig>(&text) {
        Ok(config) => Ok(config),
        Err(bare) => match yaml_serde::from_str::<WithArchive>(&text) {
            Ok(w) => Ok(w.archive),
            Err(_) => anyhow::bail!(
                "{}: neither an archive section nor a configuration with one ({bare})",
                path.display()
            ),
        },
    }
}

fn verifier(text: &str) -> anyhow::Result<NoteVerifier> {
    let key = std::fs::read_to_string(text).unwrap_or_else(|_| text.to_owned());
    NoteVerifier::from_vkey(key.trim()).with_context(|| format!("the verifier key {text}"))
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let config = archive_config(&args.from_archive)?;
    let verifiers = args
        .keys
        .iter()
        .map(|k| verifier(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let archive = Archive::connect(&config)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let progress = |done: u64, total: u64| {
        if done == total || done.is_multiple_of(100) {
            eprintln!("ledger restore: {done}/{total} segments");
        }
    };
    match archive::restore(&archive, &args.data_dir, &verifiers, progress).await {
        Ok(r) => {
            println!("ledger restore: OK");
            println!(
                "  ledger         {}",
                gatehouse_evidence::store::ledger_dir(&args.data_dir).display()
            );
            println!(
                "  archive        s3://{}/{}",
                config.bucket,
                config.prefix.trim_matches('/')
            );
            println!("  segments       {}", r.segments);
            println!("  entries        {}", r.entries);
            println!("  head hash      {}", hex::encode(r.head_hash));
            println!("  last sequence  {}", r.last_sequence);
            println!("  merkle root    {}", hex::encode(r.root));
            println!(
                "  checkpoints    {} verified (signature and root)",
                r.checkpoints.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (ArchiveError::Refused(_)
            | ArchiveError::Config(_)
            | ArchiveError::Credentials { .. }),
        ) => Err(e.into()),
        Err(e) => {
            eprintln!("ledger restore: FAILED");
            eprintln!("  {e}");
            eprintln!("  nothing was written to {}", args.data_dir.display());
            eprintln!("  see runbooks/archive.md");
            Ok(ExitCode::from(1))
        }
    }
}
