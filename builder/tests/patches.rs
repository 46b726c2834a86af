//! beambake's OTP patch sets against Debian's real OTP 25 source (`cargo xtask otp-src`,
//! passed in as `BEAMBAKE_OTP_SRC` by `cargo xtask test`), through the `beambake patch`
//! CLI: each set checks, applies, is seen as applied, reverts byte-identically; a patch
//! that no longer applies, a malformed patch and another OTP version are clear errors
//! that leave the tree untouched.
//!
//! The sets are exercised on a copy of just the files they touch (plus `OTP_VERSION`):
//! the same bytes as the full tree, without copying 250 MB per test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use beambake_testkit::tempfile::TempDir;
use beambake_testkit::{
    copy_dir, fails_with, output, repo_root, skip, snapshot, stderr, stdout, tempdir,
};
use common::{beambake, echo, rootfs};

const SETS: &[&str] = &["common", "osv", "rumprun"];

/// The sets `set` means: `common` first, then the set itself.
fn with_common(set: &str) -> Vec<&str> {
    if set == "common" {
        vec!["common"]
    } else {
        vec!["common", set]
    }
}

fn otp_src() -> Option<PathBuf> {
    std::env::var_os("BEAMBAKE_OTP_SRC")
        .map(PathBuf::from)
        .filter(|p| p.join("OTP_VERSION").is_file())
}

fn set_dir(set: &str) -> PathBuf {
    repo_root().join("patches/otp/25").join(set)
}

/// Files a set (with `common` under it) touches (from the `--- a/` and `+++ b/` lines).
fn touched(set: &str) -> Vec<String> {
    let mut files = vec![];
    for s in with_common(set) {
        for f in touched_by(s) {
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    files
}

fn touched_by(set: &str) -> Vec<String> {
    let dir = set_dir(set);
    let series = fs::read_to_string(dir.join("series")).unwrap();
    let mut files = vec![];
    for name in series
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let text = fs::read_to_string(dir.join(name)).unwrap();
        for l in text.lines() {
            for prefix in ["--- a/", "+++ b/"] {
                if let Some(p) = l.strip_prefix(prefix) {
                    let p = p.split('\t').next().unwrap().trim().to_string();
                    if !files.contains(&p) {
                        files.push(p);
                    }
                }
            }
        }
    }
    files
}

/// A mini tree: OTP_VERSION and every file the set touches that exists in `src`.
fn mini_tree(src: &Path, set: &str) -> TempDir {
    let d = tempdir();
    let mut files = touched(set);
    files.push("OTP_VERSION".into());
    for f in files {
        let from = src.join(&f);
        if from.is_file() {
            let to = d.path().join(&f);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(&from, &to).unwrap();
        }
    }
    d
}

fn patch(action: &str, tree: &Path, set: &str, patches: &Path) -> std::process::Output {
    beambake(&[
        "patch",
        action,
        "--otp-src",
        tree.to_str().unwrap(),
        "--set",
        set,
        "--patches",
        patches.to_str().unwrap(),
    ])
}

#[test]
fn every_set_has_a_series_and_explains_each_patch() {
    for set in SETS {
        let dir = set_dir(set);
        let series = fs::read_to_string(dir.join("series"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let names: Vec<&str> = series
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(!names.is_empty(), "{set}: empty series");
        for n in names {
            let text = fs::read_to_string(dir.join(n)).unwrap();
            let header = &text[..text.find("\n--- ").unwrap_or(0)];
            assert!(header.contains("Subject:"), "{set}/{n}: no Subject");
            assert!(header.lines().count() >= 4, "{set}/{n}: say what and why");
        }
    }
}

#[test]
fn sets_apply_strictly_to_debians_otp_and_round_trip() {
    let Some(src) = otp_src() else {
        skip!("BEAMBAKE_OTP_SRC not set (cargo xtask test fetches it with otp-src)");
    };
    let patches = repo_root().join("patches");
    for set in SETS {
        let t = mini_tree(&src, set);
        let before = snapshot(t.path(), &[]);
        let o = patch("check", t.path(), set, &patches);
        assert!(o.status.success(), "{set}: {}", stderr(&o));
        assert_eq!(snapshot(t.path(), &[]), before, "check changed the tree");
        let o = patch("apply", t.path(), set, &patches);
        assert!(o.status.success(), "{set}: {}", stderr(&o));
        let applied = snapshot(t.path(), &[]);
        assert_ne!(applied, before);
        let o = patch("status", t.path(), set, &patches);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stdout(&o).contains("not applied"), "{set}: {}", stdout(&o));
        // Applying again: already applied, nothing changes.
        let o = patch("apply", t.path(), set, &patches);
        assert!(o.status.success(), "{set}: {}", stderr(&o));
        assert_eq!(snapshot(t.path(), &[]), applied);
        let o = patch("revert", t.path(), set, &patches);
        assert!(o.status.success(), "{set}: {}", stderr(&o));
        assert_eq!(
            snapshot(t.path(), &[]),
            before,
            "{set}: revert is not byte-identical"
        );
    }
}

#[test]
fn a_patch_that_does_not_apply_leaves_the_tree_untouched() {
    let Some(src) = otp_src() else {
        skip!("BEAMBAKE_OTP_SRC not set (cargo xtask test fetches it with otp-src)");
    };
    let patches = repo_root().join("patches");
    let set = "osv";
    let t = mini_tree(&src, set);
    // Change a line the last patch's context needs.
    let files = touched(set);
    let victim = files
        .iter()
        .rev()
        .find(|f| t.path().join(f).is_file())
        .unwrap();
    let p = t.path().join(victim);
    let text = fs::read_to_string(&p).unwrap();
    let broken: String = text
        .lines()
        .map(|l| format!("{l} /* drifted */\n"))
        .collect();
    fs::write(&p, broken).unwrap();
    let before = snapshot(t.path(), &[]);
    let o = patch("apply", t.path(), set, &patches);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(".patch"), "names the patch: {err}");
    assert!(err.contains(victim.as_str()), "names the file: {err}");
    assert!(err.contains("hunk #"), "names the hunk: {err}");
    assert_eq!(snapshot(t.path(), &[]), before, "the tree changed");
}

#[test]
fn malformed_patches_and_other_otp_versions_are_refused() {
    let d = tempdir();
    let tree = d.path().join("otp");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("OTP_VERSION"), "25.2.3\n").unwrap();
    fs::write(tree.join("a.c"), "one\ntwo\n").unwrap();
    let patches = d.path().join("patches");
    let set = patches.join("otp/25/bad");
    fs::create_dir_all(&set).unwrap();
    fs::write(set.join("series"), "0001-bad.patch\n").unwrap();
    fs::write(
        set.join("0001-bad.patch"),
        "Subject: bad\n\n--- a/a.c\n+++ b/a.c\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n+extra\n",
    )
    .unwrap();
    fails_with(&patch("apply", &tree, "bad", &patches), &["0001-bad.patch"]);
    assert_eq!(fs::read_to_string(tree.join("a.c")).unwrap(), "one\ntwo\n");
    fs::write(tree.join("OTP_VERSION"), "26.2\n").unwrap();
    let o = patch("check", &tree, "osv", &repo_root().join("patches"));
    fails_with(&o, &["OTP 26.2 has no patch set here"]);
}

