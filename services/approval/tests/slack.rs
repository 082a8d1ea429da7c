//! The Slack front end against the fake Slack: what it posts, and how signed callbacks become
//! votes. The vote sink here only records calls and answers as scripted; counting is tested
//! elsewhere.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use gatehouse_approval::channel::{
    HoldState, HoldView, Posted, VoteCall, VoteLine, VoteReply, VoteSink,
};
use gatehouse_approval::slack::{SlackChannel, SlackConfig, routes};
use gatehouse_events::{Ballot, ChannelKind, VoteVia};
use gatehouse_sandbox::chat::slack::{FakeSlack, SlackCall, now};
use http::StatusCode;
use serde_json::Value;
use tokio::sync::Notify;

const BOT_TOKEN: &str = "xoxb-test-0123456789-bot-token";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const CHANNEL: &str = "C0APPROVALS";
const APPROVAL: &str = "01JAPPROVAL00000000000000A1";
const WAIT: Duration = Duration::from_secs(10);

/// Records votes, answers from a script (counted by default), maps messages to approvals and
/// remembers delivery keys.
#[derive(Default)]
struct ScriptedSink {
    votes: Mutex<Vec<VoteCall>>,
    replies: Mutex<VecDeque<VoteReply>>,
    messages: Mutex<HashMap<(String, String), String>>,
    delivered: Mutex<HashSet<String>>,
    changed: Notify,
}

impl ScriptedSink {
    fn votes(&self) -> Vec<VoteCall> {
        self.votes.lock().unwrap().clone()
    }

    fn script(&self, reply: VoteReply) {
        self.replies.lock().unwrap().push_back(reply);
    }

    fn knows(&self, channel: &str, ts: &str, approval: &str) {
        self.messages
            .lock()
            .unwrap()
            .insert((channel.to_owned(), ts.to_owned()), approval.to_owned());
    }

    /// Waits until at least `n` votes arrived, and returns them all.
    async fn wait_votes(&self, n: usize) -> Vec<VoteCall> {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let votes = self.votes();
            if votes.len() >= n {
                return votes;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "wanted {n} votes, got {votes:?}");
            let _ = tokio::time::timeout(left, changed).await;
        }
    }
}

impl VoteSink for ScriptedSink {
    fn vote(&self, call: VoteCall) -> BoxFuture<'_, VoteReply> {
        async move {
            self.votes.lock().unwrap().push(call);
            self.changed.notify_waiters();
            self.replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| VoteReply::Counted {
                    view: view(pending(0), vec![]),
                    repeat: false,
                })
        }
        .boxed()
    }

    fn approval_for_message<'a>(
        &'a self,
        channel: ChannelKind,
        channel_id: &'a str,
        message_ref: &'a str,
    ) -> BoxFuture<'a, Option<String>> {
        async move {
            assert_eq!(channel, ChannelKind::Slack);
            self.messages
                .lock()
                .unwrap()
                .get(&(channel_id.to_owned(), message_ref.to_owned()))
                .cloned()
        }
        .boxed()
    }

    fn first_delivery<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        async move { self.delivered.lock().unwrap().insert(key.to_owned()) }.boxed()
    }
}

fn pending(approvals: u32) -> HoldState {
    HoldState::Pending {
        approvals,
        quorum: 2,
    }
}

fn view(state: HoldState, votes: Vec<VoteLine>) -> HoldView {
    HoldView {
        approval_id: APPROVAL.to_owned(),
        request_id: "01JREQUEST000000000000000R1".to_owned(),
        principal: "system:serviceaccount:ci:deployer".to_owned(),
        owner: Some("alice@example.com".to_owned()),
        team: Some("platform".to_owned()),
        purpose: Some("deploys the web tier".to_owned()),
        verb: "delete".to_owned(),
        resource: "apps/deployments".to_owned(),
        namespace: "prod".to_owned(),
        name: "web".to_owned(),
        reason: Some("roll back INC-42 <!channel> & <https://evil.example/|click me>".to_owned()),
        rule: "prod-deletes-need-two".to_owned(),
        approver_groups: vec!["platform-leads".to_owned(), "sre".to_owned()],
        quorum: 2,
        expires_at: "2026-11-22T10:15:00Z".to_owned(),
        votes,
        state,
        page_url: None,
        step_up: false,
    }
}

