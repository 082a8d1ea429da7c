//! Search indexes over the ledger: which entries carry a given principal, owner, namespace,
//! verb, resource, request id, session id or decision, and entries by time.
//!
//! Each index key is `kind (1 byte) ‖ value ‖ 0x00 ‖ entry index (u64 BE)` with an empty value,
//! in the `index` column family, written in the same batch as the entry. Values are the event's
//! own strings, escaped so that no value is a prefix of another's keys: `0x00` becomes
//! `0x01 0x01` and `0x01` becomes `0x01 0x02` (order is kept; plain text is unchanged).
//! Time keys are `'t' ‖ received_at (i64 BE with the sign bit flipped, so they sort) ‖ index`.

use serde::Deserialize;

/// What an index is by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Principal,
    Owner,
    Namespace,
    Verb,
    Resource,
    /// The `subject` of request events: the request id.
    Request,
    /// The `subject` of session events: the session id.
    Session,
    /// `allow`, `deny` or `approve` (policy's decision in `request.received`).
    Decision,
    /// The event's type name (`request.received`, `approval.decided`, …).
    Kind,
}

impl Field {
    fn tag(self) -> u8 {
        match self {
            Field::Principal => b'p',
            Field::Owner => b'o',
            Field::Namespace => b'n',
            Field::Verb => b'v',
            Field::Resource => b'r',
            Field::Request => b'q',
            Field::Session => b's',
            Field::Decision => b'd',
            Field::Kind => b'k',
        }
    }
}

pub const TIME_TAG: u8 = b't';

/// The key prefix of every entry indexed under `field` = `value`.
pub fn prefix(field: Field, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + 2);
    key.push(field.tag());
    for &b in value.as_bytes() {
        match b {
            0 => key.extend_from_slice(&[1, 1]),
            1 => key.extend_from_slice(&[1, 2]),
            b => key.push(b),
        }
    }
    key.push(0);
    key
}

pub fn key(field: Field, value: &str, index: u64) -> Vec<u8> {
    let mut key = prefix(field, value);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Nanoseconds since the epoch as a key part that sorts like the signed value.
pub fn time_part(nanos: i64) -> [u8; 8] {
    ((nanos as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn time_key(nanos: i64, index: u64) -> Vec<u8> {
    let mut key = vec![TIME_TAG];
    key.extend_from_slice(&time_part(nanos));
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The entry index at the end of an index key.
pub fn entry_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    data: Data,
}

#[derive(Default, Deserialize)]
struct Data {
    #[serde(default)]
    identity: Option<Identity>,
    #[serde(default)]
    request: Option<Request>,
    #[serde(default)]
    decision: Option<Decision>,
    /// Session events name their principal and namespace directly.
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    principal: String,
    #[serde(default)]
    owner: Option<String>,
}

#[derive(Deserialize)]
struct Request {
    #[serde(default)]
    verb: String,
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
}

#[derive(Deserialize)]
struct Decision {
    #[serde(default)]
    action: String,
}

/// `group/resource[/subresource]`, or `resource[/subresource]` for the core group: how
/// resources are named in searches.
pub fn resource_name(api_group: &str, resource: &str, subresource: &str) -> String {
    let mut name = if api_group.is_empty() {
        resource.to_owned()
    } else {
        format!("{api_group}/{resource}")
    };
    if !subresource.is_empty() {
        name.push('/');
        name.push_str(subresource);
    }
    name
}

/// The index entries of one event (an event that is not JSON gets only its time).
pub fn fields(event: &[u8]) -> Vec<(Field, String)> {
    let Ok(event) = serde_json::from_slice::<Event>(event) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let name = event
        .kind
        .strip_prefix("dev.gatehouse.")
        .and_then(|k| k.strip_suffix(".v1"))
        .unwrap_or(&event.kind)
        .to_owned();
    let session = name.starts_with("session.");
    if !event.subject.is_empty() {
        let field = if session {
            Field::Session
        } else {
            Field::Request
        };
        out.push((field, event.subject.clone()));
    }
    if !name.is_empty() {
        out.push((Field::Kind, name));
    }
    let data = event.data;
    if let Some(identity) = data.identity {
        if !identity.principal.is_empty() {
            out.push((Field::Principal, identity.principal));
        }
        if let Some(owner) = identity.owner.filter(|o| !o.is_empty()) {
            out.push((Field::Owner, owner));
        }
    }
    if let Some(principal) = data.principal.filter(|p| !p.is_empty()) {
        out.push((Field::Principal, principal));
    }
    if let Some(request) = data.request {
        if !request.namespace.is_empty() {
            out.push((Field::Namespace, request.namespace));
        }
        if !request.verb.is_empty() {
            out.push((Field::Verb, request.verb));
        }
        if !request.resource.is_empty() {
            out.push((
                Field::Resource,
                resource_name(&request.api_group, &request.resource, &request.subresource),
            ));
        }
    }
    if let Some(namespace) = data.namespace.filter(|n| !n.is_empty()) {
        out.push((Field::Namespace, namespace));
    }
    if let Some(decision) = data.decision.filter(|d| !d.action.is_empty()) {
        out.push((Field::Decision, decision.action));
    }
    out.sort_by_key(|(f, v)| (f.tag(), v.clone()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_event_is_indexed_by_everything_it_names() {
        let event = br#"{"type":"dev.gatehouse.request.received.v1","subject":"01REQ","data":{
            "identity":{"principal":"ci-deployer","owner":"alice@example.com"},
            "request":{"verb":"patch","api_group":"apps","resource":"deployments","subresource":"scale","namespace":"prod"},
            "decision":{"action":"approve"}}}"#;
        let fields = fields(event);
        for expected in [
            (Field::Principal, "ci-deployer"),
            (Field::Owner, "alice@example.com"),
            (Field::Namespace, "prod"),
            (Field::Verb, "patch"),
            (Field::Resource, "apps/deployments/scale"),
            (Field::Request, "01REQ"),
            (Field::Decision, "approve"),
            (Field::Kind, "request.received"),
        ] {
            assert!(
                fields.contains(&(expected.0, expected.1.to_owned())),
                "{expected:?} missing from {fields:?}"
            );
        }
        let session = br#"{"type":"dev.gatehouse.session.data.v1","subject":"01SES","data":{}}"#;
        assert!(fields_of(session).contains(&(Field::Session, "01SES".to_owned())));
    }

    fn fields_of(event: &[u8]) -> Vec<(Field, String)> {
        fields(event)
    }

    #[test]
    fn keys_sort_by_value_then_index_and_time_keys_by_time() {
        assert!(key(Field::Principal, "a", 9) < key(Field::Principal, "a", 10));
        assert!(key(Field::Principal, "a", u64::MAX) < key(Field::Principal, "ab", 0));
        // A value holding the terminator is escaped, not cut: it is not found under a shorter one.
        assert!(!key(Field::Principal, "a\0b", 1).starts_with(&prefix(Field::Principal, "a")));
        assert!(key(Field::Principal, "a\0b", 1).starts_with(&prefix(Field::Principal, "a\0b")));
        assert!(!key(Field::Principal, "a\u{1}", 1).starts_with(&prefix(Field::Principal, "a\0")));
        assert_eq!(prefix(Field::Principal, "alice"), b"palice\0");
        assert!(time_key(-5, 0) < time_key(3, 0));
        assert!(time_key(3, 0) < time_key(4, 0));
        assert_eq!(entry_of(&key(Field::Verb, "get", 77)), Some(77));
    }
}
