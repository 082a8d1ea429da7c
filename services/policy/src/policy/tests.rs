use std::time::{Duration, Instant};

use super::*;
use crate::request_info::parse;

const DEMO: &str = r#"
rules:
  - id: discovery
    action: allow
    verbs: [get]
    non_resource_urls: ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]
  - id: deployer-apps
    action: allow
    identities: [ci-deployer]
    verbs: [get, list, watch, create, update, patch, delete]
    resources: ["*"]
    namespaces: [apps]
  - id: deployer-no-secrets
    action: deny
    identities: [ci-deployer]
    verbs: ["*"]
    resources: [secrets]
    description: secrets stay in apps
  - id: deployer-read
    action: allow
    identities: [ci-deployer]
    verbs: [get, list]
    resources: ["*"]
  - id: logs-of-web
    action: allow
    groups: ["log-*"]
    verbs: [get]
    resources: [pods/log]
    names: ["web-*"]
"#;

fn who(principal: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "i".into(),
        subject: principal.into(),
        principal: principal.into(),
        registered: true,
        owner: None,
        team: None,
        purpose: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes: Default::default(),
    }
}

fn decide(p: &Policy, id: &Identity, method: &str, path: &str) -> Result<String, Denial> {
    let info = parse(method, path, None).unwrap();
    match p.decide(&PolicyInput::new(id, &info)) {
        Decision::Allow(permit) => Ok(permit.rule().to_owned()),
        Decision::Hold(hold) => Err(hold.refuse("held")),
        Decision::Deny(d) => Err(d),
    }
}

