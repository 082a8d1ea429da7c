//! The relying party against the real demo issuer, over HTTP on loopback, driven by a
//! cookie-keeping client that follows redirects one at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_sandbox::browser::{Browser, Reply};
use gatehouse_sandbox::issuer::{
    ACR_MFA, ACR_PASSWORD, DemoUser, Issuer, IssuerKeys, OidcClient, totp_code,
};
use gatehouse_signin::{Session, SignIn, SignInConfig, SignInError, StepUp};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

const CLIENT: &str = "console";
// The cookies carry the client id: two services on one host keep their sessions apart.
const SESSION: &str = "__Host-gatehouse-session-console";
const FLOW: &str = "__Host-gatehouse-signin-console";
const TOTP_SECRET: &[u8] = b"an authenticator secret";

struct Rp {
    url: String,
    _task: tokio::task::JoinHandle<()>,
}

impl Rp {
    fn at(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.url)
        }
    }
}

fn step_up() -> StepUp {
    StepUp {
        max_age: Some(Duration::from_secs(300)),
        ..Default::default()
    }
}

async fn me(session: Session) -> Json<Value> {
    Json(json!({
        "subject": session.subject(),
        "email": session.email(),
        "name": session.name(),
        "groups": session.groups(),
        "auth_time": session.auth_time().unix_timestamp(),
        "amr": session.amr(),
        "acr": session.acr(),
        "csrf": session.csrf_token(),
        "authentication": session.authentication(),
    }))
}

async fn action(
    State(signin): State<Arc<SignIn>>,
    session: Session,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match signin.check_csrf(&session, &headers, form.get("csrf").map(String::as_str)) {
        Ok(()) => "done".into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn sensitive(State(signin): State<Arc<SignIn>>, session: Session) -> Response {
    match session.satisfies(&step_up()) {
        Ok(()) => "sensitive".into_response(),
        Err(_) => Redirect::to(&signin.step_up_url("/sensitive", &step_up())).into_response(),
    }
}

async fn mfa_only(State(signin): State<Arc<SignIn>>, session: Session) -> Response {
    let step = StepUp {
        acr: vec![ACR_MFA.to_owned()],
        ..Default::default()
    };
    match session.satisfies(&step) {
        Ok(()) => "mfa".into_response(),
        Err(_) => Redirect::to(&signin.step_up_url("/mfa", &step)).into_response(),
    }
}

async fn start_issuer() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Issuer::builder(IssuerKeys::generate().unwrap())
        .user(
            DemoUser::new("alice@example.com", "password")
                .name("Alice Example")
                .groups(["sre", "platform-leads"]),
        )
        .user(
            DemoUser::new("carol@example.com", "carol-password")
                .groups(["security"])
                .totp(TOTP_SECRET),
        )
        .start(listener)
        .await
        .unwrap()
}

/// A relying party on its own port, registered with the issuer (confidential with `secret`).
async fn start_rp(issuer: &Issuer, secret: Option<&str>) -> (Rp, tempfile::TempDir) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let redirect = format!("{url}/signin/callback");
    let dir = tempfile::tempdir().unwrap();
    let mut config = SignInConfig::new(issuer.url(), CLIENT, &redirect);
    match secret {
        Some(secret) => {
            let path = dir.path().join("client-secret");
            std::fs::write(&path, format!("{secret}\n")).unwrap();
            config.client_secret_file = Some(path);
            issuer.register_client(OidcClient::confidential(CLIENT, secret, [redirect]));
        }
        None => issuer.register_client(OidcClient::public(CLIENT, [redirect])),
    }
    let signin = Arc::new(SignIn::new(config).await.expect("sign-in set up"));
    let app = Router::new()
        .route("/me", get(me))
        .route("/action", post(action))
        .route("/sensitive", get(sensitive))
        .route("/mfa", get(mfa_only))
        .with_state(signin.clone())
        .merge(signin.routes());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (Rp { url, _task: task }, dir)
}

