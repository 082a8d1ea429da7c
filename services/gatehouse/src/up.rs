//! `gatehouse up --sandbox --data-dir DIR`: the whole path on one machine, in one process.
//!
//! Layout of DIR:
//! ```text
//! nats/         nats-server's JetStream store and log (when gatehouse starts it)
//! ledger/       the evidence ledger (RocksDB)
//! tls/          the demo CA and the proxy's and sandbox's certificates
//! issuer/       the demo OIDC issuer's signing key
//! sandbox/      the proxy's token for the sandbox
//! config/       identities.yaml, policy.yaml and approvers.yaml (kept, edit them), proxy.yaml,
//!               evidence.yaml and approval.yaml (rewritten at every start: ports change)
//! kubeconfigs/  one kubeconfig per demo identity, plus sandbox-admin (straight to the sandbox)
//! tokens/       a token per demo approver, for `gatehouse approvals vote --as …`
//! checkpoint/   the demo checkpoint key (checkpoint.key) and its verifier key (checkpoint.vkey)
//! approval.url  where the approval service's API answers
//! auditor.url   where the evidence service's auditor API answers (token: tokens/auditor@…)
//! ```
//!
//! Start order: NATS, PKI, sandbox, issuer, evidence, approval, proxy, kubeconfigs. Stop
//! order: proxy (drains), approval, evidence (after catching up with the stream, so the ledger
//! holds every event of the session), sandbox, issuer, NATS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use std::sync::Arc;

use gatehouse_evidence::{Evidence, EvidenceError};
use gatehouse_proxy::{Proxy, ProxyConfig};
use gatehouse_sandbox::issuer::{Issuer, IssuerKeys};
use gatehouse_sandbox::pki::{LocalCa, server_tls_config};
use gatehouse_sandbox::rbac::RbacConfig;
use gatehouse_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::demo::{self, AUDIENCE, IDENTITIES};
use crate::kubeconfig;
use crate::load_yaml;
use crate::nats_server::NatsServer;

/// How long demo tokens live. Long enough for an afternoon; kubeconfigs are rewritten at start.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    /// Use this NATS (with JetStream) instead of starting nats-server.
    pub nats_url: Option<String>,
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// How to run this binary, for the instructions printed (the wrapper script sets it).
    pub invocation: String,
}

/// Every part of the sandbox deployment, running. Tests drive the same stack `up` runs.
pub struct Stack {
    /// The data directory (absolute).
    pub dir: PathBuf,
    /// The nats-server `up` started, if it started one.
    pub nats_server: Option<NatsServer>,
    pub nats_url: String,
    /// The demo CA (PEM) that signed the proxy's and sandbox's certificates.
    pub ca_pem: String,
    pub sandbox: SandboxHandle,
    /// A token that reaches the sandbox directly as `sandbox-admin` (system:masters).
    pub admin_token: String,
    pub issuer: Issuer,
    /// The second, GitHub-Actions-shaped issuer.
    pub ci_issuer: Issuer,
    pub evidence: Arc<Evidence>,
    pub proxy_addr: SocketAddr,
    /// The proxy's admin port (`/healthz`, `/readyz`, `/metrics`), plain HTTP on loopback.
    pub proxy_admin_addr: SocketAddr,
    /// The evidence service's auditor API (plain HTTP on loopback), and its task.
    pub auditor_api_addr: Option<SocketAddr>,
    auditor_api_task: Option<JoinHandle<()>>,
    /// The approval service's callbacks and API (plain HTTP on loopback).
    pub approval_addr: SocketAddr,
    pub approval: Arc<gatehouse_approval::Service>,
    approval_stop: CancellationToken,
    approval_task: JoinHandle<()>,
    evidence_stop: CancellationToken,
    evidence_task: JoinHandle<Result<(), EvidenceError>>,
    proxy_stop: CancellationToken,
    proxy_task: JoinHandle<()>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("dir", &self.dir)
            .field("proxy_addr", &self.proxy_addr)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Starts NATS (unless `nats_url`), PKI, sandbox, issuer, evidence, approval and proxy, in
    /// that order.
    pub async fn start(
        data_dir: &Path,
        nats_url: Option<&str>,
        listen: SocketAddr,
    ) -> Result<Self> {
        Self::start_with(data_dir, nats_url, listen, "").await
    }

