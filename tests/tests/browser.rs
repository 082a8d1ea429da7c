//! The auditor console and the approver page in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/browser/e2e.mjs`), against the `gatehouse up` stack on the local
//! control plane, with the Slack fake as the approvers' chat.
//!
//! - The auditor signs in (authorization code flow with PKCE at the demo issuer), searches,
//!   opens an event and sees its proof verified in the browser, replays a session, and
//!   downloads a bundle, which `gatehouse verify` and the independent verifier
//!   (`tests/independent/verify_bundle.py`) accept here.
//! - A held delete of a Deployment in prod (a `step_up` rule) is posted to Slack with a link,
//!   not buttons. Bob, signed in at the issuer an hour ago, opens the link: the page says his
//!   sign-in is too old; he signs in again (the issuer asks for his password), approves, and
//!   kubectl's delete completes. His vote records the sign-in.
//! - Dave, who is neither an auditor nor an approver, is refused by both pages with a page that
//!   says so; every console view, refused ones included, is an `audit.accessed` event.
//!
//! Needs `tests/browser/install` (Chromium and playwright-core), which `.ci/run` runs.
//! `SCREENSHOT_DIR=…` keeps the screenshots (the README's come from here).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use gatehouse::bundle_cmd::{VerifyArgs, verify};
use gatehouse_evidence::Ledger;
use gatehouse_sandbox::chat::slack::FakeSlack;
use gatehouse_tests::{BedOptions, DEADLINE, TestBed, eventually};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Result = anyhow::Result<()>;

