//! Payloads of an interactive session: `kubectl exec`, `attach` and `port-forward`.
//!
//! A session is the upgraded connection of one request. Its events have the session id as
//! their `subject` and carry the request id, so they join the request's own events:
//! `session.started`, then `session.data` chunks in order (`seq` 0, 1, 2, … with no gaps), then
//! `session.ended`. Chunks hold bytes after masking.

use serde::{Deserialize, Serialize};

use crate::envelope::Payload;

/// What kind of stream the session is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Exec,
    Attach,
    Portforward,
}

/// `session.started`: the API server accepted the upgrade.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SessionStarted {
    /// ULID; the `subject` of every event of this session.
    pub session_id: String,
    pub request_id: String,
    pub kind: SessionKind,
    /// `websocket` or `spdy`.
    pub transport: String,
    /// The negotiated stream protocol, e.g. `v5.channel.k8s.io`.
    pub protocol: String,
    pub principal: String,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    /// The `command` parameters of an exec.
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    /// The ports of a port-forward.
    pub ports: Vec<u16>,
}

impl Payload for SessionStarted {
    const NAME: &'static str = "session.started";
}

/// The stream a chunk travelled on.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SessionChannel {
    Stdin,
    Stdout,
    Stderr,
    /// The status channel (exit status of an exec).
    Error,
    /// Terminal size changes.
    Resize,
    /// Port-forward data towards the pod.
    PortIn,
    /// Port-forward data from the pod.
    PortOut,
    /// Port-forward error stream.
    PortError,
}

/// A terminal size.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// `session.data`: one chunk of one channel.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionData {
    pub session_id: String,
    /// Position of this chunk in the session: 0, 1, 2, … without gaps.
    pub seq: u64,
    /// Milliseconds since the session started.
    pub at_ms: f64,
    pub channel: SessionChannel,
    /// The pod port of a port-forward chunk.
    pub port: Option<u16>,
    /// Bytes of this channel (and port) that came before this chunk.
    pub offset: u64,
    /// The chunk's bytes after masking, base64 (standard, padded).
    pub data: String,
    /// Values masked in this chunk.
    pub masked: u64,
    /// The new size, for `resize` chunks.
    pub resize: Option<TerminalSize>,
}

impl Payload for SessionData {
    const NAME: &'static str = "session.data";
}

/// How the session ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// Both sides closed normally.
    Closed,
    /// The client went away.
    ClientDisconnected,
    /// The API server's side broke.
    UpstreamError,
    /// Gatehouse ended it: a chunk's event could not be acked, or the stream could not be read.
    Terminated,
}

/// `session.ended`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionEnded {
    pub session_id: String,
    pub request_id: String,
    pub end: SessionEnd,
    /// The exit code of an exec, from its status channel.
    pub exit_code: Option<i32>,
    /// The status message, if the command failed.
    pub message: Option<String>,
    pub duration_ms: f64,
    /// How many `session.data` events were published.
    pub chunks: u64,
    /// Raw bytes relayed each way.
    pub bytes_from_client: u64,
    pub bytes_from_upstream: u64,
}

impl Payload for SessionEnded {
    const NAME: &'static str = "session.ended";
}
