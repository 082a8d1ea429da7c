//! The approval service's own API, for approvers without a chat account and for operators
//! (`gatehouse approvals list|vote`, `gatehouse grants list|revoke`).
//!
//! Every call carries a bearer token from a configured issuer; the token's principal must be
//! an identity in the approver registry. A vote through the API is counted like a chat vote
//! (channel `api`, via `command`), under the same rules.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/approvals?state=pending\|all` | holds, newest last |
//! | GET | `/v1/approvals/{id}` | one hold |
//! | POST | `/v1/approvals/{id}/vote` | `{"vote": "approve"\|"deny"\|"withdraw", "comment": …}` |
//! | GET | `/v1/grants` | active grants |
//! | DELETE | `/v1/grants/{id}` | `{"reason": …}` (optional): revoke |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gatehouse_authn::Authenticator;
use gatehouse_events::{
    Ballot, ChannelKind, GrantIssued, VoteVia, VoterAuthMethod, VoterAuthentication,
};
use gatehouse_events::{BodyEncoding, RecordedBody};
use gatehouse_signin::{Session, SignIn};
use serde::{Deserialize, Serialize};

use crate::channel::{HoldState, VoteCall, VoteReply};
use crate::service::Service;
use crate::store::ApprovalRecord;

#[derive(Clone)]
struct Api {
    service: Arc<Service>,
    authenticator: Arc<Authenticator>,
    /// The approver page's sign-in: its session cookie authenticates calls without a token.
    signin: Option<Arc<SignIn>>,
}

pub fn routes(
    service: Arc<Service>,
    authenticator: Arc<Authenticator>,
    signin: Option<Arc<SignIn>>,
) -> Router {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/vote", post(vote))
        .route("/v1/grants", get(grants))
        .route("/v1/grants/{id}", delete(revoke))
        .with_state(Api {
            service,
            authenticator,
            signin,
        })
}

/// One hold as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HoldSummary {
    pub approval_id: String,
    pub request_id: String,
    /// `pending`, `approved`, `denied`, `expired` or `withdrawn`.
    pub state: String,
    pub principal: String,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub reason: Option<String>,
    pub rule: String,
    pub approver_groups: Vec<String>,
    pub quorum: u32,
    pub expires_at: String,
    pub votes: Vec<VoteSummary>,
    pub decided_at: Option<String>,
    pub grant_id: Option<String>,
    /// The identity's purpose, from the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub subresource: String,
    /// The request body, masked as the record is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HoldBody>,
    /// For an update or patch: the object before and after (the API server's dry run), masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ObjectChange>,
    /// The rule asks for a fresh sign-in before a vote counts: at most this many seconds old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up_max_age: Option<u64>,
    /// The caller's own sign-in is not enough for this hold's step-up: sign in again.
    #[serde(default)]
    pub step_up_required: bool,
    /// What the caller may do with the hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewer: Option<Viewer>,
}

/// A held request's body as approvers see it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HoldBody {
    pub content_type: String,
    /// Something in it was masked.
    pub masked: bool,
    /// The body, when it is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Otherwise its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Why it is not shown, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<String>,
}

impl HoldBody {
    fn of(body: &RecordedBody) -> Self {
        let content_type = body
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        let masked = body.data.contains(gatehouse_events::MASKED_TEXT);
        let mut shown = Self {
            content_type,
            masked,
            value: None,
            text: None,
            omitted: None,
        };
        match body.encoding {
            BodyEncoding::Omitted => {
                shown.omitted = Some(
                    "it needed masking and is in a form that cannot be masked (only its digest \
                     is kept)"
                        .into(),
                );
            }
            BodyEncoding::Base64 => shown.omitted = Some("it is binary".into()),
            BodyEncoding::Text if body.truncated => {
                shown.text = Some(body.data.clone());
                shown.omitted = Some(format!(
                    "only its first {} of {} bytes are kept",
                    body.data.len(),
                    body.whole.bytes
                ));
            }
            BodyEncoding::Text => match serde_json::from_str(&body.data) {
                Ok(value) => shown.value = Some(value),
                Err(_) => shown.text = Some(body.data.clone()),
            },
        }
        shown
    }
}

