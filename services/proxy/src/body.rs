//! Response bodies: streamed frame by frame to the client, never buffered whole, while their
//! size and BLAKE3 digest are taken on the way through. When the stream ends — completely, with
//! an upstream error, or because the client went away — the completion hook fires exactly once
//! with what the client actually received.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use gatehouse_events::{BodyDigest, ResponseOutcome};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use crate::mask::{LineMasker, MaskError, Masker};

/// Error type of response bodies sent to clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the client received, reported once the body is over.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub outcome: ResponseOutcome,
    pub body: BodyDigest,
    /// The first bytes sent, when the body is captured for the record.
    pub captured: Option<Bytes>,
}

/// Called once, when the body ends or is dropped.
pub type OnComplete = Box<dyn FnOnce(Delivered) + Send>;

/// Wraps a body, digesting the bytes that pass through.
pub struct RecordedBody<B: Body> {
    inner: B,
    hasher: blake3::Hasher,
    bytes: u64,
    /// The first bytes, kept for record level `request-response`, and how many to keep.
    capture: Option<(BytesMut, usize)>,
    on_complete: Option<OnComplete>,
}

impl<B: Body> RecordedBody<B> {
    pub fn new(inner: B, on_complete: OnComplete) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
            capture: None,
            on_complete: Some(on_complete),
        }
    }

    /// Also keeps the first `limit` bytes (plus one, to tell a cut body from a whole one).
    pub fn capturing(mut self, limit: usize) -> Self {
        self.capture = Some((BytesMut::new(), limit));
        self
    }

    fn finish(&mut self, outcome: ResponseOutcome) {
        if let Some(hook) = self.on_complete.take() {
            hook(Delivered {
                outcome,
                body: BodyDigest {
                    bytes: self.bytes,
                    blake3: self.hasher.finalize().to_hex().to_string(),
                },
                captured: self.capture.take().map(|(kept, _)| kept.freeze()),
            });
        }
    }
}

