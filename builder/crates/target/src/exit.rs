//! beambake's exit codes: one table, defined here once. The CLI maps every error to one of
//! them ([`Exit::of_error`]) and a smoke report to its own ([`Exit::of_report`]); the
//! README's table is checked against [`Exit::ALL`] by a unit test.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | ok |
//! | 1 | any other failure (writing the command's own output, an internal error) |
//! | 2 | bad input: the command line, a recipe, a path that is not there, a release that is not a release |
//! | 3 | build failure: a tool failed while building (`rebar3 release`, writing an image, fetching the kernel) |
//! | 4 | boot failure: the guest did not come up (the VM could not start or died, never ready) |
//! | 5 | check failure: the guests came up and a smoke check failed |
//! | 6 | environment problem: the host lacks a tool (qemu, rebar3, erl, ...) or a right (root for a tap, user namespaces) |
//!
//! `beambake boot` is the exception: once the guest ran, its own exit status is the code.
//!
//! Must not: print, or decide anything about an error but its category.

use std::io::ErrorKind;

use beambake_kernel::kernel::KernelError;
use beambake_release::assemble::AssembleError;
use beambake_release::release::ReleaseError;
use beambake_release::source::SourceError;
use beambake_vm::boot::accel::AccelError;
use beambake_vm::boot::BootError;
use beambake_vm::rumprun::RumprunError;
use beambake_vm::smoke::tls::TlsError;
use beambake_vm::smoke::Report;
use beambake_vm::snapshot::SnapshotError;

use crate::pipeline::Error;

/// What a `beambake` run ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Ok,
    Other,
    BadInput,
    Build,
    Boot,
    Check,
    Environment,
}

/// An invalid command line or argument the CLI found itself (clap reports the rest, with
/// the same code).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

impl Exit {
    /// Every code, in the order of the table.
    pub const ALL: [Exit; 7] = [
        Exit::Ok,
        Exit::Other,
        Exit::BadInput,
        Exit::Build,
        Exit::Boot,
        Exit::Check,
        Exit::Environment,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Other => 1,
            Exit::BadInput => 2,
            Exit::Build => 3,
            Exit::Boot => 4,
            Exit::Check => 5,
            Exit::Environment => 6,
        }
    }

    /// Its meaning, one line (the README's table).
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Other => {
                "any other failure (writing the command's own output, an internal error)"
            }
            Exit::BadInput => {
                "bad input: the command line, a recipe, a path that is not there, a release \
                 that is not a release"
            }
            Exit::Build => {
                "build failure: a tool failed while building (`rebar3 release`, writing an \
                 image, fetching the kernel)"
            }
            Exit::Boot => {
                "boot failure: the guest did not come up (the VM could not start or died, \
                 never ready)"
            }
            Exit::Check => "check failure: the guests came up and a smoke check failed",
            Exit::Environment => {
                "environment problem: the host lacks a tool (qemu, rebar3, erl, ...) or a \
                 right (root for a tap, user namespaces)"
            }
        }
    }

    /// The table as Markdown, as the README holds it.
    pub fn markdown_table() -> String {
        let mut s = String::from("| code | meaning |\n|------|---------|\n");
        for e in Exit::ALL {
            s.push_str(&format!("| {} | {} |\n", e.code(), e.meaning()));
        }
        s
    }

    /// A finished smoke run: ok, a boot failure (some guest never became ready) or a
    /// check failure.
    pub fn of_report(r: &Report) -> Exit {
        if r.passed {
            Exit::Ok
        } else if !r.ready {
            Exit::Boot
        } else {
            Exit::Check
        }
    }

    /// The category of a library error. Exhaustive on purpose: a new variant must be
    /// given a code here.
    pub fn of_error(e: &Error) -> Exit {
        match e {
            Error::Source(e) => of_source(e),
            Error::Release(e) => of_release(e),
            Error::Assemble(e) => of_assemble(e),
            Error::Image(_) | Error::OsvDisk(_) | Error::Output(_) | Error::DataDisk { .. } => {
                Exit::Build
            }
            Error::Tree(e) => of_tree(e),
            Error::Kernel(e) => of_kernel(e),
            Error::Boot(e) => Exit::of_boot(e),
            Error::Snapshot(e) => match e {
                SnapshotError::Mismatch { .. }
                | SnapshotError::Missing { .. }
                | SnapshotError::Unsupported { .. } => Exit::BadInput,
                SnapshotError::Io { source, .. } => io(source, Exit::Boot),
                SnapshotError::Qmp(_) | SnapshotError::Resync(_) => Exit::Boot,
            },
            Error::RecipeFile(_) | Error::Recipe { .. } | Error::Unsupported { .. } => {
                Exit::BadInput
            }
            Error::Tls(e) => of_tls(e),
            Error::Toolchain { .. } => Exit::Environment,
            Error::Tool { .. } | Error::Trace { .. } => Exit::Build,
            Error::Storage { .. } => Exit::BadInput,
            Error::Launch { source, .. } => match source {
                RumprunError::Invalid { .. } | RumprunError::CommandLineTooLong { .. } => {
                    Exit::BadInput
                }
                RumprunError::Write { .. } => Exit::Build,
            },
            Error::NoReport { .. } => Exit::Boot,
            Error::Io { source, .. } => io(source, Exit::Build),
        }
    }

    /// The category of an error booting a built image.
    pub fn of_boot(e: &BootError) -> Exit {
        match e {
            BootError::Io { source, .. } => io(source, Exit::Boot),
            BootError::Plan { .. } | BootError::Request(_) => Exit::BadInput,
            BootError::Qemu(_) | BootError::Host(_) => Exit::Environment,
            BootError::Spawn { source, .. } => match source.kind() {
                ErrorKind::NotFound | ErrorKind::PermissionDenied => Exit::Environment,
                _ => Exit::Boot,
            },
            BootError::Net(_) => Exit::Boot,
            BootError::Accel(AccelError::BadEnv { .. }) => Exit::BadInput,
        }
    }
}

