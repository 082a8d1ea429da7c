//! Counting the votes on one held request.
//!
//! - A hold is approved when `quorum` distinct approvers have approved.
//! - Any deny denies it at once.
//! - Past its expiry it is expired, whatever the votes.
//! - The requester cannot vote on its own request; only members of the hold's approver groups can
//!   vote at all.
//! - Four eyes: the requesting identity's owner (and, where the rule says so, approvers of its
//!   team) cannot approve it; they may still deny it.
//! - The same vote twice (a double click, a redelivered callback) changes nothing; a different
//!   vote from the same approver replaces the first, and a vote can be withdrawn, until the hold
//!   is decided. After that the outcome never changes.

use std::time::SystemTime;

use gatehouse_events::FourEyes;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    Approve,
    Deny,
}

/// What a hold needs to be decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The principal whose request is held.
    pub requester: String,
    /// Groups whose members may vote.
    pub approver_groups: Vec<String>,
    /// Distinct approvals needed (at least 1).
    pub quorum: u32,
    pub expires_at: SystemTime,
    /// The requesting identity's registered owner and team.
    pub owner: Option<String>,
    pub team: Option<String>,
    /// The rule's four-eyes setting.
    pub four_eyes: FourEyes,
    /// The rule that held it, to name in refusals.
    pub rule: String,
}

/// Someone voting, as the approver registry resolved them (never by display name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub identity: String,
    pub groups: Vec<String>,
    /// The team the approver registry puts them in, if any.
    pub team: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending { approvals: u32, quorum: u32 },
    Approved { approvers: Vec<String> },
    Denied { by: String },
    Expired,
}

impl Outcome {
    pub fn is_decided(&self) -> bool {
        !matches!(self, Outcome::Pending { .. })
    }
}

/// Why a vote was not counted; each is told to the voter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you cannot vote on your own request")]
    SelfApproval,
    #[error(
        "you own {principal}, whose request this is: someone else must approve it (four-eyes \
         rule of {rule}; you may still deny it)"
    )]
    OwnerApproval { principal: String, rule: String },
    #[error(
        "you are in team {team}, which owns {principal}: someone outside the team must approve \
         it (four-eyes rule of {rule}; you may still deny it)"
    )]
    TeamApproval {
        team: String,
        principal: String,
        rule: String,
    },
    #[error("you are not in any of the approver groups for this request ({0})")]
    NotAnApprover(String),
    #[error("this request was already decided")]
    AlreadyDecided,
    #[error("this request's approval window has closed")]
    Expired,
}

/// The votes on one hold.
#[derive(Clone, Debug)]
pub struct Tally {
    hold: Hold,
    /// One entry per voter: their current vote, in the order first cast.
    votes: Vec<(String, Vote)>,
    decided: Option<Outcome>,
}

impl Tally {
    pub fn new(hold: Hold) -> Self {
        Self {
            hold,
            votes: Vec::new(),
            decided: None,
        }
    }

    /// A tally with votes already counted earlier (read back from the shared store); they are
    /// not checked again, so an approver later removed from the registry still counts.
    pub fn restore(hold: Hold, votes: Vec<(String, Vote)>) -> Self {
        Self {
            hold,
            votes,
            decided: None,
        }
    }

    /// The current votes, voter by voter.
    pub fn votes(&self) -> &[(String, Vote)] {
        &self.votes
    }

    /// Counts a vote, or says why not. Returns the outcome after it.
    pub fn cast(&mut self, voter: &Voter, vote: Vote, now: SystemTime) -> Result<Outcome, Refusal> {
        self.check(voter, now)?;
        if vote == Vote::Approve {
            self.check_four_eyes(voter)?;
        }
        match self
            .votes
            .iter_mut()
            .find(|(who, _)| *who == voter.identity)
        {
            Some((_, current)) => *current = vote,
            None => self.votes.push((voter.identity.clone(), vote)),
        }
        Ok(self.settle(now))
    }

    /// Takes a voter's vote back (a removed reaction), before the hold is decided.
    pub fn withdraw(&mut self, voter: &Voter, now: SystemTime) -> Result<Outcome, Refusal> {
        self.check(voter, now)?;
        self.votes.retain(|(who, _)| *who != voter.identity);
        Ok(self.settle(now))
    }

