//! Write-once archives: sealed segments of the ledger copied to S3-compatible object storage
//! under Object Lock in **compliance** mode, and `gatehouse ledger restore --from-archive`.
//!
//! A segment is the entries `start..end` where `end` is the size of a signed checkpoint (so the
//! checkpoint covers it). Its objects, under `<prefix>/segments/<start>-<end>/` (both 20-digit,
//! zero-padded, so keys sort in ledger order):
//! - `entries`: each entry exactly as the ledger stores it, as records `index (8) ‖ length (4) ‖
//!   entry_hash ‖ encoding` (a pruned entry is its tombstone; see `schemas/ledger.md`);
//! - `checkpoint.<size>`: every checkpoint in `(start, end]`, the signed note as stored,
//!   cosignature lines included;
//! - `manifest.json`: sizes and BLAKE3 digests of the objects above, the segment's first and
//!   last `received_at`, its Merkle root, the gap records in it, the verifier key of each
//!   checkpoint, and the retain-until date. Written last: a segment without one is incomplete.
//!
//! Every object is written once with `x-amz-object-lock-mode: COMPLIANCE` and a retain-until of
//! the newest entry's `received_at` plus `retention_days` (≥ six years), then read back with
//! HEAD to check that the server applied the lock. An object already at a key is never written
//! again: if it holds the same bytes it counts as archived, if not it is an alarm.
//!
//! Only the replica holding the lease uploads. Every replica records in its own ledger how far
//! archiving got (`meta` `archived_through`): the active one after uploading, a standby after
//! checking that the segments in the bucket hold exactly its own entries. Once archiving is
//! configured, pruning never passes that mark: a payload leaves the ledger only after it is in
//! the archive.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use serde::{Deserialize, Serialize};

use crate::config::MIN_RETENTION_DAYS;
use crate::entry::{Entry, Hash, LedgerFormat};
use crate::store::{Gap, Ledger, LedgerError};

/// The `archive:` section of the evidence configuration (and what `ledger restore
/// --from-archive` reads).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub bucket: String,
    /// The S3 endpoint (`https://s3.example.com`); AWS's own for `region` when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// A YAML file with `access_key_id`, `secret_access_key` and optionally `session_token`.
    /// Read at start; never logged.
    pub credentials_file: PathBuf,
    /// Key prefix inside the bucket.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// How often sealed segments are archived.
    #[serde(default = "default_every", with = "humantime_serde")]
    pub every: Duration,
    /// Most entries in one segment (a segment still ends at a checkpoint, so one checkpoint
    /// over more entries than this makes one larger segment).
    #[serde(default = "default_segment_entries")]
    pub segment_max_entries: u64,
    /// Retain-until is the newest entry's `received_at` plus this; at least
    /// [`MIN_RETENTION_DAYS`] (six years).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_prefix() -> String {
    "gatehouse/ledger".into()
}
fn default_every() -> Duration {
    Duration::from_secs(3600)
}
fn default_segment_entries() -> u64 {
    50_000
}
fn default_retention_days() -> u32 {
    MIN_RETENTION_DAYS
}

impl ArchiveConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("archive.bucket is empty".into());
        }
        if self.retention_days < MIN_RETENTION_DAYS {
            return Err(format!(
                "archive.retention_days is {}, but archived evidence must be retained at least \
                 {MIN_RETENTION_DAYS} days (six years)",
                self.retention_days
            ));
        }
        if self.every < Duration::from_secs(1) {
            return Err("archive.every must be at least 1s".into());
        }
        if self.segment_max_entries == 0 || self.segment_max_entries > 1_000_000 {
            return Err("archive.segment_max_entries must be between 1 and 1000000".into());
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            return Err(format!(
                "archive.endpoint {endpoint:?} must be an http:// or https:// URL"
            ));
        }
        Ok(())
    }

    /// `<prefix>/segments/`.
    fn segments_prefix(&self) -> String {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            "segments/".into()
        } else {
            format!("{prefix}/segments/")
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid archive configuration: {0}")]
    Config(String),
    /// Names the file, never what is in it.
    #[error("archive credentials {path}: {why}")]
    Credentials { path: PathBuf, why: String },
    #[error("S3 {op} {key}: {message}")]
    S3 {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "{key} already holds different bytes; an archived object is never overwritten (see runbooks/archive.md)"
    )]
    Conflict { key: String },
    #[error("{key} was stored without compliance-mode Object Lock until {wanted}: {found}")]
    NotLocked {
        key: String,
        wanted: String,
        found: String,
    },
    #[error("segment {segment}: {why}")]
    Segment { segment: String, why: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The archive does not rebuild a ledger that verifies.
    #[error("{0}")]
    Restore(String),
    /// Restore will not start (a ledger is there already, no key to check against).
    #[error("{0}")]
    Refused(String),
}

