//! Evidence bundles: a `.tar.gz` an auditor verifies offline with nothing but the bundle and a
//! verifier key (`schemas/bundle.md` has every byte).
//!
//! ```text
//! checkpoint          the signed checkpoint every proof is against
//! keys/checkpoint.vkey  its verifier key (a verifier given its own key ignores this one)
//! events.jsonl        one event per line, the exact bytes the ledger stores
//! proofs.jsonl        one line per event: its entry fields and inclusion proof
//! tombstones.jsonl    pruned entries: their leaf hash and inclusion proof
//! recordings/*.cast   asciicast v2 of the sessions in range
//! INDEX.md            for people
//! manifest.json       filters, range, counts, and the BLAKE3 of every other file (last)
//! ```
//!
//! The archive is one gzip member; a second, fixed-size member (the [`seal`]) carries the
//! BLAKE3 of every byte before it.
//!
//! [`BundleWriter`] stages files on disk (never the whole bundle in memory) and streams the
//! archive out; [`verify`] checks it in one pass (see there).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::Compression;
use flate2::read::GzDecoder;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, NoteVerifier};
use crate::entry::{Entry, EntryRef, Hash, entry_hash};
use crate::merkle::{ProofChecker, verify_inclusion};

pub const FORMAT: &str = "gatehouse.bundle.v1";

/// One line of `proofs.jsonl`: what, with the event's bytes, makes its ledger entry, and the
/// entry's inclusion proof against the bundle's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProofLine {
    pub index: u64,
    pub stream_sequence: u64,
    pub received_at: i64,
    /// Hex.
    pub previous_hash: String,
    /// Hex; the verifier recomputes it.
    pub entry_hash: String,
    /// Hex hashes, leaf's sibling first (RFC 9162 PATH).
    pub inclusion: Vec<String>,
}

/// One line of `tombstones.jsonl`: an entry whose payload retention pruned.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TombstoneLine {
    pub index: u64,
    /// Hex leaf hash (the payload is gone; the hash stays in the tree).
    pub leaf_hash: String,
    pub inclusion: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub bytes: u64,
    /// Hex BLAKE3 of the file's bytes.
    pub blake3: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRef {
    pub origin: String,
    pub size: u64,
    /// Hex.
    pub root: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub events: u64,
    pub sessions: u64,
    pub tombstones: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// RFC 3339 bounds of the events' times asked for (inclusive from, exclusive to).
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// What was asked for (`principal`, `namespace`, …); empty for a plain time range.
    pub filters: BTreeMap<String, String>,
    /// Every entry between first and last index is present (no filter but time).
    pub contiguous: bool,
    pub range: Range,
    pub checkpoint: CheckpointRef,
    pub counts: Counts,
    /// Every file but this one.
    pub files: BTreeMap<String, FileDigest>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Length of the seal: the last gzip member of a bundle (see [`seal`]).
pub const SEAL_LEN: usize = 10 + 5 + SEAL_TEXT_LEN + 8;
const SEAL_TEXT_LEN: usize = "gatehouse-bundle-blake3 ".len() + 64 + 1;

/// The seal over the bytes before it: a gzip member holding `gatehouse-bundle-blake3 <hex>\n`
/// in one stored deflate block, byte for byte as here. Deflate lets some bits change without
/// changing what decompresses (padding, unused code lengths); the seal's digest covers the
/// compressed bytes themselves, and a verifier rebuilds the seal exactly, so no byte of a bundle
/// can change unnoticed. Standard tools read it as a second member after the tar's end.
pub fn seal(digest: &Hash) -> [u8; SEAL_LEN] {
    let text = format!("gatehouse-bundle-blake3 {}\n", hex::encode(digest));
    let mut out = [0u8; SEAL_LEN];
    out[..10].copy_from_slice(&gzip_header());
    // BFINAL = 1, BTYPE = 00 (stored), padding zero; LEN and its complement, little-endian.
    let len = SEAL_TEXT_LEN as u16;
    out[10] = 0x01;
    out[11..13].copy_from_slice(&len.to_le_bytes());
    out[13..15].copy_from_slice(&(!len).to_le_bytes());
    out[15..15 + SEAL_TEXT_LEN].copy_from_slice(text.as_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(text.as_bytes());
    out[15 + SEAL_TEXT_LEN..19 + SEAL_TEXT_LEN].copy_from_slice(&crc.sum().to_le_bytes());
    out[19 + SEAL_TEXT_LEN..].copy_from_slice(&(SEAL_TEXT_LEN as u32).to_le_bytes());
    out
}

/// The exact 10-byte gzip header bundles start with: no name, no time, OS "unknown". A
/// verifier accepts no other, so no header byte can change unnoticed (the rest of the stream is
/// covered by gzip's CRC-32 and length).
pub fn gzip_header() -> [u8; 10] {
    let mut out = Vec::new();
    let encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(&mut out, Compression::default());
    let _ = encoder.finish();
    let mut header = [0u8; 10];
    header.copy_from_slice(&out[..10]);
    header
}

fn hexs(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| faster_hex::hex_string(h)).collect()
}

fn unhex(text: &str) -> Option<Hash> {
    let mut hash = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    faster_hex::hex_decode(text.as_bytes(), &mut hash).ok()?;
    Some(hash)
}

/// Streams files through BLAKE3 as they are written.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn digest(&self) -> FileDigest {
        FileDigest {
            bytes: self.bytes,
            blake3: self.hasher.finalize().to_hex().to_string(),
        }
    }
}

