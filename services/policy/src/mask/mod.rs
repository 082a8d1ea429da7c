//! Masking: values policy says must not leak are replaced before they reach the caller or any
//! event, log or error.
//!
//! Secret `data` / `stringData` values are always masked. A policy rule may also name a mask
//! profile (declared under `mask_profiles:` in the policy file):
//!
//! ```yaml
//! mask_profiles:
//!   app-secrets:
//!     paths: ["data.*", "spec.template.spec.containers[*].env[*].value"]
//!     named_values:
//!       - path: "spec.containers[*].env[*]"   # an array of {name, value} objects
//!         matching: "(?i)(password|token|key)" # regex on the `name` field
//!     keys:
//!       - path: "data"                         # a map such as a ConfigMap's data
//!         matching: "(?i)(password|token|key)" # regex on the key
//!     patterns: ["(?i)bearer [a-z0-9._~+/-]+=*"]  # regex on any string value; the match is masked
//! ```
//!
//! Paths are relative to each Kubernetes object: a single object, every item of a list, the
//! `object` of every watch event, and the `object` of every `Table` row. Path grammar: keys
//! separated by `.`; `*` is any key (or any element of an array); `[*]` is any element, `[2]` one
//! element; `["example.com/key"]` is a key holding dots. A leading `.` is allowed.
//!
//! # What is masked, and into what
//!
//! - Always, in every Secret — an object of `kind: Secret`, every object when the request is
//!   for `secrets` in the core group, and (to fail safe) an object with no `kind` at all: each
//!   value of `data` becomes [`MASKED_BASE64`] (still valid base64, so clients decode it) and
//!   each value of `stringData` becomes [`MASKED_TEXT`].
//! - The `kubectl.kubernetes.io/last-applied-configuration` annotation of any object holds the
//!   object again as JSON text: the same rules are applied inside it and it stays valid JSON.
//!   If a Secret's annotation is not valid JSON, it is masked whole.
//! - A value a profile selects (by path, by `keys`, or by `named_values`): a string becomes
//!   [`MASKED_TEXT`] ([`MASKED_BASE64`] in a base64 map: Secret `data`, ConfigMap
//!   `binaryData`); a number becomes `0`; a boolean becomes `false`; `null` stays `null`. An
//!   object or array selected is masked scalar by scalar, keeping its shape.
//! - A `patterns` match inside any string value is replaced in place by [`MASKED_TEXT`]
//!   (in a base64 map the whole value is masked instead). Keys are never masked.
//! - `named_values` whose path ends at an array apply to each element; the `name` may come
//!   before or after the `value` in the object.
//!
//! # Shapes
//!
//! What a response is comes from the response, never from the request: a list request
//! answered with a watch stream, or a watch answered with a list, is masked as what it is.
//! Every document in the body (one, or a stream of them) is read the same way, from its
//! members: a single object; a list (`items[*]`, the kind of each item inferred from the
//! list's kind, e.g. `SecretList`, or read from the item for `kind: List`); a watch event
//! (`{"type": ..., "object": {...}}`, including `BOOKMARK` and `ERROR`); a `Table`
//! (`rows[*].object`, whether a full object or `PartialObjectMetadata`; a watch of tables has a
//! `Table` as each event's object). A top-level document's `items`, `rows` and `object` are
//! treated as holding objects whatever its `kind` says, as a lenient client would read them.
//! Which encodings can be masked at all (JSON, uncompressed) is the caller's check, on the
//! response's `Content-Type` and `Content-Encoding`: see [`classify_response`]. Table `cells` get the patterns only: for `secrets`,
//! kube-apiserver's table columns are Name, Type, Data (the *number* of keys) and Age, so no
//! cell carries a value; a custom resource's printer column that shows a masked field would
//! (columns do not say which field they print), so such fields should also be covered by a
//! pattern, or the table's rule should not allow the resource.
//!
//! # Streaming
//!
//! [`Masker`] is fed the body chunk by chunk and writes masked output as it goes; it holds
//! only unfinished tokens, and at most one object while it looks ahead for a `kind` or `name`
//! that comes after the value it decides. Anything that is not JSON (protobuf, truncated or
//! malformed JSON) is an error, after which nothing more is emitted: the caller must cut the
//! response. Error messages never contain body bytes.
//!
//! Module map:
//! - [`profile`]: compiling [`ProfileSpec`]s into [`Profile`]s ([`MaskSet`]).
//! - `engine`: the streaming copy-through masker.
//! - `lex`: the JSON tokenizer under it.

