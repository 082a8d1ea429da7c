//! Slack: posts a hold as a Block Kit message with Approve / Deny buttons, keeps it up to date,
//! and turns Slack's callbacks (button clicks, reactions) into [`VoteCall`]s for the
//! [`VoteSink`]. It never counts votes itself.
//!
//! - Web API calls (`chat.postMessage`, `chat.update`, `chat.postEphemeral`) go through
//!   slack-morphism's hyper client; the base URL is configurable so tests can point it at a
//!   local fake. Plain `http://` is accepted for loopback only: the bot token rides along.
//! - `POST /slack/interactivity` (block_actions) and `POST /slack/events` (Events API) are
//!   checked with [`crate::callback::slack_v0`] over the raw body before anything in it is
//!   read, then refused if the same MAC was seen before. Events are also deduplicated by
//!   `event_id` and button clicks by `trigger_id`, because Slack re-signs what it delivers
//!   again.
//! - Everything shown in Slack that a caller or approver could have chosen is escaped for
//!   mrkdwn (`&`, `<`, `>`), so a reason cannot mention `@channel` or smuggle a link.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gatehouse_events::{Ballot, ChannelKind, VoteVia};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use tracing::{info, warn};

use crate::callback::slack_v0;
use crate::channel::{
    ChannelError, HoldState, HoldView, Posted, VoteCall, VoteLine, VoteReply, VoteSink,
};

const PLATFORM: &str = "slack";
const DEFAULT_API_URL: &str = "https://slack.com/api/";
/// Button action ids; the button's value is the approval id.
pub const APPROVE_ACTION: &str = "gatehouse_approve";
pub const DENY_ACTION: &str = "gatehouse_deny";
/// A link button to the approver page: Slack still reports its click, which casts nothing.
pub const OPEN_ACTION: &str = "gatehouse_open";
/// Slack retries a callback not answered within three seconds; answer before that even if
/// counting the vote takes longer (it then finishes in the background).
const ANSWER_WITHIN: Duration = Duration::from_millis(2500);
/// Block Kit limits: section text 3000 characters, a field 2000.
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Channel id to post holds in (`C0123…`).
    pub channel: String,
    /// File holding the bot token (`xoxb-…`).
    pub bot_token_file: PathBuf,
    /// File holding the app's signing secret.
    pub signing_secret_file: PathBuf,
    /// Web API base; default `https://slack.com/api/`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Reactions that approve; default `white_check_mark`.
    #[serde(default)]
    pub approve_reactions: Option<Vec<String>>,
    /// Reactions that deny; default `x`.
    #[serde(default)]
    pub deny_reactions: Option<Vec<String>>,
}

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

/// The Slack front end: a Web API client plus what the callback routes need.
pub struct SlackChannel {
    client: SlackClient<Connector>,
    token: SlackApiToken,
    signing_secret: Vec<u8>,
    channel: String,
    api_url: String,
    approve_reactions: Vec<String>,
    deny_reactions: Vec<String>,
}

impl fmt::Debug for SlackChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackChannel")
            .field("channel", &self.channel)
            .field("api_url", &self.api_url)
            .field("bot_token", &"<redacted>")
            .field("signing_secret", &"<redacted>")
            .field("approve_reactions", &self.approve_reactions)
            .field("deny_reactions", &self.deny_reactions)
            .finish()
    }
}

/// Reads one secret file, trimmed. The error names the file, never what is in it.
fn read_secret(what: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("slack {what} {}: {}", path.display(), e.kind()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("slack {what} {} is empty", path.display()));
    }
    Ok(text.to_owned())
}

