//! The approval service's core: holds in, votes counted, decisions and grants out.
//!
//! ```text
//! request.held ──(durable shared consumer)──▶ record created once ──▶ posted to each platform
//! chat callback / API vote ──▶ VoteSink::vote ──▶ CAS on the record ──▶ approval.vote
//!                                                   └ decided ──▶ grant (KV) ─▶ grant.issued
//!                                                               ─▶ approval.decided
//! request.withdrawn ──▶ record withdrawn, messages updated
//! sweeper: expires what nobody decided in time, republishes a decision a crash left unsent
//! ```
//!
//! Replicas share nothing but NATS: the record in the approvals bucket is the truth, and every
//! change to it is a compare-and-set, so the same hold is decided exactly once whichever replica
//! counts the deciding vote.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use gatehouse_bus::{Bus, DurableConsumer};
use gatehouse_events::{
    ApprovalDecided, ApprovalOutcome, ApprovalPosted, ApprovalVote, Ballot, ChannelKind,
    CountedVote, DECISION_STATEMENT, DecisionStatement, Envelope, EventId, GRANT_STATEMENT,
    GrantIssued, GrantRevoked, Payload, RequestHeld, RequestWithdrawn, StepUp, VoterAuthMethod,
    VoterAuthentication,
};
use tokio_util::sync::CancellationToken;

use crate::approvers::Approvers;
use crate::channel::{ChannelError, HoldView, Posted, VoteCall, VoteReply, VoteSink};
use crate::discord::DiscordChannel;
use crate::slack::SlackChannel;
use crate::store::{ApprovalRecord, Store, StoreError, Withdrawal, format_time};
use crate::tally::{Outcome, Vote};
use crate::teams::TeamsChannel;

/// A platform holds are posted to.
#[derive(Clone)]
pub enum Channel {
    Slack(Arc<SlackChannel>),
    Teams(Arc<TeamsChannel>),
    Discord(Arc<DiscordChannel>),
}

impl Channel {
    pub fn kind(&self) -> ChannelKind {
        match self {
            Channel::Slack(_) => ChannelKind::Slack,
            Channel::Teams(_) => ChannelKind::Teams,
            Channel::Discord(_) => ChannelKind::Discord,
        }
    }

    async fn post(&self, view: &HoldView) -> Result<Posted, ChannelError> {
        match self {
            Channel::Slack(c) => c.post(view).await,
            Channel::Teams(c) => c.post(view).await,
            Channel::Discord(c) => c.post(view).await,
        }
    }

    async fn update(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        match self {
            Channel::Slack(c) => c.update(posted, view).await,
            Channel::Teams(c) => c.update(posted, view).await,
            Channel::Discord(c) => c.update(posted, view).await,
        }
    }

    async fn announce(&self, posted: &Posted, view: &HoldView) -> Result<(), ChannelError> {
        match self {
            Channel::Slack(c) => c.announce(posted, view).await,
            Channel::Teams(c) => c.announce(posted, view).await,
            Channel::Discord(c) => c.announce(posted, view).await,
        }
    }
}

/// Durable consumer names: replicas sharing them share the work.
pub const HOLDS_CONSUMER: &str = "gatehouse-approval-holds";
pub const WITHDRAWALS_CONSUMER: &str = "gatehouse-approval-withdrawals";

/// How often the sweeper looks for expired holds and unsent decisions.
const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// A decision still unsent this long after it was made is resent (its first sender crashed).
const RESEND_AFTER: Duration = Duration::from_secs(3);

pub struct Service {
    bus: Bus,
    /// `gatehouse/approval/<replica>`.
    source: String,
    store: Store,
    grants: kv::Store,
    approvers: Approvers,
    channels: Vec<Channel>,
    /// Upper bound on any grant's window, whatever a rule asks.
    max_grant_window: Duration,
    /// The key that signs decisions and grants, re-read for each so a rotation needs no
    /// restart.
    signing_key_file: PathBuf,
    /// The service's external address (`https://approvals.example.com`): chat messages link
    /// each hold's approver page under it.
    public_url: Option<String>,
}

/// How decisions are made and sent.
#[derive(Clone, Debug)]
pub struct DecisionSettings {
    /// Upper bound on any grant's window, whatever a rule asks.
    pub max_grant_window: Duration,
    /// The key that signs decisions and grants.
    pub signing_key_file: PathBuf,
}

