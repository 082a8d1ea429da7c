//! Write-once archives against a real S3 server with Object Lock (versitygw, built from its Go
//! module by `deploy/archive/build`), on loopback, with a real nats-server and RocksDB:
//! - `gatehouse evidence` archives sealed segments on its schedule, every object under
//!   compliance-mode Object Lock until six years after its newest entry; of two replicas only
//!   the lease holder uploads, and the standby adopts what it archived;
//! - the server refuses to delete a locked version or shorten its retention, even to the root
//!   user; a PUT over a key only adds a version, and restore still reads the first one;
//! - with the ledger directory wiped, `gatehouse ledger restore --from-archive` rebuilds it, and
//!   `gatehouse ledger verify` passes with the same checkpoints and roots, and the service
//!   started on it ingests and archives on;
//! - in a plain copy of the archive (no lock, as someone holding a copy could change it), an
//!   altered object, a missing manifest and a missing segment each make restore fail, naming
//!   the segment.

mod support;
use support::s3::*;
use support::*;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
    VersioningConfiguration,
};
use gatehouse::nats_server::NatsServer;
use gatehouse_bus::Bus;
use gatehouse_evidence::Ledger;
use gatehouse_evidence::archive::{Archive, ArchiveConfig, Manifest};

const BUCKET: &str = "evidence-archive";
const COPY_BUCKET: &str = "evidence-archive-copy";
/// Six years, as `archive.retention_days` defaults to.
const RETENTION_DAYS: i64 = 2_192;

fn archive(yaml: &str) -> Archive {
    let config: ArchiveConfig = yaml_serde::from_str(yaml).unwrap();
    Archive::connect(&config).unwrap()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < within,
            "timed out ({within:?}) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(bus: &Bus, n: usize) {
    for i in 0..n {
        bus.publish(&event("archive-test", i)).await.unwrap();
    }
}

/// The S3 error code of a refused request (fails the test if it was not refused).
fn refusal<T: std::fmt::Debug, E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, aws_sdk_s3::error::SdkError<E>>,
) -> String {
    let err = result.expect_err("the server allowed it");
    let code = err
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or_else(|| panic!("not refused by the server: {err:?}"));
    eprintln!(
        "refused: {code}: {:?}",
        err.as_service_error().and_then(|e| e.message())
    );
    code.to_owned()
}

/// Stops a `gatehouse evidence` process with SIGTERM and expects a clean exit.
async fn stop(evidence: &mut tokio::process::Child, log: &str) {
    let pid = nix::unistd::Pid::from_raw(evidence.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), evidence.wait())
        .await
        .expect("a clean stop")
        .unwrap();
    assert!(status.success(), "{log}");
}

