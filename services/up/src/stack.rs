//! `gatehouse up --data-dir DIR`: the whole path on one machine, in one process, in front of
//! the local control plane (default), the Kubernetes sandbox (`--sandbox`) or a cluster of the
//! user's (`--kubeconfig FILE`).
//!
//! Layout of DIR:
//! ```text
//! nats/         nats-server's JetStream store, log and configuration (deploy/nats/gatehouse.conf)
//!               and, in nats/keys/, a fresh NKey seed per service (mode 0600), when gatehouse
//!               starts it
//! ledger/       the evidence ledger (RocksDB)
//! controlplane/ the local control plane: etcd's data, its PKI, logs, the apiserver's audit log
//! tls/          the demo CA and the proxy's (and sandbox's) certificates
//! issuer/       the demo OIDC issuer's signing key
//! upstream/     the proxy's credential for the cluster (a ServiceAccount token)
//! config/       identities.yaml, policy.yaml and approvers.yaml (kept, edit them), proxy.yaml,
//!               evidence.yaml and approval.yaml (rewritten at every start: ports change)
//! kubeconfigs/  one kubeconfig per demo identity, plus cluster-admin (straight to the cluster,
//!               bypassing Gatehouse; not with --kubeconfig)
//! tokens/       a token per demo approver, for `gatehouse approvals vote --as …`
//! checkpoint/   the demo checkpoint key (checkpoint.key) and its verifier key (checkpoint.vkey)
//! approval.url  where the approval service's API answers
//! auditor.url   where the evidence service's auditor API answers (token: tokens/auditor@…)
//! ```
//!
//! Start order: NATS, PKI, the cluster (control plane or sandbox, seeded with the demo), issuer,
//! the stream and buckets (as NATS's admin user, on gatehouse's own server), evidence, approval,
//! proxy, kubeconfigs. Stop order: proxy (drains), approval, evidence (after
//! catching up with the stream, so the ledger holds every event of the session), the cluster,
//! issuer, NATS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gatehouse::kubeconfig;
use gatehouse::load_yaml;
use gatehouse::nats_server::{NatsKeys, NatsRole, NatsServer};
use gatehouse_evidence::{Evidence, EvidenceError};
use gatehouse_proxy::{Proxy, ProxyConfig};
use gatehouse_sandbox::issuer::{DemoUser, Issuer, IssuerKeys, OidcClient};
use gatehouse_sandbox::pki::{LocalCa, server_tls_config};
use gatehouse_sandbox::rbac::RbacConfig;
use gatehouse_sandbox::{Sandbox, SandboxConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{self, Cluster, Upstream};
use crate::demo::{self, AUDIENCE, IDENTITIES};

/// How long demo tokens live. Long enough for an afternoon; kubeconfigs are rewritten at start.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// What `gatehouse up` runs: the stack, the cluster behind it, and how it was called.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub stack: StackOptions,
    /// How to run this binary, for the instructions printed (the wrapper script sets it).
    pub invocation: String,
}

/// How to start a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The cluster behind the proxy.
    pub upstream: Upstream,
    /// Use this NATS (with JetStream) instead of starting nats-server.
    pub nats_url: Option<String>,
    /// With `nats_url`: the users that NATS was started with (`deploy/nats/gatehouse.conf`),
    /// so each service connects as its own and the admin sets the stream up.
    pub nats_keys: Option<NatsKeys>,
    /// JetStream replicas of the stream and buckets (3 on a three-node cluster).
    pub nats_replicas: usize,
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// YAML sections (`slack:`, `teams:`, `discord:`) added to the approval service's
    /// configuration.
    pub approval_channels: String,
    /// Start the local control plane with the demo cluster in it (namespaces, workloads,
    /// RBAC for the demo identities). The sandbox always has its own.
    pub seed_demo: bool,
    /// The local control plane's etcd compaction interval (default: the apiserver's).
    pub etcd_compaction_interval: Option<Duration>,
    /// A YAML mapping (`{header_read_timeout: 1s}`) given as the timeouts and connection
    /// limits of every listener of the stack; empty: the defaults.
    pub connections: String,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            upstream: Upstream::default(),
            nats_url: None,
            nats_keys: None,
            nats_replicas: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            approval_channels: String::new(),
            seed_demo: true,
            etcd_compaction_interval: None,
            connections: String::new(),
        }
    }
}