/// The manifest of one segment (`manifest.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `gatehouse.archive.segment.v1`.
    pub format: String,
    pub start: u64,
    pub end: u64,
    pub entries: ObjectDigest,
    /// RFC 3339: the oldest and newest `received_at` of the segment's entries.
    pub first_received_at: String,
    pub last_received_at: String,
    /// The Merkle root of entries `0..end` (hex).
    pub root: String,
    /// The `entry_hash` of entry `end - 1` (hex).
    pub head_hash: String,
    pub gaps: Vec<ArchivedGap>,
    pub checkpoints: Vec<ArchivedCheckpoint>,
    /// The witnessed checkpoints (with the cosignatures received by the time the segment was
    /// sealed) of the segment's checkpoints that witnesses were shown; absent when none were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnessed: Vec<ArchivedWitnessed>,
    /// RFC 3339: the Object Lock retain-until date of every object of the segment.
    pub retain_until: String,
    /// The archived ledger's format (what its Merkle leaves are); absent in segments of
    /// format v1 ledgers archived before it was recorded.
    #[serde(default = "ledger_v1")]
    pub ledger_format: LedgerFormat,
}

fn ledger_v1() -> LedgerFormat {
    LedgerFormat::V1
}

pub const MANIFEST_FORMAT: &str = "gatehouse.archive.segment.v1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectDigest {
    /// The object's key, relative to the segment's directory.
    pub name: String,
    pub bytes: u64,
    /// BLAKE3 of the object (hex).
    pub blake3: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArchivedCheckpoint {
    pub size: u64,
    pub note: ObjectDigest,
    /// The verifier key the ledger recorded with it (signed-note form); restore checks the
    /// signature against the keys it is given, not this one.
    pub verifier_key: String,
}

/// A witnessed checkpoint (`crate::witness`) as stored, cosignatures included.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArchivedWitnessed {
    pub size: u64,
    pub note: ObjectDigest,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ArchivedGap {
    pub first: u64,
    pub last: u64,
    pub detected_at: i64,
}

/// The name of a segment's directory: `<start>-<end>`, 20 digits each.
pub fn segment_name(start: u64, end: u64) -> String {
    format!("{start:020}-{end:020}")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (start, end) = name.split_once('-')?;
    if start.len() != 20 || end.len() != 20 {
        return None;
    }
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then_some((start, end))
}

const ENTRIES_OBJECT: &str = "entries";
const MANIFEST_OBJECT: &str = "manifest.json";

fn checkpoint_object(size: u64) -> String {
    format!("checkpoint.{size:020}")
}

fn witnessed_object(size: u64) -> String {
    format!("witnessed.{size:020}")
}

/// A segment ready to upload: its objects (name, bytes), the manifest last.
#[derive(Debug)]
pub struct SealedSegment {
    pub start: u64,
    pub end: u64,
    pub objects: Vec<(String, Vec<u8>)>,
    pub manifest: Manifest,
    pub retain_until: time::OffsetDateTime,
}

fn digest(name: &str, bytes: &[u8]) -> ObjectDigest {
    ObjectDigest {
        name: name.to_owned(),
        bytes: bytes.len() as u64,
        blake3: blake3::hash(bytes).to_hex().to_string(),
    }
}

fn rfc3339_nanos(nanos: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    gatehouse_events::envelope::format_rfc3339(t)
}

/// Serialises stored entries as the `entries` object.
fn encode_entries(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|(_, v)| 12 + v.len()).sum());
    for (index, value) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Reads the `entries` object back; the error says where it stops making sense.
fn decode_entries(mut bytes: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 12 {
            return Err(format!("{} stray bytes at the end", bytes.len()));
        }
        let index = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(bytes[8..12].try_into().unwrap_or_default()) as usize;
        if bytes.len() - 12 < len {
            return Err(format!("the record of entry {index} is cut short"));
        }
        out.push((index, bytes[12..12 + len].to_vec()));
        bytes = &bytes[12 + len..];
    }
    Ok(out)
}

/// `received_at` and stream sequence of a stored value (an entry or a tombstone).
fn stored_fields(value: &[u8]) -> Option<(i64, u64)> {
    let encoding = value.get(32..)?;
    match Entry::decode(encoding) {
        Ok(e) => Some((e.received_at, e.stream_sequence)),
        Err(_) => crate::retention::Tombstone::decode(encoding)
            .map(|t| (t.received_at, t.stream_sequence)),
    }
}

/// The next segment to archive from `from`: up to the largest checkpoint size within
/// `max_entries`, else the first checkpoint beyond. `None` when no checkpoint covers entries
/// past `from` yet.
pub fn seal_next(
    ledger: &Ledger,
    from: u64,
    max_entries: u64,
    retention_days: u32,
    now: time::OffsetDateTime,
) -> Result<Option<SealedSegment>, ArchiveError> {
    seal_next_through(ledger, from, max_entries, u64::MAX, retention_days, now)
}

/// [`seal_next`], ending at a checkpoint no larger than `through` (the checkpoints whose
/// witness round has finished, when witnesses are configured).
pub fn seal_next_through(
    ledger: &Ledger,
    from: u64,
    max_entries: u64,
    through: u64,
    retention_days: u32,
    now: time::OffsetDateTime,
) -> Result<Option<SealedSegment>, ArchiveError> {
    let tree_size = ledger.tree_size().min(through);
    let within = ledger.checkpoints_in(
        from,
        from.saturating_add(max_entries).min(tree_size),
        usize::MAX,
    )?;
    let end = match within.last() {
        Some((size, _)) => *size,
        None => match ledger.checkpoints_in(from, tree_size, 1)?.first() {
            Some((size, _)) => *size,
            None => return Ok(None),
        },
    };
    seal(ledger, from, end, retention_days, now).map(Some)
}

