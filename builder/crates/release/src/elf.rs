//! ELF dynamic-linking information and a faithful model of glibc's `ld.so`
//! library search.
//!
//! # What this module owns
//!
//! * Reading the parts of an ELF file the dynamic loader cares about: class,
//!   machine, `PT_INTERP`, `DT_NEEDED`, `DT_RPATH`, `DT_RUNPATH`, `DT_SONAME`
//!   and `DT_FLAGS_1` ([`inspect`], [`is_elf`]).
//! * Reproducing the search glibc's `ld.so` performs for those names
//!   ([`Resolver`]), transitively, so that beambake knows which host files
//!   (program interpreters and shared libraries) the image needs
//!   ([`Resolver::closure`]).
//!
//! # What it must not do
//!
//! It never copies, creates or modifies files, knows nothing about the image's
//! rootfs layout or about Erlang releases, and does not decide *which* files
//! are roots. It returns paths; the caller decides what to do with them
//! (including recreating symlink chains: returned paths are *not*
//! canonicalized).
//!
//! # How closely it follows ld.so (glibc 2.36, Debian 12) — and where not
//!
//! Checked against the real loader (`LD_DEBUG=libs`, `ldd`, running binaries)
//! on Debian 12; the tests re-check much of it.
//!
//! * **Search order** for a `DT_NEEDED` name without `/`: the `DT_RPATH` of the
//!   requesting object and then of each object up its *loader chain* (the
//!   object that first caused it to be loaded, and so on up to the root) —
//!   only when the requesting object has no `DT_RUNPATH`; an object that has a
//!   `DT_RUNPATH` contributes no `DT_RPATH` to the chain (glibc discards its
//!   RPATH); then the requester's own `DT_RUNPATH` (never inherited); then the
//!   `ld.so.conf` directories in file order (standing in for `ld.so.cache`,
//!   which `ldconfig` builds in that order); then glibc's built-in trusted
//!   directories. The last two are skipped when the requester was linked with
//!   `-z nodeflib` (`DF_1_NODEFLIB`), as ld.so does.
//! * **Trusted directories.** Debian 12's ld.so has
//!   `/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib:/usr/lib` as its
//!   "system search path" (observed with `LD_DEBUG=libs`); `/lib64` and
//!   `/usr/lib64` are *not* searched, so they are not used here either. For
//!   other machines the Debian multiarch triplet is used the same way.
//! * **`LD_LIBRARY_PATH` is ignored on purpose**: the image must contain what
//!   the binaries need on their own, not what happens to be reachable through
//!   the builder's environment. `LD_PRELOAD` and `/etc/ld.so.preload` are
//!   ignored for the same reason.
//! * **`ld.so.cache` is not read**; `/etc/ld.so.conf` (with its `include`
//!   globs, relative ones relative to the including file's directory) is read
//!   instead, so a stale or missing cache does not matter. Differences from a
//!   fresh cache are limited to libraries whose file name is not their SONAME
//!   (the cache is keyed by SONAME).
//! * **Hardware-capability subdirectories** (`glibc-hwcaps/x86-64-v3`,
//!   legacy `tls/haswell/...`) are not searched: which ones ld.so tries depends
//!   on the CPU the program runs on, which for an image is not the builder's.
//!   Debian installs nothing there.
//! * **Already-loaded objects.** Like ld.so, each root is simulated in its own
//!   "process": a name is first matched against the objects already loaded
//!   for that root (by the names they were requested under, their path, or
//!   their SONAME) and, if found, not searched again; a file found through a
//!   different path but with the same device and inode as a loaded object is
//!   the same object (its path is still reported, since ld.so opens it).
//!   Loading is breadth-first in `DT_NEEDED` order, as in ld.so.
//! * **`$ORIGIN`** (and `${ORIGIN}`) expands to the directory of the object
//!   holding the RPATH/RUNPATH *by the path ld.so loaded it from*, without
//!   resolving symlinks or `..` (glibc derives it from the name it opened).
//!   The one exception is a root that is a program (it has `PT_INTERP`): the
//!   kernel-started executable's origin comes from `/proc/self/exe`, which is
//!   canonical, so its path is canonicalized first (inside the sysroot, if
//!   any). A root without `PT_INTERP` (a NIF, a plugin) is treated as if it
//!   were `dlopen`ed by that path and sits at the top of its own loader chain;
//!   the RPATH of whatever executable would `dlopen` it is not known here.
//! * **`$LIB`** expands to `lib/<multiarch triplet>` (what Debian's ld.so does,
//!   e.g. `lib/x86_64-linux-gnu`). **`$PLATFORM`** expands to the machine name
//!   (`x86_64`, `i686`, `aarch64`, `riscv64`); note that the real ld.so picks
//!   it from the CPU (e.g. `haswell`), so a `$PLATFORM` in a search path is
//!   inherently CPU-dependent. Unknown machines give
//!   [`ElfError::UnsupportedToken`].
//! * **Relative paths.** A `DT_NEEDED` with a `/` that is relative, or a
//!   relative program interpreter, is an error ([`ElfError::RelativePath`]):
//!   ld.so resolves it against the current directory of the running process,
//!   which the image does not reproduce. Relative (and empty) RPATH/RUNPATH
//!   entries mean the same to ld.so and are skipped for the same reason.
//! * **Accepting a candidate** follows glibc's `open_verify`: a candidate that
//!   does not exist or cannot be opened for lack of permission is skipped, as
//!   is an ELF of the other class (32/64-bit) or another `e_machine`. Anything
//!   else ld.so treats as fatal — a non-ELF file ("invalid ELF header"), a
//!   file too short, a directory, wrong byte order, an executable — and so
//!   does this module ([`ElfError::InvalidCandidate`]): ld.so does *not* go
//!   on searching after such a file, the program fails to start.
//! * The interpreter (`PT_INTERP`) of every root and every library is
//!   included (for libraries ld.so itself ignores it, but it is the same
//!   loader). Its SONAME then satisfies `DT_NEEDED: ld-linux-x86-64.so.2` the
//!   way the already-loaded ld.so does. For a root without `PT_INTERP` (a
//!   NIF), the process it is loaded into is assumed to run the machine's
//!   standard glibc loader (`/lib64/ld-linux-x86-64.so.2` on x86_64), which
//!   answers a `DT_NEEDED` of its SONAME before any `PT_INTERP` was seen (as
//!   `ldd` shows it).
//! * Not modelled: `DT_AUXILIARY`/`DT_FILTER` filtees, `dlopen` calls made at
//!   run time, secure-execution (setuid) restrictions.
//!
//! With a sysroot ([`Resolver::with_sysroot`]) every absolute path the target
//! would use — `ld.so.conf`, search directories, interpreter, absolute
//! `DT_NEEDED`, and absolute symlink targets met on the way — is looked up
//! under the sysroot; `$ORIGIN` stays the host directory of the object.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use goblin::container::{Container, Ctx};
use goblin::elf::dynamic::{
    Dynamic, DF_1_NODEFLIB, DF_1_PIE, DT_FLAGS_1, DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME,
    DT_STRSZ, DT_STRTAB,
};
use goblin::elf::program_header::{ProgramHeader, PT_INTERP, PT_LOAD};
use goblin::elf::Elf;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const EI_VERSION: usize = 6;
const EI_OSABI: usize = 7;
const EI_ABIVERSION: usize = 8;
const EI_PAD: usize = 9;
const EI_NIDENT: usize = 16;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ELFOSABI_SYSV: u8 = 0;
const ELFOSABI_GNU: u8 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const EM_RISCV: u16 = 243;
/// Limit on symlinks followed while resolving one path inside a sysroot
/// (the kernel's is 40).
const MAX_SYMLINKS: usize = 40;
/// Limit on nested `include`s in ld.so.conf (ldconfig has none and loops).
const MAX_CONF_DEPTH: usize = 16;

/// Errors of this module. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Reading a file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a (well-formed) ELF file.
    #[error("cannot parse ELF file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A `DT_NEEDED` library was not found anywhere ld.so would look.
    #[error(
        "{library} needed by {} not found (searched: {})",
        needed_by.display(),
        join_paths(searched)
    )]
    NotFound {
        library: String,
        needed_by: PathBuf,
        searched: Vec<PathBuf>,
    },
    /// The program interpreter (`PT_INTERP`) does not exist.
    #[error(
        "program interpreter {interpreter} of {} not found at {}",
        needed_by.display(),
        path.display()
    )]
    InterpreterNotFound {
        interpreter: String,
        needed_by: PathBuf,
        path: PathBuf,
    },
    /// ld.so would stop with an error on this file instead of searching on.
    #[error(
        "{}: {reason} (candidate for {library} needed by {}; ld.so fails here too)",
        path.display(),
        needed_by.display()
    )]
    InvalidCandidate {
        path: PathBuf,
        library: String,
        needed_by: PathBuf,
        reason: String,
    },
    /// A relative `DT_NEEDED` path or interpreter: depends on the run-time
    /// current directory.
    #[error(
        "{name} (from {}) is a relative path; ld.so would resolve it against the \
         current directory at run time, which the image does not reproduce",
        needed_by.display()
    )]
    RelativePath { name: String, needed_by: PathBuf },
    /// A dynamic string token that cannot be expanded for this machine.
    #[error("cannot expand {token} in search path {entry:?} of {} (e_machine {machine})", path.display())]
    UnsupportedToken {
        token: String,
        entry: String,
        path: PathBuf,
        machine: u16,
    },
    /// A problem with the loader configuration (ld.so.conf).
    #[error("loader configuration {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
}

fn join_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the dynamic loader needs to know about one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// The path it was read from, as given.
    pub path: PathBuf,
    /// ELFCLASS64 (true) or ELFCLASS32 (false).
    pub class64: bool,
    /// `e_machine` (62 = x86_64).
    pub machine: u16,
    /// `PT_INTERP`, as written in the file.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` split at `:`, unexpanded (empty if there is no DT_RPATH).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` split at `:`, unexpanded (empty if there is no DT_RUNPATH).
    pub runpath: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
}

/// Private extras the resolver needs beyond [`ElfInfo`].
#[derive(Debug, Clone)]
struct Parsed {
    info: ElfInfo,
    little_endian: bool,
    flags_1: u64,
}

/// True if the file starts with the ELF magic. Reads 4 bytes; a file shorter
/// than that, or something that is not a regular file, is not an ELF.
pub fn is_elf(path: &Path) -> io::Result<bool> {
    if !fs::metadata(path)?.is_file() {
        return Ok(false);
    }
    let mut magic = Vec::with_capacity(4);
    File::open(path)?.take(4).read_to_end(&mut magic)?;
    Ok(magic == ELF_MAGIC)
}

/// Reads the dynamic-linking information of one ELF file.
pub fn inspect(path: &Path) -> Result<ElfInfo, ElfError> {
    Ok(read_parsed(path, path)?.info)
}

