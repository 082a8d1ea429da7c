//! The Discord adapter against the sandbox's fake Discord: messages posted, edited and replied
//! to through serenity, and signed interactions turned into votes (or refused) by the real
//! endpoint, with a scripted vote sink standing in for the core.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use gatehouse_approval::channel::{
    HoldState, HoldView, Posted, VoteCall, VoteLine, VoteReply, VoteSink,
};
use gatehouse_approval::discord::{DiscordChannel, DiscordConfig, routes};
use gatehouse_events::{Ballot, ChannelKind, VoteVia};
use gatehouse_sandbox::chat::discord::FakeDiscord;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;

const TOKEN: &str = "MTE5NzYxMDk1MDI4NDQ2ODI2NA.GhQx9a.fake-bot-token-for-tests-0123456789";
const CHANNEL: &str = "1197611230010245001";
const APPROVAL: &str = "01JD0APPROVAL00000000000001";
const CAROL: &str = "80351110224678912";
const WAIT: Duration = Duration::from_secs(10);

/// Records every call and answers with scripted replies; remembers delivery keys.
#[derive(Default)]
struct Sink {
    calls: Mutex<Vec<VoteCall>>,
    replies: Mutex<VecDeque<VoteReply>>,
    seen: Mutex<HashSet<String>>,
    /// When set, a vote waits for it before answering (a slow core).
    gate: Option<Arc<Notify>>,
}

impl Sink {
    fn replying(replies: Vec<VoteReply>) -> Arc<Self> {
        Arc::new(Self {
            replies: Mutex::new(replies.into()),
            ..Self::default()
        })
    }

    fn calls(&self) -> Vec<VoteCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl VoteSink for Sink {
    fn vote(&self, call: VoteCall) -> BoxFuture<'_, VoteReply> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(call);
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            self.replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(VoteReply::Refused {
                    reason: "no reply scripted".into(),
                    view: None,
                })
        })
    }

    fn approval_for_message<'a>(
        &'a self,
        _channel: ChannelKind,
        _channel_id: &'a str,
        _message_ref: &'a str,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }

    fn first_delivery<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.seen.lock().unwrap().insert(key.to_owned()) })
    }
}

fn pending() -> HoldView {
    HoldView {
        approval_id: APPROVAL.into(),
        request_id: "01JD0REQUEST000000000000001".into(),
        principal: "ci-deployer".into(),
        owner: Some("alice@example.com".into()),
        team: Some("payments".into()),
        purpose: Some("deploys the shop".into()),
        verb: "delete".into(),
        resource: "apps/deployments".into(),
        namespace: "prod".into(),
        name: "web".into(),
        reason: Some("roll back *bad* release @everyone".into()),
        rule: "prod-deletes".into(),
        approver_groups: vec!["platform-leads".into()],
        quorum: 2,
        expires_at: "2026-11-22T12:30:00Z".into(),
        votes: vec![],
        state: HoldState::Pending {
            approvals: 0,
            quorum: 2,
        },
        page_url: None,
        step_up: false,
    }
}

fn approved() -> HoldView {
    HoldView {
        votes: vec![
            VoteLine {
                approver: "carol@example.com".into(),
                ballot: Ballot::Approve,
                channel: ChannelKind::Discord,
                via: VoteVia::Button,
                at: "2026-11-22T12:01:00Z".into(),
            },
            VoteLine {
                approver: "dave@example.com".into(),
                ballot: Ballot::Approve,
                channel: ChannelKind::Slack,
                via: VoteVia::Reaction,
                at: "2026-11-22T12:02:00Z".into(),
            },
        ],
        state: HoldState::Approved {
            decided_at: "2026-11-22T12:02:00Z".into(),
            by: vec!["carol@example.com".into(), "dave@example.com".into()],
        },
        ..pending()
    }
}

struct Setup {
    fake: FakeDiscord,
    channel: Arc<DiscordChannel>,
    url: String,
    _dir: tempfile::TempDir,
}

async fn setup(sink: Arc<Sink>) -> Setup {
    setup_with_token(sink, TOKEN).await
}

