//! Real kubectl through the whole stack, as a CI pipeline or an operator would use it:
//! apply / patch / delete, reading secrets in every output format, tables and watches, pod
//! env masking, followed logs, record levels, the demo guardrails, and hostile raw requests.
//!
//! Every test starts its own stack (`TestBed::start`) and ends with `finish()`: every event
//! valid against its schema, every request's outcome recorded, the ledger equal to the stream.
//! Secret values are checked against everything that leaves the proxy: kubectl's output, every
//! event's bytes and (when this process's logs can be captured, which nextest allows) the
//! logs of the proxy and the rest of the stack.

use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse_events::BodyDigest;
use gatehouse_tests::{
    DEADLINE, Event, Finished, KubectlOutput, LogCapture, TestBed, UpstreamRequest,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;

type Result = anyhow::Result<()>;

/// What a masked Secret data value becomes (base64 of `gatehouse:masked`).
const MASKED_BASE64: &str = "Z2F0ZWhvdXNlOm1hc2tlZA==";
const MASKED_TEXT: &str = "gatehouse:masked";
/// The sandbox's seeded `apps/db-credentials` password.
const SEEDED_PASSWORD: &str = gatehouse_up::cluster::DEMO_SECRET_PASSWORD;
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A test bed with this process's logs captured (installed before the stack logs anything).
async fn start() -> anyhow::Result<(TestBed, Option<LogCapture>)> {
    let logs = LogCapture::install();
    Ok((TestBed::start().await?, logs))
}

/// kubectl's output, which must have succeeded.
fn ok(what: &str, out: KubectlOutput) -> KubectlOutput {
    assert!(
        out.success,
        "{what} failed\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

fn json_of(out: &KubectlOutput) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("kubectl output is not JSON ({e}): {}", out.stdout))
}

/// `value` never appears — as it is or base64-encoded — in any event or in the logs.
fn assert_nowhere(finished: &Finished, logs: Option<&LogCapture>, values: &[&str]) {
    for value in values {
        let encoded = STANDARD.encode(value);
        for event in &finished.events {
            let text = String::from_utf8_lossy(&event.bytes);
            assert!(
                !text.contains(value) && !text.contains(&encoded),
                "a secret value is in event {} ({}): {text}",
                event.sequence,
                event.name()
            );
        }
        if let Some(logs) = logs {
            let text = logs.text();
            assert!(
                !text.contains(value) && !text.contains(&encoded),
                "a secret value is in the logs"
            );
        }
    }
}

/// The `request.received` events of `verb` on `resource` (and `subresource`), in order.
fn received<'e>(events: &'e [Event], verb: &str, resource: &str) -> Vec<&'e Event> {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    events
        .iter()
        .filter(|e| {
            let r = &e.data()["request"];
            e.name() == "request.received"
                && r["verb"] == verb
                && r["resource"] == resource
                && r["subresource"].as_str().unwrap_or("") == subresource
        })
        .collect()
}

/// The one event called `name` of the request `received` opened.
fn outcome<'e>(events: &'e [Event], received: &Event, name: &str) -> &'e Event {
    let mut found = events
        .iter()
        .filter(|e| e.subject() == received.subject() && e.name() == name);
    let event = found
        .next()
        .unwrap_or_else(|| panic!("no {name} for request {}", received.subject()));
    assert!(
        found.next().is_none(),
        "two {name} for {}",
        received.subject()
    );
    event
}

/// Reads a process's stdout into `text` until `done` says so, failing after [`DEADLINE`].
async fn read_until(
    stdout: &mut ChildStdout,
    text: &mut String,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut chunk = [0u8; 8192];
    while !done(text) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let n = tokio::time::timeout(left, stdout.read(&mut chunk))
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for {what}; read so far:\n{text}"))??;
        anyhow::ensure!(n > 0, "kubectl ended before {what}; read so far:\n{text}");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    Ok(())
}

/// The complete JSON documents in `text` (kubectl `-w -o json` prints one per event).
fn documents(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map_while(|d| d.ok())
        .collect()
}

fn has_object(text: &str, name: &str) -> bool {
    documents(text)
        .iter()
        .any(|d| d["metadata"]["name"] == name)
}

// ---------------------------------------------------------------------------------------------
// 1. Changing the cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_patch_and_delete_change_the_cluster() -> Result {
    let (bed, logs) = start().await?;
    let manifest = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: app-settings
  namespace: apps
data:
  LOG_LEVEL: debug
  FEATURE_X: \"on\"
---
apiVersion: v1
kind: Secret
metadata:
  name: app-token
  namespace: apps
type: Opaque
stringData:
  password: applied-password-1234
