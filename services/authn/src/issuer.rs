//! One trusted issuer: its settings, its current keys, and how they are kept fresh.
//!
//! Keys are reloaded on a schedule (`refresh_interval`, ±10% jitter so replicas do not load
//! the issuer in step) by a task that stops when the authenticator is dropped or shut down,
//! and on demand when a token names an unknown `kid` (at most once per
//! [`super::UNKNOWN_KEY_REFRESH_GAP`]). A reload replaces the whole set: a key the issuer
//! removed stops verifying, and cached tokens it verified are dropped. A failed reload keeps
//! the keys already loaded (an issuer briefly down must not lock every caller out) and is
//! retried with backoff.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::cache::VerifiedCache;
use super::claims::ClaimRules;
use super::keys::{KeyFingerprint, KeySet, PreparedKey};
use gatehouse_https::client::{self as http_client, HttpsClient};

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_LIMIT: usize = 1024 * 1024;
/// Longest wait before retrying a failed scheduled reload.
const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

pub(crate) enum KeySource {
    Discovery,
    File(PathBuf),
}

pub(crate) struct TrustedIssuer {
    /// Index among the authenticator's issuers (names the issuer in cache entries).
    pub id: usize,
    pub issuer: String,
    pub source: KeySource,
    /// Built once per allowed algorithm (`jsonwebtoken` wants one key family per check):
    /// issuer, audiences, leeway, required claims.
    pub validations: Vec<(Algorithm, Validation)>,
    pub leeway: u64,
    pub rules: ClaimRules,
    pub http: HttpsClient<Full<Bytes>>,
    pub keys: RwLock<Option<Arc<KeySet>>>,
    /// When keys were last (re)loaded or a reload was attempted; rate-limits on-demand reloads.
    pub last_refresh: tokio::sync::Mutex<Option<Instant>>,
    pub unknown_key_gap: Duration,
    pub cache: Option<Arc<VerifiedCache>>,
}

impl TrustedIssuer {
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    pub fn current_keys(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn current_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<PreparedKey>> {
        self.current_keys()?.find(kid, alg)
    }

    /// Whether the key that verified a token is still one of the issuer's.
    pub fn has_key(&self, kid: &str, fingerprint: &KeyFingerprint) -> bool {
        self.current_keys()
            .is_some_and(|keys| keys.contains(Some(kid), fingerprint))
    }

    /// Reloads the keys. Unknown-kid reloads (`force` false) happen at most once per gap, so
    /// tokens with made-up kids cannot hammer the issuer; scheduled and start-up loads
    /// (`force`) do not count towards it, so a rotation right after one is still seen at once.
    pub async fn refresh(&self, force: bool) -> Result<(), String> {
        let mut last = self.last_refresh.lock().await;
        if !force {
            if last.is_some_and(|t| t.elapsed() < self.unknown_key_gap) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let jwks = self.load().await?;
        let (set, skipped) = KeySet::prepare(&jwks);
        if !skipped.is_empty() {
            tracing::debug!(issuer = %self.issuer, ?skipped, "keys not usable for signatures were left out");
        }
        self.install(set);
        Ok(())
    }

    /// Installs a new key set; with a cache, under its lock, dropping entries of removed keys.
    fn install(&self, set: KeySet) {
        let set = Arc::new(set);
        let swap = || {
            let mut slot = self.keys.write().unwrap_or_else(|p| p.into_inner());
            let old = slot.replace(set.clone());
            let Some(old) = old else {
                tracing::info!(issuer = %self.issuer, keys = ?set.kids(), "issuer keys loaded");
                return Vec::new();
            };
            let now = set.fingerprints();
            let removed: Vec<(String, KeyFingerprint)> = old
                .fingerprints()
                .difference(&now)
                .filter_map(|fp| old_kid(&old, fp).map(|kid| (kid, *fp)))
                .collect();
            if old.fingerprints() != now {
                tracing::info!(issuer = %self.issuer, keys = ?set.kids(), removed = removed.len(), "issuer keys changed");
            }
            removed
        };
        match &self.cache {
            Some(cache) => cache.rotate(self.id, swap),
            None => {
                swap();
            }
        }
    }

    async fn load(&self) -> Result<JwkSet, String> {
        match &self.source {
            KeySource::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a JWKS: {e}", path.display()))
            }
            KeySource::Discovery => {
                let issuer = &self.issuer;
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: Discovery =
                    http_client::get_json(&self.http, &url, FETCH_LIMIT, FETCH_TIMEOUT)
                        .await
                        .map_err(|e| e.to_string())?;
                if doc.issuer != *issuer {
                    return Err(format!(
                        "discovery at {url} names issuer {:?}, not {issuer:?}",
                        doc.issuer
                    ));
                }
                if !doc.jwks_uri.starts_with("https://")
                    && !http_client::is_loopback_url(&doc.jwks_uri)
                {
                    return Err(format!("jwks_uri {} is not https", doc.jwks_uri));
                }
                http_client::get_json(&self.http, &doc.jwks_uri, FETCH_LIMIT, FETCH_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// The `kid` a removed key had (keys without one cannot be cached, so need no name).
fn old_kid(set: &KeySet, fingerprint: &KeyFingerprint) -> Option<String> {
    set.kids()
        .into_iter()
        .find(|kid| set.contains(Some(kid), fingerprint))
        .map(str::to_owned)
}

/// Reloads `issuer`'s keys every `interval` (jittered) until `stop` or the issuer is gone.
/// `loaded` says whether the first load worked; if not, the first retry comes soon.
pub(crate) fn spawn_refresher(
    issuer: Weak<TrustedIssuer>,
    interval: Duration,
    loaded: bool,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut failures: u32 = if loaded { 0 } else { 1 };
        loop {
            let delay = if failures == 0 {
                jittered(interval)
            } else {
                retry_delay(failures, interval)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let Some(issuer) = issuer.upgrade() else {
                return;
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = issuer.refresh(true) => result,
            };
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "scheduled key refresh failed; keeping the keys already loaded");
                }
            }
        }
    });
}

/// `interval` ±10%.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::random_range(0.9..=1.1))
}

/// 1s, 2s, 4s, … capped by a minute and by the interval itself.
fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let backoff = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6));
    backoff.min(MAX_RETRY).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_secs(300);
        for _ in 0..100 {
            let d = jittered(interval);
            assert!(
                d >= Duration::from_secs(270) && d <= Duration::from_secs(330),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retries_back_off_up_to_a_minute_or_the_interval() {
        let five_min = Duration::from_secs(300);
        assert_eq!(retry_delay(1, five_min), Duration::from_secs(1));
        assert_eq!(retry_delay(3, five_min), Duration::from_secs(4));
        assert_eq!(retry_delay(30, five_min), MAX_RETRY);
        assert_eq!(
            retry_delay(30, Duration::from_millis(200)),
            Duration::from_millis(200)
        );
    }
}
