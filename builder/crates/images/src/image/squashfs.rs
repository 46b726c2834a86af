//! squashfs 4.0 writer: a [`Tree`] as a compressed, read-only root filesystem image.
//!
//! Owns: the mapping of tree entries to squashfs inodes (directories, regular files,
//! symlinks, character and block devices) with their exact permission bits (setuid, setgid
//! and sticky included), uid/gid 0, one timestamp ([`Tree::mtime`]) for the superblock and
//! every inode, and the compressor settings ([`Options`]). The on-disk layout comes from
//! the `backhand` crate; `unsquashfs` (squashfs-tools) and the Linux kernel are the readers
//! that judge it.
//!
//! Must not: decide what goes into the tree, look at host file metadata other than a file's
//! content and length (modes, owners and times all come from the tree), or write anything
//! but the image (the image is built in an anonymous temporary file in the destination
//! directory and then committed through [`AtomicFile`]).
//!
//! # Reproducibility
//!
//! The same tree and options give the same bytes: entries are added in tree order and
//! `backhand` lays them out sorted by path (inode numbers follow that order), every
//! compressor runs with fixed settings (backhand's xz is liblzma's multi-threaded encoder
//! with 2 threads; it splits its input by size, not by timing) and the id table holds only
//! 0. The output depends on the `backhand` version (pinned by `Cargo.lock`), not on the
//! host, the umask or file times.
//!
//! # `backhand` gaps worked around here
//!
//! * `FilesystemWriter` cannot set the root directory's mtime (only its mode, uid and gid);
//!   left alone it would be 0 (1970). [`write`] therefore builds a root-only seed image,
//!   reads it back, sets the root's header on the reader (a public field) and starts the
//!   real writer from it with `FilesystemWriter::from_fs_reader`. The seed has no files,
//!   so nothing of it ends up in the output.
//! * `FilesystemWriter::write` needs `Write + Seek` (it seeks back to write the superblock),
//!   which [`AtomicFile`] is not: the image goes to an anonymous temporary file in the
//!   destination directory first and is then copied into the [`AtomicFile`].
//! * Duplicate files are not merged: `backhand` would match them by length and a 64-bit
//!   xxhash rather than by content, and a collision would silently give a file another
//!   one's bytes (merging saved 0.2% on /usr/lib/erlang).
//! * Directory `nlink` is `2 + entries` rather than `2 + subdirectories`. Readers only use
//!   it as an upper bound on subdirectories (an over-count is harmless), and
//!   `unsquashfs` does not show it.

use std::fs::File;
use std::io::{self, BufWriter, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backhand::compression::{CompressionOptions, Compressor};
use backhand::{
    BackhandError, FilesystemCompressor, FilesystemReader, FilesystemWriter, NodeHeader,
};

use crate::output::{parent_dir, AtomicFile, OutputError, Written};
use crate::rootfs::{DeviceKind, EntryKind, FileSource, Tree};

/// Longest name (one path component) in bytes: Linux's `NAME_MAX`. The squashfs format
/// could store 256, which the Linux VFS would then refuse to look up.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target in bytes (`PATH_MAX` without its NUL).
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Largest device major number a squashfs inode can hold (Linux `new_encode_dev`).
pub const MAX_DEVICE_MAJOR: u32 = 0xfff;
/// Largest device minor number a squashfs inode can hold (Linux `new_encode_dev`).
pub const MAX_DEVICE_MINOR: u32 = 0xf_ffff;

const LIMITS: super::Limits = super::Limits {
    format: "squashfs",
    name_len: MAX_NAME_LEN,
    symlink_len: MAX_SYMLINK_LEN,
    device_major: MAX_DEVICE_MAJOR,
    device_minor: MAX_DEVICE_MINOR,
};
/// Default zstd level. Measured on /usr/lib/erlang (OTP 25 from Debian 12: 3877 entries,
/// 102 MB of content; 128 KiB blocks; release build on a shared 2-core VM; see
/// `examples/measure.rs` in the scratch crate): level 3 gives 49.9 MB in 0.6 s, 9 gives
/// 47.7 MB in 1.2 s, 15 gives 45.5 MB in 7.2 s, 19 gives 45.2 MB in 20 s (xz: 43.6 MB in
/// 16 s; `mksquashfs` is within 1% of these sizes). Level 15, `mksquashfs`'s zstd default,
/// costs 6x the time of 9 for 5% less; 9 keeps image builds interactive, like the zstd
/// level of `image::compress`. Ask for 19 or xz for artefacts that are shipped.
pub const DEFAULT_ZSTD_LEVEL: i32 = 9;
/// Default data block size: 128 KiB, as `mksquashfs`. 1 MiB blocks make the tree above 5%
/// smaller (45.2 MB at zstd 9) but every read of a small file then decompresses a fragment
/// block of up to 1 MiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 128 * 1024;

/// The compressor for data and metadata blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at this level (1..=22); the level is recorded in the image's compressor
    /// options (which the kernel ignores).
    Zstd(i32),
    /// xz (LZMA2, preset 6, dictionary = block size, CRC32 check, no BCJ filter).
    Xz,
    /// zlib at level 9, window 15 (squashfs calls it gzip).
    Gzip,
}

