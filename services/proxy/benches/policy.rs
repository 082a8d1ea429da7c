//! How long one policy decision takes: a 50-rule policy, for requests decided by the first
//! rule, by the last, by default deny (every rule consulted), and through the command and body
//! guardrails.
//!
//! `cargo bench -p gatehouse-proxy --bench policy`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_events::{Identity, RequestInfo};
use gatehouse_proxy::policy::{Decision, Policy, PolicyInput};

/// 48 ordinary rules between a shell guardrail and a body guardrail.
fn policy_yaml() -> String {
    let mut yaml = String::from(
        r#"rules:
  - id: no-shells
    action: deny
    verbs: [exec]
    resources: [pods/exec]
    commands: [{ shell: true }]
  - id: no-cluster-admin
    action: deny
    verbs: [create, update, patch]
    resources: [rolebindings, clusterrolebindings]
    body:
      - kind: ["*RoleBinding"]
      - path: roleRef.name
        matching: "^cluster-admin$"
"#,
    );
    for i in 0..47 {
        yaml.push_str(&format!(
            r#"  - id: team-{i}
    action: allow
    identities: ["svc-{i}-*"]
    groups: [team-{i}]
    verbs: [get, list, watch, create, update, patch]
    api_groups: ["", apps, batch]
    resources: [deployments, "deployments/*", pods, pods/log, configmaps, jobs]
    namespaces: [team-{i}, "team-{i}-*"]
"#
        ));
    }
    yaml.push_str(
        r#"  - id: readers
    action: allow
    groups: [readers]
    verbs: [get, list, watch]
    resources: ["*"]
"#,
    );
    yaml
}

fn identity(principal: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "https://issuer".into(),
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

fn request(method: &str, path: &str) -> RequestInfo {
    gatehouse_proxy::request_info::parse(method, path, None).expect("a valid path")
}

fn rule_of(decision: Decision) -> Option<String> {
    match decision {
        Decision::Allow(p) => Some(p.rule().to_owned()),
        Decision::Hold(h) => Some(h.rule().to_owned()),
        Decision::Deny(d) => d.rule,
    }
}

fn bench(c: &mut Criterion) {
    let policy = Policy::from_yaml(&policy_yaml()).expect("the bench policy loads");
    assert_eq!(policy.rules().len(), 50);

    let early = identity("svc-0-api", &["team-0"]);
    let early_req = request("GET", "/apis/apps/v1/namespaces/team-0/deployments/web");
    let reader = identity("dashboards", &["readers", "viewers", "everyone"]);
    let late_req = request("GET", "/api/v1/namespaces/kube-system/pods");
    let stranger = identity("stranger", &["nobody", "nowhere", "everyone"]);
    let exec_req = request("POST", "/api/v1/namespaces/team-3/pods/web/exec");
    let argv: Vec<String> = ["env", "-i", "/bin/bash", "-lc", "id; ls"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let binding_req = request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team-3/rolebindings",
    );
    let body = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"x","namespace":"team-3"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},"subjects":[{"kind":"User","name":"a"}]}"#;

    let cases: [(&str, PolicyInput<'_>, Option<&str>); 5] = [
        (
            "first ordinary rule",
            PolicyInput::new(&early, &early_req),
            Some("team-0"),
        ),
        (
            "last rule",
            PolicyInput::new(&reader, &late_req),
            Some("readers"),
        ),
        (
            "default deny, 50 rules",
            PolicyInput::new(&stranger, &late_req),
            None,
        ),
        (
            "exec through the shell guardrail",
            PolicyInput {
                command: &argv,
                ..PolicyInput::new(&stranger, &exec_req)
            },
            Some("no-shells"),
        ),
        (
            "rolebinding body parsed, then 48 rules",
            PolicyInput {
                body: Some(body),
                content_type: Some("application/json"),
                ..PolicyInput::new(&reader, &binding_req)
            },
            None,
        ),
    ];
    let mut group = c.benchmark_group("policy decide (50 rules)");
    for (name, input, expected) in &cases {
        assert_eq!(
            rule_of(policy.decide(input)).as_deref(),
            *expected,
            "{name}"
        );
        group.bench_function(*name, |b| b.iter(|| policy.decide(black_box(input))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