/// Seals entries `start..end` (`end` the size of a checkpoint in this ledger).
pub fn seal(
    ledger: &Ledger,
    start: u64,
    end: u64,
    retention_days: u32,
    now: time::OffsetDateTime,
) -> Result<SealedSegment, ArchiveError> {
    let name = segment_name(start, end);
    let bad = |why: String| ArchiveError::Segment {
        segment: name.clone(),
        why,
    };
    let mut entries = Vec::with_capacity((end - start) as usize);
    let (mut first_at, mut newest_at) = (i64::MAX, i64::MIN);
    let mut sequences = (None, 0u64);
    for stored in ledger.entries(start)? {
        let stored = stored?;
        let Some(index) = stored.key.filter(|i| *i < end) else {
            break;
        };
        if index != start + entries.len() as u64 {
            return Err(bad(format!(
                "entry {} is missing from the ledger",
                start + entries.len() as u64
            )));
        }
        let mut value = stored.stored_hash.to_vec();
        value.extend_from_slice(&stored.encoding);
        let (received_at, sequence) = stored_fields(&value).ok_or_else(|| {
            bad(format!(
                "entry {index} does not decode; run gatehouse ledger verify"
            ))
        })?;
        first_at = first_at.min(received_at);
        newest_at = newest_at.max(received_at);
        if index == start {
            sequences.0 = Some(sequence);
        }
        sequences.1 = sequence;
        entries.push((index, value));
    }
    if entries.len() as u64 != end - start {
        return Err(bad(format!(
            "the ledger holds {} of its entries",
            entries.len()
        )));
    }
    // The sequence before the segment bounds which gap records belong to it: those detected
    // between its first entry's predecessor and its last entry.
    let before = match start.checked_sub(1) {
        Some(prev) => ledger
            .entries(prev)?
            .next()
            .transpose()?
            .and_then(|s| {
                let mut v = s.stored_hash.to_vec();
                v.extend_from_slice(&s.encoding);
                stored_fields(&v)
            })
            .map_or(0, |(_, seq)| seq),
        None => 0,
    };
    let gaps: Vec<ArchivedGap> = ledger
        .gaps()?
        .into_iter()
        .filter(|g| g.first > before && g.last < sequences.1)
        .map(|g| ArchivedGap {
            first: g.first,
            last: g.last,
            detected_at: g.detected_at,
        })
        .collect();
    let retain_until = retain_until(newest_at, retention_days, now);
    let entries_bytes = encode_entries(&entries);
    let head_hash = entries
        .last()
        .map(|(_, v)| hex::encode(&v[..32]))
        .unwrap_or_default();
    let mut objects = vec![(ENTRIES_OBJECT.to_owned(), entries_bytes)];
    let mut checkpoints = Vec::new();
    for (size, note) in ledger.checkpoints_in(start, end, usize::MAX)? {
        let object = checkpoint_object(size);
        checkpoints.push(ArchivedCheckpoint {
            size,
            note: digest(&object, note.as_bytes()),
            verifier_key: ledger.checkpoint_key(size)?.unwrap_or_default(),
        });
        objects.push((object, note.into_bytes()));
    }
    let mut witnessed = Vec::new();
    for size in checkpoints.iter().map(|c| c.size) {
        if let Some(note) = crate::witness::witnessed_checkpoint(ledger, size)? {
            let object = witnessed_object(size);
            witnessed.push(ArchivedWitnessed {
                size,
                note: digest(&object, note.as_bytes()),
            });
            objects.push((object, note.into_bytes()));
        }
    }
    if checkpoints.last().map(|c| c.size) != Some(end) {
        return Err(bad(format!("no checkpoint of size {end} in the ledger")));
    }
    let manifest = Manifest {
        ledger_format: ledger.format(),
        format: MANIFEST_FORMAT.into(),
        start,
        end,
        entries: digest(ENTRIES_OBJECT, &objects[0].1),
        first_received_at: rfc3339_nanos(first_at),
        last_received_at: rfc3339_nanos(newest_at),
        root: hex::encode(ledger.root(end)?),
        head_hash,
        gaps,
        checkpoints,
        witnessed,
        retain_until: gatehouse_events::envelope::format_rfc3339(retain_until),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| bad(format!("serialising the manifest: {e}")))?;
    objects.push((MANIFEST_OBJECT.to_owned(), manifest_bytes));
    Ok(SealedSegment {
        start,
        end,
        objects,
        manifest,
        retain_until,
    })
}

/// The newest entry's `received_at` plus the retention, in whole seconds (rounded up); never
/// earlier than a day from now, since a lock must lie in the future.
pub fn retain_until(
    newest_received_at: i64,
    retention_days: u32,
    now: time::OffsetDateTime,
) -> time::OffsetDateTime {
    let created = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(newest_received_at))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let until = created + time::Duration::days(i64::from(retention_days));
    let until = until.max(now + time::Duration::days(1));
    let whole = until.replace_nanosecond(0).unwrap_or(until);
    if whole < until {
        whole + time::Duration::seconds(1)
    } else {
        whole
    }
}

