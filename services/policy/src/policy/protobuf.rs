//! Kubernetes' protobuf request bodies, read for the body guardrail.
//!
//! The envelope (`k8s\0` then a `runtime.Unknown`: type meta, raw bytes, content encoding and
//! type) and the objects are decoded with `k8s-pb`'s generated types; never by hand. The kinds
//! below are then shown to the guardrail as the JSON the API server would accept for them
//! (same field names, empty fields omitted, bytes as base64), so one rule reads a RoleBinding
//! alike however kubectl sent it. Any other kind, an envelope that does not decode, a content
//! encoding, or bytes left over, is unreadable: guardrails fail closed on it as before.
//!
//! | apiVersion | kinds |
//! |---|---|
//! | `rbac.authorization.k8s.io/v1` | Role, ClusterRole, RoleBinding, ClusterRoleBinding |
//! | `v1` | ConfigMap, Secret, ServiceAccount, Namespace |

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{Map, Value, json};

/// What starts every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// The object in a protobuf body, as JSON; or why it cannot be read.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the body is protobuf without Kubernetes' envelope")?;
    let unknown =
        Unknown::decode(envelope).map_err(|_| "the body's protobuf envelope does not decode")?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(format!(
            "the body is protobuf ({api_version} {kind}) with a content encoding"
        ));
    }
    let raw = unknown.raw.unwrap_or_default();
    let object = match (api_version.as_str(), kind.as_str()) {
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let b = decode_all::<rbac::RoleBinding>(&raw, &kind)?;
            binding(b.metadata, b.subjects, b.role_ref)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let b = decode_all::<rbac::ClusterRoleBinding>(&raw, &kind)?;
            binding(b.metadata, b.subjects, b.role_ref)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let r = decode_all::<rbac::Role>(&raw, &kind)?;
            object(r.metadata, [("rules", rules(&r.rules))])
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let r = decode_all::<rbac::ClusterRole>(&raw, &kind)?;
            let aggregation = r.aggregation_rule.map(|a| {
                json!({"clusterRoleSelectors": a.cluster_role_selectors.iter().map(selector).collect::<Vec<_>>()})
            });
            object(
                r.metadata,
                [
                    ("rules", rules(&r.rules)),
                    ("aggregationRule", aggregation.unwrap_or(Value::Null)),
                ],
            )
        }
        ("v1", "ConfigMap") => {
            let c = decode_all::<core::ConfigMap>(&raw, &kind)?;
            object(
                c.metadata,
                [
                    ("immutable", opt(c.immutable)),
                    ("data", strings(&c.data)),
                    ("binaryData", bytes(&c.binary_data)),
                ],
            )
        }
        ("v1", "Secret") => {
            let s = decode_all::<core::Secret>(&raw, &kind)?;
            object(
                s.metadata,
                [
                    ("immutable", opt(s.immutable)),
                    ("type", opt(s.r#type)),
                    ("data", bytes(&s.data)),
                    ("stringData", strings(&s.string_data)),
                ],
            )
        }
        ("v1", "ServiceAccount") => {
            let a = decode_all::<core::ServiceAccount>(&raw, &kind)?;
            let names = |refs: Vec<Option<String>>| {
                let list: Vec<Value> = refs.into_iter().map(|n| json!({"name": n})).collect();
                if list.is_empty() {
                    Value::Null
                } else {
                    Value::Array(list)
                }
            };
            object(
                a.metadata,
                [
                    (
                        "automountServiceAccountToken",
                        opt(a.automount_service_account_token),
                    ),
                    (
                        "secrets",
                        names(a.secrets.into_iter().map(|s| s.name).collect()),
                    ),
                    (
                        "imagePullSecrets",
                        names(a.image_pull_secrets.into_iter().map(|s| s.name).collect()),
                    ),
                ],
            )
        }
        ("v1", "Namespace") => {
            let n = decode_all::<core::Namespace>(&raw, &kind)?;
            let finalizers = n
                .spec
                .map(|s| s.finalizers)
                .filter(|f| !f.is_empty())
                .map(|f| json!({"finalizers": f}));
            object(n.metadata, [("spec", finalizers.unwrap_or(Value::Null))])
        }
        _ => {
            return Err(format!(
                "the body is protobuf of a kind Gatehouse cannot read ({api_version} {kind})"
            ));
        }
    };
    let mut object = object;
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

/// Decodes all of `raw` as `M`: bytes prost would skip as unknown fields make it unreadable,
/// since a field Gatehouse does not see could be one a rule is about.
fn decode_all<M: Message + Default>(raw: &[u8], kind: &str) -> Result<M, String> {
    let message = M::decode(raw)
        .map_err(|_| format!("the body is protobuf ({kind}) that does not decode"))?;
    if message.encoded_len() != raw.len() {
        return Err(format!(
            "the body is protobuf ({kind}) with fields Gatehouse does not know"
        ));
    }
    Ok(message)
}

fn object<const N: usize>(
    metadata: Option<meta::ObjectMeta>,
    fields: [(&str, Value); N],
) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(m) = metadata {
        out.insert("metadata".into(), object_meta(m));
    }
    for (key, value) in fields {
        if !value.is_null() {
            out.insert(key.into(), value);
        }
    }
    out
}

