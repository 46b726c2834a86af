//! The root filesystem tree: the one intermediate every image writer consumes.
//!
//! Owns: a sorted map of guest paths to entries (directories, regular files from host
//! paths or bytes, symlinks, device nodes), with permission bits per entry and a single
//! mtime/uid/gid for the whole tree (reproducibility: uid/gid 0, mtime from
//! `SOURCE_DATE_EPOCH`). It enforces the tree's invariants: every path is absolute and
//! normalised, never leaves the root, never passes through a symlink, parents exist and
//! are directories, and two different things never claim the same path.
//! It also knows how to mirror a host path into the tree the way the host resolves it
//! (recreating each symlink on the way), which is how shared libraries keep their
//! SONAME links and the interpreter keeps its `/lib64/...` path.
//!
//! Must not: know about releases, ELF or any image format; read file contents (writers do
//! that, through [`FileSource::open`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// Default mtime when `SOURCE_DATE_EPOCH` is unset: 2000-01-01T00:00:00Z.
pub const DEFAULT_EPOCH: u64 = 946_684_800;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: path is not absolute and normalised (no '.', '..', '//' or trailing '/')")]
    BadPath { path: String },
    #[error("{path}: already in the tree as {existing}; refusing to replace it with {new}")]
    Collision {
        path: String,
        existing: String,
        new: String,
    },
    #[error("{path}: parent {parent} is not a directory in the tree")]
    ParentNotDir { path: String, parent: String },
    #[error("{path}: parent {parent} is a symlink; entries may not be added through symlinks")]
    ThroughSymlink { path: String, parent: String },
    #[error("symlink {path} -> {target}: target leaves the root")]
    SymlinkEscapes { path: String, target: String },
    #[error("{host}: {message}")]
    Host { host: PathBuf, message: String },
    #[error("{host}: {source}")]
    HostIo {
        host: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{host}: more than 40 symlinks while resolving (loop?)")]
    SymlinkLoop { host: PathBuf },
    #[error("SOURCE_DATE_EPOCH={value:?} is not a non-negative integer")]
    BadEpoch { value: String },
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Host(PathBuf),
    Bytes(Arc<Vec<u8>>),
}

impl FileSource {
    /// Opens the content for reading.
    pub fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        match self {
            FileSource::Host(p) => Ok(Box::new(fs::File::open(p)?)),
            FileSource::Bytes(b) => Ok(Box::new(io::Cursor::new(b.as_slice()))),
        }
    }

    /// Content length in bytes (a host file is measured now).
    pub fn len(&self) -> io::Result<u64> {
        match self {
            FileSource::Host(p) => Ok(fs::metadata(p)?.len()),
            FileSource::Bytes(b) => Ok(b.len() as u64),
        }
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads the whole content (for small files such as configs).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }

    pub fn host_path(&self) -> Option<&Path> {
        match self {
            FileSource::Host(p) => Some(p),
            FileSource::Bytes(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(FileSource),
    Symlink(String),
    Device {
        kind: DeviceKind,
        major: u32,
        minor: u32,
    },
}

impl EntryKind {
    fn describe(&self) -> String {
        match self {
            EntryKind::Dir => "a directory".into(),
            EntryKind::File(FileSource::Host(p)) => format!("a file from {}", p.display()),
            EntryKind::File(FileSource::Bytes(_)) => "a generated file".into(),
            EntryKind::Symlink(t) => format!("a symlink to {t}"),
            EntryKind::Device { major, minor, .. } => format!("a device {major}:{minor}"),
        }
    }

    /// The `st_mode` type bits.
    pub fn type_bits(&self) -> u32 {
        match self {
            EntryKind::Dir => 0o040000,
            EntryKind::File(_) => 0o100000,
            EntryKind::Symlink(_) => 0o120000,
            EntryKind::Device {
                kind: DeviceKind::Char,
                ..
            } => 0o020000,
            EntryKind::Device {
                kind: DeviceKind::Block,
                ..
            } => 0o060000,
        }
    }
}

/// One entry of the tree. `perm` holds permission bits only (`& 0o7777`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub perm: u32,
    /// Why the entry is there (`release`, `erts`, `host library needed by ...`, ...).
    pub origin: String,
}

impl Entry {
    /// Full `st_mode` (type bits and permissions).
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | (self.perm & 0o7777)
    }
}

/// The rootfs tree. Iteration order is sorted by path bytes, so `/a` < `/a/b` < `/a-b`
/// ... and parents always precede children.
#[derive(Debug, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
    mtime: u64,
}

