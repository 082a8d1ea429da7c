//! Browser sign-in for Gatehouse's web front ends (the auditor console, the approver page):
//! an OpenID Connect relying party for axum.
//!
//! - [`SignIn::new`] discovers the issuer and loads its keys; [`SignIn::routes`] serves
//!   `GET /signin`, `GET /signin/callback` and `POST /signout`.
//! - The flow is the authorization code flow with PKCE (S256), `state` and `nonce`, kept in a
//!   short-lived signed cookie; the ID token is verified against the issuer's JWKS with the
//!   algorithm the key names.
//! - The session is a stateless HMAC-signed cookie ([`Session`]), read by the extractor or
//!   [`SignIn::session`]; no token is kept.
//! - POST handlers call [`SignIn::check_csrf`]; sensitive actions check
//!   [`Session::satisfies`] and send the user through [`SignIn::step_up_url`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use gatehouse_signin::{Session, SignIn, SignInConfig};
//!
//! let config = SignInConfig::new(
//!     "https://login.example.com",
//!     "gatehouse-console",
//!     "https://audit.example.com/signin/callback",
//! );
//! let signin = Arc::new(SignIn::new(config).await?);
//! let app: Router = Router::new()
//!     .route("/", get(|s: Session| async move { format!("hello {}", s.display_name()) }))
//!     .with_state(signin.clone())
//!     .merge(signin.routes());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod config;
mod cookie;
mod http_client;
mod routes;
mod session;
mod verify;

use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

pub use config::SignInConfig;
pub use session::{Authentication, Session, SignInRequired, StepUp, StepUpNeeded};

/// Clock skew allowed between Gatehouse and the issuer, in seconds.
pub(crate) const LEEWAY: i64 = 60;
/// The least time between two JWKS reloads asked for by an unknown `kid`.
const JWKS_REFRESH_GAP: Duration = Duration::from_secs(30);
/// Keys older than this are reloaded before use, so a withdrawn key stops verifying.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
const CALLBACK_SUFFIX: &str = "/signin/callback";

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("sign-in configuration: {0}")]
    Config(String),
    #[error("discovering the issuer: {0}")]
    Discovery(String),
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

struct Jwks {
    set: JwkSet,
    loaded: Instant,
}

/// A configured relying party. Share it as `Arc<SignIn>` (the extractor's state).
pub struct SignIn {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_url: String,
    /// `scheme://host[:port]` of `redirect_url`: what `Origin` must be on POSTs.
    origin: String,
    /// Where `/signin` is as the browser sees it (the callback's path without `/callback`).
    signin_path: String,
    scopes: Vec<String>,
    groups_claim: String,
    session_ttl: Duration,
    /// The session and flow cookies' names, with the client id in them: cookies do not keep
    /// ports apart, so two services on one host (the console and the approver page) must not
    /// overwrite each other's.
    session_cookie: String,
    flow_cookie: String,
    keys: cookie::Keys,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    http: http_client::HttpsClient,
    jwks: RwLock<Jwks>,
    /// When an unknown `kid` last made us reload the keys.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_url", &self.redirect_url)
            .finish_non_exhaustive()
    }
}