async fn setup_with_token(sink: Arc<Sink>, token: &str) -> Setup {
    let fake = FakeDiscord::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file: PathBuf = dir.path().join("bot-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let channel = Arc::new(
        DiscordChannel::new(&DiscordConfig {
            application_id: fake.application_id().to_owned(),
            bot_token_file: token_file,
            public_key: fake.public_key_hex(),
            channel_id: CHANNEL.into(),
            api_url: Some(fake.api_url().to_owned()),
        })
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/discord/interactions",
        listener.local_addr().unwrap()
    );
    let app = routes(channel.clone(), sink);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Setup {
        fake,
        channel,
        url,
        _dir: dir,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn field<'a>(embed: &'a Value, name: &str) -> &'a str {
    embed["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name} in {embed}"))["value"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn post_renders_the_hold_with_buttons_and_pings_nobody() {
    let s = setup(Sink::replying(vec![])).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    assert_eq!(posted.channel, ChannelKind::Discord);
    assert_eq!(posted.channel_id, CHANNEL);

    let call = s.fake.wait_for(WAIT, |c| c.method == "POST").await.unwrap();
    assert_eq!(call.message_id, posted.message_ref);
    assert_eq!(call.channel_id, CHANNEL);
    let body = &call.body;
    assert!(
        body["content"]
            .as_str()
            .unwrap()
            .contains("ci-deployer wants to delete apps/deployments web in prod"),
        "{body}"
    );
    let embed = &body["embeds"][0];
    assert_eq!(embed["description"], "**Waiting: 0 of 2 approvals**");
    assert_eq!(field(embed, "Principal"), "ci-deployer");
    assert_eq!(field(embed, "Owner"), "alice@\u{200B}example.com");
    assert_eq!(field(embed, "Team"), "payments");
    assert_eq!(field(embed, "Verb"), "delete");
    assert_eq!(field(embed, "Resource"), "apps/deployments");
    assert_eq!(field(embed, "Namespace"), "prod");
    assert_eq!(field(embed, "Name"), "web");
    assert_eq!(field(embed, "Rule"), "prod-deletes");
    assert_eq!(field(embed, "Approvers"), "platform-leads · quorum 2");
    // 2026-11-22T12:30:00Z as a Discord timestamp, shown in each reader's zone.
    assert_eq!(field(embed, "Expires"), "<t:1795350600:f>");
    assert_eq!(field(embed, "Votes"), "none yet");
    // User text is escaped: no markdown, no @everyone.
    assert_eq!(
        field(embed, "Reason"),
        "roll back \\*bad\\* release @\u{200B}everyone"
    );
    assert_eq!(body["allowed_mentions"]["parse"], json!([]));
    assert_eq!(body["allowed_mentions"]["users"], json!([]));
    assert_eq!(body["allowed_mentions"]["roles"], json!([]));

    let buttons = &body["components"][0]["components"];
    assert_eq!(body["components"][0]["type"], 1);
    assert_eq!(
        buttons[0]["custom_id"],
        format!("gatehouse:approve:{APPROVAL}")
    );
    assert_eq!(buttons[0]["style"], 3, "Success");
    assert_eq!(buttons[0]["label"], "Approve");
    assert_eq!(
        buttons[1]["custom_id"],
        format!("gatehouse:deny:{APPROVAL}")
    );
    assert_eq!(buttons[1]["style"], 4, "Danger");
    assert_eq!(buttons[1]["label"], "Deny");
}

#[tokio::test]
async fn update_after_the_decision_removes_the_buttons() {
    let s = setup(Sink::replying(vec![])).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    s.channel.update(&posted, &approved()).await.unwrap();

    let call = s
        .fake
        .wait_for(WAIT, |c| c.method == "PATCH")
        .await
        .unwrap();
    assert_eq!(call.message_id, posted.message_ref);
    assert_eq!(call.body["components"], json!([]));
    assert!(
        call.body["content"]
            .as_str()
            .unwrap()
            .starts_with("Approved by carol@\u{200B}example.com, dave@\u{200B}example.com")
    );
    let votes = field(&call.body["embeds"][0], "Votes");
    assert!(votes.contains("carol@\u{200B}example.com approved (Discord button"));
    assert!(votes.contains("dave@\u{200B}example.com approved (Slack reaction"));
    assert_eq!(call.body["allowed_mentions"]["parse"], json!([]));
    let stored = s.fake.message(&posted.message_ref).unwrap();
    assert_eq!(stored["components"], json!([]));
    assert!(stored["edited_timestamp"].is_string());
}

#[tokio::test]
async fn announce_replies_to_the_hold_message() {
    let s = setup(Sink::replying(vec![])).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    s.channel.announce(&posted, &approved()).await.unwrap();

    let reply = s
        .fake
        .wait_for(WAIT, |c| {
            c.method == "POST" && !c.body["message_reference"].is_null()
        })
        .await
        .unwrap();
    let reference = &reply.body["message_reference"];
    assert_eq!(reference["message_id"], posted.message_ref.as_str());
    assert_eq!(reference["channel_id"], CHANNEL);
    assert_eq!(reference["fail_if_not_exists"], false);
    let content = reply.body["content"].as_str().unwrap();
    assert!(
        content.contains("Approved by carol@\u{200B}example.com"),
        "{content}"
    );
    assert!(content.contains("carol@\u{200B}example.com approved via Discord button"));
    assert!(content.contains("dave@\u{200B}example.com approved via Slack reaction"));
    assert_eq!(reply.body["allowed_mentions"]["parse"], json!([]));
    assert_eq!(reply.body["allowed_mentions"]["replied_user"], false);
    let stored = s.fake.message(&reply.message_id).unwrap();
    assert_eq!(stored["type"], 19, "a reply");
}

#[tokio::test]
async fn a_button_press_becomes_a_vote_and_updates_the_message() {
    let sink = Sink::replying(vec![VoteReply::Counted {
        view: approved(),
        repeat: false,
    }]);
    let s = setup(sink.clone()).await;
    let posted = s.channel.post(&pending()).await.unwrap();

    let (status, answer) = s
        .fake
        .interact(
            &s.url,
            CAROL,
            &format!("gatehouse:approve:{APPROVAL}"),
            &posted.message_ref,
            CHANNEL,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["type"], 7, "UPDATE_MESSAGE: {answer}");
    assert_eq!(answer["data"]["components"], json!([]));
    assert!(
        answer["data"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Approved by")
    );
    assert_eq!(answer["data"]["allowed_mentions"]["parse"], json!([]));
    assert_eq!(
        sink.calls(),
        vec![VoteCall {
            approval_id: APPROVAL.into(),
            channel: ChannelKind::Discord,
            chat_user_id: CAROL.into(),
            via: VoteVia::Button,
            ballot: Ballot::Approve,
            comment: None,
            authentication: gatehouse_approval::channel::by_chat(),
        }]
    );
}

#[tokio::test]
async fn deny_from_a_direct_message_uses_the_user_id() {
    let sink = Sink::replying(vec![VoteReply::Counted {
        view: pending(),
        repeat: false,
    }]);
    let s = setup(sink.clone()).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    let mut interaction = s.fake.component_interaction(
        "999",
        &format!("gatehouse:deny:{APPROVAL}"),
        &posted.message_ref,
        CHANNEL,
    );
    // In a DM there is no member: the user sits at the top level.
    let object = interaction.as_object_mut().unwrap();
    object.remove("member");
    object.remove("guild_id");
    object.remove("guild");
    object.insert(
        "user".into(),
        json!({"id": "175928847299117063", "username": "dave", "discriminator": "0",
               "global_name": "Dave", "avatar": null, "public_flags": 0}),
    );
    let (status, answer) = s.fake.deliver(&s.url, &s.fake.sign_now(&interaction)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["type"], 7);
    // Still pending: the buttons stay.
    assert_eq!(answer["data"]["components"][0]["components"][1]["style"], 4);
    let calls = sink.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].chat_user_id, "175928847299117063");
    assert_eq!(calls[0].ballot, Ballot::Deny);
}

