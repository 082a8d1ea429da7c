//! Approvals through chat, end to end: a held kubectl request is posted to Slack, Teams and
//! Discord (local fakes speaking the platforms' wire formats, signatures included) and decided
//! by votes cast there; also several proxy and approval replicas sharing one hold.

use std::path::Path;

use gatehouse_sandbox::chat::discord::FakeDiscord;
use gatehouse_sandbox::chat::slack::FakeSlack;
use gatehouse_sandbox::chat::teams::{FakeTeams, TokenKey};
use gatehouse_tests::{BedOptions, DEADLINE, Event, TestBed, eventually};
use tokio_util::sync::CancellationToken;

type Result = anyhow::Result<()>;

const SLACK_CHANNEL: &str = "C0APPROVALS";
const DISCORD_CHANNEL: &str = "200000000000000001";
const TEAMS_APP: &str = "00000000-0000-0000-0000-00000000b07";

/// The three fakes and a test bed whose approval service posts to all of them.
struct ChatBed {
    bed: TestBed,
    slack: FakeSlack,
    teams: FakeTeams,
    discord: FakeDiscord,
    _secrets: tempfile::TempDir,
}

impl ChatBed {
    async fn start(config_files: Vec<(String, String)>) -> anyhow::Result<Self> {
        let slack = FakeSlack::start("xoxb-gatehouse-test", "slack-signing-secret").await;
        let teams = FakeTeams::start(TEAMS_APP, "teams-app-password").await;
        let discord = FakeDiscord::start("discord-bot-token").await;
        let secrets = tempfile::tempdir()?;
        let secret = |name: &str, value: &str| -> anyhow::Result<String> {
            let path = secrets.path().join(name);
            std::fs::write(&path, value)?;
            Ok(quoted(&path))
        };
        let channels = format!(
            "slack:\n  channel: {SLACK_CHANNEL}\n  bot_token_file: {}\n  signing_secret_file: {}\n  api_url: {}\n\
             teams:\n  app_id: \"{TEAMS_APP}\"\n  app_password_file: {}\n  service_url: {}\n  conversation_id: \"{}\"\n  token_url: {}\n  openid_metadata_url: {}\n  issuer: {}\n\
             discord:\n  application_id: \"{}\"\n  bot_token_file: {}\n  public_key: {}\n  channel_id: \"{DISCORD_CHANNEL}\"\n  api_url: {}\n",
            secret("slack-token", "xoxb-gatehouse-test")?,
            secret("slack-secret", "slack-signing-secret")?,
            slack.api_url(),
            secret("teams-password", "teams-app-password")?,
            teams.service_url(),
            teams.conversation_id(),
            teams.token_url(),
            teams.openid_metadata_url(),
            teams.issuer(),
            discord.application_id(),
            secret("discord-token", "discord-bot-token")?,
            discord.public_key_hex(),
            discord.api_url(),
        );
        let bed = TestBed::start_with(BedOptions {
            config_files,
            approval_channels: channels,
            ..BedOptions::default()
        })
        .await?;
        Ok(Self {
            bed,
            slack,
            teams,
            discord,
            _secrets: secrets,
        })
    }

    fn approval_url(&self) -> String {
        self.bed.stack().approval_url()
    }

    /// The Slack message of the one pending hold, and its approval id.
    async fn posted(&self) -> anyhow::Result<(String, String)> {
        let bob = self.bed.approvals_as("bob@example.com")?;
        let hold = eventually(
            "a hold posted to Slack, Teams and Discord",
            DEADLINE,
            || async {
                let hold = bob.list(false).await.ok()?.into_iter().next()?;
                let ts = top_level_posts(&self.slack).into_iter().next()?;
                let teams = !self.teams.activities().is_empty();
                let discord = !self.discord.calls().is_empty();
                (teams && discord).then_some((ts, hold.approval_id))
            },
        )
        .await?;
        Ok(hold)
    }
}

fn quoted(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// `ts` of every message posted at the top level of the channel (not thread replies).
fn top_level_posts(slack: &FakeSlack) -> Vec<String> {
    slack
        .messages()
        .into_iter()
        .filter(|m| m.thread_ts.is_none())
        .map(|m| m.ts)
        .collect()
}

fn of<'a>(events: &'a [Event], subject: &str, name: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.subject() == subject && e.name() == name)
        .collect()
}

