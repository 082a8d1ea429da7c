//! The results: a Markdown table for people and a JSON file for machines, medians and ratios
//! with the goals they are held to.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{Figures, Options, Percentiles};

/// What the ledger recorded against what the load tool saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ZeroLoss {
    /// Requests sent through Gatehouse that got an answer (any status).
    pub answered: u64,
    /// Requests sent through Gatehouse that got none (reset, timed out).
    pub unanswered: u64,
    pub request_received: u64,
    pub response_completed: u64,
    pub ledger_verified: bool,
    pub ledger_verify_output: String,
}

impl ZeroLoss {
    /// Every answered request has its `request.received` and its `response.completed`, no
    /// more, and the ledger verifies.
    pub fn holds(&self) -> bool {
        self.unanswered == 0
            && self.request_received == self.answered
            && self.response_completed == self.answered
            && self.ledger_verified
    }
}

/// A goal, and whether the figure met it.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub measure: String,
    pub figure: f64,
    pub unit: String,
    pub goal: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub upstream: String,
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    pub load_average_before: [f64; 3],
    pub load_average_after: [f64; 3],
    pub parameters: Parameters,
    pub goals: Vec<Goal>,
    pub figures: &'a Figures,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
}

#[derive(Debug, Serialize)]
pub struct Parameters {
    pub rounds: usize,
    pub seconds: f64,
    pub rate: f64,
    pub connections: usize,
    pub saturation_connections: usize,
    pub pods: usize,
    pub list_rate: f64,
    pub holds: usize,
    pub ledger_events: u64,
}

