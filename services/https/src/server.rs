//! The HTTPS listener: TLS (rustls, ALPN h2 and http/1.1) on the guarded listener of
//! [`gatehouse_listener`] (timeouts, connection limits, HTTP/2 limits, graceful drain), which
//! the proxy, the approval service and the evidence service serve on.
//!
//! With a client CA configured the server asks every client for a certificate but does not
//! require one; a certificate that verifies against the CA is attached to each request of its
//! connection as a [`PeerCertificate`] extension, which only this module can put there (a
//! client cannot forge it with a header).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use gatehouse_listener::{Options, Peer};
use http::{Request, Response};
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::serving_cert::ServingCert;

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

/// Accepts connections until `shutdown`, then stops accepting and drains; any request handler, on the guarded listener ([`gatehouse_listener`]:
/// timeouts and connection limits from `options`); each request carries its connection's
/// [`PeerCertificate`], if the client presented one.
pub async fn serve_with<H, F, B>(
    listener: TcpListener,
    options: Options,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    gatehouse_listener::serve(
        listener,
        options,
        move |mut request: Request<Incoming>, peer: &Peer| {
            if let Some(cert) = &peer.client_certificate {
                request
                    .extensions_mut()
                    .insert(PeerCertificate(cert.clone()));
            }
            // The pipeline fills in request_id; every line logged inside carries it.
            let span = tracing::info_span!("request", request_id = tracing::field::Empty);
            handler(request, peer.addr).instrument(span)
        },
        shutdown,
    )
    .await;
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

/// Serves `router` on `listener` until `shutdown`, on the guarded listener with `options`:
/// over `tls` (its certificate reloaded as it changes) or, without it, plain HTTP (for loopback
/// or behind a TLS-terminating ingress).
pub async fn serve_router(
    listener: TcpListener,
    tls: Option<RouterTls>,
    options: Options,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let Some(RouterTls { cert, config }) = tls else {
        return gatehouse_listener::serve_router(listener, options, router, shutdown).await;
    };
    let watch =
        tokio::spawn(cert.watch(crate::serving_cert::POLL_INTERVAL, |_| {}, shutdown.clone()));
    gatehouse_listener::serve_router(listener, options.with_tls(config), router, shutdown).await;
    watch.abort();
}
