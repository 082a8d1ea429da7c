//! The listeners' metrics, registered in the registry of the service that runs them (so they
//! carry its prefix: `gatehouse_proxy_connections_open`, `gatehouse_evidence_…`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `connections_open` | gauge | listener |
//! | `connections_accepted_total` | counter | listener |
//! | `connections_refused_total` | counter | listener, reason (`per_address_limit`, `total_limit`) |
//! | `connections_timed_out_total` | counter | listener, reason (`header_read`, `idle`, `tls_handshake`) |

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    PerAddressLimit,
    TotalLimit,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerAddressLimit => "per_address_limit",
            Refusal::TotalLimit => "total_limit",
        }
    }
}

/// Why an open connection was closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    HeaderRead,
    Idle,
    TlsHandshake,
}

impl Timeout {
    pub fn label(self) -> &'static str {
        match self {
            Timeout::HeaderRead => "header_read",
            Timeout::Idle => "idle",
            Timeout::TlsHandshake => "tls_handshake",
        }
    }
}

/// The metric families of every listener of a service; clones share them.
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    open: Family<ListenerLabels, Gauge>,
    accepted: Family<ListenerLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    timed_out: Family<ReasonLabels, Counter>,
}

impl ListenerMetrics {
    /// Adds the families to `registry` (once per registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Connections open now, upgraded ones (exec, attach, port-forward) included",
            self.open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted and let through the connection limits",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed as soon as they were accepted, by the limit they were over",
            self.refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections the server closed for taking too long to send their headers or finish \
             the TLS handshake, or for being idle",
            self.timed_out.clone(),
        );
    }

    /// The handles of one listener. Every series is created now, at zero, so rates and alerts
    /// work before the first refusal.
    pub fn listener(&self, name: &'static str) -> Observer {
        let by_listener = ListenerLabels { listener: name };
        let reason = |reason: &'static str| ReasonLabels {
            listener: name,
            reason,
        };
        // One statement each: a family's read guard lives to the end of its statement, and
        // creating the next series of the same family needs its write lock.
        let open = self.open.get_or_create(&by_listener).clone();
        let accepted = self.accepted.get_or_create(&by_listener).clone();
        let refused = |why: Refusal| self.refused.get_or_create(&reason(why.label())).clone();
        let refused_per_address = refused(Refusal::PerAddressLimit);
        let refused_total = refused(Refusal::TotalLimit);
        let timed_out = |why: Timeout| self.timed_out.get_or_create(&reason(why.label())).clone();
        let header_read = timed_out(Timeout::HeaderRead);
        let idle = timed_out(Timeout::Idle);
        let tls_handshake = timed_out(Timeout::TlsHandshake);
        Observer {
            name,
            open,
            accepted,
            refused_per_address,
            refused_total,
            header_read,
            idle,
            tls_handshake,
            warnings: std::sync::Arc::new(Mutex::new(WarnLimiter::default())),
        }
    }
}

/// One listener's counters (shared handles), and the limiter of its warnings.
#[derive(Clone, Debug)]
pub struct Observer {
    name: &'static str,
    pub(crate) open: Gauge,
    accepted: Counter,
    refused_per_address: Counter,
    refused_total: Counter,
    header_read: Counter,
    idle: Counter,
    tls_handshake: Counter,
    warnings: std::sync::Arc<Mutex<WarnLimiter>>,
}

impl Observer {
    /// Handles counted nowhere, for listeners whose service exports no metrics (tests).
    pub fn unregistered(name: &'static str) -> Self {
        ListenerMetrics::default().listener(name)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn open(&self) -> i64 {
        self.open.get()
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        match why {
            Refusal::PerAddressLimit => self.refused_per_address.get(),
            Refusal::TotalLimit => self.refused_total.get(),
        }
    }

    pub fn timed_out(&self, why: Timeout) -> u64 {
        match why {
            Timeout::HeaderRead => self.header_read.get(),
            Timeout::Idle => self.idle.get(),
            Timeout::TlsHandshake => self.tls_handshake.get(),
        }
    }

    pub(crate) fn count_accepted(&self) {
        self.accepted.inc();
    }

    pub(crate) fn count_refused(&self, why: Refusal) {
        match why {
            Refusal::PerAddressLimit => self.refused_per_address.inc(),
            Refusal::TotalLimit => self.refused_total.inc(),
        };
    }

    pub(crate) fn count_timeout(&self, why: Timeout) {
        match why {
            Timeout::HeaderRead => self.header_read.inc(),
            Timeout::Idle => self.idle.inc(),
            Timeout::TlsHandshake => self.tls_handshake.inc(),
        };
    }

    /// Whether a warning may be logged now, and how many were held back since the last one:
    /// a flood of hostile connections must not become a flood of log lines.
    pub(crate) fn may_warn(&self) -> Option<u64> {
        let mut limiter = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        limiter.admit(Instant::now())
    }
}

/// At most one warning per [`WARN_EVERY`] per listener; the rest are counted.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Option<Instant>,
    held_back: u64,
}

const WARN_EVERY: Duration = Duration::from_secs(1);

impl WarnLimiter {
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// The `Content-Type` of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` (all of `registry`, as OpenMetrics text) and `/healthz`, for a service whose
/// admin port shows nothing else.
pub fn admin_router(registry: std::sync::Arc<Registry>) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let mut text = String::new();
                let encoded = prometheus_client::encoding::text::encode(&mut text, &registry);
                async move {
                    match encoded {
                        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "metrics could not be encoded\n",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_from_zero_with_the_service_prefix() {
        let metrics = ListenerMetrics::default();
        let mut registry = Registry::with_prefix("gatehouse_proxy");
        metrics.register(&mut registry);
        let proxy = metrics.listener("proxy");
        proxy.count_refused(Refusal::PerAddressLimit);
        proxy.count_timeout(Timeout::HeaderRead);
        let _admin = metrics.listener("admin");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "gatehouse_proxy_connections_open{listener=\"proxy\"} 0",
            "gatehouse_proxy_connections_accepted_total{listener=\"admin\"} 0",
            "gatehouse_proxy_connections_refused_total{listener=\"proxy\",reason=\"per_address_limit\"} 1",
            "gatehouse_proxy_connections_refused_total{listener=\"proxy\",reason=\"total_limit\"} 0",
            "gatehouse_proxy_connections_timed_out_total{listener=\"proxy\",reason=\"header_read\"} 1",
            "gatehouse_proxy_connections_timed_out_total{listener=\"admin\",reason=\"tls_handshake\"} 0",
            "gatehouse_proxy_connections_timed_out_total{listener=\"admin\",reason=\"idle\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn warnings_are_limited_to_one_a_second_and_count_what_was_held_back() {
        let mut limiter = WarnLimiter::default();
        let start = Instant::now();
        assert_eq!(limiter.admit(start), Some(0));
        assert_eq!(limiter.admit(start + Duration::from_millis(10)), None);
        assert_eq!(limiter.admit(start + Duration::from_millis(900)), None);
        assert_eq!(limiter.admit(start + Duration::from_millis(1001)), Some(2));
    }
}
