//! OSv built from source through `beambake::osv_kernel` (the pinned snapshot
//! `../shared/sources/osv-src.tar.xz`, `fs=zfs image=zfs-tools` then `fs=rofs
//! image=native-example`; the ZFS base is exercised by `tests/osv_upload.rs`) into the
//! user's cache, then the ROFS image booted under qemu TCG (`-M pc`: OSv's microvm mode
//! prints nothing under TCG): OSv's banner and the app's output on the serial console,
//! the guest powering off by itself; a second call is a cache hit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use beambake::build_cache::Outcome;
use beambake::kernel::default_cache_dir;
use beambake::osv_kernel;
use beambake_testkit::{repo_root, skip, tempdir, vm_lock, which, Guarded};

#[test]
fn osv_builds_from_the_snapshot_once_and_its_image_boots_under_tcg() {
    let snapshot = repo_root().join(osv_kernel::DEV_SNAPSHOT);
    if !snapshot.is_file() {
        skip!(
            "no OSv snapshot at {} (osv_kernel::DEV_SNAPSHOT)",
            snapshot.display()
        );
    }
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 is not installed");
    }
    let cache = default_cache_dir();
    let start = Instant::now();
    let built = osv_kernel::get(Some(&snapshot), &cache, &|m| eprintln!("osv: {m}"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "osv: {:?} in {:.1} s: {}",
        built.outcome,
        start.elapsed().as_secs_f64(),
        built.dir.display()
    );
    for f in [
        built.loader_img(),
        built.loader_elf(),
        built.usr_img(),
        built.zfs_loader_img(),
        built.zfs_base_img(),
    ] {
        assert!(f.is_file(), "{} missing", f.display());
    }
    assert!(built.tree().join("scripts/imgedit.py").is_file());
    // The loader carries OSv's boot sector.
    let loader = std::fs::read(built.loader_img()).unwrap();
    assert_eq!(
        &loader[510..512],
        &[0x55, 0xaa],
        "loader.img boot signature"
    );

    // A second call: found in the cache, same dir, nothing rebuilt (the progress callback
    // would panic on any build step).
    let again = osv_kernel::get(Some(&snapshot), &cache, &|m| {
        panic!("a cache hit must not build: {m}")
    })
    .unwrap();
    assert_eq!(again.outcome, Outcome::Hit);
    assert_eq!(again.dir, built.dir);

    let _vm = vm_lock();
    boot(&built.usr_img());
}

fn boot(image: &Path) {
    let d = tempdir();
    let console = d.path().join("console.txt");
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
    // snapshot=on: the cached image is never written.
    .arg(format!(
        "file={},if=none,id=hd0,format=qcow2,snapshot=on",
        image.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", console.display()));
    let start = Instant::now();
    // Killed and reaped on every path; a hung guest is a failure.
    let mut guest = Guarded::spawn(qemu, d.path().join("qemu.log"));
    let status = guest.wait_bounded(Duration::from_secs(120));
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    eprintln!(
        "osv: boot to power-off {:.1} s ({status:?})\n{log}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        status.is_some(),
        "OSv did not power off within 120 s; qemu: {}\nconsole:\n{log}",
        guest.log_text()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "qemu exited with {status:?} (OSv powers off with 0 when its app ends); qemu: {}",
        guest.log_text()
    );
    // The banner is `OSv <version>`; the version comes from `git describe`, and the
    // snapshot is no git checkout, so it is empty here.
    assert!(
        log.lines().any(|l| l.starts_with("OSv")),
        "no OSv banner:\n{log}"
    );
    assert!(
        log.contains("/hello"),
        "not the native-example's command line:\n{log}"
    );
    assert!(
        log.contains("Hello from C code"),
        "the app's output is missing:\n{log}"
    );
}
