//! From text to [`Policy`]: the shape first (serde, first error only), then every value checked
//! and compiled, collecting every problem with its line and column.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_events::RecordLevel;

use super::Policy;
use super::file::{Action, ApprovalSpec, BodySpec, CommandSpec, PolicyFile, RuleSpec, StepUpSpec};
use super::guard::{
    BodyCondition, BodyGuard, CommandEntry, CommandGuard, compile_regex, parse_body_path,
};
use super::locate::{DocPath, Location, locate};
use super::matcher::{Glob, HTTP_VERBS, RESOURCE_VERBS, ResourcePattern, Verbs, verb_bit};
use super::rule::{Approval, Rule};

/// Holds expire after this long unless the rule says otherwise.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Nobody waits a day for an answer: a longer hold is refused.
pub const MAX_HOLD_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// How old an approver's sign-in may be under `step_up: true`.
pub const DEFAULT_STEP_UP_MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// A "fresh" sign-in older than an hour is not fresh.
pub const MAX_STEP_UP_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// An approval may open a grant of at most a week.
pub const MAX_GRANT_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where it is; `None` only if the position could not be found.
    pub location: Option<Location>,
    /// What kind of problem: `yaml-syntax`, `unknown-field`, `bad-shape`, `bad-verb`,
    /// `bad-regex`, `unknown-mask-profile`, `duplicate-id`, `bad-approval`, …
    pub code: &'static str,
    /// The message, naming the field (`rules[2].verbs[1]: unknown verb "gett" …`).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(at) => write!(f, "{at}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why a policy file was refused: every problem found, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub problems: Vec<Problem>,
}

