//! Interactive sessions: `exec`, `attach` and `port-forward` upgrades (WebSocket or SPDY/3.1),
//! relayed byte for byte in both directions and recorded as `session.*` events.
//!
//! The relay never re-encodes: each direction's raw bytes go through unchanged while a copy is
//! decoded ([`gatehouse_streams::session::Decoder`]) into channel chunks for the record.
//! What the client sends (stdin, resizes, port-forward data towards the pod) is forwarded only
//! after its `session.data` events are acked, like a request; what the pod sends back is
//! recorded without holding it up. Any event that cannot be sent or acked ends the session:
//! an unrecorded session is not allowed to go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use gatehouse_bus::PendingAck;
use gatehouse_events::{
    Envelope, Payload, RequestInfo, SessionChannel, SessionData, SessionEnd, SessionEnded,
    SessionKind, SessionStarted, TerminalSize,
};
use gatehouse_streams::channel::Subprotocol;
use gatehouse_streams::session::{self as streams, Channel, Chunk, PortStream};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::mask::{self, Profile};
use crate::record::Recorder;

/// Read size of each direction; also the largest chunk of one event.
const READ_SIZE: usize = 32 * 1024;

/// What the upgrade request asked for, from its path and query.
#[derive(Clone, Debug)]
pub struct SessionRequest {
    pub kind: SessionKind,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub ports: Vec<u16>,
}

impl SessionRequest {
    /// Reads an exec / attach / portforward request; `None` for anything else.
    pub fn from_request(info: &RequestInfo, query: Option<&str>) -> Option<Self> {
        let kind = match (info.resource.as_str(), info.subresource.as_str()) {
            ("pods", "exec") => SessionKind::Exec,
            ("pods", "attach") => SessionKind::Attach,
            ("pods", "portforward") => SessionKind::Portforward,
            _ => return None,
        };
        let mut request = Self {
            kind,
            namespace: info.namespace.clone(),
            pod: info.name.clone(),
            container: None,
            command: Vec::new(),
            tty: false,
            stdin: false,
            ports: Vec::new(),
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "command" => request.command.push(value.into_owned()),
                "container" => request.container = Some(value.into_owned()),
                "tty" => request.tty = truthy(&value),
                "stdin" => request.stdin = truthy(&value),
                "ports" => request.ports.extend(
                    value
                        .split(',')
                        .filter_map(|p| p.trim().parse::<u16>().ok()),
                ),
                _ => {}
            }
        }
        Some(request)
    }
}

fn truthy(value: &str) -> bool {
    matches!(value, "true" | "1" | "True" | "TRUE")
}

/// The stream protocol the API server agreed to, from its 101 response.
pub fn negotiated_transport(
    response_headers: &http::HeaderMap,
) -> Option<(streams::Transport, &'static str, String)> {
    let header = |name: &str| {
        response_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let upgrade = header("upgrade")?.to_ascii_lowercase();
    if upgrade == "websocket" {
        // No subprotocol: the server speaks binary channels, as for `channel.k8s.io`.
        let protocol = header("sec-websocket-protocol").unwrap_or_default();
        let parsed = Subprotocol::parse(&protocol).unwrap_or(Subprotocol::V4Channel);
        Some((streams::Transport::WebSocket(parsed), "websocket", protocol))
    } else if upgrade.starts_with("spdy/3.1") {
        let protocol = header("x-stream-protocol-version").unwrap_or_default();
        let parsed = Subprotocol::parse(&protocol)?;
        Some((streams::Transport::Spdy(parsed), "spdy", protocol))
    } else {
        None
    }
}

/// Records one session's events, in order, with contiguous `seq`.
pub struct SessionLog {
    recorder: Recorder,
    session_id: String,
    request_id: String,
    started: Instant,
    profile: Option<Arc<Profile>>,
    state: Mutex<LogState>,
    /// Cancelled when an event could not be recorded: the relay stops.
    abort: CancellationToken,
}

#[derive(Default)]
struct LogState {
    seq: u64,
    offsets: HashMap<(SessionChannel, Option<u16>), u64>,
    /// The error channel's contents so far: a `metav1.Status` once complete.
    status: Vec<u8>,
}

/// Which way a chunk went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    FromClient,
    FromServer,
}

/// The error channel holds one small Status; more than this is not a Status.
const MAX_STATUS: usize = 64 * 1024;

