//! RFC 6455 WebSocket framing, read passively from a raw byte stream.
//!
//! - [`FrameReader`]: bytes of one direction in, whole [`Message`]s out. Reassembles fragmented
//!   messages, unmasks client frames, lets control frames interleave with fragments, and bounds
//!   the size of a message.
//! - [`Message::encode`]: the inverse, one unfragmented frame (used by tests and servers that
//!   write frames themselves).
//!
//! No extension is negotiated by Kubernetes (no permessage-deflate), so frames with reserved
//! bits set are errors.

use bytes::{Buf, Bytes, BytesMut};

use crate::StreamError;

/// The peer that sent the frames a reader sees. Clients must mask every frame, servers must
/// not mask any (RFC 6455 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
}

/// One complete WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Valid UTF-8.
    Text(Bytes),
    Binary(Bytes),
    Close {
        code: Option<u16>,
        reason: String,
    },
    Ping(Bytes),
    Pong(Bytes),
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

fn ws_err(msg: impl Into<String>) -> StreamError {
    StreamError::WebSocket(msg.into())
}

/// Reads the frames of one direction of a WebSocket connection.
#[derive(Debug)]
pub struct FrameReader {
    role: Role,
    max_message: usize,
    buf: BytesMut,
    /// The data message being reassembled: its opcode and the payload so far.
    partial: Option<(u8, BytesMut)>,
    closed: bool,
    failed: Option<StreamError>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    header_len: usize,
}

impl FrameReader {
    /// 16 MiB: far above what kubectl or the kubelet put in one message (32 KiB reads).
    pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

    /// A reader for frames sent by `role`.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            max_message: Self::DEFAULT_MAX_MESSAGE,
            buf: BytesMut::new(),
            partial: None,
            closed: false,
            failed: None,
        }
    }

    /// Bounds the size of one (reassembled) message; a larger one is an error.
    pub fn with_max_message(mut self, max: usize) -> Self {
        self.max_message = max;
        self
    }

    /// Whether a Close message has been read.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes held back because they do not yet make a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |(_, p)| p.len())
    }

    /// Feeds the next bytes of the stream; returns the messages they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Message>, StreamError> {
        if let Some(e) = &self.failed {
            return Err(StreamError::Failed(e.to_string()));
        }
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match self.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => return Ok(out),
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.buf.clear();
                    self.partial = None;
                    return Err(e);
                }
            }
        }
    }

    fn parse_header(&self) -> Result<Option<Header>, StreamError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(ws_err(
                "reserved bits set in a frame header (no extension was negotiated)",
            ));
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut pos) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let len = u64::from_be_bytes(n);
                if len >> 63 != 0 {
                    return Err(ws_err("frame length has its most significant bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if b.len() < pos + 4 {
                return Ok(None);
            }
            let m = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len,
            header_len: pos,
        }))
    }

    fn next_message(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            let Some(h) = self.parse_header()? else {
                return Ok(None);
            };
            match (self.role, h.mask.is_some()) {
                (Role::Client, false) => return Err(ws_err("client frame is not masked")),
                (Role::Server, true) => return Err(ws_err("server frame is masked")),
                _ => {}
            }
            let control = h.opcode & 0x8 != 0;
            if control {
                if !h.fin {
                    return Err(ws_err("fragmented control frame"));
                }
                if h.len > MAX_CONTROL_PAYLOAD {
                    return Err(ws_err(format!(
                        "control frame payload of {} bytes (at most 125)",
                        h.len
                    )));
                }
            }
            // Check the bound before buffering the payload, so a huge length cannot make us
            // hold more than one message's worth of bytes.
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
            let total = if control { h.len } else { so_far + h.len };
            if total > self.max_message as u64 {
                return Err(StreamError::TooLarge {
                    what: "websocket message",
                    size: total,
                    limit: self.max_message,
                });
            }
            // `total` fits in usize: it is at most max_message.
            let len = h.len as usize;
            if self.buf.len() < h.header_len + len {
                return Ok(None);
            }
            if self.closed {
                return Err(ws_err("frame after a close frame"));
            }
            self.buf.advance(h.header_len);
            let mut payload = self.buf.split_to(len);
            if let Some(mask) = h.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            match h.opcode {
                OP_CLOSE => {
                    self.closed = true;
                    return Ok(Some(close_message(payload.freeze())?));
                }
                OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong(payload.freeze()))),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(ws_err(
                            "new data frame while a fragmented message is unfinished",
                        ));
                    }
                    if h.fin {
                        return data_message(h.opcode, payload.freeze()).map(Some);
                    }
                    self.partial = Some((h.opcode, payload));
                }
                OP_CONTINUATION => {
                    let Some((opcode, mut acc)) = self.partial.take() else {
                        return Err(ws_err("continuation frame without a message to continue"));
                    };
                    acc.extend_from_slice(&payload);
                    if h.fin {
                        return data_message(opcode, acc.freeze()).map(Some);
                    }
                    self.partial = Some((opcode, acc));
                }
                other => return Err(ws_err(format!("reserved opcode {other:#x}"))),
            }
        }
    }
}

