//! The Kubernetes API server emulation: HTTPS (h2 + http/1.1), bearer-token authentication,
//! kube-style impersonation, RBAC, discovery, and the core/v1 resources over an in-memory store.
//!
//! - `mod.rs`: server lifecycle, request recording, authentication, impersonation, routing.
//! - `api.rs`: the verbs (get/list/watch/create/update/patch/delete/deletecollection, pods/log).
//! - `streaming/`: pods/exec, pods/attach, pods/portforward over WebSocket and SPDY/3.1.
//! - `resources.rs`: the served resource types and discovery documents.
//! - `store.rs`: objects, resourceVersions, change history and broadcast for watches.
//! - `objects.rs`: per-type decoding, validation, defaults and the demo seed.
//! - `selector.rs`, `patch.rs`, `table.rs`, `openapi.rs`, `status.rs`: wire-format helpers;
//!   `protobuf.rs` decodes the protobuf bodies client-go's typed clients send.

mod api;
mod objects;
mod openapi;
mod patch;
mod protobuf;
pub(crate) mod resources;
mod selector;
mod status;
mod store;
mod streaming;
mod table;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use streaming::FORWARD_HOST_ANNOTATION;

use crate::rbac::{self, RbacConfig, UserInfo};
use status::ApiError;
use store::Store;

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub rbac: RbacConfig,
    /// Seed namespaces default, kube-system, kube-public, kube-node-lease, apps, prod (each with a
    /// `default` ServiceAccount); pods default/hello, apps/web, apps/worker, prod/api,
    /// prod/payments, kube-system/coredns, kube-system/kube-proxy (with events); configmaps
    /// apps/web-config, prod/api-config, kube-system/coredns; secrets apps/db-credentials (keys
    /// `username`, `password`) and kube-system/bootstrap-token-abcdef; services
    /// default/kubernetes, apps/web, prod/api.
    pub seed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox listener: {0}")]
    Io(#[from] std::io::Error),
}

/// One request as the sandbox saw it. Header values are not kept: they may be secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// From the bearer token.
    pub authenticated_user: Option<String>,
    pub impersonated_user: Option<String>,
    pub impersonated_groups: Vec<String>,
    /// Who RBAC evaluated.
    pub effective_user: Option<String>,
    /// 0 while the response has not started.
    pub status: u16,
    /// Lowercase header names received.
    pub header_names: Vec<String>,
}

pub(crate) struct State {
    rbac: RbacConfig,
    store: Mutex<Store>,
    records: Mutex<Vec<RecordedRequest>>,
    stop: watch::Receiver<bool>,
    addr: SocketAddr,
    openapi: openapi::Docs,
    /// Attach targets: one local main process per pod container.
    processes: Arc<streaming::MainProcesses>,
    /// Watches still streaming: a client that goes away ends its watch, and tests check
    /// that a disconnect reaches the cluster.
    pub(crate) open_watches: Arc<std::sync::atomic::AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole sandbox down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
}

pub struct Sandbox;

