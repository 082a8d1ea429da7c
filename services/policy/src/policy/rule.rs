//! One compiled rule and how it meets one request: the matching that [`super::Policy::decide`]
//! runs and the sentences [`super::explain`] prints, from the same code so they cannot
//! disagree.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_events::RecordLevel;

use super::PolicyInput;
use super::file::{Action, RuleSpec};
use super::guard::{BodyGuard, CommandGuard, LazyBody, LazyCommand};
use super::matcher::{Glob, ResourcePattern, Verbs, any_glob};

/// The approval an `approve` rule asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Members of any of these groups may vote.
    pub approver_groups: Arc<[String]>,
    /// Distinct approvers needed.
    pub quorum: u32,
    /// How long the request is held before it expires (denied).
    pub hold_timeout: Duration,
    /// After an approval, the same identity may repeat the same kind of request without a new
    /// vote for this long.
    pub grant_window: Option<Duration>,
    /// Who besides the requester may not approve.
    pub four_eyes: gatehouse_events::FourEyes,
    /// A fresh sign-in each vote needs, if any.
    pub step_up: Option<gatehouse_events::StepUp>,
}

/// A rule, compiled.
#[derive(Debug)]
pub struct Rule {
    pub(crate) id: Arc<str>,
    pub(crate) spec: RuleSpec,
    pub(crate) action: Action,
    pub(crate) identities: Option<Vec<Glob>>,
    pub(crate) groups: Option<Vec<Glob>>,
    pub(crate) verbs: Verbs,
    pub(crate) api_groups: Option<Vec<Glob>>,
    pub(crate) resources: Option<Vec<ResourcePattern>>,
    pub(crate) namespaces: Option<Vec<Glob>>,
    pub(crate) names: Option<Vec<Glob>>,
    pub(crate) non_resource_urls: Option<Vec<Glob>>,
    pub(crate) approval: Option<Approval>,
    pub(crate) record: RecordLevel,
    pub(crate) mask: Option<Arc<str>>,
    pub(crate) commands: Option<CommandGuard>,
    pub(crate) body: Option<BodyGuard>,
}

/// What a rule covers, as its policy file says it.
#[derive(Clone, Copy, Debug)]
pub struct WrittenScope<'a> {
    pub verbs: &'a [String],
    pub api_groups: Option<&'a [String]>,
    pub resources: Option<&'a [String]>,
    pub namespaces: Option<&'a [String]>,
    pub names: Option<&'a [String]>,
    pub non_resource_urls: Option<&'a [String]>,
}

/// The first condition of a rule that a request fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    Subject,
    Verb,
    /// The rule has only `non_resource_urls`; the request is a resource request.
    NotResourceRule,
    /// The rule has no `non_resource_urls`; the request is a non-resource URL.
    NotUrlRule,
    Resource,
    ApiGroup,
    Namespace,
    Name,
    Url,
    Commands,
    Body,
}

impl Rule {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn description(&self) -> Option<&str> {
        self.spec.description.as_deref()
    }

    pub fn action(&self) -> Action {
        self.action
    }

    pub fn approval(&self) -> Option<&Approval> {
        self.approval.as_ref()
    }

    pub fn record(&self) -> RecordLevel {
        self.record
    }

    pub fn mask(&self) -> Option<&str> {
        self.mask.as_deref()
    }

    pub fn has_command_guard(&self) -> bool {
        self.commands.is_some()
    }

    pub fn has_body_guard(&self) -> bool {
        self.body.is_some()
    }

