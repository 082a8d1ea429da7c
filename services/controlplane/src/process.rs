//! The control plane's processes: each one logs to its own file, is stopped with SIGTERM (then
//! SIGKILL) when the control plane stops or is dropped, and dies with the thread that started
//! it should this process itself be killed (`setpriv --pdeathsig`).
//!
//! The parent-death signal belongs to the thread that forked, not the process, so every child
//! is spawned from one thread the [`Supervisor`] owns and keeps alive until it is dropped: a
//! test's thread or a runtime's worker may come and go, the control plane must not.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ControlPlaneError;

/// How long a process has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// A short name: the log file is `<logs>/<name>.log`.
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

type SpawnReply = mpsc::Sender<std::io::Result<Child>>;

/// Spawns children from one long-lived thread and stops them, last started first.
pub struct Supervisor {
    requests: Option<mpsc::Sender<(Spec, SpawnReply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    children: std::sync::Mutex<Vec<(&'static str, Child)>>,
    pdeathsig: bool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("children", &self.names())
            .finish()
    }
}

impl Supervisor {
    pub fn new() -> Result<Self, ControlPlaneError> {
        let (tx, rx) = mpsc::channel::<(Spec, SpawnReply)>();
        let pdeathsig = Path::new("/usr/bin/setpriv").is_file();
        let thread = std::thread::Builder::new()
            .name("controlplane-supervisor".into())
            .spawn(move || {
                // Lives (and so keeps the children's parent-death signal armed) until the
                // supervisor drops the sender.
                for (spec, reply) in rx {
                    let _ = reply.send(spawn(&spec, pdeathsig));
                }
            })
            .map_err(|e| ControlPlaneError::Io("starting the supervisor thread".into(), e))?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
            children: std::sync::Mutex::new(Vec::new()),
            pdeathsig,
        })
    }

    /// Starts `spec` and returns its pid.
    pub fn start(&self, spec: Spec) -> Result<u32, ControlPlaneError> {
        let (reply, response) = mpsc::channel();
        let name = spec.name;
        let program = spec.program.clone();
        self.requests
            .as_ref()
            .ok_or_else(|| ControlPlaneError::Stopped(name.into()))?
            .send((spec, reply))
            .map_err(|_| ControlPlaneError::Stopped(name.into()))?;
        let child = response
            .recv()
            .map_err(|_| ControlPlaneError::Stopped(name.into()))?
            .map_err(|e| ControlPlaneError::Io(format!("starting {}", program.display()), e))?;
        let pid = child.id();
        tracing::debug!(
            name,
            pid,
            pdeathsig = self.pdeathsig,
            "control plane process started"
        );
        self.lock().push((name, child));
        Ok(pid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Child)>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of the processes started, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.lock().iter().map(|(n, _)| *n).collect()
    }

    /// `Some(status)` if the process named `name` has exited.
    pub fn exit_status(&self, name: &str) -> Option<ExitStatus> {
        self.lock()
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, child)| child.try_wait().ok().flatten())
    }

    /// Stops the process named `name` (SIGTERM, then SIGKILL) and forgets it.
    pub fn stop(&self, name: &str) {
        let child = {
            let mut children = self.lock();
            let at = children.iter().position(|(n, _)| *n == name);
            at.map(|at| children.remove(at).1)
        };
        if let Some(child) = child {
            terminate(vec![child]);
        }
    }

    /// Stops every process, the last started first.
    pub fn stop_all(&self) {
        let children: Vec<Child> = self.lock().drain(..).rev().map(|(_, c)| c).collect();
        terminate(children);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn(spec: &Spec, pdeathsig: bool) -> std::io::Result<Child> {
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let mut command = if pdeathsig {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(&spec.program);
        c
    } else {
        Command::new(&spec.program)
    };
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Nothing of ours is meant for them; a user's proxy settings would only send
        // loopback traffic somewhere else.
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("KUBECONFIG")
        .spawn()
}

/// SIGTERM to each, then waits; whatever is left after [`STOP_GRACE`] is killed.
fn terminate(mut children: Vec<Child>) {
    for child in &children {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !children.is_empty() && Instant::now() < deadline {
        children.retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_)) | Err(_)));
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
