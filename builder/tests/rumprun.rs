//! The rumprun target booted for real: the toolchain beambake builds from the pinned
//! snapshot, the BEAM cross-built for rumprun (`cargo xtask rumprun-beam`, named by
//! `BEAMBAKE_RUMPRUN_BEAM` or found at `target/otp-rumprun/beam`), baked, booted under qemu
//! (TCG) with both ISOs and a tap in a private namespace: the seed's echo and clustering
//! sessions, a release that stops reported by its status, refusals (NIFs, SMP, a snapshot
//! that is not the pinned one).
//!
//! And the target without a toolchain:
//! `--no-bake` writes erlang.iso, app.iso and the launch config; the ISOs are mounted by a
//! real Linux kernel (beambake's User Mode Linux guest, iso9660 driver) and every file's
//! content and mode match what xorriso extracts on the host; a missing toolchain, a bad
//! address, names ISO 9660 cannot hold and files over 4 GiB are clear errors. The bake
//! step's contract (`rumprun-bake hw_virtio OUT BEAM`) is checked with a recording
//! stand-in for the tool.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use beambake_testkit::{
    check, copy_dir, fails_with, fields, is_root, output, skip, stderr, stdout, tempdir, vm_lock,
    which, RecipeEdit,
};
use beambake_testkit::{repo_root, skip_if};
use common::{
    beambake, build_fails, build_recipe, command_on, echo, fresh_project, needs_vm_host, read_json,
    rootfs, smoke, stdout_json,
};

fn rumprun_recipe() -> RecipeEdit {
    RecipeEdit::copy("echo-rumprun")
}

fn build_no_bake(recipe: &Path, out: &Path) -> PathBuf {
    build_recipe(recipe, out, &["--no-bake"]);
    out.join("echo-rumprun")
}

#[test]
fn no_bake_writes_both_isos_and_the_launch_config_reproducibly() {
    let d = tempdir();
    let recipe = rumprun_recipe().write(d.path());
    let a = build_no_bake(&recipe, &d.path().join("a"));
    for f in [
        "erlang.iso",
        "app.iso",
        "rumprun-config.json",
        "rumprun-config.structured.json",
        "run-rumprun.sh",
        "run-qemu.sh",
        "boot.json",
        "manifest.json",
    ] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    assert!(!a.join("echo-rumprun.hw.bin").exists());
    for s in ["run-rumprun.sh", "run-qemu.sh"] {
        let mode = fs::metadata(a.join(s)).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{s} is executable");
        let o = output(Command::new("sh").arg("-n").arg(a.join(s)));
        assert!(o.status.success(), "{s}: {}", stderr(&o));
    }
    let flat = fs::read_to_string(a.join("rumprun-config.json")).unwrap();
    assert!(flat.contains("\"mountpoint\": \"/opt/erlang\""), "{flat}");
    assert!(flat.contains("\"mountpoint\": \"/apps/erlang\""), "{flat}");
    assert!(flat.contains("-no_epmd"), "plain form: {flat}");
    assert!(
        flat.contains("-boot /apps/erlang/releases/0.1.0/start"),
        "{flat}"
    );
    let structured = read_json(&a.join("rumprun-config.structured.json"));
    assert!(structured["rc"].is_array());
    let manifest = fs::read_to_string(a.join("manifest.json")).unwrap();
    for f in [
        "erlang.iso",
        "app.iso",
        "rumprun-config.json",
        "run-qemu.sh",
    ] {
        assert!(manifest.contains(f), "{f} not in the manifest");
    }
    // Trimmed: no ERTS executables, no sources, far below the seed's 152 MB.
    let size = fs::metadata(a.join("erlang.iso")).unwrap().len();
    assert!(size < 20 << 20, "erlang.iso is {size} bytes");
    // Same inputs, same bytes, from another output dir.
    let b = build_no_bake(&recipe, &d.path().join("b"));
    for iso in ["erlang.iso", "app.iso"] {
        assert_eq!(
            fs::read(a.join(iso)).unwrap(),
            fs::read(b.join(iso)).unwrap(),
            "{iso} differs between two builds"
        );
    }
}