/// How long a signed decision may be acted on: proxies receive it within milliseconds; the
/// margin covers a resend after a crash and clocks that disagree.
pub const DECISION_VALIDITY: Duration = Duration::from_secs(5 * 60);

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("source", &self.source)
            .field("approvers", &self.approvers.len())
            .field(
                "channels",
                &self.channels.iter().map(Channel::kind).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What became of a vote inside the compare-and-set.
enum Step {
    Refused(String),
    Repeat,
    Counted { decided: bool },
}

impl Service {
    pub fn new(
        bus: Bus,
        source: String,
        store: Store,
        grants: kv::Store,
        approvers: Approvers,
        channels: Vec<Channel>,
        decisions: DecisionSettings,
    ) -> Self {
        Self {
            bus,
            source,
            store,
            grants,
            approvers,
            channels,
            max_grant_window: decisions.max_grant_window,
            signing_key_file: decisions.signing_key_file,
            public_url: None,
        }
    }

    /// Links each hold's approver page under `url` in chat messages.
    pub fn with_public_url(mut self, url: Option<String>) -> Self {
        self.public_url = url.map(|u| u.trim_end_matches('/').to_owned());
        self
    }

    /// The approver page of `approval_id`, when the public address is known.
    pub fn page_url(&self, approval_id: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|base| format!("{base}/holds/{approval_id}"))
    }

    /// A hold as approvers see it, with its page's address.
    pub fn view(&self, record: &ApprovalRecord) -> HoldView {
        let mut view = record.view();
        view.page_url = self.page_url(&view.approval_id);
        view
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn approvers(&self) -> &Approvers {
        &self.approvers
    }

    async fn publish<P: Payload>(&self, subject: &str, data: P, id: Option<&str>) -> bool {
        let mut event = Envelope::new(&self.source, subject, data);
        if let Some(id) = id {
            event.id = id.to_owned();
        }
        match self.bus.publish(&event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(event = P::NAME, subject, error = %e, "publishing failed");
                false
            }
        }
    }

    /// A `request.held` arrived. The replica that creates the record posts it; a redelivery
    /// (the first replica died before acking) posts only what is missing.
    pub async fn hold_arrived(
        self: &Arc<Self>,
        held: RequestHeld,
        redelivered: bool,
    ) -> Result<(), StoreError> {
        let approval_id = held.approval_id.clone();
        let record = ApprovalRecord::new(held);
        if !self.store.create(&record).await? {
            let done = match self.store.load(&approval_id).await? {
                Some((existing, _)) => existing.posting_done,
                None => true,
            };
            if !redelivered || done {
                return Ok(());
            }
        }
        tracing::info!(approval_id = %approval_id, request_id = %record.held.request_id, "hold received");
        self.post_missing(&approval_id).await
    }

    async fn post_missing(self: &Arc<Self>, approval_id: &str) -> Result<(), StoreError> {
        let Some((record, _)) = self.store.load(approval_id).await? else {
            return Ok(());
        };
        for channel in &self.channels {
            if record.posts.iter().any(|p| p.channel == channel.kind()) {
                continue;
            }
            let view = self.view(&record);
            let posted = match post_with_retries(channel, &view).await {
                Ok(posted) => posted,
                Err(e) => {
                    tracing::error!(approval_id, error = %e, "posting the hold failed");
                    continue;
                }
            };
            if let Err(e) = self.store.index_message(&posted, approval_id).await {
                tracing::error!(approval_id, error = %e, "indexing the posted message failed");
            }
            let post = posted.clone();
            self.store
                .update(approval_id, |r| {
                    (!r.posts.contains(&post)).then(|| r.posts.push(post.clone()))
                })
                .await?;
            self.publish(
                &record.held.request_id,
                ApprovalPosted {
                    request_id: record.held.request_id.clone(),
                    approval_id: approval_id.to_owned(),
                    channel: posted.channel,
                    channel_id: posted.channel_id.clone(),
                    message_ref: posted.message_ref.clone(),
                },
                None,
            )
            .await;
        }
        let written = self
            .store
            .update(approval_id, |r| {
                (!r.posting_done).then(|| r.posting_done = true)
            })
            .await?;
        // Votes through the API, or a withdrawal, may have come in while posting.
        if let Some((record, _)) = written
            && (!record.votes.is_empty() || !record.is_open())
        {
            self.refresh(approval_id.to_owned());
        }
        Ok(())
    }

    /// The held request's client went away: no vote can release it any more.
    pub async fn withdraw(self: &Arc<Self>, w: &RequestWithdrawn) -> Result<bool, StoreError> {
        let at = format_time(SystemTime::now());
        let Some((_, changed)) = self
            .store
            .update(&w.approval_id, |r| {
                r.is_open().then(|| {
                    r.withdrawn = Some(Withdrawal {
                        at: at.clone(),
                        reason: w.reason.clone(),
                    })
                })
            })
            .await?
        else {
            return Ok(false);
        };
        if changed.is_some() {
            tracing::info!(approval_id = %w.approval_id, "hold withdrawn");
            self.refresh(w.approval_id.clone());
        }
        Ok(true)
    }

    /// Counts one vote: the rules of [`crate::tally`], applied to the shared record by
    /// compare-and-set.
    pub async fn count(self: &Arc<Self>, call: VoteCall) -> VoteReply {
        match self.try_count(&call).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::error!(approval_id = %call.approval_id, error = %e, "vote not counted");
                VoteReply::Refused {
                    reason: "Gatehouse could not record your vote just now; please try again."
                        .into(),
                    view: None,
                }
            }
        }
    }

    async fn try_count(self: &Arc<Self>, call: &VoteCall) -> Result<VoteReply, StoreError> {
        let Some((record, _)) = self.store.load(&call.approval_id).await? else {
            return Ok(VoteReply::Refused {
                reason: format!(
                    "there is no pending approval {} (it may be older than Gatehouse keeps)",
                    call.approval_id
                ),
                view: None,
            });
        };
        let request_id = record.held.request_id.clone();
        let Some(voter) = self.approvers.voter(call.channel, &call.chat_user_id) else {
            let reason = format!(
                "your account {} ({}) is not in Gatehouse's approver registry, so your vote \
                 cannot count",
                call.chat_user_id,
                crate::channel::channel_name(call.channel)
            );
            self.publish_vote(&request_id, call, None, Some(reason.clone()))
                .await;
            return Ok(VoteReply::Refused {
                reason,
                view: Some(Box::new(self.view(&record))),
            });
        };
        let now = SystemTime::now();
        if let Some(step_up) = &record.held.step_up
            && let Err(why) = stepped_up(step_up, &call.authentication, now)
        {
            let reason = match self.page_url(&call.approval_id) {
                Some(page) => format!("{why}: vote on the approver page, {page}"),
                None => format!("{why}: vote on the approver page"),
            };
            self.publish_vote(
                &request_id,
                call,
                Some(voter.identity.clone()),
                Some(reason.clone()),
            )
            .await;
            return Ok(VoteReply::Refused {
                reason,
                view: Some(Box::new(self.view(&record))),
            });
        }
        let at = format_time(now);
        let mut step = Step::Repeat;
        let written = self
            .store
            .update(&call.approval_id, |r| {
                step = vote_step(r, call, &voter, now, &at, self.max_grant_window);
                matches!(step, Step::Counted { .. }).then_some(())
            })
            .await?;
        let Some((record, _)) = written else {
            return Ok(VoteReply::Refused {
                reason: format!("there is no pending approval {}", call.approval_id),
                view: None,
            });
        };
        match step {
            Step::Refused(reason) => {
                tracing::info!(approval_id = %call.approval_id, approver = %voter.identity, %reason, "vote refused");
                self.publish_vote(
                    &request_id,
                    call,
                    Some(voter.identity.clone()),
                    Some(reason.clone()),
                )
                .await;
                Ok(VoteReply::Refused {
                    reason,
                    view: Some(Box::new(self.view(&record))),
                })
            }
            Step::Repeat => Ok(VoteReply::Counted {
                view: self.view(&record),
                repeat: true,
            }),
            Step::Counted { decided } => {
                tracing::info!(approval_id = %call.approval_id, approver = %voter.identity, vote = ?call.ballot, decided, "vote counted");
                self.publish_vote(&request_id, call, Some(voter.identity.clone()), None)
                    .await;
                if decided {
                    self.publish_decision(&record).await;
                }
                self.refresh(call.approval_id.clone());
                Ok(VoteReply::Counted {
                    view: self.view(&record),
                    repeat: false,
                })
            }
        }
    }

    async fn publish_vote(
        &self,
        request_id: &str,
        call: &VoteCall,
        approver: Option<String>,
        refusal: Option<String>,
    ) {
        self.publish(
            request_id,
            ApprovalVote {
                request_id: request_id.to_owned(),
                approval_id: call.approval_id.clone(),
                approver,
                chat_user_id: call.chat_user_id.clone(),
                channel: call.channel,
                via: call.via,
                vote: call.ballot,
                comment: call.comment.clone(),
                counted: refusal.is_none(),
                refusal,
                authentication: Some(call.authentication.clone()),
            },
            None,
        )
        .await;
    }

    /// Sends a decided record's events: the grant first (into the bucket, then
    /// `grant.issued`), then `approval.decided`, under the ids chosen when it was decided.
    async fn publish_decision(&self, record: &ApprovalRecord) {
        let Some(decision) = &record.decision else {
            return;
        };
        let signer = match gatehouse_proof::attest::load_signing_key(&self.signing_key_file) {
            Ok(signer) => signer,
            Err(e) => {
                tracing::error!(approval_id = %decision.approval_id, error = %e, "the decision cannot be signed; will retry");
                return;
            }
        };
        let (decision, grant) = attest(&signer, record, decision, SystemTime::now());
        let decision = &decision;
        let request_id = &record.held.request_id;
        if let Some(grant) = &grant {
            let value = match serde_json::to_vec(grant) {
                Ok(value) => value,
                Err(e) => {
                    tracing::error!(error = %e, "encoding a grant failed");
                    return;
                }
            };
            if let Err(e) = self.grants.put(&grant.grant_id, Bytes::from(value)).await {
                tracing::error!(grant_id = %grant.grant_id, error = %e, "storing the grant failed; will retry");
                return;
            }
            if !self
                .publish(request_id, grant.clone(), record.grant_event_id.as_deref())
                .await
            {
                return;
            }
        }
        if !self
            .publish(
                request_id,
                decision.clone(),
                record.decision_event_id.as_deref(),
            )
            .await
        {
            return;
        }
        tracing::info!(approval_id = %decision.approval_id, outcome = ?decision.outcome, "decision published");
        if let Err(e) = self
            .store
            .update(&decision.approval_id, |r| {
                (!r.decision_published).then(|| r.decision_published = true)
            })
            .await
        {
            tracing::warn!(approval_id = %decision.approval_id, error = %e, "marking the decision sent failed; it will be resent (deduplicated)");
        }
    }

    /// Decides a hold nobody decided in time.
    pub async fn expire(self: &Arc<Self>, approval_id: &str) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let at = format_time(now);
        let written = self
            .store
            .update(approval_id, |r| {
                if !r.is_open() || now < r.expires_at() {
                    return None;
                }
                decide(r, Outcome::Expired, &at, now, self.max_grant_window);
                Some(())
            })
            .await?;
        if let Some((record, Some(()))) = written {
            tracing::info!(approval_id, "hold expired");
            self.publish_decision(&record).await;
            self.refresh(approval_id.to_owned());
        }
        Ok(())
    }

    /// Updates every message of a hold to its current state (in the background), and once
    /// it is decided, replies in thread with who decided.
    pub fn refresh(self: &Arc<Self>, approval_id: String) {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(Some((record, _))) = service.store.load(&approval_id).await else {
                return;
            };
            let view = service.view(&record);
            for post in &record.posts {
                if let Some(channel) = service.channel(post.channel)
                    && let Err(e) = channel.update(post, &view).await
                {
                    tracing::warn!(approval_id, error = %e, "updating the message failed");
                }
            }
            if record.is_open() || record.announced {
                return;
            }
            // Claimed first, so two replicas refreshing at once reply once.
            let claimed = service
                .store
                .update(&approval_id, |r| (!r.announced).then(|| r.announced = true))
                .await;
            let Ok(Some((record, Some(())))) = claimed else {
                return;
            };
            let view = service.view(&record);
            for post in &record.posts {
                if let Some(channel) = service.channel(post.channel)
                    && let Err(e) = channel.announce(post, &view).await
                {
                    tracing::warn!(approval_id, error = %e, "replying with the decision failed");
                }
            }
        });
    }

    fn channel(&self, kind: ChannelKind) -> Option<&Channel> {
        self.channels.iter().find(|c| c.kind() == kind)
    }

    /// Active grants, soonest to expire first.
    pub async fn grants(&self) -> Result<Vec<GrantIssued>, StoreError> {
        let mut keys = self
            .grants
            .keys()
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        let mut grants = Vec::new();
        let now = SystemTime::now();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| StoreError(e.to_string()))?;
            let Some(value) = self
                .grants
                .get(&key)
                .await
                .map_err(|e| StoreError(e.to_string()))?
            else {
                continue;
            };
            if let Ok(grant) = serde_json::from_slice::<GrantIssued>(&value)
                && crate::store::parse_time(&grant.expires_at).is_some_and(|t| t > now)
            {
                grants.push(grant);
            }
        }
        grants.sort_by(|a, b| a.expires_at.cmp(&b.expires_at));
        Ok(grants)
    }

    /// Ends a grant now; `None` if there is no such active grant.
    pub async fn revoke_grant(
        &self,
        grant_id: &str,
        revoked_by: &str,
        reason: Option<String>,
    ) -> Result<Option<GrantIssued>, StoreError> {
        let Some(value) = self
            .grants
            .get(grant_id)
            .await
            .map_err(|e| StoreError(e.to_string()))?
        else {
            return Ok(None);
        };
        let grant: GrantIssued =
            serde_json::from_slice(&value).map_err(|e| StoreError(e.to_string()))?;
        self.grants
            .delete(grant_id)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        tracing::info!(grant_id, revoked_by, "grant revoked");
        let published = self
            .publish(
                grant_id,
                GrantRevoked {
                    grant_id: grant_id.to_owned(),
                    principal: grant.principal.clone(),
                    revoked_by: revoked_by.to_owned(),
                    reason,
                },
                None,
            )
            .await;
        if !published {
            return Err(StoreError(
                "the grant was revoked but grant.revoked could not be recorded".into(),
            ));
        }
        Ok(Some(grant))
    }

    /// Consumes `request.held` with the durable consumer every replica shares, until shutdown.
    pub async fn run_holds(self: Arc<Self>, shutdown: CancellationToken) {
        let service = Arc::clone(&self);
        consume(
            &self.bus,
            HOLDS_CONSUMER,
            RequestHeld::subject(),
            shutdown,
            move |payload, delivered| {
                let service = Arc::clone(&service);
                Box::pin(async move {
                    let Ok(event) = serde_json::from_slice::<Envelope<RequestHeld>>(&payload)
                    else {
                        tracing::error!("a request.held event could not be read; skipped");
                        return Handled::Done;
                    };
                    match service.hold_arrived(event.data, delivered > 1).await {
                        Ok(()) => Handled::Done,
                        Err(e) => {
                            tracing::error!(error = %e, "hold not stored; will retry");
                            Handled::Retry
                        }
                    }
                })
            },
        )
        .await;
    }

    /// Consumes `request.withdrawn`, until shutdown.
    pub async fn run_withdrawals(self: Arc<Self>, shutdown: CancellationToken) {
        let service = Arc::clone(&self);
        consume(
            &self.bus,
            WITHDRAWALS_CONSUMER,
            RequestWithdrawn::subject(),
            shutdown,
            move |payload, delivered| {
                let service = Arc::clone(&service);
                Box::pin(async move {
                    let Ok(event) = serde_json::from_slice::<Envelope<RequestWithdrawn>>(&payload)
                    else {
                        tracing::error!("a request.withdrawn event could not be read; skipped");
                        return Handled::Done;
                    };
                    match service.withdraw(&event.data).await {
                        Ok(true) => Handled::Done,
                        // The hold itself may not be stored yet; give it a while.
                        Ok(false) if delivered < 20 => Handled::Retry,
                        Ok(false) => Handled::Done,
                        Err(e) => {
                            tracing::error!(error = %e, "withdrawal not stored; will retry");
                            Handled::Retry
                        }
                    }
                })
            },
        )
        .await;
    }

    /// Expires holds past their time and resends decisions a crash left unsent, until
    /// shutdown. Every replica runs it; compare-and-set keeps each decision single.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let mut watch = match self.store.watch().await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "watching holds failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Holds that still need something: expiry, or their decision sent.
            let mut tracked: HashMap<String, ApprovalRecord> = HashMap::new();
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    entry = watch.next() => {
                        let Some(Ok(entry)) = entry else { break };
                        let Some(id) = entry.key.strip_prefix("hold.") else { continue };
                        let record = (entry.operation == kv::Operation::Put)
                            .then(|| serde_json::from_slice::<ApprovalRecord>(&entry.value).ok())
                            .flatten();
                        match record {
                            Some(r) if r.is_open() || (r.decision.is_some() && !r.decision_published) => {
                                tracked.insert(id.to_owned(), r);
                            }
                            _ => {
                                tracked.remove(id);
                            }
                        }
                    }
                    _ = tick.tick() => {
                        let now = SystemTime::now();
                        for (id, record) in &tracked {
                            let result = if record.is_open() && now >= record.expires_at() {
                                self.expire(id).await
                            } else if record.decision.as_ref().is_some_and(|d| {
                                crate::store::parse_time(&d.decided_at)
                                    .is_some_and(|t| now >= t + RESEND_AFTER)
                            }) {
                                tracing::warn!(approval_id = %id, "resending a decision left unsent");
                                self.publish_decision(record).await;
                                Ok(())
                            } else {
                                Ok(())
                            };
                            if let Err(e) = result {
                                tracing::warn!(approval_id = %id, error = %e, "sweeping failed");
                            }
                        }
                    }
                }
            }
        }
    }
}

