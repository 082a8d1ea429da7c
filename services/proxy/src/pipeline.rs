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
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use gatehouse_events::{
    ApprovalOutcome, Ballot, BodyDigest, ChangePreview, Decision as RecordedDecision,
    DecisionAction, GrantIssued, Identity, RecordLevel, RecordedBody, RequestInfo, ResponseOutcome,
    SessionEnd, Source,
};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::approvals::Approvals;
use crate::authn::Authenticator;
use crate::body::{
    BodyMasker, Delivered, MaskStats, MaskingBody, ProxyBody, RecordedBody as RecordingBody,
};
use crate::forward::{Upstream, strip_hop_by_hop};
use crate::identity::Registry;
use crate::mask::{self, LineMasker, MaskTarget, Masker, Profile};
use crate::policy::{Decision, Hold, Permitted, PolicyInput, SharedPolicy};
use crate::record::{Acked, Recorder};
use crate::request_info;
use crate::rescue::{REQUEST_ID_HEADER, Rejection};
use crate::server::PeerCertificate;
use crate::session::{self, SessionLog, SessionRequest};

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
    /// The query as events carry it: with values the mask profile's patterns match masked
    /// (an exec's `command` can hold a password).
    pub recorded_query: Option<String>,
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
            recorded_query: request.uri().query().map(str::to_owned),
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
    /// The mask profile the permitting rule names, compiled.
    profile: Option<Arc<Profile>>,
    /// The grant that let a held kind of request through without a new vote.
    grant: Option<GrantIssued>,
    /// When the approval that released this held request reached this replica.
    released: Option<Instant>,
}

/// How admission ended, when it did not refuse. One per request, moved once: not boxed.
#[allow(clippy::large_enum_variant)]
enum Admission {
    Allowed(Admitted),
    /// An `approve` rule holds it; approvers decide.
    Held(Held),
}

/// A request an `approve` rule holds, with what forwarding it needs once approved.
struct Held {
    hold: Hold,
    identity: Identity,
    body: Bytes,
    profile: Option<Arc<Profile>>,
}

/// What admission learned, whatever it decided: the body (read before policy, so body
/// guardrails can see it) and how much of the request to record.
#[derive(Default)]
struct Seen {
    body: Option<Bytes>,
    content_type: Option<String>,
    record: RecordLevel,
    profile: Option<Arc<Profile>>,
}

/// Everything the phases need; shared by all connections.
pub struct Pipeline {
    pub(crate) authenticator: Authenticator,
    pub(crate) registry: Registry,
    pub(crate) policy: SharedPolicy,
    pub(crate) recorder: Recorder,
    pub(crate) upstream: Upstream,
    pub(crate) max_request_body: usize,
    /// Largest body kept in an event at record levels `request` and `request-response`.
    pub(crate) record_body_limit: usize,
    pub(crate) metrics: crate::metrics::Metrics,
    /// Decisions for held requests, and the grants approvals opened.
    pub(crate) approvals: Arc<Approvals>,
}

