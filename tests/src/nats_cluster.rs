//! A JetStream cluster of real `nats-server` processes on loopback, for tests that kill and
//! restart nodes under load.
//!
//! Each node gets a client port and a route port picked free by the OS (bound, released, then
//! given to nats-server; a start that loses that race is retried on new ports), its own store
//! and log under the cluster's directory, and the same configuration otherwise. A killed node
//! comes back on the same ports and store, as a restarted pod would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

const START_DEADLINE: Duration = Duration::from_secs(30);
const READY: &str = "Server is ready";

struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    child: Option<Child>,
    /// "Server is ready" lines in the log before this process started.
    ready_before: usize,
}

pub struct NatsCluster {
    dir: PathBuf,
    /// Lines added to every node's configuration (e.g. `include gatehouse.conf`).
    extra: String,
    /// Environment the configuration reads (`$GATEHOUSE_PROXY_NKEY`, …).
    env: Vec<(String, String)>,
    nodes: Vec<Node>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsCluster {
    /// Starts `size` nodes as one cluster and waits until each says it is ready and one is the
    /// JetStream metadata leader.
    pub async fn start(
        dir: &Path,
        size: usize,
        extra: &str,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut last = None;
        for attempt in 0..3 {
            let mut cluster = Self {
                dir: dir.join(format!("attempt-{attempt}")),
                extra: extra.to_owned(),
                env: env.clone(),
                nodes: Vec::new(),
            };
            for i in 0..size {
                cluster.nodes.push(Node {
                    name: format!("n{}", i + 1),
                    client_port: free_port()?,
                    route_port: free_port()?,
                    child: None,
                    ready_before: 0,
                });
            }
            let started = async {
                for i in 0..size {
                    cluster.spawn(i)?;
                }
                for i in 0..size {
                    cluster.wait_ready(i).await?;
                }
                cluster.wait_for_leader().await
            };
            match started.await {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the cluster did not start")))
    }

    /// Every node's client URL, comma-separated, as services take it.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.nodes[i].name))
    }

    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats-route://127.0.0.1:{}", n.route_port))
            .collect();
        format!(
            "server_name: {name}\n\
             listen: \"127.0.0.1:{client}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n\
             cluster {{\n  name: gatehouse\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n\
             {extra}\n",
            name = node.name,
            client = node.client_port,
            store = self.dir.join(&node.name).display(),
            route = node.route_port,
            routes = routes.join(", "),
            extra = self.extra,
        )
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let name = self.nodes[i].name.clone();
        let config = self.dir.join(format!("{name}.conf"));
        std::fs::write(&config, self.config(i))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))?;
        self.nodes[i].ready_before = self.log_text(i).matches(READY).count();
        let binary = std::env::var_os(gatehouse::nats_server::NATS_SERVER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if self.log_text(i).matches(READY).count() > self.nodes[i].ready_before {
                return Ok(());
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = self.log_text(i);
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "nats-server {} exited during start-up ({status}): {}",
                    self.nodes[i].name,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server {} not ready within {START_DEADLINE:?}; see {}",
                    self.nodes[i].name,
                    self.log(i).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a node logs that a JetStream metadata leader was elected.
    pub async fn wait_for_leader(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let elected = (0..self.nodes.len()).any(|i| {
                let log = self.log_text(i);
                log.contains("new metadata leader")
                    || log.contains("new JetStream cluster metadata leader")
            });
            if elected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no JetStream metadata leader within {START_DEADLINE:?}; see the logs in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: the node's process dies at once, with whatever it had not written.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts a killed node again on its ports and store; waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }
}
