//! The online upload into an OSv image (`beambake::osv_upload`): a tree streamed as cpio
//! into OSv's writable ZFS base (`osv_kernel`'s `zfs/base.img`, built from the pinned
//! snapshot as `tests/osv.rs` does) under qemu TCG, the result booted and its program's
//! output seen; and the failures that must leave nothing: a receiver that closes early
//! (a listener of ours standing in for the guest's: OSv's cannot be made to misbehave),
//! a base that is not a disk (qemu ends at once).

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use beambake::kernel::default_cache_dir;
use beambake::osv_kernel::{self, OsvBuild};
use beambake::osv_upload::{self, Limits, Receiver, UploadError};
use beambake::rootfs::{FileSource, Tree};
use beambake_testkit::{processes_matching, repo_root, skip_if, tempdir, vm_lock, which, Guarded};

/// Why this host cannot run the tests that need qemu.
fn no_qemu() -> Option<String> {
    ["qemu-system-x86_64", "qemu-img"]
        .iter()
        .find(|t| which(t).is_none())
        .map(|t| format!("{t} is not installed"))
}

/// OSv from the cache (built on first use), or why not.
fn osv() -> Result<OsvBuild, String> {
    let snapshot = repo_root().join(osv_kernel::DEV_SNAPSHOT);
    if !snapshot.is_file() {
        return Err(format!(
            "no OSv snapshot at {} (osv_kernel::DEV_SNAPSHOT)",
            snapshot.display()
        ));
    }
    let built = osv_kernel::get(Some(&snapshot), &default_cache_dir(), &|m| {
        eprintln!("osv: {m}")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Ok(built)
}

/// The files in `dir`, by name.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// No qemu still runs on anything in `dir`.
fn assert_no_vm_left(dir: &Path) {
    let left = processes_matching(&dir.display().to_string());
    assert!(
        left.is_empty(),
        "processes left on {}: {left:?}",
        dir.display()
    );
}

#[test]
fn a_tree_uploaded_into_the_zfs_base_boots_and_runs_its_program() {
    skip_if!(no_qemu());
    let built = match osv() {
        Ok(b) => b,
        Err(why) => beambake_testkit::skip!("{why}"),
    };
    let hello = built.tree().join("apps/native-example/hello");
    assert!(hello.is_file(), "{} missing", hello.display());
    // The base holds no /hello (image=zfs-tools): only the upload can put it there.
    let manifest = fs::read_to_string(built.dir.join("zfs/usr.manifest")).unwrap();
    assert!(manifest.contains("/tools/cpiod.so") && !manifest.contains("/hello"));

    let mut tree = Tree::new(1_700_000_000);
    tree.add_file("/hello", FileSource::Host(hello), 0o755, "test")
        .unwrap();
    tree.add_bytes(
        "/etc/beambake/marker",
        b"uploaded\n".to_vec(),
        0o644,
        "test",
    )
    .unwrap();
    let d = tempdir();
    let dest = d.path().join("hello.img");
    let _vm = vm_lock();
    let start = Instant::now();
    let up = osv_upload::upload(
        &built.zfs_base_img(),
        &tree,
        &dest,
        "--rootfs=zfs /hello",
        &Limits::default(),
        Receiver::Guest,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "upload: {} bytes of cpio, guest {:.1} s, all {:.1} s",
        up.bytes_sent,
        up.guest_time.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(names(d.path()), ["hello.img"], "only the image is left");
    assert_no_vm_left(d.path());
    let img = fs::read(&dest).unwrap();
    assert_eq!(&img[510..512], &[0x55, 0xaa], "OSv's boot sector");
    assert_eq!(&img[512..532], b"--rootfs=zfs /hello\0");
    drop(img);
    let log = boot(&dest);
    assert!(log.contains("Cmdline: /hello"), "{log}");
    assert!(log.contains("Hello from C code"), "{log}");
}

#[test]
fn a_receiver_that_closes_early_leaves_no_image_and_the_previous_one_intact() {
    skip_if!(no_qemu());
    let built = match osv() {
        Ok(b) => b,
        Err(why) => beambake_testkit::skip!("{why}"),
    };
    // Stands in for the guest's receiver: reads a little, then closes (with the rest
    // unread, so the kernel resets the connection).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).unwrap();
        tx.send(buf[..n].to_vec()).unwrap();
    });
    let mut tree = Tree::new(1_700_000_000);
    // More than the sockets between us and the stand-in can buffer.
    tree.add_bytes("/big", vec![7u8; 16 << 20], 0o644, "test")
        .unwrap();
    let d = tempdir();
    let dest = d.path().join("app.img");
    fs::write(&dest, b"the previous image").unwrap();
    let _vm = vm_lock();
    let e = osv_upload::upload(
        &built.zfs_base_img(),
        &tree,
        &dest,
        "--rootfs=zfs /hello",
        &Limits::default(),
        Receiver::StandIn(addr),
    )
    .unwrap_err();
    let text = e.to_string();
    eprintln!("{text}");
    assert!(
        matches!(
            e,
            UploadError::Send { .. } | UploadError::ClosedEarly { .. }
        ),
        "{e:?}"
    );
    assert!(text.contains(&addr.to_string()), "{text}");
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.starts_with(b"070701"), "a cpio newc stream");
    assert_eq!(names(d.path()), ["app.img"], "no temp image left");
    assert_eq!(fs::read(&dest).unwrap(), b"the previous image");
    assert_no_vm_left(d.path());
}