/// Header a caller states its reason in; approvers see it.
pub const REASON_HEADER: &str = "x-gatehouse-reason";
/// Longest reason kept, in characters.
const REASON_LIMIT: usize = 500;
/// How long past a hold's expiry the proxy still waits for the approval service's decision
/// (which says `expired` itself) before deciding so on its own.
const EXPIRY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// The most a held write's preview (read and dry run) may delay asking its approvers.
const PREVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Pipeline {
    /// Handles one request end to end. Never fails: every refusal is a `Status` response.
    ///
    /// ```text
    /// admit (parse → authenticate → identify → read body → authorize)
    ///   → RECORD request.received (acked)
    ///   → refuse, or forward → mask → stream back → record response.completed
    ///                 └ upgrade → relay the session, recording each chunk
    /// ```
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestContext::new(&request, peer);
        tracing::Span::current().record("request_id", ctx.id.as_str());
        let (mut parts, body) = request.into_parts();
        // Taken before the request goes anywhere: the client's side of an upgrade.
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();

        let mut seen = Seen::default();
        let admission = self.admit(&mut ctx, &parts.headers, body, &mut seen).await;
        let decision = match &admission {
            Ok(Admission::Allowed(admitted)) => RecordedDecision {
                action: DecisionAction::Allow,
                rule: Some(admitted.permit.rule().to_owned()),
                reason: match &admitted.grant {
                    Some(grant) => format!(
                        "allowed by grant {} (approval {} by {}) under rule {}",
                        grant.grant_id,
                        grant.approval_id,
                        grant.approved_by.join(", "),
                        admitted.permit.rule()
                    ),
                    None => format!("allowed by rule {}", admitted.permit.rule()),
                },
            },
            Ok(Admission::Held(held)) => RecordedDecision {
                action: DecisionAction::Approve,
                rule: Some(held.hold.rule().to_owned()),
                reason: format!(
                    "held by rule {} for {} approval{} from {}",
                    held.hold.rule(),
                    held.hold.quorum(),
                    if held.hold.quorum() == 1 { "" } else { "s" },
                    held.hold.approver_groups().join(", ")
                ),
            },
            Err(rejection) => RecordedDecision {
                action: DecisionAction::Deny,
                rule: rejection.rule(),
                reason: rejection.message(),
            },
        };
        let body_digest = seen
            .body
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| BodyDigest::of(b));
        let content = self.request_content(&ctx, &seen);
        let shown_to_approvers = match &admission {
            Ok(Admission::Held(_)) => self.masked_request_body(&ctx, &seen),
            _ => None,
        };
        if let Some(profile) = seen.profile.as_deref().filter(|p| p.has_patterns()) {
            ctx.recorded_query = ctx.query.as_deref().map(|q| mask_query(profile, q));
        }

        let acked = match self
            .recorder
            .received(&ctx, decision, body_digest, seen.record, content)
            .await
        {
            Ok(acked) => acked,
            Err(e) => {
                tracing::error!(request_id = %ctx.id, error = %e, "request.received not acked; refusing");
                return self.refuse(&ctx, Rejection::NatsUnavailable(e)).await;
            }
        };
        let admitted = match admission {
            Ok(Admission::Allowed(admitted)) => admitted,
            Ok(Admission::Held(held)) => match self
                .hold(&ctx, held, &parts, &acked, shown_to_approvers)
                .await
            {
                Ok(admitted) => admitted,
                Err(rejection) => return self.refuse(&ctx, rejection).await,
            },
            Err(rejection) => return self.refuse(&ctx, rejection).await,
        };
        if is_upgrade(&parts.headers) {
            return self
                .open_session(&ctx, admitted, acked, parts, on_upgrade)
                .await;
        }

        let target = MaskTarget::new(ctx.info.resource.clone(), ctx.info.api_group.clone());
        let masking =
            returns_objects(&ctx.info) && mask::needs_masking(admitted.profile.as_deref(), &target);
        if masking {
            ask_for_plain_json(&mut parts.headers);
        }
        let record = admitted.permit.record();
        if let Some(released) = admitted.released {
            self.metrics.hold_release(released.elapsed());
        }
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
        let masker = if masking {
            let masker = Masker::new(admitted.profile.clone(), &target);
            Some(BodyMasker::Json(Box::new(masker)))
        } else {
            // Logs and proxied responses are text: a profile's patterns apply line by line.
            admitted
                .profile
                .clone()
                .filter(|p| p.has_patterns() && !returns_objects(&ctx.info))
                .map(|p| BodyMasker::Text(LineMasker::new(p)))
        };
        self.stream_back(&ctx, upstream_response, masker, record)
            .await
    }

    /// Parse, authenticate, identify, read the body, authorize. No I/O beyond the client's
    /// body and the issuers' keys. What it learns on the way goes into `seen`, so a refusal
    /// is recorded as fully as an admission.
    async fn admit(
        &self,
        ctx: &mut RequestContext,
        headers: &HeaderMap,
        body: Incoming,
        seen: &mut Seen,
    ) -> Result<Admission, Rejection> {
        ctx.info = request_info::parse(&ctx.method, &ctx.raw_path, ctx.query.as_deref())
            .map_err(|e| Rejection::BadRequest(e.to_string()))?;
        if let Some(name) = request_info::conflicting_header(headers) {
            return Err(Rejection::BadRequest(format!(
                "the {name} header is sent more than once with different values; the API server \
                 reads one of them, so Gatehouse accepts it only once"
            )));
        }
        let token = self
            .authenticator
            .authenticate(headers, ctx.client_cert.as_ref().map(PeerCertificate::der))
            .await
            .map_err(Rejection::Unauthenticated)?;
        let identity = self.registry.resolve(&token);
        ctx.identity = Some(identity.clone());
        if !identity.registered {
            // Discovery only (policy::baseline), so that a client shows the refusal of the
            // request it actually makes; no rule is consulted for an unknown identity.
            let policy = self.policy.current();
            let Some(permit) = policy.unregistered(&ctx.info) else {
                return Err(Rejection::UnknownIdentity {
                    principal: identity.principal,
                });
            };
            seen.record = permit.record();
            let body = self.read_body(headers, body).await?;
            return Ok(Admission::Allowed(Admitted {
                permit,
                identity,
                body,
                profile: None,
                grant: None,
                released: None,
            }));
        }
        // Read before policy so body guardrails see what would be forwarded; only for
        // authenticated, registered callers.
        let body = self.read_body(headers, body).await?;
        seen.body = Some(body.clone());
        seen.content_type = header_text(headers, http::header::CONTENT_TYPE.as_str());
        if carries_masked_values(&body) {
            // `kubectl get secret -o yaml | kubectl apply -f -` through the proxy would
            // otherwise overwrite the real values with the mask.
            return Err(Rejection::BadRequest(format!(
                "the body carries values Gatehouse masked ({}); writing them back would \
                 overwrite the real ones",
                mask::MASKED_TEXT
            )));
        }
        // An exec's command is its repeated `command` query parameters, in order.
        let command: Vec<String> = if ctx.info.verb == "exec" {
            form_urlencoded::parse(ctx.query.as_deref().unwrap_or("").as_bytes())
                .filter(|(key, _)| key == "command")
                .map(|(_, value)| value.into_owned())
                .collect()
        } else {
            Vec::new()
        };
        let policy = self.policy.current();
        let input = PolicyInput {
            command: &command,
            body: (!body.is_empty()).then_some(&body[..]),
            content_type: seen.content_type.as_deref(),
            ..PolicyInput::new(&identity, &ctx.info)
        };
        let mut grant = None;
        let (permit, mask) = match policy.decide(&input) {
            Decision::Allow(permit) => {
                let mask = permit.mask().map(str::to_owned);
                (permit, mask)
            }
            Decision::Hold(hold) => {
                seen.record = hold.record();
                seen.profile = hold.mask().and_then(|m| policy.compiled_mask(m));
                if is_upgrade(headers) {
                    // A session cannot wait in a hold: the client's upgrade would time out.
                    return Err(Rejection::Policy(hold.refuse(
                        "interactive sessions cannot wait for approval; ask for a grant first",
                    )));
                }
                match self
                    .approvals
                    .grant_for(&identity.principal, &ctx.info, hold.rule())
                {
                    Some(found) => {
                        let mask = hold.mask().map(str::to_owned);
                        let permit = hold.approved(&found.approval_id);
                        grant = Some(found);
                        (permit, mask)
                    }
                    None => {
                        return Ok(Admission::Held(Held {
                            hold,
                            identity,
                            body,
                            profile: seen.profile.clone(),
                        }));
                    }
                }
            }
            Decision::Deny(denial) => {
                seen.record = policy.default_record();
                return Err(Rejection::Policy(denial));
            }
        };
        let profile = mask.and_then(|m| policy.compiled_mask(&m));
        seen.record = permit.record();
        seen.profile = profile.clone();
        Ok(Admission::Allowed(Admitted {
            permit,
            identity,
            body,
            profile,
            grant,
            released: None,
        }))
    }

    /// Holds the request until approvers decide: publishes `request.held` (acked), waits for
    /// `approval.decided` or the hold's expiry, and turns an approval into a permission. A
    /// client that goes away meanwhile drops this future, and its hold is withdrawn.
    async fn hold(
        &self,
        ctx: &RequestContext,
        held: Held,
        parts: &http::request::Parts,
        acked: &Acked,
        content: Option<RecordedBody>,
    ) -> Result<Admitted, Rejection> {
        let headers = &parts.headers;
        let change = self.change_preview(ctx, &held, acked, parts).await;
        let Held {
            hold,
            identity,
            body,
            profile,
        } = held;
        let approval_id = ulid::Ulid::new().to_string();
        let timeout = hold.hold_timeout();
        let expires_at = std::time::SystemTime::now() + timeout;
        let mut waiter = self.approvals.wait(
            &approval_id,
            crate::approvals::Expected {
                request_id: ctx.id.clone(),
                principal: identity.principal.clone(),
                rule: hold.rule().to_owned(),
                request: ctx.info.clone(),
            },
        );
        self.recorder
            .held(
                ctx,
                &identity,
                &hold,
                &approval_id,
                expires_at,
                crate::record::ShownToApprovers {
                    reason: stated_reason(headers),
                    content,
                    change,
                },
            )
            .await
            .map_err(Rejection::NatsUnavailable)?;
        self.metrics.holds_waiting(1);
        let mut withdraw = WithdrawOnDrop {
            pipeline: Some((self.recorder.clone(), self.metrics.clone())),
            request_id: ctx.id.clone(),
            approval_id: approval_id.clone(),
        };
        tracing::info!(request_id = %ctx.id, approval_id = %approval_id, rule = hold.rule(), "request held for approval");
        let decided = tokio::select! {
            decided = waiter.decided() => decided,
            _ = tokio::time::sleep(timeout + EXPIRY_GRACE) => None,
        };
        withdraw.disarm();
        let expired = || Rejection::ApprovalExpired {
            approval_id: approval_id.clone(),
            rule: hold.rule().to_owned(),
            quorum: hold.quorum(),
            approver_groups: hold.approver_groups().join(", "),
        };
        let Some(decided) = decided else {
            self.metrics.hold_decided("expired");
            return Err(expired());
        };
        let decision = decided.decision;
        match decision.outcome {
            ApprovalOutcome::Approved => {
                self.metrics.hold_decided("approved");
                tracing::info!(request_id = %ctx.id, approval_id = %approval_id, "approved; forwarding");
                Ok(Admitted {
                    permit: hold.approved(&approval_id),
                    identity,
                    body,
                    profile,
                    grant: None,
                    released: Some(decided.arrived),
                })
            }
            ApprovalOutcome::Denied => {
                self.metrics.hold_decided("denied");
                let vote = decision.votes.iter().find(|v| v.vote == Ballot::Deny);
                Err(Rejection::ApprovalDenied {
                    approval_id: approval_id.clone(),
                    rule: hold.rule().to_owned(),
                    by: vote.map(|v| v.approver.clone()).unwrap_or_default(),
                    comment: vote.and_then(|v| v.comment.clone()),
                })
            }
            ApprovalOutcome::Expired => {
                self.metrics.hold_decided("expired");
                Err(expired())
            }
        }
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

    /// The masked request body for the record, at level `request` and above. A JSON body is
    /// masked like a response; a body that needs masking but is not JSON (protobuf, YAML, a
    /// JSON Patch of a Secret) is recorded by digest only.
    fn request_content(&self, ctx: &RequestContext, seen: &Seen) -> Option<RecordedBody> {
        if seen.record == RecordLevel::Metadata {
            return None;
        }
        self.masked_request_body(ctx, seen)
    }

    /// The request body masked as the record masks it, whatever the record level: what
    /// approvers of a held request are shown.
    fn masked_request_body(&self, ctx: &RequestContext, seen: &Seen) -> Option<RecordedBody> {
        let body = seen.body.as_ref().filter(|b| !b.is_empty())?;
        let content_type = seen.content_type.as_deref();
        let target = MaskTarget::new(ctx.info.resource.clone(), ctx.info.api_group.clone());
        let needs = mask::needs_masking(seen.profile.as_deref(), &target);
        let json_object =
            content_type.is_none_or(|c| c.contains("json") && !c.contains("json-patch"));
        if json_object && let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) {
            if needs || value.get("kind").and_then(|k| k.as_str()) == Some("Secret") {
                // A body without `kind` (a merge patch) is what its URL says it is. The masker
                // takes a kind-less object for a Secret, to be safe, which would hide what a
                // ConfigMap patch changed; so name it for the masking, then take the name away.
                let placeholder =
                    value.is_object() && value.get("kind").is_none() && !target.is_core_secrets();
                if placeholder {
                    value["kind"] = "GatehouseRequestBody".into();
                }
                mask::mask_value(seen.profile.as_deref(), &target, &mut value);
                if placeholder && let Some(object) = value.as_object_mut() {
                    object.remove("kind");
                }
            }
            let masked = serde_json::to_vec(&value).ok()?;
            return Some(RecordedBody::capture(
                content_type,
                &masked,
                BodyDigest::of(&masked),
                self.record_body_limit,
            ));
        }
        if needs || looks_like_a_secret(body) {
            return Some(RecordedBody::omitted(content_type, BodyDigest::of(body)));
        }
        Some(RecordedBody::capture(
            content_type,
            body,
            BodyDigest::of(body),
            self.record_body_limit,
        ))
    }

    /// For a held `update` or `patch` of one object: the object before and after, as the API
    /// server previews it (see [`crate::forward::Upstream::preview`]), masked as responses are,
    /// without `metadata.managedFields` (bookkeeping, not the change). Bounded in time: a slow
    /// API server delays the hold by at most [`PREVIEW_TIMEOUT`], and approvers then see why
    /// the change is not shown.
    async fn change_preview(
        &self,
        ctx: &RequestContext,
        held: &Held,
        acked: &Acked,
        parts: &http::request::Parts,
    ) -> Option<ChangePreview> {
        let Held {
            hold,
            identity,
            body,
            profile,
        } = held;
        if !matches!(ctx.info.verb.as_str(), "update" | "patch") || ctx.info.name.is_empty() {
            return None;
        }
        let read_at = gatehouse_events::envelope::now_rfc3339();
        let preview = tokio::time::timeout(
            PREVIEW_TIMEOUT,
            self.upstream.preview(
                hold,
                acked,
                identity,
                &ctx.info,
                ctx.query.as_deref(),
                &parts.method,
                header_text(&parts.headers, http::header::CONTENT_TYPE.as_str()).as_deref(),
                body.clone(),
            ),
        )
        .await;
        let Ok(preview) = preview else {
            return Some(ChangePreview {
                read_at,
                note: Some(format!(
                    "the API server did not answer the preview within {} s",
                    PREVIEW_TIMEOUT.as_secs()
                )),
                ..ChangePreview::default()
            });
        };
        let target = MaskTarget::new(ctx.info.resource.clone(), ctx.info.api_group.clone());
        let shown = |side: Result<serde_json::Value, String>| match side {
            Ok(mut value) => {
                if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    meta.remove("managedFields");
                }
                mask::mask_value(profile.as_deref(), &target, &mut value);
                (Some(value), None)
            }
            Err(why) => (None, Some(why)),
        };
        let (current, current_note) = shown(preview.current);
        let (proposed, proposed_note) = shown(preview.proposed);
        let note = match (current_note, proposed_note) {
            (None, None) => None,
            (Some(c), None) => Some(format!("the object could not be read: {c}")),
            (None, Some(p)) => Some(format!("the change could not be previewed: {p}")),
            (Some(c), Some(p)) => Some(format!(
                "the object could not be read ({c}) nor the change previewed ({p})"
            )),
        };
        Some(ChangePreview {
            current,
            proposed,
            read_at,
            note,
        })
    }

    /// Streams the API server's response back — masked if policy says so — recording
    /// `response.completed` at its end.
    ///
    /// What is masked is decided by the response: its headers must say JSON, uncompressed,
    /// and the masker reads each document for what it is. A response that cannot be masked is
    /// withheld with a 502 before anything of it is sent: for a JSON answer other than a watch,
    /// the body is read until the masker has something to send. A watch's response starts at once (as
    /// kube-apiserver's does, so clients see it open before its first event); an event that
    /// cannot be masked ends it with an `ERROR` event instead.
    async fn stream_back(
        &self,
        ctx: &RequestContext,
        response: Response<Incoming>,
        masker: Option<BodyMasker>,
        record: RecordLevel,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Ok(id) = HeaderValue::from_str(&ctx.id) {
            parts.headers.insert(REQUEST_ID_HEADER, id);
        }
        let stats = Arc::new(MaskStats::default());
        let body: ProxyBody = match masker {
            None => body.map_err(Into::into).boxed_unsync(),
            Some(masker) => {
                let json = matches!(masker, BodyMasker::Json(_));
                if json && let Err(why) = mask::classify_response(&parts.headers) {
                    return self.withhold(ctx, why.to_string(), record);
                }
                // Masking changes the length.
                parts.headers.remove(http::header::CONTENT_LENGTH);
                let mut body = MaskingBody::new(body, masker, stats.clone());
                // Text (logs, `-f` too) is masked line by line and never refused: it starts
                // at once, like a watch.
                if json && ctx.info.verb == "watch" {
                    let event = Rejection::Unmaskable("a watch event".into())
                        .watch_error_event(Some(&ctx.info));
                    body = body.ending_watches_with(event);
                } else if json && let Err(why) = body.prime().await {
                    return self.withhold(ctx, why.to_string(), record);
                }
                body.boxed_unsync()
            }
        };
        self.record_response(ctx, Response::from_parts(parts, body), record, stats)
    }

    /// Answers 502 in place of a response that cannot be masked; nothing of it was sent.
    fn withhold(
        &self,
        ctx: &RequestContext,
        why: String,
        record: RecordLevel,
    ) -> Response<ProxyBody> {
        tracing::warn!(request_id = %ctx.id, why, "response needs masking but cannot be masked; withheld");
        self.metrics.response_withheld();
        let status = Rejection::Unmaskable(why).into_response(&ctx.id, Some(&ctx.info));
        // The 502 is sent whole: its own record says what happened.
        self.record_response(ctx, status, record, Arc::default())
    }

    /// Wraps a response so `response.completed` (with the masked body at level
    /// `request-response`) is recorded when its body ends.
    fn record_response(
        &self,
        ctx: &RequestContext,
        response: Response<ProxyBody>,
        record: RecordLevel,
        stats: Arc<MaskStats>,
    ) -> Response<ProxyBody> {
        let (parts, body) = response.into_parts();
        let recorder = self.recorder.clone();
        let request_id = ctx.id.clone();
        let status = parts.status.as_u16();
        let started = ctx.started;
        let content_type = header_text(&parts.headers, "content-type");
        let limit = self.record_body_limit;
        let (metrics, verb) = (self.metrics.clone(), ctx.info.verb.clone());
        let mut body = RecordingBody::new(
            body,
            Box::new(move |delivered| {
                let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                let masked_fields = stats.masked.load(Ordering::Relaxed);
                let mut delivered = delivered;
                if stats.withheld.load(Ordering::Relaxed) {
                    // The response started and then could not be masked: its end was
                    // Gatehouse's doing, not the client's or the API server's.
                    metrics.response_withheld();
                    delivered.outcome = ResponseOutcome::Withheld;
                }
                metrics.request_finished(&verb, "allow", status, duration_ms / 1000.0);
                metrics.masked_fields(masked_fields);
                let content = delivered.captured.as_ref().map(|kept| {
                    let mut content = RecordedBody::capture(
                        content_type.as_deref(),
                        kept,
                        delivered.body.clone(),
                        limit,
                    );
                    content.truncated |= delivered.body.bytes > kept.len() as u64;
                    content
                });
                recorder.completed(
                    request_id,
                    status,
                    duration_ms,
                    delivered,
                    masked_fields,
                    content,
                );
            }),
        );
        if record == RecordLevel::RequestResponse {
            body = body.capturing(limit);
        }
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Forwards an exec / attach / port-forward upgrade and, once both sides have switched
    /// protocols, relays and records the session.
    async fn open_session(
        &self,
        ctx: &RequestContext,
        admitted: Admitted,
        acked: Acked,
        parts: http::request::Parts,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ProxyBody> {
        let Some(request) = SessionRequest::from_request(&ctx.info, ctx.query.as_deref()) else {
            let why = "only exec, attach and port-forward may upgrade the connection";
            return self.refuse(ctx, Rejection::BadRequest(why.into())).await;
        };
        let Some(on_upgrade) = on_upgrade else {
            let why = "an upgrade needs HTTP/1.1";
            return self.refuse(ctx, Rejection::BadRequest(why.into())).await;
        };
        let upstream_response = match self
            .upstream
            .send_upgrade(
                admitted.permit,
                acked,
                &admitted.identity,
                &ctx.info,
                ctx.query.as_deref(),
                parts,
            )
            .await
        {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(request_id = %ctx.id, error = %e, "upstream upgrade failed");
                return self
                    .refuse(ctx, Rejection::UpstreamUnavailable(e.to_string()))
                    .await;
            }
        };
        self.recorder
            .forwarded(ctx, self.upstream.url(), &admitted.identity)
            .await;
        if upstream_response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            // The API server said no (RBAC, no such pod): its Status goes back as it is.
            return self
                .stream_back(ctx, upstream_response, None, RecordLevel::Metadata)
                .await;
        }
        let Some((transport, transport_name, protocol)) =
            session::negotiated_transport(upstream_response.headers())
        else {
            let status = Rejection::Unmaskable("an unknown stream protocol".into())
                .into_response(&ctx.id, None);
            return self.record_response(ctx, status, RecordLevel::Metadata, Arc::default());
        };
        let log = match SessionLog::start(
            self.recorder.clone(),
            &ctx.id,
            &admitted.identity.principal,
            &request,
            transport_name,
            &protocol,
            admitted.profile.clone(),
        )
        .await
        {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(request_id = %ctx.id, error = %e, "session.started not acked; refusing");
                let status = Rejection::NatsUnavailable(e).into_response(&ctx.id, None);
                return self.record_response(ctx, status, RecordLevel::Metadata, Arc::default());
            }
        };
        let mut response = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        for name in UPGRADE_HEADERS {
            for value in upstream_response.headers().get_all(name) {
                response.headers_mut().append(name, value.clone());
            }
        }
        if let Ok(id) = HeaderValue::from_str(&ctx.id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
        }
        let (recorder, metrics) = (self.recorder.clone(), self.metrics.clone());
        let (request_id, started, verb) = (ctx.id.clone(), ctx.started, ctx.info.verb.clone());
        let session_id = log.id().to_owned();
        tracing::info!(session_id = %session_id, kind = ?request.kind, transport = transport_name, protocol = %protocol, "session started");
        tokio::spawn(async move {
            let _active = metrics.session_opened();
            let upstream_io = hyper::upgrade::on(upstream_response).await;
            let client_io = on_upgrade.await;
            let end = match (client_io, upstream_io) {
                (Ok(client), Ok(upstream)) => {
                    session::relay(
                        log,
                        request.kind,
                        transport,
                        &request.ports,
                        client,
                        upstream,
                    )
                    .await
                }
                (client, upstream) => {
                    tracing::warn!(
                        session_id,
                        client_ok = client.is_ok(),
                        upstream_ok = upstream.is_ok(),
                        "an upgraded connection could not be taken over"
                    );
                    log.abandon(request.kind).await
                }
            };
            let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            metrics.request_finished(&verb, "allow", 101, duration_ms / 1000.0);
            let outcome = match end {
                SessionEnd::Closed => ResponseOutcome::Complete,
                SessionEnd::ClientDisconnected => ResponseOutcome::ClientDisconnected,
                SessionEnd::UpstreamError | SessionEnd::Terminated => {
                    ResponseOutcome::UpstreamError
                }
            };
            let delivered = Delivered {
                outcome,
                body: BodyDigest::of(b""),
                captured: None,
            };
            recorder.completed(request_id, 101, duration_ms, delivered, 0, None);
        });
        response
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

