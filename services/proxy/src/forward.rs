//! The forward phase: the request goes to the API server as the caller, with the proxy's own
//! credential.
//!
//! [`Upstream::send`] takes a [`Permitted`] (policy allowed it) and an [`Acked`]
//! (`request.received` is in JetStream) by value, so nothing reaches the cluster without both.
//! The caller's `Authorization`, `Audit-ID`, every `Impersonate-*` and `X-Remote-*` header (and
//! their `_` spellings) are removed; the proxy's bearer token and `Impersonate-User` /
//! `Impersonate-Group` for the mapped identity are set, so the cluster's RBAC decides as it
//! would for the caller, and `Audit-ID` is Gatehouse's request id, so the API server's audit
//! log names each request as the ledger does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_events::{Identity, RequestInfo};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;

use crate::config::UpstreamConfig;
use crate::http_client::HttpsClient;
use crate::policy::Permitted;
use crate::record::Acked;
use crate::upstream_config::{self, Credential, ResolvedUpstream};

/// How often the token file is re-read: projected service-account tokens rotate under us.
const TOKEN_REREAD: Duration = Duration::from_secs(60);

/// Headers that describe one hop, not the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the request could not be built: {0}")]
    Build(String),
    #[error("{0}")]
    Unreachable(String),
}

/// The proxy's `Authorization` header for the API server, re-read from its file or variable
/// every [`TOKEN_REREAD`].
struct Token {
    source: Credential,
    /// The `Authorization` value (marked sensitive) and when it was read.
    current: std::sync::Mutex<Option<(HeaderValue, Instant)>>,
}

impl Token {
    fn header(&self) -> Result<Option<HeaderValue>, UpstreamError> {
        if matches!(self.source, Credential::None) {
            return Ok(None);
        }
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((value, read_at)) = current.as_ref()
            && (read_at.elapsed() < TOKEN_REREAD || matches!(self.source, Credential::Inline(_)))
        {
            return Ok(Some(value.clone()));
        }
        let raw = match &self.source {
            Credential::None => return Ok(None),
            Credential::File(path) => std::fs::read_to_string(path).map_err(|e| {
                UpstreamError::Build(format!(
                    "the proxy's upstream token file {} cannot be read: {e}",
                    path.display()
                ))
            })?,
            Credential::Env(name) => std::env::var(name).map_err(|_| {
                UpstreamError::Build(format!("the environment variable {name} holds no token"))
            })?,
            Credential::Inline(token) => token.to_string(),
        };
        if raw.trim().is_empty() {
            return Err(UpstreamError::Build(
                "the proxy's upstream token is empty".into(),
            ));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {}", raw.trim())).map_err(|_| {
            UpstreamError::Build("the proxy's upstream token is not a valid header value".into())
        })?;
        value.set_sensitive(true);
        *current = Some((value.clone(), Instant::now()));
        Ok(Some(value))
    }
}

/// The Kubernetes API server the proxy forwards to.
pub struct Upstream {
    url: String,
    /// scheme + authority of `url`.
    origin: String,
    /// Path prefix of `url` (for API servers behind a path-routing front), without trailing `/`.
    base_path: String,
    client: HttpsClient<Full<Bytes>>,
    /// HTTP/1.1 only: exec, attach and port-forward upgrade the connection, which HTTP/2
    /// cannot do.
    upgrade_client: HttpsClient<Full<Bytes>>,
    token: Token,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("url", &self.url).finish()
    }
}

impl Upstream {
    /// The API server of `config`: explicit, from a kubeconfig, or in-cluster.
    pub fn new(config: &UpstreamConfig) -> Result<Self, String> {
        let resolved = upstream_config::resolve(config)?;
        Self::from_resolved(&resolved, config.connect_timeout, config.http2)
    }

