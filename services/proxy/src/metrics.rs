//! The proxy's Prometheus metrics, exposed as OpenMetrics text on the admin port's `/metrics`.
//!
//! Module map:
//! - [`Metrics`]: one registry and every metric the proxy keeps; cheap to clone (the metrics are
//!   shared handles), so the pipeline, the recorder and the admin server each hold one.
//! - [`ActiveSession`]: keeps `gatehouse_proxy_sessions_active` up while an exec / attach /
//!   port-forward session lives.
//! - [`verb_label`], [`decision_label`], [`event_label`]: bound label values to fixed sets, so a
//!   caller cannot grow the number of series by sending odd methods or paths.
//!
//! Names (all prefixed `gatehouse_proxy_`; counters end in `_total`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `requests_total` | counter | verb, decision, code |
//! | `request_duration_seconds` | histogram | verb, decision |
//! | `events_published_total` | counter | kind |
//! | `events_unacked_total` | counter | |
//! | `events_retrying` | gauge (follow-up events waiting to be sent again) | |
//! | `publish_duration_seconds` | histogram (JetStream acks) | |
//! | `token_cache_hits_total`, `token_cache_misses_total` | counter | |
//! | `policy_reloads_total` | counter | result (`success`, `failure`) |
//! | `policy_generation` | gauge | |
//! | `sessions_active` | gauge | |
//! | `masked_fields_total` | counter | |
//! | `responses_withheld_total` | counter (answers that could not be masked: 502 or cut) | |
//! | `tls_reloads_total` | counter | result (`success`, `failure`) |
//! | `grants` | gauge (grants this replica would admit requests on: verified, not expired or revoked) | |
//! | `approval_keys` | gauge (1 per approval key trusted now) | key (`name/id`, with ` until=…` for a retiring key) |
//! | `bus_refused_total` | counter (decisions and grants refused: see `bus.refused`) | message (`decision`, `grant`), problem |
//! | `build_info` | gauge (always 1) | version |
//! | `connections_open`, `connections_accepted_total`, `connections_refused_total`, `connections_timed_out_total` | see [`gatehouse_listener::metrics`] | listener (`proxy`, `admin`) |

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request durations: from half a millisecond (a refusal from memory) to a minute (a slow
/// list); watches and sessions that outlive that land in `+Inf`.
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// JetStream publish-to-ack times: sub-millisecond on a local server, seconds when a cluster
/// struggles (the publish timeout is a few seconds).
const PUBLISH_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

const DECISIONS: [&str; 3] = ["allow", "deny", "approve"];

const EVENT_KINDS: [&str; 14] = [
    "request.received",
    "request.denied",
    "request.held",
    "request.forwarded",
    "response.completed",
    "session.started",
    "session.data",
    "session.ended",
    "approval.posted",
    "approval.vote",
    "approval.decided",
    "grant.issued",
    "grant.revoked",
    "bus.refused",
];

/// `verb` if it is one of the known verbs, else `other`.
pub fn verb_label(verb: &str) -> &'static str {
    // Kubernetes verbs and the lower-cased HTTP methods of non-resource URLs: the verbs policy knows.
    bounded(&crate::policy::matcher::ALL_VERBS, verb)
}

/// `allow`, `deny` or `approve`; anything else is `other`.
pub fn decision_label(decision: &str) -> &'static str {
    bounded(&DECISIONS, decision)
}

/// An event name such as `request.received`; unknown names are `other`.
pub fn event_label(kind: &str) -> &'static str {
    bounded(&EVENT_KINDS, kind)
}

