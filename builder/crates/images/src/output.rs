//! Atomic outputs.
//!
//! Owns: writing one artefact atomically ([`AtomicFile`]: an unnamed `O_TMPFILE` in the
//! destination directory, synced, given its name by `linkat` + `rename`, directory
//! synced: a killed writer leaves nothing, a failed one the previous artefact), and
//! replacing a build's whole output set as one unit ([`OutputSet`]: a locked sibling
//! staging dir swapped in with `renameat2(RENAME_EXCHANGE)`; staging dirs of dead builds
//! are removed by the next build in the same output root).
//!
//! Must not: know what it writes (which files of a previous set to carry over is the
//! caller's predicate).

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
    /// Only on file systems without `O_TMPFILE`: a named temp file (left behind by SIGKILL).
    named: Option<tempfile::NamedTempFile>,
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
        let (named, file) = match unnamed_file(dir) {
            Ok(f) => (None, f),
            Err(e) if tmpfile_unsupported(&e) => {
                let tmp = named_temp_in(dir).map_err(|e| err(e.source))?;
                let file = tmp.reopen().map_err(err)?;
                (Some(tmp), file)
            }
            Err(e) => return Err(err(e)),
        };
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            named,
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

    /// Flushes, fsyncs, gives the file its final name and fsyncs the directory.
    pub fn commit(self) -> Result<Written, OutputError> {
        let dest = self.dest.clone();
        let err = |source| OutputError {
            path: dest.clone(),
            source,
        };
        let (buf, size, sha256) = self.writer.finish();
        let file = buf.into_inner().map_err(|e| err(e.into_error()))?;
        // Temp files are created 0600; the final bits are set before the file has a name.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(err)?;
        file.sync_all().map_err(err)?;
        match self.named {
            Some(tmp) => {
                drop(file);
                tmp.persist(&self.dest).map_err(|e| err(e.error))?;
            }
            None => {
                // linkat cannot replace: link under a fresh temp name, then rename over
                // the destination (the name exists only between the two calls).
                let linked = tempfile::Builder::new()
                    .prefix(".beambake-")
                    .suffix(".tmp")
                    .make_in(parent_dir(&self.dest), |p| link_unnamed(&file, p))
                    .map_err(err)?;
                linked.persist(&self.dest).map_err(|e| err(e.error))?;
            }
        }
        sync_dir(&self.dest).map_err(err)?;
        Ok(Written {
            path: self.dest,
            size,
            sha256,
        })
    }
}

/// Whether [`commit_named`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clobber {
    Replace,
    /// An existing `dest` is kept and the commit fails with `AlreadyExists`.
    Keep,
}

/// A named temp file in `dir` (`.beambake-XXXXXX.tmp`, mode 0600) for a writer that needs
/// a path (an external tool); finished by [`commit_named`]. Left behind only by SIGKILL.
pub fn named_temp_in(dir: &Path) -> Result<tempfile::NamedTempFile, OutputError> {
    tempfile::Builder::new()
        .prefix(".beambake-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|source| OutputError {
            path: dir.to_path_buf(),
            source,
        })
}

/// Gives a finished named temp file its final name as [`AtomicFile::commit`] does:
/// permission bits `mode`, fsync, size and sha256 read back, rename to `dest` (with
/// [`Clobber::Keep`], only where `dest` does not exist), fsync of the directory.
pub fn commit_named(
    tmp: tempfile::NamedTempFile,
    dest: &Path,
    mode: u32,
    clobber: Clobber,
) -> Result<Written, OutputError> {
    let err = |source| OutputError {
        path: dest.to_path_buf(),
        source,
    };
    use std::os::unix::fs::PermissionsExt;
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.sync_all().map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    let sha256 = crate::digest::sha256_file(tmp.path()).map_err(err)?;
    match clobber {
        Clobber::Replace => tmp.persist(dest),
        Clobber::Keep => tmp.persist_noclobber(dest),
    }
    .map_err(|e| err(e.error))?;
    sync_dir(dest).map_err(err)?;
    Ok(Written {
        path: dest.to_path_buf(),
        size,
        sha256,
    })
}

