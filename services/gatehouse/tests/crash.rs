//! The evidence service killed with SIGKILL in the middle of ingesting a stream of events,
//! again and again: after the last restart every event is in the ledger exactly once, in
//! stream order, byte for byte, and the chain and the tree verify.

mod support;
use support::*;

use std::process::Stdio;
use std::time::Duration;

use gatehouse::nats_server::NatsServer;
use gatehouse_evidence::Ledger;
use gatehouse_evidence::verify::verify;

const EVENTS: usize = 6_000;

fn evidence(config: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["evidence", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting gatehouse evidence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_it_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let data_dir = dir.path().join("evidence");
    let config = dir.path().join("evidence.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {:?}\nnats: {{url: {:?}}}\nbatch_max: 400\n",
            data_dir.display().to_string(),
            nats.url()
        ),
    )
    .unwrap();
    let bus = publisher(nats.url(), "crash-publisher").await;

    // Events keep coming while the service is killed and restarted.
    let publisher = tokio::spawn({
        let bus = bus.clone();
        async move {
            for n in 0..EVENTS {
                bus.publish(&event("crash-test", n))
                    .await
                    .expect("published");
                if n % 200 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let mut kills = 0;
    for target in [600u64, 1_800, 3_000] {
        let mut child = evidence(&config);
        wait_for("the ledger to grow", || entries(&data_dir) >= target).await;
        child.kill().await.unwrap(); // SIGKILL: no flush, no ack, mid-batch
        kills += 1;
    }
    publisher.await.unwrap();
    let mut child = evidence(&config);
    wait_for("every event", || entries(&data_dir) >= EVENTS as u64).await;
    // A clean stop this time.
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

    let stream = bus.read_all().await.unwrap();
    assert_eq!(stream.len(), EVENTS);
    let ledger = Ledger::open_read_only(&data_dir).unwrap();
    let verified = verify(&ledger).unwrap().unwrap();
    assert_eq!(verified.entries, EVENTS as u64, "after {kills} kills");
    for (index, (sequence, bytes)) in stream.iter().enumerate() {
        let entry = ledger.entry(index as u64).unwrap().unwrap();
        assert_eq!(entry.stream_sequence, *sequence, "entry {index}");
        assert_eq!(entry.event, bytes.as_ref(), "entry {index}");
    }
    assert!(verified.merkle_root.is_some());
    nats.stop().await;
}
