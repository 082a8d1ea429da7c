//! Token verification end to end through the public API: ES256 and RS256, the verified-token
//! cache, scheduled and on-demand key refresh, and rotation (removed keys stop working, cached
//! or not).

mod authn_support;

use std::time::Duration;

use authn_support::*;
use gatehouse_proxy::authn::{Authenticator, AuthnError, AuthnOptions};
use serde_json::json;

const ISS: &str = "https://issuer.test";

fn file_issuer(path: &std::path::Path, refresh: &str) -> gatehouse_proxy::config::IssuerConfig {
    issuer_config(&format!(
        "issuer: {ISS}\njwks_file: {}\naudiences: [gatehouse]\nalgorithms: [ES256, RS256]\nleeway: 0s\nrefresh_interval: {refresh}\n",
        path.display()
    ))
}

#[tokio::test]
async fn es256_and_rs256_tokens_verify_and_repeat_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (es, rs) = (SigningKey::es256(), SigningKey::rs256());
    write_jwks(&jwks, &[&es, &rs]);
    let authn = Authenticator::new(&[file_issuer(&jwks, "5m")], AuthnOptions::default())
        .await
        .unwrap();

    for (key, sub) in [(&es, "es-bot"), (&rs, "rs-bot")] {
        let token = key.sign(&claims(ISS, sub, 600));
        let first = authn.authenticate(&bearer(&token), None).await.unwrap();
        assert_eq!(first.principal, sub);
        let again = authn.authenticate(&bearer(&token), None).await.unwrap();
        assert_eq!(again, first);
    }
    let stats = authn.cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 2, 2));

    // A forged signature never reaches the cache, and is refused each time.
    let token = es.sign(&claims(ISS, "es-bot", 600));
    let forged = format!("{}x", &token[..token.len() - 1]);
    for _ in 0..2 {
        let refused = authn
            .authenticate(&bearer(&forged), None)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, AuthnError::BadSignature | AuthnError::Malformed),
            "{refused:?}"
        );
    }
    assert_eq!(authn.cache_stats().entries, 2);
}

#[tokio::test]
async fn a_cached_token_stops_working_at_its_expiry_like_an_uncached_one() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let key = SigningKey::es256();
    write_jwks(&jwks, &[&key]);
    // Leeway 1s: the token is good through exp + 1.
    let mut config = file_issuer(&jwks, "5m");
    config.leeway = Duration::from_secs(1);
    let authn = Authenticator::new(&[config], AuthnOptions::default())
        .await
        .unwrap();
    let exp = now() + 1;
    let token = key.sign(&json!({"iss": ISS, "sub": "bot", "aud": "gatehouse", "exp": exp}));
    assert!(authn.authenticate(&bearer(&token), None).await.is_ok());

    let accepted = std::cell::Cell::new(0);
    let refused = wait_until(Duration::from_secs(6), || {
        let (authn, token, accepted) = (&authn, &token, &accepted);
        async move {
            let before = now();
            match authn.authenticate(&bearer(token), None).await {
                Ok(_) => {
                    assert!(
                        before <= exp + 1,
                        "accepted at {before}, past exp {exp} + leeway"
                    );
                    accepted.set(accepted.get() + 1);
                    false
                }
                Err(e) => {
                    assert_eq!(e, AuthnError::Expired);
                    assert!(now() > exp + 1, "refused before exp + leeway");
                    true
                }
            }
        }
    })
    .await;
    assert!(refused, "the token never expired");
    assert!(accepted.get() > 0);
    assert!(
        authn.cache_stats().hits > 0,
        "the repeats came from the cache"
    );
}

