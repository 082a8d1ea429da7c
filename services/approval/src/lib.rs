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
//! - [`channel`]: what every platform shares: the hold as approvers see it, a vote as a
//!   platform hands it in, and the [`channel::VoteSink`] that counts it.
//! - [`slack`], [`teams`], [`discord`]: the platforms: post, update, reply, and verified
//!   callbacks turned into votes.
//! - [`store`]: the shared state in JetStream KV (records, message index, replay keys),
//!   changed only by compare-and-set.
//! - [`service`]: holds in, votes counted, decisions, grants and expiry out.
//! - [`api`]: the authenticated API behind `gatehouse approvals` and `gatehouse grants`.
//! - [`client`]: a client of that API.
//! - [`config`], [`server`]: the configuration file, and starting it all.
#![forbid(unsafe_code)]

pub mod api;
pub mod approvers;
pub mod callback;
pub mod channel;
pub mod client;
pub mod config;
pub mod discord;
pub mod page;
pub mod server;
pub mod service;
pub mod slack;
pub mod store;
pub mod tally;
pub mod teams;

pub use config::ApprovalConfig;
pub use server::ApprovalServer;
pub use service::Service;
pub use tally::{Hold, Outcome, Refusal, Tally, Vote, Voter};
