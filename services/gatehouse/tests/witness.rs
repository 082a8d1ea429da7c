//! Witnesses written by others: three litewitness processes (filippo.io/torchwood, built from
//! its Go module by deploy/witness/build) on loopback, each with its own ssh-agent key and
//! SQLite database, cosign the checkpoints of a `gatehouse evidence` process on a real
//! nats-server. Two cosign every checkpoint, proving consistency from the size they last
//! cosigned (after a restart too); a bundle exported afterwards passes `gatehouse verify
//! --witness W1 --witness W2 --min-witnesses 2` and fails with a witness that did not cosign.
//! The third was first fed a fork (another tree at size 1, signed with the log's own key): it
//! refuses the real checkpoints, which raises the alarm (log line and metric).

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::nats_server::NatsServer;
use gatehouse_bus::{Bus, BusConfig};
use gatehouse_evidence::Ledger;
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};
use gatehouse_proof::cosignature::{CosignatureVerifier, witnessed_body, witnessed_origin};
use tokio::io::AsyncBufReadExt;

const ORIGIN: &str = "gatehouse.test/ledger";

/// The directory holding litewitness and witnessctl: `$GATEHOUSE_WITNESS_BIN`, else what
/// deploy/witness/build prints (it builds them on first use).
fn witness_bin() -> PathBuf {
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
struct Litewitness {
    name: String,
    url: String,
    vkey: String,
    db: PathBuf,
    _agent: tokio::process::Child,
    _child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Litewitness {
    async fn start(bin: &Path, dir: &Path, name: &str, log_vkey: &str) -> Self {
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
        let origin = witnessed_origin(ORIGIN);
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

    fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier::from_vkey(&self.vkey).expect("litewitness's vkey")
    }

    /// The size of the log the witness last cosigned (witnessctl list-logs).
    fn size(&self, bin: &Path) -> u64 {
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

/// `POST /checkpoint`: signs one now and submits it to the witnesses; its size.
async fn checkpoint(evidence: &EvidenceProcess) -> u64 {
    let (status, body) = http(&evidence.admin, "POST", "/checkpoint", "").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["size"].as_u64().unwrap()
}

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
    // What witnesses are told to trust: the checkpoint key under the witnessed origin.
    let log_vkey = verifier
        .with_name(&witnessed_origin(ORIGIN))
        .unwrap()
        .to_vkey();

    let w1 = Litewitness::start(&bin, dir.path(), "w1", &log_vkey).await;
    let w2 = Litewitness::start(&bin, dir.path(), "w2", &log_vkey).await;
    let w3 = Litewitness::start(&bin, dir.path(), "w3", &log_vkey).await;

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
    let mut witness_list: String = [&w1, &w2, &w3]
        .iter()
        .map(|w| {
            format!(
                "    - {{name: {}, url: {:?}, vkey: {:?}}}\n",
                w.name, w.url, w.vkey
            )
        })
        .collect();
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
        format!(
            "data_dir: {:?}\nnats: {{url: {nats_url:?}}}\nreplica: evidence\n\
             admin_listen: 127.0.0.1:0\n\
             checkpoints: {{key_file: {:?}, every: 1h}}\n\
             witnesses:\n  timeout: 10s\n  list:\n{witness_list}",
            data_dir.display().to_string(),
            key_file.display().to_string(),
        ),
    )
    .unwrap();

    let bus = Bus::connect(&BusConfig::new(&nats_url), "witness-publisher")
        .await
        .unwrap();
    bus.ensure_stream(&BusConfig::new(&nats_url).stream)
        .await
        .unwrap();
    publish(&bus, 20).await;

    let evidence = EvidenceProcess::start(&config).await;
    wait_for("the ledger to hold the first events", || {
        entries(&data_dir) >= 20
    })
    .await;
    let first = checkpoint(&evidence).await;
    assert!(first >= 20);
    assert_eq!(cosigners(&data_dir, first, &[&w1, &w2, &w3]), ["w1", "w2"]);

    // More events: the next checkpoint is cosigned with a consistency proof from the first,
    // which litewitness checks.
    publish(&bus, 37).await;
    wait_for("the ledger to hold every event", || {
        entries(&data_dir) >= first + 37
    })
    .await;
    let second = checkpoint(&evidence).await;
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
    let third = checkpoint(&evidence).await;
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
    let out = cli(&[
        "export",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = verifier.to_vkey();
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", bundle.to_str().unwrap(), "--key", &key, "--quiet"];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let ok = verify(&[
        "--witness",
        &w1.vkey,
        "--witness",
        &w2.vkey,
        "--min-witnesses",
        "2",
    ]);
    assert!(
        ok.status.success(),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    let report = text(&ok.stdout);
    assert!(report.contains("cosigned by  witness.test/w1"), "{report}");
    assert!(report.contains("cosigned by  witness.test/w2"), "{report}");

    // Three required, and the third witness given never cosigned: refused, naming it.
    let three = verify(&[
        "--witness",
        &w1.vkey,
        "--witness",
        &w2.vkey,
        "--witness",
        &w3.vkey,
        "--min-witnesses",
        "3",
    ]);
    assert_eq!(three.status.code(), Some(1));
    let why = text(&three.stderr);
    assert!(
        why.contains(
            "2 of the 3 witness keys given cosigned the checkpoint, fewer than the 3 required"
        ) && why.contains("witness.test/w3: no cosignature"),
        "{why}"
    );
    // A witness nobody here runs: refused.
    let stranger = CosignatureVerifier::from_vkey(
        "witness.example/w1+18041f2a+BBl/ayPhbIUyxqvIOPrNXqeJvgx2spIDNAOb+os9No1h",
    )
    .unwrap();
    let unknown = verify(&["--witness", &stranger.to_vkey(), "--min-witnesses", "1"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("0 of the 1 witness keys"),
        "{}",
        text(&unknown.stderr)
    );
    let _ = (&w1.log, &w2.log, &w3.log);
}
