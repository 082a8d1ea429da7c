//! Port-forward, as the kubelet serves it: SPDY (`portforward.k8s.io`, also tunneled in
//! WebSocket) and WebSocket channel framing ([`serve_websocket`]).
//!
//! For each forwarded connection the client opens an error stream and a data stream with the
//! same `requestid` and a `port` header. The sandbox then connects to `host:port` (host from
//! the pod annotation, default 127.0.0.1) and copies bytes both ways. When the target closes,
//! the data stream and then the error stream are half-closed; a connection failure is written
//! on the error stream first, with the kubelet's message shape.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gatehouse_streams::channel::{self, ChannelMessage, Subprotocol};
use gatehouse_streams::ws;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::session;
use super::spdy_conn::{self, Incoming, Sender};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Pair {
    error: Option<Incoming>,
    data: Option<Incoming>,
}

/// Serves one port-forward connection until the client or the sandbox ends it.
pub(crate) async fn serve<IO>(
    io: IO,
    host: String,
    pod: String,
    uid: String,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = spdy_conn::start(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        tokio::select! {
            incoming = conn.streams.recv() => {
                let Some(incoming) = incoming else { break };
                // Old clients send no request id: pair by port then.
                let request = incoming
                    .header("requestid")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("port-{}", incoming.header("port").unwrap_or_default()));
                let pair = pairs.entry(request.clone()).or_default();
                match incoming.header("streamtype") {
                    Some("error") => pair.error = Some(incoming),
                    Some("data") => pair.data = Some(incoming),
                    // Unknown stream types are dropped (the client sees its data ignored).
                    _ => continue,
                }
                if pair.error.is_some() && pair.data.is_some()
                    && let Some(Pair { error: Some(error), data: Some(data) }) = pairs.remove(&request)
                {
                    forwards.spawn(forward(
                        conn.sender.clone(),
                        host.clone(),
                        pod.clone(),
                        uid.clone(),
                        error,
                        data,
                    ));
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
            _ = super::until_true(&mut stop) => break,
        }
    }
    forwards.abort_all();
    conn.finish().await;
}

async fn forward(
    sender: Sender,
    host: String,
    pod: String,
    uid: String,
    error: Incoming,
    mut data: Incoming,
) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_default();
    let target = format!("{host}:{port}");
    let connected = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("dial tcp {target}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {target}: i/o timeout")),
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(why) => {
            let msg = format!("error forwarding port {port} to pod {pod}, uid {uid}: {why}");
            sender.data(error.id, Bytes::from(msg)).await;
            sender.fin(data.id).await;
            sender.fin(error.id).await;
            return;
        }
    };
    let (mut from_target, mut to_target) = tcp.into_split();
    let upload = async move {
        while let Some(bytes) = data.data.recv().await {
            if to_target.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The client's FIN: pass the end of input on.
        let _ = to_target.shutdown().await;
        std::future::pending::<()>().await;
    };
    let data_id = data.id;
    let download = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_target.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !sender
                        .data(data_id, Bytes::copy_from_slice(&buf[..n]))
                        .await
                    {
                        return;
                    }
                }
            }
        }
    };
    // The forward ends when the target stops sending.
    tokio::select! {
        _ = download => {}
        _ = upload => {}
    }
    sender.fin(data_id).await;
    sender.fin(error.id).await;
}

/// Where a WebSocket port-forward connects, and how errors name the pod.
pub(crate) struct Target {
    pub host: String,
    pub pod: String,
    pub uid: String,
}

/// WebSocket port-forward with channel framing, as the kubelet serves it: each requested port
/// `i` gets one TCP connection, data on channel `2i` and errors on `2i+1`; the server opens
/// both channels with the port as two little-endian bytes. The session ends when every
/// connection has ended (or the client closes).
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    protocol: Subprotocol,
    ports: Vec<u16>,
    target: Target,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(32);
    let mut inbound = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        // At most 127 ports (checked before the upgrade), so the channels fit in a byte.
        let data_channel = u8::try_from(2 * i).unwrap_or(u8::MAX - 1);
        for ch in [data_channel, data_channel + 1] {
            let _ = out_tx
                .send((ch, Bytes::copy_from_slice(&port.to_le_bytes())))
                .await;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        inbound.push(tx);
        forwards.spawn(forward_channel(
            out_tx.clone(),
            rx,
            format!("{}:{port}", target.host),
            data_channel,
            format!(
                "error forwarding port {port} to pod {}, uid {}",
                target.pod, target.uid
            ),
        ));
    }
    drop(out_tx);
    let reader = async {
        while let Some(Ok(message)) = source.next().await {
            let message = match message {
                WsMessage::Binary(b) => ws::Message::Binary(b),
                WsMessage::Text(t) => ws::Message::Text(Bytes::copy_from_slice(t.as_bytes())),
                WsMessage::Close(_) => break,
                _ => continue,
            };
            if let Ok(Some(ChannelMessage::Data { channel, payload })) =
                channel::decode(protocol, &message)
                && channel % 2 == 0
                && let Some(tx) = inbound.get(usize::from(channel / 2))
            {
                let _ = tx.send(payload).await;
            }
        }
    };
    // Ends when every forward has dropped its sender.
    let writer = async {
        while let Some((ch, data)) = out_rx.recv().await {
            let m = session::to_tungstenite(channel::encode(protocol, ch, &data));
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
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = super::until_true(&mut stop) => {}
    }
    forwards.abort_all();
}

/// One port of a WebSocket port-forward.
async fn forward_channel(
    out: mpsc::Sender<(u8, Bytes)>,
    mut from_client: mpsc::Receiver<Bytes>,
    address: String,
    data_channel: u8,
    context: String,
) {
    let connected = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address)).await
    {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("dial tcp {address}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {address}: i/o timeout")),
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(why) => {
            let _ = out
                .send((data_channel + 1, Bytes::from(format!("{context}: {why}"))))
                .await;
            return;
        }
    };
    let (mut from_target, mut to_target) = tcp.into_split();
    let upload = async move {
        while let Some(bytes) = from_client.recv().await {
            if to_target.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to_target.shutdown().await;
        std::future::pending::<()>().await;
    };
    let download = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_target.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out
                        .send((data_channel, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = download => {}
        _ = upload => {}
    }
}
