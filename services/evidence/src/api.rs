//! The auditor API of `gatehouse evidence`: search the ledger, fetch an event with its
//! inclusion proof, the latest signed checkpoint and consistency proofs, replay a session,
//! download an evidence bundle or an access review.
//!
//! ```yaml
//! api:
//!   listen: 0.0.0.0:8445
//!   tls: {cert_file: /tls/tls.crt, key_file: /tls/tls.key}   # omit only behind a TLS ingress
//!   issuers: [{issuer: https://idp.example.com, audiences: [gatehouse-evidence]}]
//!   auditor_groups: [auditors]
//!   policy: /etc/gatehouse/policy.yaml    # optional: the report's unused grants
//!   connections: {header_read_timeout: 10s, idle_timeout: 120s}   # optional; defaults shown
//!   console:                              # optional: the auditor console at /console/
//!     signin: {issuer: https://idp.example.com, client_id: gatehouse-console,
//!              redirect_url: https://evidence.example.com/signin/callback}
//! ```
//!
//! With `console:`, auditors sign in in a browser (OIDC authorization code flow with PKCE,
//! `gatehouse-signin`); the session cookie then authenticates the console's calls to this API
//! (from this site only), and every console page view is an `audit.accessed` event too.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/events?principal=&owner=&namespace=&verb=&resource=&request_id=&session_id=&decision=&type=&from=&to=&after=&limit=` | `{"events": [{index, stream_sequence, received_at, event}], "next_after"}` |
//! | GET | `/v1/events/{index}?size=N` | the entry, its inclusion proof in the tree of `size` (default: the latest checkpoint's) and that checkpoint |
//! | GET | `/v1/checkpoint` | the latest signed checkpoint (`text/plain`) |
//! | GET | `/v1/checkpoints?after=&limit=` | past signed checkpoints, oldest first: `{"checkpoints": [{size, note}], "next_after"}` (sizes above `after`; `next_after` is `null` on the last page) |
//! | GET | `/v1/consistency?old=M&new=N` | both roots and the consistency proof (`new` defaults to the latest checkpoint's size) |
//! | GET | `/v1/sessions/{id}/replay` | the session as asciicast v2 |
//! | GET | `/v1/bundle?from=&to=&principal=&namespace=&request_id=&since=` | an evidence bundle (`.tar.gz`, `schemas/bundle.md`), signed with the checkpoint key; `since=N`: with a consistency proof from the checkpoint of N entries |
//! | GET | `/v1/reports/access-review?from=&to=&format=json\|csv\|html` | the access review |
//!
//! Every call carries a bearer token from a configured issuer whose groups include one of
//! `auditor_groups` (no or bad token: 401; no auditor group: 403). Errors are
//! `{"error": "…"}`. Times are RFC 3339 or a date (UTC); `received_at` is nanoseconds since the
//! epoch, as in the ledger's entry encoding, so an auditor can recompute entry hashes.
//!
//! Every call, refused ones included, is published as an `audit.accessed` event and acked by
//! JetStream before anything is answered; when that fails the call answers 503 and returns
//! nothing (fail closed, as the proxy does). The event names the auditor, the action, the
//! parameters (never the token) and the status; each response carries its id in
//! `Gatehouse-Access-Id`.
//!
//! The evidence service holds the ledger's writable handle, so each call opens the ledger
//! read-only (RocksDB replays the write-ahead log on opening, so it sees every synced append)
//! on a blocking thread.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufWriter, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use gatehouse_authn::config::IssuerConfig;
use gatehouse_authn::{Authenticator, AuthnError, AuthnOptions};
use gatehouse_bus::Bus;
use gatehouse_events::envelope::{format_rfc3339, now_rfc3339};
use gatehouse_events::{AuditAccessed, AuditAction, Envelope};
use gatehouse_https::config::ServerTlsConfig;
use gatehouse_listener::{ConnectionLimits, ListenerMetrics, Observer, Options};
use gatehouse_policy::policy::Policy;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::Ledger;
use crate::entry::{Entry, LedgerFormat};
use crate::export::BundleSpec;
use crate::index::Field;
use crate::replay::ReplayOptions;
use crate::report::{self, ReviewBuilder};
use crate::store::{LedgerError, Query as LedgerQuery};

/// The response header naming the call's `audit.accessed` event.
pub const ACCESS_ID_HEADER: &str = "gatehouse-access-id";

/// The answer when the call's audit event cannot be recorded.
pub const AUDIT_UNAVAILABLE: &str = "the audit trail is unavailable; nothing was returned";

/// `auditor` of a call without a valid token.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Events a search returns unless `limit` says otherwise, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Longer than any principal, name or id the ledger indexes.
const MAX_TEXT_PARAM: usize = 1024;

/// Ledger reads at once: bundles and reports walk the whole ledger, so a burst of them must
/// not take every blocking thread or open handle.
const LEDGER_JOBS: usize = 4;

/// Most query parameters a call may carry; recorded values are cut to this many bytes.
const MAX_PARAMETERS: usize = 32;
const MAX_RECORDED: usize = 512;

/// Under the data directory: bundles being written, removed once opened for sending.
const SCRATCH_DIR: &str = "auditor-api-tmp";
const PARTIAL_SUFFIX: &str = ".tar.gz.partial";

/// Where and for whom the auditor API serves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditorApiConfig {
    pub listen: SocketAddr,
    /// HTTPS for `listen`. Without it the API speaks plain HTTP, which is for loopback or
    /// behind an ingress that terminates TLS.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Token issuers for auditors.
    pub issuers: Vec<IssuerConfig>,
    /// A caller must be in one of these groups (as the issuer's claim mapping names them).
    pub auditor_groups: Vec<String>,
    /// The policy file, read at each report to list unused grants.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Timeouts and connection limits of `listen` (see [`ConnectionLimits`]).
    #[serde(default)]
    pub connections: ConnectionLimits,
    /// The auditor console at `/console/`: auditors sign in with the OIDC authorization code
    /// flow (PKCE) against this client, and the session cookie then authenticates the API
    /// calls the console makes. Without it only bearer tokens are accepted.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
}

/// The auditor console's sign-in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    pub signin: gatehouse_signin::SignInConfig,
}

