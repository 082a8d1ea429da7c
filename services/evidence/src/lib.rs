//! `gatehouse evidence`: every event, appended to a hash-linked RocksDB ledger, exactly once.
//!
//! Module map:
//! - [`entry`], [`merkle`]: the entry encoding and the Merkle tree, from `gatehouse-proof`.
//! - [`metrics`]: OpenMetrics counters and `/metrics` on `admin_listen`.
//! - [`retention`]: legal holds, and pruning payloads into tombstones that keep every hash.
//! - [`store`]: the RocksDB ledger: column families, the atomic and durable append.
//! - [`index`]: search index keys: by principal, owner, namespace, verb, resource, request,
//!   session, decision, event type, and time.
//! - [`ingest`]: the durable JetStream consumer that feeds the ledger in stream order.
//! - [`verify`]: re-walking the chain and naming the first bad entry.
//! - [`archive`]: write-once archives of sealed segments (S3 Object Lock), and restoring a
//!   ledger from them.
//! - [`config`]: the service's YAML configuration.
//! - [`witness`]: C2SP witnesses cosigning every checkpoint (`tlog-witness`).
//! - [`api`]: the auditor API (search, proofs, checkpoints, replay, bundles, reports; every
//!   call an acked `audit.accessed` event) and [`api::run_evidence`], the service's start-up.
//! - [`export`]: evidence bundles written from the ledger.
//! - [`replay`]: a recorded session as text or asciicast v2.
//! - [`report`]: the access review for a period (JSON, CSV, printable HTML).
#![forbid(unsafe_code)]

pub mod api;
pub mod archive;
pub mod config;
pub mod export;
/// Re-exported so the ledger's formats have one home ([`gatehouse_proof`]).
pub use gatehouse_proof::{entry, merkle};
pub mod index;
pub mod ingest;
pub mod lease;
pub mod metrics;
pub mod replay;
pub mod report;
pub mod retention;
pub mod store;
pub mod verify;
pub mod witness;

use std::sync::{Arc, Mutex};

use gatehouse_bus::{Bus, DurableConsumer};
use tokio_util::sync::CancellationToken;

pub use config::EvidenceConfig;
pub use store::{Head, Ledger, LedgerError};

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("invalid evidence configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Bus(#[from] gatehouse_bus::BusError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
}

/// An open evidence service: the ledger and the bus, ready to ingest.
pub struct Evidence {
    config: EvidenceConfig,
    ledger: Arc<Mutex<Ledger>>,
    bus: Bus,
    /// The checkpoint key and origin, when checkpoints are configured.
    signer: Option<Arc<Signing>>,
    metrics: metrics::Metrics,
    /// Which replica is active (signs checkpoints, records pruning).
    lease: Arc<lease::Lease>,
    /// The bucket sealed segments are archived to, when `archive` is configured.
    archive: Option<archive::Archive>,
    /// The admin listener (`admin_listen`), bound at open and served by [`Evidence::run`].
    admin: Mutex<Option<tokio::net::TcpListener>>,
    admin_addr: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("head", &self.head())
            .finish()
    }
}

