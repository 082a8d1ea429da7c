//! The demo issuer as an OpenID Provider: the authorization code flow with PKCE over real HTTP
//! on loopback, driven by a small cookie-keeping client.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gatehouse_sandbox::browser::{Browser, Reply};
use gatehouse_sandbox::issuer::{
    ACR_MFA, ACR_PASSWORD, DemoUser, Issuer, IssuerKeys, OidcClient, totp_code,
};
use http::{StatusCode, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

const PUBLIC: &str = "console";
const CONFIDENTIAL: &str = "approvals";
const SECRET: &str = "s3cret:with/odd chars";
const REDIRECT: &str = "https://console.example/signin/callback";
const OTHER_REDIRECT: &str = "https://evil.example/signin/callback";
const TOTP_SECRET: &[u8] = b"12345678901234567890";

/// `Authorization: Basic` for a client, its id and secret form-encoded first (RFC 6749 §2.3.1).
fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

async fn start() -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Issuer::builder(IssuerKeys::generate().expect("keys"))
        .client(OidcClient::public(PUBLIC, [REDIRECT]))
        .client(OidcClient::confidential(CONFIDENTIAL, SECRET, [REDIRECT]))
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
        .expect("issuer")
}

fn authorize_url(issuer: &Issuer, client: &str, pkce: &Pkce, extra: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", client)
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("scope", "openid profile email groups")
        .append_pair("state", "state-1")
        .append_pair("nonce", "nonce-1")
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    for (k, v) in extra {
        query.append_pair(k, v);
    }
    format!("{}/authorize?{}", issuer.url(), query.finish())
}

/// Opens the sign-in page and submits the password; returns the redirect.
async fn sign_in(browser: &mut Browser, issuer: &Issuer, url: &str, password: &str) -> Reply {
    let page = browser.get(url).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let rid = page.rid();
    browser
        .post(
            &format!("{}/authorize", issuer.url()),
            &[
                ("rid", &rid),
                ("username", "alice@example.com"),
                ("password", password),
            ],
        )
        .await
}

/// Alice signs in for the public client; the code it gets back.
async fn alice_code(browser: &mut Browser, issuer: &Issuer, pkce: &Pkce) -> String {
    let url = authorize_url(issuer, PUBLIC, pkce, &[]);
    sign_in(browser, issuer, &url, "password").await.query()["code"].clone()
}

async fn redeem(
    browser: &mut Browser,
    issuer: &Issuer,
    client: &str,
    code: &str,
    verifier: &str,
    redirect_uri: &str,
) -> Reply {
    let url = format!("{}/token", issuer.url());
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("redirect_uri", redirect_uri),
    ];
    if client == CONFIDENTIAL {
        browser
            .post_with(&url, &form, &[("authorization", &basic(client, SECRET))])
            .await
    } else {
        form.push(("client_id", client));
        browser.post(&url, &form).await
    }
}

