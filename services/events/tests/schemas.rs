//! Every event type round-trips through its hand-written schema, and the schemas are strict
//! enough to catch a drifted field.

use gatehouse_events::envelope::source;
use gatehouse_events::schema::{SchemaError, SchemaSet, default_dir};
use gatehouse_events::*;

fn schemas() -> SchemaSet {
    SchemaSet::load(&default_dir()).expect("schemas compile")
}

fn request_id() -> String {
    EventId::new().to_string()
}

fn received(rid: &str) -> Envelope<RequestReceived> {
    Envelope::new(
        &source("proxy", "replica-1"),
        rid,
        RequestReceived {
            request_id: rid.to_owned(),
            identity: Some(Identity {
                issuer: "https://issuer.example".into(),
                subject: "ci-deployer".into(),
                principal: "ci-deployer".into(),
                registered: true,
                owner: Some("alice@example.com".into()),
                team: Some("platform".into()),
                purpose: Some("deploys apps".into()),
                groups: vec!["deployers".into()],
                attributes: [("environment".to_owned(), "prod".to_owned())].into(),
            }),
            source: Source {
                ip: "127.0.0.1".into(),
                port: 50123,
                forwarded_for: vec![],
            },
            user_agent: Some("kubectl/v1.32.4".into()),
            method: "GET".into(),
            path: "/api/v1/namespaces/apps/pods".into(),
            query: Some("limit=500".into()),
            request: RequestInfo {
                is_resource_request: true,
                path: "/api/v1/namespaces/apps/pods".into(),
                verb: "list".into(),
                api_prefix: "api".into(),
                api_group: String::new(),
                api_version: "v1".into(),
                namespace: "apps".into(),
                resource: "pods".into(),
                subresource: String::new(),
                name: String::new(),
            },
            decision: Decision {
                action: DecisionAction::Allow,
                rule: Some("deployer-apps".into()),
                reason: "rule deployer-apps allows it".into(),
            },
            body: None,
            record: RecordLevel::Metadata,
            content: None,
        },
    )
}

#[test]
fn every_type_has_a_schema() {
    let set = schemas();
    let mut types: Vec<_> = set.event_types().collect();
    types.sort();
    assert_eq!(
        types,
        [
            "dev.gatehouse.approval.decided.v1",
            "dev.gatehouse.approval.posted.v1",
            "dev.gatehouse.approval.vote.v1",
            "dev.gatehouse.audit.accessed.v1",
            "dev.gatehouse.bus.refused.v1",
            "dev.gatehouse.grant.issued.v1",
            "dev.gatehouse.grant.revoked.v1",
            "dev.gatehouse.ledger.gap.v1",
            "dev.gatehouse.ledger.pruned.v1",
            "dev.gatehouse.request.denied.v1",
            "dev.gatehouse.request.forwarded.v1",
            "dev.gatehouse.request.held.v1",
            "dev.gatehouse.request.received.v1",
            "dev.gatehouse.request.withdrawn.v1",
            "dev.gatehouse.response.completed.v1",
            "dev.gatehouse.session.data.v1",
            "dev.gatehouse.session.ended.v1",
            "dev.gatehouse.session.started.v1",
            "dev.gatehouse.witness.refused.v1",
        ]
    );
}

