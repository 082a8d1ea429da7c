//! The Kubernetes stream subprotocols and the channel framing inside WebSocket messages.
//!
//! - [`Subprotocol`]: every name a client may offer, as a WebSocket subprotocol
//!   (`Sec-WebSocket-Protocol`) or as an SPDY `X-Stream-Protocol-Version`.
//! - [`decode`] / [`encode`]: one WebSocket message ⇄ one [`ChannelMessage`]. In the binary
//!   protocols the first byte of a message is the channel number; in the base64 ones it is the
//!   ASCII digit `'0' + channel` and the rest is standard base64.
//!
//! Channel numbers for exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize. For
//! WebSocket port-forward each requested port `i` (query `ports`, in order) gets data channel
//! `2i` and error channel `2i+1`; the server's first message on each carries the port as two
//! little-endian bytes (see [`crate::session`]). In `v5.channel.k8s.io` channel 255 is the
//! close signal: its one payload byte names the channel whose sender has finished (half-close,
//! e.g. stdin at EOF).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use crate::StreamError;
use crate::ws::Message;

/// The v5 close-channel number.
pub const CLOSE_CHANNEL: u8 = 255;

/// Exec/attach channel numbers.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// A stream protocol name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// `v5.channel.k8s.io`: v4 plus the close channel (255). WebSocket exec/attach, and the
    /// newest SPDY remote-command version kubectl offers.
    V5Channel,
    /// `v4.channel.k8s.io`: error channel carries a `metav1.Status`; also WebSocket port-forward.
    V4Channel,
    /// `v4.base64.channel.k8s.io`.
    V4Base64Channel,
    /// `v3.channel.k8s.io` (SPDY remote command: adds the resize stream).
    V3Channel,
    /// `v2.channel.k8s.io` (SPDY remote command).
    V2Channel,
    /// `channel.k8s.io`: the first version; the error channel carries plain text.
    Channel,
    /// `base64.channel.k8s.io`.
    Base64Channel,
    /// `portforward.k8s.io`: the SPDY port-forward protocol (streams with `port` headers).
    PortForward,
    /// `SPDY/3.1+portforward.k8s.io`: SPDY/3.1 port-forward tunneled inside WebSocket binary
    /// messages (kubectl ≥ 1.30 default for port-forward).
    SpdyTunnelPortForward,
}

impl Subprotocol {
    /// Every name, newest first.
    pub const ALL: [Subprotocol; 9] = [
        Subprotocol::V5Channel,
        Subprotocol::V4Channel,
        Subprotocol::V4Base64Channel,
        Subprotocol::V3Channel,
        Subprotocol::V2Channel,
        Subprotocol::Channel,
        Subprotocol::Base64Channel,
        Subprotocol::PortForward,
        Subprotocol::SpdyTunnelPortForward,
    ];

    /// The protocol with exactly this name (names are case-sensitive on the wire).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name.trim())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::V5Channel => "v5.channel.k8s.io",
            Subprotocol::V4Channel => "v4.channel.k8s.io",
            Subprotocol::V4Base64Channel => "v4.base64.channel.k8s.io",
            Subprotocol::V3Channel => "v3.channel.k8s.io",
            Subprotocol::V2Channel => "v2.channel.k8s.io",
            Subprotocol::Channel => "channel.k8s.io",
            Subprotocol::Base64Channel => "base64.channel.k8s.io",
            Subprotocol::PortForward => "portforward.k8s.io",
            Subprotocol::SpdyTunnelPortForward => "SPDY/3.1+portforward.k8s.io",
        }
    }

    /// Channel payloads are base64 text.
    pub fn is_base64(self) -> bool {
        matches!(
            self,
            Subprotocol::V4Base64Channel | Subprotocol::Base64Channel
        )
    }

    /// Channel 255 means "close channel N" rather than data.
    pub fn has_close_channel(self) -> bool {
        self == Subprotocol::V5Channel
    }

    /// The error channel/stream carries a `metav1.Status` (v4 and later) rather than text.
    pub fn error_is_status(self) -> bool {
        matches!(
            self,
            Subprotocol::V5Channel | Subprotocol::V4Channel | Subprotocol::V4Base64Channel
        )
    }

    /// The messages are framed with a channel byte (as opposed to SPDY bytes).
    pub fn is_channel_framed(self) -> bool {
        !matches!(
            self,
            Subprotocol::PortForward | Subprotocol::SpdyTunnelPortForward
        )
    }
}

impl std::fmt::Display for Subprotocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one data message of a channel protocol says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelMessage {
    Data {
        channel: u8,
        payload: Bytes,
    },
    /// v5: the sender will write no more on `channel`.
    Close {
        channel: u8,
    },
}

fn channel_err(msg: impl Into<String>) -> StreamError {
    StreamError::Channel(msg.into())
}

/// Decodes a data message; control messages (ping, pong, close) and empty messages give
/// `None` (the server ignores empty messages too). Both text and binary messages are accepted
/// in either codec, as the API server does.
pub fn decode(
    protocol: Subprotocol,
    message: &Message,
) -> Result<Option<ChannelMessage>, StreamError> {
    let raw = match message {
        Message::Binary(b) | Message::Text(b) => b,
        _ => return Ok(None),
    };
    let Some(&first) = raw.first() else {
        return Ok(None);
    };
    let (channel, payload) = if protocol.is_base64() {
        let channel = first
            .checked_sub(b'0')
            .ok_or_else(|| channel_err(format!("base64 channel byte {first:#x} below '0'")))?;
        let payload = STANDARD
            .decode(&raw[1..])
            .map_err(|e| channel_err(format!("channel {channel}: invalid base64: {e}")))?;
        (channel, Bytes::from(payload))
    } else {
        (first, raw.slice(1..))
    };
    if protocol.has_close_channel() && channel == CLOSE_CHANNEL {
        let &[closed] = &payload[..] else {
            return Err(channel_err(format!(
                "close-channel message with {} payload bytes (expected 1)",
                payload.len()
            )));
        };
        return Ok(Some(ChannelMessage::Close { channel: closed }));
    }
    Ok(Some(ChannelMessage::Data { channel, payload }))
}

