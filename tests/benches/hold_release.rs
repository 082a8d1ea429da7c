//! Decision → forward: how long a held request waits after its approval is decided.
//!
//! `cargo bench --profile dev -p gatehouse-tests --bench hold_release [-- N]` starts the whole
//! stack (real nats-server, proxy, approval service, evidence), holds N deletes in prod one after another,
//! approves each through the approval service's API, and reports:
//! - proxy: from `approval.decided` reaching the proxy to the request going upstream (the
//!   proxy's `hold_release_seconds` histogram, so p99 is a bucket bound);
//! - end to end: from the approval service's `approval.decided` event time to the proxy's
//!   `request.forwarded` event time (both stamped on this machine's clock; the latter once
//!   the API server has answered, so it includes that round trip), exact per request.
//!
//! Goal: p99 ≤ 20 ms.

use gatehouse_events::Ballot;
use gatehouse_tests::{DEADLINE, TestBed, eventually};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(n))
}

fn rfc3339(text: &str) -> Option<f64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

async fn run(n: usize) -> anyhow::Result<()> {
    let bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    let auth = format!("Bearer {token}");
    let bob = bed.approvals_as("bob@example.com")?;
    for i in 0..n {
        let path = format!("/api/v1/namespaces/prod/configmaps/held-{i}");
        let headers = [("authorization", auth.as_str())];
        let request = bed.request_with("DELETE", &path, &headers, None);
        let vote = async {
            let hold = eventually("a pending hold", DEADLINE, || async {
                bob.list(false).await.ok()?.into_iter().next()
            })
            .await?;
            bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
            anyhow::Ok(hold.request_id)
        };
        let (reply, _) = tokio::join!(request, vote);
        // The sandbox answers 404 (no such configmap): forwarded all the same.
        anyhow::ensure!(reply?.status == 404, "request {i} was not forwarded");
        // Grants would let the next ones through unheld: revoke each.
        for grant in bob.grants().await? {
            bob.revoke(&grant.grant_id, None).await?;
        }
    }
    // request.forwarded is sent off the request's path: wait until every one is in.
    let events = eventually("every request.forwarded", DEADLINE, || async {
        let events = bed.events().await.ok()?;
        let forwarded = events
            .iter()
            .filter(|e| e.name() == "request.forwarded")
            .count();
        (forwarded >= n).then_some(events)
    })
    .await?;
    let mut waits = Vec::new();
    for decided in events.iter().filter(|e| e.name() == "approval.decided") {
        let forwarded = events
            .iter()
            .find(|e| e.name() == "request.forwarded" && e.subject() == decided.subject());
        if let (Some(d), Some(f)) = (
            decided.value["time"].as_str().and_then(rfc3339),
            forwarded
                .and_then(|f| f.value["time"].as_str())
                .and_then(rfc3339),
        ) {
            waits.push((f - d) * 1000.0);
        }
    }
    waits.sort_by(f64::total_cmp);
    let pct = |p: f64| waits[((waits.len() as f64 * p).ceil() as usize).clamp(1, waits.len()) - 1];
    let (_, metrics) = bed.admin_get("/metrics").await?;
    let buckets: Vec<(f64, u64)> = metrics
        .lines()
        .filter(|l| l.starts_with("gatehouse_proxy_hold_release_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le.parse().unwrap_or(f64::INFINITY), count))
        })
        .collect();
    let total = buckets.last().map_or(0, |b| b.1);
    let bound = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c as f64 >= total as f64 * p)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    };
    println!("held requests approved and forwarded: {}", waits.len());
    println!(
        "approval.decided -> request.forwarded (event times): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        waits.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "decision reaches proxy -> sent upstream (proxy histogram): p50 <= {} ms, p99 <= {} ms",
        bound(0.50),
        bound(0.99)
    );
    bed.finish().await?;
    Ok(())
}
