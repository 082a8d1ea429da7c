//! `gatehouse-conformance`: runs Kubernetes' e2e suite (a focus of it) against the local control
//! plane twice, directly as its admin and through Gatehouse as the e2e identity, compares the
//! two, checks the evidence the Gatehouse run left, and writes `results.md` and `results.json`.
//! `tests/conformance/run` builds `e2e.test` and this binary and calls it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use gatehouse_evidence::{Ledger, verify};
use gatehouse_tests::conformance::{self, Comparison, PRINCIPAL};
use gatehouse_up::{Stack, StackOptions};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-conformance",
    about = "Kubernetes conformance tests directly and through Gatehouse"
)]
struct Cli {
    /// The e2e.test binary, built from the control plane's release.
    #[arg(long)]
    e2e: PathBuf,
    /// The Kubernetes release both were built from (for the results).
    #[arg(long)]
    release: String,
    /// The Gatehouse commit under test (for the results).
    #[arg(long, default_value = "")]
    commit: String,
    /// Working directory (cleared first): the stack, the control plane, the ginkgo reports.
    #[arg(long)]
    dir: PathBuf,
    /// Where results.md and results.json go.
    #[arg(long)]
    out: PathBuf,
    /// Ginkgo's focus (a regular expression over test names).
    #[arg(long)]
    focus: String,
    /// Ginkgo's skip.
    #[arg(long, default_value = "")]
    skip: String,
    /// Ginkgo's time limit for each run.
    #[arg(long, default_value = "2h")]
    timeout: String,
    /// Run nothing: compare the reports and check the evidence a finished run left in `dir`.
    #[arg(long)]
    report_only: bool,
}

fn main() -> ExitCode {
    gatehouse_tests::init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gatehouse-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One run of the suite.
struct Run {
    outcomes: std::collections::BTreeMap<String, conformance::Outcome>,
    seconds: f64,
    exit: Option<i32>,
}

async fn run(cli: Cli) -> Result<bool> {
    if !cli.report_only {
        run_both(&cli).await?;
    }
    report(&cli)
}

/// Starts the stack, runs the suite directly and through Gatehouse, and stops the stack (so the
/// ledger has every event and the API server's logs are complete).
async fn run_both(cli: &Cli) -> Result<()> {
    let dir = &cli.dir;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let config = dir.join("stack").join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("identities.yaml"), conformance::IDENTITIES_YAML)?;
    std::fs::write(config.join("policy.yaml"), conformance::POLICY_YAML)?;

    eprintln!("conformance: starting the control plane and Gatehouse in front of it");
    let options = StackOptions {
        seed_demo: false,
        // The chunking test waits for its continue token to expire, which takes the API
        // server's compaction interval (5 minutes by default) and up to twice that.
        etcd_compaction_interval: Some(std::time::Duration::from_secs(60)),
        ..StackOptions::default()
    };
    let stack = Stack::start(&dir.join("stack"), &options).await?;
    let plane = stack
        .cluster
        .control_plane()
        .context("the stack runs no local control plane")?;
    plane.apply(conformance::RBAC_YAML).await?;
    plane
        .wait_for_access(
            PRINCIPAL,
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
        )
        .await?;
    let admin = dir.join("cluster-admin.kubeconfig");
    let admin_text = stack
        .cluster
        .admin_kubeconfig(&stack.ca_pem, "default")
        .context("no admin credential for the control plane")?;
    gatehouse::kubeconfig::write_private(&admin, &admin_text)?;
    let through = stack.demo_kubeconfig(PRINCIPAL, "default")?;

    let runs = async {
        run_suite(cli, "direct", &admin).await?;
        run_suite(cli, "gatehouse", &through).await
    }
    .await;
    eprintln!("conformance: stopping the stack");
    stack.stop().await?;
    runs
}

