//! The Teams adapter against the sandbox's fake Bot Framework: cards posted, updated and
//! replied to through the connector with a client-credentials token, and invoke activities
//! (with Bot Framework JWTs) turned into votes or refused by the real endpoint, with a
//! scripted vote sink standing in for the core.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use gatehouse_approval::channel::{
    HoldState, HoldView, Posted, VoteCall, VoteLine, VoteReply, VoteSink,
};
use gatehouse_approval::teams::{TeamsChannel, TeamsConfig, routes};
use gatehouse_events::{Ballot, ChannelKind, VoteVia};
use gatehouse_sandbox::chat::teams::{FakeTeams, TokenKey};
use http::StatusCode;
use serde_json::{Value, json};

const APP_ID: &str = "9b1c6a3e-58f2-4c7d-a0e1-2f3b4c5d6e7f";
const PASSWORD: &str = "Gx8Q~fake.app-password_for~tests";
const APPROVAL: &str = "01JD0APPROVAL00000000000001";
const CAROL: &str = "29:1carolAADid-4f0c8a";
const WAIT: Duration = Duration::from_secs(10);

/// Records every call and answers with scripted replies; remembers delivery keys.
#[derive(Default)]
struct Sink {
    calls: Mutex<Vec<VoteCall>>,
    replies: Mutex<VecDeque<VoteReply>>,
    seen: Mutex<HashSet<String>>,
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
        reason: Some("roll back [bad](https://evil.example) release".into()),
        rule: "prod-deletes".into(),
        approver_groups: vec!["platform-leads".into()],
        quorum: 2,
        expires_at: "2026-11-22T12:30:00Z".into(),
        votes: vec![VoteLine {
            approver: "carol@example.com".into(),
            ballot: Ballot::Approve,
            channel: ChannelKind::Teams,
            via: VoteVia::Button,
            at: "2026-11-22T12:01:00Z".into(),
        }],
        state: HoldState::Pending {
            approvals: 1,
            quorum: 2,
        },
        page_url: None,
        step_up: false,
    }
}

fn approved() -> HoldView {
    let mut view = pending();
    view.votes.push(VoteLine {
        approver: "dave@example.com".into(),
        ballot: Ballot::Approve,
        channel: ChannelKind::Slack,
        via: VoteVia::Reaction,
        at: "2026-11-22T12:02:00Z".into(),
    });
    view.state = HoldState::Approved {
        decided_at: "2026-11-22T12:02:00Z".into(),
        by: vec!["carol@example.com".into(), "dave@example.com".into()],
    };
    view
}

struct Setup {
    fake: FakeTeams,
    channel: Arc<TeamsChannel>,
    url: String,
    _dir: tempfile::TempDir,
}

async fn setup(sink: Arc<Sink>) -> Setup {
    setup_with_password(sink, PASSWORD).await
}

