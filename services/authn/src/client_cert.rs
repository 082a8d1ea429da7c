//! mTLS: a client certificate that the TLS layer verified → principal, groups, attributes.
//!
//! The chain was verified against `tls.client_ca_file` during the handshake (rustls
//! `WebPkiClientVerifier`); here the leaf is read, and its validity period is checked again
//! per request, since a connection can outlive its certificate. The issuer is recorded as
//! `x509:<issuer DN of the leaf>`, the subject as the leaf's subject DN.

use std::collections::BTreeMap;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{AuthnError, Verified, printable};
use gatehouse_https::config::{CertGroups, CertPrincipal, ClientCertMapping};

const SYSTEM_PREFIX: &str = "system:";

/// Maps a verified client certificate (DER) to an identity, at `now` (Unix seconds).
pub(crate) fn identify(
    mapping: &ClientCertMapping,
    der: &[u8],
    now: i64,
) -> Result<Verified, AuthnError> {
    let bad = |why: &str| AuthnError::BadCertificate(why.to_owned());
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| bad("it is not a well-formed X.509 certificate"))?;
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        return Err(bad("it has expired"));
    }
    if now < validity.not_before.timestamp() {
        return Err(bad("it is not valid yet"));
    }
    let subject = cert.subject();
    let principal = match mapping.principal {
        CertPrincipal::CommonName => subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        CertPrincipal::UriSan => first_san(&cert, |n| match n {
            GeneralName::URI(uri) => Some(uri),
            _ => None,
        }),
        CertPrincipal::DnsSan => first_san(&cert, |n| match n {
            GeneralName::DNSName(dns) => Some(dns),
            _ => None,
        }),
    }
    .filter(|p| !p.is_empty() && !p.chars().any(char::is_control))
    .ok_or_else(|| {
        bad(match mapping.principal {
            CertPrincipal::CommonName => "it has no common name",
            CertPrincipal::UriSan => "it has no URI subject alternative name",
            CertPrincipal::DnsSan => "it has no DNS subject alternative name",
        })
    })?;
    // A certificate must not make the proxy impersonate one of Kubernetes' own users
    // (`system:kube-controller-manager`, `system:node:…`).
    let principal = format!("{}{principal}", mapping.principal_prefix);
    if principal.starts_with(SYSTEM_PREFIX) {
        return Err(AuthnError::NoPrincipal(printable(&principal)));
    }
    let mut groups: Vec<String> = Vec::new();
    for source in &mapping.groups {
        let values: Vec<&str> = match source {
            CertGroups::Organization => subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            CertGroups::OrganizationalUnit => subject
                .iter_organizational_unit()
                .filter_map(|a| a.as_str().ok())
                .collect(),
        };
        for value in values {
            // `O=system:masters` is how Kubernetes spells cluster-admin in a certificate.
            if value.is_empty() || value.starts_with(SYSTEM_PREFIX) {
                continue;
            }
            let group = format!("{}{value}", mapping.groups_prefix);
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }
    let mut attributes = BTreeMap::new();
    attributes.insert("certificate_serial".to_owned(), cert.raw_serial_as_string());
    Ok(Verified {
        issuer: format!("x509:{}", cert.issuer()),
        subject: subject.to_string(),
        principal,
        groups,
        attributes,
    })
}

fn first_san<'a>(
    cert: &'a X509Certificate<'_>,
    pick: impl Fn(&GeneralName<'a>) -> Option<&'a str>,
) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value
        .general_names
        .iter()
        .find_map(pick)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        SanType,
    };

    fn ca() -> (Issuer<'static, KeyPair>, String) {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Gatehouse clients CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (Issuer::new(params, key), cert.pem())
    }

    fn client(
        ca: &Issuer<'_, KeyPair>,
        cn: Option<&str>,
        orgs: &[&str],
        ous: &[&str],
        sans: Vec<SanType>,
    ) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        for ou in ous {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, *ou);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, ca).unwrap().der().to_vec()
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn common_name_and_organizations_become_principal_and_groups() {
        let (ca, _) = ca();
        let der = client(&ca, Some("ci-bot"), &["deployers"], &["ops"], vec![]);
        let v = identify(&ClientCertMapping::default(), &der, now()).unwrap();
        assert_eq!(v.principal, "ci-bot");
        assert_eq!(v.groups, vec!["deployers"]);
        assert_eq!(v.issuer, "x509:CN=Gatehouse clients CA");
        assert!(v.subject.contains("CN=ci-bot"), "{}", v.subject);
        assert!(v.attributes.contains_key("certificate_serial"));

        let both = ClientCertMapping {
            principal_prefix: "x509:".into(),
            groups: vec![CertGroups::Organization, CertGroups::OrganizationalUnit],
            groups_prefix: "pki:".into(),
            ..ClientCertMapping::default()
        };
        let v = identify(&both, &der, now()).unwrap();
        assert_eq!(v.principal, "x509:ci-bot");
        assert_eq!(v.groups, vec!["pki:deployers", "pki:ops"]);

        // `O=system:masters` is how Kubernetes spells cluster-admin: never taken.
        let admin = client(&ca, Some("ci-bot"), &["system:masters"], &[], vec![]);
        let v = identify(&ClientCertMapping::default(), &admin, now()).unwrap();
        assert!(v.groups.is_empty(), "{:?}", v.groups);
    }

    #[test]
    fn subject_alternative_names_can_name_the_principal() {
        let (ca, _) = ca();
        let spiffe = "spiffe://example.org/ns/apps/sa/deployer";
        let der = client(
            &ca,
            None,
            &[],
            &[],
            vec![
                SanType::DnsName("deployer.apps.svc".try_into().unwrap()),
                SanType::URI(spiffe.try_into().unwrap()),
            ],
        );
        let uri = ClientCertMapping {
            principal: CertPrincipal::UriSan,
            ..ClientCertMapping::default()
        };
        assert_eq!(identify(&uri, &der, now()).unwrap().principal, spiffe);
        let dns = ClientCertMapping {
            principal: CertPrincipal::DnsSan,
            ..ClientCertMapping::default()
        };
        assert_eq!(
            identify(&dns, &der, now()).unwrap().principal,
            "deployer.apps.svc"
        );
        assert_eq!(
            identify(&ClientCertMapping::default(), &der, now()),
            Err(AuthnError::BadCertificate("it has no common name".into()))
        );
    }

    #[test]
    fn expired_garbled_and_system_certificates_are_refused() {
        let (ca, _) = ca();
        let der = client(&ca, Some("ci-bot"), &[], &[], vec![]);
        // rcgen's default validity runs from 1975 to 4096.
        let year_5000 = 95_617_584_000;
        assert_eq!(
            identify(&ClientCertMapping::default(), &der, year_5000),
            Err(AuthnError::BadCertificate("it has expired".into()))
        );
        assert_eq!(
            identify(&ClientCertMapping::default(), &der, 0),
            Err(AuthnError::BadCertificate("it is not valid yet".into()))
        );
        assert!(matches!(
            identify(&ClientCertMapping::default(), b"not a certificate", now()),
            Err(AuthnError::BadCertificate(_))
        ));
        let admin = client(
            &ca,
            Some("system:kube-controller-manager"),
            &[],
            &[],
            vec![],
        );
        assert!(matches!(
            identify(&ClientCertMapping::default(), &admin, now()),
            Err(AuthnError::NoPrincipal(_))
        ));
    }
}
