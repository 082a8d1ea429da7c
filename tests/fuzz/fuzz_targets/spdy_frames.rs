//! The SPDY/3.1 frame reader of `services/streams` (`spdy::FrameReader`, with its per-direction
//! zlib header decompression), as the proxy reads one direction of a kubectl SPDY connection.
//!
//! Input: byte 0 seeds how the rest is cut into pushes (bits 0-6); with bit 7 set the rest is
//! the plain text of a header block, which the harness compresses (SPDY/3 dictionary) into a
//! SYN_STREAM, so mutations reach the header-block parser instead of breaking zlib; otherwise
//! the rest is the byte stream.
//!
//! Invariants:
//! - it never panics;
//! - memory is bounded: a frame longer than the bound is refused before it is buffered, and a
//!   header block that inflates past its bound is refused;
//! - how the bytes are cut into pushes does not change what is read;
//! - decode ∘ encode round-trips: the frames read, written in order by a `FrameWriter` (its own
//!   zlib stream), read back as the same frames; header names are lower-case and unique.
#![no_main]

use flate2::{Compress, Compression, FlushCompress};
use gatehouse_streams::spdy::{DICTIONARY, Frame, FrameReader, FrameWriter};
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
                assert!(
                    reader.push(&[0; 8]).is_err(),
                    "a failed reader stays failed"
                );
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

/// A SYN_STREAM (stream 1) whose header block is `plain`, compressed as kubectl would.
fn syn_stream(plain: &[u8]) -> Vec<u8> {
    let mut zlib = Compress::new(Compression::default(), true);
    zlib.set_dictionary(DICTIONARY).unwrap();
    let mut block = Vec::new();
    loop {
        block.reserve(plain.len() + 64);
        let rest = &plain[zlib.total_in() as usize..];
        zlib.compress_vec(rest, &mut block, FlushCompress::Sync)
            .unwrap();
        // Done when all is in and the flush had room to spare.
        if zlib.total_in() == plain.len() as u64 && block.len() < block.capacity() {
            break;
        }
    }
    let len = 10 + block.len();
    let mut frame = vec![0x80, 0x03, 0x00, 0x01, 0x00];
    frame.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&block);
    frame
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let seed = mode & 0x7F;
    let built;
    let stream = if mode & 0x80 != 0 {
        built = syn_stream(rest);
        &built[..]
    } else {
        rest
    };
    let (frames, failed) = read(stream, seed);
    let (whole, whole_failed) = read(stream, 255);
    assert_eq!(
        failed, whole_failed,
        "the cut changed whether the stream fails"
    );
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
                    assert!(
                        !names.contains(&name.as_str()),
                        "{name} twice in {headers:?}"
                    );
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
