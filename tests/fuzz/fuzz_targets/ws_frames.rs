//! The passive WebSocket frame reader of `services/streams` (`ws::FrameReader`), and the
//! channel framing inside its messages (`channel::decode`), as the proxy reads one direction of
//! an exec / attach / port-forward connection.
//!
//! Input: byte 0 picks the sender (bit 0: client or server) and the message bound (bits 1-2);
//! byte 1 seeds how the rest is cut into pushes; the rest is the byte stream.
//!
//! Invariants:
//! - it never panics;
//! - memory is bounded: after every push, what the reader holds back is at most one message's
//!   bound plus one frame header and one control frame, and no message exceeds the bound;
//! - how the bytes are cut into pushes does not change what is read (TCP may cut anywhere);
//! - text messages are UTF-8, control payloads at most 125 bytes;
//! - every message read re-encodes (masked for a client) to a frame that reads back as the same
//!   message, and re-encoding that gives the same bytes (the encoder is canonical);
//! - every channel message re-encodes, in every subprotocol that read it, to itself.
#![no_main]

use gatehouse_streams::channel::{self, ChannelMessage, Subprotocol};
use gatehouse_streams::ws::{FrameReader, Message, Role};
use libfuzzer_sys::fuzz_target;

const BOUNDS: [usize; 4] = [64, 1024, 70_000, 125];

/// Reads `bytes` in pushes cut by `seed`: the messages, and whether it failed.
fn read(role: Role, max: usize, bytes: &[u8], seed: u8) -> (Vec<Message>, bool) {
    let mut reader = FrameReader::new(role).with_max_message(max);
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut size = usize::from(seed).max(1);
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        size = size * 7 % 251 + 1;
        match reader.push(piece) {
            Ok(messages) => out.extend(messages),
            Err(_) => {
                // A failed reader stays failed.
                assert!(reader.push(b"\x81\x00").is_err());
                return (out, true);
            }
        }
        assert!(
            reader.buffered() <= max + 14 + 125 + 14,
            "{} bytes held back with a bound of {max}",
            reader.buffered()
        );
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, stream @ ..] = data else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let max = BOUNDS[usize::from(mode >> 1) & 3];
    let (messages, failed) = read(role, max, stream, *seed);
    let (whole, whole_failed) = read(role, max, stream, 255);
    assert_eq!(
        failed, whole_failed,
        "the cut changed whether the stream fails"
    );
    if !failed {
        assert_eq!(messages, whole, "the cut changed what was read");
    }

    let mask = (role == Role::Client).then_some([0x12, 0x34, 0x56, 0x78]);
    for message in &messages {
        match message {
            Message::Text(t) => assert!(std::str::from_utf8(t).is_ok()),
            Message::Binary(b) => assert!(b.len() <= max),
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
            Message::Close { reason, .. } => assert!(reason.len() <= 123),
        }
        let encoded = message.encode(mask);
        let mut reader = FrameReader::new(role).with_max_message(max);
        let back = reader
            .push(&encoded)
            .expect("a re-encoded message reads back");
        assert_eq!(
            back,
            std::slice::from_ref(message),
            "decode ∘ encode is not the identity"
        );
        assert_eq!(back[0].encode(mask), encoded, "encoding is not stable");
        assert_eq!(reader.buffered(), 0);

        for protocol in Subprotocol::ALL
            .into_iter()
            .filter(|p| p.is_channel_framed())
        {
            let Ok(Some(decoded)) = channel::decode(protocol, message) else {
                continue;
            };
            let again = match &decoded {
                ChannelMessage::Data { channel, payload } => {
                    channel::encode(protocol, *channel, payload)
                }
                ChannelMessage::Close { channel } => channel::encode_close(*channel),
            };
            assert_eq!(
                channel::decode(protocol, &again).expect("a re-encoded channel message decodes"),
                Some(decoded),
                "{protocol}: decode ∘ encode is not the identity"
            );
        }
    }
});