/// Reads and parses `physical`, reporting errors against `reported`.
fn read_parsed(reported: &Path, physical: &Path) -> Result<Parsed, ElfError> {
    let io_err = |source| ElfError::Io {
        path: reported.to_path_buf(),
        source,
    };
    let meta = fs::metadata(physical).map_err(io_err)?;
    if !meta.is_file() {
        return Err(ElfError::Parse {
            path: reported.to_path_buf(),
            message: "not a regular file".to_string(),
        });
    }
    let bytes = fs::read(physical).map_err(io_err)?;
    parse_bytes(reported, &bytes)
}

fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Parsed, ElfError> {
    let err = |message: String| ElfError::Parse {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 4 || bytes[..4] != ELF_MAGIC {
        return Err(err("not an ELF file (bad magic)".to_string()));
    }
    let header = Elf::parse_header(bytes).map_err(|e| err(format!("ELF header: {e}")))?;
    let container = header.container().map_err(|e| err(e.to_string()))?;
    let endian = header.endianness().map_err(|e| err(e.to_string()))?;
    let ctx = Ctx::new(container, endian);
    let e_phoff = usize::try_from(header.e_phoff)
        .map_err(|_| err("program header offset out of range".to_string()))?;
    let phdrs = ProgramHeader::parse(bytes, e_phoff, usize::from(header.e_phnum), ctx)
        .map_err(|e| err(format!("program headers: {e}")))?;

    // The kernel uses the first PT_INTERP.
    let mut interpreter = None;
    if let Some(ph) = phdrs.iter().find(|ph| ph.p_type == PT_INTERP) {
        let data = file_range(bytes, ph.p_offset, ph.p_filesz)
            .ok_or_else(|| err("PT_INTERP lies outside the file".to_string()))?;
        let s = until_nul(data);
        interpreter = Some(
            std::str::from_utf8(s)
                .map_err(|_| err("PT_INTERP is not valid UTF-8".to_string()))?
                .to_string(),
        );
    }

    let mut needed = Vec::new();
    let mut rpath = None;
    let mut runpath = None;
    let mut soname = None;
    let mut flags_1 = 0;
    let dynamic =
        Dynamic::parse(bytes, &phdrs, ctx).map_err(|e| err(format!("dynamic section: {e}")))?;
    if let Some(dynamic) = dynamic {
        let mut strtab_addr = None;
        let mut strsz = None;
        for d in &dynamic.dyns {
            match d.d_tag {
                DT_STRTAB => strtab_addr = Some(d.d_val),
                DT_STRSZ => strsz = Some(d.d_val),
                DT_FLAGS_1 => flags_1 = d.d_val,
                _ => {}
            }
        }
        let uses_strings = dynamic
            .dyns
            .iter()
            .any(|d| matches!(d.d_tag, DT_NEEDED | DT_RPATH | DT_RUNPATH | DT_SONAME));
        if uses_strings {
            let (addr, size) = match (strtab_addr, strsz) {
                (Some(a), Some(s)) => (a, s),
                _ => return Err(err("DT_STRTAB or DT_STRSZ missing".to_string())),
            };
            let offset = vaddr_to_offset(&phdrs, addr)
                .ok_or_else(|| err(format!("DT_STRTAB {addr:#x} is not in a PT_LOAD segment")))?;
            let strtab = file_range(bytes, offset, size)
                .ok_or_else(|| err("dynamic string table lies outside the file".to_string()))?;
            let get = |tag: &str, val: u64| -> Result<String, ElfError> {
                let start = usize::try_from(val)
                    .ok()
                    .filter(|&s| s < strtab.len())
                    .ok_or_else(|| err(format!("{tag} string offset {val:#x} out of range")))?;
                let s = &strtab[start..];
                let end = s
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or_else(|| err(format!("{tag} string is not NUL-terminated")))?;
                String::from_utf8(s[..end].to_vec())
                    .map_err(|_| err(format!("{tag} string is not valid UTF-8")))
            };
            // glibc keeps one entry per tag (the last one) except DT_NEEDED.
            for d in &dynamic.dyns {
                match d.d_tag {
                    DT_NEEDED => needed.push(get("DT_NEEDED", d.d_val)?),
                    DT_RPATH => rpath = Some(get("DT_RPATH", d.d_val)?),
                    DT_RUNPATH => runpath = Some(get("DT_RUNPATH", d.d_val)?),
                    DT_SONAME => soname = Some(get("DT_SONAME", d.d_val)?),
                    _ => {}
                }
            }
        }
    }
    let split = |s: Option<String>| -> Vec<String> {
        s.map(|s| s.split(':').map(str::to_string).collect())
            .unwrap_or_default()
    };
    Ok(Parsed {
        info: ElfInfo {
            path: path.to_path_buf(),
            class64: container == Container::Big,
            machine: header.e_machine,
            interpreter,
            needed,
            rpath: split(rpath),
            runpath: split(runpath),
            soname,
        },
        little_endian: endian.is_little(),
        flags_1,
    })
}

fn file_range(bytes: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    bytes.get(start..end)
}

fn until_nul(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == 0) {
        Some(end) => &s[..end],
        None => s,
    }
}

fn vaddr_to_offset(phdrs: &[ProgramHeader], addr: u64) -> Option<u64> {
    phdrs
        .iter()
        .filter(|ph| ph.p_type == PT_LOAD && addr >= ph.p_vaddr)
        .find(|ph| addr - ph.p_vaddr < ph.p_filesz)
        .and_then(|ph| ph.p_offset.checked_add(addr - ph.p_vaddr))
}

/// The result of [`Resolver::closure`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Closure {
    /// Sorted by path, deduplicated by path; never contains a root.
    pub libs: Vec<ResolvedLib>,
}

/// One file the loader opens for the roots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedLib {
    /// The path as ld.so would open it, i.e. search dir joined with the
    /// DT_NEEDED name, or the PT_INTERP path as written (e.g.
    /// /lib64/ld-linux-x86-64.so.2), prefixed with the sysroot if any. NOT
    /// canonicalized: the caller recreates the symlink chain in the image.
    pub path: PathBuf,
    /// The first ELF (roots in sorted order, then ld.so's breadth-first load
    /// order) that needed it.
    pub needed_by: PathBuf,
    /// The DT_NEEDED string or the interpreter path.
    pub name: String,
}

/// Where to look after RPATH/RUNPATH.
#[derive(Debug, Clone)]
enum SystemSearch {
    /// ld.so.conf directories (target paths, in order) then the trusted
    /// directories for the requester's machine.
    Configured { conf_dirs: Vec<PathBuf> },
    /// Exactly these host directories.
    Explicit(Vec<PathBuf>),
}

/// Resolves program interpreters and `DT_NEEDED` libraries the way glibc's
/// `ld.so` does; see the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Resolver {
    sysroot: Option<PathBuf>,
    system: SystemSearch,
}

/// What a candidate must look like to be accepted for a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Expect {
    class64: bool,
    little_endian: bool,
    machine: u16,
}

impl Expect {
    fn of(p: &Parsed) -> Expect {
        Expect {
            class64: p.info.class64,
            little_endian: p.little_endian,
            machine: p.info.machine,
        }
    }
}

#[derive(Debug, Clone)]
enum Verdict {
    Accept(Box<Parsed>, (u64, u64)),
    Skip,
}

/// One object loaded during the simulation of one root.
struct Obj {
    path: PathBuf,
    origin: PathBuf,
    parsed: Parsed,
    /// Names it matches (what it was requested as, and its path); its SONAME
    /// is matched separately.
    names: Vec<String>,
    loader: Option<usize>,
    id: (u64, u64),
}

/// State of one root's simulated process.
struct Sim<'a> {
    objs: Vec<Obj>,
    queue: VecDeque<usize>,
    /// The root is a dlopen'ed object, not a program.
    dlopened: bool,
    out: &'a mut BTreeMap<PathBuf, ResolvedLib>,
    cache: &'a mut HashMap<(PathBuf, Expect), Verdict>,
}

impl Sim<'_> {
    fn find_loaded(&self, name: &str) -> Option<usize> {
        self.objs.iter().position(|o| {
            o.names.iter().any(|n| n == name) || o.parsed.info.soname.as_deref() == Some(name)
        })
    }

    fn record(&mut self, path: &Path, needed_by: usize, name: &str) {
        let needed_by = self.objs[needed_by].path.clone();
        self.out
            .entry(path.to_path_buf())
            .or_insert_with(|| ResolvedLib {
                path: path.to_path_buf(),
                needed_by,
                name: name.to_string(),
            });
    }

    /// Registers a file ld.so opened for `name` on behalf of `requester`.
    fn add(&mut self, requester: usize, name: &str, path: PathBuf, parsed: Parsed, id: (u64, u64)) {
        self.record(&path, requester, name);
        if let Some(existing) = self.objs.iter().position(|o| o.id == id) {
            // Same file under another path: ld.so reuses the loaded object.
            self.objs[existing].names.push(name.to_string());
            return;
        }
        let origin = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let names = vec![name.to_string(), path.to_string_lossy().into_owned()];
        self.objs.push(Obj {
            path,
            origin,
            parsed,
            names,
            loader: Some(requester),
            id,
        });
        self.queue.push_back(self.objs.len() - 1);
    }
}

impl Resolver {
    /// Search configuration of the running host: `/etc/ld.so.conf` and its
    /// `include` globs (relative includes are relative to the including
    /// file's directory), then the trusted directories of Debian's glibc
    /// (`/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib`, `/usr/lib`, chosen per
    /// requesting object's machine). `LD_LIBRARY_PATH` is deliberately
    /// ignored: the image must contain what its binaries need by themselves,
    /// not whatever the builder's environment makes reachable.
    pub fn host() -> Result<Resolver, ElfError> {
        Resolver::configured(None)
    }

    /// Like [`Resolver::host`], but every absolute path (ld.so.conf, search
    /// dirs, interpreter, absolute DT_NEEDED, absolute symlink targets) is
    /// looked up under `sysroot`. Returned paths are host paths (including
    /// the sysroot prefix).
    pub fn with_sysroot(sysroot: &Path) -> Result<Resolver, ElfError> {
        let sysroot = fs::canonicalize(sysroot).map_err(|source| ElfError::Io {
            path: sysroot.to_path_buf(),
            source,
        })?;
        Resolver::configured(Some(sysroot))
    }

    /// Explicit host search dirs, replacing ld.so.conf and the trusted
    /// directories (RPATH/RUNPATH still apply). No sysroot.
    pub fn with_dirs(dirs: Vec<PathBuf>) -> Resolver {
        Resolver {
            sysroot: None,
            system: SystemSearch::Explicit(dedup(dirs)),
        }
    }