    /// Builds the client for an already resolved API server and credential; `http2` lets ALPN
    /// choose HTTP/2 (see [`UpstreamConfig::http2`]).
    pub fn from_resolved(
        resolved: &ResolvedUpstream,
        connect_timeout: Duration,
        http2: bool,
    ) -> Result<Self, String> {
        let uri: Uri = resolved
            .url
            .parse()
            .map_err(|e| format!("upstream URL {:?}: {e}", resolved.url))?;
        let (Some("https"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!(
                "upstream URL {:?} needs https:// and a host",
                resolved.url
            ));
        };
        let tls = resolved.client_tls()?;
        let server_name = resolved
            .tls_server_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("upstream tls-server-name {name:?} is not a host name"))
            })
            .transpose()?;
        let token = Token {
            source: resolved.credential.clone(),
            current: std::sync::Mutex::new(None),
        };
        // Read once now so a missing credential fails at start-up, not on the first request.
        token.header().map_err(|e| e.to_string())?;
        Ok(Self {
            url: resolved.url.trim_end_matches('/').to_owned(),
            origin: format!("https://{authority}"),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            client: upstream_client(tls.clone(), connect_timeout, server_name.clone(), http2),
            upgrade_client: upstream_client(tls, connect_timeout, server_name, false),
            token,
        })
    }

    /// Asks the API server's `/readyz` with the proxy's credential (no impersonation): `Ok` if
    /// it answers 2xx within `timeout`, else a reason fit for a readiness report.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let check = async {
            let request = Request::get(format!("{}{}/readyz", self.origin, self.base_path))
                .body(Full::new(Bytes::new()))
                .map_err(|e| format!("building the probe: {e}"))?;
            // The body does not matter; reading a little lets the connection be reused.
            let (status, _) = self.as_proxy(request, 64 * 1024).await?;
            match status {
                200..=299 => Ok(()),
                401 | 403 => Err(format!(
                    "the API server refused the proxy's credential (HTTP {status})"
                )),
                code => Err(format!("the API server's /readyz answered HTTP {code}")),
            }
        };
        tokio::time::timeout(timeout, check)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }

    /// Asks the API server who the proxy's own credential is and what it may do: its user
    /// and groups (SelfSubjectReview), whether it may do everything (cluster-admin), and
    /// whether it may impersonate users. Each request carries the Audit-ID
    /// `gatehouse-credential-check-…`, so the cluster's audit log tells these apart from the
    /// requests the proxy forwards.
    pub async fn review_credential(&self, timeout: Duration) -> Result<CredentialReview, String> {
        let review = async {
            let who = self
                .ask(
                    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                    serde_json::json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "SelfSubjectReview",
                    }),
                )
                .await?;
            let info = &who["status"]["userInfo"];
            let can = |verb: &str, group: &str, resource: &str| {
                self.ask(
                    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    serde_json::json!({
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}},
                    }),
                )
            };
            let everything = can("*", "*", "*").await?;
            let impersonate = can("impersonate", "", "users").await?;
            Ok(CredentialReview {
                user: info["username"].as_str().unwrap_or_default().to_owned(),
                groups: info["groups"]
                    .as_array()
                    .map(|g| {
                        g.iter()
                            .filter_map(|g| g.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                cluster_admin: everything["status"]["allowed"] == true,
                may_impersonate: impersonate["status"]["allowed"] == true,
            })
        };
        tokio::time::timeout(timeout, review)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }

    /// POSTs a review object with the proxy's own credential and returns the answer.
    async fn ask(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let request = Request::post(format!("{}{}{path}", self.origin, self.base_path))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "gatehouse (credential check)")
            .header(
                AUDIT_ID,
                format!("{CREDENTIAL_CHECK_AUDIT_PREFIX}{}", ulid::Ulid::new()),
            )
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("building the review: {e}"))?;
        let (status, bytes) = self.as_proxy(request, 1 << 20).await?;
        if !(200..300).contains(&status) {
            return Err(format!("{path} answered HTTP {status}"));
        }
        serde_json::from_slice(&bytes).map_err(|_| format!("{path} answered something not JSON"))
    }

    /// Sends a request of the proxy's own (no caller, no impersonation) with its credential;
    /// the status and at most `limit` bytes of the answer.
    async fn as_proxy(
        &self,
        mut request: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<(u16, Bytes), String> {
        if let Some(value) = self.token.header().map_err(|e| e.to_string())? {
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| describe_client_error(&e))?;
        let status = response.status().as_u16();
        let bytes = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok((status, bytes))
    }

    /// The API server's URL, as recorded in `request.forwarded`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a permitted, recorded request upstream as `identity`.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        _permit: Permitted,
        recorded: Acked,
        identity: &Identity,
        info: &RequestInfo,
        query: Option<&str>,
        mut parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = match query {
            Some(q) => format!("{}{}{}?{q}", self.origin, self.base_path, info.path),
            None => format!("{}{}{}", self.origin, self.base_path, info.path),
        };
        parts.uri = target
            .parse()
            .map_err(|e| UpstreamError::Build(format!("upstream URI: {e}")))?;
        // The client negotiates HTTP/2 with the API server by ALPN on its own.
        parts.version = Version::HTTP_11;
        prepare_headers(
            &mut parts.headers,
            self.token.header()?,
            identity,
            recorded.request_id(),
        )?;
        let request = Request::from_parts(parts, Full::new(body));
        self.client
            .request(request)
            .await
            .map_err(|e| UpstreamError::Unreachable(describe_client_error(&e)))
    }
}

