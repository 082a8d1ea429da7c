//! The spine, end to end: kubectl → proxy → acked JetStream event → RocksDB ledger → verify.
//!
//! Every test runs its own nats-server, sandbox, issuer, evidence service and proxy, and ends
//! with `finish()`: all events valid against their schemas, every request's outcome recorded,
//! the ledger equal to the stream, the chain verifying.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_events::BodyDigest;
use gatehouse_tests::{DEADLINE, TestBed, eventually};
use serde_json::{Value, json};

type Result = anyhow::Result<()>;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Kubernetes requests the cluster received from the proxy at paths containing `needle`.
async fn reached_cluster(bed: &TestBed, needle: &str) -> anyhow::Result<usize> {
    Ok(bed
        .upstream_requests()
        .await?
        .iter()
        .filter(|r| r.authenticated_user.as_deref() == Some(bed.proxy_identity()))
        .filter(|r| r.path.contains(needle))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_request_is_recorded_then_forwarded_as_the_caller() -> Result {
    let bed = TestBed::start().await?;

    let out = bed
        .kubectl("ci-deployer", &["get", "pods", "-n", "apps"])
        .await?;
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.contains("web") && out.stdout.contains("worker"),
        "{}",
        out.stdout
    );

    // The cluster saw the proxy's own credential, impersonating the caller and its groups.
    let listed = bed
        .upstream_requests()
        .await?
        .into_iter()
        .find(|r| r.path == "/api/v1/namespaces/apps/pods" && r.method == "GET")
        .expect("the list reached the cluster");
    assert_eq!(
        listed.authenticated_user.as_deref(),
        Some(bed.proxy_identity())
    );
    assert_eq!(listed.impersonated_user.as_deref(), Some("ci-deployer"));
    // The apiserver adds system:authenticated to any impersonated user.
    assert_eq!(
        listed.impersonated_groups,
        ["deployers", "system:authenticated"]
    );
    // Its audit event carries Gatehouse's request id.
    assert!(listed.audit_id.is_some());
    assert_eq!(listed.effective_user.as_deref(), Some("ci-deployer"));

    // One request, followed event by event.
    let token = bed.mint("ci-deployer")?;
    let reply = bed.get("/api/v1/namespaces/apps/pods/web", &token).await?;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["kind"], "Pod");
    let id = reply.request_id.expect("every response names its request");
    let events = bed
        .events_of(
            &id,
            &[
                "request.received",
                "request.forwarded",
                "response.completed",
            ],
        )
        .await?;
    let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
    assert_eq!(
        names,
        [
            "request.received",
            "request.forwarded",
            "response.completed"
        ]
    );

    let received = events[0].data();
    assert_eq!(received["decision"]["action"], "allow");
    assert_eq!(received["decision"]["rule"], "deployer-apps");
    assert_eq!(received["identity"]["principal"], "ci-deployer");
    assert_eq!(received["identity"]["owner"], "alice@example.com");
    assert_eq!(received["identity"]["team"], "platform");
    assert_eq!(received["identity"]["issuer"], bed.issuer_url());
    assert_eq!(received["request"]["verb"], "get");
    assert_eq!(received["request"]["resource"], "pods");
    assert_eq!(received["request"]["namespace"], "apps");
    assert_eq!(received["request"]["name"], "web");
    assert_eq!(received["source"]["ip"], "127.0.0.1");
    let text = events[0].bytes.as_ref();
    assert!(
        !String::from_utf8_lossy(text).contains(&token),
        "the caller's token must never be recorded"
    );

    let forwarded = events[1].data();
    assert_eq!(forwarded["impersonated_user"], "ci-deployer");
    assert_eq!(forwarded["impersonated_groups"], json!(["deployers"]));
    assert_eq!(forwarded["upstream"], bed.stack().cluster.url());

    let completed = events[2].data();
    assert_eq!(completed["status"], 200);
    assert_eq!(completed["outcome"], "complete");
    // The recorded digest is of exactly the bytes the client received.
    let digest = BodyDigest::of(&reply.bytes);
    assert_eq!(completed["body"]["bytes"], digest.bytes);
    assert_eq!(completed["body"]["blake3"], digest.blake3);
    // Proxy and evidence ran as their own NATS users, and the server refused them nothing.
    assert_eq!(bed.nats_refusals()?, Vec::<String>::new());

    bed.finish().await?;
    Ok(())
}

