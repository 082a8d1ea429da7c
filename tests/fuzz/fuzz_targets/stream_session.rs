//! Both directions of an exec / attach / port-forward connection through the session layer of
//! `services/streams` (`session::Decoder::pair`: WebSocket channels, SPDY/3.1, SPDY tunnelled
//! in WebSocket), then what the proxy reads out of the chunks: the exit status of the error
//! channel and the terminal sizes of the resize channel.
//!
//! Input: byte 0 picks kind and transport, byte 1 seeds the cuts, bytes 2-3 (big-endian) are
//! the length of the client→server bytes that follow; the rest is server→client. The two
//! directions are pushed interleaved, client first, as the proxy relays them.
//!
//! Invariants:
//! - it never panics;
//! - no amplification: the chunks of a direction never carry more bytes than it was fed;
//! - a decoder that failed stays failed.
#![no_main]

use gatehouse_streams::channel::Subprotocol;
use gatehouse_streams::session::{Channel, Decoder, Kind, ResizeReader, Transport, exit_status};
use libfuzzer_sys::fuzz_target;

struct Side {
    decoder: Decoder,
    fed: usize,
    out: usize,
    failed: bool,
    error: Vec<u8>,
    resize: ResizeReader,
}

impl Side {
    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.fed += bytes.len();
        match self.decoder.push(bytes) {
            Ok(chunks) => {
                assert!(!self.failed, "a failed decoder decoded again");
                for chunk in chunks {
                    self.out += chunk.data.len();
                    match chunk.channel {
                        // The proxy keeps at most 64 KiB of the error channel.
                        Channel::Error if self.error.len() < 64 << 10 => {
                            self.error.extend_from_slice(&chunk.data)
                        }
                        Channel::Resize => {
                            let _ = self.resize.push(&chunk.data);
                        }
                        _ => {}
                    }
                }
                assert!(
                    self.out <= self.fed,
                    "{} bytes out of {} in",
                    self.out,
                    self.fed
                );
            }
            Err(_) => self.failed = true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, hi, lo, rest @ ..] = data else {
        return;
    };
    let kind = [Kind::Exec, Kind::Attach, Kind::PortForward][usize::from(mode % 3)];
    let protocol = Subprotocol::ALL[usize::from(mode / 3) % Subprotocol::ALL.len()];
    let transport = if mode / 27 % 2 == 0 {
        Transport::WebSocket(protocol)
    } else {
        Transport::Spdy(protocol)
    };
    let split = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
    let (c2s, s2c) = rest.split_at(split);
    let (up, down) = Decoder::pair(kind, transport);
    let side = |decoder: Decoder| Side {
        decoder: decoder.with_ports(&[8080, 80]),
        fed: 0,
        out: 0,
        failed: false,
        error: Vec::new(),
        resize: ResizeReader::new(),
    };
    let (mut up, mut down) = (side(up), side(down));
    let (mut c, mut s) = (c2s, s2c);
    let mut size = usize::from(*seed).max(1);
    while !c.is_empty() || !s.is_empty() {
        let (piece, tail) = c.split_at(size.min(c.len()));
        up.push(piece);
        c = tail;
        let (piece, tail) = s.split_at(size.min(s.len()));
        down.push(piece);
        s = tail;
        size = size * 7 % 251 + 1;
    }
    let _ = exit_status(&down.error);
});
