//! Linux's own iso9660 driver reads beambake's ISO 9660 images exactly as written: a
//! loop mount when this host's kernel allows it, else the pinned Debian kernel booted in
//! qemu (TCG) with the image as a virtio disk. Moved out of `image/iso9660.rs`'s unit
//! tests, which do no VM or network work; those keep the userspace readers (xorriso,
//! osirrox, bsdtar, isovfy) on the same trees.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use beambake::image::iso9660::{write, Entry, FileData, Node, Options, MAX_SYMLINK_LEN};
use common::{which, Guarded};

const MTIME: u64 = 1_600_000_000;

/// Linux's isofs (fs/isofs/rock.c, still in 6.1) drops an NM piece once the name would
/// reach 254 bytes: longer names come out truncated.
const LINUX_MAX_NAME_LEN: usize = 253;

struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("iso9660-kernel-{tag}-"))
                .tempdir()
                .expect("create temp dir"),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        node: Node::Dir,
        mode,
    }
}

fn file(path: &str, data: &[u8], mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        node: Node::File(FileData::Bytes(data.to_vec())),
        mode,
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.to_string(),
        node: Node::Symlink(target.to_string()),
        mode: 0o777,
    }
}

fn opts() -> Options {
    Options {
        volume_id: "BEAMBAKE_TEST".to_string(),
        mtime: MTIME,
        rock_ridge: true,
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn image(entries: &[Entry], opts: &Options) -> Vec<u8> {
    match write(entries, opts, Vec::new()) {
        Ok(v) => v,
        Err(e) => panic!("write failed: {e}"),
    }
}

fn long_name(len: usize, tag: &str, ext: &str) -> String {
    let mut s = format!("{tag}_");
    while s.len() + ext.len() < len {
        s.push((b'a' + (s.len() % 26) as u8) as char);
    }
    s.push_str(ext);
    assert_eq!(s.len(), len);
    s
}

/// The small tree behind the golden file.
fn small_tree() -> Vec<Entry> {
    let long = format!(
        "/lib/stdlib-6.0/ebin/{}.beam",
        "application_controller_sup_with_a_very_long_name_".repeat(4)
    );
    vec![
        dir("/", 0o755),
        file("/bin/start", b"#!/bin/sh\nexec erl \"$@\"\n", 0o755),
        link("/bin/erl", "../lib/erts-15.0/bin/erlexec"),
        file("/lib/erts-15.0/bin/erlexec", &pattern(100, 1), 0o755),
        file("/lib/stdlib-6.0/ebin/lists.beam", &pattern(3000, 2), 0o644),
        file(&long, &pattern(10, 3), 0o644),
        file("/lib/stdlib-6.0/ebin/Lists.beam", b"upper", 0o644),
        file("/releases/1/sys.config", b"[].\n", 0o644),
        file("/empty.txt", b"", 0o644),
        dir("/var/empty", 0o700),
        link("/etc/hosts", "/etc/hosts.real"),
    ]
}

/// The large tree the external readers check.
fn reader_tree(host_file: &Path) -> Vec<Entry> {
    let mut e = vec![dir("/", 0o755)];
    // Names of many lengths, up to the 255-byte limit.
    for (i, len) in [
        1usize, 8, 12, 30, 31, 32, 33, 64, 100, 128, 150, 180, 200, 220, 240, 250, 253, 254, 255,
    ]
    .into_iter()
    .enumerate()
    {
        let name = if len < 6 {
            "x".repeat(len)
        } else {
            long_name(len, &format!("n{len}"), ".beam")
        };
        e.push(file(
            &format!("/names/{name}"),
            &pattern(len * 7, i as u32),
            0o644,
        ));
        let dname = if len < 6 {
            "y".repeat(len)
        } else {
            long_name(len, &format!("d{len}"), "")
        };
        e.push(file(
            &format!("/dirnames/{dname}/inside.txt"),
            name.as_bytes(),
            0o644,
        ));
    }
    // Collisions after mapping to d-characters / truncation.
    for n in [
        "Foo.beam",
        "foo.beam",
        "FOO.BEAM",
        "foo.Beam",
        "foo-beam",
        "foo_beam",
        "foo beam",
        "foo.b.c.beam",
        ".hidden",
        "q'uote \"x\"",
        "möbius-ü.erl",
        "no_ext",
        "trailing.",
    ] {
        e.push(file(&format!("/collide/{n}"), n.as_bytes(), 0o644));
    }
    for i in 0..60 {
        e.push(file(
            &format!("/collide/application_controller_sup_with_a_very_long_name_{i}.beam"),
            format!("{i}").as_bytes(),
            0o644,
        ));
    }
    // 13 levels of directories.
    let mut deep = String::from("/deep");
    for i in 1..=12 {
        deep.push_str(&format!("/level{i:02}"));
    }
    e.push(file(&format!("{deep}/leaf.txt"), b"deep leaf\n", 0o600));
    e.push(link(
        &format!("{deep}/up"),
        "../../../../../../../../../../../../names",
    ));
    // 2000 files in one directory, of sizes around sector boundaries.
    for i in 0..2000u32 {
        let size = match i % 7 {
            0 => 0,
            1 => 2047,
            2 => 2048,
            3 => 2049,
            _ => (i as usize * 13) % 600,
        };
        let mode = if i.is_multiple_of(2) { 0o644 } else { 0o755 };
        e.push(file(
            &format!("/many/file_{i:04}.beam"),
            &pattern(size, i),
            mode,
        ));
    }
    e.push(file("/empty.file", b"", 0o644));
    e.push(dir("/emptydir", 0o755));
    e.push(dir("/private", 0o700));
    e.push(file("/private/secret", b"s", 0o400));
    e.push(dir("/readonly", 0o555));
    e.push(file("/readonly/ro.txt", b"ro", 0o444));
    e.push(file("/bin/tool", b"#!/bin/sh\n", 0o755));
    e.push(file("/big.bin", &pattern(65_536 * 3 + 5, 99), 0o644));
    e.push(Entry {
        path: "/host/from_host.txt".to_string(),
        node: Node::File(FileData::Host(host_file.to_path_buf())),
        mode: 0o640,
    });
    // Symlinks.
    e.push(link("/links/up", "../names/x"));
    e.push(link("/links/abs", "/usr/lib/erlang"));
    e.push(link("/links/dots", "./a/../b/."));
    e.push(link("/links/root", "/"));
    e.push(link("/links/dangling", "does/not/exist"));
    let medium: Vec<String> = (0..30).map(|i| format!("component{i:02}")).collect();
    e.push(link("/links/medium", &medium.join("/")));
    e.push(link("/links/longcomp", &format!("../{}", "c".repeat(255))));
    // A target of exactly MAX_SYMLINK_LEN bytes: several SL entries, in a
    // continuation area, with components split across entries.
    let mut huge = String::from("/..");
    let mut i = 0;
    while huge.len() < MAX_SYMLINK_LEN {
        let left = MAX_SYMLINK_LEN - huge.len() - 1;
        huge.push('/');
        huge.extend(std::iter::repeat_n((b'a' + i) as char, left.min(255)));
        i += 1;
    }
    assert_eq!(huge.len(), MAX_SYMLINK_LEN);
    e.push(link("/links/huge", &huge));
    e.push(link(
        &format!("/links/{}", long_name(255, "longlinkname", "")),
        &"t".repeat(200),
    ));
    e
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Dir,
    File(Vec<u8>),
    Link(String),
}

fn expected(entries: &[Entry]) -> BTreeMap<String, (Want, u32)> {
    let mut m = BTreeMap::new();
    m.insert("/".to_string(), (Want::Dir, 0o755));
    for e in entries {
        let want = match &e.node {
            Node::Dir => Want::Dir,
            Node::File(FileData::Bytes(b)) => Want::File(b.clone()),
            Node::File(FileData::Host(p)) => Want::File(std::fs::read(p).expect("read host file")),
            Node::Symlink(t) => Want::Link(t.clone()),
        };
        m.insert(e.path.clone(), (want, e.mode & 0o7777));
    }
    for e in entries {
        let mut p = e.path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            let key = if p.is_empty() { "/" } else { p };
            m.entry(key.to_string()).or_insert((Want::Dir, 0o755));
        }
    }
    m
}

/// Compares an extracted or mounted tree with what was put in.
fn check_dir_tree(root: &Path, want: &BTreeMap<String, (Want, u32)>, reader: &str) {
    fn walk_fs(dir: &Path, rel: &str, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().into_string().expect("utf-8 name");
            let rel = format!("{}/{name}", if rel == "/" { "" } else { rel });
            let p = entry.path();
            out.insert(rel.clone(), p.clone());
            if entry.file_type().expect("file type").is_dir() {
                walk_fs(&p, &rel, out);
            }
        }
    }
    let mut got = BTreeMap::new();
    got.insert("/".to_string(), root.to_path_buf());
    walk_fs(root, "/", &mut got);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{reader}: missing {missing:?} extra {extra:?}"
    );
    for (path, (w, mode)) in want {
        let p = &got[path];
        let meta = std::fs::symlink_metadata(p).expect("metadata");
        match w {
            Want::Dir => assert!(meta.is_dir(), "{reader}: {path}"),
            Want::File(data) => {
                assert!(meta.is_file(), "{reader}: {path}");
                assert!(
                    std::fs::read(p).expect("read") == *data,
                    "{reader}: {path}: content differs"
                );
            }
            Want::Link(t) => {
                assert!(meta.file_type().is_symlink(), "{reader}: {path}");
                let got = std::fs::read_link(p).expect("readlink");
                assert_eq!(got.to_str(), Some(t.as_str()), "{reader}: {path}: target");
            }
        }
        if path != "/" && !matches!(w, Want::Link(_)) {
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                *mode,
                "{reader}: {path}: mode"
            );
            assert_eq!(meta.mtime(), MTIME as i64, "{reader}: {path}: mtime");
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.env("LC_ALL", "C.UTF-8").output().expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    for bad in ["FAILURE", "SORRY", "MISHAP", "FATAL", "WARNING"] {
        assert!(!stderr.contains(bad), "{cmd:?} complained: {stderr}");
    }
    String::from_utf8(out.stdout).expect("utf-8 output")
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Linux's own iso9660 driver: a loop mount here if the running kernel
/// has it, else a Debian kernel booted in qemu, else skipped.
fn kernel_check(iso: &Path, want: &BTreeMap<String, (Want, u32)>, tag: &str) {
    let mnt = TempDir::new(&format!("{tag}-mnt"));
    let out = Command::new("mount")
        .args(["-t", "iso9660", "-o", "loop,ro"])
        .arg(iso)
        .arg(mnt.path())
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
fn qemu_kernel_check(iso: &Path, want: &BTreeMap<String, (Want, u32)>, tag: &str) {
    if which("qemu-system-x86_64").is_none() {
        skip!("{tag}: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    let busybox = Path::new("/bin/busybox");
    // beambake's own pinned Debian kernel (fetched into the cache when missing).
    let pin: beambake::kernel::Pin =
        toml::from_str(beambake::target::microvm::DEFAULT_PIN).expect("the default kernel pin");
    let k = beambake::kernel::fetch_debian(&pin, &beambake::kernel::default_cache_dir())
        .unwrap_or_else(|e| panic!("fetching the pinned kernel: {e}"));
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
    let tmp = TempDir::new(&format!("{tag}-qemu"));
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
    run(Command::new("tar")
        .arg("-xpf")
        .arg(&out_disk)
        .arg("-C")
        .arg(&tree));
    check_dir_tree(&tree, want, "linux iso9660 (qemu)");
    eprintln!("{tag}: Linux {} iso9660 driver matches", kernel.display());
}

/// Entries for a host directory tree under `prefix`, with host modes.
fn host_tree(root: &Path, prefix: &str, out: &mut Vec<Entry>) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(root).expect("read_dir") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf-8 name");
        let path = format!("{prefix}/{name}");
        let meta = std::fs::symlink_metadata(e.path()).expect("metadata");
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).expect("readlink");
            out.push(Entry {
                path,
                node: Node::Symlink(target.into_os_string().into_string().expect("utf-8 target")),
                mode,
            });
        } else if meta.is_dir() {
            out.push(Entry {
                path: path.clone(),
                node: Node::Dir,
                mode,
            });
            total += host_tree(&e.path(), &path, out);
        } else if meta.is_file() {
            total += meta.len();
            out.push(Entry {
                path,
                node: Node::File(FileData::Host(e.path())),
                mode,
            });
        }
    }
    total
}

