//! Microsoft Teams: hold cards (Adaptive Cards 1.4 with `Action.Execute` Approve / Deny) posted
//! through the Bot Framework connector, and the bot endpoint (`POST /teams/messages`) that turns
//! an `adaptiveCard/action` invoke into a [`VoteCall`].
//!
//! Outbound calls carry an access token from the OAuth2 client-credentials grant (cached until
//! shortly before it expires). Inbound activities carry a Bot Framework JWT that is checked
//! before anything in the activity is acted on: RS256 only, a key from the Bot Framework's
//! OpenID metadata (refetched on an unknown `kid`, at most once a minute), issuer, audience (our
//! app id), `exp`/`nbf` with five minutes' leeway, the `serviceurl` claim equal to the
//! activity's `serviceUrl`, and the key's endorsements naming the activity's channel. The voter
//! is `from.id`, never a display name. A delivery is counted once (`teams:<activity id>`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gatehouse_events::{Ballot, ChannelKind, VoteVia};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::channel::{
    ChannelError, HoldState, HoldView, Posted, VoteCall, VoteLine, VoteReply, VoteSink,
    ballot_past, channel_name, via_name,
};

const PLATFORM: &str = "teams";

pub const DEFAULT_TOKEN_URL: &str =
    "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token";
pub const DEFAULT_OPENID_METADATA_URL: &str =
    "https://login.botframework.com/v1/.well-known/openidconfiguration";
pub const DEFAULT_ISSUER: &str = "https://api.botframework.com";
const SCOPE: &str = "https://api.botframework.com/.default";

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5 * 60;
/// An unknown `kid` refetches the keys at most this often (forged tokens must not turn us
/// into a load generator against Microsoft).
const KEYS_MIN_REFETCH: Duration = Duration::from_secs(60);
/// Keys are refetched after this long even when every `kid` is known (Microsoft rotates them).
const KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Refresh the access token this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE_BYTES: usize = 1 << 20;

