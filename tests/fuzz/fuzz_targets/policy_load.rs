//! The policy loader (`Policy::from_yaml`: YAML shape, value checks, compilation of globs,
//! regexes and guardrails, line/column location of problems), then lint, decide and explain
//! on a fixed set of requests.
//!
//! Input: the policy file's text.
//!
//! Invariants:
//! - loading, linting, deciding and explaining never panic;
//! - a refusal names at least one problem, and every location it gives is inside the text (or
//!   its end);
//! - `explain` (what `gatehouse policy explain` prints) reaches the verdict `decide` (what the
//!   proxy enforces) for every request: same rule, same kind of decision;
//! - deciding twice gives the same decision.
#![no_main]

use std::sync::OnceLock;

use gatehouse_events::{Identity, RequestInfo};
use gatehouse_proxy::policy::{Decision, Policy, PolicyInput, Verdict, explain, lint};
use gatehouse_proxy::request_info::parse;
use libfuzzer_sys::fuzz_target;

struct Case {
    identity: Identity,
    request: RequestInfo,
    command: Vec<String>,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
}

fn identity(principal: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "https://issuer.test".into(),
        subject: principal.into(),
        principal: principal.into(),
        registered: true,
        owner: Some("alice@example.com".into()),
        team: None,
        purpose: None,
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        attributes: Default::default(),
    }
}

/// Requests like the demo's (kubectl through the proxy), with commands and bodies for the
/// guardrails.
fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let binding = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"x"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"},"subjects":[{"kind":"User","name":"mallory"}]}"#;
        let request = |m: &str, p: &str, q: Option<&str>| parse(m, p, q).unwrap();
        let case = |who: Identity, request: RequestInfo| Case {
            identity: who,
            request,
            command: Vec::new(),
            body: None,
            content_type: None,
        };
        let ci = || identity("ci-deployer", &["deployers"]);
        let bot = || identity("readonly-bot", &["readers"]);
        vec![
            case(ci(), request("GET", "/api/v1/namespaces/apps/pods", Some("limit=500"))),
            case(bot(), request("GET", "/api/v1/namespaces/apps/secrets/db-credentials", None)),
            case(ci(), request("DELETE", "/api/v1/namespaces/prod/pods/api", None)),
            case(ci(), request("GET", "/apis/apps/v1/namespaces/prod/deployments", Some("watch=1"))),
            case(bot(), request("GET", "/version", None)),
            case(bot(), request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", None)),
            Case {
                command: ["sh", "-c", "id"].map(String::from).to_vec(),
                ..case(ci(), request("POST", "/api/v1/namespaces/prod/pods/api/exec", Some("command=sh&command=-c&command=id")))
            },
            Case {
                command: ["env", "ls", "/"].map(String::from).to_vec(),
                ..case(ci(), request("GET", "/api/v1/namespaces/apps/pods/web/exec", Some("command=env&command=ls&command=%2F")))
            },
            Case {
                body: Some(binding.to_vec()),
                content_type: Some("application/json"),
                ..case(ci(), request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", None))
            },
            Case {
                body: Some(b"\x6b\x38\x73\x00\x0a\x04".to_vec()),
                content_type: Some("application/vnd.kubernetes.protobuf"),
                ..case(ci(), request("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings", None))
            },
        ]
    })
}

fn rule_of(decision: &Decision) -> (&'static str, Option<String>) {
    match decision {
        Decision::Allow(p) => ("allow", Some(p.rule().to_owned())),
        Decision::Hold(h) => ("hold", Some(h.rule().to_owned())),
        Decision::Deny(d) => ("deny", d.rule.clone()),
    }
}

fn verdict_of(verdict: &Verdict) -> (&'static str, Option<String>) {
    let kind = match verdict {
        Verdict::Allow { .. } => "allow",
        Verdict::Hold { .. } => "hold",
        Verdict::Deny { .. } => "deny",
        Verdict::UnknownIdentity { .. } => "unknown-identity",
    };
    (kind, verdict.rule().map(str::to_owned))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::from_yaml(text) {
        Ok(policy) => policy,
        Err(e) => {
            assert!(!e.problems.is_empty(), "a refusal without a problem");
            // YAML breaks lines at LF, CRLF and CR; the end of the input is reported as the
            // first column of the line after the last.
            let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
            for problem in &e.problems {
                if let Some(at) = &problem.location {
                    assert!(
                        at.line >= 1
                            && (at.line <= lines || (at.line == lines + 1 && at.column == 1)),
                        "{problem} is outside the text's {lines} lines"
                    );
                }
            }
            let _ = e.to_string();
            return;
        }
    };
    let _ = lint(&policy);
    for i in 0..policy.rules().len() {
        let _ = policy.rule_location(i);
    }
    for case in cases() {
        let input = PolicyInput {
            identity: &case.identity,
            request: &case.request,
            command: &case.command,
            body: case.body.as_deref(),
            content_type: case.content_type,
        };
        let decided = rule_of(&policy.decide(&input));
        assert_eq!(
            decided,
            rule_of(&policy.decide(&input)),
            "decide is not stable"
        );
        let explained = explain(&policy, &input);
        assert_eq!(
            verdict_of(&explained.verdict),
            decided,
            "explain and decide disagree on {:?}",
            case.request
        );
    }
});