impl SessionLog {
    /// Publishes `session.started` and waits for its ack: nothing is relayed before it.
    pub async fn start(
        recorder: Recorder,
        request_id: &str,
        principal: &str,
        request: &SessionRequest,
        transport: &str,
        protocol: &str,
        profile: Option<Arc<Profile>>,
    ) -> Result<Arc<Self>, gatehouse_bus::PublishError> {
        let session_id = ulid::Ulid::new().to_string();
        let event = Envelope::new(
            recorder.source(),
            &session_id,
            SessionStarted {
                session_id: session_id.clone(),
                request_id: request_id.to_owned(),
                kind: request.kind,
                transport: transport.to_owned(),
                protocol: protocol.to_owned(),
                principal: principal.to_owned(),
                namespace: request.namespace.clone(),
                pod: request.pod.clone(),
                container: request.container.clone(),
                // The command is what policy judged; it is recorded as given.
                command: request
                    .command
                    .iter()
                    .map(|word| mask::mask_text(profile.as_deref(), word).into_owned())
                    .collect(),
                tty: request.tty,
                stdin: request.stdin,
                ports: request.ports.clone(),
            },
        );
        let published = Instant::now();
        recorder.bus().publish(&event).await?;
        recorder.acked(SessionStarted::NAME, published);
        Ok(Arc::new(Self {
            recorder,
            session_id,
            request_id: request_id.to_owned(),
            started: Instant::now(),
            profile,
            state: Mutex::new(LogState::default()),
            abort: CancellationToken::new(),
        }))
    }

    pub fn id(&self) -> &str {
        &self.session_id
    }

    /// Sends one chunk's event; the returned ack says it is stored. `None`: nothing to record
    /// (an empty end-of-channel marker, or a channel the protocol does not define, which
    /// servers ignore).
    async fn chunk(
        &self,
        chunk: Chunk,
        way: Way,
    ) -> Result<Option<PendingAck>, gatehouse_bus::PublishError> {
        if chunk.data.is_empty() {
            return Ok(None);
        }
        let (channel, port) = match chunk.channel {
            Channel::Stdin => (SessionChannel::Stdin, None),
            Channel::Stdout => (SessionChannel::Stdout, None),
            Channel::Stderr => (SessionChannel::Stderr, None),
            Channel::Error => (SessionChannel::Error, None),
            Channel::Resize => (SessionChannel::Resize, None),
            Channel::Port { port, stream } => (
                match (stream, way) {
                    (PortStream::Error, _) => SessionChannel::PortError,
                    (PortStream::Data, Way::FromClient) => SessionChannel::PortIn,
                    (PortStream::Data, Way::FromServer) => SessionChannel::PortOut,
                },
                (port != 0).then_some(port),
            ),
            Channel::Unknown => {
                tracing::debug!(session_id = %self.session_id, "chunk on an undefined channel ignored, as servers do");
                return Ok(None);
            }
        };
        let (data, masked) = self.mask(channel, &chunk.data);
        let resize = (channel == SessionChannel::Resize)
            .then(|| streams::Resize::parse(&chunk.data))
            .flatten()
            .map(|r| TerminalSize {
                width: r.width,
                height: r.height,
            });
        let mut state = self.state.lock().await;
        if channel == SessionChannel::Error && state.status.len() < MAX_STATUS {
            state.status.extend_from_slice(&chunk.data);
        }
        let seq = state.seq;
        let offset = state.offsets.entry((channel, port)).or_default();
        let event = Envelope::new(
            self.recorder.source(),
            &self.session_id,
            SessionData {
                session_id: self.session_id.clone(),
                seq,
                at_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                channel,
                port,
                offset: *offset,
                data: base64::engine::general_purpose::STANDARD.encode(&data),
                masked,
                resize,
            },
        );
        // Sent while the lock is held, so stream order is `seq` order.
        let pending = self.recorder.bus().enqueue(&event).await?;
        *offset += chunk.data.len() as u64;
        state.seq += 1;
        Ok(Some(pending))
    }

    /// Masks text channels with the rule's profile. Port-forward bytes are an application's
    /// own protocol and are recorded as they are.
    fn mask(&self, channel: SessionChannel, data: &Bytes) -> (Bytes, u64) {
        if matches!(
            channel,
            SessionChannel::PortIn | SessionChannel::PortOut | SessionChannel::PortError
        ) {
            return (data.clone(), 0);
        }
        match mask::lines::mask_bytes(self.profile.as_deref(), data) {
            Some(masked) => (Bytes::from(masked), 1),
            None => (data.clone(), 0),
        }
    }

