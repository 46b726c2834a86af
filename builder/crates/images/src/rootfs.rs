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
    /// A symlink in a host tree that leads somewhere no rule allows.
    #[error("{link}: symlink to {target} leads to {resolved}, outside {allowed}; refusing to copy a host file into the image (a symlink may stay inside the release, or lead into {rule})")]
    LinkEscapes {
        link: PathBuf,
        target: PathBuf,
        resolved: PathBuf,
        allowed: String,
        rule: String,
    },
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

    /// The content's sha256 (a host file's through the digest memo, when one is in use).
    pub fn sha256(&self) -> io::Result<String> {
        match self {
            FileSource::Host(p) => crate::digest::sha256_file(p),
            FileSource::Bytes(b) => Ok(crate::digest::sha256_bytes(b)),
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
    pub(crate) fn describe(&self) -> String {
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

/// Where the symlinks met while copying a host tree ([`Tree::add_host_tree`]) may lead.
/// A link whose target stays inside the tree being copied is kept (relative) or followed
/// (absolute); a link leading into one of `follow` is followed and its target copied;
/// a dangling link, or one that leaves a `lenient` directory it lies in, is skipped and
/// listed in [`Tree::skipped_links`]; anything else is a [`TreeError::LinkEscapes`].
#[derive(Debug, Clone, Default)]
pub struct LinkPolicy {
    /// Canonical directories a link may lead into, each with the rule that allows it.
    pub follow: Vec<(PathBuf, String)>,
    /// Canonical directories (system installations, e.g. the OTP root) whose own links
    /// that lead out of them are skipped instead of refused.
    pub lenient: Vec<PathBuf>,
}

impl LinkPolicy {
    /// The rule that lets a link lead to `resolved`, if any.
    fn allows(&self, resolved: &Path) -> Option<&str> {
        self.follow
            .iter()
            .find(|(dir, _)| resolved.starts_with(dir))
            .map(|(_, why)| why.as_str())
    }

    fn rules(&self) -> String {
        if self.follow.is_empty() {
            return "nothing else".into();
        }
        self.follow
            .iter()
            .map(|(d, why)| format!("{} ({why})", d.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A host symlink that was not copied (dangling, or leaving a system installation).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedLink {
    /// Guest path the link would have had.
    pub path: String,
    /// The link on the host.
    pub host: PathBuf,
    pub target: PathBuf,
    pub reason: String,
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
    skipped: Vec<SkippedLink>,
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
        Tree {
            entries,
            mtime,
            skipped: Vec::new(),
        }
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

    /// Host symlinks left out while copying host trees (dangling ones, and system
    /// installations' links that lead out of them), in the order met.
    pub fn skipped_links(&self) -> &[SkippedLink] {
        &self.skipped
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

    /// Removes `path` and everything under it; how many entries went (0: none was there).
    /// The root cannot be removed.
    pub fn remove(&mut self, path: &str) -> usize {
        if path == "/" || !self.entries.contains_key(path) {
            return 0;
        }
        let under = format!("{path}/");
        let before = self.entries.len();
        self.entries
            .retain(|k, _| k != path && !k.starts_with(&under));
        before - self.entries.len()
    }

    /// Gives the regular file at `path` another content source (mode and origin kept);
    /// false when no regular file is there.
    pub fn set_source(&mut self, path: &str, src: FileSource) -> bool {
        match self.entries.get_mut(path) {
            Some(Entry {
                kind: EntryKind::File(old),
                ..
            }) => {
                *old = src;
                true
            }
            _ => false,
        }
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

    /// Copies a host directory tree into the tree at `dest`. Symlinks are handled by
    /// `policy` (see [`LinkPolicy`]): a link whose relative target stays inside `src` is
    /// kept as a symlink; any other link is followed only where the policy allows (a
    /// rebar3 dev-mode release links into `_build` and the OTP root). `skip` filters
    /// relative paths out (returns true to skip). Permission bits are normalised without
    /// ever widening them (see [`normal_mode`]).
    pub fn add_host_tree(
        &mut self,
        src: &Path,
        dest: &str,
        origin: &str,
        policy: &LinkPolicy,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<(), TreeError> {
        let root = fs::canonicalize(src).map_err(|e| TreeError::HostIo {
            host: src.to_path_buf(),
            source: e,
        })?;
        self.mkdir_p(dest, origin)?;
        let walk = Walk {
            origin,
            policy,
            skip,
        };
        self.copy_dir(&walk, &root, &root, dest, 0)
    }

    fn copy_dir(
        &mut self,
        walk: &Walk,
        root: &Path,
        dir: &Path,
        dest: &str,
        depth: usize,
    ) -> Result<(), TreeError> {
        if depth > 64 {
            return Err(TreeError::Host {
                host: dir.to_path_buf(),
                message: "directory nesting deeper than 64 levels (symlink loop?)".into(),
            });
        }
        let origin = walk.origin;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| TreeError::HostIo { host: p, source: e }
        };
        let names = crate::digest::sorted_names(dir).map_err(io(dir))?;
        for name in names {
            let host = dir.join(&name);
            let rel = host.strip_prefix(root).unwrap_or(&host);
            if (walk.skip)(rel) {
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
                let resolved = match fs::canonicalize(&host) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        self.skipped.push(SkippedLink {
                            path: guest,
                            host,
                            target,
                            reason: "dangling".into(),
                        });
                        continue;
                    }
                    Err(e) => {
                        return Err(TreeError::Host {
                            host: host.clone(),
                            message: format!("symlink to {}: {e}", target.display()),
                        })
                    }
                };
                let inside = resolved.starts_with(root);
                if inside && !target.is_absolute() {
                    let t = target.to_str().ok_or_else(|| TreeError::Host {
                        host: host.clone(),
                        message: "symlink target is not UTF-8".into(),
                    })?;
                    self.add_symlink(&guest, t, origin)?;
                    continue;
                }
                if !inside && walk.policy.allows(&resolved).is_none() {
                    if walk.policy.lenient.iter().any(|d| dir.starts_with(d)) {
                        self.skipped.push(SkippedLink {
                            path: guest,
                            host,
                            target,
                            reason: format!(
                                "leads out of {} to {}",
                                root.display(),
                                resolved.display()
                            ),
                        });
                        continue;
                    }
                    return Err(TreeError::LinkEscapes {
                        link: host,
                        target,
                        resolved,
                        allowed: root.display().to_string(),
                        rule: walk.policy.rules(),
                    });
                }
                if resolved.is_dir() {
                    let perm = dir_mode(&fs::metadata(&resolved).map_err(io(&resolved))?);
                    self.add_dir(&guest, perm, origin)?;
                    self.copy_dir(walk, &resolved, &resolved, &guest, depth + 1)?;
                } else {
                    let rmeta = fs::metadata(&resolved).map_err(io(&resolved))?;
                    if !rmeta.is_file() {
                        return Err(TreeError::Host {
                            host,
                            message: format!(
                                "symlink to {}, which is not a regular file or directory",
                                resolved.display()
                            ),
                        });
                    }
                    readable(&resolved)?;
                    self.add_file(
                        &guest,
                        FileSource::Host(resolved),
                        normal_mode(&rmeta),
                        origin,
                    )?;
                }
            } else if ft.is_dir() {
                self.add_dir(&guest, dir_mode(&meta), origin)?;
                self.copy_dir(walk, root, &host, &guest, depth + 1)?;
            } else if ft.is_file() {
                readable(&host)?;
                self.add_file(&guest, FileSource::Host(host), normal_mode(&meta), origin)?;
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
                    self.add_file(&cur, FileSource::Host(hp), normal_mode(&meta), origin)?;
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

/// A host file's permission bits in the image, normalised for reproducibility but never
/// widened: 0755/0644 (from the owner's x bit) when the file is world-readable on the
/// host, 0700/0600 when it is not. No setuid/setgid/sticky, no group/world write: the
/// builder's umask and the host's group bits do not reach the image.
pub fn normal_mode(meta: &fs::Metadata) -> u32 {
    let m = meta.permissions().mode();
    match (m & 0o100 != 0, m & 0o004 != 0) {
        (true, true) => 0o755,
        (false, true) => 0o644,
        (true, false) => 0o700,
        (false, false) => 0o600,
    }
}

/// A host directory's bits in the image: 0755 when anyone may list and enter it on the
/// host, 0700 otherwise.
fn dir_mode(meta: &fs::Metadata) -> u32 {
    if meta.permissions().mode() & 0o005 == 0o005 {
        0o755
    } else {
        0o700
    }
}

/// What one [`Tree::add_host_tree`] walk carries down.
struct Walk<'a> {
    origin: &'a str,
    policy: &'a LinkPolicy,
    skip: &'a dyn Fn(&Path) -> bool,
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
    fn a_file_takes_another_source_keeping_mode_and_origin() {
        let mut t = Tree::new(1);
        t.add_bytes("/a/f", b"old".to_vec(), 0o600, "release")
            .unwrap();
        assert!(t.set_source("/a/f", FileSource::Bytes(Arc::new(b"new".to_vec()))));
        let e = t.get("/a/f").unwrap();
        assert_eq!((e.perm, e.origin.as_str()), (0o600, "release"));
        assert_eq!(
            e.kind,
            EntryKind::File(FileSource::Bytes(Arc::new(b"new".to_vec())))
        );
        // Not a regular file, or nothing there: no change.
        assert!(!t.set_source("/a", FileSource::Bytes(Arc::new(vec![]))));
        assert!(!t.set_source("/none", FileSource::Bytes(Arc::new(vec![]))));
        assert_eq!(t.get("/a").unwrap().kind, EntryKind::Dir);
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

    /// A release dir `rel` beside a dir `outside`, with one file in each.
    fn release_beside_outside() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let rel = d.path().join("rel");
        let outside = fs::canonicalize(d.path()).unwrap().join("outside");
        fs::create_dir_all(rel.join("lib/app-1/ebin")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("data"), b"outside").unwrap();
        fs::write(rel.join("lib/app-1/ebin/a.beam"), b"beam").unwrap();
        (d, rel, outside)
    }

    fn copy(rel: &Path, policy: &LinkPolicy) -> Result<Tree, TreeError> {
        let mut t = Tree::new(1);
        t.add_host_tree(rel, "/opt/r", "release", policy, &|p| p.ends_with("skipme"))?;
        Ok(t)
    }

    #[test]
    fn host_tree_keeps_inner_links_and_follows_allowed_outer_ones() {
        let (_d, rel, outside) = release_beside_outside();
        symlink("lib/app-1", rel.join("current")).unwrap();
        symlink(&outside, rel.join("ext")).unwrap();
        symlink("../../nowhere", rel.join("lib/app-1/include")).unwrap();
        let policy = LinkPolicy {
            follow: vec![(outside.clone(), "test".into())],
            lenient: vec![],
        };
        let t = copy(&rel, &policy).unwrap();
        assert_eq!(
            t.get("/opt/r/current").unwrap().kind,
            EntryKind::Symlink("lib/app-1".into())
        );
        assert!(matches!(
            t.get("/opt/r/ext/data").unwrap().kind,
            EntryKind::File(_)
        ));
        // The dangling link is left out and listed.
        assert!(t.get("/opt/r/lib/app-1/include").is_none());
        assert_eq!(t.skipped_links().len(), 1);
        assert_eq!(t.skipped_links()[0].path, "/opt/r/lib/app-1/include");
        assert_eq!(t.skipped_links()[0].reason, "dangling");
    }

    #[test]
    fn host_tree_refuses_every_link_shape_leaving_the_allowed_places() {
        type Target<'a> = &'a dyn Fn(&Path, &Path) -> PathBuf;
        let shapes: [(&str, Target); 5] = [
            ("absolute file", &|_, out| out.join("data")),
            ("absolute dir", &|_, out| out.to_path_buf()),
            ("relative escape", &|_, _| {
                PathBuf::from("../../../../outside/data")
            }),
            ("dotdot chain", &|_, _| {
                PathBuf::from("../../../../rel/../outside")
            }),
            ("chain of links", &|rel, _| {
                // secret -> hop (inside the release) -> outside
                symlink("../../../outside/data", rel.join("lib/app-1/hop")).unwrap();
                PathBuf::from("../hop")
            }),
        ];
        for (what, target) in shapes {
            let (_d, rel, outside) = release_beside_outside();
            let link = rel.join("lib/app-1/ebin/secret");
            symlink(target(&rel, &outside), &link).unwrap();
            let err = copy(&rel, &LinkPolicy::default()).unwrap_err();
            match &err {
                TreeError::LinkEscapes { link: l, .. } => assert_eq!(l, &link, "{what}"),
                other => panic!("{what}: {other}"),
            }
            let text = err.to_string();
            assert!(
                text.contains("refusing") && text.contains("secret"),
                "{what}: {text}"
            );
        }
    }

    #[test]
    fn links_out_of_a_lenient_dir_are_skipped() {
        let (_d, rel, outside) = release_beside_outside();
        symlink(&outside, rel.join("lib/app-1/ebin/ext")).unwrap();
        let canon = fs::canonicalize(&rel).unwrap();
        let policy = LinkPolicy {
            follow: vec![],
            lenient: vec![canon],
        };
        let t = copy(&rel, &policy).unwrap();
        assert!(t.get("/opt/r/lib/app-1/ebin/ext").is_none());
        assert!(t.skipped_links()[0].reason.starts_with("leads out of"));
    }

    #[test]
    fn modes_are_never_widened() {
        let (_d, rel, _) = release_beside_outside();
        let ebin = rel.join("lib/app-1/ebin");
        for (name, host, image) in [
            ("a", 0o640, 0o600),
            ("b", 0o750, 0o700),
            ("c", 0o644, 0o644),
            ("d", 0o4755, 0o755),
            ("e", 0o666, 0o644),
            ("f", 0o604, 0o644),
        ] {
            fs::write(ebin.join(name), b"x").unwrap();
            fs::set_permissions(ebin.join(name), fs::Permissions::from_mode(host)).unwrap();
            let t = copy(&rel, &LinkPolicy::default()).unwrap();
            let got = t
                .get(&format!("/opt/r/lib/app-1/ebin/{name}"))
                .unwrap()
                .perm;
            assert_eq!(got, image, "{name}: host {host:o}");
        }
        fs::set_permissions(&ebin, fs::Permissions::from_mode(0o750)).unwrap();
        let t = copy(&rel, &LinkPolicy::default()).unwrap();
        assert_eq!(t.get("/opt/r/lib/app-1/ebin").unwrap().perm, 0o700);
    }
}
