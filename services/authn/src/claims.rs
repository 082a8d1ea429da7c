//! Claims → principal, groups and attributes, by a [`ClaimMapping`] and its preset.
//!
//! - [`ClaimRules`]: a mapping resolved against its preset and checked, built once per issuer.
//! - [`Template`]: `"{repository}@{environment|ref}"`-style text over claims.
//!
//! Presets (every field can be overridden in the configuration):
//!
//! | preset | principal | groups | attributes |
//! |---|---|---|---|
//! | `generic` | `sub` | claim `groups` | none |
//! | `kubernetes` | `sa:NAMESPACE:NAME` | `serviceaccounts:NAMESPACE` | namespace, serviceaccount, serviceaccount_uid, pod, pod_uid, node |
//! | `github-actions` | `github:OWNER/REPO` | `github:org:OWNER` | repository, repository_owner, ref, ref_type, environment, workflow, job_workflow_ref, event_name, actor, run_id, sha |
//!
//! The Kubernetes principal deliberately differs from the cluster's own
//! `system:serviceaccount:NS:NAME`: the proxy impersonates the principal upstream, and a token
//! from one cluster must not become a service account of the cluster behind the proxy. For the
//! same reason no mapping may yield a principal beginning with `system:` (a generic issuer's
//! `sub: system:serviceaccount:…` is refused; a `principal_prefix` keeps such names apart).
//!
//! Template values are taken as they are; a template mixing claims should put a claim the
//! issuer alone controls first (GitHub's `repository`), since a free-text claim (a GitHub
//! `environment` name) could contain the separator.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{AuthnError, Verified};
use crate::config::{ClaimMapping, ClaimPreset};

/// Kubernetes' own users and groups (`system:masters` is cluster-admin): never a token's.
const SYSTEM_PREFIX: &str = "system:";

/// What a preset fills in.
struct Preset {
    principal: &'static str,
    principal_prefix: &'static str,
    groups: &'static str,
    groups_prefix: &'static str,
    derived_groups: &'static [&'static str],
    attributes: &'static [(&'static str, &'static str)],
}

const GENERIC: Preset = Preset {
    principal: "sub",
    principal_prefix: "",
    groups: "groups",
    groups_prefix: "",
    derived_groups: &[],
    attributes: &[],
};

/// Projected service-account tokens (`kubernetes.io: {namespace, serviceaccount, pod, node}`).
const KUBERNETES: Preset = Preset {
    principal: "sa:{kubernetes.io/namespace}:{kubernetes.io/serviceaccount/name}",
    principal_prefix: "",
    groups: "",
    groups_prefix: "",
    derived_groups: &["serviceaccounts:{kubernetes.io/namespace}"],
    attributes: &[
        ("namespace", "kubernetes.io/namespace"),
        ("serviceaccount", "kubernetes.io/serviceaccount/name"),
        ("serviceaccount_uid", "kubernetes.io/serviceaccount/uid"),
        ("pod", "kubernetes.io/pod/name"),
        ("pod_uid", "kubernetes.io/pod/uid"),
        ("node", "{kubernetes.io/node/name|kubernetes.io/node}"),
    ],
};

/// GitHub Actions OIDC tokens (`https://token.actions.githubusercontent.com`).
const GITHUB_ACTIONS: Preset = Preset {
    principal: "repository",
    principal_prefix: "github:",
    groups: "",
    groups_prefix: "github:",
    derived_groups: &["org:{repository_owner}"],
    attributes: &[
        ("repository", "repository"),
        ("repository_owner", "repository_owner"),
        ("ref", "ref"),
        ("ref_type", "ref_type"),
        ("environment", "environment"),
        ("workflow", "workflow"),
        ("job_workflow_ref", "job_workflow_ref"),
        ("event_name", "event_name"),
        ("actor", "actor"),
        ("run_id", "run_id"),
        ("sha", "sha"),
    ],
};

fn preset(kind: ClaimPreset) -> &'static Preset {
    match kind {
        ClaimPreset::Generic => &GENERIC,
        ClaimPreset::Kubernetes => &KUBERNETES,
        ClaimPreset::GithubActions => &GITHUB_ACTIONS,
    }
}

