//! A minimal OpenAPI v3: just enough for kubectl to see that every kind's PATCH takes a
//! `fieldValidation` query parameter, so it validates server-side instead of downloading
//! the (unserved) OpenAPI v2 schema for client-side validation.
//!
//! PATCH request bodies deliberately omit strategic-merge-patch: kubectl then computes apply
//! patches from its built-in types rather than from schemas this document does not carry.

use serde_json::{Value, json};

use super::resources::RESOURCES;

pub struct Docs {
    pub root: Value,
    pub api_v1: Value,
    pub hash: String,
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn api_v1() -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES {
        let item = if r.namespaced {
            format!("/api/v1/namespaces/{{namespace}}/{}/{{name}}", r.name)
        } else {
            format!("/api/v1/{}/{{name}}", r.name)
        };
        let gvk = json!({"group": "", "version": "v1", "kind": r.kind});
        let schema_ref =
            json!({"$ref": format!("#/components/schemas/io.k8s.api.core.v1.{}", r.kind)});
        let body_schema = json!({"schema": {"type": "object"}});
        paths.insert(
            item,
            json!({
                "get": {
                    "operationId": format!("readCoreV1{}", r.kind),
                    "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": gvk,
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
                },
                "put": {
                    "operationId": format!("replaceCoreV1{}", r.kind),
                    "x-kubernetes-action": "put",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [
                        query_param("dryRun", "When present, indicates that modifications should not be persisted."),
                        query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
                        query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."),
                    ],
                    "requestBody": {"content": {"*/*": {"schema": schema_ref}}, "required": true},
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
                },
                "patch": {
                    "operationId": format!("patchCoreV1{}", r.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [
                        query_param("dryRun", "When present, indicates that modifications should not be persisted."),
                        query_param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
                        query_param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields: Ignore, Warn or Strict."),
                    ],
                    "requestBody": {"content": {
                        "application/json-patch+json": body_schema,
                        "application/merge-patch+json": body_schema,
                    }, "required": true},
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
                },
                "parameters": [
                    {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}},
                ],
            }),
        );
    }
    let mut schemas = serde_json::Map::new();
    for r in RESOURCES {
        schemas.insert(
            format!("io.k8s.api.core.v1.{}", r.kind),
            json!({
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": r.kind}],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                },
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::resources::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// FNV-1a: a stable content hash for `serverRelativeURL` cache busting.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

impl Docs {
    pub fn build() -> Self {
        let api_v1 = api_v1();
        let hash = fnv(api_v1.to_string().as_bytes());
        let root = json!({"paths": {"api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={hash}")}}});
        Self { root, api_v1, hash }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_with_field_validation() {
        let docs = Docs::build();
        assert!(
            docs.root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .ends_with(&docs.hash)
        );
        for r in RESOURCES {
            let found = docs.api_v1["paths"].as_object().unwrap().values().any(|p| {
                p["patch"]["x-kubernetes-group-version-kind"]["kind"] == r.kind
                    && p["patch"]["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|q| q["name"] == "fieldValidation" && q["in"] == "query")
            });
            assert!(found, "{}", r.kind);
        }
    }
}