#[tokio::test]
async fn a_removed_key_stops_verifying_after_the_scheduled_refresh_even_when_cached() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (old, new) = (SigningKey::es256(), SigningKey::rs256());
    write_jwks(&jwks, &[&old, &new]);
    let authn = Authenticator::new(&[file_issuer(&jwks, "200ms")], AuthnOptions::default())
        .await
        .unwrap();
    let old_token = old.sign(&claims(ISS, "old", 600));
    let new_token = new.sign(&claims(ISS, "new", 600));
    assert!(authn.authenticate(&bearer(&old_token), None).await.is_ok());
    assert!(authn.authenticate(&bearer(&old_token), None).await.is_ok());
    assert!(authn.cache_stats().hits >= 1, "the old token is cached");

    // The issuer drops the old key; its kid stays known to the proxy until the refresh.
    write_jwks(&jwks, &[&new]);
    let gone = wait_until(Duration::from_secs(5), || async {
        authn.authenticate(&bearer(&old_token), None).await == Err(AuthnError::UnknownKey)
    })
    .await;
    assert!(gone, "the removed key kept verifying");
    assert!(authn.cache_stats().revoked >= 1);
    assert_eq!(
        authn
            .authenticate(&bearer(&new_token), None)
            .await
            .unwrap()
            .principal,
        "new"
    );
}

#[tokio::test]
async fn a_kid_reused_for_a_new_key_does_not_keep_the_old_key_alive() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let old = SigningKey::es256();
    let replacement = SigningKey::es256();
    let reused = replacement.renamed(old.kid());
    write_jwks(&jwks, &[&old]);
    let authn = Authenticator::new(&[file_issuer(&jwks, "200ms")], AuthnOptions::default())
        .await
        .unwrap();
    let old_token = old.sign(&claims(ISS, "old", 600));
    assert!(authn.authenticate(&bearer(&old_token), None).await.is_ok());

    write_jwks(&jwks, &[&reused]);
    let gone = wait_until(Duration::from_secs(5), || async {
        authn.authenticate(&bearer(&old_token), None).await == Err(AuthnError::BadSignature)
    })
    .await;
    assert!(gone, "the replaced key kept verifying");
    let token = reused.sign(&claims(ISS, "new", 600));
    assert!(authn.authenticate(&bearer(&token), None).await.is_ok());
}

#[tokio::test]
async fn an_unknown_kid_reloads_the_keys_at_most_once_per_gap() {
    let first = SigningKey::es256();
    let server = JwksServer::start(&[&first]).await;
    let config = issuer_config(&format!(
        "issuer: {}\naudiences: [gatehouse]\nalgorithms: [ES256]\n",
        server.url
    ));
    let rotated = SigningKey::es256();

    // No gap: a token signed by a key published after start is accepted on first sight.
    let eager = Authenticator::new(
        std::slice::from_ref(&config),
        AuthnOptions {
            unknown_key_refresh_gap: Duration::ZERO,
            ..AuthnOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(server.fetches(), 1);
    server.set_keys(&[&first, &rotated]);
    let token = rotated.sign(&claims(&server.url, "bot", 600));
    assert!(eager.authenticate(&bearer(&token), None).await.is_ok());
    assert_eq!(server.fetches(), 2);
    drop(eager);

    // The default gap: the first made-up kid after a load costs one fetch (a rotation right
    // after start-up must be seen); the rest within the gap do not reach the issuer.
    let fetched = server.fetches();
    let patient = Authenticator::new(std::slice::from_ref(&config), AuthnOptions::default())
        .await
        .unwrap();
    assert_eq!(server.fetches(), fetched + 1);
    for _ in 0..5 {
        let stranger = SigningKey::es256().sign(&claims(&server.url, "bot", 600));
        assert_eq!(
            patient.authenticate(&bearer(&stranger), None).await,
            Err(AuthnError::UnknownKey)
        );
    }
    assert_eq!(server.fetches(), fetched + 2);
}

#[tokio::test]
async fn scheduled_refresh_runs_until_the_authenticator_is_dropped() {
    let key = SigningKey::es256();
    let server = JwksServer::start(&[&key]).await;
    let mut config = issuer_config(&format!(
        "issuer: {}\naudiences: [gatehouse]\nalgorithms: [ES256]\n",
        server.url
    ));
    config.refresh_interval = Duration::from_millis(100);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let authn = Authenticator::new(
        &[config],
        AuthnOptions {
            shutdown: Some(shutdown.clone()),
            ..AuthnOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async { server.fetches() >= 3 }).await,
        "no scheduled reloads"
    );
    drop(authn);
    // Absence can only be observed over a window: ten refresh intervals without a fetch.
    let after = server.fetches();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.fetches() <= after + 1, "reloads went on after drop");
    assert!(
        !shutdown.is_cancelled(),
        "dropping does not cancel the caller's token"
    );
}

#[tokio::test]
async fn a_disabled_cache_verifies_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let key = SigningKey::rs256();
    write_jwks(&jwks, &[&key]);
    let authn = Authenticator::new(
        &[file_issuer(&jwks, "5m")],
        AuthnOptions {
            cache_capacity: 0,
            ..AuthnOptions::default()
        },
    )
    .await
    .unwrap();
    let token = key.sign(&claims(ISS, "bot", 600));
    for _ in 0..3 {
        assert!(authn.authenticate(&bearer(&token), None).await.is_ok());
    }
    assert_eq!(authn.cache_stats().hits, 0);
    assert_eq!(authn.cache_stats().capacity, 0);
}

