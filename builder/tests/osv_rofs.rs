//! beambake's own ROFS writer (`image::rofs`) and OSv disk joiner (`image::osv_disk`)
//! judged by OSv itself: a tree with what OSv's native-example image holds, written by
//! beambake and joined with the cached OSv build's `loader.img`, boots under qemu TCG and
//! runs `/hello`; a second image with many entries, nested directories, a symlink and an
//! empty file is read back from inside OSv by a small PIE. The joiner is also checked
//! byte for byte against the raw disk OSv's own build wrote (`build/last/bare.raw`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use beambake::image::{self, osv_disk, Format};
use beambake::kernel::default_cache_dir;
use beambake::osv_kernel::{self, OsvBuild};
use beambake::rootfs::{FileSource, Tree};
use beambake_testkit::{repo_root, skip, tempdir, vm_lock, which, Guarded};

const HOST_LIBGCC: &str = "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1";

/// The cached OSv build (a hit once built), or why there is none.
fn osv() -> Result<OsvBuild, String> {
    let snapshot = repo_root().join(osv_kernel::DEV_SNAPSHOT);
    if !snapshot.is_file() {
        return Err(format!(
            "no OSv snapshot at {} (osv_kernel::DEV_SNAPSHOT)",
            snapshot.display()
        ));
    }
    osv_kernel::get(Some(&snapshot), &default_cache_dir(), &|m| {
        eprintln!("osv: {m}")
    })
    .map_err(|e| panic!("{e}"))
}

/// What OSv's `fs=rofs image=native-example` image holds besides the apps.
fn base_tree(osv: &OsvBuild) -> Tree {
    let src = osv.tree();
    let host = |p: PathBuf| {
        assert!(p.is_file(), "{} missing", p.display());
        FileSource::Host(p)
    };
    let mut t = Tree::new(0);
    for d in ["/dev", "/proc", "/sys", "/tmp", "/etc", "/usr/lib"] {
        t.mkdir_p(d, "osv").unwrap();
    }
    t.add_file(
        "/libenviron.so",
        host(src.join("build/last/libenviron.so")),
        0o755,
        "osv",
    )
    .unwrap();
    t.add_file(
        "/usr/lib/libgcc_s.so.1",
        host(PathBuf::from(HOST_LIBGCC)),
        0o755,
        "host",
    )
    .unwrap();
    t.add_file(
        "/etc/hosts",
        host(src.join("static/etc/hosts")),
        0o644,
        "osv",
    )
    .unwrap();
    t.add_file(
        "/etc/fstab",
        host(src.join("static/etc/fstab_rofs")),
        0o644,
        "osv",
    )
    .unwrap();
    t.add_symlink("/etc/mnttab", "/proc/mounts", "osv").unwrap();
    t
}

/// Writes `tree` with beambake's ROFS writer, joins it with OSv's loader, boots it.
fn boot(osv: &OsvBuild, tree: &Tree, cmdline: &str, dir: &Path) -> String {
    let rofs = dir.join("root.rofs");
    image::write(tree, &Format::Rofs, &rofs).unwrap();
    let disk = dir.join("disk.raw");
    osv_disk::join(&osv.loader_img(), &rofs, cmdline, &disk).unwrap();
    assert_eq!(osv_disk::read_cmdline(&disk).unwrap(), cmdline);

    let console = dir.join("console.txt");
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
        disk.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", console.display()));
    let start = Instant::now();
    // Killed and reaped on every path; a hung guest is a failure.
    let mut guest = Guarded::spawn(qemu, dir.join("qemu.log"));
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
    log
}

#[test]
fn osv_boots_the_native_example_from_beambakes_rofs() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 is not installed");
    }
    if !Path::new(HOST_LIBGCC).is_file() {
        skip!("no {HOST_LIBGCC} (the native example's libgcc_s)");
    }
    let osv = match osv() {
        Ok(o) => o,
        Err(why) => skip!("{why}"),
    };
    let mut tree = base_tree(&osv);
    tree.add_file(
        "/hello",
        FileSource::Host(osv.tree().join("apps/native-example/hello")),
        0o755,
        "osv",
    )
    .unwrap();
    // The loader's own bootfs holds no app: /hello can only come from the ROFS partition.
    let bootfs =
        std::fs::read_to_string(osv.tree().join("build/last/bootfs.manifest")).unwrap_or_default();
    assert!(!bootfs.contains("hello"), "bootfs.manifest:\n{bootfs}");
    let d = tempdir();
    let _vm = vm_lock();
    let log = boot(&osv, &tree, "--rootfs=rofs /hello", d.path());
    assert!(
        log.lines().any(|l| l.starts_with("OSv")),
        "no OSv banner:\n{log}"
    );
    assert!(
        log.contains("Hello from C code"),
        "the app's output is missing:\n{log}"
    );
}

/// The program run inside OSv: lists and reads what the tree below holds and prints one
/// line per fact; the test compares them.
const CHECK_C: &str = r#"
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void cat(const char *path) {
    char buf[256];
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("CHECK %s open failed\n", path); return; }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) { printf("CHECK %s read failed\n", path); return; }
    buf[n] = 0;
    printf("CHECK %s %zd [%s]\n", path, n, buf);
}

