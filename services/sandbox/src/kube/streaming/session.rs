//! Exec/attach sessions over either transport, and the WebSocket tunnel for SPDY.
//!
//! A [`Handler`] (the process side) gets [`Streams`]: stdin and resize from the client, and an
//! [`Output`] for stdout/stderr. When it returns its [`Outcome`], the driver sends everything
//! still queued, then the status on the error channel exactly as the kubelet writes it (v4+:
//! `metav1.Status` JSON; older versions: the error text, nothing on success), then closes.
//! If the client goes away first, the handler is dropped (which kills what it runs).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gatehouse_streams::channel::{self, ChannelMessage, Subprotocol};
use gatehouse_streams::session::{Resize, ResizeReader};
use gatehouse_streams::ws;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Options;
use super::spdy_conn::{self, Incoming};

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    Success,
    /// The process exited non-zero; `command` is its argv.
    ExitCode {
        code: i32,
        command: Vec<String>,
    },
    /// It could not run at all (kube's InternalError), e.g. no such executable.
    Internal(String),
}

impl Outcome {
    /// The `metav1.Status` the kubelet writes on the v4+ error channel.
    pub fn status(&self) -> Value {
        match self {
            Outcome::Success => json!({"metadata": {}, "status": "Success"}),
            Outcome::ExitCode { code, command } => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Internal(err) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {err}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": err}]},
                "code": 500,
            }),
        }
    }

    /// The bytes for the error channel of `protocol` (None: write nothing).
    fn error_channel(&self, protocol: Subprotocol) -> Option<Bytes> {
        if protocol.error_is_status() {
            return Some(Bytes::from(self.status().to_string()));
        }
        match self {
            Outcome::Success => None,
            other => other.status()["message"]
                .as_str()
                .map(|m| Bytes::from(m.to_owned())),
        }
    }
}

/// Where stdout/stderr go; cheap to clone. Channels the client did not ask for are dropped.
#[derive(Clone)]
pub(crate) struct Output {
    tx: mpsc::Sender<(u8, Bytes)>,
    stdout: bool,
    stderr: bool,
}

impl Output {
    /// Queues `data` on `channel` (stdout or stderr); false once the client is gone.
    pub async fn send(&self, channel: u8, data: Bytes) -> bool {
        let wanted = match channel {
            channel::STDOUT => self.stdout,
            channel::STDERR => self.stderr,
            _ => false,
        };
        if !wanted || data.is_empty() {
            return !self.tx.is_closed();
        }
        self.tx.send((channel, data)).await.is_ok()
    }
}

/// What a handler gets.
pub(crate) struct Streams {
    /// Client stdin when requested; the channel closes at the client's end of input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Terminal sizes when a tty was requested.
    pub resize: Option<mpsc::Receiver<Resize>>,
    pub out: Output,
}

pub(crate) type Handler =
    Box<dyn FnOnce(Streams) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send>;

/// How long the client gets to open the streams it announced (kubelet: 30s).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn to_tungstenite(m: ws::Message) -> WsMessage {
    match m {
        ws::Message::Text(t) => match String::from_utf8(t.to_vec()) {
            Ok(s) => WsMessage::text(s),
            Err(_) => WsMessage::Binary(t),
        },
        ws::Message::Binary(b) => WsMessage::Binary(b),
        ws::Message::Ping(b) => WsMessage::Ping(b),
        ws::Message::Pong(b) => WsMessage::Pong(b),
        ws::Message::Close { .. } => WsMessage::Close(None),
    }
}

fn output_channel(options: Options) -> (Output, mpsc::Receiver<(u8, Bytes)>) {
    let (tx, rx) = mpsc::channel(32);
    (
        Output {
            tx,
            stdout: options.stdout,
            stderr: options.stderr,
        },
        rx,
    )
}

/// Runs the handler and the transport's writer together; false if the client left or the
/// sandbox stopped first (the handler is then dropped).
async fn run_until_done(
    run: impl Future<Output = ()>,
    writer: impl Future<Output = ()>,
    mut client_gone: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = async { tokio::join!(run, writer) } => true,
        _ = super::until_true(&mut client_gone) => false,
        _ = super::until_true(&mut stop) => false,
    }
}

