//! Kubeconfig files: server URL, CA and bearer token, as kubectl reads them.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

/// A kubeconfig with one cluster, one user and one context.
pub fn render(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
    namespace: &str,
) -> String {
    let context = format!("{user}@{cluster}");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(ca_pem),
            }
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": context,
            "context": { "cluster": cluster, "user": user, "namespace": namespace }
        }],
        "current-context": context,
    });
    yaml_serde::to_string(&config).unwrap_or_else(|_| config.to_string())
}

/// Writes a file only its owner can read (it holds a bearer token).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_kubeconfig_kubectl_reads() {
        let text = render(
            "gatehouse",
            "https://127.0.0.1:1234",
            "PEM",
            "ci-deployer",
            "tok",
            "apps",
        );
        let v: serde_json::Value = yaml_serde::from_str(&text).unwrap();
        assert_eq!(v["current-context"], "ci-deployer@gatehouse");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:1234"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            STANDARD.encode("PEM")
        );
        assert_eq!(v["users"][0]["user"]["token"], "tok");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "apps");
    }
}
