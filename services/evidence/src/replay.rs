//! `gatehouse replay SESSION_ID --data-dir DIR [--asciicast FILE]`: a recorded exec, attach or
//! port-forward session, read back from the evidence ledger.
//!
//! The ledger is opened read-only (safe while `gatehouse evidence` runs) and scanned for the
//! session's events and the request that opened it. The transcript is the masked bytes the
//! proxy recorded; chunks are checked to be contiguous (`seq` 0, 1, 2, …) so a replay never
//! silently skips part of a session.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::Ledger;
use anyhow::{Context, Result, bail};
use base64::Engine;
use gatehouse_events::{
    Envelope, RequestReceived, SessionChannel, SessionData, SessionEnded, SessionStarted,
    envelope::Payload,
};
use gatehouse_proof::recording::take_utf8;
use serde::Deserialize;
use serde_json::json;

/// Terminal size assumed until the session's first resize.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// Everything the ledger holds about one session.
#[derive(Debug)]
pub struct Recording {
    pub started: Envelope<SessionStarted>,
    pub request: Option<RequestReceived>,
    /// Chunks in `seq` order.
    pub chunks: Vec<SessionData>,
    pub ended: Option<SessionEnded>,
    /// `seq` numbers that should be there and are not.
    pub missing: Vec<u64>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    subject: String,
}

/// Reads a session's events from the ledger in `data_dir`.
pub fn load(data_dir: &Path, session_id: &str) -> Result<Recording> {
    let ledger = Ledger::open_read_only(data_dir)?;
    let mut started: Option<Envelope<SessionStarted>> = None;
    let mut chunks = BTreeMap::new();
    let mut ended = None;
    let mut requests: BTreeMap<String, RequestReceived> = BTreeMap::new();
    let started_type = SessionStarted::event_type();
    let data_type = SessionData::event_type();
    let ended_type = SessionEnded::event_type();
    let received_type = RequestReceived::event_type();
    for stored in ledger.entries(0)? {
        let stored = stored?;
        let Ok(entry) = crate::entry::Entry::decode(&stored.encoding) else {
            continue;
        };
        let Ok(head) = serde_json::from_slice::<Head>(&entry.event) else {
            continue;
        };
        if head.kind == received_type {
            // The session's request comes before it; keep requests until we know which one.
            if started.is_none()
                && let Ok(event) = serde_json::from_slice::<Envelope<RequestReceived>>(&entry.event)
                && matches!(
                    event.data.request.verb.as_str(),
                    "exec" | "attach" | "portforward"
                )
            {
                requests.insert(head.subject, event.data);
            }
            continue;
        }
        if head.subject != session_id {
            continue;
        }
        if head.kind == started_type {
            started = Some(serde_json::from_slice(&entry.event).with_context(|| {
                format!("ledger entry {} is not a session.started", entry.index)
            })?);
        } else if head.kind == data_type {
            let event: Envelope<SessionData> = serde_json::from_slice(&entry.event)
                .with_context(|| format!("ledger entry {} is not a session.data", entry.index))?;
            chunks.insert(event.data.seq, event.data);
        } else if head.kind == ended_type {
            let event: Envelope<SessionEnded> = serde_json::from_slice(&entry.event)
                .with_context(|| format!("ledger entry {} is not a session.ended", entry.index))?;
            ended = Some(event.data);
        }
    }
    let Some(started) = started else {
        bail!(
            "no session {session_id} in the ledger at {} (is the id right, and has the evidence service caught up?)",
            ledger.path().display()
        );
    };
    let request = requests.remove(&started.data.request_id);
    let expected = ended
        .as_ref()
        .map(|e: &SessionEnded| e.chunks)
        .unwrap_or_else(|| chunks.keys().next_back().map(|last| last + 1).unwrap_or(0));
    let missing = (0..expected)
        .filter(|seq| !chunks.contains_key(seq))
        .collect();
    Ok(Recording {
        started,
        request,
        chunks: chunks.into_values().collect(),
        ended,
        missing,
    })
}

/// What to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Also show what was typed (stdin).
    pub input: bool,
}

