//! `gatehouse checkpoint keygen|sign|show|list`: the keys that sign checkpoints, checkpoints on
//! demand, and the past ones for auditors to keep (`list`, from the ledger's data directory;
//! auditors without it read the same from the auditor API's `GET /v1/checkpoints`).
//!
//! Rotation: `rotate --key-file FILE` moves the key aside (`FILE.retired-TIME`) and writes a
//! new one in its place. The evidence service re-reads the key file before every checkpoint, so
//! its next checkpoint is signed with the new key, after the same consistency check against the
//! last one signed with the old key. Auditors keep both verifier keys (old checkpoints stay
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
    /// Sign a checkpoint of the ledger now: with --admin, asks the running evidence service
    /// (its `admin_listen` address) to sign one; with --data-dir and --key, signs a ledger no
    /// service has open.
    Sign {
        /// The evidence service's admin address (`http://127.0.0.1:9464`).
        #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "key", "origin"])]
        admin: Option<String>,
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "admin",
            requires = "key"
        )]
        data_dir: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// The origin line; defaults to the key's name.
        #[arg(long)]
        origin: Option<String>,
    },
    /// Replace the checkpoint key in FILE with a new one of the same name (or --name); the old
    /// key is kept beside it as FILE.retired-TIME. Prints the new verifier key for auditors.
    Rotate {
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// List the signed checkpoints the ledger keeps, oldest first: one line each (size, root,
    /// signers), or with --json one JSON object per line (`{"size", "note"}`); with --save DIR,
    /// also write each note to DIR/checkpoint-SIZE (what `gatehouse verify --trusted` and
    /// `gatehouse export --since` take).
    List {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Only checkpoints of more than N entries.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
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

/// Writes a new Ed25519 key named `name` to `out` (mode 0600; never over an existing file)
/// and prints its verifier key.
pub fn keygen(name: &str, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let signer = NoteSigner::from_seed(name, rand::random())?;
    crate::kubeconfig::write_private(out, &format!("{}\n", signer.to_skey()))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("private key written to {} (mode 0600)", out.display());
    println!("{}", signer.verifier().to_vkey());
    Ok(ExitCode::SUCCESS)
}

pub async fn run(command: CheckpointCommand) -> anyhow::Result<ExitCode> {
    match command {
        CheckpointCommand::Keygen { name, out } => keygen(&name, &out),
        CheckpointCommand::Sign {
            admin: Some(admin), ..
        } => sign_by_service(&admin).await,
        CheckpointCommand::Sign {
            data_dir,
            key,
            origin,
            ..
        } => {
            let (Some(data_dir), Some(key)) = (data_dir, key) else {
                bail!("give --admin URL, or --data-dir DIR and --key FILE");
            };
            let signer = gatehouse_evidence::load_signer(&key).map_err(anyhow::Error::msg)?;
            let origin = origin.unwrap_or_else(|| signer.name().to_owned());
            let mut ledger = Ledger::open(&data_dir).with_context(|| {
                format!(
                    "opening the ledger in {} (if gatehouse evidence is running on it, use \
                     `gatehouse checkpoint sign --admin URL` with its admin_listen address)",
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
        CheckpointCommand::Rotate { key_file, name } => {
            let old = gatehouse_evidence::load_signer(&key_file).map_err(anyhow::Error::msg)?;
            let name = name.unwrap_or_else(|| old.name().to_owned());
            let new = NoteSigner::from_seed(&name, rand::random())?;
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut retired = key_file.clone().into_os_string();
            retired.push(format!(".retired-{stamp}"));
            let retired = PathBuf::from(retired);
            if retired.exists() {
                bail!("{} exists; try again in a second", retired.display());
            }
            // Write the new key beside the file, then swap: the service never reads half a key.
            let mut fresh = key_file.clone().into_os_string();
            fresh.push(".new");
            let fresh = PathBuf::from(fresh);
            crate::kubeconfig::write_private(&fresh, &format!("{}\n", new.to_skey()))
                .with_context(|| format!("writing {}", fresh.display()))?;
            std::fs::hard_link(&key_file, &retired)
                .with_context(|| format!("keeping the old key as {}", retired.display()))?;
            std::fs::rename(&fresh, &key_file)
                .with_context(|| format!("replacing {}", key_file.display()))?;
            eprintln!(
                "new key in {} (the old one is kept as {}); old verifier key: {}",
                key_file.display(),
                retired.display(),
                old.verifier().to_vkey()
            );
            println!("{}", new.verifier().to_vkey());
            Ok(ExitCode::SUCCESS)
        }
        CheckpointCommand::List {
            data_dir,
            after,
            json,
            save,
        } => list(&data_dir, after, json, save.as_deref()),
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

/// `gatehouse checkpoint list`.
fn list(
    data_dir: &std::path::Path,
    after: Option<u64>,
    json: bool,
    save: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::open_read_only(data_dir)?;
    let checkpoints = ledger.checkpoints()?;
    drop(ledger);
    if let Some(dir) = save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (size, note) in checkpoints
        .into_iter()
        .filter(|(size, _)| after.is_none_or(|a| *size > a))
    {
        if let Some(dir) = save {
            let path = dir.join(format!("checkpoint-{size}"));
            std::fs::write(&path, &note).with_context(|| format!("writing {}", path.display()))?;
        }
        if json {
            println!("{}", serde_json::json!({"size": size, "note": note}));
            continue;
        }
        let root = Checkpoint::from_note_unverified(&note)
            .map(|c| hex::encode(c.root))
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let signers: Vec<String> = gatehouse_proof::checkpoint::note_signers(&note)
            .into_iter()
            .map(|(name, id)| format!("{name}+{id}"))
            .collect();
        println!("{size}\t{root}\t{}", signers.join(","));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running evidence service to sign a checkpoint (`POST /checkpoint` on its admin
/// listener) and prints the note.
async fn sign_by_service(admin: &str) -> anyhow::Result<ExitCode> {
    use http_body_util::{BodyExt, Full};
    let url = format!("{}/checkpoint", admin.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().with_context(|| format!("--admin {admin:?}"))?;
    let (status, body) = async {
        let tls = gatehouse_proxy::http_client::client_tls(None, true)?;
        let client = gatehouse_proxy::http_client::https_client::<Full<bytes::Bytes>>(
            tls,
            std::time::Duration::from_secs(10),
        );
        let request = hyper::Request::post(uri).body(Full::new(bytes::Bytes::new()))?;
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(60), client.request(request))
                .await
                .context("the evidence service did not answer within 60 s")?
                .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    }
    .await?;
    if !status.is_success() {
        bail!(
            "the evidence service refused: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let answer: gatehouse_evidence::OnDemand =
        serde_json::from_slice(&body).context("the evidence service's answer")?;
    if !answer.signed {
        eprintln!(
            "the tree has not grown since the checkpoint at size {}",
            answer.size
        );
    }
    print!("{}", answer.note);
    Ok(ExitCode::SUCCESS)
}
