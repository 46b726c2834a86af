//! sha256 digests: of bytes, of files, of whole directory trees, and of a stream as it is
//! written; and the memo of file digests ([`use_memo`]) that spares reading a file again
//! when `stat` says it has not changed. Must not: decide what is hashed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(Sha256::digest(b))
}

pub fn sha256_reader(mut r: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(h.finalize()))
}

/// The sha256 of the file at `p`: from the memo when one is in use ([`use_memo`]) and
/// the file's stamp is the one it was hashed with, else read and hashed (and memoised).
pub fn sha256_file(p: &Path) -> io::Result<String> {
    let mut guard = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    let Some(memo) = guard.as_mut() else {
        drop(guard);
        return sha256_reader(fs::File::open(p)?);
    };
    let path = std::path::absolute(p)?;
    let key = path.to_string_lossy().into_owned();
    let before = SystemTime::now();
    let file = fs::File::open(&path)?;
    let stamp = Stamp::of(&file.metadata()?);
    if let Some(r) = memo.records.get(&key) {
        if r.stamp == stamp && r.trusted() {
            memo.used.insert(key);
            return Ok(r.sha256.clone());
        }
    }
    // Hashing without the lock: other threads may hash other files meanwhile.
    drop(guard);
    let sha256 = sha256_reader(&file)?;
    let after = Stamp::of(&fs::metadata(&path)?);
    let mut guard = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(memo) = guard.as_mut() {
        if after == stamp {
            let hashed_at_ns = before
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            memo.records.insert(
                key.clone(),
                Record {
                    stamp,
                    hashed_at_ns,
                    sha256: sha256.clone(),
                },
            );
            memo.used.insert(key);
            memo.dirty = true;
        }
    }
    Ok(sha256)
}

/// How long after a file's last change its stamp is trusted: a write within one tick of
/// the file system's clock (a few ms) can leave size and times as they were, so a file
/// hashed sooner than this after its change is hashed again next time (git's "racily
/// clean" rule).
pub const RACY: Duration = Duration::from_millis(100);

/// At most this many files are remembered; beyond it, only those used by this process.
const MEMO_MAX: usize = 50_000;

/// What `stat` says of a file, as the memo compares it: every write changes the ctime
/// (which no user call sets), a replaced file has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    stamp: Stamp,
    /// When hashing began (the stamp was taken after it).
    hashed_at_ns: i64,
    sha256: String,
}

impl Record {
    fn trusted(&self) -> bool {
        self.stamp.ctime_ns.max(self.stamp.mtime_ns) + RACY.as_nanos() as i64 <= self.hashed_at_ns
    }
}

struct Memo {
    file: PathBuf,
    records: BTreeMap<String, Record>,
    used: std::collections::BTreeSet<String>,
    dirty: bool,
}

static MEMO: Mutex<Option<Memo>> = Mutex::new(None);

/// From now on, [`sha256_file`] remembers digests in `file` (read now; a missing or
/// unreadable memo starts empty) and trusts a remembered digest while the file's path,
/// device, inode, size, mtime and ctime are those it was hashed with, and it was hashed
/// at least [`RACY`] after its last change. [`save_memo`] writes it back.
pub fn use_memo(file: &Path) {
    let records = fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    *MEMO.lock().unwrap_or_else(|e| e.into_inner()) = Some(Memo {
        file: file.to_path_buf(),
        records,
        used: Default::default(),
        dirty: false,
    });
}

/// Writes the memo back (atomically: a temp file renamed over it; a concurrent process's
/// memo may win, which costs it nothing but digests) when something was added. Errors
/// are the caller's to ignore: the memo only saves time.
pub fn save_memo() -> io::Result<()> {
    let mut guard = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    let Some(memo) = guard.as_mut().filter(|m| m.dirty) else {
        return Ok(());
    };
    if memo.records.len() > MEMO_MAX {
        let used = std::mem::take(&mut memo.used);
        memo.records.retain(|k, _| used.contains(k));
        memo.used = used;
    }
    let dir = memo.file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&serde_json::to_vec(&memo.records)?)?;
    tmp.persist(&memo.file).map_err(|e| e.error)?;
    memo.dirty = false;
    Ok(())
}