impl VoteSink for Arc<Service> {
    fn vote(&self, call: VoteCall) -> BoxFuture<'_, VoteReply> {
        Box::pin(self.count(call))
    }

    fn approval_for_message<'a>(
        &'a self,
        channel: ChannelKind,
        channel_id: &'a str,
        message_ref: &'a str,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            self.store
                .approval_for_message(channel, channel_id, message_ref)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "looking up a message failed");
                    None
                })
        })
    }

    fn first_delivery<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            // Unsure means refuse: a callback the store cannot vouch for is not counted.
            self.store.first_delivery(key).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "recording a delivery failed");
                false
            })
        })
    }
}

/// Applies one vote to a record, deciding it if the vote settles it.
fn vote_step(
    record: &mut ApprovalRecord,
    call: &VoteCall,
    voter: &crate::tally::Voter,
    now: SystemTime,
    at: &str,
    max_grant_window: Duration,
) -> Step {
    let approver = voter.identity.as_str();
    if let Some(withdrawal) = &record.withdrawn {
        return Step::Refused(format!(
            "this request was withdrawn ({}), so there is nothing to vote on",
            withdrawal.reason
        ));
    }
    let previous = record
        .votes
        .iter()
        .find(|v| v.approver == approver)
        .map(|v| v.vote);
    // A double click or a redelivered callback, even after the decision: nothing to do.
    if previous.is_some() && previous == Some(call.ballot) {
        return Step::Repeat;
    }
    let mut tally = record.tally();
    let result = match call.ballot {
        Ballot::Approve => tally.cast(voter, Vote::Approve, now),
        Ballot::Deny => tally.cast(voter, Vote::Deny, now),
        Ballot::Withdraw => tally.withdraw(voter, now),
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(refusal) => return Step::Refused(refusal.to_string()),
    };
    if call.ballot == Ballot::Withdraw && previous.is_none() {
        return Step::Repeat;
    }
    let counted = CountedVote {
        approver: approver.to_owned(),
        vote: call.ballot,
        channel: call.channel,
        via: call.via,
        at: at.to_owned(),
        comment: call.comment.clone(),
    };
    match (
        call.ballot,
        record.votes.iter().position(|v| v.approver == approver),
    ) {
        (Ballot::Withdraw, Some(index)) => {
            record.votes.remove(index);
        }
        (Ballot::Withdraw, None) => {}
        (_, Some(index)) => record.votes[index] = counted,
        (_, None) => record.votes.push(counted),
    }
    let decided = outcome.is_decided();
    if decided {
        decide(record, outcome, at, now, max_grant_window);
    }
    Step::Counted { decided }
}