/// The API base without its trailing slash (slack-morphism appends `/{method}`). Plain
/// http only to loopback, where a local fake lives.
fn api_base(configured: Option<&str>) -> Result<String, String> {
    let url = configured.unwrap_or(DEFAULT_API_URL).trim();
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("slack api_url {url:?} is not a URL"))?;
    let host = uri.host().unwrap_or("");
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => {}
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1") => {}
        _ => {
            return Err(format!(
                "slack api_url {url:?} must be https:// (http:// only to a loopback address)"
            ));
        }
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn reaction_list(configured: Option<&Vec<String>>, default: &str) -> Vec<String> {
    let list: Vec<String> = configured
        .map(|names| {
            names
                .iter()
                .map(|n| n.trim().trim_matches(':').to_owned())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        vec![default.to_owned()]
    } else {
        list
    }
}

impl SlackChannel {
    pub fn new(config: &SlackConfig) -> Result<Self, String> {
        if config.channel.trim().is_empty() {
            return Err("slack channel is empty".into());
        }
        let token = read_secret("bot_token_file", &config.bot_token_file)?;
        // It goes into an Authorization header: refuse what cannot, without echoing it.
        if http::HeaderValue::from_str(&format!("Bearer {token}")).is_err()
            || token.chars().any(char::is_whitespace)
        {
            return Err(format!(
                "slack bot_token_file {} does not hold a single token",
                config.bot_token_file.display()
            ));
        }
        let signing_secret = read_secret("signing_secret_file", &config.signing_secret_file)?;
        let api_url = api_base(config.api_url.as_deref())?;

        // ring named explicitly: rustls's process default panics when it cannot pick one.
        // The system's roots when it has any, else Mozilla's: either way Slack's CA is there.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .map_err(|e| format!("slack: no usable TLS configuration: {e}"))?,
        };
        let https = builder.https_or_http().enable_http1().build();
        let connector =
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(&api_url);

        Ok(Self {
            client: SlackClient::new(connector),
            token: SlackApiToken::new(SlackApiTokenValue::new(token)),
            signing_secret: signing_secret.into_bytes(),
            channel: config.channel.trim().to_owned(),
            api_url,
            approve_reactions: reaction_list(config.approve_reactions.as_ref(), "white_check_mark"),
            deny_reactions: reaction_list(config.deny_reactions.as_ref(), "x"),
        })
    }

    pub async fn post(&self, view: &HoldView) -> Result<Posted, ChannelError> {
        let request =
            SlackApiChatPostMessageRequest::new(self.channel.clone().into(), render(view))
                .with_link_names(false)
                .with_unfurl_links(false)
                .with_unfurl_media(false);
        let session = self.client.open_session(&self.token);
        let response = session
            .chat_post_message(&request)
            .await
            .map_err(|e| api_error("chat.postMessage", e))?;
        info!(approval_id = %view.approval_id, channel = %response.channel, ts = %response.ts, "slack: hold posted");
        Ok(Posted {
            channel: ChannelKind::Slack,
            channel_id: response.channel.to_string(),
            message_ref: response.ts.to_string(),
        })
    }

    pub async fn update(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        let request = SlackApiChatUpdateRequest::new(
            posted.channel_id.clone().into(),
            render(view),
            posted.message_ref.clone().into(),
        )
        .with_link_names(false);
        let session = self.client.open_session(&self.token);
        session
            .chat_update(&request)
            .await
            .map_err(|e| api_error("chat.update", e))?;
        info!(approval_id = %view.approval_id, decided = view.is_decided(), "slack: hold updated");
        Ok(())
    }

    pub async fn announce(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        let text = escape(&decision_text(view));
        let request = SlackApiChatPostMessageRequest::new(
            posted.channel_id.clone().into(),
            SlackMessageContent::new().with_text(text),
        )
        .with_thread_ts(posted.message_ref.clone().into())
        .with_link_names(false)
        .with_unfurl_links(false)
        .with_unfurl_media(false);
        let session = self.client.open_session(&self.token);
        session
            .chat_post_message(&request)
            .await
            .map_err(|e| api_error("chat.postMessage", e))?;
        info!(approval_id = %view.approval_id, "slack: decision announced");
        Ok(())
    }

    /// Tells one user something only they see (why their vote did not count).
    pub async fn tell(&self, channel_id: &str, user: &str, text: &str) -> Result<(), ChannelError> {
        let request = SlackApiChatPostEphemeralRequest::new(
            channel_id.to_owned().into(),
            user.to_owned().into(),
            SlackMessageContent::new().with_text(escape(text)),
        )
        .with_link_names(false);
        let session = self.client.open_session(&self.token);
        session
            .chat_post_ephemeral(&request)
            .await
            .map_err(|e| api_error("chat.postEphemeral", e))?;
        Ok(())
    }

    fn ballot_for(&self, reaction: &str, added: bool) -> Option<Ballot> {
        // `+1::skin-tone-2` is `+1` for voting purposes.
        let name = reaction.split("::").next().unwrap_or(reaction);
        let approves = self.approve_reactions.iter().any(|r| r == name);
        let denies = self.deny_reactions.iter().any(|r| r == name);
        match (approves || denies, added) {
            (false, _) => None,
            (true, false) => Some(Ballot::Withdraw),
            (true, true) if approves => Some(Ballot::Approve),
            (true, true) => Some(Ballot::Deny),
        }
    }
}

