//! Durable pull consumers on the Gatehouse stream.
//!
//! A durable consumer keeps its position in NATS, so a restarted (or second) replica resumes
//! where the last one acked. Consumers here use `AckPolicy::All`: acking message N acks every
//! earlier one, which suits consumers that process strictly in order and commit in batches.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;

use crate::{Bus, BusError};

/// Settings of a durable pull consumer.
#[derive(Clone, Debug)]
pub struct DurableConsumer {
    /// The durable name; replicas that share it share the work.
    pub name: String,
    /// Subject filter, e.g. `gatehouse.>` or `gatehouse.request.held`.
    pub filter: String,
    /// How long NATS waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Upper bound on delivered-but-unacked messages.
    pub max_ack_pending: i64,
    /// `All` for in-order batch consumers (the ledger); `Explicit` for work shared by
    /// replicas message by message (holds to post).
    pub ack_policy: AckPolicy,
}

impl DurableConsumer {
    pub fn new(name: impl Into<String>, filter: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            filter: filter.into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            ack_policy: AckPolicy::All,
        }
    }
}

impl Bus {
    /// Gets or creates the durable pull consumer on the Gatehouse stream.
    pub async fn durable_consumer(&self, spec: &DurableConsumer) -> Result<PullConsumer, BusError> {
        let stream = self.stream_handle().await?;
        stream
            .get_or_create_consumer(
                &spec.name,
                pull::Config {
                    durable_name: Some(spec.name.clone()),
                    description: Some(format!("Gatehouse consumer {}", spec.name)),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: spec.ack_policy,
                    ack_wait: spec.ack_wait,
                    max_ack_pending: spec.max_ack_pending,
                    filter_subject: spec.filter.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::Consumer {
                consumer: spec.name.clone(),
                message: e.to_string(),
            })
    }

    /// Reads stored messages by stream sequence, `None` for each the stream no longer has.
    /// Consumers use it to fill a hole in what they were delivered before calling it a gap.
    pub async fn stored_messages(
        &self,
        sequences: std::ops::Range<u64>,
    ) -> Result<Vec<(u64, Option<StreamMessage>)>, BusError> {
        let stream = self.stream_handle().await?;
        let mut out = Vec::with_capacity(sequences.end.saturating_sub(sequences.start) as usize);
        for sequence in sequences {
            let message = match stream.get_raw_message(sequence).await {
                Ok(m) => Some(m),
                Err(e)
                    if matches!(
                        e.kind(),
                        async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    None
                }
                Err(e) => {
                    return Err(BusError::Stream {
                        stream: self.stream.clone(),
                        message: format!("reading sequence {sequence}: {e}"),
                    });
                }
            };
            out.push((sequence, message));
        }
        Ok(out)
    }

    /// The sequence of the last message in the stream (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, BusError> {
        let mut stream = self.stream_handle().await?;
        let info = stream.info().await.map_err(|e| BusError::Stream {
            stream: self.stream.clone(),
            message: e.to_string(),
        })?;
        Ok(info.state.last_sequence)
    }

    /// Every message currently in the stream, in order, with its sequence. For tests and tools.
    pub async fn read_all(&self) -> Result<Vec<(u64, bytes::Bytes)>, BusError> {
        let stream = self.stream_handle().await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Consumer {
                consumer: "ordered reader".into(),
                message: e.to_string(),
            })?;
        let last = self.last_sequence().await?;
        let mut out = Vec::new();
        if last == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| BusError::Consumer {
            consumer: "ordered reader".into(),
            message: e.to_string(),
        })?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| BusError::Consumer {
                consumer: "ordered reader".into(),
                message: e.to_string(),
            })?;
            let sequence = message
                .info()
                .map_err(|e| BusError::Consumer {
                    consumer: "ordered reader".into(),
                    message: e.to_string(),
                })?
                .stream_sequence;
            out.push((sequence, message.payload.clone()));
            if sequence >= last {
                break;
            }
        }
        Ok(out)
    }

    async fn stream_handle(&self) -> Result<Stream, BusError> {
        self.js
            .get_stream(&self.stream)
            .await
            .map_err(|e| BusError::Stream {
                stream: self.stream.clone(),
                message: e.to_string(),
            })
    }
}