fn object_meta(m: meta::ObjectMeta) -> Value {
    let owners: Vec<Value> = m
        .owner_references
        .into_iter()
        .map(|o| {
            Value::Object(compact([
                ("apiVersion", opt(o.api_version)),
                ("kind", opt(o.kind)),
                ("name", opt(o.name)),
                ("uid", opt(o.uid)),
                ("controller", opt(o.controller)),
                ("blockOwnerDeletion", opt(o.block_owner_deletion)),
            ]))
        })
        .collect();
    Value::Object(compact([
        ("name", opt(m.name)),
        ("generateName", opt(m.generate_name)),
        ("namespace", opt(m.namespace)),
        ("uid", opt(m.uid)),
        ("resourceVersion", opt(m.resource_version)),
        ("labels", strings(&m.labels)),
        ("annotations", strings(&m.annotations)),
        ("finalizers", list(m.finalizers)),
        (
            "ownerReferences",
            if owners.is_empty() {
                Value::Null
            } else {
                Value::Array(owners)
            },
        ),
    ]))
}

fn binding(
    metadata: Option<meta::ObjectMeta>,
    subjects: Vec<rbac::Subject>,
    role_ref: Option<rbac::RoleRef>,
) -> Map<String, Value> {
    let subjects: Vec<Value> = subjects
        .into_iter()
        .map(|s| {
            Value::Object(compact([
                ("kind", opt(s.kind)),
                ("apiGroup", opt(s.api_group)),
                ("name", opt(s.name)),
                ("namespace", opt(s.namespace)),
            ]))
        })
        .collect();
    let role_ref = role_ref.map(|r| {
        Value::Object(compact([
            ("apiGroup", opt(r.api_group)),
            ("kind", opt(r.kind)),
            ("name", opt(r.name)),
        ]))
    });
    object(
        metadata,
        [
            (
                "subjects",
                if subjects.is_empty() {
                    Value::Null
                } else {
                    Value::Array(subjects)
                },
            ),
            ("roleRef", role_ref.unwrap_or(Value::Null)),
        ],
    )
}

fn rules(rules: &[rbac::PolicyRule]) -> Value {
    if rules.is_empty() {
        return Value::Null;
    }
    rules
        .iter()
        .map(|r| {
            Value::Object(compact([
                ("verbs", list(r.verbs.clone())),
                ("apiGroups", list(r.api_groups.clone())),
                ("resources", list(r.resources.clone())),
                ("resourceNames", list(r.resource_names.clone())),
                ("nonResourceURLs", list(r.non_resource_ur_ls.clone())),
            ]))
        })
        .collect()
}

