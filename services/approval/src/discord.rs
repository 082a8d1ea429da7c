//! Discord: hold messages with Approve / Deny buttons, posted and edited through serenity's
//! HTTP client, and the interactions endpoint (`POST /discord/interactions`) that turns a
//! button press into a [`VoteCall`].
//!
//! Every interaction is checked before anything in it is read: the Ed25519 signature over
//! `timestamp || body` ([`crate::callback::discord_ed25519`]), a timestamp within five minutes,
//! and a delivery seen for the first time (`discord:<interaction id>`). The voter is the
//! Discord user id (`member.user.id` in a guild, `user.id` in a DM), never a display name.
//!
//! Messages never ping anyone: `allowed_mentions` is empty on every message and response, and
//! user-supplied text is markdown-escaped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::VerifyingKey;
use gatehouse_events::{Ballot, ChannelKind, VoteVia};
use serde::Deserialize;
use serenity::all::{
    ButtonStyle, ChannelId, CreateActionRow, CreateAllowedMentions, CreateButton, CreateEmbed,
    CreateEmbedFooter, CreateInteractionResponse, CreateInteractionResponseFollowup,
    CreateInteractionResponseMessage, CreateMessage, EditMessage, MessageId, MessageReference,
    MessageReferenceKind,
};
use serenity::http::{Http, HttpBuilder, HttpError};

use crate::callback::{discord_ed25519, discord_public_key};
use crate::channel::{
    ChannelError, HoldState, HoldView, Posted, VoteCall, VoteLine, VoteReply, VoteSink,
    ballot_past, channel_name, via_name,
};

const PLATFORM: &str = "discord";

/// How far `X-Signature-Timestamp` may be from now.
pub const TIMESTAMP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Discord wants an interaction answered within three seconds; a vote still being counted by
/// then is acknowledged with DEFERRED_UPDATE_MESSAGE and finished in the background.
pub const RESPONSE_DEADLINE: Duration = Duration::from_millis(2500);

/// `custom_id` prefixes of the two buttons.
const APPROVE_PREFIX: &str = "gatehouse:approve:";
const DENY_PREFIX: &str = "gatehouse:deny:";

// Discord's documented limits.
const CONTENT_MAX: usize = 2000;
const TITLE_MAX: usize = 256;
const FIELD_MAX: usize = 1024;
const DESCRIPTION_MAX: usize = 4096;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    pub application_id: String,
    /// File holding the bot token.
    pub bot_token_file: PathBuf,
    /// The application's Ed25519 public key, hex, as the developer portal shows it.
    pub public_key: String,
    /// Channel to post holds in.
    pub channel_id: String,
    /// API base; default Discord's own.
    #[serde(default)]
    pub api_url: Option<String>,
}

pub struct DiscordChannel {
    http: Http,
    /// Kept only to scrub it from error text, should an error ever echo it.
    token: String,
    application_id: u64,
    public_key: VerifyingKey,
    channel_id: ChannelId,
    api_url: Option<String>,
}