    /// [`Stack::start`], with `approval_channels` (YAML: `slack:`, `teams:`, `discord:`
    /// sections) added to the approval service's configuration.
    pub async fn start_with(
        data_dir: &Path,
        nats_url: Option<&str>,
        listen: SocketAddr,
        approval_channels: &str,
    ) -> Result<Self> {
        let dir = absolute(data_dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        let mut nats_server = None;
        let nats_url = match nats_url {
            Some(url) => url.to_owned(),
            None => {
                let server = NatsServer::start(&dir.join("nats")).await?;
                let url = server.url().to_owned();
                nats_server = Some(server);
                url
            }
        };

        let tls_dir = dir.join("tls");
        let ca = LocalCa::load_or_generate(&tls_dir, "Gatehouse demo CA")?;
        let ca_pem = ca.cert_pem();
        let ca_file = tls_dir.join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).context("writing the CA certificate")?;
        let sans = ["127.0.0.1", "localhost", "::1"];
        let proxy_cert = ca.issue_server_cert(&sans)?;
        let (proxy_cert_file, proxy_key_file) =
            (tls_dir.join("proxy.pem"), tls_dir.join("proxy-key.pem"));
        std::fs::write(&proxy_cert_file, &proxy_cert.cert_pem)
            .context("writing the proxy certificate")?;
        kubeconfig::write_private(&proxy_key_file, &proxy_cert.key_pem)
            .context("writing the proxy key")?;

        let proxy_token = random_token();
        let admin_token = random_token();
        let proxy_token_file = dir.join("sandbox").join("proxy.token");
        kubeconfig::write_private(&proxy_token_file, &proxy_token)
            .context("writing the proxy's sandbox token")?;
        let sandbox_cert = ca.issue_server_cert(&sans)?;
        let sandbox = Sandbox::start(
            SandboxConfig {
                rbac: RbacConfig::demo(&proxy_token, &admin_token),
                seed: true,
            },
            TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the sandbox")?,
            server_tls_config(&sandbox_cert.cert_pem, &sandbox_cert.key_pem)?,
        )
        .await?;

        let keys = IssuerKeys::load_or_generate(&dir.join("issuer"))?;
        let issuer = Issuer::start(
            keys,
            TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the issuer")?,
        )
        .await?;
        // A second issuer shaped like GitHub Actions' (its tokens carry `repository`, `ref`,
        // `environment`, …), so the demo shows several issuers and claim presets at once.
        let ci_issuer = Issuer::start(
            IssuerKeys::load_or_generate(&dir.join("issuer-ci"))?,
            TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding the CI issuer")?,
        )
        .await?;

        let config_dir = dir.join("config");
        std::fs::create_dir_all(&config_dir)?;
        let identities_file =
            keep_or_write(&config_dir.join("identities.yaml"), demo::IDENTITIES_YAML)?;
        let policy_file = keep_or_write(&config_dir.join("policy.yaml"), demo::POLICY_YAML)?;

        // The demo's checkpoint key: made once, kept (auditors would hold the .vkey).
        let checkpoint_key = dir.join("checkpoint").join("checkpoint.key");
        if !checkpoint_key.exists() {
            let signer = gatehouse_proof::checkpoint::NoteSigner::from_seed(
                "gatehouse.local/ledger",
                rand::random(),
            )?;
            kubeconfig::write_private(&checkpoint_key, &format!("{}\n", signer.to_skey()))?;
            std::fs::write(
                dir.join("checkpoint").join("checkpoint.vkey"),
                format!("{}\n", signer.verifier().to_vkey()),
            )?;
        }
        let evidence_file = config_dir.join("evidence.yaml");
        std::fs::write(
            &evidence_file,
            format!(
                "# Written by `gatehouse up`; run the same service alone with\n\
                 #   gatehouse evidence --config {evidence}\n\
                 data_dir: {data}\n\
                 nats:\n  url: {nats_url}\n\
                 checkpoints:\n  key_file: {key}\n  every: 10s\n\
                 api:\n  listen: \"127.0.0.1:0\"\n  auditor_groups: [auditors]\n\
                 \x20 issuers:\n    - issuer: {issuer}\n      audiences: [{AUDIENCE}]\n",
                evidence = evidence_file.display(),
                data = yaml_str(&dir),
                key = yaml_str(&checkpoint_key),
                issuer = issuer.url(),
            ),
        )?;
        let evidence_stop = CancellationToken::new();
        let (evidence_config, api_config) =
            crate::auditor_api::load_evidence_config(&evidence_file)?;
        let evidence = Arc::new(Evidence::open(evidence_config.clone()).await?);
        let auditor_api = match api_config {
            Some(api) => {
                let bus =
                    gatehouse_bus::Bus::connect(&evidence_config.nats, "gatehouse-evidence-api")
                        .await?;
                let server = crate::auditor_api::AuditorApi::start(
                    &api,
                    evidence_config.data_dir.clone(),
                    bus,
                    "up",
                    evidence_stop.clone(),
                )
                .await
                .map_err(anyhow::Error::msg)?;
                let addr = server.local_addr();
                std::fs::write(dir.join("auditor.url"), format!("http://{addr}\n"))?;
                let token = issuer.mint(demo::AUDITOR, AUDIENCE, &["auditors"], TOKEN_TTL)?;
                kubeconfig::write_private(
                    &dir.join("tokens").join(format!("{}.jwt", demo::AUDITOR)),
                    &token,
                )?;
                Some((addr, tokio::spawn(server.run())))
            }
            None => None,
        };
        let evidence_task = tokio::spawn({
            let evidence = evidence.clone();
            let stop = evidence_stop.clone();
            async move { evidence.run(stop).await }
        });

        let approvers_file =
            keep_or_write(&config_dir.join("approvers.yaml"), demo::APPROVERS_YAML)?;
        let approval_file = config_dir.join("approval.yaml");
        std::fs::write(
            &approval_file,
            format!(
                "# Written by `gatehouse up`; run the same service alone with\n\
                 #   gatehouse approval --config {approval}\n\
                 listen: \"127.0.0.1:0\"\n\
                 replica: up\n\
                 nats:\n  url: {nats_url}\n\
                 approvers: {approvers}\n\
                 api:\n  issuers:\n    - issuer: {issuer}\n      audiences: [{AUDIENCE}]\n\
                 {approval_channels}",
                approval = approval_file.display(),
                approvers = yaml_str(&approvers_file),
                issuer = issuer.url(),
            ),
        )?;
        let approval_config = gatehouse_approval::ApprovalConfig::from_yaml(
            &std::fs::read_to_string(&approval_file)?,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", approval_file.display()))?;
        let approval_stop = CancellationToken::new();
        let approval_server =
            gatehouse_approval::ApprovalServer::start(&approval_config, approval_stop.clone())
                .await
                .map_err(|e| anyhow::anyhow!("approval service: {e}"))?;
        let approval_addr = approval_server.local_addr();
        let approval = approval_server.service().clone();
        let approval_task = tokio::spawn(approval_server.run());
        std::fs::write(
            dir.join("approval.url"),
            format!("http://{approval_addr}\n"),
        )?;
        for approver in demo::APPROVERS {
            let token = issuer.mint(approver, AUDIENCE, &[], TOKEN_TTL)?;
            kubeconfig::write_private(&dir.join("tokens").join(format!("{approver}.jwt")), &token)?;
        }

        let proxy_file = config_dir.join("proxy.yaml");
        std::fs::write(
            &proxy_file,
            format!(
                "# Written by `gatehouse up`; run the same proxy alone with\n\
                 #   gatehouse proxy --config {proxy}\n\
                 listen: \"{listen}\"\n\
                 admin_listen: \"127.0.0.1:0\"\n\
                 replica: up\n\
                 tls:\n  cert_file: {cert}\n  key_file: {key}\n\
                 upstream:\n  url: {upstream}\n  ca_file: {ca}\n  token_file: {token}\n\
                 nats:\n  url: {nats_url}\n\
                 issuers:\n  - issuer: {issuer}\n    audiences: [{AUDIENCE}]\n\
                 \x20 - issuer: {ci_issuer}\n    audiences: [{AUDIENCE}]\n\
                 \x20   claims:\n      preset: github-actions\n\
                 \x20     principal: \"{{repository}}@{{environment|ref}}\"\n\
                 identities: {identities}\n\
                 policy: {policy}\n",
                proxy = proxy_file.display(),
                cert = yaml_str(&proxy_cert_file),
                key = yaml_str(&proxy_key_file),
                upstream = sandbox.url(),
                ca = yaml_str(&ca_file),
                token = yaml_str(&proxy_token_file),
                issuer = issuer.url(),
                ci_issuer = ci_issuer.url(),
                identities = yaml_str(&identities_file),
                policy = yaml_str(&policy_file),
            ),
        )?;
        let proxy_config: ProxyConfig = load_yaml(&proxy_file)?;
        let proxy = Proxy::build(proxy_config).await?;
        let proxy_addr = proxy.local_addr();
        let proxy_admin_addr = proxy.admin_addr();
        let proxy_stop = CancellationToken::new();
        let proxy_task = tokio::spawn(proxy.serve(proxy_stop.clone()));

        Ok(Self {
            dir,
            nats_server,
            nats_url,
            ca_pem,
            sandbox,
            admin_token,
            issuer,
            ci_issuer,
            evidence,
            proxy_addr,
            proxy_admin_addr,
            auditor_api_addr: auditor_api.as_ref().map(|(a, _)| *a),
            auditor_api_task: auditor_api.map(|(_, t)| t),
            approval_addr,
            approval,
            approval_stop,
            approval_task,
            evidence_stop,
            evidence_task,
            proxy_stop,
            proxy_task,
        })
    }

    /// `https://127.0.0.1:PORT` of the proxy.
    pub fn proxy_url(&self) -> String {
        format!("https://{}", self.proxy_addr)
    }

    /// `http://127.0.0.1:PORT` of the approval service (callbacks and API).
    pub fn approval_url(&self) -> String {
        format!("http://{}", self.approval_addr)
    }

    /// `http://127.0.0.1:PORT` of the proxy's admin port.
    pub fn proxy_admin_url(&self) -> String {
        format!("http://{}", self.proxy_admin_addr)
    }

    /// Writes `kubeconfigs/<name>.kubeconfig` pointing at the proxy with `token`.
    pub fn write_kubeconfig(&self, name: &str, token: &str, namespace: &str) -> Result<PathBuf> {
        let path = self
            .dir
            .join("kubeconfigs")
            .join(format!("{name}.kubeconfig"));
        let text = kubeconfig::render(
            "gatehouse",
            &self.proxy_url(),
            &self.ca_pem,
            name,
            token,
            namespace,
        );
        kubeconfig::write_private(&path, &text)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Mints a demo token for `principal` and writes its kubeconfig.
    pub fn demo_kubeconfig(&self, principal: &str, namespace: &str) -> Result<PathBuf> {
        let token = self.issuer.mint(principal, AUDIENCE, &[], TOKEN_TTL)?;
        self.write_kubeconfig(principal, &token, namespace)
    }

    /// Stops the proxy (draining), then the evidence service once the ledger has caught up
    /// with the stream, then the sandbox, the issuer and NATS. Returns the ledger's head.
    pub async fn stop(self) -> Result<gatehouse_evidence::Head> {
        self.proxy_stop.cancel();
        let _ = self.proxy_task.await;
        self.approval_stop.cancel();
        let _ = self.approval_task.await;
        match self.evidence.catch_up(Duration::from_secs(15)).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the ledger did not catch up within 15s; `gatehouse evidence` resumes from where it stopped"
            ),
            Err(e) => tracing::warn!(error = %e, "could not check the ledger's progress"),
        }
        self.evidence_stop.cancel();
        if let Some(task) = self.auditor_api_task {
            let _ = task.await;
        }
        let evidence_result = self
            .evidence_task
            .await
            .context("the evidence task failed")?;
        self.sandbox.shutdown().await;
        self.issuer.shutdown().await;
        self.ci_issuer.shutdown().await;
        if let Some(mut server) = self.nats_server {
            server.stop().await;
        }
        evidence_result?;
        Ok(self.evidence.head())
    }
}

