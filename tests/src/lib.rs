//! Support for Gatehouse's integration tests.
//!
//! A [`TestBed`] is the same [`Stack`] `gatehouse up` runs — a real `nats-server` (its own port
//! and store), a real Kubernetes control plane of its own (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok; seeded with the demo cluster), the demo OIDC
//! issuer, the evidence service on RocksDB and the proxy — in a temporary directory, plus what a
//! test needs to drive it: real kubectl (the control plane's release) with per-identity
//! kubeconfigs, raw HTTPS requests with any token, the events on the stream, and what reached
//! the cluster (from the apiserver's own audit log). [`TestBed::finish`] checks what every test
//! must leave behind: every event valid against its schema, the ledger holding exactly the
//! events the stream holds, the chain verifying, and the apiserver's audit log and the ledger
//! agreeing request by request.
//!
//! [`bench`] is the benchmark harness (`tests/bench/run`, `tests/bench/soak`).
#![forbid(unsafe_code)]

pub mod bench;
pub mod conformance;
pub mod nats_cluster;
pub mod tamper;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use gatehouse_bus::Bus;
use gatehouse_events::schema::{SchemaSet, default_dir};
use gatehouse_evidence::Ledger;
use gatehouse_evidence::verify;
use gatehouse_proxy::http_client::{HttpsClient, client_tls, https_client};
use gatehouse_up::{Stack, StackOptions, Upstream};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tempfile::TempDir;

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or fails after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Test logs go to the test's output; `RUST_LOG=debug` for more.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,async_nats=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A valid event (a `request.forwarded` for a bot), for tests that need events on the stream.
pub fn sample_event(n: usize) -> gatehouse_events::Envelope<gatehouse_events::RequestForwarded> {
    let id = gatehouse_events::EventId::new().to_string();
    gatehouse_events::Envelope::new(
        &gatehouse_events::envelope::source("proxy", "test"),
        &id,
        gatehouse_events::RequestForwarded {
            request_id: id.clone(),
            upstream: "https://127.0.0.1:6443".into(),
            impersonated_user: format!("bot-{n}"),
            impersonated_groups: vec![],
        },
    )
}

/// One event as stored in the stream.
#[derive(Debug, Clone)]
pub struct Event {
    pub sequence: u64,
    pub bytes: Bytes,
    pub value: Value,
}

impl Event {
    /// The short name: `request.received` for `dev.gatehouse.request.received.v1`.
    pub fn name(&self) -> &str {
        self.value["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("dev.gatehouse."))
            .and_then(|t| t.rsplit_once(".v").map(|(name, _)| name))
            .unwrap_or("")
    }

    pub fn subject(&self) -> &str {
        self.value["subject"].as_str().unwrap_or("")
    }

    pub fn data(&self) -> &Value {
        &self.value["data"]
    }
}

/// The Python interpreter that has the `kubernetes` client (`deploy/local/setup` installs it
/// into a virtualenv beside the build cache).
pub fn python() -> Result<PathBuf> {
    let venv = std::env::var_os("GATEHOUSE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gatehouse/venv"))
        })
        .context("HOME is not set")?;
    let python = venv.join("bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run deploy/local/setup to install the Python kubernetes client",
            python.display()
        );
    }
    Ok(python)
}

/// The kubectl of the control plane's release (`deploy/controlplane/build`), so the client's
/// version is a choice, not whatever the machine has.
pub fn kubectl_program() -> PathBuf {
    static KUBECTL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KUBECTL
        .get_or_init(|| match gatehouse_controlplane::Binaries::locate() {
            Ok(binaries) => binaries.kubectl(),
            Err(e) => {
                tracing::warn!(error = %e, "the control plane's kubectl is not built; using kubectl on PATH");
                PathBuf::from("kubectl")
            }
        })
        .clone()
}

/// The client-go informer of `tests/clientgo` (an operator-shaped client: list and watch with
/// protobuf), built with `go build` on first use into the cache, keyed by its sources.
pub fn clientgo_informer() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_clientgo().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("building tests/clientgo: {e}"))
}

fn build_clientgo() -> Result<PathBuf> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clientgo");
    let mut hasher = blake3::Hasher::new();
    for name in ["go.mod", "go.sum", "main.go"] {
        hasher.update(&std::fs::read(source.join(name))?);
    }
    let key = hasher.finalize().to_hex();
    let cache = std::env::var_os("GATEHOUSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gatehouse")))
        .context("HOME is not set")?;
    let dir = cache.join("clientgo").join(&key[..16]);
    let binary = dir.join("informer");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir)?;
    let partial = dir.join(format!("informer.{}", std::process::id()));
    let status = std::process::Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&source)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("CGO_ENABLED", "0")
        .status()
        .context("running go (Go 1.26 or newer is needed)")?;
    if !status.success() {
        bail!("go build failed ({status})");
    }
    std::fs::rename(&partial, &binary)?;
    Ok(binary)
}

/// One request that reached the cluster.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The apiserver's audit id: Gatehouse's request id for what the proxy forwarded.
    pub audit_id: Option<String>,
    pub method: String,
    /// The Kubernetes verb (`list`, `watch`, …) as the cluster saw it; empty on the sandbox.
    pub verb: String,
    pub path: String,
    pub query: Option<String>,
    /// From the bearer token.
    pub authenticated_user: Option<String>,
    pub impersonated_user: Option<String>,
    pub impersonated_groups: Vec<String>,
    /// Who RBAC evaluated.
    pub effective_user: Option<String>,
    /// 0 while the response has not completed.
    pub status: u16,
    /// Lowercase header names received (the sandbox records them; the audit log does not).
    pub header_names: Option<Vec<String>>,
}

