//! Signed statements: what one Gatehouse service tells another through the bus, signed so the
//! receiver can tell it came from the service that may say it (`schemas/attestation.md`).
//!
//! A statement is a C2SP signed note whose text is two lines: the statement's kind
//! (`gatehouse.dev/approval-decision/v1`) and the statement as one line of JSON. The receiver
//! verifies the note against the keys it trusts, then reads the statement from the verified
//! text, never from anything beside it.
//!
//! ```text
//! gatehouse.dev/grant/v1
//! {"request_id":"01J…","grant_id":"01J…",…}
//!
//! — approval.gatehouse.example.com Ab3x…
//! ```

use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::checkpoint::{CheckpointError, NoteSigner, NoteVerifier, note_signers};

/// Why a statement was not accepted. Each names what was wrong in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("it carries no signature")]
    Unsigned,
    #[error("its signature could not be read: {0}")]
    Malformed(String),
    #[error("it is signed by a key this service does not trust ({0})")]
    UnknownKey(String),
    #[error("its signature by {0} does not verify: it was changed or forged")]
    BadSignature(String),
    #[error("it is signed by {key}, a key trusted only until {until}")]
    RetiredKey { key: String, until: String },
    #[error("it is a {found:?} statement where a {expected:?} statement was expected")]
    WrongKind { expected: String, found: String },
}

/// Reads a private key in signed-note form from a file no one else may read or change: the
/// owner's bits and group read at most (0600, 0400, or 0440 — what the kubelet makes of a
/// Secret's 0400 when the pod has an `fsGroup`). A key with group-write or any bit for others
/// is refused rather than used. Errors never hold the key.
pub fn load_signing_key(path: &std::path::Path) -> Result<NoteSigner, String> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("signing key {shown}: {e}"))?
            .permissions()
            .mode();
        if mode & 0o037 != 0 {
            return Err(format!(
                "signing key {shown} may be read or changed by others (mode {:04o}); `chmod 600` it",
                mode & 0o777
            ));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("signing key {shown}: {e}"))?;
    NoteSigner::from_skey(&text).map_err(|e| format!("signing key {shown}: {e}"))
}

/// Signs `statement` as a `kind` statement.
pub fn sign<T: Serialize>(signer: &NoteSigner, kind: &str, statement: &T) -> String {
    // serde_json escapes every control character, so the JSON is one line.
    let json = serde_json::to_string(statement).unwrap_or_else(|_| "null".to_owned());
    signer.sign_note(&format!("{kind}\n{json}\n"))
}

/// A key trusted to sign statements, possibly only until a time (the old key of a rotation).
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub verifier: NoteVerifier,
    pub until: Option<SystemTime>,
}

impl TrustedKey {
    /// `name/idhex`, how keys are named in refusals and logs.
    pub fn label(&self) -> String {
        label(self.verifier.name(), &hex(&self.verifier.key_id()))
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn label(name: &str, id: &str) -> String {
    format!("{name}/{id}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys a receiver trusts.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<TrustedKey>,
}

/// A statement that verified, and the key that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened<T> {
    pub statement: T,
    pub key: String,
}

impl Keyring {
    pub fn new(keys: Vec<TrustedKey>) -> Self {
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the key labelled `label` (as in [`Opened::key`]) is trusted at `now`: what was
    /// opened under a key that has since been removed or retired no longer counts.
    pub fn trusts(&self, label: &str, now: SystemTime) -> bool {
        self.keys
            .iter()
            .any(|k| k.label() == label && k.until.is_none_or(|until| now <= until))
    }

    /// Each key's label, and `until=…` for a key trusted only until then: what a log shows.
    pub fn describe(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| match k.until {
                Some(until) => format!("{} until={}", k.label(), rfc3339(until)),
                None => k.label(),
            })
            .collect()
    }

    pub fn labels(&self) -> Vec<String> {
        self.keys.iter().map(TrustedKey::label).collect()
    }

    /// Reads a keyring file: one verifier key (`NAME+ID+KEY`) per line, optionally followed by
    /// `until=<RFC 3339>`; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |m: String| format!("line {}: {m}", number + 1);
            let mut words = line.split_whitespace();
            let vkey = words.next().unwrap_or_default();
            let verifier = NoteVerifier::from_vkey(vkey).map_err(|e| at(e.to_string()))?;
            let mut until = None;
            for word in words {
                let Some(value) = word.strip_prefix("until=") else {
                    return Err(at(format!(
                        "expected `until=<RFC 3339 time>` after the key, found {word:?}"
                    )));
                };
                let t = time::OffsetDateTime::parse(
                    value,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| at(format!("until={value}: {e}")))?;
                until = Some(SystemTime::from(t));
            }
            keys.push(TrustedKey { verifier, until });
        }
        Ok(Self { keys })
    }

