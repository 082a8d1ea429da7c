//! The real kubectl from PATH against the sandbox, directly over HTTPS.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{BOB_TOKEN, start, wait_for_line};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_seeded_objects_as_tables() {
    let c = start().await;
    let pods = c.kubectl_ok(&["get", "pods", "-A"]).await;
    let header: Vec<&str> = pods
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    for name in ["web", "worker", "api", "payments", "coredns", "hello"] {
        assert!(
            pods.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)
                    && l.contains("1/1")
                    && l.contains("Running")),
            "{name} missing from:\n{pods}"
        );
    }
    let wide = c
        .kubectl_ok(&["get", "pods", "-n", "apps", "-o", "wide"])
        .await;
    assert!(
        wide.lines().next().unwrap_or_default().contains("NODE"),
        "{wide}"
    );
    assert!(wide.contains("sandbox-node-1"), "{wide}");
    let ns = c.kubectl_ok(&["get", "ns"]).await;
    assert!(
        ns.lines()
            .any(|l| l.starts_with("apps") && l.contains("Active")),
        "{ns}"
    );
    let secrets = c.kubectl_ok(&["get", "secrets", "-n", "apps"]).await;
    assert!(
        secrets
            .lines()
            .any(|l| l.starts_with("db-credentials") && l.contains("Opaque")),
        "{secrets}"
    );
    // Short names come from discovery.
    let cms = c.kubectl_ok(&["get", "cm", "-n", "apps"]).await;
    assert!(cms.contains("web-config"), "{cms}");
    let svc = c.kubectl_ok(&["get", "svc", "-n", "apps"]).await;
    assert!(svc.contains("ClusterIP") && svc.contains("80/TCP"), "{svc}");
    let events = c.kubectl_ok(&["get", "ev", "-n", "apps"]).await;
    assert!(
        events.contains("pod/web") && events.contains("Scheduled"),
        "{events}"
    );
    // kubectl asked for Tables.
    assert!(
        c.sandbox
            .requests()
            .iter()
            .any(|r| r.path == "/api/v1/pods" && r.status == 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_yaml_and_json_show_whole_objects() {
    let c = start().await;
    let yaml = c
        .kubectl_ok(&["get", "cm", "web-config", "-n", "apps", "-o", "yaml"])
        .await;
    let cm: Value = yaml_serde::from_str(&yaml).expect("yaml");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["data"]["LOG_LEVEL"], "info");
    assert_eq!(cm["metadata"]["namespace"], "apps");
    assert!(cm["metadata"]["uid"].is_string());
    let json = c
        .kubectl_ok(&[
            "get",
            "secret",
            "db-credentials",
            "-n",
            "apps",
            "-o",
            "json",
        ])
        .await;
    let secret: Value = serde_json::from_str(&json).expect("json");
    let password = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["password"].as_str().unwrap_or_default())
        .expect("base64");
    assert!(!password.is_empty());
    let list = c
        .kubectl_ok(&["get", "pods", "-n", "prod", "-o", "json"])
        .await;
    let list: Value = serde_json::from_str(&list).expect("json");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "payments"]);
    assert_eq!(list["items"][0]["kind"], "Pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_pod_and_namespace() {
    let c = start().await;
    let out = c
        .kubectl_ok(&["describe", "pod", "web", "-n", "apps"])
        .await;
    for needle in [
        "Name:             web",
        "Namespace:        apps",
        "Status:           Running",
        "Node:             sandbox-node-1",
        "Ready:          True",
        "Successfully assigned apps/web",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let ns = c.kubectl_ok(&["describe", "namespace", "apps"]).await;
    assert!(ns.contains("Status:       Active"), "{ns}");
    assert!(ns.contains("No resource quota."), "{ns}");
    // describe looked up events for exactly this pod.
    assert!(c.sandbox.requests().iter().any(|r| {
        r.path == "/api/v1/namespaces/apps/events"
            && r.query
                .as_deref()
                .unwrap_or_default()
                .contains("involvedObject.name%3Dweb")
            && r.status == 200
    }));
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: shop
  namespace: apps
  labels: {app: shop}
spec:
  containers:
  - name: app
    image: nginx:1.27
    env:
    - {name: MODE, value: blue}
  - name: sidecar
    image: envoy:1.30
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_apply_validate_server_side_and_update_by_strategic_merge() {
    let c = start().await;
    let cm = c.write_file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: created\n  namespace: apps\ndata:\n  a: \"1\"\n",
    );
    let out = c.kubectl_ok(&["create", "-f", &cm]).await;
    assert_eq!(out.trim(), "configmap/created created");
    let again = c.kubectl(&["create", "-f", &cm]).await;
    assert!(!again.success);
    assert!(
        again
            .stderr
            .contains("configmaps \"created\" already exists"),
        "{}",
        again.stderr
    );

    let pod = c.write_file("pod.yaml", POD);
    assert_eq!(
        c.kubectl_ok(&["apply", "-f", &pod]).await.trim(),
        "pod/shop created"
    );
    c.write_file("pod.yaml", &POD.replace("nginx:1.27", "nginx:1.28"));
    assert_eq!(
        c.kubectl_ok(&["apply", "-f", &pod]).await.trim(),
        "pod/shop configured"
    );
    assert_eq!(
        c.kubectl_ok(&["apply", "-f", &pod]).await.trim(),
        "pod/shop unchanged"
    );
    let live: Value = serde_json::from_str(
        &c.kubectl_ok(&["get", "pod", "shop", "-n", "apps", "-o", "json"])
            .await,
    )
    .expect("json");
    let containers = live["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "the sidecar survived the merge");
    assert_eq!(containers[0]["image"], "nginx:1.28");
    assert_eq!(containers[0]["env"][0]["value"], "blue");
    assert_eq!(containers[1]["name"], "sidecar");
    assert!(
        live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap()
            .contains("nginx:1.28")
    );

    let requests = c.sandbox.requests();
    // Server-side field validation was used (so no OpenAPI v2 download for create) ...
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path == "/openapi/v3/api/v1")
    );
    let posts: Vec<_> = requests.iter().filter(|r| r.method == "POST").collect();
    assert!(
        posts.iter().all(|r| r
            .query
            .as_deref()
            .unwrap_or_default()
            .contains("fieldValidation=Strict")),
        "{posts:?}"
    );
    // ... and the second apply was a PATCH.
    assert!(requests.iter().any(|r| r.method == "PATCH"
        && r.path == "/api/v1/namespaces/apps/pods/shop"
        && r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_field_validation_rejects_unknown_fields() {
    let c = start().await;
    let bad = c.write_file(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  namespace: apps\ndata: {a: b}\nextra: true\n",
    );
    let out = c.kubectl(&["create", "-f", &bad]).await;
    assert!(!out.success);
    assert!(
        out.stderr.contains(r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "extra""#),
        "{}",
        out.stderr
    );
    let warn = c.kubectl(&["create", "-f", &bad, "--validate=warn"]).await;
    assert!(warn.success, "{}", warn.stderr);
    assert!(
        warn.stderr.contains(r#"unknown field "extra""#),
        "{}",
        warn.stderr
    );
    let off = c.kubectl(&["apply", "-f", &bad, "--validate=false"]).await;
    assert!(off.success, "{}", off.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_label_replace_and_conflict() {
    let c = start().await;
    assert_eq!(
        c.kubectl_ok(&[
            "patch",
            "cm",
            "web-config",
            "-n",
            "apps",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"EXTRA":"yes"}}"#
        ])
        .await
        .trim(),
        "configmap/web-config patched"
    );
    assert_eq!(
        c.kubectl_ok(&["label", "cm", "web-config", "-n", "apps", "team=payments"])
            .await
            .trim(),
        "configmap/web-config labeled"
    );
    let shown = c
        .kubectl_ok(&[
            "get",
            "cm",
            "-n",
            "apps",
            "-l",
            "team=payments",
            "--show-labels",
        ])
        .await;
    assert!(
        shown.contains("web-config") && shown.contains("team=payments"),
        "{shown}"
    );
    let json: Value = serde_json::from_str(
        &c.kubectl_ok(&["get", "cm", "web-config", "-n", "apps", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(json["data"]["EXTRA"], "yes");
    assert_eq!(json["data"]["LOG_LEVEL"], "info");
    // A strategic merge patch (kubectl's default for built-in types) merges containers by name.
    c.kubectl_ok(&[
        "patch",
        "pod",
        "web",
        "-n",
        "apps",
        "-p",
        r#"{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}"#,
    ])
    .await;
    let image = c
        .kubectl_ok(&[
            "get",
            "pod",
            "web",
            "-n",
            "apps",
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(image, "nginx:1.28");

    // Edit-style PUT: replace with the current resourceVersion works, a stale one conflicts.
    let yaml = c
        .kubectl_ok(&["get", "cm", "web-config", "-n", "apps", "-o", "yaml"])
        .await;
    let file = c.write_file(
        "edit.yaml",
        &yaml.replace("LOG_LEVEL: info", "LOG_LEVEL: debug"),
    );
    assert_eq!(
        c.kubectl_ok(&["replace", "-f", &file]).await.trim(),
        "configmap/web-config replaced"
    );
    let stale = c.kubectl(&["replace", "-f", &file]).await;
    assert!(!stale.success);
    assert!(
        stale.stderr.contains(r#"Operation cannot be fulfilled on configmaps "web-config": the object has been modified; please apply your changes to the latest version and try again"#),
        "{}",
        stale.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_returns_promptly_and_cascades_namespaces() {
    let c = start().await;
    let started = Instant::now();
    assert_eq!(
        c.kubectl_ok(&["delete", "pod", "web", "-n", "apps"])
            .await
            .trim(),
        r#"pod "web" deleted"#
    );
    assert_eq!(
        c.kubectl_ok(&["delete", "cm", "web-config", "-n", "apps"])
            .await
            .trim(),
        r#"configmap "web-config" deleted"#
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "kubectl delete waited {:?}",
        started.elapsed()
    );
    let gone = c.kubectl(&["get", "pod", "web", "-n", "apps"]).await;
    assert!(
        gone.stderr.contains(r#"pods "web" not found"#),
        "{}",
        gone.stderr
    );

    assert_eq!(
        c.kubectl_ok(&["delete", "namespace", "prod"]).await.trim(),
        r#"namespace "prod" deleted"#
    );
    let left = c.kubectl(&["get", "pods", "-n", "prod"]).await;
    assert!(
        left.success && left.stdout.is_empty(),
        "{} {}",
        left.stdout,
        left.stderr
    );
    assert!(
        left.stderr
            .contains("No resources found in prod namespace."),
        "{}",
        left.stderr
    );
    let protected = c.kubectl(&["delete", "namespace", "kube-system"]).await;
    assert!(
        protected
            .stderr
            .contains("this namespace may not be deleted"),
        "{}",
        protected.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_a_create() {
    let c = start().await;
    let (mut child, mut lines) = c.spawn_kubectl(&["get", "configmaps", "-n", "apps", "-w"]);
    wait_for_line(&mut lines, "the initial table", |l| {
        l.starts_with("web-config")
    })
    .await;
    // Wait until the watch itself is open, then create.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.sandbox.requests().iter().any(|r| {
        r.query
            .as_deref()
            .unwrap_or_default()
            .contains("watch=true")
            && r.status == 200
    }) {
        assert!(Instant::now() < deadline, "kubectl never opened its watch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file = c.write_file(
        "watched.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n  namespace: apps\ndata: {a: b}\n",
    );
    c.kubectl_ok(&["create", "-f", &file]).await;
    let line = wait_for_line(&mut lines, "the created configmap", |l| {
        l.starts_with("watched")
    })
    .await;
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("1"),
        "DATA column: {line}"
    );
    child.kill().await.expect("kill kubectl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_with_kubectl_as() {
    let c = start().await;
    let allowed = c
        .kubectl_ok(&["--as=readonly-bot", "get", "pods", "-n", "apps"])
        .await;
    assert!(allowed.contains("web"), "{allowed}");
    let denied = c
        .kubectl(&["--as=readonly-bot", "get", "pods", "-n", "kube-system"])
        .await;
    assert!(!denied.success);
    assert!(
        denied.stderr.contains(r#"Error from server (Forbidden): pods is forbidden: User "readonly-bot" cannot list resource "pods" in API group "" in the namespace "kube-system""#),
        "{}",
        denied.stderr
    );
    let secret = c
        .kubectl(&[
            "--as=readonly-bot",
            "get",
            "secret",
            "db-credentials",
            "-n",
            "apps",
        ])
        .await;
    assert!(
        secret.stderr.contains(r#"secrets "db-credentials" is forbidden: User "readonly-bot" cannot get resource "secrets" in API group "" in the namespace "apps""#),
        "{}",
        secret.stderr
    );
    let record = c
        .sandbox
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path == "/api/v1/namespaces/apps/secrets/db-credentials")
        .expect("recorded");
    assert_eq!(record.authenticated_user.as_deref(), Some("sandbox-admin"));
    assert_eq!(record.impersonated_user.as_deref(), Some("readonly-bot"));
    assert_eq!(record.effective_user.as_deref(), Some("readonly-bot"));
    assert_eq!(record.status, 403);

    // bob may not impersonate anyone.
    let bob = c
        .kubectl(&[
            "--token",
            BOB_TOKEN,
            "--as=alice",
            "get",
            "pods",
            "-n",
            "apps",
        ])
        .await;
    assert!(!bob.success);
    assert!(
        bob.stderr.contains(r#"users "alice" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{}",
        bob.stderr
    );
    // Nothing was served to bob as alice.
    assert!(
        c.sandbox
            .requests()
            .iter()
            .all(|r| r.effective_user.as_deref() != Some("alice"))
    );
    let unauth = c.kubectl(&["--token", "wrong", "get", "pods"]).await;
    assert!(unauth.stderr.contains("Unauthorized"), "{}", unauth.stderr);
    // The sandbox still answers the admin afterwards.
    assert_eq!(c.get("/api/v1/namespaces/apps/pods/web").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_creates_send_protobuf() {
    let c = start().await;
    assert_eq!(
        c.kubectl_ok(&["create", "namespace", "demo"]).await.trim(),
        "namespace/demo created"
    );
    c.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "demo",
        "--from-literal=mode=blue",
        "--from-literal=size=2",
    ])
    .await;
    c.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "demo",
        "--from-literal=password=hunter2",
    ])
    .await;
    c.kubectl_ok(&[
        "run",
        "app",
        "-n",
        "demo",
        "--image=nginx:1.27",
        "--port=80",
        "--env=MODE=blue",
        "--labels=tier=front",
        "--",
        "nginx",
        "-g",
        "daemon off;",
    ])
    .await;
    c.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "app",
        "-n",
        "demo",
        "--tcp=80:8080",
    ])
    .await;
    assert!(
        c.sandbox.requests().iter().any(|r| r.method == "POST"
            && r.status == 201
            && r.path == "/api/v1/namespaces/demo/pods"),
        "kubectl run reached the sandbox"
    );

    let cm: Value = serde_json::from_str(
        &c.kubectl_ok(&["get", "cm", "settings", "-n", "demo", "-o", "json"])
            .await,
    )
    .expect("json");
    assert_eq!(cm["data"], serde_json::json!({"mode": "blue", "size": "2"}));
    let secret = c
        .kubectl_ok(&[
            "get",
            "secret",
            "creds",
            "-n",
            "demo",
            "-o",
            "jsonpath={.type} {.data.password}",
        ])
        .await;
    assert_eq!(secret, "Opaque aHVudGVyMg==");
    let pod: Value = serde_json::from_str(
        &c.kubectl_ok(&["get", "pod", "app", "-n", "demo", "-o", "json"])
            .await,
    )
    .expect("json");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(
        container["args"],
        serde_json::json!(["nginx", "-g", "daemon off;"])
    );
    assert_eq!(container["ports"][0]["containerPort"], 80);
    assert_eq!(
        container["env"][0],
        serde_json::json!({"name": "MODE", "value": "blue"})
    );
    assert_eq!(pod["metadata"]["labels"]["tier"], "front");
    let svc = c
        .kubectl_ok(&[
            "get",
            "svc",
            "app",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.ports[0].port}:{.spec.ports[0].targetPort} {.spec.selector.app}",
        ])
        .await;
    assert_eq!(svc, "80:8080 app");
    let ns = c
        .kubectl_ok(&["get", "ns", "demo", "-o", "jsonpath={.status.phase}"])
        .await;
    assert_eq!(ns, "Active");
}
