//! A fake Discord for tests: a loopback HTTP server with the message endpoints a bot calls
//! (`POST /api/v10/channels/{id}/messages`, `PATCH …/messages/{id}`, interaction follow-ups),
//! checking `Authorization: Bot <token>` and answering with Message objects serenity
//! deserializes. It also plays Discord's side of an interactions endpoint: it holds an Ed25519
//! application key and sends real-shaped, signed interactions ([`FakeDiscord::interact`],
//! [`FakeDiscord::ping`]); lower-level helpers make forged, stale and replayed ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::{Signer, SigningKey};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rsa::rand_core::{OsRng, RngCore};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// Discord's epoch (2015-01-01), in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
const GUILD_ID: &str = "1197610231842181120";
/// Follow-ups are not tied to a channel the fake knows; any valid id serves.
const FOLLOWUP_CHANNEL_ID: &str = "1197611330010245171";

/// One API call the bot made.
#[derive(Clone, Debug)]
pub struct DiscordCall {
    /// `POST` or `PATCH`.
    pub method: String,
    pub path: String,
    /// The channel in the path (empty for follow-ups).
    pub channel_id: String,
    /// The edited message (PATCH), or the created one (POST).
    pub message_id: String,
    /// The JSON the bot sent.
    pub body: Value,
}

struct Shared {
    authorization: String,
    bot_user_id: String,
    application_id: String,
    next: AtomicU64,
    calls: Mutex<Vec<DiscordCall>>,
    /// Message id → the Message object as last returned.
    messages: Mutex<HashMap<String, Value>>,
    changed: Notify,
}

impl Shared {
    fn snowflake(&self) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DISCORD_EPOCH_MS)
            .saturating_sub(DISCORD_EPOCH_MS);
        let seq = self.next.fetch_add(1, Ordering::SeqCst) & 0xFFF;
        ((ms << 22) | (1 << 17) | seq).to_string()
    }

    fn record(&self, call: DiscordCall) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
        self.changed.notify_waiters();
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(self.authorization.as_str())
    }

    fn author(&self) -> Value {
        json!({
            "id": self.bot_user_id,
            "username": "Gatehouse",
            "discriminator": "4821",
            "global_name": null,
            "avatar": null,
            "bot": true,
            "public_flags": 0,
            "flags": 0,
            "banner": null,
            "accent_color": null,
            "avatar_decoration_data": null,
        })
    }
}

/// A running fake; stops on drop.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    base: String,
    key: SigningKey,
    forger: SigningKey,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeDiscord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDiscord")
            .field("base", &self.base)
            .field("application_id", &self.shared.application_id)
            .finish_non_exhaustive()
    }
}