";
    let applied = ok(
        "apply",
        bed.kubectl_stdin("ci-deployer", &["apply", "-f", "-"], manifest)
            .await?,
    );
    assert!(
        applied.stdout.contains("configmap/app-settings created")
            && applied.stdout.contains("secret/app-token created"),
        "{}",
        applied.stdout
    );

    // The cluster holds what was applied, the real password included (only reads are masked)…
    let config = json_of(&ok(
        "get configmap",
        bed.kubectl(
            "ci-deployer",
            &["get", "configmap", "app-settings", "-o", "json"],
        )
        .await?,
    ));
    assert_eq!(
        config["data"],
        json!({"LOG_LEVEL": "debug", "FEATURE_X": "on"})
    );
    let stored = ok(
        "admin get secret",
        bed.admin_kubectl(
            &[
                "get",
                "secret",
                "app-token",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .await?,
    );
    assert_eq!(
        STANDARD.decode(stored.stdout.trim())?,
        b"applied-password-1234"
    );
    // …and ci-deployer reads it back masked.
    let secret = json_of(&ok(
        "get secret",
        bed.kubectl("ci-deployer", &["get", "secret", "app-token", "-o", "json"])
            .await?,
    ));
    assert_eq!(secret["data"]["password"], MASKED_BASE64);

    // Re-applying the same manifest leaves the ConfigMap unchanged. The Secret is patched
    // again: kubectl's three-way diff compares the manifest with the masked copy of it in the
    // last-applied annotation, sees a difference and sends the real value once more. The
    // cluster ends up with what the manifest says, which is what apply promises.
    let again = ok(
        "re-apply",
        bed.kubectl_stdin("ci-deployer", &["apply", "-f", "-"], manifest)
            .await?,
    );
    assert!(
        again.stdout.contains("configmap/app-settings unchanged")
            && again.stdout.contains("secret/app-token configured"),
        "{}",
        again.stdout
    );
    let stored = ok(
        "admin get re-applied",
        bed.admin_kubectl(
            &[
                "get",
                "secret",
                "app-token",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .await?,
    );
    assert_eq!(
        STANDARD.decode(stored.stdout.trim())?,
        b"applied-password-1234"
    );

    let patched = ok(
        "patch configmap",
        bed.kubectl(
            "ci-deployer",
            &[
                "patch",
                "configmap",
                "app-settings",
                "--type",
                "merge",
                "-p",
                r#"{"data":{"LOG_LEVEL":"info","EXTRA":"1"}}"#,
            ],
        )
        .await?,
    );
    assert!(
        patched.stdout.contains("configmap/app-settings patched"),
        "{}",
        patched.stdout
    );
    let level = ok(
        "get patched",
        bed.kubectl(
            "ci-deployer",
            &["get", "configmap", "app-settings", "-o", "jsonpath={.data}"],
        )
        .await?,
    );
    let data: Value = serde_json::from_str(&level.stdout)?;
    assert_eq!(
        data,
        json!({"LOG_LEVEL": "info", "FEATURE_X": "on", "EXTRA": "1"})
    );

    // A merge patch of the Secret: the cluster changes, the response (the patched Secret,
    // printed with -o json) is masked.
    let rotated = ok(
        "patch secret",
        bed.kubectl(
            "ci-deployer",
            &[
                "patch",
                "secret",
                "app-token",
                "--type",
                "merge",
                "-p",
                r#"{"stringData":{"password":"rotated-password-5678"}}"#,
                "-o",
                "json",
            ],
        )
        .await?,
    );
    assert_eq!(json_of(&rotated)["data"]["password"], MASKED_BASE64);
    assert!(!rotated.stdout.contains("rotated-password-5678"));
    let stored = ok(
        "admin get rotated",
        bed.admin_kubectl(
            &[
                "get",
                "secret",
                "app-token",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .await?,
    );
    assert_eq!(
        STANDARD.decode(stored.stdout.trim())?,
        b"rotated-password-5678"
    );

    let deleted = ok(
        "delete",
        bed.kubectl(
            "ci-deployer",
            &["delete", "configmap/app-settings", "secret/app-token"],
        )
        .await?,
    );
    assert!(
        deleted
            .stdout
            .contains("configmap \"app-settings\" deleted")
            && deleted.stdout.contains("secret \"app-token\" deleted"),
        "{}",
        deleted.stdout
    );
    for kind in ["configmap/app-settings", "secret/app-token"] {
        let gone = bed.admin_kubectl(&["get", kind], None).await?;
        assert!(!gone.success, "{kind} is still there: {}", gone.stdout);
        assert!(gone.stderr.contains("NotFound"), "{}", gone.stderr);
    }

    let finished = bed.finish().await?;
    for (verb, resource, count) in [
        ("create", "configmaps", 1),
        ("create", "secrets", 1),
        ("patch", "configmaps", 1),
        ("patch", "secrets", 2),
        ("delete", "configmaps", 1),
        ("delete", "secrets", 1),
    ] {
        let seen = received(&finished.events, verb, resource);
        assert_eq!(seen.len(), count, "{verb} {resource}");
        for request in seen {
            assert_eq!(request.data()["decision"]["rule"], "deployer-apps");
            let completed = outcome(&finished.events, request, "response.completed");
            assert!(
                completed.data()["status"].as_u64().is_some_and(|s| s < 300),
                "{verb} {resource}: {}",
                completed.data()
            );
        }
    }
    assert_nowhere(
        &finished,
        logs.as_ref(),
        &["applied-password-1234", "rotated-password-5678"],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Reading secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_leave_the_proxy() -> Result {
    let (bed, logs) = start().await?;
    let seeded_b64 = STANDARD.encode(SEEDED_PASSWORD);

    let yaml = ok(
        "get -o yaml",
        bed.kubectl(
            "ci-deployer",
            &[
                "get",
                "secret",
                "db-credentials",
                "-n",
                "apps",
                "-o",
                "yaml",
            ],
        )
        .await?,
    );
    assert!(
        yaml.stdout.contains(&format!("password: {MASKED_BASE64}")),
        "{}",
        yaml.stdout
    );
    let as_json = ok(
        "get -o json",
        bed.kubectl(
            "ci-deployer",
            &[
                "get",
                "secret",
                "db-credentials",
                "-n",
                "apps",
                "-o",
                "json",
            ],
        )
        .await?,
    );
    let secret = json_of(&as_json);
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "db-credentials");
    // Every value of a Secret's data is masked, whatever its key.
    assert_eq!(
        secret["data"],
        json!({"password": MASKED_BASE64, "username": MASKED_BASE64})
    );
    let jsonpath = ok(
        "get -o jsonpath",
        bed.kubectl(
            "ci-deployer",
            &[
                "get",
                "secret",
                "db-credentials",
                "-n",
                "apps",
                "-o",
                "jsonpath={.data.password}",
            ],
        )
        .await?,
    );
    assert_eq!(
        STANDARD.decode(jsonpath.stdout.trim())?,
        MASKED_TEXT.as_bytes()
    );
    let described = ok(
        "describe",
        bed.kubectl("ci-deployer", &["describe", "secret", "db-credentials"])
            .await?,
    );
    // describe prints sizes: the masked value's, never the real one's.
    assert!(
        described
            .stdout
            .contains(&format!("password:  {} bytes", MASKED_TEXT.len())),
        "{}",
        described.stdout
    );
    for out in [&yaml, &as_json, &jsonpath, &described] {
        assert!(
            !out.stdout.contains(SEEDED_PASSWORD) && !out.stdout.contains(&seeded_b64),
            "{}",
            out.stdout
        );
    }
    // The cluster itself still holds the real value.
    let real = ok(
        "admin get",
        bed.admin_kubectl(
            &[
                "get",
                "secret",
                "db-credentials",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .await?,
    );
    assert_eq!(real.stdout.trim(), seeded_b64);

    // kubectl apply keeps the whole manifest, stringData and all, in an annotation.
    let manifest = "\
apiVersion: v1
kind: Secret
metadata:
  name: applied-secret
  namespace: apps
stringData:
  password: applied-but-hidden-4242
";
    ok(
        "apply secret",
        bed.kubectl_stdin("ci-deployer", &["apply", "-f", "-"], manifest)
            .await?,
    );
    let read_back = ok(
        "get applied",
        bed.kubectl(
            "ci-deployer",
            &["get", "secret", "applied-secret", "-o", "json"],
        )
        .await?,
    );
    let read_back_json = json_of(&read_back);
    let annotation = read_back_json["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .expect("kubectl apply wrote the annotation");
    let last_applied: Value = serde_json::from_str(annotation)?;
    assert_eq!(last_applied["stringData"]["password"], MASKED_TEXT);
    assert_eq!(last_applied["metadata"]["name"], "applied-secret");
    assert_eq!(read_back_json["data"]["password"], MASKED_BASE64);
    // kubectl's own reader of that annotation sees the masked copy too.
    let view = ok(
        "view-last-applied",
        bed.kubectl(
            "ci-deployer",
            &[
                "apply",
                "view-last-applied",
                "secret/applied-secret",
                "-o",
                "json",
            ],
        )
        .await?,
    );
    assert_eq!(json_of(&view)["stringData"]["password"], MASKED_TEXT);
    for out in [&read_back, &view] {
        assert!(
            !out.stdout.contains("applied-but-hidden-4242"),
            "{}",
            out.stdout
        );
    }
    // Behind the proxy, the annotation holds the real value: only the proxy's answers mask it.
    let behind = ok(
        "admin get applied",
        bed.admin_kubectl(&["get", "secret", "applied-secret", "-o", "json"], None)
            .await?,
    );
    assert!(behind.stdout.contains("applied-but-hidden-4242"));

    let finished = bed.finish().await?;
    let gets = received(&finished.events, "get", "secrets");
    assert!(gets.len() >= 5, "{} gets of secrets recorded", gets.len());
    for get in gets {
        let completed = outcome(&finished.events, get, "response.completed");
        if completed.data()["status"] == 404 {
            // kubectl apply looks for the object before creating it.
            assert_eq!(get.data()["request"]["name"], "applied-secret");
            continue;
        }
        assert_eq!(completed.data()["status"], 200);
        assert!(
            completed.data()["masked_fields"].as_u64() >= Some(1),
            "{}",
            completed.data()
        );
    }
    assert_nowhere(
        &finished,
        logs.as_ref(),
        &[SEEDED_PASSWORD, "applied-but-hidden-4242"],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Tables and watches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_tables_and_watches_show_changes_masked() -> Result {
    let (bed, logs) = start().await?;

    let table = ok(
        "get secrets",
        bed.kubectl("ci-deployer", &["get", "secrets", "-n", "apps"])
            .await?,
    );
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "TYPE", "DATA", "AGE"], "{}", table.stdout);
    let row: Vec<&str> = table
        .stdout
        .lines()
        .find(|l| l.starts_with("db-credentials"))
        .unwrap_or_else(|| panic!("no db-credentials row: {}", table.stdout))
        .split_whitespace()
        .collect();
    assert_eq!(row[1..3], ["Opaque", "2"], "{}", table.stdout);

    // A table watch: the initial list, then a secret the admin creates behind the proxy.
    let mut watch = bed.kubectl_spawn("ci-deployer", &["get", "secrets", "-n", "apps", "-w"])?;
    let mut stdout = watch.stdout.take().expect("stdout is piped");
    let mut text = String::new();
    read_until(&mut stdout, &mut text, "the initial list", |t| {
        t.contains("db-credentials")
    })
    .await?;
    ok(
        "admin create",
        bed.admin_kubectl(
            &[
                "create",
                "secret",
                "generic",
                "watched-by-table",
                "-n",
                "apps",
                "--from-literal=token=table-watch-value-1",
            ],
            None,
        )
        .await?,
    );
    read_until(&mut stdout, &mut text, "the new secret's row", |t| {
        t.lines()
            .any(|l| l.starts_with("watched-by-table") && l.contains("Opaque"))
    })
    .await?;
    watch.kill().await?;

    // A JSON watch: every object printed is masked, the new one included.
    let mut watch = bed.kubectl_spawn(
        "ci-deployer",
        &["get", "secrets", "-n", "apps", "-w", "-o", "json"],
    )?;
    let mut stdout = watch.stdout.take().expect("stdout is piped");
    let mut text = String::new();
    read_until(&mut stdout, &mut text, "the initial objects", |t| {
        has_object(t, "db-credentials") && has_object(t, "watched-by-table")
    })
    .await?;
    ok(
        "create through the proxy",
        bed.kubectl(
            "ci-deployer",
            &[
                "create",
                "secret",
                "generic",
                "watched-by-json",
                "--from-literal=token=json-watch-value-2",
            ],
        )
        .await?,
    );
    read_until(&mut stdout, &mut text, "the new secret as JSON", |t| {
        has_object(t, "watched-by-json")
    })
    .await?;
    watch.kill().await?;
    let objects = documents(&text);
    let new = objects
        .iter()
        .find(|d| d["metadata"]["name"] == "watched-by-json")
        .expect("seen above");
    assert_eq!(new["data"], json!({"token": MASKED_BASE64}));
    for object in &objects {
        assert_eq!(object["kind"], "Secret", "{object}");
        for value in object["data"]
            .as_object()
            .into_iter()
            .flat_map(|d| d.values())
        {
            assert_eq!(value, MASKED_BASE64, "{object}");
        }
    }
    assert!(!text.contains(&STANDARD.encode("json-watch-value-2")));
    assert!(!text.contains(&STANDARD.encode("table-watch-value-1")));

    let finished = bed.finish().await?;
    let watches = received(&finished.events, "watch", "secrets");
    assert_eq!(watches.len(), 2);
    for w in watches {
        let completed = outcome(&finished.events, w, "response.completed");
        assert_eq!(
            completed.data()["outcome"],
            "client_disconnected",
            "{}",
            completed.data()
        );
    }
    assert_nowhere(
        &finished,
        logs.as_ref(),
        &[SEEDED_PASSWORD, "table-watch-value-1", "json-watch-value-2"],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Mask profiles on other resources

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_env_passwords_are_masked_by_the_profile() -> Result {
    let (bed, logs) = start().await?;
    let manifest = "\
apiVersion: v1
kind: Pod
metadata:
  name: envy
  namespace: apps
spec:
  containers:
    - name: app
      image: busybox:1.36
      env:
        - name: DB_PASSWORD
          value: hunter2
        - name: LOG_LEVEL
          value: debug
";
    let applied = ok(
        "apply pod",
        bed.kubectl_stdin("ci-deployer", &["apply", "-f", "-"], manifest)
            .await?,
    );
    assert!(
        applied.stdout.contains("pod/envy created"),
        "{}",
        applied.stdout
    );

    let env_of = |pod: &Value| -> Value { pod["spec"]["containers"][0]["env"].clone() };
    let expected = json!([
        {"name": "DB_PASSWORD", "value": MASKED_TEXT},
        {"name": "LOG_LEVEL", "value": "debug"},
    ]);
    let one = ok(
        "get pod",
        bed.kubectl("ci-deployer", &["get", "pod", "envy", "-o", "json"])
            .await?,
    );
    let pod = json_of(&one);
    assert_eq!(env_of(&pod), expected);
    // The copy kubectl apply keeps in the annotation is masked the same way.
    let annotation: Value = serde_json::from_str(
        pod["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("kubectl apply wrote the annotation"),
    )?;
    assert_eq!(env_of(&annotation), expected);

    let list = ok(
        "get pods",
        bed.kubectl("ci-deployer", &["get", "pods", "-n", "apps", "-o", "json"])
            .await?,
    );
    let pods = json_of(&list);
    assert_eq!(pods["kind"], "List");
    let names: Vec<&str> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"web") && names.contains(&"envy"),
        "{names:?}"
    );
    let envy = pods["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["metadata"]["name"] == "envy"))
        .expect("envy is listed");
    assert_eq!(env_of(envy), expected);
    for out in [&applied, &one, &list] {
        assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    }
    // The cluster holds the real value.
    let real = ok(
        "admin get pod",
        bed.admin_kubectl(
            &[
                "get",
                "pod",
                "envy",
                "-o",
                "jsonpath={.spec.containers[0].env[0].value}",
            ],
            None,
        )
        .await?,
    );
    assert_eq!(real.stdout.trim(), "hunter2");

    let finished = bed.finish().await?;
    let lists = received(&finished.events, "list", "pods");
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].data()["decision"]["rule"], "deployer-apps");
    let completed = outcome(&finished.events, lists[0], "response.completed");
    assert_eq!(completed.data()["status"], 200);
    assert!(
        completed.data()["masked_fields"].as_u64() >= Some(1),
        "{}",
        completed.data()
    );
    let get = received(&finished.events, "get", "pods");
    let completed = outcome(
        &finished.events,
        get.last().expect("a get"),
        "response.completed",
    );
    assert!(completed.data()["masked_fields"].as_u64() >= Some(1));
    assert_nowhere(&finished, logs.as_ref(), &["hunter2"]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Streams

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_stream_until_kubectl_goes_away() -> Result {
    let (bed, _logs) = start().await?;
    let mut follow = bed.kubectl_spawn("ci-deployer", &["logs", "-f", "web", "-n", "apps"])?;
    let mut stdout = follow.stdout.take().expect("stdout is piped");
    let mut text = String::new();
    // The log so far, then a line the container prints while kubectl follows: it streams.
    read_until(&mut stdout, &mut text, "the log's head", |t| {
        t.contains("container web of pod apps/web started")
    })
    .await?;
    let head_lines = text.lines().count();
    bed.append_pod_log("apps", "web", &["heartbeat 1"]).await?;
    read_until(&mut stdout, &mut text, "a streamed line", |t| {
        t.contains("heartbeat 1\n")
    })
    .await?;
    assert!(text.lines().count() > head_lines, "{text}");
    follow.kill().await?;
    follow.wait().await?;

    let finished = bed.finish().await?;
    let logs = received(&finished.events, "get", "pods/log");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].data()["request"]["name"], "web");
    let query = logs[0].data()["query"].as_str().unwrap_or("");
    assert!(query.split('&').any(|p| p == "follow=true"), "{query}");
    outcome(&finished.events, logs[0], "request.forwarded");
    let completed = outcome(&finished.events, logs[0], "response.completed");
    assert_eq!(completed.data()["status"], 200);
    assert_eq!(
        completed.data()["outcome"],
        "client_disconnected",
        "{}",
        completed.data()
    );
    // What was delivered before kubectl left is what kubectl printed (at least).
    assert!(
        completed.data()["body"]["bytes"].as_u64() >= Some(text.len() as u64),
        "{} vs {}",
        completed.data(),
        text.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Record levels

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_level_request_keeps_the_masked_body() -> Result {
    let (bed, logs) = start().await?;
    let manifest = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: recorded-config
  namespace: apps
data:
  LOG_LEVEL: debug
  API_TOKEN: config-token-value-31337
---
apiVersion: v1
kind: Secret
metadata:
  name: recorded-secret
  namespace: apps
stringData:
  password: recorded-password-2718
";
    ok(
        "apply",
        bed.kubectl_stdin("ci-deployer", &["apply", "-f", "-"], manifest)
            .await?,
    );
    ok(
        "get",
        bed.kubectl("ci-deployer", &["get", "configmap", "recorded-config"])
            .await?,
    );
    // A merge patch has no `kind`: it is recorded as the ConfigMap change it is.
    ok(
        "patch",
        bed.kubectl(
            "ci-deployer",
            &[
                "patch",
                "configmap",
                "recorded-config",
                "--type=merge",
                "-p",
                r#"{"data":{"LOG_LEVEL":"info"}}"#,
            ],
        )
        .await?,
    );

    let finished = bed.finish().await?;
    let content_of = |e: &Event| -> (Value, Value) {
        let content = e.data()["content"].clone();
        assert_eq!(content["encoding"], "text", "{content}");
        assert_eq!(content["truncated"], false);
        let text = content["data"].as_str().expect("the body as text");
        // `whole` is the digest of exactly the recorded (masked) body.
        let digest = BodyDigest::of(text.as_bytes());
        assert_eq!(content["whole"]["bytes"], digest.bytes);
        assert_eq!(content["whole"]["blake3"], digest.blake3);
        (
            serde_json::from_str(text).expect("the recorded body is JSON"),
            content,
        )
    };

    let secret = received(&finished.events, "create", "secrets");
    assert_eq!(secret.len(), 1);
    let data = secret[0].data();
    assert_eq!(data["decision"]["rule"], "deployer-apps");
    assert_eq!(data["record"], "request");
    let (body, content) = content_of(secret[0]);
    assert_eq!(body["kind"], "Secret");
    assert_eq!(body["metadata"]["name"], "recorded-secret");
    assert_eq!(body["stringData"]["password"], MASKED_TEXT);
    let annotation: Value = serde_json::from_str(
        body["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("the applied body carries the annotation"),
    )?;
    assert_eq!(annotation["stringData"]["password"], MASKED_TEXT);
    assert!(
        content["content_type"]
            .as_str()
            .unwrap_or("")
            .contains("json")
    );
    // The digest of what was actually sent (unmasked) is kept separately, and differs.
    assert_ne!(data["body"]["blake3"], content["whole"]["blake3"]);

    let config = received(&finished.events, "create", "configmaps");
    assert_eq!(config.len(), 1);
    assert_eq!(config[0].data()["record"], "request");
    let (body, _) = content_of(config[0]);
    assert_eq!(body["kind"], "ConfigMap");
    // The profile masks keys that look like secrets; everything else is kept as sent.
    assert_eq!(
        body["data"],
        json!({"LOG_LEVEL": "debug", "API_TOKEN": MASKED_TEXT})
    );

    let patch = received(&finished.events, "patch", "configmaps");
    assert_eq!(patch.len(), 1);
    let (body, _) = content_of(patch[0]);
    assert_eq!(body, json!({"data": {"LOG_LEVEL": "info"}}));

    // A read has no body to keep, but its level is still recorded.
    let get = received(&finished.events, "get", "configmaps");
    let last = get.last().expect("the get");
    assert_eq!(last.data()["record"], "request");
    assert!(last.data()["content"].is_null());
    // What no rule decides (discovery, allowed by default) keeps the policy's default.
    let discovery = finished
        .events
        .iter()
        .find(|e| {
            e.name() == "request.received" && e.data()["decision"]["rule"] == "default:discovery"
        })
        .expect("kubectl read discovery");
    assert_eq!(discovery.data()["record"], "metadata");

    assert_nowhere(
        &finished,
        logs.as_ref(),
        &["recorded-password-2718", "config-token-value-31337"],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Guardrails

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_guardrails_refuse_shells_and_let_diagnostics_through() -> Result {
    let (bed, _logs) = start().await?;

    let shell = bed
        .kubectl(
            "ci-deployer",
            &["exec", "-n", "prod", "api", "--", "sh", "-c", "id"],
        )
        .await?;
    assert!(!shell.success, "{}", shell.stdout);
    let said = shell
        .stderr
        .lines()
        .find(|l| l.contains("gatehouse:"))
        .unwrap_or_else(|| panic!("kubectl did not print the refusal: {}", shell.stderr));
    assert!(
        said.contains("gatehouse: ci-deployer may not exec") && said.contains("rule no-shells"),
        "{said}"
    );

    // `ls` in prod passes Gatehouse (deployer-exec-elsewhere) and goes to the cluster, whose own
    // RBAC gives ci-deployer no exec in prod: the refusal is the API server's, not Gatehouse's.
    let ls_prod = bed
        .kubectl(
            "ci-deployer",
            &["exec", "-n", "prod", "api", "--", "ls", "/"],
        )
        .await?;
    assert!(!ls_prod.success, "{}", ls_prod.stdout);
    assert!(!ls_prod.stderr.contains("gatehouse:"), "{}", ls_prod.stderr);
    assert!(
        ls_prod
            .stderr
            .contains("cannot create resource \"pods/exec\""),
        "{}",
        ls_prod.stderr
    );

    // In apps, where the cluster allows it, the sandbox runs the real `ls /`.
    let ls_apps = ok(
        "exec ls",
        bed.kubectl(
            "ci-deployer",
            &["exec", "-n", "apps", "web", "--", "ls", "/"],
        )
        .await?,
    );
    let listed: Vec<&str> = ls_apps.stdout.lines().collect();
    for entry in std::fs::read_dir("/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            assert!(listed.contains(&name.as_str()), "{name} not in {listed:?}");
        }
    }

    let finished = bed.finish().await?;
    // kubectl tries WebSocket first and, when the upgrade is refused, SPDY: each refused
    // exec is two requests, each decided and recorded on its own.
    let execs = received(&finished.events, "exec", "pods/exec");
    let command_of = |e: &Event| -> Vec<String> {
        let query = e.data()["query"].as_str().unwrap_or("").to_owned();
        form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.into_owned())
            .collect()
    };
    let mut kinds = [0, 0, 0];
    for exec in &execs {
        let decision = &exec.data()["decision"];
        let namespace = &exec.data()["request"]["namespace"];
        match (command_of(exec).join(" ").as_str(), namespace.as_str()) {
            ("sh -c id", Some("prod")) => {
                kinds[0] += 1;
                assert_eq!(decision["action"], "deny");
                assert_eq!(decision["rule"], "no-shells");
                outcome(&finished.events, exec, "request.denied");
            }
            ("ls /", Some("prod")) => {
                kinds[1] += 1;
                assert_eq!(decision["rule"], "deployer-exec-elsewhere");
                outcome(&finished.events, exec, "request.forwarded");
                let completed = outcome(&finished.events, exec, "response.completed");
                assert_eq!(completed.data()["status"], 403);
            }
            ("ls /", Some("apps")) => {
                kinds[2] += 1;
                assert_eq!(decision["rule"], "deployer-sessions-apps");
                let completed = outcome(&finished.events, exec, "response.completed");
                assert_eq!(completed.data()["status"], 101);
                assert_eq!(completed.data()["outcome"], "complete");
            }
            other => panic!("unexpected exec {other:?}"),
        }
    }
    assert!(kinds[0] >= 1 && kinds[1] >= 1 && kinds[2] == 1, "{kinds:?}");
    Ok(())
}

/// A RoleBinding in apps binding ClusterRole `role` to user `u`, as JSON.
fn role_binding(name: &str, role: &str) -> String {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "apps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "u"}],
    })
    .to_string()
}

const ROLE_BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings";

/// `kubectl create --raw` posts exactly the JSON object given; kubectl's typed `create
/// rolebinding` sends protobuf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_guardrails_refuse_cluster_admin_bindings_and_unreadable_bodies() -> Result {
    let (bed, _logs) = start().await?;

    let admin = bed
        .kubectl_stdin(
            "ci-deployer",
            &["create", "--raw", ROLE_BINDINGS, "-f", "-"],
            &role_binding("make-admin", "cluster-admin"),
        )
        .await?;
    assert!(!admin.success, "{}", admin.stdout);
    let said = admin
        .stderr
        .lines()
        .find(|l| l.contains("gatehouse:"))
        .unwrap_or_else(|| panic!("kubectl did not print the refusal: {}", admin.stderr));
    assert!(said.contains("rule no-cluster-admin-bindings"), "{said}");

    // Binding `view` passes Gatehouse (deployer-apps) and the cluster's RBAC (ci-deployer
    // holds everything in apps, so it may bind view there).
    let view = bed
        .kubectl_stdin(
            "ci-deployer",
            &["create", "--raw", ROLE_BINDINGS, "-f", "-"],
            &role_binding("make-viewer", "view"),
        )
        .await?;
    assert!(view.success, "{}", view.stderr);

    // kubectl's typed commands send protobuf: the guardrail reads it as the same object.
    let typed = |name: &'static str, role: &'static str| {
        let bed = &bed;
        async move {
            let clusterrole = format!("--clusterrole={role}");
            bed.kubectl(
                "ci-deployer",
                &[
                    "create",
                    "rolebinding",
                    name,
                    &clusterrole,
                    "--user=u",
                    "-n",
                    "apps",
                ],
            )
            .await
        }
    };
    let typed_admin = typed("typed-admin", "cluster-admin").await?;
    assert!(!typed_admin.success, "{}", typed_admin.stdout);
    let said = typed_admin
        .stderr
        .lines()
        .find(|l| l.contains("gatehouse:"))
        .unwrap_or_else(|| panic!("kubectl did not print the refusal: {}", typed_admin.stderr));
    assert!(said.contains("rule no-cluster-admin-bindings"), "{said}");
    assert!(!said.contains("cannot read"), "{said}");
    let typed_viewer = typed("typed-viewer", "view").await?;
    assert!(typed_viewer.success, "{}", typed_viewer.stderr);
    let bound = bed
        .admin_kubectl(&["get", "rolebinding", "typed-viewer", "-o", "json"], None)
        .await?;
    assert_eq!(json_of(&bound)["roleRef"]["name"], "view");

    // Protobuf Gatehouse cannot read still fails closed, saying why.
    let token = format!("Bearer {}", bed.mint("ci-deployer")?);
    let garbled = bed
        .request_with(
            "POST",
            ROLE_BINDINGS,
            &[
                ("authorization", token.as_str()),
                ("content-type", "application/vnd.kubernetes.protobuf"),
            ],
            Some("k8s\u{0}not a protobuf envelope"),
        )
        .await?;
    assert_eq!(garbled.status, 403, "{}", garbled.body);
    let message = garbled.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("rule no-cluster-admin-bindings"),
        "{message}"
    );
    assert!(message.contains("protobuf"), "{message}");
    assert!(message.contains("JSON"), "{message}");

    let reached = bed.upstream_requests().await?;
    let proxy = bed.proxy_identity();
    let finished = bed.finish().await?;
    let creates = received(&finished.events, "create", "rolebindings");
    let decisions: Vec<(&Value, &Value)> = creates
        .iter()
        .map(|e| {
            (
                &e.data()["decision"]["action"],
                &e.data()["decision"]["rule"],
            )
        })
        .collect();
    let (deny, allow) = (json!("deny"), json!("allow"));
    let (guard, apps) = (json!("no-cluster-admin-bindings"), json!("deployer-apps"));
    assert_eq!(
        decisions,
        [
            (&deny, &guard),
            (&allow, &apps),
            (&deny, &guard),
            (&allow, &apps),
            (&deny, &guard),
        ]
    );
    for allowed in [creates[1], creates[3]] {
        outcome(&finished.events, allowed, "request.forwarded");
        let answered = outcome(&finished.events, allowed, "response.completed");
        assert_eq!(answered.data()["status"], 201, "{}", answered.data());
    }
    let garbled_reason = creates[4].data()["decision"]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(garbled_reason.contains("protobuf"), "{garbled_reason}");
    // Only the allowed bindings reached the cluster.
    let posted: Vec<_> = reached
        .iter()
        .filter(|r| r.path.contains("rolebindings"))
        .collect();
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_cluster_saw_only_recorded(&reached, proxy, &finished.events);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Hostile requests

/// Every request that reached the cluster through the proxy (`reached`) was recorded as
/// received, allowed and forwarded, with the path the cluster saw.
fn assert_cluster_saw_only_recorded(reached: &[UpstreamRequest], proxy: &str, events: &[Event]) {
    let mut forwarded: Vec<String> = events
        .iter()
        .filter(|e| e.name() == "request.received" && e.data()["decision"]["action"] == "allow")
        .filter(|r| {
            events
                .iter()
                .any(|e| e.subject() == r.subject() && e.name() == "request.forwarded")
        })
        .map(|r| {
            r.data()["request"]["path"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let mut seen: Vec<String> = reached
        .iter()
        .filter(|r| r.authenticated_user.as_deref() == Some(proxy))
        .map(|r| r.path.clone())
        .collect();
    forwarded.sort();
    seen.sort();
    assert_eq!(
        forwarded, seen,
        "recorded as forwarded (left) and what reached the cluster (right) differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_status_and_nothing_unrecorded_is_forwarded() -> Result {
    let (bed, logs) = start().await?;
    let bearer = format!("Bearer {}", bed.mint("ci-deployer")?);
    let auth = [("authorization", bearer.as_str())];
    let status = |reply: &gatehouse_tests::Reply, code: u16, reason: &str| {
        assert_eq!(reply.status, code, "{}", reply.body);
        assert_eq!(reply.body["kind"], "Status", "{}", reply.body);
        assert_eq!(reply.body["code"], code);
        assert_eq!(reply.body["reason"], reason, "{}", reply.body);
        assert!(reply.request_id.is_some());
    };

    // Paths that climb out of apps into prod's secrets, however they are spelled.
    for path in [
        "/api/v1/namespaces/apps/../prod/secrets",
        "/api/v1/namespaces/apps/%2e%2e/prod/secrets",
        "/api/v1/namespaces/apps/%2E%2E/prod/secrets",
        "/api/v1/namespaces/apps/./secrets",
        "/api/v1/namespaces/apps/secrets/%2e",
    ] {
        let reply = bed.request_with("GET", path, &auth, None).await?;
        status(&reply, 400, "BadRequest");
        let message = reply.body["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with("gatehouse: bad request"),
            "{path}: {message}"
        );
    }
    // A `;` in the query: Go's parser and ours would disagree about it, so it is refused.
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/apps/configmaps?labelSelector=a;limit=1",
            &auth,
            None,
        )
        .await?;
    status(&reply, 400, "BadRequest");
    // A `;` in the path is just a character of a name: the cluster says there is no such
    // object, under exactly the name that was recorded.
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/apps/secrets/db-credentials;x=y",
            &auth,
            None,
        )
        .await?;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Status");
    let id = reply.request_id.clone().expect("a request id");
    let events = bed
        .events_of(&id, &["request.received", "request.forwarded"])
        .await?;
    assert_eq!(events[0].data()["request"]["name"], "db-credentials;x=y");

    // Two Authorization headers: which one counts is ambiguous, so neither does.
    let other = format!("Bearer {}", bed.mint("readonly-bot")?);
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/apps/pods",
            &[("authorization", &other), ("authorization", &bearer)],
            None,
        )
        .await?;
    status(&reply, 401, "Unauthorized");

    // A body over the limit (3 MiB): 413 before it is read, recorded, nothing forwarded.
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"huge"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let reply = bed
        .request_with(
            "POST",
            "/api/v1/namespaces/apps/configmaps",
            &auth,
            Some(&huge),
        )
        .await?;
    status(&reply, 413, "RequestEntityTooLarge");

    // Malformed JSON creating a Secret: refused (by the cluster) without the body in the answer.
    let broken = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"broken"},"stringData":{"password":"malformed-secret-1618"#;
    let reply = bed
        .request_with(
            "POST",
            "/api/v1/namespaces/apps/secrets",
            &auth,
            Some(broken),
        )
        .await?;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Status");
    let answered = String::from_utf8_lossy(&reply.bytes);
    assert!(!answered.contains("malformed-secret-1618"), "{answered}");

    // Impersonation headers from the caller are dropped: the cluster sees the caller.
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/apps/configmaps/web-config",
            &[
                ("authorization", bearer.as_str()),
                ("Impersonate-User", "system:admin"),
                ("Impersonate-Group", "system:masters"),
                ("Impersonate-Uid", "0"),
            ],
            None,
        )
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = bed
        .upstream_request("/api/v1/namespaces/apps/configmaps/web-config")
        .await?;
    assert_eq!(seen.impersonated_user.as_deref(), Some("ci-deployer"));
    assert_eq!(seen.effective_user.as_deref(), Some("ci-deployer"));
    assert_eq!(
        seen.impersonated_groups,
        ["deployers", "system:authenticated"]
    );
    // The caller's Impersonate-Uid did not pass: the proxy may not impersonate uids, so the
    // cluster would have refused the request.
    assert_eq!(seen.status, 200);

    // Both Transfer-Encoding and Content-Length, with a second request hidden after the
    // chunked body: a classic smuggling attempt. Whatever the proxy makes of it — the chunked
    // body, the 4 bytes Content-Length claims, a second request or none — the cluster must
    // receive nothing the ledger does not show, and never both framing headers.
    let chunk =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"smuggled"},"data":{"a":"b"}}"#;
    let hidden = format!(
        "GET /api/v1/namespaces/prod/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\n\
         Connection: close\r\n\r\n"
    );
    let raw = format!(
        "POST /api/v1/namespaces/apps/configmaps HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: {bearer}\r\nContent-Type: application/json\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{chunk}\r\n0\r\n\r\n{hidden}",
        chunk.len()
    );
    let answer = String::from_utf8_lossy(&bed.raw_request(raw.as_bytes()).await?).into_owned();
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    // Transfer-Encoding wins and the connection is closed after the answer (RFC 9112 §6.3),
    // so the bytes after the chunked body are never read as a request.
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        !answer.contains("\"kind\":\"SecretList\""),
        "the hidden request was answered with secrets: {answer}"
    );
    for posted in bed
        .upstream_requests()
        .await?
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces/apps/configmaps")
    {
        // The audit log records no headers; an apiserver given both would have refused the
        // request (Go's HTTP server does), which the recorded status would show.
        if let Some(names) = &posted.header_names {
            assert!(
                !names.iter().any(|h| h == "transfer-encoding")
                    || !names.iter().any(|h| h == "content-length"),
                "{posted:?}"
            );
        }
    }
    if let Some(logs) = &logs {
        // The capture works: the proxy's own log lines are in it.
        assert!(logs.text().contains("request refused"), "{}", logs.text());
    }

    // If the POST went through, the cluster holds exactly the recorded body.
    let created = bed
        .admin_kubectl(&["get", "configmap", "smuggled", "-o", "json"], None)
        .await?;
    let reached = bed.upstream_requests().await?;
    let proxy = bed.proxy_identity();
    let finished = bed.finish().await?;
    assert_cluster_saw_only_recorded(&reached, proxy, &finished.events);
    let posts: Vec<&Event> = received(&finished.events, "create", "configmaps");
    if created.success {
        assert_eq!(json_of(&created)["data"], json!({"a": "b"}));
        let post = posts
            .iter()
            .find(|e| {
                e.data()["content"]["data"]
                    .as_str()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    == serde_json::from_str::<Value>(chunk).ok()
            })
            .expect("the create that reached the cluster was recorded with its body");
        outcome(&finished.events, post, "request.forwarded");
    }
    assert!(
        !finished
            .events
            .iter()
            .any(|e| e.data()["path"] == "/api/v1/namespaces/prod/secrets"),
        "the hidden request was read as a request"
    );
    // Every refusal above was recorded as a denial with its reason.
    let denied: Vec<&str> = finished
        .events
        .iter()
        .filter(|e| e.name() == "request.denied")
        .filter_map(|e| e.data()["reason"].as_str())
        .collect();
    assert!(
        denied.iter().filter(|r| **r == "bad_request").count() >= 7,
        "{denied:?}"
    );
    assert!(denied.contains(&"authentication"), "{denied:?}");
    assert_nowhere(&finished, logs.as_ref(), &["malformed-secret-1618"]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Masked values never go back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_are_not_written_back() -> Result {
    let (bed, _logs) = start().await?;
    // The classic round trip: what the proxy showed, applied again.
    let shown = ok(
        "get",
        bed.kubectl(
            "ci-deployer",
            &[
                "get",
                "secret",
                "db-credentials",
                "-n",
                "apps",
                "-o",
                "yaml",
            ],
        )
        .await?,
    );
    let applied = bed
        .kubectl_stdin("ci-deployer", &["apply", "-f", "-"], &shown.stdout)
        .await?;
    assert!(!applied.success, "{}", applied.stdout);
    assert!(
        applied.stderr.contains("gatehouse:") && applied.stderr.contains("overwrite the real ones"),
        "{}",
        applied.stderr
    );
    // The cluster still has the real value.
    let real = ok(
        "admin get",
        bed.admin_kubectl(
            &[
                "get",
                "secret",
                "db-credentials",
                "-n",
                "apps",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
        )
        .await?,
    );
    assert_eq!(
        STANDARD.decode(real.stdout.trim())?,
        SEEDED_PASSWORD.as_bytes()
    );
    bed.finish().await?;
    Ok(())
}
