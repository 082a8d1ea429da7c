//! A minimal SPDY/3.1 server connection, enough for kubectl's streams.
//!
//! The client opens every stream (SYN_STREAM with `streamtype` headers); the server replies
//! (SYN_REPLY), then both sides send DATA and half-close with FIN. Pings are echoed. Flow
//! control windows are not enforced: kube's peers (moby/spdystream) do not rely on them.
//!
//! [`start`] spawns a reader and a writer task; the caller gets the new streams and a
//! cloneable [`Sender`] for frames.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_streams::spdy::{self, Frame, FrameReader, FrameWriter, Headers};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Largest DATA payload we send in one frame (what spdystream reads at a time).
const MAX_DATA: usize = 32 * 1024;

/// A stream the client opened.
pub(crate) struct Incoming {
    pub id: u32,
    pub headers: Headers,
    /// The client's data; closes at its FIN, at RST_STREAM, or when the connection ends.
    pub data: mpsc::Receiver<Bytes>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }
}

enum Command {
    Frame(Frame),
    /// Flush, close the write side, stop writing.
    Close,
}

/// Writes frames on the connection; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: mpsc::Sender<Command>,
}

impl Sender {
    /// Sends `data` on stream `id` (split into frames as needed); false once the connection
    /// is gone.
    pub async fn data(&self, id: u32, data: Bytes) -> bool {
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(MAX_DATA));
            let frame = Frame::Data {
                stream_id: id,
                fin: false,
                data: piece,
            };
            if self.tx.send(Command::Frame(frame)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes stream `id` from our side.
    pub async fn fin(&self, id: u32) -> bool {
        let frame = Frame::Data {
            stream_id: id,
            fin: true,
            data: Bytes::new(),
        };
        self.tx.send(Command::Frame(frame)).await.is_ok()
    }

    /// Flushes what is queued and closes the connection's write side.
    pub async fn close(&self) {
        let _ = self.tx.send(Command::Close).await;
    }
}

/// A running connection.
pub(crate) struct Conn {
    pub sender: Sender,
    /// New streams; ends when the connection does.
    pub streams: mpsc::Receiver<Incoming>,
    /// Becomes true when the client's side of the connection has ended.
    pub closed: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Closes our side, then waits (bounded) for the client to hang up, so the last bytes are
    /// not lost to a reset caused by closing a socket with unread input.
    pub async fn finish(mut self) {
        self.sender.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.writer).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), super::until_true(&mut self.closed)).await;
        self.reader.abort();
        self.writer.abort();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

pub(crate) fn start<IO>(io: IO) -> Conn
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Command>(64);
    let (streams_tx, streams) = mpsc::channel::<Incoming>(16);
    let (closed_tx, closed) = watch::channel(false);
    // Streams the client reset: data we still have queued for them is dropped.
    let reset: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let writer_reset = reset.clone();
    let writer = tokio::spawn(async move {
        let mut frames = FrameWriter::new();
        while let Some(cmd) = rx.recv().await {
            let frame = match cmd {
                Command::Frame(f) => f,
                Command::Close => break,
            };
            if let Frame::Data { stream_id, .. } = &frame
                && writer_reset
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(stream_id)
            {
                continue;
            }
            let bytes = match frames.encode(&frame) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "spdy frame could not be encoded");
                    break;
                }
            };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
            if rx.is_empty() && wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    let sender = Sender { tx };
    let reader_sender = sender.clone();
    let reader = tokio::spawn(async move {
        let mut frames = FrameReader::new();
        let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
        let mut buf = vec![0u8; 32 * 1024];
        'conn: loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let decoded = match frames.push(&buf[..n]) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "spdy connection from the client is corrupt");
                    let _ = reader_sender
                        .tx
                        .send(Command::Frame(Frame::GoAway {
                            last_good_stream_id: 0,
                            status: 1,
                        }))
                        .await;
                    break;
                }
            };
            for frame in decoded {
                match frame {
                    Frame::SynStream {
                        stream_id,
                        fin,
                        headers,
                        ..
                    } => {
                        let reply = Frame::SynReply {
                            stream_id,
                            fin: false,
                            headers: Vec::new(),
                        };
                        if reader_sender.tx.send(Command::Frame(reply)).await.is_err() {
                            break 'conn;
                        }
                        let (data_tx, data) = mpsc::channel(16);
                        if !fin {
                            open.insert(stream_id, data_tx);
                        }
                        let incoming = Incoming {
                            id: stream_id,
                            headers,
                            data,
                        };
                        if streams_tx.send(incoming).await.is_err() {
                            // Nobody takes new streams any more: refuse it.
                            let rst = Frame::RstStream {
                                stream_id,
                                status: spdy::RST_REFUSED_STREAM,
                            };
                            let _ = reader_sender.tx.send(Command::Frame(rst)).await;
                        }
                    }
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        if !data.is_empty()
                            && let Some(tx) = open.get(&stream_id)
                        {
                            // The receiver may have stopped caring; that is not an error.
                            let _ = tx.send(data).await;
                        }
                        if fin {
                            open.remove(&stream_id);
                        }
                    }
                    Frame::RstStream { stream_id, .. } => {
                        open.remove(&stream_id);
                        reset
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(stream_id);
                    }
                    Frame::Ping { id } => {
                        // Echo the client's ping: that is the reply.
                        let echoed = reader_sender
                            .tx
                            .send(Command::Frame(Frame::Ping { id }))
                            .await;
                        if echoed.is_err() {
                            break 'conn;
                        }
                    }
                    Frame::GoAway { .. } => break 'conn,
                    Frame::Headers {
                        stream_id,
                        fin: true,
                        ..
                    } => {
                        open.remove(&stream_id);
                    }
                    _ => {}
                }
            }
        }
        drop(open);
        let _ = closed_tx.send(true);
    });
    Conn {
        sender,
        streams,
        closed,
        reader,
        writer,
    }
}