/// What a held write would change, for its approvers.
#[derive(Debug)]
pub struct Preview {
    /// The object as it is now, as the caller may read it.
    pub current: Result<serde_json::Value, String>,
    /// The object as the API server says it would be after the write (a dry run).
    pub proposed: Result<serde_json::Value, String>,
}

/// One side of a [`Preview`], before it is taken apart.
#[derive(Debug)]
struct PreviewPart(Result<serde_json::Value, String>);

/// The `Audit-ID`s of a held write's preview: its request id with these suffixes, so the API
/// server's audit log joins them to the request's `request.held`.
pub const PREVIEW_READ_AUDIT_SUFFIX: &str = ".preview-read";
pub const PREVIEW_DRY_RUN_AUDIT_SUFFIX: &str = ".preview-dry-run";

/// Largest object a preview reads: bigger ones are named, not shown.
const PREVIEW_LIMIT: usize = 1024 * 1024;

impl Upstream {
    /// For the approvers of a held write (`update`, `patch`): the object as it is, and as the
    /// API server says it would be after the write, asked as `kubectl diff` asks (the same
    /// request with `dryRun=All`, which persists nothing), both as `identity` (impersonated, so
    /// the cluster's RBAC applies). Only a recorded, held request can be previewed; its
    /// `Audit-ID`s are the request id with [`PREVIEW_READ_AUDIT_SUFFIX`] and
    /// [`PREVIEW_DRY_RUN_AUDIT_SUFFIX`].
    #[allow(clippy::too_many_arguments)]
    pub async fn preview(
        &self,
        _held: &crate::policy::Hold,
        recorded: &Acked,
        identity: &Identity,
        info: &RequestInfo,
        query: Option<&str>,
        method: &http::Method,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Preview {
        let path = format!("{}{}{}", self.origin, self.base_path, info.path);
        let read = self
            .preview_call(
                http::Method::GET,
                path.clone(),
                None,
                Bytes::new(),
                identity,
                &format!("{}{PREVIEW_READ_AUDIT_SUFFIX}", recorded.request_id()),
            )
            .await;
        let dry_query = match query.filter(|q| !q.is_empty()) {
            Some(q) => format!("{q}&dryRun=All"),
            None => "dryRun=All".to_owned(),
        };
        let dry = self
            .preview_call(
                method.clone(),
                format!("{path}?{dry_query}"),
                content_type,
                body,
                identity,
                &format!("{}{PREVIEW_DRY_RUN_AUDIT_SUFFIX}", recorded.request_id()),
            )
            .await;
        Preview {
            current: read.0,
            proposed: dry.0,
        }
    }

    async fn preview_call(
        &self,
        method: http::Method,
        uri: String,
        content_type: Option<&str>,
        body: Bytes,
        identity: &Identity,
        audit_id: &str,
    ) -> PreviewPart {
        let call = async {
            let mut request = Request::builder()
                .method(method)
                .uri(uri)
                .header(header::ACCEPT, "application/json")
                .body(Full::new(body))
                .map_err(|e| format!("the preview could not be built: {e}"))?;
            if let Some(content_type) = content_type
                && let Ok(value) = HeaderValue::from_str(content_type)
            {
                request.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            let authorization = self.token.header().map_err(|e| e.to_string())?;
            prepare_headers(request.headers_mut(), authorization, identity, audit_id)
                .map_err(|e| e.to_string())?;
            let response = self.client.request(request).await.map_err(|e| {
                format!(
                    "the API server could not be reached: {}",
                    describe_client_error(&e)
                )
            })?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), PREVIEW_LIMIT)
                .collect()
                .await
                .map_err(|_| format!("the object is larger than {} KiB", PREVIEW_LIMIT / 1024))?
                .to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| "the API server's answer is not JSON".to_owned())?;
            if !status.is_success() {
                let message = value["message"].as_str().unwrap_or("no message");
                return Err(format!(
                    "the API server answered {}: {message}",
                    status.as_u16()
                ));
            }
            Ok(value)
        };
        PreviewPart(call.await)
    }
}