/// An unnamed regular file in `dir` (`O_TMPFILE`, mode 0600): nothing to clean up if the
/// writer dies.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
}

/// Errors with which a file system says it has no `O_TMPFILE`.
fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    )
}

/// Gives the unnamed `file` the name `path` (linkat; through `/proc/self/fd` when
/// `AT_EMPTY_PATH` needs a capability this process lacks).
fn link_unnamed(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &[u8]| {
        std::ffi::CString::new(p).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let new = c(path.as_os_str().as_bytes())?;
    let empty = c(b"")?;
    // SAFETY: valid fd and NUL-terminated paths.
    let r = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            new.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOENT)) {
        return Err(e);
    }
    let proc_path = c(format!("/proc/self/fd/{}", file.as_raw_fd()).as_bytes())?;
    // SAFETY: NUL-terminated paths.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            new.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

/// A build's output set under construction, replaced as one unit.
///
/// Lives in `ROOT/.NAME.build-XXXXXX`, a sibling of `ROOT/NAME`, locked for as long
/// as this value lives. [`OutputSet::commit`] carries the previous set's files that the
/// caller says are not the build's (data disks, console logs) into the new set by hard
/// link, exchanges the two dirs with `renameat2(RENAME_EXCHANGE)` (a plain rename when
/// there is no previous set), syncs `ROOT` and removes the previous set: a reader sees
/// the old set or the new one, never a mix. Dropped uncommitted (a failed build), the
/// staging dir is removed; left by a killed build, it is removed by the next
/// [`OutputSet::begin`] in `ROOT` (its lock is free). Staging and swapping hold a lock
/// on `ROOT`, so a live build's dir is never mistaken for a dead one's.
pub struct OutputSet {
    root: PathBuf,
    name: String,
    staging: PathBuf,
    /// The staging dir, locked: the sign that its builder is alive.
    lock: File,
    committed: bool,
}

/// Marks staging dirs in an output root: `.NAME.build-XXXXXX`.
const STAGING_MARK: &str = ".build-";

impl OutputSet {
    /// Removes the staging dirs of dead builds in `root` and starts a new set that will
    /// become `root/name`.
    pub fn begin(root: &Path, name: &str) -> Result<OutputSet, OutputError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutputError { path, source }
        };
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(err(&root.join(name))(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an output set's name is a plain file name",
            )));
        }
        fs::create_dir_all(root).map_err(err(root))?;
        let root_lock = File::open(root).map_err(err(root))?;
        lock_file(&root_lock).map_err(err(root))?;
        remove_stale(root)?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}{STAGING_MARK}"))
            .tempdir_in(root)
            .map_err(err(root))?
            .keep();
        let lock = (|| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;
            let lock = File::open(&staging)?;
            lock.try_lock().map_err(io::Error::from)?;
            Ok(lock)
        })()
        .map_err(|source| {
            let _ = fs::remove_dir_all(&staging);
            err(&staging)(source)
        })?;
        Ok(OutputSet {
            root: root.to_path_buf(),
            name: name.to_string(),
            staging,
            lock,
            committed: false,
        })
    }

    /// Where the set is written until [`OutputSet::commit`].
    pub fn dir(&self) -> &Path {
        &self.staging
    }

    /// Where the set will be once committed: `ROOT/NAME`.
    pub fn final_dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// Makes the set `ROOT/NAME`, carrying over each regular file of the previous set
    /// whose name `carry` accepts and that the new set does not have. Returns the final
    /// dir.
    pub fn commit(mut self, carry: &dyn Fn(&str) -> bool) -> Result<PathBuf, OutputError> {
        let dest = self.final_dir();
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutputError { path, source }
        };
        self.lock.sync_all().map_err(err(&self.staging))?;
        let root_lock = File::open(&self.root).map_err(err(&self.root))?;
        lock_file(&root_lock).map_err(err(&self.root))?;
        let previous =
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => true,
                Ok(_) => return Err(err(&dest)(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory (beambake replaces only its own output dirs)",
                ))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(err(&dest)(e)),
            };
        if previous {
            carry_over(&dest, &self.staging, carry)?;
            match rename_exchange(&self.staging, &dest) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                    // No RENAME_EXCHANGE on this file system: move the old set aside
                    // first (for a moment there is no set at all, never a mixed one).
                    let mut aside = self.staging.clone().into_os_string();
                    aside.push(".old");
                    let aside = PathBuf::from(aside);
                    fs::rename(&dest, &aside).map_err(err(&dest))?;
                    fs::rename(&self.staging, &dest).map_err(err(&dest))?;
                    fs::rename(&aside, &self.staging).map_err(err(&aside))?;
                }
                Err(e) => return Err(err(&dest)(e)),
            }
        } else {
            fs::rename(&self.staging, &dest).map_err(err(&dest))?;
        }
        self.committed = true;
        root_lock.sync_all().map_err(err(&self.root))?;
        if previous {
            // The previous set now lies at the staging path. Should this fail, the next
            // build removes what is left (nobody holds its lock).
            let _ = fs::remove_dir_all(&self.staging);
        }
        Ok(dest)
    }
}