#[test]
fn samples_of_every_type_validate() {
    let set = schemas();
    let rid = request_id();
    let src = source("proxy", "replica-1");
    set.validate(&received(&rid).to_bytes().unwrap()).unwrap();

    let mut unauthenticated = received(&rid);
    unauthenticated.data.identity = None;
    unauthenticated.data.request = RequestInfo {
        is_resource_request: false,
        path: "/version".into(),
        verb: "get".into(),
        ..RequestInfo::default()
    };
    unauthenticated.data.decision = Decision {
        action: DecisionAction::Deny,
        rule: None,
        reason: "no bearer token".into(),
    };
    unauthenticated.data.body = Some(BodyDigest::of(b"{}"));
    set.validate(&unauthenticated.to_bytes().unwrap()).unwrap();

    let mut recorded = received(&rid);
    let body = br#"{"kind":"ConfigMap","data":{"a":"b"}}"#;
    recorded.data.record = RecordLevel::Request;
    recorded.data.body = Some(BodyDigest::of(body));
    recorded.data.content = Some(RecordedBody::capture(
        Some("application/json"),
        body,
        BodyDigest::of(body),
        16,
    ));
    set.validate(&recorded.to_bytes().unwrap()).unwrap();
    recorded.data.content = Some(RecordedBody::omitted(
        Some("application/vnd.kubernetes.protobuf"),
        BodyDigest::of(b"k8s\0"),
    ));
    set.validate(&recorded.to_bytes().unwrap()).unwrap();

    let denied = Envelope::new(
        &src,
        &rid,
        RequestDenied {
            request_id: rid.clone(),
            reason: DenialReason::Policy,
            status: 403,
            message: "no rule allows it".into(),
            rule: None,
        },
    );
    set.validate(&denied.to_bytes().unwrap()).unwrap();

    let forwarded = Envelope::new(
        &src,
        &rid,
        RequestForwarded {
            request_id: rid.clone(),
            upstream: "https://127.0.0.1:6443".into(),
            impersonated_user: "ci-deployer".into(),
            impersonated_groups: vec!["deployers".into()],
        },
    );
    set.validate(&forwarded.to_bytes().unwrap()).unwrap();

    let completed = Envelope::new(
        &src,
        &rid,
        ResponseCompleted {
            request_id: rid.clone(),
            status: 200,
            outcome: ResponseOutcome::ClientDisconnected,
            body: BodyDigest::of(b"{\"kind\":\"PodList\"}"),
            duration_ms: 1.25,
            masked_fields: 0,
            content: Some(RecordedBody::capture(
                None,
                &[0xff, 0x00, 0x01],
                BodyDigest::of(&[0xff, 0x00, 0x01]),
                2,
            )),
        },
    );
    set.validate(&completed.to_bytes().unwrap()).unwrap();

    let sid = request_id();
    let started = Envelope::new(
        &src,
        &sid,
        SessionStarted {
            session_id: sid.clone(),
            request_id: rid.clone(),
            kind: SessionKind::Exec,
            transport: "websocket".into(),
            protocol: "v5.channel.k8s.io".into(),
            principal: "ci-deployer".into(),
            namespace: "apps".into(),
            pod: "web-0".into(),
            container: None,
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            tty: true,
            stdin: true,
            ports: vec![],
        },
    );
    set.validate(&started.to_bytes().unwrap()).unwrap();
    for (seq, channel, port, resize) in [
        (
            0,
            SessionChannel::Resize,
            None,
            Some(TerminalSize {
                width: 80,
                height: 24,
            }),
        ),
        (1, SessionChannel::Stdout, None, None),
        (2, SessionChannel::PortOut, Some(8080), None),
    ] {
        let data = Envelope::new(
            &src,
            &sid,
            SessionData {
                session_id: sid.clone(),
                seq,
                at_ms: 3.5,
                channel,
                port,
                offset: 0,
                data: "aGk=".into(),
                masked: 0,
                resize,
            },
        );
        set.validate(&data.to_bytes().unwrap()).unwrap();
    }
    let ended = Envelope::new(
        &src,
        &sid,
        SessionEnded {
            session_id: sid.clone(),
            request_id: rid.clone(),
            end: SessionEnd::Closed,
            exit_code: Some(3),
            message: Some("command terminated with non-zero exit code".into()),
            duration_ms: 10.0,
            chunks: 3,
            bytes_from_client: 10,
            bytes_from_upstream: 20,
        },
    );
    set.validate(&ended.to_bytes().unwrap()).unwrap();
}

