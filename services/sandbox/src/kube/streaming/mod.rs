//! `pods/exec`, `pods/attach` and `pods/portforward`: upgraded connections that do real work.
//!
//! The sandbox runs exec commands as local processes (as the sandbox's own user: never expose
//! a sandbox beyond loopback), attaches to one shared local "main process" per container, and
//! forwards ports to local TCP ports (`127.0.0.1:<port>`, or the host in the pod annotation
//! `sandbox.gatehouse.dev/forward-host`).
//!
//! - `mod.rs`: option parsing and validation, transport negotiation, the HTTP 101 response.
//! - `session.rs`: exec/attach over WebSocket (`v5`/`v4`/`channel.k8s.io`) and over SPDY.
//! - `spdy_conn.rs`: a small SPDY/3.1 server connection (streams, replies, pings).
//! - `process.rs`: exec processes (pipes or a pseudo-terminal) and the shared main processes.
//! - `portforward.rs`: SPDY port-forward (directly or tunneled in WebSocket), and WebSocket
//!   port-forward with channel framing (`v4.channel.k8s.io` and the `ports` query).
//!
//! Negotiation follows kube: WebSocket picks the first subprotocol the client offers that the
//! server speaks; SPDY picks the first `X-Stream-Protocol-Version` the client offers that the
//! server speaks, and answers 403 with `X-Accepted-Stream-Protocol-Versions` when none fits.

mod portforward;
pub(crate) mod process;
mod session;
mod spdy_conn;

use std::sync::Arc;

use axum::body::Body;
use gatehouse_streams::channel::Subprotocol;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::status::ApiError;
use super::{ResourceRoute, State, json_response};

pub(crate) use process::MainProcesses;

/// Resolves once `flag` is true (or its sender is gone). Unlike `wait_for` it yields no
/// borrow guard, so it can sit in a `select!` inside a spawned task.
pub(crate) async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

/// The pod annotation naming the host port-forward connects to (default 127.0.0.1).
pub const FORWARD_HOST_ANNOTATION: &str = "sandbox.gatehouse.dev/forward-host";

/// WebSocket subprotocols for exec/attach, preferred first.
const WS_REMOTE_COMMAND: &[Subprotocol] = &[
    Subprotocol::V5Channel,
    Subprotocol::V4Channel,
    Subprotocol::V4Base64Channel,
    Subprotocol::Channel,
    Subprotocol::Base64Channel,
];
/// WebSocket port-forward: SPDY tunneled (kubectl), or channel framing (other clients).
const WS_PORT_FORWARD: &[Subprotocol] = &[
    Subprotocol::SpdyTunnelPortForward,
    Subprotocol::V4Channel,
    Subprotocol::V4Base64Channel,
];
/// SPDY remote-command versions, like the kubelet's (v5 is a WebSocket-only addition).
const SPDY_REMOTE_COMMAND: &[Subprotocol] = &[
    Subprotocol::V4Channel,
    Subprotocol::V3Channel,
    Subprotocol::V2Channel,
    Subprotocol::Channel,
];

/// Which subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exec,
    Attach,
    PortForward,
}

/// The stdin/stdout/stderr/tty flags of exec and attach.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How the client asked to upgrade.
enum Upgrade {
    WebSocket { key: String, offered: Vec<String> },
    Spdy { offered: Vec<String> },
}

fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn upgrade_kind(headers: &HeaderMap) -> Option<Upgrade> {
    let upgrade = headers.get(header::UPGRADE)?.to_str().ok()?.trim();
    let connection_upgrade = header_list(headers, "connection")
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    if upgrade.eq_ignore_ascii_case("websocket") {
        let key = headers
            .get("sec-websocket-key")?
            .to_str()
            .ok()?
            .trim()
            .to_owned();
        return Some(Upgrade::WebSocket {
            key,
            offered: header_list(headers, "sec-websocket-protocol"),
        });
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Some(Upgrade::Spdy {
            offered: header_list(headers, "x-stream-protocol-version"),
        });
    }
    None
}

/// The first protocol the client offers that the server speaks (kube's order of preference).
fn negotiate(offered: &[String], supported: &[Subprotocol]) -> Option<Subprotocol> {
    offered
        .iter()
        .filter_map(|o| Subprotocol::parse(o))
        .find(|p| supported.contains(p))
}

/// All values of a repeated query parameter, in order.
fn query_all(raw: Option<&str>, key: &str) -> Vec<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn query_flag(raw: Option<&str>, key: &str) -> bool {
    query_all(raw, key)
        .last()
        .is_some_and(|v| matches!(v.as_str(), "true" | "1"))
}

