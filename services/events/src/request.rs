//! Payloads of one API request's life in the proxy.
//!
//! Every request produces `request.received` (acked before anything is forwarded), then either
//! `request.denied`, or `request.forwarded` followed by `response.completed`. The event
//! `subject` of all of them is the request id, which is also carried in `data.request_id`.

use std::collections::BTreeMap;

use base64::Engine;
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
    /// Claims the issuer's mapping singled out (GitHub `ref`, `environment`, `workflow`;
    /// Kubernetes `namespace`, `pod`, …), so a reviewer can tell a main-branch deploy from a
    /// pull-request build.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
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

/// How much of a request policy asks to record, as Kubernetes audit levels do.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RecordLevel {
    /// Who, what, when, the decision and digests; no bodies.
    #[default]
    Metadata,
    /// Also the (masked) request body.
    Request,
    /// Also the (masked) response body.
    RequestResponse,
}

impl RecordLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metadata => "metadata",
            Self::Request => "request",
            Self::RequestResponse => "request-response",
        }
    }
}

/// How [`RecordedBody::data`] holds the bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// UTF-8 text (JSON, YAML, plain text), as is.
    Text,
    /// Anything else, base64 (standard alphabet, padded).
    Base64,
    /// Not recorded: the body needed masking but is in a form that cannot be masked (for
    /// example protobuf). Only the digest is kept.
    Omitted,
}

/// A body kept in an event, after masking, cut at the configured size.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RecordedBody {
    pub content_type: Option<String>,
    pub encoding: BodyEncoding,
    /// The first bytes of the masked body (at most the configured limit; text is cut on a
    /// character boundary).
    pub data: String,
    /// True if `data` is shorter than the whole masked body.
    pub truncated: bool,
    /// Size and digest of the whole masked body.
    pub whole: BodyDigest,
}

impl RecordedBody {
    /// Keeps at most `limit` bytes of an already-masked body.
    pub fn capture(
        content_type: Option<&str>,
        masked: &[u8],
        whole: BodyDigest,
        limit: usize,
    ) -> Self {
        let content_type = content_type.map(|c| c.chars().take(200).collect());
        match std::str::from_utf8(masked) {
            Ok(text) => {
                let mut end = text.len().min(limit);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                Self {
                    content_type,
                    encoding: BodyEncoding::Text,
                    data: text[..end].to_owned(),
                    truncated: end < text.len(),
                    whole,
                }
            }
            // A body cut mid-character is still text; only bytes that are not UTF-8 before
            // the cut make it binary.
            Err(e) if e.error_len().is_none() && e.valid_up_to() >= masked.len().min(limit) => {
                Self::capture(
                    content_type.as_deref(),
                    &masked[..e.valid_up_to()],
                    whole,
                    limit,
                )
            }
            Err(_) => {
                let end = masked.len().min(limit);
                Self {
                    content_type,
                    encoding: BodyEncoding::Base64,
                    data: base64::engine::general_purpose::STANDARD.encode(&masked[..end]),
                    truncated: end < masked.len(),
                    whole,
                }
            }
        }
    }

    /// A body that could not be masked: its digest only.
    pub fn omitted(content_type: Option<&str>, whole: BodyDigest) -> Self {
        Self {
            content_type: content_type.map(|c| c.chars().take(200).collect()),
            encoding: BodyEncoding::Omitted,
            data: String::new(),
            truncated: true,
            whole,
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
    /// The request body as the client sent it, when one was read (requests that are denied
    /// before policy are not read).
    pub body: Option<BodyDigest>,
    /// The record level policy chose for this request.
    pub record: RecordLevel,
    /// The masked request body, at record level `request` and above.
    pub content: Option<RecordedBody>,
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
    /// Gatehouse stopped the body: the rest of it could not be masked as policy requires (a
    /// watch gets an `ERROR` event in its place, anything else is cut).
    Withheld,
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
    /// The masked response body as sent, at record level `request-response`; its `whole`
    /// digest equals `body`.
    pub content: Option<RecordedBody>,
}

impl Payload for ResponseCompleted {
    const NAME: &'static str = "response.completed";
}