impl AuditorApiConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.issuers.is_empty() {
            return Err("api.issuers: at least one token issuer is required".into());
        }
        if self.auditor_groups.is_empty() {
            return Err("api.auditor_groups: at least one group is required".into());
        }
        for group in &self.auditor_groups {
            if group.trim().is_empty() {
                return Err("api.auditor_groups: a group name must not be empty".into());
            }
            // Tokens never carry `system:` groups (see ClaimMapping), so it would admit no one.
            if group.starts_with("system:") {
                return Err(format!(
                    "api.auditor_groups: {group:?} can never match: groups named system:… are \
                     never taken from a token"
                ));
            }
        }
        self.connections.validate("api.connections")?;
        if let Some(tls) = &self.tls
            && tls.client_ca_file.is_some()
        {
            return Err(
                "api.tls.client_ca_file: the auditor API does not take client certificates; \
                 auditors bring OIDC bearer tokens"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A started (bound, not yet serving) auditor API.
pub struct AuditorApi {
    router: Router,
    inner: Arc<Inner>,
    listener: TcpListener,
    tls: Option<gatehouse_https::server::RouterTls>,
    connections: ConnectionLimits,
    observer: Observer,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for AuditorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditorApi")
            .field("listen", &self.listener.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl AuditorApi {
    /// Checks the configuration (and the policy file), loads the issuers' keys and binds the
    /// listener. `bus` must reach the Gatehouse stream; `replica` names this process in the
    /// events' `source` (`gatehouse/evidence/<replica>`).
    pub async fn start(
        config: &AuditorApiConfig,
        data_dir: PathBuf,
        bus: Bus,
        replica: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        Self::start_on(config, None, data_dir, bus, replica, shutdown).await
    }

    /// [`Self::start`] on a listener bound already (instead of `listen`): a caller that must
    /// know the port first, to name it in the console's sign-in callback, binds it.
    pub async fn start_on(
        config: &AuditorApiConfig,
        listener: Option<TcpListener>,
        data_dir: PathBuf,
        bus: Bus,
        replica: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        config.validate()?;
        if let Some(path) = &config.policy {
            load_policy(path)?;
        }
        let authenticator = Authenticator::new(
            &config.issuers,
            AuthnOptions {
                shutdown: Some(shutdown.clone()),
                ..AuthnOptions::default()
            },
        )
        .await
        .map_err(|e| format!("api.issuers: {e}"))?;
        let signin = match &config.console {
            Some(console) => Some(Arc::new(
                gatehouse_signin::SignIn::new(console.signin.clone())
                    .await
                    .map_err(|e| format!("api.console.signin: {e}"))?,
            )),
            None => None,
        };
        let scratch = data_dir.join(SCRATCH_DIR);
        prepare_scratch(&scratch)?;
        let tls = match &config.tls {
            Some(files) => Some(gatehouse_https::server::RouterTls::load(
                &files.cert_file,
                &files.key_file,
            )?),
            None => {
                if !config.listen.ip().is_loopback() {
                    tracing::warn!(listen = %config.listen, "auditor API serving plain HTTP: put a TLS-terminating ingress in front");
                }
                None
            }
        };
        let listener = match listener {
            Some(listener) => listener,
            None => gatehouse_https::server::bind(config.listen).await?,
        };
        let inner = Arc::new(Inner {
            data_dir,
            scratch,
            bus,
            source: gatehouse_events::envelope::source("evidence", replica),
            authenticator,
            auditor_groups: config.auditor_groups.clone(),
            policy: config.policy.clone(),
            ledger_jobs: Arc::new(Semaphore::new(LEDGER_JOBS)),
            checkpoint_key: std::sync::OnceLock::new(),
            signin,
        });
        Ok(Self {
            router: routes(inner.clone()),
            inner,
            listener,
            tls,
            connections: config.connections.clone(),
            observer: Observer::unregistered("auditor_api"),
            shutdown,
        })
    }

    /// Counts the listener's connections in `metrics` (the evidence service's, so they are on
    /// its `/metrics`) as listener `auditor_api`.
    pub fn with_metrics(mut self, metrics: &ListenerMetrics) -> Self {
        self.observer = metrics.listener("auditor_api");
        self
    }

    /// The checkpoint key file (`checkpoints.key_file`): bundles are signed with it (read at
    /// each bundle, so a rotated key is used once it has signed a checkpoint). Without it,
    /// `/v1/bundle` answers 503.
    pub fn with_checkpoint_key(self, key_file: PathBuf) -> Self {
        let _ = self.inner.checkpoint_key.set(key_file);
        self
    }

    /// The evidence service's checkpoint key, if its configuration has `checkpoints:`.
    pub fn with_evidence_config(self, evidence: &crate::EvidenceConfig) -> Self {
        match &evidence.checkpoints {
            Some(c) => self.with_checkpoint_key(c.key_file.clone()),
            None => self,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The routes, for serving some other way (tests).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) {
        let shutdown = self.shutdown.clone();
        tracing::info!(listen = %self.local_addr(), tls = self.tls.is_some(), "auditor API serving");
        gatehouse_https::server::serve_router(
            self.listener,
            self.tls,
            Options::new(self.connections, self.observer),
            self.router,
            shutdown,
        )
        .await;
    }
}

fn load_policy(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("api.policy: cannot read {}: {e}", path.display()))?;
    Policy::from_yaml(&text).map_err(|e| {
        format!(
            "api.policy {}: not a policy the proxy would load: {e}",
            path.display()
        )
    })
}

/// Creates the scratch directory and removes bundles a crash left half-written.
fn prepare_scratch(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(PARTIAL_SUFFIX)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

struct Inner {
    data_dir: PathBuf,
    scratch: PathBuf,
    bus: Bus,
    source: String,
    authenticator: Authenticator,
    auditor_groups: Vec<String>,
    policy: Option<PathBuf>,
    ledger_jobs: Arc<Semaphore>,
    /// The checkpoint key file, read at each bundle to sign its manifest.
    checkpoint_key: std::sync::OnceLock<PathBuf>,
    /// The console's sign-in; its session cookie authenticates API calls too.
    signin: Option<Arc<gatehouse_signin::SignIn>>,
}

fn routes(inner: Arc<Inner>) -> Router {
    let console = match &inner.signin {
        Some(signin) => Router::new()
            .route("/console", get(|| async { Redirect::to("/console/") }))
            .route("/console/", get(console_page))
            .route("/console/{*page}", get(console_page))
            .with_state(inner.clone())
            .merge(signin.routes())
            .merge(gatehouse_web::assets_router()),
        None => Router::new(),
    };
    Router::new()
        .route("/v1/events", get(search))
        .route("/v1/events/{index}", get(event))
        .route("/v1/checkpoint", get(checkpoint))
        .route("/v1/checkpoints", get(checkpoints))
        .route("/v1/consistency", get(consistency))
        .route("/v1/sessions/{id}/replay", get(replay))
        .route("/v1/bundle", get(bundle))
        .route("/v1/reports/access-review", get(access_review))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such auditor API path").into_response()
        })
        .with_state(inner)
        .merge(console)
}

/// A console page: signed-out visitors are sent to sign in; a signed-in visitor who is not
/// an auditor gets a page that says so. Every view, refused ones included, is an acked
/// `audit.accessed` event before anything is answered, as API calls are.
async fn console_page(State(inner): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(signin) = inner.signin.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let here = uri
        .path_and_query()
        .map_or("/console/", |p| p.as_str())
        .to_owned();
    let Some(session) = signin.session(&headers) else {
        return Redirect::to(&signin.signin_url(&here)).into_response();
    };
    let access_id = ulid::Ulid::new().to_string();
    let auditor = session.subject().to_owned();
    let allowed = session
        .groups()
        .iter()
        .any(|g| inner.auditor_groups.contains(g));
    let status = if allowed { 200 } else { 403 };
    let mut parameters = BTreeMap::new();
    parameters.insert("page".to_owned(), clip(uri.path()));
    let event = Envelope::new(
        &inner.source,
        &access_id,
        AuditAccessed {
            access_id: access_id.clone(),
            auditor: auditor.clone(),
            action: AuditAction::Console,
            parameters,
            status,
            events: None,
        },
    );
    if let Err(e) = inner.bus.publish(&event).await {
        tracing::error!(alarm = "audit_unrecorded", %access_id, %auditor, error = %e, "console page refused: its audit.accessed event was not acked");
        return gatehouse_web::refusal_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The audit trail is unavailable",
            "Every page view is recorded before it is shown, and the record could not be made \
             just now. Nothing was shown; try again shortly.",
        );
    }
    let mut response = if allowed {
        gatehouse_web::console_response(&gatehouse_web::Bootstrap {
            user: Some(gatehouse_web::SignedInUser {
                principal: auditor.clone(),
                name: session.name().map(str::to_owned),
            }),
            csrf_token: Some(session.csrf_token().to_owned()),
            api_base: Some(String::new()),
            page_base: Some("/console/".into()),
            signin_path: Some("/signin".into()),
            checkpoint_vkey: inner.checkpoint_vkey(),
            ..Default::default()
        })
    } else {
        gatehouse_web::refusal_page(
            StatusCode::FORBIDDEN,
            "Not an auditor",
            &format!(
                "You are signed in as {auditor}, who is not in an auditor group ({}), so the \
                 evidence is not shown. Your visit has been recorded.",
                inner.auditor_groups.join(", ")
            ),
        )
    };
    if let Ok(value) = HeaderValue::from_str(&access_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(ACCESS_ID_HEADER), value);
    }
    response
}

// ----- the audited call -----

/// A refusal or failure: a status and one sentence, answered as `{"error": …}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// Logs the cause; the caller learns only that it failed.
    fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "auditor API: {what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}; see the evidence service's log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What a call's work produced: the response and, where it applies, how many events it
/// returned or bundled.
struct Answer {
    response: Response,
    events: Option<u64>,
}

/// The call as the work sees it.
struct Call {
    access_id: String,
    /// Checked query parameters and the path's ids.
    params: BTreeMap<String, String>,
}

impl Call {
    fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// A parameter that must not be empty when given. Control characters are refused: the
    /// indexes end a value at NUL, so one would silently widen a search.
    fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            Some("") => Err(ApiError::bad_request(format!("{name} must not be empty"))),
            Some(v) if v.chars().any(char::is_control) => Err(ApiError::bad_request(format!(
                "{name} must not contain control characters"
            ))),
            Some(v) if v.len() > MAX_TEXT_PARAM => Err(ApiError::bad_request(format!(
                "{name} is longer than {MAX_TEXT_PARAM} bytes"
            ))),
            other => Ok(other.map(str::to_owned)),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{name} must be a whole number, not {v:?}"))
                })
            })
            .transpose()
    }

    fn time(&self, name: &str) -> Result<Option<OffsetDateTime>, ApiError> {
        self.get(name)
            .map(|v| {
                report::parse_time(v).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
            })
            .transpose()
    }

    /// `from` and `to`, checked to make a non-empty period.
    fn period(&self) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), ApiError> {
        let (from, to) = (self.time("from")?, self.time("to")?);
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(ApiError::bad_request(
                "from must be before to: the period is empty",
            ));
        }
        Ok((from, to))
    }
}

