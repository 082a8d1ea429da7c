//! The auditor API over a real ledger (kept open by a writer, as the evidence service keeps
//! it), a real `nats-server` and a real OIDC issuer: what each call answers, that proofs and
//! bundles verify offline, and that every call, refused or not, is one `audit.accessed` event
//! that never holds the token.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use gatehouse::nats_server::NatsServer;
use gatehouse_bus::{Bus, BusConfig};
use gatehouse_evidence::Ledger;
use gatehouse_evidence::api::{ACCESS_ID_HEADER, AUDIT_UNAVAILABLE, AuditorApi, AuditorApiConfig};
use gatehouse_evidence::entry::{Entry, entry_hash};
use gatehouse_evidence::index::Field;
use gatehouse_evidence::store::{NewEntry, Query};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use gatehouse_proof::merkle::{leaf_of_entry_hash, verify_consistency, verify_inclusion};
use gatehouse_proxy::http_client::{HttpsClient, client_tls, https_client};
use gatehouse_sandbox::issuer::{Issuer, IssuerKeys};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

type Result<T = ()> = anyhow::Result<T>;

const DEADLINE: Duration = Duration::from_secs(30);
const AUDIENCE: &str = "gatehouse-evidence";
const ORIGIN: &str = "gatehouse.test/ledger";
const AUDITOR: &str = "alice@example.com";
/// 2026-01-10T10:00:00Z: event `i` of the ledger is `i` seconds later.
const T0: i64 = 1_768_039_200;

const POLICY_YAML: &str = r#"
rules:
  - id: deployer-apps
    action: allow
    identities: [ci-deployer]
    verbs: [get, list, watch, create, update, patch, delete, exec]
    resources: ["*"]
    namespaces: [apps]
  - id: deployer-prod-read
    action: allow
    identities: [ci-deployer]
    verbs: [get, list]
    resources: ["*"]
    namespaces: [prod]
  - id: readers-no-secrets
    action: deny
    identities: [readonly-bot]
    verbs: ["*"]
    resources: [secrets]
  - id: readers
    action: allow
    identities: [readonly-bot]
    verbs: [get, list, watch]
    resources: ["*"]
"#;

// ----- events, shaped as the proxy publishes them -----

fn time(second: i64) -> String {
    gatehouse_events::envelope::format_rfc3339(
        time::OffsetDateTime::from_unix_timestamp(T0 + second).expect("a valid time"),
    )
}

