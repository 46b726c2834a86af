//! The rumprun toolchain: rumprun (with buildrump.sh and src-netbsd) built from a pinned
//! source snapshot, once, into the cache — the rump kernel, NetBSD's libc, the
//! `x86_64-rumprun-netbsd-*` compiler wrappers, `rumprun-bake` and the `rumprun`
//! launcher, for platform `hw`.
//!
//! Owns: the pin (`images/rumprun.toml`: the snapshot's name and sha256, the platform, the
//! flags that make it build with the host's gcc), beambake's patches to the snapshot
//! (`patches/rumprun/`, [`PATCHES`], applied strictly to the unpacked copy), finding the
//! snapshot ([`locate`]: the caller's path, else `BEAMBAKE_RUMPRUN_SRC`), and the build:
//! `build-rr.sh` in an unpacked copy, its objects in a temp dir, its install into
//! `CACHE/rumprun/KEY/`. The toolchain's wrappers, specs and `rumprun-bake.conf` hold
//! their install dir as an absolute path, so the build installs straight into its final
//! dir ([`crate::build_cache::get_or_build_in_place`]), with the `.complete` marker
//! (holding the key) written last. Keyed by [`key`]: snapshot sha256, platform, flags,
//! patches, `gcc --version`.
//!
//! `CACHE/rumprun/KEY/` holds `bin/` (`rumprun-bake`, `rumprun`,
//! `x86_64-rumprun-netbsd-gcc` and the other wrappers), `rumprun-x86_64/` (the target's
//! headers and libraries: [`RumprunToolchain::sysroot`]), `libexec/`, `etc/`,
//! `build.log`, `build.seconds` and `.complete`.
//!
//! Must not: build programs for rumprun (OTP is cross-built with this toolchain by
//! `cargo xtask otp-build --set rumprun`), bake or boot anything.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build_cache::{self, Outcome};
use crate::kernel::{self, KernelError};

/// The pin, compiled into the binary.
pub const PIN: &str = include_str!("../../../../images/rumprun.toml");
/// The pin's path in the repository, for messages.
pub const PIN_FILE: &str = "images/rumprun.toml";
/// The environment variable naming the snapshot (a path to the xz tar).
pub const ENV: &str = "BEAMBAKE_RUMPRUN_SRC";
/// Where the repository's tests and CI find the snapshot, relative to the repository root.
pub const DEV_SNAPSHOT: &str = "../shared/sources/rumprun-src.tar.xz";
/// The cache's subdir.
pub const CACHE_SUBDIR: &str = "rumprun";
/// How many seconds the build took (informative; `cargo xtask bench` reads it).
pub const BUILD_SECONDS: &str = "build.seconds";
/// The marker written last into a complete build; it holds the key.
pub const COMPLETE_MARKER: &str = ".complete";
/// The target triple of the compiler wrappers.
pub const TUPLE: &str = "x86_64-rumprun-netbsd";
/// Programs a complete toolchain has in `bin/`.
pub const PROGRAMS: &[&str] = &[
    "rumprun-bake",
    "rumprun",
    "x86_64-rumprun-netbsd-gcc",
    "x86_64-rumprun-netbsd-ar",
    "x86_64-rumprun-netbsd-ranlib",
];

/// beambake's patches to the snapshot, in order: (file name, content). Part of the key.
/// The snapshot builds with flags alone; these fix what the BEAM met at run time.
pub const PATCHES: &[(&str, &str)] = &[(
    "0001-getrusage-returns-0.patch",
    include_str!("../../../../patches/rumprun/0001-getrusage-returns-0.patch"),
)];
/// The series file, checked against [`PATCHES`] by a test.
pub const SERIES: &str = include_str!("../../../../patches/rumprun/series");
/// The patches' dir in the repository, for messages.
pub const PATCH_DIR: &str = "patches/rumprun";