/// Reading through it hashes what is read (a file streamed out of the archive).
impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a bundle was asked to hold, for its manifest.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub filters: BTreeMap<String, String>,
    /// Every entry between the first and the last is in it.
    pub contiguous: bool,
    pub from: Option<String>,
    pub to: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// Builds a bundle: entries and files are staged in a temporary directory as they come.
pub struct BundleWriter {
    dir: tempfile::TempDir,
    events: Hashing<BufWriter<File>>,
    proofs: Hashing<BufWriter<File>>,
    tombstones: Hashing<BufWriter<File>>,
    /// Other files by bundle path, with digests.
    files: BTreeMap<String, FileDigest>,
    counts: Counts,
    first: Option<u64>,
    last: Option<u64>,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("counts", &self.counts)
            .finish()
    }
}

impl BundleWriter {
    pub fn new() -> Result<Self, BundleError> {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-bundle-")
            .tempdir()?;
        let open = |name: &str| -> io::Result<Hashing<BufWriter<File>>> {
            Ok(Hashing {
                inner: BufWriter::new(File::create(dir.path().join(name))?),
                hasher: blake3::Hasher::new(),
                bytes: 0,
            })
        };
        Ok(Self {
            events: open("events.jsonl")?,
            proofs: open("proofs.jsonl")?,
            tombstones: open("tombstones.jsonl")?,
            dir,
            files: BTreeMap::new(),
            counts: Counts::default(),
            first: None,
            last: None,
        })
    }

    /// Adds an entry (in increasing index order) with its inclusion proof.
    pub fn add_entry(&mut self, entry: &Entry, inclusion: &[Hash]) -> Result<(), BundleError> {
        if self.last.is_some_and(|last| entry.index <= last) {
            return Err(BundleError::Invalid(format!(
                "entry {} added after entry {:?}: entries go in increasing order",
                entry.index, self.last
            )));
        }
        if entry.event.contains(&b'\n') {
            return Err(BundleError::Invalid(format!(
                "entry {}'s event holds a raw newline and cannot be one line of events.jsonl",
                entry.index
            )));
        }
        let encoding = entry
            .encode()
            .map_err(|e| BundleError::Invalid(e.to_string()))?;
        self.events.write_all(&entry.event)?;
        self.events.write_all(b"\n")?;
        let line = ProofLine {
            index: entry.index,
            stream_sequence: entry.stream_sequence,
            received_at: entry.received_at,
            previous_hash: faster_hex::hex_string(&entry.previous_hash),
            entry_hash: faster_hex::hex_string(&entry_hash(&encoding)),
            inclusion: hexs(inclusion),
        };
        serde_json::to_writer(&mut self.proofs, &line).map_err(io::Error::other)?;
        self.proofs.write_all(b"\n")?;
        self.counts.events += 1;
        self.first.get_or_insert(entry.index);
        self.last = Some(entry.index);
        Ok(())
    }

