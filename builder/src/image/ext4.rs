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

use crate::digest::{hex, sha256_reader};
use crate::output::{parent_dir, Written};
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
    #[error("{path}: name is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    NameTooLong { path: String, len: usize },
    #[error("{path:?}: names with a newline or carriage return cannot be written (debugfs reads one command a line)")]
    Unscriptable { path: String },
    #[error("symlink {path}: target is {len} bytes long; the limit is {MAX_SYMLINK_LEN}")]
    SymlinkTooLong { path: String, len: usize },
    #[error(
        "{path}: device {major}:{minor} does not fit an ext4 device number \
         (major <= {MAX_DEVICE_MAJOR}, minor <= {MAX_DEVICE_MINOR})"
    )]
    DeviceNumber { path: String, major: u32, minor: u32 },
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
        .map_err(io_err(dir))?;
    let stage = work.path().join("root");
    let staged = stage_tree(tree, &stage)?;
    let conf = work.path().join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io_err(&conf))?;
    let script = work.path().join("fixup.debugfs");
    fs::write(&script, debugfs_script(tree)).map_err(io_err(&script))?;

    let uuid = uuid_from(&staged.digest, b"uuid");
    let hash_seed = uuid_from(&staged.digest, b"hash_seed");
    let (mut blocks, mut inodes) = estimate(tree, &staged);
    let img = image_tempfile(dir)?;
    // The estimate has headroom; should it still fall short, grow and try again (the
    // sequence of attempts is a function of the tree, so the result stays deterministic).
    let mut attempt = 0;
    loop {
        attempt += 1;
        img.as_file().set_len(0).map_err(io_err(img.path()))?;
        let mut cmd = e2fs_command(&tools.mke2fs, &conf, mtime);
        cmd.args(["-t", "ext4", "-q", "-F", "-o", "Linux", "-b", "4096", "-m", "0"])
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
/// file (see [`replace_data_disk`]). The file is sparse; its UUID is random.
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
    // 2^32 blocks of 4 KiB: the most ext4 supports without the 64bit feature, and far more
    // than a data disk file should be.
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
        .map_err(io_err(dir))?;
    let conf = work.path().join("mke2fs.conf");
    fs::write(&conf, MKE2FS_CONF).map_err(io_err(&conf))?;
    let img = image_tempfile(dir)?;
    img.as_file().set_len(bytes).map_err(io_err(img.path()))?;
    let mut cmd = Command::new(&tools.mke2fs);
    cmd.env_clear()
        .env("LC_ALL", "C")
        .env("MKE2FS_CONFIG", &conf)
        .args(["-t", "ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", label])
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
    f.seek(SeekFrom::Start(MAGIC_OFFSET)).map_err(io_err(path))?;
    let mut magic = [0u8; 2];
    f.read_exact(&mut magic).map_err(io_err(path))?;
    if u16::from_le_bytes(magic) == EXT4_MAGIC {
        return Ok(());
    }
    let what = if squashfs { "; it is a squashfs image" } else { "" };
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
    for (path, entry) in tree.iter() {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.len() > MAX_NAME_LEN {
            return Err(Ext4Error::NameTooLong {
                path: path.to_string(),
                len: name.len(),
            });
        }
        if path.contains(['\n', '\r']) {
            return Err(Ext4Error::Unscriptable {
                path: path.to_string(),
            });
        }
        match &entry.kind {
            EntryKind::Symlink(t) if t.len() > MAX_SYMLINK_LEN => {
                return Err(Ext4Error::SymlinkTooLong {
                    path: path.to_string(),
                    len: t.len(),
                })
            }
            EntryKind::Device { major, minor, .. }
                if *major > MAX_DEVICE_MAJOR || *minor > MAX_DEVICE_MINOR =>
            {
                return Err(Ext4Error::DeviceNumber {
                    path: path.to_string(),
                    major: *major,
                    minor: *minor,
                })
            }
            _ => {}
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

fn out_of_space(stderr: &str) -> bool {
    [
        "No space left",
        "Could not allocate block",
        "Could not allocate inode",
        "No free space",
        "Could not allocate",
    ]
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
    if tree.get("/").is_none() {
        fs::create_dir_all(stage).map_err(io_err(stage))?;
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
    tempfile::Builder::new()
        .prefix(".beambake-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))
}

/// Syncs the finished image, gives it mode 0644, hashes it and renames it to `dest`
/// (without replacing an existing file unless `replace`), then syncs the directory.
fn commit(img: tempfile::NamedTempFile, dest: &Path, replace: bool) -> Result<Written, Ext4Error> {
    let err = io_err(dest);
    let file = img.as_file();
    file.sync_all().map_err(io_err(dest))?;
    fs::set_permissions(img.path(), fs::Permissions::from_mode(0o644)).map_err(io_err(dest))?;
    let size = file.metadata().map_err(io_err(dest))?.len();
    let sha256 = sha256_reader(File::open(img.path()).map_err(io_err(dest))?).map_err(io_err(dest))?;
    let persisted = if replace {
        img.persist(dest)
    } else {
        img.persist_noclobber(dest)
    };
    match persisted {
        Ok(_) => {}
        Err(e) if !replace && e.error.kind() == io::ErrorKind::AlreadyExists => {
            return Err(Ext4Error::Exists {
                path: dest.to_path_buf(),
            })
        }
        Err(e) => return Err(err(e.error)),
    }
    File::open(parent_dir(dest))
        .and_then(|d| d.sync_all())
        .map_err(io_err(dest))?;
    Ok(Written {
        path: dest.to_path_buf(),
        size,
        sha256,
    })
}