/// Tools `build-rr.sh` runs, and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("g++", "g++"),
    ("xz", "xz-utils"),
    ("tar", "tar"),
];

/// The pin: what snapshot, and how it is built.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RumprunPin {
    pub file: String,
    pub sha256: String,
    pub upstream: String,
    /// `build-rr.sh`'s platform (`hw`).
    pub platform: String,
    /// `HOST_CFLAGS` for the host tools (nbmake).
    pub host_cflags: String,
    /// Arguments after `--`, for buildrump.sh.
    pub buildrump_args: Vec<String>,
}

/// A built toolchain.
#[derive(Debug, Clone)]
pub struct RumprunToolchain {
    /// `CACHE/rumprun/KEY/`: what `RUMPRUN_TOOLCHAIN` names.
    pub dir: PathBuf,
    pub key: String,
    pub outcome: Outcome,
}

impl RumprunToolchain {
    /// `bin/`: the wrappers, `rumprun-bake`, `rumprun`.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }
    /// `rumprun-bake`.
    pub fn bake(&self) -> PathBuf {
        self.bin().join("rumprun-bake")
    }
    /// The C compiler wrapper.
    pub fn cc(&self) -> PathBuf {
        self.bin().join(format!("{TUPLE}-gcc"))
    }
    /// The target's headers and libraries (`include/`, `lib/`).
    pub fn sysroot(&self) -> PathBuf {
        self.dir.join("rumprun-x86_64")
    }
    /// The build's output.
    pub fn log(&self) -> PathBuf {
        self.dir.join("build.log")
    }
}

/// The pin compiled into the binary.
pub fn pin() -> Result<RumprunPin, KernelError> {
    parse_pin(PIN)
}

/// Parses and checks a pin's text.
pub fn parse_pin(text: &str) -> Result<RumprunPin, KernelError> {
    let (p, sha256) = build_cache::parse_pin(text, PIN_FILE, |p: &RumprunPin| &p.sha256)?;
    let bad = |reason: String| KernelError::InvalidPin {
        file: Some(PathBuf::from(PIN_FILE)),
        reason,
    };
    if !matches!(p.platform.as_str(), "hw" | "xen") {
        return Err(bad(format!(
            "platform must be hw or xen, got {:?}",
            p.platform
        )));
    }
    if let Some(a) = p.buildrump_args.iter().find(|a| a.starts_with("-j")) {
        return Err(bad(format!(
            "buildrump_args must not hold {a:?} (jobs are the host's)"
        )));
    }
    Ok(RumprunPin { sha256, ..p })
}

/// The cache key: sha256 over the snapshot's sha256, platform, flags, patches and the
/// compiler version, each part length-prefixed; 16 hex digits.
pub fn key(pin: &RumprunPin, compiler: &str) -> String {
    let mut h = build_cache::KeyHasher::new();
    let mut part = |tag: &str, bytes: &[u8]| h.part(tag, bytes);
    part("rumprun-snapshot-sha256", pin.sha256.as_bytes());
    part("platform", pin.platform.as_bytes());
    part("host-cflags", pin.host_cflags.as_bytes());
    for a in &pin.buildrump_args {
        part("buildrump-arg", a.as_bytes());
    }
    for (name, text) in PATCHES {
        part("patch-name", name.as_bytes());
        part("patch", text.as_bytes());
    }
    part("compiler", compiler.as_bytes());
    h.finish()
}

/// The snapshot to build: `explicit` when given, else `$BEAMBAKE_RUMPRUN_SRC`; an error
/// says how to name one.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, KernelError> {
    let (path, from) = match build_cache::snapshot_arg(explicit, ENV) {
        Some(found) => found,
        None => {
            let pin = pin()?;
            return Err(KernelError::NoSnapshot {
                what: "the rumprun toolchain".into(),
                reason: format!(
                    "set [rumprun] source in the recipe, or {ENV}, to the path of {} (sha256 {}, {}; pinned in {PIN_FILE})",
                    pin.file, pin.sha256, pin.upstream
                ),
            });
        }
    };
    if !path.is_file() {
        return Err(KernelError::NoSnapshot {
            what: "the rumprun toolchain".into(),
            reason: format!("{} ({from}) is not a file", path.display()),
        });
    }
    Ok(path)
}

