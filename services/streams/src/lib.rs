//! The wire formats of Kubernetes interactive streams (`pods/exec`, `pods/attach`,
//! `pods/portforward`), as pure codecs over byte slices: no I/O, no async runtime.
//!
//! The proxy feeds copies of the bytes it relays (one decoder per direction) and records what
//! it sees; the sandbox uses the same codecs to serve the streams.
//!
//! Module map:
//! - [`ws`]: a passive RFC 6455 frame reader (reassembly, unmasking, size bound) and an encoder.
//! - [`channel`]: the `*.channel.k8s.io` / `portforward.k8s.io` subprotocol names and the
//!   one-byte channel prefix (binary and base64 variants, v5 close-channel messages).
//! - [`spdy`]: SPDY/3.1 framing with zlib header compression (per direction dictionary state).
//! - [`session`]: the layer above: turns one direction of an upgraded connection into
//!   `(channel, bytes)` chunks for any transport kubectl uses; parses exit status and resizes.
#![forbid(unsafe_code)]

pub mod channel;
pub mod session;
pub mod spdy;
pub mod ws;

/// Which way bytes travel on an upgraded connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From kubectl (or another client) towards the API server.
    ClientToServer,
    /// From the API server (kubelet) back to the client.
    ServerToClient,
}

impl Direction {
    /// The peer that sends the bytes of this direction.
    pub fn sender(self) -> ws::Role {
        match self {
            Direction::ClientToServer => ws::Role::Client,
            Direction::ServerToClient => ws::Role::Server,
        }
    }
}

/// Why bytes could not be decoded. After an error a reader stays failed: the stream is out of
/// sync and nothing after the bad bytes can be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// RFC 6455 framing violated.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// A message or frame larger than the configured bound.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: usize,
    },
    /// The channel.k8s.io framing violated (bad base64, missing port prefix, ...).
    #[error("channel protocol: {0}")]
    Channel(String),
    /// SPDY/3.1 framing violated.
    #[error("spdy: {0}")]
    Spdy(String),
    /// The zlib header block could not be inflated or deflated.
    #[error("spdy header compression: {0}")]
    Compression(String),
    /// The session layer saw something out of place (e.g. data before its stream was opened).
    #[error("stream session: {0}")]
    Session(String),
    /// A previous call already failed.
    #[error("the stream failed earlier: {0}")]
    Failed(String),
}
