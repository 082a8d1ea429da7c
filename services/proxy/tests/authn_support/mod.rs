//! Shared by the authentication tests and benches: signing keys (ES256 made with rcgen, RS256
//! from a test-only fixture), token minting, JWKS files, and a small OIDC
//! discovery + JWKS server that counts its key fetches.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use gatehouse_proxy::config::IssuerConfig;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const RSA_KEY_PEM: &str = include_str!("../fixtures/rsa-test-key.pem");
pub const RSA_JWK: &str = include_str!("../fixtures/rsa-test-jwk.json");

/// A signing key and the JWK that verifies it.
#[derive(Clone)]
pub struct SigningKey {
    header: Header,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    /// A fresh P-256 key (rcgen), kid = a random ULID-ish name.
    pub fn es256() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw();
        let kid = format!("es-{}", &blake3::hash(raw).to_hex()[..12]);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.clone());
        Self {
            header,
            encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }),
        }
    }

    pub fn rs256() -> Self {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-test".into());
        Self {
            header,
            encoding: EncodingKey::from_rsa_pem(RSA_KEY_PEM.as_bytes()).unwrap(),
            jwk: serde_json::from_str(RSA_JWK).unwrap(),
        }
    }

    pub fn kid(&self) -> &str {
        self.header.kid.as_deref().unwrap()
    }

    /// The same key material published under another kid.
    pub fn renamed(&self, kid: &str) -> Self {
        let mut key = self.clone();
        key.header.kid = Some(kid.into());
        key.jwk["kid"] = kid.into();
        key
    }

    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn claims(iss: &str, sub: &str, ttl_secs: u64) -> Value {
    let now = now();
    json!({
        "iss": iss, "sub": sub, "aud": "gatehouse",
        "iat": now, "nbf": now, "exp": now + ttl_secs,
    })
}

pub fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

/// Writes a JWKS atomically (the proxy may read it at any moment).
pub fn write_jwks(path: &Path, keys: &[&SigningKey]) {
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&jwks).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An issuer config from YAML, so new fields keep their defaults.
pub fn issuer_config(yaml: &str) -> IssuerConfig {
    yaml_serde::from_str(yaml).unwrap()
}

/// Polls `check` until it holds or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// OIDC discovery + JWKS on loopback; counts JWKS fetches; keys can be swapped.
pub struct JwksServer {
    pub url: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let jwks = Arc::new(Mutex::new(Value::Null));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, f, u) = (jwks.clone(), fetches.clone(), url.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (j, f, u) = (j.clone(), f.clone(), u.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = match req.uri().path() {
                            "/.well-known/openid-configuration" => {
                                json!({"issuer": u, "jwks_uri": format!("{u}/jwks")})
                            }
                            _ => {
                                f.fetch_add(1, Ordering::SeqCst);
                                j.lock().unwrap().clone()
                            }
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let server = Self {
            url,
            jwks,
            fetches,
            task,
        };
        server.set_keys(keys);
        server
    }

    pub fn set_keys(&self, keys: &[&SigningKey]) {
        *self.jwks.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
