//! `gatehouse approval`: just-in-time approvals for held requests.
//!
//! Module map:
//! - [`approvers`]: the registry from chat accounts (Slack / Teams / Discord user ids) to
//!   accountable approvers; never by display name.
//! - [`callback`]: verifying that a chat callback comes from the platform (Slack v0 HMAC with a
//!   five-minute window, Discord Ed25519).
//! - [`tally`]: counting the votes on one hold: quorum, any deny, expiry, no self-approval,
//!   only named approvers, idempotent repeats.
//!
//! The holds consumer, the decisions it publishes and the Slack, Teams and Discord front ends
//! arrive with issue 4 and drive [`tally::Tally`]; the rules live here so every platform counts
//! the same way.
#![forbid(unsafe_code)]

pub mod approvers;
pub mod callback;
pub mod channel;
pub mod discord;
pub mod slack;
pub mod tally;
pub mod teams;

pub use tally::{Hold, Outcome, Refusal, Tally, Vote, Voter};
