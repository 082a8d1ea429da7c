//! The soak / fault run: sustained load through the proxy for a bounded time while a separate
//! `gatehouse evidence` process is killed (SIGKILL) and restarted twice and `nats-server` is
//! stopped and restarted. Afterwards:
//! - every request answered 2xx has exactly one `request.received` and one `response.completed`
//!   in that evidence service's ledger (matched by the `x-gatehouse-request-id` the proxy
//!   returned);
//! - no event is in the ledger twice, and the ledger holds exactly what the stream holds;
//! - every request sent while `nats-server` was down was answered 503, and none of them was
//!   forwarded (no `request.forwarded` for it);
//! - `gatehouse ledger verify` passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::load::{self, Plan};
use super::stack::{self, Stack};

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub dir: PathBuf,
    pub seconds: f64,
    pub rate: f64,
    pub connections: usize,
}

/// What the soak found; `passed` only if every check held.
#[derive(Debug, Default, Serialize)]
pub struct SoakReport {
    /// What Gatehouse fronted.
    pub upstream: String,
    pub seconds: f64,
    pub rate: f64,
    pub sent: u64,
    pub statuses: BTreeMap<String, u64>,
    pub unanswered: u64,
    pub evidence_kills: u32,
    pub nats_down_seconds: f64,
    /// Requests sent while `nats-server` was down, and how many of them were answered 503.
    pub sent_while_nats_down: u64,
    pub refused_503_while_nats_down: u64,
    /// Of those, how many the ledger shows forwarded (must be 0).
    pub forwarded_while_nats_down: u64,
    /// 2xx answers without exactly one `request.received` / `response.completed`.
    pub ok_without_received: u64,
    pub ok_without_completed: u64,
    pub ok_without_request_id: u64,
    pub duplicate_events: u64,
    pub ledger_entries: u64,
    pub stream_messages: u64,
    pub ledger_verified: bool,
    pub passed: bool,
    pub failures: Vec<String>,
}

fn evidence(config: &Path, log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(stack::sibling_binary("gatehouse")?)
        .args(["evidence", "--config"])
        .arg(config)
        .env("GATEHOUSE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting gatehouse evidence")
}

