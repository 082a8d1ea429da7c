//! Starts a local control plane in DIR and keeps it until Ctrl-C: for poking at it by hand.
//!
//!   cargo run -p gatehouse-controlplane --example controlplane -- DIR
//!   kubectl --kubeconfig DIR/admin.kubeconfig get nodes

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: controlplane DIR")?;
    let plane =
        gatehouse_controlplane::ControlPlane::start(gatehouse_controlplane::Options::new(&dir))
            .await;
    let plane = match plane {
        Ok(plane) => plane,
        Err(e) => {
            eprintln!("error: {e}");
            // Keep what failed to look at.
            tokio::signal::ctrl_c().await?;
            return Err(e.into());
        }
    };
    println!(
        "{} — kubectl --kubeconfig {}",
        plane.url(),
        plane.admin_kubeconfig().display()
    );
    tokio::signal::ctrl_c().await?;
    plane.stop();
    Ok(())
}