impl Tree {
    /// An empty tree holding only `/`.
    pub fn new(mtime: u64) -> Tree {
        let mut entries = BTreeMap::new();
        entries.insert(
            "/".to_string(),
            Entry {
                kind: EntryKind::Dir,
                perm: 0o755,
                origin: "beambake".into(),
            },
        );
        Tree { entries, mtime }
    }

    /// The mtime from `SOURCE_DATE_EPOCH` (or [`DEFAULT_EPOCH`] when unset).
    pub fn epoch_from_env() -> Result<u64, TreeError> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<u64>()
                .map_err(|_| TreeError::BadEpoch { value: v.clone() }),
            _ => Ok(DEFAULT_EPOCH),
        }
    }

    pub fn mtime(&self) -> u64 {
        self.mtime
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Entries sorted by path (parents before children).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Total size of regular-file content.
    pub fn content_size(&self) -> io::Result<u64> {
        let mut total = 0;
        for e in self.entries.values() {
            if let EntryKind::File(src) = &e.kind {
                total += src.len()?;
            }
        }
        Ok(total)
    }

    /// Creates `path` and any missing parents as directories (mode 0755).
    pub fn mkdir_p(&mut self, path: &str, origin: &str) -> Result<(), TreeError> {
        check_path(path)?;
        if path == "/" {
            return Ok(());
        }
        let mut cur = String::new();
        for comp in path[1..].split('/') {
            cur.push('/');
            cur.push_str(comp);
            match self.entries.get(&cur) {
                Some(Entry {
                    kind: EntryKind::Dir,
                    ..
                }) => {}
                Some(Entry {
                    kind: EntryKind::Symlink(_),
                    ..
                }) => {
                    return Err(TreeError::ThroughSymlink {
                        path: path.into(),
                        parent: cur,
                    })
                }
                Some(other) => {
                    return Err(TreeError::Collision {
                        path: cur.clone(),
                        existing: other.kind.describe(),
                        new: "a directory".into(),
                    })
                }
                None => {
                    self.entries.insert(
                        cur.clone(),
                        Entry {
                            kind: EntryKind::Dir,
                            perm: 0o755,
                            origin: origin.into(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Inserts an entry; missing parents are created as directories. Re-adding an identical
    /// entry is a no-op; anything else at an existing path is a [`TreeError::Collision`].
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<(), TreeError> {
        check_path(path)?;
        if let EntryKind::Symlink(target) = &entry.kind {
            check_symlink(path, target)?;
        }
        if let Some(parent) = parent_of(path) {
            self.mkdir_p(parent, &entry.origin)?;
        }
        match self.entries.get(path) {
            None => {
                self.entries.insert(path.to_string(), entry);
                Ok(())
            }
            Some(existing) if existing.kind == entry.kind && existing.perm == entry.perm => Ok(()),
            Some(existing) if existing.kind == EntryKind::Dir && entry.kind == EntryKind::Dir => {
                Ok(())
            }
            Some(existing) => Err(TreeError::Collision {
                path: path.into(),
                existing: existing.kind.describe(),
                new: entry.kind.describe(),
            }),
        }
    }

    pub fn add_dir(&mut self, path: &str, perm: u32, origin: &str) -> Result<(), TreeError> {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Dir,
                perm,
                origin: origin.into(),
            },
        )
    }

    pub fn add_file(
        &mut self,
        path: &str,
        src: FileSource,
        perm: u32,
        origin: &str,
    ) -> Result<(), TreeError> {
        self.insert(
            path,
            Entry {
                kind: EntryKind::File(src),
                perm,
                origin: origin.into(),
            },
        )
    }

    pub fn add_bytes(
        &mut self,
        path: &str,
        bytes: Vec<u8>,
        perm: u32,
        origin: &str,
    ) -> Result<(), TreeError> {
        self.add_file(path, FileSource::Bytes(Arc::new(bytes)), perm, origin)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str, origin: &str) -> Result<(), TreeError> {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Symlink(target.into()),
                perm: 0o777,
                origin: origin.into(),
            },
        )
    }

    pub fn add_device(
        &mut self,
        path: &str,
        kind: DeviceKind,
        major: u32,
        minor: u32,
        perm: u32,
    ) -> Result<(), TreeError> {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Device { kind, major, minor },
                perm,
                origin: "beambake".into(),
            },
        )
    }

    /// Copies a host directory tree into the tree at `dest`. Symlinks whose target stays
    /// inside `src` are kept as (relative) symlinks; symlinks leaving `src` are followed and
    /// their content copied (a rebar3 `dev_mode` release links into `_build`). `skip`
    /// filters relative paths out (returns true to skip).
    pub fn add_host_tree(
        &mut self,
        src: &Path,
        dest: &str,
        origin: &str,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<(), TreeError> {
        let root = fs::canonicalize(src).map_err(|e| TreeError::HostIo {
            host: src.to_path_buf(),
            source: e,
        })?;
        self.mkdir_p(dest, origin)?;
        self.copy_dir(&root, &root, dest, origin, skip, 0)
    }

    fn copy_dir(
        &mut self,
        root: &Path,
        dir: &Path,
        dest: &str,
        origin: &str,
        skip: &dyn Fn(&Path) -> bool,
        depth: usize,
    ) -> Result<(), TreeError> {
        if depth > 64 {
            return Err(TreeError::Host {
                host: dir.to_path_buf(),
                message: "directory nesting deeper than 64 levels (symlink loop?)".into(),
            });
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| TreeError::HostIo { host: p, source: e }
        };
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        names.sort();
        for name in names {
            let host = dir.join(&name);
            let rel = host.strip_prefix(root).unwrap_or(&host);
            if skip(rel) {
                continue;
            }
            let name = name.to_str().ok_or_else(|| TreeError::Host {
                host: host.clone(),
                message: "file name is not UTF-8".into(),
            })?;
            let guest = join(dest, name);
            let meta = fs::symlink_metadata(&host).map_err(io(&host))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&host).map_err(io(&host))?;
                let resolved = fs::canonicalize(&host).map_err(|e| TreeError::Host {
                    host: host.clone(),
                    message: format!("dangling symlink to {}: {e}", target.display()),
                })?;
                if let (Ok(_), false) = (resolved.strip_prefix(root), target.is_absolute()) {
                    let t = target.to_str().ok_or_else(|| TreeError::Host {
                        host: host.clone(),
                        message: "symlink target is not UTF-8".into(),
                    })?;
                    self.add_symlink(&guest, t, origin)?;
                } else if resolved.is_dir() {
                    self.mkdir_p(&guest, origin)?;
                    self.copy_dir(&resolved, &resolved, &guest, origin, skip, depth + 1)?;
                } else {
                    let perm = fs::metadata(&resolved).map_err(io(&resolved))?.mode_bits();
                    self.add_file(&guest, FileSource::Host(resolved), perm, origin)?;
                }
            } else if ft.is_dir() {
                self.add_dir(&guest, 0o755, origin)?;
                self.copy_dir(root, &host, &guest, origin, skip, depth + 1)?;
            } else if ft.is_file() {
                readable(&host)?;
                self.add_file(&guest, FileSource::Host(host), meta.mode_bits(), origin)?;
            } else {
                return Err(TreeError::Host {
                    host,
                    message: "not a regular file, directory or symlink".into(),
                });
            }
        }
        Ok(())
    }

    /// Adds the host file `host` (absolute) at the same guest path, reproducing the host's
    /// resolution: every symlink met on the way (in any component) is recreated in the
    /// tree and followed, and the final regular file is copied. Returns the guest path of
    /// the regular file.
    pub fn mirror_host_path(&mut self, host: &Path, origin: &str) -> Result<String, TreeError> {
        self.mirror_under("/", host, origin)
    }

    /// As [`Tree::mirror_host_path`], with host paths looked up under `sysroot`.
    pub fn mirror_under(
        &mut self,
        sysroot: &str,
        host: &Path,
        origin: &str,
    ) -> Result<String, TreeError> {
        let guest = host.to_str().ok_or_else(|| TreeError::Host {
            host: host.to_path_buf(),
            message: "path is not UTF-8".into(),
        })?;
        if !guest.starts_with('/') {
            return Err(TreeError::Host {
                host: host.to_path_buf(),
                message: "path is not absolute".into(),
            });
        }
        let mut pending = normalize_abs(guest).ok_or_else(|| TreeError::Host {
            host: host.to_path_buf(),
            message: "path leaves the root".into(),
        })?;
        let on_host = |g: &str| Path::new(sysroot).join(g.trim_start_matches('/'));
        for _ in 0..40 {
            let comps: Vec<&str> = pending[1..].split('/').collect();
            let mut cur = String::new();
            let mut restart = None;
            for (i, comp) in comps.iter().enumerate() {
                cur.push('/');
                cur.push_str(comp);
                let hp = on_host(&cur);
                let meta = fs::symlink_metadata(&hp).map_err(|e| TreeError::HostIo {
                    host: hp.clone(),
                    source: e,
                })?;
                let last = i + 1 == comps.len();
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&hp).map_err(|e| TreeError::HostIo {
                        host: hp.clone(),
                        source: e,
                    })?;
                    let t = target.to_str().ok_or_else(|| TreeError::Host {
                        host: hp.clone(),
                        message: "symlink target is not UTF-8".into(),
                    })?;
                    self.add_symlink(&cur, t, origin)?;
                    let base = if t.starts_with('/') {
                        t.to_string()
                    } else {
                        format!("{}/{}", parent_of(&cur).unwrap_or("/"), t)
                    };
                    let rest = comps[i + 1..].join("/");
                    let next = if rest.is_empty() {
                        base
                    } else {
                        format!("{base}/{rest}")
                    };
                    restart = Some(normalize_abs(&next).ok_or_else(|| TreeError::Host {
                        host: hp.clone(),
                        message: format!("symlink to {t} leaves the root"),
                    })?);
                    break;
                } else if meta.is_dir() {
                    if last {
                        self.mkdir_p(&cur, origin)?;
                        return Ok(cur);
                    }
                    self.mkdir_p(&cur, origin)?;
                } else if meta.is_file() && last {
                    readable(&hp)?;
                    self.add_file(&cur, FileSource::Host(hp), meta.mode_bits(), origin)?;
                    return Ok(cur);
                } else {
                    return Err(TreeError::Host {
                        host: hp,
                        message: "not a directory, regular file or symlink".into(),
                    });
                }
            }
            match restart {
                Some(p) => pending = p,
                None => break,
            }
        }
        Err(TreeError::SymlinkLoop {
            host: host.to_path_buf(),
        })
    }
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}

