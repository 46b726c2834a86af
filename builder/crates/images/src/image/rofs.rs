//! OSv's ROFS (read-only file system) writer: a [`Tree`] as the image OSv's `rofs` driver
//! mounts (`--rootfs=rofs`).
//!
//! Owns: the byte layout of a ROFS image, as OSv's `fs/rofs/rofs_vfsops.cc` reads it and
//! its `scripts/gen-rofs-img.py` writes it. No crate writes ROFS, hence this module.
//!
//! ```text
//! block 0        superblock: LE u64 magic 0xDEADBEAD, version 1, block_size 512,
//!                structure_info_first_block, structure_info_blocks_count,
//!                directory_entries_count, symlinks_count, inodes_count; zero padded
//! block 1..      file data, each file padded to whole blocks (a 0-byte file takes none)
//! then           the structure info, three tables as ONE byte stream (no alignment):
//!                directory entries (u64 inode_no, u16 name length, name bytes, no NUL),
//!                symlinks (u16 length, target bytes),
//!                inodes (4 x u64: mode type bits, inode_no, data_offset, count),
//!                zero padded to a whole block
//! ```
//!
//! Inodes are numbered from 1 (the root) in the order gen-rofs-img gives them: a
//! directory's children in name order, a child directory's subtree numbered before its
//! next sibling; the inode table is in number order (OSv indexes it by `inode_no - 1`).
//! A directory's entries are contiguous in the entry table (`data_offset` = index of the
//! first, `count` = how many; no `.`/`..`, OSv makes those up). A file's `data_offset`
//! is its first block and `count` its size in bytes; a symlink's the index of its target
//! in the symlink table and 1. Only the type bits of the mode are stored: OSv reports
//! every ROFS node as 0555 and owned by root, whatever the tree says.
//!
//! What ROFS cannot hold is an error naming the entry, found before a byte is written:
//! device nodes, names over 255 bytes (`NAME_MAX`: OSv's `readdir` copies names into a
//! 256-byte `d_name`), symlink targets over 4095 bytes (OSv's lookup reads at most
//! `PATH_MAX - 1`), files over `i64::MAX` bytes (the vnode size is an `off_t`), more than
//! `i32::MAX` inodes (OSv's lookup keeps an inode number in an `int`).
//!
//! Must not: decide what goes into the tree, write anything but the stream it is given
//! (atomic output is [`crate::image::write`]'s), or know about OSv's disk image (the
//! partition table and command line are [`crate::image::osv_disk`]'s).

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::rootfs::{EntryKind, FileSource, Tree};

pub const BLOCK_SIZE: u64 = 512;
pub const MAGIC: u64 = 0xDEAD_BEAD;
pub const VERSION: u64 = 1;
/// Longest name OSv lists whole (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Longest symlink target OSv's path lookup reads whole (`PATH_MAX - 1`).
pub const MAX_SYMLINK: usize = 4095;
/// Largest file: OSv's vnode size is an `off_t`.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Most inodes: OSv's `rofs_lookup` keeps an inode number in an `int`.
pub const MAX_INODES: u64 = i32::MAX as u64;

const DIR_MODE: u64 = 0x4000;
const REG_MODE: u64 = 0x8000;
const LINK_MODE: u64 = 0xA000;

#[derive(Debug, thiserror::Error)]
pub enum RofsError {
    #[error("{path}: {what} cannot be held by OSv's ROFS (directories, regular files and symlinks only)")]
    Unsupported { path: String, what: String },
    #[error("{path}: name is {len} bytes long; OSv's ROFS allows {max}")]
    NameTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("symlink {path}: target is {len} bytes long; OSv's ROFS allows {max}")]
    SymlinkTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("{path}: {size} bytes is larger than OSv's ROFS can hold ({max})")]
    FileTooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: the tree has more entries than OSv's ROFS can number ({max} inodes)")]
    TooManyInodes { path: String, max: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the image: {0}")]
    Write(#[source] io::Error),
}

/// The superblock's fields (block 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub structure_info_first_block: u64,
    pub structure_info_blocks_count: u64,
    pub directory_entries_count: u64,
    pub symlinks_count: u64,
    pub inodes_count: u64,
}

