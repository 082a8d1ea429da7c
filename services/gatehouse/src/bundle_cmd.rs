//! `gatehouse export` (an evidence bundle from the ledger) and `gatehouse verify` (check one,
//! offline). The bundle format lives in `gatehouse-proof` and `schemas/bundle.md`.

use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gatehouse_evidence::export::{BundleSpec, Signing, write_bundle};
use gatehouse_proof::bundle;
use gatehouse_proof::checkpoint::NoteVerifier;
use gatehouse_proof::cosignature::{self, CosignatureVerifier};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The evidence service's data directory (the ledger is DIR/ledger; it may be running).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Events at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Events before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Only requests (and their sessions) by this principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only requests (and their sessions) in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only this request (and its session).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Where to write the bundle (.tar.gz).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The checkpoint key (`PRIVATE+KEY+…`, the evidence service's `checkpoints.key_file`):
    /// it signs the bundle's manifest, and must be the key that signed the latest checkpoint.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// A checkpoint the auditor holds (a file with its signed note): the bundle gets a
    /// consistency proof that its checkpoint extends that one (`consistency.json`).
    #[arg(long, value_name = "CHECKPOINT")]
    pub since: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle (.tar.gz).
    pub bundle: PathBuf,
    /// The verifier key you trust (`NAME+ID+KEY`, or a file holding it). Without it the key in
    /// the bundle is used, which proves the bundle consistent but not whose ledger it is.
    #[arg(long, value_name = "VKEY")]
    pub key: Option<String>,
    /// A checkpoint you hold (a file with its signed note, e.g. from `gatehouse checkpoint
    /// list`): the bundle's checkpoint must extend it, by the bundle's consistency proof.
    #[arg(long, value_name = "CHECKPOINT")]
    pub trusted: Option<PathBuf>,
    /// The key that signed the --trusted checkpoint, if not --key (e.g. before a rotation).
    #[arg(long, value_name = "VKEY", requires = "trusted")]
    pub trusted_key: Option<String>,
    /// A witness's cosignature/v1 verifier key (`NAME+ID+KEY`, or a file holding it);
    /// repeatable. See `--min-witnesses`.
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// How many of the `--witness` keys must have cosigned the bundle's checkpoint.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub min_witnesses: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn bar(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let spec = BundleSpec {
        from: args.from.clone(),
        to: args.to.clone(),
        principal: args.principal.clone(),
        namespace: args.namespace.clone(),
        request_id: args.request_id.clone(),
    };
    let signer = gatehouse_evidence::load_signer(&args.key).map_err(anyhow::Error::msg)?;
    let since = args
        .since
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("--since {}", p.display())))
        .transpose()?;
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let progress = bar(args.quiet, 0, "export");
    let manifest = write_bundle(
        &args.data_dir,
        &spec,
        &Signing {
            signer: &signer,
            since: since.as_deref(),
        },
        BufWriter::new(file),
        &mut |done, of| {
            progress.set_length(of);
            progress.set_position(done);
        },
    )?;
    progress.finish_and_clear();
    let bytes = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!(
        "wrote {} ({} events, entries {} to {}, {} sessions, {bytes} bytes) against checkpoint {} of {}",
        args.output.display(),
        manifest.counts.events,
        manifest
            .range
            .first_index
            .map_or("-".into(), |i| i.to_string()),
        manifest
            .range
            .last_index
            .map_or("-".into(), |i| i.to_string()),
        manifest.counts.sessions,
        manifest.checkpoint.size,
        manifest.checkpoint.origin,
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether the filters choose this event: a request by its `request.received`, everything
/// after it by its subject, a session by the request that opened it.
/// A verifier key given on the command line, or a file holding one.
fn vkey_arg(flag: &str, value: &str) -> anyhow::Result<NoteVerifier> {
    let text = std::fs::read_to_string(value).unwrap_or_else(|_| value.to_owned());
    NoteVerifier::from_vkey(&text).with_context(|| format!("--{flag}"))
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = args
        .key
        .as_deref()
        .map(|k| vkey_arg("key", k))
        .transpose()?;
    let trusted_key = args
        .trusted_key
        .as_deref()
        .map(|k| vkey_arg("trusted-key", k))
        .transpose()?;
    let trusted = args
        .trusted
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("--trusted {}", p.display())))
        .transpose()?;
    let total = std::fs::metadata(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?
        .len();
    let progress = bar(args.quiet, total, "verify");
    progress.set_style(
        ProgressStyle::with_template("verify [{bar:40}] {bytes}/{total_bytes} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let witnesses = args
        .witnesses
        .iter()
        .map(|w| {
            let text = std::fs::read_to_string(w).unwrap_or_else(|_| w.clone());
            CosignatureVerifier::from_vkey(&text).with_context(|| format!("--witness {w}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = bundle::Options {
        key: key.as_ref(),
        trusted: trusted.as_deref(),
        trusted_key: trusted_key.as_ref(),
    };
    let result = bundle::verify_with(&args.bundle, options, |p| {
        progress.set_position(p.read.min(total));
        if p.events > 0 {
            progress.set_message(format!("{} events checked", p.events));
        }
    })
    .and_then(|v| {
        let cosigned = cosignature::check_bundle(&args.bundle, &v, &witnesses, args.min_witnesses)
            .map_err(|e| vec![e])?;
        Ok((v, cosigned))
    });
    progress.finish_and_clear();
    match result {
        Ok((v, cosigned)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "events": v.manifest.counts.events,
                        "sessions": v.manifest.counts.sessions,
                        "tombstones": v.manifest.counts.tombstones,
                        "first_index": v.manifest.range.first_index,
                        "last_index": v.manifest.range.last_index,
                        "checkpoint": {"origin": v.checkpoint.origin, "size": v.checkpoint.size, "root": hex::encode(v.checkpoint.root)},
                        "key": v.key,
                        "key_from_bundle": v.key_from_bundle,
                        "filters": v.manifest.filters,
                        "format": v.manifest.format,
                        "extends": v.extends.map(|(size, root)| serde_json::json!({"size": size, "root": hex::encode(root)})),
                        "trusted": v.trusted.as_ref().map(|t| serde_json::json!({"size": t.size, "root": hex::encode(t.root)})),
                        "warnings": v.warnings,
                        "witnesses": cosigned.iter().map(|c| serde_json::json!({"name": c.witness, "timestamp": c.timestamp})).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!("bundle verify: OK");
                println!("  bundle       {}", args.bundle.display());
                println!(
                    "  events       {} (entries {} to {}{})",
                    v.manifest.counts.events,
                    v.manifest
                        .range
                        .first_index
                        .map_or("-".into(), |i| i.to_string()),
                    v.manifest
                        .range
                        .last_index
                        .map_or("-".into(), |i| i.to_string()),
                    if v.manifest.contiguous {
                        ", all of them"
                    } else {
                        ", filtered"
                    }
                );
                for (k, val) in &v.manifest.filters {
                    println!("  filter       {k} = {val}");
                }
                println!("  sessions     {}", v.manifest.counts.sessions);
                println!("  tombstones   {}", v.manifest.counts.tombstones);
                println!(
                    "  checkpoint   {} size {} root {}",
                    v.checkpoint.origin,
                    v.checkpoint.size,
                    hex::encode(v.checkpoint.root)
                );
                println!("  signed by    {}", v.key);
                println!("  format       {}", v.manifest.format);
                if let Some((size, root)) = v.extends {
                    println!(
                        "  extends      the tree of {size} entries with root {}",
                        hex::encode(root)
                    );
                }
                if let Some(t) = &v.trusted {
                    println!(
                        "  trusted      extends your checkpoint of {} entries",
                        t.size
                    );
                }
                for warning in &v.warnings {
                    println!("  WARNING      {warning}");
                }
                for c in &cosigned {
                    println!("  cosigned by  {} (at {})", c.witness, c.timestamp);
                }
                if v.key_from_bundle {
                    println!(
                        "  WARNING      the key came from inside the bundle; pass --key with the \
                         operator's published key to know whose ledger this is"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failures) => {
            if args.json {
                println!("{}", serde_json::json!({"ok": false, "failures": failures}));
            } else {
                eprintln!("bundle verify: FAILED ({} problems)", failures.len());
                for f in &failures {
                    eprintln!("  {f}");
                }
            }
            Ok(ExitCode::from(1))
        }
    }
}
