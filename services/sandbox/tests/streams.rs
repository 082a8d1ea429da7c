//! The real kubectl's exec, attach, port-forward and logs -f against the sandbox, over both
//! transports kubectl 1.32 speaks: WebSocket (its default) and SPDY/3.1 (chosen with
//! `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` / `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Cluster, KUBECTL_DEADLINE, Output, PROXY_TOKEN, start};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    WebSocket,
    Spdy,
}

impl Transport {
    fn env(self) -> [(&'static str, &'static str); 2] {
        let on = if self == Transport::WebSocket {
            "true"
        } else {
            "false"
        };
        [
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", on),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", on),
        ]
    }

    /// WebSocket upgrades are GETs; SPDY upgrades are POSTs.
    fn method(self) -> &'static str {
        match self {
            Transport::WebSocket => "GET",
            Transport::Spdy => "POST",
        }
    }
}

fn command(c: &Cluster, t: Transport, args: &[&str]) -> tokio::process::Command {
    let mut cmd = c.kubectl_command(args);
    cmd.envs(t.env());
    cmd
}

/// Runs kubectl to the end, feeding `stdin` (then closing it) when given.
async fn run(c: &Cluster, t: Transport, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = command(c, t, args);
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn kubectl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(KUBECTL_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
        .expect("kubectl output");
    Output {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The sandbox upgraded a request for `subresource` with the transport's method.
fn assert_upgraded(c: &Cluster, t: Transport, subresource: &str) {
    let requests = c.sandbox.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with(&format!("/{subresource}"))
                && r.method == t.method()
                && r.status == 101),
        "no {} {subresource} upgrade among {:?}",
        t.method(),
        requests
            .iter()
            .map(|r| (&r.method, &r.path, r.status))
            .collect::<Vec<_>>()
    );
}

async fn exec_streams_and_exit_code(t: Transport) {
    let c = start().await;
    let out = run(
        &c,
        t,
        &[
            "exec",
            "-n",
            "apps",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err\n"), "{}", out.stderr);
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{}",
        out.stderr
    );
    assert_upgraded(&c, t, "exec");
    let ok = run(&c, t, &["exec", "-n", "apps", "web", "--", "true"], None).await;
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_and_exit_code_over_websocket() {
    exec_streams_and_exit_code(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_and_exit_code_over_spdy() {
    exec_streams_and_exit_code(Transport::Spdy).await;
}

async fn exec_with_stdin(t: Transport) {
    let c = start().await;
    // Bigger than any single frame or pipe buffer, so flow and end of input both matter.
    let mut input = String::new();
    for i in 0..20_000 {
        input.push_str(&format!("line {i}\n"));
    }
    let out = run(
        &c,
        t,
        &[
            "exec",
            "-i",
            "-n",
            "apps",
            "web",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo END",
        ],
        Some(input.as_bytes()),
    )
    .await;
    assert!(out.success, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, format!("{}END\n", input.to_uppercase()));
    assert_upgraded(&c, t, "exec");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_stdin_over_websocket() {
    exec_with_stdin(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_stdin_over_spdy() {
    exec_with_stdin(Transport::Spdy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_missing_command_fails_like_the_kubelet() {
    let c = start().await;
    for t in [Transport::WebSocket, Transport::Spdy] {
        let out = run(
            &c,
            t,
            &["exec", "-n", "apps", "web", "--", "no-such-command-here"],
            None,
        )
        .await;
        assert_eq!(out.code, Some(1), "{t:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("Internal error occurred: error executing command in container")
                && out
                    .stderr
                    .contains("exec: \"no-such-command-here\": executable file not found in $PATH"),
            "{t:?}: {}",
            out.stderr
        );
    }
}

/// Runs kubectl under a pseudo-terminal of 30 rows × 100 columns; types `input` once the
/// output contains `prompt`. Returns everything kubectl wrote and its exit code.
fn kubectl_in_terminal(
    c: &Cluster,
    t: Transport,
    args: &[&str],
    prompt: &str,
    input: &[u8],
) -> (String, u32) {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 30,
            cols: 100,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("openpty");
    let mut cmd = CommandBuilder::new("kubectl");
    cmd.arg("--kubeconfig");
    cmd.arg(&c.kubeconfig);
    cmd.arg("--cache-dir");
    cmd.arg(c.dir.path().join("cache"));
    cmd.args(args);
    cmd.env_remove("KUBECONFIG");
    for (k, v) in t.env() {
        cmd.env(k, v);
    }
    let mut child = pty.slave.spawn_command(cmd).expect("spawn kubectl");
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().expect("reader");
    let mut writer = pty.master.take_writer().expect("writer");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + KUBECTL_DEADLINE;
    let mut output = Vec::new();
    let mut typed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => output.extend_from_slice(&bytes),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "kubectl {args:?} in a terminal timed out; output: {:?}",
                    String::from_utf8_lossy(&output)
                );
            }
        }
        if !typed && String::from_utf8_lossy(&output).contains(prompt) {
            writer.write_all(input).expect("type");
            writer.flush().expect("flush");
            typed = true;
        }
    }
    let status = child.wait().expect("wait");
    (
        String::from_utf8_lossy(&output).into_owned(),
        status.exit_code(),
    )
}

async fn exec_with_a_terminal(t: Transport) {
    let c = start().await;
    let c = tokio::task::spawn_blocking(move || {
        let (output, code) = kubectl_in_terminal(
            &c,
            t,
            &[
                "exec",
                "-it",
                "-n",
                "apps",
                "web",
                "--",
                "sh",
                "-c",
                "tty; printf 'name? '; read name; stty size; echo \"hello $name\"; exit 5",
            ],
            "name? ",
            b"gatehouse\r",
        );
        // The remote side ran under a real terminal, sized like ours (a resize message sent
        // when kubectl started; we typed only after the prompt, so it has arrived).
        assert!(output.contains("/dev/pts/"), "{output:?}");
        assert!(output.contains("30 100\r\n"), "{output:?}");
        // The remote terminal echoed what we typed and turned Enter into a newline.
        assert!(output.contains("hello gatehouse\r\n"), "{output:?}");
        assert_eq!(code, 5, "{output:?}");
        c
    })
    .await
    .expect("terminal session");
    assert_upgraded(&c, t, "exec");
    let exec = c
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/exec"))
        .expect("exec request");
    let query = exec.query.unwrap_or_default();
    assert!(
        query.contains("tty=true") && query.contains("stdin=true"),
        "{query}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_over_websocket() {
    exec_with_a_terminal(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_over_spdy() {
    exec_with_a_terminal(Transport::Spdy).await;
}

const SHARED_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sharer\n  namespace: default\n\
spec:\n  containers:\n  - name: main\n    image: busybox\n    command: [\"sh\", \"-c\"]\n    \
args: [\"while read l; do echo \\\"main: $l\\\"; done\"]\n    stdin: true\n    stdinOnce: true\n";

/// Two attach sessions share the pod's main process: both see its output; the last one's end
/// of input closes its stdin (stdinOnce), the process exits and both sessions end cleanly.
async fn attach_shares_the_main_process(t: Transport) {
    let c = start().await;
    let manifest = c.write_file("sharer.yaml", SHARED_POD);
    c.kubectl_ok(&["apply", "-f", &manifest]).await;
    let mut first = command(&c, t, &["attach", "-i", "sharer"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn attach");
    let mut first_in = first.stdin.take().expect("stdin");
    let mut first_out = BufReader::new(first.stdout.take().expect("stdout")).lines();
    first_in.write_all(b"one\n").await.expect("write");
    let line = tokio::time::timeout(KUBECTL_DEADLINE, first_out.next_line())
        .await
        .expect("first attach output in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("main: one"));
    // The first session is attached and the process runs: a second session joins it.
    let second = run(&c, t, &["attach", "-i", "sharer"], Some(b"two\n")).await;
    assert!(second.success, "stderr: {}", second.stderr);
    assert_eq!(second.stdout, "main: two\n");
    let line = tokio::time::timeout(KUBECTL_DEADLINE, first_out.next_line())
        .await
        .expect("shared output in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("main: two"));
    // The process has exited: the first session ends by itself.
    let status = tokio::time::timeout(KUBECTL_DEADLINE, first.wait())
        .await
        .expect("first attach ends")
        .expect("wait");
    assert!(status.success());
    assert_upgraded(&c, t, "attach");
    // A new attach starts the main process again.
    let again = run(&c, t, &["attach", "-i", "sharer"], Some(b"three\n")).await;
    assert_eq!(again.stdout, "main: three\n", "{}", again.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_shares_the_main_process_over_websocket() {
    attach_shares_the_main_process(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_shares_the_main_process_over_spdy() {
    attach_shares_the_main_process(Transport::Spdy).await;
}

/// A TCP echo server on a free loopback port.
async fn echo_server() -> u16 {
    echo_server_on("127.0.0.1").await
}

async fn echo_server_on(host: &str) -> u16 {
    let listener = TcpListener::bind((host, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// Starts `kubectl port-forward` to `remote` of `pod` (in apps) on a kubectl-chosen local
/// port; returns the running kubectl and the local port it announced.
async fn port_forward(
    c: &Cluster,
    t: Transport,
    pod: &str,
    remote: u16,
) -> (tokio::process::Child, u16) {
    let target = format!(":{remote}");
    let mut child = command(c, t, &["port-forward", "-n", "apps", pod, &target])
        .spawn()
        .expect("spawn port-forward");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("port-forward announced itself in time")
            .expect("read")
            .expect("port-forward output ended early");
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
            && let Some((local, _)) = rest.split_once(" -> ")
        {
            // Keep draining kubectl's output so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, local.parse().expect("local port"));
        }
    }
}

async fn round_trip(local: u16, payload: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", local))
        .await
        .expect("connect to kubectl");
    conn.write_all(payload).await.expect("write");
    conn.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .expect("read");
    back
}

async fn port_forward_reaches_a_local_port(t: Transport) {
    let c = start().await;
    let remote = echo_server().await;
    let (mut kubectl, local) = port_forward(&c, t, "web", remote).await;
    // Several connections over the one upgraded connection, one of them large.
    for i in 0..3 {
        let payload = format!("ping {i}\n").repeat(if i == 1 { 40_000 } else { 1 });
        assert_eq!(
            round_trip(local, payload.as_bytes()).await,
            payload.as_bytes()
        );
    }
    assert_upgraded(&c, t, "portforward");
    kubectl.kill().await.expect("kill port-forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_local_port_over_websocket() {
    port_forward_reaches_a_local_port(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_local_port_over_spdy() {
    port_forward_reaches_a_local_port(Transport::Spdy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_honours_the_forward_host_annotation() {
    let c = start().await;
    // Another loopback address: nothing listens on the same port of 127.0.0.1.
    let remote = echo_server_on("127.0.0.2").await;
    let manifest = c.write_file(
        "elsewhere.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: elsewhere\n  namespace: apps\n  \
             annotations:\n    {}: 127.0.0.2\nspec:\n  containers:\n  - name: c\n    image: nginx\n",
            gatehouse_sandbox::kube::FORWARD_HOST_ANNOTATION
        ),
    );
    c.kubectl_ok(&["apply", "-f", &manifest]).await;
    let (mut kubectl, local) = port_forward(&c, Transport::WebSocket, "elsewhere", remote).await;
    assert_eq!(round_trip(local, b"over there").await, b"over there");
    kubectl.kill().await.expect("kill port-forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_to_a_closed_port_reports_the_kubelet_error() {
    let c = start().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = format!(":{closed}");
    let mut child = command(
        &c,
        Transport::Spdy,
        &["port-forward", "-n", "apps", "web", &target],
    )
    .spawn()
    .expect("spawn port-forward");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(KUBECTL_DEADLINE, stdout.next_line())
        .await
        .expect("announced")
        .expect("read")
        .expect("a line");
    let local: u16 = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_once(' '))
        .and_then(|(p, _)| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // The local connection is accepted, then closed without data.
    assert!(round_trip(local, b"hello").await.is_empty());
    let deadline = tokio::time::Instant::now() + KUBECTL_DEADLINE;
    loop {
        let line = tokio::time::timeout_at(deadline, stderr.next_line())
            .await
            .expect("kubectl reported the error in time")
            .expect("read")
            .expect("stderr ended before the error");
        if line.contains(&format!("error forwarding port {closed} to pod web")) {
            assert!(line.contains("connect: Connection refused"), "{line}");
            break;
        }
    }
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_keeps_streaming() {
    let c = start().await;
    let (mut child, mut rx) = c.spawn_kubectl(&["logs", "-f", "-n", "apps", "web"]);
    common::wait_for_line(&mut rx, "the log head", |l| {
        l.contains("container web of pod apps/web started")
    })
    .await;
    // It neither ends after the lines so far nor stops: heartbeats keep coming.
    common::wait_for_line(&mut rx, "a second heartbeat", |l| {
        l.ends_with("sandbox: heartbeat 2")
    })
    .await;
    let follow = c
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/log"))
        .expect("log request");
    assert!(follow.query.unwrap_or_default().contains("follow=true"));
    child.kill().await.expect("kill logs -f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_subresources_follow_rbac() {
    let c = start().await;
    // ci-deployer (reached by impersonation) may do anything in apps but only read elsewhere,
    // and reading never includes exec.
    for t in [Transport::WebSocket, Transport::Spdy] {
        let as_ci = ["--token", PROXY_TOKEN, "--as", "ci-deployer"];
        let mut args = as_ci.to_vec();
        args.extend(["exec", "-n", "apps", "web", "--", "echo", "allowed"]);
        let ok = run(&c, t, &args, None).await;
        assert_eq!(ok.stdout, "allowed\n", "{t:?}: {}", ok.stderr);
        let mut args = as_ci.to_vec();
        args.extend(["exec", "-n", "prod", "api", "--", "echo", "denied"]);
        let denied = run(&c, t, &args, None).await;
        assert!(!denied.success, "{t:?}");
        assert!(denied.stdout.is_empty(), "{t:?}: {}", denied.stdout);
        assert!(
            denied.stderr.contains("forbidden")
                && denied.stderr.contains("User \"ci-deployer\" cannot")
                && denied.stderr.contains("resource \"pods/exec\""),
            "{t:?}: {}",
            denied.stderr
        );
    }
}

/// WebSocket port-forward with channel framing (what non-kubectl clients use): the `ports`
/// query picks the ports, each gets data channel 2i and error channel 2i+1, and the server
/// opens both with the port in two little-endian bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_with_websocket_channels() {
    use futures::{SinkExt, StreamExt};
    use gatehouse_streams::channel::{self, ChannelMessage, Subprotocol};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let c = start().await;
    let remote = echo_server().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::pem::PemObject::from_pem_slice(c.ca_pem.as_bytes()).expect("ca der"))
        .expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = TcpStream::connect(c.sandbox.addr()).await.expect("connect");
    let server_name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(server_name, tcp).await.expect("tls");
    let url = format!(
        "wss://{}/api/v1/namespaces/apps/pods/web/portforward?ports={remote}&ports={closed}",
        c.sandbox.addr()
    );
    let mut request = url.into_client_request().expect("request");
    let h = request.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {}", common::ADMIN_TOKEN)
            .parse()
            .expect("header"),
    );
    h.insert(
        "sec-websocket-protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("websocket upgrade");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v4.channel.k8s.io"
    );
    let protocol = Subprotocol::V4Channel;
    let mut next = async || loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("message");
        if let Message::Binary(b) = m {
            let decoded = channel::decode(protocol, &gatehouse_streams::ws::Message::Binary(b));
            if let Ok(Some(ChannelMessage::Data { channel, payload })) = decoded {
                return (channel, payload.to_vec());
            }
        }
    };
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next().await);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (0, remote.to_le_bytes().to_vec()),
            (1, remote.to_le_bytes().to_vec()),
            (2, closed.to_le_bytes().to_vec()),
            (3, closed.to_le_bytes().to_vec()),
        ]
    );
    // The closed port reports the kubelet's error on its error channel.
    let (ch, error) = next().await;
    assert_eq!(ch, 3);
    let error = String::from_utf8_lossy(&error).into_owned();
    assert!(
        error.starts_with(&format!("error forwarding port {closed} to pod web, uid ")),
        "{error}"
    );
    let ping = channel::encode(protocol, 0, b"ping over channels");
    let gatehouse_streams::ws::Message::Binary(ping) = ping else {
        panic!("binary protocol");
    };
    ws.send(Message::Binary(ping)).await.expect("send");
    let mut echoed = Vec::new();
    while echoed.len() < b"ping over channels".len() {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("message");
        if let Message::Binary(b) = m {
            assert_eq!(b[0], 0, "echo arrives on the first port's data channel");
            echoed.extend_from_slice(&b[1..]);
        }
    }
    assert_eq!(echoed, b"ping over channels");
    let _ = ws.close(None).await;
}