const CARD_CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";
const MESSAGE_CONTENT_TYPE: &str = "application/vnd.microsoft.activity.message";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsConfig {
    /// The bot's Microsoft App ID: the audience of callback tokens, the client id for ours.
    pub app_id: String,
    /// File holding the bot's app password (client secret).
    pub app_password_file: PathBuf,
    /// Bot Framework connector base URL for the conversation (the activity's `serviceUrl`).
    pub service_url: String,
    /// The conversation (channel) to post holds in.
    pub conversation_id: String,
    /// Default `https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Default `https://login.botframework.com/v1/.well-known/openidconfiguration`.
    #[serde(default)]
    pub openid_metadata_url: Option<String>,
    /// Default `https://api.botframework.com`.
    #[serde(default)]
    pub issuer: Option<String>,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct TeamsChannel {
    app_id: String,
    app_password: String,
    /// Without a trailing slash.
    service_url: String,
    conversation_id: String,
    token_url: String,
    openid_metadata_url: String,
    issuer: String,
    client: HttpClient,
    token: Mutex<Option<AccessToken>>,
    keys: Mutex<KeyCache>,
}

impl std::fmt::Debug for TeamsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamsChannel")
            .field("app_id", &self.app_id)
            .field("service_url", &self.service_url)
            .field("conversation_id", &self.conversation_id)
            .field("token_url", &self.token_url)
            .field("openid_metadata_url", &self.openid_metadata_url)
            .field("issuer", &self.issuer)
            .field("app_password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

struct AccessToken {
    value: String,
    refresh_at: Instant,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<SigningKey>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

#[derive(Clone)]
struct SigningKey {
    kid: String,
    key: Arc<DecodingKey>,
    /// The channels this key may sign for (`msteams`, …), when the JWKS says.
    endorsements: Option<Vec<String>>,
}

fn http_url(what: &str, url: &str) -> Result<(), String> {
    match url.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            Ok(())
        }
        _ => Err(format!("teams: {what} is not an http(s) URL")),
    }
}

impl TeamsChannel {
    /// Reads the app password file and checks the URLs; no network call yet.
    pub async fn new(config: &TeamsConfig) -> Result<Self, String> {
        if config.app_id.trim().is_empty() {
            return Err("teams: app_id is empty".to_owned());
        }
        if config.conversation_id.trim().is_empty() {
            return Err("teams: conversation_id is empty".to_owned());
        }
        let app_password = tokio::fs::read_to_string(&config.app_password_file)
            .await
            .map_err(|e| {
                format!(
                    "teams: reading app_password_file {}: {}",
                    config.app_password_file.display(),
                    e.kind()
                )
            })?
            .trim()
            .to_owned();
        if app_password.is_empty() {
            return Err(format!(
                "teams: app_password_file {} is empty",
                config.app_password_file.display()
            ));
        }
        let token_url = config.token_url.as_deref().unwrap_or(DEFAULT_TOKEN_URL);
        let openid_metadata_url = config
            .openid_metadata_url
            .as_deref()
            .unwrap_or(DEFAULT_OPENID_METADATA_URL);
        http_url("service_url", &config.service_url)?;
        http_url("token_url", token_url)?;
        http_url("openid_metadata_url", openid_metadata_url)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            app_id: config.app_id.trim().to_owned(),
            app_password,
            service_url: config.service_url.trim_end_matches('/').to_owned(),
            conversation_id: config.conversation_id.clone(),
            token_url: token_url.to_owned(),
            openid_metadata_url: openid_metadata_url.to_owned(),
            issuer: config
                .issuer
                .clone()
                .unwrap_or_else(|| DEFAULT_ISSUER.to_owned()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            token: Mutex::new(None),
            keys: Mutex::new(KeyCache::default()),
        })
    }

    pub async fn post(&self, view: &HoldView) -> Result<Posted, ChannelError> {
        let activity = json!({
            "type": "message",
            "summary": view.headline(),
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "content": card(view)}],
        });
        let url = self.activities_url(&self.conversation_id, None);
        let answer = self
            .connector(Method::POST, &url, &activity, "posting the hold")
            .await?;
        let id = answer
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ChannelError::new(PLATFORM, "posting the hold: the connector returned no id")
            })?;
        Ok(Posted {
            channel: ChannelKind::Teams,
            channel_id: self.conversation_id.clone(),
            message_ref: id.to_owned(),
        })
    }

    pub async fn update(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        let activity = json!({
            "type": "message",
            "id": posted.message_ref,
            "summary": view.headline(),
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "content": card(view)}],
        });
        let url = self.activities_url(&posted.channel_id, Some(&posted.message_ref));
        self.connector(Method::PUT, &url, &activity, "updating the hold")
            .await?;
        Ok(())
    }

    /// Replies to the hold card (in its thread) with who decided and how.
    pub async fn announce(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        let activity = json!({
            "type": "message",
            // Plain: nothing a requester typed is rendered as markup.
            "textFormat": "plain",
            "text": announcement(view),
            "replyToId": posted.message_ref,
        });
        // Bot Framework's ReplyToActivity.
        let url = self.activities_url(&posted.channel_id, Some(&posted.message_ref));
        self.connector(Method::POST, &url, &activity, "announcing the decision")
            .await?;
        Ok(())
    }

    fn activities_url(&self, conversation: &str, activity: Option<&str>) -> String {
        let mut url = format!(
            "{}/v3/conversations/{}/activities",
            self.service_url,
            path_segment(conversation)
        );
        if let Some(id) = activity {
            url.push('/');
            url.push_str(&path_segment(id));
        }
        url
    }

    /// One connector call; a 401 drops the cached token and retries once with a fresh one.
    async fn connector(
        &self,
        method: Method,
        url: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, ChannelError> {
        let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| self.error(what, e))?);
        let mut retried = false;
        loop {
            let token = self.access_token().await?;
            let (status, answer) = self
                .send(
                    method.clone(),
                    url,
                    Some(&format!("Bearer {token}")),
                    "application/json",
                    bytes.clone(),
                )
                .await
                .map_err(|e| self.error(what, e))?;
            if status == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                *self.token.lock().await = None;
                continue;
            }
            if status.is_success() {
                return Ok(serde_json::from_slice(&answer).unwrap_or(Value::Null));
            }
            // `{"error": {"code", "message"}}`, or an older `{"message"}`.
            let parsed: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            let code = parsed
                .pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("no error code");
            let message = parsed
                .pointer("/error/message")
                .or_else(|| parsed.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(self.error(
                what,
                format!("HTTP {} ({code}): {}", status.as_u16(), clip(message, 300)),
            ));
        }
    }

    /// The connector access token, from the cache or the client-credentials grant.
    async fn access_token(&self) -> Result<String, ChannelError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.app_id)
            .append_pair("client_secret", &self.app_password)
            .append_pair("scope", SCOPE)
            .finish();
        let what = "getting an access token";
        let (status, answer) = self
            .send(
                Method::POST,
                &self.token_url,
                None,
                "application/x-www-form-urlencoded",
                Bytes::from(form),
            )
            .await
            .map_err(|e| self.error(what, e))?;
        let parsed: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = parsed
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code");
            let description = parsed
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(self.error(
                what,
                format!(
                    "HTTP {} ({code}): {}",
                    status.as_u16(),
                    clip(description, 300)
                ),
            ));
        }
        let value = parsed
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.error(what, "the answer holds no access_token"))?
            .to_owned();
        // A number in v2.0 answers, a string in older ones.
        let lifetime = match parsed.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(600));
        let margin = TOKEN_MARGIN.min(lifetime / 2);
        *cached = Some(AccessToken {
            value: value.clone(),
            refresh_at: Instant::now() + (lifetime - margin),
        });
        Ok(value)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, content_type);
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| "the request could not be built (bad URL?)".to_owned())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {}s", HTTP_TIMEOUT.as_secs()))?
    }

    fn error(&self, what: &str, detail: impl std::fmt::Display) -> ChannelError {
        let mut text = format!("{what}: {detail}");
        // Belt and braces: nothing Microsoft echoes may carry our secret out in an error.
        text = text.replace(&self.app_password, "[redacted]");
        if let Ok(token) = self.token.try_lock()
            && let Some(token) = token.as_ref()
        {
            text = text.replace(&token.value, "[redacted]");
        }
        ChannelError::new(PLATFORM, text)
    }

    /// Verifies a Bot Framework JWT; the claims and the signing key's endorsements on success.
    async fn verify(&self, token: &str) -> Result<(Map<String, Value>, SigningKey), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "the token is not a JWT".to_owned())?;
        if header.alg != Algorithm::RS256 {
            return Err(format!(
                "the token is signed with {:?}, not RS256",
                header.alg
            ));
        }
        let kid = header.kid.ok_or("the token names no signing key (kid)")?;
        let key = self.signing_key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[&self.app_id]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| format!("the token does not verify: {:?}", e.kind()))?;
        Ok((data.claims, key))
    }

    /// The published key `kid`, fetching the keys on first use, when they are old, or (at most
    /// once a minute) when `kid` is unknown.
    async fn signing_key(&self, kid: &str) -> Result<SigningKey, String> {
        let mut cache = self.keys.lock().await;
        let fresh = cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
        if fresh && let Some(key) = cache.keys.iter().find(|k| k.kid == kid) {
            return Ok(key.clone());
        }
        let may_fetch = cache
            .attempted_at
            .is_none_or(|at| at.elapsed() >= KEYS_MIN_REFETCH);
        if may_fetch {
            cache.attempted_at = Some(Instant::now());
            match self.fetch_keys().await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched_at = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "fetching the Bot Framework keys failed"),
            }
        }
        cache
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .cloned()
            .ok_or_else(|| "the token's signing key is not published".to_owned())
    }

    async fn fetch_keys(&self) -> Result<Vec<SigningKey>, String> {
        let metadata = self.get_json(&self.openid_metadata_url).await?;
        let jwks_uri = metadata
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the OpenID metadata names no jwks_uri")?;
        http_url("jwks_uri", jwks_uri)?;
        let jwks = self.get_json(jwks_uri).await?;
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the JWKS holds no keys")?;
        let mut parsed = Vec::new();
        for entry in keys {
            let Some(kid) = entry.get("kid").and_then(Value::as_str) else {
                continue;
            };
            // A key of a type we cannot use is skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let endorsements = entry
                .get("endorsements")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                });
            parsed.push(SigningKey {
                kid: kid.to_owned(),
                key: Arc::new(key),
                endorsements,
            });
        }
        Ok(parsed)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let request = http::Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| "bad URL".to_owned())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("GET {url}: HTTP {}", status.as_u16()));
            }
            serde_json::from_slice(&body).map_err(|_| format!("GET {url}: not JSON"))
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("GET {url}: no answer in time"))?
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes one URL path segment (Teams conversation ids hold `:`, `@`, `;`).
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// The hold as an Adaptive Card; `Action.Execute` buttons only while it is pending.
pub fn card(view: &HoldView) -> Value {
    let text = |v: &str| escape(v);
    let or = |v: &Option<String>, none: &str| match v.as_deref() {
        Some(s) if !s.trim().is_empty() => escape(s),
        _ => none.to_owned(),
    };
    let mut facts = vec![
        ("Principal", text(&view.principal)),
        ("Owner", or(&view.owner, "unknown")),
        ("Team", or(&view.team, "unknown")),
    ];
    if let Some(purpose) = view.purpose.as_deref().filter(|p| !p.trim().is_empty()) {
        facts.push(("Purpose", text(purpose)));
    }
    facts.extend([
        ("Verb", text(&view.verb)),
        ("Resource", text(&view.resource)),
        (
            "Namespace",
            if view.namespace.is_empty() {
                "(cluster-scoped)".to_owned()
            } else {
                text(&view.namespace)
            },
        ),
        (
            "Name",
            if view.name.is_empty() {
                "(all)".to_owned()
            } else {
                text(&view.name)
            },
        ),
        ("Reason", or(&view.reason, "(none given)")),
        ("Rule", text(&view.rule)),
        (
            "Approvers",
            format!(
                "{} (quorum {})",
                if view.approver_groups.is_empty() {
                    "(no groups)".to_owned()
                } else {
                    text(&view.approver_groups.join(", "))
                },
                view.quorum
            ),
        ),
        ("Expires", text(&view.expires_at)),
    ]);
    let colour = match view.state {
        HoldState::Pending { .. } => "Warning",
        HoldState::Approved { .. } => "Good",
        HoldState::Denied { .. } => "Attention",
        HoldState::Expired { .. } | HoldState::Withdrawn { .. } => "Default",
    };
    let mut card = json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": text(&view.headline()), "weight": "Bolder",
             "size": "Medium", "wrap": true},
            {"type": "TextBlock", "text": text(&view.status_line()), "weight": "Bolder",
             "color": colour, "wrap": true},
            {"type": "FactSet", "facts": facts.into_iter()
                .map(|(title, value)| json!({"title": title, "value": value}))
                .collect::<Vec<_>>()},
            {"type": "TextBlock", "text": "Votes", "weight": "Bolder", "spacing": "Medium"},
            {"type": "TextBlock", "text": votes_text(&view.votes), "wrap": true},
            {"type": "TextBlock", "text": format!("approval {} · request {}",
                text(&view.approval_id), text(&view.request_id)),
             "isSubtle": true, "size": "Small", "wrap": true},
        ],
    });
    let open = view.page_url.as_deref().map(|url| {
        json!({"type": "Action.OpenUrl", "title": if view.step_up { "Review and sign in to vote" } else { "Details" }, "url": url})
    });
    if !view.is_decided() && view.step_up {
        // Chat alone cannot vote on this hold: only the page, after a fresh sign-in.
        card["actions"] = json!(open.into_iter().collect::<Vec<_>>());
    } else if !view.is_decided() {
        let data = json!({"approval_id": view.approval_id});
        let mut actions = vec![
            json!({"type": "Action.Execute", "title": "Approve", "verb": "approve",
             "data": data, "style": "positive"}),
            json!({"type": "Action.Execute", "title": "Deny", "verb": "deny",
             "data": data, "style": "destructive"}),
        ];
        actions.extend(open);
        card["actions"] = json!(actions);
    }
    card
}