    /// Whether the rule matches; the first failing condition otherwise. Cheap conditions
    /// first; the command is analysed and the body parsed only if everything else matched.
    pub(crate) fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        command: &LazyCommand<'_>,
        body: &LazyBody<'_>,
    ) -> Result<(), Miss> {
        let r = input.request;
        if !self.matches_subject(input) {
            return Err(Miss::Subject);
        }
        if !self.verbs.matches(&r.verb) {
            return Err(Miss::Verb);
        }
        if r.is_resource_request {
            let Some(resources) = &self.resources else {
                return Err(Miss::NotResourceRule);
            };
            if !resources
                .iter()
                .any(|p| p.matches(&r.resource, &r.subresource))
            {
                return Err(Miss::Resource);
            }
            if !any_glob(self.api_groups.as_deref(), &r.api_group) {
                return Err(Miss::ApiGroup);
            }
            if !any_glob(self.namespaces.as_deref(), &r.namespace) {
                return Err(Miss::Namespace);
            }
            if let Some(names) = &self.names
                && (r.name.is_empty() || !names.iter().any(|n| n.matches(&r.name)))
            {
                return Err(Miss::Name);
            }
        } else {
            let Some(urls) = &self.non_resource_urls else {
                return Err(Miss::NotUrlRule);
            };
            if !urls.iter().any(|u| u.matches(&r.path)) {
                return Err(Miss::Url);
            }
        }
        let restricts = self.action.restricts();
        if let Some(guard) = &self.commands
            && !guard.matches(restricts, command.argv(), command.analysis())
        {
            return Err(Miss::Commands);
        }
        if let Some(guard) = &self.body
            && !guard.matches(restricts, body.get())
        {
            return Err(Miss::Body);
        }
        Ok(())
    }

    fn matches_subject(&self, input: &PolicyInput<'_>) -> bool {
        self.subject_match(&input.identity.principal, &input.identity.groups)
            .is_some()
    }

    /// Whether the rule's `identities` / `groups` take in this caller, and how: `anyone` (it
    /// names neither), `identity NAME`, `identity pattern GLOB`, or `group GROUP`. Reports use it to list the rules
    /// that could apply to an identity.
    pub fn subject_match(&self, principal: &str, groups: &[String]) -> Option<String> {
        if self.identities.is_none() && self.groups.is_none() {
            return Some("anyone".to_owned());
        }
        if let Some(i) = self
            .identities
            .iter()
            .flatten()
            .position(|p| p.matches(principal))
        {
            let written = self.spec.identities.as_ref().and_then(|ids| ids.get(i));
            return Some(match written {
                Some(pattern) if pattern != principal => format!("identity pattern {pattern}"),
                _ => format!("identity {principal}"),
            });
        }
        self.groups.iter().flatten().find_map(|p| {
            groups
                .iter()
                .find(|g| p.matches(g))
                .map(|g| format!("group {g}"))
        })
    }

    /// The rule's scope as written in the policy: verbs, API groups, resources, namespaces,
    /// names and non-resource URLs (`None` where the rule leaves one open).
    pub fn written_scope(&self) -> WrittenScope<'_> {
        let s = &self.spec;
        WrittenScope {
            verbs: &s.verbs,
            api_groups: s.api_groups.as_deref(),
            resources: s.resources.as_deref(),
            namespaces: s.namespaces.as_deref(),
            names: s.names.as_deref(),
            non_resource_urls: s.non_resource_urls.as_deref(),
        }
    }

    /// A sentence saying why the rule matched (what its guardrails saw) or what failed.
    pub(crate) fn reason(
        &self,
        outcome: Result<(), Miss>,
        input: &PolicyInput<'_>,
        command: &LazyCommand<'_>,
        body: &LazyBody<'_>,
    ) -> String {
        let r = input.request;
        let s = &self.spec;
        let restricts = self.action.restricts();
        let miss = match outcome {
            Ok(()) => {
                let mut why = vec!["matches".to_owned()];
                if let Some(g) = &self.commands {
                    why.push(format!(
                        "command: {}",
                        g.explain(restricts, command.argv(), command.analysis())
                    ));
                }
                if let Some(g) = &self.body {
                    why.push(format!("body: {}", g.explain(restricts, body.get())));
                }
                return why.join("; ");
            }
            Err(miss) => miss,
        };
        match miss {
            Miss::Subject => {
                let mut parts = Vec::new();
                if let Some(ids) = &s.identities {
                    parts.push(format!("identities {}", list(ids)));
                }
                if let Some(groups) = &s.groups {
                    parts.push(format!("groups {}", list(groups)));
                }
                format!(
                    "{} (groups: {}) is in neither {}",
                    input.identity.principal,
                    if input.identity.groups.is_empty() {
                        "none".to_owned()
                    } else {
                        input.identity.groups.join(", ")
                    },
                    parts.join(" nor ")
                )
            }
            Miss::Verb => format!("verb {} is not in verbs {}", r.verb, list(&s.verbs)),
            Miss::NotResourceRule => {
                "the rule has only non_resource_urls; this is a resource request".into()
            }
            Miss::NotUrlRule => format!(
                "the rule has no non_resource_urls; {} is a non-resource URL",
                r.path
            ),
            Miss::Resource => {
                let resource = if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                };
                format!(
                    "resource {resource} is not in resources {}",
                    list(s.resources.as_deref().unwrap_or_default())
                )
            }
            Miss::ApiGroup => format!(
                "API group {} is not in api_groups {}",
                if r.api_group.is_empty() {
                    "\"\" (core)".to_owned()
                } else {
                    r.api_group.clone()
                },
                list(s.api_groups.as_deref().unwrap_or_default())
            ),
            Miss::Namespace => format!(
                "{} is not in namespaces {}",
                if r.namespace.is_empty() {
                    "cluster scope (namespace \"\")".to_owned()
                } else {
                    format!("namespace {}", r.namespace)
                },
                list(s.namespaces.as_deref().unwrap_or_default())
            ),
            Miss::Name if r.name.is_empty() => format!(
                "the request names no object (a list, watch or create) and the rule needs a \
                 name in {}",
                list(s.names.as_deref().unwrap_or_default())
            ),
            Miss::Name => format!(
                "name {} is not in names {}",
                r.name,
                list(s.names.as_deref().unwrap_or_default())
            ),
            Miss::Url => format!(
                "path {} is not in non_resource_urls {}",
                r.path,
                list(s.non_resource_urls.as_deref().unwrap_or_default())
            ),
            Miss::Commands => match &self.commands {
                Some(g) => format!(
                    "command: {}",
                    g.explain(restricts, command.argv(), command.analysis())
                ),
                None => "command".into(),
            },
            Miss::Body => match &self.body {
                Some(g) => format!("body: {}", g.explain(restricts, body.get())),
                None => "body".into(),
            },
        }
    }
}

/// `[a, b, "" ]` with the empty string shown as `""`.
pub(crate) fn list(items: &[String]) -> String {
    let shown: Vec<String> = items
        .iter()
        .map(|i| {
            if i.is_empty() {
                "\"\"".to_owned()
            } else {
                i.clone()
            }
        })
        .collect();
    format!("[{}]", shown.join(", "))
}
