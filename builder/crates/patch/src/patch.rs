//! Unified-diff patches: parsing them, and applying, checking, reverting and inspecting a
//! series of them against a source tree, all or nothing.
//!
//! Owns:
//! - parsing the unified diffs that `diff -u`, `diff -ruN`, `git diff` and
//!   `git format-patch` write ([`Patch::parse`], [`Patch::parse_str`]): a free-text header
//!   before the first file (kept in [`Patch::header`]), `diff --git` sections with
//!   `index`, `new file mode`, `deleted file mode`, `old mode`/`new mode` and renames,
//!   `/dev/null` and epoch timestamps for created and deleted files, timestamps after the
//!   file names, C-quoted names, `\ No newline at end of file`, and a trailing
//!   `-- ` mail signature. A malformed patch is an [`Error::Parse`] naming the patch file
//!   and line;
//! - patch series: a directory whose `series` file lists patch files in order
//!   ([`Series::load`]; quilt's `-pN` after a name is honoured);
//! - applying a series in memory and then writing it out all or nothing ([`apply`],
//!   [`check`], [`revert`], [`status`]), each hunk exactly where its header says, with a
//!   per-patch, per-file [`Report`] of what was done.
//!
//! Must not: run `patch`, `git` or any other program; know where beambake keeps its patch
//! sets or what they are for; write anywhere but below the tree root (absolute names,
//! `..` and paths through symlinks are refused, and no symlink is followed or patched);
//! leave a tree half-patched because a hunk did not apply; write `.orig` or `.rej` files;
//! move a hunk from the line its header names or ignore any of its context (no offset,
//! no fuzz: a hunk that does not fit where it says is an error to fix in the patch).
//!
//! # Why not `git apply` or `diffy`
//! `git apply` places a hunk at an offset without saying so (`-v` shows it), is not among
//! the packages xtask installs, and answers for a whole invocation where we need each
//! patch of a series: which leading run is already applied, which patch conflicts
//! (`status`).
//! `diffy` parses and applies single-file patches, but it knows nothing of git's extended
//! headers (created/deleted files, modes, renames), strip levels, timestamps, multi-file
//! patches with a free-text header, or where in the patch file a problem is. Wrapping it
//! would leave only its hunk-line parser in use. Contents are bytes, not `str`: Erlang/OTP
//! still has Latin-1 sources.
//!
//! # Matching
//! Each hunk's context and removed lines must be in the file at the line its `@@` header
//! names, after the lines the hunk before it changed. As diff writes them, a hunk with
//! less leading than trailing context at line 1 must be at the top of the file, and one
//! with less trailing than leading context at its end. A hunk that does not match fails
//! with [`HunkProblem::NotFound`], or [`HunkProblem::NotExact`] naming the nearest line
//! where it would have matched.
//!
//! # Already applied
//! A series is applied in order, each patch seeing the results of the ones before.
//! Before that, the longest leading run of patches whose reverses apply from the last of
//! them back to the first is taken as already applied, so a fully or partly applied
//! series is recognised even when later patches touch the same lines as earlier ones. A
//! later patch that does not apply but whose reverse does is also reported as already
//! applied. [`revert`] is [`apply`] of the reversed patches in reverse order, so the same
//! holds for patches that are not applied.
//!
//! # Writing
//! Nothing is written unless every hunk of every patch applies. Then each changed file is
//! written to a temporary file in its own directory and renamed over the old one, keeping
//! the old file's permission bits (and owner, where allowed); created files get missing
//! parent directories and mode 0644 (or the mode a git header gives); deleted files are
//! removed together with directories this leaves empty (as GNU patch and git do), so
//! apply then revert gives back the same tree. Git mode changes set or clear the
//! executable bits the way git does.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// Mode of files that a patch creates without saying which (GNU patch: 0666 & ~umask).
const DEFAULT_NEW_FILE_MODE: u32 = 0o644;
/// Line numbers and counts above this in an `@@` header are refused as malformed.
const MAX_LINE_NUMBER: usize = 1 << 40;

// ---------------------------------------------------------------------------------------
// Errors

/// Everything that can go wrong parsing, checking, applying or reverting patches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The patch file itself is malformed.
    #[error("{patch}:{line}: {problem}")]
    Parse {
        patch: String,
        line: usize,
        problem: ParseProblem,
    },
    /// The `series` file lists a patch that is not there.
    #[error("{}:{line}: lists `{name}`, but {} does not exist", series.display(), path.display())]
    MissingPatch {
        series: PathBuf,
        line: usize,
        name: String,
        path: PathBuf,
    },
    #[error("{}:{line}: {message}", series.display())]
    SeriesSyntax {
        series: PathBuf,
        line: usize,
        message: String,
    },
    /// A hunk found no place in the file.
    #[error("{patch}: {file}: hunk #{hunk} ({header}) does not apply ({reason})")]
    Hunk {
        patch: String,
        file: String,
        hunk: usize,
        header: String,
        reason: HunkProblem,
    },
    /// A file-level problem: missing file, file to create already there, and the like.
    #[error("{patch}: {file}: {problem}")]
    File {
        patch: String,
        file: String,
        problem: FileProblem,
    },
}

impl Error {
    /// Whether this error means "the patch does not fit the tree" (so its reverse is worth
    /// trying), as opposed to a broken patch, an unsafe path or an I/O failure.
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::Hunk { .. } => true,
            Error::File { problem, .. } => matches!(
                problem,
                FileProblem::Missing
                    | FileProblem::AlreadyExists
                    | FileProblem::DeleteLeftovers { .. }
                    | FileProblem::ModeMismatch { .. }
                    | FileProblem::RenameTargetExists
            ),
            _ => false,
        }
    }
}

/// What is wrong with a patch file, at the line [`Error::Parse`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseProblem {
    #[error("no file changes found (expected `--- `/`+++ ` lines or `diff --git`)")]
    Empty,
    #[error("hunk before any file header (`--- `/`+++ ` or `diff --git`)")]
    HunkBeforeFile,
    #[error("malformed hunk header `{0}` (expected `@@ -LINE,COUNT +LINE,COUNT @@`)")]
    BadHunkHeader(String),
    #[error("hunk #{hunk} ({header}): unexpected line `{text}` (hunk lines start with ' ', '-', '+' or '\\')")]
    Garbage {
        hunk: usize,
        header: String,
        text: String,
    },
    #[error("hunk #{hunk} ({header}): more {what} lines than its header counts")]
    TooManyLines {
        hunk: usize,
        header: String,
        what: &'static str,
    },
    #[error(
        "hunk #{hunk} ({header}): the patch ends with {old} old and {new} new lines of it missing"
    )]
    Truncated {
        hunk: usize,
        header: String,
        old: usize,
        new: usize,
    },
    #[error(
        "hunk #{hunk} ({header}): `\\ No newline at end of file` on a line that is not the last"
    )]
    NoNewlineNotLast { hunk: usize, header: String },
    #[error("hunk #{hunk} ({header}) has no lines")]
    EmptyHunk { hunk: usize, header: String },
    #[error("`\\ No newline at end of file` does not follow a hunk line")]
    StrayNoNewline,
    #[error("hunk #{hunk} ({header}) overlaps or comes before the hunk above it")]
    MisorderedHunks { hunk: usize, header: String },
    #[error("`--- ` line not followed by a `+++ ` line")]
    MissingPlusPlus,
    #[error("{0}: file header without hunks")]
    NoHunks(String),
    #[error("cannot read the file name(s) in `{0}`")]
    BadFileNames(String),
    #[error("malformed mode in `{0}`")]
    BadMode(String),
    #[error("{file}: {what}")]
    Inconsistent { file: String, what: &'static str },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("unexpected text between file sections: `{0}`")]
    UnexpectedText(String),
}

/// Why a hunk did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HunkProblem {
    #[error("context not found within the file")]
    NotFound,
    /// The hunk's context and removed lines are in the file, but not where its header says.
    #[error("matches only at line {at}, offset {offset} from its header; hunks must apply with offset 0")]
    NotExact { at: usize, offset: isize },
}

/// File-level reasons a patch does not apply (or must not be applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    #[error("file to patch does not exist")]
    Missing,
    #[error("file to create already exists")]
    AlreadyExists,
    #[error("rename target already exists")]
    RenameTargetExists,
    #[error(
        "not deleting the file: its content differs from the patch ({lines} {} would remain)",
        if *lines == 1 { "line" } else { "lines" }
    )]
    DeleteLeftovers { lines: usize },
    #[error("mode change expects mode {expected:o}, but the file has mode {found:o}")]
    ModeMismatch { expected: u32, found: u32 },
    #[error("not a regular file")]
    NotRegular,
    #[error("a directory on the path is a symlink or not a directory")]
    BadParent,
    #[error("unsafe path (absolute, empty or with `..`)")]
    UnsafePath,
    #[error("cannot strip {strip} leading path components")]
    Strip { strip: usize },
}

// ---------------------------------------------------------------------------------------
// Patch model

/// One patch file: its free-text header and the files it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Name used in messages: the file name, or the name as listed in a `series` file.
    pub name: String,
    /// Where the patch was read from, if it was read from a file.
    pub path: Option<PathBuf>,
    /// Everything before the first file section (what the patch changes and why), with
    /// a final newline; empty if there is none.
    pub header: String,
    pub files: Vec<FilePatch>,
    /// Strip level for this patch (quilt's `-pN` in a series file); `None`: use
    /// [`Options::strip`].
    pub strip: Option<usize>,
}

/// What a file section does to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Modify,
    Create,
    Delete,
    /// git rename (possibly with hunks).
    Rename,
}

/// The changes a patch makes to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// Old name as written (before stripping); `None` for `/dev/null`.
    pub old_path: Option<String>,
    /// New name as written (before stripping); `None` for `/dev/null`.
    pub new_path: Option<String>,
    /// From git headers (`old mode`, `deleted file mode`).
    pub old_mode: Option<u32>,
    /// From git headers (`new mode`, `new file mode`).
    pub new_mode: Option<u32>,
    pub kind: FileKind,
    /// Whether the section is a `diff --git` one.
    pub git: bool,
    pub hunks: Vec<Hunk>,
    /// Line of the patch file where the section starts.
    pub line: usize,
}

/// One `@@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    pub old_start: usize,
    pub old_count: usize,
    pub new_start: usize,
    pub new_count: usize,
    /// Text after the closing `@@` (diff's function or section name); may be empty.
    pub section: String,
    pub lines: Vec<HunkLine>,
    /// Line of the patch file with the `@@` header.
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Context,
    Delete,
    Insert,
}

/// A hunk line; `text` ends in `\n` unless it was marked `\ No newline at end of file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HunkLine {
    pub kind: LineKind,
    pub text: Vec<u8>,
}

impl Hunk {
    /// The `@@ -a,b +c,d @@` part of the header, written the way diff writes it.
    pub fn header(&self) -> String {
        fn range(start: usize, count: usize) -> String {
            if count == 1 {
                start.to_string()
            } else {
                format!("{start},{count}")
            }
        }
        format!(
            "@@ -{} +{} @@",
            range(self.old_start, self.old_count),
            range(self.new_start, self.new_count)
        )
    }

    /// 0-based index of the first old line (for an empty old side: of the line the new
    /// lines go before).
    fn old_start0(&self) -> usize {
        if self.old_count == 0 {
            self.old_start
        } else {
            self.old_start.saturating_sub(1)
        }
    }

    /// Leading and trailing context line counts.
    fn context_sizes(&self) -> (usize, usize) {
        let is_ctx = |l: &&HunkLine| l.kind == LineKind::Context;
        let prefix = self.lines.iter().take_while(is_ctx).count();
        if prefix == self.lines.len() {
            return (prefix, prefix);
        }
        let suffix = self.lines.iter().rev().take_while(is_ctx).count();
        (prefix, suffix)
    }

    fn reversed(&self) -> Hunk {
        let mut lines = Vec::with_capacity(self.lines.len());
        let mut run: Vec<HunkLine> = Vec::new();
        let flush = |run: &mut Vec<HunkLine>, lines: &mut Vec<HunkLine>| {
            // Keep diff's order within a change: deletions first.
            run.sort_by_key(|l| l.kind != LineKind::Delete);
            lines.append(run);
        };
        for l in &self.lines {
            let kind = match l.kind {
                LineKind::Context => {
                    flush(&mut run, &mut lines);
                    lines.push(l.clone());
                    continue;
                }
                LineKind::Delete => LineKind::Insert,
                LineKind::Insert => LineKind::Delete,
            };
            run.push(HunkLine {
                kind,
                text: l.text.clone(),
            });
        }
        flush(&mut run, &mut lines);
        Hunk {
            old_start: self.new_start,
            old_count: self.new_count,
            new_start: self.old_start,
            new_count: self.old_count,
            section: self.section.clone(),
            lines,
            line: self.line,
        }
    }
}

impl FilePatch {
    /// The name to show for this section before stripping: the new name, else the old.
    pub fn display_name(&self) -> &str {
        self.new_path
            .as_deref()
            .or(self.old_path.as_deref())
            .unwrap_or("/dev/null")
    }

    fn reversed(&self) -> FilePatch {
        FilePatch {
            old_path: self.new_path.clone(),
            new_path: self.old_path.clone(),
            old_mode: self.new_mode,
            new_mode: self.old_mode,
            kind: match self.kind {
                FileKind::Create => FileKind::Delete,
                FileKind::Delete => FileKind::Create,
                k => k,
            },
            git: self.git,
            hunks: self.hunks.iter().map(Hunk::reversed).collect(),
            line: self.line,
        }
    }
}

