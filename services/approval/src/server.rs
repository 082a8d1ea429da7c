//! Starting the service: connect, open the buckets, build the platforms, then run the
//! consumers, the sweeper and the HTTP listener until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use gatehouse_authn::{Authenticator, AuthnOptions};
use gatehouse_bus::{Bus, GRANTS_MAX_AGE, grants_bucket};
use gatehouse_listener::prometheus_client::registry::Registry;
use gatehouse_listener::{ConnectionLimits, ListenerMetrics, Options};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::approvers::Approvers;
use crate::config::ApprovalConfig;
use crate::discord::DiscordChannel;
use crate::service::{Channel, Service};
use crate::slack::SlackChannel;
use crate::store::Store;
use crate::teams::TeamsChannel;

/// A started (not yet serving) approval service.
pub struct ApprovalServer {
    service: Arc<Service>,
    router: Router,
    listener: TcpListener,
    tls: Option<gatehouse_https::server::RouterTls>,
    connections: ConnectionLimits,
    /// The admin port (`admin_listen`) and its limits.
    admin: Option<(TcpListener, ConnectionLimits)>,
    /// `gatehouse_approval_…`: the listeners' connection metrics.
    registry: Arc<Registry>,
    listeners: ListenerMetrics,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for ApprovalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalServer")
            .field("service", &self.service)
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

impl ApprovalServer {
    /// Connects to NATS, opens the buckets, checks every platform's configuration and binds
    /// the listener. Fails with a message naming what is wrong; never with a secret.
    pub async fn start(
        config: &ApprovalConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        Self::start_on(config, None, shutdown).await
    }

    /// [`Self::start`] on a listener bound already (instead of `listen`): a caller that must
    /// know the port first, to name it in the sign-in's callback address, binds it.
    pub async fn start_on(
        config: &ApprovalConfig,
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        config.validate()?;
        let replica = config.replica_name();
        let bus = Bus::connect(&config.nats, &format!("gatehouse-approval-{replica}"))
            .await
            .map_err(|e| e.to_string())?;
        bus.ensure_stream(&config.nats.stream)
            .await
            .map_err(|e| e.to_string())?;
        let store = Store::open(&bus, config.bucket_replicas, config.hold_retention)
            .await
            .map_err(|e| e.to_string())?;
        let grants = bus
            .key_value(&grants_bucket(GRANTS_MAX_AGE, config.bucket_replicas))
            .await
            .map_err(|e| e.to_string())?;
        // Fail at start, not at the first decision, if the key is missing or exposed.
        let signer = gatehouse_proof::attest::load_signing_key(&config.signing_key_file)?;
        tracing::info!(
            key = %format!("{}/{}", signer.name(), hex::encode(signer.key_id())),
            "decisions and grants are signed"
        );
        let text = std::fs::read_to_string(&config.approvers)
            .map_err(|e| format!("reading approvers {}: {e}", config.approvers.display()))?;
        let approvers = Approvers::from_yaml(&text)
            .map_err(|e| format!("approvers {}: {e}", config.approvers.display()))?;

        let mut channels = Vec::new();
        if let Some(slack) = &config.slack {
            channels.push(Channel::Slack(Arc::new(
                SlackChannel::new(slack).map_err(|e| format!("slack: {e}"))?,
            )));
        }
        if let Some(teams) = &config.teams {
            channels.push(Channel::Teams(Arc::new(
                TeamsChannel::new(teams)
                    .await
                    .map_err(|e| format!("teams: {e}"))?,
            )));
        }
        if let Some(discord) = &config.discord {
            channels.push(Channel::Discord(Arc::new(
                DiscordChannel::new(discord).map_err(|e| format!("discord: {e}"))?,
            )));
        }
        let authenticator = Authenticator::new(
            &config.api.issuers,
            AuthnOptions {
                shutdown: Some(shutdown.clone()),
                ..AuthnOptions::default()
            },
        )
        .await
        .map_err(|e| format!("api.issuers: {e}"))?;

        let service = Arc::new(
            Service::new(
                bus,
                gatehouse_events::envelope::source("approval", &replica),
                store,
                grants,
                approvers,
                channels.clone(),
                crate::service::DecisionSettings {
                    max_grant_window: config.max_grant_window,
                    signing_key_file: config.signing_key_file.clone(),
                },
            )
            .with_public_url(config.public_url.clone()),
        );
        let votes: Arc<dyn crate::channel::VoteSink> = Arc::new(Arc::clone(&service));
        let signin = match &config.page {
            Some(page) => Some(Arc::new(
                gatehouse_signin::SignIn::new(page.signin.clone())
                    .await
                    .map_err(|e| format!("page.signin: {e}"))?,
            )),
            None => None,
        };
        let mut router = crate::api::routes(
            Arc::clone(&service),
            Arc::new(authenticator),
            signin.clone(),
        )
        .route("/healthz", get(|| async { "ok" }));
        if let Some(signin) = signin {
            router = router.merge(crate::page::routes(Arc::clone(&service), signin));
        }
        for channel in channels {
            router = router.merge(match channel {
                Channel::Slack(c) => crate::slack::routes(c, Arc::clone(&votes)),
                Channel::Teams(c) => crate::teams::routes(c, Arc::clone(&votes)),
                Channel::Discord(c) => crate::discord::routes(c, Arc::clone(&votes)),
            });
        }
        let tls = match &config.tls {
            Some(files) => Some(gatehouse_https::server::RouterTls::load(
                &files.cert_file,
                &files.key_file,
            )?),
            None => {
                if !config.listen.ip().is_loopback() {
                    tracing::warn!(listen = %config.listen, "serving plain HTTP: put a TLS-terminating ingress in front");
                }
                None
            }
        };
        let listener = match listener {
            Some(listener) => listener,
            None => gatehouse_https::server::bind(config.listen).await?,
        };
        let admin = match config.admin_listen {
            Some(addr) => Some((
                gatehouse_listener::bind(addr, "admin_listen").await?,
                config.admin_connections.clone(),
            )),
            None => None,
        };
        let mut registry = Registry::with_prefix("gatehouse_approval");
        let listeners = ListenerMetrics::default();
        listeners.register(&mut registry);
        Ok(Self {
            service,
            router,
            listener,
            tls,
            connections: config.connections.clone(),
            admin,
            registry: Arc::new(registry),
            listeners,
            shutdown,
        })
    }

    /// Where `/metrics` and `/healthz` answer, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The listeners' connection metrics (shared handles).
    pub fn listeners(&self) -> &ListenerMetrics {
        &self.listeners
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) {
        let shutdown = self.shutdown.clone();
        let tasks = [
            tokio::spawn(Arc::clone(&self.service).run_holds(shutdown.clone())),
            tokio::spawn(Arc::clone(&self.service).run_withdrawals(shutdown.clone())),
            tokio::spawn(Arc::clone(&self.service).run_sweeper(shutdown.clone())),
        ];
        tracing::info!(listen = %self.local_addr(), tls = self.tls.is_some(), "approval service serving");
        let admin = self.admin.map(|(listener, limits)| {
            let options = Options::new(limits, self.listeners.listener("admin"));
            let router = gatehouse_listener::metrics::admin_router(self.registry.clone());
            tokio::spawn(gatehouse_listener::serve_router(
                listener,
                options,
                router,
                shutdown.clone(),
            ))
        });
        gatehouse_https::server::serve_router(
            self.listener,
            self.tls,
            Options::new(self.connections, self.listeners.listener("approval")),
            self.router,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}