/// Whether a PUT wrote the object or found it there already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Written,
    AlreadyThere,
}

/// A bucket the segments go to.
#[derive(Clone)]
pub struct Archive {
    client: aws_sdk_s3::Client,
    config: ArchiveConfig,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("bucket", &self.config.bucket)
            .field("endpoint", &self.config.endpoint)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

fn s3_error<E: std::error::Error + 'static>(op: &'static str, key: &str, e: E) -> ArchiveError {
    ArchiveError::S3 {
        op,
        key: key.to_owned(),
        message: DisplayErrorContext(e).to_string(),
    }
}

async fn read_body(
    response: aws_sdk_s3::operation::get_object::GetObjectOutput,
    key: &str,
) -> Result<Vec<u8>, ArchiveError> {
    let body = response
        .body
        .collect()
        .await
        .map_err(|e| s3_error("GetObject", key, e))?;
    Ok(body.into_bytes().to_vec())
}

impl Archive {
    /// Reads the credentials file and builds the client (no request is made).
    pub fn connect(config: &ArchiveConfig) -> Result<Self, ArchiveError> {
        config.validate().map_err(ArchiveError::Config)?;
        let path = &config.credentials_file;
        let text = std::fs::read_to_string(path).map_err(|e| ArchiveError::Credentials {
            path: path.clone(),
            why: e.to_string(),
        })?;
        // serde's messages quote neither values nor lines, only field names and positions.
        let creds: CredentialsFile =
            yaml_serde::from_str(&text).map_err(|e| ArchiveError::Credentials {
                path: path.clone(),
                why: format!(
                    "expected access_key_id, secret_access_key and optionally session_token ({})",
                    e.location()
                        .map(|l| format!("line {}", l.line()))
                        .unwrap_or_default()
                ),
            })?;
        let credentials = aws_sdk_s3::config::Credentials::new(
            creds.access_key_id,
            creds.secret_access_key,
            creds.session_token,
            None,
            "gatehouse-archive",
        );
        // rustls with ring, as everywhere else in Gatehouse (no aws-lc-rs).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(120))
            .build();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .http_client(http)
            .timeout_config(timeouts)
            .force_path_style(config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    /// The S3 client, for tools and tests that inspect the bucket.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The full key of object `name` of segment `start..end`.
    pub fn key(&self, start: u64, end: u64, name: &str) -> String {
        format!(
            "{}{}/{name}",
            self.config.segments_prefix(),
            segment_name(start, end)
        )
    }

    /// The object at `key`, `None` if there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error("GetObject", key, e)),
        };
        Ok(Some(read_body(response, key).await?))
    }

    /// The **first** version of the object at `key` (what the archiver wrote, under its lock),
    /// and how many later versions sit on top of it (a PUT to a versioned bucket adds one; it
    /// cannot replace a locked version). Falls back to the plain object on servers that do
    /// not list versions.
    pub async fn get_first_version(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, usize)>, ArchiveError> {
        let listed = self
            .client
            .list_object_versions()
            .bucket(&self.config.bucket)
            .prefix(key)
            .send()
            .await;
        let versions: Vec<String> = match &listed {
            // S3 lists the versions of a key newest first.
            Ok(page) => page
                .versions()
                .iter()
                .filter(|v| v.key() == Some(key))
                .filter_map(|v| v.version_id().map(str::to_owned))
                .collect(),
            Err(_) => Vec::new(),
        };
        let Some(first) = versions.last().filter(|v| v.as_str() != "null") else {
            return Ok(self.get(key).await?.map(|b| (b, 0)));
        };
        let response = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(key)
            .version_id(first)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", key, e))?;
        Ok(Some((read_body(response, key).await?, versions.len() - 1)))
    }

