//! A fake Slack for tests: the Web API methods the approval service calls, and callbacks
//! (interactivity, Events API) signed exactly as Slack signs them.
//!
//! - Web API: `POST /api/chat.postMessage`, `/api/chat.update`, `/api/chat.postEphemeral`,
//!   JSON or form bodies, `Authorization: Bearer <bot token>` (or a form `token`). A wrong
//!   token gets `{"ok":false,"error":"invalid_auth"}` with HTTP 200, as Slack answers. Every
//!   call is recorded ([`FakeSlack::calls`]); posted messages are kept with their latest
//!   update ([`FakeSlack::messages`]).
//! - Callbacks: [`FakeSlack::click`] (a `block_actions` payload), [`FakeSlack::react`] (an
//!   Events API `reaction_added` / `reaction_removed` envelope) and
//!   [`FakeSlack::url_verification`], each signed with v0 HMAC-SHA256 over
//!   `v0:{timestamp}:{body}`. The `*_request` builders and [`FakeSlack::signed_request`]
//!   return the parts, so a test can forge, age or replay a delivery and [`FakeSlack::send`] it.
//!
//! ```ignore
//! let slack = FakeSlack::start("xoxb-test", "signing-secret").await;
//! // configure the service with api_url = slack.api_url()
//! let (status, _) = slack.click(&service_url, "U1", "C1", &ts, "gatehouse_approve", &id).await;
//! slack.wait_for(|calls| calls.iter().any(|c| c.method == "chat.update"), secs(5)).await?;
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The fake workspace's fixed ids.
pub const TEAM_ID: &str = "T0FAKETEAM";
pub const APP_ID: &str = "A0FAKEAPP";
pub const BOT_USER_ID: &str = "U0FAKEBOT";
pub const BOT_ID: &str = "B0FAKEBOT";
/// Makes each click's `trigger_id` unique.
static NEXT_TRIGGER: AtomicU64 = AtomicU64::new(1);

/// Slack's deprecated per-app verification token, present in payloads; not the bot token.
const VERIFICATION_TOKEN: &str = "fakeVerificationTokenXYZ";

/// One Web API call as the fake received it (the token taken out of form bodies).
#[derive(Clone, Debug, PartialEq)]
pub struct SlackCall {
    /// `chat.postMessage`, `chat.update`, ...
    pub method: String,
    /// The arguments, JSON or form alike; form fields holding JSON (`blocks`) are parsed.
    pub body: Value,
    /// Whether the call carried the right bot token.
    pub authorized: bool,
}

/// A message as it now stands in the fake channel (after any `chat.update`).
#[derive(Clone, Debug, PartialEq)]
pub struct FakeMessage {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: Option<String>,
    /// `Value::Null` when the message has no blocks.
    pub blocks: Value,
    /// How many times `chat.update` changed it.
    pub updates: u32,
}

/// The parts of one signed callback delivery; change any of them to forge, age or replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    /// `/slack/interactivity` or `/slack/events`.
    pub path: String,
    pub content_type: String,
    pub body: String,
    /// `X-Slack-Request-Timestamp`.
    pub timestamp: String,
    /// `X-Slack-Signature`: `v0=<hex>`.
    pub signature: String,
}

#[derive(Default)]
struct Inner {
    calls: Vec<SlackCall>,
    messages: Vec<FakeMessage>,
    issued_ts: u64,
}

