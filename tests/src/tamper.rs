//! A hostile API server for the masking tests: a TLS server in front of the real
//! kube-apiserver that passes every request on, except that for the requests a test marks it
//! reads them differently (a list served as a watch, a watch as a list), asks for another
//! encoding (a `Table`, `PartialObjectMetadataList`, protobuf), or re-encodes the real answer
//! (CBOR, gzip, protobuf labelled as JSON). A real kube-apiserver cannot be made to answer what
//! was not asked; this is what an upstream that parses a request differently from the proxy,
//! an aggregated API server, or a compromised hop can do. The answers themselves are the real
//! apiserver's.
//!
//! A request is marked by a `gatehouse-tamper=<how>` term in its `labelSelector`, which is taken
//! out before the request goes on.
//!
//! [`TamperedProxy`] is a second Gatehouse proxy of the same stack (same policy, NATS, evidence)
//! whose upstream is the tamperer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use gatehouse_proxy::ProxyConfig;
use gatehouse_proxy::http_client::{HttpsClient, client_tls, https_client};
use http::{HeaderValue, Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The label-selector term that marks a request for tampering.
pub const MARK: &str = "gatehouse-tamper";

/// What the tamperer does to a marked request or its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Adds `watch=1` (and a short `timeoutSeconds`): a list is answered with a watch stream.
    ListAsWatch,
    /// Drops `watch`: a watch is answered with a list.
    WatchAsList,
    /// Asks for a `Table` with whole objects in its rows.
    Table,
    /// Asks for a `PartialObjectMetadataList`.
    Metadata,
    /// Asks for protobuf.
    Protobuf,
    /// Asks for protobuf and labels the answer `application/json`.
    ProtobufAsJson,
    /// Re-encodes the JSON answer as CBOR (`application/cbor`).
    Cbor,
    /// Compresses the JSON answer (`Content-Encoding: gzip`).
    Gzip,
}

impl Tamper {
    pub const ALL: [Tamper; 8] = [
        Tamper::ListAsWatch,
        Tamper::WatchAsList,
        Tamper::Table,
        Tamper::Metadata,
        Tamper::Protobuf,
        Tamper::ProtobufAsJson,
        Tamper::Cbor,
        Tamper::Gzip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tamper::ListAsWatch => "list-as-watch",
            Tamper::WatchAsList => "watch-as-list",
            Tamper::Table => "table",
            Tamper::Metadata => "metadata",
            Tamper::Protobuf => "protobuf",
            Tamper::ProtobufAsJson => "protobuf-as-json",
            Tamper::Cbor => "cbor",
            Tamper::Gzip => "gzip",
        }
    }

    fn from_name(name: &str) -> Option<Tamper> {
        Tamper::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The query parameter that marks a request: `labelSelector=gatehouse-tamper=<how>`.
    pub fn selector(self) -> String {
        format!("labelSelector={MARK}%3D{}", self.name())
    }
}

/// A Gatehouse proxy whose upstream is the tamperer in front of the real apiserver.
pub struct TamperedProxy {
    /// `https://127.0.0.1:PORT` of the proxy.
    pub url: String,
    pub admin_addr: SocketAddr,
    stop: CancellationToken,
    proxy: tokio::task::JoinHandle<()>,
    tamperer: tokio::task::JoinHandle<()>,
}

impl TamperedProxy {
    /// Starts the tamperer and a second proxy configured like `stack`'s first one.
    pub async fn start(stack: &gatehouse_up::Stack) -> Result<Self> {
        let plane = stack
            .cluster
            .control_plane()
            .context("tampering needs the local control plane")?;
        let upstream = plane.url();
        let client = https_client(client_tls(Some(plane.ca_file()), false)?, DIAL);
        let ca = gatehouse_sandbox::pki::LocalCa::load_or_generate(
            &stack.dir.join("tls"),
            "Gatehouse demo CA",
        )?;
        let cert = ca.issue_server_cert(&["127.0.0.1"])?;
        let tls = gatehouse_sandbox::pki::server_tls_config(&cert.cert_pem, &cert.key_pem)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let tamper_url = format!("https://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let state = Arc::new(Tamperer { upstream, client });
        let tamperer = tokio::spawn(serve(listener, tls, state, stop.clone()));

        let text = std::fs::read_to_string(stack.dir.join("config").join("proxy.yaml"))?;
        let mut config: yaml_serde::Value = yaml_serde::from_str(&text)?;
        let map = config
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("proxy.yaml is not a mapping"))?;
        map.insert("listen".into(), "127.0.0.1:0".into());
        map.insert("admin_listen".into(), "127.0.0.1:0".into());
        map.insert("replica".into(), "tampered".into());
        let upstream = map
            .get_mut("upstream")
            .and_then(yaml_serde::Value::as_mapping_mut)
            .ok_or_else(|| anyhow!("proxy.yaml has no upstream"))?;
        upstream.insert("url".into(), tamper_url.into());
        upstream.insert(
            "ca_file".into(),
            stack
                .dir
                .join("tls")
                .join("ca.pem")
                .display()
                .to_string()
                .into(),
        );
        let config: ProxyConfig = yaml_serde::from_value(config)?;
        let proxy = gatehouse_proxy::Proxy::build(config).await?;
        let url = format!("https://{}", proxy.local_addr());
        let admin_addr = proxy.admin_addr();
        let proxy = tokio::spawn(proxy.serve(stop.clone()));
        Ok(Self {
            url,
            admin_addr,
            stop,
            proxy,
            tamperer,
        })
    }

