//! Payloads of one API request's life in the proxy.
//!
//! Every request produces `request.received` (acked before anything is forwarded), then either
//! `request.denied`, or `request.forwarded` followed by `response.completed`. The event
//! `subject` of all of them is the request id, which is also carried in `data.request_id`.

use serde::{Deserialize, Serialize};

use crate::envelope::Payload;

/// Who made the request, as far as the proxy could establish it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `sub`.
    pub subject: String,
    /// The accountable name the issuer's claim mapping produced; what policy and RBAC see.
    pub principal: String,
    /// Whether the principal is in the identity registry. Unregistered principals are denied.
    pub registered: bool,
    /// The person or team answerable for this machine identity (from the registry).
    pub owner: Option<String>,
    pub team: Option<String>,
    pub purpose: Option<String>,
    /// Groups from the token and the registry, impersonated upstream.
    pub groups: Vec<String>,
}

/// Where the request came from. `forwarded_for` is what the client claimed and is not trusted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The TCP peer address.
    pub ip: String,
    pub port: u16,
    pub forwarded_for: Vec<String>,
}

/// The Kubernetes reading of a request, as kube-apiserver's request-info resolver makes it.
/// Empty strings mean "not applicable", as in Kubernetes' own `RequestInfo`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestInfo {
    /// False for non-resource URLs such as `/version`, `/api`, `/openapi/v3`.
    pub is_resource_request: bool,
    /// The normalised path that was evaluated and forwarded.
    pub path: String,
    /// get, list, watch, create, update, patch, delete, deletecollection, exec, attach,
    /// portforward, proxy; for non-resource URLs the lower-case HTTP method.
    pub verb: String,
    /// `api` or `apis`; empty for non-resource URLs.
    pub api_prefix: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// What policy decided.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecisionAction {
    Allow,
    Deny,
    Approve,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub action: DecisionAction,
    /// The id of the rule that matched; `None` for default deny or a request denied before
    /// policy ran (authentication).
    pub rule: Option<String>,
    /// One sentence a person can read.
    pub reason: String,
}

/// Size and digest of a request or response body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BodyDigest {
    pub bytes: u64,
    /// Lower-case hex BLAKE3 of the body bytes.
    pub blake3: String,
}

impl BodyDigest {
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            blake3: blake3::hash(bytes).to_hex().to_string(),
        }
    }
}

/// `request.received`: published and acked before the request goes anywhere.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestReceived {
    pub request_id: String,
    /// `None` when no identity could be established (no token, bad token).
    pub identity: Option<Identity>,
    pub source: Source,
    pub user_agent: Option<String>,
    pub method: String,
    /// The path exactly as the client sent it (before normalisation).
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    pub request: RequestInfo,
    pub decision: Decision,
    /// The request body, when one was read (requests that are denied are not read).
    pub body: Option<BodyDigest>,
}

impl Payload for RequestReceived {
    const NAME: &'static str = "request.received";
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DenialReason {
    /// No token, a malformed or unverifiable token, wrong issuer or audience, expired.
    Authentication,
    /// A valid token for a principal that is not in the identity registry.
    UnknownIdentity,
    /// A policy rule denied it, or no rule allowed it (default deny).
    Policy,
    ApprovalDenied,
    ApprovalExpired,
    /// The request could not be understood (malformed path, body too large).
    BadRequest,
    /// Policy allowed it but the API server could not be reached.
    UpstreamUnavailable,
    /// The event could not be acked; nothing was forwarded.
    NatsUnavailable,
}

/// `request.denied`: the request was answered by Gatehouse and not forwarded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestDenied {
    pub request_id: String,
    pub reason: DenialReason,
    /// The HTTP status returned to the client.
    pub status: u16,
    /// The message returned to the client, without the `gatehouse: ` prefix.
    pub message: String,
    pub rule: Option<String>,
}

impl Payload for RequestDenied {
    const NAME: &'static str = "request.denied";
}

/// `request.forwarded`: the request was sent to the API server as this identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestForwarded {
    pub request_id: String,
    /// The API server's base URL.
    pub upstream: String,
    pub impersonated_user: String,
    pub impersonated_groups: Vec<String>,
}

impl Payload for RequestForwarded {
    const NAME: &'static str = "request.forwarded";
}

/// How the response stream ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResponseOutcome {
    /// The whole body reached the client.
    Complete,
    /// The client went away before the body ended (normal for watches and `logs -f`).
    ClientDisconnected,
    /// The API server's stream broke.
    UpstreamError,
}

/// `response.completed`: the response (status and body) as the client received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseCompleted {
    pub request_id: String,
    pub status: u16,
    pub outcome: ResponseOutcome,
    /// Body bytes sent to the client and their BLAKE3, after masking.
    pub body: BodyDigest,
    /// Milliseconds from the request's arrival to the end of the response body.
    pub duration_ms: f64,
    pub masked_fields: u64,
}

impl Payload for ResponseCompleted {
    const NAME: &'static str = "response.completed";
}
