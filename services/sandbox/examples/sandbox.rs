//! Runs the demo sandbox and writes a kubeconfig for it.
//!
//! `cargo run -p gatehouse-sandbox --example sandbox -- <state-dir> [port]`, then
//! `kubectl --kubeconfig <state-dir>/kubeconfig get pods -A`.

use std::sync::Arc;

use gatehouse_sandbox::pki::{LocalCa, server_tls_config};
use gatehouse_sandbox::rbac::RbacConfig;
use gatehouse_sandbox::{Sandbox, SandboxConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "sandbox-state".into()));
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let ca = LocalCa::load_or_generate(&dir, "Gatehouse Sandbox CA")?;
    let leaf = ca.issue_server_cert(&["127.0.0.1", "localhost", "::1"])?;
    let tls: Arc<rustls::ServerConfig> = server_tls_config(&leaf.cert_pem, &leaf.key_pem)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let admin_token = "sandbox-admin-token";
    let config = SandboxConfig {
        rbac: RbacConfig::demo("sandbox-proxy-token", admin_token),
        seed: true,
    };
    let sandbox = Sandbox::start(config, listener, tls).await?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
         users:\n- name: admin\n  user:\n    token: {admin_token}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: admin\n\
         current-context: sandbox\n",
        url = sandbox.url(),
        ca = dir.join("ca.pem").display(),
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig)?;
    println!(
        "sandbox at {} (kubeconfig: {})",
        sandbox.url(),
        dir.join("kubeconfig").display()
    );
    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