/// A missing path is bad input; any other I/O error is the phase's failure.
fn io(e: &std::io::Error, phase: Exit) -> Exit {
    match e.kind() {
        ErrorKind::NotFound => Exit::BadInput,
        _ => phase,
    }
}

fn of_source(e: &SourceError) -> Exit {
    match e {
        SourceError::Missing { .. }
        | SourceError::Unknown { .. }
        | SourceError::MixProject { .. }
        | SourceError::Tarball(_) => Exit::BadInput,
        SourceError::Io { source, .. } => io(source, Exit::Build),
        SourceError::NoRebar3 { .. } => Exit::Environment,
        SourceError::Rebar3Failed { .. } | SourceError::Rebar3Output { .. } => Exit::Build,
    }
}

fn of_release(e: &ReleaseError) -> Exit {
    match e {
        ReleaseError::NotARelease { .. }
        | ReleaseError::Garbled { .. }
        | ReleaseError::Parse { .. } => Exit::BadInput,
        ReleaseError::Io { source, .. } => io(source, Exit::Build),
        // The release leans on the host's Erlang/OTP, which is missing or does not match.
        ReleaseError::NoHostOtp { .. }
        | ReleaseError::HostErtsMismatch { .. }
        | ReleaseError::MissingApp { .. } => Exit::Environment,
    }
}

fn of_assemble(e: &AssembleError) -> Exit {
    match e {
        AssembleError::Tree(e) => of_tree(e),
        AssembleError::Elf(_) => Exit::BadInput,
        AssembleError::Io { source, .. } => io(source, Exit::Build),
        AssembleError::BadPrefix(_)
        | AssembleError::Conflict(_)
        | AssembleError::BootScript(_)
        | AssembleError::Beam { .. } => Exit::BadInput,
    }
}

