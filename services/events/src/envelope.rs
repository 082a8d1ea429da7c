//! CloudEvents 1.0 envelope in JSON structured mode.
//!
//! `id` is a ULID and doubles as the JetStream `Nats-Msg-Id`, so a retried publish of the same
//! event is deduplicated by the stream. `subject` is the request id (or session id) the event is
//! about, which lets a reader group the events of one request without parsing `data`.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Every Gatehouse subject starts with this; the `GATEHOUSE` stream captures `gatehouse.>`.
pub const SUBJECT_PREFIX: &str = "gatehouse";

/// The CloudEvents spec version Gatehouse emits.
pub const SPEC_VERSION: &str = "1.0";

/// A typed event payload. `NAME` is the short name (`request.received`); the CloudEvents `type`
/// and the NATS subject are derived from it so the three can never disagree.
pub trait Payload: Serialize + DeserializeOwned {
    /// Short event name, e.g. `request.received`.
    const NAME: &'static str;

    /// The CloudEvents `type`: `dev.gatehouse.<name>.v1`.
    fn event_type() -> String {
        format!("dev.gatehouse.{}.v1", Self::NAME)
    }

    /// The NATS subject: `gatehouse.<name>`.
    fn subject() -> String {
        format!("{SUBJECT_PREFIX}.{}", Self::NAME)
    }
}

/// A ULID, rendered in its canonical 26-character Crockford base32 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(ulid::Ulid);

impl EventId {
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }

    /// The same id from the same inputs, on every replica: replicas that each record one
    /// observation (a refused message every proxy saw) publish it once, deduplicated by
    /// JetStream. `at_ms` is the observation's own time (e.g. the message's stream timestamp).
    pub fn derived(at_ms: u64, what: &[u8]) -> Self {
        let hash = blake3::hash(what);
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&hash.as_bytes()[..10]);
        Self(ulid::Ulid::from_parts(at_ms, u128::from_be_bytes(random)))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The CloudEvents envelope around a typed payload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub specversion: String,
    pub id: String,
    /// `gatehouse/<service>/<replica>`: which process said this.
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339, UTC, when the event was created.
    pub time: String,
    /// The request id (or session id) this event is about.
    pub subject: String,
    pub datacontenttype: String,
    pub data: T,
}

impl<T: Payload> Envelope<T> {
    /// Wraps `data` in a new envelope with a fresh id and the current time.
    pub fn new(source: &str, subject: &str, data: T) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: EventId::new().to_string(),
            source: source.to_owned(),
            event_type: T::event_type(),
            time: now_rfc3339(),
            subject: subject.to_owned(),
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// The NATS subject this event is published on.
    pub fn nats_subject(&self) -> String {
        T::subject()
    }

    /// The exact bytes that are published, and that the ledger later stores and hashes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

/// The `source` attribute for a service replica.
pub fn source(service: &str, replica: &str) -> String {
    format!("gatehouse/{service}/{replica}")
}

/// Current time as RFC 3339 UTC with microsecond precision.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Formats a timestamp as RFC 3339 in UTC (`...Z`).
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // Truncate to microseconds: nanoseconds add noise and some parsers reject 9 digits.
    let t = t.replace_nanosecond(t.microsecond() * 1_000).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestForwarded;

    #[test]
    fn type_and_subject_derive_from_the_name() {
        assert_eq!(
            RequestForwarded::event_type(),
            "dev.gatehouse.request.forwarded.v1"
        );
        assert_eq!(RequestForwarded::subject(), "gatehouse.request.forwarded");
    }

    #[test]
    fn envelope_has_ulid_id_and_utc_time() {
        let e = Envelope::new(
            &source("proxy", "r1"),
            "01J0000000000000000000000",
            RequestForwarded {
                request_id: "01J0000000000000000000000".into(),
                upstream: "https://10.0.0.1:6443".into(),
                impersonated_user: "ci-deployer".into(),
                impersonated_groups: vec!["deployers".into()],
            },
        );
        assert_eq!(e.id.len(), 26);
        assert!(ulid::Ulid::from_string(&e.id).is_ok());
        assert!(e.time.ends_with('Z'), "{}", e.time);
        assert_eq!(e.source, "gatehouse/proxy/r1");
        let decoded: serde_json::Value = serde_json::from_slice(&e.to_bytes().unwrap()).unwrap();
        assert_eq!(decoded["id"], e.id.as_str());
        assert_eq!(decoded["type"], "dev.gatehouse.request.forwarded.v1");
    }

    #[test]
    fn two_ids_differ() {
        assert_ne!(EventId::new(), EventId::new());
    }
}