impl LoadError {
    fn single(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// A YAML or shape error from `yaml_serde`, with its position moved to the front.
fn shape_problem(e: &yaml_serde::Error, code: &'static str) -> Problem {
    let text = e.to_string();
    let code = if text.contains("unknown field") {
        "unknown-field"
    } else {
        code
    };
    let Some(l) = e.location() else {
        return Problem {
            location: None,
            code,
            message: text,
        };
    };
    let suffix = format!(" at line {} column {}", l.line(), l.column());
    let message = match text.find(&suffix) {
        Some(at) => format!("{}{}", &text[..at], &text[at + suffix.len()..]),
        None => text,
    };
    Problem {
        location: Some(Location {
            line: l.line(),
            column: l.column(),
        }),
        code,
        message,
    }
}

/// Problems found while compiling, located at the end (one parse per problem).
struct Problems<'t> {
    text: &'t str,
    found: Vec<(&'static str, DocPath, String)>,
}

impl Problems<'_> {
    fn add(&mut self, code: &'static str, path: DocPath, message: impl Into<String>) {
        self.found.push((code, path, message.into()));
    }

    fn into_error(self) -> Option<LoadError> {
        if self.found.is_empty() {
            return None;
        }
        let mut problems: Vec<Problem> = self
            .found
            .into_iter()
            .map(|(code, path, message)| Problem {
                location: locate(self.text, &path),
                code,
                message: format!("{path}: {message}"),
            })
            .collect();
        problems.sort_by_key(|p| p.location);
        Some(LoadError { problems })
    }
}

pub(crate) fn load(text: &str) -> Result<Policy, LoadError> {
    // YAML syntax first, so a syntax error is told apart from a wrong shape.
    yaml_serde::from_str::<yaml_serde::Value>(text)
        .map_err(|e| LoadError::single(shape_problem(&e, "yaml-syntax")))?;
    let file: PolicyFile = yaml_serde::from_str(text)
        .map_err(|e| LoadError::single(shape_problem(&e, "bad-shape")))?;
    let mut problems = Problems {
        text,
        found: Vec::new(),
    };
    let mut masks = BTreeMap::new();
    for (name, spec) in &file.mask_profiles {
        let at = DocPath(vec![super::locate::Step::Key("mask_profiles".into())]);
        if name.trim().is_empty() {
            problems.add(
                "bad-mask-profile",
                at,
                "a mask profile needs a non-empty name",
            );
            continue;
        }
        // Compiled here, so a bad path or regex refuses the file (and a reload keeps the old
        // policy) instead of failing a request later.
        match crate::mask::Profile::compile(name, spec) {
            Ok(profile) => {
                masks.insert(name.clone(), Arc::new(profile));
            }
            Err(message) => problems.add("bad-mask-profile", at.key(name), message),
        }
    }
    let default_record = file.defaults.record.unwrap_or_default();
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(file.rules.len());
    for (index, spec) in file.rules.iter().enumerate() {
        let at = DocPath::rule(index);
        if let Some(&first) = first_use.get(spec.id.as_str()) {
            let line = locate(text, &DocPath::rule(first))
                .map(|l| format!(" (line {})", l.line))
                .unwrap_or_default();
            problems.add(
                "duplicate-id",
                at.clone().key("id"),
                format!(
                    "rule id {:?} is used twice: rules[{first}]{line} has it too",
                    spec.id
                ),
            );
        } else {
            first_use.insert(spec.id.as_str(), index);
        }
        if let Some(name) = &spec.mask
            && !file.mask_profiles.contains_key(name)
        {
            let declared: Vec<&str> = file.mask_profiles.keys().map(String::as_str).collect();
            problems.add(
                "unknown-mask-profile",
                at.clone().key("mask"),
                format!(
                    "mask profile {name:?} is not declared under mask_profiles (declared: {})",
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                ),
            );
        }
        if let Some(rule) = compile_rule(spec, &at, default_record, &mut problems) {
            rules.push(rule);
        }
    }
    if let Some(error) = problems.into_error() {
        return Err(error);
    }
    Ok(Policy {
        rules,
        mask_profiles: file.mask_profiles,
        masks,
        default_record,
        allow_discovery: file.defaults.allow_discovery.unwrap_or(true),
        allow_self_review: file.defaults.allow_self_review.unwrap_or(true),
        source: Arc::from(text),
    })
}

fn compile_rule(
    spec: &RuleSpec,
    at: &DocPath,
    default_record: RecordLevel,
    problems: &mut Problems<'_>,
) -> Option<Rule> {
    let before = problems.found.len();
    if spec.id.trim().is_empty() {
        problems.add(
            "empty-id",
            at.clone().key("id"),
            "every rule needs a non-empty id",
        );
    }
    for (field, items) in [
        ("identities", &spec.identities),
        ("groups", &spec.groups),
        ("resources", &spec.resources),
        ("namespaces", &spec.namespaces),
        ("names", &spec.names),
        ("non_resource_urls", &spec.non_resource_urls),
        ("api_groups", &spec.api_groups),
    ] {
        if items.as_ref().is_some_and(Vec::is_empty) {
            problems.add(
                "empty-list",
                at.clone().key(field),
                format!(
                    "{field} is empty, so the rule could never match; omit it to match anything"
                ),
            );
        }
    }
    for (field, items) in [
        ("identities", &spec.identities),
        ("groups", &spec.groups),
        ("resources", &spec.resources),
        ("names", &spec.names),
        ("non_resource_urls", &spec.non_resource_urls),
    ] {
        for (i, item) in items.iter().flatten().enumerate() {
            if item.is_empty() {
                problems.add(
                    "empty-entry",
                    at.clone().key(field).index(i),
                    format!("an empty {field} entry matches nothing"),
                );
            }
        }
    }
    if spec.resources.is_none() && spec.non_resource_urls.is_none() {
        problems.add(
            "nothing-to-match",
            at.clone(),
            format!(
                "rule {:?} needs resources, non_resource_urls, or both",
                spec.id
            ),
        );
    }
    let verbs = compile_verbs(spec, at, problems);
    for (i, r) in spec.resources.iter().flatten().enumerate() {
        if r.matches('/').count() > 1 || r.starts_with('/') || r.ends_with('/') {
            problems.add(
                "bad-resource",
                at.clone().key("resources").index(i),
                format!(
                    "resources entry {r:?} must be RESOURCE or RESOURCE/SUBRESOURCE (e.g. pods, \
                     pods/log, pods/*, */scale, *)"
                ),
            );
        }
    }
    for (i, u) in spec.non_resource_urls.iter().flatten().enumerate() {
        if !u.starts_with('/') && u != "*" {
            problems.add(
                "bad-url",
                at.clone().key("non_resource_urls").index(i),
                format!("non_resource_urls entry {u:?} must start with '/'"),
            );
        }
    }
    let approval = compile_approval(spec, at, problems);
    let commands = spec
        .commands
        .as_ref()
        .map(|c| compile_commands(spec, c, at, problems));
    let body = spec
        .body
        .as_ref()
        .map(|b| compile_body(spec, b, at, problems));
    if problems.found.len() > before {
        return None;
    }
    let globs = |items: &Option<Vec<String>>| {
        items
            .as_ref()
            .map(|v| v.iter().map(|s| Glob::new(s)).collect::<Vec<_>>())
    };
    Some(Rule {
        id: Arc::from(spec.id.as_str()),
        action: spec.action,
        identities: globs(&spec.identities),
        groups: globs(&spec.groups),
        verbs,
        api_groups: globs(&spec.api_groups),
        resources: spec
            .resources
            .as_ref()
            .map(|v| v.iter().map(|s| ResourcePattern::new(s)).collect()),
        namespaces: globs(&spec.namespaces),
        names: globs(&spec.names),
        non_resource_urls: globs(&spec.non_resource_urls),
        approval,
        record: spec.record.unwrap_or(default_record),
        mask: spec.mask.as_deref().map(Arc::from),
        commands,
        body,
        spec: spec.clone(),
    })
}

fn compile_verbs(spec: &RuleSpec, at: &DocPath, problems: &mut Problems<'_>) -> Verbs {
    if spec.verbs.is_empty() {
        problems.add(
            "empty-list",
            at.clone().key("verbs"),
            "verbs must not be empty (use [\"*\"] for every verb)",
        );
    }
    let mut bits = 0;
    let mut any = false;
    for (i, verb) in spec.verbs.iter().enumerate() {
        if verb == "*" {
            any = true;
            continue;
        }
        let resource = spec.resources.is_some() && RESOURCE_VERBS.contains(&verb.as_str());
        let http = spec.non_resource_urls.is_some() && HTTP_VERBS.contains(&verb.as_str());
        if resource || http {
            bits |= verb_bit(verb);
            continue;
        }
        let message = if HTTP_VERBS.contains(&verb.as_str()) {
            format!(
                "verb {verb:?} is an HTTP method, for non_resource_urls; resource requests use \
                 {}",
                RESOURCE_VERBS.join(", ")
            )
        } else if RESOURCE_VERBS.contains(&verb.as_str()) {
            format!(
                "verb {verb:?} is for resources; non_resource_urls use the HTTP method: {}",
                HTTP_VERBS.join(", ")
            )
        } else {
            format!(
                "unknown verb {verb:?}; resource verbs are {}, and non_resource_urls use {}",
                RESOURCE_VERBS.join(", "),
                HTTP_VERBS.join(", ")
            )
        };
        problems.add("bad-verb", at.clone().key("verbs").index(i), message);
    }
    if any { Verbs::Any } else { Verbs::Bits(bits) }
}

fn duration(
    text: &str,
    path: DocPath,
    max: Duration,
    problems: &mut Problems<'_>,
) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if d < Duration::from_secs(1) => {
            problems.add(
                "bad-duration",
                path,
                format!("{text:?} is shorter than one second"),
            );
            None
        }
        Ok(d) if d > max => {
            problems.add(
                "bad-duration",
                path,
                format!(
                    "{text:?} is longer than the maximum, {}",
                    humantime::format_duration(max)
                ),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.add(
                "bad-duration",
                path,
                format!("{text:?} is not a duration ({e}); write e.g. 10m, 1h30m, 90s"),
            );
            None
        }
    }
}

