//! Evidence bundles: a `.tar.gz` an auditor verifies offline with nothing but the bundle and a
//! verifier key (`schemas/bundle.md` has every byte and every rule).
//!
//! ```text
//! checkpoint            the signed checkpoint every proof is against
//! consistency.json      optional: the checkpoint extends an older one (RFC 9162 proof)
//! keys/checkpoint.vkey  its verifier key (a verifier given its own key checks it is the same)
//! witnessed-checkpoint  optional: the witnesses' cosignatures
//! manifest.json         filters, range, counts, ledger format, the BLAKE3 of every other file
//! manifest.sig          a signed note over manifest.json's BLAKE3, by the checkpoint's key
//! tombstones.jsonl      pruned entries: their leaf hash
//! tree.jsonl            the subtrees that, with the leaves, rebuild the checkpoint's root
//! entries.jsonl         one line per event: its entry fields
//! events.jsonl          one event per line, the exact bytes the ledger stores
//! recordings/*.cast     asciicast v2 of the sessions in the bundle, rebuilt from their events
//! INDEX.md              for people
//! ```
//!
//! The manifest comes before what it describes, so a verifier knows the ledger format (what a
//! leaf is) before the events stream past, and checks them as they do: hashed in parallel
//! batches, linked, and folded into the tree with the given subtrees (one node hash per leaf,
//! not one inclusion proof per event). Format v1 (events, proofs with an inclusion proof per
//! line, tombstones, recordings, INDEX.md, manifest last, unsigned) is still verified.
//!
//! The archive is one gzip member; a second, fixed-size member (the [`seal`]) carries the
//! BLAKE3 of every byte before it.
//!
//! [`BundleWriter`] stages files on disk (never the whole bundle in memory) and streams the
//! archive out; [`verify_with`] checks it in one pass against the numbered rules of
//! `schemas/bundle.md` ([`Rule`]), each failure naming its rule.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use crate::entry::{Entry, EntryRef, Hash, LedgerFormat};
use crate::merkle::{
    ProofChecker, RangeChecker, Subtree, subtrees_after, subtrees_between, verify_consistency,
    verify_inclusion,
};
use crate::recording::{self, SESSION_DATA, SESSION_STARTED};
use rayon::prelude::*;

/// The format bundles are written in.
pub const FORMAT: &str = "gatehouse.bundle.v2";
/// The first format: still verified, with a warning (its manifest is not signed).
pub const FORMAT_V1: &str = "gatehouse.bundle.v1";

/// The first line of the note `manifest.sig` signs. A checkpoint's second line is a decimal
/// size and a manifest note's is 64 hex digits, so neither can pass for the other.
pub const MANIFEST_NOTE_HEADER: &str = "gatehouse-bundle-manifest v2";

/// The text of the signed note over a manifest: the header line, then the manifest file's
/// BLAKE3 in lower-case hex, each line ending with a newline.
pub fn manifest_note_text(manifest_json: &[u8]) -> String {
    format!(
        "{MANIFEST_NOTE_HEADER}\n{}\n",
        blake3::hash(manifest_json).to_hex()
    )
}

/// The numbered rules of `schemas/bundle.md` (*Verifying a bundle*); every failure names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Seal = 1,
    Gzip = 2,
    Tar = 3,
    Members = 4,
    Manifest = 5,
    ManifestSignature = 6,
    Checkpoint = 7,
    Events = 8,
    Tombstones = 9,
    Recordings = 10,
    Consistency = 11,
    Trusted = 12,
}

impl Rule {
    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::Seal => "seal",
            Rule::Gzip => "gzip",
            Rule::Tar => "tar",
            Rule::Members => "members",
            Rule::Manifest => "manifest",
            Rule::ManifestSignature => "manifest signature",
            Rule::Checkpoint => "checkpoint",
            Rule::Events => "events",
            Rule::Tombstones => "tombstones",
            Rule::Recordings => "recordings",
            Rule::Consistency => "consistency",
            Rule::Trusted => "trusted checkpoint",
        }
    }

    /// A failure of this rule: `rule N (name): what`.
    pub fn fail(self, what: impl std::fmt::Display) -> String {
        format!("rule {} ({}): {what}", self.number(), self.name())
    }
}

/// One line of `entries.jsonl`: what, with the event's bytes on the same line of
/// `events.jsonl`, makes its ledger entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntryLine {
    pub index: u64,
    pub stream_sequence: u64,
    pub received_at: i64,
    /// Hex.
    pub previous_hash: String,
}

/// One line of `tree.jsonl`: the hash of the subtree over leaves `start .. start + size`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubtreeLine {
    pub start: u64,
    pub size: u64,
    /// Hex.
    pub hash: String,
}

/// One line of `tombstones.jsonl`: an entry whose payload retention pruned.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TombstoneLine {
    pub index: u64,
    /// Hex leaf hash (the payload is gone; the hash stays in the tree).
    pub leaf_hash: String,
}

/// A line of a v1 bundle's `tombstones.jsonl`, which carried an inclusion proof.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TombstoneLineV1 {
    index: u64,
    leaf_hash: String,
    inclusion: Vec<String>,
}

/// `consistency.json`: the bundle's checkpoint extends the tree of `old_size` entries whose
/// root is `old_root` (a checkpoint the auditor held when asking for the bundle).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyFile {
    pub old_size: u64,
    /// Hex.
    pub old_root: String,
    /// Hex hashes: RFC 9162 PROOF(old_size, D[size]).
    pub proof: Vec<String>,
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
    /// What a leaf of the checkpoint's tree is (`schemas/ledger.md`); absent in v1 bundles,
    /// whose ledgers were all format v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_format: Option<LedgerFormat>,
    pub counts: Counts,
    /// Every file but this one (and `manifest.sig`).
    pub files: BTreeMap<String, FileDigest>,
}

/// The filters a manifest may name.
pub const FILTERS: [&str; 3] = ["principal", "namespace", "request_id"];

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
    [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff]
}

fn hexs(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| faster_hex::hex_string(h)).collect()
}

/// 32 bytes from exactly 64 lower-case hex digits (the only spelling a bundle uses).
fn unhex(text: &str) -> Option<Hash> {
    let mut hash = [0u8; 32];
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
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
    fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        }
    }

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

/// The parts of an event a bundle looks at: its type and subject.
#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    subject: Option<Cow<'a, str>>,
}

/// The `session.started` and `session.data` events of each session in a bundle, in order.
#[derive(Default)]
struct Sessions {
    started: BTreeMap<String, Vec<u8>>,
    data: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Sessions {
    fn add(&mut self, event: &[u8]) {
        // A session event's type holds `session.` unless spelled with JSON escapes; most events
        // are neither, and need not be parsed.
        static SESSION: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"session."));
        if SESSION.find(event).is_none() && memchr::memchr(b'\\', event).is_none() {
            return;
        }
        let Ok(head) = serde_json::from_slice::<EventHead<'_>>(event) else {
            return;
        };
        let Some(subject) = head.subject else {
            return;
        };
        match head.kind.as_ref() {
            // The first `session.started` is the session's (the ledger never holds two).
            SESSION_STARTED => {
                self.started
                    .entry(subject.into_owned())
                    .or_insert_with(|| event.to_vec());
            }
            SESSION_DATA => self
                .data
                .entry(subject.into_owned())
                .or_default()
                .push(event.to_vec()),
            _ => {}
        }
    }

    /// Each recording a bundle of these events holds: (session id, asciicast bytes).
    fn recordings(&self) -> impl Iterator<Item = (&str, Result<Vec<u8>, String>)> {
        self.started
            .iter()
            .filter(|(id, _)| recording::valid_session_id(id))
            .map(|(id, started)| {
                let data: Vec<&[u8]> = self
                    .data
                    .get(id)
                    .map(|d| d.iter().map(Vec::as_slice).collect())
                    .unwrap_or_default();
                (id.as_str(), recording::asciicast(started, &data))
            })
    }
}

