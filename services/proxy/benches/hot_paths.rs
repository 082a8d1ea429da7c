//! The proxy's per-request hot paths, each through the crate's real code: bearer-token (OIDC
//! JWT) verification against the sandbox's demo issuer served on loopback (keys found through
//! its discovery document and JWKS over HTTP), answered from the verified-token cache, with the
//! cache off, and for a token never seen before; Kubernetes request-info parsing of method +
//! path + query for a representative set of core and group, namespaced and cluster-scoped,
//! get / list / watch and subresource requests; decisions of the demo policy for requests
//! decided by an early rule, a late one and by default deny; and masking of Pod JSON with the
//! demo's `app-secrets` profile at about 1.5 KB (one Pod), 350 KB (1,000 Pods) and 1.7 MB
//! (5,000 Pods), fed in 16 KiB chunks, with throughput in bytes. Run with
//! `cargo bench -p gatehouse-proxy --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_events::{Identity, RequestInfo};
use gatehouse_proxy::authn::{Authenticator, AuthnOptions};
use gatehouse_proxy::config::IssuerConfig;
use gatehouse_proxy::mask::{MaskTarget, Masker, Profile};
use gatehouse_proxy::policy::{Decision, Policy, PolicyInput};
use gatehouse_proxy::request_info;
use gatehouse_sandbox::issuer::{Issuer, IssuerKeys};
use http::HeaderMap;

/// The audience the demo issuer mints for (`gatehouse_up::demo::AUDIENCE`).
const AUDIENCE: &str = "gatehouse";

/// How a response body arrives at the masker (hyper's frames are of this order).
const CHUNK: usize = 16 * 1024;

/// The demo policy `gatehouse up --sandbox` starts with (`gatehouse_up::demo::POLICY_YAML` reads
/// the same file): 13 rules and the `app-secrets` mask profile.
const DEMO_POLICY_YAML: &str = include_str!("../../../deploy/demo/policy.yaml");

fn demo_policy() -> Policy {
    Policy::from_yaml(DEMO_POLICY_YAML).expect("the demo policy loads")
}

// ---------------------------------------------------------------------------------------------
// Bearer-token verification

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a valid header"),
    );
    headers
}