/// Compares the two runs' reports, checks the evidence, and writes the results.
fn report(cli: &Cli) -> Result<bool> {
    let dir = &cli.dir;
    let direct = read_run(dir, "direct")?;
    let gatehouse = read_run(dir, "gatehouse")?;
    let proxy_user = format!(
        "system:serviceaccount:{}:{}",
        gatehouse_controlplane::PROXY_NAMESPACE,
        gatehouse_controlplane::PROXY_SERVICE_ACCOUNT
    );
    // The stack keeps the control plane in `controlplane/` (gatehouse_up::stack).
    let plane = dir.join("stack").join("controlplane");
    let evidence = check_evidence(
        &dir.join("stack"),
        &gatehouse_controlplane::ControlPlane::audit_log_in(&plane),
        &gatehouse_controlplane::ControlPlane::apiserver_log_in(&plane),
        &proxy_user,
    )?;
    let comparison = conformance::compare(&direct.outcomes, &gatehouse.outcomes);

    let results = json!({
        "release": cli.release,
        "commit": cli.commit,
        "focus": cli.focus,
        "skip": cli.skip,
        "direct": run_json(&direct),
        "gatehouse": run_json(&gatehouse),
        "comparison": comparison,
        "evidence": evidence,
    });
    std::fs::create_dir_all(&cli.out)?;
    std::fs::write(
        cli.out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(
        cli.out.join("results.md"),
        markdown(cli, &direct, &gatehouse, &comparison, &evidence),
    )?;
    eprintln!(
        "conformance: {} of {} pass through Gatehouse, {} pass directly; evidence {}; results in {}",
        comparison.passed_both,
        comparison.passed_directly,
        comparison.passed_directly,
        if evidence["holds"] == true {
            "holds"
        } else {
            "DOES NOT HOLD"
        },
        cli.out.display()
    );
    Ok(comparison
        .only_directly
        .iter()
        .all(|d| d.by_design.is_some())
        && evidence["holds"] == true)
}

fn read_run(dir: &Path, name: &str) -> Result<Run> {
    let report = dir.join(name).join("ginkgo.json");
    let bytes = std::fs::read(&report).with_context(|| {
        format!(
            "the {name} run wrote no report {}; see {}",
            report.display(),
            dir.join(name).join("e2e.log").display()
        )
    })?;
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join(name).join("run.json"))?)?;
    Ok(Run {
        outcomes: conformance::read_report(&bytes)?,
        seconds: meta["seconds"].as_f64().unwrap_or_default(),
        exit: meta["exit"].as_i64().map(|c| c as i32),
    })
}

async fn run_suite(cli: &Cli, name: &str, kubeconfig: &Path) -> Result<()> {
    let dir = cli.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let report = dir.join("ginkgo.json");
    let log = dir.join("e2e.log");
    eprintln!(
        "conformance: running the suite {} (log: {})",
        if name == "direct" {
            "directly against the API server"
        } else {
            "through Gatehouse"
        },
        log.display()
    );
    let started = Instant::now();
    let status = tokio::process::Command::new(&cli.e2e)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--provider=skeleton")
        .arg(format!("--report-dir={}", dir.display()))
        .arg(format!("--ginkgo.focus={}", cli.focus))
        .arg(format!("--ginkgo.skip={}", cli.skip))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg(format!("--ginkgo.timeout={}", cli.timeout))
        .arg("--ginkgo.no-color")
        .arg("--ginkgo.v")
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join("e2e.stderr"))?)
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("running {}", cli.e2e.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(
        dir.join("run.json"),
        json!({"seconds": seconds, "exit": status.code()}).to_string(),
    )?;
    let run = read_run(&cli.dir, name)?;
    eprintln!(
        "conformance: {name}: {} passed of {} run in {:.0} s ({status})",
        run.outcomes.values().filter(|o| o.passed()).count(),
        run.outcomes.values().filter(|o| o.ran()).count(),
        seconds
    );
    Ok(())
}

