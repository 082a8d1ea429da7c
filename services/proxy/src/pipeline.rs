//! The order of the phases, in one place:
//!
//! ```text
//! parse → authenticate → identify → authorize → read body → RECORD (acked) → forward → stream
//!                                                              │               │         │
//!            any refusal ─────────────────────────────────────┴── denied ─────┘   completed
//! ```
//!
//! Admission (parse … read body) touches nothing outside the process. Its outcome, allowed or
//! not, is recorded as `request.received` and acked before anything else happens; if that fails
//! the caller gets a 503 and nothing is forwarded. A refusal at any phase is recorded as
//! `request.denied` and answered by [`Rejection::into_response`]; a forwarded request is
//! recorded as `request.forwarded` and, when its body ends, `response.completed`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gatehouse_events::{
    BodyDigest, Decision as RecordedDecision, DecisionAction, Identity, RequestInfo, Source,
};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::authn::Authenticator;
use crate::body::{ProxyBody, RecordedBody};
use crate::forward::{Upstream, strip_hop_by_hop};
use crate::identity::Registry;
use crate::policy::{Decision, Permitted, PolicyInput, SharedPolicy};
use crate::record::Recorder;
use crate::request_info;
use crate::rescue::{REQUEST_ID_HEADER, Rejection};
use crate::server::PeerCertificate;

/// What the proxy knows about one request as it moves through the phases.
#[derive(Debug)]
pub struct RequestContext {
    /// ULID; the `subject` of every event of this request.
    pub id: String,
    pub started: Instant,
    pub method: String,
    /// The path as the client sent it.
    pub raw_path: String,
    pub query: Option<String>,
    pub peer: SocketAddr,
    pub user_agent: Option<String>,
    pub forwarded_for: Vec<String>,
    /// The parsed request (or, if it could not be parsed, a non-resource reading of the raw
    /// path, so the refusal is still recorded).
    pub info: RequestInfo,
    pub identity: Option<Identity>,
    /// The connection's verified client certificate (mTLS), if any.
    pub client_cert: Option<PeerCertificate>,
}

impl RequestContext {
    fn new(request: &Request<Incoming>, peer: SocketAddr) -> Self {
        let headers = request.headers();
        Self {
            id: ulid::Ulid::new().to_string(),
            started: Instant::now(),
            method: request.method().as_str().to_owned(),
            raw_path: request.uri().path().to_owned(),
            query: request.uri().query().map(str::to_owned),
            peer,
            user_agent: header_text(headers, http::header::USER_AGENT.as_str()),
            forwarded_for: header_text(headers, "x-forwarded-for")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default(),
            info: RequestInfo {
                path: request.uri().path().to_owned(),
                verb: request.method().as_str().to_ascii_lowercase(),
                ..RequestInfo::default()
            },
            identity: None,
            client_cert: request.extensions().get::<PeerCertificate>().cloned(),
        }
    }

    pub fn source(&self) -> Source {
        Source {
            ip: self.peer.ip().to_string(),
            port: self.peer.port(),
            forwarded_for: self.forwarded_for.clone(),
        }
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}

/// A request that passed admission: allowed, with its body in hand.
struct Admitted {
    permit: Permitted,
    identity: Identity,
    body: Bytes,
}

/// Everything the phases need; shared by all connections.
pub struct Pipeline {
    pub(crate) authenticator: Authenticator,
    pub(crate) registry: Registry,
    pub(crate) policy: SharedPolicy,
    pub(crate) recorder: Recorder,
    pub(crate) upstream: Upstream,
    pub(crate) max_request_body: usize,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Pipeline {
    /// Handles one request end to end. Never fails: every refusal is a `Status` response.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestContext::new(&request, peer);
        tracing::Span::current().record("request_id", ctx.id.as_str());
        let (parts, body) = request.into_parts();

        let admission = self.admit(&mut ctx, &parts.headers, body).await;
        let (decision, body_digest) = match &admission {
            Ok(admitted) => (
                RecordedDecision {
                    action: DecisionAction::Allow,
                    rule: Some(admitted.permit.rule().to_owned()),
                    reason: format!("allowed by rule {}", admitted.permit.rule()),
                },
                (!admitted.body.is_empty()).then(|| BodyDigest::of(&admitted.body)),
            ),
            Err(rejection) => (
                RecordedDecision {
                    action: DecisionAction::Deny,
                    rule: rejection.rule(),
                    reason: rejection.message(),
                },
                None,
            ),
        };

        let acked = match self.recorder.received(&ctx, decision, body_digest).await {
            Ok(acked) => acked,
            Err(e) => {
                tracing::error!(request_id = %ctx.id, error = %e, "request.received not acked; refusing");
                return self.refuse(&ctx, Rejection::NatsUnavailable(e)).await;
            }
        };
        let admitted = match admission {
            Ok(admitted) => admitted,
            Err(rejection) => return self.refuse(&ctx, rejection).await,
        };

        let upstream_response = match self
            .upstream
            .send(
                admitted.permit,
                acked,
                &admitted.identity,
                &ctx.info,
                ctx.query.as_deref(),
                parts,
                admitted.body,
            )
            .await
        {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(request_id = %ctx.id, error = %e, "upstream request failed");
                return self
                    .refuse(&ctx, Rejection::UpstreamUnavailable(e.to_string()))
                    .await;
            }
        };
        self.recorder
            .forwarded(&ctx, self.upstream.url(), &admitted.identity)
            .await;
        self.stream_back(&ctx, upstream_response)
    }