impl From<gatehouse_sandbox::RecordedRequest> for UpstreamRequest {
    fn from(r: gatehouse_sandbox::RecordedRequest) -> Self {
        Self {
            audit_id: None,
            method: r.method,
            verb: String::new(),
            path: r.path,
            query: r.query,
            authenticated_user: r.authenticated_user,
            impersonated_user: r.impersonated_user,
            impersonated_groups: r.impersonated_groups,
            effective_user: r.effective_user,
            status: r.status,
            header_names: Some(r.header_names),
        }
    }
}

/// Whether the cluster received `r` from the proxy on a caller's behalf (not one of the proxy's
/// reviews of its own credential).
fn forwarded_by(r: &UpstreamRequest, proxy: &str) -> bool {
    r.authenticated_user.as_deref() == Some(proxy)
        && !r.audit_id.as_deref().is_some_and(|id| {
            id.starts_with(gatehouse_proxy::forward::CREDENTIAL_CHECK_AUDIT_PREFIX)
        })
}

impl UpstreamRequest {
    /// One per audit id, its last stage (ResponseComplete when there is one), in log order.
    fn from_audit(events: &[gatehouse_controlplane::AuditEvent]) -> Vec<Self> {
        let mut out: Vec<Self> = Vec::new();
        for e in events {
            let (path, query) = match e.request_uri.split_once('?') {
                Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                None => (e.request_uri.clone(), None),
            };
            let method = match e.verb.as_str() {
                "get" | "list" | "watch" => "GET",
                "create" | "post" => "POST",
                "update" | "put" => "PUT",
                "patch" => "PATCH",
                "delete" | "deletecollection" => "DELETE",
                other => other,
            }
            .to_owned();
            let request = Self {
                audit_id: Some(e.audit_id.clone()),
                method,
                verb: e.verb.clone(),
                path,
                query,
                authenticated_user: Some(e.user.username.clone()),
                impersonated_user: e.impersonated_user.as_ref().map(|u| u.username.clone()),
                impersonated_groups: e
                    .impersonated_user
                    .as_ref()
                    .map(|u| u.groups.clone())
                    .unwrap_or_default(),
                effective_user: Some(
                    e.impersonated_user
                        .as_ref()
                        .unwrap_or(&e.user)
                        .username
                        .clone(),
                ),
                status: if e.stage == "ResponseComplete" {
                    e.response_status.as_ref().map_or(0, |s| s.code)
                } else {
                    0
                },
                header_names: None,
            };
            match out
                .iter_mut()
                .find(|r| r.audit_id.as_deref() == Some(e.audit_id.as_str()))
            {
                Some(seen) => *seen = request,
                None => out.push(request),
            }
        }
        out
    }
}

/// kubectl's exit status and output.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// A raw HTTPS response from the proxy.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub request_id: Option<String>,
    /// The body exactly as received.
    pub bytes: Bytes,
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub body: Value,
}

