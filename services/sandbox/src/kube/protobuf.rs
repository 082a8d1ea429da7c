//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! client-go's typed core/v1 clients send protobuf since 1.31, so `kubectl create namespace`,
//! `create configmap|secret|serviceaccount|service|quota` and `kubectl run` need it. Only
//! request bodies are decoded (responses are always JSON, which those clients also accept),
//! and only the fields those commands can set are mapped; unmapped fields are skipped.
//!
//! gogo-protobuf writes every non-pointer field, zero or not, so zero scalars are dropped
//! (JSON `omitempty`) unless the Go field is a pointer, where presence is meaningful.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::status::ApiError;

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    StrMap,
    BytesMap,
    QuantityMap,
    Time,
    IntOrString,
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
    /// A Go pointer: present means set, even when zero.
    pointer: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
        pointer: false,
    }
}

const fn rep(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        repeated: true,
        ..f(num, name, ty)
    }
}

const fn ptr(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        pointer: true,
        ..f(num, name, ty)
    }
}

static TYPE_META: &[Field] = &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)];

static OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    ptr(6, "controller", Ty::Bool),
    ptr(7, "blockOwnerDeletion", Ty::Bool),
];

static OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    ptr(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    rep(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    rep(14, "finalizers", Ty::Str),
];

static LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Ty::Str)];

static OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];

static CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::StrMap),
    f(3, "binaryData", Ty::BytesMap),
    ptr(4, "immutable", Ty::Bool),
];

static SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::BytesMap),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::StrMap),
    ptr(5, "immutable", Ty::Bool),
];

static NAMESPACE_SPEC: &[Field] = &[rep(1, "finalizers", Ty::Str)];

static NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(NAMESPACE_SPEC)),
];

static SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    rep(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    ptr(4, "automountServiceAccountToken", Ty::Bool),
];

static CONTAINER_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "hostPort", Ty::Int),
    f(3, "containerPort", Ty::Int),
    f(4, "protocol", Ty::Str),
    f(5, "hostIP", Ty::Str),
];

static ENV_VAR: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)];

static RESOURCE_REQUIREMENTS: &[Field] = &[
    f(1, "limits", Ty::QuantityMap),
    f(2, "requests", Ty::QuantityMap),
];

static VOLUME_MOUNT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "readOnly", Ty::Bool),
    f(3, "mountPath", Ty::Str),
    f(4, "subPath", Ty::Str),
];

static CONTAINER: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "image", Ty::Str),
    rep(3, "command", Ty::Str),
    rep(4, "args", Ty::Str),
    f(5, "workingDir", Ty::Str),
    rep(6, "ports", Ty::Msg(CONTAINER_PORT)),
    rep(7, "env", Ty::Msg(ENV_VAR)),
    f(8, "resources", Ty::Msg(RESOURCE_REQUIREMENTS)),
    rep(9, "volumeMounts", Ty::Msg(VOLUME_MOUNT)),
    f(13, "terminationMessagePath", Ty::Str),
    f(14, "imagePullPolicy", Ty::Str),
    f(16, "stdin", Ty::Bool),
    f(17, "stdinOnce", Ty::Bool),
    f(18, "tty", Ty::Bool),
    f(20, "terminationMessagePolicy", Ty::Str),
];

static POD_SPEC: &[Field] = &[
    rep(2, "containers", Ty::Msg(CONTAINER)),
    f(3, "restartPolicy", Ty::Str),
    ptr(4, "terminationGracePeriodSeconds", Ty::Int),
    ptr(5, "activeDeadlineSeconds", Ty::Int),
    f(6, "dnsPolicy", Ty::Str),
    f(7, "nodeSelector", Ty::StrMap),
    f(8, "serviceAccountName", Ty::Str),
    f(10, "nodeName", Ty::Str),
    f(11, "hostNetwork", Ty::Bool),
    f(12, "hostPID", Ty::Bool),
    f(13, "hostIPC", Ty::Bool),
    rep(15, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    f(16, "hostname", Ty::Str),
    f(17, "subdomain", Ty::Str),
    f(19, "schedulerName", Ty::Str),
    rep(20, "initContainers", Ty::Msg(CONTAINER)),
    ptr(21, "automountServiceAccountToken", Ty::Bool),
    f(24, "priorityClassName", Ty::Str),
];

static POD: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(POD_SPEC)),
];