fn of_tree(e: &beambake_images::rootfs::TreeError) -> Exit {
    use beambake_images::rootfs::TreeError as T;
    match e {
        // What the release or the recipe puts in the tree.
        T::Collision { .. }
        | T::SymlinkEscapes { .. }
        | T::SymlinkLoop { .. }
        | T::LinkEscapes { .. }
        | T::BadEpoch { .. }
        | T::Host { .. } => Exit::BadInput,
        T::HostIo { source, .. } => io(source, Exit::Build),
        T::BadPath { .. } | T::ParentNotDir { .. } | T::ThroughSymlink { .. } => Exit::Build,
    }
}

fn of_kernel(e: &KernelError) -> Exit {
    match e {
        KernelError::Io { source, .. } => io(source, Exit::Build),
        // The recipe's kernel, its pin or its modules.
        KernelError::PinParse { .. }
        | KernelError::InvalidPin { .. }
        | KernelError::NotAKernel { .. }
        | KernelError::BadModulesDir { .. }
        | KernelError::NoModules { .. }
        | KernelError::MissingModule { .. }
        | KernelError::CompressedModule { .. }
        | KernelError::BadModule { .. }
        | KernelError::VermagicMismatch { .. }
        | KernelError::DependencyCycle { .. }
        | KernelError::BadFragment { .. } => Exit::BadInput,
        KernelError::CommandNotRun { .. } | KernelError::MissingTools { .. } => Exit::Environment,
        KernelError::CommandFailed { .. }
        | KernelError::ChecksumMismatch { .. }
        | KernelError::SnapshotMismatch { .. }
        | KernelError::NoSnapshot { .. }
        | KernelError::BadPackage { .. } => Exit::Build,
    }
}

fn of_tls(e: &TlsError) -> Exit {
    match e {
        // The recipe's CA files and server names, checked before anything starts.
        TlsError::Read { .. }
        | TlsError::Pem { .. }
        | TlsError::NoCertificate { .. }
        | TlsError::Anchor { .. }
        | TlsError::ServerName { .. } => Exit::BadInput,
        TlsError::Config(_) => Exit::Other,
        TlsError::Client { .. } | TlsError::Connect { .. } | TlsError::Handshake { .. } => {
            Exit::Check
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_order() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6]);
    }

    /// The README's "Exit codes and CI output" table is this module's.
    #[test]
    fn readme_table_matches() {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../README.md");
        let text = std::fs::read_to_string(&readme)
            .unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
        let table = Exit::markdown_table();
        assert!(
            text.contains(&table),
            "README.md's exit-code table differs from beambake_target::exit; it should read:\n{table}"
        );
    }

    /// The module's doc table is the same table.
    #[test]
    fn doc_table_matches() {
        let src = include_str!("exit.rs");
        let doc: String = src
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .filter(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(doc, Exit::markdown_table());
    }

    #[test]
    fn errors_map_to_their_category() {
        let p = std::path::PathBuf::from("x");
        let cases = [
            (
                Error::from(SourceError::Missing { path: p.clone() }),
                Exit::BadInput,
            ),
            (
                Error::from(SourceError::NoRebar3 { path: p.clone() }),
                Exit::Environment,
            ),
            (
                Error::from(SourceError::Rebar3Failed {
                    path: p.clone(),
                    command: "rebar3 release".into(),
                    status: "exit status: 1".into(),
                    output: String::new(),
                }),
                Exit::Build,
            ),
            (
                Error::Boot(BootError::Qemu("qemu-system-x86_64 not found".into())),
                Exit::Environment,
            ),
            (
                Error::Boot(BootError::Host("tap networking needs root".into())),
                Exit::Environment,
            ),
            (Error::Boot(BootError::Net("VM died".into())), Exit::Boot),
            (
                Error::Io {
                    path: p.clone(),
                    source: std::io::Error::from(ErrorKind::NotFound),
                },
                Exit::BadInput,
            ),
            (
                Error::Io {
                    path: p,
                    source: std::io::Error::from(ErrorKind::StorageFull),
                },
                Exit::Build,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(Exit::of_error(&e), want, "{e}");
        }
    }
}
