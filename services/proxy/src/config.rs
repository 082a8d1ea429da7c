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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The API server, e.g. `https://10.0.0.1:6443`.
    pub url: String,
    /// CA bundle that signed the API server's certificate. Without it, public roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// File holding the proxy's own bearer token (a service account allowed to impersonate).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token instead of a file.
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
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
        let upstream: http::Uri = self
            .upstream
            .url
            .parse()
            .map_err(|e| format!("upstream.url {:?}: {e}", self.upstream.url))?;
        if upstream.scheme_str() != Some("https") {
            return Err(format!(
                "upstream.url {:?} must be https: the proxy sends its own credential there",
                self.upstream.url
            ));
        }
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