/// A claim mapping resolved against its preset, ready to apply.
#[derive(Clone, Debug)]
pub struct ClaimRules {
    principal: Template,
    principal_prefix: String,
    groups: Option<String>,
    groups_prefix: String,
    derived_groups: Vec<Template>,
    attributes: Vec<(String, Template)>,
}

impl ClaimRules {
    /// Resolves `mapping` over its preset. Errors name the field at fault.
    pub fn from_config(mapping: &ClaimMapping) -> Result<Self, String> {
        let base = preset(mapping.preset);
        let principal_text = mapping.principal.as_deref().unwrap_or(base.principal);
        let principal = Template::parse(principal_text).map_err(|e| format!("principal: {e}"))?;
        if principal.literal_only() {
            return Err(format!(
                "principal: {principal_text:?} names no claim; every token would be the same principal"
            ));
        }
        let principal_prefix = mapping
            .principal_prefix
            .as_deref()
            .unwrap_or(base.principal_prefix)
            .to_owned();
        let groups_prefix = mapping
            .groups_prefix
            .as_deref()
            .unwrap_or(base.groups_prefix)
            .to_owned();
        for (field, prefix) in [
            ("principal_prefix", &principal_prefix),
            ("groups_prefix", &groups_prefix),
        ] {
            if prefix.starts_with(SYSTEM_PREFIX) {
                return Err(format!(
                    "{field}: names beginning with system: are Kubernetes' own"
                ));
            }
        }
        let groups = mapping.groups.as_deref().unwrap_or(base.groups);
        let derived_groups = match &mapping.derived_groups {
            Some(list) => list.iter().map(String::as_str).collect::<Vec<_>>(),
            None => base.derived_groups.to_vec(),
        }
        .into_iter()
        .map(|t| Template::parse(t).map_err(|e| format!("derived_groups: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
        let mut attributes: BTreeMap<String, String> = base
            .attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (name, value) in &mapping.attributes {
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(format!(
                    "attributes: {name:?} is not a usable attribute name"
                ));
            }
            if value.is_empty() {
                attributes.remove(name);
            } else {
                attributes.insert(name.clone(), value.clone());
            }
        }
        let attributes = attributes
            .into_iter()
            .map(|(name, text)| {
                Template::parse(&text)
                    .map(|t| (name.clone(), t))
                    .map_err(|e| format!("attributes.{name}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            principal,
            principal_prefix,
            groups: (!groups.is_empty()).then(|| groups.to_owned()),
            groups_prefix,
            derived_groups,
            attributes,
        })
    }

    /// Maps verified claims to an identity of `issuer`.
    pub fn apply(&self, issuer: &str, claims: &Map<String, Value>) -> Result<Verified, AuthnError> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthnError::MissingClaim("sub".into()))?
            .to_owned();
        let principal = self
            .principal
            .render(claims)
            .map_err(|missing| AuthnError::NoPrincipal(missing.to_owned()))?;
        let mut groups: Vec<String> = Vec::new();
        let mut add = |group: String| {
            if !group.starts_with(SYSTEM_PREFIX) && !groups.contains(&group) {
                groups.push(group);
            }
        };
        let claimed: Vec<&str> = match self.groups.as_deref().and_then(|g| lookup(claims, g)) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        for group in claimed {
            if !group.is_empty() && !group.starts_with(SYSTEM_PREFIX) {
                add(format!("{}{group}", self.groups_prefix));
            }
        }
        for template in &self.derived_groups {
            if let Ok(group) = template.render(claims) {
                add(format!("{}{group}", self.groups_prefix));
            }
        }
        let principal = format!("{}{principal}", self.principal_prefix);
        // Impersonated upstream as `system:kube-controller-manager` or `system:node:…`, a
        // token would act as a part of Kubernetes: no issuer may name one.
        if principal.starts_with(SYSTEM_PREFIX) {
            return Err(AuthnError::NoPrincipal(
                principal
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(256)
                    .collect(),
            ));
        }
        let attributes = self
            .attributes
            .iter()
            .filter_map(|(name, template)| Some((name.clone(), template.render(claims).ok()?)))
            .collect();
        Ok(Verified {
            issuer: issuer.to_owned(),
            subject,
            principal,
            groups,
            attributes,
        })
    }
}

/// One claim by reference: an exact top-level name first, else a `/` path into objects.
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, reference: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(reference) {
        return Some(value);
    }
    let mut parts = reference.split('/');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// Claim references tried in order; the first present one is used.
    Claim(Vec<String>),
}

/// Text over claims: a bare claim reference (`repository`), or a template with `{claim}` and
/// `{claim|fallback}` placeholders (`{repository}@{environment|ref}`). No escapes: a template
/// cannot hold a literal `{` or `}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if !text.contains(['{', '}']) {
            return Ok(Self {
                pieces: vec![Piece::Claim(vec![text.to_owned()])],
            });
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(format!("template {text:?} has a '}}' that closes nothing"));
                }
                Some(at) => {
                    if at > 0 {
                        pieces.push(Piece::Literal(rest[..at].to_owned()));
                    }
                    let inner = &rest[at + 1..];
                    let close = inner
                        .find(['{', '}'])
                        .filter(|&c| inner.as_bytes()[c] == b'}')
                        .ok_or_else(|| {
                            format!("template {text:?} has a '{{' that is not closed")
                        })?;
                    let names: Vec<String> = inner[..close]
                        .split('|')
                        .map(|n| n.trim().to_owned())
                        .collect();
                    if names.iter().any(String::is_empty) {
                        return Err(format!("template {text:?} has an empty claim name"));
                    }
                    pieces.push(Piece::Claim(names));
                    rest = &inner[close + 1..];
                }
            }
        }
        Ok(Self { pieces })
    }

    fn literal_only(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Literal(_)))
    }

    /// The text with every placeholder filled, or the first claim reference that is missing.
    /// A claim counts as present when it is a non-empty string, a number or a boolean without
    /// control characters.
    pub fn render<'t>(&'t self, claims: &Map<String, Value>) -> Result<String, &'t str> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Claim(names) => {
                    let value = names
                        .iter()
                        .find_map(|name| scalar(lookup(claims, name)?))
                        .ok_or(names[0].as_str())?;
                    out.push_str(&value);
                }
            }
        }
        Ok(out)
    }
}

