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
//! `object` of every watch event, and the `object` of every `Table` row.

use serde::Deserialize;

/// One mask profile as written in the policy file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Field paths whose values are masked. Dotted keys; `*` is any key; `[*]` any element.
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
    /// Path of the objects (array elements) holding the pair.
    pub path: String,
    /// Regex on the name field.
    pub matching: String,
    #[serde(default = "default_name_field")]
    pub name_field: String,
    #[serde(default = "default_value_field")]
    pub value_field: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Path of the map.
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
