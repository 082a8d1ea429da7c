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
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gatehouse_authn::Authenticator;
use gatehouse_events::{
    Ballot, ChannelKind, GrantIssued, VoteVia, VoterAuthMethod, VoterAuthentication,
};
use serde::{Deserialize, Serialize};

use crate::channel::{HoldState, VoteCall, VoteReply};
use crate::service::Service;
use crate::store::ApprovalRecord;

#[derive(Clone)]
struct Api {
    service: Arc<Service>,
    authenticator: Arc<Authenticator>,
}

pub fn routes(service: Arc<Service>, authenticator: Arc<Authenticator>) -> Router {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/vote", post(vote))
        .route("/v1/grants", get(grants))
        .route("/v1/grants/{id}", delete(revoke))
        .with_state(Api {
            service,
            authenticator,
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

/// The caller's approver identity and how it was authenticated, or why not.
async fn approver(
    api: &Api,
    headers: &HeaderMap,
) -> Result<(String, VoterAuthentication), ApiError> {
    let verified = api
        .authenticator
        .authenticate(headers, None)
        .await
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.to_string()))?;
    if api
        .service
        .approvers()
        .voter(ChannelKind::Api, &verified.principal)
        .is_none()
    {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not in the approver registry, so it cannot see or vote on holds",
                verified.principal
            ),
        ));
    }
    let authentication = VoterAuthentication {
        method: VoterAuthMethod::Token,
        issuer: Some(verified.issuer.clone()),
        subject: Some(verified.subject.clone()),
        auth_time: None,
        amr: Vec::new(),
        acr: None,
    };
    Ok((verified.principal, authentication))
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
    approver(&api, &headers).await?;
    let id = checked_id("an approval", &id)?;
    match api.service.store().load(&id).await.map_err(unavailable)? {
        Some((record, _)) => Ok(Json(HoldSummary::from(&record))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no approval {id}"))),
    }
}

async fn vote(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (principal, authentication) = approver(&api, &headers).await?;
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
            chat_user_id: principal,
            via: VoteVia::Command,
            ballot: body.vote,
            comment: checked_text("comment", body.comment)?,
            authentication,
        })
        .await;
    let hold = |approval_id: &str| {
        let store = api.service.store().clone();
        let approval_id = approval_id.to_owned();
        async move {
            store
                .load(&approval_id)
                .await
                .ok()
                .flatten()
                .map(|(r, _)| HoldSummary::from(&r))
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
            (
                status,
                Json(VoteResult {
                    counted: false,
                    repeat: false,
                    refusal: Some(reason),
                    hold,
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
    let (principal, _) = approver(&api, &headers).await?;
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
