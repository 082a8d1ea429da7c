//! The approver registry: which chat account is which accountable person.
//!
//! ```yaml
//! approvers:
//!   - identity: carol@example.com
//!     groups: [platform-leads]
//!     slack: U02CAROL          # Slack user id (never a display name)
//!     teams: "29:1carolAADid"  # Bot Framework `from.id`
//!     discord: "80351110224678912"
//! ```
//!
//! A vote counts only through this mapping: platform user ids are stable and issued by the
//! platform, display names are not, so a user renaming themselves "Carol" gains nothing. An
//! account may belong to one identity only, and an identity to one account per platform.

use std::collections::HashMap;

use gatehouse_events::ChannelKind;
use serde::Deserialize;

use crate::tally::Voter;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverEntry {
    /// The accountable person, as decisions name them.
    pub identity: String,
    /// Groups that policy's `approver_groups` refer to.
    pub groups: Vec<String>,
    /// The team they belong to: under a rule's `four_eyes: owner-and-team`, they may not
    /// approve requests of identities registered to the same team.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub slack: Option<String>,
    #[serde(default)]
    pub teams: Option<String>,
    #[serde(default)]
    pub discord: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproverFile {
    approvers: Vec<ApproverEntry>,
}

/// Chat accounts → approvers.
#[derive(Debug, Default)]
pub struct Approvers {
    by_account: HashMap<(Platform, String), usize>,
    entries: Vec<ApproverEntry>,
}

/// The platforms with chat accounts (the API votes as an identity directly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Platform {
    Slack,
    Teams,
    Discord,
}

impl Approvers {
    /// Parses the registry; empty identities, no groups, or an account claimed twice are
    /// refused with the entry named.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: ApproverFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let mut registry = Self::default();
        let mut identities = std::collections::HashSet::new();
        for (index, entry) in file.approvers.into_iter().enumerate() {
            let name = entry.identity.trim();
            if name.is_empty() {
                return Err(format!("approvers[{index}]: identity is empty"));
            }
            if !identities.insert(name.to_owned()) {
                return Err(format!("approvers[{index}]: {name} is listed twice"));
            }
            if entry.groups.is_empty() {
                return Err(format!(
                    "approvers[{index}] ({name}): groups is empty, so they could approve nothing"
                ));
            }
            for (platform, account) in [
                (Platform::Slack, &entry.slack),
                (Platform::Teams, &entry.teams),
                (Platform::Discord, &entry.discord),
            ] {
                let Some(account) = account.as_deref().map(str::trim) else {
                    continue;
                };
                if account.is_empty() {
                    return Err(format!(
                        "approvers[{index}] ({name}): an empty {platform:?} account id"
                    ));
                }
                let key = (platform, account.to_owned());
                if let Some(other) = registry.by_account.get(&key) {
                    return Err(format!(
                        "approvers[{index}] ({name}): {platform:?} account {account} already belongs to {}",
                        registry.entries[*other].identity
                    ));
                }
                registry.by_account.insert(key, registry.entries.len());
            }
            registry.entries.push(entry);
        }
        Ok(registry)
    }

    /// The approver behind a chat account, if the registry knows it.
    pub fn voter(&self, channel: ChannelKind, account: &str) -> Option<Voter> {
        let platform = match channel {
            ChannelKind::Slack => Platform::Slack,
            ChannelKind::Teams => Platform::Teams,
            ChannelKind::Discord => Platform::Discord,
            ChannelKind::Api => return self.by_identity(account),
        };
        let index = self.by_account.get(&(platform, account.to_owned()))?;
        let entry = &self.entries[*index];
        Some(Voter {
            identity: entry.identity.clone(),
            groups: entry.groups.clone(),
            team: entry.team.clone(),
        })
    }

    /// The approver with this identity (for votes through the authenticated API).
    fn by_identity(&self, identity: &str) -> Option<Voter> {
        self.entries
            .iter()
            .find(|e| e.identity == identity)
            .map(|e| Voter {
                identity: e.identity.clone(),
                groups: e.groups.clone(),
                team: e.team.clone(),
            })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTRY: &str = r#"
approvers:
  - identity: carol@example.com
    groups: [platform-leads]
    slack: U02CAROL
    teams: "29:1carol"
  - identity: dave@example.com
    groups: [platform-leads, sre]
    discord: "80351110224678912"
"#;

    #[test]
    fn accounts_map_to_identities_per_platform() {
        let approvers = Approvers::from_yaml(REGISTRY).unwrap();
        assert_eq!(approvers.len(), 2);
        let carol = approvers.voter(ChannelKind::Slack, "U02CAROL").unwrap();
        assert_eq!(carol.identity, "carol@example.com");
        assert_eq!(carol.groups, ["platform-leads"]);
        assert_eq!(
            approvers
                .voter(ChannelKind::Teams, "29:1carol")
                .unwrap()
                .identity,
            "carol@example.com"
        );
        assert_eq!(
            approvers
                .voter(ChannelKind::Discord, "80351110224678912")
                .unwrap()
                .identity,
            "dave@example.com"
        );
        // The same id on another platform is another account.
        assert!(approvers.voter(ChannelKind::Discord, "U02CAROL").is_none());
        // Never by name: neither a display name nor the identity itself works in chat.
        assert!(approvers.voter(ChannelKind::Slack, "carol").is_none());
        assert!(
            approvers
                .voter(ChannelKind::Slack, "carol@example.com")
                .is_none()
        );
        // Through the authenticated API the identity is the account.
        assert_eq!(
            approvers
                .voter(ChannelKind::Api, "dave@example.com")
                .unwrap()
                .groups,
            ["platform-leads", "sre"]
        );
    }

    #[test]
    fn ambiguous_registries_are_refused() {
        let twice = "approvers:\n  - {identity: a, groups: [g], slack: U1}\n  - {identity: b, groups: [g], slack: U1}\n";
        let e = Approvers::from_yaml(twice).unwrap_err();
        assert!(e.contains("already belongs to a"), "{e}");
        let same = "approvers:\n  - {identity: a, groups: [g]}\n  - {identity: a, groups: [h]}\n";
        assert!(
            Approvers::from_yaml(same)
                .unwrap_err()
                .contains("listed twice")
        );
        let no_groups = "approvers:\n  - {identity: a, groups: []}\n";
        assert!(
            Approvers::from_yaml(no_groups)
                .unwrap_err()
                .contains("groups is empty")
        );
        let unknown = "approvers:\n  - {identity: a, groups: [g], email: a@x}\n";
        assert!(
            Approvers::from_yaml(unknown)
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
