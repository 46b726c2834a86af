//! The rootfs image: reproducible bytes, a complete closure (proved by running the
//! release from the extracted archive under chroot), and the manifest.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use beambake::launch::{LaunchSpec, LaunchSpecExt};
use beambake_testkit::{
    copy_dir, free_port, is_root, output, skip, stderr, tempdir, which, Guarded,
};
use common::{beambake_in, echo, echo_round_trip, read_json};

fn build(input: &Path, out: &Path, extra: &[&str], cwd: &Path, env: &[(&str, &str)]) {
    let mut args = vec![
        "rootfs",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = beambake_in(cwd, &args, env);
    assert!(o.status.success(), "rootfs failed: {}", stderr(&o));
}

#[test]
fn same_inputs_same_bytes_whatever_the_build_path_time_and_environment() {
    let e = echo();
    let d = tempdir();
    // Copy the release to a second place, created later, in reverse directory order.
    let copy = d.path().join("elsewhere/echo");
    std::thread::sleep(Duration::from_millis(1100));
    copy_dir(&e.release, &copy);
    let img = |n: &str| d.path().join(n);
    build(
        &e.release,
        &img("a.cpio.zst"),
        &[],
        Path::new("/"),
        &[("TZ", "UTC"), ("LC_ALL", "C")],
    );
    build(
        &copy,
        &img("b.cpio.zst"),
        &[],
        d.path(),
        &[("TZ", "Asia/Tokyo"), ("LC_ALL", "C.UTF-8")],
    );
    assert!(
        fs::read(img("a.cpio.zst")).unwrap() == fs::read(img("b.cpio.zst")).unwrap(),
        "release dir moved: images differ"
    );
    // A tarball is extracted to a fresh random temp dir each time: same bytes anyway.
    let tar2 = d.path().join("other/echo.tar.gz");
    fs::create_dir_all(tar2.parent().unwrap()).unwrap();
    fs::copy(&e.tarball, &tar2).unwrap();
    build(
        &e.tarball,
        &img("c.cpio.gz"),
        &[],
        Path::new("/"),
        &[("TZ", "UTC")],
    );
    build(
        &tar2,
        &img("d.cpio.gz"),
        &[],
        d.path(),
        &[("TZ", "America/Lima"), ("LC_ALL", "C.UTF-8")],
    );
    assert!(
        fs::read(img("c.cpio.gz")).unwrap() == fs::read(img("d.cpio.gz")).unwrap(),
        "tarball builds differ"
    );
    // SOURCE_DATE_EPOCH changes the bytes (mtimes), and only through mtimes.
    let s = d.path().join("s.cpio");
    build(
        &e.release,
        &s,
        &[],
        d.path(),
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    let raw = fs::read(&s).unwrap();
    let mtime = format!("{:08x}", 1_700_000_000u32);
    assert!(String::from_utf8_lossy(&raw[..110]).contains(&mtime));
    let bad = beambake_in(
        d.path(),
        &["rootfs", e.release.to_str().unwrap(), "-o", "x.cpio"],
        &[("SOURCE_DATE_EPOCH", "yesterday")],
    );
    assert!(
        stderr(&bad).contains("SOURCE_DATE_EPOCH=\"yesterday\""),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn manifest_records_inputs_and_artefacts() {
    let e = echo();
    let d = tempdir();
    let img = d.path().join("echo.cpio.gz");
    build(&e.release, &img, &["--list"], d.path(), &[]);
    let m = read_json(&d.path().join("manifest.json"));
    assert_eq!(m["tool"]["name"], "beambake");
    assert_eq!(m["inputs"]["release"]["name"], "echo");
    assert_eq!(m["inputs"]["release"]["source_kind"], "directory");
    assert_eq!(m["inputs"]["release"]["sha256"].as_str().unwrap().len(), 64);
    let art = &m["artefacts"][0];
    assert_eq!(art["path"], "echo.cpio.gz");
    assert_eq!(art["sha256"], beambake::digest::sha256_file(&img).unwrap());
    assert_eq!(art["size"], fs::metadata(&img).unwrap().len());
    let files = m["files"].as_array().unwrap();
    let launch = files
        .iter()
        .find(|f| f["path"] == "/etc/beambake/launch.json")
        .unwrap();
    assert_eq!(launch["mode"], "100644");
    assert!(files.iter().any(|f| f["origin"]
        .as_str()
        .unwrap()
        .starts_with("host library needed by")));
    let hosts = m["inputs"]["host_files"].as_array().unwrap();
    assert!(
        hosts
            .iter()
            .any(|h| h["path"].as_str().unwrap().contains("libc.so")),
        "{hosts:?}"
    );
}

/// Unpacks an (uncompressed) image with GNU cpio, the independent reader.
fn unpack(img: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let o = output(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cpio -idm --quiet --no-absolute-filenames < '{}'",
                img.display()
            ))
            .current_dir(dest),
    );
    assert!(
        o.status.success(),
        "cpio could not unpack the image: {}",
        stderr(&o)
    );
}

#[test]
fn gnu_cpio_reads_every_entry() {
    if which("cpio").is_none() {
        skip!("GNU cpio not installed (apt-get install cpio)");
    }
    let e = echo();
    let d = tempdir();
    let img = d.path().join("echo.cpio");
    build(&e.release, &img, &["--list"], d.path(), &[]);
    let out = output(
        Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv --quiet < '{}'", img.display())),
    );
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    let m = read_json(&d.path().join("manifest.json"));
    // every tree entry except "/" is listed, in order, with root ownership
    let want: Vec<String> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|f| f["path"].as_str().unwrap()[1..].to_string())
        .collect();
    let names = output(
        Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -it --quiet < '{}'", img.display())),
    );
    let names = String::from_utf8_lossy(&names.stdout);
    let got: Vec<&str> = names.lines().collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert!(
        listing
            .lines()
            .all(|l| l.split_whitespace().nth(2) == Some("root")),
        "{listing}"
    );
}

#[test]
fn closure_is_complete_the_release_runs_under_chroot() {
    if !is_root() {
        skip!("chroot needs root");
    }
    if which("cpio").is_none() {
        skip!("GNU cpio not installed (apt-get install cpio)");
    }
    let e = echo();
    for (what, input) in [("bundled erts", &e.release), ("host erts", &e.hosterts)] {
        let d = tempdir();
        let img = d.path().join("echo.cpio");
        build(input, &img, &[], d.path(), &[]);
        let root = d.path().join("root");
        unpack(&img, &root);
        let spec = LaunchSpec::from_json(
            &fs::read_to_string(root.join("etc/beambake/launch.json")).unwrap(),
        )
        .unwrap();
        let port = free_port();
        let spec = spec.with_args(&["-echo", "port", &port.to_string()]);
        let mut cmd = Command::new("/usr/sbin/chroot");
        cmd.arg(&root).args(&spec.argv).env_clear().envs(&spec.env);
        let mut p = Guarded::spawn(cmd, d.path().join("console.log"));
        echo_round_trip(&mut p, port, Duration::from_secs(60));
        eprintln!("{what}: echo answered from the chroot");
    }
}

/// The same tree as an ISO 9660 image with Rock Ridge: osirrox (libisofs) extracts
/// exactly what GNU cpio extracts from the cpio image (device nodes aside), with the
/// same modes and symlink targets.
#[test]
fn iso_image_matches_the_cpio_image() {
    if which("osirrox").is_none() || which("cpio").is_none() {
        skip!("xorriso or cpio not installed (apt-get install xorriso cpio)");
    }
    let e = echo();
    let d = tempdir();
    let (iso, cpio) = (d.path().join("echo.iso"), d.path().join("echo.cpio"));
    build(&e.release, &iso, &[], d.path(), &[]);
    build(&e.release, &cpio, &[], d.path(), &[]);
    let (a, b) = (d.path().join("from-iso"), d.path().join("from-cpio"));
    let st = output(Command::new("osirrox").args([
        "-indev",
        iso.to_str().unwrap(),
        "-extract",
        "/",
        a.to_str().unwrap(),
    ]));
    assert!(st.status.success(), "{}", stderr(&st));
    unpack(&cpio, &b);
    let _ = fs::remove_dir_all(b.join("dev"));
    let _ = fs::remove_dir_all(a.join("dev"));
    fs::create_dir_all(a.join("dev")).unwrap();
    fs::create_dir_all(b.join("dev")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode();
    for (x, y) in [(&a, &b), (&b, &a)] {
        let mut n = 0;
        let mut stack = vec![x.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for ent in fs::read_dir(&dir).unwrap() {
                let p = ent.unwrap().path();
                let rel = p.strip_prefix(x).unwrap();
                let q = y.join(rel);
                let meta = fs::symlink_metadata(&p).unwrap();
                assert!(
                    fs::symlink_metadata(&q).is_ok(),
                    "{} missing from the other image",
                    rel.display()
                );
                if meta.file_type().is_symlink() {
                    assert_eq!(
                        fs::read_link(&p).unwrap(),
                        fs::read_link(&q).unwrap(),
                        "{}",
                        rel.display()
                    );
                } else {
                    assert_eq!(mode(&p) & 0o7777, mode(&q) & 0o7777, "{}", rel.display());
                    if meta.is_dir() {
                        stack.push(p);
                    } else {
                        assert!(
                            fs::read(&p).unwrap() == fs::read(&q).unwrap(),
                            "{} differs",
                            rel.display()
                        );
                    }
                }
                n += 1;
            }
        }
        assert!(n > 100, "only {n} entries compared");
    }
}