/// Builds a bundle: entries and files are staged in a temporary directory as they come; the
/// recordings are made from the sessions' events as [`BundleWriter::add_entry`] sees them.
///
/// `subtree(start, size)` arguments give the hash of a subtree of the checkpoint's tree (from
/// the ledger's stored nodes): the writer asks for those `tree.jsonl` needs between the leaves
/// it is given, and rebuilds the root itself before it writes anything, so a bundle that would
/// not verify is refused.
pub struct BundleWriter {
    dir: tempfile::TempDir,
    note: String,
    checkpoint: Checkpoint,
    signer: NoteSigner,
    format: LedgerFormat,
    events: Hashing<BufWriter<File>>,
    entries: Hashing<BufWriter<File>>,
    tree: Hashing<BufWriter<File>>,
    tombstones: Hashing<BufWriter<File>>,
    range: RangeChecker,
    consistency: Option<Vec<u8>>,
    /// `witnessed-checkpoint`, when witnesses cosigned the checkpoint.
    witnessed: Option<Vec<u8>>,
    sessions: Sessions,
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

/// Gives the hash of the subtree over leaves `start .. start + size`.
pub trait SubtreeSource {
    fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, String>;
}

impl<F: FnMut(u64, u64) -> Result<Hash, String>> SubtreeSource for F {
    fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, String> {
        self(start, size)
    }
}

impl BundleWriter {
    /// A bundle against the signed checkpoint `note` of a ledger in `format`, whose manifest
    /// `signer` signs: it must be the key that signed the checkpoint, so an auditor needs one
    /// key for both.
    pub fn new(note: &str, signer: NoteSigner, format: LedgerFormat) -> Result<Self, BundleError> {
        let checkpoint = signer.verifier().open(note).map_err(|e| {
            BundleError::Invalid(format!(
                "the manifest is signed with the key that signed the checkpoint, and the \
                 checkpoint does not open with {}: {e}",
                signer.verifier().to_vkey()
            ))
        })?;
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-bundle-")
            .tempdir()?;
        let open = |name: &str| -> io::Result<Hashing<BufWriter<File>>> {
            Ok(Hashing::new(BufWriter::new(File::create(
                dir.path().join(name),
            )?)))
        };
        Ok(Self {
            events: open("events.jsonl")?,
            entries: open("entries.jsonl")?,
            tree: open("tree.jsonl")?,
            tombstones: open("tombstones.jsonl")?,
            range: RangeChecker::new(checkpoint.size),
            dir,
            note: note.to_owned(),
            checkpoint,
            signer,
            format,
            consistency: None,
            witnessed: None,
            sessions: Sessions::default(),
            counts: Counts::default(),
            first: None,
            last: None,
        })
    }

    /// The checkpoint the bundle proves against.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Adds `consistency.json`: the bundle's checkpoint extends the tree of `old_size` entries
    /// with `old_root`, by `proof` (RFC 9162). Refused if the proof does not verify.
    pub fn add_consistency(
        &mut self,
        old_size: u64,
        old_root: &Hash,
        proof: &[Hash],
    ) -> Result<(), BundleError> {
        let c = &self.checkpoint;
        if old_size == 0 || !verify_consistency(old_size, c.size, old_root, &c.root, proof) {
            return Err(BundleError::Invalid(format!(
                "the checkpoint of {} entries does not extend the tree of {old_size} entries \
                 with root {}",
                c.size,
                hex::encode(old_root)
            )));
        }
        let file = ConsistencyFile {
            old_size,
            old_root: hex::encode(old_root),
            proof: hexs(proof),
        };
        let mut bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        bytes.push(b'\n');
        self.consistency = Some(bytes);
        Ok(())
    }

    /// Adds the witnessed checkpoint (`crate::cosignature`) with the witnesses' cosignatures,
    /// as stored; `gatehouse verify --witness` checks it against the bundle's checkpoint.
    pub fn add_witnessed_checkpoint(&mut self, note: &str) {
        self.witnessed = Some(note.as_bytes().to_vec());
    }

    /// Covers the tree up to `before` with given subtrees, then the leaf at `before`.
    fn add_leaf(
        &mut self,
        index: u64,
        leaf: Hash,
        source: &mut impl SubtreeSource,
    ) -> Result<(), BundleError> {
        if index < self.range.next() || index >= self.checkpoint.size {
            return Err(BundleError::Invalid(format!(
                "entry {index} is out of order or beyond the checkpoint's {} entries: entries go \
                 in increasing order",
                self.checkpoint.size
            )));
        }
        self.fill(subtrees_between(self.range.next(), index), source)?;
        self.range
            .push(index, 1, leaf)
            .map_err(BundleError::Invalid)
    }

    fn fill(
        &mut self,
        subtrees: Vec<Subtree>,
        source: &mut impl SubtreeSource,
    ) -> Result<(), BundleError> {
        for (start, size) in subtrees {
            let hash = source
                .subtree(start, size)
                .map_err(|e| BundleError::Invalid(format!("subtree {start}+{size}: {e}")))?;
            let line = SubtreeLine {
                start,
                size,
                hash: faster_hex::hex_string(&hash),
            };
            serde_json::to_writer(&mut self.tree, &line).map_err(io::Error::other)?;
            self.tree.write_all(b"\n")?;
            self.range
                .push(start, size, hash)
                .map_err(BundleError::Invalid)?;
        }
        Ok(())
    }

    /// Adds an entry (in increasing index order, merged with tombstones).
    pub fn add_entry(
        &mut self,
        entry: &Entry,
        source: &mut impl SubtreeSource,
    ) -> Result<(), BundleError> {
        if entry.event.contains(&b'\n') {
            return Err(BundleError::Invalid(format!(
                "entry {}'s event holds a raw newline and cannot be one line of events.jsonl",
                entry.index
            )));
        }
        let (_, leaf) = entry
            .as_ref()
            .hashes(self.format)
            .map_err(|e| BundleError::Invalid(e.to_string()))?;
        self.add_leaf(entry.index, leaf, source)?;
        self.events.write_all(&entry.event)?;
        self.events.write_all(b"\n")?;
        let line = EntryLine {
            index: entry.index,
            stream_sequence: entry.stream_sequence,
            received_at: entry.received_at,
            previous_hash: faster_hex::hex_string(&entry.previous_hash),
        };
        serde_json::to_writer(&mut self.entries, &line).map_err(io::Error::other)?;
        self.entries.write_all(b"\n")?;
        self.sessions.add(&entry.event);
        self.counts.events += 1;
        self.first.get_or_insert(entry.index);
        self.last = Some(entry.index);
        Ok(())
    }

    /// Adds a pruned entry: its leaf hash (in increasing index order, merged with entries).
    pub fn add_tombstone(
        &mut self,
        index: u64,
        leaf: &Hash,
        source: &mut impl SubtreeSource,
    ) -> Result<(), BundleError> {
        self.add_leaf(index, *leaf, source)?;
        let line = TombstoneLine {
            index,
            leaf_hash: hex::encode(leaf),
        };
        serde_json::to_writer(&mut self.tombstones, &line).map_err(io::Error::other)?;
        self.tombstones.write_all(b"\n")?;
        self.counts.tombstones += 1;
        Ok(())
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Writes the archive to `out`, in the order of `schemas/bundle.md`, then the seal.
    pub fn finish(
        mut self,
        scope: Scope,
        source: &mut impl SubtreeSource,
        out: impl Write,
    ) -> Result<Manifest, BundleError> {
        self.fill(
            subtrees_after(self.range.next(), self.checkpoint.size),
            source,
        )?;
        if self.range.root() != Some(self.checkpoint.root) {
            return Err(BundleError::Invalid(format!(
                "the entries and subtrees given do not rebuild the checkpoint's root {} (tree of \
                 {} entries): the ledger does not match its checkpoint",
                hex::encode(self.checkpoint.root),
                self.checkpoint.size
            )));
        }
        let Scope {
            filters,
            contiguous,
            from,
            to,
            created_at,
        } = scope;
        let mut files: Vec<(String, Source)> = vec![
            ("checkpoint".into(), Source::Bytes(self.note.into_bytes())),
            (
                "keys/checkpoint.vkey".into(),
                Source::Bytes(format!("{}\n", self.signer.verifier().to_vkey()).into_bytes()),
            ),
        ];
        if let Some(bytes) = self.consistency {
            files.insert(1, ("consistency.json".into(), Source::Bytes(bytes)));
        }
        if let Some(bytes) = self.witnessed {
            files.push((
                crate::cosignature::BUNDLE_MEMBER.into(),
                Source::Bytes(bytes),
            ));
        }
        // The manifest and its signature go here, once every digest is known.
        let manifest_at = files.len();
        for (name, file) in [
            ("tombstones.jsonl", self.tombstones),
            ("tree.jsonl", self.tree),
            ("entries.jsonl", self.entries),
            ("events.jsonl", self.events),
        ] {
            let mut file = file;
            file.flush()?;
            files.push((name.into(), Source::Staged(file.digest())));
        }
        let mut recordings = Vec::new();
        for (id, cast) in self.sessions.recordings() {
            let cast = cast.map_err(|e| BundleError::Invalid(format!("session {id}: {e}")))?;
            recordings.push((format!("recordings/{id}.cast"), Source::Bytes(cast)));
        }
        // In byte order of the member names (not of the ids: `-` sorts before `.`).
        recordings.sort_by(|a, b| a.0.cmp(&b.0));
        let sessions = recordings.len() as u64;
        files.extend(recordings);
        let mut counts = self.counts.clone();
        counts.sessions = sessions;
        let digest = |source: &Source| match source {
            Source::Bytes(b) => FileDigest {
                bytes: b.len() as u64,
                blake3: blake3::hash(b).to_hex().to_string(),
            },
            Source::Staged(d) => d.clone(),
        };
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
                origin: self.checkpoint.origin.clone(),
                size: self.checkpoint.size,
                root: hex::encode(self.checkpoint.root),
            },
            ledger_format: Some(self.format),
            counts,
            files: files.iter().map(|(n, s)| (n.clone(), digest(s))).collect(),
        };
        let index = index_md(&manifest);
        manifest.files.insert(
            "INDEX.md".to_owned(),
            digest(&Source::Bytes(index.clone().into_bytes())),
        );
        files.push(("INDEX.md".into(), Source::Bytes(index.into_bytes())));
        let mut manifest_json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        manifest_json.push(b'\n');
        let signature = self.signer.sign_note(&manifest_note_text(&manifest_json));
        files.insert(
            manifest_at,
            ("manifest.sig".into(), Source::Bytes(signature.into_bytes())),
        );
        files.insert(
            manifest_at,
            ("manifest.json".into(), Source::Bytes(manifest_json)),
        );

