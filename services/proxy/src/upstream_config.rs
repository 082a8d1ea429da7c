//! Where the API server is and which credential the proxy uses for it, from one of the three
//! forms of [`UpstreamConfig`]: explicit settings, a kubeconfig file, or the pod's service
//! account.
//!
//! Module map:
//! - [`resolve`]: [`UpstreamConfig`] → [`ResolvedUpstream`] (reads the kubeconfig or the
//!   service-account mount; token *files* are only named here, [`crate::forward`] reads them).
//! - [`from_kubeconfig`]: a kubeconfig's context → server, CA, token / token file / client
//!   certificate. Relative paths are relative to the kubeconfig's directory, as with kubectl.
//! - [`in_cluster`]: `KUBERNETES_SERVICE_HOST` / `_PORT`, `token` and `ca.crt`.
//! - [`ResolvedUpstream::client_tls`]: the rustls client config (roots, client certificate).
//!
//! Refused with a message saying why: exec credential plugins and auth-provider entries (the
//! proxy runs no commands), basic auth, proxies, and `insecure-skip-tls-verify` (the proxy's
//! credential can impersonate anyone, so it is only ever sent to a verified server).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::UpstreamConfig;

/// Where a pod's service-account token and CA are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Which certificates the API server's certificate must chain to.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The Mozilla roots (an API server behind a publicly trusted certificate).
    PublicRoots,
    /// Exactly these CA certificates.
    Bundle(Vec<CertificateDer<'static>>),
}

/// The proxy's bearer credential for the API server.
#[derive(Clone)]
pub enum Credential {
    None,
    /// Read at start and re-read every minute (projected tokens rotate).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
    /// Given inline (a kubeconfig's `token`).
    Inline(Arc<str>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

/// A client certificate chain and its key, presented to the API server.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Everything needed to reach the API server as the proxy.
#[derive(Clone, Debug)]
pub struct ResolvedUpstream {
    /// `https://…`, without a trailing `/`.
    pub url: String,
    pub trust: Trust,
    pub credential: Credential,
    pub client_identity: Option<ClientIdentity>,
    /// The name to verify the server's certificate against, when not the URL's host.
    pub tls_server_name: Option<String>,
    /// Where this came from, for logs: `url`, `kubeconfig PATH (context NAME)`, `in-cluster`.
    pub origin: String,
}

/// Resolves the configured form. Fails with a message naming the file or setting at fault.
pub fn resolve(config: &UpstreamConfig) -> Result<ResolvedUpstream, String> {
    config.validate()?;
    if let Some(path) = &config.kubeconfig {
        return from_kubeconfig(path, config.context.as_deref());
    }
    if config.in_cluster {
        let dir = config
            .service_account_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR));
        return in_cluster(&dir, |name| std::env::var(name).ok());
    }
    let url = config
        .url
        .as_deref()
        .ok_or("upstream: no API server configured")?;
    let trust = match &config.ca_file {
        Some(path) => Trust::Bundle(read_ca_file(path, "upstream.ca_file")?),
        None => Trust::PublicRoots,
    };
    let credential = match (&config.token_file, &config.token_env) {
        (Some(_), Some(_)) => return Err("upstream: set token_file or token_env, not both".into()),
        (Some(path), None) => Credential::File(path.clone()),
        (None, Some(name)) => Credential::Env(name.clone()),
        (None, None) => Credential::None,
    };
    Ok(ResolvedUpstream {
        url: url.trim_end_matches('/').to_owned(),
        trust,
        credential,
        client_identity: None,
        tls_server_name: None,
        origin: "upstream.url".into(),
    })
}

/// The pod's service account: the API server from `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT` (looked up with `env`), the token and CA from `dir`.
pub fn in_cluster(
    dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ResolvedUpstream, String> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let (Some(host), Some(port)) = (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(
            "upstream.in_cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT \
                    are not set; is the proxy running in a pod?"
                .into(),
        );
    };
    let (host, port) = (host.trim(), port.trim());
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "upstream.in_cluster: KUBERNETES_SERVICE_PORT {port:?} is not a port number"
        ));
    }
    // An IPv6 service address needs brackets in a URL.
    let url = if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    url.parse::<http::Uri>()
        .map_err(|e| format!("upstream.in_cluster: {url:?} is not a URL: {e}"))?;
    let token = dir.join("token");
    if !token.is_file() {
        return Err(format!(
            "upstream.in_cluster: no service-account token at {} (is automountServiceAccountToken \
             off?)",
            token.display()
        ));
    }
    let ca = read_ca_file(&dir.join("ca.crt"), "upstream.in_cluster")?;
    Ok(ResolvedUpstream {
        url,
        trust: Trust::Bundle(ca),
        credential: Credential::File(token),
        client_identity: None,
        tls_server_name: None,
        origin: format!("in-cluster service account ({})", dir.display()),
    })
}

