//! The osv target's kernel: OSv built from a pinned source snapshot, once, into the cache.
//!
//! Owns: the pin (`images/osv.toml`: the snapshot's file name and sha256, the build
//! arguments), beambake's OSv patches (`patches/osv/`, [`PATCHES`], applied strictly to
//! the unpacked copy), finding the snapshot ([`locate`]: the caller's path, else
//! `BEAMBAKE_OSV_SRC`; the pinned xz tar, checked against the pin, or a user's local
//! checkout with its submodules, copied as it is and keyed by [`checkout_digest`] in the
//! pin's sha256's place), and the build, in one unpacked copy
//! and its output in `build.log`: first `./scripts/build -jN fs=zfs image=zfs-tools` (the
//! pin's `zfs_build_args`: the writable base image), its products copied to `zfs/`, then
//! `./scripts/build -jN fs=rofs image=native-example` (`build_args`, incremental), so
//! the tree is left as the ROFS build made it. Cached by [`key`] (snapshot sha256, both
//! build argument lists, the patches, compiler versions) in `CACHE/osv/KEY/`
//! ([`crate::build_cache`]: one build at a time, a dir that appears whole, a `.complete`
//! marker holding the key written last).
//!
//! `CACHE/osv/KEY/` holds: `loader.img` (the boot loader and OSv kernel alone: boot sector,
//! command line at byte 512, `lzloader.elf` at sector 128; the image a filesystem partition
//! is joined to; its bootfs is empty, so it mounts ROFS, not ZFS), `loader-stripped.elf`
//! (the kernel ELF), `usr.img` (qcow2: `loader.img` + the ROFS partition OSv's build
//! wrote, command line `--rootfs=rofs /hello`), `rofs.img`, `usr.manifest` and `cmdline`
//! (what OSv's build put in it), `zfs/` ([`ZFS_ARTEFACTS`]: `zfs/loader.img`, the same
//! kernel with the ZFS driver library `libsolaris.so` in its bootfs, i.e. one that can
//! mount a ZFS root; `zfs/base.img`, qcow2, 512 MiB virtual: `zfs/loader.img` + a ZFS
//! pool `osv` as partition 2 whose root holds OSv's skeleton, the cpio receiver
//! `/tools/cpiod.so` and the zfs tools (`/zfs.so`, `/zpool.so`, `/libzfs.so`,
//! `/libuutil.so`), command line `--rootfs=zfs`: the base that `beambake_vm::osv_upload`
//! boots with `/tools/cpiod.so` and streams a release into; `zfs/usr.manifest`,
//! `zfs/cmdline`), `build.log`, `osv/` (the built tree: `scripts/` (imgedit.py,
//! gen-rofs-img.py), `build/release.x64/` with the modules and tools later steps link
//! against or copy), `build.seconds` (how long the cold build took), and `.complete`.
//!
//! Must not: boot anything or write images of releases. One exception, inside OSv's own
//! build: `fs=zfs` writes its ZFS pool by booting OSv's `zfs_builder` kernel under qemu
//! (`scripts/upload_manifest.py` → `scripts/run.py`), which would pick KVM whenever
//! `/dev/kvm` exists; patch 0001 makes it plain qemu (TCG), patch 0003 makes that
//! upload start over when the guest was not listening yet and the build fail when it
//! fails (OSv's script hung, then went on with an empty pool). So the OSv build needs
//! `qemu-system-x86_64` too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::build_cache::{self, Outcome};
use crate::kernel::{self, KernelError};

/// The pin, compiled into the binary.
pub const PIN: &str = include_str!("../../../../images/osv.toml");
/// The pin's path in the repository, for messages.
pub const PIN_FILE: &str = "images/osv.toml";
/// The environment variable naming the snapshot (a path to the xz tar).
pub const ENV: &str = "BEAMBAKE_OSV_SRC";
/// Where the repository's tests and CI find the snapshot: relative to the repository
/// root (from `/work/main`, `/work/shared/sources/osv-src.tar.xz`). Not looked up at run
/// time: a test joins it to the repository root and passes it to [`get`].
pub const DEV_SNAPSHOT: &str = "../shared/sources/osv-src.tar.xz";
/// The cache's subdir.
pub const CACHE_SUBDIR: &str = "osv";
/// How many seconds the build took (written into the result, informative only).
pub const BUILD_SECONDS: &str = "build.seconds";
/// The marker written last into a complete build; it holds the key.
pub const COMPLETE_MARKER: &str = ".complete";
/// Files copied from OSv's `build/last/` to the top of the result dir.
pub const ARTEFACTS: &[&str] = &[
    "loader.img",
    "loader-stripped.elf",
    "usr.img",
    "rofs.img",
    "usr.manifest",
    "cmdline",
];

