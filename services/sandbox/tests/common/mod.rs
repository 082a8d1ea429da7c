//! Shared test harness: a seeded sandbox with its own CA, a kubeconfig, kubectl runners and a
//! raw HTTPS client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_sandbox::pki::{LocalCa, server_tls_config};
use gatehouse_sandbox::rbac::{RbacConfig, StaticToken};
use gatehouse_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const PROXY_TOKEN: &str = "proxy-token-for-tests";
/// User `bob`: authenticated, but with no RBAC rules (so no impersonation either).
pub const BOB_TOKEN: &str = "bob-token-for-tests";

pub const KUBECTL_DEADLINE: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub sandbox: SandboxHandle,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub kubeconfig: PathBuf,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

pub struct Output {
    pub success: bool,
    /// The exit code (None when killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn start() -> Cluster {
    start_with(true).await
}

pub async fn start_with(seed: bool) -> Cluster {
    let ca = LocalCa::generate("sandbox test CA").expect("CA");
    let leaf = ca
        .issue_server_cert(&["127.0.0.1", "localhost", "::1"])
        .expect("leaf");
    let tls = server_tls_config(&leaf.cert_pem, &leaf.key_pem).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut rbac = RbacConfig::demo(PROXY_TOKEN, ADMIN_TOKEN);
    rbac.tokens.push(StaticToken {
        token: BOB_TOKEN.into(),
        user: "bob".into(),
        uid: None,
        groups: vec![],
    });
    let sandbox = Sandbox::start(SandboxConfig { rbac, seed }, listener, tls)
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_pem = ca.cert_pem();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca_pem).expect("write ca");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
             users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n\
             contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: admin\ncurrent-context: sandbox\n",
            sandbox.url(),
            ca_path.display()
        ),
    )
    .expect("write kubeconfig");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca der"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(connector);
    Cluster {
        sandbox,
        dir,
        ca_pem,
        kubeconfig,
        client,
    }
}

pub fn kubectl_available() -> bool {
    std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Cluster {
    pub fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        assert!(
            kubectl_available(),
            "these tests need the real kubectl on PATH"
        );
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    pub async fn kubectl(&self, args: &[&str]) -> Output {
        let child = self.kubectl_command(args).spawn().expect("spawn kubectl");
        let out = tokio::time::timeout(KUBECTL_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {KUBECTL_DEADLINE:?}"))
            .expect("kubectl output");
        Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and fails the test, showing stderr, unless it succeeds.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.success,
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    pub fn write_file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write manifest");
        path.display().to_string()
    }

    /// Starts a long-running kubectl (e.g. `get -w`) whose stdout lines arrive on the returned channel.
    pub fn spawn_kubectl(
        &self,
        args: &[&str],
    ) -> (
        tokio::process::Child,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let mut child = self.kubectl_command(args).spawn().expect("spawn kubectl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        let resp = self.send(method, path, token, headers, body).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .expect("response body in time")
            .expect("response body")
            .to_bytes();
        HttpResponse {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and returns the response with its body unread (for watches).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.sandbox.url()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let has_content_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() && !has_content_type {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
            .expect("request");
        tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("response in time")
            .expect("response")
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.request(Method::GET, path, Some(ADMIN_TOKEN), &[], None)
            .await
    }

    pub async fn admin(&self, method: Method, path: &str, body: &str) -> HttpResponse {
        self.request(method, path, Some(ADMIN_TOKEN), &[], Some(body))
            .await
    }
}

/// Waits for a line satisfying `pred` on a kubectl stdout channel, with a deadline.
pub async fn wait_for_line(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => {
                if pred(&line) {
                    return line;
                }
                seen.push(line);
            }
            Ok(None) => panic!("output ended before {what}; saw {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

/// Reads newline-delimited watch events from a streaming body until `pred` matches one.
pub struct EventReader {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl EventReader {
    pub fn new(resp: http::Response<hyper::body::Incoming>) -> Self {
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, None at the end of the stream; panics after the deadline.
    pub async fn next(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("event JSON"));
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!("timed out waiting for a watch event"),
                Ok(None) => return None,
                Ok(Some(Err(e))) => panic!("watch body error: {e}"),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    pub async fn expect(&mut self, what: &str) -> Value {
        self.next()
            .await
            .unwrap_or_else(|| panic!("watch ended before {what}"))
    }
}
