//! Which evidence replica is active: a lease in a JetStream key-value bucket.
//!
//! Every replica ingests the whole stream into its own ledger (identical, entry for entry), but
//! what must happen once (signing checkpoints, publishing `ledger.pruned`) is done by the one
//! holding the lease: key `active` of bucket [`BUCKET`]. It is taken with a create (which
//! succeeds only when the key is absent), renewed with a compare-and-set every third of the
//! lease's time to live, and released at a clean stop. The bucket's `max_age` is that time to
//! live, so a lease nobody renews (its holder was killed) disappears and a standby takes it.
//!
//! The latest checkpoint the active replica signed is shared in [`CHECKPOINTS_BUCKET`] (kept
//! forever, one revision), so a standby records it in its own ledger and, once active, signs
//! only checkpoints that extend it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use gatehouse_bus::{Bus, BusError, kv::Bucket};
use serde::{Deserialize, Serialize};

/// The lease bucket: key `active` (the active replica) and `consumer.<name>` (which replica
/// uses that durable consumer).
pub const BUCKET: &str = "gatehouse_evidence";
/// The latest signed checkpoint, key `latest`.
pub const CHECKPOINTS_BUCKET: &str = "gatehouse_evidence_checkpoints";
const ACTIVE: &str = "active";
const LATEST: &str = "latest";

/// The value of the `active` key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub replica: String,
    /// RFC 3339, when this replica became active.
    pub since: String,
}

/// The value of the `latest` key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedCheckpoint {
    pub size: u64,
    /// The signed note.
    pub note: String,
    /// The verifier key that signed it (signed-note form).
    pub key: String,
}

/// The value of a `consumer.<name>` key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Claim {
    replica: String,
    instance: String,
}

/// This replica's role, as `/status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Role {
    pub active: bool,
    /// RFC 3339, when this replica took its current role.
    pub since: String,
    /// The active replica as last seen (this one when active), if any.
    pub active_replica: Option<String>,
}

struct State {
    role: Role,
    /// The lease's revision while this replica holds it.
    revision: Option<u64>,
    /// When the lease was last taken or renewed.
    renewed: Option<Instant>,
}

/// This replica's side of the lease.
pub struct Lease {
    leases: kv::Store,
    checkpoints: kv::Store,
    replica: String,
    consumer: String,
    ttl: Duration,
    state: Mutex<State>,
    consumer_revision: Mutex<Option<u64>>,
    /// This process, in the consumer claim: another process with the same replica name and
    /// consumer is told apart from an earlier run of this one.
    instance: String,
    metrics: crate::metrics::Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("lease bucket {BUCKET}: {0}")]
    Kv(String),
    #[error(
        "the durable consumer {consumer:?} is in use by the evidence replica {holder:?} (another \
         live process): give each replica its own `replica` name, `consumer` (e.g. \
         \"evidence-{{replica}}\") and data_dir"
    )]
    ConsumerInUse { consumer: String, holder: String },
}

fn now_rfc3339() -> String {
    gatehouse_events::envelope::format_rfc3339(time::OffsetDateTime::now_utc())
}

