//! Local fakes of the chat platforms' HTTP APIs, for tests only: they record what was posted
//! and sign callbacks exactly as the real platforms do, so the approval service's real
//! verification code is what the tests exercise.
//!
//! - [`slack`]: the Slack Web API (`chat.postMessage`, `chat.update`, `chat.postEphemeral`)
//!   and signed interactivity / Events API deliveries.
//! - [`teams`]: the Bot Framework connector, its token endpoint, OpenID metadata and JWKS, and
//!   invoke activities carrying a Bot Framework JWT.
//! - [`discord`]: the Discord HTTP API (messages) and Ed25519-signed interactions.

pub mod discord;
pub mod slack;
pub mod teams;
