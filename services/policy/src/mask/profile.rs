//! Compiling mask profiles: [`ProfileSpec`]s from the policy file become [`Profile`]s the
//! engine can run — paths parsed into segments, every regex compiled once.
//!
//! - [`MaskSet`]: every profile of a policy, by name.
//! - [`Profile`]: one compiled profile.
//! - `parse_path`: the path grammar (also described in the [`super`] module docs).

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::{Regex, RegexSet};

use super::{MASKED_TEXT, ProfileSpec};

/// Every mask profile a policy declares, compiled.
#[derive(Debug, Clone, Default)]
pub struct MaskSet {
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl MaskSet {
    /// Compiles every profile. An error names the profile and the bad path or regex.
    pub fn compile(specs: &BTreeMap<String, ProfileSpec>) -> Result<MaskSet, String> {
        let mut profiles = BTreeMap::new();
        for (name, spec) in specs {
            profiles.insert(name.clone(), Arc::new(Profile::compile(name, spec)?));
        }
        Ok(MaskSet { profiles })
    }

    /// The profile a rule names, if the policy declares it.
    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.profiles.get(name).cloned()
    }

    /// Names of the declared profiles, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// One compiled mask profile.
#[derive(Debug)]
pub struct Profile {
    name: String,
    /// Every path of the profile (plain paths, `keys` maps, `named_values` holders), each with
    /// what to do where it ends.
    pub(crate) rules: Vec<PathRule>,
    pub(crate) keys: Vec<Regex>,
    pub(crate) named: Vec<NamedRule>,
    pub(crate) patterns: Option<Patterns>,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A member with exactly this key.
    Key(Box<str>),
    /// `*`: any member of an object, or any element of an array.
    Any,
    /// `[*]`: any element of an array.
    AnyIndex,
    /// `[3]`: one element of an array.
    Index(u32),
}

impl Seg {
    pub(crate) fn matches_key(&self, key: &[u8]) -> bool {
        match self {
            Seg::Key(k) => k.as_bytes() == key,
            Seg::Any => true,
            Seg::AnyIndex | Seg::Index(_) => false,
        }
    }

    pub(crate) fn matches_index(&self, index: u32) -> bool {
        match self {
            Seg::Any | Seg::AnyIndex => true,
            Seg::Index(i) => *i == index,
            Seg::Key(_) => false,
        }
    }
}

/// What happens at the value a path reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Mask the value (every scalar inside it if it is an object or array).
    Mask,
    /// The value is a map: mask the members whose key matches `keys[i]`.
    Keys(u16),
    /// The value holds name/value pairs (`named[i]`): an object, or an array of them.
    Named(u16),
}

#[derive(Debug)]
pub(crate) struct PathRule {
    pub(crate) segs: Vec<Seg>,
    pub(crate) action: Action,
}

#[derive(Debug)]
pub(crate) struct NamedRule {
    pub(crate) matching: Regex,
    pub(crate) name_field: Box<str>,
    pub(crate) value_field: Box<str>,
}

/// The profile's `patterns`, searched together.
#[derive(Debug)]
pub(crate) struct Patterns {
    /// All patterns at once: one search tells whether a string needs any work.
    set: RegexSet,
    each: Vec<Regex>,
}

impl Patterns {
    /// The text with every match of every pattern replaced by `gatehouse:masked`, or `None`
    /// when nothing matches. Overlapping matches of different patterns are merged and masked
    /// as one, so no part of any match survives. Empty matches mask nothing.
    pub(crate) fn apply(&self, text: &str) -> Option<String> {
        if !self.set.is_match(text) {
            return None;
        }
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for i in self.set.matches(text).iter() {
            ranges.extend(
                self.each[i]
                    .find_iter(text)
                    .filter(|m| !m.is_empty())
                    .map(|m| (m.start(), m.end())),
            );
        }
        if ranges.is_empty() {
            return None;
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut iter = ranges.into_iter().peekable();
        while let Some((start, mut end)) = iter.next() {
            while let Some(&(next_start, next_end)) = iter.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                iter.next();
            }
            // The regex crate reports matches on char boundaries; should one ever not be, the
            // whole text is masked rather than risk leaving part of a match.
            let Some(before) = text.get(copied..start) else {
                return Some(MASKED_TEXT.to_string());
            };
            out.push_str(before);
            out.push_str(MASKED_TEXT);
            copied = end;
        }
        out.push_str(text.get(copied..).unwrap_or(MASKED_TEXT));
        Some(out)
    }
}

/// Profiles are bounded so rule indices fit the engine's compact state.
const MAX_RULES: usize = u16::MAX as usize;

