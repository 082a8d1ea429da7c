//! Why a request gets the decision it gets: every rule in order up to the one that decides,
//! each with the condition that failed or what its guardrails saw.

use std::fmt;
use std::time::Duration;

use gatehouse_events::RecordLevel;

use super::guard::{LazyBody, LazyCommand};
use super::{Action, Decision, Policy, PolicyInput};

/// One rule's part in an explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleStep {
    /// Position in the file (0-based).
    pub index: usize,
    pub rule: String,
    pub action: Action,
    /// Line of the rule in the policy file.
    pub line: Option<usize>,
    pub matched: bool,
    /// Which condition failed, or what the guardrails saw when it matched.
    pub reason: String,
}

/// The decision, without the power to forward anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        rule: String,
        record: RecordLevel,
        mask: Option<String>,
    },
    Hold {
        rule: String,
        approver_groups: Vec<String>,
        quorum: u32,
        hold_timeout: Duration,
        grant_window: Option<Duration>,
        message: String,
    },
    Deny {
        /// `None`: no rule matched (default deny).
        rule: Option<String>,
        message: String,
    },
    /// The identity is not in the registry: denied before any rule is consulted.
    UnknownIdentity { message: String },
}

impl Verdict {
    /// The deciding rule, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Verdict::Allow { rule, .. } | Verdict::Hold { rule, .. } => Some(rule),
            Verdict::Deny { rule, .. } => rule.as_deref(),
            Verdict::UnknownIdentity { .. } => None,
        }
    }
}

/// What the proxy answers an identity the registry does not know: API discovery (when the
/// policy allows it) and nothing else; no rule is consulted.
pub fn explain_unregistered(policy: &Policy, input: &PolicyInput<'_>) -> Explanation {
    let principal = &input.identity.principal;
    let verdict = match policy.unregistered(input.request) {
        Some(permit) => Verdict::Allow {
            rule: permit.rule().to_owned(),
            record: permit.record(),
            mask: None,
        },
        None => Verdict::UnknownIdentity {
            message: format!(
                "identity {principal:?} is not in the identity registry, so nobody answers for \
                 it; ask its owner to register it"
            ),
        },
    };
    Explanation {
        steps: Vec::new(),
        verdict,
        notes: Vec::new(),
    }
}

/// Every rule consulted, in order, and the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub steps: Vec<RuleStep>,
    pub verdict: Verdict,
    /// How the command and body were read, when a guardrail looked at them.
    pub notes: Vec<String>,
}

/// Walks the rules as [`Policy::decide`] does, saying why each did or did not match.
pub fn explain(policy: &Policy, input: &PolicyInput<'_>) -> Explanation {
    let command = LazyCommand::new(input.command);
    let body = LazyBody::new(input.body, input.content_type);
    let mut steps = Vec::new();
    let mut deciding = None;
    for (index, rule) in policy.rules.iter().enumerate() {
        let outcome = rule.evaluate(input, &command, &body);
        steps.push(RuleStep {
            index,
            rule: rule.id.to_string(),
            action: rule.action,
            line: policy.rule_location(index).map(|l| l.line),
            matched: outcome.is_ok(),
            reason: rule.reason(outcome, input, &command, &body),
        });
        if outcome.is_ok() {
            deciding = Some(rule);
            break;
        }
    }
    let verdict = match deciding.map(|r| super::decision(r, input, &body)) {
        Some(Decision::Allow(p)) => Verdict::Allow {
            rule: p.rule().to_owned(),
            record: p.record(),
            mask: p.mask().map(str::to_owned),
        },
        Some(Decision::Hold(h)) => Verdict::Hold {
            rule: h.rule().to_owned(),
            approver_groups: h.approver_groups().to_vec(),
            quorum: h.quorum(),
            hold_timeout: h.hold_timeout(),
            grant_window: h.grant_window(),
            message: h.message().to_owned(),
        },
        Some(Decision::Deny(d)) => Verdict::Deny {
            rule: d.rule,
            message: d.message,
        },
        None => match policy.baseline(input.request) {
            Some(baseline) => Verdict::Allow {
                rule: baseline.rule().to_owned(),
                record: policy.default_record(),
                mask: None,
            },
            None => {
                let d = super::default_denial(input);
                Verdict::Deny {
                    rule: None,
                    message: d.message,
                }
            }
        },
    };
    let mut notes = Vec::new();
    if deciding.is_none()
        && let Some(baseline) = policy.baseline(input.request)
    {
        notes.push(format!(
            "no rule matched; allowed by default: {}",
            baseline.description()
        ));
    }
    let analysed = policy
        .rules
        .iter()
        .take(steps.len())
        .any(|r| r.has_command_guard());
    if analysed && !input.command.is_empty() {
        let a = command.analysis();
        notes.push(format!(
            "command {:?} runs: {}{}{}",
            input.command.join(" "),
            a.programs.join(", "),
            if a.shell { "; a shell" } else { "" },
            if a.opaque {
                "; opaque (cannot see everything it runs)"
            } else {
                ""
            }
        ));
    }
    if body.was_read() {
        notes.push(match body.get() {
            super::guard::BodyView::Json(_) => "body: read as JSON".to_owned(),
            super::guard::BodyView::Unreadable(why) => format!("body: not readable: {why}"),
        });
    }
    Explanation {
        steps,
        verdict,
        notes,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Allow { rule, record, mask } => {
                writeln!(f, "decision: allow by rule {rule}")?;
                writeln!(
                    f,
                    "  record: {}, mask profile: {}",
                    record.as_str(),
                    mask.as_deref().unwrap_or("none")
                )?;
            }
            Verdict::Hold {
                rule,
                approver_groups,
                quorum,
                hold_timeout,
                grant_window,
                message,
            } => {
                writeln!(f, "decision: hold for approval by rule {rule}")?;
                writeln!(
                    f,
                    "  approvers: {} (quorum {quorum}), hold timeout {}, grant window {}",
                    approver_groups.join(", "),
                    humantime::format_duration(*hold_timeout),
                    grant_window
                        .map(|g| humantime::format_duration(g).to_string())
                        .unwrap_or_else(|| "none".into())
                )?;
                writeln!(f, "  {message}")?;
            }
            Verdict::Deny { rule, message } => {
                match rule {
                    Some(rule) => writeln!(f, "decision: deny by rule {rule}")?,
                    None => writeln!(f, "decision: deny (no rule matched: default deny)")?,
                }
                writeln!(f, "  {message}")?;
            }
            Verdict::UnknownIdentity { message } => {
                writeln!(f, "decision: deny (unknown identity)")?;
                writeln!(f, "  {message}")?;
            }
        }
        for note in &self.notes {
            writeln!(f, "  {note}")?;
        }
        if !self.steps.is_empty() {
            writeln!(f, "rules, in order:")?;
        }
        for step in &self.steps {
            let line = step
                .line
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            if step.matched {
                writeln!(
                    f,
                    "  {}. {}{line} [{}] MATCH: {}",
                    step.index + 1,
                    step.rule,
                    step.action,
                    step.reason
                )?;
            } else {
                writeln!(
                    f,
                    "  {}. {}{line} [{}] no match: {}",
                    step.index + 1,
                    step.rule,
                    step.action,
                    step.reason
                )?;
            }
        }
        if self.verdict.rule().is_none() {
            writeln!(f, "  (no rule matched)")?;
        }
        Ok(())
    }
}