/// Files copied from OSv's `build/last/` after the ZFS build, and their names in the
/// result dir (see the module doc).
pub const ZFS_ARTEFACTS: &[(&str, &str)] = &[
    ("loader.img", "zfs/loader.img"),
    ("usr.img", "zfs/base.img"),
    ("usr.manifest", "zfs/usr.manifest"),
    ("cmdline", "zfs/cmdline"),
];

/// beambake's patches to the snapshot, in order: (file name, content). Part of the key.
pub const PATCHES: &[(&str, &str)] = &[
    (
        "0001-upload-manifest-boots-the-zfs-builder-under-tcg.patch",
        include_str!(
            "../../../../patches/osv/0001-upload-manifest-boots-the-zfs-builder-under-tcg.patch"
        ),
    ),
    (
        "0002-zfs-images-carry-the-cpio-receiver.patch",
        include_str!("../../../../patches/osv/0002-zfs-images-carry-the-cpio-receiver.patch"),
    ),
    (
        "0003-zfs-image-upload-retries-and-fails-loudly.patch",
        include_str!(
            "../../../../patches/osv/0003-zfs-image-upload-retries-and-fails-loudly.patch"
        ),
    ),
    (
        "0004-mempool-posix-memalign-above-a-page-from-2-mib-up.patch",
        include_str!(
            "../../../../patches/osv/0004-mempool-posix-memalign-above-a-page-from-2-mib-up.patch"
        ),
    ),
];
/// The series file, checked against [`PATCHES`] by a test.
pub const SERIES: &str = include_str!("../../../../patches/osv/series");
/// The patches' dir in the repository, for messages.
pub const PATCH_DIR: &str = "patches/osv";

/// Tools OSv's build runs, and the Debian packages that provide them. Libraries (boost,
/// libedit, yaml-cpp, ncurses, ssl) are checked by the build itself; xtask's deps list and
/// `.ci/run` install them.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("g++", "g++"),
    ("python3", "python3"),
    ("genromfs", "genromfs"),
    ("qemu-img", "qemu-utils"),
    // The fs=zfs build boots OSv's zfs_builder.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("autoconf", "autoconf"),
    ("automake", "automake"),
    ("libtoolize", "libtool"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("gawk", "gawk"),
    ("xz", "xz-utils"),
    ("tar", "tar"),
];

/// The pin: what snapshot, and how it is built.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsvPin {
    /// The snapshot's usual file name (the file may be named otherwise; the sha256 decides).
    pub file: String,
    pub sha256: String,
    /// What the snapshot holds (for messages).
    pub upstream: String,
    /// Arguments of `scripts/build` after `-jN` (the ROFS build, run second).
    pub build_args: Vec<String>,
    /// Arguments of the first `scripts/build` in the same tree: the ZFS base image.
    pub zfs_build_args: Vec<String>,
}

/// A built OSv.
#[derive(Debug, Clone)]
pub struct OsvBuild {
    /// `CACHE/osv/KEY/`.
    pub dir: PathBuf,
    pub key: String,
    /// Found in the cache, or built by this call.
    pub outcome: Outcome,
}

