//! A strict JSON tokenizer over a buffer that grows as chunks arrive.
//!
//! [`next`] returns one whole token or says more input is needed; it never hands out half a
//! token, so the engine can stop at any chunk boundary and resume at the same position. A long
//! string split over many chunks is not rescanned from its start each time: a [`StrHint`]
//! remembers how far the scan got.

/// The kinds of JSON token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    ObjStart,
    ObjEnd,
    ArrStart,
    ArrEnd,
    Colon,
    Comma,
    Str,
    Num,
    True,
    False,
    Null,
}

impl Tok {
    pub(crate) fn starts_value(self) -> bool {
        !matches!(self, Tok::ObjEnd | Tok::ArrEnd | Tok::Colon | Tok::Comma)
    }
}

/// One token: `buf[start..end]`. For strings the span includes the quotes, and `escaped` says
/// whether the text holds a backslash escape (so the raw bytes are not the value).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Token {
    pub(crate) kind: Tok,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) escaped: bool,
}

/// What [`next`] found.
#[derive(Debug)]
pub(crate) enum Lexed {
    Token(Token),
    /// The buffer ends inside a token.
    More,
    /// Only whitespace is left.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LexError {
    /// The input ended inside a token (only at end of input).
    Truncated(usize),
    /// Not JSON at this position.
    Bad(usize, &'static str),
}

/// How far the scan of an unfinished string got: resume there instead of at its start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StrHint {
    pub(crate) start: usize,
    scanned: usize,
    escaped: bool,
}

impl StrHint {
    /// Keeps the hint valid after `by` bytes are removed from the front of the buffer.
    pub(crate) fn shift(hint: &mut Option<StrHint>, by: usize) {
        if let Some(h) = hint {
            if h.start < by {
                *hint = None;
            } else {
                h.start -= by;
                h.scanned -= by;
            }
        }
    }
}

pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Bytes that end the fast scan of a string: the quote, a backslash, and control characters
/// (which JSON forbids raw inside strings).
static STOPS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The next token at or after `pos` (whitespace skipped). With `eof`, a token cut short is an
/// error instead of [`Lexed::More`].
pub(crate) fn next(
    buf: &[u8],
    mut pos: usize,
    eof: bool,
    hint: &mut Option<StrHint>,
) -> Result<Lexed, LexError> {
    while pos < buf.len() && is_ws(buf[pos]) {
        pos += 1;
    }
    let Some(&b) = buf.get(pos) else {
        return Ok(Lexed::End);
    };
    let single = |kind| {
        Ok(Lexed::Token(Token {
            kind,
            start: pos,
            end: pos + 1,
            escaped: false,
        }))
    };
    match b {
        b'{' => single(Tok::ObjStart),
        b'}' => single(Tok::ObjEnd),
        b'[' => single(Tok::ArrStart),
        b']' => single(Tok::ArrEnd),
        b':' => single(Tok::Colon),
        b',' => single(Tok::Comma),
        b'"' => string(buf, pos, eof, hint),
        b'-' | b'0'..=b'9' => number(buf, pos, eof),
        b't' => literal(buf, pos, eof, b"true", Tok::True),
        b'f' => literal(buf, pos, eof, b"false", Tok::False),
        b'n' => literal(buf, pos, eof, b"null", Tok::Null),
        _ => Err(LexError::Bad(pos, "unexpected byte")),
    }
}

fn more(eof: bool, at: usize) -> Result<Lexed, LexError> {
    if eof {
        Err(LexError::Truncated(at))
    } else {
        Ok(Lexed::More)
    }
}

fn string(
    buf: &[u8],
    start: usize,
    eof: bool,
    hint: &mut Option<StrHint>,
) -> Result<Lexed, LexError> {
    let (mut i, mut escaped) = match *hint {
        Some(h) if h.start == start => (h.scanned, h.escaped),
        _ => (start + 1, false),
    };
    loop {
        while i < buf.len() && !STOPS[buf[i] as usize] {
            i += 1;
        }
        let Some(&b) = buf.get(i) else {
            *hint = Some(StrHint {
                start,
                scanned: i,
                escaped,
            });
            return more(eof, buf.len());
        };
        match b {
            b'"' => {
                *hint = None;
                return Ok(Lexed::Token(Token {
                    kind: Tok::Str,
                    start,
                    end: i + 1,
                    escaped,
                }));
            }
            b'\\' => {
                escaped = true;
                let need = match buf.get(i + 1) {
                    None => 2,
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                    Some(b'u') => 6,
                    Some(_) => return Err(LexError::Bad(i, "invalid escape in a string")),
                };
                if i + need > buf.len() {
                    // Resume at the backslash, so the escape is checked whole.
                    *hint = Some(StrHint {
                        start,
                        scanned: i,
                        escaped,
                    });
                    return more(eof, buf.len());
                }
                if need == 6 && !buf[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) {
                    return Err(LexError::Bad(i, "invalid \\u escape in a string"));
                }
                i += need;
            }
            _ => return Err(LexError::Bad(i, "control character in a string")),
        }
    }
}