impl Patch {
    /// Reads and parses a patch file; its [`Patch::name`] is the file name.
    pub fn parse(path: &Path) -> Result<Patch, Error> {
        let bytes = fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut patch = Parser::new(&path.display().to_string(), &bytes).parse()?;
        patch.name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        patch.path = Some(path.to_owned());
        Ok(patch)
    }

    /// Parses patch text; `name` is used in messages.
    pub fn parse_str(name: &str, text: &str) -> Result<Patch, Error> {
        Patch::parse_bytes(name, text.as_bytes())
    }

    /// Parses patch bytes (file contents need not be UTF-8; file names must be).
    pub fn parse_bytes(name: &str, bytes: &[u8]) -> Result<Patch, Error> {
        Parser::new(name, bytes).parse()
    }

    /// The patch that undoes this one.
    pub fn reversed(&self) -> Patch {
        Patch {
            name: self.name.clone(),
            path: self.path.clone(),
            header: self.header.clone(),
            files: self.files.iter().map(FilePatch::reversed).collect(),
            strip: self.strip,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    patch: String,
    lines: Vec<&'a [u8]>,
    pos: usize,
}

/// Extended-header facts of a `diff --git` section.
#[derive(Default)]
struct GitHeader {
    names: String,
    old_mode: Option<u32>,
    new_mode: Option<u32>,
    created: bool,
    deleted: bool,
    rename_from: Option<String>,
    rename_to: Option<String>,
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// A line quoted for an error message: lossy, bounded.
fn snippet(l: &[u8]) -> String {
    let s = String::from_utf8_lossy(trim_cr(l));
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.into_owned()
    }
}

impl<'a> Parser<'a> {
    fn new(patch: &str, bytes: &'a [u8]) -> Parser<'a> {
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        if bytes.ends_with(b"\n") {
            lines.pop();
        }
        Parser {
            patch: patch.to_owned(),
            lines,
            pos: 0,
        }
    }

    fn err(&self, index: usize, problem: ParseProblem) -> Error {
        Error::Parse {
            patch: self.patch.clone(),
            line: index + 1,
            problem,
        }
    }

    fn starts(&self, i: usize, prefix: &[u8]) -> bool {
        self.lines.get(i).is_some_and(|l| l.starts_with(prefix))
    }

    fn is_section_start(&self, i: usize) -> bool {
        self.starts(i, b"diff --git ") || (self.starts(i, b"--- ") && self.starts(i + 1, b"+++ "))
    }

    /// Line `i` without its `\r`, as UTF-8 (needed where file names are read).
    fn text(&self, i: usize) -> Result<&'a str, Error> {
        let l = trim_cr(self.lines.get(i).copied().unwrap_or_default());
        std::str::from_utf8(l).map_err(|_| self.err(i, ParseProblem::BadFileNames(snippet(l))))
    }

    fn parse(mut self) -> Result<Patch, Error> {
        // The free-text header.
        while self.pos < self.lines.len() && !self.is_section_start(self.pos) {
            if self.starts(self.pos, b"@@ -") {
                return Err(self.err(self.pos, ParseProblem::HunkBeforeFile));
            }
            self.pos += 1;
        }
        let mut header_end = self.pos;
        while header_end > 0 && self.is_section_preamble(self.lines[header_end - 1]) {
            header_end -= 1;
        }
        let mut header = Vec::new();
        for l in &self.lines[..header_end] {
            header.extend_from_slice(l);
            header.push(b'\n');
        }
        let header = String::from_utf8_lossy(&header).into_owned();

        let mut files = Vec::new();
        while self.pos < self.lines.len() {
            let l = trim_cr(self.lines[self.pos]);
            if self.is_section_start(self.pos) {
                files.push(self.section()?);
            } else if l == b"-- " || l == b"--" {
                // A mail signature (git format-patch): skip to the next section, if any.
                self.pos += 1;
                while self.pos < self.lines.len() && !self.is_section_start(self.pos) {
                    self.pos += 1;
                }
            } else if l.iter().all(u8::is_ascii_whitespace) || self.is_section_preamble(l) {
                self.pos += 1;
            } else if l.starts_with(b"Binary files ") || l.starts_with(b"GIT binary patch") {
                return Err(self.err(self.pos, ParseProblem::Unsupported("binary patch".into())));
            } else if l.starts_with(b"@@") {
                return Err(self.err(self.pos, ParseProblem::HunkBeforeFile));
            } else {
                return Err(self.err(self.pos, ParseProblem::UnexpectedText(snippet(l))));
            }
        }
        if files.is_empty() {
            return Err(self.err(self.lines.len().saturating_sub(1), ParseProblem::Empty));
        }
        Ok(Patch {
            name: self.patch.clone(),
            path: None,
            header,
            files,
            strip: None,
        })
    }

    /// Lines that `diff -r`, svn and the like put before or between file sections.
    fn is_section_preamble(&self, l: &[u8]) -> bool {
        let l = trim_cr(l);
        (l.starts_with(b"diff ") && !l.starts_with(b"diff --git "))
            || l.starts_with(b"Only in ")
            || l.starts_with(b"Index: ")
            || l.starts_with(b"Common subdirectories: ")
            || (l.len() >= 4 && l.iter().all(|&b| b == b'='))
    }

    fn section(&mut self) -> Result<FilePatch, Error> {
        let start = self.pos;
        let mut git = None;
        if self.starts(self.pos, b"diff --git ") {
            git = Some(self.git_header()?);
        }
        let mut dashes = None;
        if self.starts(self.pos, b"--- ") {
            if !self.starts(self.pos + 1, b"+++ ") {
                return Err(self.err(self.pos, ParseProblem::MissingPlusPlus));
            }
            let old = self.name_line(self.pos, 4)?;
            let new = self.name_line(self.pos + 1, 4)?;
            dashes = Some((old, new));
            self.pos += 2;
        }
        let mut hunks: Vec<Hunk> = Vec::new();
        while self.starts(self.pos, b"@@") {
            let hunk = self.hunk(hunks.len() + 1)?;
            if let Some(prev) = hunks.last() {
                if hunk.old_start0() < prev.old_start0() + prev.old_count {
                    return Err(self.err(
                        hunk.line - 1,
                        ParseProblem::MisorderedHunks {
                            hunk: hunks.len() + 1,
                            header: hunk.header(),
                        },
                    ));
                }
            }
            hunks.push(hunk);
        }
        // A hunk line right after the last hunk means its counts are too small.
        if let (Some(last), Some(l)) = (hunks.last(), self.lines.get(self.pos)) {
            let what = match l.first() {
                Some(b' ') => Some("context"),
                Some(b'+') => Some("added"),
                Some(b'-')
                    if !self.is_section_start(self.pos)
                        && trim_cr(l) != b"-- "
                        && trim_cr(l) != b"--" =>
                {
                    Some("removed")
                }
                Some(b'\\') => return Err(self.err(self.pos, ParseProblem::StrayNoNewline)),
                _ => None,
            };
            if let Some(what) = what {
                return Err(self.err(
                    self.pos,
                    ParseProblem::TooManyLines {
                        hunk: hunks.len(),
                        header: last.header(),
                        what,
                    },
                ));
            }
        }

        let mut fp = FilePatch {
            old_path: None,
            new_path: None,
            old_mode: None,
            new_mode: None,
            kind: FileKind::Modify,
            git: git.is_some(),
            hunks,
            line: start + 1,
        };
        match (&git, dashes) {
            (_, Some(((old, old_ts), (new, new_ts)))) => {
                if git.is_none() && fp.hunks.is_empty() {
                    let name = new.clone().or(old.clone()).unwrap_or_default();
                    return Err(self.err(start, ParseProblem::NoHunks(name)));
                }
                let epoch_created = old_ts.as_deref().is_some_and(is_epoch)
                    && fp.hunks.iter().all(|h| h.old_count == 0);
                let epoch_deleted = new_ts.as_deref().is_some_and(is_epoch)
                    && fp.hunks.iter().all(|h| h.new_count == 0);
                fp.old_path = if git.is_none() && epoch_created {
                    None
                } else {
                    old
                };
                fp.new_path = if git.is_none() && epoch_deleted {
                    None
                } else {
                    new
                };
            }
            (Some(g), None) => {
                let (a, b) =
                    split_git_names(&g.names, g.rename_from.as_deref(), g.rename_to.as_deref())
                        .ok_or_else(|| {
                            self.err(start, ParseProblem::BadFileNames(g.names.clone()))
                        })?;
                fp.old_path = Some(a);
                fp.new_path = Some(b);
            }
            (None, None) => return Err(self.err(start, ParseProblem::MissingPlusPlus)),
        }
        if let Some(g) = &git {
            fp.old_mode = g.old_mode;
            fp.new_mode = g.new_mode;
            if g.created {
                fp.old_path = None;
            }
            if g.deleted {
                fp.new_path = None;
            }
        }
        let file = fp.display_name().to_owned();
        let inconsistent = |what| {
            self.err(
                start,
                ParseProblem::Inconsistent {
                    file: file.clone(),
                    what,
                },
            )
        };
        fp.kind = match (&fp.old_path, &fp.new_path) {
            (None, None) => return Err(inconsistent("both file names are /dev/null")),
            (None, Some(_)) => FileKind::Create,
            (Some(_), None) => FileKind::Delete,
            (Some(_), Some(_)) if git.as_ref().is_some_and(|g| g.rename_from.is_some()) => {
                FileKind::Rename
            }
            _ => FileKind::Modify,
        };
        match fp.kind {
            FileKind::Create if fp.hunks.iter().any(|h| h.old_count != 0) || fp.hunks.len() > 1 => {
                return Err(inconsistent(
                    "creates the file, but a hunk expects existing lines",
                ));
            }
            FileKind::Delete if fp.hunks.iter().any(|h| h.new_count != 0) => {
                return Err(inconsistent(
                    "deletes the file, but a hunk leaves lines in it",
                ));
            }
            _ => {}
        }
        for mode in [fp.old_mode, fp.new_mode].into_iter().flatten() {
            match mode & 0o170000 {
                0o100000 | 0 => {}
                0o120000 => {
                    return Err(self.err(
                        start,
                        ParseProblem::Unsupported(format!("{file}: symlinks")),
                    ))
                }
                _ => {
                    return Err(self.err(
                        start,
                        ParseProblem::Unsupported(format!("{file}: file type {mode:o}")),
                    ))
                }
            }
        }
        Ok(fp)
    }

    fn git_header(&mut self) -> Result<GitHeader, Error> {
        let first = self.text(self.pos)?;
        let mut g = GitHeader {
            names: first["diff --git ".len()..].to_owned(),
            ..GitHeader::default()
        };
        self.pos += 1;
        while self.pos < self.lines.len() {
            let i = self.pos;
            let raw = trim_cr(self.lines[i]);
            let field = |prefix: &str| raw.strip_prefix(prefix.as_bytes()).is_some();
            let mode = |this: &Self, prefix: &str| -> Result<u32, Error> {
                let l = this.text(i)?;
                u32::from_str_radix(l[prefix.len()..].trim(), 8)
                    .map_err(|_| this.err(i, ParseProblem::BadMode(l.to_owned())))
            };
            if field("old mode ") {
                g.old_mode = Some(mode(self, "old mode ")?);
            } else if field("new mode ") {
                g.new_mode = Some(mode(self, "new mode ")?);
            } else if field("deleted file mode ") {
                g.old_mode = Some(mode(self, "deleted file mode ")?);
                g.deleted = true;
            } else if field("new file mode ") {
                g.new_mode = Some(mode(self, "new file mode ")?);
                g.created = true;
            } else if field("rename from ") {
                g.rename_from = Some(self.git_name(i, "rename from ")?);
            } else if field("rename to ") {
                g.rename_to = Some(self.git_name(i, "rename to ")?);
            } else if field("copy from ") || field("copy to ") {
                return Err(self.err(i, ParseProblem::Unsupported("git copies".into())));
            } else if field("GIT binary patch") || field("Binary files ") {
                return Err(self.err(i, ParseProblem::Unsupported("binary patch".into())));
            } else if field("index ") || field("similarity index ") || field("dissimilarity index ")
            {
                // Informational only.
            } else {
                break;
            }
            self.pos += 1;
        }
        if g.rename_from.is_some() != g.rename_to.is_some() {
            return Err(self.err(
                self.pos.saturating_sub(1),
                ParseProblem::Inconsistent {
                    file: g.names.clone(),
                    what: "`rename from` without `rename to` or the other way round",
                },
            ));
        }
        Ok(g)
    }

    fn git_name(&self, i: usize, prefix: &str) -> Result<String, Error> {
        let l = self.text(i)?;
        let rest = &l[prefix.len()..];
        if rest.starts_with('"') {
            match unquote(rest) {
                Some((name, tail)) if tail.trim().is_empty() => Ok(name),
                _ => Err(self.err(i, ParseProblem::BadFileNames(l.to_owned()))),
            }
        } else {
            Ok(rest.to_owned())
        }
    }

    /// Name and timestamp of a `--- `/`+++ ` line; `None` name for `/dev/null`.
    #[allow(clippy::type_complexity)]
    fn name_line(&self, i: usize, skip: usize) -> Result<(Option<String>, Option<String>), Error> {
        let l = self.text(i)?;
        let rest = &l[skip..];
        let bad = || self.err(i, ParseProblem::BadFileNames(l.to_owned()));
        let (name, ts) = if rest.starts_with('"') {
            let (name, tail) = unquote(rest).ok_or_else(bad)?;
            let tail = tail.trim();
            (name, (!tail.is_empty()).then(|| tail.to_owned()))
        } else {
            let (name, ts) = split_timestamp(rest);
            (name.to_owned(), ts.map(str::to_owned))
        };
        if name.is_empty() {
            return Err(bad());
        }
        Ok(((name != "/dev/null").then_some(name), ts))
    }

    fn hunk(&mut self, number: usize) -> Result<Hunk, Error> {
        let at = self.pos;
        let raw = trim_cr(self.lines[at]);
        let bad = || self.err(at, ParseProblem::BadHunkHeader(snippet(raw)));
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        let (old_start, old_count, new_start, new_count, section) =
            parse_hunk_header(text).ok_or_else(bad)?;
        if (old_count > 0 && old_start == 0) || (new_count > 0 && new_start == 0) {
            return Err(bad());
        }
        let mut hunk = Hunk {
            old_start,
            old_count,
            new_start,
            new_count,
            section: section.to_owned(),
            lines: Vec::new(),
            line: at + 1,
        };
        let header = hunk.header();
        if old_count == 0 && new_count == 0 {
            return Err(self.err(
                at,
                ParseProblem::EmptyHunk {
                    hunk: number,
                    header,
                },
            ));
        }
        let (mut old, mut new) = (old_count, new_count);
        self.pos += 1;
        while old > 0 || new > 0 {
            let Some(&l) = self.lines.get(self.pos) else {
                return Err(self.err(
                    self.lines.len().saturating_sub(1),
                    ParseProblem::Truncated {
                        hunk: number,
                        header,
                        old,
                        new,
                    },
                ));
            };
            let (kind, body): (LineKind, &[u8]) = match l.first() {
                // A context line whose lone space a mailer ate.
                None => (LineKind::Context, b""),
                Some(b'\r') if l.len() == 1 => (LineKind::Context, b"\r"),
                Some(b' ') => (LineKind::Context, &l[1..]),
                Some(b'-') => (LineKind::Delete, &l[1..]),
                Some(b'+') => (LineKind::Insert, &l[1..]),
                Some(b'\\') => {
                    self.no_newline(&mut hunk)?;
                    continue;
                }
                Some(_) => {
                    return Err(self.err(
                        self.pos,
                        ParseProblem::Garbage {
                            hunk: number,
                            header,
                            text: snippet(l),
                        },
                    ))
                }
            };
            let too_many = match kind {
                LineKind::Context if old == 0 || new == 0 => Some("context"),
                LineKind::Delete if old == 0 => Some("removed"),
                LineKind::Insert if new == 0 => Some("added"),
                _ => None,
            };
            if let Some(what) = too_many {
                return Err(self.err(
                    self.pos,
                    ParseProblem::TooManyLines {
                        hunk: number,
                        header,
                        what,
                    },
                ));
            }
            if kind != LineKind::Insert {
                old -= 1;
            }
            if kind != LineKind::Delete {
                new -= 1;
            }
            let mut text = body.to_vec();
            text.push(b'\n');
            hunk.lines.push(HunkLine { kind, text });
            self.pos += 1;
        }
        if self.starts(self.pos, b"\\") {
            self.no_newline(&mut hunk)?;
        }
        // Only the last line of each side may lack its newline.
        for side in [LineKind::Insert, LineKind::Delete] {
            let lines: Vec<&HunkLine> = hunk.lines.iter().filter(|l| l.kind != side).collect();
            if lines.iter().rev().skip(1).any(|l| !l.text.ends_with(b"\n")) {
                return Err(self.err(
                    at,
                    ParseProblem::NoNewlineNotLast {
                        hunk: number,
                        header,
                    },
                ));
            }
        }
        Ok(hunk)
    }

    /// Applies a `\ No newline at end of file` line to the hunk line before it.
    fn no_newline(&mut self, hunk: &mut Hunk) -> Result<(), Error> {
        match hunk.lines.last_mut() {
            Some(l) if l.text.ends_with(b"\n") => {
                l.text.pop();
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.err(self.pos, ParseProblem::StrayNoNewline)),
        }
    }
}

/// `@@ -a[,b] +c[,d] @@[ section]` → (a, b, c, d, section).
fn parse_hunk_header(s: &str) -> Option<(usize, usize, usize, usize, &str)> {
    fn number(s: &str) -> Option<(usize, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n: usize = s[..end].parse().ok()?;
        (n <= MAX_LINE_NUMBER).then_some((n, &s[end..]))
    }
    fn range(s: &str) -> Option<(usize, usize, &str)> {
        let (start, rest) = number(s)?;
        match rest.strip_prefix(',') {
            Some(rest) => {
                let (count, rest) = number(rest)?;
                Some((start, count, rest))
            }
            None => Some((start, 1, rest)),
        }
    }
    let rest = s.strip_prefix("@@ -")?;
    let (a, b, rest) = range(rest)?;
    let rest = rest.strip_prefix(" +")?;
    let (c, d, rest) = range(rest)?;
    let rest = rest.strip_prefix(" @@")?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some((a, b, c, d, rest.trim_start()))
}

/// Splits `name<TAB>timestamp` (or `name timestamp` when the timestamp looks like one).
fn split_timestamp(s: &str) -> (&str, Option<&str>) {
    if let Some(tab) = s.find('\t') {
        let ts = s[tab + 1..].trim();
        return (&s[..tab], (!ts.is_empty()).then_some(ts));
    }
    for (i, _) in s.match_indices(' ') {
        let ts = s[i + 1..].trim();
        if looks_like_timestamp(ts) {
            return (s[..i].trim_end(), Some(ts));
        }
    }
    (s.trim_end(), None)
}

fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b' ') | Some(b'T'))
        && digits(11..13)
        && b.get(13) == Some(&b':')
}