    /// Writes `body` at `key` once, under compliance-mode Object Lock until `retain_until`,
    /// and checks that the server applied the lock. An object already there is read and
    /// compared instead: never written over (with versioning, a second PUT would add a version).
    pub async fn put_once(
        &self,
        key: &str,
        body: Vec<u8>,
        retain_until: time::OffsetDateTime,
    ) -> Result<Put, ArchiveError> {
        let exists = match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
            Err(e) => return Err(s3_error("HeadObject", key, e)),
        };
        if exists {
            let existing = self.get(key).await?;
            return if existing.as_deref() == Some(&body[..]) {
                Ok(Put::AlreadyThere)
            } else {
                Err(ArchiveError::Conflict {
                    key: key.to_owned(),
                })
            };
        }
        let until = DateTime::from_secs(retain_until.unix_timestamp());
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(until)
            // Object Lock requires an integrity check on the upload (Content-MD5 or a checksum).
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| s3_error("PutObject", key, e))?;
        let head = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", key, e))?;
        let mode = head.object_lock_mode().cloned();
        let found_until = head.object_lock_retain_until_date().map(|d| d.secs());
        if mode != Some(ObjectLockMode::Compliance) || found_until.is_none_or(|u| u < until.secs())
        {
            return Err(ArchiveError::NotLocked {
                key: key.to_owned(),
                wanted: gatehouse_events::envelope::format_rfc3339(retain_until),
                found: format!(
                    "mode {:?}, retain-until {:?}",
                    mode.map(|m| m.as_str().to_owned()),
                    found_until
                ),
            });
        }
        Ok(Put::Written)
    }

    /// Uploads a sealed segment, its manifest last. Returns how many objects were written now
    /// (the others were there already, with the same bytes), and the manifest as uploaded.
    ///
    /// Finishing an upload cut short may find a `witnessed.<size>` object written with fewer
    /// cosignatures than the ledger holds now: that object is locked, so it stays, and the
    /// manifest names the bytes it holds (the later cosignatures go with later segments).
    pub async fn upload(&self, segment: &SealedSegment) -> Result<(usize, Manifest), ArchiveError> {
        let mut written = 0;
        let mut manifest = segment.manifest.clone();
        for (name, bytes) in &segment.objects {
            if name == MANIFEST_OBJECT {
                continue;
            }
            let key = self.key(segment.start, segment.end, name);
            match self
                .put_once(&key, bytes.clone(), segment.retain_until)
                .await
            {
                Ok(Put::Written) => written += 1,
                Ok(Put::AlreadyThere) => {}
                Err(ArchiveError::Conflict { .. }) if name.starts_with("witnessed.") => {
                    let existing = self.get(&key).await?.ok_or_else(|| ArchiveError::Segment {
                        segment: segment_name(segment.start, segment.end),
                        why: format!("{name} vanished while it was read"),
                    })?;
                    if let Some(w) = manifest.witnessed.iter_mut().find(|w| w.note.name == *name) {
                        w.note = digest(name, &existing);
                    }
                    tracing::warn!(object = %key, "kept the witnessed checkpoint uploaded before the upload was cut short; cosignatures received since go with later segments");
                }
                Err(e) => return Err(e),
            }
        }
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Segment {
            segment: segment_name(segment.start, segment.end),
            why: format!("serialising the manifest: {e}"),
        })?;
        let key = self.key(segment.start, segment.end, MANIFEST_OBJECT);
        if self.put_once(&key, bytes, segment.retain_until).await? == Put::Written {
            written += 1;
        }
        Ok((written, manifest))
    }

    /// Segment directories under the prefix (`start`, `end`, whether it has its manifest),
    /// ordered by start, from `from` on (`None`: all).
    pub async fn segments(&self, from: Option<u64>) -> Result<Vec<(u64, u64, bool)>, ArchiveError> {
        let prefix = self.config.segments_prefix();
        let mut request = self
            .client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(&prefix);
        if let Some(from) = from.filter(|f| *f > 0) {
            // Keys sort by start: everything from `from` on sorts after `<from - 1>-9999…`.
            request = request.start_after(format!("{prefix}{:020}-99999999999999999999", from - 1));
        }
        let mut pages = request.into_paginator().send();
        let mut found: std::collections::BTreeMap<(u64, u64), bool> = Default::default();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", &prefix, e))?;
            for object in page.contents() {
                let Some(rest) = object.key().and_then(|k| k.strip_prefix(&prefix)) else {
                    continue;
                };
                let Some((dir, name)) = rest.split_once('/') else {
                    continue;
                };
                let Some(range) = parse_segment_name(dir) else {
                    continue;
                };
                let manifest = found.entry(range).or_default();
                *manifest |= name == MANIFEST_OBJECT;
            }
            // Archiving only needs the next one; restore reads them all.
            if from.is_some() && found.values().any(|m| *m) {
                break;
            }
        }
        Ok(found.into_iter().map(|((s, e), m)| (s, e, m)).collect())
    }

    /// The manifest of segment `start..end` (its first version), checked against its name.
    pub async fn manifest(&self, start: u64, end: u64) -> Result<Option<Manifest>, ArchiveError> {
        let key = self.key(start, end, MANIFEST_OBJECT);
        let Some((bytes, _)) = self.get_first_version(&key).await? else {
            return Ok(None);
        };
        let bad = |why: String| ArchiveError::Segment {
            segment: segment_name(start, end),
            why,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("the manifest does not parse: {e}")))?;
        if manifest.format != MANIFEST_FORMAT || manifest.start != start || manifest.end != end {
            return Err(bad(format!(
                "the manifest says {} {}..{}, not this segment",
                manifest.format, manifest.start, manifest.end
            )));
        }
        Ok(Some(manifest))
    }

    /// An object of a segment (its first version), checked against its digest in the manifest.
    async fn checked(
        &self,
        manifest: &Manifest,
        object: &ObjectDigest,
    ) -> Result<Vec<u8>, ArchiveError> {
        let segment = segment_name(manifest.start, manifest.end);
        let key = self.key(manifest.start, manifest.end, &object.name);
        let (bytes, later) =
            self.get_first_version(&key)
                .await?
                .ok_or_else(|| ArchiveError::Segment {
                    segment: segment.clone(),
                    why: format!("{} is missing from the archive", object.name),
                })?;
        if later > 0 {
            tracing::warn!(key = %key, later_versions = later, "an archived object was written over; restoring its first, locked version");
        }
        let found = blake3::hash(&bytes).to_hex().to_string();
        if bytes.len() as u64 != object.bytes || found != object.blake3 {
            return Err(ArchiveError::Segment {
                segment,
                why: format!(
                    "{} was altered: {} bytes with BLAKE3 {found}, the manifest says {} bytes with {}",
                    object.name,
                    bytes.len(),
                    object.bytes,
                    object.blake3
                ),
            });
        }
        Ok(bytes)
    }
}