        let hashed = Hashing::new(out);
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(hashed, Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, source) in &files {
            match source {
                Source::Bytes(b) => append(&mut tar, name, b.len() as u64, b.as_slice())?,
                Source::Staged(d) => append(
                    &mut tar,
                    name,
                    d.bytes,
                    File::open(self.dir.path().join(name))?,
                )?,
            }
        }
        let gz = tar.into_inner()?;
        let hashed = gz.finish()?;
        let digest: Hash = *hashed.hasher.finalize().as_bytes();
        let mut out = hashed.inner;
        out.write_all(&seal(&digest))?;
        out.flush()?;
        Ok(manifest)
    }
}

/// Where a member's bytes are while a bundle is written.
enum Source {
    Bytes(Vec<u8>),
    /// In the staging directory under the member's name.
    Staged(FileDigest),
}

/// The members of a v2 (or v1) bundle in their order, each with whether it must be there;
/// `recordings/` stands for every recording.
fn members_of(v2: bool) -> &'static [(&'static str, bool)] {
    if v2 {
        &[
            ("checkpoint", true),
            ("consistency.json", false),
            ("keys/checkpoint.vkey", true),
            (crate::cosignature::BUNDLE_MEMBER, false),
            ("manifest.json", true),
            ("manifest.sig", true),
            ("tombstones.jsonl", true),
            ("tree.jsonl", true),
            ("entries.jsonl", true),
            ("events.jsonl", true),
            ("recordings/", false),
            ("INDEX.md", true),
        ]
    } else {
        &[
            ("checkpoint", true),
            ("keys/checkpoint.vkey", true),
            ("events.jsonl", true),
            ("proofs.jsonl", true),
            ("tombstones.jsonl", true),
            ("recordings/", false),
            ("INDEX.md", true),
            ("manifest.json", true),
        ]
    }
}

/// The position of a member in a bundle of `format` v2 or v1 (`schemas/bundle.md`, *The
/// archive*); members of the same rank (recordings) go in byte order of their names.
fn member_rank(name: &str, v2: bool) -> Option<u8> {
    let fixed = members_of(v2);
    let rank = |member: &str| {
        fixed
            .iter()
            .position(|(m, _)| *m == member)
            .map(|r| r as u8)
    };
    match name.strip_prefix("recordings/") {
        Some(rest) => {
            let id = rest.strip_suffix(".cast")?;
            recording::valid_session_id(id).then_some(())?;
            rank("recordings/")
        }
        None => rank(name),
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
        "- {} session recordings (asciicast v2, `recordings/`, rebuilt from the session events)\n",
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
         `{}`, signed in `checkpoint` by the key in `keys/checkpoint.vkey` (origin `{}`), which \
         also signs `manifest.json` (in `manifest.sig`).\n\n",
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
    /// The key that signed the checkpoint (and, from v2, the manifest).
    pub key: String,
    /// The key came from the bundle itself (no `--key` given): the bundle is consistent, but
    /// only a key from elsewhere says whose ledger it is.
    pub key_from_bundle: bool,
    /// What this bundle cannot prove (a v1 bundle): to be shown with the result.
    pub warnings: Vec<String>,
    /// The older tree `consistency.json` proves the checkpoint extends: (size, root).
    pub extends: Option<(u64, Hash)>,
    /// The trusted checkpoint the bundle's was shown to extend.
    pub trusted: Option<Checkpoint>,
}

/// How far verification is, for a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the bundle file read so far.
    pub read: u64,
    /// Events whose proofs have been checked so far.
    pub events: u64,
}

impl Progress {
    fn at(read: &Cell<u64>, events: u64) -> Self {
        Self {
            read: read.get(),
            events,
        }
    }
}

/// What to verify a bundle against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    /// The operator's verifier key; without it the bundle's own key is used.
    pub key: Option<&'a NoteVerifier>,
    /// A signed checkpoint note the auditor already holds: the bundle's checkpoint must extend
    /// it (rule 12).
    pub trusted: Option<&'a str>,
    /// The key that signed `trusted`; by default the one the bundle is checked with.
    pub trusted_key: Option<&'a NoteVerifier>,
}

/// What a v1 bundle cannot prove, said with every v1 bundle that verifies.
pub const V1_WARNING: &str = "format gatehouse.bundle.v1: its manifest is not signed, so its \
    filters, contiguity claim, counts, range and file list are not authenticated (whoever held \
    the bundle could have changed them, or dropped events and said it is not contiguous, and \
    re-sealed it), and its session recordings are not checked against the session events; \
    every event in it is still proven against the signed checkpoint";

/// [`verify_with`] with a key only.
pub fn verify(
    bundle: &Path,
    key: Option<&NoteVerifier>,
    progress: impl FnMut(Progress),
) -> Result<Verified, Vec<String>> {
    verify_with(
        bundle,
        Options {
            key,
            ..Options::default()
        },
        progress,
    )
}

