//! Method + path → Kubernetes request info, the way kube-apiserver's `RequestInfoFactory` reads
//! it, plus Gatehouse's verbs for the streaming subresources (exec, attach, portforward, proxy).
//!
//! The path is percent-decoded *before* it is split, as Go's `url.URL.Path` is, so an encoded
//! slash cannot make Gatehouse see one resource while the API server sees another. The parsed
//! path is then re-encoded canonically, and that normalised path is what policy evaluates and
//! what is forwarded: there is exactly one reading of every request.

use std::borrow::Cow;
use std::collections::HashMap;

use gatehouse_events::RequestInfo;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// Characters escaped when re-encoding a path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Subresources whose verb is the subresource's own name.
const STREAMING_SUBRESOURCES: [&str; 4] = ["exec", "attach", "portforward", "proxy"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the path is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the query string contains ';', which the API server would read differently")]
    SemicolonInQuery,
    #[error(
        "the query parameter {0:?} is given more than once with different values; the API server \
         reads one of them, so Gatehouse accepts it only once"
    )]
    ConflictingParameter(String),
    #[error("{0} is not a method the Kubernetes API serves on resources")]
    UnsupportedMethod(String),
    #[error("cannot tell the resource from {0}")]
    NoResource(String),
    #[error("the {what} in the path is not valid: {rule}")]
    InvalidSegment {
        what: &'static str,
        rule: &'static str,
    },
    #[error("the query parameter {0:?} holds a control character")]
    ControlCharacter(String),
}

/// Parses a request. `query` is the raw query string, without `?`.
pub fn parse(method: &str, raw_path: &str, query: Option<&str>) -> Result<RequestInfo, ParseError> {
    if query.is_some_and(|q| q.contains(';')) {
        return Err(ParseError::SemicolonInQuery);
    }
    let params = single_values(query.unwrap_or(""))?;
    let decoded = percent_decode_str(raw_path)
        .decode_utf8()
        .map_err(|_| ParseError::BadEncoding)?;
    // Go's splitPath trims the slashes around the path; runs of slashes inside collapse here
    // so that `//api//v1` and `/api/v1` are one and the same request.
    let parts: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(ParseError::DotSegment);
    }
    let path = canonical_path(&parts);

    let mut info = RequestInfo {
        is_resource_request: false,
        path,
        verb: method.to_ascii_lowercase(),
        ..RequestInfo::default()
    };
    if parts.len() < 3 || !(parts[0] == "api" || parts[0] == "apis") {
        return Ok(info);
    }
    let prefix = parts[0];
    let mut rest = &parts[1..];
    if prefix == "apis" {
        // /apis/{group}/{version}/... needs four parts to name a resource.
        if rest.len() < 3 {
            return Ok(info);
        }
        info.api_group = rest[0].to_owned();
        rest = &rest[1..];
    }
    info.api_prefix = prefix.to_owned();
    info.is_resource_request = true;
    info.api_version = rest[0].to_owned();
    rest = &rest[1..];

    // Legacy /{watch|proxy}/... forms name the verb in the path.
    if rest[0] == "watch" || rest[0] == "proxy" {
        if rest.len() < 2 {
            return Err(ParseError::NoResource(info.path));
        }
        info.verb = rest[0].to_owned();
        rest = &rest[1..];
    } else {
        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            other => return Err(ParseError::UnsupportedMethod(other.to_owned())),
        }
        .to_owned();
    }

    if rest[0] == "namespaces" && rest.len() > 1 {
        info.namespace = rest[1].to_owned();
        // `namespaces/{ns}/status` and `/finalize` are subresources of the namespace itself.
        if rest.len() > 2 && rest[2] != "status" && rest[2] != "finalize" {
            rest = &rest[2..];
        }
    }

    // resource / name / subresource / anything further is the subresource's business.
    if rest.len() >= 3 && info.verb != "proxy" {
        info.subresource = rest[2].to_owned();
    }
    if rest.len() >= 2 {
        info.name = rest[1].to_owned();
    }
    info.resource = rest[0].to_owned();

    if info.name.is_empty() && info.verb == "get" {
        let params = ListParams::from_params(&params);
        info.verb = if params.watch { "watch" } else { "list" }.to_owned();
        if let Some(name) = params.name_from_field_selector {
            info.name = name;
        }
    }
    if info.name.is_empty() && info.verb == "delete" {
        info.verb = "deletecollection".to_owned();
    }
    if STREAMING_SUBRESOURCES.contains(&info.subresource.as_str()) {
        info.verb = info.subresource.clone();
    }
    check_segments(&info)?;
    Ok(info)
}