/// A kubeconfig file as `kubectl config view --raw` writes it.
#[derive(Debug, Deserialize)]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default, rename = "current-context")]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
struct Cluster {
    server: String,
    #[serde(default, rename = "certificate-authority")]
    certificate_authority: Option<PathBuf>,
    #[serde(default, rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
    #[serde(default, rename = "insecure-skip-tls-verify")]
    insecure_skip_tls_verify: bool,
    #[serde(default, rename = "tls-server-name")]
    tls_server_name: Option<String>,
    #[serde(default, rename = "proxy-url")]
    proxy_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Debug, Default, Deserialize)]
struct User {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(default, rename = "client-certificate")]
    client_certificate: Option<PathBuf>,
    #[serde(default, rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(default, rename = "client-key")]
    client_key: Option<PathBuf>,
    #[serde(default, rename = "client-key-data")]
    client_key_data: Option<String>,
    #[serde(default)]
    username: Option<IgnoredAny>,
    #[serde(default)]
    password: Option<IgnoredAny>,
    #[serde(default)]
    exec: Option<IgnoredAny>,
    #[serde(default, rename = "auth-provider")]
    auth_provider: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

/// The API server and credential of `context` (default: the `current-context`) in the
/// kubeconfig at `path`.
pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<ResolvedUpstream, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("upstream.kubeconfig {shown}: {e}"))?;
    let config: Kubeconfig = yaml_serde::from_str(&text)
        .map_err(|e| format!("upstream.kubeconfig {shown}: not a kubeconfig: {e}"))?;
    // kubectl resolves relative file references against the kubeconfig's own directory.
    let base = path.parent().unwrap_or(Path::new("."));
    let at = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let context_name = match context {
        Some(name) => name.to_owned(),
        None => config
            .current_context
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                format!(
                    "upstream.kubeconfig {shown}: no current-context; name one with \
                     upstream.context"
                )
            })?,
    };
    let ctx = &config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.contexts.iter().map(|c| c.name.as_str()).collect();
            format!(
                "upstream.kubeconfig {shown}: no context {context_name:?} (it has: {})",
                known.join(", ")
            )
        })?
        .context;
    let fail =
        |what: String| format!("upstream.kubeconfig {shown}, context {context_name}: {what}");
    let cluster = &config
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .ok_or_else(|| fail(format!("no cluster {:?}", ctx.cluster)))?
        .cluster;
    let cluster_fail = |what: &str| fail(format!("cluster {}: {what}", ctx.cluster));
    if cluster.insecure_skip_tls_verify {
        return Err(cluster_fail(
            "insecure-skip-tls-verify is refused: the proxy's credential can impersonate any \
             user, so it is only sent to a server whose certificate is verified; give the \
             cluster a certificate-authority(-data)",
        ));
    }
    if cluster.proxy_url.is_some() {
        return Err(cluster_fail(
            "proxy-url is not supported; the proxy connects to the API server directly",
        ));
    }
    let uri: http::Uri = cluster
        .server
        .parse()
        .map_err(|e| cluster_fail(&format!("server {:?}: {e}", cluster.server)))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(cluster_fail(&format!(
            "server {:?} must be an https:// URL: the proxy sends its own credential there",
            cluster.server
        )));
    }
    let trust = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => {
            let pem = decode_data(data)
                .map_err(|e| cluster_fail(&format!("certificate-authority-data: {e}")))?;
            Trust::Bundle(
                parse_certs(&pem)
                    .map_err(|e| cluster_fail(&format!("certificate-authority-data: {e}")))?,
            )
        }
        (None, Some(file)) => Trust::Bundle(read_ca_file(
            &at(file),
            &format!("upstream.kubeconfig {shown}: certificate-authority"),
        )?),
        (None, None) => Trust::PublicRoots,
    };

    if ctx.user.is_empty() {
        return Err(fail(
            "the context names no user; the proxy needs a credential allowed to impersonate".into(),
        ));
    }
    let user = config
        .users
        .iter()
        .find(|u| u.name == ctx.user)
        .ok_or_else(|| fail(format!("no user {:?}", ctx.user)))?
        .user
        .as_ref();
    let empty = User::default();
    let user = user.unwrap_or(&empty);
    let user_fail = |what: &str| fail(format!("user {}: {what}", ctx.user));
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(user_fail(
            "exec credential plugins and auth-provider entries are not supported (the proxy runs \
             no commands); give the proxy a token, tokenFile or client certificate, or use \
             upstream.in_cluster",
        ));
    }
    if user.username.is_some() || user.password.is_some() {
        return Err(user_fail(
            "basic authentication (username / password) is not supported; use a token or a \
             client certificate",
        ));
    }
    // As client-go: a token file, re-read as it rotates, wins over an inline token.
    let credential = match (&user.token_file, &user.token) {
        (Some(file), _) => {
            let file = at(file);
            if !file.is_file() {
                return Err(user_fail(&format!(
                    "tokenFile {} does not exist",
                    file.display()
                )));
            }
            Credential::File(file)
        }
        (None, Some(token)) if !token.trim().is_empty() => Credential::Inline(token.trim().into()),
        _ => Credential::None,
    };
    let cert = pem_source(
        &user.client_certificate_data,
        &user.client_certificate,
        &at,
        "client-certificate",
    )
    .map_err(|e| user_fail(&e))?;
    let key = pem_source(&user.client_key_data, &user.client_key, &at, "client-key")
        .map_err(|e| user_fail(&e))?;
    let client_identity = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain =
                parse_certs(&cert).map_err(|e| user_fail(&format!("client-certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| user_fail(&format!("client-key: not a PEM private key ({e})")))?;
            Some(ClientIdentity {
                chain,
                key: Arc::new(key),
            })
        }
        (None, None) => None,
        _ => {
            return Err(user_fail(
                "a client certificate needs both client-certificate(-data) and client-key(-data)",
            ));
        }
    };
    if matches!(credential, Credential::None) && client_identity.is_none() {
        return Err(user_fail(
            "no token, tokenFile or client certificate; the proxy needs a credential allowed to \
             impersonate users and groups",
        ));
    }
    Ok(ResolvedUpstream {
        url: cluster.server.trim_end_matches('/').to_owned(),
        trust,
        credential,
        client_identity,
        tls_server_name: cluster.tls_server_name.clone().filter(|n| !n.is_empty()),
        origin: format!("kubeconfig {shown} (context {context_name})"),
    })
}

