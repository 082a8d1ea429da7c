//! `GET /signin`, `GET /signin/callback`, `POST /signout`, and the short pages they show
//! when something goes wrong.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::session::SessionData;
use crate::verify::{Expected, tidy};
use crate::{SignIn, cookie, now};

/// How long a started sign-in may take.
const FLOW_TTL: i64 = 600;
const MAX_RETURN_TO: usize = 2048;

/// What `/signin` remembers for the callback, in the signed flow cookie.
#[derive(Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    #[serde(default)]
    max_age: Option<u64>,
    #[serde(default)]
    acr: Vec<String>,
    #[serde(default)]
    prompt_login: bool,
    started: i64,
    exp: i64,
}

/// A sign-in that cannot go on: what the user is told (and what is logged). Never holds a
/// code or token.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn internal(message: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_owned(),
        }
    }

    pub(crate) fn upstream(message: String) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            message,
        }
    }

    pub(crate) fn token(message: String) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message,
        }
    }

    fn bad(message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.to_owned(),
        }
    }
}

pub(crate) fn router(signin: Arc<SignIn>) -> Router {
    Router::new()
        .route("/signin", get(start))
        .route("/signin/callback", get(callback))
        .route("/signout", post(signout))
        .with_state(signin)
}

fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A path on this site: one leading `/` (not `//`, which is another host), no backslash
/// (browsers read `/\` as `//`), no control characters or spaces.
fn local_path(path: &str) -> Option<&str> {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= MAX_RETURN_TO
        && !path
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace());
    ok.then_some(path)
}

fn parse_params(query: Option<&str>) -> Option<HashMap<String, String>> {
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if params.insert(k.into_owned(), v.into_owned()).is_some() {
            return None;
        }
    }
    Some(params)
}

pub(crate) fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, value),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in error",
            "The redirect address is not valid.",
            None,
        ),
    }
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A minimal page: a heading, one message, and optionally one link.
pub(crate) fn page(
    status: StatusCode,
    title: &str,
    message: &str,
    link: Option<(&str, &str)>,
) -> Response {
    let link = link
        .map(|(href, text)| format!("<p><a href=\"{}\">{}</a></p>", escape(href), escape(text)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\
         <body><main><h1>{title}</h1><p role=\"alert\">{message}</p>{link}</main></body></html>\n",
        title = escape(title),
        message = escape(message),
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            ),
        ],
        body,
    )
        .into_response()
}

impl SignIn {
    /// The failure page, logged with a reference the user can quote.
    fn failed(&self, failure: Failure, return_to: Option<&str>) -> Response {
        let reference = &random()[..8];
        tracing::warn!(reference, status = failure.status.as_u16(), reason = %failure.message, "sign-in failed");
        let again = self.signin_url(return_to.unwrap_or("/"));
        page(
            failure.status,
            "Sign-in failed",
            &format!("{} (Reference {reference}.)", failure.message),
            Some((&again, "Sign in again")),
        )
    }
}

async fn start(State(signin): State<Arc<SignIn>>, RawQuery(query): RawQuery) -> Response {
    let Some(params) = parse_params(query.as_deref()) else {
        return signin.failed(Failure::bad("The sign-in link repeats a parameter."), None);
    };
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(return_to) = local_path(get("return_to").unwrap_or("/")) else {
        return signin.failed(
            Failure::bad(
                "The sign-in link is not valid: it may only return to a page of this site.",
            ),
            None,
        );
    };
    let max_age = match get("max_age").map(str::parse::<u64>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return signin.failed(
                Failure::bad("The sign-in link is not valid: max_age is not a number of seconds."),
                Some(return_to),
            );
        }
    };
    let prompt_login = match get("prompt") {
        None => false,
        Some("login") => true,
        Some(_) => {
            return signin.failed(
                Failure::bad("The sign-in link is not valid: only prompt=login is supported."),
                Some(return_to),
            );
        }
    };
    let acr: Vec<String> = get("acr")
        .unwrap_or_default()
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let now = now();
    let flow = Flow {
        state: random(),
        nonce: random(),
        verifier: random(),
        return_to: return_to.to_owned(),
        max_age,
        acr,
        prompt_login,
        started: now,
        exp: now + FLOW_TTL,
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(flow.verifier.as_bytes()));
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", &signin.client_id)
        .append_pair("redirect_uri", &signin.redirect_url)
        .append_pair("scope", &signin.scopes.join(" "))
        .append_pair("state", &flow.state)
        .append_pair("nonce", &flow.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(max_age) = flow.max_age {
        query.append_pair("max_age", &max_age.to_string());
    }
    if flow.prompt_login {
        query.append_pair("prompt", "login");
    }
    if !flow.acr.is_empty() {
        query.append_pair("acr_values", &flow.acr.join(" "));
    }
    let sep = if signin.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{sep}{}", signin.authorization_endpoint, query.finish());
    let mut response = see_other(&location);
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie::set(
            &signin.flow_cookie,
            &signin.keys.seal_flow(&flow),
            FLOW_TTL as u64,
        ),
    );
    response
}