/// Where a build with `key` lives in `cache_dir`, built or not.
pub fn final_dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(CACHE_SUBDIR).join(key)
}

/// True when `dir` holds a complete build with `key`.
pub fn is_complete(dir: &Path, key: &str) -> bool {
    fs::read_to_string(dir.join(COMPLETE_MARKER)).is_ok_and(|k| k.trim() == key)
        && PROGRAMS.iter().all(|p| dir.join("bin").join(p).is_file())
}

/// The toolchain from the cache, building it first when absent. `snapshot`: the xz tar
/// (else [`ENV`]); its sha256 must match the pin (checked before anything is unpacked).
/// `progress` is told when a build starts and every half minute while it runs.
pub fn get(
    snapshot: Option<&Path>,
    cache_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<RumprunToolchain, KernelError> {
    let pin = pin()?;
    let key = key(&pin, &build_cache::compiler_version(&["gcc", "g++"]));
    let base = cache_dir.join(CACHE_SUBDIR);
    let dir = final_dir(cache_dir, &key);
    let complete = |d: &Path| is_complete(d, &key);
    let outcome = build_cache::get_or_build_in_place(&base, &dir, &complete, &mut |work, dest| {
        let snapshot = locate(snapshot)?;
        build_cache::verify_snapshot(&snapshot, &pin.sha256, PIN_FILE)?;
        let missing = build_cache::missing_tools(TOOLS);
        if !missing.is_empty() {
            return Err(KernelError::MissingTools {
                what: "the rumprun toolchain".into(),
                packages: missing.join(" "),
            });
        }
        progress(&format!(
            "building the rumprun toolchain from {} (platform {}; first use only; about 4 minutes on 2 cores)",
            snapshot.display(),
            pin.platform
        ));
        // The log lives beside the temp dir while it builds (kept when it fails; the
        // error names it), then moves into the result.
        let log = base.join(format!("{key}.build.log"));
        let _ = fs::remove_file(&log);
        let started = std::time::Instant::now();
        build(&snapshot, &pin, work, dest, &log, progress)?;
        for p in PROGRAMS {
            if !dest.join("bin").join(p).is_file() {
                return Err(KernelError::BadPackage {
                    pin_spec: PIN_FILE.into(),
                    dir: dest.to_path_buf(),
                    reason: format!(
                        "build-rr.sh finished but installed no bin/{p} (log: {})",
                        log.display()
                    ),
                });
            }
        }
        kernel::write_synced(
            &dest.join(BUILD_SECONDS),
            format!("{:.0}\n", started.elapsed().as_secs_f64()).as_bytes(),
        )?;
        build_cache::copy(&log, &dest.join("build.log"))?;
        fs::remove_file(&log).map_err(kernel::io_err("removing", &log))?;
        kernel::write_synced(&dest.join(COMPLETE_MARKER), key.as_bytes())
    })?;
    Ok(RumprunToolchain { dir, key, outcome })
}

/// Unpacks `snapshot` into `work/src`, applies [`PATCHES`], runs `build-rr.sh` with its
/// objects in `work/obj` and its install in `dest`.
fn build(
    snapshot: &Path,
    pin: &RumprunPin,
    work: &Path,
    dest: &Path,
    log: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), KernelError> {
    let src = work.join("src");
    build_cache::unpack_tar_xz(snapshot, &src, "")?;
    let rr = src.join("rumprun");
    if !rr.join("build-rr.sh").is_file() {
        return Err(KernelError::BadPackage {
            pin_spec: PIN_FILE.into(),
            dir: src.clone(),
            reason: "the snapshot has no rumprun/build-rr.sh".into(),
        });
    }
    build_cache::apply_patches(&rr, PATCHES, PATCH_DIR, PIN_FILE)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut cmd = Command::new("./build-rr.sh");
    cmd.arg(format!("-j{jobs}"))
        .arg("-d")
        .arg(dest)
        .arg("-o")
        .arg(work.join("obj"))
        .arg(&pin.platform)
        .arg("--")
        .args(&pin.buildrump_args)
        .current_dir(&rr)
        // Not a git checkout: build-rr.sh's `git rev-parse` becomes `true`.
        .env("GIT", "true")
        .env("HOST_CFLAGS", &pin.host_cflags)
        .env_remove("CC")
        .env_remove("CFLAGS");
    build_cache::run_logged(
        &mut cmd,
        &format!("rumprun ./build-rr.sh {}", pin.platform),
        log,
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_parses_and_names_the_snapshot() {
        let p = pin().unwrap();
        assert_eq!(p.file, "rumprun-src.tar.xz");
        assert_eq!(
            p.sha256,
            "948408868cf600512523695a1a8bb4e257b2e9ac10251268ed9991d9a3d3ed9d"
        );
        assert_eq!(p.platform, "hw");
        assert!(p.host_cflags.contains("-fcommon"));
    }

    #[test]
    fn bad_pins_are_refused() {
        let good = "file = \"a\"\nsha256 = \"%\"\nupstream = \"u\"\nplatform = \"hw\"\n\
                    host_cflags = \"-O\"\nbuildrump_args = []\n";
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_pin(&good.replace('%', &hex)).unwrap().sha256,
            hex.to_ascii_lowercase()
        );
        let e = parse_pin(&good.replace('%', "abc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(PIN_FILE) && e.contains("64 hex"), "{e}");
        let e = parse_pin(&good.replace('%', &hex).replace("\"hw\"", "\"arm\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("platform"), "{e}");
        let e = parse_pin(&good.replace('%', &hex).replace("[]", "[\"-j9\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs"), "{e}");
    }

    #[test]
    fn the_key_follows_every_input() {
        let p = pin().unwrap();
        let k = key(&p, "gcc 12");
        assert_eq!(k.len(), 16);
        assert_eq!(k, key(&p, "gcc 12"));
        assert_ne!(k, key(&p, "gcc 13"));
        let mut q = p.clone();
        q.sha256 = "0".repeat(64);
        assert_ne!(k, key(&q, "gcc 12"));
        let mut q = p.clone();
        q.buildrump_args.push("-V".into());
        assert_ne!(k, key(&q, "gcc 12"));
        let mut q = p.clone();
        q.host_cflags = "-O2".into();
        assert_ne!(k, key(&q, "gcc 12"));
    }

    #[test]
    fn the_series_lists_every_patch() {
        let listed: Vec<&str> = SERIES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let known: Vec<&str> = PATCHES.iter().map(|(n, _)| *n).collect();
        assert_eq!(listed, known);
    }

    /// A snapshot with another sha256 is refused before anything is unpacked or built,
    /// naming the file and the pin; nothing is left in the cache.
    #[test]
    fn a_snapshot_with_another_sha256_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join("rumprun-src.tar.xz");
        fs::write(&snap, b"not the snapshot").unwrap();
        let cache = d.path().join("cache");
        let e = get(Some(&snap), &cache, &|_| {}).unwrap_err().to_string();
        assert!(
            e.contains(&snap.display().to_string())
                && e.contains(PIN_FILE)
                && e.contains("948408868cf6"),
            "{e}"
        );
        let left: Vec<_> = fs::read_dir(cache.join(CACHE_SUBDIR))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != build_cache::LOCK_FILE)
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let e = locate(Some(&d.path().join("nope")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("not a file"), "{e}");
    }
}