/// Checks a bundle against every rule of `schemas/bundle.md` (*Verifying a bundle*) and
/// returns every failure found, each starting `rule N (name):` (`Err` is never empty). Rules
/// 1 to 4 (the file's structure) stop at their first failure; the others are all reported.
///
/// One pass over the archive: files are unpacked into a temporary directory as they come, except
/// `proofs.jsonl`, which is checked as it streams past against the already unpacked
/// `events.jsonl` and checkpoint (the order bundles are written in).
pub fn verify_with(
    bundle: &Path,
    options: Options<'_>,
    mut progress: impl FnMut(Progress),
) -> Result<Verified, Vec<String>> {
    let one = |m: String| vec![m];
    let io_error = |e: io::Error| vec![format!("{}: {e}", bundle.display())];
    let mut file = File::open(bundle).map_err(io_error)?;
    let total = file.metadata().map_err(io_error)?.len();
    if total < (SEAL_LEN + 10) as u64 {
        return Err(one(Rule::Seal.fail("the file is too short to be a bundle")));
    }
    let body_len = total - SEAL_LEN as u64;
    // Rule 1: the BLAKE3 of every byte before the seal, rebuilt exactly.
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut (&mut file).take(body_len), &mut hasher).map_err(io_error)?;
    let mut found = [0u8; SEAL_LEN];
    file.read_exact(&mut found).map_err(io_error)?;
    if found != seal(hasher.finalize().as_bytes()) {
        return Err(one(Rule::Seal.fail(
            "the seal (the bundle's last gzip member) does not match the bytes before it: the \
             bundle was changed or cut",
        )));
    }
    let mut file = File::open(bundle).map_err(io_error)?;
    let mut header = [0u8; 10];
    file.read_exact(&mut header).map_err(io_error)?;
    if header != gzip_header() {
        return Err(one(Rule::Gzip.fail(format!(
            "the gzip header is {} but bundles start with {}",
            hex::encode(header),
            hex::encode(gzip_header())
        ))));
    }
    drop(file);
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-verify-")
        .tempdir()
        .map_err(|e| one(format!("a temporary directory: {e}")))?;
    let Unpacked {
        members,
        digests,
        streamed,
    } = unpack(bundle, body_len, dir.path(), options.key, &mut progress).map_err(one)?;
    let mut failures = Vec::new();

    // Rule 5 first as far as the format: which members rule 4 expects depends on it.
    let Ok(manifest_bytes) = std::fs::read(dir.path().join("manifest.json")) else {
        return Err(one(Rule::Members.fail("manifest.json is missing")));
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| one(Rule::Manifest.fail(format!("manifest.json does not parse: {e}"))))?;
    let v2 = match manifest.format.as_str() {
        FORMAT => true,
        FORMAT_V1 => false,
        other => {
            return Err(one(Rule::Manifest.fail(format!(
                "format {other:?}, expected {FORMAT:?} (or {FORMAT_V1:?})"
            ))));
        }
    };
    check_members(&members, v2).map_err(|m| one(Rule::Members.fail(m)))?;
    check_manifest(&manifest, &members, &digests, &mut failures);

    // Rule 7 before 6: the manifest is signed by the checkpoint's key.
    let (checkpoint, verifier, key_from_bundle) =
        open_checkpoint(dir.path(), options.key).map_err(|m| one(Rule::Checkpoint.fail(m)))?;
    let claimed = &manifest.checkpoint;
    if claimed.origin != checkpoint.origin
        || claimed.size != checkpoint.size
        || claimed.root != hex::encode(checkpoint.root)
    {
        failures
            .push(Rule::Checkpoint.fail(
                "manifest.json names another checkpoint than the signed one in `checkpoint`",
            ));
    }
    if v2 {
        match std::fs::read_to_string(dir.path().join("manifest.sig")) {
            Err(e) => failures.push(Rule::ManifestSignature.fail(format!("manifest.sig: {e}"))),
            Ok(note) => match verifier.verify_note(&note) {
                Ok(text) if text == manifest_note_text(&manifest_bytes) => {}
                Ok(_) => failures.push(Rule::ManifestSignature.fail(
                    "manifest.sig signs another text than the header line and manifest.json's \
                     BLAKE3",
                )),
                Err(crate::checkpoint::CheckpointError::NotSigned { name, id }) => {
                    failures.push(Rule::ManifestSignature.fail(format!(
                        "manifest.sig carries no signature by key {name} ({id})"
                    )))
                }
                Err(e) => failures.push(Rule::ManifestSignature.fail(format!("manifest.sig: {e}"))),
            },
        }
    }

    // Rules 8 and 9.
    let open = |name: &str| {
        File::open(dir.path().join(name)).map(|f| BufReader::with_capacity(READ_BUFFER, f))
    };
    let mut on = |n| {
        progress(Progress {
            read: total,
            events: n,
        })
    };
    let sessions = if v2 {
        let format = manifest.ledger_format.ok_or_else(|| {
            one(Rule::Manifest.fail(format!("a {FORMAT} manifest names its ledger_format")))
        })?;
        let check = match streamed {
            Some(Streamed::V2(check)) => *check,
            _ => {
                let mut check = LeafCheck::new(dir.path(), &checkpoint, format)
                    .map_err(|e| one(Rule::Events.fail(e)))?;
                match (open("events.jsonl"), open("entries.jsonl")) {
                    (Ok(e), Ok(p)) => check.run(e, p, &mut on),
                    _ => check
                        .sequence
                        .fail("events.jsonl or entries.jsonl cannot be read".into()),
                }
                check
            }
        };
        check.finish(&manifest, &mut failures)
    } else {
        if manifest.ledger_format.is_some() {
            failures.push(Rule::Manifest.fail(format!(
                "a {FORMAT_V1} manifest has no ledger_format (its ledgers were all v1)"
            )));
        }
        let events = match streamed {
            Some(Streamed::V1(events)) => *events,
            _ => {
                let mut events = EventCheck::new(&checkpoint);
                match (open("events.jsonl"), open("proofs.jsonl")) {
                    (Ok(e), Ok(p)) => events.run(e, p, &mut on),
                    _ => events.fail("events.jsonl or proofs.jsonl cannot be read".into()),
                }
                events
            }
        };
        let pruned = check_tombstones(dir.path(), &manifest, &checkpoint, &mut failures);
        events.finish(&manifest, &pruned, &mut failures);
        sessions_on_disk(dir.path())
    };
    check_recordings(dir.path(), &members, sessions, v2, &mut failures);
    let extends = check_consistency(dir.path(), &members, &checkpoint, &mut failures);
    let trusted = options.trusted.and_then(|note| {
        check_trusted(
            note,
            options.trusted_key.unwrap_or(&verifier),
            &checkpoint,
            extends,
            &mut failures,
        )
    });

    if failures.is_empty() {
        Ok(Verified {
            manifest,
            checkpoint,
            key: verifier.to_vkey(),
            key_from_bundle,
            warnings: if v2 { vec![] } else { vec![V1_WARNING.into()] },
            extends,
            trusted,
        })
    } else {
        Err(failures)
    }
}

/// Buffer for reading the unpacked and streamed JSON Lines files.
const READ_BUFFER: usize = 256 * 1024;

/// Rule 4: every member a bundle of this format must hold, none it may not, in order.
fn check_members(members: &[String], v2: bool) -> Result<(), String> {
    let required = members_of(v2)
        .iter()
        .filter(|(_, required)| *required)
        .map(|(name, _)| *name);
    if let Some(name) = members.iter().find(|m| member_rank(m, v2).is_none()) {
        return Err(format!(
            "{name} is not a member of a {} bundle",
            if v2 { FORMAT } else { FORMAT_V1 }
        ));
    }
    for name in required {
        if !members.iter().any(|m| m == name) {
            return Err(format!("{name} is missing"));
        }
    }
    for pair in members.windows(2) {
        let key = |name: &str| (member_rank(name, v2), name.to_owned());
        if key(&pair[0]) >= key(&pair[1]) {
            return Err(format!(
                "{} comes after {}: members go in the order of schemas/bundle.md",
                pair[1], pair[0]
            ));
        }
    }
    Ok(())
}

/// An RFC 3339 time in UTC.
fn utc_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .filter(|t| t.offset().is_utc())
}

/// Rule 5 beyond the format: fields, and the digest of every other member.
fn check_manifest(
    manifest: &Manifest,
    members: &[String],
    digests: &BTreeMap<String, FileDigest>,
    failures: &mut Vec<String>,
) {
    let mut fail = |what: String| failures.push(Rule::Manifest.fail(what));
    if utc_time(&manifest.created_at).is_none() {
        fail(format!(
            "created_at {:?} is not an RFC 3339 time in UTC",
            manifest.created_at
        ));
    }
    let mut bounds = Vec::new();
    for (name, value) in [("from", &manifest.range.from), ("to", &manifest.range.to)] {
        if let Some(text) = value {
            match utc_time(text) {
                Some(t) => bounds.push(t),
                None => fail(format!(
                    "range.{name} {text:?} is not an RFC 3339 time in UTC"
                )),
            }
        }
    }
    if let [from, to] = bounds[..]
        && from >= to
    {
        fail("range.from is not before range.to".into());
    }
    for (name, value) in &manifest.filters {
        if !FILTERS.contains(&name.as_str()) || value.is_empty() {
            fail(format!(
                "filters names {name:?} = {value:?}, which is no filter"
            ));
        }
    }
    if manifest.contiguous != manifest.filters.is_empty() {
        fail(format!(
            "contiguous is {} with {} filters: a bundle is contiguous exactly when it has no \
             filters",
            manifest.contiguous,
            manifest.filters.len()
        ));
    }
    if unhex(&manifest.checkpoint.root).is_none() {
        fail("checkpoint.root is not 64 lower-case hex digits".into());
    }
    let recordings = members
        .iter()
        .filter(|m| m.starts_with("recordings/"))
        .count() as u64;
    if manifest.counts.sessions != recordings {
        fail(format!(
            "counts.sessions is {}, the bundle holds {recordings} recordings",
            manifest.counts.sessions
        ));
    }
    for name in members {
        if !matches!(name.as_str(), "manifest.json" | "manifest.sig")
            && !manifest.files.contains_key(name)
        {
            fail(format!("{name} is in the bundle but not in files"));
        }
    }
    for (name, digest) in &manifest.files {
        if unhex(&digest.blake3).is_none() {
            fail(format!(
                "files: {name}'s BLAKE3 is not 64 lower-case hex digits"
            ));
        }
        match digests.get(name) {
            Some(found) if !matches!(name.as_str(), "manifest.json" | "manifest.sig") => {
                if found != digest {
                    fail(format!(
                        "{name}: BLAKE3 {} ({} bytes), files says {} ({} bytes)",
                        found.blake3, found.bytes, digest.blake3, digest.bytes
                    ));
                }
            }
            _ => fail(format!(
                "files lists {name}, which is not a member it may list"
            )),
        }
    }
}