    /// Whether the error channel has carried a complete status.
    async fn has_status(&self) -> bool {
        let state = self.state.lock().await;
        !state.status.is_empty() && streams::exit_status(&state.status).is_some()
    }

    /// Ends a session whose connections could not be taken over.
    pub async fn abandon(&self, kind: SessionKind) -> SessionEnd {
        self.end(SessionEnd::Terminated, 0, 0, kind).await;
        SessionEnd::Terminated
    }

    async fn end(&self, end: SessionEnd, from_client: u64, from_upstream: u64, kind: SessionKind) {
        let state = self.state.lock().await;
        // Only an exec has an exit status, and only once its error channel said something or
        // the stream closed normally (an empty error channel is success).
        let status = (kind == SessionKind::Exec
            && (!state.status.is_empty() || end == SessionEnd::Closed))
            .then(|| streams::exit_status(&state.status))
            .flatten();
        let event = Envelope::new(
            self.recorder.source(),
            &self.session_id,
            SessionEnded {
                session_id: self.session_id.clone(),
                request_id: self.request_id.clone(),
                end,
                exit_code: status.as_ref().map(|s| s.code),
                message: status
                    .as_ref()
                    .filter(|s| !s.message.is_empty())
                    .map(|s| mask::mask_text(self.profile.as_deref(), &s.message).into_owned()),
                duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                chunks: state.seq,
                bytes_from_client: from_client,
                bytes_from_upstream: from_upstream,
            },
        );
        drop(state);
        let published = Instant::now();
        match self.recorder.bus().publish(&event).await {
            Ok(_) => self.recorder.acked(SessionEnded::NAME, published),
            Err(e) => {
                tracing::error!(session_id = %self.session_id, error = %e, "session.ended not acked")
            }
        }
    }
}

/// How one direction of the relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// The reading side closed.
    Eof,
    /// Reading or writing failed, or the direction was stopped after the other one ended.
    Broken,
    /// Recording failed; the relay was stopped.
    Unrecorded,
}

/// Once one direction has ended, how long the other may take to end on its own.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Relays an upgraded session both ways until either side ends, recording as it goes.
pub async fn relay(
    log: Arc<SessionLog>,
    kind: SessionKind,
    transport: streams::Transport,
    ports: &[u16],
    client: Upgraded,
    upstream: Upgraded,
) -> SessionEnd {
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let streams_kind = match kind {
        SessionKind::Exec => streams::Kind::Exec,
        SessionKind::Attach => streams::Kind::Attach,
        SessionKind::Portforward => streams::Kind::PortForward,
    };
    let (inbound, outbound) = streams::Decoder::pair(streams_kind, transport);
    let (inbound, outbound) = (inbound.with_ports(ports), outbound.with_ports(ports));
    let from_client = Arc::new(AtomicU64::new(0));
    let from_upstream = Arc::new(AtomicU64::new(0));

    let (acks, ack_watch) = ack_watcher(log.clone());
    let mut to_upstream = tokio::spawn(pump(
        log.clone(),
        inbound,
        Way::FromClient,
        client_read,
        upstream_write,
        from_client.clone(),
        None,
    ));
    let mut to_client = tokio::spawn(pump(
        log.clone(),
        outbound,
        Way::FromServer,
        upstream_read,
        client_write,
        from_upstream.clone(),
        Some(acks),
    ));
    // When one side is done the other gets a moment to finish on its own (a client reading
    // the last output, a server sending the exit status), then it is stopped.
    let (inbound, outbound) = tokio::select! {
        done = &mut to_upstream => (joined(done), within_grace(to_client).await),
        done = &mut to_client => (within_grace(to_upstream).await, joined(done)),
    };
    let _ = ack_watch.await;
    // An exec that delivered its exit status finished, whichever side hung up first.
    let finished = kind == SessionKind::Exec && log.has_status().await;
    let end = if inbound == Finish::Unrecorded
        || outbound == Finish::Unrecorded
        || log.abort.is_cancelled()
    {
        SessionEnd::Terminated
    } else if finished || outbound == Finish::Eof {
        SessionEnd::Closed
    } else if inbound == Finish::Eof || inbound == Finish::Broken {
        SessionEnd::ClientDisconnected
    } else {
        SessionEnd::UpstreamError
    };
    tracing::info!(
        session_id = %log.session_id,
        request_id = %log.request_id,
        end = ?end,
        "session ended"
    );
    log.end(
        end,
        from_client.load(Ordering::Relaxed),
        from_upstream.load(Ordering::Relaxed),
        kind,
    )
    .await;
    end
}