/// Exec/attach over WebSocket with a channel subprotocol.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    protocol: Subprotocol,
    options: Options,
    handler: Handler,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Resize>(4);
    let (gone_tx, gone_rx) = watch::channel(false);
    let mut reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        let mut sizes = ResizeReader::new();
        while let Some(Ok(message)) = source.next().await {
            let message = match message {
                WsMessage::Binary(b) => ws::Message::Binary(b),
                WsMessage::Text(t) => ws::Message::Text(Bytes::copy_from_slice(t.as_bytes())),
                WsMessage::Close(_) => break,
                _ => continue,
            };
            match channel::decode(protocol, &message) {
                Ok(Some(ChannelMessage::Data {
                    channel: channel::STDIN,
                    payload,
                })) => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(payload).await;
                    }
                }
                Ok(Some(ChannelMessage::Data {
                    channel: channel::RESIZE,
                    payload,
                })) => match sizes.push(&payload) {
                    Ok(list) => {
                        for size in list {
                            let _ = resize_tx.send(size).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring a resize message"),
                },
                Ok(Some(ChannelMessage::Close {
                    channel: channel::STDIN,
                })) => stdin_tx = None,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "bad channel message from the client");
                    break;
                }
            }
        }
        let _ = gone_tx.send(true);
    });
    let (out, mut out_rx) = output_channel(options);
    let streams = Streams {
        stdin: options.stdin.then_some(stdin_rx),
        resize: options.tty.then_some(resize_rx),
        out,
    };
    let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel::<Outcome>();
    let run = async move {
        let outcome = handler(streams).await;
        let _ = outcome_tx.send(outcome);
    };
    let writer = async {
        // Ends when the handler has finished and dropped every Output.
        while let Some((ch, data)) = out_rx.recv().await {
            let m = to_tungstenite(channel::encode(protocol, ch, &data));
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let Ok(outcome) = outcome_rx.await else {
            return;
        };
        if let Some(status) = outcome.error_channel(protocol) {
            let m = to_tungstenite(channel::encode(protocol, channel::ERROR, &status));
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(WsMessage::Close(Some(close))).await;
    };
    if run_until_done(run, writer, gone_rx, stop).await {
        // Let the client answer our close before the socket goes.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut reader).await;
    }
    reader.abort();
}

/// Exec/attach over SPDY/3.1.
pub(crate) async fn serve_spdy<IO>(
    io: IO,
    protocol: Subprotocol,
    options: Options,
    handler: Handler,
    stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = spdy_conn::start(io);
    // The client opens the error stream and one stream per requested channel.
    let mut wanted: Vec<&str> = vec!["error"];
    for (on, name) in [
        (options.stdin, "stdin"),
        (options.stdout, "stdout"),
        (options.stderr, "stderr"),
        // Only v3 and later have the resize stream.
        (
            options.tty && !matches!(protocol, Subprotocol::V2Channel | Subprotocol::Channel),
            "resize",
        ),
    ] {
        if on {
            wanted.push(name);
        }
    }
    let mut opened: Vec<(String, Incoming)> = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !wanted.iter().all(|w| opened.iter().any(|(t, _)| t == w)) {
        tokio::select! {
            incoming = conn.streams.recv() => {
                let Some(incoming) = incoming else { return };
                let stream_type = incoming.header("streamtype").unwrap_or_default().to_owned();
                if wanted.contains(&stream_type.as_str()) {
                    opened.push((stream_type, incoming));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!("spdy client did not open its streams in time");
                return;
            }
        }
    }
    let mut take = |t: &str| {
        opened
            .iter()
            .position(|(n, _)| n == t)
            .map(|i| opened.swap_remove(i).1)
    };
    let Some(error) = take("error") else { return };
    let stdin = take("stdin");
    let stdout_id = take("stdout").map(|s| s.id);
    let stderr_id = take("stderr").map(|s| s.id);
    let resize_stream = take("resize");
    let (resize_tx, resize_rx) = mpsc::channel::<Resize>(4);
    let resize_pump = resize_stream.map(|mut s| {
        tokio::spawn(async move {
            let mut sizes = ResizeReader::new();
            while let Some(bytes) = s.data.recv().await {
                match sizes.push(&bytes) {
                    Ok(list) => {
                        for size in list {
                            let _ = resize_tx.send(size).await;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring a resize message"),
                }
            }
        })
    });
    let (out, mut out_rx) = output_channel(options);
    let streams = Streams {
        stdin: stdin.map(|s| s.data),
        resize: options.tty.then_some(resize_rx),
        out,
    };
    let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel::<Outcome>();
    let run = async move {
        let outcome = handler(streams).await;
        let _ = outcome_tx.send(outcome);
    };
    let sender = conn.sender.clone();
    let writer = async move {
        while let Some((ch, data)) = out_rx.recv().await {
            let id = if ch == channel::STDOUT {
                stdout_id
            } else {
                stderr_id
            };
            if let Some(id) = id
                && !sender.data(id, data).await
            {
                return;
            }
        }
        let Ok(outcome) = outcome_rx.await else {
            return;
        };
        for id in [stdout_id, stderr_id].into_iter().flatten() {
            sender.fin(id).await;
        }
        if let Some(status) = outcome.error_channel(protocol) {
            sender.data(error.id, status).await;
        }
        sender.fin(error.id).await;
    };
    let done = run_until_done(run, writer, conn.closed.clone(), stop).await;
    if let Some(p) = resize_pump {
        p.abort();
    }
    if done {
        conn.finish().await;
    }
}

/// SPDY tunneled in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`), as a byte
/// stream: each binary message carries the next bytes; what we write goes out as binary
/// messages.
pub(crate) fn websocket_tunnel<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut from_tunnel, mut to_tunnel) = tokio::io::split(ours);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        let inbound = async {
            while let Some(Ok(message)) = source.next().await {
                match message {
                    WsMessage::Binary(b) => {
                        let written = to_tunnel.write_all(&b).await;
                        if written.is_err() {
                            break;
                        }
                    }
                    WsMessage::Close(_) => break,
                    _ => {}
                }
            }
            let _ = to_tunnel.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from_tunnel.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let m = WsMessage::Binary(Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let close = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = sink.send(WsMessage::Close(Some(close))).await;
        };
        // The tunnel ends when the SPDY side has closed its writes; the inbound half is then
        // only waited for briefly.
        tokio::pin!(inbound);
        tokio::select! {
            _ = &mut inbound => {}
            _ = outbound => {
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut inbound).await;
            }
        }
    });
    theirs
}