/// The real receiver failing on an entry it cannot write (a directory over OSv's devfs
/// mount: cpiod's chmod fails and it aborts; the guest halts without closing the
/// connection or powering off): found on the console at once, not at the deadline; no
/// image left, the previous one intact, no qemu left.
#[test]
fn a_receiver_that_fails_in_the_guest_ends_the_upload_at_once() {
    skip_if!(no_qemu());
    let built = match osv() {
        Ok(b) => b,
        Err(why) => beambake_testkit::skip!("{why}"),
    };
    let mut tree = Tree::new(1_700_000_000);
    tree.add_dir("/dev", 0o755, "test").unwrap();
    tree.add_bytes("/big", vec![7u8; 16 << 20], 0o644, "test")
        .unwrap();
    let d = tempdir();
    let dest = d.path().join("app.img");
    fs::write(&dest, b"the previous image").unwrap();
    let _vm = vm_lock();
    let start = Instant::now();
    let e = osv_upload::upload(
        &built.zfs_base_img(),
        &tree,
        &dest,
        "--rootfs=zfs /hello",
        &Limits::default(),
        Receiver::Guest,
    )
    .unwrap_err();
    let took = start.elapsed();
    let text = e.to_string();
    eprintln!("{text} ({:.1} s)", took.as_secs_f64());
    assert!(matches!(e, UploadError::ReceiverFailed { .. }), "{e:?}");
    assert!(text.contains("chmod") && text.contains("Aborted"), "{text}");
    // Found while sending or waiting, well before the 600 s finish limit.
    assert!(took < Limits::default().finish / 2, "{took:?}");
    assert_eq!(names(d.path()), ["app.img"], "no temp image left");
    assert_eq!(fs::read(&dest).unwrap(), b"the previous image");
    assert_no_vm_left(d.path());
}

/// A base that is not an OSv disk is refused before qemu starts; a qemu that dies at
/// once (as qemu aborts on the hosts where KVM fails: a stand-in, `BEAMBAKE_QEMU`, for
/// what this machine's qemu does not do under TCG) is an error naming the image; either
/// way nothing is left and the previous image is intact.
#[test]
fn a_bad_base_or_a_qemu_that_ends_at_once_is_an_error_and_leaves_nothing() {
    skip_if!(no_qemu());
    let built = match osv() {
        Ok(b) => b,
        Err(why) => beambake_testkit::skip!("{why}"),
    };
    let d = tempdir();
    let base = d.path().join("base.img");
    fs::write(&base, b"not a disk\n").unwrap();
    let out = d.path().join("out");
    fs::create_dir(&out).unwrap();
    let dest = out.join("app.img");
    fs::write(&dest, b"the previous image").unwrap();
    let mut tree = Tree::new(1_700_000_000);
    tree.add_bytes("/x", b"x".to_vec(), 0o644, "test").unwrap();
    let limits = Limits {
        ready: Duration::from_secs(60),
        ..Limits::default()
    };
    let _vm = vm_lock();
    let e = osv_upload::upload(
        &base,
        &tree,
        &dest,
        "--rootfs=zfs /x",
        &limits,
        Receiver::Guest,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not an OSv loader"), "{e}");
    assert_eq!(names(&out), ["app.img"], "no temp image left");

    let qemu = d.path().join("qemu-that-aborts");
    fs::write(
        &qemu,
        "#!/bin/sh\necho 'qemu-system-x86_64: failed to set MSR 0x10a' >&2\nkill -ABRT $$\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&qemu)
        .status()
        .unwrap();
    // Every test of this binary holds vm_lock while it runs qemu: none sees this.
    std::env::set_var("BEAMBAKE_QEMU", &qemu);
    let start = Instant::now();
    let r = osv_upload::upload(
        &built.zfs_base_img(),
        &tree,
        &dest,
        "--rootfs=zfs /x",
        &limits,
        Receiver::Guest,
    );
    std::env::remove_var("BEAMBAKE_QEMU");
    let e = r.unwrap_err();
    let text = e.to_string();
    eprintln!("{text} ({:.1} s)", start.elapsed().as_secs_f64());
    assert!(
        matches!(e, UploadError::QemuExited { bytes_sent: 0, .. }),
        "{e:?}"
    );
    assert!(
        text.contains("qemu exited") && text.contains(&dest.display().to_string()),
        "{text}"
    );
    assert!(text.contains("MSR 0x10a"), "qemu's own words: {text}");
    assert_eq!(names(&out), ["app.img"], "no temp image left");
    assert_eq!(fs::read(&dest).unwrap(), b"the previous image");
    assert_no_vm_left(&out);

    // A command line OSv cannot read is refused before anything is made.
    let e = osv_upload::upload(
        &built.zfs_base_img(),
        &tree,
        &dest,
        &"y".repeat(1024),
        &limits,
        Receiver::Guest,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_cmdline is 1024 bytes"), "{e}");
    assert_eq!(names(&out), ["app.img"]);
}

/// Boots the raw OSv image `image` under TCG (never written: `snapshot=on`) until it
/// powers off; its console.
fn boot(image: &Path) -> String {
    let d = tempdir();
    let console: PathBuf = d.path().join("console.txt");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "pc",
        "-accel",
        "tcg",
        "-m",
        "256M",
        "-smp",
        "1",
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-device",
        "virtio-blk-pci,id=blk0,drive=hd0",
        "-device",
        "virtio-rng-pci",
    ])
    .arg("-drive")
    .arg(format!(
        "file={},if=none,id=hd0,format=raw,snapshot=on",
        image.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", console.display()));
    let mut guest = Guarded::spawn(qemu, d.path().join("qemu.log"));
    let status = guest.wait_bounded(Duration::from_secs(120));
    let log = fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "OSv did not power off cleanly within 120 s ({status:?}); qemu: {}\nconsole:\n{log}",
        guest.log_text()
    );
    log
}