fn load(yaml: &str) -> Policy {
    Policy::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn first_match_wins_and_default_denies() {
    let p = load(DEMO);
    let ci = who("ci-deployer", &[]);
    assert_eq!(
        decide(&p, &ci, "GET", "/api/v1/namespaces/apps/secrets/db").unwrap(),
        "deployer-apps"
    );
    assert_eq!(
        decide(&p, &ci, "DELETE", "/api/v1/namespaces/apps/pods/web").unwrap(),
        "deployer-apps"
    );
    let d = decide(&p, &ci, "GET", "/api/v1/namespaces/prod/secrets/db").unwrap_err();
    assert_eq!(d.rule.as_deref(), Some("deployer-no-secrets"));
    assert_eq!(
        d.message,
        "ci-deployer may not get secrets \"db\" in namespace \"prod\": denied by rule deployer-no-secrets (secrets stay in apps)"
    );
    assert_eq!(
        decide(&p, &ci, "GET", "/api/v1/namespaces/prod/pods").unwrap(),
        "deployer-read"
    );
    assert_eq!(
        decide(&p, &ci, "GET", "/api/v1/namespaces").unwrap(),
        "deployer-read"
    );
    let d = decide(&p, &ci, "DELETE", "/api/v1/namespaces/prod/pods/x").unwrap_err();
    assert_eq!(d.rule, None);
    assert_eq!(
        d.message,
        "no policy rule allows ci-deployer to delete pods \"x\" in namespace \"prod\" (default deny)"
    );
    assert!(decide(&p, &who("someone", &[]), "GET", "/api/v1/pods").is_err());
}

#[test]
fn non_resource_urls_match_only_non_resource_requests() {
    let p = load(DEMO);
    let anyone = who("readonly-bot", &[]);
    assert_eq!(decide(&p, &anyone, "GET", "/version").unwrap(), "discovery");
    assert_eq!(
        decide(&p, &anyone, "GET", "/apis/apps/v1").unwrap(),
        "discovery"
    );
    assert!(decide(&p, &anyone, "POST", "/api").is_err());
    // /api/v1/pods is a resource request; the discovery glob must not allow it.
    assert!(decide(&p, &anyone, "GET", "/api/v1/pods").is_err());
}

#[test]
fn subresources_groups_and_names() {
    let p = load(DEMO);
    let reader = who("log-reader", &["log-readers"]);
    assert_eq!(
        decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/web-1/log").unwrap(),
        "logs-of-web"
    );
    assert!(decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/db-1/log").is_err());
    assert!(decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/web-1").is_err());
    assert!(decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/web-1/exec").is_err());
}

const FULL: &str = r#"
defaults:
  record: request
mask_profiles:
  app-secrets:
    paths: ["data.*"]
rules:
  - id: no-shells
    description: nobody gets a shell
    action: deny
    identities: ["*"]
    verbs: [exec]
    resources: [pods/exec]
    commands:
      - shell: true
  - id: exec-ls
    action: allow
    groups: [debuggers]
    verbs: [exec]
    resources: [pods/exec]
    commands:
      - program: [ls, cat]
  - id: no-cluster-admin
    action: deny
    verbs: [create, update, patch]
    api_groups: [rbac.authorization.k8s.io]
    resources: [rolebindings, clusterrolebindings]
    body:
      - path: roleRef.name
        matching: "^cluster-admin$"
  - id: prod-changes
    action: approve
    groups: [deployers]
    verbs: [create, update, patch, delete]
    resources: ["*"]
    namespaces: [prod]
    record: request-response
    mask: app-secrets
    approval:
      approver_groups: [sre, platform-leads]
      quorum: 2
      hold_timeout: 15m
      grant_window: 1h
  - id: deployers
    action: allow
    groups: [deployers]
    verbs: ["*"]
    resources: ["*"]
    namespaces: [apps]
    mask: app-secrets
  - id: readers
    action: allow
    groups: [readers]
    verbs: [get, list, watch]
    resources: ["*"]
    record: metadata
"#;

fn info(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
    parse(method, path, query).unwrap()
}

#[test]
fn permits_carry_record_level_and_mask_profile() {
    let p = load(FULL);
    let deployer = who("ci", &["deployers"]);
    let req = info("GET", "/api/v1/namespaces/apps/secrets/db", None);
    let Decision::Allow(permit) = p.decide(&PolicyInput::new(&deployer, &req)) else {
        panic!("allowed");
    };
    assert_eq!(permit.rule(), "deployers");
    assert_eq!(permit.record(), RecordLevel::Request, "from defaults");
    assert_eq!(permit.mask(), Some("app-secrets"));
    assert!(p.mask_profile("app-secrets").is_some());

    let reader = who("bot", &["readers"]);
    let Decision::Allow(permit) = p.decide(&PolicyInput::new(&reader, &req)) else {
        panic!("allowed");
    };
    assert_eq!(permit.record(), RecordLevel::Metadata, "the rule's own");
    assert_eq!(permit.mask(), None);
}

#[test]
fn approve_rules_hold_with_their_approval() {
    let p = load(FULL);
    let deployer = who("ci", &["deployers"]);
    let req = info(
        "DELETE",
        "/apis/apps/v1/namespaces/prod/deployments/web",
        None,
    );
    let Decision::Hold(hold) = p.decide(&PolicyInput::new(&deployer, &req)) else {
        panic!("held");
    };
    assert_eq!(hold.rule(), "prod-changes");
    assert_eq!(hold.approver_groups(), ["sre", "platform-leads"]);
    assert_eq!(hold.quorum(), 2);
    assert_eq!(hold.hold_timeout(), Duration::from_secs(15 * 60));
    assert_eq!(hold.grant_window(), Some(Duration::from_secs(3600)));
    assert_eq!(hold.record(), RecordLevel::RequestResponse);
    assert!(
        hold.message().starts_with(
            "ci needs approval to delete deployments.apps \"web\" in namespace \"prod\": rule prod-changes holds it for 2 approvers from sre, platform-leads"
        ),
        "{}",
        hold.message()
    );
    let permit = hold.approved("01APPROVAL");
    assert_eq!(permit.rule(), "prod-changes");
    assert_eq!(permit.approval(), Some("01APPROVAL"));
    assert_eq!(permit.mask(), Some("app-secrets"));
}

#[test]
fn approval_defaults() {
    let p = load(
        "rules:\n  - id: a\n    action: approve\n    verbs: [delete]\n    resources: [pods]\n    approval:\n      approver_groups: [sre]\n",
    );
    let a = p.rules()[0].approval().unwrap();
    assert_eq!(a.quorum, 1);
    assert_eq!(a.hold_timeout, compile::DEFAULT_HOLD_TIMEOUT);
    assert_eq!(a.grant_window, None);
    assert_eq!(a.step_up, None);
}

#[test]
fn step_up_is_on_with_defaults_or_its_settings_and_bounded() {
    let rule = |step_up: &str| {
        format!(
            "rules:\n  - id: a\n    action: approve\n    verbs: [delete]\n    resources: [pods]\n    approval:\n      approver_groups: [sre]\n      step_up: {step_up}\n"
        )
    };
    let on = load(&rule("true"));
    let step_up = on.rules()[0].approval().unwrap().step_up.clone().unwrap();
    assert_eq!(
        step_up.max_age_s,
        compile::DEFAULT_STEP_UP_MAX_AGE.as_secs()
    );
    assert!(step_up.amr.is_empty() && step_up.acr.is_empty());

    let off = load(&rule("false"));
    assert_eq!(off.rules()[0].approval().unwrap().step_up, None);

    let with = load(&rule(
        "{max_age: 2m, amr: [mfa], acr: [\"urn:example:loa:3\"]}",
    ));
    let step_up = with.rules()[0].approval().unwrap().step_up.clone().unwrap();
    assert_eq!(step_up.max_age_s, 120);
    assert_eq!(step_up.amr, vec!["mfa".to_owned()]);
    assert_eq!(step_up.acr, vec!["urn:example:loa:3".to_owned()]);

    // A "fresh" sign-in of a day is refused, as is a setting nobody knows.
    assert!(Policy::from_yaml(&rule("{max_age: 24h}")).is_err());
    assert!(Policy::from_yaml(&rule("{max_age: 2m, mfa: true}")).is_err());
}

fn exec(p: &Policy, id: &Identity, command: &[&str]) -> Result<String, Denial> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for c in command {
        query.append_pair("command", c);
    }
    let query = query.append_pair("stdin", "true").finish();
    let req = info(
        "POST",
        "/api/v1/namespaces/apps/pods/web/exec",
        Some(&query),
    );
    let argv: Vec<String> = command.iter().map(|c| c.to_string()).collect();
    let input = PolicyInput {
        command: &argv,
        ..PolicyInput::new(id, &req)
    };
    match p.decide(&input) {
        Decision::Allow(permit) => Ok(permit.rule().to_owned()),
        Decision::Hold(h) => Err(h.refuse("held")),
        Decision::Deny(d) => Err(d),
    }
}

#[test]
fn shell_guardrail_is_hard_to_bypass() {
    let p = load(FULL);
    let debugger = who("dev", &["debuggers"]);
    for command in [
        &["sh"][..],
        &["/bin/sh"],
        &["sh", "-c", "ls"],
        &["env", "sh"],
        &["busybox", "sh"],
        &["/usr/bin/env", "-i", "bash", "-l"],
        &["python3", "-c", "import pty; pty.spawn('/bin/sh')"],
    ] {
        let d = exec(&p, &debugger, command).unwrap_err();
        assert_eq!(d.rule.as_deref(), Some("no-shells"), "{command:?}");
    }
    assert_eq!(exec(&p, &debugger, &["ls", "-la", "/"]).unwrap(), "exec-ls");
    // Not a shell, not on the allow-list: default deny.
    let d = exec(&p, &debugger, &["rm", "-rf", "/"]).unwrap_err();
    assert_eq!(d.rule, None);
    // No command at all (what the pipeline passes until it reads the query): fail closed.
    let d = exec(&p, &debugger, &[]).unwrap_err();
    assert_eq!(d.rule.as_deref(), Some("no-shells"));
}

fn write(p: &Policy, body: impl AsRef<[u8]>, content_type: &str) -> Result<String, Denial> {
    let id = who("ci", &["deployers"]);
    let req = info(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings",
        None,
    );
    let input = PolicyInput {
        body: Some(body.as_ref()),
        content_type: Some(content_type),
        ..PolicyInput::new(&id, &req)
    };
    match p.decide(&input) {
        Decision::Allow(permit) => Ok(permit.rule().to_owned()),
        Decision::Hold(h) => Err(h.refuse("held")),
        Decision::Deny(d) => Err(d),
    }
}

#[test]
fn body_guardrail_denies_cluster_admin_bindings_and_fails_closed() {
    let p = load(FULL);
    let admin = r#"{"kind":"RoleBinding","roleRef":{"kind":"ClusterRole","name":"cluster-admin"}}"#;
    let view = r#"{"kind":"RoleBinding","roleRef":{"kind":"ClusterRole","name":"view"}}"#;
    assert_eq!(
        write(&p, admin, "application/json")
            .unwrap_err()
            .rule
            .as_deref(),
        Some("no-cluster-admin")
    );
    assert_eq!(write(&p, view, "application/json").unwrap(), "deployers");
    // Protobuf RoleBindings are read as the same object (kubectl's typed `create rolebinding`).
    let protobuf_binding = |role: &str| {
        use k8s_pb::api::rbac::v1 as rbac;
        use prost::Message;
        let raw = rbac::RoleBinding {
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some(role.into()),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let envelope = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some("rbac.authorization.k8s.io/v1".into()),
                kind: Some("RoleBinding".into()),
            }),
            raw: Some(raw),
            content_encoding: None,
            content_type: None,
        };
        [b"k8s\0".to_vec(), envelope.encode_to_vec()].concat()
    };
    const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
    let denied = write(&p, protobuf_binding("cluster-admin"), PROTOBUF).unwrap_err();
    assert_eq!(denied.rule.as_deref(), Some("no-cluster-admin"));
    assert!(
        !denied.message.contains("cannot read"),
        "{}",
        denied.message
    );
    assert_eq!(
        write(&p, protobuf_binding("view"), PROTOBUF).unwrap(),
        "deployers"
    );
    // Protobuf that does not decode, and YAML, cannot be read: the deny rule matches.
    assert_eq!(
        write(&p, "k8s\0...", "application/vnd.kubernetes.protobuf")
            .unwrap_err()
            .rule
            .as_deref(),
        Some("no-cluster-admin")
    );
    assert_eq!(
        write(&p, "roleRef:\n  name: view\n", "application/yaml")
            .unwrap_err()
            .rule
            .as_deref(),
        Some("no-cluster-admin")
    );

    // The refusal says the body could not be read, and what to send instead; a refusal of a
    // body that was read says nothing of the kind.
    let protobuf = write(&p, "k8s\0...", "application/vnd.kubernetes.protobuf").unwrap_err();
    assert!(
        protobuf.message.contains(
            "the body's protobuf envelope does not decode, which the rule's body guardrail \
             cannot read, so it counts as a match (fails closed); send the object as JSON"
        ) && protobuf.message.contains("kubectl create -f -"),
        "{}",
        protobuf.message
    );
    let yaml = write(&p, "roleRef:\n  name: view\n", "application/yaml").unwrap_err();
    assert!(
        yaml.message.contains("the body is YAML, which")
            && !yaml.message.contains("kubectl create"),
        "{}",
        yaml.message
    );
    let read = write(&p, admin, "application/json").unwrap_err();
    assert!(!read.message.contains("cannot read"), "{}", read.message);
}

#[test]
fn the_body_is_parsed_only_when_a_guarded_rule_is_a_candidate() {
    let p = load(FULL);
    let reader = who("bot", &["readers"]);
    let req = info("GET", "/api/v1/namespaces/apps/pods", None);
    let input = PolicyInput {
        body: Some(b"not json"),
        ..PolicyInput::new(&reader, &req)
    };
    let e = explain(&p, &input);
    assert!(e.notes.iter().all(|n| !n.starts_with("body")), "{e}");
    let write_req = info(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings",
        None,
    );
    let input = PolicyInput {
        body: Some(b"not json"),
        ..PolicyInput::new(&reader, &write_req)
    };
    let e = explain(&p, &input);
    assert!(
        e.notes
            .iter()
            .any(|n| n == "body: not readable: the body is not JSON"),
        "{e}"
    );
}

fn error_of(yaml: &str) -> LoadError {
    match Policy::from_yaml(yaml) {
        Ok(_) => panic!("loaded:\n{yaml}"),
        Err(e) => e,
    }
}

#[test]
fn bad_policies_are_refused_naming_line_and_column() {
    // Bad verb, in a block list: the item's own line.
    let e = error_of(
        "rules:\n  - id: a\n    action: allow\n    verbs:\n      - get\n      - gett\n    resources: [pods]\n",
    );
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].code, "bad-verb");
    assert!(
        e.to_string()
            .starts_with("line 6, column 9: rules[0].verbs[1]: unknown verb \"gett\""),
        "{e}"
    );
    // Unknown field.
    let e = error_of(
        "rules:\n  - id: a\n    action: allow\n    verbs: [get]\n    resources: [pods]\n    namespace: [x]\n",
    );
    assert_eq!(e.problems[0].code, "unknown-field");
    assert!(
        e.to_string()
            .starts_with("line 6, column 5: rules[0]: unknown field `namespace`"),
        "{e}"
    );
    // Unknown action value.
    let e = error_of(
        "rules:\n  - id: a\n    action: permit\n    verbs: [get]\n    resources: [pods]\n",
    );
    assert!(
        e.to_string()
            .starts_with("line 3, column 13: rules[0].action: unknown variant `permit`"),
        "{e}"
    );
    // YAML syntax.
    let e = error_of("rules:\n  - id: a\n    verbs: [get\n");
    assert_eq!(e.problems[0].code, "yaml-syntax");
    assert!(e.to_string().starts_with("line 4, column 1: "), "{e}");
    // Bad regex, in a flow mapping.
    let e = error_of(
        "rules:\n  - id: a\n    action: deny\n    verbs: [exec]\n    resources: [pods/exec]\n    commands: [{ matching: \"(sh\" }]\n",
    );
    assert_eq!(e.problems[0].code, "bad-regex");
    assert!(
        e.to_string()
            .starts_with("line 6, column 28: rules[0].commands[0].matching: bad regex \"(sh\""),
        "{e}"
    );
    // Unknown mask profile.
    let e = error_of(
        "mask_profiles:\n  a: {}\nrules:\n  - id: r\n    action: allow\n    verbs: [get]\n    resources: [pods]\n    mask: b\n",
    );
    assert_eq!(
        e.to_string(),
        "line 8, column 11: rules[0].mask: mask profile \"b\" is not declared under mask_profiles (declared: a)"
    );
    // Duplicate id: the second one, naming the first.
    let e = error_of(
        "rules:\n  - id: a\n    action: allow\n    verbs: [get]\n    resources: [pods]\n  - id: a\n    action: deny\n    verbs: [get]\n    resources: [pods]\n",
    );
    assert_eq!(
        e.to_string(),
        "line 6, column 9: rules[1].id: rule id \"a\" is used twice: rules[0] (line 2) has it too"
    );
}

