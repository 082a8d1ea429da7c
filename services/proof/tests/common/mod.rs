//! A ledger in memory, bundles written from it, and bundles taken apart and put back together
//! (as whoever holds a bundle, and perhaps the key, could).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use gatehouse_proof::bundle::{BundleWriter, Manifest, SEAL_LEN, Scope, manifest_note_text, seal};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};
use gatehouse_proof::entry::{Entry, GENESIS_HASH, Hash, LedgerFormat, entry_hash};
use gatehouse_proof::merkle::{self, NodeSource};

pub const ORIGIN: &str = "gatehouse.example.com/ledger";
pub const SESSION: &str = "01SESSION";

/// A ledger in memory: entries, and the tree's perfect subtrees as the store keeps them.
pub struct Ledger {
    pub entries: Vec<Entry>,
    nodes: HashMap<(u8, u64), Hash>,
}

impl NodeSource for Ledger {
    type Error = String;
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, String> {
        self.nodes
            .get(&(level, index))
            .copied()
            .ok_or_else(|| format!("{level}/{index}"))
    }
}

/// Event `i` of the test ledger: a session (started at 2, chunks at 3 and 4, ended at 5),
/// requests otherwise.
pub fn event(i: u64) -> String {
    match i {
        2 => format!(
            r#"{{"id":"{i}","type":"dev.gatehouse.session.started.v1","subject":"{SESSION}","data":{{"session_id":"{SESSION}","principal":"ci-deployer","namespace":"apps","pod":"web","command":["sh"]}}}}"#
        ),
        3 => format!(
            r#"{{"id":"{i}","type":"dev.gatehouse.session.data.v1","subject":"{SESSION}","data":{{"seq":0,"at_ms":12.5,"channel":"stdout","data":"aGVsbG8K"}}}}"#
        ),
        4 => format!(
            r#"{{"id":"{i}","type":"dev.gatehouse.session.data.v1","subject":"{SESSION}","data":{{"seq":1,"at_ms":40,"channel":"stdin","data":"ZXhpdAo="}}}}"#
        ),
        5 => format!(
            r#"{{"id":"{i}","type":"dev.gatehouse.session.ended.v1","subject":"{SESSION}","data":{{"chunks":2}}}}"#
        ),
        _ => {
            format!(r#"{{"id":"{i}","type":"dev.gatehouse.request.received.v1","subject":"r{i}"}}"#)
        }
    }
}

pub fn ledger(n: u64) -> Ledger {
    let mut entries = Vec::new();
    let mut previous = GENESIS_HASH;
    for i in 0..n {
        let entry = Entry {
            index: i,
            stream_sequence: i + 1,
            received_at: 1_795_000_000_000_000_000 + i as i64,
            previous_hash: previous,
            event: event(i).into_bytes(),
        };
        previous = entry_hash(&entry.encode().unwrap());
        entries.push(entry);
    }
    ledger_of(entries)
}

/// The ledger of these entries (indexes 0, 1, 2, …), with its tree.
pub fn ledger_of(entries: Vec<Entry>) -> Ledger {
    let mut ledger = Ledger {
        entries: vec![],
        nodes: HashMap::new(),
    };
    for entry in entries {
        let i = entry.index;
        let encoding = entry.encode().unwrap();
        let nodes = &ledger.nodes;
        let done = merkle::completed_by(i, leaf(&encoding), |l, j| {
            nodes.get(&(l, j)).copied().ok_or(())
        })
        .unwrap();
        for (l, j, h) in done {
            ledger.nodes.insert((l, j), h);
        }
        ledger.entries.push(entry);
    }
    ledger
}

/// The test ledger is of the current format.
pub const FORMAT: LedgerFormat = LedgerFormat::V2;

pub fn leaf(encoding: &[u8]) -> Hash {
    FORMAT.hashes(encoding).1
}

pub fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [3u8; 32]).unwrap()
}

pub fn other_signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [4u8; 32]).unwrap()
}

/// The signed checkpoint of the first `n` entries.
pub fn checkpoint_note(n: u64) -> String {
    let mut ledger = ledger(n);
    let root = merkle::root(&mut ledger, n).unwrap();
    signer().sign(&Checkpoint {
        origin: ORIGIN.into(),
        size: n,
        root,
    })
}

/// What [`write_bundle`] writes.
#[derive(Clone, Debug)]
pub struct Spec {
    pub n: u64,
    pub range: std::ops::Range<u64>,
    /// Every other entry only, as a filtered bundle.
    pub sparse: bool,
    /// A consistency proof from the tree of this many entries.
    pub since: Option<u64>,
    /// Entries in the range whose payload was pruned: tombstones instead of events.
    pub pruned: Vec<u64>,
}

impl Spec {
    pub fn new(n: u64, range: std::ops::Range<u64>) -> Self {
        Self {
            n,
            range,
            sparse: false,
            since: None,
            pruned: Vec::new(),
        }
    }
}