impl OsvBuild {
    /// The loader alone (raw): the base a filesystem partition is joined to.
    pub fn loader_img(&self) -> PathBuf {
        self.dir.join("loader.img")
    }
    /// The kernel ELF (stripped).
    pub fn loader_elf(&self) -> PathBuf {
        self.dir.join("loader-stripped.elf")
    }
    /// OSv's own image of the build's app (qcow2: loader + ROFS partition).
    pub fn usr_img(&self) -> PathBuf {
        self.dir.join("usr.img")
    }
    /// The ZFS-capable kernel (raw: boot sector, command line at byte 512, kernel; the
    /// ZFS driver in its bootfs).
    pub fn zfs_loader_img(&self) -> PathBuf {
        self.dir.join("zfs/loader.img")
    }
    /// The writable base image (qcow2): `zfs/loader.img` + a ZFS root holding
    /// `/tools/cpiod.so`, what `beambake_vm::osv_upload` boots and uploads into.
    pub fn zfs_base_img(&self) -> PathBuf {
        self.dir.join("zfs/base.img")
    }
    /// The built source tree (`scripts/`, `build/release.x64/`).
    pub fn tree(&self) -> PathBuf {
        self.dir.join("osv")
    }
    /// OSv's build output.
    pub fn log(&self) -> PathBuf {
        self.dir.join("build.log")
    }
}

/// The pin compiled into the binary.
pub fn pin() -> Result<OsvPin, KernelError> {
    parse_pin(PIN)
}

/// Parses and checks a pin's text.
pub fn parse_pin(text: &str) -> Result<OsvPin, KernelError> {
    let (p, sha256) = build_cache::parse_pin(text, PIN_FILE, |p: &OsvPin| &p.sha256)?;
    let bad = |reason: String| KernelError::InvalidPin {
        file: Some(PathBuf::from(PIN_FILE)),
        reason,
    };
    if let Some(a) = p
        .build_args
        .iter()
        .chain(&p.zfs_build_args)
        .find(|a| a.starts_with("-j") || a.trim().is_empty())
    {
        return Err(bad(format!(
            "build_args must not hold {a:?} (jobs are the host's)"
        )));
    }
    Ok(OsvPin { sha256, ..p })
}

/// The compiler versions the key depends on: `gcc` and `g++` (OSv's build uses both).
pub fn compiler_version() -> String {
    build_cache::compiler_version(&["gcc", "g++"])
}

/// The cache key: sha256 over the snapshot's sha256, both build argument lists, the
/// patches (name and bytes) and the compiler versions, each part length-prefixed; 16 hex
/// digits.
pub fn key(pin: &OsvPin, compiler: &str) -> String {
    let mut h = build_cache::KeyHasher::new();
    let mut part = |tag: &str, bytes: &[u8]| h.part(tag, bytes);
    part("osv-snapshot-sha256", pin.sha256.as_bytes());
    for a in &pin.build_args {
        part("build-arg", a.as_bytes());
    }
    for a in &pin.zfs_build_args {
        part("zfs-build-arg", a.as_bytes());
    }
    for (name, text) in PATCHES {
        part("patch-name", name.as_bytes());
        part("patch", text.as_bytes());
    }
    part("compiler", compiler.as_bytes());
    h.finish()
}

/// The snapshot to build: `explicit` when given, else `$BEAMBAKE_OSV_SRC`; an error says
/// how to name one. A file is the pinned xz tar (its hash is checked by [`verify`]); a
/// directory is a local OSv checkout with its submodules (`scripts/build` at its top),
/// built as it is and keyed by its content ([`checkout_digest`]).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, KernelError> {
    let (path, from) = match build_cache::snapshot_arg(explicit, ENV) {
        Some(found) => found,
        None => {
            let pin = pin()?;
            return Err(KernelError::NoSnapshot {
                what: "OSv".into(),
                reason: format!(
                    "set {ENV} to the path of {} (sha256 {}, {}; pinned in {PIN_FILE})",
                    pin.file, pin.sha256, pin.upstream
                ),
            });
        }
    };
    if path.is_dir() && !path.join("scripts/build").is_file() {
        return Err(KernelError::NoSnapshot {
            what: "OSv".into(),
            reason: format!(
                "{} ({from}) is a directory but not an OSv checkout: it has no scripts/build",
                path.display()
            ),
        });
    }
    if !path.is_file() && !path.is_dir() {
        return Err(KernelError::NoSnapshot {
            what: "OSv".into(),
            reason: format!(
                "{} ({from}) is neither the snapshot file nor an OSv checkout",
                path.display()
            ),
        });
    }
    Ok(path)
}

