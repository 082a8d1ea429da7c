//! A client of the approval service's API ([`crate::api`]), for `gatehouse approvals` and
//! `gatehouse grants` (and tests).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_events::{Ballot, GrantIssued};
use gatehouse_https::client::{HttpsClient, client_tls, https_client};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;

use crate::api::{HoldSummary, VoteResult};

const TIMEOUT: Duration = Duration::from_secs(30);
const LIMIT: usize = 16 << 20;

pub struct ApprovalClient {
    base: String,
    token: String,
    http: HttpsClient<Full<Bytes>>,
}

impl std::fmt::Debug for ApprovalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalClient")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// What a call failed with; never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The service answered with an error: its status and message.
    #[error("HTTP {status}: {message}")]
    Refused { status: u16, message: String },
}

impl ApprovalClient {
    /// `base` is the service's URL (`https://approval.example:8443`); `ca_file` trusts a
    /// private CA in addition to the public roots.
    pub fn new(base: &str, token: &str, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let tls = client_tls(ca_file, true).map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.trim().to_owned(),
            http: https_client(tls, Duration::from_secs(10)),
        })
    }

    pub async fn list(&self, all: bool) -> Result<Vec<HoldSummary>, ClientError> {
        let state = if all { "all" } else { "pending" };
        self.call(
            http::Method::GET,
            &format!("/v1/approvals?state={state}"),
            None,
        )
        .await
    }

    pub async fn show(&self, approval_id: &str) -> Result<HoldSummary, ClientError> {
        self.call(
            http::Method::GET,
            &format!("/v1/approvals/{approval_id}"),
            None,
        )
        .await
    }

    /// A refused vote is `Ok` with `counted: false` and the refusal.
    pub async fn vote(
        &self,
        approval_id: &str,
        vote: Ballot,
        comment: Option<&str>,
    ) -> Result<VoteResult, ClientError> {
        let body = serde_json::json!({ "vote": vote, "comment": comment });
        match self
            .call::<VoteResult>(
                http::Method::POST,
                &format!("/v1/approvals/{approval_id}/vote"),
                Some(body),
            )
            .await
        {
            Err(ClientError::Refused { status, message }) if status == 403 || status == 404 => {
                // A refusal carries the VoteResult as its body.
                match serde_json::from_str::<VoteResult>(&message) {
                    Ok(result) => Ok(result),
                    Err(_) => Err(ClientError::Refused { status, message }),
                }
            }
            other => other,
        }
    }

    pub async fn grants(&self) -> Result<Vec<GrantIssued>, ClientError> {
        self.call(http::Method::GET, "/v1/grants", None).await
    }

    pub async fn revoke(
        &self,
        grant_id: &str,
        reason: Option<&str>,
    ) -> Result<GrantIssued, ClientError> {
        let body = serde_json::json!({ "reason": reason });
        self.call(
            http::Method::DELETE,
            &format!("/v1/grants/{grant_id}"),
            Some(body),
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |message: String| ClientError::Transport {
            url: url.clone(),
            message,
        };
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| transport(e.to_string()))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| transport(format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), LIMIT)
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body).into_owned();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| transport(format!("unexpected answer: {e}")))
    }
}
