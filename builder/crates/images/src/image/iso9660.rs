//! ISO 9660 (ECMA-119) image writer with Rock Ridge (RRIP 1991A on SUSP 1.10).
//!
//! This module owns the byte layout of an ISO 9660 image: the system area,
//! the Primary Volume Descriptor and the Volume Descriptor Set Terminator,
//! the L and M path tables, directory records (sorted as ECMA-119 9.3
//! requires), Rock Ridge System Use entries (SP, ER, PX, TF, NM, SL, with CE
//! continuation areas where a record's System Use field is too small) and the
//! placement of file data. It turns an already decided tree of [`Entry`]s
//! into bytes and nothing more: it must not decide what goes into an image
//! (that is the caller's job), compress anything, or touch any filesystem
//! except for reading [`FileData::Host`] files it is handed.
//!
//! # Layout
//!
//! ```text
//! sector 0..16   system area (zeros)
//! sector 16      Primary Volume Descriptor
//! sector 17      Volume Descriptor Set Terminator
//! sector 18..    L path table, then M path table
//! then           directories, breadth first (path table order), each directly
//!                followed by the Rock Ridge continuation areas (CE) of its
//!                records (packed, never crossing a sector)
//! then           file data, depth first with children in byte order of their names
//! ```
//!
//! Every file occupies one extent (files of up to 4 GiB - 1 bytes);
//! zero-length files and symlinks are recorded with extent 0 and size 0.
//! Directories deeper than 8 levels are written as they are (no RE/CL/PL
//! relocation): Rock Ridge-aware readers (Linux isofs, NetBSD cd9660,
//! libisofs, libarchive) do not need it.
//!
//! # Rock Ridge
//!
//! The `.` record of the root starts with SP and carries ER `RRIP_1991A`
//! (accepted by NetBSD's cd9660, which rumprun uses, by Linux, libisofs and
//! libarchive). Every record, `.` and `..` included, has PX (the 36-byte
//! RRIP 1991A form: mode with file type, nlink = 2 + subdirectories for
//! directories, uid 0, gid 0) and TF (modify, access, attributes). Other
//! records add NM and, for symlinks, SL. What does not fit a record's System
//! Use field goes to continuation areas (CE) that follow the directory:
//! each lies within one sector (Linux and NetBSD read a CE area from a single
//! block) and comes before the extent of the file or directory it describes
//! (libarchive reads the image as a stream). A non-final SL entry always
//! ends in a component with the CONTINUE flag, using an empty one where
//! needed, because libarchive restarts its `/` separator at each SL entry.
//!
//! Reader limits the writer keeps to or documents: names up to 255 bytes
//! ([`MAX_NAME_LEN`]) are written and read back by NetBSD, libisofs and
//! libarchive, but Linux's isofs (still in 6.1) truncates Rock Ridge names
//! longer than 253 bytes; symlink targets are limited to
//! [`MAX_SYMLINK_LEN`] bytes.
//!
//! # Names
//!
//! ISO 9660 identifiers are derived deterministically from the real names
//! (ISO 9660 level 2 lengths: file name + extension <= 30 d-characters,
//! directory identifiers <= 31): letters are upper-cased, anything outside
//! `A-Z 0-9 _` becomes `_`, and a name that collides within its directory is
//! truncated and given a `_N` counter (names are processed in byte order of
//! the real names, so the result does not depend on the input order). With
//! Rock Ridge enabled the real names come from NM entries, so the ISO names
//! only need to be unique and valid.
//!
//! # Input tree
//!
//! Entries may arrive in any order. `/` is implicit (an explicit `/` entry of
//! kind [`Node::Dir`] only sets its mode). Parents that are not listed are
//! created implicitly as directories with mode `0o755`. Modes are masked to
//! the permission bits (`0o7777`); the file type comes from the [`Node`].
//! Every timestamp in the image (volume creation/modification, directory
//! records, Rock Ridge TF modify/access/attributes) is [`Options::mtime`],
//! and uid/gid are 0, so the same entries (in any order) and options always
//! give the same bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Logical sector (and logical block) size.
pub const SECTOR_SIZE: usize = 2048;
/// Longest name (one path component) in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target in bytes. Rock Ridge sets no limit, but NetBSD's
/// cd9660 (rumprun) reads at most MAXPATHLEN = 1024 bytes and libisofs
/// (xorriso) at most 1023 (LIBISOFS_NODE_PATH_MAX with its NUL), so longer
/// targets are refused rather than written unreadable.
pub const MAX_SYMLINK_LEN: usize = 1023;
/// Largest file that fits in one extent.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;
/// Path table parent numbers are 16 bits wide.
pub const MAX_DIRECTORIES: usize = u16::MAX as usize;

const SECTOR: u64 = SECTOR_SIZE as u64;
const SYSTEM_AREA_SECTORS: u32 = 16;
const FIRST_PATH_TABLE_SECTOR: u32 = SYSTEM_AREA_SECTORS + 2;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const PERMISSION_BITS: u32 = 0o7777;
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Directory record length limit (kept even, so 254).
const MAX_RECORD_LEN: usize = 254;
const CE_LEN: usize = 28;
const NM_CONTINUE: u8 = 0x01;
const SL_CONTINUE: u8 = 0x01;
const SL_CURRENT: u8 = 0x02;
const SL_PARENT: u8 = 0x04;
const SL_ROOT: u8 = 0x08;
/// TF flags: modify, access, attributes (7-byte form).
const TF_FLAGS: u8 = 0x02 | 0x04 | 0x08;
const FLAG_DIRECTORY: u8 = 0x02;

const ER_ID: &[u8] = b"RRIP_1991A";
const ER_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const ER_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
const APPLICATION_ID: &[u8] = b"BEAMBAKE";

/// Contents of a regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Contents held in memory.
    Bytes(Vec<u8>),
    /// Contents read from this host file while the image is written. Its size
    /// is taken when the layout is planned; a file that changes size before
    /// it is copied is an error.
    Host(PathBuf),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(FileData),
    /// Symlink with this target (relative or absolute, stored verbatim).
    Symlink(String),
}

/// One path of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute, normalised path, e.g. `/lib/app-1/ebin/a.beam`.
    pub path: String,
    pub node: Node,
    /// Permission bits (masked with `0o7777`).
    pub mode: u32,
}

/// Image-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Volume identifier: d-characters (`A-Z 0-9 _`), at most 32.
    pub volume_id: String,
    /// Seconds since the epoch, used for every timestamp in the image.
    /// Must fall in 1970..=2155 (the 7-byte date format ends in 2155).
    pub mtime: u64,
    /// Write Rock Ridge extensions (real names, modes, symlinks, times).
    pub rock_ridge: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            volume_id: "CDROM".to_string(),
            mtime: 0,
            rock_ridge: true,
        }
    }
}

/// Why an image could not be written. Each variant names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("name in {path:?} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    NameTooLong { path: String, len: usize },
    #[error("duplicate entry {path:?}")]
    DuplicatePath { path: String },
    #[error("{path:?}: parent {parent:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("file {path:?} is {size} bytes; one ISO 9660 extent holds at most {MAX_FILE_SIZE}")]
    FileTooLarge { path: String, size: u64 },
    #[error("symlink {path:?}: {reason}")]
    InvalidSymlink { path: String, reason: &'static str },
    #[error("symlink {path:?} needs Rock Ridge, which is disabled")]
    SymlinkWithoutRockRidge { path: String },
    #[error("volume id {volume_id:?}: {reason}")]
    InvalidVolumeId {
        volume_id: String,
        reason: &'static str,
    },
    #[error("mtime {mtime} is outside the years 1970..=2155 that ISO 9660 dates can hold")]
    InvalidMtime { mtime: u64 },
    #[error("{path:?}: more than {MAX_DIRECTORIES} directories do not fit the path table")]
    TooManyDirectories { path: String },
    #[error("image of {sectors} sectors exceeds the 32-bit volume space size")]
    ImageTooLarge { sectors: u64 },
    #[error("{path:?}: reading host file {host:?}: {source}")]
    HostIo {
        path: String,
        host: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path:?}: host file {host:?} is not a regular file")]
    HostNotFile { path: String, host: PathBuf },
    #[error("{path:?}: host file {host:?} changed size: planned {expected} bytes, found {found}")]
    HostFileChanged {
        path: String,
        host: PathBuf,
        expected: u64,
        found: String,
    },
    #[error("writing the image (at {path:?}): {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path:?}: internal layout error: {reason}")]
    Internal { path: String, reason: &'static str },
}

/// Writes the image for `entries` to `out` and hands `out` back.
///
/// The output depends only on the set of entries (not their order), the
/// options and the contents of host files.
/// The entries of a rootfs tree (device nodes have no place on an ISO and are left out;
/// owners are root, as everywhere in beambake's images).
pub fn entries_from_tree(tree: &crate::rootfs::Tree) -> Vec<Entry> {
    use crate::rootfs::{EntryKind, FileSource};
    tree.iter()
        .filter(|(p, _)| *p != "/")
        .filter_map(|(path, e)| {
            let node = match &e.kind {
                EntryKind::Dir => Node::Dir,
                EntryKind::File(FileSource::Host(h)) => Node::File(FileData::Host(h.clone())),
                EntryKind::File(FileSource::Bytes(b)) => Node::File(FileData::Bytes(b.to_vec())),
                EntryKind::Symlink(t) => Node::Symlink(t.clone()),
                EntryKind::Device { .. } => return None,
            };
            Some(Entry {
                path: path.to_string(),
                node,
                mode: e.perm,
            })
        })
        .collect()
}

pub fn write<W: Write>(entries: &[Entry], opts: &Options, out: W) -> Result<W, IsoError> {
    validate_volume_id(&opts.volume_id)?;
    let date = Date::from_unix(opts.mtime)?;
    let mut tree = Tree::build(entries, opts)?;
    tree.assign_iso_names();
    let layout = Layout::plan(&mut tree, opts, &date)?;
    layout.emit(&tree, opts, &date, out)
}

fn validate_volume_id(id: &str) -> Result<(), IsoError> {
    let err = |reason| IsoError::InvalidVolumeId {
        volume_id: id.to_string(),
        reason,
    };
    if id.len() > 32 {
        return Err(err("longer than 32 characters"));
    }
    if !id.bytes().all(is_d_char) {
        return Err(err("only d-characters A-Z 0-9 _ are allowed"));
    }
    Ok(())
}

fn is_d_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

// ---------------------------------------------------------------------------
// Dates

struct Date {
    year: u32,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Date {
    fn from_unix(ts: u64) -> Result<Date, IsoError> {
        let days = ts / 86_400;
        let secs = ts % 86_400;
        // Civil-from-days (proleptic Gregorian), days since 1970-01-01.
        let z = days as i128 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i128::from(month <= 2);
        if !(1970..=2155).contains(&year) {
            return Err(IsoError::InvalidMtime { mtime: ts });
        }
        Ok(Date {
            year: year as u32,
            month: month as u8,
            day: day as u8,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
        })
    }

    /// ECMA-119 9.1.5 / RRIP TF short form, UTC.
    fn seven(&self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// ECMA-119 8.4.26.1, UTC.
    fn seventeen(&self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(s.as_bytes());
        out
    }
}

const DATE_UNSPECIFIED: [u8; 17] = *b"0000000000000000\0";

// ---------------------------------------------------------------------------
// Tree

enum Kind<'a> {
    Dir,
    File { data: &'a FileData, size: u32 },
    Symlink(&'a str),
}

struct TNode<'a> {
    /// Real name (empty for the root).
    name: &'a [u8],
    /// Full path, for error messages.
    path: String,
    parent: usize,
    kind: Kind<'a>,
    mode: u32,
    /// Children; sorted by ISO identifier after `assign_iso_names`.
    children: Vec<usize>,
    /// ISO identifier as recorded (`NAME` for directories, `NAME.EXT;1` for files).
    iso_id: Vec<u8>,
    /// ECMA-119 9.3 sort key: (file name, extension).
    sort_key: (Vec<u8>, Vec<u8>),
    extent: u32,
    size: u32,
}

impl TNode<'_> {
    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }
}

struct Tree<'a> {
    nodes: Vec<TNode<'a>>,
}

