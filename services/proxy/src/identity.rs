//! The identity registry: who answers for each machine principal.
//!
//! ```yaml
//! identities:
//!   - principal: ci-deployer
//!     owner: alice@example.com
//!     team: platform
//!     purpose: Deploys the apps namespace from CI
//!     groups: [deployers]
//! ```
//!
//! A principal that is not here is denied, whatever its token says: every call must trace back
//! to an accountable owner.

use std::collections::HashMap;

use gatehouse_events::Identity;
use serde::Deserialize;

use crate::authn::Verified;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    pub principal: String,
    pub owner: String,
    pub team: String,
    pub purpose: String,
    /// Groups added to the token's own, e.g. to bind RBAC to a team.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    identities: Vec<RegistryEntry>,
}

#[derive(Debug, Default)]
pub struct Registry {
    by_principal: HashMap<String, RegistryEntry>,
}

impl Registry {
    /// Parses the registry YAML; duplicate principals and empty owners are refused.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: RegistryFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let mut by_principal = HashMap::new();
        for entry in file.identities {
            if entry.principal.is_empty() {
                return Err("an identity has an empty principal".into());
            }
            if entry.owner.trim().is_empty() || entry.team.trim().is_empty() {
                return Err(format!(
                    "identity {}: owner and team are required, so every call has someone to answer for it",
                    entry.principal
                ));
            }
            if let Some(dup) = by_principal.insert(entry.principal.clone(), entry) {
                return Err(format!("identity {} is listed twice", dup.principal));
            }
        }
        Ok(Self { by_principal })
    }

    pub fn len(&self) -> usize {
        self.by_principal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_principal.is_empty()
    }

    /// The accountable identity for a verified token; `registered` is false for strangers.
    pub fn resolve(&self, token: &Verified) -> Identity {
        let entry = self.by_principal.get(&token.principal);
        let mut groups = token.groups.clone();
        if let Some(entry) = entry {
            for g in &entry.groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
        }
        Identity {
            issuer: token.issuer.clone(),
            subject: token.subject.clone(),
            principal: token.principal.clone(),
            registered: entry.is_some(),
            owner: entry.map(|e| e.owner.clone()),
            team: entry.map(|e| e.team.clone()),
            purpose: entry.map(|e| e.purpose.clone()),
            groups,
            attributes: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
identities:
  - principal: ci-deployer
    owner: alice@example.com
    team: platform
    purpose: deploys apps
    groups: [deployers]
"#;

    fn token(principal: &str, groups: &[&str]) -> Verified {
        Verified {
            issuer: "https://issuer".into(),
            subject: principal.into(),
            principal: principal.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn registered_principals_get_owner_and_groups() {
        let r = Registry::from_yaml(YAML).unwrap();
        let id = r.resolve(&token("ci-deployer", &["ci", "deployers"]));
        assert!(id.registered);
        assert_eq!(id.owner.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, vec!["ci", "deployers"]);
    }

    #[test]
    fn strangers_are_marked_unregistered() {
        let r = Registry::from_yaml(YAML).unwrap();
        let id = r.resolve(&token("intruder", &[]));
        assert!(!id.registered);
        assert_eq!(id.owner, None);
    }

    #[test]
    fn bad_registries_are_refused() {
        assert!(
            Registry::from_yaml(
                "identities:\n  - principal: x\n    owner: ''\n    team: t\n    purpose: p\n"
            )
            .is_err()
        );
        let dup = format!(
            "{YAML}  - principal: ci-deployer\n    owner: b\n    team: t\n    purpose: p\n"
        );
        assert!(Registry::from_yaml(&dup).unwrap_err().contains("twice"));
        assert!(Registry::from_yaml("identities:\n  - principal: x\n    ownr: a\n").is_err());
    }
}