/// Follows redirects from `url` through the issuer's form (answered with `password`, and a
/// TOTP code when asked for one) until a page that is not a redirect to the issuer or the
/// callback. Returns the callback's reply (or the first non-redirect reply).
async fn sign_in_as(
    browser: &mut Browser,
    rp: &Rp,
    issuer: &Issuer,
    url: &str,
    username: &str,
    password: &str,
) -> Reply {
    let mut next = rp.at(url);
    for _ in 0..8 {
        let reply = browser.get(&next).await;
        if reply.status == StatusCode::OK && reply.body.contains("name=\"rid\"") {
            let rid = reply.rid();
            let otp = totp_code(TOTP_SECRET, unix_now());
            let mut form = vec![
                ("rid", rid.as_str()),
                ("username", username),
                ("password", password),
            ];
            if reply.body.contains("name=\"otp\"") {
                form.push(("otp", &otp));
            }
            let posted = browser
                .post(&format!("{}/authorize", issuer.url()), &form)
                .await;
            assert_eq!(posted.status, StatusCode::SEE_OTHER, "{}", posted.body);
            next = posted.location().to_owned();
            continue;
        }
        if reply.status != StatusCode::SEE_OTHER {
            return reply;
        }
        let location = reply.location().to_owned();
        if next.contains("/signin/callback") {
            return reply;
        }
        next = rp.at(&location);
    }
    panic!("too many redirects");
}