const ROOT: usize = 0;

impl<'a> Tree<'a> {
    fn build(entries: &'a [Entry], opts: &Options) -> Result<Tree<'a>, IsoError> {
        let mut nodes = vec![TNode {
            name: b"",
            path: "/".to_string(),
            parent: ROOT,
            kind: Kind::Dir,
            mode: IMPLICIT_DIR_MODE,
            children: Vec::new(),
            iso_id: vec![0],
            sort_key: (Vec::new(), Vec::new()),
            extent: 0,
            size: 0,
        }];
        let mut root_explicit = false;
        let mut lookup: HashMap<(usize, &'a [u8]), usize> = HashMap::new();

        // A parent sorts before its descendants, so implicit directories are
        // only made for paths that have no entry at all, and errors do not
        // depend on the input order.
        let mut sorted: Vec<&'a Entry> = entries.iter().collect();
        sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));

        for entry in sorted {
            let comps = split_path(&entry.path)?;
            let Some((last, parents)) = comps.split_last() else {
                if !matches!(entry.node, Node::Dir) {
                    return Err(IsoError::InvalidPath {
                        path: entry.path.clone(),
                        reason: "the root must be a directory",
                    });
                }
                if root_explicit {
                    return Err(IsoError::DuplicatePath {
                        path: entry.path.clone(),
                    });
                }
                root_explicit = true;
                nodes[ROOT].mode = entry.mode & PERMISSION_BITS;
                continue;
            };
            let mut dir = ROOT;
            for (i, comp) in parents.iter().enumerate() {
                let key = (dir, comp.as_bytes());
                dir = match lookup.get(&key) {
                    Some(&child) => {
                        if !nodes[child].is_dir() {
                            return Err(IsoError::ParentNotDirectory {
                                path: entry.path.clone(),
                                parent: format!("/{}", parents[..=i].join("/")),
                            });
                        }
                        child
                    }
                    None => {
                        let idx = nodes.len();
                        nodes.push(new_node(
                            comp.as_bytes(),
                            format!("/{}", parents[..=i].join("/")),
                            dir,
                            Kind::Dir,
                            IMPLICIT_DIR_MODE,
                        ));
                        nodes[dir].children.push(idx);
                        lookup.insert(key, idx);
                        idx
                    }
                };
            }
            let key = (dir, last.as_bytes());
            if lookup.contains_key(&key) {
                return Err(IsoError::DuplicatePath {
                    path: entry.path.clone(),
                });
            }
            let kind = match &entry.node {
                Node::Dir => Kind::Dir,
                Node::File(data) => Kind::File {
                    data,
                    size: file_size(&entry.path, data)?,
                },
                Node::Symlink(target) => {
                    if !opts.rock_ridge {
                        return Err(IsoError::SymlinkWithoutRockRidge {
                            path: entry.path.clone(),
                        });
                    }
                    validate_symlink(&entry.path, target)?;
                    Kind::Symlink(target)
                }
            };
            let idx = nodes.len();
            nodes.push(new_node(
                last.as_bytes(),
                entry.path.clone(),
                dir,
                kind,
                entry.mode & PERMISSION_BITS,
            ));
            nodes[dir].children.push(idx);
            lookup.insert(key, idx);
        }
        Ok(Tree { nodes })
    }

    /// Gives every node a unique, valid ISO 9660 identifier within its
    /// directory and sorts each directory's children by it.
    fn assign_iso_names(&mut self) {
        for dir in 0..self.nodes.len() {
            if !self.nodes[dir].is_dir() {
                continue;
            }
            let mut children = std::mem::take(&mut self.nodes[dir].children);
            children.sort_by(|&a, &b| self.nodes[a].name.cmp(self.nodes[b].name));
            let mut used: HashSet<(Vec<u8>, Vec<u8>)> = HashSet::new();
            let mut counters: HashMap<(Vec<u8>, Vec<u8>), u64> = HashMap::new();
            for &child in &children {
                let node = &self.nodes[child];
                let is_dir = node.is_dir();
                let (stem, ext) = iso_base_name(node.name, is_dir);
                let key = if used.contains(&(stem.clone(), ext.clone())) {
                    let limit = if is_dir { 31 } else { 30 - ext.len() };
                    let base = (stem.clone(), ext.clone());
                    let mut n = counters.get(&base).copied().unwrap_or(1);
                    loop {
                        let suffix = format!("_{n}");
                        n += 1;
                        let keep = stem.len().min(limit.saturating_sub(suffix.len()));
                        let mut candidate = stem[..keep].to_vec();
                        candidate.extend_from_slice(suffix.as_bytes());
                        let key = (candidate, ext.clone());
                        if !used.contains(&key) {
                            counters.insert(base, n);
                            break key;
                        }
                    }
                } else {
                    (stem, ext)
                };
                let mut iso_id = key.0.clone();
                if !is_dir {
                    iso_id.push(b'.');
                    iso_id.extend_from_slice(&key.1);
                    iso_id.extend_from_slice(b";1");
                }
                used.insert(key.clone());
                let node = &mut self.nodes[child];
                node.iso_id = iso_id;
                node.sort_key = key;
            }
            children.sort_by(|&a, &b| self.nodes[a].sort_key.cmp(&self.nodes[b].sort_key));
            self.nodes[dir].children = children;
        }
    }

    fn subdir_count(&self, dir: usize) -> u32 {
        self.nodes[dir]
            .children
            .iter()
            .filter(|&&c| self.nodes[c].is_dir())
            .count() as u32
    }
}

fn new_node<'a>(
    name: &'a [u8],
    path: String,
    parent: usize,
    kind: Kind<'a>,
    mode: u32,
) -> TNode<'a> {
    TNode {
        name,
        path,
        parent,
        kind,
        mode,
        children: Vec::new(),
        iso_id: Vec::new(),
        sort_key: (Vec::new(), Vec::new()),
        extent: 0,
        size: 0,
    }
}

fn split_path(path: &str) -> Result<Vec<&str>, IsoError> {
    let invalid = |reason| IsoError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(invalid("not absolute"));
    };
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let comps: Vec<&str> = rest.split('/').collect();
    for comp in &comps {
        if comp.is_empty() {
            return Err(invalid("empty name (doubled or trailing '/')"));
        }
        if *comp == "." || *comp == ".." {
            return Err(invalid("'.' and '..' are not names"));
        }
        if comp.len() > MAX_NAME_LEN {
            return Err(IsoError::NameTooLong {
                path: path.to_string(),
                len: comp.len(),
            });
        }
    }
    Ok(comps)
}

fn file_size(path: &str, data: &FileData) -> Result<u32, IsoError> {
    let size = match data {
        FileData::Bytes(bytes) => bytes.len() as u64,
        FileData::Host(host) => {
            let meta = std::fs::metadata(host).map_err(|source| IsoError::HostIo {
                path: path.to_string(),
                host: host.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(IsoError::HostNotFile {
                    path: path.to_string(),
                    host: host.clone(),
                });
            }
            meta.len()
        }
    };
    u32::try_from(size).map_err(|_| IsoError::FileTooLarge {
        path: path.to_string(),
        size,
    })
}

fn validate_symlink(path: &str, target: &str) -> Result<(), IsoError> {
    let invalid = |reason| IsoError::InvalidSymlink {
        path: path.to_string(),
        reason,
    };
    if target.is_empty() {
        return Err(invalid("empty target"));
    }
    if target.contains('\0') {
        return Err(invalid("target contains NUL"));
    }
    if target.len() > MAX_SYMLINK_LEN {
        return Err(invalid("target longer than 1023 bytes (MAX_SYMLINK_LEN)"));
    }
    Ok(())
}

/// ISO 9660 (file name, extension) for a real name, before collision
/// handling. Directories have no extension.
fn iso_base_name(name: &[u8], is_dir: bool) -> (Vec<u8>, Vec<u8>) {
    let map = |bytes: &[u8]| -> Vec<u8> {
        bytes
            .iter()
            .map(|&b| {
                let b = b.to_ascii_uppercase();
                if is_d_char(b) {
                    b
                } else {
                    b'_'
                }
            })
            .collect()
    };
    if is_dir {
        let mut stem = map(name);
        stem.truncate(31);
        return (stem, Vec::new());
    }
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(pos) if pos > 0 => (&name[..pos], &name[pos + 1..]),
        _ => (name, &[][..]),
    };
    let mut ext = map(ext);
    ext.truncate(8);
    let mut stem = map(stem);
    stem.truncate(30 - ext.len());
    (stem, ext)
}

// ---------------------------------------------------------------------------
// System Use entries and their packing

#[derive(Clone)]
struct Comp {
    flags: u8,
    text: Vec<u8>,
}

/// One logical System Use item; NM and SL items may be split over several
/// entries (and areas) with their continue flags.
#[derive(Clone)]
enum Unit {
    Fixed(Vec<u8>),
    Name(Vec<u8>),
    Link(VecDeque<Comp>),
}

fn both_u16(v: u16) -> [u8; 4] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], b[0], b[1]]
}

fn both_u32(v: u32) -> [u8; 8] {
    let l = v.to_le_bytes();
    let b = v.to_be_bytes();
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn su_sp() -> Vec<u8> {
    vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0]
}

fn su_er() -> Vec<u8> {
    let len = 8 + ER_ID.len() + ER_DESCRIPTOR.len() + ER_SOURCE.len();
    let mut v = vec![
        b'E',
        b'R',
        len as u8,
        1,
        ER_ID.len() as u8,
        ER_DESCRIPTOR.len() as u8,
        ER_SOURCE.len() as u8,
        1,
    ];
    v.extend_from_slice(ER_ID);
    v.extend_from_slice(ER_DESCRIPTOR);
    v.extend_from_slice(ER_SOURCE);
    v
}

/// PX in the RRIP 1991A (36-byte) form, matching the ER identifier.
fn su_px(mode: u32, nlink: u32) -> Vec<u8> {
    let mut v = vec![b'P', b'X', 36, 1];
    v.extend_from_slice(&both_u32(mode));
    v.extend_from_slice(&both_u32(nlink));
    v.extend_from_slice(&both_u32(0));
    v.extend_from_slice(&both_u32(0));
    v
}

fn su_tf(date: &[u8; 7]) -> Vec<u8> {
    let mut v = vec![b'T', b'F', 5 + 3 * 7, 1, TF_FLAGS];
    for _ in 0..3 {
        v.extend_from_slice(date);
    }
    v
}

