//! Witnesses for the tests: litewitness (filippo.io/torchwood, built from its Go module by
//! deploy/witness/build) on loopback, each with its own ssh-agent key and SQLite database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_proof::cosignature::{CosignatureVerifier, witnessed_origin};
use tokio::io::AsyncBufReadExt;

use super::{EvidenceProcess, http, text, wait_for};

/// A witness key nobody here runs (no cosignature can verify under it).
pub const STRANGER_WITNESS_VKEY: &str =
    "witness.example/w1+18041f2a+BBl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h";

/// The directory holding litewitness and witnessctl: `$GATEHOUSE_WITNESS_BIN`, else what
/// deploy/witness/build prints (it builds them on first use).
pub fn witness_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEHOUSE_WITNESS_BIN") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/witness/build");
    let out = std::process::Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("running deploy/witness/build");
    assert!(out.status.success(), "deploy/witness/build failed");
    PathBuf::from(text(&out.stdout).trim())
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut command = std::process::Command::new(program.as_ref());
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("running a witness tool");
    assert!(
        out.status.success(),
        "{:?} {args:?}: {}{}",
        program.as_ref(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// One litewitness with its own ssh-agent (holding its key) and database.
pub struct Litewitness {
    pub name: String,
    pub url: String,
    pub vkey: String,
    db: PathBuf,
    _agent: tokio::process::Child,
    _child: tokio::process::Child,
    /// What it logged (kept so a failure can be read).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Litewitness {
    /// Starts witness `name` (as `witness.test/NAME`) trusting `log_vkey` for the witnessed
    /// checkpoints of the log `origin`.
    pub async fn start(bin: &Path, dir: &Path, name: &str, origin: &str, log_vkey: &str) -> Self {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                name,
                "-f",
                key.to_str().unwrap(),
            ],
            &[],
        );
        let socket = dir.join("agent.sock");
        let agent = tokio::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting ssh-agent");
        wait_for("the ssh-agent socket", || socket.exists()).await;
        run(
            "ssh-add",
            &["-q", key.to_str().unwrap()],
            &[("SSH_AUTH_SOCK", &socket)],
        );
        let fingerprint = run(
            "ssh-keygen",
            &["-l", "-f", &format!("{}.pub", key.display())],
            &[],
        )
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned();
        let db = dir.join("witness.db");
        let origin = witnessed_origin(origin);
        let db_arg = db.to_str().unwrap();
        let witnessctl = bin.join("witnessctl");
        run(
            &witnessctl,
            &["add-log", "-db", db_arg, "-origin", &origin],
            &[],
        );
        run(
            &witnessctl,
            &[
                "add-key", "-db", db_arg, "-origin", &origin, "-key", log_vkey,
            ],
            &[],
        );
        let mut child = tokio::process::Command::new(bin.join("litewitness"))
            .args(["-name", &format!("witness.test/{name}"), "-db", db_arg])
            .arg("-ssh-agent")
            .arg(&socket)
            .args(["-key", &fingerprint, "-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting litewitness");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let vkey = tokio::time::timeout(Duration::from_secs(30), async {
            let mut vkey = None;
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line.clone());
                if let Some(at) = line.find("vkey=") {
                    vkey = Some(line[at + 5..].split_whitespace().next().unwrap().to_owned());
                }
                if line.contains("msg=listening") {
                    return vkey.expect("litewitness logs its verifier key first");
                }
            }
            panic!(
                "litewitness {name} stopped:\n{}",
                log.lock().unwrap().join("\n")
            );
        })
        .await
        .expect("litewitness listening");
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        // It logs the address it was given (port 0); the port it bound is read from /proc.
        let pid = child.id().expect("running");
        let port = listening_port(pid).await;
        Self {
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            vkey,
            db,
            _agent: agent,
            _child: child,
            log,
        }
    }

    /// Its entry in the evidence configuration's `witnesses.list`.
    pub fn config_line(&self) -> String {
        format!(
            "    - {{name: {}, url: {:?}, vkey: {:?}}}\n",
            self.name, self.url, self.vkey
        )
    }

    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier::from_vkey(&self.vkey).expect("litewitness's vkey")
    }

    /// The size of the log the witness last cosigned (witnessctl list-logs).
    pub fn size(&self, bin: &Path) -> u64 {
        let out = run(
            bin.join("witnessctl"),
            &["list-logs", "-db", self.db.to_str().unwrap()],
            &[],
        );
        let line: serde_json::Value = serde_json::from_str(out.trim()).expect("one log");
        line["size"].as_u64().expect("a size")
    }
}

