//! The record phase: the events of one request, published in order.
//!
//! `request.received` is awaited to its JetStream ack, and only that ack makes an [`Acked`],
//! which forwarding requires. Later events (`request.denied`, `request.forwarded`,
//! `response.completed`) are sent on the same connection right away — so the stream stores
//! them in order — and their acks are awaited off the request's path; a lost ack is logged as
//! an error with the event id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_bus::{Bus, PublishError};
use gatehouse_events::{
    BodyDigest, Decision, Envelope, Identity, Payload, RecordLevel, RecordedBody, RequestDenied,
    RequestForwarded, RequestHeld, RequestReceived, RequestWithdrawn, ResponseCompleted,
};

use crate::body::Delivered;

/// Follow-up events retried at once at most; past it, a failed event is counted lost at once.
const RETRYING_MAX: i64 = 10_000;

/// How long a follow-up event is retried: well inside the smallest duplicate window Gatehouse
/// accepts, so a retry of an event JetStream did store is still recognised as a duplicate.
const RETRY_FOR: Duration =
    Duration::from_secs(gatehouse_bus::config::MIN_DUPLICATE_WINDOW.as_secs() - 20);
use crate::metrics::Metrics;
use crate::pipeline::RequestContext;
use crate::rescue::Rejection;

/// Proof that a request's `request.received` event was acked by JetStream.
#[derive(Debug)]
pub struct Acked {
    sequence: u64,
    request_id: String,
}

impl Acked {
    /// The stream sequence `request.received` was stored at.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The request id the event was recorded under: sent upstream as `Audit-ID`, so the API
    /// server's own audit log joins the ledger.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

/// Publishes the events of requests.
#[derive(Clone)]
pub struct Recorder {
    bus: Bus,
    source: Arc<str>,
    /// Events sent but never acked (lost to a NATS failure after the request was admitted).
    unacked: Arc<AtomicU64>,
    metrics: Metrics,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("source", &self.source)
            .finish()
    }
}

/// Records, counts and alarms on every decision or grant the approvals follower refused,
/// until the follower is gone.
pub async fn record_refusals(
    recorder: Recorder,
    metrics: Metrics,
    mut refused: tokio::sync::mpsc::UnboundedReceiver<crate::approvals::Refused>,
) {
    while let Some(crate::approvals::Refused {
        id,
        subject,
        refused,
    }) = refused.recv().await
    {
        let (message, problem) = (refused.message.as_str(), refused.problem.as_str());
        metrics.bus_refused(message, problem);
        tracing::error!(
            alarm = "bus.refused",
            message,
            problem,
            detail = %refused.detail,
            origin = %refused.origin,
            approval_id = refused.approval_id.as_deref().unwrap_or("-"),
            grant_id = refused.grant_id.as_deref().unwrap_or("-"),
            "ALARM: a {message} on the bus did not verify and was refused; nothing was released or admitted on it"
        );
        let mut event = Envelope::new(&recorder.source, &subject, refused);
        event.id = id.to_string();
        recorder.send(event).await;
    }
}

impl Recorder {
    pub fn new(bus: Bus, source: String, metrics: Metrics) -> Self {
        Self {
            bus,
            source: source.into(),
            unacked: Arc::default(),
            metrics,
        }
    }

    /// Where events say they come from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Events whose ack never came.
    pub fn unacked(&self) -> u64 {
        self.unacked.load(Ordering::Relaxed)
    }

    /// Publishes `request.received` and waits for the ack.
    pub async fn received(
        &self,
        ctx: &RequestContext,
        decision: Decision,
        body: Option<BodyDigest>,
        record: RecordLevel,
        content: Option<RecordedBody>,
    ) -> Result<Acked, PublishError> {
        let event = Envelope::new(
            &self.source,
            &ctx.id,
            RequestReceived {
                request_id: ctx.id.clone(),
                identity: ctx.identity.clone(),
                source: ctx.source(),
                user_agent: ctx.user_agent.clone(),
                method: ctx.method.clone(),
                path: ctx.raw_path.clone(),
                query: ctx.recorded_query.clone(),
                request: ctx.info.clone(),
                decision,
                body,
                record,
                content,
            },
        );
        let started = Instant::now();
        let ack = self.bus.publish(&event).await?;
        self.acked(RequestReceived::NAME, started);
        Ok(Acked {
            sequence: ack.sequence,
            request_id: ctx.id.clone(),
        })
    }

    /// Publishes `request.held` and waits for the ack: approvers are asked only through it.
    pub async fn held(
        &self,
        ctx: &RequestContext,
        identity: &Identity,
        hold: &crate::policy::Hold,
        approval_id: &str,
        expires_at: std::time::SystemTime,
        shown: ShownToApprovers,
    ) -> Result<(), PublishError> {
        let ShownToApprovers {
            reason,
            content,
            change,
        } = shown;
        let event = Envelope::new(
            &self.source,
            &ctx.id,
            RequestHeld {
                request_id: ctx.id.clone(),
                approval_id: approval_id.to_owned(),
                rule: hold.rule().to_owned(),
                identity: identity.clone(),
                request: ctx.info.clone(),
                approver_groups: hold.approver_groups().to_vec(),
                quorum: hold.quorum(),
                expires_at: gatehouse_events::envelope::format_rfc3339(time::OffsetDateTime::from(
                    expires_at,
                )),
                grant_window_s: hold.grant_window().map(|w| w.as_secs()),
                reason,
                four_eyes: hold.four_eyes(),
                step_up: hold.step_up().cloned(),
                content,
                change,
            },
        );
        let started = Instant::now();
        self.bus.publish(&event).await?;
        self.acked(RequestHeld::NAME, started);
        Ok(())
    }

