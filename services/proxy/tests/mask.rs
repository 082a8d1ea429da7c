//! The masking engine against the JSON kube-apiserver sends: Secrets, lists, watch streams,
//! tables, pods with env vars; chunked at every offset; malformed input; and a randomised check
//! that no secret value survives.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::BytesMut;
use gatehouse_proxy::mask::{
    KeySpec, MASKED_BASE64, MASKED_TEXT, MaskError, MaskSet, MaskTarget, Masker, NamedValueSpec,
    Profile, ProfileSpec, mask_text, mask_value, needs_masking,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Fixtures, written from what kube-apiserver (v1.32) returns.

/// `kubectl get secret db -o json` after `kubectl apply` of a Secret with data and stringData.
const SECRET: &str = r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1234","creationTimestamp":"2024-05-01T10:00:00Z","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"v1\",\"data\":{\"password\":\"czNjcjN0LXBhc3N3b3Jk\"},\"kind\":\"Secret\",\"metadata\":{\"annotations\":{},\"name\":\"db\",\"namespace\":\"default\"},\"stringData\":{\"token\":\"plain-token-value\"},\"type\":\"Opaque\"}\n"},"managedFields":[{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"v1","time":"2024-05-01T10:00:00Z","fieldsType":"FieldsV1","fieldsV1":{"f:data":{".":{},"f:password":{},"f:token":{}},"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{}}},"f:type":{}}}]},"data":{"password":"czNjcjN0LXBhc3N3b3Jk","token":"cGxhaW4tdG9rZW4tdmFsdWU="},"type":"Opaque"}"#;

/// The secret values in [`SECRET`], base64 and plain.
const SECRET_VALUES: &[&str] = &[
    "czNjcjN0LXBhc3N3b3Jk",
    "s3cr3t-password",
    "cGxhaW4tdG9rZW4tdmFsdWU=",
    "plain-token-value",
];

/// `GET /api/v1/namespaces/default/secrets`: items carry no kind of their own.
const SECRET_LIST: &str = r#"{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"5678"},"items":[{"metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1234","creationTimestamp":"2024-05-01T10:00:00Z"},"data":{"password":"czNjcjN0LXBhc3N3b3Jk"},"type":"Opaque"},{"metadata":{"name":"builder-token","namespace":"default","uid":"0b6b5a1e-8c57-4a0e-b1a4-2b1e2f6a3c11","resourceVersion":"1300","creationTimestamp":"2024-05-01T10:01:00Z","annotations":{"kubernetes.io/service-account.name":"builder","kubernetes.io/service-account.uid":"7d3e4f5a-1111-2222-3333-444455556666"}},"data":{"ca.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t","namespace":"ZGVmYXVsdA==","token":"ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklpSjk="},"type":"kubernetes.io/service-account-token"},{"metadata":{"name":"web-tls","namespace":"default","uid":"1f2e3d4c-5b6a-4789-9abc-def012345678","resourceVersion":"1400","creationTimestamp":"2024-05-01T10:02:00Z"},"data":{"tls.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tTUlJ","tls.key":"LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tTUlJRQ=="},"type":"kubernetes.io/tls"}]}"#;

const SECRET_LIST_VALUES: &[&str] = &[
    "czNjcjN0LXBhc3N3b3Jk",
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t",
    "ZGVmYXVsdA==",
    "ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklpSjk=",
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tTUlJ",
    "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tTUlJRQ==",
];

/// `GET /api/v1/namespaces/default/secrets?watch=1&allowWatchBookmarks=true`, ending with the
/// `410 Expired` error event a watch gets when its resourceVersion is too old.
const SECRET_WATCH: &str = concat!(
    r#"{"type":"ADDED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1234","creationTimestamp":"2024-05-01T10:00:00Z"},"data":{"password":"czNjcjN0LXBhc3N3b3Jk"},"type":"Opaque"}}"#,
    "\n",
    r#"{"type":"MODIFIED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1240","creationTimestamp":"2024-05-01T10:00:00Z"},"data":{"password":"bmV3LXBhc3N3b3JkLTQy"},"stringData":{"note":"rotated-by-ops"},"type":"Opaque"}}"#,
    "\n",
    r#"{"type":"BOOKMARK","object":{"kind":"Secret","apiVersion":"v1","metadata":{"resourceVersion":"12746","creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
    "\n",
    r#"{"type":"DELETED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1250","creationTimestamp":"2024-05-01T10:00:00Z"},"data":{"password":"bmV3LXBhc3N3b3JkLTQy"},"type":"Opaque"}}"#,
    "\n",
    r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (12746)","reason":"Expired","code":410}}"#,
    "\n",
);

const SECRET_WATCH_VALUES: &[&str] = &[
    "czNjcjN0LXBhc3N3b3Jk",
    "bmV3LXBhc3N3b3JkLTQy",
    "rotated-by-ops",
];

/// `kubectl get secrets --sort-by=.metadata.name`: `Accept: application/json;as=Table;v=v1;
/// g=meta.k8s.io` with `includeObject=Object`. The Data cell is the number of keys.
const SECRET_TABLE: &str = r#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"5678"},"columnDefinitions":[{"name":"Name","type":"string","format":"name","description":"Name must be unique within a namespace.","priority":0},{"name":"Type","type":"string","format":"","description":"Used to facilitate programmatic handling of secret data.","priority":0},{"name":"Data","type":"string","format":"","description":"Data contains the secret data.","priority":0},{"name":"Age","type":"string","format":"","description":"CreationTimestamp is a timestamp representing the server time when this object was created.","priority":0}],"rows":[{"cells":["db","Opaque",1,"5d"],"object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1234","creationTimestamp":"2024-05-01T10:00:00Z"},"data":{"password":"czNjcjN0LXBhc3N3b3Jk"},"type":"Opaque"}},{"cells":["web-tls","kubernetes.io/tls",2,"5d"],"object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"web-tls","namespace":"default","uid":"1f2e3d4c-5b6a-4789-9abc-def012345678","resourceVersion":"1400","creationTimestamp":"2024-05-01T10:02:00Z"},"data":{"tls.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tTUlJ","tls.key":"LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tTUlJRQ=="},"type":"kubernetes.io/tls"}}]}"#;

/// Plain `kubectl get secrets`: `includeObject=Metadata` (the default), so each row's object is
/// `PartialObjectMetadata` — whose annotations still hold the last-applied Secret.
const SECRET_TABLE_METADATA: &str = r#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"5678"},"columnDefinitions":[{"name":"Name","type":"string","format":"name","description":"Name must be unique within a namespace.","priority":0},{"name":"Type","type":"string","format":"","description":"Type","priority":0},{"name":"Data","type":"string","format":"","description":"Data","priority":0},{"name":"Age","type":"string","format":"","description":"Age","priority":0}],"rows":[{"cells":["db","Opaque",1,"5d"],"object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"db","namespace":"default","uid":"6c1f8f4e-3f0e-4d4a-9a55-1f0c2b7d9e10","resourceVersion":"1234","creationTimestamp":"2024-05-01T10:00:00Z","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"v1\",\"data\":{\"password\":\"czNjcjN0LXBhc3N3b3Jk\"},\"kind\":\"Secret\",\"metadata\":{\"annotations\":{},\"name\":\"db\",\"namespace\":\"default\"},\"type\":\"Opaque\"}\n"}}}}]}"#;

/// `GET /api/v1/namespaces/shop/pods`, two pods with env vars (one from a secretKeyRef).
const POD_LIST: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"999"},"items":[{"metadata":{"name":"web-0","generateName":"web-","namespace":"shop","uid":"a1b2c3d4-0000-4000-8000-000000000001","resourceVersion":"990","creationTimestamp":"2024-05-01T11:00:00Z","labels":{"app":"web","controller-revision-hash":"web-7d9f8c6b5","statefulset.kubernetes.io/pod-name":"web-0"},"annotations":{"example.com/api-token":"tok-annotation-123456"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"StatefulSet","name":"web","uid":"b2c3d4e5-0000-4000-8000-000000000002","controller":true,"blockOwnerDeletion":true}]},"spec":{"volumes":[{"name":"kube-api-access-x7k2p","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}}],"defaultMode":420}}],"containers":[{"name":"app","image":"registry.example.com/shop/web:1.4.2","args":["--auth-header","Bearer abc.def-ghi=="],"ports":[{"name":"http","containerPort":8080,"protocol":"TCP"}],"env":[{"name":"DB_PASSWORD","value":"hunter2-very-secret"},{"name":"LOG_LEVEL","value":"debug"},{"name":"API_TOKEN","valueFrom":{"secretKeyRef":{"name":"api","key":"token"}}},{"name":"STRIPE_KEY","value":"sk_live_51Habcdef"}],"resources":{"limits":{"cpu":"500m","memory":"256Mi"},"requests":{"cpu":"100m","memory":"128Mi"}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","nodeName":"node-1","securityContext":{},"schedulerName":"default-scheduler","priority":0,"enableServiceLinks":true},"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2024-05-01T11:00:10Z"}],"hostIP":"10.0.0.11","podIP":"10.244.1.7","startTime":"2024-05-01T11:00:00Z","containerStatuses":[{"name":"app","state":{"running":{"startedAt":"2024-05-01T11:00:05Z"}},"lastState":{},"ready":true,"restartCount":0,"image":"registry.example.com/shop/web:1.4.2","imageID":"registry.example.com/shop/web@sha256:0123456789abcdef","containerID":"containerd://0123456789abcdef","started":true}],"qosClass":"Burstable"}},{"metadata":{"name":"web-1","namespace":"shop","uid":"a1b2c3d4-0000-4000-8000-000000000003","resourceVersion":"991","creationTimestamp":"2024-05-01T11:00:20Z"},"spec":{"containers":[{"name":"app","image":"registry.example.com/shop/web:1.4.2","env":[{"value":"value-before-name-secret","name":"SESSION_SECRET_KEY"},{"name":"REGION","value":"eu-west-1"}]}]},"status":{"phase":"Pending"}}]}"#;