/// Rule 7: the checkpoint in `dir`, opened with `key` or, without one, the bundle's own key;
/// `keys/checkpoint.vkey` must be one line holding the key that signed it.
fn open_checkpoint(
    dir: &Path,
    key: Option<&NoteVerifier>,
) -> Result<(Checkpoint, NoteVerifier, bool), String> {
    let text = std::fs::read_to_string(dir.join("keys/checkpoint.vkey"))
        .map_err(|_| "keys/checkpoint.vkey is missing or not UTF-8".to_owned())?;
    let line = text
        .strip_suffix('\n')
        .filter(|l| !l.contains('\n'))
        .ok_or("keys/checkpoint.vkey is not one line ending with a newline")?;
    let own = NoteVerifier::from_vkey(line).map_err(|e| format!("keys/checkpoint.vkey: {e}"))?;
    if let Some(k) = key
        && k.to_vkey() != own.to_vkey()
    {
        return Err(format!(
            "keys/checkpoint.vkey holds {}, not the key given ({})",
            own.to_vkey(),
            k.to_vkey()
        ));
    }
    let note =
        std::fs::read_to_string(dir.join("checkpoint")).map_err(|e| format!("checkpoint: {e}"))?;
    let checkpoint = own.open(&note).map_err(|e| format!("checkpoint: {e}"))?;
    Ok((checkpoint, own, key.is_none()))
}

/// Counts bytes read through it.
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

/// The gzip layer, remembering whether it failed (rule 2) rather than the tar inside (rule 3).
struct Gunzip<R: BufRead> {
    inner: flate2::bufread::GzDecoder<R>,
    failed: Rc<Cell<bool>>,
}

impl<R: BufRead> Read for Gunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.set(true))
    }
}

struct Unpacked {
    /// Member names in archive order.
    members: Vec<String>,
    /// Every member's digest, `proofs.jsonl` included.
    digests: BTreeMap<String, FileDigest>,
    /// The events, if they were checked as they streamed past.
    streamed: Option<Streamed>,
}

/// Events checked while the archive streamed past: a v1 bundle's as `proofs.jsonl` did
/// (against the unpacked `events.jsonl`), a v2 bundle's as `events.jsonl` did.
enum Streamed {
    V1(Box<EventCheck>),
    V2(Box<LeafCheck>),
}

impl Streamed {
    fn lines(&self) -> u64 {
        match self {
            Streamed::V1(c) => c.line,
            Streamed::V2(c) => c.sequence.line,
        }
    }
}

/// A v2 bundle's manifest, already unpacked, and the ledger format it names.
fn unpacked_v2_format(dir: &Path) -> Option<LedgerFormat> {
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    (manifest.format == FORMAT).then_some(manifest.ledger_format?)
}

/// Rule 3 for one member's header: a ustar regular file, mode 0644, owned by 0:0, time 0, no
/// link, no user or group name, no prefix; returns its name.
fn member_name(header: &tar::Header) -> Result<String, String> {
    let name = String::from_utf8(header.path_bytes().into_owned())
        .map_err(|_| "a member's name is not UTF-8".to_owned())?;
    let Some(ustar) = header.as_ustar() else {
        return Err(format!("{name}: not a POSIX ustar header"));
    };
    let bytes = header.as_bytes();
    let problems = [
        (bytes[156] != b'0', "type is not a regular file (`0`)"),
        (header.mode().ok() != Some(0o644), "mode is not 0644"),
        (header.uid().ok() != Some(0), "uid is not 0"),
        (header.gid().ok() != Some(0), "gid is not 0"),
        (header.mtime().ok() != Some(0), "mtime is not 0"),
        (
            header.link_name_bytes().is_some_and(|l| !l.is_empty()),
            "it names a link",
        ),
        (
            header.username_bytes().is_some_and(|u| !u.is_empty())
                || header.groupname_bytes().is_some_and(|g| !g.is_empty()),
            "it names a user or group",
        ),
        (
            ustar.prefix.iter().any(|&b| b != 0),
            "its prefix is not empty",
        ),
    ];
    if let Some((_, what)) = problems.iter().find(|(bad, _)| *bad) {
        return Err(format!("{name}: {what}"));
    }
    Ok(name)
}

/// Unpacks into `dir`, hashing each member, and checks `proofs.jsonl` on the way when the
/// checkpoint and `events.jsonl` came before it. Rules 2 and 3, and rule 4's names and
/// duplicates: the gzip member decompresses with its checksums and ends where the seal starts;
/// the tar is ustar members and then exactly the two zero blocks.
fn unpack(
    bundle: &Path,
    body_len: u64,
    dir: &Path,
    key: Option<&NoteVerifier>,
    progress: &mut impl FnMut(Progress),
) -> Result<Unpacked, String> {
    let read = Rc::new(Cell::new(0u64));
    let inflated = Rc::new(Cell::new(0u64));
    let gzip_failed = Rc::new(Cell::new(false));
    let file = File::open(bundle).map_err(|e| e.to_string())?;
    let compressed = BufReader::with_capacity(
        READ_BUFFER,
        Counting {
            inner: file.take(body_len),
            read: read.clone(),
        },
    );
    let mut archive = tar::Archive::new(Counting {
        inner: Gunzip {
            inner: flate2::bufread::GzDecoder::new(compressed),
            failed: gzip_failed.clone(),
        },
        read: inflated.clone(),
    });
    let damaged = |e: io::Error| {
        if gzip_failed.get() {
            Rule::Gzip.fail(format!("the gzip member does not decompress: {e}"))
        } else {
            Rule::Tar.fail(format!("the archive is damaged: {e}"))
        }
    };
    let mut members = Vec::new();
    let mut digests = BTreeMap::new();
    let mut streamed = None;
    // Bytes the tar should take: a header block per member and its data padded to blocks.
    let mut expected = 0u64;
    let entries = archive.entries().map_err(damaged)?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(damaged)?;
        let name = member_name(entry.header()).map_err(|m| Rule::Tar.fail(m))?;
        if member_rank(&name, true).is_none() && member_rank(&name, false).is_none() {
            return Err(Rule::Members.fail(format!("{name} is not a member a bundle holds")));
        }
        if digests.contains_key(&name) {
            return Err(Rule::Members.fail(format!("{name} appears twice")));
        }
        expected += 512 + entry.size().div_ceil(512) * 512;
        // v1: `proofs.jsonl` after the checkpoint and `events.jsonl`, checked as it streams
        // past; v2: `events.jsonl` after the manifest, the checkpoint and the files describing
        // its entries, likewise.
        let has = |names: &[&str]| names.iter().all(|n| digests.contains_key(*n));
        let v1_streaming = (name == "proofs.jsonl" && has(&["events.jsonl"]))
            .then(|| {
                let (checkpoint, _, _) = open_checkpoint(dir, key).ok()?;
                Some((checkpoint, File::open(dir.join("events.jsonl")).ok()?))
            })
            .flatten();
        let v2_streaming = (name == "events.jsonl"
            && has(&[
                "manifest.json",
                "tombstones.jsonl",
                "tree.jsonl",
                "entries.jsonl",
            ]))
        .then(|| {
            let format = unpacked_v2_format(dir)?;
            let (checkpoint, _, _) = open_checkpoint(dir, key).ok()?;
            let check = LeafCheck::new(dir, &checkpoint, format).ok()?;
            Some((check, File::open(dir.join("entries.jsonl")).ok()?))
        })
        .flatten();
        let digest = match (v1_streaming, v2_streaming) {
            (Some((checkpoint, events)), _) => {
                let mut proofs = Hashing::new(&mut entry);
                let mut check = EventCheck::new(&checkpoint);
                check.run(
                    BufReader::with_capacity(READ_BUFFER, events),
                    BufReader::with_capacity(READ_BUFFER, &mut proofs),
                    |events| progress(Progress::at(&read, events)),
                );
                // Whatever the check left unread still counts for the digest.
                io::copy(&mut proofs, &mut io::sink()).map_err(damaged)?;
                streamed = Some(Streamed::V1(Box::new(check)));
                proofs.digest()
            }
            (None, Some((mut check, entries))) => {
                let mut events = Hashing::new(&mut entry);
                check.run(
                    BufReader::with_capacity(READ_BUFFER, &mut events),
                    BufReader::with_capacity(READ_BUFFER, entries),
                    |events| progress(Progress::at(&read, events)),
                );
                io::copy(&mut events, &mut io::sink()).map_err(damaged)?;
                streamed = Some(Streamed::V2(Box::new(check)));
                events.digest()
            }
            (None, None) => {
                let path: PathBuf = dir.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                let mut out = Hashing::new(BufWriter::new(
                    File::create(&path).map_err(|e| e.to_string())?,
                ));
                io::copy(&mut entry, &mut out).map_err(damaged)?;
                out.flush().map_err(|e| e.to_string())?;
                out.digest()
            }
        };
        members.push(name.clone());
        digests.insert(name, digest);
        progress(Progress {
            read: read.get(),
            events: streamed.as_ref().map_or(0, Streamed::lines),
        });
    }
    // After the members: zero blocks only, two of them, then the gzip member's end exactly
    // where the seal starts.
    let mut rest = archive.into_inner();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = rest.read(&mut buffer).map_err(damaged)?;
        if n == 0 {
            break;
        }
        if buffer[..n].iter().any(|&b| b != 0) {
            return Err(Rule::Tar.fail("data follows the archive's end"));
        }
    }
    if inflated.get() != expected + 1024 {
        return Err(Rule::Tar.fail(format!(
            "the archive is {} bytes: its members and the two zero blocks that end it make {}",
            inflated.get(),
            expected + 1024
        )));
    }
    let mut compressed = rest.inner.inner.into_inner();
    if !compressed.fill_buf().map_err(|e| e.to_string())?.is_empty() {
        return Err(Rule::Gzip.fail("bytes follow the archive's gzip member before the seal"));
    }
    progress(Progress {
        read: read.get(),
        events: streamed.as_ref().map_or(0, Streamed::lines),
    });
    Ok(Unpacked {
        members,
        digests,
        streamed,
    })
}

