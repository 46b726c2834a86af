//! The build manifest (`manifest.json` beside each image): tool version, inputs (release
//! name/vsn, ERTS, source path and sha256, host libraries), every artefact's path, size
//! and sha256, and with `--list` a per-file table of the tree.
//!
//! Owns: the manifest's schema and its JSON bytes (fixed field order).
//! Must not: compute what it records (callers pass digests in), or write files itself.

use serde::Serialize;

use beambake_images::rootfs::{EntryKind, Tree};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub schema: u32,
    pub tool: Tool,
    pub source_date_epoch: u64,
    pub inputs: Inputs,
    /// How the node runs distributed: its name, who chose the cookie (never the cookie
    /// itself), and what beambake changed from the release's `vm.args`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<crate::launch::Distribution>,
    pub artefacts: Vec<Artefact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileRow>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Default for Tool {
    fn default() -> Self {
        // The tool is the `beambake` binary; every crate of the workspace shares its
        // version.
        Tool {
            name: "beambake".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    pub release: ReleaseInput,
    pub host_files: Vec<HostFile>,
    /// Symlinks of the release left out of the image (dangling ones, as a rebar3
    /// dev-mode release has; system installations' links that lead out of them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_links: Vec<beambake_images::rootfs::SkippedLink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseInput {
    pub name: String,
    pub vsn: String,
    pub erts_vsn: String,
    pub erts_bundled: bool,
    pub source: String,
    pub source_kind: crate::source::SourceKind,
    pub sha256: String,
}

/// A file taken from the host system (not from the release): ERTS, OTP applications,
/// shared libraries.
#[derive(Debug, Clone, Serialize)]
pub struct HostFile {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Artefact {
    /// Relative to the manifest's directory when inside it, else absolute.
    pub path: String,
    pub format: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    pub path: String,
    /// `st_mode` in octal, e.g. "100644".
    pub mode: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub origin: String,
}

/// `json`, a manifest as [`Manifest::to_json`] wrote it, with the artefact of size and
/// sha256 `old` given `new`'s instead: for an image that a per-build file was appended
/// to after its manifest was written (the rest of the bytes stay as they were). `None`
/// when no single artefact has `old`.
pub fn replace_artefact(json: &str, old: (u64, &str), new: (u64, &str)) -> Option<String> {
    let row =
        |(size, sha256): (u64, &str)| format!("\"size\": {size},\n      \"sha256\": \"{sha256}\"");
    let from = row(old);
    (json.matches(&from).count() == 1).then(|| json.replacen(&from, &row(new), 1))
}

/// Per-file rows and the host files among them (those not from `release_dir`).
pub fn file_table(
    tree: &Tree,
    release_dir: &std::path::Path,
) -> std::io::Result<(Vec<FileRow>, Vec<HostFile>)> {
    let mut rows = Vec::new();
    let mut host = Vec::new();
    for (path, e) in tree.iter() {
        let (size, sha256, target) = match &e.kind {
            EntryKind::File(src) => {
                let sha = src.sha256()?;
                if let Some(h) = src.host_path() {
                    if !h.starts_with(release_dir) {
                        host.push(HostFile {
                            path: h.display().to_string(),
                            sha256: sha.clone(),
                        });
                    }
                }
                (src.len()?, Some(sha), None)
            }
            EntryKind::Symlink(t) => (t.len() as u64, None, Some(t.clone())),
            _ => (0, None, None),
        };
        rows.push(FileRow {
            path: path.to_string(),
            mode: format!("{:o}", e.mode()),
            size,
            sha256,
            target,
            origin: e.origin.clone(),
        });
    }
    host.sort_by(|a, b| a.path.cmp(&b.path));
    host.dedup_by(|a, b| a.path == b.path);
    Ok((rows, host))
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
