//! The access-review report: what it counts, how it renders, and the command over a ledger.

use std::process::ExitCode;

use clap::Parser;
use gatehouse::report::{ReportArgs, ReportFormat, run};
use gatehouse_evidence::Ledger;
use gatehouse_evidence::report::{self, AccessReview, HoldOutcome, IdentityReview, parse_time};
use gatehouse_evidence::store::NewEntry;
use gatehouse_proxy::policy::Policy;
use serde_json::{Value, json};

const POLICY_YAML: &str = r#"
rules:
  - id: discovery
    description: anyone may read discovery
    action: allow
    verbs: [get]
    non_resource_urls: ["/api", "/version"]
  - id: deployer-scale-prod
    description: scaling prod needs a platform lead
    action: approve
    identities: [ci-deployer]
    verbs: [update, patch]
    api_groups: [apps]
    resources: [deployments/scale]
    namespaces: [prod]
    approval:
      approver_groups: [platform-leads]
      grant_window: 30m
  - id: deployer-delete-prod
    action: approve
    identities: [ci-deployer]
    verbs: [delete]
    resources: ["*"]
    namespaces: [prod]
    approval:
      approver_groups: [sre]
  - id: deployer-apps
    description: CI deploys into apps
    action: allow
    identities: [ci-deployer]
    verbs: [get, list, watch, create, update, patch, delete]
    resources: ["*"]
    namespaces: [apps]
  - id: deployer-no-secrets-elsewhere
    action: deny
    identities: [ci-deployer]
    verbs: ["*"]
    resources: [secrets]
  - id: deployer-read
    description: CI may look around the cluster
    action: allow
    identities: ["ci-*"]
    verbs: [get, list]
    api_groups: ["", apps]
    resources: ["*"]
  - id: deployers-logs
    description: deployers read logs
    action: allow
    groups: [deployers]
    verbs: [get]
    resources: [pods/log]
  - id: readers-no-secrets
    action: deny
    groups: [readers]
    verbs: ["*"]
    resources: [secrets]
  - id: readers
    action: allow
    groups: [readers]
    verbs: [get, list, watch]
    resources: ["*"]
"#;

// ----- events, shaped as the proxy and the approval service publish them -----