/// One plain GET (an admin port's `/metrics`, `/readyz`): the status and the body as text.
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    let client = https_client::<Full<Bytes>>(client_tls(None, true)?, Duration::from_secs(5));
    let response = client.get(url.parse()?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// What to start a [`TestBed`] with beyond the demo.
#[derive(Debug, Default, Clone)]
pub struct BedOptions {
    /// Files written into `config/` before the stack starts (`policy.yaml`,
    /// `approvers.yaml`, `identities.yaml`): the stack keeps files it finds.
    pub config_files: Vec<(String, String)>,
    /// YAML sections (`slack:`, `teams:`, `discord:`) for the approval service.
    pub approval_channels: String,
    /// The cluster behind the proxy: the local control plane unless a test says otherwise.
    pub upstream: Upstream,
    /// Timeouts and connection limits of every listener, as a YAML mapping
    /// (`{header_read_timeout: 1s}`); empty: the defaults.
    pub connections: String,
    /// An external NATS (e.g. a [`nats_cluster::NatsCluster`]) instead of the stack's own, its
    /// users, and the replicas of the stream and buckets on it.
    pub nats_url: Option<String>,
    pub nats_keys: Option<gatehouse::nats_server::NatsKeys>,
    pub nats_replicas: usize,
}

pub struct TestBed {
    stack: Option<Stack>,
    /// Holds the data directory; dropped (deleted) with the test bed.
    _dir: TempDir,
    /// kubectl's HOME and discovery cache, so nothing leaks between tests or from the host.
    home: TempDir,
    /// A separate NATS client for reading the stream.
    reader: Bus,
    client: HttpsClient<Full<Bytes>>,
    schemas: SchemaSet,
}

impl TestBed {
    /// Starts a complete stack in a fresh temporary directory.
    pub async fn start() -> Result<Self> {
        Self::start_with(BedOptions::default()).await
    }

    /// [`TestBed::start`] with configuration files written first and chat platforms for the
    /// approval service.
    pub async fn start_with(options: BedOptions) -> Result<Self> {
        init_logging();
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-test-")
            .tempdir()?;
        let home = tempfile::Builder::new()
            .prefix("gatehouse-kubectl-")
            .tempdir()?;
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir)?;
        for (name, text) in &options.config_files {
            std::fs::write(config_dir.join(name), text)?;
        }
        let stack = Stack::start(
            dir.path(),
            &StackOptions {
                upstream: options.upstream.clone(),
                approval_channels: options.approval_channels.clone(),
                connections: options.connections.clone(),
                nats_url: options.nats_url.clone(),
                nats_keys: options.nats_keys.clone(),
                nats_replicas: options.nats_replicas.max(1),
                // An old resourceVersion answers 410 Gone within seconds, as on a busy cluster.
                etcd_compaction_interval: Some(Duration::from_secs(10)),
                ..StackOptions::default()
            },
        )
        .await?;
        // The admin user: the stack's nats-server admits no anonymous client.
        let reader = Bus::connect(
            &stack.nats_config(gatehouse::nats_server::NatsRole::Admin),
            "gatehouse-test-reader",
        )
        .await?;
        let tls = client_tls(Some(&stack.dir.join("tls").join("ca.pem")), false)?;
        Ok(Self {
            stack: Some(stack),
            _dir: dir,
            home,
            reader,
            client: https_client(tls, Duration::from_secs(5)),
            schemas: SchemaSet::load(&default_dir())?,
        })
    }

    pub fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("the stack is running")
    }

    /// The permissions violations the stack's nats-server logged: each is a service using a
    /// subject its credential does not allow. Empty when all is well (or NATS is external).
    pub fn nats_refusals(&self) -> Result<Vec<String>> {
        let Some(server) = self.stack().nats_server.as_ref() else {
            return Ok(Vec::new());
        };
        Ok(std::fs::read_to_string(server.log_file())?
            .lines()
            .filter(|line| line.contains("Violation"))
            .map(str::to_owned)
            .collect())
    }

    pub fn stack_mut(&mut self) -> &mut Stack {
        self.stack.as_mut().expect("the stack is running")
    }

    /// A token from the demo issuer for `principal`, valid for an hour.
    pub fn mint(&self, principal: &str) -> Result<String> {
        Ok(self.stack().issuer.mint(
            principal,
            gatehouse_up::demo::AUDIENCE,
            &[],
            Duration::from_secs(3600),
        )?)
    }

    /// A client of the approval service's API, as `identity` (a token from the demo issuer).
    pub fn approvals_as(
        &self,
        identity: &str,
    ) -> Result<gatehouse_approval::client::ApprovalClient> {
        let token = self.mint(identity)?;
        Ok(gatehouse_approval::client::ApprovalClient::new(
            &self.stack().approval_url(),
            &token,
            None,
        )?)
    }

    /// Signs arbitrary claims with the demo issuer's real key.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        Ok(self.stack().issuer.keys().sign(claims)?)
    }

    /// A GitHub Actions-shaped token from the second demo issuer for workflow runs of
    /// `repository` (`owner/name`) in `environment` (if any) on `git_ref`.
    pub fn mint_github(
        &self,
        repository: &str,
        environment: Option<&str>,
        git_ref: &str,
    ) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let owner = repository.split('/').next().unwrap_or(repository);
        let subject = match environment {
            Some(env) => format!("repo:{repository}:environment:{env}"),
            None => format!("repo:{repository}:ref:{git_ref}"),
        };
        let mut claims = serde_json::json!({
            "iss": self.stack().ci_issuer.url(),
            "aud": gatehouse_up::demo::AUDIENCE,
            "sub": subject,
            "repository": repository,
            "repository_owner": owner,
            "ref": git_ref,
            "ref_type": "branch",
            "workflow": "deploy",
            "job_workflow_ref": format!("{repository}/.github/workflows/deploy.yml@{git_ref}"),
            "event_name": "push",
            "actor": "octocat",
            "run_id": "4242",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        });
        if let Some(env) = environment {
            claims["environment"] = env.into();
        }
        Ok(self.stack().ci_issuer.keys().sign(&claims)?)
    }

    /// GET on the proxy's admin port (plain HTTP): (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&format!("{}{path}", self.stack().proxy_admin_url())).await
    }

    /// The demo issuer's URL (the `iss` it mints).
    pub fn issuer_url(&self) -> String {
        self.stack().issuer.url().to_owned()
    }

    /// Runs kubectl through the proxy as `principal` (a token from the demo issuer).
    pub async fn kubectl(&self, principal: &str, args: &[&str]) -> Result<KubectlOutput> {
        let token = self.mint(principal)?;
        self.kubectl_with_token(principal, &token, args).await
    }

    /// Runs kubectl through the proxy with any token.
    pub async fn kubectl_with_token(
        &self,
        name: &str,
        token: &str,
        args: &[&str],
    ) -> Result<KubectlOutput> {
        let kubeconfig = self.stack().write_kubeconfig(name, token, "apps")?;
        self.run_kubectl(kubeconfig, args, None).await
    }

    /// Starts kubectl through the proxy as `principal` without waiting for it (for `-w`), with
    /// its stdout piped. Killed when dropped.
    pub fn kubectl_spawn(&self, principal: &str, args: &[&str]) -> Result<tokio::process::Child> {
        let token = self.mint(principal)?;
        let kubeconfig = self.stack().write_kubeconfig(principal, &token, "apps")?;
        self.kubectl_command(&kubeconfig, args)
            .stdin(Stdio::null())
            .spawn()
            .context("running kubectl")
    }

    /// kubectl with this test bed's kubeconfig, HOME and discovery cache, output piped.
    fn kubectl_command(
        &self,
        kubeconfig: &std::path::Path,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(kubectl_program());
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.path().join("cache"))
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// A kubeconfig for `principal` with a fresh token from the demo issuer.
    pub fn kubeconfig(&self, principal: &str) -> Result<PathBuf> {
        let token = self.mint(principal)?;
        self.stack().write_kubeconfig(principal, &token, "apps")
    }

    /// kubectl as `principal`, not yet started: for tests that need their own stdio or
    /// environment (a pseudo-terminal, `KUBECTL_*` switches).
    pub fn kubectl_command_as(
        &self,
        principal: &str,
        args: &[&str],
    ) -> Result<tokio::process::Command> {
        let kubeconfig = self.kubeconfig(principal)?;
        Ok(self.kubectl_command(&kubeconfig, args))
    }

    /// The full kubectl command line as `principal` (program first), for wrapping kubectl in
    /// another program such as `script`, which gives it a pseudo-terminal.
    pub fn kubectl_argv(&self, principal: &str, args: &[&str]) -> Result<Vec<String>> {
        let kubeconfig = self.kubeconfig(principal)?;
        let mut argv = vec![
            kubectl_program().display().to_string(),
            "--kubeconfig".to_owned(),
            kubeconfig.display().to_string(),
            "--cache-dir".to_owned(),
            self.home.path().join("cache").display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        Ok(argv)
    }

    /// kubectl's HOME for this test bed.
    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    /// Runs kubectl with `stdin` piped in (for `-f -`).
    pub async fn kubectl_stdin(
        &self,
        principal: &str,
        args: &[&str],
        stdin: &str,
    ) -> Result<KubectlOutput> {
        let token = self.mint(principal)?;
        let kubeconfig = self.stack().write_kubeconfig(principal, &token, "apps")?;
        self.run_kubectl(kubeconfig, args, Some(stdin)).await
    }

    async fn run_kubectl(
        &self,
        kubeconfig: PathBuf,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<KubectlOutput> {
        let mut request_timeout = vec!["--request-timeout", "30s"];
        request_timeout.extend_from_slice(args);
        let mut child = self
            .kubectl_command(&kubeconfig, &request_timeout)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .context("running kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            pipe.write_all(text.as_bytes()).await?;
        }
        let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .map_err(|_| anyhow!("kubectl {args:?} did not finish within 90s"))??;
        Ok(KubectlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Sends one HTTPS request to the proxy. `authorization` is the whole header value.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<&str>,
    ) -> Result<Reply> {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| vec![("authorization", value)])
            .unwrap_or_default();
        self.request_with(method, path, &headers, body).await
    }

    /// Sends one HTTPS request to the proxy with the given headers (repeats allowed).
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply> {
        let proxy = self.stack().proxy_url();
        self.request_via(&proxy, method, path, headers, body).await
    }

    /// [`TestBed::request_with`] to another proxy of this stack (`https://…`, the demo CA's
    /// certificate).
    pub async fn request_via(
        &self,
        proxy: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("{proxy}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        // JSON unless the test says otherwise: a second, different Accept or Content-Type
        // would be refused by the proxy as a request read two ways.
        let given = |wanted: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(wanted));
        if !given("accept") {
            builder = builder.header("accept", "application/json");
        }
        if body.is_some() && !given("content-type") {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))?;
        let response = self.client.request(request).await?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get(gatehouse_proxy::rescue::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            request_id,
            bytes,
            body,
        })
    }

    /// `request` with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> Result<Reply> {
        self.request("GET", path, Some(&format!("Bearer {token}")), None)
            .await
    }

    /// Who the cluster sees as the proxy: its ServiceAccount on the control plane.
    pub fn proxy_identity(&self) -> &'static str {
        self.proxy_identity_of(self.stack())
    }

    fn proxy_identity_of(&self, stack: &Stack) -> &'static str {
        match &stack.cluster {
            gatehouse_up::cluster::Cluster::Sandbox { .. } => "gatehouse-proxy",
            _ => "system:serviceaccount:gatehouse:gatehouse-proxy",
        }
    }

    /// The first request the cluster received from the proxy at `path`.
    pub async fn upstream_request(&self, path: &str) -> Result<UpstreamRequest> {
        self.upstream_requests()
            .await?
            .into_iter()
            .find(|r| r.path == path)
            .with_context(|| format!("no request for {path} reached the cluster"))
    }

    /// Every request the cluster has received from the proxy so far, once every request the
    /// stream shows as forwarded is in it (the apiserver writes its audit event as the response
    /// completes, which can be just after the client has it).
    pub async fn upstream_requests(&self) -> Result<Vec<UpstreamRequest>> {
        let cluster = &self.stack().cluster;
        let proxy = self.proxy_identity();
        let from_proxy = move |r: &UpstreamRequest| forwarded_by(r, proxy);
        if let Some(sandbox) = cluster.sandbox() {
            return Ok(sandbox
                .requests()
                .into_iter()
                .map(UpstreamRequest::from)
                .filter(from_proxy)
                .collect());
        }
        let plane = cluster
            .control_plane()
            .context("this test bed's cluster records no requests")?;
        let forwarded: Vec<String> = self
            .events()
            .await?
            .iter()
            .filter(|e| e.name() == "request.forwarded")
            .map(|e| e.subject().to_owned())
            .collect();
        eventually(
            "the apiserver's audit log to hold every forwarded request",
            DEADLINE,
            || async {
                let audit = plane.audit_events().ok()?;
                forwarded
                    .iter()
                    .all(|id| audit.iter().any(|e| &e.audit_id == id))
                    .then(|| {
                        UpstreamRequest::from_audit(&audit)
                            .into_iter()
                            .filter(from_proxy)
                            .collect()
                    })
            },
        )
        .await
    }

    /// What the cluster has recorded from the proxy so far, without waiting for anything (for
    /// when NATS is down and the stream cannot say what to wait for). [`TestBed::finish`]
    /// checks the whole audit log against the ledger in the end.
    pub fn upstream_requests_now(&self) -> Result<Vec<UpstreamRequest>> {
        let cluster = &self.stack().cluster;
        let proxy = self.proxy_identity();
        let all: Vec<UpstreamRequest> = match (cluster.sandbox(), cluster.control_plane()) {
            (Some(sandbox), _) => sandbox
                .requests()
                .into_iter()
                .map(UpstreamRequest::from)
                .collect(),
            (None, Some(plane)) => UpstreamRequest::from_audit(&plane.audit_events()?),
            (None, None) => bail!("this test bed's cluster records no requests"),
        };
        Ok(all.into_iter().filter(|r| forwarded_by(r, proxy)).collect())
    }

    fn control_plane(&self) -> Result<&gatehouse_controlplane::ControlPlane> {
        self.stack()
            .cluster
            .control_plane()
            .context("this test bed's cluster is not the local control plane")
    }

    /// Makes kwok forward every port of pod `namespace/name` to `127.0.0.1:target`.
    pub async fn forward_pod_ports(&self, namespace: &str, name: &str, target: u16) -> Result<()> {
        Ok(self
            .control_plane()?
            .forward_pod_ports(namespace, name, target)
            .await?)
    }

    /// Appends lines to what pod `namespace/name`'s containers print (`kubectl logs`).
    pub async fn append_pod_log(&self, namespace: &str, name: &str, lines: &[&str]) -> Result<()> {
        let path = self.control_plane()?.pod_log(namespace, name).await?;
        gatehouse_controlplane::files::append_container_log(&path, lines)
            .with_context(|| format!("appending to {}", path.display()))
    }

    /// Watches through the proxy the cluster is still serving.
    pub fn upstream_open_watches(&self) -> Result<usize> {
        let cluster = &self.stack().cluster;
        if let Some(sandbox) = cluster.sandbox() {
            return Ok(sandbox.open_watches());
        }
        let plane = cluster
            .control_plane()
            .context("this test bed's cluster records no requests")?;
        let proxy = self.proxy_identity();
        let audit = plane.audit_events()?;
        let watches = audit
            .iter()
            .filter(|e| e.verb == "watch" && e.user.username == proxy);
        let started: std::collections::BTreeSet<&str> = watches
            .clone()
            .filter(|e| e.stage == "ResponseStarted")
            .map(|e| e.audit_id.as_str())
            .collect();
        let ended: std::collections::BTreeSet<&str> = watches
            .filter(|e| e.stage == "ResponseComplete" || e.stage == "Panic")
            .map(|e| e.audit_id.as_str())
            .collect();
        Ok(started.difference(&ended).count())
    }

    /// Every event in the stream, in order.
    pub async fn events(&self) -> Result<Vec<Event>> {
        // Reading takes a fresh consumer; just after a cluster node was lost, creating one
        // can time out while the cluster settles, so it is tried again until the deadline.
        let last_error = std::cell::RefCell::new(None);
        let all = eventually("a read of the whole stream", DEADLINE, || async {
            match self.reader.read_all().await {
                Ok(all) => Some(all),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream; trying again");
                    *last_error.borrow_mut() = Some(e.to_string());
                    None
                }
            }
        })
        .await
        .map_err(|timeout| match last_error.take() {
            Some(e) => anyhow::anyhow!("{timeout}; the last read failed: {e}"),
            None => timeout,
        })?;
        all.into_iter()
            .map(|(sequence, bytes)| {
                let value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("event {sequence} is not JSON"))?;
                Ok(Event {
                    sequence,
                    bytes,
                    value,
                })
            })
            .collect()
    }

    /// Waits until the events of `request_id` include every name in `names`, and returns them
    /// in stream order.
    pub async fn events_of(&self, request_id: &str, names: &[&str]) -> Result<Vec<Event>> {
        eventually(
            &format!("events {names:?} of request {request_id}"),
            DEADLINE,
            || async {
                let events: Vec<Event> = self
                    .events()
                    .await
                    .ok()?
                    .into_iter()
                    .filter(|e| e.subject() == request_id)
                    .collect();
                names
                    .iter()
                    .all(|n| events.iter().any(|e| e.name() == *n))
                    .then_some(events)
            },
        )
        .await
    }

    /// The `request.received` events so far, newest last.
    pub async fn received(&self) -> Result<Vec<Event>> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .filter(|e| e.name() == "request.received")
            .collect())
    }

    /// Checks what every test must leave behind, then stops the stack:
    /// - every event on the stream validates against its JSON Schema;
    /// - every request that was received has its outcome recorded (denied, or forwarded and
    ///   completed);
    /// - the ledger holds exactly the stream's events, byte for byte, in stream order;
    /// - the chain verifies.
    ///
    /// Returns the data directory's ledger path owner, so a test can go on to tamper with it.
    pub async fn finish(mut self) -> Result<Finished> {
        // Events a NATS outage made the proxy send again must have landed first.
        eventually(
            "the proxy to have no event left to retry",
            DEADLINE,
            || async {
                let (_, metrics) = self.admin_get("/metrics").await.ok()?;
                metrics
                    .lines()
                    .any(|l| l.trim() == "gatehouse_proxy_events_retrying 0")
                    .then_some(())
            },
        )
        .await?;
        let events = self.events().await?;
        for event in &events {
            self.schemas
                .validate(&event.bytes)
                .with_context(|| format!("event {} ({})", event.sequence, event.name()))?;
        }
        // Let in-flight completions land, then check each request's story is whole.
        let events = eventually(
            "every request's outcome to be recorded",
            DEADLINE,
            || async {
                let events = self.events().await.ok()?;
                let received: Vec<&Event> = events
                    .iter()
                    .filter(|e| e.name() == "request.received")
                    .collect();
                received
                    .iter()
                    .all(|r| {
                        let mine: Vec<&str> = events
                            .iter()
                            .filter(|e| e.subject() == r.subject())
                            .map(Event::name)
                            .collect();
                        mine.contains(&"request.denied")
                            || mine.contains(&"request.withdrawn")
                            || (mine.contains(&"request.forwarded")
                                && mine.contains(&"response.completed"))
                    })
                    .then_some(events)
            },
        )
        .await?;
        for event in &events {
            self.schemas
                .validate(&event.bytes)
                .with_context(|| format!("event {} ({})", event.sequence, event.name()))?;
        }

        // The evidence service may still be catching up (after NATS lost a node, its consumer
        // waits for a new leader): the ledger is compared once it has everything.
        let last = events.last().map_or(0, |e| e.sequence);
        if let Some(admin) = self.stack().evidence_admin_addr {
            eventually(
                "the ledger to catch up with the stream",
                DEADLINE,
                || async {
                    let (_, body) = http_get(&format!("http://{admin}/status")).await.ok()?;
                    let status: Value = serde_json::from_str(&body).ok()?;
                    (status["last_sequence"].as_u64()? >= last).then_some(())
                },
            )
            .await?;
        }
        let stack = self.stack.take().expect("the stack is running");
        let dir = stack.dir.clone();
        let audit_log = stack
            .cluster
            .control_plane()
            .map(|plane| plane.audit_log().to_owned());
        let proxy = self.proxy_identity_of(&stack);
        let head = stack.stop().await?;
        // The control plane has stopped: its audit log is complete.
        if let Some(audit_log) = audit_log {
            let audit = gatehouse_controlplane::audit::read(&audit_log)?;
            cross_check_audit(&events, &audit, proxy)?;
        }
        let ledger = Ledger::open_read_only(&dir)?;
        if head.last_sequence != last || head.next_index != events.len() as u64 {
            bail!(
                "the ledger holds {} entries up to sequence {}, the stream {} events up to {}",
                head.next_index,
                head.last_sequence,
                events.len(),
                last
            );
        }
        for (index, event) in events.iter().enumerate() {
            let entry = ledger
                .entry(index as u64)?
                .ok_or_else(|| anyhow!("ledger entry {index} is missing"))?;
            if entry.stream_sequence != event.sequence || entry.event != event.bytes.as_ref() {
                bail!(
                    "ledger entry {index} differs from stream event {}",
                    event.sequence
                );
            }
        }
        match verify::verify(&ledger)? {
            Ok(verified) if verified.entries == events.len() as u64 => {}
            Ok(verified) => bail!(
                "verify saw {} entries, expected {}",
                verified.entries,
                events.len()
            ),
            Err(broken) => bail!("the ledger does not verify: {broken}"),
        }
        // The evidence service signed a checkpoint of everything as it stopped.
        let vkey = std::fs::read_to_string(dir.join("checkpoint").join("checkpoint.vkey"))?;
        let verifier = gatehouse_proof::checkpoint::NoteVerifier::from_vkey(&vkey)?;
        let (_, note) = ledger
            .latest_checkpoint()?
            .ok_or_else(|| anyhow!("no checkpoint was signed"))?;
        let checkpoint = verifier.open(&note)?;
        if checkpoint.size != events.len() as u64
            || checkpoint.root != ledger.root(checkpoint.size)?
        {
            bail!(
                "the last checkpoint covers {} entries (root {}), the ledger holds {}",
                checkpoint.size,
                hex_of(&checkpoint.root),
                events.len()
            );
        }
        drop(ledger);
        Ok(Finished {
            events,
            data_dir: dir,
            _dir: self._dir,
        })
    }
}

