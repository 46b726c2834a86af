//! beambake's OTP patch sets (`patches/otp/<major>/<set>/series`) and their use on an OTP
//! source tree: which set fits the tree (its `OTP_VERSION` major must match, checked before
//! anything is touched), and apply / check / revert / status through [`crate::patch`]
//! (which has no offset or fuzz: every hunk applies exactly where its header says). A set
//! named `common` is the base of the others: asking for `osv` means `common` then `osv`.
//!
//! Must not: fetch or build OTP (see `cargo xtask otp-src` / `otp-build`).

use std::path::{Path, PathBuf};

use crate::patch::{self, Options, Patch, Report, Series, SeriesStatus};

/// The patches directory of the source checkout this binary was built from (used when
/// no `--patches` is given and `./patches` does not exist).
pub const BUILT_IN_PATCHES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../patches");

#[derive(Debug, thiserror::Error)]
pub enum PatchSetError {
    #[error("{path}: cannot read the OTP version ({source}); is this an OTP source tree?")]
    NoVersion {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {version:?} is not an OTP version")]
    BadVersion { path: PathBuf, version: String },
    #[error("{tree}: OTP {version} has no patch set here: beambake's sets are for OTP {available} ({dir}); nothing was changed")]
    VersionMismatch {
        tree: PathBuf,
        version: String,
        available: String,
        dir: PathBuf,
    },
    #[error("{dir}: no patch set {set:?} for OTP {major} (sets: {available})")]
    NoSet {
        dir: PathBuf,
        set: String,
        major: String,
        available: String,
    },
    #[error(transparent)]
    Patch(#[from] patch::Error),
}

/// An OTP source tree's version, from its `OTP_VERSION` file (e.g. `25.2.3`).
pub fn otp_version(tree: &Path) -> Result<String, PatchSetError> {
    let path = tree.join("OTP_VERSION");
    let text = std::fs::read_to_string(&path).map_err(|source| PatchSetError::NoVersion {
        path: path.clone(),
        source,
    })?;
    let v = text.trim().to_string();
    let major = v.split('.').next().unwrap_or("");
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        return Err(PatchSetError::BadVersion { path, version: v });
    }
    Ok(v)
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The series of set `set` for the OTP tree at `tree`, from `patches` (the repo's
/// `patches/` dir). Errors before anything is touched when the versions differ.
pub fn series_for(patches: &Path, tree: &Path, set: &str) -> Result<Series, PatchSetError> {
    let version = otp_version(tree)?;
    let major = version.split('.').next().unwrap_or("").to_string();
    let otp_dir = patches.join("otp");
    let dir = otp_dir.join(&major);
    if !dir.is_dir() {
        let available = subdirs(&otp_dir);
        return Err(PatchSetError::VersionMismatch {
            tree: tree.to_path_buf(),
            version,
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
            dir: otp_dir,
        });
    }
    let set_dir = dir.join(set);
    if !set_dir.join("series").is_file() {
        return Err(PatchSetError::NoSet {
            dir: dir.clone(),
            set: set.to_string(),
            major,
            available: subdirs(&dir).join(", "),
        });
    }
    let mut series = Series::load(&set_dir)?;
    let common = dir.join(COMMON);
    if set != COMMON && common.join("series").is_file() {
        let mut base = Series::load(&common)?;
        base.patches.append(&mut series.patches);
        series.patches = base.patches;
    }
    Ok(series)
}

/// The set every other set of the same OTP major is applied on top of.
pub const COMMON: &str = "common";

/// What to do with a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Apply,
    Check,
    Revert,
}

/// Applies, checks (dry run) or reverts the set on the tree: all or nothing.
pub fn run(patches: &[Patch], tree: &Path, action: Action) -> Result<Report, PatchSetError> {
    let opts = Options::default();
    Ok(match action {
        Action::Apply => patch::apply(tree, patches, &opts)?,
        Action::Check => patch::check(tree, patches, &opts)?,
        Action::Revert => patch::revert(tree, patches, &opts)?,
    })
}

/// Which patches of the set are applied.
pub fn status(patches: &[Patch], tree: &Path) -> Result<SeriesStatus, PatchSetError> {
    Ok(patch::status(tree, patches, &Options::default())?)
}

/// `--patches`, else `./patches` when it holds `otp/`, else the checkout's.
pub fn default_patches_dir() -> PathBuf {
    let here = PathBuf::from("patches");
    if here.join("otp").is_dir() {
        here
    } else {
        PathBuf::from(BUILT_IN_PATCHES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(version: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("OTP_VERSION"), format!("{version}\n")).unwrap();
        fs::write(d.path().join("a.c"), "one\ntwo\nthree\n").unwrap();
        d
    }

    fn patches() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let set = d.path().join("otp/25/demo");
        fs::create_dir_all(&set).unwrap();
        fs::write(set.join("series"), "0001-two.patch\n").unwrap();
        fs::write(
            set.join("0001-two.patch"),
            "Subject: demo\n\n--- a/a.c\n+++ b/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn another_otp_version_is_refused_before_anything_is_touched() {
        let t = tree("26.1.2");
        let p = patches();
        let e = series_for(p.path(), t.path(), "demo")
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTP 26.1.2 has no patch set here"), "{e}");
        assert!(e.contains("OTP 25"), "{e}");
        assert_eq!(
            fs::read_to_string(t.path().join("a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
    }

    #[test]
    fn unknown_set_and_missing_version_are_named() {
        let t = tree("25.2.3");
        let p = patches();
        let e = series_for(p.path(), t.path(), "osv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no patch set \"osv\"") && e.contains("demo"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = series_for(p.path(), empty.path(), "demo")
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTP_VERSION"), "{e}");
    }

    #[test]
    fn apply_status_revert_round_trip() {
        let t = tree("25.2.3");
        let p = patches();
        let s = series_for(p.path(), t.path(), "demo").unwrap();
        assert!(status(&s.patches, t.path()).unwrap().none_applied());
        run(&s.patches, t.path(), Action::Check).unwrap();
        run(&s.patches, t.path(), Action::Apply).unwrap();
        assert!(status(&s.patches, t.path()).unwrap().all_applied());
        assert_eq!(
            fs::read_to_string(t.path().join("a.c")).unwrap(),
            "one\nTWO\nthree\n"
        );
        run(&s.patches, t.path(), Action::Revert).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("a.c")).unwrap(),
            "one\ntwo\nthree\n"
        );
    }
}
