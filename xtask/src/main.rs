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
mod otp;

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
    ("xorriso", "xorriso"),
    ("busybox", "busybox-static"),
    ("setpriv", "util-linux"),
    // Building beambake's User Mode Linux kernel (uml target) and its images.
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("patch", "patch"),
    ("xz", "xz-utils"),
    ("mkfs.ext4", "e2fsprogs"),
    ("unsquashfs", "squashfs-tools"),
    // OTP source for the patch-set tests (`cargo xtask otp-src`).
    ("dpkg-source", "dpkg-dev"),
];

/// Recipes whose target this machine can boot (the others are built in tests only as far
/// as their toolchains allow; see the README support matrix).
const RUNNABLE_TARGETS: &[&str] = &["microvm", "uml"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sh = Shell::new()?;
    sh.change_dir(root());
    match args.first().map(String::as_str) {
        Some("deps") => deps(&sh),
        Some("test") => test(&sh, &args[1..]),
        Some("build-image") => beambake(&sh, "build", &args[1..]),
        Some("smoke") => beambake(&sh, "smoke", &args[1..]),
        Some("otp-src") => otp::otp_src(&sh).map(|_| ()),
        Some("otp-build") => {
            let set = match args.get(1).map(String::as_str) {
                Some("--set") => args.get(2).cloned(),
                _ => None,
            };
            let Some(set) = set else {
                bail!("usage: cargo xtask otp-build --set NAME");
            };
            otp::otp_build(&sh, &root(), &set).map(|_| ())
        }
        Some("otp-prove") => {
            if otp::otp_prove(&sh, &root())? {
                Ok(())
            } else {
                bail!("the epmd-as-thread proof failed")
            }
        }
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
                "usage: cargo xtask <deps | test | build-image RECIPE | smoke RECIPE | bench | otp-src | otp-build --set NAME | otp-prove>"
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

/// Library packages (no command to look for): building the patched OTP's erts.
const LIBS: &[&str] = &["libncurses-dev", "libssl-dev"];

fn deps(sh: &Shell) -> Result<()> {
    let fmt = "${Status}";
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !have(sh, tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.extend(LIBS.iter().copied().filter(|pkg| {
        !cmd!(sh, "dpkg-query -W -f={fmt} {pkg}")
            .quiet()
            .ignore_stderr()
            .read()
            .is_ok_and(|s| s.contains("install ok installed"))
    }));
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

/// Tallies of every runner's results, for one closing line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cmd`, echoing its output, and adds the counts `parse` finds in each line.
    fn run(
        &mut self,
        mut cmd: std::process::Command,
        parse: fn(&str) -> Option<(u64, u64)>,
    ) -> Result<bool> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("{cmd:?}"))?;
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines() {
                let line = line?;
                println!("{line}");
                if let Some((p, f)) = parse(&line) {
                    self.passed += p;
                    self.failed += f;
                }
            }
        }
        Ok(child.wait()?.success())
    }
}

/// `test result: ok. 154 passed; 0 failed; ...`
fn cargo_counts(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |key: &str| -> Option<u64> {
        rest.split(';')
            .find(|p| p.trim_end().ends_with(key))?
            .split_whitespace()
            .rev()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((num(" passed")?, num(" failed")?))
}

/// EUnit: `3 tests, 0 failures` (colour codes stripped).
fn eunit_counts(line: &str) -> Option<(u64, u64)> {
    let clean: String = line
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    let i = clean.find(" tests, ")?;
    let tests: u64 = clean[..i]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let failures: u64 = clean[i + 8..].split_whitespace().next()?.parse().ok()?;
    Some((tests - failures.min(tests), failures))
}

fn test(sh: &Shell, extra: &[String]) -> Result<()> {
    deps(sh)?;
    // Debian's OTP source, for the patch-set tests.
    let otp_src = otp::otp_src(sh)?;
    let mut tally = Tally::default();
    let mut ok = true;
    let mut cargo = std::process::Command::new("cargo");
    cargo
        .args(["test", "--workspace"])
        .args(extra)
        .env("BEAMBAKE_OTP_SRC", &otp_src)
        .current_dir(root());
    ok &= tally.run(cargo, cargo_counts)?;
    let mut eunit = std::process::Command::new("rebar3");
    eunit.arg("eunit").current_dir(root().join("examples/echo"));
    ok &= tally.run(eunit, eunit_counts)?;
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(root().join("recipes"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    recipes.sort();
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
        let mut smoke = std::process::Command::new(root().join("target/release/beambake"));
        smoke
            .arg("smoke")
            .arg(r)
            .args(["--out", "target/beambake", "--junit", &junit])
            .current_dir(root());
        let passed = tally.run(smoke, |_| None)?;
        if passed {
            tally.passed += 1;
        } else {
            tally.failed += 1;
            ok = false;
        }
    }
    // The osv patch set, built for real (erts, ~1.5 min) and proven: epmd as a thread of
    // erlexec, the emulator in the same process, a second node pings it.
    println!("xtask: building the patched OTP (osv) and proving epmd as a thread");
    match otp::otp_prove(sh, &root()) {
        Ok(true) => tally.passed += 1,
        Ok(false) => {
            tally.failed += 1;
            ok = false;
        }
        Err(e) => {
            eprintln!("xtask: otp-prove: {e:#}");
            tally.failed += 1;
            ok = false;
        }
    }
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    if !ok {
        bail!("some tests failed");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_runner_lines() {
        assert_eq!(
            cargo_counts("test result: ok. 154 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.29s"),
            Some((154, 2))
        );
        assert_eq!(cargo_counts("running 3 tests"), None);
        assert_eq!(
            eunit_counts("\u{1b}[0;32m3 tests, 0 failures"),
            Some((3, 0))
        );
        assert_eq!(eunit_counts("Failed: 1.  Skipped: 0.  Passed: 2."), None);
        assert_eq!(eunit_counts("5 tests, 2 failures"), Some((3, 2)));
    }
}