/// Runs the sandbox stack until `shutdown` is cancelled, then stops it in order.
pub async fn run_sandbox(options: UpOptions, shutdown: CancellationToken) -> Result<()> {
    let stack = Stack::start(
        &options.data_dir,
        options.nats_url.as_deref(),
        options.listen,
    )
    .await?;
    for identity in IDENTITIES {
        stack.demo_kubeconfig(identity.principal, identity.namespace)?;
    }
    let admin = kubeconfig::render(
        "sandbox",
        &stack.sandbox.url(),
        &stack.ca_pem,
        "sandbox-admin",
        &stack.admin_token,
        "default",
    );
    kubeconfig::write_private(
        &stack
            .dir
            .join("kubeconfigs")
            .join("sandbox-admin.kubeconfig"),
        &admin,
    )?;
    print_guide(&options, &stack);

    shutdown.cancelled().await;
    eprintln!("\nStopping: draining the proxy, then letting the ledger record the last events…");
    let head = stack.stop().await?;
    eprintln!(
        "Stopped. The ledger holds {} entries. Check it with:\n  {} ledger verify --data-dir {}",
        head.next_index,
        options.invocation,
        options.data_dir.display()
    );
    Ok(())
}

fn print_guide(options: &UpOptions, stack: &Stack) {
    let dir = &stack.dir;
    let (proxy, admin, sandbox, issuer, nats) = (
        stack.proxy_url(),
        stack.proxy_admin_url(),
        stack.sandbox.url(),
        stack.issuer.url(),
        &stack.nats_url,
    );
    let kc = |p: &str| {
        dir.join("kubeconfigs")
            .join(format!("{p}.kubeconfig"))
            .display()
            .to_string()
    };
    let mut guide = format!(
        "\nGatehouse is up (sandbox mode). Data: {data}\n\n\
         \x20 proxy    {proxy}   <- kubectl talks to this\n\
         \x20 admin    {admin}    (proxy /healthz /readyz /metrics)\n\
         \x20 sandbox  {sandbox}   (the Kubernetes API behind it)\n\
         \x20 issuer   {issuer}    (demo OIDC issuer)\n\
         \x20 nats     {nats}     (JetStream; every event is acked here first)\n\
         \x20 approval {approval}    (approval service: chat callbacks and `approvals` API)\n\
         \x20 ledger   {ledger}\n\n\
         Kubeconfigs:\n",
        data = dir.display(),
        ledger = dir.join("ledger").display(),
        approval = stack.approval_url(),
    );
    for identity in IDENTITIES {
        guide.push_str(&format!(
            "  {:<14} {}\n  {:<14} {}\n",
            identity.principal,
            kc(identity.principal),
            "",
            identity.summary
        ));
    }
    guide.push_str(&format!(
        "\nTry:\n\
         \x20 export KUBECONFIG={ci}\n\
         \x20 kubectl get pods                                  # allowed: CI reads apps\n\
         \x20 kubectl create configmap demo --from-literal=k=v  # allowed: CI changes apps\n\
         \x20 kubectl delete configmap demo                     # allowed\n\
         \x20 kubectl get secrets -n prod                       # denied by Gatehouse policy\n\
         \x20 kubectl get pods -n prod                          # allowed: CI reads elsewhere\n\
         \x20 kubectl --kubeconfig {ro} get pods -n prod\n\
         \x20 kubectl --kubeconfig {ro} get configmaps -n kube-system   # Gatehouse allows it; the cluster's RBAC refuses\n\
         \x20 kubectl --kubeconfig {ro} get secrets -n apps             # denied by Gatehouse policy\n\
         \x20 kubectl --kubeconfig {intruder} get pods                  # unknown identity: denied\n\
         \x20 kubectl get secret db-credentials -o yaml       # values masked (base64 of gatehouse:masked)\n\
         \x20 kubectl exec web -- sh -c 'echo hi; exit 3'     # relayed and recorded; exit code 3\n\
         \x20 kubectl exec -n prod api -- sh                  # denied: no shells outside apps\n\
         \x20 kubectl port-forward pod/web 8080:PORT          # reaches 127.0.0.1:PORT on this machine\n\
         \x20 {invocation} policy explain --policy {policy} --as ci-deployer exec pods/exec -n prod web --command sh\n\n\
         Approvals (deletes in prod wait for an SRE's vote; no chat account needed):\n\
         \x20 kubectl delete configmap settings -n prod &      # held until someone approves\n\
         \x20 {invocation} approvals list --data-dir {data} --as bob@example.com\n\
         \x20 {invocation} approvals vote APPROVAL_ID --approve --data-dir {data} --as bob@example.com\n\
         \x20 {invocation} grants list --data-dir {data} --as bob@example.com   # that kind of delete now passes for 15 min\n\
         \x20 Approvers (alice, bob: sre; carol: security) are in {approvers}\n\n\
         Policy: {policy} (reloaded when saved)  Identities: {identities} (edit, then restart)\n\
         Stop with Ctrl-C, then check the evidence and replay a session (its id is in the proxy log):\n\
         \x20 {invocation} ledger verify --data-dir {data}\n\
         \x20 {invocation} replay SESSION_ID --data-dir {data} [--asciicast session.cast]\n",
        ci = kc("ci-deployer"),
        ro = kc("readonly-bot"),
        intruder = kc("intruder"),
        policy = dir.join("config/policy.yaml").display(),
        identities = dir.join("config/identities.yaml").display(),
        approvers = dir.join("config/approvers.yaml").display(),
        invocation = options.invocation,
        data = options.data_dir.display(),
    ));
    println!("{guide}");
}

/// Writes `contents` unless the file exists (the user may have edited it). Returns the path.
fn keep_or_write(path: &Path, contents: &str) -> Result<PathBuf> {
    if !path.exists() {
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path.to_owned())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(path))
}

/// A path as a double-quoted YAML string.
fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// 32 random bytes, hex: a bearer token for the sandbox.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
