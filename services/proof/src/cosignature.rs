//! Witness cosignatures (C2SP `tlog-cosignature`, the Ed25519 `cosignature/v1` type) and the
//! witnessed checkpoint they are over.
//!
//! A cosignature is a signed-note signature line by a witness key:
//!
//! ```text
//! — <witness name> base64(key id (4) ‖ timestamp (8, big-endian) ‖ Ed25519 signature (64))
//! ```
//!
//! The key id is `SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[..4]`; the signature is over
//! `cosignature/v1\ntime <timestamp>\n` followed by the note's whole text.
//!
//! Witnesses check consistency proofs of an RFC 6962 (SHA-256) tree, so what they cosign is
//! not the ledger's checkpoint (a BLAKE3 root) but its **witnessed checkpoint**: the same leaves
//! in the SHA-256 tree of [`crate::rfc6962`], under the origin `<origin>/rfc6962`, signed by the
//! same log key under that name, with one extension line naming the BLAKE3 root it stands for:
//!
//! ```text
//! <origin>/rfc6962
//! <size>
//! <base64 SHA-256 root>
//! blake3-root <base64 BLAKE3 root of the ledger checkpoint at that size>
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::checkpoint::{
    Checkpoint, CheckpointError, NoteVerifier, format_vkey, split_note, split_typed_key,
    typed_key_id,
};
use crate::entry::Hash;

/// The signed-note signature type of Ed25519 cosignatures (`cosignature/v1`).
const COSIGNATURE_V1: u8 = 0x04;
/// What the witnessed checkpoint's origin adds to the ledger's.
pub const WITNESSED_ORIGIN_SUFFIX: &str = "/rfc6962";
/// The bundle member holding the witnessed checkpoint of the bundle's checkpoint, with its
/// cosignatures (`schemas/bundle.md`, *Witnesses*).
pub const BUNDLE_MEMBER: &str = "witnessed-checkpoint";
/// The witnessed checkpoint's extension line starts with this.
const BLAKE3_ROOT_LINE: &str = "blake3-root ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CosignatureError {
    #[error("the witness key is not a cosignature/v1 vkey: {0}")]
    BadKey(&'static str),
    #[error(transparent)]
    Note(#[from] CheckpointError),
    #[error("the witnessed checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("the cosignature by {0} does not verify: the checkpoint was changed or forged")]
    BadSignature(String),
    #[error("the witnessed checkpoint does not match the checkpoint: {0}")]
    Mismatch(String),
    #[error(
        "{found} of the {given} witness keys given cosigned the checkpoint, fewer than the {min} required{detail}"
    )]
    TooFew {
        found: usize,
        given: usize,
        min: usize,
        detail: String,
    },
}

/// A witness's public key (`<name>+<id hex>+<base64(0x04 ‖ Ed25519 key)>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key: VerifyingKey,
}

impl CosignatureVerifier {
    pub fn from_vkey(text: &str) -> Result<Self, CosignatureError> {
        let (name, id, kind, key) = split_typed_key(text.trim()).map_err(|e| match e {
            CheckpointError::BadKey(why) => CosignatureError::BadKey(why),
            _ => CosignatureError::BadKey("expected NAME+ID+KEY"),
        })?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
            return Err(CosignatureError::BadKey("the name is empty or has spaces"));
        }
        if kind != COSIGNATURE_V1 {
            return Err(CosignatureError::BadKey(
                "only Ed25519 cosignatures (type 0x04) are supported",
            ));
        }
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| CosignatureError::BadKey("an Ed25519 public key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| CosignatureError::BadKey("not a valid Ed25519 public key"))?;
        let verifier = Self {
            name: name.to_owned(),
            key,
        };
        if verifier.key_id() != id {
            return Err(CosignatureError::BadKey(
                "the key id does not match the key",
            ));
        }
        Ok(verifier)
    }

