//! A fake Microsoft Teams / Bot Framework for tests: one loopback HTTP server playing the
//! Azure AD token endpoint (client credentials), the Bot Framework OpenID metadata and JWKS
//! (an RSA key generated at start), and the connector's activity endpoints (posts, updates and
//! replies, recorded). It also plays the channel side: [`FakeTeams::invoke`] sends a bot a
//! real-shaped `adaptiveCard/action` invoke carrying a JWT signed the way Bot Framework signs
//! them, and the lower-level helpers build forged, expired, mis-addressed or replayed variants.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Bot Framework's channel-to-bot token issuer.
pub const ISSUER: &str = "https://api.botframework.com";
const SCOPE: &str = "https://api.botframework.com/.default";
const TOKEN_PATH: &str = "/botframework.com/oauth2/v2.0/token";
const METADATA_PATH: &str = "/v1/.well-known/openidconfiguration";
const KEYS_PATH: &str = "/v1/.well-known/keys";
/// Real service URLs carry a region path and a trailing slash.
const SERVICE_PATH: &str = "/amer/";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// An RSA signing key with its JWK parameters.
struct RsaKey {
    encoding: EncodingKey,
    n: String,
    e: String,
}

impl RsaKey {
    fn generate() -> Self {
        let mut rng = rsa::rand_core::OsRng;
        // A test fake: failing to make a key is an environment fault worth a loud stop.
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation");
        let der = key.to_pkcs1_der().expect("PKCS#1 encoding");
        Self {
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        }
    }
}

/// RSA key generation is slow in unoptimised test builds, so a test process makes its two
/// keys (the published one and a forger's) once and every fake shares them.
fn keys() -> &'static (RsaKey, RsaKey) {
    static KEYS: OnceLock<(RsaKey, RsaKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::thread::scope(|scope| {
            let forger = scope.spawn(RsaKey::generate);
            let published = RsaKey::generate();
            (published, forger.join().expect("RSA key generation"))
        })
    })
}

/// Which key signs a token from [`FakeTeams::jwt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKey {
    /// The published key, with its kid: what Bot Framework sends.
    Published,
    /// Another key claiming the published kid: a forgery.
    Forged,
    /// Another key with a kid the JWKS does not list.
    UnknownKid,
}

/// One call the bot made to the connector.
#[derive(Clone, Debug)]
pub struct TeamsActivity {
    /// `POST` (new activity or reply) or `PUT` (update).
    pub method: String,
    /// Decoded from the path.
    pub conversation_id: String,
    /// The activity id in the path: the updated activity (PUT) or the one replied to (POST).
    pub target: Option<String>,
    /// The id the fake assigned (POST) or the updated id (PUT).
    pub id: String,
    pub body: Value,
}

impl TeamsActivity {
    /// The Adaptive Card of the first attachment, if any.
    pub fn card(&self) -> Option<&Value> {
        self.body.pointer("/attachments/0/content")
    }
}

struct Shared {
    app_id: String,
    app_password: String,
    base: String,
    kid: String,
    issued: Mutex<HashSet<String>>,
    activities: Mutex<Vec<TeamsActivity>>,
    changed: Notify,
    next_id: AtomicU64,
    token_requests: AtomicUsize,
    key_fetches: AtomicUsize,
}

impl Shared {
    fn record(&self, activity: TeamsActivity) {
        self.activities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(activity);
        self.changed.notify_waiters();
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(token)
    }
}

/// A running fake; stops on drop.
pub struct FakeTeams {
    shared: Arc<Shared>,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeTeams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTeams")
            .field("base", &self.shared.base)
            .field("app_id", &self.shared.app_id)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl FakeTeams {
    /// Serves on 127.0.0.1 (a free port). Panics if it cannot bind: a test environment fault.
    pub async fn start(app_id: &str, app_password: &str) -> FakeTeams {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let base = format!(
            "http://{}",
            listener.local_addr().expect("listener address")
        );
        // Off the async threads: the first fake of a test process waits for key generation.
        let _ = tokio::task::spawn_blocking(keys).await;
        let kid = {
            // The kid is a digest of the key: stable for the process.
            let (published, _) = keys();
            let digest = sha2_digest(published.n.as_bytes());
            URL_SAFE_NO_PAD.encode(&digest[..16])
        };
        let shared = Arc::new(Shared {
            app_id: app_id.to_owned(),
            app_password: app_password.to_owned(),
            base: base.clone(),
            kid,
            issued: Mutex::new(HashSet::new()),
            activities: Mutex::new(Vec::new()),
            changed: Notify::new(),
            next_id: AtomicU64::new(1_732_284_000_000),
            token_requests: AtomicUsize::new(0),
            key_fetches: AtomicUsize::new(0),
        });
        let conversation = format!("{SERVICE_PATH}v3/conversations/{{conversation}}/activities");
        let app = Router::new()
            .route(TOKEN_PATH, post(token))
            .route(METADATA_PATH, get(metadata))
            .route(KEYS_PATH, get(jwks))
            .route(&conversation, post(create_activity))
            .route(
                &format!("{conversation}/{{activity}}"),
                post(reply_activity).put(update_activity),
            )
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeTeams {
            shared,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn app_id(&self) -> &str {
        &self.shared.app_id
    }

    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.shared.base)
    }

    pub fn openid_metadata_url(&self) -> String {
        format!("{}{METADATA_PATH}", self.shared.base)
    }

    /// With Teams' trailing slash, e.g. `http://127.0.0.1:P/amer/`.
    pub fn service_url(&self) -> String {
        format!("{}{SERVICE_PATH}", self.shared.base)
    }

    pub fn issuer(&self) -> &'static str {
        ISSUER
    }

