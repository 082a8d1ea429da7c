//! The processes behind exec and attach.
//!
//! - [`exec`]: one local process per request, with pipes, or under a pseudo-terminal
//!   (`portable-pty`) when a tty was requested (resize messages resize it).
//! - [`MainProcesses`] / [`attach`]: one long-lived "main process" per pod container, started
//!   at the first attach from the container's `command` + `args` (default `cat`), shared by
//!   every attacher: all see its output, all may write its stdin. When the client ends its
//!   input, the process's stdin is closed only if the container says `stdinOnce: true` (as the
//!   kubelet does); the attach then ends when the process exits. A later attach starts it anew.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use gatehouse_streams::channel;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};

use super::Options;
use super::session::{Outcome, Output, Streams};

const READ_CHUNK: usize = 32 * 1024;
/// How long a terminal session waits for the client's first size before starting at 80x24.
const INITIAL_SIZE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Resolves `program` like execvp: a path is taken as is, a bare name is looked up in PATH.
fn resolve(program: &str) -> Option<PathBuf> {
    let is_executable = |p: &Path| p.is_file();
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// The kubelet's (containerd + runc) error for a command that cannot start.
fn not_found(program: &str) -> Outcome {
    let exec_id = ulid::Ulid::new().to_string().to_lowercase();
    let why = if program.contains('/') {
        format!("exec: \"{program}\": stat {program}: no such file or directory")
    } else {
        format!("exec: \"{program}\": executable file not found in $PATH")
    };
    Outcome::Internal(format!(
        "error executing command in container: failed to exec in container: failed to start exec \"{exec_id}\": OCI runtime exec failed: exec failed: unable to start container process: {why}: unknown"
    ))
}

fn exit_outcome(code: i32, argv: &[String]) -> Outcome {
    if code == 0 {
        Outcome::Success
    } else {
        Outcome::ExitCode {
            code,
            command: argv.to_vec(),
        }
    }
}

/// Copies a pipe to the client until EOF (or until the client is gone).
async fn pump_out(pipe: Option<impl AsyncRead + Unpin>, out: &Output, channel: u8) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !out.send(channel, Bytes::copy_from_slice(&buf[..n])).await {
                    return;
                }
            }
        }
    }
}

/// Runs `argv` for one exec request.
pub(crate) async fn exec(
    argv: Vec<String>,
    env: Vec<(String, String)>,
    tty: bool,
    streams: Streams,
) -> Outcome {
    let Some(program) = resolve(&argv[0]) else {
        return not_found(&argv[0]);
    };
    if tty {
        return exec_tty(program, argv, env, streams).await;
    }
    let Streams { stdin, out, .. } = streams;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .envs(env)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return not_found(&argv[0]),
        Err(e) => return Outcome::Internal(format!("error executing command in container: {e}")),
    };
    let child_stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let (Some(mut rx), Some(mut pipe)) = (stdin, child_stdin) {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    break;
                }
            }
            // Dropping the pipe is the process's end of input.
        }
        std::future::pending::<()>().await;
    };
    let finish = async {
        let (_, _, status) = tokio::join!(
            pump_out(stdout, &out, channel::STDOUT),
            pump_out(stderr, &out, channel::STDERR),
            child.wait()
        );
        status
    };
    let status = tokio::select! {
        status = finish => status,
        _ = feed => unreachable_pending(),
    };
    match status {
        Ok(s) => exit_outcome(exit_code(s), &argv),
        Err(e) => Outcome::Internal(format!("error executing command in container: {e}")),
    }
}

/// `feed` never completes; this keeps the select total without a panic path.
fn unreachable_pending() -> std::io::Result<std::process::ExitStatus> {
    Err(std::io::Error::other("stdin feeder ended unexpectedly"))
}

/// A signal-terminated process reports 128 + signal, as container runtimes do.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Kills the pty child if the session is dropped before it exits.
struct KillOnDrop(Option<Box<dyn portable_pty::ChildKiller + Send + Sync>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut k) = self.0.take() {
            let _ = k.kill();
        }
    }
}

