//! What every kernel beambake builds from source shares ([`crate::source_kernel`],
//! [`crate::osv_kernel`]): the cache key's form, the one-build-at-a-time lock, the
//! build-in-a-temp-dir-then-rename skeleton ([`get_or_build`]), unpacking a verified
//! source tarball ([`unpack_tar_xz`]) and running a long build with its output in a log
//! file and a heartbeat to the caller's progress ([`run_logged`]).
//!
//! Cache layout: `CACHE/<kind>/<name>-<key>/` appears whole (a rename of a staged dir from
//! `CACHE/<kind>/.tmp-build-*/`), so a reader never sees a half-built result; the caller
//! says what makes a dir complete (its result file, or a marker written last).
//! Must not: know what is being built.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::kernel::{self, KernelError};

/// The lock file in `CACHE/<kind>/` that serialises builds of that kind.
pub const LOCK_FILE: &str = ".build.lock";

/// A cache key: the first 8 bytes of the hash, in hex (16 characters).
pub fn key_hex(h: Sha256) -> String {
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cache key built from tagged, length-prefixed parts (the snapshot builds' keys):
/// no two different part lists hash the same bytes.
pub struct KeyHasher(Sha256);

impl KeyHasher {
    pub fn new() -> KeyHasher {
        KeyHasher(Sha256::new())
    }

    /// Adds `bytes` under `tag`.
    pub fn part(&mut self, tag: &str, bytes: &[u8]) {
        self.0.update(tag.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// The key ([`key_hex`]).
    pub fn finish(self) -> String {
        key_hex(self.0)
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher::new()
    }
}

/// The snapshot path a caller gave (`explicit`), else the one the environment variable
/// `env` names (not empty), with where it came from for messages; `None` when neither.
pub fn snapshot_arg(explicit: Option<&Path>, env: &str) -> Option<(PathBuf, String)> {
    match explicit {
        Some(p) => Some((p.to_path_buf(), "the path given".to_string())),
        None => std::env::var_os(env)
            .filter(|v| !v.is_empty())
            .map(|v| (PathBuf::from(v), format!("${env}"))),
    }
}

/// An exclusive lock ([`beambake_images::output::lock_file`]) held until dropped.
pub struct Lock(#[allow(dead_code)] fs::File);

impl Lock {
    /// Takes the lock at `path` (created if absent), waiting while another process holds it.
    pub fn take(path: &Path) -> Result<Lock, KernelError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(kernel::io_err("opening lock", path))?;
        beambake_images::output::lock_file(&f).map_err(kernel::io_err("locking", path))?;
        Ok(Lock(f))
    }
}

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Found complete in the cache.
    Hit,
    /// Built by this call.
    Built,
}

/// The start both builders share: `None` when `final_dir` is complete, before or after
/// taking `base`'s lock (another process may have built it while this one waited); else
/// the lock, held until dropped, and a fresh temp dir in `base` (removed when dropped).
fn start(
    base: &Path,
    final_dir: &Path,
    complete: &dyn Fn(&Path) -> bool,
) -> Result<Option<(Lock, tempfile::TempDir)>, KernelError> {
    if complete(final_dir) {
        return Ok(None);
    }
    fs::create_dir_all(base).map_err(kernel::io_err("creating cache dir", base))?;
    let lock = Lock::take(&base.join(LOCK_FILE))?;
    if complete(final_dir) {
        return Ok(None);
    }
    let work = tempfile::Builder::new()
        .prefix(".tmp-build-")
        .tempdir_in(base)
        .map_err(kernel::io_err("creating temp dir in", base))?;
    Ok(Some((lock, work)))
}

/// `final_dir` (inside `base`) when `complete(final_dir)` holds; otherwise, under
/// `base/.build.lock`, checks again (another process may have built it while this one
/// waited), then calls `build(work, staged)` — `work` a fresh temp dir in `base`, removed
/// afterwards on every path; `staged` an empty dir in it to fill with the result — and
/// renames `staged` to `final_dir`. An incomplete `final_dir` left by something else is
/// moved aside and removed first.
pub fn get_or_build(
    base: &Path,
    final_dir: &Path,
    complete: &dyn Fn(&Path) -> bool,
    build: &mut dyn FnMut(&Path, &Path) -> Result<(), KernelError>,
) -> Result<Outcome, KernelError> {
    let Some((_lock, work)) = start(base, final_dir, complete)? else {
        return Ok(Outcome::Hit);
    };
    let staged = work.path().join("result");
    fs::create_dir(&staged).map_err(kernel::io_err("creating dir", &staged))?;
    build(work.path(), &staged)?;
    if final_dir.exists() {
        // Incomplete (we hold the lock, so nobody is writing it): into the temp dir,
        // which is removed when dropped.
        fs::rename(final_dir, work.path().join("stale")).map_err(kernel::io_err(
            "moving aside incomplete cache dir",
            final_dir,
        ))?;
    }
    fs::rename(&staged, final_dir).map_err(kernel::io_err(
        "moving the build result into place at",
        final_dir,
    ))?;
    Ok(Outcome::Built)
}

/// Like [`get_or_build`], for results that name their own path inside (a toolchain's
/// wrappers and specs hold absolute paths, so it cannot be built elsewhere and renamed):
/// under the lock, a stale `final_dir` is removed, then `build(work, final_dir)` fills
/// `final_dir` itself and must write what `complete` looks for last. On failure
/// `final_dir` is removed again, so only a killed build can leave one behind, and that
/// one is incomplete: the next call removes it and builds again.
pub fn get_or_build_in_place(
    base: &Path,
    final_dir: &Path,
    complete: &dyn Fn(&Path) -> bool,
    build: &mut dyn FnMut(&Path, &Path) -> Result<(), KernelError>,
) -> Result<Outcome, KernelError> {
    let Some((_lock, work)) = start(base, final_dir, complete)? else {
        return Ok(Outcome::Hit);
    };
    if final_dir.exists() {
        fs::remove_dir_all(final_dir)
            .map_err(kernel::io_err("removing incomplete cache dir", final_dir))?;
    }
    fs::create_dir(final_dir).map_err(kernel::io_err("creating dir", final_dir))?;
    let built = build(work.path(), final_dir);
    if built.is_err() {
        let _ = fs::remove_dir_all(final_dir);
    }
    built.map(|()| Outcome::Built)
}

/// A snapshot pin's text (`images/*.toml`, read as `T`) and its `sha256` field checked:
/// 64 hex digits, returned lower-case. Errors name `pin_file`.
pub fn parse_pin<T: serde::de::DeserializeOwned>(
    text: &str,
    pin_file: &str,
    sha256: impl Fn(&T) -> &str,
) -> Result<(T, String), KernelError> {
    let p: T = toml::from_str(text).map_err(|e| KernelError::PinParse {
        path: PathBuf::from(pin_file),
        message: e.to_string(),
    })?;
    let sha = sha256(&p);
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KernelError::InvalidPin {
            file: Some(PathBuf::from(pin_file)),
            reason: format!("sha256 must be 64 hex digits, got {sha:?}"),
        });
    }
    let sha = sha.to_ascii_lowercase();
    Ok((p, sha))
}

/// Checks that `snapshot`'s sha256 is `expected`, the pin in `pin_file`.
pub fn verify_snapshot(snapshot: &Path, expected: &str, pin_file: &str) -> Result<(), KernelError> {
    let actual = beambake_images::digest::sha256_file(snapshot)
        .map_err(kernel::io_err("reading", snapshot))?;
    if actual != expected {
        return Err(KernelError::SnapshotMismatch {
            file: snapshot.to_path_buf(),
            pin_file: pin_file.into(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Applies `patches` ((file name, text), in order) to the unpacked tree `tree`: exact
/// lines, no fuzz, all or nothing. Errors name `patch_dir` and `pin_file`.
pub fn apply_patches(
    tree: &Path,
    patches: &[(&str, &str)],
    patch_dir: &str,
    pin_file: &str,
) -> Result<(), KernelError> {
    let bad = |dir: &Path, reason: String| KernelError::BadPackage {
        pin_spec: pin_file.into(),
        dir: dir.to_path_buf(),
        reason,
    };
    let mut parsed = Vec::new();
    for (name, text) in patches {
        parsed.push(
            beambake_patch::patch::Patch::parse_str(name, text)
                .map_err(|e| bad(Path::new(patch_dir), e.to_string()))?,
        );
    }
    beambake_patch::patch::apply(tree, &parsed, &beambake_patch::patch::Options::default())
        .map(drop)
        .map_err(|e| bad(tree, format!("applying {patch_dir}: {e}")))
}

/// The first line of `--version` of each of `compilers` (or "NAME: missing"), one per
/// line: the part of a cache key that says which compiler built it.
pub fn compiler_version(compilers: &[&str]) -> String {
    compilers
        .iter()
        .map(|cc| {
            Command::new(cc)
                .arg("--version")
                .env("LC_ALL", "C")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("{cc}: missing"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unpacks `tarball` (xz tar) into `dest` with GNU tar. Only for a file whose sha256 the
/// caller has checked against a pin: the content is then the reviewed snapshot, and GNU
/// tar still refuses members that leave `dest` (`..`, absolute names are made relative);
/// owners are not restored.
pub fn unpack_tar_xz(tarball: &Path, dest: &Path, what: &str) -> Result<(), KernelError> {
    fs::create_dir_all(dest).map_err(kernel::io_err("creating dir", dest))?;
    kernel::run(
        Command::new("tar")
            .arg("--no-same-owner")
            .arg("-xJf")
            .arg(tarball)
            .arg("-C")
            .arg(dest),
        &format!("tar -xJf {}", tarball.display()),
        dest,
        what,
    )
}

/// How often [`run_logged`] tells `progress` the build still runs.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Runs `cmd` (stdin null) with stdout and stderr appended to `log`, telling `progress`
/// every [`HEARTBEAT`] the elapsed time and the log's last line. On failure the error
/// names `display`, the exit status, the log's last lines and the log's path.
pub fn run_logged(
    cmd: &mut Command,
    display: &str,
    log: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), KernelError> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(kernel::io_err("opening log", log))?;
    let f2 = f.try_clone().map_err(kernel::io_err("opening log", log))?;
    cmd.env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2);
    let dir = log.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut child = cmd.spawn().map_err(|source| KernelError::CommandNotRun {
        command: display.to_string(),
        dir: dir.clone(),
        hint: String::new(),
        source,
    })?;
    let start = Instant::now();
    let mut next = HEARTBEAT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(kernel::io_err("waiting for the build of", log)(e));
            }
        }
        if start.elapsed() >= next {
            next += HEARTBEAT;
            progress(&format!(
                "{display}: {} s, {}",
                start.elapsed().as_secs(),
                last_line(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if status.success() {
        return Ok(());
    }
    let status = match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    };
    Err(KernelError::CommandFailed {
        command: display.to_string(),
        dir,
        status,
        stderr_tail: tail(log, 4096)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("; "),
        hint: format!(" (whole log: {})", log.display()),
    })
}

/// The last `max` bytes of `path` (lossy UTF-8; empty when unreadable).
fn tail(path: &Path, max: u64) -> String {
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

/// The last non-empty line of `path`, at most 160 characters.
fn last_line(path: &Path) -> String {
    let t = tail(path, 1024);
    let line = t.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.trim().chars().take(160).collect()
}

/// The Debian packages providing the tools of `tools` ((program, package) pairs) that are
/// not on `PATH`.
pub fn missing_tools<'a>(tools: &[(&str, &'a str)]) -> Vec<&'a str> {
    let mut v: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| beambake_images::host::which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    v.dedup();
    v
}

/// Copies `from` to `to`, naming `from` in the error.
pub fn copy(from: &Path, to: &Path) -> Result<(), KernelError> {
    fs::copy(from, to)
        .map(drop)
        .map_err(kernel::io_err("copying", from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::path::PathBuf;

    #[test]
    fn key_is_16_hex_of_the_hash() {
        let mut h = Sha256::new();
        h.update(b"abc");
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(key_hex(h), "ba7816bf8f01cfea");
    }

    #[test]
    fn builds_once_then_hits() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("kind");
        let fin = base.join("x-key");
        let complete = |p: &Path| p.join(".complete").is_file();
        let calls = Cell::new(0);
        let mut build = |work: &Path, staged: &Path| {
            calls.set(calls.get() + 1);
            assert!(work.starts_with(&base));
            fs::write(staged.join("out"), "x").unwrap();
            fs::write(staged.join(".complete"), "k").unwrap();
            Ok(())
        };
        assert_eq!(
            get_or_build(&base, &fin, &complete, &mut build).unwrap(),
            Outcome::Built
        );
        assert_eq!(
            get_or_build(&base, &fin, &complete, &mut build).unwrap(),
            Outcome::Hit
        );
        assert_eq!(calls.get(), 1);
        assert_eq!(fs::read_to_string(fin.join("out")).unwrap(), "x");
        // No temp dir left behind.
        let left: Vec<_> = fs::read_dir(&base)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn an_incomplete_dir_is_rebuilt_and_a_failed_build_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("kind");
        let fin = base.join("x-key");
        fs::create_dir_all(&fin).unwrap();
        fs::write(fin.join("half"), "").unwrap();
        let complete = |p: &Path| p.join(".complete").is_file();
        let err = get_or_build(&base, &fin, &complete, &mut |_, _| {
            Err(KernelError::BadPackage {
                pin_spec: "p".into(),
                dir: PathBuf::from("d"),
                reason: "boom".into(),
            })
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(fin.join("half").exists(), "a failed build touches nothing");
        let out = get_or_build(&base, &fin, &complete, &mut |_, staged| {
            fs::write(staged.join(".complete"), "").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(out, Outcome::Built);
        assert!(!fin.join("half").exists());
    }

    #[test]
    fn run_logged_keeps_the_log_and_names_it_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("build.log");
        run_logged(
            Command::new("sh").args(["-c", "echo hello; echo err >&2"]),
            "sh ok",
            &log,
            &|_| {},
        )
        .unwrap();
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("hello") && text.contains("err"), "{text}");
        let e = run_logged(
            Command::new("sh").args(["-c", "echo the-reason; exit 3"]),
            "sh fails",
            &log,
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sh fails") && e.contains("exit status 3"), "{e}");
        assert!(e.contains("the-reason"), "{e}");
        assert!(e.contains(&log.display().to_string()), "{e}");
    }
}
