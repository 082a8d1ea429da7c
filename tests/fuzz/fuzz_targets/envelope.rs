//! The event envelope decoder: `serde_json::from_slice::<Envelope<T>>`, as the evidence,
//! approval and proxy services read events off the bus, for every payload type, checked
//! against the hand-written JSON Schemas of `schemas/events/` (the contract other languages
//! read).
//!
//! Input: one event's bytes (a NATS message payload).
//!
//! Invariants:
//! - decoding never panics, for any payload type;
//! - decode ∘ encode round-trips: what decodes, encoded again, decodes to the same value, and
//!   encoding that gives the same bytes (what the ledger stores and hashes is stable);
//! - an event its schema accepts decodes as the Rust type its `type` names (the Rust side
//!   reads everything the contract allows; both judge the same parsed document).
#![no_main]

use std::fmt::Debug;
use std::sync::OnceLock;

use gatehouse_events::schema::{SchemaSet, default_dir};
use gatehouse_events::*;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn schemas() -> &'static SchemaSet {
    static SCHEMAS: OnceLock<SchemaSet> = OnceLock::new();
    SCHEMAS.get_or_init(|| SchemaSet::load(&default_dir()).expect("schemas/events loads"))
}

/// The round trip for payload `T`; whether the input decoded as `Envelope<T>`.
fn round_trip<T: Payload + PartialEq + Debug>(data: &[u8], document: Option<&Value>) {
    // The schema judges the parsed document (where a repeated key keeps its last value; the
    // typed decoder refuses repeated keys outright), so the typed decoder is asked about the
    // same document.
    if let Some(doc) = document
        && doc.get("type").and_then(Value::as_str) == Some(T::event_type().as_str())
        && schemas()
            .validate(&serde_json::to_vec(doc).unwrap())
            .is_ok()
    {
        let typed = serde_json::from_value::<Envelope<T>>(doc.clone());
        assert!(
            typed.is_ok(),
            "{} is valid by its schema but does not decode: {:?}",
            T::event_type(),
            typed.err()
        );
    }
    let decoded = serde_json::from_slice::<Envelope<T>>(data);
    let Ok(event) = decoded else {
        return;
    };
    let bytes = event.to_bytes().expect("a decoded event encodes");
    let again: Envelope<T> = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} re-encoded does not decode: {e}", T::event_type()));
    assert_eq!(again, event, "decode ∘ encode is not the identity");
    assert_eq!(again.to_bytes().unwrap(), bytes, "encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    let document: Option<Value> = serde_json::from_slice(data).ok();
    let document = document.as_ref();
    round_trip::<RequestReceived>(data, document);
    round_trip::<RequestDenied>(data, document);
    round_trip::<RequestForwarded>(data, document);
    round_trip::<ResponseCompleted>(data, document);
    round_trip::<RequestHeld>(data, document);
    round_trip::<RequestWithdrawn>(data, document);
    round_trip::<ApprovalPosted>(data, document);
    round_trip::<ApprovalVote>(data, document);
    round_trip::<ApprovalDecided>(data, document);
    round_trip::<GrantIssued>(data, document);
    round_trip::<GrantRevoked>(data, document);
    round_trip::<AuditAccessed>(data, document);
    round_trip::<LedgerPruned>(data, document);
    round_trip::<LedgerGap>(data, document);
    round_trip::<WitnessRefused>(data, document);
    round_trip::<SessionStarted>(data, document);
    round_trip::<SessionData>(data, document);
    round_trip::<SessionEnded>(data, document);
});
