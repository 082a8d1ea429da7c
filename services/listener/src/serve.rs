//! The accept loop and the life of one connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{Activity, Admission, GuardedIo, InFlight, InFlightBody, Permit};
use crate::limits::ConnectionLimits;
use crate::metrics::{Observer, Timeout};

/// How long in-flight requests (watches included) get to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How a listener serves: its limits, its metrics, and TLS if it speaks HTTPS.
#[derive(Clone, Debug)]
pub struct Options {
    pub limits: ConnectionLimits,
    pub observer: Observer,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub drain_timeout: Duration,
}

impl Options {
    /// Plain HTTP with `limits`, counted by `observer`.
    pub fn new(limits: ConnectionLimits, observer: Observer) -> Self {
        Self {
            limits,
            observer,
            tls: None,
            drain_timeout: DRAIN_TIMEOUT,
        }
    }

    /// HTTPS with `config` (which should offer `h2` and `http/1.1` by ALPN).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }
}

/// Who a request came from.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The leaf certificate the client presented in the TLS handshake, if any. Only the
    /// handshake sets it (a request cannot).
    pub client_certificate: Option<Arc<CertificateDer<'static>>>,
}

/// Accepts connections on `listener` until `shutdown`, then stops accepting and drains for
/// at most `options.drain_timeout`. Each request goes to `handler`.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    options: Options,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, &Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Options {
        limits,
        observer,
        tls,
        drain_timeout,
    } = options;
    let limits = Arc::new(limits);
    let admission = Admission::new(limits.max_connections, limits.max_connections_per_address);
    let acceptor = tls.map(TlsAcceptor::from);
    let builder = builder(&limits);
    let connections = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = observer.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match admission.admit(addr.ip(), &observer) {
            Ok(permit) => permit,
            Err(why) => {
                observer.count_refused(why);
                if let Some(held_back) = observer.may_warn() {
                    tracing::warn!(
                        listener = observer.name(),
                        peer = %addr,
                        reason = why.label(),
                        held_back,
                        "connection refused: over the connection limit"
                    );
                }
                // Closed at once: nothing is read from it.
                drop(stream);
                continue;
            }
        };
        observer.count_accepted();
        connections.spawn(connection(
            stream,
            Peer {
                addr,
                client_certificate: None,
            },
            permit,
            Setup {
                acceptor: acceptor.clone(),
                builder: builder.clone(),
                limits: limits.clone(),
                observer: observer.clone(),
            },
            handler.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = observer.name(),
            "some connections were still open after the drain timeout"
        );
    }
}

/// Serves an axum `router` the same way (it sees the request as [`serve`] gives it, with the
/// [`Peer`] in its extensions).
pub async fn serve_router(
    listener: TcpListener,
    options: Options,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    use tower::ServiceExt;
    serve(
        listener,
        options,
        move |mut request: Request<Incoming>, peer: &Peer| {
            request.extensions_mut().insert(peer.clone());
            let router = router.clone();
            async move {
                match router.oneshot(request.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        },
        shutdown,
    )
    .await;
}

/// The HTTP/1.1 and HTTP/2 settings every connection gets.
fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header-read timer also runs while an idle keep-alive connection waits for
    // its next request, so it would cap the idle timeout: the connection's watch below does
    // both instead.
    builder.http1().header_read_timeout(None);
    let h2 = &limits.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_size)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .keep_alive_interval(h2.keep_alive_interval)
        .keep_alive_timeout(h2.keep_alive_timeout);
    builder
}

/// What every connection task shares.
struct Setup {
    acceptor: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    limits: Arc<ConnectionLimits>,
    observer: Observer,
}

impl Setup {
    fn timed_out(&self, why: Timeout, peer: &Peer) {
        self.observer.count_timeout(why);
        // Idle connections are closed all day long; only the others say something is wrong.
        if why == Timeout::Idle {
            tracing::debug!(listener = self.observer.name(), peer = %peer.addr, "idle connection closed");
        } else if let Some(held_back) = self.observer.may_warn() {
            tracing::warn!(
                listener = self.observer.name(),
                peer = %peer.addr,
                reason = why.label(),
                held_back,
                "connection closed: timed out"
            );
        }
    }
}

async fn connection<H, F, B>(
    stream: TcpStream,
    mut peer: Peer,
    permit: Permit,
    setup: Setup,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, &Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = GuardedIo::new(stream, activity.clone(), permit);
    let Some(acceptor) = setup.acceptor.clone() else {
        return http(io, peer, activity, &setup, handler, shutdown).await;
    };
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        done = tokio::time::timeout(setup.limits.tls_handshake_timeout, acceptor.accept(io)) => done,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(listener = setup.observer.name(), peer = %peer.addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return setup.timed_out(Timeout::TlsHandshake, &peer),
    };
    peer.client_certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| Arc::new(leaf.clone().into_owned()));
    activity.restart();
    http(tls, peer, activity, &setup, handler, shutdown).await;
}

/// Serves HTTP on an open (and, for HTTPS, handshaken) connection until it ends, the server
/// closes it for a timeout, or a drain finishes it.
async fn http<I, H, F, B>(
    io: I,
    peer: Peer,
    activity: Arc<Activity>,
    setup: &Setup,
    handler: H,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, &Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = {
        let (activity, peer) = (activity.clone(), peer.clone());
        service_fn(move |request: Request<Incoming>| {
            let in_flight = InFlight::start(&activity, request.version());
            let response = handler(request, &peer);
            async move {
                let response = response.await;
                Ok::<_, Infallible>(response.map(|body| InFlightBody::new(body, in_flight)))
            }
        })
    };
    let limits = &setup.limits;
    let connection = setup
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // Set when a graceful close began (idle, or the server draining): from then on a peer
    // that lets the close hang with nothing in flight is cut after a grace period.
    let mut closing: Option<(Instant, Duration)> = None;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(listener = setup.observer.name(), peer = %peer.addr, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some((Instant::now(), limits.header_read_timeout));
            }
            why = activity.expired(limits.header_read_timeout, limits.idle_timeout, closing) => {
                if closing.is_some() {
                    // The grace is over with nothing in flight: drop the connection.
                    return;
                }
                setup.timed_out(why, &peer);
                match why {
                    // Nothing was asked: close at once.
                    Timeout::HeaderRead | Timeout::TlsHandshake => return,
                    // HTTP/2 says goodbye with GOAWAY, so a request racing the close is
                    // retried by the client rather than lost.
                    Timeout::Idle => {
                        connection.as_mut().graceful_shutdown();
                        closing = Some((Instant::now(), limits.header_read_timeout));
                    }
                }
            }
        }
    }
}