/// A caller cannot choose whom the proxy impersonates: its own `Impersonate-*` headers (and
/// `kubectl --as`) are dropped, and the cluster sees the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cannot_impersonate_anyone_else() -> Result {
    let bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    let bearer = format!("Bearer {token}");
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/kube-system/configmaps",
            &[
                ("authorization", bearer.as_str()),
                ("impersonate-user", "sandbox-admin"),
                ("impersonate-group", "system:masters"),
                ("impersonate-group", "system:authenticated"),
                ("Impersonate-Extra-Scopes", "everything"),
            ],
            None,
        )
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = bed
        .upstream_request("/api/v1/namespaces/kube-system/configmaps")
        .await?;
    assert_eq!(seen.impersonated_user.as_deref(), Some("ci-deployer"));
    assert_eq!(
        seen.impersonated_groups,
        ["deployers", "system:authenticated"]
    );
    // No extra reached the cluster (an extra the proxy had passed on would be refused: the
    // proxy may not impersonate userextras).
    assert_eq!(seen.status, 200);

    // A properly signed token claiming Kubernetes' own groups does not get them upstream.
    let greedy = bed.sign(&json!({
        "iss": bed.issuer_url(), "sub": "ci-deployer", "aud": "gatehouse",
        "iat": now() - 10, "nbf": now() - 10, "exp": now() + 600,
        "groups": ["system:masters", "release-managers"],
    }))?;
    assert_eq!(
        bed.get("/api/v1/namespaces/apps/secrets", &greedy)
            .await?
            .status,
        200
    );
    let seen = bed
        .upstream_request("/api/v1/namespaces/apps/secrets")
        .await?;
    assert_eq!(
        seen.impersonated_groups,
        ["release-managers", "deployers", "system:authenticated"]
    );

    // kubectl --as is the same header, and gets the same treatment: readonly-bot may not
    // touch apps' configmaps, ci-deployer may, and the cluster sees ci-deployer.
    let out = bed
        .kubectl(
            "ci-deployer",
            &[
                "--as=readonly-bot",
                "create",
                "configmap",
                "as-test",
                "--from-literal=a=b",
            ],
        )
        .await?;
    assert!(out.success, "{}", out.stderr);
    let created = bed
        .upstream_requests()
        .await?
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/namespaces/apps/configmaps")
        .expect("the create reached the cluster");
    assert_eq!(created.impersonated_user.as_deref(), Some("ci-deployer"));
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_through_the_proxy() -> Result {
    let bed = TestBed::start().await?;
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: spine\n  namespace: apps\ndata:\n  color: blue\n";

    let created = bed
        .kubectl_stdin(
            "ci-deployer",
            &["create", "--validate=false", "-f", "-"],
            manifest,
        )
        .await?;
    assert!(created.success, "create: {}", created.stderr);
    assert!(
        created.stdout.contains("configmap/spine created"),
        "{}",
        created.stdout
    );

    let yaml = bed
        .kubectl("ci-deployer", &["get", "configmap", "spine", "-o", "yaml"])
        .await?;
    assert!(yaml.success, "{}", yaml.stderr);
    assert!(yaml.stdout.contains("color: blue"), "{}", yaml.stdout);

    let applied = bed
        .kubectl_stdin(
            "ci-deployer",
            &["apply", "-f", "-"],
            &manifest.replace("blue", "green"),
        )
        .await?;
    assert!(applied.success, "apply: {}", applied.stderr);
    let changed = bed
        .kubectl(
            "ci-deployer",
            &["get", "configmap", "spine", "-o", "jsonpath={.data.color}"],
        )
        .await?;
    assert_eq!(changed.stdout.trim(), "green", "{}", changed.stderr);

    let described = bed
        .kubectl("ci-deployer", &["describe", "pod", "web"])
        .await?;
    assert!(described.success, "{}", described.stderr);
    assert!(
        described.stdout.contains("Name:") && described.stdout.contains("web"),
        "{}",
        described.stdout
    );

    let deleted = bed
        .kubectl("ci-deployer", &["delete", "configmap", "spine"])
        .await?;
    assert!(deleted.success, "delete: {}", deleted.stderr);
    assert!(deleted.stdout.contains("deleted"), "{}", deleted.stdout);
    let gone = bed
        .kubectl("ci-deployer", &["get", "configmap", "spine"])
        .await?;
    assert!(!gone.success);
    assert!(
        gone.stderr.contains("NotFound") || gone.stderr.contains("not found"),
        "{}",
        gone.stderr
    );

    // Every kubectl call left a complete, attributable trail.
    let finished = bed.finish().await?;
    let verbs: Vec<String> = finished
        .events
        .iter()
        .filter(|e| {
            e.name() == "request.received" && e.data()["request"]["resource"] == "configmaps"
        })
        .map(|e| {
            e.data()["request"]["verb"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    for verb in ["create", "get", "patch", "delete"] {
        assert!(verbs.iter().any(|v| v == verb), "no {verb} in {verbs:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_denial_is_a_status_and_never_reaches_the_cluster() -> Result {
    let bed = TestBed::start().await?;

    let out = bed
        .kubectl("ci-deployer", &["get", "secrets", "-n", "prod"])
        .await?;
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "gatehouse: ci-deployer may not list secrets in namespace \"prod\": denied by rule deployer-no-secrets-elsewhere"
        ),
        "{}",
        out.stderr
    );

    let token = bed.mint("ci-deployer")?;
    let reply = bed
        .get("/api/v1/namespaces/prod/secrets/db", &token)
        .await?;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body["kind"], "Status");
    assert_eq!(reply.body["reason"], "Forbidden");
    assert_eq!(reply.body["code"], 403);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("gatehouse: ")
    );
    let id = reply.request_id.expect("request id");
    let events = bed
        .events_of(&id, &["request.received", "request.denied"])
        .await?;
    assert_eq!(events[0].data()["decision"]["action"], "deny");
    assert_eq!(
        events[0].data()["decision"]["rule"],
        "deployer-no-secrets-elsewhere"
    );
    assert_eq!(events[1].data()["reason"], "policy");
    assert_eq!(events[1].data()["status"], 403);
    assert!(events.iter().all(|e| e.name() != "request.forwarded"));

    // No rule at all: default deny, said so.
    let reply = bed
        .request(
            "DELETE",
            "/api/v1/namespaces/kube-system/pods/coredns",
            Some(&format!("Bearer {token}")),
            None,
        )
        .await?;
    assert_eq!(reply.status, 403);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap_or("")
            .ends_with("(default deny)"),
        "{}",
        reply.body
    );

    assert_eq!(reached_cluster(&bed, "/namespaces/prod/secrets").await?, 0);
    assert!(
        !bed.upstream_requests()
            .await?
            .iter()
            .any(|r| r.method == "DELETE")
    );
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_identity_is_denied_everything_but_discovery() -> Result {
    let bed = TestBed::start().await?;
    // Discovery is open to any authenticated caller, so kubectl gets as far as the request
    // it was asked to make and prints Gatehouse's refusal of it.
    let out = bed.kubectl("intruder", &["get", "pods"]).await?;
    assert!(!out.success);
    assert!(
        out.stderr.contains("Forbidden")
            && out
                .stderr
                .contains("gatehouse: identity \"intruder\" is not in the identity registry"),
        "{}",
        out.stderr
    );

    let token = bed.mint("intruder")?;
    for path in ["/version", "/api", "/apis/apps/v1"] {
        let reply = bed.get(path, &token).await?;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let id = reply.request_id.expect("request id");
        let events = bed
            .events_of(&id, &["request.received", "request.forwarded"])
            .await?;
        assert_eq!(events[0].data()["identity"]["registered"], false);
        assert_eq!(events[0].data()["decision"]["rule"], "default:discovery");
    }
    for (method, path, body) in [
        ("GET", "/api/v1/namespaces/apps/pods", None),
        ("GET", "/api/v1/namespaces/apps/pods/web", None),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(
                r#"{"kind":"SelfSubjectAccessReview","apiVersion":"authorization.k8s.io/v1","spec":{"resourceAttributes":{"verb":"get","resource":"pods"}}}"#,
            ),
        ),
    ] {
        let bearer = format!("Bearer {token}");
        let reply = bed.request(method, path, Some(&bearer), body).await?;
        assert_eq!(reply.status, 403, "{path}");
        let id = reply.request_id.expect("request id");
        let events = bed
            .events_of(&id, &["request.received", "request.denied"])
            .await?;
        let identity = &events[0].data()["identity"];
        assert_eq!(identity["principal"], "intruder");
        assert_eq!(identity["registered"], false);
        assert_eq!(identity["owner"], Value::Null);
        assert_eq!(events[1].data()["reason"], "unknown_identity");
    }
    // What reached the cluster as the intruder is discovery, and only that.
    let reached: Vec<String> = bed
        .upstream_requests()
        .await?
        .into_iter()
        .filter(|r| r.impersonated_user.as_deref() == Some("intruder"))
        .map(|r| r.path)
        .collect();
    assert!(!reached.is_empty());
    assert!(
        reached.iter().all(|p| p == "/version"
            || p == "/api"
            || p == "/apis"
            || p.starts_with("/apis/") && !p.contains("/namespaces/")),
        "{reached:?}"
    );
    bed.finish().await?;
    Ok(())
}

