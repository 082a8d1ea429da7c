//! Evidence bundles written from the ledger (`schemas/bundle.md`): for `gatehouse export` and
//! the auditor API's `/v1/bundle`.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, bail};
use gatehouse_proof::bundle::{self, BundleWriter, Scope};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Ledger;
use crate::entry::Entry;

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
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<bundle::Manifest> {
    let from = parse_time("from", &spec.from)?;
    let to = parse_time("to", &spec.to)?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        bail!("from must be before to");
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
    if let Some(witnessed) = crate::witness::witnessed_checkpoint(&ledger, size)? {
        writer.add_witnessed_checkpoint(&witnessed);
    }

    let mut prover = ledger.prover(size)?;
    let mut subtree = |start, size| prover.subtree(start, size).map_err(|e| e.to_string());
    // Requests (and sessions) chosen by the filters, by id: their later events follow them.
    let mut chosen: HashSet<String> = HashSet::new();
    for stored in ledger.entries(0)? {
        let stored = stored?;
        let Some(index) = stored.key.filter(|i| *i < size) else {
            break;
        };
        progress(index, size);
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
    progress(size, size);

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
                .with_context(|| format!("{flag} {t:?} is not an RFC 3339 time"))
        })
        .transpose()
}

fn utc(t: OffsetDateTime) -> anyhow::Result<String> {
    Ok(t.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?)
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

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