/// Records the decision (and the grant an approval opens) with the ids its events will carry.
fn decide(
    record: &mut ApprovalRecord,
    outcome: Outcome,
    at: &str,
    now: SystemTime,
    max_grant_window: Duration,
) {
    let (outcome, votes) = match outcome {
        Outcome::Approved { .. } => (
            ApprovalOutcome::Approved,
            record
                .votes
                .iter()
                .filter(|v| v.vote == Ballot::Approve)
                .cloned()
                .collect(),
        ),
        Outcome::Denied { by } => (
            ApprovalOutcome::Denied,
            record
                .votes
                .iter()
                .filter(|v| v.approver == by)
                .cloned()
                .collect(),
        ),
        Outcome::Expired => (ApprovalOutcome::Expired, record.votes.clone()),
        Outcome::Pending { .. } => return,
    };
    let held = &record.held;
    let grant = match (outcome, held.grant_window_s) {
        (ApprovalOutcome::Approved, Some(window)) if window > 0 => {
            let window = Duration::from_secs(window).min(max_grant_window);
            Some(GrantIssued {
                request_id: held.request_id.clone(),
                grant_id: EventId::new().to_string(),
                approval_id: held.approval_id.clone(),
                principal: held.identity.principal.clone(),
                rule: held.rule.clone(),
                verb: held.request.verb.clone(),
                api_group: held.request.api_group.clone(),
                resource: held.request.resource.clone(),
                subresource: held.request.subresource.clone(),
                namespace: held.request.namespace.clone(),
                expires_at: format_time(now + window),
                approved_by: votes
                    .iter()
                    .map(|v: &CountedVote| v.approver.clone())
                    .collect(),
                attestation: None,
            })
        }
        _ => None,
    };
    record.decision = Some(ApprovalDecided {
        request_id: held.request_id.clone(),
        approval_id: held.approval_id.clone(),
        outcome,
        votes,
        decided_at: at.to_owned(),
        grant_id: grant.as_ref().map(|g| g.grant_id.clone()),
        attestation: None,
    });
    record.decision_event_id = Some(EventId::new().to_string());
    record.grant_event_id = grant.as_ref().map(|_| EventId::new().to_string());
    record.grant = grant;
}

