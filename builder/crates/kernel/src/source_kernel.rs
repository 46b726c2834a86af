//! Every Linux kernel beambake builds from Debian's pinned `linux-source-6.1` package,
//! described by a [`Spec`]: User Mode Linux for the uml target
//! ([`crate::uml_kernel::SPEC`]) and the minimal x86_64 kernel for machine microvm
//! ([`crate::minimal_kernel::SPEC`]). One build sequence for all of them: fetch and
//! verify the `.deb` (pin `images/uml-kernel.toml`), unpack, patch (strictly, through
//! [`beambake_patch::patch`]), `make <base config>`, append the spec's fragment, `make
//! olddefconfig`, check every requested option in the final `.config`, `make <target>`;
//! the result file is moved into `CACHE/<spec.cache_dir>/<package>_<version>-<key>/`
//! (one build at a time per cache dir, [`build_cache::get_or_build`]).
//!
//! Owns: the [`Spec`] type, the cache key (source pin, patches, fragment, base config,
//! make target and the compiler's `gcc --version` first line: a new compiler rebuilds),
//! the fragment's checks — before building, a fragment that disables or leaves out an
//! option the spec says beambake's init needs ([`check_fragment`]); after configuring,
//! every option asked for really set ([`missing_options`]).
//! Must not: boot anything, know about images or recipes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::build_cache;
use crate::kernel::{self, KernelError, Pin};

/// The pinned source package every spec builds from.
pub const PIN: &str = include_str!("../../../../images/uml-kernel.toml");
/// Where [`PIN`] lives in the repository (for errors).
pub const PIN_FILE: &str = "images/uml-kernel.toml";

/// Tools a build runs, and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("xz", "xz-utils"),
    ("dpkg-deb", "dpkg"),
];

/// One kernel built from the pinned source.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// What it is, for progress and errors ("the UML kernel").
    pub what: &'static str,
    /// Its subdirectory of the cache (`uml`, `minimal-kernel`).
    pub cache_dir: &'static str,
    /// `make ARCH=...` (`um`, `x86_64`).
    pub arch: &'static str,
    /// The configuration the fragment is added to (`x86_64_defconfig`, `tinyconfig`).
    pub base_config: &'static str,
    /// The config fragment's text and its path in the repository.
    pub fragment: &'static str,
    pub fragment_file: &'static str,
    /// The patch series, in order: (file name, content), and the series' directory.
    pub patches: &'static [(&'static str, &'static str)],
    pub patches_dir: &'static str,
    /// `make` target, and the file (relative to the source tree) it produces.
    pub make_target: &'static str,
    pub result: &'static str,
    /// Options (without `CONFIG_`) beambake's init needs, each to be set to `y` by the
    /// fragment itself: checked before building ([`check_fragment`]).
    pub init_needs: &'static [&'static str],
    /// Headers the build needs beyond the compiler's (path, Debian package): x86_64's
    /// objtool needs libelf's.
    pub headers: &'static [(&'static str, &'static str)],
}

/// A built kernel in the cache.
#[derive(Debug, Clone)]
pub struct SourceKernel {
    /// The result file ([`Spec::result`]'s name) in its cache dir.
    pub image: PathBuf,
    /// The kernel's release string (`make kernelrelease`).
    pub release: String,
    pub pin: Pin,
    /// The cache key (see [`key`]).
    pub key: String,
}

/// The pin compiled into the binary.
pub fn pin() -> Result<Pin, KernelError> {
    toml::from_str(PIN).map_err(|e| KernelError::PinParse {
        path: PathBuf::from(PIN_FILE),
        message: e.to_string().trim_end().to_string(),
    })
}