impl Sandbox {
    /// Serves HTTPS (ALPN h2 and http/1.1) on `listener` with the given rustls config.
    pub async fn start(
        config: SandboxConfig,
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<SandboxHandle, SandboxError> {
        let addr = listener.local_addr()?;
        let mut store = Store::new();
        if config.seed {
            objects::seed(&mut store);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = Arc::new(State {
            rbac: config.rbac,
            store: Mutex::new(store),
            records: Mutex::new(Vec::new()),
            stop: stop_rx.clone(),
            addr,
            openapi: openapi::Docs::build(),
            processes: Arc::new(streaming::MainProcesses::new(stop_rx.clone())),
            open_watches: Arc::default(),
        });
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            state.clone(),
            stop_rx,
        ));
        Ok(SandboxHandle {
            addr,
            state,
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// A running sandbox; stops on `shutdown()` or drop.
pub struct SandboxHandle {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.records).clone()
    }

    /// How many watches are streaming right now.
    pub fn open_watches(&self) -> usize {
        self.state
            .open_watches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting, ends open watches, and waits (bounded) for connections to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let tcp = match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // E.g. out of file descriptors: back off rather than spin.
                        tracing::warn!(error = %e, "sandbox accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        _ => return,
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "sandbox connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// Who a request turned out to be, for the record.
#[derive(Default)]
struct Who {
    authenticated_user: Option<String>,
    impersonated_user: Option<String>,
    impersonated_groups: Vec<String>,
    effective_user: Option<String>,
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let mut header_names: Vec<String> = Vec::new();
    for name in req.headers().keys() {
        let n = name.as_str().to_owned();
        if !header_names.contains(&n) {
            header_names.push(n);
        }
    }
    let index = {
        let mut records = lock(&state.records);
        records.push(RecordedRequest {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(str::to_owned),
            header_names,
            ..RecordedRequest::default()
        });
        records.len() - 1
    };
    let mut who = Who::default();
    let response = match serve(&state, req, &mut who).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Some(r) = lock(&state.records).get_mut(index) {
        tracing::debug!(
            method = %r.method,
            path = %r.path,
            query = r.query.as_deref().unwrap_or_default(),
            user = who.effective_user.as_deref().unwrap_or_default(),
            status = response.status().as_u16(),
            "sandbox request"
        );
        r.authenticated_user = who.authenticated_user;
        r.impersonated_user = who.impersonated_user;
        r.impersonated_groups = who.impersonated_groups;
        r.effective_user = who.effective_user;
        r.status = response.status().as_u16();
    }
    response
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(value.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(code: u16, text: String) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Query parameters; the last value of a repeated key wins.
#[derive(Default)]
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Go's `strconv.ParseBool` spellings of true (the Python client sends `watch=True`).
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("true" | "1" | "t" | "T" | "TRUE" | "True")
        )
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn header_values(headers: &HeaderMap, name: &str) -> Result<Vec<String>, ApiError> {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::bad_request(format!("invalid {name} header")))
        })
        .collect()
}

/// kube-apiserver's impersonation filter: each requested attribute needs verb `impersonate`.
fn impersonate(
    rbac: &RbacConfig,
    requester: &UserInfo,
    headers: &HeaderMap,
    who: &mut Who,
) -> Result<UserInfo, ApiError> {
    let user = header_values(headers, "impersonate-user")?
        .into_iter()
        .next();
    let groups = header_values(headers, "impersonate-group")?;
    let uid = header_values(headers, "impersonate-uid")?
        .into_iter()
        .next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in headers.keys() {
        if let Some(key) = name.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8_lossy()
                .to_lowercase();
            extra
                .entry(key)
                .or_default()
                .extend(header_values(headers, name.as_str())?);
        }
    }
    let Some(user) = user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::internal(
                "requested impersonation of groups, uid or extra without impersonating a user",
            ));
        }
        return Ok(requester.clone());
    };
    who.impersonated_user = Some(user.clone());
    who.impersonated_groups = groups.clone();
    let check = |group: &str, resource: &str, subresource: &str, namespace: &str, name: &str| {
        let request = rbac::Request::Resource {
            verb: "impersonate".into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        if rbac.allows(requester, &request) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                group,
                resource,
                name,
                &rbac::forbidden_reason(&requester.name, &request),
            ))
        }
    };
    let mut new_groups = groups.clone();
    match user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) => {
            check("", "serviceaccounts", "", ns, sa)?;
            for g in [
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !new_groups.contains(&g) {
                    new_groups.push(g);
                }
            }
        }
        None => check("", "users", "", "", &user)?,
    }
    for g in &groups {
        check("", "groups", "", "", g)?;
    }
    for (key, values) in &extra {
        for v in values {
            check("authentication.k8s.io", "userextras", key, "", v)?;
        }
    }
    if let Some(uid) = &uid {
        check("authentication.k8s.io", "uids", "", "", uid)?;
    }
    let implicit = if user == "system:anonymous" {
        "system:unauthenticated"
    } else {
        rbac::AUTHENTICATED_GROUP
    };
    if !new_groups.iter().any(|g| g == implicit) {
        new_groups.push(implicit.to_owned());
    }
    Ok(UserInfo {
        name: user,
        uid,
        groups: new_groups,
        extra,
    })
}

/// What a request addresses, like kube's RequestInfo.
pub(crate) enum Route {
    Version,
    Api,
    Apis,
    ApiV1,
    OpenApiV3,
    OpenApiV3ApiV1,
    UnknownPath,
    Resource(ResourceRoute),
}