/// The container a request names, or the only one; kube's messages otherwise.
fn pick_container<'a>(
    pod: &'a Value,
    name: &str,
    requested: Option<&str>,
) -> Result<&'a Value, ApiError> {
    let containers: Vec<&Value> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().collect())
        .unwrap_or_default();
    match requested {
        Some(c) if !c.is_empty() => containers
            .into_iter()
            .find(|x| x["name"].as_str() == Some(c))
            .ok_or_else(|| {
                ApiError::bad_request(format!("container {c} is not valid for pod {name}"))
            }),
        _ if containers.len() == 1 => Ok(containers[0]),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ))),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The container's literal `env` values (valueFrom is not resolved in the sandbox).
fn container_env(container: &Value, pod_name: &str) -> Vec<(String, String)> {
    let mut env = vec![("HOSTNAME".to_owned(), pod_name.to_owned())];
    if let Some(list) = container["env"].as_array() {
        for e in list {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    env
}

/// What the resolved request will run.
enum Work {
    Exec {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        options: Options,
    },
    Attach {
        key: String,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        stdin_once: bool,
        options: Options,
    },
    PortForward {
        host: String,
        pod: String,
        uid: String,
        /// The `ports` query (WebSocket channel port-forward only).
        ports: Vec<u16>,
    },
}

/// The `ports` query values (each may be a comma-separated list), as kube parses them.
fn parse_ports(raw: Option<&str>) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for value in query_all(raw, "ports") {
        for p in value.split(',') {
            let port = p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ApiError::bad_request(format!("unable to parse {p:?} as a port")))?;
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Serves `pods/{exec,attach,portforward}` (verbs get and create, like kube).
pub(crate) async fn serve(
    state: &Arc<State>,
    route: &ResourceRoute,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let kind = match route.subresource.as_str() {
        "exec" => Kind::Exec,
        "attach" => Kind::Attach,
        _ => Kind::PortForward,
    };
    let raw = req.uri().query().map(str::to_owned);
    let raw = raw.as_deref();
    let (ns, name) = (route.namespace.as_str(), route.name.as_str());
    let work = {
        let store = state.store();
        let pod = store
            .get("pods", ns, name)
            .ok_or_else(|| ApiError::not_found("pods", name))?;
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!(
                "cannot {} a container in a completed pod; current phase is {phase}",
                match kind {
                    Kind::Exec => "exec into",
                    Kind::Attach => "attach to",
                    Kind::PortForward => "port-forward to",
                }
            )));
        }
        let options = Options {
            stdin: query_flag(raw, "stdin"),
            stdout: query_flag(raw, "stdout"),
            stderr: query_flag(raw, "stderr"),
            tty: query_flag(raw, "tty"),
        };
        if kind != Kind::PortForward {
            if !(options.stdin || options.stdout || options.stderr) {
                return Err(ApiError::bad_request(
                    "you must specify at least one of stdin, stdout, stderr",
                ));
            }
            if options.tty && options.stderr {
                return Err(ApiError::bad_request(
                    "stdout and stderr cannot both be requested with a tty: set stderr=false",
                ));
            }
        }
        let container = query_all(raw, "container");
        match kind {
            Kind::Exec => {
                let argv = query_all(raw, "command");
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(ApiError::bad_request("you must specify at least 1 command"));
                }
                let c = pick_container(pod, name, container.last().map(String::as_str))?;
                Work::Exec {
                    argv,
                    env: container_env(c, name),
                    options,
                }
            }
            Kind::Attach => {
                let c = pick_container(pod, name, container.last().map(String::as_str))?;
                let cname = c["name"].as_str().unwrap_or_default();
                let mut argv = strings(&c["command"]);
                argv.extend(strings(&c["args"]));
                if argv.is_empty() {
                    // An echoing default: what an attacher writes comes back.
                    argv = vec!["cat".to_owned()];
                }
                Work::Attach {
                    key: format!("{ns}/{name}/{cname}"),
                    argv,
                    env: container_env(c, name),
                    stdin_once: c["stdinOnce"].as_bool().unwrap_or(false),
                    options,
                }
            }
            Kind::PortForward => Work::PortForward {
                host: pod["metadata"]["annotations"][FORWARD_HOST_ANNOTATION]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .unwrap_or("127.0.0.1")
                    .to_owned(),
                pod: name.to_owned(),
                uid: pod["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ports: parse_ports(raw)?,
            },
        }
    };
    let Some(upgrade) = upgrade_kind(req.headers()) else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = state.stop.clone();
    let processes = state.processes.clone();
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    match upgrade {
        Upgrade::WebSocket { key, offered } => {
            let supported: &[Subprotocol] = match kind {
                Kind::PortForward => WS_PORT_FORWARD,
                _ => WS_REMOTE_COMMAND,
            };
            let protocol = match negotiate(&offered, supported) {
                Some(p) => p,
                // No subprotocol at all means binary channels, as in kube.
                None if offered.is_empty() => Subprotocol::Channel,
                None => {
                    return Err(ApiError::bad_request(format!(
                        "unable to upgrade websocket connection: requested protocol(s) are not supported: {offered:?}; supports {:?}",
                        supported.iter().map(|p| p.as_str()).collect::<Vec<_>>()
                    )));
                }
            };
            if let Work::PortForward { ports, .. } = &work
                && protocol != Subprotocol::SpdyTunnelPortForward
            {
                // Channel framing: data 2i and error 2i+1 per port, all within one byte.
                if ports.is_empty() {
                    return Err(ApiError::bad_request(
                        "query parameter \"ports\" is required",
                    ));
                }
                if ports.len() > 127 {
                    return Err(ApiError::bad_request("at most 127 ports per connection"));
                }
            }
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let h = response.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&accept)
                    .map_err(|_| ApiError::bad_request("invalid Sec-WebSocket-Key"))?,
            );
            if !offered.is_empty() {
                h.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static(protocol.as_str()),
                );
            }
            tokio::spawn(async move {
                let upgraded = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!(error = %e, "websocket upgrade failed");
                        return;
                    }
                };
                let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                match work {
                    Work::PortForward { host, pod, uid, .. }
                        if protocol == Subprotocol::SpdyTunnelPortForward =>
                    {
                        let io = session::websocket_tunnel(ws);
                        portforward::serve(io, host, pod, uid, stop).await;
                    }
                    Work::PortForward {
                        host,
                        pod,
                        uid,
                        ports,
                    } => {
                        let target = portforward::Target { host, pod, uid };
                        portforward::serve_websocket(ws, protocol, ports, target, stop).await;
                    }
                    other => {
                        let (options, handler) = handler(other, processes);
                        session::serve_websocket(ws, protocol, options, handler, stop).await;
                    }
                }
            });
        }
        Upgrade::Spdy { offered } => {
            let supported: &[Subprotocol] = match kind {
                Kind::PortForward => &[Subprotocol::PortForward],
                _ => SPDY_REMOTE_COMMAND,
            };
            let protocol = match negotiate(&offered, supported) {
                Some(p) => p,
                None if offered.is_empty() => supported[supported.len() - 1],
                None => return Ok(protocol_mismatch(&offered, supported)),
            };
            let h = response.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                "x-stream-protocol-version",
                HeaderValue::from_static(protocol.as_str()),
            );
            tokio::spawn(async move {
                let upgraded = match on_upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!(error = %e, "spdy upgrade failed");
                        return;
                    }
                };
                let io = TokioIo::new(upgraded);
                match work {
                    Work::PortForward { host, pod, uid, .. } => {
                        portforward::serve(io, host, pod, uid, stop).await;
                    }
                    other => {
                        let (options, handler) = handler(other, processes);
                        session::serve_spdy(io, protocol, options, handler, stop).await;
                    }
                }
            });
        }
    }
    Ok(response)
}

