//! What every caller may do when no rule says otherwise: the requests any Kubernetes client
//! makes before (or instead of) doing anything, so that it can show Gatehouse's real answer.
//!
//! - **discovery** (`defaults.allow_discovery`, on by default): `GET` of `/api`, `/apis`, the
//!   group and version documents under them, `/version` and `/openapi/…`, for every
//!   authenticated caller, registered or not. Without it kubectl cannot map `pods` to a path,
//!   and an unregistered identity would see client-go's "Forbidden: unknown" instead of
//!   Gatehouse's refusal of the request it actually made.
//! - **self-review** (`defaults.allow_self_review`, on by default): `create` of
//!   SelfSubjectAccessReview, SelfSubjectRulesReview (`kubectl auth can-i`) and
//!   SelfSubjectReview (`kubectl auth whoami`), for registered identities. They ask the
//!   cluster about the caller only (forwarded impersonating it), and change nothing.
//!
//! The policy's rules come first: a rule that matches one of these decides as always (a deny
//! rule can take discovery away from someone). They are recorded like any request, under the
//! rule ids `default:discovery` and `default:self-review`.

use gatehouse_events::RequestInfo;

/// The rule id recorded for a request allowed as discovery.
pub const DISCOVERY_RULE: &str = "default:discovery";
/// The rule id recorded for a request allowed as a self-review.
pub const SELF_REVIEW_RULE: &str = "default:self-review";

/// A request every caller may make unless a rule says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    Discovery,
    SelfReview,
}

impl Baseline {
    /// Which baseline `request` is, if any.
    pub fn of(request: &RequestInfo) -> Option<Self> {
        if is_discovery(request) {
            return Some(Baseline::Discovery);
        }
        if is_self_review(request) {
            return Some(Baseline::SelfReview);
        }
        None
    }

    pub fn rule(self) -> &'static str {
        match self {
            Baseline::Discovery => DISCOVERY_RULE,
            Baseline::SelfReview => SELF_REVIEW_RULE,
        }
    }

    /// Why it is allowed, for explain and logs.
    pub fn description(self) -> &'static str {
        match self {
            Baseline::Discovery => {
                "API discovery and version, which every authenticated client reads first \
                 (defaults.allow_discovery)"
            }
            Baseline::SelfReview => {
                "a question about the caller itself (auth can-i / whoami), which changes \
                 nothing (defaults.allow_self_review)"
            }
        }
    }
}

/// `GET` of a discovery document: `/api`, `/apis`, `/api/v1`, `/apis/GROUP[/VERSION]`,
/// `/version`, `/openapi/v2`, `/openapi/v3[/…]`. Resource requests never are.
fn is_discovery(r: &RequestInfo) -> bool {
    if r.is_resource_request || r.verb != "get" {
        return false;
    }
    let path = r.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        ["api"] | ["apis"] | ["version"] | ["openapi", "v2"] => true,
        ["api", version] => !version.is_empty(),
        ["apis", group] | ["apis", group, _] => !group.is_empty(),
        ["openapi", "v3", ..] => true,
        _ => false,
    }
}

/// `create` of one of the self-review kinds, cluster-scoped, no subresource.
fn is_self_review(r: &RequestInfo) -> bool {
    r.is_resource_request
        && r.verb == "create"
        && r.subresource.is_empty()
        && r.namespace.is_empty()
        && matches!(
            (r.api_group.as_str(), r.resource.as_str()),
            (
                "authorization.k8s.io",
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews"
            ) | ("authentication.k8s.io", "selfsubjectreviews")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, path: &str) -> RequestInfo {
        crate::request_info::parse(method, path, None).unwrap()
    }

    #[test]
    fn discovery_documents_are_discovery() {
        for path in [
            "/api",
            "/api/",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/apis/stable.example.com/v1",
            "/version",
            "/openapi/v2",
            "/openapi/v3",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert_eq!(
                Baseline::of(&info("GET", path)),
                Some(Baseline::Discovery),
                "{path}"
            );
        }
    }

    #[test]
    fn anything_else_is_not() {
        for (method, path) in [
            ("GET", "/api/v1/pods"),
            ("GET", "/api/v1/namespaces/apps/pods"),
            ("GET", "/apis/apps/v1/deployments"),
            ("GET", "/apis/apps/v1/namespaces/prod/deployments/web"),
            ("POST", "/api"),
            ("GET", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/logs/kube-apiserver.log"),
            ("GET", "/openapi/v1"),
            ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews"),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/namespaces/apps/localsubjectaccessreviews",
            ),
            (
                "GET",
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            ),
        ] {
            assert_eq!(Baseline::of(&info(method, path)), None, "{method} {path}");
        }
    }

    #[test]
    fn self_reviews_are_self_reviews() {
        for path in [
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "/apis/authentication.k8s.io/v1beta1/selfsubjectreviews",
        ] {
            assert_eq!(
                Baseline::of(&info("POST", path)),
                Some(Baseline::SelfReview),
                "{path}"
            );
        }
    }
}