struct Shared {
    bot_token: String,
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake Slack; its server stops when this is dropped.
pub struct FakeSlack {
    addr: SocketAddr,
    shared: Arc<Shared>,
    signing_secret: String,
    client: Client<HttpConnector, Full<Bytes>>,
    events: AtomicU64,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeSlack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSlack")
            .field("addr", &self.addr)
            .field("bot_token", &"<redacted>")
            .field("signing_secret", &"<redacted>")
            .finish()
    }
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seconds since the epoch, as Slack's timestamps count them.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `v0=<hex>` of HMAC-SHA256 over `v0:{timestamp}:{body}`, as Slack signs.
pub fn sign(signing_secret: &str, timestamp: &str, body: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(signing_secret.as_bytes()) else {
        // HMAC takes keys of any length.
        return String::new();
    };
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

impl FakeSlack {
    /// Starts the fake on `127.0.0.1:0`.
    pub async fn start(bot_token: &str, signing_secret: &str) -> FakeSlack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake slack: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake slack: a bound listener has an address");
        let shared = Arc::new(Shared {
            bot_token: bot_token.to_owned(),
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
        });
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::post(api))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "fake slack stopped");
            }
        });
        FakeSlack {
            addr,
            shared,
            signing_secret: signing_secret.to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            events: AtomicU64::new(0),
            task,
        }
    }

    /// The Web API base, `http://127.0.0.1:<port>/api/`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    pub fn calls(&self) -> Vec<SlackCall> {
        self.shared.lock().calls.clone()
    }

    /// The calls of one method, in order.
    pub fn calls_to(&self, method: &str) -> Vec<SlackCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Messages posted (top-level and thread replies), as they now stand, in posting order.
    pub fn messages(&self) -> Vec<FakeMessage> {
        self.shared.lock().messages.clone()
    }

    pub fn message(&self, channel: &str, ts: &str) -> Option<FakeMessage> {
        self.shared
            .lock()
            .messages
            .iter()
            .find(|m| m.channel == channel && m.ts == ts)
            .cloned()
    }

    /// Waits until `predicate` holds for the calls so far, and returns them; errors after
    /// `deadline`, listing the methods that were called.
    pub async fn wait_for<F>(
        &self,
        mut predicate: F,
        deadline: Duration,
    ) -> Result<Vec<SlackCall>, String>
    where
        F: FnMut(&[SlackCall]) -> bool,
    {
        let met = super::wait_until(&self.shared.changed, deadline, || {
            let calls = self.calls();
            predicate(&calls).then_some(calls)
        })
        .await;
        met.ok_or_else(|| {
            let calls = self.calls();
            let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
            format!("fake slack: condition not met within {deadline:?}; calls so far: {methods:?}")
        })
    }

    /// A delivery signed with this fake's signing secret at `timestamp`.
    pub fn signed_request(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        timestamp: u64,
    ) -> SignedRequest {
        let timestamp = timestamp.to_string();
        SignedRequest {
            path: path.to_owned(),
            content_type: content_type.to_owned(),
            body: body.to_owned(),
            signature: sign(&self.signing_secret, &timestamp, body),
            timestamp,
        }
    }

    /// Posts a delivery to `url_base` + its path. A transport failure comes back as 502
    /// with the error, so a test sees it in its assertion.
    pub async fn send(&self, url_base: &str, request: &SignedRequest) -> (StatusCode, String) {
        let url = format!("{}{}", url_base.trim_end_matches('/'), request.path);
        let built = hyper::Request::post(&url)
            .header(header::CONTENT_TYPE, &request.content_type)
            .header("x-slack-request-timestamp", &request.timestamp)
            .header("x-slack-signature", &request.signature)
            .header(
                header::USER_AGENT,
                "Slackbot 1.0 (+https://api.slack.com/robots)",
            )
            .body(Full::new(Bytes::from(request.body.clone())));
        let built = match built {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::BAD_GATEWAY,
                    format!("fake slack: bad request: {e}"),
                );
            }
        };
        match self.client.request(built).await {
            Ok(response) => {
                let status = response.status();
                let body = match response.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                    Err(e) => format!("fake slack: reading the answer: {e}"),
                };
                (status, body)
            }
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                format!("fake slack: could not deliver to {url}: {e}"),
            ),
        }
    }

    /// Slack's `block_actions` payload for a button click on a message, as JSON.
    pub fn block_actions_payload(
        &self,
        user_id: &str,
        channel: &str,
        message_ts: &str,
        action_id: &str,
        value: &str,
    ) -> Value {
        let ts = now();
        let (label, style) = if action_id.contains("deny") {
            ("Deny", "danger")
        } else {
            ("Approve", "primary")
        };
        let message = match self.message(channel, message_ts) {
            Some(m) => {
                let mut message = json!({
                    "type": "message",
                    "user": BOT_USER_ID,
                    "bot_id": BOT_ID,
                    "app_id": APP_ID,
                    "team": TEAM_ID,
                    "ts": m.ts,
                    "text": m.text.unwrap_or_default(),
                });
                if !m.blocks.is_null() {
                    message["blocks"] = m.blocks;
                }
                message
            }
            None => json!({
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "ts": message_ts,
                "text": "",
            }),
        };
        json!({
            "type": "block_actions",
            "user": {
                "id": user_id,
                "username": format!("user-{}", user_id.to_lowercase()),
                "name": format!("user-{}", user_id.to_lowercase()),
                "team_id": TEAM_ID,
            },
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": false,
            },
            // Unique per interaction, as Slack's are: the receiver may deduplicate by it.
            "trigger_id": format!(
                "{ts}.1234567890.{:032x}",
                NEXT_TRIGGER.fetch_add(1, Ordering::Relaxed)
            ),
            "team": { "id": TEAM_ID, "domain": "gatehouse-test" },
            "enterprise": null,
            "is_enterprise_install": false,
            "channel": { "id": channel, "name": "approvals" },
            "message": message,
            "state": { "values": {} },
            "response_url": format!("https://hooks.slack.com/actions/{TEAM_ID}/{ts}/fakeResponseUrlSecret"),
            "actions": [{
                "action_id": action_id,
                "block_id": "gatehouse_vote",
                "text": { "type": "plain_text", "text": label, "emoji": true },
                "value": value,
                "style": style,
                "type": "button",
                "action_ts": format!("{ts}.123456"),
            }],
        })
    }

    /// A signed `POST /slack/interactivity` for a button click, signed now.
    pub fn click_request(
        &self,
        user_id: &str,
        channel: &str,
        message_ts: &str,
        action_id: &str,
        approval_id: &str,
    ) -> SignedRequest {
        let payload =
            self.block_actions_payload(user_id, channel, message_ts, action_id, approval_id);
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        self.signed_request(
            "/slack/interactivity",
            "application/x-www-form-urlencoded",
            &body,
            now(),
        )
    }

    /// Clicks a button (`action_id`, value `approval_id`) on a message.
    pub async fn click(
        &self,
        url_base: &str,
        user_id: &str,
        channel: &str,
        message_ts: &str,
        action_id: &str,
        approval_id: &str,
    ) -> (StatusCode, String) {
        let request = self.click_request(user_id, channel, message_ts, action_id, approval_id);
        self.send(url_base, &request).await
    }

    /// A fresh Events API `event_id`.
    pub fn next_event_id(&self) -> String {
        let n = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        format!("Ev0FAKE{n:06}")
    }

    /// The Events API envelope of a reaction added to (or removed from) a message.
    pub fn reaction_body(
        &self,
        user_id: &str,
        channel: &str,
        ts: &str,
        emoji: &str,
        added: bool,
        event_id: &str,
    ) -> String {
        let at = now();
        json!({
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "context_team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "event": {
                "type": if added { "reaction_added" } else { "reaction_removed" },
                "user": user_id,
                "reaction": emoji,
                "item": { "type": "message", "channel": channel, "ts": ts },
                "item_user": BOT_USER_ID,
                "event_ts": format!("{at}.000200"),
            },
            "type": "event_callback",
            "event_id": event_id,
            "event_time": at,
            "authorizations": [{
                "enterprise_id": null,
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": true,
                "is_enterprise_install": false,
            }],
            "is_ext_shared_channel": false,
            "event_context": "4-eyJldCI6InJlYWN0aW9uX2FkZGVkIn0",
        })
        .to_string()
    }

    /// A signed `POST /slack/events` for a reaction, with a fresh event id, signed now.
    pub fn react_request(
        &self,
        user_id: &str,
        channel: &str,
        ts: &str,
        emoji: &str,
        added: bool,
    ) -> SignedRequest {
        let body = self.reaction_body(user_id, channel, ts, emoji, added, &self.next_event_id());
        self.signed_request("/slack/events", "application/json", &body, now())
    }

    /// Adds (or removes) reaction `emoji` (a name like `white_check_mark`) on a message.
    pub async fn react(
        &self,
        url_base: &str,
        user_id: &str,
        channel: &str,
        ts: &str,
        emoji: &str,
        added: bool,
    ) -> (StatusCode, String) {
        let request = self.react_request(user_id, channel, ts, emoji, added);
        self.send(url_base, &request).await
    }

    /// The signed `url_verification` handshake Slack sends when the events URL is set.
    pub fn url_verification_request(&self, challenge: &str) -> SignedRequest {
        let body = json!({
            "token": VERIFICATION_TOKEN,
            "challenge": challenge,
            "type": "url_verification",
        })
        .to_string();
        self.signed_request("/slack/events", "application/json", &body, now())
    }

    pub async fn url_verification(&self, url_base: &str, challenge: &str) -> (StatusCode, String) {
        let request = self.url_verification_request(challenge);
        self.send(url_base, &request).await
    }
}