/// What one archiving round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Segments uploaded now.
    pub uploaded: u64,
    /// Segments found in the bucket (archived by another replica, or before a restart) whose
    /// entries equal this ledger's.
    pub adopted: u64,
    /// Every entry before this is archived.
    pub archived_through: u64,
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// One round: adopt the segments already in the bucket that continue this ledger's archived
/// part, then (when `upload`, on the lease holder) seal and upload the segments the
/// checkpoints cover beyond it. The mark moves after each segment, so a failure loses nothing.
/// `seal_through`: when witnesses are configured, the largest checkpoint whose witness round
/// has finished; no segment is sealed past it, so each carries its checkpoints' cosignatures.
pub async fn round(
    ledger: &Arc<Mutex<Ledger>>,
    archive: &Archive,
    upload: bool,
    seal_through: Option<u64>,
) -> Result<Round, ArchiveError> {
    let mut report = Round::default();
    loop {
        let (from, tree_size) = {
            let l = lock(ledger);
            (l.archived_through()?.unwrap_or(0), l.tree_size())
        };
        report.archived_through = from;
        let listed = archive.segments(Some(from)).await?;
        let next = listed
            .iter()
            .find(|(start, _, complete)| *start == from && *complete);
        // An upload cut short (no manifest) is finished with the same end, so that its objects
        // are the same bytes and no second directory starts at `from`.
        let unfinished = listed
            .iter()
            .find(|(start, end, complete)| *start == from && !complete && *end <= tree_size)
            .map(|(_, end, _)| *end);
        if let Some(&(start, end, _)) = next {
            if end > tree_size {
                // Archived by a replica further ahead; this one has not ingested that far.
                return Ok(report);
            }
            let manifest =
                archive
                    .manifest(start, end)
                    .await?
                    .ok_or_else(|| ArchiveError::Segment {
                        segment: segment_name(start, end),
                        why: "its manifest vanished while it was read".into(),
                    })?;
            let reader = ledger.clone();
            let ours = tokio::task::spawn_blocking(move || {
                let entries = seal_entries(&lock(&reader), start, end)?;
                Ok::<_, ArchiveError>(blake3::hash(&encode_entries(&entries)).to_hex().to_string())
            })
            .await
            .map_err(|e| ArchiveError::Restore(e.to_string()))??;
            if ours != manifest.entries.blake3 {
                return Err(ArchiveError::Segment {
                    segment: segment_name(start, end),
                    why: "the archived entries differ from this ledger's entries".into(),
                });
            }
            lock(ledger).set_archived_through(end)?;
            report.adopted += 1;
            report.archived_through = end;
            continue;
        }
        if !upload {
            return Ok(report);
        }
        let (max, days) = (
            archive.config.segment_max_entries,
            archive.config.retention_days,
        );
        let reader = ledger.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let now = time::OffsetDateTime::now_utc();
            match unfinished {
                Some(end) => seal(&lock(&reader), from, end, days, now).map(Some),
                None => seal_next_through(
                    &lock(&reader),
                    from,
                    max,
                    seal_through.unwrap_or(u64::MAX),
                    days,
                    now,
                ),
            }
        })
        .await
        .map_err(|e| ArchiveError::Restore(e.to_string()))??;
        let Some(sealed) = sealed else {
            return Ok(report);
        };
        let (written, _) = archive.upload(&sealed).await?;
        lock(ledger).set_archived_through(sealed.end)?;
        tracing::info!(
            segment = %segment_name(sealed.start, sealed.end),
            entries = sealed.end - sealed.start,
            objects = written,
            retain_until = %sealed.manifest.retain_until,
            "ledger segment archived"
        );
        report.uploaded += 1;
        report.archived_through = sealed.end;
    }
}

/// The stored values of entries `start..end`.
fn seal_entries(
    ledger: &Ledger,
    start: u64,
    end: u64,
) -> Result<Vec<(u64, Vec<u8>)>, ArchiveError> {
    let mut out = Vec::new();
    for stored in ledger.entries(start)? {
        let stored = stored?;
        let Some(index) = stored.key.filter(|i| *i < end) else {
            break;
        };
        let mut value = stored.stored_hash.to_vec();
        value.extend_from_slice(&stored.encoding);
        out.push((index, value));
    }
    Ok(out)
}

/// What a restore rebuilt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub segments: u64,
    pub entries: u64,
    pub head_hash: Hash,
    pub root: Hash,
    /// Every checkpoint restored (size, root), each verified against a given key and the tree.
    pub checkpoints: Vec<(u64, Hash)>,
    pub last_sequence: u64,
}