async fn callback(
    State(signin): State<Arc<SignIn>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // The flow cookie is spent whatever happens: a state is answered once.
    let mut response = match complete(&signin, &headers, query.as_deref()).await {
        Ok((session, return_to)) => {
            let mut response = see_other(&return_to);
            response.headers_mut().append(header::SET_COOKIE, session);
            response
        }
        Err((failure, return_to)) => signin.failed(failure, return_to.as_deref()),
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, cookie::clear(&signin.flow_cookie));
    response
}

type CallbackResult = Result<(HeaderValue, String), (Failure, Option<String>)>;

async fn complete(signin: &SignIn, headers: &HeaderMap, query: Option<&str>) -> CallbackResult {
    let Some(params) = parse_params(query) else {
        return Err((
            Failure::bad("The sign-in answer repeats a parameter."),
            None,
        ));
    };
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let now = now();
    let Some(flow) = cookie::values(headers, &signin.flow_cookie)
        .filter_map(|v| signin.keys.open_flow::<Flow>(v))
        .find(|f| f.exp > now)
    else {
        return Err((
            Failure::bad(
                "This sign-in was not started in this browser, or took longer than 10 minutes. Start again.",
            ),
            None,
        ));
    };
    let fail = |failure: Failure| Err((failure, Some(flow.return_to.clone())));
    if get("state") != Some(flow.state.as_str()) {
        return fail(Failure::bad(
            "The sign-in answer does not belong to the sign-in this browser started (state). Start again.",
        ));
    }
    // RFC 9207: an answer naming another issuer is a mix-up.
    if get("iss").is_some_and(|iss| iss != signin.issuer) {
        return fail(Failure::bad(
            "The sign-in answer comes from another identity provider.",
        ));
    }
    if let Some(error) = get("error") {
        let message = match (error, get("error_description")) {
            ("access_denied", _) => {
                "The identity provider did not sign you in (access denied).".to_owned()
            }
            (error, Some(d)) => format!(
                "The identity provider did not sign you in: {} ({}).",
                tidy(error),
                tidy(d)
            ),
            (error, None) => format!(
                "The identity provider did not sign you in: {}.",
                tidy(error)
            ),
        };
        return fail(Failure {
            status: StatusCode::FORBIDDEN,
            message,
        });
    }
    let Some(code) = get("code") else {
        return fail(Failure::bad("The sign-in answer carries no code."));
    };
    let id_token = match signin.redeem(code, &flow.verifier).await {
        Ok(t) => t,
        Err(f) => return fail(f),
    };
    let expected = Expected {
        nonce: &flow.nonce,
        max_age: flow.max_age,
        authenticated_after: flow.prompt_login.then_some(flow.started),
        acr: &flow.acr,
    };
    let claims = match signin.verify_id_token(&id_token, &expected).await {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    let ttl = i64::try_from(signin.session_ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let data = SessionData {
        iss: signin.issuer.clone(),
        groups: claims.groups(&signin.groups_claim),
        sub: claims.sub,
        email: claims.email,
        name: claims.name,
        // Without auth_time, the sign-in that just happened is the best known.
        auth_time: claims.auth_time.unwrap_or(now).min(now),
        amr: claims.amr,
        acr: claims.acr,
        iat: now,
        exp: now.saturating_add(ttl),
        sid: random(),
    };
    let sealed = signin.keys.seal_session(&data);
    if sealed.len() > cookie::MAX_VALUE {
        return fail(Failure::internal(
            "Your account has too many groups to keep in a session cookie.",
        ));
    }
    tracing::info!(subject = %data.sub, session = %data.sid, amr = ?data.amr, acr = ?data.acr, "signed in");
    Ok((
        cookie::set(&signin.session_cookie, &sealed, ttl as u64),
        flow.return_to.clone(),
    ))
}

/// Ends the session: needs the session's CSRF token (form field `csrf`) and a same-site
/// request; `return_to` (a local path) says where to go after.
async fn signout(State(signin): State<Arc<SignIn>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let return_to = form
        .get("return_to")
        .and_then(|r| local_path(r))
        .unwrap_or("/");
    if let Some(session) = signin.session(&headers) {
        if let Err(refused) =
            signin.check_csrf(&session, &headers, form.get("csrf").map(String::as_str))
        {
            return refused.into_response();
        }
        tracing::info!(subject = %session.subject(), session = %session.session_id(), "signed out");
    }
    let mut response = see_other(return_to);
    response
        .headers_mut()
        .append(header::SET_COOKIE, cookie::clear(&signin.session_cookie));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_return_targets() {
        for ok in ["/", "/bundles?id=1&x=%2F", "/a/b#frag"] {
            assert_eq!(local_path(ok), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "evil.example",
            "/ok\r\nSet-Cookie: x=1",
            "/a b",
            "",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
        assert_eq!(local_path(&format!("/{}", "a".repeat(MAX_RETURN_TO))), None);
    }

    #[tokio::test]
    async fn pages_escape_what_they_show() {
        let response = page(
            StatusCode::BAD_REQUEST,
            "<t>",
            "<script>alert(1)</script>",
            Some(("/x?a=\"b\"", "again")),
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(body.contains("href=\"/x?a=&quot;b&quot;\""));
        assert!(body.contains("name=\"viewport\""));
    }

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(escape("<script>\"'&"), "&lt;script&gt;&quot;&#39;&amp;");
    }
}
