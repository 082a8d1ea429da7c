//! The evidence service's metrics (OpenMetrics, all named `gatehouse_evidence_…`), served with
//! `/healthz` on `admin_listen` when it is set.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WitnessLabels {
    witness: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    witness: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Shared handles: clones count into the same registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    entries: Counter,
    batches: Counter,
    ledger_entries: Gauge,
    gap_alarms: Counter,
    missing_sequences: Counter,
    checkpoints: Family<ResultLabels, Counter>,
    pruned: Counter,
    backups: Family<ResultLabels, Counter>,
    archived_through: Gauge,
    archive_rounds: Family<ResultLabels, Counter>,
    active: Gauge,
    role_changes: Counter,
    replica: Family<ReplicaLabels, Gauge>,
    listeners: gatehouse_listener::ListenerMetrics,
    witness_cosignatures: Family<WitnessLabels, Counter>,
    witness_refusals: Family<RefusalLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse_evidence");
        let entries = Counter::default();
        registry.register("entries", "Events appended to the ledger", entries.clone());
        let batches = Counter::default();
        registry.register(
            "batches",
            "Group commits (one fsynced write batch each)",
            batches.clone(),
        );
        let ledger_entries = Gauge::default();
        registry.register(
            "ledger_entries",
            "Entries in the ledger now",
            ledger_entries.clone(),
        );
        let gap_alarms = Counter::default();
        registry.register(
            "gap_alarms",
            "Gaps found in the stream's sequences (each an ALARM log line, a gap record and a ledger.gap event)",
            gap_alarms.clone(),
        );
        let missing_sequences = Counter::default();
        registry.register(
            "missing_sequences",
            "Stream sequences missing from the stream when read",
            missing_sequences.clone(),
        );
        let checkpoints = Family::<ResultLabels, Counter>::default();
        registry.register(
            "checkpoints",
            "Checkpoints signed, or refused because the ledger no longer extends the last one",
            checkpoints.clone(),
        );
        let pruned = Counter::default();
        registry.register(
            "pruned_entries",
            "Entries whose payload retention pruned (their hashes kept)",
            pruned.clone(),
        );
        let backups = Family::<ResultLabels, Counter>::default();
        registry.register("backups", "Ledger backups, by result", backups.clone());
        let archived_through = Gauge::default();
        registry.register(
            "archived_through",
            "Entries before this index are in the write-once archive",
            archived_through.clone(),
        );
        let archive_rounds = Family::<ResultLabels, Counter>::default();
        registry.register(
            "archive_rounds",
            "Archiving rounds, by result (a failure is also an archive_failed alarm)",
            archive_rounds.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "active",
            "1 while this replica holds the lease (signs checkpoints), 0 while it is a standby",
            active.clone(),
        );
        let role_changes = Counter::default();
        registry.register(
            "role_changes",
            "Times this replica became active or standby",
            role_changes.clone(),
        );
        let replica = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "replica_info",
            "This replica's name and durable consumer (value 1)",
            replica.clone(),
        );
        // The admin port's and the auditor API's connections (listener `admin`, `auditor_api`).
        let listeners = gatehouse_listener::ListenerMetrics::default();
        listeners.register(&mut registry);
        let witness_cosignatures = Family::<WitnessLabels, Counter>::default();
        registry.register(
            "witness_cosignatures",
            "Checkpoints a witness cosigned (C2SP tlog-witness)",
            witness_cosignatures.clone(),
        );
        let witness_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "witness_refusals",
            "Checkpoints a witness refused or could not be asked to cosign, by reason (each an ALARM log line)",
            witness_refusals.clone(),
        );
        Self {
            registry: Arc::new(registry),
            witness_cosignatures,
            witness_refusals,
            entries,
            batches,
            ledger_entries,
            gap_alarms,
            missing_sequences,
            checkpoints,
            pruned,
            backups,
            archived_through,
            archive_rounds,
            active,
            role_changes,
            replica,
            listeners,
        }
    }

    /// The connection metrics of the process's listeners (shared handles).
    pub fn listeners(&self) -> &gatehouse_listener::ListenerMetrics {
        &self.listeners
    }

    pub fn committed(&self, appended: u64, ledger_entries: u64) {
        self.entries.inc_by(appended);
        self.batches.inc();
        self.ledger_entries
            .set(i64::try_from(ledger_entries).unwrap_or(i64::MAX));
    }

    pub fn gap(&self, first: u64, last: u64) {
        self.gap_alarms.inc();
        self.missing_sequences
            .inc_by(last.saturating_sub(first) + 1);
    }

    pub fn checkpoint(&self, signed: bool) {
        let result = if signed { "signed" } else { "refused" };
        self.checkpoints
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn witness_cosigned(&self, witness: &str) {
        self.witness_cosignatures
            .get_or_create(&WitnessLabels {
                witness: witness.to_owned(),
            })
            .inc();
    }

    pub fn witness_refused(&self, witness: &str, reason: &'static str) {
        self.witness_refusals
            .get_or_create(&RefusalLabels {
                witness: witness.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn pruned(&self, entries: u64) {
        self.pruned.inc_by(entries);
    }

    pub fn backup(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.backups.get_or_create(&ResultLabels { result }).inc();
    }

    /// An archiving round: where archiving stands after it, or `None` when it failed.
    pub fn archive_round(&self, archived_through: Option<u64>) {
        let result = match archived_through {
            Some(through) => {
                self.archived_through
                    .set(i64::try_from(through).unwrap_or(i64::MAX));
                "success"
            }
            None => "failure",
        };
        self.archive_rounds
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn replica(&self, replica: &str, consumer: &str) {
        self.replica
            .get_or_create(&ReplicaLabels {
                replica: replica.to_owned(),
                consumer: consumer.to_owned(),
            })
            .set(1);
    }

    pub fn active(&self, active: bool) {
        self.active.set(i64::from(active));
        self.role_changes.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Serves `/metrics`, `/healthz` and the routes of `extra` on `listen` until `stop`, on
    /// the guarded listener with `limits`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        limits: gatehouse_listener::ConnectionLimits,
        extra: axum::Router,
        stop: CancellationToken,
    ) {
        use axum::routing::get;
        let metrics = self.clone();
        let router = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let body = metrics.encode();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .merge(extra);
        let options = gatehouse_listener::Options::new(limits, self.listeners.listener("admin"));
        gatehouse_listener::serve_router(listener, options, router, stop).await;
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
