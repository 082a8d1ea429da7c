//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `exists`, `!key`, `>`, `<`) and field
//! selectors (`=`, `==`, `!=`, with backslash escapes), parsed like apimachinery does.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelOp {
    Exists,
    DoesNotExist,
    Equals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    LessThan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: LabelOp,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '!' if next == Some('=') => {
                tokens.push(Token::NotEq);
                i += 2;
            }
            '!' => {
                tokens.push(Token::Not);
                i += 1;
            }
            '=' if next == Some('=') => {
                tokens.push(Token::DoubleEq);
                i += 2;
            }
            '=' => {
                tokens.push(Token::Eq);
                i += 1;
            }
            '>' => {
                tokens.push(Token::Gt);
                i += 1;
            }
            '<' => {
                tokens.push(Token::Lt);
                i += 1;
            }
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '!' | '=' | '>' | '<' | '(' | ')' | ',')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word.is_empty() {
                    return Err(format!("unexpected character {c:?}"));
                }
                tokens.push(Token::Ident(word));
            }
        }
    }
    Ok(tokens)
}

fn valid_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "invalid label key {key:?}: prefix part must be a lowercase RFC 1123 subdomain"
            ));
        }
    }
    if !valid_name_part(name) {
        return Err(format!(
            "invalid label key {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || valid_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, \
             '-', '_' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn ident(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(s)) => Ok(s),
            other => Err(format!("found {other:?}, expected: {what}")),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.pos += 1;
            let key = self.ident("identifier")?;
            validate_key(&key)?;
            return Ok(Requirement {
                key,
                op: LabelOp::DoesNotExist,
                values: vec![],
            });
        }
        let key = self.ident("identifier")?;
        validate_key(&key)?;
        let op = match self.peek() {
            None | Some(Token::Comma) => {
                return Ok(Requirement {
                    key,
                    op: LabelOp::Exists,
                    values: vec![],
                });
            }
            Some(Token::Eq) | Some(Token::DoubleEq) => LabelOp::Equals,
            Some(Token::NotEq) => LabelOp::NotEquals,
            Some(Token::Gt) => LabelOp::GreaterThan,
            Some(Token::Lt) => LabelOp::LessThan,
            Some(Token::Ident(w)) if w == "in" => LabelOp::In,
            Some(Token::Ident(w)) if w == "notin" => LabelOp::NotIn,
            Some(t) => {
                return Err(format!(
                    "found {t:?}, expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        self.pos += 1;
        let values = match op {
            LabelOp::In | LabelOp::NotIn => self.set()?,
            _ => {
                // An empty value is allowed: "a=" selects label a with value "".
                let v = match self.peek() {
                    Some(Token::Ident(_)) => self.ident("value")?,
                    None | Some(Token::Comma) => String::new(),
                    Some(t) => return Err(format!("found {t:?}, expected: identifier")),
                };
                if matches!(op, LabelOp::GreaterThan | LabelOp::LessThan) {
                    v.parse::<i64>().map_err(|_| {
                        format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}")
                    })?;
                } else {
                    validate_value(&v)?;
                }
                vec![v]
            }
        };
        Ok(Requirement { key, op, values })
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        if self.next() != Some(Token::Open) {
            return Err("expected: '('".into());
        }
        let mut values = Vec::new();
        let mut expect_value = true;
        loop {
            match self.next() {
                Some(Token::Ident(v)) if expect_value => {
                    validate_value(&v)?;
                    values.push(v);
                    expect_value = false;
                }
                Some(Token::Comma) => {
                    if expect_value {
                        values.push(String::new());
                    }
                    expect_value = true;
                }
                Some(Token::Close) => {
                    if expect_value && !values.is_empty() {
                        values.push(String::new());
                    }
                    break;
                }
                other => return Err(format!("found {other:?}, expected: ',', ')' or identifier")),
            }
        }
        if values.is_empty() {
            return Err("for 'in', 'notin' operators, values set can't be empty".into());
        }
        Ok(values)
    }
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let tokens = tokenize(input).map_err(|e| format!("unable to parse requirement: {e}"))?;
        let mut p = Parser { tokens, pos: 0 };
        let mut requirements = Vec::new();
        while p.peek().is_some() {
            requirements.push(
                p.requirement()
                    .map_err(|e| format!("unable to parse requirement: {e}"))?,
            );
            match p.next() {
                None => break,
                Some(Token::Comma) if p.peek().is_some() => {}
                Some(t) => {
                    return Err(format!(
                        "unable to parse requirement: found {t:?}, expected: ','"
                    ));
                }
            }
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match r.op {
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::Equals | LabelOp::In => {
                    value.is_some_and(|v| r.values.iter().any(|x| x == v))
                }
                LabelOp::NotEquals | LabelOp::NotIn => {
                    !value.is_some_and(|v| r.values.iter().any(|x| x == v))
                }
                LabelOp::GreaterThan | LabelOp::LessThan => {
                    let (Some(v), Some(bound)) = (
                        value.and_then(|v| v.parse::<i64>().ok()),
                        r.values.first().and_then(|b| b.parse::<i64>().ok()),
                    ) else {
                        return false;
                    };
                    if r.op == LabelOp::GreaterThan {
                        v > bound
                    } else {
                        v < bound
                    }
                }
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub equals: bool,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

/// Splits on an unescaped separator character.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    parts.push(cur);
    parts
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    ));
                }
                None => return Err("invalid field selector: unterminated escape sequence".into()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Finds the first unescaped operator in a term.
fn split_term(term: &str) -> Option<(String, &'static str, String)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((term[..i].to_owned(), op, term[i + op.len()..].to_owned()));
            }
        }
    }
    None
}

impl FieldSelector {
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        for term in split_unescaped(input, ',') {
            if term.is_empty() {
                continue;
            }
            let Some((field, op, value)) = split_term(&term) else {
                return Err(format!(
                    "invalid selector: '{input}'; can't understand '{term}'"
                ));
            };
            requirements.push(FieldRequirement {
                field: unescape(field.trim())?,
                equals: op != "!=",
                value: unescape(&value)?,
            });
        }
        Ok(Self { requirements })
    }

    /// `metadata.name=x` pins the request to one name (kube authorizes such list/watch by name).
    pub fn single_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equals && r.field == "metadata.name")
            .map(|r| r.value.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(object, &r.field);
            (actual == r.value) == r.equals
        })
    }
}