/// The apiserver's own audit log and the ledger tell the same story: every request the
/// apiserver saw from the proxy's identity is a `request.forwarded` in the ledger under the same
/// id (the proxy sends its request id as `Audit-ID`), for the same impersonated user, verb and
/// resource; and every `request.forwarded` is in the audit log. The only other requests are the
/// previews of held writes: a read and a dry run (`dryRun=All`) under the held request's id with
/// a suffix, as its impersonated caller, for a `request.held` that carries the change.
pub fn cross_check_audit(
    events: &[Event],
    audit: &[gatehouse_controlplane::AuditEvent],
    proxy: &str,
) -> Result<()> {
    let forwarded: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e.name() == "request.forwarded")
        .map(Event::subject)
        .collect();
    let received: std::collections::BTreeMap<&str, &Event> = events
        .iter()
        .filter(|e| e.name() == "request.received")
        .map(|e| (e.subject(), e))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    // The proxy's reviews of its own credential (at start) are its own, not forwarded.
    let own = |e: &&gatehouse_controlplane::AuditEvent| {
        e.audit_id
            .starts_with(gatehouse_proxy::forward::CREDENTIAL_CHECK_AUDIT_PREFIX)
    };
    for entry in audit
        .iter()
        .filter(|e| e.user.username == proxy)
        .filter(|e| !own(e))
    {
        let id = entry.audit_id.as_str();
        if let Some(held_id) = id
            .strip_suffix(gatehouse_proxy::forward::PREVIEW_READ_AUDIT_SUFFIX)
            .or_else(|| id.strip_suffix(gatehouse_proxy::forward::PREVIEW_DRY_RUN_AUDIT_SUFFIX))
        {
            let held = events
                .iter()
                .find(|e| e.name() == "request.held" && e.subject() == held_id)
                .ok_or_else(|| anyhow!("a preview ({id}) of a request that was not held"))?;
            anyhow::ensure!(
                held.data().get("change").is_some_and(|c| !c.is_null()),
                "a preview ({id}) the held request does not show"
            );
            let impersonated = entry
                .impersonated_user
                .as_ref()
                .map(|u| u.username.as_str());
            anyhow::ensure!(
                impersonated == held.data()["identity"]["principal"].as_str(),
                "the preview {id} was not made as the held request's caller ({impersonated:?})"
            );
            anyhow::ensure!(
                entry.verb == "get" || entry.request_uri.contains("dryRun=All"),
                "the preview {id} ({} {}) was neither a read nor a dry run",
                entry.verb,
                entry.request_uri
            );
            continue;
        }
        if !forwarded.contains(id) {
            bail!(
                "the apiserver served {} {} from the proxy (audit id {id}) that the ledger does \
                 not show as forwarded",
                entry.verb,
                entry.request_uri
            );
        }
        seen.insert(id);
        let Some(received) = received.get(id) else {
            bail!("request {id} was forwarded without a request.received");
        };
        let data = received.data();
        let principal = data["identity"]["principal"].as_str().unwrap_or_default();
        let impersonated = entry
            .impersonated_user
            .as_ref()
            .map(|u| u.username.as_str())
            .unwrap_or_default();
        if impersonated != principal {
            bail!(
                "request {id}: the ledger's caller is {principal:?}, the apiserver impersonated {impersonated:?}"
            );
        }
        if let Some(groups) = data["identity"]["groups"].as_array() {
            let audited: Vec<&str> = entry
                .impersonated_user
                .as_ref()
                .map(|u| u.groups.iter().map(String::as_str).collect())
                .unwrap_or_default();
            for group in groups.iter().filter_map(Value::as_str) {
                if !audited.contains(&group) {
                    bail!("request {id}: group {group:?} was not impersonated ({audited:?})");
                }
            }
        }
        let info = &data["request"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let verb = text(&info["verb"]);
        let object = entry.object_ref.clone().unwrap_or_default();
        let same_verb = match verb.as_str() {
            // Connections: the apiserver's verb is the HTTP one (get or create).
            "exec" | "attach" | "portforward" | "proxy" => object.subresource == verb.as_str(),
            _ if info["is_resource_request"] == false => {
                entry.verb == verb
                    && entry.request_uri.split('?').next() == Some(&text(&info["path"]))
            }
            _ => entry.verb == verb,
        };
        let same_resource = info["is_resource_request"] == false
            || (object.resource == text(&info["resource"])
                && object.subresource == text(&info["subresource"])
                && object.namespace == text(&info["namespace"])
                && object.api_group == text(&info["api_group"])
                && (text(&info["name"]).is_empty() || object.name == text(&info["name"])));
        if !same_verb || !same_resource {
            bail!(
                "request {id}: the ledger has {verb} {}/{} {} in {:?}, the apiserver {} {:?}",
                text(&info["resource"]),
                text(&info["subresource"]),
                text(&info["name"]),
                text(&info["namespace"]),
                entry.verb,
                object
            );
        }
    }
    if let Some(missing) = forwarded.iter().find(|id| !seen.contains(*id)) {
        bail!("request {missing} is forwarded in the ledger but not in the apiserver's audit log");
    }
    Ok(())
}