/// A failed Web API call in words, from Slack's error code or the HTTP status; response
/// bodies are left out (they never carry the token, but need not be in logs either).
fn api_error(method: &str, error: SlackClientError) -> ChannelError {
    let message = match &error {
        SlackClientError::ApiError(e) => format!("{method} failed: {}", e.code),
        SlackClientError::HttpError(e) => format!("{method} failed: HTTP {}", e.status_code),
        SlackClientError::RateLimitError(e) => match e.retry_after {
            Some(after) => format!("{method} rate limited; retry after {}s", after.as_secs()),
            None => format!("{method} rate limited"),
        },
        SlackClientError::ProtocolError(_) => {
            format!("{method} failed: Slack's answer was not understood")
        }
        SlackClientError::SystemError(e) => format!(
            "{method} failed: {}",
            e.message.as_deref().unwrap_or("cannot reach Slack")
        ),
        SlackClientError::HttpProtocolError(e) => match &e.cause {
            Some(cause) => format!("{method} failed: cannot reach Slack: {cause}"),
            None => format!("{method} failed: cannot reach Slack"),
        },
        SlackClientError::EndOfStream(_) => format!("{method} failed: cannot reach Slack"),
        SlackClientError::SocketModeProtocolError(e) => format!("{method} failed: {}", e.message),
    };
    ChannelError::new(PLATFORM, message)
}

/// Escapes the three characters Slack's mrkdwn treats as control characters, so text from
/// callers and approvers is shown, never interpreted (`<!channel>`, `<https://…|…>`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// Cuts text to `max` characters, marking the cut; never splits an escape sequence.
fn clip(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

fn or_dash(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => escape(v),
        _ => "—".to_owned(),
    }
}

/// `2026-11-22T10:00:00Z` shown in each reader's time zone, with the raw text as fallback.
fn slack_date(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(at) => format!(
            "<!date^{}^{{date_short_pretty}} {{time_secs}}|{}>",
            at.unix_timestamp(),
            escape(rfc3339)
        ),
        Err(_) => escape(rfc3339),
    }
}

fn field(label: &str, value: String) -> SlackBlockText {
    SlackBlockMarkDownText::new(clip(format!("*{label}*\n{value}"), FIELD_MAX)).into()
}

fn section(text: String) -> SlackBlock {
    SlackSectionBlock::new()
        .with_text(SlackBlockMarkDownText::new(clip(text, SECTION_MAX)).into())
        .into()
}

