//! `gatehouse proxy --config FILE`: the proxy's YAML configuration.
//!
//! Secrets never sit in this file: the upstream token is read from `upstream.token_file` (or the
//! environment variable named by `upstream.token_env`), the NATS token from
//! `GATEHOUSE_NATS_TOKEN`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_bus::BusConfig;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where kubectl and other clients connect (HTTPS).
    pub listen: SocketAddr,
    /// The admin port: `/healthz`, `/readyz`, `/metrics` over plain HTTP. The default,
    /// `127.0.0.1:9090`, is reachable only from inside the pod; set `0.0.0.0:9090` (or the pod
    /// IP) for kubelet `httpGet` probes and Prometheus, and keep it off public networks.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Names this replica in events (`gatehouse/proxy/<replica>`); defaults to the host name.
    #[serde(default)]
    pub replica: Option<String>,
    pub tls: ServerTlsConfig,
    pub upstream: UpstreamConfig,
    pub nats: BusConfig,
    /// Token issuers whose JWTs are accepted.
    pub issuers: Vec<IssuerConfig>,
    /// The identity registry (YAML file): principal → owner, team, purpose, extra groups.
    pub identities: PathBuf,
    /// The policy (YAML file).
    pub policy: PathBuf,
    /// Largest request body accepted (bytes). The API server's own limit is 3 MiB.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The API server and the proxy's own credential for it, given one of three ways:
///
/// - explicitly: `url` with `ca_file` and `token_file` or `token_env`;
/// - `kubeconfig: PATH` (and optionally `context`): server, CA, token or client certificate from
///   a kubeconfig file, as `kubectl config view --raw` writes it;
/// - `in_cluster: true`: the pod's service account (`KUBERNETES_SERVICE_HOST` / `_PORT`, the
///   token and CA under `service_account_dir`).
///
/// Tokens from files are re-read every minute, so projected tokens can rotate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The API server, e.g. `https://10.0.0.1:6443`.
    #[serde(default)]
    pub url: Option<String>,
    /// CA bundle that signed the API server's certificate. Without it, public roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File holding the proxy's own bearer token (a service account allowed to impersonate).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token instead of a file.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A kubeconfig file naming the API server and the proxy's credential.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; defaults to its `current-context`.
    #[serde(default)]
    pub context: Option<String>,
    /// Use the pod's service account.
    #[serde(default)]
    pub in_cluster: bool,
    /// Where the service account's `token` and `ca.crt` are mounted (with `in_cluster`).
    #[serde(default)]
    pub service_account_dir: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl UpstreamConfig {
    /// The explicit form: `url` with an optional CA file and token file.
    pub fn explicit(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            connect_timeout: default_connect_timeout(),
            ..Self::default()
        }
    }

    /// Checks that exactly one way of naming the API server is used, and only its own settings.
    pub fn validate(&self) -> Result<(), String> {
        let chosen: Vec<&str> = [
            ("url", self.url.is_some()),
            ("kubeconfig", self.kubeconfig.is_some()),
            ("in_cluster", self.in_cluster),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match chosen.as_slice() {
            [] => {
                return Err(
                    "upstream: name the API server with one of url (plus ca_file and \
                     token_file or token_env), kubeconfig (a kubeconfig file) or in_cluster: true \
                     (the pod's service account)"
                        .into(),
                );
            }
            [_] => {}
            several => {
                return Err(format!(
                    "upstream: url, kubeconfig and in_cluster are alternatives; set exactly one \
                     (found {})",
                    several.join(" and ")
                ));
            }
        }
        let explicit_only = [
            ("ca_file", self.ca_file.is_some()),
            ("token_file", self.token_file.is_some()),
            ("token_env", self.token_env.is_some()),
        ];
        if self.url.is_none()
            && let Some((name, _)) = explicit_only.iter().find(|(_, set)| *set)
        {
            return Err(format!(
                "upstream.{name} goes with upstream.url; with kubeconfig or in_cluster the CA and \
                 credential come from there"
            ));
        }
        if self.context.is_some() && self.kubeconfig.is_none() {
            return Err(
                "upstream.context names a kubeconfig context; set upstream.kubeconfig".into(),
            );
        }
        if self.service_account_dir.is_some() && !self.in_cluster {
            return Err("upstream.service_account_dir goes with upstream.in_cluster: true".into());
        }
        if let Some(url) = &self.url {
            if self.token_file.is_some() && self.token_env.is_some() {
                return Err("upstream: set token_file or token_env, not both".into());
            }
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("upstream.url {url:?}: {e}"))?;
            if uri.scheme_str() != Some("https") {
                return Err(format!(
                    "upstream.url {url:?} must be https: the proxy sends its own credential there"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of accepted tokens. Keys come from its OIDC discovery document unless
    /// `jwks_file` is set.
    pub issuer: String,
    /// A static JWKS file to use instead of discovery (re-read when an unknown `kid` shows up).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// CA bundle for the issuer's HTTPS endpoints, if not publicly trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms. HMAC and `none` are never accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default)]
    pub claims: ClaimMapping,
}

/// How a verified token's claims become a principal and groups.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    /// The claim naming the principal.
    #[serde(default = "default_principal_claim")]
    pub principal: String,
    /// Prepended to the principal, e.g. `github:` to keep issuers' names apart.
    #[serde(default)]
    pub principal_prefix: String,
    /// The claim holding groups (an array of strings, or one string); absent claim = no groups.
    /// Groups named `system:…` are Kubernetes' own and are never taken from a token: they would
    /// be impersonated upstream (`system:masters` is cluster-admin).
    #[serde(default = "default_groups_claim")]
    pub groups: String,
    /// Prepended to every group from the token, e.g. `github:`, so an issuer's group names
    /// cannot collide with the cluster's.
    #[serde(default)]
    pub groups_prefix: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            principal: default_principal_claim(),
            principal_prefix: String::new(),
            groups: default_groups_claim(),
            groups_prefix: String::new(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_request_body() -> usize {
    3 * 1024 * 1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}

impl ProxyConfig {
    /// The `source` replica name.
    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "proxy-0".to_owned())
        })
    }

    /// Checks what can be checked without touching the network or other files.
    pub fn validate(&self) -> Result<(), String> {
        self.nats.validate()?;
        self.upstream.validate()?;
        if self.issuers.is_empty() {
            return Err("issuers: at least one token issuer is required".into());
        }
        for issuer in &self.issuers {
            if issuer.audiences.is_empty() {
                return Err(format!(
                    "issuer {}: audiences must name at least one audience",
                    issuer.issuer
                ));
            }
            if issuer.jwks_file.is_none()
                && !issuer.issuer.starts_with("https://")
                && !crate::http_client::is_loopback_url(&issuer.issuer)
            {
                return Err(format!(
                    "issuer {}: discovery needs an https:// issuer (plain http only on loopback)",
                    issuer.issuer
                ));
            }
            crate::authn::parse_algorithms(&issuer.algorithms)
                .map_err(|e| format!("issuer {}: {e}", issuer.issuer))?;
        }
        if self.max_request_body == 0 {
            return Err("max_request_body must be greater than zero".into());
        }
        Ok(())
    }
}
