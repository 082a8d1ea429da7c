//! The example configurations in deploy/config parse and validate with the real types.

use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/config")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(example(name)).unwrap()
}

#[test]
fn proxy_example_is_valid() {
    let config: gatehouse_proxy::ProxyConfig =
        gatehouse::load_yaml(&example("proxy.example.yaml")).unwrap();
    config.validate().unwrap();
    assert_eq!(config.issuers.len(), 2);
    assert_eq!(config.nats.stream.replicas, 3);
}

#[test]
fn approval_example_is_valid() {
    let config =
        gatehouse_approval::ApprovalConfig::from_yaml(&read("approval.example.yaml")).unwrap();
    assert_eq!(config.connections.max_connections_per_address, 64);
    assert!(config.admin_listen.is_some());
}

#[test]
fn evidence_example_is_valid() {
    let config: gatehouse_evidence::EvidenceConfig =
        gatehouse::load_yaml(&example("evidence.example.yaml")).unwrap();
    config.validate().unwrap();
}

#[test]
fn identities_and_policy_examples_are_valid() {
    let registry =
        gatehouse_proxy::identity::Registry::from_yaml(&read("identities.example.yaml")).unwrap();
    assert_eq!(registry.len(), 2);
    let policy = gatehouse_proxy::policy::Policy::from_yaml(&read("policy.example.yaml")).unwrap();
    assert_eq!(policy.rules().len(), 10);
    assert_eq!(gatehouse_proxy::policy::lint(&policy), vec![]);
}