impl std::fmt::Debug for DiscordChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordChannel")
            .field("application_id", &self.application_id)
            .field("channel_id", &self.channel_id.get())
            .field("api_url", &self.api_url)
            .field("bot_token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl DiscordChannel {
    /// Reads the bot token file and checks the ids and the public key; no network call.
    pub fn new(config: &DiscordConfig) -> Result<Self, String> {
        let application_id = snowflake(&config.application_id)
            .ok_or("discord: application_id is not a Discord id (a number)")?;
        let channel_id = snowflake(&config.channel_id)
            .ok_or("discord: channel_id is not a Discord id (a number)")?;
        let public_key =
            discord_public_key(&config.public_key).map_err(|e| format!("discord: {e}"))?;
        let token = std::fs::read_to_string(&config.bot_token_file)
            .map_err(|e| {
                format!(
                    "discord: reading bot_token_file {}: {}",
                    config.bot_token_file.display(),
                    e.kind()
                )
            })?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(format!(
                "discord: bot_token_file {} is empty",
                config.bot_token_file.display()
            ));
        }
        if token.chars().any(|c| c.is_control()) {
            return Err(format!(
                "discord: bot_token_file {} holds control characters",
                config.bot_token_file.display()
            ));
        }
        let api_url = config
            .api_url
            .as_deref()
            .map(|u| u.trim_end_matches('/').to_owned());
        let mut builder = HttpBuilder::new(&token).application_id(application_id.into());
        if let Some(url) = &api_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("discord: api_url must be an http(s) URL".to_owned());
            }
            // serenity ignores the proxy while its rate limiter is on.
            builder = builder.proxy(url.clone()).ratelimiter_disabled(true);
        }
        Ok(Self {
            http: builder.build(),
            token,
            application_id,
            public_key,
            channel_id: ChannelId::new(channel_id),
            api_url,
        })
    }

    pub async fn post(&self, view: &HoldView) -> Result<Posted, ChannelError> {
        let rendered = Rendered::of(view);
        let message = CreateMessage::new()
            .content(rendered.content)
            .embed(rendered.embed)
            .components(rendered.components)
            .allowed_mentions(no_mentions());
        let sent = self
            .http
            .send_message(self.channel_id, vec![], &message)
            .await
            .map_err(|e| self.error("posting the hold", e))?;
        Ok(Posted {
            channel: ChannelKind::Discord,
            channel_id: sent.channel_id.get().to_string(),
            message_ref: sent.id.get().to_string(),
        })
    }

    pub async fn update(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        let (channel_id, message_id) = ids(posted)?;
        let rendered = Rendered::of(view);
        let edit = EditMessage::new()
            .content(rendered.content)
            .embed(rendered.embed)
            .components(rendered.components)
            .allowed_mentions(no_mentions());
        self.http
            .edit_message(channel_id, message_id, &edit, vec![])
            .await
            .map_err(|e| self.error("updating the hold", e))?;
        Ok(())
    }

    /// Replies to the hold message with who decided and how.
    pub async fn announce(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        let (channel_id, message_id) = ids(posted)?;
        let reference = MessageReference::new(MessageReferenceKind::Default, channel_id)
            .message_id(message_id)
            // The decision is worth recording even if someone deleted the hold message.
            .fail_if_not_exists(false);
        let message = CreateMessage::new()
            .content(truncate(&announcement(view), CONTENT_MAX))
            .reference_message(reference)
            .allowed_mentions(no_mentions().replied_user(false));
        self.http
            .send_message(channel_id, vec![], &message)
            .await
            .map_err(|e| self.error("announcing the decision", e))?;
        Ok(())
    }

    fn error(&self, what: &str, e: serenity::Error) -> ChannelError {
        let text = match &e {
            serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => format!(
                "{what}: HTTP {} (Discord code {}): {}",
                r.status_code.as_u16(),
                r.error.code,
                r.error.message
            ),
            other => format!("{what}: {other}"),
        };
        ChannelError::new(PLATFORM, redact(&text, &self.token))
    }

    /// Sends the voter a private note after the three-second window closed.
    async fn follow_up(&self, interaction_token: &str, reason: &str) {
        let followup = CreateInteractionResponseFollowup::new()
            .content(truncate(&escape(reason), CONTENT_MAX))
            .ephemeral(true)
            .allowed_mentions(no_mentions());
        if let Err(e) = self
            .http
            .create_followup_message(interaction_token, &followup, vec![])
            .await
        {
            let mut e = self.error("following up on a late vote", e);
            // The follow-up URL carries the interaction token.
            e.message = redact(&e.message, interaction_token);
            tracing::warn!(error = %e, "discord follow-up failed");
        }
    }
}

fn ids(posted: &Posted) -> Result<(ChannelId, MessageId), ChannelError> {
    let channel = snowflake(&posted.channel_id)
        .ok_or_else(|| ChannelError::new(PLATFORM, "the posted channel id is not a Discord id"))?;
    let message = snowflake(&posted.message_ref)
        .ok_or_else(|| ChannelError::new(PLATFORM, "the posted message id is not a Discord id"))?;
    Ok((ChannelId::new(channel), MessageId::new(message)))
}

/// A Discord id: a non-zero decimal u64.
fn snowflake(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| *n != 0)
}

fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "[redacted]")
    }
}

/// Nobody is pinged, whatever the text says.
fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
}

/// A hold as Discord shows it.
struct Rendered {
    content: String,
    embed: CreateEmbed,
    components: Vec<CreateActionRow>,
}

