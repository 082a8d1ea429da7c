//! Bearer tokens through the proxy's real `Authenticator`: the `Authorization` header, the
//! unverified header and claims read to pick issuer, algorithm and key, the signature check,
//! then the claim mappings of three issuers (presets `generic`, `kubernetes` and
//! `github-actions`), all sharing the test-only RSA key of `services/proxy/tests/fixtures/`.
//!
//! Input: the token (the text after `Bearer `).
//!
//! Invariants:
//! - it never panics, whatever the header and claims hold;
//! - nothing is accepted without a genuine signature: an accepted token's third segment is
//!   exactly the RS256 signature of its first two made with the fixture key (RS256 is
//!   deterministic), so no other spelling of a signature, and no edit of the signed text, is
//!   accepted;
//! - an accepted token maps to a principal, and never to one of Kubernetes' own `system:` groups;
//! - the verified-token cache never answers differently from a check: an authenticator with a
//!   cache and one without agree on every token, the second time as on the first.
#![no_main]

use std::sync::OnceLock;

use gatehouse_proxy::authn::{Authenticator, AuthnOptions};
use gatehouse_proxy::config::IssuerConfig;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const RSA_KEY_PEM: &str = include_str!("../../../services/proxy/tests/fixtures/rsa-test-key.pem");
const RSA_JWK: &str = include_str!("../../../services/proxy/tests/fixtures/rsa-test-jwk.json");

/// The issuers seeds are minted for (`tests/fuzz/seeds/make-seeds`).
const ISSUERS: &str = r#"
- issuer: https://issuer.test
  audiences: [gatehouse]
  algorithms: [RS256, ES256]
- issuer: https://kubernetes.default.svc.cluster.local
  audiences: [gatehouse]
  algorithms: [RS256]
  claims: { preset: kubernetes }
- issuer: https://token.actions.githubusercontent.com
  audiences: [gatehouse]
  algorithms: [RS256]
  claims:
    preset: github-actions
    principal: "{repository}@{environment|ref}"
"#;

struct State {
    runtime: tokio::runtime::Runtime,
    cached: Authenticator,
    uncached: Authenticator,
    key: EncodingKey,
    _dir: tempfile::TempDir,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let jwk: serde_json::Value = serde_json::from_str(RSA_JWK).unwrap();
        std::fs::write(&jwks, serde_json::json!({ "keys": [jwk] }).to_string()).unwrap();
        let mut configs: Vec<IssuerConfig> = yaml_serde::from_str(ISSUERS).unwrap();
        for c in &mut configs {
            c.jwks_file = Some(jwks.clone());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = |cache_capacity| AuthnOptions {
            cache_capacity,
            // An unknown kid reloads the file at most once an hour: no file I/O per input.
            unknown_key_refresh_gap: std::time::Duration::from_secs(3600),
            ..AuthnOptions::default()
        };
        let (cached, uncached) = runtime.block_on(async {
            (
                Authenticator::new(&configs, options(1024)).await.unwrap(),
                Authenticator::new(&configs, options(0)).await.unwrap(),
            )
        });
        State {
            runtime,
            cached,
            uncached,
            key: EncodingKey::from_rsa_pem(RSA_KEY_PEM.as_bytes()).unwrap(),
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let s = state();
    let (first, second, uncached) = s.runtime.block_on(async {
        (
            s.cached.authenticate(&headers, None).await,
            s.cached.authenticate(&headers, None).await,
            s.uncached.authenticate(&headers, None).await,
        )
    });
    assert_eq!(
        first, uncached,
        "the cache answered differently from a check"
    );
    assert_eq!(
        second, uncached,
        "the cache answered differently the second time"
    );

    let Ok(verified) = first else {
        return;
    };
    // What the proxy verified: the header's token, trimmed as `bearer_token` trims it.
    let token = token.trim();
    let (signed, signature) = token
        .rsplit_once('.')
        .expect("an accepted token has three parts");
    let genuine = jsonwebtoken::crypto::sign(signed.as_bytes(), &s.key, Algorithm::RS256).unwrap();
    assert_eq!(
        signature, genuine,
        "a token was accepted without the exact signature of its signed text"
    );
    assert!(!verified.principal.is_empty(), "{verified:?}");
    assert!(
        !verified.groups.iter().any(|g| g.starts_with("system:")),
        "{verified:?}"
    );
});