impl Evidence {
    /// Validates the configuration, opens (or creates) the ledger, connects to NATS and makes
    /// sure the stream exists.
    pub async fn open(config: EvidenceConfig) -> Result<Self, EvidenceError> {
        config.validate().map_err(EvidenceError::Config)?;
        let ledger = Ledger::open(&config.data_dir)?;
        let head = ledger.head();
        tracing::info!(
            ledger = %ledger.path().display(),
            entries = head.next_index,
            last_sequence = head.last_sequence,
            "ledger open"
        );
        let signer = match &config.checkpoints {
            Some(c) => {
                let signing = Signing::load(c).map_err(EvidenceError::Config)?;
                let (signer, origin) = signing.current();
                tracing::info!(
                    key = %signer.verifier().to_vkey(),
                    origin = %origin,
                    every = ?c.every,
                    "signing checkpoints"
                );
                Some(signing)
            }
            None => None,
        };
        let mut ledger = ledger;
        let archive = match &config.archive {
            Some(a) => {
                let archive = archive::Archive::connect(a)
                    .map_err(|e| EvidenceError::Config(e.to_string()))?;
                // From now on pruning waits for the archive (see `archive`).
                let through = ledger.archived_through()?.unwrap_or(0);
                ledger.set_archived_through(through)?;
                tracing::info!(archive = ?archive, archived_through = through, every = ?a.every, "archiving sealed segments");
                Some(archive)
            }
            None => None,
        };
        let bus = Bus::connect(&config.nats, "gatehouse-evidence").await?;
        bus.ensure_stream(&config.nats.stream).await?;
        let metrics = metrics::Metrics::new();
        let signer = match (signer, &config.witnesses) {
            (Some(mut signing), Some(w)) if !w.list.is_empty() => {
                signing.witnesses = Some(Arc::new(
                    witness::Witnesses::new(w, metrics.clone(), Some(bus.clone()))
                        .map_err(EvidenceError::Config)?,
                ));
                let (signer, origin) = signing.current();
                // What each witness must be told to trust (runbooks/witnesses.md).
                tracing::info!(
                    origin = %witness::witnessed_origin(&origin),
                    key = %witness::witnessed_vkey(&signer, &origin),
                    witnesses = w.list.len(),
                    "submitting checkpoints to witnesses"
                );
                Some(Arc::new(signing))
            }
            (signing, _) => signing.map(Arc::new),
        };
        let lease = lease::Lease::open(
            &bus,
            config.replica_name(),
            config.consumer_name(),
            config.lease_ttl,
            metrics.clone(),
        )
        .await?;
        tracing::info!(
            replica = %lease.replica(),
            consumer = %config.consumer_name(),
            lease_ttl = ?config.lease_ttl,
            "evidence replica"
        );
        let admin = match config.admin_listen {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .map_err(|e| EvidenceError::Config(format!("admin_listen {addr}: {e}")))?,
            ),
            None => None,
        };
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        Ok(Self {
            config,
            ledger: Arc::new(Mutex::new(ledger)),
            bus,
            signer,
            metrics,
            lease: Arc::new(lease),
            archive,
            admin: Mutex::new(admin),
            admin_addr,
        })
    }

    /// The service's metrics (shared handles).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// Where `/metrics`, `/healthz` and `POST /checkpoint` answer, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// This replica's role now.
    pub fn role(&self) -> lease::Role {
        self.lease.role()
    }

    /// The ledger's head right now.
    pub fn head(&self) -> Head {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner()).head()
    }

    /// Ingests until `shutdown` is cancelled, then flushes the ledger so that all of it is in
    /// checksummed table files.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), EvidenceError> {
        let consumer = DurableConsumer::new(self.config.consumer_name(), "gatehouse.>");
        let ingestor = ingest::Ingestor::new(
            self.bus.clone(),
            self.ledger.clone(),
            consumer,
            self.config.batch_max,
            self.metrics.clone(),
        );
        // Take the lease now if it is free, so a lone replica is active before it serves.
        self.lease.tick().await;
        let leasing = {
            let lease = self.lease.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { lease.run(stop).await })
        };
        let admin = self.admin.lock().unwrap_or_else(|p| p.into_inner()).take();
        let admin = match admin {
            Some(listener) => {
                tracing::info!(admin = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "evidence metrics serving");
                let on_demand = checkpoint_route(
                    self.ledger.clone(),
                    self.signer.clone(),
                    self.metrics.clone(),
                    self.lease.clone(),
                )
                .merge(status_route(
                    self.ledger.clone(),
                    self.lease.clone(),
                    self.config.consumer_name(),
                ));
                Some(tokio::spawn(self.metrics.clone().serve(
                    listener,
                    self.config.admin_connections.clone(),
                    on_demand,
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let checkpoints = self
            .signer
            .clone()
            .zip(self.config.checkpoints.clone())
            .map(|(signer, config)| {
                let ledger = self.ledger.clone();
                let stop = shutdown.clone();
                let metrics = self.metrics.clone();
                let lease = self.lease.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(config.every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => {
                                let _ = checkpoint_round(&ledger, &signer, &metrics, &lease).await;
                            }
                        }
                    }
                })
            });
        let pruning = {
            let ledger = self.ledger.clone();
            let bus = self.bus.clone();
            let stop = shutdown.clone();
            let metrics = self.metrics.clone();
            let lease = self.lease.clone();
            let (every, days) = (self.config.prune_every, self.config.retention_days);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            // Every replica prunes its own ledger; the active one records it.
                            let record = lease.is_active().then_some(&bus);
                            if let Some(n) = prune(&ledger, record, days).await {
                                metrics.pruned(n);
                            }
                        }
                    }
                }
            })
        };
        let backups = self.config.backups.clone().map(|config| {
            let ledger = self.ledger.clone();
            let stop = shutdown.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(config.every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => metrics.backup(backup(&ledger, &config)),
                    }
                }
            })
        });
        let archiving = self.archive.clone().map(|archive| {
            let (ledger, stop, metrics, lease) = (
                self.ledger.clone(),
                shutdown.clone(),
                self.metrics.clone(),
                self.lease.clone(),
            );
            let witnesses = self.signer.as_ref().and_then(|s| s.witnesses.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(archive.config().every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => archive_round(&ledger, &archive, &metrics, &lease, witnesses.as_deref()).await,
                    }
                }
            })
        });
        let result = ingestor.run(shutdown).await;
        if let Some(task) = archiving {
            let _ = task.await;
        }
        let _ = pruning.await;
        if let Some(task) = backups {
            let _ = task.await;
        }
        if let Some(task) = checkpoints {
            let _ = task.await;
        }
        let _ = leasing.await;
        if let Some(signer) = &self.signer {
            let _ = checkpoint_round(&self.ledger, signer, &self.metrics, &self.lease).await;
        }
        // After the last checkpoint: a standby takes over now, not when the lease expires.
        self.lease.release().await;
        if let Some(task) = admin {
            let _ = task.await;
        }
        self.bus.flush().await;
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.flush()?;
        let head = ledger.head();
        tracing::info!(
            entries = head.next_index,
            last_sequence = head.last_sequence,
            "ledger closed"
        );
        result.map_err(EvidenceError::from)
    }

    /// Waits until the ledger holds everything the stream held when called, or `timeout`
    /// passes. Returns whether it caught up.
    pub async fn catch_up(&self, timeout: std::time::Duration) -> Result<bool, EvidenceError> {
        let target = self.bus.last_sequence().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.head().last_sequence < target {
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(true)
    }
}

