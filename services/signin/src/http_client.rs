//! Outbound HTTPS to the issuer: discovery, JWKS and the token endpoint, on the client every
//! Gatehouse service uses ([`gatehouse_https::client`]).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use crate::SignInError;

const TIMEOUT: Duration = Duration::from_secs(10);
const LIMIT: usize = 1024 * 1024;

pub(crate) type HttpsClient = gatehouse_https::client::HttpsClient<Full<Bytes>>;

/// Trusts the public roots plus `ca_file` (PEM), if any. Plain http reaches only loopback
/// URLs: `SignIn::new` checks every URL it will use.
pub(crate) fn client(ca_file: Option<&Path>) -> Result<HttpsClient, SignInError> {
    let tls = gatehouse_https::client::client_tls(ca_file, true)
        .map_err(|e| SignInError::Config(format!("ca_file: {e}")))?;
    Ok(gatehouse_https::client::https_client(tls, TIMEOUT))
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
    gatehouse_https::client::get_json(client, url, LIMIT, TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}
