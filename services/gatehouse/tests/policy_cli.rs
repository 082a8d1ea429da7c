//! `gatehouse policy check` and `gatehouse policy explain` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The demo policy and identity registry (`deploy/demo/`), as `gatehouse up` writes them.
const DEMO_POLICY: &str = include_str!("../../../deploy/demo/policy.yaml");
const DEMO_IDENTITIES: &str = include_str!("../../../deploy/demo/identities.yaml");

fn gatehouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .env("GATEHOUSE_LOG", "error")
        .output()
        .expect("the gatehouse binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn check_passes_the_shipped_policies() {
    let example =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/policy.example.yaml");
    let out = gatehouse(&["policy", "check", s(&example)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("10 rules, 1 mask profile; 0 errors, 0 warnings, 0 info"),
        "{}",
        text(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let demo = file(dir.path(), "demo.yaml", DEMO_POLICY);
    let out = gatehouse(&["policy", "check", s(&demo)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout)
            .contains("info[exec-without-command-guard]: rule deployer-sessions-apps allows exec"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_refuses_a_bad_file_naming_the_line_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = file(
        dir.path(),
        "bad.yaml",
        "rules:\n  - id: a\n    action: allow\n    verbs:\n      - get\n      - gett\n    resources: [pods]\n    mask: nope\n",
    );
    let out = gatehouse(&["policy", "check", s(&bad)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}:6:9: error[bad-verb]: rules[0].verbs[1]: unknown verb \"gett\"",
            s(&bad)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{}:8:11: error[unknown-mask-profile]: rules[0].mask: mask profile \"nope\" is not declared",
            s(&bad)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused: 2 problems; the proxy would not load this policy"),
        "{stdout}"
    );

    let unknown_field = file(
        dir.path(),
        "field.yaml",
        "rules:\n  - id: a\n    action: allow\n    verbs: [get]\n    resources: [pods]\n    namespace: [x]\n",
    );
    let out = gatehouse(&["policy", "check", s(&unknown_field)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains(&format!(
            "{}:6:5: error[unknown-field]: rules[0]: unknown field `namespace`",
            s(&unknown_field)
        )),
        "{}",
        text(&out.stdout)
    );

    let syntax = file(
        dir.path(),
        "syntax.yaml",
        "rules:\n  - id: a\n    verbs: [get\n",
    );
    let out = gatehouse(&["policy", "check", s(&syntax)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains(&format!("{}:4:1: error[yaml-syntax]: ", s(&syntax))),
        "{}",
        text(&out.stdout)
    );

    let missing = dir.path().join("missing.yaml");
    let out = gatehouse(&["policy", "check", s(&missing)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read policy"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_exits_1_on_lint_errors_and_0_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let shadowed = file(
        dir.path(),
        "shadowed.yaml",
        "rules:\n  - id: readers\n    action: allow\n    groups: [readers]\n    verbs: [get, list]\n    resources: [\"*\"]\n  - id: readers-no-secrets\n    action: deny\n    groups: [readers]\n    verbs: [get]\n    resources: [secrets]\n",
    );
    let out = gatehouse(&["policy", "check", s(&shadowed)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}:7:5: error[shadowed-rule]: deny rule readers-no-secrets never matches: the earlier allow rule readers (line 2)",
            s(&shadowed)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 rules, 0 mask profiles; 1 error, 0 warnings, 0 info"),
        "{stdout}"
    );

    let warned = file(
        dir.path(),
        "warned.yaml",
        "rules:\n  - id: secret-reader\n    action: allow\n    identities: [vault]\n    verbs: [get]\n    resources: [secrets]\n",
    );
    let out = gatehouse(&["policy", "check", s(&warned)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("warning[secrets-without-mask]"));

    // The demo's old mistake: an approve rule above a deny lets the approved delete through.
    let partly = file(
        dir.path(),
        "partly.yaml",
        "rules:\n  - id: delete-prod\n    action: approve\n    identities: [ci]\n    verbs: [delete]\n    resources: [\"*\"]\n    namespaces: [prod]\n    approval: {approver_groups: [sre]}\n  - id: no-secrets\n    action: deny\n    identities: [ci]\n    verbs: [\"*\"]\n    resources: [secrets]\n",
    );
    let out = gatehouse(&["policy", "check", s(&partly)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}:9:5: warning[partly-shadowed]: deny rule no-secrets does not apply to every request it names: the earlier approve rule delete-prod (line 2) decides delete secrets in namespace prod first",
            s(&partly)
        )),
        "{stdout}"
    );
    // The other way round is the usual exception-first idiom: nothing to say.
    let exception_first = file(
        dir.path(),
        "exception.yaml",
        "rules:\n  - id: no-secrets\n    action: deny\n    identities: [ci]\n    verbs: [\"*\"]\n    resources: [secrets]\n  - id: delete-prod\n    action: approve\n    identities: [ci]\n    verbs: [delete]\n    resources: [\"*\"]\n    namespaces: [prod]\n    approval: {approver_groups: [sre]}\n",
    );
    let out = gatehouse(&["policy", "check", s(&exception_first)]);
    assert!(
        !text(&out.stdout).contains("partly-shadowed"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn help_states_the_exit_codes() {
    let out = gatehouse(&["policy", "check", "--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("Exit status:") && help.contains("2  the file cannot be read"),
        "{help}"
    );
    let out = gatehouse(&["policy", "explain", "--help"]);
    assert!(
        text(&out.stdout).contains("--command"),
        "{}",
        text(&out.stdout)
    );
}

/// The demo policy with the demo registry beside it, as `gatehouse up` writes them.
fn demo_policy(dir: &Path) -> PathBuf {
    file(dir, "identities.yaml", DEMO_IDENTITIES);
    file(dir, "policy.yaml", DEMO_POLICY)
}

/// The line of rule `id` in the demo policy.
fn demo_line(id: &str) -> usize {
    DEMO_POLICY
        .lines()
        .position(|l| l.trim() == format!("- id: {id}"))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no rule {id} in the demo policy"))
}

#[test]
fn explain_names_the_deciding_rule_and_why_the_others_missed() {
    let dir = tempfile::tempdir().unwrap();
    let policy = demo_policy(dir.path());
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "ci-deployer",
        "list",
        "secrets",
        "-n",
        "prod",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("request: list secrets in namespace \"prod\" as ci-deployer (groups: deployers)\nnote: identity registry: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ndecision: deny by rule deployer-no-secrets-elsewhere\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ci-deployer may not list secrets in namespace \"prod\": denied by rule deployer-no-secrets-elsewhere"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1. deployer-sessions-apps (line 22) [allow] no match: verb list is not in verbs [exec, attach, portforward]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "5. deployer-apps (line {}) [allow] no match: namespace prod is not in namespaces [apps]",
            demo_line("deployer-apps")
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "6. deployer-no-secrets-elsewhere (line {}) [deny] MATCH",
            demo_line("deployer-no-secrets-elsewhere")
        )),
        "{stdout}"
    );
    assert!(
        !stdout.contains("7. "),
        "stops at the deciding rule: {stdout}"
    );
}

/// The demo says "never secrets outside apps": not even a delete in prod with an approval.
#[test]
fn the_demo_never_lets_ci_delete_a_secret_in_prod() {
    let dir = tempfile::tempdir().unwrap();
    let policy = demo_policy(dir.path());
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "ci-deployer",
        "delete",
        "secrets",
        "db",
        "-n",
        "prod",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("decision: deny by rule deployer-no-secrets-elsewhere"),
        "{stdout}"
    );
    // A configmap there still waits for an SRE.
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "ci-deployer",
        "delete",
        "configmaps",
        "api-config",
        "-n",
        "prod",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("decision: hold for approval by rule deployer-delete-prod"),
        "{stdout}"
    );
}

/// Without a registry explain would answer for a caller with no groups, which is not what the
/// proxy does: it uses the one beside the policy, or refuses.
#[test]
fn explain_uses_the_registry_beside_the_policy_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let policy = file(dir.path(), "policy.yaml", DEMO_POLICY);
    let args = [
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "readonly-bot",
        "list",
        "pods",
        "-n",
        "prod",
    ];
    let out = gatehouse(&args);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no identity registry"), "{stderr}");
    assert!(
        stderr.contains("--identities") && stderr.contains("--no-registry"),
        "{stderr}"
    );
    // Without a registry readonly-bot has no group, so the readers rules do not apply.
    let mut without = args.to_vec();
    without.push("--no-registry");
    let out = gatehouse(&without);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("default deny"),
        "{}",
        text(&out.stdout)
    );
    file(dir.path(), "identities.yaml", DEMO_IDENTITIES);
    let out = gatehouse(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("(groups: readers)"), "{stdout}");
    assert!(
        stdout.contains("decision: allow by rule readers"),
        "{stdout}"
    );
}

#[test]
fn explain_sees_through_shell_tricks_in_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let policy = demo_policy(dir.path());
    let run = |command: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            "--policy",
            s(&policy),
            "--as",
            "ci-deployer",
            "exec",
            "pods",
            "web",
            "-n",
            "prod",
            "--command",
        ];
        args.extend_from_slice(command);
        let out = gatehouse(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let stdout = run(&["busybox", "sh", "-c", "id"]);
    assert!(
        stdout.contains("decision: deny by rule no-shells"),
        "{stdout}"
    );
    assert!(
        stdout.contains("command \"busybox sh -c id\" runs: busybox, sh, id; a shell"),
        "{stdout}"
    );
    let stdout = run(&["ls", "-la"]);
    assert!(
        stdout.contains("decision: allow by rule deployer-exec-elsewhere"),
        "{stdout}"
    );
    let stdout = run(&["rm", "-rf", "/"]);
    assert!(
        stdout.contains("decision: deny (no rule matched: default deny)"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("it runs rm, not listed in program [ls, cat, date, echo, id, ps, hostname]"),
        "{stdout}"
    );
}

#[test]
fn explain_reads_a_body_file_and_the_identity_registry() {
    let dir = tempfile::tempdir().unwrap();
    let policy = demo_policy(dir.path());
    let admin = file(
        dir.path(),
        "admin.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: x, namespace: apps}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\n",
    );
    let view = file(
        dir.path(),
        "view.json",
        r#"{"kind":"RoleBinding","roleRef":{"kind":"ClusterRole","name":"view"}}"#,
    );
    let explain = |body: &Path| {
        let out = gatehouse(&[
            "policy",
            "explain",
            "--policy",
            s(&policy),
            "--as",
            "ci-deployer",
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            "apps",
            "--body",
            s(body),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let stdout = explain(&admin);
    assert!(
        stdout.contains("decision: deny by rule no-cluster-admin-bindings"),
        "{stdout}"
    );
    assert!(
        stdout.contains("is YAML; explained as the JSON kubectl would send"),
        "{stdout}"
    );
    assert!(
        stdout.contains("roleRef.name = \"cluster-admin\" matches \"^cluster-admin$\""),
        "{stdout}"
    );
    let stdout = explain(&view);
    assert!(
        stdout.contains("decision: allow by rule deployer-apps"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "3. no-cluster-admin-bindings (line {}) [deny] no match: body: body[0] does not hold: no value at roleRef.name matches",
            demo_line("no-cluster-admin-bindings")
        )),
        "{stdout}"
    );

    let registry = file(dir.path(), "identities.yaml", DEMO_IDENTITIES);
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--identities",
        s(&registry),
        "--as",
        "readonly-bot",
        "get",
        "configmaps",
        "-n",
        "kube-system",
        "settings",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("as readonly-bot (groups: readers)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decision: allow by rule readers"),
        "{stdout}"
    );
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--identities",
        s(&registry),
        "--as",
        "intruder",
        "get",
        "/version",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("note: intruder is not in the identity registry"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decision: allow by rule default:discovery"),
        "{stdout}"
    );
    // Anything else: what the proxy answers an unknown identity, whatever the rules say.
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "intruder",
        "list",
        "pods",
        "-n",
        "apps",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("decision: deny (unknown identity)"),
        "{stdout}"
    );
}

#[test]
fn explain_refuses_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let policy = demo_policy(dir.path());
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "x",
        "get",
        "pods/a/b",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("RESOURCE[.GROUP][/SUBRESOURCE]"),
        "{}",
        text(&out.stderr)
    );
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--as",
        "x",
        "delete",
        "pods",
        "-n",
        "apps",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("delete needs a NAME"),
        "{}",
        text(&out.stderr)
    );
    let bad = file(dir.path(), "bad.yaml", "rules: []\nextra: 1\n");
    let out = gatehouse(&[
        "policy",
        "explain",
        "--policy",
        s(&bad),
        "--as",
        "x",
        "get",
        "pods",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 2, column 1: unknown field `extra`"),
        "{}",
        text(&out.stderr)
    );
}
