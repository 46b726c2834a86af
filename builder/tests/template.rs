//! A release exactly as rebar3's own template makes it (`rebar3 new release myrel`, no
//! edits): `{mode, dev}` in the default profile (a release made of symlinks into
//! `_build` and the project, some dangling, host ERTS), `{mode, prod}` in the prod
//! profile, and a `vm.args` with `-sname myrel` and `-setcookie myrel_cookie`. Each
//! profile is built and booted as a microvm and as a uml guest, and a host node pings the
//! node by its own name. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `rebar3 new release myrel` in a fresh dir (real rebar3; its templates are built in,
/// no network). Returns the temp dir and the project.
fn template_project() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::Builder::new()
        .prefix("bb-template-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let o = Command::new("rebar3")
        .args(["new", "release", "myrel"])
        .current_dir(d.path())
        .env("TERM", "dumb")
        .output()
        .expect("rebar3 is required (apt-get install rebar3)");
    assert!(o.status.success(), "rebar3 new release: {o:?}");
    let project = d.path().join("myrel");
    let vm_args = fs::read_to_string(project.join("config/vm.args")).unwrap();
    assert!(
        vm_args.contains("-sname myrel") && vm_args.contains("-setcookie myrel_cookie"),
        "the template changed: {vm_args}"
    );
    (d, project)
}

/// A recipe for the template project: no `[distribution]` (the release names its node),
/// a distribution check, and an rpc check that the node answers to its own name.
fn recipe(dir: &Path, project: &Path, target: &str, profile: &str, net: u8) -> PathBuf {
    let text = format!(
        r#"name = "tpl-{target}-{profile}"
target = "{target}"

[release]
source = {project:?}
profile = "{profile}"

[vm]
memory_mib = 256

[network]
mode = "tap"
guest = "10.0.{net}.101/24"
host = "10.0.{net}.100"
hostname = "tpl"

[[check]]
type = "distribution"

[[check]]
type = "rpc"
call = "erlang:node()"
expect = "'myrel@tpl'"

[[check]]
type = "rpc"
call = "erlang:get_cookie()"
expect = "myrel_cookie"

[smoke]
ready_timeout_s = 120
check_timeout_s = 30
"#,
        project = project.display().to_string()
    );
    let p = dir.join(format!("tpl-{target}-{profile}.toml"));
    fs::write(&p, text).unwrap();
    p
}

#[test]
fn rebar3_template_release_boots_untouched_in_both_profiles_and_targets() {
    if !is_root() {
        skip!("tap networking in a private namespace needs root");
    }
    let (d, project) = template_project();
    let before = snapshot(&project);
    let out = d.path().join("out");
    for (i, (target, profile)) in [
        ("microvm", "default"),
        ("uml", "prod"),
        ("microvm", "prod"),
        ("uml", "default"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = recipe(d.path(), &project, target, profile, 130 + i as u8);
        let _vm = vm_lock();
        let o = beambake(&[
            "smoke",
            r.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "-v",
        ]);
        let (so, se) = (stdout(&o), stderr(&o));
        assert!(o.status.success(), "{target}/{profile}:\n{so}\n{se}");
        assert!(
            so.contains("pong") && so.contains("'myrel@tpl'"),
            "{target}/{profile}: {so}"
        );
        // The release's own cookie is kept, and the build says it is baked in.
        assert!(
            se.contains("cookie comes from -setcookie") && se.contains("baked into the image"),
            "{target}/{profile}: {se}"
        );
        let m: serde_json::Value = serde_json::from_slice(
            &fs::read(out.join(format!("tpl-{target}-{profile}/manifest.json"))).unwrap(),
        )
        .unwrap();
        let dist = &m["distribution"];
        assert_eq!(dist["node"], "myrel", "{m}");
        assert_eq!(dist["names"], "short", "{m}");
        assert_eq!(dist["cookie_source"], "release", "{m}");
        assert!(
            !m.to_string().contains("myrel_cookie"),
            "the manifest must not print the cookie"
        );
        if profile == "default" {
            // dev mode: the app's missing include/priv links are dangling: left out, listed.
            let skipped = m["inputs"]["skipped_links"].as_array().unwrap();
            assert!(
                skipped.iter().any(|s| s["reason"] == "dangling"
                    && s["path"].as_str().unwrap().ends_with("/include")),
                "{m}"
            );
            assert!(se.contains("dangling"), "-v lists skipped links: {se}");
        }
    }
    // Nothing was edited in the user's project (apart from what rebar3 itself writes).
    let after = snapshot(&project);
    let names = |v: &[(PathBuf, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after), "files added or removed");
    assert!(before == after, "a file of the project was changed");
}

/// Every file outside `_build` (and rebar3's own `rebar.lock`), with its content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.file_name()
                .is_some_and(|n| n == "_build" || n == "rebar.lock")
            {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn a_vm_args_with_both_name_and_sname_is_refused() {
    let (d, project) = template_project();
    let vm_args = project.join("config/vm.args");
    let text = fs::read_to_string(&vm_args).unwrap();
    fs::write(&vm_args, format!("-name other@127.0.0.1\n{text}")).unwrap();
    let o = beambake(&[
        "rootfs",
        project.to_str().unwrap(),
        "-o",
        d.path().join("x.cpio").to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("vm.args") && e.contains("both -name and -sname"),
        "{e}"
    );
    assert!(!d.path().join("x.cpio").exists());
}

#[test]
fn three_uml_vms_of_the_template_release_reach_each_other_by_short_name() {
    if !is_root() {
        skip!("tap networking in a private namespace needs root");
    }
    // -sname nodes on three VMs: each guest's hosts file names the others
    // (beambake.peer), so every node pings every other by its short name.
    let (d, project) = template_project();
    let r = recipe(d.path(), &project, "uml", "default", 140);
    let text = fs::read_to_string(&r).unwrap();
    let text = text
        .replace("memory_mib = 256", "memory_mib = 256\ncount = 3")
        // Each VM has its own name (myrel@tpl-N): the rpc checks run on every VM.
        .replace(
            "[[check]]\ntype = \"rpc\"\ncall = \"erlang:node()\"\nexpect = \"'myrel@tpl'\"\n",
            "",
        );
    assert!(!text.contains("erlang:node()"), "{text}");
    fs::write(&r, text).unwrap();
    let _vm = vm_lock();
    let out = d.path().join("out");
    let o = beambake(&["smoke", r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let so = stdout(&o);
    assert!(o.status.success(), "{so}\n{}", stderr(&o));
    assert!(
        so.contains("3 nodes: each answers ping from the host and from every other node"),
        "{so}"
    );
}