fn compile_approval(
    spec: &RuleSpec,
    at: &DocPath,
    problems: &mut Problems<'_>,
) -> Option<Approval> {
    let approval: &ApprovalSpec = match (&spec.approval, spec.action) {
        (Some(a), Action::Approve) => a,
        (None, Action::Approve) => {
            problems.add(
                "bad-approval",
                at.clone().key("action"),
                "an approve rule needs an approval block naming approver_groups",
            );
            return None;
        }
        (Some(_), action) => {
            problems.add(
                "bad-approval",
                at.clone().key("approval"),
                format!("approval is for action: approve; this rule's action is {action}"),
            );
            return None;
        }
        (None, _) => return None,
    };
    let here = at.clone().key("approval");
    if approval.approver_groups.is_empty() {
        problems.add(
            "bad-approval",
            here.clone().key("approver_groups"),
            "approver_groups must name at least one group, or nobody could approve",
        );
    }
    for (i, g) in approval.approver_groups.iter().enumerate() {
        if g.trim().is_empty() {
            problems.add(
                "bad-approval",
                here.clone().key("approver_groups").index(i),
                "an approver group needs a name",
            );
        }
    }
    let quorum = approval.quorum.unwrap_or(1);
    if quorum == 0 {
        problems.add(
            "bad-approval",
            here.clone().key("quorum"),
            "quorum must be at least 1",
        );
    }
    let hold_timeout = match &approval.hold_timeout {
        Some(t) => duration(
            t,
            here.clone().key("hold_timeout"),
            MAX_HOLD_TIMEOUT,
            problems,
        )
        .unwrap_or(DEFAULT_HOLD_TIMEOUT),
        None => DEFAULT_HOLD_TIMEOUT,
    };
    let grant_window = approval.grant_window.as_ref().and_then(|t| {
        duration(
            t,
            here.clone().key("grant_window"),
            MAX_GRANT_WINDOW,
            problems,
        )
    });
    let step_up = match &approval.step_up {
        None | Some(StepUpSpec::On(false)) => None,
        Some(StepUpSpec::On(true)) => Some(gatehouse_events::StepUp {
            max_age_s: DEFAULT_STEP_UP_MAX_AGE.as_secs(),
            amr: Vec::new(),
            acr: Vec::new(),
        }),
        Some(StepUpSpec::With(settings)) => {
            let max_age = match &settings.max_age {
                Some(t) => duration(
                    t,
                    here.clone().key("step_up").key("max_age"),
                    MAX_STEP_UP_MAX_AGE,
                    problems,
                )
                .unwrap_or(DEFAULT_STEP_UP_MAX_AGE),
                None => DEFAULT_STEP_UP_MAX_AGE,
            };
            Some(gatehouse_events::StepUp {
                max_age_s: max_age.as_secs(),
                amr: settings.amr.clone(),
                acr: settings.acr.clone(),
            })
        }
    };
    Some(Approval {
        approver_groups: approval.approver_groups.clone().into(),
        quorum,
        hold_timeout,
        grant_window,
        four_eyes: approval.four_eyes.unwrap_or_default(),
        step_up,
    })
}