/// A registered identity may always ask the cluster about itself: `kubectl auth whoami` and
/// `auth can-i` (the demo policy has no rule for them), answered for the impersonated caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_reviews_work_for_every_registered_identity() -> Result {
    let bed = TestBed::start().await?;
    let whoami = bed
        .kubectl("readonly-bot", &["auth", "whoami", "-o", "json"])
        .await?;
    assert!(whoami.success, "{}", whoami.stderr);
    let review: Value = serde_json::from_str(&whoami.stdout)?;
    assert_eq!(review["status"]["userInfo"]["username"], "readonly-bot");
    // The cluster's RBAC answers can-i for the caller: readonly-bot may list pods in prod,
    // may not in kube-system (Gatehouse's policy alone would let it).
    let yes = bed
        .kubectl(
            "readonly-bot",
            &["auth", "can-i", "list", "pods", "-n", "prod"],
        )
        .await?;
    assert_eq!(yes.stdout.trim(), "yes", "{}", yes.stderr);
    let no = bed
        .kubectl(
            "readonly-bot",
            &["auth", "can-i", "list", "pods", "-n", "kube-system"],
        )
        .await?;
    assert_eq!(no.stdout.trim(), "no", "{}", no.stderr);
    let finished = bed.finish().await?;
    let rules: Vec<&Value> = finished
        .events
        .iter()
        .filter(|e| {
            e.name() == "request.received"
                && e.data()["request"]["resource"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("selfsubject"))
        })
        .map(|e| &e.data()["decision"]["rule"])
        .collect();
    assert_eq!(rules.len(), 3, "{rules:?}");
    assert!(
        rules.iter().all(|r| *r == "default:self-review"),
        "{rules:?}"
    );
    Ok(())
}

fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A request the API server could read differently from how policy read it is refused: a
/// single-valued parameter or header given twice with different values. Headers that would
/// claim an identity in another spelling never reach the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_read_two_ways_is_refused_before_anything_is_forwarded() -> Result {
    let bed = TestBed::start().await?;
    let bearer = format!("Bearer {}", bed.mint("ci-deployer")?);
    let auth = ("authorization", bearer.as_str());
    type Header<'a> = (&'a str, &'a str);
    let cases: [(&str, Vec<Header>, &str); 6] = [
        // Judged as a list, served as a live watch by a server that reads the last value.
        (
            "/api/v1/namespaces/apps/secrets?watch=false&watch=true",
            vec![auth],
            "query parameter \"watch\"",
        ),
        (
            "/api/v1/namespaces/apps/secrets?fieldSelector=metadata.name%3Da&fieldSelector=",
            vec![auth],
            "query parameter \"fieldSelector\"",
        ),
        (
            "/api/v1/namespaces/apps/secrets?resourceVersion=0&resource%56ersion=1",
            vec![auth],
            "query parameter \"resourceVersion\"",
        ),
        (
            "/api/v1/namespaces/apps/secrets",
            vec![
                auth,
                ("accept", "application/json"),
                ("accept", "application/vnd.kubernetes.protobuf"),
            ],
            "the accept header",
        ),
        // Names no object could have, and selectors holding control characters.
        (
            "/api/v1/namespaces/apps/secrets/db%00x",
            vec![auth],
            "the name in the path is not valid",
        ),
        (
            "/api/v1/namespaces/apps/secrets?labelSelector=a%3Db%0A",
            vec![auth],
            "\"labelSelector\" holds a control character",
        ),
    ];
    for (path, headers, expected) in &cases {
        let reply = bed.request_with("GET", path, headers, None).await?;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_eq!(reply.body["kind"], "Status", "{path}");
        assert_eq!(reply.body["reason"], "BadRequest", "{path}");
        let message = reply.body["message"].as_str().unwrap_or("");
        assert!(message.contains(expected), "{path}: {message}");
        let id = reply.request_id.clone().expect("request id");
        let events = bed
            .events_of(&id, &["request.received", "request.denied"])
            .await?;
        assert_eq!(events[1].data()["reason"], "bad_request", "{path}");
    }
    assert_eq!(
        reached_cluster(&bed, "/api/v1/namespaces/apps/secrets").await?,
        0
    );

    // The same value twice is one reading: it goes through.
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/apps/configmaps?limit=1&limit=1",
            &[
                auth,
                ("accept", "application/json"),
                ("accept", "application/json"),
            ],
            None,
        )
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Identity claims in other spellings are dropped; the cluster sees ci-deployer.
    let reply = bed
        .request_with(
            "GET",
            "/api/v1/namespaces/kube-system/configmaps",
            &[
                auth,
                ("impersonate_user", "system:admin"),
                ("x-remote-user", "system:admin"),
                ("x-remote-group", "system:masters"),
                ("x_remote_extra_scopes", "all"),
            ],
            None,
        )
        .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = bed
        .upstream_request("/api/v1/namespaces/kube-system/configmaps")
        .await?;
    assert_eq!(seen.impersonated_user.as_deref(), Some("ci-deployer"));
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_anything_is_forwarded() -> Result {
    let bed = TestBed::start().await?;
    let iss = bed.issuer_url();
    let claims = |overrides: Value| {
        let mut c = json!({
            "iss": iss, "sub": "ci-deployer", "aud": "gatehouse",
            "iat": now() - 60, "nbf": now() - 60, "exp": now() + 600,
        });
        if let (Some(c), Some(o)) = (c.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let valid = bed.sign(&claims(json!({})))?;
    let parts: Vec<&str> = valid.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0])?)?;

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "no bearer token was presented"),
        (
            "basic auth",
            Some("Basic Y2k6cGFzcw==".into()),
            "not a single `Bearer` token",
        ),
        (
            "garbage",
            Some("Bearer not.a.jwt".into()),
            "not a well-formed JWT",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                bed.sign(&claims(
                    json!({"exp": now() - 3600, "iat": now() - 7200, "nbf": now() - 7200})
                ))?
            )),
            "the token has expired",
        ),
        (
            "wrong audience",
            Some(format!(
                "Bearer {}",
                bed.sign(&claims(json!({"aud": "someone-else"})))?
            )),
            "not meant for this audience",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                bed.sign(&claims(json!({"nbf": now() + 3600})))?
            )),
            "not valid yet",
        ),
        (
            "unknown issuer",
            Some(format!(
                "Bearer {}",
                bed.sign(&claims(json!({"iss": "https://evil.example"})))?
            )),
            "is not trusted",
        ),
        (
            "bad signature",
            // The signature of a different payload: claims say ci-deployer, key says no.
            Some(format!(
                "Bearer {}",
                forge(
                    &header,
                    &claims(json!({"sub": "ci-deployer", "groups": ["system:masters"]})),
                    parts[2]
                )
            )),
            "signature does not verify",
        ),
        (
            "foreign key",
            Some(format!(
                "Bearer {}",
                gatehouse_sandbox::issuer::IssuerKeys::generate()?.sign(&claims(json!({})))?
            )),
            "no key of the issuer matches",
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}",
                forge(
                    &json!({"alg": "none", "typ": "JWT"}),
                    &claims(json!({})),
                    ""
                )
            )),
            "algorithm \"none\" is not accepted",
        ),
        (
            "HMAC with the public key",
            Some(format!(
                "Bearer {}",
                forge(
                    &json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]}),
                    &claims(json!({})),
                    "c2lnbmF0dXJl"
                )
            )),
            "algorithm \"HS256\" is not accepted",
        ),
    ];

    for (case, authorization, expected) in &cases {
        let reply = bed
            .request(
                "GET",
                "/api/v1/namespaces/apps/pods",
                authorization.as_deref(),
                None,
            )
            .await?;
        assert_eq!(reply.status, 401, "{case}: {}", reply.body);
        assert_eq!(reply.body["reason"], "Unauthorized", "{case}");
        let message = reply.body["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with("gatehouse: authentication failed: "),
            "{case}: {message}"
        );
        assert!(message.contains(expected), "{case}: {message}");
        let id = reply.request_id.clone().expect("request id");
        let events = bed
            .events_of(&id, &["request.received", "request.denied"])
            .await?;
        assert_eq!(events[0].data()["identity"], Value::Null, "{case}");
        assert_eq!(events[1].data()["reason"], "authentication", "{case}");
        assert_eq!(events[1].data()["status"], 401, "{case}");
        if let Some(auth) = authorization {
            let token = auth.rsplit(' ').next().unwrap_or("");
            assert!(
                token.len() < 8
                    || events
                        .iter()
                        .all(|e| !String::from_utf8_lossy(&e.bytes).contains(token)),
                "{case}: the token leaked into an event"
            );
        }
    }

    // kubectl shows the refusal too.
    let expired = bed.sign(&claims(
        json!({"exp": now() - 3600, "iat": now() - 7200, "nbf": now() - 7200}),
    ))?;
    let out = bed
        .kubectl_with_token("expired", &expired, &["get", "pods"])
        .await?;
    assert!(!out.success);
    assert!(
        out.stderr.contains("Unauthorized") || out.stderr.contains("logged in"),
        "{}",
        out.stderr
    );

    assert_eq!(
        reached_cluster(&bed, "/api/v1/namespaces/apps/pods").await?,
        0
    );
    bed.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_own_rbac_still_decides() -> Result {
    let bed = TestBed::start().await?;
    let out = bed
        .kubectl("readonly-bot", &["get", "configmaps", "-n", "kube-system"])
        .await?;
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "configmaps is forbidden: User \"readonly-bot\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"kube-system\""
        ),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("gatehouse:"),
        "the cluster refused, not Gatehouse"
    );

    let allowed = bed
        .kubectl("readonly-bot", &["get", "configmaps", "-n", "prod"])
        .await?;
    assert!(allowed.success, "{}", allowed.stderr);

    let finished = bed.finish().await?;
    let received = finished
        .events
        .iter()
        .find(|e| {
            e.name() == "request.received"
                && e.data()["request"]["namespace"] == "kube-system"
                && e.data()["identity"]["principal"] == "readonly-bot"
        })
        .expect("the request was recorded");
    assert_eq!(received.data()["decision"]["rule"], "readers");
    let completed = finished
        .events
        .iter()
        .find(|e| e.name() == "response.completed" && e.subject() == received.subject())
        .expect("the cluster's answer was recorded");
    assert_eq!(completed.data()["status"], 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nats_is_down_nothing_is_forwarded() -> Result {
    let mut bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    assert_eq!(
        bed.get("/api/v1/namespaces/apps/pods", &token)
            .await?
            .status,
        200
    );
    // A client in the middle of its work: discovery is cached, so what fails is the request.
    let warm = bed.kubectl("ci-deployer", &["get", "pods"]).await?;
    assert!(warm.success, "{}", warm.stderr);
    let before = bed.upstream_requests().await?.len();

    bed.stack_mut()
        .nats_server
        .as_mut()
        .expect("the stack started nats-server")
        .stop()
        .await;

    for _ in 0..3 {
        let reply = bed.get("/api/v1/namespaces/apps/pods", &token).await?;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.body["reason"], "ServiceUnavailable");
        let message = reply.body["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with("gatehouse: the audit trail is unavailable"),
            "{message}"
        );
        assert!(
            message.ends_with("the request was not forwarded"),
            "{message}"
        );
    }
    let out = bed.kubectl("ci-deployer", &["get", "pods"]).await?;
    assert!(!out.success);
    assert!(
        out.stderr.contains("audit trail is unavailable"),
        "{}",
        out.stderr
    );
    assert_eq!(
        bed.upstream_requests_now()?.len(),
        before,
        "a request reached the cluster while NATS was down"
    );

    // NATS comes back on the same port; the proxy recovers without a restart.
    bed.stack_mut()
        .nats_server
        .as_mut()
        .expect("nats-server")
        .restart()
        .await?;
    eventually("the proxy to forward again", DEADLINE, || async {
        (bed.get("/api/v1/namespaces/apps/pods", &token)
            .await
            .ok()?
            .status
            == 200)
            .then_some(())
    })
    .await?;
    bed.finish().await?;
    Ok(())
}