impl Profile {
    /// Compiles one profile; `name` is used in error messages.
    pub fn compile(name: &str, spec: &ProfileSpec) -> Result<Profile, String> {
        let fail = |what: String| format!("mask profile {name:?}: {what}");
        let mut rules = Vec::new();
        for path in &spec.paths {
            let segs = parse_path(path).map_err(|e| fail(format!("path {path:?}: {e}")))?;
            rules.push(PathRule {
                segs,
                action: Action::Mask,
            });
        }
        let mut keys = Vec::new();
        for (i, key) in spec.keys.iter().enumerate() {
            let segs = parse_path(&key.path)
                .map_err(|e| fail(format!("keys[{i}]: path {:?}: {e}", key.path)))?;
            let re = Regex::new(&key.matching)
                .map_err(|e| fail(format!("keys[{i}]: regex {:?}: {e}", key.matching)))?;
            rules.push(PathRule {
                segs,
                action: Action::Keys(index(keys.len(), &fail)?),
            });
            keys.push(re);
        }
        let mut named = Vec::new();
        for (i, nv) in spec.named_values.iter().enumerate() {
            let segs = parse_path(&nv.path)
                .map_err(|e| fail(format!("named_values[{i}]: path {:?}: {e}", nv.path)))?;
            let matching = Regex::new(&nv.matching)
                .map_err(|e| fail(format!("named_values[{i}]: regex {:?}: {e}", nv.matching)))?;
            if nv.name_field.is_empty() || nv.value_field.is_empty() {
                return Err(fail(format!(
                    "named_values[{i}]: name_field and value_field must not be empty"
                )));
            }
            rules.push(PathRule {
                segs,
                action: Action::Named(index(named.len(), &fail)?),
            });
            named.push(NamedRule {
                matching,
                name_field: nv.name_field.as_str().into(),
                value_field: nv.value_field.as_str().into(),
            });
        }
        if rules.len() > MAX_RULES {
            return Err(fail(format!("more than {MAX_RULES} paths")));
        }
        let patterns = if spec.patterns.is_empty() {
            None
        } else {
            let mut each = Vec::new();
            for p in &spec.patterns {
                each.push(Regex::new(p).map_err(|e| fail(format!("pattern {p:?}: {e}")))?);
            }
            let set = RegexSet::new(&spec.patterns).map_err(|e| fail(format!("patterns: {e}")))?;
            Some(Patterns { set, each })
        };
        Ok(Profile {
            name: name.to_string(),
            rules,
            keys,
            named,
            patterns,
        })
    }

    /// The name the policy gave this profile.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when the profile masks nothing beyond what is always masked.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.patterns.is_none()
    }

    /// Whether free text (logs, session output) has anything to mask.
    pub fn has_patterns(&self) -> bool {
        self.patterns.is_some()
    }
}

fn index(n: usize, fail: &impl Fn(String) -> String) -> Result<u16, String> {
    u16::try_from(n).map_err(|_| fail(format!("more than {MAX_RULES} rules")))
}