/// What a local checkout `dir` holds, as one sha256: every file's path, executable bit
/// and content, every symlink's target, in path order; its `build/` output and `.git`
/// left out. The key of a checkout's build (the pin's sha256 stands for a snapshot's).
pub fn checkout_digest(dir: &Path) -> Result<String, KernelError> {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut files = Vec::new();
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for e in fs::read_dir(&abs).map_err(kernel::io_err("reading", &abs))? {
            let e = e.map_err(kernel::io_err("reading", &abs))?;
            let name = e.file_name();
            if rel.as_os_str().is_empty() && (name == "build" || name == ".git") {
                continue;
            }
            if name == ".git" {
                continue;
            }
            let r = rel.join(&name);
            let ft = e
                .file_type()
                .map_err(kernel::io_err("reading", &e.path()))?;
            if ft.is_dir() {
                stack.push(r);
            } else {
                files.push((r, ft));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (r, ft) in files {
        let abs = dir.join(&r);
        h.update(r.as_os_str().as_encoded_bytes());
        h.update([0]);
        if ft.is_symlink() {
            let t = fs::read_link(&abs).map_err(kernel::io_err("reading", &abs))?;
            h.update(b"l");
            h.update(t.as_os_str().as_encoded_bytes());
        } else {
            let meta = fs::metadata(&abs).map_err(kernel::io_err("reading", &abs))?;
            h.update(if meta.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"f"
            });
            let bytes = fs::read(&abs).map_err(kernel::io_err("reading", &abs))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        h.update([0]);
    }
    Ok(build_cache::key_hex(h))
}

/// Checks `snapshot`'s sha256 against `pin`.
pub fn verify(snapshot: &Path, pin: &OsvPin) -> Result<(), KernelError> {
    build_cache::verify_snapshot(snapshot, &pin.sha256, PIN_FILE)
}

/// Where a build with `key` lives in `cache_dir`, built or not.
pub fn final_dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(CACHE_SUBDIR).join(key)
}

/// True when `dir` holds a complete build with `key` (its marker, written last, says so).
pub fn is_complete(dir: &Path, key: &str) -> bool {
    fs::read_to_string(dir.join(COMPLETE_MARKER)).is_ok_and(|k| k.trim() == key)
        && ARTEFACTS.iter().all(|a| dir.join(a).is_file())
        && ZFS_ARTEFACTS.iter().all(|(_, a)| dir.join(a).is_file())
}

/// OSv from the cache, building it first when absent. `snapshot`: the xz tar to build
/// (else [`ENV`]); its sha256 must match the pin (checked before anything is unpacked;
/// not re-read on a cache hit, whose key already holds the pinned hash). `progress` is told
/// when a build starts and every half minute while it runs.
pub fn get(
    snapshot: Option<&Path>,
    cache_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<OsvBuild, KernelError> {
    let mut pin = pin()?;
    // A local checkout is keyed by its content instead of the pinned snapshot's sha256.
    let checkout = match snapshot {
        Some(p) if p.is_dir() => Some(locate(Some(p))?),
        None => match std::env::var_os(ENV).map(PathBuf::from) {
            Some(p) if p.is_dir() => Some(locate(Some(&p))?),
            _ => None,
        },
        _ => None,
    };
    if let Some(dir) = &checkout {
        progress(&format!("hashing the OSv checkout {}", dir.display()));
        pin.sha256 = format!("checkout:{}", checkout_digest(dir)?);
    }
    let key = key(&pin, &compiler_version());
    let base = cache_dir.join(CACHE_SUBDIR);
    let dir = final_dir(cache_dir, &key);
    let complete = |d: &Path| is_complete(d, &key);
    let outcome = build_cache::get_or_build(&base, &dir, &complete, &mut |work, staged| {
        let snapshot = locate(snapshot)?;
        if checkout.is_none() {
            verify(&snapshot, &pin)?;
        }
        check_tools()?;
        progress(&format!(
            "building OSv from {} ({}, then {}; first use only; about 9 minutes on 2 cores)",
            snapshot.display(),
            pin.zfs_build_args.join(" "),
            pin.build_args.join(" ")
        ));
        // The log lives beside the temp dir while OSv builds (to follow it; kept when the
        // build fails, the error names it), then moves into the result.
        let log = base.join(format!("{key}.build.log"));
        let _ = fs::remove_file(&log);
        let started = std::time::Instant::now();
        build(&snapshot, &pin, work, staged, &log, progress)?;
        // How long the cold build took, for BENCHMARKS.md (`cargo xtask bench` reads it).
        kernel::write_synced(
            &staged.join(BUILD_SECONDS),
            format!("{:.0}\n", started.elapsed().as_secs_f64()).as_bytes(),
        )?;
        stage(&work.join("src/osv"), staged, &log)?;
        build_cache::copy(&log, &staged.join("build.log"))?;
        fs::remove_file(&log).map_err(kernel::io_err("removing", &log))?;
        kernel::write_synced(&staged.join(COMPLETE_MARKER), key.as_bytes())
    })?;
    Ok(OsvBuild { dir, key, outcome })
}

fn check_tools() -> Result<(), KernelError> {
    let missing = build_cache::missing_tools(TOOLS);
    if missing.is_empty() {
        return Ok(());
    }
    Err(KernelError::MissingTools {
        what: "OSv".into(),
        packages: missing.join(" "),
    })
}

/// Unpacks `snapshot` into `work/src`, applies [`PATCHES`] and runs OSv's two builds in
/// `work/src/osv` (ZFS, its products copied to `staged/zfs/`, then ROFS), their output in
/// `log`.
fn build(
    snapshot: &Path,
    pin: &OsvPin,
    work: &Path,
    staged: &Path,
    log: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), KernelError> {
    let src = work.join("src");
    let osv = src.join("osv");
    if snapshot.is_dir() {
        // A local checkout: copied as it is (its own build output left out).
        fs::create_dir_all(&osv).map_err(kernel::io_err("creating", &osv))?;
        let mut cp = Command::new("cp");
        cp.arg("-a")
            .arg(format!("{}/.", snapshot.display()))
            .arg(&osv);
        build_cache::run_logged(&mut cp, "copying the OSv checkout", log, progress)?;
        let _ = fs::remove_dir_all(osv.join("build"));
    } else {
        // Verified against the pin just before (see build_cache::unpack_tar_xz).
        build_cache::unpack_tar_xz(snapshot, &src, "")?;
    }
    if !osv.join("scripts/build").is_file() {
        return Err(KernelError::BadPackage {
            pin_spec: PIN_FILE.into(),
            dir: src.clone(),
            reason: "the snapshot has no osv/scripts/build".into(),
        });
    }
    apply_patches(&osv)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let run = |args: &[String]| {
        let mut cmd = Command::new("./scripts/build");
        cmd.arg(format!("-j{jobs}")).args(args).current_dir(&osv);
        build_cache::run_logged(
            &mut cmd,
            &format!("OSv ./scripts/build {}", args.join(" ")),
            log,
            progress,
        )
    };
    // ZFS first: the ROFS build, second, leaves `build/last` and the tree as a ROFS-only
    // build would (the kernel's objects do not depend on `fs`; only its bootfs does).
    run(&pin.zfs_build_args)?;
    let out = osv.join("build/last");
    fs::create_dir(staged.join("zfs")).map_err(kernel::io_err("creating dir in", staged))?;
    for (from, to) in ZFS_ARTEFACTS {
        build_cache::copy(&built_file(&out, from, log)?, &staged.join(to))?;
    }
    run(&pin.build_args)
}

/// Applies [`PATCHES`] to the unpacked tree `osv`: exact lines, no fuzz, all or nothing.
fn apply_patches(osv: &Path) -> Result<(), KernelError> {
    build_cache::apply_patches(osv, PATCHES, PATCH_DIR, PIN_FILE)
}

/// `out/name`, or an error naming the log when OSv's build did not leave it.
fn built_file(out: &Path, name: &str, log: &Path) -> Result<PathBuf, KernelError> {
    let from = out.join(name);
    if from.is_file() {
        return Ok(from);
    }
    Err(KernelError::BadPackage {
        pin_spec: PIN_FILE.into(),
        dir: out.to_path_buf(),
        reason: format!(
            "OSv's build finished but left no {name} (log: {})",
            log.display()
        ),
    })
}

/// Copies OSv's artefacts from `osv/build/last/` to `staged` and moves the tree there.
fn stage(osv: &Path, staged: &Path, log: &Path) -> Result<(), KernelError> {
    let out = osv.join("build/last");
    for a in ARTEFACTS {
        build_cache::copy(&built_file(&out, a, log)?, &staged.join(a))?;
    }
    fs::rename(osv, staged.join("osv")).map_err(kernel::io_err("moving the built tree", osv))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local checkout is keyed by what it holds (not where it is or when it was
    /// touched); its build output and git metadata do not count; a directory that is not
    /// an OSv checkout is refused naming it.
    #[test]
    fn a_checkout_is_keyed_by_its_content() {
        let d = tempfile::tempdir().unwrap();
        let co = d.path().join("osv");
        fs::create_dir_all(co.join("scripts")).unwrap();
        fs::create_dir_all(co.join("core")).unwrap();
        fs::write(co.join("scripts/build"), "#!/bin/sh\n").unwrap();
        fs::write(co.join("core/a.cc"), "int a;\n").unwrap();
        let first = checkout_digest(&co).unwrap();
        fs::create_dir_all(co.join("build/release.x64")).unwrap();
        fs::write(co.join("build/release.x64/loader.elf"), "x").unwrap();
        fs::create_dir_all(co.join(".git")).unwrap();
        fs::write(co.join(".git/HEAD"), "ref").unwrap();
        assert_eq!(checkout_digest(&co).unwrap(), first);
        let moved = d.path().join("elsewhere");
        fs::rename(&co, &moved).unwrap();
        assert_eq!(checkout_digest(&moved).unwrap(), first);
        fs::write(moved.join("core/a.cc"), "int b;\n").unwrap();
        assert_ne!(checkout_digest(&moved).unwrap(), first);
        assert_eq!(locate(Some(&moved)).unwrap(), moved);
        let e = locate(Some(d.path())).unwrap_err().to_string();
        assert!(
            e.contains("not an OSv checkout") && e.contains("scripts/build"),
            "{e}"
        );
    }

    #[test]
    fn the_pin_parses_and_names_the_snapshot() {
        let p = pin().unwrap();
        assert_eq!(p.file, "osv-src.tar.xz");
        assert_eq!(
            p.sha256,
            "b99f6caaef1b1739f62520794d1344a398c5e90d265286e0902a0c9c99c3bb29"
        );
        assert!(p.build_args.contains(&"fs=rofs".to_string()));
        assert!(p.zfs_build_args.contains(&"fs=zfs".to_string()));
        assert!(!p.build_args.iter().any(|a| a.contains("java")));
    }

    #[test]
    fn bad_pins_are_refused() {
        let good = "file = \"a\"\nsha256 = \"%\"\nupstream = \"u\"\nbuild_args = [\"fs=rofs\"]\n\
                    zfs_build_args = [\"fs=zfs\"]\n";
        let hex = "AB".repeat(32);
        let p = parse_pin(&good.replace('%', &hex)).unwrap();
        assert_eq!(p.sha256, hex.to_ascii_lowercase());
        let e = parse_pin(&good.replace('%', "abc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("images/osv.toml") && e.contains("64 hex"), "{e}");
        let e = parse_pin(&good.replace('%', &hex).replace("fs=rofs", "-j8"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("-j8"), "{e}");
        let e = parse_pin(&good.replace('%', &hex).replace("fs=zfs", "-j2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("-j2"), "{e}");
        let e = parse_pin(&format!("{}extra = 1\n", good.replace('%', &hex)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn the_key_follows_snapshot_options_and_compiler() {
        let p = pin().unwrap();
        let k = key(&p, "gcc 12");
        assert_eq!(k.len(), 16);
        assert_eq!(k, key(&p, "gcc 12"));
        assert_ne!(k, key(&p, "gcc 13"));
        let mut other = p.clone();
        other.sha256 = "0".repeat(64);
        assert_ne!(k, key(&other, "gcc 12"));
        let mut opts = p.clone();
        opts.build_args.push("mode=debug".into());
        assert_ne!(k, key(&opts, "gcc 12"));
        let mut zfs = p.clone();
        zfs.zfs_build_args.push("fs_size_mb=1024".into());
        assert_ne!(k, key(&zfs, "gcc 12"));
        // The same argument in the other list is another build.
        let mut moved = p.clone();
        let a = moved.build_args.pop().unwrap();
        moved.zfs_build_args.push(a);
        assert_ne!(k, key(&moved, "gcc 12"));
        // Parts cannot run into each other.
        let mut a = p.clone();
        a.build_args = vec!["ab".into(), "c".into()];
        let mut b = p.clone();
        b.build_args = vec!["a".into(), "bc".into()];
        assert_ne!(key(&a, "x"), key(&b, "x"));
        assert!(compiler_version().contains('\n'));
    }

    #[test]
    fn a_snapshot_with_another_sha256_is_refused_naming_file_and_both_hashes() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("osv-src.tar.xz");
        fs::write(&fake, b"not the snapshot").unwrap();
        let p = pin().unwrap();
        let e = verify(&fake, &p).unwrap_err();
        let actual = beambake_images::digest::sha256_file(&fake).unwrap();
        let text = e.to_string();
        assert!(matches!(e, KernelError::SnapshotMismatch { .. }));
        let fake_name = fake.display().to_string();
        for want in [
            fake_name.as_str(),
            p.sha256.as_str(),
            actual.as_str(),
            "images/osv.toml",
        ] {
            assert!(text.contains(want), "{want} not in: {text}");
        }
        // Through get: the mismatch is found before anything is unpacked or built, and
        // nothing is left in the cache.
        let cache = d.path().join("cache");
        let e = get(Some(&fake), &cache, &|_| {}).unwrap_err().to_string();
        assert!(e.contains(&actual) && e.contains(&p.sha256), "{e}");
        let left: Vec<_> = fs::read_dir(cache.join(CACHE_SUBDIR))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != build_cache::LOCK_FILE)
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_missing_snapshot_says_how_to_name_one() {
        let d = tempfile::tempdir().unwrap();
        let e = locate(Some(&d.path().join("nope.tar.xz")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.tar.xz")
                && e.contains("neither the snapshot file nor an OSv checkout"),
            "{e}"
        );
    }

    #[test]
    fn completeness_needs_the_marker_with_this_key_and_every_artefact() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        for a in ARTEFACTS {
            fs::write(dir.join(a), "").unwrap();
        }
        fs::create_dir(dir.join("zfs")).unwrap();
        for (_, a) in ZFS_ARTEFACTS {
            fs::write(dir.join(a), "").unwrap();
        }
        assert!(!is_complete(dir, "k1"), "no marker");
        fs::write(dir.join(COMPLETE_MARKER), "k2").unwrap();
        assert!(!is_complete(dir, "k1"), "another key");
        fs::write(dir.join(COMPLETE_MARKER), "k1").unwrap();
        assert!(is_complete(dir, "k1"));
        fs::remove_file(dir.join("zfs/base.img")).unwrap();
        assert!(!is_complete(dir, "k1"), "the ZFS base missing");
        fs::write(dir.join("zfs/base.img"), "").unwrap();
        fs::remove_file(dir.join("loader.img")).unwrap();
        assert!(!is_complete(dir, "k1"), "an artefact missing");
    }

    #[test]
    fn series_file_matches_the_embedded_patches() {
        let listed: Vec<&str> = SERIES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let embedded: Vec<&str> = PATCHES.iter().map(|(n, _)| *n).collect();
        assert_eq!(listed, embedded);
    }

    #[test]
    fn every_patch_parses_and_says_what_and_why() {
        for (name, text) in PATCHES {
            beambake_patch::patch::Patch::parse_str(name, text).unwrap();
            let header = &text[..text.find("\n--- a/").unwrap_or(0)];
            assert!(header.contains("Subject:"), "{name}");
            assert!(header.lines().count() > 5, "{name}: explain the change");
        }
    }
}
