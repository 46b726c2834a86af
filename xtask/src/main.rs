//! Developer and CI chores as Rust: `cargo xtask <command>`.
//!
//! - `build-image RECIPE`: release -> image for a recipe; prints the artefact paths.
//! - `smoke RECIPE`: the main job: build, boot under qemu in a private namespace, check.
//! - `test [--no-skips] [cargo test args]`: every test: cargo's (unit and integration,
//!   which boot real guests), the Erlang example's own (`rebar3 eunit`), and the smoke of
//!   every recipe this machine can run. Closes with `xtask: N passed, N failed, N skipped`
//!   and one line per skip with its reason; with `CI` set or `--no-skips`, any skip fails
//!   the run.
//! - `ci-example [RECIPE]`: `examples/ci/pipeline.sh` (what the example GitHub Actions
//!   and GitLab CI files run) on this machine, its artefacts checked.
//! - `identity BASELINE_BEAMBAKE [--init INIT]`: every recipe's artefacts built by a baseline binary and
//!   by this tree's must be byte-identical (for refactors).
//! - `bench-size`: the echo release's tree under each initramfs compressor, with its
//!   `.beam` files gzipped and decompressed (BENCHMARKS.md, "Smaller bytes").
//! - `deps`: checks for the host tools the tests need and installs the missing Debian
//!   packages when run as root (else prints the exact command).
//!
//! Must not: duplicate pipeline logic; it drives the `beambake` binary like a user.

use std::path::{Path, PathBuf};

mod bench;
mod bench_boot;
mod bench_rumprun;
mod ci_example;
mod identity;
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
    // The ISO 9660 writer's other reference readers (libarchive, cdrkit's isovfy).
    ("bsdtar", "libarchive-tools"),
    ("isovfy", "genisoimage"),
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
    // Building OSv from its source snapshot (osv target; images/osv.toml).
    ("g++", "g++"),
    ("genromfs", "genromfs"),
    ("autoconf", "autoconf"),
    ("automake", "automake"),
    ("libtoolize", "libtool"),
    ("gawk", "gawk"),
    ("qemu-img", "qemu-utils"),
    // libvirt from Erlang: the eunit test runs a private libvirtd.
    ("libvirtd", "libvirt-daemon-system"),
];

