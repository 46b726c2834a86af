//! The pipeline, end to end: input -> release -> tree -> image + manifest. The CLI, xtask
//! and tests all go through here; targets add to the tree and pick a writer.
//!
//! Must not: print (it reports progress through a callback) or parse command lines.

use std::path::{Path, PathBuf};

use beambake_images::output::{self, Written};
use beambake_release::assemble::{self, Assembly};
use beambake_release::manifest::{self, Artefact, Manifest};
use beambake_release::release::{self, Release};
use beambake_release::source::{self, Source};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(Box<source::SourceError>),
    #[error(transparent)]
    Release(Box<release::ReleaseError>),
    #[error(transparent)]
    Assemble(Box<assemble::AssembleError>),
    #[error(transparent)]
    Image(Box<beambake_images::image::ImageError>),
    #[error(transparent)]
    OsvDisk(Box<beambake_images::image::osv_disk::OsvDiskError>),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error(transparent)]
    Tree(Box<beambake_images::rootfs::TreeError>),
    #[error(transparent)]
    Kernel(Box<beambake_kernel::kernel::KernelError>),
    #[error(transparent)]
    Boot(#[from] beambake_vm::boot::BootError),
    #[error(transparent)]
    Snapshot(#[from] beambake_vm::snapshot::SnapshotError),
    #[error(transparent)]
    RecipeFile(#[from] beambake_recipe::RecipeError),
    #[error(transparent)]
    Tls(#[from] beambake_vm::smoke::tls::TlsError),
    /// The recipe `file` asks for something invalid (found once the release or the
    /// target is known; what the schema alone rules out is a [`Error::RecipeFile`]).
    #[error("{file}: {message}")]
    Recipe { file: PathBuf, message: String },
    /// beambake cannot do this with `path` (a recipe's target not built yet, an image
    /// built without what booting it needs, ...).
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// A tool or host installation the recipe `file`'s target needs is missing.
    #[error("{file}: {message}")]
    Toolchain { file: PathBuf, message: String },
    /// `program what` ran and failed.
    #[error("{program} {what} failed: {stderr}")]
    Tool {
        program: PathBuf,
        what: String,
        stderr: String,
    },
    /// A host directory or disk image that the guests mount is missing.
    #[error("{path}: {message}")]
    Storage { path: PathBuf, message: String },
    /// A data disk could not be created.
    #[error("creating the data disk {path}: {source}")]
    DataDisk {
        path: PathBuf,
        #[source]
        source: Box<beambake_images::image::ext4::Ext4Error>,
    },
    /// The rumprun launch config cannot be made from the recipe `file`, or written.
    #[error("{file}: {source}")]
    Launch {
        file: PathBuf,
        #[source]
        source: beambake_vm::rumprun::RumprunError,
    },
    /// The release could not be traced on the host (`code_loading = "traced"`).
    #[error("tracing the release {release}: {message}")]
    Trace { release: PathBuf, message: String },
    /// The smoke run of the image in `dir` ended without a report.
    #[error("{dir}: the sandbox returned no report")]
    NoReport { dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// [`Error::Recipe`] for `recipe`'s file.
    pub fn recipe(recipe: &beambake_recipe::Recipe, message: impl Into<String>) -> Error {
        Error::Recipe {
            file: recipe.file.clone(),
            message: message.into(),
        }
    }
}

impl From<beambake_images::image::ImageError> for Error {
    fn from(e: beambake_images::image::ImageError) -> Self {
        Error::Image(Box::new(e))
    }
}

impl From<beambake_images::image::osv_disk::OsvDiskError> for Error {
    fn from(e: beambake_images::image::osv_disk::OsvDiskError) -> Self {
        Error::OsvDisk(Box::new(e))
    }
}

impl From<source::SourceError> for Error {
    fn from(e: source::SourceError) -> Self {
        Error::Source(Box::new(e))
    }
}

impl From<release::ReleaseError> for Error {
    fn from(e: release::ReleaseError) -> Self {
        Error::Release(Box::new(e))
    }
}

impl From<assemble::AssembleError> for Error {
    fn from(e: assemble::AssembleError) -> Self {
        Error::Assemble(Box::new(e))
    }
}

impl From<beambake_images::rootfs::TreeError> for Error {
    fn from(e: beambake_images::rootfs::TreeError) -> Self {
        Error::Tree(Box::new(e))
    }
}

impl From<beambake_kernel::kernel::KernelError> for Error {
    fn from(e: beambake_kernel::kernel::KernelError) -> Self {
        Error::Kernel(Box::new(e))
    }
}

/// Everything that selects and reads a release.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub path: PathBuf,
    pub resolve: source::Resolve,
    pub discover: release::Discover,
    /// Trace the modules the release loads at boot and preload only those
    /// ([`crate::trace`]).
    pub trace: bool,
}

/// A resolved, discovered and assembled release.
pub struct Prepared {
    pub source: Source,
    pub release: Release,
    pub assembly: Assembly,
}

/// Progress steps, for the caller to display.
pub trait Progress {
    fn step(&self, what: &str);
    /// A detail of the current step, shown with `-v` only.
    fn detail(&self, _what: &str) {}
    /// Something the user should know about the result (shown without `-v`).
    fn note(&self, what: &str) {
        self.detail(what)
    }
    /// Whether the user asked for detail (`-v`): commands run are shown too.
    fn verbose(&self) -> bool {
        false
    }
}

impl Progress for () {
    fn step(&self, _: &str) {}
}

pub fn prepare(
    input: &Input,
    opts: &assemble::Options,
    progress: &dyn Progress,
) -> Result<Prepared, Error> {
    if input.path.join("rebar.config").is_file() {
        progress.step("building the release with rebar3");
    } else {
        progress.step("reading the release");
    }
    let source = Source::resolve(&input.path, &input.resolve)?;
    progress.step("discovering the release");
    let release = Release::discover(&source.release_dir, &input.discover)?;
    let traced;
    let opts = if input.trace {
        let modules =
            crate::trace::loaded_modules(&release, opts, crate::trace::TIMEOUT, progress)?;
        traced = assemble::Options {
            preload: Some(modules),
            ..opts.clone()
        };
        &traced
    } else {
        opts
    };
    progress.step("assembling the root filesystem and its library closure");
    let assembly = assemble::assemble(&release, opts)?;
    for line in left_out_lines(&assembly.left_out) {
        progress.detail(&line);
    }
    for l in assembly.tree.skipped_links() {
        progress.detail(&format!(
            "left out {} (symlink to {}): {}",
            l.host.display(),
            l.target.display(),
            l.reason
        ));
    }
    if let Some(d) = &assembly.distribution {
        for note in &d.notes {
            progress.detail(note);
        }
        if d.cookie_source == beambake_release::launch::CookieSource::Release {
            progress.note(&format!(
                "node {}: the cookie comes from -setcookie in the release's vm.args and is baked \
                 into the image (set [distribution] cookie in the recipe to replace it)",
                d.name
            ));
        }
    }
    Ok(Prepared {
        source,
        release,
        assembly,
    })
}

/// The `-v` lines saying what the assembly left out of the tree and how it stored the
/// `.beam` files (none when it did neither).
pub fn left_out_lines(l: &assemble::LeftOut) -> Vec<String> {
    let names = |paths: &[String], base: bool| {
        paths
            .iter()
            .map(|p| match p.rsplit_once('/') {
                Some((_, name)) if base => name.to_string(),
                _ => p.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    if !l.erts_programs.is_empty() {
        out.push(format!(
            "left out {} ERTS programs the launch spec never runs: {}",
            l.erts_programs.len(),
            names(&l.erts_programs, true)
        ));
    }
    if !l.build_only.is_empty() {
        out.push(format!(
            "left out {} directories of headers, sources and docs: {}",
            l.build_only.len(),
            names(&l.build_only, false)
        ));
    }
    let (n, before, after) = l.beams_decompressed;
    if n > 0 {
        out.push(format!(
            "stored {n} gzipped .beam files decompressed ({before} -> {after} bytes), for the image's compressor"
        ));
    }
    out
}

/// The manifest for a prepared build and its written artefacts.
pub fn manifest(
    p: &Prepared,
    artefacts: &[(Written, &str)],
    manifest_dir: &Path,
    list: bool,
) -> Result<Manifest, Error> {
    let (rows, host_files) = manifest::file_table(&p.assembly.tree, &p.source.release_dir)
        .map_err(|source| Error::Io {
            path: p.source.release_dir.clone(),
            source,
        })?;
    let rel = &p.release;
    let input_path = std::fs::canonicalize(&p.source.input).unwrap_or(p.source.input.clone());
    Ok(Manifest {
        schema: manifest::SCHEMA,
        tool: manifest::Tool::default(),
        source_date_epoch: p.assembly.tree.mtime(),
        inputs: manifest::Inputs {
            release: manifest::ReleaseInput {
                name: rel.name.clone(),
                vsn: rel.vsn.clone(),
                erts_vsn: rel.erts.vsn.clone(),
                erts_bundled: rel.erts.bundled,
                source: input_path.display().to_string(),
                source_kind: p.source.kind,
                sha256: p.source.sha256.clone(),
            },
            host_files,
            skipped_links: p.assembly.tree.skipped_links().to_vec(),
        },
        distribution: p.assembly.distribution.clone(),
        artefacts: artefacts
            .iter()
            .map(|(w, format)| Artefact {
                path: relative_to(&w.path, manifest_dir),
                format: format.to_string(),
                size: w.size,
                sha256: w.sha256.clone(),
            })
            .collect(),
        files: list.then_some(rows),
    })
}

fn relative_to(p: &Path, dir: &Path) -> String {
    let canon = |x: &Path| std::fs::canonicalize(x).unwrap_or_else(|_| x.to_path_buf());
    let (cp, cd) = (canon(p), canon(dir));
    match cp.strip_prefix(&cd) {
        Ok(r) => r.display().to_string(),
        Err(_) => cp.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_left_out_path_is_in_a_detail_line() {
        assert!(left_out_lines(&assemble::LeftOut::default()).is_empty());
        let l = assemble::LeftOut {
            erts_programs: vec!["erts-1/bin/erlc".into(), "erts-1/bin/escript".into()],
            build_only: vec!["lib/kernel-8.5.3/include".into()],
            beams_decompressed: (2, 10, 30),
        };
        assert_eq!(
            left_out_lines(&l),
            [
                "left out 2 ERTS programs the launch spec never runs: erlc, escript",
                "left out 1 directories of headers, sources and docs: lib/kernel-8.5.3/include",
                "stored 2 gzipped .beam files decompressed (10 -> 30 bytes), for the image's compressor",
            ]
        );
    }
}
