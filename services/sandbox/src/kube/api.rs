//! The resource verbs: get, list, watch, create, update, patch, delete, deletecollection,
//! and pods/log, with content negotiation (JSON, Table, PartialObjectMetadata).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::objects::{self, FieldValidation};
use super::patch::{self, PatchKind};
use super::resources::{self, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{Change, ChangeType};
use super::table::{self, IncludeObject};
use super::{Query, ResourceRoute, State, json_response};

/// kube-apiserver's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Default watch length when the client sets no timeoutSeconds (kube picks 30–60 minutes).
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// How often a followed log without a running main process gets a line.
const LOG_HEARTBEAT: Duration = Duration::from_secs(1);

/// The representation the client asked for in `Accept`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Output {
    Json,
    Table {
        version: String,
        include: IncludeObject,
    },
    Metadata {
        version: String,
    },
}

fn media_params(media: &str) -> (String, Vec<(String, String)>) {
    let mut parts = media.split(';');
    let mt = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (mt, params)
}

/// Picks the first acceptable media type; only JSON encodings are spoken.
pub(crate) fn negotiate(accept: Option<&str>, include: IncludeObject) -> Output {
    for media in accept.unwrap_or("application/json").split(',') {
        let (mt, params) = media_params(media);
        if !matches!(mt.as_str(), "application/json" | "*/*" | "application/*") {
            continue;
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        let version = get("v").unwrap_or("v1");
        match get("as") {
            None => return Output::Json,
            Some("Table")
                if get("g") == Some("meta.k8s.io") && matches!(version, "v1" | "v1beta1") =>
            {
                return Output::Table {
                    version: version.to_owned(),
                    include,
                };
            }
            Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                if get("g") == Some("meta.k8s.io") && matches!(version, "v1" | "v1beta1") =>
            {
                return Output::Metadata {
                    version: version.to_owned(),
                };
            }
            Some(_) => continue,
        }
    }
    Output::Json
}

fn partial(obj: &Value, version: &str) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// One object in the negotiated representation.
fn render_one(def: &ResourceDef, obj: &Value, output: &Output) -> Value {
    match output {
        Output::Json => obj.clone(),
        Output::Metadata { version } => partial(obj, version),
        Output::Table { version, include } => {
            let rv = obj["metadata"]["resourceVersion"].clone();
            table::render(
                def.name,
                std::slice::from_ref(obj),
                *include,
                version,
                json!({"resourceVersion": rv}),
            )
        }
    }
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "error reading the request body: {e}"
        ))),
    }
}

fn decode_object(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let media = media_params(content_type).0;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the body of the request was empty"));
    }
    let value: Value = match media.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
            yaml_serde::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        super::protobuf::MEDIA_TYPE => super::protobuf::decode(body)?,
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(value)
}

fn dry_run(query: &Query) -> Result<bool, ApiError> {
    match query.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        ))),
    }
}

fn selectors(def: &ResourceDef, query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
        .map_err(ApiError::bad_request)?;
    for r in &fields.requirements {
        let known = matches!(r.field.as_str(), "metadata.name" | "metadata.namespace")
            || def.field_labels.contains(&r.field.as_str());
        if !known {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {}",
                r.field
            )));
        }
    }
    Ok((labels, fields))
}

fn matches(obj: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches(obj["metadata"]["labels"].as_object()) && fields.matches(obj)
}