impl Rendered {
    fn of(view: &HoldView) -> Self {
        let headline = escape(&view.headline());
        let content = if view.is_decided() {
            format!("{}: {headline}", escape(&view.status_line()))
        } else {
            format!("Approval needed: {headline}")
        };
        let colour = match view.state {
            HoldState::Pending { .. } => 0xF0B232,
            HoldState::Approved { .. } => 0x23A55A,
            HoldState::Denied { .. } => 0xF23F43,
            HoldState::Expired { .. } | HoldState::Withdrawn { .. } => 0x80848E,
        };
        let or = |v: &Option<String>, none: &str| match v.as_deref() {
            Some(s) if !s.trim().is_empty() => escape(s),
            _ => none.to_owned(),
        };
        let mut fields: Vec<(&str, String, bool)> = vec![
            ("Principal", escape(&view.principal), true),
            ("Owner", or(&view.owner, "unknown"), true),
            ("Team", or(&view.team, "unknown"), true),
        ];
        if let Some(purpose) = view.purpose.as_deref().filter(|p| !p.trim().is_empty()) {
            fields.push(("Purpose", escape(purpose), false));
        }
        fields.extend([
            ("Verb", escape(&view.verb), true),
            ("Resource", escape(&view.resource), true),
            (
                "Namespace",
                if view.namespace.is_empty() {
                    "(cluster-scoped)".to_owned()
                } else {
                    escape(&view.namespace)
                },
                true,
            ),
            (
                "Name",
                if view.name.is_empty() {
                    "(all)".to_owned()
                } else {
                    escape(&view.name)
                },
                true,
            ),
            ("Reason", or(&view.reason, "(none given)"), false),
            ("Rule", escape(&view.rule), true),
            (
                "Approvers",
                format!(
                    "{} · quorum {}",
                    if view.approver_groups.is_empty() {
                        "(no groups)".to_owned()
                    } else {
                        escape(&view.approver_groups.join(", "))
                    },
                    view.quorum
                ),
                true,
            ),
            ("Expires", discord_time(&view.expires_at), true),
            ("Votes", votes_text(&view.votes), false),
        ]);
        let mut embed = CreateEmbed::new()
            .title(truncate(&headline, TITLE_MAX))
            .description(truncate(
                &format!("**{}**", escape(&view.status_line())),
                DESCRIPTION_MAX,
            ))
            .colour(colour)
            .footer(CreateEmbedFooter::new(truncate(
                &format!(
                    "approval {} · request {}",
                    view.approval_id, view.request_id
                ),
                2048,
            )));
        for (name, value, inline) in fields {
            // Discord refuses an empty field value.
            let value = if value.trim().is_empty() {
                "—".to_owned()
            } else {
                value
            };
            embed = embed.field(name, truncate(&value, FIELD_MAX), inline);
        }
        let open = view.page_url.as_deref().map(|url| {
            CreateButton::new_link(url).label(if view.step_up {
                "Review and sign in to vote"
            } else {
                "Details"
            })
        });
        let components = if view.is_decided() {
            // An empty list removes the buttons on edit.
            vec![]
        } else if view.step_up {
            // Chat alone cannot vote on this hold: only the page, after a fresh sign-in.
            open.map(|b| vec![CreateActionRow::Buttons(vec![b])])
                .unwrap_or_default()
        } else {
            let mut buttons = vec![
                CreateButton::new(format!("{APPROVE_PREFIX}{}", view.approval_id))
                    .label("Approve")
                    .style(ButtonStyle::Success),
                CreateButton::new(format!("{DENY_PREFIX}{}", view.approval_id))
                    .label("Deny")
                    .style(ButtonStyle::Danger),
            ];
            buttons.extend(open);
            vec![CreateActionRow::Buttons(buttons)]
        };
        Self {
            content: truncate(&content, CONTENT_MAX),
            embed,
            components,
        }
    }

    fn response(self) -> CreateInteractionResponseMessage {
        CreateInteractionResponseMessage::new()
            .content(self.content)
            .embed(self.embed)
            .components(self.components)
            .allowed_mentions(no_mentions())
    }
}