#[tokio::test]
async fn a_refused_vote_is_told_only_to_the_voter() {
    let sink = Sink::replying(vec![VoteReply::Refused {
        reason: "You are not an approver for this hold.".into(),
        view: Some(Box::new(pending())),
    }]);
    let s = setup(sink.clone()).await;
    let (status, answer) = s
        .fake
        .interact(
            &s.url,
            CAROL,
            &format!("gatehouse:approve:{APPROVAL}"),
            "1197611230010245999",
            CHANNEL,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["type"], 4, "CHANNEL_MESSAGE_WITH_SOURCE: {answer}");
    assert_eq!(answer["data"]["flags"], 64, "EPHEMERAL");
    assert_eq!(
        answer["data"]["content"],
        "You are not an approver for this hold."
    );
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn buttons_that_are_not_votes_are_not_counted() {
    let sink = Sink::replying(vec![]);
    let s = setup(sink.clone()).await;
    for custom_id in [
        "something:else",
        "gatehouse:approve:",
        "gatehouse:maybe:01J",
    ] {
        let (status, answer) = s
            .fake
            .interact(&s.url, CAROL, custom_id, "1197611230010245999", CHANNEL)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["type"], 4);
        assert_eq!(answer["data"]["flags"], 64);
    }
    assert!(sink.calls().is_empty());
}

