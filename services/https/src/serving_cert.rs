//! The certificate the proxy presents, reloaded from its files without a restart.
//!
//! Module map:
//! - [`ServingCert`]: a rustls [`ResolvesServerCert`] holding the current [`CertifiedKey`] in an
//!   [`ArcSwap`]; every handshake takes whatever is current, so a swap affects only handshakes
//!   that start after it (open connections keep the certificate they were made with).
//! - [`ServingCert::reload`]: re-reads `cert_file` and `key_file`; an unchanged pair is a no-op,
//!   a bad pair (unparsable, or key not matching the certificate) is reported and the old one
//!   kept.
//! - [`ServingCert::watch`]: polls every few seconds. Polling, not inotify: cert-manager and
//!   kubelet replace Secret volumes by swapping a `..data` symlink, which a poll of the contents
//!   sees whatever the mount does.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// Same contents as the last look.
    Unchanged,
    /// A new valid pair is now presented.
    Reloaded,
    /// The files changed but do not make a valid pair; the previous pair is still presented.
    Rejected(String),
}

/// The serving certificate and key, swappable while the server runs.
pub struct ServingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// Digest of the file contents last looked at (accepted or not), so a bad pair is reported
    /// once, not at every poll.
    seen: Mutex<blake3::Hash>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Loads the pair; fails (naming the file) if it is not a valid certificate and key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Self>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
        let key = certified_key(&provider, cert_file, key_file, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            provider,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(digest(&cert_pem, &key_pem)),
        }))
    }

    /// The pair presented to new handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Re-reads the files and swaps in a changed, valid pair.
    pub fn reload(&self) -> Reload {
        let (cert_pem, key_pem) = match read_pair(&self.cert_file, &self.key_file) {
            Ok(pair) => pair,
            // Mid-swap a file can be missing for a moment; the next look will tell.
            Err(e) => return Reload::Rejected(e),
        };
        let now = digest(&cert_pem, &key_pem);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match certified_key(
            &self.provider,
            &self.cert_file,
            &self.key_file,
            &cert_pem,
            &key_pem,
        ) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                Reload::Reloaded
            }
            Err(e) => Reload::Rejected(e),
        }
    }

    /// Looks at the files every `every` until `stop`, logging each change and telling
    /// `on_reload` whether it was taken (`true`) or refused (`false`), for the caller's metrics.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        on_reload: impl Fn(bool) + Send + Sync + 'static,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        // A missing file is reported once per outage, not at every poll.
        let mut unreadable = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let this = self.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || this.reload()).await else {
                continue;
            };
            match outcome {
                Reload::Unchanged => unreadable = false,
                Reload::Reloaded => {
                    unreadable = false;
                    on_reload(true);
                    tracing::info!(
                        cert_file = %self.cert_file.display(),
                        fingerprint = %self.fingerprint(),
                        "serving certificate reloaded"
                    );
                }
                Reload::Rejected(error) => {
                    let missing = error.contains("cannot be read");
                    if missing && unreadable {
                        continue;
                    }
                    unreadable = missing;
                    on_reload(false);
                    tracing::error!(
                        error = %error,
                        "the serving certificate files changed but do not make a valid pair; \
                         still presenting the previous certificate"
                    );
                }
            }
        }
    }

    /// BLAKE3 of the current leaf certificate (DER), shortened: tells reloads apart in logs.
    pub fn fingerprint(&self) -> String {
        let current = self.current.load();
        current
            .cert
            .first()
            .map(|leaf| blake3::hash(leaf.as_ref()).to_hex()[..16].to_owned())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("{what} {} cannot be read: {e}", path.display()))
    };
    Ok((
        read(cert_file, "certificate")?,
        read(key_file, "private key")?,
    ))
}

fn digest(cert_pem: &[u8], key_pem: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(cert_pem.len() as u64).to_le_bytes());
    hasher.update(cert_pem);
    hasher.update(key_pem);
    hasher.finalize()
}

