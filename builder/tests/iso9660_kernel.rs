//! Linux's own iso9660 driver reads beambake's ISO 9660 images exactly as written: a
//! loop mount when this host's kernel allows it, else the pinned Debian kernel booted in
//! qemu (TCG) with the image as a virtio disk. Moved out of `image/iso9660.rs`'s unit
//! tests, which do no VM or network work; those keep the userspace readers (xorriso,
//! osirrox, bsdtar, isovfy) on the same trees (`beambake_testkit::tree`).

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use beambake::image::iso9660::{write, Entry, FileData, Node, Options, MAX_SYMLINK_LEN};
use beambake_testkit::tree::{
    check_dir_tree, expected, host_tree, pattern, reader_tree, run_reader, small_tree, stdlib_ebin,
    Spec, Wanted, MTIME,
};
use beambake_testkit::{guard, skip, tempdir_named, vm_lock, which, Guarded};
use common::pinned_kernel;

/// Linux's isofs (fs/isofs/rock.c, still in 6.1) drops an NM piece once the name would
/// reach 254 bytes: longer names come out truncated.
const LINUX_MAX_NAME_LEN: usize = 253;

/// The writer's entry for a fixture tree's.
fn entry(s: &Spec) -> Entry {
    use beambake_testkit::tree::Node as N;
    let node = match &s.node {
        N::Dir => Node::Dir,
        N::Bytes(b) => Node::File(FileData::Bytes(b.clone())),
        N::Host(p) => Node::File(FileData::Host(p.clone())),
        N::Symlink(t) => Node::Symlink(t.clone()),
    };
    Entry {
        path: s.path.clone(),
        node,
        mode: s.mode,
    }
}

fn opts() -> Options {
    Options {
        volume_id: "BEAMBAKE_TEST".to_string(),
        mtime: MTIME,
        rock_ridge: true,
    }
}

fn image(specs: &[Spec], opts: &Options) -> Vec<u8> {
    let entries: Vec<Entry> = specs.iter().map(entry).collect();
    match write(&entries, opts, Vec::new()) {
        Ok(v) => v,
        Err(e) => panic!("write failed: {e}"),
    }
}

fn scratch(tag: &str) -> beambake_testkit::tempfile::TempDir {
    tempdir_named(&format!("iso9660-kernel-{tag}-"))
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = guard(Command::new("umount").arg(&self.0)).status();
    }
}

