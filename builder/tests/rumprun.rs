//! The rumprun target without a rumprun toolchain (none exists on the build machines):
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

use common::*;

fn rumprun_recipe(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    recipe_copy("echo-rumprun", dir, edits)
}

fn build_no_bake(recipe: &Path, out: &Path) -> PathBuf {
    build_recipe(recipe, out, &["--no-bake"]);
    out.join("echo-rumprun")
}

#[test]
fn no_bake_writes_both_isos_and_the_launch_config_reproducibly() {
    let d = tempfile::tempdir().unwrap();
    let recipe = rumprun_recipe(d.path(), &[]);
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
        let o = Command::new("sh")
            .arg("-n")
            .arg(a.join(s))
            .output()
            .unwrap();
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
    let structured: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(a.join("rumprun-config.structured.json")).unwrap(),
    )
    .unwrap();
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
    let d = tempfile::tempdir().unwrap();
    let recipe = rumprun_recipe(
        d.path(),
        &[(
            "[[check]]",
            "[distribution]\nnode = \"echo\"\ncookie = \"rumpcookie\"\n\n[[check]]",
        )],
    );
    let a = build_no_bake(&recipe, &d.path().join("out"));
    let flat = fs::read_to_string(a.join("rumprun-config.json")).unwrap();
    assert!(!flat.contains("-no_epmd"), "{flat}");
    assert!(
        flat.contains("-s erlpmd_ctl start -s setnodename echo@10.0.120.101 rumpcookie"),
        "{flat}"
    );
    // Without a cookie in the recipe: a fresh random one per build.
    let recipe = rumprun_recipe(
        d.path(),
        &[("[[check]]", "[distribution]\nnode = \"echo\"\n\n[[check]]")],
    );
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
    let d = tempfile::tempdir().unwrap();
    let (_keep, project) = fresh_project();
    let mine = d.path().join("echo");
    copy_dir(&project, &mine);
    fs::write(
        mine.join("config/vm.args"),
        "-name echo@localhost\n-setcookie relcookie\n",
    )
    .unwrap();
    let from = format!(
        "source = {:?}",
        repo_root().join("examples/echo").display().to_string()
    );
    let to = format!("source = {:?}", mine.display().to_string());
    let recipe = rumprun_recipe(d.path(), &[(from.as_str(), to.as_str())]);
    let a = build_no_bake(&recipe, &d.path().join("out"));
    let flat = fs::read_to_string(a.join("rumprun-config.json")).unwrap();
    assert!(
        flat.contains("-s setnodename echo@10.0.120.101 relcookie"),
        "{flat}"
    );
    // [distribution] overrides the release's cookie.
    let recipe = rumprun_recipe(
        d.path(),
        &[
            (from.as_str(), to.as_str()),
            ("[[check]]", "[distribution]\ncookie = \"rc\"\n\n[[check]]"),
        ],
    );
    let b = build_no_bake(&recipe, &d.path().join("out2"));
    let flat = fs::read_to_string(b.join("rumprun-config.json")).unwrap();
    assert!(
        flat.contains("-s setnodename echo@10.0.120.101 rc "),
        "{flat}"
    );
}

