//! The state every approval replica shares, in JetStream key-value buckets.
//!
//! - `gatehouse_approvals`: one record per hold (`hold.<approval id>`), plus an index from
//!   chat messages to holds (`msg.<platform>.<hex>`) for votes that name only the message
//!   (Slack reactions).
//! - `gatehouse_deliveries`: one key per callback delivery seen in the last ten minutes, so a
//!   replayed callback is refused by whichever replica it reaches.
//! - `gatehouse_grants` ([`crate::grants`]): the grants approvals opened, read by every proxy.
//!
//! Replicas change a record only by compare-and-set on its revision ([`Store::update`]), so
//! two votes arriving at two replicas at once are both counted, and a hold is decided once.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use gatehouse_bus::{Bucket, Bus};
use gatehouse_events::{
    ApprovalDecided, ApprovalOutcome, Ballot, ChannelKind, CountedVote, GrantIssued, RequestHeld,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::channel::{HoldState, HoldView, Posted, VoteLine};
use crate::tally::{Hold, Tally, Vote};

pub const APPROVALS_BUCKET: &str = "gatehouse_approvals";
pub const DELIVERIES_BUCKET: &str = "gatehouse_deliveries";

/// How long a delivery key is remembered: longer than any platform's timestamp window.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Everything known about one hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRecord {
    pub held: RequestHeld,
    /// The chat messages asking for votes.
    #[serde(default)]
    pub posts: Vec<Posted>,
    /// Every configured platform was tried (a redelivered hold posts only what is missing).
    #[serde(default)]
    pub posting_done: bool,
    /// The votes that currently count, in the order first cast.
    #[serde(default)]
    pub votes: Vec<CountedVote>,
    pub decision: Option<ApprovalDecided>,
    /// The ids the decision's events are published under, chosen when it is decided, so a
    /// retry after a crash is deduplicated by JetStream.
    pub decision_event_id: Option<String>,
    pub grant: Option<GrantIssued>,
    pub grant_event_id: Option<String>,
    /// The decision's events are acked.
    #[serde(default)]
    pub decision_published: bool,
    /// The thread replies recording the decision were claimed by a replica.
    #[serde(default)]
    pub announced: bool,
    pub withdrawn: Option<Withdrawal>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Withdrawal {
    /// RFC 3339 UTC.
    pub at: String,
    pub reason: String,
}

impl ApprovalRecord {
    pub fn new(held: RequestHeld) -> Self {
        Self {
            held,
            posts: Vec::new(),
            posting_done: false,
            votes: Vec::new(),
            decision: None,
            decision_event_id: None,
            grant: None,
            grant_event_id: None,
            decision_published: false,
            announced: false,
            withdrawn: None,
        }
    }

    pub fn approval_id(&self) -> &str {
        &self.held.approval_id
    }

    pub fn expires_at(&self) -> SystemTime {
        parse_time(&self.held.expires_at).unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Neither decided nor withdrawn.
    pub fn is_open(&self) -> bool {
        self.decision.is_none() && self.withdrawn.is_none()
    }

    /// The counting rules, with the votes so far.
    pub fn tally(&self) -> Tally {
        let votes = self
            .votes
            .iter()
            .filter_map(|v| {
                let vote = match v.vote {
                    Ballot::Approve => Vote::Approve,
                    Ballot::Deny => Vote::Deny,
                    Ballot::Withdraw => return None,
                };
                Some((v.approver.clone(), vote))
            })
            .collect();
        Tally::restore(
            Hold {
                requester: self.held.identity.principal.clone(),
                approver_groups: self.held.approver_groups.clone(),
                quorum: self.held.quorum,
                expires_at: self.expires_at(),
                owner: self.held.identity.owner.clone(),
                team: self.held.identity.team.clone(),
                four_eyes: self.held.four_eyes,
                rule: self.held.rule.clone(),
            },
            votes,
        )
    }

    /// What approvers are shown.
    pub fn view(&self) -> HoldView {
        let held = &self.held;
        let request = &held.request;
        let mut resource = if request.api_group.is_empty() {
            request.resource.clone()
        } else {
            format!("{}/{}", request.api_group, request.resource)
        };
        if !request.subresource.is_empty() {
            resource.push('/');
            resource.push_str(&request.subresource);
        }
        let approvals = self
            .votes
            .iter()
            .filter(|v| v.vote == Ballot::Approve)
            .count() as u32;
        let state = match (&self.decision, &self.withdrawn) {
            (Some(decision), _) => match decision.outcome {
                ApprovalOutcome::Approved => HoldState::Approved {
                    decided_at: decision.decided_at.clone(),
                    by: decision.votes.iter().map(|v| v.approver.clone()).collect(),
                },
                ApprovalOutcome::Denied => HoldState::Denied {
                    decided_at: decision.decided_at.clone(),
                    by: decision
                        .votes
                        .iter()
                        .find(|v| v.vote == Ballot::Deny)
                        .map(|v| v.approver.clone())
                        .unwrap_or_default(),
                },
                ApprovalOutcome::Expired => HoldState::Expired {
                    decided_at: decision.decided_at.clone(),
                },
            },
            (None, Some(withdrawal)) => HoldState::Withdrawn {
                at: withdrawal.at.clone(),
                reason: withdrawal.reason.clone(),
            },
            (None, None) => HoldState::Pending {
                approvals,
                quorum: held.quorum.max(1),
            },
        };
        HoldView {
            approval_id: held.approval_id.clone(),
            request_id: held.request_id.clone(),
            principal: held.identity.principal.clone(),
            owner: held.identity.owner.clone(),
            team: held.identity.team.clone(),
            purpose: held.identity.purpose.clone(),
            verb: request.verb.clone(),
            resource,
            namespace: request.namespace.clone(),
            name: request.name.clone(),
            reason: held.reason.clone(),
            rule: held.rule.clone(),
            approver_groups: held.approver_groups.clone(),
            quorum: held.quorum.max(1),
            expires_at: held.expires_at.clone(),
            votes: self
                .votes
                .iter()
                .map(|v| VoteLine {
                    approver: v.approver.clone(),
                    ballot: v.vote,
                    channel: v.channel,
                    via: v.via,
                    at: v.at.clone(),
                })
                .collect(),
            state,
            page_url: None,
            step_up: held.step_up.is_some(),
        }
    }
}

/// The approval service's buckets.
#[derive(Clone)]
pub struct Store {
    approvals: kv::Store,
    /// The approvals bucket's stream, to list holds without a consumer.
    approvals_stream: async_nats::jetstream::stream::Stream,
    deliveries: kv::Store,
}

/// A store operation that failed; the message is safe to show.
#[derive(Debug, thiserror::Error)]
#[error("approval store: {0}")]
pub struct StoreError(pub String);

fn store_error(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn hold_key(approval_id: &str) -> String {
    // Approval ids are ULIDs; anything else is hex-encoded behind a `=` (which no ULID holds),
    // so no id can reach into another key or be refused by the bucket's key rules.
    if !approval_id.is_empty()
        && approval_id.len() <= 64
        && approval_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        format!("hold.{approval_id}")
    } else {
        format!("hold.={}", hex::encode(approval_id))
    }
}

fn message_key(channel: ChannelKind, channel_id: &str, message_ref: &str) -> String {
    let platform = match channel {
        ChannelKind::Slack => "slack",
        ChannelKind::Teams => "teams",
        ChannelKind::Discord => "discord",
        ChannelKind::Api => "api",
    };
    // Channel ids and message refs carry characters KV keys do not allow (`:`, `|`).
    format!(
        "msg.{platform}.{}",
        hex::encode(format!("{channel_id}\n{message_ref}"))
    )
}

impl Store {
    /// Opens (creating if needed) the buckets. `hold_lifetime` bounds how long a record is
    /// kept: well past the longest hold, so late callbacks still find it.
    pub async fn open(
        bus: &Bus,
        replicas: usize,
        hold_lifetime: Duration,
    ) -> Result<Self, StoreError> {
        let approvals = bus
            .key_value(&Bucket {
                name: APPROVALS_BUCKET.into(),
                description: "Gatehouse holds: votes, posts and decisions".into(),
                max_age: hold_lifetime,
                history: 1,
                replicas,
            })
            .await
            .map_err(store_error)?;
        let deliveries = bus
            .key_value(&Bucket {
                name: DELIVERIES_BUCKET.into(),
                description: "Gatehouse chat callbacks seen (replay protection)".into(),
                max_age: REPLAY_WINDOW,
                history: 1,
                replicas,
            })
            .await
            .map_err(store_error)?;
        let approvals_stream = bus
            .jetstream()
            .get_stream(format!("KV_{APPROVALS_BUCKET}"))
            .await
            .map_err(store_error)?;
        Ok(Self {
            approvals,
            approvals_stream,
            deliveries,
        })
    }

    /// Stores a new record; `false` if one with this approval id exists already.
    pub async fn create(&self, record: &ApprovalRecord) -> Result<bool, StoreError> {
        let value = serde_json::to_vec(record).map_err(store_error)?;
        match self
            .approvals
            .create(hold_key(record.approval_id()), Bytes::from(value))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The record and its revision.
    pub async fn load(
        &self,
        approval_id: &str,
    ) -> Result<Option<(ApprovalRecord, u64)>, StoreError> {
        let Some(entry) = self
            .approvals
            .entry(hold_key(approval_id))
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value).map_err(store_error)?;
        Ok(Some((record, entry.revision)))
    }

    /// Changes a record by compare-and-set, retrying on a concurrent change. `change` sees
    /// the latest record and returns `None` to leave it alone. Returns the record as written
    /// (or as found, if unchanged) with what `change` returned; `None` if there is no record.
    pub async fn update<T>(
        &self,
        approval_id: &str,
        mut change: impl FnMut(&mut ApprovalRecord) -> Option<T>,
    ) -> Result<Option<(ApprovalRecord, Option<T>)>, StoreError> {
        for _ in 0..32 {
            let Some((mut record, revision)) = self.load(approval_id).await? else {
                return Ok(None);
            };
            let Some(result) = change(&mut record) else {
                return Ok(Some((record, None)));
            };
            let value = serde_json::to_vec(&record).map_err(store_error)?;
            match self
                .approvals
                .update(hold_key(approval_id), Bytes::from(value), revision)
                .await
            {
                Ok(_) => return Ok(Some((record, Some(result)))),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(StoreError(format!(
            "hold {approval_id} kept changing under 32 attempts to update it"
        )))
    }

    /// Every record, newest last.
    pub async fn list(&self) -> Result<Vec<ApprovalRecord>, StoreError> {
        // One stream-info request naming each hold's subject. A key listing would need a
        // consumer, which after the loss of a cluster node can take far longer to come back
        // than the bucket's new leader.
        let prefix = format!("$KV.{APPROVALS_BUCKET}.hold.");
        let mut subjects = self
            .approvals_stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(store_error)?;
        let mut ids = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(store_error)?;
            if let Some(id) = subject.strip_prefix(&prefix) {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((record, _)) = self.load(&id).await? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Watches every record change (current values first), for expiry and retries.
    pub async fn watch(&self) -> Result<kv::Watch, StoreError> {
        self.approvals
            .watch_with_history("hold.>")
            .await
            .map_err(store_error)
    }

    pub async fn index_message(
        &self,
        posted: &Posted,
        approval_id: &str,
    ) -> Result<(), StoreError> {
        self.approvals
            .put(
                message_key(posted.channel, &posted.channel_id, &posted.message_ref),
                Bytes::from(approval_id.to_owned()),
            )
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    pub async fn approval_for_message(
        &self,
        channel: ChannelKind,
        channel_id: &str,
        message_ref: &str,
    ) -> Result<Option<String>, StoreError> {
        let value = self
            .approvals
            .get(message_key(channel, channel_id, message_ref))
            .await
            .map_err(store_error)?;
        Ok(value.and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    /// Records a delivery key; `true` the first time any replica records it.
    pub async fn first_delivery(&self, key: &str) -> Result<bool, StoreError> {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        match self
            .deliveries
            .create(format!("d.{digest}"), Bytes::from_static(b"1"))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }
}

pub fn parse_time(text: &str) -> Option<SystemTime> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(SystemTime::from(t))
}

pub fn format_time(t: SystemTime) -> String {
    gatehouse_events::envelope::format_rfc3339(time::OffsetDateTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_keys_escape_what_is_not_an_approval_id() {
        assert_eq!(
            hold_key("01JABCDEFGHJKMNPQRSTVWXYZ0"),
            "hold.01JABCDEFGHJKMNPQRSTVWXYZ0"
        );
        // Wildcards, separators and empty ids cannot address other keys.
        assert_eq!(hold_key("a.>"), "hold.=612e3e");
        assert_eq!(hold_key("*"), "hold.=2a");
        assert_eq!(hold_key(""), "hold.=");
        assert_ne!(hold_key("=2a"), hold_key("*"));
    }
}
