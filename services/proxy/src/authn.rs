//! Authentication: `Authorization: Bearer <JWT>` → a verified token from a trusted issuer.
//!
//! For each configured issuer the keys come from its OIDC discovery document's `jwks_uri` (or a
//! static JWKS file). A token is accepted only if its `alg` is on the issuer's allow-list (never
//! `none`, never HMAC), its signature verifies with the key its `kid` names, its `iss` is the
//! issuer exactly, its `aud` names an accepted audience, and `exp` / `nbf` hold within the
//! leeway. An unknown `kid` triggers one key refresh (at most every [`REFRESH_INTERVAL`]), so
//! key rotation needs no restart.
//!
//! Errors never carry the token or any part of it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{ClaimMapping, IssuerConfig};
use crate::http_client::{self, HttpsClient};

/// The least time between two key refreshes of one issuer triggered by unknown `kid`s.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_LIMIT: usize = 1024 * 1024;

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
    #[error("the token is invalid")]
    Invalid,
}

/// A token that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub issuer: String,
    pub subject: String,
    pub principal: String,
    pub groups: Vec<String>,
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

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

enum KeySource {
    Discovery { issuer: String },
    File(PathBuf),
}

/// One trusted issuer and its current keys.
struct TrustedIssuer {
    issuer: String,
    source: KeySource,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    claims: ClaimMapping,
    http: HttpsClient<Full<Bytes>>,
    keys: RwLock<Option<JwkSet>>,
    /// When keys were last (re)loaded or a reload was attempted; rate-limits refreshes.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl TrustedIssuer {
    fn current_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
        let guard = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let set = guard.as_ref()?;
        match kid {
            Some(kid) => set.find(kid).cloned(),
            // No kid: acceptable only when exactly one key could have made this signature.
            None => {
                let mut usable = set.keys.iter().filter(|k| key_fits(k, alg));
                match (usable.next(), usable.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Reloads the keys unless that was tried within [`REFRESH_INTERVAL`] (or `force`).
    async fn refresh(&self, force: bool) -> Result<(), String> {
        let mut last = self.last_refresh.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let set = self.load().await?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(set);
        Ok(())
    }

    async fn load(&self) -> Result<JwkSet, String> {
        match &self.source {
            KeySource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a JWKS: {e}", path.display()))
            }
            KeySource::Discovery { issuer } => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: Discovery =
                    http_client::get_json(&self.http, &url, FETCH_LIMIT, FETCH_TIMEOUT)
                        .await
                        .map_err(|e| e.to_string())?;
                if doc.issuer != *issuer {
                    return Err(format!(
                        "discovery at {url} names issuer {:?}, not {issuer:?}",
                        doc.issuer
                    ));
                }
                if !doc.jwks_uri.starts_with("https://")
                    && !http_client::is_loopback_url(&doc.jwks_uri)
                {
                    return Err(format!("jwks_uri {} is not https", doc.jwks_uri));
                }
                http_client::get_json(&self.http, &doc.jwks_uri, FETCH_LIMIT, FETCH_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Verifies bearer tokens against the configured issuers.
pub struct Authenticator {
    issuers: Vec<Arc<TrustedIssuer>>,
    /// Union of every issuer's allow-list, for the early refusal of other algorithms.
    algorithms: HashSet<Algorithm>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.issuer).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    /// Builds the authenticator and loads every issuer's keys. An issuer whose keys cannot be
    /// loaded now is logged and retried on demand; its tokens are refused until then.
    pub async fn new(configs: &[IssuerConfig]) -> Result<Self, String> {
        let mut issuers = Vec::new();
        let mut all = HashSet::new();
        for c in configs {
            let algorithms = parse_algorithms(&c.algorithms)?;
            all.extend(algorithms.iter().copied());
            let tls = http_client::client_tls(c.ca_file.as_deref(), true)
                .map_err(|e| format!("issuer {}: {e}", c.issuer))?;
            let issuer = Arc::new(TrustedIssuer {
                issuer: c.issuer.clone(),
                source: match &c.jwks_file {
                    Some(path) => KeySource::File(path.clone()),
                    None => KeySource::Discovery {
                        issuer: c.issuer.clone(),
                    },
                },
                audiences: c.audiences.clone(),
                algorithms,
                leeway: c.leeway,
                claims: c.claims.clone(),
                http: http_client::https_client(tls, Duration::from_secs(5)),
                keys: RwLock::new(None),
                last_refresh: tokio::sync::Mutex::new(None),
            });
            if let Err(e) = issuer.refresh(true).await {
                tracing::warn!(issuer = %c.issuer, error = %e, "issuer keys not loaded yet; will retry on demand");
            }
            issuers.push(issuer);
        }
        Ok(Self {
            issuers,
            algorithms: all,
        })
    }

    /// Authenticates a request from its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Verified, AuthnError> {
        let token = bearer_token(headers)?;
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
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthnError::DisallowedAlgorithm(printable(alg_name)));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let jwk = match issuer.current_key(kid, alg) {
            Some(jwk) => jwk,
            None => {
                if let Err(e) = issuer.refresh(false).await {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "refreshing issuer keys failed");
                }
                let loaded = issuer
                    .keys
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some();
                issuer.current_key(kid, alg).ok_or(if loaded {
                    AuthnError::UnknownKey
                } else {
                    AuthnError::KeysUnavailable
                })?
            }
        };
        if !key_fits(&jwk, alg) {
            return Err(AuthnError::DisallowedAlgorithm(printable(alg_name)));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| AuthnError::UnknownKey)?;

        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_audience(&issuer.audiences);
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        map_claims(&issuer.issuer, &issuer.claims, &data.claims)
    }
}

/// Whether a JWK can verify signatures made with `alg`.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    if let Some(declared) = jwk.common.key_algorithm
        && Algorithm::try_from(declared).ok() != Some(alg)
    {
        return false;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        // Symmetric keys are never used: they would let anyone holding the JWKS mint tokens.
        _ => false,
    }
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

fn map_claims(
    issuer: &str,
    mapping: &ClaimMapping,
    claims: &Map<String, Value>,
) -> Result<Verified, AuthnError> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthnError::MissingClaim("sub".into()))?
        .to_owned();
    let principal = claims
        .get(&mapping.principal)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthnError::NoPrincipal(mapping.principal.clone()))?;
    let claimed: Vec<&str> = match claims.get(&mapping.groups) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(one)) => vec![one.as_str()],
        _ => Vec::new(),
    };
    let groups = claimed
        .into_iter()
        // Kubernetes' own groups (system:masters is cluster-admin) are never a token's to claim.
        .filter(|g| !g.starts_with("system:"))
        .map(|g| format!("{}{g}", mapping.groups_prefix))
        .collect();
    Ok(Verified {
        issuer: issuer.to_owned(),
        subject,
        principal: format!("{}{principal}", mapping.principal_prefix),
        groups,
    })
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
    fn claims_map_to_principal_and_groups() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app",
            "groups": ["ci", 7, "deployers"],
        }))
        .unwrap();
        let mapping = ClaimMapping {
            principal: "repository".into(),
            principal_prefix: "github:".into(),
            groups: "groups".into(),
            groups_prefix: String::new(),
        };
        let v = map_claims(
            "https://token.actions.githubusercontent.com",
            &mapping,
            &claims,
        )
        .unwrap();
        assert_eq!(v.principal, "github:acme/app");
        assert_eq!(v.subject, "repo:acme/app:ref:refs/heads/main");
        assert_eq!(v.groups, vec!["ci", "deployers"]);

        let missing = ClaimMapping {
            principal: "email".into(),
            ..ClaimMapping::default()
        };
        assert_eq!(
            map_claims("i", &missing, &claims),
            Err(AuthnError::NoPrincipal("email".into()))
        );
    }

    #[test]
    fn kubernetes_system_groups_are_never_taken_from_a_token() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "bot",
            "groups": ["system:masters", "system:nodes", "ops"],
        }))
        .unwrap();
        let v = map_claims("i", &ClaimMapping::default(), &claims).unwrap();
        assert_eq!(v.groups, vec!["ops"]);

        let prefixed = ClaimMapping {
            groups_prefix: "idp:".into(),
            ..ClaimMapping::default()
        };
        let v = map_claims("i", &prefixed, &claims).unwrap();
        assert_eq!(v.groups, vec!["idp:ops"]);
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
