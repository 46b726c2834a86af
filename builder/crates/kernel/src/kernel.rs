//! Getting a Linux kernel and the kernel modules an image needs.
//!
//! This module owns:
//! 1. Debian's cloud kernel package, pinned by name, version and sha256 ([`Pin`]):
//!    fetched with `apt-get download` into a cache, checked against the pin, and
//!    unpacked with `dpkg-deb -x` — never installed ([`fetch_debian`]);
//! 2. a user's own kernel file and modules dir ([`from_paths`]);
//! 3. resolving wanted module names to `.ko` files plus their dependencies, in
//!    load order ([`Kernel::resolve_modules`]). The Debian package ships no
//!    `modules.dep`, so dependencies are read from each module's own `.modinfo`
//!    ELF section (`depends=`), and `vermagic=` is checked against the kernel.
//!
//! It must not write images, nor know about the rootfs tree, qemu or releases:
//! it hands back paths ([`Kernel`], [`Module`]) and the caller decides what to
//! do with them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use goblin::container::{Container, Ctx};
use goblin::elf::section_header::{SectionHeader, SHT_NOBITS};
use goblin::elf::Elf;

/// A pinned Debian kernel package (from a file in the repo's images/ dir).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

impl Pin {
    /// Reads a pin from a TOML file with exactly the keys `package`, `version`
    /// and `sha256`. Errors name the file (and toml's line/key information).
    pub fn load(path: &Path) -> Result<Pin, KernelError> {
        let text = fs::read_to_string(path).map_err(|source| KernelError::Io {
            action: "reading kernel pin",
            path: path.to_path_buf(),
            source,
        })?;
        let mut pin: Pin = toml::from_str(&text).map_err(|e| KernelError::PinParse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        pin.sha256 = pin.sha256.to_ascii_lowercase();
        pin.validate(Some(path))?;
        Ok(pin)
    }

    /// Checks that the fields are safe to put on a command line and in a path,
    /// and that the digest looks like a sha256.
    fn validate(&self, file: Option<&Path>) -> Result<(), KernelError> {
        let invalid = |reason: String| KernelError::InvalidPin {
            file: file.map(Path::to_path_buf),
            reason,
        };
        let p = &self.package;
        if p.is_empty()
            || !p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            || !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        {
            return Err(invalid(format!(
                "package {p:?} is not a Debian package name ([a-z0-9][a-z0-9+.-]*)"
            )));
        }
        let v = &self.version;
        if v.is_empty()
            || !v.starts_with(|c: char| c.is_ascii_digit())
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
        {
            return Err(invalid(format!(
                "version {v:?} is not a Debian version (a digit, then [A-Za-z0-9.+~:-])"
            )));
        }
        let s = &self.sha256;
        if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "sha256 {s:?} is not 64 hexadecimal digits"
            )));
        }
        Ok(())
    }

    /// `package=version`, as apt-get takes it.
    pub fn spec(&self) -> String {
        format!("{}={}", self.package, self.version)
    }
}

/// A kernel image, its release string and (optionally) its modules.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// bzImage (vmlinuz).
    pub image: PathBuf,
    /// e.g. "6.1.0-56-cloud-amd64", read from the bzImage header.
    pub release: String,
    /// `.../lib/modules/<release>`.
    pub modules_dir: Option<PathBuf>,
    /// sha256 of the kernel image file, lowercase hex.
    pub sha256: String,
    /// The package it came from, when it came from a Debian package.
    pub package: Option<Pin>,
}

/// A kernel module file to load, with the names of the modules it depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// Canonical name ('-' turned into '_'), e.g. "virtio_net".
    pub name: String,
    pub path: PathBuf,
    /// Canonical names from the module's `depends=` field, in its order.
    pub depends: Vec<String>,
}

/// Everything that can go wrong here; every variant names the path(s) concerned.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel pin {}: {message}", path.display())]
    PinParse { path: PathBuf, message: String },
    #[error("invalid kernel pin{}: {reason}", in_file(file))]
    InvalidPin {
        file: Option<PathBuf>,
        reason: String,
    },
    #[error("could not run `{command}` (cache {}): {source}{hint}", dir.display())]
    CommandNotRun {
        command: String,
        dir: PathBuf,
        hint: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}; cache {}): {stderr_tail}{hint}", dir.display())]
    CommandFailed {
        command: String,
        dir: PathBuf,
        status: String,
        stderr_tail: String,
        hint: String,
    },
    #[error(
        "{deb} (downloaded for pin {pin_spec} into {}) does not match the pin: \
         expected sha256 {expected}, got {actual} (the mirror's package changed, or the pin is wrong)",
        cache.display()
    )]
    ChecksumMismatch {
        /// File name of the downloaded .deb (deleted after the check).
        deb: String,
        /// The cache's kernels/ dir it was downloaded into.
        cache: PathBuf,
        pin_spec: String,
        expected: String,
        actual: String,
    },
    #[error(
        "source snapshot {} does not match the pin in {pin_file}: expected sha256 {expected}, \
         got {actual} (another snapshot, or a damaged copy)",
        file.display()
    )]
    SnapshotMismatch {
        file: PathBuf,
        pin_file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "building {what} needs tools that are not installed: run `cargo xtask deps` or \
         `apt-get install {packages}`"
    )]
    MissingTools { what: String, packages: String },
    #[error("kernel config fragment {}: {reason}", fragment.display())]
    BadFragment {
        fragment: PathBuf,
        option: String,
        reason: String,
    },
    #[error("no source snapshot for {what}: {reason}")]
    NoSnapshot { what: String, reason: String },
    #[error("unpacked package {} in {}: {reason}", pin_spec, dir.display())]
    BadPackage {
        pin_spec: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("{} is not an x86 bzImage kernel: {found}", path.display())]
    NotAKernel { path: PathBuf, found: String },
    #[error("modules for kernel {release} not found at {}: {reason}", path.display())]
    BadModulesDir {
        path: PathBuf,
        release: String,
        reason: String,
    },
    #[error("kernel {} has no modules dir, but modules were asked for: {}", image.display(), wanted.join(", "))]
    NoModules { image: PathBuf, wanted: Vec<String> },
    #[error("module `{name}`{} not found in {}", needed_by_text(needed_by), dir.display())]
    MissingModule {
        name: String,
        needed_by: Option<String>,
        dir: PathBuf,
    },
    #[error(
        "module `{name}` is compressed ({}): compressed modules are not supported yet",
        path.display()
    )]
    CompressedModule { name: String, path: PathBuf },
    #[error("kernel module {}: {reason}", path.display())]
    BadModule { path: PathBuf, reason: String },
    #[error(
        "module `{module}` ({}) was built for another kernel: vermagic {}, kernel release {release}",
        path.display(),
        vermagic.as_deref().map_or_else(|| "missing".to_string(), |v| format!("{v:?}"))
    )]
    VermagicMismatch {
        module: String,
        path: PathBuf,
        vermagic: Option<String>,
        release: String,
    },
    #[error("module dependency cycle in {}: {}", dir.display(), cycle.join(" -> "))]
    DependencyCycle { cycle: Vec<String>, dir: PathBuf },
}

