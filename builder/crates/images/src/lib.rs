//! beambake's images: the rootfs [`rootfs::Tree`] every target builds, the writers that
//! turn it into bytes ([`image`]: cpio newc, ISO 9660 + Rock Ridge, squashfs, ext4, OSv's
//! ROFS, and OSv's disk image joining its loader with a filesystem), the
//! atomic output of artefacts and output sets ([`output`]), and digests ([`digest`]).
//!
//! Must not: boot, touch networks, or know what a release or a recipe is (the compiler
//! enforces it: this crate depends on no other beambake crate).

pub mod digest;
pub mod host;
pub mod image;
pub mod output;
pub mod rootfs;
pub mod sizes;
