//! The cheap part of matching, compiled at load: globs, verb sets, resource patterns.
//!
//! A decision walks up to every rule, so nothing here allocates: globs are pre-sorted into
//! exact / prefix / suffix / general forms and verbs are bits.

/// Verbs the proxy produces for resource requests.
pub const RESOURCE_VERBS: [&str; 12] = [
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

/// Verbs of non-resource requests: the lower-case HTTP method.
pub const HTTP_VERBS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];

/// Verbs that change state or open a channel into a workload.
pub const WRITE_VERBS: [&str; 9] = [
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

/// Every verb name, in bit order.
pub const ALL_VERBS: [&str; 16] = [
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
    "head",
    "post",
    "put",
    "options",
];

/// The bit of a verb; 0 for a verb no rule can name (only `*` matches it).
pub fn verb_bit(verb: &str) -> u32 {
    ALL_VERBS
        .iter()
        .position(|v| *v == verb)
        .map_or(0, |i| 1 << i)
}

/// A set of verbs; `*` is every verb, known or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbs {
    Any,
    Bits(u32),
}

impl Verbs {
    pub fn matches(self, verb: &str) -> bool {
        match self {
            Verbs::Any => true,
            Verbs::Bits(bits) => bits & verb_bit(verb) != 0,
        }
    }

    pub fn contains_all(self, other: Verbs) -> bool {
        match (self, other) {
            (Verbs::Any, _) => true,
            (Verbs::Bits(_), Verbs::Any) => false,
            (Verbs::Bits(a), Verbs::Bits(b)) => a & b == b,
        }
    }

    pub fn includes(self, verb: &str) -> bool {
        self.matches(verb)
    }

    /// Whether some verb is in both.
    pub fn overlaps(self, other: Verbs) -> bool {
        match (self, other) {
            (Verbs::Any, Verbs::Bits(b)) | (Verbs::Bits(b), Verbs::Any) => b != 0,
            (Verbs::Any, Verbs::Any) => true,
            (Verbs::Bits(a), Verbs::Bits(b)) => a & b != 0,
        }
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Glob {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    General(Box<str>),
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let stars = pattern.bytes().filter(|&b| b == b'*').count();
        if pattern.bytes().all(|b| b == b'*') && stars > 0 {
            Glob::Any
        } else if stars == 0 {
            Glob::Exact(pattern.into())
        } else if stars == 1 && pattern.ends_with('*') {
            Glob::Prefix(pattern[..pattern.len() - 1].into())
        } else if stars == 1 && pattern.starts_with('*') {
            Glob::Suffix(pattern[1..].into())
        } else {
            Glob::General(pattern.into())
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(p) => **p == *text,
            Glob::Prefix(p) => text.starts_with(&**p),
            Glob::Suffix(p) => text.ends_with(&**p),
            Glob::General(p) => glob(p, text),
        }
    }

    /// Whether every text this glob matches is matched by `self` (conservative: `false` when
    /// unsure).
    pub fn covers(&self, other: &Glob) -> bool {
        match (self, other) {
            (Glob::Any, _) => true,
            (_, Glob::Exact(text)) => self.matches(text),
            (Glob::Prefix(a), Glob::Prefix(b)) => b.starts_with(&**a),
            (Glob::Suffix(a), Glob::Suffix(b)) => b.ends_with(&**a),
            (a, b) => a == b,
        }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, Glob::Any)
    }

    /// Whether some text matches both (conservative: `false` when unsure).
    pub fn overlaps(&self, other: &Glob) -> bool {
        match (self, other) {
            (Glob::Any, _) | (_, Glob::Any) => true,
            (Glob::Exact(text), g) | (g, Glob::Exact(text)) => g.matches(text),
            (Glob::Prefix(a), Glob::Prefix(b)) => a.starts_with(&**b) || b.starts_with(&**a),
            (Glob::Suffix(a), Glob::Suffix(b)) => a.ends_with(&**b) || b.ends_with(&**a),
            // PREFIX + SUFFIX matches both.
            (Glob::Prefix(_), Glob::Suffix(_)) | (Glob::Suffix(_), Glob::Prefix(_)) => true,
            (a, b) => a == b,
        }
    }
}

/// `None` (field omitted) matches anything; otherwise some glob must match.
pub fn any_glob(globs: Option<&[Glob]>, text: &str) -> bool {
    globs.is_none_or(|gs| gs.iter().any(|g| g.matches(text)))
}

/// Whether `outer` matches everything `inner` does (`None` is "anything").
pub fn globs_cover(outer: Option<&[Glob]>, inner: Option<&[Glob]>) -> bool {
    match (outer, inner) {
        (None, _) => true,
        (Some(o), None) => o.iter().any(Glob::is_any),
        (Some(o), Some(i)) => i.iter().all(|ig| o.iter().any(|og| og.covers(ig))),
    }
}

