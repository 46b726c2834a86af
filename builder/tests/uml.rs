//! The uml target, booted for real: beambake's User Mode Linux kernel (built once into the
//! cache from Debian's linux-source-6.1 with patches/linux/6.1/uml), read-only root images,
//! tap networking in a private namespace, several VMs from one image, data disks and
//! hostfs, through the `beambake` CLI. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::Path;

use beambake_testkit::{
    check, fails_with, is_root, processes_matching, repo_root, skip_if, stderr, tempdir, vm_lock,
    which, Fields, RecipeEdit,
};
use common::{
    assert_signal_leaves_nothing, beambake, boot_expecting_clean_exit, build_fails, build_recipe,
    field_strs, smoke, stdout_json,
};

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

/// `beambake smoke TARGET --out OUT --json`.
fn smoke_json(target: &Path, out: &Path) -> std::process::Output {
    smoke(target, out, &["--json"])
}

fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// echo-uml (its hostfs directory made absolute, as every path of a copy).
fn uml_recipe() -> RecipeEdit {
    RecipeEdit::copy("echo-uml")
}

/// echo-uml with one VM.
fn one_vm() -> RecipeEdit {
    uml_recipe().set("vm.count", 1)
}

/// `recipe` with its checks replaced by a TCP echo check and `rpcs`.
fn with_checks(recipe: RecipeEdit, rpcs: &[Fields]) -> RecipeEdit {
    let mut r = recipe
        .clear("check")
        .add_check(check("tcp_echo").set("port", 8080));
    for c in rpcs {
        r = r.add_check(c.clone());
    }
    r
}

fn rpc_check(call: &str, expect: &str) -> Fields {
    check("rpc").set("call", call).set("expect", expect)
}

#[test]
fn three_vms_from_one_image_form_a_cluster_and_leave_the_image_unchanged() {
    skip_if!(needs_uml_host());
    let _vm = vm_lock();
    let d = tempdir();
    let recipe = uml_recipe().write(d.path());
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-uml");
    let image = dir.join("echo-uml.squashfs");
    let before = sha256(&image);
    let o = smoke_json(&dir, &out);
    let r = stdout_json(&o);
    assert!(o.status.success(), "{r:#}\n{}", stderr(&o));
    let names = field_strs(&r["checks"], "name");
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
    skip_if!(needs_uml_host());
    let _vm = vm_lock();
    let d = tempdir();
    let out = d.path().join("out");
    // First boot: write to the data disk and to /tmp; the root is read-only.
    let recipe = with_checks(
        one_vm(),
        &[
            rpc_check(r#"file:write_file("/data/value", <<"42">>)"#, "ok"),
            rpc_check(r#"file:write_file("/tmp/value", <<"43">>)"#, "ok"),
            rpc_check(r#"file:read_file("/tmp/value")"#, r#"{ok, <<"43">>}"#),
            rpc_check(
                r#"file:write_file("/etc/value", <<"44">>)"#,
                "{error, erofs}",
            ),
        ],
    )
    .write(d.path());
    let o = smoke_json(&recipe, &out);
    assert!(o.status.success(), "{:#}\n{}", stdout_json(&o), stderr(&o));
    // Second boot of the same output dir: /data kept its value, /tmp is empty again.
    let recipe = with_checks(
        one_vm(),
        &[
            rpc_check(r#"file:read_file("/data/value")"#, r#"{ok, <<"42">>}"#),
            rpc_check(r#"file:read_file("/tmp/value")"#, "{error, enoent}"),
        ],
    )
    .write(d.path());
    let o = smoke_json(&recipe, &out);
    assert!(o.status.success(), "{:#}\n{}", stdout_json(&o), stderr(&o));
}

#[test]
fn a_root_image_the_kernel_cannot_mount_is_a_clear_error() {
    skip_if!(needs_uml_host());
    let _vm = vm_lock();
    let d = tempdir();
    let recipe = one_vm().write(d.path());
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-uml");
    fs::write(dir.join("echo-uml.squashfs"), vec![0x5a; 1 << 20]).unwrap();
    let o = smoke_json(&dir, &out);
    assert!(!o.status.success());
    let r = stdout_json(&o);
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
    skip_if!(needs_uml_host());
    let _vm = vm_lock();
    let d = tempdir();
    let bogus = d.path().join("bogus.img");
    fs::write(&bogus, vec![0u8; 4 << 20]).unwrap();
    let recipe = one_vm().set("data.path", &bogus).write(d.path());
    let o = smoke_json(&recipe, &d.path().join("out"));
    fails_with(&o, &["bogus.img", "not an ext4"]);
    assert_eq!(
        fs::read(&bogus).unwrap(),
        vec![0u8; 4 << 20],
        "left untouched"
    );
}

#[test]
fn a_missing_hostfs_directory_is_named() {
    skip_if!(needs_uml_host());
    let d = tempdir();
    let recipe = uml_recipe()
        .set("hostfs.0.host", repo_root().join("recipes/no-such-dir"))
        .write(d.path());
    let o = smoke_json(&recipe, &d.path().join("out"));
    fails_with(&o, &["no-such-dir", "does not exist"]);
}

#[test]
fn two_vms_asking_for_the_same_address_are_refused() {
    let d = tempdir();
    let recipe = uml_recipe()
        .set("network.guests", ["10.0.121.7", "10.0.121.8", "10.0.121.7"])
        .write(d.path());
    let err = build_fails(
        &recipe,
        &d.path().join("out"),
        &[],
        "VMs 1 and 3 both ask for the address 10.0.121.7",
    );
    assert!(err.contains("echo-uml.toml"), "{err}");
    // --count that runs out of the subnet is refused too.
    let recipe = one_vm()
        .set("network.guest", "10.0.121.253/24")
        .write(d.path());
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
        fails_with(&o, &["not a host address"]);
    }
}

#[test]
fn root_images_are_reproducible_and_ext4_works_too() {
    skip_if!(needs_uml_host());
    let _vm = vm_lock();
    let d = tempdir();
    let fixed = one_vm().set("distribution.cookie", "fixedcookie");
    let recipe = fixed.write(d.path());
    build_recipe(&recipe, &d.path().join("a"), &[]);
    build_recipe(&recipe, &d.path().join("b"), &[]);
    let a = d.path().join("a/echo-uml/echo-uml.squashfs");
    assert_eq!(
        sha256(&a),
        sha256(&d.path().join("b/echo-uml/echo-uml.squashfs"))
    );
    // The same release on an ext4 root boots and answers.
    let recipe = with_checks(fixed.set("vm.root_fs", "ext4"), &[]).write(d.path());
    let out = d.path().join("c");
    let o = smoke_json(&recipe, &out);
    assert!(o.status.success(), "{:#}\n{}", stdout_json(&o), stderr(&o));
    assert!(out.join("echo-uml/echo-uml.ext4").is_file());
}

/// `beambake boot` of a uml image streams the console and exits with the guest's own
/// status (read from the init's power-off line: UML has no exit device); a release that
/// calls `init:stop()` ends the VM with 0.
#[test]
fn boot_exits_with_the_guests_status() {
    skip_if!(needs_uml_host());
    let d = tempdir();
    let recipe = one_vm()
        .set("launch.extra_args", ["-s", "init", "stop"])
        .write(d.path());
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
    skip_if!(needs_uml_host());
    let d = tempdir();
    let recipe = one_vm().write(d.path());
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