/// Whether a diff timestamp (`1970-01-01 00:00:00.000000000 +0000`, in any zone) is the
/// Unix epoch, which `diff -N` writes for a file that does not exist.
fn is_epoch(ts: &str) -> bool {
    fn parse(ts: &str) -> Option<i64> {
        let mut parts = ts.split_whitespace();
        let date = parts.next()?;
        let time = parts.next()?;
        let zone = parts.next();
        let mut d = date.split('-').map(|x| x.parse::<i64>());
        let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        if !frac.bytes().all(|c| c == b'0') {
            return None;
        }
        let mut t = hms.split(':').map(|x| x.parse::<i64>());
        let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
        let offset = match zone {
            Some(z) if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
                let hh: i64 = z.get(1..3)?.parse().ok()?;
                let mm: i64 = z.get(3..5)?.parse().ok()?;
                let o = hh * 3600 + mm * 60;
                if z.starts_with('-') {
                    -o
                } else {
                    o
                }
            }
            _ => 0,
        };
        // Days from civil (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        Some(days * 86400 + h * 3600 + mi * 60 + s - offset)
    }
    parse(ts) == Some(0)
}

/// Parses a C-quoted name as git writes it (`"a/b\tc"`); returns it and the rest.
fn unquote(s: &str) -> Option<(String, &str)> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'"' => return String::from_utf8(out).ok().map(|n| (n, &s[i + 1..])),
            b'\\' => {
                let c = *b.get(i + 1)?;
                i += 2;
                out.push(match c {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'a' => 7,
                    b'b' => 8,
                    b'f' => 12,
                    b'v' => 11,
                    b'0'..=b'7' => {
                        let digits = b.get(i - 1..i + 2)?;
                        if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                            return None;
                        }
                        i += 2;
                        digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0')) as u8
                    }
                    other => other,
                });
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    None
}

/// The two names of a `diff --git A B` line.
fn split_git_names(s: &str, from: Option<&str>, to: Option<&str>) -> Option<(String, String)> {
    if s.starts_with('"') {
        let (a, rest) = unquote(s)?;
        let rest = rest.trim_start();
        let b = if rest.starts_with('"') {
            let (b, tail) = unquote(rest)?;
            if !tail.trim().is_empty() {
                return None;
            }
            b
        } else {
            rest.to_owned()
        };
        return Some((a, b));
    }
    let strip1 = |n: &str| {
        n.split_once('/')
            .map_or(n.to_owned(), |(_, r)| r.to_owned())
    };
    for (i, _) in s.match_indices(' ') {
        let (a, b) = (&s[..i], &s[i + 1..]);
        let fits = match (from, to) {
            (Some(f), Some(t)) => {
                let prefix_ok = |n: &str, tail: &str| {
                    n.strip_suffix(tail)
                        .is_some_and(|p| p.is_empty() || p.ends_with('/'))
                };
                prefix_ok(a, f) && prefix_ok(b, t)
            }
            _ => a == b || strip1(a) == strip1(b),
        };
        if fits {
            return Some((a.to_owned(), b.to_owned()));
        }
    }
    // Names that differ (`git diff --no-index a b`): a lone space, else ` b/`.
    let split = match s.match_indices(' ').count() {
        1 => s.find(' '),
        _ => s.find(" b/"),
    }?;
    Some((s[..split].to_owned(), s[split + 1..].to_owned()))
}

// ---------------------------------------------------------------------------------------
// Series

/// A patch set: a directory with a `series` file naming its patches in order.
#[derive(Debug, Clone)]
pub struct Series {
    pub dir: PathBuf,
    pub patches: Vec<Patch>,
}

impl Series {
    /// Reads `dir/series` and parses every patch it lists. Blank lines and `#` comments
    /// are ignored; a name may be followed by `-pN`.
    pub fn load(dir: &Path) -> Result<Series, Error> {
        let series = dir.join("series");
        let text = fs::read_to_string(&series).map_err(|source| Error::Io {
            path: series.clone(),
            source,
        })?;
        let mut patches = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = match raw.find('#') {
                Some(h) if h == 0 || raw[..h].ends_with(char::is_whitespace) => &raw[..h],
                _ => raw,
            };
            let mut words = line.split_whitespace();
            let Some(name) = words.next() else { continue };
            let mut strip = None;
            for w in words {
                match w.strip_prefix("-p").and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => strip = Some(n),
                    None => {
                        return Err(Error::SeriesSyntax {
                            series: series.clone(),
                            line: i + 1,
                            message: format!("unknown option `{w}` after `{name}` (only -pN)"),
                        })
                    }
                }
            }
            let path = dir.join(name);
            if !path.is_file() {
                return Err(Error::MissingPatch {
                    series: series.clone(),
                    line: i + 1,
                    name: name.to_owned(),
                    path,
                });
            }
            let mut patch = Patch::parse(&path)?;
            patch.name = name.to_owned();
            patch.strip = strip;
            patches.push(patch);
        }
        Ok(Series {
            dir: dir.to_owned(),
            patches,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Options and reports

/// How to apply. There is no offset or fuzz to choose: every hunk must match exactly
/// where its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Leading path components to strip from file names (`-p`); default 1.
    pub strip: usize,
    /// Work everything out but write nothing.
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            strip: 1,
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Apply,
    Revert,
}

/// What happened to one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Did not apply, but its reverse does: it was applied before. Skipped.
    AlreadyApplied,
    Reverted,
    /// Revert: its reverse does not apply, but it does: it is not applied. Skipped.
    NotApplied,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAction {
    Modified,
    Created,
    Deleted,
    Renamed { from: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Relative to the tree root, after stripping.
    pub path: PathBuf,
    pub action: FileAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchReport {
    pub name: String,
    pub outcome: Outcome,
    /// Empty for skipped patches.
    pub files: Vec<FileReport>,
}

/// The result of [`apply`], [`check`] or [`revert`], in the order patches were handled
/// (reverse series order for [`revert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub direction: Direction,
    pub dry_run: bool,
    pub patches: Vec<PatchReport>,
}

impl Report {
    /// The patches skipped as already applied (or, reverting, as not applied).
    pub fn skipped(&self) -> impl Iterator<Item = &PatchReport> {
        self.patches
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::AlreadyApplied | Outcome::NotApplied))
    }
}

impl fmt::Display for Report {
    /// Like GNU patch: `patching file X` (`checking file X` for a dry run).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "checking" } else { "patching" };
        for p in &self.patches {
            match p.outcome {
                Outcome::Applied => writeln!(f, "applying {}", p.name)?,
                Outcome::Reverted => writeln!(f, "reverting {}", p.name)?,
                Outcome::AlreadyApplied => writeln!(
                    f,
                    "{}: already applied (its reverse applies); skipped",
                    p.name
                )?,
                Outcome::NotApplied => writeln!(
                    f,
                    "{}: not applied (it applies as is); nothing to revert",
                    p.name
                )?,
            }
            for file in &p.files {
                let path = file.path.display();
                match &file.action {
                    FileAction::Modified => writeln!(f, "{verb} file {path}")?,
                    FileAction::Created => writeln!(f, "{verb} file {path} (new file)")?,
                    FileAction::Deleted => writeln!(f, "{verb} file {path} (deleted)")?,
                    FileAction::Renamed { from } => {
                        writeln!(f, "{verb} file {path} (renamed from {})", from.display())?
                    }
                }
            }
        }
        Ok(())
    }
}