/// Restores into `data_dir` and expects exit 1 with `expected` in the message, and no ledger.
fn restore_fails(config: &Path, data_dir: &Path, vkey: &str, expected: &str) {
    let out = restore(config, data_dir, vkey);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    assert!(!data_dir.join("ledger").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_locked_for_six_years_and_a_wiped_ledger_is_restored_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3")).await;
    let credentials = write_credentials(dir.path());
    let locked = locked_archive(&archive_yaml(&s3.endpoint, BUCKET, &credentials)).await;
    let client = locked.client().clone();

    // The evidence service, archiving every second in segments of at most 50 entries.
    let mut nats = NatsServer::start(&dir.path().join("nats")).await.unwrap();
    let (key_file, verifier) = checkpoint_key(dir.path());
    let vkey = verifier.to_vkey();
    let archive_section = archive_yaml(&s3.endpoint, BUCKET, &credentials)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect::<String>();
    let bus = publisher(nats.url(), "archive-test").await;
    let replica = |name: &str| {
        let data_dir = dir.path().join(name);
        let config = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "data_dir: {:?}\nnats: {{url: {:?}}}\nreplica: {name}\n\
                 consumer: \"evidence-{{replica}}\"\nlease_ttl: 2s\n\
                 checkpoints: {{key_file: {:?}, every: 1s}}\narchive:\n{archive_section}",
                data_dir.display().to_string(),
                nats.url(),
                key_file.display().to_string(),
            ),
        )
        .unwrap();
        let log_path = dir.path().join(format!("{name}.log"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["evidence", "--config"])
            .arg(&config)
            .env("GATEHOUSE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting gatehouse evidence");
        (child, data_dir, config, log_path)
    };
    // Two replicas: A takes the lease and uploads; B stands by and only adopts what A archived.
    let (mut evidence, data_dir, config, log_path) = replica("evidence-a");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("evidence-a active", Duration::from_secs(30), || async {
        log().contains("is now ACTIVE")
    })
    .await;
    let (mut standby, standby_dir, _, standby_log) = replica("evidence-b");

    // Three bursts, each archived before the next: at least three segments.
    let mut published = 0;
    for burst in [40, 45, 50] {
        publish(&bus, burst).await;
        published += burst as u64;
        wait_until("a burst archived", Duration::from_secs(60), || async {
            let (entries, archived) = archive_progress(&data_dir);
            entries >= published && archived == entries
        })
        .await;
    }
    assert!(!log().contains("archive_failed"), "{}", log());
    assert!(log().contains("ledger segment archived"), "{}", log());
    wait_until(
        "the standby to adopt the archive",
        Duration::from_secs(60),
        || async { archive_progress(&standby_dir) == archive_progress(&data_dir) },
    )
    .await;
    let standby_log = std::fs::read_to_string(&standby_log).unwrap();
    assert!(
        standby_log.contains("is now STANDBY") || !standby_log.contains("is now ACTIVE"),
        "{standby_log}"
    );
    assert!(
        !standby_log.contains("ledger segment archived"),
        "the standby uploaded:\n{standby_log}"
    );
    assert!(!standby_log.contains("archive_failed"), "{standby_log}");
    standby.kill().await.unwrap();

    // Every object is under compliance-mode lock until six years after its segment's newest
    // entry.
    let segments = locked.segments(None).await.unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    let mut expected_start = 0;
    let ledger = Ledger::open_read_only(&data_dir).unwrap();
    for &(start, end, complete) in &segments {
        assert!(complete && start == expected_start, "{segments:?}");
        expected_start = end;
        let manifest: Manifest = locked.manifest(start, end).await.unwrap().unwrap();
        let newest = (start..end)
            .map(|i| ledger.entry(i).unwrap().unwrap().received_at)
            .max()
            .unwrap();
        let newest = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(newest)).unwrap();
        let at_least = newest + time::Duration::days(RETENTION_DAYS);
        let mut names = vec!["entries".to_owned(), "manifest.json".to_owned()];
        names.extend(manifest.checkpoints.iter().map(|c| c.note.name.clone()));
        for name in names {
            let key = locked.key(start, end, &name);
            let head = client
                .head_object()
                .bucket(BUCKET)
                .key(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                head.object_lock_mode(),
                Some(&ObjectLockMode::Compliance),
                "{key}"
            );
            let until = head.object_lock_retain_until_date().unwrap().secs();
            assert!(
                until >= at_least.unix_timestamp(),
                "{key}: retained until {until}, less than six years after {newest}"
            );
        }
        // The checkpoint that ends the segment is archived as the ledger stores it.
        let (_, note) = ledger.checkpoints_in(end - 1, end, 1).unwrap().remove(0);
        let archived = locked
            .get(&locked.key(start, end, &format!("checkpoint.{end:020}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(archived, note.as_bytes());
    }
    let archived_through = expected_start;
    let original_checkpoints: Vec<(u64, String)> = ledger
        .checkpoints()
        .unwrap()
        .into_iter()
        // A checkpoint of the empty tree covers no entry: no segment holds it.
        .filter(|(size, _)| *size > 0 && *size <= archived_through)
        .collect();
    let original_root = ledger.root(archived_through).unwrap();
    drop(ledger);

    // The server refuses to let a locked object go, whoever asks (the root user here).
    let key = locked.key(segments[0].0, segments[0].1, "entries");
    let first_version = client
        .head_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap()
        .version_id()
        .expect("a versioned object")
        .to_owned();
    let delete = client
        .delete_object()
        .bucket(BUCKET)
        .key(&key)
        .version_id(&first_version)
        .send()
        .await;
    assert_eq!(refusal(delete), "AccessDenied", "deleting a locked version");
    let bypass = client
        .delete_object()
        .bucket(BUCKET)
        .key(&key)
        .version_id(&first_version)
        .bypass_governance_retention(true)
        .send()
        .await;
    assert_eq!(refusal(bypass), "AccessDenied", "bypassing compliance mode");
    let shorten = client
        .put_object_retention()
        .bucket(BUCKET)
        .key(&key)
        .version_id(&first_version)
        .retention(
            ObjectLockRetention::builder()
                .mode(ObjectLockRetentionMode::Compliance)
                .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                    time::OffsetDateTime::now_utc().unix_timestamp() + 86_400,
                ))
                .build(),
        )
        .bypass_governance_retention(true)
        .send()
        .await;
    assert_eq!(refusal(shorten), "AccessDenied", "shortening a retention");
    let suspend = client
        .put_bucket_versioning()
        .bucket(BUCKET)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await;
    let code = refusal(suspend);
    assert_eq!(
        code, "InvalidBucketState",
        "suspending versioning of a locked bucket"
    );
    // A PUT over the key adds a version on top; the locked one stays, byte for byte.
    let original = locked.get(&key).await.unwrap().unwrap();
    client
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(ByteStream::from(b"overwritten".to_vec()))
        .send()
        .await
        .expect("a PUT to a versioned bucket adds a version");
    let kept = client
        .get_object()
        .bucket(BUCKET)
        .key(&key)
        .version_id(&first_version)
        .send()
        .await
        .expect("the locked version is still there")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(kept.as_ref(), original.as_slice());
    // The archiver itself never writes over a key that holds other bytes.
    let refused = locked
        .put_once(&key, original.clone(), time::OffsetDateTime::now_utc())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("never overwritten"),
        "{refused}"
    );

    // Stop the service, wipe its ledger, restore it from the archive.
    stop(&mut evidence, &log()).await;
    std::fs::remove_dir_all(data_dir.join("ledger")).unwrap();
    let out = restored(&config, &data_dir, &vkey);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("first, locked version"), "{stderr}");
    let out = cli(&[
        "ledger",
        "verify",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["entries"], archived_through);
    assert_eq!(verified["merkle_root"], hex::encode(original_root));
    let restored = Ledger::open_read_only(&data_dir).unwrap();
    assert_eq!(restored.checkpoints().unwrap(), original_checkpoints);
    assert_eq!(restored.archived_through().unwrap(), Some(archived_through));
    drop(restored);
    // The service carries on from the restored ledger: it ingests and archives what follows.
    let (mut evidence, _, _, _) = replica("evidence-a");
    wait_until(
        "evidence-a active again",
        Duration::from_secs(30),
        || async { log().contains("is now ACTIVE") },
    )
    .await;
    publish(&bus, 10).await;
    wait_until(
        "the events after the restore archived",
        Duration::from_secs(60),
        || async {
            let (entries, archived) = archive_progress(&data_dir);
            entries >= archived_through + 10 && archived == entries
        },
    )
    .await;
    assert!(!log().contains("archive_failed"), "{}", log());
    stop(&mut evidence, &log()).await;
    // A second restore never writes over the ledger now there.
    let again = restore(&config, &data_dir, &vkey);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("never writes over one"),
        "{}",
        text(&again.stderr)
    );
    // Checkpoints signed by another key do not pass.
    std::fs::create_dir_all(dir.path().join("stranger")).unwrap();
    let (_, stranger) = checkpoint_key(&dir.path().join("stranger"));
    let other = dir.path().join("elsewhere");
    restore_fails(
        &config,
        &other,
        &stranger.to_vkey(),
        "is not signed by any key given",
    );

    // A plain copy of the archive (no lock): altered, incomplete and missing segments fail.
    client
        .create_bucket()
        .bucket(COPY_BUCKET)
        .send()
        .await
        .unwrap();
    let copy_yaml = dir.path().join("copy.yaml");
    std::fs::write(
        &copy_yaml,
        archive_yaml(&s3.endpoint, COPY_BUCKET, &credentials),
    )
    .unwrap();
    let copy_archive = archive(&archive_yaml(&s3.endpoint, COPY_BUCKET, &credentials));
    for &(start, end, _) in &segments {
        let manifest = locked.manifest(start, end).await.unwrap().unwrap();
        let mut names = vec!["entries".to_owned(), "manifest.json".to_owned()];
        names.extend(manifest.checkpoints.iter().map(|c| c.note.name.clone()));
        for name in names {
            let (bytes, _) = locked
                .get_first_version(&locked.key(start, end, &name))
                .await
                .unwrap()
                .unwrap();
            client
                .put_object()
                .bucket(COPY_BUCKET)
                .key(copy_archive.key(start, end, &name))
                .body(ByteStream::from(bytes))
                .send()
                .await
                .unwrap();
        }
    }
    let fresh = |name: &str| dir.path().join(name);
    let out = restore(&copy_yaml, &fresh("from-copy"), &vkey);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (s0, e0, _) = segments[0];
    let entries_key = copy_archive.key(s0, e0, "entries");
    let mut altered = copy_archive.get(&entries_key).await.unwrap().unwrap();
    let last = altered.len() - 3;
    altered[last] ^= 1;
    client
        .put_object()
        .bucket(COPY_BUCKET)
        .key(&entries_key)
        .body(ByteStream::from(altered))
        .send()
        .await
        .unwrap();
    restore_fails(
        &copy_yaml,
        &fresh("altered"),
        &vkey,
        &format!("segment {s0:020}-{e0:020}: entries was altered"),
    );

    let (s1, e1, _) = segments[1];
    client
        .delete_object()
        .bucket(COPY_BUCKET)
        .key(copy_archive.key(s1, e1, "manifest.json"))
        .send()
        .await
        .unwrap();
    client
        .put_object()
        .bucket(COPY_BUCKET)
        .key(&entries_key)
        .body(ByteStream::from(original.clone()))
        .send()
        .await
        .unwrap();
    restore_fails(
        &copy_yaml,
        &fresh("incomplete"),
        &vkey,
        &format!("segment {s1:020}-{e1:020}: its manifest is missing"),
    );

    let listed = client
        .list_objects_v2()
        .bucket(COPY_BUCKET)
        .prefix(copy_archive.key(s1, e1, ""))
        .send()
        .await
        .unwrap();
    for object in listed.contents() {
        client
            .delete_object()
            .bucket(COPY_BUCKET)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    restore_fails(
        &copy_yaml,
        &fresh("missing"),
        &vkey,
        &format!("segment missing: the archive has no segment starting at entry {s1}"),
    );

    nats.stop().await;
    drop(s3);
}