#[test]
fn the_clustering_form_carries_node_and_cookie() {
    let d = tempdir();
    let recipe = rumprun_recipe()
        .set("distribution.node", "echo")
        .set("distribution.cookie", "rumpcookie")
        .write(d.path());
    let a = build_no_bake(&recipe, &d.path().join("out"));
    let flat = fs::read_to_string(a.join("rumprun-config.json")).unwrap();
    assert!(!flat.contains("-no_epmd"), "{flat}");
    assert!(
        flat.contains("-epmd_module beambake_epmd -name echo@10.0.120.101 -setcookie rumpcookie"),
        "{flat}"
    );
    // Without a cookie in the recipe: a fresh random one per build.
    let recipe = rumprun_recipe()
        .set("distribution.node", "echo")
        .write(d.path());
    let one = build_no_bake(&recipe, &d.path().join("r1"));
    let two = build_no_bake(&recipe, &d.path().join("r2"));
    let c1 = fs::read_to_string(one.join("cookie")).unwrap();
    let c2 = fs::read_to_string(two.join("cookie")).unwrap();
    assert_ne!(c1, c2);
    assert!(fs::read_to_string(one.join("run-rumprun.sh"))
        .unwrap()
        .contains(c1.trim()));
}

#[test]
fn the_clustering_form_follows_the_release_vm_args_like_the_other_targets() {
    // The release names its node and cookie (as rebar3's template does): clustering on,
    // the name moved to the guest's address, the release's cookie kept.
    let d = tempdir();
    let (_keep, project) = fresh_project();
    let mine = d.path().join("echo");
    copy_dir(&project, &mine);
    fs::write(
        mine.join("config/vm.args"),
        "-name echo@localhost\n-setcookie relcookie\n",
    )
    .unwrap();
    let mine_recipe = rumprun_recipe().set("release.source", &mine);
    let recipe = mine_recipe.write(d.path());
    let a = build_no_bake(&recipe, &d.path().join("out"));
    let flat = fs::read_to_string(a.join("rumprun-config.json")).unwrap();
    assert!(
        flat.contains("-name echo@10.0.120.101 -setcookie relcookie"),
        "{flat}"
    );
    // [distribution] overrides the release's cookie.
    let recipe = mine_recipe.set("distribution.cookie", "rc").write(d.path());
    let b = build_no_bake(&recipe, &d.path().join("out2"));
    let flat = fs::read_to_string(b.join("rumprun-config.json")).unwrap();
    assert!(
        flat.contains("-name echo@10.0.120.101 -setcookie rc "),
        "{flat}"
    );
}

#[test]
fn a_missing_toolchain_is_a_clear_error_and_boot_says_so_too() {
    let d = tempdir();
    // No source snapshot to build the toolchain from, none installed.
    let recipe = rumprun_recipe().remove("rumprun.source").write(d.path());
    let out = d.path().join("out");
    let o = output(
        command_on("build", &recipe, "--out", &out, &[])
            .env("PATH", "/usr/bin:/bin")
            .env_remove("RUMPRUN_TOOLCHAIN")
            .env_remove("BEAMBAKE_RUMPRUN_SRC"),
    );
    fails_with(
        &o,
        &[
            "rumprun-bake",
            "RUMPRUN_TOOLCHAIN",
            "--no-bake",
            "echo-rumprun.toml",
        ],
    );
    assert!(
        !out.join("echo-rumprun/erlang.iso").exists(),
        "nothing built"
    );
    let dir = build_no_bake(&recipe, &out);
    let o = beambake(&["boot", dir.to_str().unwrap()]);
    fails_with(&o, &["no baked rumprun kernel", "--no-bake"]);
}