/// A run in `results.json`: the tests the focus ran (the thousands it skipped only counted).
fn run_json(run: &Run) -> Value {
    let ran: BTreeMap<&String, &conformance::Outcome> =
        run.outcomes.iter().filter(|(_, o)| o.ran()).collect();
    json!({
        "seconds": run.seconds,
        "exit": run.exit,
        "ran": ran.len(),
        "passed": run.outcomes.values().filter(|o| o.passed()).count(),
        "skipped": run.outcomes.len() - ran.len(),
        "tests": ran,
    })
}

/// After the Gatehouse run: the ledger verifies, holds a `request.received` for every request
/// the API server audited from the proxy (and no more), and no Secret value the suite sent or
/// read appears in any event.
fn check_evidence(
    stack_dir: &Path,
    audit_log: &Path,
    apiserver_log: &Path,
    proxy_user: &str,
) -> Result<Value> {
    let ledger = Ledger::open_read_only(stack_dir).context("opening the ledger")?;
    let verified = match verify::verify(&ledger)? {
        Ok(v) => v,
        Err(broken) => return Ok(json!({"holds": false, "ledger_verify": broken.to_string()})),
    };
    let mut events = Vec::with_capacity(verified.entries as usize);
    let mut counts = BTreeMap::<String, u64>::new();
    let (mut received, mut forwarded, mut refused) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut secret_requests = BTreeSet::new();
    let mut scan = ledger.scan_entries(0)?;
    let mut batch = Vec::new();
    loop {
        batch.clear();
        scan.next_batch(4096, &mut batch)?;
        if batch.is_empty() {
            break;
        }
        for stored in &batch {
            let entry = gatehouse_proof::entry::EntryRef::decode(&stored.encoding)?;
            let value: Value = serde_json::from_slice(entry.event)?;
            let kind = value["type"].as_str().unwrap_or_default();
            let kind = kind
                .strip_prefix("dev.gatehouse.")
                .and_then(|k| k.strip_suffix(".v1"))
                .unwrap_or(kind)
                .to_owned();
            let subject = value["subject"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "request.received" => {
                    if value["data"]["request"]["resource"] == "secrets" {
                        secret_requests.insert(subject.clone());
                    }
                    received.insert(subject.clone());
                }
                "request.forwarded" => {
                    forwarded.insert(subject.clone());
                }
                "request.denied" => {
                    refused.insert(subject.clone());
                }
                _ => {}
            }
            *counts.entry(kind.clone()).or_default() += 1;
            // A body recorded as base64 (protobuf, CBOR) is searched decoded as well.
            let mut bytes = entry.event.to_vec();
            if value["data"]["content"]["encoding"] == "base64" {
                use base64::Engine;
                if let Some(decoded) = value["data"]["content"]["data"]
                    .as_str()
                    .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                {
                    bytes.push(b'\n');
                    bytes.extend_from_slice(&decoded);
                }
            }
            events.push(conformance::LedgerEvent {
                kind,
                subject,
                bytes,
            });
        }
    }
    let audit = gatehouse_controlplane::audit::read(audit_log)?;
    let own = |id: &str| {
        id.starts_with(gatehouse_proxy::forward::CREDENTIAL_CHECK_AUDIT_PREFIX)
            || id.ends_with(gatehouse_proxy::forward::PREVIEW_READ_AUDIT_SUFFIX)
            || id.ends_with(gatehouse_proxy::forward::PREVIEW_DRY_RUN_AUDIT_SUFFIX)
    };
    // What the audit log could not take, the apiserver printed to its own log.
    let unwritten: BTreeSet<String> = gatehouse_controlplane::audit::read_unwritten(apiserver_log)?
        .into_iter()
        .filter(|e| e.user == proxy_user && !own(&e.audit_id))
        .map(|e| e.audit_id)
        .collect();
    let audited: BTreeSet<String> = audit
        .iter()
        .filter(|e| e.user.username == proxy_user && !own(&e.audit_id))
        .map(|e| e.audit_id.clone())
        .chain(unwritten.iter().cloned())
        .collect();
    // Every request received is forwarded (and then audited by the API server) or refused by
    // Gatehouse itself, and the API server saw nothing from the proxy that was not forwarded.
    let sample = |ids: Vec<&String>| ids.into_iter().take(20).cloned().collect::<Vec<_>>();
    let forwarded_not_audited = sample(forwarded.difference(&audited).collect());
    let audited_not_forwarded = sample(audited.difference(&forwarded).collect());
    let neither = sample(
        received
            .iter()
            .filter(|id| !forwarded.contains(*id) && !refused.contains(*id))
            .collect(),
    );
    let secrets = conformance::secret_values(&audit, proxy_user);
    let plain = conformance::plain_values(&audit, proxy_user);
    let (leaks, searched_everywhere) =
        conformance::find_leaks(&events, &secret_requests, &secrets, &plain);
    let holds = forwarded_not_audited.is_empty()
        && audited_not_forwarded.is_empty()
        && neither.is_empty()
        && leaks.is_empty();
    Ok(json!({
        "holds": holds,
        "ledger_verify": format!("{} entries verified, root {}", verified.entries,
            verified.merkle_root.map(hex_root).unwrap_or_default()),
        "events_by_type": counts,
        "request_received": received.len(),
        "request_forwarded": forwarded.len(),
        "request_refused_by_gatehouse": refused.len(),
        "apiserver_requests_from_proxy": audited.len(),
        "apiserver_requests_only_in_its_log": unwritten.len(),
        "forwarded_not_audited": forwarded_not_audited,
        "audited_not_forwarded": audited_not_forwarded,
        "received_neither_forwarded_nor_refused": neither,
        "secret_requests": secret_requests.len(),
        "secret_values_checked": secrets.len(),
        "secret_values_searched_in_whole_ledger": searched_everywhere,
        "secret_values_in_ledger": leaks,
    }))
}

