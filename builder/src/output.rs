//! Atomic outputs: every artefact is written to a temporary file in its destination
//! directory, synced, renamed over the final name, and the directory is synced. A failed or
//! interrupted build leaves the previous artefact untouched and no partial file under the
//! final name (a leftover `.beambake-*` temp file at worst, after SIGKILL).
//!
//! Must not: know what it writes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::digest::HashWriter;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// A file being written; becomes visible under its final name only on [`AtomicFile::commit`].
pub struct AtomicFile {
    dest: PathBuf,
    tmp: tempfile::NamedTempFile,
    writer: HashWriter<BufWriter<File>>,
    mode: u32,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<AtomicFile, OutputError> {
        let err = |source| OutputError {
            path: dest.to_path_buf(),
            source,
        };
        let dir = parent_dir(dest);
        if dest.is_dir() {
            return Err(err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "output path is a directory",
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".beambake-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(err)?;
        let file = tmp.reopen().map_err(err)?;
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            tmp,
            writer: HashWriter::new(BufWriter::with_capacity(1 << 20, file)),
            mode: 0o644,
        })
    }

    /// Permission bits the file gets before it appears under its final name (default
    /// 0644; 0600 for secrets, which are never visible with wider bits).
    pub fn set_mode(&mut self, mode: u32) {
        self.mode = mode;
    }

    pub fn writer(&mut self) -> &mut HashWriter<BufWriter<File>> {
        &mut self.writer
    }

    /// Flushes, fsyncs, renames into place and fsyncs the directory.
    pub fn commit(self) -> Result<Written, OutputError> {
        let dest = self.dest.clone();
        let err = |source| OutputError {
            path: dest.clone(),
            source,
        };
        let (buf, size, sha256) = self.writer.finish();
        let file = buf.into_inner().map_err(|e| err(e.into_error()))?;
        file.sync_all().map_err(err)?;
        drop(file);
        // tempfile creates 0600; set the final bits before the rename.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(self.tmp.path(), fs::Permissions::from_mode(self.mode)).map_err(err)?;
        self.tmp.persist(&self.dest).map_err(|e| err(e.error))?;
        sync_dir(&self.dest).map_err(err)?;
        Ok(Written {
            path: self.dest,
            size,
            sha256,
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Writes `bytes` to `dest` atomically (mode 0644).
pub fn write_bytes(dest: &Path, bytes: &[u8]) -> Result<Written, OutputError> {
    write_bytes_mode(dest, bytes, 0o644)
}

/// Writes `bytes` to `dest` atomically with permission bits `mode`.
pub fn write_bytes_mode(dest: &Path, bytes: &[u8], mode: u32) -> Result<Written, OutputError> {
    let mut f = AtomicFile::create(dest)?;
    f.set_mode(mode);
    f.write_all(bytes).map_err(|source| OutputError {
        path: dest.to_path_buf(),
        source,
    })?;
    f.commit()
}

/// Copies the file `src` to `dest` atomically with permission bits `mode`, streaming
/// (a read error names `src`, a write error `dest`).
pub fn copy_file(src: &Path, dest: &Path, mode: u32) -> Result<Written, OutputError> {
    let mut input = File::open(src).map_err(|source| OutputError {
        path: src.to_path_buf(),
        source,
    })?;
    let mut f = AtomicFile::create(dest)?;
    f.set_mode(mode);
    io::copy(&mut input, f.writer()).map_err(|source| OutputError {
        path: src.to_path_buf(),
        source,
    })?;
    f.commit()
}

/// The directory holding `file` (`.` for a bare file name).
pub fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(file: &Path) -> io::Result<()> {
    File::open(parent_dir(file))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_keeps_previous() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("img");
        write_bytes(&dest, b"first").unwrap();
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"half-written").unwrap();
            // dropped without commit: a failed build
        }
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
        let w = write_bytes(&dest, b"second").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"second");
        assert_eq!(w.size, 6);
        assert_eq!(w.sha256, crate::digest::sha256_bytes(b"second"));
    }

    #[test]
    fn secrets_are_never_visible_with_wider_bits() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("cookie");
        write_bytes_mode(&dest, b"s", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_bytes(&d.path().join("img"), b"i").unwrap();
        assert_eq!(
            fs::metadata(d.path().join("img"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = AtomicFile::create(Path::new("/nonexistent-dir/x/img"))
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("/nonexistent-dir/x/img: "), "{e}");
    }
}