impl Drop for OutputSet {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Takes the exclusive lock on `f`, waiting for it; retried on EINTR. The one way
/// beambake locks (std's `File::lock`: a `flock` on Linux, released with the last
/// descriptor, so a dead holder frees it); without waiting: `File::try_lock`.
pub fn lock_file(f: &File) -> io::Result<()> {
    loop {
        match f.lock() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Removes every staging dir in `root` whose lock can be taken (its build is dead).
/// The caller holds `root`'s lock.
fn remove_stale(root: &Path) -> Result<(), OutputError> {
    let entries = fs::read_dir(root).map_err(|source| OutputError {
        path: root.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.contains(STAGING_MARK)) {
            continue;
        }
        let path = e.path();
        // Only real dirs: a symlink is not ours, and is never followed.
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let free = File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
        if free {
            fs::remove_dir_all(&path).map_err(|source| OutputError { path, source })?;
        }
    }
    Ok(())
}

/// Hard-links (copies, where links are refused) the regular files of `from` that
/// `carry` accepts and `to` lacks into `to`.
fn carry_over(from: &Path, to: &Path, carry: &dyn Fn(&str) -> bool) -> Result<(), OutputError> {
    let entries = fs::read_dir(from).map_err(|source| OutputError {
        path: from.to_path_buf(),
        source,
    })?;
    for e in entries {
        let e = e.map_err(|source| OutputError {
            path: from.to_path_buf(),
            source,
        })?;
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        let src = e.path();
        let dst = to.join(&name);
        if !carry(n) || !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
            continue;
        }
        if fs::symlink_metadata(&dst).is_ok() {
            continue;
        }
        fs::hard_link(&src, &dst)
            .or_else(|_| fs::copy(&src, &dst).map(drop))
            .map_err(|source| OutputError { path: src, source })?;
    }
    Ok(())
}

/// Atomically exchanges the dirs `a` and `b` (`renameat2(RENAME_EXCHANGE)`).
fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: NUL-terminated paths; plain syscall.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
    fn a_file_being_written_has_no_name() {
        let d = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(&d.path().join("img")).unwrap();
        f.write_all(b"data").unwrap();
        f.flush().unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
        f.commit().unwrap();
        assert_eq!(names(d.path()), ["img"]);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn set_with(root: &Path, files: &[(&str, &str)]) -> OutputSet {
        let set = OutputSet::begin(root, "app").unwrap();
        for (n, text) in files {
            write_bytes(&set.dir().join(n), text.as_bytes()).unwrap();
        }
        set
    }

    fn is_data(n: &str) -> bool {
        n.starts_with("data-")
    }

    #[test]
    fn a_set_replaces_the_previous_one_whole_and_carries_run_files() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let set = set_with(root, &[("img", "old"), ("manifest.json", "m1"), ("k", "k")]);
        assert!(set.dir().starts_with(root) && set.dir() != root.join("app"));
        assert!(!root.join("app").exists(), "visible before commit");
        assert_eq!(set.commit(&is_data).unwrap(), root.join("app"));
        assert_eq!(names(root), ["app"]);
        let app = root.join("app");
        assert_eq!(fs::metadata(&app).unwrap().mode() & 0o777, 0o755);
        fs::write(app.join("data-1.ext4"), "user data").unwrap();
        fs::write(app.join("data-2.ext4"), "stale").unwrap();
        let ino = fs::metadata(app.join("data-1.ext4")).unwrap().ino();

        let set = set_with(
            root,
            &[
                ("img", "new"),
                ("manifest.json", "m2"),
                ("data-2.ext4", "built"),
            ],
        );
        // The previous set is untouched until the swap.
        assert_eq!(fs::read_to_string(app.join("img")).unwrap(), "old");
        set.commit(&is_data).unwrap();
        assert_eq!(names(root), ["app"]);
        assert_eq!(
            names(&app),
            ["data-1.ext4", "data-2.ext4", "img", "manifest.json"]
        );
        assert_eq!(fs::read_to_string(app.join("img")).unwrap(), "new");
        assert_eq!(fs::read_to_string(app.join("manifest.json")).unwrap(), "m2");
        // Carried by hard link (a running VM's disk stays the same file); the new set's
        // own file of the same name wins.
        assert_eq!(fs::metadata(app.join("data-1.ext4")).unwrap().ino(), ino);
        assert_eq!(
            fs::read_to_string(app.join("data-2.ext4")).unwrap(),
            "built"
        );
    }

    #[test]
    fn a_failed_build_leaves_the_previous_set_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        set_with(root, &[("img", "old")]).commit(&is_data).unwrap();
        drop(set_with(root, &[("img", "half")]));
        assert_eq!(names(root), ["app"]);
        assert_eq!(names(&root.join("app")), ["img"]);
        assert_eq!(fs::read_to_string(root.join("app/img")).unwrap(), "old");
        // A first build that fails leaves no (empty) set either.
        drop(OutputSet::begin(&root.join("fresh"), "app").unwrap());
        assert_eq!(names(&root.join("fresh")), Vec::<String>::new());
    }

