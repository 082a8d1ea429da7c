//! Signed checkpoints: a C2SP `tlog-checkpoint` body in a C2SP `signed-note`, signed with
//! Ed25519.
//!
//! ```text
//! gatehouse.example.com/ledger        ← origin
//! 1234                                ← tree size, decimal
//! 8NwXBtr8JAEiWp+Ux3/xDvYLFgglQqyLvr21xz4j+4g=   ← root hash, standard base64
//!                                     ← blank line ends the note's text
//! — gatehouse.example.com/ledger SLbU2f…  ← "— " key name, base64(key id ‖ signature)
//! ```
//!
//! The key id is the first 4 bytes of SHA-256(key name ‖ "\n" ‖ 0x01 ‖ public key), 0x01 being
//! the signed-note signature type of Ed25519; the signature is over the text, final newline
//! included. Keys travel in the signed-note text forms: `PRIVATE+KEY+<name>+<id hex>+<base64
//! (0x01 ‖ seed)>` (kept in a file only the evidence service reads) and `<name>+<id hex>+<base64
//! (0x01 ‖ public key)>` (given to auditors).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::entry::Hash;

/// The signed-note signature type of Ed25519.
const ED25519: u8 = 0x01;
/// The em dash and space that start a signature line.
pub(crate) const SIGNATURE_PREFIX: &str = "\u{2014} ";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    #[error("a key name must be non-empty, without spaces, `+` or newlines: {0:?}")]
    BadName(String),
    #[error("the key is not in signed-note form: {0}")]
    BadKey(&'static str),
    #[error("the checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("no signature by key {name} ({id}) on the checkpoint")]
    NotSigned { name: String, id: String },
    #[error("the signature by {0} does not verify: the checkpoint was changed or forged")]
    BadSignature(String),
}

/// What a checkpoint commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Names the log (C2SP: a schema-less URL, e.g. `gatehouse.example.com/ledger`).
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, each ending with a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Reads the checkpoint from a signed note's text, **without** checking any signature (for
    /// the signer's own records; auditors use [`NoteVerifier::open`]).
    pub fn from_note_unverified(note: &str) -> Result<Self, CheckpointError> {
        let end = note.find("\n\n").map_or(note.len(), |i| i + 1);
        Self::parse_body(&note[..end])
    }

    fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(m.to_owned());
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no tree size line"))?;
        // Decimal without leading zeros or signs, as C2SP requires.
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("the tree size is not a decimal number"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| bad("the tree size is too large"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| Hash::try_from(r.as_slice()).ok())
            .ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

fn check_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(CheckpointError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The signed-note key id of an Ed25519 key named `name`.
pub fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    typed_key_id(name, ED25519, public)
}

/// `SHA-256(name ‖ "\n" ‖ type byte ‖ public key)[..4]`: the key id of every signed-note key type.
pub(crate) fn typed_key_id(name: &str, kind: u8, public: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([kind]);
    hasher.update(public.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// `<name>+<id hex>+<base64(type byte ‖ public key)>`.
pub(crate) fn format_vkey(name: &str, kind: u8, public: &VerifyingKey) -> String {
    let mut key = vec![kind];
    key.extend_from_slice(public.as_bytes());
    format!(
        "{name}+{}+{}",
        hex(&typed_key_id(name, kind, public)),
        STANDARD.encode(key)
    )
}

/// Signs checkpoints. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl NoteSigner {
    /// A new key named `name` from 32 random bytes (`seed`; the caller draws them from the OS).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, CheckpointError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    pub fn from_skey(text: &str) -> Result<Self, CheckpointError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(CheckpointError::BadKey(
                "a private key starts with PRIVATE+KEY+",
            ))?;
        let (name, id, key) = split_key(rest)?;
        let seed: [u8; 32] = key
            .try_into()
            .map_err(|_| CheckpointError::BadKey("an Ed25519 seed is 32 bytes"))?;
        let signer = Self::from_seed(name, seed)?;
        if signer.key_id() != id {
            return Err(CheckpointError::BadKey("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// The private key in signed-note form (for the key file only).
    pub fn to_skey(&self) -> String {
        let mut key = vec![ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex(&self.key_id()),
            STANDARD.encode(key)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.key.verifying_key())
    }

    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The same key under another name.
    pub fn with_name(&self, name: &str) -> Result<Self, CheckpointError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: self.key.clone(),
        })
    }

    /// The signed note: the checkpoint's text, a blank line, one signature line.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_note(&checkpoint.body())
    }

    /// Any note text (ending with a newline) signed as a C2SP signed note.
    pub fn sign_note(&self, body: &str) -> String {
        let signature = self.key.sign(body.as_bytes());
        let mut blob = self.key_id().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        )
    }
}