async fn sign_in(browser: &mut Browser, rp: &Rp, issuer: &Issuer, url: &str) -> Reply {
    sign_in_as(browser, rp, issuer, url, "alice@example.com", "password").await
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn signs_in_as_alice_and_reads_the_session() {
    let issuer = start_issuer().await;
    for secret in [None, Some("a client secret")] {
        let (rp, _dir) = start_rp(&issuer, secret).await;
        let mut browser = Browser::new();
        // Not signed in: a page GET is sent to sign in and back.
        let first = browser.get(&rp.at("/me?tab=1")).await;
        assert_eq!(first.status, StatusCode::SEE_OTHER);
        assert_eq!(first.location(), "/signin?return_to=%2Fme%3Ftab%3D1");
        // A POST is not redirected.
        let post = browser.post(&rp.at("/action"), &[]).await;
        assert_eq!(post.status, StatusCode::UNAUTHORIZED);

        // /signin: the flow cookie and the authorization request.
        let start = browser.get(&rp.at(first.location())).await;
        assert_eq!(start.status, StatusCode::SEE_OTHER);
        assert!(
            start
                .location()
                .starts_with(&format!("{}/authorize?", issuer.url()))
        );
        let request = start.query();
        assert_eq!(request["response_type"], "code");
        assert_eq!(request["client_id"], CLIENT);
        assert_eq!(
            request["redirect_uri"],
            format!("{}/signin/callback", rp.url)
        );
        assert_eq!(request["scope"], "openid profile email groups");
        assert_eq!(request["code_challenge_method"], "S256");
        assert_eq!(request["code_challenge"].len(), 43);
        assert!(request["state"].len() >= 43 && request["nonce"].len() >= 43);
        assert_ne!(request["state"], request["nonce"]);
        let flow = start.set_cookies();
        assert_eq!(flow.len(), 1);
        assert!(flow[0].starts_with(&format!("{FLOW}=")));
        assert!(flow[0].ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"));
        // Nothing secret in the flow cookie travels to the issuer.
        let verifier_free = !start.location().contains(browser.cookies[FLOW].as_str());
        assert!(verifier_free);

        let before = unix_now();
        let done = sign_in(&mut browser, &rp, &issuer, first.location()).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(done.location(), "/me?tab=1");
        let cookies = done.set_cookies();
        let session = cookies
            .iter()
            .find(|c| c.starts_with(&format!("{SESSION}=")))
            .expect("session cookie");
        assert!(
            session.ends_with("; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=28800"),
            "{session}"
        );
        assert!(cookies.contains(
            &format!("{FLOW}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0").as_str()
        ));
        assert!(!browser.cookies.contains_key(FLOW));
        // No token in the session cookie: only the signed claims.
        let value = &browser.cookies[SESSION];
        let payload = URL_SAFE_NO_PAD
            .decode(value.split_once('.').unwrap().0)
            .unwrap();
        let payload: Value = serde_json::from_slice(&payload).unwrap();
        assert!(!payload.to_string().contains("eyJ"), "{payload}");

        let me = browser.get(&rp.at("/me")).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
        let me = me.json();
        assert_eq!(me["subject"], "alice@example.com");
        assert_eq!(me["email"], "alice@example.com");
        assert_eq!(me["name"], "Alice Example");
        assert_eq!(me["groups"], json!(["sre", "platform-leads"]));
        assert_eq!(me["amr"], json!(["pwd"]));
        assert_eq!(me["acr"], ACR_PASSWORD);
        let auth_time = me["auth_time"].as_u64().unwrap();
        assert!(auth_time >= before && auth_time <= unix_now());
        assert_eq!(me["authentication"]["issuer"], issuer.url());
        assert_eq!(me["authentication"]["subject"], "alice@example.com");
        assert_eq!(
            me["authentication"]["session_id"], payload["sid"],
            "the audit record names the session"
        );
    }
}

#[tokio::test]
async fn a_tampered_or_foreign_session_cookie_is_refused() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &rp, &issuer, "/signin?return_to=/me").await;
    assert_eq!(browser.get(&rp.at("/me")).await.status, StatusCode::OK);
    let genuine = browser.cookies[SESSION].clone();

    // Same MAC, payload changed to another subject and more groups.
    let (payload, tag) = genuine.split_once('.').unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sub"] = "mallory@example.com".into();
    claims["groups"] = json!(["auditors"]);
    let forged = URL_SAFE_NO_PAD.encode(claims.to_string());
    for value in [
        format!("{forged}.{tag}"),
        format!("{payload}.{}", &tag[1..]),
        payload.to_owned(),
        "garbage".to_owned(),
    ] {
        browser.cookies.insert(SESSION.to_owned(), value);
        let reply = browser.get(&rp.at("/me")).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        assert!(reply.location().starts_with("/signin?"));
    }

    // A genuine cookie of another relying party (its own generated key) means nothing here.
    let (other, _dir2) = start_rp(&issuer, None).await;
    let mut elsewhere = Browser::new();
    sign_in(&mut elsewhere, &other, &issuer, "/signin?return_to=/me").await;
    browser
        .cookies
        .insert(SESSION.to_owned(), elsewhere.cookies[SESSION].clone());
    assert_eq!(
        browser.get(&rp.at("/me")).await.status,
        StatusCode::SEE_OTHER
    );
    browser.cookies.insert(SESSION.to_owned(), genuine);
    assert_eq!(browser.get(&rp.at("/me")).await.status, StatusCode::OK);
}

/// Starts a sign-in and takes it as far as the issuer's redirect back (not followed).
async fn code_for(browser: &mut Browser, rp: &Rp, issuer: &Issuer) -> String {
    let start = browser.get(&rp.at("/signin?return_to=/me")).await;
    let page = browser.get(start.location()).await;
    let posted = browser
        .post(
            &format!("{}/authorize", issuer.url()),
            &[
                ("rid", &page.rid()),
                ("username", "alice@example.com"),
                ("password", "password"),
            ],
        )
        .await;
    assert_eq!(posted.status, StatusCode::SEE_OTHER);
    posted.location().to_owned()
}

fn assert_refused(reply: &Reply, words: &str) {
    assert!(
        reply.status.is_client_error() || reply.status.is_server_error(),
        "{}: {}",
        reply.status,
        reply.body
    );
    assert!(reply.headers.get(header::LOCATION).is_none());
    assert!(
        !reply
            .set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("{SESSION}=")) && !c.contains("Max-Age=0")),
        "no session on failure"
    );
    assert!(reply.body.contains("name=\"viewport\""));
    assert!(
        reply.body.contains(words),
        "{words:?} not in {}",
        reply.body
    );
}