fn su_ce(block: u32, offset: u32, len: u32) -> [u8; CE_LEN] {
    let mut v = [0u8; CE_LEN];
    v[..4].copy_from_slice(&[b'C', b'E', CE_LEN as u8, 1]);
    v[4..12].copy_from_slice(&both_u32(block));
    v[12..20].copy_from_slice(&both_u32(offset));
    v[20..28].copy_from_slice(&both_u32(len));
    v
}

/// SL components for a target: a leading `/` is a ROOT component, `.` and
/// `..` are CURRENT and PARENT, everything else is text.
fn sl_components(target: &str) -> VecDeque<Comp> {
    let mut comps = VecDeque::new();
    let mut rest = target;
    if let Some(r) = rest.strip_prefix('/') {
        comps.push_back(Comp {
            flags: SL_ROOT,
            text: Vec::new(),
        });
        rest = r;
        if rest.is_empty() {
            return comps;
        }
    }
    for part in rest.split('/') {
        let comp = match part {
            "." => Comp {
                flags: SL_CURRENT,
                text: Vec::new(),
            },
            ".." => Comp {
                flags: SL_PARENT,
                text: Vec::new(),
            },
            _ => Comp {
                flags: 0,
                text: part.as_bytes().to_vec(),
            },
        };
        comps.push_back(comp);
    }
    comps
}

/// Emits as many units (or leading parts of them) as fit into `cap` bytes.
fn fill(units: &mut VecDeque<Unit>, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(unit) = units.front_mut() {
        let room = cap - out.len();
        let done = match unit {
            Unit::Fixed(bytes) => {
                if bytes.len() > room {
                    break;
                }
                out.extend_from_slice(bytes);
                true
            }
            Unit::Name(name) => {
                if room < 6 {
                    break;
                }
                let take = name.len().min(250).min(room - 5);
                let more = take < name.len();
                out.extend_from_slice(&[
                    b'N',
                    b'M',
                    (5 + take) as u8,
                    1,
                    if more { NM_CONTINUE } else { 0 },
                ]);
                out.extend_from_slice(&name[..take]);
                name.drain(..take);
                !more
            }
            Unit::Link(comps) => {
                // A non-final SL entry must end in a component with the
                // CONTINUE flag: libarchive restarts its '/' separator at
                // every SL entry, while Linux, NetBSD and libisofs add the
                // '/' themselves unless the last component continues. Two
                // bytes are kept for an empty continuing component, which
                // every one of them reads as the separator.
                if room < 10 {
                    break;
                }
                let entry_cap = room.min(255) - 2;
                let mut body = Vec::new();
                let mut last_continues = false;
                while let Some(comp) = comps.front_mut() {
                    let avail = entry_cap - 5 - body.len();
                    if comp.text.is_empty() {
                        if avail < 2 {
                            break;
                        }
                        body.extend_from_slice(&[comp.flags, 0]);
                        last_continues = comp.flags & SL_CONTINUE != 0;
                        comps.pop_front();
                    } else {
                        if avail < 3 {
                            break;
                        }
                        let take = comp.text.len().min(avail - 2);
                        if take < comp.text.len() {
                            body.extend_from_slice(&[comp.flags | SL_CONTINUE, take as u8]);
                            body.extend_from_slice(&comp.text[..take]);
                            comp.text.drain(..take);
                            last_continues = true;
                        } else {
                            body.extend_from_slice(&[comp.flags, take as u8]);
                            body.extend_from_slice(&comp.text);
                            last_continues = false;
                            comps.pop_front();
                        }
                    }
                }
                if body.is_empty() {
                    break;
                }
                let more = !comps.is_empty();
                if more && !last_continues {
                    body.extend_from_slice(&[SL_CONTINUE, 0]);
                }
                out.extend_from_slice(&[
                    b'S',
                    b'L',
                    (5 + body.len()) as u8,
                    1,
                    if more { SL_CONTINUE } else { 0 },
                ]);
                out.extend_from_slice(&body);
                !more
            }
        };
        if done {
            units.pop_front();
        }
    }
    out
}

/// A continuation area: `data`, then a CE entry pointing at `next` if any.
struct Piece {
    data: Vec<u8>,
    next: Option<usize>,
    sector: u32,
    offset: u32,
}

impl Piece {
    fn len(&self) -> usize {
        self.data.len() + if self.next.is_some() { CE_LEN } else { 0 }
    }
}

/// Packs `units` into a System Use field of `cap` bytes, spilling into
/// continuation pieces (each at most one sector) as needed. Returns the
/// inline bytes and the first continuation piece.
fn pack(
    units: Vec<Unit>,
    cap: usize,
    pieces: &mut Vec<Piece>,
    path: &str,
) -> Result<(Vec<u8>, Option<usize>), IsoError> {
    let mut queue: VecDeque<Unit> = units.into();
    let mut trial = queue.clone();
    let all = fill(&mut trial, cap);
    if trial.is_empty() {
        return Ok((all, None));
    }
    let inline = fill(&mut queue, cap - CE_LEN);
    let mut first = None;
    let mut prev: Option<usize> = None;
    while !queue.is_empty() {
        let mut trial = queue.clone();
        let whole = fill(&mut trial, SECTOR_SIZE);
        let data = if trial.is_empty() {
            queue = trial;
            whole
        } else {
            let part = fill(&mut queue, SECTOR_SIZE - CE_LEN);
            if part.is_empty() {
                return Err(IsoError::Internal {
                    path: path.to_string(),
                    reason: "a System Use entry does not fit a continuation area",
                });
            }
            part
        };
        let idx = pieces.len();
        pieces.push(Piece {
            data,
            next: None,
            sector: 0,
            offset: 0,
        });
        match prev {
            Some(p) => pieces[p].next = Some(idx),
            None => first = Some(idx),
        }
        prev = Some(idx);
    }
    Ok((inline, first))
}

// ---------------------------------------------------------------------------
// Layout

struct Record {
    /// Node the record describes (its extent, size, flags).
    target: usize,
    id: Vec<u8>,
    su: Vec<u8>,
    ce: Option<usize>,
    offset: usize,
}

impl Record {
    fn base_len(&self) -> usize {
        33 + self.id.len() + usize::from(self.id.len().is_multiple_of(2))
    }

    fn len(&self) -> usize {
        let su = self.su.len() + if self.ce.is_some() { CE_LEN } else { 0 };
        let len = self.base_len() + su;
        len + len % 2
    }
}

struct DirLayout {
    node: usize,
    records: Vec<Record>,
    sectors: u32,
    /// Continuation areas of this directory's records (indices into
    /// `Layout::pieces`), written in `ce_sectors` sectors right after it.
    pieces: std::ops::Range<usize>,
    ce_first_sector: u32,
    ce_sectors: u32,
}

struct Layout {
    /// Directories in path table order (breadth first).
    dirs: Vec<DirLayout>,
    /// Path table size in bytes.
    path_table_len: usize,
    path_table_sectors: u32,
    pieces: Vec<Piece>,
    /// Non-empty files in data order.
    files: Vec<usize>,
    total_sectors: u32,
}

fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR)
}

/// Packs continuation pieces into sectors from `first_sector` on, none
/// crossing a sector boundary (Linux and NetBSD read a CE area from one
/// block). Returns the number of sectors used.
fn place_pieces(pieces: &mut [Piece], first_sector: u32) -> u32 {
    let mut sector = 0u32;
    let mut offset = 0usize;
    for piece in pieces.iter_mut() {
        let len = piece.len();
        if offset + len > SECTOR_SIZE {
            sector += 1;
            offset = 0;
        }
        piece.sector = first_sector.saturating_add(sector);
        piece.offset = offset as u32;
        offset += len;
    }
    if pieces.is_empty() {
        0
    } else {
        sector + 1
    }
}

/// Sector numbers past `u32::MAX` are caught by the final size check.
fn clamp_sector(sector: u64) -> u32 {
    u32::try_from(sector).unwrap_or(u32::MAX)
}