impl Inner {
    /// Authenticates, checks the parameters, does the work, records the call, and only then
    /// answers.
    async fn audited<F, Fut>(
        self: Arc<Self>,
        action: AuditAction,
        headers: HeaderMap,
        uri: Uri,
        path: Vec<(&'static str, String)>,
        allowed: &'static [&'static str],
        work: F,
    ) -> Response
    where
        F: FnOnce(Arc<Self>, Call) -> Fut,
        Fut: Future<Output = Result<Answer, ApiError>>,
    {
        let access_id = ulid::Ulid::new().to_string();
        let given = Query::<Vec<(String, String)>>::try_from_uri(&uri).map(|q| q.0);
        let parameters = recorded(given.as_deref().unwrap_or_default(), &path, &uri);
        let (auditor, outcome) = match self.authorize(&headers).await {
            Err((auditor, refusal)) => (auditor, Err(refusal)),
            Ok(principal) => {
                let outcome = match given
                    .map_err(|e| ApiError::bad_request(e.body_text()))
                    .and_then(|given| checked(given, allowed))
                {
                    Ok(mut params) => {
                        for (name, value) in path {
                            params.insert(name.to_owned(), value);
                        }
                        work(
                            Arc::clone(&self),
                            Call {
                                access_id: access_id.clone(),
                                params,
                            },
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                (principal, outcome)
            }
        };
        let (response, events) = match outcome {
            Ok(answer) => (answer.response, answer.events),
            Err(e) => (e.into_response(), None),
        };
        let status = response.status().as_u16();
        let event = Envelope::new(
            &self.source,
            &access_id,
            AuditAccessed {
                access_id: access_id.clone(),
                auditor: auditor.clone(),
                action,
                parameters,
                status,
                events,
            },
        );
        let mut response = match self.bus.publish(&event).await {
            Ok(_) => {
                tracing::info!(%access_id, %auditor, ?action, status, events, "auditor call");
                response
            }
            Err(e) => {
                tracing::error!(
                    alarm = "audit_unrecorded",
                    %access_id, %auditor, ?action, status, error = %e,
                    "auditor call refused: its audit.accessed event was not acked"
                );
                // Dropping the response drops its data (and closes a bundle's unlinked file).
                drop(response);
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, AUDIT_UNAVAILABLE).into_response()
            }
        };
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&access_id) {
            headers.insert(HeaderName::from_static(ACCESS_ID_HEADER), value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }

    /// The caller's principal, or who they are (as far as known) and why not. A bearer token
    /// when the call carries one; otherwise the console's session cookie, from this site only.
    async fn authorize(&self, headers: &HeaderMap) -> Result<String, (String, ApiError)> {
        if !headers.contains_key(header::AUTHORIZATION)
            && let Some(session) = self.signin.as_ref().and_then(|s| s.session(headers))
        {
            let principal = session.subject().to_owned();
            if let Some(site) = headers.get("sec-fetch-site")
                && !matches!(site.to_str(), Ok("same-origin" | "none"))
            {
                return Err((
                    principal,
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "the console's session is good for this site's pages only",
                    ),
                ));
            }
            if !session
                .groups()
                .iter()
                .any(|g| self.auditor_groups.contains(g))
            {
                let message = format!(
                    "{principal} is not in an auditor group, so it cannot read the evidence"
                );
                return Err((principal, ApiError::new(StatusCode::FORBIDDEN, message)));
            }
            return Ok(principal);
        }
        let verified = self
            .authenticator
            .authenticate(headers, None)
            .await
            .map_err(|e| {
                let status = match e {
                    // The issuer is down: nothing the caller did wrong.
                    AuthnError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNAUTHORIZED,
                };
                (
                    UNAUTHENTICATED.to_owned(),
                    ApiError::new(status, e.to_string()),
                )
            })?;
        if !verified
            .groups
            .iter()
            .any(|g| self.auditor_groups.contains(g))
        {
            let message = format!(
                "{} is not in an auditor group, so it cannot read the evidence",
                verified.principal
            );
            return Err((
                verified.principal,
                ApiError::new(StatusCode::FORBIDDEN, message),
            ));
        }
        Ok(verified.principal)
    }

    /// The checkpoint verifier key, for the console to check signatures with.
    fn checkpoint_vkey(&self) -> Option<String> {
        let key_file = self.checkpoint_key.get()?;
        let signer = crate::load_signer(key_file).ok()?;
        Some(signer.verifier().to_vkey())
    }

    /// Runs ledger work on a blocking thread, at most [`LEDGER_JOBS`] at once.
    async fn ledger_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Path) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = Arc::clone(&self.ledger_jobs)
            .acquire_owned()
            .await
            .map_err(|e| ApiError::internal("the ledger could not be read", e))?;
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            // Held by the thread, so a caller that hangs up does not free a slot still in use.
            let _permit = permit;
            job(&data_dir)
        })
        .await
        .map_err(|e| ApiError::internal("the ledger could not be read", e))?
    }
}

