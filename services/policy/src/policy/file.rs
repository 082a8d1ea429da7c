//! The policy file as an operator writes it: the serde shapes, nothing compiled yet.
//!
//! Only the shape is checked here (types, unknown fields, enum values); what the values mean
//! (verbs, regexes, durations, profile names) is checked in [`super::compile`], which can report
//! every problem at once with its line.

use std::collections::BTreeMap;
use std::fmt;

use gatehouse_events::RecordLevel;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::mask::ProfileSpec;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    #[serde(default)]
    pub defaults: DefaultsSpec,
    /// Named mask profiles that rules refer to with `mask:`.
    #[serde(default)]
    pub mask_profiles: BTreeMap<String, ProfileSpec>,
    pub rules: Vec<RuleSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsSpec {
    /// Record level of rules that do not set one (default `metadata`).
    #[serde(default)]
    pub record: Option<RecordLevel>,
    /// Whether any authenticated caller may read API discovery when no rule decides (default
    /// true; see `policy::baseline`).
    #[serde(default)]
    pub allow_discovery: Option<bool>,
    /// Whether a registered identity may ask the cluster about itself (`auth can-i`,
    /// `auth whoami`) when no rule decides (default true).
    #[serde(default)]
    pub allow_self_review: Option<bool>,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// Hold the request until approvers allow it.
    Approve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
        }
    }

    /// Deny and approve rules restrict; their guardrails fail closed by matching.
    pub(crate) fn restricts(self) -> bool {
        !matches!(self, Action::Allow)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub action: Action,
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    pub verbs: Vec<String>,
    #[serde(default)]
    pub api_groups: Option<Vec<String>>,
    #[serde(default)]
    pub resources: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    #[serde(default)]
    pub non_resource_urls: Option<Vec<String>>,
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    #[serde(default)]
    pub record: Option<RecordLevel>,
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default)]
    pub commands: Option<Vec<CommandSpec>>,
    #[serde(default)]
    pub body: Option<Vec<BodySpec>>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovalSpec {
    #[serde(default)]
    pub approver_groups: Vec<String>,
    #[serde(default)]
    pub quorum: Option<u32>,
    /// humantime, e.g. `10m`.
    #[serde(default)]
    pub hold_timeout: Option<String>,
    #[serde(default)]
    pub grant_window: Option<String>,
    /// `owner` (default), `owner-and-team` or `off`.
    #[serde(default)]
    pub four_eyes: Option<gatehouse_events::FourEyes>,
    /// `true`, or `{max_age: 5m, amr: [...], acr: [...]}`: a vote counts only after a fresh
    /// sign-in on the approver page.
    #[serde(default)]
    pub step_up: Option<StepUpSpec>,
}

/// An approval's step-up: `true` (the defaults) or its settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum StepUpSpec {
    On(bool),
    With(StepUpSettings),
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepUpSettings {
    /// humantime; how long ago the approver may have entered their credentials.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Authentication methods the sign-in must include (`amr`), all of them.
    #[serde(default)]
    pub amr: Vec<String>,
    /// Accepted authentication context classes (`acr`), any one.
    #[serde(default)]
    pub acr: Vec<String>,
}

/// One entry of a `commands:` guardrail; the given conditions must all hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandSpec {
    /// Globs on the programs the command runs (after wrappers and `sh -c`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub program: Option<Vec<String>>,
    /// The command runs a shell or an interpreter with inline code.
    #[serde(default)]
    pub shell: Option<bool>,
    /// Regex on one argument (`argument: N`) or on the whole command line.
    #[serde(default)]
    pub matching: Option<String>,
    #[serde(default)]
    pub argument: Option<usize>,
}

/// One condition of a `body:` guardrail; the conditions of a rule must all hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct BodySpec {
    /// Globs on the object's `kind`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub kind: Option<Vec<String>>,
    /// Path of the value(s) to test, e.g. `roleRef.name`, `spec.containers[*].image`.
    #[serde(default)]
    pub path: Option<String>,
    /// Regex the value(s) at `path` must match.
    #[serde(default)]
    pub matching: Option<String>,
}

/// `program: sh` or `program: [sh, bash]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(vec![v.to_owned()]))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(OneOrMany)
}