fn via_words(line: &VoteLine) -> String {
    let how = match (line.via, line.ballot) {
        (VoteVia::Button, _) => "button".to_owned(),
        (VoteVia::Reaction, Ballot::Deny) => "reaction ❌".to_owned(),
        (VoteVia::Reaction, _) => "reaction ✅".to_owned(),
        (VoteVia::Command, _) => "command".to_owned(),
        (VoteVia::Page, _) => "approver page".to_owned(),
    };
    match line.channel {
        ChannelKind::Slack => how,
        ChannelKind::Teams => format!("{how} in Teams"),
        ChannelKind::Discord => format!("{how} in Discord"),
        ChannelKind::Api => "the API".to_owned(),
    }
}

fn ballot_word(ballot: Ballot) -> &'static str {
    match ballot {
        Ballot::Approve => "approve",
        Ballot::Deny => "deny",
        Ballot::Withdraw => "withdrawn",
    }
}

/// The message for one hold: facts, status, votes so far, and buttons while it is pending.
fn render(view: &HoldView) -> SlackMessageContent {
    let (title, mark) = match view.state {
        HoldState::Pending { .. } => ("Approval needed", "⏳"),
        HoldState::Approved { .. } => ("Approved", "✅"),
        HoldState::Denied { .. } => ("Denied", "⛔"),
        HoldState::Expired { .. } => ("Expired", "⌛"),
        HoldState::Withdrawn { .. } => ("Withdrawn", "↩️"),
    };
    let mut blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(format!("Gatehouse: {title}").into()).into(),
        section(format!("*{}*", escape(&view.headline()))),
    ];

    let groups = if view.approver_groups.is_empty() {
        "—".to_owned()
    } else {
        escape(&view.approver_groups.join(", "))
    };
    let fields = vec![
        field("Identity", escape(&view.principal)),
        field("Owner", or_dash(view.owner.as_deref())),
        field("Team", or_dash(view.team.as_deref())),
        field("Verb", escape(&view.verb)),
        field("Resource", escape(&view.resource)),
        field(
            "Namespace",
            if view.namespace.is_empty() {
                "(cluster-scoped)".to_owned()
            } else {
                escape(&view.namespace)
            },
        ),
        field(
            "Name",
            if view.name.is_empty() {
                "(all)".to_owned()
            } else {
                escape(&view.name)
            },
        ),
        field("Rule", escape(&view.rule)),
        field(
            "Approvers",
            format!("{groups}\nquorum: {} approval(s)", view.quorum),
        ),
        field("Expires", slack_date(&view.expires_at)),
    ];
    blocks.push(SlackSectionBlock::new().with_fields(fields).into());

    let mut why = format!("*Reason*\n{}", or_dash(view.reason.as_deref()));
    if let Some(purpose) = view.purpose.as_deref().filter(|p| !p.trim().is_empty()) {
        why.push_str(&format!("\n*Purpose*\n{}", escape(purpose)));
    }
    blocks.push(section(why));
    blocks.push(section(format!(
        "{mark} *Status:* {}",
        escape(&view.status_line())
    )));

    let votes = if view.votes.is_empty() {
        "No votes yet".to_owned()
    } else {
        view.votes
            .iter()
            .map(|v| {
                format!(
                    "• {}: {} via {} at {}",
                    escape(&v.approver),
                    ballot_word(v.ballot),
                    via_words(v),
                    escape(&v.at)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    blocks.push(section(format!("*Votes*\n{votes}")));

    let page = view
        .page_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok());
    if !view.is_decided() && view.step_up {
        // Chat alone cannot vote on this hold: the button opens the page, where the approver
        // signs in again.
        blocks.push(section(
            "🔐 This rule needs a fresh sign-in: review and vote on the approver page.".into(),
        ));
        if let Some(page) = page {
            let open = SlackBlockButtonElement::new("Review and sign in to vote".into())
                .with_action_id(OPEN_ACTION.into())
                .with_url(page)
                .with_style(SlackBlockButtonStyle::Primary);
            blocks.push(
                SlackActionsBlock::new(vec![open.into()])
                    .with_block_id("gatehouse_open".into())
                    .into(),
            );
        }
    } else if !view.is_decided() {
        let approve = SlackBlockButtonElement::new("Approve".into())
            .with_action_id(APPROVE_ACTION.into())
            .with_value(view.approval_id.clone())
            .with_style(SlackBlockButtonStyle::Primary);
        let deny = SlackBlockButtonElement::new("Deny".into())
            .with_action_id(DENY_ACTION.into())
            .with_value(view.approval_id.clone())
            .with_style(SlackBlockButtonStyle::Danger);
        let mut buttons = vec![approve.into(), deny.into()];
        if let Some(page) = page {
            buttons.push(
                SlackBlockButtonElement::new("Details".into())
                    .with_action_id(OPEN_ACTION.into())
                    .with_url(page)
                    .into(),
            );
        }
        blocks.push(
            SlackActionsBlock::new(buttons)
                .with_block_id("gatehouse_vote".into())
                .into(),
        );
    }
    blocks.push(
        SlackContextBlock::new(vec![
            SlackBlockMarkDownText::new(format!(
                "approval `{}` · request `{}`",
                escape(&view.approval_id),
                escape(&view.request_id)
            ))
            .into(),
        ])
        .into(),
    );

    SlackMessageContent::new()
        .with_text(escape(&view.headline()))
        .with_blocks(blocks)
}

/// "Approved by alice (button), bob (reaction ✅) at 2026-…", unescaped.
fn decision_text(view: &HoldView) -> String {
    let who = |name: &str, ballot: Ballot| -> String {
        match view
            .votes
            .iter()
            .rev()
            .find(|v| v.approver == name && v.ballot == ballot)
        {
            Some(line) => format!("{name} ({})", via_words(line)),
            None => name.to_owned(),
        }
    };
    match &view.state {
        HoldState::Approved { decided_at, by } => format!(
            "Approved by {} at {decided_at}",
            by.iter()
                .map(|n| who(n, Ballot::Approve))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        HoldState::Denied { decided_at, by } => {
            format!("Denied by {} at {decided_at}", who(by, Ballot::Deny))
        }
        HoldState::Expired { decided_at } => {
            format!("Expired at {decided_at}: nobody decided in time")
        }
        HoldState::Withdrawn { at, reason } => format!("Withdrawn at {at}: {reason}"),
        HoldState::Pending { .. } => view.status_line(),
    }
}

// ---------------------------------------------------------------------------------------------
// Callbacks

#[derive(Clone)]
struct Shared {
    channel: Arc<SlackChannel>,
    votes: Arc<dyn VoteSink>,
}

/// `POST /slack/interactivity` (button clicks) and `POST /slack/events` (reactions).
pub fn routes(channel: Arc<SlackChannel>, votes: Arc<dyn VoteSink>) -> axum::Router {
    axum::Router::new()
        .route("/slack/interactivity", post(interactivity))
        .route("/slack/events", post(events))
        .with_state(Shared { channel, votes })
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}

/// Signature first, then replay: only a request Slack signed, seen for the first time, gets
/// its body read.
async fn verified(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mac = match slack_v0(
        &shared.channel.signing_secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        body,
        SystemTime::now(),
    ) {
        Ok(mac) => mac,
        Err(e) => {
            warn!(error = %e, "slack: callback refused");
            return Err(refuse(StatusCode::UNAUTHORIZED, &e.to_string()));
        }
    };
    // Keyed by the MAC itself: the header's text could be respelled (hex in capitals).
    if !shared
        .votes
        .first_delivery(&format!("slack:{}", hex::encode(mac)))
        .await
    {
        warn!("slack: replayed callback refused");
        return Err(refuse(StatusCode::UNAUTHORIZED, "replayed"));
    }
    Ok(())
}

/// What to do with one verified vote, once its approval is known.
struct Pending {
    approval_id: Option<String>,
    /// For a reaction: the message, to look the approval up by.
    message: Option<(String, String)>,
    user: String,
    via: VoteVia,
    ballot: Ballot,
    /// Where to tell the voter about a refusal.
    reply_channel: Option<String>,
}

async fn cast(shared: Shared, pending: Pending) {
    let approval_id = match (pending.approval_id, &pending.message) {
        (Some(id), _) => id,
        (None, Some((channel, ts))) => {
            match shared
                .votes
                .approval_for_message(ChannelKind::Slack, channel, ts)
                .await
            {
                Some(id) => id,
                // A reaction on some other message: not ours to count.
                None => return,
            }
        }
        (None, None) => return,
    };
    let call = VoteCall {
        approval_id: approval_id.clone(),
        channel: ChannelKind::Slack,
        chat_user_id: pending.user.clone(),
        via: pending.via,
        ballot: pending.ballot,
        comment: None,
        authentication: crate::channel::by_chat(),
    };
    match shared.votes.vote(call).await {
        VoteReply::Counted { repeat, .. } => {
            info!(approval_id = %approval_id, user = %pending.user, ballot = ?pending.ballot, via = ?pending.via, repeat, "slack: vote counted");
        }
        VoteReply::Refused { reason, .. } => {
            info!(approval_id = %approval_id, user = %pending.user, ballot = ?pending.ballot, via = ?pending.via, reason = %reason, "slack: vote refused");
            let Some(channel_id) = pending.reply_channel.filter(|c| !c.is_empty()) else {
                warn!(approval_id = %approval_id, user = %pending.user, "slack: no channel to explain a refusal in");
                return;
            };
            if let Err(e) = shared
                .channel
                .tell(&channel_id, &pending.user, &reason)
                .await
            {
                warn!(approval_id = %approval_id, user = %pending.user, error = %e, "slack: could not tell the voter why");
            }
        }
    }
}

/// Counts the votes in the background and waits for them only as long as Slack waits for us.
async fn cast_all(shared: &Shared, votes: Vec<Pending>) {
    if votes.is_empty() {
        return;
    }
    let shared = shared.clone();
    let task = tokio::spawn(async move {
        for pending in votes {
            cast(shared.clone(), pending).await;
        }
    });
    if tokio::time::timeout(ANSWER_WITHIN, task).await.is_err() {
        warn!("slack: vote still being counted; answering Slack first");
    }
}

async fn interactivity(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refusal) = verified(&shared, &headers, &body).await {
        return refusal;
    }
    let Some(payload) = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
    else {
        return refuse(StatusCode::BAD_REQUEST, "no payload");
    };
    let event: SlackInteractionEvent = match serde_json::from_str(&payload) {
        Ok(event) => event,
        Err(e) => {
            // Position only: the payload carries the app's verification token.
            warn!(line = e.line(), column = e.column(), category = ?e.classify(), "slack: unreadable interaction payload");
            return refuse(StatusCode::BAD_REQUEST, "unreadable payload");
        }
    };
    let SlackInteractionEvent::BlockActions(actions) = event else {
        return StatusCode::OK.into_response();
    };
    // One interaction, one count: a click Slack delivers again (re-signed, so the signature
    // check cannot tell) carries the same trigger id.
    let trigger = actions.trigger_id.to_string();
    let Some(trigger) = crate::channel::platform_id(&trigger) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the interaction has no usable trigger_id",
        );
    };
    if !shared
        .votes
        .first_delivery(&format!("slack-action:{trigger}"))
        .await
    {
        info!("slack: interaction already handled");
        return StatusCode::OK.into_response();
    }
    let Some(user) = actions.user.as_ref().map(|u| u.id.to_string()) else {
        return StatusCode::OK.into_response();
    };
    let reply_channel =
        actions
            .channel
            .as_ref()
            .map(|c| c.id.to_string())
            .or_else(|| match &actions.container {
                SlackInteractionActionContainer::Message(m) => {
                    m.channel_id.as_ref().map(|c| c.to_string())
                }
                SlackInteractionActionContainer::MessageAttachment(m) => {
                    m.channel_id.as_ref().map(|c| c.to_string())
                }
                SlackInteractionActionContainer::View(_) => None,
            });
    let votes: Vec<Pending> = actions
        .actions
        .iter()
        .flatten()
        .filter_map(|action| {
            let ballot = match action.action_id.value().as_str() {
                APPROVE_ACTION => Ballot::Approve,
                DENY_ACTION => Ballot::Deny,
                _ => return None,
            };
            let approval_id = action.value.as_deref().map(str::trim)?;
            if approval_id.is_empty() {
                return None;
            }
            Some(Pending {
                approval_id: Some(approval_id.to_owned()),
                message: None,
                user: user.clone(),
                via: VoteVia::Button,
                ballot,
                reply_channel: reply_channel.clone(),
            })
        })
        .collect();
    cast_all(&shared, votes).await;
    StatusCode::OK.into_response()
}