impl ResolvedUpstream {
    /// The rustls client config: the trusted roots and, if any, the client certificate.
    pub fn client_tls(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.trust {
            Trust::PublicRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Trust::Bundle(certs) => {
                for cert in certs {
                    roots
                        .add(cert.clone())
                        .map_err(|e| format!("upstream CA certificate: {e}"))?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("upstream TLS: {e}"))?
            .with_root_certificates(roots);
        match &self.client_identity {
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|e| {
                    format!("upstream client certificate and key do not go together: {e}")
                }),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// PEM bytes from `<name>-data` (base64) or the file `<name>`; `-data` wins, as with kubectl.
fn pem_source(
    data: &Option<String>,
    file: &Option<PathBuf>,
    at: &dyn Fn(&Path) -> PathBuf,
    name: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (data, file) {
        (Some(data), _) => decode_data(data)
            .map(Some)
            .map_err(|e| format!("{name}-data: {e}")),
        (None, Some(file)) => {
            let file = at(file);
            std::fs::read(&file)
                .map(Some)
                .map_err(|e| format!("{name} {}: {e}", file.display()))
        }
        (None, None) => Ok(None),
    }
}

/// A kubeconfig `*-data` value: base64 of PEM.
fn decode_data(data: &str) -> Result<Vec<u8>, String> {
    let compact: String = data.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| "not base64".to_owned())
}

fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

fn read_ca_file(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{what}: {}: {e}", path.display()))?;
    parse_certs(&pem).map_err(|e| format!("{what}: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        ca_pem: String,
        client_cert_pem: String,
        client_key_pem: String,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["gatehouse-proxy".to_owned()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn kubeconfig(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\npreferences: {{}}\ncurrent-context: main\n\
             clusters:\n- name: c1\n  cluster:\n{cluster}\n\
             users:\n- name: u1\n  user:\n{user}\n\
             contexts:\n- name: main\n  context:\n    cluster: c1\n    user: u1\n    namespace: default\n\
             - name: other\n  context:\n    cluster: c1\n    user: nobody\n"
        )
    }

    #[test]
    fn kubeconfig_with_inline_data_and_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki();
        let text = kubeconfig(
            &format!(
                "    server: https://10.0.0.1:6443/\n    certificate-authority-data: {}\n    tls-server-name: kubernetes",
                b64(&pki.ca_pem)
            ),
            &format!(
                "    client-certificate-data: {}\n    client-key-data: {}",
                b64(&pki.client_cert_pem),
                b64(&pki.client_key_pem)
            ),
        );
        let path = write(dir.path(), "config", &text);
        let up = from_kubeconfig(&path, None).unwrap();
        assert_eq!(up.url, "https://10.0.0.1:6443");
        assert!(matches!(&up.trust, Trust::Bundle(c) if c.len() == 1));
        assert!(matches!(up.credential, Credential::None));
        assert_eq!(up.client_identity.as_ref().unwrap().chain.len(), 1);
        assert_eq!(up.tls_server_name.as_deref(), Some("kubernetes"));
        up.client_tls().unwrap();
        assert!(up.origin.contains("context main"));
    }

    #[test]
    fn kubeconfig_file_references_are_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki();
        std::fs::create_dir(dir.path().join("pki")).unwrap();
        write(dir.path(), "pki/ca.crt", &pki.ca_pem);
        write(dir.path(), "pki/proxy.token", "abc\n");
        let text = kubeconfig(
            "    server: https://api.example:6443\n    certificate-authority: pki/ca.crt",
            "    token: inline-loses\n    tokenFile: pki/proxy.token",
        );
        let path = write(dir.path(), "config", &text);
        let up = from_kubeconfig(&path, Some("main")).unwrap();
        assert!(matches!(&up.trust, Trust::Bundle(_)));
        match &up.credential {
            Credential::File(file) => assert_eq!(file, &dir.path().join("pki/proxy.token")),
            other => panic!("expected a token file, got {other:?}"),
        }
        assert!(!format!("{:?}", up.credential).contains("inline-loses"));
    }

    #[test]
    fn an_inline_token_is_kept_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let text = kubeconfig(
            "    server: https://api.example:6443",
            "    token: s3cret-token",
        );
        let path = write(dir.path(), "config", &text);
        let up = from_kubeconfig(&path, None).unwrap();
        assert!(matches!(&up.credential, Credential::Inline(t) if &**t == "s3cret-token"));
        assert!(matches!(up.trust, Trust::PublicRoots));
        assert!(!format!("{up:?}").contains("s3cret"));
    }

    #[test]
    fn kubeconfig_refusals_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "    server: https://a:6443\n    insecure-skip-tls-verify: true",
                "    token: t",
                None,
                "insecure-skip-tls-verify is refused",
            ),
            (
                "    server: https://a:6443",
                "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n      args: [eks, get-token]",
                None,
                "exec credential plugins",
            ),
            (
                "    server: https://a:6443",
                "    auth-provider:\n      name: gcp",
                None,
                "auth-provider",
            ),
            (
                "    server: https://a:6443",
                "    username: admin\n    password: hunter2",
                None,
                "basic authentication",
            ),
            (
                "    server: http://a:8080",
                "    token: t",
                None,
                "must be an https:// URL",
            ),
            (
                "    server: https://a:6443",
                "    client-certificate-data: Zm9v",
                None,
                "needs both",
            ),
            (
                "    server: https://a:6443",
                "    {}",
                None,
                "no token, tokenFile",
            ),
            (
                "    server: https://a:6443",
                "    token: t",
                Some("missing"),
                "no context \"missing\" (it has: main, other)",
            ),
            (
                "    server: https://a:6443",
                "    token: t",
                Some("other"),
                "no user \"nobody\"",
            ),
            (
                "    server: https://a:6443\n    certificate-authority-data: '%%%'",
                "    token: t",
                None,
                "certificate-authority-data: not base64",
            ),
            (
                "    server: https://a:6443\n    certificate-authority: missing-ca.crt",
                "    token: t",
                None,
                "missing-ca.crt",
            ),
            (
                "    server: https://a:6443",
                "    tokenFile: nowhere.token",
                None,
                "tokenFile",
            ),
        ];
        for (cluster, user, context, expected) in cases {
            let path = write(dir.path(), "config", &kubeconfig(cluster, user));
            let err = from_kubeconfig(&path, context).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
            assert!(err.contains("upstream.kubeconfig"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = from_kubeconfig(&dir.path().join("absent"), None).unwrap_err();
        assert!(err.contains("absent"), "{err}");
        let path = write(dir.path(), "config", "clusters: []\ncontexts: []\n");
        let err = from_kubeconfig(&path, None).unwrap_err();
        assert!(err.contains("no current-context"), "{err}");
        let path = write(dir.path(), "config", "clusters: 7\n");
        let err = from_kubeconfig(&path, None).unwrap_err();
        assert!(err.contains("not a kubeconfig"), "{err}");
    }

    #[test]
    fn kubectl_reads_the_same_kubeconfig() {
        // The fixtures are real kubeconfigs: kubectl itself agrees on the server and context.
        let dir = tempfile::tempdir().unwrap();
        let pki = pki();
        let text = kubeconfig(
            &format!(
                "    server: https://10.0.0.1:6443\n    certificate-authority-data: {}",
                b64(&pki.ca_pem)
            ),
            "    token: t",
        );
        let path = write(dir.path(), "config", &text);
        let Ok(out) = std::process::Command::new("kubectl")
            .args(["config", "view", "--raw", "--minify", "-o"])
            .arg("jsonpath={.clusters[0].cluster.server}")
            .env("KUBECONFIG", &path)
            .output()
        else {
            eprintln!("kubectl is not installed; skipping the cross-check");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let up = from_kubeconfig(&path, None).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), up.url);
    }

    #[test]
    fn in_cluster_reads_the_service_account_mount() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki();
        write(dir.path(), "token", "projected");
        write(dir.path(), "ca.crt", &pki.ca_pem);
        let env = |host: &'static str| {
            move |name: &str| match name {
                "KUBERNETES_SERVICE_HOST" => Some(host.to_owned()),
                "KUBERNETES_SERVICE_PORT" => Some("443".to_owned()),
                _ => None,
            }
        };
        let up = in_cluster(dir.path(), env("10.96.0.1")).unwrap();
        assert_eq!(up.url, "https://10.96.0.1:443");
        assert!(matches!(&up.credential, Credential::File(p) if p == &dir.path().join("token")));
        assert!(matches!(&up.trust, Trust::Bundle(c) if c.len() == 1));
        let up = in_cluster(dir.path(), env("fd00::1")).unwrap();
        assert_eq!(up.url, "https://[fd00::1]:443");

