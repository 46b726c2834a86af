//! File trees for the image writers' tests: what goes into an image ([`Spec`]: the trees
//! of the ISO 9660 writer's golden file and of its reader checks, or a host directory),
//! what a reader must find ([`expected`]), and the check of an extracted or mounted tree
//! against it ([`check_dir_tree`]).
//!
//! A [`Spec`] is the writer's entry in plain data (the testkit knows no beambake type): a
//! test maps it onto its writer's entry type in one small function.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mtime every fixture image is written with (2020-09-13 12:26:40 UTC); what
/// [`check_dir_tree`] expects of every file and directory.
pub const MTIME: u64 = 1_600_000_000;

/// What a tree entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A file with these bytes.
    Bytes(Vec<u8>),
    /// A file with the bytes of this host file (read when the image is written).
    Host(PathBuf),
    /// A symlink to this target.
    Symlink(String),
}

/// One entry of a tree to write: an absolute path in the image, what it is, its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub path: String,
    pub node: Node,
    pub mode: u32,
}

pub fn dir(path: &str, mode: u32) -> Spec {
    Spec {
        path: path.to_string(),
        node: Node::Dir,
        mode,
    }
}

pub fn file(path: &str, data: &[u8], mode: u32) -> Spec {
    Spec {
        path: path.to_string(),
        node: Node::Bytes(data.to_vec()),
        mode,
    }
}

pub fn host_file(path: &str, host: &Path, mode: u32) -> Spec {
    Spec {
        path: path.to_string(),
        node: Node::Host(host.to_path_buf()),
        mode,
    }
}

pub fn link(path: &str, target: &str) -> Spec {
    Spec {
        path: path.to_string(),
        node: Node::Symlink(target.to_string()),
        mode: 0o777,
    }
}

/// `len` pseudo-random bytes, the same for the same `seed` (xorshift).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
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

/// A name of exactly `len` bytes: `TAG_`, letters, then `ext`.
pub fn long_name(len: usize, tag: &str, ext: &str) -> String {
    let mut s = format!("{tag}_");
    while s.len() + ext.len() < len {
        s.push((b'a' + (s.len() % 26) as u8) as char);
    }
    s.push_str(ext);
    assert_eq!(s.len(), len);
    s
}

/// The small tree behind the ISO 9660 writer's golden file.
pub fn small_tree() -> Vec<Spec> {
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

/// The large tree the external readers check: names of every length up to 255 bytes,
/// names that collide once mapped to ISO 9660's, 13 levels of directories, 2000 files of
/// sizes around sector boundaries, every mode, `host_file` as a host file, and symlinks
/// up to a target of exactly `max_symlink_len` bytes (the writer's limit).
pub fn reader_tree(host_file: &Path, max_symlink_len: usize) -> Vec<Spec> {
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
    e.push(self::host_file("/host/from_host.txt", host_file, 0o640));
    // Symlinks.
    e.push(link("/links/up", "../names/x"));
    e.push(link("/links/abs", "/usr/lib/erlang"));
    e.push(link("/links/dots", "./a/../b/."));
    e.push(link("/links/root", "/"));
    e.push(link("/links/dangling", "does/not/exist"));
    let medium: Vec<String> = (0..30).map(|i| format!("component{i:02}")).collect();
    e.push(link("/links/medium", &medium.join("/")));
    e.push(link("/links/longcomp", &format!("../{}", "c".repeat(255))));
    // A target of exactly the longest length: several SL entries, in a continuation
    // area, with components split across entries.
    let mut huge = String::from("/..");
    let mut i = 0;
    while huge.len() < max_symlink_len {
        let left = max_symlink_len - huge.len() - 1;
        huge.push('/');
        huge.extend(std::iter::repeat_n((b'a' + i) as char, left.min(255)));
        i += 1;
    }
    assert_eq!(huge.len(), max_symlink_len);
    e.push(link("/links/huge", &huge));
    e.push(link(
        &format!("/links/{}", long_name(255, "longlinkname", "")),
        &"t".repeat(200),
    ));
    e
}

/// The host Erlang's newest `stdlib` application (`/usr/lib/erlang/lib/stdlib-*`): its
/// directory name and its `ebin`, if there is one.
pub fn stdlib_ebin() -> Option<(String, PathBuf)> {
    let app = std::fs::read_dir("/usr/lib/erlang/lib")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("stdlib-"))
        .max()?;
    let ebin = Path::new("/usr/lib/erlang/lib").join(&app).join("ebin");
    ebin.is_dir().then_some((app, ebin))
}

/// Entries for the host directory tree `root` under `prefix`, with host modes (files as
/// host files); returns the bytes of its files.
pub fn host_tree(root: &Path, prefix: &str, out: &mut Vec<Spec>) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(root).expect("read_dir") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf-8 name");
        let path = format!("{prefix}/{name}");
        let meta = std::fs::symlink_metadata(e.path()).expect("metadata");
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).expect("readlink");
            out.push(Spec {
                path,
                node: Node::Symlink(target.into_os_string().into_string().expect("utf-8 target")),
                mode,
            });
        } else if meta.is_dir() {
            out.push(dir(&path, mode));
            total += host_tree(&e.path(), &path, out);
        } else if meta.is_file() {
            total += meta.len();
            out.push(host_file(&path, &e.path(), mode));
        }
    }
    total
}

