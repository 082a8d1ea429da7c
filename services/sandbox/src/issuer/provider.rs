//! Browser sign-in for the demo issuer: the authorization code flow with PKCE (S256 only),
//! a password (and optional TOTP) form, an issuer session for silent re-authentication, and
//! the token endpoint.
//!
//! State lives in memory: pending authorization requests (10 min), codes (60 s, single use)
//! and browser sessions. Errors that cannot be trusted to go back to the client (unknown
//! client, unregistered redirect URI) are shown as a page, never redirected (RFC 6749
//! §4.1.2.1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::IssuerKeys;

type HmacSha256 = Hmac<Sha256>;

/// The authentication context classes the issuer can assert.
pub const ACR_PASSWORD: &str = "urn:gatehouse:demo:password";
pub const ACR_MFA: &str = "urn:gatehouse:demo:mfa";

const PENDING_TTL: Duration = Duration::from_secs(600);
const CODE_TTL: Duration = Duration::from_secs(60);
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// Wrong passwords allowed on one pending request before it is dropped.
const MAX_ATTEMPTS: u32 = 5;
const BROWSER_COOKIE: &str = "gatehouse-issuer";
/// A browser's issuer session lasts this long without a new password.
const BROWSER_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const TOTP_STEP: u64 = 30;

/// A client registered with the issuer: redirect URIs match exactly; with a secret it is
/// confidential (`client_secret_basic`), without one it is public (`none`).
#[derive(Clone)]
pub struct OidcClient {
    client_id: String,
    redirect_uris: Vec<String>,
    secret: Option<String>,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("client_id", &self.client_id)
            .field("redirect_uris", &self.redirect_uris)
            .field("confidential", &self.secret.is_some())
            .finish()
    }
}

impl OidcClient {
    /// A public client (PKCE only, no secret).
    pub fn public<I, S>(client_id: impl Into<String>, redirect_uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            client_id: client_id.into(),
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
            secret: None,
        }
    }

    /// A confidential client authenticating with HTTP Basic at the token endpoint.
    pub fn confidential<I, S>(
        client_id: impl Into<String>,
        secret: impl Into<String>,
        redirect_uris: I,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            secret: Some(secret.into()),
            ..Self::public(client_id, redirect_uris)
        }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

