//! Operations, end to end: the proxy's admin port in the same stack `gatehouse up` runs.

use gatehouse_tests::{DEADLINE, TestBed, eventually};

type Result = anyhow::Result<()>;

/// The value of the series `series` (name and labels exactly) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_reports_readiness_and_counts_requests() -> Result {
    let mut bed = TestBed::start().await?;

    let (status, body) = bed.admin_get("/readyz").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[+]nats ok\n"), "{body}");
    assert!(body.contains("[+]upstream ok\n"), "{body}");
    assert_eq!(bed.admin_get("/healthz").await?, (200, "ok".to_owned()));

    let allowed = bed
        .kubectl("ci-deployer", &["get", "configmaps", "-n", "apps"])
        .await?;
    assert!(allowed.success, "{}", allowed.stderr);
    let denied = bed
        .kubectl("ci-deployer", &["get", "secrets", "-n", "prod"])
        .await?;
    assert!(!denied.success);

    // An allowed request is counted when its response body ends, just after kubectl has it.
    let allow = r#"gatehouse_proxy_requests_total{verb="list",decision="allow",code="200"}"#;
    let deny = r#"gatehouse_proxy_requests_total{verb="list",decision="deny",code="403"}"#;
    let metrics = eventually("both requests to be counted", DEADLINE, || async {
        let (_, text) = bed.admin_get("/metrics").await.ok()?;
        (sample(&text, allow).is_some_and(|n| n >= 1.0)
            && sample(&text, deny).is_some_and(|n| n >= 1.0))
        .then_some(text)
    })
    .await?;
    assert!(
        metrics.contains("gatehouse_proxy_request_duration_seconds_bucket{"),
        "{metrics}"
    );

    // The same token twice: the second is a token-cache hit, and the metric says so.
    let token = bed.mint("readonly-bot")?;
    for _ in 0..2 {
        let reply = bed.get("/api/v1/namespaces/apps/pods", &token).await?;
        assert_eq!(reply.status, 200);
    }
    let text = eventually("the token-cache hit to be counted", DEADLINE, || async {
        let (_, text) = bed.admin_get("/metrics").await.ok()?;
        sample(&text, "gatehouse_proxy_token_cache_hits_total")
            .is_some_and(|n| n >= 1.0)
            .then_some(text)
    })
    .await?;
    // Every acked event is counted by kind, with its publish-to-ack time.
    let received = r#"gatehouse_proxy_events_published_total{kind="request.received"}"#;
    assert!(sample(&text, received).is_some_and(|n| n >= 4.0), "{text}");
    assert!(
        sample(&text, "gatehouse_proxy_publish_duration_seconds_count").is_some_and(|n| n >= 4.0),
        "{text}"
    );

    // NATS gone: not ready, naming why; still alive.
    if let Some(nats) = bed.stack_mut().nats_server.as_mut() {
        nats.stop().await;
        let body = eventually("readyz to report NATS down", DEADLINE, || async {
            let (status, body) = bed.admin_get("/readyz").await.ok()?;
            (status == 503).then_some(body)
        })
        .await?;
        assert!(
            body.contains("[-]nats failed: not connected to NATS"),
            "{body}"
        );
        assert!(body.ends_with("readyz check failed\n"), "{body}");
        assert_eq!(bed.admin_get("/healthz").await?.0, 200);
    }
    Ok(())
}