/// Headers of a 101 answer the client needs to finish its side of the upgrade.
const UPGRADE_HEADERS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Whether the client asks to switch protocols (`Connection: Upgrade` and an `Upgrade`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
        && headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a response to this request is Kubernetes objects in JSON (and so can be masked):
/// not logs, exec streams or proxied traffic.
fn returns_objects(info: &RequestInfo) -> bool {
    info.is_resource_request
        && !matches!(
            info.subresource.as_str(),
            "log" | "exec" | "attach" | "portforward" | "proxy"
        )
}

/// A masked response must come back as plain JSON: no protobuf, CBOR or YAML, no gzip. Only
/// the JSON media types of the Accept header are kept (their parameters ask for a `Table` or
/// `PartialObjectMetadata`); what comes back is still checked, whatever was asked.
fn ask_for_plain_json(headers: &mut HeaderMap) {
    let accepted: Vec<String> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|media| {
            let essence = media.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json")
        })
        .map(str::to_owned)
        .collect();
    let accept = if accepted.is_empty() {
        "application/json".to_owned()
    } else {
        accepted.join(", ")
    };
    headers.remove(http::header::ACCEPT);
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(http::header::ACCEPT, value);
    }
    headers.remove(http::header::ACCEPT_ENCODING);
}

/// The query with each decoded value passed through the profile's patterns; as sent if
/// nothing matched.
fn mask_query(profile: &Profile, query: &str) -> String {
    let mut masked = form_urlencoded::Serializer::new(String::new());
    let mut changed = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = mask::mask_text(Some(profile), &value);
        changed |= matches!(value, std::borrow::Cow::Owned(_));
        masked.append_pair(&key, &value);
    }
    if changed {
        masked.finish()
    } else {
        query.to_owned()
    }
}

