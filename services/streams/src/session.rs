//! One direction of an exec / attach / port-forward connection, decoded to channel chunks.
//!
//! - [`Decoder`]: bytes in (exactly as relayed, after the HTTP upgrade), [`Chunk`]s out, for
//!   every transport kubectl uses: WebSocket with a channel subprotocol, SPDY/3.1, and SPDY
//!   tunneled in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`).
//! - [`exit_status`]: the exit code from the error channel's `metav1.Status` (v4+).
//! - [`Resize`], [`ResizeReader`]: terminal size messages of the resize channel.
//!
//! SPDY streams are typed by the `streamtype` (and `port`) headers of the client's SYN_STREAM,
//! which only the client→server direction sees; use [`Decoder::pair`] so the server→client
//! decoder can name the streams too. Feed the client→server decoder *before* forwarding the
//! bytes upstream; server data for a stream not yet known is held (bounded) until it is.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::channel::{self, ChannelMessage, Subprotocol};
use crate::spdy::{self, Frame};
use crate::{Direction, StreamError, ws};

/// Which subresource the connection serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

/// How the connection was upgraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `Upgrade: websocket` with the negotiated `Sec-WebSocket-Protocol` (use
    /// [`Subprotocol::Channel`] when the response names none: the server then speaks binary
    /// channels with a plain-text error channel). [`Subprotocol::SpdyTunnelPortForward`] means
    /// SPDY frames inside binary messages.
    WebSocket(Subprotocol),
    /// `Upgrade: SPDY/3.1` with the negotiated `X-Stream-Protocol-Version`.
    Spdy(Subprotocol),
}

/// Which stream of a forwarded port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortStream {
    Data,
    Error,
}

/// The logical stream a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Stdin,
    Stdout,
    Stderr,
    /// Exec/attach error channel: a `metav1.Status` in v4+, see [`exit_status`].
    Error,
    /// Terminal size JSON, see [`Resize`].
    Resize,
    /// Port-forward. `port` is 0 when it cannot be known (client→server WebSocket data without
    /// the request's `ports` list, see [`Decoder::with_ports`]).
    Port {
        port: u16,
        stream: PortStream,
    },
    /// A channel number or stream type the protocol does not define (servers ignore them).
    Unknown,
}

/// Bytes on one channel. `end` marks the sender's last chunk on the channel (SPDY FIN,
/// v5 close-channel message); such a chunk may carry no data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub channel: Channel,
    pub data: Bytes,
    pub end: bool,
}

/// Server data held while the client's SYN_STREAM for its stream is not yet decoded.
const MAX_PENDING: usize = 4 << 20;

/// SPDY stream id → channel, shared by the two directions of a connection.
type StreamTable = Arc<Mutex<HashMap<u32, Channel>>>;

enum Inner {
    /// WebSocket with a channel.k8s.io-style subprotocol.
    Channels {
        ws: ws::FrameReader,
        protocol: Subprotocol,
        /// Port-forward, server→client: channels whose 2-byte port prefix has been read.
        learned_ports: HashMap<u8, u16>,
    },
    /// SPDY, directly or inside WebSocket binary messages.
    Spdy {
        tunnel: Option<ws::FrameReader>,
        spdy: Box<spdy::FrameReader>,
        table: StreamTable,
        pending: VecDeque<(u32, Bytes, bool)>,
        pending_bytes: usize,
    },
    Invalid(String),
}

/// Decodes one direction of one connection.
pub struct Decoder {
    kind: Kind,
    direction: Direction,
    ports: Vec<u16>,
    inner: Inner,
    failed: Option<StreamError>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("kind", &self.kind)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder on its own. For SPDY in the server→client direction it cannot type streams
    /// (that needs the client's SYN_STREAMs): use [`Decoder::pair`].
    pub fn new(kind: Kind, transport: Transport, direction: Direction) -> Self {
        Self::with_table(kind, transport, direction, StreamTable::default())
    }

    /// The (client→server, server→client) decoders of one connection, sharing SPDY state.
    pub fn pair(kind: Kind, transport: Transport) -> (Decoder, Decoder) {
        let table = StreamTable::default();
        (
            Self::with_table(kind, transport, Direction::ClientToServer, table.clone()),
            Self::with_table(kind, transport, Direction::ServerToClient, table),
        )
    }