/// The parameters as the audit event records them: query parameters as given (cut to a
/// bounded size, anything token-like redacted) and the path's ids.
fn recorded(
    given: &[(String, String)],
    path: &[(&'static str, String)],
    uri: &Uri,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    if given.is_empty()
        && let Some(query) = uri.query().filter(|q| !q.is_empty())
        && Query::<Vec<(String, String)>>::try_from_uri(uri).is_err()
    {
        out.insert("query".into(), redact_or_clip("query", query));
    }
    for (name, value) in given.iter().take(MAX_PARAMETERS) {
        let value = redact_or_clip(name, value);
        out.entry(clip(name))
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    if given.len() > MAX_PARAMETERS {
        out.insert(
            "…".into(),
            format!("{} more parameters", given.len() - MAX_PARAMETERS),
        );
    }
    for (name, value) in path {
        out.insert((*name).to_owned(), redact_or_clip(name, value));
    }
    out
}

fn redact_or_clip(name: &str, value: &str) -> String {
    let name = name.to_ascii_lowercase();
    let secret_name = [
        "token",
        "authorization",
        "bearer",
        "jwt",
        "password",
        "secret",
    ]
    .iter()
    .any(|s| name.contains(s));
    if secret_name || looks_like_jwt(value) {
        return "[redacted]".into();
    }
    clip(value)
}

/// A JWT pasted somewhere it does not belong (`eyJ` is base64url of `{"`).
fn looks_like_jwt(value: &str) -> bool {
    value
        .split(|c: char| c.is_whitespace() || c == '=' || c == '&')
        .any(|word| {
            let word = word.trim_start_matches("Bearer");
            word.starts_with("eyJ") && word.matches('.').count() >= 2
        })
}

fn clip(value: &str) -> String {
    if value.len() <= MAX_RECORDED {
        return value.to_owned();
    }
    let mut end = MAX_RECORDED;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// Refuses parameters the call does not take and parameters given twice: a mistyped filter
/// must not silently widen a search.
fn checked(
    given: Vec<(String, String)>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    if given.len() > MAX_PARAMETERS {
        return Err(ApiError::bad_request(format!(
            "too many parameters ({}); at most {MAX_PARAMETERS}",
            given.len()
        )));
    }
    let mut params = BTreeMap::new();
    for (name, value) in given {
        if !allowed.contains(&name.as_str()) {
            let takes = if allowed.is_empty() {
                "no parameters".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(ApiError::bad_request(format!(
                "unknown parameter {:?}; this call takes {takes}",
                clip(&name)
            )));
        }
        if params.contains_key(&name) {
            return Err(ApiError::bad_request(format!(
                "parameter {name} is given more than once"
            )));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// The path segment after `prefix` and before the next `/`, as sent (still percent-encoded:
/// ids are checked against plain characters, so nothing needs decoding).
fn segment(uri: &Uri, prefix: &str) -> String {
    uri.path()
        .strip_prefix(prefix)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

fn bytes_answer(content_type: &'static str, body: impl Into<Body>, events: Option<u64>) -> Answer {
    let mut response = Response::new(body.into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Answer { response, events }
}

fn json_answer<T: Serialize>(value: &T, events: Option<u64>) -> Result<Answer, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::internal("the answer could not be encoded", e))?;
    Ok(bytes_answer("application/json", body, events))
}

fn attachment(answer: &mut Answer, filename: &str) {
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        answer
            .response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
}

// ----- the ledger -----

/// Opens the ledger read-only. A read-only open can race the writer deleting a log it just
/// flushed, so a failed open is tried again before it counts.
fn open_ledger(data_dir: &Path) -> Result<Ledger, ApiError> {
    let mut last = None;
    for _ in 0..3 {
        match Ledger::open_read_only(data_dir) {
            Ok(ledger) => return Ok(ledger),
            Err(LedgerError::Missing(_)) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "there is no ledger yet: the evidence service has not written one",
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => ledger_error(e),
        None => ApiError::internal("the ledger could not be opened", "no attempt"),
    })
}

fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::NotIndexed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        LedgerError::BeyondTree { .. } => ApiError::bad_request(e.to_string()),
        e => ApiError::internal("the ledger could not be read", e),
    }
}

fn nanos(name: &str, t: OffsetDateTime) -> Result<i64, ApiError> {
    i64::try_from(t.unix_timestamp_nanos())
        .map_err(|_| ApiError::bad_request(format!("{name} is outside the ledger's time range")))
}

/// An event embedded as the JSON it is; bytes that are not JSON (never written by Gatehouse)
/// as a string.
fn raw_event(bytes: &[u8]) -> Box<RawValue> {
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(raw) = RawValue::from_string(text.to_owned())
    {
        return raw;
    }
    serde_json::value::to_raw_value(&String::from_utf8_lossy(bytes)).unwrap_or_default()
}

// ----- search -----

/// Search parameters and the index each uses; the first given drives the scan, so the most
/// selective come first.
const SEARCH_FIELDS: [(&str, Field); 9] = [
    ("request_id", Field::Request),
    ("session_id", Field::Session),
    ("principal", Field::Principal),
    ("owner", Field::Owner),
    ("namespace", Field::Namespace),
    ("resource", Field::Resource),
    ("verb", Field::Verb),
    ("decision", Field::Decision),
    ("type", Field::Kind),
];

const SEARCH_PARAMS: &[&str] = &[
    "request_id",
    "session_id",
    "principal",
    "owner",
    "namespace",
    "resource",
    "verb",
    "decision",
    "type",
    "from",
    "to",
    "after",
    "limit",
];

#[derive(Serialize)]
struct Found {
    index: u64,
    stream_sequence: u64,
    received_at: i64,
    event: Box<RawValue>,
}

#[derive(Serialize)]
struct SearchAnswer {
    events: Vec<Found>,
    /// Pass as `after` for the next page; `null` when this page was the last.
    next_after: Option<u64>,
}

async fn search(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    api.audited(
        AuditAction::Search,
        headers,
        uri,
        Vec::new(),
        SEARCH_PARAMS,
        Inner::search,
    )
    .await
}

impl Inner {
    async fn search(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let mut fields = Vec::new();
        for (name, field) in SEARCH_FIELDS {
            if let Some(value) = call.text(name)? {
                let value = if field == Field::Kind {
                    // Accept the CloudEvents type as well as the short name.
                    value
                        .strip_prefix("dev.gatehouse.")
                        .and_then(|v| v.strip_suffix(".v1"))
                        .map(str::to_owned)
                        .unwrap_or(value)
                } else {
                    value
                };
                fields.push((field, value));
            }
        }
        let (from, to) = call.period()?;
        let limit = call.number::<usize>("limit")?.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "limit must be from 1 to {MAX_LIMIT}"
            )));
        }
        let query = LedgerQuery {
            fields,
            from: from.map(|t| nanos("from", t)).transpose()?,
            to: to.map(|t| nanos("to", t)).transpose()?,
            after: call.number("after")?,
            limit,
        };
        let entries = self
            .ledger_job(move |dir| open_ledger(dir)?.search(&query).map_err(ledger_error))
            .await?;
        let next_after = if entries.len() >= limit {
            entries.last().map(|e| e.index)
        } else {
            None
        };
        let events: Vec<Found> = entries
            .into_iter()
            .map(|e| Found {
                index: e.index,
                stream_sequence: e.stream_sequence,
                received_at: e.received_at,
                event: raw_event(&e.event),
            })
            .collect();
        let count = events.len() as u64;
        json_answer(&SearchAnswer { events, next_after }, Some(count))
    }
}

// ----- one event with its proof -----

#[derive(Default, Serialize)]
struct EventAnswer {
    index: u64,
    stream_sequence: u64,
    received_at: i64,
    previous_hash: String,
    entry_hash: String,
    /// The entry's Merkle leaf hash (what the inclusion proof starts from).
    leaf_hash: String,
    /// What a leaf is in this ledger (`schemas/ledger.md`): v2 leaves hash the entry hash.
    ledger_format: Option<LedgerFormat>,
    /// The event; `null` once retention pruned it (the hashes above stay).
    event: Option<Box<RawValue>>,
    /// The event's bytes exactly as stored (standard base64), for recomputing the entry hash.
    event_base64: Option<String>,
    /// When retention pruned the event, nanoseconds since the epoch; `null` if it was not.
    pruned_at: Option<i64>,
    /// The tree the proof is against, and its root (hex).
    size: u64,
    root: String,
    /// RFC 9162 inclusion proof of leaf `index` in the tree of `size`, sibling first.
    inclusion: Vec<String>,
    /// The signed checkpoint of that tree; `null` when none was signed at that size.
    checkpoint: Option<String>,
}

async fn event(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    let index = segment(&uri, "/v1/events/");
    api.audited(
        AuditAction::Event,
        headers,
        uri,
        vec![("index", index)],
        &["size"],
        Inner::event,
    )
    .await
}

impl Inner {
    async fn event(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let index: u64 = call
            .number("index")?
            .ok_or_else(|| ApiError::bad_request("the event index must be a whole number"))?;
        let size: Option<u64> = call.number("size")?;
        let answer = self
            .ledger_job(move |dir| {
                let ledger = open_ledger(dir)?;
                let mut checkpoints = ledger.checkpoints().map_err(ledger_error)?;
                let (size, checkpoint) = match size {
                    Some(size) => {
                        if size > ledger.tree_size() {
                            return Err(ApiError::bad_request(format!(
                                "size {size} is beyond the tree, which holds {} entries",
                                ledger.tree_size()
                            )));
                        }
                        let note = checkpoints
                            .into_iter()
                            .find(|(s, _)| *s == size)
                            .map(|(_, note)| note);
                        (size, note)
                    }
                    // No checkpoint yet: the whole tree, unsigned (`checkpoint` is null).
                    None => match checkpoints.pop() {
                        Some((size, note)) => (size, Some(note)),
                        None => (ledger.tree_size(), None),
                    },
                };
                if index >= size {
                    let why = if index < ledger.tree_size() && checkpoint.is_some() {
                        format!(
                            "entry {index} is newer than the latest checkpoint, which covers \
                             entries 0 to {}; ask again after the next checkpoint, or pass size",
                            size.saturating_sub(1)
                        )
                    } else {
                        format!("entry {index} is not in the tree of {size} entries")
                    };
                    return Err(ApiError::not_found(why));
                }
                let stored = ledger
                    .entries(index)
                    .map_err(ledger_error)?
                    .next()
                    .transpose()
                    .map_err(ledger_error)?
                    .filter(|s| s.key == Some(index))
                    .ok_or_else(|| ApiError::not_found(format!("no entry {index}")))?;
                let mut answer = match stored.tombstone() {
                    Some(t) => EventAnswer {
                        index,
                        stream_sequence: t.stream_sequence,
                        received_at: t.received_at,
                        previous_hash: hex::encode(t.previous_hash),
                        entry_hash: hex::encode(stored.stored_hash),
                        leaf_hash: hex::encode(t.leaf_hash),
                        ledger_format: Some(ledger.format()),
                        event: None,
                        event_base64: None,
                        pruned_at: Some(t.pruned_at),
                        ..EventAnswer::default()
                    },
                    None => {
                        let entry = Entry::decode(&stored.encoding).map_err(|source| {
                            ledger_error(LedgerError::Decode { index, source })
                        })?;
                        event_answer(&entry, &stored.encoding, ledger.format())
                    }
                };
                answer.size = size;
                answer.root = hex::encode(ledger.root(size).map_err(ledger_error)?);
                answer.inclusion = ledger
                    .inclusion_proof(index, size)
                    .map_err(ledger_error)?
                    .iter()
                    .map(hex::encode)
                    .collect();
                answer.checkpoint = checkpoint;
                Ok(answer)
            })
            .await?;
        json_answer(&answer, Some(1))
    }
}

/// An entry as stored; the tree fields are filled in by the caller.
fn event_answer(entry: &Entry, encoding: &[u8], format: LedgerFormat) -> EventAnswer {
    use base64::Engine as _;
    let (hash, leaf) = format.hashes(encoding);
    EventAnswer {
        ledger_format: Some(format),
        index: entry.index,
        stream_sequence: entry.stream_sequence,
        received_at: entry.received_at,
        previous_hash: hex::encode(entry.previous_hash),
        entry_hash: hex::encode(hash),
        leaf_hash: hex::encode(leaf),
        event: Some(raw_event(&entry.event)),
        event_base64: Some(base64::engine::general_purpose::STANDARD.encode(&entry.event)),
        ..EventAnswer::default()
    }
}

// ----- checkpoints and consistency -----

async fn checkpoint(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    api.audited(
        AuditAction::Checkpoint,
        headers,
        uri,
        Vec::new(),
        &[],
        Inner::checkpoint,
    )
    .await
}

async fn checkpoints(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    api.audited(
        AuditAction::Checkpoint,
        headers,
        uri,
        Vec::new(),
        &["after", "limit"],
        Inner::checkpoints,
    )
    .await
}

/// One page of the signed checkpoints, for auditors to keep (and pass to `gatehouse verify
/// --trusted`).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointPage {
    pub checkpoints: Vec<SignedCheckpoint>,
    /// Ask again with `after` = this for the next page; `null` on the last.
    pub next_after: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub size: u64,
    /// The signed note, exactly as stored.
    pub note: String,
    /// The witnessed checkpoint of the same size (the SHA-256 tree witnesses check) with the
    /// witnesses' cosignatures, when witnesses are configured and have cosigned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witnessed: Option<String>,
}

/// `/v1/checkpoints`: the signed checkpoints of sizes above `after`, oldest first, at most
/// `limit`, each with its witnessed checkpoint and cosignatures when there are some.
pub fn checkpoint_history(
    ledger: &Ledger,
    after: Option<u64>,
    limit: usize,
) -> Result<CheckpointPage, LedgerError> {
    let mut page = checkpoint_page(ledger.checkpoints()?, after, limit);
    for checkpoint in &mut page.checkpoints {
        checkpoint.witnessed = crate::witness::witnessed_checkpoint(ledger, checkpoint.size)?;
    }
    Ok(page)
}

/// The checkpoints of sizes above `after`, oldest first, at most `limit` of them.
pub fn checkpoint_page(
    all: Vec<(u64, String)>,
    after: Option<u64>,
    limit: usize,
) -> CheckpointPage {
    let mut checkpoints: Vec<SignedCheckpoint> = all
        .into_iter()
        .filter(|(size, _)| after.is_none_or(|a| *size > a))
        .map(|(size, note)| SignedCheckpoint {
            size,
            note,
            witnessed: None,
        })
        .take(limit + 1)
        .collect();
    let next_after = (checkpoints.len() > limit).then(|| {
        checkpoints.truncate(limit);
        checkpoints.last().map_or(0, |c| c.size)
    });
    CheckpointPage {
        checkpoints,
        next_after,
    }
}

#[derive(Serialize)]
struct ConsistencyAnswer {
    old: u64,
    new: u64,
    old_root: String,
    new_root: String,
    /// RFC 9162 consistency proof from `old` to `new`.
    proof: Vec<String>,
    /// The signed checkpoint at `new`; `null` when none was signed at that size.
    checkpoint: Option<String>,
}

async fn consistency(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    api.audited(
        AuditAction::Consistency,
        headers,
        uri,
        Vec::new(),
        &["old", "new"],
        Inner::consistency,
    )
    .await
}

impl Inner {
    async fn checkpoint(self: Arc<Self>, _call: Call) -> Result<Answer, ApiError> {
        let latest = self
            .ledger_job(|dir| open_ledger(dir)?.latest_checkpoint().map_err(ledger_error))
            .await?;
        let (_, note) =
            latest.ok_or_else(|| ApiError::not_found("the ledger has no signed checkpoint yet"))?;
        Ok(bytes_answer("text/plain; charset=utf-8", note, None))
    }

    async fn checkpoints(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let after: Option<u64> = call.number("after")?;
        let limit: usize = call.number("limit")?.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "limit must be 1 to {MAX_LIMIT}"
            )));
        }
        let page = self
            .ledger_job(move |dir| {
                checkpoint_history(&open_ledger(dir)?, after, limit).map_err(ledger_error)
            })
            .await?;
        json_answer(&page, None)
    }

    async fn consistency(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let old: u64 = call.number("old")?.ok_or_else(|| {
            ApiError::bad_request("old (the size of the tree you hold) is required")
        })?;
        let new: Option<u64> = call.number("new")?;
        let answer = self
            .ledger_job(move |dir| {
                let ledger = open_ledger(dir)?;
                let mut checkpoints = ledger.checkpoints().map_err(ledger_error)?;
                let new = match new {
                    Some(n) => n,
                    None => checkpoints
                        .last()
                        .map_or(ledger.tree_size(), |(size, _)| *size),
                };
                if new > ledger.tree_size() {
                    return Err(ApiError::bad_request(format!(
                        "new {new} is beyond the tree, which holds {} entries",
                        ledger.tree_size()
                    )));
                }
                if old > new {
                    return Err(ApiError::bad_request(format!(
                        "old {old} is larger than new {new}"
                    )));
                }
                let proof = ledger.consistency_proof(old, new).map_err(ledger_error)?;
                let old_root = ledger.root(old).map_err(ledger_error)?;
                let new_root = ledger.root(new).map_err(ledger_error)?;
                checkpoints.retain(|(size, _)| *size == new);
                Ok(ConsistencyAnswer {
                    old,
                    new,
                    old_root: hex::encode(old_root),
                    new_root: hex::encode(new_root),
                    proof: proof.iter().map(hex::encode).collect(),
                    checkpoint: checkpoints.pop().map(|(_, note)| note),
                })
            })
            .await?;
        json_answer(&answer, None)
    }
}

