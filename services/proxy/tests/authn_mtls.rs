//! mTLS as a second way in, through the real TLS listener (`server::serve_with`) and the
//! authenticator: a verified client certificate authenticates a request without a token; a
//! bearer token, when present, wins; a certificate from another CA never gets through.

mod authn_support;

use std::net::SocketAddr;
use std::sync::Arc;

use authn_support::*;
use bytes::Bytes;
use gatehouse_proxy::authn::{Authenticator, AuthnOptions};
use gatehouse_proxy::config::ClientCertMapping;
use gatehouse_proxy::server::{self, PeerCertificate};
use gatehouse_proxy::serving_cert::ServingCert;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

const ISS: &str = "https://issuer.test";

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf signed by `ca`: (certificate DER, PKCS#8 key DER, PEMs).
struct Leaf {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: &[&str],
) -> Leaf {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    Leaf {
        cert: cert.der().clone(),
        key: key.serialize_der(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

struct Harness {
    addr: SocketAddr,
    server_ca: CertificateDer<'static>,
    signing: SigningKey,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The TLS listener with a client CA, answering each request with who it authenticated as.
async fn start(client_ca: &CertifiedIssuer<'static, KeyPair>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server CA");
    let server_leaf = leaf(&server_ca, "proxy", None, &["localhost", "127.0.0.1"]);
    let (cert_file, key_file, ca_file, jwks) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("clients-ca.pem"),
        dir.path().join("jwks.json"),
    );
    std::fs::write(&cert_file, &server_leaf.cert_pem).unwrap();
    std::fs::write(&key_file, &server_leaf.key_pem).unwrap();
    std::fs::write(&ca_file, client_ca.pem()).unwrap();
    let signing = SigningKey::es256();
    write_jwks(&jwks, &[&signing]);

    let serving = ServingCert::load(&cert_file, &key_file).unwrap();
    let tls = server::server_tls(serving, Some(&ca_file)).unwrap();
    let issuer = issuer_config(&format!(
        "issuer: {ISS}\njwks_file: {}\naudiences: [gatehouse]\nalgorithms: [ES256]\n",
        jwks.display()
    ));
    let authn = Arc::new(
        Authenticator::new(
            &[issuer],
            AuthnOptions {
                client_certs: Some(ClientCertMapping {
                    principal_prefix: "x509:".into(),
                    ..ClientCertMapping::default()
                }),
                ..AuthnOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handler = move |request: Request<Incoming>, _peer: SocketAddr| {
        let authn = authn.clone();
        async move {
            let cert = request.extensions().get::<PeerCertificate>().cloned();
            let answer = match authn
                .authenticate(request.headers(), cert.as_ref().map(PeerCertificate::der))
                .await
            {
                Ok(v) => format!(
                    "ok {} groups={} issuer={}",
                    v.principal,
                    v.groups.join(","),
                    v.issuer
                ),
                Err(e) => format!("refused: {e}"),
            };
            Response::new(Full::new(Bytes::from(answer)))
        }
    };
    let options = server::Options::new(
        gatehouse_proxy::listener::ConnectionLimits::default(),
        gatehouse_proxy::listener::Observer::unregistered("proxy"),
    )
    .with_tls(tls);
    tokio::spawn(server::serve_with(
        listener,
        options,
        handler,
        shutdown.clone(),
    ));
    Harness {
        addr,
        server_ca: server_ca.der().clone(),
        signing,
        shutdown,
        _dir: dir,
    }
}

/// One GET over a fresh TLS connection, with an optional client certificate and header.
async fn get(
    h: &Harness,
    client: Option<&Leaf>,
    authorization: Option<&str>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(h.server_ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::get("/api").header("host", "localhost");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_verified_client_certificate_authenticates_a_request_without_a_token() {
    let clients = ca("Gatehouse clients CA");
    let h = start(&clients).await;
    let bot = leaf(&clients, "ci-bot", Some("deployers"), &[]);
    assert_eq!(
        get(&h, Some(&bot), None).await.unwrap(),
        "ok x509:ci-bot groups=deployers issuer=x509:CN=Gatehouse clients CA"
    );
    // The certificate is optional: without one (and without a token) the caller is told so.
    assert_eq!(
        get(&h, None, None).await.unwrap(),
        "refused: no bearer token was presented"
    );
}

#[tokio::test]
async fn the_bearer_token_wins_over_the_certificate_and_never_falls_back() {
    let clients = ca("Gatehouse clients CA");
    let h = start(&clients).await;
    let bot = leaf(&clients, "ci-bot", None, &[]);
    let token = h.signing.sign(&claims(ISS, "token-bot", 600));
    assert_eq!(
        get(&h, Some(&bot), Some(&format!("Bearer {token}")))
            .await
            .unwrap(),
        format!("ok token-bot groups= issuer={ISS}")
    );
    // A bad token is refused even though the certificate is good.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let answer = get(&h, Some(&bot), Some(&format!("Bearer {forged}")))
        .await
        .unwrap();
    assert!(answer.starts_with("refused:"), "{answer}");
    assert_eq!(
        get(&h, Some(&bot), Some("Basic dXNlcjpwYXNz"))
            .await
            .unwrap(),
        "refused: the Authorization header is not a single `Bearer` token"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let clients = ca("Gatehouse clients CA");
    let h = start(&clients).await;
    let rogue_ca = ca("Gatehouse clients CA");
    let rogue = leaf(&rogue_ca, "ci-bot", Some("deployers"), &[]);
    let outcome = get(&h, Some(&rogue), None).await;
    assert!(
        outcome.is_err(),
        "a rogue certificate got an answer: {outcome:?}"
    );
}