impl Superblock {
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        let fields = [
            MAGIC,
            VERSION,
            BLOCK_SIZE,
            self.structure_info_first_block,
            self.structure_info_blocks_count,
            self.directory_entries_count,
            self.symlinks_count,
            self.inodes_count,
        ];
        for (i, f) in fields.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        b
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Inode {
    mode: u64,
    data_offset: u64,
    count: u64,
}

/// Everything decided before the first byte is written.
struct Layout<'t> {
    inodes: Vec<Inode>,
    /// (name, inode_no), each directory's run contiguous.
    entries: Vec<(&'t str, u64)>,
    symlinks: Vec<&'t str>,
    /// Files in data order: path, source, size.
    files: Vec<(&'t str, &'t FileSource, u64)>,
    /// Next free block (after the file data once laid out).
    block: u64,
}

impl<'t> Layout<'t> {
    fn new_inode(&mut self, path: &str) -> Result<u64, RofsError> {
        let no = self.inodes.len() as u64 + 1;
        if no > MAX_INODES {
            return Err(RofsError::TooManyInodes {
                path: path.to_string(),
                max: MAX_INODES,
            });
        }
        self.inodes.push(Inode::default());
        Ok(no)
    }

    /// Lays out the children of `dir` (gen-rofs-img's order); returns the directory's
    /// (first entry index, entry count).
    fn dir(
        &mut self,
        tree: &'t Tree,
        children: &BTreeMap<&'t str, Vec<(&'t str, &'t str)>>,
        dir: &str,
    ) -> Result<(u64, u64), RofsError> {
        let kids = children.get(dir).map(Vec::as_slice).unwrap_or_default();
        let mut numbered = Vec::with_capacity(kids.len());
        for &(path, name) in kids {
            if name.len() > MAX_NAME {
                return Err(RofsError::NameTooLong {
                    path: path.to_string(),
                    len: name.len(),
                    max: MAX_NAME,
                });
            }
            let no = self.new_inode(path)?;
            numbered.push((name, no));
            // Invariant: `children` was built from the tree's own paths.
            let entry = tree.get(path).expect("a child path is in the tree");
            let inode = match &entry.kind {
                EntryKind::Dir => {
                    let (first, count) = self.dir(tree, children, path)?;
                    Inode {
                        mode: DIR_MODE,
                        data_offset: first,
                        count,
                    }
                }
                EntryKind::Symlink(target) => {
                    if target.len() > MAX_SYMLINK {
                        return Err(RofsError::SymlinkTooLong {
                            path: path.to_string(),
                            len: target.len(),
                            max: MAX_SYMLINK,
                        });
                    }
                    self.symlinks.push(target);
                    Inode {
                        mode: LINK_MODE,
                        data_offset: self.symlinks.len() as u64 - 1,
                        count: 1,
                    }
                }
                EntryKind::File(src) => {
                    let size = src.len().map_err(|source| RofsError::Io {
                        path: path.to_string(),
                        source,
                    })?;
                    let too_large = || RofsError::FileTooLarge {
                        path: path.to_string(),
                        size,
                        max: MAX_FILE_SIZE,
                    };
                    if size > MAX_FILE_SIZE {
                        return Err(too_large());
                    }
                    let first = self.block;
                    self.block = first
                        .checked_add(size.div_ceil(BLOCK_SIZE))
                        .ok_or_else(too_large)?;
                    self.files.push((path, src, size));
                    Inode {
                        mode: REG_MODE,
                        data_offset: first,
                        count: size,
                    }
                }
                EntryKind::Device { .. } => {
                    return Err(RofsError::Unsupported {
                        path: path.to_string(),
                        what: entry.kind.describe(),
                    })
                }
            };
            self.inodes[(no - 1) as usize] = inode;
        }
        let first = self.entries.len() as u64;
        self.entries.extend(numbered);
        Ok((first, kids.len() as u64))
    }

