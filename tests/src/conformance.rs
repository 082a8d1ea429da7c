//! Kubernetes' own e2e conformance tests, run directly against the local control plane and
//! through Gatehouse (`tests/conformance/run`, which builds `e2e.test` and calls
//! `gatehouse-conformance`): the ginkgo reports of both runs compared test by test, and the
//! evidence the Gatehouse run left checked against the API server's own audit log.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use base64::Engine;
use gatehouse_controlplane::AuditEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The identity the suite runs as through Gatehouse (`tests/conformance/identities.yaml`).
pub const PRINCIPAL: &str = "conformance-e2e";
pub const IDENTITIES_YAML: &str = include_str!("../conformance/identities.yaml");
pub const POLICY_YAML: &str = include_str!("../conformance/policy.yaml");
pub const RBAC_YAML: &str = include_str!("../conformance/rbac.yaml");

/// One test's outcome in one run, from ginkgo's JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// passed, failed, skipped, pending, timedout, panicked, interrupted, aborted.
    pub state: String,
    /// Ginkgo's failure message (first lines), when it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub seconds: f64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.state == "passed"
    }
    pub fn ran(&self) -> bool {
        !matches!(self.state.as_str(), "skipped" | "pending")
    }
}

/// Reads a `--ginkgo.json-report` file: every `It` by its full text (the container texts and
/// the leaf text, space-joined, as ginkgo's focus sees them).
pub fn read_report(json: &[u8]) -> Result<BTreeMap<String, Outcome>> {
    let reports: Vec<Value> =
        serde_json::from_slice(json).context("the ginkgo JSON report is not a JSON array")?;
    let mut outcomes = BTreeMap::new();
    for report in &reports {
        let specs = report["SpecReports"].as_array().map(Vec::as_slice);
        for spec in specs.unwrap_or_default() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut texts: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            texts.push(spec["LeafNodeText"].as_str().unwrap_or_default());
            let name = texts
                .iter()
                .filter(|t| !t.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let state = spec["State"].as_str().unwrap_or("unknown").to_owned();
            let failure = spec["Failure"]["Message"]
                .as_str()
                .filter(|m| !m.is_empty() && state != "passed")
                .map(first_lines);
            let seconds = spec["RunTime"].as_f64().unwrap_or(0.0) / 1e9;
            outcomes.insert(
                name,
                Outcome {
                    state,
                    failure,
                    seconds,
                },
            );
        }
    }
    Ok(outcomes)
}

/// A failure message short enough for a table: its first three non-empty lines.
fn first_lines(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect();
    lines.join(" ⏎ ")
}

/// A test that cannot pass through Gatehouse because of what Gatehouse is, not because of a
/// bug: matched by a fragment of its name.
#[derive(Debug, Clone, Copy)]
pub struct ByDesign {
    pub name_contains: &'static str,
    pub why: &'static str,
}

/// Tests that fail through Gatehouse by design: what they check is what Gatehouse exists to
/// change. Each still counts as failed, with its reason beside it.
pub const BY_DESIGN: &[ByDesign] = &[
    ByDesign {
        name_contains: "SubjectReview should support SubjectReview API operations",
        why: "the test impersonates a ServiceAccount (Impersonate-User) and expects to be \
              refused as it; Gatehouse drops every Impersonate-* header a caller sends (the \
              caller never chooses whom the cluster sees: PRODUCT.md, Upstream) and impersonates \
              the caller's own identity, so the request is allowed as the e2e identity",
    },
    ByDesign {
        name_contains: "Secrets should patch a secret",
        why: "the test reads a Secret back and decodes its value; Gatehouse masks Secret data \
              before it reaches any caller (invariant 4), so it reads the masked placeholder",
    },
    ByDesign {
        name_contains: "Secrets should be immutable if `immutable` field is set",
        why: "the test reads a Secret (masked by Gatehouse) and updates it; Gatehouse refuses a \
              write that carries values it masked, which would overwrite the real ones with the \
              placeholder (400, gatehouse:masked)",
    },
];

