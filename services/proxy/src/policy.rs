//! Policy: ordered rules, first match wins, default deny.
//!
//! ```yaml
//! rules:
//!   - id: deployer-apps
//!     description: CI deploys into apps
//!     action: allow            # allow | deny
//!     identities: [ci-deployer]  # principals (globs); omit identities and groups for "anyone"
//!     groups: [deployers]      # any of the caller's groups (globs)
//!     verbs: [get, list, watch, create, update, patch, delete]
//!     api_groups: ["", apps]   # omitted: any group
//!     resources: ["*"]         # "pods", "pods/log", "pods/*", "*/scale", "*"
//!     namespaces: [apps]       # omitted: any namespace and cluster scope
//!     names: ["web-*"]         # omitted: any name
//!   - id: discovery
//!     action: allow
//!     verbs: [get]
//!     non_resource_urls: ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]
//! ```
//!
//! A rule matches resource requests only if it has `resources`, and non-resource requests only
//! if it has `non_resource_urls`. Matching is on the request info the parser produced from the
//! normalised path, the same one that is forwarded.

use std::collections::HashSet;

use gatehouse_events::{Identity, RequestInfo};
use serde::Deserialize;

const RESOURCE_VERBS: [&str; 12] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "exec",
    "attach",
    "portforward",
    "proxy",
];
const HTTP_VERBS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<Rule>,
}

/// Proof that policy allowed a request. Only [`Policy::decide`] makes one, and forwarding takes
/// one by value, so "forwarded without permission" does not compile.
#[derive(Debug)]
pub struct Permitted {
    rule: String,
}

impl Permitted {
    /// The id of the rule that allowed the request.
    pub fn rule(&self) -> &str {
        &self.rule
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
    Deny(Denial),
}

#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Parses and validates a policy. Errors name the line (YAML errors) or the rule.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: PolicyFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let mut ids = HashSet::new();
        for rule in &file.rules {
            validate_rule(rule)?;
            if !ids.insert(rule.id.as_str()) {
                return Err(format!("rule id {:?} is used twice", rule.id));
            }
        }
        Ok(Self { rules: file.rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first matching rule decides; no match is a denial.
    pub fn decide(&self, identity: &Identity, request: &RequestInfo) -> Decision {
        for rule in &self.rules {
            if rule.matches(identity, request) {
                return match rule.action {
                    Action::Allow => Decision::Allow(Permitted {
                        rule: rule.id.clone(),
                    }),
                    Action::Deny => Decision::Deny(Denial {
                        rule: Some(rule.id.clone()),
                        message: format!(
                            "{} may not {} {}: denied by rule {}{}",
                            identity.principal,
                            request.verb,
                            describe(request),
                            rule.id,
                            rule.description
                                .as_deref()
                                .map(|d| format!(" ({d})"))
                                .unwrap_or_default()
                        ),
                    }),
                };
            }
        }
        Decision::Deny(Denial {
            rule: None,
            message: format!(
                "no policy rule allows {} to {} {} (default deny)",
                identity.principal,
                request.verb,
                describe(request)
            ),
        })
    }
}

impl Rule {
    fn matches(&self, identity: &Identity, request: &RequestInfo) -> bool {
        self.matches_subject(identity)
            && any_matches(Some(&self.verbs), &request.verb)
            && if request.is_resource_request {
                self.matches_resource(request)
            } else {
                self.non_resource_urls
                    .as_ref()
                    .is_some_and(|urls| urls.iter().any(|u| glob(u, &request.path)))
            }
    }

    fn matches_subject(&self, identity: &Identity) -> bool {
        match (&self.identities, &self.groups) {
            (None, None) => true,
            (ids, groups) => {
                ids.as_ref()
                    .is_some_and(|ids| ids.iter().any(|p| glob(p, &identity.principal)))
                    || groups.as_ref().is_some_and(|gs| {
                        gs.iter()
                            .any(|p| identity.groups.iter().any(|g| glob(p, g)))
                    })
            }
        }
    }

    fn matches_resource(&self, request: &RequestInfo) -> bool {
        let Some(resources) = &self.resources else {
            return false;
        };
        resources
            .iter()
            .any(|spec| resource_matches(spec, &request.resource, &request.subresource))
            && any_matches(self.api_groups.as_ref(), &request.api_group)
            && any_matches(self.namespaces.as_ref(), &request.namespace)
            && match &self.names {
                None => true,
                Some(names) => {
                    !request.name.is_empty() && names.iter().any(|n| glob(n, &request.name))
                }
            }
    }
}

/// `None` matches anything; otherwise some pattern must match `value`. The empty string is the
/// core API group or cluster scope, and only `""` or `*` match it.
fn any_matches(patterns: Option<&Vec<String>>, value: &str) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| glob(p, value)))
}