#[tokio::test]
async fn forged_and_unsigned_interactions_are_refused_and_not_counted() {
    let sink = Sink::replying(vec![]);
    let s = setup(sink.clone()).await;
    let interaction = s.fake.component_interaction(
        CAROL,
        &format!("gatehouse:approve:{APPROVAL}"),
        "1197611230010245999",
        CHANNEL,
    );
    let body = serde_json::to_vec(&interaction).unwrap();

    let forged = s.fake.forge(now(), &body);
    assert_eq!(
        s.fake.deliver(&s.url, &forged).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Signed, then altered in transit.
    let mut tampered = s.fake.sign(now(), &body);
    tampered.body = String::from_utf8(tampered.body)
        .unwrap()
        .replace(CAROL, "80351110224678913")
        .into_bytes();
    assert_eq!(
        s.fake.deliver(&s.url, &tampered).await.0,
        StatusCode::UNAUTHORIZED
    );

    let mut unsigned = s.fake.sign(now(), &body);
    unsigned.signature = String::new();
    assert_eq!(
        s.fake.deliver(&s.url, &unsigned).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A forged PING fails too (Discord checks this when the URL is saved).
    let ping = serde_json::to_vec(&s.fake.ping_interaction()).unwrap();
    assert_eq!(
        s.fake.deliver(&s.url, &s.fake.forge(now(), &ping)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(sink.calls().is_empty());
}

#[tokio::test]
async fn stale_timestamps_are_refused_even_when_signed() {
    let sink = Sink::replying(vec![VoteReply::Counted {
        view: pending(),
        repeat: false,
    }]);
    let s = setup(sink.clone()).await;
    let interaction = |fake: &FakeDiscord| {
        serde_json::to_vec(&fake.component_interaction(
            CAROL,
            &format!("gatehouse:approve:{APPROVAL}"),
            "1197611230010245999",
            CHANNEL,
        ))
        .unwrap()
    };
    let old = s.fake.sign(now() - 301, &interaction(&s.fake));
    assert_eq!(
        s.fake.deliver(&s.url, &old).await.0,
        StatusCode::UNAUTHORIZED
    );
    let future = s.fake.sign(now() + 400, &interaction(&s.fake));
    assert_eq!(
        s.fake.deliver(&s.url, &future).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(sink.calls().is_empty());
    // Inside the window it counts.
    let recent = s.fake.sign(now() - 200, &interaction(&s.fake));
    let (status, answer) = s.fake.deliver(&s.url, &recent).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["type"], 7);
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn the_same_signed_interaction_twice_counts_once() {
    let sink = Sink::replying(vec![
        VoteReply::Counted {
            view: pending(),
            repeat: false,
        },
        VoteReply::Counted {
            view: pending(),
            repeat: true,
        },
    ]);
    let s = setup(sink.clone()).await;
    let signed = s.fake.sign_now(&s.fake.component_interaction(
        CAROL,
        &format!("gatehouse:approve:{APPROVAL}"),
        "1197611230010245999",
        CHANNEL,
    ));
    let (first, answer) = s.fake.deliver(&s.url, &signed).await;
    assert_eq!((first, answer["type"].clone()), (StatusCode::OK, json!(7)));
    let (second, answer) = s.fake.deliver(&s.url, &signed).await;
    assert_eq!(second, StatusCode::OK);
    assert_eq!(answer["type"], 4, "{answer}");
    assert_eq!(answer["data"]["flags"], 64);
    assert!(
        answer["data"]["content"]
            .as_str()
            .unwrap()
            .contains("already received")
    );
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let sink = Sink::replying(vec![]);
    let s = setup(sink.clone()).await;
    let (status, answer) = s.fake.ping(&s.url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!({"type": 1}));
    assert!(sink.calls().is_empty());
}

#[tokio::test]
async fn a_slow_count_is_acknowledged_in_time_and_a_refusal_followed_up() {
    let gate = Arc::new(Notify::new());
    let sink = Arc::new(Sink {
        replies: Mutex::new(
            vec![VoteReply::Refused {
                reason: "The hold expired before your vote arrived.".into(),
                view: None,
            }]
            .into(),
        ),
        gate: Some(gate.clone()),
        ..Sink::default()
    });
    let s = setup(sink.clone()).await;
    let started = tokio::time::Instant::now();
    let (status, answer) = s
        .fake
        .interact(
            &s.url,
            CAROL,
            &format!("gatehouse:approve:{APPROVAL}"),
            "1197611230010245999",
            CHANNEL,
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "Discord's deadline"
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["type"], 6, "DEFERRED_UPDATE_MESSAGE: {answer}");
    assert_eq!(sink.calls().len(), 1);
    // The core answers late: the voter is told privately.
    gate.notify_one();
    let followup = s
        .fake
        .wait_for(WAIT, |c| c.path.starts_with("/api/v10/webhooks/"))
        .await
        .expect("a follow-up message");
    assert_eq!(
        followup.body["content"],
        "The hold expired before your vote arrived."
    );
    assert_eq!(followup.body["flags"], 64);
}

#[tokio::test]
async fn auth_failures_never_show_the_token() {
    let wrong = "MTE5NzYxMDk1MDI4NDQ2ODI2NA.GhQx9a.a-token-discord-does-not-know";
    let s = setup_with_token(Sink::replying(vec![]), wrong).await;
    let err = s.channel.post(&pending()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("Unauthorized"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains("GhQx9a"), "{text}");
    let posted = Posted {
        channel: ChannelKind::Discord,
        channel_id: CHANNEL.into(),
        message_ref: "1197611230010245999".into(),
    };
    let err = s.channel.update(&posted, &approved()).await.unwrap_err();
    assert!(!err.to_string().contains(wrong));
    let debug = format!("{:?}", s.channel);
    assert!(!debug.contains(wrong), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    assert!(s.fake.calls().is_empty());
}

#[tokio::test]
async fn config_errors_name_the_problem_not_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("bot-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = DiscordConfig {
        application_id: "1197610950284468264".into(),
        bot_token_file: token_file,
        public_key: "not-a-key".into(),
        channel_id: CHANNEL.into(),
        api_url: None,
    };
    let err = DiscordChannel::new(&config).unwrap_err();
    assert!(err.contains("public key"), "{err}");
    assert!(!err.contains(TOKEN));
    let valid_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    let err = DiscordChannel::new(&DiscordConfig {
        bot_token_file: dir.path().join("missing"),
        public_key: hex::encode(valid_key.as_bytes()),
        ..config.clone()
    })
    .unwrap_err();
    assert!(err.contains("bot_token_file"), "{err}");
}

#[tokio::test]
async fn the_page_is_linked_and_a_step_up_hold_offers_only_the_link() {
    let s = setup(Sink::replying(vec![])).await;
    let page = format!("https://approvals.example.com/holds/{APPROVAL}");
    let mut step_up = pending();
    step_up.page_url = Some(page.clone());
    step_up.step_up = true;
    s.channel.post(&step_up).await.unwrap();
    let call = s.fake.wait_for(WAIT, |c| c.method == "POST").await.unwrap();
    let buttons = call.body["components"][0]["components"]
        .as_array()
        .unwrap()
        .clone();
    // A vote on a step-up hold counts only from the page: one link button (style 5), no votes.
    assert_eq!(buttons.len(), 1, "{buttons:?}");
    assert_eq!(buttons[0]["style"], 5, "Link");
    assert_eq!(buttons[0]["url"], page.as_str());
    assert!(buttons[0].get("custom_id").is_none());
}