async fn events(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refusal) = verified(&shared, &headers, &body).await {
        return refusal;
    }
    let event: SlackPushEvent = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            warn!(line = e.line(), column = e.column(), category = ?e.classify(), "slack: unreadable event");
            return refuse(StatusCode::BAD_REQUEST, "unreadable event");
        }
    };
    let callback = match event {
        SlackPushEvent::UrlVerification(v) => {
            info!("slack: events URL verified");
            return axum::Json(serde_json::json!({ "challenge": v.challenge })).into_response();
        }
        SlackPushEvent::EventCallback(callback) => callback,
        SlackPushEvent::AppRateLimited(_) => {
            warn!("slack: Events API deliveries are being rate limited");
            return StatusCode::OK.into_response();
        }
    };
    // Slack retries an event with a fresh signature; the event id stays the same.
    if !shared
        .votes
        .first_delivery(&format!("slack-event:{}", callback.event_id))
        .await
    {
        info!(event_id = %callback.event_id, "slack: event already handled");
        return StatusCode::OK.into_response();
    }
    let (user, reaction, item, added) = match &callback.event {
        SlackEventCallbackBody::ReactionAdded(e) => (&e.user, &e.reaction, &e.item, true),
        SlackEventCallbackBody::ReactionRemoved(e) => (&e.user, &e.reaction, &e.item, false),
        _ => return StatusCode::OK.into_response(),
    };
    let SlackReactionsItem::Message(message) = item else {
        return StatusCode::OK.into_response();
    };
    let Some(channel) = message.origin.channel.as_ref().map(|c| c.to_string()) else {
        return StatusCode::OK.into_response();
    };
    let Some(ballot) = shared.channel.ballot_for(reaction.value(), added) else {
        return StatusCode::OK.into_response();
    };
    let pending = Pending {
        approval_id: None,
        message: Some((channel.clone(), message.origin.ts.to_string())),
        user: user.to_string(),
        via: VoteVia::Reaction,
        ballot,
        reply_channel: Some(channel),
    };
    cast_all(&shared, vec![pending]).await;
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_mentions_and_links() {
        assert_eq!(
            escape("<!channel> & <https://x|y>"),
            "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
        );
    }

    #[test]
    fn clip_never_leaves_half_an_escape() {
        let clipped = clip("ab&amp;cd".to_owned(), 5);
        assert_eq!(clipped, "ab…");
        assert_eq!(clip("short".to_owned(), 10), "short");
    }

    #[test]
    fn api_url_must_be_https_unless_loopback() {
        assert_eq!(api_base(None).unwrap(), "https://slack.com/api");
        assert_eq!(
            api_base(Some("http://127.0.0.1:8080/api/")).unwrap(),
            "http://127.0.0.1:8080/api"
        );
        assert!(api_base(Some("http://slack.example.com/api/")).is_err());
        assert!(api_base(Some("ftp://slack.com/api/")).is_err());
    }
}
