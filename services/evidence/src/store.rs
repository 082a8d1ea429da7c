//! The ledger's RocksDB store.
//!
//! Layout (column families; byte formats in `schemas/ledger.md`):
//! - `entries`: key = index as u64 big-endian; value = entry_hash (32 bytes) ‖ entry encoding.
//! - `meta`: `format` → `gatehouse.ledger.v2` (or `v1`, whose leaves hash the encoding); `head` → next_index u64 BE ‖ head_hash 32 bytes ‖
//!   last_stream_sequence u64 BE; `gap/` ‖ first missing sequence u64 BE → last missing sequence
//!   u64 BE ‖ detected_at i64 BE (nanoseconds); `tree_size` → leaves in the tree, u64 BE;
//!   `checkpoint/` ‖ tree size u64 BE → the signed checkpoint (C2SP signed note, UTF-8);
//!   `checkpoint-key/` ‖ tree size u64 BE → its verifier key (signed-note form);
//!   `legal-hold/` ‖ id → a legal hold (JSON); `pruned_through` → the index pruning resumes
//!   from, u64 BE.
//! - `tree`: key = level (1 byte) ‖ index u64 BE; value = the hash of that perfect subtree of the
//!   Merkle tree ([`crate::merkle`]).
//! - `index`: search keys ([`crate::index`]), empty values; `meta` `index_size` says how many
//!   entries they cover.
//!
//! Atomicity and durability: [`Ledger::append`] writes the new entries, the tree nodes they
//! complete, any gap records, the new tree size and the new head in **one** `WriteBatch` with
//! `sync = true`. After it returns `Ok`, all of them survive
//! a crash or power loss; if it fails or the process dies during it, none of them are visible on
//! restart. Because the last applied stream sequence lives in the same batch as the entries, a
//! redelivered event is recognised after any crash and never appended twice.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions,
};

use crate::entry::{
    DecodeError, Entry, EventTooLarge, GENESIS_HASH, Hash, LedgerFormat, entry_hash,
};
use crate::index;
use crate::merkle;
use crate::retention::{self, HoldQuery, LegalHold, Pruned, Tombstone};

/// The stored perfect subtrees, as the proofs read them.
struct Nodes<'a>(&'a Ledger);

impl merkle::NodeSource for Nodes<'_> {
    type Error = LedgerError;
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        self.0.node(level, index)
    }
}

/// Stored nodes, each read from RocksDB once while the cache lasts.
struct CachedNodes<'a> {
    ledger: &'a Ledger,
    cache: std::collections::HashMap<(u8, u64), Hash>,
}

/// Nodes a [`Prover`] remembers at most; beyond, it starts afresh (only speed is lost).
const PROVER_CACHE_MAX: usize = 1 << 20;

impl merkle::NodeSource for CachedNodes<'_> {
    type Error = LedgerError;
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        if let Some(node) = self.cache.get(&(level, index)) {
            return Ok(*node);
        }
        if self.cache.len() >= PROVER_CACHE_MAX {
            self.cache.clear();
        }
        let node = self.ledger.node(level, index)?;
        self.cache.insert((level, index), node);
        Ok(node)
    }
}

/// Inclusion proofs of many entries in one tree ([`Ledger::prover`]). Neighbouring entries'
/// proofs share most of their nodes, so proving entries in order reads about two stored nodes
/// per entry instead of one per level.
pub struct Prover<'a> {
    nodes: CachedNodes<'a>,
    size: u64,
}

impl Prover<'_> {
    /// The inclusion proof of entry `index` (`index < size`).
    pub fn inclusion_proof(&mut self, index: u64) -> Result<Vec<Hash>, LedgerError> {
        if index >= self.size {
            return Err(LedgerError::BeyondTree {
                asked: index + 1,
                tree_size: self.size,
            });
        }
        merkle::inclusion_proof(&mut self.nodes, index, self.size)
    }

    /// The hash of the subtree over entries `start .. start + size` of this tree.
    pub fn subtree(&mut self, start: u64, size: u64) -> Result<Hash, LedgerError> {
        if size == 0 || start.saturating_add(size) > self.size {
            return Err(LedgerError::BeyondTree {
                asked: start.saturating_add(size),
                tree_size: self.size,
            });
        }
        merkle::subtree_hash(&mut self.nodes, start, size)
    }
}

/// A search over the indexes ([`Ledger::search`]).
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Every condition must hold: the event carries this value in this field.
    pub fields: Vec<(index::Field, String)>,
    /// `received_at` bounds, nanoseconds: inclusive from, exclusive to.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Only entries after this index (paging).
    pub after: Option<u64>,
    pub limit: usize,
}

/// An event's `subject` (its request or session id), if it has one.
fn event_subject(event: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Subject {
        subject: String,
    }
    serde_json::from_slice::<Subject>(event)
        .ok()
        .map(|s| s.subject)
}

fn index_keys(index: u64, received_at: i64, event: &[u8]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = index::fields(event)
        .into_iter()
        .map(|(field, value)| index::key(field, &value, index))
        .collect();
    keys.push(index::time_key(received_at, index));
    keys
}

fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = level;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

pub const CF_ENTRIES: &str = "entries";
pub const CF_META: &str = "meta";
pub const CF_TREE: &str = "tree";
pub const CF_INDEX: &str = "index";

const KEY_FORMAT: &[u8] = b"format";
const KEY_HEAD: &[u8] = b"head";
const GAP_PREFIX: &[u8] = b"gap/";
const KEY_TREE_SIZE: &[u8] = b"tree_size";
const KEY_INDEX_SIZE: &[u8] = b"index_size";
const KEY_PRUNED_THROUGH: &[u8] = b"pruned_through";
const LEGAL_HOLD_PREFIX: &[u8] = b"legal-hold/";
const CHECKPOINT_PREFIX: &[u8] = b"checkpoint/";
const CHECKPOINT_KEY_PREFIX: &[u8] = b"checkpoint-key/";
/// The witness client's records (`witness.rs`): what each witness last cosigned, and the
/// witnessed checkpoints with their cosignatures.
const WITNESS_PREFIX: &[u8] = b"witness/";
/// Entries hashed into the tree per batch when building it for a ledger written before it.
const BACKFILL_BATCH: u64 = 10_000;