/// A held write's object before and after, as the approver page diffs them.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ObjectChange {
    pub current: Option<serde_json::Value>,
    pub proposed: Option<serde_json::Value>,
    /// The patch's content type, for a patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    pub read_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The caller's standing on a hold.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Viewer {
    pub principal: String,
    pub can_vote: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cannot_vote_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_vote: Option<Ballot>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct VoteSummary {
    pub approver: String,
    pub vote: Ballot,
    pub channel: ChannelKind,
    pub via: VoteVia,
    pub at: String,
}

/// The answer to a vote.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct VoteResult {
    pub counted: bool,
    /// The same vote again: nothing changed.
    pub repeat: bool,
    pub refusal: Option<String>,
    pub hold: Option<HoldSummary>,
    /// The vote needs a fresh sign-in: the page sends the approver through one.
    #[serde(default)]
    pub step_up_required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    vote: Ballot,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    state: Option<String>,
}

impl From<&ApprovalRecord> for HoldSummary {
    fn from(record: &ApprovalRecord) -> Self {
        let view = record.view();
        let (state, decided_at) = match &view.state {
            HoldState::Pending { .. } => ("pending", None),
            HoldState::Approved { decided_at, .. } => ("approved", Some(decided_at.clone())),
            HoldState::Denied { decided_at, .. } => ("denied", Some(decided_at.clone())),
            HoldState::Expired { decided_at } => ("expired", Some(decided_at.clone())),
            HoldState::Withdrawn { at, .. } => ("withdrawn", Some(at.clone())),
        };
        Self {
            approval_id: view.approval_id,
            request_id: view.request_id,
            state: state.to_owned(),
            principal: view.principal,
            owner: view.owner,
            team: view.team,
            verb: view.verb,
            resource: view.resource,
            namespace: view.namespace,
            name: view.name,
            reason: view.reason,
            rule: view.rule,
            approver_groups: view.approver_groups,
            quorum: view.quorum,
            expires_at: view.expires_at,
            votes: view
                .votes
                .into_iter()
                .map(|v| VoteSummary {
                    approver: v.approver,
                    vote: v.ballot,
                    channel: v.channel,
                    via: v.via,
                    at: v.at,
                })
                .collect(),
            decided_at,
            grant_id: record.grant.as_ref().map(|g| g.grant_id.clone()),
            purpose: view.purpose,
            api_group: record.held.request.api_group.clone(),
            subresource: record.held.request.subresource.clone(),
            body: record.held.content.as_ref().map(HoldBody::of),
            change: record.held.change.as_ref().map(|c| ObjectChange {
                current: c.current.clone(),
                proposed: c.proposed.clone(),
                patch_type: (record.held.request.verb == "patch")
                    .then(|| record.held.content.as_ref()?.content_type.clone())
                    .flatten(),
                read_at: c.read_at.clone(),
                note: c.note.clone(),
            }),
            step_up_max_age: record.held.step_up.as_ref().map(|s| s.max_age_s),
            step_up_required: false,
            viewer: None,
        }
    }
}

/// An API refusal: a status and one sentence, as JSON `{"error": …}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "approval API: store unavailable");
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the approval store is unavailable; try again".into(),
    )
}

/// An approval or grant id from the path, checked before it goes near the store's keys: both
/// are ULIDs (26 characters of Crockford base32), answered in their canonical spelling.
fn checked_id(what: &str, id: &str) -> Result<String, ApiError> {
    ulid::Ulid::from_string(id)
        .ok()
        .map(|ulid| ulid.to_string())
        // Only the canonical spelling (in either case): the parser wraps an overflowing first
        // character, and two spellings must not name one hold.
        .filter(|canonical| canonical.eq_ignore_ascii_case(id))
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!(
                    "that is not {what} id: ids are 26 characters of Crockford base32 (a ULID)"
                ),
            )
        })
}

/// The longest comment or reason accepted, in characters.
const MAX_TEXT: usize = 1024;