fn random_key() -> SigningKey {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
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

/// A signed interaction delivery: exactly the bytes and headers Discord would send.
#[derive(Clone, Debug)]
pub struct SignedInteraction {
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
}

impl FakeDiscord {
    /// Serves on 127.0.0.1 (a free port). Panics if it cannot bind: a test environment fault.
    pub async fn start(bot_token: &str) -> FakeDiscord {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let base = format!(
            "http://{}",
            listener.local_addr().expect("listener address")
        );
        let shared = Arc::new(Shared {
            authorization: format!("Bot {}", bot_token.trim()),
            bot_user_id: "1197610950284468264".to_owned(),
            application_id: "1197610950284468264".to_owned(),
            next: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
            messages: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        });
        let app = Router::new()
            .route(
                "/api/v10/channels/{channel_id}/messages",
                post(create_message),
            )
            .route(
                "/api/v10/channels/{channel_id}/messages/{message_id}",
                axum::routing::patch(edit_message),
            )
            .route(
                "/api/v10/webhooks/{application_id}/{token}",
                post(create_followup),
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
        FakeDiscord {
            shared,
            base,
            key: random_key(),
            forger: random_key(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The API base for serenity's `HttpBuilder::proxy` (it keeps the `/api/v10/…` paths).
    pub fn api_url(&self) -> &str {
        &self.base
    }

    pub fn application_id(&self) -> &str {
        &self.shared.application_id
    }

    /// The application's public key, hex, as the developer portal shows it.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Every API call so far, in order.
    pub fn calls(&self) -> Vec<DiscordCall> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The message as the fake now holds it (after edits).
    pub fn message(&self, message_id: &str) -> Option<Value> {
        self.shared
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(message_id)
            .cloned()
    }

    /// Waits (up to `timeout`) for a recorded call matching `pred`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&DiscordCall) -> bool,
    ) -> Option<DiscordCall> {
        super::wait_until(&self.shared.changed, timeout, || {
            self.calls().into_iter().find(|c| pred(c))
        })
        .await
    }

    /// A real-shaped MESSAGE_COMPONENT (type 3) interaction: `user_id` pressed the button
    /// `custom_id` on message `message_id` in guild channel `channel_id`.
    pub fn component_interaction(
        &self,
        user_id: &str,
        custom_id: &str,
        message_id: &str,
        channel_id: &str,
    ) -> Value {
        let message = self.message(message_id).unwrap_or_else(|| {
            json!({
                "id": message_id, "channel_id": channel_id, "type": 0, "content": "",
                "author": self.shared.author(), "embeds": [], "components": [],
                "attachments": [], "mentions": [], "mention_roles": [],
                "mention_everyone": false, "pinned": false, "tts": false, "flags": 0,
                "timestamp": now_rfc3339(), "edited_timestamp": null,
            })
        });
        json!({
            "app_permissions": "562949953601536",
            "application_id": self.shared.application_id,
            "authorizing_integration_owners": {"0": GUILD_ID},
            "channel": {
                "id": channel_id, "type": 0, "guild_id": GUILD_ID, "name": "approvals",
                "flags": 0, "last_message_id": message_id, "nsfw": false,
                "parent_id": null, "permissions": "562949953601536", "position": 0,
                "rate_limit_per_user": 0, "topic": null,
            },
            "channel_id": channel_id,
            "context": 0,
            "data": {"component_type": 2, "custom_id": custom_id},
            "entitlement_sku_ids": [],
            "entitlements": [],
            "guild": {"id": GUILD_ID, "features": [], "locale": "en-US"},
            "guild_id": GUILD_ID,
            "guild_locale": "en-US",
            "id": self.shared.snowflake(),
            "locale": "en-US",
            "member": {
                "avatar": null,
                "banner": null,
                "communication_disabled_until": null,
                "deaf": false,
                "flags": 0,
                "joined_at": "2024-01-17T09:12:44.123000+00:00",
                "mute": false,
                "nick": null,
                "pending": false,
                "permissions": "2248473465835073",
                "premium_since": null,
                "roles": ["1197611230010245170"],
                "unusual_dm_activity_until": null,
                "user": {
                    "avatar": null,
                    "avatar_decoration_data": null,
                    "clan": null,
                    "discriminator": "0",
                    "global_name": "Carol",
                    "id": user_id,
                    "public_flags": 0,
                    "username": "carol",
                },
            },
            "message": message,
            "token": format!("aW50ZXJhY3Rpb246{}", ulid::Ulid::new()),
            "type": 3,
            "version": 1,
        })
    }

    /// A PING (type 1), as Discord sends when the endpoint URL is saved.
    pub fn ping_interaction(&self) -> Value {
        json!({
            "application_id": self.shared.application_id,
            "id": self.shared.snowflake(),
            "token": format!("aW50ZXJhY3Rpb246{}", ulid::Ulid::new()),
            "type": 1,
            "user": {
                "avatar": null, "discriminator": "0", "global_name": null,
                "id": "643945264868098049", "public_flags": 0, "username": "discord",
            },
            "version": 1,
        })
    }

    /// Signs `body` at `timestamp` (Unix seconds) with the application key: hex Ed25519 over
    /// `timestamp || body`.
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> SignedInteraction {
        sign_with(&self.key, timestamp, body)
    }

    /// The same, signed with a key that is not the application's.
    pub fn forge(&self, timestamp: u64, body: &[u8]) -> SignedInteraction {
        sign_with(&self.forger, timestamp, body)
    }

    /// Signs `interaction` as of now.
    pub fn sign_now(&self, interaction: &Value) -> SignedInteraction {
        self.sign(
            now_secs(),
            &serde_json::to_vec(interaction).unwrap_or_default(),
        )
    }

    /// Delivers a signed interaction to `url` (e.g. `http://127.0.0.1:P/discord/interactions`).
    /// The answer body is JSON when it parses, else a JSON string of the text (empty: null).
    pub async fn deliver(&self, url: &str, signed: &SignedInteraction) -> (StatusCode, Value) {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                "Discord-Interactions/1.0 (+https://discord.com)",
            )
            .header("x-signature-ed25519", &signed.signature)
            .header("x-signature-timestamp", &signed.timestamp)
            .body(Full::new(Bytes::from(signed.body.clone())));
        let Ok(request) = request else {
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

    /// `user_id` presses `custom_id` on `message_id` in `channel_id`, signed as Discord does.
    pub async fn interact(
        &self,
        url: &str,
        user_id: &str,
        custom_id: &str,
        message_id: &str,
        channel_id: &str,
    ) -> (StatusCode, Value) {
        let interaction = self.component_interaction(user_id, custom_id, message_id, channel_id);
        self.deliver(url, &self.sign_now(&interaction)).await
    }

    /// Discord's endpoint check: a signed PING.
    pub async fn ping(&self, url: &str) -> (StatusCode, Value) {
        let interaction = self.ping_interaction();
        self.deliver(url, &self.sign_now(&interaction)).await
    }
}

fn sign_with(key: &SigningKey, timestamp: u64, body: &[u8]) -> SignedInteraction {
    let timestamp = timestamp.to_string();
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body);
    SignedInteraction {
        signature: hex::encode(key.sign(&message).to_bytes()),
        timestamp,
        body: body.to_vec(),
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"message": "401: Unauthorized", "code": 0})),
    )
        .into_response()
}

fn invalid_body(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"message": message, "code": 50035})),
    )
        .into_response()
}