/// A demo user who can sign in with a password (and, with a TOTP secret, a one-time code).
#[derive(Clone)]
pub struct DemoUser {
    username: String,
    password: String,
    subject: String,
    email: String,
    name: String,
    groups: Vec<String>,
    totp_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for DemoUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoUser")
            .field("username", &self.username)
            .field("subject", &self.subject)
            .field("groups", &self.groups)
            .field("otp", &self.totp_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl DemoUser {
    /// Signs in as `email` (also the subject, like the tokens `Issuer::mint` gives demo
    /// identities); the display name defaults to the email's local part.
    pub fn new(email: impl Into<String>, password: impl Into<String>) -> Self {
        let email = email.into();
        let name = email.split('@').next().unwrap_or_default().to_owned();
        Self {
            username: email.clone(),
            password: password.into(),
            subject: email.clone(),
            email,
            name,
            groups: Vec::new(),
            totp_secret: None,
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Enables `urn:gatehouse:demo:mfa`: a TOTP (RFC 6238: SHA-1, 30 s, 6 digits) over this
    /// secret is asked for when a client requests that acr. See [`totp_code`].
    pub fn totp(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.totp_secret = Some(secret.into());
        self
    }
}

/// The RFC 6238 code for `secret` at `unix_time` (what an authenticator app would show).
pub fn totp_code(secret: &[u8], unix_time: u64) -> String {
    hotp(secret, unix_time / TOTP_STEP)
}

fn hotp(secret: &[u8], counter: u64) -> String {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let word = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!("{:06}", word % 1_000_000)
}

/// How a browser last authenticated at the issuer.
#[derive(Clone)]
struct BrowserSession {
    subject: String,
    auth_time: u64,
    amr: Vec<String>,
    acr: String,
    expires: u64,
}

struct Pending {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    scopes: Vec<String>,
    wants_mfa: bool,
    /// The browser (cookie) that started the request; only it may answer the form.
    browser: String,
    expires: u64,
    attempts: u32,
}

struct Code {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    scopes: Vec<String>,
    subject: String,
    auth_time: u64,
    amr: Vec<String>,
    acr: String,
    expires: u64,
}

pub(crate) struct Provider {
    url: String,
    keys: Arc<RwLock<Vec<IssuerKeys>>>,
    clients: RwLock<HashMap<String, OidcClient>>,
    /// Users by lower-cased username.
    users: RwLock<HashMap<String, DemoUser>>,
    /// Passwords are compared as MACs under this key: constant time, same work for unknown
    /// users.
    mac_key: [u8; 32],
    pending: Mutex<HashMap<String, Pending>>,
    codes: Mutex<HashMap<String, Code>>,
    browsers: Mutex<HashMap<String, BrowserSession>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Provider {
    pub(crate) fn new(
        url: String,
        keys: Arc<RwLock<Vec<IssuerKeys>>>,
        clients: Vec<OidcClient>,
        users: Vec<DemoUser>,
    ) -> Self {
        let provider = Self {
            url,
            keys,
            clients: RwLock::default(),
            users: RwLock::default(),
            mac_key: rand::random(),
            pending: Mutex::default(),
            codes: Mutex::default(),
            browsers: Mutex::default(),
        };
        for c in clients {
            provider.register_client(c);
        }
        for u in users {
            provider.add_user(u);
        }
        provider
    }

    pub(crate) fn register_client(&self, client: OidcClient) {
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client.client_id.clone(), client);
    }

    pub(crate) fn add_user(&self, user: DemoUser) {
        self.users
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.username.to_lowercase(), user);
    }

    pub(crate) fn backdate_sign_ins(&self, by: Duration) {
        for s in lock(&self.browsers).values_mut() {
            s.auth_time = s.auth_time.saturating_sub(by.as_secs());
        }
    }

    pub(crate) fn discovery(&self) -> Value {
        let url = &self.url;
        json!({
            "issuer": url,
            "jwks_uri": format!("{url}/jwks.json"),
            "authorization_endpoint": format!("{url}/authorize"),
            "token_endpoint": format!("{url}/token"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "amr",
                "acr", "email", "name", "groups",
            ],
            "acr_values_supported": [ACR_PASSWORD, ACR_MFA],
            "prompt_values_supported": ["none", "login"],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "authorization_response_iss_parameter_supported": true,
        })
    }

    fn mac(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.mac_key).expect("HMAC takes any key");
        mac.update(data);
        mac
    }

    /// The user, when the password (and any needed code) is right. Unknown users cost the
    /// same MAC as known ones and give the same answer.
    fn check_credentials(
        &self,
        username: &str,
        password: &str,
        otp: Option<&str>,
        wants_mfa: bool,
    ) -> Option<(DemoUser, bool)> {
        let user = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&username.trim().to_lowercase())
            .cloned();
        let expected = self
            .mac(
                user.as_ref()
                    .map_or(b"\0no such user".as_slice(), |u| u.password.as_bytes()),
            )
            .finalize()
            .into_bytes();
        let password_ok = self
            .mac(password.as_bytes())
            .verify_slice(&expected)
            .is_ok();
        let user = user.filter(|_| password_ok)?;
        let mfa = match (&user.totp_secret, wants_mfa) {
            (Some(secret), true) => {
                let t = now();
                let given = otp.map(str::trim).unwrap_or_default();
                // One step either side for clock drift.
                let ok = [t.saturating_sub(TOTP_STEP), t, t + TOTP_STEP]
                    .iter()
                    .any(|&at| {
                        let code = totp_code(secret, at);
                        self.mac(code.as_bytes())
                            .verify_slice(&self.mac(given.as_bytes()).finalize().into_bytes())
                            .is_ok()
                    });
                if !ok {
                    return None;
                }
                true
            }
            _ => false,
        };
        Some((user, mfa))
    }

    fn user_by_subject(&self, subject: &str) -> Option<DemoUser> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|u| u.subject == subject)
            .cloned()
    }

    fn user_needs_otp(&self, subject: &str) -> bool {
        self.user_by_subject(subject)
            .is_some_and(|u| u.totp_secret.is_some())
    }

    fn issue_code(&self, pending: &Pending, session: &BrowserSession) -> String {
        let code = random_token();
        let mut codes = lock(&self.codes);
        let t = now();
        codes.retain(|_, c| c.expires > t);
        codes.insert(
            code.clone(),
            Code {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                code_challenge: pending.code_challenge.clone(),
                nonce: pending.nonce.clone(),
                scopes: pending.scopes.clone(),
                subject: session.subject.clone(),
                auth_time: session.auth_time,
                amr: session.amr.clone(),
                acr: session.acr.clone(),
                expires: t + CODE_TTL.as_secs(),
            },
        );
        code
    }

    fn redirect_with(&self, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            query.append_pair(k, v);
        }
        query.append_pair("iss", &self.url);
        let sep = if redirect_uri.contains('?') { '&' } else { '?' };
        let location = format!("{redirect_uri}{sep}{}", query.finish());
        see_other(&location)
    }

    fn redirect_error(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        error: &str,
        description: &str,
    ) -> Response {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            params.push(("state", s));
        }
        self.redirect_with(redirect_uri, &params)
    }

    fn redirect_code(&self, pending: &Pending, code: &str) -> Response {
        let mut params = vec![("code", code)];
        if let Some(s) = pending.state.as_deref() {
            params.push(("state", s));
        }
        self.redirect_with(&pending.redirect_uri, &params)
    }
}

