//! What a proxy replica needs to release held requests: every `approval.decided` (whichever
//! approval replica decided it), and the grants approvals opened (whichever proxy replica held
//! the approved request).
//!
//! - Decisions come from a consumer of this replica's own on the Gatehouse stream, replicated
//!   like the stream (new messages only; replaced after missed heartbeats, from where it
//!   stopped) and are handed to the request waiting for that approval id, if it is held on
//!   this replica.
//! - Grants are mirrored from the grants bucket by a KV watch (current values first, then
//!   changes), so a lookup is a map read and a revocation takes effect on every replica.
//!
//! Neither is trusted for being on the bus: a decision or grant counts only if the approval
//! service signed it ([`gatehouse_proof::attest`]) with a key in `approval_keys`, and the signed
//! statement is for what it came with, in time, and not seen before. Anything else is refused
//! and handed to [`Refused`] (recorded as `bus.refused`, counted, alarmed); the hold it was
//! about stays held.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::kv;
use futures::StreamExt;
use gatehouse_bus::{Bus, BusError, GRANTS_MAX_AGE, grants_bucket};
use gatehouse_events::{
    ApprovalDecided, BusRefused, DECISION_STATEMENT, DecisionStatement, Envelope, EventId,
    GRANT_STATEMENT, GrantIssued, Payload, RefusalProblem, RefusedMessage, RequestInfo,
};
use gatehouse_proof::attest::{AttestError, Keyring};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A decision, with when this replica received it (to measure decision → forward).
#[derive(Debug)]
pub struct Decided {
    pub decision: ApprovalDecided,
    pub arrived: Instant,
}

/// What a held request's decision must be about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub request_id: String,
    pub principal: String,
    pub rule: String,
    pub request: RequestInfo,
}

struct Waiting {
    decided: oneshot::Sender<Decided>,
    expected: Expected,
}

/// A decision or grant refused, for the proxy to record (`bus.refused`), count and alarm on.
/// The id is the same on every replica that refuses the same message, so the stream keeps one.
#[derive(Clone, Debug)]
pub struct Refused {
    pub id: EventId,
    pub subject: String,
    pub refused: BusRefused,
}

/// The approval service's verifier keys, from the `approval_keys` file; re-read when it
/// changes (a rotation adds the new key, then retires the old one, with no restart).
#[derive(Debug)]
pub struct ApprovalKeys {
    path: Option<PathBuf>,
    ring: RwLock<(Option<String>, Arc<Keyring>)>,
    /// Shows the keys in force (`gatehouse_proxy_approval_keys`).
    metrics: Option<crate::metrics::Metrics>,
}

impl ApprovalKeys {
    /// Reads the file; an unreadable or invalid file is an error at start.
    pub fn load(
        path: Option<PathBuf>,
        metrics: Option<crate::metrics::Metrics>,
    ) -> Result<Self, String> {
        let keys = Self {
            path,
            ring: RwLock::new((None, Arc::new(Keyring::default()))),
            metrics,
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Trusts exactly `ring` (for tests and tools).
    pub fn fixed(ring: Keyring) -> Self {
        Self {
            path: None,
            ring: RwLock::new((None, Arc::new(ring))),
            metrics: None,
        }
    }

    pub fn current(&self) -> Arc<Keyring> {
        self.ring
            .read()
            .map(|r| Arc::clone(&r.1))
            .unwrap_or_default()
    }

    /// Re-reads the file if it changed; `Ok(true)` when new keys took effect. On an error the
    /// keys in force stay.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("approval_keys {}: {e}", path.display()))?;
        if self
            .ring
            .read()
            .is_ok_and(|r| r.0.as_deref() == Some(&text))
        {
            return Ok(false);
        }
        let ring =
            Keyring::parse(&text).map_err(|e| format!("approval_keys {}: {e}", path.display()))?;
        if ring.is_empty() {
            return Err(format!(
                "approval_keys {}: no key in the file",
                path.display()
            ));
        }
        tracing::info!(keys = ?ring.describe(), "approval keys in force");
        if let Some(metrics) = &self.metrics {
            metrics.approval_keys(&ring.describe());
        }
        if let Ok(mut current) = self.ring.write() {
            *current = (Some(text), Arc::new(ring));
        }
        Ok(true)
    }
}

/// How often the keys file is checked for changes.
const KEYS_RELOAD: Duration = Duration::from_secs(5);
/// How long a decided approval id is remembered, to refuse the decision sent again: past a
/// decision's validity, it is refused as expired anyway.
const DECIDED_MEMORY: Duration = Duration::from_secs(15 * 60);

/// A grant that verified, and the key that signed it: it counts only while that key is
/// trusted (a rotation's old key stops admitting its grants when its window ends).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Granted {
    grant: GrantIssued,
    key: String,
}