async fn setup_with_password(sink: Arc<Sink>, password: &str) -> Setup {
    let fake = FakeTeams::start(APP_ID, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("app-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let channel = Arc::new(
        TeamsChannel::new(&TeamsConfig {
            app_id: APP_ID.into(),
            app_password_file: password_file,
            service_url: fake.service_url(),
            conversation_id: fake.conversation_id().into(),
            token_url: Some(fake.token_url()),
            openid_metadata_url: Some(fake.openid_metadata_url()),
            issuer: Some(fake.issuer().into()),
        })
        .await
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/teams/messages", listener.local_addr().unwrap());
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

fn fact<'a>(card: &'a Value, title: &str) -> &'a str {
    card["body"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["facts"].as_array())
        .flatten()
        .find(|f| f["title"] == title)
        .unwrap_or_else(|| panic!("no fact {title} in {card}"))["value"]
        .as_str()
        .unwrap()
}

fn texts(card: &Value) -> Vec<String> {
    card["body"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect()
}

fn has_no_actions(card: &Value) -> bool {
    card.get("actions")
        .is_none_or(|a| a.as_array().is_some_and(|a| a.is_empty()))
}

#[tokio::test]
async fn post_sends_an_adaptive_card_with_execute_actions() {
    let s = setup(Sink::replying(vec![])).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    assert_eq!(posted.channel, ChannelKind::Teams);
    assert_eq!(posted.channel_id, s.fake.conversation_id());

    let activity = s
        .fake
        .wait_for(WAIT, |a| a.method == "POST" && a.target.is_none())
        .await
        .unwrap();
    assert_eq!(activity.id, posted.message_ref);
    assert_eq!(activity.conversation_id, s.fake.conversation_id());
    assert_eq!(activity.body["type"], "message");
    assert_eq!(
        activity.body["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = activity.card().unwrap();
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    let lines = texts(card);
    assert!(lines.contains(&"ci-deployer wants to delete apps/deployments web in prod".into()));
    assert!(
        lines.contains(&"Waiting: 1 of 2 approvals".into()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("carol@example.com approved (Teams button")),
        "{lines:?}"
    );
    assert_eq!(fact(card, "Principal"), "ci-deployer");
    assert_eq!(fact(card, "Owner"), "alice@example.com");
    assert_eq!(fact(card, "Team"), "payments");
    assert_eq!(fact(card, "Verb"), "delete");
    assert_eq!(fact(card, "Resource"), "apps/deployments");
    assert_eq!(fact(card, "Namespace"), "prod");
    assert_eq!(fact(card, "Name"), "web");
    assert_eq!(fact(card, "Rule"), "prod-deletes");
    assert_eq!(fact(card, "Approvers"), "platform-leads (quorum 2)");
    assert_eq!(fact(card, "Expires"), "2026-11-22T12:30:00Z");
    // User text cannot smuggle in a link.
    assert_eq!(
        fact(card, "Reason"),
        "roll back \\[bad\\](https://evil.example) release"
    );
    let actions = card["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2);
    for (action, verb) in actions.iter().zip(["approve", "deny"]) {
        assert_eq!(action["type"], "Action.Execute");
        assert_eq!(action["verb"], verb);
        assert_eq!(action["data"], json!({"approval_id": APPROVAL}));
    }

    // The access token is cached across calls.
    s.channel.post(&pending()).await.unwrap();
    assert_eq!(s.fake.token_requests(), 1);
}

#[tokio::test]
async fn update_after_the_decision_has_no_actions() {
    let s = setup(Sink::replying(vec![])).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    s.channel.update(&posted, &approved()).await.unwrap();

    let update = s.fake.wait_for(WAIT, |a| a.method == "PUT").await.unwrap();
    assert_eq!(update.target.as_deref(), Some(posted.message_ref.as_str()));
    assert_eq!(update.body["id"], posted.message_ref.as_str());
    let card = update.card().unwrap();
    assert!(has_no_actions(card), "{card}");
    assert!(texts(card).contains(&"Approved by carol@example.com, dave@example.com".into()));

    // An activity the connector does not know is a ChannelError naming the status and code.
    let gone = Posted {
        message_ref: "404404".into(),
        ..posted
    };
    let err = s.channel.update(&gone, &approved()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("404"), "{text}");
    assert!(text.contains("ActivityNotFoundInConversation"), "{text}");
}

#[tokio::test]
async fn announce_replies_in_the_thread() {
    let s = setup(Sink::replying(vec![])).await;
    let posted = s.channel.post(&pending()).await.unwrap();
    s.channel.announce(&posted, &approved()).await.unwrap();

    let reply = s
        .fake
        .wait_for(WAIT, |a| a.method == "POST" && a.target.is_some())
        .await
        .unwrap();
    assert_eq!(reply.target.as_deref(), Some(posted.message_ref.as_str()));
    assert_eq!(reply.body["replyToId"], posted.message_ref.as_str());
    assert_eq!(reply.body["textFormat"], "plain");
    let text = reply.body["text"].as_str().unwrap();
    assert!(
        text.starts_with("Approved by carol@example.com, dave@example.com"),
        "{text}"
    );
    assert!(text.contains("carol@example.com approved via Teams button"));
    assert!(text.contains("dave@example.com approved via Slack reaction"));
}

#[tokio::test]
async fn an_invoke_becomes_a_vote_and_answers_with_the_refreshed_card() {
    let sink = Sink::replying(vec![VoteReply::Counted {
        view: approved(),
        repeat: false,
    }]);
    let s = setup(sink.clone()).await;
    s.channel.post(&pending()).await.unwrap();

    let (status, answer) = s.fake.invoke(&s.url, CAROL, APPROVAL, "approve").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["statusCode"], 200);
    assert_eq!(answer["type"], "application/vnd.microsoft.card.adaptive");
    let card = &answer["value"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert!(has_no_actions(card));
    assert!(texts(card).contains(&"Approved by carol@example.com, dave@example.com".into()));
    assert_eq!(
        sink.calls(),
        vec![VoteCall {
            approval_id: APPROVAL.into(),
            channel: ChannelKind::Teams,
            chat_user_id: CAROL.into(),
            via: VoteVia::Button,
            ballot: Ballot::Approve,
            comment: None,
            authentication: gatehouse_approval::channel::by_chat(),
        }]
    );

    // A deny, still pending after it: the refreshed card keeps its actions.
    sink.replies.lock().unwrap().push_back(VoteReply::Counted {
        view: pending(),
        repeat: false,
    });
    let (status, answer) = s.fake.invoke(&s.url, "29:1dave", APPROVAL, "deny").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["value"]["actions"].as_array().unwrap().len(), 2);
    let calls = sink.calls();
    assert_eq!(calls[1].ballot, Ballot::Deny);
    assert_eq!(calls[1].chat_user_id, "29:1dave");
}

#[tokio::test]
async fn a_refused_vote_is_answered_to_the_user_only() {
    let sink = Sink::replying(vec![VoteReply::Refused {
        reason: "You may not approve your own request.".into(),
        view: Some(Box::new(pending())),
    }]);
    let s = setup(sink.clone()).await;
    let (status, answer) = s.fake.invoke(&s.url, CAROL, APPROVAL, "approve").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({
            "statusCode": 200,
            "type": "application/vnd.microsoft.activity.message",
            "value": "You may not approve your own request.",
        })
    );
    assert_eq!(sink.calls().len(), 1);

    // A verb that is not a vote is not counted.
    let (status, answer) = s.fake.invoke(&s.url, CAROL, APPROVAL, "maybe").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["type"], "application/vnd.microsoft.activity.message");
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn forged_and_missing_tokens_are_refused_and_not_counted() {
    let sink = Sink::replying(vec![]);
    let s = setup(sink.clone()).await;
    let activity = s.fake.invoke_activity(CAROL, APPROVAL, "approve");

    let forged = s.fake.jwt(&s.fake.claims(), TokenKey::Forged);
    assert_eq!(
        s.fake.send(&s.url, Some(&forged), &activity).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.fake.send(&s.url, None, &activity).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.fake.send(&s.url, Some("not-a-jwt"), &activity).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Algorithm confusion: an HS256 token "signed" with public material.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(s.fake.kid().to_owned()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &s.fake.claims(),
        &jsonwebtoken::EncodingKey::from_secret(s.fake.kid().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        s.fake.send(&s.url, Some(&hs), &activity).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(sink.calls().is_empty());
}

#[tokio::test]
async fn wrong_audience_issuer_times_and_service_urls_are_refused() {
    let sink = Sink::replying(vec![]);
    let s = setup(sink.clone()).await;
    let send = |claims: Value, activity: Value| {
        let token = s.fake.jwt(&claims, TokenKey::Published);
        let url = s.url.clone();
        let fake = &s.fake;
        async move { fake.send(&url, Some(&token), &activity).await.0 }
    };
    let activity = || s.fake.invoke_activity(CAROL, APPROVAL, "approve");
    let claims = || s.fake.claims();

    let mut c = claims();
    c["aud"] = json!("another-bot");
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "audience"
    );

    let mut c = claims();
    c["iss"] = json!("https://sts.windows.net/evil/");
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "issuer"
    );

    let mut c = claims();
    c["exp"] = json!(now() - 400);
    c["nbf"] = json!(now() - 4000);
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "expired"
    );

    let mut c = claims();
    c["nbf"] = json!(now() + 400);
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "not yet valid"
    );

    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "no exp"
    );

    let mut c = claims();
    c["serviceurl"] = json!("https://smba.trafficmanager.net/amer/");
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "token for another connector"
    );

    let mut a = activity();
    a["serviceUrl"] = json!("https://attacker.example/");
    assert_eq!(
        send(claims(), a).await,
        StatusCode::UNAUTHORIZED,
        "activity naming another connector"
    );

    let mut c = claims();
    c.as_object_mut().unwrap().remove("serviceurl");
    assert_eq!(
        send(c, activity()).await,
        StatusCode::UNAUTHORIZED,
        "no serviceurl"
    );

    let mut a = activity();
    a["channelId"] = json!("slack");
    assert_eq!(
        send(claims(), a).await,
        StatusCode::UNAUTHORIZED,
        "key not endorsed for the channel"
    );
    assert!(sink.calls().is_empty());

    // Within the five minutes' leeway a just-expired token still counts.
    sink.replies.lock().unwrap().push_back(VoteReply::Counted {
        view: pending(),
        repeat: false,
    });
    let mut c = claims();
    c["exp"] = json!(now() - 200);
    assert_eq!(send(c, activity()).await, StatusCode::OK, "leeway");
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn unknown_kids_are_refused_and_keys_refetched_at_most_once_a_minute() {
    let sink = Sink::replying(vec![VoteReply::Counted {
        view: pending(),
        repeat: false,
    }]);
    let s = setup(sink.clone()).await;
    let unknown = s.fake.jwt(&s.fake.claims(), TokenKey::UnknownKid);
    let activity = s.fake.invoke_activity(CAROL, APPROVAL, "approve");
    assert_eq!(
        s.fake.send(&s.url, Some(&unknown), &activity).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.fake.key_fetches(), 1, "fetched on first use");
    let activity = s.fake.invoke_activity(CAROL, APPROVAL, "approve");
    assert_eq!(
        s.fake.send(&s.url, Some(&unknown), &activity).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.fake.key_fetches(), 1, "no refetch within the minute");
    assert!(sink.calls().is_empty());
    // The published key still verifies from the cache.
    let (status, _) = s.fake.invoke(&s.url, CAROL, APPROVAL, "approve").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.fake.key_fetches(), 1);
}

