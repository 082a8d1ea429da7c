//! The binary operators deploy links no test bed: not the Kubernetes sandbox, the chat
//! platforms' fakes, the demo OIDC issuers (all in gatehouse-sandbox), the local control
//! plane's launcher, nor `gatehouse up` (gatehouse-up, a binary of its own).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

#[test]
fn the_product_binary_links_no_test_bed() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    // This machine's platform only: other platforms' crates need not be here.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(&platform)
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = names
        .iter()
        .find(|(_, name)| **name == "gatehouse")
        .map(|(id, _)| *id)
        .unwrap();
    // Everything the binary links: normal dependencies, transitively (not dev, not build).
    let mut linked = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        if !linked.insert(names[id]) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(
        linked.contains("gatehouse-proxy"),
        "the walk works: {linked:?}"
    );
    for test_bed in [
        "gatehouse-sandbox",
        "gatehouse-controlplane",
        "gatehouse-up",
    ] {
        assert!(
            !linked.contains(test_bed),
            "the gatehouse binary links {test_bed}"
        );
    }
}
