//! Just-in-time approvals end to end: kubectl (or a raw client) → proxy holds → the approval
//! service counts votes → the proxy forwards or refuses. Real nats-server, real kubectl, real
//! ledger; votes through the approval service's API here, through chat platforms in
//! `chat.rs`.

use base64::Engine as _;
use gatehouse_events::Ballot;
use gatehouse_tests::{BedOptions, DEADLINE, Event, TestBed, eventually};

type Result = anyhow::Result<()>;

/// Requests that reached the cluster with `method` at a path ending in `suffix`.
async fn reached(bed: &TestBed, method: &str, suffix: &str) -> anyhow::Result<usize> {
    Ok(bed
        .upstream_requests()
        .await?
        .iter()
        .filter(|r| r.authenticated_user.as_deref() == Some(bed.proxy_identity()))
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .count())
}

fn of<'a>(events: &'a [Event], subject: &str, name: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.subject() == subject && e.name() == name)
        .collect()
}

/// The demo approvers plus `ci-deployer` itself in `sre`, to prove it still cannot approve
/// its own request.
fn approvers_with_requester() -> (String, String) {
    let text = format!(
        "{}  - identity: ci-deployer\n    groups: [sre]\n",
        gatehouse_up::demo::APPROVERS_YAML
    );
    ("approvers.yaml".into(), text)
}

/// The demo policy with prod deletes expiring after two seconds.
fn policy_with_short_holds() -> (String, String) {
    let text = gatehouse_up::demo::POLICY_YAML.replace(
        "      hold_timeout: 10m\n      grant_window: 15m\n",
        "      hold_timeout: 2s\n",
    );
    assert_ne!(text, gatehouse_up::demo::POLICY_YAML);
    ("policy.yaml".into(), text)
}

/// Creates these ConfigMaps in `prod`, behind the proxy's back.
async fn configmaps_in_prod(bed: &TestBed, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        let out = bed
            .admin_kubectl(&["create", "configmap", name, "-n", "prod"], None)
            .await?;
        anyhow::ensure!(out.success, "creating configmap {name}: {}", out.stderr);
    }
    Ok(())
}

