//! A local OIDC issuer: discovery + JWKS over plain HTTP on loopback, ES256 tokens, and
//! browser sign-in (authorization code flow with PKCE) for registered clients and demo users.
//!
//! ```no_run
//! # async fn demo(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
//! use gatehouse_sandbox::issuer::{DemoUser, Issuer, IssuerKeys, OidcClient};
//! let issuer = Issuer::builder(IssuerKeys::generate()?)
//!     .client(OidcClient::public("console", ["https://console.example.com/signin/callback"]))
//!     .user(DemoUser::new("alice@example.com", "password").groups(["sre"]))
//!     .start(listener)
//!     .await?;
//! # Ok(()) }
//! ```

mod provider;

pub use provider::{ACR_MFA, ACR_PASSWORD, DemoUser, OidcClient, totp_code};

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::KeyPair;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const KEY_FILE: &str = "issuer-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("key generation failed: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the signing key is not a P-256 key")]
    NotP256,
    #[error("signing failed: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    File(#[from] crate::pki::PkiError),
}

/// An ES256 (P-256) signing key with a kid.
pub struct IssuerKeys {
    pkcs8_pem: String,
    encoding: EncodingKey,
    x: String,
    y: String,
    kid: String,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Clone for IssuerKeys {
    fn clone(&self) -> Self {
        Self {
            pkcs8_pem: self.pkcs8_pem.clone(),
            encoding: self.encoding.clone(),
            x: self.x.clone(),
            y: self.y.clone(),
            kid: self.kid.clone(),
        }
    }
}

impl IssuerKeys {
    pub fn generate() -> Result<Self, IssuerError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_key_pair(&key)
    }

    /// Persists the PKCS#8 PEM (0600) in dir so tokens survive restarts.
    pub fn load_or_generate(dir: &Path) -> Result<Self, IssuerError> {
        let path = dir.join(KEY_FILE);
        if path.exists() {
            let pem = fs::read_to_string(&path)?;
            let key = KeyPair::from_pem(&pem)?;
            return Self::from_key_pair(&key);
        }
        let keys = Self::generate()?;
        fs::create_dir_all(dir)?;
        crate::pki::write_private(&path, &keys.pkcs8_pem)?;
        Ok(keys)
    }

    fn from_key_pair(key: &KeyPair) -> Result<Self, IssuerError> {
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(IssuerError::NotP256);
        }
        // Uncompressed SEC1 point: 0x04 || x || y.
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 0x04 {
            return Err(IssuerError::NotP256);
        }
        let x = URL_SAFE_NO_PAD.encode(&raw[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&raw[33..65]);
        let pkcs8_pem = key.serialize_pem();
        let encoding = EncodingKey::from_ec_pem(pkcs8_pem.as_bytes())?;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
        }))
        .map_err(jsonwebtoken::errors::Error::from)?;
        // RFC 7638 thumbprint: stable across restarts for the same key.
        let kid = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)?;
        Ok(Self {
            pkcs8_pem,
            encoding,
            x,
            y,
            kid,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        }]})
    }

    /// Signs arbitrary claims as a compact JWS with header {alg: ES256, typ: JWT, kid}.
    pub fn sign(&self, claims: &Value) -> Result<String, IssuerError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// A running issuer on loopback; stops on drop or `shutdown()`.
pub struct Issuer {
    url: String,
    /// The published keys; the first one signs. Shared with the JWKS endpoint so a rotation
    /// shows up there at once.
    keys: Arc<std::sync::RwLock<Vec<IssuerKeys>>>,
    provider: Arc<provider::Provider>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("url", &self.url).finish()
    }
}

/// What an issuer starts with: its key, registered clients and demo users.
#[derive(Debug)]
pub struct IssuerBuilder {
    keys: IssuerKeys,
    clients: Vec<OidcClient>,
    users: Vec<DemoUser>,
}

impl IssuerBuilder {
    /// Registers a client for browser sign-in (see [`OidcClient`]).
    pub fn client(mut self, client: OidcClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Adds a user who can sign in with a password (see [`DemoUser`]).
    pub fn user(mut self, user: DemoUser) -> Self {
        self.users.push(user);
        self
    }

    pub async fn start(self, listener: tokio::net::TcpListener) -> Result<Issuer, IssuerError> {
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let keys = Arc::new(std::sync::RwLock::new(vec![self.keys]));
        let provider = Arc::new(provider::Provider::new(
            url.clone(),
            keys.clone(),
            self.clients,
            self.users,
        ));
        let discovery = Arc::new(provider.discovery());
        let published = keys.clone();
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let d = discovery.clone();
                    async move { Json((*d).clone()) }
                }),
            )
            .route(
                "/jwks.json",
                get(move || {
                    let all: Vec<Value> = published
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .flat_map(|k| k.jwks()["keys"].as_array().cloned().unwrap_or_default())
                        .collect();
                    async move { Json(json!({ "keys": all })) }
                }),
            )
            .merge(provider::routes(provider.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "issuer server stopped with an error");
            }
        });
        Ok(Issuer {
            url,
            keys,
            provider,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

impl Issuer {
    /// An issuer with no clients or users: it mints tokens and serves discovery and JWKS.
    pub async fn start(
        keys: IssuerKeys,
        listener: tokio::net::TcpListener,
    ) -> Result<Self, IssuerError> {
        Self::builder(keys).start(listener).await
    }

    pub fn builder(keys: IssuerKeys) -> IssuerBuilder {
        IssuerBuilder {
            keys,
            clients: Vec::new(),
            users: Vec::new(),
        }
    }

    /// Registers (or replaces) a client while running, e.g. once a service's port is known.
    pub fn register_client(&self, client: OidcClient) {
        self.provider.register_client(client);
    }

    /// Adds (or replaces) a demo user while running.
    pub fn add_user(&self, user: DemoUser) {
        self.provider.add_user(user);
    }

    /// Moves every browser's last password entry `by` into the past, so tests of `max_age`
    /// and step-up need not wait for the clock.
    pub fn backdate_sign_ins(&self, by: Duration) {
        self.provider.backdate_sign_ins(by);
    }

    /// Exactly the `iss` it mints.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key that signs now.
    pub fn keys(&self) -> IssuerKeys {
        self.keys.read().unwrap_or_else(|p| p.into_inner())[0].clone()
    }

    /// Rotates the signing key: a new key signs from now on and is published first. With
    /// `keep_old`, the old keys stay published (tokens they signed keep verifying); without,
    /// they are withdrawn at once, as after a key compromise.
    pub fn rotate(&self, keep_old: bool) -> Result<IssuerKeys, IssuerError> {
        let new = IssuerKeys::generate()?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if !keep_old {
            keys.clear();
        }
        keys.insert(0, new.clone());
        Ok(new)
    }

    /// Mints a token: iss, sub, aud, groups, iat = nbf = now, exp = now + ttl, jti.
    pub fn mint(
        &self,
        subject: &str,
        audience: &str,
        groups: &[&str],
        ttl: Duration,
    ) -> Result<String, IssuerError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = json!({
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl.as_secs()),
            "jti": ulid::Ulid::new().to_string(),
        });
        self.keys().sign(&claims)
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Keep-alive connections would hold graceful shutdown open; bound the wait.
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