/// The RocksDB directory inside a service's data directory.
pub fn ledger_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger")
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("RocksDB at {path}: {source}")]
    Db {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} lacks the column family {name}")]
    MissingColumnFamily { path: PathBuf, name: &'static str },
    #[error("no ledger at {0} (expected a RocksDB directory made by gatehouse evidence)")]
    Missing(PathBuf),
    #[error("{path} is not a Gatehouse ledger (format {found:?})")]
    WrongFormat { path: PathBuf, found: String },
    #[error("the ledger head record is damaged ({0} bytes)")]
    BadHead(usize),
    #[error("entry {index}: {source}")]
    Decode { index: u64, source: DecodeError },
    #[error(transparent)]
    TooLarge(#[from] EventTooLarge),
    #[error("refusing to append stream sequence {sequence} after {last}: sequences must increase")]
    OutOfOrder { sequence: u64, last: u64 },
    #[error("the ledger was opened read-only")]
    ReadOnly,
    #[error("the Merkle tree holds {tree_size} entries; {asked} asked for")]
    BeyondTree { asked: u64, tree_size: u64 },
    #[error("the Merkle tree node {level}/{index} is missing")]
    MissingNode { level: u8, index: u64 },
    #[error(
        "the search indexes are not built yet; they are built when gatehouse evidence opens the ledger"
    )]
    NotIndexed,
    #[error("legal hold record: {0}")]
    Hold(String),
    /// An archived entry that cannot be put back where it claims to belong.
    #[error("restoring entry {index}: {why}")]
    Restore { index: u64, why: String },
    /// The ledger no longer extends what an earlier checkpoint signed: it was rewritten. No
    /// checkpoint is signed over it.
    #[error(
        "the ledger is not consistent with checkpoint {size}: {why}; refusing to sign (see runbooks/ledger-verify-failed.md)"
    )]
    Inconsistent { size: u64, why: String },
}

/// What [`Ledger::issue_checkpoint`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issued {
    /// A new signed checkpoint (the signed note) at this size.
    Signed { size: u64, note: String },
    /// The tree has not grown since the last checkpoint.
    Unchanged { size: u64 },
}

/// What [`Ledger::record_checkpoint`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now: the tree has the same root at that size.
    New { size: u64 },
    /// Already recorded.
    Known { size: u64 },
    /// The checkpoint is larger than this tree (still catching up); nothing recorded.
    Ahead { size: u64, tree_size: u64 },
}

/// Where the chain ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The index the next entry gets; also the number of entries.
    pub next_index: u64,
    /// entry_hash of the last entry ([`GENESIS_HASH`] when empty).
    pub hash: Hash,
    /// The last JetStream sequence applied (0 when empty).
    pub last_sequence: u64,
}

impl Head {
    const LEN: usize = 8 + 32 + 8;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.next_index.to_be_bytes());
        out[8..40].copy_from_slice(&self.hash);
        out[40..].copy_from_slice(&self.last_sequence.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        if bytes.len() != Self::LEN {
            return Err(LedgerError::BadHead(bytes.len()));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[8..40]);
        Ok(Self {
            next_index: be_u64(&bytes[..8]),
            hash,
            last_sequence: be_u64(&bytes[40..]),
        })
    }
}

impl Default for Head {
    fn default() -> Self {
        Self {
            next_index: 0,
            hash: GENESIS_HASH,
            last_sequence: 0,
        }
    }
}

/// An event to append, as the consumer received it.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub stream_sequence: u64,
    /// When JetStream stored it, nanoseconds since the Unix epoch.
    pub received_at: i64,
    pub event: Vec<u8>,
}

/// Stream sequences the consumer expected but the stream no longer had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
    pub detected_at: i64,
}

impl Gap {
    /// Its `meta` record: `gap/` ‖ first → last ‖ detected_at.
    fn record(&self) -> (Vec<u8>, Vec<u8>) {
        let mut key = GAP_PREFIX.to_vec();
        key.extend_from_slice(&self.first.to_be_bytes());
        let mut value = self.last.to_be_bytes().to_vec();
        value.extend_from_slice(&self.detected_at.to_be_bytes());
        (key, value)
    }
}

/// One stored entry as read back: the hash that was stored, and the stored encoding.
#[derive(Clone, Debug)]
pub struct StoredEntry {
    /// The key as an index; `None` if the key is not 8 bytes (something foreign was written).
    pub key: Option<u64>,
    pub stored_hash: Hash,
    pub encoding: Vec<u8>,
}

impl StoredEntry {
    /// What is left of the entry if retention pruned it.
    pub fn tombstone(&self) -> Option<retention::Tombstone> {
        retention::Tombstone::decode(&self.encoding)
    }
}

/// The hash-linked ledger.
pub struct Ledger {
    db: DB,
    path: PathBuf,
    head: Head,
    /// Leaves in the Merkle tree: `head.next_index` once the tree is built.
    tree_size: u64,
    /// Entries the search indexes cover.
    index_size: u64,
    read_only: bool,
    /// What a Merkle leaf is in this ledger (fixed when it was created).
    format: LedgerFormat,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("head", &self.head)
            .finish()
    }
}

impl Ledger {
    /// Opens (creating if needed, in the current format) the ledger under `data_dir/ledger`
    /// for appending.
    pub fn open(data_dir: &Path) -> Result<Self, LedgerError> {
        Self::open_as(data_dir, LedgerFormat::CURRENT)
    }

    /// Opens the ledger under `data_dir/ledger`, creating it in `format` if there is none (an
    /// existing ledger keeps its own format).
    pub fn open_as(data_dir: &Path, format: LedgerFormat) -> Result<Self, LedgerError> {
        let path = ledger_dir(data_dir);
        std::fs::create_dir_all(&path).map_err(|source| LedgerError::Io {
            path: path.clone(),
            source,
        })?;
        let mut opts = db_options();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(&opts, &path, column_families()).map_err(|source| {
            LedgerError::Db {
                path: path.clone(),
                source,
            }
        })?;
        Self::finish_open(db, path, false, format)
    }

    /// Opens an existing ledger without taking the writer's lock, for verification and export
    /// while `gatehouse evidence` keeps running. Sees the state as of opening.
    pub fn open_read_only(data_dir: &Path) -> Result<Self, LedgerError> {
        Self::open_read_only_at(&ledger_dir(data_dir))
    }

    /// A read-only ledger at `path` itself (a backup, for instance), not under a data directory.
    pub fn open_read_only_at(path: &Path) -> Result<Self, LedgerError> {
        let path = path.to_owned();
        if !path.join("CURRENT").exists() {
            return Err(LedgerError::Missing(path));
        }
        // A ledger from before the Merkle tree has no `tree` family; open what it has.
        let present = DB::list_cf(&db_options(), &path).unwrap_or_default();
        let families: Vec<ColumnFamilyDescriptor> = column_families()
            .into_iter()
            .filter(|cf| present.iter().any(|p| p == cf.name()))
            .collect();
        let db = DB::open_cf_descriptors_read_only(&db_options(), &path, families, false).map_err(
            |source| LedgerError::Db {
                path: path.clone(),
                source,
            },
        )?;
        Self::finish_open(db, path, true, LedgerFormat::CURRENT)
    }