/// Checks checkpoints signed by one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads `<name>+<id>+<base64(0x01 ‖ public key)>`.
    pub fn from_vkey(text: &str) -> Result<Self, CheckpointError> {
        let (name, id, key) = split_key(text.trim())?;
        check_name(name)?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| CheckpointError::BadKey("an Ed25519 public key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| CheckpointError::BadKey("not a valid Ed25519 public key"))?;
        if key_id(name, &key) != id {
            return Err(CheckpointError::BadKey("the key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn to_vkey(&self) -> String {
        format_vkey(&self.name, ED25519, &self.key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> [u8; 4] {
        key_id(&self.name, &self.key)
    }

    /// The checkpoint in `note`, if this key signed it. Signatures by other keys are ignored.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::parse_body(self.verify_note(note)?)
    }

    /// The text of a signed note, if this key signed it.
    pub fn verify_note<'a>(&self, note: &'a str) -> Result<&'a str, CheckpointError> {
        let (body, signatures) = split_note(note)?;
        let id = self.key_id();
        for (name, blob) in signatures {
            if name != self.name || blob.len() < 4 || blob[..4] != id {
                continue;
            }
            let signature = Signature::from_slice(&blob[4..])
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            self.key
                .verify(body.as_bytes(), &signature)
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            return Ok(body);
        }
        Err(CheckpointError::NotSigned {
            name: self.name.clone(),
            id: hex(&id),
        })
    }

    /// The same public key under another name (a name is part of a signed-note key: the key id
    /// hashes it).
    pub fn with_name(&self, name: &str) -> Result<Self, CheckpointError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: self.key,
        })
    }
}

/// A signature line: its key name and the decoded `key id ‖ signature`.
pub(crate) type SignatureLine<'a> = (&'a str, Vec<u8>);

/// A signed note's text (final newline included) and its signature lines; every line must be
/// well-formed.
pub(crate) fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), CheckpointError> {
    let bad = |m: &str| CheckpointError::Malformed(m.to_owned());
    let split = note
        .find("\n\n")
        .ok_or_else(|| bad("no blank line between the text and the signatures"))?;
    let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
    if !signatures.ends_with('\n') {
        return Err(bad("the last signature line does not end with a newline"));
    }
    signatures
        .lines()
        .map(|line| {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| bad("a signature line does not start with an em dash"))?;
            let (name, blob) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line has no signature"))?;
            let blob = STANDARD
                .decode(blob)
                .map_err(|_| bad("a signature is not base64"))?;
            Ok((name, blob))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|lines| (body, lines))
}

/// The `(key name, key id hex)` of every signature line of a signed note, without checking any
/// of them: to say which key signed something no configured key can check.
pub fn note_signers(note: &str) -> Vec<(String, String)> {
    let Some(split) = note.find("\n\n") else {
        return Vec::new();
    };
    note[split + 2..]
        .lines()
        .filter_map(|line| {
            let (name, blob) = line.strip_prefix(SIGNATURE_PREFIX)?.split_once(' ')?;
            let blob = STANDARD.decode(blob).ok()?;
            (blob.len() >= 4).then(|| (name.to_owned(), hex(&blob[..4])))
        })
        .collect()
}

/// `<name>+<8 hex id>+<base64 key with type byte>` → (name, id, key bytes).
fn split_key(text: &str) -> Result<(&str, [u8; 4], Vec<u8>), CheckpointError> {
    match split_typed_key(text)? {
        (name, id, ED25519, key) => Ok((name, id, key)),
        _ => Err(CheckpointError::BadKey(
            "only Ed25519 keys (type 0x01) are supported",
        )),
    }
}

