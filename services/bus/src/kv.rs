//! JetStream key-value buckets: the state replicas share (approvals, grants, callback replay
//! keys).
//!
//! The bucket's stream is created here rather than with `create_key_value`, because that call
//! asks for account details nats-server 2.9 does not return; the stream is configured exactly
//! as a KV bucket (`KV_<bucket>`, `$KV.<bucket>.>`, rollups, no deletes, direct get, discard
//! new), so 2.9 and 2.10+ servers and every NATS KV client read it the same way.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};

use crate::{Bus, BusError};

/// A bucket's shape.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// `[A-Za-z0-9_-]+`.
    pub name: String,
    pub description: String,
    /// Values older than this are removed by the server: the upper bound on an entry's life
    /// (a grant's window, a hold's expiry, a replay window).
    pub max_age: Duration,
    /// Revisions kept per key.
    pub history: i64,
    pub replicas: usize,
}

impl Bus {
    /// Opens the bucket, creating it if missing (which a least-privilege service credential may
    /// not: see `deploy/nats/README.md`). Safe to call from every replica at once.
    pub async fn key_value(&self, bucket: &Bucket) -> Result<kv::Store, BusError> {
        let err = |message: String| BusError::Stream {
            stream: format!("KV_{}", bucket.name),
            message,
        };
        let config = stream::Config {
            name: format!("KV_{}", bucket.name),
            description: Some(bucket.description.clone()),
            subjects: vec![format!("$KV.{}.>", bucket.name)],
            max_messages_per_subject: bucket.history.max(1),
            max_age: bucket.max_age,
            storage: StorageType::File,
            num_replicas: bucket.replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| err(self.with_refusal(e.to_string())))?;
        self.js
            .get_key_value(bucket.name.as_str())
            .await
            .map_err(|e| err(e.to_string()))
    }
}

/// The grants approvals open: key = grant id, value = the `grant.issued` payload (JSON). The
/// approval service writes it; every proxy replica watches it.
pub const GRANTS_BUCKET: &str = "gatehouse_grants";

/// The longest a grant lives in the bucket (and so the longest grant window); each grant's
/// own `expires_at` is what counts.
pub const GRANTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The grants bucket's shape. `max_window` is the longest grant window allowed: entries
/// never outlive it, and a proxy also checks each grant's own `expires_at`.
pub fn grants_bucket(max_window: Duration, replicas: usize) -> Bucket {
    Bucket {
        name: GRANTS_BUCKET.into(),
        description: "Gatehouse grants: approved, time-boxed repeats of a request".into(),
        max_age: max_window,
        history: 1,
        replicas,
    }
}
