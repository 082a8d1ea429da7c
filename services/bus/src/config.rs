//! Bus configuration, shared by every service's YAML file under the key `nats`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The smallest duplicate window Gatehouse accepts: a proxy retrying a publish within it must
/// be deduplicated by `Nats-Msg-Id`, so the window must outlast any retry.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Environment variable that overrides the NATS token, so the YAML file holds no secret.
pub const TOKEN_ENV: &str = "GATEHOUSE_NATS_TOKEN";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `nats://host:4222` (comma-separated for a cluster).
    pub url: String,
    /// A NATS `.creds` file (JWT + NKey), for operator-mode deployments.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A file holding this service's NKey user seed (`SU…`), for servers configured with
    /// `deploy/nats/gatehouse.conf`. Read at connect; refused if others (group: beyond read)
    /// may read or change it.
    #[serde(default)]
    pub nkey_file: Option<PathBuf>,
    /// CA bundle for `tls://` servers; setting it requires TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long a publish may wait for its JetStream ack. Past it the request is refused (503).
    #[serde(default = "default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub stream: StreamSettings,
}

impl BusConfig {
    /// A config for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials_file: None,
            nkey_file: None,
            ca_file: None,
            publish_timeout: default_publish_timeout(),
            connect_timeout: default_connect_timeout(),
            stream: StreamSettings::default(),
        }
    }

    /// The servers in `url`: one, or a cluster's, comma-separated (`nats://a:4222,nats://b:4222`).
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| format!("{s:?} is not a NATS server address: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|servers| {
                if servers.is_empty() {
                    Err("nats.url names no server".into())
                } else {
                    Ok(servers)
                }
            })
    }

    /// The NATS token, from the environment only.
    pub fn token(&self) -> Option<String> {
        std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())
    }

    /// Checks the settings that protect the invariants.
    pub fn validate(&self) -> Result<(), String> {
        if self.nkey_file.is_some() && self.credentials_file.is_some() {
            return Err("nats: set nkey_file or credentials_file, not both".into());
        }
        if self.stream.duplicate_window < MIN_DUPLICATE_WINDOW {
            return Err(format!(
                "nats.stream.duplicate_window is {}, but it must be at least {} so that a retried \
                 publish is recognised as a duplicate",
                humantime::format_duration(self.stream.duplicate_window),
                humantime::format_duration(MIN_DUPLICATE_WINDOW),
            ));
        }
        if self.stream.max_age < self.stream.duplicate_window {
            return Err(format!(
                "nats.stream.max_age ({}) must be at least the duplicate window ({})",
                humantime::format_duration(self.stream.max_age),
                humantime::format_duration(self.stream.duplicate_window),
            ));
        }
        if self.stream.replicas == 0 || self.stream.replicas > 5 {
            return Err("nats.stream.replicas must be between 1 and 5".into());
        }
        self.servers()?;
        if self.publish_timeout.is_zero() {
            return Err("nats.publish_timeout must be greater than zero".into());
        }
        Ok(())
    }
}

/// Reads an NKey user seed from `path`, refusing a file others may read or change (0600, 0400
/// and 0440 pass). Errors name the file and never its content.
pub fn read_nkey_seed(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|e| format!("nats.nkey_file {shown}: {e}"))?;
    let mode = metadata.permissions().mode() & 0o777;
    // Group read is allowed: the kubelet turns a Secret's 0400 into 0440 under an fsGroup.
    if mode & 0o037 != 0 {
        return Err(format!(
            "nats.nkey_file {shown} has mode {mode:04o}, so others may read or change the \
             service's NATS key; make it 0600 or 0400 (chmod 600 {shown})"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("nats.nkey_file {shown}: {e}"))?;
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(format!(
            "nats.nkey_file {shown} does not hold an NKey user seed (one line starting with SU)"
        ));
    }
    Ok(seed.to_owned())
}

/// What the `GATEHOUSE` stream must look like.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    #[serde(default = "default_stream_name")]
    pub name: String,
    /// JetStream replicas (1 for a single server, 3 for a production cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Upper bound on stored bytes; when reached, new publishes are refused (discard-new), so the
    /// proxy fails closed instead of the stream silently dropping old events. `None`: unlimited.
    #[serde(default)]
    pub max_bytes: Option<i64>,
    /// How long events stay in the stream. The ledger is the long-term store; this only has to
    /// outlast an evidence outage. Events older than this are gone from the stream, and an
    /// evidence service that comes back later raises a gap alarm for them.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: default_stream_name(),
            replicas: default_replicas(),
            duplicate_window: default_duplicate_window(),
            max_bytes: None,
            max_age: default_max_age(),
        }
    }
}

fn default_stream_name() -> String {
    "GATEHOUSE".into()
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    MIN_DUPLICATE_WINDOW
}
fn default_max_age() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_each_server_and_a_bad_one_is_refused() {
        let servers = BusConfig::new("nats://127.0.0.1:4222, nats://127.0.0.1:4223,")
            .servers()
            .unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].port(), 4223);
        assert!(
            BusConfig::new("nats://127.0.0.1:4222,nats://host:port")
                .validate()
                .is_err()
        );
        assert!(BusConfig::new(" , ").servers().is_err());
    }

    #[test]
    fn defaults_satisfy_the_invariants() {
        let c: BusConfig = yaml_free_parse(r#"{"url": "nats://127.0.0.1:4222"}"#);
        assert_eq!(c.stream.name, "GATEHOUSE");
        assert_eq!(c.stream.duplicate_window, MIN_DUPLICATE_WINDOW);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_short_duplicate_window_is_refused() {
        let c: BusConfig =
            yaml_free_parse(r#"{"url": "nats://x", "stream": {"duplicate_window": "30s"}}"#);
        let err = c.validate().unwrap_err();
        assert!(err.contains("at least 2m"), "{err}");
    }

    #[test]
    fn events_must_outlive_the_duplicate_window() {
        let c: BusConfig = yaml_free_parse(r#"{"url": "nats://x", "stream": {"max_age": "1m"}}"#);
        assert!(c.validate().unwrap_err().contains("max_age"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<BusConfig, _> = serde_json::from_str(r#"{"url": "nats://x", "strem": {}}"#);
        assert!(r.is_err());
    }

    #[test]
    fn an_nkey_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gatehouse-nkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.nk");
        let seed = "SUAM4IXJ3TQZUWD5OBR5A4SMVHPJSCAT4IZDTHKMXWBGGDLGOCQ7E2UOXI";
        std::fs::write(&path, format!("{seed}\n")).unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o440, true),
            (0o660, false),
            (0o620, false),
            (0o604, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = read_nkey_seed(&path);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
            if let Err(e) = result {
                assert!(e.contains("chmod 600") && !e.contains(seed), "{e}");
            } else {
                assert_eq!(result.unwrap(), seed);
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a seed").unwrap();
        let e = read_nkey_seed(&path).unwrap_err();
        assert!(e.contains("user seed") && !e.contains("not a seed"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn yaml_free_parse(json: &str) -> BusConfig {
        serde_json::from_str(json).unwrap()
    }
}