#[tokio::test]
async fn a_state_mismatch_is_refused() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    let callback = code_for(&mut browser, &rp, &issuer).await;
    let code = form_urlencoded::parse(callback.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let state = form_urlencoded::parse(callback.split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let forged = callback.replace(&state, "someone-elses-state");
    let reply = browser.get(&forged).await;
    assert_refused(&reply, "(state)");
    assert!(!reply.body.contains(&code), "the page never shows the code");
    // The flow is spent: even the genuine answer is refused now.
    let reply = browser.get(&callback).await;
    assert_refused(&reply, "not started in this browser");

    // A callback reaching a browser that started nothing (login CSRF) is refused too.
    let mut victim = Browser::new();
    let mut attacker = Browser::new();
    let callback = code_for(&mut attacker, &rp, &issuer).await;
    assert_refused(&victim.get(&callback).await, "not started in this browser");
}

#[tokio::test]
async fn open_redirects_are_refused() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    for target in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "evil.example",
        "javascript:alert(1)",
    ] {
        let url = format!(
            "/signin?return_to={}",
            form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
        );
        let reply = browser.get(&rp.at(&url)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{target}");
        assert_refused(&reply, "only return to a page of this site");
        assert!(!reply.body.contains("evil.example"), "{}", reply.body);
    }
    // Sign-out does not redirect off-site either.
    let reply = browser
        .post(
            &rp.at("/signout"),
            &[("return_to", "https://evil.example/")],
        )
        .await;
    assert_eq!(reply.location(), "/");
}

#[tokio::test]
async fn a_replayed_callback_is_refused() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    let callback = code_for(&mut browser, &rp, &issuer).await;
    let flow = browser.cookies[FLOW].clone();
    let done = browser.get(&callback).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    // An attacker who copied the answer and the flow cookie replays them in a fresh browser:
    // the code (and its nonce) were spent by the first use.
    let mut replay = Browser::new();
    replay.cookies.insert(FLOW.to_owned(), flow);
    let reply = replay.get(&callback).await;
    assert_refused(&reply, "invalid_grant");

    // A new sign-in in the same browser gets a new state and nonce; the old answer does not
    // fit it.
    let start = browser.get(&rp.at("/signin?return_to=/me")).await;
    assert_eq!(start.status, StatusCode::SEE_OTHER);
    assert_refused(&browser.get(&callback).await, "(state)");
}

#[tokio::test]
async fn an_identity_provider_error_is_shown_readably() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    let start = browser.get(&rp.at("/signin?return_to=/me")).await;
    let state = start.query()["state"].clone();
    let reply = browser
        .get(&rp.at(&format!(
            "/signin/callback?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state={state}"
        )))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_refused(&reply, "did not sign you in (access denied)");
    assert!(reply.body.contains("Sign in again"));
    let reply = browser.get(&rp.at("/signin?return_to=/me")).await.query()["state"].clone();
    let other = browser
        .get(&rp.at(&format!(
            "/signin/callback?error=temporarily_unavailable&error_description=%3Cscript%3E&state={reply}"
        )))
        .await;
    assert_refused(&other, "temporarily_unavailable (&lt;script&gt;)");
}

