//! Per-resource behaviour: decoding checks, field validation (Ignore/Warn/Strict), name
//! validation, defaults (pods get a plausible running status), and the demo seed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use super::resources::{self, ResourceDef};
use super::status::{ApiError, FieldError};
use super::store::Store;

pub const NODE_NAME: &str = "sandbox-node-1";
const HOST_IP: &str = "10.0.0.10";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            // kube's server-side default since 1.27.
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

pub fn now_rfc3339() -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A random RFC 4122 version-4 style UID.
pub fn new_uid() -> String {
    // Two ULIDs' 80 random bits each: their timestamp bits would make UIDs look alike.
    let r = (ulid::Ulid::new().random() << 48) ^ ulid::Ulid::new().random();
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// kube's generateName suffix alphabet (no vowels, no confusable characters).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = ulid::Ulid::new().random();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u128) as usize] as char;
            r /= ALPHABET.len() as u128;
            c
        })
        .collect()
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// Validates an object name the way kube does for this resource.
pub fn validate_name(def: &ResourceDef, name: &str) -> Vec<FieldError> {
    let (ok, msg) = match def.name {
        "namespaces" => (is_label(name), LABEL_MSG),
        "services" => (
            is_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
            DNS1035_MSG,
        ),
        _ => (is_subdomain(name), SUBDOMAIN_MSG),
    };
    if ok {
        vec![]
    } else {
        vec![FieldError::invalid("metadata.name", name, msg)]
    }
}

const METADATA_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];
const POD_SPEC_FIELDS: &[&str] = &[
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "containers",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
];
const CONTAINER_FIELDS: &[&str] = &[
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
];
const SERVICE_SPEC_FIELDS: &[&str] = &[
    "allocateLoadBalancerNodePorts",
    "clusterIP",
    "clusterIPs",
    "externalIPs",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "internalTrafficPolicy",
    "ipFamilies",
    "ipFamilyPolicy",
    "loadBalancerClass",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "ports",
    "publishNotReadyAddresses",
    "selector",
    "sessionAffinity",
    "sessionAffinityConfig",
    "trafficDistribution",
    "type",
];

/// Removes fields this type does not have, returning their paths (kube's strict decoding paths).
fn prune(map: &mut Map<String, Value>, known: &[&str], prefix: &str, out: &mut Vec<String>) {
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for k in unknown {
        map.remove(&k);
        out.push(format!("{prefix}{k}"));
    }
}

/// Prunes unknown fields (kube drops them when decoding into typed structs) and lists them.
pub fn prune_unknown_fields(def: &ResourceDef, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Some(map) = obj.as_object_mut() else {
        return unknown;
    };
    let mut top: Vec<&str> = vec!["apiVersion", "kind", "metadata"];
    top.extend_from_slice(def.fields);
    prune(map, &top, "", &mut unknown);
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        prune(meta, METADATA_FIELDS, "metadata.", &mut unknown);
    }
    let spec_fields = match def.name {
        "pods" => Some(POD_SPEC_FIELDS),
        "services" => Some(SERVICE_SPEC_FIELDS),
        "namespaces" => Some(&["finalizers"][..]),
        _ => None,
    };
    if let (Some(fields), Some(Value::Object(spec))) = (spec_fields, map.get_mut("spec")) {
        prune(spec, fields, "spec.", &mut unknown);
        if def.name == "pods" {
            for list in ["containers", "initContainers"] {
                if let Some(Value::Array(cs)) = spec.get_mut(list) {
                    for (i, c) in cs.iter_mut().enumerate() {
                        if let Some(c) = c.as_object_mut() {
                            prune(
                                c,
                                CONTAINER_FIELDS,
                                &format!("spec.{list}[{i}]."),
                                &mut unknown,
                            );
                        }
                    }
                }
            }
        }
    }
    unknown
}