/// Rebuilds the ledger at `data_dir/ledger` from the archive: every segment in order, each
/// object checked against its manifest's digest, the chain and tree rebuilt, then the whole
/// ledger verified as `gatehouse ledger verify` does and every checkpoint's signature checked
/// against `verifiers` and its root against the tree. Refuses when a ledger is there already;
/// built beside it and moved into place only once it verifies.
pub async fn restore(
    archive: &Archive,
    data_dir: &Path,
    verifiers: &[gatehouse_proof::checkpoint::NoteVerifier],
    mut progress: impl FnMut(u64, u64),
) -> Result<Restored, ArchiveError> {
    let target = crate::store::ledger_dir(data_dir);
    if target.exists() {
        return Err(ArchiveError::Refused(format!(
            "{} exists; restore builds a new ledger and never writes over one (move it away first)",
            target.display()
        )));
    }
    if verifiers.is_empty() {
        return Err(ArchiveError::Refused(
            "give the checkpoint verifier key(s) (--key) the archived checkpoints are checked against".into(),
        ));
    }
    let staging = data_dir.join(".ledger-restore");
    if staging.exists() {
        // What an earlier, failed restore left; it never was the ledger.
        std::fs::remove_dir_all(&staging)
            .map_err(|e| ArchiveError::Refused(format!("removing {}: {e}", staging.display())))?;
    }
    let result = restore_into(archive, &staging, verifiers, &mut progress).await;
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::rename(crate::store::ledger_dir(&staging), &target).map_err(|e| {
        ArchiveError::Restore(format!("moving the ledger to {}: {e}", target.display()))
    })?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(restored)
}