/// Where one patch of a series stands in a tree.
#[derive(Debug)]
pub enum PatchStatus {
    Applied,
    NotApplied,
    /// Neither it nor its reverse applies; the error is why it does not apply forward.
    Conflicts(Error),
}

/// The result of [`status`], in series order.
#[derive(Debug)]
pub struct SeriesStatus {
    pub patches: Vec<(String, PatchStatus)>,
}

impl SeriesStatus {
    pub fn all_applied(&self) -> bool {
        self.patches
            .iter()
            .all(|(_, s)| matches!(s, PatchStatus::Applied))
    }
    pub fn none_applied(&self) -> bool {
        self.patches
            .iter()
            .all(|(_, s)| matches!(s, PatchStatus::NotApplied))
    }
}

impl fmt::Display for SeriesStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s) in &self.patches {
            match s {
                PatchStatus::Applied => writeln!(f, "applied      {name}")?,
                PatchStatus::NotApplied => writeln!(f, "not applied  {name}")?,
                PatchStatus::Conflicts(e) => writeln!(f, "CONFLICTS    {name}: {e}")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Public operations

/// Applies `patches` in order to the tree at `root`, all or nothing. Patches already
/// applied are skipped and reported as such. With [`Options::dry_run`], writes nothing.
pub fn apply(root: &Path, patches: &[Patch], opts: &Options) -> Result<Report, Error> {
    run(root, patches, opts, Direction::Apply)
}

/// [`apply`] without writing anything.
pub fn check(root: &Path, patches: &[Patch], opts: &Options) -> Result<Report, Error> {
    let opts = Options {
        dry_run: true,
        ..*opts
    };
    run(root, patches, &opts, Direction::Apply)
}

/// Undoes `patches` (given in series order): applies their reverses from the last to the
/// first, all or nothing. Patches that are not applied are skipped and reported as such.
pub fn revert(root: &Path, patches: &[Patch], opts: &Options) -> Result<Report, Error> {
    run(root, patches, opts, Direction::Revert)
}

/// For each patch of the series: applied, not applied, or conflicting (and why).
/// Reads the tree, writes nothing.
pub fn status(root: &Path, patches: &[Patch], opts: &Options) -> Result<SeriesStatus, Error> {
    let mut tree = Tree::new(root);
    let seq: Vec<Cow<'_, Patch>> = patches.iter().map(Cow::Borrowed).collect();
    let done = applied_prefix(&mut tree, &seq, opts);
    let mut state = State::default();
    let mut out = Vec::new();
    for (i, p) in patches.iter().enumerate() {
        let s = if i < done {
            PatchStatus::Applied
        } else {
            match apply_patch(&mut tree, &state, p, opts) {
                Ok((next, _)) => {
                    state = next;
                    PatchStatus::NotApplied
                }
                Err(e) if e.is_conflict() => {
                    if reverse_applies(&mut tree, &state, p, opts)? {
                        PatchStatus::Applied
                    } else {
                        PatchStatus::Conflicts(e)
                    }
                }
                Err(e) => return Err(e),
            }
        };
        out.push((p.name.clone(), s));
    }
    Ok(SeriesStatus { patches: out })
}

fn run(
    root: &Path,
    patches: &[Patch],
    opts: &Options,
    direction: Direction,
) -> Result<Report, Error> {
    let mut tree = Tree::new(root);
    let seq: Vec<Cow<'_, Patch>> = match direction {
        Direction::Apply => patches.iter().map(Cow::Borrowed).collect(),
        Direction::Revert => patches
            .iter()
            .rev()
            .map(|p| Cow::Owned(p.reversed()))
            .collect(),
    };
    let (done, skipped) = match direction {
        Direction::Apply => (Outcome::Applied, Outcome::AlreadyApplied),
        Direction::Revert => (Outcome::Reverted, Outcome::NotApplied),
    };
    let already = applied_prefix(&mut tree, &seq, opts);
    let mut state = State::default();
    let mut reports = Vec::new();
    for (i, p) in seq.iter().enumerate() {
        let (outcome, files) = if i < already {
            (skipped, Vec::new())
        } else {
            match apply_patch(&mut tree, &state, p, opts) {
                Ok((next, files)) => {
                    state = next;
                    (done, files)
                }
                Err(e) if e.is_conflict() => {
                    if reverse_applies(&mut tree, &state, p, opts)? {
                        (skipped, Vec::new())
                    } else {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        };
        reports.push(PatchReport {
            name: p.name.clone(),
            outcome,
            files,
        });
    }
    if !opts.dry_run {
        commit(&mut tree, &state)?;
    }
    Ok(Report {
        direction,
        dry_run: opts.dry_run,
        patches: reports,
    })
}

fn reverse_applies(
    tree: &mut Tree,
    state: &State,
    p: &Patch,
    opts: &Options,
) -> Result<bool, Error> {
    match apply_patch(tree, state, &p.reversed(), opts) {
        Ok(_) => Ok(true),
        Err(e) if e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The largest k such that the first k patches of `seq` are applied: their reverses
/// apply, from patch k back to patch 1.
fn applied_prefix(tree: &mut Tree, seq: &[Cow<'_, Patch>], opts: &Options) -> usize {
    let reversed: Vec<Patch> = seq.iter().map(|p| p.reversed()).collect();
    'k: for k in (1..=seq.len()).rev() {
        let mut state = State::default();
        for p in reversed[..k].iter().rev() {
            match apply_patch(tree, &state, p, opts) {
                Ok((next, _)) => state = next,
                Err(e) if e.is_conflict() => continue 'k,
                // Let the forward pass report it, in the patch's own terms.
                Err(_) => return 0,
            }
        }
        return k;
    }
    0
}

// ---------------------------------------------------------------------------------------
// In-memory tree

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileData {
    content: Rc<Vec<u8>>,
    /// Permission bits (including setuid/setgid/sticky).
    mode: u32,
    /// Owner to restore on rewrite (`None` for new files).
    owner: Option<(u32, u32)>,
}

enum LoadError {
    Io(PathBuf, io::Error),
    NotRegular,
    BadParent,
}

/// The files on disk, read on first use and remembered, so that what is written at the
/// end can be compared with what was there.
struct Tree {
    root: PathBuf,
    disk: HashMap<PathBuf, Option<FileData>>,
}

impl Tree {
    fn new(root: &Path) -> Tree {
        Tree {
            root: root.to_owned(),
            disk: HashMap::new(),
        }
    }

    fn load(&mut self, rel: &Path) -> Result<Option<FileData>, LoadError> {
        if let Some(d) = self.disk.get(rel) {
            return Ok(d.clone());
        }
        let comps: Vec<Component<'_>> = rel.components().collect();
        let mut path = self.root.clone();
        let mut found = None;
        for (i, c) in comps.iter().enumerate() {
            path.push(c);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(LoadError::Io(path, e)),
            };
            if i + 1 < comps.len() {
                if !meta.is_dir() {
                    return Err(LoadError::BadParent);
                }
                continue;
            }
            if !meta.file_type().is_file() {
                return Err(LoadError::NotRegular);
            }
            let content = fs::read(&path).map_err(|e| LoadError::Io(path.clone(), e))?;
            found = Some(FileData {
                content: Rc::new(content),
                mode: meta.permissions().mode() & 0o7777,
                owner: Some((meta.uid(), meta.gid())),
            });
        }
        self.disk.insert(rel.to_owned(), found.clone());
        Ok(found)
    }
}

/// Files as the patches so far left them (`None`: deleted); everything else is as on
/// disk. Cheap to clone: contents are shared.
#[derive(Clone, Default)]
struct State {
    files: BTreeMap<PathBuf, Option<FileData>>,
}

/// Context for messages while applying one file section.
struct Ctx<'p> {
    patch: &'p str,
    file: String,
}

impl Ctx<'_> {
    fn file_err(&self, problem: FileProblem) -> Error {
        Error::File {
            patch: self.patch.to_owned(),
            file: self.file.clone(),
            problem,
        }
    }
}

fn current(
    tree: &mut Tree,
    state: &State,
    rel: &Path,
    ctx: &Ctx<'_>,
) -> Result<Option<FileData>, Error> {
    if let Some(d) = state.files.get(rel) {
        return Ok(d.clone());
    }
    tree.load(rel).map_err(|e| match e {
        LoadError::Io(path, source) => Error::Io { path, source },
        LoadError::NotRegular => ctx.file_err(FileProblem::NotRegular),
        LoadError::BadParent => ctx.file_err(FileProblem::BadParent),
    })
}

/// Strips `strip` leading components and refuses names that could leave the tree.
fn resolve(raw: &str, strip: usize) -> Result<PathBuf, FileProblem> {
    let mut s = raw;
    for _ in 0..strip {
        match s.find('/') {
            Some(i) => s = s[i + 1..].trim_start_matches('/'),
            None => return Err(FileProblem::Strip { strip }),
        }
    }
    let mut out = PathBuf::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(FileProblem::UnsafePath),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(FileProblem::UnsafePath);
    }
    Ok(out)
}

/// Applies one patch on top of `state`; returns the new state and what was done.
fn apply_patch(
    tree: &mut Tree,
    state: &State,
    patch: &Patch,
    opts: &Options,
) -> Result<(State, Vec<FileReport>), Error> {
    let mut next = state.clone();
    let mut reports = Vec::new();
    for fp in &patch.files {
        reports.push(apply_file(tree, &mut next, patch, fp, opts)?);
    }
    Ok((next, reports))
}

fn is_exec(mode: u32) -> bool {
    mode & 0o100 != 0
}

fn apply_file(
    tree: &mut Tree,
    state: &mut State,
    patch: &Patch,
    fp: &FilePatch,
    opts: &Options,
) -> Result<FileReport, Error> {
    let strip = patch.strip.unwrap_or(opts.strip);
    let mut ctx = Ctx {
        patch: &patch.name,
        file: fp.display_name().to_owned(),
    };
    let mut names = [None, None];
    for (slot, raw) in names.iter_mut().zip([&fp.old_path, &fp.new_path]) {
        if let Some(raw) = raw {
            *slot = Some(resolve(raw, strip).map_err(|p| Error::File {
                patch: patch.name.clone(),
                file: raw.clone(),
                problem: p,
            })?);
        }
    }
    let [old, new] = names;
    let need = |p: Option<PathBuf>| p.ok_or(FileProblem::UnsafePath);

    // Pick the file to read and the one to write.
    let (source, target) = match fp.kind {
        FileKind::Create => (None, need(new).map_err(|p| ctx.file_err(p))?),
        FileKind::Delete => {
            let o = need(old).map_err(|p| ctx.file_err(p))?;
            (Some(o.clone()), o)
        }
        FileKind::Rename => {
            let o = need(old).map_err(|p| ctx.file_err(p))?;
            let n = need(new).map_err(|p| ctx.file_err(p))?;
            (Some(o), n)
        }
        FileKind::Modify => {
            let o = need(old).map_err(|p| ctx.file_err(p))?;
            let n = need(new).map_err(|p| ctx.file_err(p))?;
            let chosen = if o == n || fp.git {
                n
            } else {
                // Like GNU patch: of the names that exist, the one with the fewest
                // components, then the shortest base name, then the shortest.
                let mut existing = Vec::new();
                for cand in [&o, &n] {
                    ctx.file = cand.display().to_string();
                    if current(tree, state, cand, &ctx)?.is_some() {
                        existing.push(cand.clone());
                    }
                }
                existing
                    .into_iter()
                    .min_by_key(|p| {
                        let base = p.file_name().map_or(0, |b| b.len());
                        (p.components().count(), base, p.as_os_str().len())
                    })
                    .unwrap_or(o)
            };
            (Some(chosen.clone()), chosen)
        }
    };
    ctx.file = target.display().to_string();

    let (old_data, action) = match &source {
        None => {
            if current(tree, state, &target, &ctx)?.is_some() {
                return Err(ctx.file_err(FileProblem::AlreadyExists));
            }
            (None, FileAction::Created)
        }
        Some(src) => {
            if src != &target {
                ctx.file = src.display().to_string();
            }
            let data = current(tree, state, src, &ctx)?
                .ok_or_else(|| ctx.file_err(FileProblem::Missing))?;
            let action = match fp.kind {
                FileKind::Delete => FileAction::Deleted,
                FileKind::Rename if src != &target => {
                    ctx.file = target.display().to_string();
                    if current(tree, state, &target, &ctx)?.is_some() {
                        return Err(ctx.file_err(FileProblem::RenameTargetExists));
                    }
                    FileAction::Renamed { from: src.clone() }
                }
                _ => FileAction::Modified,
            };
            ctx.file = target.display().to_string();
            (Some(data), action)
        }
    };

    let empty = Vec::new();
    let src_bytes = old_data.as_ref().map_or(&empty, |d| &*d.content);
    let content = apply_hunks(src_bytes, fp, &ctx)?;

    let result = match fp.kind {
        FileKind::Delete => {
            if !content.is_empty() {
                let lines = split_lines(&content).len();
                return Err(ctx.file_err(FileProblem::DeleteLeftovers { lines }));
            }
            None
        }
        FileKind::Create => Some(FileData {
            content: Rc::new(content),
            mode: fp.new_mode.map_or(DEFAULT_NEW_FILE_MODE, |m| {
                if is_exec(m) {
                    0o755
                } else {
                    0o644
                }
            }),
            owner: None,
        }),
        FileKind::Modify | FileKind::Rename => {
            let data = old_data.ok_or_else(|| ctx.file_err(FileProblem::Missing))?;
            let mut mode = data.mode;
            if let (Some(om), Some(nm)) = (fp.old_mode, fp.new_mode) {
                if is_exec(om) != is_exec(nm) {
                    if is_exec(mode) != is_exec(om) {
                        return Err(ctx.file_err(FileProblem::ModeMismatch {
                            expected: om & 0o777,
                            found: mode,
                        }));
                    }
                    // As git does: executable where readable, or not executable at all.
                    mode = if is_exec(nm) {
                        mode | ((mode & 0o444) >> 2)
                    } else {
                        mode & !0o111
                    };
                }
            }
            Some(FileData {
                content: Rc::new(content),
                mode,
                owner: data.owner,
            })
        }
    };
    if let FileAction::Renamed { from } = &action {
        state.files.insert(from.clone(), None);
    }
    state.files.insert(target.clone(), result);
    Ok(FileReport {
        path: target,
        action,
    })
}

fn split_lines(b: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            lines.push(&b[start..=i]);
            start = i + 1;
        }
    }
    if start < b.len() {
        lines.push(&b[start..]);
    }
    lines
}