    fn configured(sysroot: Option<PathBuf>) -> Result<Resolver, ElfError> {
        let mut r = Resolver {
            sysroot,
            system: SystemSearch::Configured {
                conf_dirs: Vec::new(),
            },
        };
        let mut conf_dirs = Vec::new();
        r.parse_conf(Path::new("/etc/ld.so.conf"), 0, &mut conf_dirs)?;
        r.system = SystemSearch::Configured {
            conf_dirs: dedup(conf_dirs),
        };
        Ok(r)
    }

    /// Target path -> host path.
    fn host_path(&self, target: &Path) -> PathBuf {
        match &self.sysroot {
            Some(root) => root.join(strip_root(target)),
            None => target.to_path_buf(),
        }
    }

    /// Host path -> the path to actually open: inside a sysroot, symlinks are
    /// resolved relative to the sysroot (an absolute target means the
    /// sysroot's `/`).
    fn physical(&self, host: &Path) -> Result<PathBuf, ElfError> {
        match &self.sysroot {
            Some(root) => match host.strip_prefix(root) {
                Ok(rel) => resolve_under(root, rel).map_err(|source| ElfError::Io {
                    path: host.to_path_buf(),
                    source,
                }),
                Err(_) => Ok(host.to_path_buf()),
            },
            None => Ok(host.to_path_buf()),
        }
    }

    fn parse_conf(
        &self,
        conf: &Path,
        depth: usize,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), ElfError> {
        let host = self.host_path(conf);
        if depth > MAX_CONF_DEPTH {
            return Err(ElfError::Config {
                path: host,
                message: "include nesting too deep (include loop?)".to_string(),
            });
        }
        let text = match fs::read(self.physical(&host)?) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(ElfError::Io { path: host, source }),
        };
        let base = conf.parent().unwrap_or(Path::new("/"));
        for line in text.split(|&b| b == b'\n') {
            let line = match line.iter().position(|&b| b == b'#') {
                Some(i) => &line[..i],
                None => line,
            };
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let keyword = |kw: &[u8]| {
                line.len() > kw.len()
                    && line[..kw.len()].eq_ignore_ascii_case(kw)
                    && matches!(line[kw.len()], b' ' | b'\t')
            };
            if keyword(b"include") {
                for pat in line[7..].split(|&b| b == b' ' || b == b'\t') {
                    if pat.is_empty() {
                        continue;
                    }
                    let pat = Path::new(OsStr::from_bytes(pat));
                    let pat = if pat.is_absolute() {
                        pat.to_path_buf()
                    } else {
                        base.join(pat)
                    };
                    for file in self.glob(&pat)? {
                        self.parse_conf(&file, depth + 1, out)?;
                    }
                }
            } else if keyword(b"hwcap") {
                // Obsolete; ldconfig ignores it.
            } else {
                // "dir" or the old "dir=type"; trailing slashes are dropped.
                let dir = match line.iter().position(|&b| b == b'=') {
                    Some(i) => &line[..i],
                    None => line,
                };
                let mut dir = dir.trim_ascii();
                while dir.len() > 1 && dir.ends_with(b"/") {
                    dir = &dir[..dir.len() - 1];
                }
                let dir = Path::new(OsStr::from_bytes(dir));
                // ldconfig refuses relative directories.
                if dir.is_absolute() {
                    out.push(dir.to_path_buf());
                }
            }
        }
        Ok(())
    }

    /// Expands a glob over target paths (like glob(3): sorted, only existing
    /// paths, `*`/`?`/`[...]` don't match a leading dot).
    fn glob(&self, pattern: &Path) -> Result<Vec<PathBuf>, ElfError> {
        let mut current = vec![PathBuf::from("/")];
        for comp in pattern.components() {
            match comp {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => current.iter_mut().for_each(|p| p.push("..")),
                Component::Normal(c) => {
                    let pat = c.as_bytes();
                    if !pat.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
                        current.iter_mut().for_each(|p| p.push(c));
                        continue;
                    }
                    let mut next = Vec::new();
                    for dir in &current {
                        let phys = self.physical(&self.host_path(dir))?;
                        let Ok(entries) = fs::read_dir(&phys) else {
                            continue;
                        };
                        let mut names: Vec<OsString> = entries
                            .filter_map(|e| e.ok().map(|e| e.file_name()))
                            .filter(|n| {
                                let n = n.as_bytes();
                                (!n.starts_with(b".") || pat.starts_with(b".")) && fnmatch(pat, n)
                            })
                            .collect();
                        names.sort();
                        next.extend(names.into_iter().map(|n| dir.join(n)));
                    }
                    current = next;
                }
            }
        }
        let mut found = Vec::new();
        for p in current {
            if fs::metadata(self.physical(&self.host_path(&p))?).is_ok() {
                found.push(p);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Host directories searched after RPATH/RUNPATH for a requester of
    /// this machine. With `nodeflib` (the requester has `DF_1_NODEFLIB`),
    /// ld.so skips the trusted directories and every cache entry lying under
    /// one of them, so only ld.so.conf directories outside the trusted ones
    /// remain; explicit directories ([`Resolver::with_dirs`]) stand for the
    /// trusted ones and are all dropped.
    fn system_dirs(&self, machine: u16, nodeflib: bool) -> Vec<PathBuf> {
        match &self.system {
            SystemSearch::Explicit(_) if nodeflib => Vec::new(),
            SystemSearch::Explicit(dirs) => dirs.clone(),
            SystemSearch::Configured { conf_dirs } => {
                let mut trusted = Vec::new();
                if let Some(triplet) = multiarch(machine) {
                    trusted.push(Path::new("/lib").join(triplet));
                    trusted.push(Path::new("/usr/lib").join(triplet));
                }
                trusted.push(PathBuf::from("/lib"));
                trusted.push(PathBuf::from("/usr/lib"));
                let mut dirs: Vec<PathBuf> = conf_dirs
                    .iter()
                    .filter(|d| !nodeflib || !trusted.iter().any(|t| d.starts_with(t)))
                    .cloned()
                    .collect();
                if !nodeflib {
                    dirs.extend(trusted);
                }
                dedup(dirs).iter().map(|d| self.host_path(d)).collect()
            }
        }
    }

    /// Expands one RPATH/RUNPATH entry of `obj` to a host directory; `None`
    /// for entries ld.so would resolve against the current directory.
    fn expand_entry(&self, entry: &str, obj: &Obj) -> Result<Option<PathBuf>, ElfError> {
        let machine = obj.parsed.info.machine;
        let unsupported = |token: &str| ElfError::UnsupportedToken {
            token: token.to_string(),
            entry: entry.to_string(),
            path: obj.path.clone(),
            machine,
        };
        let (expanded, origin_first) = expand_tokens(
            entry,
            obj.origin.as_os_str(),
            lib_token(machine).ok_or_else(|| unsupported("$LIB")),
            platform_token(machine).ok_or_else(|| unsupported("$PLATFORM")),
        )?;
        let path = PathBuf::from(expanded);
        if !path.is_absolute() {
            return Ok(None);
        }
        // $ORIGIN already is a host path; anything else is a target path.
        Ok(Some(if origin_first {
            path
        } else {
            self.host_path(&path)
        }))
    }

    /// The directories ld.so searches for a bare name needed by `objs[i]`.
    fn search_dirs(&self, sim: &Sim, i: usize) -> Result<Vec<PathBuf>, ElfError> {
        let req = &sim.objs[i];
        let mut dirs = Vec::new();
        if req.parsed.info.runpath.is_empty() {
            let mut cur = Some(i);
            while let Some(k) = cur {
                let o = &sim.objs[k];
                // An object with DT_RUNPATH has its DT_RPATH ignored.
                if o.parsed.info.runpath.is_empty() {
                    for e in &o.parsed.info.rpath {
                        dirs.extend(self.expand_entry(e, o)?);
                    }
                }
                cur = o.loader;
            }
        }
        for e in &req.parsed.info.runpath {
            dirs.extend(self.expand_entry(e, req)?);
        }
        let nodeflib = req.parsed.flags_1 & DF_1_NODEFLIB != 0;
        dirs.extend(self.system_dirs(req.parsed.info.machine, nodeflib));
        Ok(dedup(dirs))
    }

    /// glibc's `open_verify`: decides whether ld.so accepts `cand`, goes on
    /// searching, or fails.
    fn verify(
        &self,
        sim: &mut Sim,
        cand: &Path,
        expect: Expect,
        library: &str,
        needed_by: &Path,
    ) -> Result<Verdict, ElfError> {
        let key = (cand.to_path_buf(), expect);
        if let Some(v) = sim.cache.get(&key) {
            return Ok(v.clone());
        }
        let v = self.verify_uncached(cand, expect, library, needed_by)?;
        sim.cache.insert(key, v.clone());
        Ok(v)
    }

    fn verify_uncached(
        &self,
        cand: &Path,
        expect: Expect,
        library: &str,
        needed_by: &Path,
    ) -> Result<Verdict, ElfError> {
        let invalid = |reason: &str| ElfError::InvalidCandidate {
            path: cand.to_path_buf(),
            library: library.to_string(),
            needed_by: needed_by.to_path_buf(),
            reason: reason.to_string(),
        };
        let io_err = |source| ElfError::Io {
            path: cand.to_path_buf(),
            source,
        };
        let skippable = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
            )
        };
        let phys = self.physical(cand)?;
        let meta = match fs::metadata(&phys) {
            Ok(m) => m,
            Err(e) if skippable(&e) => return Ok(Verdict::Skip),
            Err(e) => return Err(io_err(e)),
        };
        if meta.is_dir() {
            return Err(invalid("cannot read file data: is a directory"));
        }
        if !meta.is_file() {
            return Err(invalid("not a regular file"));
        }
        let mut file = match File::open(&phys) {
            Ok(f) => f,
            Err(e) if skippable(&e) => return Ok(Verdict::Skip),
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        (&mut file)
            .take(64)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let ehdr_size = if expect.class64 { 64 } else { 52 };
        if bytes.len() < ehdr_size {
            return Err(invalid("file too short"));
        }
        if bytes[..4] != ELF_MAGIC {
            return Err(invalid("invalid ELF header"));
        }
        let class = if expect.class64 {
            ELFCLASS64
        } else {
            ELFCLASS32
        };
        if bytes[EI_CLASS] != class {
            return Ok(Verdict::Skip);
        }
        if (bytes[EI_DATA] == ELFDATA2LSB) != expect.little_endian {
            return Err(invalid("ELF file data encoding does not match"));
        }
        if bytes[EI_VERSION] != EV_CURRENT {
            return Err(invalid("ELF file version ident does not match current one"));
        }
        let abi_ok = match bytes[EI_OSABI] {
            ELFOSABI_SYSV => bytes[EI_ABIVERSION] == 0,
            ELFOSABI_GNU => true,
            _ => false,
        };
        if !abi_ok {
            return Err(invalid("ELF file OS ABI invalid"));
        }
        if bytes[EI_PAD..EI_NIDENT].iter().any(|&b| b != 0) {
            return Err(invalid("nonzero padding in e_ident"));
        }
        let u16_at = |o: usize| {
            let b = [bytes[o], bytes[o + 1]];
            if expect.little_endian {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            }
        };
        if u16_at(18) != expect.machine {
            return Ok(Verdict::Skip);
        }
        let e_version = if expect.little_endian {
            u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]])
        } else {
            u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]])
        };
        if e_version != u32::from(EV_CURRENT) {
            return Err(invalid("ELF file version does not match current one"));
        }
        let (phentsize_at, phentsize) = if expect.class64 { (54, 56) } else { (42, 32) };
        if u16_at(phentsize_at) != phentsize {
            return Err(invalid("ELF file's phentsize not the expected size"));
        }
        match u16_at(16) {
            ET_DYN => {}
            ET_EXEC => return Err(invalid("cannot dynamically load executable")),
            _ => return Err(invalid("only ET_DYN and ET_EXEC can be loaded")),
        }
        file.read_to_end(&mut bytes).map_err(io_err)?;
        let parsed = parse_bytes(cand, &bytes)?;
        if parsed.flags_1 & DF_1_PIE != 0 {
            return Err(invalid(
                "cannot dynamically load position-independent executable",
            ));
        }
        Ok(Verdict::Accept(Box::new(parsed), (meta.dev(), meta.ino())))
    }

    fn load_interp(&self, sim: &mut Sim, i: usize, interp: &str) -> Result<(), ElfError> {
        if sim.find_loaded(interp).is_some() {
            return Ok(());
        }
        let needed_by = sim.objs[i].path.clone();
        if !interp.starts_with('/') {
            return Err(ElfError::RelativePath {
                name: interp.to_string(),
                needed_by,
            });
        }
        let host = self.host_path(Path::new(interp));
        let phys = self.physical(&host)?;
        let meta = match fs::metadata(&phys) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ElfError::InterpreterNotFound {
                    interpreter: interp.to_string(),
                    needed_by,
                    path: host,
                })
            }
            Err(source) => return Err(ElfError::Io { path: host, source }),
        };
        let parsed = read_parsed(&host, &phys)?;
        if Expect::of(&parsed) != Expect::of(&sim.objs[i].parsed) {
            return Err(ElfError::InvalidCandidate {
                path: host,
                library: interp.to_string(),
                needed_by,
                reason: "interpreter's ELF class, byte order or machine differs".to_string(),
            });
        }
        sim.add(i, interp, host, parsed, (meta.dev(), meta.ino()));
        Ok(())
    }

    fn load_needed(&self, sim: &mut Sim, i: usize, name: &str) -> Result<(), ElfError> {
        if sim.find_loaded(name).is_some() {
            return Ok(());
        }
        let needed_by = sim.objs[i].path.clone();
        let expect = Expect::of(&sim.objs[i].parsed);
        if name.contains('/') {
            if !name.starts_with('/') {
                return Err(ElfError::RelativePath {
                    name: name.to_string(),
                    needed_by,
                });
            }
            let cand = self.host_path(Path::new(name));
            return match self.verify(sim, &cand, expect, name, &needed_by)? {
                Verdict::Accept(parsed, id) => {
                    sim.add(i, name, cand, *parsed, id);
                    Ok(())
                }
                Verdict::Skip => Err(ElfError::NotFound {
                    library: name.to_string(),
                    needed_by,
                    searched: vec![cand],
                }),
            };
        }
        // A dlopen'ed root joins a process in which ld.so itself is already
        // loaded and answers to its SONAME; assume the machine's standard
        // glibc loader rather than searching for another copy.
        if sim.dlopened {
            if let Some(interp) = default_interpreter(expect.machine) {
                let host = self.host_path(Path::new(interp));
                if Path::new(interp).file_name() == Some(OsStr::new(name))
                    && fs::metadata(self.physical(&host)?).is_ok()
                {
                    return self.load_interp(sim, i, interp);
                }
            }
        }
        let dirs = self.search_dirs(sim, i)?;
        for dir in &dirs {
            let cand = dir.join(name);
            if let Verdict::Accept(parsed, id) =
                self.verify(sim, &cand, expect, name, &needed_by)?
            {
                sim.add(i, name, cand, *parsed, id);
                return Ok(());
            }
        }
        Err(ElfError::NotFound {
            library: name.to_string(),
            needed_by,
            searched: dirs,
        })
    }

    /// The origin ($ORIGIN) of a root.
    fn root_origin(&self, root: &Path, is_program: bool) -> Result<PathBuf, ElfError> {
        let io_err = |source| ElfError::Io {
            path: root.to_path_buf(),
            source,
        };
        let abs = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir().map_err(io_err)?.join(root)
        };
        let path = if is_program {
            // /proc/self/exe: canonical.
            match &self.sysroot {
                Some(sysroot) if abs.starts_with(sysroot) => self.physical(&abs)?,
                _ => fs::canonicalize(&abs).map_err(io_err)?,
            }
        } else {
            abs
        };
        Ok(path.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    /// Simulates ld.so loading one root (in its own process).
    fn simulate(
        &self,
        root: &Path,
        out: &mut BTreeMap<PathBuf, ResolvedLib>,
        cache: &mut HashMap<(PathBuf, Expect), Verdict>,
    ) -> Result<(), ElfError> {
        let phys = self.physical(root)?;
        let parsed = read_parsed(root, &phys)?;
        let meta = fs::metadata(&phys).map_err(|source| ElfError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let is_program = parsed.info.interpreter.is_some();
        let origin = self.root_origin(root, is_program)?;
        // The main program's l_name is "" (it matches no name); a dlopen'ed
        // object matches the path it was opened by.
        let names = if is_program {
            Vec::new()
        } else {
            vec![root.to_string_lossy().into_owned()]
        };
        let mut sim = Sim {
            objs: vec![Obj {
                path: root.to_path_buf(),
                origin,
                parsed,
                names,
                loader: None,
                id: (meta.dev(), meta.ino()),
            }],
            queue: VecDeque::from([0]),
            dlopened: !is_program,
            out,
            cache,
        };
        while let Some(i) = sim.queue.pop_front() {
            if let Some(interp) = sim.objs[i].parsed.info.interpreter.clone() {
                self.load_interp(&mut sim, i, &interp)?;
            }
            let needed = sim.objs[i].parsed.info.needed.clone();
            for name in &needed {
                self.load_needed(&mut sim, i, name)?;
            }
        }
        Ok(())
    }

    /// The interpreters and libraries ld.so opens for `roots`, transitively.
    /// Roots are processed in sorted order, each as its own process; the
    /// roots themselves (compared by exact path) are not in the result. A root that is not an ELF file
    /// is an [`ElfError::Parse`]; a statically linked root adds nothing.
    pub fn closure(&self, roots: &[PathBuf]) -> Result<Closure, ElfError> {
        let mut sorted: Vec<&PathBuf> = roots.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut out = BTreeMap::new();
        let mut cache = HashMap::new();
        for root in &sorted {
            self.simulate(root, &mut out, &mut cache)?;
        }
        for root in &sorted {
            out.remove(root.as_path());
        }
        Ok(Closure {
            libs: out.into_values().collect(),
        })
    }
}

fn dedup(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    for d in dirs {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

fn strip_root(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// Resolves `rel` (a path relative to `root`'s `/`) following symlinks the
/// way the kernel would if `root` were `/`. Missing components are kept as
/// they are.
fn resolve_under(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    fn push_components(pending: &mut Vec<OsString>, p: &Path) {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push(OsString::from("..")),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut resolved = PathBuf::from("/");
    let mut pending = Vec::new();
    push_components(&mut pending, rel);
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&c);
        let phys = root.join(strip_root(&next));
        match fs::symlink_metadata(&phys) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links at {}",
                        phys.display()
                    )));
                }
                let target = fs::read_link(&phys)?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                push_components(&mut pending, &target);
            }
            _ => resolved = next,
        }
    }
    Ok(root.join(strip_root(&resolved)))
}

