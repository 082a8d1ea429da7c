//! Least privilege on the bus: a real nats-server with `deploy/nats/gatehouse.conf`, one NKey
//! user per service, and the server itself refusing what a service's credential does not own.
//!
//! Every refusal is paired with the same operation done by the credential that owns it, so a
//! refusal cannot pass because the operation was broken to begin with.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use gatehouse::nats_server::{NatsKeys, NatsRole, NatsServer};
use gatehouse_approval::store::Store;
use gatehouse_bus::{Bus, BusConfig, GRANTS_BUCKET, GRANTS_MAX_AGE, grants_bucket};
use gatehouse_tests::init_logging;
use tokio::sync::mpsc;

type Result = anyhow::Result<()>;

const STREAM: &str = "GATEHOUSE";
/// How long a refused JetStream request waits for the answer that never comes.
const REFUSED_WAIT: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(10);

struct Bed {
    _dir: tempfile::TempDir,
    _nats: NatsServer,
    url: String,
    keys: NatsKeys,
    admin: Bus,
}

/// A secured nats-server, with the stream and buckets made by the admin as `gatehouse up` does.
async fn bed() -> anyhow::Result<Bed> {
    init_logging();
    let dir = tempfile::tempdir()?;
    let keys = NatsKeys::generate(&dir.path().join("keys"))?;
    let nats = NatsServer::start_secured(&dir.path().join("nats"), &keys).await?;
    let url = nats.url().to_owned();
    let mut config = BusConfig::new(url.clone());
    config.nkey_file = Some(keys.seed_file(NatsRole::Admin));
    let admin = Bus::connect(&config, "admin").await?;
    admin.ensure_stream(&config.stream).await?;
    admin.key_value(&grants_bucket(GRANTS_MAX_AGE, 1)).await?;
    Store::open(&admin, 1, Duration::from_secs(7 * 24 * 3600))
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.0))?;
    Ok(Bed {
        _dir: dir,
        _nats: nats,
        url,
        keys,
        admin,
    })
}

/// A raw client for `role`, and the errors the server sends it.
struct Raw {
    js: jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Bed {
    async fn raw(&self, role: NatsRole) -> anyhow::Result<Raw> {
        let seed = gatehouse_bus::read_nkey_seed(&self.keys.seed_file(role))
            .map_err(anyhow::Error::msg)?;
        let (tx, errors) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .nkey(seed)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.url.as_str())
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REFUSED_WAIT)
            .build(client);
        Ok(Raw { js, errors })
    }

    /// How many messages the stream holds on `subject`.
    async fn count(&self, subject: &str) -> anyhow::Result<usize> {
        Ok(self
            .admin
            .read_all()
            .await?
            .iter()
            .filter(|(_, bytes)| {
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                    .is_some_and(|t| format!("gatehouse.{t}") == subject)
            })
            .count())
    }

    async fn grants(&self) -> anyhow::Result<kv::Store> {
        Ok(self.admin.jetstream().get_key_value(GRANTS_BUCKET).await?)
    }
}

impl Raw {
    /// Publishes an event-shaped message to `subject`; the JetStream ack, or the error.
    async fn publish(&self, subject: &str) -> anyhow::Result<u64> {
        let name = subject.trim_start_matches("gatehouse.");
        let body = serde_json::json!({"specversion": "1.0", "type": name, "id": ulid()});
        let ack = self
            .js
            .publish(subject.to_owned(), Bytes::from(body.to_string()))
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Waits for the server's permissions violation naming `subject`.
    async fn refusal_of(&mut self, subject: &str) -> String {
        let wanted = format!("Permissions Violation for Publish to \"{subject}\"");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(e)) if e.contains(&wanted) => return e,
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => panic!("the server never reported: {wanted}"),
            }
        }
    }
}

