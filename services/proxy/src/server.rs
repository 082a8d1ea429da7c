//! The HTTPS listener: TLS (rustls, ALPN h2 and http/1.1), one task per connection, graceful
//! drain on shutdown.
//!
//! With a client CA configured the server asks every client for a certificate but does not
//! require one; a certificate that verifies against the CA is attached to each request of its
//! connection as a [`PeerCertificate`] extension, which only this module can put there (a
//! client cannot forge it with a header).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::pipeline::Pipeline;
use crate::serving_cert::ServingCert;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests (watches included) get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The verified client certificate (leaf) of the connection a request came on.
#[derive(Clone, Debug)]
pub struct PeerCertificate(Arc<CertificateDer<'static>>);

impl PeerCertificate {
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.0
    }
}

/// A rustls server config presenting `cert` (reloaded as its files change), offering h2 and
/// http/1.1. With `client_ca_file`, clients are asked for a certificate verified against it
/// (and may still connect without one).
pub fn server_tls(
    cert: Arc<ServingCert>,
    client_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies client certificates against the CA bundle at `path`, letting clients without one
/// through (they must then bring a bearer token).
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("reading client CA {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(format!("{} holds no usable CA certificate", path.display()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client CA {}: {e}", path.display()))
}

/// Accepts connections until `shutdown`, then stops accepting and drains.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    serve_with(
        listener,
        tls,
        move |request, peer| pipeline.clone().handle(request, peer),
        shutdown,
    )
    .await;
}

/// [`serve`] with any request handler; each request carries its connection's
/// [`PeerCertificate`], if the client presented one.
pub async fn serve_with<H, F, B>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| PeerCertificate(Arc::new(leaf.clone().into_owned())));
            let service = service_fn(move |mut request: Request<Incoming>| {
                if let Some(cert) = &client_cert {
                    request.extensions_mut().insert(cert.clone());
                }
                // The pipeline fills in request_id; every line logged inside carries it.
                let span = tracing::info_span!("request", request_id = tracing::field::Empty);
                let response = handler(request, peer);
                async move { Ok::<_, std::convert::Infallible>(response.await) }.instrument(span)
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after the drain timeout");
    }
}

/// Binds `addr`; with port 0 the system picks a free port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// HTTPS for a service other than the proxy (approval, auditor API): a serving certificate
/// reloaded as its files change, and the rustls config presenting it. No client certificates.
pub struct RouterTls {
    cert: Arc<ServingCert>,
    config: Arc<rustls::ServerConfig>,
}

impl RouterTls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, String> {
        let cert = ServingCert::load(cert_file, key_file)?;
        let config = server_tls(cert.clone(), None)?;
        Ok(Self { cert, config })
    }
}

/// Serves `router` on `listener` until `shutdown`: over `tls` (its certificate reloaded as
/// it changes) or, without it, plain HTTP (for loopback or behind a TLS-terminating ingress).
pub async fn serve_router(
    listener: TcpListener,
    tls: Option<RouterTls>,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use tower::ServiceExt;
    let Some(RouterTls { cert, config }) = tls else {
        let stop = shutdown.clone();
        return axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    };
    let watch = tokio::spawn(cert.watch(
        crate::serving_cert::POLL_INTERVAL,
        crate::Metrics::new(),
        shutdown.clone(),
    ));
    serve_with(
        listener,
        config,
        move |request, _peer| {
            let router = router.clone();
            async move {
                match router.oneshot(request.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        },
        shutdown,
    )
    .await;
    watch.abort();
    Ok(())
}