/// Appends a line, first ending the previous one if it had no newline.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    if out.last().is_some_and(|&c| c != b'\n') {
        out.push(b'\n');
    }
    out.extend_from_slice(line);
}

fn copy_lines(out: &mut Vec<u8>, lines: &[&[u8]], from: usize, to: usize) {
    let to = to.min(lines.len());
    for l in lines.get(from..to).unwrap_or_default() {
        push_line(out, l);
    }
}

/// Applies a section's hunks to `src`, each exactly at the line its header names.
fn apply_hunks(src: &[u8], fp: &FilePatch, ctx: &Ctx<'_>) -> Result<Vec<u8>, Error> {
    let lines = split_lines(src);
    let mut out = Vec::with_capacity(src.len() + 4096);
    let mut cursor = 0usize;
    for (i, h) in fp.hunks.iter().enumerate() {
        let at = h.old_start0();
        let place = Place::new(&lines, h, cursor);
        if !place.fits(at) {
            let reason = match place.nearest(at) {
                Some(w) => HunkProblem::NotExact {
                    at: w + 1,
                    offset: w as isize - at as isize,
                },
                None => HunkProblem::NotFound,
            };
            return Err(Error::Hunk {
                patch: ctx.patch.to_owned(),
                file: ctx.file.clone(),
                hunk: i + 1,
                header: h.header(),
                reason,
            });
        }
        let mut pos = at;
        for l in &h.lines {
            match l.kind {
                LineKind::Context => pos += 1,
                LineKind::Delete => {
                    copy_lines(&mut out, &lines, cursor, pos);
                    cursor = cursor.max(pos + 1);
                    pos += 1;
                }
                LineKind::Insert => {
                    copy_lines(&mut out, &lines, cursor, pos);
                    cursor = cursor.max(pos);
                    push_line(&mut out, &l.text);
                }
            }
        }
    }
    copy_lines(&mut out, &lines, cursor, lines.len());
    Ok(out)
}

/// Where a hunk's old side (its context and removed lines) is in a file's lines.
struct Place<'a> {
    lines: &'a [&'a [u8]],
    pattern: Vec<&'a [u8]>,
    /// Lines before this were changed by earlier hunks.
    from: usize,
    /// Less leading than trailing context at line 1: diff wrote it at the top of the file.
    top: bool,
    /// Less trailing than leading context: diff wrote it at the end of the file.
    end: bool,
}

impl<'a> Place<'a> {
    fn new(lines: &'a [&'a [u8]], h: &'a Hunk, from: usize) -> Place<'a> {
        let (prefix, suffix) = h.context_sizes();
        Place {
            lines,
            pattern: h
                .lines
                .iter()
                .filter(|l| l.kind != LineKind::Insert)
                .map(|l| l.text.as_slice())
                .collect(),
            from,
            top: prefix < suffix && h.old_start <= 1,
            end: suffix < prefix,
        }
    }

    /// Whether the old side is at 0-based line `w`.
    fn fits(&self, w: usize) -> bool {
        let end = w + self.pattern.len();
        w >= self.from
            && end <= self.lines.len()
            && (!self.top || w == 0)
            && (!self.end || end == self.lines.len())
            && self.lines[w..end] == self.pattern[..]
    }

    /// For the error message: the nearest other line where the old side is (after `w`
    /// first at equal distance); `None` for a hunk without old lines.
    fn nearest(&self, w: usize) -> Option<usize> {
        if self.pattern.is_empty() {
            return None;
        }
        (0..=self.lines.len())
            .filter(|&v| v != w && self.fits(v))
            .min_by_key(|&v| (v.abs_diff(w), v < w))
    }
}

// ---------------------------------------------------------------------------------------
// Writing

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes every file whose final state differs from the disk: first all new contents to
/// temporary files (undone if any fails), then renames and deletions.
fn commit(tree: &mut Tree, state: &State) -> Result<(), Error> {
    let mut writes = Vec::new();
    let mut deletes = Vec::new();
    for (rel, now) in &state.files {
        let before = tree.load(rel).map_err(|e| match e {
            LoadError::Io(path, source) => Error::Io { path, source },
            LoadError::NotRegular | LoadError::BadParent => Error::Io {
                path: tree.root.join(rel),
                source: io::Error::other("changed while being patched"),
            },
        })?;
        if &before == now {
            continue;
        }
        match now {
            Some(data) => writes.push((tree.root.join(rel), data)),
            None => deletes.push(tree.root.join(rel)),
        }
    }

    let mut created_dirs = Vec::new();
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let undo = |staged: &[(PathBuf, PathBuf)], created_dirs: &[PathBuf]| {
        for (tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
        for d in created_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    };
    for (path, data) in &writes {
        let staged_one = create_parents(&tree.root, path, &mut created_dirs)
            .and_then(|()| write_temp(path, data));
        match staged_one {
            Ok(tmp) => staged.push((tmp, path.clone())),
            Err(e) => {
                undo(&staged, &created_dirs);
                return Err(e);
            }
        }
    }
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(source) = fs::rename(tmp, path) {
            undo(&staged[i..], &[]);
            return Err(Error::Io {
                path: path.clone(),
                source,
            });
        }
    }
    for path in &deletes {
        fs::remove_file(path).map_err(io_err(path))?;
        // Remove directories this leaves empty, up to (not including) the root.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == tree.root || !d.starts_with(&tree.root) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    Ok(())
}

fn create_parents(root: &Path, path: &Path, created: &mut Vec<PathBuf>) -> Result<(), Error> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let mut missing = Vec::new();
    let mut d = parent;
    while d != root && fs::symlink_metadata(d).is_err() {
        missing.push(d.to_owned());
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(&d).map_err(io_err(&d))?;
        created.push(d);
    }
    Ok(())
}

