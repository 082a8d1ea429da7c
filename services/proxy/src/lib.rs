//! `gatehouse proxy`: a Layer-7 gateway in front of the Kubernetes API server.
//!
//! Module map (in the order a request meets them; [`pipeline`] owns that order):
//! - [`server`]: the HTTPS listener (rustls, h2 + http/1.1) on the guarded listener
//!   ([`listener`]: timeouts, connection limits, HTTP/2 limits) and graceful drain.
//! - [`approvals`]: decisions for held requests and the shared grants, followed from NATS.
//! - [`pipeline`]: parse → authenticate → identify → read body → authorize → record → forward
//!   → mask → stream (or, for an upgrade, relay the session).
//! - [`request_info`]: method + path → Kubernetes verb, group, version, resource, namespace, name.
//! - [`authn`]: bearer JWTs verified against OIDC discovery / JWKS, or mTLS client certificates.
//! - [`identity`]: the registry that makes a principal accountable (owner, team, purpose).
//! - [`policy`]: ordered allow / deny / approve rules, first match wins, default deny; makes
//!   [`policy::Permitted`]; reloaded when its file changes.
//! - [`record`]: the request's events on JetStream; makes [`record::Acked`].
//! - [`forward`]: to the API server with the proxy's credential, impersonating the caller.
//! - [`mask`]: Secret values and profile fields masked as responses stream.
//! - [`body`]: streamed response bodies, masked and digested on the way through.
//! - [`session`]: exec / attach / port-forward relayed byte for byte and recorded.
//! - [`rescue`]: refusals as Kubernetes `Status` responses.
//! - [`config`], [`http_client`]: configuration and outbound HTTPS.
//! - [`upstream_config`]: the API server from explicit settings, a kubeconfig or in-cluster.
//! - [`serving_cert`]: the serving certificate, reloaded when its files change.
//! - [`admin`], [`metrics`]: `/healthz`, `/readyz`, `/metrics` on the admin port.
#![forbid(unsafe_code)]

pub mod admin;
pub mod approvals;
pub mod body;
pub mod config;
pub mod forward;
pub mod identity;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod rescue;
pub mod server;
pub mod session;
pub mod upstream_config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ProxyConfig;
pub use gatehouse_authn as authn;
pub use gatehouse_https::{client as http_client, serving_cert};
/// The guarded listener every service serves on, re-exported so the approval service and the
/// `gatehouse` binary use the same one.
pub use gatehouse_listener as listener;
pub use gatehouse_policy::{mask, policy, request_info};
pub use metrics::Metrics;

/// How long `/readyz` may wait for the API server's own `/readyz`.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the admin server gets to finish its last answers at exit.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a readiness outcome is reused, so frequent probes do not hammer the API server.
const READINESS_CACHE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Bus(#[from] gatehouse_bus::BusError),
    #[error("{0}")]
    Startup(String),
}

/// A proxy that is bound and ready to serve.
pub struct Proxy {
    listener: TcpListener,
    options: server::Options,
    serving_cert: Arc<serving_cert::ServingCert>,
    pipeline: Arc<pipeline::Pipeline>,
    metrics: Metrics,
    admin: admin::Admin,
    policy_watcher: policy::Watcher,
    followers: CancellationToken,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.listener.local_addr().ok())
            .field("admin", &self.admin.local_addr())
            .finish()
    }
}