fn joined(result: Result<Finish, tokio::task::JoinError>) -> Finish {
    result.unwrap_or(Finish::Broken)
}

async fn within_grace(mut task: tokio::task::JoinHandle<Finish>) -> Finish {
    match tokio::time::timeout(GRACE, &mut task).await {
        Ok(result) => joined(result),
        Err(_) => {
            task.abort();
            Finish::Broken
        }
    }
}

/// One direction. From the client, chunks are recorded and acked before the bytes are
/// forwarded; from the API server, bytes are forwarded and their acks awaited by the watcher.
async fn pump(
    log: Arc<SessionLog>,
    mut decoder: streams::Decoder,
    way: Way,
    mut from: ReadHalf<TokioIo<Upgraded>>,
    mut to: WriteHalf<TokioIo<Upgraded>>,
    relayed: Arc<AtomicU64>,
    acks: Option<mpsc::UnboundedSender<PendingAck>>,
) -> Finish {
    let mut buffer = vec![0u8; READ_SIZE];
    let finish = loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) => break Finish::Eof,
                Ok(n) => n,
                Err(_) => break Finish::Broken,
            },
            () = log.abort.cancelled() => break Finish::Unrecorded,
        };
        let bytes = &buffer[..n];
        let chunks = match decoder.push(bytes) {
            Ok(chunks) => chunks,
            Err(e) => {
                tracing::warn!(session_id = %log.session_id, ?way, error = %e, "stream cannot be decoded for the record; ending the session");
                log.abort.cancel();
                break Finish::Unrecorded;
            }
        };
        let mut pending = Vec::new();
        for chunk in chunks {
            match log.chunk(chunk, way).await {
                Ok(ack) => pending.extend(ack),
                Err(e) => {
                    tracing::error!(session_id = %log.session_id, ?way, error = %e, "session data not recorded; ending the session");
                    log.abort.cancel();
                    return Finish::Unrecorded;
                }
            }
        }
        match &acks {
            Some(watcher) => {
                for ack in pending {
                    let _ = watcher.send(ack);
                }
            }
            None => {
                for ack in pending {
                    if let Err(e) = ack.wait().await {
                        tracing::error!(session_id = %log.session_id, error = %e, "session input not acked; ending the session");
                        log.abort.cancel();
                        return Finish::Unrecorded;
                    }
                    log.recorder.acked_untimed(SessionData::NAME);
                }
            }
        }
        if to.write_all(bytes).await.is_err() {
            break Finish::Broken;
        }
        relayed.fetch_add(n as u64, Ordering::Relaxed);
    };
    let _ = to.shutdown().await;
    finish
}

/// Awaits output acks in order; a failure stops the session.
fn ack_watcher(
    log: Arc<SessionLog>,
) -> (
    mpsc::UnboundedSender<PendingAck>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingAck>();
    let task = tokio::spawn(async move {
        while let Some(ack) = rx.recv().await {
            match ack.wait().await {
                Ok(_) => log.recorder.acked_untimed(SessionData::NAME),
                Err(e) => {
                    tracing::error!(session_id = %log.session_id, error = %e, "session output not acked; ending the session");
                    log.abort.cancel();
                    return;
                }
            }
        }
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(subresource: &str) -> RequestInfo {
        RequestInfo {
            is_resource_request: true,
            path: format!("/api/v1/namespaces/apps/pods/web-0/{subresource}"),
            verb: subresource.to_owned(),
            api_prefix: "api".into(),
            api_version: "v1".into(),
            namespace: "apps".into(),
            resource: "pods".into(),
            subresource: subresource.into(),
            name: "web-0".into(),
            ..RequestInfo::default()
        }
    }

    #[test]
    fn exec_parameters_are_read_in_order() {
        let request = SessionRequest::from_request(
            &info("exec"),
            Some("command=sh&command=-c&command=echo%20hi&container=app&stdin=true&tty=true&stdout=true"),
        )
        .unwrap();
        assert_eq!(request.kind, SessionKind::Exec);
        assert_eq!(request.command, ["sh", "-c", "echo hi"]);
        assert_eq!(request.container.as_deref(), Some("app"));
        assert!(request.tty && request.stdin);
    }

    #[test]
    fn port_forward_ports_are_read() {
        let request =
            SessionRequest::from_request(&info("portforward"), Some("ports=8080,9090&ports=53"))
                .unwrap();
        assert_eq!(request.ports, [8080, 9090, 53]);
        assert!(SessionRequest::from_request(&info("log"), None).is_none());
    }
}