mod engine;
mod lex;
pub mod lines;
pub mod profile;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::BytesMut;

pub use lines::LineMasker;
pub use profile::{MaskSet, Profile};

/// What a masked text value becomes.
pub const MASKED_TEXT: &str = gatehouse_events::MASKED_TEXT;
/// What a masked base64 value becomes: `base64("gatehouse:masked")`.
pub const MASKED_BASE64: &str = "Z2F0ZWhvdXNlOm1hc2tlZA==";
/// The annotation `kubectl apply` keeps the whole applied object in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the response (or request body) being masked is for. Only ever widens what is masked
/// (every object of a core `secrets` request is a Secret); what the body *is* — one object, a
/// list, a table, a stream of watch events — the masker reads from the body itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskTarget {
    /// The request's resource (`secrets`, `pods`...); empty for non-resource requests.
    pub resource: String,
    /// The request's API group; empty for the core group.
    pub api_group: String,
}

impl MaskTarget {
    pub fn new(resource: impl Into<String>, api_group: impl Into<String>) -> Self {
        MaskTarget {
            resource: resource.into(),
            api_group: api_group.into(),
        }
    }

    /// Core-group `secrets`: every object in the body is treated as a Secret.
    pub fn is_core_secrets(&self) -> bool {
        self.resource == "secrets" && (self.api_group.is_empty() || self.api_group == "core")
    }
}

/// Why a body could not be masked. Never holds body bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("the body is not JSON (protobuf and other encodings cannot be masked)")]
    NotJson,
    #[error("malformed JSON at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: &'static str },
    #[error("the JSON body ends early, at byte {offset}")]
    Truncated { offset: u64 },
    #[error("unexpected data after the JSON document, at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("the masker was fed after it finished")]
    Finished,
}

/// Why a response that must be masked cannot be, told from its headers before any of its body
/// is read. Never holds body bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unmaskable {
    #[error("the response is compressed ({0}); only an uncompressed body can be masked")]
    Compressed(String),
    #[error("the response is {0}, not JSON; only JSON can be masked")]
    NotJson(String),
    #[error("the response has {0} {1} headers; which one the client would read is unclear")]
    Ambiguous(usize, &'static str),
}

/// Whether a response body can go through a [`Masker`], from what its headers say it is: JSON
/// (`application/json` with any parameters — a watch stream, a `Table` — or a `+json` type),
/// not compressed. A response without a `Content-Type` is left to the masker, which refuses
/// anything that is not JSON.
pub fn classify_response(headers: &http::HeaderMap) -> Result<(), Unmaskable> {
    let single = |name: http::header::HeaderName, label: &'static str| {
        let mut values = headers.get_all(&name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(Some(v)),
            (Some(_), Some(_)) => Err(Unmaskable::Ambiguous(
                headers.get_all(&name).iter().count(),
                label,
            )),
        }
    };
    let shown = |v: &http::HeaderValue| {
        let text = String::from_utf8_lossy(v.as_bytes());
        let mut shown: String = text.chars().take(80).collect();
        if text.chars().count() > 80 {
            shown.push('…');
        }
        format!("{shown:?}")
    };
    if let Some(encoding) = single(http::header::CONTENT_ENCODING, "Content-Encoding")?
        && !encoding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"identity")
    {
        return Err(Unmaskable::Compressed(shown(encoding)));
    }
    if let Some(content_type) = single(http::header::CONTENT_TYPE, "Content-Type")? {
        let text = content_type.to_str().unwrap_or_default();
        let essence = text.split(';').next().unwrap_or_default().trim();
        let json = essence.eq_ignore_ascii_case("application/json")
            || essence.rsplit_once('+').is_some_and(|(ty, suffix)| {
                suffix.eq_ignore_ascii_case("json")
                    && ty.len() > "application/".len()
                    && ty
                        .get(.."application/".len())
                        .is_some_and(|t| t.eq_ignore_ascii_case("application/"))
            });
        if !json {
            return Err(Unmaskable::NotJson(shown(content_type)));
        }
    }
    Ok(())
}

