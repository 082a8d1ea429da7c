//! Gatehouse's JetStream bus: the one stream every event goes through.
//!
//! Module map:
//! - [`config`]: how a service finds NATS and what the stream must look like.
//! - [`stream`]: idempotent creation (and safe update) of the `GATEHOUSE` stream.
//! - [`publish`]: publish with `Nats-Msg-Id` = event id, and the ack as a value to await.
//! - [`consume`]: durable pull consumers.
//! - [`kv`]: key-value buckets for state replicas share (approvals, grants).
//!
//! The invariant this crate serves: an event counts as recorded only once JetStream has acked it.
//! [`Bus::publish`] returns only after the ack (or an error), and the proxy forwards nothing
//! before that.
#![forbid(unsafe_code)]

pub mod config;
pub mod consume;
pub mod kv;
pub mod publish;
pub mod stream;

pub use config::{BusConfig, StreamSettings};
pub use consume::DurableConsumer;
pub use kv::{Bucket, GRANTS_BUCKET, GRANTS_MAX_AGE, grants_bucket};
pub use publish::{Ack, PendingAck, PublishError};

use std::time::Duration;

use async_nats::jetstream;

/// Errors setting up the bus. Publishing has its own [`PublishError`].
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("reading NATS credentials {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("JetStream consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
}

/// A connection to NATS with a JetStream context bound to the Gatehouse stream.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    /// How long a publish may wait for its ack before the caller treats NATS as unavailable.
    publish_timeout: Duration,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("stream", &self.stream)
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl Bus {
    /// Connects to NATS. `name` identifies this client in NATS monitoring (`gatehouse-proxy-…`).
    pub async fn connect(config: &BusConfig, name: &str) -> Result<Self, BusError> {
        let mut options = match &config.credentials_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| BusError::Credentials {
                    path: path.clone(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = config.token() {
            options = options.token(token);
        }
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .name(name)
            .connection_timeout(config.connect_timeout)
            // Reconnect forever: a NATS restart must not take a proxy down, it fails closed.
            .max_reconnects(None)
            .connect(config.servers().map_err(|message| BusError::Connect {
                url: config.url.clone(),
                message,
            })?)
            .await
            .map_err(|e| BusError::Connect {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            stream: config.stream.name.clone(),
            publish_timeout: config.publish_timeout,
        })
    }

    /// The name of the Gatehouse stream.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// Whether the client currently has a connection to a NATS server.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The underlying JetStream context, for the consumers and admin tools built on this crate.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The underlying NATS client (inboxes for push consumers).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Flushes buffered outgoing messages (acks in particular) to the server.
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "flushing the NATS connection failed");
        }
    }
}
