//! SPDY port-forward (`portforward.k8s.io`), as the kubelet serves it.
//!
//! For each forwarded connection the client opens an error stream and a data stream with the
//! same `requestid` and a `port` header. The sandbox then connects to `host:port` (host from
//! the pod annotation, default 127.0.0.1) and copies bytes both ways. When the target closes,
//! the data stream and then the error stream are half-closed; a connection failure is written
//! on the error stream first, with the kubelet's message shape.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

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
