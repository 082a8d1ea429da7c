//! The cluster behind the proxy in `gatehouse up`: the local control plane (the default), the
//! Kubernetes sandbox (`--sandbox`), or a cluster the user already has (`--kubeconfig`).
//!
//! On the local control plane the proxy runs as the ServiceAccount of
//! `deploy/kubernetes/base/proxy/rbac.yaml`, which may impersonate and nothing else, and the cluster
//! starts as `deploy/demo/cluster.yaml` describes. A user's cluster is only read: its
//! credential is checked (never `system:masters`, never cluster-admin, allowed to impersonate)
//! and the RBAC the proxy needs is printed, but nothing is applied to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gatehouse::kubeconfig;
use gatehouse_controlplane::{ControlPlane, PROXY_NAMESPACE, PROXY_SERVICE_ACCOUNT};
use gatehouse_sandbox::SandboxHandle;

/// The proxy's RBAC: a ServiceAccount that may impersonate, nothing else.
pub const PROXY_RBAC_YAML: &str = include_str!("../../../deploy/kubernetes/base/proxy/rbac.yaml");

/// The demo cluster: namespaces, workloads, a Secret, RBAC for the demo identities.
pub const DEMO_CLUSTER_YAML: &str = include_str!("../../../deploy/demo/cluster.yaml");

/// The password in the demo cluster's `apps/db-credentials` Secret, which masking must hide.
pub const DEMO_SECRET_PASSWORD: &str = "s3cr3t-demo-password";

/// How long the proxy's ServiceAccount tokens live; `up` writes a fresh one well before.
const PROXY_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const PROXY_TOKEN_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// Which cluster to put Gatehouse in front of.
#[derive(Debug, Clone, Default)]
pub enum Upstream {
    /// A local control plane (kube-apiserver, etcd, controllers, kwok), built on first use.
    #[default]
    ControlPlane,
    /// The built-in Kubernetes sandbox: instant, but only `core/v1`.
    Sandbox,
    /// A cluster the user already has.
    Kubeconfig {
        file: PathBuf,
        context: Option<String>,
    },
}

/// A running cluster, as `up` started or found it.
pub enum Cluster {
    ControlPlane {
        plane: Box<ControlPlane>,
        /// Writes a fresh token for the proxy every few hours.
        refresher: tokio_util::task::AbortOnDropHandle<()>,
    },
    Sandbox {
        handle: SandboxHandle,
        /// `sandbox-admin` (system:masters on the sandbox).
        admin_token: String,
    },
    External {
        url: String,
        origin: String,
    },
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The API server's URL.
    pub fn url(&self) -> String {
        match self {
            Cluster::ControlPlane { plane, .. } => plane.url(),
            Cluster::Sandbox { handle, .. } => handle.url(),
            Cluster::External { url, .. } => url.clone(),
        }
    }

    /// What the guide calls it.
    pub fn describe(&self) -> String {
        match self {
            Cluster::ControlPlane { .. } => {
                "local control plane (kube-apiserver, etcd, controllers, kwok nodes)".into()
            }
            Cluster::Sandbox { .. } => "Kubernetes sandbox".into(),
            Cluster::External { origin, .. } => origin.clone(),
        }
    }

    pub fn control_plane(&self) -> Option<&ControlPlane> {
        match self {
            Cluster::ControlPlane { plane, .. } => Some(plane),
            _ => None,
        }
    }

