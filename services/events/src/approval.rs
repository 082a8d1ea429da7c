//! Payloads of just-in-time approval: a held request, the chat messages that ask for votes,
//! the votes, the decision, and the time-boxed grants a decision may create.
//!
//! Every event of one approval has the held request's id as its `subject` (a grant's
//! revocation has the grant id), so a reader follows a request from `request.received` through
//! `request.held`, `approval.*` and `grant.issued` to `request.forwarded` or `request.denied`.

use serde::{Deserialize, Serialize};

use crate::envelope::Payload;
use crate::request::{Identity, RecordedBody, RequestInfo};

/// `request.held`: policy says the request needs approval; the proxy keeps it open.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestHeld {
    pub request_id: String,
    /// ULID of this approval; votes and the decision name it.
    pub approval_id: String,
    /// The `approve` rule that held it.
    pub rule: String,
    /// Who asked: what approvers see, and who may not approve it.
    pub identity: Identity,
    pub request: RequestInfo,
    pub approver_groups: Vec<String>,
    /// Distinct approvals needed.
    pub quorum: u32,
    /// RFC 3339 UTC; undecided by then is expired.
    pub expires_at: String,
    /// A grant window the approval would open, in seconds.
    pub grant_window_s: Option<u64>,
    /// The caller's stated reason (`X-Gatehouse-Reason`), if any.
    pub reason: Option<String>,
    /// Who, besides the requester, may not approve it. Events from before the rule existed
    /// read as `owner`, the default.
    #[serde(default)]
    pub four_eyes: FourEyes,
    /// The rule asks each approver for a fresh sign-in before a vote counts; chat buttons and
    /// reactions then only lead to the approver page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<StepUp>,
    /// The request body approvers are shown, masked as the record is (whatever the rule's
    /// record level: approvers see what they approve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<RecordedBody>,
    /// For an `update` or `patch`: the object before and after, as the API server previewed
    /// it, masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangePreview>,
}

/// The object a held write changes, before and after, masked as responses are. `proposed` is
/// the API server's own answer to the same write with `dryRun=All` (as `kubectl diff` asks), so
/// defaults, strategic merges and admission are as they would be.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangePreview {
    /// The object as it is, or `None` when it could not be read (see `note`).
    pub current: Option<serde_json::Value>,
    /// The object as it would be, or `None` when the dry run failed (see `note`).
    pub proposed: Option<serde_json::Value>,
    /// RFC 3339 UTC: when it was read. The object may change before the decision.
    pub read_at: String,
    /// Why a side is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a step-up sign-in must show before a vote counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StepUp {
    /// Most seconds between the approver entering their credentials and the vote.
    pub max_age_s: u64,
    /// Authentication methods (`amr`) the sign-in must include, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Authentication context classes (`acr`) accepted, any one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acr: Vec<String>,
}

/// The four-eyes rule of an approval: people accountable for the identity may not approve its
/// requests (they may still deny them).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FourEyes {
    /// The identity's registered owner may not approve.
    #[default]
    Owner,
    /// Nor may approvers of the identity's team.
    OwnerAndTeam,
    /// Only the requester itself may not approve.
    Off,
}

impl Payload for RequestHeld {
    const NAME: &'static str = "request.held";
}

/// `request.withdrawn`: the held request's client went away before a decision, so the hold
/// is withdrawn; approvers are told and further votes are refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestWithdrawn {
    pub request_id: String,
    pub approval_id: String,
    /// One sentence a person can read ("the client disconnected while the request was held").
    pub reason: String,
}

impl Payload for RequestWithdrawn {
    const NAME: &'static str = "request.withdrawn";
}

/// Where approvers are asked.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Slack,
    Teams,
    Discord,
    /// The approval service's own authenticated API (`gatehouse approvals vote`).
    Api,
}

/// `approval.posted`: a chat message now asks for votes on the hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPosted {
    pub request_id: String,
    pub approval_id: String,
    pub channel: ChannelKind,
    /// The platform's channel (Slack channel id, Teams conversation id, Discord channel id).
    pub channel_id: String,
    /// The platform's reference to the message (Slack `ts`, Teams activity id, Discord
    /// message id), so it can be updated.
    pub message_ref: String,
}

impl Payload for ApprovalPosted {
    const NAME: &'static str = "approval.posted";
}

/// How a vote was cast.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VoteVia {
    Button,
    Reaction,
    Command,
    /// The approver page's form, after signing in.
    Page,
}

/// How the voter was authenticated.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VoterAuthMethod {
    /// A chat platform's signed callback named the chat user.
    Chat,
    /// A bearer token on the approval API.
    Token,
    /// An OIDC sign-in on the approver page.
    SignIn,
}

/// How the voter was authenticated, as the vote was counted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VoterAuthentication {
    pub method: VoterAuthMethod,
    /// The token's or sign-in's issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Its subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// RFC 3339 UTC: when the approver last entered their credentials at the issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
}

/// What a voter did.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ballot {
    Approve,
    Deny,
    /// A vote taken back before the decision (a removed reaction).
    Withdraw,
}

/// `approval.vote`: someone voted, counted or refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalVote {
    pub request_id: String,
    pub approval_id: String,
    /// The approver identity the chat user maps to, through the explicit registry; `None` if
    /// the user is in no registry (the vote is then refused).
    pub approver: Option<String>,
    /// The platform's user id.
    pub chat_user_id: String,
    pub channel: ChannelKind,
    pub via: VoteVia,
    pub vote: Ballot,
    pub comment: Option<String>,
    /// Whether the vote counts; a refused vote says why.
    pub counted: bool,
    pub refusal: Option<String>,
    /// How the voter was authenticated. Absent in events from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<VoterAuthentication>,
}

