//! The offline bundle verifier (`gatehouse_proof::bundle::verify`, what `gatehouse verify`
//! runs), on real bundles exported by `gatehouse export` from a demo ledger (fixtures/, see
//! README.md), with the ledger's own verifier key.
//!
//! Input: byte 0 picks the mode, byte 1 the real bundle (a time range with two session
//! recordings, or one identity's requests); the rest:
//! - mode 0, flip: (offset: u32 LE, xor: u8) edits of the bundle's bytes, as they are;
//! - mode 1, edit: the same edits of the *decompressed* archive, recompressed and sealed again
//!   (the seal is an unkeyed BLAKE3: anyone can recompute it), so the edits reach the tar, the
//!   manifest and the JSON Lines;
//! - mode 2, raw: the rest is the bundle before its seal; the seal is appended.
//!
//! Invariants:
//! - it never panics;
//! - mode 0: a bundle with any byte changed never verifies;
//! - modes 1 and 2: a bundle that verifies proves only the truth: its checkpoint is the one the
//!   key signed, every event in it is, byte for byte, the ledger's event at its index, with that
//!   entry's fields, and the other evidence files (recordings, tombstones) are the exported
//!   ones. (What a re-sealed bundle can still change and verify is printed once per run: it is
//!   not covered by any signature.)
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::Compression;
use gatehouse_proof::bundle::{seal, verify};
use gatehouse_proof::checkpoint::NoteVerifier;
use libfuzzer_sys::fuzz_target;

const BUNDLES: [&[u8]; 2] = [
    include_bytes!("../fixtures/range.tar.gz"),
    include_bytes!("../fixtures/readonly-bot.tar.gz"),
];
/// Every entry of the ledger the fixtures were exported from: the truth.
const LEDGER: &[u8] = include_bytes!("../fixtures/all.tar.gz");
const VKEY: &str = include_str!("../fixtures/checkpoint.vkey");

/// The fields of a `proofs.jsonl` line that the entry hash covers.
#[derive(Debug, PartialEq, Eq)]
struct EntryFields {
    stream_sequence: u64,
    received_at: i64,
    previous_hash: String,
}

/// A bundle's files by path.
type Files = BTreeMap<String, Vec<u8>>;

struct Truth {
    key: NoteVerifier,
    /// By index: the event's bytes and its entry's fields.
    entries: HashMap<u64, (Vec<u8>, EntryFields)>,
    /// The files of each fixture, decompressed, and the archive itself.
    fixtures: Vec<(Files, Vec<u8>)>,
    checkpoint: gatehouse_proof::checkpoint::Checkpoint,
    dir: tempfile::TempDir,
}

/// The archive of a bundle: its first gzip member, decompressed.
fn archive(bundle: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bundle)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

fn files(tar_bytes: &[u8]) -> Option<Files> {
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let name = entry.path().ok()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).ok()?;
        files.insert(name, content);
    }
    Some(files)
}

/// (index, fields) of each line of `proofs.jsonl`.
fn proof_lines(proofs: &[u8]) -> Vec<(u64, EntryFields)> {
    proofs
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_slice(line).expect("a proof line");
            (
                v["index"].as_u64().unwrap(),
                EntryFields {
                    stream_sequence: v["stream_sequence"].as_u64().unwrap(),
                    received_at: v["received_at"].as_i64().unwrap(),
                    previous_hash: v["previous_hash"].as_str().unwrap().to_ascii_lowercase(),
                },
            )
        })
        .collect()
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn truth() -> &'static Truth {
    static TRUTH: OnceLock<Truth> = OnceLock::new();
    TRUTH.get_or_init(|| {
        let ledger = files(&archive(LEDGER).unwrap()).unwrap();
        let entries = lines(&ledger["events.jsonl"])
            .into_iter()
            .zip(proof_lines(&ledger["proofs.jsonl"]))
            .map(|(event, (index, fields))| (index, (event.to_vec(), fields)))
            .collect();
        let key = NoteVerifier::from_vkey(VKEY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.tar.gz");
        std::fs::write(&path, LEDGER).unwrap();
        let checkpoint = verify(&path, Some(&key), |_| {})
            .expect("the ledger's bundle verifies")
            .checkpoint;
        let fixtures = BUNDLES
            .iter()
            .map(|b| {
                std::fs::write(&path, b).unwrap();
                verify(&path, Some(&key), |_| {}).expect("each fixture verifies");
                let tar_bytes = archive(b).unwrap();
                (files(&tar_bytes).unwrap(), tar_bytes)
            })
            .collect();
        Truth {
            key,
            entries,
            fixtures,
            checkpoint,
            dir,
        }
    })
}

