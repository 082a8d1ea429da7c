//! Streaming responses through the masking proxy: watch streams with bookmarks, chunked lists
//! with `continue`, as raw HTTP so the exact wire shape is checked.

use base64::Engine;
use gatehouse_tests::{DEADLINE, TestBed, eventually};
use serde_json::Value;

type Result = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_secrets_streams_masked_events_and_bookmarks() -> Result {
    let bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    // `watch=1` (not `true`), bookmarks on, and a server-side timeout that ends the stream.
    let reply = bed
        .get(
            "/api/v1/namespaces/apps/secrets?watch=1&allowWatchBookmarks=true&timeoutSeconds=1",
            &token,
        )
        .await?;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.bytes.to_vec())?;
    let events: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let added = events
        .iter()
        .find(|e| e["type"] == "ADDED" && e["object"]["metadata"]["name"] == "db-credentials")
        .expect("the secret is listed as ADDED");
    for value in added["object"]["data"].as_object().unwrap().values() {
        let decoded = base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap())?;
        assert_eq!(decoded, b"gatehouse:masked");
    }
    assert!(
        events.iter().any(|e| e["type"] == "BOOKMARK"),
        "bookmarks pass through: {text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");

    let finished = bed.finish().await?;
    let completed = finished
        .events
        .iter()
        .find(|e| {
            e.name() == "response.completed" && e.subject() == reply.request_id.as_deref().unwrap()
        })
        .expect("the watch's completion is recorded");
    assert_eq!(completed.data()["outcome"], "complete");
    assert!(completed.data()["masked_fields"].as_u64() >= Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_lists_continue_through_the_masking_proxy() -> Result {
    let bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    let first = bed
        .get("/api/v1/namespaces/apps/pods?limit=1", &token)
        .await?;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["items"].as_array().map(Vec::len), Some(1));
    let next = first.body["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_owned();
    let rest = bed
        .get(
            &format!("/api/v1/namespaces/apps/pods?limit=1&continue={next}"),
            &token,
        )
        .await?;
    assert_eq!(rest.status, 200, "{}", rest.body);
    let names: Vec<&str> = [&first.body, &rest.body]
        .iter()
        .filter_map(|b| b["items"][0]["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["web", "worker"]);

    // kubectl pages the same way.
    let out = bed
        .kubectl(
            "ci-deployer",
            &["get", "pods", "-n", "apps", "--chunk-size=1"],
        )
        .await?;
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("web") && out.stdout.contains("worker"));
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_ends_its_watch_in_the_cluster() -> Result {
    let bed = TestBed::start().await?;
    assert_eq!(bed.upstream_open_watches()?, 0);
    // A long watch (masked: secrets) through the proxy...
    let mut watch = bed.kubectl_spawn("ci-deployer", &["get", "secrets", "-n", "apps", "-w"])?;
    eventually("the watch to reach the cluster", DEADLINE, || async {
        (bed.upstream_open_watches().ok()? == 1).then_some(())
    })
    .await?;
    // ...ends upstream as soon as the client hangs up, not at its timeout.
    watch.kill().await?;
    eventually("the cluster to see the watch end", DEADLINE, || async {
        (bed.upstream_open_watches().ok()? == 0).then_some(())
    })
    .await?;
    let finished = bed.finish().await?;
    assert!(
        finished
            .events
            .iter()
            .any(|e| e.name() == "response.completed"
                && e.data()["outcome"] == "client_disconnected"),
        "the disconnect is recorded"
    );
    Ok(())
}
