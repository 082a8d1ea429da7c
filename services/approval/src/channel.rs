//! What every chat platform shares: the facts a hold message shows ([`HoldView`]), where a
//! message was posted ([`Posted`]), a vote as a platform hands it in ([`VoteCall`]) and the
//! service that counts it ([`VoteSink`]).
//!
//! A platform module (Slack, Teams, Discord) renders a [`HoldView`] its own way, posts and
//! updates it, and turns a verified callback into a [`VoteCall`]. It never counts votes
//! itself: [`VoteSink::vote`] does, the same way for every platform.

use futures::future::BoxFuture;
use gatehouse_events::{Ballot, ChannelKind, VoteVia, VoterAuthMethod, VoterAuthentication};

/// Everything an approver is shown about one hold, after the latest vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    pub approval_id: String,
    pub request_id: String,
    /// The machine identity that asked.
    pub principal: String,
    /// Who answers for it, from the identity registry.
    pub owner: Option<String>,
    pub team: Option<String>,
    pub purpose: Option<String>,
    pub verb: String,
    /// `group/resource` or `resource` for the core group, with `/subresource` when there is one.
    pub resource: String,
    /// Empty for cluster-scoped resources.
    pub namespace: String,
    /// Empty for collections.
    pub name: String,
    /// The caller's stated reason (`X-Gatehouse-Reason`).
    pub reason: Option<String>,
    /// The `approve` rule that held it.
    pub rule: String,
    pub approver_groups: Vec<String>,
    pub quorum: u32,
    /// RFC 3339 UTC.
    pub expires_at: String,
    /// The votes that currently count, in the order cast.
    pub votes: Vec<VoteLine>,
    pub state: HoldState,
    /// The approver page for this hold, when the service knows its public address.
    pub page_url: Option<String>,
    /// The rule asks for a fresh sign-in: votes count only from the approver page.
    pub step_up: bool,
}

impl HoldView {
    /// One line: "ci-deployer wants to delete deployments web in prod".
    pub fn headline(&self) -> String {
        let mut line = format!(
            "{} wants to {} {}",
            self.principal, self.verb, self.resource
        );
        if !self.name.is_empty() {
            line.push(' ');
            line.push_str(&self.name);
        }
        if !self.namespace.is_empty() {
            line.push_str(" in ");
            line.push_str(&self.namespace);
        }
        line
    }

    /// The state in words: "1 of 2 approvals", "Approved by alice, bob", "Denied by carol",
    /// "Expired", "Withdrawn: the client disconnected".
    pub fn status_line(&self) -> String {
        match &self.state {
            HoldState::Pending { approvals, quorum } => {
                format!("Waiting: {approvals} of {quorum} approvals")
            }
            HoldState::Approved { by, .. } => format!("Approved by {}", by.join(", ")),
            HoldState::Denied { by, .. } => format!("Denied by {by}"),
            HoldState::Expired { .. } => "Expired: nobody decided in time".to_owned(),
            HoldState::Withdrawn { reason, .. } => format!("Withdrawn: {reason}"),
        }
    }

    pub fn is_decided(&self) -> bool {
        !matches!(self.state, HoldState::Pending { .. })
    }
}

/// A vote that counts, as shown on the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteLine {
    pub approver: String,
    pub ballot: Ballot,
    pub channel: ChannelKind,
    pub via: VoteVia,
    /// RFC 3339 UTC.
    pub at: String,
}

/// Words platforms show for a vote: "approved", "Teams", "button".
pub fn ballot_past(ballot: Ballot) -> &'static str {
    match ballot {
        Ballot::Approve => "approved",
        Ballot::Deny => "denied",
        Ballot::Withdraw => "withdrew",
    }
}

pub fn channel_name(channel: ChannelKind) -> &'static str {
    match channel {
        ChannelKind::Slack => "Slack",
        ChannelKind::Teams => "Teams",
        ChannelKind::Discord => "Discord",
        ChannelKind::Api => "the API",
    }
}