/// Whether a JSON response for `target` must go through a [`Masker`]; false means its bytes
/// can be copied as they are.
///
/// True for `secrets` (any group: a Secret is recognised by its `kind` as well) and whenever a
/// non-empty profile applies. Other resources without a profile are false: no built-in
/// resource other than `secrets` returns Secret objects (lists, tables and watches of a
/// resource hold only that resource, and `kind: List` is assembled by clients, not served).
/// Only for JSON bodies: text subresources (`log`) and streams (`exec`, `attach`,
/// `portforward`) need [`mask_text`] on their text instead; a `proxy` subresource's body is
/// whatever the proxied server sends and cannot be masked as JSON.
pub fn needs_masking(profile: Option<&Profile>, target: &MaskTarget) -> bool {
    target.resource == "secrets" || profile.is_some_and(|p| !p.is_empty())
}

/// Masks a response body as it streams.
///
/// Feed each chunk to [`push`](Masker::push) and send what it appends to `out`; call
/// [`finish`](Masker::finish) at the end of the body. Any error means the body could not be
/// masked: stop sending (cut the response) and do not feed the masker again — it repeats the
/// error.
#[derive(Debug)]
pub struct Masker {
    profile: Option<Arc<Profile>>,
    engine: engine::Engine,
}

impl Masker {
    /// A masker for a response body: one document or a stream of them (a watch), each read
    /// for what it is.
    pub fn new(profile: Option<Arc<Profile>>, target: &MaskTarget) -> Self {
        Masker {
            engine: engine::Engine::new(target.is_core_secrets(), true),
            profile,
        }
    }

    /// Whether the output so far ends between two whole documents (nothing of a document
    /// has been written without its end), so a watch stream can take one more event.
    pub fn between_documents(&self) -> bool {
        self.engine.between_documents()
    }

    /// Masks `chunk`, appending to `out` everything that can be sent so far.
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), MaskError> {
        let mut cx = engine::Cx {
            profile: self.profile.as_deref(),
            out,
        };
        self.engine.push(&mut cx, chunk)
    }

    /// The body is over: appends the rest to `out`, or fails if the JSON is incomplete. An
    /// empty body is fine.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), MaskError> {
        let mut cx = engine::Cx {
            profile: self.profile.as_deref(),
            out,
        };
        self.engine.finish(&mut cx)
    }

    /// Values masked so far (a string with several pattern matches counts once).
    pub fn masked_fields(&self) -> u64 {
        self.engine.masked()
    }
}

/// Masks a JSON value already in memory (a request body), with the same rules as [`Masker`];
/// returns the number of values masked. Should masking ever fail, the whole value is replaced
/// by [`MASKED_TEXT`] (counted as one) rather than left unmasked.
pub fn mask_value(
    profile: Option<&Profile>,
    target: &MaskTarget,
    value: &mut serde_json::Value,
) -> u64 {
    let fail_closed = |value: &mut serde_json::Value| {
        *value = serde_json::Value::String(MASKED_TEXT.into());
        1
    };
    let Ok(text) = serde_json::to_vec(value) else {
        return fail_closed(value);
    };
    let mut engine = engine::Engine::new(target.is_core_secrets(), false);
    let mut out = BytesMut::with_capacity(text.len());
    let mut cx = engine::Cx {
        profile,
        out: &mut out,
    };
    if engine
        .push(&mut cx, &text)
        .and_then(|()| engine.finish(&mut cx))
        .is_err()
    {
        return fail_closed(value);
    }
    let masked = engine.masked();
    if masked == 0 {
        return 0;
    }
    match serde_json::from_slice(&out) {
        Ok(v) => {
            *value = v;
            masked
        }
        Err(_) => fail_closed(value),
    }
}

/// Applies a profile's `patterns` to free text (exec session output, log lines); without a
/// profile or patterns the text is returned as it is.
pub fn mask_text<'t>(profile: Option<&Profile>, text: &'t str) -> Cow<'t, str> {
    match profile
        .and_then(|p| p.patterns.as_ref())
        .and_then(|p| p.apply(text))
    {
        Some(masked) => Cow::Owned(masked),
        None => Cow::Borrowed(text),
    }
}

use serde::Deserialize;

/// One mask profile as written in the policy file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Field paths whose values are masked. Dotted keys; `*` is any key (or any element);
    /// `[*]` any element, `[2]` one element; `["example.com/key"]` a key holding dots.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Name/value pairs (env vars): mask `value` where the sibling `name` matches.
    #[serde(default)]
    pub named_values: Vec<NamedValueSpec>,
    /// Maps (ConfigMap data, annotations): mask the values of keys that match.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Regexes applied to every string value; the matched text is masked.
    #[serde(default)]
    pub patterns: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamedValueSpec {
    /// Path of the objects (array elements) holding the pair; a path ending at the array
    /// itself means each of its elements.
    pub path: String,
    /// Regex on the name field. A missing or non-string name does not match.
    pub matching: String,
    /// The field holding the name (default `name`).
    #[serde(default = "default_name_field")]
    pub name_field: String,
    /// The field whose value is masked (default `value`).
    #[serde(default = "default_value_field")]
    pub value_field: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Path of the map (an object; the values of its matching keys are masked).
    pub path: String,
    /// Regex on the key.
    pub matching: String,
}

