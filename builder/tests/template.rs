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

use beambake_testkit::tempfile::TempDir;
use beambake_testkit::{
    check, fails_with, is_root, output, skip, snapshot, stderr, stdout, tempdir_in, vm_lock, which,
    RecipeEdit,
};
use common::{read_json, rootfs, smoke};

/// `rebar3 new release myrel` in a fresh dir (real rebar3; its templates are built in,
/// no network). Returns the temp dir and the project.
fn template_project() -> (TempDir, PathBuf) {
    assert!(
        which("rebar3").is_some(),
        "rebar3 is required (apt-get install rebar3)"
    );
    let d = tempdir_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "bb-template-");
    let o = output(
        Command::new("rebar3")
            .args(["new", "release", "myrel"])
            .current_dir(d.path())
            .env("TERM", "dumb"),
    );
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
fn recipe(project: &Path, target: &str, profile: &str, net: u8) -> RecipeEdit {
    let name = format!("tpl-{target}-{profile}");
    RecipeEdit::new(&name)
        .set("name", &name)
        .set("target", target)
        .set("release.source", project)
        .set("release.profile", profile)
        .set("vm.memory_mib", 256)
        .set("network.mode", "tap")
        .set("network.guest", format!("10.0.{net}.101/24"))
        .set("network.host", format!("10.0.{net}.100"))
        .set("network.hostname", "tpl")
        .add_check(check("distribution"))
        .add_check(
            check("rpc")
                .set("call", "erlang:node()")
                .set("expect", "'myrel@tpl'"),
        )
        .add_check(
            check("rpc")
                .set("call", "erlang:get_cookie()")
                .set("expect", "myrel_cookie"),
        )
        .set("smoke.ready_timeout_s", 120)
        .set("smoke.check_timeout_s", 30)
}

#[test]
fn rebar3_template_release_boots_untouched_in_both_profiles_and_targets() {
    if !is_root() {
        skip!("tap networking in a private namespace needs root");
    }
    let (d, project) = template_project();
    let before = snapshot(&project, UNTOUCHED);
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
        let r = recipe(&project, target, profile, 130 + i as u8).write(d.path());
        let _vm = vm_lock();
        let o = smoke(&r, &out, &["-v"]);
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
        let m = read_json(&out.join(format!("tpl-{target}-{profile}/manifest.json")));
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
    let after = snapshot(&project, UNTOUCHED);
    assert!(
        before.keys().eq(after.keys()),
        "files added or removed: {:?} -> {:?}",
        before.keys(),
        after.keys()
    );
    assert!(before == after, "a file of the project was changed");
}

/// What `snapshot` leaves out of the project: `_build` and rebar3's own `rebar.lock`.
const UNTOUCHED: &[&str] = &["_build", "rebar.lock"];

#[test]
fn a_vm_args_with_both_name_and_sname_is_refused() {
    let (d, project) = template_project();
    let vm_args = project.join("config/vm.args");
    let text = fs::read_to_string(&vm_args).unwrap();
    fs::write(&vm_args, format!("-name other@127.0.0.1\n{text}")).unwrap();
    let o = rootfs(&project, &d.path().join("x.cpio"), &[]);
    fails_with(&o, &["vm.args", "both -name and -sname"]);
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
    let r = recipe(&project, "uml", "default", 140)
        .set("vm.count", 3)
        // Each VM has its own name (myrel@tpl-N): the rpc checks run on every VM.
        .remove("check.1");
    assert!(!r.text().contains("erlang:node()"), "{}", r.text());
    let r = r.write(d.path());
    let _vm = vm_lock();
    let out = d.path().join("out");
    let o = smoke(&r, &out, &[]);
    let so = stdout(&o);
    assert!(o.status.success(), "{so}\n{}", stderr(&o));
    assert!(
        so.contains("3 nodes: each answers ping from the host and from every other node"),
        "{so}"
    );
}