/// What a reader must find at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Dir,
    File(Vec<u8>),
    Link(String),
}

/// Path in the image -> (what is there, its mode).
pub type Wanted = BTreeMap<String, (Want, u32)>;

/// What a reader must find for `entries`: each entry, and each parent directory not
/// listed (0755).
pub fn expected(entries: &[Spec]) -> Wanted {
    let mut m = BTreeMap::new();
    m.insert("/".to_string(), (Want::Dir, 0o755));
    for e in entries {
        let want = match &e.node {
            Node::Dir => Want::Dir,
            Node::Bytes(b) => Want::File(b.clone()),
            Node::Host(p) => Want::File(std::fs::read(p).expect("read host file")),
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

/// Compares an extracted or mounted tree with what was put in: the same entries, kinds,
/// bytes, link targets, modes, and [`MTIME`]; `reader` names the reader in failures.
pub fn check_dir_tree(root: &Path, want: &Wanted, reader: &str) {
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

/// Runs a reader (`LC_ALL=C.UTF-8`, guarded) that must succeed without complaining on
/// stderr (xorriso's `FAILURE`, `SORRY`, `MISHAP`, `FATAL`, `WARNING`); returns its stdout.
pub fn run_reader(cmd: &mut Command) -> String {
    let out = crate::process::output(cmd.env("LC_ALL", "C.UTF-8"));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    for bad in ["FAILURE", "SORRY", "MISHAP", "FATAL", "WARNING"] {
        assert!(!stderr.contains(bad), "{cmd:?} complained: {stderr}");
    }
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    /// Writes `entries` under `root` as a reader would extract them, mtimes included.
    fn materialise(root: &Path, entries: &[Spec]) {
        for e in entries.iter().filter(|e| e.path != "/") {
            let p = root.join(&e.path[1..]);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match &e.node {
                Node::Dir => std::fs::create_dir_all(&p).unwrap(),
                Node::Bytes(b) => std::fs::write(&p, b).unwrap(),
                Node::Host(h) => {
                    std::fs::copy(h, &p).unwrap();
                }
                Node::Symlink(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
            }
        }
        // Modes and mtimes last, deepest first (a 0555 dir is filled before).
        let mut all: Vec<(PathBuf, u32)> = expected(entries)
            .into_iter()
            .filter(|(_, (w, _))| !matches!(w, Want::Link(_)))
            .map(|(path, (_, mode))| (root.join(&path[1..]), mode))
            .collect();
        all.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, mode) in all {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = CString::new(p.as_os_str().as_bytes()).unwrap();
            let t = libc::timespec {
                tv_sec: MTIME as libc::time_t,
                tv_nsec: 0,
            };
            // SAFETY: a valid C path and two timespecs.
            assert_eq!(
                unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) },
                0
            );
        }
    }

    #[test]
    fn names_and_patterns() {
        assert_eq!(pattern(64, 7), pattern(64, 7));
        assert_ne!(pattern(64, 7), pattern(64, 8));
        let n = long_name(40, "t", ".beam");
        assert!(n.starts_with("t_") && n.ends_with(".beam") && n.len() == 40);
    }

    #[test]
    fn the_fixture_trees() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("h");
        std::fs::write(&host, "host bytes").unwrap();
        let t = reader_tree(&host, 4000);
        assert!(expected(&t).len() > 2100);
        let huge = t.iter().find(|e| e.path == "/links/huge").unwrap();
        assert!(matches!(&huge.node, Node::Symlink(s) if s.len() == 4000));
        let w = expected(&t);
        assert_eq!(
            w["/host/from_host.txt"],
            (Want::File(b"host bytes".to_vec()), 0o640)
        );
        // Parents nobody listed.
        assert_eq!(w["/deep/level01"], (Want::Dir, 0o755));
        assert_eq!(expected(&small_tree()).len(), 21);
    }

    #[test]
    fn a_tree_written_as_specified_passes_and_a_changed_one_fails() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), "a").unwrap();
        std::os::unix::fs::symlink("a", src.join("l")).unwrap();
        let mut entries = small_tree();
        let n = host_tree(&src, "/host", &mut entries);
        assert_eq!(n, 1);
        let root = d.path().join("root");
        materialise(&root, &entries);
        let want = expected(&entries);
        check_dir_tree(&root, &want, "test");
        std::fs::set_permissions(
            root.join("bin/start"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let e = std::panic::catch_unwind(|| check_dir_tree(&root, &want, "test")).unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("test: /bin/start: mode"), "{msg}");
    }

    #[test]
    fn a_reader_that_complains_fails() {
        assert_eq!(run_reader(Command::new("echo").arg("x")), "x\n");
        let e = std::panic::catch_unwind(|| {
            run_reader(Command::new("sh").args(["-c", "echo 'xorriso : WARNING : w' >&2"]))
        })
        .unwrap_err();
        assert!(e.downcast_ref::<String>().unwrap().contains("complained"));
    }
}