fn vote_line(approver: &str, ballot: Ballot, via: VoteVia) -> VoteLine {
    VoteLine {
        approver: approver.to_owned(),
        ballot,
        channel: ChannelKind::Slack,
        via,
        at: "2026-11-22T10:01:00Z".to_owned(),
    }
}

struct Harness {
    slack: FakeSlack,
    channel: Arc<SlackChannel>,
    sink: Arc<ScriptedSink>,
    /// Where `routes` are served.
    url: String,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn config(dir: &tempfile::TempDir, api_url: String, token: &str) -> SlackConfig {
    let token_file = dir.path().join("bot-token");
    let secret_file = dir.path().join("signing-secret");
    // Secrets files usually end in a newline; it must not become part of the secret.
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::write(&secret_file, format!("  {SIGNING_SECRET}\n")).unwrap();
    SlackConfig {
        channel: CHANNEL.to_owned(),
        bot_token_file: token_file,
        signing_secret_file: secret_file,
        api_url: Some(api_url),
        approve_reactions: None,
        deny_reactions: None,
    }
}

async fn harness_with(edit: impl FnOnce(&mut SlackConfig)) -> Harness {
    let slack = FakeSlack::start(BOT_TOKEN, SIGNING_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, slack.api_url(), BOT_TOKEN);
    edit(&mut config);
    let channel = Arc::new(SlackChannel::new(&config).unwrap());
    let sink = Arc::new(ScriptedSink::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = routes(channel.clone(), sink.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Harness {
        slack,
        channel,
        sink,
        url,
        _dir: dir,
        server,
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

/// The blocks a call sent, as JSON text, and the block types in order.
fn blocks_of(call: &SlackCall) -> (String, Vec<String>) {
    let blocks = call.body["blocks"].clone();
    let types = blocks
        .as_array()
        .map(|b| {
            b.iter()
                .map(|b| b["type"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default();
    (blocks.to_string(), types)
}

fn buttons(blocks: &Value) -> Vec<(String, String)> {
    blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["action_id"].as_str().unwrap_or("").to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn post_renders_every_fact_with_buttons_and_returns_the_ts() {
    let h = harness().await;
    let posted = h.channel.post(&view(pending(0), vec![])).await.unwrap();
    assert_eq!(posted.channel, ChannelKind::Slack);
    assert_eq!(posted.channel_id, CHANNEL);

    let calls = h.slack.calls_to("chat.postMessage");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(call.authorized);
    assert_eq!(call.body["channel"], CHANNEL);
    let message = h.slack.messages().pop().unwrap();
    assert_eq!(posted.message_ref, message.ts);
    assert_eq!(
        call.body["text"],
        "system:serviceaccount:ci:deployer wants to delete apps/deployments web in prod"
    );
    let (text, types) = blocks_of(call);
    for fact in [
        "system:serviceaccount:ci:deployer",
        "alice@example.com",
        "platform",
        "delete",
        "apps/deployments",
        "prod",
        "web",
        "roll back INC-42",
        "deploys the web tier",
        "prod-deletes-need-two",
        "platform-leads, sre",
        "quorum: 2",
        "2026-11-22T10:15:00Z",
        "Waiting: 0 of 2 approvals",
        "No votes yet",
        APPROVAL,
    ] {
        assert!(text.contains(fact), "{fact:?} missing from {text}");
    }
    assert!(types.contains(&"actions".to_owned()), "{types:?}");
    assert_eq!(
        buttons(&call.body["blocks"]),
        vec![
            ("gatehouse_approve".to_owned(), APPROVAL.to_owned()),
            ("gatehouse_deny".to_owned(), APPROVAL.to_owned()),
        ]
    );
}

#[tokio::test]
async fn user_text_cannot_mention_the_channel_or_link() {
    let h = harness().await;
    let mut hold = view(pending(0), vec![]);
    hold.principal = "mallory <@U0BOSS>".to_owned();
    h.channel.post(&hold).await.unwrap();
    let call = h.slack.calls_to("chat.postMessage").remove(0);
    let (text, _) = blocks_of(&call);
    assert!(!text.contains("<!channel>"), "{text}");
    assert!(!text.contains("<https://evil"), "{text}");
    assert!(!text.contains("<@U0BOSS>"), "{text}");
    assert!(text.contains("&lt;!channel&gt; &amp; &lt;https://evil.example/|click me&gt;"));
    // Nor make Slack fetch a link it names.
    assert_eq!(call.body["unfurl_links"], false);
    assert_eq!(call.body["unfurl_media"], false);
    let fallback = call.body["text"].as_str().unwrap();
    assert!(fallback.contains("mallory &lt;@U0BOSS&gt;"), "{fallback}");
}

#[tokio::test]
async fn update_shows_votes_and_drops_the_buttons_once_decided() {
    let h = harness().await;
    let posted = h.channel.post(&view(pending(0), vec![])).await.unwrap();

    let alice = vote_line("alice", Ballot::Approve, VoteVia::Button);
    h.channel
        .update(&posted, &view(pending(1), vec![alice.clone()]))
        .await
        .unwrap();
    let message = h
        .slack
        .message(&posted.channel_id, &posted.message_ref)
        .unwrap();
    let text = message.blocks.to_string();
    assert!(text.contains("Waiting: 1 of 2 approvals"), "{text}");
    assert!(text.contains("alice: approve via button"), "{text}");
    assert_eq!(buttons(&message.blocks).len(), 2);

    let bob = vote_line("bob", Ballot::Approve, VoteVia::Reaction);
    let decided = HoldState::Approved {
        decided_at: "2026-11-22T10:02:00Z".to_owned(),
        by: vec!["alice".to_owned(), "bob".to_owned()],
    };
    h.channel
        .update(&posted, &view(decided, vec![alice, bob]))
        .await
        .unwrap();
    let message = h
        .slack
        .message(&posted.channel_id, &posted.message_ref)
        .unwrap();
    assert_eq!(message.updates, 2);
    let text = message.blocks.to_string();
    assert!(text.contains("Approved by alice, bob"), "{text}");
    assert!(text.contains("bob: approve via reaction"), "{text}");
    assert!(buttons(&message.blocks).is_empty(), "{text}");
    let update = h.slack.calls_to("chat.update").pop().unwrap();
    assert_eq!(update.body["ts"], posted.message_ref.as_str());
    assert_eq!(update.body["channel"], CHANNEL);
}

#[tokio::test]
async fn announce_replies_in_the_thread_with_who_decided_and_how() {
    let h = harness().await;
    let posted = h.channel.post(&view(pending(0), vec![])).await.unwrap();
    let decided = HoldState::Approved {
        decided_at: "2026-11-22T10:02:00Z".to_owned(),
        by: vec!["alice".to_owned(), "bob".to_owned()],
    };
    let votes = vec![
        vote_line("alice", Ballot::Approve, VoteVia::Button),
        vote_line("bob", Ballot::Approve, VoteVia::Reaction),
    ];
    h.channel
        .announce(&posted, &view(decided, votes))
        .await
        .unwrap();
    let reply = h.slack.calls_to("chat.postMessage").pop().unwrap();
    assert_eq!(reply.body["thread_ts"], posted.message_ref.as_str());
    assert_eq!(reply.body["channel"], CHANNEL);
    assert_eq!(
        reply.body["text"],
        "Approved by alice (button), bob (reaction ✅) at 2026-11-22T10:02:00Z"
    );
    let replies: Vec<_> = h
        .slack
        .messages()
        .into_iter()
        .filter(|m| m.thread_ts.as_deref() == Some(posted.message_ref.as_str()))
        .collect();
    assert_eq!(replies.len(), 1);

    let denied = HoldState::Denied {
        decided_at: "2026-11-22T10:03:00Z".to_owned(),
        by: "carol".to_owned(),
    };
    let votes = vec![vote_line("carol", Ballot::Deny, VoteVia::Button)];
    h.channel
        .announce(&posted, &view(denied, votes))
        .await
        .unwrap();
    let reply = h.slack.calls_to("chat.postMessage").pop().unwrap();
    assert_eq!(
        reply.body["text"],
        "Denied by carol (button) at 2026-11-22T10:03:00Z"
    );
}

#[tokio::test]
async fn a_click_is_a_button_vote_by_that_user_on_that_approval() {
    let h = harness().await;
    let posted = h.channel.post(&view(pending(0), vec![])).await.unwrap();
    let (status, body) = h
        .slack
        .click(
            &h.url,
            "U0ALICE",
            CHANNEL,
            &posted.message_ref,
            "gatehouse_approve",
            APPROVAL,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "");
    let (status, _) = h
        .slack
        .click(
            &h.url,
            "U0CAROL",
            CHANNEL,
            &posted.message_ref,
            "gatehouse_deny",
            APPROVAL,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let votes = h.sink.wait_votes(2).await;
    assert_eq!(
        votes,
        vec![
            VoteCall {
                approval_id: APPROVAL.to_owned(),
                channel: ChannelKind::Slack,
                chat_user_id: "U0ALICE".to_owned(),
                via: VoteVia::Button,
                ballot: Ballot::Approve,
                comment: None,
                authentication: gatehouse_approval::channel::by_chat(),
            },
            VoteCall {
                approval_id: APPROVAL.to_owned(),
                channel: ChannelKind::Slack,
                chat_user_id: "U0CAROL".to_owned(),
                via: VoteVia::Button,
                ballot: Ballot::Deny,
                comment: None,
                authentication: gatehouse_approval::channel::by_chat(),
            },
        ]
    );
    // A counted vote needs no answer from the adapter: the core updates the message.
    assert!(h.slack.calls_to("chat.postEphemeral").is_empty());
}

#[tokio::test]
async fn other_actions_are_not_votes() {
    let h = harness().await;
    let (status, _) = h
        .slack
        .click(
            &h.url,
            "U0ALICE",
            CHANNEL,
            "1.2",
            "something_else",
            APPROVAL,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The handler answers only after handing its votes over, so none means none.
    let (status, _) = h
        .slack
        .click(
            &h.url,
            "U0ALICE",
            CHANNEL,
            "1.2",
            "gatehouse_approve",
            APPROVAL,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let votes = h.sink.wait_votes(1).await;
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0].ballot, Ballot::Approve);
}

#[tokio::test]
async fn reactions_approve_deny_and_withdraw_and_others_are_ignored() {
    let h = harness().await;
    let posted = h.channel.post(&view(pending(0), vec![])).await.unwrap();
    h.sink.knows(CHANNEL, &posted.message_ref, APPROVAL);
    let ts = posted.message_ref.as_str();

    let react = |user: &'static str, emoji: &'static str, added: bool| {
        let h = &h;
        async move {
            let (status, body) = h.slack.react(&h.url, user, CHANNEL, ts, emoji, added).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    react("U0ALICE", "white_check_mark", true).await;
    react("U0ALICE", "tada", true).await; // not a voting reaction
    react("U0BOB", "x", true).await;
    react("U0ALICE", "white_check_mark", false).await;
    // A voting reaction on a message that is no hold.
    let (status, _) = h
        .slack
        .react(
            &h.url,
            "U0ALICE",
            CHANNEL,
            "1600000000.000001",
            "white_check_mark",
            true,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    react("U0BOB", "x", false).await;

    let votes = h.sink.wait_votes(4).await;
    let seen: Vec<_> = votes
        .iter()
        .map(|v| {
            (
                v.chat_user_id.as_str(),
                v.ballot,
                v.via,
                v.approval_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("U0ALICE", Ballot::Approve, VoteVia::Reaction, APPROVAL),
            ("U0BOB", Ballot::Deny, VoteVia::Reaction, APPROVAL),
            ("U0ALICE", Ballot::Withdraw, VoteVia::Reaction, APPROVAL),
            ("U0BOB", Ballot::Withdraw, VoteVia::Reaction, APPROVAL),
        ]
    );
}

#[tokio::test]
async fn configured_reactions_count_whatever_the_skin_tone() {
    let h = harness_with(|c| {
        c.approve_reactions = Some(vec!["+1".to_owned(), ":shipit:".to_owned()]);
        c.deny_reactions = Some(vec!["-1".to_owned()]);
    })
    .await;
    h.sink.knows(CHANNEL, "1700000000.000100", APPROVAL);
    for (emoji, added) in [
        ("+1::skin-tone-2", true),
        ("white_check_mark", true), // no longer an approve reaction here
        ("shipit", true),
        ("-1::skin-tone-5", true),
    ] {
        let (status, _) = h
            .slack
            .react(
                &h.url,
                "U0ALICE",
                CHANNEL,
                "1700000000.000100",
                emoji,
                added,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let ballots: Vec<_> = h
        .sink
        .wait_votes(3)
        .await
        .iter()
        .map(|v| v.ballot)
        .collect();
    assert_eq!(
        ballots,
        vec![Ballot::Approve, Ballot::Approve, Ballot::Deny]
    );
}

#[tokio::test]
async fn a_refused_vote_is_explained_to_the_voter_only() {
    let h = harness().await;
    let posted = h.channel.post(&view(pending(0), vec![])).await.unwrap();
    h.sink.knows(CHANNEL, &posted.message_ref, APPROVAL);
    h.sink.script(VoteReply::Refused {
        reason: "you are not an approver of this hold".to_owned(),
        view: None,
    });
    h.sink.script(VoteReply::Refused {
        reason: "you cannot vote on your own request".to_owned(),
        view: Some(Box::new(view(pending(0), vec![]))),
    });
    let (status, _) = h
        .slack
        .click(
            &h.url,
            "U0MALLORY",
            CHANNEL,
            &posted.message_ref,
            "gatehouse_approve",
            APPROVAL,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .slack
        .react(
            &h.url,
            "U0DEPLOYER",
            CHANNEL,
            &posted.message_ref,
            "white_check_mark",
            true,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let calls = h
        .slack
        .wait_for(
            |calls| {
                calls
                    .iter()
                    .filter(|c| c.method == "chat.postEphemeral")
                    .count()
                    >= 2
            },
            WAIT,
        )
        .await
        .unwrap();
    let told: Vec<_> = calls
        .iter()
        .filter(|c| c.method == "chat.postEphemeral")
        .map(|c| {
            (
                c.body["channel"].as_str().unwrap().to_owned(),
                c.body["user"].as_str().unwrap().to_owned(),
                c.body["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(told.contains(&(
        CHANNEL.to_owned(),
        "U0MALLORY".to_owned(),
        "you are not an approver of this hold".to_owned()
    )));
    assert!(told.contains(&(
        CHANNEL.to_owned(),
        "U0DEPLOYER".to_owned(),
        "you cannot vote on your own request".to_owned()
    )));
    // Nothing public was posted about it.
    assert_eq!(h.slack.calls_to("chat.postMessage").len(), 1);
}

#[tokio::test]
async fn forged_or_unsigned_callbacks_are_refused_before_any_vote() {
    let h = harness().await;
    let genuine = h
        .slack
        .click_request("U0ALICE", CHANNEL, "1.2", "gatehouse_approve", APPROVAL);

    let mut forged = genuine.clone();
    let last = forged.signature.pop().unwrap();
    forged.signature.push(if last == '0' { '1' } else { '0' });
    let (status, body) = h.slack.send(&h.url, &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("signature"), "{body}");

    // A different vote under the genuine signature.
    let mut tampered = genuine.clone();
    tampered.body = tampered.body.replace("gatehouse_approve", "gatehouse_deny");
    let (status, _) = h.slack.send(&h.url, &tampered).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let mut unsigned = genuine.clone();
    unsigned.signature.clear();
    let (status, _) = h.slack.send(&h.url, &unsigned).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Signed with another app's secret.
    let other = FakeSlack::start(BOT_TOKEN, "another-apps-signing-secret").await;
    let (status, _) = other
        .react(&h.url, "U0ALICE", CHANNEL, "1.2", "white_check_mark", true)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(h.sink.votes().is_empty());
    // None of them used up the genuine delivery.
    let (status, _) = h.slack.send(&h.url, &genuine).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.sink.wait_votes(1).await.len(), 1);
}

#[tokio::test]
async fn a_stale_timestamp_is_refused() {
    let h = harness().await;
    let payload = h
        .slack
        .click_request("U0ALICE", CHANNEL, "1.2", "gatehouse_approve", APPROVAL)
        .body;
    let stale = h.slack.signed_request(
        "/slack/interactivity",
        "application/x-www-form-urlencoded",
        &payload,
        now() - 6 * 60,
    );
    let (status, body) = h.slack.send(&h.url, &stale).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("five minutes"), "{body}");
    assert!(h.sink.votes().is_empty());
}

#[tokio::test]
async fn the_same_signed_request_twice_is_refused_the_second_time() {
    let h = harness().await;
    let request = h
        .slack
        .click_request("U0ALICE", CHANNEL, "1.2", "gatehouse_approve", APPROVAL);
    let (first, _) = h.slack.send(&h.url, &request).await;
    assert_eq!(first, StatusCode::OK);
    let (second, body) = h.slack.send(&h.url, &request).await;
    assert_eq!(second, StatusCode::UNAUTHORIZED);
    assert_eq!(body, "replayed");

    h.sink.knows(CHANNEL, "1.2", APPROVAL);
    let reaction = h
        .slack
        .react_request("U0BOB", CHANNEL, "1.2", "white_check_mark", true);
    assert_eq!(h.slack.send(&h.url, &reaction).await.0, StatusCode::OK);
    assert_eq!(
        h.slack.send(&h.url, &reaction).await.0,
        StatusCode::UNAUTHORIZED
    );

    let votes = h.sink.wait_votes(2).await;
    assert_eq!(votes.len(), 2, "{votes:?}");
}

#[tokio::test]
async fn an_events_api_retry_is_not_a_second_vote() {
    let h = harness().await;
    h.sink.knows(CHANNEL, "1.2", APPROVAL);
    let event_id = h.slack.next_event_id();
    let body = h.slack.reaction_body(
        "U0ALICE",
        CHANNEL,
        "1.2",
        "white_check_mark",
        true,
        &event_id,
    );
    let first = h
        .slack
        .signed_request("/slack/events", "application/json", &body, now() - 1);
    // Slack's retry: the same event, signed again at a later time.
    let retry = h
        .slack
        .signed_request("/slack/events", "application/json", &body, now());
    assert_ne!(first.signature, retry.signature);
    assert_eq!(h.slack.send(&h.url, &first).await.0, StatusCode::OK);
    assert_eq!(h.slack.send(&h.url, &retry).await.0, StatusCode::OK);
    // A later, different event arrives after the retry was handled.
    let (status, _) = h
        .slack
        .react(&h.url, "U0BOB", CHANNEL, "1.2", "x", true)
        .await;
    assert_eq!(status, StatusCode::OK);
    let votes = h.sink.wait_votes(2).await;
    let who: Vec<_> = votes.iter().map(|v| v.chat_user_id.as_str()).collect();
    assert_eq!(who, vec!["U0ALICE", "U0BOB"]);
}

#[tokio::test]
async fn url_verification_is_answered_with_the_challenge() {
    let h = harness().await;
    let (status, body) = h
        .slack
        .url_verification(
            &h.url,
            "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    // Not signed by Slack, it is not answered.
    let mut forged = h.slack.url_verification_request("abc");
    forged.timestamp = (now() - 1).to_string();
    assert_eq!(
        h.slack.send(&h.url, &forged).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_wrong_bot_token_is_an_invalid_auth_error_that_never_shows_the_token() {
    let slack = FakeSlack::start(BOT_TOKEN, SIGNING_SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "xoxb-wrong-9876543210-not-the-token";
    let channel = SlackChannel::new(&config(&dir, slack.api_url(), wrong)).unwrap();
    let error = channel
        .post(&view(pending(0), vec![]))
        .await
        .expect_err("a wrong token must fail");
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("invalid_auth"), "{shown}");
    assert!(!shown.contains(wrong), "{shown}");
    let posted = Posted {
        channel: ChannelKind::Slack,
        channel_id: CHANNEL.to_owned(),
        message_ref: "1.2".to_owned(),
    };
    let error = channel.tell(CHANNEL, "U0ALICE", "hello").await.unwrap_err();
    assert!(error.to_string().contains("invalid_auth"));
    let error = channel
        .update(&posted, &view(pending(0), vec![]))
        .await
        .unwrap_err();
    assert!(!error.to_string().contains(wrong));
    assert!(slack.calls().iter().all(|c| !c.authorized));

    let debug = format!("{channel:?}");
    assert!(!debug.contains(wrong), "{debug}");
    assert!(!debug.contains(SIGNING_SECRET), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}

#[tokio::test]
async fn configuration_errors_name_the_file_not_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, "http://127.0.0.1:9/api/".to_owned(), BOT_TOKEN);
    assert!(SlackChannel::new(&config).is_ok());

    config.signing_secret_file = dir.path().join("missing-secret");
    let error = SlackChannel::new(&config).unwrap_err();
    assert!(error.contains("missing-secret"), "{error}");

    let token_file = dir.path().join("two-tokens");
    std::fs::write(&token_file, format!("{BOT_TOKEN} {BOT_TOKEN}-2\n")).unwrap();
    let mut config = self::config(&dir, "http://127.0.0.1:9/api/".to_owned(), BOT_TOKEN);
    config.bot_token_file = token_file;
    let error = SlackChannel::new(&config).unwrap_err();
    assert!(error.contains("two-tokens"), "{error}");
    assert!(!error.contains(BOT_TOKEN), "{error}");

    // The token would cross the network in the clear.
    let config = self::config(&dir, "http://slack.example.com/api/".to_owned(), BOT_TOKEN);
    let error = SlackChannel::new(&config).unwrap_err();
    assert!(error.contains("https"), "{error}");
}