    /// Checks (or, for a new ledger, writes) the format marker and loads the head.
    fn finish_open(
        db: DB,
        path: PathBuf,
        read_only: bool,
        format_if_new: LedgerFormat,
    ) -> Result<Self, LedgerError> {
        let mut ledger = Self {
            db,
            path,
            head: Head::default(),
            tree_size: 0,
            index_size: 0,
            read_only,
            format: format_if_new,
        };
        ledger.format = ledger.check_or_write_format(format_if_new)?;
        ledger.head = ledger.read_head()?;
        ledger.tree_size = ledger.read_size(CF_TREE, KEY_TREE_SIZE)?;
        ledger.index_size = ledger.read_size(CF_INDEX, KEY_INDEX_SIZE)?;
        if !read_only && ledger.tree_size < ledger.head.next_index {
            ledger.build_tree()?;
        }
        if !read_only && ledger.index_size < ledger.head.next_index {
            ledger.build_index()?;
        }
        Ok(ledger)
    }

    /// Maps a RocksDB error to one naming this ledger.
    fn db_error(&self) -> impl Fn(rocksdb::Error) -> LedgerError + '_ {
        |source| LedgerError::Db {
            path: self.path.clone(),
            source,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ledger's format: what its Merkle leaves are.
    pub fn format(&self) -> LedgerFormat {
        self.format
    }

    /// The head as of the last append (or opening).
    pub fn head(&self) -> Head {
        self.head
    }

    /// Appends `entries` (stream sequences strictly increasing and above the head's) and records
    /// `gaps`, atomically and durably: see the module docs. Returns the new head.
    pub fn append(&mut self, entries: &[NewEntry], gaps: &[Gap]) -> Result<Head, LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let entries_cf = self.cf(CF_ENTRIES)?;
        let meta_cf = self.cf(CF_META)?;
        let tree_cf = self.cf(CF_TREE)?;
        let index_cf = self.cf(CF_INDEX)?;
        let mut head = self.head;
        let mut batch = WriteBatch::default();
        // Nodes this batch writes, for the parents later entries of the batch complete.
        let mut fresh = std::collections::HashMap::new();
        for new in entries {
            if new.stream_sequence <= head.last_sequence {
                return Err(LedgerError::OutOfOrder {
                    sequence: new.stream_sequence,
                    last: head.last_sequence,
                });
            }
            let entry = Entry {
                index: head.next_index,
                stream_sequence: new.stream_sequence,
                received_at: new.received_at,
                previous_hash: head.hash,
                event: new.event.clone(),
            };
            let encoding = entry.encode()?;
            let hash = entry_hash(&encoding);
            let mut value = Vec::with_capacity(32 + encoding.len());
            value.extend_from_slice(&hash);
            value.extend_from_slice(&encoding);
            batch.put_cf(&entries_cf, head.next_index.to_be_bytes(), value);
            for key in index_keys(head.next_index, new.received_at, &new.event) {
                batch.put_cf(&index_cf, key, []);
            }
            for (level, index, node) in merkle::completed_by(
                head.next_index,
                self.format.leaf(&encoding, &hash),
                |level, index| match fresh.get(&(level, index)) {
                    Some(node) => Ok(*node),
                    None => self.node(level, index),
                },
            )? {
                batch.put_cf(&tree_cf, node_key(level, index), node);
                fresh.insert((level, index), node);
            }
            head = Head {
                next_index: head.next_index + 1,
                hash,
                last_sequence: new.stream_sequence,
            };
        }
        for gap in gaps {
            let (key, value) = gap.record();
            batch.put_cf(&meta_cf, key, value);
            head.last_sequence = head.last_sequence.max(gap.last);
        }
        self.commit_head(batch, head)
    }

    /// Writes `batch` with the new head, tree size and index size, durably, and takes them on.
    fn commit_head(&mut self, mut batch: WriteBatch, head: Head) -> Result<Head, LedgerError> {
        let meta_cf = self.cf(CF_META)?;
        batch.put_cf(&meta_cf, KEY_HEAD, head.encode());
        batch.put_cf(&meta_cf, KEY_TREE_SIZE, head.next_index.to_be_bytes());
        batch.put_cf(&meta_cf, KEY_INDEX_SIZE, head.next_index.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())?;
        self.head = head;
        self.tree_size = head.next_index;
        self.index_size = head.next_index;
        Ok(head)
    }

    /// Signs a checkpoint of the whole tree, after checking that the tree extends the last
    /// checkpoint issued (its root is unchanged and a consistency proof verifies). Stored with
    /// the others, durably, before it is returned.
    pub fn issue_checkpoint(
        &mut self,
        signer: &gatehouse_proof::checkpoint::NoteSigner,
        origin: &str,
    ) -> Result<Issued, LedgerError> {
        use gatehouse_proof::checkpoint::Checkpoint;
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let size = self.tree_size;
        let root = self.root(size)?;
        if let Some((last_size, note)) = self.latest_checkpoint()? {
            let last =
                Checkpoint::from_note_unverified(&note).map_err(|e| LedgerError::Inconsistent {
                    size: last_size,
                    why: e.to_string(),
                })?;
            let inconsistent = |why: &str| LedgerError::Inconsistent {
                size: last_size,
                why: why.to_owned(),
            };
            if last.size > size {
                return Err(inconsistent("the tree is now smaller"));
            }
            if self.root(last.size)? != last.root {
                return Err(inconsistent("the tree's root at that size changed"));
            }
            let proof = self.consistency_proof(last.size, size)?;
            if !merkle::verify_consistency(last.size, size, &last.root, &root, &proof) {
                return Err(inconsistent("the consistency proof does not verify"));
            }
            if last.size == size && last.origin == origin {
                return Ok(Issued::Unchanged { size });
            }
        }
        let note = signer.sign(&Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        });
        let meta = self.cf(CF_META)?;
        let mut key = CHECKPOINT_PREFIX.to_vec();
        key.extend_from_slice(&size.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.put_cf(&meta, key, note.as_bytes());
        // The verifier key goes with it, so an export can hand auditors the key it claims.
        let mut key = CHECKPOINT_KEY_PREFIX.to_vec();
        key.extend_from_slice(&size.to_be_bytes());
        batch.put_cf(&meta, key, signer.verifier().to_vkey().as_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())?;
        Ok(Issued::Signed { size, note })
    }