    pub fn to_vkey(&self) -> String {
        format_vkey(&self.name, COSIGNATURE_V1, &self.key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        typed_key_id(&self.name, COSIGNATURE_V1, &self.key)
    }

    /// The timestamp of this key's cosignature on `note`: `Ok(None)` when it has none (lines
    /// of other keys are ignored); an error when its line is there and does not verify.
    pub fn verify(&self, note: &str) -> Result<Option<u64>, CosignatureError> {
        let (body, signatures) = split_note(note)?;
        let id = self.key_id();
        for (name, blob) in signatures {
            if name != self.name || blob.len() < 4 || blob[..4] != id {
                continue;
            }
            let bad = || CosignatureError::BadSignature(self.name.clone());
            let (time, signature) = blob[4..].split_at_checked(8).ok_or_else(bad)?;
            let time = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
            if time > i64::MAX as u64 {
                return Err(bad());
            }
            let signature = Signature::from_slice(signature).map_err(|_| bad())?;
            let message = format!("cosignature/v1\ntime {time}\n{body}");
            self.key
                .verify(message.as_bytes(), &signature)
                .map_err(|_| bad())?;
            return Ok(Some(time));
        }
        Ok(None)
    }
}

/// The witnessed checkpoint's origin for a ledger origin.
pub fn witnessed_origin(origin: &str) -> String {
    format!("{origin}{WITNESSED_ORIGIN_SUFFIX}")
}

/// The witnessed checkpoint's text for the ledger checkpoint `checkpoint`, whose leaves have
/// the RFC 6962 root `sha256_root`.
pub fn witnessed_body(checkpoint: &Checkpoint, sha256_root: &Hash) -> String {
    format!(
        "{}\n{}\n{}\n{BLAKE3_ROOT_LINE}{}\n",
        witnessed_origin(&checkpoint.origin),
        checkpoint.size,
        STANDARD.encode(sha256_root),
        STANDARD.encode(checkpoint.root)
    )
}

/// A witness whose cosignature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosigned {
    pub witness: String,
    pub timestamp: u64,
}

/// Checks a witnessed checkpoint against the ledger checkpoint it stands for: signed by the log
/// key (`log`, under the witnessed origin's name), the same size and BLAKE3 root, and
/// cosigned by at least `min` of `witnesses` (distinct keys). Returns the cosigners.
pub fn check_witnessed(
    checkpoint: &Checkpoint,
    log: &NoteVerifier,
    witnessed_note: &str,
    witnesses: &[CosignatureVerifier],
    min: usize,
) -> Result<Vec<Cosigned>, CosignatureError> {
    let origin = witnessed_origin(&checkpoint.origin);
    let text = log.with_name(&origin)?.verify_note(witnessed_note)?;
    let mut lines = text.lines();
    let mismatch = |m: String| CosignatureError::Mismatch(m);
    if lines.next() != Some(origin.as_str()) {
        return Err(mismatch(format!("its origin is not {origin}")));
    }
    let size = checkpoint.size.to_string();
    if lines.next() != Some(size.as_str()) {
        return Err(mismatch(format!("its tree size is not {size}")));
    }
    lines
        .next()
        .and_then(|r| STANDARD.decode(r).ok())
        .filter(|r| r.len() == 32)
        .ok_or_else(|| CosignatureError::Malformed("no 32-byte base64 root hash".into()))?;
    let blake3_root = format!("{BLAKE3_ROOT_LINE}{}", STANDARD.encode(checkpoint.root));
    if lines.next() != Some(blake3_root.as_str()) || lines.next().is_some() {
        return Err(mismatch(format!(
            "its extension line is not `{blake3_root}`"
        )));
    }
    let mut cosigned: Vec<Cosigned> = Vec::new();
    let mut refused = Vec::new();
    let mut distinct: Vec<&CosignatureVerifier> = Vec::new();
    for w in witnesses {
        if !distinct
            .iter()
            .any(|d| d.key_id() == w.key_id() && d.name == w.name)
        {
            distinct.push(w);
        }
    }
    for w in &distinct {
        match w.verify(witnessed_note) {
            Ok(Some(timestamp)) => cosigned.push(Cosigned {
                witness: w.name.clone(),
                timestamp,
            }),
            Ok(None) => refused.push(format!("{}: no cosignature", w.name)),
            Err(e) => refused.push(format!("{}: {e}", w.name)),
        }
    }
    if cosigned.len() < min {
        return Err(CosignatureError::TooFew {
            found: cosigned.len(),
            given: distinct.len(),
            min,
            detail: if refused.is_empty() {
                String::new()
            } else {
                format!(" ({})", refused.join("; "))
            },
        });
    }
    Ok(cosigned)
}

