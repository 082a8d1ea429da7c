//! The signed-in user: who, how and when they authenticated, and what step-up needs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, OptionalFromRequestParts, OriginalUri};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::SignIn;

/// What the session cookie holds (signed, not encrypted: nothing in it is secret, and no
/// token is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionData {
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub auth_time: i64,
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    pub iat: i64,
    pub exp: i64,
    pub sid: String,
}

/// A valid, unexpired session read from the request's cookie.
#[derive(Debug, Clone)]
pub struct Session {
    pub(crate) data: SessionData,
    pub(crate) csrf: String,
}

/// How the user was authenticated, for audit events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authentication {
    pub issuer: String,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub auth_time: OffsetDateTime,
    pub amr: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    pub session_id: String,
}

/// What an action needs beyond being signed in. An empty `StepUp` is satisfied by any session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepUp {
    /// The password (or other factor) entered at most this long ago.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Every one of these `amr` values (RFC 8176, e.g. `otp`, `hwk`). The RP cannot ask the
    /// IdP for methods, only for `acr`; list both when the IdP maps one to the other.
    #[serde(default)]
    pub amr: Vec<String>,
    /// One of these `acr` values.
    #[serde(default)]
    pub acr: Vec<String>,
}

/// Why a session does not satisfy a [`StepUp`]; send the user to
/// [`SignIn::step_up_url`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepUpNeeded {
    #[error("the last sign-in was {age:?} ago; this needs one within {max_age:?}")]
    TooOld { age: Duration, max_age: Duration },
    #[error("this needs authentication methods {missing:?}")]
    Methods { missing: Vec<String> },
    #[error("this needs authentication context {wanted:?}, the session has {got:?}")]
    Context {
        wanted: Vec<String>,
        got: Option<String>,
    },
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Session {
    pub fn issuer(&self) -> &str {
        &self.data.iss
    }

    pub fn subject(&self) -> &str {
        &self.data.sub
    }

    pub fn email(&self) -> Option<&str> {
        self.data.email.as_deref()
    }

    pub fn name(&self) -> Option<&str> {
        self.data.name.as_deref()
    }

    /// The name to show: name, else email, else subject.
    pub fn display_name(&self) -> &str {
        self.name().or(self.email()).unwrap_or(self.subject())
    }

    pub fn groups(&self) -> &[String] {
        &self.data.groups
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.data.groups.iter().any(|g| g == group)
    }

    /// When the user last actively authenticated at the IdP (not when this session began).
    pub fn auth_time(&self) -> OffsetDateTime {
        at(self.data.auth_time)
    }

    pub fn amr(&self) -> &[String] {
        &self.data.amr
    }

    pub fn acr(&self) -> Option<&str> {
        self.data.acr.as_deref()
    }

    pub fn issued_at(&self) -> OffsetDateTime {
        at(self.data.iat)
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        at(self.data.exp)
    }

    /// Random per sign-in; names the session in audit events.
    pub fn session_id(&self) -> &str {
        &self.data.sid
    }

    /// The token a POST form carries as field `csrf`; see [`SignIn::check_csrf`].
    pub fn csrf_token(&self) -> &str {
        &self.csrf
    }

    pub fn authentication(&self) -> Authentication {
        Authentication {
            issuer: self.data.iss.clone(),
            subject: self.data.sub.clone(),
            auth_time: self.auth_time(),
            amr: self.data.amr.clone(),
            acr: self.data.acr.clone(),
            session_id: self.data.sid.clone(),
        }
    }

    pub fn satisfies(&self, step: &StepUp) -> Result<(), StepUpNeeded> {
        self.satisfies_at(step, OffsetDateTime::now_utc())
    }

    /// [`Session::satisfies`] at a given time.
    pub fn satisfies_at(&self, step: &StepUp, now: OffsetDateTime) -> Result<(), StepUpNeeded> {
        if let Some(max_age) = step.max_age {
            let age = Duration::from_secs(
                u64::try_from(now.unix_timestamp() - self.data.auth_time).unwrap_or(0),
            );
            // A clock that ran backwards is not a fresh sign-in either.
            if age > max_age || self.data.auth_time > now.unix_timestamp() + crate::LEEWAY {
                return Err(StepUpNeeded::TooOld { age, max_age });
            }
        }
        let missing: Vec<String> = step
            .amr
            .iter()
            .filter(|m| !self.data.amr.contains(m))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(StepUpNeeded::Methods { missing });
        }
        if !step.acr.is_empty() && !self.data.acr.as_ref().is_some_and(|a| step.acr.contains(a)) {
            return Err(StepUpNeeded::Context {
                wanted: step.acr.clone(),
                got: self.data.acr.clone(),
            });
        }
        Ok(())
    }
}

