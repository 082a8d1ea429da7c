//! Two evidence replicas (`gatehouse evidence` processes), each with its own ledger and durable
//! consumer, on one real nats-server. Under steady load the active one is killed (SIGKILL): the
//! standby takes the lease within seconds, keeps ingesting, and signs checkpoints that extend
//! the killed one's; no acked event is lost or doubled. The killed replica, restarted on its
//! data directory, catches up to the same root and stands by.

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::nats_server::NatsServer;
use gatehouse_evidence::verify::verify;
use gatehouse_evidence::{Ledger, Status};
use gatehouse_proof::merkle::verify_consistency;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASE_TTL: Duration = Duration::from_secs(2);
/// Published before the kill, and at least this many after the takeover.
const BEFORE_KILL: usize = 500;
const AFTER_TAKEOVER: usize = 500;

/// A running replica: its process, admin address and log.
struct Replica {
    name: &'static str,
    child: tokio::process::Child,
    admin: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    async fn start(name: &'static str, config: &Path) -> Self {
        let EvidenceProcess { child, admin, log } = EvidenceProcess::start(config).await;
        Self {
            name,
            child,
            admin,
            log,
        }
    }

    async fn status(&self) -> Status {
        let body = get(&self.admin, "/status").await;
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/status of {}: {e}: {body}", self.name))
    }