fn event(kind: &str, time: &str, subject: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{subject}-{kind}"),
        "source": "gatehouse/proxy/test",
        "type": format!("dev.gatehouse.{kind}.v1"),
        "time": time,
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn identity(principal: &str, owner: &str, team: &str, groups: &[&str]) -> Value {
    json!({
        "issuer": "https://issuer.test",
        "subject": format!("sub-{principal}"),
        "principal": principal,
        "registered": true,
        "owner": owner,
        "team": team,
        "purpose": null,
        "groups": groups,
        "attributes": {},
    })
}

fn unregistered(principal: &str) -> Value {
    json!({
        "issuer": "https://issuer.test",
        "subject": "x",
        "principal": principal,
        "registered": false,
        "owner": null,
        "team": null,
        "purpose": null,
        "groups": [],
    })
}

fn info(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Value {
    json!({
        "is_resource_request": true,
        "path": format!("/apis/{group}/v1/namespaces/{ns}/{resource}/{name}"),
        "verb": verb,
        "api_prefix": if group.is_empty() { "api" } else { "apis" },
        "api_group": group,
        "api_version": "v1",
        "namespace": ns,
        "resource": resource,
        "subresource": sub,
        "name": name,
    })
}

fn received(
    time: &str,
    id: &str,
    who: &Value,
    request: &Value,
    action: &str,
    rule: Option<&str>,
) -> Value {
    event(
        "request.received",
        time,
        id,
        json!({
            "request_id": id,
            "identity": who,
            "source": { "ip": "10.0.0.9", "port": 40000, "forwarded_for": [] },
            "user_agent": "kubectl/v1.30",
            "method": "GET",
            "path": request["path"],
            "query": null,
            "request": request,
            "decision": { "action": action, "rule": rule, "reason": format!("{action} by {rule:?}") },
            "body": null,
            "record": "metadata",
            "content": null,
        }),
    )
}

fn denied(time: &str, id: &str, reason: &str, status: u16, rule: Option<&str>, msg: &str) -> Value {
    event(
        "request.denied",
        time,
        id,
        json!({ "request_id": id, "reason": reason, "status": status, "message": msg, "rule": rule }),
    )
}

fn forwarded(time: &str, id: &str) -> Value {
    event(
        "request.forwarded",
        time,
        id,
        json!({ "request_id": id, "upstream": "https://10.0.0.1:6443",
                "impersonated_user": "x", "impersonated_groups": [] }),
    )
}

fn completed(time: &str, id: &str, status: u16) -> Value {
    event(
        "response.completed",
        time,
        id,
        json!({ "request_id": id, "status": status, "outcome": "complete",
                "body": { "bytes": 2, "blake3": "00" }, "duration_ms": 3.0,
                "masked_fields": 0, "content": null }),
    )
}

#[allow(clippy::too_many_arguments)]
fn held(
    time: &str,
    id: &str,
    approval: &str,
    rule: &str,
    who: &Value,
    request: &Value,
    approvers: &[&str],
    reason: Option<&str>,
) -> Value {
    event(
        "request.held",
        time,
        id,
        json!({ "request_id": id, "approval_id": approval, "rule": rule, "identity": who,
                "request": request, "approver_groups": approvers, "quorum": 1,
                "expires_at": "2024-06-01T23:00:00Z", "grant_window_s": null, "reason": reason }),
    )
}

fn decided(
    time: &str,
    id: &str,
    approval: &str,
    outcome: &str,
    votes: Value,
    grant: Option<&str>,
) -> Value {
    event(
        "approval.decided",
        time,
        id,
        json!({ "request_id": id, "approval_id": approval, "outcome": outcome, "votes": votes,
                "decided_at": time, "grant_id": grant }),
    )
}

/// Two identities across allow, deny, held and approved, held and denied, held and withdrawn,
/// a grant (later revoked) and a request under it; one request without an identity; and two
/// requests just outside 2024-06-01.
fn events() -> Vec<Value> {
    let ci = identity(
        "ci-deployer",
        "alice@example.com",
        "platform",
        &["deployers"],
    );
    let bot = identity(
        "readonly-bot",
        "bob@example.com",
        "observability",
        &["readers"],
    );
    let pods_apps = info("get", "", "pods", "", "apps", "web");
    let scale = info("patch", "apps", "deployments", "scale", "prod", "web");
    let delete_cm = info("delete", "", "configmaps", "", "prod", "settings");
    let delete_pod = info("delete", "", "pods", "", "prod", "api");
    vec![
        received(
            "2024-05-31T23:59:59Z",
            "r0",
            &ci,
            &pods_apps,
            "allow",
            Some("deployer-apps"),
        ),
        forwarded("2024-05-31T23:59:59Z", "r0"),
        completed("2024-06-01T00:00:01Z", "r0", 200),
        received(
            "2024-06-01T09:00:00Z",
            "r1",
            &ci,
            &pods_apps,
            "allow",
            Some("deployer-apps"),
        ),
        forwarded("2024-06-01T09:00:00Z", "r1"),
        completed("2024-06-01T09:00:01Z", "r1", 200),
        received(
            "2024-06-01T09:01:00Z",
            "r2",
            &ci,
            &pods_apps,
            "allow",
            Some("deployer-apps"),
        ),
        forwarded("2024-06-01T09:01:00Z", "r2"),
        completed("2024-06-01T09:01:01Z", "r2", 200),
        received(
            "2024-06-01T09:02:00Z",
            "r3",
            &ci,
            &info("list", "", "secrets", "", "prod", ""),
            "deny",
            Some("deployer-no-secrets-elsewhere"),
        ),
        denied(
            "2024-06-01T09:02:00Z",
            "r3",
            "policy",
            403,
            Some("deployer-no-secrets-elsewhere"),
            "ci-deployer may not list secrets in namespace \"prod\"",
        ),
        received(
            "2024-06-01T09:30:00Z",
            "r7",
            &bot,
            &info("list", "", "pods", "", "default", ""),
            "allow",
            Some("readers"),
        ),
        forwarded("2024-06-01T09:30:00Z", "r7"),
        completed("2024-06-01T09:30:01Z", "r7", 403),
        received(
            "2024-06-01T09:31:00Z",
            "r8",
            &bot,
            &info("get", "", "secrets", "", "kube-system", "db"),
            "deny",
            Some("readers-no-secrets"),
        ),
        denied(
            "2024-06-01T09:31:00Z",
            "r8",
            "policy",
            403,
            Some("readers-no-secrets"),
            "no",
        ),
        received(
            "2024-06-01T10:00:00Z",
            "r4",
            &ci,
            &scale,
            "approve",
            Some("deployer-scale-prod"),
        ),
        held(
            "2024-06-01T10:00:01Z",
            "r4",
            "A4",
            "deployer-scale-prod",
            &ci,
            &scale,
            &["platform-leads"],
            Some("traffic spike, INC-42"),
        ),
        decided(
            "2024-06-01T10:02:00Z",
            "r4",
            "A4",
            "approved",
            json!([{ "approver": "carol@example.com", "vote": "approve", "channel": "slack",
                     "via": "button", "at": "2024-06-01T10:02:00Z", "comment": null }]),
            Some("G4"),
        ),
        event(
            "grant.issued",
            "2024-06-01T10:02:00Z",
            "r4",
            json!({ "request_id": "r4", "grant_id": "G4", "approval_id": "A4",
                    "principal": "ci-deployer", "rule": "deployer-scale-prod", "verb": "patch",
                    "api_group": "apps", "resource": "deployments", "subresource": "scale",
                    "namespace": "prod", "expires_at": "2024-06-01T10:32:00Z",
                    "approved_by": ["carol@example.com"] }),
        ),
        forwarded("2024-06-01T10:02:01Z", "r4"),
        completed("2024-06-01T10:02:02Z", "r4", 200),
        // Under the grant: allowed by the approve rule without a vote.
        received(
            "2024-06-01T10:05:00Z",
            "r11",
            &ci,
            &scale,
            "allow",
            Some("deployer-scale-prod"),
        ),
        forwarded("2024-06-01T10:05:00Z", "r11"),
        completed("2024-06-01T10:05:01Z", "r11", 200),
        event(
            "grant.revoked",
            "2024-06-01T10:30:00Z",
            "G4",
            json!({ "grant_id": "G4", "principal": "ci-deployer", "revoked_by": "alice@example.com",
                    "reason": "incident over" }),
        ),
        received(
            "2024-06-01T11:00:00Z",
            "r5",
            &ci,
            &delete_cm,
            "approve",
            Some("deployer-delete-prod"),
        ),
        held(
            "2024-06-01T11:00:01Z",
            "r5",
            "A5",
            "deployer-delete-prod",
            &ci,
            &delete_cm,
            &["sre"],
            None,
        ),
        decided(
            "2024-06-01T11:03:00Z",
            "r5",
            "A5",
            "denied",
            json!([{ "approver": "bob@example.com", "vote": "deny", "channel": "api",
                     "via": "command", "at": "2024-06-01T11:03:00Z", "comment": "not during the freeze" }]),
            None,
        ),
        denied(
            "2024-06-01T11:03:00Z",
            "r5",
            "approval_denied",
            403,
            Some("deployer-delete-prod"),
            "denied by bob@example.com",
        ),
        received(
            "2024-06-01T12:00:00Z",
            "r6",
            &ci,
            &delete_pod,
            "approve",
            Some("deployer-delete-prod"),
        ),
        held(
            "2024-06-01T12:00:01Z",
            "r6",
            "A6",
            "deployer-delete-prod",
            &ci,
            &delete_pod,
            &["sre"],
            None,
        ),
        event(
            "request.withdrawn",
            "2024-06-01T12:01:00Z",
            "r6",
            json!({ "request_id": "r6", "approval_id": "A6",
                    "reason": "the client disconnected while the request was held" }),
        ),
        // No token at all.
        event(
            "request.received",
            "2024-06-01T13:00:00Z",
            "r12",
            json!({ "request_id": "r12", "identity": null, "request": pods_apps,
                    "decision": { "action": "deny", "rule": null, "reason": "no token" } }),
        ),
        denied(
            "2024-06-01T13:00:00Z",
            "r12",
            "authentication",
            401,
            None,
            "no token",
        ),
        // A session chunk: not part of the review.
        event(
            "session.data",
            "2024-06-01T13:30:00Z",
            "s1",
            json!({ "seq": 0, "data": "aGk=" }),
        ),
        received(
            "2024-06-02T00:00:00Z",
            "r10",
            &ci,
            &pods_apps,
            "allow",
            Some("deployer-apps"),
        ),
    ]
}

fn june_first() -> (Option<time::OffsetDateTime>, Option<time::OffsetDateTime>) {
    (
        Some(parse_time("2024-06-01").unwrap()),
        Some(parse_time("2024-06-02T00:00:00Z").unwrap()),
    )
}

fn policy() -> Policy {
    Policy::from_yaml(POLICY_YAML).unwrap()
}

fn who<'a>(review: &'a AccessReview, principal: &str) -> &'a IdentityReview {
    review
        .identities
        .iter()
        .find(|i| i.principal == principal)
        .unwrap_or_else(|| panic!("{principal} is in the report"))
}

