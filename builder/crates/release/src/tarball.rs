//! Safe extraction of Erlang/OTP release archives (`rebar3 tar`, `mix release`).
//!
//! This module owns one thing: turning an untrusted release tarball (gzip-compressed
//! or plain tar) into a directory tree under a caller-chosen, empty destination,
//! following a strict policy:
//!
//! - entry paths must be relative and normalized (a leading `./` is fine); absolute
//!   paths, `..` components, empty names and NUL bytes are rejected, and nothing is
//!   ever written through a symlink (every parent component must be a real directory
//!   created by this extraction);
//! - only regular files, directories, symlinks and hard links are materialized (PAX
//!   and GNU long-name headers are decoded by the `tar` crate; PAX global headers are
//!   ignored); devices, FIFOs, GNU sparse files and unknown types are rejected;
//! - symlink targets must be relative and stay inside the root, both lexically from
//!   the link's directory and when resolved through the other symlinks of the archive
//!   (checked again once all entries are in place, so the order of entries does not
//!   matter);
//! - hard links must name a regular file extracted earlier;
//! - file modes keep only `mode & 0o755`, directories get `0o755`; uid/gid/mtime are
//!   ignored;
//! - a truncated or corrupt gzip or tar stream (including a missing end-of-archive
//!   marker and a bad gzip trailer) is an error, and the amount of data is bounded
//!   (`max_bytes`, [`MAX_ENTRIES`], and a cap on extension headers).
//!
//! It must not know anything about release semantics (which directories a release
//! has, what `erts-*` is, boot scripts, ...): that belongs to the caller. It never
//! writes outside `dest`; on error it leaves partial content in `dest` for the caller
//! to delete. The `tar` crate is used only as a parser: `Archive::unpack` and
//! `Entry::unpack_in` are deliberately not used because they are not safe extractors.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;
use tar::{Archive, Entry, EntryType, Header};

/// Maximum number of archive entries (after extension headers are folded in).
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Bytes of header and extension-header data (GNU long names, PAX records) allowed
/// before each entry, beyond the previous entry's data.
const METADATA_BUDGET: u64 = 1 << 20;
/// Bytes allowed after the end-of-archive marker (record padding).
const TRAILER_BUDGET: u64 = 16 << 20;
/// Symlink expansions allowed while resolving one link (same as Linux's limit).
const MAX_SYMLINK_HOPS: u32 = 40;
const BLOCK: u64 = 512;
const FILE_MODE_MASK: u32 = 0o755;
const DIR_MODE: u32 = 0o755;

/// Identifies an archive entry in error messages: its 0-based index among the entries
/// of the archive (extension headers not counted) and its path as written in the
/// archive, lossily decoded (control characters escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef {
    pub index: u64,
    pub path: String,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {} '{}'", self.index, self.path)
    }
}

fn at(entry: &Option<EntryRef>) -> String {
    match entry {
        Some(e) => format!("{e}: "),
        None => String::new(),
    }
}

/// Everything that can go wrong while extracting. Every variant names the tarball;
/// entry problems also name the entry (see [`EntryRef`]).
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    /// The tarball itself could not be opened or read.
    #[error("{}: {op}: {source}", .tarball.display())]
    Io {
        tarball: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file is neither a gzip-compressed nor a plain tar archive.
    #[error("{}: not a tar archive (plain or gzip-compressed): {reason}", .tarball.display())]
    NotATarball { tarball: PathBuf, reason: String },
    /// The gzip or tar stream is truncated or malformed.
    #[error("{}: {}corrupt or truncated archive: {detail}", .tarball.display(), at(.entry))]
    Corrupt {
        tarball: PathBuf,
        entry: Option<EntryRef>,
        detail: String,
    },
    /// The destination does not exist, is not a directory, or is not empty.
    #[error("{}: destination '{}' {reason}", .tarball.display(), .dest.display())]
    Destination {
        tarball: PathBuf,
        dest: PathBuf,
        reason: String,
    },
    /// Writing below the destination failed.
    #[error("{}: {entry}: cannot write '{}': {source}", .tarball.display(), .target.display())]
    Write {
        tarball: PathBuf,
        entry: EntryRef,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The entry's path is absolute, has `..`, is empty, has a NUL byte, or would be
    /// written through a symlink or a non-directory.
    #[error("{}: {entry}: {reason}", .tarball.display())]
    UnsafePath {
        tarball: PathBuf,
        entry: EntryRef,
        reason: String,
    },
    /// Devices, FIFOs, sparse files and unknown entry types.
    #[error("{}: {entry}: unsupported entry type: {kind}", .tarball.display())]
    UnsupportedType {
        tarball: PathBuf,
        entry: EntryRef,
        kind: String,
    },
    /// A symlink whose target is absolute, empty, or leaves the root.
    #[error("{}: {entry}: symlink target '{target}' {reason}", .tarball.display())]
    UnsafeSymlink {
        tarball: PathBuf,
        entry: EntryRef,
        target: String,
        reason: String,
    },
    /// A hard link whose target is not a regular file extracted earlier.
    #[error("{}: {entry}: hard link target '{target}' {reason}", .tarball.display())]
    BadHardLink {
        tarball: PathBuf,
        entry: EntryRef,
        target: String,
        reason: String,
    },
    /// A duplicate entry that would replace something it may not replace.
    #[error("{}: {entry}: {reason}", .tarball.display())]
    Conflict {
        tarball: PathBuf,
        entry: EntryRef,
        reason: String,
    },
    /// The byte limit, the entry limit or an internal size cap was exceeded.
    #[error("{}: {}limit exceeded: {what}", .tarball.display(), at(.entry))]
    LimitExceeded {
        tarball: PathBuf,
        entry: Option<EntryRef>,
        what: String,
    },
}

/// What [`extract`] created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Regular files written (a file replaced by a later duplicate counts twice).
    pub files: u64,
    /// Directories created, explicit or implied by an entry's path.
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
}

/// Returns true if `path` starts like a gzip stream (`1f 8b`) or a ustar/GNU tar
/// archive (`ustar` at offset 257). Says nothing about whether the archive is valid.
pub fn looks_like_tarball(path: &Path) -> io::Result<bool> {
    let mut head = Vec::with_capacity(262);
    File::open(path)?.take(262).read_to_end(&mut head)?;
    Ok(head.starts_with(&[0x1f, 0x8b]) || head.get(257..262) == Some(&b"ustar"[..]))
}

/// Extracts a (gzip-compressed, detected by magic 1f 8b; plain tar accepted too)
/// release tarball into `dest`, which must exist and be empty.
///
/// See the module documentation for the policy. `max_bytes` bounds the file data
/// written, plus the size of each hard link's target, plus any data carried by
/// non-file entries (skipped, but still decompressed). At most [`MAX_ENTRIES`]
/// entries are accepted. On error, `dest` may hold partial content; nothing is ever
/// written outside it.
pub fn extract(tarball: &Path, dest: &Path, max_bytes: u64) -> Result<ExtractStats, TarballError> {
    extract_with_limits(tarball, dest, max_bytes, MAX_ENTRIES)
}

fn extract_with_limits(
    tarball: &Path,
    dest: &Path,
    max_bytes: u64,
    max_entries: u64,
) -> Result<ExtractStats, TarballError> {
    check_dest(tarball, dest)?;
    let state = Rc::new(StreamState::default());
    let stream = open_stream(tarball, &state)?;
    let mut ex = Extractor {
        tarball,
        dest,
        max_bytes,
        charged: 0,
        stats: ExtractStats::default(),
        nodes: HashMap::new(),
        symlinks: Vec::new(),
        state: Rc::clone(&state),
    };

    let mut archive = Archive::new(GuardReader {
        inner: stream,
        state: Rc::clone(&state),
    });
    {
        let entries = archive
            .entries()
            .map_err(|e| ex.stream_error(e, None, "reading the first header: "))?;
        let mut previous: Option<String> = None;
        for (index, item) in (0_u64..).zip(entries) {
            let mut entry = item.map_err(|e| {
                let after = previous
                    .as_ref()
                    .map(|p| format!(" (after '{p}')"))
                    .unwrap_or_default();
                ex.stream_error(
                    e,
                    None,
                    &format!("reading the header of entry {index}{after}: "),
                )
            })?;
            let eref = EntryRef {
                index,
                path: display_bytes(&entry.path_bytes()),
            };
            if index >= max_entries {
                return Err(TarballError::LimitExceeded {
                    tarball: tarball.to_path_buf(),
                    entry: Some(eref),
                    what: format!("more than {max_entries} entries"),
                });
            }
            // This entry's data (padded) plus the headers of the next entry.
            state.budget.set(
                entry
                    .size()
                    .saturating_add(BLOCK - 1)
                    .saturating_add(METADATA_BUDGET)
                    & !(BLOCK - 1),
            );
            ex.handle(&mut entry, &eref)?;
            previous = Some(eref.path);
        }
    }
    if state.hit_eof.get() {
        return Err(TarballError::Corrupt {
            tarball: tarball.to_path_buf(),
            entry: None,
            detail: "the archive ends without an end-of-archive marker".into(),
        });
    }
    // Read to the end: this makes the gzip decoder check its trailer (CRC, length).
    state.budget.set(TRAILER_BUDGET);
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| ex.stream_error(e, None, "after the end-of-archive marker: "))?;
    ex.verify_symlinks()?;
    Ok(ex.stats)
}