/// An upload cut short after its `witnessed.<size>` object, finished once more cosignatures
/// were stored: the locked object stays, and the manifest names what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upload_keeps_the_witnessed_checkpoint_already_locked() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&dir.path().join("s3")).await;
    let credentials = write_credentials(dir.path());
    let archive = locked_archive(&archive_yaml(&s3.endpoint, BUCKET, &credentials)).await;

    let mut ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
    let signer =
        gatehouse_proof::checkpoint::NoteSigner::from_seed("gatehouse.test/ledger", [3; 32])
            .unwrap();
    let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap();
    let entries: Vec<_> = (1..=5)
        .map(|n| gatehouse_evidence::store::NewEntry {
            stream_sequence: n,
            received_at: now,
            event: format!(r#"{{"type":"dev.gatehouse.test.v1","subject":"req-{n}"}}"#)
                .into_bytes(),
        })
        .collect();
    ledger.append(&entries, &[]).unwrap();
    ledger
        .issue_checkpoint(&signer, "gatehouse.test/ledger")
        .unwrap();
    // Stand-ins for the witnessed checkpoint before and after a second witness answered.
    let record = format!("checkpoint/{:020}", 5);
    let first = b"witnessed, one cosignature\n".to_vec();
    let later = b"witnessed, two cosignatures\n".to_vec();
    ledger
        .put_witness_records(&[(record.clone(), first.clone())])
        .unwrap();
    let sealed =
        gatehouse_evidence::archive::seal(&ledger, 0, 5, 2_192, time::OffsetDateTime::now_utc())
            .unwrap();
    // Cut short: every object but the manifest.
    for (name, bytes) in sealed.objects.iter().filter(|(n, _)| n != "manifest.json") {
        archive
            .put_once(&archive.key(0, 5, name), bytes.clone(), sealed.retain_until)
            .await
            .unwrap();
    }

    ledger.put_witness_records(&[(record, later)]).unwrap();
    let resealed =
        gatehouse_evidence::archive::seal(&ledger, 0, 5, 2_192, time::OffsetDateTime::now_utc())
            .unwrap();
    let (written, manifest) = archive.upload(&resealed).await.unwrap();
    assert_eq!(written, 1, "only the manifest was missing");
    let name = format!("witnessed.{:020}", 5);
    let held = archive
        .get(&archive.key(0, 5, &name))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held, first);
    // What the first seal said of the object it wrote, not what the second would have.
    assert_eq!(manifest.witnessed, sealed.manifest.witnessed);
    assert_ne!(manifest.witnessed, resealed.manifest.witnessed);
    let uploaded: Manifest = serde_json::from_slice(
        &archive
            .get(&archive.key(0, 5, "manifest.json"))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(uploaded, manifest);
}
