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

pub use config::{BusConfig, StreamSettings, read_nkey_seed};
pub use consume::DurableConsumer;
pub use kv::{Bucket, GRANTS_BUCKET, GRANTS_MAX_AGE, grants_bucket};
pub use publish::{Ack, PendingAck, PublishError};

use std::sync::{Arc, Mutex};
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
    /// The NKey file is missing, unreadable, readable by others or not a user seed.
    #[error("{0}")]
    Nkey(String),
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
    /// The last permissions violation the server reported on this connection, to name in
    /// errors (a refused request otherwise just times out).
    refused: Arc<Mutex<Option<String>>>,
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
        if let Some(path) = &config.nkey_file {
            options = options.nkey(read_nkey_seed(path).map_err(BusError::Nkey)?);
        }
        if let Some(token) = config.token() {
            options = options.token(token);
        }
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let refused = Arc::new(Mutex::new(None));
        let client = options
            .event_callback({
                let refused = refused.clone();
                let name = name.to_owned();
                move |event| {
                    let refused = refused.clone();
                    let name = name.clone();
                    async move { on_event(&name, &refused, event) }
                }
            })
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
            refused,
        })
    }

    /// The last permissions violation the server reported for this connection, if any.
    pub fn last_refusal(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
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

    /// `message`, followed by the server's last refusal of this credential when there was one.
    pub(crate) fn with_refusal(&self, message: String) -> String {
        match self.last_refusal() {
            Some(refusal) => format!(
                "{message} (the server refused this service's NATS credential: {refusal}; \
                 streams and buckets are created with the admin credential by \
                 `gatehouse nats setup`, see deploy/nats/README.md)"
            ),
            None => message,
        }
    }

    /// Flushes buffered outgoing messages (acks in particular) to the server.
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "flushing the NATS connection failed");
        }
    }
}

/// Logs what the server tells the client. A permissions violation is an alarm: a service
/// tried a subject its credential does not allow (a bug, or a compromised service).
fn on_event(name: &str, refused: &Mutex<Option<String>>, event: async_nats::Event) {
    match event {
        async_nats::Event::ServerError(async_nats::ServerError::Other(message))
            if message.to_lowercase().contains("permissions violation") =>
        {
            tracing::error!(client = name, refusal = %message, "NATS refused an operation of this service's credential");
            if let Ok(mut last) = refused.lock() {
                *last = Some(message);
            }
        }
        async_nats::Event::ServerError(e) => {
            tracing::warn!(client = name, error = %e, "NATS server error")
        }
        other => tracing::debug!(client = name, event = %other, "NATS client event"),
    }
}