pub(crate) fn routes(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/authorize", get(authorize).post(authorize_form))
        .route("/token", post(token))
        .with_state(provider)
}

/// Parses a query or form body; a repeated parameter is an error (RFC 6749 §3.1).
fn parse_params(input: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(input) {
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(format!("parameter {k} is repeated"));
        }
    }
    Ok(params)
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, value),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => error_page(StatusCode::BAD_REQUEST, "The redirect URI is not valid."),
    }
}

pub(crate) fn html_escape(text: &str) -> String {
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

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    html_posting_to(status, title, body, None)
}

/// [`html`] for a page whose form's answer redirects to `redirect_uri`: CSP `form-action`
/// covers the redirects after a submission too, so the client's origin must be allowed.
fn html_posting_to(
    status: StatusCode,
    title: &str,
    body: &str,
    redirect_uri: Option<&str>,
) -> Response {
    let form_action = match redirect_uri.and_then(origin_of) {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; frame-ancestors 'none'"
    );
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         label{{display:block;margin-top:1rem;font-weight:600}}input{{font-size:1rem;width:100%;padding:.4rem;box-sizing:border-box}}\
         button{{margin-top:1.5rem;font-size:1rem;padding:.5rem 1.5rem}}.error{{color:#a00000;font-weight:600}}</style>\
         </head><body><main>{body}</main></body></html>\n",
        title = html_escape(title),
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
                header::HeaderName::from_static("x-frame-options"),
                HeaderValue::from_static("DENY"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&csp)
                    .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
            ),
        ],
        page,
    )
        .into_response()
}

fn error_page(status: StatusCode, message: &str) -> Response {
    html(
        status,
        "Sign-in error",
        &format!(
            "<h1>Sign-in error</h1><p role=\"alert\">{}</p>",
            html_escape(message)
        ),
    )
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

struct LoginForm<'a> {
    rid: &'a str,
    client_id: &'a str,
    /// Where a successful sign-in redirects (for the page's `form-action`).
    redirect_uri: &'a str,
    username: &'a str,
    otp: bool,
    error: Option<&'a str>,
    reauth: bool,
}

