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

pub const IDENTITIES_YAML: &str = r#"# Gatehouse identity registry: every machine principal and who answers for it.
# A principal that is not listed here is denied, whatever its token says.
identities:
  - principal: ci-deployer
    owner: alice@example.com
    team: platform
    purpose: Deploys the apps namespace from CI
    groups: [deployers]
  - principal: readonly-bot
    owner: bob@example.com
    team: observability
    purpose: Reads cluster state for dashboards
    groups: [readers]
# `intruder` has a valid token from the demo issuer but is deliberately absent.
"#;

pub const POLICY_YAML: &str = r#"# Gatehouse policy: ordered rules, first match wins, default deny.
rules:
  - id: discovery
    description: every registered identity may read API discovery and version
    action: allow
    verbs: [get]
    non_resource_urls: ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]

  - id: deployer-apps
    description: CI deploys into apps
    action: allow
    identities: [ci-deployer]
    verbs: [get, list, watch, create, update, patch, delete]
    resources: ["*"]
    namespaces: [apps]

  - id: deployer-no-secrets-elsewhere
    description: secrets outside apps are not CI's business
    action: deny
    identities: [ci-deployer]
    verbs: ["*"]
    resources: [secrets]

  - id: deployer-read
    description: CI may look around the cluster
    action: allow
    identities: [ci-deployer]
    verbs: [get, list]
    resources: ["*"]

  - id: readers-no-secrets
    description: dashboards never see secrets
    action: deny
    groups: [readers]
    verbs: ["*"]
    resources: [secrets]

  - id: readers
    description: dashboards read everything else
    action: allow
    groups: [readers]
    verbs: [get, list, watch]
    resources: ["*"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files_parse() {
        let registry = gatehouse_proxy::identity::Registry::from_yaml(IDENTITIES_YAML).unwrap();
        assert_eq!(registry.len(), 2);
        let policy = gatehouse_proxy::policy::Policy::from_yaml(POLICY_YAML).unwrap();
        assert_eq!(policy.rules().len(), 6);
    }
}