/// Image-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub compression: Compression,
    /// Data block size in bytes: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compression: Compression::Zstd(DEFAULT_ZSTD_LEVEL),
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error(transparent)]
    Limit(#[from] super::LimitError),
    #[error("mtime {0} does not fit a squashfs timestamp (32 bits, up to 2106)")]
    Mtime(u64),
    #[error("block size {0} is not a power of two from 4096 to 1048576")]
    BlockSize(u32),
    #[error("zstd level {0} is outside 1..=22")]
    ZstdLevel(i32),
    #[error("{path}: reading {from}: {source}")]
    Source {
        path: String,
        from: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: file changed while the image was written ({expected} bytes expected, {found} read)")]
    Changed {
        path: String,
        expected: u64,
        found: u64,
    },
    #[error("{path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the squashfs image: {0}")]
    Build(#[source] BackhandError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Writes `tree` as a squashfs 4.0 image to `dest` (atomically: a failed write leaves any
/// previous `dest` untouched).
pub fn write(tree: &Tree, opts: &Options, dest: &Path) -> Result<Written, SquashfsError> {
    let mtime = u32::try_from(tree.mtime()).map_err(|_| SquashfsError::Mtime(tree.mtime()))?;
    let compressor = filesystem_compressor(opts)?;
    check_entries(tree)?;

    let header = |perm: u32| NodeHeader::new((perm & 0o7777) as u16, 0, 0, mtime);
    let root_perm = tree.get("/").map(|e| e.perm).unwrap_or(0o755);

    // The seed: see the module documentation.
    let mut seed = FilesystemWriter::default();
    seed.set_compressor(compressor);
    let mut seed_bytes = Cursor::new(Vec::new());
    seed.write(&mut seed_bytes).map_err(SquashfsError::Build)?;
    seed_bytes.set_position(0);
    let mut seed = FilesystemReader::from_reader(seed_bytes).map_err(SquashfsError::Build)?;
    seed.root.root_mut().header = header(root_perm);

    let mut fs = FilesystemWriter::from_fs_reader(&seed).map_err(SquashfsError::Build)?;
    fs.set_compressor(compressor);
    fs.set_block_size(opts.block_size);
    fs.set_time(mtime);
    fs.set_only_root_id();
    // No deduplication (see the module documentation).
    fs.set_no_duplicate_files(false);

    let failure: Arc<Mutex<Option<SquashfsError>>> = Arc::default();
    for (path, entry) in tree.iter() {
        if path == "/" {
            continue;
        }
        let h = header(entry.perm);
        let added = match &entry.kind {
            EntryKind::Dir => fs.push_dir(path, h),
            EntryKind::Symlink(target) => fs.push_symlink(target.as_str(), path, h),
            EntryKind::Device { kind, major, minor } => {
                let dev = encode_dev(*major, *minor);
                match kind {
                    DeviceKind::Char => fs.push_char_device(dev, path, h),
                    DeviceKind::Block => fs.push_block_device(dev, path, h),
                }
            }
            EntryKind::File(src) => {
                let expected = src.len().map_err(|e| source_error(path, src, e))?;
                let reader = ContentReader {
                    path: path.to_string(),
                    src: src.clone(),
                    expected,
                    read: 0,
                    inner: None,
                    failure: failure.clone(),
                };
                fs.push_file(reader, path, h)
            }
        };
        added.map_err(SquashfsError::Build)?;
    }

    let dir = parent_dir(dest);
    let scratch_err = |source| SquashfsError::Scratch {
        path: dir.to_path_buf(),
        source,
    };
    let mut scratch =
        BufWriter::with_capacity(1 << 20, tempfile::tempfile_in(dir).map_err(scratch_err)?);
    let len = match fs.write(&mut scratch) {
        Ok((_, len)) => len,
        Err(e) => {
            let recorded = failure.lock().ok().and_then(|mut f| f.take());
            return Err(recorded.unwrap_or(SquashfsError::Build(e)));
        }
    };
    drop(fs);
    let mut scratch = scratch
        .into_inner()
        .map_err(|e| scratch_err(e.into_error()))?;
    scratch.seek(SeekFrom::Start(0)).map_err(scratch_err)?;

    let mut out = AtomicFile::create(dest)?;
    // Only `len` bytes: with deduplication on, backhand seeks back over a duplicate's data,
    // which may then linger past the end of the image.
    let copied =
        io::copy(&mut (&mut scratch).take(len), &mut out).map_err(|source| OutputError {
            path: dest.to_path_buf(),
            source,
        })?;
    if copied != len {
        return Err(scratch_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("scratch image is {copied} bytes, {len} expected"),
        )));
    }
    Ok(out.commit()?)
}

fn filesystem_compressor(opts: &Options) -> Result<FilesystemCompressor, SquashfsError> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(backhand::MIN_BLOCK_SIZE..=backhand::MAX_BLOCK_SIZE).contains(&bs)
    {
        return Err(SquashfsError::BlockSize(bs));
    }
    let (id, options) = match opts.compression {
        Compression::Zstd(level) => {
            if !(1..=22).contains(&level) {
                return Err(SquashfsError::ZstdLevel(level));
            }
            let o = backhand::compression::Zstd {
                compression_level: level as u32,
            };
            (Compressor::Zstd, Some(CompressionOptions::Zstd(o)))
        }
        Compression::Xz => (Compressor::Xz, None),
        Compression::Gzip => (Compressor::Gzip, None),
    };
    FilesystemCompressor::new(id, options).map_err(SquashfsError::Build)
}