fn login_page(status: StatusCode, form: &LoginForm<'_>) -> Response {
    let described = if form.error.is_some() {
        " aria-describedby=\"error\" aria-invalid=\"true\""
    } else {
        ""
    };
    let error = form
        .error
        .map(|e| {
            format!(
                "<p id=\"error\" class=\"error\" role=\"alert\">{}</p>",
                html_escape(e)
            )
        })
        .unwrap_or_default();
    let intro = if form.reauth {
        "Enter your password again to continue."
    } else {
        "Sign in to continue."
    };
    let otp = if form.otp {
        format!(
            "<label for=\"otp\">One-time code (if your account has one)</label>\
             <input id=\"otp\" name=\"otp\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" \
             autocomplete=\"one-time-code\"{described}>"
        )
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Gatehouse demo sign-in</h1>\
         <p>{intro} <strong>{client}</strong> is asking who you are.</p>{error}\
         <form method=\"post\" action=\"/authorize\">\
         <input type=\"hidden\" name=\"rid\" value=\"{rid}\">\
         <label for=\"username\">Email</label>\
         <input id=\"username\" name=\"username\" type=\"email\" autocomplete=\"username\" \
         value=\"{username}\" required{described}>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required{described}>{otp}\
         <button type=\"submit\">Sign in</button></form>",
        client = html_escape(form.client_id),
        rid = html_escape(form.rid),
        username = html_escape(form.username),
    );
    html_posting_to(status, "Sign in", &body, Some(form.redirect_uri))
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

/// A response that also (re)sets the browser cookie.
fn with_browser_cookie(mut response: Response, browser: &str) -> Response {
    let cookie = format!(
        "{BROWSER_COOKIE}={browser}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        BROWSER_SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

fn is_pkce_value(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

async fn authorize(
    State(p): State<Arc<Provider>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match parse_params(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    // Until client and redirect URI are known good, errors stay on this page.
    let Some(client_id) = get("client_id") else {
        return error_page(StatusCode::BAD_REQUEST, "The request names no client_id.");
    };
    let Some(client) = p
        .clients
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(client_id)
        .cloned()
    else {
        return error_page(StatusCode::BAD_REQUEST, "The client is not registered.");
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The request names no redirect_uri.",
        );
    };
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not registered for this client.",
        );
    }
    let state = get("state");
    let fail =
        |error: &str, description: &str| p.redirect_error(redirect_uri, state, error, description);
    if get("request").is_some() || get("request_uri").is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    match get("response_type") {
        Some("code") => {}
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        None => return fail("invalid_request", "response_type is missing"),
    }
    let scopes: Vec<String> = get("scope")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        return fail("invalid_scope", "the scope must include openid");
    }
    if get("response_mode").is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query is supported");
    }
    let Some(code_challenge) = get("code_challenge") else {
        return fail("invalid_request", "code_challenge (PKCE) is required");
    };
    if get("code_challenge_method") != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    if !is_pkce_value(code_challenge) {
        return fail("invalid_request", "code_challenge is malformed");
    }
    let max_age = match get("max_age").map(str::parse::<u64>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return fail("invalid_request", "max_age is not a number of seconds"),
    };
    let prompts: Vec<&str> = get("prompt").unwrap_or_default().split(' ').collect();
    let prompt_none = prompts.contains(&"none");
    if prompt_none && prompts.len() > 1 {
        return fail("invalid_request", "prompt=none cannot be combined");
    }
    if prompts.iter().any(|v| !matches!(*v, "" | "none" | "login")) {
        return fail(
            "invalid_request",
            "only prompt=login and prompt=none are supported",
        );
    }
    // max_age=0 means the same as prompt=login (OIDC Core §3.1.2.1).
    let force_login = prompts.contains(&"login") || max_age == Some(0);
    let wants_mfa = get("acr_values")
        .unwrap_or_default()
        .split(' ')
        .any(|a| a == ACR_MFA);

    let t = now();
    let known_browser = cookie(&headers, BROWSER_COOKIE)
        .filter(|b| b.len() == 43)
        .map(str::to_owned);
    let browser = known_browser.clone().unwrap_or_else(random_token);
    let session = known_browser
        .as_ref()
        .and_then(|b| lock(&p.browsers).get(b).filter(|s| s.expires > t).cloned());
    let pending = Pending {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        state: state.map(str::to_owned),
        nonce: get("nonce").map(str::to_owned),
        code_challenge: code_challenge.to_owned(),
        scopes,
        wants_mfa,
        browser: browser.clone(),
        expires: t + PENDING_TTL.as_secs(),
        attempts: 0,
    };
    // Silent sign-in: an issuer session fresh enough, at the level asked for.
    let reusable = session.as_ref().filter(|s| {
        !force_login
            && max_age.is_none_or(|m| t.saturating_sub(s.auth_time) <= m)
            && (!wants_mfa || s.acr == ACR_MFA || !p.user_needs_otp(&s.subject))
            && p.user_by_subject(&s.subject).is_some()
    });
    if let Some(session) = reusable {
        let code = p.issue_code(&pending, session);
        return with_browser_cookie(p.redirect_code(&pending, &code), &browser);
    }
    if prompt_none {
        return fail("login_required", "the user must sign in");
    }
    let username = session
        .as_ref()
        .and_then(|s| p.user_by_subject(&s.subject))
        .map(|u| u.username)
        .unwrap_or_default();
    let rid = random_token();
    let pending_redirect = pending.redirect_uri.clone();
    {
        let mut all = lock(&p.pending);
        all.retain(|_, r| r.expires > t);
        all.insert(rid.clone(), pending);
    }
    let page = login_page(
        StatusCode::OK,
        &LoginForm {
            rid: &rid,
            client_id,
            redirect_uri: &pending_redirect,
            username: &username,
            otp: wants_mfa,
            error: None,
            reauth: session.is_some(),
        },
    );
    with_browser_cookie(page, &browser)
}