#[test]
fn a_missing_toolchain_is_a_clear_error_and_boot_says_so_too() {
    let d = tempfile::tempdir().unwrap();
    let recipe = rumprun_recipe(d.path(), &[]);
    let out = d.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_beambake"))
        .args([
            "build",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("PATH", "/usr/bin:/bin")
        .env_remove("RUMPRUN_TOOLCHAIN")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    for needle in [
        "rumprun-bake",
        "RUMPRUN_TOOLCHAIN",
        "--no-bake",
        "echo-rumprun.toml",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(
        !out.join("echo-rumprun/erlang.iso").exists(),
        "nothing built"
    );
    let dir = build_no_bake(&recipe, &out);
    let o = beambake(&["boot", dir.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("no baked rumprun kernel"), "{err}");
    assert!(err.contains("--no-bake"), "{err}");
}

#[test]
fn the_bake_step_runs_rumprun_bake_hw_virtio() {
    let d = tempfile::tempdir().unwrap();
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
    let recipe = rumprun_recipe(
        d.path(),
        &[(
            "[rumprun]",
            &format!("[rumprun]\nbeam = {:?}", beam.display().to_string()),
        )],
    );
    let out = d.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_beambake"))
        .args([
            "build",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RUMPRUN_TOOLCHAIN", &tc)
        .output()
        .unwrap();
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
    let d = tempfile::tempdir().unwrap();
    let recipe = rumprun_recipe(d.path(), &[("10.0.120.101/24", "10.0.120.301/24")]);
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
    let o = Command::new("erl")
        .args(["-noshell", "-pa", ebin.to_str().unwrap(), "-eval"])
        .arg(format!(
            "io:format(\"~s\", [echo_tree:digest_hex({:?})]), halt().",
            dir.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn the_isos_are_mounted_by_a_real_kernel_and_match_xorriso() {
    if !is_root() || which("osirrox").is_none() || which("make").is_none() {
        skip!("needs root, xorriso and the UML kernel build tools");
    }
    let d = tempfile::tempdir().unwrap();
    let isos = build_no_bake(&rumprun_recipe(d.path(), &[]), &d.path().join("rr"));
    // The host's view: osirrox extracts each image (Rock Ridge modes and symlinks kept).
    let mut checks = String::from("[[check]]\ntype = \"tcp_echo\"\nport = 8080\n\n");
    let mut disks = String::new();
    for (iso, mount) in [("erlang.iso", "/mnt/erlang"), ("app.iso", "/mnt/app")] {
        let x = d.path().join(format!("x-{iso}"));
        let o = Command::new("osirrox")
            .args(["-indev", isos.join(iso).to_str().unwrap(), "-extract", "/"])
            .arg(&x)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        // osirrox gives the extraction root the caller's mode; the digest skips the root.
        let want = host_digest(&x);
        checks += &format!(
            "[[check]]\ntype = \"rpc\"\ncall = 'echo_tree:digest_hex(\"{mount}\")'\nexpect = '\"{want}\"'\n\n"
        );
        disks += &format!(
            "[[disk]]\npath = {:?}\nmount = \"{mount}\"\nfstype = \"iso9660\"\n\n",
            isos.join(iso).display().to_string()
        );
    }
    checks += "[[check]]\ntype = \"rpc\"\ncall = 'file:read_file(\"/mnt/erlang/erl_inetrc\")'\n";
    let inetrc = fs::read_to_string(d.path().join("x-erlang.iso/erl_inetrc")).unwrap();
    checks += &format!("expect = '{{ok, <<{:?}>>}}'\n\n", inetrc);
    // A beambake uml guest with both images attached read-only.
    let shared = repo_root().join("recipes/uml-shared");
    let host = format!("host = {:?}", shared.display().to_string());
    let recipe = recipe_copy(
        "echo-uml",
        d.path(),
        &[("host = \"uml-shared\"", &host), ("count = 3", "count = 1")],
    );
    let text = fs::read_to_string(&recipe).unwrap();
    let head = &text[..text.find("[[check]]").unwrap()];
    fs::write(&recipe, format!("{head}{disks}{checks}")).unwrap();
    let _vm = vm_lock();
    let o = beambake(&[
        "smoke",
        recipe.to_str().unwrap(),
        "--out",
        d.path().join("uml").to_str().unwrap(),
        "--json",
    ]);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{report}\n{}", stderr(&o));
    assert!(report.contains("echo_tree:digest_hex"), "{report}");
}

#[test]
fn a_file_iso9660_cannot_hold_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
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
    let o = beambake(&[
        "rootfs",
        rel.to_str().unwrap(),
        "-o",
        d.path().join("b.iso").to_str().unwrap(),
    ]);
    let _ = fs::remove_file(&big);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("big.bin"), "{err}");
    assert!(!d.path().join("b.iso").exists());
}