        let err = in_cluster(dir.path(), |_: &str| None).unwrap_err();
        assert!(err.contains("KUBERNETES_SERVICE_HOST"), "{err}");
        std::fs::remove_file(dir.path().join("token")).unwrap();
        let err = in_cluster(dir.path(), env("10.96.0.1")).unwrap_err();
        assert!(err.contains("no service-account token"), "{err}");
    }

    #[test]
    fn exactly_one_upstream_form() {
        let mut config = UpstreamConfig::explicit("https://a:6443");
        config.validate().unwrap();
        config.in_cluster = true;
        let err = config.validate().unwrap_err();
        assert!(err.contains("found url and in_cluster"), "{err}");
        let none = UpstreamConfig::default();
        assert!(none.validate().unwrap_err().contains("name the API server"));
        let kube = UpstreamConfig {
            kubeconfig: Some("k".into()),
            token_file: Some("t".into()),
            ..UpstreamConfig::default()
        };
        assert!(
            kube.validate()
                .unwrap_err()
                .contains("token_file goes with upstream.url")
        );
        let context = UpstreamConfig {
            in_cluster: true,
            context: Some("c".into()),
            ..UpstreamConfig::default()
        };
        assert!(
            context
                .validate()
                .unwrap_err()
                .contains("set upstream.kubeconfig")
        );
        let plain = UpstreamConfig::explicit("http://a:8080");
        assert!(plain.validate().unwrap_err().contains("must be https"));
    }
}