pub(crate) async fn dispatch(
    state: &Arc<State>,
    route: ResourceRoute,
    req: Request<Incoming>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let def = resources::by_name(&route.resource).ok_or_else(ApiError::no_route)?;
    if !route.subresource.is_empty() && !def.has_subresource(&route.subresource) {
        return Err(ApiError::no_route());
    }
    if !def.namespaced && route.in_namespace {
        return Err(ApiError::no_route());
    }
    if def.namespaced && route.namespace.is_empty() && !route.name.is_empty() {
        return Err(ApiError::no_route());
    }
    let allowed = match route.subresource.as_str() {
        "" => def.supports(route.verb),
        "log" => route.verb == "get",
        "exec" | "attach" | "portforward" => matches!(route.verb, "get" | "create"),
        _ => matches!(route.verb, "get" | "update" | "patch"),
    };
    let misplaced = match route.verb {
        "create" if !route.subresource.is_empty() => route.name.is_empty(),
        "create" => !route.name.is_empty() || (def.namespaced && route.namespace.is_empty()),
        "update" | "patch" => route.name.is_empty(),
        _ => false,
    };
    if !allowed || misplaced {
        return Err(ApiError::method_not_allowed());
    }
    if matches!(
        route.subresource.as_str(),
        "exec" | "attach" | "portforward"
    ) {
        return super::streaming::serve(state, &route, req).await;
    }
    let include =
        IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let output = negotiate(accept.as_deref(), include);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Cluster-scoped objects live under namespace "" in the store.
    let ns = if def.namespaced {
        route.namespace.clone()
    } else {
        String::new()
    };
    match route.verb {
        "get" if route.subresource == "log" => pod_log(state, &ns, &route.name, query),
        "get" => {
            let store = state.store();
            let obj = store
                .get(def.name, &ns, &route.name)
                .ok_or_else(|| ApiError::not_found(def.name, &route.name))?;
            Ok(json_response(200, &render_one(def, obj, &output)))
        }
        "list" => list(state, def, &ns, query, &output),
        "watch" => watch(state, def, &ns, &route.name, query, output),
        "create" => {
            let body = read_body(req.into_body()).await?;
            let obj = decode_object(&body, &content_type)?;
            create(state, def, &ns, obj, query, &output)
        }
        "update" => {
            let body = read_body(req.into_body()).await?;
            let obj = decode_object(&body, &content_type)?;
            update(
                state,
                def,
                &ns,
                &route,
                UpdateBody::Put(obj),
                query,
                &output,
            )
        }
        "patch" => {
            let kind = PatchKind::from_content_type(&content_type)?;
            let body = read_body(req.into_body()).await?;
            update(
                state,
                def,
                &ns,
                &route,
                UpdateBody::Patch(kind, body),
                query,
                &output,
            )
        }
        "delete" => {
            let body = read_body(req.into_body()).await?;
            delete(state, def, &ns, &route.name, &body, query, &output)
        }
        "deletecollection" => {
            let body = read_body(req.into_body()).await?;
            delete_collection(state, def, &ns, &body, query, &output)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The body of an update.
enum UpdateBody {
    Put(Value),
    Patch(PatchKind, Bytes),
}

fn strip_type(mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    obj
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

fn list(
    state: &Arc<State>,
    def: &'static ResourceDef,
    ns: &str,
    query: &Query,
    output: &Output,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(def, query)?;
    let limit = match query.get("limit") {
        None | Some("") => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Ok(_) => None,
            Err(_) => return Err(ApiError::bad_request(format!("invalid limit: {l:?}"))),
        },
    };
    let token = match query.get("continue") {
        None | Some("") => None,
        Some(t) => Some(
            URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .ok_or_else(|| ApiError::bad_request("continue key is not valid: invalid token"))?,
        ),
    };
    let store = state.store();
    let list_rv = token.as_ref().map_or(store.current_rv(), |t| t.rv);
    let scope = (!ns.is_empty()).then_some(ns);
    let mut items = Vec::new();
    let mut remaining = 0u64;
    let mut last: Option<(String, String)> = None;
    for (key, obj) in store.list(def.name, scope) {
        if let Some(t) = &token
            && (key.1.as_str(), key.2.as_str()) <= (t.ns.as_str(), t.name.as_str())
        {
            continue;
        }
        if !matches(obj, &labels, &fields) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        last = Some((key.1.clone(), key.2.clone()));
        items.push(obj.clone());
    }
    drop(store);
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0
        && let Some((last_ns, last_name)) = last
    {
        let token = ContinueToken {
            rv: list_rv,
            ns: last_ns,
            name: last_name,
        };
        let encoded = serde_json::to_vec(&token).map_err(|e| ApiError::internal(e.to_string()))?;
        meta["continue"] = json!(URL_SAFE_NO_PAD.encode(encoded));
        meta["remainingItemCount"] = json!(remaining);
    }
    let body = match output {
        Output::Json => json!({
            "kind": def.list_kind(),
            "apiVersion": "v1",
            "metadata": meta,
            "items": items.into_iter().map(strip_type).collect::<Vec<_>>(),
        }),
        Output::Metadata { version } => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": format!("meta.k8s.io/{version}"),
            "metadata": meta,
            "items": items.iter().map(|o| partial(o, version)).collect::<Vec<_>>(),
        }),
        Output::Table { version, include } => {
            table::render(def.name, &items, *include, version, meta)
        }
    };
    Ok(json_response(200, &body))
}

fn create(
    state: &Arc<State>,
    def: &'static ResourceDef,
    ns: &str,
    mut obj: Value,
    query: &Query,
    output: &Output,
) -> Result<Response<Body>, ApiError> {
    let fv = FieldValidation::parse(query.get("fieldValidation"))?;
    let dry = dry_run(query)?;
    let mut store = state.store();
    if def.namespaced && store.get("namespaces", "", ns).is_none() {
        return Err(ApiError::not_found("namespaces", ns));
    }
    let warnings = objects::prepare_create(def, &mut obj, ns, fv, &mut store)?;
    let name = objects::name_of(&obj).to_owned();
    if store.get(def.name, ns, &name).is_some() {
        return Err(ApiError::already_exists(def.name, &name));
    }
    let created = if dry {
        obj
    } else {
        let created = store.insert(def.name, obj);
        if def.name == "namespaces" {
            objects::namespace_created(&mut store, &name);
        }
        created
    };
    drop(store);
    Ok(with_warnings(
        json_response(201, &render_one(def, &created, output)),
        &warnings,
    ))
}

fn update(
    state: &Arc<State>,
    def: &'static ResourceDef,
    ns: &str,
    route: &ResourceRoute,
    change: UpdateBody,
    query: &Query,
    output: &Output,
) -> Result<Response<Body>, ApiError> {
    let fv = FieldValidation::parse(query.get("fieldValidation"))?;
    let dry = dry_run(query)?;
    let mut store = state.store();
    let existing = store
        .get(def.name, ns, &route.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(def.name, &route.name))?;
    let (new, for_patch) = match change {
        UpdateBody::Put(obj) => (obj, false),
        UpdateBody::Patch(kind, body) => (patch::apply(kind, &existing, &body)?, true),
    };
    let (result, warnings) = objects::prepare_update(
        def,
        &route.subresource,
        &existing,
        new,
        fv,
        for_patch,
        &mut store,
    )?;
    // A no-op update keeps the resourceVersion and emits no watch event, as in kube.
    let out = if dry || result == existing {
        result
    } else {
        store.replace(def.name, result)
    };
    drop(store);
    Ok(with_warnings(
        json_response(200, &render_one(def, &out, output)),
        &warnings,
    ))
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    #[serde(default)]
    preconditions: Option<Preconditions>,
    #[serde(default)]
    dry_run: Option<Vec<String>>,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(body: &[u8], query: &Query) -> Result<(DeleteOptions, bool), ApiError> {
    let opts: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let dry = dry_run(query)?
        || opts
            .dry_run
            .as_ref()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok((opts, dry))
}

const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

fn delete(
    state: &Arc<State>,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    body: &[u8],
    query: &Query,
    output: &Output,
) -> Result<Response<Body>, ApiError> {
    let (opts, dry) = delete_options(body, query)?;
    let mut store = state.store();
    let existing = store
        .get(def.name, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(def.name, name))?;
    if let Some(p) = &opts.preconditions {
        let uid = existing["metadata"]["uid"].as_str().unwrap_or_default();
        let rv = existing["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if let Some(want) = p.uid.as_deref().filter(|u| *u != uid) {
            return Err(ApiError::conflict(
                def.name,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(want) = p.resource_version.as_deref().filter(|v| *v != rv) {
            return Err(ApiError::conflict(
                def.name,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }
    }
    if def.name == "namespaces" && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(
            "",
            "namespaces",
            name,
            "this namespace may not be deleted",
        ));
    }
    let mut removed = existing;
    if !dry {
        if def.name == "namespaces" {
            // The namespace controller's job, done at once.
            for key in store.keys_in_namespace(name) {
                store.remove(key.0, &key.1, &key.2);
            }
        }
        if def.name == "pods" {
            // Graceful deletion is observable as a MODIFIED (Terminating) before the DELETED.
            let mut terminating = removed.clone();
            terminating["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
            terminating["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            store.replace(def.name, terminating);
        }
        if let Some(r) = store.remove(def.name, ns, name) {
            removed = r;
        }
    }
    drop(store);
    if !def.delete_returns_object {
        let uid = removed["metadata"]["uid"].as_str().unwrap_or_default();
        return Ok(json_response(200, &status::success(def.name, name, uid)));
    }
    if removed["metadata"].get("deletionTimestamp").is_none() {
        removed["metadata"]["deletionTimestamp"] = json!(objects::now_rfc3339());
    }
    if def.name == "namespaces" {
        if !removed["status"].is_object() {
            removed["status"] = json!({});
        }
        removed["status"]["phase"] = json!("Terminating");
    } else {
        removed["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    }
    Ok(json_response(200, &render_one(def, &removed, output)))
}

fn delete_collection(
    state: &Arc<State>,
    def: &'static ResourceDef,
    ns: &str,
    body: &[u8],
    query: &Query,
    output: &Output,
) -> Result<Response<Body>, ApiError> {
    let (_, dry) = delete_options(body, query)?;
    let (labels, fields) = selectors(def, query)?;
    let mut store = state.store();
    let scope = (!ns.is_empty()).then_some(ns);
    let targets: Vec<(String, String)> = store
        .list(def.name, scope)
        .filter(|(_, o)| matches(o, &labels, &fields))
        .map(|(k, _)| (k.1.clone(), k.2.clone()))
        .collect();
    let mut items = Vec::new();
    for (obj_ns, name) in targets {
        let removed = if dry {
            store.get(def.name, &obj_ns, &name).cloned()
        } else {
            store.remove(def.name, &obj_ns, &name)
        };
        items.extend(removed);
    }
    let rv = store.current_rv();
    drop(store);
    let meta = json!({"resourceVersion": rv.to_string()});
    let body = match output {
        Output::Table { version, include } => {
            table::render(def.name, &items, *include, version, meta)
        }
        _ => json!({
            "kind": def.list_kind(),
            "apiVersion": "v1",
            "metadata": meta,
            "items": items.into_iter().map(strip_type).collect::<Vec<_>>(),
        }),
    };
    Ok(json_response(200, &body))
}

fn pod_log(
    state: &Arc<State>,
    ns: &str,
    name: &str,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let store = state.store();
    let pod = store
        .get("pods", ns, name)
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container") {
        Some(c) if !c.is_empty() => {
            if !containers.iter().any(|x| x == c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            c.to_owned()
        }
        _ if containers.len() == 1 => containers[0].clone(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let started = pod["status"]["startTime"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    drop(store);
    let text = format!(
        "{started} sandbox: container {container} of pod {ns}/{name} started\n\
         {started} sandbox: listening on :8080\n"
    );
    let body = if query.flag("follow") {
        follow_log(state, format!("{ns}/{name}/{container}"), text)
    } else {
        Body::from(text)
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

/// `follow=true`: the log so far, then, until the client goes away (or the sandbox stops),
/// the output of the container's main process when one runs (see pods/attach) and otherwise a
/// heartbeat line every [`LOG_HEARTBEAT`].
fn follow_log(state: &Arc<State>, key: String, head: String) -> Body {
    let (tx, body_rx) = mpsc::channel::<Bytes>(16);
    let mut stop = state.stop.clone();
    let processes = state.processes.clone();
    tokio::spawn(async move {
        if tx.send(Bytes::from(head)).await.is_err() {
            return;
        }
        let mut output = None;
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + LOG_HEARTBEAT, LOG_HEARTBEAT);
        let mut beat = 0u64;
        loop {
            if output.is_none() {
                output = processes.subscribe(&key);
            }
            tokio::select! {
                chunk = async { output.as_mut()?.next().await }, if output.is_some() => match chunk {
                    Some(chunk) => {
                        if tx.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    None => output = None,
                },
                _ = ticker.tick() => {
                    beat += 1;
                    let now = time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    let line = format!("{now} sandbox: heartbeat {beat}\n");
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
                _ = super::streaming::until_true(&mut stop) => return,
                _ = tx.closed() => return,
            }
        }
    });
    Body::from_stream(futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    }))
}

/// What a watcher wants to see.
struct WatchFilter {
    resource: &'static str,
    namespace: String,
    name: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        (self.namespace.is_empty()
            || obj["metadata"]["namespace"].as_str() == Some(self.namespace.as_str()))
            && (self.name.is_empty()
                || obj["metadata"]["name"].as_str() == Some(self.name.as_str()))
            && matches(obj, &self.labels, &self.fields)
    }

    /// The event this watcher sees for a change, if any (selector enter/leave become ADDED/DELETED).
    fn classify<'a>(&self, change: &'a Change) -> Option<(&'static str, &'a Value)> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.matches(&change.object);
        match change.kind {
            ChangeType::Added => now.then_some(("ADDED", &change.object)),
            ChangeType::Deleted => now.then_some(("DELETED", &change.object)),
            ChangeType::Modified => {
                let before = change.old.as_ref().is_some_and(|o| self.matches(o));
                match (before, now) {
                    (true, true) => Some(("MODIFIED", &change.object)),
                    (false, true) => Some(("ADDED", &change.object)),
                    (true, false) => Some(("DELETED", &change.object)),
                    (false, false) => None,
                }
            }
        }
    }
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    state: &Arc<State>,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    query: &Query,
    output: Output,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(def, query)?;
    let timeout = match query.get("timeoutSeconds") {
        None | Some("") => DEFAULT_WATCH,
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}")))?,
        ),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let since = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        ),
    };
    let filter = WatchFilter {
        resource: def.name,
        namespace: ns.to_owned(),
        name: name.to_owned(),
        labels,
        fields,
    };
    // Snapshot and subscribe under one lock so no change falls between them.
    let (rx, initial, replay, mut last_rv) = {
        let store = state.store();
        let rx = store.subscribe();
        let current = store.current_rv();
        match since {
            Some(rv) if !send_initial => {
                let replay = store.changes_since(rv);
                (rx, Vec::new(), replay, rv)
            }
            _ => {
                let scope = (!ns.is_empty()).then_some(ns);
                let initial: Vec<Value> = store
                    .list(def.name, scope)
                    .filter(|(_, o)| filter.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect();
                (rx, initial, Ok(Vec::new()), current)
            }
        }
    };
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let mut stop = state.stop.clone();
    let render = move |obj: &Value| render_one(def, obj, &output);
    let open = OpenWatch::new(state.open_watches.clone());
    tokio::spawn(async move {
        let _open = open;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx: broadcast::Receiver<Arc<Change>> = rx;
        let replay = match replay {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(event_line("ERROR", e.to_status())).await;
                return;
            }
        };
        for obj in &initial {
            if tx.send(event_line("ADDED", render(obj))).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                json!({"kind": def.kind, "apiVersion": "v1", "metadata": meta}),
            )
        };
        if bookmarks && tx.send(bookmark(last_rv, send_initial)).await.is_err() {
            return;
        }
        for change in &replay {
            if let Some((kind, obj)) = filter.classify(change)
                && tx.send(event_line(kind, render(obj))).await.is_err()
            {
                return;
            }
            last_rv = change.rv;
        }
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(change) => {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if let Some((kind, obj)) = filter.classify(&change)
                            && tx.send(event_line(kind, render(obj))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: tell it to re-list, like an expired etcd watch.
                        let e = ApiError::gone("too old resource version: the watch fell behind");
                        let _ = tx.send(event_line("ERROR", e.to_status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = stop.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r)
}

/// Counts a watch as open until its task ends.
struct OpenWatch(Arc<std::sync::atomic::AtomicUsize>);

impl OpenWatch {
    fn new(counter: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_kubectl_asks() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(Some(kubectl_get), IncludeObject::Metadata),
            Output::Table {
                version: "v1".into(),
                include: IncludeObject::Metadata
            }
        );
        let discovery = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(
            negotiate(Some(discovery), IncludeObject::Metadata),
            Output::Json
        );
        assert_eq!(
            negotiate(
                Some("application/vnd.kubernetes.protobuf, */*"),
                IncludeObject::Metadata
            ),
            Output::Json
        );
        assert_eq!(
            negotiate(
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
                IncludeObject::Metadata
            ),
            Output::Metadata {
                version: "v1".into()
            }
        );
        assert_eq!(negotiate(None, IncludeObject::Metadata), Output::Json);
    }
}
