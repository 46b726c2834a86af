//! What `beambake build --json` and `beambake smoke --json` print, in one place: each
//! output is a serde struct, so a field is added here and nowhere else. Every object has
//! `ok` and `exit_code` ([`crate::exit::Exit`]); a failed run prints a [`Failure`].
//!
//! Must not: print (the CLI does), or hash an artefact the manifest already hashed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use beambake_target::exit::Exit;
use beambake_target::pipeline::Error;
use beambake_target::Built;
use beambake_vm::smoke::Report;

/// One phase of a run (a progress step) and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub phase: String,
    pub ms: u64,
}

/// A written file of the build, as its manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artefact {
    pub path: PathBuf,
    pub format: String,
    pub size: u64,
    pub sha256: String,
}

/// `beambake build --json`, and the build part of `beambake smoke --json`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildOutput {
    pub ok: bool,
    pub exit_code: u8,
    pub target: beambake_recipe::Target,
    /// The output directory (`OUT/NAME`).
    pub dir: PathBuf,
    /// The bootable image, then the rest the manifest lists (kernel, ...).
    pub artefacts: Vec<Artefact>,
    pub manifest: PathBuf,
    pub boot_plan: PathBuf,
    pub timings_ms: Vec<Phase>,
    pub total_ms: u64,
    /// How the build cache was used (`key`, `hit`, `verified`, `hashed`, `rejected`); null when it
    /// was not (`--no-cache`, a target or build that is not cached).
    pub cache: Option<beambake_target::CacheUse>,
}

/// `beambake smoke --json` of a run that got as far as a report (passed or not): the
/// report, flattened, with the exit code, the build and the timings.
#[derive(Debug, Clone, Serialize)]
pub struct SmokeOutput {
    pub ok: bool,
    pub exit_code: u8,
    /// The category of `exit_code`: `ok`, `boot` (a guest never became ready), `check`.
    pub category: Exit,
    /// What failed, in one line; absent when the run passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The build, when smoke built the image (a recipe, not a directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildOutput>,
    /// The report's fields (`passed`, `ready`, `checks`, `accel`, `boot_to_ready_ms`,
    /// `guest_exit`, ...) at the top level, where they were before `ok` and `exit_code`.
    #[serde(flatten)]
    pub report: Report,
    /// The first VM's console log (kept when the run failed).
    pub console_log: PathBuf,
    pub timings_ms: Vec<Phase>,
    pub total_ms: u64,
    /// What `--save-snapshot` saved or `--from-snapshot` did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<beambake_vm::sandbox::SnapshotOutcome>,
}

/// What any `--json` command prints when it fails before it has a result.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub ok: bool,
    pub exit_code: u8,
    pub category: Exit,
    pub error: String,
}

impl Failure {
    pub fn new(category: Exit, error: String) -> Failure {
        Failure {
            ok: false,
            exit_code: category.code(),
            category,
            error,
        }
    }
}

#[derive(Deserialize)]
struct ManifestArtefacts {
    artefacts: Vec<Artefact>,
}

impl BuildOutput {
    /// The output of `built` (of a recipe for `target`), its artefacts read from the
    /// manifest the build wrote (their sha256 computed once, by the build).
    pub fn new(
        built: &Built,
        target: beambake_recipe::Target,
        timings_ms: Vec<Phase>,
    ) -> Result<BuildOutput, Error> {
        let text = std::fs::read_to_string(&built.manifest).map_err(|source| Error::Io {
            path: built.manifest.clone(),
            source,
        })?;
        let m: ManifestArtefacts = serde_json::from_str(&text).map_err(|e| Error::Io {
            path: built.manifest.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let base = built.manifest.parent().unwrap_or(Path::new("."));
        let artefacts = m
            .artefacts
            .into_iter()
            .map(|a| Artefact {
                path: base.join(&a.path),
                ..a
            })
            .collect();
        let total_ms = timings_ms.iter().map(|p| p.ms).sum();
        Ok(BuildOutput {
            ok: true,
            exit_code: Exit::Ok.code(),
            target,
            dir: built.dir.clone(),
            artefacts,
            manifest: built.manifest.clone(),
            boot_plan: built.dir.join(beambake_vm::boot::PLAN_FILE),
            timings_ms,
            total_ms,
            cache: built.cache.clone(),
        })
    }
}

impl SmokeOutput {
    pub fn new(
        report: Report,
        build: Option<BuildOutput>,
        console_log: PathBuf,
        timings_ms: Vec<Phase>,
    ) -> SmokeOutput {
        let category = Exit::of_report(&report);
        let error = match category {
            Exit::Ok => None,
            _ => Some(summary(&report, category)),
        };
        let total_ms = timings_ms.iter().map(|p| p.ms).sum();
        SmokeOutput {
            ok: category == Exit::Ok,
            exit_code: category.code(),
            category,
            error,
            build,
            report,
            console_log,
            timings_ms,
            total_ms,
            snapshot: None,
        }
    }
}

/// One line on a failed smoke run: the first failing check and its message.
pub fn summary(r: &Report, category: Exit) -> String {
    let what = match category {
        Exit::Boot => "the guest did not become ready",
        _ => "a check failed",
    };
    match r.checks.iter().find(|c| !c.passed) {
        Some(c) => format!("{}: {what}: {}: {}", r.name, c.name, c.message),
        None => format!("{}: {what}", r.name),
    }
}