/// What is left after [`TestBed::finish`]: the events and the stopped stack's data directory.
pub struct Finished {
    pub events: Vec<Event>,
    pub data_dir: PathBuf,
    _dir: TempDir,
}

// ---------------------------------------------------------------------------------------------
// For the kubectl tests: the cluster behind the proxy's back, the process's logs, raw HTTP/1.1.

impl TestBed {
    /// Runs kubectl straight against the cluster as its admin (system:masters), not through
    /// the proxy: to change or read the cluster behind a caller's back.
    pub async fn admin_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
        let stack = self.stack();
        let path = self.home.path().join("cluster-admin.kubeconfig");
        let text = stack
            .cluster
            .admin_kubeconfig(&stack.ca_pem, "apps")
            .context("no admin credential for this cluster")?;
        gatehouse::kubeconfig::write_private(&path, &text)
            .with_context(|| format!("writing {}", path.display()))?;
        self.run_kubectl(path, args, stdin).await
    }

    /// Sends `request` (a whole HTTP/1.1 request, head and body, exactly as given) to the
    /// proxy over TLS, half-closes, and returns every byte the proxy sent back until it closed
    /// the connection (or [`DEADLINE`] passed). For what a well-behaved client library will
    /// not send: conflicting framing headers, smuggled requests.
    pub async fn raw_request(&self, request: &[u8]) -> Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = client_tls(Some(&self.stack().dir.join("tls").join("ca.pem")), false)?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(self.stack().proxy_addr).await?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(request).await?;
        stream.flush().await?;
        let mut received = Vec::new();
        let read = tokio::time::timeout(DEADLINE, async {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        if read.is_err() {
            bail!(
                "the proxy neither answered nor closed the connection within {DEADLINE:?} \
                 (got {} bytes)",
                received.len()
            );
        }
        Ok(received)
    }
}