async fn exec_tty(
    program: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    streams: Streams,
) -> Outcome {
    let Streams { stdin, resize, out } = streams;
    let internal =
        |e: String| Outcome::Internal(format!("error executing command in container: {e}"));
    // kubectl sends its terminal's size as soon as the streams are up; start the program at
    // that size rather than resizing it just after it may have looked.
    let mut resize = resize;
    let mut initial = PtySize {
        rows: 24,
        cols: 80,
        pixel_width: 0,
        pixel_height: 0,
    };
    if let Some(sizes) = resize.as_mut()
        && let Ok(Some(size)) = tokio::time::timeout(INITIAL_SIZE_WAIT, sizes.recv()).await
    {
        initial.rows = size.height;
        initial.cols = size.width;
    }
    let pair = match native_pty_system().openpty(initial) {
        Ok(p) => p,
        Err(e) => return internal(format!("allocating a terminal: {e}")),
    };
    let mut cmd = CommandBuilder::new(&program);
    cmd.args(&argv[1..]);
    if let Ok(cwd) = std::env::current_dir() {
        cmd.cwd(cwd);
    }
    cmd.env("TERM", "xterm");
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = match pair.slave.spawn_command(cmd) {
        Ok(c) => c,
        Err(e) => return internal(e.to_string()),
    };
    // Only the child may hold the terminal's slave side: its exit then ends our reads.
    drop(pair.slave);
    let _killer = KillOnDrop(Some(child.clone_killer()));
    let master = pair.master;
    let (reader, writer) = match (master.try_clone_reader(), master.take_writer()) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => return internal(e.to_string()),
    };
    // The terminal is blocking I/O: one thread reads, one writes.
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match reader.read(&mut buf) {
                // EIO once the child has exited and its output is drained.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if out_tx
                        .blocking_send(Bytes::copy_from_slice(&buf[..n]))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
    tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        while let Some(data) = in_rx.blocking_recv() {
            if writer
                .write_all(&data)
                .and_then(|()| writer.flush())
                .is_err()
            {
                return;
            }
        }
    });
    let wait = tokio::task::spawn_blocking(move || child.wait());
    let mut stdin = stdin;
    loop {
        tokio::select! {
            data = out_rx.recv() => match data {
                Some(data) => {
                    if !out.send(channel::STDOUT, data).await {
                        return Outcome::Success;
                    }
                }
                None => break,
            },
            data = async { stdin.as_mut()?.recv().await }, if stdin.is_some() => match data {
                Some(data) => {
                    let _ = in_tx.send(data).await;
                }
                // A terminal has no end of input to pass on; the program decides when to exit.
                None => stdin = None,
            },
            size = async { resize.as_mut()?.recv().await }, if resize.is_some() => match size {
                Some(size) => {
                    let _ = master.resize(PtySize {
                        rows: size.height,
                        cols: size.width,
                        pixel_width: 0,
                        pixel_height: 0,
                    });
                }
                None => resize = None,
            },
        }
    }
    match wait.await {
        Ok(Ok(status)) => {
            let code = i32::try_from(status.exit_code()).unwrap_or(1);
            exit_outcome(code, &argv)
        }
        Ok(Err(e)) => internal(e.to_string()),
        Err(e) => internal(e.to_string()),
    }
}

/// What a main process tells its attachers.
#[derive(Clone, Debug)]
enum MainEvent {
    Output(u8, Bytes),
    Exited,
}

enum StdinMessage {
    Data(Bytes),
    Close,
}

/// One container's main process.
struct Main {
    stdin: mpsc::Sender<StdinMessage>,
    events: broadcast::Sender<MainEvent>,
    exited: watch::Receiver<bool>,
}

/// The running main processes, by `namespace/pod/container`. They end with the sandbox.
pub(crate) struct MainProcesses {
    running: Mutex<HashMap<String, Arc<Main>>>,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for MainProcesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainProcesses").finish_non_exhaustive()
    }
}

/// A subscription to a main process's output (used by `kubectl logs -f`).
pub(crate) struct OutputSubscription(broadcast::Receiver<MainEvent>);

impl OutputSubscription {
    /// The next output bytes; None once the process has exited.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.0.recv().await {
                Ok(MainEvent::Output(_, b)) => return Some(b),
                Ok(MainEvent::Exited) | Err(broadcast::error::RecvError::Closed) => return None,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
            }
        }
    }
}

impl MainProcesses {
    pub(crate) fn new(stop: watch::Receiver<bool>) -> Self {
        Self {
            running: Mutex::default(),
            stop,
        }
    }

