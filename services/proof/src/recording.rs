//! A session's recording (asciicast v2) rebuilt from its `session.*` events alone, byte for
//! byte as `schemas/bundle.md` (*Recordings*) specifies, so a bundle's `recordings/<id>.cast`
//! is checked against the signed events rather than trusted.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

pub const SESSION_STARTED: &str = "dev.gatehouse.session.started.v1";
pub const SESSION_DATA: &str = "dev.gatehouse.session.data.v1";

/// Terminal size until the session's first resize.
const DEFAULT_SIZE: (u64, u64) = (80, 24);

#[derive(Deserialize)]
struct Started {
    data: StartedData,
}

#[derive(Deserialize)]
struct StartedData {
    principal: String,
    namespace: String,
    pod: String,
    #[serde(default)]
    command: Vec<String>,
}

#[derive(Deserialize)]
struct Data {
    data: Chunk,
}

#[derive(Deserialize)]
struct Chunk {
    seq: u64,
    at_ms: f64,
    channel: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    resize: Option<Size>,
}

#[derive(Deserialize)]
struct Size {
    width: u64,
    height: u64,
}

/// The session id a bundle may name a recording after: `[A-Za-z0-9_-]{1,84}`, so that
/// `recordings/<id>.cast` fits a ustar name field (100 bytes) without a prefix.
pub fn valid_session_id(id: &str) -> bool {
    (1..=84).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The recording of one session from its events: `started` is its `session.started` event and
/// `data` its `session.data` events in the order they appear (in the bundle, in the ledger).
/// Fails, naming the event, when an event is not what its type says.
pub fn asciicast(started: &[u8], data: &[&[u8]]) -> Result<Vec<u8>, String> {
    let started: Started = serde_json::from_slice(started)
        .map_err(|e| format!("its session.started event is malformed: {e}"))?;
    let mut chunks = Vec::with_capacity(data.len());
    for (n, event) in data.iter().enumerate() {
        let chunk: Data = serde_json::from_slice(event)
            .map_err(|e| format!("its session.data event number {} is malformed: {e}", n + 1))?;
        chunks.push(chunk.data);
    }
    // Stable: chunks with the same seq keep their order.
    chunks.sort_by_key(|c| c.seq);

    let s = &started.data;
    let mut title = format!("{} {}/{}", s.principal, s.namespace, s.pod);
    for word in &s.command {
        title.push(' ');
        title.push_str(word);
    }
    let (width, height) = chunks
        .iter()
        .find_map(|c| {
            (c.channel == "resize")
                .then_some(c.resize.as_ref())
                .flatten()
        })
        .map_or(DEFAULT_SIZE, |r| (r.width, r.height));
    let mut out = format!(
        "{{\"height\":{height},\"title\":{},\"version\":2,\"width\":{width}}}\n",
        json_string(&title)
    );
    let mut pending: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    for chunk in &chunks {
        let at = format!("{:.6}", chunk.at_ms / 1000.0);
        let code = match chunk.channel.as_str() {
            "stdout" | "stderr" => "o",
            "stdin" => "i",
            "resize" => {
                if let Some(r) = &chunk.resize {
                    out.push_str(&format!("[{at},\"r\",\"{}x{}\"]\n", r.width, r.height));
                }
                continue;
            }
            _ => continue,
        };
        let bytes = STANDARD
            .decode(&chunk.data)
            .map_err(|_| format!("its session.data seq {} holds invalid base64", chunk.seq))?;
        let buffer = pending.entry(code).or_default();
        buffer.extend_from_slice(&bytes);
        let text = take_utf8(buffer);
        if !text.is_empty() {
            out.push_str(&format!("[{at},\"{code}\",{}]\n", json_string(&text)));
        }
    }
    let last = chunks.last().map_or_else(
        || format!("{:.6}", 0.0),
        |c| format!("{:.6}", c.at_ms / 1000.0),
    );
    for (code, rest) in pending {
        if !rest.is_empty() {
            let text = String::from_utf8_lossy(&rest);
            out.push_str(&format!("[{last},\"{code}\",{}]\n", json_string(&text)));
        }
    }
    Ok(out.into_bytes())
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Takes the longest valid UTF-8 prefix out of `buffer` (each maximal invalid subpart becomes
/// U+FFFD), leaving an incomplete trailing character for the next chunk (`gatehouse replay`
/// shares it).
pub fn take_utf8(buffer: &mut Vec<u8>) -> String {
    let mut text = String::new();
    loop {
        match std::str::from_utf8(buffer) {
            Ok(s) => {
                text.push_str(s);
                buffer.clear();
                return text;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                text.push_str(std::str::from_utf8(&buffer[..valid]).unwrap_or_default());
                match e.error_len() {
                    None => {
                        buffer.drain(..valid);
                        return text;
                    }
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        buffer.drain(..valid + bad);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_stitched() {
        let euro = "€".as_bytes();
        let mut buffer = vec![b'a', euro[0]];
        assert_eq!(take_utf8(&mut buffer), "a");
        buffer.extend_from_slice(&euro[1..]);
        assert_eq!(take_utf8(&mut buffer), "€");
        assert!(buffer.is_empty());
        let mut bad = vec![b'x', 0xff, b'y'];
        assert_eq!(take_utf8(&mut bad), "x\u{fffd}y");
    }

    #[test]
    fn a_recording_follows_the_events_in_seq_order_and_stitches_characters() {
        let started = br#"{"data":{"principal":"ci","namespace":"apps","pod":"web","command":["sh","-c","echo hi"]}}"#;
        let euro = STANDARD.encode("€".as_bytes());
        let (a, b) = (
            STANDARD.encode(&"€".as_bytes()[..1]),
            STANDARD.encode(&"€".as_bytes()[1..]),
        );
        let data = [
            format!(r#"{{"data":{{"seq":1,"at_ms":1500,"channel":"stdout","data":"{b}"}}}}"#),
            format!(r#"{{"data":{{"seq":0,"at_ms":1000,"channel":"stdout","data":"{a}"}}}}"#),
            format!(r#"{{"data":{{"seq":2,"at_ms":2000.25,"channel":"stdin","data":"{euro}"}}}}"#),
            r#"{"data":{"seq":3,"at_ms":2500,"channel":"resize","data":"","resize":{"width":100,"height":30}}}"#.to_owned(),
            r#"{"data":{"seq":4,"at_ms":3000,"channel":"stdout","data":"/w=="}}"#.to_owned(),
        ];
        let data: Vec<&[u8]> = data.iter().map(|d| d.as_bytes()).collect();
        let cast = String::from_utf8(asciicast(started, &data).unwrap()).unwrap();
        assert_eq!(
            cast,
            "{\"height\":30,\"title\":\"ci apps/web sh -c echo hi\",\"version\":2,\"width\":100}\n\
             [1.500000,\"o\",\"€\"]\n\
             [2.000250,\"i\",\"€\"]\n\
             [2.500000,\"r\",\"100x30\"]\n\
             [3.000000,\"o\",\"\u{fffd}\"]\n"
        );
        let bad = [br#"{"data":{"seq":0,"at_ms":1,"channel":"stdout","data":"!!"}}"#.as_slice()];
        assert!(asciicast(started, &bad).unwrap_err().contains("seq 0"));
    }
}