impl Payload for ApprovalVote {
    const NAME: &'static str = "approval.vote";
}

/// How an approval ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalOutcome {
    Approved,
    Denied,
    Expired,
}

/// A vote that counted towards the decision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CountedVote {
    pub approver: String,
    pub vote: Ballot,
    pub channel: ChannelKind,
    pub via: VoteVia,
    /// RFC 3339 UTC.
    pub at: String,
    pub comment: Option<String>,
}

/// `approval.decided`: approved, denied or expired; the proxy holding the request acts on it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecided {
    pub request_id: String,
    pub approval_id: String,
    pub outcome: ApprovalOutcome,
    /// Who decided it and how: the approvals of a quorum, or the one deny.
    pub votes: Vec<CountedVote>,
    /// RFC 3339 UTC.
    pub decided_at: String,
    /// The grant the approval opened, if the rule has a grant window.
    pub grant_id: Option<String>,
    /// The approval service's signed [`DecisionStatement`] (a signed note); proxies act on the
    /// statement, never on the fields beside it. Absent only in events from before signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
}

impl Payload for ApprovalDecided {
    const NAME: &'static str = "approval.decided";
}

/// `grant.issued`: the same identity may repeat the same kind of request without a new vote
/// until `expires_at`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantIssued {
    pub request_id: String,
    pub grant_id: String,
    pub approval_id: String,
    pub principal: String,
    pub rule: String,
    /// What the grant covers: this verb on this resource in this namespace.
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    /// RFC 3339 UTC.
    pub expires_at: String,
    /// The approvers whose votes opened it.
    pub approved_by: Vec<String>,
    /// The approval service's signature over this grant (a signed note whose statement is the
    /// grant without this field). Absent only in events from before signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
}

/// The kind line of a signed [`DecisionStatement`].
pub const DECISION_STATEMENT: &str = "gatehouse.dev/approval-decision/v1";
/// The kind line of a signed grant ([`GrantIssued`] without its attestation).
pub const GRANT_STATEMENT: &str = "gatehouse.dev/grant/v1";

/// What the approval service signs when it decides: the decision, the held request it
/// decides (so it cannot be applied to another), and how long it may be acted on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DecisionStatement {
    /// The decision, without its attestation.
    pub decision: ApprovalDecided,
    /// The held request, as `request.held` described it.
    pub principal: String,
    pub rule: String,
    pub request: RequestInfo,
    /// RFC 3339 UTC; a proxy refuses the statement after this.
    pub valid_until: String,
}

impl ApprovalDecided {
    /// This decision without its attestation: what a [`DecisionStatement`] holds.
    pub fn unattested(&self) -> Self {
        Self {
            attestation: None,
            ..self.clone()
        }
    }
}

impl GrantIssued {
    /// This grant without its attestation: the signed statement.
    pub fn unattested(&self) -> Self {
        Self {
            attestation: None,
            ..self.clone()
        }
    }
}

impl Payload for GrantIssued {
    const NAME: &'static str = "grant.issued";
}

/// `grant.revoked`: a grant ended before its expiry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantRevoked {
    pub grant_id: String,
    pub principal: String,
    /// Who revoked it (`gatehouse grants revoke --as …`).
    pub revoked_by: String,
    pub reason: Option<String>,
}

impl Payload for GrantRevoked {
    const NAME: &'static str = "grant.revoked";
}

/// What was refused in a [`BusRefused`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefusedMessage {
    /// An `approval.decided` event on the stream.
    Decision,
    /// A value in the grants bucket.
    Grant,
}

/// Why it was refused.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefusalProblem {
    /// Not a decision or grant at all.
    Unreadable,
    Unsigned,
    /// Signed by a key the service does not trust.
    UnknownKey,
    /// Signed by a trusted key, but the signature does not verify: changed or forged.
    BadSignature,
    /// Signed by a key whose trust window has ended.
    RetiredKey,
    /// The signed statement is not for what it came with (another approval id, request,
    /// principal or grant key, or other fields than those signed).
    Mismatch,
    /// A statement already acted on, sent again (or a revoked grant written back).
    Replayed,
    /// Past its validity: a decision after `valid_until`, a grant written after it expired.
    Expired,
}

/// `bus.refused`: a message a service would have acted on (a decision, a grant) was refused
/// because it could not be verified; nothing was released or admitted on it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BusRefused {
    pub message: RefusedMessage,
    pub problem: RefusalProblem,
    /// One sentence naming what was wrong.
    pub detail: String,
    /// What the message claimed to be about (not verified).
    pub approval_id: Option<String>,
    pub request_id: Option<String>,
    pub grant_id: Option<String>,
    /// The key that signed it, when one was identified (`name/id`).
    pub key: Option<String>,
    /// Where it was found (`stream GATEHOUSE sequence 42`, `bucket gatehouse_grants key K
    /// revision 7`).
    pub origin: String,
}

impl RefusedMessage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::Grant => "grant",
        }
    }
}

impl RefusalProblem {
    /// The name used in events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Unsigned => "unsigned",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::RetiredKey => "retired_key",
            Self::Mismatch => "mismatch",
            Self::Replayed => "replayed",
            Self::Expired => "expired",
        }
    }
}

impl Payload for BusRefused {
    const NAME: &'static str = "bus.refused";
}
