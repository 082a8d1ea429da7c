//! The access review for a period, read from the evidence ledger: `gatehouse report` and the
//! auditor API's `/v1/reports/access-review`.
//!
//! Per identity: its owner and team, what it did (verb × resource × namespace), what needed
//! approval and who decided, what was denied, the grants approvals opened, and, given the
//! policy, the allow and approve rules that could apply to it but decided none of its requests
//! (least-privilege review).
//!
//! A request belongs to the period when its `request.received` does; the events that follow it
//! (hold, votes, decision, grant, denial, response) are joined by `subject` whenever they came,
//! so a request held just before the end of a period still shows who approved it. The ledger
//! is in stream order and `request.received` is acked before anything else about a request is
//! published, so one pass suffices, and the state of a finished request is dropped as soon as
//! it ends: memory grows with identities and holds, not with traffic.

use gatehouse_events::envelope::{Payload, format_rfc3339};
use gatehouse_events::{
    ApprovalDecided, GrantIssued, GrantRevoked, RequestDenied, RequestForwarded, RequestHeld,
    RequestReceived, RequestWithdrawn, ResponseCompleted,
};
use gatehouse_policy::policy::rule::WrittenScope;
use gatehouse_policy::policy::{Action, Policy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The report for a period.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AccessReview {
    /// Start of the period (inclusive), RFC 3339; `None`: from the first event.
    pub from: Option<String>,
    /// End of the period (exclusive), RFC 3339; `None`: to the last event.
    pub to: Option<String>,
    /// When the report was made (set by [`run`]; [`build`] is pure and leaves it empty).
    pub generated_at: Option<String>,
    /// Where the policy came from, when unused grants were assessed (set by [`run`]).
    pub policy_source: Option<String>,
    /// Events looked at.
    pub events_read: u64,
    /// Events without the fields the report needs (no type, subject or readable time).
    pub events_skipped: u64,
    /// Ledger entries that could not be decoded or are not JSON: the report may be incomplete.
    pub events_unreadable: u64,
    /// Requests received in the period.
    pub requests: u64,
    /// Of those, requests no identity could be established for (no token, bad token).
    pub unidentified_requests: u64,
    /// One per principal, sorted by principal.
    pub identities: Vec<IdentityReview>,
    /// What a reader should know about how complete the report is.
    pub notes: Vec<String>,
}

/// Everything one identity did in the period.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IdentityReview {
    pub principal: String,
    /// False for a principal missing from the identity registry (all its requests are denied).
    pub registered: bool,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub purpose: Option<String>,
    /// Every group it carried in the period.
    pub groups: Vec<String>,
    /// Time of its first and last request in the period.
    pub first_seen: String,
    pub last_seen: String,
    pub totals: Counts,
    /// Sorted by namespace, resource, verb.
    pub activity: Vec<Activity>,
    /// The rules that decided its requests, with how many each.
    pub rules_used: Vec<RuleUse>,
    /// Requests an approve rule held, in order.
    pub holds: Vec<HoldRecord>,
    /// Requests Gatehouse refused, in order.
    pub denials: Vec<DenialRecord>,
    /// The denials grouped by reason and rule.
    pub denial_counts: Vec<DenialCount>,
    /// Grants approvals of its requests opened.
    pub grants: Vec<GrantRecord>,
    /// Allow and approve rules that could apply to it but decided none of its requests;
    /// `None` when no policy was given.
    pub unused_grants: Option<Vec<UnusedGrant>>,
}

/// Request counts. A held request is counted in `held`, and then in `forwarded` or `denied`
/// by how it ended.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Policy allowed them outright (or under a grant).
    pub allowed: u64,
    /// An approve rule held them.
    pub held: u64,
    /// Gatehouse refused them (policy, approval denied or expired, upstream unavailable, …).
    pub denied: u64,
    /// Sent to the API server.
    pub forwarded: u64,
    /// Forwarded, and the API server answered 4xx or 5xx (its RBAC refused, not found, …).
    pub error_responses: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.allowed += other.allowed;
        self.held += other.held;
        self.denied += other.denied;
        self.forwarded += other.forwarded;
        self.error_responses += other.error_responses;
    }
}

/// One verb on one resource in one namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Activity {
    pub verb: String,
    /// As kubectl and `gatehouse policy explain` name it: `pods`, `pods/exec`,
    /// `deployments.apps/scale`; the path for a non-resource URL (`/version`).
    pub resource: String,
    /// Empty for cluster-scoped resources and non-resource URLs.
    pub namespace: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleUse {
    pub rule: String,
    pub requests: u64,
}

/// How a hold ended.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HoldOutcome {
    Approved,
    Denied,
    Expired,
    /// The client went away before a decision.
    Withdrawn,
    /// No decision in the ledger (yet).
    #[default]
    Pending,
}

impl HoldOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
            Self::Pending => "pending",
        }
    }
}

/// A request an approve rule held.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HoldRecord {
    pub request_id: String,
    pub approval_id: Option<String>,
    /// When it was held (the `request.held` time, else the request's).
    pub held_at: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub rule: Option<String>,
    pub approver_groups: Vec<String>,
    pub quorum: Option<u32>,
    /// What the caller said it needed this for (`X-Gatehouse-Reason`).
    pub stated_reason: Option<String>,
    pub outcome: HoldOutcome,
    pub decided_at: Option<String>,
    /// The votes that decided it: the approvals of a quorum, or the one deny.
    pub decided_by: Vec<VoteRecord>,
    pub grant_id: Option<String>,
    /// Why it was withdrawn, or the refusal the caller got.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VoteRecord {
    pub approver: String,
    /// approve, deny or withdraw.
    pub vote: String,
    /// slack, teams, discord or api.
    pub channel: String,
    /// button, reaction or command.
    pub via: String,
    pub at: String,
    pub comment: Option<String>,
}

