//! `gatehouse up --kubeconfig` in front of a cluster the user already has (here: a local
//! control plane this test starts, standing in for kind or a cloud cluster). The credential is
//! checked before anything starts: never system:masters, never cluster-admin, and it must be
//! allowed to impersonate; with the ServiceAccount of deploy/kubernetes/base/proxy/rbac.yaml it
//! works, and requests go through as the impersonated caller.

use std::time::Duration;

use gatehouse_controlplane::{ControlPlane, Options};
use gatehouse_tests::{BedOptions, TestBed};
use gatehouse_up::{Upstream, cluster};

type Result = anyhow::Result<()>;

fn kubeconfig_with(
    plane: &ControlPlane,
    dir: &std::path::Path,
    name: &str,
    token: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let text = gatehouse::kubeconfig::render(
        "users-cluster",
        &plane.url(),
        &plane.ca_pem(),
        name,
        token,
        "default",
    );
    gatehouse::kubeconfig::write_private(&path, &text).expect("writing a kubeconfig");
    path
}

async fn refused(kubeconfig: std::path::PathBuf) -> anyhow::Result<String> {
    match TestBed::start_with(BedOptions {
        upstream: Upstream::Kubeconfig {
            file: kubeconfig,
            context: None,
        },
        ..BedOptions::default()
    })
    .await
    {
        Ok(_) => anyhow::bail!("up started with a credential it must refuse"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_fronts_a_users_cluster_only_with_a_credential_that_merely_impersonates() -> Result {
    let dir = tempfile::tempdir()?;
    let plane = ControlPlane::start(Options::new(dir.path().join("cluster"))).await?;
    let ttl = Duration::from_secs(3600);

    // The cluster's admin (system:masters): refused, saying why and what to do instead.
    let admin = kubeconfig_with(&plane, dir.path(), "admin", plane.admin_token());
    let why = refused(admin).await?;
    assert!(why.contains("system:masters"), "{why}");
    assert!(
        why.contains("kind: ClusterRole"),
        "prints the RBAC it needs: {why}"
    );

    // cluster-admin by RBAC, not by group: refused too.
    plane
        .kubectl(&["create", "serviceaccount", "powerful", "-n", "default"])
        .await?;
    plane
        .kubectl(&[
            "create",
            "clusterrolebinding",
            "powerful",
            "--clusterrole=cluster-admin",
            "--serviceaccount=default:powerful",
        ])
        .await?;
    plane
        .wait_for_access("system:serviceaccount:default:powerful", "*", "*", None)
        .await?;
    let token = plane
        .service_account_token("default", "powerful", ttl)
        .await?;
    let why = refused(kubeconfig_with(&plane, dir.path(), "powerful", &token)).await?;
    assert!(why.contains("cluster-admin"), "{why}");

    // A credential that may not impersonate cannot forward anything as its caller.
    plane
        .kubectl(&["create", "serviceaccount", "powerless", "-n", "default"])
        .await?;
    let token = plane
        .service_account_token("default", "powerless", ttl)
        .await?;
    let why = refused(kubeconfig_with(&plane, dir.path(), "powerless", &token)).await?;
    assert!(why.contains("may not impersonate"), "{why}");

    // The proxy's own ServiceAccount: up starts, and the cluster's RBAC (the user applied the
    // demo's) decides for the impersonated caller.
    plane.apply(cluster::PROXY_RBAC_YAML).await?;
    plane.apply(cluster::DEMO_CLUSTER_YAML).await?;
    plane
        .wait_for_access(
            "system:serviceaccount:gatehouse:gatehouse-proxy",
            "impersonate",
            "users",
            None,
        )
        .await?;
    plane
        .wait_for_access("ci-deployer", "list", "pods", Some("apps"))
        .await?;
    let token = plane
        .service_account_token("gatehouse", "gatehouse-proxy", ttl)
        .await?;
    let bed = TestBed::start_with(BedOptions {
        upstream: Upstream::Kubeconfig {
            file: kubeconfig_with(&plane, dir.path(), "gatehouse-proxy", &token),
            context: None,
        },
        ..BedOptions::default()
    })
    .await?;
    let whoami = bed
        .kubectl(
            "ci-deployer",
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        )
        .await?;
    assert!(whoami.success, "{}", whoami.stderr);
    assert_eq!(whoami.stdout, "ci-deployer");
    let pods = bed
        .kubectl("ci-deployer", &["get", "pods", "-n", "apps", "-o", "name"])
        .await?;
    assert!(pods.success, "{}", pods.stderr);
    assert!(pods.stdout.contains("pod/web"), "{}", pods.stdout);
    let finished = bed.finish().await?;
    let forwarded = finished
        .events
        .iter()
        .find(|e| e.name() == "request.forwarded")
        .expect("requests were forwarded");
    assert_eq!(forwarded.data()["upstream"], plane.url());

    // Every request the user's cluster saw from the proxy is in the ledger (its audit log is
    // written as each response completes: give the last a moment).
    gatehouse_tests::eventually(
        "the cluster's audit log to match the ledger",
        gatehouse_tests::DEADLINE,
        || async {
            let audit = plane.audit_events().ok()?;
            gatehouse_tests::cross_check_audit(
                &finished.events,
                &audit,
                "system:serviceaccount:gatehouse:gatehouse-proxy",
            )
            .ok()
        },
    )
    .await?;
    plane.stop();
    Ok(())
}
