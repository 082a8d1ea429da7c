//! The Gatehouse wire contract: every event any service publishes, as Rust types.
//!
//! Module map:
//! - [`envelope`]: the CloudEvents 1.0 envelope (structured JSON mode), ids, sources, subjects.
//! - [`request`]: payloads of the request lifecycle (`request.received`, `request.denied`,
//!   `request.forwarded`, `response.completed`) and the types they share.
//! - [`approval`]: payloads of just-in-time approval (`request.held`, `request.withdrawn`,
//!   `approval.posted`,
//!   `approval.vote`, `approval.decided`, `grant.issued`, `grant.revoked`), the statements the
//!   approval service signs, and `bus.refused` (a decision or grant that did not verify).
//! - [`audit`]: `audit.accessed` (every use of the auditor API), `ledger.pruned`,
//!   `ledger.gap` and `witness.refused`.
//! - [`session`]: payloads of exec / attach / port-forward sessions (`session.started`,
//!   `session.data`, `session.ended`).
//! - [`schema`] (feature `schema`): validates encoded events against the JSON Schemas in
//!   `schemas/events/`, which are the contract other languages read.
//!
//! The JSON Schemas are written by hand, not generated from these types, so the test that
//! validates emitted events against them checks the Rust side against an independent statement
//! of the contract.
#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod envelope;
pub mod request;
#[cfg(feature = "schema")]
pub mod schema;
pub mod session;

/// What a masked value reads as, in recorded bodies and in responses.
pub const MASKED_TEXT: &str = "gatehouse:masked";

pub use approval::{
    ApprovalDecided, ApprovalOutcome, ApprovalPosted, ApprovalVote, Ballot, BusRefused,
    ChangePreview, ChannelKind, CountedVote, DECISION_STATEMENT, DecisionStatement, FourEyes,
    GRANT_STATEMENT, GrantIssued, GrantRevoked, RefusalProblem, RefusedMessage, RequestHeld,
    RequestWithdrawn, StepUp, VoteVia, VoterAuthMethod, VoterAuthentication,
};
pub use audit::{AuditAccessed, AuditAction, LedgerGap, LedgerPruned, WitnessRefused};
pub use envelope::{Envelope, EventId, Payload, SUBJECT_PREFIX};
pub use request::{
    BodyDigest, BodyEncoding, Decision, DecisionAction, DenialReason, Identity, RecordLevel,
    RecordedBody, RequestDenied, RequestForwarded, RequestInfo, RequestReceived, ResponseCompleted,
    ResponseOutcome, Source,
};
pub use session::{
    SessionChannel, SessionData, SessionEnd, SessionEnded, SessionKind, SessionStarted,
    TerminalSize,
};