    /// Records a checkpoint another replica signed over the same stream, after checking that
    /// this ledger's tree has the same root at that size (replicas ingest the same stream in
    /// the same order, so their trees are identical). A standby that takes over then signs
    /// only checkpoints that extend it ([`Ledger::issue_checkpoint`] checks that).
    pub fn record_checkpoint(&mut self, note: &str, key: &str) -> Result<Recorded, LedgerError> {
        use gatehouse_proof::checkpoint::Checkpoint;
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let theirs =
            Checkpoint::from_note_unverified(note).map_err(|e| LedgerError::Inconsistent {
                size: 0,
                why: format!("the shared checkpoint does not parse: {e}"),
            })?;
        if theirs.size > self.tree_size {
            return Ok(Recorded::Ahead {
                size: theirs.size,
                tree_size: self.tree_size,
            });
        }
        if self.root(theirs.size)? != theirs.root {
            return Err(LedgerError::Inconsistent {
                size: theirs.size,
                why: "this ledger's root at that size differs from the root another replica signed"
                    .into(),
            });
        }
        let mut note_key = CHECKPOINT_PREFIX.to_vec();
        note_key.extend_from_slice(&theirs.size.to_be_bytes());
        let meta = self.cf(CF_META)?;
        if self
            .db
            .get_cf(&meta, &note_key)
            .map_err(self.db_error())?
            .is_some()
        {
            return Ok(Recorded::Known { size: theirs.size });
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(&meta, note_key, note.as_bytes());
        let mut vkey = CHECKPOINT_KEY_PREFIX.to_vec();
        vkey.extend_from_slice(&theirs.size.to_be_bytes());
        batch.put_cf(&meta, vkey, key.as_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())?;
        Ok(Recorded::New { size: theirs.size })
    }

    /// The latest checkpoint issued: its tree size and signed note.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, LedgerError> {
        Ok(self.checkpoints()?.pop())
    }

    /// The verifier key (signed-note form) of the checkpoint at `size`.
    pub fn checkpoint_key(&self, size: u64) -> Result<Option<String>, LedgerError> {
        let cf = self.cf(CF_META)?;
        let mut key = CHECKPOINT_KEY_PREFIX.to_vec();
        key.extend_from_slice(&size.to_be_bytes());
        Ok(self
            .db
            .get_cf(&cf, key)
            .map_err(self.db_error())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every checkpoint issued, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>, LedgerError> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            &cf,
            IteratorMode::From(CHECKPOINT_PREFIX, Direction::Forward),
        ) {
            let (key, value) = item.map_err(self.db_error())?;
            let Some(size) = key.strip_prefix(CHECKPOINT_PREFIX) else {
                break;
            };
            if size.len() == 8 {
                out.push((be_u64(size), String::from_utf8_lossy(&value).into_owned()));
            }
        }
        Ok(out)
    }

    /// Leaves in the Merkle tree (equal to the number of entries once it is built).
    pub fn tree_size(&self) -> u64 {
        self.tree_size
    }