fn check_dest(tarball: &Path, dest: &Path) -> Result<(), TarballError> {
    let err = |reason: String| TarballError::Destination {
        tarball: tarball.to_path_buf(),
        dest: dest.to_path_buf(),
        reason,
    };
    let mut listing =
        fs::read_dir(dest).map_err(|e| err(format!("cannot be listed as a directory: {e}")))?;
    match listing.next() {
        None => Ok(()),
        Some(Ok(_)) => Err(err("is not empty".into())),
        Some(Err(e)) => Err(err(format!("cannot be listed: {e}"))),
    }
}

/// Shared between the reader wrappers and the extractor.
#[derive(Default)]
struct StreamState {
    /// Reading the tarball file itself failed (as opposed to decoding it).
    source_failed: Cell<bool>,
    /// The decompressed stream reached its end while the tar parser was reading.
    hit_eof: Cell<bool>,
    /// Bytes the tar parser may still read before the next budget reset.
    budget: Cell<u64>,
    budget_exhausted: Cell<bool>,
}

/// Wraps the tarball file; remembers whether a read failed.
struct SourceReader<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.state.source_failed.set(true);
            }
        })
    }
}

/// Wraps the decompressed tar stream: enforces the read budget and records EOF.
struct GuardReader<R> {
    inner: R,
    state: Rc<StreamState>,
}

impl<R: Read> Read for GuardReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let budget = self.state.budget.get();
        // With no budget left, still allow discovering a clean end of stream.
        let want = usize::try_from(budget.max(1))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.state.hit_eof.set(true);
            return Ok(0);
        }
        if budget == 0 {
            self.state.budget_exhausted.set(true);
            return Err(io::Error::other("read budget exhausted"));
        }
        self.state.budget.set(budget - n as u64);
        Ok(n)
    }
}

/// Opens the tarball, detects gzip, checks that the (decompressed) data starts with a
/// tar header, and returns the tar byte stream.
fn open_stream(tarball: &Path, state: &Rc<StreamState>) -> Result<Box<dyn Read>, TarballError> {
    let io_err = |op: &'static str, source: io::Error| TarballError::Io {
        tarball: tarball.to_path_buf(),
        op,
        source,
    };
    let file = File::open(tarball).map_err(|e| io_err("cannot open", e))?;
    let mut source = SourceReader {
        inner: file,
        state: Rc::clone(state),
    };
    let mut magic = Vec::with_capacity(2);
    (&mut source)
        .take(2)
        .read_to_end(&mut magic)
        .map_err(|e| io_err("cannot read", e))?;
    if magic.is_empty() {
        return Err(TarballError::NotATarball {
            tarball: tarball.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    let gzip = magic == [0x1f, 0x8b];
    let raw = Cursor::new(magic).chain(source);
    let mut stream: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let what = if gzip {
        "the decompressed data"
    } else {
        "the file"
    };

    let mut first = Vec::with_capacity(BLOCK as usize);
    if let Err(e) = (&mut stream).take(BLOCK).read_to_end(&mut first) {
        if state.source_failed.get() {
            return Err(io_err("cannot read", e));
        }
        return Err(TarballError::Corrupt {
            tarball: tarball.to_path_buf(),
            entry: None,
            detail: format!("gzip stream: {e}"),
        });
    }
    let not_tar = |reason: String| TarballError::NotATarball {
        tarball: tarball.to_path_buf(),
        reason,
    };
    if first.is_empty() {
        return Err(not_tar(format!("{what} is empty")));
    }
    if first.len() < BLOCK as usize {
        return Err(not_tar(format!(
            "{what} is {} bytes long, too short for a tar header",
            first.len()
        )));
    }
    if first.iter().any(|b| *b != 0) && !header_checksum_ok(Header::from_byte_slice(&first)) {
        if first.get(257..262) == Some(&b"ustar"[..]) {
            return Err(TarballError::Corrupt {
                tarball: tarball.to_path_buf(),
                entry: None,
                detail: "checksum mismatch in the first tar header".into(),
            });
        }
        return Err(not_tar(format!("{what} does not start with a tar header")));
    }
    state.budget.set(METADATA_BUDGET);
    Ok(Box::new(Cursor::new(first).chain(stream)))
}

fn header_checksum_ok(header: &Header) -> bool {
    let bytes = header.as_bytes();
    let sum: u32 = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    header.cksum().is_ok_and(|c| c == sum)
}

/// Renders archive bytes for messages: lossy UTF-8 with control characters escaped.
fn display_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What this extraction put at a (normalized, `/`-joined) relative path.
enum Node {
    Dir,
    File,
    Symlink(Vec<u8>),
}

impl Node {
    fn describe(&self) -> &'static str {
        match self {
            Node::Dir => "directory",
            Node::File => "file",
            Node::Symlink(_) => "symlink",
        }
    }
}

enum PathProblem {
    Empty,
    Nul,
    Absolute,
    Escapes,
    DotDot,
}

impl PathProblem {
    fn describe(&self) -> &'static str {
        match self {
            PathProblem::Empty => "has an empty name",
            PathProblem::Nul => "contains a NUL byte",
            PathProblem::Absolute => "is absolute",
            PathProblem::Escapes => "leaves the archive root",
            PathProblem::DotDot => "contains a '..' component",
        }
    }
}

/// Splits an archive path into normal components (empty and `.` components dropped).
fn normalize(raw: &[u8]) -> Result<Vec<Vec<u8>>, PathProblem> {
    if raw.is_empty() {
        return Err(PathProblem::Empty);
    }
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    if raw.starts_with(b"/") {
        return Err(PathProblem::Absolute);
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut depth: i64 = 0;
    let mut dotdot = false;
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                dotdot = true;
                depth -= 1;
                if depth < 0 {
                    return Err(PathProblem::Escapes);
                }
            }
            name => {
                depth += 1;
                parts.push(name.to_vec());
            }
        }
    }
    if dotdot {
        return Err(PathProblem::DotDot);
    }
    Ok(parts)
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(&b'/')
}

/// True if `target`, resolved lexically from a directory `depth` levels below the
/// root, leaves the root.
fn lexically_escapes(depth: usize, target: &[u8]) -> bool {
    let mut depth = depth;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            _ => depth += 1,
        }
    }
    false
}

enum ResolveProblem {
    Escapes,
    TooManyHops,
}

/// Resolves `target` from the real directory `start` the way the kernel would,
/// following symlinks created by this extraction; components that do not exist are
/// taken lexically. Returns the resulting path's components.
fn resolve(
    nodes: &HashMap<Vec<u8>, Node>,
    start: Vec<Vec<u8>>,
    target: &[u8],
    hops: &mut u32,
) -> Result<Vec<Vec<u8>>, ResolveProblem> {
    if target.starts_with(b"/") {
        return Err(ResolveProblem::Escapes);
    }
    let mut stack = start;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if stack.pop().is_none() {
                    return Err(ResolveProblem::Escapes);
                }
            }
            name => {
                stack.push(name.to_vec());
                if let Some(Node::Symlink(next)) = nodes.get(&join(&stack)) {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err(ResolveProblem::TooManyHops);
                    }
                    stack.pop();
                    stack = resolve(nodes, stack, next, hops)?;
                }
            }
        }
    }
    Ok(stack)
}

