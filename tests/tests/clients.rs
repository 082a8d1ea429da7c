//! Clients other than kubectl work through Gatehouse unchanged: the Python `kubernetes` client
//! and the Rust `kube` crate, each with only its server URL and token pointed at the proxy.

use std::process::Stdio;

use futures::{StreamExt, TryStreamExt};
use gatehouse_tests::{DEADLINE, TestBed, python};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

type Result = anyhow::Result<()>;

/// What masking leaves in a Secret's `data`: base64 of `gatehouse:masked`.
const MASKED: &[u8] = b"gatehouse:masked";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_through_the_proxy() -> Result {
    let bed = TestBed::start().await?;
    let kubeconfig = bed.kubeconfig("ci-deployer")?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let output = tokio::time::timeout(
        DEADLINE * 2,
        tokio::process::Command::new(python()?)
            .arg(&script)
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout)?;

    assert_eq!(out["pods"], json!(["web", "worker"]));
    assert!(out["created_uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(out["patched"], "patched");
    assert!(
        out["watched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[1] == "from-python"),
        "{}",
        out["watched"]
    );
    // The client decodes nothing itself; the values it got are the masked ones.
    let data = out["secret_data"].as_object().expect("secret data");
    for value in data.values() {
        let decoded = base64_decode(value.as_str().unwrap());
        assert_eq!(decoded, MASKED, "a secret value reached the client");
    }
    assert_eq!(out["deleted"], true);
    assert_eq!(out["forbidden"]["status"], 403);
    assert!(
        out["forbidden"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("gatehouse:")),
        "{}",
        out["forbidden"]
    );
    let finished = bed.finish().await?;
    const SECRET: &[u8] = gatehouse_up::cluster::DEMO_SECRET_PASSWORD.as_bytes();
    assert!(
        !finished
            .events
            .iter()
            .any(|e| e.bytes.windows(SECRET.len()).any(|w| w == SECRET)),
        "the secret value is in an event"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_crate_works_through_the_proxy() -> Result {
    let bed = TestBed::start().await?;
    let kubeconfig = Kubeconfig::read_from(bed.kubeconfig("ci-deployer")?)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["web", "worker"]);

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "apps");
    let list = maps.list(&ListParams::default()).await?;
    let version = list.metadata.resource_version.unwrap_or_default();
    let mut watch = maps
        .watch(&WatchParams::default().timeout(20), &version)
        .await?
        .boxed();
    let created = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "from-kube-rs"},
                "data": {"k": "v"}
            }))?,
        )
        .await?;
    assert_eq!(created.metadata.name.as_deref(), Some("from-kube-rs"));
    let seen = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = watch.try_next().await? {
            if let WatchEvent::Added(map) = event
                && map.metadata.name.as_deref() == Some("from-kube-rs")
            {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    assert!(seen, "the watch saw the created ConfigMap");
    drop(watch);
    let patched = maps
        .patch(
            "from-kube-rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "patched"}})),
        )
        .await?;
    assert_eq!(patched.data.unwrap()["k"], "patched");
    maps.delete("from-kube-rs", &DeleteParams::default())
        .await?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");
    let secret = secrets.get("db-credentials").await?;
    for (key, value) in secret.data.unwrap_or_default() {
        assert_eq!(
            value.0, MASKED,
            "secret key {key} reached the client unmasked"
        );
    }

    let prod: Api<Secret> = Api::namespaced(client, "prod");
    match prod.get("api-keys").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403);
            assert!(
                status.message.starts_with("gatehouse:"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 403 Status, got {other:?}"),
    }
    bed.finish().await?;
    Ok(())
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}