fn bounded(known: &[&'static str], value: &str) -> &'static str {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(value))
        .copied()
        .unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    decision: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl ResultLabels {
    fn of(ok: bool) -> Self {
        Self {
            result: if ok { "success" } else { "failure" },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    message: &'static str,
    problem: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Decision-to-forward times: the goal is p99 under 20 ms.
const RELEASE_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of one proxy process.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<DurationLabels>,
    events_published: Family<KindLabels, Counter>,
    events_unacked: Counter,
    publish_duration: Histogram,
    token_cache_hits: Counter,
    token_cache_misses: Counter,
    policy_reloads: Family<ResultLabels, Counter>,
    policy_generation: Gauge,
    sessions_active: Gauge,
    events_retrying: Gauge,
    masked_fields: Counter,
    responses_withheld: Counter,
    tls_reloads: Family<ResultLabels, Counter>,
    bus_refused: Family<RefusedLabels, Counter>,
    approval_keys: Family<KeyLabels, Gauge>,
    grants: Gauge,
    holds_waiting: Gauge,
    holds_decided: Family<OutcomeLabels, Counter>,
    hold_release: Histogram,
    listeners: gatehouse_listener::ListenerMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by Kubernetes verb, policy decision and HTTP status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            request_duration.clone(),
        );
        let events_published = Family::<KindLabels, Counter>::default();
        registry.register(
            "events_published",
            "Events acked by JetStream, by event name",
            events_published.clone(),
        );
        let events_unacked = Counter::default();
        registry.register(
            "events_unacked",
            "Events sent after their request was admitted whose JetStream ack never came",
            events_unacked.clone(),
        );
        let publish_duration = Histogram::new(PUBLISH_BUCKETS);
        registry.register(
            "publish_duration_seconds",
            "Time from publishing an event to its JetStream ack",
            publish_duration.clone(),
        );
        let token_cache_hits = Counter::default();
        registry.register(
            "token_cache_hits",
            "Bearer tokens found already verified in the cache",
            token_cache_hits.clone(),
        );
        let token_cache_misses = Counter::default();
        registry.register(
            "token_cache_misses",
            "Bearer tokens that had to be verified",
            token_cache_misses.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads, by result (a failed reload keeps the previous policy)",
            policy_reloads.clone(),
        );
        let policy_generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Generation of the policy in force (starts at 1, +1 per successful reload)",
            policy_generation.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Interactive sessions (exec, attach, port-forward) open now",
            sessions_active.clone(),
        );
        let events_retrying = Gauge::default();
        registry.register(
            "events_retrying",
            "Follow-up events (forwarded, completed, denied) not acked yet and being sent again",
            events_retrying.clone(),
        );
        let masked_fields = Counter::default();
        registry.register(
            "masked_fields",
            "Values masked in responses and recorded bodies",
            masked_fields.clone(),
        );
        let responses_withheld = Counter::default();
        registry.register(
            "responses_withheld",
            "API server answers withheld because they could not be masked as policy requires",
            responses_withheld.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Serving certificate reloads, by result (a failed reload keeps the previous pair)",
            tls_reloads.clone(),
        );
        let bus_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "bus_refused",
            "Approval decisions and grants refused because they did not verify",
            bus_refused.clone(),
        );
        let approval_keys = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "approval_keys",
            "Approval service keys this proxy trusts now (1 each)",
            approval_keys.clone(),
        );
        let grants = Gauge::default();
        registry.register(
            "grants",
            "Grants this replica admits requests on now (verified, not expired or revoked)",
            grants.clone(),
        );
        let holds_waiting = Gauge::default();
        registry.register(
            "holds_waiting",
            "Requests held on this replica waiting for approval now",
            holds_waiting.clone(),
        );
        let holds_decided = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "holds_decided",
            "Held requests by how they ended: approved, denied, expired, withdrawn",
            holds_decided.clone(),
        );
        let hold_release = Histogram::new(RELEASE_BUCKETS);
        registry.register(
            "hold_release_seconds",
            "From an approval.decided reaching this replica to the held request going upstream",
            hold_release.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The proxy's version", build_info);
        let listeners = gatehouse_listener::ListenerMetrics::default();
        listeners.register(&mut registry);
        Self {
            registry: Arc::new(registry),
            requests,
            request_duration,
            events_published,
            events_unacked,
            publish_duration,
            token_cache_hits,
            token_cache_misses,
            policy_reloads,
            policy_generation,
            sessions_active,
            events_retrying,
            masked_fields,
            responses_withheld,
            tls_reloads,
            bus_refused,
            approval_keys,
            grants,
            holds_waiting,
            holds_decided,
            hold_release,
            listeners,
        }
    }

    /// The connection metrics of the proxy's listeners (the HTTPS port and the admin port).
    pub fn listeners(&self) -> &gatehouse_listener::ListenerMetrics {
        &self.listeners
    }

    /// Follow-up events being retried: +1 when one first fails, -1 when it is acked or given up.
    /// Returns the count before the change.
    pub fn events_retrying(&self, delta: i64) -> i64 {
        self.events_retrying.inc_by(delta)
    }

    /// Held requests waiting: +1 when held, -1 when decided or withdrawn.
    pub fn holds_waiting(&self, delta: i64) {
        self.holds_waiting.inc_by(delta);
    }

    /// A decision or grant was refused (`message`: `decision` or `grant`; `problem` as in
    /// `bus.refused`).
    pub fn bus_refused(&self, message: &'static str, problem: &'static str) {
        self.bus_refused
            .get_or_create(&RefusedLabels { message, problem })
            .inc();
    }

    /// The approval keys now in force, as [`gatehouse_proof::attest::Keyring::describe`]
    /// names them; keys no longer trusted disappear.
    pub fn approval_keys(&self, keys: &[String]) {
        self.approval_keys.clear();
        for key in keys {
            self.approval_keys
                .get_or_create(&KeyLabels { key: key.clone() })
                .set(1);
        }
    }

    /// Grants known to this replica now.
    pub fn grants(&self, n: usize) {
        self.grants.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A held request ended: `approved`, `denied`, `expired` or `withdrawn`.
    pub fn hold_decided(&self, outcome: &'static str) {
        self.holds_decided
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// From a decision's arrival to the released request going upstream.
    pub fn hold_release(&self, elapsed: std::time::Duration) {
        self.hold_release.observe(elapsed.as_secs_f64());
    }

    /// A request was answered. `decision` is `allow`, `deny` or `approve`; `status` the HTTP
    /// status sent to the caller; `seconds` from arrival to the end of the response.
    pub fn request_finished(&self, verb: &str, decision: &str, status: u16, seconds: f64) {
        let (verb, decision) = (verb_label(verb), decision_label(decision));
        self.requests
            .get_or_create(&RequestLabels {
                verb,
                decision,
                code: status,
            })
            .inc();
        self.request_duration
            .get_or_create(&DurationLabels { verb, decision })
            .observe(seconds);
    }

    /// An event of `kind` (e.g. `request.received`) was acked by JetStream.
    pub fn events_published(&self, kind: &str) {
        self.events_published
            .get_or_create(&KindLabels {
                kind: event_label(kind),
            })
            .inc();
    }

    /// `n` events were sent but their acks never came.
    pub fn events_unacked(&self, n: u64) {
        self.events_unacked.inc_by(n);
    }

    /// One publish-to-ack round trip took `seconds`.
    pub fn publish_duration(&self, seconds: f64) {
        self.publish_duration.observe(seconds);
    }

    /// A bearer token was (`hit`) or was not found in the verified-token cache.
    pub fn token_cache(&self, hit: bool) {
        if hit {
            self.token_cache_hits.inc();
        } else {
            self.token_cache_misses.inc();
        }
    }

    /// Brings the token-cache and unacked-event counters up to totals counted elsewhere
    /// (counters only go up, so only the difference is added).
    pub fn sync_totals(&self, cache_hits: u64, cache_misses: u64, unacked: u64) {
        for (counter, total) in [
            (&self.token_cache_hits, cache_hits),
            (&self.token_cache_misses, cache_misses),
            (&self.events_unacked, unacked),
        ] {
            let behind = total.saturating_sub(counter.get());
            if behind > 0 {
                counter.inc_by(behind);
            }
        }
    }

    /// A policy reload was attempted.
    pub fn policy_reloads(&self, ok: bool) {
        self.policy_reloads
            .get_or_create(&ResultLabels::of(ok))
            .inc();
    }

    /// The generation of the policy now in force.
    pub fn policy_generation(&self, generation: u64) {
        self.policy_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// An interactive session opened; the gauge goes down again when the guard is dropped.
    pub fn session_opened(&self) -> ActiveSession {
        self.sessions_active.inc();
        ActiveSession {
            gauge: self.sessions_active.clone(),
        }
    }

    /// `n` values were masked.
    pub fn masked_fields(&self, n: u64) {
        self.masked_fields.inc_by(n);
    }

    /// An answer that needed masking could not be masked, so it was withheld.
    pub fn response_withheld(&self) {
        self.responses_withheld.inc();
    }

    /// The serving certificate was reloaded (`ok`) or a changed pair was rejected.
    pub fn tls_reloads(&self, ok: bool) {
        self.tls_reloads.get_or_create(&ResultLabels::of(ok)).inc();
    }

    /// The OpenMetrics text exposition of every metric (serve with [`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// An open interactive session, counted in `gatehouse_proxy_sessions_active` until dropped.
#[derive(Debug)]
#[must_use = "the session stops being counted when this is dropped"]
pub struct ActiveSession {
    gauge: Gauge,
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series ` (name and labels exactly).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split(' ').next()?.parse().ok())
    }

    #[test]
    fn requests_are_counted_by_verb_decision_and_code() {
        let m = Metrics::new();
        m.request_finished("get", "allow", 200, 0.003);
        m.request_finished("get", "allow", 200, 0.2);
        m.request_finished("delete", "deny", 403, 0.0001);
        let text = m.render().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"gatehouse_proxy_requests_total{verb="get",decision="allow",code="200"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"gatehouse_proxy_requests_total{verb="delete",decision="deny",code="403"}"#
            ),
            Some(1.0)
        );
        // Buckets are cumulative: 3 ms is under 5 ms, 200 ms is not.
        assert_eq!(
            sample(
                &text,
                r#"gatehouse_proxy_request_duration_seconds_bucket{le="0.005",verb="get",decision="allow"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"gatehouse_proxy_request_duration_seconds_bucket{le="60.0",verb="get",decision="allow"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"gatehouse_proxy_request_duration_seconds_count{verb="get",decision="allow"}"#
            ),
            Some(2.0)
        );
        assert!(text.contains("# TYPE gatehouse_proxy_request_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn unknown_verbs_and_decisions_do_not_grow_the_series() {
        let m = Metrics::new();
        for method in ["PROPFIND", "BREW", "x\"y", "get\n"] {
            m.request_finished(method, "maybe", 400, 0.001);
        }
        let text = m.render().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"gatehouse_proxy_requests_total{verb="other",decision="other",code="400"}"#
            ),
            Some(4.0)
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("gatehouse_proxy_requests_total{"))
                .count(),
            1
        );
        assert_eq!(verb_label("WATCH"), "watch");
        assert_eq!(decision_label("approve"), "approve");
    }

    #[test]
    fn events_cache_policy_tls_and_masking_are_exposed() {
        let m = Metrics::new();
        m.events_published("request.received");
        m.events_published("request.received");
        m.events_published("something.else");
        m.events_unacked(3);
        m.publish_duration(0.002);
        m.token_cache(true);
        m.token_cache(true);
        m.token_cache(false);
        m.policy_reloads(true);
        m.policy_reloads(false);
        m.policy_generation(7);
        m.masked_fields(5);
        m.response_withheld();
        m.tls_reloads(true);
        let text = m.render().unwrap();
        let expect = [
            (
                r#"gatehouse_proxy_events_published_total{kind="request.received"}"#,
                2.0,
            ),
            (
                r#"gatehouse_proxy_events_published_total{kind="other"}"#,
                1.0,
            ),
            ("gatehouse_proxy_events_unacked_total", 3.0),
            ("gatehouse_proxy_publish_duration_seconds_count", 1.0),
            (
                r#"gatehouse_proxy_publish_duration_seconds_bucket{le="0.0025"}"#,
                1.0,
            ),
            (
                r#"gatehouse_proxy_publish_duration_seconds_bucket{le="0.001"}"#,
                0.0,
            ),
            ("gatehouse_proxy_token_cache_hits_total", 2.0),
            ("gatehouse_proxy_token_cache_misses_total", 1.0),
            (
                r#"gatehouse_proxy_policy_reloads_total{result="success"}"#,
                1.0,
            ),
            (
                r#"gatehouse_proxy_policy_reloads_total{result="failure"}"#,
                1.0,
            ),
            ("gatehouse_proxy_policy_generation", 7.0),
            ("gatehouse_proxy_masked_fields_total", 5.0),
            ("gatehouse_proxy_responses_withheld_total", 1.0),
            (
                r#"gatehouse_proxy_tls_reloads_total{result="success"}"#,
                1.0,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(text.contains("gatehouse_proxy_build_info{version="));
    }

    #[test]
    fn sessions_are_active_until_their_guard_drops() {
        let m = Metrics::new();
        let first = m.session_opened();
        let second = m.session_opened();
        assert_eq!(
            sample(&m.render().unwrap(), "gatehouse_proxy_sessions_active"),
            Some(2.0)
        );
        drop(first);
        assert_eq!(
            sample(&m.render().unwrap(), "gatehouse_proxy_sessions_active"),
            Some(1.0)
        );
        drop(second);
        assert_eq!(
            sample(&m.render().unwrap(), "gatehouse_proxy_sessions_active"),
            Some(0.0)
        );
    }

    #[test]
    fn clones_share_the_same_metrics() {
        let m = Metrics::new();
        m.clone().token_cache(false);
        assert_eq!(
            sample(
                &m.render().unwrap(),
                "gatehouse_proxy_token_cache_misses_total"
            ),
            Some(1.0)
        );
    }
}