impl VoteRecord {
    /// `carol@example.com approve (slack button, 2024-06-01T10:00:00Z): "looks fine"`.
    fn describe(&self) -> String {
        let mut out = format!(
            "{} {} ({} {}, {})",
            self.approver, self.vote, self.channel, self.via, self.at
        );
        if let Some(c) = &self.comment {
            let _ = write!(out, ": {c:?}");
        }
        out
    }
}

/// A request Gatehouse refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DenialRecord {
    pub request_id: String,
    pub time: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// policy, approval_denied, approval_expired, unknown_identity, upstream_unavailable, …
    pub reason: String,
    pub rule: Option<String>,
    /// The HTTP status the caller got.
    pub status: Option<u16>,
    /// The message the caller got.
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DenialCount {
    pub reason: String,
    pub rule: Option<String>,
    pub count: u64,
}

/// A grant an approval opened.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: String,
    pub request_id: String,
    pub approval_id: String,
    pub rule: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub issued_at: String,
    pub expires_at: String,
    pub approved_by: Vec<String>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

/// A policy rule that could have let the identity do something, and decided none of its
/// requests in the period.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnusedGrant {
    pub rule: String,
    /// allow or approve.
    pub action: String,
    pub description: Option<String>,
    /// Why the rule applies to the identity: `identity ci-deployer`, `group deployers`,
    /// `anyone`.
    pub applies_via: String,
    pub verbs: String,
    /// Resources (with API groups and names when the rule narrows them), or URLs.
    pub resources: String,
    pub namespaces: String,
}

/// Makes the report from events (CloudEvents envelopes as JSON, in ledger order), keeping
/// requests received in `[from, to)`. With a policy, also lists unused grants.
pub fn build(
    events: impl Iterator<Item = Value>,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    policy: Option<&Policy>,
) -> AccessReview {
    let mut builder = ReviewBuilder::new(from, to);
    for event in events {
        builder.add(&event);
    }
    builder.finish(policy)
}

/// What [`build`] does, one event at a time (for callers that read events from somewhere that
/// can fail, such as the ledger).
#[derive(Debug, Default)]
pub struct ReviewBuilder {
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    identities: BTreeMap<String, IdentityState>,
    /// Requests in the period that may still have events to come, by request id.
    open: HashMap<String, OpenRequest>,
    /// Grant id → (principal, index in its grants), for revocations.
    grants: HashMap<String, (String, usize)>,
    events_read: u64,
    events_skipped: u64,
    events_unreadable: u64,
    requests: u64,
    unidentified: u64,
}

/// (namespace, resource, verb): the sort order of the activity table.
type ActivityKey = (String, String, String);

#[derive(Debug, Default)]
struct IdentityState {
    review: IdentityReview,
    groups: BTreeSet<String>,
    activity: BTreeMap<ActivityKey, Counts>,
    rules_used: BTreeMap<String, u64>,
    denial_counts: BTreeMap<(String, Option<String>), u64>,
}

#[derive(Debug)]
struct OpenRequest {
    principal: String,
    key: ActivityKey,
    name: String,
    forwarded: bool,
    denied: bool,
    completed: bool,
    /// Index in the identity's holds.
    hold: Option<usize>,
}

impl ReviewBuilder {
    pub fn new(from: Option<OffsetDateTime>, to: Option<OffsetDateTime>) -> Self {
        Self {
            from,
            to,
            ..Self::default()
        }
    }

    /// Whether events of this CloudEvents `type` matter to the report; others need not be
    /// parsed (session chunks are most of a ledger).
    pub fn wants(event_type: &str) -> bool {
        short_name(event_type).is_some_and(|name| {
            [
                RequestReceived::NAME,
                RequestDenied::NAME,
                RequestForwarded::NAME,
                ResponseCompleted::NAME,
                RequestHeld::NAME,
                RequestWithdrawn::NAME,
                ApprovalDecided::NAME,
                GrantIssued::NAME,
                GrantRevoked::NAME,
            ]
            .contains(&name)
        })
    }

    /// Counts an event that was read but not parsed because [`Self::wants`] said no.
    pub fn pass(&mut self) {
        self.events_read += 1;
    }

    /// Counts a ledger entry that could not be decoded or is not JSON.
    pub fn unreadable(&mut self) {
        self.events_read += 1;
        self.events_unreadable += 1;
    }

    /// Takes one event into account.
    pub fn add(&mut self, event: &Value) {
        self.events_read += 1;
        let Some(name) = str_at(event, "/type").and_then(short_name) else {
            self.events_skipped += 1;
            return;
        };
        // A revocation's subject is the grant id; everything else is about a request.
        if name == GrantRevoked::NAME {
            self.grant_revoked(event);
            return;
        }
        let Some(subject) = str_at(event, "/subject").or_else(|| str_at(event, "/data/request_id"))
        else {
            self.events_skipped += 1;
            return;
        };
        let subject = subject.to_owned();
        match name {
            RequestReceived::NAME => self.received(&subject, event),
            RequestHeld::NAME => self.held(&subject, event),
            RequestWithdrawn::NAME => self.withdrawn(&subject, event),
            ApprovalDecided::NAME => self.decided(&subject, event),
            RequestDenied::NAME => self.denied(&subject, event),
            RequestForwarded::NAME => self.forwarded(&subject),
            ResponseCompleted::NAME => self.completed(&subject, event),
            GrantIssued::NAME => self.grant_issued(&subject, event),
            _ => {}
        }
    }

