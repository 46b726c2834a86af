//! cpio "newc" writer: a [`Tree`] as an initramfs archive.
//!
//! Owns: the byte layout of the archive (entry order = tree order, inode numbers counted
//! from 1 in that order, uid/gid 0, one mtime, `TRAILER!!!`). Headers come from the `cpio`
//! crate. The Linux kernel's initramfs unpacker and GNU cpio are the readers that judge it.
//!
//! Must not: compress (see [`crate::image::compress`]), touch the filesystem beyond reading
//! the tree's file sources, or decide what goes into the tree.

use std::io::{self, Write};

use crate::rootfs::{EntryKind, Tree};

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("{path}: {size} bytes is larger than a cpio newc entry can hold (4 GiB)")]
    TooLarge { path: String, size: u64 },
    #[error("mtime {0} does not fit a cpio newc header (32 bits)")]
    Mtime(u64),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// Writes `tree` as a newc archive to `w` and returns `w`.
pub fn write<W: Write>(tree: &Tree, mut w: W) -> Result<W, CpioError> {
    let mtime = u32::try_from(tree.mtime()).map_err(|_| CpioError::Mtime(tree.mtime()))?;
    let mut ino = 0u32;
    for (path, entry) in tree.iter() {
        if path == "/" {
            continue;
        }
        ino += 1;
        let name = &path[1..];
        let io_err = |source| CpioError::Io {
            path: path.to_string(),
            source,
        };
        let head = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(entry.mode())
            .uid(0)
            .gid(0)
            .mtime(mtime)
            .nlink(if entry.kind == EntryKind::Dir { 2 } else { 1 });
        w = match &entry.kind {
            EntryKind::Dir => head.write(w, 0).finish().map_err(CpioError::Write)?,
            EntryKind::Symlink(target) => {
                let mut wr = head.write(w, len32(path, target.len() as u64)?);
                wr.write_all(target.as_bytes()).map_err(CpioError::Write)?;
                wr.finish().map_err(CpioError::Write)?
            }
            EntryKind::Device { major, minor, .. } => head
                .rdev_major(*major)
                .rdev_minor(*minor)
                .write(w, 0)
                .finish()
                .map_err(CpioError::Write)?,
            EntryKind::File(src) => {
                let size = src.len().map_err(io_err)?;
                let mut wr = head.write(w, len32(path, size)?);
                let mut reader = src.open().map_err(io_err)?;
                let copied = io::copy(&mut reader, &mut wr).map_err(io_err)?;
                if copied != size {
                    return Err(io_err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file changed while being archived ({size} bytes expected, {copied} read)"),
                    )));
                }
                wr.finish().map_err(CpioError::Write)?
            }
        };
    }
    cpio::newc::trailer(w).map_err(CpioError::Write)
}

/// Alignment of an archive appended to another: the kernel's initramfs unpacker takes an
/// uncompressed archive only at a multiple of 4 bytes, and skips the zeros before it.
pub const APPEND_ALIGN: u64 = 512;

/// Writes, after `written` bytes of other archives (compressed or not) already in `w`,
/// zeros up to [`APPEND_ALIGN`] and an uncompressed newc archive of the one regular file
/// `path` (absolute; its parent dir must come from the archives before it, as the kernel
/// unpacks concatenated archives into one root). For a per-build file (a random cookie)
/// appended to a cached initramfs.
pub fn append_file<W: Write>(
    mut w: W,
    written: u64,
    path: &str,
    content: &[u8],
    mode: u32,
    mtime: u32,
) -> Result<W, CpioError> {
    let pad = (APPEND_ALIGN - written % APPEND_ALIGN) % APPEND_ALIGN;
    w.write_all(&vec![0; pad as usize])
        .map_err(CpioError::Write)?;
    let name = path.trim_start_matches('/');
    let mut wr = cpio::newc::Builder::new(name)
        .ino(1)
        .mode(0o100000 | (mode & 0o7777))
        .uid(0)
        .gid(0)
        .mtime(mtime)
        .nlink(1)
        .write(w, len32(path, content.len() as u64)?);
    wr.write_all(content).map_err(CpioError::Write)?;
    let w = wr.finish().map_err(CpioError::Write)?;
    cpio::newc::trailer(w).map_err(CpioError::Write)
}