/// Fills in what Discord adds to an embed it stores.
fn stored_embeds(sent: Option<&Value>) -> Value {
    let embeds = sent.and_then(Value::as_array).cloned().unwrap_or_default();
    Value::Array(
        embeds
            .into_iter()
            .map(|mut e| {
                if let Some(obj) = e.as_object_mut() {
                    obj.insert("type".to_owned(), json!("rich"));
                    obj.entry("content_scan_version").or_insert(json!(0));
                    if let Some(fields) = obj.get_mut("fields").and_then(Value::as_array_mut) {
                        for field in fields {
                            if let Some(f) = field.as_object_mut() {
                                f.entry("inline").or_insert(json!(false));
                            }
                        }
                    }
                }
                e
            })
            .collect(),
    )
}

/// Fills in the per-component ids Discord assigns.
fn stored_components(sent: Option<&Value>) -> Value {
    let mut next = 1u64;
    let rows = sent.and_then(Value::as_array).cloned().unwrap_or_default();
    Value::Array(
        rows.into_iter()
            .map(|mut row| {
                if let Some(r) = row.as_object_mut() {
                    r.insert("id".to_owned(), json!(next));
                    next += 1;
                    if let Some(children) = r.get_mut("components").and_then(Value::as_array_mut) {
                        for child in children {
                            if let Some(c) = child.as_object_mut() {
                                c.insert("id".to_owned(), json!(next));
                                next += 1;
                            }
                        }
                    }
                }
                row
            })
            .collect(),
    )
}

