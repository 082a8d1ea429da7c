//! Gatehouse's test bed and demo upstream: a small Kubernetes-API-compatible HTTPS server that
//! real kubectl works against, a local CA, and a local OIDC issuer.
//!
//! Module map:
//! - [`pki`]: local CA, leaf server certificates, and the shared rustls server config.
//! - [`issuer`]: OIDC discovery + JWKS over HTTP on loopback; mints ES256 tokens.
//! - [`rbac`]: static bearer tokens and an allow-only RBAC, both from YAML.
//! - [`kube`]: the Kubernetes API emulation (discovery, core/v1 resources, watch, Table,
//!   patches, impersonation, `Status` errors) over an in-memory store, plus `pods/exec`,
//!   `pods/attach` and `pods/portforward` over WebSocket and SPDY/3.1. Those run real local
//!   processes and open real local TCP connections (to `127.0.0.1:<port>`, or the host in
//!   the pod annotation `sandbox.gatehouse.dev/forward-host`) as the sandbox's own user:
//!   bind a sandbox to loopback only.
#![forbid(unsafe_code)]

pub mod browser;
pub mod chat;
pub mod issuer;
pub mod kube;
pub mod pki;
pub mod rbac;

pub use kube::{RecordedRequest, Sandbox, SandboxConfig, SandboxError, SandboxHandle};