    pub fn sandbox(&self) -> Option<&SandboxHandle> {
        match self {
            Cluster::Sandbox { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// A kubeconfig straight to the cluster with full rights, bypassing Gatehouse: the local
    /// control plane's admin or the sandbox's. `None` for a user's cluster.
    pub fn admin_kubeconfig(&self, ca_pem: &str, namespace: &str) -> Option<String> {
        match self {
            Cluster::ControlPlane { plane, .. } => Some(kubeconfig::render(
                "local-control-plane",
                &plane.url(),
                &plane.ca_pem(),
                "cluster-admin",
                plane.admin_token(),
                namespace,
            )),
            Cluster::Sandbox {
                handle,
                admin_token,
            } => Some(kubeconfig::render(
                "sandbox",
                &handle.url(),
                ca_pem,
                "cluster-admin",
                admin_token,
                namespace,
            )),
            Cluster::External { .. } => None,
        }
    }

    pub async fn stop(self) {
        match self {
            Cluster::ControlPlane { plane, refresher } => {
                refresher.abort();
                // Stopping waits on the processes; not on a runtime thread.
                let _ = tokio::task::spawn_blocking(move || plane.stop()).await;
            }
            Cluster::Sandbox { handle, .. } => handle.shutdown().await,
            Cluster::External { .. } => {}
        }
    }
}

/// Starts the local control plane, gives the proxy its ServiceAccount (the RBAC of
/// `deploy/kubernetes/base/proxy/rbac.yaml`) and a token in `token_file`, and with `seed` applies
/// the demo cluster and waits until it runs: its pods Running and its RBAC in force.
pub async fn start_control_plane(
    options: gatehouse_controlplane::Options,
    token_file: &Path,
    seed: bool,
) -> Result<Cluster> {
    let plane = ControlPlane::start(options)
        .await
        .context("starting the local control plane")?;
    plane
        .apply(PROXY_RBAC_YAML)
        .await
        .context("applying deploy/kubernetes/base/proxy/rbac.yaml")?;
    write_proxy_token(&plane, token_file).await?;
    if seed {
        seed_demo(&plane).await?;
    }
    let proxy_user = format!("system:serviceaccount:{PROXY_NAMESPACE}:{PROXY_SERVICE_ACCOUNT}");
    plane
        .wait_for_access(&proxy_user, "impersonate", "users", None)
        .await?;
    let plane = Box::new(plane);
    let refresher = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
        // The refresher only needs kubectl and the admin credential, both files.
        let kubectl = plane.binaries().clone();
        let admin = plane.admin_kubeconfig().to_owned();
        let cache = plane.dir().join("kubectl");
        let token_file = token_file.to_owned();
        async move {
            loop {
                tokio::time::sleep(PROXY_TOKEN_REFRESH).await;
                let ttl = format!("{}s", PROXY_TOKEN_TTL.as_secs());
                let args = [
                    "create",
                    "token",
                    PROXY_SERVICE_ACCOUNT,
                    "-n",
                    PROXY_NAMESPACE,
                    "--duration",
                    ttl.as_str(),
                ];
                match kubectl.kubectl_command(&admin, &cache, &args, None).await {
                    Ok(out) if out.status.success() => {
                        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                        if let Err(e) = kubeconfig::write_private(&token_file, &token) {
                            tracing::warn!(error = %e, "cannot write the proxy's fresh token");
                        }
                    }
                    Ok(out) => tracing::warn!(
                        stderr = %String::from_utf8_lossy(&out.stderr),
                        "cannot refresh the proxy's token"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot refresh the proxy's token"),
                }
            }
        }
    }));
    Ok(Cluster::ControlPlane { plane, refresher })
}

async fn write_proxy_token(plane: &ControlPlane, token_file: &Path) -> Result<()> {
    let token = plane
        .service_account_token(PROXY_NAMESPACE, PROXY_SERVICE_ACCOUNT, PROXY_TOKEN_TTL)
        .await
        .context("a token for the proxy's ServiceAccount")?;
    kubeconfig::write_private(token_file, &token)
        .with_context(|| format!("writing {}", token_file.display()))
}

/// Applies the demo cluster and waits until it is in force.
pub async fn seed_demo(plane: &ControlPlane) -> Result<()> {
    plane
        .apply(DEMO_CLUSTER_YAML)
        .await
        .context("applying deploy/demo/cluster.yaml")?;
    // RBAC takes effect through the authorizer's caches; `view` fills through the aggregation
    // controller.
    for (user, verb, resource, namespace) in [
        ("ci-deployer", "create", "configmaps", "apps"),
        ("ci-deployer", "list", "pods", "prod"),
        ("ci-deployer", "delete", "configmaps", "prod"),
        ("readonly-bot", "list", "pods", "prod"),
        ("github:acme/deploy@prod", "create", "configmaps", "apps"),
    ] {
        plane
            .wait_for_access(user, verb, resource, Some(namespace))
            .await?;
    }
    // Each demo pod prints something of its own (the web app logs a token its mask profile
    // hides).
    for (namespace, pod, lines) in [
        (
            "apps",
            "web",
            &[
                "container web of pod apps/web started",
                "listening on :8080",
                "connected to the database with token=demo-db-token-1234",
            ][..],
        ),
        (
            "apps",
            "worker",
            &[
                "container worker of pod apps/worker started",
                "waiting for jobs",
            ][..],
        ),
        (
            "default",
            "hello",
            &["container hello of pod default/hello started"][..],
        ),
        (
            "prod",
            "api",
            &["container api of pod prod/api started", "serving 12 routes"][..],
        ),
    ] {
        let path = plane.pod_log(namespace, pod).await?;
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            gatehouse_controlplane::files::append_container_log(&path, lines)?;
        }
    }
    let start = std::time::Instant::now();
    loop {
        let phases = plane
            .kubectl(&[
                "get",
                "pods",
                "-A",
                "-o",
                "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}={.status.phase}{\"\\n\"}{end}",
            ])
            .await?;
        let pending: Vec<&str> = phases
            .lines()
            .filter(|l| !l.ends_with("=Running") && !l.starts_with("kube-system/"))
            .collect();
        // web, worker, hello, api and the two payments replicas.
        let running = phases.lines().filter(|l| l.ends_with("=Running")).count();
        if pending.is_empty() && running >= 6 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the demo pods did not all run within 120s: {pending:?}");
        }
        plane.check_processes()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks a user's cluster credential before `up` fronts it, as the proxy would use it: it must
/// work, must not be `system:masters` or cluster-admin, and must be allowed to impersonate.
/// Returns the credential's user name and the API server's URL.
pub async fn check_external(file: &Path, context: Option<&str>) -> Result<(String, String)> {
    let config = gatehouse_proxy::config::UpstreamConfig {
        kubeconfig: Some(file.to_owned()),
        context: context.map(str::to_owned),
        connect_timeout: Duration::from_secs(5),
        ..gatehouse_proxy::config::UpstreamConfig::default()
    };
    let upstream = gatehouse_proxy::forward::Upstream::new(&config).map_err(anyhow::Error::msg)?;
    let review = upstream
        .review_credential(Duration::from_secs(20))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{} (context {}): the cluster did not say who this credential is: {e}",
                file.display(),
                context.unwrap_or("current")
            )
        })?;
    if let Some(why) = review.unfit() {
        bail!(
            "{file} {why}. Gatehouse fronts a cluster only with a credential that may \
             impersonate and nothing more.\n\n{}",
            rbac_instructions(),
            file = file.display()
        );
    }
    Ok((review.user, upstream.url().to_owned()))
}

/// What to do to give the proxy the credential it needs.
pub fn rbac_instructions() -> String {
    format!(
        "The proxy needs a credential that may impersonate and nothing else, for example the \
         ServiceAccount of deploy/kubernetes/base/proxy/rbac.yaml:\n\n\
         \x20 kubectl apply -f deploy/kubernetes/base/proxy/rbac.yaml\n\
         \x20 kubectl create token {PROXY_SERVICE_ACCOUNT} -n {PROXY_NAMESPACE} --duration 24h > proxy.token\n\
         \x20 kubectl config view --minify --raw > gatehouse.kubeconfig   # then replace its user with that token:\n\
         \x20 kubectl --kubeconfig gatehouse.kubeconfig config set-credentials gatehouse-proxy --token \"$(cat proxy.token)\"\n\
         \x20 kubectl --kubeconfig gatehouse.kubeconfig config set-context --current --user gatehouse-proxy\n\n\
         The RBAC it applies:\n\n{PROXY_RBAC_YAML}"
    )
}
