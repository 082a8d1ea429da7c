//! `SignInConfig`: what a service's YAML says about browser sign-in.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Browser sign-in settings, embedded in a service's YAML:
///
/// ```yaml
/// signin:
///   issuer: https://login.example.com
///   client_id: gatehouse-console
///   client_secret_file: /etc/gatehouse/console-client-secret   # optional: public client + PKCE
///   redirect_url: https://audit.example.com/signin/callback
///   scopes: [openid, profile, email, groups]                    # default
///   groups_claim: groups                                        # default
///   session_ttl: 8h                                             # default
///   cookie_key_file: /etc/gatehouse/console-cookie.key          # 32+ random bytes
///   ca_file: /etc/gatehouse/idp-ca.pem                          # optional, issuer TLS
/// ```
///
/// Without `cookie_key_file` a key is generated in memory at start: sessions end when the
/// process restarts, and replicas behind one load balancer do not accept each other's
/// cookies. Replicas must share a key file (e.g. `head -c 32 /dev/urandom > cookie.key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// The OpenID Provider's issuer URL, exactly as its tokens' `iss`. https, or http on
    /// loopback only.
    pub issuer: String,
    pub client_id: String,
    /// A confidential client's secret (HTTP Basic at the token endpoint); absent for a public
    /// client, which relies on PKCE alone.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The external URL of the callback, registered with the issuer; its path ends in
    /// `/signin/callback` and the router from `SignIn::routes` is mounted at the prefix
    /// before it. Its origin is the one CSRF checks expect in `Origin`.
    pub redirect_url: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    #[serde(default)]
    pub cookie_key_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "groups"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

impl SignInConfig {
    /// The defaults for everything but the three settings that have none.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        redirect_url: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file: None,
            redirect_url: redirect_url.into(),
            scopes: default_scopes(),
            groups_claim: default_groups_claim(),
            session_ttl: default_session_ttl(),
            cookie_key_file: None,
            ca_file: None,
        }
    }
}