/// RBAC-style resource patterns: `pods` (no subresource), `pods/log`, `pods/*`, `*/scale`, `*`.
fn resource_matches(spec: &str, resource: &str, subresource: &str) -> bool {
    if spec == "*" {
        return true;
    }
    match spec.split_once('/') {
        None => subresource.is_empty() && glob(spec, resource),
        Some((r, s)) => !subresource.is_empty() && glob(r, resource) && glob(s, subresource),
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

fn validate_rule(rule: &Rule) -> Result<(), String> {
    let at = |msg: String| format!("rule {:?}: {msg}", rule.id);
    if rule.id.trim().is_empty() {
        return Err("every rule needs a non-empty id".into());
    }
    if rule.verbs.is_empty() {
        return Err(at(
            "verbs must not be empty (use [\"*\"] for every verb)".into()
        ));
    }
    if rule.resources.is_none() && rule.non_resource_urls.is_none() {
        return Err(at(
            "a rule needs resources, non_resource_urls, or both".into()
        ));
    }
    for verb in &rule.verbs {
        let known = verb == "*"
            || (rule.resources.is_some() && RESOURCE_VERBS.contains(&verb.as_str()))
            || (rule.non_resource_urls.is_some() && HTTP_VERBS.contains(&verb.as_str()));
        if !known {
            return Err(at(format!("unknown verb {verb:?}")));
        }
    }
    for (field, list) in [
        ("identities", &rule.identities),
        ("groups", &rule.groups),
        ("resources", &rule.resources),
        ("namespaces", &rule.namespaces),
        ("names", &rule.names),
        ("non_resource_urls", &rule.non_resource_urls),
    ] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            return Err(at(format!(
                "{field} is empty, so the rule could never match; omit it to match anything"
            )));
        }
    }
    if let Some(urls) = &rule.non_resource_urls
        && let Some(bad) = urls.iter().find(|u| !u.starts_with('/') && *u != "*")
    {
        return Err(at(format!(
            "non_resource_urls entry {bad:?} must start with '/'"
        )));
    }
    Ok(())
}