/// Applies the field validation directive: Strict fails, Warn returns warnings, Ignore neither.
pub fn check_unknown(
    def: &ResourceDef,
    obj: &mut Value,
    fv: FieldValidation,
    for_patch: bool,
) -> Result<Vec<String>, ApiError> {
    let unknown = prune_unknown_fields(def, obj);
    if unknown.is_empty() {
        return Ok(vec![]);
    }
    let rendered: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    match fv {
        FieldValidation::Ignore => Ok(vec![]),
        FieldValidation::Warn => Ok(rendered),
        FieldValidation::Strict => {
            let detail = format!("strict decoding error: {}", rendered.join(", "));
            Err(ApiError::bad_request(if for_patch {
                detail
            } else {
                format!(
                    "{kind} in version \"v1\" cannot be handled as a {kind}: {detail}",
                    kind = def.kind
                )
            }))
        }
    }
}

/// Checks apiVersion/kind in a request body and fills them in when absent.
pub fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a {} object",
            def.kind
        )));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or(def.kind);
    let version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    if kind != def.kind || version != "v1" {
        return Err(ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {}: the object kind or version does not match the request",
            def.kind
        )));
    }
    // What decoding into the Go struct would refuse: wrong JSON types for object-valued fields.
    let type_error = |field: &str, v: &Value| {
        let found = match v {
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "bool",
            _ => "value",
        };
        ApiError::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: json: cannot unmarshal {found} into Go struct field {kind}.{field} of type object",
            kind = def.kind
        ))
    };
    for field in [
        "spec",
        "status",
        "data",
        "binaryData",
        "stringData",
        "involvedObject",
        "source",
    ] {
        if let Some(v) = map.get(field)
            && !v.is_object()
            && !v.is_null()
        {
            return Err(type_error(field, v));
        }
    }
    if let Some(Value::Object(meta)) = map.get("metadata") {
        for field in ["labels", "annotations"] {
            match meta.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => {
                    if let Some((_, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                        return Err(type_error(&format!("metadata.{field}"), v));
                    }
                }
                Some(v) => return Err(type_error(&format!("metadata.{field}"), v)),
            }
        }
    }
    map.insert("kind".into(), json!(def.kind));
    map.insert("apiVersion".into(), json!("v1"));
    match map.get("metadata") {
        None | Some(Value::Null) => {
            map.insert("metadata".into(), json!({}));
        }
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{} in version \"v1\" cannot be handled as a {}: metadata must be an object",
                def.kind, def.kind
            )));
        }
    }
    Ok(())
}

fn meta(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let m = map.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

/// Everything a create does to the body before the store sees it. Returns warnings.
pub fn prepare_create(
    def: &ResourceDef,
    obj: &mut Value,
    namespace: &str,
    fv: FieldValidation,
    store: &mut Store,
) -> Result<Vec<String>, ApiError> {
    check_type(def, obj)?;
    let warnings = check_unknown(def, obj, fv, false)?;
    let m = meta(obj)?;
    if def.namespaced {
        match m.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                m.insert("namespace".into(), json!(namespace));
            }
        }
    } else {
        m.remove("namespace");
    }
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let generate = m
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = if name.is_empty() && !generate.is_empty() {
        let n = format!("{generate}{}", random_suffix());
        m.insert("name".into(), json!(n));
        n
    } else {
        name
    };
    if name.is_empty() {
        return Err(ApiError::invalid(
            def.kind,
            "",
            &[FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    let mut errors = validate_name(def, &name);
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        m.remove(k);
    }
    m.insert("uid".into(), json!(new_uid()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    errors.extend(default_and_validate(def, obj, None, store)?);
    if !errors.is_empty() {
        return Err(ApiError::invalid(def.kind, &name, &errors));
    }
    Ok(warnings)
}

fn decode_secret_data(obj: &mut Value) -> Result<(), ApiError> {
    if let Some(Value::Object(data)) = obj.get("data") {
        for (k, v) in data {
            let s = v.as_str().unwrap_or_default();
            if STANDARD.decode(s).is_err() {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data.{k}"
                )));
            }
        }
    }
    if let Some(Value::Object(string_data)) = obj.get("stringData").cloned() {
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in string_data {
            obj["data"][k] = json!(STANDARD.encode(v.as_str().unwrap_or_default()));
        }
    }
    if let Some(map) = obj.as_object_mut() {
        map.remove("stringData");
    }
    if obj["type"].as_str().unwrap_or_default().is_empty() {
        obj["type"] = json!("Opaque");
    }
    Ok(())
}

/// Sets a field when absent; does nothing (rather than panic) when `obj` is not an object.
fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut()
        && map.get(key).is_none_or(Value::is_null)
    {
        map.insert(key.to_owned(), value);
    }
}

