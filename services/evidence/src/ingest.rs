//! The durable consumer that feeds the ledger, in stream order, exactly once.
//!
//! Each round takes whatever messages are ready (up to `batch_max`), turns the new ones into
//! entries, appends them in one synced write batch together with the last applied sequence,
//! and only then acks (ack-all up to the last message). So:
//! - a crash before the write loses nothing: unacked messages are redelivered;
//! - a crash after the write but before the ack causes redeliveries, which are recognised by
//!   their stream sequence (at or below the stored last sequence) and skipped;
//! - a sequence that jumps ahead is first filled from the stream by direct reads; whatever the
//!   stream no longer has is recorded as a gap and raised as an alarm, never skipped silently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use gatehouse_bus::{Bus, DurableConsumer};
use tokio_util::sync::CancellationToken;

use crate::store::{Gap, Head, Ledger, LedgerError, NewEntry};

/// How long a batch keeps gathering events that are still arriving before it is committed.
const GATHER: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Bus(#[from] gatehouse_bus::BusError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("JetStream consumer: {0}")]
    Consumer(String),
}

/// Feeds a [`Ledger`] from the durable consumer until cancelled.
pub struct Ingestor {
    bus: Bus,
    ledger: Arc<Mutex<Ledger>>,
    consumer: DurableConsumer,
    batch_max: usize,
    metrics: crate::metrics::Metrics,
}

