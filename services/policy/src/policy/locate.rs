//! Where a value sits in the policy text: a path such as `rules[3].verbs[1]` → line and column.
//!
//! `yaml_serde` has no spanned values, but every error it returns carries the position of the
//! node being read. So the locator walks the document with a seed that skips everything off the
//! path and fails deliberately on the target node; the failure's position is the answer. It
//! costs one parse per lookup, which is only paid on the error and lint paths.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A path into the document: `rules[3].verbs[1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocPath(pub Vec<Step>);

impl DocPath {
    pub fn rule(index: usize) -> Self {
        DocPath(vec![Step::Key("rules".into()), Step::Index(index)])
    }

    pub fn key(mut self, key: &str) -> Self {
        self.0.push(Step::Key(key.to_owned()));
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Step::Index(index));
        self
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => write!(f, "{k}")?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column in the policy text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

const SENTINEL: &str = "\u{1}gatehouse-locate\u{1}";

/// The position of the node at `path`; if the path goes further than the document, the
/// position of the deepest node that exists (so a missing key points at its mapping).
pub fn locate(text: &str, path: &DocPath) -> Option<Location> {
    let de = yaml_serde::Deserializer::from_str(text);
    match (Seek { path: &path.0 }).deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(SENTINEL) => e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        Err(_) => None,
    }
}

struct Seek<'p> {
    path: &'p [Step],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(SENTINEL));
        };
        while let Some(key) = map.next_key::<yaml_serde::Value>()? {
            if key.as_str() == Some(want.as_str()) {
                return map.next_value_seed(Seek { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        // The key is not there: point at the mapping that should hold it.
        Err(de::Error::custom(SENTINEL))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(SENTINEL));
        };
        let mut i = 0;
        while i < *want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(SENTINEL));
            }
            i += 1;
        }
        match seq.next_element_seed(Seek { path: rest })? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom(SENTINEL)),
        }
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(SENTINEL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
rules:
  - id: a
    verbs: [get, list]
  - id: b
    verbs:
      - get
      - gett
    mask: nope
";

    fn at(path: DocPath) -> (usize, usize) {
        let l = locate(TEXT, &path).unwrap();
        (l.line, l.column)
    }

    #[test]
    fn finds_rules_fields_and_list_items() {
        assert_eq!(at(DocPath::rule(0)), (2, 5));
        assert_eq!(at(DocPath::rule(1)), (4, 5));
        assert_eq!(at(DocPath::rule(0).key("verbs").index(1)), (3, 18));
        assert_eq!(at(DocPath::rule(1).key("verbs").index(1)), (7, 9));
        assert_eq!(at(DocPath::rule(1).key("mask")), (8, 11));
        // Beyond the document: the deepest node that exists.
        assert_eq!(at(DocPath::rule(1).key("approval")), (4, 5));
        assert_eq!(
            DocPath::rule(1).key("verbs").index(1).to_string(),
            "rules[1].verbs[1]"
        );
    }
}
