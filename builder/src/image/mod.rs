//! Image writers: pure functions of (tree, options) -> bytes, plus their compression.
//! Each writer owns one format; none of them decides what goes into the tree.

pub mod compress;
pub mod cpio;
pub mod ext4;
pub mod iso9660;
pub mod squashfs;