fn app_profile() -> Arc<Profile> {
    let spec = ProfileSpec {
        paths: vec!["metadata.annotations[\"example.com/api-token\"]".into()],
        named_values: vec![NamedValueSpec {
            path: "spec.containers[*].env[*]".into(),
            matching: "(?i)(password|token|key|secret)".into(),
            name_field: "name".into(),
            value_field: "value".into(),
        }],
        keys: vec![KeySpec {
            path: "data".into(),
            matching: "(?i)(password|token)".into(),
        }],
        patterns: vec!["(?i)bearer [a-z0-9._~+/-]+=*".into()],
    };
    let mut specs = BTreeMap::new();
    specs.insert("app".to_string(), spec);
    MaskSet::compile(&specs).unwrap().get("app").unwrap()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn secrets() -> MaskTarget {
    MaskTarget::new("secrets", "")
}

fn target(resource: &str) -> MaskTarget {
    MaskTarget::new(resource, "")
}

/// Masks `input` fed in chunks of `chunk` bytes.
fn run(
    profile: Option<Arc<Profile>>,
    target: MaskTarget,
    input: &[u8],
    chunk: usize,
) -> Result<(String, u64), MaskError> {
    let mut masker = Masker::new(profile, &target);
    let mut out = BytesMut::new();
    for piece in input.chunks(chunk.max(1)) {
        masker.push(piece, &mut out)?;
    }
    masker.finish(&mut out)?;
    Ok((
        String::from_utf8(out.to_vec()).unwrap(),
        masker.masked_fields(),
    ))
}

fn mask(profile: Option<Arc<Profile>>, target: MaskTarget, input: &str) -> (Value, u64) {
    let (out, n) = run(profile, target, input.as_bytes(), 16 * 1024).unwrap();
    (serde_json::from_str(&out).unwrap(), n)
}

fn assert_absent(output: &str, values: &[&str]) {
    for v in values {
        assert!(!output.contains(v), "{v:?} leaked into:\n{output}");
    }
}

fn decode_b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

/// The masked output keeps everything else as it was: masking the masked output changes nothing
/// more, and the output parses to the input with masked leaves replaced.
fn same_shape(a: &Value, b: &Value) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            for (k, v) in x {
                same_shape(v, &y[k]);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            for (v, w) in x.iter().zip(y) {
                same_shape(v, w);
            }
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => {
            panic!("shape differs: {a} vs {b}")
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets, always.

#[test]
fn a_secret_is_masked_and_its_base64_still_decodes() {
    let (v, n) = mask(None, secrets(), SECRET);
    assert_eq!(v["data"]["password"], MASKED_BASE64);
    assert_eq!(v["data"]["token"], MASKED_BASE64);
    assert_eq!(decode_b64(&v["data"]["password"]), b"gatehouse:masked");
    // Everything else is untouched.
    assert_eq!(v["metadata"]["name"], "db");
    assert_eq!(v["type"], "Opaque");
    same_shape(&v, &serde_json::from_str(SECRET).unwrap());
    // 2 in data + 2 inside the last-applied annotation.
    assert_eq!(n, 4);
    assert_absent(&v.to_string(), SECRET_VALUES);
}

#[test]
fn the_last_applied_annotation_stays_valid_json_with_its_values_masked() {
    let (v, _) = mask(None, secrets(), SECRET);
    let text = v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    let inner: Value = serde_json::from_str(text).unwrap();
    assert_eq!(inner["data"]["password"], MASKED_BASE64);
    assert_eq!(inner["stringData"]["token"], MASKED_TEXT);
    assert_eq!(inner["metadata"]["name"], "db");
    assert!(text.ends_with('\n'), "kubectl's trailing newline is kept");
}

#[test]
fn a_secret_is_recognised_by_kind_whatever_the_request() {
    // A Secret in a response for some other resource (e.g. a `kind: List`).
    let (v, n) = mask(Some(app_profile()), target("configmaps"), SECRET);
    assert_eq!(v["data"]["password"], MASKED_BASE64);
    assert!(n >= 2);
    assert_absent(&v.to_string(), SECRET_VALUES);
}

#[test]
fn a_secret_list_masks_every_item() {
    let (out, n) = run(None, secrets(), SECRET_LIST.as_bytes(), 16 * 1024).unwrap();
    assert_absent(&out, SECRET_LIST_VALUES);
    assert_eq!(n, 6);
    let v: Value = serde_json::from_str(&out).unwrap();
    for item in v["items"].as_array().unwrap() {
        for (_, value) in item["data"].as_object().unwrap() {
            assert_eq!(decode_b64(value), b"gatehouse:masked");
        }
    }
    assert_eq!(v["items"][1]["metadata"]["name"], "builder-token");
    assert_eq!(v["metadata"]["resourceVersion"], "5678");
}

#[test]
fn a_secret_list_is_recognised_by_its_kind_alone() {
    // Items of a typed list have no kind: the list's kind says they are Secrets.
    let (out, n) = run(None, target("other"), SECRET_LIST.as_bytes(), 100).unwrap();
    assert_absent(&out, SECRET_LIST_VALUES);
    assert_eq!(n, 6);
}

#[test]
fn a_watch_of_secrets_masks_every_event_and_keeps_bookmarks_and_errors() {
    let (out, n) = run(None, secrets(), SECRET_WATCH.as_bytes(), 16 * 1024).unwrap();
    assert_absent(&out, SECRET_WATCH_VALUES);
    assert_eq!(n, 4);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0]["object"]["data"]["password"], MASKED_BASE64);
    assert_eq!(events[1]["object"]["stringData"]["note"], MASKED_TEXT);
    assert_eq!(events[2]["type"], "BOOKMARK");
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(events[4]["object"]["code"], 410);
    assert_eq!(
        events[4]["object"]["message"],
        "too old resource version: 1 (12746)"
    );
}

#[test]
fn each_watch_event_goes_out_with_its_newline_as_soon_as_it_is_complete() {
    let mut masker = Masker::new(None, &secrets());
    let mut out = BytesMut::new();
    let first_end = SECRET_WATCH.find('\n').unwrap() + 1;
    masker
        .push(&SECRET_WATCH.as_bytes()[..first_end], &mut out)
        .unwrap();
    let text = std::str::from_utf8(&out).unwrap();
    assert!(text.ends_with("}\n"), "{text}");
    let event: Value = serde_json::from_str(text).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(masker.masked_fields(), 1);
}

#[test]
fn a_table_of_secrets_masks_row_objects_and_keeps_cells() {
    let (out, n) = run(None, secrets(), SECRET_TABLE.as_bytes(), 16 * 1024).unwrap();
    assert_absent(&out, SECRET_LIST_VALUES);
    assert_eq!(n, 3);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"][0]["cells"], json!(["db", "Opaque", 1, "5d"]));
    assert_eq!(v["rows"][1]["object"]["data"]["tls.key"], MASKED_BASE64);
    assert_eq!(v["columnDefinitions"][2]["name"], "Data");
}

#[test]
fn a_metadata_table_masks_the_last_applied_secret() {
    for t in [secrets(), target("widgets")] {
        let (out, n) = run(None, t, SECRET_TABLE_METADATA.as_bytes(), 7).unwrap();
        assert_absent(&out, &["czNjcjN0LXBhc3N3b3Jk"]);
        assert_eq!(n, 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        let text = v["rows"][0]["object"]["metadata"]["annotations"]
            ["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
        let inner: Value = serde_json::from_str(text).unwrap();
        assert_eq!(inner["data"]["password"], MASKED_BASE64);
    }
}

#[test]
fn a_watch_of_tables_masks_the_rows_of_each_event() {
    // `kubectl get secrets -w`: each event's object is a Table.
    let stream = format!(
        "{{\"type\":\"ADDED\",\"object\":{SECRET_TABLE}}}\n{{\"type\":\"MODIFIED\",\"object\":{SECRET_TABLE}}}\n"
    );
    let (out, n) = run(None, target("widgets"), stream.as_bytes(), 33).unwrap();
    assert_absent(&out, SECRET_LIST_VALUES);
    assert_eq!(n, 6);
}

/// What the body is comes from the body: the same masker, made for a request, masks a list,
/// a watch stream, a table, a metadata list and a watch of tables alike, split anywhere.
#[test]
fn every_shape_is_masked_whatever_the_request_suggested() {
    let metadata_list = concat!(
        r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":"5678"},"items":["#,
        r#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"db","namespace":"default","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"v1\",\"data\":{\"password\":\"czNjcjN0LXBhc3N3b3Jk\"},\"kind\":\"Secret\",\"metadata\":{\"name\":\"db\"}}\n"}}}"#,
        "]}"
    );
    let table_watch = format!("{{\"type\":\"ADDED\",\"object\":{SECRET_TABLE}}}\n");
    let bodies: [(&str, &[&str]); 6] = [
        (SECRET, SECRET_VALUES),
        (SECRET_LIST, SECRET_LIST_VALUES),
        (SECRET_WATCH, SECRET_WATCH_VALUES),
        (SECRET_TABLE, SECRET_LIST_VALUES),
        (metadata_list, &["czNjcjN0LXBhc3N3b3Jk"]),
        (&table_watch, SECRET_LIST_VALUES),
    ];
    // The request may have been for one secret, a list, a watch or a table of them.
    for t in [secrets(), target("widgets")] {
        for (body, values) in bodies {
            for chunk in [1, 7, 64, body.len()] {
                let (out, n) = run(None, t.clone(), body.as_bytes(), chunk)
                    .unwrap_or_else(|e| panic!("{e}: {body}"));
                assert_absent(&out, values);
                assert!(n > 0);
            }
        }
    }
}

/// A list answered as a stream of documents, or a watch answered as one list: each document
/// is read for what it is, one after the other.
#[test]
fn a_list_and_a_watch_back_to_back_are_each_masked() {
    let body = format!("{SECRET_LIST}\n{SECRET_WATCH}{SECRET}");
    let (out, _) = run(None, target("widgets"), body.as_bytes(), 5).unwrap();
    assert_absent(&out, SECRET_LIST_VALUES);
    assert_absent(&out, SECRET_WATCH_VALUES);
    assert_absent(&out, SECRET_VALUES);
}

/// A document that claims one kind and carries the members of another (what a lenient client
/// decodes by its expected type) is masked by its members: `items`, `rows` and `object` hold
/// objects, and objects without a kind are taken for Secrets.
#[test]
fn members_are_read_for_what_they_hold_whatever_the_kind_says() {
    for body in [
        r#"{"kind":"Pod","items":[{"metadata":{"name":"a"},"data":{"k":"aHVudGVyMg=="}}]}"#,
        r#"{"kind":"ConfigMap","type":"ADDED","object":{"data":{"k":"aHVudGVyMg=="}}}"#,
        r#"{"kind":"Pod","rows":[{"cells":[],"object":{"data":{"k":"aHVudGVyMg=="}}}]}"#,
        r#"{"type":"ADDED","object":{"metadata":{},"data":{"k":"aHVudGVyMg=="}}}"#,
    ] {
        for t in [secrets(), target("pods")] {
            let (out, n) = run(None, t, body.as_bytes(), 3).unwrap();
            assert!(!out.contains("aHVudGVyMg"), "{body} -> {out}");
            assert_eq!(n, 1, "{body}");
        }
    }
}

/// The masker knows when what it wrote ends between two documents: a watch that must stop
/// can then end with one more event.
#[test]
fn the_masker_says_when_its_output_ends_between_documents() {
    let mut masker = Masker::new(None, &secrets());
    let mut out = BytesMut::new();
    assert!(masker.between_documents());
    let first_end = SECRET_WATCH.find('\n').unwrap() + 1;
    masker
        .push(&SECRET_WATCH.as_bytes()[..first_end + 10], &mut out)
        .unwrap();
    assert!(!masker.between_documents());
    masker
        .push(&SECRET_WATCH.as_bytes()[first_end + 10..], &mut out)
        .unwrap();
    assert!(masker.between_documents());
}

#[test]
fn a_mixed_list_decides_per_item_by_kind() {
    let list = json!({
        "kind": "List", "apiVersion": "v1", "metadata": {},
        "items": [
            {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm"},
             "data": {"greeting": "hello-visible"}},
            {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"},
             "data": {"k": "c2VjcmV0LXZhbHVlLXg="}},
        ]
    })
    .to_string();
    let (v, n) = mask(None, target("configmaps"), &list);
    assert_eq!(v["items"][0]["data"]["greeting"], "hello-visible");
    assert_eq!(v["items"][1]["data"]["k"], MASKED_BASE64);
    assert_eq!(n, 1);
}

#[test]
fn kind_after_data_is_looked_ahead_for() {
    // Unstructured objects (custom resources, `kubectl` output) have keys in sorted order, so
    // `data` comes before `kind`.
    let secret = r#"{"apiVersion":"v1","data":{"a":"c2VjcmV0LWFhYWFhYQ=="},"kind":"Secret","metadata":{"name":"x"}}"#;
    let custom = r#"{"apiVersion":"example.com/v1","data":{"a":"visible-value"},"kind":"Widget","metadata":{"name":"x"}}"#;
    for chunk in [1, 5, 1024] {
        let (out, n) = run(None, target("widgets"), secret.as_bytes(), chunk).unwrap();
        assert!(!out.contains("c2VjcmV0LWFhYWFhYQ=="), "{out}");
        assert_eq!(n, 1);
        let (out, n) = run(None, target("widgets"), custom.as_bytes(), chunk).unwrap();
        assert_eq!(out, custom);
        assert_eq!(n, 0);
    }
    // No kind at all: treated as a Secret, to fail safe.
    let (out, n) = run(
        None,
        target("widgets"),
        br#"{"data":{"a":"bm8ta2luZA=="}}"#,
        3,
    )
    .unwrap();
    assert_eq!(out, format!(r#"{{"data":{{"a":"{MASKED_BASE64}"}}}}"#));
    assert_eq!(n, 1);
}

#[test]
fn an_unstructured_list_streams_its_items() {
    // Sorted keys: `items` comes before the list's `kind`; each item has its own.
    let list = r#"{"apiVersion":"example.com/v1","items":[{"apiVersion":"v1","data":{"a":"c2VjcmV0LWxpc3QtaXRlbQ=="},"kind":"Secret","metadata":{"name":"a"}},{"apiVersion":"example.com/v1","data":{"a":"visible"},"kind":"Widget","metadata":{"name":"b"}}],"kind":"WidgetList","metadata":{"continue":"","resourceVersion":"7"}}"#;
    let (v, n) = mask(None, target("widgets"), list);
    assert_eq!(v["items"][0]["data"]["a"], MASKED_BASE64);
    assert_eq!(v["items"][1]["data"]["a"], "visible");
    assert_eq!(n, 1);
}

#[test]
fn an_object_with_items_before_its_kind_still_gets_its_paths() {
    // Sorted keys put `items` before `kind`: until `kind` arrives the body may be a list, so
    // its items are read both as objects and as part of the object the paths start from.
    let p = profile(ProfileSpec {
        paths: vec!["items[*].password".into(), "spec.token".into()],
        ..Default::default()
    });
    let body = r#"{"apiVersion":"example.com/v1","items":[{"password":"pw-in-items-1","user":"u"},{"spec":{"token":"tok-in-item-2"}}],"kind":"Vault","metadata":{"name":"v"}}"#;
    let (v, n) = mask(Some(p), target("vaults"), body);
    assert_eq!(v["items"][0], json!({"password": MASKED_TEXT, "user": "u"}));
    assert_eq!(v["items"][1]["spec"]["token"], MASKED_TEXT);
    assert_eq!(n, 2);
}

// ---------------------------------------------------------------------------------------------
// Profiles.

#[test]
fn a_pod_list_masks_env_values_by_name_patterns_and_paths() {
    let (v, n) = mask(Some(app_profile()), target("pods"), POD_LIST);
    let env = &v["items"][0]["spec"]["containers"][0]["env"];
    assert_eq!(env[0], json!({"name": "DB_PASSWORD", "value": MASKED_TEXT}));
    assert_eq!(env[1], json!({"name": "LOG_LEVEL", "value": "debug"}));
    assert_eq!(
        env[2]["valueFrom"]["secretKeyRef"],
        json!({"name": "api", "key": "token"}),
        "a reference is not a value: nothing to mask"
    );
    assert_eq!(env[3]["value"], MASKED_TEXT);
    // `value` before `name`.
    let env1 = &v["items"][1]["spec"]["containers"][0]["env"];
    assert_eq!(env1[0]["value"], MASKED_TEXT);
    assert_eq!(env1[1]["value"], "eu-west-1");
    // A pattern inside a longer string, in place.
    assert_eq!(
        v["items"][0]["spec"]["containers"][0]["args"][1],
        "gatehouse:masked"
    );
    // A path with a quoted key.
    assert_eq!(
        v["items"][0]["metadata"]["annotations"]["example.com/api-token"],
        MASKED_TEXT
    );
    assert_eq!(n, 5);
    let out = v.to_string();
    assert_absent(
        &out,
        &[
            "hunter2-very-secret",
            "sk_live_51Habcdef",
            "value-before-name-secret",
            "abc.def-ghi",
            "tok-annotation-123456",
        ],
    );
    same_shape(&v, &serde_json::from_str(POD_LIST).unwrap());
}

#[test]
fn a_pattern_is_replaced_in_place_within_a_longer_string() {
    let body = r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c"},"data":{"curl":"curl -H 'Authorization: Bearer abc.DEF_1=' https://x"}}"#;
    let (v, n) = mask(Some(app_profile()), target("configmaps"), body);
    assert_eq!(
        v["data"]["curl"],
        "curl -H 'Authorization: gatehouse:masked' https://x"
    );
    assert_eq!(n, 1);
}

#[test]
fn keys_of_a_map_are_matched_by_regex() {
    let body = r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c"},"data":{"db_password":"pw-12345678","mode":"fast","API_TOKEN":"t-87654321"}}"#;
    let (v, n) = mask(Some(app_profile()), target("configmaps"), body);
    assert_eq!(
        v["data"],
        json!({"db_password": MASKED_TEXT, "mode": "fast", "API_TOKEN": MASKED_TEXT})
    );
    assert_eq!(n, 2);
}

fn profile(spec: ProfileSpec) -> Arc<Profile> {
    Arc::new(Profile::compile("test", &spec).unwrap())
}

#[test]
fn selected_numbers_booleans_objects_and_arrays_keep_their_types() {
    let p = profile(ProfileSpec {
        paths: vec![
            "spec.replicas".into(),
            "spec.paused".into(),
            "spec.selector".into(),
            "spec.ports".into(),
            "spec.nothing".into(),
        ],
        ..Default::default()
    });
    let body = r#"{"kind":"Widget","apiVersion":"example.com/v1","spec":{"replicas":3,"paused":true,"nothing":null,"selector":{"matchLabels":{"app":"web"},"n":[1,2.5,false,"x"]},"ports":[{"port":443,"name":"https"}],"kept":"yes"}}"#;
    let (v, n) = mask(Some(p), target("widgets"), body);
    assert_eq!(
        v["spec"],
        json!({
            "replicas": 0, "paused": false, "nothing": null,
            "selector": {"matchLabels": {"app": MASKED_TEXT}, "n": [0, 0, false, MASKED_TEXT]},
            "ports": [{"port": 0, "name": MASKED_TEXT}],
            "kept": "yes"
        })
    );
    // replicas, paused, app, 1, 2.5, false, x, port, name.
    assert_eq!(n, 9);
}

#[test]
fn wildcards_and_indices() {
    let p = profile(ProfileSpec {
        paths: vec![
            "spec.*.secret".into(),
            "spec.list[1]".into(),
            "data.*".into(),
        ],
        ..Default::default()
    });
    let body = r#"{"kind":"Widget","spec":{"a":{"secret":"s1-aaaaaa","open":"o"},"b":[{"secret":"s2-bbbbbb"}],"list":["zero","one","two"]},"data":{"x":"d1-cccccc"}}"#;
    let (v, n) = mask(Some(p), target("widgets"), body);
    assert_eq!(v["spec"]["a"], json!({"secret": MASKED_TEXT, "open": "o"}));
    // `*` also stands for any element, `[1]` for one.
    assert_eq!(
        v["spec"]["b"][0]["secret"], "s2-bbbbbb",
        "b.secret is b[0].secret, not matched"
    );
    assert_eq!(v["spec"]["list"], json!(["zero", MASKED_TEXT, "two"]));
    assert_eq!(v["data"]["x"], MASKED_TEXT);
    assert_eq!(n, 3);
}

#[test]
fn binary_data_selected_by_a_profile_stays_base64() {
    let p = profile(ProfileSpec {
        paths: vec!["binaryData".into()],
        ..Default::default()
    });
    let body = r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c"},"binaryData":{"blob":"AAECAwQFBgcICQ=="}}"#;
    let (v, n) = mask(Some(p), target("configmaps"), body);
    assert_eq!(v["binaryData"]["blob"], MASKED_BASE64);
    assert_eq!(n, 1);
}

#[test]
fn named_values_accept_custom_fields_and_an_array_path() {
    let p = profile(ProfileSpec {
        named_values: vec![NamedValueSpec {
            path: "spec.params".into(),
            matching: "^secret$".into(),
            name_field: "key".into(),
            value_field: "val".into(),
        }],
        ..Default::default()
    });
    let body = r#"{"kind":"Task","spec":{"params":[{"key":"secret","val":"v-1111111"},{"val":"v-2222222","key":"secret"},{"key":"public","val":"v-3333333"},{"key":"secret"},{"val":"v-4444444"}]}}"#;
    for chunk in [1, 3, 4096] {
        let (out, n) = run(Some(p.clone()), target("tasks"), body.as_bytes(), chunk).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["spec"]["params"],
            json!([
                {"key": "secret", "val": MASKED_TEXT},
                {"val": MASKED_TEXT, "key": "secret"},
                {"key": "public", "val": "v-3333333"},
                {"key": "secret"},
                {"val": "v-4444444"},
            ])
        );
        assert_eq!(n, 2);
    }
}

#[test]
fn profile_paths_reach_inside_the_last_applied_annotation_of_any_object() {
    let inner = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "DB_PASSWORD", "value": "inner-secret-99"}]}
        ]}}}
    });
    let body = json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": inner.to_string()
        }},
        "spec": {}
    })
    .to_string();
    let p = profile(ProfileSpec {
        named_values: vec![NamedValueSpec {
            path: "spec.template.spec.containers[*].env".into(),
            matching: "PASSWORD".into(),
            name_field: "name".into(),
            value_field: "value".into(),
        }],
        ..Default::default()
    });
    let (v, n) = mask(Some(p), target("deployments"), &body);
    assert!(!v.to_string().contains("inner-secret-99"));
    assert_eq!(n, 1);
    let text = v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    let inner: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        inner["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        MASKED_TEXT
    );
}