/// Stops using the memo (without saving it).
pub fn drop_memo() {
    *MEMO.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The names in `dir`, sorted (bytewise): every walk whose result must not depend on
/// the file system's directory order.
pub fn sorted_names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// A digest of a directory tree: sorted relative paths, their type, executable bit, and
/// content (or symlink target). Independent of mtimes, owners and directory order.
/// An error names the file or directory it is about.
pub fn sha256_tree(root: &Path) -> Result<String, (PathBuf, io::Error)> {
    let mut h = Sha256::new();
    walk(root, root, &mut h)?;
    Ok(hex(h.finalize()))
}

fn walk(root: &Path, dir: &Path, h: &mut Sha256) -> Result<(), (PathBuf, io::Error)> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    for n in sorted_names(dir).map_err(at(dir))? {
        let p = dir.join(&n);
        let rel = p.strip_prefix(root).unwrap_or(&p);
        let meta = fs::symlink_metadata(&p).map_err(at(&p))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        if meta.file_type().is_symlink() {
            h.update(b"l");
            h.update(
                fs::read_link(&p)
                    .map_err(at(&p))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if meta.is_dir() {
            h.update(b"d");
            walk(root, &p, h)?;
        } else if !meta.is_file() {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file, directory or symlink",
            );
            return Err((p, e));
        } else {
            let x = meta.permissions().mode() & 0o100 != 0;
            h.update(if x { b"x" } else { b"f" });
            h.update(sha256_file(&p).map_err(at(&p))?.as_bytes());
        }
        h.update([0]);
    }
    Ok(())
}

/// Passes writes through to `inner`, counting bytes and hashing them.
pub struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }
    /// Returns the inner writer, the byte count and the hex sha256.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.len, hex(self.hash.finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// The memo is process-wide: one test uses it, start to end.
    #[test]
    fn the_memo_trusts_an_unchanged_stamp_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let memo = d.path().join("memo.json");
        let (old, fresh) = (d.path().join("old"), d.path().join("fresh"));
        fs::write(&old, b"old").unwrap();
        // Waiting (not timing): `old` must have changed more than RACY before it is hashed.
        std::thread::sleep(RACY + Duration::from_millis(50));
        fs::write(&fresh, b"fresh").unwrap();
        use_memo(&memo);
        assert_eq!(sha256_file(&old).unwrap(), sha256_bytes(b"old"));
        assert_eq!(sha256_file(&fresh).unwrap(), sha256_bytes(b"fresh"));
        save_memo().unwrap();
        drop_memo();

        // Make the memo lie about both files: only the trusted record is believed, which
        // shows a trusted file is not read again.
        let text = fs::read_to_string(&memo).unwrap();
        let lie = "0".repeat(64);
        let text = text
            .replace(&sha256_bytes(b"old"), &lie)
            .replace(&sha256_bytes(b"fresh"), &lie);
        fs::write(&memo, text).unwrap();
        use_memo(&memo);
        assert_eq!(sha256_file(&old).unwrap(), lie, "stamp unchanged, not racy");
        assert_eq!(
            sha256_file(&fresh).unwrap(),
            sha256_bytes(b"fresh"),
            "hashed within RACY of its change: read again"
        );
        fs::write(&old, b"new").unwrap();
        assert_eq!(sha256_file(&old).unwrap(), sha256_bytes(b"new"), "written");
        drop_memo();
        assert_eq!(sha256_file(&old).unwrap(), sha256_bytes(b"new"), "no memo");
    }

    #[test]
    fn tree_digest_ignores_mtime_but_not_content() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("a")).unwrap();
        fs::write(d.path().join("a/f"), b"1").unwrap();
        let one = sha256_tree(d.path()).unwrap();
        fs::write(d.path().join("a/f"), b"1").unwrap();
        assert_eq!(one, sha256_tree(d.path()).unwrap());
        fs::write(d.path().join("a/f"), b"2").unwrap();
        assert_ne!(one, sha256_tree(d.path()).unwrap());
    }
}