/// Verbs outside `allowed` (or `*`) in a guarded rule.
fn verbs_outside(spec: &RuleSpec, allowed: &[&str]) -> Vec<String> {
    spec.verbs
        .iter()
        .filter(|v| !allowed.contains(&v.as_str()))
        .cloned()
        .collect()
}

fn compile_commands(
    spec: &RuleSpec,
    entries: &[CommandSpec],
    at: &DocPath,
    problems: &mut Problems<'_>,
) -> CommandGuard {
    let here = at.clone().key("commands");
    let outside = verbs_outside(spec, &["exec", "attach"]);
    if !outside.is_empty() {
        problems.add(
            "bad-guard",
            here.clone(),
            format!(
                "a commands guardrail is about exec and attach; the rule's verbs must be exec \
                 and/or attach, not {}",
                outside.join(", ")
            ),
        );
    }
    if entries.is_empty() {
        problems.add(
            "bad-guard",
            here.clone(),
            "commands is empty; omit it, or add an entry",
        );
    }
    let mut compiled = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = here.clone().index(i);
        if e.program.is_none() && e.shell != Some(true) && e.matching.is_none() {
            problems.add(
                "bad-guard",
                at.clone(),
                "a commands entry needs program, shell: true, or matching",
            );
        }
        if e.shell == Some(false) && e.program.is_none() && e.matching.is_none() {
            problems.add(
                "bad-guard",
                at.clone().key("shell"),
                "shell: false matches nothing; omit it",
            );
        }
        if e.argument.is_some() && e.matching.is_none() {
            problems.add(
                "bad-guard",
                at.clone().key("argument"),
                "argument says which argument `matching` tests; add matching",
            );
        }
        if let Some(programs) = &e.program {
            if programs.is_empty() {
                problems.add("bad-guard", at.clone().key("program"), "program is empty");
            }
            for (j, p) in programs.iter().enumerate() {
                if p.is_empty() || p.contains('/') {
                    problems.add(
                        "bad-guard",
                        at.clone().key("program").index(j),
                        format!(
                            "program {p:?} must be a program name such as sh (paths are \
                             reduced to their last part before matching)"
                        ),
                    );
                }
            }
        }
        let matching = e.matching.as_ref().and_then(|m| match compile_regex(m) {
            Ok(re) => Some((m.clone(), re)),
            Err(message) => {
                problems.add("bad-regex", at.clone().key("matching"), message);
                None
            }
        });
        compiled.push(CommandEntry {
            program: e.program.as_ref().map(|ps| {
                ps.iter()
                    .map(|p| (p.clone(), Glob::new(&p.to_ascii_lowercase())))
                    .collect()
            }),
            shell: e.shell == Some(true),
            matching,
            argument: e.argument,
        });
    }
    CommandGuard::new(compiled)
}