/// Every part of the deployment, running. Tests drive the same stack `up` runs.
pub struct Stack {
    /// The data directory (absolute).
    pub dir: PathBuf,
    /// The nats-server `up` started, if it started one: with `deploy/nats/gatehouse.conf`,
    /// every service connecting as its own NKey user.
    pub nats_server: Option<NatsServer>,
    pub nats_url: String,
    /// The users every service connects as, when NATS was started with Gatehouse's
    /// authorization.
    pub nats_keys: Option<NatsKeys>,
    /// The demo CA (PEM) that signed the proxy's (and the sandbox's) certificates.
    pub ca_pem: String,
    /// The cluster behind the proxy.
    pub cluster: Cluster,
    pub issuer: Issuer,
    /// The second, GitHub-Actions-shaped issuer.
    pub ci_issuer: Issuer,
    pub evidence: Arc<Evidence>,
    pub proxy_addr: SocketAddr,
    /// The proxy's admin port (`/healthz`, `/readyz`, `/metrics`), plain HTTP on loopback.
    pub proxy_admin_addr: SocketAddr,
    /// The evidence service's auditor API (plain HTTP on loopback), and its task.
    pub auditor_api_addr: Option<SocketAddr>,
    /// The evidence service's admin port (`/metrics`, `/healthz`, `POST /checkpoint`).
    pub evidence_admin_addr: Option<SocketAddr>,
    /// The approval service's admin port (`/metrics`, `/healthz`).
    pub approval_admin_addr: Option<SocketAddr>,
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
    /// Starts NATS (unless `nats_url`), PKI, the cluster, issuer, evidence, approval and
    /// proxy, in that order.
    pub async fn start(data_dir: &Path, options: &StackOptions) -> Result<Self> {
        let dir = absolute(data_dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let listen = options.listen;
        let approval_channels = options.approval_channels.as_str();

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

        // The cluster first: a user's credential is checked before anything starts, and the
        // local control plane takes longest.
        let (cluster, upstream_yaml) = start_cluster(options, &dir, &ca, &ca_file, &sans).await?;

        let mut nats_server = None;
        let nats_url = match options.nats_url.as_deref() {
            Some(url) => url.to_owned(),
            None => {
                // Fresh keys at every start: the server is new too, and a key left from an
                // earlier run opens nothing.
                let keys = NatsKeys::generate(&dir.join("nats").join("keys"))?;
                let server = NatsServer::start_secured(&dir.join("nats"), &keys).await?;
                let url = server.url().to_owned();
                nats_server = Some(server);
                url
            }
        };
        let nats_keys = nats_server
            .as_ref()
            .and_then(NatsServer::keys)
            .or(options.nats_keys.as_ref())
            .cloned();
        let replicas = options.nats_replicas.max(1);
        // `  nkey_file: …` under each service's `nats:` when NATS has Gatehouse's users, and the
        // stream's replicas when there are more than one.
        let nats_extra = |role: NatsRole| {
            let mut yaml = nats_keys
                .as_ref()
                .map(|k| format!("  nkey_file: {}\n", yaml_str(&k.seed_file(role))))
                .unwrap_or_default();
            if replicas > 1 {
                yaml.push_str(&format!("  stream:\n    replicas: {replicas}\n"));
            }
            yaml
        };

        let keys = IssuerKeys::load_or_generate(&dir.join("issuer"))?;
        // The people who sign in to the console and the approver page, with passwords made
        // once per data directory (`issuer/passwords.yaml`, readable by its owner only).
        let mut issuer = Issuer::builder(keys);
        for person in demo::people(&dir.join("issuer").join(demo::PASSWORDS_FILE))? {
            issuer = issuer.user(
                DemoUser::new(person.email, person.password)
                    .name(person.name)
                    .groups(person.groups),
            );
        }
        let issuer = issuer
            .start(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .context("binding the issuer")?,
            )
            .await?;
        // The console's and the approver page's listeners are bound first: their sign-in
        // callbacks name the ports.
        let auditor_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the auditor API")?;
        let approval_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the approval service")?;
        let auditor_origin = format!("http://{}", auditor_listener.local_addr()?);
        let approval_origin = format!("http://{}", approval_listener.local_addr()?);
        issuer.register_client(OidcClient::public(
            demo::CONSOLE_CLIENT,
            [format!("{auditor_origin}/signin/callback")],
        ));
        issuer.register_client(OidcClient::public(
            demo::APPROVAL_CLIENT,
            [format!("{approval_origin}/signin/callback")],
        ));
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
        // The demo's approval key: signs decisions and grants; proxies trust its verifier key.
        let approval_key = dir.join("keys").join("approval.key");
        let approval_keys = dir.join("keys").join("approval-keys");
        if !approval_key.exists() {
            let signer = gatehouse_proof::checkpoint::NoteSigner::from_seed(
                "approval.gatehouse.local",
                rand::random(),
            )?;
            kubeconfig::write_private(&approval_key, &format!("{}\n", signer.to_skey()))?;
            std::fs::write(
                &approval_keys,
                format!(
                    "# Verifier keys of the approval service (gatehouse approvals keygen)\n{}\n",
                    signer.verifier().to_vkey()
                ),
            )?;
        }
        // `key: {…}` for each listener's section when the options set one.
        let connections = |key: &str| {
            if options.connections.is_empty() {
                String::new()
            } else {
                format!("{key}: {}\n", options.connections)
            }
        };
        let approvers_file =
            keep_or_write(&config_dir.join("approvers.yaml"), demo::APPROVERS_YAML)?;
        let approval_file = config_dir.join("approval.yaml");
        std::fs::write(
            &approval_file,
            format!(
                "# Written by `gatehouse up`; run the same service alone with\n\
                 #   gatehouse approval --config {approval}\n\
                 listen: \"127.0.0.1:0\"\n\
                 admin_listen: \"127.0.0.1:0\"\n\
                 {connections}{admin_connections}\
                 replica: up\n\
                 nats:\n  url: {nats_url}\n{nats_extra}\
                 approvers: {approvers}\n\
                 signing_key_file: {approval_key}\n\
                 bucket_replicas: {replicas}\n\
                 api:\n  issuers:\n    - issuer: {issuer}\n      audiences: [{AUDIENCE}]\n\
                 public_url: {approval_origin}\n\
                 page:\n  signin:\n    issuer: {issuer}\n    client_id: {approval_client}\n\
                 \x20   redirect_url: {approval_origin}/signin/callback\n\
                 {approval_channels}",
                approval_client = demo::APPROVAL_CLIENT,
                approval = approval_file.display(),
                approvers = yaml_str(&approvers_file),
                approval_key = yaml_str(&approval_key),
                issuer = issuer.url(),
                connections = connections("connections"),
                admin_connections = connections("admin_connections"),
                nats_extra = nats_extra(NatsRole::Approval),
            ),
        )?;
        let approval_config = gatehouse_approval::ApprovalConfig::from_yaml(
            &std::fs::read_to_string(&approval_file)?,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", approval_file.display()))?;
        // Services may not create or change streams on the stack's own server: the stream and
        // buckets are made here, as the admin, before any service starts.
        if let Some(keys) = &nats_keys {
            let mut admin = gatehouse_bus::BusConfig::new(nats_url.clone());
            admin.stream = approval_config.nats.stream.clone();
            admin.nkey_file = Some(keys.seed_file(NatsRole::Admin));
            let bus = gatehouse_bus::Bus::connect(&admin, "gatehouse-up-setup").await?;
            gatehouse::nats_cmd::setup(&bus, &approval_config).await?;
        }
        let evidence_file = config_dir.join("evidence.yaml");
        std::fs::write(
            &evidence_file,
            format!(
                "# Written by `gatehouse up`; run the same service alone with\n\
                 #   gatehouse evidence --config {evidence}\n\
                 data_dir: {data}\n\
                 nats:\n  url: {nats_url}\n{nats_extra}\
                 checkpoints:\n  key_file: {key}\n  every: 10s\n\
                 admin_listen: \"127.0.0.1:0\"\n\
                 {admin_connections}\
                 api:\n  listen: \"127.0.0.1:0\"\n  auditor_groups: [auditors]\n\
                 \x20 issuers:\n    - issuer: {issuer}\n      audiences: [{AUDIENCE}]\n\
                 \x20 console:\n    signin:\n      issuer: {issuer}\n      client_id: {console_client}\n\
                 \x20     redirect_url: {auditor_origin}/signin/callback\n\
                 {api_connections}",
                console_client = demo::CONSOLE_CLIENT,
                evidence = evidence_file.display(),
                data = yaml_str(&dir),
                key = yaml_str(&checkpoint_key),
                issuer = issuer.url(),
                admin_connections = connections("admin_connections"),
                api_connections = connections("  connections"),
                nats_extra = nats_extra(NatsRole::Evidence),
            ),
        )?;
        let evidence_stop = CancellationToken::new();
        let (evidence_config, api_config) =
            gatehouse_evidence::api::load_evidence_config(&evidence_file)?;
        let evidence = Arc::new(Evidence::open(evidence_config.clone()).await?);
        let evidence_admin_addr = evidence.admin_addr();
        let auditor_api = match api_config {
            Some(api) => {
                let bus =
                    gatehouse_bus::Bus::connect(&evidence_config.nats, "gatehouse-evidence-api")
                        .await?;
                let server = gatehouse_evidence::api::AuditorApi::start_on(
                    &api,
                    Some(auditor_listener),
                    evidence_config.data_dir.clone(),
                    bus,
                    "up",
                    evidence_stop.clone(),
                )
                .await
                .map_err(anyhow::Error::msg)?
                .with_metrics(evidence.metrics().listeners())
                .with_evidence_config(&evidence_config);
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

        let approval_stop = CancellationToken::new();
        let approval_server = gatehouse_approval::ApprovalServer::start_on(
            &approval_config,
            Some(approval_listener),
            approval_stop.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("approval service: {e}"))?;
        let approval_addr = approval_server.local_addr();
        let approval_admin_addr = approval_server.admin_addr();
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
                 {connections}{admin_connections}\
                 replica: up\n\
                 tls:\n  cert_file: {cert}\n  key_file: {key}\n\
                 upstream:\n{upstream_yaml}\
                 nats:\n  url: {nats_url}\n{nats_extra}\
                 issuers:\n  - issuer: {issuer}\n    audiences: [{AUDIENCE}]\n\
                 \x20 - issuer: {ci_issuer}\n    audiences: [{AUDIENCE}]\n\
                 \x20   claims:\n      preset: github-actions\n\
                 \x20     principal: \"{{repository}}@{{environment|ref}}\"\n\
                 identities: {identities}\n\
                 policy: {policy}\n\
                 approval_keys: {approval_keys}\n",
                proxy = proxy_file.display(),
                approval_keys = yaml_str(&approval_keys),
                cert = yaml_str(&proxy_cert_file),
                key = yaml_str(&proxy_key_file),
                issuer = issuer.url(),
                ci_issuer = ci_issuer.url(),
                identities = yaml_str(&identities_file),
                policy = yaml_str(&policy_file),
                nats_extra = nats_extra(NatsRole::Proxy),
                connections = connections("connections"),
                admin_connections = connections("admin_connections"),
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
            nats_keys,
            ca_pem,
            cluster,
            issuer,
            ci_issuer,
            evidence,
            proxy_addr,
            proxy_admin_addr,
            auditor_api_addr: auditor_api.as_ref().map(|(a, _)| *a),
            evidence_admin_addr,
            approval_admin_addr,
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

    /// How `role` connects to the stack's NATS: its URL and, when the stack runs its own
    /// nats-server, the role's NKey seed file.
    pub fn nats_config(&self, role: NatsRole) -> gatehouse_bus::BusConfig {
        let mut config = gatehouse_bus::BusConfig::new(self.nats_url.clone());
        config.nkey_file = self.nats_keys.as_ref().map(|keys| keys.seed_file(role));
        config
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
    /// with the stream, then the cluster, the issuer and NATS. Returns the ledger's head.
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
        self.cluster.stop().await;
        self.issuer.shutdown().await;
        self.ci_issuer.shutdown().await;
        if let Some(mut server) = self.nats_server {
            server.stop().await;
        }
        evidence_result?;
        Ok(self.evidence.head())
    }
}

/// Starts (or checks) the cluster and returns it with the proxy's `upstream:` settings (YAML,
/// indented under `upstream:`).
async fn start_cluster(
    options: &StackOptions,
    dir: &Path,
    ca: &LocalCa,
    ca_file: &Path,
    sans: &[&str],
) -> Result<(Cluster, String)> {
    let token_file = dir.join("upstream").join("proxy.token");
    match &options.upstream {
        Upstream::ControlPlane => {
            let mut plane = gatehouse_controlplane::Options::new(dir.join("controlplane"));
            plane.etcd_compaction_interval = options.etcd_compaction_interval;
            let cluster =
                cluster::start_control_plane(plane, &token_file, options.seed_demo).await?;
            let plane = cluster.control_plane().context("the control plane")?;
            let yaml = format!(
                "  url: {url}\n  ca_file: {ca}\n  token_file: {token}\n",
                url = plane.url(),
                ca = yaml_str(plane.ca_file()),
                token = yaml_str(&token_file),
            );
            Ok((cluster, yaml))
        }
        Upstream::Sandbox => {
            let proxy_token = random_token();
            let admin_token = random_token();
            kubeconfig::write_private(&token_file, &proxy_token)
                .context("writing the proxy's sandbox token")?;
            let sandbox_cert = ca.issue_server_cert(sans)?;
            let handle = Sandbox::start(
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
            let yaml = format!(
                "  url: {url}\n  ca_file: {ca}\n  token_file: {token}\n",
                url = handle.url(),
                ca = yaml_str(ca_file),
                token = yaml_str(&token_file),
            );
            Ok((
                Cluster::Sandbox {
                    handle,
                    admin_token,
                },
                yaml,
            ))
        }
        Upstream::Kubeconfig { file, context } => {
            let file = absolute(file)?;
            let (user, url) = cluster::check_external(&file, context.as_deref()).await?;
            let mut yaml = format!("  kubeconfig: {}\n", yaml_str(&file));
            if let Some(context) = context {
                yaml.push_str(&format!(
                    "  context: {}\n",
                    serde_json::to_string(context).unwrap_or_default()
                ));
            }
            let origin = format!(
                "{url} as {user} (kubeconfig {}{})",
                file.display(),
                context
                    .as_deref()
                    .map(|c| format!(", context {c}"))
                    .unwrap_or_default()
            );
            Ok((Cluster::External { url, origin }, yaml))
        }
    }
}

/// Runs the stack until `shutdown` is cancelled, then stops it in order.
pub async fn run(options: UpOptions, shutdown: CancellationToken) -> Result<()> {
    match &options.stack.upstream {
        Upstream::ControlPlane => eprintln!(
            "Starting a local Kubernetes control plane (etcd, kube-apiserver, \
             kube-controller-manager, kube-scheduler, kwok nodes) and the demo cluster in it…"
        ),
        Upstream::Sandbox => eprintln!("Starting the Kubernetes sandbox…"),
        Upstream::Kubeconfig { file, .. } => {
            eprintln!("Checking the credential in {}…", file.display())
        }
    }
    let stack = tokio::select! {
        stack = Stack::start(&options.data_dir, &options.stack) => stack?,
        () = shutdown.cancelled() => anyhow::bail!("interrupted while starting"),
    };
    for identity in IDENTITIES {
        stack.demo_kubeconfig(identity.principal, identity.namespace)?;
    }
    // Principals added to the registry get a kubeconfig too (tests/conformance's e2e identity,
    // for one); those whose names are no file name (`github:org/repo@env`) do not.
    let registry = std::fs::read_to_string(stack.dir.join("config").join("identities.yaml"))?;
    let registry = gatehouse_proxy::identity::Registry::from_yaml(&registry)
        .map_err(|e| anyhow::anyhow!("config/identities.yaml: {e}"))?;
    for principal in registry.principals() {
        let plain_name = principal
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if plain_name && !IDENTITIES.iter().any(|i| i.principal == principal) {
            stack.demo_kubeconfig(principal, "default")?;
        }
    }
    let admin_kubeconfig = stack
        .dir
        .join("kubeconfigs")
        .join("cluster-admin.kubeconfig");
    match stack.cluster.admin_kubeconfig(&stack.ca_pem, "default") {
        Some(admin) => kubeconfig::write_private(&admin_kubeconfig, &admin)?,
        None => {
            let _ = std::fs::remove_file(&admin_kubeconfig);
        }
    }
    // The control plane's own kubectl, so the guide's commands work where none is installed.
    let kubectl = stack.cluster.control_plane().map(|plane| {
        let link = stack.dir.join("bin").join("kubectl");
        let _ = std::fs::create_dir_all(stack.dir.join("bin"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(plane.binaries().kubectl(), &link).map(|()| link)
    });
    print_guide(&options, &stack, kubectl.and_then(Result::ok).as_deref());

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

fn print_guide(options: &UpOptions, stack: &Stack, kubectl: Option<&Path>) {
    let dir = &stack.dir;
    let (proxy, admin, issuer, nats) = (
        stack.proxy_url(),
        stack.proxy_admin_url(),
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
        "\nGatehouse is up. Data: {data}\n\n\
         \x20 proxy    {proxy}   <- kubectl talks to this\n\
         \x20 admin    {admin}    (proxy /healthz /readyz /metrics)\n\
         \x20 cluster  {cluster}   ({what})\n\
         \x20 issuer   {issuer}    (demo OIDC issuer)\n\
         \x20 nats     {nats}     (JetStream; every event is acked here first)\n\
         \x20 approval {approval}    (approval service: chat callbacks and `approvals` API)\n\
         \x20 ledger   {ledger}\n\n\
         Kubeconfigs:\n",
        data = dir.display(),
        cluster = stack.cluster.url(),
        what = stack.cluster.describe(),
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
    if stack
        .cluster
        .admin_kubeconfig(&stack.ca_pem, "default")
        .is_some()
    {
        guide.push_str(&format!(
            "  {:<14} {}\n  {:<14} straight to the cluster as its admin, bypassing Gatehouse (for comparison)\n",
            "cluster-admin",
            kc("cluster-admin"),
            ""
        ));
    }
    if let Some(plane) = stack.cluster.control_plane() {
        guide.push_str(&format!(
            "\nThe cluster's own audit log (joins the ledger by Audit-ID = Gatehouse's request id): {}\n",
            plane.audit_log().display()
        ));
    }
    if matches!(stack.cluster, Cluster::External { .. }) {
        guide.push_str(
            "\nThe demo identities are users of your cluster now: its RBAC decides what they may \
             do after Gatehouse's policy. deploy/demo/cluster.yaml has RBAC for them (review it \
             before applying it to a cluster of yours).\n",
        );
    }
    if let Some(kubectl) = kubectl {
        guide.push_str(&format!(
            "\nkubectl of the cluster's release is {} (export PATH=\"{}:$PATH\" to use it).\n",
            kubectl.display(),
            kubectl.parent().unwrap_or(Path::new(".")).display()
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
         \x20 kubectl auth whoami                               # who the cluster sees: ci-deployer, impersonated\n\
         \x20 kubectl --kubeconfig {ro} get pods -n prod\n\
         \x20 kubectl --kubeconfig {ro} get configmaps -n kube-system   # Gatehouse allows it; the cluster's RBAC refuses\n\
         \x20 kubectl --kubeconfig {ro} get secrets -n apps             # denied by Gatehouse policy\n\
         \x20 kubectl --kubeconfig {intruder} get pods                  # unknown identity: denied\n\
         \x20 kubectl get secret db-credentials -o yaml       # values masked (base64 of gatehouse:masked)\n\
         \x20 kubectl exec web -- sh -c 'echo hi; id'         # relayed and recorded (kwok runs it on this machine)\n\
         \x20 kubectl logs web                                # what the container printed, its token masked (in the answer and the record)\n\
         \x20 kubectl exec -n prod api -- sh                  # denied: no shells outside apps\n\
         \x20 {invocation} policy explain --policy {policy} --as ci-deployer exec pods/exec -n prod web --command sh\n\n\
         Approvals (deletes in prod wait for an SRE's vote; no chat account needed):\n\
         \x20 kubectl delete configmap api-config -n prod &    # held until someone approves\n\
         \x20 {invocation} approvals list --data-dir {data} --as bob@example.com\n\
         \x20 {invocation} approvals vote APPROVAL_ID --approve --data-dir {data} --as bob@example.com\n\
         \x20 {invocation} grants list --data-dir {data} --as bob@example.com   # that kind of delete now passes for 15 min\n\
         \x20 Approvers (alice, bob: sre; carol: security) are in {approvers}; alice owns ci-deployer,\n\
         \x20 so she may deny its requests but not approve them (four eyes)\n\n\
         In a browser (sign in as auditor@example.com, bob@example.com, … with the passwords in\n\
         {passwords}):\n\
         \x20 {console}/console/      the auditor console: search, proofs checked in the browser, replay, bundles\n\
         \x20 kubectl delete deployment payments -n prod &   # held; only a fresh sign-in on its page counts (step-up):\n\
         \x20 {approval}/holds/APPROVAL_ID   the approver page (chat messages link to it)\n\n\
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
        passwords = dir.join("issuer").join(demo::PASSWORDS_FILE).display(),
        console = std::fs::read_to_string(dir.join("auditor.url"))
            .map(|u| u.trim().to_owned())
            .unwrap_or_default(),
        approval = stack.approval_url(),
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