/// Prints a header and the transcript to `out`. Returns false if chunks are missing.
pub fn print(recording: &Recording, options: ReplayOptions, out: &mut dyn Write) -> Result<bool> {
    let s = &recording.started.data;
    writeln!(
        out,
        "# session {} ({:?} over {} {})",
        s.session_id, s.kind, s.transport, s.protocol
    )?;
    let who = match &recording.request {
        Some(r) => match &r.identity {
            Some(i) => format!(
                "{} (owner {}, team {})",
                i.principal,
                i.owner.as_deref().unwrap_or("-"),
                i.team.as_deref().unwrap_or("-")
            ),
            None => s.principal.clone(),
        },
        None => s.principal.clone(),
    };
    writeln!(out, "# by {who} at {}", recording.started.time)?;
    let container = s
        .container
        .as_deref()
        .map(|c| format!(" container {c}"))
        .unwrap_or_default();
    writeln!(out, "# pod {}/{}{container}", s.namespace, s.pod)?;
    if !s.command.is_empty() {
        writeln!(out, "# command {}", shell_words(&s.command))?;
    }
    if !s.ports.is_empty() {
        let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
        writeln!(out, "# ports {}", ports.join(", "))?;
    }
    writeln!(
        out,
        "# tty {}, stdin {}, request {}",
        s.tty, s.stdin, s.request_id
    )?;
    writeln!(out, "# ---")?;
    let mut port_bytes: BTreeMap<(u16, &'static str), u64> = BTreeMap::new();
    for chunk in &recording.chunks {
        let bytes = decode(chunk)?;
        match chunk.channel {
            SessionChannel::Stdout | SessionChannel::Stderr => out.write_all(&bytes)?,
            SessionChannel::Stdin if options.input => out.write_all(&bytes)?,
            SessionChannel::PortIn | SessionChannel::PortOut | SessionChannel::PortError => {
                let direction = match chunk.channel {
                    SessionChannel::PortIn => "to the pod",
                    SessionChannel::PortOut => "from the pod",
                    _ => "error stream",
                };
                *port_bytes
                    .entry((chunk.port.unwrap_or(0), direction))
                    .or_default() += bytes.len() as u64;
            }
            _ => {}
        }
    }
    out.flush()?;
    writeln!(out)?;
    writeln!(out, "# ---")?;
    for ((port, direction), n) in &port_bytes {
        writeln!(out, "# port {port}: {n} bytes {direction}")?;
    }
    match &recording.ended {
        Some(e) => {
            let exit = e
                .exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default();
            writeln!(
                out,
                "# ended {:?} after {:.1}s{exit}; {} chunks, {} bytes from the client, {} from the pod",
                e.end,
                e.duration_ms / 1000.0,
                e.chunks,
                e.bytes_from_client,
                e.bytes_from_upstream
            )?;
        }
        None => writeln!(
            out,
            "# no session.ended recorded (still open, or the proxy stopped)"
        )?,
    }
    if !recording.missing.is_empty() {
        writeln!(out, "# MISSING chunks: {:?}", recording.missing)?;
    }
    Ok(recording.missing.is_empty())
}

/// Writes the session as an asciicast v2 file: a header line, then `[time, code, data]` lines
/// (`o` output, `i` input, `r` resize).
pub fn asciicast(recording: &Recording, options: ReplayOptions, out: &mut dyn Write) -> Result<()> {
    let s = &recording.started.data;
    let (width, height) = recording
        .chunks
        .iter()
        .find_map(|c| c.resize.map(|r| (r.width, r.height)))
        .unwrap_or(DEFAULT_SIZE);
    let timestamp = time::OffsetDateTime::parse(
        &recording.started.time,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| t.unix_timestamp())
    .unwrap_or(0);
    let title = format!(
        "{} {}/{} {}",
        s.principal,
        s.namespace,
        s.pod,
        shell_words(&s.command)
    );
    let header = json!({
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": timestamp,
        "title": title.trim_end(),
        "env": { "TERM": "xterm-256color", "SHELL": "/bin/sh" },
    });
    writeln!(out, "{header}")?;
    // Output split mid-character across chunks is stitched back before it becomes a string.
    let mut pending: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    for chunk in &recording.chunks {
        let at = chunk.at_ms / 1000.0;
        let code = match chunk.channel {
            SessionChannel::Stdout | SessionChannel::Stderr => "o",
            SessionChannel::Stdin if options.input => "i",
            SessionChannel::Resize => {
                if let Some(r) = chunk.resize {
                    writeln!(
                        out,
                        "{}",
                        json!([at, "r", format!("{}x{}", r.width, r.height)])
                    )?;
                }
                continue;
            }
            _ => continue,
        };
        let buffer = pending.entry(code).or_default();
        buffer.extend_from_slice(&decode(chunk)?);
        let text = take_utf8(buffer);
        if !text.is_empty() {
            writeln!(out, "{}", json!([at, code, text]))?;
        }
    }
    for (code, rest) in pending {
        if !rest.is_empty() {
            let at = recording
                .chunks
                .last()
                .map(|c| c.at_ms / 1000.0)
                .unwrap_or(0.0);
            writeln!(out, "{}", json!([at, code, String::from_utf8_lossy(&rest)]))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn decode(chunk: &SessionData) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(&chunk.data)
        .with_context(|| format!("session.data seq {} holds invalid base64", chunk.seq))
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_reading() {
        let words = ["sh", "-c", "echo 'hi' there"].map(String::from);
        assert_eq!(shell_words(&words), r"sh -c 'echo '\''hi'\'' there'");
    }
}