fn in_file(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!(" in {}", f.display()))
        .unwrap_or_default()
}

fn needed_by_text(needed_by: &Option<String>) -> String {
    needed_by
        .as_ref()
        .map(|n| format!(" (needed by `{n}`)"))
        .unwrap_or_default()
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------
// Debian package: fetch, verify, unpack, cache
// ---------------------------------------------------------------------------

/// Name of the marker written into an unpacked tree once it is complete. It
/// holds the pin (as TOML) whose sha256 the .deb was verified against.
pub const COMPLETE_MARKER: &str = ".complete";

/// Where [`fetch_debian`] keeps `pin`'s unpacked tree in `cache_dir`:
/// `<cache_dir>/kernels/<package>_<version>/`.
pub fn final_dir(cache_dir: &Path, pin: &Pin) -> PathBuf {
    cache_dir
        .join("kernels")
        .join(format!("{}_{}", pin.package, pin.version))
}

/// Fetch (or reuse from `cache_dir`) the pinned package.
///
/// Cache layout: `<cache_dir>/kernels/<package>_<version>/` holds the unpacked
/// tree and a `.complete` marker written last. The .deb is downloaded into a
/// temp dir inside the cache, its sha256 checked against the pin *before*
/// unpacking, unpacked with `dpkg-deb -x` into that temp dir and renamed into
/// place (atomic: concurrent callers cannot corrupt the cache; a loser of the
/// race uses the winner's dir). A dir without marker (or whose marker records
/// another sha256) is ignored and replaced.
pub fn fetch_debian(pin: &Pin, cache_dir: &Path) -> Result<Kernel, KernelError> {
    let mut pin = pin.clone();
    pin.sha256 = pin.sha256.to_ascii_lowercase();
    pin.validate(None)?;

    let final_dir = final_dir(cache_dir, &pin);
    let kernels = cache_dir.join("kernels");

    if marker_matches(&final_dir, &pin) {
        // A cached tree that cannot be read is treated as stale and refetched.
        if let Ok(info) = inspect_tree(&final_dir, &pin) {
            return info.into_kernel(&final_dir, pin);
        }
    }

    fs::create_dir_all(&kernels).map_err(io_err("creating cache dir", &kernels))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}_{}-", pin.package, pin.version))
        .tempdir_in(&kernels)
        .map_err(io_err("creating temp dir in", &kernels))?;

    let deb = download_verified(&pin, work.path(), &kernels)?;

    // Unpack and check that the tree holds a kernel.
    let tree = work.path().join("tree");
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("-x").arg(&deb).arg(&tree).current_dir(work.path());
    let deb_name = deb.file_name().unwrap_or_default().to_string_lossy();
    run(&mut dpkg, &format!("dpkg-deb -x {deb_name}"), &kernels, "")?;
    fs::remove_file(&deb).map_err(io_err("removing", &deb))?;
    let info = inspect_tree(&tree, &pin)?;

    // Marker last, then rename into place.
    let marker = tree.join(COMPLETE_MARKER);
    let marker_text = toml::to_string(&pin).map_err(|e| KernelError::BadPackage {
        pin_spec: pin.spec(),
        dir: tree.clone(),
        reason: format!("cannot write marker: {e}"),
    })?;
    write_synced(&marker, marker_text.as_bytes())?;

    install(&tree, &final_dir, &kernels, &pin)?;
    drop(work);
    info.into_kernel(&final_dir, pin)
}

/// Downloads the pinned package with `apt-get download` into `work/download` and checks
/// its sha256 against the pin; returns the .deb's path. `cache` is named in errors.
pub(crate) fn download_verified(
    pin: &Pin,
    work: &Path,
    cache: &Path,
) -> Result<PathBuf, KernelError> {
    let download = work.join("download");
    fs::create_dir(&download).map_err(io_err("creating dir", &download))?;
    let mut apt = Command::new("apt-get");
    apt.arg("download").arg(pin.spec()).current_dir(&download);
    run(
        &mut apt,
        &format!("apt-get download {}", pin.spec()),
        cache,
        " (run `apt-get update`; the pinned version may have left the mirror: \
         update the pin in images/*.toml)",
    )?;
    let deb = single_deb(&download, pin)?;
    let actual = beambake_images::digest::sha256_file(&deb).map_err(io_err("reading", &deb))?;
    if actual != pin.sha256 {
        return Err(KernelError::ChecksumMismatch {
            deb: deb
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            cache: cache.to_path_buf(),
            pin_spec: pin.spec(),
            expected: pin.sha256.clone(),
            actual,
        });
    }
    Ok(deb)
}

/// True when `dir/.complete` exists and records this pin.
pub fn marker_matches(dir: &Path, pin: &Pin) -> bool {
    fs::read_to_string(dir.join(COMPLETE_MARKER))
        .ok()
        .and_then(|text| toml::from_str::<Pin>(&text).ok())
        .is_some_and(|m| m == *pin)
}

/// Atomically renames `tree` to `final_dir`. If `final_dir` exists: when it is
/// complete for this pin (another process won the race) it is used; otherwise
/// (partial or stale) it is moved aside and removed, and the rename retried.
fn install(tree: &Path, final_dir: &Path, kernels: &Path, pin: &Pin) -> Result<(), KernelError> {
    let mut last_err = None;
    for _ in 0..5 {
        match fs::rename(tree, final_dir) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if !final_dir.exists() {
                    return Err(KernelError::Io {
                        action: "moving unpacked kernel into place at",
                        path: final_dir.to_path_buf(),
                        source: e,
                    });
                }
                if marker_matches(final_dir, pin) && inspect_tree(final_dir, pin).is_ok() {
                    return Ok(()); // lost the race: use the winner's dir
                }
                // Partial or stale: move it into a fresh temp dir (atomic,
                // unique name), which removes it when dropped.
                let trash = tempfile::Builder::new()
                    .prefix(".stale-")
                    .tempdir_in(kernels)
                    .map_err(io_err("creating temp dir in", kernels))?;
                match fs::rename(final_dir, trash.path().join("old")) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(KernelError::Io {
                            action: "moving aside incomplete cache dir",
                            path: final_dir.to_path_buf(),
                            source: e,
                        })
                    }
                }
                last_err = Some(e);
            }
        }
    }
    Err(KernelError::Io {
        action: "moving unpacked kernel into place at",
        path: final_dir.to_path_buf(),
        source: last_err.unwrap_or_else(|| io::Error::other("gave up after retries")),
    })
}

/// The one .deb that `apt-get download` left in `dir`.
fn single_deb(dir: &Path, pin: &Pin) -> Result<PathBuf, KernelError> {
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("reading dir", dir))? {
        let path = entry.map_err(io_err("reading dir", dir))?.path();
        if path.extension() == Some(OsStr::new("deb")) {
            debs.push(path);
        }
    }
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => Err(KernelError::BadPackage {
            pin_spec: pin.spec(),
            dir: dir.to_path_buf(),
            reason: format!("apt-get download left {n} .deb files, expected 1"),
        }),
    }
}

