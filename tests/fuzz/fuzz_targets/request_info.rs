//! The request-info parser (`gatehouse_proxy::request_info::parse`): method + path + query.
//!
//! Input: `METHOD\nPATH[\nQUERY]` (no third line: no query at all).
//!
//! Invariants:
//! - it never panics;
//! - a parse is a fixed point: the normalised path it returns (what policy judges and what is
//!   forwarded) parses to exactly the same request info, so there is one reading of a request;
//! - the normalised path is canonical: starts with `/`, no empty, `.` or `..` segment, nothing
//!   the segment encoding must escape left raw;
//! - namespace, name, resource and subresource are path segments a policy can match: never
//!   containing `/`, never `.` or `..`, and a resource request always names its resource;
//! - a resource request's verb is one of the Kubernetes verbs (or a streaming subresource).
#![no_main]

use gatehouse_proxy::policy::matcher::RESOURCE_VERBS;
use gatehouse_proxy::request_info::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (Some(method), Some(path)) = (lines.next(), lines.next()) else {
        return;
    };
    let query = lines.next();
    let Ok(info) = parse(method, path, query) else {
        return;
    };

    let again = parse(method, &info.path, query)
        .unwrap_or_else(|e| panic!("{path:?} normalised to {:?}, which fails: {e}", info.path));
    assert_eq!(
        again, info,
        "re-parsing the normalised path changed the reading"
    );

    assert!(info.path.starts_with('/'), "{:?}", info.path);
    if info.path != "/" {
        for segment in info.path[1..].split('/') {
            assert!(
                !segment.is_empty() && segment != "." && segment != "..",
                "{:?}",
                info.path
            );
        }
    }
    assert!(
        !info.path.chars().any(|c| c.is_control()
            || c.is_whitespace()
            || !c.is_ascii()
            || matches!(
                c,
                '?' | '#' | '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}'
            )),
        "the normalised path {:?} is not canonical",
        info.path
    );

    if info.is_resource_request {
        assert!(!info.resource.is_empty(), "{info:?}");
        assert!(
            RESOURCE_VERBS.contains(&info.verb.as_str()),
            "verb {:?} of {info:?}",
            info.verb
        );
        for (what, value) in [
            ("namespace", &info.namespace),
            ("name", &info.name),
            ("resource", &info.resource),
            ("subresource", &info.subresource),
        ] {
            assert!(
                !value.contains('/') && value != "." && value != "..",
                "{what} {value:?} of {info:?}"
            );
        }
    } else {
        assert!(
            info.namespace.is_empty() && info.name.is_empty() && info.resource.is_empty(),
            "{info:?}"
        );
    }
});