/// An installed OTP build given with `--erts-from` replaces the release's ERTS in the
/// image; one with another ERTS version is refused, naming both versions.
#[test]
fn erts_from_an_otp_build_replaces_the_releases_erts() {
    let rel = &echo().release;
    let vsn = fs::read_to_string(rel.join("releases/start_erl.data"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let host_erts = Path::new("/usr/lib/erlang").join(format!("erts-{vsn}"));
    if !host_erts.is_dir() {
        skip!("the host's OTP has no erts-{vsn}");
    }
    let d = tempdir();
    let otp = d.path().join("otp");
    let erts = otp.join(format!("lib/erlang/erts-{vsn}"));
    copy_dir(&host_erts, &erts);
    fs::write(erts.join("bin/patched-by-beambake"), b"marker\n").unwrap();
    let list = |args: &[&str]| {
        let out = d.path().join("img.cpio");
        let mut all = vec!["--erts-from", otp.to_str().unwrap()];
        all.extend(args);
        let o = rootfs(rel, &out, &all);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&output(Command::new("cpio").args([
            "-it",
            "--quiet",
            "-F",
            out.to_str().unwrap(),
        ])))
    };
    // The marker is an ERTS program no launch spec runs: kept only when every program is.
    let marker = format!("opt/echo/erts-{vsn}/bin/patched-by-beambake");
    let names = list(&["--all-erts-programs"]);
    assert!(names.contains(&marker), "{names}");
    let names = list(&[]);
    assert!(!names.contains(&marker), "{names}");
    assert!(
        names.contains(&format!("opt/echo/erts-{vsn}/bin/beam.smp")),
        "{names}"
    );
    // Another version: refused before anything is written.
    let other = d.path().join("otp-other");
    fs::create_dir_all(other.join("lib/erlang/erts-99.0/bin")).unwrap();
    let out2 = d.path().join("img2.cpio");
    let o = rootfs(rel, &out2, &["--erts-from", other.to_str().unwrap()]);
    fails_with(&o, &["erts-99.0", &format!("erts-{vsn}")]);
    assert!(!out2.exists());
}
