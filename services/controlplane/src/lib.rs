//! A real Kubernetes control plane on loopback, built from its Go modules
//! (`deploy/controlplane/build`): etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok, the fake kubelet that makes Pods Running and serves `logs`, `exec`,
//! `attach` and `port-forward`. It is the upstream of Gatehouse's tests, of `gatehouse up` and of
//! the benchmarks; nothing here is linked into the product binary.
//!
//! Every process listens on 127.0.0.1 on a free port, logs into `<dir>/logs/`, and is stopped
//! when the [`ControlPlane`] is stopped or dropped. Readiness is waited on by condition:
//! etcd's `/health`, the apiserver's `/readyz`, the `default` ServiceAccount (the controller
//! manager works), every node Ready (kwok works).
//!
//! Nodes and pods have loopback addresses only (kwok's node IP is 127.0.0.1, the apiserver
//! reaches kubelets by `InternalIP`, pod IPs come from 127.1.0.0/16), so the apiserver never
//! dials out of 127.0.0.0/8, not even for a pod's `proxy` subresource.
//!
//! Module map:
//! - [`binaries`]: where the built binaries are (and building them when they are not).
//! - [`process`]: the processes' lifetimes.
//! - [`files`]: what the processes read: certificates, tokens, kubeconfigs, the audit policy,
//!   kwok's configuration.
//! - [`audit`]: the apiserver's own audit log, read back.
#![forbid(unsafe_code)]

pub mod audit;
pub mod binaries;
pub mod files;
pub mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_proxy::http_client::{HttpsClient, client_tls, https_client};
use http_body_util::{BodyExt, Full};

pub use audit::AuditEvent;
pub use binaries::Binaries;
use process::{Spec, Supervisor};

/// How long each component may take to become ready. Generous: two shared cores, and the
/// apiserver's post-start hooks (RBAC bootstrap among them) run before `/readyz` says ok.
const READY_DEADLINE: Duration = Duration::from_secs(180);

/// The namespace and name of the proxy's ServiceAccount (`deploy/kubernetes/base/proxy/rbac.yaml`).
pub const PROXY_NAMESPACE: &str = "gatehouse";
pub const PROXY_SERVICE_ACCOUNT: &str = "gatehouse-proxy";

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Binaries(String),
    #[error("certificates: {0}")]
    Pki(String),
    #[error("{name} exited during start-up ({status}); its log is {log}:\n{tail}")]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} was not ready within {deadline:?}{detail}")]
    NotReady {
        what: String,
        deadline: Duration,
        detail: String,
    },
    #[error("the control plane's process {0} has already been stopped")]
    Stopped(String),
    #[error("kubectl {args}: {message}")]
    Kubectl { args: String, message: String },
    #[error("{0}")]
    Http(String),
}

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds every file of the control plane (etcd's data, certificates, logs, the audit log).
    pub dir: PathBuf,
    /// Fake nodes kwok manages.
    pub nodes: usize,
    /// How often the apiserver compacts etcd (its own default is five minutes). Short, an old
    /// resourceVersion soon answers 410 Gone, as it does on a busy cluster.
    pub etcd_compaction_interval: Option<Duration>,
}

impl Options {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            nodes: 2,
            etcd_compaction_interval: None,
        }
    }
}