async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.authorized(&headers) {
        return unauthorized();
    }
    let Ok(sent) = serde_json::from_slice::<Value>(&body) else {
        return invalid_body("Invalid Form Body");
    };
    let content = sent.get("content").and_then(Value::as_str).unwrap_or("");
    let embeds = stored_embeds(sent.get("embeds"));
    if content.is_empty() && embeds.as_array().is_none_or(|e| e.is_empty()) {
        return invalid_body("Cannot send an empty message");
    }
    let id = shared.snowflake();
    let reference = sent
        .get("message_reference")
        .filter(|r| !r.is_null())
        .cloned();
    let referenced = reference
        .as_ref()
        .and_then(|r| r.get("message_id"))
        .and_then(Value::as_str)
        .and_then(|m| {
            shared
                .messages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(m)
                .cloned()
        });
    let mut message = Map::new();
    message.insert("id".into(), json!(id));
    message.insert("channel_id".into(), json!(channel_id));
    message.insert(
        "type".into(),
        json!(if reference.is_some() { 19 } else { 0 }),
    );
    message.insert("content".into(), json!(content));
    message.insert("author".into(), shared.author());
    message.insert("embeds".into(), embeds);
    message.insert(
        "components".into(),
        stored_components(sent.get("components")),
    );
    message.insert("attachments".into(), json!([]));
    message.insert("mentions".into(), json!([]));
    message.insert("mention_roles".into(), json!([]));
    message.insert("mention_everyone".into(), json!(false));
    message.insert("pinned".into(), json!(false));
    message.insert("tts".into(), json!(false));
    message.insert("flags".into(), json!(0));
    message.insert("timestamp".into(), json!(now_rfc3339()));
    message.insert("edited_timestamp".into(), Value::Null);
    if let Some(reference) = &reference {
        let mut r = reference.clone();
        if let Some(obj) = r.as_object_mut() {
            obj.insert("type".into(), json!(0));
            obj.insert("guild_id".into(), json!(GUILD_ID));
            obj.remove("fail_if_not_exists");
        }
        message.insert("message_reference".into(), r);
        message.insert(
            "referenced_message".into(),
            referenced.unwrap_or(Value::Null),
        );
    }
    let message = Value::Object(message);
    shared
        .messages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), message.clone());
    shared.record(DiscordCall {
        method: "POST".to_owned(),
        path: format!("/api/v10/channels/{channel_id}/messages"),
        channel_id,
        message_id: id,
        body: sent,
    });
    axum::Json(message).into_response()
}

async fn edit_message(
    State(shared): State<Arc<Shared>>,
    Path((channel_id, message_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.authorized(&headers) {
        return unauthorized();
    }
    let Ok(sent) = serde_json::from_slice::<Value>(&body) else {
        return invalid_body("Invalid Form Body");
    };
    let updated = {
        let mut messages = shared.messages.lock().unwrap_or_else(|p| p.into_inner());
        let Some(message) = messages
            .get_mut(&message_id)
            .filter(|m| m.get("channel_id").and_then(Value::as_str) == Some(channel_id.as_str()))
        else {
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Unknown Message", "code": 10008})),
            )
                .into_response();
        };
        if let Some(content) = sent.get("content") {
            message["content"] = content.clone();
        }
        if sent.get("embeds").is_some() {
            message["embeds"] = stored_embeds(sent.get("embeds"));
        }
        if sent.get("components").is_some() {
            message["components"] = stored_components(sent.get("components"));
        }
        message["edited_timestamp"] = json!(now_rfc3339());
        message.clone()
    };
    shared.record(DiscordCall {
        method: "PATCH".to_owned(),
        path: format!("/api/v10/channels/{channel_id}/messages/{message_id}"),
        channel_id,
        message_id,
        body: sent,
    });
    axum::Json(updated).into_response()
}

async fn create_followup(
    State(shared): State<Arc<Shared>>,
    Path((application_id, token)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    // Interaction webhooks authenticate by their token, not the bot's.
    if application_id != shared.application_id || !token.starts_with("aW50ZXJhY3Rpb246") {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Unknown Webhook", "code": 10015})),
        )
            .into_response();
    }
    let Ok(sent) = serde_json::from_slice::<Value>(&body) else {
        return invalid_body("Invalid Form Body");
    };
    let id = shared.snowflake();
    let message = json!({
        "id": id, "channel_id": FOLLOWUP_CHANNEL_ID, "type": 0, "webhook_id": application_id,
        "application_id": application_id,
        "content": sent.get("content").cloned().unwrap_or(json!("")),
        "author": shared.author(), "embeds": [], "components": [], "attachments": [],
        "mentions": [], "mention_roles": [], "mention_everyone": false, "pinned": false,
        "tts": false, "flags": sent.get("flags").cloned().unwrap_or(json!(0)),
        "timestamp": now_rfc3339(), "edited_timestamp": null,
    });
    shared.record(DiscordCall {
        method: "POST".to_owned(),
        path: format!("/api/v10/webhooks/{application_id}/{{token}}"),
        channel_id: String::new(),
        message_id: id,
        body: sent,
    });
    axum::Json(message).into_response()
}
