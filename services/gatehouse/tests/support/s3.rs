//! The archive for the tests: versitygw (an S3 server with Object Lock, built from its Go
//! module by deploy/archive/build) on loopback, and what reads the archiving's progress.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use gatehouse_evidence::Ledger;
use gatehouse_evidence::archive::{Archive, ArchiveConfig};

use super::{cli, text};

pub const ACCESS_KEY: &str = "gatehouse-archive-test";
pub const SECRET_KEY: &str = "not-a-real-secret-but-long-enough";
/// The directory holding `versitygw`: `$GATEHOUSE_ARCHIVE_S3_BIN` (set by deploy/local/test),
/// else whatever `deploy/archive/build` prints.
pub fn s3_server_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEHOUSE_ARCHIVE_S3_BIN") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/archive/build");
    let out = std::process::Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running deploy/archive/build");
    assert!(out.status.success(), "deploy/archive/build failed");
    PathBuf::from(text(&out.stdout).trim())
}

/// A free loopback port (bound, read back, released; the server may lose a race for it, and
/// then the caller tries another).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// versitygw on 127.0.0.1 over a POSIX directory, with versioning (Object Lock needs it).
pub struct S3Server {
    _child: tokio::process::Child,
    pub endpoint: String,
}

impl S3Server {
    pub async fn start(dir: &Path) -> Self {
        let bin = s3_server_bin().join("versitygw");
        let (root, versions) = (dir.join("root"), dir.join("versions"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&versions).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = tokio::process::Command::new(&bin)
                .env("ROOT_ACCESS_KEY_ID", ACCESS_KEY)
                .env("ROOT_SECRET_ACCESS_KEY", SECRET_KEY)
                .arg("--port")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--quiet")
                .arg("posix")
                .arg("--versioning-dir")
                .arg(&versions)
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("starting versitygw");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port: try another
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Self {
                        _child: child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                    };
                }
                assert!(Instant::now() < deadline, "versitygw did not listen");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("versitygw did not start on any of 5 ports");
    }
}

pub fn write_credentials(dir: &Path) -> PathBuf {
    let path = dir.join("s3-credentials.yaml");
    std::fs::write(
        &path,
        format!("access_key_id: {ACCESS_KEY}\nsecret_access_key: {SECRET_KEY}\n"),
    )
    .unwrap();
    path
}

pub fn archive_yaml(endpoint: &str, bucket: &str, credentials: &Path) -> String {
    format!(
        "bucket: {bucket}\nendpoint: {endpoint}\npath_style: true\ncredentials_file: {:?}\n\
         prefix: test/ledger\nevery: 1s\nsegment_max_entries: 50\n",
        credentials.display().to_string()
    )
}

/// The archive `yaml` (an `archive:` section) describes, its bucket created with Object Lock.
pub async fn locked_archive(yaml: &str) -> Archive {
    let config: ArchiveConfig = yaml_serde::from_str(yaml).unwrap();
    let archive = Archive::connect(&config).unwrap();
    archive
        .client()
        .create_bucket()
        .bucket(&config.bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("a bucket with Object Lock");
    archive
}

/// (entries, archived through) of the ledger in `data_dir`, read without the writer's lock.
pub fn archive_progress(data_dir: &Path) -> (u64, u64) {
    match Ledger::open_read_only(data_dir) {
        Ok(l) => (
            l.head().next_index,
            l.archived_through().ok().flatten().unwrap_or(0),
        ),
        Err(_) => (0, 0),
    }
}

/// `gatehouse ledger restore --from-archive CONFIG --data-dir DATA_DIR --key VKEY`.
pub fn restore(config: &Path, data_dir: &Path, vkey: &str) -> std::process::Output {
    cli(&[
        "ledger",
        "restore",
        "--from-archive",
        config.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--key",
        vkey,
    ])
}

/// [`restore`], which must succeed; its output.
pub fn restored(config: &Path, data_dir: &Path, vkey: &str) -> std::process::Output {
    let out = restore(config, data_dir, vkey);
    assert!(
        out.status.success(),
        "restore failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}