/// The longest object name accepted. Most kinds allow 253 characters (a DNS subdomain); the
/// few validated as path segments (RBAC roles) have no stated limit, so some room is left.
const MAX_NAME: usize = 1024;

/// What the path names must look like: what no Kubernetes object could be called is refused
/// here, with the rule, rather than sent on for the API server to read its own way.
fn check_segments(info: &RequestInfo) -> Result<(), ParseError> {
    if !info.is_resource_request {
        return Ok(());
    }
    let invalid = |what, rule| Err(ParseError::InvalidSegment { what, rule });
    let lower = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !info.namespace.is_empty() && !dns_label(&info.namespace) {
        return invalid(
            "namespace",
            "a DNS label (lowercase letters, digits and '-', at most 63 characters)",
        );
    }
    if !info.api_group.is_empty() && !lower(&info.api_group, 253) {
        return invalid("API group", "lowercase letters, digits, '-' and '.'");
    }
    let version = &info.api_version;
    if version.is_empty()
        || version.len() > 63
        || !version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return invalid("API version", "lowercase letters and digits");
    }
    if !lower(&info.resource, 253) {
        return invalid("resource", "lowercase letters, digits, '-' and '.'");
    }
    if !info.subresource.is_empty() && !lower(&info.subresource, 253) {
        return invalid("subresource", "lowercase letters, digits, '-' and '.'");
    }
    if !info.name.is_empty()
        && (info.name.len() > MAX_NAME || info.name.chars().any(|c| c.is_control() || c == '%'))
    {
        return invalid(
            "name",
            "at most 1024 characters, without control characters or '%'",
        );
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes names namespaces.
fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Query parameters the API server reads as lists: `command` of exec, `ports` of port-forward,
/// `dryRun` of writes. Every other one it reads once (the first value, or the last, depending
/// on the code path and the server), so policy and the API server could read two values
/// given for one differently.
const LIST_PARAMETERS: [&str; 3] = ["command", "ports", "dryRun"];

/// The query's single-valued parameters, each read once: one given twice with different values
/// is refused. Names are compared after decoding, as the API server decodes them (`w%61tch` is
/// `watch`).
fn single_values(query: &str) -> Result<HashMap<Cow<'_, str>, Cow<'_, str>>, ParseError> {
    let mut values: HashMap<Cow<'_, str>, Cow<'_, str>> = HashMap::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if LIST_PARAMETERS.contains(&key.as_ref()) {
            continue;
        }
        if value.chars().any(char::is_control) {
            return Err(ParseError::ControlCharacter(key.into_owned()));
        }
        match values.get(&key) {
            Some(first) if *first != value => {
                return Err(ParseError::ConflictingParameter(key.into_owned()));
            }
            Some(_) => {}
            None => {
                values.insert(key, value);
            }
        }
    }
    Ok(values)
}

/// Headers the API server (and the masker, and the body guardrail) read as one value: sent twice
/// with different values, which one counts would depend on the reader.
const SINGLE_VALUED_HEADERS: [&str; 4] = [
    "content-type",
    "content-encoding",
    "accept",
    "accept-encoding",
];

/// The first single-valued header sent more than once with different values.
pub fn conflicting_header(headers: &http::HeaderMap) -> Option<&'static str> {
    SINGLE_VALUED_HEADERS.into_iter().find(|name| {
        let mut values = headers.get_all(*name).iter();
        values
            .next()
            .is_some_and(|first| values.any(|other| other != first))
    })
}

/// The parts of list options that change the request info.
struct ListParams {
    watch: bool,
    name_from_field_selector: Option<String>,
}

impl ListParams {
    fn from_params(params: &HashMap<Cow<'_, str>, Cow<'_, str>>) -> Self {
        let watch = params.get("watch");
        let field_selector = params.get("fieldSelector");
        Self {
            // Go's strconv.ParseBool, and the API server's fallback for unparsable values: any
            // value that is not a spelling of false means watch.
            watch: watch.is_some_and(|v| {
                !matches!(v.as_ref(), "0" | "f" | "F" | "false" | "FALSE" | "False")
            }),
            name_from_field_selector: field_selector.map(Cow::as_ref).and_then(exact_name),
        }
    }
}

