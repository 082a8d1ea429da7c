//! The benchmark harness behind `tests/bench/run` (side-by-side figures) and `tests/bench/soak`
//! (faults under load).
//!
//! Module map:
//! - [`load`]: the load generator (open loop with coordinated-omission correction, closed loop).
//! - [`stack`]: the processes measured: `nats-server`, `gatehouse up` (in front of the local
//!   control plane or the sandbox), nginx.
//! - [`evidence`]: ledger ingest, bundle export and verify throughput.
//! - [`report`]: medians, ratios and goals, as Markdown and JSON.
//! - [`soak`]: sustained load while the evidence service and `nats-server` are restarted.
//!
//! Every comparison runs in alternation (direct, nginx, Gatehouse, then again) and reports the
//! median of the rounds, so a noisy neighbour on a shared machine moves all three alike.

pub mod cpu;
pub mod evidence;
pub mod load;
pub mod report;
pub mod soak;
pub mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_events::Ballot;
use serde::Serialize;

use load::{Outcome, Plan, Target};
use stack::Stack;
pub use stack::Upstream;

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    /// The API server behind Gatehouse (and behind nginx, and measured direct).
    pub upstream: Upstream,
    pub rounds: usize,
    /// Seconds per measured run (after a warm-up of a fifth of it, at least one second).
    pub seconds: f64,
    /// Requests per second and connections of the latency comparison.
    pub rate: f64,
    pub connections: usize,
    pub saturation_connections: usize,
    pub pods: usize,
    pub list_rate: f64,
    pub holds: usize,
    pub ledger_events: u64,
    /// Refuse to start while the one-minute load average is above this.
    pub max_load: f64,
}

/// The one-, five- and fifteen-minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<f64>().unwrap_or(f64::NAN));
    [
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
    ]
}

