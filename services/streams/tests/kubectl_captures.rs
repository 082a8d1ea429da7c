//! Decoding bytes captured on the upgraded connections of real kubectl 1.32 sessions (against
//! the Gatehouse sandbox), one file per direction in `tests/captures/`:
//!
//! - `exec-v5-websocket`: `printf 'hello\n' | kubectl exec -i -n apps web -- sh -c 'cat; echo
//!   err >&2; exit 7'` (WebSocket, `v5.channel.k8s.io`).
//! - `exec-spdy`: the same with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` (SPDY/3.1,
//!   `v4.channel.k8s.io`).
//! - `portforward-tunnel`: `kubectl port-forward -n apps web :59825`, one connection sending
//!   `ping` to an echo server (WebSocket, `SPDY/3.1+portforward.k8s.io`).
//! - `portforward-spdy`: the same with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`.
//!
//! The client→server files are kubectl's own bytes (gorilla/websocket masking, Go zlib header
//! compression); the server→client files are the sandbox's.

use gatehouse_streams::Direction;
use gatehouse_streams::channel::Subprotocol;
use gatehouse_streams::session::{
    Channel, Chunk, Decoder, Kind, PortStream, Transport, exit_status,
};

fn capture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Feeds a capture in uneven pieces (as TCP would deliver it) and collects the chunks.
fn decode(decoder: &mut Decoder, bytes: &[u8]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut size = 1;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        out.extend(decoder.push(piece).expect("decodes"));
        rest = tail;
        size = size * 3 % 17 + 1;
    }
    out
}

/// Concatenated data per channel, and whether the channel was ended.
fn collect(chunks: &[Chunk], channel: Channel) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut ended = false;
    for c in chunks.iter().filter(|c| c.channel == channel) {
        data.extend_from_slice(&c.data);
        ended |= c.end;
    }
    (data, ended)
}

fn check_exec(transport: Transport, name: &str) {
    let (mut up, mut down) = Decoder::pair(Kind::Exec, transport);
    let client = decode(&mut up, &capture(&format!("{name}.c2s")));
    let server = decode(&mut down, &capture(&format!("{name}.s2c")));
    assert_eq!(
        collect(&client, Channel::Stdin),
        (b"hello\n".to_vec(), true),
        "{client:?}"
    );
    assert_eq!(
        collect(&server, Channel::Stdout).0,
        b"hello\n",
        "{server:?}"
    );
    assert_eq!(collect(&server, Channel::Stderr).0, b"err\n", "{server:?}");
    let status = exit_status(&collect(&server, Channel::Error).0).expect("a Status");
    assert_eq!(status.code, 7);
    assert_eq!(status.reason, "NonZeroExitCode");
    // Nothing in either direction was left unexplained.
    assert!(
        client
            .iter()
            .chain(&server)
            .all(|c| c.channel != Channel::Unknown)
    );
}

#[test]
fn kubectl_exec_over_websocket_v5() {
    check_exec(
        Transport::WebSocket(Subprotocol::V5Channel),
        "exec-v5-websocket",
    );
}

#[test]
fn kubectl_exec_over_spdy() {
    check_exec(Transport::Spdy(Subprotocol::V4Channel), "exec-spdy");
}

fn check_port_forward(transport: Transport, name: &str) {
    let (mut up, mut down) = Decoder::pair(Kind::PortForward, transport);
    let client = decode(&mut up, &capture(&format!("{name}.c2s")));
    let server = decode(&mut down, &capture(&format!("{name}.s2c")));
    let data = Channel::Port {
        port: 59825,
        stream: PortStream::Data,
    };
    let error = Channel::Port {
        port: 59825,
        stream: PortStream::Error,
    };
    assert_eq!(
        collect(&client, data),
        (b"ping".to_vec(), true),
        "{client:?}"
    );
    assert_eq!(
        collect(&server, data),
        (b"ping".to_vec(), true),
        "{server:?}"
    );
    // No error text, and the error stream was closed by the server.
    assert_eq!(collect(&server, error), (Vec::new(), true), "{server:?}");
}

#[test]
fn kubectl_port_forward_tunneled_in_websocket() {
    check_port_forward(
        Transport::WebSocket(Subprotocol::SpdyTunnelPortForward),
        "portforward-tunnel",
    );
}

#[test]
fn kubectl_port_forward_over_spdy() {
    check_port_forward(
        Transport::Spdy(Subprotocol::PortForward),
        "portforward-spdy",
    );
}

#[test]
fn a_lone_server_decoder_cannot_name_spdy_streams() {
    // Without the client's SYN_STREAMs the server direction yields nothing yet.
    let mut down = Decoder::new(
        Kind::Exec,
        Transport::Spdy(Subprotocol::V4Channel),
        Direction::ServerToClient,
    );
    assert!(decode(&mut down, &capture("exec-spdy.s2c")).is_empty());
}
