//! Builds the browser pages with Vite into `$OUT_DIR/dist`, which `src/lib.rs` embeds.
//!
//! Only node and npm are needed. `npm ci` installs into a cache outside the source tree keyed
//! by the lock file's hash (`$GATEHOUSE_CACHE/web-node-modules/<hash>`, `$GATEHOUSE_CACHE`
//! defaulting to `~/.cache/gatehouse`), so fresh clones and other target directories reuse
//! it; the sources are copied beside a link to it, and Vite builds from there.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the front end is built from (besides `src/`).
const INPUTS: &[&str] = &[
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "vite.config.ts",
    "console.html",
    "approve.html",
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    for input in INPUTS {
        println!("cargo:rerun-if-changed={input}");
    }
    // Each front-end file rather than `src/` (which holds lib.rs too): editing the Rust side
    // must not rebuild the pages. A new file is imported from one of these, so it is noticed.
    for file in front_end_files(&manifest_dir.join("src")) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-env-changed=GATEHOUSE_CACHE");
    println!("cargo:rerun-if-env-changed=NPM");

    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    match Command::new(&npm).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => fail(&format!(
            "`{npm}` was not found: building gatehouse-web needs Node.js (20.19 or later) and npm \
             on PATH (or NPM=/path/to/npm), to build the browser pages with Vite"
        )),
    }

    let lock = std::fs::read(manifest_dir.join("package-lock.json"))
        .unwrap_or_else(|e| fail(&format!("services/web/package-lock.json: {e}")));
    let hash = blake3::hash(&lock).to_hex();
    let modules = node_modules(&npm, &manifest_dir, &hash[..16]);

    // A copy of the sources beside a link to the cached node_modules: Node resolves packages
    // from the importing file's directory upwards.
    let work = out_dir.join("web-src");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&format!("{}: {e}", work.display())));
    for input in INPUTS {
        copy(&manifest_dir.join(input), &work.join(input));
    }
    copy_dir(&manifest_dir.join("src"), &work.join("src"));
    link(&modules.join("node_modules"), &work.join("node_modules"));

    let dist = out_dir.join("dist");
    run(
        Command::new("node")
            .current_dir(&work)
            .args(["node_modules/typescript/bin/tsc", "--noEmit"]),
        "the TypeScript check (tsc --noEmit) failed",
    );
    run(
        Command::new("node")
            .current_dir(&work)
            .args([
                "node_modules/vite/bin/vite.js",
                "build",
                "--logLevel",
                "warn",
                "--emptyOutDir",
                "--outDir",
            ])
            .arg(&dist),
        "the Vite build failed",
    );
    if !dist.join("console.html").is_file() || !dist.join("approve.html").is_file() {
        fail("the Vite build wrote no console.html or approve.html");
    }
}

/// The cached `npm ci` of this lock file, made once (in a scratch directory renamed into place,
/// so a concurrent or interrupted build never sees half an install).
fn node_modules(npm: &str, manifest_dir: &Path, key: &str) -> PathBuf {
    let cache = std::env::var_os("GATEHOUSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gatehouse")))
        .unwrap_or_else(|| PathBuf::from(env("OUT_DIR")).join("cache"))
        .join("web-node-modules");
    let done = cache.join(key);
    if done.join("node_modules/.package-lock.json").is_file() {
        return done;
    }
    let scratch = cache.join(format!("{key}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", scratch.display())));
    for file in ["package.json", "package-lock.json"] {
        copy(&manifest_dir.join(file), &scratch.join(file));
    }
    run(
        Command::new(npm).current_dir(&scratch).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ]),
        "npm ci failed (is the npm registry reachable?)",
    );
    if std::fs::rename(&scratch, &done).is_err() {
        // Another build finished first: use its copy.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    done
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(&format!("{name} is not set")))
}

fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!("{what} ({status}); its output is above")),
        Err(e) => fail(&format!("{what}: {e}")),
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| fail(&format!("copying {}: {e}", from.display())));
}

fn is_front_end(path: &Path) -> bool {
    path.extension().is_some_and(|e| e != "rs")
}

fn front_end_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(front_end_files(&path));
        } else if is_front_end(&path) {
            files.push(path);
        }
    }
    files
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| fail(&format!("{}: {e}", to.display())));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| fail(&format!("{}: {e}", from.display())));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| fail(&format!("{}: {e}", from.display())));
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else if is_front_end(&path) {
            copy(&path, &to.join(entry.file_name()));
        }
    }
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at)
        .unwrap_or_else(|e| fail(&format!("linking {}: {e}", at.display())));
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) {
    copy_dir(target, at);
}

fn fail(message: &str) -> ! {
    // cargo shows a build script's stderr when it fails; the panic names the crate.
    eprintln!("error: gatehouse-web: {message}");
    panic!("gatehouse-web: {message}");
}
