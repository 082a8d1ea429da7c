//! Interactive sessions through the proxy with real kubectl: exec (with and without a TTY),
//! attach-style stdin, and port-forward, over WebSocket (kubectl's default) and SPDY/3.1
//! (kubectl's fallback). Each session must be relayed both ways, recorded as session.started /
//! session.data / session.ended in the ledger, and replayable.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use gatehouse_evidence::replay::{self, ReplayOptions};
use gatehouse_tests::{BedOptions, DEADLINE, Event, TestBed, eventually};
use gatehouse_up::Upstream;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

type Result = anyhow::Result<()>;

/// kubectl's switches for its two transports.
const SPDY: [(&str, &str); 2] = [
    ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
    ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
];

fn session_events<'e>(events: &'e [Event], name: &str) -> Vec<&'e Event> {
    events.iter().filter(|e| e.name() == name).collect()
}

fn data_ports(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.name() == "session.data" && e.data()["channel"] == "portin")
        .filter_map(|e| e.data()["port"].as_u64())
        .collect()
}

fn chunk_text(events: &[&Event], channel: &str) -> String {
    let mut bytes = Vec::new();
    for e in events {
        if e.data()["channel"] == channel {
            bytes.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(e.data()["data"].as_str().unwrap_or_default())
                    .unwrap_or_default(),
            );
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// How the command's failure reaches the client: kwok (the control plane's fake kubelet) says
/// "exit status N" in an error, a kubelet (and the sandbox, which behaves as one here) sends the
/// exit code itself. Either way the proxy relays the status channel as it came.
#[derive(Clone, Copy, PartialEq)]
enum Kubelet {
    Kwok,
    ReportsExitCodes,
}

async fn exec_records_outputs_and_exit_code(spdy: bool, kubelet: Kubelet) -> Result {
    let bed = TestBed::start_with(BedOptions {
        upstream: match kubelet {
            Kubelet::Kwok => Upstream::ControlPlane,
            Kubelet::ReportsExitCodes => Upstream::Sandbox,
        },
        ..BedOptions::default()
    })
    .await?;
    let mut command = bed.kubectl_command_as(
        "ci-deployer",
        &[
            "exec",
            "web",
            "-n",
            "apps",
            "--",
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; exit 3",
        ],
    )?;
    if spdy {
        command.envs(SPDY);
    }
    let output = tokio::time::timeout(DEADLINE, command.stdin(Stdio::null()).output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let exit_code = match kubelet {
        Kubelet::ReportsExitCodes => Some(3),
        Kubelet::Kwok => {
            assert!(stderr.contains("exit status 3"), "{stderr}");
            Some(1)
        }
    };
    assert_eq!(
        output.status.code(),
        exit_code,
        "stdout {stdout} stderr {stderr}"
    );
    assert!(stdout.contains("out-line"), "{stdout}");
    assert!(stderr.contains("err-line"), "{stderr}");

    let finished = bed.finish().await?;
    let started = session_events(&finished.events, "session.started");
    assert_eq!(started.len(), 1);
    let s = started[0].data();
    assert_eq!(s["kind"], "exec");
    assert_eq!(s["transport"], if spdy { "spdy" } else { "websocket" });
    assert_eq!(s["pod"], "web");
    assert_eq!(
        s["command"],
        serde_json::json!(["sh", "-c", "echo out-line; echo err-line >&2; exit 3"])
    );
    let session_id = s["session_id"].as_str().unwrap().to_owned();
    let data = session_events(&finished.events, "session.data");
    assert!(chunk_text(&data, "stdout").contains("out-line"));
    assert!(chunk_text(&data, "stderr").contains("err-line"));
    let seqs: Vec<u64> = data
        .iter()
        .map(|e| e.data()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "chunks in order, no gaps"
    );
    let ended = session_events(&finished.events, "session.ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].data()["end"], "closed");
    match kubelet {
        Kubelet::ReportsExitCodes => assert_eq!(ended[0].data()["exit_code"], 3),
        Kubelet::Kwok => {
            let message = ended[0].data()["message"].as_str().unwrap_or_default();
            assert!(message.contains("exit status 3"), "{}", ended[0].data());
        }
    }

    // The ledger replays it.
    let recording = replay::load(&finished.data_dir, &session_id)?;
    assert!(recording.missing.is_empty());
    let mut transcript = Vec::new();
    assert!(replay::print(
        &recording,
        ReplayOptions::default(),
        &mut transcript
    )?);
    let transcript = String::from_utf8(transcript)?;
    assert!(
        transcript.contains("out-line") && transcript.contains("err-line"),
        "{transcript}"
    );
    if kubelet == Kubelet::ReportsExitCodes {
        assert!(transcript.contains("exit code 3"), "{transcript}");
    }
    assert!(transcript.contains("ci-deployer"), "{transcript}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_is_relayed_and_recorded() -> Result {
    exec_records_outputs_and_exit_code(false, Kubelet::Kwok).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_is_relayed_and_recorded() -> Result {
    exec_records_outputs_and_exit_code(true, Kubelet::Kwok).await
}

/// kwok does not pass exit codes on; the sandbox's kubelet protocol does, as a kubelet does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_code_from_the_kubelet_reaches_kubectl_and_the_record() -> Result {
    exec_records_outputs_and_exit_code(false, Kubelet::ReportsExitCodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stdin_is_recorded_before_it_reaches_the_pod() -> Result {
    let bed = TestBed::start().await?;
    let out = bed
        .kubectl_stdin(
            "ci-deployer",
            // One line: kwok does not pass the end of stdin on, so `cat` would never end.
            &["exec", "-i", "web", "-n", "apps", "--", "head", "-n", "1"],
            "typed-by-the-bot\n",
        )
        .await?;
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("typed-by-the-bot"), "{}", out.stdout);
    let finished = bed.finish().await?;
    let data = session_events(&finished.events, "session.data");
    assert!(chunk_text(&data, "stdin").contains("typed-by-the-bot"));
    assert!(chunk_text(&data, "stdout").contains("typed-by-the-bot"));
    // What was typed is in the stream before what the pod echoed.
    let first = |channel: &str| {
        data.iter()
            .find(|e| e.data()["channel"] == channel)
            .map(|e| e.sequence)
            .unwrap()
    };
    assert!(first("stdin") < first("stdout"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_output_is_masked_before_it_is_recorded() -> Result {
    let bed = TestBed::start().await?;
    let out = bed
        .kubectl(
            "ci-deployer",
            &[
                "exec",
                "web",
                "-n",
                "apps",
                "--",
                "sh",
                "-c",
                "echo db password=hunter2-live ok",
            ],
        )
        .await?;
    assert!(out.success, "{}", out.stderr);
    let finished = bed.finish().await?;
    let data = session_events(&finished.events, "session.data");
    let stdout = chunk_text(&data, "stdout");
    assert!(stdout.contains("db ") && stdout.contains(" ok"), "{stdout}");
    assert!(!stdout.contains("hunter2-live"), "{stdout}");
    assert!(data.iter().any(|e| e.data()["masked"].as_u64() > Some(0)));
    // Nowhere in the record: not in the chunk, not in the command of session.started.
    for event in &finished.events {
        assert!(
            !event.bytes.windows(12).any(|w| w == b"hunter2-live"),
            "{} holds the value",
            event.name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tty_session_is_recorded_and_exports_as_asciicast() -> Result {
    let bed = TestBed::start().await?;
    let argv = bed.kubectl_argv(
        "ci-deployer",
        &["exec", "-it", "web", "-n", "apps", "--", "sh"],
    )?;
    let line = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    // A terminal of a known size, so the recorded resize can be checked.
    let line = format!("stty cols 100 rows 30; {line}");
    // `script` gives kubectl a pseudo-terminal, so it asks for a TTY as a person's would.
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("HOME", bed.home())
        .env("TERM", "xterm")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdin.write_all(b"echo tty-says-$((6*7))\n").await?;
    let mut seen = String::new();
    tokio::time::timeout(DEADLINE, async {
        let mut line = String::new();
        while !seen.contains("tty-says-42") {
            line.clear();
            if stdout.read_line(&mut line).await? == 0 {
                break;
            }
            seen.push_str(&line);
        }
        anyhow::Ok(())
    })
    .await??;
    assert!(seen.contains("tty-says-42"), "{seen}");
    stdin.write_all(b"exit 5\n").await?;
    let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
    // kwok reports the shell's exit as an error naming it (see exec_records_outputs_…).
    assert_eq!(status.code(), Some(1));

    let finished = bed.finish().await?;
    let started = session_events(&finished.events, "session.started");
    assert_eq!(started[0].data()["tty"], true);
    let session_id = started[0].data()["session_id"].as_str().unwrap().to_owned();
    let data = session_events(&finished.events, "session.data");
    assert!(
        data.iter().any(|e| e.data()["channel"] == "resize"
            && e.data()["resize"] == serde_json::json!({"width": 100, "height": 30})),
        "the terminal size was recorded"
    );
    let ended = session_events(&finished.events, "session.ended")[0].data();
    assert!(
        ended["message"]
            .as_str()
            .is_some_and(|m| m.contains("exit status 5")),
        "{ended}"
    );

    let recording = replay::load(&finished.data_dir, &session_id)?;
    let mut cast = Vec::new();
    replay::asciicast(&recording, ReplayOptions { input: true }, &mut cast)?;
    let cast = String::from_utf8(cast)?;
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap())?;
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64() > Some(0));
    let events: Vec<serde_json::Value> = lines
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let mut last = 0.0;
    for e in &events {
        let at = e[0].as_f64().unwrap();
        assert!(at >= last, "asciicast times never go back");
        last = at;
        assert!(matches!(e[1].as_str(), Some("o" | "i" | "r")));
    }
    let output: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(output.contains("tty-says-42"), "{output}");
    Ok(())
}

async fn echo_server() -> anyhow::Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((port, task))
}

async fn port_forward_reaches_a_real_port(spdy: bool) -> Result {
    let bed = TestBed::start().await?;
    let (port, _server) = echo_server().await?;
    // kwok forwards the pod's ports where it is told: here, to the echo server.
    bed.forward_pod_ports("apps", "web", port).await?;
    let target = format!(":{port}");
    let mut command = bed.kubectl_command_as(
        "ci-deployer",
        &["port-forward", "-n", "apps", "pod/web", &target],
    )?;
    if spdy {
        command.envs(SPDY);
    }
    let mut child = command.stdin(Stdio::null()).spawn()?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // "Forwarding from 127.0.0.1:LOCAL -> PORT"
    let local: u16 = tokio::time::timeout(DEADLINE, async {
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).await? == 0 {
                anyhow::bail!("kubectl port-forward exited");
            }
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
                && let Some((local, _)) = rest.split_once(' ')
            {
                return Ok(local.parse()?);
            }
        }
    })
    .await??;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", local)).await?;
    socket.write_all(b"ping-through-gatehouse").await?;
    let mut echoed = vec![0u8; 22];
    tokio::time::timeout(DEADLINE, socket.read_exact(&mut echoed)).await??;
    assert_eq!(&echoed, b"ping-through-gatehouse");
    drop(socket);

    let reader = &bed;
    eventually(
        "the port-forward data to be recorded",
        DEADLINE,
        || async move {
            let events = reader.events().await.ok()?;
            let data: Vec<&Event> = events
                .iter()
                .filter(|e| e.name() == "session.data")
                .collect();
            (chunk_text(&data, "portout").contains("ping-through-gatehouse")
                && chunk_text(&data, "portin").contains("ping-through-gatehouse"))
            .then_some(())
        },
    )
    .await?;
    child.kill().await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    let finished = bed.finish().await?;
    let started = session_events(&finished.events, "session.started");
    assert_eq!(started[0].data()["kind"], "portforward");
    // kubectl names the port in each stream's headers, not in the request's query.
    let ports = data_ports(&finished.events);
    assert!(
        !ports.is_empty() && ports.iter().all(|p| *p == u64::from(port)),
        "chunks name the pod port: {ports:?}"
    );
    let data = session_events(&finished.events, "session.data");
    assert!(
        data.iter()
            .filter(|e| e.data()["channel"] == "portin")
            .all(|e| e.data()["port"] == port),
        "chunks name the pod port"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_websocket_reaches_a_real_port() -> Result {
    port_forward_reaches_a_real_port(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy_reaches_a_real_port() -> Result {
    port_forward_reaches_a_real_port(true).await
}