/// Reads a watch's lines until `name` (the cluster's own `kube-root-ca.crt` may come first).
async fn initial_list_includes(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    name: &str,
) -> Result {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await??;
        match line {
            Some(line) if line == name => return Ok(()),
            Some(line) => seen.push(line),
            None => anyhow::bail!("the watch ended before {name}: {seen:?}"),
        }
    }
}

/// A response that ends while NATS is down is still recorded: `response.completed` is sent
/// again (same `Nats-Msg-Id`) until NATS is back, and recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_ends_while_nats_is_down_is_recorded_when_it_returns() -> Result {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut bed = TestBed::start().await?;
    let mut watch = bed.kubectl_spawn("ci-deployer", &["get", "configmaps", "-w", "-o", "name"])?;
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    initial_list_includes(&mut lines, "configmap/web-config").await?;

    bed.stack_mut()
        .nats_server
        .as_mut()
        .expect("the stack started nats-server")
        .stop()
        .await;
    // The watch ends while nothing can be published: the proxy counts it finished (just
    // before it sends `response.completed`).
    watch.kill().await?;
    eventually("the proxy to see the watch end", DEADLINE, || async {
        let (_, metrics) = bed.admin_get("/metrics").await.ok()?;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("gatehouse_proxy_requests_total{") && l.contains("verb=\"watch\"")
            })
            .then_some(())
    })
    .await?;
    bed.stack_mut()
        .nats_server
        .as_mut()
        .expect("nats-server")
        .restart()
        .await?;

    let finished = bed.finish().await?;
    let watch_request = finished
        .events
        .iter()
        .find(|e| e.name() == "request.received" && e.data()["request"]["verb"] == "watch")
        .expect("the watch was recorded");
    let completed: Vec<_> = finished
        .events
        .iter()
        .filter(|e| e.name() == "response.completed" && e.subject() == watch_request.subject())
        .collect();
    assert_eq!(completed.len(), 1, "the watch's end is recorded once");
    assert_eq!(completed[0].data()["outcome"], "client_disconnected");
    Ok(())
}