fn votes_text(votes: &[VoteLine]) -> String {
    if votes.is_empty() {
        return "none yet".to_owned();
    }
    votes
        .iter()
        .map(|v| {
            format!(
                "{} {} {} ({} {}, {})",
                match v.ballot {
                    Ballot::Approve => "✅",
                    Ballot::Deny => "⛔",
                    Ballot::Withdraw => "↩️",
                },
                escape(&v.approver),
                ballot_past(v.ballot),
                channel_name(v.channel),
                via_name(v.via),
                discord_time(&v.at)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// "Approved by alice, bob" and how each vote was cast.
fn announcement(view: &HoldView) -> String {
    let mut text = format!(
        "**{}**: {}",
        escape(&view.status_line()),
        escape(&view.headline())
    );
    let at = match &view.state {
        HoldState::Approved { decided_at, .. }
        | HoldState::Denied { decided_at, .. }
        | HoldState::Expired { decided_at } => Some(decided_at),
        HoldState::Withdrawn { at, .. } => Some(at),
        HoldState::Pending { .. } => None,
    };
    if let Some(at) = at {
        text.push_str(&format!(" ({})", discord_time(at)));
    }
    for v in &view.votes {
        text.push_str(&format!(
            "\n- {} {} via {} {} at {}",
            escape(&v.approver),
            ballot_past(v.ballot),
            channel_name(v.channel),
            via_name(v.via),
            discord_time(&v.at)
        ));
    }
    text.push_str(&format!("\napproval {}", escape(&view.approval_id)));
    text
}

/// An RFC 3339 time as a Discord timestamp (shown in each reader's own zone), or the text
/// itself, escaped, when it does not parse.
fn discord_time(rfc3339: &str) -> String {
    match time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) {
        Ok(t) => format!("<t:{}:f>", t.unix_timestamp()),
        Err(_) => escape(rfc3339),
    }
}

/// Escapes Discord markdown and mention syntax in user-supplied text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut line_start = true;
    for c in text.chars() {
        match c {
            '\\' | '*' | '_' | '~' | '`' | '|' | '[' | ']' | '<' | '>' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '-' | '+' if line_start => {
                out.push('\\');
                out.push(c);
            }
            '@' => {
                // "@everyone" and "@here" stay text even if allowed_mentions were ignored.
                out.push('@');
                out.push('\u{200B}');
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

/// Cuts to at most `max` characters, marking the cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    // Never leave a dangling escape backslash (an odd run of them at the end).
    if out.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1 {
        out.pop();
    }
    out.push('…');
    out
}

/// The part of an interaction the endpoint reads; the rest is Discord's business.
#[derive(Deserialize)]
struct Interaction {
    id: String,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    application_id: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    data: Option<ComponentData>,
    #[serde(default)]
    member: Option<Member>,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Deserialize)]
struct ComponentData {
    #[serde(default)]
    custom_id: Option<String>,
}

#[derive(Deserialize)]
struct Member {
    user: User,
}

#[derive(Deserialize)]
struct User {
    id: String,
}

const PING: u8 = 1;
const MESSAGE_COMPONENT: u8 = 3;

/// `POST /discord/interactions`.
pub fn routes(channel: Arc<DiscordChannel>, votes: Arc<dyn VoteSink>) -> axum::Router {
    Router::new()
        .route("/discord/interactions", post(interactions))
        .with_state(Endpoint { channel, votes })
}

#[derive(Clone)]
struct Endpoint {
    channel: Arc<DiscordChannel>,
    votes: Arc<dyn VoteSink>,
}

async fn interactions(State(ep): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = header("x-signature-timestamp");
    if let Err(e) = discord_ed25519(
        &ep.channel.public_key,
        timestamp,
        header("x-signature-ed25519"),
        &body,
    ) {
        tracing::info!(reason = %e, "discord interaction refused");
        return unauthorized(&e.to_string());
    }
    if !fresh(timestamp.unwrap_or_default(), SystemTime::now()) {
        tracing::info!("discord interaction refused: stale timestamp");
        return unauthorized("the request timestamp is more than five minutes from now");
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(_) => return (StatusCode::BAD_REQUEST, "not an interaction").into_response(),
    };
    if let Some(app) = interaction.application_id.as_deref()
        && snowflake(app) != Some(ep.channel.application_id)
    {
        return unauthorized("the interaction is for another application");
    }
    match interaction.kind {
        // Exactly Discord's documented PONG (serenity's adds `"data": null`).
        PING => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"type":1}"#,
        )
            .into_response(),
        MESSAGE_COMPONENT => component(ep, interaction).await,
        _ => json(&ephemeral(
            "Gatehouse only handles its Approve and Deny buttons.",
        )),
    }
}

async fn component(ep: Endpoint, interaction: Interaction) -> Response {
    // Discord's interaction ids are snowflakes: the key is the number, however it was spelled.
    let Some(id) = snowflake(&interaction.id) else {
        return (
            StatusCode::BAD_REQUEST,
            "the interaction id is not a snowflake",
        )
            .into_response();
    };
    if !ep.votes.first_delivery(&format!("discord:{id}")).await {
        tracing::info!(interaction = %interaction.id, "discord interaction replayed");
        return json(&ephemeral("This interaction was already received."));
    }
    let custom_id = interaction
        .data
        .as_ref()
        .and_then(|d| d.custom_id.as_deref())
        .unwrap_or_default();
    let Some((ballot, approval_id)) = parse_custom_id(custom_id) else {
        return json(&ephemeral("This button is not a Gatehouse vote."));
    };
    let voter = interaction
        .member
        .as_ref()
        .map(|m| &m.user)
        .or(interaction.user.as_ref())
        .map(|u| u.id.as_str())
        .filter(|id| snowflake(id).is_some());
    let Some(voter) = voter else {
        return (StatusCode::BAD_REQUEST, "the interaction names no user").into_response();
    };
    let call = VoteCall {
        approval_id: approval_id.to_owned(),
        channel: ChannelKind::Discord,
        chat_user_id: voter.to_owned(),
        via: VoteVia::Button,
        ballot,
        comment: None,
        authentication: crate::channel::by_chat(),
    };
    // Counted in its own task: it completes even when the answer below has to go early.
    let votes = ep.votes.clone();
    let mut counting = tokio::spawn(async move { votes.vote(call).await });
    match tokio::time::timeout(RESPONSE_DEADLINE, &mut counting).await {
        Ok(Ok(reply)) => json(&answer(reply)),
        Ok(Err(_)) => json(&ephemeral(
            "Gatehouse could not count the vote; please try again.",
        )),
        Err(_) => {
            // The core refreshes the message itself after a counted vote; only a refusal
            // still needs telling, privately, once known.
            let channel = ep.channel.clone();
            let token = interaction.token.clone();
            tokio::spawn(async move {
                let reason = match counting.await {
                    Ok(VoteReply::Refused { reason, .. }) => reason,
                    Ok(VoteReply::Counted { .. }) => return,
                    Err(_) => "Gatehouse could not count the vote; please try again.".to_owned(),
                };
                if let Some(token) = token {
                    channel.follow_up(&token, &reason).await;
                }
            });
            json(&CreateInteractionResponse::Acknowledge)
        }
    }
}

fn answer(reply: VoteReply) -> CreateInteractionResponse {
    match reply {
        VoteReply::Counted { view, .. } => {
            CreateInteractionResponse::UpdateMessage(Rendered::of(&view).response())
        }
        VoteReply::Refused { reason, .. } => ephemeral(&reason),
    }
}

/// A message only the clicking user sees.
fn ephemeral(text: &str) -> CreateInteractionResponse {
    CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content(truncate(&escape(text), CONTENT_MAX))
            .ephemeral(true)
            .allowed_mentions(no_mentions()),
    )
}

fn parse_custom_id(custom_id: &str) -> Option<(Ballot, &str)> {
    let (ballot, id) = if let Some(id) = custom_id.strip_prefix(APPROVE_PREFIX) {
        (Ballot::Approve, id)
    } else if let Some(id) = custom_id.strip_prefix(DENY_PREFIX) {
        (Ballot::Deny, id)
    } else {
        return None;
    };
    let plausible = !id.is_empty()
        && id.len() <= 80
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    plausible.then_some((ballot, id))
}

fn fresh(timestamp: &str, now: SystemTime) -> bool {
    let Ok(sent) = timestamp.trim().parse::<u64>() else {
        return false;
    };
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    now.abs_diff(sent) <= TIMESTAMP_WINDOW.as_secs()
}

fn unauthorized(reason: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        format!("invalid request: {reason}"),
    )
        .into_response()
}