#[test]
fn a_secrets_last_applied_that_is_not_json_is_masked_whole() {
    let body = json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "x", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "password: not-json-secret"
        }},
    })
    .to_string();
    let (v, n) = mask(None, secrets(), &body);
    assert_eq!(
        v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        MASKED_TEXT
    );
    assert_eq!(n, 1);
}

#[test]
fn objects_without_a_profile_and_outside_secrets_are_copied_byte_for_byte() {
    let (out, n) = run(None, target("pods"), POD_LIST.as_bytes(), 1000).unwrap();
    assert_eq!(out, POD_LIST);
    assert_eq!(n, 0);
}

#[test]
fn escaped_strings_are_matched_on_their_text() {
    let p = profile(ProfileSpec {
        patterns: vec!["tok-[0-9]{6}".into()],
        ..Default::default()
    });
    let body = r#"{"kind":"ConfigMap","data":{"a":"say \"tok-\u0031234567\" \u00e9"}}"#;
    let (v, n) = mask(Some(p), target("configmaps"), body);
    assert_eq!(v["data"]["a"], "say \"gatehouse:masked7\" \u{e9}");
    assert_eq!(n, 1);
}

// ---------------------------------------------------------------------------------------------
// Chunking.

#[test]
fn output_is_the_same_however_the_input_is_chunked() {
    let cases: Vec<(Option<Arc<Profile>>, MaskTarget, String)> = vec![
        (None, secrets(), SECRET.to_string()),
        (None, secrets(), SECRET_WATCH.to_string()),
        (None, secrets(), SECRET_TABLE_METADATA.to_string()),
        (Some(app_profile()), target("pods"), POD_LIST.to_string()),
        (None, target("pods"), POD_LIST.to_string()),
        (
            None,
            target("widgets"),
            r#"{"apiVersion":"v1","data":{"a":"c2VjcmV0LWFhYWFhYQ=="},"kind":"Secret"}"#
                .to_string(),
        ),
    ];
    for (p, t, input) in cases {
        let (whole, whole_n) = run(p.clone(), t.clone(), input.as_bytes(), input.len()).unwrap();
        let bytes = input.as_bytes();
        for cut in 0..=bytes.len() {
            let mut masker = Masker::new(p.clone(), &t);
            let mut out = BytesMut::new();
            masker.push(&bytes[..cut], &mut out).unwrap();
            masker.push(&bytes[cut..], &mut out).unwrap();
            masker.finish(&mut out).unwrap();
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                whole,
                "cut at byte {cut}"
            );
            assert_eq!(masker.masked_fields(), whole_n);
        }
        let (bytewise, n) = run(p, t, bytes, 1).unwrap();
        assert_eq!(bytewise, whole);
        assert_eq!(n, whole_n);
    }
}

