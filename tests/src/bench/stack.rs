//! The processes a benchmark run measures, each its own process as in a deployment: a real
//! `nats-server`, `gatehouse up` (in front of the local control plane, or `--sandbox`; the
//! demo OIDC issuer, the proxy with the demo policy, the evidence and approval services) and a
//! plain nginx reverse proxy in front of the same API server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use gatehouse::nats_server::NatsServer;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::load::Target;

/// A binary built beside this one (`cargo build --release` puts them together).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{} is missing: build it with `cargo build --release -p gatehouse` (tests/bench/run does)",
            path.display()
        )
    }
}

/// What a demo kubeconfig says: where, and with which token.
#[derive(Clone, Debug)]
pub struct Kubeconfig {
    pub addr: SocketAddr,
    pub token: String,
}

pub fn read_kubeconfig(path: &Path) -> Result<Kubeconfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = yaml_serde::from_str(&text)?;
    let server = value["clusters"][0]["cluster"]["server"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: no server", path.display()))?;
    let token = value["users"][0]["user"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: no token", path.display()))?;
    let addr = server
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("{}: the server is not https://", path.display()))?
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("{}: server {server}", path.display()))?;
    Ok(Kubeconfig {
        addr,
        token: token.to_owned(),
    })
}

/// The cluster behind Gatehouse in a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upstream {
    /// The local control plane: kube-apiserver with etcd, controllers and kwok nodes.
    ControlPlane,
    /// The Kubernetes sandbox (in-memory, core/v1 only).
    Sandbox,
}

impl Upstream {
    pub fn describe(self) -> &'static str {
        match self {
            Upstream::ControlPlane => {
                "the local control plane (kube-apiserver 1.36.3 on etcd 3.6, kwok nodes)"
            }
            Upstream::Sandbox => "the Kubernetes sandbox (in-memory, core/v1)",
        }
    }
}

/// The CA that signed the API server's certificate in a `gatehouse up` directory: the local
/// control plane's own, or (sandbox) the demo CA.
fn upstream_ca(up_dir: &Path) -> PathBuf {
    let plane = up_dir.join("controlplane").join("pki").join("ca.pem");
    if plane.exists() {
        plane
    } else {
        up_dir.join("tls").join("ca.pem")
    }
}

/// A target from the kubeconfigs of a running `gatehouse up` in `up_dir`: `gatehouse` (as
/// readonly-bot), `deployer` (as ci-deployer) or `direct` (the API server, as its admin).
pub fn target_in(up_dir: &Path, name: &str) -> Result<Target> {
    let (file, ca) = match name {
        "gatehouse" => ("readonly-bot", up_dir.join("tls").join("ca.pem")),
        "deployer" => ("ci-deployer", up_dir.join("tls").join("ca.pem")),
        "direct" => ("cluster-admin", upstream_ca(up_dir)),
        other => bail!("unknown target {other:?}: gatehouse, deployer or direct"),
    };
    let kubeconfig = read_kubeconfig(
        &up_dir
            .join("kubeconfigs")
            .join(format!("{file}.kubeconfig")),
    )?;
    let tls = Arc::new(gatehouse_proxy::http_client::client_tls(Some(&ca), false)?);
    Ok(Target {
        name: name.to_owned(),
        addr: kubeconfig.addr,
        server_name: "localhost".to_owned(),
        authorization: format!("Bearer {}", kubeconfig.token),
        tls,
    })
}

/// Sends SIGTERM and waits for the process to exit (SIGKILL after `grace`).
pub async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Polls `ready` every 50 ms until it is true or `timeout` passes.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The running set.
pub struct Stack {
    pub dir: PathBuf,
    pub upstream: Upstream,
    pub nats: NatsServer,
    /// `gatehouse up`.
    up: Option<Child>,
    /// `gatehouse proxy`, in a process of its own, with up's configuration: what the runs
    /// measure, so its CPU time is its own (up's own proxy stands idle).
    proxy: Option<Child>,
    nginx: Option<Child>,
    pub tls: Arc<rustls::ClientConfig>,
    /// The API server, with its admin token.
    pub direct: Target,
    /// nginx in front of the API server, with the same token as `direct`.
    pub nginx_target: Target,
    /// The Gatehouse proxy as `readonly-bot` (demo policy rule `readers`).
    pub gatehouse_reader: Target,
    /// The Gatehouse proxy as `ci-deployer` (rule `deployer-apps`: masking, record request).
    pub gatehouse_deployer: Target,
    /// The approval service's API.
    pub approval_url: String,
}

