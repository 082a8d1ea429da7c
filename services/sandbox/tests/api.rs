//! The Kubernetes wire formats over raw HTTPS: Status errors, discovery, selectors, paging,
//! watches, Tables, patches, impersonation headers and request recording.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, BOB_TOKEN, EventReader, PROXY_TOKEN, start, start_with};
use http::Method;
use serde_json::{Value, json};

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

fn assert_status(v: &Value, code: u16, reason: &str, message: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert_eq!(v["message"], message, "{v}");
    assert_eq!(v["metadata"], json!({}));
}

#[tokio::test]
async fn authentication_and_error_statuses() {
    let c = start().await;
    let r = c
        .request(Method::GET, "/api/v1/pods", None, &[], None)
        .await;
    assert_eq!(r.status, 401);
    assert_status(&r.json(), 401, "Unauthorized", "Unauthorized");
    let r = c
        .request(Method::GET, "/api/v1/pods", Some("bogus"), &[], None)
        .await;
    assert_eq!(r.status, 401);
    let health = c.request(Method::GET, "/readyz", None, &[], None).await;
    assert_eq!((health.status, &health.body[..]), (200, &b"ok"[..]));

    let r = c.get("/api/v1/namespaces/apps/pods/nope").await;
    assert_eq!(r.status, 404);
    assert_status(&r.json(), 404, "NotFound", r#"pods "nope" not found"#);
    assert_eq!(r.json()["details"], json!({"name": "nope", "kind": "pods"}));
    let r = c.get("/api/v1/widgets").await;
    assert_status(
        &r.json(),
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    let r = c.get("/no/such/path").await;
    assert_eq!(r.status, 404);
    let r = c
        .admin(Method::POST, "/api/v1/namespaces/apps/pods/web", "{}")
        .await;
    assert_status(
        &r.json(),
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    );
    let r = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/configmaps/web-config",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/apply-patch+yaml")],
            Some("data: {}"),
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
    let r = c
        .admin(
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            r#"{"metadata":{"name":"web-config"}}"#,
        )
        .await;
    assert_status(
        &r.json(),
        409,
        "AlreadyExists",
        r#"configmaps "web-config" already exists"#,
    );
    let r = c
        .admin(
            Method::POST,
            "/api/v1/namespaces/missing/configmaps",
            r#"{"metadata":{"name":"x"}}"#,
        )
        .await;
    assert_status(
        &r.json(),
        404,
        "NotFound",
        r#"namespaces "missing" not found"#,
    );
    let r = c
        .admin(
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            r#"{"metadata":{"name":"Bad_Name"}}"#,
        )
        .await;
    assert_eq!(r.status, 422);
    let v = r.json();
    assert_eq!(v["reason"], "Invalid");
    assert!(v["message"].as_str().unwrap().starts_with(r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#), "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    let r = c
        .admin(
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            r#"{"data":{}}"#,
        )
        .await;
    assert_eq!(
        r.json()["message"],
        r#"ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required"#
    );
    for garbage in [
        "not json",
        "[1,2]",
        r#"{"metadata": 5}"#,
        r#"{"kind":"Secret","metadata":{"name":"x"}}"#,
    ] {
        let r = c
            .admin(Method::POST, "/api/v1/namespaces/apps/configmaps", garbage)
            .await;
        assert_eq!(
            r.status,
            400,
            "{garbage}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["reason"], "BadRequest");
    }
    let r = c.get("/api/v1/pods?labelSelector=a%20in%20(").await;
    assert_eq!(r.status, 400);
    let r = c.get("/api/v1/pods?fieldSelector=spec.bogus%3Dx").await;
    assert_status(
        &r.json(),
        400,
        "BadRequest",
        "field label not supported: spec.bogus",
    );
}

#[tokio::test]
async fn discovery_documents() {
    let c = start_with(false).await;
    let v = c.get("/version").await.json();
    assert_eq!(
        (v["major"].as_str(), v["minor"].as_str()),
        (Some("1"), Some("32"))
    );
    assert_eq!(v["gitVersion"], "v1.32.0-gatehouse-sandbox");
    assert!(v["platform"].as_str().unwrap().contains('/'));
    let api = c.get("/api").await.json();
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));
    assert_eq!(c.get("/apis").await.json()["kind"], "APIGroupList");
    let v1 = c.get("/api/v1").await.json();
    assert_eq!(v1["kind"], "APIResourceList");
    assert_eq!(v1["groupVersion"], "v1");
    let find = |name: &str| {
        v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}"))
    };
    let pods = find("pods");
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], true);
    assert_eq!(pods["kind"], "Pod");
    assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
    assert_eq!(find("namespaces")["namespaced"], false);
    for (name, short) in [
        ("configmaps", "cm"),
        ("namespaces", "ns"),
        ("services", "svc"),
        ("serviceaccounts", "sa"),
        ("events", "ev"),
    ] {
        assert!(
            find(name)["shortNames"]
                .as_array()
                .unwrap()
                .contains(&json!(short)),
            "{name}"
        );
    }
    for sub in ["pods/log", "pods/status", "namespaces/status"] {
        find(sub);
    }
    find("resourcequotas");
    find("limitranges");
    // Discovery is open to any authenticated user, nothing else is.
    let bob = c
        .request(Method::GET, "/api/v1", Some(BOB_TOKEN), &[], None)
        .await;
    assert_eq!(bob.status, 200);
    let bob = c
        .request(Method::GET, "/metrics", Some(BOB_TOKEN), &[], None)
        .await;
    assert_status(
        &bob.json(),
        403,
        "Forbidden",
        r#"forbidden: User "bob" cannot get path "/metrics""#,
    );
    let root = c.get("/openapi/v3").await.json();
    let url = root["paths"]["api/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = c.get(&url).await.json();
    assert_eq!(doc["openapi"], "3.0.0");
}