async fn pending_hold(
    client: &gatehouse_approval::client::ApprovalClient,
) -> anyhow::Result<gatehouse_approval::api::HoldSummary> {
    eventually("a pending hold", DEADLINE, || async {
        client.list(false).await.ok()?.into_iter().next()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delete_goes_through_once_approved_and_its_grant_admits_the_next() -> Result {
    let bed = TestBed::start().await?;
    configmaps_in_prod(&bed, &["one", "two", "three"]).await?;
    let kubectl =
        bed.kubectl_spawn("ci-deployer", &["delete", "configmap", "one", "-n", "prod"])?;
    let bob = bed.approvals_as("bob@example.com")?;
    let hold = pending_hold(&bob).await?;
    assert_eq!(
        (
            hold.principal.as_str(),
            hold.verb.as_str(),
            hold.resource.as_str(),
            hold.namespace.as_str(),
            hold.name.as_str(),
            hold.rule.as_str(),
            hold.state.as_str(),
        ),
        (
            "ci-deployer",
            "delete",
            "configmaps",
            "prod",
            "one",
            "deployer-delete-prod",
            "pending"
        )
    );
    assert_eq!(hold.owner.as_deref(), Some("alice@example.com"));
    assert_eq!(hold.approver_groups, ["sre"]);
    // Held means held: the cluster has not seen it.
    assert_eq!(reached(&bed, "DELETE", "/configmaps/one").await?, 0);

    let result = bob
        .vote(&hold.approval_id, Ballot::Approve, Some("cleanup is fine"))
        .await?;
    assert!(result.counted && !result.repeat, "{result:?}");
    // A double click changes nothing.
    let again = bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
    assert!(again.counted && again.repeat, "{again:?}");

    let out = kubectl.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configmap \"one\" deleted"), "{stdout}");
    assert_eq!(reached(&bed, "DELETE", "/configmaps/one").await?, 1);

    // The approval opened a grant: the same kind of delete passes without a vote.
    let grants = bob.grants().await?;
    assert_eq!(grants.len(), 1, "{grants:?}");
    let grant = &grants[0];
    assert_eq!(
        (
            grant.principal.as_str(),
            grant.verb.as_str(),
            grant.resource.as_str(),
            grant.namespace.as_str()
        ),
        ("ci-deployer", "delete", "configmaps", "prod")
    );
    assert_eq!(grant.approved_by, ["bob@example.com"]);
    let out = bed
        .kubectl("ci-deployer", &["delete", "configmap", "two", "-n", "prod"])
        .await?;
    assert!(out.success, "{}", out.stderr);
    assert!(bob.list(false).await?.is_empty());

    // Revoked, the grant admits nothing more.
    let revoked = bob.revoke(&grant.grant_id, Some("done")).await?;
    assert_eq!(revoked.grant_id, grant.grant_id);
    assert!(bob.grants().await?.is_empty());
    // Revocation reaches proxies through the grants bucket, a moment after the API answers.
    eventually("the proxy to drop the revoked grant", DEADLINE, || async {
        let (_, metrics) = bed.admin_get("/metrics").await.ok()?;
        metrics
            .lines()
            .any(|l| l == "gatehouse_proxy_grants 0")
            .then_some(())
    })
    .await?;
    let kubectl = bed.kubectl_spawn(
        "ci-deployer",
        &["delete", "configmap", "three", "-n", "prod"],
    )?;
    let held_again = pending_hold(&bob).await?;
    assert_eq!(held_again.name, "three");
    bob.vote(&held_again.approval_id, Ballot::Deny, Some("enough"))
        .await?;
    let out = kubectl.wait_with_output().await?;
    assert!(!out.status.success());
    // Every service did all of the above under its own NATS user, refused nothing.
    assert_eq!(bed.nats_refusals()?, Vec::<String>::new());
    // Those users are real: the proxy's may not publish a decision on the stack's server.
    let proxy_bus = gatehouse_bus::Bus::connect(
        &bed.stack()
            .nats_config(gatehouse::nats_server::NatsRole::Proxy),
        "forger",
    )
    .await?;
    let forged = proxy_bus
        .enqueue_bytes(
            "gatehouse.approval.decided".into(),
            "forged",
            bytes::Bytes::from_static(b"{}"),
        )
        .await?
        .wait()
        .await;
    assert!(forged.is_err(), "a proxy's decision was acked: {forged:?}");
    let refused = bed.nats_refusals()?;
    assert!(
        refused
            .iter()
            .any(|l| l.contains("gatehouse.approval.decided")),
        "{refused:?}"
    );

    let finished = bed.finish().await?;
    let events = &finished.events;
    let first = &hold.request_id;
    let received = of(events, first, "request.received");
    assert_eq!(received[0].data()["decision"]["action"], "approve");
    let held = of(events, first, "request.held");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].data()["approval_id"], hold.approval_id.as_str());
    assert_eq!(held[0].data()["grant_window_s"], 900);
    let votes = of(events, first, "approval.vote");
    assert_eq!(votes.len(), 1, "a repeated vote is not recorded twice");
    assert_eq!(votes[0].data()["approver"], "bob@example.com");
    assert_eq!(votes[0].data()["comment"], "cleanup is fine");
    let decided = of(events, first, "approval.decided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].data()["outcome"], "approved");
    assert_eq!(decided[0].data()["grant_id"], grant.grant_id.as_str());
    assert_eq!(of(events, first, "grant.issued").len(), 1);
    assert_eq!(of(events, first, "request.forwarded").len(), 1);
    // The second delete: allowed by the grant, never held.
    let second: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.name() == "request.received"
                && e.data()["request"]["name"] == "two"
                && e.data()["request"]["verb"] == "delete"
        })
        .collect();
    assert_eq!(second.len(), 1);
    let reason = second[0].data()["decision"]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(reason.contains(&grant.grant_id), "{reason}");
    assert!(of(events, second[0].subject(), "request.held").is_empty());
    assert_eq!(
        events
            .iter()
            .filter(|e| e.name() == "grant.revoked")
            .count(),
        1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_hold_is_refused_with_its_approval_id_and_only_approvers_may_vote() -> Result {
    let bed = TestBed::start_with(BedOptions {
        config_files: vec![approvers_with_requester()],
        ..BedOptions::default()
    })
    .await?;
    let out = bed
        .admin_kubectl(&["create", "configmap", "settings", "-n", "prod"], None)
        .await?;
    assert!(out.success, "{}", out.stderr);
    let auth = format!("Bearer {}", bed.mint("ci-deployer")?);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-gatehouse-reason", "rotate the\tstale settings "),
    ];
    let request = bed.request_with(
        "DELETE",
        "/api/v1/namespaces/prod/configmaps/settings",
        &headers,
        None,
    );
    let votes = async {
        let alice = bed.approvals_as("alice@example.com")?;
        let hold = pending_hold(&alice).await?;
        // Control characters (a tab here) become spaces in the stated reason.
        assert_eq!(hold.reason.as_deref(), Some("rotate the stale settings"));

        let own = bed
            .approvals_as("ci-deployer")?
            .vote(&hold.approval_id, Ballot::Approve, None)
            .await?;
        assert!(!own.counted);
        // alice owns ci-deployer: four eyes refuse her approval, and say why.
        let owner = alice.vote(&hold.approval_id, Ballot::Approve, None).await?;
        assert!(!owner.counted, "{owner:?}");
        let why = owner.refusal.as_deref().unwrap_or("");
        assert!(
            why.contains("you own ci-deployer") && why.contains("deployer-delete-prod"),
            "{why}"
        );
        assert!(
            own.refusal
                .as_deref()
                .unwrap_or("")
                .contains("your own request"),
            "{own:?}"
        );
        let outsider = bed
            .approvals_as("carol@example.com")?
            .vote(&hold.approval_id, Ballot::Approve, None)
            .await?;
        assert!(!outsider.counted);
        assert!(
            outsider
                .refusal
                .as_deref()
                .unwrap_or("")
                .contains("not in any of the approver groups for this request (sre)"),
            "{outsider:?}"
        );
        // Someone with no registry entry at all cannot even list holds.
        let stranger = bed
            .approvals_as("mallory@example.com")?
            .list(false)
            .await
            .unwrap_err();
        assert!(stranger.to_string().contains("403"), "{stranger}");
        // `gatehouse approvals vote` as someone not in the registry: refused, exit 1 (not 2).
        {
            #[derive(clap::Parser)]
            struct Cli {
                #[command(subcommand)]
                command: gatehouse::approvals_cmd::ApprovalsCommand,
            }
            let token = bed.home().join("mallory.jwt");
            std::fs::write(&token, bed.mint("mallory@example.com")?)?;
            let cli = <Cli as clap::Parser>::try_parse_from([
                "gatehouse".as_ref(),
                "vote".as_ref(),
                hold.approval_id.as_ref(),
                "--approve".as_ref(),
                "--server".as_ref(),
                bed.stack().approval_url().as_ref(),
                "--token-file".as_ref(),
                token.as_os_str(),
            ])?;
            let code = gatehouse::approvals_cmd::approvals(cli.command).await?;
            assert_eq!(code, std::process::ExitCode::from(1));
        }
        // Ids that are not ULIDs are refused at the edge with a 400, not looked up.
        for bad in ["not-an-id", "01M97TMFSJFREH331J9MPWQEZ%00", &"Z".repeat(26)] {
            let refused = alice.show(bad).await.unwrap_err().to_string();
            assert!(
                refused.contains("HTTP 400") && refused.contains("not an approval id"),
                "{bad}: {refused}"
            );
            let refused = alice.vote(bad, Ballot::Approve, None).await.unwrap_err();
            assert!(refused.to_string().contains("HTTP 400"), "{bad}: {refused}");
            let refused = alice.revoke(bad, None).await.unwrap_err().to_string();
            assert!(refused.contains("not a grant id"), "{bad}: {refused}");
        }
        // A comment that is too long or holds control characters is refused, not cut.
        for bad in ["x".repeat(1025), "ok\u{1b}[31mred".to_owned()] {
            let refused = alice
                .vote(&hold.approval_id, Ballot::Deny, Some(&bad))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains("HTTP 400") && refused.contains("comment"),
                "{refused}"
            );
        }
        // A well-formed id nobody issued is simply not there.
        let unknown = alice
            .show(&ulid::Ulid::new().to_string())
            .await
            .unwrap_err();
        assert!(unknown.to_string().contains("HTTP 404"), "{unknown}");

        let denied = alice
            .vote(
                &hold.approval_id,
                Ballot::Deny,
                Some("not during the freeze"),
            )
            .await?;
        assert!(denied.counted, "{denied:?}");
        assert_eq!(denied.hold.map(|h| h.state).as_deref(), Some("denied"));
        anyhow::Ok(hold)
    };
    let (reply, hold) = tokio::join!(request, votes);
    let (reply, hold) = (reply?, hold?);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.body["kind"], "Status");
    assert_eq!(reply.body["reason"], "Forbidden");
    let message = reply.body["message"].as_str().unwrap_or("");
    for part in [
        hold.approval_id.as_str(),
        "denied by alice@example.com",
        "not during the freeze",
    ] {
        assert!(message.contains(part), "{message} lacks {part}");
    }
    assert_eq!(reached(&bed, "DELETE", "/configmaps/settings").await?, 0);

    let finished = bed.finish().await?;
    let events = &finished.events;
    let votes = of(events, &hold.request_id, "approval.vote");
    let refused: Vec<_> = votes
        .iter()
        .filter(|v| v.data()["counted"] == false)
        .collect();
    assert_eq!(refused.len(), 3, "every refused vote is on record");
    let denied = of(events, &hold.request_id, "request.denied");
    assert_eq!(denied[0].data()["reason"], "approval_denied");
    assert_eq!(denied[0].data()["rule"], "deployer-delete-prod");
    let decided = of(events, &hold.request_id, "approval.decided");
    assert_eq!(decided[0].data()["outcome"], "denied");
    assert_eq!(
        decided[0].data()["votes"][0]["approver"],
        "alice@example.com"
    );
    assert!(of(events, &hold.request_id, "grant.issued").is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_nobody_decides_expires() -> Result {
    let bed = TestBed::start_with(BedOptions {
        config_files: vec![policy_with_short_holds()],
        ..BedOptions::default()
    })
    .await?;
    let out = bed
        .kubectl("ci-deployer", &["delete", "pod", "api", "-n", "prod"])
        .await?;
    assert!(!out.success);
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
    assert_eq!(reached(&bed, "DELETE", "/pods/api").await?, 0);
    let bob = bed.approvals_as("bob@example.com")?;
    let holds = bob.list(true).await?;
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].state, "expired");
    let late = bob
        .vote(&holds[0].approval_id, Ballot::Approve, None)
        .await?;
    assert!(!late.counted, "{late:?}");

    let finished = bed.finish().await?;
    let request_id = &holds[0].request_id;
    let decided = of(&finished.events, request_id, "approval.decided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].data()["outcome"], "expired");
    let denied = of(&finished.events, request_id, "request.denied");
    assert_eq!(denied[0].data()["reason"], "approval_expired");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_withdraws_its_hold() -> Result {
    let bed = TestBed::start().await?;
    let mut kubectl = bed.kubectl_spawn("ci-deployer", &["delete", "pod", "api", "-n", "prod"])?;
    let bob = bed.approvals_as("bob@example.com")?;
    let hold = pending_hold(&bob).await?;
    kubectl.kill().await?;
    let withdrawn = eventually("the hold to be withdrawn", DEADLINE, || async {
        bob.show(&hold.approval_id)
            .await
            .ok()
            .filter(|h| h.state == "withdrawn")
    })
    .await?;
    assert_eq!(withdrawn.request_id, hold.request_id);
    let vote = bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
    assert!(!vote.counted);
    assert!(
        vote.refusal.as_deref().unwrap_or("").contains("withdrawn"),
        "{vote:?}"
    );
    assert_eq!(reached(&bed, "DELETE", "/pods/api").await?, 0);

    let finished = bed.finish().await?;
    let events = of(&finished.events, &hold.request_id, "request.withdrawn");
    assert_eq!(events.len(), 1);
    assert!(
        events[0].data()["reason"]
            .as_str()
            .unwrap_or("")
            .contains("disconnected")
    );
    assert!(of(&finished.events, &hold.request_id, "approval.decided").is_empty());
    Ok(())
}

/// The approval service's signed statement for `hold`, signed with `key`, valid for
/// `valid_for` seconds and naming `request_id` as the request it decides.
fn decision_signed_by(
    key: &gatehouse_proof::checkpoint::NoteSigner,
    hold: &gatehouse_approval::api::HoldSummary,
    request_id: &str,
    valid_for: i64,
) -> gatehouse_events::ApprovalDecided {
    use gatehouse_events::*;
    let now = time::OffsetDateTime::now_utc();
    let decision = ApprovalDecided {
        request_id: request_id.to_owned(),
        approval_id: hold.approval_id.clone(),
        outcome: ApprovalOutcome::Approved,
        votes: vec![CountedVote {
            approver: "bob@example.com".into(),
            vote: Ballot::Approve,
            channel: ChannelKind::Api,
            via: VoteVia::Command,
            at: envelope::format_rfc3339(now),
            comment: None,
        }],
        decided_at: envelope::format_rfc3339(now),
        grant_id: None,
        attestation: None,
    };
    let statement = DecisionStatement {
        decision: decision.clone(),
        principal: hold.principal.clone(),
        rule: hold.rule.clone(),
        request: RequestInfo {
            is_resource_request: true,
            path: format!("/api/v1/namespaces/prod/configmaps/{}", hold.name),
            verb: "delete".into(),
            api_prefix: "api".into(),
            api_version: "v1".into(),
            namespace: "prod".into(),
            resource: "configmaps".into(),
            name: hold.name.clone(),
            ..RequestInfo::default()
        },
        valid_until: envelope::format_rfc3339(now + time::Duration::seconds(valid_for)),
    };
    ApprovalDecided {
        attestation: Some(gatehouse_proof::attest::sign(
            key,
            DECISION_STATEMENT,
            &statement,
        )),
        ..decision
    }
}

/// A grant letting ci-deployer delete configmaps in prod for ten minutes, signed by `key`.
fn grant_signed_by(
    key: Option<&gatehouse_proof::checkpoint::NoteSigner>,
) -> gatehouse_events::GrantIssued {
    use gatehouse_events::*;
    let grant = GrantIssued {
        request_id: EventId::new().to_string(),
        grant_id: EventId::new().to_string(),
        approval_id: EventId::new().to_string(),
        principal: "ci-deployer".into(),
        rule: "deployer-delete-prod".into(),
        verb: "delete".into(),
        api_group: String::new(),
        resource: "configmaps".into(),
        subresource: String::new(),
        namespace: "prod".into(),
        expires_at: envelope::format_rfc3339(
            time::OffsetDateTime::now_utc() + time::Duration::minutes(10),
        ),
        approved_by: vec!["bob@example.com".into()],
        attestation: None,
    };
    GrantIssued {
        attestation: key.map(|k| gatehouse_proof::attest::sign(k, GRANT_STATEMENT, &grant)),
        ..grant
    }
}

/// `gatehouse_proxy_bus_refused_total`, summed over its labels.
async fn refused_total(bed: &TestBed) -> anyhow::Result<u64> {
    let (_, metrics) = bed.admin_get("/metrics").await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("gatehouse_proxy_bus_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_decisions_and_grants_on_the_bus_release_and_admit_nothing() -> Result {
    use gatehouse_events::{Envelope, Payload};
    let logs = gatehouse_tests::LogCapture::install();
    let bed = TestBed::start().await?;
    configmaps_in_prod(&bed, &["one", "two"]).await?;
    let kubectl =
        bed.kubectl_spawn("ci-deployer", &["delete", "configmap", "one", "-n", "prod"])?;
    let bob = bed.approvals_as("bob@example.com")?;
    let hold = pending_hold(&bob).await?;

    // Whoever can publish decisions on the bus (here with the approval service's own NATS
    // credential, as if it leaked), without the approval service's signing key.
    let bus = gatehouse_bus::Bus::connect(
        &bed.stack()
            .nats_config(gatehouse::nats_server::NatsRole::Approval),
        "forger",
    )
    .await?;
    let jetstream = bus.jetstream().clone();
    let attacker =
        gatehouse_proof::checkpoint::NoteSigner::from_seed("approval.gatehouse.local", [0x42; 32])?;
    // An insider's view: the real key, misused (a decision for another request; one past its
    // validity), to show the proxy checks what a good signature says, too.
    let real =
        gatehouse_proof::attest::load_signing_key(&bed.stack().dir.join("keys/approval.key"))
            .map_err(anyhow::Error::msg)?;
    let mut unsigned = decision_signed_by(&attacker, &hold, &hold.request_id, 300);
    unsigned.attestation = None;
    // Signed votes, but the event beside the signature says otherwise.
    let mut flipped = decision_signed_by(&real, &hold, &hold.request_id, 300);
    flipped.votes.clear();
    let forged = [
        unsigned,
        decision_signed_by(&attacker, &hold, &hold.request_id, 300),
        flipped,
        decision_signed_by(
            &real,
            &hold,
            &gatehouse_events::EventId::new().to_string(),
            300,
        ),
        decision_signed_by(&real, &hold, &hold.request_id, -5),
    ];
    for decision in forged {
        let event = Envelope::new("gatehouse/approval/up", &hold.request_id, decision);
        jetstream
            .publish(
                gatehouse_events::ApprovalDecided::subject(),
                event.to_bytes()?.into(),
            )
            .await?
            .await?;
    }
    eventually("five refused decisions", DEADLINE, || async {
        (refused_total(&bed).await.ok()? >= 5).then_some(())
    })
    .await?;
    assert_eq!(reached(&bed, "DELETE", "/configmaps/one").await?, 0);
    assert_eq!(bob.list(false).await?.len(), 1, "still pending");

    // Forged grants for the same kind of delete: unsigned, and signed by the wrong key.
    let grants = jetstream.get_key_value("gatehouse_grants").await?;
    for grant in [grant_signed_by(None), grant_signed_by(Some(&attacker))] {
        grants
            .put(&grant.grant_id, serde_json::to_vec(&grant)?.into())
            .await?;
    }
    eventually("two refused grants", DEADLINE, || async {
        (refused_total(&bed).await.ok()? >= 7).then_some(())
    })
    .await?;
    let second = bed.kubectl_spawn("ci-deployer", &["delete", "configmap", "two", "-n", "prod"])?;
    let held_too = eventually("the second delete held, not admitted", DEADLINE, || async {
        bob.list(false)
            .await
            .ok()?
            .into_iter()
            .find(|h| h.name == "two")
    })
    .await?;
    assert_eq!(reached(&bed, "DELETE", "/configmaps/two").await?, 0);

    // The real decisions still decide.
    bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
    let out = kubectl.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bob.vote(&held_too.approval_id, Ballot::Deny, None).await?;
    assert!(!second.wait_with_output().await?.status.success());
    assert_eq!(reached(&bed, "DELETE", "/configmaps/two").await?, 0);

    if let Some(logs) = &logs {
        let text = logs.text();
        assert!(
            text.contains("alarm=\"bus.refused\""),
            "no alarm in the log"
        );
        assert!(!text.contains("PRIVATE+KEY"), "a key in the log");
    }
    let finished = bed.finish().await?;
    let refused: Vec<(String, String, String)> = finished
        .events
        .iter()
        .filter(|e| e.name() == "bus.refused")
        .map(|e| {
            let d = e.data();
            let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
            (s("message"), s("problem"), s("approval_id"))
        })
        .collect();
    let decision = |problem: &str| {
        (
            "decision".to_owned(),
            problem.to_owned(),
            hold.approval_id.clone(),
        )
    };
    for expected in [
        decision("unsigned"),
        decision("unknown_key"),
        decision("mismatch"),
        decision("expired"),
    ] {
        assert!(
            refused.contains(&expected),
            "{expected:?} not in {refused:?}"
        );
    }
    assert_eq!(
        refused.iter().filter(|r| r.0 == "decision").count(),
        5,
        "{refused:?}"
    );
    let grant_problems: Vec<&str> = refused
        .iter()
        .filter(|r| r.0 == "grant")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(grant_problems, ["unsigned", "unknown_key"]);
    // The one decision that counted is the signed one, recorded with its signature.
    let decided = of(&finished.events, &hold.request_id, "approval.decided");
    assert!(decided.iter().any(|e| {
        e.data()["attestation"]
            .as_str()
            .is_some_and(|a| a.starts_with("gatehouse.dev/approval-decision/v1\n"))
    }));
    Ok(())
}

/// Whether the proxy shows a key matching `needle` among those it trusts now (it re-reads its
/// `approval_keys` file every few seconds).
async fn in_force(bed: &TestBed, needle: &str) -> bool {
    let Ok((_, metrics)) = bed.admin_get("/metrics").await else {
        return false;
    };
    metrics
        .lines()
        .any(|l| l.starts_with("gatehouse_proxy_approval_keys{") && l.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_key_rotates_without_a_restart_and_a_retired_key_stops_counting() -> Result {
    let bed = TestBed::start().await?;
    configmaps_in_prod(&bed, &["one", "two", "three"]).await?;
    let delete =
        |name: &str| bed.kubectl_spawn("ci-deployer", &["delete", "configmap", name, "-n", "prod"]);
    let bob = bed.approvals_as("bob@example.com")?;

    // Under the first key: approved, and a grant opened.
    let kubectl = delete("one")?;
    let hold = pending_hold(&bob).await?;
    bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
    assert!(kubectl.wait_with_output().await?.status.success());

    // Rotate: proxies trust the new key beside the old one, then the approval service signs
    // with the new key. Nothing restarts.
    let keys = bed.stack().dir.join("keys");
    let old_vkey = std::fs::read_to_string(keys.join("approval-keys"))?
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap_or_default()
        .to_owned();
    let new =
        gatehouse_proof::checkpoint::NoteSigner::from_seed("approval.gatehouse.local", [0x5a; 32])?;
    let new_label = format!(
        "approval.gatehouse.local/{}",
        new.key_id()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    std::fs::write(
        keys.join("approval-keys"),
        format!("{}\n{old_vkey}\n", new.verifier().to_vkey()),
    )?;
    eventually("the proxy to trust the new key", DEADLINE, || async {
        in_force(&bed, &new_label).await.then_some(())
    })
    .await?;
    gatehouse::kubeconfig::write_private(
        &keys.join("approval.key"),
        &format!("{}\n", new.to_skey()),
    )?;
    // The grant the old key signed still admits the same kind of delete.
    let out = bed
        .kubectl("ci-deployer", &["delete", "configmap", "two", "-n", "prod"])
        .await?;
    assert!(out.success, "{}", out.stderr);

    // The old key's window ends: its grant no longer counts, so the next delete is held, and
    // the new key's decision releases it.
    std::fs::write(
        keys.join("approval-keys"),
        format!(
            "{}\n{old_vkey} until=2000-01-01T00:00:00Z\n",
            new.verifier().to_vkey()
        ),
    )?;
    eventually("the proxy to retire the old key", DEADLINE, || async {
        in_force(&bed, "until=2000-01-01T00:00:00Z")
            .await
            .then_some(())
    })
    .await?;
    let kubectl = delete("three")?;
    let held = eventually("the third delete held", DEADLINE, || async {
        bob.list(false)
            .await
            .ok()?
            .into_iter()
            .find(|h| h.name == "three")
    })
    .await?;
    bob.vote(&held.approval_id, Ballot::Approve, None).await?;
    let out = kubectl.wait_with_output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let finished = bed.finish().await?;
    let signer_of = |request_id: &str| -> Vec<String> {
        of(&finished.events, request_id, "approval.decided")
            .iter()
            .filter_map(|e| e.data()["attestation"].as_str())
            .flat_map(gatehouse_proof::checkpoint::note_signers)
            .map(|(_, id)| id)
            .collect()
    };
    let new_id: String = new.key_id().iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(signer_of(&hold.request_id), std::slice::from_ref(&new_id));
    assert_eq!(signer_of(&held.request_id), [new_id]);
    assert!(
        finished.events.iter().all(|e| e.name() != "bus.refused"),
        "nothing genuine was refused"
    );
    Ok(())
}

/// A policy that holds changes to Secrets in `apps` (the demo lets CI change them freely).
fn policy_holding_secret_patches() -> (String, String) {
    let text = gatehouse_up::demo::POLICY_YAML.replace(
        "rules:\n",
        "rules:\n\
         \x20 - id: secret-changes-held\n\
         \x20   action: approve\n\
         \x20   identities: [ci-deployer]\n\
         \x20   verbs: [patch, update]\n\
         \x20   resources: [secrets]\n\
         \x20   namespaces: [apps]\n\
         \x20   approval:\n\
         \x20     approver_groups: [sre]\n\
         \x20     hold_timeout: 10m\n\n",
    );
    assert_ne!(text, gatehouse_up::demo::POLICY_YAML);
    ("policy.yaml".into(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_secret_change_is_previewed_masked_and_nothing_of_it_reaches_the_ledger() -> Result {
    let bed = TestBed::start_with(BedOptions {
        config_files: vec![policy_holding_secret_patches()],
        ..BedOptions::default()
    })
    .await?;
    // The new value is as secret as the old one (`s3cr3t-demo-password`, from the demo cluster).
    let patch = r#"{"stringData":{"password":"n3w-s3cr3t-value"}}"#;
    let kubectl = bed.kubectl_spawn(
        "ci-deployer",
        &[
            "patch",
            "secret",
            "db-credentials",
            "-n",
            "apps",
            "-p",
            patch,
        ],
    )?;
    let bob = bed.approvals_as("bob@example.com")?;
    let hold = pending_hold(&bob).await?;
    let change = hold.change.as_ref().expect("the patch is previewed");
    assert_eq!(change.note, None, "{change:?}");
    let masked = serde_json::json!(gatehouse_proxy::mask::MASKED_BASE64);
    for (side, object) in [("current", &change.current), ("proposed", &change.proposed)] {
        let object = object
            .as_ref()
            .unwrap_or_else(|| panic!("no {side} object"));
        assert_eq!(object["kind"], "Secret", "{side}: {object}");
        assert_eq!(object["data"]["password"], masked, "{side}: {object}");
        assert!(
            object["metadata"].get("managedFields").is_none(),
            "{side}: {object}"
        );
    }
    let vote = bob.vote(&hold.approval_id, Ballot::Approve, None).await?;
    assert!(vote.counted, "{vote:?}");
    let out = tokio::time::timeout(DEADLINE, kubectl.wait_with_output()).await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Neither the old value nor the new one is anywhere in the ledger, in any encoding.
    let finished = bed.finish().await?;
    let base64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for secret in ["s3cr3t-demo-password", "n3w-s3cr3t-value"] {
        for event in &finished.events {
            let text = event.value.to_string();
            assert!(
                !text.contains(secret) && !text.contains(&base64(secret)),
                "{} carries {secret}",
                event.name()
            );
        }
    }
    Ok(())
}