    fn in_period(&self, t: OffsetDateTime) -> bool {
        self.from.is_none_or(|from| t >= from) && self.to.is_none_or(|to| t < to)
    }

    fn received(&mut self, subject: &str, event: &Value) {
        let time = str_at(event, "/time").unwrap_or_default();
        if self.from.is_some() || self.to.is_some() {
            match OffsetDateTime::parse(time, &Rfc3339) {
                Ok(t) if self.in_period(t) => {}
                Ok(_) => return,
                Err(_) => {
                    self.events_skipped += 1;
                    return;
                }
            }
        }
        // A redelivered event is the same request.
        if self.open.contains_key(subject) {
            return;
        }
        self.requests += 1;
        let Some(identity) = event.pointer("/data/identity").filter(|i| i.is_object()) else {
            self.unidentified += 1;
            return;
        };
        let Some(principal) = str_at(identity, "/principal") else {
            self.unidentified += 1;
            return;
        };
        let state = self
            .identities
            .entry(principal.to_owned())
            .or_insert_with(|| IdentityState {
                review: IdentityReview {
                    principal: principal.to_owned(),
                    first_seen: time.to_owned(),
                    ..IdentityReview::default()
                },
                ..IdentityState::default()
            });
        // The latest request says who owns it now.
        let r = &mut state.review;
        r.registered = identity
            .get("registered")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        for (field, slot) in [
            ("owner", &mut r.owner),
            ("team", &mut r.team),
            ("purpose", &mut r.purpose),
        ] {
            if let Some(v) = str_at(identity, &format!("/{field}")) {
                *slot = Some(v.to_owned());
            }
        }
        r.last_seen = time.to_owned();
        if let Some(groups) = identity.get("groups").and_then(Value::as_array) {
            state
                .groups
                .extend(groups.iter().filter_map(Value::as_str).map(str::to_owned));
        }

        let request = event.pointer("/data/request").unwrap_or(&Value::Null);
        let (verb, resource, namespace, name) = describe_request(request);
        let key = (namespace, resource, verb);
        let action = str_at(event, "/data/decision/action").unwrap_or_default();
        let counts = state.activity.entry(key.clone()).or_default();
        counts.requests += 1;
        match action {
            "allow" => counts.allowed += 1,
            "approve" => counts.held += 1,
            _ => {}
        }
        let rule = str_at(event, "/data/decision/rule");
        if let Some(rule) = rule {
            *state.rules_used.entry(rule.to_owned()).or_default() += 1;
        }
        let hold = (action == "approve").then(|| {
            state.review.holds.push(HoldRecord {
                request_id: subject.to_owned(),
                held_at: time.to_owned(),
                verb: key.2.clone(),
                resource: key.1.clone(),
                namespace: key.0.clone(),
                name: name.clone(),
                rule: rule.map(str::to_owned),
                ..HoldRecord::default()
            });
            state.review.holds.len() - 1
        });
        self.open.insert(
            subject.to_owned(),
            OpenRequest {
                principal: principal.to_owned(),
                key,
                name,
                forwarded: false,
                denied: false,
                completed: false,
                hold,
            },
        );
    }

    /// The open request and its identity's state.
    fn request_mut(&mut self, subject: &str) -> Option<(&mut OpenRequest, &mut IdentityState)> {
        let open = self.open.get_mut(subject)?;
        let state = self.identities.get_mut(&open.principal)?;
        Some((open, state))
    }

    /// The hold of an open request, made if `request.received` did not say approve.
    fn hold_mut(&mut self, subject: &str) -> Option<&mut HoldRecord> {
        let (open, state) = self.request_mut(subject)?;
        let index = match open.hold {
            Some(index) => index,
            None => {
                state.review.holds.push(HoldRecord {
                    request_id: subject.to_owned(),
                    verb: open.key.2.clone(),
                    resource: open.key.1.clone(),
                    namespace: open.key.0.clone(),
                    name: open.name.clone(),
                    ..HoldRecord::default()
                });
                let index = state.review.holds.len() - 1;
                open.hold = Some(index);
                index
            }
        };
        state.review.holds.get_mut(index)
    }

    fn held(&mut self, subject: &str, event: &Value) {
        let Some(hold) = self.hold_mut(subject) else {
            return;
        };
        if let Some(t) = str_at(event, "/time") {
            hold.held_at = t.to_owned();
        }
        hold.approval_id = str_at(event, "/data/approval_id").map(str::to_owned);
        if let Some(rule) = str_at(event, "/data/rule") {
            hold.rule = Some(rule.to_owned());
        }
        hold.approver_groups = strings_at(event, "/data/approver_groups");
        hold.quorum = event
            .pointer("/data/quorum")
            .and_then(Value::as_u64)
            .and_then(|q| u32::try_from(q).ok());
        hold.stated_reason = str_at(event, "/data/reason").map(str::to_owned);
    }

    fn withdrawn(&mut self, subject: &str, event: &Value) {
        let Some(hold) = self.hold_mut(subject) else {
            return;
        };
        if hold.outcome == HoldOutcome::Pending {
            hold.outcome = HoldOutcome::Withdrawn;
            hold.decided_at = str_at(event, "/time").map(str::to_owned);
            hold.note = str_at(event, "/data/reason").map(str::to_owned);
        }
    }

