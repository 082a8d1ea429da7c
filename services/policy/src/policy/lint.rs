//! Findings about a policy that loads: rules that can never match, rules broader than
//! cluster-admin, and softer advice. Problems that stop a policy from loading (unknown fields
//! and verbs, bad regexes, unknown mask profiles, duplicate ids) are [`super::Problem`]s; turn
//! them into findings with [`Finding::from_problem`].
//!
//! | code | severity | what |
//! |---|---|---|
//! | `shadowed-rule` | error | an earlier rule with another action matches everything this one does |
//! | `redundant-rule` | warning | an earlier rule with the same action matches everything this one does |
//! | `partly-shadowed` | warning | an earlier, more permissive rule (allow before approve or deny, approve before deny) decides some requests this one matches |
//! | `broader-than-cluster-admin` | error | allow, every verb on every resource in every namespace |
//! | `anyone-may-write` | warning | allow for every registered identity with a verb that writes or opens a channel |
//! | `anyone-may-approve` | warning | an approver group that is everyone (`*`, `system:authenticated`) |
//! | `secrets-without-mask` | warning | allow reading `secrets` with no mask profile |
//! | `exec-without-command-guard` | info | allow exec with no `commands:` guardrail |
//! | `unused-mask-profile` | info | a profile no rule names |

use std::fmt;

use super::Policy;
use super::compile::Problem;
use super::file::Action;
use super::locate::Location;
use super::matcher::{
    ALL_VERBS, Glob, ResourcePattern, Verbs, WRITE_VERBS, globs_cover, globs_overlap,
};
use super::rule::{Rule, list};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// A stable name for the kind of finding (see the module table).
    pub code: &'static str,
    /// The rule it is about, if any.
    pub rule: Option<String>,
    pub location: Option<Location>,
    pub message: String,
}

