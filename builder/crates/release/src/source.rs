//! Release inputs: the three forms a user hands beambake, turned into one release
//! directory on the host.
//!
//! Owns: telling a release directory, a release tarball and a rebar3 project apart;
//! extracting a tarball safely (through [`crate::tarball`]) into a private temporary
//! directory that lives as long as the [`Source`]; running `rebar3 release` (profile
//! selectable) and finding its output; and the input digest recorded in the manifest.
//!
//! Must not: interpret the release (see [`crate::release`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use beambake_images::digest;

/// Extraction limit for release tarballs (a release is tens of MB; this stops bombs).
pub const MAX_TARBALL_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error("{path}: not a release directory (no releases/), a release tarball (.tar.gz) or a rebar3 project (no rebar.config)")]
    Unknown { path: PathBuf },
    #[error("{path}: a mix project; run `MIX_ENV=prod mix release` and pass _build/prod/rel/NAME")]
    MixProject { path: PathBuf },
    #[error(transparent)]
    Tarball(#[from] crate::tarball::TarballError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: rebar3 not found on PATH (apt-get install rebar3)")]
    NoRebar3 { path: PathBuf },
    #[error("{path}: `{command}` failed with {status}:\n{output}")]
    Rebar3Failed {
        path: PathBuf,
        command: String,
        status: String,
        output: String,
    },
    #[error("{path}: {message}")]
    Rebar3Output { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Directory,
    Tarball,
    Rebar3Project,
}

/// A resolved input: a release directory on the host, plus what it came from.
#[derive(Debug)]
pub struct Source {
    pub kind: SourceKind,
    /// What the user named.
    pub input: PathBuf,
    /// The release directory to read.
    pub release_dir: PathBuf,
    /// sha256 of the tarball, or of the release directory tree.
    pub sha256: String,
    _tmp: Option<tempfile::TempDir>,
    /// Held while the release is read: another beambake building the same project waits.
    _lock: Option<std::fs::File>,
}

/// Options for resolving an input.
#[derive(Debug, Clone, Default)]
pub struct Resolve {
    /// rebar3 profile (`rebar3 as PROFILE release`); `default` when `None`.
    pub profile: Option<String>,
    /// Which release of a rebar3 project with several.
    pub release: Option<String>,
    /// Print rebar3's output as it runs.
    pub verbose: bool,
}

impl Source {
    pub fn resolve(input: &Path, opts: &Resolve) -> Result<Source, SourceError> {
        let meta = fs::metadata(input).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::Missing {
                path: input.to_path_buf(),
            },
            _ => SourceError::Io {
                path: input.to_path_buf(),
                source: e,
            },
        })?;
        let io = |source| SourceError::Io {
            path: input.to_path_buf(),
            source,
        };
        if meta.is_file() {
            let tmp = tempfile::Builder::new()
                .prefix("beambake-release-")
                .tempdir()
                .map_err(io)?;
            crate::tarball::extract(input, tmp.path(), MAX_TARBALL_BYTES)?;
            let sha256 = digest::sha256_file(input).map_err(io)?;
            return Ok(Source {
                kind: SourceKind::Tarball,
                input: input.to_path_buf(),
                release_dir: tmp.path().to_path_buf(),
                sha256,
                _tmp: Some(tmp),
                _lock: None,
            });
        }
        if input.join("releases").is_dir() {
            let sha256 = digest::sha256_tree(input)
                .map_err(|(path, source)| SourceError::Io { path, source })?;
            return Ok(Source {
                kind: SourceKind::Directory,
                input: input.to_path_buf(),
                release_dir: input.to_path_buf(),
                sha256,
                _tmp: None,
                _lock: None,
            });
        }
        if input.join("rebar.config").is_file() {
            let lock = lock_project(input)?;
            let dir = rebar3_release(input, opts)?;
            let sha256 = digest::sha256_tree(&dir)
                .map_err(|(path, source)| SourceError::Io { path, source })?;
            return Ok(Source {
                kind: SourceKind::Rebar3Project,
                input: input.to_path_buf(),
                release_dir: dir,
                sha256,
                _tmp: None,
                _lock: Some(lock),
            });
        }
        if input.join("mix.exs").is_file() {
            return Err(SourceError::MixProject {
                path: input.to_path_buf(),
            });
        }
        Err(SourceError::Unknown {
            path: input.to_path_buf(),
        })
    }
}

/// An exclusive lock on the project's `_build` (rebar3 rewrites the release in place; two
/// builds at once would read each other's half-written files).
fn lock_project(project: &Path) -> Result<fs::File, SourceError> {
    use std::os::fd::AsRawFd;
    let build = project.join("_build");
    let io = |source| SourceError::Io {
        path: build.clone(),
        source,
    };
    fs::create_dir_all(&build).map_err(io)?;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(build.join(".beambake.lock"))
        .map_err(io)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// Runs `rebar3 [as PROFILE] release` in `project` and returns `_build/PROFILE/rel/NAME`.
fn rebar3_release(project: &Path, opts: &Resolve) -> Result<PathBuf, SourceError> {
    let profile = opts.profile.as_deref().unwrap_or("default");
    let mut cmd = Command::new("rebar3");
    if profile != "default" {
        cmd.args(["as", profile]);
    }
    cmd.arg("release");
    if let Some(r) = &opts.release {
        cmd.args(["-n", r]);
    }
    cmd.current_dir(project)
        .env("TERM", "dumb")
        .env("QUIET", "1");
    let shown = format!(
        "rebar3 {}release{}",
        if profile == "default" {
            String::new()
        } else {
            format!("as {profile} ")
        },
        opts.release
            .as_ref()
            .map(|r| format!(" -n {r}"))
            .unwrap_or_default()
    );
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NoRebar3 {
            path: project.to_path_buf(),
        },
        _ => SourceError::Io {
            path: project.to_path_buf(),
            source: e,
        },
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if opts.verbose {
        eprint!("{text}");
    }
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        return Err(SourceError::Rebar3Failed {
            path: project.to_path_buf(),
            command: shown,
            status: out.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let rel_root = project.join("_build").join(profile).join("rel");
    let mut found: Vec<PathBuf> = fs::read_dir(&rel_root)
        .map_err(|source| SourceError::Io {
            path: rel_root.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("releases").is_dir())
        .filter(|p| {
            opts.release
                .as_ref()
                .is_none_or(|r| p.file_name().is_some_and(|n| n == r.as_str()))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(SourceError::Rebar3Output {
            path: rel_root,
            message: format!("`{shown}` succeeded but produced no release"),
        }),
        _ => Err(SourceError::Rebar3Output {
            path: rel_root,
            message: format!(
                "several releases ({}); choose one with --release NAME",
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}