    fn log_has(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    async fn terminate(self) {
        let (child, admin, log) = (self.child, self.admin, self.log);
        EvidenceProcess { child, admin, log }.terminate().await;
    }
}

/// A plain HTTP/1.1 GET, answered with its body (the status must be 200).
async fn get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "GET {path}: {response}"
    );
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    body.to_owned()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < within,
            "timed out ({within:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn write_config(dir: &Path, nats: &str, key: &str, name: &str) -> (PathBuf, PathBuf) {
    let data_dir = dir.join(name);
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "data_dir: {:?}\nnats: {{url: {nats:?}}}\nreplica: {name}\n\
             consumer: \"evidence-{{replica}}\"\nlease_ttl: {}s\nbatch_max: 200\n\
             admin_listen: 127.0.0.1:0\ncheckpoints: {{key_file: {key:?}, every: 1s}}\n",
            data_dir.display().to_string(),
            LEASE_TTL.as_secs()
        ),
    )
    .unwrap();
    (config, data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_replica_loses_nothing_and_the_standby_carries_on() {
    let test_started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (key_file, verifier) = checkpoint_key(dir.path());
    let key_path = key_file.to_str().unwrap();
    let (config_a, data_a) = write_config(dir.path(), nats.url(), key_path, "evidence-a");
    let (config_b, data_b) = write_config(dir.path(), nats.url(), key_path, "evidence-b");

    let bus = publisher(nats.url(), "failover-publisher").await;

    // A first, so that A is the active one; then B stands by.
    let a = Replica::start("evidence-a", &config_a).await;
    wait_until(
        "evidence-a to become active",
        Duration::from_secs(10),
        || async { a.status().await.active },
    )
    .await;
    let b = Replica::start("evidence-b", &config_b).await;
    wait_until(
        "evidence-b to see evidence-a active",
        Duration::from_secs(10),
        || async {
            let s = b.status().await;
            !s.active && s.active_replica.as_deref() == Some("evidence-a")
        },
    )
    .await;

    // A second replica on A's consumer is refused while A lives.
    let (config_dup, _) = write_config(dir.path(), nats.url(), key_path, "evidence-dup");
    let text = std::fs::read_to_string(&config_dup)
        .unwrap()
        .replace("evidence-{replica}", "evidence-evidence-a");
    std::fs::write(&config_dup, text).unwrap();
    let dup = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["evidence", "--config"])
            .arg(&config_dup)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a replica sharing a consumer is refused at once")
    .unwrap();
    let dup_err = String::from_utf8_lossy(&dup.stderr);
    assert!(
        !dup.status.success(),
        "a replica sharing a consumer started"
    );
    assert!(
        dup_err.contains("is in use by the evidence replica \"evidence-a\""),
        "{dup_err}"
    );

    // Steady load: one event at a time, each awaited to its ack; every acked sequence kept.
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (bus, acked, stop) = (bus.clone(), acked.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(4));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let ack = bus
                    .publish(&event("failover-test", n))
                    .await
                    .expect("published and acked");
                assert!(!ack.duplicate);
                acked.lock().unwrap().push(ack.sequence);
                n += 1;
            }
        }
    });
    let published = || acked.lock().unwrap().len();

    // Kill A once it has ingested some and signed a checkpoint over part of the load.
    wait_until("load before the kill", Duration::from_secs(30), || async {
        published() >= BEFORE_KILL && a.status().await.checkpoint_size.unwrap_or(0) > 0
    })
    .await;
    let Replica {
        mut child,
        log: log_a,
        ..
    } = a;
    child.kill().await.unwrap(); // SIGKILL: no lease released, no last checkpoint
    let published_at_kill = published();
    let takeover = wait_until(
        "evidence-b to take over",
        Duration::from_secs(15),
        || async { b.status().await.active },
    )
    .await;
    let at_takeover = published();
    assert!(
        b.log_has("evidence replica is now ACTIVE"),
        "no role change logged"
    );

    // The killed replica's last checkpoint, from its ledger.
    let (size_a, note_a) = Ledger::open_read_only(&data_a)
        .unwrap()
        .latest_checkpoint()
        .unwrap()
        .expect("evidence-a signed a checkpoint");
    let checkpoint_a = verifier.open(&note_a).unwrap();

    // B carries on: it ingests and signs checkpoints past A's last one.
    wait_until(
        "load after the takeover",
        Duration::from_secs(30),
        || async {
            published() >= at_takeover + AFTER_TAKEOVER
                && b.status().await.checkpoint_size.unwrap_or(0) > size_a
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let last = *acked.last().unwrap();
    wait_until(
        "evidence-b to ingest everything",
        Duration::from_secs(30),
        || async { b.status().await.last_sequence >= last },
    )
    .await;

    // A restarted on its own data directory resumes its consumer, catches up, stands by.
    let a = Replica::start("evidence-a", &config_a).await;
    let caught_up = wait_until(
        "evidence-a to catch up",
        Duration::from_secs(30),
        || async { a.status().await.last_sequence >= last },
    )
    .await;
    let (status_a, status_b) = (a.status().await, b.status().await);
    assert!(
        !status_a.active && status_b.active,
        "{status_a:?} {status_b:?}"
    );
    assert_eq!(status_a.active_replica.as_deref(), Some("evidence-b"));
    assert_eq!(status_a.entries, status_b.entries);
    assert_eq!(status_a.root, status_b.root, "the replicas' trees differ");

    // A clean stop of the active replica hands over at once (the lease is released).
    let stopped = Instant::now();
    b.terminate().await;
    wait_until(
        "evidence-a to take over from a clean stop",
        LEASE_TTL / 2,
        || async { a.status().await.active },
    )
    .await;
    let handover = stopped.elapsed();
    a.terminate().await;

    // Every acked event exactly once, in stream order, in both ledgers; equal trees.
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, acked, "acks out of order or repeated");
    let stream = bus.read_all().await.unwrap();
    assert_eq!(
        stream.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        acked,
        "the stream holds something besides the acked events"
    );
    let ledger_a = Ledger::open_read_only(&data_a).unwrap();
    let ledger_b = Ledger::open_read_only(&data_b).unwrap();
    for (name, ledger) in [("evidence-a", &ledger_a), ("evidence-b", &ledger_b)] {
        let verified = verify(ledger).unwrap().unwrap();
        assert_eq!(verified.entries, acked.len() as u64, "{name}");
        for (index, (sequence, bytes)) in stream.iter().enumerate() {
            let entry = ledger.entry(index as u64).unwrap().unwrap();
            assert_eq!(entry.stream_sequence, *sequence, "{name} entry {index}");
            assert_eq!(entry.event, bytes.as_ref(), "{name} entry {index}");
        }
        let data_dir = if name == "evidence-a" {
            &data_a
        } else {
            &data_b
        };
        let out = cli(&["ledger", "verify", "--data-dir", data_dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let size = acked.len() as u64;
    assert_eq!(ledger_a.root(size).unwrap(), ledger_b.root(size).unwrap());

    // B recorded A's last checkpoint before it signed any (so its own were checked against it).
    assert!(
        ledger_b
            .checkpoints()
            .unwrap()
            .contains(&(size_a, note_a.clone())),
        "evidence-b never recorded evidence-a's checkpoint {size_a}"
    );
    // B's first checkpoint past A's last was signed by B (A was dead), and extends A's.
    let (size_b, note_b) = ledger_b
        .checkpoints()
        .unwrap()
        .into_iter()
        .find(|(s, _)| *s > size_a)
        .expect("evidence-b signed a checkpoint after the takeover");
    let checkpoint_b = verifier.open(&note_b).unwrap();
    let proof = ledger_b.consistency_proof(size_a, size_b).unwrap();
    assert!(
        verify_consistency(
            size_a,
            size_b,
            &checkpoint_a.root,
            &checkpoint_b.root,
            &proof
        ),
        "evidence-b's checkpoint {size_b} does not extend evidence-a's {size_a}"
    );
    // A, back as standby, recorded B's latest checkpoint (so it extends it once active).
    let latest_b = ledger_b.latest_checkpoint().unwrap().unwrap();
    assert!(
        ledger_a.checkpoints().unwrap().contains(&latest_b),
        "evidence-a lacks evidence-b's last checkpoint ({})",
        latest_b.0
    );
    assert!(
        log_a
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("now ACTIVE")),
        "evidence-a never logged becoming active"
    );

    println!(
        "evidence failover: {} events published and acked ({published_at_kill} before the \
         SIGKILL); takeover {:.2}s after the kill (lease ttl {}s); \
         {} events published during the takeover; both ledgers {} entries, same root; \
         evidence-a's last checkpoint {size_a}, evidence-b's first {size_b} (consistent); \
         evidence-a caught up in {:.2}s after restart; clean-stop handover {:.2}s; whole test {:.1}s",
        acked.len(),
        takeover.as_secs_f64(),
        LEASE_TTL.as_secs(),
        at_takeover - published_at_kill,
        size,
        caught_up.as_secs_f64(),
        handover.as_secs_f64(),
        test_started.elapsed().as_secs_f64(),
    );
    nats.stop().await;
}