impl Proxy {
    /// Loads everything the configuration names, connects to NATS, makes sure the stream
    /// exists, and binds the listener. Fails with a message naming the file or setting at fault.
    pub async fn build(config: ProxyConfig) -> Result<Self, ProxyError> {
        config.validate().map_err(ProxyError::Config)?;
        let registry =
            identity::Registry::from_yaml(&read(&config.identities, "identity registry")?)
                .map_err(|message| ProxyError::File {
                    what: "identity registry",
                    path: config.identities.display().to_string(),
                    message,
                })?;
        let policy_watcher = policy::Watcher::load(&config.policy)
            .map_err(|e| ProxyError::Startup(e.to_string()))?;
        let policy = policy_watcher.shared();
        let serving_cert =
            serving_cert::ServingCert::load(&config.tls.cert_file, &config.tls.key_file)
                .map_err(ProxyError::Startup)?;
        let tls = server::server_tls(serving_cert.clone(), config.tls.client_ca_file.as_deref())
            .map_err(ProxyError::Startup)?;
        let upstream = forward::Upstream::new(&config.upstream).map_err(ProxyError::Startup)?;
        let authenticator = authn::Authenticator::new(&config.issuers, config.authn_options())
            .await
            .map_err(ProxyError::Config)?;
        let replica = config.replica_name();
        let bus = Bus::connect(&config.nats, &format!("gatehouse-proxy-{replica}")).await?;
        bus.ensure_stream(&config.nats.stream).await?;
        let nats = bus.clone();
        // Followers of decisions and grants; they stop when `serve` returns.
        let followers = CancellationToken::new();
        let metrics = Metrics::new();
        let keys =
            approvals::ApprovalKeys::load(config.approval_keys.clone(), Some(metrics.clone()))
                .map_err(ProxyError::Config)?;
        if config.approval_keys.is_none() {
            tracing::warn!(
                "no approval_keys: no held request will be released and no grant admitted"
            );
        }
        let (refusals, refused) = tokio::sync::mpsc::unbounded_channel();
        let approvals = approvals::Approvals::start(
            &bus,
            config.nats.stream.replicas,
            Arc::new(keys),
            refusals,
            metrics.clone(),
            followers.clone(),
        )
        .await?;
        let recorder = record::Recorder::new(
            bus,
            gatehouse_events::envelope::source("proxy", &replica),
            metrics.clone(),
        );
        tokio::spawn(record::record_refusals(
            recorder.clone(),
            metrics.clone(),
            refused,
        ));
        let listener = server::bind(config.listen)
            .await
            .map_err(ProxyError::Startup)?;
        metrics.policy_generation(policy.generation());
        let policy_watcher = policy_watcher.with_observer({
            let metrics = metrics.clone();
            Arc::new(move |reload: &policy::Reload| match reload {
                policy::Reload::Loaded { generation, .. } => {
                    metrics.policy_reloads(true);
                    metrics.policy_generation(*generation);
                }
                policy::Reload::Refused { .. } | policy::Reload::Unreadable { .. } => {
                    metrics.policy_reloads(false)
                }
                policy::Reload::Unchanged | policy::Reload::Settling => {}
            })
        });
        let pipeline = Arc::new(pipeline::Pipeline {
            authenticator,
            registry,
            policy,
            recorder,
            upstream,
            max_request_body: config.max_request_body,
            record_body_limit: config.record_body_limit,
            metrics: metrics.clone(),
            approvals,
        });
        let checks = vec![
            admin::Check::new("nats", move || {
                let connected = nats.is_connected();
                async move {
                    connected
                        .then_some(())
                        .ok_or_else(|| "not connected to NATS".to_owned())
                }
            }),
            admin::Check::new("upstream", {
                let pipeline = pipeline.clone();
                move || {
                    let pipeline = pipeline.clone();
                    async move { pipeline.upstream.probe(UPSTREAM_PROBE_TIMEOUT).await }
                }
            })
            .cached(READINESS_CACHE),
        ];
        let admin = admin::Admin::bind(config.admin_listen, metrics.clone(), checks)
            .await
            .map_err(ProxyError::Startup)?
            .with_limits(config.admin_connections.clone());
        let options = server::Options::new(
            config.connections.clone(),
            metrics.listeners().listener("proxy"),
        )
        .with_tls(tls);
        // Say loudly if the credential is more than impersonation needs (or less): the
        // cluster's RBAC only decides when the proxy's own credential cannot do everything.
        tokio::spawn({
            let pipeline = pipeline.clone();
            async move {
                match pipeline
                    .upstream
                    .review_credential(UPSTREAM_PROBE_TIMEOUT)
                    .await
                {
                    Ok(review) => match review.unfit() {
                        Some(why) => tracing::error!(
                            user = %review.user,
                            "the proxy's upstream credential {why}; give it only what \
                             deploy/kubernetes/base/proxy/rbac.yaml grants"
                        ),
                        None => tracing::info!(
                            user = %review.user,
                            "the proxy's upstream credential may impersonate and is not cluster-admin"
                        ),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "could not review the proxy's upstream credential")
                    }
                }
            }
        });
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %admin.local_addr(),
            upstream = %pipeline.upstream.url(),
            identities = pipeline.registry.len(),
            rules = pipeline.policy.current().rules().len(),
            "proxy ready"
        );
        Ok(Self {
            listener,
            options,
            serving_cert,
            pipeline,
            metrics,
            admin,
            policy_watcher,
            followers,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where `/healthz`, `/readyz` and `/metrics` answer (plain HTTP).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The proxy's metrics (shared handles: clones count into the same registry).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until `shutdown` is cancelled, then drains open requests. The admin port answers
    /// throughout, with `/readyz` failing from the moment `shutdown` is cancelled; the serving
    /// certificate and the policy are reloaded when their files change.
    pub async fn serve(self, shutdown: CancellationToken) {
        let pipeline = self.pipeline.clone();
        let background = CancellationToken::new();
        let admin = tokio::spawn(self.admin.serve(shutdown.clone(), background.clone()));
        let metrics = self.metrics.clone();
        let cert_watch = tokio::spawn(self.serving_cert.watch(
            serving_cert::POLL_INTERVAL,
            move |ok| metrics.tls_reloads(ok),
            background.clone(),
        ));
        // Reloads swap the policy for new requests; requests in flight keep theirs.
        let policy_watch = self.policy_watcher.spawn(background.clone());
        let totals = tokio::spawn(sync_totals(
            pipeline.clone(),
            self.metrics.clone(),
            background.clone(),
        ));
        server::serve(self.listener, self.options, self.pipeline, shutdown).await;
        let lost = pipeline.recorder.unacked();
        if lost > 0 {
            tracing::error!(
                events = lost,
                "events sent after their request was admitted were never acked; see the error lines with their ids"
            );
        }
        background.cancel();
        self.followers.cancel();
        // A scraper holding a connection open must not hold up the exit.
        let _ = tokio::time::timeout(ADMIN_STOP_TIMEOUT, admin).await;
        let _ = cert_watch.await;
        let _ = policy_watch.await;
        let _ = totals.await;
    }
}

/// Copies counters kept elsewhere (the token cache's, the recorder's) into the metrics, once
/// a second, until `stop`.
async fn sync_totals(pipeline: Arc<pipeline::Pipeline>, metrics: Metrics, stop: CancellationToken) {
    loop {
        let cache = pipeline.authenticator.cache_stats();
        metrics.sync_totals(cache.hits, cache.misses, pipeline.recorder.unacked());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

fn read(path: &std::path::Path, what: &'static str) -> Result<String, ProxyError> {
    std::fs::read_to_string(path).map_err(|e| ProxyError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
