//! Golden files for format writers: compare an output with `builder/tests/golden/NAME`,
//! or rewrite the file when `UPDATE_GOLDEN` is set.
//!
//! The same API as the library's `golden` module ([`check`]), and the same directory for
//! every crate of the workspace; [`check_in`] names another.

use std::path::{Path, PathBuf};

/// Set (to anything) to accept the outputs: the golden files are rewritten.
pub const UPDATE_ENV: &str = "UPDATE_GOLDEN";

/// Compares `actual` with `builder/tests/golden/NAME`.
pub fn check(name: &str, actual: &str) {
    check_in(&golden_dir(), name, actual);
}

/// Compares `actual` with the golden file `dir/NAME`.
pub fn check_in(dir: &Path, name: &str, actual: &str) {
    compare(
        &dir.join(name),
        actual,
        std::env::var_os(UPDATE_ENV).is_some(),
    );
}

/// `builder/tests/golden`, where beambake keeps its golden files.
pub fn golden_dir() -> PathBuf {
    crate::paths::repo_root().join("builder/tests/golden")
}

fn compare(path: &Path, actual: &str, update: bool) {
    if update {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with {UPDATE_ENV}=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the output ({UPDATE_ENV}=1 to accept):\n--- expected\n{expected}\n+++ actual\n{actual}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_creates_and_updates() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/out.txt");
        let missing = std::panic::catch_unwind(|| compare(&p, "one\n", false)).unwrap_err();
        assert!(missing
            .downcast_ref::<String>()
            .unwrap()
            .contains("UPDATE_GOLDEN=1 to create it"));
        compare(&p, "one\n", true);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\n");
        compare(&p, "one\n", false);
        let differs = std::panic::catch_unwind(|| compare(&p, "two\n", false)).unwrap_err();
        let msg = differs.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("--- expected\none\n\n+++ actual\ntwo\n"),
            "{msg}"
        );
    }

    #[test]
    fn the_golden_files_are_beambakes() {
        assert!(golden_dir().join("iso-small_tree.txt").is_file());
        check(
            "sample.cpio.txt",
            &std::fs::read_to_string(golden_dir().join("sample.cpio.txt")).unwrap(),
        );
    }
}