    /// Records that a held request's client went away before a decision.
    pub async fn withdrawn(&self, request_id: &str, approval_id: &str) {
        let event = Envelope::new(
            &self.source,
            request_id,
            RequestWithdrawn {
                request_id: request_id.to_owned(),
                approval_id: approval_id.to_owned(),
                reason: "the client disconnected while the request was held".into(),
            },
        );
        self.send(event).await;
    }

    /// Records that the request was refused.
    pub async fn denied(&self, ctx: &RequestContext, rejection: &Rejection) {
        let event = Envelope::new(
            &self.source,
            &ctx.id,
            RequestDenied {
                request_id: ctx.id.clone(),
                reason: rejection.denial_reason(),
                status: rejection.status().as_u16(),
                message: rejection.message(),
                rule: rejection.rule(),
            },
        );
        self.send(event).await;
    }

    /// Records that the request went upstream as `user` with `groups`.
    pub async fn forwarded(&self, ctx: &RequestContext, upstream: &str, identity: &Identity) {
        let event = Envelope::new(
            &self.source,
            &ctx.id,
            RequestForwarded {
                request_id: ctx.id.clone(),
                upstream: upstream.to_owned(),
                impersonated_user: identity.principal.clone(),
                impersonated_groups: identity.groups.clone(),
            },
        );
        self.send(event).await;
    }

    /// Records what the client received. Called from the body's completion hook, which cannot
    /// wait, so the send happens on a task of its own.
    pub fn completed(
        &self,
        request_id: String,
        status: u16,
        duration_ms: f64,
        delivered: Delivered,
        masked_fields: u64,
        content: Option<RecordedBody>,
    ) {
        let event = Envelope::new(
            &self.source,
            &request_id,
            ResponseCompleted {
                request_id: request_id.clone(),
                status,
                outcome: delivered.outcome,
                body: delivered.body,
                duration_ms,
                masked_fields,
                content,
            },
        );
        let recorder = self.clone();
        tokio::spawn(async move { recorder.send(event).await });
    }

    /// Counts an acked event of `name` whose publish began at `started`.
    pub(crate) fn acked(&self, name: &str, started: Instant) {
        self.metrics.events_published(name);
        self.metrics
            .publish_duration(started.elapsed().as_secs_f64());
    }

    /// Counts an acked event whose publish time is not known (session chunks, acked in bulk).
    pub(crate) fn acked_untimed(&self, name: &str) {
        self.metrics.events_published(name);
    }

    /// Sends now; awaits the ack in the background. These events come after the request's
    /// acked `request.received` and nothing waits for them, but they must not be lost to a short
    /// NATS outage either: a send that fails or is not acked is tried again with the same
    /// `Nats-Msg-Id`, which JetStream deduplicates, for as long as the duplicate window is sure
    /// to last ([`RETRY_FOR`]).
    async fn send<P: Payload + Send + 'static>(&self, event: Envelope<P>) {
        let id = event.id.clone();
        let name = P::NAME;
        let started = Instant::now();
        let bytes = match event.to_bytes() {
            Ok(bytes) => bytes::Bytes::from(bytes),
            Err(e) => {
                self.unacked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event = name, event_id = %id, error = %e, "event could not be encoded");
                return;
            }
        };
        let subject = event.nats_subject();
        let first = self
            .bus
            .enqueue_bytes(subject.clone(), &id, bytes.clone())
            .await;
        let recorder = self.clone();
        tokio::spawn(async move {
            let error = match first {
                Ok(pending) => match pending.wait().await {
                    Ok(_) => return recorder.acked(name, started),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            // Bounded, so that an outage cannot grow memory without limit.
            if recorder.metrics.events_retrying(1) >= RETRYING_MAX {
                recorder.metrics.events_retrying(-1);
                recorder.unacked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event = name, event_id = %id, error = %error, "event lost: {RETRYING_MAX} events are already being retried");
                return;
            }
            tracing::warn!(event = name, event_id = %id, error = %error, "event not acked; retrying");
            let mut delay = Duration::from_millis(50);
            loop {
                if started.elapsed() + delay > RETRY_FOR {
                    recorder.metrics.events_retrying(-1);
                    recorder.unacked.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(event = name, event_id = %id, "event lost: not acked within {RETRY_FOR:?}");
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                if let Ok(pending) = recorder
                    .bus
                    .enqueue_bytes(subject.clone(), &id, bytes.clone())
                    .await
                    && pending.wait().await.is_ok()
                {
                    recorder.metrics.events_retrying(-1);
                    return recorder.acked(name, started);
                }
            }
        });
    }
}

/// What approvers of a held request see besides the request itself.
#[derive(Debug, Default)]
pub struct ShownToApprovers {
    /// The caller's stated reason (`X-Gatehouse-Reason`).
    pub reason: Option<String>,
    /// The request body, masked as the record is.
    pub content: Option<RecordedBody>,
    /// For a write of one object: before and after.
    pub change: Option<gatehouse_events::ChangePreview>,
}
