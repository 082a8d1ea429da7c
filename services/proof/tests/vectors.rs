//! The known-answer vectors of `schemas/vectors/` (computed by `schemas/vectors/make.py` with
//! Python, from `schemas/ledger.md` and `schemas/bundle.md` alone), reproduced byte for byte.

mod common;

use std::io::Read;

use common::ledger_of;
use gatehouse_proof::bundle::{self, BundleWriter, Options, Scope, manifest_note_text, seal};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner, NoteVerifier, key_id};
use gatehouse_proof::entry::{Entry, entry_hash};
use gatehouse_proof::merkle;
use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = format!(
        "{}/../../schemas/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn signer() -> NoteSigner {
    let keys = vector("keys.json");
    let seed: [u8; 32] = hex::decode(text(&keys["seed_hex"]))
        .unwrap()
        .try_into()
        .unwrap();
    NoteSigner::from_seed(text(&keys["name"]), seed).unwrap()
}

#[test]
fn key_ids_and_keys() {
    let keys = vector("keys.json");
    let signer = signer();
    assert_eq!(hex::encode(signer.key_id()), text(&keys["key_id_hex"]));
    assert_eq!(signer.verifier().to_vkey(), text(&keys["verifier_key"]));
    assert_eq!(signer.to_skey(), text(&keys["private_key"]));
    let public: [u8; 32] = hex::decode(text(&keys["public_key_hex"]))
        .unwrap()
        .try_into()
        .unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    assert_eq!(
        hex::encode(key_id(text(&keys["name"]), &public)),
        text(&keys["key_id_hex"])
    );
}

#[test]
fn a_signed_checkpoint() {
    let v = vector("checkpoint.json");
    let root: [u8; 32] = hex::decode(text(&v["root_hex"]))
        .unwrap()
        .try_into()
        .unwrap();
    let checkpoint = Checkpoint {
        origin: text(&v["origin"]).into(),
        size: v["size"].as_u64().unwrap(),
        root,
    };
    assert_eq!(checkpoint.body(), text(&v["text"]));
    assert_eq!(signer().sign(&checkpoint), text(&v["note"]));
    let vkey = NoteVerifier::from_vkey(text(&vector("keys.json")["verifier_key"])).unwrap();
    assert_eq!(vkey.open(text(&v["note"])).unwrap(), checkpoint);
}

#[test]
fn the_seal() {
    for s in vector("seal.json")["seals"].as_array().unwrap() {
        let input = hex::decode(text(&s["input_hex"])).unwrap();
        let digest = blake3::hash(&input);
        assert_eq!(digest.to_hex().as_str(), text(&s["blake3_hex"]));
        assert_eq!(hex::encode(seal(digest.as_bytes())), text(&s["seal_hex"]));
    }
}

#[test]
fn a_signed_manifest() {
    let v = vector("manifest.json");
    let manifest = text(&v["manifest"]).as_bytes();
    assert_eq!(manifest_note_text(manifest), text(&v["note_text"]));
    assert_eq!(
        signer().sign_note(&manifest_note_text(manifest)),
        text(&v["signature"])
    );
}

/// The decompressed archive (the tar) of a bundle file.
fn tar_of(bundle: &[u8]) -> Vec<u8> {
    let body = &bundle[..bundle.len() - bundle::SEAL_LEN];
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn a_complete_bundle() {
    let v = vector("bundle.json");
    let python = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/vectors/bundle.tar.gz"
    ))
    .unwrap();
    assert_eq!(
        blake3::hash(&python).to_hex().as_str(),
        text(&v["file_blake3"])
    );

    // The same entries, checkpoint, time and consistency proof through the Rust writer.
    let entries: Vec<Entry> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Entry {
            index: e["index"].as_u64().unwrap(),
            stream_sequence: e["stream_sequence"].as_u64().unwrap(),
            received_at: e["received_at"].as_i64().unwrap(),
            previous_hash: hex::decode(text(&e["previous_hash"]))
                .unwrap()
                .try_into()
                .unwrap(),
            event: text(&e["event"]).as_bytes().to_vec(),
        })
        .collect();
    for (entry, e) in entries.iter().zip(v["entries"].as_array().unwrap()) {
        assert_eq!(
            hex::encode(entry_hash(&entry.encode().unwrap())),
            text(&e["entry_hash"])
        );
    }
    // The session's recording, from its events alone.
    let events: Vec<&[u8]> = entries.iter().map(|e| e.event.as_slice()).collect();
    let cast = gatehouse_proof::recording::asciicast(events[3], &events[4..]).unwrap();
    assert_eq!(String::from_utf8(cast).unwrap(), text(&v["recording"]));
    let size = entries.len() as u64;
    let since = v["since"].as_u64().unwrap();
    let mut ledger = ledger_of(entries.clone());
    let root = merkle::root(&mut ledger, size).unwrap();
    let signer = signer();
    let note = signer.sign(&Checkpoint {
        origin: signer.name().into(),
        size,
        root,
    });
    let mut writer = BundleWriter::new(&note, signer.clone(), common::FORMAT).unwrap();
    let old_root = merkle::root(&mut ledger, since).unwrap();
    let proof = merkle::consistency_proof(&mut ledger, since, size).unwrap();
    writer.add_consistency(since, &old_root, &proof).unwrap();
    let first = v["first"].as_u64().unwrap() as usize;
    let mut subtree = |s, z| merkle::subtree_hash(&mut ledger, s, z);
    for entry in &entries[first..] {
        writer.add_entry(entry, &mut subtree).unwrap();
    }
    let mut rust = Vec::new();
    writer
        .finish(
            Scope {
                contiguous: true,
                created_at: text(&v["created_at"]).into(),
                ..Scope::default()
            },
            &mut subtree,
            &mut rust,
        )
        .unwrap();
    let (ours, theirs) = (tar_of(&rust), tar_of(&python));
    assert_eq!(theirs.len() as u64, v["tar_bytes"].as_u64().unwrap());
    assert_eq!(
        blake3::hash(&theirs).to_hex().as_str(),
        text(&v["tar_blake3"])
    );
    assert!(
        ours == theirs,
        "the Rust writer's archive differs from make.py's: {}",
        String::from_utf8_lossy(&ours)
    );

    // Python's file verifies, against the key and the checkpoint of checkpoint.json.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.tar.gz");
    std::fs::write(&path, &python).unwrap();
    let key = signer.verifier();
    let trusted = vector("checkpoint.json");
    let verified = bundle::verify_with(
        &path,
        Options {
            key: Some(&key),
            trusted: Some(text(&trusted["note"])),
            ..Options::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(verified.manifest.counts.sessions, 1);
    assert_eq!(verified.trusted.map(|t| t.size), Some(since));
}