/// A comment or reason as it will be shown in chat and kept in the record: at most
/// [`MAX_TEXT`] characters, no control characters but newlines and tabs.
fn checked_text(what: &str, text: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    if text.chars().count() > MAX_TEXT {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("the {what} is longer than {MAX_TEXT} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("the {what} holds a control character"),
        ));
    }
    Ok(Some(text))
}

/// Who is calling: a bearer token's principal, or the approver page's signed-in session.
struct Caller {
    principal: String,
    authentication: VoterAuthentication,
    session: Option<Session>,
}

/// The caller's approver identity and how it was authenticated, or why not. A call with an
/// `Authorization` header is judged by its token alone; without one, by the approver page's
/// session cookie, from this site only.
async fn approver(api: &Api, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = match api
        .signin
        .as_ref()
        .filter(|_| !headers.contains_key(AUTHORIZATION))
    {
        Some(signin) => {
            let session = signin.session(headers).ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "sign in to see or vote on holds".into(),
                )
            })?;
            if let Some(site) = headers.get("sec-fetch-site")
                && !matches!(site.to_str(), Ok("same-origin" | "none"))
            {
                return Err(ApiError(
                    StatusCode::FORBIDDEN,
                    "the approver page's session is good for this site's pages only".into(),
                ));
            }
            let authentication = session_authentication(&session);
            Caller {
                principal: session.subject().to_owned(),
                authentication,
                session: Some(session),
            }
        }
        None => {
            let verified = api
                .authenticator
                .authenticate(headers, None)
                .await
                .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string()))?;
            Caller {
                authentication: VoterAuthentication {
                    method: VoterAuthMethod::Token,
                    issuer: Some(verified.issuer.clone()),
                    subject: Some(verified.subject.clone()),
                    auth_time: None,
                    amr: Vec::new(),
                    acr: None,
                },
                principal: verified.principal,
                session: None,
            }
        }
    };
    if api
        .service
        .approvers()
        .voter(ChannelKind::Api, &caller.principal)
        .is_none()
    {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not in the approver registry, so it cannot see or vote on holds",
                caller.principal
            ),
        ));
    }
    Ok(caller)
}

/// How a page sign-in authenticated its approver, as the vote records it.
pub fn session_authentication(session: &Session) -> VoterAuthentication {
    VoterAuthentication {
        method: VoterAuthMethod::SignIn,
        issuer: Some(session.issuer().to_owned()),
        subject: Some(session.subject().to_owned()),
        auth_time: Some(gatehouse_events::envelope::format_rfc3339(
            session.auth_time(),
        )),
        amr: session.amr().to_vec(),
        acr: session.acr().map(str::to_owned),
    }
}

/// The caller's standing on `record`, and whether their sign-in is too old for its step-up.
fn viewer(api: &Api, caller: &Caller, record: &ApprovalRecord) -> (Viewer, bool) {
    let step_up_required = record.held.step_up.as_ref().is_some_and(|step_up| {
        crate::service::stepped_up(
            step_up,
            &caller.authentication,
            std::time::SystemTime::now(),
        )
        .is_err()
    });
    let own_vote = record
        .votes
        .iter()
        .rev()
        .find(|v| v.approver == caller.principal)
        .map(|v| v.vote);
    let cannot_vote_reason = if !record.is_open() {
        Some("the hold is decided".to_owned())
    } else if record.held.identity.principal == caller.principal {
        Some("nobody may vote on their own request".to_owned())
    } else if !api
        .service
        .approvers()
        .voter(ChannelKind::Api, &caller.principal)
        .is_some_and(|v| {
            v.groups
                .iter()
                .any(|g| record.held.approver_groups.contains(g))
        })
    {
        Some(format!(
            "{} is not in the approver groups of this hold ({})",
            caller.principal,
            record.held.approver_groups.join(", ")
        ))
    } else {
        None
    };
    (
        Viewer {
            principal: caller.principal.clone(),
            can_vote: cannot_vote_reason.is_none(),
            cannot_vote_reason,
            own_vote,
        },
        step_up_required,
    )
}