/// Waits (up to three minutes) for the machine to be quiet; refuses if it stays busy.
pub async fn require_quiet(max_load: f64) -> Result<[f64; 3]> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let load = load_average();
        if load[0] <= max_load {
            return Ok(load);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the machine is busy (load average {:.2} {:.2} {:.2}, more than {max_load} for \
                 three minutes): figures taken now would measure the other work, so none are \
                 reported. Stop the other work (builds, tests) or raise --max-load.",
                load[0],
                load[1],
                load[2]
            );
        }
        eprintln!(
            "waiting for the machine to settle: load average {:.2} > {max_load}",
            load[0]
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Latency percentiles of one run, microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    fn of(outcome: &Outcome) -> Self {
        Self {
            p50: outcome.percentile_us(50.0),
            p99: outcome.percentile_us(99.0),
            p999: outcome.percentile_us(99.9),
        }
    }

    /// Of plain values (nearest rank); NaN when there are none.
    fn of_values(mut values: Vec<f64>) -> Self {
        values.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| {
            values
                .get(((values.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Self {
            p50: pick(0.50),
            p99: pick(0.99),
            p999: pick(0.999),
        }
    }

    fn minus(self, base: Percentiles) -> Self {
        Self {
            p50: self.p50 - base.p50,
            p99: self.p99 - base.p99,
            p999: self.p999 - base.p999,
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn median_of(rounds: &[Percentiles]) -> Percentiles {
    let pick = |f: fn(&Percentiles) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Percentiles {
        p50: pick(|p| p.p50),
        p99: pick(|p| p.p99),
        p999: pick(|p| p.p999),
    }
}

/// Runs `plan` against each of `targets` in turn, `rounds` times over, and keeps what `figure`
/// takes from each run, by target name, round by round.
async fn alternate<T>(
    targets: &[&Target],
    plan: &Plan,
    rounds: usize,
    what: &str,
    sent: &mut Sent,
    figure: impl Fn(&Outcome) -> T,
) -> Result<Vec<BTreeMap<String, T>>> {
    let (out, _) = alternate_with_cpu(targets, plan, rounds, what, sent, figure, &[]).await?;
    Ok(out)
}

/// [`alternate`], also taking each part's CPU time per request of every run: the median over
/// the rounds, by target.
async fn alternate_with_cpu<T>(
    targets: &[&Target],
    plan: &Plan,
    rounds: usize,
    what: &str,
    sent: &mut Sent,
    figure: impl Fn(&Outcome) -> T,
    parts: &[cpu::Part],
) -> Result<(Vec<BTreeMap<String, T>>, BTreeMap<String, cpu::PerRequest>)> {
    let mut out = Vec::with_capacity(rounds);
    let mut cpu_runs: BTreeMap<String, Vec<cpu::PerRequest>> = BTreeMap::new();
    for round in 1..=rounds {
        let mut this = BTreeMap::new();
        for target in targets {
            eprintln!("round {round}/{rounds}: {} {what}", target.name);
            let counting = (target.name == "gatehouse").then_some(&mut *sent);
            let before = cpu::sample(parts);
            let outcome = measured(target, plan, counting).await?;
            let after = cpu::sample(parts);
            cpu_runs
                .entry(target.name.clone())
                .or_default()
                .push(cpu::PerRequest::between(&before, &after, outcome.answered));
            this.insert(target.name.clone(), figure(&outcome));
        }
        out.push(this);
    }
    let cpu = cpu_runs
        .into_iter()
        .map(|(name, runs)| (name, cpu::PerRequest::median(&runs)))
        .collect();
    Ok((out, cpu))
}

/// Each target's percentiles, the median of the rounds.
fn medians(
    rounds: &[BTreeMap<String, Percentiles>],
    names: &[&str],
) -> BTreeMap<String, Percentiles> {
    names
        .iter()
        .map(|name| {
            let of: Vec<Percentiles> = rounds.iter().map(|r| r[*name]).collect();
            ((*name).to_owned(), median_of(&of))
        })
        .collect()
}

/// Requests sent through Gatehouse, for the zero-loss accounting.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sent {
    pub answered: u64,
    pub unanswered: u64,
}

impl Sent {
    fn add(&mut self, outcome: &Outcome) {
        self.answered += outcome.answered;
        self.unanswered += outcome.failed;
    }
}

/// Runs `plan` and checks that every answer was a 2xx (a misconfigured run measures errors).
async fn measured(target: &Target, plan: &Plan, sent: Option<&mut Sent>) -> Result<Outcome> {
    let outcome = load::run(target, plan).await?;
    if let Some(sent) = sent {
        sent.add(&outcome);
    }
    ensure!(
        outcome.non_2xx() == 0 && outcome.failed == 0,
        "{} {} {}: {} answers were not 2xx ({:?}), {} got no answer",
        target.name,
        plan.method,
        plan.path,
        outcome.non_2xx(),
        outcome.statuses,
        outcome.failed
    );
    Ok(outcome)
}

const SMALL_GET: &str = "/api/v1/namespaces/default/configmaps/bench-small";
const POD_LIST: &str = "/api/v1/namespaces/apps/pods";

/// Creates what the runs read: one small ConfigMap, and `pods` pods in `apps` whose containers
/// carry a password in their environment (so masking has work to do). On the control plane
/// they are bound to a kwok node (no scheduling), and the runs start once kwok has made them all
/// Running, so nothing works in the background while they are measured.
async fn seed(stack: &Stack, pods: usize) -> Result<()> {
    let (status, body) = load::send_json(
        &stack.direct,
        http::Method::POST,
        "/api/v1/namespaces/default/configmaps",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bench-small", "namespace": "default"},
            "data": {"greeting": "hello", "color": "blue"}
        }),
    )
    .await?;
    ensure!(
        status == 201 || status == 200 || status == 409,
        "creating the ConfigMap: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let mut client = load::Client::connect(&stack.direct).await?;
    for i in 0..pods {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("bench-{i:05}"), "namespace": "apps",
                "labels": {"app": "bench", "tier": "backend", "shard": format!("{}", i % 16)}
            },
            "spec": {"nodeName": "kwok-node-0", "containers": [{
                "name": "app", "image": "registry.example/bench/app:1.4.2",
                "env": [
                    {"name": "DB_PASSWORD", "value": format!("hunter2-{i}")},
                    {"name": "API_TOKEN", "value": format!("tok-{i:08x}")},
                    {"name": "LOG_LEVEL", "value": "info"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}
            }]}
        });
        let (status, body) = client
            .request(
                http::Method::POST,
                "/api/v1/namespaces/apps/pods",
                Some(&pod),
            )
            .await?;
        ensure!(
            status == 201 || status == 200 || status == 409,
            "creating pod {i}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    if stack.upstream == Upstream::ControlPlane && pods > 0 {
        let pending =
            "/api/v1/namespaces/apps/pods?fieldSelector=status.phase%21%3DRunning&limit=1";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let (status, body) = client.request(http::Method::GET, pending, None).await?;
            ensure!(status == 200, "listing pending pods: {status}");
            let list: serde_json::Value = serde_json::from_slice(&body)?;
            if list["items"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "kwok did not run the seeded pods within ten minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Everything measured.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// The API server behind Gatehouse, nginx and direct.
    pub upstream: Upstream,
    /// Through the proxy, nginx and direct, with the stack up.
    #[serde(flatten)]
    pub proxy: ProxyFigures,
    pub hold_decision_to_forward_ms: Percentiles,
    pub evidence: evidence::Throughput,
    pub zero_loss: report::ZeroLoss,
}

/// What [`measure`] takes with the stack up.
#[derive(Debug, Serialize)]
pub struct ProxyFigures {
    /// At the fixed rate.
    pub latency_rounds: Vec<BTreeMap<String, Percentiles>>,
    /// Medians over rounds of each target's percentiles.
    pub latency: BTreeMap<String, Percentiles>,
    /// Medians over rounds of (target − direct) in the same round.
    pub added_nginx: Percentiles,
    pub added_gatehouse: Percentiles,
    /// CPU microseconds per request by part, at the fixed rate, by path.
    pub cpu_per_request: BTreeMap<String, cpu::PerRequest>,
    /// The same at fractions of nginx's saturation measured in the run.
    pub fractions: Vec<LatencyFigures>,
    pub saturation_rounds: Vec<BTreeMap<String, f64>>,
    pub saturation_rps: BTreeMap<String, f64>,
    /// Median over rounds of Gatehouse ÷ nginx.
    pub saturation_ratio: f64,
    /// Every pod, and the first [`SMALL_LIST_PODS`].
    pub list: ListFigures,
    pub list_small: ListFigures,
    pub holds: usize,
}

/// Latency and CPU per request of the small GET at one rate, direct, through nginx and (below
/// its saturation) through Gatehouse.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyFigures {
    pub rate: f64,
    /// Set when the rate is a fraction of nginx's saturation in the same run.
    pub fraction_of_nginx_saturation: Option<f64>,
    pub rounds: Vec<BTreeMap<String, Percentiles>>,
    /// Medians over rounds of each path's percentiles.
    pub latency: BTreeMap<String, Percentiles>,
    /// Medians over rounds of (path − direct) in the same round; nginx, and gatehouse when it
    /// ran.
    pub added: BTreeMap<String, Percentiles>,
    /// CPU microseconds per request by part, by path.
    pub cpu: BTreeMap<String, cpu::PerRequest>,
}

impl LatencyFigures {
    fn of(
        rate: f64,
        rounds: Vec<BTreeMap<String, Percentiles>>,
        cpu: BTreeMap<String, cpu::PerRequest>,
    ) -> Self {
        let names: Vec<String> = rounds
            .first()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        let added = names
            .iter()
            .filter(|n| *n != "direct")
            .map(|name| {
                let of: Vec<Percentiles> =
                    rounds.iter().map(|r| r[name].minus(r["direct"])).collect();
                (name.clone(), median_of(&of))
            })
            .collect();
        let latency = medians(
            &rounds,
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        Self {
            rate,
            fraction_of_nginx_saturation: None,
            rounds,
            latency,
            added,
            cpu,
        }
    }
}

/// A whole run: start, measure, stop, account, and measure the ledger alone.
pub async fn run(options: &Options) -> Result<(Figures, [f64; 3], [f64; 3])> {
    let load_before = require_quiet(options.max_load).await?;
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("clearing {}", options.dir.display()))?;
    }
    eprintln!(
        "starting nats-server, gatehouse up and nginx in front of {} in {}",
        options.upstream.describe(),
        options.dir.display()
    );
    let mut stack = Stack::start(&options.dir, options.upstream).await?;
    let result = measure(&mut stack, options).await;
    if result.is_err() {
        stack.stop().await;
        return result.map(|_| unreachable!());
    }
    let (proxy, sent) = result?;
    let (zero_loss, hold_waits_ms) = account(&mut stack, sent).await?;
    stack.stop().await;
    eprintln!(
        "ledger alone: {} events of about 1 KB (ingest, export, verify)",
        options.ledger_events
    );
    let events = options.ledger_events;
    let evidence = tokio::task::spawn_blocking(move || evidence::measure(events, 1_000)).await??;
    let load_after = load_average();
    let figures = Figures {
        upstream: options.upstream,
        proxy,
        hold_decision_to_forward_ms: Percentiles::of_values(hold_waits_ms),
        evidence,
        zero_loss,
    };
    Ok((figures, load_before, load_after))
}

/// The proxy-facing measurements, with the stack up.
async fn measure(stack: &mut Stack, options: &Options) -> Result<(ProxyFigures, Sent)> {
    let mut sent = Sent::default();
    let warmup = Duration::from_secs_f64((options.seconds / 5.0).max(1.0));
    let duration = Duration::from_secs_f64(options.seconds);
    eprintln!("seeding: a ConfigMap and {} pods", options.pods);
    seed(stack, options.pods).await?;
    for target in [&stack.direct, &stack.nginx_target] {
        let (status, _) = load::once(target, http::Method::GET, SMALL_GET).await?;
        ensure!(
            status == 200,
            "{}: GET {SMALL_GET} answered {status}",
            target.name
        );
    }
    let (status, _) = load::once(&stack.gatehouse_reader, http::Method::GET, SMALL_GET).await?;
    sent.answered += 1;
    ensure!(
        status == 200,
        "gatehouse: GET {SMALL_GET} answered {status}"
    );

    // Saturation, closed loop: first, since the latencies at fractions of nginx's are set by it.
    let closed = Plan {
        method: http::Method::GET,
        path: SMALL_GET.to_owned(),
        connections: options.saturation_connections,
        rate: None,
        warmup,
        duration,
        record: false,
    };
    let what = format!(
        "saturation on {} connections",
        options.saturation_connections
    );
    let targets = [&stack.nginx_target, &stack.gatehouse_reader];
    let saturation_rounds = alternate(
        &targets,
        &closed,
        options.rounds,
        &what,
        &mut sent,
        Outcome::rate,
    )
    .await?;
    let ratios: Vec<f64> = saturation_rounds
        .iter()
        .map(|r| r["gatehouse"] / r["nginx"])
        .collect();
    let saturation_rps: BTreeMap<String, f64> = ["nginx", "gatehouse"]
        .into_iter()
        .map(|name| {
            let v: Vec<f64> = saturation_rounds.iter().map(|r| r[name]).collect();
            (name.to_owned(), median(&v))
        })
        .collect();

    // Added latency and CPU per request at a fixed rate, and at fractions of nginx's saturation.
    let parts = stack.cpu_parts();
    let at = |rate, with_gatehouse| LatencyRun {
        rate,
        with_gatehouse,
        closed: &closed,
        parts: &parts,
    };
    let fixed = latency_at(stack, options, at(options.rate, true), &mut sent).await?;
    let mut fractions = Vec::new();
    for fraction in [0.1, 0.5] {
        let rate = fraction * saturation_rps["nginx"];
        // An open loop past Gatehouse's own saturation only measures a growing queue, and
        // its timeouts would end the run.
        let within = rate < 0.9 * saturation_rps["gatehouse"];
        let mut figures = latency_at(stack, options, at(rate, within), &mut sent).await?;
        figures.fraction_of_nginx_saturation = Some(fraction);
        fractions.push(figures);
    }
    let plan = closed;

    // Pod lists, masked by Gatehouse: all of them, and the first 750 (about 1.7 MB).
    let list = pod_list(stack, options, &plan, POD_LIST, &mut sent).await?;
    let small_path = format!("{POD_LIST}?limit={SMALL_LIST_PODS}");
    let list_small = pod_list(stack, options, &plan, &small_path, &mut sent).await?;

    eprintln!(
        "{} held deletes, each approved through the approval service",
        options.holds
    );
    hold(stack, options.holds, &mut sent).await?;

    Ok((
        ProxyFigures {
            latency_rounds: fixed.rounds.clone(),
            latency: fixed.latency.clone(),
            added_nginx: fixed.added["nginx"],
            added_gatehouse: fixed.added["gatehouse"],
            cpu_per_request: fixed.cpu.clone(),
            fractions,
            saturation_rounds,
            saturation_rps,
            saturation_ratio: median(&ratios),
            list,
            list_small,
            holds: options.holds,
        },
        sent,
    ))
}

/// One latency comparison: at `rate`, on the measured connections, with CPU by part.
struct LatencyRun<'a> {
    rate: f64,
    with_gatehouse: bool,
    closed: &'a Plan,
    parts: &'a [cpu::Part],
}

async fn latency_at(
    stack: &Stack,
    options: &Options,
    run: LatencyRun<'_>,
    sent: &mut Sent,
) -> Result<LatencyFigures> {
    let plan = Plan {
        rate: Some(run.rate),
        connections: options.connections,
        ..run.closed.clone()
    };
    let what = format!(
        "GET at {:.0} rps on {} connections",
        run.rate, options.connections
    );
    let mut targets = vec![&stack.direct, &stack.nginx_target];
    if run.with_gatehouse {
        targets.push(&stack.gatehouse_reader);
    }
    let (rounds, cpu) = alternate_with_cpu(
        &targets,
        &plan,
        options.rounds,
        &what,
        sent,
        Percentiles::of,
        run.parts,
    )
    .await?;
    Ok(LatencyFigures::of(run.rate, rounds, cpu))
}

/// A masked pod list against the same list direct.
#[derive(Debug, Serialize)]
pub struct ListFigures {
    pub path: String,
    pub pods: usize,
    /// As Gatehouse sends it (masked).
    pub bytes: u64,
    pub masked: bool,
    pub latency: BTreeMap<String, Percentiles>,
    pub added: Percentiles,
}

/// Pods in the smaller list: about 1.7 MB of pods.
pub const SMALL_LIST_PODS: usize = 750;

async fn pod_list(
    stack: &Stack,
    options: &Options,
    plan: &Plan,
    path: &str,
    sent: &mut Sent,
) -> Result<ListFigures> {
    let (status, body) = load::once(&stack.gatehouse_deployer, http::Method::GET, path).await?;
    sent.answered += 1;
    ensure!(status == 200, "gatehouse: GET {path} answered {status}");
    let text = String::from_utf8_lossy(&body);
    let masked = !text.contains("hunter2-") && text.contains("bench-00000");
    ensure!(
        masked,
        "the pod list through Gatehouse still shows the passwords"
    );
    let pods = serde_json::from_slice::<serde_json::Value>(&body)?["items"]
        .as_array()
        .map_or(0, Vec::len);
    let plan = Plan {
        path: path.to_owned(),
        connections: 1,
        rate: Some(options.list_rate),
        ..plan.clone()
    };
    let what = format!("GET {path} at {} rps", options.list_rate);
    let targets = [&stack.direct, &stack.gatehouse_deployer];
    let rounds = alternate(
        &targets,
        &plan,
        options.rounds,
        &what,
        sent,
        Percentiles::of,
    )
    .await?;
    let added: Vec<Percentiles> = rounds
        .iter()
        .map(|r| r["gatehouse"].minus(r["direct"]))
        .collect();
    let latency = medians(&rounds, &["direct", "gatehouse"]);
    Ok(ListFigures {
        path: path.to_owned(),
        pods,
        bytes: body.len() as u64,
        masked,
        latency,
        added: median_of(&added),
    })
}

/// Holds `n` deletes in prod one after another and approves each as bob (an SRE).
async fn hold(stack: &Stack, n: usize, sent: &mut Sent) -> Result<()> {
    let bob = gatehouse_approval::client::ApprovalClient::new(
        &stack.approval_url,
        &stack.token("bob@example.com")?,
        None,
    )?;
    for i in 0..n {
        let path = format!("/api/v1/namespaces/prod/configmaps/held-{i}");
        let request = load::once(&stack.gatehouse_deployer, http::Method::DELETE, &path);
        let vote = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let hold = loop {
                if let Some(hold) = bob.list(false).await?.into_iter().next() {
                    break hold;
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "hold {i} was never posted"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
            anyhow::Ok(())
        };
        let (reply, voted) = tokio::join!(request, vote);
        voted?;
        let (status, _) = reply?;
        sent.answered += 1;
        // The cluster has no such ConfigMap: 404 means it was forwarded.
        ensure!(
            status == 404,
            "held delete {i} answered {status}, not the API server's 404"
        );
        for grant in bob.grants().await? {
            bob.revoke(&grant.grant_id, None).await?;
        }
    }
    Ok(())
}

/// Waits until the ledger in `ledger_dir` holds everything the stream holds now.
async fn catch_up(nats_url: &str, ledger_dir: &Path) -> Result<gatehouse_bus::Bus> {
    let bus =
        gatehouse_bus::Bus::connect(&gatehouse_bus::BusConfig::new(nats_url), "gatehouse-bench")
            .await?;
    let target = bus.last_sequence().await?;
    eprintln!("waiting for the ledger to catch up with the stream (sequence {target})");
    stack::wait_until("the ledger to catch up", Duration::from_secs(300), || {
        gatehouse_evidence::Ledger::open_read_only(ledger_dir)
            .map(|l| l.head().last_sequence >= target)
            .unwrap_or(false)
    })
    .await?;
    Ok(bus)
}

/// Every event in the ledger in `data_dir`, parsed, in order (entries that are not JSON
/// events are skipped).
fn each_event(data_dir: &Path, mut visit: impl FnMut(&serde_json::Value)) -> Result<()> {
    let ledger = gatehouse_evidence::Ledger::open_read_only(data_dir)?;
    for stored in ledger.entries(0)? {
        let stored = stored?;
        let Ok(entry) = gatehouse_proof::entry::Entry::decode(&stored.encoding) else {
            continue;
        };
        if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&entry.event) {
            visit(&event);
        }
    }
    Ok(())
}

/// `gatehouse ledger verify` on `data_dir`: whether it passed, and what it printed.
async fn ledger_verify(data_dir: &Path) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(stack::sibling_binary("gatehouse")?)
        .args(["ledger", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// Waits for the ledger to hold the whole stream, stops Gatehouse, then counts what the ledger
/// recorded against what the load tool saw answered, and runs `gatehouse ledger verify`. Also
/// returns each held request's decision → forward time, milliseconds.
async fn account(stack: &mut Stack, sent: Sent) -> Result<(report::ZeroLoss, Vec<f64>)> {
    let ledger_dir = stack.up_dir();
    catch_up(stack.nats.url(), &ledger_dir).await?;
    stack.stop_gatehouse().await;
    let (mut received, mut completed) = (0u64, 0u64);
    let mut decided: BTreeMap<String, f64> = BTreeMap::new();
    let mut forwarded: BTreeMap<String, f64> = BTreeMap::new();
    let seconds = |v: &serde_json::Value| {
        v["time"].as_str().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        })
    };
    each_event(&ledger_dir, |event| {
        let subject = event["subject"].as_str().unwrap_or_default().to_owned();
        match event["type"].as_str().unwrap_or_default() {
            "dev.gatehouse.request.received.v1" => received += 1,
            "dev.gatehouse.response.completed.v1" => completed += 1,
            "dev.gatehouse.approval.decided.v1" => {
                if let Some(t) = seconds(event) {
                    decided.insert(subject, t);
                }
            }
            "dev.gatehouse.request.forwarded.v1" => {
                if let Some(t) = seconds(event) {
                    forwarded.insert(subject, t);
                }
            }
            _ => {}
        }
    })?;
    let waits = decided
        .iter()
        .filter_map(|(subject, d)| forwarded.get(subject).map(|f| (f - d) * 1000.0))
        .collect();
    let (ledger_verified, ledger_verify_output) = ledger_verify(&ledger_dir).await?;
    Ok((
        report::ZeroLoss {
            answered: sent.answered,
            unanswered: sent.unanswered,
            request_received: received,
            response_completed: completed,
            ledger_verified,
            ledger_verify_output,
        },
        waits,
    ))
}
