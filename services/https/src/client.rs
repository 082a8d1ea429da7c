//! Outbound HTTP(S): one client type for the API server and for issuers' discovery and JWKS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading CA bundle {path}: {message}")]
    Ca { path: String, message: String },
    #[error("CA bundle {0} holds no certificates")]
    EmptyCa(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls client config trusting `ca_file` (PEM) and, when `public_roots`, the Mozilla roots.
pub fn client_tls(
    ca_file: Option<&Path>,
    public_roots: bool,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    if public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let display = path.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError::Ca {
                path: display.clone(),
                message: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSetupError::Ca {
                path: display.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::EmptyCa(display));
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pooled HTTP/1.1 + HTTP/2 client over `tls` (plain `http://` allowed; callers decide where).
pub fn https_client<B>(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsClient<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {message}")]
    Request { url: String, message: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("GET {url}: the answer is not the JSON expected: {message}")]
    Json { url: String, message: String },
}

/// GETs a small JSON document (at most `limit` bytes) within `timeout`.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpsClient<Full<Bytes>>,
    url: &str,
    limit: usize,
    timeout: Duration,
) -> Result<T, FetchError> {
    let fetch = async {
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let response = client
            .request(request)
            .await
            .map_err(|e| FetchError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| FetchError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::Json {
            url: url.to_owned(),
            message: e.to_string(),
        })
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| FetchError::Timeout {
            url: url.to_owned(),
            timeout,
        })?
}

/// True for `http://127.0.0.1…`, `http://localhost…`, `http://[::1]…`: the only places plain
/// HTTP is accepted for fetching keys.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}
