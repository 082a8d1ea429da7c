//! Outbound HTTPS to the issuer: discovery, JWKS and the token endpoint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::SignInError;

const TIMEOUT: Duration = Duration::from_secs(10);
const LIMIT: usize = 1024 * 1024;

pub(crate) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Trusts the public roots plus `ca_file` (PEM), if any.
pub(crate) fn client(ca_file: Option<&Path>) -> Result<HttpsClient, SignInError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad = |e: String| SignInError::Config(format!("ca_file {}: {e}", path.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no certificates".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SignInError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    // Plain http reaches only loopback URLs; `SignIn::new` checks every URL it will use.
    http.enforce_http(false);
    http.set_connect_timeout(Some(TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// An answer: status and (size-limited) body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

pub(crate) async fn send(
    client: &HttpsClient,
    request: Request<Full<Bytes>>,
) -> Result<Answer, String> {
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            // The error chain names the cause (refused, TLS, …); no URL query is in it.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            message
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), LIMIT)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
}

pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpsClient,
    url: &str,
) -> Result<T, String> {
    let request = Request::get(url)
        .header(header::ACCEPT, HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("GET {url}: {e}"))?;
    let answer = send(client, request)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !answer.status.is_success() {
        return Err(format!("GET {url}: HTTP {}", answer.status.as_u16()));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| format!("GET {url}: not the JSON expected: {e}"))
}