/// The rejection of the [`Session`] extractor: a GET is sent to sign in and back; anything
/// else gets 401 (a form post cannot be replayed after a redirect).
#[derive(Debug)]
pub struct SignInRequired {
    signin_url: Option<String>,
}

impl IntoResponse for SignInRequired {
    fn into_response(self) -> Response {
        match self.signin_url {
            Some(url) => crate::routes::see_other(&url),
            None => crate::routes::page(
                StatusCode::UNAUTHORIZED,
                "Sign-in required",
                "You are not signed in, or your session has ended. Sign in and try again.",
                None,
            ),
        }
    }
}

impl<S> FromRequestParts<S> for Session
where
    Arc<SignIn>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = SignInRequired;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let signin = Arc::<SignIn>::from_ref(state);
        if let Some(session) = signin.session(&parts.headers) {
            return Ok(session);
        }
        let signin_url = (parts.method == Method::GET || parts.method == Method::HEAD).then(|| {
            // Behind `nest`, the original URI has the full path.
            let uri = parts
                .extensions
                .get::<OriginalUri>()
                .map_or(&parts.uri, |o| &o.0);
            let here = uri.path_and_query().map_or("/", |p| p.as_str());
            signin.signin_url(here)
        });
        Err(SignInRequired { signin_url })
    }
}

impl<S> OptionalFromRequestParts<S> for Session
where
    Arc<SignIn>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(Arc::<SignIn>::from_ref(state).session(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(auth_time: i64, amr: &[&str], acr: Option<&str>) -> Session {
        Session {
            data: SessionData {
                iss: "https://idp".into(),
                sub: "alice".into(),
                email: None,
                name: None,
                groups: vec![],
                auth_time,
                amr: amr.iter().map(|s| s.to_string()).collect(),
                acr: acr.map(str::to_owned),
                iat: auth_time,
                exp: auth_time + 3600,
                sid: "sid".into(),
            },
            csrf: String::new(),
        }
    }

    #[test]
    fn step_up_checks_age_methods_and_context() {
        let now = OffsetDateTime::from_unix_timestamp(10_000).unwrap();
        let s = session(10_000 - 600, &["pwd"], Some("urn:a"));
        assert_eq!(s.satisfies_at(&StepUp::default(), now), Ok(()));
        let fresh = StepUp {
            max_age: Some(Duration::from_secs(300)),
            ..Default::default()
        };
        assert_eq!(
            s.satisfies_at(&fresh, now),
            Err(StepUpNeeded::TooOld {
                age: Duration::from_secs(600),
                max_age: Duration::from_secs(300)
            })
        );
        let relaxed = StepUp {
            max_age: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        assert_eq!(s.satisfies_at(&relaxed, now), Ok(()));
        let otp = StepUp {
            amr: vec!["pwd".into(), "otp".into()],
            ..Default::default()
        };
        assert_eq!(
            s.satisfies_at(&otp, now),
            Err(StepUpNeeded::Methods {
                missing: vec!["otp".into()]
            })
        );
        let mfa = StepUp {
            acr: vec!["urn:b".into()],
            ..Default::default()
        };
        assert!(matches!(
            s.satisfies_at(&mfa, now),
            Err(StepUpNeeded::Context { .. })
        ));
        let either = StepUp {
            acr: vec!["urn:b".into(), "urn:a".into()],
            ..Default::default()
        };
        assert_eq!(s.satisfies_at(&either, now), Ok(()));
        // A session with no acr meets no acr requirement.
        assert!(session(10_000, &[], None).satisfies_at(&mfa, now).is_err());
    }

    #[test]
    fn step_up_parses_from_yaml() {
        let step: StepUp = yaml_serde::from_str("max_age: 5m\nacr: [urn:x]\n").unwrap();
        assert_eq!(step.max_age, Some(Duration::from_secs(300)));
        assert_eq!(step.acr, ["urn:x"]);
        assert!(yaml_serde::from_str::<StepUp>("max_age: 5m\nbogus: 1\n").is_err());
    }

    #[test]
    fn authentication_serializes_for_audit() {
        let record = session(1_700_000_000, &["pwd"], None).authentication();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["auth_time"], "2023-11-14T22:13:20Z");
        assert_eq!(json["amr"], serde_json::json!(["pwd"]));
        assert!(json.get("acr").is_none());
        assert_eq!(
            serde_json::from_value::<Authentication>(json).unwrap(),
            record
        );
    }
}
