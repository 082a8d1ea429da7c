//! Where the control plane's binaries are: the directory `deploy/controlplane/build` prints
//! (named by `GATEHOUSE_CONTROLPLANE_BIN`, which the repository's scripts set), or, when that is
//! not set, whatever running that script in this source tree yields (it builds them on first
//! use and says so).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::ControlPlaneError;

/// The directory holding the built binaries.
pub const BIN_ENV: &str = "GATEHOUSE_CONTROLPLANE_BIN";

const NAMES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

/// The built control plane.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `$GATEHOUSE_CONTROLPLANE_BIN`, else `deploy/controlplane/build` of this source tree.
    pub fn locate() -> Result<Self, ControlPlaneError> {
        let dir = match std::env::var_os(BIN_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => build()?,
        };
        Self::at(&dir)
    }

    /// The binaries in `dir`, all of which must be there.
    pub fn at(dir: &Path) -> Result<Self, ControlPlaneError> {
        let missing: Vec<&str> = NAMES
            .iter()
            .copied()
            .filter(|name| !dir.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(ControlPlaneError::Binaries(format!(
                "{} lacks {}: build the control plane with deploy/controlplane/build and set \
                 {BIN_ENV} to the directory it prints",
                dir.display(),
                missing.join(", ")
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    pub fn kube_controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }

    pub fn kube_scheduler(&self) -> PathBuf {
        self.dir.join("kube-scheduler")
    }

    /// kubectl of the control plane's own release.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }

    pub fn kwok(&self) -> PathBuf {
        self.dir.join("kwok")
    }

    /// Runs kubectl with `kubeconfig` (and `cache` as its HOME and discovery cache), `stdin`
    /// piped in, and returns its output.
    pub async fn kubectl_command(
        &self,
        kubeconfig: &Path,
        cache: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::io::Result<Output> {
        let mut child = tokio::process::Command::new(self.kubectl())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(cache.join("cache"))
            .args(args)
            .env("HOME", cache)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            pipe.write_all(text.as_bytes()).await?;
        }
        child.wait_with_output().await
    }
}

/// Runs `deploy/controlplane/build` of the source tree this crate was compiled from.
fn build() -> Result<PathBuf, ControlPlaneError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/controlplane/build");
    if !script.is_file() {
        return Err(ControlPlaneError::Binaries(format!(
            "{BIN_ENV} is not set and {} is not there to build the control plane",
            script.display()
        )));
    }
    let output = std::process::Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| ControlPlaneError::Io(format!("running {}", script.display()), e))?;
    if !output.status.success() {
        return Err(ControlPlaneError::Binaries(format!(
            "{} failed ({})",
            script.display(),
            output.status
        )));
    }
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(PathBuf::from(dir))
}