    /// The outcome at `now` (a pending hold past its expiry is expired).
    pub fn outcome(&mut self, now: SystemTime) -> Outcome {
        self.settle(now)
    }

    fn check(&mut self, voter: &Voter, now: SystemTime) -> Result<(), Refusal> {
        match self.settle(now) {
            Outcome::Expired => return Err(Refusal::Expired),
            outcome if outcome.is_decided() => return Err(Refusal::AlreadyDecided),
            _ => {}
        }
        if voter.identity == self.hold.requester {
            return Err(Refusal::SelfApproval);
        }
        if !voter
            .groups
            .iter()
            .any(|g| self.hold.approver_groups.contains(g))
        {
            return Err(Refusal::NotAnApprover(self.hold.approver_groups.join(", ")));
        }
        Ok(())
    }

    fn check_four_eyes(&self, voter: &Voter) -> Result<(), Refusal> {
        let hold = &self.hold;
        if hold.four_eyes == FourEyes::Off {
            return Ok(());
        }
        if hold.owner.as_deref() == Some(voter.identity.as_str()) {
            return Err(Refusal::OwnerApproval {
                principal: hold.requester.clone(),
                rule: hold.rule.clone(),
            });
        }
        if hold.four_eyes == FourEyes::OwnerAndTeam
            && let (Some(team), Some(own)) = (&hold.team, &voter.team)
            && team == own
        {
            return Err(Refusal::TeamApproval {
                team: team.clone(),
                principal: hold.requester.clone(),
                rule: hold.rule.clone(),
            });
        }
        Ok(())
    }