impl<B> Body for RecordedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.hasher.update(data);
                    this.bytes += data.len() as u64;
                    if let Some((kept, limit)) = &mut this.capture
                        && kept.len() < *limit
                    {
                        let room = *limit - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(ResponseOutcome::UpstreamError);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish(ResponseOutcome::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for RecordedBody<B> {
    fn drop(&mut self) {
        // Servers stop polling a body once its declared length has been sent (and never poll
        // an empty one), so a body at its end when dropped was delivered whole. Anything else
        // was abandoned: the client disconnected, or the server is shutting down.
        let outcome = if self.inner.is_end_stream() {
            ResponseOutcome::Complete
        } else {
            ResponseOutcome::ClientDisconnected
        };
        self.finish(outcome);
    }
}

/// What masks a streamed body: Kubernetes objects as JSON, or free text line by line.
pub enum BodyMasker {
    Json(Box<Masker>),
    Text(LineMasker),
}

impl BodyMasker {
    fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        match self {
            Self::Json(m) => m.push(chunk, out),
            Self::Text(m) => {
                m.push(chunk, out);
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        match self {
            Self::Json(m) => m.finish(out),
            Self::Text(m) => {
                m.finish(out);
                Ok(())
            }
        }
    }

    fn masked_fields(&self) -> u64 {
        match self {
            Self::Json(m) => m.masked_fields(),
            Self::Text(m) => m.masked_lines(),
        }
    }

    fn between_documents(&self) -> bool {
        match self {
            Self::Json(m) => m.between_documents(),
            Self::Text(_) => false,
        }
    }
}

/// What a [`MaskingBody`] tells the completion hook.
#[derive(Debug, Default)]
pub struct MaskStats {
    /// Values masked so far.
    pub masked: AtomicU64,
    /// The body could not be masked, so the rest of it was withheld.
    pub withheld: AtomicBool,
}

/// Masks a response body as it streams: each upstream frame goes through the masker, and
/// whatever it can already emit is passed on. Nothing the masker has not finished with is ever
/// sent. A body that cannot be masked (malformed JSON, protobuf) is not sent on: before
/// anything was sent ([`MaskingBody::prime`]) the caller answers 502 instead; a watch whose
/// events so far were whole ends with an `ERROR` event; anything else ends in an error, so the
/// client gets a cut response.
pub struct MaskingBody<B: Body> {
    inner: B,
    masker: BodyMasker,
    out: BytesMut,
    done: bool,
    /// What was sent ends between two documents.
    between_documents: bool,
    /// The `ERROR` event that ends a watch whose next event cannot be masked.
    watch_error: Option<Bytes>,
    /// An upstream error met while priming, for the next poll.
    pending: Option<BoxError>,
    stats: Arc<MaskStats>,
}

impl<B: Body> MaskingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(inner: B, masker: BodyMasker, stats: Arc<MaskStats>) -> Self {
        Self {
            inner,
            masker,
            out: BytesMut::new(),
            done: false,
            between_documents: true,
            watch_error: None,
            pending: None,
            stats,
        }
    }

    /// Ends the body with `event` (a watch `ERROR` event) rather than cutting it, when a later
    /// event cannot be masked and everything sent so far was whole events.
    pub fn ending_watches_with(mut self, event: Bytes) -> Self {
        self.watch_error = Some(event);
        self
    }

    /// Reads the body until the masker has something to send (or the body is over), so that a
    /// body that is not what its headers say is refused before its response starts.
    pub async fn prime(&mut self) -> Result<(), MaskError> {
        use http_body_util::BodyExt as _;
        while self.out.is_empty() && !self.done && self.pending.is_none() {
            match self.inner.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && let Err(e) = self.push(&data)
                    {
                        self.withhold(&e);
                        return Err(e);
                    }
                }
                Some(Err(e)) => self.pending = Some(e.into()),
                None => {
                    self.done = true;
                    if let Err(e) = self.end() {
                        self.withhold(&e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), MaskError> {
        let pushed = self.masker.push(chunk, &mut self.out);
        self.settle(pushed)
    }

    fn end(&mut self) -> Result<(), MaskError> {
        let finished = self.masker.finish(&mut self.out);
        self.settle(finished)
    }

    fn settle(&mut self, result: Result<(), MaskError>) -> Result<(), MaskError> {
        match result {
            Ok(()) => {
                self.between_documents = self.masker.between_documents();
                self.stats
                    .masked
                    .store(self.masker.masked_fields(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // What the failed step wrote is not finished with: it never goes out.
                self.out.clear();
                Err(e)
            }
        }
    }

    fn withhold(&mut self, e: &MaskError) {
        self.done = true;
        self.stats.withheld.store(true, Ordering::Relaxed);
        tracing::warn!(error = %e, "response cannot be masked; withholding the rest of it");
    }

    /// After a masking failure: the watch `ERROR` event if it can go out cleanly, else an error.
    fn failed(&mut self, e: MaskError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.withhold(&e);
        match self.watch_error.take() {
            Some(event) if self.between_documents => Poll::Ready(Some(Ok(Frame::data(event)))),
            _ => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }
}

impl<B> Body for MaskingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(e) = this.pending.take() {
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry nothing to mask and nothing a client of the API needs.
                    if let Ok(data) = frame.into_data()
                        && let Err(e) = this.push(&data)
                    {
                        return this.failed(e);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Err(e) = this.end() {
                        return this.failed(e);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    fn recorder() -> (OnComplete, Arc<Mutex<Vec<Delivered>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (Box::new(move |d| sink.lock().unwrap().push(d)), seen)
    }

    #[tokio::test]
    async fn a_complete_body_is_digested_once() {
        let (hook, seen) = recorder();
        let chunks = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
        ]);
        let body = RecordedBody::new(StreamBody::new(chunks), hook);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello world");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].outcome, ResponseOutcome::Complete);
        assert_eq!(seen[0].body, BodyDigest::of(b"hello world"));
    }

    #[tokio::test]
    async fn a_body_dropped_midway_is_a_disconnect() {
        let (hook, seen) = recorder();
        let chunks = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"partial"))),
            Ok(Frame::data(Bytes::from_static(b"never read"))),
        ]);
        let mut body = RecordedBody::new(StreamBody::new(chunks), hook);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap(), &Bytes::from_static(b"partial"));
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].outcome, ResponseOutcome::ClientDisconnected);
        assert_eq!(seen[0].body, BodyDigest::of(b"partial"));
    }

    #[tokio::test]
    async fn an_upstream_error_is_recorded_as_such() {
        let (hook, seen) = recorder();
        let chunks = futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::other("reset")),
        ]);
        let body = RecordedBody::new(StreamBody::new(chunks), hook);
        assert!(body.collect().await.is_err());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].outcome, ResponseOutcome::UpstreamError);
    }

    /// What hyper does with a Content-Length body: sends the last frame, sees the body at its
    /// end, and drops it without polling for the end.
    #[tokio::test]
    async fn a_sized_body_dropped_after_its_last_frame_is_complete() {
        let (hook, seen) = recorder();
        let mut body = RecordedBody::new(
            http_body_util::Full::new(Bytes::from_static(b"all of it")),
            hook,
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &Bytes::from_static(b"all of it"));
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].outcome, ResponseOutcome::Complete);
        assert_eq!(seen[0].body, BodyDigest::of(b"all of it"));
    }

    #[tokio::test]
    async fn an_empty_body_dropped_unpolled_is_complete() {
        let (hook, seen) = recorder();
        drop(RecordedBody::new(
            http_body_util::Empty::<Bytes>::new(),
            hook,
        ));
        assert_eq!(seen.lock().unwrap()[0].outcome, ResponseOutcome::Complete);

        let (hook, seen) = recorder();
        let pending = StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        drop(RecordedBody::new(pending, hook));
        assert_eq!(
            seen.lock().unwrap()[0].outcome,
            ResponseOutcome::ClientDisconnected
        );
    }

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        StreamBody::new(futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(p.as_bytes()))))
                .collect::<Vec<_>>(),
        ))
    }

    fn secrets_masker() -> BodyMasker {
        BodyMasker::Json(Box::new(crate::mask::Masker::new(
            None,
            &crate::mask::MaskTarget::new("secrets", ""),
        )))
    }

    #[tokio::test]
    async fn priming_refuses_a_body_that_is_not_json_before_anything_is_sent() {
        let stats = Arc::new(MaskStats::default());
        let mut body = MaskingBody::new(
            chunks(&["k8s\x00\x0a\x0c", "{\"data\":{\"a\":\"aHVudGVyMg==\"}}"]),
            secrets_masker(),
            stats.clone(),
        );
        assert_eq!(body.prime().await, Err(MaskError::NotJson));
        assert!(stats.withheld.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn priming_keeps_what_it_read_for_the_client() {
        let stats = Arc::new(MaskStats::default());
        let mut body = MaskingBody::new(
            chunks(&[
                "{\"kind\":\"Secret\",",
                "\"data\":{\"a\":\"aHVudGVyMg==\"}}",
            ]),
            secrets_masker(),
            stats.clone(),
        );
        body.prime().await.unwrap();
        let sent = body.collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(v["data"]["a"], crate::mask::MASKED_BASE64);
        assert_eq!(stats.masked.load(Ordering::Relaxed), 1);
        assert!(!stats.withheld.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_watch_that_cannot_go_on_ends_with_an_error_event() {
        let stats = Arc::new(MaskStats::default());
        let body = MaskingBody::new(
            chunks(&[
                "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"a\":\"aHVudGVyMg==\"}}}\n",
                "\u{8}\u{1}protobuf{\"data\":{\"a\":\"aHVudGVyMg==\"}}",
            ]),
            secrets_masker(),
            stats.clone(),
        )
        .ending_watches_with(Bytes::from_static(b"{\"type\":\"ERROR\"}\n"));
        let sent = body.collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&sent).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("ADDED") && !text.contains("aHVudGVy"),
            "{text}"
        );
        assert_eq!(lines[1], "{\"type\":\"ERROR\"}");
        assert!(stats.withheld.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_watch_broken_inside_an_event_is_cut_with_nothing_of_that_event_sent() {
        let stats = Arc::new(MaskStats::default());
        let mut body = MaskingBody::new(
            chunks(&[
                "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"data\":{\"a\":",
                "\"aHVudGVyMg==\" \"b\"}}}\n",
            ]),
            secrets_masker(),
            stats.clone(),
        )
        .ending_watches_with(Bytes::from_static(b"{\"type\":\"ERROR\"}\n"));
        let mut sent = Vec::new();
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => sent.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => failed = true,
            }
        }
        assert!(failed);
        let text = String::from_utf8(sent).unwrap();
        assert!(
            !text.contains("ERROR") && !text.contains("aHVudGVy"),
            "{text}"
        );
    }
}
