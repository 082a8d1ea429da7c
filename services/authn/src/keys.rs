//! An issuer's signing keys, prepared once per JWKS load.
//!
//! - [`PreparedKey`]: one JWK turned into a `DecodingKey`, with what it may verify and a
//!   fingerprint that changes whenever the key (or its `kid`) does.
//! - [`KeySet`]: the usable keys of one JWKS; finds the key for a token's `kid` and `alg`.

use std::collections::HashSet;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// BLAKE3 of a key's JWK: a key that changes in any way is a different key.
pub(crate) type KeyFingerprint = [u8; 32];

/// One verification key, ready to use.
pub(crate) struct PreparedKey {
    pub kid: Option<String>,
    pub decoding: DecodingKey,
    pub fingerprint: KeyFingerprint,
    /// The algorithms this key can verify (its family and curve, narrowed by a declared `alg`).
    algorithms: Vec<Algorithm>,
}

impl PreparedKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// The usable keys of one JWKS.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Arc<PreparedKey>>,
}

impl KeySet {
    /// Prepares every usable key; returns the set and the `kid`s of keys left out (symmetric,
    /// encryption-only, unknown curves, broken parameters).
    pub fn prepare(jwks: &JwkSet) -> (Self, Vec<String>) {
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            match prepare_key(jwk) {
                Some(key) => keys.push(Arc::new(key)),
                None => skipped.push(jwk.common.key_id.clone().unwrap_or_else(|| "-".into())),
            }
        }
        (Self { keys }, skipped)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token: the first key with its `kid` that can verify `alg`; without a
    /// `kid`, only when exactly one key could have made the signature.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<PreparedKey>> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.fits(alg))
                .cloned(),
            None => {
                let mut usable = self.keys.iter().filter(|k| k.fits(alg));
                match (usable.next(), usable.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Whether a key with this name and fingerprint is in the set.
    pub fn contains(&self, kid: Option<&str>, fingerprint: &KeyFingerprint) -> bool {
        self.keys
            .iter()
            .any(|k| &k.fingerprint == fingerprint && k.kid.as_deref() == kid)
    }

    pub fn fingerprints(&self) -> HashSet<KeyFingerprint> {
        self.keys.iter().map(|k| k.fingerprint).collect()
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }
}

fn prepare_key(jwk: &Jwk) -> Option<PreparedKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        // Symmetric keys are never used: they would let anyone holding the JWKS mint tokens.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(declared) => {
            let declared = Algorithm::try_from(declared).ok()?;
            if !family.contains(&declared) {
                return None;
            }
            vec![declared]
        }
        None => family,
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    let fingerprint = *blake3::hash(&serde_json::to_vec(jwk).ok()?).as_bytes();
    Some(PreparedKey {
        kid: jwk.common.key_id.clone(),
        decoding,
        fingerprint,
        algorithms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(value: serde_json::Value) -> (KeySet, Vec<String>) {
        KeySet::prepare(&serde_json::from_value(value).unwrap())
    }

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn keys_are_matched_by_kid_family_curve_and_declared_alg() {
        let (keys, skipped) = set(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "ec"},
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "declared", "alg": "ES384"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "enc", "use": "enc"},
        ]}));
        assert_eq!(keys.len(), 1);
        assert_eq!(skipped, vec!["declared", "hmac", "enc"]);
        assert!(keys.find(Some("ec"), Algorithm::ES256).is_some());
        assert!(keys.find(Some("ec"), Algorithm::ES384).is_none());
        assert!(keys.find(Some("ec"), Algorithm::RS256).is_none());
        assert!(keys.find(Some("other"), Algorithm::ES256).is_none());
        // Without a kid, the only key that fits.
        assert!(keys.find(None, Algorithm::ES256).is_some());
    }

    #[test]
    fn a_token_without_kid_is_refused_when_two_keys_could_fit() {
        let (keys, _) = set(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "a"},
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "b"},
        ]}));
        assert!(keys.find(None, Algorithm::ES256).is_none());
        assert!(keys.find(Some("b"), Algorithm::ES256).is_some());
    }

    #[test]
    fn a_renamed_key_is_a_different_key() {
        let (a, _) = set(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "a"},
        ]}));
        let (b, _) = set(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "b"},
        ]}));
        assert!(a.fingerprints().is_disjoint(&b.fingerprints()));
        let fp = *a.fingerprints().iter().next().unwrap();
        assert!(a.contains(Some("a"), &fp));
        assert!(!a.contains(Some("b"), &fp));
    }
}