    /// A Teams channel conversation id, as the bot would be configured with.
    pub fn conversation_id(&self) -> &'static str {
        "19:gatehouse-holds@thread.tacv2"
    }

    /// The kid of the published signing key.
    pub fn kid(&self) -> &str {
        &self.shared.kid
    }

    /// Every connector call so far, in order.
    pub fn activities(&self) -> Vec<TeamsActivity> {
        self.shared
            .activities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits (up to `timeout`) for a recorded call matching `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&TeamsActivity) -> bool,
    ) -> Option<TeamsActivity> {
        super::wait_until(&self.shared.changed, timeout, || {
            self.activities().into_iter().find(|a| pred(a))
        })
        .await
    }

    /// Client-credentials grants served (successful or not).
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// JWKS downloads served.
    pub fn key_fetches(&self) -> usize {
        self.shared.key_fetches.load(Ordering::SeqCst)
    }

    /// Valid channel-to-bot claims: iss, aud = app id, serviceurl, nbf = now, exp = now + 1h.
    pub fn claims(&self) -> Value {
        let now = now_secs();
        json!({
            "serviceurl": self.service_url(),
            "nbf": now,
            "exp": now + 3600,
            "iss": ISSUER,
            "aud": self.shared.app_id,
        })
    }

    /// Signs `claims` as an RS256 JWT with a kid header, as Bot Framework does.
    pub fn jwt(&self, claims: &Value, key: TokenKey) -> String {
        let (published, other) = keys();
        let (signer, kid) = match key {
            TokenKey::Published => (published, self.shared.kid.clone()),
            TokenKey::Forged => (other, self.shared.kid.clone()),
            TokenKey::UnknownKid => (other, "unpublished-key".to_owned()),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid);
        header.typ = Some("JWT".to_owned());
        // Signing JSON with a well-formed key cannot fail; an empty token would be refused.
        jsonwebtoken::encode(&header, claims, &signer.encoding).unwrap_or_default()
    }

    /// A real-shaped `adaptiveCard/action` invoke from `from_id` pressing `verb` on the card
    /// of `approval_id`. Each call has a fresh activity id.
    pub fn invoke_activity(&self, from_id: &str, approval_id: &str, verb: &str) -> Value {
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst);
        let reply_to = self
            .activities()
            .iter()
            .rev()
            .find(|a| a.method == "POST" && a.target.is_none())
            .map(|a| a.id.clone())
            .unwrap_or_else(|| "1732283999000".to_owned());
        let now = now_rfc3339();
        json!({
            "name": "adaptiveCard/action",
            "type": "invoke",
            "timestamp": now,
            "localTimestamp": now,
            "id": format!("f:{id}"),
            "channelId": "msteams",
            "serviceUrl": self.service_url(),
            "from": {
                "id": from_id,
                "name": "Carol Example",
                "aadObjectId": "5f6e1c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            },
            "conversation": {
                "isGroup": true,
                "conversationType": "channel",
                "tenantId": TENANT,
                "id": format!("{};messageid={reply_to}", self.conversation_id()),
            },
            "recipient": {
                "id": format!("28:{}", self.shared.app_id),
                "name": "Gatehouse",
            },
            "entities": [{
                "locale": "en-US",
                "country": "US",
                "platform": "Web",
                "timezone": "Europe/Berlin",
                "type": "clientInfo",
            }],
            "channelData": {
                "channel": {"id": self.conversation_id()},
                "team": {"id": self.conversation_id()},
                "tenant": {"id": TENANT},
                "source": {"name": "message"},
                "legacy": {"replyToId": reply_to},
            },
            "replyToId": reply_to,
            "value": {
                "action": {
                    "type": "Action.Execute",
                    "title": if verb == "deny" { "Deny" } else { "Approve" },
                    "verb": verb,
                    "data": {"approval_id": approval_id},
                },
                "trigger": "manual",
            },
            "locale": "en-US",
        })
    }

    /// Sends a correctly signed invoke to `bot_url` (e.g. `http://127.0.0.1:P/teams/messages`).
    pub async fn invoke(
        &self,
        bot_url: &str,
        from_id: &str,
        approval_id: &str,
        verb: &str,
    ) -> (StatusCode, Value) {
        let activity = self.invoke_activity(from_id, approval_id, verb);
        let token = self.jwt(&self.claims(), TokenKey::Published);
        self.send(bot_url, Some(&token), &activity).await
    }

    /// Posts `activity` to the bot with `Authorization: Bearer <token>` when given. The answer
    /// body is JSON when it parses, else a JSON string of the text (empty: null).
    pub async fn send(
        &self,
        bot_url: &str,
        token: Option<&str>,
        activity: &Value,
    ) -> (StatusCode, Value) {
        let body = serde_json::to_vec(activity).unwrap_or_default();
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(bot_url)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(
                header::USER_AGENT,
                "Microsoft-SkypeBotApi (Microsoft-BotFramework 3.0)",
            );
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let Ok(request) = request.body(Full::new(Bytes::from(body))) else {
            return (StatusCode::BAD_REQUEST, Value::Null);
        };
        let Ok(response) = self.client.request(request).await else {
            return (StatusCode::BAD_GATEWAY, Value::Null);
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, parse_body(&bytes))
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn sha2_digest(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

impl Drop for FakeTeams {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("grant_type") != Some("client_credentials") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003",
        );
    }
    if field("client_id") != Some(shared.app_id.as_str()) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016",
        );
    }
    if field("client_secret") != Some(shared.app_password.as_str()) {
        return aad_error(StatusCode::UNAUTHORIZED, "invalid_client", "AADSTS7000215");
    }
    if field("scope") != Some(SCOPE) {
        return aad_error(StatusCode::BAD_REQUEST, "invalid_scope", "AADSTS70011");
    }
    let token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-{}",
        ulid::Ulid::new()
    );
    shared
        .issued
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone());
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": token,
    }))
    .into_response()
}