#[test]
fn a_long_list_is_streamed_not_held() {
    // 2,000 pods: output must keep pace with input.
    let pod = r#"{"metadata":{"name":"p","namespace":"n"},"spec":{"containers":[{"name":"c","image":"i","env":[{"name":"A_PASSWORD","value":"v-secret-value"}]}]},"status":{"phase":"Running"}}"#;
    let mut list = String::from(r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":["#);
    for i in 0..2000 {
        if i > 0 {
            list.push(',');
        }
        list.push_str(pod);
    }
    list.push_str("]}");
    let mut masker = Masker::new(Some(app_profile()), &target("pods"));
    let mut out = BytesMut::new();
    let mut fed = 0;
    for piece in list.as_bytes().chunks(16 * 1024) {
        masker.push(piece, &mut out).unwrap();
        fed += piece.len();
        // Masked values are the same length as the originals here, give or take.
        assert!(
            out.len() + 2 * pod.len() >= fed,
            "only {} bytes out after {fed} in",
            out.len()
        );
    }
    masker.finish(&mut out).unwrap();
    assert_eq!(masker.masked_fields(), 2000);
    assert!(
        !std::str::from_utf8(&out)
            .unwrap()
            .contains("v-secret-value")
    );
}

// ---------------------------------------------------------------------------------------------
// Failing closed.

#[test]
fn malformed_input_fails_and_the_error_holds_no_body_bytes() {
    type Check = fn(&MaskError) -> bool;
    let truncated: Check = |e| matches!(e, MaskError::Truncated { .. });
    let malformed: Check = |e| matches!(e, MaskError::Malformed { .. });
    let not_json: Check = |e| *e == MaskError::NotJson;
    let cases: &[(&[u8], Check)] = &[
        (b"k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret", not_json),
        (b"<html>hunter2</html>", not_json),
        (
            br#"{"kind":"Secret","data":{"a":"aHVudGVyMg=="}"#,
            truncated,
        ),
        (br#"{"kind":"Secret","data":{"a":"aHVudGVy"#, truncated),
        (
            br#"{"kind":"Secret","data":{"a" "aHVudGVyMg=="}}"#,
            malformed,
        ),
        (br#"{"kind":"Secret","data":{"a":aHVudGVyMg==}}"#, malformed),
        (br#"{"kind":"Secret","data":["aHVudGVyMg==",]}"#, malformed),
        (br#"{"data":{"a":"aHVudGVyMg=="},"kind":"Sec"#, truncated),
        (br#"{"data":{"a":"aHVudGVyMg=="},"kind" 1}"#, malformed),
        (
            br#"{"type":"ADDED","object":{"kind":"Secret"}}}"#,
            malformed,
        ),
        // Inside parts no rule looks into, JSON is checked just as strictly.
        (br#"{"kind":"Pod","spec":{"a" 1}}"#, malformed),
        (br#"{"kind":"Pod","spec":{"a":[1,]}}"#, malformed),
        (br#"{"kind":"Pod","spec":{"a":[1}}}"#, malformed),
        (br#"{"kind":"Pod","spec":{"a":{"b":1]}}"#, malformed),
        (br#"{"kind":"Pod","spec":{"a":[tru]}}"#, malformed),
        (br#"{"kind":"Pod","spec":{"a":[1,2"#, truncated),
        (br#"[{"a":1}}"#, malformed),
    ];
    for (input, expected) in cases {
        for chunk in [1, 4, 1024] {
            let err = run(None, target("pods"), input, chunk)
                .err()
                .unwrap_or_else(|| panic!("{:?} was accepted", String::from_utf8_lossy(input)));
            assert!(
                expected(&err),
                "{:?}: {err:?}",
                String::from_utf8_lossy(input)
            );
            let message = err.to_string();
            for fragment in ["hunter2", "aHVudGVy", "Secret", "html", "k8s"] {
                assert!(!message.contains(fragment), "{message}");
            }
        }
    }
}

#[test]
fn nothing_unmasked_is_emitted_before_an_error() {
    // The body breaks before the `kind` that decides whether `data` is a Secret's: what was
    // sent before the error holds no value.
    for input in [
        &br#"{"apiVersion":"v1","data":{"a":"aHVudGVyMg=="},"kin"#[..],
        br#"{"apiVersion":"v1","data":{"a":"aHVudGVyMg=="},"kind":"Secret","metadata":{"name":"x"},"#,
    ] {
        let mut masker = Masker::new(None, &target("widgets"));
        let mut out = BytesMut::new();
        masker.push(input, &mut out).unwrap();
        assert!(masker.finish(&mut out).is_err());
        assert!(!String::from_utf8_lossy(&out).contains("aHVudGVyMg"));
        // And it keeps failing.
        assert!(masker.push(b"}", &mut out).is_err());
    }
}

#[test]
fn an_empty_body_is_fine() {
    assert_eq!(run(None, secrets(), b"", 1).unwrap(), (String::new(), 0));
    assert_eq!(
        run(None, secrets(), b"\n", 1).unwrap(),
        ("\n".to_string(), 0)
    );
}

// ---------------------------------------------------------------------------------------------
// The other entry points.

#[test]
fn needs_masking_only_where_something_could_be_masked() {
    let p = app_profile();
    let empty = profile(ProfileSpec::default());
    assert!(needs_masking(None, &secrets()));
    assert!(needs_masking(None, &secrets()));
    assert!(needs_masking(
        None,
        &MaskTarget::new("secrets", "example.com")
    ));
    assert!(!needs_masking(None, &target("pods")));
    assert!(!needs_masking(None, &target("")));
    assert!(!needs_masking(Some(&empty), &target("pods")));
    assert!(needs_masking(Some(&p), &target("pods")));
}

#[test]
fn mask_value_masks_a_request_body() {
    // A create body as a client sends it (serde_json sorts keys: data before kind).
    let mut body = json!({
        "kind": "Secret", "apiVersion": "v1", "metadata": {"name": "new"},
        "data": {"password": "aHVudGVyMi1yZXF1ZXN0"},
        "stringData": {"token": "plain-request-token"},
    });
    let n = mask_value(None, &target("widgets"), &mut body);
    assert_eq!(n, 2);
    assert_eq!(body["data"]["password"], MASKED_BASE64);
    assert_eq!(body["stringData"]["token"], MASKED_TEXT);
    assert_eq!(body["metadata"]["name"], "new");

    let mut pod: Value = serde_json::from_str(POD_LIST).unwrap();
    let pod = &mut pod["items"][0];
    let n = mask_value(Some(&app_profile()), &target("pods"), pod);
    assert_eq!(n, 4);
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["value"], MASKED_TEXT);

    let mut untouched = json!({"kind": "Pod", "spec": {"a": "b"}});
    assert_eq!(mask_value(None, &target("pods"), &mut untouched), 0);
    assert_eq!(untouched, json!({"kind": "Pod", "spec": {"a": "b"}}));
}

#[test]
fn mask_text_applies_patterns_only() {
    let p = app_profile();
    let line = "GET / HTTP/1.1\r\nAuthorization: Bearer abc.def==\r\n";
    assert_eq!(
        mask_text(Some(&p), line),
        "GET / HTTP/1.1\r\nAuthorization: gatehouse:masked\r\n"
    );
    assert!(matches!(
        mask_text(Some(&p), "nothing to see"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(mask_text(None, line), line);
}

// ---------------------------------------------------------------------------------------------
// Randomised: no secret value ever survives, whatever the key order, nesting or chunking.

mod random {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// A value no fixture text could contain by accident.
    fn secret_value(rng: &mut StdRng, n: usize) -> String {
        let bytes: Vec<u8> = (0..rng.random_range(12..40))
            .map(|_| rng.random())
            .collect();
        format!(
            "S{n}x{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    fn shuffled_object(rng: &mut StdRng, members: Vec<(String, Value)>) -> String {
        let mut members = members;
        members.shuffle(rng);
        let body: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k), v))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    fn secret(rng: &mut StdRng, values: &mut Vec<String>, with_kind: bool) -> String {
        let mut data = serde_json::Map::new();
        for i in 0..rng.random_range(0..4) {
            let v = secret_value(rng, values.len());
            values.push(v.clone());
            data.insert(format!("key{i}"), Value::String(v));
        }
        let mut string_data = serde_json::Map::new();
        if rng.random_bool(0.3) {
            let v = secret_value(rng, values.len());
            values.push(v.clone());
            // Escapes in the value must not help it escape.
            string_data.insert("note".into(), Value::String(format!("line1\n\"{v}\"")));
        }
        let mut annotations = serde_json::Map::new();
        if rng.random_bool(0.5) {
            let inner = json!({"apiVersion": "v1", "kind": "Secret", "data": data.clone(),
                               "stringData": string_data.clone(), "metadata": {"name": "x"}});
            annotations.insert(
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                Value::String(inner.to_string()),
            );
        }
        let mut members = vec![
            ("apiVersion".to_string(), json!("v1")),
            (
                "metadata".to_string(),
                json!({"name": "s", "namespace": "ns", "annotations": annotations,
                       "labels": {"app": "x"}}),
            ),
            ("data".to_string(), Value::Object(data)),
            ("type".to_string(), json!("Opaque")),
        ];
        if !string_data.is_empty() {
            members.push(("stringData".to_string(), Value::Object(string_data)));
        }
        if with_kind {
            members.push(("kind".to_string(), json!("Secret")));
        }
        shuffled_object(rng, members)
    }

    fn body(rng: &mut StdRng, values: &mut Vec<String>) -> (String, MaskTarget) {
        match rng.random_range(0..5) {
            0 => (secret(rng, values, true), target("anything")),
            1 => {
                let items: Vec<String> = (0..rng.random_range(0..5))
                    .map(|_| secret(rng, values, false))
                    .collect();
                (
                    format!(
                        r#"{{"kind":"SecretList","apiVersion":"v1","metadata":{{}},"items":[{}]}}"#,
                        items.join(",")
                    ),
                    target("secrets"),
                )
            }
            2 => {
                let events: Vec<String> = (0..rng.random_range(1..5))
                    .map(|_| {
                        format!(
                            r#"{{"type":"ADDED","object":{}}}"#,
                            secret(rng, values, true)
                        )
                    })
                    .collect();
                (events.join("\n") + "\n", target("secrets"))
            }
            3 => {
                let rows: Vec<String> = (0..rng.random_range(1..4))
                    .map(|_| {
                        format!(
                            r#"{{"cells":["s","Opaque",1,"1d"],"object":{}}}"#,
                            secret(rng, values, true)
                        )
                    })
                    .collect();
                (
                    format!(
                        r#"{{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{{}},"columnDefinitions":[],"rows":[{}]}}"#,
                        rows.join(",")
                    ),
                    target("secrets"),
                )
            }
            _ => {
                let items: Vec<String> = (0..rng.random_range(1..4))
                    .map(|_| secret(rng, values, true))
                    .collect();
                (
                    format!(
                        r#"{{"kind":"List","apiVersion":"v1","items":[{}]}}"#,
                        items.join(",")
                    ),
                    target("widgets"),
                )
            }
        }
    }

    #[test]
    fn no_secret_value_survives() {
        let mut rng = StdRng::seed_from_u64(0x6a7e_4005e);
        for round in 0..300 {
            let mut values = Vec::new();
            let (input, t) = body(&mut rng, &mut values);
            let chunk = rng.random_range(1..64);
            let (out, n) = run(None, t.clone(), input.as_bytes(), chunk)
                .unwrap_or_else(|e| panic!("round {round}: {e}\n{input}"));
            // Every value is masked where it stands, and again in the last-applied copy.
            assert!(
                n as usize >= values.len(),
                "round {round}: {n} < {}",
                values.len()
            );
            // Neither raw nor JSON-escaped (as inside the last-applied annotation).
            for v in &values {
                assert!(
                    !out.contains(v.as_str()),
                    "round {round}: {v} leaked\n{out}"
                );
                let escaped = Value::String(v.clone()).to_string();
                assert!(!out.contains(escaped.trim_matches('"')));
            }
            // Still JSON of the same shape, and masking it again changes nothing.
            if let Ok(a) = serde_json::from_str::<Value>(&input) {
                let b: Value = serde_json::from_str(&out).unwrap();
                same_shape(&a, &b);
            }
            let (again, _) = run(None, t, out.as_bytes(), 4096).unwrap();
            assert_eq!(again, out, "round {round}");
        }
    }
}