/// The sessions of a v1 bundle's unpacked `events.jsonl`.
fn sessions_on_disk(dir: &Path) -> Sessions {
    let mut sessions = Sessions::default();
    let Ok(file) = File::open(dir.join("events.jsonl")) else {
        return sessions;
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        sessions.add(&line);
        line.clear();
    }
    sessions
}

/// Rule 10: one recording per session whose `session.started` is in the bundle and whose id
/// may name a file, none other; from v2, each one is exactly what its events make.
fn check_recordings(
    dir: &Path,
    members: &[String],
    sessions: Sessions,
    v2: bool,
    failures: &mut Vec<String>,
) {
    let held: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.strip_prefix("recordings/")?.strip_suffix(".cast"))
        .collect();
    let mut made = BTreeSet::new();
    for (id, cast) in sessions.recordings() {
        made.insert(id.to_owned());
        if !held.contains(id) {
            failures.push(Rule::Recordings.fail(format!(
                "session {id} started in the bundle, and recordings/{id}.cast is missing"
            )));
            continue;
        }
        if !v2 {
            continue;
        }
        let path = dir.join(format!("recordings/{id}.cast"));
        match (cast, std::fs::read(&path)) {
            (Ok(cast), Ok(found)) if cast == found => {}
            (Ok(_), Ok(_)) => failures.push(Rule::Recordings.fail(format!(
                "recordings/{id}.cast is not the recording session {id}'s events make"
            ))),
            (Err(e), _) => failures.push(Rule::Recordings.fail(format!(
                "session {id}'s recording cannot be made from its events: {e}"
            ))),
            (_, Err(e)) => {
                failures.push(Rule::Recordings.fail(format!("recordings/{id}.cast: {e}")))
            }
        }
    }
    for id in held {
        if !made.contains(id) {
            failures.push(Rule::Recordings.fail(format!(
                "recordings/{id}.cast is for a session that did not start in the bundle"
            )));
        }
    }
}

/// Rule 11: `consistency.json`, if present, proves the checkpoint extends the older tree it
/// names; returns that tree's (size, root).
fn check_consistency(
    dir: &Path,
    members: &[String],
    checkpoint: &Checkpoint,
    failures: &mut Vec<String>,
) -> Option<(u64, Hash)> {
    if !members.iter().any(|m| m == "consistency.json") {
        return None;
    }
    let mut fail = |what: &str| {
        failures.push(Rule::Consistency.fail(what));
        None
    };
    let Ok(bytes) = std::fs::read(dir.join("consistency.json")) else {
        return fail("consistency.json cannot be read");
    };
    let Some(text) = bytes.strip_suffix(b"\n").filter(|t| !t.contains(&b'\n')) else {
        return fail("consistency.json is not one line ending with a newline");
    };
    let Ok(file) = serde_json::from_slice::<ConsistencyFile>(text) else {
        return fail("consistency.json does not parse as {old_size, old_root, proof}");
    };
    let (Some(old_root), Some(proof)) = (
        unhex(&file.old_root),
        file.proof
            .iter()
            .map(|h| unhex(h))
            .collect::<Option<Vec<_>>>(),
    ) else {
        return fail("a hash in consistency.json is not 64 lower-case hex digits");
    };
    if file.old_size == 0
        || !verify_consistency(
            file.old_size,
            checkpoint.size,
            &old_root,
            &checkpoint.root,
            &proof,
        )
    {
        return fail(&format!(
            "the consistency proof from the tree of {} entries to the checkpoint's {} does not verify",
            file.old_size, checkpoint.size
        ));
    }
    Some((file.old_size, old_root))
}