impl ModeBits for fs::Metadata {
    /// Permission bits, normalised: owner bits decide, group/other get read (and execute
    /// when the owner has it); no setuid/setgid/sticky, no group/world write. Keeps images
    /// independent of the builder's umask.
    fn mode_bits(&self) -> u32 {
        let m = self.permissions().mode();
        if m & 0o100 != 0 {
            0o755
        } else {
            0o644
        }
    }
}

fn readable(p: &Path) -> Result<(), TreeError> {
    fs::File::open(p).map(drop).map_err(|e| TreeError::HostIo {
        host: p.to_path_buf(),
        source: e,
    })
}

/// Joins a guest directory and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent of a guest path (`None` for `/`).
pub fn parent_of(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

fn check_path(path: &str) -> Result<(), TreeError> {
    let ok = path == "/"
        || (path.starts_with('/')
            && !path.ends_with('/')
            && !path.contains('\0')
            && path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."));
    if ok {
        Ok(())
    } else {
        Err(TreeError::BadPath { path: path.into() })
    }
}

/// Relative symlink targets must stay inside the root when resolved lexically from the
/// link's directory; absolute targets are interpreted inside the guest root and are fine.
fn check_symlink(path: &str, target: &str) -> Result<(), TreeError> {
    let escapes = || TreeError::SymlinkEscapes {
        path: path.into(),
        target: target.into(),
    };
    if target.is_empty() || target.contains('\0') {
        return Err(escapes());
    }
    if target.starts_with('/') {
        return Ok(());
    }
    let mut depth = parent_of(path)
        .map(|p| p.split('/').filter(|c| !c.is_empty()).count())
        .unwrap_or(0) as isize;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(escapes());
        }
    }
    Ok(())
}