/// Recipes whose target this machine can boot (the others are built in tests only as far
/// as their toolchains allow; see the README support matrix).
const RUNNABLE_TARGETS: &[&str] = &["microvm", "uml", "osv", "rumprun"];

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
        Some("osv-erts") => otp::osv_erts(&sh, &root()).map(|_| ()),
        Some("rumprun-toolchain") => {
            otp::rumprun_toolchain(&sh, &root()).map(|d| println!("{}", d.display()))
        }
        Some("rumprun-beam") => otp::rumprun_beam(&sh, &root()).map(|_| ()),
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
        Some("identity") => {
            let usage = "usage: cargo xtask identity BASELINE_BEAMBAKE [--init INIT] (a beambake binary built from the landed main; INIT: embed this init instead)";
            let (baseline, init) = match &args[1..] {
                [b] => (b, None),
                [b, flag, i] if flag == "--init" => (b, Some(Path::new(i))),
                _ => bail!(usage),
            };
            identity::identity(&sh, &root(), Path::new(baseline), init)
        }
        Some("bench") => {
            deps(&sh)?;
            bench_tools(&sh, &[("busybox", "busybox-static"), ("zstd", "zstd")])?;
            bench::bench(&sh, &root())
        }
        Some("ci-example") => {
            let recipe = args
                .get(1)
                .map_or("recipes/echo-microvm.toml", String::as_str);
            cmd!(sh, "cargo build --release -q -p beambake").run()?;
            ci_example::run(
                &sh,
                &root(),
                &root().join("target/release/beambake"),
                recipe,
                &root().join("target/ci-example"),
            )
        }
        Some("bench-cache") => {
            deps(&sh)?;
            cmd!(sh, "cargo build --release -q -p beambake").run()?;
            println!("{}", bench::cache(&sh, &root())?);
            Ok(())
        }
        Some("bench-boot") => {
            deps(&sh)?;
            bench_tools(&sh, &[("busybox", "busybox-static"), ("zstd", "zstd")])?;
            cmd!(sh, "cargo build --release -q -p beambake").run()?;
            println!("{}", bench_boot::bench_boot(&sh, &root())?);
            Ok(())
        }
        Some("bench-rumprun") => {
            deps(&sh)?;
            println!("{}", bench_rumprun::bench_rumprun(&sh, &root())?);
            Ok(())
        }
        Some("bench-size") => {
            deps(&sh)?;
            bench_tools(&sh, &[("zstd", "zstd"), ("lz4", "lz4")])?;
            // beambake only writes the uncompressed archives: the tools measured are the
            // host's compressors, so a debug build will do.
            cmd!(sh, "cargo build -q -p beambake").run()?;
            let bb = root().join("target/debug/beambake");
            println!("{}", bench::sizes(&sh, &root(), &bb)?);
            Ok(())
        }
        Some("bench-switch") => {
            deps(&sh)?;
            cmd!(sh, "cargo build --release -q -p beambake").run()?;
            println!("{}", bench::switch(&sh, &root())?);
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <deps | test | build-image RECIPE | smoke RECIPE | ci-example [RECIPE] | bench | bench-boot | bench-rumprun | bench-size | bench-cache | bench-switch | identity BASELINE_BEAMBAKE [--init INIT] | otp-src | otp-build --set NAME | osv-erts | rumprun-toolchain | rumprun-beam | otp-prove>"
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

/// Installs the package of every `(tool, package)` whose tool is missing.
fn bench_tools(sh: &Shell, tools: &[(&str, &str)]) -> Result<()> {
    for (tool, pkg) in tools {
        if !have(sh, tool) {
            install(sh, &[pkg])?;
        }
    }
    Ok(())
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
const LIBS: &[&str] = &[
    "libncurses-dev",
    "libssl-dev",
    // objtool's headers, for the minimal microvm kernel (x86_64 Linux) built from source.
    "libelf-dev",
    // OSv's build (osv target).
    "libboost-all-dev",
    "libedit-dev",
    "libyaml-cpp-dev",
    "python3-requests",
    // `beambake libvirt-port` links libvirt0 (the `virt` crate finds it with pkg-config).
    "libvirt-dev",
];

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
    let packages = with_matching_qemu_utils(packages, &os_codename());
    eprintln!("xtask: installing {}", packages.join(" "));
    cmd!(sh, "apt-get update -q").run()?;
    cmd!(sh, "apt-get install -y -q --allow-downgrades {packages...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Ok(())
}

/// The Debian release's code name (`VERSION_CODENAME` in `/etc/os-release`), if any.
fn os_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// qemu-system-x86 and qemu-utils must come from one Debian release: some machines carry a
/// newer qemu-utils from backports (its source not enabled) that Breaks the release's
/// qemu-system-common. When qemu is being installed, ask for the release's qemu-utils too
/// (`qemu-utils/CODENAME`, a downgrade where needed).
fn with_matching_qemu_utils(packages: &[&str], codename: &str) -> Vec<String> {
    let mut out: Vec<String> = packages
        .iter()
        .filter(|p| **p != "qemu-utils")
        .map(|p| p.to_string())
        .collect();
    let wants_qemu = packages
        .iter()
        .any(|p| *p == "qemu-system-x86" || *p == "qemu-utils");
    if wants_qemu {
        out.push(if codename.is_empty() {
            "qemu-utils".to_string()
        } else {
            format!("qemu-utils/{codename}")
        });
    }
    out
}

#[cfg(test)]
mod install_tests {
    use super::with_matching_qemu_utils;

    #[test]
    fn qemu_utils_follows_the_release_when_qemu_is_installed() {
        assert_eq!(
            with_matching_qemu_utils(&["cpio", "qemu-system-x86"], "bookworm"),
            ["cpio", "qemu-system-x86", "qemu-utils/bookworm"]
        );
        assert_eq!(
            with_matching_qemu_utils(&["qemu-utils", "gawk"], "bookworm"),
            ["gawk", "qemu-utils/bookworm"]
        );
        assert_eq!(with_matching_qemu_utils(&["gawk"], "bookworm"), ["gawk"]);
        assert_eq!(
            with_matching_qemu_utils(&["qemu-system-x86"], ""),
            ["qemu-system-x86", "qemu-utils"]
        );
    }
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

/// The file tests record their skips in (the testkit's skip module,
/// `builder/crates/testkit/src/skip.rs`), one `binary::test<TAB>reason` line per skip.
const SKIP_LOG_ENV: &str = "BEAMBAKE_SKIP_LOG";

/// A test that skipped all or part of its checks, and why.
#[derive(Debug, PartialEq)]
struct Skip {
    test: String,
    reason: String,
}

/// Reads the skip log's lines; a line without a reason still counts.
fn parse_skips(log: &str) -> Vec<Skip> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (test, reason) = l.split_once('\t').unwrap_or((l, "(no reason given)"));
            Skip {
                test: test.to_string(),
                reason: reason.to_string(),
            }
        })
        .collect()
}