/// The checkpoint key, re-read from its file before every checkpoint, so that a rotated key
/// (`gatehouse checkpoint rotate`) signs the next checkpoint without a restart.
pub struct Signing {
    key_file: std::path::PathBuf,
    origin: Option<String>,
    current: Mutex<gatehouse_proof::checkpoint::NoteSigner>,
    /// The witnesses every checkpoint goes to, when configured.
    witnesses: Option<Arc<witness::Witnesses>>,
}

impl Signing {
    pub fn load(config: &config::CheckpointConfig) -> Result<Self, String> {
        Ok(Self {
            current: Mutex::new(load_signer(&config.key_file)?),
            key_file: config.key_file.clone(),
            origin: config.origin.clone(),
            witnesses: None,
        })
    }

    /// The key as last read, and the origin it signs for.
    fn current(&self) -> (gatehouse_proof::checkpoint::NoteSigner, String) {
        let signer = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let origin = self
            .origin
            .clone()
            .unwrap_or_else(|| signer.name().to_owned());
        (signer, origin)
    }

    /// Re-reads the key file; a file that cannot be read now keeps the key already loaded.
    fn refresh(&self) -> (gatehouse_proof::checkpoint::NoteSigner, String) {
        match load_signer(&self.key_file) {
            Ok(fresh) => {
                let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
                if fresh.verifier() != current.verifier() {
                    tracing::warn!(
                        old = %current.verifier().to_vkey(),
                        new = %fresh.verifier().to_vkey(),
                        "checkpoint key rotated"
                    );
                    *current = fresh;
                }
            }
            Err(e) => {
                tracing::error!(alarm = "checkpoint_key_unreadable", error = %e, "keeping the checkpoint key already loaded")
            }
        }
        self.current()
    }
}