fn votes_text(votes: &[VoteLine]) -> String {
    if votes.is_empty() {
        return "None yet".to_owned();
    }
    votes
        .iter()
        .map(|v| {
            format!(
                "- {} {} ({} {}, {})",
                escape(&v.approver),
                ballot_past(v.ballot),
                channel_name(v.channel),
                via_name(v.via),
                escape(&v.at)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Plain text: "Approved by alice, bob: …" and how each vote was cast.
fn announcement(view: &HoldView) -> String {
    let mut text = format!("{}: {}", view.status_line(), view.headline());
    match &view.state {
        HoldState::Approved { decided_at, .. }
        | HoldState::Denied { decided_at, .. }
        | HoldState::Expired { decided_at } => text.push_str(&format!(" (at {decided_at})")),
        HoldState::Withdrawn { at, .. } => text.push_str(&format!(" (at {at})")),
        HoldState::Pending { .. } => {}
    }
    for v in &view.votes {
        text.push_str(&format!(
            "\n- {} {} via {} {} at {}",
            v.approver,
            ballot_past(v.ballot),
            channel_name(v.channel),
            via_name(v.via),
            v.at
        ));
    }
    text.push_str(&format!("\napproval {}", view.approval_id));
    text
}

/// Escapes the Markdown subset Adaptive Cards render, so user text shows as typed.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut line_start = true;
    for c in text.chars() {
        match c {
            '\\' | '*' | '_' | '~' | '`' | '[' | ']' | '<' | '>' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '-' | '+' if line_start => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        if c == '\n' {
            line_start = true;
        } else if !c.is_whitespace() {
            line_start = false;
        }
    }
    out
}

/// The activity fields the endpoint reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Activity {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    service_url: Option<String>,
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    from: Option<Account>,
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Account {
    id: String,
}

/// `POST /teams/messages`.
pub fn routes(channel: Arc<TeamsChannel>, votes: Arc<dyn VoteSink>) -> axum::Router {
    Router::new()
        .route("/teams/messages", post(messages))
        .with_state(Endpoint { channel, votes })
}

#[derive(Clone)]
struct Endpoint {
    channel: Arc<TeamsChannel>,
    votes: Arc<dyn VoteSink>,
}

async fn messages(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(bearer) = bearer else {
        return unauthorized("no bearer token");
    };
    let (claims, key) = match ep.channel.verify(bearer).await {
        Ok(verified) => verified,
        Err(reason) => {
            tracing::info!(%reason, "teams activity refused");
            return unauthorized(&reason);
        }
    };
    let activity: Activity = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(_) => return (StatusCode::BAD_REQUEST, "not an activity").into_response(),
    };
    // The token is bound to the connector it came through: an activity naming another
    // serviceUrl would have our replies sent elsewhere.
    let claimed: Vec<&str> = claims
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("serviceurl"))
        .filter_map(|(_, v)| v.as_str())
        .collect();
    let Some(service_url) = activity.service_url.as_deref() else {
        return unauthorized("the activity names no serviceUrl");
    };
    if claimed.is_empty()
        || claimed
            .iter()
            .any(|c| c.trim_end_matches('/') != service_url.trim_end_matches('/'))
    {
        tracing::info!("teams activity refused: serviceUrl does not match the token");
        return unauthorized("the token's serviceurl does not match the activity");
    }
    if let (Some(endorsements), Some(channel)) = (&key.endorsements, &activity.channel_id)
        && !channel.is_empty()
        && !endorsements.iter().any(|e| e == channel)
    {
        tracing::info!(%channel, "teams activity refused: key not endorsed for the channel");
        return unauthorized("the signing key is not endorsed for this channel");
    }
    if activity.kind != "invoke" {
        // Messages, conversationUpdate and the like: nothing to do.
        return StatusCode::OK.into_response();
    }
    if activity.name.as_deref() != Some("adaptiveCard/action") {
        return StatusCode::NOT_IMPLEMENTED.into_response();
    }
    let Some(activity_id) = activity.id.as_deref().and_then(crate::channel::platform_id) else {
        return (StatusCode::BAD_REQUEST, "the activity has no usable id").into_response();
    };
    if !ep
        .votes
        .first_delivery(&format!("teams:{activity_id}"))
        .await
    {
        tracing::info!(activity = %activity_id, "teams activity replayed");
        return (
            StatusCode::CONFLICT,
            "this activity was already received; it is not counted again",
        )
            .into_response();
    }
    let action = activity.value.as_ref().and_then(|v| v.get("action"));
    let verb = action.and_then(|a| a.get("verb")).and_then(Value::as_str);
    let approval_id = action
        .and_then(|a| a.pointer("/data/approval_id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty());
    let ballot = match verb {
        Some("approve") => Ballot::Approve,
        Some("deny") => Ballot::Deny,
        _ => return json(user_message("This button is not a Gatehouse vote.")),
    };
    let Some(approval_id) = approval_id else {
        return json(user_message("This card names no approval."));
    };
    let Some(voter) = activity
        .from
        .as_ref()
        .map(|f| f.id.trim())
        .filter(|id| !id.is_empty())
    else {
        return (StatusCode::BAD_REQUEST, "the activity names no sender").into_response();
    };
    let reply = ep
        .votes
        .vote(VoteCall {
            approval_id: approval_id.to_owned(),
            channel: ChannelKind::Teams,
            chat_user_id: voter.to_owned(),
            via: VoteVia::Button,
            ballot,
            comment: None,
            authentication: crate::channel::by_chat(),
        })
        .await;
    match reply {
        VoteReply::Counted { view, .. } => json(json!({
            "statusCode": 200,
            "type": CARD_CONTENT_TYPE,
            "value": card(&view),
        })),
        VoteReply::Refused { reason, .. } => json(user_message(&reason)),
    }
}

/// An invoke answer Teams shows to the clicking user only.
fn user_message(text: &str) -> Value {
    json!({"statusCode": 200, "type": MESSAGE_CONTENT_TYPE, "value": text})
}

fn unauthorized(reason: &str) -> Response {
    (StatusCode::UNAUTHORIZED, format!("unauthorized: {reason}")).into_response()
}

fn json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_encoded_as_one_segment() {
        assert_eq!(
            path_segment("19:abc@thread.tacv2;messageid=1"),
            "19%3Aabc%40thread.tacv2%3Bmessageid%3D1"
        );
        assert_eq!(path_segment("a/b"), "a%2Fb");
    }

    #[test]
    fn escaping_defuses_card_markdown() {
        assert_eq!(escape("[x](http://e)"), "\\[x\\](http://e)");
        assert_eq!(escape("**b**"), "\\*\\*b\\*\\*");
        assert_eq!(escape("- a\nb-c"), "\\- a\nb-c");
    }
}
