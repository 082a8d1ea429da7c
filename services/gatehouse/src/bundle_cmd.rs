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
use gatehouse_proof::checkpoint::{Checkpoint, NoteVerifier};
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
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let manifest = write_bundle(&args.data_dir, &spec, BufWriter::new(file), args.quiet)?;
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

/// Writes the bundle `spec` asks for, from the ledger in `data_dir` (opened read-only: the
/// evidence service may be running), to `out`. Entries are staged on disk, never held whole
/// in memory; only entries the latest signed checkpoint covers are included.
pub fn write_bundle(
    data_dir: &std::path::Path,
    spec: &BundleSpec,
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
    let checkpoint = Checkpoint::from_note_unverified(&note)?;
    let vkey = ledger
        .checkpoint_key(size)?
        .context("the checkpoint's verifier key is not recorded in the ledger")?;
    if ledger.root(size)? != checkpoint.root {
        bail!(
            "the ledger's tree of {size} entries no longer has the root its checkpoint signed; \
             run `gatehouse ledger verify`"
        );
    }
    let filtered = spec.filtered();
    let mut writer = BundleWriter::new()?;
    writer.add_file("checkpoint", |w| w.write_all(note.as_bytes()))?;
    writer.add_file("keys/checkpoint.vkey", |w| {
        w.write_all(format!("{vkey}\n").as_bytes())
    })?;
    if let Some(witnessed) = gatehouse_evidence::witness::witnessed_checkpoint(&ledger, size)? {
        writer.add_file(gatehouse_proof::cosignature::BUNDLE_MEMBER, |w| {
            w.write_all(witnessed.as_bytes())
        })?;
    }

    let mut prover = ledger.prover(size)?;
    let progress = bar(quiet, size, "export");
    // Requests (and sessions) chosen by the filters, by id: their later events follow them.
    let mut chosen: HashSet<String> = HashSet::new();
    let mut sessions: Vec<String> = Vec::new();
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
                let proof = prover.inclusion_proof(index)?;
                writer.add_tombstone(index, &tombstone.leaf_hash, &proof)?;
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
        if head.kind == "dev.gatehouse.session.started.v1" {
            sessions.push(head.subject.clone());
        }
        let proof = prover.inclusion_proof(index)?;
        writer.add_entry(&entry, &proof)?;
    }
    progress.finish_and_clear();
    drop(prover);
    drop(ledger);

    for session in &sessions {
        if !session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            continue;
        }
        let recording = crate::replay::load(data_dir, session)?;
        let options = crate::replay::ReplayOptions { input: true };
        writer.add_file(&format!("recordings/{session}.cast"), |w| {
            crate::replay::asciicast(&recording, options, w).map_err(std::io::Error::other)
        })?;
    }

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
        from: spec.from.clone(),
        to: spec.to.clone(),
        created_at: gatehouse_events::envelope::now_rfc3339(),
    };
    Ok(writer.finish(&checkpoint, scope, out)?)
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

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = match &args.key {
        Some(k) => {
            let text = std::fs::read_to_string(k).unwrap_or_else(|_| k.clone());
            Some(NoteVerifier::from_vkey(&text).context("--key")?)
        }
        None => None,
    };
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
    let result = bundle::verify(&args.bundle, key.as_ref(), |p| {
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