fn compile_body(
    spec: &RuleSpec,
    entries: &[BodySpec],
    at: &DocPath,
    problems: &mut Problems<'_>,
) -> BodyGuard {
    let here = at.clone().key("body");
    let outside = verbs_outside(spec, &["create", "update", "patch"]);
    if !outside.is_empty() {
        problems.add(
            "bad-guard",
            here.clone(),
            format!(
                "a body guardrail is about what a write sends; the rule's verbs must be among \
                 create, update and patch, not {}",
                outside.join(", ")
            ),
        );
    }
    if entries.is_empty() {
        problems.add(
            "bad-guard",
            here.clone(),
            "body is empty; omit it, or add a condition",
        );
    }
    let mut compiled = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = here.clone().index(i);
        match (&e.kind, &e.path, &e.matching) {
            (Some(kinds), None, None) => {
                if kinds.is_empty() || kinds.iter().any(String::is_empty) {
                    problems.add(
                        "bad-guard",
                        at.key("kind"),
                        "kind needs one or more non-empty names",
                    );
                    continue;
                }
                compiled.push(BodyCondition::Kind(
                    kinds.iter().map(|k| (k.clone(), Glob::new(k))).collect(),
                ));
            }
            (None, Some(path), Some(matching)) => {
                let parsed = match parse_body_path(path) {
                    Ok(p) => Some(p),
                    Err(message) => {
                        problems.add("bad-path", at.clone().key("path"), message);
                        None
                    }
                };
                let regex = match compile_regex(matching) {
                    Ok(re) => Some(re),
                    Err(message) => {
                        problems.add("bad-regex", at.clone().key("matching"), message);
                        None
                    }
                };
                if let (Some(path_segments), Some(regex)) = (parsed, regex) {
                    compiled.push(BodyCondition::Path {
                        source: path.clone(),
                        path: path_segments,
                        matching: (matching.clone(), regex),
                    });
                }
            }
            (None, Some(_), None) => problems.add(
                "bad-guard",
                at.clone().key("path"),
                "a path needs `matching`, the regex its value must match",
            ),
            (None, None, Some(_)) => problems.add(
                "bad-guard",
                at.clone().key("matching"),
                "matching needs `path`, the value to test",
            ),
            _ => problems.add(
                "bad-guard",
                at,
                "a body condition is either `kind: [...]` or `path:` with `matching:` (write two \
                 conditions for both)",
            ),
        }
    }
    BodyGuard::new(compiled)
}
