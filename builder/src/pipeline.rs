//! The pipeline, end to end: input -> release -> tree -> image + manifest. The CLI, xtask
//! and tests all go through here; targets add to the tree and pick a writer.
//!
//! Must not: print (it reports progress through a callback) or parse command lines.

use std::path::{Path, PathBuf};

use crate::assemble::{self, Assembly};
use crate::image::compress::{Compression, Encoder};
use crate::image::cpio;
use crate::manifest::{self, Artefact, Manifest};
use crate::output::{self, AtomicFile, Written};
use crate::release::{self, Release};
use crate::rootfs::Tree;
use crate::source::{self, Source};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Release(#[from] release::ReleaseError),
    #[error(transparent)]
    Assemble(#[from] assemble::AssembleError),
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    #[error("{path}: {source}")]
    Iso {
        path: PathBuf,
        #[source]
        source: crate::image::iso9660::IsoError,
    },
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error(transparent)]
    Tree(#[from] crate::rootfs::TreeError),
    #[error(transparent)]
    Kernel(Box<crate::kernel::KernelError>),
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    #[error(transparent)]
    RecipeFile(#[from] crate::recipe::RecipeError),
    #[error(transparent)]
    Tls(#[from] crate::smoke::tls::TlsError),
    #[error("{0}")]
    Recipe(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::kernel::KernelError> for Error {
    fn from(e: crate::kernel::KernelError) -> Self {
        Error::Kernel(Box::new(e))
    }
}

/// Everything that selects and reads a release.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub path: PathBuf,
    pub resolve: source::Resolve,
    pub discover: release::Discover,
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
    progress.step("assembling the root filesystem and its library closure");
    let assembly = assemble::assemble(&release, opts)?;
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
        if d.cookie_source == crate::launch::CookieSource::Release {
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

/// Writes `tree` as a (compressed) cpio newc archive at `out`, atomically.
pub fn write_initramfs(
    tree: &Tree,
    out: &Path,
    compression: Compression,
    level: i32,
) -> Result<Written, Error> {
    let mut file = AtomicFile::create(out)?;
    let io = |source| Error::Io {
        path: out.to_path_buf(),
        source,
    };
    let enc = Encoder::new(file.writer(), compression, level).map_err(io)?;
    let enc = cpio::write(tree, enc)?;
    enc.finish().map_err(io)?;
    Ok(file.commit()?)
}

/// Writes `tree` as an ISO 9660 image with Rock Ridge at `out`, atomically. The volume
/// id is `volume` mapped to d-characters.
pub fn write_iso(tree: &Tree, out: &Path, volume: &str) -> Result<Written, Error> {
    use crate::image::iso9660;
    let volume_id: String = volume
        .to_ascii_uppercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    let opts = iso9660::Options {
        volume_id,
        mtime: tree.mtime(),
        rock_ridge: true,
    };
    let mut file = AtomicFile::create(out)?;
    iso9660::write(&iso9660::entries_from_tree(tree), &opts, file.writer()).map_err(|source| {
        Error::Iso {
            path: out.to_path_buf(),
            source,
        }
    })?;
    Ok(file.commit()?)
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