fn is_loopback(uri: &Uri) -> bool {
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An absolute https URL, or http on loopback.
fn secure_url(what: &str, url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{what} {url:?} is not a URL: {e}"))?;
    if uri.host().is_none() {
        return Err(format!("{what} {url:?} is not an absolute URL"));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(&uri) => Ok(uri),
        _ => Err(format!(
            "{what} {url:?} must be https (plain http only on loopback)"
        )),
    }
}

fn read_secret_file(what: &str, path: &Path) -> Result<Vec<u8>, SignInError> {
    std::fs::read(path).map_err(|e| SignInError::Config(format!("{what} {}: {e}", path.display())))
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl SignIn {
    /// Checks the configuration, reads its files, discovers the issuer and loads its keys.
    pub async fn new(config: SignInConfig) -> Result<Self, SignInError> {
        let bad = SignInError::Config;
        let issuer_uri = secure_url("issuer", &config.issuer).map_err(bad)?;
        let redirect = secure_url("redirect_url", &config.redirect_url).map_err(bad)?;
        if redirect.query().is_some() || config.redirect_url.contains('#') {
            return Err(bad("redirect_url must have no query or fragment".into()));
        }
        let Some(prefix) = redirect.path().strip_suffix(CALLBACK_SUFFIX) else {
            return Err(bad(format!(
                "redirect_url {:?} must end in {CALLBACK_SUFFIX}",
                config.redirect_url
            )));
        };
        let signin_path = format!("{prefix}/signin");
        let origin = format!(
            "{}://{}",
            redirect.scheme_str().unwrap_or("https"),
            redirect.authority().map_or("", |a| a.as_str())
        );
        if config.client_id.is_empty() {
            return Err(bad("client_id is empty".into()));
        }
        if !config.scopes.iter().any(|s| s == "openid") {
            return Err(bad("scopes must include openid".into()));
        }
        if config.session_ttl.is_zero() {
            return Err(bad("session_ttl must be more than zero".into()));
        }
        let client_secret = match &config.client_secret_file {
            Some(path) => {
                let raw = read_secret_file("client_secret_file", path)?;
                let secret = String::from_utf8(raw)
                    .map_err(|_| {
                        bad(format!(
                            "client_secret_file {} is not UTF-8",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned();
                if secret.is_empty() {
                    return Err(bad(format!(
                        "client_secret_file {} is empty",
                        path.display()
                    )));
                }
                Some(secret)
            }
            None => None,
        };
        let master = match &config.cookie_key_file {
            Some(path) => {
                let key = read_secret_file("cookie_key_file", path)?;
                if key.len() < 32 {
                    return Err(bad(format!(
                        "cookie_key_file {} holds {} bytes; it needs at least 32 random bytes",
                        path.display(),
                        key.len()
                    )));
                }
                key
            }
            None => {
                tracing::info!(
                    "sign-in: no cookie_key_file, using a key generated at start: sessions end on restart and replicas do not share them"
                );
                rand::random::<[u8; 32]>().to_vec()
            }
        };
        let http = http_client::client(config.ca_file.as_deref())?;

        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        );
        let doc: Discovery = http_client::get_json(&http, &discovery_url)
            .await
            .map_err(SignInError::Discovery)?;
        // The issuer must name itself exactly as configured (OIDC Discovery §4.3).
        if doc.issuer != config.issuer {
            return Err(SignInError::Discovery(format!(
                "{discovery_url} names issuer {:?}, not {:?}",
                doc.issuer, config.issuer
            )));
        }
        for (what, url) in [
            ("authorization_endpoint", &doc.authorization_endpoint),
            ("token_endpoint", &doc.token_endpoint),
            ("jwks_uri", &doc.jwks_uri),
        ] {
            secure_url(what, url).map_err(SignInError::Discovery)?;
        }
        if let Some(methods) = &doc.code_challenge_methods_supported
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(SignInError::Discovery(
                "the issuer does not support PKCE with S256".into(),
            ));
        }
        let set: JwkSet = http_client::get_json(&http, &doc.jwks_uri)
            .await
            .map_err(SignInError::Discovery)?;
        tracing::info!(issuer = %config.issuer, host = ?issuer_uri.host(), client_id = %config.client_id, "sign-in: issuer discovered");
        let session_cookie = cookie::name(cookie::SESSION_COOKIE, &config.client_id);
        let flow_cookie = cookie::name(cookie::FLOW_COOKIE, &config.client_id);
        Ok(Self {
            issuer: config.issuer,
            client_id: config.client_id,
            client_secret,
            redirect_url: config.redirect_url,
            origin,
            signin_path,
            session_cookie,
            flow_cookie,
            scopes: config.scopes,
            groups_claim: config.groups_claim,
            session_ttl: config.session_ttl,
            keys: cookie::Keys::derive(&master),
            authorization_endpoint: doc.authorization_endpoint,
            token_endpoint: doc.token_endpoint,
            jwks_uri: doc.jwks_uri,
            http,
            jwks: RwLock::new(Jwks {
                set,
                loaded: Instant::now(),
            }),
            last_refresh: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `scheme://host[:port]` of the redirect URL: the origin POSTs must come from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The router with `GET /signin`, `GET /signin/callback` and `POST /signout`. Mount it at
    /// the prefix of the configured `redirect_url` (usually the root).
    pub fn routes(self: &std::sync::Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    /// The session of this request, if its cookie is valid, unexpired and from this issuer.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let now = now();
        cookie::values(headers, &self.session_cookie)
            .filter_map(|v| self.keys.open_session::<session::SessionData>(v))
            .find(|d| d.exp > now && d.iat <= now + LEEWAY && d.iss == self.issuer)
            .map(|data| Session {
                csrf: self.keys.csrf_token(&data.sid),
                data,
            })
    }

    /// Where to send the browser to sign in and come back to `return_to` (a local path).
    pub fn signin_url(&self, return_to: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("return_to", return_to)
            .finish();
        format!("{}?{query}", self.signin_path)
    }

    /// Where to send the browser to satisfy `step`: a fresh sign-in (`prompt=login`) with the
    /// step's `max_age` and `acr` passed on to the issuer, then back to `return_to`.
    pub fn step_up_url(&self, return_to: &str, step: &StepUp) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("return_to", return_to);
        if let Some(max_age) = step.max_age {
            query.append_pair("max_age", &max_age.as_secs().to_string());
        }
        query.append_pair("prompt", "login");
        if !step.acr.is_empty() {
            query.append_pair("acr", &step.acr.join(" "));
        }
        format!("{}?{}", self.signin_path, query.finish())
    }

    /// For a state-changing request: the form's `csrf` token must be the session's, and when
    /// the browser says where the request came from (`Sec-Fetch-Site`, `Origin`), that must
    /// be this site.
    pub fn check_csrf(
        &self,
        session: &Session,
        headers: &HeaderMap,
        form_token: Option<&str>,
    ) -> Result<(), CsrfRefused> {
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.to_str(), Ok("same-origin" | "none"))
        {
            return Err(CsrfRefused::CrossSite);
        }
        if let Some(origin) = headers.get(http::header::ORIGIN)
            && origin.to_str().ok() != Some(self.origin.as_str())
        {
            return Err(CsrfRefused::Origin);
        }
        match form_token {
            None | Some("") => Err(CsrfRefused::MissingToken),
            Some(token) if self.keys.csrf_matches(session.session_id(), token) => Ok(()),
            Some(_) => Err(CsrfRefused::WrongToken),
        }
    }

    /// The current keys; reloaded first when they are older than an hour.
    async fn key_set(&self) -> Result<JwkSet, String> {
        let stale = {
            let jwks = self.jwks.read().unwrap_or_else(|p| p.into_inner());
            (jwks.loaded.elapsed() > JWKS_MAX_AGE).then_some(())
        };
        if stale.is_some() {
            self.reload_keys().await?;
        }
        Ok(self
            .jwks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .clone())
    }

    /// Reloads the keys because a token names one we lack; at most once per
    /// [`JWKS_REFRESH_GAP`], so forged `kid`s cannot make us hammer the issuer.
    async fn refresh_for_unknown_kid(&self) -> Result<(), String> {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_GAP) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.reload_keys().await
    }

    async fn reload_keys(&self) -> Result<(), String> {
        let set: JwkSet = http_client::get_json(&self.http, &self.jwks_uri).await?;
        *self.jwks.write().unwrap_or_else(|p| p.into_inner()) = Jwks {
            set,
            loaded: Instant::now(),
        };
        Ok(())
    }
}

/// Why a state-changing request was refused; answers 403 with a short page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfRefused {
    #[error("the request came from another site")]
    CrossSite,
    #[error("the request's Origin is not this site")]
    Origin,
    #[error("the form carries no CSRF token")]
    MissingToken,
    #[error("the form's CSRF token is not this session's")]
    WrongToken,
}

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        routes::page(
            StatusCode::FORBIDDEN,
            "Request refused",
            &format!("This request was refused because {self}. Reload the page and try again."),
            None,
        )
    }
}