#[tokio::test]
async fn selectors_paging_and_list_shapes() {
    let c = start().await;
    let list = c.get("/api/v1/pods").await.json();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    let all: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap(),
                p["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "lists are in key order");
    assert!(
        list["items"][0].get("kind").is_none(),
        "list items carry no kind, as in kube"
    );
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > 0);

    let names = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&c.get("/api/v1/pods?labelSelector=app%3Dweb").await.json()),
        ["web"]
    );
    assert_eq!(
        names(
            &c.get("/api/v1/pods?labelSelector=app%20in%20(api,coredns)")
                .await
                .json()
        ),
        ["coredns", "api"]
    );
    assert_eq!(
        names(
            &c.get("/api/v1/namespaces/apps/pods?labelSelector=app!%3Dweb")
                .await
                .json()
        ),
        ["worker"]
    );
    assert_eq!(
        names(
            &c.get("/api/v1/namespaces/apps/pods?labelSelector=!app")
                .await
                .json()
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        names(
            &c.get("/api/v1/pods?fieldSelector=metadata.name%3Dpayments")
                .await
                .json()
        ),
        ["payments"]
    );
    assert_eq!(
        names(
            &c.get("/api/v1/pods?fieldSelector=metadata.namespace%3Dprod,metadata.name!%3Dapi")
                .await
                .json()
        ),
        ["payments"]
    );
    assert_eq!(
        names(
            &c.get("/api/v1/pods?fieldSelector=status.phase%3DRunning&labelSelector=app%3Dhello")
                .await
                .json()
        ),
        ["hello"]
    );

    // limit + continue walks everything exactly once at one list resourceVersion.
    let mut seen = Vec::new();
    let mut path = "/api/v1/pods?limit=3".to_owned();
    let mut list_rv = None;
    loop {
        let page = c.get(&path).await.json();
        let page_rv = page["metadata"]["resourceVersion"].clone();
        assert_eq!(*list_rv.get_or_insert(page_rv.clone()), page_rv);
        let items = names(&page);
        assert!(items.len() <= 3);
        seen.extend(items);
        match page["metadata"]["continue"].as_str() {
            Some(token) => {
                assert!(page["metadata"]["remainingItemCount"].as_u64().unwrap() > 0);
                path = format!("/api/v1/pods?limit=3&continue={token}");
            }
            None => break,
        }
    }
    assert_eq!(seen, names(&list));
    assert_eq!(c.get("/api/v1/pods?continue=garbage").await.status, 400);
}

