//! The one place a refused request becomes a response: a Kubernetes `Status` whose message
//! starts `gatehouse:`, so kubectl and client libraries print it as they print the API server's
//! own errors.

use bytes::Bytes;
use gatehouse_bus::PublishError;
use gatehouse_events::{DenialReason, RequestInfo};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::authn::AuthnError;
use crate::body::ProxyBody;
use crate::policy::Denial;

/// Header carrying the Gatehouse request id on every response, to find its events.
pub const REQUEST_ID_HEADER: &str = "x-gatehouse-request-id";

/// Why Gatehouse answered a request itself instead of forwarding it.
#[derive(Debug)]
pub enum Rejection {
    /// The request cannot be read unambiguously.
    BadRequest(String),
    Unauthenticated(AuthnError),
    /// A valid token for a principal the registry does not know.
    UnknownIdentity {
        principal: String,
    },
    Policy(Denial),
    BodyTooLarge {
        limit: usize,
    },
    /// `request.received` was not acked; nothing was forwarded.
    NatsUnavailable(PublishError),
    /// Allowed, but the API server could not be reached.
    UpstreamUnavailable(String),
    /// The API server answered in a form that cannot be masked; its answer is withheld.
    Unmaskable(String),
    /// Held for approval, and an approver denied it.
    ApprovalDenied {
        approval_id: String,
        rule: String,
        by: String,
        comment: Option<String>,
    },
    /// Held for approval, and nobody decided before the hold timed out.
    ApprovalExpired {
        approval_id: String,
        rule: String,
        quorum: u32,
        approver_groups: String,
    },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Rejection::UnknownIdentity { .. }
            | Rejection::Policy(_)
            | Rejection::ApprovalDenied { .. }
            | Rejection::ApprovalExpired { .. } => StatusCode::FORBIDDEN,
            Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::NatsUnavailable(_) | Rejection::UpstreamUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::Unmaskable(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The Kubernetes `StatusReason`.
    fn reason(&self) -> &'static str {
        match self {
            Rejection::BadRequest(_) => "BadRequest",
            Rejection::Unauthenticated(_) => "Unauthorized",
            Rejection::UnknownIdentity { .. }
            | Rejection::Policy(_)
            | Rejection::ApprovalDenied { .. }
            | Rejection::ApprovalExpired { .. } => "Forbidden",
            Rejection::BodyTooLarge { .. } => "RequestEntityTooLarge",
            Rejection::NatsUnavailable(_) | Rejection::UpstreamUnavailable(_) => {
                "ServiceUnavailable"
            }
            Rejection::Unmaskable(_) => "InternalError",
        }
    }

    /// The reason recorded in `request.denied`.
    pub fn denial_reason(&self) -> DenialReason {
        match self {
            Rejection::BadRequest(_) | Rejection::BodyTooLarge { .. } => DenialReason::BadRequest,
            Rejection::Unauthenticated(_) => DenialReason::Authentication,
            Rejection::UnknownIdentity { .. } => DenialReason::UnknownIdentity,
            Rejection::Policy(_) => DenialReason::Policy,
            Rejection::ApprovalDenied { .. } => DenialReason::ApprovalDenied,
            Rejection::ApprovalExpired { .. } => DenialReason::ApprovalExpired,
            Rejection::NatsUnavailable(_) => DenialReason::NatsUnavailable,
            Rejection::UpstreamUnavailable(_) | Rejection::Unmaskable(_) => {
                DenialReason::UpstreamUnavailable
            }
        }
    }

    /// The policy rule behind the refusal, if any.
    pub fn rule(&self) -> Option<String> {
        match self {
            Rejection::Policy(d) => d.rule.clone(),
            Rejection::ApprovalDenied { rule, .. } | Rejection::ApprovalExpired { rule, .. } => {
                Some(rule.clone())
            }
            _ => None,
        }
    }

