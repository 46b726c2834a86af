//! The uml target's kernel: User Mode Linux built from Debian's pinned kernel source
//! package with beambake's patches and config options, once, into the cache.
//!
//! Owns: the pin (`images/uml-kernel.toml`), the patch series
//! (`patches/linux/6.1/uml/`) and the config fragment (`images/uml-kernel.config`), all
//! compiled into the binary; the build (fetch and verify the .deb, unpack, patch,
//! configure (patches applied by [`beambake_patch::patch`], strictly: no offset, no fuzz), check every requested option, `make ARCH=um linux`) in a temp dir and the
//! atomic move of the one result file into `CACHE/uml/<package>_<version>-<key>/linux`,
//! where `key` hashes pin, patches and config, so changing any of them rebuilds. One build
//! at a time per cache (a lock file); a second caller waits and reuses the result.
//! Must not: boot anything or know about images.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::build_cache;
use crate::kernel::{self, KernelError, Pin};

/// The pinned source package.
pub const PIN: &str = include_str!("../../../../images/uml-kernel.toml");
/// Config options set on top of the defconfig.
pub const CONFIG: &str = include_str!("../../../../images/uml-kernel.config");
/// The series, in order: (file name, content).
pub const PATCHES: &[(&str, &str)] = &[(
    "0001-um-xstate-size-from-host.patch",
    include_str!("../../../../patches/linux/6.1/uml/0001-um-xstate-size-from-host.patch"),
)];
/// The series file, checked against [`PATCHES`] by a test.
pub const SERIES: &str = include_str!("../../../../patches/linux/6.1/uml/series");

/// Tools the build runs, and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("xz", "xz-utils"),
    ("dpkg-deb", "dpkg"),
];

/// A built UML kernel.
#[derive(Debug, Clone)]
pub struct UmlKernel {
    pub image: PathBuf,
    pub pin: Pin,
    /// Hash of pin + patches + config (the cache key).
    pub key: String,
}

/// The pin compiled into the binary.
pub fn pin() -> Result<Pin, KernelError> {
    toml::from_str(PIN).map_err(|e| KernelError::BadPackage {
        pin_spec: "images/uml-kernel.toml".into(),
        dir: PathBuf::from("images"),
        reason: e.to_string(),
    })
}

/// The cache key: sha256 over the pin, each patch (name and bytes) and the config.
pub fn key() -> String {
    let mut h = Sha256::new();
    h.update(PIN.as_bytes());
    for (name, text) in PATCHES {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
    }
    h.update(CONFIG.as_bytes());
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

/// Where [`get`] keeps the kernel in `cache_dir` (whether or not it is built yet).
pub fn image_path(cache_dir: &Path) -> Result<PathBuf, KernelError> {
    let pin = pin()?;
    Ok(final_dir(&cache_dir.join("uml"), &pin, &key()).join("linux"))
}

fn final_dir(base: &Path, pin: &Pin, key: &str) -> PathBuf {
    base.join(format!("{}_{}-{key}", pin.package, pin.version))
}

/// The kernel from the cache, building it first when absent. `progress` is told when a
/// build starts (it takes minutes).
pub fn get(cache_dir: &Path, progress: &dyn Fn(&str)) -> Result<UmlKernel, KernelError> {
    let pin = pin()?;
    let key = key();
    let base = cache_dir.join("uml");
    let final_dir = final_dir(&base, &pin, &key);
    let image = final_dir.join("linux");
    let done = |image: PathBuf| UmlKernel {
        image,
        pin: pin.clone(),
        key: key.clone(),
    };
    // The kernel file is the whole result (it appears by a rename of its dir).
    let complete = |dir: &Path| dir.join("linux").is_file();
    build_cache::get_or_build(&base, &final_dir, &complete, &mut |work, staged| {
        check_tools()?;
        progress(&format!(
            "building the UML kernel from {} {} (first use only; a few minutes)",
            pin.package, pin.version
        ));
        let built = build(&pin, work, &base)?;
        build_cache::copy(&built, &staged.join("linux"))?;
        kernel::write_synced(&staged.join("key"), key.as_bytes())
    })?;
    Ok(done(image))
}

fn check_tools() -> Result<(), KernelError> {
    let missing = build_cache::missing_tools(TOOLS);
    if missing.is_empty() {
        return Ok(());
    }
    Err(KernelError::BadPackage {
        pin_spec: "images/uml-kernel.toml".into(),
        dir: PathBuf::from("."),
        reason: format!(
            "building the UML kernel needs tools that are not installed: run `apt-get install {}` (or pass a kernel with --kernel)",
            missing.join(" ")
        ),
    })
}

/// Fetch, unpack, patch, configure and build in `work`; returns the path of `linux`.
fn build(pin: &Pin, work: &Path, cache: &Path) -> Result<PathBuf, KernelError> {
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
    for (name, text) in PATCHES {
        patches.push(
            beambake_patch::patch::Patch::parse_str(name, text).map_err(|e| {
                KernelError::BadPackage {
                    pin_spec: pin.spec(),
                    dir: PathBuf::from("patches/linux/6.1/uml"),
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
    let make = |args: &[&str], what: &str| -> Result<(), KernelError> {
        let mut c = Command::new("make");
        c.arg("ARCH=um")
            .args(args)
            .current_dir(&src)
            .env("KBUILD_BUILD_TIMESTAMP", "2024-01-01")
            .env("KBUILD_BUILD_USER", "beambake")
            .env("KBUILD_BUILD_HOST", "beambake")
            .env("KBUILD_BUILD_VERSION", "1");
        kernel::run(&mut c, what, &src, "")
    };
    make(&["x86_64_defconfig"], "make ARCH=um x86_64_defconfig")?;
    let dotconfig = src.join(".config");
    let mut text = fs::read_to_string(&dotconfig).map_err(kernel::io_err("reading", &dotconfig))?;
    text.push_str("\n# beambake (images/uml-kernel.config)\n");
    text.push_str(CONFIG);
    fs::write(&dotconfig, text).map_err(kernel::io_err("writing", &dotconfig))?;
    make(&["olddefconfig"], "make ARCH=um olddefconfig")?;
    let final_cfg =
        fs::read_to_string(&dotconfig).map_err(kernel::io_err("reading", &dotconfig))?;
    let missing = missing_options(&wanted_options(CONFIG), &final_cfg);
    if !missing.is_empty() {
        return Err(KernelError::BadPackage {
            pin_spec: pin.spec(),
            dir: src.clone(),
            reason: format!(
                "images/uml-kernel.config asks for options the kernel did not take: {}",
                missing.join(", ")
            ),
        });
    }
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    make(&[&format!("-j{jobs}"), "linux"], "make ARCH=um linux")?;
    Ok(src.join("linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn pin_parses_and_key_is_stable() {
        let p = pin().unwrap();
        assert_eq!(p.package, "linux-source-6.1");
        assert_eq!(key(), key());
        assert_eq!(key().len(), 16);
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
    fn every_patch_says_what_and_why() {
        for (name, text) in PATCHES {
            let header = &text[..text.find("\n--- a/").unwrap_or(0)];
            assert!(header.contains("Subject:"), "{name}");
            assert!(header.lines().count() > 5, "{name}: explain the change");
        }
    }
}