fn pod_defaults(obj: &mut Value, old: Option<&Value>, store: &mut Store) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    match spec["containers"].as_array() {
        Some(cs) if !cs.is_empty() => {}
        _ => errors.push(FieldError::required("spec.containers", "")),
    }
    for (key, value) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("serviceAccountName", json!("default")),
        ("serviceAccount", json!("default")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("nodeName", json!(NODE_NAME)),
        (
            "tolerations",
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]),
        ),
    ] {
        set_default(spec, key, value);
    }
    let mut container_statuses = Vec::new();
    let started = old
        .and_then(|o| o["status"]["startTime"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(now_rfc3339);
    if let Some(cs) = spec["containers"].as_array_mut() {
        for (i, c) in cs.iter_mut().enumerate() {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let image = c["image"].as_str().unwrap_or_default().to_owned();
            if name.is_empty() {
                errors.push(FieldError::required(
                    &format!("spec.containers[{i}].name"),
                    "",
                ));
            }
            if image.is_empty() {
                errors.push(FieldError::required(
                    &format!("spec.containers[{i}].image"),
                    "",
                ));
            }
            let tag = image.rsplit('/').next().unwrap_or_default();
            let pull = if !tag.contains(':') || tag.ends_with(":latest") {
                "Always"
            } else {
                "IfNotPresent"
            };
            set_default(c, "imagePullPolicy", json!(pull));
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
            let full_image = if image.contains('/') {
                format!("docker.io/{image}")
            } else {
                format!("docker.io/library/{image}")
            };
            // An unchanged container keeps its status, so no-op updates stay no-ops.
            let previous = old
                .and_then(|o| o["status"]["containerStatuses"].as_array())
                .and_then(|ss| {
                    ss.iter()
                        .find(|s| s["name"] == name.as_str() && s["image"] == full_image.as_str())
                });
            if let Some(previous) = previous {
                container_statuses.push(previous.clone());
                continue;
            }
            container_statuses.push(json!({
                "name": name,
                "image": full_image,
                "imageID": format!("{full_image}@sha256:{:064x}", i + 1),
                "containerID": format!("containerd://{}", new_uid().replace('-', "")),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
                "lastState": {},
            }));
        }
    }
    // Same containers: the status (possibly set through pods/status) stands as it is.
    if let Some(o) = old
        && o["status"].is_object()
        && o["spec"]["containers"] == spec["containers"]
    {
        obj["status"] = o["status"].clone();
        return errors;
    }
    let pod_ip = match old.and_then(|o| o["status"]["podIP"].as_str()) {
        Some(ip) => ip.to_owned(),
        None => format!("10.244.0.{}", 2 + store.next_counter() % 250),
    };
    let has_requests = spec["containers"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["resources"].as_object().is_some_and(|r| !r.is_empty()))
    });
    let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": started});
    obj["status"] = json!({
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "containerStatuses": container_statuses,
        "qosClass": if has_requests { "Burstable" } else { "BestEffort" },
    });
    errors
}

fn service_defaults(obj: &mut Value, old: Option<&Value>, store: &mut Store) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let svc_type = spec["type"].as_str().unwrap_or_default().to_owned();
    if svc_type != "ExternalName" {
        if spec["clusterIP"].as_str().unwrap_or_default().is_empty() {
            let ip = old
                .and_then(|o| o["spec"]["clusterIP"].as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    let n = store.next_counter();
                    format!("10.96.{}.{}", n / 250, 1 + n % 250)
                });
            spec["clusterIP"] = json!(ip);
        }
        let ip = spec["clusterIP"].clone();
        set_default(spec, "clusterIPs", json!([ip]));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        match spec["ports"].as_array_mut() {
            Some(ports) if !ports.is_empty() => {
                for (i, p) in ports.iter_mut().enumerate() {
                    set_default(p, "protocol", json!("TCP"));
                    match p["port"].as_i64() {
                        Some(port) if (1..=65535).contains(&port) => {
                            set_default(p, "targetPort", json!(port));
                        }
                        _ => {
                            errors.push(FieldError::required(&format!("spec.ports[{i}].port"), ""))
                        }
                    }
                }
            }
            _ => errors.push(FieldError::required("spec.ports", "")),
        }
    }
    obj["status"] = old
        .map(|o| o["status"].clone())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({"loadBalancer": {}}));
    errors
}