/// Writes `entries` (names within Linux's limit) as an image and checks it with the
/// kernel's driver against what was written.
fn kernel_check_entries(entries: &[Entry], tag: &str) {
    assert!(entries
        .iter()
        .all(|e| e.path.split('/').all(|c| c.len() <= LINUX_MAX_NAME_LEN)));
    let want = expected(entries);
    let tmp = TempDir::new(tag);
    let path = tmp.path().join(format!("{tag}.iso"));
    std::fs::write(&path, image(entries, &opts())).expect("write");
    kernel_check(&path, &want, tag);
}

#[test]
fn small_tree_linux_driver() {
    let _vm = common::vm_lock();
    kernel_check_entries(&small_tree(), "small");
}

#[test]
fn large_tree_linux_driver() {
    let _vm = common::vm_lock();
    let tmp = TempDir::new("host");
    let host = tmp.path().join("host.txt");
    std::fs::write(&host, pattern(5000, 7)).expect("write host file");
    // The reader tree within Linux's 253-byte names.
    let linux: Vec<Entry> = reader_tree(&host)
        .into_iter()
        .filter(|e| e.path.split('/').all(|c| c.len() <= LINUX_MAX_NAME_LEN))
        .collect();
    assert!(expected(&linux).len() > 2100);
    kernel_check_entries(&linux, "large-linux");
}

#[test]
fn stdlib_ebin_linux_driver() {
    let _vm = common::vm_lock();
    let Some(ebin) = std::fs::read_dir("/usr/lib/erlang/lib")
        .ok()
        .and_then(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("stdlib-"))
                })
                .max()
        })
        .map(|p| p.join("ebin"))
        .filter(|p| p.is_dir())
    else {
        skip!("no /usr/lib/erlang/lib/stdlib-*/ebin here (apt-get install erlang-nox)");
    };
    let app = ebin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .expect("app dir name")
        .to_string();
    let mut entries = Vec::new();
    host_tree(&ebin, &format!("/lib/{app}/ebin"), &mut entries);
    kernel_check_entries(&entries, "stdlib");
}

#[test]
fn whole_erlang_install_linux_driver() {
    let _vm = common::vm_lock();
    let root = Path::new("/usr/lib/erlang");
    if !root.join("lib").is_dir() {
        skip!("no /usr/lib/erlang here (apt-get install erlang-nox)");
    }
    let mut entries = Vec::new();
    host_tree(root, "/erlang", &mut entries);
    kernel_check_entries(&entries, "erlang");
}
