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
//!
//! A `principal` with `*` is a glob, e.g. `github:acme/*@prod` for every repository of `acme`
//! deploying to `prod`. Lookup tries the exact principals first, then the globs in file order;
//! the first match answers. A `*` matches any run of characters except the separators `/`,
//! `:` and `@`, so a glob never reaches across a path, issuer prefix or environment boundary
//! (`github:acme/*@prod` does not match `github:acme/app@x@prod` nor `github:acme/a/b@prod`).
//! A glob must have a separator before its first `*` (a literal prefix such as `github:`), so
//! it can never catch principals of every issuer. The identity keeps the caller's own
//! principal; the entry lends it owner, team, purpose and groups.

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
    /// Glob entries in file order.
    globs: Vec<(Vec<char>, RegistryEntry)>,
}

/// Characters a glob's `*` never matches.
const SEPARATORS: [char; 3] = ['/', ':', '@'];
/// Longer principals are only ever matched exactly (bounds the glob matcher's work).
const GLOB_MAX_PRINCIPAL: usize = 1024;

impl Registry {
    /// Parses the registry YAML; duplicate principals and empty owners are refused.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: RegistryFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let mut by_principal = HashMap::new();
        let mut globs: Vec<(Vec<char>, RegistryEntry)> = Vec::new();
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
            if entry.principal.contains('*') {
                check_glob(&entry.principal)?;
                if globs.iter().any(|(_, e)| e.principal == entry.principal) {
                    return Err(format!("identity {} is listed twice", entry.principal));
                }
                globs.push((entry.principal.chars().collect(), entry));
                continue;
            }
            if let Some(dup) = by_principal.insert(entry.principal.clone(), entry) {
                return Err(format!("identity {} is listed twice", dup.principal));
            }
        }
        Ok(Self {
            by_principal,
            globs,
        })
    }

    /// The principals listed exactly (not as globs), in no particular order.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.by_principal.keys().map(String::as_str)
    }

    /// Entries, exact and glob.
    pub fn len(&self) -> usize {
        self.by_principal.len() + self.globs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for a principal: its exact entry, else the first glob that matches.
    pub fn lookup(&self, principal: &str) -> Option<&RegistryEntry> {
        if let Some(entry) = self.by_principal.get(principal) {
            return Some(entry);
        }
        if self.globs.is_empty() || principal.len() > GLOB_MAX_PRINCIPAL {
            return None;
        }
        let text: Vec<char> = principal.chars().collect();
        self.globs
            .iter()
            .find(|(pattern, _)| glob_matches(pattern, &text))
            .map(|(_, entry)| entry)
    }

    /// The accountable identity for a verified caller; `registered` is false for strangers.
    pub fn resolve(&self, token: &Verified) -> Identity {
        let entry = self.lookup(&token.principal);
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
            attributes: token.attributes.clone(),
        }
    }
}

fn check_glob(pattern: &str) -> Result<(), String> {
    if pattern.contains("**") {
        return Err(format!(
            "identity {pattern}: `**` is not supported; `*` matches within one segment"
        ));
    }
    let before_star = pattern.split('*').next().unwrap_or_default();
    if !before_star.contains(SEPARATORS) {
        return Err(format!(
            "identity {pattern}: a glob needs a literal prefix ending in a separator (`/`, `:` or `@`) before its first `*`, e.g. `github:acme/*`"
        ));
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where `*` stands for any run of non-separator characters.
/// Dynamic programming over (pattern, text) prefixes: no backtracking blow-up on hostile input.
fn glob_matches(pattern: &[char], text: &[char]) -> bool {
    // matched[j]: the pattern so far matches text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == '*' {
            for j in 0..=text.len() {
                next[j] =
                    matched[j] || (j > 0 && next[j - 1] && !SEPARATORS.contains(&text[j - 1]));
            }
        } else {
            for j in 1..=text.len() {
                next[j] = matched[j - 1] && text[j - 1] == p;
            }
        }
        matched = next;
    }
    matched[text.len()]
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
            attributes: [("environment".to_owned(), "prod".to_owned())].into(),
        }
    }

    #[test]
    fn registered_principals_get_owner_and_groups() {
        let r = Registry::from_yaml(YAML).unwrap();
        let id = r.resolve(&token("ci-deployer", &["ci", "deployers"]));
        assert!(id.registered);
        assert_eq!(id.owner.as_deref(), Some("alice@example.com"));
        assert_eq!(id.groups, vec!["ci", "deployers"]);
        assert_eq!(id.attributes["environment"], "prod");
    }

    const GLOBS: &str = r#"
identities:
  - principal: github:acme/*@prod
    owner: prod@example.com
    team: release
    purpose: production deploys
  - principal: github:acme/billing@prod
    owner: billing@example.com
    team: billing
    purpose: billing deploys
  - principal: github:acme/*
    owner: ci@example.com
    team: platform
    purpose: any other acme build
    groups: [ci]
"#;

    #[test]
    fn exact_principals_win_then_the_first_matching_glob() {
        let r = Registry::from_yaml(GLOBS).unwrap();
        assert_eq!(r.len(), 3);
        let owner = |p: &str| r.resolve(&token(p, &[])).owner;
        assert_eq!(
            owner("github:acme/billing@prod").as_deref(),
            Some("billing@example.com")
        );
        assert_eq!(
            owner("github:acme/app@prod").as_deref(),
            Some("prod@example.com")
        );
        assert_eq!(owner("github:acme/app").as_deref(), Some("ci@example.com"));
        let id = r.resolve(&token("github:acme/app", &[]));
        assert!(id.registered);
        assert_eq!(
            id.principal, "github:acme/app",
            "the caller keeps its own principal"
        );
        assert_eq!(id.groups, vec!["ci"]);
    }

    #[test]
    fn a_glob_star_never_crosses_a_separator() {
        let r = Registry::from_yaml(GLOBS).unwrap();
        for stranger in [
            "github:acme/app@pr@prod",
            "github:acme/a/b@prod",
            "github:acme/app@staging",
            "github:acme2/app",
            "github:evil/acme/app",
        ] {
            let id = r.resolve(&token(stranger, &[]));
            assert!(!id.registered, "{stranger} must not match");
        }
        let long = format!("github:acme/{}", "a".repeat(5000));
        assert!(!r.resolve(&token(&long, &[])).registered);
    }

    #[test]
    fn unscoped_or_double_star_globs_are_refused() {
        let entry = |p: &str| {
            format!(
                "identities:\n  - principal: '{p}'\n    owner: o\n    team: t\n    purpose: p\n"
            )
        };
        assert!(
            Registry::from_yaml(&entry("*"))
                .unwrap_err()
                .contains("literal prefix")
        );
        assert!(
            Registry::from_yaml(&entry("ci-*"))
                .unwrap_err()
                .contains("literal prefix")
        );
        assert!(
            Registry::from_yaml(&entry("github:**"))
                .unwrap_err()
                .contains("**")
        );
        assert!(Registry::from_yaml(&entry("sa:team-a:*")).is_ok());
        let twice = format!(
            "{GLOBS}  - principal: github:acme/*\n    owner: b\n    team: t\n    purpose: p\n"
        );
        assert!(Registry::from_yaml(&twice).unwrap_err().contains("twice"));
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
