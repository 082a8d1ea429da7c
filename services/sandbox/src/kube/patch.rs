//! JSON merge patch, JSON patch, and strategic merge patch for the core/v1 types.
//!
//! Strategic merge here is merge-patch plus list merging by key for the well-known lists
//! (kube's `patchMergeKey` struct tags), with the `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives honoured and stripped.

use serde_json::{Map, Value};

use super::status::ApiError;

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
}

impl PatchKind {
    /// Maps a Content-Type to a patch kind; apply-patch (server-side apply) is not supported.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            _ => Err(ApiError::unsupported_media_type(&media)),
        }
    }
}

pub fn apply(kind: PatchKind, original: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal a non-object merge patch",
                ));
            }
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
                ApiError::bad_request(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::unprocessable(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            Ok(doc)
        }
        PatchKind::Strategic => {
            let Value::Object(p) = &patch else {
                return Err(ApiError::bad_request(
                    "the strategic merge patch must be a JSON object",
                ));
            };
            strategic_merge(original, p).map_err(ApiError::bad_request)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListStrategy {
    Replace,
    MergeKey(&'static str),
    MergePrimitive,
}

/// kube's patch strategies for the lists of the core/v1 types, by field name and context.
fn list_strategy(path: &[String], field: &str) -> ListStrategy {
    let in_container = path.iter().any(|p| {
        matches!(
            p.as_str(),
            "containers" | "initContainers" | "ephemeralContainers"
        )
    });
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "resourceClaims" => ListStrategy::MergeKey("name"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if path.last().is_some_and(|p| p == "spec") => ListStrategy::MergeKey("port"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "conditions" => ListStrategy::MergeKey("type"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "finalizers" if path.last().is_some_and(|p| p == "metadata") => {
            ListStrategy::MergePrimitive
        }
        _ => ListStrategy::Replace,
    }
}

pub fn strategic_merge(original: &Value, patch: &Map<String, Value>) -> Result<Value, String> {
    let mut doc = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    merge_map(&mut doc, patch, &mut Vec::new())?;
    Ok(Value::Object(doc))
}

fn is_directive(key: &str) -> bool {
    key == "$patch"
        || key == "$retainKeys"
        || key.starts_with(SET_ORDER)
        || key.starts_with(DELETE_PRIMITIVE)
}

/// Removes every directive, recursively, for values copied in verbatim.
fn strip(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_directive(k))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|i| !is_patch_only(i))
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A list element that is nothing but a `$patch` directive.
fn is_patch_only(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|m| m.len() == 1 && m.contains_key("$patch"))
}

fn patch_directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

fn merge_map(
    doc: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match patch.get("$patch").and_then(Value::as_str) {
        None | Some("merge") => {}
        Some("replace") => {
            *doc = match strip(&Value::Object(patch.clone())) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            return Ok(());
        }
        Some(other) => return Err(format!("unknown patch type: {other} in map")),
    }
    for (key, value) in patch {
        if is_directive(key) {
            continue;
        }
        match value {
            Value::Null => {
                doc.remove(key);
            }
            Value::Object(p) => {
                if patch_directive(value) == Some("delete") {
                    doc.remove(key);
                    continue;
                }
                let entry = doc
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(child) = entry {
                    path.push(key.clone());
                    let r = merge_map(child, p, path);
                    path.pop();
                    r?;
                }
            }
            Value::Array(items) => {
                let merged = match list_strategy(path, key) {
                    ListStrategy::Replace => strip(value),
                    ListStrategy::MergePrimitive => {
                        let mut out = doc
                            .get(key)
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        for item in items {
                            if !out.contains(item) {
                                out.push(item.clone());
                            }
                        }
                        Value::Array(out)
                    }
                    ListStrategy::MergeKey(merge_key) => {
                        let current = doc
                            .get(key)
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        path.push(key.clone());
                        let r = merge_keyed_list(current, items, merge_key, path);
                        path.pop();
                        Value::Array(r?)
                    }
                };
                doc.insert(key.clone(), merged);
            }
            scalar => {
                doc.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = doc.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            let order = value
                .as_array()
                .ok_or_else(|| format!("{key} must be a list"))?;
            let merge_key = match list_strategy(path, field) {
                ListStrategy::MergeKey(k) => Some(k),
                _ => None,
            };
            if let Some(Value::Array(list)) = doc.get_mut(field) {
                reorder(list, order, merge_key);
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        doc.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_keyed_list(
    mut current: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    if patch
        .iter()
        .any(|p| patch_directive(p) == Some("replace") && is_patch_only(p))
    {
        return Ok(patch
            .iter()
            .filter(|p| !is_patch_only(p))
            .map(strip)
            .collect());
    }
    for item in patch {
        let Value::Object(p) = item else {
            if !current.contains(item) {
                current.push(item.clone());
            }
            continue;
        };
        if is_patch_only(item) {
            continue;
        }
        let Some(key_value) = p.get(merge_key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {merge_key}"
            ));
        };
        let pos = current
            .iter()
            .position(|c| c.get(merge_key) == Some(key_value));
        if patch_directive(item) == Some("delete") {
            current.retain(|c| c.get(merge_key) != Some(key_value));
            continue;
        }
        match pos {
            Some(i) => {
                if let Value::Object(existing) = &mut current[i] {
                    merge_map(existing, p, path)?;
                }
            }
            None => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, p, path)?;
                current.push(Value::Object(fresh));
            }
        }
    }
    Ok(current)
}

/// Orders `list` like `order` (by merge key or by value); unlisted items keep their order after.
fn reorder(list: &mut Vec<Value>, order: &[Value], merge_key: Option<&str>) {
    let ident = |v: &Value| -> Value {
        match merge_key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let mut remaining = std::mem::take(list);
    for o in order {
        let id = ident(o);
        if let Some(i) = remaining.iter().position(|v| ident(v) == id) {
            list.push(remaining.remove(i));
        }
    }
    list.extend(remaining);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(original: Value, patch: Value) -> Value {
        strategic_merge(&original, patch.as_object().unwrap()).unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_keep_others() {
        let pod = json!({"spec": {"containers": [
            {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "sidecar", "image": "envoy"}
        ]}});
        let out = smp(
            pod,
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"name": "app", "image": "nginx:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]
            }}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "app", "image": "nginx:2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "sidecar", "image": "envoy"}
            ]}})
        );
    }

    #[test]
    fn delete_and_replace_directives() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
                                  "volumes": [{"name": "v", "emptyDir": {}}]}});
        let out = smp(
            pod.clone(),
            json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "x"}])
        );
        let out = smp(
            pod.clone(),
            json!({"spec": {"containers": [{"name": "c", "image": "z"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "z"}])
        );
        let out = smp(
            pod.clone(),
            json!({"spec": {"$patch": "replace", "containers": [{"name": "only", "image": "i"}]}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"containers": [{"name": "only", "image": "i"}]}})
        );
        let out = smp(pod, json!({"spec": {"volumes": {"$patch": "delete"}}}));
        assert!(out["spec"].get("volumes").is_none());
    }

    #[test]
    fn ports_use_the_right_key_and_maps_merge() {
        let svc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = smp(
            svc,
            json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"ports": [{"port": 443, "targetPort": 8443}]}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http"}, {"port": 443, "name": "https", "targetPort": 8443}])
        );
        let pod = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}], "volumeMounts": [{"mountPath": "/a", "name": "v"}]}]}});
        let out = smp(
            pod,
            json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 81}], "volumeMounts": [{"mountPath": "/a", "readOnly": true}]}]}}),
        );
        assert_eq!(
            out["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 81}])
        );
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{"mountPath": "/a", "name": "v", "readOnly": true}])
        );
    }

    #[test]
    fn primitive_lists_retain_keys_and_unknown_lists_replace() {
        let obj = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"args": ["x", "y"], "strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = smp(
            obj,
            json!({
                "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                "spec": {"args": ["z"], "strategy": {"$retainKeys": ["type"], "type": "RollingUpdate"}}
            }),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["spec"]["args"], json!(["z"]));
        assert_eq!(out["spec"]["strategy"], json!({"type": "RollingUpdate"}));
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let err = strategic_merge(
            &json!({}),
            json!({"spec": {"containers": [{"image": "x"}]}})
                .as_object()
                .unwrap(),
        );
        assert!(err.is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/json-patch+json").unwrap(),
            PatchKind::Json
        );
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json").unwrap(),
            PatchKind::Strategic
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml")
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let doc = json!({"data": {"a": "1"}});
        let out = apply(
            PatchKind::Json,
            &doc,
            br#"[{"op":"add","path":"/data/b","value":"2"}]"#,
        )
        .unwrap();
        assert_eq!(out, json!({"data": {"a": "1", "b": "2"}}));
        let err = apply(
            PatchKind::Json,
            &doc,
            br#"[{"op":"test","path":"/data/a","value":"9"}]"#,
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        let out = apply(PatchKind::Merge, &doc, br#"{"data":{"a":null,"c":"3"}}"#).unwrap();
        assert_eq!(out, json!({"data": {"c": "3"}}));
        assert_eq!(
            apply(PatchKind::Merge, &doc, b"not json").unwrap_err().code,
            400
        );
    }
}