#[tokio::test]
async fn tables_and_partial_metadata() {
    let c = start().await;
    let t = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(ADMIN_TOKEN),
            &[("accept", TABLE)],
            None,
        )
        .await
        .json();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(&cols[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["cells"][0], "web");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert!(t["metadata"]["resourceVersion"].is_string());
    let none = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods?includeObject=None",
            Some(ADMIN_TOKEN),
            &[("accept", TABLE)],
            None,
        )
        .await
        .json();
    assert!(none["rows"][0].get("object").is_none());
    let full = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/configmaps/web-config?includeObject=Object",
            Some(ADMIN_TOKEN),
            &[("accept", TABLE)],
            None,
        )
        .await
        .json();
    assert_eq!(full["rows"].as_array().unwrap().len(), 1);
    assert_eq!(full["rows"][0]["object"]["data"]["LOG_LEVEL"], "info");
    assert_eq!(full["rows"][0]["cells"][1], 2);
    let ns = c
        .request(
            Method::GET,
            "/api/v1/namespaces",
            Some(ADMIN_TOKEN),
            &[("accept", TABLE)],
            None,
        )
        .await
        .json();
    let cols: Vec<&str> = ns["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Status", "Age"]);
    let meta = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/secrets",
            Some(ADMIN_TOKEN),
            &[(
                "accept",
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            )],
            None,
        )
        .await
        .json();
    assert_eq!(meta["kind"], "PartialObjectMetadataList");
    assert!(
        meta["items"][0].get("data").is_none(),
        "metadata only: no secret data"
    );
}