    /// The Merkle root of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, LedgerError> {
        self.within_tree(size)?;
        merkle::root(&mut Nodes(self), size)
    }

    /// The inclusion proof of entry `index` in the tree of the first `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        self.within_tree(size)?;
        if index >= size {
            return Err(LedgerError::BeyondTree {
                asked: index + 1,
                tree_size: size,
            });
        }
        merkle::inclusion_proof(&mut Nodes(self), index, size)
    }

    /// Proves many entries in the tree of the first `size` entries (an export).
    pub fn prover(&self, size: u64) -> Result<Prover<'_>, LedgerError> {
        self.within_tree(size)?;
        Ok(Prover {
            nodes: CachedNodes {
                ledger: self,
                cache: std::collections::HashMap::new(),
            },
            size,
        })
    }

    /// The consistency proof between the trees of the first `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        self.within_tree(new)?;
        if old > new {
            return Err(LedgerError::BeyondTree {
                asked: old,
                tree_size: new,
            });
        }
        merkle::consistency_proof(&mut Nodes(self), old, new)
    }

    fn within_tree(&self, size: u64) -> Result<(), LedgerError> {
        if size > self.tree_size {
            return Err(LedgerError::BeyondTree {
                asked: size,
                tree_size: self.tree_size,
            });
        }
        Ok(())
    }

    /// A stored perfect subtree's hash.
    pub fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        let cf = self.cf(CF_TREE)?;
        let value = self
            .db
            .get_cf(&cf, node_key(level, index))
            .map_err(self.db_error())?;
        match value {
            Some(v) if v.len() == 32 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&v);
                Ok(hash)
            }
            _ => Err(LedgerError::MissingNode { level, index }),
        }
    }

    /// Hashes the entries a ledger written before the Merkle tree holds into it, in batches.
    fn build_tree(&mut self) -> Result<(), LedgerError> {
        tracing::info!(
            from = self.tree_size,
            to = self.head.next_index,
            "building the Merkle tree over existing entries"
        );
        while self.tree_size < self.head.next_index {
            let end = (self.tree_size + BACKFILL_BATCH).min(self.head.next_index);
            self.build_tree_part(self.tree_size, end)?;
            self.tree_size = end;
        }
        Ok(())
    }

    /// Hashes entries `start..end` into the tree and records `end` as its size, atomically.
    fn build_tree_part(&self, start: u64, end: u64) -> Result<(), LedgerError> {
        let tree_cf = self.cf(CF_TREE)?;
        let meta_cf = self.cf(CF_META)?;
        let entries_cf = self.cf(CF_ENTRIES)?;
        let mut batch = WriteBatch::default();
        let mut fresh = std::collections::HashMap::new();
        for index in start..end {
            let value = self
                .db
                .get_cf(&entries_cf, index.to_be_bytes())
                .map_err(self.db_error())?
                .ok_or(LedgerError::MissingNode { level: 0, index })?;
            let stored = parse_stored(&index.to_be_bytes(), &value);
            for (level, i, node) in merkle::completed_by(index, self.leaf(&stored), |level, i| {
                match fresh.get(&(level, i)) {
                    Some(node) => Ok(*node),
                    None => self.node(level, i),
                }
            })? {
                batch.put_cf(&tree_cf, node_key(level, i), node);
                fresh.insert((level, i), node);
            }
        }
        batch.put_cf(&meta_cf, KEY_TREE_SIZE, end.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())
    }

    /// A size record in `meta`, 0 when it or the column family it describes is missing.
    fn read_size(&self, family: &'static str, key: &[u8]) -> Result<u64, LedgerError> {
        let Some(cf) = self.db.cf_handle(CF_META) else {
            return Ok(0);
        };
        if self.db.cf_handle(family).is_none() {
            return Ok(0);
        }
        Ok(match self.db.get_cf(&cf, key).map_err(self.db_error())? {
            Some(bytes) if bytes.len() == 8 => be_u64(&bytes),
            _ => 0,
        })
    }

    /// Indexes the entries a ledger written before the indexes holds, in batches.
    fn build_index(&mut self) -> Result<(), LedgerError> {
        tracing::info!(
            from = self.index_size,
            to = self.head.next_index,
            "building the search indexes over existing entries"
        );
        while self.index_size < self.head.next_index {
            let end = (self.index_size + BACKFILL_BATCH).min(self.head.next_index);
            let index_cf = self.cf(CF_INDEX)?;
            let meta_cf = self.cf(CF_META)?;
            let mut batch = WriteBatch::default();
            for stored in self.entries(self.index_size)? {
                let stored = stored?;
                let Some(index) = stored.key.filter(|i| *i < end) else {
                    break;
                };
                if let Ok(entry) = Entry::decode(&stored.encoding) {
                    for key in index_keys(index, entry.received_at, &entry.event) {
                        batch.put_cf(&index_cf, key, []);
                    }
                }
            }
            batch.put_cf(&meta_cf, KEY_INDEX_SIZE, end.to_be_bytes());
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(batch, &wo).map_err(self.db_error())?;
            self.index_size = end;
        }
        Ok(())
    }

    /// Entries matching every condition of `query`, in ledger order, at most `query.limit`.
    pub fn search(&self, query: &Query) -> Result<Vec<Entry>, LedgerError> {
        if self.index_size < self.head.next_index {
            return Err(LedgerError::NotIndexed);
        }
        let cf = self.cf(CF_INDEX)?;
        let limit = query.limit.max(1);
        let mut out: Vec<Entry> = Vec::new();
        let start = query.after.map_or(0, |a| a + 1);
        // The first condition drives the scan; the others are point lookups.
        let (scan, scan_from): (Vec<u8>, Vec<u8>) = match query.fields.first() {
            Some((field, value)) => {
                let prefix = index::prefix(*field, value);
                let mut from = prefix.clone();
                from.extend_from_slice(&start.to_be_bytes());
                (prefix, from)
            }
            None => {
                let mut from = vec![index::TIME_TAG];
                from.extend_from_slice(&index::time_part(query.from.unwrap_or(i64::MIN)));
                (vec![index::TIME_TAG], from)
            }
        };
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&scan_from, Direction::Forward))
        {
            let (key, _) = item.map_err(self.db_error())?;
            if !key.starts_with(&scan) {
                break;
            }
            let Some(index) = index::entry_of(&key) else {
                continue;
            };
            if index < start || index >= self.head.next_index {
                continue;
            }
            let mut matches = true;
            for (field, value) in query.fields.iter().skip(1) {
                if self
                    .db
                    .get_cf(&cf, index::key(*field, value, index))
                    .map_err(self.db_error())?
                    .is_none()
                {
                    matches = false;
                    break;
                }
            }
            if !matches {
                continue;
            }
            let Some(entry) = self.entry(index)? else {
                continue;
            };
            if query.from.is_some_and(|f| entry.received_at < f) {
                continue;
            }
            if query.to.is_some_and(|t| entry.received_at >= t) {
                if query.fields.is_empty() {
                    break;
                }
                continue;
            }
            out.push(entry);
            if out.len() >= limit {
                break;
            }
        }
        if query.fields.is_empty() {
            out.sort_by_key(|e| e.index);
        }
        Ok(out)
    }

    /// Stored entries from `from` on, in key order.
    pub fn entries(
        &self,
        from: u64,
    ) -> Result<impl Iterator<Item = Result<StoredEntry, LedgerError>> + '_, LedgerError> {
        let cf = self.cf(CF_ENTRIES)?;
        let start = from.to_be_bytes();
        let path = self.path.clone();
        Ok(self
            .db
            .iterator_cf(&cf, IteratorMode::From(&start, Direction::Forward))
            .map(move |item| {
                let (key, value) = item.map_err(|source| LedgerError::Db {
                    path: path.clone(),
                    source,
                })?;
                Ok(parse_stored(&key, &value))
            }))
    }

    /// A forward scan over the stored entries from `from`, read in batches with readahead
    /// and without filling the block cache (a whole-ledger walk would only evict it).
    pub fn scan_entries(&self, from: u64) -> Result<EntryScan<'_>, LedgerError> {
        let cf = self.cf(CF_ENTRIES)?;
        let mut iter = self.db.raw_iterator_cf_opt(&cf, scan_options());
        iter.seek(from.to_be_bytes());
        Ok(EntryScan {
            iter,
            path: self.path.clone(),
        })
    }

    /// Stored tree nodes read in order, one forward scan per level, for a walk that meets
    /// each level's nodes in increasing index order.
    pub fn scan_nodes(&self) -> NodeScan<'_> {
        NodeScan {
            ledger: self,
            levels: Vec::new(),
        }
    }

    /// The entry at `index`, decoded, or `None`.
    pub fn entry(&self, index: u64) -> Result<Option<Entry>, LedgerError> {
        let cf = self.cf(CF_ENTRIES)?;
        let Some(value) = self
            .db
            .get_cf(&cf, index.to_be_bytes())
            .map_err(self.db_error())?
        else {
            return Ok(None);
        };
        let stored = parse_stored(&index.to_be_bytes(), &value);
        Entry::decode(&stored.encoding)
            .map(Some)
            .map_err(|source| LedgerError::Decode { index, source })
    }

    /// Places a legal hold (durably, before returning).
    pub fn place_legal_hold(&mut self, hold: &LegalHold) -> Result<(), LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let meta = self.cf(CF_META)?;
        let mut key = LEGAL_HOLD_PREFIX.to_vec();
        key.extend_from_slice(hold.id.as_bytes());
        let value = serde_json::to_vec(hold).map_err(|e| LedgerError::Hold(e.to_string()))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(&meta, key, value);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())
    }

    /// Releases a legal hold; `false` if there was none with that id.
    pub fn release_legal_hold(&mut self, id: &str) -> Result<bool, LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        if !self.legal_holds()?.iter().any(|h| h.id == id) {
            return Ok(false);
        }
        let meta = self.cf(CF_META)?;
        let mut key = LEGAL_HOLD_PREFIX.to_vec();
        key.extend_from_slice(id.as_bytes());
        let mut batch = WriteBatch::default();
        batch.delete_cf(&meta, key);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())?;
        Ok(true)
    }

    pub fn legal_holds(&self) -> Result<Vec<LegalHold>, LedgerError> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            &cf,
            IteratorMode::From(LEGAL_HOLD_PREFIX, Direction::Forward),
        ) {
            let (key, value) = item.map_err(self.db_error())?;
            if !key.starts_with(LEGAL_HOLD_PREFIX) {
                break;
            }
            let hold =
                serde_json::from_slice(&value).map_err(|e| LedgerError::Hold(e.to_string()))?;
            out.push(hold);
        }
        Ok(out)
    }

    /// Writes a consistent copy of the ledger to `dest` (a RocksDB checkpoint: SST files are
    /// hard-linked when on the same filesystem, copied otherwise). `dest` must not exist. It is
    /// a complete ledger: restore by putting it at `<data_dir>/ledger`, then
    /// `gatehouse ledger verify`.
    pub fn backup_to(&self, dest: &Path) -> Result<(), LedgerError> {
        if dest.exists() {
            return Err(LedgerError::Io {
                path: dest.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a backup must go to a new directory",
                ),
            });
        }
        // A read-only handle cannot flush what is still in the write-ahead log, and a
        // checkpoint of it would miss that; only the writer takes backups.
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        self.flush()?;
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(self.db_error())?;
        checkpoint.create_checkpoint(dest).map_err(self.db_error())
    }

    /// Prunes the payloads of entries received before `now - retention_days` that no legal
    /// hold matches, leaving tombstones (see [`crate::retention`]). Every hash stays: the chain,
    /// the tree and every checkpoint still verify.
    pub fn prune(&mut self, now: i64, retention_days: u32) -> Result<Pruned, LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let cutoff = now.saturating_sub(i64::from(retention_days) * 86_400 * 1_000_000_000);
        let holds = self.legal_holds()?;
        let held: Vec<(HoldQuery, Option<std::collections::HashSet<String>>)> = holds
            .into_iter()
            .map(|h| {
                let subjects = self.held_subjects(&h.query)?;
                Ok((h.query, subjects))
            })
            .collect::<Result<_, LedgerError>>()?;
        let mut report = Pruned {
            cutoff,
            ..Pruned::default()
        };
        let start = self.read_u64(KEY_PRUNED_THROUGH)?;
        // Once archiving is set up, only archived entries are pruned: the archive must hold
        // every payload before the ledger lets it go (`crate::archive`).
        let archived = self.archived_through()?;
        let mut resume: Option<u64> = None;
        let mut index = start;
        let entries_cf = self.cf(CF_ENTRIES)?;
        let index_cf = self.cf(CF_INDEX)?;
        let meta_cf = self.cf(CF_META)?;
        'batches: loop {
            let mut batch = WriteBatch::default();
            let mut in_batch = 0u64;
            let mut done = false;
            for stored in self.entries(index)? {
                let stored = stored?;
                let Some(key) = stored.key else {
                    break;
                };
                if archived.is_some_and(|a| key >= a) {
                    done = true;
                    break;
                }
                index = key + 1;
                if stored.tombstone().is_some() {
                    continue;
                }
                let Ok(entry) = Entry::decode(&stored.encoding) else {
                    // Damage is verify's to report; pruning leaves it as it is.
                    resume.get_or_insert(key);
                    continue;
                };
                if entry.received_at >= cutoff {
                    done = true;
                    break;
                }
                let subject = event_subject(&entry.event);
                if held.iter().any(|(q, subjects)| {
                    q.from.is_none_or(|f| entry.received_at >= f)
                        && q.to.is_none_or(|t| entry.received_at < t)
                        && subjects
                            .as_ref()
                            .is_none_or(|s| subject.as_ref().is_some_and(|x| s.contains(x)))
                }) {
                    report.kept_by_holds += 1;
                    resume.get_or_insert(key);
                    continue;
                }
                let tombstone = Tombstone {
                    index: key,
                    stream_sequence: entry.stream_sequence,
                    received_at: entry.received_at,
                    previous_hash: entry.previous_hash,
                    leaf_hash: self.leaf(&stored),
                    event_length: entry.event.len() as u32,
                    event_blake3: *blake3::hash(&entry.event).as_bytes(),
                    pruned_at: now,
                };
                let mut value = stored.stored_hash.to_vec();
                value.extend_from_slice(&tombstone.encode());
                batch.put_cf(&entries_cf, key.to_be_bytes(), value);
                for index_key in index_keys(key, entry.received_at, &entry.event) {
                    batch.delete_cf(&index_cf, index_key);
                }
                report.pruned += 1;
                report.first.get_or_insert(key);
                report.last = Some(key);
                in_batch += 1;
                if in_batch >= BACKFILL_BATCH {
                    break;
                }
            }
            let through = resume.unwrap_or(index);
            batch.put_cf(&meta_cf, KEY_PRUNED_THROUGH, through.to_be_bytes());
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            self.db.write_opt(batch, &wo).map_err(self.db_error())?;
            if done || in_batch < BACKFILL_BATCH {
                break 'batches;
            }
        }
        Ok(report)
    }

    /// The request and session ids a hold's principal / namespace / request id take in;
    /// `None` when the hold has none of them (it is by time only).
    fn held_subjects(
        &self,
        query: &HoldQuery,
    ) -> Result<Option<std::collections::HashSet<String>>, LedgerError> {
        let mut fields = Vec::new();
        if let Some(p) = &query.principal {
            fields.push((index::Field::Principal, p.clone()));
        }
        if let Some(n) = &query.namespace {
            fields.push((index::Field::Namespace, n.clone()));
        }
        if let Some(r) = &query.request_id {
            fields.push((index::Field::Request, r.clone()));
        }
        if fields.is_empty() {
            return Ok(None);
        }
        let mut subjects = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let page = self.search(&Query {
                fields: fields.clone(),
                after,
                limit: 10_000,
                ..Query::default()
            })?;
            let Some(last) = page.last() else { break };
            after = Some(last.index);
            for entry in &page {
                if let Some(subject) = event_subject(&entry.event) {
                    subjects.insert(subject);
                }
            }
        }
        Ok(Some(subjects))
    }

    fn read_u64(&self, key: &[u8]) -> Result<u64, LedgerError> {
        let cf = self.cf(CF_META)?;
        Ok(match self.db.get_cf(&cf, key).map_err(self.db_error())? {
            Some(bytes) if bytes.len() == 8 => be_u64(&bytes),
            _ => 0,
        })
    }

    /// Every gap alarm recorded so far.
    pub fn gaps(&self) -> Result<Vec<Gap>, LedgerError> {
        let cf = self.cf(CF_META)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(GAP_PREFIX, Direction::Forward))
        {
            let (key, value) = item.map_err(self.db_error())?;
            let Some(first) = key.strip_prefix(GAP_PREFIX) else {
                break;
            };
            if first.len() == 8 && value.len() == 16 {
                out.push(Gap {
                    first: be_u64(first),
                    last: be_u64(&value[..8]),
                    detected_at: be_u64(&value[8..]) as i64,
                });
            }
        }
        Ok(out)
    }

    /// Moves everything from the write-ahead log into checksummed table files; called on
    /// shutdown so a stopped ledger is entirely in SST files.
    pub fn flush(&self) -> Result<(), LedgerError> {
        if self.read_only {
            return Ok(());
        }
        for name in [CF_ENTRIES, CF_META, CF_TREE, CF_INDEX] {
            let cf = self.cf(name)?;
            self.db.flush_cf(&cf).map_err(self.db_error())?;
        }
        Ok(())
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, LedgerError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| LedgerError::MissingColumnFamily {
                path: self.path.clone(),
                name,
            })
    }

    fn read_head(&self) -> Result<Head, LedgerError> {
        let cf = self.cf(CF_META)?;
        match self.db.get_cf(&cf, KEY_HEAD).map_err(self.db_error())? {
            Some(bytes) => Head::decode(&bytes),
            None => Ok(Head::default()),
        }
    }

    /// The leaf of a stored entry, from its bytes: never from the hash stored beside them, so
    /// an entry changed in place and then pruned or built into the tree still shows.
    fn leaf(&self, stored: &StoredEntry) -> Hash {
        self.format.hashes(&stored.encoding).1
    }

    /// Makes an empty ledger one of `format` (a restore takes the archived ledger's).
    pub fn set_format_while_empty(&mut self, format: LedgerFormat) -> Result<(), LedgerError> {
        if self.format == format {
            return Ok(());
        }
        if self.read_only || self.head.next_index > 0 {
            return Err(LedgerError::WrongFormat {
                path: self.path.clone(),
                found: self.format.marker().into(),
            });
        }
        let cf = self.cf(CF_META)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(&cf, KEY_FORMAT, format.marker(), &wo)
            .map_err(self.db_error())?;
        self.format = format;
        Ok(())
    }

    fn check_or_write_format(
        &self,
        format_if_new: LedgerFormat,
    ) -> Result<LedgerFormat, LedgerError> {
        let cf = self.cf(CF_META)?;
        let found = self.db.get_cf(&cf, KEY_FORMAT).map_err(self.db_error())?;
        match found {
            Some(f) => LedgerFormat::from_marker(&f).ok_or_else(|| LedgerError::WrongFormat {
                path: self.path.clone(),
                found: String::from_utf8_lossy(&f).into_owned(),
            }),
            None if self.read_only => Err(LedgerError::WrongFormat {
                path: self.path.clone(),
                found: "none".into(),
            }),
            None => {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_cf_opt(&cf, KEY_FORMAT, format_if_new.marker(), &wo)
                    .map_err(self.db_error())?;
                Ok(format_if_new)
            }
        }
    }
}