fn number(buf: &[u8], start: usize, eof: bool) -> Result<Lexed, LexError> {
    let mut end = start;
    while end < buf.len() && matches!(buf[end], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
        end += 1;
    }
    if end == buf.len() && !eof {
        // The number may go on in the next chunk.
        return Ok(Lexed::More);
    }
    if !valid_number(&buf[start..end]) {
        return Err(LexError::Bad(start, "invalid number"));
    }
    Ok(Lexed::Token(Token {
        kind: Tok::Num,
        start,
        end,
        escaped: false,
    }))
}

/// RFC 8259: `-? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?`
fn valid_number(s: &[u8]) -> bool {
    let digits = |mut i: usize| {
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i + 1),
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        let after = digits(i + 1);
        if after == i + 1 {
            return false;
        }
        i = after;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let after = digits(i);
        if after == i {
            return false;
        }
        i = after;
    }
    i == s.len()
}

fn literal(
    buf: &[u8],
    start: usize,
    eof: bool,
    word: &'static [u8],
    kind: Tok,
) -> Result<Lexed, LexError> {
    let have = &buf[start..buf.len().min(start + word.len())];
    if have != &word[..have.len()] {
        return Err(LexError::Bad(start, "unexpected byte"));
    }
    if have.len() < word.len() {
        return more(eof, buf.len());
    }
    Ok(Lexed::Token(Token {
        kind,
        start,
        end: start + word.len(),
        escaped: false,
    }))
}

/// The text of a string token (`raw` includes the quotes).
pub(crate) fn decode(raw: &[u8], escaped: bool) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    let inner = raw
        .get(1..raw.len().saturating_sub(1))
        .ok_or("string token too short")?;
    if !escaped {
        return std::str::from_utf8(inner)
            .map(std::borrow::Cow::Borrowed)
            .map_err(|_| "invalid UTF-8 in a string");
    }
    serde_json::from_slice::<String>(raw)
        .map(std::borrow::Cow::Owned)
        .map_err(|_| "invalid string (bad escape or UTF-8)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<(Tok, String)>, LexError> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut hint = None;
        loop {
            match next(input, pos, true, &mut hint)? {
                Lexed::Token(t) => {
                    out.push((
                        t.kind,
                        String::from_utf8_lossy(&input[t.start..t.end]).into_owned(),
                    ));
                    pos = t.end;
                }
                Lexed::End => return Ok(out),
                Lexed::More => unreachable!("eof given"),
            }
        }
    }

    #[test]
    fn tokens_of_a_document() {
        let toks = all(br#" {"a\"b": [1, -2.5e+3, true, false, null, "\u00e9"]} "#).unwrap();
        let kinds: Vec<Tok> = toks.iter().map(|t| t.0).collect();
        use Tok::*;
        assert_eq!(
            kinds,
            vec![
                ObjStart, Str, Colon, ArrStart, Num, Comma, Num, Comma, True, Comma, False, Comma,
                Null, Comma, Str, ArrEnd, ObjEnd
            ]
        );
        assert_eq!(toks[1].1, r#""a\"b""#);
        assert_eq!(toks[6].1, "-2.5e+3");
    }

    #[test]
    fn malformed_input_is_refused() {
        for bad in [
            &b"01"[..],
            b"1.",
            b"-",
            b"1e",
            b"tru",
            b"nul!",
            b"\"a\\x\"",
            b"\"\\u12g4\"",
            b"\"a\nb\"",
            b"\"open",
            b"k8s\x00",
        ] {
            assert!(all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_token_cut_by_the_buffer_end_asks_for_more() {
        let mut hint = None;
        for partial in [&b"\"abc"[..], b"\"ab\\", b"\"ab\\u00", b"12", b"tr", b"-"] {
            assert!(
                matches!(next(partial, 0, false, &mut hint), Ok(Lexed::More)),
                "{partial:?}"
            );
            hint = None;
        }
    }

    #[test]
    fn a_long_string_resumes_where_the_scan_stopped() {
        let mut hint = None;
        let mut buf = b"  \"abc\\".to_vec();
        assert!(matches!(next(&buf, 0, false, &mut hint), Ok(Lexed::More)));
        buf.extend_from_slice(b"n");
        buf.extend_from_slice(b"def\"");
        match next(&buf, 0, false, &mut hint).unwrap() {
            Lexed::Token(t) => {
                assert_eq!((t.start, t.end, t.escaped), (2, buf.len(), true));
            }
            other => panic!("{other:?}"),
        }
        assert!(hint.is_none());
    }

    #[test]
    fn strings_decode() {
        assert_eq!(decode(br#""plain""#, false).unwrap(), "plain");
        assert_eq!(decode(br#""a\nb\u00e9""#, true).unwrap(), "a\nb\u{e9}");
        assert!(decode(b"\"\xff\"", false).is_err());
    }

    #[test]
    fn number_grammar() {
        for good in ["0", "-0", "10", "1.5", "1e5", "1E-5", "-1.25e+10"] {
            assert!(valid_number(good.as_bytes()), "{good}");
        }
        for bad in ["", "-", "00", "1.", ".5", "1e", "1e+", "+1", "1-2"] {
            assert!(!valid_number(bad.as_bytes()), "{bad}");
        }
    }
}