fn machine() -> Machine {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        model,
    }
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn goals(f: &Figures) -> Vec<Goal> {
    let goal = |measure: &str, figure: f64, unit: &str, goal: &str, met: bool| Goal {
        measure: measure.to_owned(),
        figure,
        unit: unit.to_owned(),
        goal: goal.to_owned(),
        met,
    };
    // Near-linear in cores: every core at least 0.8 × cores × one core.
    let scaling = |measure: &str, all: f64, one: f64, cores: usize| {
        let wanted = 0.8 * cores as f64;
        goal(
            measure,
            all / one.max(1.0),
            "×",
            &format!("≥ {wanted:.1} ({cores} cores)"),
            all >= wanted * one,
        )
    };
    // At 10% of nginx's saturation in the same run: Gatehouse's added latency against nginx's.
    let tenth = f
        .proxy
        .fractions
        .iter()
        .find(|l| l.fraction_of_nginx_saturation == Some(0.1));
    let against_nginx = |pick: fn(&Percentiles) -> f64, times: f64, what: &str| {
        let (g, n) = tenth
            .and_then(|l| Some((l.added.get("gatehouse")?, l.added.get("nginx")?)))
            .map_or((f64::NAN, f64::NAN), |(g, n)| (pick(g), pick(n)));
        goal(
            &format!("added {what} at 10% of nginx's saturation, Gatehouse ÷ nginx"),
            g / n.max(1.0),
            "×",
            &format!("≤ {times}"),
            g <= times * n.max(1.0),
        )
    };
    vec![
        against_nginx(|p| p.p50, 2.0, "p50"),
        against_nginx(|p| p.p99, 3.0, "p99"),
        goal(
            "added p50 over direct, small GET at the fixed rate",
            f.proxy.added_gatehouse.p50,
            "µs",
            "≤ 150 µs",
            f.proxy.added_gatehouse.p50 <= 150.0,
        ),
        goal(
            "added p99 over direct, small GET at the fixed rate",
            f.proxy.added_gatehouse.p99,
            "µs",
            "≤ 1,500 µs",
            f.proxy.added_gatehouse.p99 <= 1_500.0,
        ),
        goal(
            "saturation throughput, Gatehouse ÷ nginx",
            f.proxy.saturation_ratio,
            "×",
            "≥ 0.5",
            f.proxy.saturation_ratio >= 0.5,
        ),
        goal(
            &format!(
                "added p99 over direct, masked list of {} pods ({:.1} MB)",
                f.proxy.list_small.pods,
                f.proxy.list_small.bytes as f64 / 1e6
            ),
            f.proxy.list_small.added.p99 / 1000.0,
            "ms",
            "≤ 10 ms",
            f.proxy.list_small.added.p99 <= 10_000.0,
        ),
        goal(
            "decision → forward p99, held requests",
            f.hold_decision_to_forward_ms.p99,
            "ms",
            "≤ 20 ms",
            f.hold_decision_to_forward_ms.p99 <= 20.0,
        ),
        {
            // Each proxied request is three events: request.received, request.forwarded and
            // response.completed.
            let needed = 2.0
                * 3.0
                * f.proxy
                    .saturation_rps
                    .get("gatehouse")
                    .copied()
                    .unwrap_or(0.0);
            goal(
                "ledger ingest ÷ the events of twice Gatehouse's saturation (3 per request)",
                f.evidence.ingest_events_per_s / needed.max(1.0),
                "×",
                "≥ 1",
                f.evidence.ingest_events_per_s >= needed,
            )
        },
        goal(
            "ledger ingest, fsync per group commit",
            f.evidence.ingest_events_per_s,
            "events/s",
            "≥ 50,000",
            f.evidence.ingest_events_per_s >= 50_000.0,
        ),
        goal(
            "bundle verify, one core (3 × 117,581)",
            f.evidence.verify_events_per_s,
            "events/s",
            "≥ 352,743",
            f.evidence.verify_events_per_s >= 352_743.0,
        ),
        scaling(
            "bundle verify, every core ÷ one core",
            f.evidence.verify_events_per_s_all_cores,
            f.evidence.verify_events_per_s,
            f.evidence.cores,
        ),
        goal(
            "ledger verify, one core (3 × 117,581)",
            f.evidence.ledger_verify_events_per_s_one_core,
            "events/s",
            "≥ 352,743",
            f.evidence.ledger_verify_events_per_s_one_core >= 352_743.0,
        ),
        scaling(
            "ledger verify, every core ÷ one core",
            f.evidence.ledger_verify_events_per_s_all_cores,
            f.evidence.ledger_verify_events_per_s_one_core,
            f.evidence.cores,
        ),
        goal(
            "zero loss: ledger events = answered requests, ledger verifies",
            f.zero_loss.answered as f64,
            "requests",
            "every one recorded once",
            f.zero_loss.holds(),
        ),
    ]
}

fn us(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".to_owned()
    }
}

/// CPU microseconds per request by part, one row per path (from `/proc`, each run's CPU time
/// over the requests it answered, warm-up included; the median of the rounds).
fn cpu_table(cpu: &BTreeMap<String, super::cpu::PerRequest>) -> String {
    let mut parts: Vec<&String> = cpu.values().flat_map(|c| c.0.keys()).collect();
    parts.sort();
    parts.dedup();
    if parts.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nCPU per request (µs) by process, from `/proc` (each run's CPU time over the requests it \
         answered; medians of the rounds). `proxy` is `gatehouse proxy` on its own; `evidence` \
         is the `gatehouse up` process (the evidence service, with the approval service, the \
         issuers, its own idle proxy and, on the sandbox, the API server); `upstream` the \
         control plane's processes; `nginx` its master and workers:\n\n| path |",
    );
    for part in &parts {
        out.push_str(&format!(" {part} |"));
    }
    out.push_str(" total |\n|---|");
    out.push_str(&"---:|".repeat(parts.len() + 1));
    out.push('\n');
    for (path, per) in cpu {
        out.push_str(&format!("| {path} |"));
        for part in &parts {
            out.push_str(&format!(
                " {} |",
                us(per.0.get(*part).copied().unwrap_or(0.0))
            ));
        }
        out.push_str(&format!(" {} |\n", us(per.total())));
    }
    out
}

