//! ext4 images: a [`Tree`] as a read-only root filesystem, an empty journaled data disk,
//! and a check that a file holds an ext2/3/4 filesystem.
//!
//! Owns: how a tree becomes an ext4 image with e2fsprogs (the staging directory, the
//! `mke2fs` options and configuration, the `debugfs` script that fixes metadata), the
//! image size and inode count computed from the tree, and the data disk's layout.
//! `e2fsck -fn` and `debugfs` are the readers that judge the images.
//!
//! Must not: decide what goes into the tree, take anything from the host but file content
//! (modes, owners and times all come from the tree), need root, or leave anything behind
//! (the staging directory and the unfinished image are temporary files in the
//! destination directory).
//!
//! # How the root image is made
//!
//! 1. The tree is staged into a temporary directory: directories, regular files (copied,
//!    never hard-linked: fixing metadata on a hard link would change the host file) and
//!    symlinks. Device nodes are not staged (`mknod` needs root).
//! 2. `mke2fs -t ext4 -d STAGE` builds the filesystem. Its settings come from a
//!    configuration file written here (`MKE2FS_CONFIG`), not the host's
//!    `/etc/mke2fs.conf`, with a cleared environment: `LC_ALL=C` (so `-d` adds entries
//!    in byte order: it sorts with `alphasort`, which follows the locale) and
//!    `E2FSPROGS_FAKE_TIME` = [`Tree::mtime`] (superblock times, `crtime`). UUID and
//!    directory hash seed are derived from a digest of the tree. No journal (the image is
//!    mounted read-only), no resize inode, no reserved blocks, inode tables written
//!    rather than left for lazy init (the group descriptors' "zeroed" flags would
//!    otherwise depend on the host).
//! 3. `debugfs -w` then creates the device nodes and sets every entry's mode, uid/gid 0
//!    and atime/mtime/ctime to the tree's. This is needed because `-d` copies the staged
//!    files' `st_ctime`, which is "now" and cannot be set from user space, and their
//!    owner, which only root can change.
//!
//! The same tree gives the same bytes with the same e2fsprogs version on hosts with the
//! same `char` signedness (e2fsprogs records it in the superblock's directory hash flag:
//! x86 and arm64 differ). `/lost+found` is kept (`e2fsck` wants it), with mode 0700 and
//! the tree's mtime.
//!
//! Limits: names up to 255 bytes, no newline in names (`debugfs` reads one command a
//! line), symlink targets up to 4095 bytes, mtimes from 1 (0 means "now" to e2fsprogs)
//! to 2038-01-19 (e2fsprogs 1.47 writes the inode times of `-d` as 32-bit numbers).
//! Time grows with the square of the largest directory (libext2fs leaves `-d`
//! directories unindexed, and both `mke2fs` and `debugfs` scan them per entry): the
//! 3877 entries of /usr/lib/erlang take 1.4 s, one directory of 20 000 files takes
//! about 75 s.
//!
//! # Writing the result
//!
//! The images are produced by external tools into a named temporary file in the
//! destination directory, fsynced, renamed into place and the directory fsynced: the
//! guarantees of `output::AtomicFile`, which itself cannot be used here, as it only
//! accepts bytes written through it. Copying the image through it would write every free
//! block (an empty 1 GiB data disk would take 1 GiB on the host instead of ~20 MiB).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::output::{parent_dir, Clobber, Written};
use crate::rootfs::{DeviceKind, EntryKind, FileSource, Tree};

/// Block size of every image written here.
pub const BLOCK_SIZE: u64 = 4096;
/// Longest name (one path component) in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target in bytes.
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Largest device major number an ext4 inode can hold (Linux `new_encode_dev`).
pub const MAX_DEVICE_MAJOR: u32 = 0xfff;
/// Largest device minor number an ext4 inode can hold (Linux `new_encode_dev`).
pub const MAX_DEVICE_MINOR: u32 = 0xf_ffff;

const LIMITS: super::Limits = super::Limits {
    format: "ext4",
    name_len: MAX_NAME_LEN,
    symlink_len: MAX_SYMLINK_LEN,
    device_major: MAX_DEVICE_MAJOR,
    device_minor: MAX_DEVICE_MINOR,
};
/// Latest mtime the root image writer accepts (2038-01-19T03:14:07Z).
pub const MAX_MTIME: u64 = i32::MAX as u64;
/// Smallest data disk: room for the journal (4 MiB at this size) and some data.
pub const MIN_DATA_DISK_MIB: u64 = 16;
/// Longest volume label in bytes.
pub const MAX_LABEL_LEN: usize = 16;
/// Byte offset of the ext2/3/4 superblock magic (superblock at 1024, `s_magic` at 56).
pub const MAGIC_OFFSET: u64 = 1080;
pub const EXT4_MAGIC: u16 = 0xEF53;

/// The mke2fs configuration every image is made with: Debian 12's defaults for ext4,
/// spelled out so that the host's /etc/mke2fs.conf changes nothing.
const MKE2FS_CONF: &str = "\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	hash_alg = half_md4

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
";

