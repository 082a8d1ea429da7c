//! What a proxy replica needs to release held requests: every `approval.decided` (whichever
//! approval replica decided it), and the grants approvals opened (whichever proxy replica held
//! the approved request).
//!
//! - Decisions come from an ordered consumer on the Gatehouse stream (new messages only; it
//!   recreates itself after a disconnect from where it stopped) and are handed to the request
//!   waiting for that approval id, if it is held on this replica.
//! - Grants are mirrored from the grants bucket by a KV watch (current values first, then
//!   changes), so a lookup is a map read and a revocation takes effect on every replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::kv;
use futures::StreamExt;
use gatehouse_bus::{Bus, BusError, GRANTS_MAX_AGE, grants_bucket};
use gatehouse_events::{ApprovalDecided, Envelope, GrantIssued, Payload, RequestInfo};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A decision, with when this replica received it (to measure decision → forward).
#[derive(Debug)]
pub struct Decided {
    pub decision: ApprovalDecided,
    pub arrived: Instant,
}

/// Held requests waiting on this replica, and the grants every replica shares.
#[derive(Default)]
pub struct Approvals {
    waiters: Mutex<HashMap<String, oneshot::Sender<Decided>>>,
    grants: RwLock<HashMap<String, GrantIssued>>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl Approvals {
    /// Starts following decisions and grants; returns once both are in place, so a hold
    /// registered after this cannot miss its decision.
    pub async fn start(
        bus: &Bus,
        replicas: usize,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let approvals = Arc::new(Self::default());
        let grants = bus
            .key_value(&grants_bucket(GRANTS_MAX_AGE, replicas))
            .await?;
        let decisions = decisions(bus, DeliverPolicy::New).await?;
        tokio::spawn(follow_decisions(
            Arc::clone(&approvals),
            bus.clone(),
            decisions,
            shutdown.clone(),
        ));
        let watch = grants
            .watch_with_history(">")
            .await
            .map_err(|e| BusError::Stream {
                stream: grants_bucket(GRANTS_MAX_AGE, replicas).name,
                message: e.to_string(),
            })?;
        tokio::spawn(follow_grants(
            Arc::clone(&approvals),
            grants,
            watch,
            shutdown,
        ));
        Ok(approvals)
    }

    /// Registers interest in a decision. Register before publishing `request.held`, so the
    /// decision cannot arrive first; dropping the [`Waiter`] unregisters.
    pub fn wait(self: &Arc<Self>, approval_id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(approval_id.to_owned(), tx);
        }
        Waiter {
            approvals: Arc::clone(self),
            approval_id: approval_id.to_owned(),
            decision: rx,
        }
    }

    /// Requests held on this replica right now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }

    fn deliver(&self, decision: ApprovalDecided) {
        let waiter = self
            .waiters
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&decision.approval_id));
        if let Some(waiter) = waiter {
            let _ = waiter.send(Decided {
                decision,
                arrived: Instant::now(),
            });
        }
    }

    /// A live grant covering this request: same principal, same rule, same verb on the same
    /// resource (group, resource, subresource) in the same namespace, any name.
    pub fn grant_for(
        &self,
        principal: &str,
        info: &RequestInfo,
        rule: &str,
    ) -> Option<GrantIssued> {
        let now = SystemTime::now();
        let grants = self.grants.read().ok()?;
        grants
            .values()
            .filter(|g| {
                g.principal == principal
                    && g.rule == rule
                    && g.verb == info.verb
                    && g.api_group == info.api_group
                    && g.resource == info.resource
                    && g.subresource == info.subresource
                    && g.namespace == info.namespace
            })
            .filter(|g| expires(g).is_some_and(|t| t > now))
            .max_by(|a, b| a.expires_at.cmp(&b.expires_at))
            .cloned()
    }

    /// Grants this replica knows, live or not yet cleaned up.
    pub fn grants_known(&self) -> usize {
        self.grants.read().map(|g| g.len()).unwrap_or(0)
    }
}

fn expires(grant: &GrantIssued) -> Option<SystemTime> {
    time::OffsetDateTime::parse(
        &grant.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
    .map(SystemTime::from)
}

/// One held request's wait for its decision.
pub struct Waiter {
    approvals: Arc<Approvals>,
    approval_id: String,
    decision: oneshot::Receiver<Decided>,
}

impl Waiter {
    /// The decision, or `None` if the proxy is shutting down.
    pub async fn decided(&mut self) -> Option<Decided> {
        (&mut self.decision).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.approvals.waiters.lock() {
            waiters.remove(&self.approval_id);
        }
    }
}

type Decisions = async_nats::jetstream::consumer::push::Ordered;

async fn decisions(bus: &Bus, from: DeliverPolicy) -> Result<Decisions, BusError> {
    let err = |e: String| BusError::Consumer {
        consumer: "approval decisions (ordered)".into(),
        message: e,
    };
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name())
        .await
        .map_err(|e| err(e.to_string()))?;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: bus.client().new_inbox(),
            filter_subject: ApprovalDecided::subject(),
            deliver_policy: from,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    consumer.messages().await.map_err(|e| err(e.to_string()))
}

async fn follow_decisions(
    approvals: Arc<Approvals>,
    bus: Bus,
    mut messages: Decisions,
    shutdown: CancellationToken,
) {
    let mut last_sequence = 0;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                if let Ok(info) = message.info() {
                    last_sequence = info.stream_sequence;
                }
                match serde_json::from_slice::<Envelope<ApprovalDecided>>(&message.payload) {
                    Ok(event) => approvals.deliver(event.data),
                    Err(e) => {
                        tracing::warn!(error = %e, "an approval.decided event could not be read")
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "following approval decisions");
            }
            None => {
                // The ordered consumer gave up (for example NATS was gone too long): start
                // again after the last decision seen, so none is missed.
                loop {
                    let from = if last_sequence == 0 {
                        DeliverPolicy::New
                    } else {
                        DeliverPolicy::ByStartSequence {
                            start_sequence: last_sequence + 1,
                        }
                    };
                    match decisions(&bus, from).await {
                        Ok(m) => {
                            messages = m;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-following approval decisions");
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn follow_grants(
    approvals: Arc<Approvals>,
    grants: kv::Store,
    mut watch: kv::Watch,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = watch.next() => next,
        };
        match next {
            Some(Ok(entry)) => {
                let Ok(mut map) = approvals.grants.write() else {
                    return;
                };
                match entry.operation {
                    kv::Operation::Put => match serde_json::from_slice::<GrantIssued>(&entry.value)
                    {
                        Ok(grant) => {
                            map.insert(entry.key, grant);
                        }
                        Err(e) => {
                            tracing::warn!(key = %entry.key, error = %e, "a grant could not be read")
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => {
                        map.remove(&entry.key);
                    }
                }
                let now = SystemTime::now();
                map.retain(|_, g| expires(g).is_some_and(|t| t > now));
            }
            Some(Err(e)) => tracing::warn!(error = %e, "following grants"),
            None => loop {
                // Watching again replays the current values, so a revocation missed while
                // disconnected is not missed for good.
                match grants.watch_with_history(">").await {
                    Ok(w) => {
                        watch = w;
                        if let Ok(mut map) = approvals.grants.write() {
                            map.clear();
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-following grants");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            },
        }
    }
}
