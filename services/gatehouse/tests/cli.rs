//! The `gatehouse` binary as a user runs it: exit codes and messages.

use std::path::Path;
use std::process::{Command, Output};

use gatehouse_evidence::Ledger;
use gatehouse_evidence::store::{CF_ENTRIES, NewEntry, ledger_dir};

fn gatehouse(args: &[&str]) -> Output {
    gatehouse_with_env(args, &[])
}

fn gatehouse_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    command.args(args).env("GATEHOUSE_LOG", "error");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the gatehouse binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ledger_with(dir: &Path, entries: u64) {
    let mut ledger = Ledger::open(dir).unwrap();
    let batch: Vec<NewEntry> = (1..=entries)
        .map(|seq| NewEntry {
            stream_sequence: seq,
            received_at: seq as i64,
            event: format!(r#"{{"n":{seq}}}"#).into_bytes(),
        })
        .collect();
    ledger.append(&batch, &[]).unwrap();
    ledger.flush().unwrap();
}

#[test]
fn verify_exits_zero_on_a_sound_ledger() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 20);
    let out = gatehouse(&[
        "ledger",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("ledger verify: OK"), "{stdout}");
    assert!(stdout.contains("entries        20"), "{stdout}");

    let json = gatehouse(&[
        "ledger",
        "verify",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["entries"], 20);
}

#[test]
fn verify_exits_one_naming_the_tampered_entry() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 20);
    {
        let path = ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let cf = db.cf_handle(CF_ENTRIES).unwrap();
        let mut value = db.get_cf(&cf, 13u64.to_be_bytes()).unwrap().unwrap();
        let last = value.len() - 2;
        value[last] = b'9';
        db.put_cf(&cf, 13u64.to_be_bytes(), value).unwrap();
    }
    let out = gatehouse(&[
        "ledger",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ledger verify: FAILED at entry 13"),
        "{stderr}"
    );
    assert!(stderr.contains("entry 13 was changed"), "{stderr}");

    let json = gatehouse(&[
        "ledger",
        "verify",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_index"], 13);
}

#[test]
fn verify_without_a_ledger_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = gatehouse(&[
        "ledger",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no ledger at"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_configuration_is_refused_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let out = gatehouse(&["proxy", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("reading configuration"),
        "{}",
        text(&out.stderr)
    );

    let bad = dir.path().join("evidence.yaml");
    std::fs::write(
        &bad,
        "data_dir: /tmp/x\nnats:\n  url: nats://127.0.0.1:4222\nbatch_maximum: 5\n",
    )
    .unwrap();
    let out = gatehouse(&["evidence", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("evidence.yaml") && stderr.contains("batch_maximum"),
        "{stderr}"
    );
    assert!(stderr.contains("line 4"), "{stderr}");
}

/// `gatehouse up` is `gatehouse-up`, found beside the binary or on PATH; the product binary
/// itself has no stack to start.
#[test]
fn up_runs_gatehouse_up_from_beside_the_binary_and_says_so_when_it_is_missing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("gatehouse");
    std::fs::copy(env!("CARGO_BIN_EXE_gatehouse"), &alone).unwrap();
    let out = Command::new(&alone)
        .args(["up", "--data-dir", "x"])
        .env("PATH", dir.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("gatehouse-up"), "{stderr}");
    assert!(stderr.contains("deploy/local/gatehouse up"), "{stderr}");

    // With a gatehouse-up beside it, `up` hands it every argument unchanged, flags included.
    let up = dir.path().join("gatehouse-up");
    std::fs::write(&up, "#!/bin/sh\nprintf '%s|' \"$@\"\n").unwrap();
    std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&alone)
        .args(["up", "--sandbox", "--data-dir", "a b", "--help"])
        .env("PATH", dir.path().join("empty"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "--sandbox|--data-dir|a b|--help|");
}

#[test]
fn a_ledger_whose_files_were_removed_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 20);
    let table = std::fs::read_dir(ledger_dir(dir.path()))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .expect("a table file");
    std::fs::remove_file(table.path()).unwrap();
    let out = gatehouse(&[
        "ledger",
        "verify",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("FAILED: the ledger cannot be opened"),
        "{stderr}"
    );
}

#[test]
fn checkpoint_keys_sign_and_show_and_a_rewritten_tree_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("checkpoint.key");
    let out = gatehouse(&[
        "checkpoint",
        "keygen",
        "--name",
        "gatehouse.example.com/ledger",
        "--out",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vkey = text(&out.stdout).trim().to_owned();
    assert!(vkey.starts_with("gatehouse.example.com/ledger+"), "{vkey}");
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(
        !text(&out.stdout).contains(secret.trim()),
        "the private key is never printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // keygen never overwrites a key.
    let again = gatehouse(&[
        "checkpoint",
        "keygen",
        "--name",
        "x",
        "--out",
        key.to_str().unwrap(),
    ]);
    assert!(!again.status.success());

    ledger_with(dir.path(), 5);
    let data = dir.path().to_str().unwrap();
    let out = gatehouse(&[
        "checkpoint",
        "sign",
        "--data-dir",
        data,
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let note = text(&out.stdout);
    assert!(
        note.starts_with("gatehouse.example.com/ledger\n5\n"),
        "{note}"
    );
    let show = gatehouse(&["checkpoint", "show", "--data-dir", data, "--vkey", &vkey]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert!(text(&show.stderr).contains("checkpoint: OK"));

    // Someone rewrites a tree node behind the ledger's back: show fails, and no new checkpoint
    // is signed over it.
    {
        let path = gatehouse_evidence::store::ledger_dir(dir.path());
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, cfs).unwrap();
        let tree = db.cf_handle(gatehouse_evidence::store::CF_TREE).unwrap();
        let mut node = vec![2u8];
        node.extend_from_slice(&0u64.to_be_bytes());
        db.put_cf(&tree, node, [9u8; 32]).unwrap();
    }
    let show = gatehouse(&["checkpoint", "show", "--data-dir", data, "--vkey", &vkey]);
    assert_eq!(show.status.code(), Some(1), "{}", text(&show.stderr));
    assert!(text(&show.stderr).contains("no longer has the signed root"));
    let sign = gatehouse(&[
        "checkpoint",
        "sign",
        "--data-dir",
        data,
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!sign.status.success());
    assert!(
        text(&sign.stderr).contains("refusing to sign"),
        "{}",
        text(&sign.stderr)
    );
    assert!(!text(&sign.stderr).contains(secret.trim()));
}

#[test]
fn legal_holds_keep_what_they_match_when_the_ledger_is_pruned() {
    let dir = tempfile::tempdir().unwrap();
    // Five entries received in 1970: all long past any retention.
    ledger_with(dir.path(), 5);
    let data = dir.path().to_str().unwrap();
    // Entries 0 and 1 were received at 1 ns and 2 ns.
    let placed = gatehouse(&[
        "ledger",
        "hold",
        "place",
        "--data-dir",
        data,
        "--reason",
        "matter 17",
        "--by",
        "counsel@example.com",
        "--from",
        "1970-01-01T00:00:00Z",
        "--to",
        "1970-01-01T00:00:00.000000003Z",
    ]);
    assert!(placed.status.success(), "{}", text(&placed.stderr));
    let hold_id = text(&placed.stdout).trim().to_owned();
    let list = gatehouse(&["ledger", "hold", "list", "--data-dir", data]);
    assert!(text(&list.stdout).contains(&hold_id) && text(&list.stdout).contains("matter 17"));
    let empty = gatehouse(&[
        "ledger",
        "hold",
        "place",
        "--data-dir",
        data,
        "--reason",
        "x",
        "--by",
        "y",
    ]);
    assert!(!empty.status.success(), "a hold without a query is refused");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut nats = runtime
        .block_on(gatehouse::nats_server::NatsServer::start(
            &dir.path().join("nats"),
        ))
        .unwrap();
    let config = dir.path().join("evidence.yaml");
    std::fs::write(
        &config,
        format!("data_dir: {data:?}\nnats: {{url: {:?}}}\n", nats.url()),
    )
    .unwrap();
    let out = gatehouse(&["ledger", "prune", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pruned 3 entries (indexes 2 to 4), kept 2"),
        "{}",
        text(&out.stderr)
    );
    // The hashes all stay: the ledger still verifies, with the pruned entries counted.
    let verify = gatehouse(&["ledger", "verify", "--data-dir", data, "--json"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    assert!(
        text(&verify.stdout).contains("\"pruned\":3"),
        "{}",
        text(&verify.stdout)
    );
    // A bundle of the pruned ledger accounts for the pruned entries with tombstones.
    let key = dir.path().join("checkpoint.key");
    let keygen = gatehouse(&[
        "checkpoint",
        "keygen",
        "--name",
        "gatehouse.test/ledger",
        "--out",
        key.to_str().unwrap(),
    ]);
    let vkey = text(&keygen.stdout).trim().to_owned();
    let key = key.to_str().unwrap();
    let signed = gatehouse(&["checkpoint", "sign", "--data-dir", data, "--key", key]);
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let bundle = dir.path().join("pruned.tar.gz");
    let bundle = bundle.to_str().unwrap();
    let export = gatehouse(&[
        "export",
        "--data-dir",
        data,
        "--key",
        key,
        "--quiet",
        "-o",
        bundle,
    ]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let checked = gatehouse(&["verify", bundle, "--key", &vkey, "--json", "--quiet"]);
    assert!(checked.status.success(), "{}", text(&checked.stdout));
    assert!(
        text(&checked.stdout).contains("\"tombstones\":3"),
        "{}",
        text(&checked.stdout)
    );
    // ledger.pruned was recorded on NATS.
    let stored = runtime.block_on(async {
        let bus = gatehouse_bus::Bus::connect(&gatehouse_bus::BusConfig::new(nats.url()), "t")
            .await
            .unwrap();
        bus.read_all().await.unwrap()
    });
    assert!(
        stored
            .iter()
            .any(|(_, bytes)| String::from_utf8_lossy(bytes).contains("ledger.pruned"))
    );
    let released = gatehouse(&["ledger", "hold", "release", &hold_id, "--data-dir", data]);
    assert!(released.status.success());
    runtime.block_on(nats.stop());
}

#[test]
fn a_backup_is_a_ledger_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with(dir.path(), 7);
    let out = dir.path().join("backup");
    let made = gatehouse(&[
        "ledger",
        "backup",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(
        text(&made.stderr).contains("backed up 7 entries"),
        "{}",
        text(&made.stderr)
    );
    let again = gatehouse(&[
        "ledger",
        "backup",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success(), "never over an existing directory");
}
