//! `gatehouse export`, `verify`, and `checkpoint list` as an operator and an auditor run them:
//! a signed v2 bundle with a session recording, a consistency proof from a checkpoint the
//! auditor saved earlier, and failures that name the rule of `schemas/bundle.md` they break.

mod support;

use std::path::Path;

use gatehouse_evidence::Ledger;
use gatehouse_evidence::store::NewEntry;
use support::{checkpoint_key, cli, text};

fn events(from: u64, to: u64) -> Vec<String> {
    (from..to)
        .map(|i| {
            let time = format!("2026-11-22T16:00:{i:02}Z");
            match i {
                0 => format!(
                    r#"{{"id":"e{i}","type":"dev.gatehouse.request.received.v1","subject":"R1","time":"{time}","data":{{"identity":{{"principal":"ci"}},"request":{{"namespace":"apps"}}}}}}"#
                ),
                1 => format!(
                    r#"{{"id":"e{i}","type":"dev.gatehouse.session.started.v1","subject":"S1","time":"{time}","data":{{"session_id":"S1","request_id":"R1","principal":"ci","namespace":"apps","pod":"web","command":["sh"]}}}}"#
                ),
                2 => format!(
                    r#"{{"id":"e{i}","type":"dev.gatehouse.session.data.v1","subject":"S1","time":"{time}","data":{{"seq":0,"at_ms":5,"channel":"stdout","data":"aGkK"}}}}"#
                ),
                _ => format!(
                    r#"{{"id":"e{i}","type":"dev.gatehouse.request.received.v1","subject":"R{i}","time":"{time}","data":{{"identity":{{"principal":"other"}},"request":{{"namespace":"prod"}}}}}}"#
                ),
            }
        })
        .collect()
}

fn append(data_dir: &Path, events: Vec<String>) {
    let mut ledger = Ledger::open(data_dir).unwrap();
    let start = ledger.head().last_sequence;
    let batch: Vec<NewEntry> = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| NewEntry {
            stream_sequence: start + 1 + i as u64,
            received_at: (start + i as u64) as i64,
            event: event.into_bytes(),
        })
        .collect();
    ledger.append(&batch, &[]).unwrap();
    ledger.flush().unwrap();
}

fn sign(data: &str, key: &str) {
    let out = cli(&["checkpoint", "sign", "--data-dir", data, "--key", key]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The JSON report of a verification that succeeded.
fn verified(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(&text(&out.stdout)).unwrap()
}

/// A verification that failed (exit 1) naming `rule`.
fn fails(out: std::process::Output, rule: &str) {
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(rule), "{}", text(&out.stderr));
}

#[test]
fn an_auditor_checks_a_bundle_extends_the_checkpoint_they_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, verifier) = checkpoint_key(dir.path());
    let key = key_file.to_str().unwrap();
    let vkey = verifier.to_vkey();
    let data_dir = dir.path().join("evidence");
    let data = data_dir.to_str().unwrap();
    append(&data_dir, events(0, 5));
    sign(data, key);
    append(&data_dir, events(5, 9));
    sign(data, key);

    // The auditor saves the checkpoints (here the first one matters).
    let saved = dir.path().join("saved");
    let out = cli(&[
        "checkpoint",
        "list",
        "--data-dir",
        data,
        "--json",
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sizes: Vec<u64> = listed.iter().map(|c| c["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [5, 9]);
    let old = saved.join("checkpoint-5");
    assert_eq!(
        std::fs::read_to_string(&old).unwrap(),
        listed[0]["note"].as_str().unwrap()
    );
    let out = cli(&["checkpoint", "list", "--data-dir", data, "--after", "5"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );

    // A bundle since that checkpoint: it verifies, and extends it.
    let bundle = dir.path().join("since.tar.gz");
    let export = |bundle: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--data-dir",
            data,
            "--key",
            key,
            "--quiet",
            "-o",
            bundle.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let out = export(&bundle, &["--since", old.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verify = |bundle: &Path, extra: &[&str]| {
        let mut args = vec![
            "verify",
            bundle.to_str().unwrap(),
            "--key",
            &vkey,
            "--quiet",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let report = verified(verify(
        &bundle,
        &["--trusted", old.to_str().unwrap(), "--json"],
    ));
    assert_eq!(report["format"], "gatehouse.bundle.v2");
    assert_eq!(report["trusted"]["size"], 5);
    assert_eq!(report["extends"]["size"], 5);
    assert_eq!(report["sessions"], 1, "the session's recording");
    assert_eq!(report["warnings"], serde_json::json!([]));

    // Without a consistency proof, --trusted fails naming rule 12.
    let plain = dir.path().join("plain.tar.gz");
    let out = export(&plain, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(verify(&plain, &[]).status.success());
    // Bounds asked for with an offset are written in UTC, as the manifest's times are.
    let ranged = dir.path().join("ranged.tar.gz");
    let out = export(&ranged, &["--from", "2026-11-22T17:00:02+01:00"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = verified(verify(&ranged, &["--json"]));
    assert_eq!(report["first_index"], 2, "events from 16:00:02Z on");
    fails(
        verify(&plain, &["--trusted", old.to_str().unwrap()]),
        "rule 12 (trusted checkpoint)",
    );

    // A changed byte fails naming rule 1.
    let mut bytes = std::fs::read(&plain).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let changed = dir.path().join("changed.tar.gz");
    std::fs::write(&changed, bytes).unwrap();
    fails(verify(&changed, &[]), "rule 1 (seal)");

    // Exporting with a key that did not sign the checkpoint is refused, clearly.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (other_key, _) = checkpoint_key(&other);
    let out = cli(&[
        "export",
        "--data-dir",
        data,
        "--key",
        other_key.to_str().unwrap(),
        "--quiet",
        "-o",
        dir.path().join("x.tar.gz").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an error, not a failed verification"
    );
    assert!(
        text(&out.stderr).contains("is not signed by the key given"),
        "{}",
        text(&out.stderr)
    );
}
