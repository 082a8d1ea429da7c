//! The verified-token cache: a token seen again skips parsing and its signature check.
//!
//! - Keyed by BLAKE3 of the token's bytes; the token itself is never kept.
//! - An entry answers only while the token would still pass an uncached check: `exp` and
//!   `nbf` are compared with the issuer's leeway exactly as `jsonwebtoken` does (valid while
//!   `now - leeway <= exp` and `nbf <= now + leeway`, in whole seconds).
//! - Each entry remembers the key that verified it; when a key refresh removes or changes that
//!   key, the entry goes ([`VerifiedCache::rotate`]), so a rotated-out key stops working at
//!   once, cached or not. Inserting checks the key is still current under the same lock, so a
//!   verification racing with a refresh cannot leave a stale entry behind.
//! - Bounded: when full, expired entries go first, then the ones closest to expiry (they have
//!   the least left to give).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Verified;
use super::keys::KeyFingerprint;

/// BLAKE3 of a token's bytes.
pub(crate) type TokenHash = [u8; 32];

pub(crate) fn token_hash(token: &str) -> TokenHash {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went on to a full verification.
    pub misses: u64,
    /// Tokens in the cache now.
    pub entries: usize,
    /// Most tokens kept (0: the cache is off).
    pub capacity: usize,
    /// Entries dropped to make room.
    pub evicted: u64,
    /// Entries dropped because their key was removed or changed at a refresh.
    pub revoked: u64,
}

/// What a cache hit returns, and until when.
pub(crate) struct Entry {
    pub verified: Verified,
    /// Index of the issuer in the authenticator.
    pub issuer: usize,
    pub kid: String,
    pub key: KeyFingerprint,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub leeway: u64,
}

impl Entry {
    /// The same test `jsonwebtoken` applies: `exp < now - leeway` is expired, `nbf > now +
    /// leeway` is not valid yet.
    fn valid_at(&self, now: u64) -> bool {
        self.exp >= now.saturating_sub(self.leeway)
            && self
                .nbf
                .is_none_or(|nbf| nbf <= now.saturating_add(self.leeway))
    }