/// The Markdown page.
pub fn markdown(r: &Report<'_>) -> String {
    let f = r.figures;
    let mut out = String::new();
    out.push_str(&format!(
        "Measured {} at commit `{}` on {} CPUs ({}); load average before {:.2} / {:.2} / {:.2}, after {:.2} / {:.2} / {:.2}. Each comparison ran {} rounds in alternation of {} s each; figures are medians of the rounds.\n\n",
        r.date,
        r.commit,
        r.machine.cpus,
        r.machine.model,
        r.load_average_before[0],
        r.load_average_before[1],
        r.load_average_before[2],
        r.load_average_after[0],
        r.load_average_after[1],
        r.load_average_after[2],
        r.parameters.rounds,
        r.parameters.seconds,
    ));
    out.push_str(&format!(
        "Small GET (a ConfigMap) at {} requests/s on {} keep-alive TLS connections, latency corrected for coordinated omission (µs):\n\n",
        r.parameters.rate, r.parameters.connections
    ));
    out.push_str("| path | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for name in ["direct", "nginx", "gatehouse"] {
        let p = f.proxy.latency.get(name).copied().unwrap_or_default();
        let added = match name {
            "nginx" => Some(f.proxy.added_nginx),
            "gatehouse" => Some(f.proxy.added_gatehouse),
            _ => None,
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            us(p.p50),
            us(p.p99),
            us(p.p999),
            added.map_or("".into(), |a| us(a.p50)),
            added.map_or("".into(), |a| us(a.p99)),
            added.map_or("".into(), |a| us(a.p999)),
        ));
    }
    out.push_str(&cpu_table(&f.proxy.cpu_per_request));
    out.push_str(&format!(
        "\nSaturation on {} connections: nginx {:.0} requests/s, Gatehouse {:.0} requests/s (Gatehouse ÷ nginx = {:.2}, median of the rounds' ratios).\n\n",
        r.parameters.saturation_connections,
        f.proxy.saturation_rps.get("nginx").copied().unwrap_or(f64::NAN),
        f.proxy.saturation_rps.get("gatehouse").copied().unwrap_or(f64::NAN),
        f.proxy.saturation_ratio
    ));
    for l in &f.proxy.fractions {
        let fraction = l.fraction_of_nginx_saturation.unwrap_or_default();
        out.push_str(&format!(
            "At {:.0}% of nginx's saturation ({:.0} requests/s, same connections){}:\n\n",
            fraction * 100.0,
            l.rate,
            if l.latency.contains_key("gatehouse") {
                ""
            } else {
                "; Gatehouse not measured, the rate is past its own saturation"
            }
        ));
        out.push_str("| path | p50 | p99 | added p50 | added p99 |\n|---|---:|---:|---:|---:|\n");
        for (name, p) in &l.latency {
            let added = l.added.get(name);
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} |\n",
                us(p.p50),
                us(p.p99),
                added.map_or("".into(), |a| us(a.p50)),
                added.map_or("".into(), |a| us(a.p99)),
            ));
        }
        out.push_str(&cpu_table(&l.cpu));
        out.push('\n');
    }
    for list in [&f.proxy.list_small, &f.proxy.list] {
        let direct = list.latency.get("direct").copied().unwrap_or_default();
        let gatehouse = list.latency.get("gatehouse").copied().unwrap_or_default();
        out.push_str(&format!(
            "`GET {}`: {} pods, {:.2} MB as Gatehouse sends it (passwords masked: {}), at {} requests/s: direct p50 {:.1} ms / p99 {:.1} ms, Gatehouse p50 {:.1} ms / p99 {:.1} ms, added p50 {:.1} ms / p99 {:.1} ms.\n\n",
            list.path,
            list.pods,
            list.bytes as f64 / 1e6,
            if list.masked { "yes" } else { "NO" },
            r.parameters.list_rate,
            direct.p50 / 1000.0,
            direct.p99 / 1000.0,
            gatehouse.p50 / 1000.0,
            gatehouse.p99 / 1000.0,
            list.added.p50 / 1000.0,
            list.added.p99 / 1000.0,
        ));
    }
    out.push_str(&format!(
        "Held requests ({}): decision → forward p50 {:.1} ms, p99 {:.1} ms (from the `approval.decided` event to the `request.forwarded` event, which is stamped once the API server answered).\n\n",
        f.proxy.holds, f.hold_decision_to_forward_ms.p50, f.hold_decision_to_forward_ms.p99
    ));
    out.push_str(&format!(
        "Ledger alone ({} events of about {:.0} bytes): ingest {:.0} events/s with an fsync per group commit of {}, export {:.1} MB/s of events, bundle verify {:.0} events/s on one thread; `ledger verify` {:.0} events/s on one core, {:.0} on {} cores.\n\n",
        f.evidence.events,
        f.evidence.event_bytes as f64 / f.evidence.events.max(1) as f64,
        f.evidence.ingest_events_per_s,
        f.evidence.batch,
        f.evidence.export_mb_per_s,
        f.evidence.verify_events_per_s,
        f.evidence.ledger_verify_events_per_s_one_core,
        f.evidence.ledger_verify_events_per_s_all_cores,
        f.evidence.cores,
    ));
    let z = &f.zero_loss;
    out.push_str(&format!(
        "Zero loss: {} requests answered through Gatehouse ({} unanswered); the ledger holds {} `request.received` and {} `response.completed`; `gatehouse ledger verify`: {}.\n\n",
        z.answered,
        z.unanswered,
        z.request_received,
        z.response_completed,
        if z.ledger_verified { "passed" } else { "FAILED" },
    ));
    out.push_str("| goal | figure | target | met |\n|---|---:|---|---|\n");
    for g in &r.goals {
        let figure = if g.unit == "×" {
            format!("{:.2}", g.figure)
        } else if g.unit == "ms" {
            format!("{:.1} ms", g.figure)
        } else {
            format!("{:.0} {}", g.figure, g.unit)
        };
        out.push_str(&format!(
            "| {} | {figure} | {} | {} |\n",
            g.measure,
            g.goal,
            if g.met { "yes" } else { "**no**" }
        ));
    }
    out
}

