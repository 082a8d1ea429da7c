//! What only a real API server allows, through Gatehouse: Deployments rolled out, scaled and
//! rolled back; server-side apply with its field managers and conflicts; custom resources
//! governed by group and resource; explain and api-resources; ephemeral debug containers;
//! watch-list streams with bookmarks; a list continued past compaction answered 410 Gone and
//! handled by the client; attach and cp through kwok; a namespace deletion that completes; and a client-go
//! informer listing and watching with protobuf, as operators do. Each test ends with
//! `finish()`: the ledger verifies and agrees with the apiserver's own audit log.

use std::process::Stdio;
use std::time::Duration;

use gatehouse_events::Ballot;
use gatehouse_tests::{
    BedOptions, DEADLINE, Event, KubectlOutput, TestBed, clientgo_informer, eventually, python,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

type Result = anyhow::Result<()>;

fn ok(what: &str, out: KubectlOutput) -> String {
    assert!(out.success, "{what}: {}{}", out.stdout, out.stderr);
    out.stdout
}

fn received<'e>(events: &'e [Event], verb: &str, resource: &str) -> Vec<&'e Event> {
    events
        .iter()
        .filter(|e| {
            e.name() == "request.received"
                && e.data()["request"]["verb"] == verb
                && format!(
                    "{}{}",
                    e.data()["request"]["resource"].as_str().unwrap_or(""),
                    e.data()["request"]["subresource"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default()
                ) == resource
        })
        .collect()
}

