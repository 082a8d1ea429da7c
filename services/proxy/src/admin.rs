//! The admin port: `/healthz`, `/livez`, `/readyz` and `/metrics` over plain HTTP.
//!
//! Module map:
//! - [`Check`]: one named readiness check (an async closure), optionally [`Check::cached`] so
//!   frequent probes do not hammer what they check.
//! - [`Admin`]: the bound listener; [`Admin::serve`] runs it until stopped.
//!
//! Served on the guarded listener ([`gatehouse_listener`], limits from `admin_connections`), so
//! a slow or greedy scraper cannot hold the port. Plain HTTP on purpose: kubelet probes and Prometheus scrape over the pod network, and
//! nothing here is secret (no tokens, no request contents; readiness reasons name only the
//! failing dependency). Bind it to `127.0.0.1` when only in-pod callers need it, and keep it off
//! public networks (a NetworkPolicy) when it is on the pod IP.
//!
//! `/readyz` answers like kube-apiserver's `/readyz?verbose`: one `[+]name ok` or
//! `[-]name failed: reason` line per check, then `readyz check passed` (200) or
//! `readyz check failed` (503). The first check, `shutdown`, fails as soon as the proxy starts
//! draining, so load balancers stop sending new connections.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One named readiness check.
#[derive(Clone)]
pub struct Check {
    name: &'static str,
    run: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check").field("name", &self.name).finish()
    }
}

impl Check {
    /// `run` answers `Ok(())` when ready, or a short reason (never a secret) when not.
    pub fn new<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name,
            run: Arc::new(move || Box::pin(run())),
        }
    }

    /// The same check, its outcome reused for `ttl`. Concurrent probes wait for one run rather
    /// than each starting their own.
    pub fn cached(self, ttl: Duration) -> Self {
        type Last = Option<(Instant, Result<(), String>)>;
        let last: Arc<tokio::sync::Mutex<Last>> = Arc::default();
        let inner = self.run;
        Self {
            name: self.name,
            run: Arc::new(move || {
                let (last, inner) = (last.clone(), inner.clone());
                Box::pin(async move {
                    let mut last = last.lock().await;
                    if let Some((at, outcome)) = last.as_ref()
                        && at.elapsed() < ttl
                    {
                        return outcome.clone();
                    }
                    let outcome = inner().await;
                    *last = Some((Instant::now(), outcome.clone()));
                    outcome
                })
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

struct AdminState {
    metrics: Metrics,
    checks: Vec<Check>,
    draining: CancellationToken,
    /// Whether the last `/readyz` answer was 200, to log changes rather than every probe.
    was_ready: AtomicBool,
}

/// The admin server, bound and ready to serve.
pub struct Admin {
    listener: TcpListener,
    metrics: Metrics,
    checks: Vec<Check>,
    limits: gatehouse_listener::ConnectionLimits,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("addr", &self.listener.local_addr().ok())
            .field("checks", &self.checks)
            .finish()
    }
}

impl Admin {
    /// Binds `addr` (port 0: the system picks one).
    pub async fn bind(
        addr: SocketAddr,
        metrics: Metrics,
        checks: Vec<Check>,
    ) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (admin_listen): {e}"))?;
        Ok(Self {
            listener,
            metrics,
            checks,
            limits: gatehouse_listener::ConnectionLimits::default(),
        })
    }

    /// Timeouts and connection limits (`admin_connections`) instead of the defaults.
    pub fn with_limits(mut self, limits: gatehouse_listener::ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `stop`. From the moment `draining` is cancelled, `/readyz` answers 503 while
    /// `/healthz` and `/metrics` go on answering.
    pub async fn serve(self, draining: CancellationToken, stop: CancellationToken) {
        let options = gatehouse_listener::Options::new(
            self.limits,
            self.metrics.listeners().listener("admin"),
        );
        let state = Arc::new(AdminState {
            metrics: self.metrics,
            checks: self.checks,
            draining,
            was_ready: AtomicBool::new(true),
        });
        let app = Router::new()
            .route("/healthz", get(alive))
            .route("/livez", get(alive))
            .route("/readyz", get(ready))
            .route("/metrics", get(render_metrics))
            .with_state(state);
        gatehouse_listener::serve_router(self.listener, options, app, stop).await;
    }
}

async fn alive() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let outcomes = futures::future::join_all(state.checks.iter().map(|c| (c.run)())).await;
    let mut body = String::new();
    let mut failed = Vec::new();
    if state.draining.is_cancelled() {
        body.push_str("[-]shutdown failed: draining after a stop signal\n");
        failed.push("shutdown");
    } else {
        body.push_str("[+]shutdown ok\n");
    }
    for (check, outcome) in state.checks.iter().zip(outcomes) {
        match outcome {
            Ok(()) => body.push_str(&format!("[+]{} ok\n", check.name)),
            Err(reason) => {
                // One line per check, whatever the reason holds.
                let reason = reason.replace(['\n', '\r'], " ");
                body.push_str(&format!("[-]{} failed: {reason}\n", check.name));
                failed.push(check.name);
            }
        }
    }
    let ready = failed.is_empty();
    if state.was_ready.swap(ready, Ordering::Relaxed) != ready {
        if ready {
            tracing::info!("ready again");
        } else {
            tracing::warn!(failed = %failed.join(","), "not ready");
        }
    }
    let status = if ready {
        body.push_str("readyz check passed\n");
        StatusCode::OK
    } else {
        body.push_str("readyz check failed\n");
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn render_metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        )
            .into_response(),
    }
}
