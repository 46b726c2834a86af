//! Builds beambake's guest init (the workspace's `init` crate) as a static binary and
//! hands its path to the library, which embeds it: the `beambake` binary carries its init.
//! Set BEAMBAKE_INIT_BIN to use a prebuilt one instead.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BEAMBAKE_INIT_BIN");
    if let Ok(p) = env::var("BEAMBAKE_INIT_BIN") {
        println!("cargo:rustc-env=BEAMBAKE_INIT_BIN={p}");
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    let init = root.join("init");
    // The init's crate and the host/guest contract it depends on; the workspace manifest
    // holds the init's release profile (opt-level, codegen units).
    watch_crate(&init);
    watch_crate(&manifest.join("crates").join("contract"));
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("init-target");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--target", triple])
        .arg("--manifest-path")
        .arg(init.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols -C panic=abort",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .expect("running cargo to build the init");
    assert!(status.success(), "building the static init failed");
    let bin = target_dir.join(triple).join("release/beambake-init");
    println!("cargo:rustc-env=BEAMBAKE_INIT_BIN={}", bin.display());
}

/// Reruns this script when a file of the crate at `dir` changes. Every file, not the
/// directory: a directory path here made cargo miss edits of the files in it (the
/// embedded init stayed stale after init/src/*.rs changed).
fn watch_crate(dir: &std::path::Path) {
    println!("cargo:rerun-if-changed={}", dir.join("src").display());
    for file in files_under(&dir.join("src")) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("Cargo.toml").display()
    );
}

/// Every file below `dir`, sorted (none when it cannot be read: cargo then says why).
fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