/// The first line of `gcc --version`: part of every key, so a new compiler rebuilds.
pub fn compiler_version() -> Result<String, KernelError> {
    let out = Command::new("gcc")
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| KernelError::CommandNotRun {
            command: "gcc --version".into(),
            dir: PathBuf::from("."),
            hint: " (install it: `apt-get install gcc`)".into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

impl Spec {
    /// The cache key with this host's compiler ([`key`]).
    pub fn cache_key(&self) -> Result<String, KernelError> {
        Ok(key(self, &compiler_version()?))
    }

    /// Where [`Spec::get`] keeps the result ([`image_path`]).
    pub fn image_path(&self, cache_dir: &Path) -> Result<PathBuf, KernelError> {
        image_path(self, cache_dir)
    }

    /// The kernel from the cache, built first when absent ([`get`]).
    pub fn get(
        &self,
        cache_dir: &Path,
        progress: &dyn Fn(&str),
    ) -> Result<SourceKernel, KernelError> {
        get(self, cache_dir, progress)
    }
}

/// The cache key of `spec` built by `compiler`: sha256 over the pin, each patch (name
/// and bytes), the base config, the fragment, the make target and the compiler line.
pub fn key(spec: &Spec, compiler: &str) -> String {
    let mut h = Sha256::new();
    h.update(PIN.as_bytes());
    for (name, text) in spec.patches {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
    }
    for part in [
        spec.arch,
        spec.base_config,
        spec.fragment,
        spec.make_target,
        compiler,
    ] {
        h.update([0]);
        h.update(part.as_bytes());
    }
    build_cache::key_hex(h)
}

/// The wanted options: `(NAME, Some(value))` for `CONFIG_NAME=value`, `(NAME, None)` for
/// `# CONFIG_NAME is not set`.
pub fn wanted_options(config: &str) -> Vec<(String, Option<String>)> {
    let mut v = Vec::new();
    for line in config.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                v.push((format!("CONFIG_{name}"), None));
            }
        } else if let Some((k, val)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                v.push((k.to_string(), Some(val.to_string())));
            }
        }
    }
    v
}

/// Options of `wanted` that `dotconfig` (a final `.config`) does not have as asked.
pub fn missing_options(wanted: &[(String, Option<String>)], dotconfig: &str) -> Vec<String> {
    let mut have = std::collections::HashMap::new();
    for line in dotconfig.lines() {
        if let Some((k, v)) = line.split_once('=') {
            have.insert(k.to_string(), v.to_string());
        }
    }
    wanted
        .iter()
        .filter(|(k, v)| match v {
            Some(v) => have.get(k) != Some(v),
            None => have.contains_key(k),
        })
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => format!("{k} unset"),
        })
        .collect()
}

/// Refuses, before anything is built, a fragment (`text`, the file `file`) that does
/// not set every option of `init_needs` to `y`: one that disables it (`=n`, `=m`, `# ...
/// is not set`) or leaves it out (the base config may not have it). The error names the
/// file, the option and its line.
pub fn check_fragment(text: &str, file: &str, init_needs: &[&str]) -> Result<(), KernelError> {
    let wanted = wanted_options(text);
    for need in init_needs {
        let name = format!("CONFIG_{need}");
        // The last setting of an option wins, as in Kconfig.
        let set = wanted.iter().rev().find(|(k, _)| *k == name);
        let reason = match set {
            Some((_, Some(v))) if v == "y" => continue,
            Some((_, Some(v))) => format!("sets {name}={v}"),
            Some((_, None)) => format!("disables {name} (`# {name} is not set`)"),
            None => format!("does not set {name}=y"),
        };
        let line = text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.trim();
                l.starts_with(&format!("{name}=")) || l == format!("# {name} is not set")
            })
            .last()
            .map(|(i, _)| format!(" (line {})", i + 1))
            .unwrap_or_default();
        return Err(KernelError::BadFragment {
            fragment: PathBuf::from(file),
            option: name,
            reason: format!(
                "{reason}{line}, which beambake's init needs (built in: the kernel has no modules)"
            ),
        });
    }
    Ok(())
}

fn final_dir(base: &Path, pin: &Pin, key: &str) -> PathBuf {
    base.join(format!("{}_{}-{key}", pin.package, pin.version))
}

/// Where [`get`] keeps `spec`'s result in `cache_dir` (whether or not it is built yet).
pub fn image_path(spec: &Spec, cache_dir: &Path) -> Result<PathBuf, KernelError> {
    let pin = pin()?;
    let key = key(spec, &compiler_version()?);
    Ok(final_dir(&cache_dir.join(spec.cache_dir), &pin, &key).join(result_name(spec)))
}

/// The result's file name in the cache dir.
fn result_name(spec: &Spec) -> &'static str {
    spec.result.rsplit('/').next().unwrap_or(spec.result)
}

/// The file in a cache dir holding the kernel's release string.
const RELEASE_FILE: &str = "release";