fn write_temp(path: &Path, data: &FileData) -> Result<PathBuf, Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let base = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0..1000 {
        let tmp = dir.join(format!(".{base}.patch-{}-{n}.tmp", std::process::id()));
        let mut f = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&tmp)(e)),
        };
        let written = f
            .write_all(&data.content)
            .and_then(|()| {
                if let Some((uid, gid)) = data.owner {
                    // Best effort: only root may give a file away.
                    let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
                }
                f.set_permissions(fs::Permissions::from_mode(data.mode))
            })
            .and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        return Ok(tmp);
    }
    Err(Error::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary file name"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use beambake_testkit::{output, skip, tempdir, which};
    use std::process::Command;

    // ---- helpers ------------------------------------------------------------------

    fn parse(text: &str) -> Patch {
        match Patch::parse_str("test.patch", text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse_err(text: &str) -> (usize, ParseProblem) {
        match Patch::parse_str("t.patch", text) {
            Err(Error::Parse { line, problem, .. }) => (line, problem),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn named(name: &str, text: &str) -> Patch {
        match Patch::parse_str(name, text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn write(root: &Path, rel: &str, content: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn read(root: &Path, rel: &str) -> String {
        String::from_utf8(fs::read(root.join(rel)).unwrap()).unwrap()
    }

    fn mode(root: &Path, rel: &str) -> u32 {
        fs::metadata(root.join(rel)).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(root: &Path, rel: &str, m: u32) {
        fs::set_permissions(root.join(rel), fs::Permissions::from_mode(m)).unwrap();
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Node {
        Dir(u32),
        File(u32, Vec<u8>),
        Link(PathBuf),
    }

    /// The whole tree: every path with its type, mode and content.
    fn snapshot(root: &Path) -> BTreeMap<String, Node> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                let perm = m.permissions().mode() & 0o7777;
                if m.file_type().is_symlink() {
                    out.insert(rel, Node::Link(fs::read_link(&p).unwrap()));
                } else if m.is_dir() {
                    out.insert(rel, Node::Dir(perm));
                    walk(root, &p, out);
                } else {
                    out.insert(rel, Node::File(perm, fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    /// Regular files only, contents only (what GNU patch and we must agree on).
    fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
        snapshot(root)
            .into_iter()
            .filter_map(|(k, v)| match v {
                Node::File(_, c) => Some((k, c)),
                _ => None,
            })
            .collect()
    }

    fn opts() -> Options {
        Options::default()
    }

    fn numbered(from: usize, to: usize) -> String {
        (from..=to).map(|i| format!("line {i}\n")).collect()
    }

    // ---- parsing ------------------------------------------------------------------

    #[test]
    fn parses_diff_u_with_timestamps_and_keeps_the_header() {
        let p = parse(
            "Make foo louder.\n\nWhy: nobody heard it.\n\
             --- a/src/foo.c\t2024-01-02 03:04:05.000000000 +0100\n\
             +++ b/src/foo.c\t2024-01-02 03:05:05.123456789 +0100\n\
             @@ -1,3 +1,4 @@ int main()\n a\n-b\n+B\n+C\n c\n",
        );
        assert_eq!(p.header, "Make foo louder.\n\nWhy: nobody heard it.\n");
        assert_eq!(p.files.len(), 1);
        let f = &p.files[0];
        assert_eq!(f.old_path.as_deref(), Some("a/src/foo.c"));
        assert_eq!(f.new_path.as_deref(), Some("b/src/foo.c"));
        assert_eq!(f.kind, FileKind::Modify);
        assert!(!f.git);
        assert_eq!(f.line, 4);
        let h = &f.hunks[0];
        assert_eq!(
            (h.old_start, h.old_count, h.new_start, h.new_count),
            (1, 3, 1, 4)
        );
        assert_eq!(h.section, "int main()");
        assert_eq!(h.header(), "@@ -1,3 +1,4 @@");
        assert_eq!(h.line, 6);
        let kinds: Vec<LineKind> = h.lines.iter().map(|l| l.kind).collect();
        use LineKind::*;
        assert_eq!(kinds, [Context, Delete, Insert, Insert, Context]);
        assert_eq!(h.lines[2].text, b"B\n");
    }

    #[test]
    fn parses_diff_run_with_epoch_created_and_deleted_files() {
        let p = parse(
            "Header.\n\
             diff -ruN a/new.txt b/new.txt\n\
             --- a/new.txt\t1970-01-01 00:00:00.000000000 +0000\n\
             +++ b/new.txt\t2024-05-01 10:00:00.000000000 +0000\n\
             @@ -0,0 +1,2 @@\n+one\n+two\n\
             Only in a: junk\n\
             diff -ruN a/old.txt b/old.txt\n\
             --- a/old.txt\t2024-05-01 10:00:00.000000000 -0800\n\
             +++ b/old.txt\t1969-12-31 16:00:00.000000000 -0800\n\
             @@ -1 +0,0 @@\n-gone\n\
             diff -ruN a/same.txt b/same.txt\n\
             --- a/same.txt 2024-05-01 10:00:00.000000000 +0000\n\
             +++ b/same.txt 2024-05-01 10:00:01.000000000 +0000\n\
             @@ -1 +1 @@\n-x\n+y\n",
        );
        assert_eq!(
            p.header, "Header.\n",
            "the `diff -ruN` line belongs to the file"
        );
        assert_eq!(p.files.len(), 3);
        assert_eq!(p.files[0].kind, FileKind::Create);
        assert_eq!(p.files[0].old_path, None);
        assert_eq!(p.files[1].kind, FileKind::Delete);
        assert_eq!(p.files[1].new_path, None);
        assert_eq!(p.files[2].kind, FileKind::Modify);
        assert_eq!(
            p.files[2].old_path.as_deref(),
            Some("a/same.txt"),
            "space before the timestamp"
        );
    }

    #[test]
    fn parses_git_headers() {
        let p = parse(
            "diff --git a/x.c b/x.c\n\
             index 83db48f..bf269f4 100644\n\
             --- a/x.c\n\
             +++ b/x.c\n\
             @@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n\
             diff --git a/new.sh b/new.sh\n\
             new file mode 100755\n\
             index 0000000..e69de29\n\
             diff --git a/gone.txt b/gone.txt\n\
             deleted file mode 100644\n\
             index 257cc56..0000000\n\
             --- a/gone.txt\n\
             +++ /dev/null\n\
             @@ -1 +0,0 @@\n-foo\n\
             diff --git a/run.sh b/run.sh\n\
             old mode 100644\n\
             new mode 100755\n\
             diff --git a/old name.txt b/new name.txt\n\
             similarity index 100%\n\
             rename from old name.txt\n\
             rename to new name.txt\n\
             diff --git \"a/tab\\there\" \"b/tab\\there\"\n\
             --- \"a/tab\\there\"\n\
             +++ \"b/tab\\there\"\n\
             @@ -1 +1 @@\n-1\n+2\n",
        );
        let f = &p.files;
        assert_eq!(f.len(), 6);
        assert!(f.iter().all(|f| f.git));
        assert_eq!(
            f[0].hunks[0].lines[1].text, b"b",
            "no newline on the removed line"
        );
        assert_eq!(f[0].hunks[0].lines[2].text, b"b\n");
        assert_eq!(
            (f[1].kind, f[1].new_mode, f[1].hunks.len()),
            (FileKind::Create, Some(0o100755), 0)
        );
        assert_eq!(f[1].new_path.as_deref(), Some("b/new.sh"));
        assert_eq!(
            (f[2].kind, f[2].old_mode),
            (FileKind::Delete, Some(0o100644))
        );
        assert_eq!(
            (f[3].kind, f[3].old_mode, f[3].new_mode),
            (FileKind::Modify, Some(0o100644), Some(0o100755))
        );
        assert_eq!(f[4].kind, FileKind::Rename);
        assert_eq!(f[4].old_path.as_deref(), Some("a/old name.txt"));
        assert_eq!(f[4].new_path.as_deref(), Some("b/new name.txt"));
        assert_eq!(f[5].old_path.as_deref(), Some("a/tab\there"));
    }

    #[test]
    fn parses_git_format_patch_mail() {
        let text = "From 1234abcd Mon Sep 17 00:00:00 2001\n\
            From: Dev <dev@example.org>\n\
            Subject: [PATCH] epmd: run in a thread\n\
            \n\
            Because OSv has no fork.\n\
            ---\n \
            erts/epmd.c | 2 +-\n \
            1 file changed, 1 insertion(+), 1 deletion(-)\n\
            \n\
            diff --git a/erts/epmd.c b/erts/epmd.c\n\
            index 1111111..2222222 100644\n\
            --- a/erts/epmd.c\n\
            +++ b/erts/epmd.c\n\
            @@ -1 +1 @@\n-fork();\n+thread();\n\
            -- \n\
            2.39.2\n\n";
        let p = parse(text);
        assert!(p.header.starts_with("From 1234abcd"));
        assert!(p
            .header
            .contains("Because OSv has no fork.\n---\n erts/epmd.c | 2 +-\n"));
        assert_eq!(p.files.len(), 1);
        assert_eq!(p.files[0].hunks[0].lines.len(), 2);
    }

    #[test]
    fn parses_crlf_patches() {
        let p = parse("--- a/x\r\n+++ b/x\r\n@@ -1,2 +1,2 @@\r\n a\r\n-b\r\n+c\r\n");
        assert_eq!(p.files[0].new_path.as_deref(), Some("b/x"));
        assert_eq!(p.files[0].hunks[0].lines[2].text, b"c\r\n");
    }

    #[test]
    fn malformed_patches_name_the_line() {
        let hdr = "--- a/x\n+++ b/x\n";
        // Too few lines for the counts.
        let (line, problem) = parse_err(&format!("{hdr}@@ -1,3 +1,3 @@\n a\n-b\n+c\n"));
        assert_eq!(line, 6);
        assert!(
            matches!(
                problem,
                ParseProblem::Truncated {
                    hunk: 1,
                    old: 1,
                    new: 1,
                    ..
                }
            ),
            "{problem}"
        );
        // More lines than the counts.
        let (line, problem) = parse_err(&format!("{hdr}@@ -1,2 +1,2 @@\n a\n-b\n+c\n d\n"));
        assert_eq!(
            (line, problem.to_string()),
            (
                7,
                "hunk #1 (@@ -1,2 +1,2 @@): more context lines than its header counts".into()
            )
        );
        let (line, problem) = parse_err(&format!("{hdr}@@ -1,2 +1 @@\n a\n-b\n+c\n+d\n"));
        assert_eq!(line, 6);
        assert!(matches!(
            problem,
            ParseProblem::TooManyLines { what: "added", .. }
        ));
        // Garbage inside a hunk.
        let (line, problem) = parse_err(&format!("{hdr}@@ -1,3 +1,3 @@\n a\nXYZ\n b\n"));
        assert_eq!(line, 5);
        assert_eq!(
            problem.to_string(),
            "hunk #1 (@@ -1,3 +1,3 @@): unexpected line `XYZ` (hunk lines start with ' ', '-', '+' or '\\')"
        );
        // A hunk before any file header.
        let (line, problem) = parse_err("Some header.\n@@ -1 +1 @@\n-a\n+b\n");
        assert_eq!((line, problem), (2, ParseProblem::HunkBeforeFile));
        // Bad @@ lines.
        for bad in [
            "@@ -1,x +1 @@",
            "@@ -1 +1",
            "@@ 1 +1 @@",
            "@@@ -1 +1 @@",
            "@@ -0,1 +1 @@",
        ] {
            let (line, problem) = parse_err(&format!("{hdr}{bad}\n-a\n+b\n"));
            assert_eq!(line, 3, "{bad}");
            assert!(
                matches!(problem, ParseProblem::BadHunkHeader(_)),
                "{bad}: {problem}"
            );
        }
        // `---` without `+++` in a git section.
        let (line, problem) = parse_err("diff --git a/x b/x\n--- a/x\n@@ -1 +1 @@\n-a\n+b\n");
        assert_eq!((line, problem), (2, ParseProblem::MissingPlusPlus));
        // A non-git file header without hunks.
        let (line, problem) = parse_err(&format!("{hdr}\n"));
        assert_eq!((line, problem), (1, ParseProblem::NoHunks("b/x".into())));
        // Stray "\ No newline".
        let (line, problem) = parse_err(&format!("{hdr}@@ -1 +1 @@\n-a\n\\ No newline at end of file\n\\ No newline at end of file\n+b\n"));
        assert_eq!((line, problem), (6, ParseProblem::StrayNoNewline));
        // Hunks out of order.
        let (line, problem) =
            parse_err(&format!("{hdr}@@ -5 +5 @@\n-a\n+b\n@@ -2 +2 @@\n-c\n+d\n"));
        assert_eq!(line, 6);
        assert!(matches!(
            problem,
            ParseProblem::MisorderedHunks { hunk: 2, .. }
        ));
        // Nothing at all.
        let (_, problem) = parse_err("Just words.\n");
        assert_eq!(problem, ParseProblem::Empty);
        // Free text between files.
        let (line, problem) = parse_err(&format!("{hdr}@@ -1 +1 @@\n-a\n+b\nsurprise\n"));
        assert_eq!(
            (line, problem),
            (6, ParseProblem::UnexpectedText("surprise".into()))
        );
        // Binary patches.
        let (line, problem) =
            parse_err("diff --git a/x b/x\nindex 1..2 100644\nGIT binary patch\nliteral 1\n");
        assert_eq!(line, 3);
        assert!(matches!(problem, ParseProblem::Unsupported(_)));
        // The message names the patch and line.
        let e = Patch::parse_str("0002-x.patch", &format!("{hdr}@@ -1,3 +1,3 @@\n a\nXYZ\n"))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("0002-x.patch:5: hunk #1 (@@ -1,3 +1,3 @@): unexpected line `XYZ`"),
            "{e}"
        );
    }

    #[test]
    fn epoch_detection() {
        assert!(is_epoch("1970-01-01 00:00:00.000000000 +0000"));
        assert!(is_epoch("1970-01-01 00:00:00 +0000"));
        assert!(is_epoch("1969-12-31 16:00:00.000000000 -0800"));
        assert!(is_epoch("1970-01-01 05:30:00.000000000 +0530"));
        assert!(!is_epoch("1970-01-01 00:00:01.000000000 +0000"));
        assert!(!is_epoch("1970-01-01 00:00:00.5 +0000"));
        assert!(!is_epoch("2024-01-01 00:00:00.000000000 +0000"));
        assert!(!is_epoch("yesterday"));
    }

    #[test]
    fn reversing_twice_gives_the_patch_back() {
        let p = parse("--- a/x\n+++ b/x\n@@ -1,4 +1,4 @@\n a\n-b\n-c\n+B\n+C\n d\n");
        let r = p.reversed();
        let h = &r.files[0].hunks[0];
        let kinds: Vec<LineKind> = h.lines.iter().map(|l| l.kind).collect();
        use LineKind::*;
        assert_eq!(kinds, [Context, Delete, Delete, Insert, Insert, Context]);
        assert_eq!(h.lines[1].text, b"B\n");
        assert_eq!(r.reversed(), p);
    }

    // ---- applying -----------------------------------------------------------------

    const SIMPLE: &str = "--- a/f.txt\n+++ b/f.txt\n@@ -4,7 +4,7 @@\n line 4\n line 5\n line 6\n-line 7\n+LINE SEVEN\n line 8\n line 9\n line 10\n";

    #[test]
    fn applies_exactly() {
        let t = tempdir();
        write(t.path(), "f.txt", numbered(1, 20).as_bytes());
        let r = apply(t.path(), &[named("0001-seven.patch", SIMPLE)], &opts()).unwrap();
        assert_eq!(
            read(t.path(), "f.txt"),
            numbered(1, 20).replace("line 7\n", "LINE SEVEN\n")
        );
        assert_eq!(r.patches[0].outcome, Outcome::Applied);
        assert_eq!(
            r.to_string(),
            "applying 0001-seven.patch\npatching file f.txt\n"
        );
    }

    #[test]
    fn a_changed_context_line_is_not_fuzzed_over() {
        let t = tempdir();
        let text = numbered(1, 20).replace("line 4\n", "line four\n");
        write(t.path(), "f.txt", text.as_bytes());
        let e = apply(t.path(), &[named("p.patch", SIMPLE)], &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.patch: f.txt: hunk #1 (@@ -4,7 +4,7 @@) does not apply (context not found within the file)"
        );
        assert_eq!(read(t.path(), "f.txt"), text);
    }

    #[test]
    fn refuses_offsets_and_says_where_the_hunk_matches() {
        let t = tempdir();
        let text = format!("extra\n{}", numbered(1, 20));
        write(t.path(), "f.txt", text.as_bytes());
        let e = check(t.path(), &[named("p.patch", SIMPLE)], &opts()).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Hunk {
                    reason: HunkProblem::NotExact { offset: 1, at: 5 },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "p.patch: f.txt: hunk #1 (@@ -4,7 +4,7 @@) does not apply (matches only at line 5, offset 1 from its header; hunks must apply with offset 0)"
        );
        let e = apply(t.path(), &[named("p.patch", SIMPLE)], &opts()).unwrap_err();
        assert!(e.is_conflict(), "{e}");
        assert_eq!(read(t.path(), "f.txt"), text);
    }

    #[test]
    fn hunks_short_of_context_stay_at_the_start_or_end() {
        // Leading context shorter than trailing: diff wrote the hunk at the top of the
        // file, and it must not apply below a line that is not in the patch.
        let t = tempdir();
        write(t.path(), "f.txt", b"x\na\nb\nc\n");
        let p = named(
            "p.patch",
            "--- a/f.txt\n+++ b/f.txt\n@@ -1,3 +1,4 @@\n+top\n a\n b\n c\n",
        );
        let e = apply(t.path(), std::slice::from_ref(&p), &opts()).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Hunk {
                    reason: HunkProblem::NotFound,
                    ..
                }
            ),
            "{e}"
        );
        write(t.path(), "f.txt", b"a\nb\nc\nd\n");
        apply(t.path(), &[p], &opts()).unwrap();
        assert_eq!(read(t.path(), "f.txt"), "top\na\nb\nc\nd\n");
        // Trailing context shorter: the hunk ends the file, so not one that goes on.
        let p = named(
            "q.patch",
            "--- a/f.txt\n+++ b/f.txt\n@@ -3,2 +3,3 @@\n c\n d\n+end\n",
        );
        write(t.path(), "f.txt", b"a\nb\nc\nd\ne\n");
        let e = apply(t.path(), std::slice::from_ref(&p), &opts()).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Hunk {
                    reason: HunkProblem::NotFound,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(read(t.path(), "f.txt"), "a\nb\nc\nd\ne\n");
        write(t.path(), "f.txt", b"a\nb\nc\nd\n");
        apply(t.path(), &[p], &opts()).unwrap();
        assert_eq!(read(t.path(), "f.txt"), "a\nb\nc\nd\nend\n");
    }

    #[test]
    fn creates_deletes_and_handles_missing_newlines() {
        let t = tempdir();
        write(t.path(), "gone.txt", b"bye\nbye\n");
        write(t.path(), "noeol.txt", b"a\nb");
        write(t.path(), "eol.txt", b"a\nb\n");
        let p = named(
            "p.patch",
            "--- /dev/null\n+++ b/deep/er/new.txt\n@@ -0,0 +1,2 @@\n+hello\n+world\n\\ No newline at end of file\n\
             --- a/gone.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-bye\n-bye\n\
             --- a/noeol.txt\n+++ b/noeol.txt\n@@ -1,2 +1,3 @@\n a\n-b\n\\ No newline at end of file\n+b\n+c\n\
             --- a/eol.txt\n+++ b/eol.txt\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n\\ No newline at end of file\n",
        );
        let before = snapshot(t.path());
        let r = apply(t.path(), std::slice::from_ref(&p), &opts()).unwrap();
        assert_eq!(read(t.path(), "deep/er/new.txt"), "hello\nworld");
        assert_eq!(mode(t.path(), "deep/er/new.txt"), 0o644);
        assert!(!t.path().join("gone.txt").exists());
        assert_eq!(read(t.path(), "noeol.txt"), "a\nb\nc\n");
        assert_eq!(read(t.path(), "eol.txt"), "a\nB");
        let actions: Vec<&FileAction> = r.patches[0].files.iter().map(|f| &f.action).collect();
        assert_eq!(
            actions,
            [
                &FileAction::Created,
                &FileAction::Deleted,
                &FileAction::Modified,
                &FileAction::Modified
            ]
        );
        assert!(r.to_string().contains(
            "patching file deep/er/new.txt (new file)\npatching file gone.txt (deleted)\n"
        ));
        // And back.
        let r = revert(t.path(), &[p], &opts()).unwrap();
        assert_eq!(r.patches[0].outcome, Outcome::Reverted);
        assert_eq!(
            snapshot(t.path()),
            before,
            "revert restores the tree (and removes the new dirs)"
        );
    }

    #[test]
    fn deleting_a_file_that_differs_fails() {
        let t = tempdir();
        write(t.path(), "gone.txt", b"bye\nbye\nand more\n");
        let p = named(
            "p.patch",
            "--- a/gone.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-bye\n-bye\n",
        );
        let e = apply(t.path(), &[p], &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.patch: gone.txt: not deleting the file: its content differs from the patch (1 line would remain)"
        );
        assert_eq!(read(t.path(), "gone.txt"), "bye\nbye\nand more\n");
    }

    #[test]
    fn creating_an_existing_file_or_patching_a_missing_one_fails() {
        let t = tempdir();
        write(t.path(), "new.txt", b"already\n");
        let p = named(
            "p.patch",
            "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+fresh\n",
        );
        let e = apply(t.path(), &[p], &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.patch: new.txt: file to create already exists"
        );
        let e = apply(t.path(), &[named("q.patch", SIMPLE)], &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "q.patch: f.txt: file to patch does not exist"
        );
    }

    #[test]
    fn multiple_files_and_patches_touching_the_same_file() {
        let t = tempdir();
        write(t.path(), "f.txt", numbered(1, 20).as_bytes());
        write(t.path(), "dir/g.txt", b"g1\ng2\ng3\n");
        let p1 = named(
            "0001.patch",
            &format!(
                "{SIMPLE}--- a/dir/g.txt\n+++ b/dir/g.txt\n@@ -1,3 +1,3 @@\n g1\n-g2\n+G2\n g3\n"
            ),
        );
        // Written against the result of 0001: touches the line 0001 changed.
        let p2 = named(
            "0002.patch",
            "--- a/f.txt\n+++ b/f.txt\n@@ -6,3 +6,4 @@\n line 6\n-LINE SEVEN\n+LINE 7\n+LINE 7b\n line 8\n",
        );
        let r = apply(t.path(), &[p1, p2], &opts()).unwrap();
        assert!(
            r.patches.iter().all(|p| p.outcome == Outcome::Applied),
            "{r}"
        );
        assert_eq!(
            read(t.path(), "f.txt"),
            numbered(1, 20).replace("line 7\n", "LINE 7\nLINE 7b\n")
        );
        assert_eq!(read(t.path(), "dir/g.txt"), "g1\nG2\ng3\n");
    }

    #[test]
    fn a_failing_hunk_leaves_the_tree_untouched() {
        let t = tempdir();
        let src: String = (1..=500).map(|i| format!("erlexec {i}\n")).collect();
        write(t.path(), "erts/etc/common/erlexec.c", src.as_bytes());
        write(t.path(), "other.c", b"one\ntwo\n");
        let p1 = named(
            "0001-other.patch",
            "--- a/other.c\n+++ b/other.c\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n",
        );
        let p2 = named(
            "0002-new.patch",
            "--- /dev/null\n+++ b/sub/new.c\n@@ -0,0 +1 @@\n+new\n",
        );
        let mut body = String::from(
            "Run epmd in a thread.\n\n--- a/erts/etc/common/erlexec.c\n+++ b/erts/etc/common/erlexec.c\n\
             @@ -1,3 +1,3 @@\n erlexec 1\n-erlexec 2\n+ERLEXEC 2\n erlexec 3\n@@ -410,7 +410,9 @@\n",
        );
        for i in 410..417 {
            body.push_str(&format!(" not what is there {i}\n"));
            if i == 412 {
                body.push_str("+a\n+b\n");
            }
        }
        let p3 = named("0003-epmd-thread.patch", &body);
        let before = snapshot(t.path());
        let e = apply(t.path(), &[p1, p2, p3], &opts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "0003-epmd-thread.patch: erts/etc/common/erlexec.c: hunk #2 (@@ -410,7 +410,9 @@) does not apply (context not found within the file)"
        );
        assert_eq!(snapshot(t.path()), before);
    }

    #[test]
    fn already_applied_patches_are_recognised() {
        let t = tempdir();
        write(t.path(), "f.txt", numbered(1, 20).as_bytes());
        let p1 = named("0001.patch", SIMPLE);
        let p2 = named(
            "0002.patch",
            "--- a/f.txt\n+++ b/f.txt\n@@ -6,3 +6,3 @@\n line 6\n-LINE SEVEN\n+LINE 7\n line 8\n",
        );
        // Only the first one applied so far.
        apply(t.path(), std::slice::from_ref(&p1), &opts()).unwrap();
        let r = apply(t.path(), &[p1.clone(), p2.clone()], &opts()).unwrap();
        let outcomes: Vec<Outcome> = r.patches.iter().map(|p| p.outcome).collect();
        assert_eq!(outcomes, [Outcome::AlreadyApplied, Outcome::Applied]);
        assert!(
            r.to_string().starts_with(
                "0001.patch: already applied (its reverse applies); skipped\napplying 0002.patch\n"
            ),
            "{r}"
        );
        // Both applied: both recognised, although 0002 rewrote 0001's line.
        let after = snapshot(t.path());
        let r = apply(t.path(), &[p1.clone(), p2.clone()], &opts()).unwrap();
        let outcomes: Vec<Outcome> = r.patches.iter().map(|p| p.outcome).collect();
        assert_eq!(outcomes, [Outcome::AlreadyApplied, Outcome::AlreadyApplied]);
        assert_eq!(r.skipped().count(), 2);
        assert_eq!(snapshot(t.path()), after);
    }

    #[test]
    fn status_of_a_series() {
        let t = tempdir();
        write(t.path(), "f.txt", numbered(1, 20).as_bytes());
        let p1 = named("0001.patch", SIMPLE);
        let p2 = named(
            "0002.patch",
            "--- a/f.txt\n+++ b/f.txt\n@@ -6,3 +6,3 @@\n line 6\n-LINE SEVEN\n+LINE 7\n line 8\n",
        );
        let ps = [p1, p2];
        let s = status(t.path(), &ps, &opts()).unwrap();
        assert!(s.none_applied(), "{s}");
        assert_eq!(
            s.to_string(),
            "not applied  0001.patch\nnot applied  0002.patch\n"
        );
        apply(t.path(), &ps[..1], &opts()).unwrap();
        let s = status(t.path(), &ps, &opts()).unwrap();
        assert_eq!(
            s.to_string(),
            "applied      0001.patch\nnot applied  0002.patch\n"
        );
        apply(t.path(), &ps, &opts()).unwrap();
        assert!(status(t.path(), &ps, &opts()).unwrap().all_applied());
        // Someone edits the line both patches touch: neither direction fits.
        write(
            t.path(),
            "f.txt",
            numbered(1, 20)
                .replace("line 7\n", "line seven\n")
                .as_bytes(),
        );
        let s = status(t.path(), &ps, &opts()).unwrap();
        assert!(
            matches!(
                s.patches[0].1,
                PatchStatus::Conflicts(Error::Hunk { hunk: 1, .. })
            ),
            "{s}"
        );
        assert!(s.to_string().starts_with(
            "CONFLICTS    0001.patch: 0001.patch: f.txt: hunk #1 (@@ -4,7 +4,7 @@) does not apply (context not found within the file)\n"
        ), "{s}");
    }

    #[test]
    fn apply_then_revert_round_trips_a_real_tree() {
        let t = tempdir();
        let root = t.path();
        let big: String = (1..=200).map(|i| format!("int f{i}(void);\n")).collect();
        write(root, "src/a.c", big.as_bytes());
        write(root, "src/b.txt", b"to be removed\nsoon\n");
        write(root, "noeol.txt", b"first\nlast without newline");
        write(root, "run.sh", b"#!/bin/sh\necho hi\n");
        set_mode(root, "run.sh", 0o755);
        write(root, "tool.sh", b"#!/bin/sh\n");
        set_mode(root, "tool.sh", 0o640);
        write(root, "docs/old name.md", b"doc\n");
        fs::create_dir(root.join("empty-dir")).unwrap();
        std::os::unix::fs::symlink("src/a.c", root.join("link")).unwrap();
        let original = snapshot(root);

        let p1 = named(
            "0001-a.patch",
            "Change a.c and add a file.\n\
             diff -ruN a/src/a.c b/src/a.c\n--- a/src/a.c\t2024-01-01 00:00:00.000000000 +0000\n+++ b/src/a.c\t2024-01-02 00:00:00.000000000 +0000\n\
             @@ -9,7 +9,8 @@\n int f9(void);\n int f10(void);\n int f11(void);\n-int f12(void);\n+int f12(int);\n+int f12b(int);\n int f13(void);\n int f14(void);\n int f15(void);\n\
             @@ -197,4 +198,4 @@\n int f197(void);\n int f198(void);\n int f199(void);\n-int f200(void);\n+int f200(int);\n\
             diff -ruN a/src/sub/dir/new.c b/src/sub/dir/new.c\n--- a/src/sub/dir/new.c\t1970-01-01 00:00:00.000000000 +0000\n+++ b/src/sub/dir/new.c\t2024-01-02 00:00:00.000000000 +0000\n\
             @@ -0,0 +1,2 @@\n+new\n+file\n",
        );
        let p2 = named(
            "0002-b.patch",
            "diff --git a/src/a.c b/src/a.c\nindex 1..2 100644\n--- a/src/a.c\n+++ b/src/a.c\n\
             @@ -10,5 +10,5 @@\n int f10(void);\n int f11(void);\n-int f12(int);\n+int f12(long);\n int f12b(int);\n int f13(void);\n\
             diff --git a/src/b.txt b/src/b.txt\ndeleted file mode 100644\nindex 1..0\n--- a/src/b.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-to be removed\n-soon\n\
             diff --git a/noeol.txt b/noeol.txt\nindex 1..2 100644\n--- a/noeol.txt\n+++ b/noeol.txt\n@@ -1,2 +1,3 @@\n first\n-last without newline\n\\ No newline at end of file\n+last with newline\n+more\n\
             diff --git a/tool.sh b/tool.sh\nold mode 100644\nnew mode 100755\n\
             diff --git a/docs/old name.md b/docs/new name.md\nsimilarity index 90%\nrename from docs/old name.md\nrename to docs/new name.md\n--- a/docs/old name.md\n+++ b/docs/new name.md\n@@ -1 +1 @@\n-doc\n+documentation\n",
        );
        let p3 = named(
            "0003-c.patch",
            "--- a/run.sh\n+++ b/run.sh\n@@ -1,2 +1,2 @@\n #!/bin/sh\n-echo hi\n+echo hello\n\\ No newline at end of file\n\
             --- a/src/sub/dir/new.c\n+++ b/src/sub/dir/new.c\n@@ -1,2 +1,3 @@\n new\n+shiny\n file\n",
        );
        let series = [p1, p2, p3];
        let r = apply(root, &series, &opts()).unwrap();
        assert!(
            r.patches.iter().all(|p| p.outcome == Outcome::Applied),
            "{r}"
        );
        assert_eq!(
            read(root, "src/a.c"),
            big.replace("int f12(void);\n", "int f12(long);\nint f12b(int);\n")
                .replace("int f200(void);\n", "int f200(int);\n")
        );
        assert!(!root.join("src/b.txt").exists());
        assert_eq!(read(root, "src/sub/dir/new.c"), "new\nshiny\nfile\n");
        assert_eq!(read(root, "noeol.txt"), "first\nlast with newline\nmore\n");
        assert_eq!(read(root, "run.sh"), "#!/bin/sh\necho hello");
        assert_eq!(mode(root, "run.sh"), 0o755, "mode preserved");
        assert_eq!(mode(root, "tool.sh"), 0o750, "x where r, like git");
        assert!(!root.join("docs/old name.md").exists());
        assert_eq!(read(root, "docs/new name.md"), "documentation\n");
        assert!(status(root, &series, &opts()).unwrap().all_applied());
        let applied = snapshot(root);

        // Check and apply again: nothing to do, nothing written.
        let r = check(root, &series, &opts()).unwrap();
        assert_eq!(r.skipped().count(), 3);
        assert_eq!(snapshot(root), applied);

        let r = revert(root, &series, &opts()).unwrap();
        let names: Vec<(&str, Outcome)> = r
            .patches
            .iter()
            .map(|p| (p.name.as_str(), p.outcome))
            .collect();
        assert_eq!(
            names,
            [
                ("0003-c.patch", Outcome::Reverted),
                ("0002-b.patch", Outcome::Reverted),
                ("0001-a.patch", Outcome::Reverted)
            ]
        );
        assert_eq!(
            snapshot(root),
            original,
            "apply then revert is the identity"
        );
        assert!(status(root, &series, &opts()).unwrap().none_applied());

        // Reverting what is not applied: all skipped, nothing written.
        let r = revert(root, &series, &opts()).unwrap();
        assert!(r.patches.iter().all(|p| p.outcome == Outcome::NotApplied));
        assert!(r
            .to_string()
            .contains("0003-c.patch: not applied (it applies as is); nothing to revert\n"));
        assert_eq!(snapshot(root), original);

        // Partial: only the first applied; revert undoes just that one.
        apply(root, &series[..1], &opts()).unwrap();
        let r = revert(root, &series, &opts()).unwrap();
        let outcomes: Vec<Outcome> = r.patches.iter().map(|p| p.outcome).collect();
        assert_eq!(
            outcomes,
            [Outcome::NotApplied, Outcome::NotApplied, Outcome::Reverted]
        );
        assert_eq!(snapshot(root), original);
    }

    #[test]
    fn dry_run_and_check_write_nothing() {
        let t = tempdir();
        write(t.path(), "f.txt", numbered(1, 20).as_bytes());
        let before = snapshot(t.path());
        let p = [named("p.patch", SIMPLE)];
        let r = check(t.path(), &p, &opts()).unwrap();
        assert_eq!(r.to_string(), "applying p.patch\nchecking file f.txt\n");
        apply(
            t.path(),
            &p,
            &Options {
                dry_run: true,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(snapshot(t.path()), before);
    }

    #[test]
    fn refuses_paths_leaving_the_tree_and_symlinks() {
        let t = tempdir();
        let outside = tempdir();
        write(outside.path(), "f.txt", numbered(1, 20).as_bytes());
        let escape = SIMPLE
            .replace("a/f.txt", "a/../f.txt")
            .replace("b/f.txt", "b/../f.txt");
        let e = apply(t.path(), &[named("p.patch", &escape)], &opts()).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::File {
                    problem: FileProblem::UnsafePath,
                    ..
                }
            ),
            "{e}"
        );
        let abs = SIMPLE
            .replace("a/f.txt", "/etc/f.txt")
            .replace("b/f.txt", "/etc/f.txt");
        let e = apply(
            t.path(),
            &[named("p.patch", &abs)],
            &Options { strip: 0, ..opts() },
        )
        .unwrap_err();
        assert!(
            matches!(
                &e,
                Error::File {
                    problem: FileProblem::UnsafePath,
                    ..
                }
            ),
            "{e}"
        );
        // A symlinked file and a symlinked directory are not followed.
        std::os::unix::fs::symlink(outside.path().join("f.txt"), t.path().join("f.txt")).unwrap();
        let e = apply(t.path(), &[named("p.patch", SIMPLE)], &opts()).unwrap_err();
        assert_eq!(e.to_string(), "p.patch: f.txt: not a regular file");
        std::os::unix::fs::symlink(outside.path(), t.path().join("d")).unwrap();
        let via_dir = SIMPLE
            .replace("a/f.txt", "a/d/f.txt")
            .replace("b/f.txt", "b/d/f.txt");
        let e = apply(t.path(), &[named("p.patch", &via_dir)], &opts()).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::File {
                    problem: FileProblem::BadParent,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(read(outside.path(), "f.txt"), numbered(1, 20));
        // Too few components to strip.
        let e = apply(
            t.path(),
            &[named("p.patch", SIMPLE)],
            &Options { strip: 3, ..opts() },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "p.patch: a/f.txt: cannot strip 3 leading path components"
        );
    }

    #[test]
    fn loads_a_series() {
        let t = tempdir();
        let dir = t.path().join("patches");
        write(&dir, "0001-a.patch", SIMPLE.as_bytes());
        write(
            &dir,
            "0002-b.patch",
            SIMPLE
                .replace("a/f.txt", "f.txt")
                .replace("b/f.txt", "f.txt")
                .as_bytes(),
        );
        write(
            &dir,
            "series",
            b"# OTP 27 patches\n\n0001-a.patch\n0002-b.patch -p0   # no prefixes\n",
        );
        let s = Series::load(&dir).unwrap();
        let names: Vec<(&str, Option<usize>)> = s
            .patches
            .iter()
            .map(|p| (p.name.as_str(), p.strip))
            .collect();
        assert_eq!(names, [("0001-a.patch", None), ("0002-b.patch", Some(0))]);
        assert_eq!(
            s.patches[0].path.as_deref(),
            Some(dir.join("0001-a.patch").as_path())
        );

        write(&dir, "series", b"0001-a.patch\n0009-missing.patch\n");
        let e = Series::load(&dir).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: lists `0009-missing.patch`, but {} does not exist",
                dir.join("series").display(),
                dir.join("0009-missing.patch").display()
            )
        );
        write(&dir, "series", b"0001-a.patch --fuzz=3\n");
        assert!(matches!(
            Series::load(&dir),
            Err(Error::SeriesSyntax { line: 1, .. })
        ));
        // A broken patch names its file and line.
        write(
            &dir,
            "0003-bad.patch",
            b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n?\n",
        );
        write(&dir, "series", b"0003-bad.patch\n");
        let e = Series::load(&dir).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:5: ", dir.join("0003-bad.patch").display())),
            "{e}"
        );
    }

    #[test]
    fn latin1_contents_are_bytes() {
        let t = tempdir();
        write(t.path(), "l1.erl", b"%% caf\xe9\nfoo() -> ok.\n");
        let patch = b"--- a/l1.erl\n+++ b/l1.erl\n@@ -1,2 +1,2 @@\n %% caf\xe9\n-foo() -> ok.\n+foo() -> \xe9.\n";
        let p = Patch::parse_bytes("l1.patch", patch).unwrap();
        apply(t.path(), &[p], &opts()).unwrap();
        assert_eq!(
            fs::read(t.path().join("l1.erl")).unwrap(),
            b"%% caf\xe9\nfoo() -> \xe9.\n"
        );
    }

    #[test]
    fn diff_u_of_an_orig_file_patches_the_file_that_exists() {
        let t = tempdir();
        write(t.path(), "f.txt", numbered(1, 20).as_bytes());
        let p = SIMPLE
            .replace(
                "--- a/f.txt",
                "--- f.txt.orig\t2024-01-01 00:00:00.000000000 +0000",
            )
            .replace(
                "+++ b/f.txt",
                "+++ f.txt\t2024-01-01 00:00:01.000000000 +0000",
            );
        let r = apply(
            t.path(),
            &[named("p.patch", &p)],
            &Options { strip: 0, ..opts() },
        )
        .unwrap();
        assert_eq!(r.patches[0].files[0].path, Path::new("f.txt"));
        assert_eq!(
            read(t.path(), "f.txt"),
            numbered(1, 20).replace("line 7\n", "LINE SEVEN\n")
        );
        assert!(!t.path().join("f.txt.orig").exists());
    }

    // ---- cross-checks against GNU patch and git ------------------------------------

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A few real text files (from /usr/include, else made up).
    fn sources() -> Vec<(String, Vec<u8>)> {
        let names = ["stdio.h", "string.h", "unistd.h", "fcntl.h", "signal.h"];
        names
            .iter()
            .map(|n| {
                let text = fs::read(Path::new("/usr/include").join(n)).unwrap_or_else(|_| {
                    (0..300)
                        .map(|i| format!("/* {n} {i} */\n"))
                        .collect::<String>()
                        .into_bytes()
                });
                (n.replace(".h", ".txt"), text)
            })
            .collect()
    }

    /// Random edits: removed, added, replaced and duplicated lines, sometimes a missing
    /// final newline.
    fn mutate(text: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = split_lines(text).into_iter().map(<[u8]>::to_vec).collect();
        if let Some(last) = lines.last_mut() {
            if !last.ends_with(b"\n") {
                last.push(b'\n');
            }
        }
        for _ in 0..1 + rng.below(5) {
            let at = rng.below(lines.len() + 1);
            let n = 1 + rng.below(3);
            match rng.below(4) {
                0 => {
                    let end = (at + n).min(lines.len());
                    lines.drain(at..end);
                }
                1 => {
                    for k in 0..n {
                        lines.insert(
                            at,
                            format!("/* added {} {k} */\n", rng.next() % 1000).into_bytes(),
                        );
                    }
                }
                2 => {
                    for l in lines.iter_mut().skip(at).take(n) {
                        l.splice(0..0, b"// changed: ".iter().copied());
                    }
                }
                _ => {
                    if !lines.is_empty() {
                        let src = lines[rng.below(lines.len())].clone();
                        lines.insert(at.min(lines.len()), src);
                    }
                }
            }
        }
        let mut out = lines.concat();
        if rng.below(5) == 0 && out.ends_with(b"\n") {
            out.pop();
        }
        out
    }

    fn command(program: &str, dir: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(dir)
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("HOME", dir)
            .env("GIT_CONFIG_NOSYSTEM", "1");
        c
    }

    /// Makes a `before` tree `a` and an edited tree `b` under `dir`.
    fn make_pair(dir: &Path, seed: u64) -> Rng {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x1000_0000_01b3));
        for (i, (name, text)) in sources().into_iter().enumerate() {
            let text = if (seed as usize + i).is_multiple_of(4) {
                mutate(&text, &mut rng)
            } else {
                text
            };
            let rel = if i % 2 == 0 {
                name.clone()
            } else {
                format!("sub/{name}")
            };
            write(&dir.join("a"), &rel, &text);
            match rng.below(8) {
                0 => {} // deleted in b
                1 => {
                    write(&dir.join("b"), &rel, &text);
                }
                _ => write(&dir.join("b"), &rel, &mutate(&text, &mut rng)),
            }
        }
        if seed.is_multiple_of(2) {
            write(
                &dir.join("b"),
                &format!("new/dir/created{seed}.txt"),
                b"brand\nnew\n",
            );
        }
        rng
    }

    fn copy_tree(from: &Path, to: &Path) {
        for (rel, node) in snapshot(from) {
            match node {
                Node::Dir(_) => fs::create_dir_all(to.join(rel)).unwrap(),
                Node::File(m, c) => {
                    write(to, &rel, &c);
                    set_mode(to, &rel, m);
                }
                Node::Link(_) => unreachable!(),
            }
        }
        fs::create_dir_all(to).unwrap();
    }

    fn gnu_patch(dir: &Path, tree: &Path, patch: &Path, strip: usize) -> bool {
        output(
            command("patch", dir)
                .args(["-f", "-s", "--no-backup-if-mismatch", "-r", "-"])
                .arg(format!("-p{strip}"))
                .arg("-d")
                .arg(tree)
                .arg("-i")
                .arg(patch),
        )
        .status
        .success()
    }

    fn diff(dir: &Path, git: bool) -> Vec<u8> {
        let out = if git {
            output(command("git", dir).args([
                "-c",
                "core.quotepath=false",
                "diff",
                "--no-index",
                "--no-color",
                "--no-ext-diff",
                "a",
                "b",
            ]))
        } else {
            output(command("diff", dir).args(["-ruN", "a", "b"]))
        };
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn agrees_with_gnu_patch_on_diff_and_git_diff_output() {
        if which("patch").is_none() || which("diff").is_none() {
            skip!("needs GNU patch and diff");
        }
        let formats: &[bool] = if which("git").is_some() {
            &[false, true]
        } else {
            &[false]
        };
        for seed in 0..6u64 {
            for &git in formats {
                let t = tempdir();
                let dir = t.path();
                make_pair(dir, seed);
                let text = diff(dir, git);
                let strip = if git { 2 } else { 1 };
                fs::write(dir.join("p.patch"), &text).unwrap();
                let what = format!(
                    "seed {seed}, git {git}:\n{}",
                    String::from_utf8_lossy(&text)
                );
                let p =
                    Patch::parse(&dir.join("p.patch")).unwrap_or_else(|e| panic!("{e}\n{what}"));

                copy_tree(&dir.join("a"), &dir.join("gnu"));
                assert!(
                    gnu_patch(dir, &dir.join("gnu"), &dir.join("p.patch"), strip),
                    "{what}"
                );
                copy_tree(&dir.join("a"), &dir.join("ours"));
                let o = Options { strip, ..opts() };
                apply(&dir.join("ours"), std::slice::from_ref(&p), &o)
                    .unwrap_or_else(|e| panic!("{e}\n{what}"));
                assert_eq!(
                    contents(&dir.join("ours")),
                    contents(&dir.join("gnu")),
                    "{what}"
                );
                assert_eq!(
                    contents(&dir.join("ours")),
                    contents(&dir.join("b")),
                    "{what}"
                );

                revert(&dir.join("ours"), &[p], &o).unwrap_or_else(|e| panic!("{e}\n{what}"));
                assert_eq!(
                    snapshot(&dir.join("ours")),
                    snapshot(&dir.join("a")),
                    "{what}"
                );
            }
        }
    }
}