/// The exec or attach work as a session handler.
fn handler(work: Work, processes: Arc<MainProcesses>) -> (Options, session::Handler) {
    match work {
        Work::Exec { argv, env, options } => (
            options,
            Box::new(move |streams| Box::pin(process::exec(argv, env, options.tty, streams))),
        ),
        Work::Attach {
            key,
            argv,
            env,
            stdin_once,
            options,
        } => (
            options,
            Box::new(move |streams| {
                Box::pin(process::attach(
                    processes, key, argv, env, stdin_once, options, streams,
                ))
            }),
        ),
        // Port-forward never reaches here; an empty success keeps this total.
        Work::PortForward { .. } => (
            Options::default(),
            Box::new(|_| Box::pin(async { session::Outcome::Success })),
        ),
    }
}

/// kube's answer when no stream protocol version fits: 403 naming the accepted ones.
fn protocol_mismatch(offered: &[String], supported: &[Subprotocol]) -> Response<Body> {
    let accepted: Vec<&str> = supported.iter().map(|p| p.as_str()).collect();
    let e = ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "unable to upgrade connection: unable to negotiate protocol: client supports {offered:?}, server accepts {accepted:?}"
        ),
        details: None,
    };
    let mut r = json_response(403, &e.to_status());
    for p in accepted {
        r.headers_mut().append(
            "x-accepted-stream-protocol-versions",
            HeaderValue::from_static(p),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_clients_order_among_supported() {
        let offered = vec![
            "v5.channel.k8s.io".to_owned(),
            "v4.channel.k8s.io".to_owned(),
        ];
        assert_eq!(
            negotiate(&offered, SPDY_REMOTE_COMMAND),
            Some(Subprotocol::V4Channel)
        );
        assert_eq!(
            negotiate(&offered, WS_REMOTE_COMMAND),
            Some(Subprotocol::V5Channel)
        );
        assert_eq!(negotiate(&["x".to_owned()], WS_REMOTE_COMMAND), None);
    }

    #[test]
    fn repeated_query_values_keep_their_order() {
        let q = Some("command=sh&command=-c&command=echo%20a%26b&stdout=true&stdout=false");
        assert_eq!(query_all(q, "command"), ["sh", "-c", "echo a&b"]);
        assert!(!query_flag(q, "stdout"));
        assert!(!query_flag(q, "stdin"));
    }
}
