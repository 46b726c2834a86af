//! Developer and CI chores as Rust: `cargo xtask <command>`.
//!
//! - `build-image [INPUT] [-o OUT]`: the main job: checks the host, builds the beambake CLI
//!   and turns INPUT (default: the echo example) into an initramfs with its manifest.
//! - `test`: every test: cargo's (unit and integration, which boot or run real releases)
//!   and the Erlang example's own (`rebar3 eunit`).
//! - `deps`: checks for the host tools the tests need and installs the missing Debian
//!   packages when run as root (else prints the exact command).
//!
//! Must not: duplicate pipeline logic; it drives the `beambake` binary like a user.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Host tool -> Debian package that provides it.
const TOOLS: &[(&str, &str)] = &[
    ("erl", "erlang-nox"),
    ("erlc", "erlang-dev"),
    ("rebar3", "rebar3"),
    ("cpio", "cpio"),
    ("gcc", "gcc"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(root());
    match args.first().map(String::as_str) {
        Some("deps") => deps(&sh),
        Some("test") => test(&sh, &args[1..]),
        Some("build-image") => build_image(&sh, &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <deps | test | build-image [INPUT] [-o OUT]>");
            std::process::exit(2);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn have(sh: &Shell, tool: &str) -> bool {
    let probe = format!("command -v {tool}");
    cmd!(sh, "sh -c {probe}")
        .quiet()
        .ignore_stdout()
        .run()
        .is_ok()
}

fn deps(sh: &Shell) -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !have(sh, tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let uid = cmd!(sh, "id -u").quiet().read().unwrap_or_default();
    if uid.trim() != "0" {
        bail!(
            "missing host packages; run:\n  sudo apt-get update && sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    cmd!(sh, "apt-get update -q").run()?;
    cmd!(sh, "apt-get install -y -q {missing...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Ok(())
}

fn test(sh: &Shell, extra: &[String]) -> Result<()> {
    deps(sh)?;
    cmd!(sh, "cargo test --workspace {extra...}").run()?;
    let echo = root().join("examples/echo");
    let _dir = sh.push_dir(&echo);
    cmd!(sh, "rebar3 eunit")
        .run()
        .context("rebar3 eunit in examples/echo")?;
    Ok(())
}

fn build_image(sh: &Shell, args: &[String]) -> Result<()> {
    deps(sh)?;
    let mut input = "examples/echo".to_string();
    let mut out = "target/images/echo.cpio.zst".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" | "--output" => out = it.next().context("-o needs a path")?.clone(),
            other => input = other.to_string(),
        }
    }
    if let Some(parent) = Path::new(&out).parent() {
        sh.create_dir(parent)?;
    }
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    cmd!(sh, "target/release/beambake rootfs {input} -o {out}").run()?;
    Ok(())
}