impl Lease {
    /// Opens the buckets (creating them if missing) and claims the durable consumer for this
    /// replica, refusing when another live replica uses it.
    pub async fn open(
        bus: &Bus,
        replica: String,
        consumer: String,
        ttl: Duration,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, LeaseError> {
        let [lease_bucket, checkpoints_bucket] = buckets(ttl, bus_replicas(bus).await);
        let leases = bus.key_value(&lease_bucket).await?;
        let checkpoints = bus.key_value(&checkpoints_bucket).await?;
        if let Ok(mut stream) = bus.jetstream().get_stream(format!("KV_{BUCKET}")).await
            && let Ok(info) = stream.info().await
            && info.config.max_age != ttl
        {
            tracing::warn!(
                lease_ttl = ?ttl,
                bucket_max_age = ?info.config.max_age,
                "lease_ttl differs from the lease bucket's max_age, which other replicas set: the bucket's wins (runbooks/evidence-failover.md)"
            );
        }
        metrics.replica(&replica, &consumer);
        let lease = Self {
            leases,
            checkpoints,
            replica,
            consumer,
            ttl,
            state: Mutex::new(State {
                role: Role {
                    active: false,
                    since: now_rfc3339(),
                    active_replica: None,
                },
                revision: None,
                renewed: None,
            }),
            consumer_revision: Mutex::new(None),
            instance: gatehouse_events::EventId::new().to_string(),
            metrics,
        };
        lease.claim_consumer_at_start().await?;
        Ok(lease)
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .role
            .clone()
    }

    /// Whether this replica holds a lease that cannot have expired yet.
    pub fn is_active(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.role.active && state.renewed.is_some_and(|r| r.elapsed() < self.ttl)
    }

    fn consumer_key(&self) -> String {
        format!("consumer.{}", self.consumer)
    }

    fn claim_value(&self) -> Bytes {
        let claim = Claim {
            replica: self.replica.clone(),
            instance: self.instance.clone(),
        };
        Bytes::from(serde_json::to_vec(&claim).unwrap_or_default())
    }

    /// Claims the durable consumer at start. Two processes sharing a consumer would each get
    /// part of the stream, and neither ledger would be whole. A claim held by another process
    /// is watched for half a lease: a live holder renews it (refused), a dead one does not
    /// (taken over).
    async fn claim_consumer_at_start(&self) -> Result<(), LeaseError> {
        let key = self.consumer_key();
        let kv_error = |e: String| LeaseError::Kv(e);
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            let entry = self
                .leases
                .entry(key.clone())
                .await
                .map_err(|e| kv_error(e.to_string()))?;
            let revision = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    let holder = serde_json::from_slice::<Claim>(&e.value)
                        .map(|c| c.replica)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&e.value).into_owned());
                    match seen {
                        Some((revision, _)) if revision != e.revision => {
                            return Err(LeaseError::ConsumerInUse {
                                consumer: self.consumer.clone(),
                                holder,
                            });
                        }
                        Some((_, since)) if since.elapsed() >= self.ttl / 2 => {
                            match self
                                .leases
                                .update(&key, self.claim_value(), e.revision)
                                .await
                            {
                                Ok(revision) => {
                                    tracing::info!(consumer = %self.consumer, previous = %holder, "took over the claim on the durable consumer from a process that stopped renewing it");
                                    revision
                                }
                                Err(_) => {
                                    return Err(LeaseError::ConsumerInUse {
                                        consumer: self.consumer.clone(),
                                        holder,
                                    });
                                }
                            }
                        }
                        Some(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        None => {
                            seen = Some((e.revision, Instant::now()));
                            continue;
                        }
                    }
                }
                // Free (never claimed, released or lapsed).
                _ => match self.leases.create(&key, self.claim_value()).await {
                    Ok(revision) => revision,
                    Err(_) => continue, // another process was quicker: look again
                },
            };
            *self
                .consumer_revision
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(revision);
            return Ok(());
        }
    }

    /// Renews the claim on the durable consumer (every round).
    async fn renew_consumer_claim(&self) -> Result<(), LeaseError> {
        let key = self.consumer_key();
        let known = *self
            .consumer_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let renewed = match known {
            Some(revision) => self
                .leases
                .update(&key, self.claim_value(), revision)
                .await
                .ok(),
            None => None,
        };
        let revision = match renewed {
            Some(revision) => revision,
            None => {
                let entry = self
                    .leases
                    .entry(key.clone())
                    .await
                    .map_err(|e| LeaseError::Kv(e.to_string()))?;
                match entry {
                    Some(e)
                        if e.operation == kv::Operation::Put && e.value != self.claim_value() =>
                    {
                        *self
                            .consumer_revision
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = None;
                        let holder = serde_json::from_slice::<Claim>(&e.value)
                            .map(|c| c.replica)
                            .unwrap_or_default();
                        return Err(LeaseError::ConsumerInUse {
                            consumer: self.consumer.clone(),
                            holder,
                        });
                    }
                    Some(e) => self
                        .leases
                        .update(&key, self.claim_value(), e.revision)
                        .await
                        .map_err(|e| LeaseError::Kv(e.to_string()))?,
                    // Lapsed (NATS was away longer than a lease): claim it again.
                    None => self
                        .leases
                        .create(&key, self.claim_value())
                        .await
                        .map_err(|e| LeaseError::Kv(e.to_string()))?,
                }
            }
        };
        *self
            .consumer_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(revision);
        Ok(())
    }

    /// One round: renews the lease when holding it, else takes it if it is free (or held by an
    /// earlier run of this same replica). Logs every change of role.
    pub async fn tick(&self) {
        match self.renew_consumer_claim().await {
            Ok(()) => {}
            Err(e @ LeaseError::ConsumerInUse { .. }) => {
                tracing::error!(alarm = "evidence_consumer_shared", error = %e, "durable consumer claim");
            }
            // NATS unreachable or electing a leader: the claim is renewed on a later round.
            Err(e) => tracing::warn!(error = %e, "durable consumer claim not renewed"),
        }
        let (active, revision, since) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.role.active, state.revision, state.role.since.clone())
        };
        if active && let Some(revision) = revision {
            let value = self.holder_value(&since);
            match self.leases.update(ACTIVE, value, revision).await {
                Ok(revision) => {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.revision = Some(revision);
                    state.renewed = Some(Instant::now());
                    return;
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Someone else holds it now (ours expired): stand down at once.
                    self.become_standby("the lease was taken by another replica");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the evidence lease failed");
                    if !self.is_active() {
                        self.become_standby("the lease could not be renewed before it expired");
                    }
                    return;
                }
            }
        }
        let entry = match self.leases.entry(ACTIVE).await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "reading the evidence lease failed");
                return;
            }
        };
        let holder = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<Holder>(&e.value).ok());
        let since = now_rfc3339();
        let taken = match (&entry, &holder) {
            // An earlier run of this replica (killed before it could release): take it back.
            (Some(e), Some(h)) if h.replica == self.replica => self
                .leases
                .update(ACTIVE, self.holder_value(&since), e.revision)
                .await
                .ok(),
            (_, Some(h)) => {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.role.active_replica = Some(h.replica.clone());
                return;
            }
            // Absent, deleted, expired or unreadable: free.
            _ => self
                .leases
                .create(ACTIVE, self.holder_value(&since))
                .await
                .ok(),
        };
        if let Some(revision) = taken {
            let previous = holder.map(|h| h.replica);
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.revision = Some(revision);
            state.renewed = Some(Instant::now());
            state.role = Role {
                active: true,
                since,
                active_replica: Some(self.replica.clone()),
            };
            drop(state);
            self.metrics.active(true);
            tracing::warn!(
                replica = %self.replica,
                role = "active",
                previous = previous.as_deref().unwrap_or("none"),
                "evidence replica is now ACTIVE: it signs checkpoints and records pruning"
            );
        }
    }

    fn holder_value(&self, since: &str) -> Bytes {
        let holder = Holder {
            replica: self.replica.clone(),
            since: since.to_owned(),
        };
        Bytes::from(serde_json::to_vec(&holder).unwrap_or_default())
    }

    fn become_standby(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.role.active {
            return;
        }
        state.role = Role {
            active: false,
            since: now_rfc3339(),
            active_replica: None,
        };
        state.revision = None;
        state.renewed = None;
        drop(state);
        self.metrics.active(false);
        tracing::warn!(replica = %self.replica, role = "standby", why, "evidence replica is now STANDBY");
    }

    /// Renews or takes the lease every third of its time to live until `stop`, then releases
    /// it, so that a standby takes over at once rather than when it expires.
    pub async fn run(&self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    /// Gives the lease and the consumer claim up (a clean stop), so that a standby takes over
    /// and a restart claims the consumer at once.
    pub async fn release(&self) {
        let claim = self
            .consumer_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(revision) = claim
            && let Err(e) = self
                .leases
                .delete_expect_revision(self.consumer_key(), Some(revision))
                .await
        {
            tracing::warn!(error = %e, "releasing the consumer claim failed; it lapses by itself");
        }
        let revision = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revision;
        if let Some(revision) = revision {
            self.become_standby("stopping");
            if let Err(e) = self
                .leases
                .delete_expect_revision(ACTIVE, Some(revision))
                .await
            {
                tracing::warn!(error = %e, "releasing the evidence lease failed; it expires by itself");
            }
        }
    }

    /// The latest checkpoint any replica shared.
    pub async fn latest_checkpoint(&self) -> Result<Option<SharedCheckpoint>, LeaseError> {
        let entry = self
            .checkpoints
            .entry(LATEST)
            .await
            .map_err(|e| LeaseError::Kv(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// Shares a checkpoint this replica signed, unless a larger one is already shared.
    pub async fn share_checkpoint(&self, shared: &SharedCheckpoint) -> Result<(), LeaseError> {
        let value = Bytes::from(serde_json::to_vec(shared).unwrap_or_default());
        for _ in 0..3 {
            let entry = self
                .checkpoints
                .entry(LATEST)
                .await
                .map_err(|e| LeaseError::Kv(e.to_string()))?;
            let result = match entry {
                Some(e) => {
                    let current = serde_json::from_slice::<SharedCheckpoint>(&e.value).ok();
                    if current.is_some_and(|c| c.size >= shared.size) {
                        return Ok(());
                    }
                    self.checkpoints
                        .update(LATEST, value.clone(), e.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                None => self
                    .checkpoints
                    .create(LATEST, value.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            if result.is_ok() {
                return Ok(());
            }
        }
        Err(LeaseError::Kv(
            "sharing the checkpoint lost three races in a row".into(),
        ))
    }
}

/// The buckets get as many replicas as the stream (one per JetStream node of a cluster).
/// The evidence service's buckets: the active replica's lease (entries live `ttl` unless
/// renewed) and the latest signed checkpoint. Created by `gatehouse nats setup` where services
/// may not create streams.
pub fn buckets(ttl: Duration, replicas: usize) -> [Bucket; 2] {
    [
        Bucket {
            name: BUCKET.into(),
            description: "Gatehouse evidence: the active replica's lease".into(),
            max_age: ttl,
            history: 1,
            replicas,
        },
        Bucket {
            name: CHECKPOINTS_BUCKET.into(),
            description: "Gatehouse evidence: the latest signed checkpoint".into(),
            max_age: Duration::ZERO,
            history: 1,
            replicas,
        },
    ]
}

async fn bus_replicas(bus: &Bus) -> usize {
    match bus.jetstream().get_stream(bus.stream_name()).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => info.config.num_replicas.max(1),
            Err(_) => 1,
        },
        Err(_) => 1,
    }
}