    /// Subscribes to a running main process's output, if there is one.
    pub(crate) fn subscribe(&self, key: &str) -> Option<OutputSubscription> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let main = running.get(key).filter(|m| !*m.exited.borrow())?;
        Some(OutputSubscription(main.events.subscribe()))
    }

    /// The running main process for `key`, started if needed, and a subscription taken before
    /// it could print anything.
    fn get_or_start(
        &self,
        key: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(Arc<Main>, broadcast::Receiver<MainEvent>), String> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(main) = running.get(key)
            && !*main.exited.borrow()
        {
            return Ok((main.clone(), main.events.subscribe()));
        }
        let program = resolve(&argv[0])
            .ok_or_else(|| format!("exec: \"{}\": executable file not found in $PATH", argv[0]))?;
        let mut child = tokio::process::Command::new(program)
            .args(&argv[1..])
            .envs(env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", argv[0]))?;
        let (events, rx) = broadcast::channel(256);
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<StdinMessage>(16);
        let (exited_tx, exited) = watch::channel(false);
        let main = Arc::new(Main {
            stdin: stdin_tx,
            events: events.clone(),
            exited,
        });
        let mut pipe_in = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let feed = async {
                while let Some(msg) = stdin_rx.recv().await {
                    let keep = match (msg, pipe_in.as_mut()) {
                        (StdinMessage::Data(d), Some(p)) => p.write_all(&d).await.is_ok(),
                        (StdinMessage::Data(_), None) => false,
                        (StdinMessage::Close, _) => false,
                    };
                    if !keep {
                        // Dropping the pipe is the process's end of input.
                        pipe_in = None;
                    }
                }
                std::future::pending::<()>().await;
            };
            let broadcast_pipe = |pipe: Option<tokio::process::ChildStdout>| {
                let events = events.clone();
                async move {
                    let Some(mut pipe) = pipe else { return };
                    let mut buf = vec![0u8; READ_CHUNK];
                    while let Ok(n) = pipe.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // No subscriber is fine: output nobody watches is lost, as in kube.
                        let _ = events.send(MainEvent::Output(
                            channel::STDOUT,
                            Bytes::copy_from_slice(&buf[..n]),
                        ));
                    }
                }
            };
            let broadcast_err = async {
                let Some(mut pipe) = stderr else { return };
                let mut buf = vec![0u8; READ_CHUNK];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = events.send(MainEvent::Output(
                        channel::STDERR,
                        Bytes::copy_from_slice(&buf[..n]),
                    ));
                }
            };
            let run = async {
                let (_, _, _status) =
                    tokio::join!(broadcast_pipe(stdout), broadcast_err, child.wait());
            };
            tokio::select! {
                _ = run => {}
                _ = feed => {}
                // Dropping the child kills it.
                _ = super::until_true(&mut stop) => {}
            }
            let _ = exited_tx.send(true);
            let _ = events.send(MainEvent::Exited);
        });
        running.insert(key.to_owned(), main.clone());
        Ok((main, rx))
    }
}

/// One attach session to the container's main process.
pub(crate) async fn attach(
    processes: Arc<MainProcesses>,
    key: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    stdin_once: bool,
    options: Options,
    streams: Streams,
) -> Outcome {
    let (main, mut events) = match processes.get_or_start(&key, &argv, &env) {
        Ok(m) => m,
        Err(e) => return Outcome::Internal(format!("error attaching to container: {e}")),
    };
    let Streams { stdin, out, .. } = streams;
    let mut stdin = stdin;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(MainEvent::Output(ch, data)) => {
                    // A terminal merges stderr into stdout.
                    let ch = if options.tty { channel::STDOUT } else { ch };
                    if !out.send(ch, data).await {
                        return Outcome::Success;
                    }
                }
                Ok(MainEvent::Exited) | Err(broadcast::error::RecvError::Closed) => {
                    return Outcome::Success;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
            },
            data = async { stdin.as_mut()?.recv().await }, if stdin.is_some() => match data {
                Some(data) => {
                    let _ = main.stdin.send(StdinMessage::Data(data)).await;
                }
                None => {
                    stdin = None;
                    if stdin_once {
                        let _ = main.stdin.send(StdinMessage::Close).await;
                    }
                }
            },
        }
    }
}