#[test]
fn the_bake_step_runs_rumprun_bake_hw_virtio() {
    let d = tempdir();
    // A stand-in for the toolchain's rumprun-bake: records its arguments and writes the
    // output file, as the real tool's contract says.
    let tc = d.path().join("toolchain");
    fs::create_dir_all(tc.join("bin")).unwrap();
    let log = d.path().join("bake.log");
    let tool = tc.join("bin/rumprun-bake");
    fs::write(
        &tool,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\ncp \"$3\" \"$2\"\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let beam = d.path().join("beam");
    fs::write(&beam, b"a rumprun BEAM").unwrap();
    let recipe = rumprun_recipe()
        .remove("rumprun.source")
        .set("rumprun.beam", &beam)
        .write(d.path());
    let out = d.path().join("out");
    let o = output(
        command_on("build", &recipe, "--out", &out, &[])
            .env("RUMPRUN_TOOLCHAIN", &tc)
            .env_remove("BEAMBAKE_RUMPRUN_SRC"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let kernel = out.join("echo-rumprun/echo-rumprun.hw.bin");
    // The tool writes into the output set being built (a sibling dir of the final one,
    // swapped in as a whole when the build succeeds).
    let args = fs::read_to_string(&log).unwrap();
    let args: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(args.len(), 3, "{args:?}");
    assert_eq!(args[0], "hw_virtio");
    assert_eq!(args[2], beam.to_str().unwrap());
    let baked = Path::new(args[1]);
    assert_eq!(baked.file_name().unwrap(), "echo-rumprun.hw.bin");
    let build_dir = baked.parent().unwrap().to_str().unwrap();
    assert!(
        build_dir.starts_with(out.join(".echo-rumprun.build-").to_str().unwrap()),
        "{args:?}"
    );
    assert_eq!(fs::read(&kernel).unwrap(), b"a rumprun BEAM");
    let manifest = fs::read_to_string(out.join("echo-rumprun/manifest.json")).unwrap();
    assert!(manifest.contains("echo-rumprun.hw.bin"), "{manifest}");
}

#[test]
fn a_bad_address_is_named() {
    let d = tempdir();
    let recipe = rumprun_recipe()
        .set("network.guest", "10.0.120.301/24")
        .write(d.path());
    let err = build_fails(
        &recipe,
        &d.path().join("out"),
        &["--no-bake"],
        "network.guest",
    );
    assert!(err.contains("echo-rumprun.toml"), "{err}");
}

/// A digest of `dir` by `echo_tree:digest_hex/1`, computed on the host.
fn host_digest(dir: &Path) -> String {
    let ebin = echo().release.join("lib/echo-0.1.0/ebin");
    let o = output(
        Command::new("erl")
            .args(["-noshell", "-pa", ebin.to_str().unwrap(), "-eval"])
            .arg(format!(
                "io:format(\"~s\", [echo_tree:digest_hex({:?})]), halt().",
                dir.display().to_string()
            )),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn the_isos_are_mounted_by_a_real_kernel_and_match_xorriso() {
    if !is_root() || which("osirrox").is_none() || which("make").is_none() {
        skip!("needs root, xorriso and the UML kernel build tools");
    }
    let d = tempdir();
    let isos = build_no_bake(&rumprun_recipe().write(d.path()), &d.path().join("rr"));
    // A beambake uml guest with both images attached read-only, its checks replaced (and
    // smoke's default timeouts).
    let mut recipe = RecipeEdit::copy("echo-uml")
        .set("vm.count", 1)
        .remove("smoke")
        .clear("check")
        .add_check(check("tcp_echo").set("port", 8080));
    // The host's view: osirrox extracts each image (Rock Ridge modes and symlinks kept).
    for (iso, mount) in [("erlang.iso", "/mnt/erlang"), ("app.iso", "/mnt/app")] {
        let x = d.path().join(format!("x-{iso}"));
        let o = output(
            Command::new("osirrox")
                .args(["-indev", isos.join(iso).to_str().unwrap(), "-extract", "/"])
                .arg(&x),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        // osirrox gives the extraction root the caller's mode; the digest skips the root.
        let want = host_digest(&x);
        recipe = recipe
            .add_check(
                check("rpc")
                    .set("call", format!("echo_tree:digest_hex(\"{mount}\")"))
                    .set("expect", format!("\"{want}\"")),
            )
            .push(
                "disk",
                fields()
                    .set("path", isos.join(iso))
                    .set("mount", mount)
                    .set("fstype", "iso9660"),
            );
    }
    let inetrc = fs::read_to_string(d.path().join("x-erlang.iso/erl_inetrc")).unwrap();
    let recipe = recipe
        .add_check(
            check("rpc")
                .set("call", r#"file:read_file("/mnt/erlang/erl_inetrc")"#)
                .set("expect", format!("{{ok, <<{inetrc:?}>>}}")),
        )
        .write(d.path());
    let _vm = vm_lock();
    let o = smoke(&recipe, &d.path().join("uml"), &["--json"]);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{report}\n{}", stderr(&o));
    assert!(report.contains("echo_tree:digest_hex"), "{report}");
}

#[test]
fn a_file_iso9660_cannot_hold_is_a_clear_error() {
    let d = tempdir();
    let rel = d.path().join("rel");
    copy_dir(&echo().release, &rel);
    let priv_dir = rel.join("lib/echo-0.1.0/priv");
    fs::create_dir_all(&priv_dir).unwrap();
    // (A name longer than 255 bytes cannot exist on the host's filesystem; the writer's
    // NameTooLong error for such tree entries is covered by image::iso9660's unit tests.)
    // A sparse file just over 4 GiB: one ISO 9660 extent cannot hold it.
    let big = priv_dir.join("big.bin");
    fs::File::create(&big)
        .unwrap()
        .set_len((4u64 << 30) + 1)
        .unwrap();
    let o = rootfs(&rel, &d.path().join("b.iso"), &[]);
    let _ = fs::remove_file(&big);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("big.bin"), "{err}");
    assert!(!d.path().join("b.iso").exists());
}

/// A traced boot runs the release on the host: not with rumprun's cross-built ERTS.
#[test]
fn a_traced_boot_is_refused() {
    let d = tempdir();
    let recipe = rumprun_recipe()
        .set("launch.code_loading", "traced")
        .write(d.path());
    let err = build_fails(
        &recipe,
        &d.path().join("out"),
        &["--no-bake"],
        "launch.code_loading",
    );
    assert!(err.contains("microvm and uml only"), "{err}");
}

/// The BEAM cross-built for rumprun, when it has been built.
fn rumprun_beam() -> Option<PathBuf> {
    std::env::var_os("BEAMBAKE_RUMPRUN_BEAM")
        .map(PathBuf::from)
        .or_else(|| Some(repo_root().join("target/otp-rumprun/beam")))
        .filter(|p| p.is_file())
}

/// The seed's clustering session, for real: the baked BEAM boots under qemu with
/// erlang.iso and app.iso, answers the echo (the seed's telnet session), and a host node
/// pings it and runs rpc on it (`system_architecture` is `"x86_64-rumprun-netbsd"`); its
/// `erlang:memory()` is reported. The node's EPMD is its own (beambake_epmd).
#[test]
fn a_baked_beam_boots_and_passes_echo_distribution_and_rpc() {
    skip_if!(needs_vm_host());
    let Some(beam) = rumprun_beam() else {
        skip!("no BEAM built for rumprun (cargo xtask rumprun-beam)");
    };
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-rumprun-cluster")
        .set("rumprun.beam", &beam)
        .write(d.path());
    let _vm = vm_lock();
    let o = smoke(&recipe, &d.path().join("out"), &["--json"]);
    let r = stdout_json(&o);
    assert!(o.status.success(), "{r:#}\n{}", stderr(&o));
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4, "{r:#}");
    for c in checks {
        assert_eq!(c["passed"], true, "{r:#}");
    }
    let arch = checks[2]["message"].as_str().unwrap();
    assert!(arch.contains("x86_64-rumprun-netbsd"), "{arch}");
    let memory = checks[3]["message"].as_str().unwrap();
    assert!(
        memory.contains("{total,") && memory.contains("{processes,"),
        "{memory}"
    );
    let dir = d.path().join("out/echo-rumprun-cluster");
    let manifest = fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("rumprun toolchain"), "{manifest}");
    assert!(manifest.contains("rumprun-hw-kernel"), "{manifest}");
}

/// A release that cannot start on rumprun: the BEAM exits, rumprun halts (and qemu
/// would stay up); beambake reads the program's status from the console, ends the VM and
/// reports that status, not a timeout.
#[test]
fn a_release_that_stops_on_rumprun_reports_its_status_not_a_timeout() {
    skip_if!(needs_vm_host());
    let Some(beam) = rumprun_beam() else {
        skip!("no BEAM built for rumprun (cargo xtask rumprun-beam)");
    };
    let d = tempdir();
    let project = common::broken_echo_project(d.path());
    let recipe = RecipeEdit::copy("echo-rumprun")
        .set("rumprun.beam", &beam)
        .set("release.source", &project)
        .set("smoke.ready_timeout_s", 600)
        .write(d.path());
    let _vm = vm_lock();
    let start = std::time::Instant::now();
    let o = smoke(&recipe, &d.path().join("out"), &[]);
    let text = stdout(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("guest exited with status 1"),
        "{text}\n{}",
        stderr(&o)
    );
    assert!(text.contains("_exit(1)"), "console tail missing: {text}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(300),
        "waited for the timeout instead"
    );
    let left = beambake_testkit::processes_matching("echo-rumprun.hw.bin");
    assert!(left.is_empty(), "qemu left running: {left:?}");
    // `beambake boot` (console on the terminal) ends the same way, with the status.
    let dir = d.path().join("out/echo-rumprun");
    let start = std::time::Instant::now();
    let o = beambake(&["boot", dir.to_str().unwrap()]);
    let console = stdout(&o);
    assert!(
        console.contains("=== ERROR: _exit(1) called ==="),
        "{console}"
    );
    assert_eq!(o.status.code(), Some(1), "{console}\n{}", stderr(&o));
    assert!(
        stderr(&o).contains("guest exited with status 1"),
        "{}",
        stderr(&o)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(120));
    let left = beambake_testkit::processes_matching("echo-rumprun.hw.bin");
    assert!(left.is_empty(), "qemu left running: {left:?}");
}

/// A C file built into a shared object in `dir`/priv, exporting `symbol`.
fn native_lib(dir: &Path, name: &str, symbol: &str) {
    fs::create_dir_all(dir.join("priv")).unwrap();
    let c = dir.join(format!("{name}.c"));
    fs::write(&c, format!("int {symbol}(void) {{ return 0; }}\n")).unwrap();
    let o = output(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(dir.join(format!("priv/{name}.so")))
            .arg(&c),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    fs::remove_file(&c).unwrap();
}

/// A NIF built for Linux in the release is refused, naming it (the rumprun BEAM has no
/// dlopen); a driver is left out with a note.
#[test]
fn a_linux_nif_is_refused_by_name_and_a_driver_is_left_out() {
    if which("gcc").is_none() {
        skip!("gcc not installed");
    }
    let d = tempdir();
    let project = d.path().join("echo");
    beambake_testkit::copy_project(&repo_root().join("examples/echo"), &project);
    native_lib(&project, "echo_drv", "driver_init");
    let recipe = RecipeEdit::copy("echo-rumprun")
        .set("release.source", &project)
        .write(d.path());
    let note = build_recipe(&recipe, &d.path().join("a"), &["--no-bake", "-v"]);
    assert!(note.contains("echo_drv.so"), "{note}");
    native_lib(&project, "echo_nif", "nif_init");
    let e = build_fails(&recipe, &d.path().join("b"), &["--no-bake"], "echo_nif.so");
    assert!(e.contains("NIF") && e.contains("dlopen"), "{e}");
    assert!(!d.path().join("b/echo-rumprun").exists());
}

/// rumprun has no SMP: more than one vCPU is refused before anything is built.
#[test]
fn smp_is_refused() {
    let d = tempdir();
    let recipe = rumprun_recipe().set("vm.cpus", 2).write(d.path());
    let e = build_fails(&recipe, &d.path().join("out"), &["--no-bake"], "no SMP");
    assert!(e.contains("vm.cpus = 2"), "{e}");
}

/// A snapshot whose sha256 is not the pinned one is refused before anything is built,
/// naming the file and the pin.
#[test]
fn a_snapshot_that_is_not_the_pinned_one_is_refused() {
    let d = tempdir();
    let snap = d.path().join("rumprun-src.tar.xz");
    fs::write(&snap, b"another snapshot").unwrap();
    let o = output(
        Command::new(common::BIN)
            .args(["toolchain", "rumprun", "--source"])
            .arg(&snap)
            .env("XDG_CACHE_HOME", d.path().join("cache")),
    );
    let e = fails_with(&o, &["images/rumprun.toml", "948408868cf6"]);
    assert!(e.contains(&snap.display().to_string()), "{e}");
    let recipe = rumprun_recipe()
        .set("rumprun.source", &snap)
        .set("rumprun.beam", &snap)
        .write(d.path());
    let o = output(
        command_on("build", &recipe, "--out", &d.path().join("out"), &[])
            .env("XDG_CACHE_HOME", d.path().join("cache")),
    );
    fails_with(&o, &["images/rumprun.toml", "does not match"]);
    assert!(!d.path().join("out/echo-rumprun").exists());
}

/// The toolchain beambake built: a second call is a cache hit, and its compiler builds a
/// program that `rumprun-bake` bakes.
#[test]
fn the_toolchain_is_cached_and_bakes_a_c_program() {
    let snapshot = repo_root().join(beambake::rumprun_toolchain::DEV_SNAPSHOT);
    if !snapshot.is_file() {
        skip!("no rumprun snapshot at {}", snapshot.display());
    }
    let o = output(
        Command::new(common::BIN)
            .args(["toolchain", "rumprun", "--json", "--source"])
            .arg(&snapshot),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let first = stdout_json(&o);
    let o = output(
        Command::new(common::BIN)
            .args(["toolchain", "rumprun", "--json", "--source"])
            .arg(&snapshot),
    );
    let again = stdout_json(&o);
    assert_eq!(again["built"], false, "{again:#}");
    assert_eq!(again["dir"], first["dir"]);
    let bin = PathBuf::from(again["bin"].as_str().unwrap());
    let d = tempdir();
    let c = d.path().join("hello.c");
    fs::write(
        &c,
        "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }\n",
    )
    .unwrap();
    let o = output(
        Command::new(bin.join("x86_64-rumprun-netbsd-gcc"))
            .arg("-o")
            .arg(d.path().join("hello"))
            .arg(&c),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = output(
        Command::new(bin.join("rumprun-bake"))
            .arg("hw_virtio")
            .arg(d.path().join("hello.bin"))
            .arg(d.path().join("hello")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::metadata(d.path().join("hello.bin")).unwrap().len() > 1 << 20);
}