pub(crate) struct ResourceRoute {
    pub verb: &'static str,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    /// The path had the `/namespaces/{ns}/{resource}` form (not a namespace object's own path).
    pub in_namespace: bool,
    pub name: String,
    /// The name RBAC sees: also set for list/watch pinned by `fieldSelector=metadata.name=`.
    pub authz_name: String,
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn route(method: &Method, path: &str, query: &Query) -> Result<Route, ApiError> {
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let fixed = match trimmed {
        "/version" => Some(Route::Version),
        "/api" => Some(Route::Api),
        "/apis" => Some(Route::Apis),
        "/api/v1" => Some(Route::ApiV1),
        "/openapi/v3" => Some(Route::OpenApiV3),
        "/openapi/v3/api/v1" => Some(Route::OpenApiV3ApiV1),
        _ => None,
    };
    if let Some(r) = fixed {
        return Ok(r);
    }
    let Some(rest) = trimmed.strip_prefix("/api/v1/") else {
        return Ok(Route::UnknownPath);
    };
    let mut parts: Vec<String> = rest.split('/').map(decode_segment).collect();
    let mut legacy_watch = false;
    if parts.first().is_some_and(|p| p == "watch") {
        legacy_watch = true;
        parts.remove(0);
    }
    let mut namespace = String::new();
    let mut in_namespace = false;
    if parts.first().is_some_and(|p| p == "namespaces") && parts.len() > 1 {
        namespace = parts[1].clone();
        // /namespaces/{ns}/{resource}/..., unless the third part is a namespace subresource.
        if parts.len() > 2 && !matches!(parts[2].as_str(), "status" | "finalize") {
            parts.drain(0..2);
            in_namespace = true;
        }
    }
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(String::is_empty) {
        return Err(ApiError::no_route());
    }
    let resource = parts[0].clone();
    let name = parts.get(1).cloned().unwrap_or_default();
    let subresource = parts.get(2).cloned().unwrap_or_default();
    let verb = match *method {
        Method::GET if legacy_watch => "watch",
        Method::GET if name.is_empty() => {
            if query.flag("watch") {
                "watch"
            } else {
                "list"
            }
        }
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let mut authz_name = name.clone();
    if name.is_empty()
        && matches!(verb, "list" | "watch")
        && let Some(fs) = query.get("fieldSelector")
        && let Ok(sel) = selector::FieldSelector::parse(fs)
        && let Some(n) = sel.single_name()
    {
        authz_name = n.to_owned();
    }
    Ok(Route::Resource(ResourceRoute {
        verb,
        resource,
        subresource,
        namespace,
        in_namespace,
        name,
        authz_name,
    }))
}

fn is_health(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

async fn serve(
    state: &Arc<State>,
    req: Request<Incoming>,
    who: &mut Who,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    // Like kube's public health endpoints: probes need no credentials.
    if is_health(&path) {
        return Ok(text_response(200, "ok".into()));
    }
    let user = bearer_token(req.headers())
        .and_then(|t| state.rbac.authenticate(t))
        .ok_or_else(ApiError::unauthorized)?;
    who.authenticated_user = Some(user.name.clone());
    let user = impersonate(&state.rbac, &user, req.headers(), who)?;
    who.effective_user = Some(user.name.clone());
    let query = Query::parse(req.uri().query());
    let route = route(req.method(), &path, &query)?;
    let request = match &route {
        Route::Resource(r) => rbac::Request::Resource {
            verb: r.verb.into(),
            api_group: String::new(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.authz_name.clone(),
        },
        _ => rbac::Request::NonResource {
            verb: req.method().as_str().to_ascii_lowercase(),
            path: path.clone(),
        },
    };
    if !state.rbac.allows(&user, &request) {
        let reason = rbac::forbidden_reason(&user.name, &request);
        return Err(match &route {
            Route::Resource(r) => ApiError::forbidden("", &r.resource, &r.authz_name, &reason),
            _ => ApiError::forbidden("", "", "", &reason),
        });
    }
    let document = |v: Value| {
        if req.method() == Method::GET {
            Ok(json_response(200, &v))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match route {
        Route::Version => document(resources::version()),
        Route::Api => document(resources::api_versions(&state.addr.to_string())),
        Route::Apis => document(resources::api_group_list()),
        Route::ApiV1 => document(resources::api_resource_list()),
        Route::OpenApiV3 => document(state.openapi.root.clone()),
        Route::OpenApiV3ApiV1 => {
            let mut r = document(state.openapi.api_v1.clone())?;
            if query.get("hash") == Some(state.openapi.hash.as_str()) {
                // Content-addressed URL: clients may cache it forever.
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    http::HeaderValue::from_static("public, immutable"),
                );
            }
            r.headers_mut()
                .insert(header::ETAG, etag(&state.openapi.hash));
            Ok(r)
        }
        Route::UnknownPath => Err(ApiError::no_route()),
        Route::Resource(r) => api::dispatch(state, r, req, &query).await,
    }
}

fn etag(hash: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("\"{hash}\""))
        .unwrap_or_else(|_| http::HeaderValue::from_static("\"0\""))
}