fn activity(id: &IdentityReview, verb: &str, resource: &str, ns: &str) -> report::Counts {
    id.activity
        .iter()
        .find(|a| a.verb == verb && a.resource == resource && a.namespace == ns)
        .unwrap_or_else(|| panic!("{verb} {resource} in {ns:?}: {:#?}", id.activity))
        .counts
}

#[test]
fn counts_what_each_identity_did_in_the_period() {
    let (from, to) = june_first();
    let policy = policy();
    let review = report::build(events().into_iter(), from, to, Some(&policy));

    assert_eq!(review.from.as_deref(), Some("2024-06-01T00:00:00Z"));
    assert_eq!(review.requests, 10, "r0 and r10 are outside the period");
    assert_eq!(review.unidentified_requests, 1);
    assert_eq!(review.events_unreadable, 0);
    let principals: Vec<&str> = review
        .identities
        .iter()
        .map(|i| i.principal.as_str())
        .collect();
    assert_eq!(principals, ["ci-deployer", "readonly-bot"]);

    let ci = who(&review, "ci-deployer");
    assert_eq!(ci.owner.as_deref(), Some("alice@example.com"));
    assert_eq!(ci.team.as_deref(), Some("platform"));
    assert_eq!(ci.groups, ["deployers"]);
    assert!(ci.registered);
    assert_eq!(ci.first_seen, "2024-06-01T09:00:00Z");
    assert_eq!(ci.last_seen, "2024-06-01T12:00:00Z");

    let pods = activity(ci, "get", "pods", "apps");
    assert_eq!(
        (pods.requests, pods.allowed, pods.forwarded, pods.denied),
        (2, 2, 2, 0)
    );
    let secrets = activity(ci, "list", "secrets", "prod");
    assert_eq!(
        (secrets.requests, secrets.denied, secrets.forwarded),
        (1, 1, 0)
    );
    let scale = activity(ci, "patch", "deployments.apps/scale", "prod");
    assert_eq!(
        (scale.requests, scale.held, scale.allowed, scale.forwarded),
        (2, 1, 1, 2),
        "one approved hold, one under its grant"
    );
    let cm = activity(ci, "delete", "configmaps", "prod");
    assert_eq!(
        (cm.requests, cm.held, cm.denied, cm.forwarded),
        (1, 1, 1, 0)
    );
    let t = ci.totals;
    assert_eq!(
        (
            t.requests,
            t.allowed,
            t.held,
            t.denied,
            t.forwarded,
            t.error_responses
        ),
        (7, 3, 3, 2, 4, 0)
    );

    let bot = who(&review, "readonly-bot");
    assert_eq!(bot.owner.as_deref(), Some("bob@example.com"));
    let list = activity(bot, "list", "pods", "default");
    assert_eq!(
        (list.forwarded, list.error_responses),
        (1, 1),
        "the cluster's RBAC refused it"
    );
    assert_eq!(bot.totals.requests, 2);
    assert_eq!(bot.totals.denied, 1);
}

