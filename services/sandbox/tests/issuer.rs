//! The local OIDC issuer over real HTTP, and its tokens verified with jsonwebtoken.

use std::time::Duration;

use bytes::Bytes;
use gatehouse_sandbox::issuer::{Issuer, IssuerKeys};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

async fn fetch(url: &str) -> (u16, Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(url.parse().expect("uri")),
    )
    .await
    .expect("in time")
    .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).expect("json"))
}

async fn start() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Issuer::start(IssuerKeys::generate().expect("keys"), listener)
        .await
        .expect("issuer")
}

#[tokio::test]
async fn discovery_and_jwks_are_served_and_consistent() {
    let issuer = start().await;
    assert!(issuer.url().starts_with("http://127.0.0.1:"));
    let (status, discovery) = fetch(&format!(
        "{}/.well-known/openid-configuration",
        issuer.url()
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(discovery["issuer"], issuer.url());
    assert_eq!(discovery["jwks_uri"], format!("{}/jwks.json", issuer.url()));
    assert_eq!(
        discovery["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        discovery["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    let (status, jwks) = fetch(discovery["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(jwks, issuer.keys().jwks());
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str(),
            key["use"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"), Some("sig"))
    );
    assert_eq!(key["kid"], issuer.keys().kid());
    issuer.shutdown().await;
}

#[tokio::test]
async fn minted_tokens_verify_against_the_served_jwks() {
    let issuer = start().await;
    let token = issuer
        .mint(
            "alice@example.com",
            "gatehouse",
            &["devs", "oncall"],
            Duration::from_secs(300),
        )
        .expect("mint");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(issuer.keys().kid()));

    let (_, jwks) = fetch(&format!("{}/jwks.json", issuer.url())).await;
    let set: JwkSet = serde_json::from_value(jwks).expect("jwk set");
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["gatehouse"]);
    validation.set_issuer(&[issuer.url()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).expect("valid token");
    let claims = data.claims;
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["devs", "oncall"]));
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 300);
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    let mut wrong_aud = Validation::new(Algorithm::ES256);
    wrong_aud.set_audience(&["someone-else"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &key, &wrong_aud).is_err());
    // A token from another key does not verify.
    let other = IssuerKeys::generate().expect("keys");
    let forged = other.sign(&claims).expect("sign");
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
    // An expired token is refused.
    let expired = issuer
        .keys()
        .sign(&serde_json::json!({"iss": issuer.url(), "sub": "a", "aud": "gatehouse", "nbf": 1, "exp": 2}))
        .expect("sign");
    assert!(jsonwebtoken::decode::<Value>(&expired, &key, &validation).is_err());
    issuer.shutdown().await;
}

#[tokio::test]
async fn keys_persist_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = IssuerKeys::load_or_generate(dir.path()).expect("first");
    let second = IssuerKeys::load_or_generate(dir.path()).expect("second");
    assert_eq!(first.kid(), second.kid());
    assert_eq!(first.jwks(), second.jwks());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(entries.len(), 1);
        let mode = entries[0]
            .as_ref()
            .expect("entry")
            .metadata()
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A token signed before the "restart" verifies with the reloaded JWKS.
    let token = first
        .sign(&serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}))
        .expect("sign");
    let set: JwkSet = serde_json::from_value(second.jwks()).expect("set");
    let key = DecodingKey::from_jwk(&set.keys[0]).expect("key");
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_aud = false;
    jsonwebtoken::decode::<Value>(&token, &key, &v).expect("verifies");
}

#[tokio::test]
async fn issuer_stops_on_drop() {
    let issuer = start().await;
    let url = format!("{}/jwks.json", issuer.url());
    drop(issuer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A fresh client each time: new connections are refused once the listener is gone.
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        if client.get(url.parse().expect("uri")).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "issuer still serving after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
