//! `gatehouse evidence --config FILE`.

use std::path::PathBuf;
use std::time::Duration;

use gatehouse_bus::BusConfig;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Holds the RocksDB ledger in `ledger/`. One evidence service writes one ledger.
    pub data_dir: PathBuf,
    pub nats: BusConfig,
    /// Durable consumer name. It tracks this ledger's position in the stream, so two ledgers
    /// (two replicas) must not share it; `{replica}` in it is replaced by the replica's name.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// This replica's name, shown in `/status`, the metrics and the lease
    /// (`runbooks/evidence-failover.md`). Defaults to `$HOSTNAME`, else `evidence`.
    #[serde(default)]
    pub replica: Option<String>,
    /// How long the active replica's lease outlives its last renewal (renewed every third of
    /// it): a standby takes over at most this long after the active one dies. Every replica of
    /// one stream must use the same value (the first creates the lease bucket with it).
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Most events appended (and fsynced) in one group commit.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Signed checkpoints of the Merkle tree; none are issued without this.
    #[serde(default)]
    pub checkpoints: Option<CheckpointConfig>,
    /// How long entries are kept, in days from when they were received. At least
    /// [`MIN_RETENTION_DAYS`] (six years); a smaller value is refused.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Write-once archives of sealed segments to S3 Object Lock storage
    /// (`runbooks/archive.md`).
    #[serde(default)]
    pub archive: Option<crate::archive::ArchiveConfig>,
    /// How often payloads past retention are pruned (at start, then on this schedule).
    #[serde(default = "default_prune_every", with = "humantime_serde")]
    pub prune_every: Duration,
    /// Plain-HTTP `/metrics` and `/healthz`; none when unset.
    #[serde(default)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Timeouts and connection limits of `admin_listen`
    /// ([`gatehouse_listener::ConnectionLimits`]).
    #[serde(default)]
    pub admin_connections: gatehouse_listener::ConnectionLimits,
    /// Online backups (RocksDB checkpoints) of the ledger.
    #[serde(default)]
    pub backups: Option<BackupConfig>,
    /// C2SP witnesses that cosign every checkpoint (`crate::witness`).
    #[serde(default)]
    pub witnesses: Option<crate::witness::WitnessesConfig>,
}

/// Where and how often the ledger is backed up; restore is `runbooks/ledger-restore.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Each backup is a new directory here, named by its time. Hard links make a backup cheap
    /// when this is on the ledger's filesystem; put it elsewhere to survive losing that disk.
    pub dir: PathBuf,
    #[serde(default = "default_backup_every", with = "humantime_serde")]
    pub every: Duration,
    /// Backups kept; older ones are removed.
    #[serde(default = "default_backup_keep")]
    pub keep: usize,
}

fn default_backup_every() -> Duration {
    Duration::from_secs(6 * 3600)
}

fn default_backup_keep() -> usize {
    8
}

fn default_prune_every() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Six years of 365¼ days, rounded up: HIPAA (45 CFR 164.316(b)(2)) keeps documentation six
/// years, and FFIEC and NIST 800-53 AU-11 retention plans commonly follow it.
pub const MIN_RETENTION_DAYS: u32 = 2_192;

fn default_retention_days() -> u32 {
    MIN_RETENTION_DAYS
}

/// How checkpoints are signed and how often.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The Ed25519 signing key in signed-note form, as `gatehouse checkpoint keygen` writes
    /// it. Only this service should be able to read it; it is never logged.
    pub key_file: PathBuf,
    /// The checkpoint's origin line; defaults to the key's name.
    #[serde(default)]
    pub origin: Option<String>,
    /// How often a checkpoint is issued (when the tree has grown); one is also issued at
    /// shutdown.
    #[serde(default = "default_every", with = "humantime_serde")]
    pub every: Duration,
}

fn default_every() -> Duration {
    Duration::from_secs(60)
}

impl EvidenceConfig {
    pub fn new(data_dir: PathBuf, nats: BusConfig) -> Self {
        Self {
            data_dir,
            nats,
            consumer: default_consumer(),
            replica: None,
            lease_ttl: default_lease_ttl(),
            batch_max: default_batch_max(),
            checkpoints: None,
            archive: None,
            retention_days: default_retention_days(),
            prune_every: default_prune_every(),
            backups: None,
            witnesses: None,
            admin_listen: None,
            admin_connections: gatehouse_listener::ConnectionLimits::default(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.nats.validate()?;
        if self.retention_days < MIN_RETENTION_DAYS {
            return Err(format!(
                "retention_days is {}, but evidence must be kept at least {MIN_RETENTION_DAYS} \
                 days (six years: HIPAA 45 CFR 164.316(b)(2)); use a legal hold to keep more, \
                 never less",
                self.retention_days
            ));
        }
        if self.batch_max == 0 || self.batch_max > 100_000 {
            return Err("batch_max must be between 1 and 100000".into());
        }
        if let Some(archive) = &self.archive {
            archive.validate()?;
            if self.checkpoints.is_none() {
                return Err(
                    "archive needs checkpoints: segments are archived as signed checkpoints cover them"
                        .into(),
                );
            }
        }
        if let Some(b) = &self.backups
            && (b.every < Duration::from_secs(60) || b.keep == 0)
        {
            return Err("backups.every must be at least 1m and backups.keep at least 1".into());
        }
        if self.prune_every < Duration::from_secs(60) {
            return Err("prune_every must be at least 1m".into());
        }
        if let Some(c) = &self.checkpoints
            && c.every < Duration::from_secs(1)
        {
            return Err("checkpoints.every must be at least 1s".into());
        }
        if let Some(w) = &self.witnesses {
            if self.checkpoints.is_none() && !w.list.is_empty() {
                return Err("witnesses cosign checkpoints: configure checkpoints too".into());
            }
            w.validate()?;
        }
        self.admin_connections.validate("admin_connections")?;
        let replica = self.replica_name();
        if replica.is_empty()
            || replica.len() > 64
            || !replica
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "replica {replica:?} must be 1 to 64 letters, digits, '-' or '_'"
            ));
        }
        let consumer = self.consumer_name();
        if consumer.is_empty()
            || !consumer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "consumer {consumer:?} must be letters, digits, '-' or '_'"
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(60) {
            return Err(format!(
                "lease_ttl must be between 1s and 60s (got {})",
                humantime_serde::re::humantime::format_duration(self.lease_ttl)
            ));
        }
        Ok(())
    }

    /// The replica's name: `replica`, else `$HOSTNAME` (a StatefulSet pod's name), else
    /// `evidence`.
    pub fn replica_name(&self) -> String {
        self.replica
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "evidence".to_owned())
    }

    /// The durable consumer's name, `{replica}` replaced.
    pub fn consumer_name(&self) -> String {
        self.consumer.replace("{replica}", &self.replica_name())
    }
}