/// Whether some text matches both (`None` is "anything"; conservative when unsure).
pub fn globs_overlap(a: Option<&[Glob]>, b: Option<&[Glob]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (None, Some(g)) | (Some(g), None) => !g.is_empty(),
        (Some(a), Some(b)) => a.iter().any(|x| b.iter().any(|y| x.overlaps(y))),
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

/// RBAC-style resource patterns: `pods` (no subresource), `pods/log`, `pods/*`, `*/scale`, `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourcePattern {
    /// `*`: every resource and subresource.
    Any,
    /// `pods`: the resource itself, no subresource.
    Resource(Glob),
    /// `pods/log`, `pods/*`, `*/scale`.
    Sub(Glob, Glob),
}

impl ResourcePattern {
    pub fn new(spec: &str) -> Self {
        if spec == "*" {
            return ResourcePattern::Any;
        }
        match spec.split_once('/') {
            None => ResourcePattern::Resource(Glob::new(spec)),
            Some((r, s)) => ResourcePattern::Sub(Glob::new(r), Glob::new(s)),
        }
    }

    pub fn matches(&self, resource: &str, subresource: &str) -> bool {
        match self {
            ResourcePattern::Any => true,
            ResourcePattern::Resource(r) => subresource.is_empty() && r.matches(resource),
            ResourcePattern::Sub(r, s) => {
                !subresource.is_empty() && r.matches(resource) && s.matches(subresource)
            }
        }
    }

    /// Whether some resource (and subresource) matches both.
    pub fn overlaps(&self, other: &ResourcePattern) -> bool {
        match (self, other) {
            (ResourcePattern::Any, _) | (_, ResourcePattern::Any) => true,
            (ResourcePattern::Resource(a), ResourcePattern::Resource(b)) => a.overlaps(b),
            (ResourcePattern::Sub(ar, as_), ResourcePattern::Sub(br, bs)) => {
                ar.overlaps(br) && as_.overlaps(bs)
            }
            // A request has a subresource or it has none.
            _ => false,
        }
    }

    pub fn covers(&self, other: &ResourcePattern) -> bool {
        match (self, other) {
            (ResourcePattern::Any, _) => true,
            (ResourcePattern::Resource(a), ResourcePattern::Resource(b)) => a.covers(b),
            (ResourcePattern::Sub(ar, as_), ResourcePattern::Sub(br, bs)) => {
                ar.covers(br) && as_.covers(bs)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource_matches(spec: &str, resource: &str, subresource: &str) -> bool {
        ResourcePattern::new(spec).matches(resource, subresource)
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
        assert!(resource_matches("*", "pods", ""));
    }

    #[test]
    fn globs_in_every_form_agree_with_the_reference_matcher() {
        let patterns = [
            "*", "**", "web-*", "*-prod", "a*b*c", "system:*", "", "x", "*a*",
        ];
        let texts = [
            "",
            "x",
            "web-1",
            "db-1",
            "api-prod",
            "aXXbYYc",
            "aXXbYY",
            "system:serviceaccount:a",
            "a",
            "bab",
        ];
        for p in patterns {
            for t in texts {
                assert_eq!(Glob::new(p).matches(t), glob(p, t), "{p:?} on {t:?}");
            }
        }
        assert!(glob("web-*", "web-1"));
        assert!(!glob("web-*", "db-1"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(!glob("", "x"));
        assert!(glob("", ""));
    }

    #[test]
    fn cover_relations_are_conservative() {
        assert!(Glob::new("*").covers(&Glob::new("web-*")));
        assert!(Glob::new("web-*").covers(&Glob::new("web-a*")));
        assert!(Glob::new("web-*").covers(&Glob::new("web-1")));
        assert!(!Glob::new("web-1").covers(&Glob::new("web-*")));
        assert!(!Glob::new("web-*").covers(&Glob::new("*")));
        assert!(ResourcePattern::new("pods/*").covers(&ResourcePattern::new("pods/exec")));
        assert!(!ResourcePattern::new("pods").covers(&ResourcePattern::new("pods/exec")));
        assert!(globs_cover(None, Some(&[Glob::new("x")])));
        assert!(!globs_cover(Some(&[Glob::new("x")]), None));
        assert!(Verbs::Any.contains_all(Verbs::Bits(3)));
        assert!(!Verbs::Bits(1).contains_all(Verbs::Bits(3)));
    }

    #[test]
    fn verbs_are_bits() {
        let v = Verbs::Bits(verb_bit("get") | verb_bit("list"));
        assert!(v.matches("get") && v.matches("list"));
        assert!(!v.matches("watch"));
        assert!(!v.matches("brew"));
        assert!(Verbs::Any.matches("brew"));
    }
}