pub fn write_bundle(path: &Path, spec: &Spec) -> Manifest {
    let n = spec.n;
    let mut ledger = ledger(n);
    let mut writer = BundleWriter::new(&checkpoint_note(n), signer(), FORMAT).unwrap();
    if let Some(old) = spec.since {
        let old_root = merkle::root(&mut ledger, old).unwrap();
        let proof = merkle::consistency_proof(&mut ledger, old, n).unwrap();
        writer.add_consistency(old, &old_root, &proof).unwrap();
    }
    let entries = ledger.entries.clone();
    let mut subtree = |s, z| merkle::subtree_hash(&mut ledger, s, z);
    for i in spec.range.clone().filter(|i| !spec.sparse || i % 2 == 0) {
        let entry = &entries[i as usize];
        if spec.pruned.contains(&i) {
            let leaf = leaf(&entry.encode().unwrap());
            writer.add_tombstone(i, &leaf, &mut subtree).unwrap();
        } else {
            writer.add_entry(entry, &mut subtree).unwrap();
        }
    }
    let mut filters = BTreeMap::new();
    if spec.sparse {
        filters.insert("principal".to_owned(), "ci-deployer".to_owned());
    }
    let out = std::fs::File::create(path).unwrap();
    let scope = Scope {
        filters,
        contiguous: !spec.sparse,
        created_at: "2026-11-22T16:00:00Z".into(),
        ..Scope::default()
    };
    writer.finish(scope, &mut subtree, out).unwrap()
}

/// One member of a bundle's archive, header and all.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub header: tar::Header,
    pub data: Vec<u8>,
}

impl Member {
    pub fn new(name: &str, data: Vec<u8>) -> Self {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        Self {
            name: name.into(),
            header,
            data,
        }
    }
}

/// The members of a bundle, in order.
pub fn read_members(bundle: &[u8]) -> Vec<Member> {
    let body = &bundle[..bundle.len() - SEAL_LEN];
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(body));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap().raw(true) {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        let header = entry.header().clone();
        let name = String::from_utf8(header.path_bytes().into_owned()).unwrap();
        entry.read_to_end(&mut data).unwrap();
        out.push(Member { name, header, data });
    }
    out
}

/// The tar of `members` (headers as they are, sizes and checksums set), two zero blocks.
pub fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut header = m.header.clone();
        // The name's bytes as they are (`set_path` would refuse `..`).
        let name = &mut header.as_old_mut().name;
        name.fill(0);
        name[..m.name.len()].copy_from_slice(m.name.as_bytes());
        header.set_size(m.data.len() as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// `body` (the bytes before the seal) sealed.
pub fn sealed(body: Vec<u8>) -> Vec<u8> {
    let mut out = body;
    let digest = *blake3::hash(&out).as_bytes();
    out.extend_from_slice(&seal(&digest));
    out
}

/// The bundle of `members`: gzip as bundles have it, then the seal.
pub fn pack(members: &[Member]) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar(members)).unwrap();
    sealed(gz.finish().unwrap())
}

pub fn member<'a>(members: &'a mut [Member], name: &str) -> &'a mut Member {
    members.iter_mut().find(|m| m.name == name).unwrap()
}

pub fn manifest(members: &[Member]) -> Manifest {
    let m = members.iter().find(|m| m.name == "manifest.json").unwrap();
    serde_json::from_slice(&m.data).unwrap()
}

/// What someone holding `signer` does after changing members: the manifest's file list made
/// to match them (after `edit`), written and signed again.
pub fn resign(members: &mut [Member], signer: &NoteSigner, edit: impl FnOnce(&mut Manifest)) {
    let mut manifest = manifest(members);
    manifest.files = members
        .iter()
        .filter(|m| !matches!(m.name.as_str(), "manifest.json" | "manifest.sig"))
        .map(|m| {
            (
                m.name.clone(),
                gatehouse_proof::bundle::FileDigest {
                    bytes: m.data.len() as u64,
                    blake3: blake3::hash(&m.data).to_hex().to_string(),
                },
            )
        })
        .collect();
    edit(&mut manifest);
    let mut json = serde_json::to_vec_pretty(&manifest).unwrap();
    json.push(b'\n');
    let note = signer.sign_note(&manifest_note_text(&json));
    member(members, "manifest.json").data = json;
    if let Some(sig) = members.iter_mut().find(|m| m.name == "manifest.sig") {
        sig.data = note.into_bytes();
    }
}

/// Signs `manifest.json` as it is (without reading it) into `manifest.sig`.
pub fn sign_manifest(members: &mut [Member], signer: &NoteSigner) {
    let json = member(members, "manifest.json").data.clone();
    member(members, "manifest.sig").data =
        signer.sign_note(&manifest_note_text(&json)).into_bytes();
}
