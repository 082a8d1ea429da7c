//! Validation of encoded events against the hand-written JSON Schemas in `schemas/events/`.
//!
//! Each event type `dev.gatehouse.<name>.v1` has the schema `<name>.v1.json`; those `$ref` the
//! shared `envelope.json` and `common.json` by their `$id` under [`BASE_URI`], which this module
//! resolves from the same directory, never over the network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

/// The `$id` prefix of every Gatehouse event schema.
pub const BASE_URI: &str = "https://gatehouse.dev/schemas/events/";

/// `schemas/events/` of this source tree.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/events")
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("reading schema {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema {path} is not JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("schema {path} does not compile: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("the event is not JSON: {0}")]
    EventNotJson(serde_json::Error),
    #[error("the event has no string `type`")]
    NoType,
    #[error("no schema for event type {0}")]
    UnknownType(String),
    #[error("{event_type} event {id} violates its schema: {violations:?}")]
    Invalid {
        event_type: String,
        id: String,
        violations: Vec<String>,
    },
}

/// Every event schema, compiled, by CloudEvents `type`.
pub struct SchemaSet {
    validators: HashMap<String, Validator>,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<_> = self.validators.keys().collect();
        types.sort();
        f.debug_struct("SchemaSet").field("types", &types).finish()
    }
}

/// Resolves `https://gatehouse.dev/schemas/events/<file>` to `<dir>/<file>`.
struct DirRetriever {
    dir: PathBuf,
}

impl Retrieve for DirRetriever {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let uri = uri.as_str();
        let file = uri
            .strip_prefix(BASE_URI)
            .filter(|f| !f.contains('/') && !f.contains(".."))
            .ok_or_else(|| format!("refusing to resolve {uri} outside {BASE_URI}"))?;
        let text = std::fs::read_to_string(self.dir.join(file))?;
        Ok(serde_json::from_str(&text)?)
    }
}

impl SchemaSet {
    /// Compiles every `*.v<N>.json` schema in `dir`.
    pub fn load(dir: &Path) -> Result<Self, SchemaError> {
        let entries = std::fs::read_dir(dir).map_err(|source| SchemaError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut validators = HashMap::new();
        for entry in entries {
            let path = entry
                .map_err(|source| SchemaError::Read {
                    path: dir.to_owned(),
                    source,
                })?
                .path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|stem| is_versioned(stem))
                .map(str::to_owned)
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| SchemaError::Read {
                path: path.clone(),
                source,
            })?;
            let schema: Value =
                serde_json::from_str(&text).map_err(|source| SchemaError::Parse {
                    path: path.clone(),
                    source,
                })?;
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .with_retriever(DirRetriever {
                    dir: dir.to_owned(),
                })
                .build(&schema)
                .map_err(|e| SchemaError::Compile {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            validators.insert(format!("dev.gatehouse.{stem}"), validator);
        }
        Ok(Self { validators })
    }

    /// The event types this set has schemas for.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.validators.keys().map(String::as_str)
    }

    /// Validates one encoded event against the schema its `type` names.
    pub fn validate(&self, event: &[u8]) -> Result<(), SchemaError> {
        let value: Value = serde_json::from_slice(event).map_err(SchemaError::EventNotJson)?;
        let event_type = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or(SchemaError::NoType)?;
        let validator = self
            .validators
            .get(event_type)
            .ok_or_else(|| SchemaError::UnknownType(event_type.to_owned()))?;
        let violations: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Invalid {
                event_type: event_type.to_owned(),
                id: value
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                violations,
            })
        }
    }
}

/// `request.received.v1` → true; `common`, `envelope` → false.
fn is_versioned(stem: &str) -> bool {
    stem.rsplit_once(".v")
        .is_some_and(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}