#[tokio::test]
async fn step_up_asks_for_the_password_again_and_refreshes_auth_time() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &rp, &issuer, "/signin?return_to=/sensitive").await;
    assert_eq!(browser.get(&rp.at("/sensitive")).await.body, "sensitive");

    // An hour later (at the issuer), a new sign-in is silent and carries the old auth_time.
    issuer.backdate_sign_ins(Duration::from_secs(3600));
    let silent = sign_in(&mut browser, &rp, &issuer, "/signin?return_to=/me").await;
    assert_eq!(silent.status, StatusCode::SEE_OTHER, "{}", silent.body);
    let me = browser.get(&rp.at("/me")).await.json();
    let old = me["auth_time"].as_u64().unwrap();
    assert!(
        unix_now() - old >= 3600,
        "auth_time is when the password was entered"
    );

    // The sensitive page wants a password within 5 minutes: off to step up.
    let reply = browser.get(&rp.at("/sensitive")).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        reply.location(),
        "/signin?return_to=%2Fsensitive&max_age=300&prompt=login"
    );
    let start = browser.get(&rp.at(reply.location())).await;
    let request = start.query();
    assert_eq!(request["max_age"], "300");
    assert_eq!(request["prompt"], "login");
    // The issuer asks for the password although its session is still valid.
    let page = browser.get(start.location()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("name=\"password\""));
    let done = sign_in(&mut browser, &rp, &issuer, start.location()).await;
    assert_eq!(done.location(), "/sensitive");
    let me = browser.get(&rp.at("/me")).await.json();
    let fresh = me["auth_time"].as_u64().unwrap();
    assert!(unix_now() - fresh <= 60 && fresh > old);
    assert_eq!(browser.get(&rp.at("/sensitive")).await.body, "sensitive");
}

#[tokio::test]
async fn step_up_to_mfa_asks_for_a_one_time_code() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    let (user, password) = ("carol@example.com", "carol-password");
    sign_in_as(
        &mut browser,
        &rp,
        &issuer,
        "/signin?return_to=/mfa",
        user,
        password,
    )
    .await;
    let reply = browser.get(&rp.at("/mfa")).await;
    assert_eq!(
        reply.location(),
        format!(
            "/signin?return_to=%2Fmfa&prompt=login&acr={}",
            form_urlencoded::byte_serialize(ACR_MFA.as_bytes()).collect::<String>()
        )
    );
    let done = sign_in_as(&mut browser, &rp, &issuer, reply.location(), user, password).await;
    assert_eq!(done.location(), "/mfa", "{}", done.body);
    assert_eq!(browser.get(&rp.at("/mfa")).await.body, "mfa");
    let me = browser.get(&rp.at("/me")).await.json();
    assert_eq!(me["acr"], ACR_MFA);
    assert_eq!(me["amr"], json!(["pwd", "otp"]));
}

#[tokio::test]
async fn csrf_checks_refuse_missing_wrong_and_cross_site_requests() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &rp, &issuer, "/signin?return_to=/me").await;
    let token = browser.get(&rp.at("/me")).await.json()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other = Browser::new();
    sign_in(&mut other, &rp, &issuer, "/signin?return_to=/me").await;
    let other_token = other.get(&rp.at("/me")).await.json()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(token, other_token);

    let url = rp.at("/action");
    let same_origin = [
        ("sec-fetch-site", "same-origin"),
        ("origin", rp.url.as_str()),
    ];
    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Pairs, Pairs, &str)> = vec![
        (vec![], same_origin.to_vec(), "carries no CSRF token"),
        (
            vec![("csrf", "")],
            same_origin.to_vec(),
            "carries no CSRF token",
        ),
        (
            vec![("csrf", "forged")],
            same_origin.to_vec(),
            "not this session",
        ),
        (
            vec![("csrf", &other_token)],
            same_origin.to_vec(),
            "not this session",
        ),
        (
            vec![("csrf", &token)],
            vec![("sec-fetch-site", "cross-site")],
            "came from another site",
        ),
        (
            vec![("csrf", &token)],
            vec![("sec-fetch-site", "same-site")],
            "came from another site",
        ),
        (
            vec![("csrf", &token)],
            vec![("origin", "http://evil.example")],
            "Origin is not this site",
        ),
        (
            vec![("csrf", &token)],
            vec![("origin", "null")],
            "Origin is not this site",
        ),
    ];
    for (form, headers, why) in cases {
        let reply = browser.post_with(&url, &form, &headers).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{form:?} {headers:?}");
        assert!(reply.body.contains(why), "{why:?}: {}", reply.body);
    }
    for headers in [
        same_origin.to_vec(),
        vec![("sec-fetch-site", "none")],
        vec![],
    ] {
        let reply = browser.post_with(&url, &[("csrf", &token)], &headers).await;
        assert_eq!(reply.status, StatusCode::OK, "{headers:?}: {}", reply.body);
        assert_eq!(reply.body, "done");
    }
}

