//! `meta.k8s.io/v1` Table rendering with kubectl's usual columns for each resource.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What `rows[].object` carries (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("") | Some("Metadata") => Ok(Self::Metadata),
            Some("None") => Ok(Self::None),
            Some("Object") => Ok(Self::Object),
            Some(other) => Err(format!(
                "includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\""
            )),
        }
    }
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        format: "",
        priority,
        description,
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(resource: &str) -> Vec<Column> {
    match resource {
        "pods" => vec![
            NAME,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col("IP", "string", 1, "podIP address allocated to the pod."),
            col(
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "configmaps" => vec![
            NAME,
            col(
                "Data",
                "integer",
                0,
                "Data contains the configuration data.",
            ),
            AGE,
        ],
        "secrets" => vec![
            NAME,
            col(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            col("Data", "integer", 0, "Data contains the secret data."),
            AGE,
        ],
        "namespaces" => vec![
            NAME,
            col("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        "services" => vec![
            NAME,
            col(
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ),
            col(
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service.",
            ),
            col(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "serviceaccounts" => vec![
            NAME,
            col(
                "Secrets",
                "integer",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            AGE,
        ],
        "events" => vec![
            col(
                "Last Seen",
                "string",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                "string",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            col(
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col(
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            col(
                "Subobject",
                "string",
                1,
                "The subobject that this event is about.",
            ),
            col("Source", "string", 1, "The component reporting this event."),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded.",
            ),
            col(
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        "resourcequotas" => vec![
            NAME,
            AGE,
            col(
                "Request",
                "string",
                0,
                "Request represents a minimum amount of cpu/memory that a container may consume.",
            ),
            col(
                "Limit",
                "string",
                0,
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ],
        "limitranges" => vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                ..AGE
            },
        ],
        _ => vec![NAME, AGE],
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or_default()
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.into()
    }
}

fn count(v: &Value, field: &str) -> Value {
    json!(
        v.get(field)
            .and_then(Value::as_object)
            .map_or(0, |m| m.len()) as i64
    )
}

fn age(ts: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(ts, &Rfc3339) {
        Ok(t) => human_duration((now - t).whole_seconds()),
        Err(_) => "<unknown>".into(),
    }
}

/// apimachinery's duration.HumanDuration.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn cells(resource: &str, o: &Value, now: OffsetDateTime) -> Vec<Value> {
    let name = json!(s(o, &["metadata", "name"]));
    let created = age(s(o, &["metadata", "creationTimestamp"]), now);
    match resource {
        "pods" => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            let mut status = s(o, &["status", "phase"]).to_owned();
            if !s(o, &["status", "reason"]).is_empty() {
                status = s(o, &["status", "reason"]).to_owned();
            }
            if o["metadata"].get("deletionTimestamp").is_some() {
                status = "Terminating".into();
            }
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                json!(created),
                json!(or_none(s(o, &["status", "podIP"]))),
                json!(or_none(s(o, &["spec", "nodeName"]))),
                json!(or_none(s(o, &["status", "nominatedNodeName"]))),
                json!("<none>"),
            ]
        }
        "configmaps" => {
            let n = count(o, "data").as_i64().unwrap_or(0)
                + count(o, "binaryData").as_i64().unwrap_or(0);
            vec![name, json!(n), json!(created)]
        }
        "secrets" => vec![
            name,
            json!(s(o, &["type"])),
            count(o, "data"),
            json!(created),
        ],
        "namespaces" => vec![name, json!(s(o, &["status", "phase"])), json!(created)],
        "services" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                                None => format!("{}/{proto}", p["port"]),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let external: Vec<&str> = o["spec"]["externalIPs"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut selector: Vec<String> = o["spec"]["selector"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            selector.sort();
            vec![
                name,
                json!(s(o, &["spec", "type"])),
                json!(or_none(s(o, &["spec", "clusterIP"]))),
                json!(or_none(&external.join(","))),
                json!(or_none(&ports.join(","))),
                json!(created),
                json!(or_none(&selector.join(","))),
            ]
        }
        "serviceaccounts" => {
            let n = o["secrets"].as_array().map_or(0, Vec::len) as i64;
            vec![name, json!(n), json!(created)]
        }
        "events" => {
            let last = [
                s(o, &["lastTimestamp"]),
                s(o, &["eventTime"]),
                s(o, &["metadata", "creationTimestamp"]),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            let first = [
                s(o, &["firstTimestamp"]),
                s(o, &["eventTime"]),
                s(o, &["metadata", "creationTimestamp"]),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            let object = format!(
                "{}/{}",
                s(o, &["involvedObject", "kind"]).to_ascii_lowercase(),
                s(o, &["involvedObject", "name"])
            );
            let source = [
                s(o, &["source", "component"]),
                s(o, &["reportingComponent"]),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            vec![
                json!(age(last, now)),
                json!(s(o, &["type"])),
                json!(s(o, &["reason"])),
                json!(object),
                json!(s(o, &["involvedObject", "fieldPath"])),
                json!(source),
                json!(s(o, &["message"]).trim()),
                json!(age(first, now)),
                json!(o["count"].as_i64().unwrap_or(1).to_string()),
                name,
            ]
        }
        "resourcequotas" => vec![name, json!(created), json!(""), json!("")],
        "limitranges" => vec![name, json!(s(o, &["metadata", "creationTimestamp"]))],
        _ => vec![name, json!(created)],
    }
}

fn row_object(o: &Value, include: IncludeObject, version: &str) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(o.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": format!("meta.k8s.io/{version}"),
            "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// A Table of `objects`. `version` is the meta.k8s.io version asked for (v1 or v1beta1).
pub fn render(
    resource: &str,
    objects: &[Value],
    include: IncludeObject,
    version: &str,
    list_meta: Value,
) -> Value {
    let now = OffsetDateTime::now_utc();
    let column_definitions: Vec<Value> = columns(resource)
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(resource, o, now)});
            if let Some(obj) = row_object(o, include, version) {
                row["object"] = obj;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": list_meta,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_table_has_kubectl_columns_and_partial_metadata() {
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "apps", "creationTimestamp": "2020-01-01T00:00:00Z", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}
        });
        let t = render(
            "pods",
            &[pod],
            IncludeObject::Metadata,
            "v1",
            json!({"resourceVersion": "9"}),
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(&names[..5], &["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let row = &t["rows"][0];
        assert_eq!(row["cells"][0], "web");
        assert_eq!(row["cells"][1], "1/2");
        assert_eq!(row["cells"][2], "Running");
        assert_eq!(row["cells"][3], "3");
        assert_eq!(row["cells"][5], "10.0.0.9");
        assert_eq!(row["cells"][6], "node-1");
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["name"], "web");
        assert!(row["object"].get("spec").is_none());
        assert_eq!(
            row["cells"].as_array().unwrap().len(),
            t["columnDefinitions"].as_array().unwrap().len()
        );
    }

    #[test]
    fn include_object_modes_and_other_resources() {
        let cm = json!({"metadata": {"name": "c", "creationTimestamp": "2020-01-01T00:00:00Z"}, "data": {"a": "1", "b": "2"}});
        let t = render(
            "configmaps",
            std::slice::from_ref(&cm),
            IncludeObject::None,
            "v1",
            json!({}),
        );
        assert!(t["rows"][0].get("object").is_none());
        assert_eq!(t["rows"][0]["cells"][1], 2);
        let t = render(
            "configmaps",
            std::slice::from_ref(&cm),
            IncludeObject::Object,
            "v1beta1",
            json!({}),
        );
        assert_eq!(t["rows"][0]["object"], cm);
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1beta1");
        for r in super::super::resources::RESOURCES {
            let t = render(
                r.name,
                std::slice::from_ref(&cm),
                IncludeObject::None,
                "v1",
                json!({}),
            );
            assert_eq!(
                t["rows"][0]["cells"].as_array().unwrap().len(),
                t["columnDefinitions"].as_array().unwrap().len(),
                "{}",
                r.name
            );
        }
        assert!(IncludeObject::parse(Some("Bogus")).is_err());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(-5), "<invalid>");
    }
}
