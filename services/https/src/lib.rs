//! HTTPS for every Gatehouse service, in and out:
//! - [`server`]: rustls (h2 + http/1.1) on the guarded listener ([`gatehouse_listener`]), with
//!   optional client certificates, and [`server::serve_router`] for an axum router;
//! - [`serving_cert`]: the serving certificate, reloaded when its files change;
//! - [`client`]: outbound HTTPS (the API server, issuers' discovery and JWKS, chat APIs);
//! - [`config`]: the listener's TLS settings and how a client certificate names a caller.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod server;
pub mod serving_cert;

pub use gatehouse_listener as listener;