async fn restore_into(
    archive: &Archive,
    staging: &Path,
    verifiers: &[gatehouse_proof::checkpoint::NoteVerifier],
    progress: &mut impl FnMut(u64, u64),
) -> Result<Restored, ArchiveError> {
    let segments = archive.segments(None).await?;
    if segments.is_empty() {
        return Err(ArchiveError::Restore(format!(
            "the archive holds no segments under s3://{}/{}",
            archive.config.bucket,
            archive.config.segments_prefix()
        )));
    }
    // A directory without a manifest beside a complete one of the same start is an upload
    // that was cut short and then sealed differently: the complete one is the segment.
    let segments: Vec<(u64, u64, bool)> = segments
        .iter()
        .filter(|(start, end, complete)| {
            let superseded = !complete && segments.iter().any(|(s, _, c)| s == start && *c);
            if superseded {
                tracing::warn!(segment = %segment_name(*start, *end), "ignoring an incomplete segment beside a complete one");
            }
            !superseded
        })
        .copied()
        .collect();
    let total = segments.len() as u64;
    let mut ledger = Ledger::open(staging)?;
    let mut expected = 0u64;
    for (n, (start, end, complete)) in segments.into_iter().enumerate() {
        let name = segment_name(start, end);
        if start != expected {
            return Err(ArchiveError::Restore(format!(
                "segment missing: the archive has no segment starting at entry {expected} (the next one is {name})"
            )));
        }
        if !complete {
            return Err(ArchiveError::Segment {
                segment: name,
                why: "its manifest is missing (the segment is incomplete or was deleted)".into(),
            });
        }
        let manifest =
            archive
                .manifest(start, end)
                .await?
                .ok_or_else(|| ArchiveError::Segment {
                    segment: name.clone(),
                    why: "its manifest is missing".into(),
                })?;
        let bad = |why: String| ArchiveError::Segment {
            segment: name.clone(),
            why,
        };
        // The restored ledger is in the archived one's format (every segment's is the same).
        ledger
            .set_format_while_empty(manifest.ledger_format)
            .map_err(|_| {
                bad(format!(
                    "is of ledger format {}, the segments before it of {}",
                    manifest.ledger_format.marker(),
                    ledger.format().marker()
                ))
            })?;
        let entries = archive.checked(&manifest, &manifest.entries).await?;
        let entries = decode_entries(&entries).map_err(|e| bad(format!("entries: {e}")))?;
        if entries.len() as u64 != end - start {
            return Err(bad(format!(
                "holds {} entries, not {}",
                entries.len(),
                end - start
            )));
        }
        let mut checkpoints = Vec::new();
        for c in &manifest.checkpoints {
            if c.size <= start || c.size > end {
                return Err(bad(format!(
                    "lists a checkpoint of size {} outside it",
                    c.size
                )));
            }
            let note = archive.checked(&manifest, &c.note).await?;
            let note = String::from_utf8(note)
                .map_err(|_| bad(format!("checkpoint {} is not UTF-8", c.size)))?;
            checkpoints.push((c.size, note, c.verifier_key.clone()));
        }
        let mut witnessed = Vec::new();
        for w in &manifest.witnessed {
            if !manifest.checkpoints.iter().any(|c| c.size == w.size) {
                return Err(bad(format!(
                    "lists a witnessed checkpoint of size {} without its checkpoint",
                    w.size
                )));
            }
            let note = archive.checked(&manifest, &w.note).await?;
            witnessed.push((w.size, note));
        }
        let gaps: Vec<Gap> = manifest
            .gaps
            .iter()
            .map(|g| Gap {
                first: g.first,
                last: g.last,
                detected_at: g.detected_at,
            })
            .collect();
        ledger
            .append_restored(&entries, &gaps, &checkpoints)
            .map_err(|e| bad(e.to_string()))?;
        let records: Vec<(String, Vec<u8>)> = witnessed
            .into_iter()
            .map(|(size, note)| (crate::witness::checkpoint_record(size), note))
            .collect();
        ledger
            .put_witness_records(&records)
            .map_err(|e| bad(e.to_string()))?;
        if hex::encode(ledger.root(end)?) != manifest.root {
            return Err(bad(
                "its entries do not give the Merkle root its manifest records".into(),
            ));
        }
        expected = end;
        progress(n as u64 + 1, total);
    }
    ledger.flush()?;
    let verified = match crate::verify::verify(&ledger)? {
        Ok(v) => v,
        Err(broken) => {
            return Err(ArchiveError::Restore(format!(
                "the restored ledger does not verify: {broken}"
            )));
        }
    };
    let mut checked = Vec::new();
    for (size, note) in ledger.checkpoints()? {
        let opened = verifiers.iter().find_map(|v| v.open(&note).ok());
        let Some(checkpoint) = opened else {
            let signers: Vec<String> = gatehouse_proof::checkpoint::note_signers(&note)
                .into_iter()
                .map(|(name, id)| format!("{name} ({id})"))
                .collect();
            return Err(ArchiveError::Restore(format!(
                "the archived checkpoint of size {size} is not signed by any key given (signed by: {})",
                signers.join(", ")
            )));
        };
        if checkpoint.size != size || ledger.root(size)? != checkpoint.root {
            return Err(ArchiveError::Restore(format!(
                "the archived checkpoint of size {size} does not match the restored tree (it signs size {} root {})",
                checkpoint.size,
                hex::encode(checkpoint.root)
            )));
        }
        // Its witnessed checkpoint, if archived: signed by the same key for the same tree (the
        // cosignatures are checked by whoever holds the witnesses' keys: `gatehouse verify`).
        if let Some(note) = crate::witness::witnessed_checkpoint(&ledger, size)? {
            let signed = verifiers.iter().any(|v| {
                gatehouse_proof::cosignature::check_witnessed(&checkpoint, v, &note, &[], 0).is_ok()
            });
            if !signed {
                return Err(ArchiveError::Restore(format!(
                    "the archived witnessed checkpoint of size {size} is not the checkpoint's,                      signed by a key given"
                )));
            }
        }
        checked.push((size, checkpoint.root));
    }
    if checked.last().map(|(s, _)| *s) != Some(verified.entries) {
        return Err(ArchiveError::Restore(format!(
            "no archived checkpoint covers all {} restored entries",
            verified.entries
        )));
    }
    Ok(Restored {
        segments: total,
        entries: verified.entries,
        head_hash: verified.head_hash,
        root: verified
            .merkle_root
            .unwrap_or_else(crate::merkle::empty_root),
        checkpoints: checked,
        last_sequence: verified.last_sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_cut_records_are_named() {
        let entries = vec![(0, vec![1u8; 40]), (1, vec![2u8; 33])];
        let bytes = encode_entries(&entries);
        assert_eq!(decode_entries(&bytes).unwrap(), entries);
        let err = decode_entries(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(err, "the record of entry 1 is cut short");
        assert!(decode_entries(&bytes[..5]).unwrap_err().contains("stray"));
    }

    #[test]
    fn segment_names_sort_in_ledger_order_and_parse_back() {
        assert_eq!(
            segment_name(0, 100),
            "00000000000000000000-00000000000000000100"
        );
        assert!(segment_name(900, 1000) < segment_name(1000, 1100));
        assert_eq!(parse_segment_name(&segment_name(7, 9)), Some((7, 9)));
        assert_eq!(parse_segment_name("7-9"), None);
        assert_eq!(parse_segment_name(&segment_name(9, 7)), None);
    }

    #[test]
    fn retain_until_is_six_years_from_the_newest_entry_and_in_the_future() {
        let now = time::macros::datetime!(2026-12-07 12:00 UTC);
        let created = time::macros::datetime!(2026-12-01 10:00:00.5 UTC);
        let nanos = created.unix_timestamp_nanos() as i64;
        let until = retain_until(nanos, MIN_RETENTION_DAYS, now);
        assert_eq!(until, time::macros::datetime!(2032-12-01 10:00:01 UTC));
        // Entries already older than the retention still get a lock in the future.
        let old = time::macros::datetime!(2019-01-01 0:00 UTC).unix_timestamp_nanos() as i64;
        assert_eq!(
            retain_until(old, MIN_RETENTION_DAYS, now),
            now + time::Duration::days(1)
        );
    }

    #[test]
    fn less_than_six_years_is_refused() {
        let text = "bucket: b\ncredentials_file: /c\nretention_days: 2000\n";
        let config: ArchiveConfig = yaml_serde::from_str(text).unwrap();
        let refused = config.validate().unwrap_err();
        assert!(refused.contains("at least 2192 days"), "{refused}");
        let config: ArchiveConfig =
            yaml_serde::from_str("bucket: b\ncredentials_file: /c\n").unwrap();
        config.validate().unwrap();
        assert_eq!(config.retention_days, 2192);
        assert_eq!(config.segments_prefix(), "gatehouse/ledger/segments/");
    }
}