/// Ports the control plane listens on, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    /// kwok's kubelet API (every node's `kubeletEndpoint`).
    pub kubelet: u16,
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    binaries: Binaries,
    files: files::Files,
    ports: Ports,
    nodes: Vec<String>,
    compaction: Option<Duration>,
    supervisor: Supervisor,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, in that
    /// order, each once the one before is ready; returns when nodes are Ready and the
    /// controllers have made the `default` ServiceAccount.
    pub async fn start(options: Options) -> Result<Self, ControlPlaneError> {
        // Ports are found free and then handed to the processes, so another process can take
        // one in between (ephemeral ports serve outgoing connections too): a component that
        // could not bind its port is started again, with the rest, on new ports.
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once(&options).await {
                Err(ControlPlaneError::Exited { name, tail, .. })
                    if attempt < ATTEMPTS && tail.contains("address already in use") =>
                {
                    tracing::warn!(component = %name, attempt, "a port was taken before its component bound it; starting again on new ports");
                    let data = absolute(&options.dir)?.join("etcd");
                    if data.exists() {
                        std::fs::remove_dir_all(&data).map_err(|e| {
                            ControlPlaneError::Io(format!("removing {}", data.display()), e)
                        })?;
                    }
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(options: &Options) -> Result<Self, ControlPlaneError> {
        let binaries = Binaries::locate()?;
        let dir = absolute(&options.dir)?;
        let started = Instant::now();
        let ports = Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port()?,
            kubelet: free_port()?,
        };
        let files = files::Files::write(&dir, &ports)?;
        let nodes = (0..options.nodes.max(1))
            .map(|i| format!("kwok-node-{i}"))
            .collect();
        let plane = Self {
            dir,
            binaries,
            files,
            ports,
            nodes,
            compaction: options.etcd_compaction_interval,
            supervisor: Supervisor::new()?,
        };
        plane.start_etcd().await?;
        plane.start_apiserver().await?;
        plane.start_controllers()?;
        plane.start_kwok().await?;
        plane.wait_for_controllers().await?;
        tracing::info!(
            url = %plane.url(),
            seconds = started.elapsed().as_secs_f64(),
            "control plane ready"
        );
        Ok(plane)
    }

    async fn start_etcd(&self) -> Result<(), ControlPlaneError> {
        let (client, peer) = (self.ports.etcd_client, self.ports.etcd_peer);
        let data = self.dir.join("etcd");
        self.supervisor.start(Spec {
            name: "etcd",
            program: self.binaries.etcd(),
            args: vec![
                "--name=gatehouse".into(),
                format!("--data-dir={}", data.display()),
                "--log-level=warn".into(),
                // Tests and demos: durability across power loss is not what this etcd is for.
                "--unsafe-no-fsync".into(),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=gatehouse=http://127.0.0.1:{peer}"),
            ],
            log: self.log("etcd"),
        })?;
        let client = https_client::<Full<Bytes>>(
            client_tls(None, false).map_err(|e| ControlPlaneError::Http(e.to_string()))?,
            Duration::from_secs(2),
        );
        let url = format!("http://127.0.0.1:{}/health", self.ports.etcd_client);
        self.wait_until("etcd", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (status, body) = get(&client, &url, None).await.ok()?;
                (status == 200 && body.contains("\"health\":\"true\"")).then_some(())
            }
        })
        .await
    }

    async fn start_apiserver(&self) -> Result<(), ControlPlaneError> {
        let f = &self.files;
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.ports.etcd_client),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.ports.apiserver),
            // Without a default route the apiserver cannot pick an address of its own; with a
            // loopback one the endpoint reconciler would write an invalid Endpoints object.
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--tls-cert-file={}", f.apiserver_cert.display()),
            format!("--tls-private-key-file={}", f.apiserver_key.display()),
            format!("--client-ca-file={}", f.ca_cert.display()),
            format!("--token-auth-file={}", f.tokens.display()),
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                f.service_account_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                f.service_account_key.display()
            ),
            "--allow-privileged=true".into(),
            // The kubelets are kwok, on loopback: reach them by the node's InternalIP
            // (127.0.0.1), never by a host name a resolver would have to look up.
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--kubelet-certificate-authority={}", f.ca_cert.display()),
            format!("--audit-policy-file={}", f.audit_policy.display()),
            format!("--audit-log-path={}", f.audit_log.display()),
            "--audit-log-format=json".into(),
            "--audit-log-maxsize=0".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        if let Some(interval) = self.compaction {
            args.push(format!(
                "--etcd-compaction-interval={}s",
                interval.as_secs().max(1)
            ));
        }
        self.supervisor.start(Spec {
            name: "kube-apiserver",
            program: self.binaries.kube_apiserver(),
            args,
            log: self.log("kube-apiserver"),
        })?;
        let client = self.admin_client()?;
        let url = format!("{}/readyz", self.url());
        let token = self.files.admin_token.clone();
        self.wait_until("kube-apiserver", || {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let (status, body) = get(&client, &url, Some(&token)).await.ok()?;
                (status == 200 && body.trim() == "ok").then_some(())
            }
        })
        .await
    }

    fn start_controllers(&self) -> Result<(), ControlPlaneError> {
        let f = &self.files;
        let controllers = [
            "namespace-controller",
            "garbage-collector-controller",
            "serviceaccount-controller",
            "serviceaccount-token-controller",
            "root-ca-certificate-publisher-controller",
            "clusterrole-aggregation-controller",
            "deployment-controller",
            "replicaset-controller",
            "replicationcontroller-controller",
            "statefulset-controller",
            "daemonset-controller",
            "job-controller",
            "cronjob-controller",
            "ttl-after-finished-controller",
            "endpoints-controller",
            "endpointslice-controller",
            "resourcequota-controller",
            "disruption-controller",
            "pod-garbage-collector-controller",
            // Takes the not-ready taint (admission puts it on every new Node) off once kwok
            // reports the node Ready; kwok keeps the nodes' leases fresh.
            "node-lifecycle-controller",
        ];
        let args = vec![
            format!("--kubeconfig={}", f.controller_manager_kubeconfig.display()),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            // No serving endpoint: nothing scrapes it, and it would be one more port.
            "--secure-port=0".into(),
            format!("--controllers={}", controllers.join(",")),
            format!("--root-ca-file={}", f.ca_cert.display()),
            format!(
                "--service-account-private-key-file={}",
                f.service_account_key.display()
            ),
            "--use-service-account-credentials=true".into(),
            "--concurrent-gc-syncs=5".into(),
            "--v=1".into(),
        ];
        self.supervisor.start(Spec {
            name: "kube-controller-manager",
            program: self.binaries.kube_controller_manager(),
            args,
            log: self.log("kube-controller-manager"),
        })?;
        let args = vec![
            format!("--kubeconfig={}", f.scheduler_kubeconfig.display()),
            format!(
                "--authentication-kubeconfig={}",
                f.scheduler_kubeconfig.display()
            ),
            format!(
                "--authorization-kubeconfig={}",
                f.scheduler_kubeconfig.display()
            ),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ];
        self.supervisor.start(Spec {
            name: "kube-scheduler",
            program: self.binaries.kube_scheduler(),
            args,
            log: self.log("kube-scheduler"),
        })?;
        Ok(())
    }

    async fn start_kwok(&self) -> Result<(), ControlPlaneError> {
        // kwok reads these kinds from the API (so a test can point one pod's port-forward or
        // logs somewhere of its own); their CRDs must exist before it starts.
        self.apply(&files::kwok_crds()).await?;
        let f = &self.files;
        let args = vec![
            format!("--kubeconfig={}", f.kwok_kubeconfig.display()),
            format!("--config={}", f.kwok_config.display()),
            "--manage-all-nodes=true".into(),
            "--node-ip=127.0.0.1".into(),
            format!("--node-port={}", self.ports.kubelet),
            format!("--server-address=127.0.0.1:{}", self.ports.kubelet),
            format!("--tls-cert-file={}", f.kubelet_cert.display()),
            format!("--tls-private-key-file={}", f.kubelet_key.display()),
            "--node-lease-duration-seconds=40".into(),
            // Pod IPs on loopback too: whatever dials a pod (the `proxy` subresource) stays on
            // this machine. EndpointSlices refuse loopback addresses, so Services have none.
            "--cidr=127.1.0.0/16".into(),
            format!(
                "--enable-crds={}",
                files::KWOK_KINDS.map(|(kind, _, _)| kind).join(",")
            ),
        ];
        self.supervisor.start(Spec {
            name: "kwok",
            program: self.binaries.kwok(),
            args,
            log: self.log("kwok"),
        })?;
        let nodes: String = self
            .nodes
            .iter()
            .map(|name| files::node_manifest(name))
            .collect();
        self.apply(&nodes).await?;
        let names = self.nodes.clone();
        self.wait_until("kwok's nodes to be Ready", || {
            let names = names.clone();
            async move {
                let out = self
                    .kubectl(&[
                        "get",
                        "nodes",
                        "-o",
                        "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                    ])
                    .await
                    .ok()?;
                names
                    .iter()
                    .all(|n| out.lines().any(|l| l == format!("{n}=True")))
                    .then_some(())
            }
        })
        .await
    }

    async fn wait_for_controllers(&self) -> Result<(), ControlPlaneError> {
        self.wait_until(
            "the controller manager (the default ServiceAccount in namespace default)",
            || async {
                self.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    "default",
                    "-o",
                    "name",
                ])
                .await
                .ok()
                .filter(|out| out.trim() == "serviceaccount/default")
            },
        )
        .await?;
        // The scheduler and kwok together: a pod is bound to a node and Running.
        self.apply(files::PROBE_POD).await?;
        self.wait_until("a probe pod to be scheduled and Running", || async {
            let phase = self
                .kubectl(&[
                    "get",
                    "pod",
                    files::PROBE_POD_NAME,
                    "-n",
                    "kube-system",
                    "-o",
                    "jsonpath={.spec.nodeName}/{.status.phase}",
                ])
                .await
                .ok()?;
            let (node, phase) = phase.split_once('/')?;
            (!node.is_empty() && phase == "Running").then_some(())
        })
        .await?;
        self.kubectl(&[
            "delete",
            "pod",
            files::PROBE_POD_NAME,
            "-n",
            "kube-system",
            "--wait=false",
        ])
        .await
        .map(drop)
    }

    /// Polls `check` every 100 ms until it answers, failing early if a process has exited.
    async fn wait_until<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T, ControlPlaneError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(value) = check().await {
                tracing::debug!(what, seconds = start.elapsed().as_secs_f64(), "ready");
                return Ok(value);
            }
            // A process that died will never be ready: say which, with its log.
            self.check_processes()?;
            if start.elapsed() > READY_DEADLINE {
                return Err(ControlPlaneError::NotReady {
                    what: what.into(),
                    deadline: READY_DEADLINE,
                    detail: format!("; logs in {}", self.dir.join("logs").display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails naming the first process that has exited, with the end of its log.
    pub fn check_processes(&self) -> Result<(), ControlPlaneError> {
        for name in self.supervisor.names() {
            if let Some(status) = self.supervisor.exit_status(name) {
                let log = self.log(name);
                return Err(ControlPlaneError::Exited {
                    name: name.to_owned(),
                    status: status.to_string(),
                    tail: process::log_tail(&log, 20),
                    log,
                });
            }
        }
        Ok(())
    }

    fn log(&self, name: &str) -> PathBuf {
        Self::log_in(&self.dir, name)
    }

    fn log_in(dir: &Path, name: &str) -> PathBuf {
        dir.join("logs").join(format!("{name}.log"))
    }

    fn admin_client(&self) -> Result<HttpsClient<Full<Bytes>>, ControlPlaneError> {
        let tls = client_tls(Some(&self.files.ca_cert), false)
            .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        Ok(https_client(tls, Duration::from_secs(5)))
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The directory holding everything of this control plane.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the apiserver's serving certificate (PEM file).
    pub fn ca_file(&self) -> &Path {
        &self.files.ca_cert
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.files.ca_cert).unwrap_or_default()
    }

    /// A token of `cluster-admin` (group `system:masters`): for setting the cluster up and
    /// looking behind Gatehouse's back, never for Gatehouse itself.
    pub fn admin_token(&self) -> &str {
        &self.files.admin_token
    }

    /// A kubeconfig with [`ControlPlane::admin_token`].
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.files.admin_kubeconfig
    }

    /// The API server's own log in a control plane's directory (running or stopped): where it
    /// prints the audit events its audit log could not take ([`audit::read_unwritten`]).
    pub fn apiserver_log_in(dir: &Path) -> PathBuf {
        Self::log_in(dir, "kube-apiserver")
    }

    /// The apiserver's audit log in a control plane's directory (running or stopped).
    pub fn audit_log_in(dir: &Path) -> PathBuf {
        files::Files::audit_log_in(dir)
    }

    /// The apiserver's audit log (JSON lines, `audit.k8s.io/v1` events).
    pub fn audit_log(&self) -> &Path {
        &self.files.audit_log
    }

    /// The directory exec sessions run in (kwok runs them as local processes there).
    pub fn exec_dir(&self) -> &Path {
        &self.files.exec_dir
    }

    /// The file every container's logs and attach streams read (CRI log format).
    pub fn container_log(&self) -> &Path {
        &self.files.container_log
    }

    /// The names of kwok's nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Runs the control plane's own kubectl as the admin and returns its stdout.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, ControlPlaneError> {
        self.kubectl_stdin(args, None).await
    }

    /// [`ControlPlane::kubectl`] with `stdin` piped in.
    pub async fn kubectl_stdin(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ControlPlaneError> {
        let output = self
            .binaries
            .kubectl_command(
                &self.files.admin_kubeconfig,
                &self.dir.join("kubectl"),
                args,
                stdin,
            )
            .await
            .map_err(|e| ControlPlaneError::Kubectl {
                args: args.join(" "),
                message: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(ControlPlaneError::Kubectl {
                args: args.join(" "),
                message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply --server-side -f -` of `manifest` as the admin.
    pub async fn apply(&self, manifest: &str) -> Result<(), ControlPlaneError> {
        self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=gatehouse-controlplane",
                "-f",
                "-",
            ],
            Some(manifest),
        )
        .await
        .map(drop)
    }

    /// A token for a ServiceAccount (TokenRequest), valid for `ttl`.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String, ControlPlaneError> {
        let duration = format!("{}s", ttl.as_secs());
        let token = self
            .kubectl(&[
                "create",
                "token",
                name,
                "-n",
                namespace,
                "--duration",
                &duration,
            ])
            .await?;
        Ok(token.trim().to_owned())
    }

    /// Waits until `user` may `verb` `resource` (in `namespace`) as RBAC sees it: RBAC's
    /// authorizer reads from caches, so a binding just created takes a moment to count.
    pub async fn wait_for_access(
        &self,
        user: &str,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<(), ControlPlaneError> {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        self.wait_until(
            &format!("{user} to be allowed to {verb} {resource}"),
            || async {
                let out = self.kubectl(&args).await.ok()?;
                (out.trim() == "yes").then_some(())
            },
        )
        .await
    }

    /// Gives pod `namespace/name` a log of its own (what `kubectl logs` and `attach` read
    /// through kwok, instead of the file all containers share) and returns its path; append to
    /// it with [`files::append_container_log`].
    pub async fn pod_log(&self, namespace: &str, name: &str) -> Result<PathBuf, ControlPlaneError> {
        let path = self
            .dir
            .join("pods")
            .join(format!("{namespace}_{name}.log"));
        if !path.exists() {
            files::write_new(&path)?;
        }
        let file = serde_json::to_string(&path.display().to_string()).unwrap_or_default();
        self.apply(&format!(
            "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Logs\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  logs:\n  - logsFile: {file}\n    follow: true\n---\n\
             apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Attach\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  attaches:\n  - logsFile: {file}\n"
        ))
        .await?;
        Ok(path)
    }

    /// Makes kwok forward every port of pod `namespace/name` to `127.0.0.1:target`.
    pub async fn forward_pod_ports(
        &self,
        namespace: &str,
        name: &str,
        target: u16,
    ) -> Result<(), ControlPlaneError> {
        self.apply(&format!(
            "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: PortForward\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  forwards:\n  - target: {{address: 127.0.0.1, port: {target}}}\n"
        ))
        .await
    }

    /// Every event of the apiserver's audit log so far.
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>, ControlPlaneError> {
        audit::read(&self.files.audit_log)
    }

    /// Stops every process (kwok and the controllers first, etcd last).
    pub fn stop(self) {
        self.supervisor.stop_all();
    }
}

/// GET `url` (optionally with a bearer token): status and body.
async fn get(
    client: &HttpsClient<Full<Bytes>>,
    url: &str,
    token: Option<&str>,
) -> Result<(u16, String), ControlPlaneError> {
    let mut request = http::Request::get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ControlPlaneError::Http(e.to_string()))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A port nothing listens on now (bound and released; the caller binds it next).
fn free_port() -> Result<u16, ControlPlaneError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ControlPlaneError::Io("finding a free port".into(), e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| ControlPlaneError::Io("finding a free port".into(), e))
}

fn absolute(path: &Path) -> Result<PathBuf, ControlPlaneError> {
    std::fs::create_dir_all(path)
        .map_err(|e| ControlPlaneError::Io(format!("creating {}", path.display()), e))?;
    std::fs::canonicalize(path)
        .map_err(|e| ControlPlaneError::Io(format!("resolving {}", path.display()), e))
}
