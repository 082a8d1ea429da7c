//! Checkpoints on demand from the running evidence service, and a key rotated under it: the
//! real `gatehouse evidence` process, a real `nats-server`, and the CLI.

mod support;
use support::*;

use std::time::Duration;

use gatehouse::nats_server::NatsServer;
use gatehouse_bus::{Bus, BusConfig};
use gatehouse_evidence::Ledger;
use gatehouse_proof::checkpoint::NoteVerifier;
use gatehouse_proof::merkle::verify_consistency;

/// `checkpoint sign --admin`, parsed: the note's signer must be `key`.
fn sign_now(admin: &str, key: &NoteVerifier) -> gatehouse_proof::checkpoint::Checkpoint {
    let out = cli(&["checkpoint", "sign", "--admin", admin]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    key.open(&text(&out.stdout))
        .unwrap_or_else(|e| panic!("the note does not verify with {}: {e}", key.to_vkey()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_service_signs_on_demand_and_picks_up_a_rotated_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (key_file, first_key) = checkpoint_key(dir.path());
    let key_path = key_file.to_str().unwrap();

    let data_dir = dir.path().join("evidence");
    let config = dir.path().join("evidence.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {:?}\nnats: {{url: {:?}}}\nadmin_listen: 127.0.0.1:0\n\
             checkpoints: {{key_file: {key_path:?}, every: 1h}}\n",
            data_dir.display().to_string(),
            nats.url()
        ),
    )
    .unwrap();
    let EvidenceProcess {
        child: mut service,
        admin,
        log: _log,
    } = EvidenceProcess::start(&config).await;
    let admin = format!("http://{admin}");

    let bus = Bus::connect(&BusConfig::new(nats.url()), "checkpoint-publisher")
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(&event("checkpoint-test", n)).await.unwrap();
    }
    wait_for("10 entries", || entries(&data_dir) >= 10).await;
    let first = sign_now(&admin, &first_key);
    assert_eq!(first.size, 10);
    assert_eq!(first.origin, "gatehouse.test/ledger");

    // Nothing new: the same checkpoint again, said so.
    let out = cli(&["checkpoint", "sign", "--admin", &admin]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("has not grown"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(first_key.open(&text(&out.stdout)).unwrap(), first);

    // Rotate under the running service.
    let out = cli(&["checkpoint", "rotate", "--key-file", key_path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second_key = NoteVerifier::from_vkey(&text(&out.stdout)).unwrap();
    assert_ne!(second_key, first_key);
    assert_eq!(second_key.name(), "gatehouse.test/ledger");
    let retired: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".retired-"))
        .collect();
    assert_eq!(retired.len(), 1, "the old key is kept");
    let private = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !text(&out.stdout).contains(private.trim()),
        "only the verifier key is printed"
    );

    for n in 10..15 {
        bus.publish(&event("checkpoint-test", n)).await.unwrap();
    }
    wait_for("15 entries", || entries(&data_dir) >= 15).await;
    let second = sign_now(&admin, &second_key);
    assert_eq!(second.size, 15);
    assert!(
        first_key
            .open(&text(
                &cli(&["checkpoint", "sign", "--admin", &admin]).stdout
            ))
            .is_err(),
        "the old key no longer signs"
    );

    // The new key's checkpoint extends the old key's: a consistency proof from the ledger.
    if let Some(pid) = service.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), service.wait()).await;
    let ledger = Ledger::open_read_only(&data_dir).unwrap();
    let proof = ledger.consistency_proof(10, 15).unwrap();
    assert!(verify_consistency(
        10,
        15,
        &first.root,
        &second.root,
        &proof
    ));
    let signed: Vec<u64> = ledger
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|(size, _)| size)
        .collect();
    // The schedule's first tick, at start, signed the empty tree; then the two on demand.
    assert_eq!(signed, vec![0, 10, 15]);

    // A service that cannot be reached is an error naming where it was looked for.
    let out = cli(&["checkpoint", "sign", "--admin", "http://127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&out.stderr)
    );
    nats.stop().await;
}