impl Upstream {
    /// Sends a permitted, recorded upgrade request (exec, attach, port-forward) upstream as
    /// `identity` over HTTP/1.1, keeping `Connection: Upgrade` and `Upgrade` so the API server
    /// can switch protocols. The caller takes the upgraded connection from the response.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_upgrade(
        &self,
        _permit: Permitted,
        recorded: Acked,
        identity: &Identity,
        info: &RequestInfo,
        query: Option<&str>,
        mut parts: http::request::Parts,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let upgrade = parts.headers.get(header::UPGRADE).cloned().ok_or_else(|| {
            UpstreamError::Build("an upgrade request without an Upgrade header".into())
        })?;
        let target = match query {
            Some(q) => format!("{}{}{}?{q}", self.origin, self.base_path, info.path),
            None => format!("{}{}{}", self.origin, self.base_path, info.path),
        };
        parts.uri = target
            .parse()
            .map_err(|e| UpstreamError::Build(format!("upstream URI: {e}")))?;
        parts.version = Version::HTTP_11;
        prepare_headers(
            &mut parts.headers,
            self.token.header()?,
            identity,
            recorded.request_id(),
        )?;
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade);
        let request = Request::from_parts(parts, Full::new(Bytes::new()));
        self.upgrade_client
            .request(request)
            .await
            .map_err(|e| UpstreamError::Unreachable(describe_client_error(&e)))
    }
}

/// A pooled HTTPS-only client (HTTP/2 by ALPN when `http2`), verifying the server as
/// `server_name` if given.
fn upstream_client(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    server_name: Option<ServerName<'static>>,
    http2: bool,
) -> HttpsClient<Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let builder = match server_name {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
        None => builder,
    };
    let connector = if http2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// The header the API server takes its audit event id from (and echoes in the response).
const AUDIT_ID: HeaderName = HeaderName::from_static("audit-id");

/// How the proxy's reviews of its own credential begin their Audit-ID (never a request id:
/// those are ULIDs).
pub const CREDENTIAL_CHECK_AUDIT_PREFIX: &str = "gatehouse-credential-check-";

/// Who the proxy's credential is, as the API server sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialReview {
    pub user: String,
    pub groups: Vec<String>,
    /// It may do every verb on every resource: cluster-admin or system:masters.
    pub cluster_admin: bool,
    /// It may impersonate users, which forwarding as the caller needs.
    pub may_impersonate: bool,
}

impl CredentialReview {
    /// Why this credential must not be the proxy's, if it must not: it bypasses the cluster's
    /// RBAC, or it cannot forward as the caller.
    pub fn unfit(&self) -> Option<String> {
        if self.groups.iter().any(|g| g == "system:masters") {
            return Some(format!(
                "authenticates as {}, a member of system:masters, which bypasses the cluster's RBAC",
                self.user
            ));
        }
        if self.cluster_admin {
            return Some(format!(
                "authenticates as {}, who may do anything in the cluster (cluster-admin)",
                self.user
            ));
        }
        if !self.may_impersonate {
            return Some(format!(
                "authenticates as {}, who may not impersonate users: the proxy forwards every \
                 request as its caller",
                self.user
            ));
        }
        None
    }
}