pub async fn run(options: &SoakOptions) -> Result<SoakReport> {
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)?;
    }
    let upstream = stack::Upstream::ControlPlane;
    let mut stack = Stack::start(&options.dir, upstream).await?;
    let dir = stack.dir.clone();
    let ledger_dir = dir.join("soak-evidence");
    let config = dir.join("soak-evidence.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {:?}\nnats: {{url: {:?}}}\nconsumer: soak-evidence\nbatch_max: 1000\n",
            ledger_dir.display().to_string(),
            stack.nats.url()
        ),
    )?;
    let evidence_log = dir.join("soak-evidence.log");
    let mut service = evidence(&config, &evidence_log)?;
    super::seed(&stack, 0).await?;

    let plan = Plan {
        method: http::Method::GET,
        path: "/api/v1/namespaces/default/configmaps/bench-small".to_owned(),
        connections: options.connections,
        rate: Some(options.rate),
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(options.seconds),
        record: true,
    };
    let target = stack.gatehouse_reader.clone();
    let started = Instant::now() + Duration::from_millis(20);
    let load_task = tokio::spawn(async move { load::run(&target, &plan).await });
    let at = |fraction: f64| started + Duration::from_secs_f64(options.seconds * fraction);
    let mut report = SoakReport {
        upstream: upstream.describe().to_string(),
        seconds: options.seconds,
        rate: options.rate,
        ..SoakReport::default()
    };

    // The faults, in order.
    tokio::time::sleep_until(at(0.15)).await;
    eprintln!("soak: SIGKILL gatehouse evidence");
    service.kill().await?;
    report.evidence_kills += 1;
    tokio::time::sleep_until(at(0.25)).await;
    eprintln!("soak: gatehouse evidence started again");
    service = evidence(&config, &evidence_log)?;
    tokio::time::sleep_until(at(0.40)).await;
    eprintln!("soak: nats-server stopped");
    stack.nats.stop().await;
    let down_from = Instant::now().duration_since(started);
    tokio::time::sleep_until(at(0.55)).await;
    let down_to = Instant::now().duration_since(started);
    stack.nats.restart().await?;
    eprintln!("soak: nats-server started again");
    report.nats_down_seconds = (down_to - down_from).as_secs_f64();
    tokio::time::sleep_until(at(0.70)).await;
    eprintln!("soak: SIGKILL gatehouse evidence");
    service.kill().await?;
    report.evidence_kills += 1;
    tokio::time::sleep_until(at(0.80)).await;
    eprintln!("soak: gatehouse evidence started again");
    service = evidence(&config, &evidence_log)?;

    let outcome = load_task.await??;
    report.sent = outcome.records.len() as u64;
    report.unanswered = outcome.failed;
    for (status, n) in &outcome.statuses {
        report.statuses.insert(status.to_string(), *n);
    }

    // Let the ledger take in the whole stream, then stop everything.
    let bus = super::catch_up(stack.nats.url(), &ledger_dir).await?;
    report.stream_messages = bus.read_all().await?.len() as u64;
    stack::terminate(&mut service, Duration::from_secs(30)).await;
    stack.stop().await;

    // What the ledger holds.
    report.ledger_entries = gatehouse_evidence::Ledger::open_read_only(&ledger_dir)?
        .head()
        .next_index;
    let mut ids = HashSet::new();
    let mut by_request: HashMap<String, (u32, u32, u32)> = HashMap::new();
    super::each_event(&ledger_dir, |event| {
        if !ids.insert(event["id"].as_str().unwrap_or_default().to_owned()) {
            report.duplicate_events += 1;
        }
        let subject = event["subject"].as_str().unwrap_or_default().to_owned();
        let counts = by_request.entry(subject).or_default();
        match event["type"].as_str().unwrap_or_default() {
            "dev.gatehouse.request.received.v1" => counts.0 += 1,
            "dev.gatehouse.response.completed.v1" => counts.1 += 1,
            "dev.gatehouse.request.forwarded.v1" => counts.2 += 1,
            _ => {}
        }
    })?;
    for record in &outcome.records {
        let counts = record
            .request_id
            .as_ref()
            .and_then(|id| by_request.get(id))
            .copied()
            .unwrap_or_default();
        let during_outage = record.sent >= down_from && record.sent < down_to;
        if during_outage {
            report.sent_while_nats_down += 1;
            if record.status == Some(503) {
                report.refused_503_while_nats_down += 1;
            }
            if counts.2 > 0 {
                report.forwarded_while_nats_down += 1;
            }
        }
        if record.status.is_some_and(|s| (200..300).contains(&s)) {
            if record.request_id.is_none() {
                report.ok_without_request_id += 1;
            }
            if counts.0 != 1 {
                report.ok_without_received += 1;
            }
            if counts.1 != 1 {
                report.ok_without_completed += 1;
            }
        }
    }
    report.ledger_verified = super::ledger_verify(&ledger_dir).await?.0;

    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        report.ok_without_received == 0 && report.ok_without_request_id == 0,
        format!(
            "{} 2xx answers have no single request.received ({} had no request id)",
            report.ok_without_received, report.ok_without_request_id
        ),
    );
    check(
        report.ok_without_completed == 0,
        format!(
            "{} 2xx answers have no single response.completed",
            report.ok_without_completed
        ),
    );
    check(
        report.duplicate_events == 0,
        format!("{} events are in the ledger twice", report.duplicate_events),
    );
    check(
        report.ledger_entries == report.stream_messages,
        format!(
            "the ledger holds {} entries, the stream {} messages",
            report.ledger_entries, report.stream_messages
        ),
    );
    check(
        report.sent_while_nats_down > 0
            && report.refused_503_while_nats_down == report.sent_while_nats_down,
        format!(
            "{} of {} requests sent while nats-server was down were answered 503",
            report.refused_503_while_nats_down, report.sent_while_nats_down
        ),
    );
    check(
        report.forwarded_while_nats_down == 0,
        format!(
            "{} requests sent while nats-server was down were forwarded",
            report.forwarded_while_nats_down
        ),
    );
    check(
        report.ledger_verified,
        "gatehouse ledger verify failed".into(),
    );
    report.passed = failures.is_empty();
    report.failures = failures;
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}