/// Refuses what squashfs (or the kernel reading it) cannot represent, naming the path.
fn check_entries(tree: &Tree) -> Result<(), SquashfsError> {
    Ok(super::check_limits(tree, &LIMITS)?)
}

/// Linux `new_encode_dev`, the encoding squashfs device inodes use.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn source_error(path: &str, src: &FileSource, source: io::Error) -> SquashfsError {
    SquashfsError::Source {
        path: path.to_string(),
        from: match src {
            FileSource::Host(p) => p.display().to_string(),
            FileSource::Bytes(_) => "generated content".to_string(),
        },
        source,
    }
}

/// A file's content as `backhand` reads it: opened on the first read (so a tree of many
/// thousands of files never holds more than one descriptor), checked against the length
/// measured when the entry was added, with the first failure kept with its path.
struct ContentReader {
    path: String,
    src: FileSource,
    expected: u64,
    read: u64,
    inner: Option<Box<dyn Read>>,
    failure: Arc<Mutex<Option<SquashfsError>>>,
}

impl ContentReader {
    fn fail(&self, e: SquashfsError) -> io::Error {
        let msg = e.to_string();
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(e);
        }
        io::Error::other(msg)
    }

    fn open(&self) -> io::Result<Box<dyn Read>> {
        match &self.src {
            FileSource::Host(p) => Ok(Box::new(File::open(p)?)),
            FileSource::Bytes(b) => Ok(Box::new(Cursor::new(Shared(b.clone())))),
        }
    }
}