/// `metadata.name=X` (or `==`) in a field selector, when X is a valid path segment name.
fn exact_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let term = term.trim();
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        let valid = !value.is_empty()
            && value != "."
            && value != ".."
            && !value.contains('/')
            && !value.contains('%');
        valid.then(|| value.to_owned())
    })
}

fn canonical_path(parts: &[&str]) -> String {
    if parts.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::new();
    for part in parts {
        out.push('/');
        out.extend(utf8_percent_encode(part, SEGMENT));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, path, query) → (resource?, verb, group, version, namespace, resource, sub, name)
    type Row = (
        &'static str,
        &'static str,
        Option<&'static str>,
        bool,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );

    #[rustfmt::skip]
    const TABLE: &[Row] = &[
        // Non-resource URLs.
        ("GET", "/version", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/api", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/api/v1", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/apis", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/apis/apps", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/apis/apps/v1", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/openapi/v2", None, false, "get", "", "", "", "", "", ""),
        ("GET", "/openapi/v3/apis/apps/v1", Some("hash=ABC"), false, "get", "", "", "", "", "", ""),
        ("GET", "/healthz", None, false, "get", "", "", "", "", "", ""),
        ("POST", "/logs", None, false, "post", "", "", "", "", "", ""),
        ("GET", "/", None, false, "get", "", "", "", "", "", ""),
        // Core group, namespaced.
        ("GET", "/api/v1/namespaces/apps/pods", None, true, "list", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/apps/pods", Some("limit=500"), true, "list", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/apps/pods/web-1", None, true, "get", "", "v1", "apps", "pods", "", "web-1"),
        ("HEAD", "/api/v1/namespaces/apps/pods/web-1", None, true, "get", "", "v1", "apps", "pods", "", "web-1"),
        ("POST", "/api/v1/namespaces/apps/pods", None, true, "create", "", "v1", "apps", "pods", "", ""),
        ("PUT", "/api/v1/namespaces/apps/configmaps/cfg", None, true, "update", "", "v1", "apps", "configmaps", "", "cfg"),
        ("PATCH", "/api/v1/namespaces/apps/configmaps/cfg", None, true, "patch", "", "v1", "apps", "configmaps", "", "cfg"),
        ("DELETE", "/api/v1/namespaces/apps/secrets/db", None, true, "delete", "", "v1", "apps", "secrets", "", "db"),
        ("DELETE", "/api/v1/namespaces/apps/pods", None, true, "deletecollection", "", "v1", "apps", "pods", "", ""),
        // Watches: query forms and the legacy path form.
        ("GET", "/api/v1/namespaces/apps/pods", Some("watch=true"), true, "watch", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/apps/pods", Some("watch=1&resourceVersion=10&allowWatchBookmarks=true"), true, "watch", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/apps/pods", Some("watch=false"), true, "list", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/apps/pods", Some("watch=0"), true, "list", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/apps/pods", Some("watch=yes"), true, "watch", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/watch/namespaces/apps/pods", None, true, "watch", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/watch/namespaces/apps/pods/web-1", None, true, "watch", "", "v1", "apps", "pods", "", "web-1"),
        ("GET", "/api/v1/watch/pods", None, true, "watch", "", "v1", "", "pods", "", ""),
        // A field selector on metadata.name names the object, as in the API server.
        ("GET", "/api/v1/namespaces/apps/pods", Some("fieldSelector=metadata.name%3Dweb-1"), true, "list", "", "v1", "apps", "pods", "", "web-1"),
        ("GET", "/api/v1/namespaces/apps/pods", Some("fieldSelector=metadata.name%3Dweb-1&watch=1"), true, "watch", "", "v1", "apps", "pods", "", "web-1"),
        ("GET", "/api/v1/namespaces/apps/events", Some("fieldSelector=involvedObject.name%3Dweb-1"), true, "list", "", "v1", "apps", "events", "", ""),
        // Subresources.
        ("GET", "/api/v1/namespaces/apps/pods/web-1/log", Some("follow=true&container=app"), true, "get", "", "v1", "apps", "pods", "log", "web-1"),
        ("GET", "/api/v1/namespaces/apps/pods/web-1/status", None, true, "get", "", "v1", "apps", "pods", "status", "web-1"),
        ("PUT", "/api/v1/namespaces/apps/pods/web-1/status", None, true, "update", "", "v1", "apps", "pods", "status", "web-1"),
        ("POST", "/api/v1/namespaces/apps/pods/web-1/exec", Some("command=sh&stdin=true&tty=true"), true, "exec", "", "v1", "apps", "pods", "exec", "web-1"),
        ("GET", "/api/v1/namespaces/apps/pods/web-1/exec", Some("command=ls&stdout=true"), true, "exec", "", "v1", "apps", "pods", "exec", "web-1"),
        ("POST", "/api/v1/namespaces/apps/pods/web-1/attach", Some("stdin=true"), true, "attach", "", "v1", "apps", "pods", "attach", "web-1"),
        ("POST", "/api/v1/namespaces/apps/pods/web-1/portforward", Some("ports=8080"), true, "portforward", "", "v1", "apps", "pods", "portforward", "web-1"),
        ("GET", "/api/v1/namespaces/apps/pods/web-1/proxy/metrics", None, true, "proxy", "", "v1", "apps", "pods", "proxy", "web-1"),
        ("GET", "/api/v1/namespaces/apps/services/web:http/proxy/healthz", None, true, "proxy", "", "v1", "apps", "services", "proxy", "web:http"),
        ("POST", "/api/v1/namespaces/apps/pods/web-1/eviction", None, true, "create", "", "v1", "apps", "pods", "eviction", "web-1"),
        ("POST", "/api/v1/namespaces/apps/serviceaccounts/builder/token", None, true, "create", "", "v1", "apps", "serviceaccounts", "token", "builder"),
        // Legacy proxy verb path: no subresource, the rest is the proxied path.
        ("GET", "/api/v1/proxy/namespaces/apps/pods/web-1/metrics", None, true, "proxy", "", "v1", "apps", "pods", "", "web-1"),
        // Named groups.
        ("GET", "/apis/apps/v1/namespaces/apps/deployments", None, true, "list", "apps", "v1", "apps", "deployments", "", ""),
        ("GET", "/apis/apps/v1/namespaces/apps/deployments/web/scale", None, true, "get", "apps", "v1", "apps", "deployments", "scale", "web"),
        ("PATCH", "/apis/apps/v1/namespaces/apps/deployments/web/scale", None, true, "patch", "apps", "v1", "apps", "deployments", "scale", "web"),
        ("PATCH", "/apis/apps/v1/namespaces/apps/deployments/web/status", None, true, "patch", "apps", "v1", "apps", "deployments", "status", "web"),
        ("GET", "/apis/apps/v1/deployments", None, true, "list", "apps", "v1", "", "deployments", "", ""),
        ("GET", "/apis/batch/v1/namespaces/ci/jobs/build-7", None, true, "get", "batch", "v1", "ci", "jobs", "", "build-7"),
        ("GET", "/apis/apps/v1/watch/namespaces/apps/deployments", None, true, "watch", "apps", "v1", "apps", "deployments", "", ""),
        // Cluster-scoped resources.
        ("GET", "/api/v1/nodes", None, true, "list", "", "v1", "", "nodes", "", ""),
        ("GET", "/api/v1/nodes/node-1/proxy/metrics", None, true, "proxy", "", "v1", "", "nodes", "proxy", "node-1"),
        ("GET", "/api/v1/persistentvolumes/pv-1", None, true, "get", "", "v1", "", "persistentvolumes", "", "pv-1"),
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", None, true, "create", "rbac.authorization.k8s.io", "v1", "", "clusterrolebindings", "", ""),
        ("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:aggregate-to-edit", None, true, "delete", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "system:aggregate-to-edit"),
        ("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings", None, true, "create", "rbac.authorization.k8s.io", "v1", "apps", "rolebindings", "", ""),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", None, true, "create", "authorization.k8s.io", "v1", "", "selfsubjectaccessreviews", "", ""),
        // Namespaces: the namespace object carries its own name as namespace, as in the API server.
        ("GET", "/api/v1/namespaces", None, true, "list", "", "v1", "", "namespaces", "", ""),
        ("GET", "/api/v1/namespaces/apps", None, true, "get", "", "v1", "apps", "namespaces", "", "apps"),
        ("DELETE", "/api/v1/namespaces/prod", None, true, "delete", "", "v1", "prod", "namespaces", "", "prod"),
        ("PUT", "/api/v1/namespaces/prod/finalize", None, true, "update", "", "v1", "prod", "namespaces", "finalize", "prod"),
        ("GET", "/api/v1/namespaces/prod/status", None, true, "get", "", "v1", "prod", "namespaces", "status", "prod"),
        // Custom resources.
        ("GET", "/apis/stable.example.com/v1/namespaces/apps/crontabs", None, true, "list", "stable.example.com", "v1", "apps", "crontabs", "", ""),
        ("PUT", "/apis/stable.example.com/v1/namespaces/apps/crontabs/nightly/status", None, true, "update", "stable.example.com", "v1", "apps", "crontabs", "status", "nightly"),
        ("GET", "/apis/cert-manager.io/v1/clusterissuers/letsencrypt", None, true, "get", "cert-manager.io", "v1", "", "clusterissuers", "", "letsencrypt"),
        ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", None, true, "create", "apiextensions.k8s.io", "v1", "", "customresourcedefinitions", "", ""),
        // Normalisation: duplicate and trailing slashes, percent-encoding.
        ("GET", "//api//v1/namespaces/apps/pods/", None, true, "list", "", "v1", "apps", "pods", "", ""),
        ("GET", "/api/v1/namespaces/ap%70s/secrets", None, true, "list", "", "v1", "apps", "secrets", "", ""),
        // An encoded slash is a slash to the API server, so it is one here too.
        ("GET", "/api/v1/namespaces/apps%2Fsecrets", None, true, "list", "", "v1", "apps", "secrets", "", ""),
    ];

    #[test]
    fn table_of_real_paths() {
        assert!(TABLE.len() >= 40);
        for &(method, path, query, resource, verb, group, version, ns, res, sub, name) in TABLE {
            let info =
                parse(method, path, query).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let got = (
                info.is_resource_request,
                info.verb.as_str(),
                info.api_group.as_str(),
                info.api_version.as_str(),
                info.namespace.as_str(),
                info.resource.as_str(),
                info.subresource.as_str(),
                info.name.as_str(),
            );
            assert_eq!(
                got,
                (resource, verb, group, version, ns, res, sub, name),
                "{method} {path} {query:?}"
            );
            assert_eq!(info.api_prefix.is_empty(), !resource, "{path}");
        }
    }

    #[test]
    fn paths_are_normalised_canonically() {
        let p = |path| parse("GET", path, None).unwrap().path;
        assert_eq!(
            p("//api//v1/namespaces/apps/pods/"),
            "/api/v1/namespaces/apps/pods"
        );
        assert_eq!(
            p("/api/v1/namespaces/ap%70s/pods"),
            "/api/v1/namespaces/apps/pods"
        );
        assert_eq!(
            p("/api/v1/namespaces/apps%2Fsecrets"),
            "/api/v1/namespaces/apps/secrets"
        );
        assert_eq!(
            p("/api/v1/namespaces/apps/pods/a%20b"),
            "/api/v1/namespaces/apps/pods/a%20b"
        );
        assert_eq!(
            p("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:aggregate-to-edit"),
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:aggregate-to-edit"
        );
        assert_eq!(p("/"), "/");
    }

    #[test]
    fn names_no_object_could_have_are_refused_with_the_rule() {
        let what = |path: &str, query: Option<&str>| match parse("GET", path, query) {
            Err(ParseError::InvalidSegment { what, .. }) => what,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(what("/api/v1/namespaces/Apps/pods", None), "namespace");
        assert_eq!(what("/api/v1/namespaces/-apps/pods", None), "namespace");
        assert_eq!(
            what(&format!("/api/v1/namespaces/{}/pods", "a".repeat(64)), None),
            "namespace"
        );
        assert_eq!(what("/api/v1/namespaces/apps/pods/a%00b", None), "name");
        assert_eq!(what("/api/v1/namespaces/apps/pods/a%0Ab", None), "name");
        assert_eq!(what("/api/v1/namespaces/apps/pods/a%25b", None), "name");
        assert_eq!(
            what(&format!("/api/v1/pods/{}", "a".repeat(1025)), None),
            "name"
        );
        assert_eq!(what("/api/v1/namespaces/apps/Pods", None), "resource");
        assert_eq!(
            what("/api/v1/namespaces/apps/pods/a/St%61tus", None),
            "subresource"
        );
        assert_eq!(what("/apis/Apps/v1/deployments", None), "API group");
        assert_eq!(what("/apis/apps/v1.0/deployments", None), "API version");
        assert_eq!(
            parse("GET", "/api/v1/pods", Some("labelSelector=app%3Dweb%0A")),
            Err(ParseError::ControlCharacter("labelSelector".into()))
        );
        // What Kubernetes allows goes through: RBAC names with ':' and spaces, long names,
        // an exec command with a newline in it.
        for (path, query) in [
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:a%20b",
                None,
            ),
            ("/api/v1/namespaces/a-1/configmaps/x.y_z", None),
            (
                &*format!("/api/v1/namespaces/apps/pods/{}", "a".repeat(253)),
                None,
            ),
            (
                "/api/v1/namespaces/apps/pods/web/exec",
                Some("command=sh&command=-c&command=echo%20a%0Aecho%20b"),
            ),
            ("/version", None),
            ("/openapi/v3/apis/apps/v1", Some("hash=ABC")),
        ] {
            assert!(parse("GET", path, query).is_ok(), "{path}");
        }
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        assert_eq!(
            parse(
                "GET",
                "/api/v1/namespaces/apps/../kube-system/secrets",
                None
            ),
            Err(ParseError::DotSegment)
        );
        assert_eq!(
            parse(
                "GET",
                "/api/v1/namespaces/apps/%2e%2e/kube-system/secrets",
                None
            ),
            Err(ParseError::DotSegment)
        );
        assert_eq!(
            parse("GET", "/api/v1/%ff", None),
            Err(ParseError::BadEncoding)
        );
        assert_eq!(
            parse("GET", "/api/v1/pods", Some("watch=1;fieldSelector=x")),
            Err(ParseError::SemicolonInQuery)
        );
        assert!(matches!(
            parse("OPTIONS", "/api/v1/pods", None),
            Err(ParseError::UnsupportedMethod(_))
        ));
        assert!(matches!(
            parse("GET", "/api/v1/watch", None),
            Err(ParseError::NoResource(_))
        ));
    }

    #[test]
    fn a_single_valued_parameter_is_read_once() {
        let conflict = |q: &str| parse("GET", "/api/v1/namespaces/apps/secrets", Some(q));
        for query in [
            "watch=false&watch=true",
            "watch=0&w%61tch=1",
            "fieldSelector=metadata.name%3Da&fieldSelector=metadata.name%3Db",
            "labelSelector=app%3Dweb&limit=5&labelSelector=",
            "resourceVersion=1&resourceVersion=0",
        ] {
            assert!(
                matches!(conflict(query), Err(ParseError::ConflictingParameter(_))),
                "{query}"
            );
        }
        // Repeated with one value, both readers agree.
        assert_eq!(conflict("watch=true&watch=true").unwrap().verb, "watch");
        // Lists the API server reads whole.
        let exec = parse(
            "POST",
            "/api/v1/namespaces/apps/pods/web/exec",
            Some("command=sh&command=-c&command=id&stdout=true"),
        )
        .unwrap();
        assert_eq!(exec.verb, "exec");
        assert!(
            parse(
                "POST",
                "/api/v1/namespaces/apps/pods/web/portforward",
                Some("ports=80&ports=443")
            )
            .is_ok()
        );
    }

    #[test]
    fn a_single_valued_header_is_read_once() {
        let mut headers = http::HeaderMap::new();
        headers.append("accept", "application/json".parse().unwrap());
        headers.append("accept", "application/json".parse().unwrap());
        headers.append("impersonate-group", "a".parse().unwrap());
        headers.append("impersonate-group", "b".parse().unwrap());
        assert_eq!(conflicting_header(&headers), None);
        headers.append(
            "accept",
            "application/vnd.kubernetes.protobuf".parse().unwrap(),
        );
        assert_eq!(conflicting_header(&headers), Some("accept"));
        let mut headers = http::HeaderMap::new();
        headers.append("content-type", "application/json".parse().unwrap());
        headers.append("content-type", "application/yaml".parse().unwrap());
        assert_eq!(conflicting_header(&headers), Some("content-type"));
    }

    #[test]
    fn field_selector_names_only_exact_valid_names() {
        assert_eq!(exact_name("metadata.name=web"), Some("web".into()));
        assert_eq!(exact_name("metadata.name==web"), Some("web".into()));
        assert_eq!(
            exact_name("status.phase=Running,metadata.name=web"),
            Some("web".into())
        );
        assert_eq!(exact_name("metadata.name!=web"), None);
        assert_eq!(exact_name("metadata.name=a/b"), None);
        assert_eq!(exact_name("metadata.name=.."), None);
    }
}
