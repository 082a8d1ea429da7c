//! Authentication: who is calling, for the proxy, the approval service and the evidence service.
//!
//! A request authenticates with `Authorization: Bearer <JWT>` from a trusted issuer or, when
//! `tls.client_ca_file` is set, with a client certificate verified during the TLS handshake.
//! The bearer token wins: with an `Authorization` header the certificate is not looked at, and
//! a bad token is refused rather than falling back on the certificate (one credential per
//! request, the one the caller chose to send). Only a request with no `Authorization` header
//! at all is authenticated by its certificate.
//!
//! A token is accepted only if its `alg` is on the issuer's allow-list (never `none`, never
//! HMAC), its signature verifies with the key its `kid` names, its `iss` is the issuer
//! exactly, its `aud` names an accepted audience, and `exp` / `nbf` hold within the leeway.
//!
//! Module map:
//! - [`issuer`]: one trusted issuer, its keys, scheduled and on-demand key refresh.
//! - [`keys`]: JWKS → prepared `DecodingKey`s (built once per load, not per request).
//! - [`cache`]: verified tokens by BLAKE3 of the token, until they would expire anyway.
//! - [`claims`]: claims → principal, groups, attributes (presets, templates).
//! - [`client_cert`]: mTLS client certificate → principal and groups.
//!
//! - [`config`]: trusted issuers, claim mappings and the token cache, as configured.
//!
//! Errors never carry the token or any part of it.
#![forbid(unsafe_code)]

mod cache;
mod claims;
mod client_cert;
pub mod config;
mod issuer;
mod keys;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use cache::CacheStats;
pub use claims::{ClaimRules, Template};

use crate::config::IssuerConfig;
use cache::{Entry, VerifiedCache};
use gatehouse_https::client as http_client;
use gatehouse_https::config::ClientCertMapping;
use issuer::{KeySource, TrustedIssuer};

/// The least time between two key reloads of one issuer triggered by unknown `kid`s, so a
/// stream of made-up `kid`s cannot make the proxy hammer an issuer.
pub const UNKNOWN_KEY_REFRESH_GAP: Duration = Duration::from_secs(10);

/// Why a request is not authenticated. Messages are safe to show the caller.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthnError {
    #[error("no bearer token was presented")]
    NoToken,
    #[error("the Authorization header is not a single `Bearer` token")]
    NotBearer,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted")]
    DisallowedAlgorithm(String),
    #[error("the token's issuer {0:?} is not trusted")]
    UnknownIssuer(String),
    #[error("the issuer's signing keys are not available")]
    KeysUnavailable,
    #[error("no key of the issuer matches the token's key id")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("the token's claim {0:?} does not name a principal")]
    NoPrincipal(String),
    #[error("the client certificate cannot be used: {0}")]
    BadCertificate(String),
    #[error("the token is invalid")]
    Invalid,
}

/// A caller that authenticated: from a token, or from a client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The token's `iss`, or `x509:<issuer DN>` for a client certificate.
    pub issuer: String,
    /// The token's `sub`, or the certificate's subject DN.
    pub subject: String,
    pub principal: String,
    pub groups: Vec<String>,
    /// Extra claims the issuer's mapping singled out (GitHub `ref`, `environment`,
    /// `workflow`; Kubernetes `namespace`, `pod`; a certificate's serial).
    pub attributes: BTreeMap<String, String>,
}

/// Parses an algorithm allow-list, refusing what must never be accepted.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err("algorithms: at least one algorithm is required".into());
    }
    names
        .iter()
        .map(|name| {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("algorithm {name:?} is not known"))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "algorithm {name} is refused: HMAC tokens would be verified with a public key"
                ));
            }
            Ok(alg)
        })
        .collect()
}

/// Settings of an [`Authenticator`] beyond its issuers.
#[derive(Clone, Debug)]
pub struct AuthnOptions {
    /// Most verified tokens cached; 0 turns the cache off.
    pub cache_capacity: usize,
    /// How client certificates map to identities; `None` ignores client certificates.
    pub client_certs: Option<ClientCertMapping>,
    /// Stops the background key refresh (it also stops when the authenticator is dropped).
    pub shutdown: Option<CancellationToken>,
    /// See [`UNKNOWN_KEY_REFRESH_GAP`]; shorter only in tests.
    pub unknown_key_refresh_gap: Duration,
}