/// Normalises an absolute path lexically; `None` if `..` climbs above `/`.
fn normalize_abs(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(format!("/{}", out.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn file(t: &mut Tree, p: &str) -> Result<(), TreeError> {
        t.add_bytes(p, b"x".to_vec(), 0o644, "test")
    }

    #[test]
    fn parents_are_created_and_entries_sorted() {
        let mut t = Tree::new(1);
        file(&mut t, "/b/c/d").unwrap();
        file(&mut t, "/a").unwrap();
        t.add_symlink("/b/link", "c/d", "test").unwrap();
        let paths: Vec<_> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/", "/a", "/b", "/b/c", "/b/c/d", "/b/link"]);
        assert_eq!(t.get("/b").unwrap().mode(), 0o040755);
        assert_eq!(t.get("/b/link").unwrap().mode(), 0o120777);
    }

    #[test]
    fn bad_paths_are_rejected() {
        let mut t = Tree::new(1);
        for p in ["rel", "/a/../b", "/a/./b", "/a//b", "/a/", "/..", "/a\0b"] {
            assert!(
                matches!(file(&mut t, p), Err(TreeError::BadPath { .. })),
                "{p}"
            );
        }
    }

    #[test]
    fn collisions_are_errors_identical_readds_are_not() {
        let mut t = Tree::new(1);
        file(&mut t, "/a/b").unwrap();
        file(&mut t, "/a/b").unwrap();
        let e = t.add_bytes("/a/b", b"y".to_vec(), 0o644, "t").unwrap_err();
        assert!(e.to_string().contains("/a/b: already in the tree"), "{e}");
        assert!(matches!(
            t.add_symlink("/a/b", "x", "t"),
            Err(TreeError::Collision { .. })
        ));
        assert!(matches!(
            file(&mut t, "/a/b/c"),
            Err(TreeError::Collision { .. })
        ));
    }

    #[test]
    fn no_entry_through_a_symlink() {
        let mut t = Tree::new(1);
        t.add_symlink("/lib", "usr/lib", "t").unwrap();
        assert!(matches!(
            file(&mut t, "/lib/x"),
            Err(TreeError::ThroughSymlink { .. })
        ));
    }

    #[test]
    fn symlinks_may_not_escape() {
        let mut t = Tree::new(1);
        assert!(t.add_symlink("/a/b", "../c", "t").is_ok());
        assert!(matches!(
            t.add_symlink("/a/c", "../../etc", "t"),
            Err(TreeError::SymlinkEscapes { .. })
        ));
        assert!(matches!(
            t.add_symlink("/x", "..", "t"),
            Err(TreeError::SymlinkEscapes { .. })
        ));
        // absolute targets resolve inside the guest root
        assert!(t.add_symlink("/lib64", "/usr/lib64", "t").is_ok());
    }

    #[test]
    fn epoch_parsing() {
        assert!(matches!("abc".parse::<u64>().map_err(|_| ()), Err(())));
        assert_eq!(normalize_abs("/a/b/../c/./d"), Some("/a/c/d".into()));
        assert_eq!(normalize_abs("/a/../.."), None);
    }

    #[test]
    fn mirror_recreates_symlink_chain() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/lib/x86_64")).unwrap();
        fs::write(r.join("usr/lib/x86_64/libfoo.so.1.2"), b"elf").unwrap();
        symlink("libfoo.so.1.2", r.join("usr/lib/x86_64/libfoo.so.1")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        fs::create_dir_all(r.join("lib64x")).unwrap();
        symlink("/lib/x86_64/libfoo.so.1", r.join("lib64x/ld.so")).unwrap();
        let mut t = Tree::new(1);
        let sys = r.to_str().unwrap();
        let got = t
            .mirror_under(sys, Path::new("/lib64x/ld.so"), "test")
            .unwrap();
        assert_eq!(got, "/usr/lib/x86_64/libfoo.so.1.2");
        let kinds: Vec<_> = t
            .iter()
            .map(|(p, e)| match &e.kind {
                EntryKind::Symlink(s) => format!("{p} -> {s}"),
                EntryKind::File(_) => format!("{p} (file)"),
                _ => p.to_string(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "/",
                "/lib -> usr/lib",
                "/lib64x",
                "/lib64x/ld.so -> /lib/x86_64/libfoo.so.1",
                "/usr",
                "/usr/lib",
                "/usr/lib/x86_64",
                "/usr/lib/x86_64/libfoo.so.1 -> libfoo.so.1.2",
                "/usr/lib/x86_64/libfoo.so.1.2 (file)",
            ]
        );
        // mirroring again is idempotent
        t.mirror_under(sys, Path::new("/lib/x86_64/libfoo.so.1"), "test")
            .unwrap();
    }

    #[test]
    fn host_tree_keeps_inner_links_and_follows_outer_ones() {
        let d = tempfile::tempdir().unwrap();
        let rel = d.path().join("rel");
        let outside = d.path().join("outside");
        fs::create_dir_all(rel.join("lib/app-1/ebin")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("data"), b"outside").unwrap();
        fs::write(rel.join("lib/app-1/ebin/a.beam"), b"beam").unwrap();
        symlink("lib/app-1", rel.join("current")).unwrap();
        symlink(&outside, rel.join("ext")).unwrap();
        let mut t = Tree::new(1);
        t.add_host_tree(&rel, "/opt/r", "release", &|p| p.ends_with("skipme"))
            .unwrap();
        assert_eq!(
            t.get("/opt/r/current").unwrap().kind,
            EntryKind::Symlink("lib/app-1".into())
        );
        assert!(matches!(
            t.get("/opt/r/ext/data").unwrap().kind,
            EntryKind::File(_)
        ));
    }
}