/// Issues a checkpoint now, logging what happened (an inconsistent ledger is an alarm).
fn issue_checkpoint(
    ledger: &Mutex<Ledger>,
    signing: &Signing,
    metrics: &metrics::Metrics,
) -> Result<store::Issued, LedgerError> {
    let (signer, origin) = signing.refresh();
    let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    let issued = ledger.issue_checkpoint(&signer, &origin);
    match &issued {
        Ok(store::Issued::Signed { size, .. }) => {
            metrics.checkpoint(true);
            tracing::info!(size, origin = %origin, "checkpoint signed")
        }
        Ok(store::Issued::Unchanged { .. }) => {}
        Err(e) => {
            metrics.checkpoint(false);
            tracing::error!(alarm = "checkpoint_refused", error = %e, "checkpoint not signed")
        }
    }
    issued
}

/// One checkpoint round. First the checkpoint the active replica last shared is recorded in
/// this ledger (after checking this tree has the same root at its size); then, on the active
/// replica only, a checkpoint is signed (which must extend every one recorded) and shared.
/// `Ok(None)`: nothing signed (a standby, or still catching up to the shared checkpoint).
async fn checkpoint_round(
    ledger: &Arc<Mutex<Ledger>>,
    signing: &Arc<Signing>,
    metrics: &metrics::Metrics,
    lease: &lease::Lease,
) -> Result<Option<store::Issued>, String> {
    let refused = |why: String| {
        metrics.checkpoint(false);
        tracing::error!(alarm = "checkpoint_refused", error = %why, "checkpoint not signed");
        why
    };
    let shared = match lease.latest_checkpoint().await {
        Ok(shared) => shared,
        Err(e) if lease.is_active() => {
            return Err(refused(format!(
                "the shared checkpoint could not be read: {e}"
            )));
        }
        Err(e) => {
            tracing::warn!(error = %e, "the shared checkpoint could not be read");
            return Ok(None);
        }
    };
    if let Some(shared) = shared {
        let writer = ledger.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_checkpoint(&shared.note, &shared.key)
        })
        .await
        .map_err(|e| e.to_string())?;
        match recorded {
            Ok(store::Recorded::New { size }) => {
                tracing::info!(size, "recorded the checkpoint the active replica shared")
            }
            Ok(store::Recorded::Known { .. }) => {}
            Ok(store::Recorded::Ahead { size, tree_size }) => {
                if lease.is_active() {
                    tracing::info!(
                        shared = size,
                        tree_size,
                        "not signing until the ledger reaches the last shared checkpoint"
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(refused(e.to_string())),
        }
    }
    if !lease.is_active() {
        return Ok(None);
    }
    let (writer, signing2, metrics2) = (ledger.clone(), signing.clone(), metrics.clone());
    let issued = tokio::task::spawn_blocking(move || {
        let issued = issue_checkpoint(&writer, &signing2, &metrics2)?;
        let key = match &issued {
            store::Issued::Signed { size, .. } => writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .checkpoint_key(*size)?,
            store::Issued::Unchanged { .. } => None,
        };
        Ok::<_, LedgerError>((issued, key))
    })
    .await
    .map_err(|e| e.to_string())?;
    let (issued, key) = issued.map_err(|e| e.to_string())?;
    if let (store::Issued::Signed { size, note }, Some(key)) = (&issued, key) {
        let shared = lease::SharedCheckpoint {
            size: *size,
            note: note.clone(),
            key,
        };
        if let Err(e) = lease.share_checkpoint(&shared).await {
            tracing::warn!(error = %e, size, "the checkpoint is signed but not shared with the standby");
        }
    }
    // The active replica only (standbys returned above); also after an unchanged round, so a
    // witness that missed the last checkpoint gets it.
    if let Some(witnesses) = &signing.witnesses {
        witnesses.cosign_latest(ledger, &signing.current().0).await;
    }
    Ok(Some(issued))
}

/// What `GET /status` on the admin listener answers: this replica's role and ledger.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub replica: String,
    pub consumer: String,
    /// Whether this replica holds the lease (signs checkpoints, records pruning).
    pub active: bool,
    /// When it took its current role (RFC 3339).
    pub since: String,
    /// The active replica as this one last saw it.
    pub active_replica: Option<String>,
    /// Entries in the ledger.
    pub entries: u64,
    /// The last stream sequence applied.
    pub last_sequence: u64,
    /// The Merkle root over all entries (hex), equal on every replica at the same size.
    pub root: Option<String>,
    /// The size of the latest checkpoint in this ledger (signed here or recorded from the
    /// active replica).
    pub checkpoint_size: Option<u64>,
}