fn aad_error(status: StatusCode, error: &str, code: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": error,
            "error_description": format!("{code}: the request was refused by the fake token endpoint."),
            "error_codes": [code.trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
            "timestamp": now_rfc3339(),
        })),
    )
        .into_response()
}

async fn metadata(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "issuer": ISSUER,
        "authorization_endpoint": "https://invalid.botframework.com",
        "jwks_uri": format!("{}{KEYS_PATH}", shared.base),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.key_fetches.fetch_add(1, Ordering::SeqCst);
    let (published, _) = keys();
    axum::Json(json!({"keys": [{
        "kty": "RSA",
        "use": "sig",
        "kid": shared.kid,
        "x5t": shared.kid,
        "n": published.n,
        "e": published.e,
        "endorsements": ["msteams", "skype", "webchat", "directline"],
    }]}))
    .into_response()
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"message": "Authorization has been denied for this request."})),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"code": "BadArgument", "message": message}})),
    )
        .into_response()
}

async fn create_activity(
    State(shared): State<Arc<Shared>>,
    Path(conversation): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.authorized(&headers) {
        return denied();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The request body is not JSON.");
    };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst).to_string();
    shared.record(TeamsActivity {
        method: "POST".to_owned(),
        conversation_id: conversation,
        target: None,
        id: id.clone(),
        body,
    });
    (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
}

async fn reply_activity(
    State(shared): State<Arc<Shared>>,
    Path((conversation, activity)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.authorized(&headers) {
        return denied();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The request body is not JSON.");
    };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst).to_string();
    shared.record(TeamsActivity {
        method: "POST".to_owned(),
        conversation_id: conversation,
        target: Some(activity),
        id: id.clone(),
        body,
    });
    (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
}

async fn update_activity(
    State(shared): State<Arc<Shared>>,
    Path((conversation, activity)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.authorized(&headers) {
        return denied();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("The request body is not JSON.");
    };
    let known = shared
        .activities
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|a| a.id == activity && a.conversation_id == conversation);
    if !known {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {
                "code": "ActivityNotFoundInConversation",
                "message": "The activity is not in this conversation.",
            }})),
        )
            .into_response();
    }
    shared.record(TeamsActivity {
        method: "PUT".to_owned(),
        conversation_id: conversation,
        target: Some(activity.clone()),
        id: activity.clone(),
        body,
    });
    axum::Json(json!({"id": activity})).into_response()
}
