//! Identities and policy change while the proxy runs: a second issuer with the GitHub Actions
//! preset, signing-key rotation at the issuer, and policy edits picked up from the file
//! without dropping connections.

use gatehouse_tests::{DEADLINE, TestBed, eventually};
use tokio::io::AsyncBufReadExt;

type Result = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_actions_token_from_a_second_issuer_is_mapped_by_its_preset() -> Result {
    let bed = TestBed::start().await?;
    // The prod environment of the workflow is registered and allowed into apps.
    let prod = bed.mint_github("acme/deploy", Some("prod"), "refs/heads/main")?;
    let out = bed
        .kubectl_with_token("github-prod", &prod, &["get", "configmaps", "-n", "apps"])
        .await?;
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("web-config"), "{}", out.stdout);

    // The same workflow on a pull request maps to another principal, which nobody registered.
    let pr = bed.mint_github("acme/deploy", None, "refs/pull/7/merge")?;
    let reply = bed.get("/api/v1/namespaces/apps/configmaps", &pr).await?;
    let message = reply.body["message"].as_str().unwrap_or_default();
    assert_eq!(reply.status, 403, "{message}");
    assert!(
        message.contains("github:acme/deploy@refs/pull/7/merge"),
        "{message}"
    );

    let finished = bed.finish().await?;
    let identity = finished
        .events
        .iter()
        .filter(|e| e.name() == "request.received")
        .map(|e| &e.data()["identity"])
        .find(|i| i["principal"] == "github:acme/deploy@prod")
        .expect("the prod workflow's requests are recorded");
    assert_eq!(identity["owner"], "carol@example.com");
    assert_eq!(identity["attributes"]["environment"], "prod");
    assert_eq!(identity["attributes"]["ref"], "refs/heads/main");
    assert_eq!(identity["attributes"]["workflow"], "deploy");
    assert!(
        identity["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "github:org:acme"),
        "{identity}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_without_a_restart() -> Result {
    let bed = TestBed::start().await?;
    let old = bed.mint("readonly-bot")?;
    let path = "/api/v1/namespaces/apps/configmaps";
    assert_eq!(bed.get(path, &old).await?.status, 200);
    // Cached now; the cache must not outlive the key.
    assert_eq!(bed.get(path, &old).await?.status, 200);

    // The issuer rotates and withdraws the old key at once (as after a compromise). One
    // rotation per test: unknown-kid reloads are limited to one per 10 s per issuer.
    bed.stack().issuer.rotate(false)?;
    let new = bed.mint("readonly-bot")?;
    // An unknown kid makes the proxy fetch the keys again: the new token works at once...
    assert_eq!(bed.get(path, &new).await?.status, 200);
    // ...and the old one, whose key is gone, stops working, cached or not.
    let refused = bed.get(path, &old).await?;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("key")),
        "{}",
        refused.body
    );

    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gentle_rotation_keeps_earlier_tokens_working() -> Result {
    let bed = TestBed::start().await?;
    let path = "/api/v1/namespaces/apps/configmaps";
    let before = bed.mint("readonly-bot")?;
    assert_eq!(bed.get(path, &before).await?.status, 200);
    // The previous key stays published next to the new one.
    bed.stack().issuer.rotate(true)?;
    let after = bed.mint("readonly-bot")?;
    assert_eq!(bed.get(path, &after).await?.status, 200);
    assert_eq!(bed.get(path, &before).await?.status, 200);
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_edits_apply_without_dropping_connections() -> Result {
    let bed = TestBed::start().await?;
    let policy_file = bed.stack().dir.join("config/policy.yaml");
    let original = std::fs::read_to_string(&policy_file)?;

    // A watch opened under the old policy...
    let mut watch = bed.kubectl_spawn(
        "readonly-bot",
        &[
            "get",
            "configmaps",
            "-n",
            "apps",
            "-w",
            "--output-watch-events",
        ],
    )?;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let listed = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("web-config") {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    assert!(listed, "the watch listed web-config");

    // ...then dashboards lose configmaps.
    let edited = original.replace(
        "  - id: readers\n",
        "  - id: readers-no-configmaps\n    action: deny\n    groups: [readers]\n    verbs: [\"*\"]\n    resources: [configmaps]\n\n  - id: readers\n",
    );
    assert_ne!(edited, original, "the demo policy has a readers rule");
    std::fs::write(&policy_file, &edited)?;
    let denied = eventually("the edited policy to apply", DEADLINE, || async {
        let out = bed
            .kubectl("readonly-bot", &["get", "configmaps", "-n", "apps"])
            .await
            .ok()?;
        (!out.success).then_some(out.stderr)
    })
    .await?;
    assert!(denied.contains("readers-no-configmaps"), "{denied}");

    // The watch opened before the edit is still connected and still streaming.
    let out = bed
        .kubectl(
            "ci-deployer",
            &["create", "configmap", "after-the-edit", "-n", "apps"],
        )
        .await?;
    assert!(out.success, "{}", out.stderr);
    let streamed = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("after-the-edit") {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    })
    .await??;
    assert!(streamed, "the watch kept streaming across the reload");
    watch.kill().await?;

    // A broken file is refused, and the last good policy stays in force.
    std::fs::write(&policy_file, format!("{edited}\n  - id: [broken\n"))?;
    eventually("the refused reload to be counted", DEADLINE, || async {
        let (_, text) = bed.admin_get("/metrics").await.ok()?;
        text.lines()
            .any(|l| {
                l.starts_with("gatehouse_proxy_policy_reloads_total")
                    && l.contains("failure")
                    && !l.trim_end().ends_with(" 0")
            })
            .then_some(())
    })
    .await?;
    let still = bed
        .kubectl("readonly-bot", &["get", "configmaps", "-n", "apps"])
        .await?;
    assert!(!still.success && still.stderr.contains("readers-no-configmaps"));
    let pods = bed
        .kubectl("readonly-bot", &["get", "pods", "-n", "apps"])
        .await?;
    assert!(pods.success, "{}", pods.stderr);
    bed.finish().await?;
    Ok(())
}