    /// The last second at which the entry is still valid.
    fn last_valid(&self) -> u64 {
        self.exp.saturating_add(self.leeway)
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<TokenHash, Entry>,
    /// (last valid second, token) for eviction in expiry order.
    by_expiry: BTreeSet<(u64, TokenHash)>,
}

impl Inner {
    fn remove(&mut self, hash: &TokenHash) -> Option<Entry> {
        let entry = self.entries.remove(hash)?;
        self.by_expiry.remove(&(entry.last_valid(), *hash));
        Some(entry)
    }
}

pub(crate) struct VerifiedCache {
    capacity: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
    revoked: AtomicU64,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity of a token verified before and still valid at `now` (Unix seconds).
    pub fn get(&self, hash: &TokenHash, now: u64) -> Option<Verified> {
        let found = {
            let mut inner = self.lock();
            match inner.entries.get(hash) {
                Some(entry) if entry.valid_at(now) => Some(entry.verified.clone()),
                Some(entry) => {
                    // Past its end for good; before its start only if the clock went back.
                    if entry.last_valid() < now {
                        inner.remove(hash);
                    }
                    None
                }
                None => None,
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps a verified token, if `key_is_current` still holds under the cache lock.
    pub fn insert(
        &self,
        hash: TokenHash,
        entry: Entry,
        now: u64,
        key_is_current: impl FnOnce() -> bool,
    ) {
        if self.capacity == 0 || !entry.valid_at(now) {
            return;
        }
        let mut inner = self.lock();
        if !key_is_current() {
            return;
        }
        inner.remove(&hash);
        // Drop what has expired, then, if still full, what expires soonest.
        while let Some(&(last_valid, oldest)) = inner.by_expiry.first() {
            if last_valid >= now && inner.entries.len() < self.capacity {
                break;
            }
            inner.remove(&oldest);
            if last_valid >= now {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.by_expiry.insert((entry.last_valid(), hash));
        inner.entries.insert(hash, entry);
    }

    /// Runs `swap` (which installs an issuer's new keys and returns the keys it removed) under
    /// the cache lock, then drops that issuer's entries verified by a removed key.
    pub fn rotate(&self, issuer: usize, swap: impl FnOnce() -> Vec<(String, KeyFingerprint)>) {
        let mut inner = self.lock();
        let removed = swap();
        if removed.is_empty() {
            return;
        }
        let gone: Vec<TokenHash> = inner
            .entries
            .iter()
            .filter(|(_, e)| {
                e.issuer == issuer
                    && removed
                        .iter()
                        .any(|(kid, fp)| *kid == e.kid && *fp == e.key)
            })
            .map(|(hash, _)| *hash)
            .collect();
        for hash in &gone {
            inner.remove(hash);
        }
        self.revoked.fetch_add(gone.len() as u64, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().entries.len(),
            capacity: self.capacity,
            evicted: self.evicted.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(principal: &str) -> Verified {
        Verified {
            issuer: "https://issuer".into(),
            subject: principal.into(),
            principal: principal.into(),
            groups: vec![],
            attributes: Default::default(),
        }
    }

    fn entry(principal: &str, kid: &str, exp: u64, nbf: Option<u64>, leeway: u64) -> Entry {
        Entry {
            verified: verified(principal),
            issuer: 0,
            kid: kid.into(),
            key: [kid.as_bytes()[0]; 32],
            exp,
            nbf,
            leeway,
        }
    }

    #[test]
    fn entries_answer_exactly_while_an_uncached_check_would_pass() {
        let cache = VerifiedCache::new(10);
        let h = token_hash("token-a");
        cache.insert(h, entry("a", "k", 1000, Some(900), 30), 950, || true);
        // nbf 900 with 30s leeway: valid from 870; exp 1000: valid through 1030.
        assert!(cache.get(&h, 869).is_none());
        assert_eq!(cache.get(&h, 870).unwrap().principal, "a");
        assert!(cache.get(&h, 1030).is_some());
        assert!(cache.get(&h, 1031).is_none());
        // Gone for good once past its end, even if asked about an earlier time.
        assert!(cache.get(&h, 1000).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 3, 0));
    }

    #[test]
    fn no_entry_survives_when_its_key_was_rotated_out() {
        let cache = VerifiedCache::new(10);
        let (a, b) = (token_hash("a"), token_hash("b"));
        cache.insert(a, entry("a", "k1", 1000, None, 0), 0, || true);
        cache.insert(b, entry("b", "k2", 1000, None, 0), 0, || true);
        cache.rotate(1, || vec![("k1".into(), [b'k'; 32])]);
        assert!(cache.get(&a, 1).is_some(), "another issuer's rotation");
        cache.rotate(0, || vec![("k1".into(), [b'k'; 32])]);
        assert!(cache.get(&a, 1).is_none());
        assert!(cache.get(&b, 1).is_some());
        assert_eq!(cache.stats().revoked, 1);
        // A verification that raced with the rotation is not kept.
        cache.insert(a, entry("a", "k1", 1000, None, 0), 1, || false);
        assert!(cache.get(&a, 1).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_then_soonest_to_expire() {
        let cache = VerifiedCache::new(2);
        let (a, b, c, d) = (
            token_hash("a"),
            token_hash("b"),
            token_hash("c"),
            token_hash("d"),
        );
        cache.insert(a, entry("a", "k", 100, None, 0), 0, || true);
        cache.insert(b, entry("b", "k", 300, None, 0), 0, || true);
        cache.insert(c, entry("c", "k", 200, None, 0), 0, || true);
        assert!(cache.get(&a, 10).is_none(), "soonest to expire goes");
        assert!(cache.get(&b, 10).is_some() && cache.get(&c, 10).is_some());
        assert_eq!(cache.stats().evicted, 1);
        // At 250, c has expired: it goes without counting as an eviction.
        cache.insert(d, entry("d", "k", 400, None, 0), 250, || true);
        assert!(cache.get(&b, 250).is_some() && cache.get(&d, 250).is_some());
        assert_eq!(cache.stats().evicted, 1);
        assert_eq!(cache.stats().entries, 2);
    }

    #[test]
    fn a_disabled_cache_keeps_nothing() {
        let cache = VerifiedCache::new(0);
        let h = token_hash("a");
        cache.insert(h, entry("a", "k", 100, None, 0), 0, || true);
        assert!(cache.get(&h, 1).is_none());
        assert_eq!(cache.stats().entries, 0);
    }
}
