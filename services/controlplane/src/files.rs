//! What the control plane's processes read, written once into its directory:
//!
//! ```text
//! pki/          ca.pem (+ key), the apiserver's and kwok's serving certificates, the
//!               service-account signing key (ECDSA P-256)
//! tokens.csv    static tokens: the admin, the controller manager, the scheduler, kwok
//! *.kubeconfig  one per identity above
//! audit-policy.yaml, audit.log
//! kwok.yaml     kwok's configuration: node and pod stages, local exec, container logs
//! exec/         where `kubectl exec` commands run (kwok runs them as local processes)
//! containers.log  what every container "prints" (CRI log format): logs and attach read it
//! ```

use std::path::{Path, PathBuf};

use gatehouse_sandbox::pki::LocalCa;
use serde_json::json;

use crate::{ControlPlaneError, Ports};

/// The namespaced kwok kinds read from the API (`--enable-crds`), so that a test can point one
/// pod's logs, attach, exec or port-forward somewhere of its own: kind, plural, singular.
pub const KWOK_KINDS: [(&str, &str, &str); 4] = [
    ("Logs", "logs", "logs"),
    ("Attach", "attaches", "attach"),
    ("Exec", "execs", "exec"),
    ("PortForward", "portforwards", "portforward"),
];

/// Their CustomResourceDefinitions (group `kwok.x-k8s.io`, the plural names kwok's client
/// uses); the objects are kwok's to validate, so the schema takes anything.
pub fn kwok_crds() -> String {
    KWOK_KINDS
        .iter()
    .map(|(kind, plural, singular)| {
        format!(
            "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
             metadata: {{name: {plural}.kwok.x-k8s.io}}\nspec:\n  group: kwok.x-k8s.io\n  \
             names: {{kind: {kind}, listKind: {kind}List, plural: {plural}, singular: {singular}}}\n  \
             scope: Namespaced\n  versions:\n  - name: v1alpha1\n    served: true\n    storage: true\n    \
             subresources: {{status: {{}}}}\n    schema:\n      openAPIV3Schema: \
             {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n"
        )
    })
    .collect()
}

/// A pod the start-up waits on: bound by the scheduler, made Running by kwok.
pub const PROBE_POD_NAME: &str = "gatehouse-controlplane-probe";
pub const PROBE_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: gatehouse-controlplane-probe, namespace: kube-system}
spec:
  containers: [{name: probe, image: registry.k8s.io/pause:3.10}]
"#;

/// A Node kwok manages (it makes it Ready; the scheduler binds pods to it). Every node here is a
/// kwok node, so none is tainted to keep other pods away.
pub fn node_manifest(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
         kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64\n    \
         type: kwok\n  annotations:\n    kwok.x-k8s.io/node: fake\n    \
         node.alpha.kubernetes.io/ttl: \"0\"\nstatus:\n  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n  \
         capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n"
    )
}

/// The apiserver's audit policy: requests that change something with their bodies, the rest
/// with their metadata; nothing for health probes or for the control plane's own components.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
omitManagedFields: true
rules:
- level: None
  users: [system:kube-scheduler, "system:serviceaccount:kube-system:*", kwok, system:apiserver, system:kube-controller-manager]
- level: None
  nonResourceURLs: ["/readyz*", "/livez*", "/healthz*"]
- level: RequestResponse
  verbs: [create, update, patch, delete, deletecollection]
- level: Metadata
"#;

/// The paths of what [`Files::write`] wrote, and the admin token.
#[derive(Debug, Clone)]
pub struct Files {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub kubelet_cert: PathBuf,
    pub kubelet_key: PathBuf,
    pub service_account_key: PathBuf,
    /// Its public half: the apiserver verifies tokens with it (it reads no PKCS#8 private key
    /// there).
    pub service_account_public_key: PathBuf,
    pub tokens: PathBuf,
    pub admin_token: String,
    pub admin_kubeconfig: PathBuf,
    pub controller_manager_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
    pub kwok_kubeconfig: PathBuf,
    pub audit_policy: PathBuf,
    pub audit_log: PathBuf,
    pub kwok_config: PathBuf,
    pub exec_dir: PathBuf,
    pub container_log: PathBuf,
}

impl Files {
    /// Where the apiserver writes its audit log in a control plane's directory.
    pub fn audit_log_in(dir: &Path) -> PathBuf {
        dir.join("audit.log")
    }

