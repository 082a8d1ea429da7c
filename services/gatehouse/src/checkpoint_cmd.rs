//! `gatehouse checkpoint keygen|sign|show`: the keys that sign checkpoints, and checkpoints on
//! demand.
//!
//! Rotation: `keygen` a new key, point `checkpoints.key_file` at it, restart the evidence
//! service. Its first checkpoint under the new key is checked for consistency with the last one
//! under the old key before it is signed; auditors keep both verifier keys (old checkpoints stay
//! verifiable with the old one).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use gatehouse_evidence::Ledger;
use gatehouse_evidence::store::Issued;
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Make a new Ed25519 checkpoint key: the private key goes to --out (mode 0600), the
    /// verifier key (for auditors) to standard output.
    Keygen {
        /// The key's name, usually the log's origin (`gatehouse.example.com/ledger`).
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a checkpoint of the ledger now (the evidence service must not be running on it;
    /// it signs on its own schedule).
    Sign {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The origin line; defaults to the key's name.
        #[arg(long)]
        origin: Option<String>,
    },
    /// Print the latest checkpoint; with --vkey, verify its signature and that the ledger's tree
    /// still has that root (exit 1 if not).
    Show {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The verifier key (`NAME+ID+KEY`), or a file holding it.
        #[arg(long)]
        vkey: Option<String>,
    },
}

pub fn run(command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    match command {
        CheckpointCommand::Keygen { name, out } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite a key", out.display());
            }
            let signer = NoteSigner::from_seed(&name, rand::random())?;
            crate::kubeconfig::write_private(&out, &format!("{}\n", signer.to_skey()))
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("private key written to {} (mode 0600)", out.display());
            println!("{}", signer.verifier().to_vkey());
            Ok(ExitCode::SUCCESS)
        }
        CheckpointCommand::Sign {
            data_dir,
            key,
            origin,
        } => {
            let signer = gatehouse_evidence::load_signer(&key).map_err(anyhow::Error::msg)?;
            let origin = origin.unwrap_or_else(|| signer.name().to_owned());
            let mut ledger = Ledger::open(&data_dir).with_context(|| {
                format!(
                    "opening the ledger in {} (is gatehouse evidence running on it? it signs \
                     checkpoints itself)",
                    data_dir.display()
                )
            })?;
            match ledger.issue_checkpoint(&signer, &origin)? {
                Issued::Signed { note, .. } => print!("{note}"),
                Issued::Unchanged { size } => {
                    eprintln!("the tree has not grown since the checkpoint at size {size}");
                    if let Some((_, note)) = ledger.latest_checkpoint()? {
                        print!("{note}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CheckpointCommand::Show { data_dir, vkey } => {
            let ledger = Ledger::open_read_only(&data_dir)?;
            let Some((_, note)) = ledger.latest_checkpoint()? else {
                eprintln!("no checkpoint has been issued for this ledger");
                return Ok(ExitCode::from(1));
            };
            print!("{note}");
            let Some(vkey) = vkey else {
                return Ok(ExitCode::SUCCESS);
            };
            let text = match std::fs::read_to_string(&vkey) {
                Ok(text) => text,
                Err(_) => vkey.clone(),
            };
            let verifier = NoteVerifier::from_vkey(&text)?;
            let checkpoint: Checkpoint = match verifier.open(&note) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("checkpoint: FAILED: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            match ledger.root(checkpoint.size) {
                Ok(root) if root == checkpoint.root => {
                    eprintln!(
                        "checkpoint: OK (signed by {}, the ledger's tree of {} entries has this root)",
                        verifier.name(),
                        checkpoint.size
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Ok(_) => {
                    eprintln!(
                        "checkpoint: FAILED: the ledger's tree of {} entries no longer has the signed root",
                        checkpoint.size
                    );
                    Ok(ExitCode::from(1))
                }
                Err(e) => {
                    eprintln!("checkpoint: FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
