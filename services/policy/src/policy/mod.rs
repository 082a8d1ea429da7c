//! Policy: ordered rules, the first that matches decides, nothing matches → denied.
//!
//! ```yaml
//! defaults:
//!   record: metadata             # metadata | request | request-response (rules may override)
//! mask_profiles:                 # named profiles rules refer to with `mask:` (see crate::mask)
//!   app-secrets:
//!     paths: ["data.*"]
//! rules:
//!   - id: deployer-apps
//!     description: CI deploys into apps
//!     action: allow              # allow | deny | approve
//!     identities: [ci-deployer]  # principals (globs); omit identities and groups for "anyone"
//!     groups: [deployers]        # any of the caller's groups (globs)
//!     verbs: [get, list, watch, create, update, patch, delete]
//!     api_groups: ["", apps]     # omitted: any group; "" is the core group
//!     resources: ["*"]           # "pods", "pods/log", "pods/*", "*/scale", "*"
//!     namespaces: [apps]         # omitted: any namespace and cluster scope ("")
//!     names: ["web-*"]           # omitted: any name; set: only requests naming an object
//!     record: request            # what the request's events carry
//!     mask: app-secrets          # a profile from mask_profiles
//!   - id: prod-changes
//!     action: approve
//!     groups: [deployers]
//!     verbs: [create, update, patch, delete]
//!     resources: ["*"]
//!     namespaces: [prod]
//!     approval:
//!       approver_groups: [sre]   # required, not empty
//!       quorum: 2                # distinct approvers, default 1
//!       hold_timeout: 15m        # default 10m, at most 24h
//!       grant_window: 1h         # optional: repeat without a new vote, at most 7 days
//!       four_eyes: owner         # the identity's owner may not approve (the default);
//!                                # owner-and-team: nor its team's approvers; off
//!   - id: no-shells
//!     action: deny
//!     verbs: [exec, attach]
//!     resources: [pods/exec, pods/attach]
//!     commands: [{ shell: true }]          # see guard: what it sees through
//!   - id: no-cluster-admin-bindings
//!     action: deny
//!     verbs: [create, update, patch]
//!     resources: [rolebindings, clusterrolebindings]
//!     body:                                # all conditions must hold
//!       - path: roleRef.name
//!         matching: "^cluster-admin$"
//!   - id: discovery
//!     action: allow
//!     verbs: [get]
//!     non_resource_urls: ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]
//! ```
//!
//! A rule matches resource requests only if it has `resources`, and non-resource requests only
//! if it has `non_resource_urls`. Matching is on the request info the parser produced from the
//! normalised path, the same one that is forwarded. Guardrails fail closed: when a command or
//! body cannot be read, deny and approve rules match and allow rules do not ([`guard`]).
//!
//! Module map:
//! - [`file`]: the YAML shapes (serde).
//! - [`compile`]: checks every value and compiles rules; [`LoadError`] names line and column.
//! - [`locate`]: a path in the document (`rules[3].verbs[1]`) → line and column.
//! - [`matcher`]: globs, verb sets and resource patterns, compiled for cheap matching.
//! - [`guard`]: the `commands:` and `body:` guardrails.
//! - [`protobuf`]: Kubernetes protobuf bodies, read for the body guardrail.
//! - [`rule`]: one compiled rule against one request (shared by decide and explain).
//! - [`explain`]: why each rule did or did not match.
//! - [`baseline`]: what any caller may do when no rule decides (discovery, self-reviews).
//! - [`lint`]: findings about a policy that loads (shadowed rules, over-broad rules, …).
//! - [`watch`]: the policy in force, swapped when the file changes and the new one loads.

pub mod baseline;
pub mod compile;
pub mod explain;
pub mod file;
pub mod guard;
pub mod lint;
pub mod locate;
pub mod matcher;
pub mod protobuf;
pub mod rule;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_events::{Identity, RecordLevel, RequestInfo};

use crate::mask::ProfileSpec;

pub use baseline::Baseline;
pub use compile::{LoadError, Problem};
pub use explain::{Explanation, RuleStep, Verdict, explain, explain_unregistered};
pub use file::Action;
pub use lint::{Finding, Severity, lint};
pub use locate::Location;
pub use matcher::glob;
pub use rule::{Approval, Rule};
pub use watch::{Reload, SharedPolicy, Watcher};

use guard::{LazyBody, LazyCommand};

/// What policy looks at for one request.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    pub identity: &'a Identity,
    pub request: &'a RequestInfo,
    /// An exec's `command` query parameters, in order (empty for anything else).
    pub command: &'a [String],
    /// The request body, if it has been read.
    pub body: Option<&'a [u8]>,
    pub content_type: Option<&'a str>,
}

impl<'a> PolicyInput<'a> {
    /// A request without command or body.
    pub fn new(identity: &'a Identity, request: &'a RequestInfo) -> Self {
        Self {
            identity,
            request,
            command: &[],
            body: None,
            content_type: None,
        }
    }
}