pub fn via_name(via: VoteVia) -> &'static str {
    match via {
        VoteVia::Button => "button",
        VoteVia::Reaction => "reaction",
        VoteVia::Command => "command",
        VoteVia::Page => "approver page",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldState {
    Pending {
        approvals: u32,
        quorum: u32,
    },
    /// `decided_at` is RFC 3339 UTC, as are the other times here.
    Approved {
        decided_at: String,
        by: Vec<String>,
    },
    Denied {
        decided_at: String,
        by: String,
    },
    Expired {
        decided_at: String,
    },
    /// The requester went away (its client disconnected) before a decision.
    Withdrawn {
        at: String,
        reason: String,
    },
}

/// Where a hold's message lives on one platform, so it can be updated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Posted {
    pub channel: ChannelKind,
    /// Slack channel id, Teams conversation id, Discord channel id.
    pub channel_id: String,
    /// Slack message `ts`, Teams activity id, Discord message id.
    pub message_ref: String,
}

/// A vote as a platform hands it in, after the callback's signature was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteCall {
    pub approval_id: String,
    pub channel: ChannelKind,
    /// The platform's user id; mapped to an approver through the registry, never by name.
    pub chat_user_id: String,
    pub via: VoteVia,
    pub ballot: Ballot,
    pub comment: Option<String>,
    /// How the voter was authenticated: recorded with the vote, and what step-up checks.
    pub authentication: VoterAuthentication,
}

/// A chat platform's signed callback named the voter.
pub fn by_chat() -> VoterAuthentication {
    VoterAuthentication {
        method: VoterAuthMethod::Chat,
        issuer: None,
        subject: None,
        auth_time: None,
        amr: Vec::new(),
        acr: None,
    }
}

/// What became of a vote.
#[derive(Clone, Debug, PartialEq, Eq)]
// One per vote, handed straight back: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum VoteReply {
    /// Counted (or a repeat of the voter's current vote, which changes nothing). `view` is
    /// the hold after it.
    Counted { view: HoldView, repeat: bool },
    /// Not counted; `reason` is told to the voter only (ephemeral). `view` is the hold as it
    /// stands, when it exists.
    Refused {
        reason: String,
        view: Option<Box<HoldView>>,
    },
}

/// Counts votes; shared by every platform's callback handler.
pub trait VoteSink: Send + Sync + 'static {
    /// Counts one vote (or refuses it, saying why). Never fails: a store or NATS failure is a
    /// refusal whose reason asks the voter to try again.
    fn vote(&self, call: VoteCall) -> BoxFuture<'_, VoteReply>;

    /// The approval a platform message belongs to (Slack reactions name only the message).
    fn approval_for_message<'a>(
        &'a self,
        channel: ChannelKind,
        channel_id: &'a str,
        message_ref: &'a str,
    ) -> BoxFuture<'a, Option<String>>;

    /// True the first time `key` is seen by any replica within the replay window (ten
    /// minutes), false after. Platforms pass something unique to one delivery (a signature,
    /// an interaction or activity id), so a replayed callback is refused.
    fn first_delivery<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool>;
}

/// The longest platform id (Slack trigger id, Teams activity id, Discord interaction id) a
/// callback may carry; real ones are well under 100 bytes.
pub const MAX_PLATFORM_ID: usize = 256;

/// A platform's id for a delivery, if it is one: non-empty, at most [`MAX_PLATFORM_ID`] bytes of
/// printable ASCII. Deduplication keys are made from it, so nothing else gets that far.
pub fn platform_id(id: &str) -> Option<&str> {
    (!id.is_empty() && id.len() <= MAX_PLATFORM_ID && id.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(id)
}

/// A platform call that failed. The message never contains a token or secret.
#[derive(Debug, thiserror::Error)]
#[error("{platform}: {message}")]
pub struct ChannelError {
    pub platform: &'static str,
    pub message: String,
}

impl ChannelError {
    pub fn new(platform: &'static str, message: impl Into<String>) -> Self {
        Self {
            platform,
            message: message.into(),
        }
    }
}