impl Stack {
    /// Starts everything under `dir` (which should not exist yet) in front of `upstream`.
    pub async fn start(dir: &Path, upstream: Upstream) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let nats = NatsServer::start(&dir.join("nats")).await?;
        let up_dir = dir.join("up");
        let log = std::fs::File::create(dir.join("gatehouse-up.log"))?;
        let mut command = Command::new(sibling_binary("gatehouse")?);
        command.arg("up");
        if upstream == Upstream::Sandbox {
            command.arg("--sandbox");
        }
        let up = command
            .args(["--listen", "127.0.0.1:0", "--nats-url", nats.url()])
            .arg("--data-dir")
            .arg(&up_dir)
            .env("GATEHOUSE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting gatehouse up")?;
        let kubeconfigs = up_dir.join("kubeconfigs");
        let admin_file = kubeconfigs.join("cluster-admin.kubeconfig");
        wait_until(
            "gatehouse up to write its kubeconfigs",
            Duration::from_secs(120),
            || admin_file.exists(),
        )
        .await
        .with_context(|| format!("see {}", dir.join("gatehouse-up.log").display()))?;

        // The proxy and nginx serve the demo CA's certificate; the API server its own.
        let tls = Arc::new(gatehouse_proxy::http_client::client_tls(
            Some(&up_dir.join("tls").join("ca.pem")),
            false,
        )?);
        let upstream_ca = upstream_ca(&up_dir);
        let upstream_tls = Arc::new(gatehouse_proxy::http_client::client_tls(
            Some(&upstream_ca),
            false,
        )?);
        let admin = read_kubeconfig(&admin_file)?;
        let reader = read_kubeconfig(&kubeconfigs.join("readonly-bot.kubeconfig"))?;
        let deployer = read_kubeconfig(&kubeconfigs.join("ci-deployer.kubeconfig"))?;
        let (proxy, proxy_addr) = start_proxy(&dir, &up_dir).await?;
        let target =
            |name: &str, addr: SocketAddr, token: &str, tls: &Arc<rustls::ClientConfig>| Target {
                name: name.to_owned(),
                addr,
                server_name: "localhost".to_owned(),
                authorization: format!("Bearer {token}"),
                tls: tls.clone(),
            };
        let direct = target("direct", admin.addr, &admin.token, &upstream_tls);
        let gatehouse_reader = target("gatehouse", proxy_addr, &reader.token, &tls);
        let gatehouse_deployer = target("gatehouse", proxy_addr, &deployer.token, &tls);
        let approval_url = std::fs::read_to_string(up_dir.join("approval.url"))?
            .trim()
            .to_owned();

