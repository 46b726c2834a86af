//! The uml target's kernel: User Mode Linux, one [`Spec`] of the kernels built from
//! Debian's pinned source ([`crate::source_kernel`] builds and caches it).
//!
//! Owns: the spec — `make ARCH=um x86_64_defconfig`, the patch series
//! (`patches/linux/6.1/uml/`) and the config fragment (`images/uml-kernel.config`), all
//! compiled into the binary; the result `linux` in `CACHE/uml/<package>_<version>-<key>/`.
//! Must not: boot anything or know about images.

use crate::source_kernel::{SourceKernel, Spec};

pub use crate::source_kernel::{missing_options, pin, wanted_options, PIN};

/// Config options set on top of the defconfig.
pub const CONFIG: &str = include_str!("../../../../images/uml-kernel.config");
/// The series, in order: (file name, content).
pub const PATCHES: &[(&str, &str)] = &[(
    "0001-um-xstate-size-from-host.patch",
    include_str!("../../../../patches/linux/6.1/uml/0001-um-xstate-size-from-host.patch"),
)];
/// The series file, checked against [`PATCHES`] by a test.
pub const SERIES: &str = include_str!("../../../../patches/linux/6.1/uml/series");

/// User Mode Linux as built for the uml target.
pub const SPEC: Spec = Spec {
    what: "the UML kernel",
    cache_dir: "uml",
    arch: "um",
    base_config: "x86_64_defconfig",
    fragment: CONFIG,
    fragment_file: "images/uml-kernel.config",
    patches: PATCHES,
    patches_dir: "patches/linux/6.1/uml",
    make_target: "linux",
    result: "linux",
    // The defconfig has the init's needs; the fragment adds to it.
    init_needs: &[],
    headers: &[],
};

/// A built UML kernel.
pub type UmlKernel = SourceKernel;

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
    fn every_patch_says_what_and_why() {
        for (name, text) in PATCHES {
            let header = &text[..text.find("\n--- a/").unwrap_or(0)];
            assert!(header.contains("Subject:"), "{name}");
            assert!(header.lines().count() > 5, "{name}: explain the change");
        }
    }
}