async fn verify_id_token(issuer: &Issuer, token: &str, audience: &str) -> Value {
    let mut browser = Browser::new();
    let jwks = browser.get(&format!("{}/jwks.json", issuer.url())).await;
    let set: JwkSet = serde_json::from_str(&jwks.body).expect("jwks");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = set.find(header.kid.as_deref().expect("kid")).expect("key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer.url()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwk).expect("decoding key"),
        &validation,
    )
    .expect("valid id_token")
    .claims
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn signs_in_with_pkce_end_to_end() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let discovery = browser
        .get(&format!(
            "{}/.well-known/openid-configuration",
            issuer.url()
        ))
        .await
        .json();
    assert_eq!(
        discovery["authorization_endpoint"],
        format!("{}/authorize", issuer.url())
    );
    assert_eq!(
        discovery["token_endpoint"],
        format!("{}/token", issuer.url())
    );
    assert_eq!(
        discovery["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        discovery["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "none"])
    );
    for claim in ["auth_time", "nonce", "amr", "acr", "email", "groups"] {
        assert!(
            discovery["claims_supported"]
                .as_array()
                .unwrap()
                .contains(&Value::from(claim)),
            "{claim}"
        );
    }

    for client in [PUBLIC, CONFIDENTIAL] {
        let mut browser = Browser::new();
        let pkce = pkce();
        let url = authorize_url(&issuer, client, &pkce, &[]);
        let page = browser.get(&url).await;
        assert_eq!(page.status, StatusCode::OK);
        // An accessible form: labelled fields, posting back to the issuer.
        assert!(
            page.body.contains("<label for=\"username\">"),
            "{}",
            page.body
        );
        assert!(page.body.contains("<label for=\"password\">"));
        assert!(
            page.body
                .contains("<form method=\"post\" action=\"/authorize\">")
        );
        assert!(page.body.contains("name=\"viewport\""));
        let before = unix_now();
        let done = sign_in(&mut browser, &issuer, &url, "password").await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert!(done.location().starts_with(&format!("{REDIRECT}?")));
        let params = done.query();
        assert_eq!(params["state"], "state-1");
        assert_eq!(params["iss"], issuer.url());
        let tokens = redeem(
            &mut browser,
            &issuer,
            client,
            &params["code"],
            &pkce.verifier,
            REDIRECT,
        )
        .await;
        assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
        assert_eq!(tokens.headers[header::CACHE_CONTROL], "no-store");
        let body = tokens.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 300);
        assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
        let claims = verify_id_token(&issuer, body["id_token"].as_str().unwrap(), client).await;
        assert_eq!(claims["sub"], "alice@example.com");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["name"], "Alice Example");
        assert_eq!(
            claims["groups"],
            serde_json::json!(["sre", "platform-leads"])
        );
        assert_eq!(claims["nonce"], "nonce-1");
        assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
        assert_eq!(claims["acr"], ACR_PASSWORD);
        let auth_time = claims["auth_time"].as_u64().unwrap();
        assert!(auth_time >= before && auth_time <= unix_now());
        let header = jsonwebtoken::decode_header(body["id_token"].as_str().unwrap()).unwrap();
        assert_eq!(header.kid.as_deref(), Some(issuer.keys().kid()));
    }
    issuer.shutdown().await;
}

#[tokio::test]
async fn pkce_mismatch_is_refused_and_spends_the_code() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let pkce = pkce();
    let code = alice_code(&mut browser, &issuer, &pkce).await;
    let other = self::pkce();
    let refused = redeem(
        &mut browser,
        &issuer,
        PUBLIC,
        &code,
        &other.verifier,
        REDIRECT,
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"], "invalid_grant");
    assert_eq!(refused.headers[header::CACHE_CONTROL], "no-store");
    // The stolen code cannot be retried with the right verifier either.
    let again = redeem(
        &mut browser,
        &issuer,
        PUBLIC,
        &code,
        &pkce.verifier,
        REDIRECT,
    )
    .await;
    assert_eq!(again.json()["error"], "invalid_grant");
    issuer.shutdown().await;
}

#[tokio::test]
async fn a_code_is_single_use() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let pkce = pkce();
    let code = alice_code(&mut browser, &issuer, &pkce).await;
    let first = redeem(
        &mut browser,
        &issuer,
        PUBLIC,
        &code,
        &pkce.verifier,
        REDIRECT,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = redeem(
        &mut browser,
        &issuer,
        PUBLIC,
        &code,
        &pkce.verifier,
        REDIRECT,
    )
    .await;
    assert_eq!(second.status, StatusCode::BAD_REQUEST);
    assert_eq!(second.json()["error"], "invalid_grant");
    issuer.shutdown().await;
}

#[tokio::test]
async fn missing_or_plain_pkce_is_refused_by_redirect() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let p = pkce();
    for extra in [
        vec![("code_challenge_method", "plain")],
        vec![("code_challenge", "")],
    ] {
        // The later parameter replaces the default one in this test's URL builder.
        let mut url = authorize_url(&issuer, PUBLIC, &p, &[]);
        for (k, v) in &extra {
            let default = match *k {
                "code_challenge_method" => "code_challenge_method=S256".to_owned(),
                _ => format!("code_challenge={}", p.challenge),
            };
            url = url.replace(&default, &format!("{k}={v}"));
        }
        let reply = browser.get(&url).await;
        assert_eq!(
            reply.status,
            StatusCode::SEE_OTHER,
            "{extra:?}: {}",
            reply.body
        );
        assert!(reply.location().starts_with(REDIRECT));
        let params = reply.query();
        assert_eq!(params["error"], "invalid_request", "{extra:?}");
        assert_eq!(params["state"], "state-1");
        assert!(!params.contains_key("code"));
    }
    let no_openid =
        authorize_url(&issuer, PUBLIC, &p, &[]).replace("scope=openid+profile", "scope=profile");
    let reply = browser.get(&no_openid).await;
    assert_eq!(reply.query()["error"], "invalid_scope");
    issuer.shutdown().await;
}