fn event(kind: &str, second: i64, subject: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": ulid::Ulid::new().to_string(),
        "source": "gatehouse/proxy/test",
        "type": format!("dev.gatehouse.{kind}.v1"),
        "time": time(second),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn received(
    second: i64,
    id: &str,
    principal: &str,
    owner: &str,
    request: Value,
    rule: &str,
) -> Value {
    let action = if rule.contains("no-") {
        "deny"
    } else {
        "allow"
    };
    event(
        "request.received",
        second,
        id,
        json!({
            "request_id": id,
            "identity": {
                "issuer": "https://issuer.test", "subject": format!("sub-{principal}"),
                "principal": principal, "registered": true, "owner": owner, "team": "platform",
                "purpose": null, "groups": [], "attributes": {},
            },
            "source": { "ip": "10.0.0.9", "port": 40000, "forwarded_for": [] },
            "user_agent": "kubectl/v1.30",
            "method": "GET",
            "path": request["path"],
            "query": null,
            "request": request,
            "decision": { "action": action, "rule": rule, "reason": format!("{action} by {rule}") },
            "body": null,
            "record": "metadata",
            "content": null,
        }),
    )
}

fn info(verb: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Value {
    json!({
        "is_resource_request": true,
        "path": format!("/api/v1/namespaces/{ns}/{resource}/{name}"),
        "verb": verb, "api_prefix": "api", "api_group": "", "api_version": "v1",
        "namespace": ns, "resource": resource, "subresource": sub, "name": name,
    })
}

fn forwarded(second: i64, id: &str) -> Value {
    event(
        "request.forwarded",
        second,
        id,
        json!({ "request_id": id, "upstream": "https://10.0.0.1:6443",
                "impersonated_user": "x", "impersonated_groups": [] }),
    )
}

fn completed(second: i64, id: &str, status: u16) -> Value {
    event(
        "response.completed",
        second,
        id,
        json!({ "request_id": id, "status": status, "outcome": "complete",
                "body": { "bytes": 2, "blake3": "00" }, "duration_ms": 3.0,
                "masked_fields": 0, "content": null }),
    )
}

fn denied(second: i64, id: &str) -> Value {
    event(
        "request.denied",
        second,
        id,
        json!({ "request_id": id, "reason": "policy", "status": 403,
                "message": "readonly-bot may not list secrets", "rule": "readers-no-secrets" }),
    )
}

fn chunk(second: i64, session: &str, seq: u64, offset: u64, text: &str) -> Value {
    event(
        "session.data",
        second,
        session,
        json!({
            "session_id": session, "seq": seq, "at_ms": seq as f64 * 250.0, "channel": "stdout",
            "port": null, "offset": offset,
            "data": base64::engine::general_purpose::STANDARD.encode(text),
            "masked": 0, "resize": null,
        }),
    )
}

const SESSION: &str = "01JSESSION0000000000000001";

/// The first checkpoint's entries: two plain requests, a denial and an exec session.
fn first_events() -> Vec<Value> {
    vec![
        received(
            0,
            "R1",
            "ci-deployer",
            "alice@example.com",
            info("get", "pods", "", "apps", "web"),
            "deployer-apps",
        ),
        forwarded(1, "R1"),
        completed(2, "R1", 200),
        received(
            3,
            "R2",
            "readonly-bot",
            "bob@example.com",
            info("list", "secrets", "", "prod", ""),
            "readers-no-secrets",
        ),
        denied(4, "R2"),
        received(
            5,
            "R3",
            "ci-deployer",
            "alice@example.com",
            info("exec", "pods", "exec", "apps", "web"),
            "deployer-apps",
        ),
        forwarded(6, "R3"),
        event(
            "session.started",
            7,
            SESSION,
            json!({
                "session_id": SESSION, "request_id": "R3", "kind": "exec", "transport": "websocket",
                "protocol": "v5.channel.k8s.io", "principal": "ci-deployer", "namespace": "apps",
                "pod": "web", "container": null, "command": ["sh", "-c", "echo hello"], "tty": false,
                "stdin": false, "ports": [],
            }),
        ),
        chunk(8, SESSION, 0, 0, "hello from web\r\n"),
        chunk(9, SESSION, 1, 16, "bye\r\n"),
        event(
            "session.ended",
            10,
            SESSION,
            json!({
                "session_id": SESSION, "request_id": "R3", "end": "closed", "exit_code": 0,
                "message": null, "duration_ms": 500.0, "chunks": 2, "bytes_from_client": 0,
                "bytes_from_upstream": 21,
            }),
        ),
        completed(11, "R3", 101),
    ]
}

/// What comes after the first checkpoint.
fn later_events() -> Vec<Value> {
    vec![
        received(
            12,
            "R4",
            "readonly-bot",
            "bob@example.com",
            info("get", "pods", "", "prod", "api"),
            "readers",
        ),
        forwarded(13, "R4"),
        completed(14, "R4", 200),
    ]
}

fn append(ledger: &mut Ledger, events: &[Value]) -> Result {
    let start = ledger.head().next_index;
    let entries: Vec<NewEntry> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let second = start as i64 + i as i64;
            Ok(NewEntry {
                stream_sequence: ledger.head().last_sequence + 1 + i as u64,
                received_at: (T0 + second) * 1_000_000_000,
                event: serde_json::to_vec(e)?,
            })
        })
        .collect::<Result<_>>()?;
    ledger.append(&entries, &[])?;
    Ok(())
}

/// A 32-byte hash from its hex in an answer.
fn hash32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap_or_default())
        .ok()
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("{v} is not a 32-byte hash in hex"))
}

fn signer() -> Result<NoteSigner> {
    Ok(NoteSigner::from_seed(ORIGIN, [5; 32])?)
}

// ----- the test bed -----

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
    fn access_id(&self) -> String {
        self.header(ACCESS_ID_HEADER).to_owned()
    }
}

struct Bed {
    dir: tempfile::TempDir,
    nats: NatsServer,
    bus: Bus,
    issuer: Issuer,
    /// Open for the whole test, as the evidence service holds it.
    writer: Ledger,
    verifier: NoteVerifier,
    addr: SocketAddr,
    scheme: &'static str,
    client: HttpsClient<Full<Bytes>>,
    shutdown: CancellationToken,
    /// Every call made: access id, status.
    calls: Mutex<Vec<(String, u16)>>,
    /// Every token minted, to look for in the stream.
    tokens: Mutex<Vec<String>>,
}

impl Bed {
    async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// `tls`: the CA file the client trusts and the (cert, key) files the API serves.
    async fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let nats = NatsServer::start(&dir.path().join("nats")).await?;
        let bus_config = BusConfig::new(nats.url());
        let bus = Bus::connect(&bus_config, "auditor-api-test").await?;
        bus.ensure_stream(&bus_config.stream).await?;
        let issuer = Issuer::start(
            IssuerKeys::generate()?,
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        )
        .await?;

