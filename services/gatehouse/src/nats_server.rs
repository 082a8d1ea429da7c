//! A local `nats-server` with JetStream, for `gatehouse up` and for tests.
//!
//! Started on a port the server picks itself (`-p -1`), which it reports in a ports file, so
//! nothing depends on a fixed port. Stopped with SIGTERM (JetStream flushes its store) and
//! killed outright if it lingers, or when the handle is dropped.
//!
//! [`NatsServer::start_secured`] runs it with Gatehouse's authorization
//! (`deploy/nats/gatehouse.conf`, built into this binary) and a fresh NKey user per service.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Environment variable naming the `nats-server` binary, instead of searching `PATH`.
pub const NATS_SERVER_ENV: &str = "GATEHOUSE_NATS_SERVER";

const START_DEADLINE: Duration = Duration::from_secs(20);
const STOP_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    #[error(
        "nats-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install nats-server`), \
         set {NATS_SERVER_ENV} to its path, or pass --nats-url to use a running NATS with JetStream"
    )]
    NotFound,
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server did not report its port within {0:?}; see {1}")]
    NoPort(Duration, PathBuf),
    #[error("nats-server exited during start-up ({status}); see {log}")]
    Exited { status: String, log: PathBuf },
}

/// `deploy/nats/gatehouse.conf`: one NKey user per service, each allowed only its subjects.
pub const GATEHOUSE_CONF: &str = include_str!("../../../deploy/nats/gatehouse.conf");

/// The NATS users of `deploy/nats/gatehouse.conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatsRole {
    Proxy,
    Approval,
    Evidence,
    /// Creates and fixes the stream and buckets (`gatehouse nats setup`); no service runs as it.
    Admin,
}

impl NatsRole {
    pub const ALL: [NatsRole; 4] = [Self::Proxy, Self::Approval, Self::Evidence, Self::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Approval => "approval",
            Self::Evidence => "evidence",
            Self::Admin => "admin",
        }
    }

    /// The environment variable the configuration reads the role's public key from.
    pub fn env(self) -> &'static str {
        match self {
            Self::Proxy => "GATEHOUSE_PROXY_NKEY",
            Self::Approval => "GATEHOUSE_APPROVAL_NKEY",
            Self::Evidence => "GATEHOUSE_EVIDENCE_NKEY",
            Self::Admin => "GATEHOUSE_ADMIN_NKEY",
        }
    }
}

/// One NKey user per [`NatsRole`]: the seed in `DIR/<role>.nk` (mode 0600, for the service's
/// `nats.nkey_file`), the public key for the server's configuration.
#[derive(Clone, Debug)]
pub struct NatsKeys {
    dir: PathBuf,
    public: Vec<(NatsRole, String)>,
}

impl NatsKeys {
    /// Generates a fresh key per role into `dir`, replacing any there.
    pub fn generate(dir: &Path) -> Result<Self, NatsServerError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| NatsServerError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut public = Vec::new();
        for role in NatsRole::ALL {
            let pair = nkeys::KeyPair::new_user();
            let seed = pair.seed().map_err(|e| NatsServerError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other(format!("generating an NKey: {e}")),
            })?;
            let path = dir.join(format!("{}.nk", role.name()));
            // Removed first: an existing file would keep its mode.
            let _ = std::fs::remove_file(&path);
            crate::kubeconfig::write_private(&path, &format!("{seed}\n")).map_err(io(&path))?;
            public.push((role, pair.public_key()));
        }
        Ok(Self {
            dir: dir.to_owned(),
            public,
        })
    }

    /// The file holding `role`'s seed.
    pub fn seed_file(&self, role: NatsRole) -> PathBuf {
        self.dir.join(format!("{}.nk", role.name()))
    }

    /// `role`'s public key (`U…`).
    pub fn public_key(&self, role: NatsRole) -> &str {
        self.public
            .iter()
            .find(|(r, _)| *r == role)
            .map_or("", |(_, key)| key.as_str())
    }
}

/// A running `nats-server`.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    url: String,
    store_dir: PathBuf,
    /// The users it was started with, if any; a restart keeps them.
    keys: Option<NatsKeys>,
}

impl NatsServer {
    /// Starts `nats-server -js` with its store (and its log, `nats-server.log`) under `store_dir`,
    /// on a port the server picks.
    pub async fn start(store_dir: &Path) -> Result<Self, NatsServerError> {
        Self::spawn(store_dir, None, None).await
    }