#[test]
fn holds_say_who_approved_or_denied_and_why() {
    let (from, to) = june_first();
    let review = report::build(events().into_iter(), from, to, None);
    let ci = who(&review, "ci-deployer");
    let outcomes: Vec<(&str, HoldOutcome)> = ci
        .holds
        .iter()
        .map(|h| (h.request_id.as_str(), h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("r4", HoldOutcome::Approved),
            ("r5", HoldOutcome::Denied),
            ("r6", HoldOutcome::Withdrawn)
        ]
    );

    let approved = &ci.holds[0];
    assert_eq!(approved.rule.as_deref(), Some("deployer-scale-prod"));
    assert_eq!(approved.approval_id.as_deref(), Some("A4"));
    assert_eq!(approved.approver_groups, ["platform-leads"]);
    assert_eq!(
        approved.stated_reason.as_deref(),
        Some("traffic spike, INC-42")
    );
    assert_eq!(approved.decided_by.len(), 1);
    assert_eq!(approved.decided_by[0].approver, "carol@example.com");
    assert_eq!(approved.decided_by[0].channel, "slack");
    assert_eq!(approved.grant_id.as_deref(), Some("G4"));
    assert_eq!(
        (approved.resource.as_str(), approved.name.as_str()),
        ("deployments.apps/scale", "web")
    );

    let refused = &ci.holds[1];
    assert_eq!(refused.decided_by[0].approver, "bob@example.com");
    assert_eq!(refused.decided_by[0].vote, "deny");
    assert_eq!(
        refused.decided_by[0].comment.as_deref(),
        Some("not during the freeze")
    );
    assert!(ci.holds[2].decided_by.is_empty());
    assert!(
        ci.holds[2]
            .note
            .as_deref()
            .unwrap()
            .contains("disconnected")
    );

    let grant = &ci.grants[0];
    assert_eq!(grant.grant_id, "G4");
    assert_eq!(grant.approved_by, ["carol@example.com"]);
    assert_eq!(grant.revoked_by.as_deref(), Some("alice@example.com"));
    assert_eq!(grant.resource, "deployments.apps/scale");

    let reasons: Vec<(&str, Option<&str>)> = ci
        .denials
        .iter()
        .map(|d| (d.reason.as_str(), d.rule.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("policy", Some("deployer-no-secrets-elsewhere")),
            ("approval_denied", Some("deployer-delete-prod"))
        ]
    );
    assert_eq!(ci.denials[0].status, Some(403));
    assert_eq!(ci.denial_counts.len(), 2);
    assert!(ci.denial_counts.iter().all(|c| c.count == 1));
}