impl Ingestor {
    pub fn new(
        bus: Bus,
        ledger: Arc<Mutex<Ledger>>,
        consumer: DurableConsumer,
        batch_max: usize,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            bus,
            ledger,
            consumer,
            batch_max: batch_max.max(1),
            metrics,
        }
    }

    /// Runs until `shutdown` is cancelled; the batch in hand is finished first. Transient NATS
    /// errors are retried; a ledger write error is retried too (nothing is acked meanwhile).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "evidence ingestion interrupted");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    async fn consume(&self, shutdown: &CancellationToken) -> Result<(), IngestError> {
        let consumer: PullConsumer = self.bus.durable_consumer(&self.consumer).await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch_max)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| IngestError::Consumer(e.to_string()))?;
        let mut chunks = messages.ready_chunks(self.batch_max);
        loop {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                chunk = chunks.next() => chunk,
            };
            let Some(chunk) = chunk else {
                return Err(IngestError::Consumer("the message stream ended".into()));
            };
            let mut delivered = Vec::with_capacity(chunk.len());
            for item in chunk {
                match item {
                    Ok(m) => delivered.push(m),
                    // Missed heartbeats and the like: the stream recovers by itself.
                    Err(e) => tracing::warn!(error = %e, "JetStream consumer hiccup"),
                }
            }
            if delivered.is_empty() {
                continue;
            }
            // Group commit: while events keep coming, gather them for a moment, so that a busy
            // stream costs one fsync per batch rather than one per handful of events.
            let gather_until = tokio::time::Instant::now() + GATHER;
            while delivered.len() < self.batch_max {
                let more = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    more = tokio::time::timeout_at(gather_until, chunks.next()) => more,
                };
                let Ok(Some(chunk)) = more else {
                    // The moment is over (or the stream ended: the next read says so).
                    break;
                };
                for item in chunk {
                    match item {
                        Ok(m) => delivered.push(m),
                        Err(e) => tracing::warn!(error = %e, "JetStream consumer hiccup"),
                    }
                }
            }
            for batch in delivered.chunks(self.batch_max) {
                self.apply(batch).await?;
            }
            if let Some(last) = delivered.last() {
                last.ack()
                    .await
                    .map_err(|e| IngestError::Consumer(format!("ack failed: {e}")))?;
            }
        }
    }

    /// Appends the new messages of one delivery to the ledger.
    async fn apply(&self, delivered: &[async_nats::jetstream::Message]) -> Result<(), IngestError> {
        let head = self.head()?;
        let mut expected = head.last_sequence + 1;
        let mut entries = Vec::new();
        let mut gaps = Vec::new();
        // The stream time of the first message after each gap, which every replica sees alike.
        let mut gap_times = Vec::new();
        for message in delivered {
            let info = message
                .info()
                .map_err(|e| IngestError::Consumer(e.to_string()))?;
            let sequence = info.stream_sequence;
            if sequence < expected {
                // Already in the ledger: a redelivery after a crash or a late ack.
                continue;
            }
            if sequence > expected {
                let found = Found {
                    entries: &mut entries,
                    gaps: &mut gaps,
                    gap_times: &mut gap_times,
                };
                self.fill(expected, sequence, nanos(info.published), found)
                    .await?;
            }
            entries.push(NewEntry {
                stream_sequence: sequence,
                received_at: nanos(info.published),
                event: message.payload.to_vec(),
            });
            expected = sequence + 1;
        }
        if entries.is_empty() && gaps.is_empty() {
            return Ok(());
        }
        let count = entries.len();
        let ledger = self.ledger.clone();
        let recorded = gaps.clone();
        let head = tokio::task::spawn_blocking(move || {
            let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.append(&entries, &gaps)
        })
        .await
        .map_err(|e| IngestError::Consumer(format!("ledger writer task failed: {e}")))??;
        // The alarm as an event too, once the gap is on record: it reaches the ledger (and
        // anyone watching the stream) like any other event.
        self.metrics.committed(count as u64, head.next_index);
        for (gap, at) in recorded.iter().zip(gap_times) {
            self.metrics.gap(gap.first, gap.last);
            self.announce(gap, at).await;
        }
        tracing::debug!(
            appended = count,
            entries = head.next_index,
            last_sequence = head.last_sequence,
            "ledger batch committed"
        );
        Ok(())
    }

    /// Reads sequences `from..to` straight from the stream; what it no longer has is a gap.
    async fn fill(
        &self,
        from: u64,
        to: u64,
        to_time: i64,
        found: Found<'_>,
    ) -> Result<(), IngestError> {
        let Found {
            entries,
            gaps,
            gap_times,
        } = found;
        let mut missing_since: Option<u64> = None;
        for (sequence, stored) in self.bus.stored_messages(from..to).await? {
            match stored {
                Some(message) => {
                    if let Some(first) = missing_since.take() {
                        gaps.push(alarm(first, sequence - 1));
                        gap_times.push(nanos(message.time));
                    }
                    entries.push(NewEntry {
                        stream_sequence: sequence,
                        received_at: nanos(message.time),
                        event: message.payload.to_vec(),
                    });
                }
                None => {
                    missing_since.get_or_insert(sequence);
                }
            }
        }
        if let Some(first) = missing_since {
            gaps.push(alarm(first, to - 1));
            gap_times.push(to_time);
        }
        Ok(())
    }

    /// Publishes `ledger.gap`. Every replica finds the same gap, so the event id is derived
    /// from the gap and the stream time after it: JetStream keeps the first and drops the
    /// others as duplicates.
    async fn announce(&self, gap: &Gap, at: i64) {
        let detected = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(gap.detected_at))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let at_ms = u64::try_from(at / 1_000_000).unwrap_or(0);
        let mut what = b"ledger.gap\0".to_vec();
        what.extend_from_slice(&gap.first.to_be_bytes());
        what.extend_from_slice(&gap.last.to_be_bytes());
        let id = gatehouse_events::EventId::derived(at_ms, &what).to_string();
        let event = gatehouse_events::Envelope::new(
            &gatehouse_events::envelope::source("evidence", "ledger"),
            &id,
            gatehouse_events::LedgerGap {
                first_missing_sequence: gap.first,
                last_missing_sequence: gap.last,
                detected_at: gatehouse_events::envelope::format_rfc3339(detected),
            },
        );
        if let Err(e) = self.bus.publish(&event).await {
            tracing::error!(error = %e, first = gap.first, last = gap.last, "the ledger.gap event could not be published (the gap is recorded in the ledger)");
        }
    }

    fn head(&self) -> Result<Head, IngestError> {
        Ok(self.ledger.lock().unwrap_or_else(|p| p.into_inner()).head())
    }
}

/// Where [`Ingestor::fill`] puts what it found.
struct Found<'a> {
    entries: &'a mut Vec<NewEntry>,
    gaps: &'a mut Vec<Gap>,
    gap_times: &'a mut Vec<i64>,
}

/// Logs the alarm for a gap and returns its record.
fn alarm(first: u64, last: u64) -> Gap {
    tracing::error!(
        alarm = "ledger_gap",
        first_missing_sequence = first,
        last_missing_sequence = last,
        "ALARM: events are missing from the stream and cannot be recorded in the ledger"
    );
    Gap {
        first,
        last,
        detected_at: nanos(time::OffsetDateTime::now_utc()),
    }
}

fn nanos(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}