        let data_dir = dir.path().join("evidence");
        let mut writer = Ledger::open(&data_dir)?;
        append(&mut writer, &first_events())?;
        writer.issue_checkpoint(&signer()?, ORIGIN)?;

        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, POLICY_YAML)?;
        let tls_yaml = match &tls {
            Some((_, cert, key)) => format!(
                "tls: {{cert_file: {}, key_file: {}}}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config: AuditorApiConfig = yaml_serde::from_str(&format!(
            "listen: 127.0.0.1:0\n{tls_yaml}issuers:\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n\
             auditor_groups: [auditors]\npolicy: {}\n",
            issuer.url(),
            policy.display()
        ))?;
        let shutdown = CancellationToken::new();
        let key_file = dir.path().join("checkpoint.key");
        std::fs::write(&key_file, signer()?.to_skey())?;
        let api = AuditorApi::start(&config, data_dir, bus.clone(), "test-0", shutdown.clone())
            .await
            .map_err(anyhow::Error::msg)?
            .with_checkpoint_key(key_file);
        let addr = api.local_addr();
        tokio::spawn(api.run());
        let client = https_client(
            client_tls(tls.as_ref().map(|(ca, _, _)| ca.as_path()), false)?,
            Duration::from_secs(5),
        );
        Ok(Self {
            dir,
            nats,
            bus,
            issuer,
            writer,
            verifier: signer()?.verifier(),
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            client,
            shutdown,
            calls: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("evidence")
    }

    fn token(&self, subject: &str, groups: &[&str]) -> Result<String> {
        let token = self
            .issuer
            .mint(subject, AUDIENCE, groups, Duration::from_secs(600))?;
        self.tokens.lock().expect("lock").push(token.clone());
        Ok(token)
    }

    fn auditor(&self) -> Result<String> {
        self.token(AUDITOR, &["auditors"])
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        let mut request = http::Request::get(format!("{}://{}{path}", self.scheme, self.addr));
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new()))?;
        let response = tokio::time::timeout(DEADLINE, self.client.request(request)).await??;
        let status = response.status();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
            .await??
            .to_bytes();
        let reply = Reply {
            status,
            headers,
            body,
        };
        self.calls
            .lock()
            .expect("lock")
            .push((reply.access_id(), status.as_u16()));
        Ok(reply)
    }

    /// The `audit.accessed` events in the stream, by access id (each id at most once, checked),
    /// after checking that no message holds a token.
    async fn audit_trail(&self) -> Result<BTreeMap<String, Value>> {
        let messages = tokio::time::timeout(DEADLINE, self.bus.read_all()).await??;
        let tokens = self.tokens.lock().expect("lock").clone();
        let mut out = BTreeMap::new();
        for (_, payload) in messages {
            let text = String::from_utf8_lossy(&payload);
            for token in &tokens {
                assert!(
                    !text.contains(token.as_str()),
                    "a token reached the stream: {text}"
                );
                // Not even its signature part.
                let signature = token.rsplit('.').next().unwrap_or(token);
                assert!(
                    !text.contains(signature),
                    "a token's signature reached the stream"
                );
            }
            let event: Value = serde_json::from_slice(&payload)?;
            if event["type"] != "dev.gatehouse.audit.accessed.v1" {
                continue;
            }
            assert_eq!(event["source"], "gatehouse/evidence/test-0");
            assert_eq!(event["subject"], event["data"]["access_id"]);
            let id = event["data"]["access_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(ulid::Ulid::from_string(&id).is_ok(), "{id}");
            assert!(
                out.insert(id.clone(), event["data"].clone()).is_none(),
                "{id} twice"
            );
        }
        Ok(out)
    }

    /// Every call made so far is exactly one audit event with its status, and there are no
    /// others.
    async fn check_every_call_audited(&self) -> Result<BTreeMap<String, Value>> {
        let trail = self.audit_trail().await?;
        let calls = self.calls.lock().expect("lock").clone();
        assert_eq!(trail.len(), calls.len(), "one audit event per call");
        for (id, status) in calls {
            let data = trail
                .get(&id)
                .unwrap_or_else(|| panic!("no audit event for call {id}"));
            assert_eq!(data["status"], status, "{data}");
        }
        Ok(trail)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ----- tests -----

#[test]
fn a_read_only_open_sees_what_a_still_open_writer_appended() -> Result {
    let dir = tempfile::tempdir()?;
    let mut writer = Ledger::open(dir.path())?;
    append(&mut writer, &first_events()[..3])?;

    let reader = Ledger::open_read_only(dir.path())?;
    assert_eq!(reader.head(), writer.head());
    assert_eq!(reader.tree_size(), 3);
    assert_eq!(reader.root(3)?, writer.root(3)?);
    let found = reader.search(&Query {
        fields: vec![(Field::Request, "R1".into())],
        limit: 10,
        ..Query::default()
    })?;
    assert_eq!(found.len(), 3);
    drop(reader);

    // More appends and a checkpoint while the writer stays open: a fresh read-only open sees
    // them (RocksDB replays the synced write-ahead log), with the indexes and the tree.
    append(&mut writer, &first_events()[3..])?;
    writer.issue_checkpoint(&signer()?, ORIGIN)?;
    let reader = Ledger::open_read_only(dir.path())?;
    assert_eq!(reader.head().next_index, 12);
    assert_eq!(reader.tree_size(), 12);
    assert_eq!(reader.root(12)?, writer.root(12)?);
    let (size, note) = reader.latest_checkpoint()?.expect("the checkpoint");
    assert_eq!(size, 12);
    assert_eq!(signer()?.verifier().open(&note)?.root, writer.root(12)?);
    let found = reader.search(&Query {
        fields: vec![(Field::Session, SESSION.into())],
        limit: 10,
        ..Query::default()
    })?;
    assert_eq!(found.len(), 4);
    assert_eq!(
        reader.entry(11)?.map(|e| e.event),
        writer.entry(11)?.map(|e| e.event)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_by_identity_namespace_type_and_time_and_pages() -> Result {
    let bed = Bed::start().await?;
    let token = bed.auditor()?;
    let indexes = |reply: &Reply| -> Result<Vec<u64>> {
        Ok(reply.json()?["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e["index"].as_u64())
            .collect())
    };

    let reply = bed
        .get("/v1/events?principal=ci-deployer", Some(&token))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(indexes(&reply)?, [0, 5, 7]);
    let body = reply.json()?;
    assert_eq!(body["next_after"], Value::Null);
    let first = &body["events"][0];
    assert_eq!(first["stream_sequence"], 1);
    assert_eq!(first["received_at"], T0 * 1_000_000_000);
    // The event itself, not a string holding it.
    assert_eq!(
        first["event"]["data"]["identity"]["principal"],
        "ci-deployer"
    );
    assert_eq!(first["event"]["subject"], "R1");

    let reply = bed.get("/v1/events?namespace=prod", Some(&token)).await?;
    assert_eq!(indexes(&reply)?, [3]);
    let reply = bed
        .get("/v1/events?type=request.denied", Some(&token))
        .await?;
    assert_eq!(indexes(&reply)?, [4]);
    let reply = bed
        .get(
            "/v1/events?principal=ci-deployer&type=dev.gatehouse.session.started.v1",
            Some(&token),
        )
        .await?;
    assert_eq!(indexes(&reply)?, [7]);
    let reply = bed
        .get(&format!("/v1/events?session_id={SESSION}"), Some(&token))
        .await?;
    assert_eq!(indexes(&reply)?, [7, 8, 9, 10]);
    let reply = bed
        .get(
            "/v1/events?owner=bob@example.com&decision=deny",
            Some(&token),
        )
        .await?;
    assert_eq!(indexes(&reply)?, [3]);
    let reply = bed
        .get(
            &format!("/v1/events?from={}&to={}", time(3), time(5)),
            Some(&token),
        )
        .await?;
    assert_eq!(indexes(&reply)?, [3, 4]);

    // Pages.
    let reply = bed
        .get("/v1/events?principal=ci-deployer&limit=2", Some(&token))
        .await?;
    assert_eq!(indexes(&reply)?, [0, 5]);
    assert_eq!(reply.json()?["next_after"], 5);
    let reply = bed
        .get(
            "/v1/events?principal=ci-deployer&limit=2&after=5",
            Some(&token),
        )
        .await?;
    assert_eq!(indexes(&reply)?, [7]);
    assert_eq!(reply.json()?["next_after"], Value::Null);

    // Mistakes are refused rather than widening the search.
    for bad in [
        "/v1/events?principl=ci-deployer",
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?principal=",
        "/v1/events?principal=a&principal=b",
        // NUL would end the index key early: ci-deployer\0x would find all of ci-deployer.
        "/v1/events?principal=ci-deployer%00x",
        "/v1/events?principal=ci-deployer%0Ax",
        "/v1/events?from=yesterday",
        "/v1/events?from=2026-01-11&to=2026-01-10",
    ] {
        let reply = bed.get(bad, Some(&token)).await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.text()
        );
        assert!(reply.json()?["error"].is_string());
    }

    let trail = bed.check_every_call_audited().await?;
    let search = trail
        .values()
        .find(|d| {
            d["parameters"]["principal"] == "ci-deployer"
                && d["parameters"]["limit"] == "2"
                && d["parameters"].get("after").is_none()
        })
        .expect("the first page's event");
    assert_eq!(search["auditor"], AUDITOR);
    assert_eq!(search["action"], "search");
    assert_eq!(search["events"], 2);
    let typo = trail
        .values()
        .find(|d| d["parameters"]["principl"] == "ci-deployer")
        .expect("the refused search's event");
    assert_eq!(typo["status"], 400);
    assert_eq!(typo["events"], Value::Null);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_comes_with_an_inclusion_proof_that_verifies_against_the_signed_checkpoint()
-> Result {
    let mut bed = Bed::start().await?;
    let token = bed.auditor()?;
    for index in [0u64, 5, 11] {
        let reply = bed
            .get(&format!("/v1/events/{index}"), Some(&token))
            .await?;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = reply.json()?;
        let checkpoint: Checkpoint = bed
            .verifier
            .open(body["checkpoint"].as_str().expect("the signed checkpoint"))?;
        assert_eq!(checkpoint.size, 12);
        assert_eq!(body["size"], 12);
        assert_eq!(body["root"], hex::encode(checkpoint.root));
        // Rebuild the entry from the answer, as an independent verifier would.
        let entry = Entry {
            index: body["index"].as_u64().expect("index"),
            stream_sequence: body["stream_sequence"].as_u64().expect("sequence"),
            received_at: body["received_at"].as_i64().expect("received_at"),
            previous_hash: hash32(&body["previous_hash"]),
            event: base64::engine::general_purpose::STANDARD
                .decode(body["event_base64"].as_str().expect("event bytes"))?,
        };
        assert_eq!(entry.index, index);
        let encoding = entry.encode()?;
        assert_eq!(hex::encode(entry_hash(&encoding)), body["entry_hash"]);
        // A new ledger is format v2: the leaf is over the entry hash.
        assert_eq!(body["ledger_format"], "gatehouse.ledger.v2");
        let leaf = leaf_of_entry_hash(&entry_hash(&encoding));
        assert_eq!(hex::encode(leaf), body["leaf_hash"]);
        let proof: Vec<[u8; 32]> = body["inclusion"]
            .as_array()
            .expect("proof")
            .iter()
            .map(hash32)
            .collect();
        assert!(verify_inclusion(
            &leaf,
            index,
            checkpoint.size,
            &proof,
            &checkpoint.root
        ));
        let event: Value = serde_json::from_slice(&entry.event)?;
        assert_eq!(body["event"], event);
    }

    // Against an older, smaller tree on request: no checkpoint was signed at that size.
    let reply = bed.get("/v1/events/2?size=6", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json()?;
    assert_eq!(body["size"], 6);
    assert_eq!(body["checkpoint"], Value::Null);

    // Retention prunes entry 0: the event goes, its hashes and its proof stay.
    let now = (T0 + 1) * 1_000_000_000 + 86_400 * 1_000_000_000;
    assert_eq!(bed.writer.prune(now, 1)?.pruned, 1);
    let reply = bed.get("/v1/events/0", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json()?;
    assert_eq!(body["event"], Value::Null);
    assert_eq!(body["event_base64"], Value::Null);
    assert_eq!(body["pruned_at"], now);
    let checkpoint = bed
        .verifier
        .open(body["checkpoint"].as_str().expect("the signed checkpoint"))?;
    let proof: Vec<[u8; 32]> = body["inclusion"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hash32)
        .collect();
    assert!(verify_inclusion(
        &hash32(&body["leaf_hash"]),
        0,
        checkpoint.size,
        &proof,
        &checkpoint.root
    ));
    let reply = bed
        .get("/v1/events?principal=ci-deployer", Some(&token))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()?["events"][0]["index"],
        5,
        "the pruned event is not found"
    );

    let missing = bed.get("/v1/events/12", Some(&token)).await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text());
    let beyond = bed.get("/v1/events/2?size=99", Some(&token)).await?;
    assert_eq!(beyond.status, StatusCode::BAD_REQUEST);
    let bad = bed.get("/v1/events/abc", Some(&token)).await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let trail = bed.check_every_call_audited().await?;
    let five = trail
        .values()
        .find(|d| d["parameters"]["index"] == "5")
        .expect("event 5's access");
    assert_eq!(five["action"], "event");
    assert_eq!(five["events"], 1);
    assert_eq!(trail[&missing.access_id()]["status"], 404);
    assert_eq!(trail[&bad.access_id()]["parameters"]["index"], "abc");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_checkpoint_and_a_consistency_proof_verify_while_the_ledger_grows() -> Result {
    let mut bed = Bed::start().await?;
    let token = bed.auditor()?;
    let reply = bed.get("/v1/checkpoint", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
    let old = bed.verifier.open(&reply.text())?;
    assert_eq!((old.origin.as_str(), old.size), (ORIGIN, 12));

    // The evidence service appends and signs again; the API, opening read-only per call,
    // sees it at once.
    append(&mut bed.writer, &later_events())?;
    bed.writer.issue_checkpoint(&signer()?, ORIGIN)?;
    let reply = bed.get("/v1/checkpoint", Some(&token)).await?;
    let new = bed.verifier.open(&reply.text())?;
    assert_eq!(new.size, 15);
    let reply = bed.get("/v1/events/13", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()?["event"]["subject"], "R4");

    let reply = bed.get("/v1/consistency?old=12", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json()?;
    assert_eq!(
        (body["old"].as_u64(), body["new"].as_u64()),
        (Some(12), Some(15))
    );
    assert_eq!(body["old_root"], hex::encode(old.root));
    assert_eq!(body["new_root"], hex::encode(new.root));
    assert_eq!(
        bed.verifier
            .open(body["checkpoint"].as_str().expect("note"))?,
        new
    );
    let proof: Vec<[u8; 32]> = body["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hash32)
        .collect();
    assert!(verify_consistency(12, 15, &old.root, &new.root, &proof));
    // Roots the auditor holds, not the ones the API sent.
    assert!(!verify_consistency(12, 15, &new.root, &new.root, &proof));

    let reply = bed
        .get("/v1/consistency?old=3&new=12", Some(&token))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        bed.verifier
            .open(reply.json()?["checkpoint"].as_str().expect("note"))?,
        old
    );
    // Past checkpoints, paged, oldest first, as stored: what an auditor saves for
    // `gatehouse verify --trusted`.
    let reply = bed.get("/v1/checkpoints?limit=1", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let page = reply.json()?;
    assert_eq!(page["checkpoints"][0]["size"], 12);
    assert_eq!(
        bed.verifier
            .open(page["checkpoints"][0]["note"].as_str().expect("note"))?,
        old
    );
    assert_eq!(page["next_after"], 12);
    let reply = bed.get("/v1/checkpoints?after=12", Some(&token)).await?;
    let page = reply.json()?;
    assert_eq!(page["checkpoints"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        bed.verifier
            .open(page["checkpoints"][0]["note"].as_str().expect("note"))?,
        new
    );
    assert_eq!(page["next_after"], serde_json::Value::Null);
    for bad in [
        "/v1/consistency?old=13&new=12",
        "/v1/consistency?old=1&new=16",
        "/v1/consistency",
        "/v1/checkpoint?size=3",
        "/v1/checkpoints?limit=0",
        "/v1/checkpoints?after=x",
    ] {
        let reply = bed.get(bad, Some(&token)).await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.text()
        );
    }

    let trail = bed.check_every_call_audited().await?;
    let consistency = trail
        .values()
        .find(|d| d["action"] == "consistency" && d["status"] == 200)
        .expect("a consistency access");
    assert_eq!(consistency["parameters"]["old"], "12");
    assert!(
        trail
            .values()
            .any(|d| d["action"] == "checkpoint" && d["status"] == 200)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_replays_as_asciicast() -> Result {
    let bed = Bed::start().await?;
    let token = bed.auditor()?;
    let reply = bed
        .get(&format!("/v1/sessions/{SESSION}/replay"), Some(&token))
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/x-asciicast");
    let text = reply.text();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("a header line"))?;
    assert_eq!(header["version"], 2);
    assert!(
        header["title"]
            .as_str()
            .unwrap_or_default()
            .starts_with("ci-deployer apps/web"),
        "{header}"
    );
    let frames: Vec<Value> = lines
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(frames[0], json!([0.0, "o", "hello from web\r\n"]));
    assert_eq!(frames.len(), 2);

    let unknown = bed
        .get("/v1/sessions/01JNOSUCHSESSION/replay", Some(&token))
        .await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    let bad = bed.get("/v1/sessions/a.b/replay", Some(&token)).await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let trail = bed.check_every_call_audited().await?;
    let replay = &trail[&reply.access_id()];
    assert_eq!(replay["action"], "replay");
    assert_eq!(replay["parameters"]["session_id"], SESSION);
    assert_eq!(replay["events"], 4);
    assert_eq!(trail[&bad.access_id()]["parameters"]["session_id"], "a.b");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_downloads_and_verifies_offline() -> Result {
    let mut bed = Bed::start().await?;
    let token = bed.auditor()?;
    // Entries past the latest checkpoint are not in a bundle: nothing could prove them.
    append(&mut bed.writer, &later_events())?;

    let reply = bed.get("/v1/bundle", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/gzip");
    assert_eq!(
        reply.header("content-disposition"),
        format!(
            "attachment; filename=\"gatehouse-evidence-{}.tar.gz\"",
            reply.access_id()
        )
    );
    assert_eq!(reply.header("content-length"), reply.body.len().to_string());
    let all = bed.dir.path().join("all.tar.gz");
    std::fs::write(&all, &reply.body)?;
    let verified = gatehouse_proof::bundle::verify(&all, Some(&bed.verifier), |_| {})
        .map_err(|f| anyhow::anyhow!("{f:?}"))?;
    assert_eq!(verified.manifest.counts.events, 12);
    assert_eq!(verified.manifest.counts.sessions, 1);
    assert!(verified.manifest.contiguous);

    let reply = bed
        .get(
            &format!("/v1/bundle?principal=readonly-bot&from={}", time(0)),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mine = bed.dir.path().join("mine.tar.gz");
    std::fs::write(&mine, &reply.body)?;
    let verified = gatehouse_proof::bundle::verify(&mine, Some(&bed.verifier), |_| {})
        .map_err(|f| anyhow::anyhow!("{f:?}"))?;
    assert_eq!(verified.manifest.counts.events, 2, "R2 received and denied");
    assert_eq!(verified.manifest.filters["principal"], "readonly-bot");

    let bad = bed.get("/v1/bundle?verb=get", Some(&token)).await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Since a checkpoint the auditor holds: the bundle extends it (and one never signed is
    // refused).
    let held = bed.get("/v1/checkpoint", Some(&token)).await?.text();
    bed.writer.issue_checkpoint(&signer()?, ORIGIN)?;
    let extended = bed.get("/v1/bundle?since=12", Some(&token)).await?;
    assert_eq!(extended.status, StatusCode::OK, "{}", extended.text());
    let since = bed.dir.path().join("since.tar.gz");
    std::fs::write(&since, &extended.body)?;
    let verified = gatehouse_proof::bundle::verify_with(
        &since,
        gatehouse_proof::bundle::Options {
            key: Some(&bed.verifier),
            trusted: Some(&held),
            ..Default::default()
        },
        |_| {},
    )
    .map_err(|f| anyhow::anyhow!("{f:?}"))?;
    assert_eq!(verified.trusted.map(|t| t.size), Some(12));
    let never = bed.get("/v1/bundle?since=5", Some(&token)).await?;
    assert_eq!(never.status, StatusCode::BAD_REQUEST, "{}", never.text());

    // Nothing is left behind on disk.
    let scratch: Vec<_> = std::fs::read_dir(bed.data_dir().join("auditor-api-tmp"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");

    let trail = bed.check_every_call_audited().await?;
    let filtered = &trail[&reply.access_id()];
    assert_eq!(filtered["action"], "bundle");
    assert_eq!(filtered["events"], 2);
    assert_eq!(filtered["parameters"]["principal"], "readonly-bot");
    assert_eq!(filtered["parameters"]["from"], time(0));
    assert_eq!(trail[&extended.access_id()]["parameters"]["since"], "12");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_review_comes_as_json_csv_and_html() -> Result {
    let bed = Bed::start().await?;
    let token = bed.auditor()?;
    let reply = bed.get("/v1/reports/access-review", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/json");
    let review = reply.json()?;
    assert_eq!(review["requests"], 3);
    let principals: Vec<&str> = review["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .filter_map(|i| i["principal"].as_str())
        .collect();
    assert_eq!(principals, ["ci-deployer", "readonly-bot"]);
    let deployer = &review["identities"][0];
    assert_eq!(deployer["owner"], "alice@example.com");
    // With the configured policy: deployer-prod-read decided none of its requests.
    let unused: Vec<&str> = deployer["unused_grants"]
        .as_array()
        .expect("unused grants listed")
        .iter()
        .filter_map(|g| g["rule"].as_str())
        .collect();
    assert!(unused.contains(&"deployer-prod-read"), "{unused:?}");
    assert!(
        review["policy_source"]
            .as_str()
            .is_some_and(|p| p.ends_with("policy.yaml"))
    );

    let reply = bed
        .get(
            &format!("/v1/reports/access-review?from={}&format=csv", time(3)),
            Some(&token),
        )
        .await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "text/csv; charset=utf-8");
    assert!(reply.header("content-disposition").ends_with(".csv\""));
    let csv = reply.text();
    assert!(csv.starts_with("section,principal,"), "{csv}");
    assert!(csv.contains("readonly-bot"));

    let reply = bed
        .get("/v1/reports/access-review?format=html", Some(&token))
        .await?;
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    assert!(
        reply
            .header("content-security-policy")
            .starts_with("default-src 'none'")
    );
    assert!(reply.text().contains("ci-deployer"));

    let bad = bed
        .get("/v1/reports/access-review?format=pdf", Some(&token))
        .await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let trail = bed.check_every_call_audited().await?;
    assert!(trail.values().all(|d| d["action"] == "report"));
    assert!(trail.values().any(|d| d["parameters"]["format"] == "csv"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_token_or_the_auditor_group_are_refused_and_recorded() -> Result {
    let bed = Bed::start().await?;
    let no_token = bed.get("/v1/events?principal=ci-deployer", None).await?;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.header("www-authenticate"), "Bearer");
    assert!(no_token.json()?["error"].is_string());
    assert!(!no_token.text().contains("ci-deployer"));

    let garbage = bed.get("/v1/checkpoint", Some("not-a-jwt")).await?;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);

    let other_audience = bed.issuer.mint(
        AUDITOR,
        "someone-else",
        &["auditors"],
        Duration::from_secs(600),
    )?;
    bed.tokens
        .lock()
        .expect("lock")
        .push(other_audience.clone());
    let wrong_audience = bed.get("/v1/checkpoint", Some(&other_audience)).await?;
    assert_eq!(wrong_audience.status, StatusCode::UNAUTHORIZED);

    let developer = bed.token("dave@example.com", &["developers"])?;
    let forbidden = bed
        .get(&format!("/v1/sessions/{SESSION}/replay"), Some(&developer))
        .await?;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert!(!forbidden.text().contains("hello from web"));
    let forbidden_bundle = bed.get("/v1/bundle", Some(&developer)).await?;
    assert_eq!(forbidden_bundle.status, StatusCode::FORBIDDEN);

    // A token pasted into a parameter is refused and not recorded either.
    let auditor = bed.auditor()?;
    let pasted = bed
        .get(
            &format!("/v1/events?access_token={auditor}"),
            Some(&auditor),
        )
        .await?;
    assert_eq!(pasted.status, StatusCode::BAD_REQUEST);

    let unknown_path = bed.get("/v1/secrets", Some(&auditor)).await?;
    assert_eq!(unknown_path.status, StatusCode::NOT_FOUND);
    bed.calls.lock().expect("lock").pop(); // not an auditor call: not audited

    let trail = bed.check_every_call_audited().await?;
    let record = |reply: &Reply| trail[&reply.access_id()].clone();
    let r = record(&no_token);
    assert_eq!(
        (
            r["auditor"].as_str(),
            r["action"].as_str(),
            r["status"].as_u64()
        ),
        (Some("unauthenticated"), Some("search"), Some(401))
    );
    assert_eq!(r["parameters"]["principal"], "ci-deployer");
    assert_eq!(record(&garbage)["action"], "checkpoint");
    assert_eq!(record(&wrong_audience)["auditor"], "unauthenticated");
    let r = record(&forbidden);
    assert_eq!(
        (
            r["auditor"].as_str(),
            r["action"].as_str(),
            r["status"].as_u64()
        ),
        (Some("dave@example.com"), Some("replay"), Some(403))
    );
    assert_eq!(r["parameters"]["session_id"], SESSION);
    assert_eq!(record(&forbidden_bundle)["action"], "bundle");
    let r = record(&pasted);
    assert_eq!(r["auditor"], AUDITOR);
    assert_eq!(r["parameters"]["access_token"], "[redacted]");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_a_call_answers_503_and_returns_nothing() -> Result {
    let mut bed = Bed::start().await?;
    let token = bed.auditor()?;
    let reply = bed
        .get("/v1/events?principal=ci-deployer", Some(&token))
        .await?;
    assert_eq!(reply.status, StatusCode::OK);

    bed.nats.stop().await;
    for path in [
        "/v1/events?principal=ci-deployer".to_owned(),
        "/v1/events/0".to_owned(),
        format!("/v1/sessions/{SESSION}/replay"),
        "/v1/bundle".to_owned(),
    ] {
        let reply = bed.get(&path, Some(&token)).await?;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(reply.json()?, json!({ "error": AUDIT_UNAVAILABLE }));
        assert!(reply.header("content-disposition").is_empty());
        assert!(!reply.text().contains("ci-deployer"));
    }
    let refused = bed.get("/v1/checkpoint", None).await?;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let scratch = std::fs::read_dir(bed.data_dir().join("auditor-api-tmp"))?.count();
    assert_eq!(scratch, 0, "the unsent bundle is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_configured_certificate() -> Result {
    let pki = tempfile::tempdir()?;
    let ca = gatehouse_sandbox::pki::LocalCa::generate("auditor api test CA")?;
    let cert = ca.issue_server_cert(&["127.0.0.1", "localhost"])?;
    let (ca_file, cert_file, key_file) = (
        pki.path().join("ca.pem"),
        pki.path().join("tls.crt"),
        pki.path().join("tls.key"),
    );
    std::fs::write(&ca_file, ca.cert_pem())?;
    std::fs::write(&cert_file, &cert.cert_pem)?;
    std::fs::write(&key_file, &cert.key_pem)?;
    let bed = Bed::start_with(Some((ca_file, cert_file, key_file))).await?;
    let token = bed.auditor()?;
    let reply = bed.get("/v1/checkpoint", Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(bed.verifier.open(&reply.text())?.size, 12);
    let reply = bed.get("/v1/checkpoint", None).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    bed.check_every_call_audited().await?;
    Ok(())
}

#[test]
fn the_configuration_is_checked() -> Result {
    let parse = |yaml: &str| -> std::result::Result<AuditorApiConfig, String> {
        let config: AuditorApiConfig = yaml_serde::from_str(yaml).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    };
    let issuers = "issuers: [{issuer: https://idp.example.com, audiences: [gatehouse]}]";
    let config = parse(&format!(
        "listen: 127.0.0.1:8445\n{issuers}\nauditor_groups: [auditors]\n"
    ))
    .map_err(anyhow::Error::msg)?;
    assert!(config.tls.is_none() && config.policy.is_none());
    for (yaml, says) in [
        (
            format!("listen: 127.0.0.1:1\n{issuers}\nauditor_groups: []\n"),
            "auditor_groups",
        ),
        (
            format!("listen: 127.0.0.1:1\n{issuers}\n"),
            "auditor_groups",
        ),
        (
            format!("listen: 127.0.0.1:1\n{issuers}\nauditor_groups: [\"system:masters\"]\n"),
            "system:",
        ),
        (
            "listen: 127.0.0.1:1\nissuers: []\nauditor_groups: [a]\n".to_owned(),
            "issuers",
        ),
        (
            format!(
                "listen: 127.0.0.1:1\n{issuers}\nauditor_groups: [a]\ntls: {{cert_file: c, key_file: k, client_ca_file: ca}}\n"
            ),
            "client_ca_file",
        ),
        (
            format!("listen: 127.0.0.1:1\n{issuers}\nauditor_groups: [a]\nauditors: [b]\n"),
            "auditors",
        ),
    ] {
        let e = parse(&yaml).expect_err(&yaml);
        assert!(e.contains(says), "{yaml}: {e}");
    }
    Ok(())
}