/// Whether a request body holds the mask, as text or in base64.
fn carries_masked_values(body: &[u8]) -> bool {
    [mask::MASKED_TEXT, mask::MASKED_BASE64]
        .iter()
        .any(|marker| body.windows(marker.len()).any(|w| w == marker.as_bytes()))
}

/// A non-JSON body that says it is a Secret (protobuf carries the kind as plain bytes).
fn looks_like_a_secret(body: &[u8]) -> bool {
    body.windows(6).any(|w| w == b"Secret")
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}

/// The caller's stated reason, cleaned for display: control characters become spaces, cut at
/// [`REASON_LIMIT`] characters.
fn stated_reason(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(REASON_HEADER)?;
    let text = String::from_utf8_lossy(raw.as_bytes());
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_LIMIT)
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

/// Publishes `request.withdrawn` if the held request's future is dropped before a decision
/// (the client went away).
struct WithdrawOnDrop {
    pipeline: Option<(Recorder, crate::metrics::Metrics)>,
    request_id: String,
    approval_id: String,
}

impl WithdrawOnDrop {
    fn disarm(&mut self) {
        if let Some((_, metrics)) = self.pipeline.take() {
            metrics.holds_waiting(-1);
        }
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        let Some((recorder, metrics)) = self.pipeline.take() else {
            return;
        };
        metrics.holds_waiting(-1);
        metrics.hold_decided("withdrawn");
        let request_id = std::mem::take(&mut self.request_id);
        let approval_id = std::mem::take(&mut self.approval_id);
        tracing::info!(request_id = %request_id, approval_id = %approval_id, "client went away; hold withdrawn");
        // Dropped outside a runtime (a process tearing down) there is nobody left to tell.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                recorder.withdrawn(&request_id, &approval_id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn a_masked_response_is_asked_for_as_plain_json() {
        // client-go's typed clients: protobuf first, JSON as a fallback, gzip.
        let mut h = headers(&[
            (
                "accept",
                "application/vnd.kubernetes.protobuf, application/json",
            ),
            ("accept-encoding", "gzip"),
        ]);
        ask_for_plain_json(&mut h);
        assert_eq!(h["accept"], "application/json");
        assert!(!h.contains_key("accept-encoding"));

        // Protobuf only: JSON instead. Tables keep their parameters.
        let mut h = headers(&[("accept", "application/vnd.kubernetes.protobuf")]);
        ask_for_plain_json(&mut h);
        assert_eq!(h["accept"], "application/json");
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
        let mut h = headers(&[
            ("accept", table),
            (
                "accept",
                "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
            ),
        ]);
        ask_for_plain_json(&mut h);
        assert_eq!(h["accept"], table);
    }

    #[test]
    fn masked_values_are_recognised_in_bodies() {
        assert!(carries_masked_values(
            br#"{"data":{"password":"Z2F0ZWhvdXNlOm1hc2tlZA=="}}"#
        ));
        assert!(carries_masked_values(
            b"stringData:\n  password: gatehouse:masked\n"
        ));
        assert!(!carries_masked_values(
            br#"{"data":{"password":"aHVudGVyMg=="}}"#
        ));
    }

    #[test]
    fn upgrades_are_recognised_by_both_headers() {
        assert!(is_upgrade(&headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(is_upgrade(&headers(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "SPDY/3.1")
        ])));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn only_object_responses_are_masked_as_json() {
        let info = |sub: &str| RequestInfo {
            is_resource_request: true,
            resource: "pods".into(),
            subresource: sub.into(),
            ..RequestInfo::default()
        };
        assert!(returns_objects(&info("")));
        assert!(returns_objects(&info("status")));
        for stream in ["log", "exec", "attach", "portforward", "proxy"] {
            assert!(!returns_objects(&info(stream)), "{stream}");
        }
    }
}