/// `meta` key: the index archiving resumes from, u64 BE (`crate::archive`). Present once
/// archiving was set up for this ledger; from then on pruning stops at it.
const KEY_ARCHIVED_THROUGH: &[u8] = b"archived_through";

/// Write-once archives ([`crate::archive`]): where archiving stands, and restoring archived
/// entries into an empty ledger.
impl Ledger {
    /// The index archiving resumes from (every entry before it is archived); `None` when
    /// archiving was never set up for this ledger.
    pub fn archived_through(&self) -> Result<Option<u64>, LedgerError> {
        let cf = self.cf(CF_META)?;
        Ok(
            match self
                .db
                .get_cf(&cf, KEY_ARCHIVED_THROUGH)
                .map_err(self.db_error())?
            {
                Some(bytes) if bytes.len() == 8 => Some(be_u64(&bytes)),
                _ => None,
            },
        )
    }

    /// The checkpoints of sizes in `(above, through]`, smallest first, at most `limit`.
    pub fn checkpoints_in(
        &self,
        above: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, LedgerError> {
        let cf = self.cf(CF_META)?;
        let mut from = CHECKPOINT_PREFIX.to_vec();
        from.extend_from_slice(&above.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(self.db_error())?;
            let Some(size) = key.strip_prefix(CHECKPOINT_PREFIX) else {
                break;
            };
            if size.len() != 8 {
                continue;
            }
            let size = be_u64(size);
            if size > through || out.len() >= limit {
                break;
            }
            out.push((size, String::from_utf8_lossy(&value).into_owned()));
        }
        Ok(out)
    }

    /// Records (durably) that entries before `next` are archived. Never moves back.
    pub fn set_archived_through(&mut self, next: u64) -> Result<(), LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let next = next.max(self.archived_through()?.unwrap_or(0));
        let cf = self.cf(CF_META)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(&cf, KEY_ARCHIVED_THROUGH, next.to_be_bytes(), &wo)
            .map_err(self.db_error())
    }

