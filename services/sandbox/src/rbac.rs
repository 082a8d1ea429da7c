//! The sandbox's authentication (static bearer tokens, like `--token-auth-file`) and a simple
//! allow-only RBAC evaluated like Kubernetes RBAC, both loaded from YAML.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("invalid RBAC YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    #[error("invalid RBAC config: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RbacConfig {
    #[serde(default)]
    pub tokens: Vec<StaticToken>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token: String,
    pub user: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("StaticToken")
            .field("user", &self.user)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub subjects: Vec<Subject>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub kind: SubjectKind,
    pub name: String,
    /// Only for `ServiceAccount`.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub verbs: Vec<String>,
    /// None = any API group.
    #[serde(default, alias = "apiGroups")]
    pub api_groups: Option<Vec<String>>,
    /// Like RBAC: "pods", "pods/log", "*/scale", "*".
    #[serde(default)]
    pub resources: Vec<String>,
    /// None = any name.
    #[serde(default, alias = "resourceNames")]
    pub resource_names: Option<Vec<String>>,
    /// None = every namespace and cluster scope; Some = only these namespaces.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// "/version", "/api/*", "*".
    #[serde(default, alias = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// An authenticated (or impersonated) identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What is being asked, in kube-apiserver's authorizer terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Resource {
        verb: String,
        api_group: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Request {
    pub fn resource(verb: &str, resource: &str, namespace: &str, name: &str) -> Self {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Request::Resource {
            verb: verb.to_owned(),
            api_group: String::new(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn verb(&self) -> &str {
        match self {
            Request::Resource { verb, .. } | Request::NonResource { verb, .. } => verb,
        }
    }
}

impl RbacConfig {
    pub fn from_yaml(yaml: &str) -> Result<Self, RbacError> {
        let config: RbacConfig = yaml_serde::from_str(yaml)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), RbacError> {
        for t in &self.tokens {
            if t.token.is_empty() || t.user.is_empty() {
                return Err(RbacError::Invalid(
                    "a token needs a non-empty token and user".into(),
                ));
            }
        }
        for b in &self.bindings {
            for r in &b.rules {
                if r.verbs.is_empty() {
                    return Err(RbacError::Invalid("a rule needs at least one verb".into()));
                }
            }
            for s in &b.subjects {
                if s.kind == SubjectKind::ServiceAccount && s.namespace.is_none() {
                    return Err(RbacError::Invalid(format!(
                        "service account subject {} needs a namespace",
                        s.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Resolves a bearer token; every authenticated user also gets `system:authenticated`.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        let mut found = None;
        // Compare against every token in constant time per token, so timing says little.
        for t in &self.tokens {
            if constant_time_eq(t.token.as_bytes(), token.as_bytes()) {
                found = Some(t);
            }
        }
        let t = found?;
        let mut groups = t.groups.clone();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Some(UserInfo {
            name: t.user.clone(),
            uid: t.uid.clone(),
            groups,
            extra: BTreeMap::new(),
        })
    }

    /// Allow-only: true if any rule of any binding that applies to `user` allows `request`.
    pub fn allows(&self, user: &UserInfo, request: &Request) -> bool {
        self.bindings
            .iter()
            .filter(|b| b.subjects.iter().any(|s| s.matches(user)))
            .flat_map(|b| b.rules.iter())
            .any(|r| r.allows(request))
    }

    /// The demo cluster's RBAC (see the crate docs for who may do what).
    pub fn demo(proxy_token: &str, admin_token: &str) -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let read = strings(&["get", "list", "watch"]);
        let user = |name: &str| Subject {
            kind: SubjectKind::User,
            name: name.to_owned(),
            namespace: None,
        };
        let group = |name: &str| Subject {
            kind: SubjectKind::Group,
            name: name.to_owned(),
            namespace: None,
        };
        let mut ci_read_resources = Vec::new();
        for r in crate::kube::resources::RESOURCES {
            if r.name != "secrets" {
                ci_read_resources.push(r.name.to_owned());
                // Like kube's view role: reading never includes exec, attach or port-forward
                // (a GET on those subresources opens a shell).
                for sub in r.subresources {
                    if !matches!(*sub, "exec" | "attach" | "portforward") {
                        ci_read_resources.push(format!("{}/{}", r.name, sub));
                    }
                }
            }
        }
        RbacConfig {
            tokens: vec![
                StaticToken {
                    token: proxy_token.to_owned(),
                    user: "gatehouse-proxy".into(),
                    uid: None,
                    groups: strings(&["gatehouse:proxies"]),
                },
                StaticToken {
                    token: admin_token.to_owned(),
                    user: "sandbox-admin".into(),
                    uid: None,
                    groups: strings(&["system:masters"]),
                },
            ],
            bindings: vec![
                Binding {
                    subjects: vec![user("gatehouse-proxy")],
                    rules: vec![Rule {
                        verbs: strings(&["impersonate"]),
                        resources: strings(&["users", "groups"]),
                        ..Rule::default()
                    }],
                },
                Binding {
                    subjects: vec![group("system:masters")],
                    rules: vec![
                        Rule {
                            verbs: strings(&["*"]),
                            resources: strings(&["*"]),
                            ..Rule::default()
                        },
                        Rule {
                            verbs: strings(&["*"]),
                            non_resource_urls: strings(&["*"]),
                            ..Rule::default()
                        },
                    ],
                },
                Binding {
                    // Like kube's system:discovery and system:public-info-viewer.
                    subjects: vec![group(AUTHENTICATED_GROUP)],
                    rules: vec![Rule {
                        verbs: strings(&["get"]),
                        non_resource_urls: strings(&[
                            "/api",
                            "/api/*",
                            "/apis",
                            "/apis/*",
                            "/version",
                            "/version/",
                            "/openapi",
                            "/openapi/*",
                            "/healthz",
                            "/livez",
                            "/readyz",
                        ]),
                        ..Rule::default()
                    }],
                },
                Binding {
                    subjects: vec![user("ci-deployer")],
                    rules: vec![
                        Rule {
                            verbs: strings(&["*"]),
                            resources: strings(&["*"]),
                            namespaces: Some(strings(&["apps"])),
                            ..Rule::default()
                        },
                        Rule {
                            verbs: read.clone(),
                            resources: ci_read_resources,
                            ..Rule::default()
                        },
                        // What Gatehouse holds for approval in prod: once approved, the cluster
                        // lets it through.
                        Rule {
                            verbs: strings(&["delete"]),
                            resources: strings(&["*"]),
                            namespaces: Some(strings(&["prod"])),
                            ..Rule::default()
                        },
                        Rule {
                            verbs: strings(&["update", "patch"]),
                            api_groups: Some(strings(&["apps"])),
                            resources: strings(&["deployments/scale"]),
                            namespaces: Some(strings(&["prod"])),
                            ..Rule::default()
                        },
                    ],
                },
                Binding {
                    // The demo GitHub Actions workflow (prod environment) deploys into apps.
                    subjects: vec![user("github:acme/deploy@prod")],
                    rules: vec![Rule {
                        verbs: strings(&["*"]),
                        resources: strings(&["*"]),
                        namespaces: Some(strings(&["apps"])),
                        ..Rule::default()
                    }],
                },
                Binding {
                    subjects: vec![user("readonly-bot")],
                    rules: vec![
                        // Enumerated namespaces: RBAC has no "all but", only RoleBindings per namespace.
                        Rule {
                            verbs: read.clone(),
                            resources: strings(&[
                                "pods",
                                "configmaps",
                                "services",
                                "events",
                                "namespaces",
                            ]),
                            namespaces: Some(strings(&["default", "kube-public", "apps", "prod"])),
                            ..Rule::default()
                        },
                        // Listing namespaces is a cluster-scoped request.
                        Rule {
                            verbs: strings(&["list", "watch"]),
                            resources: strings(&["namespaces"]),
                            ..Rule::default()
                        },
                    ],
                },
            ],
        }
    }
}

impl Subject {
    fn matches(&self, user: &UserInfo) -> bool {
        match self.kind {
            SubjectKind::User => self.name == user.name,
            SubjectKind::Group => user.groups.contains(&self.name),
            SubjectKind::ServiceAccount => {
                let ns = self.namespace.as_deref().unwrap_or_default();
                user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
        }
    }
}

impl Rule {
    fn allows(&self, request: &Request) -> bool {
        match request {
            Request::Resource {
                verb,
                api_group,
                resource,
                subresource,
                namespace,
                name,
            } => {
                if self.resources.is_empty() || !matches_any(&self.verbs, verb) {
                    return false;
                }
                if let Some(groups) = &self.api_groups
                    && !matches_any(groups, api_group)
                {
                    return false;
                }
                let combined = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                if !self.resource_matches(&combined, subresource) {
                    return false;
                }
                if let Some(names) = &self.resource_names
                    && !names.is_empty()
                    && !names.iter().any(|n| n == name)
                {
                    return false;
                }
                match &self.namespaces {
                    None => true,
                    Some(nss) => {
                        !namespace.is_empty() && nss.iter().any(|n| n == "*" || n == namespace)
                    }
                }
            }
            Request::NonResource { verb, path } => {
                matches_any(&self.verbs, verb)
                    && self.non_resource_urls.iter().any(|u| {
                        u == "*"
                            || u == path
                            || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
                    })
            }
        }
    }

    /// kube's ResourceMatches: "*", exact "res/sub", or "*/sub".
    fn resource_matches(&self, combined: &str, subresource: &str) -> bool {
        self.resources.iter().any(|r| {
            r == "*"
                || r == combined
                || (!subresource.is_empty()
                    && r.len() == subresource.len() + 2
                    && r.starts_with("*/")
                    && r.ends_with(subresource))
        })
    }
}

fn matches_any(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// kube-apiserver's forbidden message body (without the `<resource> "<name>" is forbidden: ` prefix).
pub fn forbidden_reason(user: &str, request: &Request) -> String {
    match request {
        Request::NonResource { verb, path } => {
            format!("User {user:?} cannot {verb} path {path:?}")
        }
        Request::Resource {
            verb,
            api_group,
            resource,
            subresource,
            namespace,
            ..
        } => {
            let res = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            if namespace.is_empty() {
                format!(
                    "User {user:?} cannot {verb} resource {res:?} in API group {api_group:?} at the cluster scope"
                )
            } else {
                format!(
                    "User {user:?} cannot {verb} resource {res:?} in API group {api_group:?} in the namespace {namespace:?}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
tokens:
  - token: "s3cr3t"
    user: gatehouse-proxy
    groups: [gatehouse:proxies]
bindings:
  - subjects: [{kind: User, name: gatehouse-proxy}]
    rules:
      - verbs: [impersonate]
        resources: [users, groups]
  - subjects: [{kind: Group, name: "system:masters"}]
    rules: [{verbs: ["*"], resources: ["*"]}, {verbs: ["*"], non_resource_urls: ["*"]}]
  - subjects: [{kind: User, name: ci-deployer}]
    rules:
      - verbs: ["*"]
        resources: ["*"]
        namespaces: [apps]
      - verbs: [get, list, watch]
        resources: [pods, configmaps, namespaces]
  - subjects: [{kind: User, name: log-reader}]
    rules:
      - verbs: [get]
        resources: ["pods/log", "*/status"]
        resource_names: [web]
"#;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: vec![AUTHENTICATED_GROUP.into()],
            ..UserInfo::default()
        }
    }

    #[test]
    fn parses_the_documented_yaml_and_authenticates() {
        let cfg = RbacConfig::from_yaml(EXAMPLE).unwrap();
        let u = cfg.authenticate("s3cr3t").unwrap();
        assert_eq!(u.name, "gatehouse-proxy");
        assert_eq!(u.groups, vec!["gatehouse:proxies", AUTHENTICATED_GROUP]);
        assert!(cfg.authenticate("s3cr3").is_none());
        assert!(cfg.authenticate("").is_none());
        assert!(format!("{:?}", cfg.tokens[0]).find("s3cr3t").is_none());
    }

    #[test]
    fn rejects_bad_yaml() {
        assert!(RbacConfig::from_yaml("tokens: 3").is_err());
        assert!(RbacConfig::from_yaml("bindings: [{subjects: [], rules: [{verbs: []}]}]").is_err());
        assert!(RbacConfig::from_yaml("unknown_key: 1").is_err());
        assert!(
            RbacConfig::from_yaml("bindings: [{subjects: [{kind: Robot, name: x}], rules: []}]")
                .is_err()
        );
    }

    #[test]
    fn namespaces_restrict_and_omitted_means_everywhere() {
        let cfg = RbacConfig::from_yaml(EXAMPLE).unwrap();
        let ci = user("ci-deployer");
        assert!(cfg.allows(&ci, &Request::resource("delete", "secrets", "apps", "db")));
        assert!(!cfg.allows(&ci, &Request::resource("delete", "secrets", "prod", "db")));
        assert!(!cfg.allows(&ci, &Request::resource("get", "secrets", "prod", "db")));
        assert!(cfg.allows(&ci, &Request::resource("list", "pods", "prod", "")));
        // Omitted namespaces also covers cluster scope; a namespace list does not.
        assert!(cfg.allows(&ci, &Request::resource("list", "namespaces", "", "")));
        assert!(!cfg.allows(&ci, &Request::resource("create", "namespaces", "", "x")));
        assert!(cfg.allows(&ci, &Request::resource("list", "pods", "", "")));
        assert!(!cfg.allows(&ci, &Request::resource("list", "secrets", "", "")));
    }

    #[test]
    fn subresources_match_like_rbac() {
        let cfg = RbacConfig::from_yaml(EXAMPLE).unwrap();
        let ci = user("ci-deployer");
        // "pods" does not grant "pods/log".
        assert!(!cfg.allows(&ci, &Request::resource("get", "pods/log", "prod", "web")));
        let reader = user("log-reader");
        assert!(cfg.allows(
            &reader,
            &Request::resource("get", "pods/log", "prod", "web")
        ));
        assert!(cfg.allows(
            &reader,
            &Request::resource("get", "pods/status", "prod", "web")
        ));
        assert!(!cfg.allows(&reader, &Request::resource("get", "pods/log", "prod", "db")));
        assert!(!cfg.allows(&reader, &Request::resource("get", "pods", "prod", "web")));
    }

    #[test]
    fn groups_and_non_resource_urls() {
        let cfg = RbacConfig::from_yaml(EXAMPLE).unwrap();
        let mut admin = user("root");
        admin.groups.push("system:masters".into());
        let version = Request::NonResource {
            verb: "get".into(),
            path: "/version".into(),
        };
        assert!(cfg.allows(&admin, &version));
        assert!(cfg.allows(&admin, &Request::resource("escalate", "anything", "", "")));
        assert!(!cfg.allows(&user("nobody"), &version));
        // Resource rules never grant non-resource paths and vice versa.
        assert!(!cfg.allows(&user("ci-deployer"), &version));
    }

    #[test]
    fn impersonation_permission() {
        let cfg = RbacConfig::from_yaml(EXAMPLE).unwrap();
        let proxy = user("gatehouse-proxy");
        assert!(cfg.allows(
            &proxy,
            &Request::resource("impersonate", "users", "", "alice")
        ));
        assert!(cfg.allows(
            &proxy,
            &Request::resource("impersonate", "groups", "", "devs")
        ));
        let mut uids = Request::resource("impersonate", "uids", "", "1");
        if let Request::Resource { api_group, .. } = &mut uids {
            *api_group = "authentication.k8s.io".into();
        }
        assert!(!cfg.allows(&proxy, &uids));
        assert!(!cfg.allows(&proxy, &Request::resource("get", "pods", "apps", "")));
        assert!(!cfg.allows(
            &user("ci-deployer"),
            &Request::resource("impersonate", "users", "", "alice")
        ));
    }

    #[test]
    fn demo_matches_its_description() {
        let cfg = RbacConfig::demo("proxy-token", "admin-token");
        let proxy = cfg.authenticate("proxy-token").unwrap();
        let admin = cfg.authenticate("admin-token").unwrap();
        assert_eq!(admin.name, "sandbox-admin");
        assert!(cfg.allows(
            &proxy,
            &Request::resource("impersonate", "users", "", "alice")
        ));
        assert!(!cfg.allows(&proxy, &Request::resource("list", "pods", "apps", "")));
        assert!(cfg.allows(
            &admin,
            &Request::resource("delete", "namespaces", "", "prod")
        ));
        let discovery = Request::NonResource {
            verb: "get".into(),
            path: "/api/v1".into(),
        };
        assert!(cfg.allows(&user("anyone"), &discovery));
        let bot = user("readonly-bot");
        assert!(cfg.allows(&bot, &Request::resource("list", "pods", "apps", "")));
        assert!(!cfg.allows(&bot, &Request::resource("list", "pods", "kube-system", "")));
        assert!(!cfg.allows(&bot, &Request::resource("list", "secrets", "apps", "")));
        assert!(!cfg.allows(&bot, &Request::resource("delete", "pods", "apps", "x")));
        let ci = user("ci-deployer");
        assert!(cfg.allows(&ci, &Request::resource("create", "secrets", "apps", "")));
        assert!(cfg.allows(&ci, &Request::resource("watch", "pods", "prod", "")));
        assert!(cfg.allows(&ci, &Request::resource("get", "pods/log", "prod", "x")));
        assert!(!cfg.allows(&ci, &Request::resource("get", "secrets", "prod", "x")));
        assert!(!cfg.allows(&ci, &Request::resource("create", "pods", "prod", "")));
        for sub in ["pods/exec", "pods/attach", "pods/portforward"] {
            assert!(!cfg.allows(&ci, &Request::resource("get", sub, "prod", "api")));
            assert!(cfg.allows(&ci, &Request::resource("create", sub, "apps", "web")));
            assert!(cfg.allows(&admin, &Request::resource("create", sub, "prod", "api")));
            assert!(cfg.allows(&admin, &Request::resource("get", sub, "prod", "api")));
        }
    }

    #[test]
    fn forbidden_messages_match_kube() {
        assert_eq!(
            forbidden_reason("x", &Request::resource("list", "pods", "apps", "")),
            r#"User "x" cannot list resource "pods" in API group "" in the namespace "apps""#
        );
        assert_eq!(
            forbidden_reason(
                "bob",
                &Request::resource("impersonate", "users", "", "alice")
            ),
            r#"User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        assert_eq!(
            forbidden_reason("x", &Request::resource("get", "pods/log", "a", "p")),
            r#"User "x" cannot get resource "pods/log" in API group "" in the namespace "a""#
        );
        assert_eq!(
            forbidden_reason(
                "x",
                &Request::NonResource {
                    verb: "get".into(),
                    path: "/version".into()
                }
            ),
            r#"User "x" cannot get path "/version""#
        );
    }
}