static SERVICE_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "protocol", Ty::Str),
    f(3, "port", Ty::Int),
    f(4, "targetPort", Ty::IntOrString),
    f(5, "nodePort", Ty::Int),
];

static SERVICE_SPEC: &[Field] = &[
    rep(1, "ports", Ty::Msg(SERVICE_PORT)),
    f(2, "selector", Ty::StrMap),
    f(3, "clusterIP", Ty::Str),
    f(4, "type", Ty::Str),
    rep(5, "externalIPs", Ty::Str),
    f(7, "sessionAffinity", Ty::Str),
    f(10, "externalName", Ty::Str),
];

static SERVICE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(SERVICE_SPEC)),
];

static RESOURCE_QUOTA_SPEC: &[Field] = &[f(1, "hard", Ty::QuantityMap), rep(2, "scopes", Ty::Str)];

static RESOURCE_QUOTA: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(RESOURCE_QUOTA_SPEC)),
];

fn schema_for(kind: &str) -> Option<&'static [Field]> {
    Some(match kind {
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "Namespace" => NAMESPACE,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "Pod" => POD,
        "Service" => SERVICE,
        "ResourceQuota" => RESOURCE_QUOTA,
        _ => return None,
    })
}

/// Converts a map entry's value bytes to JSON.
type Convert = fn(&[u8]) -> Result<Value, String>;

enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Raw<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let raw = match key & 7 {
            0 => Raw::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Raw::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Raw::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Raw::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((key >> 3, raw)))
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_owned())
}

/// Decodes a map entry message (key 1, value 2) with a value converter.
fn map_entry(
    b: &[u8],
    value: impl Fn(&[u8]) -> Result<Value, String>,
) -> Result<(String, Value), String> {
    let mut r = Reader { buf: b };
    let (mut k, mut v) = (String::new(), None);
    while let Some((num, raw)) = r.next()? {
        match (num, raw) {
            (1, Raw::Bytes(b)) => k = text(b)?,
            (2, Raw::Bytes(b)) => v = Some(value(b)?),
            _ => {}
        }
    }
    Ok((k, v.unwrap_or_else(|| value(&[]).unwrap_or(Value::Null))))
}

fn quantity(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader { buf: b };
    let mut s = String::new();
    while let Some((num, raw)) = r.next()? {
        if let (1, Raw::Bytes(b)) = (num, raw) {
            s = text(b)?;
        }
    }
    Ok(json!(s))
}

fn time(b: &[u8]) -> Result<Option<Value>, String> {
    let mut r = Reader { buf: b };
    let mut seconds = 0i64;
    while let Some((num, raw)) = r.next()? {
        if let (1, Raw::Varint(v)) = (num, raw) {
            seconds = v as i64;
        }
    }
    if seconds == 0 {
        return Ok(None);
    }
    let t = OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| e.to_string())?;
    Ok(Some(json!(t.format(&Rfc3339).map_err(|e| e.to_string())?)))
}

fn int_or_string(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader { buf: b };
    let (mut kind, mut int, mut string) = (0u64, 0i64, String::new());
    while let Some((num, raw)) = r.next()? {
        match (num, raw) {
            (1, Raw::Varint(v)) => kind = v,
            (2, Raw::Varint(v)) => int = v as i32 as i64,
            (3, Raw::Bytes(b)) => string = text(b)?,
            _ => {}
        }
    }
    Ok(if kind == 1 { json!(string) } else { json!(int) })
}