    pub fn write(dir: &Path, ports: &Ports) -> Result<Self, ControlPlaneError> {
        let pki = dir.join("pki");
        let ca = LocalCa::load_or_generate(&pki, "Gatehouse local control plane CA")
            .map_err(|e| ControlPlaneError::Pki(e.to_string()))?;
        let ca_cert = pki.join("ca.pem");
        let apiserver = ca
            .issue_server_cert(&[
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ])
            .map_err(|e| ControlPlaneError::Pki(e.to_string()))?;
        let kubelet = ca
            .issue_server_cert(&["127.0.0.1", "localhost"])
            .map_err(|e| ControlPlaneError::Pki(e.to_string()))?;
        let service_account = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ControlPlaneError::Pki(e.to_string()))?;

        let files = Self {
            apiserver_cert: pki.join("apiserver.pem"),
            apiserver_key: pki.join("apiserver-key.pem"),
            kubelet_cert: pki.join("kubelet.pem"),
            kubelet_key: pki.join("kubelet-key.pem"),
            service_account_key: pki.join("service-account-key.pem"),
            service_account_public_key: pki.join("service-account.pub"),
            tokens: dir.join("tokens.csv"),
            admin_token: random_token(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            controller_manager_kubeconfig: dir.join("kube-controller-manager.kubeconfig"),
            scheduler_kubeconfig: dir.join("kube-scheduler.kubeconfig"),
            kwok_kubeconfig: dir.join("kwok.kubeconfig"),
            audit_policy: dir.join("audit-policy.yaml"),
            audit_log: Self::audit_log_in(dir),
            kwok_config: dir.join("kwok.yaml"),
            exec_dir: dir.join("exec"),
            container_log: dir.join("containers.log"),
            ca_cert,
        };
        write(&files.apiserver_cert, &apiserver.cert_pem)?;
        write_private(&files.apiserver_key, &apiserver.key_pem)?;
        write(&files.kubelet_cert, &kubelet.cert_pem)?;
        write_private(&files.kubelet_key, &kubelet.key_pem)?;
        write_private(&files.service_account_key, &service_account.serialize_pem())?;
        write(
            &files.service_account_public_key,
            &service_account.public_key_pem(),
        )?;

        let server = format!("https://127.0.0.1:{}", ports.apiserver);
        let ca_pem = ca.cert_pem();
        let mut tokens = String::new();
        for (kubeconfig, token, user, groups) in [
            (
                &files.admin_kubeconfig,
                files.admin_token.clone(),
                "admin",
                "system:masters",
            ),
            (
                &files.controller_manager_kubeconfig,
                random_token(),
                "system:kube-controller-manager",
                "",
            ),
            (
                &files.scheduler_kubeconfig,
                random_token(),
                "system:kube-scheduler",
                "",
            ),
            // kwok plays every kubelet: node and pod status, leases, its own kinds.
            (
                &files.kwok_kubeconfig,
                random_token(),
                "kwok",
                "system:masters",
            ),
        ] {
            tokens.push_str(&format!("{token},{user},{user},\"{groups}\"\n"));
            write_private(kubeconfig, &kubeconfig_text(&server, &ca_pem, user, &token))?;
        }
        write_private(&files.tokens, &tokens)?;
        write(&files.audit_policy, AUDIT_POLICY)?;
        std::fs::create_dir_all(&files.exec_dir).map_err(|e| {
            ControlPlaneError::Io(format!("creating {}", files.exec_dir.display()), e)
        })?;
        write(&files.container_log, "")?;
        write(
            &files.kwok_config,
            &kwok_config(&files.exec_dir, &files.container_log),
        )?;
        Ok(files)
    }
}

/// Appends lines to a CRI-format container log (what `kubectl logs` and `attach` read through
/// kwok): `<RFC 3339 time> stdout F <line>`.
pub fn append_container_log(path: &Path, lines: &[&str]) -> std::io::Result<()> {
    use std::io::Write;
    let now = time_now_rfc3339();
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    for line in lines {
        writeln!(file, "{now} stdout F {line}")?;
    }
    file.flush()
}

fn time_now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn kwok_config(exec_dir: &Path, container_log: &Path) -> String {
    let exec_dir = json!(exec_dir.display().to_string());
    let container_log = json!(container_log.display().to_string());
    format!(
        r#"# (No KwokConfiguration: kwok's defaults, with what the command line sets.)
# A node becomes Ready, with loopback addresses and kwok's kubelet port.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: node-ready}}
spec:
  resourceRef: {{apiGroup: v1, kind: Node}}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      {{{{ range NodeConditions }}}}
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $now | Quote }}}}
        message: {{{{ .message | Quote }}}}
        reason: {{{{ .reason | Quote }}}}
        status: {{{{ .status | Quote }}}}
        type: {{{{ .type | Quote }}}}
      {{{{ end }}}}
      addresses:
      - address: {{{{ NodeIP | Quote }}}}
        type: InternalIP
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{{{ NodePort }}}}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        containerRuntimeVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        kernelVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        kubeProxyVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        osImage: kwok
      phase: Running