/// The decision and its grant as sent: each with the signed statement proxies act on.
fn attest(
    signer: &gatehouse_proof::checkpoint::NoteSigner,
    record: &ApprovalRecord,
    decision: &ApprovalDecided,
    now: SystemTime,
) -> (ApprovalDecided, Option<GrantIssued>) {
    let held = &record.held;
    let statement = DecisionStatement {
        decision: decision.unattested(),
        principal: held.identity.principal.clone(),
        rule: held.rule.clone(),
        request: held.request.clone(),
        valid_until: format_time(now + DECISION_VALIDITY),
    };
    let decision = ApprovalDecided {
        attestation: Some(gatehouse_proof::attest::sign(
            signer,
            DECISION_STATEMENT,
            &statement,
        )),
        ..decision.unattested()
    };
    let grant = record.grant.as_ref().map(|grant| GrantIssued {
        attestation: Some(gatehouse_proof::attest::sign(
            signer,
            GRANT_STATEMENT,
            &grant.unattested(),
        )),
        ..grant.unattested()
    });
    (decision, grant)
}

async fn post_with_retries(channel: &Channel, view: &HoldView) -> Result<Posted, ChannelError> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match channel.post(view).await {
            Ok(posted) => return Ok(posted),
            Err(e) if attempt >= 4 => return Err(e),
            Err(e) => {
                tracing::warn!(approval_id = %view.approval_id, attempt, error = %e, "posting failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

enum Handled {
    Done,
    Retry,
}

/// Runs a durable, explicitly acked consumer shared by replicas, reconnecting on errors.
async fn consume(
    bus: &Bus,
    name: &str,
    subject: String,
    shutdown: CancellationToken,
    handle: impl Fn(Bytes, i64) -> BoxFuture<'static, Handled>,
) {
    let spec = DurableConsumer {
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1_000,
        ..DurableConsumer::new(name, subject)
    };
    loop {
        let messages = match bus.durable_consumer(&spec).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(consumer = name, error = %e, "consumer unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(consumer = name, error = %e, "consumer error");
                    continue;
                }
                None => break,
            };
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let ack = match handle(message.payload.clone(), delivered).await {
                Handled::Done => AckKind::Ack,
                Handled::Retry => AckKind::Nak(Some(Duration::from_millis(500))),
            };
            if let Err(e) = message.ack_with(ack).await {
                tracing::warn!(consumer = name, error = %e, "ack failed");
            }
        }
    }
}

/// Whether a vote's authentication meets a rule's step-up: an OIDC sign-in on the approver
/// page, recent enough, with the methods and context class the rule asks for. The page checks
/// this too; this is the check that decides, since every vote comes through here.
pub fn stepped_up(
    step_up: &StepUp,
    auth: &VoterAuthentication,
    now: SystemTime,
) -> Result<(), String> {
    if auth.method != VoterAuthMethod::SignIn {
        return Err("this rule needs a fresh sign-in before a vote counts".into());
    }
    let signed_in = auth
        .auth_time
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .ok_or("the sign-in does not say when the credentials were entered")?;
    let age = time::OffsetDateTime::from(now) - signed_in;
    if age > time::Duration::seconds(step_up.max_age_s as i64 + 60)
        || age < time::Duration::seconds(-60)
    {
        return Err(format!(
            "this rule needs a sign-in at most {} s old",
            step_up.max_age_s
        ));
    }
    if let Some(missing) = step_up.amr.iter().find(|m| !auth.amr.contains(m)) {
        return Err(format!("this rule needs a sign-in with {missing}"));
    }
    if !step_up.acr.is_empty() && !auth.acr.as_ref().is_some_and(|a| step_up.acr.contains(a)) {
        return Err(format!(
            "this rule needs a sign-in of class {}",
            step_up.acr.join(" or ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_in(ago: Duration, amr: &[&str], acr: Option<&str>) -> VoterAuthentication {
        let at = time::OffsetDateTime::now_utc() - ago;
        VoterAuthentication {
            method: VoterAuthMethod::SignIn,
            issuer: Some("https://idp.example.com".into()),
            subject: Some("carol@example.com".into()),
            auth_time: Some(gatehouse_events::envelope::format_rfc3339(at)),
            amr: amr.iter().map(|m| m.to_string()).collect(),
            acr: acr.map(str::to_owned),
        }
    }

    #[test]
    fn step_up_counts_only_a_recent_sign_in_with_what_the_rule_asks() {
        let now = SystemTime::now();
        let rule = StepUp {
            max_age_s: 300,
            amr: vec!["mfa".into()],
            acr: vec!["urn:example:loa:3".into()],
        };
        let fresh = signed_in(
            Duration::from_secs(10),
            &["pwd", "mfa"],
            Some("urn:example:loa:3"),
        );
        assert_eq!(stepped_up(&rule, &fresh, now), Ok(()));

        let stale = signed_in(
            Duration::from_secs(900),
            &["pwd", "mfa"],
            Some("urn:example:loa:3"),
        );
        assert!(
            stepped_up(&rule, &stale, now)
                .unwrap_err()
                .contains("300 s")
        );
        let no_mfa = signed_in(Duration::from_secs(10), &["pwd"], Some("urn:example:loa:3"));
        assert!(stepped_up(&rule, &no_mfa, now).unwrap_err().contains("mfa"));
        let weak = signed_in(
            Duration::from_secs(10),
            &["pwd", "mfa"],
            Some("urn:example:loa:1"),
        );
        assert!(stepped_up(&rule, &weak, now).unwrap_err().contains("class"));
        let mut undated = fresh.clone();
        undated.auth_time = None;
        assert!(stepped_up(&rule, &undated, now).is_err());
        // A chat click or an API token is never a step-up, however recent.
        assert!(stepped_up(&rule, &crate::channel::by_chat(), now).is_err());
        let mut token = fresh;
        token.method = VoterAuthMethod::Token;
        assert!(stepped_up(&rule, &token, now).is_err());
    }
}
