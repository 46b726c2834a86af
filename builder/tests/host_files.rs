//! No host file enters an image unless it is meant to: every shape of link out of a
//! release directory is refused with the link, its target and the rule named (and no
//! image written); a tarball's hard link to a host file is refused; modes are never
//! widened. Through the `beambake` CLI, on a copy of the echo release.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use beambake_testkit::{
    as_nobody, copy_dir, fails_with, give_to_nobody, is_root, skip, stderr, tempdir, which,
};
use common::{echo, read_json, rootfs, BIN};

/// A private copy of the echo release (prod mode: no links out of it).
fn release_copy(d: &Path) -> PathBuf {
    let rel = d.join("echo");
    copy_dir(&echo().release, &rel);
    rel
}

/// The entry of `dir` whose name starts with `prefix` (`echo-0.1.0`, `erts-13.1.5`).
fn entry_starting_with(dir: &Path, prefix: &str) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

fn priv_dir(rel: &Path) -> PathBuf {
    let p = entry_starting_with(&rel.join("lib"), "echo-").join("priv");
    fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn every_link_shape_out_of_a_release_dir_is_refused() {
    let d = tempdir();
    // (what, link target, name the link gets)
    let depth = "../".repeat(16);
    let shapes: Vec<(&str, String)> = vec![
        ("absolute link to /etc/shadow", "/etc/shadow".into()),
        ("relative ../ escape", format!("{depth}etc/shadow")),
        ("link to a directory outside", "/etc".into()),
        ("chain: link -> link inside -> outside", "hop".into()),
    ];
    for (what, target) in shapes {
        let case = d.path().join(what.replace([' ', '/', '>', ':'], "_"));
        let rel = release_copy(&case);
        let p = priv_dir(&rel);
        if target == "hop" {
            symlink("/etc/shadow", p.join("hop")).unwrap();
        }
        symlink(&target, p.join("secret")).unwrap();
        let out = case.join("x.cpio");
        let o = rootfs(&rel, &out, &[]);
        let e = stderr(&o);
        assert!(!o.status.success(), "{what}: built anyway");
        assert!(
            e.contains("refusing to copy a host file into the image") && e.contains("symlink to"),
            "{what}: {e}"
        );
        // The link is named; for the chain, whichever link of it is met first.
        assert!(
            e.contains("/priv/secret") || e.contains("/priv/hop"),
            "{what}: {e}"
        );
        assert!(
            e.contains("may stay inside the release"),
            "{what}: the rule: {e}"
        );
        assert!(!out.exists(), "{what}: an image was written");
        assert!(!case.join("manifest.json").exists(), "{what}");
    }
}

#[test]
fn a_tarball_hard_link_to_a_host_file_is_refused() {
    let d = tempdir();
    let tarball = d.path().join("evil.tar.gz");
    {
        let f = fs::File::create(&tarball).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "releases", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_link(&mut h, "releases/shadow", "/etc/shadow")
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let out = d.path().join("x.cpio");
    let o = rootfs(&tarball, &out, &[]);
    fails_with(&o, &["evil.tar.gz", "hard link", "/etc/shadow"]);
    assert!(!out.exists());
}

#[test]
fn modes_are_never_widened() {
    let d = tempdir();
    let rel = release_copy(d.path());
    let p = priv_dir(&rel);
    for (name, mode) in [("private.key", 0o640), ("tool", 0o750), ("public", 0o644)] {
        fs::write(p.join(name), name).unwrap();
        fs::set_permissions(p.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = d.path().join("x.cpio");
    let o = rootfs(&rel, &out, &["--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = read_json(&d.path().join("manifest.json"));
    let mode_of = |name: &str| {
        m["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| {
                f["path"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/priv/{name}"))
            })
            .map(|f| f["mode"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{name} not in the image"))
    };
    // Not world-readable on the host: not world-readable in the image.
    assert!(
        mode_of("private.key").ends_with("600"),
        "{}",
        mode_of("private.key")
    );
    assert!(mode_of("tool").ends_with("700"), "{}", mode_of("tool"));
    assert!(mode_of("public").ends_with("644"), "{}", mode_of("public"));
}

#[test]
fn an_unreadable_file_is_named_not_the_release_root() {
    if !is_root() || which("setpriv").is_none() {
        skip!("needs root (to drop to nobody with setpriv)");
    }
    let d = tempdir();
    let rel = release_copy(d.path());
    let p = priv_dir(&rel);
    let secret = p.join("unreadable.dat");
    fs::write(&secret, b"x").unwrap();
    let out = d.path().join("out");
    fs::create_dir(&out).unwrap();
    give_to_nobody(d.path());
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let bin = Path::new(BIN);
    let cpio = out.join("x.cpio");
    let o = as_nobody(
        d.path(),
        bin,
        &[
            "rootfs",
            rel.to_str().unwrap(),
            "-o",
            cpio.to_str().unwrap(),
        ],
    );
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains(secret.to_str().unwrap()) && e.contains("Permission denied"),
        "the error must name the unreadable file: {e}"
    );
    assert!(!out.join("x.cpio").exists());
}

#[test]
fn a_release_without_its_erts_names_the_release_and_the_missing_dir() {
    let d = tempdir();
    let rel = release_copy(d.path());
    let erts = entry_starting_with(&rel, "erts-");
    let erts_name = erts.file_name().unwrap().to_string_lossy().into_owned();
    fs::remove_dir_all(&erts).unwrap();
    // An OTP installation with another ERTS only.
    let otp = d.path().join("otp");
    fs::create_dir_all(otp.join("erts-0.1/bin")).unwrap();
    fs::create_dir_all(otp.join("lib")).unwrap();
    let out = d.path().join("x.cpio");
    let o = rootfs(&rel, &out, &["--otp-root", otp.to_str().unwrap()]);
    // The missing dir, and what the OTP has.
    let missing = format!("{}/{erts_name} does not exist", rel.display());
    fails_with(&o, &[&missing, "erts-0.1"]);
}
