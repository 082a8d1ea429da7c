//! `gatehouse export` (an evidence bundle from the ledger) and `gatehouse verify` (check one,
//! offline). The bundle format lives in `gatehouse-proof` and `schemas/bundle.md`.

use std::collections::{BTreeMap, HashSet};
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use gatehouse_evidence::Ledger;
use gatehouse_evidence::entry::Entry;
use gatehouse_proof::bundle::{self, BundleWriter, Scope};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use gatehouse_proof::cosignature::{self, CosignatureVerifier};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// The parts of an event the filters look at.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    time: String,
    subject: String,
    #[serde(default)]
    data: HeadData,
}

#[derive(Default, Deserialize)]
struct HeadData {
    #[serde(default)]
    identity: Option<HeadIdentity>,
    #[serde(default)]
    request: Option<HeadRequest>,
    /// `session.started` names the request that opened it.
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct HeadIdentity {
    principal: String,
}

#[derive(Deserialize)]
struct HeadRequest {
    #[serde(default)]
    namespace: String,
}

fn parse_time(flag: &str, text: &Option<String>) -> anyhow::Result<Option<OffsetDateTime>> {
    text.as_deref()
        .map(|t| {
            OffsetDateTime::parse(t, &Rfc3339)
                .with_context(|| format!("--{flag} {t:?} is not an RFC 3339 time"))
        })
        .transpose()
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

/// What a bundle holds: a period and, optionally, one principal, namespace or request.
#[derive(Clone, Debug, Default)]
pub struct BundleSpec {
    pub from: Option<String>,
    pub to: Option<String>,
    pub principal: Option<String>,
    pub namespace: Option<String>,
    pub request_id: Option<String>,
}

impl BundleSpec {
    fn filtered(&self) -> bool {
        self.principal.is_some() || self.namespace.is_some() || self.request_id.is_some()
    }
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
    let manifest = write_bundle(
        &args.data_dir,
        &spec,
        &Signing {
            signer: &signer,
            since: since.as_deref(),
        },
        BufWriter::new(file),
        args.quiet,
    )?;
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

/// Who signs a bundle, and what it must show it extends.
#[derive(Clone, Copy, Debug)]
pub struct Signing<'a> {
    /// The checkpoint key: it signs the manifest.
    pub signer: &'a NoteSigner,
    /// A checkpoint note the auditor holds: the bundle carries a consistency proof from it.
    pub since: Option<&'a str>,
}

/// Writes the bundle `spec` asks for, from the ledger in `data_dir` (opened read-only: the
/// evidence service may be running), to `out`. Entries are staged on disk, never held whole
/// in memory (the recordings are made in memory from their sessions' events); only entries
/// the latest signed checkpoint covers are included.
pub fn write_bundle(
    data_dir: &std::path::Path,
    spec: &BundleSpec,
    signing: &Signing<'_>,
    out: impl std::io::Write,
    quiet: bool,
) -> anyhow::Result<bundle::Manifest> {
    let from = parse_time("from", &spec.from)?;
    let to = parse_time("to", &spec.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        bail!("--from must be before --to");
    }
    let ledger = Ledger::open_read_only(data_dir)?;
    let Some((size, note)) = ledger.latest_checkpoint()? else {
        bail!(
            "the ledger has no signed checkpoint yet, so nothing can be proven: configure \
             `checkpoints` for gatehouse evidence, or run `gatehouse checkpoint sign`"
        );
    };
    let mut writer = BundleWriter::new(&note, signing.signer.clone(), ledger.format())
        .with_context(|| {
        format!(
            "the latest checkpoint (size {size}) is not signed by the key given, whose verifier \
             key is {}; after a rotation, sign a checkpoint with the new key first (`gatehouse \
             checkpoint sign`)",
            signing.signer.verifier().to_vkey()
        )
    })?;
    let checkpoint = writer.checkpoint().clone();
    if ledger.root(size)? != checkpoint.root {
        bail!(
            "the ledger's tree of {size} entries no longer has the root its checkpoint signed; \
             run `gatehouse ledger verify`"
        );
    }
    if let Some(since) = signing.since {
        let old = Checkpoint::from_note_unverified(since).context("--since")?;
        if old.origin != checkpoint.origin {
            bail!(
                "--since is a checkpoint of {:?}, this ledger's are of {:?}",
                old.origin,
                checkpoint.origin
            );
        }
        if old.size == 0 || old.size > size {
            bail!(
                "--since is a checkpoint of {} entries; the latest checkpoint has {size}, and a \
                 consistency proof needs 1 to {size}",
                old.size
            );
        }
        if ledger.root(old.size)? != old.root {
            bail!(
                "the ledger's tree of {} entries does not have the root of the --since \
                 checkpoint: this ledger does not extend it",
                old.size
            );
        }
        let proof = ledger.consistency_proof(old.size, size)?;
        writer.add_consistency(old.size, &old.root, &proof)?;
    }
    let filtered = spec.filtered();
    if let Some(witnessed) = gatehouse_evidence::witness::witnessed_checkpoint(&ledger, size)? {
        writer.add_witnessed_checkpoint(&witnessed);
    }

    let mut prover = ledger.prover(size)?;
    let mut subtree = |start, size| prover.subtree(start, size).map_err(|e| e.to_string());
    let progress = bar(quiet, size, "export");
    // Requests (and sessions) chosen by the filters, by id: their later events follow them.
    let mut chosen: HashSet<String> = HashSet::new();
    for stored in ledger.entries(0)? {
        let stored = stored?;
        let Some(index) = stored.key.filter(|i| *i < size) else {
            break;
        };
        progress.set_position(index);
        if let Some(tombstone) = stored.tombstone() {
            // Pruned: its leaf and proof go in, so the range stays accounted for.
            let at = tombstone.received_at;
            let in_time = from.is_none_or(|f| at >= nanos(f)) && to.is_none_or(|t| at < nanos(t));
            if !filtered && in_time {
                writer.add_tombstone(index, &tombstone.leaf_hash, &mut subtree)?;
            }
            continue;
        }
        let entry = Entry::decode(&stored.encoding).with_context(|| {
            format!("entry {index} cannot be read; run gatehouse ledger verify")
        })?;
        let Ok(head) = serde_json::from_slice::<Head>(&entry.event) else {
            continue;
        };
        let at = OffsetDateTime::parse(&head.time, &Rfc3339).ok();
        if from.is_some_and(|f| at.is_none_or(|t| t < f))
            || to.is_some_and(|e| at.is_none_or(|t| t >= e))
        {
            continue;
        }
        if filtered && !matches(spec, &head, &mut chosen) {
            continue;
        }
        writer.add_entry(&entry, &mut subtree)?;
    }
    progress.finish_and_clear();

    let mut filters = BTreeMap::new();
    for (name, value) in [
        ("principal", &spec.principal),
        ("namespace", &spec.namespace),
        ("request_id", &spec.request_id),
    ] {
        if let Some(v) = value {
            filters.insert(name.to_owned(), v.clone());
        }
    }
    let scope = Scope {
        filters,
        contiguous: !filtered,
        // In UTC, as the manifest's times are (the bounds asked for may carry an offset).
        from: from.map(utc).transpose()?,
        to: to.map(utc).transpose()?,
        created_at: gatehouse_events::envelope::now_rfc3339(),
    };
    Ok(writer.finish(scope, &mut subtree, out)?)
}

fn utc(t: OffsetDateTime) -> anyhow::Result<String> {
    Ok(t.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?)
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// Whether the filters choose this event: a request by its `request.received`, everything
/// after it by its subject, a session by the request that opened it.
fn matches(args: &BundleSpec, head: &Head, chosen: &mut HashSet<String>) -> bool {
    if chosen.contains(&head.subject) {
        return true;
    }
    let data = &head.data;
    let (principal, namespace, request_id) = match head.kind.as_str() {
        "dev.gatehouse.request.received.v1" => (
            data.identity.as_ref().map(|i| i.principal.as_str()),
            data.request.as_ref().map(|r| r.namespace.as_str()),
            Some(head.subject.as_str()),
        ),
        "dev.gatehouse.session.started.v1" => {
            if data.request_id.as_ref().is_some_and(|r| chosen.contains(r)) {
                chosen.insert(head.subject.clone());
                return true;
            }
            (
                data.principal.as_deref(),
                data.namespace.as_deref(),
                data.request_id.as_deref(),
            )
        }
        _ => return false,
    };
    let ok = args
        .principal
        .as_deref()
        .is_none_or(|p| principal == Some(p))
        && args
            .namespace
            .as_deref()
            .is_none_or(|n| namespace == Some(n))
        && args
            .request_id
            .as_deref()
            .is_none_or(|r| request_id == Some(r));
    if ok {
        chosen.insert(head.subject.clone());
    }
    ok
}

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