/// Every log line of this process, kept in memory (see [`LogCapture::install`]).
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Installs, once per process, a global subscriber that keeps every event at `debug` and
    /// above (`trace` for Gatehouse's own crates) in memory, and prints what
    /// [`init_logging`] would. Call it before [`TestBed::start`]. `None` if another subscriber
    /// was installed first (then the logs cannot be seen). nextest runs each test in its own
    /// process, so there the capture holds that test's logs only.
    pub fn install() -> Option<LogCapture> {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        static INSTALLED: std::sync::OnceLock<Option<LogCapture>> = std::sync::OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let capture = LogCapture::default();
                let writer = capture.clone();
                let print = tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(
                        tracing_subscriber::EnvFilter::try_from_default_env()
                            .unwrap_or_else(|_| "warn,async_nats=error".into()),
                    );
                let keep = tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .with_filter(tracing_subscriber::EnvFilter::new(
                        "debug,gatehouse=trace,gatehouse_proxy=trace,gatehouse_sandbox=trace,\
                         gatehouse_evidence=trace,gatehouse_bus=trace,hyper=info,h2=info,\
                         rustls=info,async_nats=info,tokio_util=info",
                    ));
                tracing_subscriber::registry()
                    .with(print)
                    .with(keep)
                    .try_init()
                    .ok()
                    .map(|()| capture)
            })
            .clone()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&lines).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, name: &str, subject: &str, data: Value) -> Event {
        let value = serde_json::json!({
            "type": format!("dev.gatehouse.{name}.v1"),
            "subject": subject,
            "data": data,
        });
        Event {
            sequence,
            bytes: Bytes::from(value.to_string()),
            value,
        }
    }

    fn audit(
        id: &str,
        user: &str,
        impersonated: &str,
        verb: &str,
        resource: &str,
    ) -> gatehouse_controlplane::AuditEvent {
        serde_json::from_value(serde_json::json!({
            "auditID": id, "stage": "ResponseComplete", "verb": verb,
            "requestURI": format!("/api/v1/namespaces/apps/{resource}"),
            "user": {"username": user, "groups": []},
            "impersonatedUser": {"username": impersonated, "groups": ["deployers", "system:authenticated"]},
            "objectRef": {"resource": resource, "namespace": "apps"},
            "responseStatus": {"code": 200},
        }))
        .unwrap()
    }

    fn forwarded(id: &str, principal: &str, verb: &str, resource: &str) -> Vec<Event> {
        vec![
            event(
                1,
                "request.received",
                id,
                serde_json::json!({
                    "identity": {"principal": principal, "groups": ["deployers"]},
                    "request": {"is_resource_request": true, "verb": verb, "resource": resource,
                                "subresource": "", "namespace": "apps", "api_group": "", "name": "",
                                "path": format!("/api/v1/namespaces/apps/{resource}")},
                }),
            ),
            event(2, "request.forwarded", id, serde_json::json!({})),
        ]
    }

    const PROXY: &str = "system:serviceaccount:gatehouse:gatehouse-proxy";

    #[test]
    fn the_audit_log_and_the_ledger_must_tell_the_same_story() {
        let events = forwarded("01A", "ci-deployer", "list", "pods");
        let agreed = [audit("01A", PROXY, "ci-deployer", "list", "pods")];
        cross_check_audit(&events, &agreed, PROXY).unwrap();
        // The proxy's own credential review is not a forwarded request.
        let with_check = [
            agreed[0].clone(),
            audit(
                "gatehouse-credential-check-x",
                PROXY,
                "",
                "create",
                "selfsubjectreviews",
            ),
        ];
        cross_check_audit(&events, &with_check, PROXY).unwrap();

        let unrecorded = [
            agreed[0].clone(),
            audit("01B", PROXY, "ci-deployer", "list", "secrets"),
        ];
        let why = cross_check_audit(&events, &unrecorded, PROXY).unwrap_err();
        assert!(
            format!("{why}").contains("does not show as forwarded"),
            "{why}"
        );

        let missing = cross_check_audit(&events, &[], PROXY).unwrap_err();
        assert!(format!("{missing}").contains("not in the apiserver's audit log"));

        let someone_else = [audit("01A", PROXY, "readonly-bot", "list", "pods")];
        let why = cross_check_audit(&events, &someone_else, PROXY).unwrap_err();
        assert!(format!("{why}").contains("impersonated"), "{why}");

        let other_resource = [audit("01A", PROXY, "ci-deployer", "list", "secrets")];
        let why = cross_check_audit(&events, &other_resource, PROXY).unwrap_err();
        assert!(format!("{why}").contains("the apiserver list"), "{why}");

        // Requests by others (the admin, controllers) are not the proxy's business.
        let admin = [agreed[0].clone(), audit("x", "admin", "", "delete", "pods")];
        cross_check_audit(&events, &admin, PROXY).unwrap();
    }
}