#[test]
fn unused_grants_are_the_rules_that_apply_and_decided_nothing() {
    let (from, to) = june_first();
    let policy = policy();
    let review = report::build(events().into_iter(), from, to, Some(&policy));

    let ci = who(&review, "ci-deployer");
    let unused: Vec<(&str, &str)> = ci
        .unused_grants
        .as_ref()
        .unwrap()
        .iter()
        .map(|u| (u.rule.as_str(), u.applies_via.as_str()))
        .collect();
    // Deny rules are not grants; readers is for another group; the rest were used.
    assert_eq!(
        unused,
        [
            ("discovery", "anyone"),
            ("deployer-read", "identity pattern ci-*"),
            ("deployers-logs", "group deployers"),
        ]
    );
    let read = &ci.unused_grants.as_ref().unwrap()[1];
    assert_eq!(read.action, "allow");
    assert_eq!(
        read.description.as_deref(),
        Some("CI may look around the cluster")
    );
    assert_eq!(read.verbs, "get, list");
    assert_eq!(read.resources, "* (API groups \"\" (core), apps)");
    assert_eq!(read.namespaces, "any, and cluster scope");
    let discovery = &ci.unused_grants.as_ref().unwrap()[0];
    assert_eq!(discovery.resources, "URLs /api, /version");

    let bot = who(&review, "readonly-bot");
    let unused: Vec<&str> = bot
        .unused_grants
        .as_ref()
        .unwrap()
        .iter()
        .map(|u| u.rule.as_str())
        .collect();
    assert_eq!(unused, ["discovery"]);

    // An approve rule is used once it decides a request, whatever the approvers then said.
    let narrow = report::build(
        events()
            .into_iter()
            .filter(|e| e["subject"] != "r4" && e["subject"] != "r11"),
        from,
        to,
        Some(&policy),
    );
    let unused: Vec<String> = who(&narrow, "ci-deployer")
        .unused_grants
        .clone()
        .unwrap()
        .into_iter()
        .map(|u| u.rule)
        .collect();
    assert!(
        unused.contains(&"deployer-scale-prod".to_owned()),
        "{unused:?}"
    );
    assert!(
        !unused.contains(&"deployer-delete-prod".to_owned()),
        "{unused:?}"
    );

    // Without a policy, nothing is claimed either way.
    let none = report::build(events().into_iter(), from, to, None);
    assert!(none.identities.iter().all(|i| i.unused_grants.is_none()));
}