/// Prod deletes need two approvals, from SRE or security.
fn policy_with_quorum_two() -> (String, String) {
    let text = gatehouse_up::demo::POLICY_YAML.replace(
        "      approver_groups: [sre]\n      quorum: 1\n",
        "      approver_groups: [sre, security]\n      quorum: 2\n",
    );
    assert_ne!(text, gatehouse_up::demo::POLICY_YAML);
    ("policy.yaml".into(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_button_approves_and_every_platform_shows_the_outcome() -> Result {
    let chat = ChatBed::start(vec![]).await?;
    let kubectl = chat
        .bed
        .kubectl_spawn("ci-deployer", &["delete", "pod", "api", "-n", "prod"])?;
    let (ts, approval_id) = chat.posted().await?;
    let message = &chat.slack.messages()[0];
    let text = message.blocks.to_string();
    for fact in [
        "ci-deployer",
        "alice@example.com",
        "prod",
        "api",
        "deployer-delete-prod",
    ] {
        assert!(
            text.contains(fact),
            "the Slack message lacks {fact}: {text}"
        );
    }

    let (status, _) = chat
        .slack
        .click(
            &chat.approval_url(),
            "U0BOB0001",
            SLACK_CHANNEL,
            &ts,
            "gatehouse_approve",
            &approval_id,
        )
        .await;
    assert_eq!(status, 200);
    let out = kubectl.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The message shows the outcome without buttons, and a thread reply says who decided.
    chat.slack
        .wait_for(
            |calls| {
                calls.iter().any(|c| {
                    c.method == "chat.postMessage"
                        && c.body.get("thread_ts").and_then(|t| t.as_str()) == Some(ts.as_str())
                        && c.body.to_string().contains("bob@example.com")
                })
            },
            DEADLINE,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let updated = eventually(
        "the Slack message to show the approval",
        DEADLINE,
        || async {
            let message = chat.slack.messages().into_iter().find(|m| m.ts == ts)?;
            let blocks = message.blocks.to_string();
            (blocks.contains("Approved by bob@example.com")
                && !blocks.contains("gatehouse_approve"))
            .then_some(blocks)
        },
    )
    .await?;
    assert!(updated.contains("Approved"), "{updated}");
    // Teams' card and Discord's message were refreshed too, their buttons gone.
    eventually("the Teams card to be updated", DEADLINE, || async {
        chat.teams
            .activities()
            .iter()
            .any(|a| {
                a.method == "PUT" && a.body.to_string().contains("Approved by bob@example.com")
            })
            .then_some(())
    })
    .await?;
    eventually("the Discord message to be edited", DEADLINE, || async {
        // Discord's markdown escapes the address; the outcome and the buttons' absence show.
        chat.discord
            .calls()
            .iter()
            .any(|c| {
                let body = c.body.to_string();
                c.method == "PATCH"
                    && body.contains("Approved by")
                    && !body.contains("gatehouse:approve:")
            })
            .then_some(())
    })
    .await?;

    let finished = chat.bed.finish().await?;
    let holds: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| e.name() == "request.held")
        .collect();
    let request_id = holds[0].subject().to_owned();
    let posted = of(&finished.events, &request_id, "approval.posted");
    let mut channels: Vec<String> = posted
        .iter()
        .map(|e| e.data()["channel"].as_str().unwrap_or("").to_owned())
        .collect();
    channels.sort();
    assert_eq!(channels, ["discord", "slack", "teams"]);
    let votes = of(&finished.events, &request_id, "approval.vote");
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0].data()["channel"], "slack");
    assert_eq!(votes[0].data()["via"], "button");
    assert_eq!(votes[0].data()["chat_user_id"], "U0BOB0001");
    assert_eq!(votes[0].data()["approver"], "bob@example.com");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reactions_make_a_quorum_of_two_and_strangers_and_owners_are_told_no() -> Result {
    let chat = ChatBed::start(vec![policy_with_quorum_two()]).await?;
    let kubectl = chat
        .bed
        .kubectl_spawn("ci-deployer", &["delete", "pod", "api", "-n", "prod"])?;
    let (ts, approval_id) = chat.posted().await?;
    let url = chat.approval_url();
    // alice owns ci-deployer: her approval is refused (four eyes), and she is told why.
    let (status, _) = chat
        .slack
        .react(
            &url,
            "U0ALICE01",
            SLACK_CHANNEL,
            &ts,
            "white_check_mark",
            true,
        )
        .await;
    assert_eq!(status, 200);
    chat.slack
        .wait_for(
            |calls| {
                calls.iter().any(|c| {
                    c.method == "chat.postEphemeral"
                        && c.body["user"] == "U0ALICE01"
                        && c.body.to_string().contains("you own ci-deployer")
                })
            },
            DEADLINE,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let (status, _) = chat
        .slack
        .react(
            &url,
            "U0CAROL01",
            SLACK_CHANNEL,
            &ts,
            "white_check_mark",
            true,
        )
        .await;
    assert_eq!(status, 200);
    // A stranger's reaction is refused, and told why, privately.
    let (status, _) = chat
        .slack
        .react(
            &url,
            "U0MALLORY",
            SLACK_CHANNEL,
            &ts,
            "white_check_mark",
            true,
        )
        .await;
    assert_eq!(status, 200);
    chat.slack
        .wait_for(
            |calls| {
                calls.iter().any(|c| {
                    c.method == "chat.postEphemeral"
                        && c.body["user"] == "U0MALLORY"
                        && c.body.to_string().contains("approver registry")
                })
            },
            DEADLINE,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let bob = chat.bed.approvals_as("bob@example.com")?;
    let one = eventually("carol's reaction to count", DEADLINE, || async {
        bob.show(&approval_id)
            .await
            .ok()
            .filter(|h| h.votes.len() == 1)
    })
    .await?;
    assert_eq!(one.state, "pending", "one approval of two is not enough");

    let (status, _) = chat
        .slack
        .react(
            &url,
            "U0BOB0001",
            SLACK_CHANNEL,
            &ts,
            "white_check_mark",
            true,
        )
        .await;
    assert_eq!(status, 200);
    let out = kubectl.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let finished = chat.bed.finish().await?;
    let decided: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| e.name() == "approval.decided")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].data()["outcome"], "approved");
    let approvers: Vec<&str> = decided[0].data()["votes"]
        .as_array()
        .map(|v| v.iter().filter_map(|v| v["approver"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(approvers, ["carol@example.com", "bob@example.com"]);
    let refused: Vec<&str> = of(&finished.events, decided[0].subject(), "approval.vote")
        .iter()
        .filter(|v| v.data()["counted"] == false)
        .filter_map(|v| v.data()["refusal"].as_str())
        .collect();
    assert!(
        refused.iter().any(|r| r.contains("you own ci-deployer")),
        "{refused:?}"
    );
    assert!(
        decided[0].data()["votes"]
            .as_array()
            .is_some_and(|v| v.iter().all(|v| v["via"] == "reaction"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_deny_refuses_the_request_and_a_discord_button_approves_another() -> Result {
    let chat = ChatBed::start(vec![]).await?;
    let url = chat.approval_url();
    let kubectl = chat
        .bed
        .kubectl_spawn("ci-deployer", &["delete", "pod", "api", "-n", "prod"])?;
    let (_, denied_id) = chat.posted().await?;
    let (status, answer) = chat
        .teams
        .invoke(
            &format!("{url}/teams/messages"),
            "29:bob-aad-object",
            &denied_id,
            "deny",
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["type"], "application/vnd.microsoft.card.adaptive",
        "{answer}"
    );
    let out = kubectl.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&denied_id) && stderr.contains("denied by bob@example.com"),
        "{stderr}"
    );

    let kubectl = chat
        .bed
        .kubectl_spawn("ci-deployer", &["delete", "service", "api", "-n", "prod"])?;
    let bob = chat.bed.approvals_as("bob@example.com")?;
    let hold = eventually("the second hold", DEADLINE, || async {
        bob.list(false).await.ok()?.into_iter().next()
    })
    .await?;
    let message = eventually("the second Discord message", DEADLINE, || async {
        chat.discord
            .calls()
            .into_iter()
            .find(|c| c.method == "POST" && c.body.to_string().contains(&hold.approval_id))
    })
    .await?;
    let (status, answer) = chat
        .discord
        .interact(
            &format!("{url}/discord/interactions"),
            "100000000000000002",
            &format!("gatehouse:approve:{}", hold.approval_id),
            &message.message_id,
            DISCORD_CHANNEL,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["type"], 7,
        "the message is updated in place: {answer}"
    );
    let out = kubectl.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let finished = chat.bed.finish().await?;
    let votes: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| e.name() == "approval.vote")
        .collect();
    let seen: Vec<(&str, &str, &str)> = votes
        .iter()
        .map(|v| {
            (
                v.data()["channel"].as_str().unwrap_or(""),
                v.data()["vote"].as_str().unwrap_or(""),
                v.data()["approver"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("teams", "deny", "bob@example.com"),
            ("discord", "approve", "bob@example.com")
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_replayed_callbacks_count_for_nothing() -> Result {
    let chat = ChatBed::start(vec![]).await?;
    let url = chat.approval_url();
    let kubectl = chat
        .bed
        .kubectl_spawn("ci-deployer", &["delete", "pod", "api", "-n", "prod"])?;
    let (ts, approval_id) = chat.posted().await?;

    // Slack: a forged signature, a timestamp six minutes old.
    let mut forged = chat.slack.click_request(
        "U0BOB0001",
        SLACK_CHANNEL,
        &ts,
        "gatehouse_approve",
        &approval_id,
    );
    forged.signature = format!("v0={}", "0".repeat(64));
    assert_eq!(chat.slack.send(&url, &forged).await.0, 401);
    let stale = chat.slack.click_request(
        "U0BOB0001",
        SLACK_CHANNEL,
        &ts,
        "gatehouse_approve",
        &approval_id,
    );
    let old = gatehouse_sandbox::chat::slack::now() - 360;
    let stale = chat
        .slack
        .signed_request(&stale.path, &stale.content_type, &stale.body, old);
    assert_eq!(chat.slack.send(&url, &stale).await.0, 401);
    // Teams: a token signed with another key under the published kid.
    let activity = chat
        .teams
        .invoke_activity("29:bob-aad-object", &approval_id, "approve");
    let token = chat.teams.jwt(&chat.teams.claims(), TokenKey::Forged);
    let (status, _) = chat
        .teams
        .send(&format!("{url}/teams/messages"), Some(&token), &activity)
        .await;
    assert_eq!(status, 401);
    // Discord: signed with a key that is not the application's.
    let interaction = chat.discord.component_interaction(
        "100000000000000002",
        &format!("gatehouse:approve:{approval_id}"),
        "300000000000000001",
        DISCORD_CHANNEL,
    );
    let body = serde_json::to_vec(&interaction)?;
    let forged = chat
        .discord
        .forge(gatehouse_sandbox::chat::slack::now(), &body);
    let (status, _) = chat
        .discord
        .deliver(&format!("{url}/discord/interactions"), &forged)
        .await;
    assert_eq!(status, 401);

    let bob = chat.bed.approvals_as("bob@example.com")?;
    let hold = bob.show(&approval_id).await?;
    assert!(hold.votes.is_empty() && hold.state == "pending", "{hold:?}");

    // A real click (by carol, who is no SRE: refused, told privately) replayed verbatim: the
    // replay is refused before it is read.
    let click = chat.slack.click_request(
        "U0CAROL01",
        SLACK_CHANNEL,
        &ts,
        "gatehouse_approve",
        &approval_id,
    );
    assert_eq!(chat.slack.send(&url, &click).await.0, 200);
    assert_eq!(chat.slack.send(&url, &click).await.0, 401);
    // The same replay with the signature's hex in capitals: Slack's MAC check reads either
    // case, so the replay key must too.
    let mut respelled = click.clone();
    respelled.signature = format!("v0={}", click.signature["v0=".len()..].to_uppercase());
    assert_ne!(respelled.signature, click.signature);
    assert_eq!(chat.slack.send(&url, &respelled).await.0, 401);
    // Delivered again with a fresh signature, as only Slack could: the same interaction (its
    // trigger_id) is acknowledged and not counted again.
    let resigned = chat.slack.signed_request(
        &click.path,
        &click.content_type,
        &click.body,
        gatehouse_sandbox::chat::slack::now() + 1,
    );
    assert_ne!(resigned.signature, click.signature);
    assert_eq!(chat.slack.send(&url, &resigned).await.0, 200);

    bob.vote(
        &approval_id,
        gatehouse_events::Ballot::Deny,
        Some("test over"),
    )
    .await?;
    let out = kubectl.wait_with_output().await?;
    assert!(!out.status.success());
    let finished = chat.bed.finish().await?;
    let votes: Vec<&Event> = finished
        .events
        .iter()
        .filter(|e| e.name() == "approval.vote")
        .collect();
    // Carol's refused click once (not twice), then bob's deny: nothing forged got in.
    let who: Vec<(&str, bool)> = votes
        .iter()
        .map(|v| {
            (
                v.data()["chat_user_id"].as_str().unwrap_or(""),
                v.data()["counted"] == true,
            )
        })
        .collect();
    assert_eq!(who, [("U0CAROL01", false), ("bob@example.com", true)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_and_two_approval_replicas_share_one_hold_and_its_grant() -> Result {
    let chat = ChatBed::start(vec![]).await?;
    let stack = chat.bed.stack();
    let stop = CancellationToken::new();

    // A second approval replica, from the same configuration.
    let text = std::fs::read_to_string(stack.dir.join("config/approval.yaml"))?
        .replace("replica: up", "replica: up-2");
    let config =
        gatehouse_approval::ApprovalConfig::from_yaml(&text).map_err(anyhow::Error::msg)?;
    let approval_2 = gatehouse_approval::ApprovalServer::start(&config, stop.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let approval_2_url = format!("http://{}", approval_2.local_addr());
    let approval_2 = tokio::spawn(approval_2.run());

    // A second proxy replica.
    let text = std::fs::read_to_string(stack.dir.join("config/proxy.yaml"))?
        .replace("replica: up", "replica: up-2");
    let mut config: gatehouse_proxy::ProxyConfig = yaml_serde::from_str(&text)?;
    config.listen = "127.0.0.1:0".parse()?;
    let proxy_2 = gatehouse_proxy::Proxy::build(config).await?;
    let proxy_2_url = format!("https://{}", proxy_2.local_addr());
    let proxy_2 = tokio::spawn(proxy_2.serve(stop.clone()));

    // The hold is on proxy 2.
    let token = chat.bed.mint("ci-deployer")?;
    let kubeconfig = stack.dir.join("kubeconfigs/ci-deployer-2.kubeconfig");
    let text = gatehouse::kubeconfig::render(
        "gatehouse-2",
        &proxy_2_url,
        &stack.ca_pem,
        "ci-deployer",
        &token,
        "prod",
    );
    gatehouse::kubeconfig::write_private(&kubeconfig, &text)?;
    let mut kubectl = tokio::process::Command::new("kubectl");
    kubectl
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["delete", "configmap", "settings", "-n", "prod"])
        .env("HOME", stack.dir.join("kubectl-home"))
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = chat
        .bed
        .admin_kubectl(&["create", "configmap", "settings", "-n", "prod"], None)
        .await?;
    assert!(out.success, "{}", out.stderr);
    let out = chat
        .bed
        .admin_kubectl(&["create", "configmap", "flags", "-n", "prod"], None)
        .await?;
    assert!(out.success, "{}", out.stderr);
    let child = kubectl.spawn()?;
    let (ts, approval_id) = chat.posted().await?;

    // The click reaches the other approval replica (Slack load-balances callbacks).
    let (status, _) = chat
        .slack
        .click(
            &approval_2_url,
            "U0BOB0001",
            SLACK_CHANNEL,
            &ts,
            "gatehouse_approve",
            &approval_id,
        )
        .await;
    assert_eq!(status, 200);
    let out = child.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Posted once, by one replica, though both consume holds.
    assert_eq!(top_level_posts(&chat.slack).len(), 1);
    assert_eq!(
        chat.teams
            .activities()
            .iter()
            .filter(|a| a.method == "POST" && a.target.is_none())
            .count(),
        1
    );

    // The grant it opened admits the same kind of delete on proxy 1.
    let grant = eventually("the grant", DEADLINE, || async {
        chat.bed
            .approvals_as("bob@example.com")
            .ok()?
            .grants()
            .await
            .ok()?
            .into_iter()
            .next()
    })
    .await?;
    let out = chat
        .bed
        .kubectl(
            "ci-deployer",
            &["delete", "configmap", "flags", "-n", "prod"],
        )
        .await?;
    assert!(out.success, "{}", out.stderr);

    stop.cancel();
    let _ = proxy_2.await;
    let _ = approval_2.await;
    let finished = chat.bed.finish().await?;
    let events = &finished.events;
    let held: Vec<&Event> = events
        .iter()
        .filter(|e| e.name() == "request.held")
        .collect();
    assert_eq!(held.len(), 1);
    assert!(
        held[0].bytes.windows(5).any(|w| w == b"up-2\""),
        "held on proxy 2"
    );
    let forwarded = of(events, held[0].subject(), "request.forwarded");
    assert_eq!(forwarded.len(), 1);
    let flags: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.name() == "request.received"
                && e.data()["request"]["name"] == "flags"
                && e.data()["request"]["verb"] == "delete"
        })
        .collect();
    assert!(
        flags[0].data()["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&grant.grant_id))
    );
    Ok(())
}
