//! The SPDY/3.1 frame reader of `services/streams` (`spdy::FrameReader`, with its per-direction
//! zlib header decompression), as the proxy reads one direction of a kubectl SPDY connection.
//!
//! Input: byte 0 seeds how the rest is cut into pushes; the rest is the byte stream.
//!
//! Invariants:
//! - it never panics;
//! - memory is bounded: a frame longer than the bound is refused before it is buffered, and a
//!   header block that inflates past its bound is refused;
//! - how the bytes are cut into pushes does not change what is read;
//! - decode ∘ encode round-trips: the frames read, written in order by a `FrameWriter` (its own
//!   zlib stream), read back as the same frames; header names are lower-case and unique.
#![no_main]

use gatehouse_streams::spdy::{Frame, FrameReader, FrameWriter};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 64 << 10;
const MAX_HEADER_BLOCK: usize = 16 << 10;

fn reader() -> FrameReader {
    FrameReader::new()
        .with_max_frame(MAX_FRAME)
        .with_max_header_block(MAX_HEADER_BLOCK)
}

fn read(bytes: &[u8], seed: u8) -> (Vec<Frame>, bool) {
    let mut reader = reader();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut size = usize::from(seed).max(1);
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        size = size * 7 % 251 + 1;
        match reader.push(piece) {
            Ok(frames) => out.extend(frames),
            Err(_) => {
                assert!(reader.push(&[0; 8]).is_err(), "a failed reader stays failed");
                return (out, true);
            }
        }
        assert!(reader.buffered() < 8 + MAX_FRAME, "{}", reader.buffered());
    }
    (out, false)
}

fn headers(frame: &Frame) -> Option<&[(String, String)]> {
    match frame {
        Frame::SynStream { headers, .. }
        | Frame::SynReply { headers, .. }
        | Frame::Headers { headers, .. } => Some(headers),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let [seed, stream @ ..] = data else {
        return;
    };
    let (frames, failed) = read(stream, *seed);
    let (whole, whole_failed) = read(stream, 255);
    assert_eq!(failed, whole_failed, "the cut changed whether the stream fails");
    if !failed {
        assert_eq!(frames, whole, "the cut changed what was read");
    }

    let mut writer = FrameWriter::new();
    let mut encoded = Vec::new();
    for frame in &frames {
        if let Some(headers) = headers(frame) {
            let mut names: Vec<&str> = Vec::new();
            for (name, _) in headers {
                assert_eq!(name.to_ascii_lowercase(), *name, "{headers:?}");
                // Values of one name are NUL-separated on the wire, so a name appears in one
                // run; seen again after another name, it was sent twice.
                if names.last() != Some(&name.as_str()) {
                    assert!(!names.contains(&name.as_str()), "{name} twice in {headers:?}");
                    names.push(name);
                }
            }
        }
        encoded.extend_from_slice(&writer.encode(frame).expect("a frame read can be written"));
    }
    let mut back = FrameReader::new();
    let again = back.push(&encoded).expect("frames written read back");
    assert_eq!(again, frames, "decode ∘ encode is not the identity");
    assert_eq!(back.buffered(), 0);
});
