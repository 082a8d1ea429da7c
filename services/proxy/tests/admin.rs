//! The admin port over real TCP, and the upstream readiness probe against a real TLS server
//! reached through kubeconfig files and an in-cluster service-account mount.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use gatehouse_proxy::admin::{Admin, Check};
use gatehouse_proxy::config::UpstreamConfig;
use gatehouse_proxy::forward::Upstream;
use gatehouse_proxy::metrics::{self, Metrics};
use gatehouse_proxy::upstream_config;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PROBE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The admin server

struct Running {
    addr: SocketAddr,
    draining: CancellationToken,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn start_admin(metrics: Metrics, checks: Vec<Check>) -> Running {
    let admin = Admin::bind("127.0.0.1:0".parse().unwrap(), metrics, checks)
        .await
        .unwrap();
    let addr = admin.local_addr();
    let (draining, stop) = (CancellationToken::new(), CancellationToken::new());
    let task = tokio::spawn(admin.serve(draining.clone(), stop.clone()));
    Running {
        addr,
        draining,
        stop,
        task,
    }
}

/// GET over plain HTTP: (status, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let response = tokio::time::timeout(
        PROBE,
        client.get(format!("http://{addr}{path}").parse().unwrap()),
    )
    .await
    .expect("the admin server answers in time")
    .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn fixed(name: &'static str, outcome: Result<(), &'static str>) -> Check {
    Check::new(name, move || async move { outcome.map_err(str::to_owned) })
}

#[tokio::test]
async fn healthz_readyz_and_metrics_answer() {
    let metrics = Metrics::new();
    metrics.request_finished("list", "allow", 200, 0.01);
    let admin = start_admin(
        metrics.clone(),
        vec![fixed("nats", Ok(())), fixed("upstream", Ok(()))],
    )
    .await;

    assert_eq!(get(admin.addr, "/healthz").await.2, "ok");
    let (status, _, body) = get(admin.addr, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "[+]shutdown ok\n[+]nats ok\n[+]upstream ok\nreadyz check passed\n"
    );

    let (status, content_type, body) = get(admin.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, metrics::CONTENT_TYPE);
    assert!(
        body.contains(
            r#"gatehouse_proxy_requests_total{verb="list",decision="allow",code="200"} 1"#
        ),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(get(admin.addr, "/nothing-here").await.0, 404);

    admin.stop.cancel();
    tokio::time::timeout(PROBE, admin.task)
        .await
        .expect("the admin server stops")
        .unwrap();
}

#[tokio::test]
async fn readyz_names_the_failing_check_and_fails_while_draining() {
    let admin = start_admin(
        Metrics::new(),
        vec![
            fixed("nats", Err("not connected to NATS")),
            fixed("upstream", Ok(())),
        ],
    )
    .await;
    let (status, _, body) = get(admin.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("[-]nats failed: not connected to NATS\n"),
        "{body}"
    );
    assert!(body.contains("[+]upstream ok\n"), "{body}");
    assert!(body.ends_with("readyz check failed\n"), "{body}");
    admin.stop.cancel();

    let admin = start_admin(Metrics::new(), vec![fixed("nats", Ok(()))]).await;
    assert_eq!(get(admin.addr, "/readyz").await.0, 200);
    admin.draining.cancel();
    let (status, _, body) = get(admin.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("[-]shutdown failed: draining"), "{body}");
    // Still alive, still scrapable while draining.
    assert_eq!(get(admin.addr, "/healthz").await.0, 200);
    assert_eq!(get(admin.addr, "/metrics").await.0, 200);
    admin.stop.cancel();
}

#[tokio::test]
async fn a_cached_check_runs_once_per_window() {
    let runs = Arc::new(AtomicUsize::new(0));
    let check = Check::new("upstream", {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    })
    .cached(Duration::from_secs(3600));
    let admin = start_admin(Metrics::new(), vec![check]).await;
    let probes = (0..5).map(|_| get(admin.addr, "/readyz"));
    for (status, _, _) in futures::future::join_all(probes).await {
        assert_eq!(status, 200);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    let runs = Arc::new(AtomicUsize::new(0));
    let check = Check::new("upstream", {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Err("down".to_owned())
            }
        }
    })
    .cached(Duration::ZERO);
    let admin2 = start_admin(Metrics::new(), vec![check]).await;
    assert_eq!(get(admin2.addr, "/readyz").await.0, 503);
    assert_eq!(get(admin2.addr, "/readyz").await.0, 503);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "an expired outcome is re-checked"
    );
    admin.stop.cancel();
    admin2.stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// A stand-in API server: TLS, optional client-certificate requirement, answers /readyz.

struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (cert PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    authorization: Option<String>,
    client_cert: bool,
}

struct ApiServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn api_server(
    pki: &Pki,
    names: &[&str],
    require_client_cert: bool,
    status: u16,
) -> ApiServer {
    let (cert_pem, key_pem) = pki.leaf(names);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = CancellationToken::new();
    tokio::spawn({
        let (seen, stop) = (seen.clone(), stop.clone());
        async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        seen.lock().unwrap().push(Seen {
                            path: request.uri().path().to_owned(),
                            authorization: request
                                .headers()
                                .get(http::header::AUTHORIZATION)
                                .map(|v| v.to_str().unwrap().to_owned()),
                            client_cert,
                        });
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    });
    ApiServer { addr, seen, stop }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A kubeconfig as `kubectl config view --raw` prints it.
fn kubeconfig(server: &str, cluster_extra: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: proxy\npreferences: {{}}\n\
         clusters:\n- cluster:\n    server: {server}\n{cluster_extra}  name: target\n\
         contexts:\n- context:\n    cluster: target\n    user: gatehouse-proxy\n  name: proxy\n\
         users:\n- name: gatehouse-proxy\n  user:\n{user}"
    )
}