    /// Verifies `note` and reads the `kind` statement in it.
    pub fn open<T: DeserializeOwned>(
        &self,
        kind: &str,
        note: &str,
        now: SystemTime,
    ) -> Result<Opened<T>, AttestError> {
        let signers = note_signers(note);
        if signers.is_empty() {
            return Err(AttestError::Unsigned);
        }
        let mut bad = None;
        let mut verified = None;
        for key in &self.keys {
            match key.verifier.verify_note(note) {
                Ok(body) => {
                    verified = Some((key, body));
                    break;
                }
                Err(CheckpointError::BadSignature(_)) => bad = Some(key.label()),
                Err(CheckpointError::NotSigned { .. }) => {}
                Err(e) => return Err(AttestError::Malformed(e.to_string())),
            }
        }
        let Some((key, body)) = verified else {
            if let Some(bad) = bad {
                return Err(AttestError::BadSignature(bad));
            }
            let names: Vec<String> = signers.iter().map(|(n, id)| label(n, id)).collect();
            return Err(AttestError::UnknownKey(names.join(", ")));
        };
        if let Some(until) = key.until
            && now > until
        {
            return Err(AttestError::RetiredKey {
                key: key.label(),
                until: rfc3339(until),
            });
        }
        let (found, json) = body.split_once('\n').unwrap_or((body, ""));
        if found != kind {
            return Err(AttestError::WrongKind {
                expected: kind.to_owned(),
                found: found.to_owned(),
            });
        }
        let json = json.strip_suffix('\n').unwrap_or(json);
        if json.contains('\n') {
            return Err(AttestError::Malformed(
                "the statement is more than one line".into(),
            ));
        }
        let statement = serde_json::from_str(json)
            .map_err(|e| AttestError::Malformed(format!("the statement is not readable: {e}")))?;
        Ok(Opened {
            statement,
            key: key.label(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Grant {
        grant_id: String,
        principal: String,
    }

    const KIND: &str = "gatehouse.dev/grant/v1";

    fn signer(seed: u8) -> NoteSigner {
        NoteSigner::from_seed("approval.gatehouse.test", [seed; 32]).unwrap()
    }

    fn grant() -> Grant {
        Grant {
            grant_id: "01JGRANT".into(),
            principal: "ci-deployer\nsecond line".into(),
        }
    }

    fn ring(keys: &[(&NoteSigner, Option<SystemTime>)]) -> Keyring {
        Keyring::new(
            keys.iter()
                .map(|(s, until)| TrustedKey {
                    verifier: s.verifier(),
                    until: *until,
                })
                .collect(),
        )
    }

    #[test]
    fn a_statement_opens_with_its_key_and_says_which() {
        let key = signer(1);
        let note = sign(&key, KIND, &grant());
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines[0], KIND);
        assert!(lines[1].starts_with("{\"grant_id\""), "{note}");
        assert_eq!(lines[2], "");
        let opened = ring(&[(&signer(9), None), (&key, None)])
            .open::<Grant>(KIND, &note, SystemTime::now())
            .unwrap();
        assert_eq!(opened.statement, grant());
        assert_eq!(opened.key, ring(&[(&key, None)]).labels()[0]);
    }

    #[test]
    fn each_way_a_statement_can_be_wrong_is_named() {
        let key = signer(1);
        let now = SystemTime::now();
        let note = sign(&key, KIND, &grant());
        let trusted = ring(&[(&key, None)]);
        // Another key, even under the same name.
        let forged = sign(&signer(2), KIND, &grant());
        assert!(matches!(
            trusted.open::<Grant>(KIND, &forged, now),
            Err(AttestError::UnknownKey(k)) if k.starts_with("approval.gatehouse.test/")
        ));
        // The statement changed after signing.
        let changed = note.replace("ci-deployer", "ci-attacker");
        assert!(matches!(
            trusted.open::<Grant>(KIND, &changed, now),
            Err(AttestError::BadSignature(_))
        ));
        // No signature at all, or not a note.
        let body = note.split("\n\n").next().unwrap().to_owned() + "\n";
        assert_eq!(
            trusted.open::<Grant>(KIND, &body, now),
            Err(AttestError::Unsigned)
        );
        assert_eq!(
            trusted.open::<Grant>(KIND, &format!("{body}\n"), now),
            Err(AttestError::Unsigned)
        );
        // Right key, wrong kind: a decision cannot pass for a grant.
        let decision = sign(&key, "gatehouse.dev/approval-decision/v1", &grant());
        assert!(matches!(
            trusted.open::<Grant>(KIND, &decision, now),
            Err(AttestError::WrongKind { .. })
        ));
        // A key past its window.
        let retired = ring(&[(&key, Some(now - Duration::from_secs(1)))]);
        assert!(matches!(
            retired.open::<Grant>(KIND, &note, now),
            Err(AttestError::RetiredKey { .. })
        ));
        let rotating = ring(&[(&key, Some(now + Duration::from_secs(60)))]);
        let opened = rotating.open::<Grant>(KIND, &note, now).unwrap();
        assert!(rotating.trusts(&opened.key, now));
        assert!(!rotating.trusts(&opened.key, now + Duration::from_secs(61)));
        assert!(!ring(&[(&signer(2), None)]).trusts(&opened.key, now));
        // Nothing trusted at all.
        assert!(matches!(
            Keyring::default().open::<Grant>(KIND, &note, now),
            Err(AttestError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_signing_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approval.key");
        let key = signer(3);
        std::fs::write(&path, format!("{}\n", key.to_skey())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_signing_key(&path).unwrap_err();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains(&key.to_skey()[20..]));
        for refused in [0o604, 0o660, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(refused)).unwrap();
            assert!(load_signing_key(&path).is_err(), "{refused:o}");
        }
        for accepted in [0o600, 0o400, 0o440] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(accepted)).unwrap();
            assert_eq!(load_signing_key(&path).unwrap().key_id(), key.key_id());
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "PRIVATE+KEY+x+00000000+AQ==\n").unwrap();
        let err = load_signing_key(&path).unwrap_err();
        assert!(!err.contains("AQ=="), "{err}");
    }

    #[test]
    fn a_keyring_file_names_its_mistakes_by_line() {
        let key = signer(1).verifier().to_vkey();
        let text = format!("# approval keys\n{key}\n\n{key} until=2027-01-01T00:00:00Z # old\n");
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.labels().len(), 2);
        assert!(ring.keys[0].until.is_none() && ring.keys[1].until.is_some());
        let err = Keyring::parse(&format!("{key}\n{key} until=tomorrow\n")).unwrap_err();
        assert!(err.starts_with("line 2: until=tomorrow"), "{err}");
        let err = Keyring::parse("not-a-key\n").unwrap_err();
        assert!(err.starts_with("line 1: "), "{err}");
        let err = Keyring::parse(&format!("{key} later\n")).unwrap_err();
        assert!(err.contains("until="), "{err}");
    }
}