---
# A pod bound to a node starts at once: every container (and ephemeral container) running.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-running}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: DoesNotExist
    - key: .spec.nodeName
      operator: Exists
    - key: .status.phase
      operator: In
      values: [Pending]
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{type: PodScheduled, status: "True", lastTransitionTime: {{{{ $now | Quote }}}}}}
      - {{type: Initialized, status: "True", lastTransitionTime: {{{{ $now | Quote }}}}}}
      - {{type: ContainersReady, status: "True", lastTransitionTime: {{{{ $now | Quote }}}}}}
      - {{type: Ready, status: "True", lastTransitionTime: {{{{ $now | Quote }}}}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - name: {{{{ .name | Quote }}}}
        image: {{{{ .image | Quote }}}}
        imageID: {{{{ printf "kwok://%s" .image | Quote }}}}
        containerID: {{{{ printf "kwok://%s" .name | Quote }}}}
        ready: true
        started: true
        restartCount: 0
        state: {{running: {{startedAt: {{{{ $now | Quote }}}}}}}}
      {{{{ end }}}}
      {{{{ $hostIPs := NodeIPsWith .spec.nodeName }}}}
      {{{{ with $hostIPs }}}}
      hostIP: {{{{ index . 0 | Quote }}}}
      hostIPs:
      {{{{ range . }}}}
      - ip: {{{{ . | Quote }}}}
      {{{{ end }}}}
      {{{{ end }}}}
      {{{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}}}
      {{{{ with $podIPs }}}}
      podIP: {{{{ index . 0 | Quote }}}}
      podIPs:
      {{{{ range . }}}}
      - ip: {{{{ . | Quote }}}}
      {{{{ end }}}}
      {{{{ end }}}}
      phase: Running
      startTime: {{{{ $now | Quote }}}}
---
# Ephemeral containers (kubectl debug) start as soon as they are added.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-ephemeral-running}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: DoesNotExist
    - key: .status.phase
      operator: In
      values: [Running]
    - key: .spec.ephemeralContainers
      operator: Exists
    - key: '(.spec.ephemeralContainers | length) > (.status.ephemeralContainerStatuses | length)'
      operator: In
      values: ['true']
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      ephemeralContainerStatuses:
      {{{{ range .spec.ephemeralContainers }}}}
      - name: {{{{ .name | Quote }}}}
        image: {{{{ .image | Quote }}}}
        imageID: {{{{ printf "kwok://%s" .image | Quote }}}}
        containerID: {{{{ printf "kwok://%s" .name | Quote }}}}
        ready: false
        restartCount: 0
        state: {{running: {{startedAt: {{{{ $now | Quote }}}}}}}}
      {{{{ end }}}}
---
# A pod being deleted goes at once (there is no container to stop).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-delete}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: Exists
  next:
    finalizers: {{empty: true}}
    delete: true
---
# Every container runs `kubectl exec` commands as local processes, here.
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata: {{name: local}}
spec:
  execs:
  - local:
      workDir: {exec_dir}
---
# A pod's ports reach 127.0.0.1:8000 on this machine unless a PortForward says otherwise (the
# demo's `kubectl port-forward pod/web 8080:80` then `curl localhost:8080`, with something
# serving on 8000).
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata: {{name: local}}
spec:
  forwards:
  - target: {{address: 127.0.0.1, port: 8000}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {{name: local}}
spec:
  logs:
  - logsFile: {container_log}
    follow: true
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata: {{name: local}}
spec:
  attaches:
  - logsFile: {container_log}
"#
    )
}

fn kubeconfig_text(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    });
    config.to_string()
}

/// Creates an empty file (and its directory).
pub fn write_new(path: &Path) -> Result<(), ControlPlaneError> {
    write(path, "")
}

fn write(path: &Path, text: &str) -> Result<(), ControlPlaneError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ControlPlaneError::Io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(path, text)
        .map_err(|e| ControlPlaneError::Io(format!("writing {}", path.display()), e))
}

fn write_private(path: &Path, text: &str) -> Result<(), ControlPlaneError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| ControlPlaneError::Io(format!("creating {}", dir.display()), e))?;
    }
    let io = |e| ControlPlaneError::Io(format!("writing {}", path.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwok_config_is_yaml() {
        let text = kwok_config(Path::new("/x/exec"), Path::new("/x/c.log"));
        for doc in text.split("\n---\n") {
            let value: serde_json::Value = yaml_serde::from_str(doc).unwrap();
            assert!(value["kind"].is_string(), "{doc}");
        }
        assert!(text.contains("workDir: \"/x/exec\""));
    }
}