    /// The message, without the `gatehouse: ` prefix. Never holds a token or a masked value.
    pub fn message(&self) -> String {
        match self {
            Rejection::BadRequest(m) => format!("bad request: {m}"),
            Rejection::Unauthenticated(e) => format!("authentication failed: {e}"),
            Rejection::UnknownIdentity { principal } => format!(
                "identity {principal:?} is not in the identity registry, so nobody answers for it; \
                 ask its owner to register it"
            ),
            Rejection::Policy(d) => d.message.clone(),
            Rejection::BodyTooLarge { limit } => {
                format!("the request body is larger than the {limit}-byte limit")
            }
            Rejection::NatsUnavailable(e) => {
                format!("the audit trail is unavailable ({e}); the request was not forwarded")
            }
            Rejection::UpstreamUnavailable(e) => {
                format!("the Kubernetes API server is unavailable: {e}")
            }
            Rejection::Unmaskable(what) => format!(
                "the API server's answer ({what}) cannot be masked as policy requires, so it is withheld"
            ),
            Rejection::ApprovalDenied {
                approval_id,
                rule,
                by,
                comment,
            } => {
                let mut message = format!(
                    "approval {approval_id} (rule {rule}) was denied by {by}, so the request was \
                     not forwarded"
                );
                if let Some(comment) = comment.as_deref().filter(|c| !c.trim().is_empty()) {
                    message.push_str(&format!(": {:?}", comment.trim()));
                }
                message
            }
            Rejection::ApprovalExpired {
                approval_id,
                rule,
                quorum,
                approver_groups,
            } => format!(
                "approval {approval_id} (rule {rule}) expired: {quorum} approval{} from \
                 {approver_groups} did not arrive in time, so the request was not forwarded",
                if *quorum == 1 { "" } else { "s" }
            ),
        }
    }

    /// This refusal as a watch stream's last event: an `ERROR` event holding the `Status`, as
    /// kube-apiserver ends a watch it cannot go on with.
    pub fn watch_error_event(&self, info: Option<&RequestInfo>) -> Bytes {
        let event = json!({"type": "ERROR", "object": self.status_object(info)});
        Bytes::from(format!("{event}\n"))
    }

    fn status_object(&self, info: Option<&RequestInfo>) -> serde_json::Value {
        let status = self.status();
        let mut details = serde_json::Map::new();
        if let Some(info) = info.filter(|i| i.is_resource_request) {
            if !info.name.is_empty() {
                details.insert("name".into(), info.name.clone().into());
            }
            details.insert("group".into(), info.api_group.clone().into());
            details.insert("kind".into(), info.resource.clone().into());
        }
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("gatehouse: {}", self.message()),
            "reason": self.reason(),
            "details": details,
            "code": status.as_u16(),
        })
    }

    /// The `Status` response for this refusal.
    pub fn into_response(
        &self,
        request_id: &str,
        info: Option<&RequestInfo>,
    ) -> Response<ProxyBody> {
        let status = self.status();
        let body = self.status_object(info);
        let mut response = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID_HEADER, id);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gatehouse\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(r: Response<ProxyBody>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn policy_denials_are_kubernetes_status_objects() {
        let rejection = Rejection::Policy(Denial {
            rule: Some("no-secrets".into()),
            message: "ci-deployer may not get secrets".into(),
        });
        let info =
            crate::request_info::parse("GET", "/api/v1/namespaces/prod/secrets/db", None).unwrap();
        let response = rejection.into_response("01J00000000000000000000000", Some(&info));
        assert_eq!(response.status(), 403);
        assert_eq!(
            response.headers()[REQUEST_ID_HEADER],
            "01J00000000000000000000000"
        );
        let status = body_json(response).await;
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(status["code"], 403);
        assert_eq!(
            status["message"],
            "gatehouse: ci-deployer may not get secrets"
        );
        assert_eq!(status["details"]["name"], "db");
        assert_eq!(status["details"]["kind"], "secrets");
    }

    #[tokio::test]
    async fn nats_outage_is_a_503_that_says_nothing_was_forwarded() {
        let r = Rejection::NatsUnavailable(PublishError::Disconnected);
        assert_eq!(r.denial_reason(), DenialReason::NatsUnavailable);
        let response = r.into_response("id", None);
        assert_eq!(response.status(), 503);
        let status = body_json(response).await;
        assert_eq!(status["reason"], "ServiceUnavailable");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .ends_with("the request was not forwarded"),
            "{status}"
        );
    }

    #[tokio::test]
    async fn authentication_failures_are_401_with_a_challenge() {
        let response = Rejection::Unauthenticated(AuthnError::Expired).into_response("id", None);
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        let status = body_json(response).await;
        assert_eq!(
            status["message"],
            "gatehouse: authentication failed: the token has expired"
        );
    }
}