/// Both runs side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Tests that ran (not skipped) in the direct run.
    pub ran_directly: usize,
    pub passed_directly: usize,
    pub passed_through_gatehouse: usize,
    /// Of those that passed directly, how many passed through Gatehouse too.
    pub passed_both: usize,
    /// Passed directly, not through Gatehouse: each with ginkgo's reason, and why when it is
    /// by design.
    pub only_directly: Vec<Difference>,
    /// Passed through Gatehouse but not directly (a flake, or the run's order).
    pub only_through_gatehouse: Vec<Difference>,
    /// Failed in both runs (mostly tests that need real containers, which kwok does not run).
    pub failed_both: Vec<Difference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub test: String,
    pub direct: Outcome,
    pub gatehouse: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_design: Option<&'static str>,
}

pub fn compare(
    direct: &BTreeMap<String, Outcome>,
    gatehouse: &BTreeMap<String, Outcome>,
) -> Comparison {
    let by_design = |test: &str| {
        BY_DESIGN
            .iter()
            .find(|b| test.contains(b.name_contains))
            .map(|b| b.why)
    };
    let mut comparison = Comparison {
        ran_directly: direct.values().filter(|o| o.ran()).count(),
        passed_directly: direct.values().filter(|o| o.passed()).count(),
        passed_through_gatehouse: gatehouse.values().filter(|o| o.passed()).count(),
        passed_both: 0,
        only_directly: Vec::new(),
        only_through_gatehouse: Vec::new(),
        failed_both: Vec::new(),
    };
    for (test, d) in direct.iter().filter(|(_, o)| o.ran()) {
        let g = gatehouse.get(test);
        let difference = || Difference {
            test: test.clone(),
            direct: d.clone(),
            gatehouse: g.cloned(),
            by_design: by_design(test),
        };
        match (d.passed(), g.is_some_and(Outcome::passed)) {
            (true, true) => comparison.passed_both += 1,
            (true, false) => comparison.only_directly.push(difference()),
            (false, true) => comparison.only_through_gatehouse.push(difference()),
            (false, false) => comparison.failed_both.push(difference()),
        }
    }
    comparison
}

/// Every Secret value (decoded `data`, and `stringData`) in the bodies the API server audited
/// for requests `user` made: what the suite put into Secrets through Gatehouse, and what the
/// API server answered with.
pub fn secret_values(audit: &[AuditEvent], user: &str) -> BTreeSet<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut values = BTreeSet::new();
    for item in audited_objects(audit, user).filter(|i| i["kind"] == "Secret") {
        let strings = |field: &str| {
            item[field]
                .as_object()
                .into_iter()
                .flat_map(|m| m.values())
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
        };
        values.extend(
            strings("data")
                .into_iter()
                .filter_map(|v| b64.decode(v).ok()),
        );
        values.extend(
            strings("stringData")
                .into_iter()
                .map(|v| v.as_bytes().to_vec()),
        );
    }
    values
}

/// Every object in the request and response bodies the API server audited for `user`'s
/// requests, a list's items one by one.
fn audited_objects<'a>(audit: &'a [AuditEvent], user: &'a str) -> impl Iterator<Item = &'a Value> {
    audit
        .iter()
        .filter(move |e| e.user.username == user)
        .flat_map(|e| {
            [&e.request_object, &e.response_object]
                .into_iter()
                .flatten()
        })
        .flat_map(|object| match object["items"].as_array() {
            Some(items) => items.iter().collect::<Vec<_>>(),
            None => vec![object],
        })
}

/// The forms a Secret value could take in an event: as it is, base64 (padded and not), and each
/// of those as the contents of a JSON string and of a JSON string inside a JSON string (a body
/// recorded as text).
pub fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let escaped = |text: &str| {
        let quoted = serde_json::to_string(text).unwrap_or_default();
        quoted[1..quoted.len() - 1].to_owned()
    };
    let mut texts = vec![b64.encode(value)];
    texts.push(texts[0].trim_end_matches('=').to_owned());
    let mut forms = vec![value.to_vec()];
    if let Ok(text) = std::str::from_utf8(value) {
        texts.push(text.to_owned());
    }
    for text in texts {
        let once = escaped(&text);
        forms.push(escaped(&once).into_bytes());
        forms.push(once.into_bytes());
        forms.push(text.into_bytes());
    }
    forms.sort();
    forms.dedup();
    forms
}