// ----- session replay -----

async fn replay(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    let id = segment(&uri, "/v1/sessions/");
    api.audited(
        AuditAction::Replay,
        headers,
        uri,
        vec![("session_id", id)],
        &[],
        Inner::replay,
    )
    .await
}

/// Session ids are ULIDs; anything else here is refused before it reaches the ledger.
fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Inner {
    async fn replay(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let id = call.get("session_id").unwrap_or_default().to_owned();
        if !valid_session_id(&id) {
            return Err(ApiError::bad_request(
                "a session id is 1 to 128 letters, digits, '-' or '_'",
            ));
        }
        let file_id = id.clone();
        let (cast, events, missing) = self
            .ledger_job(move |dir| {
                let ledger = open_ledger(dir)?;
                let started = ledger
                    .search(&LedgerQuery {
                        fields: vec![
                            (Field::Session, id.clone()),
                            (Field::Kind, "session.started".into()),
                        ],
                        limit: 1,
                        ..LedgerQuery::default()
                    })
                    .map_err(ledger_error)?;
                if started.is_empty() {
                    return Err(ApiError::not_found(format!(
                        "no session {id} in the ledger"
                    )));
                }
                drop(ledger);
                let recording = crate::replay::load(dir, &id)
                    .map_err(|e| ApiError::internal("the session could not be read", e))?;
                let mut cast = Vec::new();
                crate::replay::asciicast(&recording, ReplayOptions { input: false }, &mut cast)
                    .map_err(|e| ApiError::internal("the session could not be rendered", e))?;
                let events =
                    1 + recording.chunks.len() as u64 + u64::from(recording.ended.is_some());
                Ok((cast, events, recording.missing.len()))
            })
            .await?;
        let mut answer = bytes_answer("application/x-asciicast", cast, Some(events));
        attachment(&mut answer, &format!("{file_id}.cast"));
        // A replay must never silently skip part of a session.
        if missing > 0 {
            answer.response.headers_mut().insert(
                HeaderName::from_static("gatehouse-missing-chunks"),
                HeaderValue::from(missing),
            );
        }
        Ok(answer)
    }
}