#[test]
fn the_period_is_from_inclusive_to_exclusive() {
    let all = report::build(events().into_iter(), None, None, None);
    assert_eq!(all.requests, 12);
    assert_eq!(who(&all, "ci-deployer").totals.requests, 9);

    // A period holding only the grant's request: its hold, grant and revocation follow it.
    let from = parse_time("2024-06-01T10:00:00Z").unwrap();
    let to = parse_time("2024-06-01T10:00:01Z").unwrap();
    let one = report::build(events().into_iter(), Some(from), Some(to), None);
    assert_eq!(one.requests, 1);
    let ci = who(&one, "ci-deployer");
    assert_eq!(ci.holds.len(), 1);
    assert_eq!(ci.holds[0].outcome, HoldOutcome::Approved);
    assert_eq!(ci.grants.len(), 1);
    assert!(ci.grants[0].revoked_at.is_some());
    assert_eq!(ci.totals.forwarded, 1);

    let before = parse_time("2024-05-01").unwrap();
    let empty = report::build(
        events().into_iter(),
        Some(before),
        Some(before + time::Duration::DAY),
        None,
    );
    assert_eq!(empty.requests, 0);
    assert!(empty.identities.is_empty());
    assert!(
        report::to_csv(&empty).lines().count() == 1,
        "the header only"
    );
}

/// A minimal RFC 4180 reader, to check what a spreadsheet would see.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

fn hostile_events() -> Vec<Value> {
    let request = info("get", "", "pods", "", "-ns", "=1+1");
    vec![
        received(
            "2024-06-01T09:00:00Z",
            "h1",
            &unregistered("=HYPERLINK(\"http://evil\",\"x\")"),
            &request,
            "deny",
            None,
        ),
        denied(
            "2024-06-01T09:00:00Z",
            "h1",
            "unknown_identity",
            403,
            None,
            "@SUM(1,2) \"quoted\"\nsecond line",
        ),
        received(
            "2024-06-01T09:00:01Z",
            "h2",
            &unregistered("<script>alert(1)</script>"),
            &request,
            "deny",
            None,
        ),
        denied(
            "2024-06-01T09:00:01Z",
            "h2",
            "unknown_identity",
            403,
            None,
            "<b>&</b>",
        ),
    ]
}

#[test]
fn csv_is_quoted_and_formulas_are_neutralised() {
    let review = report::build(hostile_events().into_iter(), None, None, Some(&policy()));
    let csv = report::to_csv(&review);
    assert!(csv.ends_with("\r\n"));
    let rows = parse_csv(&csv);
    assert_eq!(rows[0], report::CSV_COLUMNS);
    assert!(
        rows.iter().all(|r| r.len() == report::CSV_COLUMNS.len()),
        "{rows:#?}"
    );
    let col = |name: &str| report::CSV_COLUMNS.iter().position(|c| *c == name).unwrap();

    let denial = rows
        .iter()
        .find(|r| r[col("section")] == "denial" && r[col("request_id")] == "h1")
        .unwrap();
    assert_eq!(
        denial[col("principal")],
        "'=HYPERLINK(\"http://evil\",\"x\")"
    );
    assert_eq!(denial[col("reason")], "'@SUM(1,2) \"quoted\"\nsecond line");
    assert_eq!(denial[col("namespace")], "'-ns");
    assert_eq!(denial[col("name")], "'=1+1");
    assert_eq!(denial[col("outcome")], "unknown_identity");
    // On the wire: quoted, quotes doubled, the guard inside the quotes.
    assert!(
        csv.contains("\"'@SUM(1,2) \"\"quoted\"\"\nsecond line\""),
        "{csv}"
    );
    // No cell, as a spreadsheet reads it, starts a formula.
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "{cell:?} in {row:?}"
            );
        }
    }

    let activity = rows
        .iter()
        .find(|r| r[col("section")] == "activity")
        .unwrap();
    assert_eq!(activity[col("requests")], "1");
    assert_eq!(activity[col("denied")], "1");
    let sections: std::collections::BTreeSet<&str> = rows[1..]
        .iter()
        .map(|r| r[col("section")].as_str())
        .collect();
    assert_eq!(
        sections.into_iter().collect::<Vec<_>>(),
        ["activity", "denial", "identity", "unused_grant"]
    );

    assert_eq!(report::csv_cell("plain"), "plain");
    assert_eq!(report::csv_cell("a,b"), "\"a,b\"");
    assert_eq!(report::csv_cell("+1"), "'+1");
    assert_eq!(report::csv_cell("-1,2"), "\"'-1,2\"");
}

