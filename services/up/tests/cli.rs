//! `gatehouse up` as a user runs it: clear errors before anything starts.

use std::process::{Command, Output};

fn up(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse-up"));
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running gatehouse-up")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn without_nats_server_it_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-nats-server");
    let out = up(
        &["--sandbox", "--data-dir", dir.path().to_str().unwrap()],
        &[("GATEHOUSE_NATS_SERVER", missing.as_os_str())],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("nats-server was not found"), "{stderr}");
    assert!(stderr.contains("apt-get install nats-server"), "{stderr}");
    assert!(stderr.contains("--nats-url"), "{stderr}");
}

#[test]
fn sandbox_and_kubeconfig_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let out = up(
        &[
            "--sandbox",
            "--kubeconfig",
            "k",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_kubeconfig_that_cannot_be_used_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("exec.kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {server: 'https://127.0.0.1:1'}\n\
         users:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}\n\
         contexts:\n- name: c\n  context: {cluster: k, user: u}\n",
    )
    .unwrap();
    let out = up(
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("exec.kubeconfig"), "{stderr}");
    assert!(stderr.contains("exec"), "{stderr}");
}

/// `gatehouse-up --sandbox` running in `dir`, its stderr lines sent to the receiver; stop it
/// with [`stop`].
fn start_sandbox(
    dir: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse-up"))
        .args(["--sandbox", "--data-dir", dir.to_str().unwrap()])
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running gatehouse-up");
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, seen)
}

/// SIGTERM: `up` stops its nats-server and the rest in order (a SIGKILL would leave them).
fn stop(mut child: std::process::Child) {
    use std::time::{Duration, Instant};
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop_by = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < stop_by {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Its log, when not written to a terminal, is plain text: no colour escapes in a file or pipe.
#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let (child, seen) = start_sandbox(dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = String::new();
    // Wait for log lines from the running services (tracing's level names), not only the
    // plain progress messages.
    while !log.contains("INFO") {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    stop(child);
    assert!(
        log.contains("INFO"),
        "no log line within the deadline:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
}

/// A principal added to the data directory's registry gets a kubeconfig as the demo's do (how
/// tests/conformance's identity runs the e2e suite through `gatehouse up`); one whose name is
/// no file name does not.
#[test]
fn every_registered_principal_gets_a_kubeconfig() {
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("identities.yaml"),
        "identities:\n\
         \x20 - {principal: conformance-e2e, owner: a@example.com, team: t, purpose: p}\n\
         \x20 - {principal: \"github:acme/app@prod\", owner: a@example.com, team: t, purpose: p}\n",
    )
    .unwrap();
    let (child, _log) = start_sandbox(dir.path());
    let kubeconfigs = dir.path().join("kubeconfigs");
    let added = kubeconfigs.join("conformance-e2e.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !added.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The demo's are written first, then the registry's, in one pass.
    let written: Vec<String> = std::fs::read_dir(&kubeconfigs)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let text = std::fs::read_to_string(&added).unwrap_or_default();
    stop(child);
    assert!(
        text.contains("token") && text.contains("https://127.0.0.1:"),
        "{added:?}: {text}"
    );
    assert!(
        written.contains(&"ci-deployer.kubeconfig".to_owned()),
        "{written:?}"
    );
    assert!(!written.iter().any(|f| f.contains("github")), "{written:?}");
}