#[tokio::test]
async fn watch_from_a_resource_version_streams_changes() {
    let c = start().await;
    let list = c.get("/api/v1/namespaces/apps/configmaps").await.json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = c
        .send(
            Method::GET,
            &format!("/api/v1/namespaces/apps/configmaps?watch=1&resourceVersion={rv}"),
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut events = EventReader::new(resp);
    let created = c
        .admin(
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            r#"{"metadata":{"name":"w"},"data":{"a":"1"}}"#,
        )
        .await;
    assert_eq!(created.status, 201);
    let e = events.expect("ADDED").await;
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"]["kind"], "ConfigMap");
    assert_eq!(e["object"]["metadata"]["name"], "w");
    let patch = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/configmaps/w",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"data":{"a":"2"}}"#),
        )
        .await;
    assert_eq!(patch.status, 200);
    let e = events.expect("MODIFIED").await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["data"]["a"].as_str()),
        (Some("MODIFIED"), Some("2"))
    );
    let del = c
        .request(
            Method::DELETE,
            "/api/v1/namespaces/apps/configmaps/w",
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    assert_eq!(del.json()["status"], "Success");
    assert_eq!(del.json()["details"]["name"], "w");
    let e = events.expect("DELETED").await;
    assert_eq!(e["type"], "DELETED");
    // A change in another namespace is not seen.
    c.admin(
        Method::POST,
        "/api/v1/namespaces/prod/configmaps",
        r#"{"metadata":{"name":"elsewhere"}}"#,
    )
    .await;
    c.admin(
        Method::POST,
        "/api/v1/namespaces/apps/configmaps",
        r#"{"metadata":{"name":"marker"}}"#,
    )
    .await;
    assert_eq!(
        events.expect("marker").await["object"]["metadata"]["name"],
        "marker"
    );

    // Replaying from the old resourceVersion yields the same history.
    let resp = c
        .send(
            Method::GET,
            &format!(
                "/api/v1/watch/namespaces/apps/configmaps?resourceVersion={rv}&timeoutSeconds=5"
            ),
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    let mut replay = EventReader::new(resp);
    let types: Vec<String> = {
        let mut t = Vec::new();
        for _ in 0..4 {
            t.push(
                replay.expect("replayed event").await["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        t
    };
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED", "ADDED"]);
}

#[tokio::test]
async fn watch_without_version_starts_with_synthetic_adds_bookmarks_and_timeout() {
    let c = start().await;
    let resp = c
        .send(
            Method::GET,
            "/api/v1/namespaces/prod/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=1",
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    let mut events = EventReader::new(resp);
    let first = events.expect("ADDED api").await;
    let second = events.expect("ADDED payments").await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("api"))
    );
    assert_eq!(second["object"]["metadata"]["name"], "payments");
    let bookmark = events.expect("BOOKMARK").await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Pod");
    assert!(bookmark["object"]["metadata"]["resourceVersion"].is_string());
    // timeoutSeconds=1 ends the stream by itself.
    assert!(events.next().await.is_none());

    // Label-selected watches see objects leave the selection as DELETED.
    let resp = c
        .send(
            Method::GET,
            "/api/v1/namespaces/apps/pods?watch=true&labelSelector=app%3Dweb",
            Some(ADMIN_TOKEN),
            &[("accept", TABLE)],
            None,
        )
        .await;
    let mut events = EventReader::new(resp);
    let added = events.expect("ADDED web").await;
    assert_eq!(
        added["object"]["kind"], "Table",
        "as=Table watches stream one-row tables"
    );
    assert_eq!(added["object"]["rows"][0]["cells"][0], "web");
    let relabel = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"metadata":{"labels":{"app":"other"}}}"#),
        )
        .await;
    assert_eq!(relabel.status, 200);
    assert_eq!(events.expect("DELETED").await["type"], "DELETED");

    // A compacted-away resourceVersion gets a 410 Expired ERROR event.
    let resp = c
        .send(
            Method::GET,
            "/api/v1/pods?watch=true&resourceVersion=1",
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    let mut events = EventReader::new(resp);
    let err = events.expect("ERROR").await;
    assert_eq!(err["type"], "ERROR");
    assert_eq!(err["object"]["code"], 410);
    assert_eq!(err["object"]["reason"], "Expired");
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let c = start().await;
    let resp = c
        .send(
            Method::GET,
            "/api/v1/namespaces/apps/pods?watch=true",
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    let mut events = EventReader::new(resp);
    events.expect("ADDED").await;
    let common::Cluster { sandbox, dir, .. } = c;
    tokio::time::timeout(Duration::from_secs(15), sandbox.shutdown())
        .await
        .expect("graceful shutdown in time");
    while events.next().await.is_some() {}
    drop(dir);
}

#[tokio::test]
async fn patches_updates_and_deletes() {
    let c = start().await;
    let smp = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/strategic-merge-patch+json")],
            Some(r#"{"spec":{"$setElementOrder/containers":[{"name":"web"}],"containers":[{"name":"web","env":[{"name":"A","value":"1"}]}]}}"#),
        )
        .await;
    assert_eq!(smp.status, 200, "{}", String::from_utf8_lossy(&smp.body));
    let pod = smp.json();
    assert_eq!(
        pod["spec"]["containers"][0]["image"], "nginx:1.27",
        "merged by name, image kept"
    );
    assert_eq!(pod["spec"]["containers"][0]["env"][0]["name"], "A");
    assert!(pod.to_string().find("$setElementOrder").is_none());
    let jp = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/configmaps/web-config",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/json-patch+json")],
            Some(r#"[{"op":"replace","path":"/data/LOG_LEVEL","value":"debug"}]"#),
        )
        .await;
    assert_eq!(jp.json()["data"]["LOG_LEVEL"], "debug");
    let stale = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/configmaps/web-config",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"metadata":{"resourceVersion":"1"},"data":{"x":"y"}}"#),
        )
        .await;
    assert_status(
        &stale.json(),
        409,
        "Conflict",
        r#"Operation cannot be fulfilled on configmaps "web-config": the object has been modified; please apply your changes to the latest version and try again"#,
    );
    // A no-op update keeps the resourceVersion.
    let current = c
        .get("/api/v1/namespaces/apps/configmaps/web-config")
        .await
        .json();
    let put = c
        .admin(
            Method::PUT,
            "/api/v1/namespaces/apps/configmaps/web-config",
            &current.to_string(),
        )
        .await
        .json();
    assert_eq!(
        put["metadata"]["resourceVersion"],
        current["metadata"]["resourceVersion"]
    );
    let strict = c
        .request(
            Method::PATCH,
            "/api/v1/namespaces/apps/configmaps/web-config?fieldValidation=Strict",
            Some(ADMIN_TOKEN),
            &[("content-type", "application/merge-patch+json")],
            Some(r#"{"bogus":1}"#),
        )
        .await;
    assert_status(
        &strict.json(),
        400,
        "BadRequest",
        r#"strict decoding error: unknown field "bogus""#,
    );

    // Secrets: stringData folds into data, type defaults; generateName makes a name.
    let s = c
        .admin(
            Method::POST,
            "/api/v1/namespaces/apps/secrets",
            r#"{"metadata":{"generateName":"tok-"},"stringData":{"k":"v"}}"#,
        )
        .await;
    assert_eq!(s.status, 201);
    let s = s.json();
    assert_eq!(s["data"]["k"], "dg==");
    assert_eq!(s["type"], "Opaque");
    assert!(s.get("stringData").is_none());
    assert!(s["metadata"]["name"].as_str().unwrap().starts_with("tok-"));

    // Pods delete with the object, and deletecollection honours selectors.
    let del = c
        .request(
            Method::DELETE,
            "/api/v1/namespaces/apps/pods/worker",
            Some(ADMIN_TOKEN),
            &[],
            Some(r#"{"propagationPolicy":"Background"}"#),
        )
        .await
        .json();
    assert_eq!(del["kind"], "Pod");
    assert!(del["metadata"]["deletionTimestamp"].is_string());
    let pre = c
        .request(
            Method::DELETE,
            "/api/v1/namespaces/apps/pods/web",
            Some(ADMIN_TOKEN),
            &[],
            Some(r#"{"preconditions":{"uid":"nope"}}"#),
        )
        .await;
    assert_eq!(pre.status, 409);
    let dc = c
        .request(
            Method::DELETE,
            "/api/v1/namespaces/prod/pods?labelSelector=app%3Dapi",
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await
        .json();
    assert_eq!(dc["kind"], "PodList");
    assert_eq!(dc["items"].as_array().unwrap().len(), 1);
    let left = c.get("/api/v1/namespaces/prod/pods").await.json();
    assert_eq!(left["items"].as_array().unwrap().len(), 1);
    let dry = c
        .request(
            Method::DELETE,
            "/api/v1/namespaces/prod/pods/payments?dryRun=All",
            Some(ADMIN_TOKEN),
            &[],
            None,
        )
        .await;
    assert_eq!(dry.status, 200);
    assert_eq!(
        c.get("/api/v1/namespaces/prod/pods/payments").await.status,
        200
    );
    let log = c.get("/api/v1/namespaces/prod/pods/payments/log").await;
    assert_eq!(log.status, 200);
    assert!(String::from_utf8_lossy(&log.body).contains("payments"));
}

#[tokio::test]
async fn impersonation_headers_and_recording() {
    let c = start().await;
    let as_bot = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(PROXY_TOKEN),
            &[
                ("impersonate-user", "readonly-bot"),
                ("impersonate-group", "devs"),
                ("impersonate-group", "ops"),
            ],
            None,
        )
        .await;
    assert_eq!(as_bot.status, 200);
    let denied = c
        .request(
            Method::GET,
            "/api/v1/namespaces/kube-system/pods",
            Some(PROXY_TOKEN),
            &[("impersonate-user", "readonly-bot")],
            None,
        )
        .await;
    assert_status(
        &denied.json(),
        403,
        "Forbidden",
        r#"pods is forbidden: User "readonly-bot" cannot list resource "pods" in API group "" in the namespace "kube-system""#,
    );
    // The proxy may impersonate users and groups only.
    let uid = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(PROXY_TOKEN),
            &[
                ("impersonate-user", "readonly-bot"),
                ("impersonate-uid", "1234"),
            ],
            None,
        )
        .await;
    assert_status(
        &uid.json(),
        403,
        "Forbidden",
        r#"uids.authentication.k8s.io "1234" is forbidden: User "gatehouse-proxy" cannot impersonate resource "uids" in API group "authentication.k8s.io" at the cluster scope"#,
    );
    let extra = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(PROXY_TOKEN),
            &[
                ("impersonate-user", "readonly-bot"),
                ("impersonate-extra-scopes", "view"),
            ],
            None,
        )
        .await;
    assert_eq!(extra.status, 403);
    let no_user = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(PROXY_TOKEN),
            &[("impersonate-group", "system:masters")],
            None,
        )
        .await;
    assert_eq!(no_user.status, 500);
    let bob = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(BOB_TOKEN),
            &[("impersonate-user", "sandbox-admin")],
            None,
        )
        .await;
    assert_status(
        &bob.json(),
        403,
        "Forbidden",
        r#"users "sandbox-admin" is forbidden: User "bob" cannot impersonate resource "users" in API group "" at the cluster scope"#,
    );
    // The proxy itself has no access to resources.
    let direct = c
        .request(
            Method::GET,
            "/api/v1/namespaces/apps/pods",
            Some(PROXY_TOKEN),
            &[],
            None,
        )
        .await;
    assert_status(
        &direct.json(),
        403,
        "Forbidden",
        r#"pods is forbidden: User "gatehouse-proxy" cannot list resource "pods" in API group "" in the namespace "apps""#,
    );

    let records = c.sandbox.requests();
    assert_eq!(records.len(), 7);
    let first = &records[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/api/v1/namespaces/apps/pods");
    assert_eq!(first.authenticated_user.as_deref(), Some("gatehouse-proxy"));
    assert_eq!(first.impersonated_user.as_deref(), Some("readonly-bot"));
    assert_eq!(first.impersonated_groups, ["devs", "ops"]);
    assert_eq!(first.effective_user.as_deref(), Some("readonly-bot"));
    assert_eq!(first.status, 200);
    assert!(first.header_names.contains(&"authorization".to_owned()));
    assert!(first.header_names.contains(&"impersonate-group".to_owned()));
    assert!(
        format!("{records:?}").find(PROXY_TOKEN).is_none(),
        "no header values are kept"
    );
    assert_eq!(records[1].status, 403);
    assert_eq!(
        records[5].effective_user, None,
        "bob was refused before RBAC ran for anyone"
    );
    assert_eq!(
        records[6].effective_user.as_deref(),
        Some("gatehouse-proxy")
    );
}

