//! `beambake doctor`: every finding is there, as JSON and as text; the KVM finding
//! follows its probe's evidence. A stand-in qemu (it aborts) and a private cache keep the
//! first two tests independent of this host's KVM and of the user's cache.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use beambake::doctor::FINDINGS;
use beambake_testkit::{output, skip, stderr, stdout, tempdir, which, write_script};
use common::{cli, stdout_json};

/// `beambake doctor ARGS` with a qemu that aborts and a private cache.
fn doctor_with_standin(dir: &Path, args: &[&str]) -> Output {
    let q = write_script(dir, "qemu-abort", "kill -ABRT $$");
    let kernel = dir.join("vmlinuz");
    fs::write(&kernel, b"stand-in kernel").unwrap();
    output(
        cli()
            .command(["doctor"])
            .args(args)
            .arg("--kernel")
            .arg(&kernel)
            .env("BEAMBAKE_QEMU", &q)
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env_remove("BEAMBAKE_ACCEL"),
    )
}

#[test]
fn doctor_json_has_every_finding() {
    let d = tempdir();
    let o = doctor_with_standin(d.path(), &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = stdout_json(&o);
    for k in FINDINGS {
        let f = &v[k];
        assert!(f["ok"].is_boolean(), "{k}: {f}");
        assert!(
            f["verdict"].as_str().is_some_and(|s| !s.is_empty()),
            "{k}: {f}"
        );
        assert!(f["evidence"].is_array(), "{k}: {f}");
    }
    assert_eq!(v.as_object().unwrap().len(), FINDINGS.len(), "{v}");
    // The stand-in aborts: TCG, with the probe's evidence when /dev/kvm let it run.
    assert_eq!(v["kvm"]["accelerator"], "tcg", "{v}");
    assert_eq!(v["kvm"]["ok"], false);
    if v["kvm"]["probe"].is_object() {
        assert_eq!(v["kvm"]["probe"]["exit"]["name"], "SIGABRT", "{v}");
    } else {
        assert!(
            v["kvm"]["verdict"].as_str().unwrap().contains("/dev/kvm"),
            "{v}"
        );
    }
    assert_eq!(
        v["qemu"]["ok"], false,
        "a qemu that aborts has no version: {v}"
    );
    for k in [
        "xsave_bytes",
        "xsave_max_bytes",
        "debian_linux_uml_runs",
        "beambake_kernel_built",
    ] {
        assert!(v["uml"].get(k).is_some(), "uml.{k}: {v}");
    }
    assert_eq!(v["uml"]["uml_61_xsave_bytes"], 2696);
    assert_eq!(
        v["cache"]["dir"].as_str().unwrap(),
        d.path().join("cache/beambake").to_str().unwrap()
    );
    assert!(
        v["cache"]["bytes"].is_u64() && v["cache"]["files"].is_u64(),
        "{v}"
    );
    for k in ["rebar3", "erl", "elixir"] {
        assert!(v[k].get("version").is_some(), "{k}: {v}");
    }
}

#[test]
fn doctor_text_mentions_every_finding() {
    let d = tempdir();
    let o = doctor_with_standin(d.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for label in [
        "kvm ",
        "qemu ",
        "tap + namespaces ",
        "user namespaces ",
        "uml ",
        "rebar3 ",
        "erl ",
        "elixir ",
        "cache ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(label)),
            "no line for {label:?}:\n{text}"
        );
    }
    assert!(text.contains("XSAVE"), "{text}");
    assert!(
        text.contains(&d.path().join("cache/beambake").display().to_string()),
        "{text}"
    );
}

/// The real host: doctor's KVM verdict is its probe's.
#[test]
fn doctor_kvm_verdict_follows_the_probe() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 not installed");
    }
    let o = output(
        cli()
            .command(["doctor", "--json"])
            .env_remove("BEAMBAKE_QEMU")
            .env_remove("BEAMBAKE_ACCEL"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = stdout_json(&o);
    let kvm = &v["kvm"];
    eprintln!("kvm: {kvm:#}");
    match kvm["probe"].as_object() {
        Some(p) => {
            assert_eq!(kvm["ok"], p["kvm"], "{kvm}");
            let proven = p["marker_seen"] == true && p["exit"]["code"] == 85;
            assert_eq!(p["kvm"], proven, "{kvm}");
        }
        None => assert_eq!(kvm["ok"], false, "{kvm}"),
    }
    assert_eq!(
        kvm["accelerator"],
        if kvm["ok"] == true { "kvm" } else { "tcg" }
    );
}