/// The TCP port process `pid` listens on at 127.0.0.1 (its socket inodes in /proc/PID/fd,
/// matched in /proc/net/tcp).
async fn listening_port(pid: u32) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter_map(|l| {
                        let l = l.to_string_lossy().into_owned();
                        Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        for row in table.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (addr, port) = f[1].split_once(':').unwrap();
                if addr == "0100007F" {
                    return u16::from_str_radix(port, 16).unwrap();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "litewitness {pid} never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `gatehouse verify BUNDLE --key VKEY --witness W… --min-witnesses MIN`.
pub fn verify_witnessed(
    bundle: &Path,
    vkey: &str,
    witnesses: &[&str],
    min: usize,
) -> std::process::Output {
    let min = min.to_string();
    let mut args = vec!["verify", bundle.to_str().unwrap(), "--key", vkey, "--quiet"];
    for w in witnesses {
        args.extend(["--witness", w]);
    }
    args.extend(["--min-witnesses", &min]);
    super::cli(&args)
}

/// [`verify_witnessed`] by the independent verifier (`tests/independent/verify_bundle.py`,
/// written from `schemas/` alone), in the Python of `deploy/local/setup`.
pub fn verify_independently(
    bundle: &Path,
    vkey: &str,
    witnesses: &[&str],
    min: usize,
) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let venv = std::env::var_os("GATEHOUSE_VENV").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/gatehouse/venv"),
        PathBuf::from,
    );
    let key_file = dir.path().join("checkpoint.vkey");
    std::fs::write(&key_file, format!("{vkey}\n")).unwrap();
    let mut command = std::process::Command::new(venv.join("bin/python"));
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/independent/verify_bundle.py"
        ))
        .arg(bundle)
        .arg(&key_file);
    for (n, w) in witnesses.iter().enumerate() {
        let file = dir.path().join(format!("witness-{n}.vkey"));
        std::fs::write(&file, format!("{w}\n")).unwrap();
        command.arg("--witness").arg(file);
    }
    command.args(["--min-witnesses", &min.to_string()]);
    command.output().unwrap()
}

/// An evidence configuration with an hourly checkpoint key and `witness_list` (its `list:`
/// lines), for the caller to extend.
pub fn witnessed_evidence_config(
    data_dir: &Path,
    nats_url: &str,
    key_file: &Path,
    witness_list: &str,
) -> String {
    format!(
        "data_dir: {:?}\nnats: {{url: {nats_url:?}}}\nreplica: evidence\n\
         admin_listen: 127.0.0.1:0\n\
         checkpoints: {{key_file: {:?}, every: 1h}}\n\
         witnesses:\n  timeout: 10s\n  list:\n{witness_list}",
        data_dir.display().to_string(),
        key_file.display().to_string(),
    )
}

/// What witnesses are told to trust: the checkpoint key under the witnessed origin.
pub fn log_vkey(
    checkpoint_key: &gatehouse_proof::checkpoint::NoteVerifier,
    origin: &str,
) -> String {
    checkpoint_key
        .with_name(&witnessed_origin(origin))
        .unwrap()
        .to_vkey()
}

/// Expects `verify_witnessed` to have refused: `cosigned` of the `given` keys cosigned, fewer
/// than `needed`, and the refusal names `missing` as having no cosignature.
pub fn assert_too_few_cosigners(
    refused: &std::process::Output,
    (cosigned, given, needed): (usize, usize, usize),
    missing: &str,
) {
    assert_eq!(refused.status.code(), Some(1));
    let why = text(&refused.stderr);
    assert!(
        why.contains(&format!(
            "{cosigned} of the {given} witness keys given cosigned the checkpoint, fewer than \
             the {needed} required"
        )) && why.contains(&format!("{missing}: no cosignature")),
        "{why}"
    );
}

/// Expects `verify_witnessed` to have passed, its report naming each witness as a cosigner.
pub fn assert_cosigned_by(verified: &std::process::Output, witnesses: &[&Litewitness]) {
    let report = text(&verified.stdout);
    assert!(
        verified.status.success(),
        "{report}{}",
        text(&verified.stderr)
    );
    for w in witnesses {
        let line = format!("cosigned by  witness.test/{}", w.name);
        assert!(report.contains(&line), "{report}");
    }
}

/// `POST /checkpoint`: signs one now and submits it to the witnesses; its size.
pub async fn checkpoint_now(evidence: &EvidenceProcess) -> u64 {
    let (status, body) = http(&evidence.admin, "POST", "/checkpoint", "").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["size"].as_u64().unwrap()
}