fn status_route(
    ledger: Arc<Mutex<Ledger>>,
    lease: Arc<lease::Lease>,
    consumer: String,
) -> axum::Router {
    axum::Router::new().route(
        "/status",
        axum::routing::get(move || {
            let (ledger, lease, consumer) = (ledger.clone(), lease.clone(), consumer.clone());
            async move {
                let role = lease.role();
                let (head, root, checkpoint_size) = {
                    let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                    let head = ledger.head();
                    let root = ledger.root(ledger.tree_size()).ok().map(hex::encode);
                    let checkpoint = ledger.latest_checkpoint().ok().flatten().map(|(s, _)| s);
                    (head, root, checkpoint)
                };
                axum::Json(Status {
                    replica: lease.replica().to_owned(),
                    consumer,
                    active: role.active && lease.is_active(),
                    since: role.since,
                    active_replica: role.active_replica,
                    entries: head.next_index,
                    last_sequence: head.last_sequence,
                    root,
                    checkpoint_size,
                })
            }
        }),
    )
}

/// What `POST /checkpoint` on the admin listener answers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct OnDemand {
    /// A new checkpoint was signed (false: the tree had not grown since the latest).
    pub signed: bool,
    pub size: u64,
    /// The signed note (the latest one when nothing new was signed).
    pub note: String,
}

/// `POST /checkpoint`: signs a checkpoint now (the same consistency check as the schedule's).
fn checkpoint_route(
    ledger: Arc<Mutex<Ledger>>,
    signing: Option<Arc<Signing>>,
    metrics: metrics::Metrics,
    lease: Arc<lease::Lease>,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/checkpoint",
        axum::routing::post(move || {
            let (ledger, signing, metrics, lease) = (
                ledger.clone(),
                signing.clone(),
                metrics.clone(),
                lease.clone(),
            );
            async move {
                let Some(signing) = signing else {
                    return (
                        StatusCode::NOT_FOUND,
                        "checkpoints are not configured for this evidence service\n",
                    )
                        .into_response();
                };
                if !lease.is_active() {
                    let active = lease.role().active_replica.unwrap_or_else(|| "none".into());
                    return (
                        StatusCode::CONFLICT,
                        format!(
                            "this evidence replica ({}) is a standby; the active replica ({active}) signs checkpoints\n",
                            lease.replica()
                        ),
                    )
                        .into_response();
                }
                let issued = checkpoint_round(&ledger, &signing, &metrics, &lease).await;
                let result = tokio::task::spawn_blocking(move || {
                    let issued = issued.map_err(|why| LedgerError::Inconsistent { size: 0, why })?;
                    let latest = ledger
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .latest_checkpoint()?;
                    Ok::<_, LedgerError>((issued, latest))
                })
                .await;
                match result {
                    Ok(Ok((None, _))) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "checkpoint not signed: this replica is still catching up to the checkpoint the previous active replica signed\n",
                    )
                        .into_response(),
                    Ok(Ok((Some(store::Issued::Signed { size, note }), _))) => axum::Json(OnDemand {
                        signed: true,
                        size,
                        note,
                    })
                    .into_response(),
                    Ok(Ok((Some(store::Issued::Unchanged { size }), latest))) => axum::Json(OnDemand {
                        signed: false,
                        size,
                        note: latest.map(|(_, note)| note).unwrap_or_default(),
                    })
                    .into_response(),
                    Ok(Err(e)) => (
                        StatusCode::CONFLICT,
                        format!("checkpoint not signed: {e}\n"),
                    )
                        .into_response(),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("checkpoint not signed: {e}\n"),
                    )
                        .into_response(),
                }
            }
        }),
    )
}

/// One archiving round: the lease holder uploads sealed segments; a standby only adopts those
/// in the bucket that hold its own entries (so its pruning can follow). A failure is an alarm.
/// With witnesses, a segment ends at a checkpoint whose witness round has finished, so the
/// archive carries the cosignatures of its checkpoints.
async fn archive_round(
    ledger: &Arc<Mutex<Ledger>>,
    archive: &archive::Archive,
    metrics: &metrics::Metrics,
    lease: &lease::Lease,
    witnesses: Option<&witness::Witnesses>,
) {
    let seal_through = witnesses.map(witness::Witnesses::submitted_through);
    match archive::round(ledger, archive, lease.is_active(), seal_through).await {
        Ok(round) => metrics.archive_round(Some(round.archived_through)),
        Err(e) => {
            metrics.archive_round(None);
            tracing::error!(alarm = "archive_failed", error = %e, "ledger segments not archived (runbooks/archive.md)");
        }
    }
}