    /// Like [`NatsServer::start`], with `deploy/nats/gatehouse.conf` (written to
    /// `store_dir/gatehouse.conf`) and the users in `keys`: clients must then authenticate, and
    /// each may use only its role's subjects.
    pub async fn start_secured(store_dir: &Path, keys: &NatsKeys) -> Result<Self, NatsServerError> {
        Self::spawn(store_dir, None, Some(keys.clone())).await
    }

    /// The users the server was started with.
    pub fn keys(&self) -> Option<&NatsKeys> {
        self.keys.as_ref()
    }

    /// Stops the server and starts it again on the same port with the same store, as an
    /// operator's restart would; connected clients reconnect by themselves.
    pub async fn restart(&mut self) -> Result<(), NatsServerError> {
        self.stop().await;
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok());
        *self = Self::spawn(&self.store_dir.clone(), port, self.keys.clone()).await?;
        Ok(())
    }

    async fn spawn(
        store_dir: &Path,
        port: Option<u16>,
        keys: Option<NatsKeys>,
    ) -> Result<Self, NatsServerError> {
        let binary = find_binary().ok_or(NatsServerError::NotFound)?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| NatsServerError::Io { path, source }
        };
        let ports_dir = store_dir.join("ports");
        std::fs::create_dir_all(&ports_dir).map_err(io(&ports_dir))?;
        let log = store_dir.join("nats-server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(&log))?;
        let log_err = log_file.try_clone().map_err(io(&log))?;
        let jetstream_dir = store_dir.join("jetstream");
        let mut command = Command::new(&binary);
        if let Some(keys) = &keys {
            let conf = store_dir.join("gatehouse.conf");
            std::fs::write(&conf, GATEHOUSE_CONF).map_err(io(&conf))?;
            command.arg("--config").arg(&conf);
            for role in NatsRole::ALL {
                command.env(role.env(), keys.public_key(role));
            }
        }
        let mut child = command
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&jetstream_dir)
            .args(["--addr", "127.0.0.1", "--port"])
            .arg(port.map_or_else(|| "-1".to_owned(), |p| p.to_string()))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsServerError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let ports_file = ports_dir.join(format!(
            "{}_{pid}.ports",
            binary
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("nats-server")
        ));
        let deadline = Instant::now() + START_DEADLINE;
        let url = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                return Err(NatsServerError::Exited {
                    status: status.to_string(),
                    log,
                });
            }
            if let Some(url) = read_client_url(&ports_file) {
                break url;
            }
            if Instant::now() > deadline {
                return Err(NatsServerError::NoPort(START_DEADLINE, log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child: Some(child),
            url,
            store_dir: store_dir.to_owned(),
            keys,
        })
    }

    /// The server's log (`STORE_DIR/nats-server.log`).
    pub fn log_file(&self) -> PathBuf {
        self.store_dir.join("nats-server.log")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server gracefully (SIGTERM), killing it if it does not exit in time.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_DEADLINE, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, as with a
    /// hung or overloaded server. [`NatsServer::resume`] undoes it.
    ///
    /// A stop takes effect asynchronously (every thread of the server must be interrupted), so
    /// this waits, up to a second, until the kernel reports the process stopped; otherwise a
    /// request sent right after could still be answered.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
        let Some(pid) = self.child.as_ref().and_then(Child::id) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match all_threads_stopped(pid) {
                Some(false) => std::thread::sleep(Duration::from_millis(1)),
                // Stopped, or no procfs to tell (not Linux).
                Some(true) | None => return,
            }
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }
}

/// Whether every thread of `pid` is stopped (`T` in `/proc/PID/task/*/stat`); `None` without
/// procfs.
fn all_threads_stopped(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut all = true;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The state follows the parenthesised command name.
        all &= stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'));
    }
    Some(all)
}

/// The client URL nats-server wrote into its ports file, once it is there and complete.
fn read_client_url(ports_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports
        .get("nats")
        .or_else(|| ports.get("client"))
        .and_then(|v| v.as_array())
        .and_then(|urls| urls.first())
        .and_then(|u| u.as_str())
        .map(str::to_owned)
}

/// `$GATEHOUSE_NATS_SERVER`, else `nats-server` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_ENV) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}