/// Proof that policy allowed a request. Only [`Policy::decide`] (or [`Hold::approved`]) makes
/// one, and forwarding takes one by value, so "forwarded without permission" does not compile.
#[derive(Debug)]
pub struct Permitted {
    rule: Arc<str>,
    record: RecordLevel,
    mask: Option<Arc<str>>,
    approval: Option<String>,
}

impl Permitted {
    /// The id of the rule that allowed the request.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// How much of the request its events carry.
    pub fn record(&self) -> RecordLevel {
        self.record
    }

    /// The mask profile to apply, by name (see [`Policy::mask_profile`]).
    pub fn mask(&self) -> Option<&str> {
        self.mask.as_deref()
    }

    /// The approval that let a held request through, if it was held.
    pub fn approval(&self) -> Option<&str> {
        self.approval.as_deref()
    }
}

/// A request an `approve` rule holds until approvers decide.
#[derive(Debug)]
pub struct Hold {
    rule: Arc<str>,
    approval: Approval,
    record: RecordLevel,
    mask: Option<Arc<str>>,
    message: String,
}

impl Hold {
    pub fn rule(&self) -> &str {
        &self.rule
    }

    pub fn approver_groups(&self) -> &[String] {
        &self.approval.approver_groups
    }

    pub fn quorum(&self) -> u32 {
        self.approval.quorum
    }

    pub fn hold_timeout(&self) -> Duration {
        self.approval.hold_timeout
    }

    pub fn grant_window(&self) -> Option<Duration> {
        self.approval.grant_window
    }

    pub fn four_eyes(&self) -> gatehouse_events::FourEyes {
        self.approval.four_eyes
    }

    pub fn step_up(&self) -> Option<&gatehouse_events::StepUp> {
        self.approval.step_up.as_ref()
    }

    pub fn record(&self) -> RecordLevel {
        self.record
    }

    pub fn mask(&self) -> Option<&str> {
        self.mask.as_deref()
    }

    /// A sentence for the caller: who must approve what.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The permission for a held request once its approval (by id) has been decided
    /// *approved*. Call it only then: this is the one way from a hold to forwarding.
    pub fn approved(self, approval_id: &str) -> Permitted {
        Permitted {
            rule: self.rule,
            record: self.record,
            mask: self.mask,
            approval: Some(approval_id.to_owned()),
        }
    }

    /// The denial for a hold that cannot be held or was not approved; `why` ends the sentence.
    pub fn refuse(self, why: &str) -> Denial {
        Denial {
            rule: Some(self.rule.to_string()),
            message: format!("{}; {why}", self.message),
        }
    }
}

/// Why policy refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The deny rule, or `None` for default deny.
    pub rule: Option<String>,
    /// A sentence for the caller, without the `gatehouse: ` prefix.
    pub message: String,
}

/// What policy decided for one request.
#[derive(Debug)]
pub enum Decision {
    Allow(Permitted),
    Hold(Hold),
    Deny(Denial),
}

/// A loaded, validated policy.
#[derive(Debug)]
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    pub(crate) mask_profiles: BTreeMap<String, ProfileSpec>,
    /// The same profiles, compiled.
    pub(crate) masks: BTreeMap<String, Arc<crate::mask::Profile>>,
    pub(crate) default_record: RecordLevel,
    /// `defaults.allow_discovery` and `defaults.allow_self_review` ([`baseline`]).
    pub(crate) allow_discovery: bool,
    pub(crate) allow_self_review: bool,
    /// The text it was loaded from, to find lines for lint and explain.
    pub(crate) source: Arc<str>,
}

