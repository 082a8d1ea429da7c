//! What `gatehouse up --sandbox` starts with: demo identities and the demo policy. They are
//! written into the data directory on first start and read from there afterwards, so a user
//! can edit them and restart.

/// Audience the demo issuer mints for and the proxy accepts.
pub const AUDIENCE: &str = "gatehouse";

/// A demo identity and what its kubeconfig is for.
#[derive(Debug, Clone, Copy)]
pub struct DemoIdentity {
    pub principal: &'static str,
    /// Default namespace in its kubeconfig.
    pub namespace: &'static str,
    pub summary: &'static str,
}

pub const IDENTITIES: [DemoIdentity; 3] = [
    DemoIdentity {
        principal: "ci-deployer",
        namespace: "apps",
        summary: "changes anything in apps; reads elsewhere; never secrets outside apps",
    },
    DemoIdentity {
        principal: "readonly-bot",
        namespace: "default",
        summary: "get / list / watch only; no secrets",
    },
    DemoIdentity {
        principal: "intruder",
        namespace: "default",
        summary: "a valid token for an identity missing from the registry: denied everything",
    },
];

pub const IDENTITIES_YAML: &str = include_str!("../../../deploy/demo/identities.yaml");

/// Who may vote on holds in the demo: chat accounts map to these identities (the Slack,
/// Teams and Discord ids are the local fakes' users), and `gatehouse approvals vote --as`
/// uses their demo tokens.
pub const APPROVERS_YAML: &str = include_str!("../../../deploy/demo/approvers.yaml");

/// The demo auditor: a token with group `auditors` for the evidence service's auditor API.
pub const AUDITOR: &str = "auditor@example.com";

/// The demo approvers' identities (each gets a token in `tokens/`).
pub const APPROVERS: [&str; 3] = ["alice@example.com", "bob@example.com", "carol@example.com"];

/// The sign-in clients of the auditor console and the approver page at the demo issuer.
pub const CONSOLE_CLIENT: &str = "gatehouse-console";
pub const APPROVAL_CLIENT: &str = "gatehouse-approvals";

/// Under the issuer's directory: the demo people's passwords, made on first start.
pub const PASSWORDS_FILE: &str = "passwords.yaml";

/// Someone who signs in to the console or the approver page.
#[derive(Debug, Clone)]
pub struct Person {
    pub email: String,
    pub name: String,
    pub password: String,
    /// Groups in their ID token: the console admits `auditors`. (Approvers are who the
    /// approver registry names, whatever their token's groups.)
    pub groups: Vec<String>,
}