fn message(buf: &[u8], schema: &[Field]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { buf };
    while let Some((num, raw)) = r.next()? {
        let Some(field) = schema.iter().find(|f| f.num == num) else {
            continue;
        };
        let map_value: Option<Convert> = match field.ty {
            Ty::StrMap => Some(|b| Ok(json!(text(b)?))),
            Ty::BytesMap => Some(|b| Ok(json!(STANDARD.encode(b)))),
            Ty::QuantityMap => Some(quantity),
            _ => None,
        };
        if let Some(convert) = map_value {
            let Raw::Bytes(b) = raw else {
                return Err(format!("{}: expected a map entry", field.name));
            };
            let (k, v) = map_entry(b, convert)?;
            let entry = out.entry(field.name).or_insert_with(|| json!({}));
            if let Some(m) = entry.as_object_mut() {
                m.insert(k, v);
            }
            continue;
        }
        let value = match (field.ty, raw) {
            (Ty::Str, Raw::Bytes(b)) => {
                Some(json!(text(b)?)).filter(|v| field.pointer || field.repeated || v != "")
            }
            (Ty::Int, Raw::Varint(v)) => Some(json!(v as i64)).filter(|_| field.pointer || v != 0),
            (Ty::Bool, Raw::Varint(v)) => Some(json!(v != 0)).filter(|_| field.pointer || v != 0),
            (Ty::Msg(inner), Raw::Bytes(b)) => Some(Value::Object(message(b, inner)?)),
            (Ty::Time, Raw::Bytes(b)) => time(b)?,
            (Ty::IntOrString, Raw::Bytes(b)) => Some(int_or_string(b)?),
            (_, Raw::Fixed) => None,
            _ => return Err(format!("{}: unexpected wire type", field.name)),
        };
        let Some(value) = value else {
            continue;
        };
        if field.repeated {
            let entry = out.entry(field.name).or_insert_with(|| json!([]));
            if let Some(a) = entry.as_array_mut() {
                a.push(value);
            }
        } else {
            out.insert(field.name.to_owned(), value);
        }
    }
    Ok(out)
}

/// Decodes a `k8s\0`-prefixed runtime.Unknown envelope into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("unable to decode protobuf body: {e}"));
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| bad("missing the k8s protobuf prefix".into()))?;
    let mut r = Reader { buf: envelope };
    let (mut type_meta, mut raw) = (Map::new(), None);
    while let Some((num, value)) = r.next().map_err(bad)? {
        match (num, value) {
            (1, Raw::Bytes(b)) => type_meta = message(b, TYPE_META).map_err(bad)?,
            (2, Raw::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let kind = type_meta
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let schema = schema_for(&kind).ok_or_else(|| {
        ApiError::unsupported_media_type(&format!("{MEDIA_TYPE} for kind {kind:?}"))
    })?;
    let mut obj = message(raw.unwrap_or_default(), schema).map_err(bad)?;
    obj.insert("kind".into(), json!(kind));
    obj.insert(
        "apiVersion".into(),
        type_meta
            .get("apiVersion")
            .cloned()
            .unwrap_or_else(|| json!("v1")),
    );
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }

    #[test]
    fn decodes_a_configmap_envelope_like_client_go_writes_it() {
        let mut meta = Vec::new();
        bytes_field(1, b"settings", &mut meta);
        bytes_field(2, b"", &mut meta); // gogo writes empty strings too
        bytes_field(3, b"apps", &mut meta);
        varint(7 << 3, &mut meta);
        varint(0, &mut meta);
        bytes_field(8, b"", &mut meta); // zero creationTimestamp
        bytes_field(11, &entry("team", b"x"), &mut meta);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry("a", b"1"), &mut cm);
        bytes_field(2, &entry("b", b"2"), &mut cm);
        bytes_field(3, &entry("bin", &[0, 1]), &mut cm);
        varint(99 << 3, &mut cm); // an unmapped field is skipped
        varint(5, &mut cm);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"ConfigMap", &mut tm);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut body);
        bytes_field(2, &cm, &mut body);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"kind": "ConfigMap", "apiVersion": "v1",
                   "metadata": {"name": "settings", "namespace": "apps", "labels": {"team": "x"}},
                   "data": {"a": "1", "b": "2"}, "binaryData": {"bin": "AAE="}})
        );
    }

    #[test]
    fn rejects_garbage_and_unknown_kinds() {
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        let mut tm = Vec::new();
        bytes_field(2, b"Deployment", &mut tm);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut body);
        assert_eq!(decode(&body).unwrap_err().code, 415);
    }
}
