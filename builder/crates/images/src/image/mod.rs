//! Image writers: pure functions of (tree, options) -> bytes, plus their compression.
//! Each writer owns one format; none of them decides what goes into the tree. Callers
//! pick a [`Format`] and call [`write`]: one signature for every format, the artefact
//! written atomically with its sha256.

pub mod compress;
pub mod cpio;
pub mod ext4;
pub mod iso9660;
pub mod osv_disk;
pub mod rofs;
pub mod squashfs;

use std::path::{Path, PathBuf};

use crate::output::{AtomicFile, OutputError, Written};
use crate::rootfs::{EntryKind, Tree};

/// Every image format beambake writes, with its options.
#[derive(Debug, Clone)]
pub enum Format {
    /// cpio newc (the kernel's initramfs format), optionally compressed at `level`.
    Cpio {
        compression: compress::Compression,
        level: i32,
    },
    /// ISO 9660 with Rock Ridge; the volume id is `volume` mapped to d-characters.
    Iso9660 { volume: String },
    /// squashfs (backhand, deterministic).
    Squashfs(squashfs::Options),
    /// ext4 (`mkfs.ext4 -d`, fixed UUID, hash seed and times).
    Ext4,
    /// OSv's read-only file system (its `--rootfs=rofs`); [`osv_disk::join`] makes it a
    /// bootable disk with OSv's loader.
    Rofs,
}

impl Format {
    /// The label the manifest records for an artefact in this format.
    pub fn label(&self) -> &'static str {
        match self {
            Format::Cpio { compression, .. } => match compression {
                compress::Compression::None => "cpio-newc",
                compress::Compression::Gzip => "cpio-newc+gzip",
                compress::Compression::Zstd => "cpio-newc+zstd",
            },
            Format::Iso9660 { .. } => "iso9660+rockridge",
            Format::Squashfs(_) => "squashfs",
            Format::Ext4 => "ext4",
            Format::Rofs => "osv-rofs",
        }
    }
}

/// A writer's failure, with the artefact's path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Cpio {
        path: PathBuf,
        #[source]
        source: cpio::CpioError,
    },
    #[error("{path}: {source}")]
    Iso {
        path: PathBuf,
        #[source]
        source: iso9660::IsoError,
    },
    #[error("{path}: {source}")]
    Squashfs {
        path: PathBuf,
        #[source]
        source: squashfs::SquashfsError,
    },
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
    #[error("{path}: {source}")]
    Rofs {
        path: PathBuf,
        #[source]
        source: rofs::RofsError,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the initramfs `image` anew, atomically, as its bytes followed by a newc
/// archive of the one file `path` (mode `mode`, mtime 0): see [`cpio::append_file`].
/// `image` may be a hard link (into the build cache): it is replaced, never written to.
pub fn append_to_initramfs(
    image: &Path,
    path: &str,
    content: &[u8],
    mode: u32,
) -> Result<Written, ImageError> {
    let io = |source| ImageError::Io {
        path: image.to_path_buf(),
        source,
    };
    let mut input = std::fs::File::open(image).map_err(io)?;
    let mut file = AtomicFile::create(image)?;
    let n = std::io::copy(&mut input, file.writer()).map_err(io)?;
    cpio::append_file(file.writer(), n, path, content, mode, 0).map_err(|source| {
        ImageError::Cpio {
            path: image.to_path_buf(),
            source,
        }
    })?;
    Ok(file.commit()?)
}

/// Writes `tree` at `dest` in `format`, atomically (a failed write leaves whatever was at
/// `dest` untouched).
pub fn write(tree: &Tree, format: &Format, dest: &Path) -> Result<Written, ImageError> {
    match format {
        Format::Cpio { compression, level } => {
            let mut file = AtomicFile::create(dest)?;
            let io = |source| ImageError::Io {
                path: dest.to_path_buf(),
                source,
            };
            let enc = compress::Encoder::new(file.writer(), *compression, *level).map_err(io)?;
            let enc = cpio::write(tree, enc).map_err(|source| ImageError::Cpio {
                path: dest.to_path_buf(),
                source,
            })?;
            enc.finish().map_err(io)?;
            Ok(file.commit()?)
        }
        Format::Iso9660 { volume } => {
            let volume_id: String = volume
                .to_ascii_uppercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(32)
                .collect();
            let opts = iso9660::Options {
                volume_id,
                mtime: tree.mtime(),
                rock_ridge: true,
            };
            let mut file = AtomicFile::create(dest)?;
            iso9660::write(&iso9660::entries_from_tree(tree), &opts, file.writer()).map_err(
                |source| ImageError::Iso {
                    path: dest.to_path_buf(),
                    source,
                },
            )?;
            Ok(file.commit()?)
        }
        Format::Squashfs(opts) => {
            squashfs::write(tree, opts, dest).map_err(|source| ImageError::Squashfs {
                path: dest.to_path_buf(),
                source,
            })
        }
        Format::Ext4 => Ok(ext4::write(tree, dest)?),
        Format::Rofs => {
            let mut file = AtomicFile::create(dest)?;
            rofs::write(tree, file.writer()).map_err(|source| ImageError::Rofs {
                path: dest.to_path_buf(),
                source,
            })?;
            Ok(file.commit()?)
        }
    }
}

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
