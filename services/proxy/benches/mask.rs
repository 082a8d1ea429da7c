//! Masking throughput: generated Pod and Secret lists of about 1.5 KB, 350 KB and 1.7 MB, fed to
//! a `Masker` in 16 KiB chunks as a response body would arrive.
//!
//! `cargo bench -p gatehouse-proxy --bench mask` (add `-- --quick` for a short run). Target: the
//! 1.7 MB lists in 10 ms or less.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_proxy::mask::{MaskSet, MaskTarget, Masker, NamedValueSpec, Profile, ProfileSpec};

const CHUNK: usize = 16 * 1024;

/// A pod as kube-apiserver returns it in a list (no kind; managedFields included), about 3.4 KB.
fn pod(i: usize) -> String {
    format!(
        r#"{{"metadata":{{"name":"web-{i}","generateName":"web-7d9f8c6b5-","namespace":"shop","uid":"a1b2c3d4-0000-4000-8000-{i:012}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T11:00:00Z","labels":{{"app":"web","pod-template-hash":"7d9f8c6b5","tier":"frontend"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"2024-05-01T10:59:00Z","prometheus.io/scrape":"true"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9f8c6b5","uid":"b2c3d4e5-0000-4000-8000-000000000002","controller":true,"blockOwnerDeletion":true}}],"managedFields":[{{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"2024-05-01T11:00:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:generateName":{{}},"f:labels":{{".":{{}},"f:app":{{}},"f:pod-template-hash":{{}}}},"f:ownerReferences":{{".":{{}},"k:{{\"uid\":\"b2c3d4e5-0000-4000-8000-000000000002\"}}":{{}}}}}},"f:spec":{{"f:containers":{{"k:{{\"name\":\"app\"}}":{{".":{{}},"f:env":{{".":{{}},"k:{{\"name\":\"DB_PASSWORD\"}}":{{".":{{}},"f:name":{{}},"f:value":{{}}}}}},"f:image":{{}},"f:imagePullPolicy":{{}},"f:name":{{}},"f:ports":{{}},"f:resources":{{}}}}}},"f:dnsPolicy":{{}},"f:restartPolicy":{{}}}}}}}},{{"manager":"kubelet","operation":"Update","apiVersion":"v1","time":"2024-05-01T11:00:10Z","fieldsType":"FieldsV1","fieldsV1":{{"f:status":{{"f:conditions":{{}},"f:containerStatuses":{{}},"f:hostIP":{{}},"f:phase":{{}},"f:podIP":{{}},"f:startTime":{{}}}}}},"subresource":"status"}}]}},"spec":{{"volumes":[{{"name":"kube-api-access-x7k2p","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}},{{"configMap":{{"name":"kube-root-ca.crt","items":[{{"key":"ca.crt","path":"ca.crt"}}]}}}}],"defaultMode":420}}}}],"containers":[{{"name":"app","image":"registry.example.com/shop/web:1.4.2","args":["--listen=:8080","--log-format=json"],"ports":[{{"name":"http","containerPort":8080,"protocol":"TCP"}}],"env":[{{"name":"DB_PASSWORD","value":"hunter2-{i}"}},{{"name":"LOG_LEVEL","value":"info"}},{{"name":"API_TOKEN","valueFrom":{{"secretKeyRef":{{"name":"api","key":"token"}}}}}},{{"name":"REGION","value":"eu-west-1"}}],"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}},"volumeMounts":[{{"name":"kube-api-access-x7k2p","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"livenessProbe":{{"httpGet":{{"path":"/healthz","port":8080,"scheme":"HTTP"}},"timeoutSeconds":1,"periodSeconds":10,"successThreshold":1,"failureThreshold":3}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","serviceAccount":"default","nodeName":"node-{node}","securityContext":{{}},"schedulerName":"default-scheduler","tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}},{{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"}},"status":{{"phase":"Running","conditions":[{{"type":"Initialized","status":"True","lastProbeTime":null,"lastTransitionTime":"2024-05-01T11:00:00Z"}},{{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2024-05-01T11:00:10Z"}},{{"type":"ContainersReady","status":"True","lastProbeTime":null,"lastTransitionTime":"2024-05-01T11:00:10Z"}},{{"type":"PodScheduled","status":"True","lastProbeTime":null,"lastTransitionTime":"2024-05-01T11:00:00Z"}}],"hostIP":"10.0.0.{node}","podIP":"10.244.{node}.{ip}","podIPs":[{{"ip":"10.244.{node}.{ip}"}}],"startTime":"2024-05-01T11:00:00Z","containerStatuses":[{{"name":"app","state":{{"running":{{"startedAt":"2024-05-01T11:00:05Z"}}}},"lastState":{{}},"ready":true,"restartCount":0,"image":"registry.example.com/shop/web:1.4.2","imageID":"registry.example.com/shop/web@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","containerID":"containerd://4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce","started":true}}],"qosClass":"Burstable"}}}}"#,
        rv = 1000 + i,
        node = i % 50,
        ip = i % 250,
    )
}

