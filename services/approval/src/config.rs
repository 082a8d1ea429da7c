//! `gatehouse approval --config FILE`: what the service connects to and where it posts.
//!
//! ```yaml
//! listen: 0.0.0.0:8443
//! tls: {cert_file: /tls/tls.crt, key_file: /tls/tls.key}   # omit only behind a TLS ingress
//! nats: {url: nats://nats:4222}
//! approvers: /etc/gatehouse/approvers.yaml
//! signing_key_file: /etc/gatehouse/keys/approval.key   # signs decisions and grants (0600)
//! api:                          # who may use `gatehouse approvals` / `gatehouse grants`
//!   issuers: [{issuer: https://idp.example.com, audiences: [gatehouse]}]
//! slack: {channel: C0123, bot_token_file: …, signing_secret_file: …}
//! teams: {app_id: …, app_password_file: …, service_url: …, conversation_id: …}
//! discord: {application_id: …, bot_token_file: …, public_key: …, channel_id: …}
//! connections: {header_read_timeout: 10s, idle_timeout: 120s}   # optional; defaults shown
//! admin_listen: 127.0.0.1:9092  # optional: /metrics and /healthz over plain HTTP
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_authn::config::IssuerConfig;
use gatehouse_bus::BusConfig;
use gatehouse_https::config::ServerTlsConfig;
use gatehouse_listener::ConnectionLimits;
use serde::Deserialize;

use crate::discord::DiscordConfig;
use crate::slack::SlackConfig;
use crate::teams::TeamsConfig;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Chat callbacks (`/slack/*`, `/teams/messages`, `/discord/interactions`) and the API
    /// (`/v1/*`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HTTPS for `listen`. Without it the service speaks plain HTTP, which is for loopback or
    /// behind an ingress that terminates TLS.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Timeouts and connection limits of `listen` (see [`ConnectionLimits`]): chat platforms
    /// call it from the internet.
    #[serde(default)]
    pub connections: ConnectionLimits,
    /// Plain-HTTP `/metrics` (`gatehouse_approval_…`) and `/healthz`; none when unset. Keep it
    /// off public networks.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Timeouts and connection limits of `admin_listen`.
    #[serde(default)]
    pub admin_connections: ConnectionLimits,
    /// The service's external HTTPS address (`https://approvals.example.com`): chat messages
    /// link each hold's approver page, `PUBLIC_URL/holds/<approval id>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The approver page (`/holds/<approval id>`): approvers sign in with the OIDC
    /// authorization code flow (PKCE) against this client. Without it there is no page, and a
    /// rule with `step_up` can never be approved.
    #[serde(default)]
    pub page: Option<PageConfig>,
    /// Names this replica in events (`gatehouse/approval/<replica>`); defaults to the host name.
    #[serde(default)]
    pub replica: Option<String>,
    pub nats: BusConfig,
    /// The approver registry (see [`crate::approvers`]).
    pub approvers: PathBuf,
    /// The Ed25519 key that signs every decision and grant (`gatehouse approvals keygen`;
    /// mode 0600). Re-read before each signature, so replacing the file rotates the key; give
    /// proxies the new verifier key first (their `approval_keys`).
    pub signing_key_file: PathBuf,
    pub api: ApiConfig,
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    #[serde(default)]
    pub teams: Option<TeamsConfig>,
    #[serde(default)]
    pub discord: Option<DiscordConfig>,
    /// The longest grant any rule may open (at most 24h); a longer `grant_window` is cut to this.
    #[serde(default = "default_max_grant_window", with = "humantime_serde")]
    pub max_grant_window: Duration,
    /// How long a hold's record is kept after it is created (so late callbacks and
    /// `gatehouse approvals list` still find it). The ledger keeps the events for six years.
    #[serde(default = "default_hold_retention", with = "humantime_serde")]
    pub hold_retention: Duration,
    /// JetStream replicas of the approval buckets.
    #[serde(default = "default_replicas")]
    pub bucket_replicas: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Token issuers for API callers; the token's principal must be an approver identity.
    pub issuers: Vec<IssuerConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8444))
}

fn default_max_grant_window() -> Duration {
    Duration::from_secs(8 * 3600)
}

fn default_hold_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_replicas() -> usize {
    1
}

impl ApprovalConfig {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let config: Self = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "approval-0".to_owned())
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        self.nats.validate()?;
        if self.api.issuers.is_empty() {
            return Err("api.issuers: at least one token issuer is required".into());
        }
        if self.max_grant_window.is_zero() || self.max_grant_window > gatehouse_bus::GRANTS_MAX_AGE
        {
            return Err("max_grant_window must be more than zero and at most 24h".into());
        }
        self.connections.validate("connections")?;
        self.admin_connections.validate("admin_connections")?;
        if self.hold_retention < Duration::from_secs(3600) {
            return Err(
                "hold_retention must be at least 1h (holds must outlive their expiry)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<ApprovalConfig, String> {
        ApprovalConfig::from_yaml(&format!(
            "nats: {{url: nats://127.0.0.1:4222}}\napprovers: a.yaml\nsigning_key_file: k\n\
             api: {{issuers: [{{issuer: https://idp.example, audiences: [a]}}]}}\n{extra}"
        ))
    }

    #[test]
    fn connection_limits_of_both_ports_default_and_are_checked() {
        let defaults = config("").unwrap();
        assert_eq!(defaults.connections, ConnectionLimits::default());
        assert_eq!(defaults.admin_listen, None);
        assert_eq!(
            config("connections: {header_read_timeout: 0s}").unwrap_err(),
            "connections.header_read_timeout must be between 1s and 5m (got 0s)"
        );
        assert!(
            config("admin_connections: {http2: {max_concurrent_streams: 0}}")
                .unwrap_err()
                .starts_with("admin_connections.http2.max_concurrent_streams")
        );
    }
}

/// The approver page's sign-in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    pub signin: gatehouse_signin::SignInConfig,
}