fn from_kubeconfig(path: &Path) -> Result<Upstream, String> {
    Upstream::new(&UpstreamConfig {
        kubeconfig: Some(path.to_owned()),
        connect_timeout: Duration::from_secs(5),
        ..UpstreamConfig::default()
    })
}

#[tokio::test]
async fn kubeconfig_client_certificate_and_token_reach_the_api_server() {
    let pki = Pki::new();
    let server = api_server(&pki, &["127.0.0.1"], true, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = pki.leaf(&["gatehouse-proxy"]);
    write(dir.path(), "client.crt", &client_cert);
    write(dir.path(), "client.key", &client_key);
    let path = write(
        dir.path(),
        "kubeconfig",
        &kubeconfig(
            &format!("https://{}", server.addr),
            &format!("    certificate-authority-data: {}\n", b64(&pki.ca_pem)),
            "    client-certificate: client.crt\n    client-key: client.key\n    token: proxy-sa-token\n",
        ),
    );
    let upstream = from_kubeconfig(&path).unwrap();
    assert_eq!(upstream.url(), format!("https://{}", server.addr));
    upstream.probe(PROBE).await.unwrap();
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Seen {
            path: "/readyz".into(),
            authorization: Some("Bearer proxy-sa-token".into()),
            client_cert: true,
        }]
    );

    // Without the client certificate, this API server refuses the handshake.
    let path = write(
        dir.path(),
        "kubeconfig",
        &kubeconfig(
            &format!("https://{}", server.addr),
            &format!("    certificate-authority-data: {}\n", b64(&pki.ca_pem)),
            "    token: proxy-sa-token\n",
        ),
    );
    let upstream = from_kubeconfig(&path).unwrap();
    assert!(upstream.probe(PROBE).await.is_err());
}

#[tokio::test]
async fn tls_server_name_and_an_untrusted_server() {
    let pki = Pki::new();
    // A certificate for the name "kubernetes" only, served on 127.0.0.1.
    let server = api_server(&pki, &["kubernetes"], false, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.crt", &pki.ca_pem);
    let url = format!("https://{}", server.addr);
    let named = write(
        dir.path(),
        "named",
        &kubeconfig(
            &url,
            &format!(
                "    certificate-authority: {}\n    tls-server-name: kubernetes\n",
                ca.display()
            ),
            "    token: t\n",
        ),
    );
    from_kubeconfig(&named).unwrap().probe(PROBE).await.unwrap();

    let unnamed = write(
        dir.path(),
        "unnamed",
        &kubeconfig(
            &url,
            &format!("    certificate-authority: {}\n", ca.display()),
            "    token: t\n",
        ),
    );
    let err = from_kubeconfig(&unnamed)
        .unwrap()
        .probe(PROBE)
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Another CA's certificate is not trusted.
    let other = Pki::new();
    let wrong_ca = write(
        dir.path(),
        "wrong",
        &kubeconfig(
            &url,
            &format!(
                "    certificate-authority-data: {}\n    tls-server-name: kubernetes\n",
                b64(&other.ca_pem)
            ),
            "    token: t\n",
        ),
    );
    assert!(
        from_kubeconfig(&wrong_ca)
            .unwrap()
            .probe(PROBE)
            .await
            .is_err()
    );
    assert!(
        server
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.authorization.is_some())
    );
    assert_eq!(
        server.seen.lock().unwrap().len(),
        1,
        "only the verified server saw the token"
    );
}

#[tokio::test]
async fn in_cluster_service_account_reaches_the_api_server() {
    let pki = Pki::new();
    let server = api_server(&pki, &["127.0.0.1"], false, 200).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "projected-token\n");
    write(dir.path(), "ca.crt", &pki.ca_pem);
    let port = server.addr.port().to_string();
    let resolved = upstream_config::in_cluster(dir.path(), |name: &str| match name {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".to_owned()),
        "KUBERNETES_SERVICE_PORT" => Some(port.clone()),
        _ => None,
    })
    .unwrap();
    let upstream = Upstream::from_resolved(&resolved, Duration::from_secs(5), false).unwrap();
    upstream.probe(PROBE).await.unwrap();
    assert_eq!(
        server.seen.lock().unwrap()[0].authorization.as_deref(),
        Some("Bearer projected-token")
    );
}

#[tokio::test]
async fn a_refused_credential_makes_the_proxy_unready() {
    let pki = Pki::new();
    let server = api_server(&pki, &["127.0.0.1"], false, 401).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "kubeconfig",
        &kubeconfig(
            &format!("https://{}", server.addr),
            &format!("    certificate-authority-data: {}\n", b64(&pki.ca_pem)),
            "    token: stale-token\n",
        ),
    );
    let upstream = Arc::new(from_kubeconfig(&path).unwrap());
    let check = Check::new("upstream", move || {
        let upstream = upstream.clone();
        async move { upstream.probe(PROBE).await }
    });
    let admin = start_admin(Metrics::new(), vec![check]).await;
    let (status, _, body) = get(admin.addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains(
            "[-]upstream failed: the API server refused the proxy's credential (HTTP 401)"
        ),
        "{body}"
    );
    assert!(!body.contains("stale-token"), "{body}");
    admin.stop.cancel();
}