fn path_of(dest: &Path, parts: &[Vec<u8>]) -> PathBuf {
    let mut p = dest.to_path_buf();
    for part in parts {
        p.push(OsStr::from_bytes(part));
    }
    p
}

struct Extractor<'a> {
    tarball: &'a Path,
    dest: &'a Path,
    max_bytes: u64,
    /// Bytes counted against `max_bytes`.
    charged: u64,
    stats: ExtractStats,
    nodes: HashMap<Vec<u8>, Node>,
    /// Symlinks created, for the final check: entry and path components.
    symlinks: Vec<(EntryRef, Vec<Vec<u8>>)>,
    state: Rc<StreamState>,
}

impl Extractor<'_> {
    fn tb(&self) -> PathBuf {
        self.tarball.to_path_buf()
    }

    /// Maps an error from the decompressed stream to the right variant.
    fn stream_error(&self, e: io::Error, entry: Option<EntryRef>, context: &str) -> TarballError {
        if self.state.source_failed.get() {
            TarballError::Io {
                tarball: self.tb(),
                op: "cannot read",
                source: e,
            }
        } else if self.state.budget_exhausted.get() {
            TarballError::LimitExceeded {
                tarball: self.tb(),
                entry,
                what: format!(
                    "{context}more than {METADATA_BUDGET} bytes of extension headers, or more than {TRAILER_BUDGET} bytes after the end-of-archive marker"
                ),
            }
        } else {
            TarballError::Corrupt {
                tarball: self.tb(),
                entry,
                detail: format!("{context}{e}"),
            }
        }
    }

    fn unsafe_path(&self, entry: &EntryRef, reason: impl Into<String>) -> TarballError {
        TarballError::UnsafePath {
            tarball: self.tb(),
            entry: entry.clone(),
            reason: reason.into(),
        }
    }

    fn conflict(&self, entry: &EntryRef, reason: String) -> TarballError {
        TarballError::Conflict {
            tarball: self.tb(),
            entry: entry.clone(),
            reason,
        }
    }

    fn write_err(&self, entry: &EntryRef, target: &Path, source: io::Error) -> TarballError {
        TarballError::Write {
            tarball: self.tb(),
            entry: entry.clone(),
            target: target.to_path_buf(),
            source,
        }
    }

    fn charge(&mut self, entry: &EntryRef, amount: u64) -> Result<(), TarballError> {
        match self.charged.checked_add(amount) {
            Some(total) if total <= self.max_bytes => {
                self.charged = total;
                Ok(())
            }
            _ => Err(TarballError::LimitExceeded {
                tarball: self.tb(),
                entry: Some(entry.clone()),
                what: format!(
                    "extracting {amount} more bytes would exceed the limit of {} bytes",
                    self.max_bytes
                ),
            }),
        }
    }

    fn handle<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        eref: &EntryRef,
    ) -> Result<(), TarballError> {
        let etype = entry.header().entry_type();
        let size = entry.size();
        if etype == EntryType::XGlobalHeader {
            // PAX global header: metadata only (e.g. `git archive` comments).
            return self.charge(eref, size);
        }
        let raw_path = entry.path_bytes().into_owned();
        let parts = match normalize(&raw_path) {
            Ok(parts) => parts,
            Err(problem) => {
                return Err(self.unsafe_path(eref, format!("path {}", problem.describe())));
            }
        };
        let sparse = self.pax_marks_sparse(entry, eref)?;
        let kind = match etype {
            EntryType::Regular | EntryType::Continuous if sparse => {
                return Err(TarballError::UnsupportedType {
                    tarball: self.tb(),
                    entry: eref.clone(),
                    kind: "GNU sparse file (PAX format)".into(),
                });
            }
            // Old (pre-POSIX) archives mark directories by a trailing slash only.
            EntryType::Regular | EntryType::Continuous if raw_path.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::HardLink,
            other => {
                let kind = match other {
                    EntryType::Char => "character device".to_string(),
                    EntryType::Block => "block device".to_string(),
                    EntryType::Fifo => "FIFO (named pipe)".to_string(),
                    EntryType::GNUSparse => "GNU sparse file".to_string(),
                    t => format!("type flag {:?}", char::from(t.as_byte())),
                };
                return Err(TarballError::UnsupportedType {
                    tarball: self.tb(),
                    entry: eref.clone(),
                    kind,
                });
            }
        };
        if parts.is_empty() {
            if kind == Kind::Dir {
                // "./": the root itself, which is `dest`.
                return self.charge(eref, size);
            }
            return Err(self.unsafe_path(eref, "path names the archive root itself"));
        }
        if kind != Kind::File {
            // Data carried by non-file entries is skipped, but still decompressed.
            self.charge(eref, size)?;
        }
        self.ensure_parents(&parts[..parts.len() - 1], eref)?;
        let key = join(&parts);
        let full = path_of(self.dest, &parts);
        match kind {
            Kind::Dir => self.make_dir(&key, &full, eref),
            Kind::File => self.make_file(entry, &key, &full, eref),
            Kind::Symlink => self.make_symlink(entry, &parts, &key, &full, eref),
            Kind::HardLink => self.make_hardlink(entry, &key, &full, eref),
        }
    }

    /// Validates the entry's PAX records (the `tar` crate silently skips malformed
    /// ones) and tells whether they mark a GNU sparse file (PAX format 0.1/1.0).
    fn pax_marks_sparse<R: Read>(
        &self,
        entry: &mut Entry<'_, R>,
        eref: &EntryRef,
    ) -> Result<bool, TarballError> {
        let corrupt = |e: io::Error| TarballError::Corrupt {
            tarball: self.tb(),
            entry: Some(eref.clone()),
            detail: format!("bad PAX extended header: {e}"),
        };
        let Some(exts) = entry.pax_extensions().map_err(corrupt)? else {
            return Ok(false);
        };
        let mut sparse = false;
        for ext in exts {
            sparse |= ext
                .map_err(corrupt)?
                .key_bytes()
                .starts_with(b"GNU.sparse.");
        }
        Ok(sparse)
    }

    /// Makes sure every parent of the entry is a real directory created by this
    /// extraction, creating missing ones; refuses to go through anything else.
    fn ensure_parents(&mut self, parents: &[Vec<u8>], eref: &EntryRef) -> Result<(), TarballError> {
        for i in 1..=parents.len() {
            let prefix = &parents[..i];
            let key = join(prefix);
            let full = path_of(self.dest, prefix);
            let shown = display_bytes(&key);
            match self.nodes.get(&key) {
                Some(Node::Dir) => match fs::symlink_metadata(&full) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => {
                        return Err(self.unsafe_path(
                            eref,
                            format!("parent '{shown}' is no longer a directory on disk"),
                        ));
                    }
                    Err(e) => return Err(self.write_err(eref, &full, e)),
                },
                Some(Node::Symlink(_)) => {
                    return Err(self
                        .unsafe_path(eref, format!("path passes through the symlink '{shown}'")));
                }
                Some(Node::File) => {
                    return Err(self.unsafe_path(eref, format!("parent '{shown}' is a file")));
                }
                None => {
                    match fs::symlink_metadata(&full) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(self.write_err(eref, &full, e)),
                        Ok(_) => {
                            return Err(self.unsafe_path(
                                eref,
                                format!(
                                "parent '{shown}' exists but was not extracted from this archive"
                            ),
                            ))
                        }
                    }
                    self.create_dir(&full, eref)?;
                    self.nodes.insert(key, Node::Dir);
                }
            }
        }
        Ok(())
    }

    fn create_dir(&mut self, full: &Path, eref: &EntryRef) -> Result<(), TarballError> {
        // `create` fails if anything (including a symlink) is already there.
        fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(full)
            .and_then(|()| fs::set_permissions(full, fs::Permissions::from_mode(DIR_MODE)))
            .map_err(|e| self.write_err(eref, full, e))?;
        self.stats.dirs += 1;
        Ok(())
    }

    fn make_dir(&mut self, key: &[u8], full: &Path, eref: &EntryRef) -> Result<(), TarballError> {
        match self.nodes.get(key) {
            Some(Node::Dir) => Ok(()),
            Some(other) => Err(self.conflict(
                eref,
                format!("a directory cannot replace an earlier {}", other.describe()),
            )),
            None => {
                self.create_dir(full, eref)?;
                self.nodes.insert(key.to_vec(), Node::Dir);
                Ok(())
            }
        }
    }

    /// Removes an earlier regular file at `key` so that a later entry can replace it
    /// (tar semantics); anything else at that path is a conflict.
    fn make_room_for_file(
        &self,
        key: &[u8],
        full: &Path,
        eref: &EntryRef,
        what: &str,
    ) -> Result<(), TarballError> {
        match self.nodes.get(key) {
            None => Ok(()),
            Some(Node::File) => fs::remove_file(full).map_err(|e| self.write_err(eref, full, e)),
            Some(other) => Err(self.conflict(
                eref,
                format!("{what} cannot replace an earlier {}", other.describe()),
            )),
        }
    }

    fn make_file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        key: &[u8],
        full: &Path,
        eref: &EntryRef,
    ) -> Result<(), TarballError> {
        let size = entry.size();
        self.charge(eref, size)?;
        let mode = entry.header().mode().map_err(|e| TarballError::Corrupt {
            tarball: self.tb(),
            entry: Some(eref.clone()),
            detail: format!("bad mode field: {e}"),
        })? & FILE_MODE_MASK;
        self.make_room_for_file(key, full, eref, "a file")?;
        // `create_new` (O_CREAT|O_EXCL) never follows a symlink.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(full)
            .map_err(|e| self.write_err(eref, full, e))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut copied: u64 = 0;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(self.stream_error(e, Some(eref.clone()), "reading file data: "));
                }
            };
            file.write_all(&buf[..n])
                .map_err(|e| self.write_err(eref, full, e))?;
            copied += n as u64;
        }
        if copied != size {
            return Err(TarballError::Corrupt {
                tarball: self.tb(),
                entry: Some(eref.clone()),
                detail: format!("file data ends after {copied} of {size} bytes"),
            });
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| self.write_err(eref, full, e))?;
        self.nodes.insert(key.to_vec(), Node::File);
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    fn make_symlink<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        parts: &[Vec<u8>],
        key: &[u8],
        full: &Path,
        eref: &EntryRef,
    ) -> Result<(), TarballError> {
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let bad = |reason: &str| TarballError::UnsafeSymlink {
            tarball: self.tb(),
            entry: eref.clone(),
            target: display_bytes(&target),
            reason: reason.to_string(),
        };
        if let Some(existing) = self.nodes.get(key) {
            return Err(self.conflict(
                eref,
                format!(
                    "a symlink cannot replace an earlier {}",
                    existing.describe()
                ),
            ));
        }
        if target.is_empty() {
            return Err(bad("is empty"));
        }
        if target.contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        if target.starts_with(b"/") {
            return Err(bad("is absolute (a release must be relocatable)"));
        }
        let parent = parts[..parts.len().saturating_sub(1)].to_vec();
        if lexically_escapes(parent.len(), &target) {
            return Err(bad("leaves the archive root"));
        }
        match resolve(&self.nodes, parent, &target, &mut 0) {
            Ok(_) => {}
            Err(ResolveProblem::Escapes) => {
                return Err(bad("leaves the archive root through other symlinks"));
            }
            Err(ResolveProblem::TooManyHops) => {
                return Err(bad("goes through too many symlinks (loop?)"));
            }
        }
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), full)
            .map_err(|e| self.write_err(eref, full, e))?;
        self.nodes.insert(key.to_vec(), Node::Symlink(target));
        self.symlinks.push((eref.clone(), parts.to_vec()));
        self.stats.symlinks += 1;
        Ok(())
    }

    fn make_hardlink<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        key: &[u8],
        full: &Path,
        eref: &EntryRef,
    ) -> Result<(), TarballError> {
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let bad = |reason: String| TarballError::BadHardLink {
            tarball: self.tb(),
            entry: eref.clone(),
            target: display_bytes(&target),
            reason,
        };
        let tparts = normalize(&target).map_err(|p| bad(p.describe().to_string()))?;
        if tparts.is_empty() {
            return Err(bad("names the archive root".into()));
        }
        let tkey = join(&tparts);
        match self.nodes.get(&tkey) {
            Some(Node::File) => {}
            Some(other) => {
                return Err(bad(format!(
                    "is a {}, not a regular file",
                    other.describe()
                )));
            }
            None => return Err(bad("was not extracted earlier from this archive".into())),
        }
        if tkey == key {
            return Err(bad("is the link itself".into()));
        }
        let tfull = path_of(self.dest, &tparts);
        let meta = fs::symlink_metadata(&tfull).map_err(|e| self.write_err(eref, &tfull, e))?;
        if !meta.file_type().is_file() {
            return Err(bad("is not a regular file on disk".into()));
        }
        self.charge(eref, meta.len())?;
        self.make_room_for_file(key, full, eref, "a hard link")?;
        if fs::hard_link(&tfull, full).is_err() {
            // Some filesystems refuse hard links: fall back to a copy.
            self.copy_file(&tfull, full, meta.permissions(), eref)?;
        }
        self.nodes.insert(key.to_vec(), Node::File);
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn copy_file(
        &self,
        from: &Path,
        to: &Path,
        perms: fs::Permissions,
        eref: &EntryRef,
    ) -> Result<(), TarballError> {
        let mut src = File::open(from).map_err(|e| self.write_err(eref, from, e))?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(|e| self.write_err(eref, to, e))?;
        io::copy(&mut src, &mut dst).map_err(|e| self.write_err(eref, to, e))?;
        dst.set_permissions(perms)
            .map_err(|e| self.write_err(eref, to, e))
    }

    /// Re-resolves every symlink once all entries exist, so that a link made safe
    /// only by the order of entries (e.g. `lib/esc -> up/..` before `lib/up -> ..`)
    /// is still caught.
    fn verify_symlinks(&self) -> Result<(), TarballError> {
        for (eref, parts) in &self.symlinks {
            let Some(Node::Symlink(target)) = self.nodes.get(&join(parts)) else {
                continue;
            };
            let parent = parts[..parts.len().saturating_sub(1)].to_vec();
            let reason = match resolve(&self.nodes, parent, target, &mut 0) {
                Ok(_) => continue,
                Err(ResolveProblem::Escapes) => "leaves the archive root through other symlinks",
                Err(ResolveProblem::TooManyHops) => "goes through too many symlinks (loop?)",
            };
            return Err(TarballError::UnsafeSymlink {
                tarball: self.tb(),
                entry: eref.clone(),
                target: display_bytes(target),
                reason: reason.into(),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
}

#[cfg(test)]
mod tests {
    use super::*;
    use beambake_testkit::tempfile::TempDir;
    use beambake_testkit::{skip, tempdir_named, which};
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    // ---------- scratch directories ----------

    fn scratch(tag: &str) -> TempDir {
        tempdir_named(&format!("beambake-tarball-test-{tag}-"))
    }

    /// `root/archive` holds the tarball, `root/dest` is the (empty) destination.
    struct Case {
        root: TempDir,
        archive: PathBuf,
        dest: PathBuf,
    }

    impl Case {
        fn new(tag: &str, bytes: &[u8]) -> Case {
            let root = scratch(tag);
            let archive = root.path().join("archive");
            fs::write(&archive, bytes).unwrap();
            let dest = root.path().join("dest");
            fs::create_dir(&dest).unwrap();
            Case {
                root,
                archive,
                dest,
            }
        }

        fn run(&self) -> Result<ExtractStats, TarballError> {
            extract(&self.archive, &self.dest, 1 << 30)
        }

        /// Nothing but `archive` and `dest` may exist next to `dest`.
        fn assert_nothing_outside(&self) {
            let mut names: Vec<String> = fs::read_dir(self.root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(
                names,
                ["archive", "dest"],
                "something was written outside dest"
            );
        }
    }

    // ---------- archive construction ----------

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A hand-made header, for names and types the `tar` Builder refuses to write.
    fn raw_header(name: &[u8], typ: u8, size: u64, mode: u32, link: &[u8]) -> [u8; 512] {
        let mut h = Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(EntryType::new(typ));
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut out = [0u8; 512];
        out.copy_from_slice(h.as_bytes());
        out
    }

    struct Raw(Vec<u8>);

    impl Raw {
        fn new() -> Raw {
            Raw(Vec::new())
        }
        fn member(mut self, name: &[u8], typ: u8, mode: u32, link: &[u8], data: &[u8]) -> Raw {
            self.0
                .extend_from_slice(&raw_header(name, typ, data.len() as u64, mode, link));
            self.data(data)
        }
        fn data(mut self, data: &[u8]) -> Raw {
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }
        fn file(self, name: &str, data: &[u8]) -> Raw {
            self.member(name.as_bytes(), b'0', 0o644, b"", data)
        }
        fn dir(self, name: &str) -> Raw {
            self.member(name.as_bytes(), b'5', 0o755, b"", b"")
        }
        fn symlink(self, name: &str, target: &str) -> Raw {
            self.member(name.as_bytes(), b'2', 0o777, target.as_bytes(), b"")
        }
        fn hardlink(self, name: &str, target: &str) -> Raw {
            self.member(name.as_bytes(), b'1', 0o644, target.as_bytes(), b"")
        }
        /// Ends the archive with the two zero blocks.
        fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }
    }

    /// PAX extended-header records ("LEN key=value\n", LEN counting itself).
    fn pax_records(kv: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in kv {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Want {
        Dir,
        File(u32, Vec<u8>),
        Link(String),
    }

    fn long_name() -> String {
        format!("lib/tt-0.1.0/priv/{}.txt", "x".repeat(120))
    }

    /// A release-like tar built with the `tar` Builder (GNU headers, so a long name
    /// goes through a GNU long-name extension), plus what it must extract to.
    fn release_tar() -> (Vec<u8>, BTreeMap<String, Want>) {
        let mut b = tar::Builder::new(Vec::new());
        let mut want = BTreeMap::new();
        let add_dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            h.set_mode(mode);
            b.append_data(&mut h, path, io::empty()).unwrap();
        };
        let add_file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            b.append_data(&mut h, path, data).unwrap();
        };
        let add_link = |b: &mut tar::Builder<Vec<u8>>, ty: EntryType, path: &str, target: &str| {
            let mut h = Header::new_gnu();
            h.set_entry_type(ty);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, path, target).unwrap();
        };

        for d in [
            "bin",
            "lib",
            "lib/tt-0.1.0",
            "lib/tt-0.1.0/ebin",
            "releases",
        ] {
            add_dir(&mut b, d, 0o775);
            want.insert(d.to_string(), Want::Dir);
        }
        // erts-13.1.5 and erts-13.1.5/bin are implied by the file below.
        want.insert("erts-13.1.5".into(), Want::Dir);
        want.insert("erts-13.1.5/bin".into(), Want::Dir);
        want.insert("releases/0.1.0".into(), Want::Dir);
        want.insert("lib/tt-0.1.0/priv".into(), Want::Dir);

        let script = b"#!/bin/sh\nexec erts-13.1.5/bin/erlexec \"$@\"\n".to_vec();
        let beam = pseudo_random(150_000, 7);
        let app = b"{application, tt, [{vsn, \"0.1.0\"}]}.\n".to_vec();
        let files: Vec<(&str, u32, Vec<u8>, u32)> = vec![
            ("bin/tt", 0o755, script.clone(), 0o755),
            ("erts-13.1.5/bin/beam.smp", 0o755, beam, 0o755),
            ("lib/tt-0.1.0/ebin/tt.app", 0o644, app, 0o644),
            (
                "releases/0.1.0/vm.args",
                0o600,
                b"-name tt\n".to_vec(),
                0o600,
            ),
            ("releases/0.1.0/sys.config", 0o666, b"[].\n".to_vec(), 0o644),
            ("erts-13.1.5/bin/suid", 0o4777, b"x".to_vec(), 0o755),
            ("releases/0.1.0/empty", 0o644, Vec::new(), 0o644),
        ];
        for (path, mode, data, expect_mode) in files {
            add_file(&mut b, path, mode, &data);
            want.insert(path.to_string(), Want::File(expect_mode, data));
        }
        add_file(&mut b, &long_name(), 0o644, b"long");
        want.insert(long_name(), Want::File(0o644, b"long".to_vec()));

        add_link(&mut b, EntryType::Symlink, "releases/current", "0.1.0");
        want.insert("releases/current".into(), Want::Link("0.1.0".into()));
        add_link(
            &mut b,
            EntryType::Symlink,
            "lib/tt-0.1.0/priv/start",
            "../../../bin/tt",
        );
        want.insert(
            "lib/tt-0.1.0/priv/start".into(),
            Want::Link("../../../bin/tt".into()),
        );
        add_link(&mut b, EntryType::Link, "bin/tt-0.1.0", "bin/tt");
        want.insert("bin/tt-0.1.0".into(), Want::File(0o755, script));

        let mut bytes = b.into_inner().unwrap();
        // Drop the Builder's end marker to append a "./"-prefixed entry by hand.
        bytes.truncate(bytes.len() - 1024);
        let bytes = Raw(bytes)
            .file("./releases/start_erl.data", b"13.1.5 0.1.0\n")
            .finish();
        want.insert(
            "releases/start_erl.data".into(),
            Want::File(0o644, b"13.1.5 0.1.0\n".to_vec()),
        );
        (bytes, want)
    }

    fn snapshot(dir: &Path) -> BTreeMap<String, Want> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Want>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let path = e.path();
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    let t = fs::read_link(&path).unwrap();
                    out.insert(rel, Want::Link(t.to_string_lossy().into_owned()));
                } else if meta.is_dir() {
                    assert_eq!(meta.mode() & 0o7777, 0o755, "dir mode of {rel}");
                    out.insert(rel, Want::Dir);
                    walk(base, &path, out);
                } else {
                    assert!(meta.file_type().is_file(), "{rel} is not a regular file");
                    out.insert(
                        rel,
                        Want::File(meta.mode() & 0o7777, fs::read(&path).unwrap()),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    // ---------- happy path ----------

    #[test]
    fn realistic_release_extracts_exactly() {
        let (tar, want) = release_tar();
        for (tag, bytes) in [("gz", gzip(&tar)), ("plain", tar.clone())] {
            let case = Case::new(tag, &bytes);
            assert!(looks_like_tarball(&case.archive).unwrap());
            let stats = case.run().unwrap();
            let got = snapshot(&case.dest);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            );
            for (k, v) in &want {
                assert!(got[k] == *v, "mismatch at {k}");
            }
            assert_eq!(stats.files, 9);
            assert_eq!(stats.symlinks, 2);
            assert_eq!(stats.hardlinks, 1);
            assert_eq!(stats.dirs, 9);
            let data: u64 = want
                .iter()
                .filter(|(k, _)| k.as_str() != "bin/tt-0.1.0")
                .map(|(_, v)| match v {
                    Want::File(_, d) => d.len() as u64,
                    _ => 0,
                })
                .sum();
            assert_eq!(stats.bytes, data);
            // The hard link is a real hard link (or at least an identical copy).
            let a = fs::metadata(case.dest.join("bin/tt")).unwrap();
            let b = fs::metadata(case.dest.join("bin/tt-0.1.0")).unwrap();
            assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
            case.assert_nothing_outside();
        }
    }

    #[test]
    fn looks_like_tarball_detects_formats() {
        let (tar, _) = release_tar();
        let dir = scratch("looks");
        let cases: [(&str, Vec<u8>, bool); 5] = [
            ("gz", gzip(b"anything"), true),
            ("tar", tar, true),
            ("text", b"hello world".to_vec(), false),
            ("empty", Vec::new(), false),
            ("random", pseudo_random(4096, 3), false),
        ];
        for (name, bytes, expect) in cases {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            assert_eq!(looks_like_tarball(&p).unwrap(), expect, "{name}");
        }
        assert!(looks_like_tarball(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn duplicate_regular_file_is_replaced() {
        let tar = Raw::new()
            .file("a/f", b"first")
            .hardlink("a/g", "a/f")
            .file("a/f", b"second")
            .finish();
        let case = Case::new("dup-ok", &gzip(&tar));
        let stats = case.run().unwrap();
        assert_eq!(fs::read(case.dest.join("a/f")).unwrap(), b"second");
        // The hard link keeps the old content, as with GNU tar (unlink, then create).
        assert_eq!(fs::read(case.dest.join("a/g")).unwrap(), b"first");
        assert_eq!(stats.files, 2);
    }

    #[test]
    fn dot_slash_root_entry_and_empty_archive_are_fine() {
        let tar = Raw::new().dir("./").file("./x", b"1").finish();
        let case = Case::new("dotroot", &tar);
        let stats = case.run().unwrap();
        assert_eq!(stats.dirs, 0);
        assert_eq!(fs::read(case.dest.join("x")).unwrap(), b"1");

        let case = Case::new("empty-archive", &gzip(&[0u8; 10240]));
        assert_eq!(case.run().unwrap(), ExtractStats::default());
    }

    #[test]
    fn old_style_directory_with_trailing_slash() {
        let tar = Raw::new()
            .member(b"olddir/", b'\0', 0o700, b"", b"")
            .file("olddir/f", b"1")
            .finish();
        let case = Case::new("olddir", &tar);
        let stats = case.run().unwrap();
        assert_eq!((stats.dirs, stats.files), (1, 1));
        let got = snapshot(&case.dest);
        assert_eq!(got["olddir"], Want::Dir);
    }

    #[test]
    fn pax_global_header_is_ignored() {
        let tar = Raw::new()
            .member(
                b"pax_global_header",
                b'g',
                0o644,
                b"",
                &pax_records(&[("comment", "abc")]),
            )
            .file("f", b"ok")
            .finish();
        let case = Case::new("paxg", &tar);
        case.run().unwrap();
        assert_eq!(snapshot(&case.dest).len(), 1);
    }

    // ---------- malicious archives ----------

    /// Extracts `tar` (gzip-compressed), expects an error accepted by `check`, whose
    /// message contains every string of `msg`; nothing may be written outside dest,
    /// nor at any of `absent` (relative to dest).
    fn expect_err(
        tag: &str,
        tar: &[u8],
        check: fn(&TarballError) -> bool,
        msg: &[&str],
        absent: &[&str],
    ) {
        let case = Case::new(tag, &gzip(tar));
        let err = case.run().expect_err(tag);
        let text = err.to_string();
        println!("{tag}: {text}");
        assert!(check(&err), "{tag}: unexpected variant: {err:?}");
        assert!(
            text.contains(&case.archive.display().to_string()),
            "{tag}: {text}"
        );
        for m in msg {
            assert!(text.contains(m), "{tag}: {text:?} lacks {m:?}");
        }
        for a in absent {
            assert!(
                fs::symlink_metadata(case.dest.join(a)).is_err(),
                "{tag}: {a} exists"
            );
        }
        case.assert_nothing_outside();
    }

    fn is_unsafe_path(e: &TarballError) -> bool {
        matches!(e, TarballError::UnsafePath { .. })
    }
    fn is_unsafe_symlink(e: &TarballError) -> bool {
        matches!(e, TarballError::UnsafeSymlink { .. })
    }
    fn is_unsupported(e: &TarballError) -> bool {
        matches!(e, TarballError::UnsupportedType { .. })
    }
    fn is_bad_hardlink(e: &TarballError) -> bool {
        matches!(e, TarballError::BadHardLink { .. })
    }
    fn is_conflict(e: &TarballError) -> bool {
        matches!(e, TarballError::Conflict { .. })
    }
    fn is_corrupt(e: &TarballError) -> bool {
        matches!(e, TarballError::Corrupt { .. })
    }
    fn is_limit(e: &TarballError) -> bool {
        matches!(e, TarballError::LimitExceeded { .. })
    }

    #[test]
    fn rejects_dotdot_paths() {
        let tar = Raw::new().file("ok", b"1").file("../evil", b"x").finish();
        expect_err(
            "dotdot",
            &tar,
            is_unsafe_path,
            &["entry 1 '../evil': path leaves the archive root"],
            &[],
        );
        let tar = Raw::new().file("a/../../evil", b"x").finish();
        expect_err(
            "dotdot2",
            &tar,
            is_unsafe_path,
            &["entry 0 'a/../../evil'", "leaves the archive root"],
            &["a"],
        );
        let tar = Raw::new().file("a/../b", b"x").finish();
        expect_err(
            "dotdot3",
            &tar,
            is_unsafe_path,
            &["'..' component"],
            &["a", "b"],
        );
        // A symlink to "." does not make "d/../x" acceptable.
        let tar = Raw::new().symlink("d", ".").file("d/../x", b"x").finish();
        expect_err("dotdot4", &tar, is_unsafe_path, &["'d/../x'"], &["x"]);
    }

    #[test]
    fn rejects_absolute_empty_and_nul_paths() {
        let target = "/etc/beambake-tarball-test-evil";
        let tar = Raw::new().file(target, b"x").finish();
        expect_err("abs", &tar, is_unsafe_path, &["path is absolute"], &[]);
        assert!(!Path::new(target).exists());

        let tar = Raw::new().file("", b"x").finish();
        expect_err("emptyname", &tar, is_unsafe_path, &["empty name"], &[]);

        // NUL inside a name: only expressible through a GNU long name.
        let long = b"a\0b\0".to_vec();
        let tar = Raw::new()
            .member(b"././@LongLink", b'L', 0o644, b"", &long)
            .file("placeholder", b"x")
            .finish();
        expect_err(
            "nul",
            &tar,
            is_unsafe_path,
            &["NUL", "'a\\u{0}b'"],
            &["a", "placeholder"],
        );
    }

    #[test]
    fn rejects_dotdot_in_pax_path() {
        let record = pax_records(&[("path", "../pax-evil")]);
        let tar = Raw::new()
            .member(b"PaxHeaders/x", b'x', 0o644, b"", &record)
            .file("harmless", b"x")
            .finish();
        expect_err(
            "pax",
            &tar,
            is_unsafe_path,
            &["'../pax-evil'", "leaves the archive root"],
            &["harmless"],
        );
    }

    #[test]
    fn rejects_escaping_symlinks() {
        let tar = Raw::new()
            .dir("lib")
            .symlink("lib/x", "../../outside")
            .finish();
        expect_err(
            "symesc",
            &tar,
            is_unsafe_symlink,
            &["'lib/x'", "'../../outside'", "leaves the archive root"],
            &["lib/x"],
        );
        let tar = Raw::new().symlink("lib/pw", "/etc/passwd").finish();
        expect_err(
            "symabs",
            &tar,
            is_unsafe_symlink,
            &["'lib/pw'", "'/etc/passwd'", "absolute"],
            &["lib/pw"],
        );
        let tar = Raw::new().symlink("e", "").finish();
        expect_err("symempty", &tar, is_unsafe_symlink, &["is empty"], &["e"]);
        // Lexically inside, but escapes through another link created later.
        let tar = Raw::new()
            .symlink("lib/esc", "up/..")
            .symlink("lib/up", "..")
            .finish();
        expect_err(
            "symchain",
            &tar,
            is_unsafe_symlink,
            &["'lib/esc'", "through other symlinks"],
            &[],
        );
        // ... and in the other order.
        let tar = Raw::new()
            .symlink("lib/up", "..")
            .symlink("lib/esc", "up/..")
            .finish();
        expect_err(
            "symchain2",
            &tar,
            is_unsafe_symlink,
            &["'lib/esc'", "through other symlinks"],
            &["lib/esc"],
        );
        let tar = Raw::new().symlink("a", "b").symlink("b", "a").finish();
        expect_err(
            "symloop",
            &tar,
            is_unsafe_symlink,
            &["too many symlinks"],
            &[],
        );
    }

    #[test]
    fn rejects_writing_through_symlink() {
        let tar = Raw::new()
            .dir("subdir")
            .symlink("link", "subdir")
            .file("link/file", b"x")
            .finish();
        expect_err(
            "through",
            &tar,
            is_unsafe_path,
            &["entry 2 'link/file'", "passes through the symlink 'link'"],
            &["subdir/file"],
        );
        let tar = Raw::new()
            .dir("subdir")
            .symlink("link", "subdir")
            .dir("link/deeper")
            .finish();
        expect_err(
            "through-dir",
            &tar,
            is_unsafe_path,
            &["symlink"],
            &["subdir/deeper"],
        );
    }

    #[test]
    fn rejects_malformed_pax_records() {
        let tar = Raw::new()
            .member(b"PaxHeaders/l", b'x', 0o644, b"", b"99 linkpath=../../x\n")
            .symlink("l", "ok")
            .finish();
        expect_err("badpax", &tar, is_corrupt, &["entry 0 'l'", "PAX"], &["l"]);
    }

    #[test]
    fn rejects_special_files() {
        for (tag, typ, word) in [
            ("chr", b'3', "character device"),
            ("blk", b'4', "block device"),
            ("fifo", b'6', "FIFO"),
            ("unknown", b'Z', "type flag 'Z'"),
        ] {
            let tar = Raw::new()
                .member(b"dev/thing", typ, 0o644, b"", b"")
                .finish();
            expect_err(
                tag,
                &tar,
                is_unsupported,
                &["'dev/thing'", word],
                &["dev/thing"],
            );
        }
    }

    #[test]
    fn rejects_sparse_files() {
        // GNU sparse: a hole, then one 512-byte data chunk, in a 1024-byte file.
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..6].copy_from_slice(b"sparse");
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(512);
        h.set_mode(0o644);
        h.set_mtime(0);
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.set_real_size(1024);
            let chunk = &mut gnu.sparse[0];
            chunk.offset[..11].copy_from_slice(b"00000001000");
            chunk.numbytes[..11].copy_from_slice(b"00000001000");
        }
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[b'a'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        expect_err("sparse", &tar, is_unsupported, &["GNU sparse"], &["sparse"]);

        // PAX (format 1.0) sparse: a regular entry marked by GNU.sparse.* records.
        let record = pax_records(&[("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]);
        let tar = Raw::new()
            .member(b"PaxHeaders/s", b'x', 0o644, b"", &record)
            .file("GNUSparseFile.0/s", b"x")
            .finish();
        expect_err(
            "paxsparse",
            &tar,
            is_unsupported,
            &["sparse"],
            &["GNUSparseFile.0"],
        );
    }

    #[test]
    fn rejects_bad_hard_links() {
        let cases: [(&str, Raw, &str); 5] = [
            ("hl-out", Raw::new().file("f", b"1"), "../outside"),
            ("hl-missing", Raw::new().file("f", b"1"), "nope"),
            ("hl-abs", Raw::new().file("f", b"1"), "/etc/passwd"),
            ("hl-dir", Raw::new().dir("d"), "d"),
            ("hl-sym", Raw::new().file("f", b"1").symlink("s", "f"), "s"),
        ];
        for (tag, raw, target) in cases {
            let tar = raw.hardlink("h", target).finish();
            expect_err(tag, &tar, is_bad_hardlink, &["'h'", target], &["h"]);
        }
        // A hard link may not name a file that only exists through a symlink.
        let tar = Raw::new()
            .file("d/f", b"1")
            .symlink("s", "d")
            .hardlink("h", "s/f")
            .finish();
        expect_err("hl-through", &tar, is_bad_hardlink, &["'s/f'"], &["h"]);
    }

    #[test]
    fn rejects_conflicting_duplicates() {
        let cases: [(&str, Raw, &str); 5] = [
            (
                "dir-then-file",
                Raw::new().dir("x").file("x", b"1"),
                "a file cannot replace an earlier directory",
            ),
            (
                "file-then-dir",
                Raw::new().file("x", b"1").dir("x"),
                "a directory cannot replace an earlier file",
            ),
            (
                "file-then-sym",
                Raw::new().file("x", b"1").symlink("x", "y"),
                "a symlink cannot replace an earlier file",
            ),
            (
                "dir-then-sym",
                Raw::new().dir("x").symlink("x", "."),
                "a symlink cannot replace an earlier directory",
            ),
            (
                "sym-then-file",
                Raw::new().file("y", b"1").symlink("x", "y").file("x", b"2"),
                "a file cannot replace an earlier symlink",
            ),
        ];
        for (tag, raw, msg) in cases {
            expect_err(tag, &raw.finish(), is_conflict, &["'x'", msg], &[]);
        }
        // The implicit parent of a file cannot be a file.
        let tar = Raw::new().file("x", b"1").file("x/y", b"2").finish();
        expect_err(
            "file-parent",
            &tar,
            is_unsafe_path,
            &["parent 'x' is a file"],
            &[],
        );
    }

    // ---------- corrupt, truncated, not a tarball ----------

    #[test]
    fn truncated_gzip_is_always_an_error() {
        let (tar, _) = release_tar();
        let gz = gzip(&tar);
        let mut cuts: Vec<usize> = (0..gz.len()).step_by(97).collect();
        cuts.extend((1..=10).map(|k| gz.len() - k));
        let root = scratch("trunc");
        let archive = root.path().join("t.tar.gz");
        for (i, cut) in cuts.iter().enumerate() {
            fs::write(&archive, &gz[..*cut]).unwrap();
            let dest = root.path().join(format!("d{i}"));
            fs::create_dir(&dest).unwrap();
            match extract(&archive, &dest, 1 << 30) {
                Ok(stats) => panic!("truncation at {cut} of {} gave Ok({stats:?})", gz.len()),
                Err(TarballError::Corrupt { .. } | TarballError::NotATarball { .. }) => {}
                Err(e) => panic!("truncation at {cut}: unexpected error {e}"),
            }
            fs::remove_dir_all(&dest).unwrap();
        }
        // Sanity: the untruncated file extracts.
        fs::write(&archive, &gz).unwrap();
        let dest = root.path().join("full");
        fs::create_dir(&dest).unwrap();
        extract(&archive, &dest, 1 << 30).unwrap();
    }

    #[test]
    fn truncated_plain_tar_is_always_an_error() {
        let (tar, _) = release_tar();
        let root = scratch("trunc-plain");
        let archive = root.path().join("t.tar");
        // Every block boundary (including "entries complete, end marker missing")
        // and some offsets inside blocks.
        let mut cuts: Vec<usize> = (0..tar.len() - 1024).step_by(512).collect();
        cuts.extend((0..tar.len() - 1024).step_by(4099));
        for cut in cuts {
            fs::write(&archive, &tar[..cut]).unwrap();
            let dest = root.path().join(format!("d{cut}"));
            fs::create_dir(&dest).unwrap();
            assert!(
                extract(&archive, &dest, 1 << 30).is_err(),
                "truncation at {cut} gave Ok"
            );
            fs::remove_dir_all(&dest).unwrap();
        }
    }

    #[test]
    fn missing_end_marker_is_corrupt() {
        let mut tar = Raw::new().file("f", b"data").finish();
        tar.truncate(tar.len() - 1024);
        expect_err(
            "nomarker",
            &tar,
            is_corrupt,
            &["end-of-archive marker"],
            &[],
        );
    }

    #[test]
    fn corrupt_header_and_gzip_crc_are_errors() {
        let mut tar = Raw::new().file("f", b"data").file("g", b"more").finish();
        tar[1024 + 100] ^= 0x55; // mode field of the second header
        expect_err("cksum", &tar, is_corrupt, &["checksum"], &[]);

        let tar = Raw::new().file("f", b"data").finish();
        let mut gz = gzip(&tar);
        let n = gz.len();
        gz[n - 8] ^= 0xff; // CRC32 in the gzip trailer
        let case = Case::new("crc", &gz);
        let err = case.run().unwrap_err();
        assert!(matches!(err, TarballError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn not_a_tarball() {
        for (tag, bytes, word) in [
            (
                "random",
                pseudo_random(10_000, 42),
                "does not start with a tar header",
            ),
            ("empty", Vec::new(), "the file is empty"),
            ("short", b"hello".to_vec(), "too short"),
            (
                "gz-random",
                gzip(&pseudo_random(10_000, 1)),
                "decompressed data",
            ),
            ("gz-empty", gzip(b""), "decompressed data is empty"),
        ] {
            let case = Case::new(tag, &bytes);
            let err = case.run().unwrap_err();
            let text = err.to_string();
            println!("{tag}: {text}");
            assert!(
                matches!(err, TarballError::NotATarball { .. }),
                "{tag}: {err:?}"
            );
            assert!(text.contains(&case.archive.display().to_string()));
            assert!(text.contains(word), "{tag}: {text}");
        }
        // Gzip magic followed by garbage.
        let mut bytes = vec![0x1f, 0x8b];
        bytes.extend(pseudo_random(1000, 5));
        let err = Case::new("badgz", &bytes).run().unwrap_err();
        assert!(matches!(err, TarballError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn unreadable_tarball_is_an_io_error() {
        let root = scratch("unreadable");
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();

        let missing = root.path().join("missing.tar.gz");
        let err = extract(&missing, &dest, 1 << 30).unwrap_err();
        assert!(matches!(err, TarballError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.tar.gz"));

        // A directory opens fine on Linux but cannot be read.
        let err = extract(root.path(), &dest, 1 << 30).unwrap_err();
        assert!(matches!(err, TarballError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&root.path().display().to_string()));

        let locked = root.path().join("locked.tar.gz");
        fs::write(&locked, gzip(&Raw::new().file("f", b"1").finish())).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&locked).is_ok() {
            // Privileges that bypass file modes (root): a file no one can open instead,
            // a link to itself.
            fs::remove_file(&locked).unwrap();
            std::os::unix::fs::symlink("locked.tar.gz", &locked).unwrap();
        }
        let err = extract(&locked, &dest, 1 << 30).unwrap_err();
        assert!(matches!(err, TarballError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("locked.tar.gz"));
        assert_eq!(fs::read_dir(&dest).unwrap().count(), 0);
    }

    #[test]
    fn destination_must_exist_and_be_empty() {
        let case = Case::new("dest", &gzip(&Raw::new().file("f", b"1").finish()));
        fs::write(case.dest.join("already"), b"").unwrap();
        let err = case.run().unwrap_err();
        assert!(matches!(err, TarballError::Destination { .. }), "{err:?}");
        assert!(err.to_string().contains("not empty"));
        let err = extract(&case.archive, &case.root.path().join("nope"), 1 << 30).unwrap_err();
        assert!(matches!(err, TarballError::Destination { .. }), "{err:?}");
    }

    // ---------- limits ----------

    #[test]
    fn byte_limit() {
        let (tar, _) = release_tar();
        let case = Case::new("limit", &gzip(&tar));
        let err = extract(&case.archive, &case.dest, 100_000).unwrap_err();
        assert!(matches!(err, TarballError::LimitExceeded { .. }), "{err:?}");
        assert!(err.to_string().contains("limit of 100000 bytes"), "{err}");
        assert!(!case.dest.join("erts-13.1.5/bin/beam.smp").exists());

        // The limit counts file data plus hard-link targets: exactly enough is fine.
        let case = Case::new("limit-exact", &gzip(&tar));
        let stats = case.run().unwrap();
        let script_len = fs::metadata(case.dest.join("bin/tt")).unwrap().len();
        let needed = stats.bytes + script_len;
        let case = Case::new("limit-exact2", &gzip(&tar));
        extract(&case.archive, &case.dest, needed).unwrap();
        let case = Case::new("limit-exact3", &gzip(&tar));
        assert!(extract(&case.archive, &case.dest, needed - 1).is_err());
    }

    #[test]
    fn gzip_bomb_is_stopped_by_the_byte_limit() {
        // 64 MiB of zeros compresses to ~64 KiB.
        let mut raw = raw_header(b"bomb", b'0', 64 << 20, 0o644, b"").to_vec();
        raw.resize(512 + (64 << 20), 0);
        raw.extend_from_slice(&[0; 1024]);
        let case = Case::new("bomb", &gzip(&raw));
        let err = extract(&case.archive, &case.dest, 1 << 20).unwrap_err();
        assert!(matches!(err, TarballError::LimitExceeded { .. }), "{err:?}");
        assert!(!case.dest.join("bomb").exists());
    }

    #[test]
    fn entry_limit() {
        let mut raw = Raw::new();
        for i in 0..5 {
            raw = raw.file(&format!("f{i}"), b"1");
        }
        let case = Case::new("entries", &raw.finish());
        let err = extract_with_limits(&case.archive, &case.dest, 1 << 20, 3).unwrap_err();
        assert!(matches!(err, TarballError::LimitExceeded { .. }), "{err:?}");
        assert!(err.to_string().contains("entry 3 'f3'"), "{err}");
        let case2 = Case::new("entries-ok", &fs::read(&case.archive).unwrap());
        assert_eq!(
            extract_with_limits(&case2.archive, &case2.dest, 1 << 20, 5)
                .unwrap()
                .files,
            5
        );
    }

    #[test]
    fn huge_extension_header_is_refused() {
        let long = vec![b'a'; 2 << 20];
        let tar = Raw::new()
            .member(b"././@LongLink", b'L', 0o644, b"", &long)
            .file("x", b"1")
            .finish();
        expect_err("longname-bomb", &tar, is_limit, &["extension headers"], &[]);
    }

    // ---------- a real `rebar3 tar` ----------

    #[test]
    fn real_rebar3_tarball() {
        if which("rebar3").is_none() || which("erl").is_none() {
            skip!("rebar3 and/or erl not found on PATH");
        }
        let root = scratch("rebar3");
        let app = root.path().join("tt");
        fs::create_dir_all(app.join("src")).unwrap();
        fs::write(
            app.join("rebar.config"),
            "{erl_opts, [debug_info]}.\n{deps, []}.\n\
             {relx, [{release, {tt, \"0.1.0\"}, [tt]}, {mode, prod}, {include_erts, true}]}.\n",
        )
        .unwrap();
        fs::write(
            app.join("src/tt.app.src"),
            "{application, tt, [{description, \"t\"}, {vsn, \"0.1.0\"}, {registered, []},\n\
             {applications, [kernel, stdlib]}, {env, []}, {modules, []}]}.\n",
        )
        .unwrap();
        fs::write(
            app.join("src/tt.erl"),
            "-module(tt).\n-export([hello/0]).\nhello() -> world.\n",
        )
        .unwrap();
        let out = beambake_testkit::output(
            Command::new("rebar3")
                .arg("tar")
                .current_dir(&app)
                .env("HOME", root.path()),
        );
        assert!(
            out.status.success(),
            "rebar3 tar failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rel = app.join("_build/default/rel/tt");
        let tarball = rel.join("tt-0.1.0.tar.gz");
        assert!(looks_like_tarball(&tarball).unwrap());
        let dest = root.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let stats = extract(&tarball, &dest, 1 << 30).unwrap();
        println!("rebar3 tarball: {stats:?}");

        let got = snapshot(&dest);
        for top in ["bin", "lib", "releases"] {
            assert!(matches!(got.get(top), Some(Want::Dir)), "{top} missing");
        }
        assert!(got.keys().any(|k| k.starts_with("erts-")));
        // Member names of the archive, read independently of our extractor.
        let gz = MultiGzDecoder::new(File::open(&tarball).unwrap());
        let mut members: Vec<String> = tar::Archive::new(gz)
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                p.trim_start_matches("./").trim_end_matches('/').to_string()
            })
            .collect();
        members.sort();
        members.dedup();
        let mut extracted: Vec<String> = got
            .iter()
            .filter(|(_, w)| !matches!(w, Want::Dir))
            .map(|(k, _)| k.clone())
            .collect();
        extracted.sort();
        let members: Vec<String> = members
            .into_iter()
            .filter(|m| !matches!(got.get(m), Some(Want::Dir)))
            .collect();
        assert_eq!(extracted, members);

        // Every extracted file or link matches the assembled release directory,
        // except the top-level releases/<name>.rel that relx adds to the tarball only.
        let mut compared = 0;
        for (path, want) in &got {
            let src = rel.join(path);
            let meta = match fs::symlink_metadata(&src) {
                Ok(m) => m,
                Err(_) => {
                    assert_eq!(
                        path,
                        "releases/tt.rel",
                        "{path} is not in {}",
                        rel.display()
                    );
                    continue;
                }
            };
            match want {
                Want::Dir => assert!(meta.is_dir(), "{path}"),
                Want::Link(t) => {
                    assert!(meta.file_type().is_symlink(), "{path}");
                    assert_eq!(fs::read_link(&src).unwrap().to_string_lossy(), t.as_str());
                }
                Want::File(mode, data) => {
                    assert!(meta.file_type().is_file(), "{path}");
                    assert_eq!(*mode, meta.mode() & 0o755, "mode of {path}");
                    assert!(fs::read(&src).unwrap() == *data, "content of {path}");
                }
            }
            compared += 1;
        }
        assert!(compared > 100, "only {compared} paths compared");
    }
}