/// A Secret in a list: a service-account-token-like Secret with a certificate, about 3.4 KB.
fn secret(i: usize) -> String {
    let cert = "TUlJQzVEQ0NBY3lnQXdJQkFnSUJBREFOQmdrcWhraUc5dzBCQVFzRkFEQVZNUk13RVFZRFZRUURFd3ByZFdKbGNtNWxkR1Z6".repeat(28);
    format!(
        r#"{{"metadata":{{"name":"builder-token-{i}","namespace":"ci","uid":"0b6b5a1e-8c57-4a0e-b1a4-{i:012}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T10:01:00Z","annotations":{{"kubernetes.io/service-account.name":"builder","kubernetes.io/service-account.uid":"7d3e4f5a-1111-2222-3333-444455556666"}},"managedFields":[{{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"2024-05-01T10:01:00Z","fieldsType":"FieldsV1","fieldsV1":{{"f:data":{{".":{{}},"f:ca.crt":{{}},"f:namespace":{{}},"f:token":{{}}}},"f:type":{{}}}}}}]}},"data":{{"ca.crt":"{cert}","namespace":"Y2k=","token":"ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklrMXZZMnN0YTJWNUxXbGtJbjAuZXlKcGMzTWlPaUpyZFdKbGNtNWxkR1Z6TDNObGNuWnBZMlZoWTJOdmRXNTBJbjA="}},"type":"kubernetes.io/service-account-token"}}"#,
        rv = 2000 + i,
    )
}

/// A small pod (no managedFields, short status), about 750 bytes.
fn lean_pod(i: usize) -> String {
    format!(
        r#"{{"metadata":{{"name":"web-{i}","namespace":"shop","uid":"a1b2c3d4-0000-4000-8000-{i:012}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T11:00:00Z","labels":{{"app":"web"}}}},"spec":{{"containers":[{{"name":"app","image":"registry.example.com/shop/web:1.4.2","env":[{{"name":"DB_PASSWORD","value":"hunter2-{i}"}},{{"name":"LOG_LEVEL","value":"info"}}],"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}}}},"imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","nodeName":"node-1","serviceAccountName":"default"}},"status":{{"phase":"Running","hostIP":"10.0.0.1","podIP":"10.244.1.{ip}","startTime":"2024-05-01T11:00:00Z","qosClass":"Burstable"}}}}"#,
        rv = 1000 + i,
        ip = i % 250,
    )
}

/// A small Opaque Secret, about 300 bytes.
fn lean_secret(i: usize) -> String {
    format!(
        r#"{{"metadata":{{"name":"db-{i}","namespace":"shop","uid":"6c1f8f4e-3f0e-4d4a-9a55-{i:012}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T10:00:00Z"}},"data":{{"password":"czNjcjN0LXBhc3N3b3Jk","username":"YWRtaW4="}},"type":"Opaque"}}"#,
        rv = 2000 + i,
    )
}

fn list(kind: &str, items: impl Iterator<Item = String>) -> Vec<u8> {
    let body: Vec<String> = items.collect();
    format!(
        r#"{{"kind":"{kind}","apiVersion":"v1","metadata":{{"resourceVersion":"99999"}},"items":[{}]}}"#,
        body.join(",")
    )
    .into_bytes()
}

/// A list of about `bytes` bytes.
fn sized(kind: &str, bytes: usize, item: fn(usize) -> String) -> Vec<u8> {
    let per = item(0).len() + 1;
    let n = (bytes / per).max(1);
    list(kind, (0..n).map(item))
}

fn app_profile() -> Arc<Profile> {
    let mut specs = BTreeMap::new();
    specs.insert(
        "app".to_string(),
        ProfileSpec {
            paths: vec!["metadata.annotations[\"example.com/token\"]".into()],
            named_values: vec![NamedValueSpec {
                path: "spec.containers[*].env[*]".into(),
                matching: "(?i)(password|token|secret|key)".into(),
                name_field: "name".into(),
                value_field: "value".into(),
            }],
            patterns: vec!["(?i)bearer [a-z0-9._~+/-]+=*".into()],
            ..Default::default()
        },
    );
    MaskSet::compile(&specs)
        .expect("bench profile compiles")
        .get("app")
        .expect("bench profile exists")
}

fn mask(
    profile: &Option<Arc<Profile>>,
    target: &MaskTarget,
    body: &[u8],
    out: &mut BytesMut,
) -> u64 {
    out.clear();
    let mut masker = Masker::new(profile.clone(), target);
    for chunk in body.chunks(CHUNK) {
        masker.push(chunk, out).expect("bench body masks");
    }
    masker.finish(out).expect("bench body masks");
    masker.masked_fields()
}

/// Name, profile, target, body.
type Case<'a> = (&'static str, Option<Arc<Profile>>, &'a MaskTarget, Vec<u8>);

fn bench(c: &mut Criterion) {
    let pods = MaskTarget::new("pods", "");
    let secrets = MaskTarget::new("secrets", "");
    let cases: Vec<Case> = vec![
        ("pods-copy", None, &pods, sized("PodList", 1_500, lean_pod)),
        ("pods-copy", None, &pods, sized("PodList", 350_000, pod)),
        ("pods-copy", None, &pods, sized("PodList", 1_700_000, pod)),
        (
            "pods-profile",
            Some(app_profile()),
            &pods,
            sized("PodList", 1_500, lean_pod),
        ),
        (
            "pods-profile",
            Some(app_profile()),
            &pods,
            sized("PodList", 350_000, pod),
        ),
        (
            "pods-profile",
            Some(app_profile()),
            &pods,
            sized("PodList", 1_700_000, pod),
        ),
        (
            "secrets",
            None,
            &secrets,
            sized("SecretList", 1_500, lean_secret),
        ),
        (
            "secrets",
            None,
            &secrets,
            sized("SecretList", 350_000, secret),
        ),
        (
            "secrets",
            None,
            &secrets,
            sized("SecretList", 1_700_000, secret),
        ),
    ];
    let mut out = BytesMut::with_capacity(2 << 20);
    for (name, profile, target, body) in &cases {
        let mut group = c.benchmark_group(*name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let masked = mask(profile, target, body, &mut out);
        let label = format!("{:.1}KB/{masked}-masked", body.len() as f64 / 1000.0);
        group.bench_function(label, |b| {
            b.iter(|| mask(profile, target, black_box(body), &mut out))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