const SLACK_CHANNEL: &str = "C0GATEHOUSE";
/// The whole browser run: sign-ins, a bundle download, the replay player.
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The hold's link in its Slack message: the only button a step-up hold gets.
fn page_link(blocks: &serde_json::Value) -> Option<String> {
    blocks
        .as_array()?
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find_map(|e| e["url"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_and_approvers_use_their_pages_in_chromium() -> Result {
    let browser = browser_dir();
    anyhow::ensure!(
        browser.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "run tests/browser/install first (Chromium and playwright-core)"
    );
    let slack = FakeSlack::start("xoxb-gatehouse-test", "slack-signing-secret").await;
    let secrets = tempfile::tempdir()?;
    let secret = |name: &str, value: &str| -> anyhow::Result<String> {
        let path = secrets.path().join(name);
        std::fs::write(&path, value)?;
        Ok(serde_json::to_string(&path.display().to_string())?)
    };
    let channels = format!(
        "slack:\n  channel: {SLACK_CHANNEL}\n  bot_token_file: {}\n  signing_secret_file: {}\n  api_url: {}\n",
        secret("slack-token", "xoxb-gatehouse-test")?,
        secret("slack-secret", "slack-signing-secret")?,
        slack.api_url(),
    );
    let bed = TestBed::start_with(BedOptions {
        approval_channels: channels,
        ..BedOptions::default()
    })
    .await?;
    let stack = bed.stack();

    // Something to audit: a list, and a session to replay.
    let listed = bed
        .kubectl("ci-deployer", &["get", "configmaps", "-n", "apps"])
        .await?;
    anyhow::ensure!(listed.success, "kubectl get: {}", listed.stderr);
    let exec = bed
        .kubectl(
            "ci-deployer",
            &["exec", "web", "-n", "apps", "--", "echo", "hello"],
        )
        .await?;
    let session_id = {
        let data_dir = stack.dir.clone();
        eventually(
            "the session in the ledger, under a checkpoint",
            DEADLINE,
            || {
                let data_dir = data_dir.clone();
                async move {
                    let ledger = Ledger::open_read_only(&data_dir).ok()?;
                    let (size, _) = ledger.latest_checkpoint().ok()??;
                    let mut session = None;
                    for stored in ledger.entries(0).ok()? {
                        let stored = stored.ok()?;
                        let index = stored.key?;
                        let entry =
                            gatehouse_evidence::entry::Entry::decode(&stored.encoding).ok()?;
                        let event: serde_json::Value = serde_json::from_slice(&entry.event).ok()?;
                        if event["type"] == "dev.gatehouse.session.ended.v1" && index < size {
                            session = event["data"]["session_id"].as_str().map(str::to_owned);
                        }
                    }
                    session
                }
            },
        )
        .await
        .with_context(|| format!("kubectl exec: {}{}", exec.stdout, exec.stderr))?
    };

    // A held delete, posted to Slack with a link to its page.
    let kubectl = bed.kubectl_spawn(
        "ci-deployer",
        &["delete", "deployment", "payments", "-n", "prod"],
    )?;
    let link = eventually("the hold's page linked from Slack", DEADLINE, || async {
        slack
            .messages()
            .into_iter()
            .filter(|m| m.thread_ts.is_none())
            .find_map(|m| page_link(&m.blocks))
    })
    .await?;
    let message = slack
        .messages()
        .into_iter()
        .find(|m| page_link(&m.blocks).is_some())
        .context("the hold's message")?;
    let blocks = message.blocks.to_string();
    assert!(
        !blocks.contains("gatehouse_approve") && !blocks.contains("gatehouse_deny"),
        "a step-up hold offers chat buttons that vote: {blocks}"
    );

    let downloads = tempfile::tempdir()?;
    let mut node = tokio::process::Command::new("node")
        .arg(browser.join("e2e.mjs"))
        .current_dir(&browser)
        .env("CONSOLE_URL", stack_auditor_url(&stack.dir)?)
        .env("HOLD_URL", &link)
        .env("SESSION_ID", &session_id)
        .env(
            "PASSWORDS",
            stack
                .dir
                .join("issuer")
                .join(gatehouse_up::demo::PASSWORDS_FILE),
        )
        .env("DOWNLOADS", downloads.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node tests/browser/e2e.mjs")?;
    let mut stdin = node.stdin.take().context("node's stdin")?;
    let mut lines = BufReader::new(node.stdout.take().context("node's stdout")?).lines();
    let run = async {
        // The script asks for Bob's issuer sign-in to be made an hour old, then goes on.
        while let Some(line) = lines.next_line().await? {
            println!("browser: {line}");
            if line.trim() == "BACKDATE" {
                stack.issuer.backdate_sign_ins(Duration::from_secs(3600));
                stdin.write_all(b"OK\n").await?;
                stdin.flush().await?;
            }
        }
        anyhow::Ok(node.wait().await?)
    };
    let status = tokio::time::timeout(BROWSER_DEADLINE, run)
        .await
        .context("the browser run took too long")??;
    anyhow::ensure!(status.success(), "the browser run failed: {status}");

    // The approved delete went through.
    let out = tokio::time::timeout(DEADLINE, kubectl.wait_with_output())
        .await
        .context("kubectl's delete was not released")??;
    anyhow::ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains("deployment.apps \"payments\" deleted"),
        "kubectl delete: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The bundle the console downloaded verifies offline.
    let bundle = downloads.path().join("bundle.tar.gz");
    anyhow::ensure!(bundle.is_file(), "the console saved no bundle");
    let vkey = stack.dir.join("checkpoint").join("checkpoint.vkey");
    let code = verify(VerifyArgs {
        bundle: bundle.clone(),
        key: Some(vkey.display().to_string()),
        trusted: None,
        trusted_key: None,
        json: true,
        quiet: true,
        witnesses: Vec::new(),
        min_witnesses: 0,
    })?;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    // And so does the verifier written from schemas/ledger.md and schemas/bundle.md alone.
    let independent = std::process::Command::new(gatehouse_tests::python()?)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("independent/verify_bundle.py"))
        .arg(&bundle)
        .arg(&vkey)
        .output()?;
    assert!(
        independent.status.success(),
        "{}{}",
        String::from_utf8_lossy(&independent.stdout),
        String::from_utf8_lossy(&independent.stderr)
    );

    let finished = bed.finish().await?;
    // Bob's vote counted from the page, after a fresh sign-in; the stale one did not.
    let votes: Vec<&serde_json::Value> = finished
        .events
        .iter()
        .filter(|e| e.name() == "approval.vote")
        .map(|e| &e.value["data"])
        .collect();
    let counted: Vec<_> = votes.iter().filter(|v| v["counted"] == true).collect();
    assert_eq!(counted.len(), 1, "{votes:#?}");
    let vote = counted[0];
    assert_eq!(vote["approver"], "bob@example.com");
    assert_eq!(vote["via"], "page");
    assert_eq!(vote["authentication"]["method"], "sign-in");
    assert!(
        vote["authentication"]["amr"]
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m == "pwd")),
        "{vote}"
    );
    // Every console view was recorded, the refused one too.
    let views: Vec<(String, u64)> = finished
        .events
        .iter()
        .filter(|e| e.name() == "audit.accessed" && e.value["data"]["action"] == "console")
        .map(|e| {
            (
                e.value["data"]["auditor"].as_str().unwrap_or("").to_owned(),
                e.value["data"]["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(
        views.contains(&(gatehouse_up::demo::AUDITOR.to_owned(), 200)),
        "{views:?}"
    );
    assert!(
        views.contains(&("dave@example.com".to_owned(), 403)),
        "{views:?}"
    );
    Ok(())
}

fn stack_auditor_url(dir: &Path) -> anyhow::Result<String> {
    let url = std::fs::read_to_string(dir.join("auditor.url"))?;
    let url = url.trim();
    if url.is_empty() {
        bail!("no auditor API");
    }
    Ok(url.to_owned())
}