/// The closing lines: the counts, with each skipping test (counted once, however many
/// skips it recorded) taken out of the passes libtest counted it in, then one line per
/// skip.
fn closing_lines(tally: &Tally, skips: &[Skip]) -> Vec<String> {
    let skipped = skips
        .iter()
        .map(|s| s.test.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let mut lines = vec![format!(
        "xtask: {} passed, {} failed, {skipped} skipped",
        tally.passed.saturating_sub(skipped),
        tally.failed
    )];
    lines.extend(
        skips
            .iter()
            .map(|s| format!("xtask: skipped {}: {}", s.test, s.reason)),
    );
    lines
}

/// Whether a skip fails the run: on CI (`CI` set to anything but `false`, `0` or empty),
/// where every tool is installed and every test must run, or when asked.
fn skips_fail(ci: Option<&str>, no_skips_flag: bool) -> bool {
    no_skips_flag || ci.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"))
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
    // The ERTS built for OSv (cached): the osv recipes and tests name it.
    let osv_erts = otp::osv_erts(sh, &root())?;
    // The rumprun toolchain and the BEAM cross-built with it (cached): the rumprun
    // recipes and tests name them.
    let rumprun_beam = otp::rumprun_beam(sh, &root())?;
    let no_skips = extra.iter().any(|a| a == "--no-skips");
    let extra: Vec<&String> = extra.iter().filter(|a| *a != "--no-skips").collect();
    let skip_log = root().join("target/xtask-skips.log");
    std::fs::create_dir_all(root().join("target"))?;
    std::fs::write(&skip_log, "").with_context(|| format!("{}", skip_log.display()))?;
    let mut tally = Tally::default();
    let mut ok = true;
    let mut cargo = std::process::Command::new("cargo");
    cargo
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("BEAMBAKE_OTP_SRC", &otp_src)
        .env("BEAMBAKE_OSV_ERTS", &osv_erts)
        .env("BEAMBAKE_RUMPRUN_BEAM", rumprun_beam.join("beam"))
        .env(SKIP_LOG_ENV, &skip_log)
        .current_dir(root());
    ok &= tally.run(cargo, cargo_counts)?;
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    // The Erlang side's tests boot real VMs through the binary just built: `BEAMBAKE`
    // names it, `BEAMBAKE_ROOT` the checkout (recipes, examples).
    for dir in ["examples/echo", "erlang"] {
        let mut eunit = std::process::Command::new("rebar3");
        eunit
            .arg("eunit")
            .env("BEAMBAKE", root().join("target/release/beambake"))
            .env("BEAMBAKE_ROOT", root())
            .env(SKIP_LOG_ENV, &skip_log)
            .current_dir(root().join(dir));
        ok &= tally.run(eunit, eunit_counts)?;
    }
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
    // The CI example's pipeline (examples/ci/pipeline.sh), as a CI runs it.
    println!("xtask: running the CI example pipeline (cargo xtask ci-example)");
    let ci_example = ci_example::run(
        sh,
        &root(),
        &root().join("target/release/beambake"),
        "recipes/echo-microvm.toml",
        &root().join("target/ci-example"),
    );
    match ci_example {
        Ok(()) => tally.passed += 1,
        Err(e) => {
            eprintln!("xtask: ci-example: {e:#}");
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
    let log = std::fs::read_to_string(&skip_log)
        .with_context(|| format!("reading {}", skip_log.display()))?;
    let skips = parse_skips(&log);
    for line in closing_lines(&tally, &skips) {
        println!("{line}");
    }
    if !ok {
        bail!("some tests failed");
    }
    let ci = std::env::var("CI").ok();
    if !skips.is_empty() && skips_fail(ci.as_deref(), no_skips) {
        bail!(
            "{} skip(s) where every test must run ({}): install what they name (cargo xtask deps) or fix the test",
            skips.len(),
            if no_skips { "--no-skips" } else { "CI is set" }
        );
    }
    Ok(())
}

fn beambake(sh: &Shell, command: &str, args: &[String]) -> Result<()> {
    deps(sh)?;
    if args.is_empty() {
        bail!("usage: cargo xtask {command} RECIPE [beambake {command} options]");
    }
    // An osv recipe names the OSv ERTS at target/otp-osv: build (or reuse) and link it.
    let recipe_text = std::fs::read_to_string(&args[0]).unwrap_or_default();
    if recipe_text.contains("target = \"osv\"") {
        otp::osv_erts(sh, &root())?;
    }
    if recipe_text.contains("target = \"rumprun\"") && !args.iter().any(|a| a == "--no-bake") {
        otp::rumprun_beam(sh, &root())?;
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

    #[test]
    fn skips_are_parsed_counted_once_per_test_and_listed() {
        let log = "kernel::real_fetch_gives_kernel\tapt-get unavailable\n\
                   beambake::image::iso9660::tests::small\tbsdtar not installed\n\
                   beambake::image::iso9660::tests::small\tisovfy not installed\n\
                   \n\
                   odd line\n";
        let skips = parse_skips(log);
        assert_eq!(skips.len(), 4);
        assert_eq!(
            skips[0],
            Skip {
                test: "kernel::real_fetch_gives_kernel".into(),
                reason: "apt-get unavailable".into()
            }
        );
        assert_eq!(skips[3].reason, "(no reason given)");
        let tally = Tally {
            passed: 10,
            failed: 1,
        };
        assert_eq!(
            closing_lines(&tally, &skips),
            [
                "xtask: 7 passed, 1 failed, 3 skipped",
                "xtask: skipped kernel::real_fetch_gives_kernel: apt-get unavailable",
                "xtask: skipped beambake::image::iso9660::tests::small: bsdtar not installed",
                "xtask: skipped beambake::image::iso9660::tests::small: isovfy not installed",
                "xtask: skipped odd line: (no reason given)",
            ]
        );
        assert_eq!(
            closing_lines(&Tally::default(), &[]),
            ["xtask: 0 passed, 0 failed, 0 skipped"]
        );
    }

    #[test]
    fn skips_fail_on_ci_or_when_asked() {
        assert!(!skips_fail(None, false));
        assert!(skips_fail(None, true));
        assert!(skips_fail(Some("true"), false));
        assert!(skips_fail(Some("1"), false));
        assert!(!skips_fail(Some("false"), false));
        assert!(!skips_fail(Some(""), false));
    }
}

/// The crate boundaries ARCHITECTURE.md promises, read from the manifests: a new
/// dependency that breaks one fails here, not in a review.
#[cfg(test)]
mod boundaries {
    use std::collections::BTreeMap;

    /// Crate dir name -> the beambake crates in its `[dependencies]`.
    fn graph() -> BTreeMap<String, Vec<String>> {
        let crates = super::root().join("builder/crates");
        let mut g = BTreeMap::new();
        for e in std::fs::read_dir(&crates).unwrap() {
            let dir = e.unwrap().path();
            let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let deps = text
                .split("\n[")
                .find(|s| s.starts_with("dependencies]"))
                .unwrap_or("")
                .lines()
                .filter_map(|l| l.strip_prefix("beambake-"))
                .filter_map(|l| l.split([' ', '.', '=']).next())
                .map(str::to_string)
                .collect();
            g.insert(
                dir.file_name().unwrap().to_string_lossy().into_owned(),
                deps,
            );
        }
        g
    }

    #[test]
    fn writers_and_the_contract_depend_on_no_beambake_crate() {
        let g = graph();
        for leaf in ["images", "contract", "recipe", "patch", "testkit"] {
            assert_eq!(g[leaf], Vec::<String>::new(), "{leaf} must stay a leaf");
        }
    }

    #[test]
    fn targets_cannot_see_each_other_and_only_the_cli_sees_them() {
        let g = graph();
        assert!(g.keys().filter(|k| k.starts_with("target-")).count() >= 3);
        for (name, deps) in &g {
            assert!(
                !deps.iter().any(|d| d.starts_with("target-")),
                "{name} depends on a target crate: {deps:?}"
            );
        }
    }

    #[test]
    fn nothing_below_the_targets_depends_on_target() {
        let g = graph();
        for name in [
            "images", "release", "patch", "kernel", "recipe", "vm", "contract",
        ] {
            assert!(!g[name].contains(&"target".to_string()), "{name} -> target");
        }
        for name in ["images", "release", "patch", "kernel"] {
            assert!(
                !g[name].contains(&"vm".to_string()),
                "{name} -> vm (boot, net)"
            );
        }
    }
}
