//! What the tests that run the `gatehouse` binary against a real nats-server share.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_evidence::Ledger;
use gatehouse_proof::checkpoint::NoteVerifier;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Runs `gatehouse ARGS` to completion.
pub fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .expect("running gatehouse")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A valid `request.forwarded` event from proxy replica `replica`, for load on the stream.
pub fn event(
    replica: &str,
    n: usize,
) -> gatehouse_events::Envelope<gatehouse_events::RequestForwarded> {
    let id = gatehouse_events::EventId::new().to_string();
    gatehouse_events::Envelope::new(
        &gatehouse_events::envelope::source("proxy", replica),
        &id,
        gatehouse_events::RequestForwarded {
            request_id: id.clone(),
            upstream: "https://127.0.0.1:6443".into(),
            impersonated_user: format!("bot-{n}"),
            impersonated_groups: vec![],
        },
    )
}

/// Waits (at most a minute) until `done`.
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Entries in the ledger at `data_dir` (0 while it cannot be opened).
pub fn entries(data_dir: &std::path::Path) -> u64 {
    Ledger::open_read_only(data_dir)
        .map(|l| l.head().next_index)
        .unwrap_or(0)
}

/// `gatehouse checkpoint keygen` into `dir/checkpoint.key`: the key file and its verifier.
pub fn checkpoint_key(dir: &std::path::Path) -> (std::path::PathBuf, NoteVerifier) {
    let key_file = dir.join("checkpoint.key");
    let out = cli(&[
        "checkpoint",
        "keygen",
        "--name",
        "gatehouse.test/ledger",
        "--out",
        key_file.to_str().expect("a UTF-8 temporary path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verifier = NoteVerifier::from_vkey(&text(&out.stdout)).expect("a verifier key");
    (key_file, verifier)
}

/// `gatehouse evidence --config FILE` as a process: its admin address (`127.0.0.1:PORT`, the
/// port it bound and logged) and its log lines, kept as they arrive.
pub struct EvidenceProcess {
    pub child: tokio::process::Child,
    pub admin: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl EvidenceProcess {
    pub async fn start(config: &Path) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["evidence", "--config"])
            .arg(config)
            .env("GATEHOUSE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting gatehouse evidence");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let admin = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if line.contains("evidence metrics serving")
                    && let Some(at) = line.find("127.0.0.1:")
                {
                    let port: String = line[at + 10..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    return format!("127.0.0.1:{port}");
                }
            }
            panic!(
                "gatehouse evidence stopped before serving its admin port:\n{}",
                log.lock().unwrap().join("\n")
            );
        })
        .await
        .expect("the admin address in the log");
        // Keep draining the log so the service never blocks on a full pipe.
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, admin, log }
    }

    /// The log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// SIGTERM, then a clean exit within 30 s.
    pub async fn terminate(mut self) {
        let pid = self.child.id().expect("running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("a clean stop within 30s")
            .unwrap();
        assert!(
            status.success(),
            "gatehouse evidence exited {status}:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }
}

/// One plain HTTP/1.1 request to `addr`: the status and the body.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (_, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    (status, body.to_owned())
}

/// `gatehouse export --data-dir DATA_DIR --key KEY_FILE -o BUNDLE` (the whole ledger); fails
/// the test if it fails.
pub fn export_bundle(data_dir: &Path, key_file: &Path, bundle: &Path) {
    let out = cli(&[
        "export",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A client of the NATS server at `url` named `name`, with the `GATEHOUSE` stream in place
/// (as `gatehouse nats setup` would leave it), for tests that publish events themselves.
pub async fn publisher(url: &str, name: &str) -> gatehouse_bus::Bus {
    let config = gatehouse_bus::BusConfig::new(url);
    let bus = gatehouse_bus::Bus::connect(&config, name).await.unwrap();
    bus.ensure_stream(&config.stream).await.unwrap();
    bus
}

pub mod litewitness;
pub mod s3;