/// "secrets \"db\" in namespace \"apps\"", "pods/log ...", "namespaces", "path \"/version\"".
fn describe(r: &RequestInfo) -> String {
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
mod tests {
    use super::*;
    use crate::request_info::parse;

    const DEMO: &str = r#"
rules:
  - id: discovery
    action: allow
    verbs: [get]
    non_resource_urls: ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi/*"]
  - id: deployer-apps
    action: allow
    identities: [ci-deployer]
    verbs: [get, list, watch, create, update, patch, delete]
    resources: ["*"]
    namespaces: [apps]
  - id: deployer-no-secrets
    action: deny
    identities: [ci-deployer]
    verbs: ["*"]
    resources: [secrets]
    description: secrets stay in apps
  - id: deployer-read
    action: allow
    identities: [ci-deployer]
    verbs: [get, list]
    resources: ["*"]
  - id: logs-of-web
    action: allow
    groups: ["log-*"]
    verbs: [get]
    resources: [pods/log]
    names: ["web-*"]
"#;

    fn who(principal: &str, groups: &[&str]) -> Identity {
        Identity {
            issuer: "i".into(),
            subject: principal.into(),
            principal: principal.into(),
            registered: true,
            owner: None,
            team: None,
            purpose: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            attributes: Default::default(),
        }
    }

    fn decide(p: &Policy, id: &Identity, method: &str, path: &str) -> Result<String, Denial> {
        match p.decide(id, &parse(method, path, None).unwrap()) {
            Decision::Allow(permit) => Ok(permit.rule().to_owned()),
            Decision::Deny(d) => Err(d),
        }
    }

    #[test]
    fn first_match_wins_and_default_denies() {
        let p = Policy::from_yaml(DEMO).unwrap();
        let ci = who("ci-deployer", &[]);
        assert_eq!(
            decide(&p, &ci, "GET", "/api/v1/namespaces/apps/secrets/db").unwrap(),
            "deployer-apps"
        );
        assert_eq!(
            decide(&p, &ci, "DELETE", "/api/v1/namespaces/apps/pods/web").unwrap(),
            "deployer-apps"
        );
        let d = decide(&p, &ci, "GET", "/api/v1/namespaces/prod/secrets/db").unwrap_err();
        assert_eq!(d.rule.as_deref(), Some("deployer-no-secrets"));
        assert_eq!(
            d.message,
            "ci-deployer may not get secrets \"db\" in namespace \"prod\": denied by rule deployer-no-secrets (secrets stay in apps)"
        );
        assert_eq!(
            decide(&p, &ci, "GET", "/api/v1/namespaces/prod/pods").unwrap(),
            "deployer-read"
        );
        assert_eq!(
            decide(&p, &ci, "GET", "/api/v1/namespaces").unwrap(),
            "deployer-read"
        );
        let d = decide(&p, &ci, "DELETE", "/api/v1/namespaces/prod/pods/x").unwrap_err();
        assert_eq!(d.rule, None);
        assert_eq!(
            d.message,
            "no policy rule allows ci-deployer to delete pods \"x\" in namespace \"prod\" (default deny)"
        );
        assert!(decide(&p, &who("someone", &[]), "GET", "/api/v1/pods").is_err());
    }

    #[test]
    fn non_resource_urls_match_only_non_resource_requests() {
        let p = Policy::from_yaml(DEMO).unwrap();
        let anyone = who("readonly-bot", &[]);
        assert_eq!(decide(&p, &anyone, "GET", "/version").unwrap(), "discovery");
        assert_eq!(
            decide(&p, &anyone, "GET", "/apis/apps/v1").unwrap(),
            "discovery"
        );
        assert!(decide(&p, &anyone, "POST", "/api").is_err());
        // /api/v1/pods is a resource request; the discovery glob must not allow it.
        assert!(decide(&p, &anyone, "GET", "/api/v1/pods").is_err());
    }

    #[test]
    fn subresources_groups_and_names() {
        let p = Policy::from_yaml(DEMO).unwrap();
        let reader = who("log-reader", &["log-readers"]);
        assert_eq!(
            decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/web-1/log").unwrap(),
            "logs-of-web"
        );
        assert!(decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/db-1/log").is_err());
        assert!(decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/web-1").is_err());
        assert!(decide(&p, &reader, "GET", "/api/v1/namespaces/x/pods/web-1/exec").is_err());
    }

    #[test]
    fn resource_patterns() {
        assert!(resource_matches("pods", "pods", ""));
        assert!(!resource_matches("pods", "pods", "log"));
        assert!(resource_matches("pods/log", "pods", "log"));
        assert!(resource_matches("pods/*", "pods", "exec"));
        assert!(!resource_matches("pods/*", "pods", ""));
        assert!(resource_matches("*/scale", "deployments", "scale"));
        assert!(resource_matches("*", "pods", "exec"));
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("web-*", "web-1"));
        assert!(!glob("web-*", "db-1"));
        assert!(glob("*-prod", "api-prod"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("system:*", "system:serviceaccount:ci:builder"));
        assert!(!glob("", "x"));
        assert!(glob("", ""));
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        let err = |yaml: &str| Policy::from_yaml(yaml).unwrap_err();
        assert!(
            err("rules:\n  - id: a\n    action: allow\n    verbs: [get]\n").contains("resources")
        );
        assert!(
            err("rules:\n  - id: a\n    action: allow\n    verbs: [gett]\n    resources: [pods]\n")
                .contains("unknown verb")
        );
        assert!(
            err("rules:\n  - id: a\n    action: permit\n    verbs: [get]\n    resources: [pods]\n")
                .contains("line 3")
        );
        assert!(err("rules:\n  - id: a\n    action: allow\n    verbs: [get]\n    resources: [pods]\n    namespace: [x]\n").contains("namespace"));
        assert!(
            err("rules:\n  - id: a\n    action: allow\n    verbs: [get]\n    resources: []\n")
                .contains("never match")
        );
        assert!(err("rules:\n  - id: a\n    action: allow\n    verbs: [get]\n    resources: [pods]\n  - id: a\n    action: deny\n    verbs: [get]\n    resources: [pods]\n").contains("twice"));
    }
}
