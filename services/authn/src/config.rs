//! Trusted issuers and how their tokens' claims name a caller.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The cache of verified tokens: a token seen again skips its signature check until it
/// expires (with the same leeway as an uncached check).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// Most tokens kept; 0 turns the cache off.
    #[serde(default = "default_token_cache_entries")]
    pub max_entries: usize,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_token_cache_entries(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of accepted tokens. Keys come from its OIDC discovery document unless
    /// `jwks_file` is set.
    pub issuer: String,
    /// A static JWKS file to use instead of discovery (re-read on the refresh schedule and when
    /// an unknown `kid` shows up).
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
    /// How often the keys are reloaded (±10% jitter), so a key the issuer removed stops
    /// verifying without a restart. At least 10s.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    #[serde(default)]
    pub claims: ClaimMapping,
}

/// How a verified token's claims become a principal, groups and attributes.
///
/// A `preset` fills in every field for a well-known issuer; any field set here overrides the
/// preset's. Claim references name a top-level claim; if no top-level claim has that exact
/// name, a reference with `/` is a path into nested objects (`kubernetes.io/namespace`). A
/// value with `{…}` is a template instead: `"{repository}@{environment|ref}"` puts claims
/// together, `|` taking the first of several claims that is present.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    /// `generic` (default: `sub`, `groups`), `kubernetes` (projected service-account tokens)
    /// or `github-actions` (GitHub Actions OIDC tokens).
    #[serde(default)]
    pub preset: ClaimPreset,
    /// The claim naming the principal, or a template over claims.
    #[serde(default)]
    pub principal: Option<String>,
    /// Prepended to the principal, e.g. `github:` to keep issuers' names apart.
    #[serde(default)]
    pub principal_prefix: Option<String>,
    /// The claim holding groups (an array of strings, or one string); absent claim = no groups;
    /// `""` = none. Groups named `system:…` are Kubernetes' own and are never taken from a
    /// token: they would be impersonated upstream (`system:masters` is cluster-admin).
    #[serde(default)]
    pub groups: Option<String>,
    /// Prepended to every group from the token, e.g. `github:`, so an issuer's group names
    /// cannot collide with the cluster's.
    #[serde(default)]
    pub groups_prefix: Option<String>,
    /// Templates that each add one group when their claims are present (replaces the
    /// preset's list).
    #[serde(default)]
    pub derived_groups: Option<Vec<String>>,
    /// Extra claims kept with the identity, name → claim or template (added to the preset's;
    /// an empty value removes one of the preset's).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A ready-made [`ClaimMapping`] for a kind of issuer.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimPreset {
    #[default]
    Generic,
    Kubernetes,
    GithubActions,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_token_cache_entries() -> usize {
    10_000
}