#[test]
fn every_value_problem_is_reported_at_once() {
    let e = error_of(
        r#"rules:
  - id: a
    action: approve
    verbs: [get, brew]
    resources: []
  - id: b
    action: allow
    verbs: [post]
    resources: [pods]
    approval: { approver_groups: [x] }
  - id: c
    action: approve
    verbs: [delete]
    resources: [pods]
    approval:
      approver_groups: []
      quorum: 0
      hold_timeout: 2d
      grant_window: soon
  - id: d
    action: deny
    verbs: [get]
    resources: [rolebindings]
    body:
      - path: "roleRef..name"
        matching: x
"#,
    );
    let lines: Vec<(usize, &str)> = e
        .problems
        .iter()
        .map(|p| (p.location.unwrap().line, p.code))
        .collect();
    assert_eq!(
        lines,
        [
            (3, "bad-approval"),
            (4, "bad-verb"),
            (5, "empty-list"),
            (8, "bad-verb"),
            (10, "bad-approval"),
            (16, "bad-approval"),
            (17, "bad-approval"),
            (18, "bad-duration"),
            (19, "bad-duration"),
            (25, "bad-guard"),
            (25, "bad-path"),
        ],
        "{e}"
    );
    assert!(
        e.to_string().contains("verb \"post\" is an HTTP method"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("\"2d\" is longer than the maximum, 1day"),
        "{e}"
    );
}

#[test]
fn guardrails_only_on_the_verbs_they_can_see() {
    let e = error_of(
        "rules:\n  - id: a\n    action: deny\n    verbs: [\"*\"]\n    resources: [pods/exec]\n    commands: [{ shell: true }]\n",
    );
    assert!(
        e.to_string().contains("verbs must be exec and/or attach"),
        "{e}"
    );
    let e = error_of(
        "rules:\n  - id: a\n    action: deny\n    verbs: [get]\n    resources: [secrets]\n    body: [{ kind: Secret }]\n",
    );
    assert!(
        e.to_string().contains("among create, update and patch"),
        "{e}"
    );
}

#[test]
fn lint_finds_shadowed_broad_and_risky_rules() {
    let p = load(
        r#"mask_profiles:
  unused: {}
rules:
  - id: readers
    action: allow
    groups: [readers]
    verbs: [get, list, watch]
    resources: ["*"]
  - id: readers-no-secrets
    action: deny
    groups: [readers]
    verbs: [get]
    resources: [secrets]
  - id: readers-again
    action: allow
    groups: [readers]
    verbs: [get]
    resources: [pods]
    namespaces: [apps]
  - id: break-glass
    action: allow
    groups: [admins]
    verbs: ["*"]
    resources: ["*"]
  - id: everyone-deletes
    action: allow
    verbs: [delete]
    resources: [pods]
  - id: secret-readers
    action: allow
    identities: [vault-sync]
    verbs: [get]
    resources: [secrets]
  - id: debug
    action: allow
    identities: [debugger]
    verbs: [exec]
    resources: [pods/exec]
  - id: approve-anyone
    action: approve
    identities: [x]
    verbs: [delete]
    resources: [nodes]
    approval: { approver_groups: ["system:authenticated"] }
"#,
    );
    let findings = lint(&p);
    let got: Vec<(usize, Severity, &str)> = findings
        .iter()
        .map(|f| (f.location.unwrap().line, f.severity, f.code))
        .collect();
    assert_eq!(
        got,
        [
            (2, Severity::Info, "unused-mask-profile"),
            (9, Severity::Error, "shadowed-rule"),
            (14, Severity::Warning, "redundant-rule"),
            (20, Severity::Error, "broader-than-cluster-admin"),
            (25, Severity::Warning, "anyone-may-write"),
            (29, Severity::Warning, "secrets-without-mask"),
            (34, Severity::Info, "exec-without-command-guard"),
            (39, Severity::Warning, "anyone-may-approve"),
        ],
        "{findings:#?}"
    );
    assert!(
        findings[1]
            .message
            .contains("the earlier allow rule readers (line 4)")
    );
}

/// The test policy's only finding is its intended exception: CI's own namespace first.
#[test]
fn an_exception_first_is_the_only_finding() {
    let findings = lint(&load(DEMO));
    let got: Vec<(&str, Option<&str>)> = findings
        .iter()
        .map(|f| (f.code, f.rule.as_deref()))
        .collect();
    assert_eq!(
        got,
        [("partly-shadowed", Some("deployer-no-secrets"))],
        "{findings:#?}"
    );
    assert!(findings[0].message.contains(
        "the earlier allow rule deployer-apps (line 7) decides get secrets in namespace apps first"
    ));
}

#[test]
fn explain_names_the_failing_field_of_each_rule_and_agrees_with_decide() {
    let p = load(FULL);
    let deployer = who("ci", &["deployers"]);
    let req = info("DELETE", "/api/v1/namespaces/prod/pods/web", None);
    let e = explain(&p, &PolicyInput::new(&deployer, &req));
    let reasons: Vec<(&str, bool, &str)> = e
        .steps
        .iter()
        .map(|s| (s.rule.as_str(), s.matched, s.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("no-shells", false, "verb delete is not in verbs [exec]"),
            (
                "exec-ls",
                false,
                "ci (groups: deployers) is in neither groups [debuggers]"
            ),
            (
                "no-cluster-admin",
                false,
                "verb delete is not in verbs [create, update, patch]"
            ),
            ("prod-changes", true, "matches"),
        ]
    );
    assert_eq!(e.steps[3].line, Some(31));
    assert!(
        matches!(e.verdict, Verdict::Hold { ref rule, quorum: 2, .. } if rule == "prod-changes")
    );
    let text = e.to_string();
    assert!(
        text.starts_with("decision: hold for approval by rule prod-changes\n"),
        "{text}"
    );
    assert!(text.contains("  3. no-cluster-admin (line 23) [deny] no match: verb delete is not in verbs [create, update, patch]"), "{text}");

    // Default deny lists every rule.
    let stranger = who("x", &[]);
    let req = info("GET", "/api/v1/namespaces/prod/pods", None);
    let e = explain(&p, &PolicyInput::new(&stranger, &req));
    assert_eq!(e.steps.len(), p.rules().len());
    assert!(e.steps.iter().all(|s| !s.matched));
    assert!(matches!(e.verdict, Verdict::Deny { rule: None, .. }));

    // Guardrail reasons.
    let debugger = who("dev", &["debuggers"]);
    let req = info(
        "POST",
        "/api/v1/namespaces/apps/pods/web/exec",
        Some("command=env&command=sh"),
    );
    let argv = vec!["env".to_owned(), "sh".to_owned()];
    let e = explain(
        &p,
        &PolicyInput {
            command: &argv,
            ..PolicyInput::new(&debugger, &req)
        },
    );
    assert_eq!(e.verdict.rule(), Some("no-shells"));
    assert!(
        e.steps[0]
            .reason
            .contains("commands[0] matches: it runs a shell"),
        "{e}"
    );
}

#[test]
fn explain_and_decide_agree() {
    let p = load(FULL);
    let people = [
        who("ci", &["deployers"]),
        who("bot", &["readers"]),
        who("dev", &["debuggers"]),
        who("x", &[]),
    ];
    let requests = [
        ("GET", "/api/v1/namespaces/apps/pods", None),
        ("DELETE", "/api/v1/namespaces/prod/pods/a", None),
        (
            "POST",
            "/api/v1/namespaces/apps/pods/a/exec",
            Some("command=ls"),
        ),
        (
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings",
            None,
        ),
        ("GET", "/version", None),
    ];
    let argvs: [&[String]; 2] = [&[], &["ls".to_owned()]];
    for id in &people {
        for (method, path, query) in requests {
            for argv in argvs {
                let req = info(method, path, query);
                let input = PolicyInput {
                    command: argv,
                    body: Some(br#"{"kind":"RoleBinding","roleRef":{"name":"cluster-admin"}}"#),
                    content_type: Some("application/json"),
                    ..PolicyInput::new(id, &req)
                };
                let decided = match p.decide(&input) {
                    Decision::Allow(p) => Some(p.rule().to_owned()),
                    Decision::Hold(h) => Some(h.rule().to_owned()),
                    Decision::Deny(d) => d.rule,
                };
                assert_eq!(
                    explain(&p, &input).verdict.rule().map(str::to_owned),
                    decided,
                    "{} {method} {path}",
                    id.principal
                );
            }
        }
    }
}

// --- reload ---------------------------------------------------------------------------------

const V1: &str = "rules:\n  - id: v1\n    action: allow\n    verbs: [get]\n    resources: [pods]\n";
const V2: &str = "rules:\n  - id: v2\n    action: allow\n    verbs: [get]\n    resources: [pods]\n";

fn rule_in_force(shared: &SharedPolicy) -> String {
    shared.current().rules()[0].id().to_owned()
}

/// Polls until `done` or the deadline.
fn poll_until(watcher: &mut Watcher, done: impl Fn(&Reload) -> bool) -> Reload {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = watcher.poll();
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "gave up; last poll: {r:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_changed_file_is_swapped_in_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, V1).unwrap();
    let mut watcher = Watcher::load(&path).unwrap();
    let shared = watcher.shared();
    assert_eq!(
        (shared.generation(), rule_in_force(&shared)),
        (1, "v1".into())
    );
    let before = shared.current();

    // In place.
    std::fs::write(&path, V2).unwrap();
    let r = poll_until(&mut watcher, |r| matches!(r, Reload::Loaded { .. }));
    assert_eq!(
        r,
        Reload::Loaded {
            generation: 2,
            rules: 1
        }
    );
    assert_eq!(rule_in_force(&shared), "v2");
    // A request that took the policy before the swap keeps deciding with it.
    assert_eq!(before.rules()[0].id(), "v1");

    // A bad file: logged, counted, and the old policy stays.
    std::fs::write(
        &path,
        "rules:\n  - id: v3\n    action: allow\n    verbs: [gett]\n    resources: [pods]\n",
    )
    .unwrap();
    let r = poll_until(&mut watcher, |r| matches!(r, Reload::Refused { .. }));
    let Reload::Refused { error } = r else {
        unreachable!()
    };
    assert!(
        error.contains("line 4, column 13: rules[0].verbs[0]: unknown verb \"gett\""),
        "{error}"
    );
    assert_eq!(rule_in_force(&shared), "v2");
    assert_eq!(shared.generation(), 2);
    assert_eq!(shared.failed_reloads(), 1);
    assert!(shared.last_error().unwrap().contains("line 4"));
    // Reported once, not on every poll.
    for _ in 0..12 {
        assert!(matches!(
            watcher.poll(),
            Reload::Unchanged | Reload::Settling
        ));
    }
    assert_eq!(shared.failed_reloads(), 1);

    // Reverted to the policy in force: no error any more, nothing reloaded.
    std::fs::write(&path, V2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.last_error().is_some() {
        assert!(Instant::now() < deadline, "the error stayed");
        assert_eq!(watcher.poll(), Reload::Unchanged);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(shared.generation(), 2);

    // Fixed by an editor-style replace (write elsewhere, rename over).
    let tmp = dir.path().join(".policy.yaml.swp");
    std::fs::write(&tmp, V1).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    poll_until(&mut watcher, |r| matches!(r, Reload::Loaded { .. }));
    assert_eq!(
        (shared.generation(), rule_in_force(&shared)),
        (3, "v1".into())
    );
    assert_eq!(shared.last_error(), None);
}

#[test]
fn a_configmap_style_symlink_swap_is_seen() {
    // Kubernetes mounts: policy.yaml → ..data/policy.yaml, ..data → ..2024_01 (swapped).
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..v1");
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v1.join("policy.yaml"), V1).unwrap();
    std::fs::write(v2.join("policy.yaml"), V2).unwrap();
    let data = dir.path().join("..data");
    std::os::unix::fs::symlink("..v1", &data).unwrap();
    let path = dir.path().join("policy.yaml");
    std::os::unix::fs::symlink("..data/policy.yaml", &path).unwrap();

    let mut watcher = Watcher::load(&path).unwrap();
    let shared = watcher.shared();
    assert_eq!(rule_in_force(&shared), "v1");
    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("..v2", &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    poll_until(&mut watcher, |r| matches!(r, Reload::Loaded { .. }));
    assert_eq!(rule_in_force(&shared), "v2");
}

#[test]
fn a_missing_file_keeps_the_policy_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, V1).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let mut watcher = Watcher::load(&path)
        .unwrap()
        .with_observer(std::sync::Arc::new(move |r: &Reload| {
            log.lock().unwrap().push(r.clone())
        }));
    let shared = watcher.shared();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(watcher.poll(), Reload::Unreadable { .. }));
    assert_eq!(watcher.poll(), Reload::Unchanged);
    assert_eq!(rule_in_force(&shared), "v1");
    assert_eq!(shared.failed_reloads(), 1);
    std::fs::write(&path, V2).unwrap();
    poll_until(&mut watcher, |r| matches!(r, Reload::Loaded { .. }));
    let seen = seen.lock().unwrap();
    assert!(matches!(seen[0], Reload::Unreadable { .. }), "{seen:?}");
    assert!(
        matches!(seen[1], Reload::Loaded { generation: 2, .. }),
        "{seen:?}"
    );
}

#[tokio::test]
async fn the_spawned_watcher_reloads_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, V1).unwrap();
    let watcher = Watcher::load(&path)
        .unwrap()
        .with_interval(Duration::from_millis(10));
    let shared = watcher.shared();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = watcher.spawn(shutdown.clone());
    std::fs::write(&path, V2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rule_in_force(&shared) != "v2" {
        assert!(Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn a_first_load_must_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let e = Watcher::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("policy {}: ", path.display())),
        "{e}"
    );
    std::fs::write(&path, "rules: 5\n").unwrap();
    let e = Watcher::load(&path).unwrap_err().to_string();
    assert!(e.contains("line 1, column 8: rules: invalid type"), "{e}");
}