#[test]
fn recorded_bodies_are_cut_on_character_boundaries() {
    let text = "héllo".as_bytes();
    let cut = RecordedBody::capture(None, text, BodyDigest::of(text), 2);
    assert_eq!(cut.encoding, BodyEncoding::Text);
    assert_eq!(cut.data, "h");
    assert!(cut.truncated);
    let whole = RecordedBody::capture(None, text, BodyDigest::of(text), 100);
    assert_eq!((whole.data.as_str(), whole.truncated), ("héllo", false));
    let binary = RecordedBody::capture(None, &[0xff, 1, 2, 3], BodyDigest::of(&[0xff]), 3);
    assert_eq!(
        (binary.encoding, binary.data.as_str()),
        (BodyEncoding::Base64, "/wEC")
    );
    assert!(binary.truncated);
}

fn violations(set: &SchemaSet, value: serde_json::Value) -> Vec<String> {
    match set.validate(&serde_json::to_vec(&value).unwrap()) {
        Err(SchemaError::Invalid { violations, .. }) => violations,
        other => panic!("expected schema violations, got {other:?}"),
    }
}

#[test]
fn schemas_catch_drift() {
    let set = schemas();
    let good = serde_json::to_value(received(&request_id())).unwrap();

    let mut extra_attribute = good.clone();
    extra_attribute["traceparent"] = "00-abc".into();
    assert!(!violations(&set, extra_attribute).is_empty());

    let mut extra_data_field = good.clone();
    extra_data_field["data"]["token"] = "eyJ...".into();
    assert!(!violations(&set, extra_data_field).is_empty());

    let mut bad_id = good.clone();
    bad_id["id"] = "not-a-ulid".into();
    assert!(!violations(&set, bad_id).is_empty());

    let mut local_time = good.clone();
    local_time["time"] = "2026-11-22T12:00:00+01:00".into();
    assert!(!violations(&set, local_time).is_empty());

    let mut bad_verb = good.clone();
    bad_verb["data"]["request"]["verb"] = "frobnicate".into();
    assert!(!violations(&set, bad_verb).is_empty());

    let mut missing_decision = good.clone();
    missing_decision["data"]
        .as_object_mut()
        .unwrap()
        .remove("decision");
    assert!(!violations(&set, missing_decision).is_empty());

    let mut base64_data = good.clone();
    base64_data["data"]["content"] = serde_json::json!({
        "content_type": null, "encoding": "omitted", "data": "c2VjcmV0", "truncated": true,
        "whole": {"bytes": 6, "blake3": "0".repeat(64)}
    });
    assert!(
        !violations(&set, base64_data).is_empty(),
        "omitted bodies carry no data"
    );

    let mut unknown_type = good;
    unknown_type["type"] = "dev.gatehouse.request.teleported.v1".into();
    assert!(matches!(
        set.validate(&serde_json::to_vec(&unknown_type).unwrap()),
        Err(SchemaError::UnknownType(_))
    ));
}