fn hex_root(root: [u8; 32]) -> String {
    root.iter().map(|b| format!("{b:02x}")).collect()
}

fn markdown(
    cli: &Cli,
    direct: &Run,
    gatehouse: &Run,
    comparison: &Comparison,
    evidence: &Value,
) -> String {
    let mut md = String::new();
    let mut line = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    line("# Kubernetes conformance through Gatehouse".into());
    line(String::new());
    line(format!(
        "Written by `tests/conformance/run`. Kubernetes {} (`e2e.test` and the control plane \
         built from the same module), Gatehouse commit `{}`.",
        cli.release, cli.commit
    ));
    line(String::new());
    line(format!("- focus: `{}`", cli.focus));
    line(format!("- skip: `{}`", cli.skip));
    let by_design = comparison
        .only_directly
        .iter()
        .filter(|d| d.by_design.is_some())
        .count();
    line(format!(
        "- **{} of {} pass through Gatehouse; {} pass directly** ({} ran directly). Of the {} \
         that pass only directly, {} fail by design and {} are gateway bugs.",
        comparison.passed_both,
        comparison.passed_directly,
        comparison.passed_directly,
        comparison.ran_directly,
        comparison.only_directly.len(),
        by_design,
        comparison.only_directly.len() - by_design
    ));
    line(format!(
        "- direct run: {:.0} s, {} passed; through Gatehouse: {:.0} s, {} passed.",
        direct.seconds,
        direct.outcomes.values().filter(|o| o.passed()).count(),
        gatehouse.seconds,
        gatehouse.outcomes.values().filter(|o| o.passed()).count(),
    ));
    line(String::new());
    line("## Passed directly, not through Gatehouse".into());
    line(String::new());
    if comparison.only_directly.is_empty() {
        line("None.".into());
    } else {
        line("| test | through Gatehouse | ginkgo's reason | by design? |".into());
        line("|---|---|---|---|".into());
        for d in &comparison.only_directly {
            let g = d.gatehouse.as_ref();
            line(format!(
                "| {} | {} | {} | {} |",
                cell(&d.test),
                g.map(|o| o.state.as_str()).unwrap_or("not run"),
                cell(g.and_then(|o| o.failure.as_deref()).unwrap_or("")),
                d.by_design
                    .map(|why| format!("yes: {}", cell(why)))
                    .unwrap_or_else(|| "**no: a gateway bug**".into())
            ));
        }
    }
    line(String::new());
    line("## Failed in both runs".into());
    line(String::new());
    line(
        "Directly against the API server too, so they are not counted: the local control \
          plane's nodes are kwok's, which run no containers (a test that needs a pod to serve, \
          a webhook or an aggregated API server, cannot pass), and no storage provisioner runs."
            .into(),
    );
    line(String::new());
    if comparison.failed_both.is_empty() {
        line("None.".into());
    } else {
        line("| test | direct reason |".into());
        line("|---|---|".into());
        for d in &comparison.failed_both {
            line(format!(
                "| {} | {} |",
                cell(&d.test),
                cell(d.direct.failure.as_deref().unwrap_or(&d.direct.state))
            ));
        }
    }
    if !comparison.only_through_gatehouse.is_empty() {
        line(String::new());
        line("## Passed through Gatehouse, not directly".into());
        line(String::new());
        for d in &comparison.only_through_gatehouse {
            line(format!(
                "- {} (directly: {})",
                d.test,
                cell(d.direct.failure.as_deref().unwrap_or(&d.direct.state))
            ));
        }
    }
    line(String::new());
    line("## Evidence after the run".into());
    line(String::new());
    line(format!(
        "- `ledger verify`: {}",
        evidence["ledger_verify"].as_str().unwrap_or("")
    ));
    let count = |key: &str| evidence[key].as_array().map_or(0, Vec::len);
    line(format!(
        "- `request.received` in the ledger: {}, of which {} forwarded and {} refused by \
         Gatehouse itself (`request.denied`); requests the API server saw from the proxy: {}. \
         Forwarded and not seen by the API server: {}; seen and not forwarded: {}; received and \
         neither forwarded nor refused: {}",
        evidence["request_received"],
        evidence["request_forwarded"],
        evidence["request_refused_by_gatehouse"],
        evidence["apiserver_requests_from_proxy"],
        count("forwarded_not_audited"),
        count("audited_not_forwarded"),
        count("received_neither_forwarded_nor_refused"),
    ));
    if evidence["apiserver_requests_only_in_its_log"].as_u64() > Some(0) {
        line(format!(
            "  - of the API server's, {} are not in its audit log but in its own log: its audit \
             backend could not encode them (`Error in audit plugin 'log' … MarshalJSON for type \
             *runtime.Unknown`, server-side applies of custom resources with YAML bodies, directly \
             as well) and printed them as `AUDIT:` lines instead",
            evidence["apiserver_requests_only_in_its_log"]
        ));
    }
    line(format!(
        "- Secret values the suite sent or read through Gatehouse (from the API server's audit \
         bodies): {}; searched for, plain, JSON-escaped and base64, in the events of the {} \
         requests on Secrets, and {} of them (8 bytes or more, never sent in the clear in \
         another object) in every event; found: {}",
        evidence["secret_values_checked"],
        evidence["secret_requests"],
        evidence["secret_values_searched_in_whole_ledger"],
        count("secret_values_in_ledger")
    ));
    line(format!("- events by type: {}", evidence["events_by_type"]));
    line(format!(
        "- evidence holds: **{}**",
        if evidence["holds"] == true {
            "yes"
        } else {
            "no"
        }
    ));
    line(String::new());
    line("## Every test".into());
    line(String::new());
    line("| test | direct | s | through Gatehouse | s |".into());
    line("|---|---|---|---|---|".into());
    for (test, d) in direct.outcomes.iter().filter(|(_, o)| o.ran()) {
        let g = gatehouse.outcomes.get(test);
        line(format!(
            "| {} | {} | {:.1} | {} | {:.1} |",
            cell(test),
            d.state,
            d.seconds,
            g.map_or("not run", |o| o.state.as_str()),
            g.map_or(0.0, |o| o.seconds)
        ));
    }
    md
}

/// Text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