/// How long the active replica's lease lives unless renewed.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(6);

fn default_lease_ttl() -> Duration {
    DEFAULT_LEASE_TTL
}

fn default_consumer() -> String {
    "evidence".into()
}
fn default_batch_max() -> usize {
    1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<EvidenceConfig, String> {
        let text = format!("data_dir: /tmp/x\nnats: {{url: nats://127.0.0.1:4222}}\n{extra}");
        let config: EvidenceConfig = yaml_serde::from_str(&text).map_err(|e| e.to_string())?;
        config.validate().map(|_| config)
    }

    #[test]
    fn witnesses_need_checkpoints_valid_keys_and_distinct_names() {
        let keys = "checkpoints: {key_file: /tmp/k}\n";
        let vkey = "witness.example/w1+18041f2a+BBl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h";
        let one = format!("witnesses: {{list: [{{url: 'http://127.0.0.1:1', vkey: '{vkey}'}}]}}\n");
        assert!(config(&format!("{keys}{one}")).is_ok());
        let e = config(&one).unwrap_err();
        assert!(e.contains("configure checkpoints too"), "{e}");
        let e = config(&format!("{keys}{}", one.replace("+BBl", "+ABl"))).unwrap_err();
        assert!(e.contains("not a cosignature/v1 vkey"), "{e}");
        let e = config(&format!("{keys}{}", one.replace("http://", "ftp://"))).unwrap_err();
        assert!(e.contains("must be http:// or https://"), "{e}");
        let twice = format!(
            "witnesses: {{list: [{{url: 'http://127.0.0.1:1', vkey: '{vkey}'}}, {{url: 'http://127.0.0.1:2', vkey: '{vkey}'}}]}}\n"
        );
        let e = config(&format!("{keys}{twice}")).unwrap_err();
        assert!(e.contains("configured twice"), "{e}");
    }

    #[test]
    fn retention_below_six_years_is_refused_citing_the_rule() {
        assert_eq!(config("").unwrap().retention_days, 2_192);
        assert_eq!(
            config("retention_days: 3650").unwrap().retention_days,
            3_650
        );
        let refused = config("retention_days: 2191").unwrap_err();
        assert!(
            refused.contains("at least 2192 days (six years"),
            "{refused}"
        );
        assert!(config("retention_days: 30").is_err());
    }

    #[test]
    fn replica_consumer_and_lease_are_checked() {
        let c = config("replica: evidence-1\nconsumer: \"evidence-{replica}\"").unwrap();
        assert_eq!(c.replica_name(), "evidence-1");
        assert_eq!(c.consumer_name(), "evidence-evidence-1");
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        let refused = config("replica: \"a b\"").unwrap_err();
        assert!(refused.contains("replica \"a b\""), "{refused}");
        let refused = config("lease_ttl: 500ms").unwrap_err();
        assert_eq!(refused, "lease_ttl must be between 1s and 60s (got 500ms)");
        assert!(config("lease_ttl: 61s").is_err());
        assert!(config("consumer: \"a.{replica}\"").is_err());
    }

    #[test]
    fn an_archive_needs_checkpoints_and_six_years() {
        let archive = "archive: {bucket: b, credentials_file: /c}\n";
        let refused = config(archive).unwrap_err();
        assert!(
            refused.starts_with("archive needs checkpoints"),
            "{refused}"
        );
        let with = format!("{archive}checkpoints: {{key_file: /k}}\n");
        assert_eq!(config(&with).unwrap().archive.unwrap().retention_days, 2192);
        let short = "archive: {bucket: b, credentials_file: /c, retention_days: 365}\n\
                     checkpoints: {key_file: /k}\n";
        assert!(config(short).unwrap_err().contains("at least 2192 days"));
    }

    #[test]
    fn admin_connection_limits_default_and_bad_ones_are_refused() {
        let limits = config("").unwrap().admin_connections;
        assert_eq!(limits, gatehouse_listener::ConnectionLimits::default());
        let refused = config("admin_connections: {idle_timeout: 0s}").unwrap_err();
        assert_eq!(
            refused,
            "admin_connections.idle_timeout must be between 1s and 1h (got 0s)"
        );
    }
}
