//! One connection's bookkeeping: its place under the connection limits ([`Admission`],
//! [`Permit`]), whether a request is in flight ([`Activity`], [`InFlight`]), and the wrappers
//! that report to them ([`GuardedIo`] for bytes read, [`InFlightBody`] for a response still
//! being sent).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::{Observer, Refusal, Timeout};

/// Connections open per client address and in total.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            open: Mutex::default(),
        })
    }

    /// A permit for one more connection from `ip`, or why there is none.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        observer: &Observer,
    ) -> Result<Permit, Refusal> {
        // `::ffff:a.b.c.d` on a dual-stack socket is the IPv4 client it stands for.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::TotalLimit);
        }
        let from_ip = open.per_address.entry(ip).or_default();
        if *from_ip >= self.max_per_address {
            return Err(Refusal::PerAddressLimit);
        }
        *from_ip += 1;
        open.total += 1;
        observer.open.inc();
        Ok(Permit {
            admission: self.clone(),
            ip,
            observer: observer.clone(),
        })
    }
}

/// One admitted connection; dropping it (when the socket is closed, which for an upgraded
/// connection is when its session ends) frees its place.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
    observer: Observer,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
        self.observer.open.dec();
    }
}

/// Whether a connection has a request in flight, and since when it has been waiting for one.
#[derive(Debug)]
pub(crate) struct Activity {
    state: Mutex<State>,
    changed: Notify,
    /// Set while an idle HTTP/1.1 connection waits for the first byte of its next request, so
    /// reads check it without taking the lock.
    awaiting_head: AtomicBool,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// When the connection last had no request in flight (or was opened).
    idle_since: Instant,
    /// When the request being received began: the connection's start for the first one, the
    /// first byte after the previous one for later HTTP/1.1 requests.
    head_since: Option<Instant>,
    /// HTTP/2 frames between requests (pings, settings, window updates) start no request, so
    /// only the idle timeout applies between HTTP/2 requests.
    http2: bool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: now,
                head_since: Some(now),
                http2: false,
            }),
            changed: Notify::new(),
            awaiting_head: AtomicBool::new(false),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first request's headers are due from now (after the TLS handshake).
    pub(crate) fn restart(&self) {
        let now = Instant::now();
        let mut state = self.state();
        state.idle_since = now;
        state.head_since = Some(now);
        drop(state);
        self.changed.notify_waiters();
    }

    fn bytes_read(&self) {
        if !self.awaiting_head.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut state = self.state();
        if state.in_flight == 0 && !state.http2 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_waiters();
        }
    }

    fn request_started(&self, http2: bool) {
        let mut state = self.state();
        state.in_flight += 1;
        state.http2 = http2;
        state.head_since = None;
        self.awaiting_head.store(false, Ordering::Release);
        drop(state);
        self.changed.notify_waiters();
    }

    fn request_ended(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            self.awaiting_head.store(!state.http2, Ordering::Release);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Resolves when the connection has gone too long without progress and should be closed:
    /// its headers are late, or it has been idle for `idle`. Never while a request is in
    /// flight. With `closing` (a graceful close began then), resolves once the connection has
    /// had no request in flight for `grace` after that, so a peer that never finishes a
    /// graceful close is cut.
    pub(crate) async fn expired(
        &self,
        header_read: Duration,
        idle: Duration,
        closing: Option<(Instant, Duration)>,
    ) -> Timeout {
        loop {
            // Registered before the state is read, so no change is missed in between.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let state = self.state();
                if state.in_flight > 0 {
                    None
                } else if let Some((since, grace)) = closing {
                    Some((state.idle_since.max(since) + grace, Timeout::Idle))
                } else if let Some(head_since) = state.head_since {
                    Some((head_since + header_read, Timeout::HeaderRead))
                } else {
                    Some((state.idle_since + idle, Timeout::Idle))
                }
            };
            match deadline {
                None => changed.await,
                Some((at, why)) => tokio::select! {
                    () = tokio::time::sleep_until(at) => return why,
                    () = changed => {}
                },
            }
        }
    }
}

/// A request in flight, from the moment its headers are read until its response has been
/// sent (its body ended or dropped).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn start(activity: &Arc<Activity>, version: http::Version) -> Self {
        activity.request_started(version == http::Version::HTTP_2);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is done.
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B> InFlightBody<B> {
    pub(crate) fn new(inner: B, guard: InFlight) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body> Body for InFlightBody<B>
where
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Ended: the request is over even if the body lingers before it is dropped.
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket: holds its [`Permit`] for as long as the socket lives
    /// (through an upgrade too), and tells [`Activity`] when bytes arrive.
    pub(crate) struct GuardedIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        permit: Permit,
    }
}

impl<T> GuardedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, permit: Permit) -> Self {
        Self {
            inner,
            activity,
            permit,
        }
    }
}

impl<T: AsyncRead> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_address_and_in_total_and_free_their_place() {
        let observer = Observer::unregistered("test");
        let admission = Admission::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(a, &observer).unwrap();
        let _second = admission.admit(mapped, &observer).unwrap();
        assert_eq!(
            admission.admit(a, &observer).unwrap_err(),
            Refusal::PerAddressLimit
        );
        let _third = admission.admit(b, &observer).unwrap();
        assert_eq!(
            admission.admit(b, &observer).unwrap_err(),
            Refusal::TotalLimit
        );
        assert_eq!(observer.open(), 3);
        drop(first);
        assert_eq!(observer.open(), 2);
        let _again = admission.admit(a, &observer).unwrap();
    }

    /// Real time, short clocks: which clock ran shows in the reason, and in the time it took.
    #[tokio::test]
    async fn the_idle_clock_runs_only_with_no_request_in_flight() {
        let activity = Activity::new();
        let header = Duration::from_millis(100);
        let idle = Duration::from_millis(300);
        let about = |took: Duration, wanted: Duration| {
            assert!(
                took >= wanted && took < wanted + Duration::from_secs(1),
                "took {took:?}, wanted {wanted:?}"
            )
        };
        let start = Instant::now();
        // A new connection must send its first headers in time.
        assert_eq!(
            activity.expired(header, idle, None).await,
            Timeout::HeaderRead
        );
        about(start.elapsed(), header);

        let request = InFlight::start(&activity, http::Version::HTTP_11);
        let busy = tokio::time::timeout(idle * 2, activity.expired(header, idle, None)).await;
        assert!(busy.is_err(), "a request in flight is never timed out");
        drop(request);
        let ended = Instant::now();
        assert_eq!(activity.expired(header, idle, None).await, Timeout::Idle);
        about(ended.elapsed(), idle);

        // The first byte of a next HTTP/1.1 request starts its header clock.
        let first_byte = Instant::now();
        activity.bytes_read();
        assert_eq!(
            activity.expired(header, idle, None).await,
            Timeout::HeaderRead
        );
        about(first_byte.elapsed(), header);

        // Between HTTP/2 requests, frames are not requests: only the idle clock runs.
        drop(InFlight::start(&activity, http::Version::HTTP_2));
        let ended = Instant::now();
        activity.bytes_read();
        assert_eq!(activity.expired(header, idle, None).await, Timeout::Idle);
        about(ended.elapsed(), idle);

        // Closing: a grace after the close began, whatever the clocks said.
        let closing = Instant::now();
        let grace = Duration::from_millis(50);
        let why = activity.expired(header, idle, Some((closing, grace))).await;
        assert_eq!(why, Timeout::Idle);
        about(closing.elapsed(), grace);
    }
}
