//! `gatehouse proxy`: a Layer-7 gateway in front of the Kubernetes API server.
//!
//! Module map (in the order a request meets them; [`pipeline`] owns that order):
//! - [`server`]: the HTTPS listener (rustls, h2 + http/1.1) and graceful drain.
//! - [`pipeline`]: parse → authenticate → identify → authorize → record → forward → stream.
//! - [`request_info`]: method + path → Kubernetes verb, group, version, resource, namespace, name.
//! - [`authn`]: bearer JWTs verified against OIDC discovery / JWKS.
//! - [`identity`]: the registry that makes a principal accountable (owner, team, purpose).
//! - [`policy`]: ordered allow / deny rules, first match wins, default deny; makes [`policy::Permitted`].
//! - [`record`]: the request's events on JetStream; makes [`record::Acked`].
//! - [`forward`]: to the API server with the proxy's credential, impersonating the caller.
//! - [`body`]: streamed response bodies, digested on the way through.
//! - [`rescue`]: refusals as Kubernetes `Status` responses.
//! - [`config`], [`http_client`]: configuration and outbound HTTPS.
#![forbid(unsafe_code)]

pub mod authn;
pub mod body;
pub mod config;
pub mod forward;
pub mod http_client;
pub mod identity;
pub mod mask;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod record;
pub mod request_info;
pub mod rescue;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse_bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ProxyConfig;

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
    tls: Arc<rustls::ServerConfig>,
    pipeline: Arc<pipeline::Pipeline>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.listener.local_addr().ok())
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
        let policy =
            policy::Policy::from_yaml(&read(&config.policy, "policy")?).map_err(|message| {
                ProxyError::File {
                    what: "policy",
                    path: config.policy.display().to_string(),
                    message,
                }
            })?;
        let tls = server::server_tls(&config.tls.cert_file, &config.tls.key_file)
            .map_err(ProxyError::Startup)?;
        let upstream = forward::Upstream::new(&config.upstream).map_err(ProxyError::Startup)?;
        let authenticator = authn::Authenticator::new(&config.issuers)
            .await
            .map_err(ProxyError::Config)?;
        let replica = config.replica_name();
        let bus = Bus::connect(&config.nats, &format!("gatehouse-proxy-{replica}")).await?;
        bus.ensure_stream(&config.nats.stream).await?;
        let recorder =
            record::Recorder::new(bus, gatehouse_events::envelope::source("proxy", &replica));
        let listener = server::bind(config.listen)
            .await
            .map_err(ProxyError::Startup)?;
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            upstream = %upstream.url(),
            identities = registry.len(),
            rules = policy.rules().len(),
            "proxy ready"
        );
        Ok(Self {
            listener,
            tls,
            pipeline: Arc::new(pipeline::Pipeline {
                authenticator,
                registry,
                policy,
                recorder,
                upstream,
                max_request_body: config.max_request_body,
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` is cancelled, then drains open requests.
    pub async fn serve(self, shutdown: CancellationToken) {
        let pipeline = self.pipeline.clone();
        server::serve(self.listener, self.tls, self.pipeline, shutdown).await;
        let lost = pipeline.recorder.unacked();
        if lost > 0 {
            tracing::error!(
                events = lost,
                "events sent after their request was admitted were never acked; see the error lines with their ids"
            );
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