/// Where the e2fsprogs binaries are looked for after `PATH` (a non-root `PATH` on Debian
/// lacks the sbin directories).
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{tool} not found in PATH or {dirs}: apt-get install e2fsprogs", dirs = SBIN_DIRS.join(", "))]
    ToolMissing { tool: &'static str },
    #[error("{tool}: {source}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Limit(#[from] super::LimitError),
    #[error("{path:?}: names with a newline or carriage return cannot be written (debugfs reads one command a line)")]
    Unscriptable { path: String },
    #[error("mtime {0} is outside 1..={MAX_MTIME}: e2fsprogs takes 0 as \"now\" and writes 32-bit inode times")]
    Mtime(u64),
    #[error("{path}: reading {from}: {source}")]
    Source {
        path: String,
        from: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: already exists; refusing to overwrite a data disk (remove it, or use replace_data_disk)")]
    Exists { path: PathBuf },
    #[error("data disk of {size_mib} MiB: at least {MIN_DATA_DISK_MIB} MiB are needed")]
    DataDiskTooSmall { size_mib: u64 },
    #[error("data disk of {size_mib} MiB is too large")]
    DataDiskTooLarge { size_mib: u64 },
    #[error("label {label:?}: {reason}")]
    Label { label: String, reason: &'static str },
    #[error("{path}: not an ext4 filesystem ({reason})")]
    NotExt4 { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Ext4Error + '_ {
    move |source| Ext4Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `tree` as an ext4 image to `dest` (atomically: a failed write leaves any
/// previous `dest` untouched). The image is meant to be mounted read-only.
pub fn write(tree: &Tree, dest: &Path) -> Result<Written, Ext4Error> {
    write_sized(tree, dest, 100)
}

/// [`write`] with the size estimate scaled to `percent` (tests use less than 100 to
/// exercise the retries).
fn write_sized(tree: &Tree, dest: &Path, percent: u64) -> Result<Written, Ext4Error> {
    let mtime = tree.mtime();
    if mtime == 0 || mtime > MAX_MTIME {
        return Err(Ext4Error::Mtime(mtime));
    }
    check_entries(tree)?;
    let tools = Tools::find(&search_path())?;

    let dir = parent_dir(dest);
    let work = tempfile::Builder::new()
        .prefix(".beambake-ext4-")
        .tempdir_in(dir)
        .map_err(io_err(dest))?;
    let stage = work.path().join("root");
    let staged = stage_tree(tree, &stage)?;
    let conf = work.path().join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io_err(&conf))?;
    let script = work.path().join("fixup.debugfs");
    fs::write(&script, debugfs_script(tree)).map_err(io_err(&script))?;

    let uuid = uuid_from(&staged.digest, b"uuid");
    let hash_seed = uuid_from(&staged.digest, b"hash_seed");
    let (blocks, inodes) = estimate(tree, &staged);
    let (mut blocks, mut inodes) = (blocks * percent / 100, inodes * percent / 100);
    let img = image_tempfile(dir)?;
    // The estimate has headroom; should it still fall short, grow and try again (the
    // sequence of attempts is a function of the tree, so the result stays deterministic).
    let mut attempt = 0;
    loop {
        attempt += 1;
        img.as_file().set_len(0).map_err(io_err(img.path()))?;
        let mut cmd = e2fs_command(&tools.mke2fs, &conf, mtime);
        cmd.args([
            "-t", "ext4", "-q", "-F", "-o", "Linux", "-b", "4096", "-m", "0",
        ])
        .args(["-O", "^has_journal,^resize_inode"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-U")
        .arg(&uuid)
        .arg("-E")
        .arg(format!(
            "hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0,nodiscard"
        ))
        .arg("-d")
        .arg(&stage)
        .arg(img.path())
        .arg(blocks.to_string());
        match run(&mut cmd, "mke2fs") {
            Err(Ext4Error::Tool { stderr, .. }) if attempt < 5 && out_of_space(&stderr) => {
                blocks += blocks / 4 + 256;
                inodes += inodes / 4 + 16;
            }
            other => {
                other?;
                break;
            }
        }
    }
    let mut cmd = e2fs_command(&tools.debugfs, &conf, mtime);
    cmd.arg("-w").arg("-f").arg(&script).arg(img.path());
    run_debugfs(&mut cmd)?;
    drop(work);
    commit(img, dest, true)
}

/// Creates an empty ext4 filesystem with a journal, `size_mib` MiB large and labelled
/// `label`, at `dest` for the guest's persistent data. Refuses to overwrite an existing
/// file (see [`replace_data_disk`]). The file is sparse (a 1 GiB disk takes under 1 MiB
/// on the host); its UUID is random. The returned sha256 reads the whole file, holes
/// included: about 2.7 s per GiB on the 2-core build VM, most of the time taken.
pub fn create_data_disk(dest: &Path, size_mib: u64, label: &str) -> Result<Written, Ext4Error> {
    data_disk(dest, size_mib, label, false)
}

/// As [`create_data_disk`], replacing whatever is at `dest`.
pub fn replace_data_disk(dest: &Path, size_mib: u64, label: &str) -> Result<Written, Ext4Error> {
    data_disk(dest, size_mib, label, true)
}

fn data_disk(dest: &Path, size_mib: u64, label: &str, replace: bool) -> Result<Written, Ext4Error> {
    if size_mib < MIN_DATA_DISK_MIB {
        return Err(Ext4Error::DataDiskTooSmall { size_mib });
    }
    // At most 2^32 blocks of 4 KiB (16 TiB).
    let bytes = size_mib
        .checked_mul(1 << 20)
        .filter(|b| b / BLOCK_SIZE <= u64::from(u32::MAX))
        .ok_or(Ext4Error::DataDiskTooLarge { size_mib })?;
    check_label(label)?;
    if !replace && fs::symlink_metadata(dest).is_ok() {
        return Err(Ext4Error::Exists {
            path: dest.to_path_buf(),
        });
    }
    let tools = Tools::find(&search_path())?;
    let dir = parent_dir(dest);
    let work = tempfile::Builder::new()
        .prefix(".beambake-ext4-")
        .tempdir_in(dir)
        .map_err(io_err(dest))?;
    let conf = work.path().join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io_err(&conf))?;
    let img = image_tempfile(dir)?;
    img.as_file().set_len(bytes).map_err(io_err(img.path()))?;
    let mut cmd = Command::new(&tools.mke2fs);
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("MKE2FS_CONFIG", &conf)
        .args([
            "-t", "ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", label,
        ])
        // The file is new, hence all zeros (and sparse): neither the journal nor the inode
        // tables need zeroing. The kernel still zeroes the inode tables in the background
        // on the first read-write mount, since the groups are not flagged as zeroed
        // (`assume_storage_prezeroed` would flag them, but needs e2fsprogs 1.47).
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(img.path());
    run(&mut cmd, "mke2fs")?;
    drop(work);
    commit(img, dest, replace)
}

/// Checks that `path` holds an ext2/3/4 filesystem (the superblock magic 0xEF53 at byte
/// 1080). Says what the file is instead when it is a squashfs image.
pub fn probe(path: &Path) -> Result<(), Ext4Error> {
    let not = |reason: String| Ext4Error::NotExt4 {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = File::open(path).map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    let mut head = [0u8; 4];
    let n = read_up_to(&mut f, &mut head).map_err(io_err(path))?;
    let squashfs = n == 4 && &head == b"hsqs";
    if len < MAGIC_OFFSET + 2 {
        return Err(not(format!(
            "the file is {len} bytes long, too short for an ext2/3/4 superblock"
        )));
    }
    f.seek(SeekFrom::Start(MAGIC_OFFSET))
        .map_err(io_err(path))?;
    let mut magic = [0u8; 2];
    f.read_exact(&mut magic).map_err(io_err(path))?;
    if u16::from_le_bytes(magic) == EXT4_MAGIC {
        return Ok(());
    }
    let what = if squashfs {
        "; it is a squashfs image"
    } else {
        ""
    };
    Err(not(format!(
        "no ext2/3/4 superblock magic at offset {MAGIC_OFFSET}{what}"
    )))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn check_label(label: &str) -> Result<(), Ext4Error> {
    let reason = if label.is_empty() {
        Some("is empty")
    } else if label.len() > MAX_LABEL_LEN {
        Some("is longer than 16 bytes")
    } else if label.chars().any(|c| c.is_control()) {
        Some("contains control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Ext4Error::Label {
            label: label.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Refuses what ext4 or the debugfs script cannot represent, naming the path.
fn check_entries(tree: &Tree) -> Result<(), Ext4Error> {
    super::check_limits(tree, &LIMITS)?;
    for (path, _) in tree.iter() {
        if path.contains(['\n', '\r']) {
            return Err(Ext4Error::Unscriptable {
                path: path.to_string(),
            });
        }
    }
    Ok(())
}

struct Tools {
    mke2fs: PathBuf,
    debugfs: PathBuf,
}

impl Tools {
    fn find(dirs: &[PathBuf]) -> Result<Tools, Ext4Error> {
        Ok(Tools {
            mke2fs: find_tool(dirs, &["mkfs.ext4", "mke2fs"])
                .ok_or(Ext4Error::ToolMissing { tool: "mkfs.ext4" })?,
            debugfs: find_tool(dirs, &["debugfs"])
                .ok_or(Ext4Error::ToolMissing { tool: "debugfs" })?,
        })
    }
}

fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SBIN_DIRS.iter().map(PathBuf::from));
    dirs
}

fn find_tool(dirs: &[PathBuf], names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|name| {
        dirs.iter().map(|d| d.join(name)).find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
    })
}

/// An e2fsprogs command with a cleared environment: only our configuration, the C
/// locale and the fake time.
fn e2fs_command(tool: &Path, conf: &Path, mtime: u64) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("MKE2FS_CONFIG", conf)
        .env("E2FSPROGS_FAKE_TIME", mtime.to_string());
    cmd
}

fn run(cmd: &mut Command, name: &str) -> Result<String, Ext4Error> {
    let out = cmd.output().map_err(|source| Ext4Error::Spawn {
        tool: PathBuf::from(cmd.get_program()),
        source,
    })?;
    if !out.status.success() {
        return Err(Ext4Error::Tool {
            tool: name.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// debugfs exits 0 even when commands of a script fail; they show up on stderr, which
/// otherwise holds only the version banner.
fn run_debugfs(cmd: &mut Command) -> Result<(), Ext4Error> {
    let stderr = run(cmd, "debugfs")?;
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Ext4Error::Tool {
            tool: "debugfs".into(),
            status: "script errors".into(),
            stderr: errors.join("\n"),
        })
    }
}

/// mke2fs -d reports a full filesystem as "Could not allocate block/inode in ext2
/// filesystem" or ENOSPC.
fn out_of_space(stderr: &str) -> bool {
    ["Could not allocate", "No space left", "No free space"]
        .iter()
        .any(|s| stderr.contains(s))
}

/// What staging learnt: a digest of the whole tree (paths, modes, content, targets,
/// devices, mtime) and the regular files' sizes in tree order.
struct Staged {
    digest: [u8; 32],
    file_sizes: Vec<u64>,
}

fn stage_tree(tree: &Tree, stage: &Path) -> Result<Staged, Ext4Error> {
    let mut h = Sha256::new();
    h.update(b"beambake ext4 v1\0");
    h.update(tree.mtime().to_le_bytes());
    let mut file_sizes = Vec::new();
    if tree.get("/").is_none() {
        fs::create_dir(stage).map_err(io_err(stage))?;
    }
    for (path, entry) in tree.iter() {
        let host = stage.join(path.trim_start_matches('/'));
        h.update(path.as_bytes());
        h.update([0]);
        h.update(entry.mode().to_le_bytes());
        match &entry.kind {
            EntryKind::Dir => {
                fs::create_dir(&host).map_err(io_err(&host))?;
            }
            EntryKind::File(src) => {
                let source_err = |source| Ext4Error::Source {
                    path: path.to_string(),
                    from: match src {
                        FileSource::Host(p) => p.display().to_string(),
                        FileSource::Bytes(_) => "generated content".into(),
                    },
                    source,
                };
                let mut reader = src.open().map_err(source_err)?;
                let mut out = HashingWriter {
                    inner: File::create(&host).map_err(io_err(&host))?,
                    hash: Sha256::new(),
                    written: 0,
                    failed: None,
                };
                if let Err(e) = io::copy(&mut reader, &mut out) {
                    return Err(match out.failed.take() {
                        Some(w) => io_err(&host)(w),
                        None => source_err(e),
                    });
                }
                h.update(out.written.to_le_bytes());
                h.update(out.hash.finalize());
                file_sizes.push(out.written);
            }
            EntryKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &host).map_err(io_err(&host))?;
                h.update(target.as_bytes());
            }
            EntryKind::Device { kind, major, minor } => {
                h.update(match kind {
                    DeviceKind::Char => b"c",
                    DeviceKind::Block => b"b",
                });
                h.update(major.to_le_bytes());
                h.update(minor.to_le_bytes());
            }
        }
        h.update([0]);
    }
    Ok(Staged {
        digest: h.finalize().into(),
        file_sizes,
    })
}

/// Writes to a file while hashing, remembering a write error apart from read errors.
struct HashingWriter {
    inner: File,
    hash: Sha256,
    written: u64,
    failed: Option<io::Error>,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A UUID (RFC 9562 version 8, "custom") from the tree digest and a purpose.
fn uuid_from(digest: &[u8; 32], purpose: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(digest);
    h.update(purpose);
    let mut b: [u8; 16] = [0; 16];
    b.copy_from_slice(&h.finalize()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Blocks and inodes for the tree, with headroom: 4 KiB blocks for file content (no
/// inline data), extent index blocks for large files, slow symlinks (targets of 60 bytes
/// or more), directory blocks (linear directories: libext2fs does not build htree
/// indexes), inode tables, bitmaps, group descriptors and superblock backups, then 3% and
/// 2 MiB on top.
fn estimate(tree: &Tree, staged: &Staged) -> (u64, u64) {
    let blocks_of = |bytes: u64| bytes.div_ceil(BLOCK_SIZE);
    let mut data: u64 = 0;
    for &size in &staged.file_sizes {
        let b = blocks_of(size);
        // An extent covers at most 32768 blocks and an inode holds 4 extents; group
        // metadata can split runs. One index block per 340 extents, generously.
        data += b + if b > 4 { 1 + b / 8192 } else { 0 };
    }
    let mut dir_bytes: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut entries: u64 = 0;
    for (path, entry) in tree.iter() {
        entries += 1;
        if let EntryKind::Symlink(t) = &entry.kind {
            if t.len() >= 60 {
                data += 1;
            }
        }
        if entry.kind == EntryKind::Dir {
            // "." and ".."
            dir_bytes.entry(path).or_insert(24);
        }
        if path != "/" {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let parent = if parent.is_empty() { "/" } else { parent };
            *dir_bytes.entry(parent).or_insert(24) += 8 + (name.len() as u64).div_ceil(4) * 4;
        }
    }
    // lost+found: 4 blocks (mke2fs makes it 16 KiB)
    data += 4;
    // A directory block holds 4096 - 12 (checksum tail) bytes of entries, and entries do
    // not span blocks (up to 263 bytes lost per block).
    let usable = BLOCK_SIZE - 12 - 264;
    data += dir_bytes.values().map(|b| b.div_ceil(usable)).sum::<u64>();

    // Reserved inodes (1..=10) and lost+found (11), then one per entry but the root.
    let inodes = (11 + entries + entries / 32 + 16).div_ceil(16) * 16;
    let inode_table = blocks_of(inodes * 256);
    let mut total = data + inode_table + 64;
    for _ in 0..2 {
        let groups = total.div_ceil(32768);
        let gdt = blocks_of(groups * 64);
        // a block and an inode bitmap per group; superblock and descriptor copies
        total = data + inode_table + groups * 2 + backup_groups(groups) * (1 + gdt) + 64;
    }
    let blocks = total + total * 3 / 100 + (2 << 20) / BLOCK_SIZE;
    (blocks, inodes)
}

/// Groups holding a superblock and descriptor copy (sparse_super: 0, 1 and the powers of
/// 3, 5 and 7).
fn backup_groups(groups: u64) -> u64 {
    let mut n = groups.min(2);
    for base in [3u64, 5, 7] {
        let mut g = base;
        while g < groups {
            n += 1;
            g *= base;
        }
    }
    n
}

/// The debugfs script: device nodes (`mknod` links into the current directory, hence the
/// `cd`), then every entry's mode, owner and times.
fn debugfs_script(tree: &Tree) -> String {
    let t = tree.mtime();
    let mut s = String::new();
    for (path, entry) in tree.iter() {
        if let EntryKind::Device { kind, major, minor } = &entry.kind {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let parent = if parent.is_empty() { "/" } else { parent };
            let k = match kind {
                DeviceKind::Char => 'c',
                DeviceKind::Block => 'b',
            };
            // debugfs's mknod takes numbers up to 65535 only: make the node, then store the
            // number the way the kernel reads it (old encoding in i_block[0] when both
            // fit a byte, else new encoding in i_block[1]).
            let (old, new) = if *major < 256 && *minor < 256 {
                (major * 256 + minor, 0)
            } else {
                (0, (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
            };
            s.push_str(&format!(
                "cd {}\nmknod {q} {k} 0 0\nsif {q} block[0] {old}\nsif {q} block[1] {new}\n",
                quote(parent),
                q = quote(name)
            ));
        }
    }
    if !s.is_empty() {
        s.push_str("cd /\n");
    }
    let root = tree.get("/").map(|e| e.mode()).unwrap_or(0o040755);
    let all = std::iter::once(("/", root)).chain(
        tree.iter()
            .filter(|(p, _)| *p != "/")
            .map(|(p, e)| (p, e.mode())),
    );
    for (path, mode) in all {
        let q = quote(path);
        s.push_str(&format!("sif {q} mode 0{mode:o}\n"));
        for field in ["uid", "gid"] {
            s.push_str(&format!("sif {q} {field} 0\n"));
        }
        for field in ["atime", "mtime", "ctime", "crtime"] {
            s.push_str(&format!("sif {q} {field} @{t}\n"));
        }
    }
    s
}

/// A debugfs argument: double-quoted, with quotes doubled (the `ss` parser's escape).
fn quote(arg: &str) -> String {
    format!("\"{}\"", arg.replace('"', "\"\""))
}

fn image_tempfile(dir: &Path) -> Result<tempfile::NamedTempFile, Ext4Error> {
    crate::output::named_temp_in(dir).map_err(|e| io_err(&e.path)(e.source))
}

/// Gives the finished image mode 0644 and its name `dest` (without replacing an existing
/// file unless `replace`), through [`crate::output::commit_named`].
fn commit(img: tempfile::NamedTempFile, dest: &Path, replace: bool) -> Result<Written, Ext4Error> {
    let clobber = if replace {
        Clobber::Replace
    } else {
        Clobber::Keep
    };
    crate::output::commit_named(img, dest, 0o644, clobber).map_err(|e| {
        if clobber == Clobber::Keep && e.source.kind() == io::ErrorKind::AlreadyExists {
            Ext4Error::Exists {
                path: dest.to_path_buf(),
            }
        } else {
            io_err(&e.path)(e.source)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_reader;
    use std::collections::BTreeMap;

    const MTIME: u64 = 1_700_000_000;

    fn tool(name: &str) -> PathBuf {
        find_tool(&search_path(), &[name])
            .unwrap_or_else(|| panic!("{name} not found: apt-get install e2fsprogs"))
    }

    /// Runs a command, returning (success, stdout, stderr).
    fn output(cmd: &mut Command) -> (bool, Vec<u8>, String) {
        let out = beambake_testkit::output(cmd);
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn fsck_clean(img: &Path) {
        let (ok, stdout, stderr) = output(Command::new(tool("e2fsck")).arg("-fn").arg(img));
        assert!(
            ok,
            "e2fsck -fn {}:\n{}{stderr}",
            img.display(),
            String::from_utf8_lossy(&stdout)
        );
    }

    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn sample(host: &Path) -> Tree {
        let mut t = Tree::new(MTIME);
        t.add_dir("/tmp", 0o1777, "t").unwrap();
        t.add_dir("/secret", 0o700, "t").unwrap();
        t.add_dir("/shared", 0o2775, "t").unwrap();
        t.add_bytes("/etc/hello", b"hello\n".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/etc/empty", Vec::new(), 0o600, "t").unwrap();
        t.add_bytes("/etc/none", b"unreadable".to_vec(), 0o000, "t")
            .unwrap();
        t.add_bytes("/bin/suid", b"#!/bin/sh\n".to_vec(), 0o4755, "t")
            .unwrap();
        t.add_bytes("/bin/sgid", b"#!/bin/sh\n".to_vec(), 0o2711, "t")
            .unwrap();
        t.add_symlink("/bin/sh", "suid", "t").unwrap();
        t.add_symlink("/bin/slow", &"d/".repeat(60), "t").unwrap();
        t.add_symlink("/lib64", "/usr/lib", "t").unwrap();
        t.add_device("/dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        t.add_device("/dev/vda", DeviceKind::Block, 254, 0, 0o660)
            .unwrap();
        t.add_device("/dev/big", DeviceKind::Char, 300, 70_000, 0o640)
            .unwrap();
        fs::write(host.join("big"), noise(3_000_001, 1)).unwrap();
        t.add_file(
            "/usr/lib/big.bin",
            FileSource::Host(host.join("big")),
            0o644,
            "t",
        )
        .unwrap();
        t.add_bytes("/usr/lib/zeros", vec![0; 100_000], 0o644, "t")
            .unwrap();
        for i in 0..1500 {
            let name = format!("/many/entry-{i:04}-{}", "x".repeat(40));
            t.add_bytes(&name, format!("{i}\n").into_bytes(), 0o644, "t")
                .unwrap();
        }
        let long = "n".repeat(MAX_NAME_LEN);
        t.add_bytes(&format!("/long/{long}"), b"long".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/odd/q\"x\ty b\\#;'", b"odd".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/odd/<12>", b"not an inode".to_vec(), 0o644, "t")
            .unwrap();
        t.add_bytes("/a-b", b"1".to_vec(), 0o644, "t").unwrap();
        t.add_bytes("/a/b", b"2".to_vec(), 0o644, "t").unwrap();
        for i in 0..4 {
            let p = host.join(format!("h{i}"));
            fs::write(&p, noise(1000 * i, i as u32)).unwrap();
            t.add_file(&format!("/host/h{i}"), FileSource::Host(p), 0o640, "t")
                .unwrap();
        }
        t
    }

    /// `debugfs stat` of every path in one debugfs run: path -> stat text.
    fn stats(img: &Path, paths: &[&str]) -> BTreeMap<String, String> {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("cmds");
        let cmds: String = paths
            .iter()
            .map(|p| format!("stat {}\n", quote(p)))
            .collect();
        fs::write(&script, cmds).unwrap();
        let (ok, stdout, stderr) = output(
            Command::new(tool("debugfs"))
                .arg("-f")
                .arg(&script)
                .arg(img),
        );
        assert!(ok, "{stderr}");
        let stdout = String::from_utf8(stdout).unwrap();
        let mut blocks = stdout.split("debugfs: stat ").skip(1);
        paths
            .iter()
            .map(|p| {
                let b = blocks.next().unwrap_or_else(|| panic!("no stat for {p}"));
                (p.to_string(), b.to_string())
            })
            .collect()
    }

    fn field<'a>(stat: &'a str, name: &str) -> &'a str {
        let at = stat
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {stat}"));
        stat[at + name.len()..].split_whitespace().next().unwrap()
    }

    #[test]
    fn image_is_clean_and_has_the_trees_metadata() {
        let d = tempfile::tempdir().unwrap();
        let tree = sample(d.path());
        let img = d.path().join("root.ext4");
        let w = write(&tree, &img).unwrap();
        assert_eq!(w.size, fs::metadata(&img).unwrap().len());
        assert_eq!(w.sha256, sha256_reader(File::open(&img).unwrap()).unwrap());
        probe(&img).unwrap();
        fsck_clean(&img);

        let paths: Vec<&str> = tree.iter().map(|(p, _)| p).collect();
        let st = stats(&img, &paths);
        let t = format!("0x{MTIME:08x}:00000000");
        for (path, e) in tree.iter() {
            let s = &st[path];
            assert!(!s.contains("File not found"), "{path}: {s}");
            let mode = u32::from_str_radix(field(s, "Mode:"), 8).unwrap();
            assert_eq!(mode, e.perm, "{path}");
            assert_eq!(field(s, "User:"), "0", "{path}");
            assert_eq!(field(s, "Group:"), "0", "{path}");
            for time in ["ctime:", "atime:", "mtime:", "crtime:"] {
                assert_eq!(field(s, time), t, "{path} {time}");
            }
            let want_type = match &e.kind {
                EntryKind::Dir => "directory",
                EntryKind::File(_) => "regular",
                EntryKind::Symlink(_) => "symlink",
                EntryKind::Device {
                    kind: DeviceKind::Char,
                    ..
                } => "character",
                EntryKind::Device {
                    kind: DeviceKind::Block,
                    ..
                } => "block",
            };
            assert_eq!(field(s, "Type:"), want_type, "{path}");
            match &e.kind {
                EntryKind::File(src) => {
                    assert_eq!(field(s, "Size:"), src.len().unwrap().to_string(), "{path}")
                }
                EntryKind::Symlink(target) => {
                    assert!(
                        s.contains(&format!("Fast link dest: \"{target}\"")) || target.len() >= 60,
                        "{path}: {s}"
                    );
                    assert_eq!(field(s, "Size:"), target.len().to_string(), "{path}");
                }
                EntryKind::Device { major, minor, .. } => {
                    assert!(
                        s.contains(&format!("major/minor number: {major:02}:{minor:02} ")),
                        "{path}: {s}"
                    );
                }
                EntryKind::Dir => {}
            }
        }
        // lost+found is the only extra entry
        let lf = &stats(&img, &["/lost+found"])["/lost+found"];
        assert_eq!(field(lf, "Mode:"), "0700");
        assert_eq!(field(lf, "ctime:"), t);
    }

    #[test]
    fn rdump_gives_back_the_content() {
        let d = tempfile::tempdir().unwrap();
        let tree = sample(d.path());
        let img = d.path().join("root.ext4");
        write(&tree, &img).unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        for top in [
            "etc", "bin", "usr", "many", "long", "odd", "host", "a", "a-b",
        ] {
            let (ok, _, stderr) = output(
                Command::new(tool("debugfs"))
                    .arg("-R")
                    .arg(format!("rdump /{top} {}", out.display()))
                    .arg(&img),
            );
            assert!(ok, "{stderr}");
        }
        let mut checked = 0;
        for (path, e) in tree.iter() {
            let p = out.join(path.trim_start_matches('/'));
            match &e.kind {
                EntryKind::File(src) => {
                    let got = fs::read(&p).unwrap_or_else(|err| panic!("{path}: {err}"));
                    assert!(got == src.read_all().unwrap(), "{path}: content differs");
                    checked += 1;
                }
                EntryKind::Symlink(target) if path.starts_with("/bin/") => {
                    assert_eq!(fs::read_link(&p).unwrap(), Path::new(target), "{path}");
                    checked += 1;
                }
                _ => {}
            }
        }
        assert!(checked > 1500, "{checked}");
    }

    #[test]
    fn same_tree_same_bytes_whatever_the_host_metadata() {
        let d = tempfile::tempdir().unwrap();
        let tree = sample(d.path());
        let a = write(&tree, &d.path().join("a.ext4")).unwrap();
        for i in 0..4 {
            let p = d.path().join(format!("h{i}"));
            let f = File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(12345))
                .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
        // a different destination directory: staging happens there
        let other = d.path().join("elsewhere");
        fs::create_dir(&other).unwrap();
        let b = write(&tree, &other.join("b.ext4")).unwrap();
        assert_eq!(a.sha256, b.sha256);
        // a different tree gives a different filesystem UUID
        let mut t2 = tree.clone();
        t2.add_bytes("/etc/more", b"x".to_vec(), 0o644, "t")
            .unwrap();
        let c = write(&t2, &d.path().join("c.ext4")).unwrap();
        assert_ne!(a.sha256, c.sha256);
        let uuid = |p: &Path| {
            let (_, out, _) = output(Command::new(tool("dumpe2fs")).arg("-h").arg(p));
            let out = String::from_utf8(out).unwrap();
            field(&out, "Filesystem UUID:").to_string()
        };
        assert_ne!(
            uuid(&d.path().join("a.ext4")),
            uuid(&d.path().join("c.ext4"))
        );
        // nothing left behind but the images and the host files
        let mut names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "a.ext4",
                "big",
                "c.ext4",
                "elsewhere",
                "h0",
                "h1",
                "h2",
                "h3"
            ]
        );
    }

    #[test]
    fn a_short_estimate_is_retried_larger() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(MTIME);
        for i in 0..300u32 {
            t.add_bytes(
                &format!("/d{}/f{i}", i % 3),
                noise(5000 + i as usize * 97, i),
                0o644,
                "t",
            )
            .unwrap();
        }
        let a = write_sized(&t, &d.path().join("a.ext4"), 40).unwrap();
        fsck_clean(&d.path().join("a.ext4"));
        let b = write_sized(&t, &d.path().join("b.ext4"), 40).unwrap();
        assert_eq!(a.sha256, b.sha256);
        let e = write_sized(&t, &d.path().join("c.ext4"), 1).unwrap_err();
        assert!(e.to_string().starts_with("mke2fs failed"), "{e}");
    }

    #[test]
    fn empty_tree() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("empty.ext4");
        write(&Tree::new(MTIME), &img).unwrap();
        fsck_clean(&img);
        let st = stats(&img, &["/"]);
        assert_eq!(field(&st["/"], "Mode:"), "0755");
    }

    #[test]
    fn unrepresentable_trees_are_clear_errors_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.ext4");
        fs::write(&img, b"previous").unwrap();
        let cases: Vec<(Tree, &str)> = vec![
            (
                {
                    let mut t = Tree::new(MTIME);
                    t.add_bytes(&format!("/etc/{}", "n".repeat(256)), vec![], 0o644, "t")
                        .unwrap();
                    t
                },
                "/etc/nnnn",
            ),
            (
                {
                    let mut t = Tree::new(MTIME);
                    t.add_bytes("/etc/a\nb", vec![], 0o644, "t").unwrap();
                    t
                },
                "\"/etc/a\\nb\": names with a newline",
            ),
            (
                {
                    let mut t = Tree::new(MTIME);
                    t.add_device("/dev/x", DeviceKind::Block, 4096, 1, 0o600)
                        .unwrap();
                    t
                },
                "/dev/x: device 4096:1",
            ),
            (Tree::new(0), "mtime 0 is outside"),
            (Tree::new(1 << 31), "mtime 2147483648 is outside"),
            (
                {
                    let mut t = Tree::new(MTIME);
                    t.add_file(
                        "/etc/gone",
                        FileSource::Host(d.path().join("gone")),
                        0o644,
                        "t",
                    )
                    .unwrap();
                    t
                },
                "/etc/gone: reading ",
            ),
        ];
        for (tree, want) in cases {
            let e = write(&tree, &img).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        assert_eq!(fs::read(&img).unwrap(), b"previous");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "leftovers");
    }

    #[test]
    fn data_disk_is_created_once_and_replaced_on_request() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("data.img");
        let w = create_data_disk(&img, 64, "beamdata").unwrap();
        assert_eq!(w.size, 64 << 20);
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
        probe(&img).unwrap();
        fsck_clean(&img);
        let (_, out, _) = output(Command::new(tool("dumpe2fs")).arg("-h").arg(&img));
        let out = String::from_utf8(out).unwrap();
        assert_eq!(field(&out, "Filesystem volume name:"), "beamdata");
        assert!(field(&out, "Filesystem features:").contains("has_journal"));
        assert!(out.contains("has_journal"), "{out}");
        // sparse: far less than 64 MiB on the host
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&img).unwrap().blocks() * 512 < 16 << 20);

        // a second create refuses and keeps the disk
        let e = create_data_disk(&img, 32, "other").unwrap_err();
        assert!(matches!(e, Ext4Error::Exists { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with(&format!("{}: already exists", img.display())));
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
        // even when it is not an image
        let other = d.path().join("notes.txt");
        fs::write(&other, b"keep me").unwrap();
        assert!(create_data_disk(&other, 32, "x").is_err());
        assert_eq!(fs::read(&other).unwrap(), b"keep me");

        let w = replace_data_disk(&img, 32, "other").unwrap();
        assert_eq!(w.size, 32 << 20);
        fsck_clean(&img);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2, "leftovers");
    }

    #[test]
    fn data_disk_arguments_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("data.img");
        for (size, label, want) in [
            (8, "data", "data disk of 8 MiB: at least 16 MiB"),
            (
                u64::MAX,
                "data",
                "data disk of 18446744073709551615 MiB is too large",
            ),
            (64, "", "label \"\": is empty"),
            (
                64,
                "seventeen-bytes!!",
                "label \"seventeen-bytes!!\": is longer",
            ),
            (64, "a\nb", "label \"a\\nb\": contains control"),
        ] {
            let e = create_data_disk(&img, size, label).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        assert!(!img.exists());
    }

    #[test]
    fn probe_tells_what_is_not_ext4() {
        let d = tempfile::tempdir().unwrap();
        let p = |name: &str| d.path().join(name);

        let short = p("short.img");
        fs::write(&short, vec![0u8; 1000]).unwrap();
        let e = probe(&short).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: not an ext4 filesystem (the file is 1000 bytes long, too short for an \
                 ext2/3/4 superblock)",
                short.display()
            )
        );

        let zeros = p("zeros.img");
        fs::write(&zeros, vec![0u8; 8192]).unwrap();
        let e = probe(&zeros).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: not an ext4 filesystem (no ext2/3/4 superblock magic at offset 1080)",
                zeros.display()
            )
        );

        // a real squashfs image (mksquashfs from squashfs-tools)
        let sq = p("root.squashfs");
        fs::create_dir(p("empty")).unwrap();
        let (ok, _, stderr) = output(
            Command::new("mksquashfs")
                .arg(p("empty"))
                .arg(&sq)
                .args(["-quiet", "-no-progress"]),
        );
        assert!(ok, "mksquashfs: {stderr} (apt-get install squashfs-tools)");
        let e = probe(&sq).unwrap_err().to_string();
        assert!(
            e.ends_with("no ext2/3/4 superblock magic at offset 1080; it is a squashfs image)"),
            "{e}"
        );

        // a real mkfs.ext4 image, and ext2
        for t in ["ext4", "ext2"] {
            let img = p(&format!("{t}.img"));
            let (ok, _, stderr) = output(
                Command::new(tool("mke2fs"))
                    .args(["-q", "-F", "-t", t])
                    .arg(&img)
                    .arg("4M"),
            );
            assert!(ok, "{stderr}");
            probe(&img).unwrap();
        }

        let e = probe(&p("missing.img")).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: ", p("missing.img").display())),
            "{e}"
        );
    }

    #[test]
    fn missing_tools_say_what_to_install() {
        let d = tempfile::tempdir().unwrap();
        let e = Tools::find(&[d.path().to_path_buf()]).err().unwrap();
        assert_eq!(
            e.to_string(),
            "mkfs.ext4 not found in PATH or /usr/sbin, /sbin, /usr/local/sbin: \
             apt-get install e2fsprogs"
        );
    }

    #[test]
    fn debugfs_quoting_and_script() {
        assert_eq!(quote("/a b"), "\"/a b\"");
        assert_eq!(quote("/q\"x"), "\"/q\"\"x\"");
        let mut t = Tree::new(7);
        t.add_device("/dev/console", DeviceKind::Char, 5, 1, 0o600)
            .unwrap();
        let s = debugfs_script(&t);
        assert!(
            s.starts_with(
                "cd \"/dev\"\nmknod \"console\" c 0 0\nsif \"console\" block[0] 1281\n\
             sif \"console\" block[1] 0\ncd /\nsif \"/\" mode 040755\n"
            ),
            "{s}"
        );
        assert!(s.contains("sif \"/dev/console\" mode 020600\n"), "{s}");
        assert!(s.contains("sif \"/dev/console\" ctime @7\n"), "{s}");
    }

    #[test]
    fn uuids_are_version_8_and_distinct_per_purpose() {
        let d = [7u8; 32];
        let u = uuid_from(&d, b"uuid");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, uuid_from(&d, b"hash_seed"));
    }
}
