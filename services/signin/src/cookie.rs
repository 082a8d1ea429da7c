//! Signed cookie values and `Set-Cookie` lines.
//!
//! A value is `base64url(json) "." base64url(HMAC-SHA256(key, base64url(json)))`. Each use
//! (flow, session, CSRF) has its own key derived from the cookie key, so a value made for
//! one cannot be passed off as another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub(crate) const FLOW_COOKIE: &str = "__Host-gatehouse-signin";
pub(crate) const SESSION_COOKIE: &str = "__Host-gatehouse-session";

/// `prefix-clientid`, the client id kept to the characters a cookie name may hold.
pub(crate) fn name(prefix: &str, client_id: &str) -> String {
    let id: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("{prefix}-{id}")
}
/// Browsers keep cookies up to 4096 bytes, name and attributes included.
pub(crate) const MAX_VALUE: usize = 3800;

pub(crate) struct Keys {
    flow: [u8; 32],
    session: [u8; 32],
    csrf: [u8; 32],
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac
}

impl Keys {
    pub(crate) fn derive(master: &[u8]) -> Self {
        let derive = |label: &str| -> [u8; 32] {
            mac(master, format!("gatehouse-signin/{label}").as_bytes())
                .finalize()
                .into_bytes()
                .into()
        };
        Self {
            flow: derive("flow"),
            session: derive("session"),
            csrf: derive("csrf"),
        }
    }

    pub(crate) fn seal_flow<T: Serialize>(&self, value: &T) -> String {
        seal(&self.flow, value)
    }

    pub(crate) fn open_flow<T: DeserializeOwned>(&self, value: &str) -> Option<T> {
        open(&self.flow, value)
    }

    pub(crate) fn seal_session<T: Serialize>(&self, value: &T) -> String {
        seal(&self.session, value)
    }

    pub(crate) fn open_session<T: DeserializeOwned>(&self, value: &str) -> Option<T> {
        open(&self.session, value)
    }

    pub(crate) fn csrf_token(&self, session_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            mac(&self.csrf, session_id.as_bytes())
                .finalize()
                .into_bytes(),
        )
    }

    /// Constant-time check of a CSRF token against the session id.
    pub(crate) fn csrf_matches(&self, session_id: &str, token: &str) -> bool {
        URL_SAFE_NO_PAD.decode(token).is_ok_and(|raw| {
            mac(&self.csrf, session_id.as_bytes())
                .verify_slice(&raw)
                .is_ok()
        })
    }
}

fn seal<T: Serialize>(key: &[u8], value: &T) -> String {
    let json = serde_json::to_vec(value).expect("cookie payloads serialize");
    let payload = URL_SAFE_NO_PAD.encode(json);
    let tag = URL_SAFE_NO_PAD.encode(mac(key, payload.as_bytes()).finalize().into_bytes());
    format!("{payload}.{tag}")
}

fn open<T: DeserializeOwned>(key: &[u8], value: &str) -> Option<T> {
    let (payload, tag) = value.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    // The MAC is checked before the payload is even decoded.
    mac(key, payload.as_bytes()).verify_slice(&tag).ok()?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// Every value of cookie `name` the request carries (a browser may send several).
pub(crate) fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `__Host-` cookie: Secure, Path=/, no Domain; HttpOnly and SameSite=Lax so it goes
/// with the IdP's top-level redirect back but not with cross-site subrequests.
pub(crate) fn set(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"
    ))
    .expect("cookie values are base64url")
}

pub(crate) fn clear(name: &str) -> HeaderValue {
    set(name, "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let keys = Keys::derive(&[7u8; 32]);
        let sealed = keys.seal_session(&serde_json::json!({"sub": "alice"}));
        let opened: serde_json::Value = keys.open_session(&sealed).expect("opens");
        assert_eq!(opened["sub"], "alice");
        // Another purpose, another key.
        assert!(keys.open_flow::<serde_json::Value>(&sealed).is_none());
        assert!(
            Keys::derive(&[8u8; 32])
                .open_session::<serde_json::Value>(&sealed)
                .is_none()
        );
        // Any change to the payload breaks the MAC.
        let (payload, tag) = sealed.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#);
        assert!(
            keys.open_session::<serde_json::Value>(&format!("{forged}.{tag}"))
                .is_none()
        );
        assert!(keys.open_session::<serde_json::Value>(payload).is_none());
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        let keys = Keys::derive(&[1u8; 32]);
        let token = keys.csrf_token("sid-1");
        assert!(keys.csrf_matches("sid-1", &token));
        assert!(!keys.csrf_matches("sid-2", &token));
        assert!(!keys.csrf_matches("sid-1", ""));
        assert!(!keys.csrf_matches("sid-1", "not base64!"));
    }

    #[test]
    fn cookies_are_host_prefixed_secure_and_http_only() {
        let line = set(SESSION_COOKIE, "v", 60);
        assert_eq!(
            line,
            "__Host-gatehouse-session=v; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=3"));
        assert_eq!(values(&headers, "b").collect::<Vec<_>>(), ["2", "3"]);
    }
}