/// `kubectl rollout status` of deployment `shop`, as ci-deployer.
async fn rolled_out(bed: &TestBed) -> anyhow::Result<String> {
    Ok(ok(
        "rollout status",
        bed.kubectl(
            "ci-deployer",
            &["rollout", "status", "deployment/shop", "--timeout=60s"],
        )
        .await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_roll_out_scale_and_roll_back() -> Result {
    let bed = TestBed::start().await?;
    ok(
        "create",
        bed.kubectl(
            "ci-deployer",
            &[
                "create",
                "deployment",
                "shop",
                "--image=nginx:1.27",
                "--replicas=2",
            ],
        )
        .await?,
    );
    let status = rolled_out(&bed).await?;
    assert!(status.contains("successfully rolled out"), "{status}");
    ok(
        "set image",
        bed.kubectl(
            "ci-deployer",
            &["set", "image", "deployment/shop", "nginx=nginx:1.28"],
        )
        .await?,
    );
    rolled_out(&bed).await?;
    let history = ok(
        "rollout history",
        bed.kubectl("ci-deployer", &["rollout", "history", "deployment/shop"])
            .await?,
    );
    assert!(history.contains('1') && history.contains('2'), "{history}");
    ok(
        "rollout undo",
        bed.kubectl("ci-deployer", &["rollout", "undo", "deployment/shop"])
            .await?,
    );
    rolled_out(&bed).await?;
    let image = ok(
        "get",
        bed.kubectl(
            "ci-deployer",
            &[
                "get",
                "deployment",
                "shop",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
        )
        .await?,
    );
    assert_eq!(image, "nginx:1.27");
    ok(
        "scale",
        bed.kubectl("ci-deployer", &["scale", "deployment/shop", "--replicas=3"])
            .await?,
    );
    eventually("three shop pods to run", DEADLINE, || async {
        let out = bed
            .kubectl(
                "ci-deployer",
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=shop",
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ],
            )
            .await
            .ok()?;
        (out.stdout
            .split_whitespace()
            .filter(|p| *p == "Running")
            .count()
            == 3)
            .then_some(())
    })
    .await?;

    // Scaling in prod waits for a platform lead (deployer-scale-prod), then goes through.
    let scale = bed.kubectl_spawn(
        "ci-deployer",
        &["scale", "deployment/payments", "-n", "prod", "--replicas=3"],
    )?;
    // bob, not alice: alice owns ci-deployer, and the owner may not approve (four eyes).
    let bob = bed.approvals_as("bob@example.com")?;
    let hold = eventually("the scale to be held", DEADLINE, || async {
        bob.list(false).await.ok()?.into_iter().next()
    })
    .await?;
    assert_eq!(
        (hold.rule.as_str(), hold.resource.as_str()),
        ("deployer-scale-prod", "apps/deployments/scale")
    );
    // Approvers see the change as the API server previews it (a dry run, as `kubectl diff`
    // asks), which changed nothing yet.
    let change = hold
        .change
        .as_ref()
        .expect("a scale is previewed for its approvers");
    assert_eq!(change.note, None, "{change:?}");
    let replicas_in =
        |side: &Option<serde_json::Value>| side.as_ref().map(|o| o["spec"]["replicas"].clone());
    assert_eq!(replicas_in(&change.current), Some(serde_json::json!(2)));
    assert_eq!(replicas_in(&change.proposed), Some(serde_json::json!(3)));
    let before = bed
        .admin_kubectl(
            &[
                "get",
                "deployment",
                "payments",
                "-n",
                "prod",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        )
        .await?;
    assert_eq!(
        before.stdout, "2",
        "the preview's dry run changed the object"
    );
    bob.vote(&hold.approval_id, Ballot::Approve, Some("peak traffic"))
        .await?;
    let out = scale.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replicas = bed
        .admin_kubectl(
            &[
                "get",
                "deployment",
                "payments",
                "-n",
                "prod",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        )
        .await?;
    assert_eq!(replicas.stdout, "3");

    let finished = bed.finish().await?;
    assert!(!received(&finished.events, "patch", "deployments").is_empty());
    let scaled = received(&finished.events, "patch", "deployments/scale");
    assert!(
        scaled
            .iter()
            .any(|e| e.data()["decision"]["rule"] == "deployer-scale-prod"),
        "the prod scale went through its hold"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_keeps_field_managers_and_reports_conflicts() -> Result {
    let bed = TestBed::start().await?;
    let manifest = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: tuned\n  namespace: apps\n\
             data:\n  WORKERS: \"{value}\"\n"
        )
    };
    ok(
        "apply",
        bed.kubectl_stdin(
            "ci-deployer",
            &[
                "apply",
                "--server-side",
                "--field-manager=deployer",
                "-f",
                "-",
            ],
            &manifest("4"),
        )
        .await?,
    );
    // A second manager setting the same field conflicts: the apiserver's 409 comes through.
    let conflict = bed
        .kubectl_stdin(
            "ci-deployer",
            &[
                "apply",
                "--server-side",
                "--field-manager=autoscaler",
                "-f",
                "-",
            ],
            &manifest("8"),
        )
        .await?;
    assert!(!conflict.success);
    assert!(
        conflict.stderr.contains("conflict") && conflict.stderr.contains("deployer"),
        "{}",
        conflict.stderr
    );
    ok(
        "apply --force-conflicts",
        bed.kubectl_stdin(
            "ci-deployer",
            &[
                "apply",
                "--server-side",
                "--field-manager=autoscaler",
                "--force-conflicts",
                "-f",
                "-",
            ],
            &manifest("8"),
        )
        .await?,
    );
    let object: Value = serde_json::from_str(&ok(
        "get",
        bed.kubectl(
            "ci-deployer",
            &[
                "get",
                "configmap",
                "tuned",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )
        .await?,
    ))?;
    assert_eq!(object["data"]["WORKERS"], "8");
    let managers: Vec<&str> = object["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().filter_map(|f| f["manager"].as_str()).collect())
        .unwrap_or_default();
    assert!(managers.contains(&"autoscaler"), "{managers:?}");

    let finished = bed.finish().await?;
    let applies = received(&finished.events, "patch", "configmaps");
    assert_eq!(applies.len(), 3);
    let statuses: Vec<Value> = applies
        .iter()
        .map(|a| {
            finished
                .events
                .iter()
                .find(|e| e.subject() == a.subject() && e.name() == "response.completed")
                .map(|e| e.data()["status"].clone())
                .unwrap_or(Value::Null)
        })
        .collect();
    assert_eq!(statuses, [json!(201), json!(409), json!(200)]);
    Ok(())
}

const WIDGET_CRD: &str = "\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.gatehouse.dev}
spec:
  group: example.gatehouse.dev
  names: {kind: Widget, listKind: WidgetList, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_governed_by_group_and_resource() -> Result {
    // The demo policy with one rule more, first: nobody deletes widgets through Gatehouse.
    let policy = gatehouse_up::demo::POLICY_YAML.replacen(
        "rules:\n",
        "rules:\n  - id: widgets-are-kept\n    action: deny\n    verbs: [delete, deletecollection]\n    \
         api_groups: [example.gatehouse.dev]\n    resources: [widgets]\n\n",
        1,
    );
    let bed = TestBed::start_with(BedOptions {
        config_files: vec![("policy.yaml".into(), policy)],
        ..BedOptions::default()
    })
    .await?;
    ok(
        "crd",
        bed.admin_kubectl(&["apply", "-f", "-"], Some(WIDGET_CRD))
            .await?,
    );
    ok(
        "established",
        bed.admin_kubectl(
            &[
                "wait",
                "--for=condition=established",
                "crd/widgets.example.gatehouse.dev",
                "--timeout=60s",
            ],
            None,
        )
        .await?,
    );
    ok(
        "create",
        bed.kubectl_stdin(
            "ci-deployer",
            &["apply", "-f", "-"],
            "apiVersion: example.gatehouse.dev/v1\nkind: Widget\nmetadata: {name: sprocket}\n\
             spec: {size: 3, color: blue}\n",
        )
        .await?,
    );
    let listed = ok(
        "list",
        bed.kubectl("ci-deployer", &["get", "widgets", "-o", "name"])
            .await?,
    );
    assert_eq!(listed.trim(), "widget.example.gatehouse.dev/sprocket");
    let explained = ok(
        "explain",
        bed.kubectl("ci-deployer", &["explain", "widgets.spec.color"])
            .await?,
    );
    assert!(
        explained.contains("color") && explained.contains("string"),
        "{explained}"
    );
    let deleted = bed
        .kubectl("ci-deployer", &["delete", "widget", "sprocket"])
        .await?;
    assert!(!deleted.success);
    assert!(
        deleted.stderr.contains("rule widgets-are-kept"),
        "{}",
        deleted.stderr
    );
    let resources = ok(
        "api-resources",
        bed.kubectl(
            "ci-deployer",
            &[
                "api-resources",
                "--api-group=example.gatehouse.dev",
                "-o",
                "name",
            ],
        )
        .await?,
    );
    assert_eq!(resources.trim(), "widgets.example.gatehouse.dev");

    let finished = bed.finish().await?;
    let deletes = received(&finished.events, "delete", "widgets");
    assert_eq!(deletes.len(), 1);
    assert_eq!(
        deletes[0].data()["request"]["api_group"],
        "example.gatehouse.dev"
    );
    assert_eq!(deletes[0].data()["decision"]["rule"], "widgets-are-kept");
    let creates: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| {
            e.name() == "request.received"
                && e.data()["request"]["resource"] == "widgets"
                && e.data()["decision"]["action"] == "allow"
        })
        .collect();
    assert!(!creates.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_api_resources_read_the_real_openapi() -> Result {
    let bed = TestBed::start().await?;
    let explained = ok(
        "explain",
        bed.kubectl(
            "readonly-bot",
            &[
                "explain",
                "deployment.spec.template.spec.containers.resources.limits",
            ],
        )
        .await?,
    );
    assert!(explained.contains("limits"), "{explained}");
    assert!(explained.contains("map[string]Quantity"), "{explained}");
    let resources = ok(
        "api-resources",
        bed.kubectl("readonly-bot", &["api-resources", "-o", "name"])
            .await?,
    );
    for name in [
        "pods",
        "deployments.apps",
        "rolebindings.rbac.authorization.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "leases.coordination.k8s.io",
    ] {
        assert!(resources.lines().any(|l| l == name), "{name}: {resources}");
    }
    let finished = bed.finish().await?;
    // All of it was discovery and OpenAPI, allowed by default and recorded.
    assert!(finished.events.iter().any(|e| {
        e.name() == "request.received"
            && e.data()["request"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/openapi/v3"))
            && e.data()["decision"]["rule"] == "default:discovery"
    }));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_adds_an_ephemeral_container_through_the_proxy() -> Result {
    let bed = TestBed::start().await?;
    ok(
        "debug",
        bed.kubectl(
            "ci-deployer",
            &[
                "debug",
                "web",
                "--image=busybox:1.36",
                "--container=debugger",
                "--attach=false",
            ],
        )
        .await?,
    );
    eventually("the ephemeral container to run", DEADLINE, || async {
        let out = bed
            .admin_kubectl(
                &[
                    "get",
                    "pod",
                    "web",
                    "-o",
                    "jsonpath={.status.ephemeralContainerStatuses[0].name}",
                ],
                None,
            )
            .await
            .ok()?;
        (out.stdout == "debugger").then_some(())
    })
    .await?;
    let finished = bed.finish().await?;
    let patches = received(&finished.events, "patch", "pods/ephemeralcontainers");
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].data()["decision"]["rule"], "deployer-apps");
    Ok(())
}

/// Reads a watch response until it ends (`timeoutSeconds`), one JSON event per line.
fn watch_events(body: &[u8]) -> Vec<Value> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_lists_send_initial_events_then_a_bookmark_and_expired_lists_are_gone() -> Result {
    let bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    // WatchList: the current state as ADDED events, then a bookmark marking its end; masked on
    // the way (configmaps in apps carry the app-secrets profile).
    let reply = bed
        .get(
            "/api/v1/namespaces/apps/configmaps?watch=1&sendInitialEvents=true\
             &resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3",
            &token,
        )
        .await?;
    assert_eq!(reply.status, 200);
    let events = watch_events(&reply.bytes);
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"ADDED"), "{types:?}");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert!(
        events
            .iter()
            .any(|e| e["object"]["metadata"]["name"] == "web-config"),
        "{events:?}"
    );

    // A list continued after the apiserver compacted its version away: 410 Gone, a Status
    // that comes through the masking path as the apiserver wrote it.
    let first_page = bed
        .get("/api/v1/namespaces/apps/configmaps?limit=1", &token)
        .await?;
    let token_of_page = first_page.body["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_owned();
    for i in 0..3 {
        ok(
            "churn",
            bed.admin_kubectl(
                &["create", "configmap", &format!("churn-{i}"), "-n", "apps"],
                None,
            )
            .await?,
        );
    }
    let continued = format!("/api/v1/namespaces/apps/configmaps?limit=1&continue={token_of_page}");
    let gone = eventually(
        "the list's version to be compacted",
        Duration::from_secs(90),
        || async {
            let reply = bed.get(&continued, &token).await.ok()?;
            (reply.status == 410).then_some(reply)
        },
    )
    .await?;
    assert_eq!(gone.body["kind"], "Status");
    assert_eq!(gone.body["reason"], "Expired");
    assert_eq!(gone.body["code"], 410);

    // The Python client sees 410, lists again from the start and carries on.
    let kubeconfig = bed.kubeconfig("ci-deployer")?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(python()?)
            .arg(&script)
            .arg(&kubeconfig)
            .args(["expired", &token_of_page])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(out["gone"]["status"], 410, "{out}");
    let relisted = out["relisted"].as_array().cloned().unwrap_or_default();
    assert!(relisted.contains(&json!("churn-2")), "{out}");
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_follows_what_the_container_prints() -> Result {
    let bed = TestBed::start().await?;
    let mut attach = bed.kubectl_spawn("ci-deployer", &["attach", "web"])?;
    let mut lines = BufReader::new(attach.stdout.take().expect("stdout")).lines();
    // Attach shows what is printed from now on: print until it has been seen.
    let deadline = std::time::Instant::now() + DEADLINE;
    let seen = loop {
        bed.append_pod_log("apps", "web", &["attached-line-77"])
            .await?;
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
            && line.contains("attached-line-77")
        {
            break line;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "kubectl attach printed nothing of the container's output"
        );
    };
    assert!(seen.contains("attached-line-77"));
    attach.kill().await?;
    let _ = attach.wait().await;

    let finished = bed.finish().await?;
    let started: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| e.name() == "session.started")
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].data()["kind"], "attach");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_copies_a_file_out_of_a_pod_through_a_recorded_exec() -> Result {
    let bed = TestBed::start().await?;
    let plane = bed
        .stack()
        .cluster
        .control_plane()
        .expect("the control plane");
    // kwok runs the pod's commands in its exec directory.
    std::fs::write(
        plane.exec_dir().join("report.txt"),
        "quarterly-figures-42\n",
    )?;
    let local = bed.home().join("copied.txt");
    let local_arg = local.display().to_string();
    ok(
        "cp",
        bed.kubectl("ci-deployer", &["cp", "apps/web:report.txt", &local_arg])
            .await?,
    );
    assert_eq!(std::fs::read_to_string(&local)?, "quarterly-figures-42\n");
    let finished = bed.finish().await?;
    let started: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| e.name() == "session.started")
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(
        started[0].data()["command"],
        json!(["tar", "cf", "-", "report.txt"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deletion_completes_through_the_proxy() -> Result {
    let policy = gatehouse_up::demo::POLICY_YAML.replacen(
        "rules:\n",
        "rules:\n  - id: scratch-namespaces\n    action: allow\n    identities: [ci-deployer]\n    \
         verbs: [delete, get]\n    resources: [namespaces]\n    names: [\"scratch-*\"]\n\n",
        1,
    );
    let bed = TestBed::start_with(BedOptions {
        config_files: vec![("policy.yaml".into(), policy)],
        ..BedOptions::default()
    })
    .await?;
    let setup = "apiVersion: v1\nkind: Namespace\nmetadata: {name: scratch-1}\n---\n\
        apiVersion: v1\nkind: ConfigMap\nmetadata: {name: leftover, namespace: scratch-1}\n---\n\
        apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: scratch-deleter}\n\
        rules: [{apiGroups: [\"\"], resources: [namespaces], resourceNames: [scratch-1], verbs: [get, delete]}]\n---\n\
        apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: scratch-deleter}\n\
        roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: scratch-deleter}\n\
        subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: ci-deployer}]\n";
    ok(
        "setup",
        bed.admin_kubectl(&["apply", "-f", "-"], Some(setup))
            .await?,
    );
    // kubectl waits for the namespace to be gone: the namespace controller empties it first.
    let deleted = eventually("the deletion to be allowed by RBAC", DEADLINE, || async {
        let out = bed
            .kubectl(
                "ci-deployer",
                &["delete", "namespace", "scratch-1", "--timeout=60s"],
            )
            .await
            .ok()?;
        out.success.then_some(out)
    })
    .await?;
    assert!(deleted.stdout.contains("deleted"), "{}", deleted.stdout);
    let gone = bed
        .admin_kubectl(
            &[
                "get",
                "namespace",
                "scratch-1",
                "--ignore-not-found",
                "-o",
                "name",
            ],
            None,
        )
        .await?;
    assert_eq!(gone.stdout.trim(), "");
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_go_informer_lists_and_watches_with_protobuf() -> Result {
    let informer = tokio::task::spawn_blocking(clientgo_informer).await??;
    let bed = TestBed::start().await?;
    let kubeconfig = bed.kubeconfig("readonly-bot")?;
    let mut child = tokio::process::Command::new(&informer)
        .arg("-kubeconfig")
        .arg(&kubeconfig)
        .args([
            "-namespace",
            "prod",
            "-wait-for",
            "late-arrival",
            "-timeout",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let synced: Value = serde_json::from_str(
        &tokio::time::timeout(DEADLINE, lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the informer printed nothing"))?,
    )?;
    let names = synced["synced"].as_array().cloned().unwrap_or_default();
    assert!(names.contains(&json!("api")), "{synced}");
    ok(
        "a pod",
        bed.admin_kubectl(
            &["run", "late-arrival", "--image=nginx", "-n", "prod"],
            None,
        )
        .await?,
    );
    let added: Value = serde_json::from_str(
        &tokio::time::timeout(DEADLINE, lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the informer ended early"))?,
    )?;
    assert_eq!(added["added"], "late-arrival");
    let status = tokio::time::timeout(DEADLINE, child.wait()).await??;
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).await?;
    }
    assert!(status.success(), "{stderr}");

    let finished = bed.finish().await?;
    // It listed and watched as readonly-bot, through the proxy, every request recorded.
    let watches: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| {
            e.name() == "request.received"
                && e.data()["request"]["verb"] == "watch"
                && e.data()["identity"]["principal"] == "readonly-bot"
                && e.data()["user_agent"] == "gatehouse-tests-informer"
        })
        .collect();
    assert!(!watches.is_empty());
    Ok(())
}