fn data_message(opcode: u8, payload: Bytes) -> Result<Message, StreamError> {
    if opcode == OP_TEXT {
        if std::str::from_utf8(&payload).is_err() {
            return Err(ws_err("text message is not valid UTF-8"));
        }
        Ok(Message::Text(payload))
    } else {
        Ok(Message::Binary(payload))
    }
}

fn close_message(payload: Bytes) -> Result<Message, StreamError> {
    match payload.len() {
        0 => Ok(Message::Close {
            code: None,
            reason: String::new(),
        }),
        1 => Err(ws_err("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| ws_err("close reason is not valid UTF-8"))?
                .to_owned();
            Ok(Message::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

impl Message {
    /// One final (unfragmented) frame carrying this message; masked with `mask` when given
    /// (clients must mask, servers must not).
    pub fn encode(&self, mask: Option<[u8; 4]>) -> Bytes {
        let (opcode, payload): (u8, Bytes) = match self {
            Message::Text(p) => (OP_TEXT, p.clone()),
            Message::Binary(p) => (OP_BINARY, p.clone()),
            Message::Ping(p) => (OP_PING, p.clone()),
            Message::Pong(p) => (OP_PONG, p.clone()),
            Message::Close { code, reason } => {
                let mut p = Vec::new();
                if let Some(code) = code {
                    p.extend_from_slice(&code.to_be_bytes());
                    p.extend_from_slice(reason.as_bytes());
                }
                (OP_CLOSE, Bytes::from(p))
            }
        };
        encode_frame(true, opcode, &payload, mask)
    }
}

/// One frame with the given FIN bit and opcode (no validation of the combination).
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 14);
    out.extend_from_slice(&[if fin { 0x80 } else { 0 } | (opcode & 0x0F)]);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.extend_from_slice(&[mask_bit | n as u8]),
        n if n <= usize::from(u16::MAX) => {
            out.extend_from_slice(&[mask_bit | 126]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[mask_bit | 127]);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(reader: &mut FrameReader, bytes: &[u8]) -> Message {
        let mut msgs = reader.push(bytes).expect("frame");
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        msgs.remove(0)
    }

    // RFC 6455 §5.7 examples.
    const UNMASKED_HELLO: &[u8] = &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const MASKED_HELLO: &[u8] = &[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc_examples_single_frames() {
        let mut server = FrameReader::new(Role::Server);
        assert_eq!(
            one(&mut server, UNMASKED_HELLO),
            Message::Text(Bytes::from_static(b"Hello"))
        );
        let mut client = FrameReader::new(Role::Client);
        assert_eq!(
            one(&mut client, MASKED_HELLO),
            Message::Text(Bytes::from_static(b"Hello"))
        );
        // Unmasked ping, masked pong.
        assert_eq!(
            one(&mut server, &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]),
            Message::Ping(Bytes::from_static(b"Hello"))
        );
        assert_eq!(
            one(
                &mut client,
                &[
                    0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
                ]
            ),
            Message::Pong(Bytes::from_static(b"Hello"))
        );
    }

    #[test]
    fn rfc_example_fragmented_hello_with_interleaved_ping() {
        let mut server = FrameReader::new(Role::Server);
        assert!(
            server
                .push(&[0x01, 0x03, 0x48, 0x65, 0x6c])
                .unwrap()
                .is_empty()
        );
        // A control frame in the middle of a fragmented message is delivered at once.
        assert_eq!(one(&mut server, &[0x89, 0x00]), Message::Ping(Bytes::new()));
        assert_eq!(
            one(&mut server, &[0x80, 0x02, 0x6c, 0x6f]),
            Message::Text(Bytes::from_static(b"Hello"))
        );
    }

    #[test]
    fn rfc_example_lengths_16_and_64_bit() {
        let body: Vec<u8> = (0..=255u8).collect();
        let mut frame = vec![0x82, 0x7E, 0x01, 0x00];
        frame.extend_from_slice(&body);
        let mut server = FrameReader::new(Role::Server);
        assert_eq!(
            one(&mut server, &frame),
            Message::Binary(Bytes::from(body.clone()))
        );
        let big = vec![7u8; 65536];
        let mut frame = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        frame.extend_from_slice(&big);
        assert_eq!(one(&mut server, &frame), Message::Binary(Bytes::from(big)));
    }

    #[test]
    fn byte_at_a_time_gives_the_same_messages() {
        let mut stream = Vec::new();
        stream.extend_from_slice(MASKED_HELLO);
        stream.extend_from_slice(
            &Message::Binary(Bytes::from_static(b"\x01out")).encode(Some([1, 2, 3, 4])),
        );
        stream.extend_from_slice(
            &Message::Close {
                code: Some(1000),
                reason: "bye".into(),
            }
            .encode(Some([9, 8, 7, 6])),
        );
        let mut reader = FrameReader::new(Role::Client);
        let mut got = Vec::new();
        for b in &stream {
            got.extend(reader.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(
            got,
            [
                Message::Text(Bytes::from_static(b"Hello")),
                Message::Binary(Bytes::from_static(b"\x01out")),
                Message::Close {
                    code: Some(1000),
                    reason: "bye".into()
                },
            ]
        );
        assert!(reader.is_closed());
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn masking_rules_follow_the_role() {
        let err = FrameReader::new(Role::Client)
            .push(UNMASKED_HELLO)
            .unwrap_err();
        assert!(err.to_string().contains("not masked"), "{err}");
        let err = FrameReader::new(Role::Server)
            .push(MASKED_HELLO)
            .unwrap_err();
        assert!(err.to_string().contains("masked"), "{err}");
    }

    #[test]
    fn message_bound_applies_to_reassembled_messages_and_before_buffering() {
        let mut r = FrameReader::new(Role::Server).with_max_message(8);
        assert!(
            r.push(&encode_frame(false, OP_BINARY, b"12345", None))
                .unwrap()
                .is_empty()
        );
        let err = r
            .push(&encode_frame(true, OP_CONTINUATION, b"6789", None))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StreamError::TooLarge {
                    size: 9,
                    limit: 8,
                    ..
                }
            ),
            "{err}"
        );
        // Failed readers stay failed.
        assert!(matches!(
            r.push(UNMASKED_HELLO),
            Err(StreamError::Failed(_))
        ));
        // A header announcing 2^40 bytes fails before any payload arrives.
        let mut r = FrameReader::new(Role::Server);
        let err = r.push(&[0x82, 0x7F, 0, 0, 1, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(matches!(err, StreamError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn protocol_violations_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x80, 0x00], "continuation"),
            (&[0xC2, 0x00], "reserved bits"),
            (&[0x83, 0x00], "reserved opcode"),
            (&[0x09, 0x00], "fragmented control"),
            (&[0x81, 0x02, 0xff, 0xfe], "UTF-8"),
            (&[0x88, 0x01, 0x03], "one-byte"),
        ];
        for (bytes, want) in cases {
            let err = FrameReader::new(Role::Server).push(bytes).unwrap_err();
            assert!(err.to_string().contains(want), "{bytes:?}: {err}");
        }
        let mut long_ping = vec![0x89, 126, 0, 126];
        long_ping.extend_from_slice(&[0; 126]);
        let err = FrameReader::new(Role::Server).push(&long_ping).unwrap_err();
        assert!(err.to_string().contains("control frame payload"), "{err}");
        // Two data messages may not interleave.
        let mut r = FrameReader::new(Role::Server);
        let err = r.push(&[0x01, 0x01, b'a', 0x82, 0x01, b'b']).unwrap_err();
        assert!(err.to_string().contains("unfinished"), "{err}");
        // Nothing may follow a close frame.
        let mut r = FrameReader::new(Role::Server);
        let err = r.push(&[0x88, 0x00, 0x81, 0x00]).unwrap_err();
        assert!(err.to_string().contains("after a close"), "{err}");
    }

    #[test]
    fn close_without_code_and_encode_round_trip() {
        let mut r = FrameReader::new(Role::Server);
        assert_eq!(
            one(&mut r, &[0x88, 0x00]),
            Message::Close {
                code: None,
                reason: String::new()
            }
        );
        let big = Message::Binary(Bytes::from(vec![3u8; 70_000]));
        let mut r = FrameReader::new(Role::Client);
        assert_eq!(
            one(&mut r, &big.encode(Some([0xde, 0xad, 0xbe, 0xef]))),
            big
        );
        assert_eq!(
            &Message::Text(Bytes::from_static(b"Hello")).encode(None)[..],
            UNMASKED_HELLO
        );
        assert_eq!(
            &Message::Text(Bytes::from_static(b"Hello")).encode(Some([0x37, 0xfa, 0x21, 0x3d]))[..],
            MASKED_HELLO
        );
    }
}