impl Default for AuthnOptions {
    fn default() -> Self {
        Self {
            cache_capacity: crate::config::TokenCacheConfig::default().max_entries,
            client_certs: None,
            shutdown: None,
            unknown_key_refresh_gap: UNKNOWN_KEY_REFRESH_GAP,
        }
    }
}

/// Verifies callers against the configured issuers (and client CA).
pub struct Authenticator {
    issuers: Vec<Arc<TrustedIssuer>>,
    /// Union of every issuer's allow-list, for the early refusal of other algorithms.
    algorithms: HashSet<Algorithm>,
    cache: Option<Arc<VerifiedCache>>,
    client_certs: Option<ClientCertMapping>,
    /// Cancels the key-refresh tasks when the authenticator goes.
    _stop: DropGuard,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
            )
            .field("client_certs", &self.client_certs.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the authenticator, loads every issuer's keys and starts their scheduled refresh.
    /// An issuer whose keys cannot be loaded now is logged and retried (on schedule, with
    /// backoff, and on demand); its tokens are refused until then.
    pub async fn new(configs: &[IssuerConfig], options: AuthnOptions) -> Result<Self, String> {
        let stop = options
            .shutdown
            .as_ref()
            .map(CancellationToken::child_token)
            .unwrap_or_default();
        let cache = (options.cache_capacity > 0)
            .then(|| Arc::new(VerifiedCache::new(options.cache_capacity)));
        let mut issuers = Vec::new();
        let mut all = HashSet::new();
        for (id, c) in configs.iter().enumerate() {
            if c.refresh_interval.is_zero() {
                return Err(format!(
                    "issuer {}: refresh_interval must not be zero",
                    c.issuer
                ));
            }
            let algorithms = parse_algorithms(&c.algorithms)?;
            all.extend(algorithms.iter().copied());
            let rules = ClaimRules::from_config(&c.claims)
                .map_err(|e| format!("issuer {}: claims.{e}", c.issuer))?;
            let tls = http_client::client_tls(c.ca_file.as_deref(), true)
                .map_err(|e| format!("issuer {}: {e}", c.issuer))?;
            let validations = algorithms
                .iter()
                .map(|&alg| {
                    let mut validation = Validation::new(alg);
                    validation.set_issuer(&[c.issuer.as_str()]);
                    validation.set_audience(&c.audiences);
                    validation.leeway = c.leeway.as_secs();
                    validation.validate_nbf = true;
                    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                    (alg, validation)
                })
                .collect();
            let issuer = Arc::new(TrustedIssuer {
                id,
                issuer: c.issuer.clone(),
                source: match &c.jwks_file {
                    Some(path) => KeySource::File(path.clone()),
                    None => KeySource::Discovery,
                },
                validations,
                leeway: c.leeway.as_secs(),
                rules,
                http: http_client::https_client(tls, Duration::from_secs(5)),
                keys: RwLock::new(None),
                last_refresh: tokio::sync::Mutex::new(None),
                unknown_key_gap: options.unknown_key_refresh_gap,
                cache: cache.clone(),
            });
            let loaded = match issuer.refresh(true).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(issuer = %c.issuer, error = %e, "issuer keys not loaded yet; will retry");
                    false
                }
            };
            issuer::spawn_refresher(
                Arc::downgrade(&issuer),
                c.refresh_interval,
                loaded,
                stop.clone(),
            );
            issuers.push(issuer);
        }
        Ok(Self {
            issuers,
            algorithms: all,
            cache,
            client_certs: options.client_certs,
            _stop: stop.drop_guard(),
        })
    }

    /// Authenticates a request from its headers or, with no `Authorization` header, from the
    /// client certificate of its connection (already verified by the TLS layer).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client_cert: Option<&CertificateDer<'_>>,
    ) -> Result<Verified, AuthnError> {
        if headers.get(http::header::AUTHORIZATION).is_none()
            && let (Some(cert), Some(mapping)) = (client_cert, &self.client_certs)
        {
            return client_cert::identify(mapping, cert, unix_now() as i64);
        }
        let token = bearer_token(headers)?;
        self.verify_token(token).await
    }

    /// Hits, misses and size of the verified-token cache (all zero when it is off).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    async fn verify_token(&self, token: &str) -> Result<Verified, AuthnError> {
        let hash = cache::token_hash(token);
        if let Some(cache) = &self.cache
            && let Some(verified) = cache.get(&hash, unix_now())
        {
            return Ok(verified);
        }
        let (header, claims) = peek(token)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthnError::Malformed)?;
        let alg: Algorithm = alg_name
            .parse()
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| AuthnError::DisallowedAlgorithm(printable(alg_name)))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthnError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| AuthnError::UnknownIssuer(printable(iss)))?;
        let validation = issuer
            .validation(alg)
            .ok_or_else(|| AuthnError::DisallowedAlgorithm(printable(alg_name)))?;
        let kid = header.get("kid").and_then(Value::as_str);
        let key = match issuer.current_key(kid, alg) {
            Some(key) => key,
            None => {
                if let Err(e) = issuer.refresh(false).await {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "refreshing issuer keys failed");
                }
                let loaded = issuer.current_keys().is_some();
                issuer.current_key(kid, alg).ok_or(if loaded {
                    AuthnError::UnknownKey
                } else {
                    AuthnError::KeysUnavailable
                })?
            }
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation)
            .map_err(|e| map_error(e.kind()))?;
        let verified = issuer.rules.apply(&issuer.issuer, &data.claims)?;

        // Only tokens that name their key are cached: which key a kid-less token needs can
        // change when a key is added, and the cache must never answer differently from a check.
        if let (Some(cache), Some(kid), Some(exp)) = (
            &self.cache,
            kid,
            data.claims.get("exp").and_then(numeric_date),
        ) {
            let entry = Entry {
                verified: verified.clone(),
                issuer: issuer.id,
                kid: kid.to_owned(),
                key: key.fingerprint,
                exp,
                nbf: data.claims.get("nbf").and_then(numeric_date),
                leeway: issuer.leeway,
            };
            cache.insert(hash, entry, unix_now(), || {
                issuer.has_key(kid, &key.fingerprint)
            });
        }
        Ok(verified)
    }
}

