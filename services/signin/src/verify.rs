//! The code exchange and the ID token checks (OIDC Core §3.1.3.5–3.1.3.7).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
#[cfg(test)]
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::routes::Failure;
use crate::{LEEWAY, SignIn, http_client, now};

/// An ID token older than this is not the answer to a sign-in that just happened.
const MAX_TOKEN_AGE: i64 = 600;

/// What the sign-in that is being completed asked for.
pub(crate) struct Expected<'a> {
    pub nonce: &'a str,
    pub max_age: Option<u64>,
    /// With `prompt=login`: the user authenticated after this (unix seconds).
    pub authenticated_after: Option<i64>,
    pub acr: &'a [String],
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct IdClaims {
    pub sub: String,
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default)]
    pub azp: Option<String>,
    pub iat: i64,
    #[serde(default)]
    pub auth_time: Option<i64>,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default)]
    pub acr: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl IdClaims {
    /// The groups claim: a list of strings or one string; anything else is no groups.
    pub(crate) fn groups(&self, claim: &str) -> Vec<String> {
        match self.rest.get(claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }
}

/// The algorithm a key is for: the JWK's own `alg` when it names one that fits the key,
/// else the one its type implies. Symmetric keys are never accepted.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let Some(named) = jwk.common.key_algorithm else {
        return Some(implied);
    };
    let named = Algorithm::try_from(named).ok()?;
    let fits = match implied {
        Algorithm::RS256 => matches!(
            named,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        other => named == other,
    };
    fits.then_some(named)
}