/// `spec`'s kernel from the cache, building it first when absent (after
/// [`check_fragment`]). `progress` is told when a build starts and while it runs (it
/// takes minutes).
pub fn get(
    spec: &Spec,
    cache_dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<SourceKernel, KernelError> {
    check_fragment(spec.fragment, spec.fragment_file, spec.init_needs)?;
    let pin = pin()?;
    let key = key(spec, &compiler_version()?);
    let base = cache_dir.join(spec.cache_dir);
    let final_dir = final_dir(&base, &pin, &key);
    let name = result_name(spec);
    // The result file is the whole result (it appears by a rename of its dir); the
    // release file is written before it.
    let complete = |dir: &Path| dir.join(name).is_file();
    build_cache::get_or_build(&base, &final_dir, &complete, &mut |work, staged| {
        check_tools(spec)?;
        progress(&format!(
            "building {} from {} {} (first use only; a few minutes)",
            spec.what, pin.package, pin.version
        ));
        let (built, release) = build(spec, &pin, work, &base, progress)?;
        kernel::write_synced(&staged.join(RELEASE_FILE), release.as_bytes())?;
        kernel::write_synced(&staged.join("key"), key.as_bytes())?;
        build_cache::copy(&built, &staged.join(name))
    })?;
    let release_file = final_dir.join(RELEASE_FILE);
    let release = fs::read_to_string(&release_file)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(SourceKernel {
        image: final_dir.join(name),
        release,
        pin,
        key,
    })
}

fn check_tools(spec: &Spec) -> Result<(), KernelError> {
    let mut missing = build_cache::missing_tools(TOOLS);
    missing.extend(
        spec.headers
            .iter()
            .filter(|(header, _)| !Path::new(header).exists())
            .map(|(_, package)| *package),
    );
    if missing.is_empty() {
        return Ok(());
    }
    Err(KernelError::MissingTools {
        what: spec.what.to_string(),
        packages: missing.join(" "),
    })
}

/// Fetch, unpack, patch, configure and build in `work`; returns the result's path and
/// the kernel's release string.
fn build(
    spec: &Spec,
    pin: &Pin,
    work: &Path,
    cache: &Path,
    progress: &dyn Fn(&str),
) -> Result<(PathBuf, String), KernelError> {
    let deb = kernel::download_verified(pin, work, cache)?;
    let pkg = work.join("pkg");
    kernel::run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&pkg),
        "dpkg-deb -x",
        work,
        "",
    )?;
    let srcdir = pkg.join("usr/src");
    let tarball = fs::read_dir(&srcdir)
        .map_err(kernel::io_err("reading", &srcdir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .ok_or_else(|| KernelError::BadPackage {
            pin_spec: pin.spec(),
            dir: srcdir.clone(),
            reason: "no linux-source-*.tar.xz in usr/src".into(),
        })?;
    // Verified: the .deb's sha256 matched the pin (download_verified).
    build_cache::unpack_tar_xz(&tarball, work, "")?;
    let _ = fs::remove_dir_all(&pkg);
    let stem = tarball
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".tar.xz").to_string())
        .unwrap_or_default();
    let src = work.join(stem);
    let mut patches = Vec::new();
    for (name, text) in spec.patches {
        patches.push(
            beambake_patch::patch::Patch::parse_str(name, text).map_err(|e| {
                KernelError::BadPackage {
                    pin_spec: pin.spec(),
                    dir: PathBuf::from(spec.patches_dir),
                    reason: e.to_string(),
                }
            })?,
        );
    }
    beambake_patch::patch::apply(&src, &patches, &beambake_patch::patch::Options::default())
        .map_err(|e| KernelError::BadPackage {
            pin_spec: pin.spec(),
            dir: src.clone(),
            reason: format!("patching the kernel source: {e}"),
        })?;
    let log = work.join("build.log");
    let make = |args: &[&str]| -> Result<(), KernelError> {
        let mut c = Command::new("make");
        c.arg(format!("ARCH={}", spec.arch))
            .args(args)
            .current_dir(&src)
            .env("KBUILD_BUILD_TIMESTAMP", "2024-01-01")
            .env("KBUILD_BUILD_USER", "beambake")
            .env("KBUILD_BUILD_HOST", "beambake")
            .env("KBUILD_BUILD_VERSION", "1");
        let display = format!("make ARCH={} {}", spec.arch, args.join(" "));
        build_cache::run_logged(&mut c, &display, &log, progress)
    };
    make(&[spec.base_config])?;
    let dotconfig = src.join(".config");
    let mut text = fs::read_to_string(&dotconfig).map_err(kernel::io_err("reading", &dotconfig))?;
    text.push_str(&format!("\n# beambake ({})\n", spec.fragment_file));
    text.push_str(spec.fragment);
    fs::write(&dotconfig, text).map_err(kernel::io_err("writing", &dotconfig))?;
    make(&["olddefconfig"])?;
    let final_cfg =
        fs::read_to_string(&dotconfig).map_err(kernel::io_err("reading", &dotconfig))?;
    let missing = missing_options(&wanted_options(spec.fragment), &final_cfg);
    if !missing.is_empty() {
        return Err(KernelError::BadPackage {
            pin_spec: pin.spec(),
            dir: src.clone(),
            reason: format!(
                "{} asks for options the kernel did not take: {}",
                spec.fragment_file,
                missing.join(", ")
            ),
        });
    }
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    make(&[&format!("-j{jobs}"), spec.make_target])?;
    let release_file = src.join("include/config/kernel.release");
    let release = fs::read_to_string(&release_file)
        .map_err(kernel::io_err("reading", &release_file))?
        .trim()
        .to_string();
    Ok((src.join(spec.result), release))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        what: "a test kernel",
        cache_dir: "test",
        arch: "x86_64",
        base_config: "tinyconfig",
        fragment: "CONFIG_A=y\n",
        fragment_file: "images/test.config",
        patches: &[],
        patches_dir: "patches/test",
        make_target: "vmlinux",
        result: "vmlinux",
        init_needs: &["A"],
        headers: &[],
    };

    #[test]
    fn pin_parses() {
        assert_eq!(pin().unwrap().package, "linux-source-6.1");
    }

    #[test]
    fn key_changes_with_every_input() {
        let k = key(&SPEC, "gcc 12");
        assert_eq!(k, key(&SPEC, "gcc 12"));
        assert_eq!(k.len(), 16);
        assert_ne!(k, key(&SPEC, "gcc 13"), "compiler");
        let frag = Spec {
            fragment: "CONFIG_A=y\nCONFIG_B=y\n",
            ..SPEC
        };
        assert_ne!(k, key(&frag, "gcc 12"), "fragment");
        let patched = Spec {
            patches: &[("0001.patch", "x")],
            ..SPEC
        };
        assert_ne!(k, key(&patched, "gcc 12"), "patches");
        let base = Spec {
            base_config: "defconfig",
            ..SPEC
        };
        assert_ne!(k, key(&base, "gcc 12"), "base config");
    }

    #[test]
    fn options_are_checked_both_ways() {
        let wanted =
            wanted_options("# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=16\nnot a line\n");
        assert_eq!(wanted.len(), 3);
        assert!(missing_options(&wanted, "CONFIG_A=y\nCONFIG_C=16\n").is_empty());
        assert_eq!(
            missing_options(&wanted, "CONFIG_A=m\nCONFIG_B=y\n"),
            vec!["CONFIG_A=y", "CONFIG_B unset", "CONFIG_C=16"]
        );
    }

    #[test]
    fn a_fragment_that_drops_what_the_init_needs_is_refused_naming_file_and_option() {
        let needs = &["DEVTMPFS", "UNIX"];
        check_fragment("CONFIG_DEVTMPFS=y\nCONFIG_UNIX=y\n", "f.config", needs).unwrap();
        let cases = [
            (
                "CONFIG_DEVTMPFS=y\n# CONFIG_UNIX is not set\n",
                "CONFIG_UNIX",
                "disables CONFIG_UNIX",
                "line 2",
            ),
            (
                "CONFIG_DEVTMPFS=m\nCONFIG_UNIX=y\n",
                "CONFIG_DEVTMPFS",
                "sets CONFIG_DEVTMPFS=m",
                "line 1",
            ),
            (
                "CONFIG_DEVTMPFS=y\nCONFIG_UNIX=y\nCONFIG_UNIX=n\n",
                "CONFIG_UNIX",
                "sets CONFIG_UNIX=n",
                "line 3",
            ),
            (
                "CONFIG_UNIX=y\n",
                "CONFIG_DEVTMPFS",
                "does not set CONFIG_DEVTMPFS=y",
                "",
            ),
        ];
        for (text, option, reason, line) in cases {
            let e = check_fragment(text, "images/x.config", needs).unwrap_err();
            let KernelError::BadFragment { option: o, .. } = &e else {
                panic!("{e:?}");
            };
            assert_eq!(o, option);
            let msg = e.to_string();
            assert!(msg.contains("images/x.config"), "{msg}");
            assert!(msg.contains(reason), "{msg}");
            assert!(msg.contains(line), "{msg}");
        }
    }

    #[test]
    fn the_result_is_named_by_its_file() {
        let s = Spec {
            result: "arch/x86/boot/bzImage",
            ..SPEC
        };
        assert_eq!(result_name(&s), "bzImage");
        assert_eq!(result_name(&SPEC), "vmlinux");
    }
}
