//! sha256 digests: of bytes, of files, of whole directory trees, and of a stream as it is
//! written. Must not: decide what is hashed.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

pub fn sha256_file(p: &Path) -> io::Result<String> {
    sha256_reader(fs::File::open(p)?)
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
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(at(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(at(dir))?;
    names.sort();
    for n in names {
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