/// A hung NATS (frozen, connection still open) cannot ack: the proxy waits out its publish
/// timeout, refuses, and forwards nothing. When NATS wakes up, the late events still tell a
/// consistent story (checked by `finish`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nats_cannot_ack_in_time_nothing_is_forwarded() -> Result {
    let bed = TestBed::start().await?;
    let token = bed.mint("ci-deployer")?;
    assert_eq!(
        bed.get("/api/v1/namespaces/apps/pods", &token)
            .await?
            .status,
        200
    );
    let before = bed.upstream_requests().await?.len();

    let nats = bed.stack().nats_server.as_ref().expect("nats-server");
    nats.pause();
    let started = std::time::Instant::now();
    let reply = bed.get("/api/v1/namespaces/apps/pods", &token).await;
    nats.resume();
    let reply = reply?;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let message = reply.body["message"].as_str().unwrap_or("");
    assert!(message.contains("no JetStream ack within"), "{message}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "refused before the publish timeout"
    );
    assert_eq!(
        bed.upstream_requests_now()?.len(),
        before,
        "forwarded without an ack"
    );

    // Once NATS answers again, so does the proxy.
    assert_eq!(
        bed.get("/api/v1/namespaces/apps/pods", &token)
            .await?
            .status,
        200
    );
    let finished = bed.finish().await?;
    let refused = reply.request_id.expect("request id");
    let story: Vec<&str> = finished
        .events
        .iter()
        .filter(|e| e.subject() == refused)
        .map(|e| e.name())
        .collect();
    assert!(!story.contains(&"request.forwarded"), "{story:?}");
    Ok(())
}