/// The forms a short value is looked for in: only as a whole JSON string value (`:"v"`, also
/// inside recorded text), since a few bytes occur everywhere as parts of other words.
fn whole_string_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut texts = vec![b64.encode(value)];
    if let Ok(text) = std::str::from_utf8(value) {
        texts.push(text.to_owned());
    }
    let mut forms = Vec::new();
    for text in texts {
        let once = serde_json::to_string(&text).unwrap_or_default();
        let twice = serde_json::to_string(&once).unwrap_or_default();
        forms.push(format!(":{once}").into_bytes());
        forms.push(format!(":{}", &twice[1..twice.len() - 1]).into_bytes());
    }
    forms
}

/// Every string value in the bodies the API server audited for `user`'s requests on objects
/// that are not Secrets (ConfigMaps, custom resources, …): values the suite sent in the clear,
/// whose presence in the ledger says nothing about masking.
pub fn plain_values(audit: &[AuditEvent], user: &str) -> BTreeSet<Vec<u8>> {
    fn walk(value: &Value, out: &mut BTreeSet<Vec<u8>>) {
        match value {
            Value::String(s) => {
                out.insert(s.as_bytes().to_vec());
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut values = BTreeSet::new();
    for item in audited_objects(audit, user).filter(|i| i["kind"] != "Secret") {
        walk(item, &mut values);
    }
    values
}

/// One ledger event, as the Secret search needs it.
#[derive(Debug, Clone)]
pub struct LedgerEvent {
    pub kind: String,
    /// The request id, for request and response events.
    pub subject: String,
    pub bytes: Vec<u8>,
}

/// A Secret value found in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leak {
    pub value_bytes: usize,
    pub event_type: String,
    pub request_id: String,
}

/// Searches the ledger for Secret values. The events of requests on Secrets are searched for
/// every value; the rest of the ledger for the values the suite never also sent in the clear
/// (a ConfigMap holding `value-1` is no leak of a Secret holding it) and long enough (8 bytes)
/// not to be found by chance. Returns the leaks and how many values were searched for in the
/// whole ledger.
pub fn find_leaks(
    events: &[LedgerEvent],
    secret_requests: &BTreeSet<String>,
    secrets: &BTreeSet<Vec<u8>>,
    plain: &BTreeSet<Vec<u8>>,
) -> (Vec<Leak>, usize) {
    // A value is ambiguous when the suite also sent it, or an encoding of it, in the clear
    // (a label `value1` is a Secret's `dmFsdWUx` once base64-encoded).
    let plain_forms: BTreeSet<Vec<u8>> = plain.iter().flat_map(|v| encodings(v)).collect();
    let mut leaks = Vec::new();
    let mut everywhere = 0;
    for value in secrets {
        let forms = encodings(value);
        let ambiguous = forms
            .iter()
            .any(|f| plain_forms.contains(f) || plain.contains(f));
        let whole_ledger = value.len() >= 8 && !ambiguous;
        everywhere += usize::from(whole_ledger);
        let forms = if value.len() >= 8 {
            forms
        } else {
            whole_string_forms(value)
        };
        let found = events
            .iter()
            .filter(|e| whole_ledger || secret_requests.contains(&e.subject))
            .find(|e| {
                forms
                    .iter()
                    .any(|form| e.bytes.windows(form.len()).any(|w| w == form.as_slice()))
            });
        if let Some(event) = found {
            leaks.push(Leak {
                value_bytes: value.len(),
                event_type: event.kind.clone(),
                request_id: event.subject.clone(),
            });
        }
    }
    (leaks, everywhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"[{"SuiteDescription":"Kubernetes e2e suite","SpecReports":[
      {"LeafNodeType":"SynchronizedBeforeSuite","LeafNodeText":"","State":"passed","RunTime":1},
      {"ContainerHierarchyTexts":["[sig-api-machinery] Watchers"],"LeafNodeType":"It",
       "LeafNodeText":"should observe add, update, and delete watch notifications on configmaps [Conformance]",
       "State":"passed","RunTime":2500000000},
      {"ContainerHierarchyTexts":["[sig-api-machinery] Aggregator"],"LeafNodeType":"It",
       "LeafNodeText":"Should be able to support the 1.17 Sample API Server [Conformance]",
       "State":"failed","RunTime":300000000000,
       "Failure":{"Message":"\ndeployment not ready\n\nafter 5m\nmore\ndetail"}},
      {"ContainerHierarchyTexts":["[sig-api-machinery] Discovery"],"LeafNodeType":"It",
       "LeafNodeText":"should be skipped","State":"skipped","RunTime":0}
    ]}]"#;

    #[test]
    fn a_ginkgo_report_is_read_test_by_test() {
        let outcomes = read_report(REPORT.as_bytes()).unwrap();
        assert_eq!(outcomes.len(), 3);
        let watch = &outcomes["[sig-api-machinery] Watchers should observe add, update, and delete watch notifications on configmaps [Conformance]"];
        assert!(watch.passed());
        assert_eq!(watch.seconds, 2.5);
        let aggregator = &outcomes["[sig-api-machinery] Aggregator Should be able to support the 1.17 Sample API Server [Conformance]"];
        assert_eq!(
            aggregator.failure.as_deref(),
            Some("deployment not ready ⏎ after 5m ⏎ more")
        );
        assert!(!outcomes["[sig-api-machinery] Discovery should be skipped"].ran());
        assert!(read_report(b"{}").is_err());
    }

    #[test]
    fn runs_are_compared_test_by_test() {
        let outcome = |state: &str| Outcome {
            state: state.into(),
            failure: (state != "passed").then(|| format!("{state} here")),
            seconds: 1.0,
        };
        let direct = BTreeMap::from([
            ("a".to_owned(), outcome("passed")),
            ("b".to_owned(), outcome("passed")),
            ("c".to_owned(), outcome("failed")),
            ("d".to_owned(), outcome("skipped")),
            ("e".to_owned(), outcome("failed")),
        ]);
        let gatehouse = BTreeMap::from([
            ("a".to_owned(), outcome("passed")),
            ("b".to_owned(), outcome("timedout")),
            ("c".to_owned(), outcome("failed")),
            ("e".to_owned(), outcome("passed")),
        ]);
        let c = compare(&direct, &gatehouse);
        assert_eq!((c.ran_directly, c.passed_directly), (4, 2));
        assert_eq!((c.passed_through_gatehouse, c.passed_both), (2, 1));
        assert_eq!(c.only_directly.len(), 1);
        assert_eq!(c.only_directly[0].test, "b");
        assert_eq!(
            c.only_directly[0]
                .gatehouse
                .as_ref()
                .unwrap()
                .failure
                .as_deref(),
            Some("timedout here")
        );
        assert_eq!(c.only_through_gatehouse[0].test, "e");
        assert_eq!(c.failed_both[0].test, "c");
    }

    #[test]
    fn secret_values_are_found_in_every_form() {
        let audit: Vec<AuditEvent> = serde_json::from_value(serde_json::json!([
            {"auditID": "1", "stage": "ResponseComplete", "verb": "create",
             "requestURI": "/api/v1/namespaces/n/secrets", "user": {"username": "proxy"},
             "requestObject": {"kind": "Secret", "data": {"k": "dmFsdWUtMQo="},
                               "stringData": {"s": "plain-secret"}}},
            {"auditID": "2", "stage": "ResponseComplete", "verb": "list",
             "requestURI": "/api/v1/secrets", "user": {"username": "proxy"},
             "responseObject": {"kind": "SecretList",
                                "items": [{"kind": "Secret", "data": {"x": "b3RoZXI="}}]}},
            {"auditID": "3", "stage": "ResponseComplete", "verb": "create",
             "requestURI": "/api/v1/namespaces/n/secrets", "user": {"username": "admin"},
             "requestObject": {"kind": "Secret", "data": {"k": "YWRtaW4="}}},
            {"auditID": "4", "stage": "ResponseComplete", "verb": "create",
             "requestURI": "/api/v1/namespaces/n/configmaps", "user": {"username": "proxy"},
             "requestObject": {"kind": "ConfigMap", "data": {"k": "not-secret"}}}
        ]))
        .unwrap();
        let values = secret_values(&audit, "proxy");
        let expected: BTreeSet<Vec<u8>> = [&b"value-1\n"[..], b"plain-secret", b"other"]
            .iter()
            .map(|v| v.to_vec())
            .collect();
        assert_eq!(values, expected);

        let plain = plain_values(&audit, "proxy");
        assert!(plain.contains(&b"not-secret"[..]));
        assert!(!plain.contains(&b"dmFsdWUtMQo="[..]));

        let event = |kind: &str, subject: &str, bytes: &[u8]| LedgerEvent {
            kind: kind.into(),
            subject: subject.into(),
            bytes: bytes.to_vec(),
        };
        let secret_requests = BTreeSet::from(["s1".to_owned()]);
        let masked = event(
            "request.received",
            "s1",
            br#"{"data":{"k":"Z2F0ZWhvdXNlOm1hc2tlZA=="}}"#,
        );
        let (leaks, everywhere) = find_leaks(
            std::slice::from_ref(&masked),
            &secret_requests,
            &values,
            &plain,
        );
        assert!(leaks.is_empty());
        // Short values are searched for in the Secrets' own events only.
        assert_eq!(everywhere, 2);
        let in_secret = event("response.completed", "s1", br#"{"body":"value-1\n"}"#);
        let elsewhere = event("response.completed", "c1", br#"{"data":{"k":"b3RoZXI="}}"#);
        let long = event("session.data", "x", b"...plain-secret...");
        let (leaks, _) = find_leaks(
            &[masked, in_secret, elsewhere, long.clone()],
            &secret_requests,
            &values,
            &plain,
        );
        let leak = |value_bytes, event_type: &str, request_id: &str| Leak {
            value_bytes,
            event_type: event_type.into(),
            request_id: request_id.into(),
        };
        // `other` (5 bytes) is only looked for in the Secret's events, so c1 does not count.
        assert_eq!(
            leaks,
            vec![
                leak(12, "session.data", "x"),
                leak(8, "response.completed", "s1")
            ]
        );
        // A short value is found as a whole JSON string only, not inside a word.
        let short = BTreeSet::from([b"value".to_vec()]);
        let words = event(
            "request.denied",
            "s1",
            br#"{"message":"the body carries values"}"#,
        );
        assert!(
            find_leaks(&[words], &secret_requests, &short, &plain)
                .0
                .is_empty()
        );
        let whole = event(
            "response.completed",
            "s1",
            br#"{"content":{"data":"{\"k\":\"value\"}"}}"#,
        );
        assert_eq!(
            find_leaks(&[whole], &secret_requests, &short, &plain)
                .0
                .len(),
            1
        );
        // A value whose encoding the suite sent in the clear is ambiguous too.
        let label = BTreeSet::from([b"value1".to_vec()]);
        let encoded = BTreeSet::from([b"dmFsdWUx".to_vec()]);
        let blob = event("request.received", "c1", b"...dmFsdWUx...");
        assert!(
            find_leaks(&[blob], &secret_requests, &encoded, &label)
                .0
                .is_empty()
        );
        // A value the suite also sent in the clear is looked for in the Secrets' events only.
        let sent_plain = BTreeSet::from([b"plain-secret".to_vec()]);
        let (leaks, everywhere) = find_leaks(&[long], &secret_requests, &values, &sent_plain);
        assert!(leaks.is_empty());
        assert_eq!(everywhere, 1);
    }
}