async fn authorize_form(
    State(p): State<Arc<Provider>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(form) = parse_params(&body) else {
        return error_page(StatusCode::BAD_REQUEST, "The form is malformed.");
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let t = now();
    let browser = cookie(&headers, BROWSER_COOKIE).unwrap_or_default();
    let mut all = lock(&p.pending);
    let rid = get("rid");
    let Some(pending) = all.get_mut(rid).filter(|r| r.expires > t) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in request has expired or was already used. Go back to the application and start again.",
        );
    };
    // The form answers only the browser that opened it (login CSRF).
    if browser.is_empty() || pending.browser != browser {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in form was not opened in this browser. Go back to the application and start again.",
        );
    }
    let (username, password) = (get("username"), get("password"));
    let otp = form.get("otp").map(String::as_str);
    let Some((user, mfa)) = p.check_credentials(username, password, otp, pending.wants_mfa) else {
        pending.attempts += 1;
        if pending.attempts >= MAX_ATTEMPTS {
            let pending = all.remove(rid).expect("present");
            return p.redirect_error(
                &pending.redirect_uri,
                pending.state.as_deref(),
                "access_denied",
                "too many failed sign-in attempts",
            );
        }
        let wants_otp = pending.wants_mfa;
        let client_id = pending.client_id.clone();
        let redirect_uri = pending.redirect_uri.clone();
        drop(all);
        let message = if wants_otp {
            "The email, password or one-time code is not right. Try again."
        } else {
            "The email or password is not right. Try again."
        };
        return login_page(
            StatusCode::UNAUTHORIZED,
            &LoginForm {
                rid,
                client_id: &client_id,
                redirect_uri: &redirect_uri,
                username,
                otp: wants_otp,
                error: Some(message),
                reauth: false,
            },
        );
    };
    let pending = all.remove(rid).expect("present");
    drop(all);
    let (amr, acr) = if mfa {
        (vec!["pwd".to_owned(), "otp".to_owned()], ACR_MFA)
    } else {
        (vec!["pwd".to_owned()], ACR_PASSWORD)
    };
    let session = BrowserSession {
        subject: user.subject.clone(),
        auth_time: t,
        amr,
        acr: acr.to_owned(),
        expires: t + BROWSER_SESSION_TTL.as_secs(),
    };
    {
        let mut browsers = lock(&p.browsers);
        browsers.retain(|_, s| s.expires > t);
        browsers.insert(browser.to_owned(), session.clone());
    }
    let code = p.issue_code(&pending, &session);
    tracing::info!(subject = %user.subject, client = %pending.client_id, "demo issuer: signed in");
    p.redirect_code(&pending, &code)
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gatehouse-demo-issuer\""),
        );
    }
    response
}

/// `client_id:client_secret` from HTTP Basic, each form-urlencoded (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let parse = || {
        let value = value.to_str().ok()?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        Some((unescape(id)?, unescape(secret)?))
    };
    Some(parse().ok_or(()))
}