fn selector(s: &meta::LabelSelector) -> Value {
    let expressions: Vec<Value> = s
        .match_expressions
        .iter()
        .map(|e| {
            Value::Object(compact([
                ("key", opt(e.key.clone())),
                ("operator", opt(e.operator.clone())),
                ("values", list(e.values.clone())),
            ]))
        })
        .collect();
    Value::Object(compact([
        ("matchLabels", strings(&s.match_labels)),
        (
            "matchExpressions",
            if expressions.is_empty() {
                Value::Null
            } else {
                Value::Array(expressions)
            },
        ),
    ]))
}

/// A JSON object of the fields that are set.
fn compact<const N: usize>(fields: [(&str, Value); N]) -> Map<String, Value> {
    fields
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn opt<T: Into<Value>>(value: Option<T>) -> Value {
    value.map_or(Value::Null, Into::into)
}

fn list(values: Vec<String>) -> Value {
    if values.is_empty() {
        Value::Null
    } else {
        values.into()
    }
}

fn strings(map: &BTreeMap<String, String>) -> Value {
    if map.is_empty() {
        return Value::Null;
    }
    map.iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect::<Map<_, _>>()
        .into()
}

/// Bytes as JSON carries them: base64.
fn bytes(map: &BTreeMap<String, Vec<u8>>) -> Value {
    if map.is_empty() {
        return Value::Null;
    }
    map.iter()
        .map(|(k, v)| (k.clone(), Value::String(STANDARD.encode(v))))
        .collect::<Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    fn role_binding(role: &str) -> Vec<u8> {
        let binding = rbac::RoleBinding {
            metadata: Some(meta::ObjectMeta {
                name: Some("ops".into()),
                namespace: Some("apps".into()),
                labels: [("team".to_owned(), "platform".to_owned())].into(),
                ..Default::default()
            }),
            subjects: vec![rbac::Subject {
                kind: Some("User".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                name: Some("mallory".into()),
                namespace: None,
            }],
            role_ref: Some(rbac::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some(role.into()),
            }),
        };
        envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            binding.encode_to_vec(),
        )
    }

    #[test]
    fn a_role_binding_reads_as_its_json() {
        let value = decode(&role_binding("cluster-admin")).unwrap();
        assert_eq!(
            value,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "ops", "namespace": "apps", "labels": {"team": "platform"}},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            })
        );
    }

    #[test]
    fn a_secret_reads_with_its_bytes_as_base64() {
        let secret = core::Secret {
            metadata: Some(meta::ObjectMeta {
                name: Some("db".into()),
                ..Default::default()
            }),
            data: [("password".to_owned(), b"hunter2".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let value = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(value["data"]["password"], STANDARD.encode("hunter2"));
        assert_eq!(value["type"], "Opaque");
    }

    #[test]
    fn what_cannot_be_read_is_refused_saying_why() {
        let deployment = envelope("apps/v1", "Deployment", vec![]);
        let why = decode(&deployment).unwrap_err();
        assert!(why.contains("apps/v1 Deployment"), "{why}");
        assert!(decode(b"{\"kind\":\"RoleBinding\"}").is_err());
        assert!(decode(b"k8s\0\xff\xff\xff").is_err());
        // A field the type does not have (tag 15): it could be what a rule is about.
        let mut raw = rbac::RoleBinding::default().encode_to_vec();
        raw.extend([0x7a, 0x01, b'x']);
        let why = decode(&envelope(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            raw,
        ))
        .unwrap_err();
        assert!(why.contains("does not know"), "{why}");
        let mut encoded = role_binding("view");
        // Compressed raw: refused.
        let unknown = Unknown {
            content_encoding: Some("gzip".into()),
            ..Unknown::decode(&encoded[MAGIC.len()..]).unwrap()
        };
        encoded.truncate(MAGIC.len());
        encoded.extend(unknown.encode_to_vec());
        assert!(decode(&encoded).unwrap_err().contains("content encoding"));
    }
}