#[tokio::test]
async fn unknown_clients_and_redirect_uris_get_a_page_not_a_redirect() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let p = pkce();
    let wrong_redirect = authorize_url(&issuer, PUBLIC, &p, &[]).replace(
        &form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>(),
        &form_urlencoded::byte_serialize(OTHER_REDIRECT.as_bytes()).collect::<String>(),
    );
    assert!(wrong_redirect.contains("evil.example"));
    let unknown_client = authorize_url(&issuer, "nobody", &p, &[]);
    for url in [wrong_redirect, unknown_client] {
        let reply = browser.get(&url).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.headers.get(header::LOCATION).is_none());
        assert!(reply.body.contains("role=\"alert\""), "{}", reply.body);
    }
    // At the token endpoint, a redirect_uri other than the request's is refused.
    let code = alice_code(&mut browser, &issuer, &p).await;
    let refused = redeem(
        &mut browser,
        &issuer,
        PUBLIC,
        &code,
        &p.verifier,
        OTHER_REDIRECT,
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error"], "invalid_grant");
    issuer.shutdown().await;
}

#[tokio::test]
async fn confidential_clients_must_authenticate() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let p = pkce();
    let url = format!("{}/token", issuer.url());
    let done = sign_in(
        &mut browser,
        &issuer,
        &authorize_url(&issuer, CONFIDENTIAL, &p, &[]),
        "password",
    )
    .await;
    let code = done.query()["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", p.verifier.as_str()),
        ("redirect_uri", REDIRECT),
    ];
    let wrong = browser
        .post_with(
            &url,
            &form,
            &[("authorization", &basic(CONFIDENTIAL, "guess"))],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert!(wrong.headers.contains_key(header::WWW_AUTHENTICATE));
    let mut as_public = form.to_vec();
    as_public.push(("client_id", CONFIDENTIAL));
    let none = browser.post(&url, &as_public).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json()["error"], "invalid_client");
    // Failed client authentication does not spend the code.
    let ok = browser
        .post_with(
            &url,
            &form,
            &[("authorization", &basic(CONFIDENTIAL, SECRET))],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    issuer.shutdown().await;
}