/// The witnessed checkpoint in the bundle at `path` (which [`crate::bundle::verify`] accepted
/// with `manifest`), checked against the manifest's digest of it; `None` when there is none.
pub fn bundle_member(
    path: &std::path::Path,
    manifest: &crate::bundle::Manifest,
) -> Result<Option<String>, String> {
    use std::io::Read;
    let Some(digest) = manifest.files.get(BUNDLE_MEMBER) else {
        return Ok(None);
    };
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if entry.path().map_err(|e| e.to_string())?.to_str() != Some(BUNDLE_MEMBER) {
            continue;
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| format!("{BUNDLE_MEMBER}: {e}"))?;
        // Read again after verification: it must still be the file the manifest names.
        if blake3::hash(text.as_bytes()).to_hex().as_str() != digest.blake3 {
            return Err(format!(
                "{BUNDLE_MEMBER} does not match its digest in manifest.json"
            ));
        }
        return Ok(Some(text));
    }
    Err(format!(
        "manifest.json names {BUNDLE_MEMBER} but the archive lacks it"
    ))
}

/// `gatehouse verify --witness … --min-witnesses K` after the bundle verified: at least `min`
/// of `witnesses` cosigned the witnessed checkpoint of the bundle's checkpoint. With no witness
/// keys and `min` 0 nothing is required; the cosigners found are returned either way.
pub fn check_bundle(
    path: &std::path::Path,
    verified: &crate::bundle::Verified,
    witnesses: &[CosignatureVerifier],
    min: usize,
) -> Result<Vec<Cosigned>, String> {
    if witnesses.is_empty() && min == 0 {
        return Ok(Vec::new());
    }
    if witnesses.len() < min {
        return Err(format!(
            "--min-witnesses {min} needs at least {min} --witness keys; {} given",
            witnesses.len()
        ));
    }
    let Some(note) = bundle_member(path, &verified.manifest)? else {
        return Err(format!(
            "the bundle has no {BUNDLE_MEMBER}: no witness cosigned its checkpoint (or it was \
             exported before witnesses were configured)"
        ));
    };
    let log = NoteVerifier::from_vkey(&verified.key).map_err(|e| e.to_string())?;
    check_witnessed(&verified.checkpoint, &log, &note, witnesses, min)
        .map_err(|e| format!("{BUNDLE_MEMBER}: {e}"))
}