async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<HoldSummary>>, ApiError> {
    approver(&api, &headers).await?;
    let all = match query.state.as_deref() {
        None | Some("pending") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("state must be pending or all, not {other:?}"),
            ));
        }
    };
    let records = api.service.store().list().await.map_err(unavailable)?;
    Ok(Json(
        records
            .iter()
            .filter(|r| all || (r.is_open() && r.expires_at() > std::time::SystemTime::now()))
            .map(HoldSummary::from)
            .collect(),
    ))
}

async fn show(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<HoldSummary>, ApiError> {
    let caller = approver(&api, &headers).await?;
    let id = checked_id("an approval", &id)?;
    match api.service.store().load(&id).await.map_err(unavailable)? {
        Some((record, _)) => {
            let mut hold = HoldSummary::from(&record);
            let (viewer, step_up_required) = viewer(&api, &caller, &record);
            hold.viewer = Some(viewer);
            hold.step_up_required = step_up_required;
            Ok(Json(hold))
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no approval {id}"))),
    }
}

async fn vote(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = approver(&api, &headers).await?;
    if let (Some(signin), Some(session)) = (&api.signin, &caller.session) {
        let token = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        signin
            .check_csrf(session, &headers, token)
            .map_err(|e| ApiError(StatusCode::FORBIDDEN, e.to_string()))?;
    }
    let id = checked_id("an approval", &id)?;
    let body: VoteBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"vote\": \"approve\"|\"deny\"|\"withdraw\"}}: {e}"),
        )
    })?;
    let reply = api
        .service
        .count(VoteCall {
            approval_id: id,
            channel: ChannelKind::Api,
            chat_user_id: caller.principal.clone(),
            via: if caller.session.is_some() {
                VoteVia::Page
            } else {
                VoteVia::Command
            },
            ballot: body.vote,
            comment: checked_text("comment", body.comment)?,
            authentication: caller.authentication.clone(),
        })
        .await;
    let hold = |approval_id: &str| {
        let store = api.service.store().clone();
        let approval_id = approval_id.to_owned();
        let (api, caller) = (&api, &caller);
        async move {
            let (record, _) = store.load(&approval_id).await.ok().flatten()?;
            let mut hold = HoldSummary::from(&record);
            let (viewer, step_up_required) = viewer(api, caller, &record);
            hold.viewer = Some(viewer);
            hold.step_up_required = step_up_required;
            Some(hold)
        }
    };
    Ok(match reply {
        VoteReply::Counted { view, repeat } => {
            let hold = hold(&view.approval_id).await;
            Json(VoteResult {
                counted: true,
                repeat,
                refusal: None,
                hold,
                step_up_required: false,
            })
            .into_response()
        }
        VoteReply::Refused { reason, view } => {
            let hold = match view {
                Some(view) => hold(&view.approval_id).await,
                None => None,
            };
            let status = if hold.is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::NOT_FOUND
            };
            let step_up_required = hold.as_ref().is_some_and(|h| h.step_up_required);
            (
                status,
                Json(VoteResult {
                    counted: false,
                    repeat: false,
                    refusal: Some(reason),
                    hold,
                    step_up_required,
                }),
            )
                .into_response()
        }
    })
}

async fn grants(
    State(api): State<Api>,
    headers: HeaderMap,
) -> Result<Json<Vec<GrantIssued>>, ApiError> {
    approver(&api, &headers).await?;
    Ok(Json(api.service.grants().await.map_err(unavailable)?))
}

async fn revoke(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<GrantIssued>, ApiError> {
    let principal = approver(&api, &headers).await?.principal;
    let id = checked_id("a grant", &id)?;
    let body: RevokeBody = if body.is_empty() {
        RevokeBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"reason\": \"…\"}}: {e}"),
            )
        })?
    };
    match api
        .service
        .revoke_grant(&id, &principal, checked_text("reason", body.reason)?)
        .await
        .map_err(unavailable)?
    {
        Some(grant) => Ok(Json(grant)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no active grant {id}"),
        )),
    }
}