#[tokio::test]
async fn presets_apply_to_real_shaped_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let key = SigningKey::rs256();
    write_jwks(&jwks, &[&key]);
    let github = issuer_config(&format!(
        "issuer: https://token.actions.githubusercontent.com\njwks_file: {}\naudiences: [gatehouse]\nalgorithms: [RS256]\nclaims:\n  preset: github-actions\n  principal: '{{repository}}@{{environment|ref}}'\n",
        jwks.display()
    ));
    let kubernetes = issuer_config(&format!(
        "issuer: https://kubernetes.default.svc\njwks_file: {}\naudiences: [gatehouse]\nalgorithms: [RS256]\nclaims:\n  preset: kubernetes\n  principal_prefix: 'cluster-a:'\n",
        jwks.display()
    ));
    let authn = Authenticator::new(&[github, kubernetes], AuthnOptions::default())
        .await
        .unwrap();
    let now = now();
    // GitHub's documented example token, re-dated and addressed to us.
    let gh = key.sign(&json!({
        "jti": "example-id",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": "gatehouse",
        "ref": "refs/heads/main",
        "sha": "example-sha",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "74",
        "repository_owner_id": "65",
        "run_id": "example-run-id",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "example-workflow",
        "head_ref": "",
        "base_ref": "",
        "event_name": "workflow_dispatch",
        "ref_type": "branch",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": now - 5,
        "exp": now + 300,
        "iat": now - 5
    }));
    let v = authn.authenticate(&bearer(&gh), None).await.unwrap();
    assert_eq!(v.principal, "github:octo-org/octo-repo@prod");
    assert_eq!(v.groups, vec!["github:org:octo-org"]);
    assert_eq!(v.attributes["workflow"], "example-workflow");
    assert_eq!(v.attributes["ref"], "refs/heads/main");

    // A projected service-account token as the kubelet mints it (Kubernetes 1.30+).
    let sa = key.sign(&json!({
        "aud": ["gatehouse"],
        "exp": now + 3600,
        "iat": now,
        "iss": "https://kubernetes.default.svc",
        "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
        "kubernetes.io": {
            "namespace": "kube-system",
            "node": {"name": "127.0.0.1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
            "pod": {"name": "coredns-69cbfb9798-jv9gn", "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
            "serviceaccount": {"name": "coredns", "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
            "warnafter": now + 600
        },
        "nbf": now,
        "sub": "system:serviceaccount:kube-system:coredns"
    }));
    let v = authn.authenticate(&bearer(&sa), None).await.unwrap();
    assert_eq!(v.principal, "cluster-a:sa:kube-system:coredns");
    assert_eq!(v.issuer, "https://kubernetes.default.svc");
    assert_eq!(v.groups, vec!["serviceaccounts:kube-system"]);
    assert_eq!(v.attributes["pod"], "coredns-69cbfb9798-jv9gn");
    assert_eq!(v.attributes["namespace"], "kube-system");
}