impl Layout {
    fn plan(tree: &mut Tree<'_>, opts: &Options, date: &Date) -> Result<Layout, IsoError> {
        // Directories breadth first, children in identifier order: this is
        // the path table order, and directory numbers follow it.
        let mut order = vec![ROOT];
        let mut i = 0;
        while i < order.len() {
            let dir = order[i];
            for &child in &tree.nodes[dir].children {
                if tree.nodes[child].is_dir() {
                    order.push(child);
                }
            }
            i += 1;
        }
        if order.len() > MAX_DIRECTORIES {
            return Err(IsoError::TooManyDirectories {
                path: tree.nodes[order[MAX_DIRECTORIES]].path.clone(),
            });
        }
        let path_table_len: usize = order
            .iter()
            .map(|&d| {
                let n = tree.nodes[d].iso_id.len();
                8 + n + n % 2
            })
            .sum();
        let path_table_sectors = sectors_for(path_table_len as u64) as u32;

        let date7 = date.seven();
        let nlinks: Vec<u32> = (0..tree.nodes.len())
            .map(|n| match tree.nodes[n].kind {
                Kind::Dir => 2 + tree.subdir_count(n),
                _ => 1,
            })
            .collect();
        let mut pieces = Vec::new();
        let mut dirs = Vec::with_capacity(order.len());
        for &dir in &order {
            let first_piece = pieces.len();
            let mut records = Vec::new();
            let parent = tree.nodes[dir].parent;
            let mut slots = vec![(dir, vec![0u8], true), (parent, vec![1u8], false)];
            for &child in &tree.nodes[dir].children {
                slots.push((child, tree.nodes[child].iso_id.clone(), false));
            }
            let mut offset = 0usize;
            for (idx, (target, id, is_self)) in slots.into_iter().enumerate() {
                let mut record = Record {
                    target,
                    id,
                    su: Vec::new(),
                    ce: None,
                    offset: 0,
                };
                if opts.rock_ridge {
                    let node = &tree.nodes[target];
                    let mut units = Vec::new();
                    if dir == ROOT && is_self {
                        units.push(Unit::Fixed(su_sp()));
                    }
                    let file_type = match node.kind {
                        Kind::Dir => S_IFDIR,
                        Kind::File { .. } => S_IFREG,
                        Kind::Symlink(_) => S_IFLNK,
                    };
                    units.push(Unit::Fixed(su_px(file_type | node.mode, nlinks[target])));
                    units.push(Unit::Fixed(su_tf(&date7)));
                    if dir == ROOT && is_self {
                        units.push(Unit::Fixed(su_er()));
                    }
                    if idx >= 2 {
                        units.push(Unit::Name(node.name.to_vec()));
                        if let Kind::Symlink(target) = node.kind {
                            units.push(Unit::Link(sl_components(target)));
                        }
                    }
                    let cap = MAX_RECORD_LEN - record.base_len();
                    let (su, ce) = pack(units, cap, &mut pieces, &node.path)?;
                    record.su = su;
                    record.ce = ce;
                }
                let len = record.len();
                if offset % SECTOR_SIZE + len > SECTOR_SIZE {
                    offset = offset.next_multiple_of(SECTOR_SIZE);
                }
                record.offset = offset;
                offset += len;
                records.push(record);
            }
            dirs.push(DirLayout {
                node: dir,
                records,
                sectors: sectors_for(offset as u64) as u32,
                pieces: first_piece..pieces.len(),
                ce_first_sector: 0,
                ce_sectors: 0,
            });
        }

        // Extents. Sums are done in u64 and checked once at the end. Each
        // directory's continuation areas follow it directly, so they come
        // before the extents of the subdirectories they name: streaming
        // readers (libarchive) read the image in order and need a record's
        // CE data before they reach the extent it describes.
        let mut next: u64 = u64::from(FIRST_PATH_TABLE_SECTOR) + 2 * u64::from(path_table_sectors);
        for d in &mut dirs {
            let node = &mut tree.nodes[d.node];
            node.extent = clamp_sector(next);
            node.size = d.sectors.checked_mul(SECTOR_SIZE as u32).ok_or_else(|| {
                IsoError::ImageTooLarge {
                    sectors: u64::from(d.sectors),
                }
            })?;
            next += u64::from(d.sectors);
            d.ce_first_sector = clamp_sector(next);
            d.ce_sectors = place_pieces(&mut pieces[d.pieces.clone()], d.ce_first_sector);
            next += u64::from(d.ce_sectors);
        }

        let mut files = Vec::new();
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            let mut children: Vec<usize> = tree.nodes[dir].children.clone();
            children.sort_by(|&a, &b| tree.nodes[a].name.cmp(tree.nodes[b].name));
            // Depth first in name order: push in reverse so the smallest
            // name is handled first.
            for &child in &children {
                if let Kind::File { size, .. } = tree.nodes[child].kind {
                    if size > 0 {
                        files.push(child);
                    }
                }
            }
            for &child in children.iter().rev() {
                if tree.nodes[child].is_dir() {
                    stack.push(child);
                }
            }
        }
        for &f in &files {
            let node = &mut tree.nodes[f];
            if let Kind::File { size, .. } = node.kind {
                node.extent = clamp_sector(next);
                node.size = size;
                next += sectors_for(u64::from(size));
            }
        }
        let total_sectors =
            u32::try_from(next).map_err(|_| IsoError::ImageTooLarge { sectors: next })?;
        Ok(Layout {
            dirs,
            path_table_len,
            path_table_sectors,
            pieces,
            files,
            total_sectors,
        })
    }

    fn emit<W: Write>(
        self,
        tree: &Tree<'_>,
        opts: &Options,
        date: &Date,
        out: W,
    ) -> Result<W, IsoError> {
        let mut sink = Sink { out, written: 0 };
        let date7 = date.seven();

        sink.zeros(u64::from(SYSTEM_AREA_SECTORS) * SECTOR, "/")?;
        sink.put(&self.pvd(tree, opts, date), "/")?;
        let mut term = [0u8; SECTOR_SIZE];
        term[..7].copy_from_slice(b"\xffCD001\x01");
        sink.put(&term, "/")?;

        let numbers: HashMap<usize, u16> = self
            .dirs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.node, (i + 1) as u16))
            .collect();
        for big_endian in [false, true] {
            sink.check(u64::from(self.path_table_location(big_endian)), "/")?;
            let mut table = Vec::with_capacity(self.path_table_len);
            for d in &self.dirs {
                let node = &tree.nodes[d.node];
                let parent_number = numbers.get(&node.parent).copied().unwrap_or(1);
                table.push(node.iso_id.len() as u8);
                table.push(0);
                if big_endian {
                    table.extend_from_slice(&node.extent.to_be_bytes());
                    table.extend_from_slice(&parent_number.to_be_bytes());
                } else {
                    table.extend_from_slice(&node.extent.to_le_bytes());
                    table.extend_from_slice(&parent_number.to_le_bytes());
                }
                table.extend_from_slice(&node.iso_id);
                if node.iso_id.len() % 2 == 1 {
                    table.push(0);
                }
            }
            sink.put(&table, "/")?;
            sink.pad("/")?;
        }

        for d in &self.dirs {
            let node = &tree.nodes[d.node];
            sink.check(u64::from(node.extent), &node.path)?;
            let mut buf = vec![0u8; d.sectors as usize * SECTOR_SIZE];
            for r in &d.records {
                let bytes = self.record_bytes(tree, r, &date7);
                buf[r.offset..r.offset + bytes.len()].copy_from_slice(&bytes);
            }
            sink.put(&buf, &node.path)?;
            if d.ce_sectors > 0 {
                sink.check(u64::from(d.ce_first_sector), &node.path)?;
                let mut buf = vec![0u8; d.ce_sectors as usize * SECTOR_SIZE];
                for i in d.pieces.clone() {
                    let piece = &self.pieces[i];
                    let at = (piece.sector - d.ce_first_sector) as usize * SECTOR_SIZE
                        + piece.offset as usize;
                    buf[at..at + piece.data.len()].copy_from_slice(&piece.data);
                    if let Some(next) = piece.next {
                        let at = at + piece.data.len();
                        buf[at..at + CE_LEN].copy_from_slice(&self.ce_entry(next));
                    }
                }
                sink.put(&buf, &node.path)?;
            }
        }

        for &f in &self.files {
            let node = &tree.nodes[f];
            sink.check(u64::from(node.extent), &node.path)?;
            if let Kind::File { data, size } = node.kind {
                match data {
                    FileData::Bytes(bytes) => sink.put(bytes, &node.path)?,
                    FileData::Host(host) => {
                        copy_host(&mut sink, &node.path, host, u64::from(size))?
                    }
                }
                sink.pad(&node.path)?;
            }
        }
        sink.check(u64::from(self.total_sectors), "/")?;
        sink.out.flush().map_err(|source| IsoError::Write {
            path: "/".to_string(),
            source,
        })?;
        Ok(sink.out)
    }

    fn path_table_location(&self, big_endian: bool) -> u32 {
        FIRST_PATH_TABLE_SECTOR
            + if big_endian {
                self.path_table_sectors
            } else {
                0
            }
    }

    fn ce_entry(&self, piece: usize) -> [u8; CE_LEN] {
        let p = &self.pieces[piece];
        su_ce(p.sector, p.offset, p.len() as u32)
    }

    fn record_bytes(&self, tree: &Tree<'_>, r: &Record, date7: &[u8; 7]) -> Vec<u8> {
        let node = &tree.nodes[r.target];
        let len = r.len();
        let mut v = Vec::with_capacity(len);
        v.push(len as u8);
        v.push(0);
        v.extend_from_slice(&both_u32(node.extent));
        v.extend_from_slice(&both_u32(node.size));
        v.extend_from_slice(date7);
        v.push(if node.is_dir() { FLAG_DIRECTORY } else { 0 });
        v.push(0);
        v.push(0);
        v.extend_from_slice(&both_u16(1));
        v.push(r.id.len() as u8);
        v.extend_from_slice(&r.id);
        if r.id.len().is_multiple_of(2) {
            v.push(0);
        }
        v.extend_from_slice(&r.su);
        if let Some(ce) = r.ce {
            v.extend_from_slice(&self.ce_entry(ce));
        }
        v.resize(len, 0);
        v
    }

    fn pvd(&self, tree: &Tree<'_>, opts: &Options, date: &Date) -> [u8; SECTOR_SIZE] {
        let mut v = [0u8; SECTOR_SIZE];
        v[0] = 1;
        v[1..6].copy_from_slice(b"CD001");
        v[6] = 1;
        fill_str(&mut v[8..40], b"");
        fill_str(&mut v[40..72], opts.volume_id.as_bytes());
        v[80..88].copy_from_slice(&both_u32(self.total_sectors));
        v[120..124].copy_from_slice(&both_u16(1));
        v[124..128].copy_from_slice(&both_u16(1));
        v[128..132].copy_from_slice(&both_u16(SECTOR_SIZE as u16));
        v[132..140].copy_from_slice(&both_u32(self.path_table_len as u32));
        v[140..144].copy_from_slice(&self.path_table_location(false).to_le_bytes());
        v[148..152].copy_from_slice(&self.path_table_location(true).to_be_bytes());
        let root = Record {
            target: ROOT,
            id: vec![0],
            su: Vec::new(),
            ce: None,
            offset: 0,
        };
        let root_record = self.record_bytes(tree, &root, &date.seven());
        v[156..190].copy_from_slice(&root_record);
        fill_str(&mut v[190..318], b"");
        fill_str(&mut v[318..446], b"");
        fill_str(&mut v[446..574], b"");
        fill_str(&mut v[574..702], APPLICATION_ID);
        fill_str(&mut v[702..739], b"");
        fill_str(&mut v[739..776], b"");
        fill_str(&mut v[776..813], b"");
        let d17 = date.seventeen();
        v[813..830].copy_from_slice(&d17);
        v[830..847].copy_from_slice(&d17);
        v[847..864].copy_from_slice(&DATE_UNSPECIFIED);
        v[864..881].copy_from_slice(&DATE_UNSPECIFIED);
        v[881] = 1;
        v
    }
}

fn fill_str(field: &mut [u8], s: &[u8]) {
    field.fill(b' ');
    field[..s.len()].copy_from_slice(s);
}

struct Sink<W> {
    out: W,
    written: u64,
}

static ZEROS: [u8; SECTOR_SIZE] = [0; SECTOR_SIZE];

