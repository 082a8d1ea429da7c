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

/// Sends half a request line to `addr` in plain HTTP and returns how long the server took to
/// close the connection, and what it sent.
async fn slow_sender(addr: std::net::SocketAddr) -> anyhow::Result<(std::time::Duration, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /healthz HT").await?;
    let start = std::time::Instant::now();
    let mut received = 0;
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await?;
    Ok((start.elapsed(), received))
}

/// Every port of every service is served by the guarded listener: a client that never finishes
/// its request line is cut after `header_read_timeout` on each, and each service counts it on
/// its own `/metrics`. (The listener's behaviour in detail: `services/listener/tests`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_cuts_a_client_that_never_finishes_its_headers() -> Result {
    use std::time::Duration;
    let bed = TestBed::start_with(gatehouse_tests::BedOptions {
        connections: "{header_read_timeout: 1s}".into(),
        ..Default::default()
    })
    .await?;
    let stack = bed.stack();
    let approval_admin = stack.approval_admin_addr.expect("the approval admin port");
    let evidence_admin = stack.evidence_admin_addr.expect("the evidence admin port");
    let auditor_api = stack.auditor_api_addr.expect("the auditor API");
    let plain = [
        ("proxy admin", stack.proxy_admin_addr),
        ("approval", stack.approval_addr),
        ("approval admin", approval_admin),
        ("auditor API", auditor_api),
        ("evidence admin", evidence_admin),
    ];
    // All at once, so the test waits about one timeout, not one per port.
    let (proxy, others) = tokio::join!(
        async {
            let start = std::time::Instant::now();
            let sent = bed.raw_request(b"GET /version HT").await;
            (start.elapsed(), sent)
        },
        futures::future::join_all(plain.iter().map(|(_, addr)| slow_sender(*addr))),
    );
    let (took, sent) = proxy;
    assert_eq!(sent?, Vec::<u8>::new(), "the proxy answered half a request");
    assert!(
        took >= Duration::from_millis(900),
        "proxy: closed after {took:?}"
    );
    for ((name, _), outcome) in plain.iter().zip(others) {
        let (took, received) = outcome?;
        assert_eq!(received, 0, "{name} answered half a request");
        assert!(
            (Duration::from_millis(900)..DEADLINE / 2).contains(&took),
            "{name}: closed after {took:?}"
        );
    }

    // Each service counted it, by listener, on its own /metrics.
    let (_, proxy_metrics) = bed.admin_get("/metrics").await?;
    for listener in ["proxy", "admin"] {
        let series = format!(
            "gatehouse_proxy_connections_timed_out_total{{listener=\"{listener}\",reason=\"header_read\"}}"
        );
        assert!(
            sample(&proxy_metrics, &series).is_some_and(|n| n >= 1.0),
            "{series}\n{proxy_metrics}"
        );
    }
    for (addr, prefix, listeners) in [
        (approval_admin, "gatehouse_approval", ["approval", "admin"]),
        (
            evidence_admin,
            "gatehouse_evidence",
            ["auditor_api", "admin"],
        ),
    ] {
        let (status, text) = gatehouse_tests::http_get(&format!("http://{addr}/metrics")).await?;
        assert_eq!(status, 200);
        for listener in listeners {
            let series = format!(
                "{prefix}_connections_timed_out_total{{listener=\"{listener}\",reason=\"header_read\"}}"
            );
            assert!(
                sample(&text, &series).is_some_and(|n| n >= 1.0),
                "{series}\n{text}"
            );
        }
        assert!(
            text.contains(&format!("{prefix}_connections_open{{")),
            "{text}"
        );
    }

    // A well-behaved client is not affected.
    let allowed = bed
        .kubectl("ci-deployer", &["get", "configmaps", "-n", "apps"])
        .await?;
    assert!(allowed.success, "{}", allowed.stderr);
    bed.finish().await?;
    Ok(())
}