/// Adds the signature lines of `lines` (a witness's answer) that `note` lacks to `note`.
pub fn merge_signature_lines(note: &str, lines: &str) -> String {
    let mut out = note.to_owned();
    for line in lines.lines().filter(|l| !l.is_empty()) {
        let present = note.lines().any(|l| l == line);
        if !present && !out.contains(&format!("\n{line}\n")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::NoteSigner;

    /// Computed independently with Python's `cryptography` (Ed25519 over the spec's message):
    /// witness key seed = 32 × 0x2a, name `witness.example/w1`, time 1700000000, over the note
    /// text of the C2SP example checkpoint.
    const KAT_BODY: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const KAT_VKEY: &str =
        "witness.example/w1+18041f2a+BBl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h";
    const KAT_LINE: &str = "\u{2014} witness.example/w1 GAQfKgAAAABlU/EA72aiF6GlEQAw2IGSc6JPNDt/G6epvn3Y+jtmHqoyIboG+KmtnKSduKABGsPQuM2vpwnKGu7ja03M9bmm/2wiDg==";

    #[test]
    fn a_cosignature_computed_elsewhere_verifies_and_a_changed_one_does_not() {
        let w = CosignatureVerifier::from_vkey(KAT_VKEY).unwrap();
        assert_eq!(w.to_vkey(), KAT_VKEY);
        let note = format!("{KAT_BODY}\n{KAT_LINE}\n");
        assert_eq!(w.verify(&note).unwrap(), Some(1_700_000_000));
        // Another time in the line, the same signature: refused.
        let blob = STANDARD
            .decode(KAT_LINE.rsplit_once(' ').unwrap().1)
            .unwrap();
        let mut later = blob.clone();
        later[11] ^= 1;
        let changed = format!(
            "{KAT_BODY}\n\u{2014} witness.example/w1 {}\n",
            STANDARD.encode(&later)
        );
        assert!(matches!(
            w.verify(&changed),
            Err(CosignatureError::BadSignature(_))
        ));
        // A different checkpoint, the same line: refused.
        let other = note.replace("20852163", "20852164");
        assert!(w.verify(&other).is_err());
        // No line by this key: none.
        assert_eq!(w.verify(&format!("{KAT_BODY}\n")).ok(), None);
    }

    #[test]
    fn vkeys_of_other_types_or_wrong_ids_are_refused() {
        let log = NoteSigner::from_seed("example.com/log", [1; 32]).unwrap();
        assert!(CosignatureVerifier::from_vkey(&log.verifier().to_vkey()).is_err());
        let mut wrong = KAT_VKEY.to_owned();
        wrong.replace_range(19..20, "0");
        assert_ne!(wrong, KAT_VKEY);
        assert_eq!(
            CosignatureVerifier::from_vkey(&wrong).unwrap_err(),
            CosignatureError::BadKey("the key id does not match the key")
        );
        assert!(CosignatureVerifier::from_vkey("no-plus").is_err());
    }

    #[test]
    fn a_witnessed_checkpoint_must_name_the_checkpoint_and_carry_enough_cosignatures() {
        let log = NoteSigner::from_seed("example.com/log", [1; 32]).unwrap();
        let checkpoint = Checkpoint {
            origin: "example.com/log".into(),
            size: 5,
            root: [9; 32],
        };
        let witnessed = log
            .with_name(&witnessed_origin(&checkpoint.origin))
            .unwrap()
            .sign_note(&witnessed_body(&checkpoint, &[7; 32]));
        let w = CosignatureVerifier::from_vkey(KAT_VKEY).unwrap();
        // Signed by the log, cosigned by nobody: enough for 0, not for 1.
        assert!(check_witnessed(&checkpoint, &log.verifier(), &witnessed, &[], 0).is_ok());
        let e = check_witnessed(
            &checkpoint,
            &log.verifier(),
            &witnessed,
            std::slice::from_ref(&w),
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("0 of the 1 witness keys"), "{e}");
        // Another root: the witnessed checkpoint does not stand for it.
        let other = Checkpoint {
            root: [8; 32],
            ..checkpoint.clone()
        };
        assert!(matches!(
            check_witnessed(&other, &log.verifier(), &witnessed, &[], 0),
            Err(CosignatureError::Mismatch(_))
        ));
        // Not signed by the log key: refused.
        let stranger = NoteSigner::from_seed("example.com/log", [2; 32]).unwrap();
        assert!(check_witnessed(&checkpoint, &stranger.verifier(), &witnessed, &[], 0).is_err());
    }

    #[test]
    fn merging_adds_only_new_lines() {
        let note = "a\n\n\u{2014} x AAAA\n";
        let merged = merge_signature_lines(note, "\u{2014} y BBBB\n\u{2014} x AAAA\n");
        assert_eq!(merged, "a\n\n\u{2014} x AAAA\n\u{2014} y BBBB\n");
        assert_eq!(merge_signature_lines(&merged, "\u{2014} y BBBB\n"), merged);
    }
}