    fn decided(&mut self, subject: &str, event: &Value) {
        let Some(hold) = self.hold_mut(subject) else {
            return;
        };
        hold.outcome = match str_at(event, "/data/outcome") {
            Some("approved") => HoldOutcome::Approved,
            Some("denied") => HoldOutcome::Denied,
            Some("expired") => HoldOutcome::Expired,
            _ => hold.outcome,
        };
        hold.decided_at = str_at(event, "/data/decided_at")
            .or_else(|| str_at(event, "/time"))
            .map(str::to_owned);
        hold.grant_id = str_at(event, "/data/grant_id").map(str::to_owned);
        hold.decided_by = event
            .pointer("/data/votes")
            .and_then(Value::as_array)
            .map(|votes| {
                votes
                    .iter()
                    .map(|v| VoteRecord {
                        approver: string_at(v, "/approver"),
                        vote: string_at(v, "/vote"),
                        channel: string_at(v, "/channel"),
                        via: string_at(v, "/via"),
                        at: string_at(v, "/at"),
                        comment: str_at(v, "/comment").map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default();
    }

    fn denied(&mut self, subject: &str, event: &Value) {
        let Some((open, state)) = self.request_mut(subject) else {
            return;
        };
        if open.denied {
            return;
        }
        open.denied = true;
        let reason = string_at(event, "/data/reason");
        let rule = str_at(event, "/data/rule").map(str::to_owned);
        let message = string_at(event, "/data/message");
        if let Some(counts) = state.activity.get_mut(&open.key) {
            counts.denied += 1;
        }
        *state
            .denial_counts
            .entry((reason.clone(), rule.clone()))
            .or_default() += 1;
        state.review.denials.push(DenialRecord {
            request_id: subject.to_owned(),
            time: string_at(event, "/time"),
            verb: open.key.2.clone(),
            resource: open.key.1.clone(),
            namespace: open.key.0.clone(),
            name: open.name.clone(),
            reason: reason.clone(),
            rule,
            status: event
                .pointer("/data/status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            message: message.clone(),
        });
        if let Some(hold) = open.hold.and_then(|i| state.review.holds.get_mut(i)) {
            if hold.outcome == HoldOutcome::Pending {
                hold.outcome = if reason == "approval_expired" {
                    HoldOutcome::Expired
                } else {
                    HoldOutcome::Denied
                };
            }
            if hold.note.is_none() {
                hold.note = Some(message);
            }
        } else {
            // Nothing follows a denial; holds stay open for late decisions and grants.
            self.open.remove(subject);
        }
    }

    fn forwarded(&mut self, subject: &str) {
        let Some((open, state)) = self.request_mut(subject) else {
            return;
        };
        if open.forwarded {
            return;
        }
        open.forwarded = true;
        if let Some(counts) = state.activity.get_mut(&open.key) {
            counts.forwarded += 1;
        }
        // Only an approval releases a held request.
        if let Some(hold) = open.hold.and_then(|i| state.review.holds.get_mut(i))
            && hold.outcome == HoldOutcome::Pending
        {
            hold.outcome = HoldOutcome::Approved;
        }
    }

    fn completed(&mut self, subject: &str, event: &Value) {
        let Some((open, state)) = self.request_mut(subject) else {
            return;
        };
        if open.completed {
            return;
        }
        open.completed = true;
        let status = event
            .pointer("/data/status")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if status >= 400
            && let Some(counts) = state.activity.get_mut(&open.key)
        {
            counts.error_responses += 1;
        }
        if open.hold.is_none() {
            self.open.remove(subject);
        }
    }

    fn grant_issued(&mut self, subject: &str, event: &Value) {
        let grant_id = string_at(event, "/data/grant_id");
        if grant_id.is_empty() || self.grants.contains_key(&grant_id) {
            return;
        }
        let Some((open, state)) = self.request_mut(subject) else {
            return;
        };
        let data = event.get("data").unwrap_or(&Value::Null);
        let resource = resource_name(
            str_at(data, "/api_group").unwrap_or_default(),
            str_at(data, "/resource").unwrap_or_default(),
            str_at(data, "/subresource").unwrap_or_default(),
        );
        state.review.grants.push(GrantRecord {
            grant_id: grant_id.clone(),
            request_id: subject.to_owned(),
            approval_id: string_at(data, "/approval_id"),
            rule: string_at(data, "/rule"),
            verb: string_at(data, "/verb"),
            resource,
            namespace: string_at(data, "/namespace"),
            issued_at: string_at(event, "/time"),
            expires_at: string_at(data, "/expires_at"),
            approved_by: strings_at(data, "/approved_by"),
            ..GrantRecord::default()
        });
        let index = state.review.grants.len() - 1;
        let principal = open.principal.clone();
        self.grants.insert(grant_id, (principal, index));
    }

    fn grant_revoked(&mut self, event: &Value) {
        let Some(grant_id) = str_at(event, "/data/grant_id").or_else(|| str_at(event, "/subject"))
        else {
            self.events_skipped += 1;
            return;
        };
        let Some((principal, index)) = self.grants.get(grant_id) else {
            return;
        };
        let Some(grant) = self
            .identities
            .get_mut(principal)
            .and_then(|s| s.review.grants.get_mut(*index))
        else {
            return;
        };
        grant.revoked_at = str_at(event, "/time").map(str::to_owned);
        grant.revoked_by = str_at(event, "/data/revoked_by").map(str::to_owned);
        grant.revoke_reason = str_at(event, "/data/reason").map(str::to_owned);
    }

    /// The report. With a policy, each identity's unused grants are worked out.
    pub fn finish(self, policy: Option<&Policy>) -> AccessReview {
        let mut notes = Vec::new();
        if self.events_unreadable > 0 {
            notes.push(format!(
                "{} ledger entr{} could not be read, so this report may be incomplete; run \
                 `gatehouse ledger verify`",
                self.events_unreadable,
                if self.events_unreadable == 1 {
                    "y"
                } else {
                    "ies"
                }
            ));
        }
        let identities = self
            .identities
            .into_values()
            .map(|state| {
                let IdentityState {
                    mut review,
                    groups,
                    activity,
                    rules_used,
                    denial_counts,
                } = state;
                review.groups = groups.into_iter().collect();
                review.activity = activity
                    .into_iter()
                    .map(|((namespace, resource, verb), counts)| {
                        review.totals.add(&counts);
                        Activity {
                            verb,
                            resource,
                            namespace,
                            counts,
                        }
                    })
                    .collect();
                review.denial_counts = denial_counts
                    .into_iter()
                    .map(|((reason, rule), count)| DenialCount {
                        reason,
                        rule,
                        count,
                    })
                    .collect();
                review.unused_grants =
                    policy.map(|policy| unused_grants(policy, &review, &rules_used));
                review.rules_used = rules_used
                    .into_iter()
                    .map(|(rule, requests)| RuleUse { rule, requests })
                    .collect();
                review
            })
            .collect();
        AccessReview {
            from: self.from.map(format_rfc3339),
            to: self.to.map(format_rfc3339),
            generated_at: None,
            policy_source: None,
            events_read: self.events_read,
            events_skipped: self.events_skipped,
            events_unreadable: self.events_unreadable,
            requests: self.requests,
            unidentified_requests: self.unidentified,
            identities,
            notes,
        }
    }
}

/// `dev.gatehouse.request.received.v1` → `request.received`.
fn short_name(event_type: &str) -> Option<&str> {
    event_type
        .strip_prefix("dev.gatehouse.")?
        .strip_suffix(".v1")
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn string_at(v: &Value, pointer: &str) -> String {
    str_at(v, pointer).unwrap_or_default().to_owned()
}

fn strings_at(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `deployments.apps/scale`, kubectl's and `policy explain`'s way of naming it.
fn resource_name(api_group: &str, resource: &str, subresource: &str) -> String {
    let mut out = resource.to_owned();
    if !api_group.is_empty() {
        out.push('.');
        out.push_str(api_group);
    }
    if !subresource.is_empty() {
        out.push('/');
        out.push_str(subresource);
    }
    out
}

/// (verb, resource, namespace, name) of a recorded `RequestInfo`.
fn describe_request(request: &Value) -> (String, String, String, String) {
    let verb = string_at(request, "/verb");
    let resource = str_at(request, "/resource").unwrap_or_default();
    let resource_request = request
        .get("is_resource_request")
        .and_then(Value::as_bool)
        .unwrap_or(!resource.is_empty());
    let target = if resource_request {
        resource_name(
            str_at(request, "/api_group").unwrap_or_default(),
            resource,
            str_at(request, "/subresource").unwrap_or_default(),
        )
    } else {
        string_at(request, "/path")
    };
    (
        verb,
        target,
        string_at(request, "/namespace"),
        string_at(request, "/name"),
    )
}

/// Allow and approve rules whose subject (identities or groups, as the proxy matches them)
/// takes in this identity and that decided none of its requests.
fn unused_grants(
    policy: &Policy,
    review: &IdentityReview,
    used: &BTreeMap<String, u64>,
) -> Vec<UnusedGrant> {
    policy
        .rules()
        .iter()
        .filter(|rule| matches!(rule.action(), Action::Allow | Action::Approve))
        .filter(|rule| !used.contains_key(rule.id()))
        .filter_map(|rule| {
            let applies_via = rule.subject_match(&review.principal, &review.groups)?;
            let scope = rule.written_scope();
            Some(UnusedGrant {
                rule: rule.id().to_owned(),
                action: rule.action().as_str().to_owned(),
                description: rule.description().map(str::to_owned),
                applies_via,
                verbs: scope.verbs.join(", "),
                resources: rule_resources(&scope),
                namespaces: match (scope.namespaces, scope.resources) {
                    (_, None) => String::new(),
                    (Some(ns), _) => show_list(ns),
                    (None, Some(_)) => "any, and cluster scope".to_owned(),
                },
            })
        })
        .collect()
}

fn rule_resources(scope: &WrittenScope<'_>) -> String {
    let Some(resources) = scope.resources else {
        return match scope.non_resource_urls {
            Some(urls) => format!("URLs {}", show_list(urls)),
            None => String::new(),
        };
    };
    let mut out = show_list(resources);
    if let Some(groups) = scope.api_groups {
        let _ = write!(out, " (API groups {})", show_list(groups));
    }
    if let Some(names) = scope.names {
        let _ = write!(out, " (names {})", show_list(names));
    }
    out
}

/// `a, b, "" (core)`.
fn show_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| {
            if i.is_empty() {
                "\"\" (core)".to_owned()
            } else {
                i.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// ----- renderers -----

/// The report as JSON (the same shape [`AccessReview`] serializes to).
pub fn to_json(review: &AccessReview) -> Value {
    serde_json::to_value(review).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// Columns of [`to_csv`], in order.
pub const CSV_COLUMNS: [&str; 21] = [
    "section",
    "principal",
    "owner",
    "team",
    "verb",
    "resource",
    "namespace",
    "name",
    "requests",
    "allowed",
    "held",
    "denied",
    "forwarded",
    "error_responses",
    "time",
    "request_id",
    "rule",
    "outcome",
    "by",
    "reason",
    "detail",
];

/// One CSV row, by column name.
#[derive(Default)]
struct CsvRow<'a> {
    section: &'a str,
    verb: &'a str,
    resource: &'a str,
    namespace: &'a str,
    name: &'a str,
    counts: Option<Counts>,
    time: &'a str,
    request_id: &'a str,
    rule: &'a str,
    outcome: &'a str,
    by: String,
    reason: &'a str,
    detail: String,
}

/// The report as CSV (RFC 4180, CRLF line ends): a `section` column says what a row is:
/// `identity` (totals), `activity` (one verb × resource × namespace), `hold`, `denial`,
/// `grant`, `unused_grant`. Cells a spreadsheet would run as a formula are prefixed with `'`.
pub fn to_csv(review: &AccessReview) -> String {
    let mut out = String::new();
    csv_line(&mut out, CSV_COLUMNS.iter().map(|c| (*c).to_owned()));
    for id in &review.identities {
        let who = [
            id.principal.as_str(),
            id.owner.as_deref().unwrap_or_default(),
            id.team.as_deref().unwrap_or_default(),
        ];
        let mut rows = vec![CsvRow {
            section: "identity",
            counts: Some(id.totals),
            time: &id.last_seen,
            detail: format!(
                "{}; groups: {}; first seen {}",
                if id.registered {
                    "registered"
                } else {
                    "NOT in the identity registry"
                },
                if id.groups.is_empty() {
                    "none".to_owned()
                } else {
                    id.groups.join(", ")
                },
                id.first_seen
            ),
            ..CsvRow::default()
        }];
        rows.extend(id.activity.iter().map(|a| CsvRow {
            section: "activity",
            verb: &a.verb,
            resource: &a.resource,
            namespace: &a.namespace,
            counts: Some(a.counts),
            ..CsvRow::default()
        }));
        rows.extend(id.holds.iter().map(|h| {
            CsvRow {
                section: "hold",
                verb: &h.verb,
                resource: &h.resource,
                namespace: &h.namespace,
                name: &h.name,
                time: &h.held_at,
                request_id: &h.request_id,
                rule: h.rule.as_deref().unwrap_or_default(),
                outcome: h.outcome.as_str(),
                by: h
                    .decided_by
                    .iter()
                    .map(VoteRecord::describe)
                    .collect::<Vec<_>>()
                    .join("; "),
                reason: h.stated_reason.as_deref().unwrap_or_default(),
                detail: hold_detail(h),
                ..CsvRow::default()
            }
        }));
        rows.extend(id.denials.iter().map(|d| CsvRow {
            section: "denial",
            verb: &d.verb,
            resource: &d.resource,
            namespace: &d.namespace,
            name: &d.name,
            time: &d.time,
            request_id: &d.request_id,
            rule: d.rule.as_deref().unwrap_or_default(),
            outcome: &d.reason,
            reason: &d.message,
            detail: d.status.map(|s| format!("HTTP {s}")).unwrap_or_default(),
            ..CsvRow::default()
        }));
        rows.extend(id.grants.iter().map(|g| CsvRow {
            section: "grant",
            verb: &g.verb,
            resource: &g.resource,
            namespace: &g.namespace,
            time: &g.issued_at,
            request_id: &g.request_id,
            rule: &g.rule,
            outcome: if g.revoked_at.is_some() {
                "revoked"
            } else {
                "issued"
            },
            by: g.approved_by.join(", "),
            reason: g.revoke_reason.as_deref().unwrap_or_default(),
            detail: grant_detail(g),
            ..CsvRow::default()
        }));
        rows.extend(id.unused_grants.iter().flatten().map(|u| CsvRow {
            section: "unused_grant",
            verb: &u.verbs,
            resource: &u.resources,
            namespace: &u.namespaces,
            rule: &u.rule,
            outcome: &u.action,
            reason: u.description.as_deref().unwrap_or_default(),
            detail: format!("applies via {}", u.applies_via),
            ..CsvRow::default()
        }));
        for row in rows {
            let counts = row.counts.map(|c| {
                [
                    c.requests,
                    c.allowed,
                    c.held,
                    c.denied,
                    c.forwarded,
                    c.error_responses,
                ]
                .map(|n| n.to_string())
            });
            let counts = counts.unwrap_or_default();
            let cells = [row.section, who[0], who[1], who[2]]
                .into_iter()
                .chain([row.verb, row.resource, row.namespace, row.name])
                .map(str::to_owned)
                .chain(counts)
                .chain(
                    [row.time, row.request_id, row.rule, row.outcome]
                        .into_iter()
                        .map(str::to_owned),
                )
                .chain([row.by, row.reason.to_owned(), row.detail]);
            csv_line(&mut out, cells);
        }
    }
    out
}

fn hold_detail(h: &HoldRecord) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &h.approval_id {
        parts.push(format!("approval {a}"));
    }
    if !h.approver_groups.is_empty() {
        parts.push(format!(
            "approvers from {} (quorum {})",
            h.approver_groups.join(", "),
            h.quorum.unwrap_or(1)
        ));
    }
    if let Some(at) = &h.decided_at {
        parts.push(format!("decided {at}"));
    }
    if let Some(g) = &h.grant_id {
        parts.push(format!("opened grant {g}"));
    }
    if let Some(n) = &h.note {
        parts.push(n.clone());
    }
    parts.join("; ")
}

fn grant_detail(g: &GrantRecord) -> String {
    let mut out = format!("grant {}; expires {}", g.grant_id, g.expires_at);
    if let Some(at) = &g.revoked_at {
        let _ = write!(
            out,
            "; revoked {at} by {}",
            g.revoked_by.as_deref().unwrap_or("?")
        );
    }
    out
}

fn csv_line(out: &mut String, cells: impl Iterator<Item = String>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_cell(&cell));
    }
    out.push_str("\r\n");
}

/// One cell: a leading `=`, `+`, `-`, `@`, tab or carriage return (a formula to a
/// spreadsheet) gets a `'` in front; quoted when it holds a comma, quote or line break.
pub fn csv_cell(value: &str) -> String {
    let guarded;
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{value}");
        guarded.as_str()
    } else {
        value
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HTML_STYLE: &str = "\
body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;color:#111;margin:24px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 4px;border-bottom:2px solid #333}\
h3{font-size:14px;margin:14px 0 4px}\
table{border-collapse:collapse;width:100%;margin:4px 0 8px}\
th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}\
th{background:#eee}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.meta{color:#444}.muted{color:#777}.bad{color:#a00;font-weight:600}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0}dt{font-weight:600}\
code{font-family:ui-monospace,monospace;font-size:12px}\
@page{size:A4 landscape;margin:12mm}\
@media print{body{margin:0;font-size:10px}section.identity{break-before:page}\
thead{display:table-header-group}tr{break-inside:avoid}th{background:#eee !important;\
-webkit-print-color-adjust:exact;print-color-adjust:exact}}";

/// The report as one self-contained printable HTML page: a summary, then a section per
/// identity (each starts a new page when printed). Every value is escaped.
pub fn to_html(review: &AccessReview) -> String {
    let e = |s: &str| html_escape(s);
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = writeln!(
        h,
        "<title>Gatehouse access review {}</title><style>{HTML_STYLE}</style></head><body>",
        e(&period(review))
    );
    let _ = writeln!(
        h,
        "<h1>Access review</h1><p class=\"meta\">Period: {}<br>Generated: {}<br>Policy: {}<br>\
         {} requests from {} identities; {} without an identity; {} events read</p>",
        e(&period(review)),
        e(review.generated_at.as_deref().unwrap_or("-")),
        e(review.policy_source.as_deref().unwrap_or(
            if review.identities.iter().any(|i| i.unused_grants.is_some()) {
                "given"
            } else {
                "none given: unused grants not assessed"
            }
        )),
        review.requests,
        review.identities.len(),
        review.unidentified_requests,
        review.events_read,
    );
    for note in &review.notes {
        let _ = writeln!(h, "<p class=\"bad\">{}</p>", e(note));
    }
    h.push_str(
        "<h2>Summary</h2><table><thead><tr><th>Identity</th><th>Owner</th><th>Team</th>\
         <th>Requests</th><th>Allowed</th><th>Held</th><th>Denied</th><th>Forwarded</th>\
         <th>Error responses</th><th>Unused grants</th></tr></thead><tbody>\n",
    );
    for (index, id) in review.identities.iter().enumerate() {
        let t = id.totals;
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#{}\">{}</a>{}</td><td>{}</td><td>{}</td>{}<td class=\"n\">{}</td></tr>",
            anchor(index),
            e(&id.principal),
            if id.registered {
                ""
            } else {
                " <span class=\"bad\">(unregistered)</span>"
            },
            e(id.owner.as_deref().unwrap_or("-")),
            e(id.team.as_deref().unwrap_or("-")),
            count_cells(&t),
            id.unused_grants
                .as_ref()
                .map_or("-".to_owned(), |u| u.len().to_string()),
        );
    }
    h.push_str("</tbody></table>\n");

    for (index, id) in review.identities.iter().enumerate() {
        identity_html(&mut h, index, id);
    }
    h.push_str("</body></html>\n");
    h
}

pub fn period(review: &AccessReview) -> String {
    format!(
        "{} to {}",
        review.from.as_deref().unwrap_or("the first event"),
        review.to.as_deref().unwrap_or("the last event")
    )
}

/// An id attribute for the identity's section: by position, so two principals that differ
/// only in punctuation cannot collide.
fn anchor(index: usize) -> String {
    format!("identity-{index}")
}

fn count_cells(c: &Counts) -> String {
    [
        c.requests,
        c.allowed,
        c.held,
        c.denied,
        c.forwarded,
        c.error_responses,
    ]
    .iter()
    .map(|n| format!("<td class=\"n\">{n}</td>"))
    .collect()
}

/// `(cluster)` for an empty namespace.
fn ns(namespace: &str) -> String {
    if namespace.is_empty() {
        "(cluster)".to_owned()
    } else {
        html_escape(namespace)
    }
}

fn identity_html(h: &mut String, index: usize, id: &IdentityReview) {
    let e = |s: &str| html_escape(s);
    let _ = writeln!(
        h,
        "<section class=\"identity\" id=\"{}\"><h2>{}</h2><dl>\
         <dt>Owner</dt><dd>{}</dd><dt>Team</dt><dd>{}</dd><dt>Purpose</dt><dd>{}</dd>\
         <dt>Groups</dt><dd>{}</dd><dt>Registered</dt><dd>{}</dd>\
         <dt>Seen</dt><dd>{} to {}</dd></dl>",
        anchor(index),
        e(&id.principal),
        e(id.owner.as_deref().unwrap_or("-")),
        e(id.team.as_deref().unwrap_or("-")),
        e(id.purpose.as_deref().unwrap_or("-")),
        e(&if id.groups.is_empty() {
            "none".to_owned()
        } else {
            id.groups.join(", ")
        }),
        if id.registered {
            "yes"
        } else {
            "<span class=\"bad\">no: not in the identity registry</span>"
        },
        e(&id.first_seen),
        e(&id.last_seen),
    );

    h.push_str(
        "<h3>What it did</h3><table><thead><tr><th>Verb</th><th>Resource</th><th>Namespace</th>\
         <th>Requests</th><th>Allowed</th><th>Held</th><th>Denied</th><th>Forwarded</th>\
         <th>Error responses</th></tr></thead><tbody>\n",
    );
    for a in &id.activity {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>{}</tr>",
            e(&a.verb),
            e(&a.resource),
            ns(&a.namespace),
            count_cells(&a.counts)
        );
    }
    let _ = writeln!(
        h,
        "<tr><th colspan=\"3\">Total</th>{}</tr></tbody></table>",
        count_cells(&id.totals)
    );
    if !id.rules_used.is_empty() {
        let used: Vec<String> = id
            .rules_used
            .iter()
            .map(|r| format!("<code>{}</code> ({})", e(&r.rule), r.requests))
            .collect();
        let _ = writeln!(
            h,
            "<p class=\"meta\">Deciding rules: {}</p>",
            used.join(", ")
        );
    }

    h.push_str("<h3>Needed approval</h3>");
    if id.holds.is_empty() {
        h.push_str("<p class=\"muted\">Nothing was held for approval.</p>\n");
    } else {
        h.push_str(
            "<table><thead><tr><th>Held at</th><th>Request</th><th>Rule</th><th>Stated reason</th>\
             <th>Outcome</th><th>Decided by</th><th>Details</th></tr></thead><tbody>\n",
        );
        for hold in &id.holds {
            let by: Vec<String> = hold.decided_by.iter().map(|v| e(&v.describe())).collect();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td></tr>",
                e(&hold.held_at),
                request_html(
                    &hold.verb,
                    &hold.resource,
                    &hold.namespace,
                    &hold.name,
                    &hold.request_id
                ),
                e(hold.rule.as_deref().unwrap_or("-")),
                e(hold.stated_reason.as_deref().unwrap_or("-")),
                e(hold.outcome.as_str()),
                if by.is_empty() {
                    "-".to_owned()
                } else {
                    by.join("<br>")
                },
                e(&hold_detail(hold)),
            );
        }
        h.push_str("</tbody></table>\n");
    }

    h.push_str("<h3>Denied</h3>");
    if id.denials.is_empty() {
        h.push_str("<p class=\"muted\">Nothing was denied.</p>\n");
    } else {
        h.push_str(
            "<table><thead><tr><th>Reason</th><th>Rule</th><th>Count</th></tr></thead><tbody>\n",
        );
        for d in &id.denial_counts {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
                e(&d.reason),
                e(d.rule.as_deref().unwrap_or("(none: default deny)")),
                d.count
            );
        }
        h.push_str(
            "</tbody></table><table><thead><tr><th>Time</th><th>Request</th><th>Reason</th>\
             <th>Rule</th><th>Status</th><th>Message</th></tr></thead><tbody>\n",
        );
        for d in &id.denials {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td>\
                 <td>{}</td></tr>",
                e(&d.time),
                request_html(&d.verb, &d.resource, &d.namespace, &d.name, &d.request_id),
                e(&d.reason),
                e(d.rule.as_deref().unwrap_or("-")),
                d.status.map_or("-".to_owned(), |s| s.to_string()),
                e(&d.message),
            );
        }
        h.push_str("</tbody></table>\n");
    }

    if !id.grants.is_empty() {
        h.push_str(
            "<h3>Grants opened by approvals</h3><table><thead><tr><th>Grant</th><th>Issued</th>\
             <th>Covers</th><th>Rule</th><th>Approved by</th><th>Expires</th><th>Revoked</th>\
             </tr></thead><tbody>\n",
        );
        for g in &id.grants {
            let revoked = match &g.revoked_at {
                Some(at) => format!(
                    "{} by {}{}",
                    at,
                    g.revoked_by.as_deref().unwrap_or("?"),
                    g.revoke_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
                None => "-".to_owned(),
            };
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{} <code>{}</code> in {}</td>\
                 <td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                e(&g.grant_id),
                e(&g.issued_at),
                e(&g.verb),
                e(&g.resource),
                ns(&g.namespace),
                e(&g.rule),
                e(&g.approved_by.join(", ")),
                e(&g.expires_at),
                e(&revoked),
            );
        }
        h.push_str("</tbody></table>\n");
    }

    h.push_str("<h3>Policy grants never used</h3>");
    match &id.unused_grants {
        None => h.push_str("<p class=\"muted\">No policy given: not assessed.</p>\n"),
        Some(unused) if unused.is_empty() => {
            h.push_str("<p class=\"muted\">Every rule that applies to it was used.</p>\n");
        }
        Some(unused) => {
            h.push_str(
                "<table><thead><tr><th>Rule</th><th>Action</th><th>Description</th>\
                 <th>Applies via</th><th>Verbs</th><th>Resources</th><th>Namespaces</th>\
                 </tr></thead><tbody>\n",
            );
            for u in unused {
                let _ = writeln!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td>{}</td><td>{}</td></tr>",
                    e(&u.rule),
                    e(&u.action),
                    e(u.description.as_deref().unwrap_or("-")),
                    e(&u.applies_via),
                    e(&u.verbs),
                    e(&u.resources),
                    e(&u.namespaces),
                );
            }
            h.push_str("</tbody></table>\n");
        }
    }
    h.push_str("</section>\n");
}

/// `delete <code>configmaps</code> "settings" in prod`, with the request id below.
fn request_html(verb: &str, resource: &str, namespace: &str, name: &str, id: &str) -> String {
    let e = |s: &str| html_escape(s);
    let mut out = format!("{} <code>{}</code>", e(verb), e(resource));
    if !name.is_empty() {
        let _ = write!(out, " {}", e(name));
    }
    if !namespace.is_empty() {
        let _ = write!(out, " in {}", e(namespace));
    }
    let _ = write!(
        out,
        "<br><span class=\"muted\"><code>{}</code></span>",
        e(id)
    );
    out
}

/// `2024-06-01T00:00:00Z`, `2024-06-01T02:00:00+02:00`, or `2024-06-01` (midnight UTC).
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        return Ok(date.midnight().assume_utc());
    }
    Err(format!(
        "{text:?} is not an RFC 3339 time such as 2024-06-01T00:00:00Z, nor a date such as \
         2024-06-01"
    ))
}