fn slack_ok(mut body: Value) -> Response {
    body["ok"] = Value::Bool(true);
    axum::Json(body).into_response()
}

/// Slack reports failures with HTTP 200 and `ok: false`.
fn slack_error(error: &str) -> Response {
    axum::Json(json!({ "ok": false, "error": error })).into_response()
}

/// Form fields Slack accepts as JSON-encoded strings.
const JSON_FIELDS: [&str; 3] = ["blocks", "attachments", "metadata"];

/// The arguments and the token they carried, from a JSON or form body.
fn arguments(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Map<String, Value>, Option<String>), &'static str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok((map, bearer)),
            _ => Err("invalid_json"),
        };
    }
    let mut map = Map::new();
    let mut token = None;
    for (key, value) in form_urlencoded::parse(body) {
        if key == "token" {
            token = Some(value.into_owned());
            continue;
        }
        let value = if JSON_FIELDS.contains(&key.as_ref()) {
            serde_json::from_str(&value).unwrap_or(Value::String(value.into_owned()))
        } else {
            Value::String(value.into_owned())
        };
        map.insert(key.into_owned(), value);
    }
    Ok((map, bearer.or(token)))
}

fn text_arg(args: &Map<String, Value>, key: &str) -> Option<String> {
    match args.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn has_content(args: &Map<String, Value>) -> bool {
    text_arg(args, "text").is_some()
        || args
            .get("blocks")
            .and_then(Value::as_array)
            .is_some_and(|b| !b.is_empty())
        || args
            .get("attachments")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
}

async fn api(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (args, token) = match arguments(&headers, &body) {
        Ok(parsed) => parsed,
        Err(error) => return slack_error(error),
    };
    let authorized = token.as_deref() == Some(shared.bot_token.as_str());
    let response = {
        let mut inner = shared.lock();
        inner.calls.push(SlackCall {
            method: method.clone(),
            body: Value::Object(args.clone()),
            authorized,
        });
        match (token, authorized) {
            (None, _) => slack_error("not_authed"),
            (Some(_), false) => slack_error("invalid_auth"),
            (Some(_), true) => handle(&mut inner, &method, &args),
        }
    };
    shared.changed.notify_waiters();
    response
}

fn next_ts(inner: &mut Inner) -> String {
    inner.issued_ts += 1;
    let micros = inner.issued_ts * 100;
    format!(
        "{}.{:06}",
        1_700_000_000 + micros / 1_000_000,
        micros % 1_000_000
    )
}

fn handle(inner: &mut Inner, method: &str, args: &Map<String, Value>) -> Response {
    match method {
        "chat.postMessage" => {
            let Some(channel) = text_arg(args, "channel") else {
                return slack_error("channel_not_found");
            };
            if !has_content(args) {
                return slack_error("no_text");
            }
            let ts = next_ts(inner);
            let thread_ts = text_arg(args, "thread_ts");
            let text = text_arg(args, "text");
            let blocks = args.get("blocks").cloned().unwrap_or(Value::Null);
            let mut message = json!({
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "team": TEAM_ID,
                "ts": ts,
                "text": text.clone().unwrap_or_default(),
            });
            if !blocks.is_null() {
                message["blocks"] = blocks.clone();
            }
            if let Some(parent) = &thread_ts {
                message["thread_ts"] = json!(parent);
                message["parent_user_id"] = json!(BOT_USER_ID);
            }
            inner.messages.push(FakeMessage {
                channel: channel.clone(),
                ts: ts.clone(),
                thread_ts,
                text,
                blocks,
                updates: 0,
            });
            slack_ok(json!({ "channel": channel, "ts": ts, "message": message }))
        }
        "chat.update" => {
            let (Some(channel), Some(ts)) = (text_arg(args, "channel"), text_arg(args, "ts"))
            else {
                return slack_error("invalid_arguments");
            };
            let Some(existing) = inner
                .messages
                .iter_mut()
                .find(|m| m.channel == channel && m.ts == ts)
            else {
                return slack_error("message_not_found");
            };
            if !has_content(args) {
                return slack_error("no_text");
            }
            // As Slack: fields left out keep their previous value.
            if let Some(text) = text_arg(args, "text") {
                existing.text = Some(text);
            }
            if let Some(blocks) = args.get("blocks") {
                existing.blocks = blocks.clone();
            }
            existing.updates += 1;
            let mut message = json!({
                "type": "message",
                "user": BOT_USER_ID,
                "bot_id": BOT_ID,
                "text": existing.text.clone().unwrap_or_default(),
                "edited": { "user": BOT_USER_ID, "ts": format!("{}.000000", now()) },
            });
            if !existing.blocks.is_null() {
                message["blocks"] = existing.blocks.clone();
            }
            slack_ok(json!({
                "channel": channel,
                "ts": ts,
                "text": existing.text.clone().unwrap_or_default(),
                "message": message,
            }))
        }
        "chat.postEphemeral" => {
            let Some(_channel) = text_arg(args, "channel") else {
                return slack_error("channel_not_found");
            };
            let Some(_user) = text_arg(args, "user") else {
                return slack_error("user_not_in_channel");
            };
            if !has_content(args) {
                return slack_error("no_text");
            }
            let ts = next_ts(inner);
            slack_ok(json!({ "message_ts": ts }))
        }
        _ => slack_error("unknown_method"),
    }
}