    /// Appends archived entries exactly as they were stored (`entry_hash ‖ encoding`, or a
    /// tombstone), with their gap records and the checkpoints (note, verifier key) over them,
    /// in one durable batch; the tree nodes are recomputed from the leaves. Each entry must be
    /// the next index, link to the head and carry a higher stream sequence; the whole chain is
    /// then checked again by [`crate::verify`].
    pub fn append_restored(
        &mut self,
        entries: &[(u64, Vec<u8>)],
        gaps: &[Gap],
        checkpoints: &[(u64, String, String)],
    ) -> Result<Head, LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let (entries_cf, meta_cf, tree_cf, index_cf) = (
            self.cf(CF_ENTRIES)?,
            self.cf(CF_META)?,
            self.cf(CF_TREE)?,
            self.cf(CF_INDEX)?,
        );
        let mut head = self.head;
        let mut batch = WriteBatch::default();
        let mut fresh = std::collections::HashMap::new();
        for (index, value) in entries {
            let index = *index;
            let refuse = |why: String| LedgerError::Restore { index, why };
            if index != head.next_index {
                return Err(refuse(format!("expected index {}", head.next_index)));
            }
            if value.len() < 32 {
                return Err(refuse(format!("{} bytes is too short", value.len())));
            }
            let stored = parse_stored(&index.to_be_bytes(), value);
            let (claimed, previous, sequence, leaf, indexed) = match Entry::decode(&stored.encoding)
            {
                Ok(e) => {
                    if entry_hash(&stored.encoding) != stored.stored_hash {
                        return Err(refuse("its contents do not hash to its stored hash".into()));
                    }
                    let keys = index_keys(index, e.received_at, &e.event);
                    let leaf = self.leaf(&stored);
                    (e.index, e.previous_hash, e.stream_sequence, leaf, keys)
                }
                Err(e) => match stored.tombstone() {
                    Some(t) => (
                        t.index,
                        t.previous_hash,
                        t.stream_sequence,
                        t.leaf_hash,
                        vec![],
                    ),
                    None => return Err(refuse(format!("not an entry or a tombstone: {e}"))),
                },
            };
            if claimed != index {
                return Err(refuse(format!("it claims index {claimed}")));
            }
            if previous != head.hash {
                return Err(refuse("it does not link to the entry before it".into()));
            }
            if sequence <= head.last_sequence {
                return Err(refuse(format!(
                    "stream sequence {sequence} is not above {}",
                    head.last_sequence
                )));
            }
            batch.put_cf(&entries_cf, index.to_be_bytes(), value);
            for key in indexed {
                batch.put_cf(&index_cf, key, []);
            }
            for (level, i, node) in
                merkle::completed_by(index, leaf, |level, i| match fresh.get(&(level, i)) {
                    Some(node) => Ok(*node),
                    None => self.node(level, i),
                })?
            {
                batch.put_cf(&tree_cf, node_key(level, i), node);
                fresh.insert((level, i), node);
            }
            head = Head {
                next_index: index + 1,
                hash: stored.stored_hash,
                last_sequence: sequence,
            };
        }
        for gap in gaps {
            let (key, value) = gap.record();
            batch.put_cf(&meta_cf, key, value);
            head.last_sequence = head.last_sequence.max(gap.last);
        }
        for (size, note, vkey) in checkpoints {
            let mut key = CHECKPOINT_PREFIX.to_vec();
            key.extend_from_slice(&size.to_be_bytes());
            batch.put_cf(&meta_cf, key, note.as_bytes());
            let mut key = CHECKPOINT_KEY_PREFIX.to_vec();
            key.extend_from_slice(&size.to_be_bytes());
            batch.put_cf(&meta_cf, key, vkey.as_bytes());
        }
        // Everything restored came from the archive: archiving goes on from here.
        batch.put_cf(
            &meta_cf,
            KEY_ARCHIVED_THROUGH,
            head.next_index.to_be_bytes(),
        );
        self.commit_head(batch, head)
    }
}

