//! Where things are: the repository, temp dirs, programs on `PATH`; copying and
//! snapshotting trees.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Set (to anything) to keep the temp dirs of the testkit for a look afterwards: each
/// kept dir is printed.
pub const KEEP_TMP_ENV: &str = "BEAMBAKE_KEEP_TMP";

/// The repository root: the nearest directory above this crate whose `Cargo.toml` is the
/// workspace's.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")))
        .expect("no workspace Cargo.toml above the testkit")
        .to_path_buf()
}

/// A program on `PATH`: the testkit's one lookup.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A fresh temp dir (`/tmp/bb-test-XXXX`), removed when dropped (kept with
/// `BEAMBAKE_KEEP_TMP`).
pub fn tempdir() -> TempDir {
    tempdir_named("bb-test-")
}

/// A fresh temp dir whose name starts with `prefix`.
pub fn tempdir_named(prefix: &str) -> TempDir {
    tempdir_in(&std::env::temp_dir(), prefix)
}

/// A fresh temp dir in `parent` whose name starts with `prefix`.
pub fn tempdir_in(parent: &Path, prefix: &str) -> TempDir {
    let keep = std::env::var_os(KEEP_TMP_ENV).is_some();
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("a temp dir in {}: {e}", parent.display()));
    if keep {
        eprintln!("keeping {}", d.path().display());
    }
    d
}

/// Copies the tree `src` to `dst`: files, directories and symlinks (as links).
pub fn copy_dir(src: &Path, dst: &Path) {
    copy_dir_skipping(src, dst, &[]);
}

/// A copy of the project `src` (the repository's examples) at `dst` without its build
/// output (`_build`, `deps`), which is never read: another test may be building in it
/// at the same time (a recipe naming the project runs `rebar3 release` there).
pub fn copy_project(src: &Path, dst: &Path) {
    copy_dir_skipping(src, dst, &["_build", "deps"]);
}

/// [`copy_dir`] leaving out the top-level entries named in `skip`.
fn copy_dir_skipping(src: &Path, dst: &Path, skip: &[&str]) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap_or_else(|e| panic!("{}: {e}", src.display())) {
        let e = e.unwrap();
        if skip.iter().any(|n| e.file_name() == *n) {
            continue;
        }
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let ft = fs::symlink_metadata(&s).unwrap().file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s).unwrap(), &d).unwrap();
        } else if ft.is_dir() {
            copy_dir(&s, &d);
        } else {
            fs::copy(&s, &d).unwrap_or_else(|e| panic!("{}: {e}", s.display()));
        }
    }
}

/// Every file under `root` (links followed) by its path relative to `root`, with its
/// bytes; entries named in `skip` (at any depth) are left out with what is under them.
pub fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| skip.iter().any(|s| n == *s)) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                m.insert(p.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_has_the_recipes() {
        let root = repo_root();
        assert!(root.join("recipes").is_dir(), "{}", root.display());
        assert!(root.join("Cargo.lock").is_file());
    }

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("no-such-program-beambake").is_none());
    }

    #[test]
    fn copies_and_snapshots_a_tree() {
        let d = tempdir();
        assert!(d
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("bb-test-"));
        let src = d.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::create_dir_all(src.join("_build/x")).unwrap();
        fs::write(src.join("a/b/f"), "f").unwrap();
        fs::write(src.join("_build/x/g"), "g").unwrap();
        fs::write(src.join("top"), "t").unwrap();
        std::os::unix::fs::symlink("a/b/f", src.join("link")).unwrap();
        let dst = d.path().join("dst");
        copy_dir(&src, &dst);
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a/b/f"));
        let all = snapshot(&dst, &[]);
        assert_eq!(all.len(), 4);
        let some = snapshot(&dst, &["_build", "link"]);
        let names: Vec<_> = some.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(names, ["a/b/f", "top"]);
        assert_eq!(some[Path::new("top")], b"t");
        assert_eq!(snapshot(&src, &[]), all);
    }
}