/// Debian multiarch triplet of a machine, if known.
fn multiarch(machine: u16) -> Option<&'static str> {
    match machine {
        EM_X86_64 => Some("x86_64-linux-gnu"),
        EM_386 => Some("i386-linux-gnu"),
        EM_AARCH64 => Some("aarch64-linux-gnu"),
        EM_RISCV => Some("riscv64-linux-gnu"),
        _ => None,
    }
}

/// glibc's standard program interpreter for a machine.
fn default_interpreter(machine: u16) -> Option<&'static str> {
    match machine {
        EM_X86_64 => Some("/lib64/ld-linux-x86-64.so.2"),
        EM_386 => Some("/lib/ld-linux.so.2"),
        EM_AARCH64 => Some("/lib/ld-linux-aarch64.so.1"),
        EM_RISCV => Some("/lib/ld-linux-riscv64-lp64d.so.1"),
        _ => None,
    }
}

fn lib_token(machine: u16) -> Option<String> {
    multiarch(machine).map(|t| format!("lib/{t}"))
}

fn platform_token(machine: u16) -> Option<String> {
    match machine {
        EM_X86_64 => Some("x86_64".to_string()),
        EM_386 => Some("i686".to_string()),
        EM_AARCH64 => Some("aarch64".to_string()),
        EM_RISCV => Some("riscv64".to_string()),
        _ => None,
    }
}

/// Expands `$ORIGIN`, `$LIB`, `$PLATFORM` (bare or in braces; a bare name
/// must not run on into more name characters, as in glibc's `is_dst`).
/// Unknown `$` sequences stay as they are. Returns the expansion and whether
/// it starts with `$ORIGIN`. `$LIB`/`$PLATFORM` errors surface only if used.
fn expand_tokens(
    entry: &str,
    origin: &OsStr,
    lib: Result<String, ElfError>,
    platform: Result<String, ElfError>,
) -> Result<(OsString, bool), ElfError> {
    let bytes = entry.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut origin_first = false;
    let mut lib = Some(lib);
    let mut platform = Some(platform);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            if let Some((token, len)) = dst_at(&bytes[i + 1..]) {
                match token {
                    "ORIGIN" => {
                        if i == 0 {
                            origin_first = true;
                        }
                        out.extend_from_slice(origin.as_bytes());
                    }
                    "LIB" => match lib.take() {
                        Some(Ok(s)) => {
                            out.extend_from_slice(s.as_bytes());
                            lib = Some(Ok(s));
                        }
                        Some(Err(e)) => return Err(e),
                        None => {}
                    },
                    _ => match platform.take() {
                        Some(Ok(s)) => {
                            out.extend_from_slice(s.as_bytes());
                            platform = Some(Ok(s));
                        }
                        Some(Err(e)) => return Err(e),
                        None => {}
                    },
                }
                i += 1 + len;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Ok((OsString::from_vec(out), origin_first))
}

/// If `s` (the text after a `$`) starts with a known token, returns it and
/// the number of bytes it spans.
fn dst_at(s: &[u8]) -> Option<(&'static str, usize)> {
    for token in ["ORIGIN", "LIB", "PLATFORM"] {
        let t = token.as_bytes();
        if s.starts_with(b"{") && s[1..].starts_with(t) && s.get(1 + t.len()) == Some(&b'}') {
            return Some((token, t.len() + 2));
        }
        if s.starts_with(t) {
            let next = s.get(t.len());
            if !next.is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_') {
                return Some((token, t.len()));
            }
        }
    }
    None
}