#[tokio::test]
async fn wrong_password_shows_the_form_again_without_naming_the_cause() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let url = authorize_url(&issuer, PUBLIC, &pkce(), &[]);
    let page = browser.get(&url).await;
    let rid = page.rid();
    let authorize = format!("{}/authorize", issuer.url());
    let wrong_password = browser
        .post(
            &authorize,
            &[
                ("rid", &rid),
                ("username", "alice@example.com"),
                ("password", "nope"),
            ],
        )
        .await;
    let unknown_user = browser
        .post(
            &authorize,
            &[
                ("rid", &rid),
                ("username", "mallory@example.com"),
                ("password", "password"),
            ],
        )
        .await;
    for reply in [&wrong_password, &unknown_user] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.headers.get(header::LOCATION).is_none());
        assert!(
            reply
                .body
                .contains("The email or password is not right. Try again."),
            "{}",
            reply.body
        );
        assert!(reply.body.contains("<label for=\"password\">"));
    }
    // Same page for both apart from the echoed username.
    assert_eq!(
        wrong_password.body.replace("alice@example.com", "X"),
        unknown_user.body.replace("mallory@example.com", "X")
    );
    // The request is still open: the right password now succeeds.
    let ok = browser
        .post(
            &authorize,
            &[
                ("rid", &rid),
                ("username", "alice@example.com"),
                ("password", "password"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert!(ok.query().contains_key("code"));
    issuer.shutdown().await;
}

#[tokio::test]
async fn the_form_answers_only_the_browser_that_opened_it() {
    let issuer = start().await;
    let mut victim = Browser::new();
    let mut attacker = Browser::new();
    let page = attacker
        .get(&authorize_url(&issuer, PUBLIC, &pkce(), &[]))
        .await;
    // The victim's browser posts the attacker's form (login CSRF).
    let reply = victim
        .post(
            &format!("{}/authorize", issuer.url()),
            &[
                ("rid", &page.rid()),
                ("username", "alice@example.com"),
                ("password", "password"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.headers.get(header::LOCATION).is_none());
    issuer.shutdown().await;
}

async fn code_claims(browser: &mut Browser, issuer: &Issuer, reply: &Reply, pkce: &Pkce) -> Value {
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let code = reply.query()["code"].clone();
    let tokens = redeem(browser, issuer, PUBLIC, &code, &pkce.verifier, REDIRECT).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    verify_id_token(issuer, tokens.json()["id_token"].as_str().unwrap(), PUBLIC).await
}

#[tokio::test]
async fn a_second_sign_in_is_silent_unless_prompt_login() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let p = pkce();
    let first = sign_in(
        &mut browser,
        &issuer,
        &authorize_url(&issuer, PUBLIC, &p, &[]),
        "password",
    )
    .await;
    let first = code_claims(&mut browser, &issuer, &first, &p).await;
    issuer.backdate_sign_ins(Duration::from_secs(100));

    // Silent: straight back with a code; auth_time is still the first password entry's.
    let p = pkce();
    let silent = browser.get(&authorize_url(&issuer, PUBLIC, &p, &[])).await;
    let silent = code_claims(&mut browser, &issuer, &silent, &p).await;
    assert_eq!(
        silent["auth_time"].as_u64().unwrap(),
        first["auth_time"].as_u64().unwrap() - 100
    );

    // prompt=login: the password page, and a fresh auth_time afterwards.
    let p = pkce();
    let url = authorize_url(&issuer, PUBLIC, &p, &[("prompt", "login")]);
    let page = browser.get(&url).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Enter your password again"));
    let again = sign_in(&mut browser, &issuer, &url, "password").await;
    let again = code_claims(&mut browser, &issuer, &again, &p).await;
    assert!(again["auth_time"].as_u64().unwrap() >= first["auth_time"].as_u64().unwrap());

    // prompt=none without a session: an error back to the client, not a page.
    let mut stranger = Browser::new();
    let reply = stranger
        .get(&authorize_url(
            &issuer,
            PUBLIC,
            &pkce(),
            &[("prompt", "none")],
        ))
        .await;
    assert_eq!(reply.query()["error"], "login_required");
    issuer.shutdown().await;
}

#[tokio::test]
async fn max_age_is_honoured() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let p = pkce();
    let first = sign_in(
        &mut browser,
        &issuer,
        &authorize_url(&issuer, PUBLIC, &p, &[]),
        "password",
    )
    .await;
    code_claims(&mut browser, &issuer, &first, &p).await;
    issuer.backdate_sign_ins(Duration::from_secs(120));

    // Within max_age: silent.
    let p = pkce();
    let reply = browser
        .get(&authorize_url(&issuer, PUBLIC, &p, &[("max_age", "600")]))
        .await;
    let claims = code_claims(&mut browser, &issuer, &reply, &p).await;
    assert!(unix_now() - claims["auth_time"].as_u64().unwrap() >= 120);

    // Older than max_age: the password again, then a fresh auth_time.
    let p = pkce();
    let url = authorize_url(&issuer, PUBLIC, &p, &[("max_age", "60")]);
    let page = browser.get(&url).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("name=\"password\""));
    let done = sign_in(&mut browser, &issuer, &url, "password").await;
    let claims = code_claims(&mut browser, &issuer, &done, &p).await;
    assert!(unix_now() - claims["auth_time"].as_u64().unwrap() <= 60);
    issuer.shutdown().await;
}

#[tokio::test]
async fn mfa_is_asked_for_when_requested_and_recorded() {
    let issuer = start().await;
    let mut browser = Browser::new();
    let p = pkce();
    let url = authorize_url(&issuer, PUBLIC, &p, &[("acr_values", ACR_MFA)]);
    let page = browser.get(&url).await;
    assert!(page.body.contains("<label for=\"otp\">"), "{}", page.body);
    let rid = page.rid();
    let authorize = format!("{}/authorize", issuer.url());
    let credentials = [
        ("rid", rid.as_str()),
        ("username", "carol@example.com"),
        ("password", "carol-password"),
    ];
    let without = browser.post(&authorize, &credentials).await;
    assert_eq!(without.status, StatusCode::UNAUTHORIZED);
    assert!(without.body.contains("one-time code is not right"));
    let code = totp_code(TOTP_SECRET, unix_now());
    let mut with = credentials.to_vec();
    with.push(("otp", &code));
    let done = browser.post(&authorize, &with).await;
    let claims = code_claims(&mut browser, &issuer, &done, &p).await;
    assert_eq!(claims["acr"], ACR_MFA);
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));
    assert_eq!(claims["groups"], serde_json::json!(["security"]));
    issuer.shutdown().await;
}