/// The string a field selector compares against; missing fields compare as "".
pub fn field_value(object: &Value, field: &str) -> String {
    let path = if field == "source" {
        "source.component"
    } else {
        field
    };
    let mut cur = object;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse(
            "app=web, tier==front,env!=prod,zone in (a, b),team notin (x),has,!gone,n>3,m<9",
        )
        .unwrap();
        let ops: Vec<_> = s.requirements.iter().map(|r| r.op.clone()).collect();
        assert_eq!(
            ops,
            vec![
                LabelOp::Equals,
                LabelOp::Equals,
                LabelOp::NotEquals,
                LabelOp::In,
                LabelOp::NotIn,
                LabelOp::Exists,
                LabelOp::DoesNotExist,
                LabelOp::GreaterThan,
                LabelOp::LessThan
            ]
        );
        assert_eq!(s.requirements[3].values, vec!["a", "b"]);
        assert_eq!(s.requirements[0].key, "app");
    }

    #[test]
    fn matches_like_kube() {
        let l = labels(json!({"app": "web", "env": "dev", "n": "5", "example.com/role": "x"}));
        let m = |sel: &str| LabelSelector::parse(sel).unwrap().matches(Some(&l));
        assert!(m("app=web"));
        assert!(m("app==web,env!=prod"));
        assert!(!m("app=db"));
        assert!(m("missing!=x"), "!= matches when the label is absent");
        assert!(m("env in (dev,qa)"));
        assert!(!m("env notin (dev)"));
        assert!(m("missing notin (dev)"));
        assert!(m("app"));
        assert!(!m("!app"));
        assert!(m("!missing"));
        assert!(m("n>3"));
        assert!(!m("n<3"));
        assert!(m("example.com/role=x"));
        assert!(m(""));
        assert!(!LabelSelector::parse("app").unwrap().matches(None));
        assert!(LabelSelector::parse("!app").unwrap().matches(None));
    }

    #[test]
    fn rejects_garbage() {
        // An empty value is valid: it selects the empty label value.
        assert!(LabelSelector::parse("app=").is_ok());
        for bad in [
            "=x",
            "app in",
            "app in ()",
            "app in (a",
            "a,,b",
            "a b",
            "Bad Key=x",
            "n>x",
            "a=b,",
            "a=-x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a,b", "namespace": "apps"}, "spec": {"hostNetwork": false}, "source": {"component": "kubelet"}});
        let f = FieldSelector::parse(r"metadata.name=a\,b,metadata.namespace!=prod").unwrap();
        assert_eq!(f.requirements.len(), 2);
        assert!(f.matches(&obj));
        assert_eq!(f.single_name(), Some("a,b"));
        assert!(
            FieldSelector::parse("metadata.namespace==apps")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.hostNetwork=false")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("source=kubelet")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace=prod")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("nonsense").is_err());
        // Multi-byte characters around escapes must not split a char.
        assert_eq!(
            FieldSelector::parse("metadata.name=é\\,ü")
                .unwrap()
                .requirements[0]
                .value,
            "é,ü"
        );
        assert!(FieldSelector::parse("\\é=x").is_err());
        assert!(FieldSelector::parse(r"a=b\x").is_err());
    }
}