/// Rule 12: the bundle's checkpoint extends `note`, a checkpoint the auditor holds.
fn check_trusted(
    note: &str,
    key: &NoteVerifier,
    checkpoint: &Checkpoint,
    extends: Option<(u64, Hash)>,
    failures: &mut Vec<String>,
) -> Option<Checkpoint> {
    let mut fail = |what: String| {
        failures.push(Rule::Trusted.fail(what));
        None
    };
    let trusted = match key.open(note) {
        Ok(t) => t,
        Err(e) => return fail(format!("the trusted checkpoint: {e}")),
    };
    if trusted.origin != checkpoint.origin {
        return fail(format!(
            "the trusted checkpoint is of {:?}, the bundle's of {:?}",
            trusted.origin, checkpoint.origin
        ));
    }
    if trusted.size > checkpoint.size {
        return fail(format!(
            "the bundle's checkpoint ({} entries) is older than the trusted one ({})",
            checkpoint.size, trusted.size
        ));
    }
    let extended = if trusted.size == checkpoint.size {
        trusted.root == checkpoint.root
    } else {
        extends == Some((trusted.size, trusted.root))
    };
    if !extended {
        let why = match extends {
            _ if trusted.size == checkpoint.size => "another root at the same size".to_owned(),
            None => "the bundle holds no consistency proof (consistency.json)".to_owned(),
            Some((size, _)) if size == trusted.size => {
                "its consistency proof starts from another root at that size".to_owned()
            }
            Some((size, _)) => format!(
                "its consistency proof starts from the tree of {size} entries, not {}",
                trusted.size
            ),
        };
        return fail(format!(
            "the bundle's checkpoint is not shown to extend the trusted one of {} entries: {why}",
            trusted.size
        ));
    }
    Some(trusted)
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
/// Places where consecutive lines skip entries, kept to be matched with tombstones; a
/// contiguous bundle has one per run of pruned entries, a filtered one many (not needed).
const HOLES_KEPT: usize = 1 << 20;

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
        let Ok((hash, leaf)) = entry.hashes(LedgerFormat::V1) else {
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
        self.follow(proof.index, &previous_hash, hash);
    }

    /// The order and links of the entry on the current line: it must come after the one
    /// before and, if next to it, link to it; skipped entries are noted for [`Self::finish`].
    /// False when it is out of order.
    fn follow(&mut self, index: u64, previous_hash: &Hash, hash: Hash) -> bool {
        let line = self.line;
        let mut in_order = true;
        if let Some((prev_index, prev_hash)) = self.previous {
            if index <= prev_index {
                self.failures.push(format!(
                    "event on line {line}: entry {index} repeats or comes after entry {prev_index}"
                ));
                in_order = false;
            } else if index == prev_index + 1 && *previous_hash != prev_hash {
                self.failures.push(format!(
                    "event on line {line}: entry {index} does not link to entry {prev_index}"
                ));
            } else if index != prev_index + 1 {
                if self.holes.len() < HOLES_KEPT {
                    self.holes.push((line, prev_index + 1, index - 1));
                } else {
                    self.more_holes += 1;
                }
            }
        }
        self.first.get_or_insert(index);
        if in_order {
            self.previous = Some((index, hash));
        }
        in_order
    }

    /// The per-line failures, then what the manifest promised and the lines did not keep.
    /// `pruned`: the tombstones' indexes, which account for entries a contiguous bundle skips.
    fn finish(self, manifest: &Manifest, pruned: &BTreeSet<u64>, failures: &mut Vec<String>) {
        let start = failures.len();
        failures.extend(self.failures);
        if manifest.contiguous {
            let missing = self.holes.iter().filter(|(_, first, last)| {
                pruned.range(first..=last).count() as u64 != last - first + 1
            });
            let mut shown = 0;
            for (line, first, last) in missing {
                shown += 1;
                if shown > HOLES_SHOWN {
                    failures.push("and more places where entries are missing".into());
                    break;
                }
                failures.push(format!(
                    "event on line {line}: entries {first} to {last} are missing from a bundle \
                     that promises every entry (and not all are tombstones)"
                ));
            }
            if self.more_holes > 0 {
                failures.push(format!(
                    "{} more places where entries are skipped than a verifier keeps",
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
        for failure in &mut failures[start..] {
            *failure = Rule::Events.fail(&failure);
        }
    }
}

/// Lines hashed in parallel at a time, while the next batch is read.
const LEAF_BATCH: usize = 2048;

/// A line of `entries.jsonl` as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryLineRef<'a> {
    index: u64,
    stream_sequence: u64,
    received_at: i64,
    #[serde(borrow)]
    previous_hash: Cow<'a, str>,
}

/// Line pairs read into one buffer, reused from batch to batch: (event, entry) byte ranges.
#[derive(Default)]
struct LineBatch {
    bytes: Vec<u8>,
    lines: Vec<((usize, usize), (usize, usize))>,
}

impl LineBatch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
    }

    fn slice(&self, (from, to): (usize, usize)) -> &[u8] {
        &self.bytes[from..to]
    }
}

/// What one line pair gives: index, previous hash, entry hash and leaf hash.
type HashedLine = Result<(u64, Hash, Hash, Hash), String>;

fn hash_line(format: LedgerFormat, event: &[u8], entry: &[u8]) -> HashedLine {
    let line: EntryLineRef<'_> = serde_json::from_slice(entry)
        .map_err(|e| format!("entries.jsonl line is malformed: {e}"))?;
    let previous_hash = unhex(&line.previous_hash)
        .ok_or("previous_hash in entries.jsonl is not 64 lower-case hex digits")?;
    let entry = EntryRef {
        index: line.index,
        stream_sequence: line.stream_sequence,
        received_at: line.received_at,
        previous_hash,
        event,
    };
    let (hash, leaf) = entry
        .hashes(format)
        .map_err(|_| "the event is too large for an entry".to_owned())?;
    Ok((line.index, previous_hash, hash, leaf))
}

/// Rules 8 and 9 of format v2: every event with its `entries.jsonl` line makes an entry, the
/// entries link where they are neighbours, and their leaves, the tombstones' leaves and the
/// subtrees of `tree.jsonl` rebuild the checkpoint's root. Events are read as they stream past;
/// each batch is hashed on every core while the next is read.
struct LeafCheck {
    format: LedgerFormat,
    size: u64,
    root: Hash,
    sequence: EventCheck,
    range: RangeChecker,
    tree: BufReader<File>,
    tree_lines: u64,
    /// Set once the tree cannot be rebuilt (the failure is reported once).
    tree_failed: bool,
    tombstones: BufReader<File>,
    tombstone_lines: u64,
    next_tombstone: Option<(u64, Hash)>,
    pruned: BTreeSet<u64>,
    tombstone_failures: Vec<String>,
    sessions: Sessions,
}

impl LeafCheck {
    fn new(dir: &Path, checkpoint: &Checkpoint, format: LedgerFormat) -> Result<Self, String> {
        let open = |name: &str| {
            File::open(dir.join(name))
                .map(|f| BufReader::with_capacity(READ_BUFFER, f))
                .map_err(|e| format!("{name}: {e}"))
        };
        let mut check = Self {
            format,
            size: checkpoint.size,
            root: checkpoint.root,
            sequence: EventCheck::new(checkpoint),
            range: RangeChecker::new(checkpoint.size),
            tree: open("tree.jsonl")?,
            tree_lines: 0,
            tree_failed: false,
            tombstones: open("tombstones.jsonl")?,
            tombstone_lines: 0,
            next_tombstone: None,
            pruned: BTreeSet::new(),
            tombstone_failures: Vec::new(),
            sessions: Sessions::default(),
        };
        check.next_tombstone = check.read_tombstone();
        Ok(check)
    }

    fn read_tombstone(&mut self) -> Option<(u64, Hash)> {
        let mut line = Vec::new();
        match self.tombstones.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                self.tombstone_failures
                    .push(format!("tombstones.jsonl cannot be read: {e}"));
                return None;
            }
        }
        self.tombstone_lines += 1;
        let n = self.tombstone_lines;
        let parsed = line
            .strip_suffix(b"\n")
            .and_then(|l| serde_json::from_slice::<TombstoneLine>(l).ok())
            .and_then(|t| Some((t.index, unhex(&t.leaf_hash)?)));
        let previous = self.pruned.last().copied();
        match parsed {
            Some((index, _)) if previous.is_some_and(|p| index <= p) => {
                self.tombstone_failures.push(format!(
                    "tombstones.jsonl line {n}: entry {index} does not come after entry {}",
                    previous.unwrap_or_default()
                ));
                None
            }
            Some(t) => Some(t),
            None => {
                self.tombstone_failures.push(format!(
                    "tombstones.jsonl line {n} is not {{\"index\", \"leaf_hash\"}} ending with \
                     a newline"
                ));
                None
            }
        }
    }

    /// Folds the tombstones before `index` into the tree; one at `index` itself is refused.
    fn tombstones_before(&mut self, index: u64) {
        while let Some((t, leaf)) = self.next_tombstone.filter(|(t, _)| *t <= index) {
            if t == index {
                self.tombstone_failures.push(format!(
                    "tombstones.jsonl line {}: entry {t} is pruned and also in events.jsonl",
                    self.tombstone_lines
                ));
            } else {
                self.leaf(t, leaf);
            }
            self.pruned.insert(t);
            self.next_tombstone = self.read_tombstone();
        }
    }

    fn tree_failure(&mut self, what: String) {
        if !self.tree_failed {
            self.tree_failed = true;
            self.sequence.fail(what);
        }
    }

    /// The next `tree.jsonl` line, which must give the subtree `start`, `size`.
    fn given(&mut self, start: u64, size: u64) {
        let mut line = Vec::new();
        let read = self.tree.read_until(b'\n', &mut line);
        self.tree_lines += 1;
        let n = self.tree_lines;
        let parsed = match read {
            Ok(0) => {
                return self.tree_failure(format!(
                    "tree.jsonl ends before the subtree over entries {start} to {} (line {n})",
                    start + size - 1
                ));
            }
            Ok(_) => line
                .strip_suffix(b"\n")
                .and_then(|l| serde_json::from_slice::<SubtreeLine>(l).ok()),
            Err(e) => return self.tree_failure(format!("tree.jsonl cannot be read: {e}")),
        };
        let Some(given) = parsed else {
            return self.tree_failure(format!(
                "tree.jsonl line {n} is not {{\"start\", \"size\", \"hash\"}} ending with a \
                 newline"
            ));
        };
        let hash = unhex(&given.hash);
        match hash {
            Some(hash) if (given.start, given.size) == (start, size) => {
                if let Err(e) = self.range.push(start, size, hash) {
                    self.tree_failure(e);
                }
            }
            Some(_) => self.tree_failure(format!(
                "tree.jsonl line {n} gives the subtree {}+{}, where the leaves before it need \
                 {start}+{size}",
                given.start, given.size
            )),
            None => self.tree_failure(format!(
                "tree.jsonl line {n}: the hash is not 64 lower-case hex digits"
            )),
        }
    }

    fn leaf(&mut self, index: u64, leaf: Hash) {
        if self.tree_failed {
            return;
        }
        if index < self.range.next() || index >= self.size {
            return self.tree_failure(format!(
                "entry {index} is not in the checkpointed tree of {} entries after entry {}",
                self.size,
                self.range.next().wrapping_sub(1)
            ));
        }
        for (start, size) in subtrees_between(self.range.next(), index) {
            self.given(start, size);
            if self.tree_failed {
                return;
            }
        }
        if let Err(e) = self.range.push(index, 1, leaf) {
            self.tree_failure(e);
        }
    }

    /// Reads up to [`LEAF_BATCH`] line pairs into `batch`; false when the files end
    /// differently or cannot be read (the failure is recorded).
    fn read_batch(
        &mut self,
        events: &mut impl BufRead,
        entries: &mut impl BufRead,
        batch: &mut LineBatch,
    ) -> bool {
        batch.clear();
        while batch.lines.len() < LEAF_BATCH {
            let lines = self.sequence.line + batch.lines.len() as u64;
            let start = batch.bytes.len();
            let read_event = events.read_until(b'\n', &mut batch.bytes);
            let middle = batch.bytes.len();
            let read_entry = entries.read_until(b'\n', &mut batch.bytes);
            match (read_event, read_entry) {
                (Ok(0), Ok(0)) => break,
                (Ok(0), Ok(_)) | (Ok(_), Ok(0)) => {
                    self.sequence.fail(format!(
                        "events.jsonl and entries.jsonl differ in length after line {lines}"
                    ));
                    return false;
                }
                (Ok(_), Ok(_)) => {}
                _ => {
                    self.sequence
                        .fail(format!("line {} cannot be read", lines + 1));
                    return false;
                }
            }
            let end = batch.bytes.len();
            let trim = |from: usize, to: usize| {
                if to > from && batch.bytes[to - 1] == b'\n' {
                    (from, to - 1)
                } else {
                    (from, to)
                }
            };
            let line = (trim(start, middle), trim(middle, end));
            batch.lines.push(line);
        }
        true
    }

    /// Checks `events` against `entries.jsonl` line by line, to the end of both.
    fn run(
        &mut self,
        mut events: impl BufRead,
        mut entries: impl BufRead,
        mut on: impl FnMut(u64),
    ) {
        let format = self.format;
        let (mut current, mut next) = (LineBatch::default(), LineBatch::default());
        let mut hashed: Vec<HashedLine> = Vec::with_capacity(LEAF_BATCH);
        let mut more = self.read_batch(&mut events, &mut entries, &mut current);
        while !current.lines.is_empty() {
            rayon::in_place_scope(|scope| {
                let batch = &current;
                let out = &mut hashed;
                scope.spawn(move |_| {
                    out.clear();
                    batch
                        .lines
                        .par_iter()
                        .map(|&(event, entry)| {
                            hash_line(format, batch.slice(event), batch.slice(entry))
                        })
                        .collect_into_vec(out);
                });
                if more {
                    more = self.read_batch(&mut events, &mut entries, &mut next);
                } else {
                    next.clear();
                }
            });
            for (&(event, _), hashed) in current.lines.iter().zip(hashed.drain(..)) {
                self.line(current.slice(event), hashed);
            }
            on(self.sequence.line);
            std::mem::swap(&mut current, &mut next);
        }
        on(self.sequence.line);
    }

    fn line(&mut self, event: &[u8], hashed: HashedLine) {
        self.sequence.line += 1;
        let line = self.sequence.line;
        let (index, previous_hash, hash, leaf) = match hashed {
            Ok(h) => h,
            Err(e) => {
                self.sequence.fail(format!("event on line {line}: {e}"));
                self.tree_failure(format!(
                    "the tree cannot be rebuilt past line {line} of events.jsonl"
                ));
                return;
            }
        };
        self.tombstones_before(index);
        if self.sequence.follow(index, &previous_hash, hash) {
            self.leaf(index, leaf);
        } else {
            self.tree_failed = true;
        }
        self.sessions.add(event);
    }

    /// Rule 8's tree and rule 9 once every event is read; then what [`EventCheck::finish`]
    /// judges. Returns the sessions the events start.
    fn finish(mut self, manifest: &Manifest, failures: &mut Vec<String>) -> Sessions {
        self.tombstones_before(u64::MAX);
        if !self.tree_failed {
            for (start, size) in subtrees_after(self.range.next(), self.size) {
                self.given(start, size);
                if self.tree_failed {
                    break;
                }
            }
        }
        if !self.tree_failed {
            let mut rest = Vec::new();
            if self.tree.read_until(b'\n', &mut rest).is_ok_and(|n| n > 0) {
                self.tree_failure(format!(
                    "tree.jsonl has more lines than the tree needs (line {})",
                    self.tree_lines + 1
                ));
            } else if self.range.root() != Some(self.root) {
                self.tree_failure(
                    "the events' and tombstones' leaves with the subtrees of tree.jsonl do not \
                     make the checkpoint's root: an entry was changed, added or removed"
                        .into(),
                );
            }
        }
        if self.tombstone_lines != manifest.counts.tombstones {
            self.tombstone_failures.push(format!(
                "the bundle holds {} tombstones, the manifest says {}",
                self.tombstone_lines, manifest.counts.tombstones
            ));
        }
        failures.extend(
            self.tombstone_failures
                .iter()
                .map(|f| Rule::Tombstones.fail(f)),
        );
        self.sequence.finish(manifest, &self.pruned, failures);
        self.sessions
    }
}