// ----- bundles -----

async fn bundle(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    api.audited(
        AuditAction::Bundle,
        headers,
        uri,
        Vec::new(),
        &[
            "from",
            "to",
            "principal",
            "namespace",
            "request_id",
            "since",
        ],
        Inner::bundle,
    )
    .await
}

impl Inner {
    async fn bundle(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let (from, to) = call.period()?;
        let spec = BundleSpec {
            from: from.map(format_rfc3339),
            to: to.map(format_rfc3339),
            principal: call.text("principal")?,
            namespace: call.text("namespace")?,
            request_id: call.text("request_id")?,
        };
        let partial = self
            .scratch
            .join(format!("bundle-{}{PARTIAL_SUFFIX}", call.access_id));
        let since: Option<u64> = call.number("since")?;
        let Some(key_file) = self.checkpoint_key.get().cloned() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "bundles are signed with the checkpoint key, and this evidence service has none \
                 configured (checkpoints.key_file)",
            ));
        };
        let (file, events) = self
            .ledger_job(move |dir| {
                // Said plainly here; write_bundle would fail with the same news as an error.
                if open_ledger(dir)?
                    .latest_checkpoint()
                    .map_err(ledger_error)?
                    .is_none()
                {
                    return Err(ApiError::not_found(
                        "the ledger has no signed checkpoint yet, so nothing can be proven",
                    ));
                }
                let signer = crate::load_signer(&key_file)
                    .map_err(|e| ApiError::internal("the checkpoint key could not be read", e))?;
                // `since`: the size of a checkpoint the auditor holds; the bundle proves its own
                // checkpoint extends the one stored at that size (the auditor compares roots).
                let since = match since {
                    None => None,
                    Some(size) => Some(
                        open_ledger(dir)?
                            .checkpoints()
                            .map_err(ledger_error)?
                            .into_iter()
                            .find(|(s, _)| *s == size)
                            .map(|(_, note)| note)
                            .ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "since: no checkpoint of {size} entries was signed (see \
                                     /v1/checkpoints)"
                                ))
                            })?,
                    ),
                };
                let written = write_partial(dir, &spec, &signer, since.as_deref(), &partial);
                // Unlinked once open (or on failure): the open handle keeps the data for the
                // body, and nothing is left behind whatever happens to the call.
                let _ = std::fs::remove_file(&partial);
                written
            })
            .await?;
        let len = file
            .metadata()
            .map_err(|e| ApiError::internal("the bundle could not be read back", e))?
            .len();
        let mut answer = Answer {
            response: Response::new(file_body(tokio::fs::File::from_std(file))),
            events: Some(events),
        };
        let headers = answer.response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/gzip"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        attachment(
            &mut answer,
            &format!("gatehouse-evidence-{}.tar.gz", call.access_id),
        );
        Ok(answer)
    }
}

