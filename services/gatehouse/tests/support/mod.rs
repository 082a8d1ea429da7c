//! What the tests that run the `gatehouse` binary against a real nats-server share.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::process::Output;
use std::time::{Duration, Instant};

use gatehouse_evidence::Ledger;
use gatehouse_proof::checkpoint::NoteVerifier;

/// Runs `gatehouse ARGS` to completion.
pub fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .expect("running gatehouse")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A valid `request.forwarded` event from proxy replica `replica`, for load on the stream.
pub fn event(
    replica: &str,
    n: usize,
) -> gatehouse_events::Envelope<gatehouse_events::RequestForwarded> {
    let id = gatehouse_events::EventId::new().to_string();
    gatehouse_events::Envelope::new(
        &gatehouse_events::envelope::source("proxy", replica),
        &id,
        gatehouse_events::RequestForwarded {
            request_id: id.clone(),
            upstream: "https://127.0.0.1:6443".into(),
            impersonated_user: format!("bot-{n}"),
            impersonated_groups: vec![],
        },
    )
}

/// Waits (at most a minute) until `done`.
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Entries in the ledger at `data_dir` (0 while it cannot be opened).
pub fn entries(data_dir: &std::path::Path) -> u64 {
    Ledger::open_read_only(data_dir)
        .map(|l| l.head().next_index)
        .unwrap_or(0)
}

/// `gatehouse checkpoint keygen` into `dir/checkpoint.key`: the key file and its verifier.
pub fn checkpoint_key(dir: &std::path::Path) -> (std::path::PathBuf, NoteVerifier) {
    let key_file = dir.join("checkpoint.key");
    let out = cli(&[
        "checkpoint",
        "keygen",
        "--name",
        "gatehouse.test/ledger",
        "--out",
        key_file.to_str().expect("a UTF-8 temporary path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verifier = NoteVerifier::from_vkey(&text(&out.stdout)).expect("a verifier key");
    (key_file, verifier)
}