impl Policy {
    /// Parses, checks and compiles a policy. A refusal lists every problem found with its
    /// line and column (the shape is checked first, and only its first problem is known).
    pub fn from_yaml(text: &str) -> Result<Self, LoadError> {
        compile::load(text)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn mask_profiles(&self) -> &BTreeMap<String, ProfileSpec> {
        &self.mask_profiles
    }

    /// The profile a [`Permitted::mask`] names.
    pub fn mask_profile(&self, name: &str) -> Option<&ProfileSpec> {
        self.mask_profiles.get(name)
    }

    /// The compiled profile a [`Permitted::mask`] names.
    pub fn compiled_mask(&self, name: &str) -> Option<Arc<crate::mask::Profile>> {
        self.masks.get(name).cloned()
    }

    /// The record level of rules that do not set one.
    pub fn default_record(&self) -> RecordLevel {
        self.default_record
    }

    /// The text the policy was loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where rule `index` starts in the source (parses the text; not for the request path).
    pub fn rule_location(&self, index: usize) -> Option<Location> {
        locate::locate(&self.source, &locate::DocPath::rule(index))
    }

    /// The first matching rule decides; with no match, a [`baseline`] request is allowed and
    /// anything else denied. The command is analysed and the body parsed only if a rule with
    /// such a guardrail otherwise matches.
    pub fn decide(&self, input: &PolicyInput<'_>) -> Decision {
        let command = LazyCommand::new(input.command);
        let body = LazyBody::new(input.body, input.content_type);
        for rule in &self.rules {
            if rule.evaluate(input, &command, &body).is_ok() {
                return decision(rule, input, &body);
            }
        }
        match self.baseline(input.request) {
            Some(baseline) => Decision::Allow(self.baseline_permit(baseline)),
            None => Decision::Deny(default_denial(input)),
        }
    }

    /// The [`baseline`] request `request` is, if this policy allows it when no rule decides.
    pub fn baseline(&self, request: &RequestInfo) -> Option<Baseline> {
        Baseline::of(request).filter(|b| match b {
            Baseline::Discovery => self.allow_discovery,
            Baseline::SelfReview => self.allow_self_review,
        })
    }

    /// For an identity the registry does not know: discovery only (when allowed), and no rule
    /// is consulted — rules are about registered identities. `None`: deny it as unknown.
    pub fn unregistered(&self, request: &RequestInfo) -> Option<Permitted> {
        (self.baseline(request) == Some(Baseline::Discovery))
            .then(|| self.baseline_permit(Baseline::Discovery))
    }

    fn baseline_permit(&self, baseline: Baseline) -> Permitted {
        Permitted {
            rule: Arc::from(baseline.rule()),
            record: self.default_record,
            mask: None,
            approval: None,
        }
    }
}

fn decision(rule: &Rule, input: &PolicyInput<'_>, body: &LazyBody<'_>) -> Decision {
    let (identity, request) = (input.identity, input.request);
    let mut because = rule
        .description()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    if let Some(note) = unread_body(rule, body) {
        because.push_str("; ");
        because.push_str(&note);
    }
    match (rule.action, &rule.approval) {
        (Action::Allow, _) => Decision::Allow(Permitted {
            rule: rule.id.clone(),
            record: rule.record,
            mask: rule.mask.clone(),
            approval: None,
        }),
        (Action::Approve, Some(approval)) => Decision::Hold(Hold {
            rule: rule.id.clone(),
            approval: approval.clone(),
            record: rule.record,
            mask: rule.mask.clone(),
            message: format!(
                "{} needs approval to {} {}: rule {}{because} holds it for {} approver{} from {} \
                 (expires after {})",
                identity.principal,
                request.verb,
                describe(request),
                rule.id,
                approval.quorum,
                if approval.quorum == 1 { "" } else { "s" },
                approval.approver_groups.join(", "),
                humantime::format_duration(approval.hold_timeout)
            ),
        }),
        // Compilation refuses an approve rule without approval; deny if it ever happens.
        (Action::Deny, _) | (Action::Approve, None) => Decision::Deny(Denial {
            rule: Some(rule.id.to_string()),
            message: format!(
                "{} may not {} {}: denied by rule {}{because}",
                identity.principal,
                request.verb,
                describe(request),
                rule.id,
            ),
        }),
    }
}

/// When a deny or approve rule matched only because its body guardrail could not read the body
/// (it fails closed), the caller is told so, or a refusal of a harmless request (kubectl's
/// typed `create` commands send protobuf) would be a mystery. Says what kind of body it was,
/// never what it held.
fn unread_body(rule: &Rule, body: &LazyBody<'_>) -> Option<String> {
    if !rule.action.restricts() || !rule.has_body_guard() {
        return None;
    }
    let guard::BodyView::Unreadable(why) = body.get() else {
        return None;
    };
    let mut note = format!(
        "{why}, which the rule's body guardrail cannot read, so it counts as a match (fails \
         closed); send the object as JSON"
    );
    if why.contains("protobuf") {
        note.push_str(
            " (kubectl's typed create commands send protobuf: pipe their \
             `--dry-run=client -o yaml` output into `kubectl create -f -` instead)",
        );
    }
    Some(note)
}

fn default_denial(input: &PolicyInput<'_>) -> Denial {
    Denial {
        rule: None,
        message: format!(
            "no policy rule allows {} to {} {} (default deny)",
            input.identity.principal,
            input.request.verb,
            describe(input.request)
        ),
    }
}

/// "secrets \"db\" in namespace \"apps\"", "pods/log ...", "namespaces", "path \"/version\"".
pub fn describe(r: &RequestInfo) -> String {
    if !r.is_resource_request {
        return format!("path {:?}", r.path);
    }
    let mut out = r.resource.clone();
    if !r.subresource.is_empty() {
        out.push('/');
        out.push_str(&r.subresource);
    }
    if !r.api_group.is_empty() {
        out = format!("{out}.{}", r.api_group);
    }
    if !r.name.is_empty() {
        out.push_str(&format!(" {:?}", r.name));
    }
    // A namespace object's "namespace" is its own name; saying it twice helps nobody.
    if !r.namespace.is_empty() && r.resource != "namespaces" {
        out.push_str(&format!(" in namespace {:?}", r.namespace));
    }
    out
}

#[cfg(test)]
mod tests;