fn ulid() -> String {
    gatehouse_events::EventId::new().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_credential_cannot_decide_grant_or_erase() -> Result {
    let bed = bed().await?;
    let mut proxy = bed.raw(NatsRole::Proxy).await?;
    let approval = bed.raw(NatsRole::Approval).await?;

    // What a proxy owns, it may publish.
    assert!(proxy.publish("gatehouse.request.received").await? > 0);
    assert_eq!(bed.count("gatehouse.request.received").await?, 1);

    // A decision: refused by the server, never stored. The approval service may.
    let forged = proxy.publish("gatehouse.approval.decided").await;
    assert!(forged.is_err(), "a proxy's decision was acked: {forged:?}");
    proxy.refusal_of("gatehouse.approval.decided").await;
    assert_eq!(bed.count("gatehouse.approval.decided").await?, 0);
    approval.publish("gatehouse.approval.decided").await?;
    assert_eq!(bed.count("gatehouse.approval.decided").await?, 1);

    // A grant written into the bucket: refused; the approval service's is stored.
    let proxy_grants = proxy.js.get_key_value(GRANTS_BUCKET).await?;
    let put = proxy_grants.put("forged", Bytes::from_static(b"{}")).await;
    assert!(put.is_err(), "a proxy wrote a grant: {put:?}");
    proxy
        .refusal_of(&format!("$KV.{GRANTS_BUCKET}.forged"))
        .await;
    assert!(bed.grants().await?.get("forged").await?.is_none());
    let approval_grants = approval.js.get_key_value(GRANTS_BUCKET).await?;
    approval_grants
        .put("real", Bytes::from_static(b"{}"))
        .await?;
    assert!(bed.grants().await?.get("real").await?.is_some());
    // A proxy still reads grants: it watches the bucket.
    assert!(proxy_grants.get("real").await?.is_some());

    // Deleting or purging the stream, or shortening how long it keeps events.
    let deleted = proxy.js.delete_stream(STREAM).await;
    assert!(deleted.is_err(), "a proxy deleted the stream");
    proxy
        .refusal_of(&format!("$JS.API.STREAM.DELETE.{STREAM}"))
        .await;
    let mut stream = proxy.js.get_stream(STREAM).await?;
    let purged = stream.purge().await;
    assert!(purged.is_err(), "{purged:?}");
    proxy
        .refusal_of(&format!("$JS.API.STREAM.PURGE.{STREAM}"))
        .await;
    let mut config = stream.info().await?.config.clone();
    let max_age = config.max_age;
    config.max_age = Duration::from_secs(60);
    let updated = proxy.js.update_stream(config).await;
    assert!(updated.is_err(), "{updated:?}");
    proxy
        .refusal_of(&format!("$JS.API.STREAM.UPDATE.{STREAM}"))
        .await;
    let info = bed
        .admin
        .jetstream()
        .get_stream(STREAM)
        .await?
        .info()
        .await?
        .clone();
    assert_eq!(info.config.max_age, max_age);
    assert_eq!(
        info.state.messages, 2,
        "nothing was removed from the stream"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_and_evidence_say_only_what_they_own() -> Result {
    let bed = bed().await?;
    let proxy = bed.raw(NatsRole::Proxy).await?;
    let mut approval = bed.raw(NatsRole::Approval).await?;
    let mut evidence = bed.raw(NatsRole::Evidence).await?;

    // The approval service cannot pretend a request arrived (or was forwarded).
    let received = approval.publish("gatehouse.request.received").await;
    assert!(received.is_err(), "{received:?}");
    approval.refusal_of("gatehouse.request.received").await;
    assert_eq!(bed.count("gatehouse.request.received").await?, 0);
    proxy.publish("gatehouse.request.received").await?;
    assert_eq!(bed.count("gatehouse.request.received").await?, 1);

    // Evidence publishes its own events, not decisions, and writes no grant.
    evidence.publish("gatehouse.ledger.gap").await?;
    evidence.publish("gatehouse.witness.refused").await?;
    let decided = evidence.publish("gatehouse.approval.decided").await;
    assert!(decided.is_err(), "{decided:?}");
    evidence.refusal_of("gatehouse.approval.decided").await;
    assert_eq!(bed.count("gatehouse.approval.decided").await?, 0);
    let grants = evidence.js.get_key_value(GRANTS_BUCKET).await?;
    assert!(
        grants
            .put("forged", Bytes::from_static(b"{}"))
            .await
            .is_err()
    );
    evidence
        .refusal_of(&format!("$KV.{GRANTS_BUCKET}.forged"))
        .await;
    assert!(bed.grants().await?.get("forged").await?.is_none());

    // Evidence reads everything in the stream.
    let bus = {
        let mut config = BusConfig::new(bed.url.clone());
        config.nkey_file = Some(bed.keys.seed_file(NatsRole::Evidence));
        Bus::connect(&config, "evidence").await?
    };
    assert_eq!(bus.read_all().await?.len(), 3);

    // Not even the admin deletes or purges the stream.
    let mut admin = bed.raw(NatsRole::Admin).await?;
    assert!(admin.js.delete_stream(STREAM).await.is_err());
    admin
        .refusal_of(&format!("$JS.API.STREAM.DELETE.{STREAM}"))
        .await;
    assert_eq!(bed.admin.last_sequence().await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_only_check_the_stream_and_need_their_own_key() -> Result {
    init_logging();
    let dir = tempfile::tempdir()?;
    let keys = NatsKeys::generate(&dir.path().join("keys"))?;
    let nats = NatsServer::start_secured(&dir.path().join("nats"), &keys).await?;

    // No key, no connection.
    let anonymous = Bus::connect(&BusConfig::new(nats.url()), "anonymous").await;
    assert!(anonymous.is_err(), "an anonymous client was admitted");

    // A service may not create the stream: it stops, naming the refusal and the way out.
    let mut config = BusConfig::new(nats.url());
    config.nkey_file = Some(keys.seed_file(NatsRole::Proxy));
    let proxy = Bus::connect(&config, "proxy").await?;
    let err = proxy
        .ensure_stream(&config.stream)
        .await
        .expect_err("a proxy created the stream")
        .to_string();
    assert!(
        err.contains("$JS.API.STREAM.CREATE.GATEHOUSE") && err.contains("gatehouse nats setup"),
        "{err}"
    );

    // A key file others can read is refused before it is used.
    let loose = dir.path().join("loose.nk");
    std::fs::copy(keys.seed_file(NatsRole::Proxy), &loose)?;
    let mut permissions = std::fs::metadata(&loose)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o644);
    std::fs::set_permissions(&loose, permissions)?;
    config.nkey_file = Some(loose);
    let err = Bus::connect(&config, "proxy")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("0644") && err.contains("0600"), "{err}");
    let seed = std::fs::read_to_string(keys.seed_file(NatsRole::Proxy))?;
    assert!(!err.contains(seed.trim()), "the error shows the key");
    Ok(())
}
