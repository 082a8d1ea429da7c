//! Masking free text as it streams (`pods/log`, proxied responses): a profile's `patterns`
//! are applied line by line, so a value is never split between two chunks unless a single line
//! is longer than [`MAX_LINE`].

use std::sync::Arc;

use bytes::BytesMut;

use super::{Profile, mask_text};

/// Longest line held back waiting for its end; a longer one is masked in pieces.
pub const MAX_LINE: usize = 64 * 1024;

/// Masks text one line at a time.
pub struct LineMasker {
    profile: Arc<Profile>,
    pending: BytesMut,
    masked: u64,
}

impl LineMasker {
    pub fn new(profile: Arc<Profile>) -> Self {
        Self {
            profile,
            pending: BytesMut::new(),
            masked: 0,
        }
    }

    /// Takes the next chunk; appends every complete line, masked, to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line = self.pending.split_to(end + 1);
            self.emit(&line, out);
        }
        if self.pending.len() > MAX_LINE {
            let piece = self.pending.split();
            self.emit(&piece, out);
        }
    }

    /// Flushes the last, unterminated line.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if !self.pending.is_empty() {
            let rest = self.pending.split();
            self.emit(&rest, out);
        }
    }

    /// Lines in which something was masked.
    pub fn masked_lines(&self) -> u64 {
        self.masked
    }

    fn emit(&mut self, line: &[u8], out: &mut BytesMut) {
        match mask_bytes(Some(&self.profile), line) {
            Some(masked) => {
                self.masked += 1;
                out.extend_from_slice(masked.as_bytes());
            }
            None => out.extend_from_slice(line),
        }
    }
}

/// Applies a profile's patterns to bytes of text: `Some` with the masked text if a pattern
/// matched. Bytes that are not UTF-8 are matched as replacement characters, so text is only
/// rewritten where something was masked.
pub fn mask_bytes(profile: Option<&Profile>, bytes: &[u8]) -> Option<String> {
    match mask_text(profile, &String::from_utf8_lossy(bytes)) {
        std::borrow::Cow::Owned(masked) => Some(masked),
        std::borrow::Cow::Borrowed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::ProfileSpec;

    fn profile() -> Arc<Profile> {
        let spec = ProfileSpec {
            patterns: vec!["(?i)password=\\S+".into()],
            ..ProfileSpec::default()
        };
        Arc::new(Profile::compile("logs", &spec).unwrap())
    }

    #[test]
    fn a_value_split_across_chunks_is_still_masked() {
        let text = b"starting\nconnecting with password=hunter2 now\ndone";
        for cut in 0..text.len() {
            let mut masker = LineMasker::new(profile());
            let mut out = BytesMut::new();
            masker.push(&text[..cut], &mut out);
            masker.push(&text[cut..], &mut out);
            masker.finish(&mut out);
            let out = String::from_utf8(out.to_vec()).unwrap();
            assert!(!out.contains("hunter2"), "cut at {cut}: {out}");
            assert!(out.starts_with("starting\nconnecting with ") && out.ends_with(" now\ndone"));
            assert_eq!(masker.masked_lines(), 1);
        }
    }

    #[test]
    fn lines_without_a_match_pass_byte_for_byte() {
        let mut masker = LineMasker::new(profile());
        let mut out = BytesMut::new();
        let binary = [0xff, 0xfe, b'\n', b'o', b'k'];
        masker.push(&binary, &mut out);
        masker.finish(&mut out);
        assert_eq!(&out[..], &binary);
        assert_eq!(masker.masked_lines(), 0);
    }
}
