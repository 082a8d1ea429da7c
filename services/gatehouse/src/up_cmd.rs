//! `gatehouse up …` runs `gatehouse-up …`: the development and demo stack lives in its own
//! binary (it links the local control plane's launcher, the Kubernetes sandbox and the demo
//! OIDC issuers), so the product binary operators deploy contains none of them.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// The binary `gatehouse up` runs.
pub const UP_BINARY: &str = "gatehouse-up";

/// `gatehouse-up` beside this executable, else on `PATH`.
pub fn find_up() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(UP_BINARY)))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(UP_BINARY))
            .find(|p| p.is_file())
    })
}

/// Replaces this process with `gatehouse-up ARGS`; returns only if that cannot be done.
pub fn exec_up(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let Some(program) = find_up() else {
        anyhow::bail!(
            "`gatehouse up` is the development and demo stack, a separate binary ({UP_BINARY}) \
             that is not installed beside this one or on PATH. From a clone of the repository \
             run `deploy/local/gatehouse up …`, or build it with `cargo build -p gatehouse-up`."
        );
    };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(&program).args(args).exec();
    anyhow::bail!("running {}: {error}", program.display())
}