    fn with_table(
        kind: Kind,
        transport: Transport,
        direction: Direction,
        table: StreamTable,
    ) -> Self {
        let spdy = |tunnel| Inner::Spdy {
            tunnel,
            spdy: Box::new(spdy::FrameReader::new()),
            table,
            pending: VecDeque::new(),
            pending_bytes: 0,
        };
        let inner = match transport {
            Transport::WebSocket(Subprotocol::SpdyTunnelPortForward) => {
                spdy(Some(ws::FrameReader::new(direction.sender())))
            }
            Transport::WebSocket(Subprotocol::PortForward) => {
                Inner::Invalid("portforward.k8s.io is an SPDY protocol, not a WebSocket one".into())
            }
            Transport::WebSocket(protocol) => Inner::Channels {
                ws: ws::FrameReader::new(direction.sender()),
                protocol,
                learned_ports: HashMap::new(),
            },
            Transport::Spdy(Subprotocol::SpdyTunnelPortForward) => {
                Inner::Invalid("SPDY/3.1+portforward.k8s.io is a WebSocket protocol".into())
            }
            Transport::Spdy(_) => spdy(None),
        };
        Self {
            kind,
            direction,
            ports: Vec::new(),
            inner,
            failed: None,
        }
    }

    /// The request's `ports` query values, in order: WebSocket port-forward maps channel `2i`
    /// and `2i+1` to `ports[i]` (the client's messages carry no port prefix).
    pub fn with_ports(mut self, ports: &[u16]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    /// Feeds the next bytes of this direction; returns the chunks they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Chunk>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(StreamError::Failed(e.to_string()));
        }
        let result = self.decode(bytes);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<Vec<Chunk>, StreamError> {
        let kind = self.kind;
        let direction = self.direction;
        let mut out = Vec::new();
        match &mut self.inner {
            Inner::Invalid(why) => return Err(StreamError::Session(why.clone())),
            Inner::Channels {
                ws,
                protocol,
                learned_ports,
            } => {
                for message in ws.push(bytes)? {
                    let Some(m) = channel::decode(*protocol, &message)? else {
                        continue;
                    };
                    let (id, data, end) = match m {
                        ChannelMessage::Data { channel, payload } => (channel, payload, false),
                        ChannelMessage::Close { channel } => (channel, Bytes::new(), true),
                    };
                    let (channel, data) = if kind == Kind::PortForward {
                        let mut data = data;
                        let port = if direction == Direction::ServerToClient {
                            match learned_ports.get(&id) {
                                Some(p) => *p,
                                None if end => 0,
                                None => {
                                    // The server opens each channel with the port, little-endian.
                                    let Some(prefix) = data.get(..2) else {
                                        return Err(StreamError::Channel(format!(
                                            "port-forward channel {id}: first message of {} bytes has no port prefix",
                                            data.len()
                                        )));
                                    };
                                    let port = u16::from_le_bytes([prefix[0], prefix[1]]);
                                    learned_ports.insert(id, port);
                                    data = data.slice(2..);
                                    port
                                }
                            }
                        } else {
                            self.ports
                                .get(usize::from(id / 2))
                                .copied()
                                .unwrap_or_default()
                        };
                        let stream = if id % 2 == 0 {
                            PortStream::Data
                        } else {
                            PortStream::Error
                        };
                        (Channel::Port { port, stream }, data)
                    } else {
                        (exec_channel(id), data)
                    };
                    if data.is_empty() && !end {
                        continue;
                    }
                    out.push(Chunk { channel, data, end });
                }
            }
            Inner::Spdy {
                tunnel,
                spdy,
                table,
                pending,
                pending_bytes,
            } => {
                let frames = match tunnel {
                    Some(ws) => {
                        let mut frames = Vec::new();
                        for message in ws.push(bytes)? {
                            match message {
                                ws::Message::Binary(b) => frames.extend(spdy.push(&b)?),
                                ws::Message::Text(_) => {
                                    return Err(StreamError::Session(
                                        "text message in an SPDY tunnel".into(),
                                    ));
                                }
                                _ => {}
                            }
                        }
                        frames
                    }
                    None => spdy.push(bytes)?,
                };
                let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
                // Held server data whose stream is now known goes first, in order.
                while let Some((id, _, _)) = pending.front() {
                    let Some(channel) = table.get(id).copied() else {
                        break;
                    };
                    if let Some((_, data, end)) = pending.pop_front() {
                        *pending_bytes -= data.len();
                        out.push(Chunk { channel, data, end });
                    }
                }
                for frame in frames {
                    let (id, data, end) = match frame {
                        Frame::SynStream {
                            stream_id,
                            fin,
                            headers,
                            ..
                        } => {
                            let channel = spdy_channel(kind, &headers)?;
                            table.insert(stream_id, channel);
                            if !fin {
                                continue;
                            }
                            (stream_id, Bytes::new(), true)
                        }
                        Frame::SynReply {
                            stream_id,
                            fin: true,
                            ..
                        }
                        | Frame::Headers {
                            stream_id,
                            fin: true,
                            ..
                        } => (stream_id, Bytes::new(), true),
                        Frame::Data {
                            stream_id,
                            fin,
                            data,
                        } => {
                            if data.is_empty() && !fin {
                                continue;
                            }
                            (stream_id, data, fin)
                        }
                        _ => continue,
                    };
                    match table.get(&id) {
                        Some(channel) if pending.is_empty() => out.push(Chunk {
                            channel: *channel,
                            data,
                            end,
                        }),
                        _ => {
                            *pending_bytes += data.len();
                            if *pending_bytes > MAX_PENDING {
                                return Err(StreamError::Session(format!(
                                    "more than {MAX_PENDING} bytes of data on SPDY streams that were never opened"
                                )));
                            }
                            pending.push_back((id, data, end));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn exec_channel(id: u8) -> Channel {
    match id {
        channel::STDIN => Channel::Stdin,
        channel::STDOUT => Channel::Stdout,
        channel::STDERR => Channel::Stderr,
        channel::ERROR => Channel::Error,
        channel::RESIZE => Channel::Resize,
        _ => Channel::Unknown,
    }
}

/// The channel a SYN_STREAM opens, from its `streamtype` (and for port-forward `port`) header.
fn spdy_channel(kind: Kind, headers: &spdy::Headers) -> Result<Channel, StreamError> {
    let stream_type = spdy::header(headers, "streamtype").unwrap_or_default();
    if kind == Kind::PortForward {
        let stream = match stream_type {
            "data" => PortStream::Data,
            "error" => PortStream::Error,
            _ => return Ok(Channel::Unknown),
        };
        let port = spdy::header(headers, "port")
            .unwrap_or_default()
            .parse::<u16>()
            .map_err(|_| {
                StreamError::Session(format!(
                    "port-forward {stream_type} stream without a valid port header"
                ))
            })?;
        return Ok(Channel::Port { port, stream });
    }
    Ok(match stream_type {
        "stdin" => Channel::Stdin,
        "stdout" => Channel::Stdout,
        "stderr" => Channel::Stderr,
        "error" => Channel::Error,
        "resize" => Channel::Resize,
        _ => Channel::Unknown,
    })
}

/// How a remote command ended, from the error channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// 0 on `Success`; the `ExitCode` cause for `NonZeroExitCode`; 1 for any other failure
    /// (what kubectl exits with when it reports the error).
    pub code: i32,
    /// The Status message (empty on success).
    pub message: String,
    /// The Status reason, e.g. `NonZeroExitCode`, `InternalError`; empty when absent.
    pub reason: String,
}

#[derive(Deserialize)]
struct StatusDoc {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    details: Option<StatusDetails>,
}

#[derive(Deserialize)]
struct StatusDetails {
    #[serde(default)]
    causes: Vec<StatusCause>,
}

#[derive(Deserialize)]
struct StatusCause {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// The exit status in a v4+ error channel's complete contents (a `metav1.Status`). An empty
/// channel means success, as client-go reads it. None when the bytes are not a Status (e.g.
/// the plain-text errors of pre-v4 protocols) or a `NonZeroExitCode` without a valid code.
pub fn exit_status(error_channel: &[u8]) -> Option<ExitStatus> {
    if error_channel.iter().all(u8::is_ascii_whitespace) {
        return Some(ExitStatus {
            code: 0,
            message: String::new(),
            reason: String::new(),
        });
    }
    let doc: StatusDoc = serde_json::from_slice(error_channel).ok()?;
    let code = match doc.status.as_str() {
        "Success" => 0,
        "Failure" if doc.reason == "NonZeroExitCode" => {
            let cause = doc
                .details
                .as_ref()?
                .causes
                .iter()
                .find(|c| c.reason == "ExitCode")?;
            // client-go parses it as an 8-bit unsigned number.
            i32::from(cause.message.trim().parse::<u8>().ok()?)
        }
        "Failure" => 1,
        _ => return None,
    };
    Some(ExitStatus {
        code,
        message: doc.message,
        reason: doc.reason,
    })
}

/// A terminal size message (`{"Width":80,"Height":24}`, Go field names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

impl Resize {
    /// One resize message.
    pub fn parse(bytes: &[u8]) -> Option<Resize> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn to_json(self) -> String {
        format!(r#"{{"Width":{},"Height":{}}}"#, self.width, self.height)
    }
}

/// Reads consecutive resize messages from a byte stream (the resize stream is a sequence of
/// JSON objects that may be split anywhere, as the kubelet's JSON decoder reads it).
#[derive(Debug, Default)]
pub struct ResizeReader {
    buf: Vec<u8>,
}

impl ResizeReader {
    /// A pending message larger than this is garbage.
    const MAX_PENDING: usize = 4096;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Resize>, StreamError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Resize>();
        loop {
            match stream.next() {
                Some(Ok(r)) => {
                    out.push(r);
                    consumed = stream.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    self.buf.clear();
                    return Err(StreamError::Session(format!("invalid resize message: {e}")));
                }
                None => {
                    consumed = stream.byte_offset();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > Self::MAX_PENDING {
            self.buf.clear();
            return Err(StreamError::Session(
                "resize message larger than 4096 bytes".into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::{FrameWriter, Headers};

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn chunk(channel: Channel, data: &'static [u8], end: bool) -> Chunk {
        Chunk {
            channel,
            data: Bytes::from_static(data),
            end,
        }
    }

    #[test]
    fn websocket_exec_v5_both_directions() {
        let t = Transport::WebSocket(Subprotocol::V5Channel);
        let mut up = Decoder::new(Kind::Exec, t, Direction::ClientToServer);
        let mut down = Decoder::new(Kind::Exec, t, Direction::ServerToClient);
        let mask = Some([1, 2, 3, 4]);
        let mut client = Vec::new();
        client.extend_from_slice(&channel::encode(Subprotocol::V5Channel, 0, b"ls\n").encode(mask));
        client.extend_from_slice(
            &channel::encode(Subprotocol::V5Channel, 4, br#"{"Width":80,"Height":24}"#)
                .encode(mask),
        );
        client.extend_from_slice(&channel::encode_close(0).encode(mask));
        assert_eq!(
            up.push(&client).unwrap(),
            [
                chunk(Channel::Stdin, b"ls\n", false),
                chunk(Channel::Resize, br#"{"Width":80,"Height":24}"#, false),
                chunk(Channel::Stdin, b"", true),
            ]
        );
        let mut server = Vec::new();
        for (ch, data) in [(1u8, &b"out\n"[..]), (2, b"err\n"), (3, b"{}")] {
            server
                .extend_from_slice(&channel::encode(Subprotocol::V5Channel, ch, data).encode(None));
        }
        server.extend_from_slice(
            &ws::Message::Close {
                code: Some(1000),
                reason: String::new(),
            }
            .encode(None),
        );
        let got: Vec<Chunk> = server
            .iter()
            .flat_map(|b| down.push(std::slice::from_ref(b)).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                chunk(Channel::Stdout, b"out\n", false),
                chunk(Channel::Stderr, b"err\n", false),
                chunk(Channel::Error, b"{}", false),
            ]
        );
    }

    #[test]
    fn websocket_base64_and_unknown_channels() {
        let t = Transport::WebSocket(Subprotocol::V4Base64Channel);
        let mut down = Decoder::new(Kind::Attach, t, Direction::ServerToClient);
        let mut bytes = channel::encode(Subprotocol::V4Base64Channel, 1, b"hi")
            .encode(None)
            .to_vec();
        bytes.extend_from_slice(
            &channel::encode(Subprotocol::V4Base64Channel, 9, b"?").encode(None),
        );
        assert_eq!(
            down.push(&bytes).unwrap(),
            [
                chunk(Channel::Stdout, b"hi", false),
                chunk(Channel::Unknown, b"?", false)
            ]
        );
    }

    #[test]
    fn websocket_port_forward_uses_the_port_prefix_from_the_server() {
        let t = Transport::WebSocket(Subprotocol::V4Channel);
        let mut down = Decoder::new(Kind::PortForward, t, Direction::ServerToClient);
        let mut server = Vec::new();
        // Port 8080 = 0x1f90, little-endian 0x90 0x1f; ports 8080 and 9090 (0x2382).
        for (ch, data) in [
            (0u8, &b"\x90\x1f"[..]),
            (1, b"\x90\x1f"),
            (2, b"\x82\x23"),
            (3, b"\x82\x23"),
            (0, b"HTTP/1.1 200 OK\r\n"),
            (2, b"pong"),
        ] {
            server
                .extend_from_slice(&channel::encode(Subprotocol::V4Channel, ch, data).encode(None));
        }
        let p = |port, stream| Channel::Port { port, stream };
        assert_eq!(
            down.push(&server).unwrap(),
            [
                chunk(p(8080, PortStream::Data), b"HTTP/1.1 200 OK\r\n", false),
                chunk(p(9090, PortStream::Data), b"pong", false),
            ]
        );
        let mut up =
            Decoder::new(Kind::PortForward, t, Direction::ClientToServer).with_ports(&[8080, 9090]);
        let msg = channel::encode(Subprotocol::V4Channel, 2, b"ping").encode(Some([9, 9, 9, 9]));
        assert_eq!(
            up.push(&msg).unwrap(),
            [chunk(p(9090, PortStream::Data), b"ping", false)]
        );
        // A first server message too short for the prefix is a protocol error.
        let mut down = Decoder::new(Kind::PortForward, t, Direction::ServerToClient);
        let short = channel::encode(Subprotocol::V4Channel, 0, b"\x90").encode(None);
        assert!(down.push(&short).is_err());
    }

    fn spdy_exec_bytes() -> (Vec<u8>, Vec<u8>) {
        let mut cw = FrameWriter::new();
        let mut sw = FrameWriter::new();
        let mut client = Vec::new();
        let mut server = Vec::new();
        let streams = [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")];
        for (id, t) in streams {
            client.extend_from_slice(
                &cw.encode(&Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    fin: false,
                    unidirectional: false,
                    headers: h(&[("streamtype", t)]),
                })
                .unwrap(),
            );
            server.extend_from_slice(
                &sw.encode(&Frame::SynReply {
                    stream_id: id,
                    fin: false,
                    headers: vec![],
                })
                .unwrap(),
            );
        }
        for (id, fin, data) in [(3, false, &b"echo hi\n"[..]), (3, true, b"")] {
            client.extend_from_slice(
                &cw.encode(&Frame::Data {
                    stream_id: id,
                    fin,
                    data: Bytes::from_static(data),
                })
                .unwrap(),
            );
        }
        for (id, fin, data) in [
            (5, false, &b"hi\n"[..]),
            (5, true, b""),
            (7, true, b"warn\n"),
            (1, true, br#"{"status":"Success"}"#),
        ] {
            server.extend_from_slice(
                &sw.encode(&Frame::Data {
                    stream_id: id,
                    fin,
                    data: Bytes::from_static(data),
                })
                .unwrap(),
            );
        }
        (client, server)
    }

    #[test]
    fn spdy_exec_pair_types_server_streams_from_client_syn_streams() {
        let (client, server) = spdy_exec_bytes();
        let (mut up, mut down) = Decoder::pair(Kind::Exec, Transport::Spdy(Subprotocol::V4Channel));
        assert_eq!(
            up.push(&client).unwrap(),
            [
                chunk(Channel::Stdin, b"echo hi\n", false),
                chunk(Channel::Stdin, b"", true),
            ]
        );
        assert_eq!(
            down.push(&server).unwrap(),
            [
                chunk(Channel::Stdout, b"hi\n", false),
                chunk(Channel::Stdout, b"", true),
                chunk(Channel::Stderr, b"warn\n", true),
                chunk(Channel::Error, br#"{"status":"Success"}"#, true),
            ]
        );
    }

    #[test]
    fn spdy_server_data_waits_for_its_syn_stream() {
        let (client, server) = spdy_exec_bytes();
        let (mut up, mut down) = Decoder::pair(Kind::Exec, Transport::Spdy(Subprotocol::V5Channel));
        // The server direction is decoded first: nothing can be named yet.
        assert_eq!(down.push(&server).unwrap(), []);
        up.push(&client).unwrap();
        let released = down.push(&[]).unwrap();
        assert_eq!(released.len(), 4, "{released:?}");
        assert_eq!(released[0], chunk(Channel::Stdout, b"hi\n", false));
    }

    #[test]
    fn spdy_port_forward_inside_websocket_tunnel() {
        let t = Transport::WebSocket(Subprotocol::SpdyTunnelPortForward);
        let (mut up, mut down) = Decoder::pair(Kind::PortForward, t);
        let mut cw = FrameWriter::new();
        let mut spdy_bytes = Vec::new();
        for (id, t) in [(1, "error"), (3, "data")] {
            spdy_bytes.extend_from_slice(
                &cw.encode(&Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    fin: false,
                    unidirectional: false,
                    headers: h(&[("streamtype", t), ("port", "5432"), ("requestid", "0")]),
                })
                .unwrap(),
            );
        }
        spdy_bytes.extend_from_slice(
            &cw.encode(&Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"GET /"),
            })
            .unwrap(),
        );
        // The tunnel cuts the SPDY byte stream at arbitrary points.
        let mut wire = Vec::new();
        for piece in spdy_bytes.chunks(7) {
            wire.extend_from_slice(
                &ws::Message::Binary(Bytes::copy_from_slice(piece)).encode(Some([5, 6, 7, 8])),
            );
        }
        let data = Channel::Port {
            port: 5432,
            stream: PortStream::Data,
        };
        assert_eq!(up.push(&wire).unwrap(), [chunk(data, b"GET /", false)]);
        let mut sw = FrameWriter::new();
        let reply = sw
            .encode(&Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"connection refused"),
            })
            .unwrap();
        let wire = ws::Message::Binary(reply).encode(None);
        assert_eq!(
            down.push(&wire).unwrap(),
            [chunk(
                Channel::Port {
                    port: 5432,
                    stream: PortStream::Error
                },
                b"connection refused",
                true
            )]
        );
    }

    #[test]
    fn invalid_transport_combinations_fail() {
        let mut d = Decoder::new(
            Kind::PortForward,
            Transport::WebSocket(Subprotocol::PortForward),
            Direction::ClientToServer,
        );
        assert!(d.push(b"x").is_err());
    }

    #[test]
    fn exit_status_reads_kubelet_statuses() {
        assert_eq!(
            exit_status(br#"{"metadata":{},"status":"Success"}"#),
            Some(ExitStatus {
                code: 0,
                message: String::new(),
                reason: String::new()
            })
        );
        let failure = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        let s = exit_status(failure).unwrap();
        assert_eq!(s.code, 3);
        assert_eq!(s.reason, "NonZeroExitCode");
        assert!(s.message.contains("exit code 3"));
        let internal = br#"{"status":"Failure","message":"Internal error occurred: error executing command in container","reason":"InternalError","code":500}"#;
        assert_eq!(exit_status(internal).unwrap().code, 1);
        assert_eq!(exit_status(b"").unwrap().code, 0);
        assert_eq!(exit_status(b"plain text error from v1"), None);
        let bad_code = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"300"}]}}"#;
        assert_eq!(exit_status(bad_code), None);
    }

    #[test]
    fn resize_messages_parse_singly_and_as_a_stream() {
        assert_eq!(
            Resize::parse(br#"{"Width":120,"Height":40}"#),
            Some(Resize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(Resize::parse(b"{}"), None);
        let mut r = ResizeReader::new();
        let stream = br#"{"Width":80,"Height":24}{"Width":100,"Height":30}"#;
        let (a, b) = stream.split_at(30);
        assert_eq!(
            r.push(a).unwrap(),
            [Resize {
                width: 80,
                height: 24
            }]
        );
        assert_eq!(
            r.push(b).unwrap(),
            [Resize {
                width: 100,
                height: 30
            }]
        );
        assert!(r.push(b"nope").is_err());
        assert_eq!(
            Resize::parse(
                Resize {
                    width: 1,
                    height: 2
                }
                .to_json()
                .as_bytes()
            ),
            Some(Resize {
                width: 1,
                height: 2
            })
        );
    }
}
