//! Publishing events so that "published" means "acked by JetStream".
//!
//! Two shapes:
//! - [`Bus::publish`] sends and waits for the ack: the proxy uses it for `request.received`,
//!   which must be acked before anything is forwarded.
//! - [`Bus::enqueue`] sends now and hands back the ack to await later. Messages sent on one
//!   connection reach the stream in send order, so later events of a request keep their order
//!   without blocking the request on each ack.

use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use gatehouse_events::{Envelope, Payload};

use crate::Bus;

/// JetStream's answer to a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The stream sequence the event was stored at.
    pub sequence: u64,
    /// True when the stream already had an event with this id (a retried publish).
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("NATS is not connected")]
    Disconnected,
    #[error("no JetStream ack within {0:?}")]
    Timeout(Duration),
    #[error("JetStream refused the event: {0}")]
    Refused(String),
    #[error("the event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// An event that has been sent; await [`PendingAck::wait`] to learn whether it was stored.
pub struct PendingAck {
    future: PublishAckFuture,
    timeout: Duration,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck").finish_non_exhaustive()
    }
}

impl PendingAck {
    pub async fn wait(self) -> Result<Ack, PublishError> {
        match tokio::time::timeout(self.timeout, self.future).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(classify(e)),
            Ok(Ok(ack)) => Ok(Ack {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
        }
    }
}

impl Bus {
    /// Publishes an event and waits for JetStream's ack.
    pub async fn publish<P: Payload>(&self, event: &Envelope<P>) -> Result<Ack, PublishError> {
        self.enqueue(event).await?.wait().await
    }

    /// Sends an event now; the returned [`PendingAck`] resolves when JetStream has stored it.
    pub async fn enqueue<P: Payload>(
        &self,
        event: &Envelope<P>,
    ) -> Result<PendingAck, PublishError> {
        let bytes = event.to_bytes()?;
        self.enqueue_bytes(event.nats_subject(), &event.id, Bytes::from(bytes))
            .await
    }

    /// Sends already-encoded event bytes with `Nats-Msg-Id` = `id`.
    pub async fn enqueue_bytes(
        &self,
        subject: String,
        id: &str,
        payload: Bytes,
    ) -> Result<PendingAck, PublishError> {
        // While disconnected a publish would sit in the client's buffer until the timeout; say
        // so at once instead, so the caller fails closed without waiting.
        if !self.is_connected() {
            return Err(PublishError::Disconnected);
        }
        let message = PublishMessage::build()
            .payload(payload)
            .message_id(id)
            .expected_stream(&self.stream);
        let send = self.js.send_publish(subject, message);
        let future = match tokio::time::timeout(self.publish_timeout, send).await {
            Err(_) => return Err(PublishError::Timeout(self.publish_timeout)),
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(f)) => f,
        };
        Ok(PendingAck {
            future,
            timeout: self.publish_timeout,
        })
    }
}

fn classify(e: async_nats::jetstream::context::PublishError) -> PublishError {
    match e.kind() {
        PublishErrorKind::TimedOut => PublishError::Timeout(Duration::ZERO),
        PublishErrorKind::BrokenPipe => PublishError::Disconnected,
        _ => PublishError::Refused(e.to_string()),
    }
}