        let (nginx, nginx_addr) =
            start_nginx(&dir.join("nginx"), &up_dir, &upstream_ca, admin.addr).await?;
        let nginx_target = target("nginx", nginx_addr, &admin.token, &tls);
        Ok(Self {
            dir,
            upstream,
            nats,
            up: Some(up),
            proxy: Some(proxy),
            nginx: Some(nginx),
            tls,
            direct,
            nginx_target,
            gatehouse_reader,
            gatehouse_deployer,
            approval_url,
        })
    }

    /// The data directory of `gatehouse up` (its ledger is `up/ledger`).
    pub fn up_dir(&self) -> PathBuf {
        self.dir.join("up")
    }

    /// A demo token file `gatehouse up` wrote (approvers, the auditor).
    pub fn token(&self, identity: &str) -> Result<String> {
        let path = self.up_dir().join("tokens").join(format!("{identity}.jwt"));
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// The processes on the request path, for CPU time by part: the load generator (this
    /// process), the proxy, nats-server, `gatehouse up` (the evidence service, with the
    /// approval service, the issuers and, on the sandbox, the API server), the control plane
    /// `up` started, and nginx with its workers.
    pub fn cpu_parts(&self) -> Vec<super::cpu::Part> {
        use super::cpu::Part;
        let mut parts = vec![Part::process("load generator", std::process::id())];
        let pid = |child: &Option<Child>| child.as_ref().and_then(Child::id);
        if let Some(pid) = pid(&self.proxy) {
            parts.push(Part::process("proxy", pid));
        }
        if let Some(pid) = self.nats.pid() {
            parts.push(Part::process("nats-server", pid));
        }
        if let Some(pid) = pid(&self.up) {
            parts.push(Part::process("evidence", pid));
            parts.push(Part::below("upstream", pid));
        }
        if let Some(pid) = pid(&self.nginx) {
            parts.push(Part::tree("nginx", pid));
        }
        parts
    }

    /// Stops the proxy, `gatehouse up` (it drains its own and lets the ledger catch up) and
    /// nginx.
    pub async fn stop_gatehouse(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            terminate(&mut nginx, Duration::from_secs(10)).await;
        }
        if let Some(mut proxy) = self.proxy.take() {
            terminate(&mut proxy, Duration::from_secs(30)).await;
        }
        if let Some(mut up) = self.up.take() {
            terminate(&mut up, Duration::from_secs(90)).await;
        }
    }

    pub async fn stop(mut self) {
        self.stop_gatehouse().await;
        self.nats.stop().await;
    }
}

/// nginx from the system's packages, as a TLS reverse proxy to `upstream` with keep-alive
/// connections upstream, verifying the API server's certificate against `upstream_ca`; it
/// serves the same certificate as the Gatehouse proxy.
/// Starts `gatehouse proxy` with the configuration `gatehouse up` wrote (as replica `bench`, so
/// its decisions consumer is its own) and returns it with the address it listens on.
async fn start_proxy(dir: &Path, up_dir: &Path) -> Result<(Child, SocketAddr)> {
    let config = std::fs::read_to_string(up_dir.join("config").join("proxy.yaml"))?;
    let config: String = config
        .lines()
        .map(|line| {
            if line.starts_with("replica:") {
                "replica: bench".to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = dir.join("proxy.yaml");
    std::fs::write(&file, config + "\n")?;
    let log_file = dir.join("gatehouse-proxy.log");
    let log = std::fs::File::create(&log_file)?;
    let child = Command::new(sibling_binary("gatehouse")?)
        .args(["proxy", "--config"])
        .arg(&file)
        .env("GATEHOUSE_LOG", "info")
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting gatehouse proxy")?;
    let mut addr = None;
    wait_until("the proxy to be ready", Duration::from_secs(60), || {
        addr = std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|v| v["message"] == "proxy ready" || v["msg"] == "proxy ready")
            .and_then(|v| v["listen"].as_str().and_then(|a| a.parse().ok()));
        addr.is_some()
    })
    .await
    .with_context(|| format!("see {}", log_file.display()))?;
    Ok((child, addr.context("the proxy's address")?))
}

async fn start_nginx(
    dir: &Path,
    up_dir: &Path,
    upstream_ca: &Path,
    upstream: SocketAddr,
) -> Result<(Child, SocketAddr)> {
    let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!("nginx is not installed (tests/bench/run installs Debian's package)")
        })?;
    for sub in [
        "tmp/body",
        "tmp/proxy",
        "tmp/fastcgi",
        "tmp/uwsgi",
        "tmp/scgi",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let tls = up_dir.join("tls");
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes auto;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    upstream kubernetes {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen {addr} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        keepalive_requests 1000000;
        location / {{
            proxy_pass https://kubernetes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#,
        cert = tls.join("proxy.pem").display(),
        key = tls.join("proxy-key.pem").display(),
        ca = upstream_ca.display(),
    );
    let conf_file = dir.join("nginx.conf");
    std::fs::write(&conf_file, conf)?;
    let log = std::fs::File::create(dir.join("nginx.out"))?;
    let mut child = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_file)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "nginx exited ({status}); see {} and {}",
                dir.join("nginx.out").display(),
                dir.join("error.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("nginx did not listen on {addr} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, addr))
}
