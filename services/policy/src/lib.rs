//! Gatehouse's Kubernetes-aware policy, shared by the proxy, which decides with it, and the
//! evidence service, whose access review reads which rules were written and which were used.
//!
//! - [`request_info`]: method + path → Kubernetes verb, group, version, resource, namespace, name.
//! - [`policy`]: ordered allow / deny / approve rules, first match wins, default deny; makes
//!   [`policy::Permitted`]; reloaded when its file changes.
//! - [`mask`]: Secret values and profile fields masked as responses stream.
#![forbid(unsafe_code)]

pub mod mask;
pub mod policy;
pub mod request_info;