/// Linux's own iso9660 driver: a loop mount here if the running kernel
/// has it, else a Debian kernel booted in qemu, else skipped.
fn kernel_check(iso: &Path, want: &Wanted, tag: &str) {
    let mnt = scratch(&format!("{tag}-mnt"));
    let out = guard(
        Command::new("mount")
            .args(["-t", "iso9660", "-o", "loop,ro"])
            .arg(iso)
            .arg(mnt.path()),
    )
    .output();
    match out {
        Ok(o) if o.status.success() => {
            let _guard = Unmount(mnt.path().to_path_buf());
            check_dir_tree(mnt.path(), want, "linux iso9660 (loop mount)");
            eprintln!("{tag}: kernel iso9660 loop mount matches");
        }
        Ok(o) => {
            eprintln!(
                "{tag}: mount -t iso9660 -o loop,ro failed ({}), trying qemu",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            qemu_kernel_check(iso, want, tag);
        }
        Err(e) => {
            eprintln!("{tag}: cannot run mount ({e}), trying qemu");
            qemu_kernel_check(iso, want, tag);
        }
    }
}

/// A newc cpio archive (an initramfs) of (name, mode, contents).
fn cpio(files: &[(String, u32, Vec<u8>)]) -> Vec<u8> {
    fn pad4(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let mut v = Vec::new();
    let trailer = ("TRAILER!!!".to_string(), 0, Vec::new());
    for (i, (name, mode, data)) in files.iter().chain(std::iter::once(&trailer)).enumerate() {
        let fields = [
            i as u32 + 1,
            *mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        v.extend_from_slice(b"070701");
        for f in fields {
            v.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        pad4(&mut v);
        v.extend_from_slice(data);
        pad4(&mut v);
    }
    v
}

/// Boots a Debian kernel (`/boot/vmlinuz-*` with its isofs.ko) under
/// qemu with the image as a read-only virtio disk; busybox mounts it
/// with `-t iso9660` and tars the tree onto a second disk, which is
/// then compared like an extraction.
fn qemu_kernel_check(iso: &Path, want: &Wanted, tag: &str) {
    if which("qemu-system-x86_64").is_none() {
        skip!("{tag}: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    let busybox = Path::new("/bin/busybox");
    // beambake's own pinned Debian kernel (fetched into the cache when missing).
    let k = pinned_kernel().unwrap_or_else(|e| panic!("{e}"));
    let kernel = k.image;
    let modules = k
        .modules_dir
        .expect("the pinned kernel has modules")
        .join("kernel");
    if !busybox.is_file() {
        skip!("{tag}: no /bin/busybox (apt-get install busybox-static)");
    }
    let order = [
        "drivers/virtio/virtio_ring.ko",
        "drivers/virtio/virtio.ko",
        "drivers/virtio/virtio_pci_modern_dev.ko",
        "drivers/virtio/virtio_pci_legacy_dev.ko",
        "drivers/virtio/virtio_pci.ko",
        "drivers/block/virtio_blk.ko",
        "drivers/cdrom/cdrom.ko",
        "fs/isofs/isofs.ko",
    ];
    let mut files = vec![
        ("bin".to_string(), 0o040_755, Vec::new()),
        ("lib".to_string(), 0o040_755, Vec::new()),
        (
            "bin/busybox".to_string(),
            0o100_755,
            std::fs::read(busybox).expect("read busybox"),
        ),
    ];
    let mut init = String::from(
        "#!/bin/busybox sh\nB=/bin/busybox\n$B mkdir -p /proc /dev /mnt\n\
         $B mount -t proc proc /proc\n$B mount -t devtmpfs dev /dev\n",
    );
    for m in order {
        let path = modules.join(m);
        if let Ok(data) = std::fs::read(&path) {
            let name = format!("lib/{}", m.rsplit('/').next().unwrap_or(m));
            init.push_str(&format!("$B insmod /{name}\n"));
            files.push((name, 0o100_644, data));
        }
    }
    init.push_str(
        "i=0; while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do $B sleep 0.1; i=$((i+1)); done\n\
         if $B mount -t iso9660 -o ro /dev/vda /mnt; then echo MOUNT-OK; \
         $B tar -cf /dev/vdb -C /mnt . && echo TAR-OK; fi\n\
         $B sync\n$B dmesg | $B grep -i -E 'iso ?9660|rock'\necho GUEST-DONE\n$B poweroff -f\n",
    );
    files.push(("init".to_string(), 0o100_755, init.into_bytes()));
    let tmp = scratch(&format!("{tag}-qemu"));
    let initrd = tmp.path().join("initrd.cpio");
    std::fs::write(&initrd, cpio(&files)).expect("write initrd");
    let out_disk = tmp.path().join("out.tar");
    let iso_len = std::fs::metadata(iso).expect("iso metadata").len();
    File::create(&out_disk)
        .and_then(|f| f.set_len(2 * iso_len + 64 * 1024 * 1024))
        .expect("output disk");
    let console = tmp.path().join("console.txt");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,readonly=on",
        iso.display()
    ))
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", out_disk.display()));
    // Killed and reaped on every path, a hang included; a hung guest is a failure.
    let mut guest = Guarded::spawn(qemu, tmp.path().join("qemu.log"));
    let status = guest.wait_bounded(Duration::from_secs(300));
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        status.is_some(),
        "{tag}: the guest hung (no exit within 300 s); qemu: {}\nconsole:\n{log}",
        guest.log_text()
    );
    assert!(
        log.contains("GUEST-DONE"),
        "{tag}: the guest did not run to the end ({status:?}); qemu: {}\nconsole:\n{log}",
        guest.log_text()
    );
    assert!(
        log.contains("MOUNT-OK"),
        "{tag}: Linux could not mount the image:\n{log}"
    );
    assert!(
        log.contains("TAR-OK"),
        "{tag}: reading the mounted tree failed:\n{log}"
    );
    assert!(
        log.contains("ISO 9660 Extensions: RRIP_1991A"),
        "{tag}: no Rock Ridge:\n{log}"
    );
    let tree = tmp.path().join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    run_reader(
        Command::new("tar")
            .arg("-xpf")
            .arg(&out_disk)
            .arg("-C")
            .arg(&tree),
    );
    check_dir_tree(&tree, want, "linux iso9660 (qemu)");
    eprintln!("{tag}: Linux {} iso9660 driver matches", kernel.display());
}

/// Writes `entries` (names within Linux's limit) as an image and checks it with the
/// kernel's driver against what was written.
fn kernel_check_entries(entries: &[Spec], tag: &str) {
    assert!(entries
        .iter()
        .all(|e| e.path.split('/').all(|c| c.len() <= LINUX_MAX_NAME_LEN)));
    let want = expected(entries);
    let tmp = scratch(tag);
    let path = tmp.path().join(format!("{tag}.iso"));
    std::fs::write(&path, image(entries, &opts())).expect("write");
    kernel_check(&path, &want, tag);
}

#[test]
fn small_tree_linux_driver() {
    let _vm = vm_lock();
    kernel_check_entries(&small_tree(), "small");
}

#[test]
fn large_tree_linux_driver() {
    let _vm = vm_lock();
    let tmp = scratch("host");
    let host = tmp.path().join("host.txt");
    std::fs::write(&host, pattern(5000, 7)).expect("write host file");
    // The reader tree within Linux's 253-byte names.
    let linux: Vec<Spec> = reader_tree(&host, MAX_SYMLINK_LEN)
        .into_iter()
        .filter(|e| e.path.split('/').all(|c| c.len() <= LINUX_MAX_NAME_LEN))
        .collect();
    assert!(expected(&linux).len() > 2100);
    kernel_check_entries(&linux, "large-linux");
}

#[test]
fn stdlib_ebin_linux_driver() {
    let _vm = vm_lock();
    let Some((app, ebin)) = stdlib_ebin() else {
        skip!("no /usr/lib/erlang/lib/stdlib-*/ebin here (apt-get install erlang-nox)");
    };
    let mut entries = Vec::new();
    host_tree(&ebin, &format!("/lib/{app}/ebin"), &mut entries);
    kernel_check_entries(&entries, "stdlib");
}

#[test]
fn whole_erlang_install_linux_driver() {
    let _vm = vm_lock();
    let root = Path::new("/usr/lib/erlang");
    if !root.join("lib").is_dir() {
        skip!("no /usr/lib/erlang here (apt-get install erlang-nox)");
    }
    let mut entries = Vec::new();
    host_tree(root, "/erlang", &mut entries);
    kernel_check_entries(&entries, "erlang");
}