    /// Stops the proxy (it drains) and the tamperer.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.proxy.await?;
        self.tamperer.await?;
        Ok(())
    }
}

const DIAL: Duration = Duration::from_secs(5);

struct Tamperer {
    upstream: String,
    client: HttpsClient<Full<Bytes>>,
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<Tamperer>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        connections.spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.handle(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    connections.shutdown().await;
}

impl Tamperer {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        match self.forward(request).await {
            Ok(response) => response,
            Err(e) => {
                let mut response = Response::new(full(format!("tamperer: {e:#}")));
                *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                response
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Body>> {
        let (mut parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let (query, tamper) = unmark(parts.uri.query().unwrap_or_default());
        let mut query = query;
        match tamper {
            // A short timeout, so the stream the list becomes ends.
            Some(Tamper::ListAsWatch) => {
                query.retain(|(k, _)| k != "timeoutSeconds");
                query.push(("watch".into(), "1".into()));
                query.push(("timeoutSeconds".into(), "2".into()));
            }
            Some(Tamper::WatchAsList) => query.retain(|(k, _)| k != "watch"),
            _ => {}
        }
        let accept = match tamper {
            Some(Tamper::Table) => Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
            Some(Tamper::Metadata) => {
                Some("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")
            }
            Some(Tamper::Protobuf | Tamper::ProtobufAsJson) => {
                Some("application/vnd.kubernetes.protobuf")
            }
            _ => None,
        };
        if let Some(accept) = accept {
            parts
                .headers
                .insert(header::ACCEPT, HeaderValue::from_static(accept));
        }
        if tamper == Some(Tamper::Table) {
            query.push(("includeObject".into(), "Object".into()));
        }
        let mut uri = format!("{}{}", self.upstream, parts.uri.path());
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&query)
                    .finish(),
            );
        }
        parts.uri = uri.parse()?;
        parts.headers.remove(header::HOST);
        let response = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (mut parts, body) = response.into_parts();
        let re_encode = match tamper {
            Some(Tamper::Cbor) => Some("application/cbor"),
            Some(Tamper::Gzip) => Some("application/json"),
            Some(Tamper::ProtobufAsJson) => Some("application/json"),
            _ => None,
        };
        let Some(content_type) = re_encode else {
            return Ok(Response::from_parts(
                parts,
                body.map_err(Into::into).boxed_unsync(),
            ));
        };
        let bytes = body.collect().await?.to_bytes();
        let bytes = match tamper {
            Some(Tamper::Cbor) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)?;
                let mut out = Vec::new();
                ciborium::into_writer(&value, &mut out)?;
                out
            }
            Some(Tamper::Gzip) => {
                use std::io::Write as _;
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&bytes)?;
                parts
                    .headers
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                gz.finish()?
            }
            _ => bytes.to_vec(),
        };
        parts
            .headers
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, full(bytes)))
    }
}

/// The query without the tamper mark, and the mark.
fn unmark(query: &str) -> (Vec<(String, String)>, Option<Tamper>) {
    let mut tamper = None;
    let pairs = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter_map(|(k, v)| {
            if k != "labelSelector" {
                return Some((k, v));
            }
            let terms: Vec<&str> = v
                .split(',')
                .filter(
                    |term| match term.strip_prefix(MARK).and_then(|r| r.strip_prefix('=')) {
                        Some(how) => {
                            tamper = Tamper::from_name(how);
                            false
                        }
                        None => true,
                    },
                )
                .collect();
            (!terms.is_empty()).then(|| (k, terms.join(",")))
        })
        .collect();
    (pairs, tamper)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