#[tokio::test]
async fn the_same_invoke_twice_counts_once() {
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
    let activity = s.fake.invoke_activity(CAROL, APPROVAL, "approve");
    let token = s.fake.jwt(&s.fake.claims(), TokenKey::Published);
    let (first, _) = s.fake.send(&s.url, Some(&token), &activity).await;
    assert_eq!(first, StatusCode::OK);
    let (second, answer) = s.fake.send(&s.url, Some(&token), &activity).await;
    assert_eq!(second, StatusCode::CONFLICT);
    assert!(
        answer.as_str().unwrap().contains("already received"),
        "{answer}"
    );
    assert_eq!(sink.calls().len(), 1);
}

#[tokio::test]
async fn other_activities_are_acknowledged_without_a_vote() {
    let sink = Sink::replying(vec![]);
    let s = setup(sink.clone()).await;
    let token = s.fake.jwt(&s.fake.claims(), TokenKey::Published);
    let mut message = s.fake.invoke_activity(CAROL, APPROVAL, "approve");
    message["type"] = json!("message");
    message["text"] = json!("approve please");
    let (status, body) = s.fake.send(&s.url, Some(&token), &message).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
    let mut update = s.fake.invoke_activity(CAROL, APPROVAL, "approve");
    update["type"] = json!("conversationUpdate");
    assert_eq!(
        s.fake.send(&s.url, Some(&token), &update).await.0,
        StatusCode::OK
    );
    // Unsigned, even a harmless activity is refused.
    assert_eq!(
        s.fake.send(&s.url, None, &message).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert!(sink.calls().is_empty());
}

#[tokio::test]
async fn auth_failures_never_show_the_secret() {
    let wrong = "Zz9~not.the-password_known-to-azure";
    let s = setup_with_password(Sink::replying(vec![]), wrong).await;
    let err = s.channel.post(&pending()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("invalid_client"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    let debug = format!("{:?}", s.channel);
    assert!(!debug.contains(wrong), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
    assert!(s.fake.activities().is_empty());

    // A missing secret file is named, and nothing else.
    let err = TeamsChannel::new(&TeamsConfig {
        app_id: APP_ID.into(),
        app_password_file: "/nonexistent/app-password".into(),
        service_url: s.fake.service_url(),
        conversation_id: s.fake.conversation_id().into(),
        token_url: None,
        openid_metadata_url: None,
        issuer: None,
    })
    .await
    .unwrap_err();
    assert!(err.contains("app_password_file"), "{err}");
}

#[tokio::test]
async fn the_page_is_linked_and_a_step_up_hold_offers_only_the_link() {
    let s = setup(Sink::replying(vec![])).await;
    let page = format!("https://approvals.example.com/holds/{APPROVAL}");
    let mut linked = pending();
    linked.page_url = Some(page.clone());
    s.channel.post(&linked).await.unwrap();
    let mut step_up = linked.clone();
    step_up.step_up = true;
    s.channel.post(&step_up).await.unwrap();

    // Each post returned once the fake had the activity.
    let posts: Vec<Value> = s
        .fake
        .activities()
        .iter()
        .filter(|a| a.method == "POST" && a.target.is_none())
        .map(|a| a.card().unwrap().clone())
        .collect();
    assert_eq!(posts.len(), 2);
    let kinds = |card: &Value| -> Vec<String> {
        card["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["type"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(
        kinds(&posts[0]),
        ["Action.Execute", "Action.Execute", "Action.OpenUrl"]
    );
    assert_eq!(posts[0]["actions"][2]["url"], page.as_str());
    // A vote on a step-up hold counts only from the page: no button here votes.
    assert_eq!(kinds(&posts[1]), ["Action.OpenUrl"]);
    assert_eq!(posts[1]["actions"][0]["url"], page.as_str());
}