/// Writes the bundle to `partial` and opens it for reading; the caller removes the name.
fn write_partial(
    data_dir: &Path,
    spec: &BundleSpec,
    signer: &gatehouse_proof::checkpoint::NoteSigner,
    since: Option<&str>,
    partial: &Path,
) -> Result<(std::fs::File, u64), ApiError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .map_err(|e| ApiError::internal("the bundle could not be written", e))?;
    let mut out = BufWriter::new(file);
    let signing = crate::export::Signing { signer, since };
    let manifest = crate::export::write_bundle(data_dir, spec, &signing, &mut out, &mut |_, _| {})
        .map_err(|e| ApiError::internal("the bundle could not be written", format!("{e:#}")))?;
    out.flush()
        .map_err(|e| ApiError::internal("the bundle could not be written", e))?;
    let file = std::fs::File::open(partial)
        .map_err(|e| ApiError::internal("the bundle could not be read back", e))?;
    Ok((file, manifest.counts.events))
}

/// A file as a streamed body, in 64 KiB reads: a bundle is never held whole in memory.
fn file_body(file: tokio::fs::File) -> Body {
    let chunks = futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buffer.truncate(read);
        Ok(Some((Bytes::from(buffer), file)))
    });
    Body::from_stream(chunks)
}

// ----- reports -----

async fn access_review(State(api): State<Arc<Inner>>, headers: HeaderMap, uri: Uri) -> Response {
    api.audited(
        AuditAction::Report,
        headers,
        uri,
        Vec::new(),
        &["from", "to", "format"],
        Inner::access_review,
    )
    .await
}

