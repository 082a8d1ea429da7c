//! `gatehouse proxy --config FILE`: the proxy's YAML configuration.
//!
//! Secrets never sit in this file: the upstream token is read from `upstream.token_file` (or the
//! environment variable named by `upstream.token_env`), the NATS token from
//! `GATEHOUSE_NATS_TOKEN`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use gatehouse_authn::config::{ClaimMapping, ClaimPreset, IssuerConfig, TokenCacheConfig};
use gatehouse_bus::BusConfig;
pub use gatehouse_https::config::{CertGroups, CertPrincipal, ClientCertMapping, ServerTlsConfig};
pub use gatehouse_listener::ConnectionLimits;
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
    /// Timeouts and connection limits of `listen` (see [`ConnectionLimits`]).
    #[serde(default)]
    pub connections: ConnectionLimits,
    /// The same for `admin_listen`.
    #[serde(default)]
    pub admin_connections: ConnectionLimits,
    /// Names this replica in events (`gatehouse/proxy/<replica>`); defaults to the host name.
    #[serde(default)]
    pub replica: Option<String>,
    pub tls: ServerTlsConfig,
    pub upstream: UpstreamConfig,
    pub nats: BusConfig,
    /// Token issuers whose JWTs are accepted.
    pub issuers: Vec<IssuerConfig>,
    /// The cache of tokens that verified (see [`TokenCacheConfig`]).
    #[serde(default)]
    pub token_cache: TokenCacheConfig,
    /// The identity registry (YAML file): principal → owner, team, purpose, extra groups.
    pub identities: PathBuf,
    /// The policy (YAML file).
    pub policy: PathBuf,
    /// The keys trusted to sign approval decisions and grants: a file with one verifier key
    /// (`NAME+ID+KEY`, from `gatehouse approvals keygen`) per line, optionally followed by
    /// `until=<RFC 3339>` for the old key of a rotation. Re-read when it changes. Without it
    /// no held request is ever released and no grant admitted.
    #[serde(default)]
    pub approval_keys: Option<PathBuf>,
    /// Largest request body accepted (bytes). The API server's own limit is 3 MiB.
    #[serde(default = "default_max_request_body")]
    pub max_request_body: usize,
    /// Largest request or response body kept in an event at record levels `request` and
    /// `request-response`; longer bodies are cut, with the digest of the whole kept.
    #[serde(default = "default_record_body_limit")]
    pub record_body_limit: usize,
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
    /// Speak HTTP/2 to the API server when it offers it. Off by default: a pool of HTTP/1.1
    /// connections keeps requests from queueing behind one another on a single connection
    /// (measured: at 2,000 requests/s, added p50 0.5 ms with HTTP/1.1 against 1.4 ms over one
    /// HTTP/2 connection; `tests/bench/run`).
    #[serde(default)]
    pub http2: bool,
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

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_record_body_limit() -> usize {
    64 * 1024
}
fn default_max_request_body() -> usize {
    3 * 1024 * 1024
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Least and most time between scheduled key reloads: often enough for rotation, rarely
/// enough not to load an issuer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);

impl ProxyConfig {
    /// The authenticator's options this configuration asks for.
    pub fn authn_options(&self) -> gatehouse_authn::AuthnOptions {
        gatehouse_authn::AuthnOptions {
            cache_capacity: self.token_cache.max_entries,
            client_certs: self
                .tls
                .client_ca_file
                .is_some()
                .then(|| self.tls.client_certs.clone()),
            ..Default::default()
        }
    }

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
            if !(MIN_REFRESH_INTERVAL..=MAX_REFRESH_INTERVAL).contains(&issuer.refresh_interval) {
                return Err(format!(
                    "issuer {}: refresh_interval must be between 10s and 24h",
                    issuer.issuer
                ));
            }
            crate::authn::ClaimRules::from_config(&issuer.claims)
                .map_err(|e| format!("issuer {}: claims.{e}", issuer.issuer))?;
        }
        if self
            .issuers
            .iter()
            .enumerate()
            .any(|(i, a)| self.issuers[..i].iter().any(|b| b.issuer == a.issuer))
        {
            return Err("issuers: an issuer is listed twice".into());
        }
        let certs = &self.tls.client_certs;
        for (field, prefix) in [
            ("principal_prefix", &certs.principal_prefix),
            ("groups_prefix", &certs.groups_prefix),
        ] {
            if prefix.starts_with("system:") {
                return Err(format!(
                    "tls.client_certs.{field}: names beginning with system: are Kubernetes' own"
                ));
            }
        }
        self.connections.validate("connections")?;
        self.admin_connections.validate("admin_connections")?;
        if self.max_request_body == 0 {
            return Err("max_request_body must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> ProxyConfig {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/config/proxy.example.yaml"
        );
        yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_example_shows_presets_mtls_and_the_cache() {
        let config = example();
        config.validate().unwrap();
        assert_eq!(config.issuers[0].claims.preset, ClaimPreset::GithubActions);
        assert_eq!(config.issuers[1].claims.preset, ClaimPreset::Kubernetes);
        assert_eq!(config.issuers[1].refresh_interval, Duration::from_secs(300));
        assert!(config.tls.client_ca_file.is_some());
        assert_eq!(config.tls.client_certs.principal, CertPrincipal::CommonName);
        assert_eq!(config.token_cache.max_entries, 10_000);
        assert_eq!(config.connections, ConnectionLimits::default());
        assert_eq!(config.admin_connections.max_connections, 64);
    }

    #[test]
    fn bad_connection_limits_are_refused_naming_the_listener() {
        let mut config = example();
        config.connections.header_read_timeout = Duration::ZERO;
        assert_eq!(
            config.validate().unwrap_err(),
            "connections.header_read_timeout must be between 1s and 5m (got 0s)"
        );
        let mut config = example();
        config.admin_connections.max_connections_per_address = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .starts_with("admin_connections.max_connections_per_address")
        );
    }

    #[test]
    fn bad_claim_mappings_and_intervals_are_refused_with_a_clear_message() {
        let mut config = example();
        config.issuers[0].claims.principal = Some("{repository@{environment}".into());
        let e = config.validate().unwrap_err();
        assert!(
            e.starts_with(
                "issuer https://token.actions.githubusercontent.com: claims.principal: template"
            ),
            "{e}"
        );

        let mut config = example();
        config.issuers[1].refresh_interval = Duration::from_secs(1);
        assert!(config.validate().unwrap_err().contains("refresh_interval"));

        let mut config = example();
        config.tls.client_certs.groups_prefix = "system:".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("tls.client_certs.groups_prefix")
        );

        let mut config = example();
        let first = config.issuers[0].clone();
        config.issuers.push(first);
        assert!(config.validate().unwrap_err().contains("listed twice"));

        let e = yaml_serde::from_str::<IssuerConfig>(
            "issuer: https://i\naudiences: [a]\nclaims: {preset: gitlab}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown variant `gitlab`"), "{e}");
        let e = yaml_serde::from_str::<ServerTlsConfig>(
            "cert_file: a\nkey_file: b\nclient_certs: {principal: email}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("common-name"), "{e}");
    }
}