#[test]
fn approval_events_validate_and_refuse_drift() {
    let set = schemas();
    let src = source("proxy", "replica-1");
    let rid = request_id();
    let aid = request_id();
    let gid = request_id();
    let at = "2026-11-22T14:00:00Z".to_owned();
    let sample = received(&rid).data;
    let held = Envelope::new(
        &src,
        &rid,
        RequestHeld {
            request_id: rid.clone(),
            approval_id: aid.clone(),
            rule: "deployer-scale-prod".into(),
            identity: sample.identity.clone().unwrap(),
            request: sample.request.clone(),
            approver_groups: vec!["platform-leads".into()],
            quorum: 2,
            expires_at: at.clone(),
            grant_window_s: Some(1800),
            reason: Some("hotfix for INC-42".into()),
            four_eyes: FourEyes::OwnerAndTeam,
            step_up: Some(gatehouse_events::StepUp {
                max_age_s: 300,
                amr: vec!["mfa".into()],
                acr: Vec::new(),
            }),
            content: None,
            change: Some(gatehouse_events::ChangePreview {
                current: Some(serde_json::json!({"spec": {"replicas": 2}})),
                proposed: Some(serde_json::json!({"spec": {"replicas": 5}})),
                read_at: at.clone(),
                note: None,
            }),
        },
    );
    set.validate(&held.to_bytes().unwrap()).unwrap();
    assert!(
        String::from_utf8(held.to_bytes().unwrap())
            .unwrap()
            .contains(r#""four_eyes":"owner-and-team""#)
    );

    let approval = source("approval", "replica-1");
    let posted = Envelope::new(
        &approval,
        &rid,
        ApprovalPosted {
            request_id: rid.clone(),
            approval_id: aid.clone(),
            channel: ChannelKind::Slack,
            channel_id: "C0123".into(),
            message_ref: "1732284000.000100".into(),
        },
    );
    set.validate(&posted.to_bytes().unwrap()).unwrap();
    let refused = Envelope::new(
        &approval,
        &rid,
        ApprovalVote {
            request_id: rid.clone(),
            approval_id: aid.clone(),
            approver: Some("ci-deployer".into()),
            chat_user_id: "U999".into(),
            channel: ChannelKind::Slack,
            via: VoteVia::Reaction,
            vote: Ballot::Approve,
            comment: None,
            counted: false,
            refusal: Some("you cannot vote on your own request".into()),
            authentication: Some(gatehouse_events::VoterAuthentication {
                method: gatehouse_events::VoterAuthMethod::SignIn,
                issuer: Some("https://idp.example.com".into()),
                subject: Some("carol@example.com".into()),
                auth_time: Some(at.clone()),
                amr: vec!["pwd".into(), "mfa".into()],
                acr: None,
            }),
        },
    );
    set.validate(&refused.to_bytes().unwrap()).unwrap();
    let decided = Envelope::new(
        &approval,
        &rid,
        ApprovalDecided {
            request_id: rid.clone(),
            approval_id: aid.clone(),
            outcome: ApprovalOutcome::Approved,
            votes: vec![CountedVote {
                approver: "carol@example.com".into(),
                vote: Ballot::Approve,
                channel: ChannelKind::Teams,
                via: VoteVia::Button,
                at: at.clone(),
                comment: Some("ok".into()),
            }],
            decided_at: at.clone(),
            grant_id: Some(gid.clone()),
            attestation: None,
        },
    );
    set.validate(&decided.to_bytes().unwrap()).unwrap();
    let mut attested = decided.clone();
    attested.data.attestation = Some("gatehouse.dev/approval-decision/v1\n{}\n\n— k AAAA\n".into());
    set.validate(&attested.to_bytes().unwrap()).unwrap();
    let refused_decision = Envelope::new(
        &src,
        &aid,
        BusRefused {
            message: RefusedMessage::Decision,
            problem: RefusalProblem::UnknownKey,
            detail: "it is signed by a key this service does not trust (k/0011aabb)".into(),
            approval_id: Some(aid.clone()),
            request_id: Some(rid.clone()),
            grant_id: None,
            key: None,
            origin: "stream GATEHOUSE sequence 42".into(),
        },
    );
    set.validate(&refused_decision.to_bytes().unwrap()).unwrap();
    let mut bad_problem = refused_decision.to_bytes().unwrap();
    let text = String::from_utf8(bad_problem.clone())
        .unwrap()
        .replace("unknown_key", "suspicious");
    bad_problem = text.into_bytes();
    assert!(set.validate(&bad_problem).is_err());
    let issued = Envelope::new(
        &approval,
        &rid,
        GrantIssued {
            request_id: rid.clone(),
            grant_id: gid.clone(),
            approval_id: aid.clone(),
            principal: "ci-deployer".into(),
            rule: "deployer-scale-prod".into(),
            verb: "patch".into(),
            api_group: "apps".into(),
            resource: "deployments".into(),
            subresource: "scale".into(),
            namespace: "prod".into(),
            expires_at: at.clone(),
            approved_by: vec!["carol@example.com".into()],
            attestation: None,
        },
    );
    set.validate(&issued.to_bytes().unwrap()).unwrap();
    let revoked = Envelope::new(
        &approval,
        &gid,
        GrantRevoked {
            grant_id: gid.clone(),
            principal: "ci-deployer".into(),
            revoked_by: "carol@example.com".into(),
            reason: None,
        },
    );
    set.validate(&revoked.to_bytes().unwrap()).unwrap();
    let withdrawn = Envelope::new(
        &source("proxy", "replica-1"),
        &rid,
        RequestWithdrawn {
            request_id: rid.clone(),
            approval_id: aid.clone(),
            reason: "the client disconnected while the request was held".into(),
        },
    );
    set.validate(&withdrawn.to_bytes().unwrap()).unwrap();
    let access_id = EventId::new().to_string();
    let accessed = Envelope::new(
        &source("evidence", "replica-1"),
        &access_id,
        AuditAccessed {
            access_id: access_id.clone(),
            auditor: "auditor@example.com".into(),
            action: AuditAction::Bundle,
            parameters: [("principal".to_owned(), "ci-deployer".to_owned())].into(),
            status: 200,
            events: Some(42),
        },
    );
    set.validate(&accessed.to_bytes().unwrap()).unwrap();
    let prune_id = EventId::new().to_string();
    let pruned = Envelope::new(
        &source("evidence", "replica-1"),
        &prune_id,
        LedgerPruned {
            prune_id: prune_id.clone(),
            first_index: 0,
            last_index: 9,
            entries: 10,
            kept_by_legal_holds: 2,
            retention_days: 2192,
            cutoff: "2024-01-01T00:00:00Z".into(),
        },
    );
    set.validate(&pruned.to_bytes().unwrap()).unwrap();
    let gap = Envelope::new(
        &source("evidence", "replica-1"),
        &EventId::new().to_string(),
        LedgerGap {
            first_missing_sequence: 10,
            last_missing_sequence: 12,
            detected_at: "2026-11-22T15:00:00Z".into(),
        },
    );
    set.validate(&gap.to_bytes().unwrap()).unwrap();
    let refused = Envelope::new(
        &source("evidence", "witness"),
        &EventId::new().to_string(),
        WitnessRefused {
            witness: "w1".into(),
            reason: "inconsistent".into(),
            size: 57,
            detail: "bad consistency proof".into(),
        },
    );
    set.validate(&refused.to_bytes().unwrap()).unwrap();
    let mut odd = serde_json::to_value(&refused).unwrap();
    odd["data"]["reason"] = "sulking".into();
    assert!(!violations(&set, odd).is_empty());
    let mut short = serde_json::to_value(&pruned).unwrap();
    short["data"]["retention_days"] = 30.into();
    assert!(!violations(&set, short).is_empty());
    let mut unknown = serde_json::to_value(&accessed).unwrap();
    unknown["data"]["action"] = "delete".into();
    assert!(!violations(&set, unknown).is_empty());
    let mut no_approval = serde_json::to_value(&withdrawn).unwrap();
    no_approval["data"]["approval_id"] = "".into();
    assert!(!violations(&set, no_approval).is_empty());

    // A hold nobody can approve, or that needs no approval, is not a hold.
    let mut no_approvers = serde_json::to_value(&held).unwrap();
    no_approvers["data"]["approver_groups"] = serde_json::json!([]);
    assert!(!violations(&set, no_approvers).is_empty());
    let mut no_quorum = serde_json::to_value(&held).unwrap();
    no_quorum["data"]["quorum"] = 0.into();
    assert!(!violations(&set, no_quorum).is_empty());
    // Decision times are UTC, and an outcome is one of three.
    let mut local = serde_json::to_value(&decided).unwrap();
    local["data"]["decided_at"] = "2026-11-22T15:00:00+01:00".into();
    assert!(!violations(&set, local).is_empty());
    let mut maybe = serde_json::to_value(&decided).unwrap();
    maybe["data"]["outcome"] = "maybe".into();
    assert!(!violations(&set, maybe).is_empty());
}
