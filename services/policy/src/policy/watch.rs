//! The policy in force, and reloading it when its file changes.
//!
//! [`SharedPolicy`] holds the current `Arc<Policy>`; a request takes the `Arc` once and keeps
//! deciding with it, so a swap never disturbs a request or connection in flight. [`Watcher`]
//! polls the file (default every second) and swaps a new policy in only if it loads; a bad
//! file is logged with its line and the previous policy stays in force.
//!
//! Change detection: the file's metadata (size, modification time, inode, and the path the
//! name resolves to) is checked every poll, and the content is hashed when it changed — and
//! every tenth poll anyway, in case a write kept size and mtime. Editors that write a new file
//! and rename it, and Kubernetes ConfigMap mounts that swap a `..data` symlink, both change the
//! inode or the resolved path. A new content is applied only once it has been seen unchanged
//! on two consecutive polls, so a file caught half-written (which could even parse, as a rule
//! cut short before its `namespaces:`) is never loaded.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::Policy;

/// Poll interval of a [`Watcher`] unless set otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Every this many polls the content is hashed even if the metadata did not change.
const REHASH_EVERY: u64 = 10;

/// The policy in force; cheap to clone and to read.
#[derive(Clone, Debug)]
pub struct SharedPolicy {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    current: ArcSwap<Policy>,
    generation: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SharedPolicy {
    /// Generation 1: `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            inner: Arc::new(Shared {
                current: ArcSwap::from_pointee(policy),
                generation: AtomicU64::new(1),
                failed: AtomicU64::new(0),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// The policy in force. Take it once per request and decide with it.
    pub fn current(&self) -> Arc<Policy> {
        self.inner.current.load_full()
    }

    /// Starts at 1; +1 per policy swapped in.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Reloads refused because the file did not load or could not be read.
    pub fn failed_reloads(&self) -> u64 {
        self.inner.failed.load(Ordering::Acquire)
    }

    /// Why the last reload was refused, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Puts `policy` in force; returns the new generation.
    pub fn replace(&self, policy: Policy) -> u64 {
        self.inner.current.store(Arc::new(policy));
        self.set_error(None);
        self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn refused(&self, error: String) {
        self.inner.failed.fetch_add(1, Ordering::AcqRel);
        self.set_error(Some(error));
    }

    fn set_error(&self, error: Option<String>) {
        match self.inner.last_error.lock() {
            Ok(mut e) => *e = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }
}

/// What one poll found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Nothing new.
    Unchanged,
    /// New content seen; applied if it is the same on the next poll.
    Settling,
    /// A new policy is in force.
    Loaded { generation: u64, rules: usize },
    /// The new content did not load; the previous policy stays.
    Refused { error: String },
    /// The file could not be read; the previous policy stays.
    Unreadable { error: String },
}

/// Called after each poll that loaded, refused, or could not read the file (for metrics).
pub type ReloadObserver = Arc<dyn Fn(&Reload) + Send + Sync>;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    resolved: Option<PathBuf>,
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let meta = std::fs::metadata(path)?;
    Ok(Fingerprint {
        resolved: std::fs::canonicalize(path).ok(),
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: (meta.dev(), meta.ino()),
    })
}

/// Polls a policy file and swaps in each new version that loads.
pub struct Watcher {
    path: PathBuf,
    shared: SharedPolicy,
    interval: Duration,
    observer: Option<ReloadObserver>,
    fingerprint: Option<Fingerprint>,
    applied: blake3::Hash,
    /// New content waiting to be seen unchanged once more.
    settling: Option<blake3::Hash>,
    /// Content already refused, so it is reported once.
    refused: Option<blake3::Hash>,
    unreadable: Option<String>,
    polls: u64,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("path", &self.path)
            .field("generation", &self.shared.generation())
            .finish()
    }
}

/// Why the first load failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("policy {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("policy {path}: {error}")]
    Load {
        path: String,
        error: super::LoadError,
    },
}

impl Watcher {
    /// Loads the file; it must load, since there is no previous policy to fall back on.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, WatchError> {
        let path = path.into();
        let shown = path.display().to_string();
        let fingerprint = fingerprint(&path).ok();
        let text = std::fs::read_to_string(&path).map_err(|error| WatchError::Read {
            path: shown.clone(),
            error,
        })?;
        let policy =
            Policy::from_yaml(&text).map_err(|error| WatchError::Load { path: shown, error })?;
        Ok(Self {
            path,
            shared: SharedPolicy::new(policy),
            interval: DEFAULT_INTERVAL,
            observer: None,
            fingerprint,
            applied: blake3::hash(text.as_bytes()),
            settling: None,
            refused: None,
            unreadable: None,
            polls: 0,
        })
    }

    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    pub fn with_observer(mut self, observer: ReloadObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The policy in force, shared with whoever decides.
    pub fn shared(&self) -> SharedPolicy {
        self.shared.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the file once (blocking file I/O; small files).
    pub fn poll(&mut self) -> Reload {
        self.polls += 1;
        let outcome = self.poll_inner();
        if !matches!(outcome, Reload::Unchanged | Reload::Settling)
            && let Some(observer) = &self.observer
        {
            observer(&outcome);
        }
        outcome
    }

    fn poll_inner(&mut self) -> Reload {
        let shown = self.path.display().to_string();
        let now = fingerprint(&self.path).ok();
        let metadata_changed = now != self.fingerprint;
        if !metadata_changed
            && self.settling.is_none()
            && self.unreadable.is_none()
            && !self.polls.is_multiple_of(REHASH_EVERY)
        {
            return Reload::Unchanged;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                let error = format!("cannot read {shown}: {e}");
                self.settling = None;
                if self.unreadable.as_ref() == Some(&error) {
                    return Reload::Unchanged;
                }
                tracing::error!(path = %shown, error = %e, "policy file unreadable; the previous policy stays in force");
                self.unreadable = Some(error.clone());
                self.shared.refused(error.clone());
                return Reload::Unreadable { error };
            }
        };
        self.unreadable = None;
        self.fingerprint = now;
        let hash = blake3::hash(text.as_bytes());
        if hash == self.applied {
            self.settling = None;
            if self.refused.take().is_some() || self.shared.last_error().is_some() {
                // Back to the policy in force: nothing is wrong any more.
                self.shared.set_error(None);
            }
            return Reload::Unchanged;
        }
        if Some(hash) == self.refused {
            self.settling = None;
            return Reload::Unchanged;
        }
        if self.settling != Some(hash) {
            self.settling = Some(hash);
            return Reload::Settling;
        }
        self.settling = None;
        match Policy::from_yaml(&text) {
            Ok(policy) => {
                let rules = policy.rules().len();
                let generation = self.shared.replace(policy);
                self.applied = hash;
                self.refused = None;
                tracing::info!(path = %shown, generation, rules, "policy reloaded");
                Reload::Loaded { generation, rules }
            }
            Err(e) => {
                let error = format!("policy {shown}: {e}");
                tracing::error!(path = %shown, error = %e, "policy file refused; the previous policy stays in force");
                self.refused = Some(hash);
                self.shared.refused(error.clone());
                Reload::Refused { error }
            }
        }
    }

    /// Polls until `shutdown`, on the blocking pool so file I/O never stalls a worker.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut watcher = self;
            let mut tick = tokio::time::interval(watcher.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                watcher = match tokio::task::spawn_blocking(move || {
                    watcher.poll();
                    watcher
                })
                .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %e, "policy watcher stopped; the policy in force stays");
                        return;
                    }
                };
            }
        })
    }
}