/// Runs a command, capturing its output; on failure the error names the
/// command and the tail of its stderr.
pub(crate) fn run(
    cmd: &mut Command,
    display: &str,
    dir: &Path,
    hint: &str,
) -> Result<(), KernelError> {
    cmd.env("LC_ALL", "C");
    let output = cmd.output().map_err(|source| {
        let hint = if source.kind() == io::ErrorKind::NotFound {
            " (fetching the Debian kernel needs apt-get and dpkg-deb, i.e. a Debian or \
             Ubuntu host; or use a kernel of your own)"
        } else {
            ""
        };
        KernelError::CommandNotRun {
            command: display.to_string(),
            dir: dir.to_path_buf(),
            hint: hint.to_string(),
            source,
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    let status = match output.status.code() {
        Some(code) => format!("exit status {code}"),
        None => output.status.to_string(),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut tail = tail_lines(&stderr, 8);
    if tail.is_empty() {
        tail = tail_lines(&String::from_utf8_lossy(&output.stdout), 8);
    }
    if tail.is_empty() {
        tail = "(no output)".to_string();
    }
    Err(KernelError::CommandFailed {
        command: display.to_string(),
        dir: dir.to_path_buf(),
        status,
        stderr_tail: tail,
        hint: hint.to_string(),
    })
}

/// The last `n` non-empty lines of `text`, at most ~2000 characters, joined
/// with "; " so that an error stays on one line.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("; ");
    if out.len() > 2000 {
        let mut cut = out.len() - 2000;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = format!("...{}", &out[cut..]);
    }
    out
}

/// Writes a cache file atomically ([`beambake_images::output::write_bytes`]).
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    beambake_images::output::write_bytes(path, bytes)
        .map(drop)
        .map_err(|e| io_err("writing", path)(e.source))
}

/// What an unpacked kernel package holds, relative to its root.
struct TreeInfo {
    image: PathBuf,
    release: String,
    modules: PathBuf,
    sha256: String,
}

impl TreeInfo {
    fn into_kernel(self, root: &Path, pin: Pin) -> Result<Kernel, KernelError> {
        Ok(Kernel {
            image: root.join(self.image),
            release: self.release,
            modules_dir: Some(root.join(self.modules)),
            sha256: self.sha256,
            package: Some(pin),
        })
    }
}

/// Finds the kernel image and modules dir in an unpacked package tree.
fn inspect_tree(root: &Path, pin: &Pin) -> Result<TreeInfo, KernelError> {
    let bad = |reason: String| KernelError::BadPackage {
        pin_spec: pin.spec(),
        dir: root.to_path_buf(),
        reason,
    };
    let boot = root.join("boot");
    let mut images = Vec::new();
    if let Ok(entries) = fs::read_dir(&boot) {
        for entry in entries {
            let entry = entry.map_err(io_err("reading dir", &boot))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("vmlinuz-") {
                images.push(name);
            }
        }
    }
    images.sort();
    let image_name = match images.len() {
        0 => {
            return Err(bad(
                "no boot/vmlinuz-* in it (a metapackage? pin a versioned linux-image-<release> package)"
                    .to_string(),
            ))
        }
        1 => images.remove(0),
        _ => {
            let from_package = pin
                .package
                .strip_prefix("linux-image-")
                .map(|r| format!("vmlinuz-{r}"));
            match images.iter().find(|i| Some(*i) == from_package.as_ref()) {
                Some(i) => i.clone(),
                None => return Err(bad(format!("several kernels in boot/: {images:?}"))),
            }
        }
    };
    let image_rel = Path::new("boot").join(&image_name);
    let image = root.join(&image_rel);
    let release = bzimage_release(&image)?;
    let modules_rel = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| Path::new(m).join(&release))
        .find(|m| root.join(m).is_dir())
        .ok_or_else(|| bad(format!("no lib/modules/{release} in it")))?;
    let sha256 = beambake_images::digest::sha256_file(&image).map_err(io_err("reading", &image))?;
    Ok(TreeInfo {
        image: image_rel,
        release,
        modules: modules_rel,
        sha256,
    })
}

/// The default cache dir: `$XDG_CACHE_HOME/beambake`, else
/// `$HOME/.cache/beambake` (else the system temp dir's `beambake`).
pub fn default_cache_dir() -> PathBuf {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = absolute("XDG_CACHE_HOME") {
        return xdg.join("beambake");
    }
    if let Some(home) = absolute("HOME") {
        return home.join(".cache").join("beambake");
    }
    std::env::temp_dir().join("beambake")
}

// ---------------------------------------------------------------------------
// A user's own kernel; the bzImage header
// ---------------------------------------------------------------------------

/// A user's kernel: `image` must be an x86 bzImage (boot protocol magic "HdrS"
/// at 0x202), else [`KernelError::NotAKernel`] says what was found; the release
/// comes from the header's kernel_version string.
///
/// `modules` is either a dir containing `lib/modules/<release>`, or that dir
/// itself, or a dir that directly contains `kernel/…` for that release.
/// `None` means no modules (then asking for any module is an error).
pub fn from_paths(image: &Path, modules: Option<&Path>) -> Result<Kernel, KernelError> {
    let release = bzimage_release(image)?;
    let modules_dir = modules.map(|m| find_modules_dir(m, &release)).transpose()?;
    Ok(Kernel {
        image: image.to_path_buf(),
        sha256: beambake_images::digest::sha256_file(image).map_err(io_err("reading", image))?,
        release,
        modules_dir,
        package: None,
    })
}

fn find_modules_dir(given: &Path, release: &str) -> Result<PathBuf, KernelError> {
    let bad = |reason: String| KernelError::BadModulesDir {
        path: given.to_path_buf(),
        release: release.to_string(),
        reason,
    };
    let meta = fs::metadata(given).map_err(io_err("reading modules dir", given))?;
    if !meta.is_dir() {
        return Err(bad("not a directory".to_string()));
    }
    for sub in [
        Path::new("lib/modules").join(release),
        Path::new("usr/lib/modules").join(release),
        PathBuf::from(release),
    ] {
        let candidate = given.join(sub);
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    if given.file_name() == Some(OsStr::new(release)) || given.join("kernel").is_dir() {
        return Ok(given.to_path_buf());
    }
    // Say which releases are there, if any, to make a mismatch obvious.
    let mut others = Vec::new();
    for base in [given.join("lib/modules"), given.to_path_buf()] {
        if let Ok(entries) = fs::read_dir(&base) {
            for e in entries.flatten() {
                if e.path().join("kernel").is_dir() {
                    others.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    others.sort();
    let found = if others.is_empty() {
        String::new()
    } else {
        format!("; modules found for {}", others.join(", "))
    };
    Err(bad(format!(
        "expected lib/modules/{release}/, or the dir itself named {release} or holding kernel/{found}"
    )))
}

/// Enough of the start of a bzImage to hold the setup header and any
/// kernel_version string (pointer is a u16, plus 0x200, plus the string).
const HEADER_READ: u64 = 0x200 + 0x1_0000 + 0x100;
/// Release strings longer than this are not believed.
const MAX_RELEASE: usize = 0x100;

/// Reads the release string from an x86 bzImage's setup header.
fn bzimage_release(path: &Path) -> Result<String, KernelError> {
    let not = |found: String| KernelError::NotAKernel {
        path: path.to_path_buf(),
        found,
    };
    let meta = fs::metadata(path).map_err(io_err("reading kernel image", path))?;
    if meta.is_dir() {
        return Err(not("a directory".to_string()));
    }
    let file_len = meta.len();
    let mut head = Vec::new();
    File::open(path)
        .map_err(io_err("opening kernel image", path))?
        .take(HEADER_READ)
        .read_to_end(&mut head)
        .map_err(io_err("reading kernel image", path))?;

    if head.len() < 0x206 || &head[0x202..0x206] != b"HdrS" {
        return Err(not(describe(&head, file_len)));
    }
    let u16_at = |off: usize| {
        head.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let protocol = u16_at(0x206).ok_or_else(|| not(truncated(file_len)))?;
    if protocol < 0x200 {
        return Err(not(format!(
            "boot protocol {}.{:02} is too old to carry a kernel version",
            protocol >> 8,
            protocol & 0xff
        )));
    }
    let pointer = u16_at(0x20E).ok_or_else(|| not(truncated(file_len)))?;
    if pointer == 0 {
        return Err(not(
            "bzImage header has no kernel_version string".to_string()
        ));
    }
    let start = usize::from(pointer) + 0x200;
    if start as u64 >= file_len || start >= head.len() {
        return Err(not(format!(
            "bzImage header's kernel_version pointer {pointer:#x} points outside the file \
             ({file_len} bytes; truncated?)"
        )));
    }
    let rest = &head[start..];
    let end = rest
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(rest.len());
    let raw = &rest[..end];
    if raw.is_empty() || raw.len() > MAX_RELEASE || !raw.iter().all(|b| b.is_ascii_graphic()) {
        return Err(not(format!(
            "bzImage header's kernel_version at {start:#x} is not a release string: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(64)])
        )));
    }
    // setup_sects (0 means 4) and syssize (16-byte units) give the image size.
    let setup_sects = match head.get(0x1F1) {
        Some(0) | None => 4u64,
        Some(&n) => u64::from(n),
    };
    let syssize = head
        .get(0x1F4..0x1F8)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let expected = (setup_sects + 1) * 512 + u64::from(syssize) * 16;
    if file_len < expected {
        return Err(not(format!(
            "truncated bzImage: its header says {expected} bytes, the file has {file_len}"
        )));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

fn truncated(file_len: u64) -> String {
    format!("too short for a bzImage header ({file_len} bytes)")
}

/// Says what a file that is not a bzImage looks like.
fn describe(head: &[u8], file_len: u64) -> String {
    if file_len == 0 {
        return "empty file".to_string();
    }
    let magics: &[(&[u8], &str)] = &[
        (
            b"\x7fELF",
            "ELF file (an uncompressed vmlinux or a program, not a bzImage)",
        ),
        (b"\x1f\x8b", "gzip data"),
        (b"\xfd7zXZ\x00", "xz data"),
        (b"\x28\xb5\x2f\xfd", "zstd data"),
        (b"BZh", "bzip2 data"),
        (b"\x02\x21\x4c\x18", "lz4 data"),
        (b"\x04\x22\x4d\x18", "lz4 data"),
        (b"070701", "cpio archive (an initramfs?)"),
        (b"070702", "cpio archive (an initramfs?)"),
        (b"\xd0\x0d\xfe\xed", "device tree blob"),
        (b"\x27\x05\x19\x56", "U-Boot uImage"),
        (b"!<arch>\n", "ar archive (a .deb? unpack it first)"),
    ];
    for (magic, what) in magics {
        if head.starts_with(magic) {
            return (*what).to_string();
        }
    }
    if head.get(0x38..0x3C) == Some(b"ARM\x64") {
        return "arm64 kernel Image (only x86 bzImage is supported)".to_string();
    }
    let sample = &head[..head.len().min(512)];
    let text = match std::str::from_utf8(sample) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&sample[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    if text.is_some_and(|t| t.chars().all(|c| !c.is_control() || c.is_whitespace())) {
        return "text".to_string();
    }
    if head.starts_with(b"MZ") {
        return "PE/DOS executable without the x86 boot header".to_string();
    }
    if head.len() < 0x206 {
        return truncated(file_len);
    }
    let first: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "no \"HdrS\" boot header at 0x202 (data starting {})",
        first.join(" ")
    )
}

// ---------------------------------------------------------------------------
// Module resolution
// ---------------------------------------------------------------------------

/// modprobe treats '-' and '_' in module names alike; '_' is canonical.
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

const COMPRESSED_SUFFIXES: [&str; 3] = [".ko.xz", ".ko.zst", ".ko.gz"];

/// Module files under a modules dir, by canonical name.
struct ModIndex {
    dir: PathBuf,
    /// Best candidate first (see [`ModIndex::build`]).
    by_name: BTreeMap<String, Vec<PathBuf>>,
}

impl ModIndex {
    /// Walks `dir` (not following symlinked dirs such as build/ and source/)
    /// for `*.ko` and compressed modules. When a name occurs more than once,
    /// `updates/` wins, then uncompressed, then the first path.
    fn build(dir: &Path) -> Result<ModIndex, KernelError> {
        let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in fs::read_dir(&d).map_err(io_err("reading modules dir", &d))? {
                let entry = entry.map_err(io_err("reading modules dir", &d))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(io_err("reading", &path))?;
                if ft.is_dir() {
                    pending.push(path);
                    continue;
                }
                let file_name = entry.file_name();
                let Some(name) = file_name.to_str().and_then(module_stem) else {
                    continue;
                };
                by_name.entry(canonical(name)).or_default().push(path);
            }
        }
        for paths in by_name.values_mut() {
            paths.sort_by_key(|p| {
                (
                    !p.strip_prefix(dir).is_ok_and(|r| r.starts_with("updates")),
                    is_compressed(p),
                    p.clone(),
                )
            });
        }
        Ok(ModIndex {
            dir: dir.to_path_buf(),
            by_name,
        })
    }

    fn best(&self, name: &str) -> Option<&PathBuf> {
        self.by_name.get(name).and_then(|v| v.first())
    }
}

/// "foo.ko" / "foo.ko.xz" -> "foo".
fn module_stem(file_name: &str) -> Option<&str> {
    if let Some(stem) = file_name.strip_suffix(".ko") {
        return Some(stem).filter(|s| !s.is_empty());
    }
    COMPRESSED_SUFFIXES
        .iter()
        .find_map(|s| file_name.strip_suffix(s))
        .filter(|s| !s.is_empty())
}

fn is_compressed(path: &Path) -> bool {
    path.file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| COMPRESSED_SUFFIXES.iter().any(|s| n.ends_with(s)))
}

/// The key=value strings of a module's `.modinfo` section.
#[derive(Debug, Default)]
struct ModInfo {
    entries: Vec<(String, String)>,
}

impl ModInfo {
    fn first(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Canonical names from `depends=` (comma-separated, may be empty), in
    /// order, without duplicates.
    fn depends(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for field in self.all("depends") {
            for d in field.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let d = canonical(d);
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out
    }
}

/// A .modinfo larger than this is not believed.
const MAX_MODINFO: u64 = 16 << 20;

/// Reads a module's `.modinfo` section, using goblin for the ELF header and
/// section headers and reading only those parts of the file.
fn read_modinfo(path: &Path) -> Result<ModInfo, KernelError> {
    let bad = |reason: String| KernelError::BadModule {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).map_err(io_err("opening module", path))?;
    let file_len = f.metadata().map_err(io_err("reading module", path))?.len();
    let mut head = Vec::new();
    (&mut f)
        .take(64)
        .read_to_end(&mut head)
        .map_err(io_err("reading module", path))?;
    if !head.starts_with(b"\x7fELF") {
        return Err(bad("not an ELF file".to_string()));
    }
    let header = Elf::parse_header(&head).map_err(|e| bad(format!("invalid ELF header: {e}")))?;
    let container = header
        .container()
        .map_err(|e| bad(format!("invalid ELF header: {e}")))?;
    let endian = header
        .endianness()
        .map_err(|e| bad(format!("invalid ELF header: {e}")))?;
    if header.e_type != goblin::elf::header::ET_REL {
        return Err(bad(format!(
            "ELF type {} is not a relocatable object, as kernel modules are",
            goblin::elf::header::et_to_str(header.e_type)
        )));
    }
    let ctx = Ctx::new(container, endian);
    let sh_size = SectionHeader::size(ctx) as u64;
    if header.e_shoff == 0 {
        return Err(bad("no section headers".to_string()));
    }
    if u64::from(header.e_shentsize) != sh_size {
        return Err(bad(format!(
            "section header size {} (expected {sh_size} for {})",
            header.e_shentsize,
            if container == Container::Big {
                "ELF64"
            } else {
                "ELF32"
            }
        )));
    }
    let section_headers = |f: &mut File, count: u64| -> Result<Vec<SectionHeader>, KernelError> {
        let bytes = read_range(
            f,
            path,
            header.e_shoff,
            count.saturating_mul(sh_size),
            file_len,
        )?;
        SectionHeader::parse_from(&bytes, 0, count as usize, ctx)
            .map_err(|e| bad(format!("invalid section headers: {e}")))
    };
    // e_shnum == 0 means the count is in section 0's sh_size (huge objects);
    // e_shstrndx == SHN_XINDEX means the index is in section 0's sh_link.
    let first = section_headers(&mut f, 1)?;
    let count = match header.e_shnum {
        0 => first.first().map_or(0, |s| s.sh_size),
        n => u64::from(n),
    };
    if count == 0 || count > file_len / sh_size {
        return Err(bad(format!("implausible section count {count}")));
    }
    let sections = section_headers(&mut f, count)?;
    let strndx = if u32::from(header.e_shstrndx) == goblin::elf::section_header::SHN_XINDEX {
        first.first().map_or(0, |s| s.sh_link as usize)
    } else {
        usize::from(header.e_shstrndx)
    };
    let strtab_sh = sections
        .get(strndx)
        .ok_or_else(|| bad(format!("section name table index {strndx} out of range")))?;
    if strtab_sh.sh_size > MAX_MODINFO {
        return Err(bad("section name table too large".to_string()));
    }
    let strtab = read_range(
        &mut f,
        path,
        strtab_sh.sh_offset,
        strtab_sh.sh_size,
        file_len,
    )?;
    let name_of = |sh: &SectionHeader| -> Option<&[u8]> {
        let rest = strtab.get(sh.sh_name..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..end])
    };
    let modinfo_sh = sections
        .iter()
        .find(|sh| name_of(sh) == Some(b".modinfo".as_slice()))
        .ok_or_else(|| bad("no .modinfo section".to_string()))?;
    if modinfo_sh.sh_type == SHT_NOBITS {
        return Err(bad(".modinfo section has no contents".to_string()));
    }
    if modinfo_sh.sh_size > MAX_MODINFO {
        return Err(bad(format!(
            ".modinfo section implausibly large ({} bytes)",
            modinfo_sh.sh_size
        )));
    }
    let data = read_range(
        &mut f,
        path,
        modinfo_sh.sh_offset,
        modinfo_sh.sh_size,
        file_len,
    )?;
    let entries = data
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    Ok(ModInfo { entries })
}

/// Reads `len` bytes at `offset`, after checking they lie inside the file.
fn read_range(
    f: &mut File,
    path: &Path,
    offset: u64,
    len: u64,
    file_len: u64,
) -> Result<Vec<u8>, KernelError> {
    let end = offset.checked_add(len);
    if end.is_none_or(|e| e > file_len) {
        return Err(KernelError::BadModule {
            path: path.to_path_buf(),
            reason: format!(
                "truncated ELF: {len} bytes at offset {offset} go past the end of the file ({file_len} bytes)"
            ),
        });
    }
    let mut buf = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err("reading module", path))?;
    f.read_exact(&mut buf)
        .map_err(io_err("reading module", path))?;
    Ok(buf)
}

/// Shell-style glob with `*` and `?` (module aliases use these).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[derive(Clone, Copy, PartialEq)]
enum Mark {
    Visiting,
    Done,
}

/// One resolve_modules call's state.
struct Resolver<'a> {
    release: &'a str,
    index: ModIndex,
    /// Canonical names of modules built into the kernel (modules.builtin).
    builtin: BTreeSet<String>,
    /// alias -> canonical names (built on first need, from every module's
    /// .modinfo and modules.builtin.modinfo); `true` marks a built-in.
    aliases: Option<Vec<(String, String, bool)>>,
    marks: HashMap<String, Mark>,
    stack: Vec<String>,
    out: Vec<Module>,
}

impl Resolver<'_> {
    fn missing(&self, name: &str, needed_by: Option<&str>) -> KernelError {
        KernelError::MissingModule {
            name: name.to_string(),
            needed_by: needed_by.map(str::to_string),
            dir: self.index.dir.clone(),
        }
    }

    fn want(&mut self, wanted: &str) -> Result<(), KernelError> {
        let name = canonical(wanted);
        if self.index.by_name.contains_key(&name) {
            return self.visit(&name, None);
        }
        if self.builtin.contains(&name) {
            return Ok(());
        }
        let mut targets: Vec<(String, bool)> = self
            .aliases()
            .iter()
            .filter(|(alias, _, _)| glob_match(alias.as_bytes(), name.as_bytes()))
            .map(|(_, module, builtin)| (module.clone(), *builtin))
            .collect();
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            return Err(self.missing(wanted, None));
        }
        if targets.iter().any(|(_, builtin)| *builtin) {
            return Ok(());
        }
        for (module, _) in targets {
            self.visit(&module, None)?;
        }
        Ok(())
    }

    fn aliases(&mut self) -> &[(String, String, bool)] {
        let index = &self.index;
        self.aliases.get_or_insert_with(|| {
            let mut aliases = Vec::new();
            for (name, paths) in &index.by_name {
                let Some(path) = paths.iter().find(|p| !is_compressed(p)) else {
                    continue;
                };
                // A module that cannot be read only matters if it is needed.
                if let Ok(info) = read_modinfo(path) {
                    for alias in info.all("alias") {
                        aliases.push((canonical(alias), name.clone(), false));
                    }
                }
            }
            if let Ok(bytes) = fs::read(index.dir.join("modules.builtin.modinfo")) {
                for entry in bytes.split(|&b| b == 0) {
                    let entry = String::from_utf8_lossy(entry);
                    if let Some((module, alias)) = entry
                        .split_once('=')
                        .and_then(|(key, value)| Some((key.strip_suffix(".alias")?, value)))
                    {
                        aliases.push((canonical(alias), canonical(module), true));
                    }
                }
            }
            aliases
        })
    }

    /// Depth-first: dependencies (by name) first, then the module itself.
    fn visit(&mut self, name: &str, needed_by: Option<&str>) -> Result<(), KernelError> {
        match self.marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let from = self.stack.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle = self.stack[from..].to_vec();
                cycle.push(name.to_string());
                return Err(KernelError::DependencyCycle {
                    cycle,
                    dir: self.index.dir.clone(),
                });
            }
            None => {}
        }
        let Some(path) = self.index.best(name).cloned() else {
            if self.builtin.contains(name) {
                self.marks.insert(name.to_string(), Mark::Done);
                return Ok(());
            }
            return Err(self.missing(name, needed_by));
        };
        if is_compressed(&path) {
            return Err(KernelError::CompressedModule {
                name: name.to_string(),
                path,
            });
        }
        let info = read_modinfo(&path)?;
        let vermagic = info.first("vermagic");
        if vermagic.and_then(|v| v.split_whitespace().next()) != Some(self.release) {
            return Err(KernelError::VermagicMismatch {
                module: name.to_string(),
                path,
                vermagic: vermagic.map(str::to_string),
                release: self.release.to_string(),
            });
        }
        let depends = info.depends();

        self.marks.insert(name.to_string(), Mark::Visiting);
        self.stack.push(name.to_string());
        let mut ordered = depends.clone();
        ordered.sort();
        for dep in &ordered {
            self.visit(dep, Some(name))?;
        }
        self.stack.pop();
        self.marks.insert(name.to_string(), Mark::Done);
        self.out.push(Module {
            name: name.to_string(),
            path,
            depends,
        });
        Ok(())
    }
}

/// Canonical names of built-in modules, from `modules.builtin` (if present).
fn read_builtin(dir: &Path) -> Result<BTreeSet<String>, KernelError> {
    let path = dir.join("modules.builtin");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => {
            return Err(KernelError::Io {
                action: "reading",
                path,
                source: e,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let file = l.trim().rsplit('/').next()?;
            module_stem(file).map(canonical)
        })
        .collect())
}

impl Kernel {
    /// Wanted names (with '-' and '_' equivalent, as modprobe does) -> modules
    /// in load order: every module after all its dependencies; deterministic
    /// (ties broken by the wanted order, then name).
    ///
    /// A wanted name is looked up as a module file name, then among the
    /// modules built into the kernel (`modules.builtin`: nothing to load),
    /// then among module aliases (`alias=`, e.g. "iso9660" -> isofs).
    /// Dependencies come from each module's `.modinfo` `depends=`; each
    /// module's `vermagic=` must start with the kernel release.
    pub fn resolve_modules(&self, wanted: &[&str]) -> Result<Vec<Module>, KernelError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dir) = &self.modules_dir else {
            return Err(KernelError::NoModules {
                image: self.image.clone(),
                wanted: wanted.iter().map(|w| w.to_string()).collect(),
            });
        };
        let mut resolver = Resolver {
            release: &self.release,
            index: ModIndex::build(dir)?,
            builtin: read_builtin(dir)?,
            aliases: None,
            marks: HashMap::new(),
            stack: Vec::new(),
            out: Vec::new(),
        };
        for w in wanted {
            resolver.want(w)?;
        }
        Ok(resolver.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beambake_testkit::kernel::{
        assert_load_order as load_order, fake_bzimage, REAL_PACKAGE, REAL_SHA256, REAL_VERSION,
    };
    use beambake_testkit::{skip, status, which};
    use tempfile::TempDir;

    fn names(mods: &[Module]) -> Vec<&str> {
        mods.iter().map(|m| m.name.as_str()).collect()
    }

    fn assert_load_order(mods: &[Module]) {
        load_order(mods.iter().map(|m| (m.name.as_str(), m.depends.as_slice())));
    }

    // --- Pin ---------------------------------------------------------------

    #[test]
    fn pin_load_ok_and_errors_name_file() {
        let dir = TempDir::new().unwrap();
        let good = dir.path().join("kernel.toml");
        // The sha256 in upper case: loaded in lower case.
        fs::write(
            &good,
            format!(
                "package = {REAL_PACKAGE:?}\nversion = {REAL_VERSION:?}\nsha256 = {:?}\n",
                REAL_SHA256.to_ascii_uppercase()
            ),
        )
        .unwrap();
        let real = Pin {
            package: REAL_PACKAGE.to_string(),
            version: REAL_VERSION.to_string(),
            sha256: REAL_SHA256.to_string(),
        };
        assert_eq!(Pin::load(&good).unwrap(), real);

        let extra = dir.path().join("extra.toml");
        fs::write(
            &extra,
            "package = \"a\"\nversion = \"1\"\nsha256 = \"00\"\narch = \"amd64\"\n",
        )
        .unwrap();
        let msg = Pin::load(&extra).unwrap_err().to_string();
        assert!(msg.contains("extra.toml") && msg.contains("arch"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");

        let missing = dir.path().join("missing.toml");
        fs::write(&missing, "package = \"a\"\nversion = \"1\"\n").unwrap();
        let msg = Pin::load(&missing).unwrap_err().to_string();
        assert!(
            msg.contains("missing.toml") && msg.contains("sha256"),
            "{msg}"
        );

        let bad_sha = dir.path().join("badsha.toml");
        fs::write(
            &bad_sha,
            "package = \"a\"\nversion = \"1\"\nsha256 = \"xyz\"\n",
        )
        .unwrap();
        let err = Pin::load(&bad_sha).unwrap_err();
        assert!(matches!(err, KernelError::InvalidPin { .. }), "{err:?}");
        assert!(err.to_string().contains("badsha.toml"), "{err}");

        let bad_pkg = Pin {
            package: "-oops".into(),
            ..real
        };
        let err = fetch_debian(&bad_pkg, dir.path()).unwrap_err();
        assert!(matches!(err, KernelError::InvalidPin { .. }), "{err:?}");

        let err = Pin::load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }

    #[test]
    fn default_cache_dir_ends_in_beambake() {
        assert!(default_cache_dir().ends_with("beambake"));
        assert!(default_cache_dir().is_absolute());
    }

    // --- from_paths on synthetic files ---------------------------------------

    fn not_a_kernel(path: &Path) -> String {
        match from_paths(path, None) {
            Err(e @ KernelError::NotAKernel { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                msg
            }
            other => panic!("expected NotAKernel for {}, got {other:?}", path.display()),
        }
    }

    #[test]
    fn from_paths_rejects_non_kernels() {
        let dir = TempDir::new().unwrap();
        let text = dir.path().join("notes.txt");
        fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
        assert!(not_a_kernel(&text).ends_with("text"));

        assert!(not_a_kernel(Path::new("/bin/true")).contains("ELF file"));

        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert!(not_a_kernel(&empty).contains("empty file"));

        let short = dir.path().join("short");
        fs::write(&short, [0x00u8, 0xff, 0x13, 0x37]).unwrap();
        assert!(not_a_kernel(&short).contains("too short"));

        let gz = dir.path().join("x.gz");
        fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]).unwrap();
        assert!(not_a_kernel(&gz).contains("gzip data"));

        let truncated = dir.path().join("trunc");
        fs::write(&truncated, &fake_bzimage("6.1.0-test")[..0x210]).unwrap();
        assert!(not_a_kernel(&truncated).contains("outside the file"));

        let mut outside = fake_bzimage("6.1.0-test");
        outside[0x20E..0x210].copy_from_slice(&0xFFFFu16.to_le_bytes());
        let outside_path = dir.path().join("outside");
        fs::write(&outside_path, &outside).unwrap();
        assert!(not_a_kernel(&outside_path).contains("0xffff"));

        // Pointer to the very last byte, which is not NUL: no panic.
        let mut edge = fake_bzimage("6.1.0-test");
        let last = edge.len() - 1;
        edge[last] = b'x';
        edge[0x20E..0x210].copy_from_slice(&((last - 0x200) as u16).to_le_bytes());
        let edge_path = dir.path().join("edge");
        fs::write(&edge_path, &edge).unwrap();
        assert_eq!(from_paths(&edge_path, None).unwrap().release, "x");

        let mut zero = fake_bzimage("6.1.0-test");
        zero[0x20E..0x210].copy_from_slice(&0u16.to_le_bytes());
        let zero_path = dir.path().join("zero");
        fs::write(&zero_path, &zero).unwrap();
        assert!(not_a_kernel(&zero_path).contains("no kernel_version"));

        let mut junk = fake_bzimage("6.1.0-test");
        junk[0x300] = 0x01;
        let junk_path = dir.path().join("junk");
        fs::write(&junk_path, &junk).unwrap();
        assert!(not_a_kernel(&junk_path).contains("not a release string"));

        assert!(not_a_kernel(dir.path()).contains("directory"));
        let err = from_paths(&dir.path().join("absent"), None).unwrap_err();
        assert!(matches!(err, KernelError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn from_paths_modules_dir_forms() {
        let dir = TempDir::new().unwrap();
        let image = dir.path().join("bzImage");
        fs::write(&image, fake_bzimage("6.1.0-test")).unwrap();
        let root = dir.path().join("root");
        let mdir = root.join("lib/modules/6.1.0-test");
        fs::create_dir_all(mdir.join("kernel")).unwrap();
        let k = from_paths(&image, Some(&root)).unwrap();
        assert_eq!(k.release, "6.1.0-test");
        assert_eq!(k.modules_dir, Some(mdir.clone()));
        assert_eq!(k.sha256.len(), 64);
        assert_eq!(
            from_paths(&image, Some(&mdir)).unwrap().modules_dir,
            Some(mdir.clone())
        );
        // A dir directly holding kernel/ (any name).
        let flat = dir.path().join("mods");
        fs::create_dir_all(flat.join("kernel/drivers")).unwrap();
        assert_eq!(
            from_paths(&image, Some(&flat)).unwrap().modules_dir,
            Some(flat.clone())
        );
        // Modules for another release only.
        let other = dir.path().join("other");
        fs::create_dir_all(other.join("lib/modules/5.10.0-x/kernel")).unwrap();
        let err = from_paths(&image, Some(&other)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, KernelError::BadModulesDir { .. }), "{err:?}");
        assert!(
            msg.contains("5.10.0-x") && msg.contains("6.1.0-test"),
            "{msg}"
        );
        let err = from_paths(&image, Some(&dir.path().join("absent"))).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        let err = from_paths(&image, Some(&image)).unwrap_err();
        assert!(matches!(err, KernelError::BadModulesDir { .. }), "{err:?}");
    }

    // --- Synthetic modules ---------------------------------------------------

    const TEST_RELEASE: &str = "6.1.0-test";

    /// Compiles an ELF relocatable object with a .modinfo section holding
    /// `entries` at `dir/rel`.
    fn make_ko(dir: &Path, rel: &str, entries: &[&str]) {
        let out = dir.join(rel);
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        let literal: String = entries.iter().map(|e| format!("{e:?} \"\\0\" ")).collect();
        let src = dir.join(format!("{}.c", rel.replace('/', "_")));
        fs::write(
            &src,
            if entries.is_empty() {
                "int dummy_fn(void) { return 0; }\n".to_string()
            } else {
                format!(
                    "__attribute__((section(\".modinfo\"), used)) \
                     static const char modinfo[] = {literal};\n\
                     int dummy_fn(void) {{ return 0; }}\n"
                )
            },
        )
        .unwrap();
        let st = status(Command::new("gcc").arg("-c").arg("-o").arg(&out).arg(&src));
        assert!(st.success(), "gcc failed for {rel}");
        fs::remove_file(src).unwrap();
    }

    fn vm() -> String {
        format!("vermagic={TEST_RELEASE} SMP preempt mod_unload")
    }

    fn fake_kernel(dir: &Path) -> Kernel {
        Kernel {
            image: dir.join("bzImage"),
            release: TEST_RELEASE.to_string(),
            modules_dir: Some(dir.to_path_buf()),
            sha256: String::new(),
            package: None,
        }
    }

    #[test]
    fn synthetic_order_and_dash_underscore() {
        if which("gcc").is_none() {
            skip!("gcc unavailable to build synthetic modules");
        }
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let vm = vm();
        make_ko(d, "kernel/a/top.ko", &["depends=mid-two,mid_one", &vm]);
        make_ko(d, "kernel/b/mid_one.ko", &["depends=base", &vm]);
        make_ko(d, "kernel/b/mid-two.ko", &["depends=base", &vm]);
        make_ko(d, "kernel/c/base.ko", &["depends=", &vm, "name=base"]);
        make_ko(d, "kernel/c/other.ko", &["depends=", &vm, "alias=fs-other"]);
        make_ko(
            d,
            "kernel/c/unused.ko",
            &["depends=base", "vermagic=9.9.9 SMP"],
        );
        fs::write(d.join("kernel/c/junk-unused.ko"), b"not an elf at all").unwrap();
        fs::write(d.join("kernel/c/zipped.ko.xz"), b"\xfd7zXZ\x00junk").unwrap();
        fs::write(d.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let k = fake_kernel(d);

        let mods = k.resolve_modules(&["other", "top"]).unwrap();
        assert_eq!(names(&mods), ["other", "base", "mid_one", "mid_two", "top"]);
        assert_eq!(mods[4].depends, ["mid_two", "mid_one"]);
        assert!(mods[3].path.ends_with("kernel/b/mid-two.ko"));
        assert_load_order(&mods);

        // '-' and '_' alike, in wanted names too; repeats are harmless.
        let mods = k
            .resolve_modules(&["mid_two", "mid-one", "mid_two"])
            .unwrap();
        assert_eq!(names(&mods), ["base", "mid_two", "mid_one"]);
        // An alias; a built-in module needs nothing.
        let mods = k.resolve_modules(&["fs_other", "ext4"]).unwrap();
        assert_eq!(names(&mods), ["other"]);
        // Unneeded bad/compressed modules do not matter.
        assert!(k.resolve_modules(&[]).unwrap().is_empty());
    }

    #[test]
    fn synthetic_cycle() {
        if which("gcc").is_none() {
            skip!("gcc unavailable to build synthetic modules");
        }
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        let vm = vm();
        make_ko(d, "kernel/x.ko", &["depends=a", &vm]);
        make_ko(d, "kernel/a.ko", &["depends=b", &vm]);
        make_ko(d, "kernel/b.ko", &["depends=a", &vm]);
        let err = fake_kernel(d).resolve_modules(&["x"]).unwrap_err();
        match &err {
            KernelError::DependencyCycle { cycle, .. } => assert_eq!(cycle, &["a", "b", "a"]),
            other => panic!("expected cycle, got {other:?}"),
        }
        assert!(err.to_string().contains("a -> b -> a"), "{err}");
    }

    #[test]
    fn synthetic_missing_dependency() {
        if which("gcc").is_none() {
            skip!("gcc unavailable to build synthetic modules");
        }
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        make_ko(d, "kernel/a.ko", &["depends=b,c", &vm()]);
        make_ko(d, "kernel/b.ko", &["depends=", &vm()]);
        let err = fake_kernel(d).resolve_modules(&["a"]).unwrap_err();
        match &err {
            KernelError::MissingModule {
                name,
                needed_by,
                dir,
            } => {
                assert_eq!(name, "c");
                assert_eq!(needed_by.as_deref(), Some("a"));
                assert_eq!(dir, d);
            }
            other => panic!("expected MissingModule, got {other:?}"),
        }
        assert!(err.to_string().contains("needed by `a`"), "{err}");
    }

    #[test]
    fn synthetic_vermagic_mismatch() {
        if which("gcc").is_none() {
            skip!("gcc unavailable to build synthetic modules");
        }
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        make_ko(d, "kernel/a.ko", &["depends=b", &vm()]);
        // Same prefix but another release.
        make_ko(
            d,
            "kernel/b.ko",
            &["depends=", "vermagic=6.1.0-testing SMP"],
        );
        make_ko(d, "kernel/c.ko", &["depends="]);
        let k = fake_kernel(d);
        let err = k.resolve_modules(&["a"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, KernelError::VermagicMismatch { .. }),
            "{err:?}"
        );
        assert!(
            msg.contains("b.ko") && msg.contains("6.1.0-testing SMP") && msg.contains(TEST_RELEASE),
            "{msg}"
        );
        let err = k.resolve_modules(&["c"]).unwrap_err();
        assert!(err.to_string().contains("vermagic missing"), "{err}");
    }

    #[test]
    fn synthetic_garbage_module() {
        if which("gcc").is_none() {
            skip!("gcc unavailable to build synthetic modules");
        }
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        make_ko(d, "kernel/a.ko", &["depends=bad", &vm()]);
        fs::write(
            d.join("kernel/bad.ko"),
            b"\x7fELF garbage that is far too short",
        )
        .unwrap();
        fs::write(d.join("kernel/text.ko"), "hello\n".repeat(50)).unwrap();
        // An ELF truncated after its header: section headers point past the end.
        let a = fs::read(d.join("kernel/a.ko")).unwrap();
        fs::write(d.join("kernel/cut.ko"), &a[..100]).unwrap();
        // A valid ELF without .modinfo.
        make_ko(d, "kernel/nomodinfo.ko", &[]);
        let k = fake_kernel(d);
        for (wanted, file, what) in [
            ("a", "bad.ko", "invalid ELF header"),
            ("text", "text.ko", "not an ELF file"),
            ("cut", "cut.ko", "truncated ELF"),
            ("nomodinfo", "nomodinfo.ko", ""),
        ] {
            let err = k.resolve_modules(&[wanted]).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, KernelError::BadModule { .. }), "{err:?}");
            assert!(msg.contains(file) && msg.contains(what), "{msg}");
        }
    }

    #[test]
    fn synthetic_compressed_module() {
        if which("gcc").is_none() {
            skip!("gcc unavailable to build synthetic modules");
        }
        let dir = TempDir::new().unwrap();
        let d = dir.path();
        make_ko(d, "kernel/a.ko", &["depends=z", &vm()]);
        make_ko(d, "kernel/b.ko", &["depends=", &vm()]);
        fs::write(d.join("kernel/z.ko.xz"), b"\xfd7zXZ\x00").unwrap();
        fs::write(d.join("kernel/y.ko.zst"), b"\x28\xb5\x2f\xfd").unwrap();
        let k = fake_kernel(d);
        assert_eq!(names(&k.resolve_modules(&["b"]).unwrap()), ["b"]);
        for wanted in ["a", "y"] {
            let err = k.resolve_modules(&[wanted]).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, KernelError::CompressedModule { .. }),
                "{err:?}"
            );
            assert!(
                msg.contains("compressed modules are not supported yet"),
                "{msg}"
            );
        }
    }

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob_match(
            b"virtio:d00000001v*",
            b"virtio:d00000001v00001af4"
        ));
        assert!(glob_match(b"fs_iso9660", b"fs_iso9660"));
        assert!(!glob_match(b"fs_iso9660", b"fs_iso966"));
        assert!(glob_match(b"a*b?c", b"axxbyc"));
        assert!(!glob_match(b"a*b?c", b"axxbc"));
        assert!(glob_match(b"*", b""));
    }
}