    fn structure_info(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, no) in &self.entries {
            b.extend_from_slice(&no.to_le_bytes());
            // Names are checked against MAX_NAME, targets against MAX_SYMLINK: both fit.
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        for target in &self.symlinks {
            b.extend_from_slice(&(target.len() as u16).to_le_bytes());
            b.extend_from_slice(target.as_bytes());
        }
        for (i, inode) in self.inodes.iter().enumerate() {
            for f in [inode.mode, i as u64 + 1, inode.data_offset, inode.count] {
                b.extend_from_slice(&f.to_le_bytes());
            }
        }
        b
    }
}

fn layout(tree: &Tree) -> Result<Layout<'_>, RofsError> {
    // Each directory's children in tree order, which is name order within a directory.
    let mut children: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (path, _) in tree.iter() {
        if let Some(parent) = crate::rootfs::parent_of(path) {
            let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
            children.entry(parent).or_default().push((path, name));
        }
    }
    let mut l = Layout {
        inodes: Vec::new(),
        entries: Vec::new(),
        symlinks: Vec::new(),
        files: Vec::new(),
        block: 1,
    };
    let root = l.new_inode("/")?;
    let (first, count) = l.dir(tree, &children, "/")?;
    l.inodes[(root - 1) as usize] = Inode {
        mode: DIR_MODE,
        data_offset: first,
        count,
    };
    Ok(l)
}