fn scalar(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty() && !text.chars().any(char::is_control)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    fn rules(yaml: &str) -> ClaimRules {
        let mapping: ClaimMapping = yaml_serde::from_str(yaml).unwrap();
        ClaimRules::from_config(&mapping).unwrap()
    }

    fn rules_err(yaml: &str) -> String {
        let mapping: ClaimMapping = yaml_serde::from_str(yaml).unwrap();
        ClaimRules::from_config(&mapping).unwrap_err()
    }

    /// The example payload of a projected service-account token from the Kubernetes docs
    /// ("Service account token volume projection"), Kubernetes 1.30+ (with node info).
    pub(crate) fn kubernetes_token_claims() -> Map<String, Value> {
        claims(serde_json::json!({
            "aud": ["https://kubernetes.default.svc"],
            "exp": 1731613413,
            "iat": 1700077413,
            "iss": "https://kubernetes.default.svc",
            "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
            "kubernetes.io": {
                "namespace": "kube-system",
                "node": {"name": "127.0.0.1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
                "pod": {"name": "coredns-69cbfb9798-jv9gn", "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
                "serviceaccount": {"name": "coredns", "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
                "warnafter": 1700081020
            },
            "nbf": 1700077413,
            "sub": "system:serviceaccount:kube-system:coredns"
        }))
    }

    /// The example token of GitHub's "About security hardening with OpenID Connect".
    pub(crate) fn github_token_claims() -> Map<String, Value> {
        claims(serde_json::json!({
            "jti": "example-id",
            "sub": "repo:octo-org/octo-repo:environment:prod",
            "environment": "prod",
            "aud": "https://github.com/octo-org",
            "ref": "refs/heads/main",
            "sha": "example-sha",
            "repository": "octo-org/octo-repo",
            "repository_owner": "octo-org",
            "actor_id": "12",
            "repository_visibility": "private",
            "repository_id": "74",
            "repository_owner_id": "65",
            "run_id": "example-run-id",
            "run_number": "10",
            "run_attempt": "2",
            "runner_environment": "github-hosted",
            "actor": "octocat",
            "workflow": "example-workflow",
            "head_ref": "",
            "base_ref": "",
            "event_name": "workflow_dispatch",
            "ref_type": "branch",
            "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
            "iss": "https://token.actions.githubusercontent.com",
            "nbf": 1632492967,
            "exp": 1632493867,
            "iat": 1632493567
        }))
    }

    #[test]
    fn generic_maps_sub_and_groups_and_drops_system_groups() {
        let c = claims(serde_json::json!({
            "sub": "bot",
            "groups": ["system:masters", "system:nodes", "ops", 7, "ops"],
        }));
        let v = rules("{}").apply("i", &c).unwrap();
        assert_eq!(v.principal, "bot");
        assert_eq!(v.groups, vec!["ops"]);
        assert!(v.attributes.is_empty());

        let v = rules("groups_prefix: 'idp:'").apply("i", &c).unwrap();
        assert_eq!(v.groups, vec!["idp:ops"]);
        let v = rules("groups: ''").apply("i", &c).unwrap();
        assert!(v.groups.is_empty());
    }

    #[test]
    fn a_principal_kubernetes_reserves_is_refused() {
        for sub in [
            "system:kube-controller-manager",
            "system:node:n1",
            "system:admin",
        ] {
            let c = claims(serde_json::json!({"sub": sub}));
            assert!(
                matches!(rules("{}").apply("i", &c), Err(AuthnError::NoPrincipal(p)) if p == sub),
                "{sub}"
            );
        }
        // A prefix keeps an IdP's names apart from Kubernetes' own.
        let c = claims(serde_json::json!({"sub": "system:admin"}));
        let v = rules("principal_prefix: 'idp:'").apply("i", &c).unwrap();
        assert_eq!(v.principal, "idp:system:admin");
    }

    #[test]
    fn explicit_fields_keep_working_as_before_presets() {
        let r = rules("principal: repository\nprincipal_prefix: 'github:'\ngroups: groups\n");
        let v = r
            .apply(
                "https://token.actions.githubusercontent.com",
                &claims(serde_json::json!({
                    "sub": "repo:acme/app:ref:refs/heads/main",
                    "repository": "acme/app",
                    "groups": ["ci", 7, "deployers"],
                })),
            )
            .unwrap();
        assert_eq!(v.principal, "github:acme/app");
        assert_eq!(v.subject, "repo:acme/app:ref:refs/heads/main");
        assert_eq!(v.groups, vec!["ci", "deployers"]);
        assert_eq!(
            rules("principal: email").apply("i", &claims(serde_json::json!({"sub": "x"}))),
            Err(AuthnError::NoPrincipal("email".into()))
        );
    }

    #[test]
    fn kubernetes_preset_reads_a_projected_service_account_token() {
        let v = rules("preset: kubernetes")
            .apply("https://kubernetes.default.svc", &kubernetes_token_claims())
            .unwrap();
        assert_eq!(v.principal, "sa:kube-system:coredns");
        assert_eq!(v.subject, "system:serviceaccount:kube-system:coredns");
        assert_eq!(v.groups, vec!["serviceaccounts:kube-system"]);
        assert_eq!(v.attributes["namespace"], "kube-system");
        assert_eq!(v.attributes["serviceaccount"], "coredns");
        assert_eq!(v.attributes["pod"], "coredns-69cbfb9798-jv9gn");
        assert_eq!(v.attributes["node"], "127.0.0.1");
        assert_eq!(
            v.attributes["serviceaccount_uid"],
            "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"
        );

        // A cluster name keeps two clusters' service accounts apart.
        let v = rules(
            "preset: kubernetes\nprincipal_prefix: 'cluster-a:'\ngroups_prefix: 'cluster-a:'",
        )
        .apply("i", &kubernetes_token_claims())
        .unwrap();
        assert_eq!(v.principal, "cluster-a:sa:kube-system:coredns");
        assert_eq!(v.groups, vec!["cluster-a:serviceaccounts:kube-system"]);

        // Before Kubernetes 1.30 there is no node: the attribute is just absent.
        let mut old = kubernetes_token_claims();
        old["kubernetes.io"].as_object_mut().unwrap().remove("node");
        let v = rules("preset: kubernetes").apply("i", &old).unwrap();
        assert!(!v.attributes.contains_key("node"));

        // A token that is not a service-account token has no principal under this preset.
        let plain = claims(serde_json::json!({"sub": "alice"}));
        assert_eq!(
            rules("preset: kubernetes").apply("i", &plain),
            Err(AuthnError::NoPrincipal("kubernetes.io/namespace".into()))
        );
    }

    #[test]
    fn github_actions_preset_reads_the_documented_token() {
        let v = rules("preset: github-actions")
            .apply(
                "https://token.actions.githubusercontent.com",
                &github_token_claims(),
            )
            .unwrap();
        assert_eq!(v.principal, "github:octo-org/octo-repo");
        assert_eq!(v.groups, vec!["github:org:octo-org"]);
        assert_eq!(v.attributes["environment"], "prod");
        assert_eq!(v.attributes["ref"], "refs/heads/main");
        assert_eq!(v.attributes["workflow"], "example-workflow");
        assert_eq!(
            v.attributes["job_workflow_ref"],
            "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main"
        );
        assert_eq!(v.attributes["actor"], "octocat");
    }

    #[test]
    fn a_principal_template_tells_main_from_pull_request_builds() {
        let r = rules(
            "preset: github-actions\nprincipal: '{repository}@{environment|ref}'\nattributes: {sha: '', head: '{head_ref}'}\n",
        );
        let v = r.apply("i", &github_token_claims()).unwrap();
        assert_eq!(v.principal, "github:octo-org/octo-repo@prod");
        assert!(!v.attributes.contains_key("sha"));
        // head_ref is "" in the example: an empty claim is absent.
        assert!(!v.attributes.contains_key("head"));

        let mut pr = github_token_claims();
        pr.remove("environment");
        pr.insert("ref".into(), "refs/pull/42/merge".into());
        pr.insert("head_ref".into(), "feature".into());
        let v = r.apply("i", &pr).unwrap();
        assert_eq!(v.principal, "github:octo-org/octo-repo@refs/pull/42/merge");
        assert_eq!(v.attributes["head"], "feature");

        pr.remove("ref");
        assert_eq!(
            r.apply("i", &pr),
            Err(AuthnError::NoPrincipal("environment".into()))
        );
    }

    #[test]
    fn bad_mappings_are_refused_with_the_field_named() {
        assert!(rules_err("principal: '{repository'").contains("principal: template"));
        assert!(rules_err("principal: 'repo}'").contains("closes nothing"));
        assert!(rules_err("principal: '{a|}'").contains("empty claim name"));
        assert!(rules_err("principal: 'x{}'").contains("empty claim name"));
        assert!(rules_err("principal: ''").contains("must not be empty"));
        assert!(rules_err("derived_groups: ['{a']").starts_with("derived_groups:"));
        assert!(rules_err("attributes: {x: '{'}").starts_with("attributes.x:"));
        assert!(rules_err("groups_prefix: 'system:'").starts_with("groups_prefix:"));
        assert!(rules_err("principal_prefix: 'system:'").starts_with("principal_prefix:"));
        let unknown = yaml_serde::from_str::<ClaimMapping>("preset: gitlab").unwrap_err();
        assert!(unknown.to_string().contains("github-actions"), "{unknown}");
    }

    #[test]
    fn claim_references_prefer_exact_names_then_paths() {
        let c = claims(serde_json::json!({
            "https://example.com/roles": ["admin"],
            "a": {"b": {"c": "deep"}},
            "n": 42,
            "ctl": "x\ny",
        }));
        assert_eq!(
            lookup(&c, "https://example.com/roles"),
            Some(&serde_json::json!(["admin"]))
        );
        let t = Template::parse("{a/b/c}-{n}").unwrap();
        assert_eq!(t.render(&c).unwrap(), "deep-42");
        assert_eq!(Template::parse("ctl").unwrap().render(&c), Err("ctl"));
        assert_eq!(Template::parse("{a/b}").unwrap().render(&c), Err("a/b"));
    }
}