impl Finding {
    /// A problem that stops the policy from loading, as an error finding.
    pub fn from_problem(problem: &Problem) -> Self {
        Finding {
            severity: Severity::Error,
            code: problem.code,
            rule: None,
            location: problem.location,
            message: problem.message.clone(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = self.location {
            write!(f, "line {}: ", at.line)?;
        }
        write!(f, "{}[{}]: {}", self.severity, self.code, self.message)
    }
}

/// Everything worth telling the author of a policy that loads, in file order.
pub fn lint(policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let rules = policy.rules();
    let at = |i: usize| policy.rule_location(i);
    for (i, rule) in rules.iter().enumerate() {
        let mut push = |severity, code, message: String| {
            findings.push(Finding {
                severity,
                code,
                rule: Some(rule.id().to_owned()),
                location: at(i),
                message,
            })
        };
        if let Some((j, earlier)) = rules[..i]
            .iter()
            .enumerate()
            .find(|(_, earlier)| covers(earlier, rule))
        {
            let line = at(j)
                .map(|l| format!(" (line {})", l.line))
                .unwrap_or_default();
            if earlier.action() == rule.action() {
                push(
                    Severity::Warning,
                    "redundant-rule",
                    format!(
                        "rule {} never matches: the earlier {} rule {}{line} matches every \
                         request it does; remove one",
                        rule.id(),
                        earlier.action(),
                        earlier.id()
                    ),
                );
            } else {
                push(
                    Severity::Error,
                    "shadowed-rule",
                    format!(
                        "{} rule {} never matches: the earlier {} rule {}{line} matches every \
                         request it does, so it decides instead; move this rule above it or \
                         narrow that one",
                        rule.action(),
                        rule.id(),
                        earlier.action(),
                        earlier.id()
                    ),
                );
            }
        } else if let Some((j, earlier)) = rules[..i].iter().enumerate().find(|(_, earlier)| {
            permissiveness(earlier.action()) > permissiveness(rule.action())
                && overlaps(earlier, rule)
        }) {
            let line = at(j)
                .map(|l| format!(" (line {})", l.line))
                .unwrap_or_default();
            push(
                Severity::Warning,
                "partly-shadowed",
                format!(
                    "{} rule {} does not apply to every request it names: the earlier {} rule \
                     {}{line} decides {} first; if that is not an intended exception, move \
                     this rule above it",
                    rule.action(),
                    rule.id(),
                    earlier.action(),
                    earlier.id(),
                    common_example(earlier, rule),
                ),
            );
        }
        let anyone = rule.identities.is_none() && rule.groups.is_none();
        let cluster_admin = rule.action() == Action::Allow && is_cluster_admin(rule);
        if cluster_admin {
            push(
                Severity::Error,
                "broader-than-cluster-admin",
                format!(
                    "rule {} allows every verb on every resource in every namespace{}: that is \
                     cluster-admin; narrow it, or make it `action: approve`",
                    rule.id(),
                    if anyone {
                        " to every registered identity".to_owned()
                    } else {
                        format!(" to {}", subjects(rule))
                    }
                ),
            );
        } else if rule.action() == Action::Allow && anyone && rule.resources.is_some() {
            let writes: Vec<&str> = WRITE_VERBS
                .iter()
                .copied()
                .filter(|v| rule.verbs.includes(v))
                .collect();
            if !writes.is_empty() {
                push(
                    Severity::Warning,
                    "anyone-may-write",
                    format!(
                        "rule {} allows {} to every registered identity; name identities or \
                         groups",
                        rule.id(),
                        writes.join(", ")
                    ),
                );
            }
        }
        if let Some(approval) = rule.approval()
            && let Some(g) = approval
                .approver_groups
                .iter()
                .find(|g| *g == "*" || *g == "system:authenticated")
        {
            push(
                Severity::Warning,
                "anyone-may-approve",
                format!(
                    "rule {} lets group {g:?} approve, which is everyone; name the people who \
                     answer for it",
                    rule.id()
                ),
            );
        }
        if rule.action() == Action::Allow
            && rule.mask().is_none()
            && rule.spec.resources.iter().flatten().any(|r| r == "secrets")
            && ["get", "list", "watch"]
                .iter()
                .any(|v| rule.verbs.includes(v))
        {
            push(
                Severity::Warning,
                "secrets-without-mask",
                format!(
                    "rule {} allows reading secrets with no mask profile: Secret data and \
                     stringData are always masked, but a profile also covers copies elsewhere \
                     (the kubectl.kubernetes.io/last-applied-configuration annotation)",
                    rule.id()
                ),
            );
        }
        if rule.action() == Action::Allow
            && !cluster_admin
            && !rule.has_command_guard()
            && allows_exec(rule)
        {
            push(
                Severity::Info,
                "exec-without-command-guard",
                format!(
                    "rule {} allows exec with any command; a `commands:` guardrail can limit it \
                     (e.g. `commands: [{{ program: [ls, cat] }}]`)",
                    rule.id()
                ),
            );
        }
    }
    for name in policy.mask_profiles().keys() {
        if !rules.iter().any(|r| r.mask() == Some(name.as_str())) {
            findings.push(Finding {
                severity: Severity::Info,
                code: "unused-mask-profile",
                rule: None,
                location: super::locate::locate(
                    policy.source(),
                    &super::locate::DocPath::default()
                        .key("mask_profiles")
                        .key(name),
                ),
                message: format!("mask profile {name:?} is declared but no rule uses it"),
            });
        }
    }
    findings.sort_by_key(|f| f.location);
    findings
}

fn subjects(rule: &Rule) -> String {
    let mut parts = Vec::new();
    if let Some(ids) = &rule.spec.identities {
        parts.push(format!("identities {}", list(ids)));
    }
    if let Some(groups) = &rule.spec.groups {
        parts.push(format!("groups {}", list(groups)));
    }
    parts.join(" and ")
}

fn any_or_none(globs: Option<&[Glob]>) -> bool {
    globs.is_none_or(|g| g.iter().any(Glob::is_any))
}

fn is_cluster_admin(rule: &Rule) -> bool {
    rule.verbs == Verbs::Any
        && rule
            .resources
            .as_ref()
            .is_some_and(|r| r.contains(&ResourcePattern::Any))
        && any_or_none(rule.namespaces.as_deref())
        && any_or_none(rule.api_groups.as_deref())
        && rule.names.is_none()
        && !rule.has_command_guard()
        && !rule.has_body_guard()
}

fn allows_exec(rule: &Rule) -> bool {
    rule.verbs.includes("exec")
        && rule
            .resources
            .as_ref()
            .is_some_and(|rs| rs.iter().any(|r| r.matches("pods", "exec")))
}

/// allow > approve > deny: an earlier rule that is more permissive than a later one it
/// overlaps lets through what the later one meant to stop (the other way round is the usual
/// "exception first" idiom).
fn permissiveness(action: Action) -> u8 {
    match action {
        Action::Allow => 2,
        Action::Approve => 1,
        Action::Deny => 0,
    }
}

/// Whether some request matches both (conservative: `false` when unsure, so a finding is
/// always real). An earlier rule with a guardrail matches an unknown part of its scope, so it
/// is never said to overlap; a guard on the later rule only narrows what is shadowed.
fn overlaps(earlier: &Rule, later: &Rule) -> bool {
    if earlier.has_command_guard() || earlier.has_body_guard() {
        return false;
    }
    let anyone = |r: &Rule| r.identities.is_none() && r.groups.is_none();
    // Identities against groups could be the same caller or not: the registry decides, so
    // that is not counted.
    let subjects = anyone(earlier)
        || anyone(later)
        || (earlier.identities.is_some()
            && later.identities.is_some()
            && globs_overlap(earlier.identities.as_deref(), later.identities.as_deref()))
        || (earlier.groups.is_some()
            && later.groups.is_some()
            && globs_overlap(earlier.groups.as_deref(), later.groups.as_deref()));
    if !subjects || !earlier.verbs.overlaps(later.verbs) {
        return false;
    }
    let resources = match (&earlier.resources, &later.resources) {
        (Some(e), Some(l)) => {
            l.iter().any(|lp| e.iter().any(|ep| ep.overlaps(lp)))
                && globs_overlap(earlier.api_groups.as_deref(), later.api_groups.as_deref())
                && globs_overlap(earlier.namespaces.as_deref(), later.namespaces.as_deref())
                && globs_overlap(earlier.names.as_deref(), later.names.as_deref())
        }
        _ => false,
    };
    let urls = match (&earlier.non_resource_urls, &later.non_resource_urls) {
        (Some(e), Some(l)) => globs_overlap(Some(e), Some(l)),
        _ => false,
    };
    resources || urls
}

/// A request both rules match, in words: "delete secrets in namespace prod".
fn common_example(earlier: &Rule, later: &Rule) -> String {
    let verb = ALL_VERBS
        .iter()
        .find(|v| earlier.verbs.includes(v) && later.verbs.includes(v))
        .copied()
        .unwrap_or("*");
    // The narrower of two written patterns names the overlap best.
    let narrower = |a: Option<&Vec<String>>, b: Option<&Vec<String>>| -> Option<String> {
        let pick = |list: &Vec<String>| list.iter().find(|x| *x != "*").cloned();
        match (a, b) {
            (_, Some(l)) if pick(l).is_some() => pick(l),
            (Some(e), _) => pick(e),
            _ => None,
        }
    };
    let (e, l) = (&earlier.spec, &later.spec);
    if e.resources.is_none() || l.resources.is_none() {
        let url = narrower(e.non_resource_urls.as_ref(), l.non_resource_urls.as_ref())
            .unwrap_or_else(|| "*".into());
        return format!("{verb} {url}");
    }
    let resource = narrower(e.resources.as_ref(), l.resources.as_ref())
        .unwrap_or_else(|| "any resource".into());
    match narrower(e.namespaces.as_ref(), l.namespaces.as_ref()) {
        Some(ns) => format!("{verb} {resource} in namespace {ns}"),
        None => format!("{verb} {resource}"),
    }
}

/// Whether every request `later` matches is matched by `earlier` (conservative: `false`
/// when unsure, so a finding is always real).
fn covers(earlier: &Rule, later: &Rule) -> bool {
    let subjects = match (
        (&earlier.identities, &earlier.groups),
        (&later.identities, &later.groups),
    ) {
        ((None, None), _) => true,
        (_, (None, None)) => false,
        ((e_ids, e_groups), (l_ids, l_groups)) => {
            (l_ids.is_none()
                || (e_ids.is_some() && globs_cover(e_ids.as_deref(), l_ids.as_deref())))
                && (l_groups.is_none()
                    || (e_groups.is_some()
                        && globs_cover(e_groups.as_deref(), l_groups.as_deref())))
        }
    };
    if !subjects || !earlier.verbs.contains_all(later.verbs) {
        return false;
    }
    let resources = match (&earlier.resources, &later.resources) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(e), Some(l)) => {
            l.iter().all(|lp| e.iter().any(|ep| ep.covers(lp)))
                && globs_cover(earlier.api_groups.as_deref(), later.api_groups.as_deref())
                && globs_cover(earlier.namespaces.as_deref(), later.namespaces.as_deref())
                && match (&earlier.names, &later.names) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(e), Some(l)) => globs_cover(Some(e), Some(l)),
                }
        }
    };
    let urls = match (&earlier.non_resource_urls, &later.non_resource_urls) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(e), Some(l)) => globs_cover(Some(e), Some(l)),
    };
    // A guarded earlier rule matches less; only an identical guard with the same polarity
    // matches the same requests.
    let guards = (earlier.spec.commands.is_none() && earlier.spec.body.is_none())
        || (earlier.spec.commands == later.spec.commands
            && earlier.spec.body == later.spec.body
            && earlier.action().restricts() == later.action().restricts());
    resources && urls && guards
}