/// Writes `tree` as a ROFS image to `w`; returns `w` and the superblock it wrote. Every
/// entry is checked (and every file measured) before the first byte is written.
pub fn write<W: Write>(tree: &Tree, mut w: W) -> Result<(W, Superblock), RofsError> {
    let l = layout(tree)?;
    let info = l.structure_info();
    let sb = Superblock {
        structure_info_first_block: l.block,
        structure_info_blocks_count: (info.len() as u64).div_ceil(BLOCK_SIZE),
        directory_entries_count: l.entries.len() as u64,
        symlinks_count: l.symlinks.len() as u64,
        inodes_count: l.inodes.len() as u64,
    };
    let zeros = [0u8; BLOCK_SIZE as usize];
    let pad = |n: u64| ((BLOCK_SIZE - n % BLOCK_SIZE) % BLOCK_SIZE) as usize;
    w.write_all(&sb.bytes()).map_err(RofsError::Write)?;
    w.write_all(&zeros[..pad(64)]).map_err(RofsError::Write)?;
    for &(path, src, size) in &l.files {
        let io_err = |source| RofsError::Io {
            path: path.to_string(),
            source,
        };
        let mut reader = src.open().map_err(io_err)?;
        let copied = io::copy(&mut io::Read::take(&mut reader, size), &mut w).map_err(io_err)?;
        let more = io::Read::read(&mut reader, &mut [0u8; 1]).map_err(io_err)?;
        if copied != size || more != 0 {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file changed while being written ({size} bytes expected)"),
            )));
        }
        w.write_all(&zeros[..pad(size)]).map_err(RofsError::Write)?;
    }
    w.write_all(&info).map_err(RofsError::Write)?;
    w.write_all(&zeros[..pad(info.len() as u64)])
        .map_err(RofsError::Write)?;
    Ok((w, sb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::DeviceKind;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn u16_at(b: &[u8], off: usize) -> usize {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap()) as usize
    }

    /// The image parsed the way OSv's `rofs_mount` does.
    struct Parsed {
        sb: [u64; 8],
        entries: Vec<(u64, String)>,
        symlinks: Vec<String>,
        inodes: Vec<[u64; 4]>,
    }

    fn parse(b: &[u8]) -> Parsed {
        assert_eq!(b.len() % 512, 0, "image is whole blocks");
        let sb: [u64; 8] = std::array::from_fn(|i| u64_at(b, i * 8));
        assert_eq!(&sb[..3], &[MAGIC, VERSION, BLOCK_SIZE]);
        let start = (sb[3] * 512) as usize;
        let end = start + (sb[4] * 512) as usize;
        assert_eq!(end, b.len(), "structure info ends the image");
        let s = &b[start..end];
        let mut off = 0;
        let mut entries = vec![];
        for _ in 0..sb[5] {
            let no = u64_at(s, off);
            let len = u16_at(s, off + 8);
            entries.push((
                no,
                String::from_utf8(s[off + 10..off + 10 + len].to_vec()).unwrap(),
            ));
            off += 10 + len;
        }
        let mut symlinks = vec![];
        for _ in 0..sb[6] {
            let len = u16_at(s, off);
            symlinks.push(String::from_utf8(s[off + 2..off + 2 + len].to_vec()).unwrap());
            off += 2 + len;
        }
        let mut inodes = vec![];
        for _ in 0..sb[7] {
            inodes.push(std::array::from_fn(|i| u64_at(s, off + i * 8)));
            off += 32;
        }
        assert!(
            s[off..].iter().all(|&x| x == 0),
            "structure info padded with zeros"
        );
        Parsed {
            sb,
            entries,
            symlinks,
            inodes,
        }
    }

    /// A readable dump: the superblock, the raw tables, then the tree walked from inode 1
    /// as OSv's lookup walks it, with each file's content.
    fn dump(b: &[u8]) -> String {
        let p = parse(b);
        let mut out = format!(
            "superblock magic={:#x} version={} block_size={} structure_info_first_block={} \
             structure_info_blocks_count={} directory_entries_count={} symlinks_count={} \
             inodes_count={}\n",
            p.sb[0], p.sb[1], p.sb[2], p.sb[3], p.sb[4], p.sb[5], p.sb[6], p.sb[7]
        );
        for (i, [mode, no, off, count]) in p.inodes.iter().enumerate() {
            assert_eq!(*no, i as u64 + 1, "inode table in number order");
            out.push_str(&format!(
                "inode {no} mode={mode:#x} data_offset={off} count={count}\n"
            ));
        }
        for (i, (no, name)) in p.entries.iter().enumerate() {
            out.push_str(&format!("entry {i} {name} -> {no}\n"));
        }
        for (i, t) in p.symlinks.iter().enumerate() {
            out.push_str(&format!("symlink {i} {t}\n"));
        }
        fn walk(b: &[u8], p: &Parsed, path: &str, no: u64, out: &mut String) {
            let [mode, _, off, count] = p.inodes[(no - 1) as usize];
            match mode {
                DIR_MODE => {
                    out.push_str(&format!("{path}/ dir\n"));
                    for (child, name) in &p.entries[off as usize..(off + count) as usize] {
                        walk(b, p, &format!("{path}/{name}"), *child, out);
                    }
                }
                LINK_MODE => {
                    assert_eq!(count, 1);
                    out.push_str(&format!("{path} -> {}\n", p.symlinks[off as usize]));
                }
                REG_MODE => {
                    let at = (off * 512) as usize;
                    let data = &b[at..at + count as usize];
                    let blocks = count.div_ceil(512);
                    let padding = &b[at + count as usize..(off + blocks) as usize * 512];
                    assert!(padding.iter().all(|&x| x == 0), "{path}: padding not zero");
                    // Long contents by their ends (the size and padding are checked).
                    let shown = if data.len() <= 48 {
                        format!("{:?}", String::from_utf8_lossy(data))
                    } else {
                        format!(
                            "{:?}..{:?}",
                            String::from_utf8_lossy(&data[..16]),
                            String::from_utf8_lossy(&data[data.len() - 16..])
                        )
                    };
                    out.push_str(&format!("{path} file block={off} size={count} {shown}\n"));
                }
                m => panic!("{path}: mode {m:#x}"),
            }
        }
        walk(b, &p, "", 1, &mut out);
        out
    }

    fn sample() -> Tree {
        let mut t = Tree::new(1_700_000_000);
        t.add_bytes("/etc/hello", b"hello\n".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/etc/empty", Vec::new(), 0o644, "t").unwrap();
        t.add_bytes(
            "/bin/run",
            (0..700u32).map(|i| b'a' + (i % 26) as u8).collect(),
            0o755,
            "t",
        )
        .unwrap();
        t.add_symlink("/bin/sh", "run", "t").unwrap();
        t.add_symlink("/etc/mnttab", "/proc/mounts", "t").unwrap();
        t.add_dir("/tmp", 0o1777, "t").unwrap();
        t.add_bytes("/zz", b"last".to_vec(), 0o600, "t").unwrap();
        t
    }

    fn image(t: &Tree) -> Vec<u8> {
        write(t, Vec::new()).unwrap().0
    }

    /// Golden output: the exact layout for a small tree. A change here is a format
    /// change; regenerate with `UPDATE_GOLDEN=1 cargo test` and review the diff.
    #[test]
    fn golden_image() {
        beambake_testkit::golden::check("sample.rofs.txt", &dump(&image(&sample())));
    }

    #[test]
    fn superblock_and_tables() {
        let (bytes, sb) = write(&sample(), Vec::new()).unwrap();
        let p = parse(&bytes);
        // Data: /bin/run (2 blocks) at 1, /etc/empty none, /etc/hello at 3, /zz at 4.
        assert_eq!(sb.structure_info_first_block, 5);
        assert_eq!(p.sb[3..], [5, 1, 9, 2, 10]);
        assert_eq!(
            (
                sb.directory_entries_count,
                sb.symlinks_count,
                sb.inodes_count
            ),
            (9, 2, 10)
        );
        // Root is inode 1, a directory whose entries are the last run of the table.
        assert_eq!(p.inodes[0], [DIR_MODE, 1, 5, 4]);
        let root: Vec<&str> = p.entries[5..9].iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(root, ["bin", "etc", "tmp", "zz"]);
        // An empty file takes no block and points where the next file starts.
        let empty = p.entries.iter().find(|(_, n)| n == "empty").unwrap().0;
        assert_eq!(p.inodes[(empty - 1) as usize], [REG_MODE, empty, 3, 0]);
        // An empty directory: no entries.
        let tmp = p.entries.iter().find(|(_, n)| n == "tmp").unwrap().0;
        assert_eq!(p.inodes[(tmp - 1) as usize][3], 0);
        assert_eq!(bytes.len(), (5 + 1) * 512);
    }

    #[test]
    fn same_tree_same_bytes() {
        let a = image(&sample());
        let b = image(&sample().clone());
        assert_eq!(a, b);
        // The mtime and permissions are not part of ROFS.
        let mut t = Tree::new(1);
        t.add_bytes("/etc/hello", b"hello\n".to_vec(), 0o600, "t")
            .unwrap();
        let mut u = Tree::new(2);
        u.add_bytes("/etc/hello", b"hello\n".to_vec(), 0o755, "t")
            .unwrap();
        assert_eq!(image(&t), image(&u));
    }

    #[test]
    fn empty_tree_is_a_root() {
        let bytes = image(&Tree::new(0));
        let p = parse(&bytes);
        assert_eq!(p.sb[3..], [1, 1, 0, 0, 1]);
        assert_eq!(p.inodes, vec![[DIR_MODE, 1, 0, 0]]);
    }

    #[test]
    fn host_files_are_copied() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("data");
        std::fs::write(&host, vec![7u8; 1024]).unwrap();
        let mut t = Tree::new(0);
        t.add_file("/data", FileSource::Host(host.clone()), 0o644, "t")
            .unwrap();
        let bytes = image(&t);
        assert_eq!(&bytes[512..1536], &[7u8; 1024][..]);
        assert_eq!(parse(&bytes).inodes[1], [REG_MODE, 2, 1, 1024]);
    }

    #[test]
    fn what_rofs_cannot_hold_is_named() {
        let mut t = Tree::new(0);
        t.add_device("/dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        let e = write(&t, Vec::new()).unwrap_err();
        assert!(matches!(e, RofsError::Unsupported { ref path, .. } if path == "/dev/console"));
        assert!(e.to_string().contains("/dev/console"), "{e}");

        let long = format!("/{}", "n".repeat(MAX_NAME + 1));
        let mut t = Tree::new(0);
        t.add_bytes(&long, vec![], 0o644, "t").unwrap();
        let e = write(&t, Vec::new()).unwrap_err();
        assert!(
            matches!(e, RofsError::NameTooLong { ref path, len: 256, max: 255 } if *path == long)
        );
        // 255 bytes is fine.
        let mut t = Tree::new(0);
        t.add_bytes(&long[..256], vec![], 0o644, "t").unwrap();
        write(&t, Vec::new()).unwrap();

        let mut t = Tree::new(0);
        t.add_symlink("/l", &"t".repeat(MAX_SYMLINK + 1), "t")
            .unwrap();
        let e = write(&t, Vec::new()).unwrap_err();
        assert!(matches!(e, RofsError::SymlinkTooLong { ref path, .. } if path == "/l"));
    }

    #[test]
    fn through_image_write_an_error_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("root.rofs");
        let mut t = sample();
        t.add_device("/dev/null", DeviceKind::Char, 1, 3, 0o666)
            .unwrap();
        let e = crate::image::write(&t, &crate::image::Format::Rofs, &dest).unwrap_err();
        assert!(e.to_string().contains("/dev/null"), "{e}");
        assert!(e.to_string().contains("root.rofs"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);

        let w = crate::image::write(&sample(), &crate::image::Format::Rofs, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), image(&sample()));
        assert_eq!(w.size, 6 * 512);
        assert_eq!(crate::image::Format::Rofs.label(), "osv-rofs");
    }
}
