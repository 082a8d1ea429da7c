//! The `GATEHOUSE` stream: created if missing, checked (and, where safe, updated) if present.
//!
//! With `deploy/nats/gatehouse.conf` only the admin credential may create or update streams:
//! services then only read the stream's info, and one that finds it missing or wrong stops
//! with an error naming the refusal and `gatehouse nats setup`.

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};

use crate::{Bus, BusError, StreamSettings};

/// Subjects captured by the stream.
pub const SUBJECTS: &str = "gatehouse.>";

impl Bus {
    /// Makes sure the stream exists with the settings Gatehouse relies on. Safe to call from every
    /// replica at every start: an existing stream with the right shape is left alone, one with a
    /// fixable difference (duplicate window, subjects, delete/purge protection) is updated, and
    /// one that cannot be fixed in place (file storage) is an error.
    pub async fn ensure_stream(&self, settings: &StreamSettings) -> Result<stream::Info, BusError> {
        let err = |message: String| BusError::Stream {
            stream: settings.name.clone(),
            message,
        };
        let wanted = desired_config(settings);
        match self.js.get_stream(&settings.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .clone();
                if info.config.storage != StorageType::File {
                    return Err(err(
                        "exists with memory storage; Gatehouse needs file storage. Recreate it \
                         (see runbooks/nats-stream.md)"
                            .into(),
                    ));
                }
                let mut config = info.config.clone();
                let mut changed = false;
                if !config.subjects.iter().any(|s| s == SUBJECTS) {
                    config.subjects.push(SUBJECTS.to_owned());
                    changed = true;
                }
                if config.duplicate_window < settings.duplicate_window {
                    config.duplicate_window = settings.duplicate_window;
                    changed = true;
                }
                if config.discard != DiscardPolicy::New {
                    config.discard = DiscardPolicy::New;
                    changed = true;
                }
                if !config.deny_delete || !config.deny_purge {
                    config.deny_delete = true;
                    config.deny_purge = true;
                    changed = true;
                }
                if !changed {
                    return Ok(info);
                }
                tracing::warn!(stream = %settings.name, "updating the stream to Gatehouse's required settings");
                self.js
                    .update_stream(config)
                    .await
                    .map_err(|e| err(self.with_refusal(format!("update failed: {e}"))))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                let mut created = self
                    .js
                    .create_stream(wanted)
                    .await
                    .map_err(|e| err(self.with_refusal(format!("create failed: {e}"))))?;
                tracing::info!(stream = %settings.name, "created the JetStream stream");
                Ok(created
                    .info()
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .clone())
            }
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// The stream as Gatehouse wants it created.
fn desired_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: settings.name.clone(),
        description: Some(
            "Gatehouse events: every request, hold, vote, decision and response".into(),
        ),
        subjects: vec![SUBJECTS.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        // When full, refuse new events (the proxy then fails closed) rather than drop old ones.
        discard: DiscardPolicy::New,
        max_bytes: settings.max_bytes.unwrap_or(-1),
        max_messages: -1,
        max_age: settings.max_age,
        // Nobody removes evidence from the stream by hand; the ledger is the long-term store.
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}