fn certified_key(
    provider: &CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading certificate {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("reading private key {}: {e}", key_file.display()))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!(
            "certificate {} and key {} do not make a TLS identity: {e}",
            cert_file.display(),
            key_file.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Ca {
        fn new() -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            Self {
                cert,
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        /// (cert PEM, key PEM) for localhost.
        fn leaf(&self) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        }

        fn client(&self) -> tokio_rustls::TlsConnector {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.cert.der().clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    fn leaf_der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    type ClientStream = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

    /// One in-memory handshake; the server side echoes bytes. Returns the client stream.
    async fn connect(
        server: &Arc<rustls::ServerConfig>,
        client: &tokio_rustls::TlsConnector,
    ) -> ClientStream {
        let (a, b) = tokio::io::duplex(16 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(b).await else {
                return;
            };
            let mut buf = [0u8; 64];
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                let _ = tls.flush().await;
            }
        });
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        client.connect(name, a).await.unwrap()
    }

    fn presented(stream: &ClientStream) -> CertificateDer<'static> {
        stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    async fn echo(stream: &mut ClientStream) {
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn new_handshakes_see_the_new_certificate_open_connections_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = Ca::new();
        let (old_cert, old_key) = ca.leaf();
        std::fs::write(&cert_file, &old_cert).unwrap();
        std::fs::write(&key_file, &old_key).unwrap();
        let serving = ServingCert::load(&cert_file, &key_file).unwrap();
        let server = crate::server::server_tls(serving.clone(), None).unwrap();
        let client = ca.client();

        let mut before = connect(&server, &client).await;
        assert_eq!(presented(&before), leaf_der(&old_cert));
        assert_eq!(serving.reload(), Reload::Unchanged);

        let (new_cert, new_key) = ca.leaf();
        std::fs::write(&cert_file, &new_cert).unwrap();
        std::fs::write(&key_file, &new_key).unwrap();
        assert_eq!(serving.reload(), Reload::Reloaded);

        let after = connect(&server, &client).await;
        assert_eq!(presented(&after), leaf_der(&new_cert));
        // The connection made before the swap still works, with its original certificate.
        echo(&mut before).await;
        assert_eq!(presented(&before), leaf_der(&old_cert));
    }

    #[tokio::test]
    async fn a_bad_pair_is_rejected_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let ca = Ca::new();
        let (good_cert, good_key) = ca.leaf();
        std::fs::write(&cert_file, &good_cert).unwrap();
        std::fs::write(&key_file, &good_key).unwrap();
        let serving = ServingCert::load(&cert_file, &key_file).unwrap();
        let server = crate::server::server_tls(serving.clone(), None).unwrap();

        // A certificate with someone else's key.
        let (other_cert, _) = ca.leaf();
        std::fs::write(&cert_file, &other_cert).unwrap();
        match serving.reload() {
            Reload::Rejected(e) => assert!(e.contains("do not make a TLS identity"), "{e}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        // Reported once: the same bad contents are not re-reported.
        assert_eq!(serving.reload(), Reload::Unchanged);
        std::fs::write(&cert_file, "not pem").unwrap();
        assert!(matches!(serving.reload(), Reload::Rejected(_)));
        std::fs::remove_file(&key_file).unwrap();
        match serving.reload() {
            Reload::Rejected(e) => assert!(e.contains("cannot be read"), "{e}"),
            other => panic!("expected a rejection, got {other:?}"),
        }

        let stream = connect(&server, &ca.client()).await;
        assert_eq!(presented(&stream), leaf_der(&good_cert));
        assert!(!format!("{serving:?}").contains("PRIVATE"));
    }

    #[tokio::test]
    async fn the_watcher_follows_a_symlink_swap_like_a_secret_volume() {
        // kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let write_version = |name: &str, (cert, key): &(String, String)| {
            let version = dir.path().join(name);
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("tls.crt"), cert).unwrap();
            std::fs::write(version.join("tls.key"), key).unwrap();
        };
        let first = ca.leaf();
        write_version("..v1", &first);
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
        let serving =
            ServingCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let reloads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counter = reloads.clone();
        let watcher = tokio::spawn(serving.clone().watch(
            Duration::from_millis(20),
            move |ok| {
                if ok {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            },
            stop.clone(),
        ));

        let second = ca.leaf();
        write_version("..v2", &second);
        std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();

        let want = leaf_der(&second.0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while serving.current().cert[0] != want
            || reloads.load(std::sync::atomic::Ordering::SeqCst) != 1
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate was not picked up and counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap();
    }
}