    #[test]
    fn staging_dirs_of_dead_builds_go_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // A killed build: its staging dir, unlocked.
        let dead = root.join(".app.build-dead00");
        fs::create_dir_all(dead.join("sub")).unwrap();
        fs::write(dead.join("sub/img"), "x").unwrap();
        // A live build of another recipe: locked.
        let live = OutputSet::begin(root, "other").unwrap();
        // Not ours: a symlink with the mark, and a user's dot dir.
        std::os::unix::fs::symlink(root.join("app"), root.join(".x.build-link")).unwrap();
        fs::create_dir(root.join(".cache")).unwrap();
        let set = OutputSet::begin(root, "app").unwrap();
        assert!(!dead.exists(), "stale staging dir kept");
        assert!(live.dir().is_dir(), "a live build's dir was removed");
        assert!(root.join(".x.build-link").symlink_metadata().is_ok());
        assert!(root.join(".cache").is_dir());
        set.commit(&is_data).unwrap();
        live.commit(&is_data).unwrap();
        assert_eq!(names(root), [".cache", ".x.build-link", "app", "other"]);
    }

    #[test]
    fn a_non_directory_in_the_way_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::write(root.join("app"), "mine").unwrap();
        let e = set_with(root, &[("img", "i")])
            .commit(&is_data)
            .unwrap_err();
        assert_eq!(e.path, root.join("app"));
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(names(root), ["app"]);
        assert_eq!(fs::read_to_string(root.join("app")).unwrap(), "mine");
        let e = OutputSet::begin(root, "../x").err().unwrap();
        assert!(e.to_string().contains("plain file name"), "{e}");
    }

    #[test]
    fn exchange_swaps_two_dirs() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("in-a"), "").unwrap();
        rename_exchange(&a, &b).unwrap();
        assert!(b.join("in-a").exists() && !a.join("in-a").exists());
        let e = rename_exchange(&a, &d.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = AtomicFile::create(Path::new("/nonexistent-dir/x/img"))
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("/nonexistent-dir/x/img: "), "{e}");
    }
}