/// The message carrying `payload` on `channel`: binary, or text for the base64 protocols.
/// There the channel is the byte `'0' + channel`; from channel 80 on that byte is not ASCII, so
/// the message goes binary (readers take either), never as the UTF-8 of another character.
pub fn encode(protocol: Subprotocol, channel: u8, payload: &[u8]) -> Message {
    if protocol.is_base64() {
        let mut out = Vec::with_capacity(1 + payload.len().div_ceil(3) * 4);
        out.push(b'0'.wrapping_add(channel));
        out.extend_from_slice(STANDARD.encode(payload).as_bytes());
        match String::from_utf8(out) {
            Ok(text) => Message::Text(Bytes::from(text)),
            Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
        }
    } else {
        let mut buf = Vec::with_capacity(payload.len() + 1);
        buf.push(channel);
        buf.extend_from_slice(payload);
        Message::Binary(Bytes::from(buf))
    }
}

/// v5: the message announcing that the sender has finished writing on `channel`.
pub fn encode_close(channel: u8) -> Message {
    Message::Binary(Bytes::from(vec![CLOSE_CHANNEL, channel]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for p in Subprotocol::ALL {
            assert_eq!(Subprotocol::parse(p.as_str()), Some(p));
        }
        assert_eq!(
            Subprotocol::parse("v4.channel.k8s.io"),
            Some(Subprotocol::V4Channel)
        );
        assert_eq!(
            Subprotocol::parse("SPDY/3.1+portforward.k8s.io"),
            Some(Subprotocol::SpdyTunnelPortForward)
        );
        assert_eq!(Subprotocol::parse("v6.channel.k8s.io"), None);
        assert_eq!(Subprotocol::parse("V4.CHANNEL.K8S.IO"), None);
        assert!(Subprotocol::V4Base64Channel.is_base64());
        assert!(!Subprotocol::V5Channel.is_base64());
        assert!(Subprotocol::V5Channel.has_close_channel());
        assert!(!Subprotocol::V4Channel.has_close_channel());
        assert!(!Subprotocol::Channel.error_is_status());
    }

    #[test]
    fn binary_messages_carry_the_channel_in_the_first_byte() {
        let m = Message::Binary(Bytes::from_static(b"\x01hello\n"));
        assert_eq!(
            decode(Subprotocol::V4Channel, &m).unwrap(),
            Some(ChannelMessage::Data {
                channel: 1,
                payload: Bytes::from_static(b"hello\n")
            })
        );
        assert_eq!(encode(Subprotocol::V4Channel, 1, b"hello\n"), m);
        assert_eq!(
            decode(Subprotocol::V4Channel, &Message::Binary(Bytes::new())).unwrap(),
            None
        );
        assert_eq!(
            decode(Subprotocol::V4Channel, &Message::Ping(Bytes::new())).unwrap(),
            None
        );
    }

    #[test]
    fn base64_messages_use_an_ascii_digit_and_standard_base64() {
        // "hello\n" in standard base64 is "aGVsbG8K".
        let m = encode(Subprotocol::V4Base64Channel, 2, b"hello\n");
        assert_eq!(m, Message::Text(Bytes::from_static(b"2aGVsbG8K")));
        assert_eq!(
            decode(Subprotocol::Base64Channel, &m).unwrap(),
            Some(ChannelMessage::Data {
                channel: 2,
                payload: Bytes::from_static(b"hello\n")
            })
        );
        let bad = Message::Text(Bytes::from_static(b"1!!!"));
        assert!(decode(Subprotocol::V4Base64Channel, &bad).is_err());
        let below = Message::Text(Bytes::from_static(b" aGk="));
        assert!(decode(Subprotocol::V4Base64Channel, &below).is_err());
    }

    /// Found by fuzzing (tests/fuzz, ws_frames): channel 146 was encoded as the two UTF-8
    /// bytes of U+00C2 and read back as channel 147 with broken base64.
    #[test]
    fn every_channel_a_base64_message_can_name_round_trips() {
        for channel in 0..=(u8::MAX - b'0') {
            let m = encode(Subprotocol::V4Base64Channel, channel, b"hi");
            assert_eq!(
                decode(Subprotocol::V4Base64Channel, &m).unwrap(),
                Some(ChannelMessage::Data {
                    channel,
                    payload: Bytes::from_static(b"hi")
                }),
                "{m:?}"
            );
            assert_eq!(matches!(m, Message::Text(_)), channel < 80);
        }
    }

    #[test]
    fn channel_255_closes_a_channel_only_in_v5() {
        let close = encode_close(STDIN);
        assert_eq!(
            decode(Subprotocol::V5Channel, &close).unwrap(),
            Some(ChannelMessage::Close { channel: 0 })
        );
        assert_eq!(
            decode(Subprotocol::V4Channel, &close).unwrap(),
            Some(ChannelMessage::Data {
                channel: 255,
                payload: Bytes::from_static(b"\x00")
            })
        );
        let bad = Message::Binary(Bytes::from_static(b"\xff\x00\x01"));
        assert!(decode(Subprotocol::V5Channel, &bad).is_err());
    }
}