/// Resource defaults and validation, shared by create (`old` None) and update.
pub fn default_and_validate(
    def: &ResourceDef,
    obj: &mut Value,
    old: Option<&Value>,
    store: &mut Store,
) -> Result<Vec<FieldError>, ApiError> {
    Ok(match def.name {
        "pods" => pod_defaults(obj, old, store),
        "services" => service_defaults(obj, old, store),
        "secrets" => {
            decode_secret_data(obj)?;
            vec![]
        }
        "namespaces" => {
            let name = name_of(obj).to_owned();
            let m = meta(obj)?;
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            if !obj["spec"].is_object() {
                obj["spec"] = json!({});
            }
            set_default(&mut obj["spec"], "finalizers", json!(["kubernetes"]));
            obj["status"] = old
                .map(|o| o["status"].clone())
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({"phase": "Active"}));
            vec![]
        }
        "events" => {
            if !obj["involvedObject"].is_object() {
                obj["involvedObject"] = json!({});
            }
            if obj["involvedObject"]["namespace"].is_null() {
                obj["involvedObject"]["namespace"] = obj["metadata"]["namespace"].clone();
            }
            vec![]
        }
        _ => vec![],
    })
}

/// Builds the final object of an update (PUT, PATCH, or their /status forms).
pub fn prepare_update(
    def: &ResourceDef,
    subresource: &str,
    existing: &Value,
    mut new: Value,
    fv: FieldValidation,
    for_patch: bool,
    store: &mut Store,
) -> Result<(Value, Vec<String>), ApiError> {
    check_type(def, &mut new)?;
    let warnings = check_unknown(def, &mut new, fv, for_patch)?;
    let name = name_of(existing).to_owned();
    let new_name = name_of(&new);
    if !new_name.is_empty() && new_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        )));
    }
    let ns = existing["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    if let Some(new_ns) = new["metadata"]["namespace"].as_str()
        && !new_ns.is_empty()
        && new_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let current_rv = existing["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && rv != current_rv
    {
        return Err(ApiError::stale(def.name, &name));
    }
    let uid = existing["metadata"]["uid"].as_str().unwrap_or_default();
    if let Some(new_uid) = new["metadata"]["uid"].as_str()
        && !new_uid.is_empty()
        && new_uid != uid
    {
        return Err(ApiError::conflict(
            def.name,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {new_uid}, UID in object meta: {uid}"
            ),
        ));
    }
    let mut result = if subresource == "status" {
        // The status subresource changes status only.
        let mut r = existing.clone();
        r["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        r
    } else {
        let mut r = new;
        // Status is owned by the status subresource for types that have one.
        if def.fields.contains(&"status") {
            r["status"] = existing.get("status").cloned().unwrap_or(Value::Null);
        }
        r
    };
    {
        let m = meta(&mut result)?;
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match existing["metadata"].get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.insert("resourceVersion".into(), json!(current_rv));
    }
    if subresource != "status" {
        let errors = default_and_validate(def, &mut result, Some(existing), store)?;
        if !errors.is_empty() {
            return Err(ApiError::invalid(def.kind, &name, &errors));
        }
    }
    if let Some(obj) = result.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
    }
    Ok((result, warnings))
}

fn seed_object(store: &mut Store, resource: &str, mut obj: Value) {
    let Some(def) = resources::by_name(resource) else {
        return;
    };
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if prepare_create(def, &mut obj, &ns, FieldValidation::Ignore, store).is_ok() {
        if store.get(def.name, &ns, name_of(&obj)).is_none() {
            store.insert(def.name, obj);
        }
    } else {
        tracing::warn!(resource, "seed object failed validation");
    }
}