fn json(response: &CreateInteractionResponse) -> Response {
    match serde_json::to_vec(response) {
        Ok(body) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_parse_strictly() {
        assert_eq!(
            parse_custom_id("gatehouse:approve:01JABC"),
            Some((Ballot::Approve, "01JABC"))
        );
        assert_eq!(
            parse_custom_id("gatehouse:deny:01JABC"),
            Some((Ballot::Deny, "01JABC"))
        );
        assert_eq!(parse_custom_id("gatehouse:approve:"), None);
        assert_eq!(parse_custom_id("gatehouse:approve:a b"), None);
        assert_eq!(parse_custom_id("approve:01JABC"), None);
    }

    #[test]
    fn escaping_defuses_markdown_and_mentions() {
        assert_eq!(escape("a*b_c"), "a\\*b\\_c");
        assert_eq!(escape("<@123> hi"), "\\<@\u{200B}123\\> hi");
        assert_eq!(escape("@everyone"), "@\u{200B}everyone");
        assert_eq!(escape("- item\nx-y"), "\\- item\nx-y");
        assert_eq!(escape("ci-deployer"), "ci-deployer");
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("äöüß", 3), "äö…");
        assert_eq!(truncate("a\\*bc", 3), "a…");
    }

    #[test]
    fn timestamps_outside_five_minutes_are_stale() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(fresh("1000000", now));
        assert!(fresh("999700", now));
        assert!(!fresh("999699", now));
        assert!(!fresh("1000301", now));
        assert!(!fresh("soon", now));
    }
}
