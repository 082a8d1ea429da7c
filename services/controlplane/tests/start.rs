//! The local control plane is a real one: it starts, schedules and runs pods on kwok's nodes,
//! reconciles Deployments, deletes namespaces, serves logs and exec through kwok, and writes
//! its own audit log; and it stops without leaving a process behind.

use std::time::{Duration, Instant};

use gatehouse_controlplane::{ControlPlane, Options};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

async fn until<F, Fut>(what: &str, mut check: F) -> Result
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_control_plane_runs_workloads_and_stops_cleanly() -> Result {
    let dir = tempfile::tempdir()?;
    let plane = ControlPlane::start(Options::new(dir.path())).await?;

    let version = plane.kubectl(&["version", "-o", "json"]).await?;
    let version: serde_json::Value = serde_json::from_str(&version)?;
    assert_eq!(
        version["serverVersion"]["gitVersion"], "v1.36.3",
        "{version}"
    );

    plane
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: work}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: work}\n\
             spec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    \
             metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx:1.27}]}\n",
        )
        .await?;
    until("the Deployment's two pods to run", || async {
        plane
            .kubectl(&[
                "get",
                "pods",
                "-n",
                "work",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ])
            .await
            .is_ok_and(|out| out.split_whitespace().filter(|p| *p == "Running").count() == 2)
    })
    .await?;
    let pod = plane
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "work",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await?;

    // exec runs through the apiserver to kwok, which runs the command locally.
    let out = plane
        .kubectl(&[
            "exec",
            "-n",
            "work",
            &pod,
            "--",
            "sh",
            "-c",
            "echo from-kwok",
        ])
        .await?;
    assert_eq!(out.trim(), "from-kwok");
    let failed = plane
        .kubectl(&["exec", "-n", "work", &pod, "--", "sh", "-c", "exit 3"])
        .await
        .unwrap_err()
        .to_string();
    // kwok reports a command's failure as an internal error naming its exit status (it does
    // not pass exit codes on, as a kubelet would).
    assert!(failed.contains("exit status 3"), "{failed}");

    gatehouse_controlplane::files::append_container_log(
        plane.container_log(),
        &["hello from the container"],
    )?;
    let logs = plane.kubectl(&["logs", "-n", "work", &pod]).await?;
    assert!(logs.contains("hello from the container"), "{logs}");

    // The namespace controller finishes a namespace deletion; the garbage collector takes
    // the ReplicaSet and pods with it.
    plane
        .kubectl(&["delete", "namespace", "work", "--wait=false"])
        .await?;
    until("namespace work to be gone", || async {
        plane
            .kubectl(&[
                "get",
                "namespace",
                "work",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .await
            .is_ok_and(|out| out.trim().is_empty())
    })
    .await?;

    let audit = plane.audit_events()?;
    assert!(
        // Server-side apply: a patch, with its body.
        audit.iter().any(|e| e.verb == "patch"
            && e.object_ref
                .as_ref()
                .is_some_and(|o| o.resource == "deployments")
            && e.request_object.is_some()),
        "the audit log records writes with their bodies"
    );

    let pids: Vec<u32> = ["etcd", "kube-apiserver"]
        .iter()
        .filter_map(|name| pid_of(dir.path(), name))
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "etcd and kube-apiserver run from this directory"
    );
    plane.stop();
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the control plane"
        );
    }
    Ok(())
}

/// The pid of a process whose command line names `binary` and mentions `dir`.
fn pid_of(dir: &std::path::Path, binary: &str) -> Option<u32> {
    let dir = dir.canonicalize().ok()?.display().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(&format!("/{binary} "))
                && cmdline.contains(&dir)
                && !cmdline.starts_with("/usr/bin/setpriv"))
            .then_some(pid)
        })
}