fn default_name_field() -> String {
    "name".into()
}
fn default_value_field() -> String {
    "value".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The YAML shape in the module docs parses, compiles and masks what it says.
    #[test]
    fn the_documented_policy_shape_parses_and_compiles() {
        let yaml = r#"
app-secrets:
  paths: ["data.*", "spec.template.spec.containers[*].env[*].value"]
  named_values:
    - path: "spec.containers[*].env[*]"
      matching: "(?i)(password|token|key)"
  keys:
    - path: "data"
      matching: "(?i)(password|token|key)"
  patterns: ["(?i)bearer [a-z0-9._~+/-]+=*"]
"#;
        let specs: BTreeMap<String, ProfileSpec> = yaml_serde::from_str(yaml).unwrap();
        let spec = &specs["app-secrets"];
        assert_eq!(spec.named_values[0].name_field, "name");
        assert_eq!(spec.named_values[0].value_field, "value");
        let set = MaskSet::compile(&specs).unwrap();
        let profile = set.get("app-secrets").unwrap();
        assert_eq!(
            mask_text(Some(&profile), "Authorization: Bearer abc=="),
            "Authorization: gatehouse:masked"
        );
        let mut pod = serde_json::json!({"kind": "Pod", "spec": {"containers": [
            {"env": [{"name": "API_KEY", "value": "k-123"}, {"name": "MODE", "value": "m"}]}
        ]}});
        assert_eq!(
            mask_value(Some(&profile), &MaskTarget::new("pods", ""), &mut pod),
            1
        );
        assert_eq!(pod["spec"]["containers"][0]["env"][1]["value"], "m");

        let unknown: Result<BTreeMap<String, ProfileSpec>, _> =
            yaml_serde::from_str("p:\n  pathz: [\"a\"]\n");
        assert!(unknown.is_err(), "unknown fields are refused");
    }

    #[test]
    fn only_uncompressed_json_answers_can_be_masked() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (name, value) in pairs {
                h.append(*name, http::HeaderValue::from_static(value));
            }
            h
        };
        for ok in [
            headers(&[]),
            headers(&[("content-type", "application/json")]),
            headers(&[("content-type", "Application/JSON; charset=utf-8")]),
            headers(&[(
                "content-type",
                "application/json;as=Table;v=v1;g=meta.k8s.io",
            )]),
            headers(&[("content-type", "application/merge-patch+json")]),
            headers(&[
                ("content-type", "application/json"),
                ("content-encoding", "identity"),
            ]),
        ] {
            assert_eq!(classify_response(&ok), Ok(()), "{ok:?}");
        }
        let refused = [
            (
                headers(&[("content-type", "application/vnd.kubernetes.protobuf")]),
                "not JSON",
            ),
            (
                headers(&[(
                    "content-type",
                    "application/vnd.kubernetes.protobuf;stream=watch",
                )]),
                "not JSON",
            ),
            (headers(&[("content-type", "application/cbor")]), "not JSON"),
            (headers(&[("content-type", "application/yaml")]), "not JSON"),
            (headers(&[("content-type", "text/html")]), "not JSON"),
            (headers(&[("content-type", "+json")]), "not JSON"),
            (
                headers(&[
                    ("content-type", "application/json"),
                    ("content-encoding", "gzip"),
                ]),
                "compressed",
            ),
            (headers(&[("content-encoding", "br")]), "compressed"),
            (
                headers(&[
                    ("content-type", "application/json"),
                    ("content-type", "application/cbor"),
                ]),
                "2 Content-Type headers",
            ),
        ];
        for (h, why) in refused {
            let err = classify_response(&h).unwrap_err().to_string();
            assert!(err.contains(why), "{h:?}: {err}");
        }
    }

    #[test]
    fn the_base64_marker_is_the_base64_of_the_text_marker() {
        use base64::Engine as _;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(MASKED_TEXT),
            MASKED_BASE64
        );
    }
}