/// Seconds since the Unix epoch, from the clock `jsonwebtoken` reads.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A NumericDate as `jsonwebtoken` reads it: an unsigned integer, or a float rounded.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthnError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthnError::NoToken)?;
    if values.next().is_some() {
        return Err(AuthnError::NotBearer);
    }
    let value = value.to_str().map_err(|_| AuthnError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthnError::NoToken);
    }
    Ok(token)
}

/// A JWT's header or claims, decoded but not verified.
type Unverified = Map<String, Value>;

/// Decodes header and claims without verifying anything, to choose issuer, key and algorithm.
fn peek(token: &str) -> Result<(Unverified, Unverified), AuthnError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    let decode = |part: &str| -> Result<Unverified, AuthnError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthnError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| AuthnError::Malformed)
    };
    Ok((decode(header)?, decode(claims)?))
}

fn map_error(kind: &ErrorKind) -> AuthnError {
    match kind {
        ErrorKind::InvalidSignature => AuthnError::BadSignature,
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthnError::UnknownIssuer(String::new()),
        ErrorKind::MissingRequiredClaim(c) => AuthnError::MissingClaim(printable(c)),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthnError::DisallowedAlgorithm(String::new())
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthnError::Malformed,
        _ => AuthnError::Invalid,
    }
}

/// Caller-controlled text made safe for messages and logs: printable and at most 100 chars.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_extracted_strictly() {
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthnError::NoToken));
        assert_eq!(bearer_token(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Ok("abc"));
        assert_eq!(
            bearer_token(&headers("Basic dXNlcjpwYXNz")),
            Err(AuthnError::NotBearer)
        );
        assert_eq!(bearer_token(&headers("Bearer ")), Err(AuthnError::NoToken));
        let mut two = headers("Bearer a");
        two.append(http::header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_eq!(bearer_token(&two), Err(AuthnError::NotBearer));
    }

    #[test]
    fn hmac_and_none_are_never_allowed() {
        assert!(
            parse_algorithms(&["HS256".into()])
                .unwrap_err()
                .contains("HMAC")
        );
        assert!(parse_algorithms(&["none".into()]).is_err());
        assert!(parse_algorithms(&[]).is_err());
        assert_eq!(
            parse_algorithms(&["ES256".into(), "EdDSA".into()]).unwrap(),
            vec![Algorithm::ES256, Algorithm::EdDSA]
        );
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_key_work() {
        assert_eq!(peek("abc").unwrap_err(), AuthnError::Malformed);
        assert_eq!(peek("a.b.c.d").unwrap_err(), AuthnError::Malformed);
        assert_eq!(peek("!!.??.x").unwrap_err(), AuthnError::Malformed);
    }

    #[test]
    fn messages_never_echo_control_characters() {
        assert_eq!(printable("a\nb\u{7}c"), "abc");
        assert_eq!(printable(&"x".repeat(500)).len(), 100);
    }
}