/// fnmatch(3) without flags beyond glob's leading-dot rule (handled by the
/// caller): `*`, `?`, `[...]` with `!`/`^` and ranges, `\` escapes.
fn fnmatch(pat: &[u8], name: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if ni == name.len() {
            while pat.get(pi) == Some(&b'*') {
                pi += 1;
            }
            return pi == pat.len();
        }
        if pat.get(pi) == Some(&b'*') {
            star = Some((pi, ni));
            pi += 1;
            continue;
        }
        if pi < pat.len() {
            if let Some(next) = match_one(pat, pi, name[ni]) {
                pi = next;
                ni += 1;
                continue;
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
}

/// Matches the single pattern element at `pat[pi]` against `c`; returns the
/// index after the element on a match.
fn match_one(pat: &[u8], pi: usize, c: u8) -> Option<usize> {
    match pat[pi] {
        b'?' => Some(pi + 1),
        b'[' => match match_class(pat, pi, c) {
            Some((true, next)) => Some(next),
            Some((false, _)) => None,
            // Unterminated class: a literal '['.
            None => (c == b'[').then_some(pi + 1),
        },
        b'\\' if pi + 1 < pat.len() => (pat[pi + 1] == c).then_some(pi + 2),
        p => (p == c).then_some(pi + 1),
    }
}

fn match_class(pat: &[u8], pi: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = pi + 1;
    let negate = matches!(pat.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pat.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (pat.get(i + 1), pat.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                matched |= lo <= c && c <= hi;
                i += 3;
            }
            _ => {
                matched |= lo == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beambake_testkit::{output, skip, tempdir_named, which};
    use std::collections::BTreeSet;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    const ERTS: &str = "/usr/lib/erlang/erts-13.1.5";
    const INTERP: &str = "/lib64/ld-linux-x86-64.so.2";

    // ---------- helpers ----------

    /// A temporary directory (canonical path), removed on drop.
    struct TempDir {
        path: PathBuf,
        _dir: beambake_testkit::tempfile::TempDir,
    }

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = tempdir_named(&format!("beambake-elf-{tag}-"));
            let path = fs::canonicalize(dir.path()).expect("canonicalize temp dir");
            TempDir { path, _dir: dir }
        }

        fn path(&self) -> &Path {
            &self.path
        }

        fn join(&self, p: &str) -> PathBuf {
            self.path.join(p)
        }
    }

    fn write(path: &Path, data: impl AsRef<[u8]>) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, data).expect("write");
    }

    fn gcc<I, S>(cwd: &Path, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = output(Command::new("gcc").current_dir(cwd).args(&args));
        assert!(
            out.status.success(),
            "gcc {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a program the way a user would (no loader environment).
    fn run(prog: &Path) -> (bool, String, String) {
        let out = output(
            Command::new(prog)
                .env_remove("LD_LIBRARY_PATH")
                .env_remove("LD_PRELOAD"),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ldd` as name -> path (vDSO dropped; the interpreter maps to itself).
    fn ldd(path: &Path) -> Option<BTreeMap<String, PathBuf>> {
        let out = beambake_testkit::guard(
            Command::new("ldd")
                .arg(path)
                .env_remove("LD_LIBRARY_PATH")
                .env_remove("LD_PRELOAD"),
        )
        .output()
        .ok()?;
        let strip_addr = |s: &str| match s.rsplit_once(" (") {
            Some((a, _)) => a.trim().to_string(),
            None => s.trim().to_string(),
        };
        let mut map = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if line.is_empty()
                || line.starts_with("linux-vdso")
                || line.starts_with("linux-gate")
                || line.contains("statically linked")
            {
                continue;
            }
            match line.split_once(" => ") {
                Some((name, rest)) => map.insert(name.trim().to_string(), strip_addr(rest).into()),
                None => map.insert(strip_addr(line), strip_addr(line).into()),
            };
        }
        Some(map)
    }

    fn by_name(c: &Closure) -> BTreeMap<String, PathBuf> {
        let mut map = BTreeMap::new();
        for lib in &c.libs {
            if let Some(prev) = map.insert(lib.name.clone(), lib.path.clone()) {
                panic!("{} resolved twice: {prev:?} and {:?}", lib.name, lib.path);
            }
        }
        map
    }

    fn lib<'a>(c: &'a Closure, name: &str) -> &'a ResolvedLib {
        c.libs
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("{name} not in closure {c:#?}"))
    }

    fn assert_matches_ldd(root: &Path, c: &Closure) {
        match ldd(root) {
            Some(expected) => assert_eq!(by_name(c), expected, "closure vs ldd for {root:?}"),
            None => skip::record(&format!("ldd not available; not cross-checking {root:?}")),
        }
    }

    fn erts() -> Option<PathBuf> {
        let p = PathBuf::from(ERTS);
        p.is_dir().then_some(p)
    }

    fn crypto_nif() -> Option<PathBuf> {
        let entries = fs::read_dir("/usr/lib/erlang/lib").ok()?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("crypto-"))
            .map(|e| e.path().join("priv/lib/crypto.so"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    }

    const B_C: &str = "int b_val(void) { return 7; }\n";
    const A_C: &str = "int b_val(void);\nint a_val(void) { return 35 + b_val(); }\n";
    const MAIN_C: &str = "#include <stdio.h>\nint a_val(void);\n\
                          int main(void) { printf(\"a=%d\\n\", a_val()); return 0; }\n";

    /// `<t>/lib2/libB.so.1`; `<t>/lib/libA.so.1.2.3` (SONAME libA.so.1,
    /// needs libB.so.1) with symlink `libA.so.1`; sources in `<t>/src`.
    fn build_libs(t: &TempDir, liba_flags: &[String]) {
        write(&t.join("src/b.c"), B_C);
        write(&t.join("src/a.c"), A_C);
        write(&t.join("src/main.c"), MAIN_C);
        fs::create_dir_all(t.join("lib")).expect("mkdir");
        fs::create_dir_all(t.join("lib2")).expect("mkdir");
        fs::create_dir_all(t.join("bin")).expect("mkdir");
        gcc(
            t.path(),
            [
                "-shared",
                "-fPIC",
                "-Wl,-soname,libB.so.1",
                "-o",
                "lib2/libB.so.1",
                "src/b.c",
            ],
        );
        let mut args: Vec<String> = ["-shared", "-fPIC", "-Wl,-soname,libA.so.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(liba_flags.iter().cloned());
        args.extend(
            ["-o", "lib/libA.so.1.2.3", "src/a.c", "lib2/libB.so.1"]
                .iter()
                .map(|s| s.to_string()),
        );
        gcc(t.path(), &args);
        symlink("libA.so.1.2.3", t.join("lib/libA.so.1")).expect("symlink");
    }

    /// `<t>/bin/<name>` from main.c linked against libA (plus `extra`).
    fn build_prog(t: &TempDir, name: &str, flags: &[String], extra: &[&str]) -> PathBuf {
        let out = format!("bin/{name}");
        let mut args: Vec<String> = vec!["-o".into(), out.clone(), "src/main.c".into()];
        args.extend(flags.iter().cloned());
        args.push("lib/libA.so.1".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("-Wl,-rpath-link,{}", t.join("lib2").display()));
        gcc(t.path(), &args);
        t.join(&out)
    }

    fn runpath(dirs: &str) -> Vec<String> {
        vec![format!("-Wl,--enable-new-dtags,-rpath,{dirs}")]
    }

    fn rpath(dirs: &str) -> Vec<String> {
        vec![format!("-Wl,--disable-new-dtags,-rpath,{dirs}")]
    }

    // ---------- real host: Erlang ----------

    #[test]
    fn host_beam_smp_matches_ldd() {
        let Some(erts) = erts() else {
            skip!("{ERTS} is absent (Erlang not installed)");
        };
        let beam = erts.join("bin/beam.smp");
        let c = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&beam))
            .expect("closure");
        let names = by_name(&c);
        for n in ["libc.so.6", "libm.so.6", "libstdc++.so.6", INTERP] {
            assert!(names.contains_key(n), "{n} missing from {names:#?}");
        }
        assert_eq!(lib(&c, INTERP).path, PathBuf::from(INTERP));
        assert_eq!(lib(&c, INTERP).needed_by, beam);
        assert_matches_ldd(&beam, &c);
    }

    #[test]
    fn host_epmd_matches_ldd() {
        let Some(erts) = erts() else {
            skip!("{ERTS} is absent (Erlang not installed)");
        };
        let epmd = erts.join("bin/epmd");
        let c = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&epmd))
            .expect("closure");
        let names = by_name(&c);
        assert!(names.contains_key("libsystemd.so.0"), "{names:#?}");
        // Dependencies of libsystemd, found with libsystemd as requester.
        for n in [
            "libgcrypt.so.20",
            "liblz4.so.1",
            "liblzma.so.5",
            "libzstd.so.1",
            "libcap.so.2",
        ] {
            let l = lib(&c, n);
            assert!(
                l.needed_by.to_string_lossy().contains("libsystemd")
                    || l.needed_by.to_string_lossy().contains("libgcrypt"),
                "{l:?}"
            );
        }
        assert_matches_ldd(&epmd, &c);
    }

    #[test]
    fn host_crypto_nif_matches_ldd() {
        if erts().is_none() {
            skip!("{ERTS} is absent (Erlang not installed)");
        }
        let Some(nif) = crypto_nif() else {
            skip!("no crypto NIF under /usr/lib/erlang/lib");
        };
        assert!(is_elf(&nif).expect("is_elf"));
        let info = inspect(&nif).expect("inspect");
        assert!(info.interpreter.is_none(), "a NIF has no PT_INTERP");
        let c = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&nif))
            .expect("closure");
        assert_eq!(lib(&c, "libcrypto.so.3").needed_by, nif);
        assert_matches_ldd(&nif, &c);
    }

    #[test]
    fn host_union_is_sorted_deduplicated_and_order_independent() {
        let Some(erts) = erts() else {
            skip!("{ERTS} is absent (Erlang not installed)");
        };
        let mut roots = vec![erts.join("bin/epmd"), erts.join("bin/beam.smp")];
        roots.extend(crypto_nif());
        let r = Resolver::host().expect("host resolver");
        let c = r.closure(&roots).expect("closure");
        let mut reversed = roots.clone();
        reversed.reverse();
        reversed.push(roots[0].clone());
        assert_eq!(c, r.closure(&reversed).expect("closure"));
        let paths: Vec<&PathBuf> = c.libs.iter().map(|l| &l.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted);
        if ldd(&roots[0]).is_some() {
            let mut expected = BTreeSet::new();
            for root in &roots {
                expected.extend(ldd(root).expect("ldd").into_values());
            }
            let got: BTreeSet<PathBuf> = c.libs.iter().map(|l| l.path.clone()).collect();
            assert_eq!(got, expected);
        }
        // beam.smp sorts before epmd, so the shared libc is attributed to it.
        assert_eq!(lib(&c, "libc.so.6").needed_by, erts.join("bin/beam.smp"));
    }

    #[test]
    fn host_configuration_reads_ld_so_conf_and_trusted_dirs() {
        let r = Resolver::host().expect("host resolver");
        let dirs = r.system_dirs(EM_X86_64, false);
        let unique: BTreeSet<&PathBuf> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len(), "duplicates in {dirs:?}");
        for d in [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib",
            "/usr/lib",
        ] {
            assert!(
                dirs.contains(&PathBuf::from(d)),
                "{d} missing from {dirs:?}"
            );
        }
        assert!(dirs.ends_with(&[PathBuf::from("/lib"), PathBuf::from("/usr/lib")]));
        assert!(
            !dirs.contains(&PathBuf::from("/lib64")),
            "Debian's ld.so does not search /lib64"
        );
        // Whatever ld.so.conf lists comes first, in file order.
        if fs::read_to_string("/etc/ld.so.conf.d/libc.conf")
            .is_ok_and(|s| s.contains("/usr/local/lib\n"))
        {
            let local = dirs.iter().position(|d| d == Path::new("/usr/local/lib"));
            let multi = dirs
                .iter()
                .position(|d| d == Path::new("/lib/x86_64-linux-gnu"));
            assert!(local < multi, "{dirs:?}");
        }
    }

    // ---------- built with gcc ----------

    #[test]
    fn runpath_binary_resolves_like_the_real_loader() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("runpath");
        build_libs(&t, &rpath(&t.join("lib2").display().to_string()));
        let prog = build_prog(&t, "prog", &runpath("$ORIGIN/../lib"), &[]);

        let a = inspect(&t.join("lib/libA.so.1")).expect("inspect libA");
        assert!(a.class64);
        assert_eq!(a.machine, EM_X86_64);
        assert_eq!(a.soname.as_deref(), Some("libA.so.1"));
        assert_eq!(a.needed, vec!["libB.so.1".to_string()]);
        assert_eq!(a.rpath, vec![t.join("lib2").display().to_string()]);
        assert!(a.runpath.is_empty());
        assert!(a.interpreter.is_none());
        let pi = inspect(&prog).expect("inspect prog");
        assert_eq!(pi.runpath, vec!["$ORIGIN/../lib".to_string()]);
        assert!(pi.rpath.is_empty());
        assert_eq!(pi.interpreter.as_deref(), Some(INTERP));
        assert!(pi.needed.contains(&"libA.so.1".to_string()));

        let c = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&prog))
            .expect("closure");
        let la = lib(&c, "libA.so.1");
        // The path ld.so opens: not canonicalized, `..` and symlink kept.
        assert_eq!(
            la.path.as_os_str(),
            t.join("bin/../lib/libA.so.1").as_os_str()
        );
        assert_eq!(la.needed_by, prog);
        let lb = lib(&c, "libB.so.1");
        assert_eq!(lb.path, t.join("lib2/libB.so.1"));
        assert_eq!(lb.needed_by.as_os_str(), la.path.as_os_str());
        assert_eq!(lib(&c, INTERP).path, PathBuf::from(INTERP));
        assert!(c.libs.iter().all(|l| l.path != prog));

        let (ok, stdout, stderr) = run(&prog);
        assert!(ok, "program failed: {stderr}");
        assert_eq!(stdout, "a=42\n");
        assert_matches_ldd(&prog, &c);
    }

    #[test]
    fn runpath_is_not_inherited() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("noinherit");
        build_libs(&t, &[]);
        // lib2 is in the program's RUNPATH, but RUNPATH only serves the
        // program's own DT_NEEDED, not libA's.
        let lib2 = t.join("lib2");
        let prog = build_prog(
            &t,
            "prog",
            &runpath(&format!("$ORIGIN/../lib:{}", lib2.display())),
            &[],
        );
        let err = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&prog))
            .expect_err("libB must not be found");
        match &err {
            ElfError::NotFound {
                library,
                needed_by,
                searched,
            } => {
                assert_eq!(library, "libB.so.1");
                assert_eq!(
                    needed_by.as_os_str(),
                    t.join("bin/../lib/libA.so.1").as_os_str()
                );
                assert!(!searched.contains(&lib2), "{searched:?}");
                assert!(searched.contains(&PathBuf::from("/usr/lib/x86_64-linux-gnu")));
            }
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "libB.so.1 needed by {}/bin/../lib/libA.so.1 not found (searched: ",
                t.path().display()
            )),
            "{msg}"
        );
        let (ok, _, stderr) = run(&prog);
        assert!(!ok, "the real loader must fail too");
        assert!(stderr.contains("libB.so.1"), "{stderr}");
    }

    #[test]
    fn rpath_of_the_program_is_inherited() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("inherit");
        build_libs(&t, &[]);
        let lib2 = t.join("lib2");
        let prog = build_prog(
            &t,
            "prog",
            &rpath(&format!("$ORIGIN/../lib:{}", lib2.display())),
            &[],
        );
        let c = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&prog))
            .expect("closure");
        let lb = lib(&c, "libB.so.1");
        assert_eq!(lb.path, lib2.join("libB.so.1"));
        assert_eq!(
            lb.needed_by.as_os_str(),
            t.join("bin/../lib/libA.so.1").as_os_str()
        );
        let (ok, stdout, stderr) = run(&prog);
        assert!(ok, "{stderr}");
        assert_eq!(stdout, "a=42\n");
        assert_matches_ldd(&prog, &c);
    }

    #[test]
    fn a_runpath_in_the_requester_disables_inherited_rpath() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("runpath-stops-rpath");
        // libA has a DT_RUNPATH (pointing nowhere useful): then no DT_RPATH,
        // not even the program's, is searched for libA's needs.
        build_libs(&t, &runpath("/nonexistent-beambake-test"));
        let lib2 = t.join("lib2");
        let prog = build_prog(
            &t,
            "prog",
            &rpath(&format!("$ORIGIN/../lib:{}", lib2.display())),
            &[],
        );
        let err = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&prog))
            .expect_err("libB must not be found");
        match &err {
            ElfError::NotFound {
                library, searched, ..
            } => {
                assert_eq!(library, "libB.so.1");
                assert_eq!(
                    searched.first(),
                    Some(&PathBuf::from("/nonexistent-beambake-test"))
                );
                assert!(!searched.contains(&lib2));
            }
            other => panic!("unexpected error {other:?}"),
        }
        let (ok, _, stderr) = run(&prog);
        assert!(!ok && stderr.contains("libB.so.1"), "{stderr}");
    }

    #[test]
    fn missing_library_is_reported_with_its_requester() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("missing");
        let lib2 = t.join("lib2");
        build_libs(&t, &rpath(&lib2.display().to_string()));
        let prog = build_prog(&t, "prog", &runpath("$ORIGIN/../lib"), &[]);
        fs::remove_file(lib2.join("libB.so.1")).expect("rm libB");
        let err = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&prog))
            .expect_err("libB is gone");
        match &err {
            ElfError::NotFound {
                library,
                needed_by,
                searched,
            } => {
                assert_eq!(library, "libB.so.1");
                assert_eq!(
                    needed_by.as_os_str(),
                    t.join("bin/../lib/libA.so.1").as_os_str()
                );
                assert_eq!(searched.first(), Some(&lib2));
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("libA.so.1"));
        let (ok, _, stderr) = run(&prog);
        assert!(!ok && stderr.contains("libB.so.1"), "{stderr}");
    }

    #[test]
    fn an_already_loaded_library_satisfies_later_requests_by_name() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("loaded");
        build_libs(&t, &[]);
        let lib2 = t.join("lib2");
        // The program needs libA and libB itself; libA alone could not find
        // libB, but ld.so loads libB for the program first and reuses it.
        let mut flags = runpath(&format!("$ORIGIN/../lib:{}", lib2.display()));
        flags.push("-Wl,--no-as-needed".into());
        let prog = build_prog(&t, "prog", &flags, &["lib2/libB.so.1"]);
        let c = Resolver::host()
            .expect("host resolver")
            .closure(std::slice::from_ref(&prog))
            .expect("closure");
        let lb = lib(&c, "libB.so.1");
        assert_eq!(lb.path, lib2.join("libB.so.1"));
        assert_eq!(lb.needed_by, prog);
        let (ok, stdout, stderr) = run(&prog);
        assert!(ok, "{stderr}");
        assert_eq!(stdout, "a=42\n");
        assert_matches_ldd(&prog, &c);
    }

    #[test]
    fn candidates_of_another_class_or_machine_are_skipped() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("decoy");
        build_libs(&t, &rpath(&t.join("lib2").display().to_string()));
        let prog = build_prog(&t, "prog", &runpath("$ORIGIN/../decoy:$ORIGIN/../lib"), &[]);
        let decoy = t.join("decoy/libA.so.1");

        // An ELF32 i386 header (64 bytes: shorter would be "file too short").
        let mut elf32 = vec![0u8; 64];
        elf32[..4].copy_from_slice(&ELF_MAGIC);
        elf32[EI_CLASS] = ELFCLASS32;
        elf32[EI_DATA] = ELFDATA2LSB;
        elf32[EI_VERSION] = EV_CURRENT;
        elf32[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        elf32[18..20].copy_from_slice(&EM_386.to_le_bytes());
        elf32[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf32[40..42].copy_from_slice(&52u16.to_le_bytes());
        elf32[42..44].copy_from_slice(&32u16.to_le_bytes());
        // The real libA, relabelled as AArch64.
        let mut aarch64 = fs::read(t.join("lib/libA.so.1.2.3")).expect("read libA");
        aarch64[18..20].copy_from_slice(&EM_AARCH64.to_le_bytes());

        let r = Resolver::host().expect("host resolver");
        for (what, bytes) in [
            ("elf32", Some(elf32)),
            ("aarch64", Some(aarch64)),
            ("dangling symlink", None),
        ] {
            let _ = fs::remove_file(&decoy);
            match bytes {
                Some(b) => write(&decoy, b),
                None => {
                    fs::create_dir_all(t.join("decoy")).expect("mkdir");
                    symlink("nowhere", &decoy).expect("symlink");
                }
            }
            if what == "elf32" {
                let info = inspect(&decoy).expect("inspect decoy");
                assert!(!info.class64);
                assert_eq!(info.machine, EM_386);
            }
            let c = r.closure(std::slice::from_ref(&prog)).expect(what);
            assert_eq!(
                lib(&c, "libA.so.1").path.as_os_str(),
                t.join("bin/../lib/libA.so.1").as_os_str(),
                "{what}"
            );
            let (ok, stdout, stderr) = run(&prog);
            assert!(ok, "{what}: {stderr}");
            assert_eq!(stdout, "a=42\n");
            assert_matches_ldd(&prog, &c);
        }
    }

    #[test]
    fn unusable_candidates_are_fatal_as_in_ld_so() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("fatal");
        build_libs(&t, &rpath(&t.join("lib2").display().to_string()));
        let prog = build_prog(&t, "prog", &runpath("$ORIGIN/../decoy:$ORIGIN/../lib"), &[]);
        let decoy = t.join("decoy/libA.so.1");
        let r = Resolver::host().expect("host resolver");
        let cases: [(&str, &str, &[u8]); 3] = [
            (
                "garbage",
                "invalid ELF header",
                b"this is not an ELF file, just some text padding it out past 64 bytes\n",
            ),
            ("short", "file too short", b"\x7fELF\x02\x01\x01"),
            ("directory", "is a directory", b""),
        ];
        for (what, reason_part, bytes) in cases {
            let _ = fs::remove_file(&decoy);
            let _ = fs::remove_dir(&decoy);
            if what == "directory" {
                fs::create_dir_all(&decoy).expect("mkdir");
            } else {
                write(&decoy, bytes);
            }
            let err = r.closure(std::slice::from_ref(&prog)).expect_err(what);
            match &err {
                ElfError::InvalidCandidate {
                    path,
                    library,
                    needed_by,
                    reason,
                } => {
                    assert_eq!(
                        path.as_os_str(),
                        t.join("bin/../decoy/libA.so.1").as_os_str()
                    );
                    assert_eq!(library, "libA.so.1");
                    assert_eq!(needed_by, &prog);
                    assert!(reason.contains(reason_part), "{what}: {reason}");
                }
                other => panic!("{what}: unexpected error {other:?}"),
            }
            let (ok, _, stderr) = run(&prog);
            assert!(!ok, "{what}: the real loader fails too");
            assert!(stderr.contains("libA.so.1"), "{what}: {stderr}");
            if what == "garbage" {
                assert!(stderr.contains("invalid ELF header"), "{stderr}");
            }
        }
    }

    #[test]
    fn absolute_needed_is_used_as_is_and_relative_is_refused() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("slash");
        build_libs(&t, &rpath(&t.join("lib2").display().to_string()));
        write(&t.join("src/c.c"), "int a_val(void) { return 42; }\n");
        fs::create_dir_all(t.join("lib3")).expect("mkdir");
        // No SONAME: the linker records the path it was given.
        gcc(
            t.path(),
            ["-shared", "-fPIC", "-o", "lib3/libC.so", "src/c.c"],
        );
        let abs = t.join("lib3/libC.so");
        let abs_s = abs.display().to_string();
        gcc(
            t.path(),
            [
                "-o",
                "bin/abs",
                "src/main.c",
                "-Wl,--no-as-needed",
                abs_s.as_str(),
            ],
        );
        gcc(
            t.path(),
            [
                "-o",
                "bin/rel",
                "src/main.c",
                "-Wl,--no-as-needed",
                "lib3/libC.so",
            ],
        );
        let r = Resolver::host().expect("host resolver");

        let prog = t.join("bin/abs");
        assert!(inspect(&prog).expect("inspect").needed.contains(&abs_s));
        let c = r.closure(std::slice::from_ref(&prog)).expect("closure");
        assert_eq!(lib(&c, &abs_s).path, abs);
        let (ok, stdout, stderr) = run(&prog);
        assert!(ok, "{stderr}");
        assert_eq!(stdout, "a=42\n");
        assert_matches_ldd(&prog, &c);

        let prog = t.join("bin/rel");
        match r.closure(std::slice::from_ref(&prog)) {
            Err(ElfError::RelativePath { name, needed_by }) => {
                assert_eq!(name, "lib3/libC.so");
                assert_eq!(needed_by, prog);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Sets DF_1_NODEFLIB in an x86_64 file's existing DT_FLAGS_1 (GNU ld
    /// 2.40 ignores `-z nodeflib`, so the test patches it in).
    fn set_nodeflib(path: &Path) {
        let mut bytes = fs::read(path).expect("read");
        let header = Elf::parse_header(&bytes).expect("header");
        let ctx = Ctx::new(
            header.container().expect("class"),
            header.endianness().expect("data"),
        );
        let phdrs = ProgramHeader::parse(
            &bytes,
            header.e_phoff as usize,
            header.e_phnum as usize,
            ctx,
        )
        .expect("phdrs");
        let dynamic = phdrs
            .iter()
            .find(|ph| ph.p_type == goblin::elf::program_header::PT_DYNAMIC)
            .expect("PT_DYNAMIC");
        let start = dynamic.p_offset as usize;
        let mut patched = false;
        for off in (start..start + dynamic.p_filesz as usize).step_by(16) {
            let tag = u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"));
            if tag == DT_FLAGS_1 {
                let val = u64::from_le_bytes(bytes[off + 8..off + 16].try_into().expect("8 bytes"));
                bytes[off + 8..off + 16].copy_from_slice(&(val | DF_1_NODEFLIB).to_le_bytes());
                patched = true;
            }
        }
        assert!(patched, "no DT_FLAGS_1 in {path:?}");
        fs::write(path, bytes).expect("write");
    }

    #[test]
    fn nodeflib_skips_the_trusted_directories() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("nodeflib");
        build_libs(&t, &rpath(&t.join("lib2").display().to_string()));
        let prog = build_prog(&t, "prog", &runpath("$ORIGIN/../lib"), &[]);
        set_nodeflib(&prog);
        let r = Resolver::host().expect("host");
        assert!(r
            .system_dirs(EM_X86_64, true)
            .iter()
            .all(|d| !d.starts_with("/lib") && !d.starts_with("/usr/lib")));
        match r.closure(std::slice::from_ref(&prog)) {
            Err(ElfError::NotFound {
                library,
                needed_by,
                searched,
            }) => {
                // libA (no flag) is found via RUNPATH; libc, needed by the
                // flagged program itself, is not.
                assert_eq!(library, "libc.so.6");
                assert_eq!(needed_by, prog);
                assert_eq!(searched.first(), Some(&t.join("bin/../lib")));
                assert!(
                    !searched.contains(&PathBuf::from("/lib/x86_64-linux-gnu")),
                    "{searched:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let (ok, _, stderr) = run(&prog);
        assert!(!ok && stderr.contains("libc.so.6"), "{stderr}");
    }

    #[test]
    fn dlopened_root_gets_the_running_loader_not_another_copy() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let ld = Path::new("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        if !ld.is_file() || !Path::new(INTERP).is_file() {
            skip!("glibc loader not at the Debian x86_64 paths");
        }
        let t = TempDir::new("dlopen");
        write(&t.join("src/d.c"), "int d_val(void) { return 1; }\n");
        let ld_s = ld.display().to_string();
        // A plugin whose first DT_NEEDED is the loader itself (as with
        // libraries using __tls_get_addr), before libc.
        gcc(
            t.path(),
            [
                "-shared",
                "-fPIC",
                "-o",
                "libD.so",
                "src/d.c",
                "-Wl,--no-as-needed",
                ld_s.as_str(),
                "-lc",
            ],
        );
        let plugin = t.join("libD.so");
        let info = inspect(&plugin).expect("inspect");
        assert!(info.interpreter.is_none());
        assert_eq!(
            info.needed.first().map(String::as_str),
            Some("ld-linux-x86-64.so.2")
        );
        let c = Resolver::host()
            .expect("host")
            .closure(std::slice::from_ref(&plugin))
            .expect("closure");
        let paths: Vec<&Path> = c.libs.iter().map(|l| l.path.as_path()).collect();
        assert!(paths.contains(&Path::new(INTERP)), "{paths:?}");
        assert!(!paths.contains(&ld), "{paths:?}");
        assert_eq!(lib(&c, INTERP).needed_by, plugin);
        assert_matches_ldd(&plugin, &c);
    }

    #[test]
    fn static_root_needs_nothing() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let t = TempDir::new("static");
        write(&t.join("s.c"), "int main(void) { return 0; }\n");
        let out = output(
            Command::new("gcc")
                .current_dir(t.path())
                .args(["-static", "-o", "s", "s.c"]),
        );
        if !out.status.success() {
            skip!("gcc -static does not work here");
        }
        let s = t.join("s");
        let info = inspect(&s).expect("inspect");
        assert!(info.interpreter.is_none() && info.needed.is_empty());
        let c = Resolver::host()
            .expect("host")
            .closure(&[s])
            .expect("closure");
        assert!(c.libs.is_empty(), "{c:?}");
    }

    #[test]
    fn sysroot_reads_its_own_configuration_and_files() {
        if which("gcc").is_none() {
            skip!("gcc is not available");
        }
        let host_libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let host_ld = Path::new("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        if !host_libc.is_file() || !host_ld.is_file() {
            skip!("host glibc not at the Debian x86_64 paths");
        }
        let t = TempDir::new("sysroot");
        let s = t.join("sysroot");
        write(
            &s.join("etc/ld.so.conf"),
            "# test\ninclude /etc/ld.so.conf.d/*.conf\n",
        );
        write(
            &s.join("etc/ld.so.conf.d/x.conf"),
            "/opt/x/lib/   # trailing slash\n\n",
        );
        write(
            &s.join("etc/ld.so.conf.d/y.conf"),
            "include ../more.conf\nhwcap 0 nosegneg\nrelative/dir\n",
        );
        write(&s.join("etc/ld.so.conf.d/.hidden.conf"), "/opt/hidden\n");
        write(&s.join("etc/ld.so.conf.d/z.txt"), "/opt/z\n");
        write(&s.join("etc/more.conf"), "/opt/y/lib=libc6\n");
        // Debian-like merged /usr, with the absolute interpreter symlink.
        let multi = s.join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&multi).expect("mkdir");
        fs::create_dir_all(s.join("usr/lib64")).expect("mkdir");
        symlink("usr/lib", s.join("lib")).expect("symlink");
        symlink("usr/lib64", s.join("lib64")).expect("symlink");
        symlink(host_ld, s.join("usr/lib64/ld-linux-x86-64.so.2")).expect("symlink");
        fs::copy(host_libc, multi.join("libc.so.6")).expect("copy libc");
        fs::copy(host_ld, multi.join("ld-linux-x86-64.so.2")).expect("copy ld.so");

        write(&t.join("src/b.c"), B_C);
        write(&t.join("src/a.c"), A_C);
        write(&t.join("src/main.c"), MAIN_C);
        for d in ["opt/x/lib", "opt/y/lib", "opt/x/bin"] {
            fs::create_dir_all(s.join(d)).expect("mkdir");
        }
        gcc(
            t.path(),
            [
                "-shared",
                "-fPIC",
                "-Wl,-soname,libB.so.1",
                "-o",
                "sysroot/opt/y/lib/libB.so.1",
                "src/b.c",
            ],
        );
        gcc(
            t.path(),
            [
                "-shared",
                "-fPIC",
                "-Wl,-soname,libA.so.1",
                "-o",
                "sysroot/opt/x/lib/libA.so.1",
                "src/a.c",
                "sysroot/opt/y/lib/libB.so.1",
            ],
        );
        let rpath_link = format!("-Wl,-rpath-link,{}", s.join("opt/y/lib").display());
        gcc(
            t.path(),
            [
                "-o",
                "sysroot/opt/x/bin/prog",
                "src/main.c",
                "sysroot/opt/x/lib/libA.so.1",
                rpath_link.as_str(),
            ],
        );

        let r = Resolver::with_sysroot(&s).expect("sysroot resolver");
        let expected_dirs: Vec<PathBuf> = [
            "opt/x/lib",
            "opt/y/lib",
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "lib",
            "usr/lib",
        ]
        .iter()
        .map(|d| s.join(d))
        .collect();
        assert_eq!(r.system_dirs(EM_X86_64, false), expected_dirs);

        let prog = s.join("opt/x/bin/prog");
        let c = r.closure(std::slice::from_ref(&prog)).expect("closure");
        let expected: BTreeMap<String, PathBuf> = [
            ("libA.so.1", s.join("opt/x/lib/libA.so.1")),
            ("libB.so.1", s.join("opt/y/lib/libB.so.1")),
            ("libc.so.6", s.join("lib/x86_64-linux-gnu/libc.so.6")),
            (INTERP, s.join("lib64/ld-linux-x86-64.so.2")),
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        assert_eq!(by_name(&c), expected);
        assert_eq!(
            lib(&c, "libB.so.1").needed_by,
            s.join("opt/x/lib/libA.so.1")
        );

        // The interpreter symlink is absolute: it must resolve inside the
        // sysroot, not to the host's (still present) ld.so.
        fs::remove_file(multi.join("ld-linux-x86-64.so.2")).expect("rm");
        match r.closure(std::slice::from_ref(&prog)) {
            Err(ElfError::InterpreterNotFound {
                interpreter,
                needed_by,
                path,
            }) => {
                assert_eq!(interpreter, INTERP);
                assert_eq!(needed_by, prog);
                assert_eq!(path, s.join("lib64/ld-linux-x86-64.so.2"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ld_so_conf_include_loop_is_an_error() {
        let t = TempDir::new("loop");
        write(&t.join("etc/ld.so.conf"), "include /etc/ld.so.conf\n");
        match Resolver::with_sysroot(t.path()) {
            Err(ElfError::Config { path, message }) => {
                assert_eq!(path, t.join("etc/ld.so.conf"));
                assert!(message.contains("loop"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // No ld.so.conf at all: only the trusted directories.
        let empty = TempDir::new("noconf");
        let r = Resolver::with_sysroot(empty.path()).expect("resolver");
        assert_eq!(r.system_dirs(EM_X86_64, false).len(), 4);
    }

    // ---------- roots and malformed input ----------

    #[test]
    fn is_elf_reads_the_magic() {
        let t = TempDir::new("magic");
        let exe = std::env::current_exe().expect("current exe");
        assert!(is_elf(&exe).expect("is_elf"));
        write(&t.join("text"), "#!/bin/sh\necho hi\n");
        write(&t.join("empty"), "");
        write(&t.join("short"), b"\x7fEL");
        assert!(!is_elf(&t.join("text")).expect("is_elf"));
        assert!(!is_elf(&t.join("empty")).expect("is_elf"));
        assert!(!is_elf(&t.join("short")).expect("is_elf"));
        assert!(!is_elf(t.path()).expect("is_elf on a directory"));
        assert!(is_elf(&t.join("missing")).is_err());
    }

    #[test]
    fn bad_roots_are_clear_errors() {
        let t = TempDir::new("badroot");
        let r = Resolver::with_dirs(vec![]);
        let garbage = t.join("garbage");
        write(&garbage, "not an ELF at all, definitely not");
        let err = r
            .closure(std::slice::from_ref(&garbage))
            .expect_err("garbage root");
        assert!(
            matches!(&err, ElfError::Parse { path, .. } if *path == garbage),
            "{err:?}"
        );
        assert!(err.to_string().contains(&garbage.display().to_string()));
        let missing = t.join("missing");
        let err = r
            .closure(std::slice::from_ref(&missing))
            .expect_err("missing root");
        assert!(
            matches!(&err, ElfError::Io { path, .. } if *path == missing),
            "{err:?}"
        );
        let err = r
            .closure(&[t.path().to_path_buf()])
            .expect_err("directory root");
        assert!(matches!(&err, ElfError::Parse { .. }), "{err:?}");
        assert!(matches!(inspect(&garbage), Err(ElfError::Parse { .. })));
        assert!(r.closure(&[]).expect("no roots").libs.is_empty());
    }

    #[test]
    fn malformed_elf_never_panics() {
        let exe = std::env::current_exe().expect("current exe");
        let mut bytes = fs::read(&exe).expect("read exe");
        let path = Path::new("fuzz");
        let good = parse_bytes(path, &bytes).expect("test binary parses");
        assert!(good.info.needed.contains(&"libc.so.6".to_string()));

        // Interesting regions: headers, program headers, dynamic section,
        // dynamic string table.
        let header = Elf::parse_header(&bytes).expect("header");
        let ctx = Ctx::new(
            header.container().expect("c"),
            header.endianness().expect("e"),
        );
        let phdrs = ProgramHeader::parse(
            &bytes,
            header.e_phoff as usize,
            header.e_phnum as usize,
            ctx,
        )
        .expect("phdrs");
        let mut regions = vec![(0usize, 4096usize.min(bytes.len()))];
        for ph in &phdrs {
            if ph.p_type == goblin::elf::program_header::PT_DYNAMIC || ph.p_type == PT_INTERP {
                regions.push((ph.p_offset as usize, ph.p_filesz as usize));
            }
        }
        // Truncations.
        for &(start, len) in &regions {
            for cut in (start..=start + len).step_by(3) {
                let _ = parse_bytes(path, &bytes[..cut.min(bytes.len())]);
            }
        }
        // Random single- and multi-byte corruption, restored after each try.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..30_000 {
            let (start, len) = regions[(next() as usize) % regions.len()];
            if len == 0 {
                continue;
            }
            let width = [1usize, 2, 4, 8][i % 4];
            let at = start + (next() as usize) % len;
            let end = (at + width).min(bytes.len());
            let saved: Vec<u8> = bytes[at..end].to_vec();
            let value = if i % 3 == 0 { u64::MAX } else { next() };
            for (k, b) in bytes[at..end].iter_mut().enumerate() {
                *b = (value >> (8 * k)) as u8;
            }
            let _ = parse_bytes(path, &bytes);
            bytes[at..end].copy_from_slice(&saved);
        }
    }

    // ---------- small pieces ----------

    #[test]
    fn dynamic_string_tokens() {
        let origin = OsStr::new("/rel/erts/bin");
        let lib = || lib_token(EM_X86_64).ok_or_else(|| unreachable!());
        let plat = || platform_token(EM_X86_64).ok_or_else(|| unreachable!());
        let exp = |e: &str| {
            let (s, first) = expand_tokens(e, origin, lib(), plat()).expect("expand");
            (s.to_string_lossy().into_owned(), first)
        };
        assert_eq!(exp("$ORIGIN/../lib"), ("/rel/erts/bin/../lib".into(), true));
        assert_eq!(exp("${ORIGIN}/x"), ("/rel/erts/bin/x".into(), true));
        assert_eq!(exp("$ORIGIN"), ("/rel/erts/bin".into(), true));
        assert_eq!(exp("$ORIGINAL/x"), ("$ORIGINAL/x".into(), false));
        assert_eq!(
            exp("/opt/$LIB/${PLATFORM}"),
            ("/opt/lib/x86_64-linux-gnu/x86_64".into(), false)
        );
        assert_eq!(exp("/opt/$LIB_X"), ("/opt/$LIB_X".into(), false));
        assert_eq!(exp("$FOO/${BAR}"), ("$FOO/${BAR}".into(), false));
        assert_eq!(exp("/x/$ORIGIN"), ("/x//rel/erts/bin".into(), false));
        let unsupported = || {
            Err(ElfError::UnsupportedToken {
                token: "$LIB".into(),
                entry: "e".into(),
                path: PathBuf::from("/o"),
                machine: 0,
            })
        };
        assert!(expand_tokens("/a/$LIB", origin, unsupported(), plat()).is_err());
        // An unusable token that is not used is no error.
        assert!(expand_tokens("$ORIGIN/x", origin, unsupported(), unsupported()).is_ok());
    }

    #[test]
    fn glob_patterns() {
        assert!(fnmatch(b"*.conf", b"libc.conf"));
        assert!(!fnmatch(b"*.conf", b"libc.conf~"));
        assert!(fnmatch(b"a?c", b"abc"));
        assert!(!fnmatch(b"a?c", b"ac"));
        assert!(fnmatch(b"[a-c]x", b"bx"));
        assert!(!fnmatch(b"[!a-c]x", b"bx"));
        assert!(fnmatch(b"[]]", b"]"));
        assert!(fnmatch(b"[", b"["));
        assert!(fnmatch(b"\\*", b"*"));
        assert!(!fnmatch(b"\\*", b"x"));
        assert!(fnmatch(b"*a*b*", b"xxaxxbxx"));
        assert!(fnmatch(b"*", b""));
        assert!(!fnmatch(b"x*", b""));
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = TempDir::new("under");
        let root = t.path();
        fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        symlink("usr/lib", root.join("lib")).expect("symlink");
        symlink("/lib/target", root.join("usr/lib/abs")).expect("symlink");
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("loop1", root.join("loop2")).expect("symlink");
        assert_eq!(
            resolve_under(root, Path::new("lib/abs")).expect("resolve"),
            root.join("usr/lib/target")
        );
        assert_eq!(
            resolve_under(root, Path::new("../../lib/x")).expect("resolve"),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve_under(root, Path::new("lib/../etc")).expect("resolve"),
            root.join("usr/etc")
        );
        assert!(resolve_under(root, Path::new("loop1/x")).is_err());
    }
}
