//! Response bodies: streamed frame by frame to the client, never buffered whole, while their
//! size and BLAKE3 digest are taken on the way through. When the stream ends — completely, with
//! an upstream error, or because the client went away — the completion hook fires exactly once
//! with what the client actually received.

use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// Masks a response body as it streams: each upstream frame goes through the masker, and
/// whatever it can already emit is passed on. A body that cannot be masked (malformed JSON,
/// protobuf) ends in an error, so the client gets a cut response and never unmasked bytes.
pub struct MaskingBody<B> {
    inner: B,
    masker: BodyMasker,
    out: BytesMut,
    done: bool,
    /// Shared with the completion hook: how many values were masked.
    masked: Arc<AtomicU64>,
}

impl<B> MaskingBody<B> {
    pub fn new(inner: B, masker: BodyMasker, masked: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            masker,
            out: BytesMut::new(),
            done: false,
            masked,
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
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers carry nothing to mask and nothing a client of the API needs.
                        continue;
                    };
                    if let Err(e) = this.masker.push(&data, &mut this.out) {
                        this.done = true;
                        tracing::warn!(error = %e, "response cannot be masked; cutting it");
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    this.masked
                        .store(this.masker.masked_fields(), Ordering::Relaxed);
                    if !this.out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Err(e) = this.masker.finish(&mut this.out) {
                        tracing::warn!(error = %e, "response cannot be masked; cutting it");
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    this.masked
                        .store(this.masker.masked_fields(), Ordering::Relaxed);
                    if !this.out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                    }
                    return Poll::Ready(None);
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
}