impl<W: Write> Sink<W> {
    fn put(&mut self, bytes: &[u8], path: &str) -> Result<(), IsoError> {
        self.out
            .write_all(bytes)
            .map_err(|source| IsoError::Write {
                path: path.to_string(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64, path: &str) -> Result<(), IsoError> {
        while n > 0 {
            let k = n.min(SECTOR);
            self.put(&ZEROS[..k as usize], path)?;
            n -= k;
        }
        Ok(())
    }

    fn pad(&mut self, path: &str) -> Result<(), IsoError> {
        let rem = self.written % SECTOR;
        if rem != 0 {
            self.zeros(SECTOR - rem, path)?;
        }
        Ok(())
    }

    /// Checks that the next byte written is the start of `sector`.
    fn check(&self, sector: u64, path: &str) -> Result<(), IsoError> {
        if self.written != sector * SECTOR {
            return Err(IsoError::Internal {
                path: path.to_string(),
                reason: "planned extent does not match the write position",
            });
        }
        Ok(())
    }
}

fn copy_host<W: Write>(
    sink: &mut Sink<W>,
    path: &str,
    host: &PathBuf,
    size: u64,
) -> Result<(), IsoError> {
    let io_err = |source| IsoError::HostIo {
        path: path.to_string(),
        host: host.clone(),
        source,
    };
    let changed = |found: String| IsoError::HostFileChanged {
        path: path.to_string(),
        host: host.clone(),
        expected: size,
        found,
    };
    let mut file = File::open(host).map_err(io_err)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(changed(format!("{} bytes", size - left))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        sink.put(&buf[..n], path)?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    loop {
        match file.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(changed("more bytes".to_string())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beambake_testkit::tree::{
        self, check_dir_tree, dir, expected, file, host_file, host_tree, link, long_name, pattern,
        reader_tree, run_reader, small_tree, stdlib_ebin, Spec, Want, Wanted, MTIME,
    };
    use beambake_testkit::{skip, tempdir_named, which};
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::Path;
    use std::process::Command;

    // ----- fixtures: the trees are beambake_testkit::tree's ----------------

    /// The writer's entries for a fixture tree.
    fn to_entries(specs: &[Spec]) -> Vec<Entry> {
        let entry = |s: &Spec| Entry {
            path: s.path.clone(),
            mode: s.mode,
            node: match &s.node {
                tree::Node::Dir => Node::Dir,
                tree::Node::Bytes(b) => Node::File(FileData::Bytes(b.clone())),
                tree::Node::Host(p) => Node::File(FileData::Host(p.clone())),
                tree::Node::Symlink(t) => Node::Symlink(t.clone()),
            },
        };
        specs.iter().map(entry).collect()
    }

    /// A temp dir for one test's files.
    fn scratch(tag: &str) -> beambake_testkit::tempfile::TempDir {
        tempdir_named(&format!("iso9660-test-{tag}-"))
    }

    fn opts() -> Options {
        Options {
            volume_id: "BEAMBAKE_TEST".to_string(),
            mtime: MTIME,
            rock_ridge: true,
        }
    }

    fn shuffled(specs: &[Spec], seed: u64) -> Vec<Spec> {
        let mut v = specs.to_vec();
        let mut x = seed | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v
    }

    fn image(specs: &[Spec], opts: &Options) -> Vec<u8> {
        match write(&to_entries(specs), opts, Vec::new()) {
            Ok(v) => v,
            Err(e) => panic!("write failed: {e}"),
        }
    }

    // ----- our own strict reader (structure checks + golden summary) ------

    fn both32(b: &[u8]) -> u32 {
        let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let be = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(le, be, "both-endian u32 halves differ");
        le
    }

    fn both16(b: &[u8]) -> u16 {
        let le = u16::from_le_bytes([b[0], b[1]]);
        let be = u16::from_be_bytes([b[2], b[3]]);
        assert_eq!(le, be, "both-endian u16 halves differ");
        le
    }

    struct Rec {
        at: usize,
        len: usize,
        extent: u32,
        size: u32,
        flags: u8,
        id: Vec<u8>,
        /// System Use entries, continuation areas followed.
        su: Vec<Vec<u8>>,
    }

    fn parse_record(iso: &[u8], at: usize) -> Rec {
        let len = iso[at] as usize;
        assert!(len >= 34, "record at {at} too short");
        assert!(
            at % SECTOR_SIZE + len <= SECTOR_SIZE,
            "record at {at} crosses a sector"
        );
        assert_eq!(len % 2, 0, "odd record length at {at}");
        let r = &iso[at..at + len];
        assert_eq!(r[1], 0);
        assert_eq!(&r[26..28], &[0, 0]);
        assert_eq!(both16(&r[28..32]), 1);
        let id_len = r[32] as usize;
        let id = r[33..33 + id_len].to_vec();
        let su_start = 33 + id_len + usize::from(id_len.is_multiple_of(2));
        if id_len.is_multiple_of(2) {
            assert_eq!(r[33 + id_len], 0, "padding byte");
        }
        Rec {
            at,
            len,
            extent: both32(&r[2..10]),
            size: both32(&r[10..18]),
            flags: r[25],
            id,
            su: read_su(iso, &r[su_start..]),
        }
    }

    fn read_su(iso: &[u8], first: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut area = first.to_vec();
        let mut loops = 0;
        loop {
            let mut i = 0;
            let mut next = None;
            while area.len() - i >= 4 {
                let len = area[i + 2] as usize;
                assert!(
                    len >= 4 && i + len <= area.len(),
                    "bad SUSP entry length {len}"
                );
                let e = area[i..i + len].to_vec();
                assert_eq!(e[3], 1, "SUSP entry version");
                if &e[..2] == b"CE" {
                    assert_eq!(len, CE_LEN);
                    let (blk, off, l) = (both32(&e[4..12]), both32(&e[12..20]), both32(&e[20..28]));
                    assert!(
                        off + l <= SECTOR_SIZE as u32,
                        "continuation area crosses a sector"
                    );
                    assert!(
                        (blk as usize + 1) * SECTOR_SIZE <= iso.len(),
                        "CE beyond the image"
                    );
                    assert!(next.is_none(), "two CE entries in one area");
                    next = Some((blk, off, l));
                }
                out.push(e);
                i += len;
            }
            assert!(
                area[i..].iter().all(|&b| b == 0),
                "garbage after System Use entries"
            );
            match next {
                Some((b, o, l)) => {
                    loops += 1;
                    assert!(loops <= 32, "CE chain longer than Linux follows");
                    let at = b as usize * SECTOR_SIZE + o as usize;
                    area = iso[at..at + l as usize].to_vec();
                }
                None => break,
            }
        }
        out
    }

    #[derive(Default)]
    struct Rr {
        name: Option<Vec<u8>>,
        px: Option<(u32, u32)>,
        link_linux: Option<Vec<u8>>,
        link_netbsd: Option<Vec<u8>>,
        link_libarchive: Option<Vec<u8>>,
        tf: Option<Vec<u8>>,
    }

    fn decode_rr(su: &[Vec<u8>]) -> Rr {
        let mut rr = Rr::default();
        let mut name_done = false;
        let mut link_done = false;
        let mut nb_cont = true; // NetBSD starts "continued": no leading slash
        for e in su {
            match &e[..2] {
                b"NM" => {
                    assert!(!name_done, "NM after a final NM");
                    assert!(e[4] & !NM_CONTINUE == 0, "NM flags");
                    rr.name
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&e[5..]);
                    name_done = e[4] & NM_CONTINUE == 0;
                }
                b"PX" => {
                    assert_eq!(e.len(), 36);
                    assert_eq!(both32(&e[20..28]), 0, "uid");
                    assert_eq!(both32(&e[28..36]), 0, "gid");
                    assert!(rr.px.is_none(), "two PX");
                    rr.px = Some((both32(&e[4..12]), both32(&e[12..20])));
                }
                b"TF" => {
                    assert_eq!(e[4], TF_FLAGS);
                    assert_eq!(e.len(), 26);
                    rr.tf = Some(e[5..].to_vec());
                }
                b"SL" => {
                    assert!(!link_done, "SL after a final SL");
                    let linux = rr.link_linux.get_or_insert_with(Vec::new);
                    let netbsd = rr.link_netbsd.get_or_insert_with(Vec::new);
                    let mut comps = Vec::new();
                    let mut i = 5;
                    while i < e.len() {
                        let (f, l) = (e[i], e[i + 1] as usize);
                        comps.push((f, e[i + 2..i + 2 + l].to_vec()));
                        i += 2 + l;
                    }
                    assert_eq!(i, e.len(), "SL components overrun");
                    // fs/isofs/rock.c get_symlink_chunk()
                    for (k, (f, text)) in comps.iter().enumerate() {
                        let root = f & !1 == SL_ROOT;
                        match f & !1 {
                            0 => linux.extend_from_slice(text),
                            SL_CURRENT => linux.push(b'.'),
                            SL_PARENT => linux.extend_from_slice(b".."),
                            SL_ROOT => linux.push(b'/'),
                            other => panic!("SL component flag {other}"),
                        }
                        let last = k + 1 == comps.len();
                        if !root && f & 1 == 0 && (!last || e[4] & 1 == 1) {
                            linux.push(b'/');
                        }
                    }
                    // libarchive parse_rockridge_SL1(): separator restarts per entry
                    let la = rr.link_libarchive.get_or_insert_with(Vec::new);
                    let mut sep: &[u8] = b"";
                    for (f, text) in &comps {
                        la.extend_from_slice(sep);
                        sep = b"/";
                        match *f {
                            0 => la.extend_from_slice(text),
                            1 => {
                                la.extend_from_slice(text);
                                sep = b"";
                            }
                            SL_CURRENT => la.push(b'.'),
                            SL_PARENT => la.extend_from_slice(b".."),
                            SL_ROOT => {
                                la.push(b'/');
                                sep = b"";
                            }
                            other => panic!("SL component flag {other}"),
                        }
                    }
                    // sys/fs/cd9660/cd9660_rrip.c cd9660_rrip_slink()
                    for (f, text) in &comps {
                        if !nb_cont {
                            netbsd.push(b'/');
                        }
                        nb_cont = false;
                        match f & !1 {
                            0 => {
                                netbsd.extend_from_slice(text);
                                nb_cont = f & 1 == 1;
                            }
                            SL_CURRENT => netbsd.push(b'.'),
                            SL_PARENT => netbsd.extend_from_slice(b".."),
                            SL_ROOT => netbsd.clear(),
                            other => panic!("SL component flag {other}"),
                        }
                    }
                    link_done = e[4] & 1 == 0;
                }
                b"SP" => assert_eq!(e, &[b'S', b'P', 7, 1, 0xBE, 0xEF, 0]),
                b"ER" => assert_eq!(&e[8..8 + e[4] as usize], ER_ID),
                b"CE" => {}
                other => panic!("unexpected SUSP entry {other:?}"),
            }
        }
        if rr.name.is_some() {
            assert!(name_done, "NM never finished");
        }
        if rr.link_linux.is_some() {
            assert!(link_done, "SL never finished");
        }
        rr
    }

    fn iso_sort_key(id: &[u8], is_dir: bool) -> (Vec<u8>, Vec<u8>) {
        if is_dir {
            assert!(
                id.len() <= 31 && id.iter().all(|&b| is_d_char(b)),
                "bad dir id {id:?}"
            );
            return (id.to_vec(), Vec::new());
        }
        let s = std::str::from_utf8(id).expect("ascii id");
        let body = s.strip_suffix(";1").expect("file id ends in ;1");
        let (name, ext) = body.split_once('.').expect("file id has a dot");
        assert!(name.len() + ext.len() <= 30, "file id too long: {s}");
        assert!(!name.is_empty() || !ext.is_empty());
        assert!(
            name.bytes().chain(ext.bytes()).all(is_d_char),
            "bad file id {s}"
        );
        (name.as_bytes().to_vec(), ext.as_bytes().to_vec())
    }

    struct Got {
        want: Want,
        mode: u32,
        nlink: u32,
    }

    struct Walked {
        tree: BTreeMap<String, Got>,
        /// (path, extent, sectors) of every directory, breadth first.
        dirs: Vec<(String, u32, u32)>,
        /// Every record, with its directory path, for the golden summary.
        records: Vec<(String, Rec)>,
        first_file_sector: usize,
    }

    /// Reads an image strictly: every check an ISO 9660 / RRIP reader could
    /// trip over is an assertion.
    fn walk(iso: &[u8], rock_ridge: bool) -> Walked {
        assert_eq!(iso.len() % SECTOR_SIZE, 0);
        assert!(iso[..16 * SECTOR_SIZE].iter().all(|&b| b == 0));
        let pvd = &iso[16 * SECTOR_SIZE..17 * SECTOR_SIZE];
        assert_eq!(&pvd[..8], b"\x01CD001\x01\x00");
        assert_eq!(both32(&pvd[80..88]) as usize * SECTOR_SIZE, iso.len());
        assert_eq!(both16(&pvd[120..124]), 1);
        assert_eq!(both16(&pvd[124..128]), 1);
        assert_eq!(both16(&pvd[128..132]) as usize, SECTOR_SIZE);
        assert_eq!(pvd[881], 1);
        let term = &iso[17 * SECTOR_SIZE..18 * SECTOR_SIZE];
        assert_eq!(&term[..7], b"\xffCD001\x01");
        assert!(term[7..].iter().all(|&b| b == 0));
        let root = parse_record(iso, 16 * SECTOR_SIZE + 156);
        assert_eq!(root.len, 34);
        assert_eq!(root.id, vec![0]);

        let mut out = Walked {
            tree: BTreeMap::new(),
            dirs: Vec::new(),
            records: Vec::new(),
            first_file_sector: iso.len() / SECTOR_SIZE,
        };
        // (path, extent, size, parent extent, own number, parent number, level, id)
        let mut queue = VecDeque::from([(
            "/".to_string(),
            root.extent,
            root.size,
            root.extent,
            1u16,
            1u16,
            Vec::from([0u8]),
        )]);
        let mut path_table: Vec<(Vec<u8>, u32, u16)> = Vec::new();
        let mut number = 1u16;
        let mut file_extents = Vec::new();
        while let Some((path, extent, size, parent_extent, own, parent_no, id)) = queue.pop_front()
        {
            path_table.push((id, extent, parent_no));
            assert_eq!(size as usize % SECTOR_SIZE, 0, "directory size of {path}");
            out.dirs
                .push((path.clone(), extent, size / SECTOR_SIZE as u32));
            let base = extent as usize * SECTOR_SIZE;
            let mut at = base;
            let mut recs = Vec::new();
            while at < base + size as usize {
                if iso[at] == 0 {
                    assert!(iso[at..(at / SECTOR_SIZE + 1) * SECTOR_SIZE]
                        .iter()
                        .all(|&b| b == 0));
                    at = (at / SECTOR_SIZE + 1) * SECTOR_SIZE;
                    continue;
                }
                let r = parse_record(iso, at);
                at += r.len;
                recs.push(r);
            }
            assert!(recs.len() >= 2, "{path}: no . and ..");
            assert_eq!(
                (recs[0].id.as_slice(), recs[0].extent, recs[0].size),
                (&[0u8][..], extent, size),
                "{path}: '.'"
            );
            assert_eq!(
                (recs[1].id.as_slice(), recs[1].extent),
                (&[1u8][..], parent_extent),
                "{path}: '..'"
            );
            assert_eq!(recs[0].flags & FLAG_DIRECTORY, FLAG_DIRECTORY);
            assert_eq!(recs[1].flags & FLAG_DIRECTORY, FLAG_DIRECTORY);
            let mut subdirs = 0;
            let mut prev_key: Option<(Vec<u8>, Vec<u8>)> = None;
            for r in &recs[2..] {
                let is_dir = r.flags & FLAG_DIRECTORY != 0;
                let key = iso_sort_key(&r.id, is_dir);
                if let Some(p) = &prev_key {
                    assert!(
                        *p < key,
                        "{path}: records not sorted or not unique: {p:?} {key:?}"
                    );
                }
                prev_key = Some(key);
                let rr = decode_rr(&r.su);
                // Streaming readers (libarchive) need continuation areas after
                // the directory holding the record and before what it describes.
                for e in r.su.iter().filter(|e| &e[..2] == b"CE") {
                    let block = both32(&e[4..12]);
                    assert!(block > extent, "{path}: CE before its directory");
                    assert!(
                        r.extent == 0 || block < r.extent,
                        "{path}: CE after the extent it describes"
                    );
                }
                let name = if rock_ridge {
                    String::from_utf8(rr.name.clone().expect("NM")).expect("utf-8 name")
                } else {
                    assert!(r.su.is_empty());
                    let s = String::from_utf8(r.id.clone()).expect("ascii");
                    s.trim_end_matches(";1").trim_end_matches('.').to_string()
                };
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                let (mode, nlink) = rr.px.unwrap_or((0, 0));
                let want = if is_dir {
                    subdirs += 1;
                    number += 1;
                    queue.push_back((
                        child.clone(),
                        r.extent,
                        r.size,
                        extent,
                        number,
                        own,
                        r.id.clone(),
                    ));
                    if rock_ridge {
                        assert_eq!(mode & 0o170_000, S_IFDIR);
                    }
                    Want::Dir
                } else if let Some(target) = &rr.link_linux {
                    assert_eq!(mode & 0o170_000, S_IFLNK);
                    assert_eq!((r.extent, r.size), (0, 0));
                    let target = String::from_utf8(target.clone()).expect("utf-8 target");
                    let netbsd = String::from_utf8(rr.link_netbsd.clone().unwrap_or_default())
                        .expect("utf-8");
                    if target != "/" {
                        assert_eq!(netbsd, target, "NetBSD and Linux read {child} differently");
                    }
                    let la = String::from_utf8(rr.link_libarchive.clone().unwrap_or_default())
                        .expect("utf-8");
                    assert_eq!(la, target, "libarchive and Linux read {child} differently");
                    Want::Link(target)
                } else {
                    if rock_ridge {
                        assert_eq!(mode & 0o170_000, S_IFREG);
                    }
                    if r.size == 0 {
                        assert_eq!(r.extent, 0, "{child}: empty file extent");
                        Want::File(Vec::new())
                    } else {
                        let start = r.extent as usize * SECTOR_SIZE;
                        let end = start + r.size as usize;
                        assert!(end <= iso.len(), "{child}: data beyond the image");
                        file_extents.push((r.extent, r.size));
                        Want::File(iso[start..end].to_vec())
                    }
                };
                if rock_ridge {
                    assert!(rr.tf.is_some(), "{child}: no TF");
                }
                out.tree.insert(
                    child,
                    Got {
                        want,
                        mode: mode & 0o7777,
                        nlink,
                    },
                );
            }
            // '.' and '..' carry PX and TF too; '.' of the root also SP + ER.
            if rock_ridge {
                let dot = decode_rr(&recs[0].su);
                let dotdot = decode_rr(&recs[1].su);
                let (mode, nlink) = dot.px.expect("PX on '.'");
                assert_eq!(mode & 0o170_000, S_IFDIR);
                assert_eq!(nlink, 2 + subdirs, "{path}: nlink");
                assert!(dot.tf.is_some() && dotdot.tf.is_some() && dotdot.px.is_some());
                if path == "/" {
                    assert_eq!(&recs[0].su[0][..2], b"SP");
                    assert!(recs[0].su.iter().any(|e| &e[..2] == b"ER"));
                    assert_eq!(dotdot.px, dot.px);
                }
                match out.tree.get_mut(&path) {
                    Some(got) => {
                        assert_eq!(
                            got.mode,
                            mode & 0o7777,
                            "{path}: '.' and parent record disagree"
                        );
                        assert_eq!(got.nlink, nlink);
                    }
                    None => {
                        out.tree.insert(
                            path.clone(),
                            Got {
                                want: Want::Dir,
                                mode: mode & 0o7777,
                                nlink,
                            },
                        );
                    }
                }
            } else if path == "/" {
                out.tree.insert(
                    path.clone(),
                    Got {
                        want: Want::Dir,
                        mode: 0,
                        nlink: 0,
                    },
                );
            }
            for r in recs {
                out.records.push((path.clone(), r));
            }
        }

        // Files do not overlap each other or the metadata.
        file_extents.sort();
        let meta_end = out.dirs.iter().map(|(_, e, s)| e + s).max().unwrap_or(0);
        if let Some(first) = file_extents.first() {
            assert!(first.0 >= meta_end);
            out.first_file_sector = first.0 as usize;
        }
        for w in file_extents.windows(2) {
            assert!(
                u64::from(w[0].0) * SECTOR + u64::from(w[0].1) <= u64::from(w[1].0) * SECTOR,
                "overlapping files"
            );
        }

        // Path tables: breadth first, each level sorted, L and M agree.
        let pt_len = both32(&pvd[132..140]) as usize;
        let l_at =
            u32::from_le_bytes([pvd[140], pvd[141], pvd[142], pvd[143]]) as usize * SECTOR_SIZE;
        let m_at =
            u32::from_be_bytes([pvd[148], pvd[149], pvd[150], pvd[151]]) as usize * SECTOR_SIZE;
        for (at, big) in [(l_at, false), (m_at, true)] {
            let t = &iso[at..at + pt_len];
            let mut i = 0;
            let mut got = Vec::new();
            while i < t.len() {
                let n = t[i] as usize;
                let ext_bytes = [t[i + 2], t[i + 3], t[i + 4], t[i + 5]];
                let par_bytes = [t[i + 6], t[i + 7]];
                let (ext, par) = if big {
                    (u32::from_be_bytes(ext_bytes), u16::from_be_bytes(par_bytes))
                } else {
                    (u32::from_le_bytes(ext_bytes), u16::from_le_bytes(par_bytes))
                };
                got.push((t[i + 8..i + 8 + n].to_vec(), ext, par));
                i += 8 + n + n % 2;
            }
            assert_eq!(i, pt_len);
            assert_eq!(got, path_table, "path table (big endian: {big})");
        }
        out
    }

    fn check_self(iso: &[u8], want: &Wanted) {
        let walked = walk(iso, true);
        let got: BTreeMap<String, (Want, u32)> = walked
            .tree
            .into_iter()
            .map(|(k, g)| (k, (g.want, g.mode)))
            .collect();
        assert_eq!(got.len(), want.len());
        for (path, w) in want {
            assert_eq!(got.get(path), Some(w), "{path}");
        }
    }

    // ----- golden summary ---------------------------------------------------

    fn hexdump(out: &mut String, bytes: &[u8], base: usize) {
        let mut prev: Option<&[u8]> = None;
        let mut starred = false;
        for (i, line) in bytes.chunks(16).enumerate() {
            if prev == Some(line) {
                if !starred {
                    out.push_str("*\n");
                    starred = true;
                }
                continue;
            }
            starred = false;
            prev = Some(line);
            let _ = write!(out, "{:08x} ", base + i * 16);
            for b in line {
                let _ = write!(out, " {b:02x}");
            }
            out.push_str("  |");
            out.extend(line.iter().map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            }));
            out.push_str("|\n");
        }
        let _ = writeln!(out, "{:08x}", base + bytes.len());
    }

    fn summary(iso: &[u8]) -> String {
        let walked = walk(iso, true);
        let mut s = String::new();
        let _ = writeln!(s, "image: {} sectors", iso.len() / SECTOR_SIZE);
        s.push_str("== sectors 0..18 (system area, PVD, terminator) ==\n");
        hexdump(&mut s, &iso[..18 * SECTOR_SIZE], 0);
        s.push_str("== metadata sectors (path tables, directories, continuation areas) ==\n");
        hexdump(
            &mut s,
            &iso[18 * SECTOR_SIZE..walked.first_file_sector * SECTOR_SIZE],
            18 * SECTOR_SIZE,
        );
        s.push_str("== directory records ==\n");
        for (dir, extent, sectors) in &walked.dirs {
            let _ = writeln!(s, "dir {dir} extent {extent} sectors {sectors}");
            for (_, r) in walked.records.iter().filter(|(d, _)| d == dir) {
                let _ = writeln!(
                    s,
                    "  @{:#x} len {} extent {} size {} flags {:#04x} id {:?}",
                    r.at,
                    r.len,
                    r.extent,
                    r.size,
                    r.flags,
                    String::from_utf8_lossy(&r.id)
                );
                for e in &r.su {
                    let desc = match &e[..2] {
                        b"PX" => {
                            format!("mode {:o} nlink {}", both32(&e[4..12]), both32(&e[12..20]))
                        }
                        b"NM" => format!("flags {} {:?}", e[4], String::from_utf8_lossy(&e[5..])),
                        b"SL" => format!("flags {} {:?}", e[4], &e[5..]),
                        b"TF" => format!("flags {:#04x} {:?}", e[4], &e[5..12]),
                        b"CE" => format!(
                            "block {} offset {} len {}",
                            both32(&e[4..12]),
                            both32(&e[12..20]),
                            both32(&e[20..28])
                        ),
                        b"ER" => format!("{:?}", String::from_utf8_lossy(&e[8..8 + e[4] as usize])),
                        _ => format!("{:?}", &e[4..]),
                    };
                    let _ = writeln!(
                        s,
                        "    {} len {} {desc}",
                        String::from_utf8_lossy(&e[..2]),
                        e.len()
                    );
                }
            }
        }
        s
    }

    // ----- external readers -------------------------------------------------

    fn require_xorriso() {
        assert!(
            which("xorriso").is_some(),
            "xorriso is the reference reader for these tests: apt-get install -y xorriso"
        );
    }

    fn perm_bits(s: &str) -> u32 {
        let c: Vec<char> = s.chars().collect();
        assert_eq!(c.len(), 10, "mode string {s}");
        let mut m = 0;
        for (i, bit) in [
            (1, 0o400),
            (2, 0o200),
            (4, 0o040),
            (5, 0o020),
            (7, 0o004),
            (8, 0o002),
        ] {
            if c[i] != '-' {
                m |= bit;
            }
        }
        for (i, x, special) in [(3, 0o100, 0o4000), (6, 0o010, 0o2000), (9, 0o001, 0o1000)] {
            match c[i] {
                'x' => m |= x,
                's' | 't' => m |= x | special,
                'S' | 'T' => m |= special,
                _ => {}
            }
        }
        m
    }

    /// Undoes xorriso's shell-style quoting ('...' and "..." pieces).
    fn unquote(s: &str) -> (String, &str) {
        let mut out = String::new();
        let mut rest = s;
        loop {
            let q = match rest.chars().next() {
                Some(q @ ('\'' | '"')) => q,
                _ => return (out, rest),
            };
            let end = rest[1..].find(q).expect("closing quote") + 1;
            out.push_str(&rest[1..end]);
            rest = &rest[end + 1..];
        }
    }

    /// `xorriso -find / -exec lsdl`: path -> (type, permissions, size, target).
    fn xorriso_list(iso: &Path) -> BTreeMap<String, (char, u32, u64, Option<String>)> {
        let out = run_reader(
            Command::new("xorriso")
                .arg("-indev")
                .arg(iso)
                .args(["-find", "/", "-exec", "lsdl"]),
        );
        let mut m = BTreeMap::new();
        for line in out.lines() {
            let mut rest = line;
            let mut fields = Vec::new();
            for _ in 0..8 {
                rest = rest.trim_start();
                let end = rest.find(' ').expect("lsdl field");
                fields.push(&rest[..end]);
                rest = &rest[end..];
            }
            let (name, rest) = unquote(rest.trim_start());
            let target = rest.strip_prefix(" -> ").map(|r| unquote(r).0);
            let kind = fields[0].chars().next().expect("type");
            let size = fields[4].parse().expect("size");
            m.insert(name, (kind, perm_bits(fields[0]), size, target));
        }
        m
    }

    fn check_xorriso_list(iso: &Path, want: &Wanted) {
        let got = xorriso_list(iso);
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "xorriso: missing {missing:?} extra {extra:?}"
        );
        for (path, (w, mode)) in want {
            let (kind, perm, size, target) = &got[path];
            match w {
                Want::Dir => assert_eq!(*kind, 'd', "{path}"),
                Want::File(data) => {
                    assert_eq!(*kind, '-', "{path}");
                    assert_eq!(*size, data.len() as u64, "{path}");
                }
                Want::Link(t) => {
                    assert_eq!(*kind, 'l', "{path}");
                    assert_eq!(target.as_deref(), Some(t.as_str()), "{path}");
                }
            }
            if !matches!(w, Want::Link(_)) {
                assert_eq!(perm, mode, "{path}: mode");
            }
        }
    }

    fn check_with_readers(iso_bytes: &[u8], want: &Wanted, tag: &str) {
        require_xorriso();
        let tmp = scratch(tag);
        let iso = tmp.path().join("image.iso");
        std::fs::write(&iso, iso_bytes).expect("write iso");

        check_xorriso_list(&iso, want);

        let x = tmp.path().join("osirrox");
        run_reader(
            Command::new("osirrox")
                .arg("-indev")
                .arg(&iso)
                .args(["-extract", "/"])
                .arg(&x),
        );
        check_dir_tree(&x, want, "osirrox");

        if which("bsdtar").is_some() {
            let b = tmp.path().join("bsdtar");
            std::fs::create_dir(&b).expect("mkdir");
            run_reader(
                Command::new("bsdtar")
                    .arg("-xpf")
                    .arg(&iso)
                    .arg("-C")
                    .arg(&b),
            );
            check_dir_tree(&b, want, "bsdtar (libarchive)");
        } else {
            skip::record(&format!(
                "{tag}: bsdtar not installed (apt-get install libarchive-tools): no libarchive check"
            ));
        }

        let longest_target = want
            .values()
            .filter_map(|(w, _)| {
                if let Want::Link(t) = w {
                    Some(t.len())
                } else {
                    None
                }
            })
            .max()
            .unwrap_or(0);
        if longest_target > 255 {
            // cdrkit's isovfy has fixed buffers: it segfaults on such
            // symlinks in xorriso's own images too.
            eprintln!("{tag}: symlink targets over 255 bytes, skipping isovfy");
        } else {
            check_isovfy(&iso, tag);
        }
        // Linux's own driver: tests/iso9660_kernel.rs (a loop mount or a qemu guest).
    }

    /// cdrkit's isovfy checks directory records and path tables.
    fn check_isovfy(iso: &Path, tag: &str) {
        if which("isovfy").is_none() {
            skip::record(&format!(
                "{tag}: isovfy not installed (apt-get install genisoimage): no structure check"
            ));
            return;
        }
        let out = beambake_testkit::output(Command::new("isovfy").arg(iso));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No errors found"),
            "isovfy: {text}"
        );
    }

    // ----- tests ------------------------------------------------------------

    #[test]
    fn golden_small_tree() {
        let entries = small_tree();
        let iso = image(&entries, &opts());
        check_self(&iso, &expected(&entries));
        beambake_testkit::golden::check("iso-small_tree.txt", &summary(&iso));
    }

    #[test]
    fn deterministic_for_any_input_order() {
        let entries = small_tree();
        let first = image(&entries, &opts());
        for seed in 1..8 {
            assert!(
                image(&shuffled(&entries, seed), &opts()) == first,
                "seed {seed}"
            );
        }
        let mut reversed = entries.clone();
        reversed.reverse();
        assert!(image(&reversed, &opts()) == first);
        // The options do matter.
        let mut other = opts();
        other.mtime += 1;
        assert!(image(&entries, &other) != first);
    }

    #[test]
    fn small_tree_real_readers() {
        let entries = small_tree();
        check_with_readers(&image(&entries, &opts()), &expected(&entries), "small");
    }

    #[test]
    fn large_tree_real_readers() {
        let tmp = scratch("host");
        let host = tmp.path().join("host.txt");
        std::fs::write(&host, pattern(5000, 7)).expect("write host file");
        let entries = reader_tree(&host, MAX_SYMLINK_LEN);
        let want = expected(&entries);
        let iso = image(&entries, &opts());
        assert!(
            image(&shuffled(&entries, 42), &opts()) == iso,
            "not deterministic"
        );
        check_self(&iso, &want);
        check_with_readers(&iso, &want, "large");
        // Without the long symlink targets (and within Linux's names, as before), for
        // isovfy; Linux's driver reads this tree in tests/iso9660_kernel.rs.
        let tmp = scratch("large-linux");
        let short: Vec<Spec> = entries
            .into_iter()
            .filter(|e| e.path.split('/').all(|c| c.len() <= 253))
            .filter(|e| !matches!(&e.node, tree::Node::Symlink(t) if t.len() > 255))
            .collect();
        let path = tmp.path().join("short.iso");
        std::fs::write(&path, image(&short, &opts())).expect("write");
        check_isovfy(&path, "large-short");
    }

    #[test]
    fn stdlib_ebin_real_readers() {
        let Some((app, ebin)) = stdlib_ebin() else {
            skip!("no /usr/lib/erlang/lib/stdlib-*/ebin here");
        };
        let mut entries = Vec::new();
        let mut total = 0u64;
        for e in std::fs::read_dir(&ebin).expect("read ebin") {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8");
            total += e.metadata().expect("meta").len();
            entries.push(host_file(
                &format!("/lib/{app}/ebin/{name}"),
                &e.path(),
                0o644,
            ));
        }
        let iso = image(&entries, &opts());
        eprintln!(
            "{app}/ebin: {} files, {total} bytes of data, image {} bytes, overhead {} bytes ({:.1}%)",
            entries.len(),
            iso.len(),
            iso.len() as u64 - total,
            (iso.len() as f64 / total as f64 - 1.0) * 100.0
        );
        let want = expected(&entries);
        check_self(&iso, &want);
        check_with_readers(&iso, &want, "stdlib");
    }

    #[test]
    fn whole_erlang_install_real_readers() {
        let root = Path::new("/usr/lib/erlang");
        if !root.join("lib").is_dir() {
            skip!("no /usr/lib/erlang here");
        }
        let mut entries = Vec::new();
        let total = host_tree(root, "/erlang", &mut entries);
        let beams = entries.iter().filter(|e| e.path.ends_with(".beam")).count();
        let iso = image(&entries, &opts());
        eprintln!(
            "/usr/lib/erlang: {} entries ({beams} .beam), {total} bytes of data, image {} bytes, overhead {} bytes ({:.1}%)",
            entries.len(),
            iso.len(),
            iso.len() as u64 - total,
            (iso.len() as f64 / total as f64 - 1.0) * 100.0
        );
        let want = expected(&entries);
        check_self(&iso, &want);
        check_with_readers(&iso, &want, "erlang");
    }

    #[test]
    fn without_rock_ridge() {
        let entries: Vec<Spec> = small_tree()
            .into_iter()
            .filter(|e| !matches!(e.node, tree::Node::Symlink(_)))
            .collect();
        let mut o = opts();
        o.rock_ridge = false;
        let iso = image(&entries, &o);
        let walked = walk(&iso, false);
        // Names are the ISO 9660 identifiers; contents are intact.
        // "Lists.beam" sorts before "lists.beam" and keeps the plain name.
        let got = &walked.tree["/LIB/STDLIB_6_0/EBIN/LISTS.BEAM"];
        assert!(got.want == Want::File(b"upper".to_vec()));
        let got = &walked.tree["/LIB/STDLIB_6_0/EBIN/LISTS_1.BEAM"];
        assert!(got.want == Want::File(pattern(3000, 2)));
        require_xorriso();
        let tmp = scratch("norr");
        let path = tmp.path().join("norr.iso");
        std::fs::write(&path, &iso).expect("write");
        let listed = xorriso_list(&path);
        assert_eq!(listed.len(), walked.tree.len(), "{listed:?}");
        assert_eq!(listed["/LIB/STDLIB_6_0/EBIN/LISTS_1.BEAM"].2, 3000);
        assert!(matches!(
            write(&to_entries(&small_tree()), &o, Vec::new()),
            Err(IsoError::SymlinkWithoutRockRidge { path }) if path == "/bin/erl"
        ));
    }

    #[test]
    fn name_of_256_bytes_is_rejected() {
        let name = "a".repeat(256);
        let path = format!("/lib/{name}");
        let err = write(
            &to_entries(&[file(&path, b"x", 0o644)]),
            &opts(),
            Vec::new(),
        )
        .expect_err("must fail");
        assert!(
            matches!(&err, IsoError::NameTooLong { path: p, len: 256 } if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains(&path));
        // A 256-byte directory name too.
        let err = write(
            &to_entries(&[file(&format!("/{name}/x"), b"x", 0o644)]),
            &opts(),
            Vec::new(),
        )
        .expect_err("must fail");
        assert!(matches!(err, IsoError::NameTooLong { len: 256, .. }));
        // 255 is fine.
        write(
            &to_entries(&[file(&format!("/{}", "a".repeat(255)), b"x", 0o644)]),
            &opts(),
            Vec::new(),
        )
        .expect("255 bytes");
    }

    #[test]
    fn file_over_4_gib_is_rejected() {
        let tmp = scratch("big");
        let host = tmp.path().join("sparse");
        let f = File::create(&host).expect("create");
        f.set_len(MAX_FILE_SIZE + 1).expect("sparse file");
        let entries = to_entries(&[host_file("/big/huge.bin", &host, 0o644)]);
        let err = write(&entries, &opts(), Vec::new()).expect_err("must fail");
        assert!(
            matches!(&err, IsoError::FileTooLarge { path, size } if path == "/big/huge.bin" && *size == MAX_FILE_SIZE + 1),
            "{err}"
        );
        assert!(err.to_string().contains("/big/huge.bin"));
    }

    /// Keeps the first `keep` bytes and counts the rest.
    #[derive(Debug)]
    struct Head {
        keep: usize,
        head: Vec<u8>,
        total: u64,
    }

    impl Write for Head {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let take = buf.len().min(self.keep - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
            self.total += buf.len() as u64;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn file_of_4_gib_minus_1_fits() {
        let tmp = scratch("max");
        let host = tmp.path().join("sparse");
        File::create(&host)
            .expect("create")
            .set_len(MAX_FILE_SIZE)
            .expect("sparse file");
        let entries = to_entries(&[host_file("/max.bin", &host, 0o644)]);
        let head = write(
            &entries,
            &opts(),
            Head {
                keep: 64 * SECTOR_SIZE,
                head: Vec::new(),
                total: 0,
            },
        )
        .expect("write");
        let sectors = both32(&head.head[16 * SECTOR_SIZE + 80..16 * SECTOR_SIZE + 88]);
        assert_eq!(u64::from(sectors) * SECTOR, head.total);
        // Find the record of max.bin in the root directory.
        let root = parse_record(&head.head, 16 * SECTOR_SIZE + 156);
        let dot = parse_record(&head.head, root.extent as usize * SECTOR_SIZE);
        let dotdot = parse_record(&head.head, dot.at + dot.len);
        let rec = parse_record(&head.head, dotdot.at + dotdot.len);
        assert_eq!(rec.id, b"MAX.BIN;1");
        assert_eq!(rec.size, u32::MAX);
        assert_eq!(
            u64::from(rec.extent) * SECTOR + SECTOR * sectors_for(MAX_FILE_SIZE),
            head.total
        );
    }

    #[test]
    fn host_file_that_changes_size_is_an_error() {
        let tmp = scratch("shrink");
        let host = tmp.path().join("f");
        std::fs::write(&host, b"12345").expect("write");
        let entries = to_entries(&[host_file("/f", &host, 0o644)]);
        #[derive(Debug)]
        struct Truncating(PathBuf, bool);
        impl Write for Truncating {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if !self.1 {
                    std::fs::write(&self.0, b"12")?;
                    self.1 = true;
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = write(&entries, &opts(), Truncating(host.clone(), false)).expect_err("must fail");
        assert!(
            matches!(&err, IsoError::HostFileChanged { path, .. } if path == "/f"),
            "{err}"
        );
        let missing = to_entries(&[host_file("/g", &tmp.path().join("missing"), 0o644)]);
        let err = write(&missing, &opts(), Vec::new()).expect_err("must fail");
        assert!(
            matches!(&err, IsoError::HostIo { path, .. } if path == "/g"),
            "{err}"
        );
    }

    #[test]
    fn bad_volume_ids_are_rejected() {
        for (id, ok) in [
            ("", true),
            ("ERLANG", true),
            ("A_B_0123456789", true),
            (&*"A".repeat(32), true),
            (&*"A".repeat(33), false),
            ("erlang", false),
            ("APP-1", false),
            ("APP 1", false),
            ("ÄPP", false),
        ] {
            let o = Options {
                volume_id: id.to_string(),
                ..opts()
            };
            let r = write(&[], &o, Vec::new());
            if ok {
                let iso = r.expect("valid volume id");
                let field = &iso[16 * SECTOR_SIZE + 40..16 * SECTOR_SIZE + 72];
                assert_eq!(&field[..id.len()], id.as_bytes());
                assert!(field[id.len()..].iter().all(|&b| b == b' '));
            } else {
                assert!(
                    matches!(&r, Err(IsoError::InvalidVolumeId { volume_id, .. }) if volume_id == id),
                    "{id}"
                );
            }
        }
    }

    #[test]
    fn bad_paths_and_trees_are_rejected() {
        let cases: Vec<(Vec<Spec>, &str)> = vec![
            (vec![file("relative", b"", 0o644)], "relative"),
            (vec![file("/a//b", b"", 0o644)], "/a//b"),
            (vec![file("/a/", b"", 0o644)], "/a/"),
            (vec![file("/a/../b", b"", 0o644)], "/a/../b"),
            (vec![file("/./b", b"", 0o644)], "/./b"),
            (vec![file("/nul\0", b"", 0o644)], "/nul\0"),
            (vec![file("/", b"", 0o644)], "/"),
            (vec![file("/d", b"", 0o644), dir("/d", 0o755)], "/d"),
            (vec![dir("/", 0o755), dir("/", 0o700)], "/"),
            (
                vec![file("/f", b"", 0o644), file("/f/x", b"", 0o644)],
                "/f/x",
            ),
            (vec![link("/l", "")], "/l"),
            (vec![link("/l", &"x/".repeat(2048))], "/l"),
        ];
        for (specs, path) in cases {
            let err = write(&to_entries(&specs), &opts(), Vec::new()).expect_err(path);
            assert!(
                err.to_string().contains(&format!("{path:?}")),
                "{path:?}: {err}"
            );
        }
        let err = write(
            &[],
            &Options {
                mtime: 6_000_000_000,
                ..opts()
            },
            Vec::new(),
        )
        .expect_err("year 2160");
        assert!(matches!(err, IsoError::InvalidMtime { .. }));
    }

    #[test]
    fn iso_names_are_valid_unique_and_sorted() {
        // 300 names that collide after mapping and truncation.
        let mut entries = Vec::new();
        for i in 0..300 {
            entries.push(file(&format!("/c/{}-{i}.beam", "x".repeat(40)), b"", 0o644));
            entries.push(file(&format!("/c/{}_{i}.BEAM", "X".repeat(40)), b"", 0o644));
            entries.push(dir(&format!("/c/{}.{i}", "x".repeat(40)), 0o755));
        }
        let iso = image(&entries, &opts());
        check_self(&iso, &expected(&entries)); // walk() checks validity, order, uniqueness
        assert_eq!(
            iso_base_name(b"lists.beam", false),
            (b"LISTS".to_vec(), b"BEAM".to_vec())
        );
        assert_eq!(
            iso_base_name(b".hidden", false),
            (b"_HIDDEN".to_vec(), Vec::new())
        );
        assert_eq!(
            iso_base_name(b"stdlib-6.0", true),
            (b"STDLIB_6_0".to_vec(), Vec::new())
        );
    }

    /// The public limits (255-byte names, 1023-byte targets) always fit one
    /// continuation piece; chains of pieces across sectors are checked here.
    #[test]
    fn continuation_chains_across_sectors() {
        let target = (0..40)
            .map(|i| {
                format!(
                    "{}{}",
                    if i % 5 == 0 { "../" } else { "" },
                    long_name(120, &format!("c{i}"), "")
                )
            })
            .collect::<Vec<_>>()
            .join("/");
        let target = format!("/./{target}");
        let name = long_name(255, "n", ".beam");
        let units = vec![
            Unit::Fixed(su_px(S_IFLNK | 0o777, 1)),
            Unit::Fixed(su_tf(&[120, 1, 1, 0, 0, 0, 0])),
            Unit::Name(name.as_bytes().to_vec()),
            Unit::Link(sl_components(&target)),
        ];
        let mut pieces = Vec::new();
        let (inline, first) = pack(units, 150, &mut pieces, "/t").expect("pack");
        assert!(inline.len() <= 150 - CE_LEN);
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        let sectors = place_pieces(&mut pieces, 1);
        let mut iso = vec![0u8; (1 + sectors as usize) * SECTOR_SIZE];
        let ce = |i: usize, pieces: &[Piece]| {
            su_ce(pieces[i].sector, pieces[i].offset, pieces[i].len() as u32)
        };
        for p in &pieces {
            let at = p.sector as usize * SECTOR_SIZE + p.offset as usize;
            iso[at..at + p.data.len()].copy_from_slice(&p.data);
            if let Some(next) = p.next {
                let at = at + p.data.len();
                iso[at..at + CE_LEN].copy_from_slice(&ce(next, &pieces));
            }
        }
        let mut area = inline;
        area.extend_from_slice(&ce(first.expect("continued"), &pieces));
        let rr = decode_rr(&read_su(&iso, &area));
        assert_eq!(rr.name.as_deref(), Some(name.as_bytes()));
        for (reader, got) in [
            ("linux", rr.link_linux),
            ("netbsd", rr.link_netbsd),
            ("libarchive", rr.link_libarchive),
        ] {
            assert_eq!(
                String::from_utf8(got.expect("SL")).expect("utf-8"),
                target,
                "{reader}"
            );
        }
    }

    #[test]
    fn dates() {
        let d = Date::from_unix(MTIME).expect("date");
        assert_eq!(d.seven(), [120, 9, 13, 12, 26, 40, 0]);
        assert_eq!(&d.seventeen(), b"2020091312264000\0");
        let d = Date::from_unix(0).expect("epoch");
        assert_eq!(&d.seventeen(), b"1970010100000000\0");
        // Last second the 7-byte form can hold, and a leap day.
        let d = Date::from_unix(5_869_583_999).expect("2155-12-31T23:59:59");
        assert_eq!(d.seven(), [255, 12, 31, 23, 59, 59, 0]);
        assert_eq!(
            &Date::from_unix(951_782_400).expect("leap").seventeen()[..8],
            b"20000229"
        );
        assert!(Date::from_unix(5_869_584_000).is_err());
    }
}