/// Parses a field path. Grammar:
///
/// - Keys separated by `.`: `spec.template.spec`. A leading `.` is allowed (`.spec.x`).
/// - `*` as a key: any member of an object, or any element of an array.
/// - `[*]`: any element of an array; `[3]`: element 3.
/// - `["key"]` (or `['key']`): a key holding `.`, `[` or `]`, such as an annotation:
///   `metadata.annotations["example.com/token"]`.
pub(crate) fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    let s = path.strip_prefix('.').unwrap_or(path);
    if s.is_empty() {
        return Err("the path is empty".into());
    }
    let bytes = s.as_bytes();
    let mut segs = Vec::new();
    let mut i = 0;
    // True where a key must follow: at the start and after a '.'.
    let mut need_key = true;
    while i < bytes.len() {
        match bytes[i] {
            b'[' => {
                if need_key && !segs.is_empty() {
                    return Err(format!("empty key before '[' at byte {i}"));
                }
                let close = s[i..]
                    .find(']')
                    .map(|j| i + j)
                    .ok_or_else(|| format!("'[' at byte {i} is never closed"))?;
                let inner = &s[i + 1..close];
                let seg = if inner == "*" {
                    Seg::AnyIndex
                } else if let Some(q) = inner
                    .strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .or_else(|| inner.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                {
                    if q.is_empty() {
                        return Err(format!("empty quoted key at byte {i}"));
                    }
                    Seg::Key(q.into())
                } else if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                    Seg::Index(
                        inner
                            .parse()
                            .map_err(|_| format!("index {inner} at byte {i} is too large"))?,
                    )
                } else {
                    return Err(format!(
                        "'[{inner}]' at byte {i}: expected [*], a number or a quoted key"
                    ));
                };
                segs.push(seg);
                i = close + 1;
                need_key = false;
            }
            b'.' => {
                if need_key {
                    return Err(format!("empty key at byte {i}"));
                }
                need_key = true;
                i += 1;
            }
            _ => {
                if !need_key {
                    return Err(format!("expected '.' or '[' at byte {i}"));
                }
                let end = s[i..].find(['.', '[']).map(|j| i + j).unwrap_or(s.len());
                let key = &s[i..end];
                if key.contains([']', '"', '\'']) {
                    return Err(format!(
                        "key {key:?} holds a quote or ']': write it as [\"...\"]"
                    ));
                }
                segs.push(if key == "*" {
                    Seg::Any
                } else {
                    Seg::Key(key.into())
                });
                i = end;
                need_key = false;
            }
        }
    }
    if need_key {
        return Err("the path ends with '.'".into());
    }
    if segs.len() > MAX_RULES {
        return Err("the path is too long".into());
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::super::{KeySpec, NamedValueSpec};
    use super::*;

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    #[test]
    fn paths_parse_into_segments() {
        assert_eq!(parse_path("data.*").unwrap(), vec![key("data"), Seg::Any]);
        assert_eq!(
            parse_path("spec.template.spec.containers[*].env[2].value").unwrap(),
            vec![
                key("spec"),
                key("template"),
                key("spec"),
                key("containers"),
                Seg::AnyIndex,
                key("env"),
                Seg::Index(2),
                key("value"),
            ]
        );
        assert_eq!(
            parse_path(".metadata.annotations[\"example.com/token\"]").unwrap(),
            vec![
                key("metadata"),
                key("annotations"),
                key("example.com/token")
            ]
        );
        assert_eq!(
            parse_path("a['x.y'].b").unwrap(),
            vec![key("a"), key("x.y"), key("b")]
        );
        assert_eq!(parse_path("[*]").unwrap(), vec![Seg::AnyIndex]);
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        for (path, needle) in [
            ("", "empty"),
            (".", "empty"),
            ("a..b", "empty key"),
            ("a.", "ends with"),
            ("a[", "never closed"),
            ("a[x]", "expected [*]"),
            ("a[*]b", "expected '.'"),
            ("a.[*]", "empty key"),
            ("a[\"\"]", "empty quoted key"),
            ("a]b", "quote or ']'"),
            ("a[99999999999]", "too large"),
        ] {
            let err = parse_path(path).unwrap_err();
            assert!(err.contains(needle), "{path:?}: {err}");
        }
    }

    #[test]
    fn compile_errors_name_the_profile_and_the_culprit() {
        let mut specs = BTreeMap::new();
        specs.insert(
            "app".to_string(),
            ProfileSpec {
                paths: vec!["spec..x".into()],
                ..Default::default()
            },
        );
        let err = MaskSet::compile(&specs).unwrap_err();
        assert!(err.contains("\"app\"") && err.contains("spec..x"), "{err}");

        specs.insert(
            "app".to_string(),
            ProfileSpec {
                patterns: vec!["(unclosed".into()],
                ..Default::default()
            },
        );
        let err = MaskSet::compile(&specs).unwrap_err();
        assert!(
            err.contains("\"app\"") && err.contains("(unclosed"),
            "{err}"
        );

        specs.insert(
            "app".to_string(),
            ProfileSpec {
                named_values: vec![NamedValueSpec {
                    path: "env[*]".into(),
                    matching: "[".into(),
                    name_field: "name".into(),
                    value_field: "value".into(),
                }],
                ..Default::default()
            },
        );
        let err = MaskSet::compile(&specs).unwrap_err();
        assert!(
            err.contains("named_values[0]") && err.contains("regex"),
            "{err}"
        );

        specs.insert(
            "app".to_string(),
            ProfileSpec {
                keys: vec![KeySpec {
                    path: "data".into(),
                    matching: "*".into(),
                }],
                ..Default::default()
            },
        );
        let err = MaskSet::compile(&specs).unwrap_err();
        assert!(err.contains("keys[0]"), "{err}");
    }

    #[test]
    fn a_set_hands_out_profiles_by_name() {
        let mut specs = BTreeMap::new();
        specs.insert(
            "tokens".to_string(),
            ProfileSpec {
                patterns: vec!["tok-[0-9]+".into()],
                ..Default::default()
            },
        );
        specs.insert("empty".to_string(), ProfileSpec::default());
        let set = MaskSet::compile(&specs).unwrap();
        assert_eq!(set.names().collect::<Vec<_>>(), vec!["empty", "tokens"]);
        assert!(set.get("empty").unwrap().is_empty());
        let tokens = set.get("tokens").unwrap();
        assert_eq!(tokens.name(), "tokens");
        assert!(!tokens.is_empty());
        assert!(set.get("missing").is_none());
    }

    #[test]
    fn overlapping_pattern_matches_are_masked_as_one() {
        let spec = ProfileSpec {
            patterns: vec!["abc".into(), "bcde".into(), "x*".into()],
            ..Default::default()
        };
        let p = Profile::compile("p", &spec).unwrap();
        let pt = p.patterns.as_ref().unwrap();
        assert_eq!(pt.apply("1abcdef2").as_deref(), Some("1gatehouse:maskedf2"));
        assert_eq!(
            pt.apply("abc abc").as_deref(),
            Some("gatehouse:masked gatehouse:masked")
        );
        // `x*` matches empty everywhere: empty matches mask nothing.
        assert_eq!(pt.apply("nothing here"), None);
        assert_eq!(pt.apply("é xx é").as_deref(), Some("é gatehouse:masked é"));
    }
}
