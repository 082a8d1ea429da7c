//! Witnesses written by others: three litewitness processes (filippo.io/torchwood, built from
//! its Go module by deploy/witness/build) on loopback, each with its own ssh-agent key and
//! SQLite database, cosign the checkpoints of a `gatehouse evidence` process on a real
//! nats-server. Two cosign every checkpoint, proving consistency from the size they last
//! cosigned (after a restart too); a bundle exported afterwards passes `gatehouse verify
//! --witness W1 --witness W2 --min-witnesses 2` and fails with a witness that did not cosign.
//! The third was first fed a fork (another tree at size 1, signed with the log's own key): it
//! refuses the real checkpoints, which raises the alarm (log line and metric).

mod support;
use support::litewitness::*;
use support::*;

use std::path::Path;

use gatehouse::nats_server::NatsServer;
use gatehouse_bus::Bus;
use gatehouse_evidence::Ledger;
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};
use gatehouse_proof::cosignature::{CosignatureVerifier, witnessed_body, witnessed_origin};

const ORIGIN: &str = "gatehouse.test/ledger";

/// The value of the metric line starting with `line_start` (0 when absent).
async fn metric(evidence: &EvidenceProcess, line_start: &str) -> u64 {
    let (_, body) = http(&evidence.admin, "GET", "/metrics", "").await;
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn publish(bus: &Bus, n: usize) {
    for i in 0..n {
        bus.publish(&event("witness-test", i)).await.unwrap();
    }
}

/// The witnessed checkpoint stored for `size`, and which witnesses' cosignatures on it verify.
fn cosigners(data_dir: &Path, size: u64, witnesses: &[&Litewitness]) -> Vec<String> {
    let ledger = Ledger::open_read_only(data_dir).unwrap();
    let note = gatehouse_evidence::witness::witnessed_checkpoint(&ledger, size)
        .unwrap()
        .unwrap_or_else(|| panic!("no witnessed checkpoint of size {size}"));
    witnesses
        .iter()
        .filter(|w| w.verifier().verify(&note).unwrap().is_some())
        .map(|w| w.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litewitnesses_cosign_every_checkpoint_and_a_forked_one_raises_the_alarm() {
    let bin = witness_bin();
    let dir = tempfile::tempdir().unwrap();
    let _nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let nats_url = _nats.url().to_owned();
    let (key_file, verifier) = checkpoint_key(dir.path());
    let log_signer = NoteSigner::from_skey(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let log_vkey = log_vkey(&verifier, ORIGIN);

    let w1 = Litewitness::start(&bin, dir.path(), "w1", ORIGIN, &log_vkey).await;
    let w2 = Litewitness::start(&bin, dir.path(), "w2", ORIGIN, &log_vkey).await;
    let w3 = Litewitness::start(&bin, dir.path(), "w3", ORIGIN, &log_vkey).await;

    // w3 first sees a fork: another tree at size 1, signed with the log's own key. It cosigns
    // it, having nothing to compare it with.
    let fork = log_signer
        .with_name(&witnessed_origin(ORIGIN))
        .unwrap()
        .sign_note(&witnessed_body(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: 1,
                root: [0x55; 32],
            },
            &[0x66; 32],
        ));
    let w3_addr = w3.url.trim_start_matches("http://").to_owned();
    let (status, answer) = http(
        &w3_addr,
        "POST",
        "/add-checkpoint",
        &format!("old 0\n\n{fork}"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.starts_with("\u{2014} witness.test/w3 "), "{answer}");

    let data_dir = dir.path().join("evidence");
    let config = dir.path().join("evidence.yaml");
    let mut witness_list: String = [&w1, &w2, &w3].iter().map(|w| w.config_line()).collect();
    // And one that is down: a loopback port bound and released, so nothing answers there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    witness_list.push_str(&format!(
        "    - {{name: down, url: \"http://{closed}\", vkey: {:?}}}\n",
        w1.vkey
    ));
    std::fs::write(
        &config,
        witnessed_evidence_config(&data_dir, &nats_url, &key_file, &witness_list),
    )
    .unwrap();

    let bus = publisher(&nats_url, "witness-publisher").await;
    publish(&bus, 20).await;

    let evidence = EvidenceProcess::start(&config).await;
    wait_for("the ledger to hold the first events", || {
        entries(&data_dir) >= 20
    })
    .await;
    let first = checkpoint_now(&evidence).await;
    assert!(first >= 20);
    assert_eq!(cosigners(&data_dir, first, &[&w1, &w2, &w3]), ["w1", "w2"]);
    // The auditor API's checkpoint history carries the cosigned checkpoint beside the log's.
    let history = gatehouse_evidence::api::checkpoint_history(
        &Ledger::open_read_only(&data_dir).unwrap(),
        None,
        100,
    )
    .unwrap();
    let listed = history
        .checkpoints
        .iter()
        .find(|c| c.size == first)
        .expect("the first checkpoint is listed");
    let witnessed = listed
        .witnessed
        .as_deref()
        .expect("with its witnessed checkpoint");
    assert!(w1.verifier().verify(witnessed).unwrap().is_some());

    // More events: the next checkpoint is cosigned with a consistency proof from the first,
    // which litewitness checks.
    publish(&bus, 37).await;
    wait_for("the ledger to hold every event", || {
        entries(&data_dir) >= first + 37
    })
    .await;
    let second = checkpoint_now(&evidence).await;
    assert!(second > first);
    assert_eq!(cosigners(&data_dir, second, &[&w1, &w2, &w3]), ["w1", "w2"]);
    assert_eq!((w1.size(&bin), w2.size(&bin)), (second, second));
    assert_eq!(w3.size(&bin), 1, "the forked witness moved");

    // The fork: w3 is asked (from 0), says it holds size 1, is sent a proof from 1, refuses it.
    let refused = metric(
        &evidence,
        "gatehouse_evidence_witness_refusals_total{witness=\"w3\",reason=\"inconsistent\"}",
    )
    .await;
    assert!(refused >= 1, "no refusal counted");
    let alarms = evidence.log_lines("witness.refused");
    assert!(
        alarms
            .iter()
            .any(|l| l.contains("w3") && l.contains("inconsistent")),
        "no alarm logged: {alarms:?}"
    );
    assert!(
        !alarms
            .iter()
            .any(|l| l.contains("witness=w1") || l.contains("witness=w2")),
        "{alarms:?}"
    );
    // A witness that is down is an alarm at every checkpoint, and stops none.
    assert!(
        metric(
            &evidence,
            "gatehouse_evidence_witness_refusals_total{witness=\"down\",reason=\"unreachable\"}"
        )
        .await
            >= 2
    );
    assert!(
        metric(
            &evidence,
            "gatehouse_evidence_witness_cosignatures_total{witness=\"w1\"}"
        )
        .await
            >= 2
    );

    // A restart proves from the size each witness last cosigned (kept in the ledger): no
    // witness is asked from 0 again.
    evidence.terminate().await;
    let evidence = EvidenceProcess::start(&config).await;
    publish(&bus, 11).await;
    wait_for("the ledger to hold the last events", || {
        entries(&data_dir) >= second + 11
    })
    .await;
    let third = checkpoint_now(&evidence).await;
    assert!(third > second);
    assert_eq!(cosigners(&data_dir, third, &[&w1, &w2, &w3]), ["w1", "w2"]);
    let resynced = evidence.log_lines("holds another size");
    assert!(
        resynced.iter().all(|l| l.contains("w3")),
        "w1 or w2 was asked from another size after the restart: {resynced:?}"
    );
    evidence.terminate().await;

    // Each refusal is also an event, in the ledger like every other.
    let ledger = Ledger::open_read_only(&data_dir).unwrap();
    let mut refusal_events = Vec::new();
    for stored in ledger.entries(0).unwrap() {
        let stored = stored.unwrap();
        let entry = gatehouse_evidence::entry::Entry::decode(&stored.encoding).unwrap();
        let event: serde_json::Value = serde_json::from_slice(&entry.event).unwrap();
        if event["type"] == "dev.gatehouse.witness.refused.v1" {
            refusal_events.push((
                event["data"]["witness"].clone(),
                event["data"]["reason"].clone(),
            ));
        }
    }
    drop(ledger);
    assert!(
        refusal_events.contains(&("w3".into(), "inconsistent".into()))
            && refusal_events.contains(&("down".into(), "unreachable".into())),
        "{refusal_events:?}"
    );
    assert!(
        refusal_events.iter().all(|(w, _)| w == "w3" || w == "down"),
        "{refusal_events:?}"
    );

    // The bundle carries the cosigned witnessed checkpoint.
    let bundle = dir.path().join("bundle.tar.gz");
    export_bundle(&data_dir, &key_file, &bundle);
    let key = verifier.to_vkey();
    let ok = verify_witnessed(&bundle, &key, &[&w1.vkey, &w2.vkey], 2);
    assert_cosigned_by(&ok, &[&w1, &w2]);
    // The independent verifier, written from schemas/ alone, agrees both ways.
    let independent = verify_independently(&bundle, &key, &[&w1.vkey, &w2.vkey], 2);
    assert!(
        independent.status.success()
            && text(&independent.stdout).contains("cosigned by witness.test/w1, witness.test/w2"),
        "{}{}",
        text(&independent.stdout),
        text(&independent.stderr)
    );
    let short = verify_independently(&bundle, &key, &[&w1.vkey, &w2.vkey, &w3.vkey], 3);
    assert_eq!(short.status.code(), Some(1), "{}", text(&short.stderr));

    // Three required, and the third witness given never cosigned: refused, naming it.
    let three = verify_witnessed(&bundle, &key, &[&w1.vkey, &w2.vkey, &w3.vkey], 3);
    assert_too_few_cosigners(&three, (2, 3, 3), "witness.test/w3");
    // A witness nobody here runs: refused.
    let stranger = CosignatureVerifier::from_vkey(STRANGER_WITNESS_VKEY).unwrap();
    let unknown = verify_witnessed(&bundle, &key, &[&stranger.to_vkey()], 1);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("0 of the 1 witness keys"),
        "{}",
        text(&unknown.stderr)
    );
    let _ = (&w1.log, &w2.log, &w3.log);
}