/// The demo people: the approvers, the auditor, and Dave, who is neither (to see the
/// refusals). Passwords are read from `passwords` or, the first time, made and written there.
pub fn people(passwords: &std::path::Path) -> anyhow::Result<Vec<Person>> {
    use anyhow::Context as _;
    let list: [(&str, &str, &[&str]); 5] = [
        ("alice@example.com", "Alice", &["sre", "platform-leads"]),
        ("bob@example.com", "Bob", &["sre", "platform-leads"]),
        ("carol@example.com", "Carol", &["security"]),
        (AUDITOR, "Audrey the auditor", &["auditors"]),
        ("dave@example.com", "Dave", &[]),
    ];
    let mut known: std::collections::BTreeMap<String, String> =
        match std::fs::read_to_string(passwords) {
            Ok(text) => yaml_serde::from_str(&text)
                .with_context(|| format!("reading {}", passwords.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", passwords.display())),
        };
    let mut changed = false;
    for (email, _, _) in &list {
        known.entry((*email).to_owned()).or_insert_with(|| {
            changed = true;
            use rand::distr::{Alphanumeric, SampleString as _};
            Alphanumeric.sample_string(&mut rand::rng(), 16)
        });
    }
    if changed {
        let mut text = String::from(
            "# Demo sign-in passwords for the console and the approver page (made by gatehouse up)\n",
        );
        for (email, password) in &known {
            text.push_str(&format!("{email}: {password}\n"));
        }
        gatehouse::kubeconfig::write_private(passwords, &text)?;
    }
    Ok(list
        .iter()
        .map(|(email, name, groups)| Person {
            email: (*email).to_owned(),
            name: (*name).to_owned(),
            password: known[*email].clone(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        })
        .collect())
}

/// The demo policy, kept in `deploy/demo/policy.yaml` so the proxy's benches measure the same
/// rules.
pub const POLICY_YAML: &str = include_str!("../../../deploy/demo/policy.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files_parse() {
        let registry = gatehouse_proxy::identity::Registry::from_yaml(IDENTITIES_YAML).unwrap();
        assert_eq!(registry.len(), 3);
        let policy = gatehouse_proxy::policy::Policy::from_yaml(POLICY_YAML).unwrap();
        assert_eq!(policy.rules().len(), 13);
        let findings = gatehouse_proxy::policy::lint(&policy);
        let codes: Vec<(&str, Option<&str>)> = findings
            .iter()
            .map(|f| (f.code, f.rule.as_deref()))
            .collect();
        // CI's own namespace is a sandbox: shells there are deliberate, and so are the two
        // exceptions-first: no-shells and the secrets rule do not apply in apps.
        assert_eq!(
            codes,
            [
                ("exec-without-command-guard", Some("deployer-sessions-apps")),
                ("partly-shadowed", Some("no-shells")),
                ("partly-shadowed", Some("deployer-no-secrets-elsewhere")),
            ],
            "{findings:?}"
        );
    }

    fn decide(
        principal: &str,
        verb: &str,
        resource: &str,
        namespace: &str,
        command: &[&str],
    ) -> Option<String> {
        use gatehouse_proxy::policy::{Decision, PolicyInput};
        let policy = gatehouse_proxy::policy::Policy::from_yaml(POLICY_YAML).unwrap();
        let identity = gatehouse_events::Identity {
            issuer: "demo".into(),
            subject: principal.into(),
            principal: principal.into(),
            registered: true,
            owner: None,
            team: None,
            purpose: None,
            groups: vec![],
            attributes: Default::default(),
        };
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        let request = gatehouse_events::RequestInfo {
            is_resource_request: true,
            verb: verb.into(),
            api_group: group.into(),
            namespace: namespace.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            name: "web".into(),
            ..Default::default()
        };
        let command: Vec<String> = command.iter().map(|c| c.to_string()).collect();
        let input = PolicyInput {
            command: &command,
            ..PolicyInput::new(&identity, &request)
        };
        match policy.decide(&input) {
            Decision::Allow(p) => Some(format!("allow {}", p.rule())),
            Decision::Hold(h) => Some(format!("hold {}", h.rule())),
            Decision::Deny(d) => d.rule.map(|r| format!("deny {r}")),
        }
    }

    #[test]
    fn demo_guardrails_and_holds() {
        let shell = decide(
            "ci-deployer",
            "exec",
            "pods/exec",
            "apps",
            &["sh", "-c", "exit 3"],
        );
        assert_eq!(shell.as_deref(), Some("allow deployer-sessions-apps"));
        let shell = decide(
            "ci-deployer",
            "exec",
            "pods/exec",
            "prod",
            &["/bin/sh", "-c", "id"],
        );
        assert_eq!(shell.as_deref(), Some("deny no-shells"));
        let shell = decide(
            "readonly-bot",
            "exec",
            "pods/exec",
            "apps",
            &["busybox", "sh"],
        );
        assert_eq!(shell.as_deref(), Some("deny no-shells"));
        let ls = decide("ci-deployer", "exec", "pods/exec", "prod", &["ls", "/"]);
        assert_eq!(ls.as_deref(), Some("allow deployer-exec-elsewhere"));
        let rm = decide(
            "ci-deployer",
            "exec",
            "pods/exec",
            "prod",
            &["rm", "-rf", "/"],
        );
        assert_eq!(rm, None);
        let forward = decide(
            "ci-deployer",
            "portforward",
            "pods/portforward",
            "apps",
            &[],
        );
        assert_eq!(forward.as_deref(), Some("allow deployer-sessions-apps"));
        let scale = decide(
            "ci-deployer",
            "patch",
            "deployments.apps/scale",
            "prod",
            &[],
        );
        assert_eq!(scale.as_deref(), Some("hold deployer-scale-prod"));
        // What the spine tests rely on.
        let secrets = decide("ci-deployer", "list", "secrets", "prod", &[]);
        assert_eq!(
            secrets.as_deref(),
            Some("deny deployer-no-secrets-elsewhere")
        );
        // Never secrets outside apps, not even a delete in prod an SRE would approve.
        assert_eq!(
            decide("ci-deployer", "delete", "secrets", "prod", &[]).as_deref(),
            Some("deny deployer-no-secrets-elsewhere")
        );
        // Deletes in prod wait for an SRE; elsewhere outside apps they are denied.
        assert_eq!(
            decide("ci-deployer", "delete", "pods", "prod", &[]).as_deref(),
            Some("hold deployer-delete-prod")
        );
        assert_eq!(
            decide("ci-deployer", "delete", "pods", "kube-system", &[]),
            None
        );
        let pods = decide("ci-deployer", "get", "pods", "apps", &[]);
        assert_eq!(pods.as_deref(), Some("allow deployer-apps"));
    }
}
