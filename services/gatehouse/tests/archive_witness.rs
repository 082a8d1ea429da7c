//! Cosignatures outlive the ledger: a `gatehouse evidence` process on a real nats-server submits
//! its checkpoints to two litewitness processes and archives sealed segments to a real S3
//! server with Object Lock (versitygw). Every archived segment carries the witnessed
//! checkpoints of its checkpoints with both cosignatures, although one witness answers late:
//! the archive seals no segment past a checkpoint whose witness round has not finished. With the ledger directory wiped,
//! `gatehouse ledger restore --from-archive` brings the cosignatures back: a bundle exported
//! from the restored ledger passes `gatehouse verify --witness W1 --witness W2
//! --min-witnesses 2`, and fails with a witness key that never cosigned.

mod support;
use support::litewitness::*;
use support::s3::*;
use support::*;

use std::time::Duration;

use gatehouse::nats_server::NatsServer;
use gatehouse_evidence::Ledger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORIGIN: &str = "gatehouse.test/ledger";
const BUCKET: &str = "evidence-archive";

/// A loopback proxy to `upstream` that holds every chunk of the answers for `delay`: a slow
/// witness, so a witness round spans archive rounds (`every: 1s`) and a segment sealed before
/// the round finished would lack its cosignature.
async fn slow_proxy(upstream: &str, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut chunk = vec![0u8; 16 * 1024];
                while let Ok(n) = server_read.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosignatures_are_archived_and_restored_with_the_ledger() {
    let bin = witness_bin();
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3")).await;
    let credentials = write_credentials(dir.path());
    let archive_section = archive_yaml(&s3.endpoint, BUCKET, &credentials);
    let archive = locked_archive(&archive_section).await;

    let mut nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let nats_url = nats.url().to_owned();
    let (key_file, verifier) = checkpoint_key(dir.path());
    let vkey = verifier.to_vkey();
    let log_vkey = log_vkey(&verifier, ORIGIN);
    let w1 = Litewitness::start(&bin, dir.path(), "w1", ORIGIN, &log_vkey).await;
    let w2 = Litewitness::start(&bin, dir.path(), "w2", ORIGIN, &log_vkey).await;

    // w1 answers 1.5 s late: each witness round spans at least one archive round.
    let w1_slow = w1.config_line().replace(
        &w1.url,
        &slow_proxy(&w1.url, Duration::from_millis(1500)).await,
    );
    // Checkpoints on demand (the schedule's is an hour away), archiving every second.
    let data_dir = dir.path().join("evidence");
    let config = dir.path().join("evidence.yaml");
    let archive_section: String = archive_section
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "{}archive:\n{archive_section}",
            witnessed_evidence_config(
                &data_dir,
                &nats_url,
                &key_file,
                &format!("{w1_slow}{}", w2.config_line())
            )
        ),
    )
    .unwrap();

    let bus = publisher(&nats_url, "archive-witness-test").await;
    let evidence = EvidenceProcess::start(&config).await;
    // Two checkpoints over two bursts, each cosigned by both witnesses (POST /checkpoint
    // answers after the witness round).
    let mut published = 0;
    let mut sizes = Vec::new();
    for burst in [30, 40] {
        for i in 0..burst {
            bus.publish(&event("archive-witness-test", i))
                .await
                .unwrap();
        }
        published += burst as u64;
        wait_for("the ledger to hold the burst", || {
            entries(&data_dir) >= published
        })
        .await;
        sizes.push(checkpoint_now(&evidence).await);
    }
    let last = *sizes.last().unwrap();
    assert!(last >= published, "{sizes:?}");
    assert_eq!((w1.size(&bin), w2.size(&bin)), (last, last));
    wait_for("the last checkpoint archived", || {
        archive_progress(&data_dir).1 == last
    })
    .await;
    assert!(
        evidence.log_lines("archive_failed").is_empty(),
        "{:?}",
        evidence.log_lines("archive_failed")
    );

    // Each archived checkpoint has its witnessed checkpoint beside it, cosigned by both.
    let segments = archive.segments(None).await.unwrap();
    assert!(segments.len() >= 2, "{segments:?}");
    let mut archived_sizes = Vec::new();
    for &(start, end, complete) in &segments {
        assert!(complete, "{segments:?}");
        let manifest = archive.manifest(start, end).await.unwrap().unwrap();
        let checkpoints: Vec<u64> = manifest.checkpoints.iter().map(|c| c.size).collect();
        let witnessed: Vec<u64> = manifest.witnessed.iter().map(|w| w.size).collect();
        assert_eq!(witnessed, checkpoints, "segment {start}-{end}");
        for w in &manifest.witnessed {
            let note = archive
                .get(&archive.key(start, end, &w.note.name))
                .await
                .unwrap()
                .expect("the witnessed checkpoint object");
            let note = String::from_utf8(note).unwrap();
            for witness in [&w1, &w2] {
                assert!(
                    witness.verifier().verify(&note).unwrap().is_some(),
                    "segment {start}-{end}: witnessed.{} has no cosignature of {}:\n{note}",
                    w.size,
                    witness.name
                );
            }
        }
        archived_sizes.extend(checkpoints);
    }
    for size in &sizes {
        assert!(archived_sizes.contains(size), "{size} not archived");
    }

    // The ledger is lost; the archive brings it back, cosignatures included.
    evidence.terminate().await;
    std::fs::remove_dir_all(data_dir.join("ledger")).unwrap();
    restored(&config, &data_dir, &vkey);
    let restored = Ledger::open_read_only(&data_dir).unwrap();
    assert_eq!(
        restored.latest_checkpoint().unwrap().map(|(size, _)| size),
        Some(last)
    );
    drop(restored);

    let bundle = dir.path().join("bundle.tar.gz");
    export_bundle(&data_dir, &key_file, &bundle);
    let ok = verify_witnessed(&bundle, &vkey, &[&w1.vkey, &w2.vkey], 2);
    assert_cosigned_by(&ok, &[&w1, &w2]);

    // A witness key that never cosigned does not count towards the two required.
    let short = verify_witnessed(&bundle, &vkey, &[&w1.vkey, STRANGER_WITNESS_VKEY], 2);
    assert_too_few_cosigners(&short, (1, 2, 2), "witness.example/w1");
    nats.stop().await;
}