#[tokio::test]
async fn sign_out_needs_the_csrf_token_and_ends_the_session() {
    let issuer = start_issuer().await;
    let (rp, _dir) = start_rp(&issuer, None).await;
    let mut browser = Browser::new();
    sign_in(&mut browser, &rp, &issuer, "/signin?return_to=/me").await;
    let token = browser.get(&rp.at("/me")).await.json()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = browser.post(&rp.at("/signout"), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.get(&rp.at("/me")).await.status, StatusCode::OK);
    let out = browser
        .post_with(
            &rp.at("/signout"),
            &[("csrf", &token), ("return_to", "/bye")],
            &[("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), "/bye");
    assert!(out.set_cookies().contains(
        &format!("{SESSION}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0").as_str()
    ));
    assert_eq!(
        browser.get(&rp.at("/me")).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn configuration_is_checked_before_anything_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, [1u8; 16]).unwrap();
    let ok = SignInConfig::new(
        "http://127.0.0.1:9",
        CLIENT,
        "https://audit.example/signin/callback",
    );
    let cases: Vec<(SignInConfig, &str)> = vec![
        (
            SignInConfig {
                issuer: "http://login.example".into(),
                ..ok.clone()
            },
            "must be https",
        ),
        (
            SignInConfig {
                redirect_url: "http://audit.example/signin/callback".into(),
                ..ok.clone()
            },
            "must be https",
        ),
        (
            SignInConfig {
                redirect_url: "https://audit.example/callback".into(),
                ..ok.clone()
            },
            "must end in /signin/callback",
        ),
        (
            SignInConfig {
                scopes: vec!["profile".into()],
                ..ok.clone()
            },
            "must include openid",
        ),
        (
            SignInConfig {
                cookie_key_file: Some(short_key),
                ..ok.clone()
            },
            "at least 32 random bytes",
        ),
        (
            SignInConfig {
                client_secret_file: Some(dir.path().join("absent")),
                ..ok.clone()
            },
            "client_secret_file",
        ),
    ];
    for (config, words) in cases {
        let err = SignIn::new(config).await.expect_err(words);
        assert!(matches!(err, SignInError::Config(_)), "{err}");
        assert!(err.to_string().contains(words), "{words:?}: {err}");
    }
    // A good configuration gets as far as discovery (nothing listens on port 9).
    let err = SignIn::new(ok).await.expect_err("no issuer");
    assert!(matches!(err, SignInError::Discovery(_)), "{err}");

    let parsed: SignInConfig = yaml_serde::from_str(
        "issuer: https://login.example\nclient_id: console\nredirect_url: https://audit.example/signin/callback\n",
    )
    .unwrap();
    assert_eq!(parsed.scopes, ["openid", "profile", "email", "groups"]);
    assert_eq!(parsed.groups_claim, "groups");
    assert_eq!(parsed.session_ttl, Duration::from_secs(8 * 3600));
    let short: SignInConfig = yaml_serde::from_str(
        "issuer: https://l\nclient_id: c\nredirect_url: https://a/signin/callback\nsession_ttl: 30m\n",
    )
    .unwrap();
    assert_eq!(short.session_ttl, Duration::from_secs(1800));
    assert!(
        yaml_serde::from_str::<SignInConfig>(
            "issuer: https://l\nclient_id: c\nredirect_url: https://a/signin/callback\nsecret: x\n"
        )
        .is_err()
    );
}