int main(void) {
    DIR *d = opendir("/many");
    int count = 0, first = 0, last = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        count++;
        if (!strcmp(e->d_name, "f000")) first = 1;
        if (!strcmp(e->d_name, "f299")) last = 1;
    }
    if (d) closedir(d);
    printf("CHECK /many entries=%d first=%d last=%d\n", count, first, last);
    cat("/many/f123");
    cat("/a/b/c/d/deep.txt");
    char target[256];
    ssize_t n = readlink("/a/link", target, sizeof target - 1);
    target[n < 0 ? 0 : n] = 0;
    printf("CHECK readlink /a/link [%s]\n", target);
    cat("/a/link");
    struct stat st;
    int r = stat("/a/empty", &st);
    printf("CHECK stat /a/empty %d size=%lld reg=%d\n", r, (long long)st.st_size, S_ISREG(st.st_mode));
    cat("/a/empty");
    r = stat("/a/b/c", &st);
    printf("CHECK stat /a/b/c %d dir=%d\n", r, S_ISDIR(st.st_mode));
    cat("/big");
    int fd = open("/big", O_RDONLY);
    lseek(fd, 70000, SEEK_SET);
    char tail[8] = {0};
    read(fd, tail, 5);
    close(fd);
    printf("CHECK /big@70000 [%s]\n", tail);
    printf("CHECK done\n");
    return 0;
}
"#;

#[test]
fn osv_reads_many_entries_nested_dirs_links_and_empty_files() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 is not installed");
    }
    if which("gcc").is_none() {
        skip!("gcc is not installed (builds the PIE run inside OSv)");
    }
    if !Path::new(HOST_LIBGCC).is_file() {
        skip!("no {HOST_LIBGCC} (the native example's libgcc_s)");
    }
    let osv = match osv() {
        Ok(o) => o,
        Err(why) => skip!("{why}"),
    };
    let d = tempdir();
    let src = d.path().join("check.c");
    std::fs::write(&src, CHECK_C).unwrap();
    let bin = d.path().join("check");
    let out = Command::new("gcc")
        .args(["-O1", "-U_FORTIFY_SOURCE", "-fPIE", "-pie", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut tree = base_tree(&osv);
    tree.add_file("/check", FileSource::Host(bin), 0o755, "test")
        .unwrap();
    tree.add_dir("/many", 0o755, "test").unwrap();
    for i in 0..300 {
        tree.add_bytes(
            &format!("/many/f{i:03}"),
            format!("file {i}").into_bytes(),
            0o644,
            "test",
        )
        .unwrap();
    }
    tree.mkdir_p("/a/b/c/d", "test").unwrap();
    tree.add_bytes("/a/b/c/d/deep.txt", b"deep".to_vec(), 0o644, "test")
        .unwrap();
    tree.add_symlink("/a/link", "b/c/d/deep.txt", "test")
        .unwrap();
    tree.add_bytes("/a/empty", Vec::new(), 0o644, "test")
        .unwrap();
    // Spans many blocks and two of OSv's 32 KiB cache segments.
    let big: Vec<u8> = (0..80_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let at = |i: usize| String::from_utf8(big[i..i + 5].to_vec()).unwrap();
    let (head, tail) = (String::from_utf8(big[..255].to_vec()).unwrap(), at(70_000));
    tree.add_bytes("/big", big, 0o644, "test").unwrap();

    let _vm = vm_lock();
    let log = boot(&osv, &tree, "--rootfs=rofs /check", d.path());
    let checks: Vec<&str> = log
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("CHECK "))
        .collect();
    assert_eq!(
        checks,
        [
            "/many entries=300 first=1 last=1",
            "/many/f123 8 [file 123]",
            "/a/b/c/d/deep.txt 4 [deep]",
            "readlink /a/link [b/c/d/deep.txt]",
            "/a/link 4 [deep]",
            "stat /a/empty 0 size=0 reg=1",
            "/a/empty 0 []",
            "stat /a/b/c 0 dir=1",
            &format!("/big 255 [{head}]"),
            &format!("/big@70000 [{tail}]"),
            "done",
        ],
        "console:\n{log}"
    );
}

/// The joiner against OSv's own: loader.img + OSv's rofs.img (from gen-rofs-img.py) with
/// an empty command line gives exactly the raw disk OSv's build wrote before it set the
/// command line in the qcow2 copy.
#[test]
fn the_joiner_writes_the_raw_disk_osv_builds() {
    let osv = match osv() {
        Ok(o) => o,
        Err(why) => skip!("{why}"),
    };
    let last = osv.tree().join("build/last");
    let (rofs, bare) = (last.join("rofs.img"), last.join("bare.raw"));
    if !rofs.is_file() || !bare.is_file() {
        skip!(
            "the OSv build kept no rofs.img/bare.raw in {}",
            last.display()
        );
    }
    let d = tempdir();
    let disk = d.path().join("disk.raw");
    osv_disk::join(&osv.loader_img(), &rofs, "", &disk).unwrap();
    let (ours, theirs) = (std::fs::read(&disk).unwrap(), std::fs::read(&bare).unwrap());
    assert_eq!(ours.len(), theirs.len());
    let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "first differing byte");
}