/// Takes a backup into a new directory named by the time, and removes the oldest beyond
/// `keep`.
pub fn backup(ledger: &Mutex<Ledger>, config: &config::BackupConfig) -> bool {
    let name = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "backup".to_owned());
    let dest = config.dir.join(&name);
    if let Err(e) = std::fs::create_dir_all(&config.dir) {
        tracing::error!(alarm = "backup_failed", dir = %config.dir.display(), error = %e, "backup directory unusable");
        return false;
    }
    let result = ledger
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .backup_to(&dest);
    match result {
        Ok(()) => tracing::info!(backup = %dest.display(), "ledger backed up"),
        Err(e) => {
            tracing::error!(alarm = "backup_failed", backup = %dest.display(), error = %e, "ledger backup failed");
            return false;
        }
    }
    let mut existing: Vec<_> = std::fs::read_dir(&config.dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    existing.sort();
    while existing.len() > config.keep {
        let old = existing.remove(0);
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(backup = %old.display(), error = %e, "removing an old backup failed");
        }
    }
    true
}

/// Prunes what is past retention and records it as `ledger.pruned` (which the ledger then
/// ingests like any event).
/// `bus` is `None` on a standby: the active replica records its own pruning of the same entries.
pub async fn prune(ledger: &Mutex<Ledger>, bus: Option<&Bus>, retention_days: u32) -> Option<u64> {
    let now =
        i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX);
    let result = {
        let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.prune(now, retention_days)
    };
    match result {
        Ok(pruned) => {
            let Some(bus) = bus else {
                if pruned.pruned > 0 {
                    tracing::info!(
                        entries = pruned.pruned,
                        "pruned payloads past retention (standby: the active replica records it)"
                    );
                }
                return Some(pruned.pruned);
            };
            if let Err(e) = publish_pruned(bus, &pruned, retention_days).await {
                tracing::error!(error = %e, entries = pruned.pruned, "pruned, but ledger.pruned was not recorded");
            }
            Some(pruned.pruned)
        }
        Err(e) => {
            tracing::error!(error = %e, "pruning failed");
            None
        }
    }
}

/// Publishes `ledger.pruned` for a prune that removed anything.
pub async fn publish_pruned(
    bus: &Bus,
    pruned: &retention::Pruned,
    retention_days: u32,
) -> Result<(), gatehouse_bus::PublishError> {
    let (Some(first), Some(last)) = (pruned.first, pruned.last) else {
        return Ok(());
    };
    let id = gatehouse_events::EventId::new().to_string();
    let cutoff = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(pruned.cutoff))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let event = gatehouse_events::Envelope::new(
        &gatehouse_events::envelope::source("evidence", "ledger"),
        &id,
        gatehouse_events::LedgerPruned {
            prune_id: id.clone(),
            first_index: first,
            last_index: last,
            entries: pruned.pruned,
            kept_by_legal_holds: pruned.kept_by_holds,
            retention_days,
            cutoff: gatehouse_events::envelope::format_rfc3339(cutoff),
        },
    );
    bus.publish(&event).await?;
    tracing::info!(
        entries = pruned.pruned,
        first,
        last,
        kept = pruned.kept_by_holds,
        "pruned payloads past retention"
    );
    Ok(())
}

/// Reads a checkpoint signing key. Errors name the file, never its content.
pub fn load_signer(
    path: &std::path::Path,
) -> Result<gatehouse_proof::checkpoint::NoteSigner, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the checkpoint key {}: {e}", path.display()))?;
    gatehouse_proof::checkpoint::NoteSigner::from_skey(&text)
        .map_err(|e| format!("the checkpoint key {}: {e}", path.display()))
}

/// Runs the evidence service until `shutdown` is cancelled.
pub async fn run(config: EvidenceConfig, shutdown: CancellationToken) -> Result<(), EvidenceError> {
    Evidence::open(config).await?.run(shutdown).await
}
