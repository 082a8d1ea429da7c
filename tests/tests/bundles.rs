//! Evidence bundles from a real ledger: exported with `gatehouse export`'s code path, verified
//! offline with `gatehouse verify`'s, with the stack's own checkpoint key.

use std::process::Stdio;

use gatehouse::bundle_cmd::{ExportArgs, VerifyArgs, export, verify};
use gatehouse_proof::bundle;
use gatehouse_proof::checkpoint::NoteVerifier;
use gatehouse_tests::{DEADLINE, TestBed};

type Result = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_of_the_whole_ledger_and_one_of_an_identity_verify_offline() -> Result {
    let bed = TestBed::start().await?;
    let out = bed
        .kubectl("ci-deployer", &["get", "pods", "-n", "apps"])
        .await?;
    assert!(out.success, "{}", out.stderr);
    let out = bed
        .kubectl("readonly-bot", &["get", "secrets", "-n", "apps"])
        .await?;
    assert!(!out.success);
    let mut exec = bed.kubectl_command_as(
        "ci-deployer",
        &[
            "exec",
            "web",
            "-n",
            "apps",
            "--",
            "sh",
            "-c",
            "echo bundled",
        ],
    )?;
    let output = tokio::time::timeout(DEADLINE, exec.stdin(Stdio::null()).output()).await??;
    assert!(output.status.success());
    let finished = bed.finish().await?;
    let data_dir = finished.data_dir.clone();
    let vkey_file = data_dir.join("checkpoint/checkpoint.vkey");
    let key = NoteVerifier::from_vkey(&std::fs::read_to_string(&vkey_file)?)?;
    let dir = tempfile::tempdir()?;

    // Everything.
    let all = dir.path().join("all.tar.gz");
    let args = |output: std::path::PathBuf| ExportArgs {
        data_dir: data_dir.clone(),
        from: None,
        to: None,
        principal: None,
        namespace: None,
        request_id: None,
        output,
        key: data_dir.join("checkpoint/checkpoint.key"),
        since: None,
        quiet: true,
    };
    export(args(all.clone()))?;
    let verified =
        bundle::verify(&all, Some(&key), |_| {}).map_err(|f| anyhow::anyhow!("{f:?}"))?;
    assert_eq!(
        verified.manifest.counts.events,
        finished.events.len() as u64
    );
    assert!(verified.manifest.contiguous);
    assert_eq!(verified.manifest.counts.sessions, 1, "the exec's recording");
    assert!(!verified.key_from_bundle);
    let code = verify(VerifyArgs {
        bundle: all.clone(),
        key: Some(vkey_file.display().to_string()),
        trusted: None,
        trusted_key: None,
        json: true,
        quiet: true,
        witnesses: Vec::new(),
        min_witnesses: 0,
    })?;
    assert_eq!(code, std::process::ExitCode::SUCCESS);

    // One identity: its requests only, with their outcomes.
    let mine = dir.path().join("readonly.tar.gz");
    export(ExportArgs {
        principal: Some("readonly-bot".into()),
        ..args(mine.clone())
    })?;
    let verified =
        bundle::verify(&mine, Some(&key), |_| {}).map_err(|f| anyhow::anyhow!("{f:?}"))?;
    assert!(!verified.manifest.contiguous);
    let events: Vec<serde_json::Value> = {
        let unpacked = tempfile::tempdir()?;
        let file = std::fs::File::open(&mine)?;
        tar::Archive::new(flate2::read::GzDecoder::new(file)).unpack(unpacked.path())?;
        std::fs::read_to_string(unpacked.path().join("events.jsonl"))?
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()?
    };
    assert!(!events.is_empty());
    let received: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == "dev.gatehouse.request.received.v1")
        .collect();
    assert!(
        received
            .iter()
            .all(|e| e["data"]["identity"]["principal"] == "readonly-bot")
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "dev.gatehouse.request.denied.v1")
    );

    // A verifier written from schemas/ledger.md and schemas/bundle.md alone agrees.
    let independent = |bundle: &std::path::Path| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(gatehouse_tests::python()?)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/independent/verify_bundle.py"
            ))
            .arg(bundle)
            .arg(&vkey_file)
            .output()?)
    };
    for bundle in [&all, &mine] {
        let out = independent(bundle)?;
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Changed bytes, or another key, fail.
    let mut bytes = std::fs::read(&all)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let changed = dir.path().join("changed.tar.gz");
    std::fs::write(&changed, &bytes)?;
    assert!(bundle::verify(&changed, Some(&key), |_| {}).is_err());
    let code = verify(VerifyArgs {
        bundle: changed.clone(),
        key: Some(vkey_file.display().to_string()),
        trusted: None,
        trusted_key: None,
        json: false,
        quiet: true,
        witnesses: Vec::new(),
        min_witnesses: 0,
    })?;
    assert_eq!(code, std::process::ExitCode::from(1));
    assert!(!independent(&changed)?.status.success());
    let other =
        gatehouse_proof::checkpoint::NoteSigner::from_seed("gatehouse.local/ledger", [1; 32])?;
    let failures = bundle::verify(&all, Some(&other.verifier()), |_| {}).unwrap_err();
    assert!(
        failures[0].starts_with("rule 7 (checkpoint)"),
        "{failures:?}"
    );
    Ok(())
}