/// One upstream's run: what was asked, what was measured, the load averages around it.
#[derive(Debug)]
pub struct Run {
    pub options: Options,
    pub figures: Figures,
    pub before: [f64; 3],
    pub after: [f64; 3],
}

/// Writes `results.md` and `results.json` (one report per upstream) into `dir` and returns the
/// Markdown.
pub fn write(dir: &Path, runs: &[Run]) -> Result<String> {
    let reports: Vec<Report<'_>> = runs
        .iter()
        .map(|run| report(&run.options, &run.figures, run.before, run.after))
        .collect();
    let mut md = String::new();
    for report in &reports {
        md.push_str(&format!("## Upstream: {}\n\n", report.upstream));
        md.push_str(&markdown(report));
        md.push('\n');
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.md"), &md)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "format": "gatehouse.bench.v2",
            "runs": reports,
        }))?,
    )?;
    Ok(md)
}

fn report<'a>(
    options: &Options,
    figures: &'a Figures,
    before: [f64; 3],
    after: [f64; 3],
) -> Report<'a> {
    Report {
        upstream: figures.upstream.describe().to_owned(),
        date: gatehouse_events::envelope::now_rfc3339(),
        commit: commit(),
        machine: machine(),
        load_average_before: before,
        load_average_after: after,
        parameters: Parameters {
            rounds: options.rounds,
            seconds: options.seconds,
            rate: options.rate,
            connections: options.connections,
            saturation_connections: options.saturation_connections,
            pods: options.pods,
            list_rate: options.list_rate,
            holds: options.holds,
            ledger_events: options.ledger_events,
        },
        goals: goals(figures),
        figures,
    }
}