    /// Decides if the votes or the clock say so; a decision is final.
    fn settle(&mut self, now: SystemTime) -> Outcome {
        if let Some(decided) = &self.decided {
            return decided.clone();
        }
        let outcome = if let Some((by, _)) = self.votes.iter().find(|(_, v)| *v == Vote::Deny) {
            Outcome::Denied { by: by.clone() }
        } else {
            let approvers: Vec<String> = self.votes.iter().map(|(who, _)| who.clone()).collect();
            let quorum = self.hold.quorum.max(1);
            if approvers.len() as u32 >= quorum {
                Outcome::Approved { approvers }
            } else if now >= self.hold.expires_at {
                Outcome::Expired
            } else {
                Outcome::Pending {
                    approvals: approvers.len() as u32,
                    quorum,
                }
            }
        };
        if outcome.is_decided() {
            self.decided = Some(outcome.clone());
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn hold(quorum: u32) -> Tally {
        Tally::new(Hold {
            requester: "ci-deployer".into(),
            approver_groups: vec!["sre".into(), "security".into()],
            quorum,
            expires_at: t(600),
            owner: Some("olivia".into()),
            team: Some("platform".into()),
            four_eyes: FourEyes::Owner,
            rule: "prod-deletes".into(),
        })
    }

    fn voter(id: &str, groups: &[&str]) -> Voter {
        Voter {
            identity: id.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            team: None,
        }
    }

    #[test]
    fn the_owner_may_deny_but_not_approve_and_the_team_only_when_the_rule_says() {
        let mut tally = hold(1);
        let owner = voter("olivia", &["sre"]);
        let refused = tally.cast(&owner, Vote::Approve, t(1)).unwrap_err();
        assert_eq!(
            refused,
            Refusal::OwnerApproval {
                principal: "ci-deployer".into(),
                rule: "prod-deletes".into()
            }
        );
        assert!(
            refused.to_string().contains("you own ci-deployer"),
            "{refused}"
        );
        assert!(tally.votes().is_empty());
        // A teammate is fine under `owner`…
        let teammate = Voter {
            team: Some("platform".into()),
            ..voter("pat", &["sre"])
        };
        assert!(hold(1).cast(&teammate, Vote::Approve, t(1)).is_ok());
        // …not under `owner-and-team`, where someone from another team is.
        let mut strict = hold(1);
        strict.hold.four_eyes = FourEyes::OwnerAndTeam;
        assert!(matches!(
            strict.cast(&teammate, Vote::Approve, t(1)),
            Err(Refusal::TeamApproval { team, .. }) if team == "platform"
        ));
        let outsider = Voter {
            team: Some("security".into()),
            ..voter("sam", &["security"])
        };
        assert!(matches!(
            strict.cast(&outsider, Vote::Approve, t(1)),
            Ok(Outcome::Approved { .. })
        ));
        // `off`: only the requester itself is barred.
        let mut off = hold(1);
        off.hold.four_eyes = FourEyes::Off;
        assert!(off.cast(&owner, Vote::Approve, t(1)).is_ok());
        // The owner may always deny.
        assert_eq!(
            tally.cast(&owner, Vote::Deny, t(2)),
            Ok(Outcome::Denied {
                by: "olivia".into()
            })
        );
    }

    #[test]
    fn quorum_of_distinct_approvers() {
        let mut tally = hold(2);
        let alice = voter("alice", &["sre"]);
        assert_eq!(
            tally.cast(&alice, Vote::Approve, t(1)),
            Ok(Outcome::Pending {
                approvals: 1,
                quorum: 2
            })
        );
        // A double click counts once.
        assert_eq!(
            tally.cast(&alice, Vote::Approve, t(2)),
            Ok(Outcome::Pending {
                approvals: 1,
                quorum: 2
            })
        );
        assert_eq!(
            tally.cast(&voter("bob", &["security"]), Vote::Approve, t(3)),
            Ok(Outcome::Approved {
                approvers: vec!["alice".into(), "bob".into()]
            })
        );
    }

    #[test]
    fn any_deny_denies_and_decisions_are_final() {
        let mut tally = hold(2);
        tally
            .cast(&voter("alice", &["sre"]), Vote::Approve, t(1))
            .unwrap();
        assert_eq!(
            tally.cast(&voter("bob", &["sre"]), Vote::Deny, t(2)),
            Ok(Outcome::Denied { by: "bob".into() })
        );
        assert_eq!(
            tally.cast(&voter("carol", &["sre"]), Vote::Approve, t(3)),
            Err(Refusal::AlreadyDecided)
        );
        assert_eq!(
            tally.outcome(t(10_000)),
            Outcome::Denied { by: "bob".into() }
        );
    }

    #[test]
    fn requesters_and_outsiders_cannot_vote() {
        let mut tally = hold(1);
        assert_eq!(
            tally.cast(&voter("ci-deployer", &["sre"]), Vote::Approve, t(1)),
            Err(Refusal::SelfApproval)
        );
        let refusal = tally
            .cast(&voter("mallory", &["developers"]), Vote::Approve, t(1))
            .unwrap_err();
        assert_eq!(refusal, Refusal::NotAnApprover("sre, security".into()));
        assert!(
            refusal
                .to_string()
                .contains("not in any of the approver groups")
        );
        assert!(tally.votes().is_empty());
    }

    #[test]
    fn expiry_ends_a_pending_hold() {
        let mut tally = hold(2);
        tally
            .cast(&voter("alice", &["sre"]), Vote::Approve, t(1))
            .unwrap();
        assert_eq!(tally.outcome(t(600)), Outcome::Expired);
        assert_eq!(
            tally.cast(&voter("bob", &["sre"]), Vote::Approve, t(601)),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn a_withdrawn_vote_no_longer_counts() {
        let mut tally = hold(2);
        let alice = voter("alice", &["sre"]);
        tally.cast(&alice, Vote::Approve, t(1)).unwrap();
        assert_eq!(
            tally.withdraw(&alice, t(2)),
            Ok(Outcome::Pending {
                approvals: 0,
                quorum: 2
            })
        );
        tally
            .cast(&voter("bob", &["sre"]), Vote::Approve, t(3))
            .unwrap();
        assert_eq!(
            tally.outcome(t(4)),
            Outcome::Pending {
                approvals: 1,
                quorum: 2
            }
        );
    }

    #[test]
    fn a_changed_mind_replaces_the_vote() {
        let mut tally = hold(2);
        let alice = voter("alice", &["sre"]);
        tally.cast(&alice, Vote::Approve, t(1)).unwrap();
        assert_eq!(
            tally.cast(&alice, Vote::Deny, t(2)),
            Ok(Outcome::Denied { by: "alice".into() })
        );
    }
}