/// The CloudEvents `type`, read without building the rest of the event.
#[derive(Deserialize)]
struct EventType {
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Inner {
    async fn access_review(self: Arc<Self>, call: Call) -> Result<Answer, ApiError> {
        let (from, to) = call.period()?;
        let format = call.get("format").unwrap_or("json").to_owned();
        if !["json", "csv", "html"].contains(&format.as_str()) {
            return Err(ApiError::bad_request("format must be json, csv or html"));
        }
        let policy_path = self.policy.clone();
        let review = self
            .ledger_job(move |dir| {
                // Read at each report, so it is the policy in force now.
                let (policy, policy_note) = match &policy_path {
                    Some(path) => match load_policy(path) {
                        Ok(p) => (Some(p), None),
                        Err(e) => {
                            tracing::warn!(error = %e, "access review without unused grants");
                            (
                                None,
                                Some(format!(
                                    "the policy could not be loaded ({e}), so unused grants \
                                     are not listed"
                                )),
                            )
                        }
                    },
                    None => (None, None),
                };
                let ledger = open_ledger(dir)?;
                let mut builder = ReviewBuilder::new(from, to);
                for stored in ledger.entries(0).map_err(ledger_error)? {
                    let stored = stored.map_err(ledger_error)?;
                    if stored.tombstone().is_some() {
                        // Pruned past retention: nothing left to report on.
                        continue;
                    }
                    let Ok(entry) = Entry::decode(&stored.encoding) else {
                        builder.unreadable();
                        continue;
                    };
                    match serde_json::from_slice::<EventType>(&entry.event) {
                        Ok(EventType { kind: Some(kind) }) if ReviewBuilder::wants(&kind) => {
                            match serde_json::from_slice::<serde_json::Value>(&entry.event) {
                                Ok(event) => builder.add(&event),
                                Err(_) => builder.unreadable(),
                            }
                        }
                        Ok(_) => builder.pass(),
                        Err(_) => builder.unreadable(),
                    }
                }
                let mut review = builder.finish(policy.as_ref());
                review.generated_at = Some(now_rfc3339());
                review.policy_source = policy
                    .as_ref()
                    .and(policy_path.as_ref())
                    .map(|p| p.display().to_string());
                review.notes.extend(policy_note);
                Ok(review)
            })
            .await?;
        let name = format!("gatehouse-access-review-{}", call.access_id);
        Ok(match format.as_str() {
            "csv" => {
                let mut answer =
                    bytes_answer("text/csv; charset=utf-8", report::to_csv(&review), None);
                attachment(&mut answer, &format!("{name}.csv"));
                answer
            }
            "html" => {
                let mut answer =
                    bytes_answer("text/html; charset=utf-8", report::to_html(&review), None);
                // The report is self-contained: no script, nothing fetched.
                answer.response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
                );
                attachment(&mut answer, &format!("{name}.html"));
                answer
            }
            _ => {
                let mut text = serde_json::to_string_pretty(&review)
                    .map_err(|e| ApiError::internal("the report could not be encoded", e))?;
                text.push('\n');
                bytes_answer("application/json", text, None)
            }
        })
    }
}

/// Reads an evidence configuration file: the service's settings, and the auditor API's from
/// its `api:` section, if any.
pub fn load_evidence_config(
    path: &std::path::Path,
) -> anyhow::Result<(crate::EvidenceConfig, Option<AuditorApiConfig>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading configuration {}: {e}", path.display()))?;
    let mut document: yaml_serde::Value = yaml_serde::from_str(&text)
        .map_err(|e| anyhow::anyhow!("configuration {}: {e}", path.display()))?;
    let api = document
        .as_mapping_mut()
        .and_then(|m| m.remove("api"))
        .map(yaml_serde::from_value::<AuditorApiConfig>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("configuration {}: api: {e}", path.display()))?;
    // Without an `api:` section the text is parsed again as it is, so errors keep their line.
    let evidence = if api.is_none() {
        yaml_serde::from_str(&text)
    } else {
        yaml_serde::from_value(document)
    }
    .map_err(|e| anyhow::anyhow!("configuration {}: {e}", path.display()))?;
    Ok((evidence, api))
}

/// `gatehouse evidence --config FILE`: the evidence service, and its auditor API when the file
/// has an `api:` section (the rest of the file is the evidence service's configuration).
pub async fn run_evidence(
    path: &std::path::Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (evidence, api) = load_evidence_config(path)?;
    let Some(api) = api else {
        return Ok(crate::run(evidence, shutdown).await?);
    };
    api.validate().map_err(anyhow::Error::msg)?;
    let replica = evidence.replica_name();
    let bus = gatehouse_bus::Bus::connect(&evidence.nats, "gatehouse-evidence-api").await?;
    bus.ensure_stream(&evidence.nats.stream).await?;
    // The ledger first: the API reads what the service opened (and built indexes for).
    let service = crate::Evidence::open(evidence.clone()).await?;
    let server = AuditorApi::start(
        &api,
        evidence.data_dir.clone(),
        bus,
        &replica,
        shutdown.clone(),
    )
    .await
    .map_err(anyhow::Error::msg)?
    .with_metrics(service.metrics().listeners())
    .with_evidence_config(&evidence);
    tracing::info!(listen = %server.local_addr(), "auditor API serving");
    let task = tokio::spawn(server.run());
    let result = service.run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = task.await;
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_parameters_never_hold_a_token() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
        let uri: Uri = "/v1/events?principal=ci&access_token=abc".parse().unwrap();
        let given = vec![
            ("principal".to_owned(), "ci".to_owned()),
            ("access_token".to_owned(), "abc".to_owned()),
            ("namespace".to_owned(), jwt.to_owned()),
            ("namespace".to_owned(), "apps".to_owned()),
        ];
        let out = recorded(&given, &[("session_id", format!("Bearer {jwt}"))], &uri);
        assert_eq!(out["principal"], "ci");
        assert_eq!(out["access_token"], "[redacted]");
        assert_eq!(out["namespace"], "[redacted], apps");
        assert_eq!(out["session_id"], "[redacted]");
        assert!(!format!("{out:?}").contains(jwt));
    }

    #[test]
    fn recorded_values_are_cut_and_parameters_checked() {
        let long = "é".repeat(MAX_RECORDED);
        let cut = clip(&long);
        assert!(cut.len() <= MAX_RECORDED + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        let e = checked(vec![("princpal".into(), "x".into())], SEARCH_PARAMS).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("princpal"), "{}", e.message);
        let e = checked(
            vec![("limit".into(), "1".into()), ("limit".into(), "2".into())],
            SEARCH_PARAMS,
        )
        .unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
        assert!(checked(vec![("from".into(), "x".into())], &[]).is_err());
    }

    #[test]
    fn session_ids_and_path_segments() {
        assert!(valid_session_id("01J0ABCDEF_x-y"));
        assert!(!valid_session_id(""));
        assert!(!valid_session_id("../etc"));
        assert!(!valid_session_id("a%2Fb"));
        let uri: Uri = "/v1/sessions/01ABC/replay".parse().unwrap();
        assert_eq!(segment(&uri, "/v1/sessions/"), "01ABC");
        let uri: Uri = "/v1/events/17?size=3".parse().unwrap();
        assert_eq!(segment(&uri, "/v1/events/"), "17");
    }

    #[test]
    fn connection_limits_are_checked_with_the_rest_of_the_api_section() {
        let config = |extra: &str| {
            yaml_serde::from_str::<AuditorApiConfig>(&format!(
                "listen: 127.0.0.1:0\nauditor_groups: [auditors]\n\
                 issuers: [{{issuer: https://idp.example, audiences: [a]}}]\n{extra}"
            ))
            .unwrap()
        };
        config("").validate().unwrap();
        assert_eq!(config("").connections, ConnectionLimits::default());
        assert_eq!(
            config("connections: {max_connections: 0}")
                .validate()
                .unwrap_err(),
            "api.connections.max_connections must be between 1 and 1000000 (got 0)"
        );
    }

    #[test]
    fn raw_events_stay_byte_for_byte() {
        let bytes = br#"{"b":1, "a":[2,3]}"#;
        assert_eq!(raw_event(bytes).get(), r#"{"b":1, "a":[2,3]}"#);
        assert_eq!(raw_event(b"not json").get(), r#""not json""#);
    }
}
