//! Configuration of a service's HTTPS listener.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle for client certificates (mTLS). When set, the server asks every client for
    /// a certificate (without requiring one); a certificate that verifies against this bundle
    /// authenticates a request that carries no `Authorization` header.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How a client certificate becomes a principal and groups.
    #[serde(default)]
    pub client_certs: ClientCertMapping,
}

/// How a verified client certificate becomes a principal and groups.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertMapping {
    /// Where the principal comes from: `common-name` (the subject CN, as Kubernetes does),
    /// `uri-san` (the first URI subject alternative name, e.g. a SPIFFE id) or `dns-san` (the
    /// first DNS subject alternative name).
    #[serde(default)]
    pub principal: CertPrincipal,
    /// Prepended to the principal, e.g. `x509:`.
    #[serde(default)]
    pub principal_prefix: String,
    /// Which subject attributes become groups: `organization` (O, as Kubernetes does) and/or
    /// `organizational-unit` (OU). `system:` groups are dropped, as for tokens.
    #[serde(default = "default_cert_groups")]
    pub groups: Vec<CertGroups>,
    /// Prepended to every group from the certificate.
    #[serde(default)]
    pub groups_prefix: String,
}

impl Default for ClientCertMapping {
    fn default() -> Self {
        Self {
            principal: CertPrincipal::default(),
            principal_prefix: String::new(),
            groups: default_cert_groups(),
            groups_prefix: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CertPrincipal {
    #[default]
    CommonName,
    UriSan,
    DnsSan,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CertGroups {
    Organization,
    OrganizationalUnit,
}

fn default_cert_groups() -> Vec<CertGroups> {
    vec![CertGroups::Organization]
}