    /// Adds a pruned entry: its leaf hash and inclusion proof.
    pub fn add_tombstone(
        &mut self,
        index: u64,
        leaf: &Hash,
        inclusion: &[Hash],
    ) -> Result<(), BundleError> {
        let line = TombstoneLine {
            index,
            leaf_hash: hex::encode(leaf),
            inclusion: hexs(inclusion),
        };
        serde_json::to_writer(&mut self.tombstones, &line).map_err(io::Error::other)?;
        self.tombstones.write_all(b"\n")?;
        self.counts.tombstones += 1;
        Ok(())
    }

    /// Adds a file under `keys/` or `recordings/`, or `checkpoint`; `write` fills it.
    pub fn add_file(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), BundleError> {
        if !allowed_path(name) || matches!(name, "events.jsonl" | "proofs.jsonl" | "INDEX.md") {
            return Err(BundleError::Invalid(format!(
                "{name} is not a file a bundle may add"
            )));
        }
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = Hashing {
            inner: BufWriter::new(File::create(&path)?),
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        write(&mut out)?;
        out.flush()?;
        if name.starts_with("recordings/") {
            self.counts.sessions += 1;
        }
        self.files.insert(name.to_owned(), out.digest());
        Ok(())
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Writes the archive to `out`: the staged files, then `INDEX.md`, then `manifest.json`.
    pub fn finish(
        mut self,
        checkpoint: &Checkpoint,
        scope: Scope,
        out: impl Write,
    ) -> Result<Manifest, BundleError> {
        let Scope {
            filters,
            contiguous,
            from,
            to,
            created_at,
        } = scope;
        for (name, file) in [
            ("events.jsonl", self.events),
            ("proofs.jsonl", self.proofs),
            ("tombstones.jsonl", self.tombstones),
        ] {
            let mut file = file;
            file.flush()?;
            self.files.insert(name.to_owned(), file.digest());
        }
        let mut manifest = Manifest {
            format: FORMAT.to_owned(),
            created_at,
            filters,
            contiguous,
            range: Range {
                first_index: self.first,
                last_index: self.last,
                from,
                to,
            },
            checkpoint: CheckpointRef {
                origin: checkpoint.origin.clone(),
                size: checkpoint.size,
                root: hex::encode(checkpoint.root),
            },
            counts: self.counts.clone(),
            files: self.files.clone(),
        };
        let index = index_md(&manifest);
        manifest.files.insert(
            "INDEX.md".to_owned(),
            FileDigest {
                bytes: index.len() as u64,
                blake3: blake3::hash(index.as_bytes()).to_hex().to_string(),
            },
        );
        let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;

        let hashed = Hashing {
            inner: out,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(hashed, Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut order: Vec<&String> = manifest.files.keys().collect();
        // The checkpoint and key first, so a reader has them before the proofs.
        order.sort_by_key(|name| (file_rank(name), (*name).clone()));
        for name in order {
            if name == "INDEX.md" {
                continue;
            }
            let path = self.dir.path().join(name);
            let size = std::fs::metadata(&path)?.len();
            append(&mut tar, name, size, File::open(&path)?)?;
        }
        append(&mut tar, "INDEX.md", index.len() as u64, index.as_bytes())?;
        append(
            &mut tar,
            "manifest.json",
            manifest_json.len() as u64,
            manifest_json.as_slice(),
        )?;
        let gz = tar.into_inner()?;
        let hashed = gz.finish()?;
        let digest: Hash = *hashed.hasher.finalize().as_bytes();
        let mut out = hashed.inner;
        out.write_all(&seal(&digest))?;
        out.flush()?;
        Ok(manifest)
    }
}

fn file_rank(name: &str) -> u8 {
    match name {
        "checkpoint" => 0,
        n if n.starts_with("keys/") || n == crate::cosignature::BUNDLE_MEMBER => 1,
        "events.jsonl" => 2,
        "proofs.jsonl" => 3,
        "tombstones.jsonl" => 4,
        _ => 5,
    }
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

/// The files a bundle may hold.
fn allowed_path(name: &str) -> bool {
    let simple = |rest: &str| {
        !rest.is_empty()
            && !rest.starts_with('.')
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    match name {
        "manifest.json" | "INDEX.md" | "checkpoint" | "events.jsonl" | "proofs.jsonl"
        | "tombstones.jsonl" => true,
        // Witness cosignatures (`cosignature.rs`); optional.
        crate::cosignature::BUNDLE_MEMBER => true,
        _ => name
            .strip_prefix("keys/")
            .or_else(|| name.strip_prefix("recordings/"))
            .is_some_and(simple),
    }
}

fn index_md(m: &Manifest) -> String {
    let mut out = String::new();
    out.push_str("# Gatehouse evidence bundle\n\n");
    out.push_str(&format!(
        "Created {} (format `{}`).\n\n",
        m.created_at, m.format
    ));
    out.push_str("## What it holds\n\n");
    out.push_str(&format!(
        "- {} events (ledger entries {} to {}){}\n",
        m.counts.events,
        m.range.first_index.map_or("-".into(), |i| i.to_string()),
        m.range.last_index.map_or("-".into(), |i| i.to_string()),
        if m.contiguous {
            ", every entry in between"
        } else {
            ", those matching the filters"
        }
    ));
    out.push_str(&format!(
        "- {} session recordings (asciicast v2, `recordings/`)\n",
        m.counts.sessions
    ));
    out.push_str(&format!(
        "- {} pruned entries (`tombstones.jsonl`)\n",
        m.counts.tombstones
    ));
    if let Some(from) = &m.range.from {
        out.push_str(&format!("- events from {from}\n"));
    }
    if let Some(to) = &m.range.to {
        out.push_str(&format!("- events before {to}\n"));
    }
    for (k, v) in &m.filters {
        out.push_str(&format!("- filter {k} = {v}\n"));
    }
    out.push_str(&format!(
        "\nEvery event is proven to be in the ledger whose Merkle tree of {} entries has the root \
         `{}`, signed in `checkpoint` by the key in `keys/checkpoint.vkey` (origin `{}`).\n\n",
        m.checkpoint.size, m.checkpoint.root, m.checkpoint.origin
    ));
    out.push_str("## How to check it\n\n```sh\ngatehouse verify BUNDLE.tar.gz --key YOUR-COPY-OF-THE.vkey\n```\n\n");
    out.push_str("Use the verifier key you obtained from the ledger's operator, not only the one in `keys/`. The formats are specified in `schemas/ledger.md` and `schemas/bundle.md`.\n\n## Files\n\n| file | bytes | BLAKE3 |\n|---|---|---|\n");
    for (name, d) in &m.files {
        out.push_str(&format!("| `{name}` | {} | `{}` |\n", d.bytes, d.blake3));
    }
    out
}

/// A bundle that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub manifest: Manifest,
    pub checkpoint: Checkpoint,
    /// The key that signed the checkpoint.
    pub key: String,
    /// The key came from the bundle itself (no `--key` given): the bundle is consistent, but
    /// only a key from elsewhere says whose ledger it is.
    pub key_from_bundle: bool,
}

/// How far verification is, for a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the bundle file read so far.
    pub read: u64,
    /// Events whose proofs have been checked so far.
    pub events: u64,
}

/// Checks a bundle completely: gzip header and checksum, the file set, every file's digest,
/// the checkpoint's signature, every event's entry hash and inclusion proof, order, uniqueness,
/// contiguity where promised, chain links between neighbours, and the counts. Returns every
/// failure found, each naming what failed (`Err` is never empty).
///
/// One pass over the archive: files are unpacked into a temporary directory as they come, except
/// `proofs.jsonl`, which is checked as it streams past against the already unpacked
/// `events.jsonl` and checkpoint (the order bundles are written in). A bundle in another order
/// is unpacked whole and checked afterwards, with the same result.
pub fn verify(
    bundle: &Path,
    key: Option<&NoteVerifier>,
    mut progress: impl FnMut(Progress),
) -> Result<Verified, Vec<String>> {
    let one = |m: String| vec![m];
    let mut file = File::open(bundle).map_err(|e| one(format!("{}: {e}", bundle.display())))?;
    let total = file
        .metadata()
        .map_err(|e| one(format!("{}: {e}", bundle.display())))?
        .len();
    if total < (SEAL_LEN + 10) as u64 {
        return Err(one("the bundle is too short to be one".into()));
    }
    let body_len = total - SEAL_LEN as u64;
    // The seal: the BLAKE3 of every byte before it, rebuilt exactly.
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut (&mut file).take(body_len), &mut hasher)
        .map_err(|e| one(format!("{}: {e}", bundle.display())))?;
    let mut found = [0u8; SEAL_LEN];
    file.read_exact(&mut found)
        .map_err(|e| one(format!("{}: {e}", bundle.display())))?;
    if found != seal(hasher.finalize().as_bytes()) {
        return Err(one(
            "the seal (the bundle's last gzip member) does not match the bytes before it: the \
             bundle was changed or cut"
                .into(),
        ));
    }
    let mut file = File::open(bundle).map_err(|e| one(format!("{}: {e}", bundle.display())))?;
    let mut header = [0u8; 10];
    file.read_exact(&mut header)
        .map_err(|_| one("the bundle is too short to be a .tar.gz".into()))?;
    if header != gzip_header() {
        return Err(one(format!(
            "the gzip header is {} but bundles start with {}",
            hex::encode(header),
            hex::encode(gzip_header())
        )));
    }
    drop(file);
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-verify-")
        .tempdir()
        .map_err(|e| one(format!("a temporary directory: {e}")))?;
    let Unpacked { digests, streamed } =
        unpack(bundle, body_len, dir.path(), key, &mut progress).map_err(one)?;
    let mut failures = Vec::new();

    let manifest: Manifest = std::fs::read(dir.path().join("manifest.json"))
        .map_err(|_| one("manifest.json is missing".into()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| one(format!("manifest.json: {e}"))))?;
    if manifest.format != FORMAT {
        return Err(one(format!(
            "manifest.json: format {:?}, expected {FORMAT:?}",
            manifest.format
        )));
    }
    for (name, digest) in &manifest.files {
        match digests.get(name) {
            None => failures.push(format!("{name} is listed in the manifest but missing")),
            Some(found) if found != digest => failures.push(format!(
                "{name}: BLAKE3 {} ({} bytes), the manifest says {} ({} bytes)",
                found.blake3, found.bytes, digest.blake3, digest.bytes
            )),
            Some(_) => {}
        }
    }
    for name in digests.keys() {
        if name != "manifest.json" && !manifest.files.contains_key(name) {
            failures.push(format!("{name} is in the bundle but not in the manifest"));
        }
    }
    for required in [
        "checkpoint",
        "events.jsonl",
        "proofs.jsonl",
        "tombstones.jsonl",
    ] {
        if !digests.contains_key(required) {
            failures.push(format!("{required} is missing"));
        }
    }
    if !failures.is_empty() {
        return Err(failures);
    }

    let (checkpoint, verifier, key_from_bundle) = open_checkpoint(dir.path(), key).map_err(one)?;
    let claimed = &manifest.checkpoint;
    if claimed.origin != checkpoint.origin
        || claimed.size != checkpoint.size
        || claimed.root != hex::encode(checkpoint.root)
    {
        failures.push(
            "manifest.json names another checkpoint than the signed one in `checkpoint`".into(),
        );
    }

    let events = match streamed {
        Some(events) => events,
        None => {
            // Not in the order bundles are written: check the unpacked files.
            let mut events = EventCheck::new(&checkpoint);
            let open = |name: &str| File::open(dir.path().join(name));
            match (open("events.jsonl"), open("proofs.jsonl")) {
                (Ok(e), Ok(p)) => events.run(
                    BufReader::with_capacity(READ_BUFFER, e),
                    BufReader::with_capacity(READ_BUFFER, p),
                    |n| {
                        progress(Progress {
                            read: total,
                            events: n,
                        })
                    },
                ),
                _ => events.fail("events.jsonl or proofs.jsonl cannot be read".into()),
            }
            events
        }
    };
    events.finish(&manifest, &mut failures);
    check_tombstones(dir.path(), &manifest, &checkpoint, &mut failures);

    if failures.is_empty() {
        Ok(Verified {
            manifest,
            checkpoint,
            key: verifier.to_vkey(),
            key_from_bundle,
        })
    } else {
        Err(failures)
    }
}

/// Buffer for reading the unpacked and streamed JSON Lines files.
const READ_BUFFER: usize = 256 * 1024;

/// The signed checkpoint in `dir`, opened with `key` or, without one, the bundle's own key.
fn open_checkpoint(
    dir: &Path,
    key: Option<&NoteVerifier>,
) -> Result<(Checkpoint, NoteVerifier, bool), String> {
    let (verifier, key_from_bundle) = match key {
        Some(k) => (k.clone(), false),
        None => {
            let text = std::fs::read_to_string(dir.join("keys/checkpoint.vkey"))
                .map_err(|_| "no --key given and keys/checkpoint.vkey is missing".to_owned())?;
            let k =
                NoteVerifier::from_vkey(&text).map_err(|e| format!("keys/checkpoint.vkey: {e}"))?;
            (k, true)
        }
    };
    let note =
        std::fs::read_to_string(dir.join("checkpoint")).map_err(|e| format!("checkpoint: {e}"))?;
    let checkpoint = verifier
        .open(&note)
        .map_err(|e| format!("checkpoint: {e}"))?;
    Ok((checkpoint, verifier, key_from_bundle))
}

struct Unpacked {
    /// Every file's digest, `proofs.jsonl` included.
    digests: BTreeMap<String, FileDigest>,
    /// The events, if they were checked while `proofs.jsonl` streamed past.
    streamed: Option<EventCheck>,
}

/// Unpacks into `dir`, hashing each file, and checks `proofs.jsonl` on the way when the
/// checkpoint and `events.jsonl` came before it; refuses odd paths, types and duplicates, and
/// reads the gzip stream to its end so its checksum is checked.
fn unpack(
    bundle: &Path,
    body_len: u64,
    dir: &Path,
    key: Option<&NoteVerifier>,
    progress: &mut impl FnMut(Progress),
) -> Result<Unpacked, String> {
    /// Counts the compressed bytes read, for the progress bar.
    struct Counting<R> {
        inner: R,
        read: Rc<Cell<u64>>,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.set(self.read.get() + n as u64);
            Ok(n)
        }
    }
    let read = Rc::new(Cell::new(0u64));
    let file = File::open(bundle).map_err(|e| e.to_string())?;
    let counting = Counting {
        inner: BufReader::with_capacity(READ_BUFFER, file).take(body_len),
        read: read.clone(),
    };
    let mut archive = tar::Archive::new(GzDecoder::new(counting));
    let mut digests = BTreeMap::new();
    let mut streamed = None;
    let entries = archive
        .entries()
        .map_err(|e| format!("the bundle is not a tar.gz: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the archive is damaged: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("a file name is unreadable: {e}"))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!("{name} is not a regular file"));
        }
        if !allowed_path(&name) {
            return Err(format!("{name} is not a file a bundle holds"));
        }
        if digests.contains_key(&name) {
            return Err(format!("{name} appears twice"));
        }
        // `proofs.jsonl` after the checkpoint and `events.jsonl`: checked as it streams past.
        let streaming = (name == "proofs.jsonl" && digests.contains_key("events.jsonl"))
            .then(|| {
                let (checkpoint, _, _) = open_checkpoint(dir, key).ok()?;
                Some((checkpoint, File::open(dir.join("events.jsonl")).ok()?))
            })
            .flatten();
        let digest = match streaming {
            Some((checkpoint, events)) => {
                let mut proofs = Hashing {
                    inner: &mut entry,
                    hasher: blake3::Hasher::new(),
                    bytes: 0,
                };
                let mut check = EventCheck::new(&checkpoint);
                check.run(
                    BufReader::with_capacity(READ_BUFFER, events),
                    BufReader::with_capacity(READ_BUFFER, &mut proofs),
                    |events| {
                        progress(Progress {
                            read: read.get(),
                            events,
                        })
                    },
                );
                // Whatever the check left unread still counts for the digest.
                io::copy(&mut proofs, &mut io::sink()).map_err(|e| format!("{name}: {e}"))?;
                streamed = Some(check);
                proofs.digest()
            }
            None => {
                let path: PathBuf = dir.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                let mut out = Hashing {
                    inner: BufWriter::new(File::create(&path).map_err(|e| e.to_string())?),
                    hasher: blake3::Hasher::new(),
                    bytes: 0,
                };
                io::copy(&mut entry, &mut out).map_err(|e| format!("{name}: {e}"))?;
                out.flush().map_err(|e| e.to_string())?;
                out.digest()
            }
        };
        digests.insert(name, digest);
        progress(Progress {
            read: read.get(),
            events: streamed.as_ref().map_or(0, |c: &EventCheck| c.line),
        });
    }
    // Whatever follows the tar's end must still decompress, with a matching checksum.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| format!("the gzip stream is damaged: {e}"))?;
    progress(Progress {
        read: read.get(),
        events: streamed.as_ref().map_or(0, |c| c.line),
    });
    Ok(Unpacked { digests, streamed })
}

/// A line of `proofs.jsonl` as read: strings borrowed from the line where they can be.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofLineRef<'a> {
    index: u64,
    stream_sequence: u64,
    received_at: i64,
    #[serde(borrow)]
    previous_hash: Cow<'a, str>,
    #[serde(borrow)]
    entry_hash: Cow<'a, str>,
    #[serde(borrow)]
    inclusion: Vec<Cow<'a, str>>,
}

/// Contiguity breaks reported one by one at most; beyond, they are counted.
const HOLES_SHOWN: usize = 100;

/// The per-event checks, line by line: entry hash, inclusion proof, order, uniqueness, links.
/// Contiguity and the counts are judged by [`EventCheck::finish`], once the manifest (the
/// archive's last file) says what was promised.
struct EventCheck {
    checker: ProofChecker,
    size: u64,
    failures: Vec<String>,
    /// Lines checked.
    line: u64,
    first: Option<u64>,
    /// The last entry's index and hash.
    previous: Option<(u64, Hash)>,
    /// Where consecutive lines skip entries: (line, first missing, last missing).
    holes: Vec<(u64, u64, u64)>,
    more_holes: u64,
    /// The inclusion proof being decoded (reused).
    path: Vec<Hash>,
}

impl EventCheck {
    fn new(checkpoint: &Checkpoint) -> Self {
        Self {
            checker: ProofChecker::new(checkpoint.size, checkpoint.root),
            size: checkpoint.size,
            failures: Vec::new(),
            line: 0,
            first: None,
            previous: None,
            holes: Vec::new(),
            more_holes: 0,
            path: Vec::with_capacity(64),
        }
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Checks `events` against `proofs` line by line, to the end of both.
    fn run(&mut self, mut events: impl BufRead, mut proofs: impl BufRead, mut on: impl FnMut(u64)) {
        let (mut event, mut proof) = (Vec::new(), Vec::new());
        loop {
            event.clear();
            proof.clear();
            let (e, p) = (
                events.read_until(b'\n', &mut event),
                proofs.read_until(b'\n', &mut proof),
            );
            match (e, p) {
                (Ok(0), Ok(0)) => break,
                (Ok(0), Ok(_)) | (Ok(_), Ok(0)) => {
                    let line = self.line;
                    self.fail(format!(
                        "events.jsonl and proofs.jsonl differ in length after line {line}"
                    ));
                    return;
                }
                (Ok(_), Ok(_)) => {}
                _ => {
                    let line = self.line + 1;
                    self.fail(format!("line {line} cannot be read"));
                    return;
                }
            }
            if event.last() == Some(&b'\n') {
                event.pop();
            }
            self.line(&event, &proof);
            if self.line.is_multiple_of(4096) {
                on(self.line);
            }
        }
        on(self.line);
    }

    fn line(&mut self, event: &[u8], proof: &[u8]) {
        self.line += 1;
        let line = self.line;
        let fail = |this: &mut Self, what: String| {
            this.failures.push(format!("event on line {line}: {what}"))
        };
        let proof: ProofLineRef<'_> = match serde_json::from_slice(proof) {
            Ok(p) => p,
            Err(e) => {
                fail(self, format!("proofs.jsonl line is malformed: {e}"));
                return;
            }
        };
        self.path.clear();
        let mut hashes_ok = true;
        for h in &proof.inclusion {
            match unhex(h) {
                Some(h) => self.path.push(h),
                None => hashes_ok = false,
            }
        }
        let (Some(previous_hash), Some(claimed), true) = (
            unhex(&proof.previous_hash),
            unhex(&proof.entry_hash),
            hashes_ok,
        ) else {
            fail(self, "a hash in proofs.jsonl is not 32 bytes of hex".into());
            return;
        };
        let entry = EntryRef {
            index: proof.index,
            stream_sequence: proof.stream_sequence,
            received_at: proof.received_at,
            previous_hash,
            event,
        };
        let Ok((hash, leaf)) = entry.hashes() else {
            fail(self, "the event is too large for an entry".into());
            return;
        };
        if hash != claimed {
            fail(
                self,
                format!(
                    "entry {} hashes to {}, not {}",
                    proof.index,
                    hex::encode(hash),
                    proof.entry_hash
                ),
            );
        }
        if !self.checker.verify(&leaf, proof.index, &self.path) {
            let size = self.size;
            fail(
                self,
                format!(
                    "entry {} is not in the checkpointed tree of {size} entries (the inclusion proof fails)",
                    proof.index
                ),
            );
        }
        if let Some((prev_index, prev_hash)) = self.previous {
            if proof.index <= prev_index {
                fail(
                    self,
                    format!(
                        "entry {} repeats or comes after entry {prev_index}",
                        proof.index
                    ),
                );
            } else if proof.index == prev_index + 1 && previous_hash != prev_hash {
                fail(
                    self,
                    format!("entry {} does not link to entry {prev_index}", proof.index),
                );
            } else if proof.index != prev_index + 1 {
                if self.holes.len() < HOLES_SHOWN {
                    self.holes.push((line, prev_index + 1, proof.index - 1));
                } else {
                    self.more_holes += 1;
                }
            }
        }
        self.first.get_or_insert(proof.index);
        self.previous = Some((proof.index, hash));
    }

