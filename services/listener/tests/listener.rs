//! The guarded listener over real sockets: each test serves on its own ephemeral loopback port
//! and drives it with raw TCP, so nothing on the client side hides what the server does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_listener::{ConnectionLimits, Observer, Options, Peer, Refusal, Timeout};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);
/// How long a test waits for what must happen at once (or after a short timeout).
const PATIENCE: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

fn limits(header_read: Duration, idle: Duration) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: header_read,
        idle_timeout: idle,
        tls_handshake_timeout: SHORT,
        ..ConnectionLimits::default()
    }
}

struct Server {
    addr: SocketAddr,
    observer: Observer,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(limits: ConnectionLimits) -> Server {
    start_with(Options::new(limits, Observer::unregistered("test"))).await
}

async fn start_with(options: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let observer = options.observer.clone();
    let stop = CancellationToken::new();
    tokio::spawn(gatehouse_listener::serve(
        listener,
        options,
        handler,
        stop.clone(),
    ));
    Server {
        addr,
        observer,
        stop,
    }
}

/// `/` answers `ok`; `/stream` sends ten chunks 100 ms apart; `/hang` never answers;
/// `/upgrade` switches protocols and echoes what it is sent.
fn handler(
    mut request: Request<Incoming>,
    _peer: &Peer,
) -> impl Future<Output = Response<Body>> + Send + use<> {
    let on_upgrade = (request.uri().path() == "/upgrade").then(|| hyper::upgrade::on(&mut request));
    let path = request.uri().path().to_owned();
    async move {
        match path.as_str() {
            "/stream" => {
                let chunks = futures::stream::unfold(0u32, |n| async move {
                    if n == 10 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let chunk = Frame::data(Bytes::from(format!("chunk {n}\n")));
                    Some((Ok::<_, Infallible>(chunk), n + 1))
                });
                Response::new(StreamBody::new(chunks).boxed())
            }
            "/hang" => std::future::pending().await,
            "/upgrade" => {
                let on_upgrade = on_upgrade.expect("an upgrade request");
                tokio::spawn(async move {
                    let upgraded = on_upgrade.await.expect("upgraded");
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap()
            }
            _ => Response::new(Full::new(Bytes::from_static(b"ok")).boxed()),
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";

/// Reads until the server closes the connection; what it sent and how long that took.
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {PATIENCE:?}; read {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, start.elapsed()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response head and a body of `Content-Length` bytes (or chunked to its end).
async fn response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let body = &text[end + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|n| n.trim().parse::<usize>().unwrap());
            let done = match length {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with("0\r\n\r\n"),
                None => true,
            };
            if done {
                return text;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Waits for `check` to hold, polling, until [`PATIENCE`] runs out.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn half_a_request_line_is_closed_after_the_header_read_timeout() {
    let server = start(limits(SHORT, LONG)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET / HT").await.unwrap();
    let (sent, took) = until_closed(&mut stream).await;
    assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 1);
    assert_eq!(server.observer.timed_out(Timeout::Idle), 0);
    eventually("the connection is no longer open", || {
        server.observer.open() == 0
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let server = start(limits(SHORT, LONG)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (_, took) = until_closed(&mut stream).await;
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 1);
}

#[tokio::test]
async fn a_slow_next_request_on_a_keep_alive_connection_gets_the_header_timeout() {
    let server = start(limits(SHORT, LONG)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert!(response(&mut stream).await.starts_with("HTTP/1.1 200"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    let (sent, took) = until_closed(&mut stream).await;
    assert!(sent.is_empty());
    assert!(
        took < LONG / 2,
        "the idle timeout applied instead: {took:?}"
    );
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 1);
    assert_eq!(server.observer.timed_out(Timeout::Idle), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = start(limits(LONG, SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Requests go on being answered on the same connection while it is used...
    for _ in 0..3 {
        stream.write_all(GET).await.unwrap();
        assert!(response(&mut stream).await.starts_with("HTTP/1.1 200"));
    }
    // ...and once it is left idle it is closed.
    let (sent, took) = until_closed(&mut stream).await;
    assert!(sent.is_empty());
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
    assert_eq!(server.observer.timed_out(Timeout::Idle), 1);
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 0);
    assert_eq!(server.observer.accepted(), 1);
}

#[tokio::test]
async fn connections_over_the_per_address_limit_are_refused_and_counted() {
    let server = start(ConnectionLimits {
        max_connections_per_address: 2,
        ..limits(LONG, LONG)
    })
    .await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    eventually("two connections accepted", || {
        server.observer.accepted() == 2
    })
    .await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let (sent, took) = until_closed(&mut third).await;
    assert!(sent.is_empty());
    assert!(took < LONG / 2);
    assert_eq!(server.observer.refused(Refusal::PerAddressLimit), 1);
    assert_eq!(server.observer.refused(Refusal::TotalLimit), 0);
    // Another address still gets in.
    let mut other = connect_from("127.0.0.2", server.addr).await;
    other.write_all(GET).await.unwrap();
    assert!(response(&mut other).await.starts_with("HTTP/1.1 200"));
    // A closed connection frees its place.
    drop(first);
    eventually("the closed connection is let go", || {
        server.observer.open() == 2
    })
    .await;
    let mut again = TcpStream::connect(server.addr).await.unwrap();
    again.write_all(GET).await.unwrap();
    assert!(response(&mut again).await.starts_with("HTTP/1.1 200"));
    second.write_all(GET).await.unwrap();
    assert!(response(&mut second).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_over_the_total_limit_are_refused_and_counted() {
    let server = start(ConnectionLimits {
        max_connections: 2,
        max_connections_per_address: 2,
        ..limits(LONG, LONG)
    })
    .await;
    let _a = connect_from("127.0.0.1", server.addr).await;
    let _b = connect_from("127.0.0.2", server.addr).await;
    eventually("two connections accepted", || {
        server.observer.accepted() == 2
    })
    .await;
    let mut c = connect_from("127.0.0.3", server.addr).await;
    let (sent, _) = until_closed(&mut c).await;
    assert!(sent.is_empty());
    assert_eq!(server.observer.refused(Refusal::TotalLimit), 1);
    assert_eq!(server.observer.open(), 2);
}

#[tokio::test]
async fn a_response_streaming_longer_than_the_idle_timeout_is_not_cut() {
    // Ten chunks over a second, with an idle timeout and a header timeout of 300 ms.
    let server = start(limits(SHORT, SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let start = Instant::now();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let text = response(&mut stream).await;
    assert!(start.elapsed() >= 3 * SHORT, "{:?}", start.elapsed());
    for n in 0..10 {
        assert!(text.contains(&format!("chunk {n}\n")), "{text}");
    }
    assert_eq!(server.observer.timed_out(Timeout::Idle), 0);
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 0);
    // Once it has been sent, the connection is idle like any other.
    until_closed(&mut stream).await;
    assert_eq!(server.observer.timed_out(Timeout::Idle), 1);
}

#[tokio::test]
async fn a_request_waiting_for_its_answer_is_not_cut() {
    let server = start(limits(SHORT, SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    // A watch that has nothing to say for a while: still open well past both timeouts.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(SHORT * 5, stream.read(&mut buf)).await;
    assert!(read.is_err(), "the server answered or closed: {read:?}");
    assert_eq!(server.observer.timed_out(Timeout::Idle), 0);
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 0);
}

#[tokio::test]
async fn an_upgraded_connection_outlives_the_idle_and_header_timeouts() {
    let server = start(limits(SHORT, SHORT)).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // An exec session with nobody typing: quiet for several idle timeouts.
    let mut buf = [0u8; 16];
    let quiet = tokio::time::timeout(SHORT * 4, stream.read(&mut buf)).await;
    assert!(
        quiet.is_err(),
        "the upgraded connection was closed: {quiet:?}"
    );
    stream.write_all(b"still here").await.unwrap();
    let mut echoed = [0u8; 10];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
        .await
        .expect("echoed in time")
        .unwrap();
    assert_eq!(&echoed, b"still here");
    assert_eq!(server.observer.timed_out(Timeout::Idle), 0);
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 0);
    // It still counts as open (and under the limits) until the session ends.
    assert_eq!(server.observer.open(), 1);
    drop(stream);
    eventually("the ended session frees its place", || {
        server.observer.open() == 0
    })
    .await;
}

// HTTP/2 frames, written by hand so the client does not keep to the server's limits itself.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const PING: u8 = 0x6;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// `GET /hang` (`:method GET`, `:scheme http`, then `:path` as a literal), END_STREAM and
/// END_HEADERS.
fn get_hang(stream: u32) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, 5];
    block.extend(b"/hang");
    frame(HEADERS, 0x5, stream, &block)
}

async fn read_frame(stream: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], id, payload))
}

fn settings(payload: &[u8]) -> Vec<(u16, u32)> {
    payload
        .chunks(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}

/// Opens an HTTP/2 connection (prior knowledge), acknowledges the server's settings and
/// returns them.
async fn h2_connect(addr: SocketAddr) -> (TcpStream, Vec<(u16, u32)>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    loop {
        let (kind, flags, _, payload) = tokio::time::timeout(PATIENCE, read_frame(&mut stream))
            .await
            .unwrap()
            .expect("server settings");
        if kind == SETTINGS && flags & 0x1 == 0 {
            stream
                .write_all(&frame(SETTINGS, 0x1, 0, &[]))
                .await
                .unwrap();
            return (stream, settings(&payload));
        }
    }
}

#[tokio::test]
async fn http2_limits_are_advertised_and_streams_over_the_limit_refused() {
    let mut limits = limits(LONG, LONG);
    limits.http2.max_concurrent_streams = 2;
    limits.http2.max_header_list_size = 8192;
    let server = start(limits).await;
    let (mut stream, advertised) = h2_connect(server.addr).await;
    assert!(advertised.contains(&(0x3, 2)), "{advertised:?}");
    assert!(advertised.contains(&(0x6, 8192)), "{advertised:?}");
    for id in [1, 3, 5] {
        stream.write_all(&get_hang(id)).await.unwrap();
    }
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            let (kind, _, id, payload) = read_frame(&mut stream).await.expect("open");
            if kind == RST_STREAM {
                return (id, u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
        }
    })
    .await
    .expect("a stream refused in time");
    const REFUSED_STREAM: u32 = 0x7;
    assert_eq!(refused, (5, REFUSED_STREAM));
}

#[tokio::test]
async fn an_http2_stream_in_flight_is_not_cut_but_an_idle_http2_connection_is() {
    let mut limits = limits(SHORT, SHORT);
    // Pings answered by nobody would end the connection: keep them out of this test.
    limits.http2.keep_alive_interval = LONG;
    let server = start(limits).await;
    let (mut stream, _) = h2_connect(server.addr).await;
    // A watch on stream 1: several idle timeouts with no frame either way.
    stream.write_all(&get_hang(1)).await.unwrap();
    let quiet = tokio::time::timeout(SHORT * 4, async {
        loop {
            match read_frame(&mut stream).await {
                // Housekeeping (the settings ack, window updates) is fine; an end is not.
                Some((GOAWAY | RST_STREAM, ..)) | None => return,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "the stream or the connection was ended");
    assert_eq!(server.observer.timed_out(Timeout::Idle), 0);
    // With the stream reset by the client, the connection is idle and is closed with GOAWAY.
    let cancel = 0x8u32.to_be_bytes();
    stream
        .write_all(&frame(RST_STREAM, 0, 1, &cancel))
        .await
        .unwrap();
    let start = Instant::now();
    let goaway = tokio::time::timeout(PATIENCE, async {
        loop {
            match read_frame(&mut stream).await {
                Some((GOAWAY, ..)) => return true,
                Some((PING, flags, _, payload)) if flags & 1 == 0 => {
                    stream
                        .write_all(&frame(PING, 1, 0, &payload))
                        .await
                        .unwrap();
                }
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .expect("closed in time");
    assert!(goaway, "closed without GOAWAY");
    assert!(start.elapsed() >= SHORT - Duration::from_millis(50));
    assert_eq!(server.observer.timed_out(Timeout::Idle), 1);
}

#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_disconnected() {
    let mut limits = limits(LONG, LONG);
    limits.http2.keep_alive_interval = SHORT;
    limits.http2.keep_alive_timeout = SHORT;
    let server = start(limits).await;
    let (mut stream, _) = h2_connect(server.addr).await;
    // A watch whose client vanished: the stream stays open, nothing answers the pings.
    stream.write_all(&get_hang(1)).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        while read_frame(&mut stream).await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "still open after {PATIENCE:?}");
    eventually("the connection is let go", || server.observer.open() == 0).await;
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_and_counted() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let server = start_with(
        Options::new(limits(LONG, LONG), Observer::unregistered("tls")).with_tls(Arc::new(config)),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (_, took) = until_closed(&mut stream).await;
    assert!(
        took >= SHORT - Duration::from_millis(50),
        "closed after {took:?}"
    );
    assert_eq!(server.observer.timed_out(Timeout::TlsHandshake), 1);
    assert_eq!(server.observer.timed_out(Timeout::HeaderRead), 0);
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight_and_closes_idle_connections() {
    let server = start(limits(LONG, LONG)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(GET).await.unwrap();
    assert!(response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut streaming = TcpStream::connect(server.addr).await.unwrap();
    streaming
        .write_all(b"GET /stream HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    streaming.read_exact(&mut first).await.unwrap();
    server.stop.cancel();
    until_closed(&mut idle).await;
    let (rest, _) = until_closed(&mut streaming).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("chunk 9\n") && rest.ends_with("0\r\n\r\n"),
        "{rest}"
    );
}