/// A namespace gets a `default` ServiceAccount, as the service account controller would make.
pub fn namespace_created(store: &mut Store, namespace: &str) {
    seed_object(
        store,
        "serviceaccounts",
        json!({"metadata": {"name": "default", "namespace": namespace}}),
    );
}

fn pod(ns: &str, name: &str, app: &str, image: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"containers": [{"name": app, "image": image, "ports": [{"containerPort": 8080}]}]},
    })
}

fn event(ns: &str, pod: &str, n: usize, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({
        "metadata": {"name": format!("{pod}.{n:016x}"), "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "v1"},
        "reason": reason,
        "message": message,
        "source": {"component": if reason == "Scheduled" { "default-scheduler" } else { "kubelet" }, "host": NODE_NAME},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": "Normal",
        "reportingComponent": if reason == "Scheduled" { "default-scheduler" } else { "kubelet" },
        "reportingInstance": NODE_NAME,
    })
}

/// The demo cluster: namespaces, pods, configmaps, secrets, services and pod events.
pub fn seed(store: &mut Store) {
    for ns in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "apps",
        "prod",
    ] {
        seed_object(store, "namespaces", json!({"metadata": {"name": ns}}));
        namespace_created(store, ns);
    }
    let pods = [
        pod("default", "hello", "hello", "nginx:1.27"),
        pod("apps", "web", "web", "nginx:1.27"),
        pod("apps", "worker", "worker", "busybox:1.36"),
        pod("prod", "api", "api", "ghcr.io/example/api:2.4.1"),
        pod(
            "prod",
            "payments",
            "payments",
            "ghcr.io/example/payments:1.9.0",
        ),
        pod(
            "kube-system",
            "coredns",
            "coredns",
            "registry.k8s.io/coredns/coredns:v1.11.3",
        ),
        pod(
            "kube-system",
            "kube-proxy",
            "kube-proxy",
            "registry.k8s.io/kube-proxy:v1.32.0",
        ),
    ];
    for p in pods {
        let ns = p["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = name_of(&p).to_owned();
        let image = p["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        seed_object(store, "pods", p);
        let uid = store
            .get("pods", &ns, &name)
            .map(|p| p["metadata"]["uid"].clone())
            .unwrap_or_default();
        for (i, (reason, message)) in [
            (
                "Scheduled",
                format!("Successfully assigned {ns}/{name} to {NODE_NAME}"),
            ),
            (
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            ),
            ("Created", "Created container".to_owned()),
            ("Started", "Started container".to_owned()),
        ]
        .into_iter()
        .enumerate()
        {
            let mut ev = event(&ns, &name, i + 1, reason, &message);
            ev["involvedObject"]["uid"] = uid.clone();
            seed_object(store, "events", ev);
        }
    }
    for (ns, name, data) in [
        (
            "apps",
            "web-config",
            json!({"LOG_LEVEL": "info", "LISTEN_ADDR": ":8080"}),
        ),
        (
            "prod",
            "api-config",
            json!({"LOG_LEVEL": "warn", "REGION": "eu-west-1"}),
        ),
        (
            "kube-system",
            "coredns",
            json!({"Corefile": ".:53 {\n    forward . /etc/resolv.conf\n}\n"}),
        ),
    ] {
        seed_object(
            store,
            "configmaps",
            json!({"metadata": {"name": name, "namespace": ns}, "data": data}),
        );
    }
    seed_object(
        store,
        "secrets",
        json!({"metadata": {"name": "db-credentials", "namespace": "apps"},
               "stringData": {"username": "app", "password": "s3cr3t-sandbox-password"}}),
    );
    seed_object(
        store,
        "secrets",
        json!({"metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
               "type": "bootstrap.kubernetes.io/token",
               "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef"}}),
    );
    for (ns, name, port, selector) in [
        ("default", "kubernetes", 443, json!(null)),
        ("apps", "web", 80, json!({"app": "web"})),
        ("prod", "api", 80, json!({"app": "api"})),
    ] {
        let mut svc = json!({"metadata": {"name": name, "namespace": ns},
                             "spec": {"ports": [{"name": "http", "port": port, "targetPort": 8080}]}});
        if selector.is_object() {
            svc["spec"]["selector"] = selector;
        }
        seed_object(store, "services", svc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str) -> &'static ResourceDef {
        resources::by_name(name).unwrap()
    }

    #[test]
    fn names_are_validated_like_kube() {
        assert!(validate_name(def("configmaps"), "a.b-c").is_empty());
        assert!(!validate_name(def("configmaps"), "Bad_Name").is_empty());
        assert!(!validate_name(def("namespaces"), "a.b").is_empty());
        assert!(!validate_name(def("services"), "1abc").is_empty());
        assert!(validate_name(def("services"), "abc-1").is_empty());
    }

    #[test]
    fn create_fills_metadata_defaults_and_generates_names() {
        let mut store = Store::new();
        let mut obj = json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let warnings = prepare_create(
            def("pods"),
            &mut obj,
            "apps",
            FieldValidation::Strict,
            &mut store,
        )
        .unwrap();
        assert!(warnings.is_empty());
        let name = name_of(&obj);
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(obj["kind"], "Pod");
        assert_eq!(obj["metadata"]["namespace"], "apps");
        assert_eq!(obj["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert_eq!(obj["status"]["phase"], "Running");
        assert_eq!(obj["status"]["containerStatuses"][0]["ready"], true);
        assert_eq!(obj["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(obj["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn create_rejects_bad_input() {
        let mut store = Store::new();
        let mut no_name = json!({"data": {}});
        let e = prepare_create(
            def("configmaps"),
            &mut no_name,
            "apps",
            FieldValidation::Warn,
            &mut store,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "ConfigMap \"\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        let mut bad = json!({"metadata": {"name": "Bad_Name"}});
        let e = prepare_create(
            def("configmaps"),
            &mut bad,
            "apps",
            FieldValidation::Warn,
            &mut store,
        )
        .unwrap_err();
        assert!(e.message.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));
        let mut wrong_ns = json!({"metadata": {"name": "x", "namespace": "prod"}});
        let e = prepare_create(
            def("configmaps"),
            &mut wrong_ns,
            "apps",
            FieldValidation::Warn,
            &mut store,
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        let mut wrong_kind = json!({"kind": "Secret", "metadata": {"name": "x"}});
        assert_eq!(
            prepare_create(
                def("configmaps"),
                &mut wrong_kind,
                "apps",
                FieldValidation::Warn,
                &mut store
            )
            .unwrap_err()
            .code,
            400
        );
        let mut not_object = json!([1, 2]);
        assert_eq!(
            prepare_create(
                def("configmaps"),
                &mut not_object,
                "apps",
                FieldValidation::Warn,
                &mut store
            )
            .unwrap_err()
            .code,
            400
        );
        let mut no_containers = json!({"metadata": {"name": "p"}, "spec": {}});
        let e = prepare_create(
            def("pods"),
            &mut no_containers,
            "apps",
            FieldValidation::Warn,
            &mut store,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        let mut bad_b64 = json!({"metadata": {"name": "s"}, "data": {"k": "%%%"}});
        assert_eq!(
            prepare_create(
                def("secrets"),
                &mut bad_b64,
                "apps",
                FieldValidation::Warn,
                &mut store
            )
            .unwrap_err()
            .code,
            400
        );
    }

    #[test]
    fn field_validation_modes() {
        let mut store = Store::new();
        let body = json!({"metadata": {"name": "c", "bogus": 1}, "data": {}, "extra": true});
        let mut strict = body.clone();
        let e = prepare_create(
            def("configmaps"),
            &mut strict,
            "apps",
            FieldValidation::Strict,
            &mut store,
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"extra\", unknown field \"metadata.bogus\""
        );
        let mut warn = body.clone();
        let w = prepare_create(
            def("configmaps"),
            &mut warn,
            "apps",
            FieldValidation::Warn,
            &mut store,
        )
        .unwrap();
        assert_eq!(
            w,
            vec![
                "unknown field \"extra\"",
                "unknown field \"metadata.bogus\""
            ]
        );
        assert!(warn.get("extra").is_none(), "unknown fields are dropped");
        let mut ignore = body;
        assert!(
            prepare_create(
                def("configmaps"),
                &mut ignore,
                "apps",
                FieldValidation::Ignore,
                &mut store
            )
            .unwrap()
            .is_empty()
        );
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "imagee": "x"}]}});
        let e = prepare_create(
            def("pods"),
            &mut pod,
            "apps",
            FieldValidation::Strict,
            &mut store,
        )
        .unwrap_err();
        assert!(
            e.message
                .ends_with("unknown field \"spec.containers[0].imagee\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn secrets_fold_string_data() {
        let mut store = Store::new();
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}, "data": {"a": "Yg=="}});
        prepare_create(
            def("secrets"),
            &mut s,
            "apps",
            FieldValidation::Strict,
            &mut store,
        )
        .unwrap();
        assert_eq!(s["data"]["password"], STANDARD.encode("hunter2"));
        assert_eq!(s["data"]["a"], "Yg==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn updates_check_versions_and_keep_identity() {
        let mut store = Store::new();
        let mut cm = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        prepare_create(
            def("configmaps"),
            &mut cm,
            "apps",
            FieldValidation::Strict,
            &mut store,
        )
        .unwrap();
        let cm = store.insert("configmaps", cm);
        let mut stale = cm.clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        let e = prepare_update(
            def("configmaps"),
            "",
            &cm,
            stale,
            FieldValidation::Strict,
            false,
            &mut store,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        let mut fresh =
            json!({"metadata": {"name": "c", "uid": cm["metadata"]["uid"]}, "data": {"a": "2"}});
        fresh["metadata"]["creationTimestamp"] = json!("2000-01-01T00:00:00Z");
        let (out, _) = prepare_update(
            def("configmaps"),
            "",
            &cm,
            fresh,
            FieldValidation::Strict,
            false,
            &mut store,
        )
        .unwrap();
        assert_eq!(out["data"]["a"], "2");
        assert_eq!(
            out["metadata"]["creationTimestamp"],
            cm["metadata"]["creationTimestamp"]
        );
        assert_eq!(out["metadata"]["namespace"], "apps");
        let renamed = json!({"metadata": {"name": "other"}});
        assert_eq!(
            prepare_update(
                def("configmaps"),
                "",
                &cm,
                renamed,
                FieldValidation::Strict,
                false,
                &mut store
            )
            .unwrap_err()
            .code,
            400
        );
    }

    #[test]
    fn pod_updates_keep_status_and_a_no_op_is_identical() {
        let mut store = Store::new();
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
        prepare_create(
            def("pods"),
            &mut pod,
            "apps",
            FieldValidation::Strict,
            &mut store,
        )
        .unwrap();
        let pod = store.insert("pods", pod);
        let (same, _) = prepare_update(
            def("pods"),
            "",
            &pod,
            pod.clone(),
            FieldValidation::Strict,
            false,
            &mut store,
        )
        .unwrap();
        assert_eq!(same, pod);
        let mut changed = pod.clone();
        changed["spec"]["containers"][0]["image"] = json!("nginx:2");
        let (out, _) = prepare_update(
            def("pods"),
            "",
            &pod,
            changed,
            FieldValidation::Strict,
            false,
            &mut store,
        )
        .unwrap();
        assert_eq!(out["status"]["podIP"], pod["status"]["podIP"]);
        assert_eq!(
            out["status"]["containerStatuses"][0]["image"],
            "docker.io/library/nginx:2"
        );
    }

    #[test]
    fn seed_has_the_documented_objects() {
        let mut store = Store::new();
        seed(&mut store);
        for ns in ["default", "kube-system", "kube-public", "apps", "prod"] {
            assert!(store.get("namespaces", "", ns).is_some(), "{ns}");
            assert!(
                store.get("serviceaccounts", ns, "default").is_some(),
                "{ns}"
            );
        }
        let secret = store.get("secrets", "apps", "db-credentials").unwrap();
        assert!(secret["data"]["password"].is_string());
        assert!(store.list("secrets", Some("kube-system")).count() > 0);
        for ns in ["apps", "prod", "kube-system"] {
            assert!(store.list("pods", Some(ns)).count() > 0, "{ns}");
        }
        assert!(store.list("configmaps", None).count() >= 3);
        assert!(store.list("events", Some("apps")).count() > 0);
    }
}