fn authn(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The demo issuer, as `gatehouse up --sandbox` runs it: discovery + JWKS over plain HTTP on
    // loopback. Its server task runs whenever the runtime does (setup and every block_on).
    let issuer = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Issuer::start(IssuerKeys::generate().expect("issuer key"), listener)
            .await
            .expect("the demo issuer starts")
    });
    let config: IssuerConfig = yaml_serde::from_str(&format!(
        "issuer: {}\naudiences: [{AUDIENCE}]\nalgorithms: [ES256]\n",
        issuer.url()
    ))
    .expect("issuer config");
    let build = |cache_capacity| {
        runtime
            .block_on(Authenticator::new(
                std::slice::from_ref(&config),
                AuthnOptions {
                    cache_capacity,
                    ..AuthnOptions::default()
                },
            ))
            .expect("authenticator")
    };
    let (uncached, cached) = (build(0), build(AuthnOptions::default().cache_capacity));
    let mint = || {
        let token = issuer
            .mint(
                "ci-deployer",
                AUDIENCE,
                &["deployers"],
                Duration::from_secs(3600),
            )
            .expect("the demo issuer mints");
        bearer(&token)
    };
    let verify = |authn: &Authenticator, headers: &HeaderMap| {
        runtime
            .block_on(authn.authenticate(headers, None))
            .expect("the demo token verifies")
    };
    let same = mint();
    for authn in [&uncached, &cached] {
        let verified = verify(authn, &same);
        assert_eq!(verified.principal, "ci-deployer");
        assert_eq!(verified.groups, ["deployers"]);
    }

    // block_on on a current-thread runtime: the same small overhead in every case.
    let mut group = c.benchmark_group("hot_paths/authn ES256");
    group.bench_function("cached", |b| {
        b.iter(|| black_box(verify(&cached, black_box(&same))))
    });
    group.bench_function("uncached (cache off)", |b| {
        b.iter(|| black_box(verify(&uncached, black_box(&same))))
    });
    // A token never seen before: verified, then kept in the cache (which, once full, evicts
    // what expires soonest). Minting (ES256 signing) happens in the untimed setup.
    group.bench_function("uncached (fresh token)", |b| {
        b.iter_batched_ref(
            mint,
            |headers| black_box(verify(&cached, headers)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let stats = cached.cache_stats();
    println!(
        "token cache: {} hits, {} misses, {} entries (capacity {}), {} evicted",
        stats.hits, stats.misses, stats.entries, stats.capacity, stats.evicted
    );
    drop((cached, uncached));
    runtime.block_on(issuer.shutdown());
}

// ---------------------------------------------------------------------------------------------
// Request-info parsing

/// (name, method, path, query, expected verb, group, resource, subresource, namespace, name).
type ParseCase = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    [&'static str; 6],
);

const PARSE_CASES: [ParseCase; 11] = [
    (
        "core namespaced get",
        "GET",
        "/api/v1/namespaces/apps/pods/web-7d9f8c6b5-x2x4q",
        None,
        ["get", "", "pods", "", "apps", "web-7d9f8c6b5-x2x4q"],
    ),
    (
        "core namespaced list",
        "GET",
        "/api/v1/namespaces/apps/pods",
        Some("labelSelector=app%3Dweb&limit=500"),
        ["list", "", "pods", "", "apps", ""],
    ),
    (
        "core namespaced watch (query)",
        "GET",
        "/api/v1/namespaces/apps/pods",
        Some("allowWatchBookmarks=true&resourceVersion=81234&timeoutSeconds=318&watch=true"),
        ["watch", "", "pods", "", "apps", ""],
    ),
    (
        "core cluster list",
        "GET",
        "/api/v1/nodes",
        None,
        ["list", "", "nodes", "", "", ""],
    ),
    (
        "core cluster get",
        "GET",
        "/api/v1/nodes/node-1",
        None,
        ["get", "", "nodes", "", "", "node-1"],
    ),
    (
        "group namespaced get",
        "GET",
        "/apis/apps/v1/namespaces/apps/deployments/web",
        None,
        ["get", "apps", "deployments", "", "apps", "web"],
    ),
    (
        "group namespaced create",
        "POST",
        "/apis/batch/v1/namespaces/apps/jobs",
        Some("fieldManager=kubectl-client-side-apply"),
        ["create", "batch", "jobs", "", "apps", ""],
    ),
    (
        "group cluster list",
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        None,
        [
            "list",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "",
            "",
            "",
        ],
    ),
    (
        "group subresource patch (scale)",
        "PATCH",
        "/apis/apps/v1/namespaces/prod/deployments/web/scale",
        None,
        ["patch", "apps", "deployments", "scale", "prod", "web"],
    ),
    (
        "core subresource exec",
        "POST",
        "/api/v1/namespaces/apps/pods/web-0/exec",
        Some("command=ls&command=-l&container=app&stdin=true&stdout=true&tty=true"),
        ["exec", "", "pods", "exec", "apps", "web-0"],
    ),
    (
        "core subresource log",
        "GET",
        "/api/v1/namespaces/apps/pods/web-0/log",
        Some("container=app&follow=true&tailLines=100"),
        ["get", "", "pods", "log", "apps", "web-0"],
    ),
];

fn fields(info: &RequestInfo) -> [&str; 6] {
    [
        &info.verb,
        &info.api_group,
        &info.resource,
        &info.subresource,
        &info.namespace,
        &info.name,
    ]
}

fn parse(c: &mut Criterion) {
    for (name, method, path, query, expected) in &PARSE_CASES {
        let info = request_info::parse(method, path, *query).expect("a valid request");
        assert!(info.is_resource_request, "{name}");
        assert_eq!(fields(&info), *expected, "{name}");
    }
    let mut group = c.benchmark_group("hot_paths/request_info");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (name, method, path, query, _) in &PARSE_CASES {
        group.bench_function(*name, |b| {
            b.iter(|| request_info::parse(black_box(method), black_box(path), black_box(*query)))
        });
    }
    group.throughput(Throughput::Elements(PARSE_CASES.len() as u64));
    group.bench_function(format!("all {} above, in turn", PARSE_CASES.len()), |b| {
        b.iter(|| {
            for (_, method, path, query, _) in &PARSE_CASES {
                black_box(request_info::parse(
                    black_box(method),
                    black_box(path),
                    black_box(*query),
                ))
                .expect("a valid request");
            }
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Policy decisions

/// An identity as the demo registry resolves it (`gatehouse_up::demo::IDENTITIES_YAML`).
fn identity(principal: &str, owner: &str, team: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "http://127.0.0.1:5556".into(),
        subject: principal.into(),
        principal: principal.into(),
        registered: true,
        owner: Some(owner.into()),
        team: Some(team.into()),
        purpose: Some("bench".into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes: Default::default(),
    }
}

fn request(method: &str, path: &str) -> RequestInfo {
    request_info::parse(method, path, None).expect("a valid path")
}

/// The deciding rule and its position (1-based; None for default deny).
fn rule_of(policy: &Policy, decision: Decision) -> Option<(String, usize)> {
    let rule = match decision {
        Decision::Allow(p) => p.rule().to_owned(),
        Decision::Hold(h) => h.rule().to_owned(),
        Decision::Deny(d) => d.rule?,
    };
    let at = policy.rules().iter().position(|r| r.id() == rule)? + 1;
    Some((rule, at))
}

fn policy(c: &mut Criterion) {
    let policy = demo_policy();
    let rules = policy.rules().len();
    let deployer = identity(
        "ci-deployer",
        "alice@example.com",
        "platform",
        &["deployers"],
    );
    let reader = identity(
        "readonly-bot",
        "bob@example.com",
        "observability",
        &["readers"],
    );
    let workflow = identity(
        "github:acme/deploy@prod",
        "carol@example.com",
        "platform",
        &["deployers"],
    );

    let discovery = request("GET", "/apis");
    let exec = request("POST", "/api/v1/namespaces/default/pods/web-0/exec");
    let shell: Vec<String> = ["env", "-i", "/bin/sh", "-c", "id"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let binding = request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/apps/rolebindings",
    );
    let body = br#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{"name":"ci-admin","namespace":"apps"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"},"subjects":[{"kind":"User","name":"ci-deployer"}]}"#;
    let apps_pods = request("GET", "/api/v1/namespaces/apps/pods");
    let kube_system_secret = request("GET", "/api/v1/namespaces/kube-system/secrets/bootstrap");
    let create_deployment = request("POST", "/apis/apps/v1/namespaces/apps/deployments");
    let delete_deployment = request("DELETE", "/apis/apps/v1/namespaces/apps/deployments/web");

    let cases: [(&str, PolicyInput<'_>, Option<&str>); 7] = [
        (
            "early: discovery",
            PolicyInput::new(&reader, &discovery),
            Some("discovery"),
        ),
        (
            "early: shell guardrail",
            PolicyInput {
                command: &shell,
                ..PolicyInput::new(&deployer, &exec)
            },
            Some("no-shells"),
        ),
        (
            "early: body guardrail",
            PolicyInput {
                body: Some(body),
                content_type: Some("application/json"),
                ..PolicyInput::new(&deployer, &binding)
            },
            Some("no-cluster-admin-bindings"),
        ),
        (
            "middle: deployer lists pods",
            PolicyInput::new(&deployer, &apps_pods),
            Some("deployer-apps"),
        ),
        (
            "late: reader denied secret",
            PolicyInput::new(&reader, &kube_system_secret),
            Some("readers-no-secrets"),
        ),
        (
            "late: last rule",
            PolicyInput::new(&workflow, &create_deployment),
            Some("github-deploy-apps"),
        ),
        (
            "default deny",
            PolicyInput::new(&reader, &delete_deployment),
            None,
        ),
    ];
    let mut group = c.benchmark_group(format!("hot_paths/policy demo ({rules} rules)"));
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for (name, input, expected) in &cases {
        let decided = rule_of(&policy, policy.decide(input));
        assert_eq!(
            decided.as_ref().map(|(r, _)| r.as_str()),
            *expected,
            "{name}"
        );
        let label = match decided {
            Some((_, at)) => format!("{name} (rule {at})"),
            None => format!("{name} (no rule)"),
        };
        group.bench_function(label, |b| b.iter(|| policy.decide(black_box(input))));
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// Masking

/// One Pod as `kubectl get pod -o json` returns it, about 1.5 KB, with two containers whose
/// env holds three values the profile masks (`DB_PASSWORD`, `API_TOKEN`, `SESSION_SECRET`).
fn pod_object(i: usize) -> String {
    format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"web-7d9f8c6b5-{i:05}","generateName":"web-7d9f8c6b5-","namespace":"apps","uid":"a1b2c3d4-0000-4000-8000-{i:012}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T11:00:00Z","labels":{{"app":"web","pod-template-hash":"7d9f8c6b5"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9f8c6b5","uid":"b2c3d4e5-0000-4000-8000-000000000002","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"containers":[{{"name":"app","image":"registry.example.com/apps/web:1.4.2","ports":[{{"name":"http","containerPort":8080,"protocol":"TCP"}}],"env":[{{"name":"DB_PASSWORD","value":"hunter2-{i}"}},{{"name":"LOG_LEVEL","value":"info"}},{{"name":"API_TOKEN","value":"tok-{i}-9f86d081884c7d659a2f"}},{{"name":"REGION","value":"eu-west-1"}}],"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}},"imagePullPolicy":"IfNotPresent"}},{{"name":"proxy","image":"registry.example.com/apps/envoy:1.30","env":[{{"name":"SESSION_SECRET","value":"s3cr3t-{i}"}},{{"name":"ADMIN_PORT","value":"9901"}}],"imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"web","nodeName":"node-{node}","schedulerName":"default-scheduler"}},"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2024-05-01T11:00:10Z"}}],"hostIP":"10.0.0.{node}","podIP":"10.244.{node}.{ip}","startTime":"2024-05-01T11:00:00Z","qosClass":"Burstable"}}}}"#,
        rv = 1000 + i,
        node = i % 50,
        ip = i % 250,
    )
}

/// A Pod in a list, trimmed to about 345 bytes so that 1,000 of them make about 350 KB: one
/// container, two masked env values (`DB_PASSWORD`, `API_TOKEN`) and one left alone.
fn pod_item(i: usize) -> String {
    format!(
        r#"{{"metadata":{{"name":"web-{i:05}","namespace":"apps","uid":"a1b2c3d4-0000-4000-8000-{i:012}"}},"spec":{{"containers":[{{"name":"app","image":"registry.local/web:1.4","env":[{{"name":"DB_PASSWORD","value":"hunter2-{i}"}},{{"name":"LOG_LEVEL","value":"info"}},{{"name":"API_TOKEN","value":"tok-{i}"}}]}}]}},"status":{{"phase":"Running","podIP":"10.244.{node}.{ip}"}}}}"#,
        node = i % 50,
        ip = i % 250,
    )
}

fn pod_list(pods: usize) -> Vec<u8> {
    let items: Vec<String> = (0..pods).map(pod_item).collect();
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"99999"}},"items":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

/// Masks `body` as the proxy streams a response: one `Masker` per response, chunk by chunk.
fn mask(profile: &Arc<Profile>, target: &MaskTarget, body: &[u8], out: &mut BytesMut) -> u64 {
    out.clear();
    let mut masker = Masker::new(Some(profile.clone()), target);
    for chunk in body.chunks(CHUNK) {
        masker.push(chunk, out).expect("the body masks");
    }
    masker.finish(out).expect("the body masks");
    masker.masked_fields()
}

fn masking(c: &mut Criterion) {
    let profile = demo_policy()
        .compiled_mask("app-secrets")
        .expect("the demo policy has app-secrets");
    let pods = MaskTarget::new("pods", "");
    let cases = [
        ("1 pod", pod_object(0).into_bytes(), 3),
        ("1,000 pods", pod_list(1_000), 2_000),
        ("5,000 pods", pod_list(5_000), 10_000),
    ];
    let mut out = BytesMut::with_capacity(2 << 20);
    let mut group = c.benchmark_group("hot_paths/mask app-secrets");
    for (name, body, expected) in &cases {
        let masked = mask(&profile, &pods, body, &mut out);
        assert_eq!(masked, *expected, "{name}: masked fields");
        let text = std::str::from_utf8(&out).expect("masked JSON is UTF-8");
        assert!(
            !text.contains("hunter2") && !text.contains("tok-") && !text.contains("s3cr3t"),
            "{name}: a secret value survived masking"
        );
        assert!(
            text.contains(r#""value":"info""#),
            "{name}: too much masked"
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        if body.len() > 100_000 {
            group
                .sample_size(20)
                .measurement_time(Duration::from_secs(5));
        }
        let label = format!(
            "{name} ({:.1} KB, {masked} values masked)",
            body.len() as f64 / 1e3
        );
        group.bench_function(label, |b| {
            b.iter(|| mask(&profile, &pods, black_box(body), &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, authn, parse, policy, masking);
criterion_main!(benches);