/// The block-based table format written. Version 5 is read by every RocksDB since 6.6
/// (Debian's `ldb` among them), so auditors' own tools can open a ledger kept for six years;
/// newer versions add nothing the hash chain needs.
const TABLE_FORMAT_VERSION: i32 = 5;

fn db_options() -> Options {
    let mut opts = Options::default();
    // Refuse to open on detected corruption rather than quietly skipping it.
    opts.set_paranoid_checks(true);
    opts.set_block_based_table_factory(&table_options());
    opts
}

fn table_options() -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_format_version(TABLE_FORMAT_VERSION);
    table
}

fn column_families() -> Vec<ColumnFamilyDescriptor> {
    let mut entries = Options::default();
    entries.set_compression_type(DBCompressionType::Lz4);
    entries.set_block_based_table_factory(&table_options());
    let plain = || {
        let mut options = Options::default();
        options.set_block_based_table_factory(&table_options());
        options
    };
    vec![
        // Unused, but RocksDB always has it; named here so it gets the same table format.
        ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, plain()),
        ColumnFamilyDescriptor::new(CF_ENTRIES, entries),
        ColumnFamilyDescriptor::new(CF_META, plain()),
        ColumnFamilyDescriptor::new(CF_TREE, plain()),
        ColumnFamilyDescriptor::new(CF_INDEX, plain()),
    ]
}

/// Splits a stored value into the stored hash and the encoding. A value too short to hold a
/// hash keeps an all-zero hash and whatever bytes it has, so verification reports it.
fn scan_options() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.fill_cache(false);
    opts.set_readahead_size(4 << 20);
    opts
}

/// See [`Ledger::scan_entries`].
pub struct EntryScan<'a> {
    iter: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    path: PathBuf,
}

impl EntryScan<'_> {
    /// Appends up to `max` entries to `out`; fewer at the end of the entries.
    pub fn next_batch(
        &mut self,
        max: usize,
        out: &mut Vec<StoredEntry>,
    ) -> Result<(), LedgerError> {
        for _ in 0..max {
            let (Some(key), Some(value)) = (self.iter.key(), self.iter.value()) else {
                break;
            };
            out.push(parse_stored(key, value));
            self.iter.next();
        }
        self.iter.status().map_err(|source| LedgerError::Db {
            path: self.path.clone(),
            source,
        })
    }
}

/// See [`Ledger::scan_nodes`].
pub struct NodeScan<'a> {
    ledger: &'a Ledger,
    levels: Vec<Option<rocksdb::DBRawIteratorWithThreadMode<'a, DB>>>,
}

impl NodeScan<'_> {
    /// The stored node at `level`, `index`: the next one of its level when the walk goes in
    /// order (a seek otherwise).
    pub fn node(&mut self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        let key = node_key(level, index);
        let l = usize::from(level);
        if self.levels.len() <= l {
            self.levels.resize_with(l + 1, || None);
        }
        let iter = match &mut self.levels[l] {
            Some(iter) => iter,
            slot => {
                let cf = self.ledger.cf(CF_TREE)?;
                let mut iter = self.ledger.db.raw_iterator_cf_opt(&cf, scan_options());
                iter.seek(key);
                slot.insert(iter)
            }
        };
        if iter.key() != Some(&key[..]) {
            iter.seek(key);
        }
        let found = match (iter.key(), iter.value()) {
            (Some(k), Some(v)) if k == key && v.len() == 32 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(v);
                Some(hash)
            }
            _ => None,
        };
        iter.status().map_err(self.ledger.db_error())?;
        iter.next();
        found.ok_or(LedgerError::MissingNode { level, index })
    }
}

fn parse_stored(key: &[u8], value: &[u8]) -> StoredEntry {
    let key = (key.len() == 8).then(|| be_u64(key));
    let mut stored_hash = [0u8; 32];
    let encoding = if value.len() >= 32 {
        stored_hash.copy_from_slice(&value[..32]);
        value[32..].to_vec()
    } else {
        value.to_vec()
    };
    StoredEntry {
        key,
        stored_hash,
        encoding,
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}
/// What the witness client (`crate::witness`) keeps in the ledger.
impl Ledger {
    /// The witness record stored under `name`, if any.
    pub fn witness_record(&self, name: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        let cf = self.cf(CF_META)?;
        let mut key = WITNESS_PREFIX.to_vec();
        key.extend_from_slice(name.as_bytes());
        self.db.get_cf(&cf, key).map_err(self.db_error())
    }

    /// Stores witness records, together and durably.
    pub fn put_witness_records(
        &mut self,
        records: &[(String, Vec<u8>)],
    ) -> Result<(), LedgerError> {
        if self.read_only {
            return Err(LedgerError::ReadOnly);
        }
        let cf = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (name, value) in records {
            let mut key = WITNESS_PREFIX.to_vec();
            key.extend_from_slice(name.as_bytes());
            batch.put_cf(&cf, key, value);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(self.db_error())
    }

    /// The (BLAKE3) leaf hashes of indexes `start .. end`, in order.
    pub fn leaf_hashes(&self, start: u64, end: u64) -> Result<Vec<Hash>, LedgerError> {
        let cf = self.cf(CF_TREE)?;
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(start)).unwrap_or(0));
        let from = node_key(0, start);
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward))
        {
            if out.len() as u64 >= end.saturating_sub(start) {
                break;
            }
            let (key, value) = item.map_err(self.db_error())?;
            let expected = start + out.len() as u64;
            if key.as_ref() != node_key(0, expected) || value.len() != 32 {
                return Err(LedgerError::MissingNode {
                    level: 0,
                    index: expected,
                });
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&value);
            out.push(hash);
        }
        if (out.len() as u64) < end.saturating_sub(start) {
            return Err(LedgerError::MissingNode {
                level: 0,
                index: start + out.len() as u64,
            });
        }
        Ok(out)
    }
}