/// Applies the (offset, xor) edits of `ops` to `bytes`.
fn edit(bytes: &mut [u8], ops: &[u8]) {
    for op in ops.chunks_exact(5) {
        let offset = u32::from_le_bytes([op[0], op[1], op[2], op[3]]) as usize;
        if !bytes.is_empty() {
            let at = offset % bytes.len();
            bytes[at] ^= op[4];
        }
    }
}

/// A sealed bundle from an archive: the exact gzip header bundles use, then the seal.
fn sealed(tar_bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    // The default level: the header's XFL byte says "fast" or "best" for the others, and a
    // verifier accepts only the header bundles are written with.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(&mut body, Compression::default());
    gz.write_all(tar_bytes).unwrap();
    gz.finish().unwrap();
    reseal(body)
}

fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    let digest = blake3::hash(&body);
    body.extend_from_slice(&seal(digest.as_bytes()));
    body
}

fn path() -> PathBuf {
    truth().dir.path().join("bundle.tar.gz")
}

/// What a verified bundle may claim: only the truth.
fn check_proves_only_the_truth(bundle: &[u8], verified: &gatehouse_proof::bundle::Verified) {
    let t = truth();
    assert_eq!(
        verified.checkpoint, t.checkpoint,
        "a checkpoint the key never signed"
    );
    let files = files(&archive(bundle).unwrap()).expect("a verified bundle unpacks");
    let events = lines(&files["events.jsonl"]);
    let proofs = proof_lines(&files["proofs.jsonl"]);
    assert_eq!(events.len(), proofs.len());
    for (event, (index, fields)) in events.iter().zip(&proofs) {
        let (true_event, true_fields) = t
            .entries
            .get(index)
            .unwrap_or_else(|| panic!("entry {index} is not in the ledger"));
        assert_eq!(
            event, true_event,
            "entry {index}: an event the ledger does not hold"
        );
        assert_eq!(
            fields, true_fields,
            "entry {index}: fields the ledger does not hold"
        );
    }
    // Recordings and tombstones are evidence too: they must be one fixture's, unchanged.
    let evidence = |files: &Files| -> Files {
        files
            .iter()
            .filter(|(n, _)| n.starts_with("recordings/") || *n == "tombstones.jsonl")
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    };
    let mine = evidence(&files);
    assert!(
        t.fixtures.iter().any(|(f, _)| evidence(f) == mine),
        "recordings or tombstones that were never exported verified"
    );
    // Not an invariant failure (nothing signs them), but worth saying once.
    static SAID: AtomicBool = AtomicBool::new(false);
    if let Some((original, _)) = t
        .fixtures
        .iter()
        .find(|(f, _)| f["events.jsonl"] == files["events.jsonl"])
        && original.get("manifest.json") != files.get("manifest.json")
        && !SAID.swap(true, Ordering::Relaxed)
    {
        eprintln!(
            "NOTE: a re-sealed bundle with another manifest.json verified:\n  was {}\n  now {}",
            String::from_utf8_lossy(&original["manifest.json"]),
            String::from_utf8_lossy(&files["manifest.json"])
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, which, rest @ ..] = data else {
        return;
    };
    let t = truth();
    let fixture = usize::from(which & 1);
    let bundle = match mode % 3 {
        0 => {
            let mut bundle = BUNDLES[fixture].to_vec();
            edit(&mut bundle, rest);
            if bundle == BUNDLES[fixture] {
                return;
            }
            bundle
        }
        1 => {
            let mut tar_bytes = t.fixtures[fixture].1.clone();
            edit(&mut tar_bytes, rest);
            sealed(&tar_bytes)
        }
        _ => {
            if rest.len() < 10 {
                return;
            }
            reseal(rest.to_vec())
        }
    };
    let path = path();
    std::fs::write(&path, &bundle).unwrap();
    let result = verify(&path, Some(&t.key), |_| {});
    if mode % 3 == 0 {
        assert!(
            result.is_err(),
            "a bundle with a changed byte verified: {:?}",
            result.ok()
        );
        return;
    }
    if let Ok(verified) = result {
        check_proves_only_the_truth(&bundle, &verified);
    }
    // Without a key, the bundle's own is used: never panics either.
    if mode & 0x80 != 0 {
        let _ = verify(&path, None, |_| {});
    }
});
