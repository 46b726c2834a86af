//! The uml target, booted for real: beambake's User Mode Linux kernel (built once into the
//! cache from Debian's linux-source-6.1 with patches/linux/6.1/uml), read-only root images,
//! tap networking in a private namespace, several VMs from one image, data disks and
//! hostfs, through the `beambake` CLI. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

fn needs_uml_host() -> Option<&'static str> {
    if !is_root() {
        return Some("tap networking in a private namespace needs root");
    }
    for tool in ["make", "gcc", "flex", "bison", "bc", "erl"] {
        if which(tool).is_none() {
            return Some("the UML kernel build tools are not installed (cargo xtask deps)");
        }
    }
    None
}

fn smoke(target: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "smoke",
        target.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    beambake(&args)
}

fn report(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(o), stderr(o)))
}

fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// echo-uml with its hostfs directory made absolute and `edits` applied.
fn uml_recipe(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let shared = repo_root().join("recipes/uml-shared");
    let host = format!("host = {:?}", shared.display().to_string());
    let mut all: Vec<(&str, &str)> = vec![("host = \"uml-shared\"", host.as_str())];
    all.extend_from_slice(edits);
    recipe_copy("echo-uml", dir, &all)
}

/// Replaces everything from the first `[[check]]` on with `checks`.
fn with_checks(recipe: &Path, checks: &str) {
    let text = fs::read_to_string(recipe).unwrap();
    let head = &text[..text.find("[[check]]").unwrap()];
    fs::write(
        recipe,
        format!("{head}{checks}\n[smoke]\nready_timeout_s = 60\n"),
    )
    .unwrap();
}

fn rpc_check(call: &str, expect: &str) -> String {
    format!("[[check]]\ntype = \"rpc\"\ncall = '{call}'\nexpect = '{expect}'\n\n")
}

const ECHO_CHECK: &str = "[[check]]\ntype = \"tcp_echo\"\nport = 8080\n\n";

#[test]
fn three_vms_from_one_image_form_a_cluster_and_leave_the_image_unchanged() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let recipe = uml_recipe(d.path(), &[]);
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-uml");
    let image = dir.join("echo-uml.squashfs");
    let before = sha256(&image);
    let o = smoke(&dir, &out, &[]);
    let r = report(&o);
    assert!(o.status.success(), "{r:#}\n{}", stderr(&o));
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for vm in 1..=3 {
        assert!(
            names.contains(&format!("tcp_echo:8080 @vm{vm}").as_str()),
            "{names:?}"
        );
        assert!(
            names.contains(&format!("http:8081/ @vm{vm}").as_str()),
            "{names:?}"
        );
    }
    let dist = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "distribution")
        .unwrap();
    assert!(
        dist["message"].as_str().unwrap().contains("3 nodes"),
        "{dist:#}"
    );
    assert_eq!(r["accel"], "uml");
    // One image, shared read-only, byte-identical after three VMs ran from it; each VM
    // had its own data disk.
    assert_eq!(sha256(&image), before);
    for vm in 1..=3 {
        assert!(dir.join(format!("data-{vm}.ext4")).is_file());
    }
    assert!(
        processes_matching(dir.to_str().unwrap()).is_empty(),
        "a VM outlived the smoke run"
    );
}