    /// The per-line failures, then what the manifest promised and the lines did not keep.
    fn finish(self, manifest: &Manifest, failures: &mut Vec<String>) {
        failures.extend(self.failures);
        if manifest.contiguous {
            for (line, first, last) in &self.holes {
                failures.push(format!(
                    "event on line {line}: entries {first} to {last} are missing from a bundle \
                     that promises every entry"
                ));
            }
            if self.more_holes > 0 {
                failures.push(format!(
                    "and {} more places where entries are missing",
                    self.more_holes
                ));
            }
        }
        if self.line != manifest.counts.events {
            failures.push(format!(
                "the bundle holds {} events, the manifest says {}",
                self.line, manifest.counts.events
            ));
        }
        let last = self.previous.map(|p| p.0);
        if self.first != manifest.range.first_index || last != manifest.range.last_index {
            failures.push(format!(
                "the events span entries {:?} to {last:?}, the manifest says {:?} to {:?}",
                self.first, manifest.range.first_index, manifest.range.last_index
            ));
        }
    }
}

fn check_tombstones(
    dir: &Path,
    manifest: &Manifest,
    checkpoint: &Checkpoint,
    failures: &mut Vec<String>,
) {
    let Ok(file) = File::open(dir.join("tombstones.jsonl")) else {
        failures.push("tombstones.jsonl cannot be read".into());
        return;
    };
    let mut count = 0u64;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let Ok(line) = line else {
            failures.push(format!("tombstones.jsonl line {} cannot be read", n + 1));
            return;
        };
        count += 1;
        let ok = serde_json::from_str::<TombstoneLine>(&line)
            .ok()
            .and_then(|t| {
                let leaf = unhex(&t.leaf_hash)?;
                let path = t
                    .inclusion
                    .iter()
                    .map(|h| unhex(h))
                    .collect::<Option<Vec<_>>>()?;
                Some(verify_inclusion(
                    &leaf,
                    t.index,
                    checkpoint.size,
                    &path,
                    &checkpoint.root,
                ))
            })
            .unwrap_or(false);
        if !ok {
            failures.push(format!(
                "tombstones.jsonl line {}: the pruned entry is not proven in the checkpointed tree",
                n + 1
            ));
        }
    }
    if count != manifest.counts.tombstones {
        failures.push(format!(
            "the bundle holds {count} tombstones, the manifest says {}",
            manifest.counts.tombstones
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_64_hex_digits_exactly() {
        let hash: Hash = std::array::from_fn(|i| (i * 7) as u8);
        let text = hex::encode(hash);
        assert_eq!(unhex(&text), Some(hash));
        assert_eq!(unhex(&text.to_uppercase()), Some(hash));
        assert_eq!(unhex(&text[..62]), None);
        assert_eq!(unhex(&format!("{text}00")), None);
        assert_eq!(unhex(&format!("{}zz", &text[..62])), None);
        assert_eq!(unhex(&format!("{} ", &text[..63])), None);
    }
}