fn len32(path: &str, size: u64) -> Result<u32, CpioError> {
    u32::try_from(size).map_err(|_| CpioError::TooLarge {
        path: path.into(),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::DeviceKind;

    fn sample() -> Tree {
        let mut t = Tree::new(1_700_000_000);
        t.add_bytes("/etc/hello", b"hello\n".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/bin/run", b"#!x".to_vec(), 0o755, "t")
            .unwrap();
        t.add_symlink("/bin/sh", "run", "t").unwrap();
        t.add_device("/dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        t
    }

    #[test]
    fn an_appended_file_starts_aligned_after_the_archive_before_it() {
        let first = write(&sample(), Vec::new()).unwrap();
        let n = first.len() as u64 + 3;
        let mut bytes = first.clone();
        bytes.extend([0; 3]);
        let bytes = append_file(bytes, n, "/etc/c.args", b"-setcookie X\n", 0o400, 7).unwrap();
        let at = n.next_multiple_of(APPEND_ALIGN) as usize;
        assert!(bytes[first.len()..at].iter().all(|b| *b == 0));
        let tail = dump(&bytes[at..]);
        assert!(tail.starts_with("070701 00000001 00008100"), "{tail}");
        assert!(tail.contains("etc/c.args \"-setcookie X\\n\""), "{tail}");
        assert!(tail.contains("TRAILER!!!"), "{tail}");
    }

    /// A readable dump of a newc archive: one line per entry with the 13 header fields,
    /// the name and the (escaped) data; checks padding on the way.
    fn dump(bytes: &[u8]) -> String {
        let mut out = String::new();
        let mut off = 0;
        while off + 110 <= bytes.len() {
            let h = std::str::from_utf8(&bytes[off..off + 110]).unwrap();
            let fields: Vec<&str> = (0..13).map(|i| &h[6 + i * 8..14 + i * 8]).collect();
            let namesize = usize::from_str_radix(fields[11], 16).unwrap();
            let filesize = usize::from_str_radix(fields[6], 16).unwrap();
            let name = std::str::from_utf8(&bytes[off + 110..off + 110 + namesize - 1]).unwrap();
            let data_at = (off + 110 + namesize + 3) & !3;
            let data = &bytes[data_at..data_at + filesize];
            out.push_str(&format!(
                "{} {} {name} {:?}\n",
                &h[..6],
                fields.join(" "),
                String::from_utf8_lossy(data)
            ));
            off = (data_at + filesize + 3) & !3;
            if name == "TRAILER!!!" {
                break;
            }
        }
        assert_eq!(off, bytes.len(), "trailing bytes after the trailer");
        out
    }

    /// Golden output: the exact archive for a small tree. A change here is a format
    /// change; regenerate with `UPDATE_GOLDEN=1 cargo test` and review the diff.
    #[test]
    fn golden_archive() {
        let bytes = write(&sample(), Vec::new()).unwrap();
        beambake_testkit::golden::check("sample.cpio.txt", &dump(&bytes));
    }

    #[test]
    fn read_back_with_the_crate_reader() {
        let bytes = write(&sample(), Vec::new()).unwrap();
        let mut r = io::Cursor::new(bytes);
        let mut seen = vec![];
        loop {
            let rd = cpio::newc::Reader::new(r).unwrap();
            let e = rd.entry();
            if e.is_trailer() {
                break;
            }
            seen.push((
                e.name().to_string(),
                e.mode(),
                e.mtime(),
                e.ino(),
                e.rdev_major(),
            ));
            r = rd.finish().unwrap();
        }
        assert_eq!(
            seen,
            vec![
                ("bin".into(), 0o40755, 1_700_000_000, 1, 0),
                ("bin/run".into(), 0o100755, 1_700_000_000, 2, 0),
                ("bin/sh".into(), 0o120777, 1_700_000_000, 3, 0),
                ("dev".into(), 0o40755, 1_700_000_000, 4, 0),
                ("dev/console".into(), 0o20600, 1_700_000_000, 5, 5),
                ("etc".into(), 0o40755, 1_700_000_000, 6, 0),
                ("etc/hello".into(), 0o100644, 1_700_000_000, 7, 0),
            ]
        );
    }

    #[test]
    fn mtime_must_fit() {
        let t = Tree::new(u64::from(u32::MAX) + 1);
        assert!(matches!(write(&t, Vec::new()), Err(CpioError::Mtime(_))));
    }
}
