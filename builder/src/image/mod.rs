//! Image writers: pure functions of (tree, options) -> bytes, plus their compression.
//! Each writer owns one format; none of them decides what goes into the tree.

pub mod compress;
pub mod cpio;
pub mod ext4;
pub mod iso9660;
pub mod squashfs;

use crate::rootfs::{EntryKind, Tree};

/// What one filesystem format can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The format's name, for messages.
    pub format: &'static str,
    pub name_len: usize,
    pub symlink_len: usize,
    pub device_major: u32,
    pub device_minor: u32,
}

/// An entry a format cannot hold; each variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{path}: name is {len} bytes long; {format} allows {max}")]
    NameTooLong {
        path: String,
        len: usize,
        format: &'static str,
        max: usize,
    },
    #[error("symlink {path}: target is {len} bytes long; {format} allows {max}")]
    SymlinkTooLong {
        path: String,
        len: usize,
        format: &'static str,
        max: usize,
    },
    #[error("{path}: device {major}:{minor} does not fit a {format} device number (major <= {max_major}, minor <= {max_minor})")]
    DeviceNumber {
        path: String,
        major: u32,
        minor: u32,
        format: &'static str,
        max_major: u32,
        max_minor: u32,
    },
}

/// Checks every entry of `tree` against `l`.
pub fn check_limits(tree: &Tree, l: &Limits) -> Result<(), LimitError> {
    for (path, entry) in tree.iter() {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.len() > l.name_len {
            return Err(LimitError::NameTooLong {
                path: path.to_string(),
                len: name.len(),
                format: l.format,
                max: l.name_len,
            });
        }
        match &entry.kind {
            EntryKind::Symlink(t) if t.len() > l.symlink_len => {
                return Err(LimitError::SymlinkTooLong {
                    path: path.to_string(),
                    len: t.len(),
                    format: l.format,
                    max: l.symlink_len,
                })
            }
            EntryKind::Device { major, minor, .. }
                if *major > l.device_major || *minor > l.device_minor =>
            {
                return Err(LimitError::DeviceNumber {
                    path: path.to_string(),
                    major: *major,
                    minor: *minor,
                    format: l.format,
                    max_major: l.device_major,
                    max_minor: l.device_minor,
                })
            }
            _ => {}
        }
    }
    Ok(())
}