    /// Parse, authenticate, identify, authorize, read the body. No I/O beyond the client's
    /// body and the issuers' keys.
    async fn admit(
        &self,
        ctx: &mut RequestContext,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Admitted, Rejection> {
        ctx.info = request_info::parse(&ctx.method, &ctx.raw_path, ctx.query.as_deref())
            .map_err(|e| Rejection::BadRequest(e.to_string()))?;
        let token = self
            .authenticator
            .authenticate(headers, ctx.client_cert.as_ref().map(PeerCertificate::der))
            .await
            .map_err(Rejection::Unauthenticated)?;
        let identity = self.registry.resolve(&token);
        ctx.identity = Some(identity.clone());
        if !identity.registered {
            return Err(Rejection::UnknownIdentity {
                principal: identity.principal,
            });
        }
        // An exec's command is its repeated `command` query parameters, in order.
        // TODO(lead): for writes, pass the body and content type too (read before policy).
        let command: Vec<String> = if ctx.info.verb == "exec" {
            form_urlencoded::parse(ctx.query.as_deref().unwrap_or("").as_bytes())
                .filter(|(key, _)| key == "command")
                .map(|(_, value)| value.into_owned())
                .collect()
        } else {
            Vec::new()
        };
        let input = PolicyInput {
            command: &command,
            ..PolicyInput::new(&identity, &ctx.info)
        };
        let permit = match self.policy.current().decide(&input) {
            Decision::Allow(permit) => permit,
            Decision::Hold(hold) => {
                return Err(Rejection::Policy(
                    hold.refuse("approvals are not available yet, so it is denied"),
                ));
            }
            Decision::Deny(denial) => return Err(Rejection::Policy(denial)),
        };
        let body = self.read_body(headers, body).await?;
        Ok(Admitted {
            permit,
            identity,
            body,
        })
    }

    /// Reads the request body whole (API objects are small; the API server caps them at
    /// 3 MiB), so its digest is in `request.received` before anything is forwarded.
    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Rejection> {
        let limit = self.max_request_body;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(Rejection::BodyTooLarge { limit });
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(Rejection::BodyTooLarge { limit })
            }
            Err(e) => Err(Rejection::BadRequest(format!(
                "the request body could not be read: {e}"
            ))),
        }
    }

    /// Streams the API server's response back, recording `response.completed` at its end.
    fn stream_back(
        &self,
        ctx: &RequestContext,
        response: Response<Incoming>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(id) = HeaderValue::from_str(&ctx.id) {
            parts.headers.insert(REQUEST_ID_HEADER, id);
        }
        let recorder = self.recorder.clone();
        let request_id = ctx.id.clone();
        let status = parts.status.as_u16();
        let started = ctx.started;
        let (metrics, verb) = (self.metrics.clone(), ctx.info.verb.clone());
        let body = RecordedBody::new(
            body,
            Box::new(move |delivered| {
                let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                metrics.request_finished(&verb, "allow", status, duration_ms / 1000.0);
                recorder.completed(request_id, status, duration_ms, delivered);
            }),
        );
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Records the refusal and answers it.
    async fn refuse(&self, ctx: &RequestContext, rejection: Rejection) -> Response<ProxyBody> {
        tracing::info!(
            request_id = %ctx.id,
            principal = ctx.identity.as_ref().map(|i| i.principal.as_str()).unwrap_or("-"),
            verb = %ctx.info.verb,
            path = %ctx.info.path,
            status = rejection.status().as_u16(),
            reason = ?rejection.denial_reason(),
            elapsed_ms = ctx.elapsed_ms(),
            "request refused"
        );
        self.metrics.request_finished(
            &ctx.info.verb,
            "deny",
            rejection.status().as_u16(),
            ctx.started.elapsed().as_secs_f64(),
        );
        self.recorder.denied(ctx, &rejection).await;
        let info = ctx.info.is_resource_request.then_some(&ctx.info);
        rejection.into_response(&ctx.id, info)
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}