/// Shared generated content, readable through a [`Cursor`] without a copy.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.is_none() {
            match self.open() {
                Ok(r) => self.inner = Some(r),
                Err(e) => return Err(self.fail(source_error(&self.path, &self.src, e))),
            }
        }
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let n = match inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.fail(source_error(&self.path, &self.src, e))),
        };
        self.read += n as u64;
        let short = n == 0 && !buf.is_empty() && self.read < self.expected;
        if self.read > self.expected || short {
            return Err(self.fail(SquashfsError::Changed {
                path: self.path.clone(),
                expected: self.expected,
                found: self.read,
            }));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::process::Command;

    const MTIME: u64 = 1_700_000_000;

    fn run_bytes(cmd: &mut Command) -> Vec<u8> {
        let out = beambake_testkit::guard(cmd)
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt-get install squashfs-tools)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn run(cmd: &mut Command) -> String {
        String::from_utf8(run_bytes(cmd)).unwrap()
    }

    /// Deterministic pseudo-random bytes (compressible enough to exercise both stored
    /// and compressed blocks).
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 < 3 {
                    b'a' + (i % 5) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// A tree with the hard cases; host files live in `host`.
    fn sample(host: &Path) -> Tree {
        let mut t = Tree::new(MTIME);
        t.add_dir("/tmp", 0o1777, "t").unwrap();
        t.add_dir("/secret", 0o700, "t").unwrap();
        t.add_dir("/shared", 0o2775, "t").unwrap();
        t.add_bytes("/etc/hello", b"hello\n".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/etc/empty", Vec::new(), 0o600, "t").unwrap();
        t.add_bytes("/bin/suid", b"#!/bin/sh\n".to_vec(), 0o4755, "t")
            .unwrap();
        t.add_bytes("/bin/sgid", b"#!/bin/sh\n".to_vec(), 0o2711, "t")
            .unwrap();
        t.add_symlink("/bin/sh", "suid", "t").unwrap();
        t.add_symlink("/lib64", "/usr/lib", "t").unwrap();
        t.add_device("/dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        t.add_device("/dev/vda", DeviceKind::Block, 254, 0, 0o660)
            .unwrap();
        t.add_device("/dev/big", DeviceKind::Char, 4095, 1_048_575, 0o640)
            .unwrap();
        // larger than a block, not a multiple of it; another one exactly two blocks
        let big = noise(3 * DEFAULT_BLOCK_SIZE as usize + 12345, 1);
        fs::write(host.join("big"), &big).unwrap();
        t.add_file(
            "/usr/lib/big.bin",
            FileSource::Host(host.join("big")),
            0o644,
            "t",
        )
        .unwrap();
        t.add_bytes(
            "/usr/lib/two-blocks",
            noise(2 * DEFAULT_BLOCK_SIZE as usize, 2),
            0o755,
            "t",
        )
        .unwrap();
        // duplicate content (stored once) and a sparse-ish file of zeros
        t.add_bytes("/usr/lib/big-copy.bin", big, 0o644, "t")
            .unwrap();
        t.add_bytes(
            "/usr/lib/zeros",
            vec![0; DEFAULT_BLOCK_SIZE as usize + 1],
            0o644,
            "t",
        )
        .unwrap();
        // many entries in one directory: several directory headers, > 64 KiB listing
        for i in 0..1500 {
            let name = format!("/many/entry-{i:04}-{}", "x".repeat(40));
            t.add_bytes(&name, format!("{i}\n").into_bytes(), 0o644, "t")
                .unwrap();
        }
        let long = "n".repeat(MAX_NAME_LEN);
        t.add_bytes(&format!("/long/{long}"), b"long".to_vec(), 0o644, "t")
            .unwrap();
        // sorting: '-' (0x2d) sorts before '/' (0x2f) in the tree, after it by component
        t.add_bytes("/a-b", b"1".to_vec(), 0o644, "t").unwrap();
        t.add_bytes("/a/b", b"2".to_vec(), 0o644, "t").unwrap();
        t.add_bytes("/a b", b"3".to_vec(), 0o644, "t").unwrap();
        for i in 0..4 {
            fs::write(host.join(format!("h{i}")), noise(1000 * i, i as u32)).unwrap();
            t.add_file(
                &format!("/host/h{i}"),
                FileSource::Host(host.join(format!("h{i}"))),
                0o640,
                "t",
            )
            .unwrap();
        }
        t
    }

    fn type_char(kind: &EntryKind) -> char {
        match kind {
            EntryKind::Dir => 'd',
            EntryKind::File(_) => '-',
            EntryKind::Symlink(_) => 'l',
            EntryKind::Device {
                kind: DeviceKind::Char,
                ..
            } => 'c',
            EntryKind::Device {
                kind: DeviceKind::Block,
                ..
            } => 'b',
        }
    }

    /// `ls -l` style permission string, as unsquashfs prints it.
    fn perm_string(kind: &EntryKind, perm: u32) -> String {
        let mut s = String::new();
        s.push(type_char(kind));
        let bit = |m: u32, c: char| if perm & m != 0 { c } else { '-' };
        let exec = |x: u32, special: u32, set: char, unset: char| match (
            perm & x != 0,
            perm & special != 0,
        ) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        };
        s.push(bit(0o400, 'r'));
        s.push(bit(0o200, 'w'));
        s.push(exec(0o100, 0o4000, 's', 'S'));
        s.push(bit(0o040, 'r'));
        s.push(bit(0o020, 'w'));
        s.push(exec(0o010, 0o2000, 's', 'S'));
        s.push(bit(0o004, 'r'));
        s.push(bit(0o002, 'w'));
        s.push(exec(0o001, 0o1000, 't', 'T'));
        s
    }

    /// What `unsquashfs -lln` must print for `tree`: path -> (mode string, owner, size
    /// or device, symlink target).
    fn expected_listing(tree: &Tree) -> BTreeMap<String, (String, String, String, String)> {
        tree.iter()
            .map(|(path, e)| {
                let size = match &e.kind {
                    EntryKind::File(src) => src.len().unwrap().to_string(),
                    EntryKind::Symlink(t) => t.len().to_string(),
                    // unsquashfs 4.5 lists the raw 32-bit number as `(int)n >> 8, n & 0xff`
                    // (right only for minors < 256; it extracts them right). The
                    // extraction test checks the real major and minor.
                    EntryKind::Device { major, minor, .. } => {
                        let n = encode_dev(*major, *minor);
                        format!("{},{}", (n as i32) >> 8, n & 0xff)
                    }
                    EntryKind::Dir => String::new(),
                };
                let target = match &e.kind {
                    EntryKind::Symlink(t) => t.clone(),
                    _ => String::new(),
                };
                let p = if path == "/" {
                    "squashfs-root".to_string()
                } else {
                    format!("squashfs-root{path}")
                };
                (
                    p,
                    (perm_string(&e.kind, e.perm), "0/0".into(), size, target),
                )
            })
            .collect()
    }

    /// Parses `unsquashfs -lln -UTC` output: `MODE UID/GID SIZE DATE TIME PATH[ -> TARGET]`
    /// (devices show `MAJOR, MINOR` as the size). Also checks every date.
    fn listing(img: &Path) -> BTreeMap<String, (String, String, String, String)> {
        let out = run(Command::new("unsquashfs").arg("-lln").arg("-UTC").arg(img));
        let mut m = BTreeMap::new();
        for line in out.lines() {
            let mut f = line.splitn(2, ' ');
            let mode = f.next().unwrap().to_string();
            let rest = f.next().unwrap().trim_start();
            let (owner, rest) = rest.split_once(' ').unwrap();
            let rest = rest.trim_start();
            let (size, rest) = if mode.starts_with('c') || mode.starts_with('b') {
                let (maj, rest) = rest.split_once(',').unwrap();
                let rest = rest.trim_start();
                let (min, rest) = rest.split_once(' ').unwrap();
                (format!("{maj},{min}"), rest)
            } else {
                let (s, rest) = rest.split_once(' ').unwrap();
                (s.to_string(), rest)
            };
            let rest = rest.trim_start();
            // 2023-11-14 22:13 path
            assert!(rest.starts_with("2023-11-14 22:13 "), "{line}");
            let path_part = &rest["2023-11-14 22:13 ".len()..];
            let (path, target) = match path_part.split_once(" -> ") {
                Some((p, t)) if mode.starts_with('l') => (p.to_string(), t.to_string()),
                _ => (path_part.to_string(), String::new()),
            };
            let size = if mode.starts_with('d') {
                String::new()
            } else {
                size
            };
            m.insert(path, (mode, owner.to_string(), size, target));
        }
        m
    }

    #[test]
    fn listing_matches_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let tree = sample(d.path());
        let img = d.path().join("root.squashfs");
        let w = write(&tree, &Options::default(), &img).unwrap();
        assert_eq!(w.size, fs::metadata(&img).unwrap().len());
        assert_eq!(w.size % 4096, 0, "image is padded to 4 KiB");
        let got = listing(&img);
        let want = expected_listing(&tree);
        for (p, w) in &want {
            assert_eq!(got.get(p), Some(w), "{p}");
        }
        assert_eq!(got.len(), want.len());
        // superblock time and compressor
        let stat = run(Command::new("unsquashfs").arg("-s").arg(&img));
        assert!(stat.contains("Compression zstd"), "{stat}");
        assert!(stat.contains("Block size 131072"), "{stat}");
        let t = run(Command::new("unsquashfs").arg("-mkfs-time").arg(&img));
        assert_eq!(t.trim(), MTIME.to_string());
    }

    #[test]
    fn extraction_matches_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let tree = sample(d.path());
        let img = d.path().join("root.squashfs");
        write(&tree, &Options::default(), &img).unwrap();
        let out = d.path().join("out");
        let mut cmd = Command::new("unsquashfs");
        cmd.args(["-no-progress", "-q", "-d"]).arg(&out).arg(&img);
        run(&mut cmd);
        let root = beambake_testkit::is_root();
        for (path, e) in tree.iter() {
            let p = out.join(path.trim_start_matches('/'));
            let meta = fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{path}: {err}"));
            if root {
                assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path}");
            }
            if !matches!(e.kind, EntryKind::Symlink(_)) {
                assert_eq!(meta.mtime() as u64, MTIME, "{path}");
                if root || !matches!(e.kind, EntryKind::Device { .. }) {
                    assert_eq!(meta.permissions().mode() & 0o7777, e.perm, "{path}");
                }
            }
            match &e.kind {
                EntryKind::Dir => assert!(meta.is_dir(), "{path}"),
                EntryKind::File(src) => {
                    assert!(meta.is_file(), "{path}");
                    assert!(fs::read(&p).unwrap() == src.read_all().unwrap(), "{path}");
                }
                EntryKind::Symlink(t) => {
                    assert_eq!(fs::read_link(&p).unwrap(), Path::new(t), "{path}")
                }
                EntryKind::Device { kind, major, minor } if root => {
                    let ft = meta.file_type();
                    match kind {
                        DeviceKind::Char => assert!(ft.is_char_device(), "{path}"),
                        DeviceKind::Block => assert!(ft.is_block_device(), "{path}"),
                    }
                    let rdev = meta.rdev();
                    assert_eq!(
                        (libc::major(rdev), libc::minor(rdev)),
                        (*major, *minor),
                        "{path}"
                    );
                }
                EntryKind::Device { .. } => {}
            }
        }
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_host_times() {
        let d = tempfile::tempdir().unwrap();
        let tree = sample(d.path());
        let a = write(&tree, &Options::default(), &d.path().join("a.img")).unwrap();
        for i in 0..4 {
            let p = d.path().join(format!("h{i}"));
            let f = File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(12345))
                .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let b = write(&tree, &Options::default(), &d.path().join("b.img")).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(
            fs::read(d.path().join("a.img")).unwrap(),
            fs::read(d.path().join("b.img")).unwrap()
        );
    }

    #[test]
    fn each_compressor_is_recorded_and_readable() {
        let d = tempfile::tempdir().unwrap();
        let mut tree = Tree::new(MTIME);
        tree.add_bytes("/a", noise(300_000, 3), 0o644, "t").unwrap();
        tree.add_bytes("/b", b"small".to_vec(), 0o644, "t").unwrap();
        for (c, name) in [
            (Compression::Zstd(19), "zstd"),
            (Compression::Xz, "xz"),
            (Compression::Gzip, "gzip"),
        ] {
            let img = d.path().join(format!("{name}.img"));
            let opts = Options {
                compression: c,
                block_size: 65536,
            };
            let first = write(&tree, &opts, &img).unwrap();
            let stat = run(Command::new("unsquashfs").arg("-s").arg(&img));
            assert!(stat.contains(&format!("Compression {name}")), "{stat}");
            assert!(stat.contains("Block size 65536"), "{stat}");
            let cat = run_bytes(Command::new("unsquashfs").arg("-cat").arg(&img).arg("a"));
            assert!(cat == noise(300_000, 3), "{name}: content differs");
            let again = write(&tree, &opts, &img).unwrap();
            assert_eq!(first.sha256, again.sha256, "{name} is not deterministic");
        }
    }

    #[test]
    fn root_and_empty_tree() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("empty.img");
        write(&Tree::new(MTIME), &Options::default(), &img).unwrap();
        let got = listing(&img);
        assert_eq!(
            got.get("squashfs-root").map(|l| l.0.as_str()),
            Some("drwxr-xr-x")
        );
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn long_names_are_refused_with_the_path() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(MTIME);
        let name = format!("/etc/{}", "n".repeat(256));
        t.add_bytes(&name, b"x".to_vec(), 0o644, "t").unwrap();
        let img = d.path().join("x.img");
        let e = write(&t, &Options::default(), &img).unwrap_err();
        assert!(
            matches!(
                e,
                SquashfsError::Limit(super::super::LimitError::NameTooLong { len: 256, .. })
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{name}: name is 256 bytes")),
            "{e}"
        );
        assert!(!img.exists());
    }

    #[test]
    fn bad_options_and_inputs_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        let t = Tree::new(MTIME);
        for (opts, want) in [
            (
                Options {
                    block_size: 3000,
                    ..Options::default()
                },
                "block size 3000",
            ),
            (
                Options {
                    block_size: 2 << 20,
                    ..Options::default()
                },
                "block size 2097152",
            ),
            (
                Options {
                    compression: Compression::Zstd(23),
                    ..Options::default()
                },
                "zstd level 23",
            ),
        ] {
            let e = write(&t, &opts, &img).unwrap_err();
            assert!(e.to_string().starts_with(want), "{e}");
        }
        let e = write(&Tree::new(1 << 32), &Options::default(), &img).unwrap_err();
        assert!(matches!(e, SquashfsError::Mtime(_)), "{e}");

        let mut t = Tree::new(MTIME);
        t.add_device("/dev/x", DeviceKind::Char, 4096, 0, 0o600)
            .unwrap();
        let e = write(&t, &Options::default(), &img).unwrap_err();
        assert!(e.to_string().starts_with("/dev/x: device 4096:0"), "{e}");
        assert!(!img.exists());
    }

    #[test]
    fn unreadable_or_changed_sources_name_the_path_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        fs::write(&img, b"previous").unwrap();
        let host = d.path().join("gone");
        fs::write(&host, b"data").unwrap();
        let mut t = Tree::new(MTIME);
        t.add_file("/etc/gone", FileSource::Host(host.clone()), 0o644, "t")
            .unwrap();
        fs::remove_file(&host).unwrap();
        let e = write(&t, &Options::default(), &img).unwrap_err();
        assert!(e.to_string().starts_with("/etc/gone: "), "{e}");
        assert!(e.to_string().contains(&host.display().to_string()), "{e}");

        // content longer than measured when the entry was added
        let grow = d.path().join("grow");
        fs::write(&grow, b"data").unwrap();
        let mut t = Tree::new(MTIME);
        t.add_file("/etc/grow", FileSource::Host(grow.clone()), 0o644, "t")
            .unwrap();
        let mut r = ContentReader {
            path: "/etc/grow".into(),
            src: FileSource::Host(grow.clone()),
            expected: 2,
            read: 0,
            inner: None,
            failure: Arc::default(),
        };
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("file changed"), "{err}");
        let recorded = r.failure.lock().unwrap().take().unwrap();
        assert!(matches!(
            recorded,
            SquashfsError::Changed {
                expected: 2,
                found: 4,
                ..
            }
        ));

        assert_eq!(fs::read(&img).unwrap(), b"previous");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "temp file left behind");
    }

    #[test]
    fn device_encoding_matches_linux() {
        assert_eq!(encode_dev(5, 1), 0x501);
        assert_eq!(encode_dev(8, 0x12345), 0x12300845);
        assert_eq!(encode_dev(MAX_DEVICE_MAJOR, MAX_DEVICE_MINOR), u32::MAX);
    }
}