/// Rule 9; returns the indexes of the tombstones proven.
fn check_tombstones(
    dir: &Path,
    manifest: &Manifest,
    checkpoint: &Checkpoint,
    failures: &mut Vec<String>,
) -> BTreeSet<u64> {
    let mut pruned = BTreeSet::new();
    let Ok(file) = File::open(dir.join("tombstones.jsonl")) else {
        failures.push(Rule::Tombstones.fail("tombstones.jsonl cannot be read"));
        return pruned;
    };
    let mut count = 0u64;
    let mut previous: Option<u64> = None;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let Ok(line) = line else {
            failures.push(
                Rule::Tombstones.fail(format!("tombstones.jsonl line {} cannot be read", n + 1)),
            );
            return pruned;
        };
        count += 1;
        let ok = serde_json::from_str::<TombstoneLineV1>(&line)
            .ok()
            .and_then(|t| {
                if previous.is_some_and(|p| t.index <= p) {
                    return Some(false);
                }
                previous = Some(t.index);
                let leaf = unhex(&t.leaf_hash)?;
                let path = t
                    .inclusion
                    .iter()
                    .map(|h| unhex(h))
                    .collect::<Option<Vec<_>>>()?;
                let proven =
                    verify_inclusion(&leaf, t.index, checkpoint.size, &path, &checkpoint.root);
                if proven {
                    pruned.insert(t.index);
                }
                Some(proven)
            })
            .unwrap_or(false);
        if !ok {
            failures.push(Rule::Tombstones.fail(format!(
                "tombstones.jsonl line {}: malformed, out of order, or the pruned entry is not \
                 proven in the checkpointed tree",
                n + 1
            )));
        }
    }
    if count != manifest.counts.tombstones {
        failures.push(Rule::Tombstones.fail(format!(
            "the bundle holds {count} tombstones, the manifest says {}",
            manifest.counts.tombstones
        )));
    }
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_64_hex_digits_exactly() {
        let hash: Hash = std::array::from_fn(|i| (i * 7) as u8);
        let text = hex::encode(hash);
        assert_eq!(unhex(&text), Some(hash));
        assert_eq!(
            unhex(&text.to_uppercase()),
            None,
            "upper-case hex is refused"
        );
        assert_eq!(unhex(&text[..62]), None);
        assert_eq!(unhex(&format!("{text}00")), None);
        assert_eq!(unhex(&format!("{}zz", &text[..62])), None);
        assert_eq!(unhex(&format!("{} ", &text[..63])), None);
    }
}