/// Held requests waiting on this replica, and the grants every replica shares.
pub struct Approvals {
    waiters: Mutex<HashMap<String, Waiting>>,
    grants: RwLock<HashMap<String, Granted>>,
    /// Approval ids decided (by any replica), with the event that decided them.
    decided: Mutex<HashMap<String, (String, Instant)>>,
    /// Grant ids seen deleted (revoked): written back, they are refused.
    revoked: Mutex<HashMap<String, Instant>>,
    keys: Arc<ApprovalKeys>,
    refusals: mpsc::UnboundedSender<Refused>,
    metrics: Option<crate::metrics::Metrics>,
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
        keys: Arc<ApprovalKeys>,
        refusals: mpsc::UnboundedSender<Refused>,
        metrics: crate::metrics::Metrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BusError> {
        let approvals = Arc::new(Self {
            metrics: Some(metrics),
            ..Self::new(keys, refusals)
        });
        tokio::spawn(reload_keys(Arc::clone(&approvals.keys), shutdown.clone()));
        let grants = bus
            .key_value(&grants_bucket(GRANTS_MAX_AGE, replicas))
            .await?;
        let decisions = open_decisions(bus, None).await?;
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

    pub fn new(keys: Arc<ApprovalKeys>, refusals: mpsc::UnboundedSender<Refused>) -> Self {
        Self {
            waiters: Mutex::default(),
            grants: RwLock::default(),
            decided: Mutex::default(),
            revoked: Mutex::default(),
            keys,
            refusals,
            metrics: None,
        }
    }

    /// Registers interest in a decision about `expected`. Register before publishing
    /// `request.held`, so the decision cannot arrive first; dropping the [`Waiter`]
    /// unregisters.
    pub fn wait(self: &Arc<Self>, approval_id: &str, expected: Expected) -> Waiter {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(
                approval_id.to_owned(),
                Waiting {
                    decided: tx,
                    expected,
                },
            );
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

    fn refuse(&self, refused: Refused) {
        let _ = self.refusals.send(refused);
    }

    /// An `approval.decided` message from the stream: verified, then handed to the request
    /// waiting for it, if it waits here. `at_ms` is its stream timestamp.
    pub fn on_decision(&self, payload: &[u8], sequence: u64, at_ms: u64) {
        let origin = format!("stream sequence {sequence}");
        let id = EventId::derived(at_ms, format!("decision {sequence}").as_bytes());
        let now = SystemTime::now();
        let event = match serde_json::from_slice::<Envelope<ApprovalDecided>>(payload) {
            Ok(event) => event,
            Err(e) => {
                let detail = format!("the message is not an approval.decided event: {e}");
                return self.refuse(decision_refusal(
                    id,
                    None,
                    RefusalProblem::Unreadable,
                    detail,
                    None,
                    origin,
                ));
            }
        };
        let claimed = event.data;
        let refuse = |problem, detail: String, key: Option<String>| {
            self.refuse(decision_refusal(
                id,
                Some(&claimed),
                problem,
                detail,
                key,
                origin.clone(),
            ))
        };
        let Some(note) = claimed.attestation.as_deref() else {
            return refuse(
                RefusalProblem::Unsigned,
                "the decision carries no signature".into(),
                None,
            );
        };
        let opened =
            match self
                .keys
                .current()
                .open::<DecisionStatement>(DECISION_STATEMENT, note, now)
            {
                Ok(opened) => opened,
                Err(e) => return refuse(attest_problem(&e), format!("the decision: {e}"), None),
            };
        let key = Some(opened.key);
        let statement = opened.statement;
        if statement.decision != claimed.unattested() {
            return refuse(
                RefusalProblem::Mismatch,
                format!(
                    "the event says something other than the decision signed for approval {}",
                    statement.decision.approval_id
                ),
                key,
            );
        }
        if store_time(&statement.valid_until).is_none_or(|t| t < now) {
            return refuse(
                RefusalProblem::Expired,
                format!("the decision was valid until {}", statement.valid_until),
                key,
            );
        }
        let approval_id = statement.decision.approval_id.clone();
        {
            let Ok(mut decided) = self.decided.lock() else {
                return;
            };
            decided.retain(|_, (_, at)| at.elapsed() < DECIDED_MEMORY);
            match decided.get(&approval_id) {
                // JetStream keeps one copy of an event id within its duplicate window; a copy
                // after it is the same decision, already acted on.
                Some((first, _)) if *first == event.id => return,
                Some(_) => {
                    drop(decided);
                    return refuse(
                        RefusalProblem::Replayed,
                        format!("approval {approval_id} was decided already, by another event"),
                        key,
                    );
                }
                None => {}
            }
            let Ok(mut waiters) = self.waiters.lock() else {
                return;
            };
            let Some(waiting) = waiters.get(&approval_id) else {
                decided.insert(approval_id, (event.id, Instant::now()));
                return;
            };
            if let Some(difference) = differs(&waiting.expected, &statement) {
                drop(waiters);
                drop(decided);
                return refuse(
                    RefusalProblem::Mismatch,
                    format!("the signed decision is for {difference}, not the request held"),
                    key,
                );
            }
            decided.insert(approval_id.clone(), (event.id, Instant::now()));
            if let Some(waiting) = waiters.remove(&approval_id) {
                let _ = waiting.decided.send(Decided {
                    decision: statement.decision,
                    arrived: Instant::now(),
                });
            }
        }
    }

    /// A value written to the grants bucket: verified, then admitted to the grants this
    /// replica applies. `None` when it was refused (and handed to the refusals).
    fn on_grant_put(
        &self,
        key: &str,
        value: &[u8],
        revision: u64,
        written: SystemTime,
    ) -> Option<Granted> {
        let origin = format!(
            "bucket {} key {key} revision {revision}",
            gatehouse_bus::GRANTS_BUCKET
        );
        let at_ms = written
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let id = EventId::derived(at_ms, format!("grant {key} {revision}").as_bytes());
        let now = SystemTime::now();
        let claimed = match serde_json::from_slice::<GrantIssued>(value) {
            Ok(grant) => grant,
            Err(e) => {
                let detail = format!("the value is not a grant: {e}");
                self.refuse(grant_refusal(
                    id,
                    key,
                    None,
                    RefusalProblem::Unreadable,
                    detail,
                    None,
                    origin,
                ));
                return None;
            }
        };
        let refuse = |problem, detail: String, signer: Option<String>| {
            self.refuse(grant_refusal(
                id,
                key,
                Some(&claimed),
                problem,
                detail,
                signer,
                origin.clone(),
            ));
            None
        };
        let Some(note) = claimed.attestation.as_deref() else {
            return refuse(
                RefusalProblem::Unsigned,
                "the grant carries no signature".into(),
                None,
            );
        };
        let opened = match self
            .keys
            .current()
            .open::<GrantIssued>(GRANT_STATEMENT, note, now)
        {
            Ok(opened) => opened,
            Err(e) => return refuse(attest_problem(&e), format!("the grant: {e}"), None),
        };
        let signed_by = opened.key;
        let signer = Some(signed_by.clone());
        let grant = opened.statement;
        if grant != claimed.unattested() || grant.attestation.is_some() {
            return refuse(
                RefusalProblem::Mismatch,
                format!(
                    "the value says something other than grant {} as signed",
                    grant.grant_id
                ),
                signer,
            );
        }
        if grant.grant_id != key {
            return refuse(
                RefusalProblem::Mismatch,
                format!(
                    "grant {} was signed, but it is stored under {key}",
                    grant.grant_id
                ),
                signer,
            );
        }
        let expires = expires(&grant);
        if expires.is_none_or(|t| t <= written) {
            return refuse(
                RefusalProblem::Expired,
                format!(
                    "the grant expired at {} and was written after that",
                    grant.expires_at
                ),
                signer,
            );
        }
        if self
            .revoked
            .lock()
            .is_ok_and(|r| r.contains_key(&grant.grant_id))
        {
            return refuse(
                RefusalProblem::Replayed,
                format!(
                    "grant {} was revoked and has been written back",
                    grant.grant_id
                ),
                signer,
            );
        }
        // Expired since it was written: stale, not forged.
        expires.is_some_and(|t| t > now).then_some(Granted {
            grant,
            key: signed_by,
        })
    }

    fn on_grant_removed(&self, key: &str) {
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.retain(|_, at| at.elapsed() < gatehouse_bus::GRANTS_MAX_AGE);
            revoked.insert(key.to_owned(), Instant::now());
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
        let keys = self.keys.current();
        let grants = self.grants.read().ok()?;
        grants
            .values()
            .filter(|g| keys.trusts(&g.key, now))
            .map(|g| &g.grant)
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

/// How often the decisions consumer must show it is alive; two missed and it is replaced.
const DECISIONS_HEARTBEAT: Duration = Duration::from_secs(1);
/// A decisions consumer nobody listens to any more (this replica stopped or replaced it) is
/// removed by the server after this long.
const DECISIONS_ABANDONED: Duration = Duration::from_secs(120);

/// This replica's feed of decisions: a push consumer replicated like the stream (so losing the
/// node that leads it moves it, instead of ending it), acks off, and where it began.
struct Decisions {
    messages: push::Messages,
    /// The stream sequence it starts after: the last one seen, or the stream's end at creation.
    after: u64,
}

/// A new decisions consumer, with a name of its own, starting after stream sequence `after`
/// (`None`: at the stream's end).
async fn open_decisions(bus: &Bus, after: Option<u64>) -> Result<Decisions, BusError> {
    let err = |e: String| BusError::Consumer {
        consumer: "approval decisions".into(),
        message: e,
    };
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name())
        .await
        .map_err(|e| err(e.to_string()))?;
    // Everything after the stream's end as it was just read: a decision published meanwhile is
    // still delivered.
    let after = after.unwrap_or(stream.cached_info().state.last_sequence);
    // Durable so that it is replicated; it is never deleted by us (the bus lets no service
    // delete consumers) but expires once abandoned.
    let name = format!("gatehouse-proxy-decisions-{:016x}", rand::random::<u64>());
    let consumer = stream
        .create_consumer(push::Config {
            durable_name: Some(name),
            deliver_subject: bus.client().new_inbox(),
            filter_subject: ApprovalDecided::subject(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            idle_heartbeat: DECISIONS_HEARTBEAT,
            flow_control: true,
            inactive_threshold: DECISIONS_ABANDONED,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let messages = consumer.messages().await.map_err(|e| err(e.to_string()))?;
    Ok(Decisions { messages, after })
}

async fn follow_decisions(
    approvals: Arc<Approvals>,
    bus: Bus,
    mut feed: Decisions,
    shutdown: CancellationToken,
) {
    let mut last_sequence = feed.after;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = feed.messages.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                let (sequence, at_ms) = match message.info() {
                    Ok(info) => (
                        info.stream_sequence,
                        (info.published.unix_timestamp_nanos() / 1_000_000) as u64,
                    ),
                    Err(_) => (0, 0),
                };
                if sequence > 0 {
                    last_sequence = sequence;
                }
                approvals.on_decision(&message.payload, sequence, at_ms);
            }
            // Missed heartbeats (its node was lost, or this client's) or the end of the feed:
            // a new consumer after the last decision seen, so none is missed and none is
            // waited for longer than a new consumer takes.
            next => {
                if let Some(Err(e)) = next {
                    tracing::warn!(error = %e, "following approval decisions; following anew");
                }
                loop {
                    match open_decisions(&bus, Some(last_sequence)).await {
                        Ok(d) => {
                            feed = d;
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "re-following approval decisions");
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
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
                    kv::Operation::Put => {
                        let written = SystemTime::from(entry.created);
                        match approvals.on_grant_put(
                            &entry.key,
                            &entry.value,
                            entry.revision,
                            written,
                        ) {
                            Some(grant) => {
                                map.insert(entry.key, grant);
                            }
                            // A refused value replaces nothing it claims to be.
                            None => {
                                map.remove(&entry.key);
                            }
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        map.remove(&entry.key);
                        approvals.on_grant_removed(&entry.key);
                    }
                }
                let now = SystemTime::now();
                map.retain(|_, g| expires(&g.grant).is_some_and(|t| t > now));
                if let Some(metrics) = &approvals.metrics {
                    metrics.grants(map.len());
                }
            }
            // As for decisions: a stalled watch (its consumer's node was lost) is replaced, not
            // left to recover by itself.
            next => loop {
                if let Some(Err(e)) = &next {
                    tracing::warn!(error = %e, "following grants; watching anew");
                }
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

async fn reload_keys(keys: Arc<ApprovalKeys>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(KEYS_RELOAD) => {}
        }
        if let Err(e) = keys.reload() {
            tracing::error!(error = %e, "approval keys not reloaded; the keys in force stay");
        }
    }
}

fn store_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

fn attest_problem(e: &AttestError) -> RefusalProblem {
    match e {
        AttestError::Unsigned => RefusalProblem::Unsigned,
        AttestError::Malformed(_) | AttestError::WrongKind { .. } => RefusalProblem::Unreadable,
        AttestError::UnknownKey(_) => RefusalProblem::UnknownKey,
        AttestError::BadSignature(_) => RefusalProblem::BadSignature,
        AttestError::RetiredKey { .. } => RefusalProblem::RetiredKey,
    }
}

/// What a signed decision is about that the held request is not, if anything.
fn differs(expected: &Expected, statement: &DecisionStatement) -> Option<String> {
    if statement.decision.request_id != expected.request_id {
        return Some(format!("request {}", statement.decision.request_id));
    }
    if statement.principal != expected.principal {
        return Some(format!("principal {}", statement.principal));
    }
    if statement.rule != expected.rule {
        return Some(format!("rule {}", statement.rule));
    }
    if statement.request != expected.request {
        let r = &statement.request;
        return Some(format!(
            "{} {} {}/{} in namespace {:?}",
            r.verb, r.resource, r.api_group, r.name, r.namespace
        ));
    }
    None
}

/// A ULID-shaped id, or none: ids from an unverified message name the event only when they
/// cannot be mistaken for anything else.
fn ulid_or_none(id: &str) -> Option<String> {
    ulid::Ulid::from_string(id).ok().map(|_| id.to_owned())
}

fn decision_refusal(
    id: EventId,
    claimed: Option<&ApprovalDecided>,
    problem: RefusalProblem,
    detail: String,
    key: Option<String>,
    origin: String,
) -> Refused {
    let approval_id = claimed.and_then(|c| ulid_or_none(&c.approval_id));
    let request_id = claimed.and_then(|c| ulid_or_none(&c.request_id));
    let grant_id = claimed.and_then(|c| c.grant_id.as_deref().and_then(ulid_or_none));
    Refused {
        id,
        subject: approval_id.clone().unwrap_or_else(|| id.to_string()),
        refused: BusRefused {
            message: RefusedMessage::Decision,
            problem,
            detail,
            approval_id,
            request_id,
            grant_id,
            key,
            origin,
        },
    }
}

fn grant_refusal(
    id: EventId,
    key: &str,
    claimed: Option<&GrantIssued>,
    problem: RefusalProblem,
    detail: String,
    signer: Option<String>,
    origin: String,
) -> Refused {
    let grant_id = ulid_or_none(key).or_else(|| claimed.and_then(|c| ulid_or_none(&c.grant_id)));
    Refused {
        id,
        subject: grant_id.clone().unwrap_or_else(|| id.to_string()),
        refused: BusRefused {
            message: RefusedMessage::Grant,
            problem,
            detail,
            approval_id: claimed.and_then(|c| ulid_or_none(&c.approval_id)),
            request_id: claimed.and_then(|c| ulid_or_none(&c.request_id)),
            grant_id,
            key: signer,
            origin,
        },
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_events::{ApprovalOutcome, Ballot, ChannelKind, CountedVote, VoteVia};
    use gatehouse_proof::attest::{TrustedKey, sign};
    use gatehouse_proof::checkpoint::NoteSigner;

    use super::*;

    struct Bed {
        approvals: Arc<Approvals>,
        refused: mpsc::UnboundedReceiver<Refused>,
        key: NoteSigner,
    }

    fn bed() -> Bed {
        let key = NoteSigner::from_seed("approval.gatehouse.test", [5; 32]).unwrap();
        let ring = Keyring::new(vec![TrustedKey {
            verifier: key.verifier(),
            until: None,
        }]);
        let (tx, refused) = mpsc::unbounded_channel();
        Bed {
            approvals: Arc::new(Approvals::new(Arc::new(ApprovalKeys::fixed(ring)), tx)),
            refused,
            key,
        }
    }

    fn id() -> String {
        EventId::new().to_string()
    }

    fn request() -> RequestInfo {
        RequestInfo {
            is_resource_request: true,
            verb: "delete".into(),
            api_version: "v1".into(),
            namespace: "prod".into(),
            resource: "configmaps".into(),
            name: "settings".into(),
            ..RequestInfo::default()
        }
    }

    fn expected(request_id: &str) -> Expected {
        Expected {
            request_id: request_id.to_owned(),
            principal: "ci-deployer".into(),
            rule: "prod-deletes".into(),
            request: request(),
        }
    }

    fn statement(approval_id: &str, request_id: &str, valid_for: i64) -> DecisionStatement {
        let now = time::OffsetDateTime::now_utc();
        let at = gatehouse_events::envelope::format_rfc3339(now);
        DecisionStatement {
            decision: ApprovalDecided {
                request_id: request_id.to_owned(),
                approval_id: approval_id.to_owned(),
                outcome: ApprovalOutcome::Approved,
                votes: vec![CountedVote {
                    approver: "bob@example.com".into(),
                    vote: Ballot::Approve,
                    channel: ChannelKind::Api,
                    via: VoteVia::Command,
                    at: at.clone(),
                    comment: None,
                }],
                decided_at: at,
                grant_id: None,
                attestation: None,
            },
            principal: "ci-deployer".into(),
            rule: "prod-deletes".into(),
            request: request(),
            valid_until: gatehouse_events::envelope::format_rfc3339(
                now + time::Duration::seconds(valid_for),
            ),
        }
    }

    fn event(decision: ApprovalDecided) -> Vec<u8> {
        Envelope::new(
            "gatehouse/approval/a",
            &decision.request_id.clone(),
            decision,
        )
        .to_bytes()
        .unwrap()
    }

    fn signed(key: &NoteSigner, statement: &DecisionStatement) -> ApprovalDecided {
        ApprovalDecided {
            attestation: Some(sign(key, DECISION_STATEMENT, statement)),
            ..statement.decision.clone()
        }
    }

    fn problems(bed: &mut Bed) -> Vec<RefusalProblem> {
        let mut seen = Vec::new();
        while let Ok(r) = bed.refused.try_recv() {
            seen.push(r.refused.problem);
        }
        seen
    }

    #[test]
    fn only_a_decision_signed_for_the_held_request_releases_it() {
        let mut bed = bed();
        let (approval, request_id) = (id(), id());
        let mut waiter = bed.approvals.wait(&approval, expected(&request_id));
        let good = statement(&approval, &request_id, 300);
        let mut sequence = 0;
        let mut send = |bed: &Bed, decision: ApprovalDecided| {
            sequence += 1;
            bed.approvals.on_decision(&event(decision), sequence, 1);
        };

        // Unsigned; signed by another key; the outcome changed after signing; a statement for
        // another request; expired; not a decision at all.
        send(&bed, good.decision.clone());
        let stranger = NoteSigner::from_seed("approval.gatehouse.test", [6; 32]).unwrap();
        send(&bed, signed(&stranger, &good));
        let mut denied_as_approved = statement(&approval, &request_id, 300);
        denied_as_approved.decision.outcome = ApprovalOutcome::Denied;
        let mut flipped = signed(&bed.key, &denied_as_approved);
        flipped.outcome = ApprovalOutcome::Approved;
        send(&bed, flipped);
        let other = statement(&approval, &id(), 300);
        send(&bed, signed(&bed.key, &other));
        send(
            &bed,
            signed(&bed.key, &statement(&approval, &request_id, -1)),
        );
        bed.approvals
            .on_decision(b"{\"not\":\"a decision\"}", 99, 1);
        assert_eq!(
            problems(&mut bed),
            [
                RefusalProblem::Unsigned,
                RefusalProblem::UnknownKey,
                RefusalProblem::Mismatch,
                RefusalProblem::Mismatch,
                RefusalProblem::Expired,
                RefusalProblem::Unreadable,
            ]
        );
        assert!(waiter.decision.try_recv().is_err(), "nothing was released");
        assert_eq!(bed.approvals.waiting(), 1, "the hold still waits");

        // The real one releases it, and what is released is the signed statement.
        let genuine = signed(&bed.key, &good);
        let payload = event(genuine.clone());
        bed.approvals.on_decision(&payload, 10, 1);
        let decided = waiter.decision.try_recv().expect("released");
        assert_eq!(decided.decision, good.decision);
        // The same event again is a redelivery; another event for the same approval, a replay.
        bed.approvals.on_decision(&payload, 10, 1);
        send(&bed, genuine);
        assert_eq!(problems(&mut bed), [RefusalProblem::Replayed]);
    }

    #[test]
    fn refusals_name_the_claimed_approval_and_are_one_event_across_replicas() {
        let mut bed = bed();
        let (approval, request_id) = (id(), id());
        let forged = statement(&approval, &request_id, 300).decision;
        bed.approvals
            .on_decision(&event(forged.clone()), 7, 1_700_000_000_000);
        let first = bed.refused.try_recv().unwrap();
        assert_eq!(first.subject, approval);
        assert_eq!(
            first.refused.approval_id.as_deref(),
            Some(approval.as_str())
        );
        assert_eq!(first.refused.origin, "stream sequence 7");
        // Another replica refusing the same stream message derives the same event id.
        let mut other = self::bed();
        other
            .approvals
            .on_decision(&event(forged), 7, 1_700_000_000_000);
        assert_eq!(other.refused.try_recv().unwrap().id, first.id);
    }

    fn grant(key: &NoteSigner, expires_in: i64) -> GrantIssued {
        let grant = GrantIssued {
            request_id: id(),
            grant_id: id(),
            approval_id: id(),
            principal: "ci-deployer".into(),
            rule: "deployer-scale-prod".into(),
            verb: "patch".into(),
            api_group: "apps".into(),
            resource: "deployments".into(),
            subresource: "scale".into(),
            namespace: "prod".into(),
            expires_at: gatehouse_events::envelope::format_rfc3339(
                time::OffsetDateTime::now_utc() + time::Duration::seconds(expires_in),
            ),
            approved_by: vec!["bob@example.com".into()],
            attestation: None,
        };
        GrantIssued {
            attestation: Some(sign(key, GRANT_STATEMENT, &grant)),
            ..grant
        }
    }

    #[test]
    fn only_a_signed_live_grant_under_its_own_key_is_admitted() {
        let mut bed = bed();
        let now = SystemTime::now();
        let put = |bed: &Bed, key: &str, grant: &GrantIssued, written: SystemTime| {
            let value = serde_json::to_vec(grant).unwrap();
            bed.approvals.on_grant_put(key, &value, 1, written)
        };
        let good = grant(&bed.key, 600);
        let admitted = put(&bed, &good.grant_id, &good, now).expect("admitted");
        assert_eq!(admitted.grant, good.unattested());

        let unsigned = good.unattested();
        assert!(put(&bed, &good.grant_id, &unsigned, now).is_none());
        let stranger = NoteSigner::from_seed("approval.gatehouse.test", [6; 32]).unwrap();
        let forged = grant(&stranger, 600);
        assert!(put(&bed, &forged.grant_id, &forged, now).is_none());
        // The value widened beside an intact signature.
        let mut widened = good.clone();
        widened.namespace = "kube-system".into();
        assert!(put(&bed, &widened.grant_id, &widened, now).is_none());
        assert!(put(&bed, &id(), &good, now).is_none(), "under another key");
        let old = grant(&bed.key, -60);
        assert!(put(&bed, &old.grant_id, &old, now).is_none());
        assert!(
            bed.approvals
                .on_grant_put("x", b"not json", 1, now)
                .is_none()
        );
        // Revoked, then written back.
        bed.approvals.on_grant_removed(&good.grant_id);
        assert!(put(&bed, &good.grant_id, &good, now).is_none());
        assert_eq!(
            problems(&mut bed),
            [
                RefusalProblem::Unsigned,
                RefusalProblem::UnknownKey,
                RefusalProblem::Mismatch,
                RefusalProblem::Mismatch,
                RefusalProblem::Expired,
                RefusalProblem::Unreadable,
                RefusalProblem::Replayed,
            ]
        );
        // A grant written while live that has since expired is stale, not forged.
        let stale = grant(&bed.key, -1);
        let written = now - Duration::from_secs(30);
        assert!(put(&bed, &stale.grant_id, &stale, written).is_none());
        assert!(problems(&mut bed).is_empty());
    }

    #[test]
    fn the_keys_file_is_reloaded_and_a_bad_file_keeps_the_keys_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("approval-keys");
        let first = NoteSigner::from_seed("approval.test", [1; 32]).unwrap();
        let second = NoteSigner::from_seed("approval.test", [2; 32]).unwrap();
        std::fs::write(&path, format!("{}\n", first.verifier().to_vkey())).unwrap();
        let keys = ApprovalKeys::load(Some(path.clone()), None).unwrap();
        assert_eq!(keys.current().labels().len(), 1);
        assert!(!keys.reload().unwrap(), "unchanged");
        std::fs::write(
            &path,
            format!(
                "{}\n{} until=2000-01-01T00:00:00Z\n",
                second.verifier().to_vkey(),
                first.verifier().to_vkey()
            ),
        )
        .unwrap();
        assert!(keys.reload().unwrap());
        assert_eq!(keys.current().labels().len(), 2);
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(keys.reload().unwrap_err().starts_with("approval_keys "));
        assert_eq!(keys.current().labels().len(), 2, "the keys in force stay");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(keys.reload().is_err());
        assert!(ApprovalKeys::load(Some(dir.path().join("missing")), None).is_err());
    }
}