#[tokio::test]
async fn malformed_input_gets_status_errors_not_crashes() {
    let c = start().await;
    let merge = "application/merge-patch+json";
    let json_patch = "application/json-patch+json";
    let smp = "application/strategic-merge-patch+json";
    let cases: &[(Method, &str, &str, &str)] = &[
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            merge,
            "[1]",
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            merge,
            r#"{"metadata":7}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            merge,
            r#"{"kind":"Secret"}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            merge,
            r#"{"metadata":{"name":"renamed"}}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            merge,
            r#"{"spec":{"containers":"nope"}}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            json_patch,
            r#"[{"op":"replace","path":"","value":5}]"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            json_patch,
            r#"{"op":"add"}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            json_patch,
            r#"[{"op":"remove","path":"/nope/deeper"}]"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            smp,
            r#"{"spec":{"containers":[{"image":"no-key"}]}}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            smp,
            r#"{"spec":{"$setElementOrder/containers":5}}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            smp,
            r#"{"spec":{"$retainKeys":"x"}}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            smp,
            r#"{"$patch":"explode"}"#,
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            smp,
            "\"str\"",
        ),
        (
            Method::PATCH,
            "/api/v1/namespaces/apps/pods/web",
            "text/plain",
            "x",
        ),
        (Method::PATCH, "/api/v1/namespaces/apps/pods", merge, "{}"),
        (
            Method::PUT,
            "/api/v1/namespaces/apps/pods/web",
            "application/json",
            r#"{"metadata":{"name":"web"},"spec":[]}"#,
        ),
        (
            Method::PUT,
            "/api/v1/namespaces/apps/pods/web/status",
            "application/json",
            r#"{"metadata":{"name":"web"},"status":"weird"}"#,
        ),
        (
            Method::PUT,
            "/api/v1/namespaces/apps/configmaps/nope",
            "application/json",
            r#"{"metadata":{"name":"nope"}}"#,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/pods",
            "application/json",
            r#"{"metadata":{"name":"p"},"spec":{"containers":[5, {"name":7}]}}"#,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/services",
            "application/json",
            r#"{"metadata":{"name":"s"},"spec":{"ports":[{"port":"x"}, 3]}}"#,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/events",
            "application/json",
            r#"{"metadata":{"name":"e"},"involvedObject":"x"}"#,
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/secrets",
            "application/json",
            r#"{"metadata":{"name":"s"},"data":"x","stringData":{"a":1}}"#,
        ),
        (
            Method::POST,
            "/api/v1/namespaces",
            "application/yaml",
            "metadata: [unclosed",
        ),
        (
            Method::POST,
            "/api/v1/namespaces",
            "application/vnd.kubernetes.protobuf",
            "k8s\0\u{1}garbage",
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/configmaps",
            "application/json",
            "",
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/configmaps?fieldValidation=Maybe",
            "application/json",
            "{}",
        ),
        (
            Method::POST,
            "/api/v1/namespaces/apps/configmaps?dryRun=Some",
            "application/json",
            "{}",
        ),
        (
            Method::DELETE,
            "/api/v1/namespaces/apps/pods/web",
            "application/json",
            "{not json",
        ),
        (Method::DELETE, "/api/v1/namespaces", "application/json", ""),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods?limit=abc",
            "",
            "",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods?watch=true&timeoutSeconds=-1",
            "",
            "",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods?watch=true&resourceVersion=abc",
            "",
            "",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods?includeObject=All",
            "",
            "",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods?fieldSelector=metadata.name%3D%C3%A9%5C",
            "",
            "",
        ),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods/web/log?container=nope",
            "",
            "",
        ),
        (Method::GET, "/api/v1/namespaces/apps/pods/web/exec", "", ""),
        (
            Method::GET,
            "/api/v1/namespaces/apps/pods/web/status/extra",
            "",
            "",
        ),
        (Method::GET, "/api/v1/pods/web", "", ""),
        (Method::GET, "/api/v1/namespaces/apps/namespaces", "", ""),
        (Method::OPTIONS, "/api/v1/pods", "", ""),
        (Method::POST, "/version", "application/json", "{}"),
    ];
    for (method, path, content_type, body) in cases {
        let headers: Vec<(&str, &str)> = if content_type.is_empty() {
            vec![]
        } else {
            vec![("content-type", *content_type)]
        };
        let r = c
            .request(
                method.clone(),
                path,
                Some(ADMIN_TOKEN),
                &headers,
                (!body.is_empty() || *method != Method::GET).then_some(*body),
            )
            .await;
        assert!(
            (400..500).contains(&r.status),
            "{method} {path} {body} -> {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let status = r.json();
        assert_eq!(status["kind"], "Status", "{method} {path}");
        assert_eq!(status["code"], r.status);
    }
    // Still serving, and the pod is intact.
    let pod = c.get("/api/v1/namespaces/apps/pods/web").await.json();
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.27");
}
