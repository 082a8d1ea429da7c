//! The core/v1 resources the sandbox serves, and the discovery documents built from them.

use serde_json::{Value, json};

/// Everything the sandbox knows about one resource type.
#[derive(Debug)]
pub struct ResourceDef {
    pub name: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Subresources served, e.g. "status", "log".
    pub subresources: &'static [&'static str],
    /// Top-level fields besides apiVersion/kind/metadata (for field validation).
    pub fields: &'static [&'static str],
    /// Field selector labels besides metadata.name/metadata.namespace.
    pub field_labels: &'static [&'static str],
    /// Kube returns the object on delete (graceful deletion) instead of a Status.
    pub delete_returns_object: bool,
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        name: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        subresources: &["status"],
        fields: &["spec", "status"],
        field_labels: &["status.phase"],
        delete_returns_object: true,
    },
    ResourceDef {
        name: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        verbs: ALL_VERBS,
        subresources: &["attach", "exec", "log", "portforward", "status"],
        fields: &["spec", "status"],
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        delete_returns_object: true,
    },
    ResourceDef {
        name: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        verbs: ALL_VERBS,
        subresources: &[],
        fields: &["data", "stringData", "type", "immutable"],
        field_labels: &["type"],
        delete_returns_object: false,
    },
    ResourceDef {
        name: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        verbs: ALL_VERBS,
        subresources: &[],
        fields: &["data", "binaryData", "immutable"],
        field_labels: &[],
        delete_returns_object: false,
    },
    ResourceDef {
        name: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        verbs: &[
            "create", "delete", "get", "list", "patch", "update", "watch",
        ],
        subresources: &["status"],
        fields: &["spec", "status"],
        field_labels: &["spec.clusterIP", "spec.type"],
        delete_returns_object: false,
    },
    ResourceDef {
        name: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
        verbs: ALL_VERBS,
        subresources: &[],
        fields: &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        field_labels: &[],
        delete_returns_object: false,
    },
    ResourceDef {
        name: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        verbs: ALL_VERBS,
        subresources: &[],
        fields: &[
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        ],
        field_labels: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        delete_returns_object: false,
    },
    ResourceDef {
        name: "resourcequotas",
        singular: "resourcequota",
        kind: "ResourceQuota",
        namespaced: true,
        short_names: &["quota"],
        verbs: ALL_VERBS,
        subresources: &["status"],
        fields: &["spec", "status"],
        field_labels: &[],
        delete_returns_object: false,
    },
    ResourceDef {
        name: "limitranges",
        singular: "limitrange",
        kind: "LimitRange",
        namespaced: true,
        short_names: &["limits"],
        verbs: ALL_VERBS,
        subresources: &[],
        fields: &["spec"],
        field_labels: &[],
        delete_returns_object: false,
    },
];

pub fn by_name(name: &str) -> Option<&'static ResourceDef> {
    RESOURCES.iter().find(|r| r.name == name)
}

impl ResourceDef {
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }
}

pub const GIT_VERSION: &str = "v1.32.0-gatehouse-sandbox";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-12-11T00:00:00Z",
        "goVersion": "go1.23.3",
        "compiler": "gc",
        "platform": format!("{}/{}", std::env::consts::OS, goarch()),
    })
}

fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

pub fn api_resource_list() -> Value {
    let mut resources = Vec::new();
    for r in RESOURCES {
        let mut entry = json!({
            "name": r.name,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        // Of these, only pods and services are in kubectl's "all" category in real kube.
        if matches!(r.name, "pods" | "services") {
            entry["categories"] = json!(["all"]);
        }
        resources.push(entry);
        for sub in r.subresources {
            let (verbs, kind): (&[&str], &str) = match *sub {
                "log" => (&["get"], "Pod"),
                "attach" => (&["create", "get"], "PodAttachOptions"),
                "exec" => (&["create", "get"], "PodExecOptions"),
                "portforward" => (&["create", "get"], "PodPortForwardOptions"),
                _ => (&["get", "patch", "update"], r.kind),
            };
            resources.push(json!({
                "name": format!("{}/{}", r.name, sub),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            }));
        }
    }
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})
}