async fn token(State(p): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let bad =
        |error: &str, description: &str| token_error(StatusCode::BAD_REQUEST, error, description);
    let unauthorized =
        |description: &str| token_error(StatusCode::UNAUTHORIZED, "invalid_client", description);
    let form = match parse_params(&body) {
        Ok(form) => form,
        Err(e) => return bad("invalid_request", &e),
    };
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());

    // Client authentication first: a secret in Basic, or none for a public client.
    let (client_id, secret) = match basic_credentials(&headers) {
        Some(Ok((id, secret))) => (id, Some(secret)),
        Some(Err(())) => return unauthorized("the Authorization header is malformed"),
        None => match get("client_id") {
            Some(id) => (id.to_owned(), None),
            None => return unauthorized("no client authentication"),
        },
    };
    if get("client_secret").is_some() {
        return unauthorized("client_secret_post is not supported; use HTTP Basic");
    }
    if get("client_id").is_some_and(|id| id != client_id) {
        return bad(
            "invalid_request",
            "client_id differs from the authenticated client",
        );
    }
    let Some(client) = p
        .clients
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&client_id)
        .cloned()
    else {
        return unauthorized("unknown client");
    };
    match (&client.secret, &secret) {
        (Some(expected), Some(given)) => {
            let expected = p.mac(expected.as_bytes()).finalize().into_bytes();
            if p.mac(given.as_bytes()).verify_slice(&expected).is_err() {
                return unauthorized("client authentication failed");
            }
        }
        (Some(_), None) => return unauthorized("this client must authenticate with HTTP Basic"),
        (None, Some(_)) => return unauthorized("this client is public and has no secret"),
        (None, None) => {}
    }

    match get("grant_type") {
        Some("authorization_code") => {}
        Some(_) => {
            return bad(
                "unsupported_grant_type",
                "only authorization_code is supported",
            );
        }
        None => return bad("invalid_request", "grant_type is missing"),
    }
    let Some(code) = get("code") else {
        return bad("invalid_request", "code is missing");
    };
    let Some(verifier) = get("code_verifier") else {
        return bad("invalid_request", "code_verifier (PKCE) is missing");
    };
    // Removed before any check: a code is spent by its first use, right or wrong.
    let Some(grant) = lock(&p.codes).remove(code) else {
        return bad(
            "invalid_grant",
            "the code is unknown, expired or already used",
        );
    };
    let t = now();
    if grant.expires <= t {
        return bad(
            "invalid_grant",
            "the code is unknown, expired or already used",
        );
    }
    if grant.client_id != client.client_id {
        return bad("invalid_grant", "the code was issued to another client");
    }
    if get("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return bad(
            "invalid_grant",
            "redirect_uri differs from the authorization request",
        );
    }
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !is_pkce_value(verifier) || challenge != grant.code_challenge {
        return bad(
            "invalid_grant",
            "code_verifier does not match code_challenge",
        );
    }
    let Some(user) = p.user_by_subject(&grant.subject) else {
        return bad("invalid_grant", "the user no longer exists");
    };

    let has = |scope: &str| grant.scopes.iter().any(|s| s == scope);
    let mut id_claims = json!({
        "iss": p.url,
        "sub": user.subject,
        "aud": client.client_id,
        "iat": t,
        "exp": t + TOKEN_TTL.as_secs(),
        "auth_time": grant.auth_time,
        "amr": grant.amr,
        "acr": grant.acr,
    });
    if let Some(nonce) = &grant.nonce {
        id_claims["nonce"] = json!(nonce);
    }
    if has("email") {
        id_claims["email"] = json!(user.email);
        id_claims["email_verified"] = json!(true);
    }
    if has("profile") {
        id_claims["name"] = json!(user.name);
    }
    if has("groups") {
        id_claims["groups"] = json!(user.groups);
    }
    let access_claims = json!({
        "iss": p.url,
        "sub": user.subject,
        "aud": client.client_id,
        "client_id": client.client_id,
        "scope": grant.scopes.join(" "),
        "groups": user.groups,
        "iat": t,
        "nbf": t,
        "exp": t + TOKEN_TTL.as_secs(),
        "jti": ulid::Ulid::new().to_string(),
    });
    let signer = p.keys.read().unwrap_or_else(|p| p.into_inner())[0].clone();
    let (id_token, access_token) = match (signer.sign(&id_claims), signer.sign(&access_claims)) {
        (Ok(i), Ok(a)) => (i, a),
        _ => {
            return token_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            );
        }
    };
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::PRAGMA, HeaderValue::from_static("no-cache")),
        ],
        axum::Json(json!({
            "access_token": access_token,
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL.as_secs(),
            "scope": grant.scopes.join(" "),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_matches_rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA-1, last six digits.
        let secret = b"12345678901234567890";
        assert_eq!(totp_code(secret, 59), "287082");
        assert_eq!(totp_code(secret, 1_111_111_109), "081804");
        assert_eq!(totp_code(secret, 2_000_000_000), "279037");
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_params(b"a=1&b=2").is_ok());
        assert!(parse_params(b"a=1&a=2").is_err());
    }

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