/// A vkey's parts: name, key id, signed-note type byte, key bytes.
pub(crate) type KeyParts<'a> = (&'a str, [u8; 4], u8, Vec<u8>);

/// `<name>+<8 hex id>+<base64 key with type byte>` → its parts.
pub(crate) fn split_typed_key(text: &str) -> Result<KeyParts<'_>, CheckpointError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CheckpointError::BadKey("expected NAME+ID+KEY"));
    };
    let id = u32::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 8)
        .ok_or(CheckpointError::BadKey("the key id is not 8 hex digits"))?
        .to_be_bytes();
    let key = STANDARD
        .decode(key)
        .map_err(|_| CheckpointError::BadKey("the key is not base64"))?;
    match key.split_first() {
        Some((&kind, rest)) => Ok((name, id, kind, rest.to_vec())),
        None => Err(CheckpointError::BadKey("the key is empty")),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::from_seed("gatehouse.example.com/ledger", [7u8; 32]).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "gatehouse.example.com/ledger".into(),
            size: 3,
            root: [0xab; 32],
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_keys_round_trip() {
        let signer = signer();
        let note = signer.sign(&checkpoint());
        assert!(note.starts_with("gatehouse.example.com/ledger\n3\n"));
        assert!(note.contains("\n\n\u{2014} gatehouse.example.com/ledger "));
        let verifier = NoteVerifier::from_vkey(&signer.verifier().to_vkey()).unwrap();
        assert_eq!(verifier.open(&note).unwrap(), checkpoint());
        let again = NoteSigner::from_skey(&signer.to_skey()).unwrap();
        assert_eq!(again.sign(&checkpoint()), note, "Ed25519 is deterministic");
        assert!(!format!("{signer:?}").contains(&signer.to_skey()[20..]));
    }

    #[test]
    fn any_change_to_a_signed_checkpoint_is_refused() {
        let signer = signer();
        let note = signer.sign(&checkpoint());
        let verifier = signer.verifier();
        for (i, _) in note
            .char_indices()
            .filter(|(_, c)| c.is_ascii_alphanumeric())
        {
            let mut bytes = note.clone().into_bytes();
            bytes[i] ^= 0x01;
            let Ok(changed) = String::from_utf8(bytes) else {
                continue;
            };
            assert!(
                verifier.open(&changed).is_err(),
                "byte {i} changed: {changed}"
            );
        }
        let other = NoteSigner::from_seed("gatehouse.example.com/ledger", [8u8; 32]).unwrap();
        assert!(matches!(
            other.verifier().open(&note),
            Err(CheckpointError::NotSigned { .. })
        ));
    }

    /// golang.org/x/mod/sumdb/note's own example: another implementation's keys and signature.
    #[test]
    fn the_go_reference_note_signs_and_verifies_byte_for_byte() {
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let note = format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        let signer = NoteSigner::from_skey(skey).unwrap();
        assert_eq!(signer.verifier().to_vkey(), vkey);
        assert_eq!(signer.sign_note(text), note);
        assert_eq!(
            NoteVerifier::from_vkey(vkey)
                .unwrap()
                .verify_note(&note)
                .unwrap(),
            text
        );
    }

    #[test]
    fn key_ids_follow_the_signed_note_rule() {
        // Recomputed by hand: SHA-256("name\n" ‖ 0x01 ‖ key)[..4].
        let signer = signer();
        let public = signer.key.verifying_key();
        let mut input = b"gatehouse.example.com/ledger\n".to_vec();
        input.push(1);
        input.extend_from_slice(public.as_bytes());
        let digest = Sha256::digest(&input);
        assert_eq!(
            signer.key_id(),
            [digest[0], digest[1], digest[2], digest[3]]
        );
        assert!(NoteSigner::from_seed("has space", [1; 32]).is_err());
        assert!(NoteSigner::from_seed("has+plus", [1; 32]).is_err());
    }
}