/// Watches stream through the proxy as they happen, and a client that leaves is recorded as
/// having left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_stream_and_disconnects_are_recorded() -> Result {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let bed = TestBed::start().await?;
    let mut watch = bed.kubectl_spawn("ci-deployer", &["get", "configmaps", "-w", "-o", "name"])?;
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    // The initial list arrives first...
    initial_list_includes(&mut lines, "configmap/web-config").await?;
    // ...then a change made while the response is still open.
    let created = bed
        .kubectl(
            "ci-deployer",
            &["create", "configmap", "live", "--from-literal=a=b"],
        )
        .await?;
    assert!(created.success, "{}", created.stderr);
    let seen = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if line == "configmap/live" {
                return anyhow::Ok(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(seen, "the watch did not deliver the change while open");
    watch.kill().await?;

    let finished = bed.finish().await?;
    let watch_request = finished
        .events
        .iter()
        .find(|e| e.name() == "request.received" && e.data()["request"]["verb"] == "watch")
        .expect("the watch was recorded");
    let completed = finished
        .events
        .iter()
        .find(|e| e.name() == "response.completed" && e.subject() == watch_request.subject())
        .expect("the watch's end was recorded");
    assert_eq!(completed.data()["outcome"], "client_disconnected");
    assert!(completed.data()["body"]["bytes"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ledger_fails_verification_naming_the_entry() -> Result {
    let bed = TestBed::start().await?;
    for namespace in ["apps", "prod", "default"] {
        let out = bed
            .kubectl("ci-deployer", &["get", "pods", "-n", namespace])
            .await?;
        assert!(out.success, "{}", out.stderr);
    }
    let finished = bed.finish().await?;
    assert!(finished.events.len() >= 9);
    let ledger_dir = gatehouse_evidence::store::ledger_dir(&finished.data_dir);

    // Change one byte of one event, as someone editing the database would, leaving the stored
    // hash alone.
    {
        let db = open_raw(&ledger_dir)?;
        let cf = db
            .cf_handle(gatehouse_evidence::store::CF_ENTRIES)
            .expect("entries");
        let key = 4u64.to_be_bytes();
        let mut value = db.get_cf(&cf, key)?.expect("entry 4");
        let last = value.len() - 2;
        value[last] ^= 0x20;
        db.put_cf(&cf, key, value)?;
    }
    let ledger = gatehouse_evidence::Ledger::open_read_only(&finished.data_dir)?;
    let broken =
        gatehouse_evidence::verify::verify(&ledger)?.expect_err("tampering must be caught");
    assert_eq!(broken.index, 4);
    assert!(
        broken.to_string().contains("entry 4 was changed"),
        "{broken}"
    );
    assert_eq!(
        gatehouse::ledger::verify(&finished.data_dir, false)?,
        gatehouse::ledger::VerifyOutcome::Broken
    );
    Ok(())
}

fn open_raw(path: &std::path::Path) -> anyhow::Result<rocksdb::DB> {
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), path)?;
    Ok(rocksdb::DB::open_cf(
        &rocksdb::Options::default(),
        path,
        cfs,
    )?)
}

/// What is masked is decided by what the API server answered, never by what was asked: an
/// upstream that reads the request differently (a list served as a watch, a watch as a list)
/// or answers in another form (a `Table`, a `PartialObjectMetadataList`) still has every Secret
/// value masked; an answer that cannot be masked (protobuf, CBOR, gzip, protobuf labelled as
/// JSON) is withheld with a 502 `Status` before any of it is sent, and a watch that turns into
/// one ends with an `ERROR` event. The answers are the real apiserver's, re-read or re-encoded
/// by a tampering hop (`gatehouse_tests::tamper`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_masked_for_what_it_is_or_withheld() -> Result {
    use gatehouse_proxy::mask::{MASKED_BASE64, MASKED_TEXT};
    use gatehouse_tests::tamper::{Tamper, TamperedProxy};

    let bed = TestBed::start().await?;
    const VALUE: &str = "tampered-answer-s3cret";
    let encoded = base64::engine::general_purpose::STANDARD.encode(VALUE);
    // Applied, so the value is also in the last-applied annotation a metadata list carries.
    let applied = bed
        .kubectl_stdin(
            "ci-deployer",
            &["apply", "-n", "apps", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tampered\n  namespace: apps\n\
                 stringData:\n  password: {VALUE}\n"
            ),
        )
        .await?;
    assert!(applied.success, "{}", applied.stderr);

    let tampered = TamperedProxy::start(bed.stack()).await?;
    let bearer = format!("Bearer {}", bed.mint("ci-deployer")?);
    let auth = [("authorization", bearer.as_str())];
    let list = "/api/v1/namespaces/apps/secrets";
    let mut tampered_ids = Vec::new();
    let mut withheld = 0;
    for tamper in Tamper::ALL {
        let watch = if tamper == Tamper::WatchAsList {
            "watch=1&"
        } else {
            ""
        };
        let path = format!("{list}?{watch}{}", tamper.selector());
        let reply = bed
            .request_via(&tampered.url, "GET", &path, &auth, None)
            .await?;
        let text = String::from_utf8_lossy(&reply.bytes).into_owned();
        assert!(
            !text.contains(VALUE) && !text.contains(&encoded),
            "{tamper:?}: a Secret value reached the caller: {text}"
        );
        let id = reply.request_id.clone().expect("request id");
        tampered_ids.push(id.clone());
        let shape = |needle: &str| text.contains(needle);
        match tamper {
            Tamper::ListAsWatch => {
                assert_eq!(reply.status, 200, "{text}");
                // The answer is watch events, each masked.
                let events: Vec<Value> = text
                    .lines()
                    .map(serde_json::from_str)
                    .collect::<std::result::Result<_, _>>()?;
                let ours = events
                    .iter()
                    .find(|e| e["object"]["metadata"]["name"] == "tampered")
                    .unwrap_or_else(|| panic!("no event for the Secret: {text}"));
                assert_eq!(ours["type"], "ADDED");
                assert_eq!(ours["object"]["data"]["password"], MASKED_BASE64);
            }
            Tamper::WatchAsList => {
                assert_eq!(reply.status, 200, "{text}");
                assert_eq!(reply.body["kind"], "SecretList", "{text}");
                assert!(shape(MASKED_BASE64), "{text}");
            }
            Tamper::Table => {
                assert_eq!(reply.status, 200, "{text}");
                assert_eq!(reply.body["kind"], "Table", "{text}");
                let row = reply.body["rows"]
                    .as_array()
                    .and_then(|rows| {
                        rows.iter()
                            .find(|r| r["object"]["metadata"]["name"] == "tampered")
                    })
                    .unwrap_or_else(|| panic!("no row for the Secret: {text}"));
                assert_eq!(row["object"]["data"]["password"], MASKED_BASE64);
            }
            Tamper::Metadata => {
                assert_eq!(reply.status, 200, "{text}");
                assert_eq!(reply.body["kind"], "PartialObjectMetadataList", "{text}");
                let item = reply.body["items"]
                    .as_array()
                    .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == "tampered"))
                    .unwrap_or_else(|| panic!("no item for the Secret: {text}"));
                let applied = item["metadata"]["annotations"]
                    ["kubectl.kubernetes.io/last-applied-configuration"]
                    .as_str()
                    .unwrap_or_default();
                let applied: Value = serde_json::from_str(applied)?;
                assert_eq!(applied["stringData"]["password"], MASKED_TEXT);
            }
            Tamper::Protobuf | Tamper::ProtobufAsJson | Tamper::Cbor | Tamper::Gzip => {
                withheld += 1;
                assert_eq!(reply.status, 502, "{tamper:?}: {text}");
                assert_eq!(reply.body["kind"], "Status", "{text}");
                let message = reply.body["message"].as_str().unwrap_or_default();
                let why = match tamper {
                    Tamper::Protobuf => "application/vnd.kubernetes.protobuf",
                    Tamper::Cbor => "application/cbor",
                    Tamper::Gzip => "compressed",
                    _ => "not JSON",
                };
                assert!(
                    message.contains("withheld") && message.contains(why),
                    "{tamper:?}: {message}"
                );
            }
        }
        let events = bed.events_of(&id, &["response.completed"]).await?;
        let completed = events
            .iter()
            .find(|e| e.name() == "response.completed")
            .expect("completed");
        assert_eq!(completed.data()["status"], reply.status, "{tamper:?}");
    }

    // A watch whose events turn out not to be JSON: its response has started, so it ends with
    // an ERROR event carrying the 502, recorded as withheld.
    let path = format!(
        "{list}?watch=1&timeoutSeconds=5&{}",
        Tamper::ProtobufAsJson.selector()
    );
    let reply = bed
        .request_via(&tampered.url, "GET", &path, &auth, None)
        .await?;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.bytes).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let event: Value = serde_json::from_str(lines[0])?;
    assert_eq!(event["type"], "ERROR", "{text}");
    assert_eq!(event["object"]["code"], 502, "{text}");
    let id = reply.request_id.clone().expect("request id");
    tampered_ids.push(id.clone());
    let events = bed.events_of(&id, &["response.completed"]).await?;
    let completed = events
        .iter()
        .find(|e| e.name() == "response.completed")
        .expect("completed");
    assert_eq!(completed.data()["outcome"], "withheld");
    withheld += 1;

    let (_, metrics) =
        gatehouse_tests::http_get(&format!("http://{}/metrics", tampered.admin_addr)).await?;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("gatehouse_proxy_responses_withheld_total {withheld}")),
        "{metrics}"
    );
    tampered.stop().await?;

    // Nothing of the value is anywhere in the evidence either.
    for event in bed.events().await? {
        let bytes = String::from_utf8_lossy(&event.bytes);
        assert!(!bytes.contains(VALUE) && !bytes.contains(&encoded));
    }
    // The apiserver's audit log shows what the tampering hop did: the cross-check of the
    // ledger against it names a request served as something other than what was judged.
    let err = match bed.finish().await {
        Ok(_) => panic!("the audit cross-check missed the tampering"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        tampered_ids.iter().any(|id| err.contains(id.as_str())),
        "{err}"
    );
    Ok(())
}
