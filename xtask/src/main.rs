//! Developer and CI chores as Rust: `cargo xtask <command>`.
//!
//! - `build-image RECIPE`: release -> image for a recipe; prints the artefact paths.
//! - `smoke RECIPE`: the main job: build, boot under qemu in a private namespace, check.
//! - `test`: every test: cargo's (unit and integration, which boot real guests), the
//!   Erlang example's own (`rebar3 eunit`), and the smoke of every recipe this machine
//!   can run.
//! - `deps`: checks for the host tools the tests need and installs the missing Debian
//!   packages when run as root (else prints the exact command).
//!
//! Must not: duplicate pipeline logic; it drives the `beambake` binary like a user.

use std::path::{Path, PathBuf};

mod bench;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// Host tool -> Debian package that provides it.
const TOOLS: &[(&str, &str)] = &[
    ("erl", "erlang-nox"),
    ("erlc", "erlang-dev"),
    ("rebar3", "rebar3"),
    ("cpio", "cpio"),
    ("gcc", "gcc"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mix", "elixir"),
    ("setpriv", "util-linux"),
];

/// Recipes whose target this machine can boot (the others are built in tests only as far
/// as their toolchains allow; see the README support matrix).
const RUNNABLE_TARGETS: &[&str] = &["microvm"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(root());
    match args.first().map(String::as_str) {
        Some("deps") => deps(&sh),
        Some("test") => test(&sh, &args[1..]),
        Some("build-image") => beambake(&sh, "build", &args[1..]),
        Some("smoke") => beambake(&sh, "smoke", &args[1..]),
        Some("bench") => {
            deps(&sh)?;
            for (tool, pkg) in [("busybox", "busybox-static"), ("zstd", "zstd")] {
                if !have(&sh, tool) {
                    install(&sh, &[pkg])?;
                }
            }
            bench::bench(&sh, &root())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <deps | test | build-image RECIPE | smoke RECIPE | bench>"
            );
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
    install(sh, &missing)
}

fn install(sh: &Shell, packages: &[&str]) -> Result<()> {
    let uid = cmd!(sh, "id -u").quiet().read().unwrap_or_default();
    if uid.trim() != "0" {
        bail!(
            "missing host packages; run:\n  sudo apt-get update && sudo apt-get install -y {}",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    cmd!(sh, "apt-get update -q").run()?;
    cmd!(sh, "apt-get install -y -q {packages...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Ok(())
}

fn test(sh: &Shell, extra: &[String]) -> Result<()> {
    deps(sh)?;
    cmd!(sh, "cargo test --workspace {extra...}").run()?;
    {
        let _dir = sh.push_dir(root().join("examples/echo"));
        cmd!(sh, "rebar3 eunit")
            .run()
            .context("rebar3 eunit in examples/echo")?;
    }
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(root().join("recipes"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    recipes.sort();
    let mut failed = vec![];
    for r in &recipes {
        let text = std::fs::read_to_string(r)?;
        let runnable = RUNNABLE_TARGETS
            .iter()
            .any(|t| text.contains(&format!("target = \"{t}\"")));
        if !runnable {
            eprintln!(
                "xtask: not smoke-testing {} (target not runnable here)",
                r.display()
            );
            continue;
        }
        let junit = format!(
            "target/smoke-{}.xml",
            r.file_stem().unwrap_or_default().to_string_lossy()
        );
        if cmd!(
            sh,
            "target/release/beambake smoke {r} --out target/beambake --junit {junit}"
        )
        .run()
        .is_err()
        {
            failed.push(r.display().to_string());
        }
    }
    if !failed.is_empty() {
        bail!("smoke failed: {}", failed.join(", "));
    }
    Ok(())
}

fn beambake(sh: &Shell, command: &str, args: &[String]) -> Result<()> {
    deps(sh)?;
    if args.is_empty() {
        bail!("usage: cargo xtask {command} RECIPE [beambake {command} options]");
    }
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    cmd!(
        sh,
        "target/release/beambake {command} --out target/beambake {args...}"
    )
    .run()?;
    Ok(())
}