#[test]
fn html_escapes_every_value_and_prints() {
    let review = report::build(hostile_events().into_iter(), None, None, None);
    let html = report::to_html(&review);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<b>&</b>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;b&gt;&amp;&lt;/b&gt;"));
    assert!(html.contains("=HYPERLINK(&quot;http://evil&quot;,&quot;x&quot;)"));
    // Self-contained and printable.
    assert!(html.contains("@media print"));
    assert!(!html.contains("src="));
    assert!(!html.contains("href=\"http"));
    assert!(!html.contains("<link"));

    let full = report::to_html(&report::build(
        events().into_iter(),
        None,
        None,
        Some(&policy()),
    ));
    for expected in [
        "alice@example.com",
        "carol@example.com approve (slack button, 2024-06-01T10:02:00Z)",
        "bob@example.com deny (api command, 2024-06-01T11:03:00Z): &quot;not during the freeze&quot;",
        "deployments.apps/scale",
        "Policy grants never used",
        "deployers-logs",
        "incident over",
    ] {
        assert!(full.contains(expected), "{expected} in the page");
    }
    assert_eq!(full.matches("<section class=\"identity\"").count(), 2);
}

#[test]
fn json_has_the_documented_shape() {
    let (from, to) = june_first();
    let review = report::build(events().into_iter(), from, to, Some(&policy()));
    let value = report::to_json(&review);
    let ci = &value["identities"][0];
    assert_eq!(ci["principal"], "ci-deployer");
    assert_eq!(ci["owner"], "alice@example.com");
    assert_eq!(ci["totals"]["requests"], 7);
    assert_eq!(ci["holds"][0]["outcome"], "approved");
    assert_eq!(
        ci["holds"][0]["decided_by"][0]["approver"],
        "carol@example.com"
    );
    assert_eq!(ci["holds"][2]["outcome"], "withdrawn");
    assert_eq!(ci["unused_grants"][0]["rule"], "discovery");
    let activity = ci["activity"].as_array().unwrap();
    assert!(activity.iter().any(|a| a["verb"] == "get"
        && a["resource"] == "pods"
        && a["namespace"] == "apps"
        && a["requests"] == 2));
    // It reads back.
    let back: AccessReview = serde_json::from_value(value).unwrap();
    assert_eq!(back, review);
}

// ----- the command, over a real ledger -----

fn write_ledger(dir: &std::path::Path, events: &[Value], garbage: bool) {
    let mut ledger = Ledger::open(dir).unwrap();
    let mut entries: Vec<NewEntry> = events
        .iter()
        .enumerate()
        .map(|(i, e)| NewEntry {
            stream_sequence: i as u64 + 1,
            received_at: i as i64,
            event: serde_json::to_vec(e).unwrap(),
        })
        .collect();
    if garbage {
        entries.push(NewEntry {
            stream_sequence: entries.len() as u64 + 1,
            received_at: 0,
            event: b"not json".to_vec(),
        });
    }
    ledger.append(&entries, &[]).unwrap();
    ledger.flush().unwrap();
}

fn args(dir: &std::path::Path, format: ReportFormat, output: &std::path::Path) -> ReportArgs {
    let (from, to) = june_first();
    ReportArgs {
        data_dir: dir.to_owned(),
        from,
        to,
        policy: None,
        format,
        output: Some(output.to_owned()),
    }
}

