//! The one HTTP listener every Gatehouse service serves on: the proxy, its admin port, the
//! approval service (and its admin port), the auditor API and the evidence admin port.
//!
//! What each connection gets (values from [`ConnectionLimits`], each service's `connections:`):
//! - a place under the limits of connections open at once per client address and in total,
//!   or an immediate close, counted by reason;
//! - a TLS handshake timeout (HTTPS listeners);
//! - a header-read timeout: a new connection must send its first request's headers in time,
//!   and so must an HTTP/1.1 connection whose next request has begun to arrive;
//! - an idle timeout: a connection with no request in flight is closed (HTTP/2 with GOAWAY).
//!   A request is in flight from its headers until its response has been sent, so watches,
//!   long streamed responses and HTTP/2 streams are never cut, and an HTTP/1.1 upgrade
//!   (exec, attach, port-forward over SPDY or WebSocket) leaves the listener's watch
//!   altogether (its session has its own limits);
//! - HTTP/2 limits: concurrent streams, header list size, reset-stream floods, keep-alive pings
//!   that end connections whose peer vanished;
//! - a graceful drain on shutdown.
//!
//! hyper's own HTTP/1.1 `header_read_timeout` is not used: in hyper 1.x its timer also runs
//! while an idle keep-alive connection waits for its next request, which would make it the
//! idle timeout too. The connection's own watch keeps both clocks instead.
//!
//! Module map:
//! - [`limits`]: the configuration section, its defaults and its bounds.
//! - [`metrics`]: open, accepted, refused and timed-out connections, per listener.
//! - [`serve`]: the accept loop ([`serve()`], [`serve_router`]).
//! - `conn`: admission, in-flight tracking and the socket and body wrappers.
#![forbid(unsafe_code)]

mod conn;
pub mod limits;
pub mod metrics;
pub mod serve;

pub use conn::InFlightBody;
pub use limits::{ConnectionLimits, Http2Limits};
pub use metrics::{ListenerMetrics, Observer, Refusal, Timeout};
/// The metrics library the services register in, so a service without metrics of its own
/// needs no dependency on it to export the listener's.
pub use prometheus_client;
pub use serve::{DRAIN_TIMEOUT, Options, Peer, serve, serve_router};

/// Binds `addr`; with port 0 the system picks a free port. `what` names the setting in the
/// error (`listen`, `admin_listen`).
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}