#[test]
fn data_survives_a_restart_and_tmp_and_root_do_not() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let recipe = uml_recipe(d.path(), &[("count = 3", "count = 1")]);
    // First boot: write to the data disk and to /tmp; the root is read-only.
    let mut checks = String::from(ECHO_CHECK);
    checks += &rpc_check(r#"file:write_file("/data/value", <<"42">>)"#, "ok");
    checks += &rpc_check(r#"file:write_file("/tmp/value", <<"43">>)"#, "ok");
    checks += &rpc_check(r#"file:read_file("/tmp/value")"#, r#"{ok, <<"43">>}"#);
    checks += &rpc_check(
        r#"file:write_file("/etc/value", <<"44">>)"#,
        "{error, erofs}",
    );
    with_checks(&recipe, &checks);
    let o = smoke(&recipe, &out, &[]);
    assert!(o.status.success(), "{:#}\n{}", report(&o), stderr(&o));
    // Second boot of the same output dir: /data kept its value, /tmp is empty again.
    let mut checks = String::from(ECHO_CHECK);
    checks += &rpc_check(r#"file:read_file("/data/value")"#, r#"{ok, <<"42">>}"#);
    checks += &rpc_check(r#"file:read_file("/tmp/value")"#, "{error, enoent}");
    with_checks(&recipe, &checks);
    let o = smoke(&recipe, &out, &[]);
    assert!(o.status.success(), "{:#}\n{}", report(&o), stderr(&o));
}

#[test]
fn a_root_image_the_kernel_cannot_mount_is_a_clear_error() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let recipe = uml_recipe(d.path(), &[("count = 3", "count = 1")]);
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-uml");
    fs::write(dir.join("echo-uml.squashfs"), vec![0x5a; 1 << 20]).unwrap();
    let o = smoke(&dir, &out, &[]);
    assert!(!o.status.success());
    let r = report(&o);
    let text = format!("{r:#}");
    assert!(
        text.contains("could not mount the root image"),
        "{text}\n{}",
        stderr(&o)
    );
    assert!(text.contains("VFS"), "the console tail is shown: {text}");
}

#[test]
fn a_data_disk_that_is_not_ext4_is_refused_before_boot() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let bogus = d.path().join("bogus.img");
    fs::write(&bogus, vec![0u8; 4 << 20]).unwrap();
    let line = format!("size_mib = 64\npath = {:?}", bogus.display().to_string());
    let recipe = uml_recipe(
        d.path(),
        &[("count = 3", "count = 1"), ("size_mib = 64", line.as_str())],
    );
    let o = smoke(&recipe, &d.path().join("out"), &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("bogus.img"), "{err}");
    assert!(err.contains("not an ext4"), "{err}");
    assert_eq!(
        fs::read(&bogus).unwrap(),
        vec![0u8; 4 << 20],
        "left untouched"
    );
}

#[test]
fn a_missing_hostfs_directory_is_named() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    let recipe = uml_recipe(d.path(), &[]);
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace("recipes/uml-shared", "recipes/no-such-dir");
    fs::write(&recipe, text).unwrap();
    let o = smoke(&recipe, &d.path().join("out"), &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("no-such-dir"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn two_vms_asking_for_the_same_address_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let recipe = uml_recipe(
        d.path(),
        &[(
            "host = \"10.0.121.100\"",
            "host = \"10.0.121.100\"\nguests = [\"10.0.121.7\", \"10.0.121.8\", \"10.0.121.7\"]",
        )],
    );
    let err = build_fails(
        &recipe,
        &d.path().join("out"),
        &[],
        "VMs 1 and 3 both ask for the address 10.0.121.7",
    );
    assert!(err.contains("echo-uml.toml"), "{err}");
    // --count that runs out of the subnet is refused too.
    let recipe = uml_recipe(
        d.path(),
        &[
            ("10.0.121.101/24", "10.0.121.253/24"),
            ("count = 3", "count = 1"),
        ],
    );
    if needs_uml_host().is_none() {
        let _vm = vm_lock();
        let out = d.path().join("out2");
        build_recipe(&recipe, &out, &[]);
        let o = beambake(&[
            "boot",
            out.join("echo-uml").to_str().unwrap(),
            "--count",
            "3",
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("not a host address"), "{}", stderr(&o));
    }
}

#[test]
fn root_images_are_reproducible_and_ext4_works_too() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let fixed = [
        ("count = 3", "count = 1"),
        (
            "node = \"echo\"",
            "node = \"echo\"\ncookie = \"fixedcookie\"",
        ),
    ];
    let recipe = uml_recipe(d.path(), &fixed);
    build_recipe(&recipe, &d.path().join("a"), &[]);
    build_recipe(&recipe, &d.path().join("b"), &[]);
    let a = d.path().join("a/echo-uml/echo-uml.squashfs");
    assert_eq!(
        sha256(&a),
        sha256(&d.path().join("b/echo-uml/echo-uml.squashfs"))
    );
    // The same release on an ext4 root boots and answers.
    let mut edits = fixed.to_vec();
    edits.push(("root_fs = \"squashfs\"", "root_fs = \"ext4\""));
    let recipe = uml_recipe(d.path(), &edits);
    with_checks(&recipe, ECHO_CHECK);
    let out = d.path().join("c");
    let o = smoke(&recipe, &out, &[]);
    assert!(o.status.success(), "{:#}\n{}", report(&o), stderr(&o));
    assert!(out.join("echo-uml/echo-uml.ext4").is_file());
}

/// `beambake boot` of a uml image streams the console and exits with the guest's own
/// status (read from the init's power-off line: UML has no exit device); a release that
/// calls `init:stop()` ends the VM with 0.
#[test]
fn boot_exits_with_the_guests_status() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    let recipe = uml_recipe(
        d.path(),
        &[
            ("count = 3", "count = 1"),
            (
                "code_loading = \"interactive\"",
                "code_loading = \"interactive\"\nextra_args = [\"-s\", \"init\", \"stop\"]",
            ),
        ],
    );
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let _vm = vm_lock();
    boot_expecting_clean_exit(&out.join("echo-uml"));
    let log = fs::read_to_string(out.join("echo-uml/console.log")).unwrap();
    assert!(
        log.contains("power off, status 0"),
        "the log has the console: {log}"
    );
}

/// SIGINT or SIGKILL to `beambake boot --count 2` of a uml image: both linux processes
/// (and every host process UML made for the guests' processes) and the namespace go.
#[test]
fn killing_a_boot_of_two_vms_leaves_nothing_behind() {
    if let Some(why) = needs_uml_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    let recipe = uml_recipe(d.path(), &[("count = 3", "count = 1")]);
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-uml");
    let _vm = vm_lock();
    for signal in [2, 9] {
        assert_signal_leaves_nothing(
            &["boot", dir.to_str().unwrap(), "--count", "2"],
            &format!("ubd0r={}", dir.display()),
            signal,
        );
    }
}