#[test]
fn the_command_reads_the_ledger_and_writes_each_format() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_ledger(&data, &events(), false);
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY_YAML).unwrap();

    let json_out = dir.path().join("review.json");
    let mut json_args = args(&data, ReportFormat::Json, &json_out);
    json_args.policy = Some(policy_file.clone());
    assert_eq!(run(json_args).unwrap(), ExitCode::SUCCESS);
    let review: AccessReview =
        serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(review.requests, 10);
    assert_eq!(review.events_read, events().len() as u64);
    assert!(review.generated_at.is_some());
    assert_eq!(review.policy_source.as_deref(), policy_file.to_str());
    let ci = who(&review, "ci-deployer");
    assert_eq!(ci.totals.requests, 7);
    assert_eq!(ci.holds[0].decided_by[0].approver, "carol@example.com");
    assert_eq!(ci.unused_grants.as_ref().unwrap().len(), 3);

    let csv_out = dir.path().join("review.csv");
    assert_eq!(
        run(args(&data, ReportFormat::Csv, &csv_out)).unwrap(),
        ExitCode::SUCCESS
    );
    let csv = std::fs::read_to_string(&csv_out).unwrap();
    assert!(csv.starts_with("section,principal,owner,team,verb,resource,namespace"));
    assert!(
        csv.contains("activity,ci-deployer,alice@example.com,platform,get,pods,apps,,2,2,0,0,2,0")
    );

    let html_out = dir.path().join("review.html");
    assert_eq!(
        run(args(&data, ReportFormat::Html, &html_out)).unwrap(),
        ExitCode::SUCCESS
    );
    let html = std::fs::read_to_string(&html_out).unwrap();
    assert!(html.contains("readonly-bot") && html.contains("</html>"));
}

#[test]
fn the_command_exits_one_when_entries_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    write_ledger(dir.path(), &events(), true);
    let out = dir.path().join("review.json");
    assert_eq!(
        run(args(dir.path(), ReportFormat::Json, &out)).unwrap(),
        ExitCode::from(1)
    );
    let review: AccessReview =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(review.events_unreadable, 1);
    assert!(
        review.notes[0].contains("ledger verify"),
        "{:?}",
        review.notes
    );
    assert_eq!(review.requests, 10, "the rest is still reported");
}

#[test]
fn bad_input_is_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("review.json");

    let missing = run(args(&dir.path().join("nothing"), ReportFormat::Json, &out))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("--data-dir"), "{missing}");
    assert!(
        format!(
            "{:#}",
            run(args(&dir.path().join("nothing"), ReportFormat::Json, &out)).unwrap_err()
        )
        .contains("no ledger")
    );

    write_ledger(dir.path(), &events(), false);
    let bad_policy = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_policy,
        "rules:\n  - id: x\n    action: allow\n    verbs: [gett]\n",
    )
    .unwrap();
    let mut with_bad_policy = args(dir.path(), ReportFormat::Json, &out);
    with_bad_policy.policy = Some(bad_policy);
    let e = format!("{:#}", run(with_bad_policy).unwrap_err());
    assert!(e.contains("--policy") && e.contains("gett"), "{e}");

    let mut backwards = args(dir.path(), ReportFormat::Json, &out);
    std::mem::swap(&mut backwards.from, &mut backwards.to);
    let e = run(backwards).unwrap_err().to_string();
    assert!(e.contains("--from") && e.contains("--to"), "{e}");
    assert!(!out.exists(), "nothing written on bad input");

    // The flags as the command line parses them.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        report: ReportArgs,
    }
    let e = Cli::try_parse_from(["report", "--data-dir", "d", "--from", "yesterday"])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--from") && e.contains("RFC 3339"), "{e}");
    let ok = Cli::try_parse_from([
        "report",
        "--data-dir",
        "d",
        "--from",
        "2024-06-01",
        "--to",
        "2024-06-02T02:00:00+02:00",
        "--format",
        "csv",
        "-o",
        "x.csv",
    ])
    .unwrap()
    .report;
    assert_eq!(ok.format, ReportFormat::Csv);
    assert_eq!(ok.to, Some(parse_time("2024-06-02T00:00:00Z").unwrap()));
    let e = Cli::try_parse_from(["report", "--data-dir", "d", "--format", "pdf"])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--format"), "{e}");
}