fn find_key<'a>(set: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => set.find(kid),
        // Without a kid, only an issuer with a single signing key is unambiguous.
        None => {
            let mut signing = set.keys.iter().filter(|k| key_algorithm(k).is_some());
            let key = signing.next()?;
            signing.next().is_none().then_some(key)
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Shortens and strips what another party wrote before it is shown or logged.
pub(crate) fn tidy(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

impl SignIn {
    /// The token request: the code with its PKCE verifier, and the client's credentials.
    fn token_request(&self, code: &str, verifier: &str) -> Result<Request<Full<Bytes>>, Failure> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &self.redirect_url)
            .append_pair("code_verifier", verifier);
        let mut request = Request::post(&self.token_endpoint)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(header::ACCEPT, HeaderValue::from_static("application/json"));
        match &self.client_secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: each part form-urlencoded before Basic.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let basic = STANDARD.encode(format!("{}:{}", enc(&self.client_id), enc(secret)));
                let mut value = HeaderValue::from_str(&format!("Basic {basic}"))
                    .map_err(|_| Failure::internal("the client credentials cannot be sent"))?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            None => {
                form.append_pair("client_id", &self.client_id);
            }
        }
        request
            .body(Full::new(Bytes::from(form.finish())))
            .map_err(|_| Failure::internal("the token request cannot be built"))
    }

    /// Exchanges the code (with the PKCE verifier) for an ID token.
    pub(crate) async fn redeem(&self, code: &str, verifier: &str) -> Result<String, Failure> {
        let request = self.token_request(code, verifier)?;
        let answer = http_client::send(&self.http, request).await.map_err(|e| {
            Failure::upstream(format!(
                "The identity provider's token endpoint did not answer: {e}."
            ))
        })?;
        if answer.status != StatusCode::OK {
            let detail = serde_json::from_slice::<TokenError>(&answer.body)
                .map(|e| match e.error_description {
                    Some(d) => format!("{} ({})", tidy(&e.error), tidy(&d)),
                    None => tidy(&e.error),
                })
                .unwrap_or_else(|_| format!("HTTP {}", answer.status.as_u16()));
            return Err(Failure::upstream(format!(
                "The identity provider refused to complete the sign-in: {detail}."
            )));
        }
        let tokens: TokenAnswer = serde_json::from_slice(&answer.body).map_err(|_| {
            Failure::upstream("The identity provider's token answer is not valid JSON.".into())
        })?;
        if !tokens
            .token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        {
            return Err(Failure::upstream(
                "The identity provider's token answer is not a Bearer token.".into(),
            ));
        }
        tokens.id_token.ok_or_else(|| {
            Failure::upstream("The identity provider's answer holds no ID token.".into())
        })
    }

    /// Verifies the ID token: signature with the issuer's key (algorithm from the key),
    /// iss, aud, azp, exp, iat, nonce, and auth_time / acr against what was asked.
    pub(crate) async fn verify_id_token(
        &self,
        token: &str,
        expected: &Expected<'_>,
    ) -> Result<IdClaims, Failure> {
        let invalid = |why: &str| Failure::token(format!("The ID token {why}."));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("is malformed"))?;
        let kid = header.kid.as_deref();
        let set = self.key_set().await.map_err(|e| {
            Failure::upstream(format!(
                "The identity provider's keys could not be loaded: {e}."
            ))
        })?;
        let jwk = match find_key(&set, kid) {
            Some(jwk) => jwk.clone(),
            None => {
                // Another request may have reloaded them already; look again either way.
                self.refresh_for_unknown_kid().await.map_err(|e| {
                    Failure::upstream(format!(
                        "The identity provider's keys could not be loaded: {e}."
                    ))
                })?;
                let set = self.key_set().await.map_err(|e| {
                    Failure::upstream(format!(
                        "The identity provider's keys could not be loaded: {e}."
                    ))
                })?;
                match find_key(&set, kid) {
                    Some(jwk) => jwk.clone(),
                    None => {
                        return Err(invalid(
                            "is signed with a key the identity provider does not publish",
                        ));
                    }
                }
            }
        };
        let alg = key_algorithm(&jwk)
            .ok_or_else(|| invalid("names a key that cannot verify signatures"))?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| invalid("names an unusable key"))?;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY as u64;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        invalid("signature does not verify")
                    }
                    ErrorKind::ExpiredSignature => invalid("has expired"),
                    ErrorKind::ImmatureSignature => invalid("is not valid yet"),
                    ErrorKind::InvalidIssuer => invalid("is from another issuer"),
                    ErrorKind::InvalidAudience => invalid("is for another client"),
                    ErrorKind::MissingRequiredClaim(_) => invalid("lacks a required claim"),
                    ErrorKind::Json(_) => {
                        invalid("lacks a required claim, or one has the wrong type")
                    }
                    _ => invalid("is not valid"),
                }
            })?
            .claims;

        let now = now();
        if claims.sub.is_empty() {
            return Err(invalid("has no subject"));
        }
        if (claims.aud.len() > 1 || claims.azp.is_some())
            && claims.azp.as_deref() != Some(self.client_id.as_str())
        {
            return Err(invalid("is authorized for another party (azp)"));
        }
        if claims.iat > now + LEEWAY || claims.iat < now - MAX_TOKEN_AGE {
            return Err(invalid("was not issued just now (iat)"));
        }
        if claims.nonce.as_deref() != Some(expected.nonce) {
            return Err(invalid("belongs to another sign-in (nonce)"));
        }
        if expected.max_age.is_some() || expected.authenticated_after.is_some() {
            let Some(auth_time) = claims.auth_time else {
                return Err(invalid("does not say when you authenticated (auth_time)"));
            };
            if let Some(max_age) = expected.max_age
                && now - auth_time > i64::try_from(max_age).unwrap_or(i64::MAX) + LEEWAY
            {
                return Err(Failure::token(
                    "The identity provider did not ask for your password again, though this needed a recent sign-in.".into(),
                ));
            }
            if let Some(after) = expected.authenticated_after
                && auth_time < after - LEEWAY
            {
                return Err(Failure::token(
                    "The identity provider reused an earlier sign-in, though a new one was asked for.".into(),
                ));
            }
        }
        if !expected.acr.is_empty()
            && !claims
                .acr
                .as_ref()
                .is_some_and(|a| expected.acr.contains(a))
        {
            return Err(Failure::token(format!(
                "The identity provider did not authenticate you at the level this needs ({}).",
                tidy(&expected.acr.join(" or "))
            )));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_algorithm_comes_from_the_key() {
        let ec = serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"});
        assert_eq!(key_algorithm(&jwk(ec.clone())), Some(Algorithm::ES256));
        let mut named = ec.clone();
        named["alg"] = "ES256".into();
        assert_eq!(key_algorithm(&jwk(named)), Some(Algorithm::ES256));
        // A key that names an algorithm of another family is unusable.
        let mut wrong = ec.clone();
        wrong["alg"] = "HS256".into();
        assert_eq!(key_algorithm(&jwk(wrong)), None);
        let mut enc = ec;
        enc["use"] = "enc".into();
        assert_eq!(key_algorithm(&jwk(enc)), None);
        // Symmetric keys never verify ID tokens.
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(key_algorithm(&jwk(oct)), None);
        let rsa = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "PS256"});
        assert_eq!(key_algorithm(&jwk(rsa)), Some(Algorithm::PS256));
    }

    #[test]
    fn groups_are_read_from_the_configured_claim() {
        let claims: IdClaims = serde_json::from_value(serde_json::json!({
            "sub": "a", "aud": "c", "iat": 1, "roles": ["x", "y"], "team": "z", "n": 3,
        }))
        .unwrap();
        assert_eq!(claims.aud, ["c"]);
        assert_eq!(claims.groups("roles"), ["x", "y"]);
        assert_eq!(claims.groups("team"), ["z"]);
        assert!(claims.groups("n").is_empty());
        assert!(claims.groups("groups").is_empty());
    }

    mod against_the_demo_issuer {
        use super::super::*;
        use crate::SignInConfig;
        use gatehouse_sandbox::issuer::{Issuer, IssuerKeys};
        use hmac::{Hmac, Mac};
        use serde_json::json;

        async fn setup() -> (Issuer, SignIn) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let issuer = Issuer::start(IssuerKeys::generate().unwrap(), listener)
                .await
                .unwrap();
            let config = SignInConfig::new(
                issuer.url(),
                "console",
                "https://rp.example/signin/callback",
            );
            let signin = SignIn::new(config).await.unwrap();
            (issuer, signin)
        }

        fn with(base: &Value, key: &str, value: impl Into<Value>) -> Value {
            let mut v = base.clone();
            v[key] = value.into();
            v
        }

        fn without(base: &Value, key: &str) -> Value {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(key);
            v
        }

        const PLAIN: Expected<'static> = Expected {
            nonce: "n1",
            max_age: None,
            authenticated_after: None,
            acr: &[],
        };

        async fn refused(signin: &SignIn, token: &str, expected: &Expected<'_>, words: &str) {
            let failure = signin
                .verify_id_token(token, expected)
                .await
                .expect_err(words);
            assert!(
                failure.message.contains(words),
                "{words:?} not in {:?}",
                failure.message
            );
        }

        #[tokio::test]
        async fn id_tokens_are_checked_claim_by_claim() {
            let (issuer, signin) = setup().await;
            let now = now();
            let base = json!({
                "iss": issuer.url(), "sub": "alice", "aud": "console", "iat": now,
                "exp": now + 300, "nonce": "n1", "auth_time": now - 30, "acr": "urn:pwd",
            });
            let sign = |claims: &Value| issuer.keys().sign(claims).unwrap();
            let claims = signin.verify_id_token(&sign(&base), &PLAIN).await.unwrap();
            assert_eq!(claims.sub, "alice");
            let several = with(&base, "aud", json!(["console", "other"]));
            signin
                .verify_id_token(&sign(&with(&several, "azp", "console")), &PLAIN)
                .await
                .expect("several audiences with azp = us");

            let cases = [
                // An ID token from another sign-in (replayed) carries another nonce.
                (with(&base, "nonce", "n0"), "(nonce)"),
                (without(&base, "nonce"), "(nonce)"),
                (with(&base, "aud", "other"), "for another client"),
                (several.clone(), "(azp)"),
                (with(&several, "azp", "other"), "(azp)"),
                (with(&base, "azp", "other"), "(azp)"),
                (with(&base, "iss", "http://127.0.0.1:1"), "another issuer"),
                (with(&base, "exp", now - 120), "expired"),
                (with(&base, "iat", now - 3600), "(iat)"),
                (with(&base, "iat", now + 3600), "(iat)"),
                (without(&base, "sub"), "required claim"),
                (with(&base, "sub", ""), "no subject"),
            ];
            for (claims, words) in cases {
                refused(&signin, &sign(&claims), &PLAIN, words).await;
            }

            // max_age and prompt=login: the password must have been entered recently.
            let old = with(&base, "auth_time", now - 1000);
            let recent = Expected {
                max_age: Some(300),
                ..PLAIN
            };
            refused(&signin, &sign(&old), &recent, "recent sign-in").await;
            refused(
                &signin,
                &sign(&without(&base, "auth_time")),
                &recent,
                "(auth_time)",
            )
            .await;
            signin.verify_id_token(&sign(&base), &recent).await.unwrap();
            let fresh = Expected {
                authenticated_after: Some(now - 10),
                ..PLAIN
            };
            refused(&signin, &sign(&old), &fresh, "reused an earlier sign-in").await;
            signin.verify_id_token(&sign(&base), &fresh).await.unwrap();

            // acr: one of those asked for.
            let acr = ["urn:mfa".to_owned()];
            let mfa = Expected { acr: &acr, ..PLAIN };
            refused(&signin, &sign(&base), &mfa, "at the level this needs").await;
            signin
                .verify_id_token(&sign(&with(&base, "acr", "urn:mfa")), &mfa)
                .await
                .unwrap();
        }

        #[tokio::test]
        async fn only_the_issuers_keys_and_their_algorithm_verify() {
            let (issuer, signin) = setup().await;
            let now = now();
            let claims = json!({
                "iss": issuer.url(), "sub": "alice", "aud": "console", "iat": now,
                "exp": now + 300, "nonce": "n1",
            });
            let genuine = issuer.keys().sign(&claims).unwrap();
            let (genuine_header, _) = genuine.split_once('.').unwrap();

            // Another key's signature under the issuer's kid.
            let forged = IssuerKeys::generate().unwrap().sign(&claims).unwrap();
            let (_, rest) = forged.split_once('.').unwrap();
            refused(
                &signin,
                &format!("{genuine_header}.{rest}"),
                &PLAIN,
                "signature does not verify",
            )
            .await;

            // HS256 "signed" with anything: the key is EC, so its algorithm is ES256.
            let header = URL_SAFE_NO_PAD.encode(
                json!({"alg": "HS256", "typ": "JWT", "kid": issuer.keys().kid()}).to_string(),
            );
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{header}.{payload}");
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(issuer.keys().kid().as_bytes()).unwrap();
            mac.update(input.as_bytes());
            let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            refused(
                &signin,
                &format!("{input}.{tag}"),
                &PLAIN,
                "signature does not verify",
            )
            .await;

            // alg none.
            let none = URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string());
            refused(&signin, &format!("{none}.{payload}."), &PLAIN, "malformed").await;

            // A rotated key is fetched on first sight of its kid ...
            issuer.rotate(false).unwrap();
            let rotated = issuer.keys().sign(&claims).unwrap();
            signin
                .verify_id_token(&rotated, &PLAIN)
                .await
                .expect("new key loaded");
            // ... and the withdrawn one no longer verifies.
            refused(&signin, &genuine, &PLAIN, "does not publish").await;
            // Unknown kids reload the keys at most once per gap.
            issuer.rotate(false).unwrap();
            let too_soon = issuer.keys().sign(&claims).unwrap();
            refused(&signin, &too_soon, &PLAIN, "does not publish").await;
        }
    }
}