/// Replaces the caller's credentials, impersonation and audit id with the proxy's.
fn prepare_headers(
    headers: &mut HeaderMap,
    authorization: Option<HeaderValue>,
    identity: &Identity,
    request_id: &str,
) -> Result<(), UpstreamError> {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    // The body was read whole; the client sets the length of what it sends.
    headers.remove(header::CONTENT_LENGTH);
    let identity_claims: Vec<HeaderName> = headers
        .keys()
        .filter(|name| claims_identity(name))
        .cloned()
        .collect();
    for name in identity_claims {
        headers.remove(name);
    }
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value);
    }
    let bad = |what: &str| UpstreamError::Build(format!("{what} is not a valid header value"));
    headers.insert(
        HeaderName::from_static("impersonate-user"),
        HeaderValue::from_str(&identity.principal).map_err(|_| bad("the principal"))?,
    );
    for group in &identity.groups {
        headers.append(
            HeaderName::from_static("impersonate-group"),
            HeaderValue::from_str(group).map_err(|_| bad("a group name"))?,
        );
    }
    // Any the caller sent (all of them) go: the audit id is the ledger's, not the caller's.
    headers.remove(AUDIT_ID);
    headers.insert(
        AUDIT_ID,
        HeaderValue::from_str(request_id).map_err(|_| bad("the request id"))?,
    );
    Ok(())
}

/// Whether a header says who the caller is: `Impersonate-*`, or the front-proxy headers
/// `X-Remote-*` an API server trusts from its request-header authenticator. Spellings with `_`
/// for `-` go too: a proxy or CGI gateway between here and the API server may read them as the
/// same header.
fn claims_identity(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    let starts = |prefix: &[u8]| {
        name.len() >= prefix.len()
            && name
                .iter()
                .zip(prefix)
                .all(|(&c, &p)| c == p || (c == b'_' && p == b'-'))
    };
    starts(b"impersonate-") || starts(b"x-remote-")
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_credentials_and_impersonation_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Bearer caller-token".parse().unwrap(),
        );
        h.insert("impersonate-user", "system:admin".parse().unwrap());
        h.append("impersonate-group", "system:masters".parse().unwrap());
        h.insert("impersonate-extra-scopes", "all".parse().unwrap());
        h.insert("impersonate-uid", "0".parse().unwrap());
        h.insert("impersonate_user", "system:admin".parse().unwrap());
        h.insert("x-remote-user", "system:admin".parse().unwrap());
        h.insert("x_remote_group", "system:masters".parse().unwrap());
        h.insert("x-remote-extra-scopes", "all".parse().unwrap());
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        h.insert("audit-id", "chosen-by-the-caller".parse().unwrap());
        h.append("audit-id", "and-another".parse().unwrap());
        let identity = Identity {
            issuer: "i".into(),
            subject: "s".into(),
            principal: "ci-deployer".into(),
            registered: true,
            owner: None,
            team: None,
            purpose: None,
            groups: vec!["deployers".into(), "ci".into()],
            attributes: Default::default(),
        };
        prepare_headers(
            &mut h,
            Some("Bearer proxy".parse().unwrap()),
            &identity,
            "01KREQUEST",
        )
        .unwrap();
        assert_eq!(h[header::AUTHORIZATION], "Bearer proxy");
        let audit: Vec<_> = h.get_all("audit-id").iter().collect();
        assert_eq!(audit, ["01KREQUEST"]);
        assert_eq!(h["impersonate-user"], "ci-deployer");
        let groups: Vec<_> = h.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["deployers", "ci"]);
        assert!(!h.contains_key("impersonate-extra-scopes"));
        assert!(!h.contains_key("impersonate-uid"));
        for smuggled in [
            "impersonate_user",
            "x-remote-user",
            "x_remote_group",
            "x-remote-extra-scopes",
        ] {
            assert!(!h.contains_key(smuggled), "{smuggled}");
        }
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("x-secret-hop"));
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert_eq!(h[header::ACCEPT], "application/json");
    }

    #[test]
    fn an_unrepresentable_principal_is_an_error_not_a_panic() {
        let mut h = HeaderMap::new();
        let identity = Identity {
            issuer: "i".into(),
            subject: "s".into(),
            principal: "bad\nname".into(),
            registered: true,
            owner: None,
            team: None,
            purpose: None,
            groups: vec![],
            attributes: Default::default(),
        };
        assert!(prepare_headers(&mut h, None, &identity, "01KREQUEST").is_err());
    }
}
