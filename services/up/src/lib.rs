//! `gatehouse up`: every Gatehouse service in one process, in front of a cluster, with demo
//! identities, approvers and kubeconfigs, for a single machine, a demo, the integration tests
//! and the benchmarks.
//!
//! It links the test beds (the local control plane's launcher, the Kubernetes sandbox, the demo
//! OIDC issuers), so it is its own binary, `gatehouse-up`; the product binary `gatehouse` runs
//! it for `gatehouse up` when it is installed beside it, and contains none of it.
//!
//! Module map:
//! - [`stack`]: the [`Stack`] (NATS, the cluster, issuers, evidence, approval, proxy), started
//!   and stopped in order; `up`'s guide.
//! - [`cluster`]: the cluster behind the proxy: the local control plane with the demo cluster
//!   and the proxy's least-privileged ServiceAccount, the sandbox, or a user's cluster (checked,
//!   never changed).
//! - [`demo`]: the demo identities, approvers and policy.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod demo;
pub mod stack;

pub use cluster::Upstream;
pub use stack::{Stack, StackOptions, UpOptions, run};
